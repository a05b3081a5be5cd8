//! Posting results back to the orchestrator the way go-livepeer's workers do:
//! `POST https://<orch>/transcodeResults` or `/aiResults`, over TLS (HTTP/2
//! when offered), with the protocol marker and the shared secret as headers.

use std::time::Duration;

use rand::Rng;
use tracing::{error, warn};

use crate::ai::PipelineOutput;
use crate::video::{OutputContainer, TranscodeOutput};

/// go-livepeer's protocol marker for remote transcoders (`protoVerLPT`).
pub const TRANSCODER_AUTH: &str = "Livepeer-Transcoder-1.0";
/// go-livepeer's protocol marker for remote AI workers.
pub const AI_WORKER_AUTH: &str = "Livepeer-AI-Worker-1.0";
/// Content type of a failed transcode.
pub const TRANSCODE_ERROR: &str = "livepeer/transcoding-error";
/// Content type of a failed AI job.
pub const AI_ERROR: &str = "livepeer/ai-worker-error";

/// MIME type of a rendition part (go-livepeer's `ext2mime`).
pub fn mime(container: OutputContainer) -> &'static str {
    match container {
        OutputContainer::Mpegts => "video/mp2t",
        OutputContainer::Mp4 => "video/mp4",
    }
}

/// Builds a multipart/mixed body as Go's `mime/multipart` writes it.
/// Hand-written because reqwest only writes multipart/form-data.
struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Multipart {
    fn new() -> Self {
        let mut rng = rand::thread_rng();
        let boundary = (0..30)
            .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
            .collect();
        Multipart {
            boundary,
            body: Vec::new(),
        }
    }

    fn part(&mut self, headers: &[(&str, String)], data: &[u8]) {
        self.body
            .extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        for (name, value) in headers {
            self.body
                .extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
    }

    fn finish(mut self) -> (String, Vec<u8>) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/mixed; boundary={}", self.boundary),
            self.body,
        )
    }
}

/// One part per rendition, in profile order, with its encoded `Pixels`.
fn transcode_body(output: &TranscodeOutput) -> (String, Vec<u8>) {
    let mut m = Multipart::new();
    for r in &output.renditions {
        let headers = [
            ("Content-Type", mime(r.container).to_string()),
            ("Content-Length", r.data.len().to_string()),
            ("Pixels", r.encoded.pixels.to_string()),
        ];
        m.part(&headers, &r.data);
    }
    m.finish()
}

/// One attachment per output file, then the response JSON (whose media `url`s
/// name the attachments), as go-livepeer's AI worker sends them.
fn ai_body(output: &PipelineOutput) -> (String, Vec<u8>) {
    let mut m = Multipart::new();
    for f in &output.files {
        let headers = [
            ("Content-Type", f.mime.to_string()),
            ("Content-Length", f.data.len().to_string()),
            (
                "Content-Disposition",
                format!("attachment; filename={}", f.name),
            ),
        ];
        m.part(&headers, &f.data);
    }
    let json = serde_json::to_vec(&output.body).expect("JSON values serialize");
    m.part(
        &[
            ("Content-Type", "application/json".into()),
            ("Content-Length", json.len().to_string()),
        ],
        &json,
    );
    m.finish()
}

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
