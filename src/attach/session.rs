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

/// Jobs running at once, at most. The orchestrator sends no more than the
/// registered capacity; one that sends more waits for a job to finish before
/// the next is read off the stream.
pub const MAX_JOBS_IN_FLIGHT: usize = 256;

/// The jobs in flight: finished ones are reaped as new ones come (a
/// registration may last days), and at most `max` run at once.
struct Jobs {
    set: JoinSet<()>,
    max: usize,
}

impl Jobs {
    fn new(max: usize) -> Self {
        Self {
            set: JoinSet::new(),
            max: max.max(1),
        }
    }

    /// Reaps finished jobs, then waits while `max` are still running.
    async fn make_room(&mut self) {
        while self.set.try_join_next().is_some() {}
        while self.set.len() >= self.max {
            self.set.join_next().await;
        }
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&mut self, task: F) {
        self.set.spawn(task);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

/// An orchestrator without the service asked for: go-livepeer 0.9 removes
/// the AI worker service (PR #4036) in favour of Live Runners.
pub fn is_missing_service(status: &Status) -> bool {
    status.code() == Code::Unimplemented
}

/// go-livepeer's fatal registration errors, matched on the message text as
/// its own workers do.
pub fn is_refusal(status: &Status) -> bool {
    status.message().contains("invalid secret")
        || status.message().contains("zero capacity")
        || status.code() == Code::Unauthenticated
}

fn missing_service_advice(role: &str) -> String {
    if role == "ai-worker" {
        "the orchestrator has no AI worker service (go-livepeer 0.9 replaced remote AI workers \
         with Live Runners): attach with --live-runner --runner-url URL instead; retrying \
         quietly every minute"
            .into()
    } else {
        format!("the orchestrator has no {role} service; retrying quietly every minute")
    }
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
    let mut jobs = Jobs::new(MAX_JOBS_IN_FLIGHT);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    // Said once: an orchestrator that lacks the service lacks it until
    // upgraded or replaced, and every retry would say the same.
    let mut said_missing_service = false;
    'connect: while !*shutdown.borrow() {
        while jobs.set.try_join_next().is_some() {}
        let stream = tokio::select! {
            r = register() => r,
            _ = shutdown.changed() => break,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(status) => {
                let wait = if is_missing_service(&status) {
                    if !said_missing_service {
                        said_missing_service = true;
                        error!(orch = %orch_addr, role, reason = status.message(), "{}", missing_service_advice(role));
                    }
                    REFUSED_RETRY
                } else if is_refusal(&status) {
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
            let wait = if is_missing_service(status) {
                if !said_missing_service {
                    said_missing_service = true;
                    error!(orch = %orch_addr, role, reason = status.message(), "{}", missing_service_advice(role));
                }
                REFUSED_RETRY
            } else if is_refusal(status) {
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
                        tokio::select! {
                            _ = jobs.make_room() => {},
                            _ = shutdown.changed() => break 'connect,
                        }
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
    let mut jobs = jobs.set;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A long registration with many short jobs keeps no finished ones.
    #[tokio::test]
    async fn finished_jobs_are_reaped_as_new_ones_come() {
        let mut jobs = Jobs::new(MAX_JOBS_IN_FLIGHT);
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..20_000 {
            jobs.make_room().await;
            let done = Arc::clone(&done);
            jobs.spawn(async move {
                done.fetch_add(1, Ordering::Relaxed);
            });
            assert!(jobs.len() <= MAX_JOBS_IN_FLIGHT);
            tokio::task::yield_now().await;
        }
        jobs.make_room().await;
        assert!(jobs.len() < 100, "{} jobs kept", jobs.len());
    }

    /// Past the cap, the next job waits for a running one to finish.
    #[tokio::test]
    async fn jobs_beyond_the_cap_wait() {
        let mut jobs = Jobs::new(2);
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let mut rx = release_rx.clone();
            jobs.make_room().await;
            jobs.spawn(async move {
                let _ = rx.wait_for(|r| *r).await;
            });
        }
        assert_eq!(jobs.len(), 2);
        let waited = tokio::time::timeout(Duration::from_millis(100), jobs.make_room()).await;
        assert!(waited.is_err(), "a third job must wait");
        release_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), jobs.make_room())
            .await
            .expect("room once a job finished");
        assert!(jobs.len() < 2);
    }
}
