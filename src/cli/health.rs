//! `lpworker health`: asks a worker's `grpc.health.v1` service whether it is
//! serving; exit 0 if so. For container health checks and scripts.

use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Worker gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service to check ("" for the whole server, or lpworker.v1.Worker).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

pub fn run(args: HealthArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let status = runtime.block_on(async {
        let url = if args.addr.contains("://") {
            args.addr.clone()
        } else {
            format!("http://{}", args.addr)
        };
        let channel = tonic::transport::Channel::from_shared(url)
            .context("invalid --addr")?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot reach {}", args.addr))?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .with_context(|| format!("health check of {} failed", args.addr))?;
        Ok::<_, anyhow::Error>(reply.into_inner().status)
    })?;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    if status != serving {
        bail!("{} is not serving (status {status})", args.addr);
    }
    println!("SERVING");
    Ok(())
}
