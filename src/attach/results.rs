//! Posting transcode results back to the orchestrator the way go-livepeer's
//! remote transcoder does: `POST https://<orch>/transcodeResults`, HTTP/2 over
//! TLS, a multipart/mixed body with one part per rendition in profile order.

use std::time::Duration;

use rand::Rng;
use tracing::{error, warn};

use crate::video::{OutputContainer, TranscodeOutput};

/// go-livepeer's protocol marker for remote transcoders (`protoVerLPT`).
pub const TRANSCODER_AUTH: &str = "Livepeer-Transcoder-1.0";
/// Content type of a failed transcode.
pub const ERROR_CONTENT_TYPE: &str = "livepeer/transcoding-error";

/// MIME type of a rendition part (go-livepeer's `ext2mime`).
pub fn mime(container: OutputContainer) -> &'static str {
    match container {
        OutputContainer::Mpegts => "video/mp2t",
        OutputContainer::Mp4 => "video/mp4",
    }
}

/// A multipart/mixed body: one part per rendition with its `Content-Type`,
/// `Content-Length` and encoded `Pixels`. Hand-written because reqwest's
/// multipart support only writes multipart/form-data parts.
pub fn multipart_body(output: &TranscodeOutput, boundary: &str) -> Vec<u8> {
    let size: usize = output.renditions.iter().map(|r| r.data.len() + 200).sum();
    let mut body = Vec::with_capacity(size + 64);
    for r in &output.renditions {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: {}\r\nContent-Length: {}\r\nPixels: {}\r\n\r\n",
                mime(r.container),
                r.data.len(),
                r.encoded.pixels
            )
            .as_bytes(),
        );
        body.extend_from_slice(&r.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

pub fn random_boundary() -> String {
    let mut rng = rand::thread_rng();
    (0..30)
        .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
        .collect()
}

/// Where and how results go.
#[derive(Clone)]
pub struct ResultPoster {
    client: reqwest::Client,
    url: String,
    secret: String,
    auth: &'static str,
    path: &'static str,
}

/// One result to deliver.
pub enum TaskResult {
    Transcoded(TranscodeOutput),
    Failed(String),
}

impl ResultPoster {
    pub fn transcoder(orch_addr: &str, secret: &str) -> Self {
        Self::new(orch_addr, secret, TRANSCODER_AUTH, "/transcodeResults")
    }

    fn new(orch_addr: &str, secret: &str, auth: &'static str, path: &'static str) -> Self {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(super::insecure_tls::client_config(&[b"h2", b"http/1.1"]))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client builds with static settings");
        ResultPoster {
            client,
            url: format!("https://{orch_addr}{path}"),
            secret: secret.to_string(),
            auth,
            path,
        }
    }

    /// Delivers `result` for `task_id`, retrying connection failures and
    /// server errors for about half a minute (an orchestrator restart).
    /// Returns false if it could not be delivered; that is logged as an error.
    pub async fn post(&self, task_id: i64, result: &TaskResult) -> bool {
        let (content_type, pixels, body) = match result {
            TaskResult::Transcoded(output) => {
                let boundary = random_boundary();
                (
                    format!("multipart/mixed; boundary={boundary}"),
                    output.decoded.pixels,
                    multipart_body(output, &boundary),
                )
            }
            TaskResult::Failed(message) => (
                ERROR_CONTENT_TYPE.to_string(),
                0,
                message.clone().into_bytes(),
            ),
        };
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=8 {
            let sent = self
                .client
                .post(&self.url)
                .header("Authorization", self.auth)
                .header("Credentials", &self.secret)
                .header("TaskId", task_id.to_string())
                .header("Pixels", pixels.to_string())
                .header("Content-Type", &content_type)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_client_error() => {
                    error!(
                        task_id,
                        status = r.status().as_u16(),
                        path = self.path,
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
        error!(task_id, "result could not be delivered to the orchestrator");
        false
    }
}
