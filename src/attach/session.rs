//! The registration loop shared by the remote transcoder and the AI worker:
//! register, take jobs off the stream, run each as its own task, reconnect
//! with jittered backoff when the stream breaks, and drain on shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{error, info, warn};

use super::backoff::Backoff;
use super::insecure_tls;

/// How long to wait before retrying after the orchestrator refused the secret:
/// long enough not to spam its logs, short enough to recover once fixed.
pub const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// A job stream quiet this long after it opened is taken as registered.
const OPEN_AFTER: Duration = Duration::from_secs(1);

/// go-livepeer's fatal registration errors, matched on the message text as
/// its own workers do.
pub fn is_refusal(status: &Status) -> bool {
    status.message().contains("invalid secret")
        || status.message().contains("zero capacity")
        || status.code() == Code::Unauthenticated
}

/// A gRPC channel to the orchestrator over TLS (its self-signed certificate
/// accepted), with keepalives so a vanished orchestrator is noticed.
pub async fn connect(orch_addr: &str) -> Result<Channel, Status> {
    insecure_tls::grpc_channel(orch_addr, |e| {
        e.connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
    })
    .await
    .map_err(|e| Status::unavailable(format!("connect: {e}")))
}

/// Runs until `shutdown` turns true. `register` opens the job stream;
/// `on_job` turns each message into a task to run (or None to skip it). Jobs
/// outlive a broken stream and post their results; on shutdown they get up to
/// `drain_timeout` to finish.
pub async fn serve_jobs<T, Reg, RegFut, OnJob, JobFut>(
    role: &'static str,
    orch_addr: &str,
    drain_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    register: Reg,
    mut on_job: OnJob,
) where
    Reg: Fn() -> RegFut,
    RegFut: Future<Output = Result<tonic::Streaming<T>, Status>>,
    OnJob: FnMut(T) -> Option<JobFut>,
    JobFut: Future<Output = ()> + Send + 'static,
{
    let mut jobs = JoinSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    'connect: while !*shutdown.borrow() {
        while jobs.try_join_next().is_some() {}
        let stream = tokio::select! {
            r = register() => r,
            _ = shutdown.changed() => break,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(status) => {
                let wait = if is_refusal(&status) {
                    error!(orch = %orch_addr, role, reason = status.message(), "orchestrator refused registration; check -orchSecret and the capacity; retrying in {:?}", REFUSED_RETRY);
                    REFUSED_RETRY
                } else {
                    let wait = backoff.next_delay();
                    warn!(orch = %orch_addr, role, error = %status.message(), code = ?status.code(), retry_in = ?wait, "cannot register with orchestrator");
                    wait
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue 'connect,
                    _ = shutdown.changed() => break 'connect,
                }
            }
        };
        // A refusal may also come as the stream's first read (headers, then
        // trailers: legal gRPC, as go-livepeer checks on Recv too); the
        // stream counts as open once a job arrives or nothing went wrong
        // for a moment.
        let mut first = tokio::select! {
            m = tokio::time::timeout(OPEN_AFTER, stream.message()) => m.ok(),
            _ = shutdown.changed() => break 'connect,
        };
        if let Some(Err(status)) = &first {
            let wait = if is_refusal(status) {
                error!(orch = %orch_addr, role, reason = status.message(), "orchestrator refused registration; check -orchSecret and the capacity; retrying in {:?}", REFUSED_RETRY);
                REFUSED_RETRY
            } else {
                let wait = backoff.next_delay();
                warn!(orch = %orch_addr, role, error = %status.message(), code = ?status.code(), retry_in = ?wait, "job stream failed as it opened");
                wait
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue 'connect,
                _ = shutdown.changed() => break 'connect,
            }
        }
        info!(orch = %orch_addr, role, "registered");
        backoff.reset();
        loop {
            let message = match first.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = stream.message() => m,
                    _ = shutdown.changed() => break 'connect,
                },
            };
            match message {
                Ok(Some(job)) => {
                    if let Some(task) = on_job(job) {
                        jobs.spawn(task);
                    }
                }
                Ok(None) => {
                    warn!(role, "orchestrator closed the job stream; reconnecting");
                    break;
                }
                Err(status) => {
                    warn!(role, error = %status.message(), code = ?status.code(), "job stream broke; reconnecting");
                    break;
                }
            }
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => break,
        }
    }
    if !jobs.is_empty() {
        info!(role, jobs = jobs.len(), "finishing jobs in flight");
        let drained = tokio::time::timeout(drain_timeout, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            error!(
                role,
                jobs = jobs.len(),
                "drain timeout: abandoning jobs in flight"
            );
        }
    }
}
