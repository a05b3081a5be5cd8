//! `lpworker orchestrator`: the shim between gateways and `serve` workers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use lpworker::orchestrator::{BoundOrchestrator, OrchestratorConfig};

#[derive(Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// Public host:port gateways reach this node at (go-livepeer's -serviceAddr).
    #[arg(long, alias = "serviceAddr", env = "LP_SERVICEADDR")]
    pub service_addr: String,
    /// Listen address (go-livepeer's -httpAddr); default: all interfaces, the service port.
    #[arg(long, alias = "httpAddr", env = "LP_HTTPADDR")]
    pub http_addr: Option<SocketAddr>,
    /// `lpworker serve` workers, comma-separated host:port or URLs.
    #[arg(long, value_delimiter = ',', required = true)]
    pub workers: Vec<String>,
    /// Data directory (TLS identity; the ticket store with a chain).
    #[arg(
        long,
        alias = "datadir",
        env = "LP_DATADIR",
        default_value = "lpworker-data"
    )]
    pub datadir: PathBuf,
    /// `offchain`: no chain, no payments, as go-livepeer's -network offchain.
    #[arg(long, alias = "network", default_value = "offchain")]
    pub network: String,
    /// PEM certificate and key; a self-signed pair is generated in --datadir when absent.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Wei per --pixels-per-unit pixels, advertised in OrchestratorInfo.
    #[arg(long, alias = "pricePerUnit", default_value_t = 0)]
    pub price_per_unit: i64,
    #[arg(long, alias = "pixelsPerUnit", default_value_t = 1)]
    pub pixels_per_unit: i64,
    /// Largest segment accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_segment_bytes: usize,
    /// go-livepeer version whose protocol is spoken (sent in capabilities).
    #[arg(long, default_value = "0.9.1")]
    pub livepeer_version: String,
    /// Chain settings (go-livepeer's -ethUrl, -ethController, ...): on-chain
    /// mode is not in this build; giving them is refused rather than ignored.
    #[arg(long, alias = "ethUrl", hide = true)]
    pub eth_url: Option<String>,
    #[arg(long, alias = "ethController", hide = true)]
    pub eth_controller: Option<String>,
}

pub fn run(args: OrchestratorArgs) -> Result<()> {
    if args.network != "offchain" || args.eth_url.is_some() || args.eth_controller.is_some() {
        bail!(
            "--network {}: this build runs off chain only (the chain client with ticket payments, rounds and rewards is not in it yet); use --network offchain",
            args.network
        );
    }
    if args.pixels_per_unit <= 0 || args.price_per_unit < 0 {
        bail!("--pixels-per-unit must be positive and --price-per-unit not negative");
    }
    let port = args
        .service_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .with_context(|| format!("--service-addr {:?}: expected host:port", args.service_addr))?;
    let listen = args
        .http_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let config = OrchestratorConfig {
        listen,
        service_addr: args.service_addr.clone(),
        workers: args.workers.clone(),
        datadir: args.datadir.clone(),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        price_per_unit: args.price_per_unit,
        pixels_per_unit: args.pixels_per_unit,
        max_segment_bytes: args.max_segment_bytes,
        livepeer_version: args.livepeer_version.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let orch = BoundOrchestrator::bind(config).await?;
        println!(
            "lpworker orchestrator listening addr={} uri={}",
            orch.local_addr(),
            orch.service_uri()
        );
        orch.run(super::serve::shutdown_signal()).await;
        Ok(())
    })
}
