//! The remote transcoder loop: register with the orchestrator, take segments
//! off the stream, transcode them (never more at once than registered), post
//! the results, and reconnect with backoff whenever the stream breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use super::results::{ResultPoster, TaskResult};
use super::segment::{is_session_end, job_from_notify};
use super::{session, AttachConfig};
use crate::proto::lp_rpc;
use crate::video::{TranscodeOptions, Transcoder};
use crate::worker::fetch::Fetcher;

/// Runs until `shutdown` turns true, then waits (up to the drain timeout) for
/// jobs in flight to finish and post their results.
pub async fn run(
    config: AttachConfig,
    transcoder: Transcoder,
    capabilities: lp_rpc::Capabilities,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_sessions as usize));
    let poster = ResultPoster::new(&config.orch_addr, &config.orch_secret);
    let fetcher = Fetcher::new(Duration::from_secs(30), config.max_segment_bytes, true);
    let capabilities = Arc::new(capabilities);
    let register = || async {
        let channel = session::connect(&config.orch_addr).await?;
        let mut client = lp_rpc::transcoder_client::TranscoderClient::new(channel)
            .max_decoding_message_size(16 << 20);
        let request = lp_rpc::RegisterRequest {
            secret: config.orch_secret.clone(),
            capacity: i64::from(config.max_sessions),
            capabilities: Some((*capabilities).clone()),
        };
        Ok(client.register_transcoder(request).await?.into_inner())
    };
    let on_job = |notify: lp_rpc::NotifySegment| {
        if is_session_end(&notify) {
            debug!(task_id = notify.task_id, "session ended");
            return None;
        }
        let span = tracing::info_span!("segment", task_id = notify.task_id);
        let task = Task {
            notify,
            transcoder: transcoder.clone(),
            capabilities: Arc::clone(&capabilities),
            fetcher: fetcher.clone(),
            poster: poster.clone(),
            preset: config.preset.clone(),
        };
        let slots = Arc::clone(&slots);
        Some(
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
        )
    };
    session::serve_jobs(
        "transcoder",
        &config.orch_addr,
        config.drain_timeout,
        shutdown,
        register,
        on_job,
    )
    .await;
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
        self.poster.transcode(task_id, &result).await;
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
