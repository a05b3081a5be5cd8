//! The remote transcoder loop: register with the orchestrator, take segments
//! off the stream, transcode them (never more at once than registered), post
//! the results, and reconnect with backoff whenever the stream breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::Code;
use tracing::{debug, error, info, warn, Instrument};

use super::backoff::Backoff;
use super::results::{ResultPoster, TaskResult};
use super::segment::{is_session_end, job_from_notify};
use super::{insecure_tls, AttachConfig};
use crate::proto::lp_rpc;
use crate::video::{TranscodeOptions, Transcoder};
use crate::worker::fetch::Fetcher;

/// How long to wait before retrying after the orchestrator refused the secret:
/// long enough not to spam its logs, short enough to recover once fixed.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true, then waits (up to the drain timeout) for
/// jobs in flight to finish and post their results.
pub async fn run(
    config: AttachConfig,
    transcoder: Transcoder,
    capabilities: lp_rpc::Capabilities,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_sessions as usize));
    let poster = ResultPoster::transcoder(&config.orch_addr, &config.orch_secret);
    let fetcher = Fetcher::new(Duration::from_secs(30), config.max_segment_bytes, true);
    let capabilities = Arc::new(capabilities);
    let mut jobs = JoinSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

    'connect: while !*shutdown.borrow() {
        while jobs.try_join_next().is_some() {}
        let stream = tokio::select! {
            r = register(&config, &capabilities) => r,
            _ = shutdown.changed() => break,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(status) => {
                let wait = if is_refusal(&status) {
                    error!(orch = %config.orch_addr, reason = status.message(), "orchestrator refused registration; check -orchSecret and -maxSessions; retrying in {:?}", REFUSED_RETRY);
                    REFUSED_RETRY
                } else {
                    let wait = backoff.next_delay();
                    warn!(orch = %config.orch_addr, error = %status.message(), code = ?status.code(), retry_in = ?wait, "cannot register with orchestrator");
                    wait
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue 'connect,
                    _ = shutdown.changed() => break 'connect,
                }
            }
        };
        info!(orch = %config.orch_addr, capacity = config.max_sessions, "registered as remote transcoder");
        backoff.reset();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = shutdown.changed() => break 'connect,
            };
            match message {
                Ok(Some(notify)) => {
                    if is_session_end(&notify) {
                        debug!(
                            session = notify
                                .seg_data
                                .as_ref()
                                .and_then(|s| s.auth_token.as_ref())
                                .map(|t| t.session_id.as_str()),
                            "session ended"
                        );
                        continue;
                    }
                    let task = Task {
                        notify,
                        transcoder: transcoder.clone(),
                        capabilities: Arc::clone(&capabilities),
                        fetcher: fetcher.clone(),
                        poster: poster.clone(),
                        preset: config.preset.clone(),
                    };
                    let slots = Arc::clone(&slots);
                    let span = tracing::info_span!("segment", task_id = task.notify.task_id);
                    jobs.spawn(
                        async move {
                            // The orchestrator should never exceed the registered
                            // capacity; if it does, the extra job waits for a slot.
                            let _slot = slots
                                .acquire_owned()
                                .await
                                .expect("semaphore is never closed");
                            task.run().await;
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    warn!("orchestrator closed the job stream; reconnecting");
                    break;
                }
                Err(status) => {
                    warn!(error = %status.message(), code = ?status.code(), "job stream broke; reconnecting");
                    break;
                }
            }
        }
        // Jobs already received keep running and post their results.
        let wait = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => break,
        }
    }

    if !jobs.is_empty() {
        info!(jobs = jobs.len(), "finishing jobs in flight");
        let drained = tokio::time::timeout(config.drain_timeout, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            error!(
                jobs = jobs.len(),
                "drain timeout: abandoning jobs in flight"
            );
        }
    }
}

/// go-livepeer's fatal registration errors, matched on the message text as
/// its own transcoder does.
fn is_refusal(status: &tonic::Status) -> bool {
    status.message().contains("invalid secret")
        || status.message().contains("zero capacity")
        || status.code() == Code::Unauthenticated
}

async fn register(
    config: &AttachConfig,
    capabilities: &lp_rpc::Capabilities,
) -> Result<tonic::Streaming<lp_rpc::NotifySegment>, tonic::Status> {
    let channel = insecure_tls::grpc_channel(&config.orch_addr, |e| {
        e.connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
    })
    .await
    .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut client = lp_rpc::transcoder_client::TranscoderClient::new(channel)
        .max_decoding_message_size(16 << 20);
    let request = lp_rpc::RegisterRequest {
        secret: config.orch_secret.clone(),
        capacity: i64::from(config.max_sessions),
        capabilities: Some(capabilities.clone()),
    };
    Ok(client.register_transcoder(request).await?.into_inner())
}

/// One segment from notification to posted result.
struct Task {
    notify: lp_rpc::NotifySegment,
    transcoder: Transcoder,
    capabilities: Arc<lp_rpc::Capabilities>,
    fetcher: Fetcher,
    poster: ResultPoster,
    preset: String,
}

impl Task {
    async fn run(self) {
        let task_id = self.notify.task_id;
        let result = match self.transcode().await {
            Ok(output) => {
                info!(
                    renditions = output.renditions.len(),
                    decoded_pixels = output.decoded.pixels,
                    compute_ms = output.elapsed.as_millis() as u64,
                    "transcoded"
                );
                TaskResult::Transcoded(output)
            }
            Err(message) => {
                warn!(error = %message, "segment failed");
                TaskResult::Failed(message)
            }
        };
        self.poster.post(task_id, &result).await;
    }

    async fn transcode(&self) -> Result<crate::video::TranscodeOutput, String> {
        let job = job_from_notify(&self.notify, &self.capabilities).map_err(|e| e.to_string())?;
        let segment = self
            .fetcher
            .get(&self.notify.url)
            .await
            .map_err(|e| e.to_string())?;
        let expected = job.profiles.len();
        // The orchestrator gives up after max(8 s, 4 × duration); so do we.
        let timeout =
            Duration::from_millis(u64::from(job.duration_ms) * 4).max(Duration::from_secs(8));
        let options = TranscodeOptions {
            profiles: job.profiles,
            timeout: Some(timeout),
            preset: self.preset.clone(),
            ..Default::default()
        };
        let transcoder = self.transcoder.clone();
        let output = tokio::task::spawn_blocking(move || {
            transcoder.transcode(segment, &options, &mut |_| {})
        })
        .await
        .map_err(|e| format!("transcode task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        if output.renditions.len() != expected {
            return Err("segment / profile mismatch".into());
        }
        Ok(output)
    }
}
