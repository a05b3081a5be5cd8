//! The remote transcoder loop: register with the orchestrator, take segments
//! off the stream, transcode them through the video service (never more at
//! once than registered), post the results, and reconnect with backoff
//! whenever the stream breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::results::{ResultPoster, TaskResult};
use super::{session, AttachConfig};
use crate::lp_rpc::segment::{is_session_end, job_from_notify};
use crate::proto::lp_rpc;
use crate::video::{Admission, Slot, TranscodeOptions, Transcoder, VideoService};
use crate::worker::fetch::{AddressPolicy, Fetcher};

/// Runs until `shutdown` turns true, then waits (up to the drain timeout) for
/// jobs in flight to finish and post their results.
pub async fn run(
    config: AttachConfig,
    transcoder: Transcoder,
    capabilities: lp_rpc::Capabilities,
    shutdown: watch::Receiver<bool>,
) {
    let video = VideoService::new(transcoder, Admission::new(config.max_sessions));
    let poster = ResultPoster::new(&config.orch_addr, &config.orch_secret);
    let fetcher = Fetcher::new(
        Duration::from_secs(30),
        config.max_segment_bytes,
        true,
        AddressPolicy::new(config.fetch_allow.clone()),
    );
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
            video: video.clone(),
            capabilities: Arc::clone(&capabilities),
            fetcher: fetcher.clone(),
            poster: poster.clone(),
            preset: config.preset.clone(),
        };
        Some(task.run().instrument(span))
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
    video: VideoService,
    capabilities: Arc<lp_rpc::Capabilities>,
    fetcher: Fetcher,
    poster: ResultPoster,
    preset: String,
}

impl Task {
    async fn run(self) {
        let task_id = self.notify.task_id;
        // The orchestrator should never exceed the registered capacity; if it
        // does, the extra job waits for a slot. The slot is held until the
        // result is posted.
        let slot = self.video.admit().await;
        let transcoded = match &slot {
            Ok(slot) => self.transcode(slot).await,
            Err(refusal) => Err(format!("transcoder {refusal}")),
        };
        let result = match transcoded {
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
        drop(slot);
    }

    async fn transcode(&self, slot: &Slot) -> Result<crate::video::TranscodeOutput, String> {
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
        let output = self
            .video
            .transcode(slot, segment, options)
            .await
            .map_err(|e| e.to_string())?;
        if output.renditions.len() != expected {
            return Err("segment / profile mismatch".into());
        }
        Ok(output)
    }
}
