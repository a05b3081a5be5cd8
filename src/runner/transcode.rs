//! The live transcoding app: a persistent Live Runner app
//! (`transcode/LADDER`). A gateway reserves a session, then starts it with
//! `POST {app_url}/transcode` (`{"profiles": [...]}`, go-livepeer's names or
//! its `-transcodingOptions` objects; none means the app's ladder). The app
//! asks the orchestrator, through the session's callback, for trickle
//! channels (`input`, one per rendition named by its profile, `events`),
//! answers where they are, then reads MPEG-TS segments from `input`,
//! transcodes each with the engine (NVDEC/NVENC when the GPU has them) and
//! publishes every rendition's segment under the input's sequence number.
//! A broken or late segment is reported on `events` and skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::sessions::{error, orchestrator_client, runner_side, SessionRef, Sessions};
use super::PersistentApp;
use crate::live_runner::wire::{ChannelInfo, ChannelRequest};
use crate::trickle::client::{TricklePublisher, TrickleSubscriber};
use crate::video::{Admission, TranscodeOptions, Transcoder, VideoProfile, VideoService};

/// Largest input segment taken (go-livepeer's trickle has no cap; ours
/// server-side is 10 MB).
const MAX_SEGMENT_BYTES: usize = 16 << 20;
/// How often the events channel gets a status message.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// A segment taking longer than this to transcode is abandoned: live
/// output that late is of no use.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The input unreachable this long (the orchestrator gone, the channel
/// failing) ends the session: go-livepeer's gateways give up on a stream
/// after 30 s without status, and nothing more will arrive.
const INPUT_LOST_AFTER: Duration = Duration::from_secs(30);

pub struct TranscodeApp {
    /// The video service, unbounded: the orchestrator holds sessions to the
    /// registered capacity, and each session transcodes one segment at a time.
    transcoder: VideoService,
    ladder: Vec<VideoProfile>,
    preset: String,
    /// To the orchestrator: session callbacks and trickle.
    http: reqwest::Client,
    sessions: Sessions,
}

#[derive(Debug, Default, Deserialize)]
struct StartRequest {
    #[serde(default)]
    profiles: Vec<serde_json::Value>,
}

/// Profiles by go-livepeer name, or as its JSON objects.
fn profiles(requested: &[serde_json::Value]) -> Result<Vec<VideoProfile>, String> {
    let mut out = Vec::new();
    for p in requested {
        match p {
            serde_json::Value::String(name) => out.push(
                VideoProfile::by_name(name).ok_or_else(|| format!("unknown profile {name:?}"))?,
            ),
            other => out.extend(
                VideoProfile::parse_json(&format!("[{other}]")).map_err(|e| e.to_string())?,
            ),
        }
    }
    Ok(out)
}

impl TranscodeApp {
    pub fn new(
        transcoder: Arc<Transcoder>,
        ladder: Vec<VideoProfile>,
        preset: String,
    ) -> Arc<TranscodeApp> {
        Arc::new(TranscodeApp {
            transcoder: VideoService::new(Transcoder::clone(&transcoder), Admission::unbounded()),
            ladder,
            preset,
            http: orchestrator_client(),
            sessions: Sessions::default(),
        })
    }
}

impl PersistentApp for TranscodeApp {
    /// The app's name in registrations: `transcode/` and its ladder.
    fn app_name(&self) -> String {
        let names: Vec<&str> = self.ladder.iter().map(|p| p.name.as_str()).collect();
        format!("transcode/{}", names.join(","))
    }

    /// Registration metadata: the ladder, the backend, the preset.
    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "renditions": self.ladder.iter().map(|p| &p.name).collect::<Vec<_>>(),
            "backend": self.transcoder.backend_name(),
            "preset": self.preset,
        })
    }

    fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/transcode", axum::routing::post(start))
            .with_state(self)
    }

    fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

impl TranscodeApp {
    async fn create_channels(
        &self,
        session: &SessionRef,
        profiles: &[VideoProfile],
    ) -> Result<Vec<ChannelInfo>, String> {
        let mut wanted = vec![ChannelRequest {
            name: "input".into(),
            mime_type: "video/MP2T".into(),
        }];
        wanted.extend(profiles.iter().map(|p| ChannelRequest {
            name: p.name.clone(),
            mime_type: "video/MP2T".into(),
        }));
        wanted.push(ChannelRequest {
            name: "events".into(),
            mime_type: "application/json".into(),
        });
        session.create_channels(&self.http, wanted).await
    }
}

async fn start(State(app): State<Arc<TranscodeApp>>, headers: HeaderMap, body: Bytes) -> Response {
    let session = match app.sessions.session_of(&headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let request: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
        }
    };
    let profiles = match profiles(&request.profiles) {
        Ok(p) if p.is_empty() => app.ladder.clone(),
        Ok(p) => p,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    if app.sessions.contains(&session.sid) {
        return error(StatusCode::CONFLICT, "this session is already transcoding");
    }
    let channels = match app.create_channels(&session, &profiles).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let find = |name: &str| channels.iter().find(|c| c.name == name).cloned();
    let (Some(input), Some(events)) = (find("input"), find("events")) else {
        return error(
            StatusCode::BAD_GATEWAY,
            "the orchestrator did not make the channels asked for",
        );
    };
    let mut outputs = Vec::new();
    let mut renditions = Vec::new();
    for p in &profiles {
        let Some(c) = find(&p.name) else {
            return error(
                StatusCode::BAD_GATEWAY,
                "the orchestrator did not make the channels asked for",
            );
        };
        renditions.push(serde_json::json!({
            "name": p.name, "width": p.width, "height": p.height,
            "fps": p.frame_rate().map(|(n, d)| f64::from(n) / f64::from(d.max(1))),
            "subscribe_url": c.url,
        }));
        outputs.push((p.clone(), runner_side(&c)));
    }
    let Some(cancel) = app.sessions.begin(&session.sid) else {
        return error(StatusCode::CONFLICT, "this session is already transcoding");
    };
    let sid = session.sid.clone();
    let session = Session {
        app: app.clone(),
        session,
        input: runner_side(&input),
        events: runner_side(&events),
        outputs,
        cancel,
    };
    tokio::spawn(session.run());
    Json(serde_json::json!({
        "manifest_id": sid,
        "publish_url": input.url,
        "events_url": events.url,
        "renditions": renditions,
    }))
    .into_response()
}

/// An empty segment at `seq` on every rendition: renditions keep the
/// input's numbering, and a reader of a rendition moves past a skipped
/// segment instead of taking the gap for a fall behind the live edge.
async fn skip(outputs: &[(VideoProfile, TricklePublisher)], seq: i64) {
    for (_, publisher) in outputs {
        let _ = publisher.publish(seq, Bytes::new()).await;
    }
}

struct Session {
    app: Arc<TranscodeApp>,
    /// The session's ID, callback base and token, to end it from this side.
    session: SessionRef,
    input: String,
    events: String,
    outputs: Vec<(VideoProfile, String)>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Stats {
    segments_in: u64,
    segments_out: u64,
    frames_in: u64,
    errors: u64,
    last_error: Option<String>,
    last_latency_ms: Option<u64>,
}

impl Session {
    async fn event(&self, publisher: &TricklePublisher, value: serde_json::Value) {
        if let Err(e) = publisher.publish(-1, Bytes::from(value.to_string())).await {
            tracing::debug!(session = %self.session.sid, error = %e, "event not sent");
        }
    }

    fn status(&self, stats: &Stats, started: Instant) -> serde_json::Value {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        serde_json::json!({
            "type": "status",
            "manifest_id": self.session.sid,
            "backend": self.app.transcoder.backend_name(),
            "segments_in": stats.segments_in,
            "segments_out": stats.segments_out,
            "fps_in": stats.frames_in as f64 / secs,
            "last_latency_ms": stats.last_latency_ms,
            "errors": stats.errors,
            "last_error": stats.last_error,
            "timestamp": chrono::Utc::now().timestamp_millis(),
        })
    }

    async fn run(self) {
        let http = self.app.http.clone();
        let events = TricklePublisher::new(http.clone(), &self.events);
        let mut input = TrickleSubscriber::new(http.clone(), &self.input, 0);
        let outputs: Vec<(VideoProfile, TricklePublisher)> = self
            .outputs
            .iter()
            .map(|(p, url)| (p.clone(), TricklePublisher::new(http.clone(), url)))
            .collect();
        let started = Instant::now();
        let mut stats = Stats::default();
        let mut last_status = Instant::now();
        let mut input_failing_since: Option<Instant> = None;
        self.event(&events, self.status(&stats, started)).await;
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until((last_status + STATUS_EVERY).into()) => {
                    last_status = Instant::now();
                    self.event(&events, self.status(&stats, started)).await;
                    continue;
                }
                n = input.next_segment() => n,
            };
            let mut segment = match next {
                Ok(Some(s)) => s,
                // The channel closed: the session ended.
                Ok(None) => {
                    tracing::info!(session = %self.session.sid, "input channel ended");
                    break;
                }
                Err(e) if e.is_terminal() => {
                    tracing::info!(session = %self.session.sid, error = %e, "input channel gone");
                    break;
                }
                Err(e) => {
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    let since = *input_failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= INPUT_LOST_AFTER {
                        tracing::warn!(session = %self.session.sid, error = %e, "input unreachable for {INPUT_LOST_AFTER:?}: session ended");
                        self.event(
                            &events,
                            serde_json::json!({"type": "error", "message": "input lost: session ended"}),
                        )
                        .await;
                        break;
                    }
                    tracing::warn!(session = %self.session.sid, error = %e, "input unavailable");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            input_failing_since = None;
            let seq = segment.seq();
            if let Some(gap) = segment.gap() {
                stats.errors += 1;
                let msg = format!("{} input segments missed before {seq}", gap.missed());
                self.event(
                    &events,
                    serde_json::json!({"type": "error", "message": msg, "seq": seq}),
                )
                .await;
            }
            let bytes = match segment.read_all(MAX_SEGMENT_BYTES).await {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    skip(&outputs, seq).await;
                    continue;
                }
                Err(e) => {
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    self.event(
                        &events,
                        serde_json::json!({"type": "error", "message": e.to_string(), "seq": seq}),
                    )
                    .await;
                    skip(&outputs, seq).await;
                    continue;
                }
            };
            stats.segments_in += 1;
            let received = Instant::now();
            let options = TranscodeOptions {
                profiles: self.outputs.iter().map(|(p, _)| p.clone()).collect(),
                preset: self.app.preset.clone(),
                timeout: Some(SEGMENT_TIMEOUT),
                max_input_bytes: MAX_SEGMENT_BYTES,
                ..TranscodeOptions::default()
            };
            let data: Arc<[u8]> = bytes.to_vec().into();
            let result = self
                .app
                .transcoder
                .run(data, options)
                .await
                .map_err(|e| e.to_string());
            let output = match result {
                Ok(o) => o,
                Err(e) => {
                    // A broken segment is reported and skipped.
                    stats.errors += 1;
                    stats.last_error = Some(e.clone());
                    tracing::info!(session = %self.session.sid, seq, error = %e, "input segment not transcoded");
                    self.event(
                        &events,
                        serde_json::json!({"type": "error", "message": e, "seq": seq}),
                    )
                    .await;
                    skip(&outputs, seq).await;
                    continue;
                }
            };
            stats.frames_in += output.decoded.frames;
            let mut sent = true;
            for ((_, publisher), rendition) in outputs.iter().zip(output.renditions) {
                if let Err(e) = publisher.publish(seq, Bytes::from(rendition.data)).await {
                    tracing::warn!(session = %self.session.sid, seq, error = %e, "rendition segment not published");
                    sent = false;
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    if e.is_terminal() {
                        break;
                    }
                }
            }
            if sent {
                stats.segments_out += 1;
            }
            stats.last_latency_ms = Some(received.elapsed().as_millis() as u64);
            tracing::debug!(session = %self.session.sid, seq, latency_ms = ?stats.last_latency_ms, "segment transcoded");
        }
        self.event(&events, self.status(&stats, started)).await;
        if !self.cancel.is_cancelled() {
            // The input ended here first: the session is over, and its slot
            // goes back to the orchestrator now rather than when the
            // gateway thinks of stopping it.
            self.session.stop_at_orchestrator(&self.app.http).await;
        }
        self.app.sessions.end(&self.session.sid);
        tracing::info!(session = %self.session.sid, segments = stats.segments_out, errors = stats.errors, "live transcoding session ended");
    }
}
