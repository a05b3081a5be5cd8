//! Posting results back to the orchestrator the way go-livepeer's workers do:
//! `POST https://<orch>/transcodeResults` or `/aiResults`, over TLS (HTTP/2
//! when offered), with the protocol marker and the shared secret as headers.
//! The bodies themselves are `crate::lp_rpc::results`'.

use std::time::Duration;

use tracing::{error, warn};

use crate::ai::PipelineOutput;
use crate::lp_rpc::results::{
    ai_body, transcode_body, AI_ERROR, AI_WORKER_AUTH, TRANSCODER_AUTH, TRANSCODE_ERROR,
};
use crate::video::TranscodeOutput;

/// A transcode result to deliver.
pub enum TaskResult {
    Transcoded(TranscodeOutput),
    Failed(String),
}

/// An AI job result to deliver.
pub enum AiResult {
    Done(PipelineOutput),
    Failed(String),
}

/// Where and how results go.
#[derive(Clone)]
pub struct ResultPoster {
    client: reqwest::Client,
    orch_addr: String,
    secret: String,
}

impl ResultPoster {
    pub fn new(orch_addr: &str, secret: &str) -> Self {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(super::insecure_tls::client_config(&[b"h2", b"http/1.1"]))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("HTTP client builds with static settings");
        ResultPoster {
            client,
            orch_addr: orch_addr.to_string(),
            secret: secret.to_string(),
        }
    }

    /// Posts a transcode result: top-level `Pixels` is the decoded pixel count.
    pub async fn transcode(&self, task_id: i64, result: &TaskResult) -> bool {
        let (content_type, pixels, body) = match result {
            TaskResult::Transcoded(output) => {
                let (ct, body) = transcode_body(output);
                (ct, output.decoded.pixels, body)
            }
            TaskResult::Failed(message) => {
                (TRANSCODE_ERROR.to_string(), 0, message.clone().into_bytes())
            }
        };
        let headers = [("Pixels", pixels.to_string())];
        self.post(
            "/transcodeResults",
            TRANSCODER_AUTH,
            task_id,
            &headers,
            content_type,
            body,
        )
        .await
    }

    /// Posts an AI result for `pipeline`.
    pub async fn ai(&self, task_id: i64, pipeline: &str, result: &AiResult) -> bool {
        let (content_type, body) = match result {
            AiResult::Done(output) => ai_body(output),
            AiResult::Failed(message) => (AI_ERROR.to_string(), message.clone().into_bytes()),
        };
        let headers = [("Pipeline", pipeline.to_string())];
        self.post(
            "/aiResults",
            AI_WORKER_AUTH,
            task_id,
            &headers,
            content_type,
            body,
        )
        .await
    }

    /// Delivers one result, retrying connection failures and server errors for
    /// about half a minute (an orchestrator restart). Returns false if it could
    /// not be delivered; that is logged as an error.
    async fn post(
        &self,
        path: &str,
        auth: &str,
        task_id: i64,
        extra: &[(&str, String)],
        content_type: String,
        body: Vec<u8>,
    ) -> bool {
        let url = format!("https://{}{path}", self.orch_addr);
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=8 {
            let mut request = self
                .client
                .post(&url)
                .header("Authorization", auth)
                .header("Credentials", &self.secret)
                .header("TaskId", task_id.to_string())
                .header("Content-Type", &content_type);
            for (name, value) in extra {
                request = request.header(*name, value);
            }
            match request.body(body.clone()).send().await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_client_error() => {
                    error!(
                        task_id,
                        status = r.status().as_u16(),
                        path,
                        "orchestrator refused the result"
                    );
                    return false;
                }
                Ok(r) => warn!(
                    task_id,
                    attempt,
                    status = r.status().as_u16(),
                    "result post failed; retrying"
                ),
                Err(e) => warn!(task_id, attempt, error = %e, "result post failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(8));
        }
        error!(
            task_id,
            path, "result could not be delivered to the orchestrator"
        );
        false
    }
}
