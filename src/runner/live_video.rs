//! The live video-to-video app: a persistent Live Runner app
//! (`live-video-to-video/MODEL`) that runs an AI model on every frame of a
//! live stream, as ai-runner's live pipelines do.
//!
//! It is started with `POST {app_url}/live-video-to-video` in one of two
//! forms:
//! - the SDK's `StartJobRequest` (`model_id`, `params`, `stream_id`,
//!   `gateway_request_id`) on a reserved session: the app asks the
//!   orchestrator, through the session's callback, for four trickle
//!   channels (`input`, `output`, `control`, `events`) and answers where
//!   they are, in the shape `LiveVideoToVideo.from_json` reads;
//! - ai-runner's runner body, the channel URLs given (the shim's
//!   `/live-video-to-video` hands a paid stream over that way): the app
//!   reads and writes there and answers ai-runner's empty URLs.
//!
//! Each input MPEG-TS segment is decoded, the model applied to its frames
//! (frames dropped at the input while the model is behind real time), and
//! the result encoded with low-latency settings and published on the
//! output under the input's sequence number. A reader that falls two
//! segments behind the live edge skips to it. Parameter updates on the
//! control channel apply from the next frame; status goes to the events
//! channel every 10 s in ai-runner's shape (gateways end a stream after
//! 30 s without one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::sessions::{
    error, orchestrator_client, runner_side, trickle_allowed, Refused, SessionRef, Sessions,
};
use super::PersistentApp;
use crate::ai::live::{FrameModel, FrameStream, PIPELINE};
use crate::live_runner::wire::ChannelRequest;
use crate::trickle::client::{TricklePublisher, TrickleSubscriber};
use crate::video::{
    Admission, FrameTransform, TranscodeOptions, Transcoder, TransformStage, VideoError,
    VideoProfile, VideoService,
};

/// Largest input segment taken.
const MAX_SEGMENT_BYTES: usize = 16 << 20;
/// Largest control message (ai-runner's gateways send small JSON objects).
const MAX_CONTROL_BYTES: usize = 64 << 10;
/// How often the events channel gets a status message (ai-runner's).
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// A segment taking longer than this is abandoned.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The window input and inference frame rates are measured over.
const FPS_WINDOW: Duration = Duration::from_secs(10);
/// An error this recent makes the state degraded (ai-runner's 15 s).
const RECENT_ERROR: Duration = Duration::from_secs(15);
/// Inference failing on this many segments in a row is an ERROR: the
/// stream ends rather than publishing nothing forever.
const MAX_FAILED_SEGMENTS: u32 = 3;
/// Output bitrate: ~0.1 bit per pixel of 720p30, enough for any size the
/// models produce.
const OUTPUT_BITRATE: u64 = 3_000_000;

/// Broken segments come at the publisher's pace; their log lines do not.
static SEGMENT_ERRORS: crate::log_limit::SharedRateLimitedLog =
    crate::log_limit::SharedRateLimitedLog::new(crate::log_limit::REFUSAL_LOG_INTERVAL);

pub struct LiveVideoApp {
    model: Arc<dyn FrameModel>,
    /// The video service, unbounded: the orchestrator holds sessions to the
    /// registered capacity, and each session runs one segment at a time.
    video: VideoService,
    preset: String,
    http: reqwest::Client,
    sessions: Sessions,
    /// A stream ended in ERROR (the model failing) and none has run
    /// cleanly since: `/health` says ERROR.
    failing: std::sync::atomic::AtomicBool,
    /// No input for this long ends a stream.
    input_idle_limit: Duration,
}

impl LiveVideoApp {
    pub fn new(
        model: Arc<dyn FrameModel>,
        transcoder: Transcoder,
        preset: String,
        input_idle_limit: Duration,
    ) -> Arc<Self> {
        Arc::new(LiveVideoApp {
            model,
            video: VideoService::new(transcoder, Admission::unbounded()),
            preset,
            http: orchestrator_client(),
            sessions: Sessions::default(),
            failing: Default::default(),
            input_idle_limit,
        })
    }
}

impl PersistentApp for LiveVideoApp {
    fn app_name(&self) -> String {
        format!("{PIPELINE}/{}", self.model.model_id())
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "pipeline": PIPELINE,
            "model_id": self.model.model_id(),
            "runtime": self.model.runtime(),
            "backend": self.video.backend_name(),
        })
    }

    fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/live-video-to-video", axum::routing::post(start))
            .with_state(self)
    }

    fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn path(&self) -> Option<String> {
        Some(format!("/{PIPELINE}/{}", self.model.model_id()))
    }

    fn health(&self) -> Option<&'static str> {
        Some(if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            "ERROR"
        } else if self.sessions.ids().is_empty() {
            "IDLE"
        } else {
            "OK"
        })
    }
}

/// Both start bodies: the SDK's `StartJobRequest` and ai-runner's.
#[derive(Debug, Default, Deserialize)]
struct StartRequest {
    model_id: Option<String>,
    #[serde(default)]
    params: Option<serde_json::Value>,
    stream_id: Option<String>,
    gateway_request_id: Option<String>,
    subscribe_url: Option<String>,
    publish_url: Option<String>,
    control_url: Option<String>,
    events_url: Option<String>,
    manifest_id: Option<String>,
}

/// Where a stream reads and writes.
#[derive(Debug, Clone)]
struct Channels {
    input: String,
    output: String,
    control: Option<String>,
    events: Option<String>,
}

/// The frame stage the engine runs: the stream's model handle.
struct StreamStage(Arc<dyn FrameStream>);

impl FrameTransform for StreamStage {
    fn is_identity(&self) -> bool {
        self.0.is_identity()
    }

    fn apply(&self, picture: image::RgbImage) -> Result<image::RgbImage, VideoError> {
        self.0
            .apply(picture)
            .map_err(|e| VideoError::Transform(e.to_string()))
    }
}

/// How the app runs one input segment with the x264 `preset`: decoded,
/// `transform` applied, encoded at the input's size and frame rate without
/// B-frames and with a 1 s GOP (what `lpworker bench --live-v2v` measures
/// as the pipeline's floor, with no transform).
pub fn segment_options(preset: &str, transform: Option<TransformStage>) -> TranscodeOptions {
    TranscodeOptions {
        profiles: vec![VideoProfile::live(OUTPUT_BITRATE)],
        preset: preset.to_string(),
        timeout: Some(SEGMENT_TIMEOUT),
        max_input_bytes: MAX_SEGMENT_BYTES,
        transform,
        ..TranscodeOptions::default()
    }
}

/// A stream's model as the engine's frame stage; `realtime` drops input
/// frames while the model is behind the media clock (as the app runs it).
pub fn model_stage(stream: Arc<dyn FrameStream>, realtime: bool) -> TransformStage {
    TransformStage {
        transform: Arc::new(StreamStage(stream)),
        realtime,
    }
}

async fn start(State(app): State<Arc<LiveVideoApp>>, headers: HeaderMap, body: Bytes) -> Response {
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
    // ai-runner: a request for another model than the one loaded is 400.
    if let Some(model) = request.model_id.as_deref().filter(|m| !m.is_empty()) {
        if model != app.model.model_id() {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "this runner serves {:?}, not {model:?}",
                    app.model.model_id()
                ),
            );
        }
    }
    let params = match &request.params {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "params must be a JSON object",
            )
        }
    };
    let stream = match app.model.clone().stream(&params) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if app.sessions.contains(&session.sid) {
        return error(StatusCode::CONFLICT, "this session is already streaming");
    }
    let given = request.subscribe_url.is_some() || request.publish_url.is_some();
    let (channels, answer) = if given {
        match given_channels(&app.sessions.bases(), &request) {
            Ok(c) => (
                c,
                // ai-runner's answer, which the orchestrator ignores.
                serde_json::json!({"publish_url": "", "subscribe_url": "", "control_url": ""}),
            ),
            Err(refused) => return refused.into_response(),
        }
    } else {
        match callback_channels(&app.http, &session).await {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_GATEWAY, e),
        }
    };
    let Some(cancel) = app.sessions.begin(&session.sid) else {
        return error(StatusCode::CONFLICT, "this session is already streaming");
    };
    app.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let clip =
        |v: &Option<String>| crate::log_limit::clip(v.as_deref().unwrap_or(""), 64).into_owned();
    tracing::info!(
        session = %session.sid,
        model = %app.model.model_id(),
        stream_id = %clip(&request.stream_id),
        gateway_request_id = %clip(&request.gateway_request_id),
        manifest_id = %clip(&request.manifest_id),
        "live video-to-video stream started"
    );
    let status = Arc::new(Mutex::new(StreamStatus::new(params)));
    let live = Stream {
        app: app.clone(),
        session,
        channels,
        stream,
        status,
        cancel,
    };
    tokio::spawn(live.run());
    Json(answer).into_response()
}

/// The URLs of ai-runner's body, each a trickle channel of this runner's
/// orchestrator (anyone reaching the runner could otherwise make it read
/// and write any URL: free work, or frames injected into another stream).
fn given_channels(bases: &[String], request: &StartRequest) -> Result<Channels, Refused> {
    let (Some(input), Some(output)) = (&request.subscribe_url, &request.publish_url) else {
        return Err(Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "subscribe_url and publish_url go together".into(),
        ));
    };
    let urls = [
        Some(input),
        Some(output),
        request.control_url.as_ref(),
        request.events_url.as_ref(),
    ];
    for url in urls.into_iter().flatten().filter(|u| !u.is_empty()) {
        if !trickle_allowed(bases, url) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "the stream's channels are not on this runner's orchestrator".into(),
            ));
        }
    }
    let optional = |u: &Option<String>| u.clone().filter(|u| !u.is_empty());
    Ok(Channels {
        input: input.clone(),
        output: output.clone(),
        control: optional(&request.control_url),
        events: optional(&request.events_url),
    })
}

/// The four channels made through the session's callback, and the answer
/// for the SDK (gateway-side URLs).
async fn callback_channels(
    http: &reqwest::Client,
    session: &SessionRef,
) -> Result<(Channels, serde_json::Value), String> {
    let wanted = [
        ("input", "video/MP2T"),
        ("output", "video/MP2T"),
        ("control", "application/json"),
        ("events", "application/json"),
    ]
    .map(|(name, mime)| ChannelRequest {
        name: name.into(),
        mime_type: mime.into(),
    })
    .to_vec();
    let made = session.create_channels(http, wanted).await?;
    let find = |name: &str| {
        made.iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| "the orchestrator did not make the channels asked for".to_string())
    };
    let (input, output, control, events) = (
        find("input")?,
        find("output")?,
        find("control")?,
        find("events")?,
    );
    let answer = serde_json::json!({
        "publish_url": input.url,
        "subscribe_url": output.url,
        "control_url": control.url,
        "events_url": events.url,
        "manifest_id": session.sid,
    });
    let channels = Channels {
        input: runner_side(&input),
        output: runner_side(&output),
        control: Some(runner_side(&control)),
        events: Some(runner_side(&events)),
    };
    Ok((channels, answer))
}

/// ai-runner's stream states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Loading,
    Online,
    DegradedInput,
    DegradedInference,
    Offline,
    Error,
}

impl StreamState {
    pub fn name(self) -> &'static str {
        match self {
            StreamState::Loading => "LOADING",
            StreamState::Online => "ONLINE",
            StreamState::DegradedInput => "DEGRADED_INPUT",
            StreamState::DegradedInference => "DEGRADED_INFERENCE",
            StreamState::Offline => "OFFLINE",
            StreamState::Error => "ERROR",
        }
    }
}

/// One processed segment, for the frame rates.
struct SegmentMark {
    at: Instant,
    media: Duration,
    frames_in: u64,
    frames_out: u64,
}

/// What a stream's status events report, as ai-runner's
/// `PipelineStatus` holds it.
pub(crate) struct StreamStatus {
    started: Instant,
    start_ms: i64,
    state: StreamState,
    state_since_ms: i64,
    last_input: Option<(Instant, i64)>,
    last_output_ms: Option<i64>,
    /// Media length of the last input segment (how far apart segments
    /// arrive when all is well).
    segment_media: Duration,
    marks: VecDeque<SegmentMark>,
    params: serde_json::Map<String, serde_json::Value>,
    params_time_ms: Option<i64>,
    /// The parameters have changed since the last status sent them
    /// (ai-runner sends them once, then null).
    params_unsent: bool,
    last_error: Option<(Instant, i64, String)>,
    /// The last error was the input's (a segment that does not decode),
    /// not the model's.
    error_is_input: bool,
    ended: bool,
    frames_dropped: u64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl StreamStatus {
    pub(crate) fn new(params: serde_json::Map<String, serde_json::Value>) -> Self {
        let now = now_ms();
        StreamStatus {
            started: Instant::now(),
            start_ms: now,
            state: StreamState::Loading,
            state_since_ms: now,
            last_input: None,
            last_output_ms: None,
            segment_media: Duration::from_secs(2),
            marks: VecDeque::new(),
            params_time_ms: (!params.is_empty()).then_some(now),
            params_unsent: true,
            params,
            last_error: None,
            error_is_input: false,
            ended: false,
            frames_dropped: 0,
        }
    }

    fn error(&mut self, message: impl Into<String>, input: bool) {
        self.last_error = Some((Instant::now(), now_ms(), message.into()));
        self.error_is_input = input;
    }

    fn input(&mut self, media: Duration) {
        self.last_input = Some((Instant::now(), now_ms()));
        if !media.is_zero() {
            self.segment_media = media;
        }
    }

    fn output(&mut self, media: Duration, frames_in: u64, frames_out: u64, dropped: u64) {
        let now = Instant::now();
        self.last_output_ms = Some(now_ms());
        self.frames_dropped += dropped;
        self.marks.push_back(SegmentMark {
            at: now,
            media,
            frames_in,
            frames_out,
        });
        while self
            .marks
            .front()
            .is_some_and(|m| now.duration_since(m.at) > FPS_WINDOW)
        {
            self.marks.pop_front();
        }
    }

    /// Input and inference frames per second over the window: frames over
    /// the time from the first counted segment's start to now.
    fn fps(&self) -> (f64, f64) {
        let Some(first) = self.marks.front() else {
            return (0.0, 0.0);
        };
        let span = (first.at.elapsed() + first.media).as_secs_f64().max(1e-3);
        let (i, o) = self
            .marks
            .iter()
            .fold((0, 0), |(i, o), m| (i + m.frames_in, o + m.frames_out));
        (i as f64 / span, o as f64 / span)
    }

    /// ai-runner's rules (`process_guardian.py`), first match wins, read
    /// per segment: a gap is "late" once it is a segment longer than the
    /// segments themselves, plus ai-runner's 2 s.
    fn compute_state(&self) -> StreamState {
        if self.ended {
            return StreamState::Offline;
        }
        if self.state == StreamState::Error {
            return StreamState::Error;
        }
        let Some((last_input, _)) = self.last_input else {
            // Nothing arrived yet: loading for a grace period, then the
            // input is what is missing.
            return if self.started.elapsed() < Duration::from_secs(3) {
                StreamState::Loading
            } else {
                StreamState::DegradedInput
            };
        };
        if let Some((at, ..)) = &self.last_error {
            if at.elapsed() < RECENT_ERROR {
                return if self.error_is_input {
                    StreamState::DegradedInput
                } else {
                    StreamState::DegradedInference
                };
            }
        }
        let late = self.segment_media + Duration::from_secs(2);
        let (fps_in, fps_out) = self.fps();
        if last_input.elapsed() > late || (fps_in > 0.0 && fps_in < 15.0) {
            return StreamState::DegradedInput;
        }
        // Frames dropped for a slow model: inference is what lags.
        if fps_in > 0.0 && fps_out < 0.8 * fps_in {
            return StreamState::DegradedInference;
        }
        StreamState::Online
    }

    /// The status event, ai-runner's shape, wrapped as its events queue
    /// wraps it.
    pub(crate) fn event(&mut self) -> serde_json::Value {
        let state = self.compute_state();
        if state != self.state {
            self.state = state;
            self.state_since_ms = now_ms();
        }
        let (fps_in, fps_out) = self.fps();
        let params = serde_json::Value::Object(self.params.clone());
        let last_params = if self.params_unsent {
            self.params_unsent = false;
            params.clone()
        } else {
            serde_json::Value::Null
        };
        let now = now_ms();
        let status = serde_json::json!({
            "type": "status",
            "pipeline": PIPELINE,
            "start_time": self.start_ms,
            "state": self.state.name(),
            "last_state_update_time": self.state_since_ms,
            "input_status": {
                "last_input_time": self.last_input.map(|(_, ms)| ms),
                "fps": fps_in,
            },
            "inference_status": {
                "last_output_time": self.last_output_ms,
                "fps": fps_out,
                "last_params_update_time": self.params_time_ms,
                "last_params": last_params,
                "last_params_hash": params_hash(&params),
                "last_error_time": self.last_error.as_ref().map(|(_, ms, _)| *ms),
                "last_error": self.last_error.as_ref().map(|(.., m)| m.clone()),
                "last_restart_time": null,
                "last_restart_logs": null,
                "restart_count": 0,
                "frames_dropped": self.frames_dropped,
            },
            "last_status_timestamp": now,
            "timestamp": now,
        });
        wrap(status)
    }
}

/// An event as ai-runner's events queue sends it.
fn wrap(event: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"event": event, "queue_event_type": "ai_stream_events"})
}

/// ai-runner's `last_params_hash`: MD5 of `json.dumps(params,
/// sort_keys=True)`, so Python's separators (`", "`, `": "`).
fn params_hash(params: &serde_json::Value) -> String {
    use md5::Digest;
    let mut text = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut text, PythonJson);
    serde::Serialize::serialize(params, &mut ser).expect("JSON to memory");
    format!("{:x}", md5::Md5::digest(&text))
}

/// serde_json's compact output with Python `json.dumps`' default
/// separators (serde_json's maps are already sorted by key).
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

struct Stream {
    app: Arc<LiveVideoApp>,
    session: SessionRef,
    channels: Channels,
    stream: Arc<dyn FrameStream>,
    status: Arc<Mutex<StreamStatus>>,
    cancel: CancellationToken,
}

/// Why a stream ended.
enum End {
    Stopped,
    InputEnded,
    InputIdle,
    InputLost(String),
    OutputGone(String),
    ModelFailing(String),
}

impl Stream {
    async fn send_event(&self, events: Option<&TricklePublisher>, value: serde_json::Value) {
        if let Some(events) = events {
            if let Err(e) = events.publish(-1, Bytes::from(value.to_string())).await {
                tracing::debug!(session = %self.session.sid, error = %e, "event not sent");
            }
        }
    }

    async fn send_status(&self, events: Option<&TricklePublisher>) {
        let event = self.status.lock().expect("status").event();
        self.send_event(events, event).await;
    }

    async fn send_error(&self, events: Option<&TricklePublisher>, message: &str) {
        self.send_event(events, error_event(message)).await;
    }

    async fn run(self) {
        let http = self.app.http.clone();
        // One publisher for the events channel, shared by the status clock,
        // the control reader and the segments.
        let events = self
            .channels
            .events
            .as_ref()
            .map(|u| Arc::new(TricklePublisher::new(http.clone(), u)));
        let control = self.channels.control.clone().map(|url| {
            tokio::spawn(read_control(
                http.clone(),
                url,
                events.clone(),
                self.stream.clone(),
                self.status.clone(),
                self.cancel.clone(),
            ))
        });
        let status_ticker = {
            let (events, status, cancel) =
                (events.clone(), self.status.clone(), self.cancel.clone());
            let sid = self.session.sid.clone();
            tokio::spawn(async move {
                let Some(events) = events else { return };
                loop {
                    let event = status.lock().expect("status").event();
                    if let Err(e) = events.publish(-1, Bytes::from(event.to_string())).await {
                        tracing::debug!(session = %sid, error = %e, "status not sent");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(STATUS_EVERY) => {}
                    }
                }
            })
        };
        let events = events.as_deref();
        let end = self.stream_segments(events).await;
        let message = match &end {
            End::Stopped => None,
            End::InputEnded => None,
            End::InputIdle => Some(format!(
                "no input for {:?}: stream stopped",
                self.app.input_idle_limit
            )),
            End::InputLost(e) => Some(format!("input lost: {e}")),
            End::OutputGone(e) => Some(format!("output gone: {e}")),
            End::ModelFailing(e) => Some(format!("inference failing: {e}")),
        };
        if let Some(message) = &message {
            tracing::warn!(session = %self.session.sid, "{message}");
            self.send_error(events, message).await;
        }
        {
            let mut status = self.status.lock().expect("status");
            if matches!(end, End::ModelFailing(_)) {
                status.state = StreamState::Error;
                self.app
                    .failing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                status.ended = true;
            }
        }
        self.send_status(events).await;
        self.cancel.cancel();
        status_ticker.abort();
        if let Some(control) = control {
            control.abort();
        }
        // The output's readers learn the stream ended.
        let mut output = TricklePublisher::new(http.clone(), &self.channels.output);
        let _ = output.close().await;
        if !matches!(end, End::Stopped) {
            // The stream ended here first: its slot goes back now.
            self.session.stop_at_orchestrator(&http).await;
        }
        self.app.sessions.end(&self.session.sid);
        tracing::info!(session = %self.session.sid, "live video-to-video stream ended");
    }

    /// Reads, transforms and publishes segments until the stream ends.
    async fn stream_segments(&self, events: Option<&TricklePublisher>) -> End {
        let http = self.app.http.clone();
        let mut input = TrickleSubscriber::new(http.clone(), &self.channels.input, -2);
        let output = TricklePublisher::new(http, &self.channels.output);
        let mut failed_in_a_row = 0u32;
        let mut input_failing_since: Option<Instant> = None;
        let stage = model_stage(self.stream.clone(), true);
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return End::Stopped,
                _ = tokio::time::sleep(self.app.input_idle_limit) => return End::InputIdle,
                n = input.next_segment() => n,
            };
            let mut segment = match next {
                Ok(Some(s)) => s,
                Ok(None) => return End::InputEnded,
                Err(e) if e.is_terminal() => return End::InputEnded,
                Err(e) => {
                    let since = *input_failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(30) {
                        return End::InputLost(e.to_string());
                    }
                    self.status
                        .lock()
                        .expect("status")
                        .error(format!("input unavailable: {e}"), true);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return End::Stopped,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            input_failing_since = None;
            let seq = segment.seq();
            // Two or more newer segments wait: this one is stale, and
            // working on it would keep the output behind for good.
            let behind = segment.latest().is_some_and(|latest| latest >= seq + 3);
            // A segment that stops midway is given the idle limit to go on.
            let bytes = tokio::select! {
                _ = self.cancel.cancelled() => return End::Stopped,
                _ = tokio::time::sleep(self.app.input_idle_limit) => return End::InputIdle,
                b = segment.read_all(MAX_SEGMENT_BYTES) => b,
            };
            let bytes = match bytes {
                Ok(b) if !b.is_empty() && !behind => b,
                Ok(_) => {
                    // Empty (a publisher's closed preconnect) or stale:
                    // an empty output keeps the numbering.
                    if behind {
                        tracing::debug!(session = %self.session.sid, seq, "stale input segment skipped");
                    }
                    let _ = output.publish(seq, Bytes::new()).await;
                    continue;
                }
                Err(e) => {
                    let message = format!("input segment {seq}: {e}");
                    self.status.lock().expect("status").error(&message, true);
                    self.send_error(events, &message).await;
                    let _ = output.publish(seq, Bytes::new()).await;
                    continue;
                }
            };
            let options = segment_options(&self.app.preset, Some(stage.clone()));
            let data: Arc<[u8]> = bytes.to_vec().into();
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return End::Stopped,
                r = self.app.video.run(data, options) => r,
            };
            let out = match result {
                Ok(o) => o,
                Err(e) => {
                    let bad_input =
                        matches!(&e, crate::video::JobError::Video(v) if v.is_bad_input());
                    let message = format!("segment {seq}: {e}");
                    if let Some(suppressed) = SEGMENT_ERRORS.check() {
                        tracing::info!(session = %self.session.sid, seq, error = %e, suppressed, "input segment not processed (suppressed: like lines since the last)");
                    }
                    self.status
                        .lock()
                        .expect("status")
                        .error(&message, bad_input);
                    self.send_error(events, &message).await;
                    let _ = output.publish(seq, Bytes::new()).await;
                    if !bad_input {
                        failed_in_a_row += 1;
                        if failed_in_a_row >= MAX_FAILED_SEGMENTS {
                            return End::ModelFailing(e.to_string());
                        }
                    }
                    continue;
                }
            };
            failed_in_a_row = 0;
            let media = Duration::from_secs_f64(out.input.duration_seconds.max(0.0));
            self.status.lock().expect("status").input(media);
            let Some(rendition) = out.renditions.into_iter().next() else {
                continue;
            };
            let counts = rendition.transform.unwrap_or_default();
            match output.publish(seq, Bytes::from(rendition.data)).await {
                Ok(_) => {}
                Err(e) if e.is_terminal() => return End::OutputGone(e.to_string()),
                Err(e) => {
                    let message = format!("output segment {seq}: {e}");
                    self.status.lock().expect("status").error(&message, false);
                    continue;
                }
            }
            self.status.lock().expect("status").output(
                media,
                out.decoded.frames,
                counts.transformed,
                counts.dropped,
            );
            tracing::debug!(
                session = %self.session.sid,
                seq,
                frames = out.decoded.frames,
                transformed = counts.transformed,
                dropped = counts.dropped,
                elapsed_ms = out.elapsed.as_millis() as u64,
                "segment published"
            );
        }
    }
}

/// A refused control message, reported at once (not only in the next
/// status).
async fn refuse(status: &Mutex<StreamStatus>, events: Option<&TricklePublisher>, message: String) {
    status.lock().expect("status").error(&message, true);
    if let Some(events) = events {
        let _ = events
            .publish(-1, Bytes::from(error_event(&message).to_string()))
            .await;
    }
}

/// ai-runner's error event, wrapped as its events queue sends it.
fn error_event(message: &str) -> serde_json::Value {
    wrap(serde_json::json!({
        "type": "error",
        "pipeline": PIPELINE,
        "message": message,
        "time": now_ms(),
    }))
}

/// Applies the control channel's messages to the stream: each JSON object
/// is a parameter update, `{"keep": "alive"}` is skipped; anything else
/// is reported and changes nothing. Read from the live edge (-2), as
/// ai-runner reads it.
async fn read_control(
    http: reqwest::Client,
    url: String,
    events: Option<Arc<TricklePublisher>>,
    stream: Arc<dyn FrameStream>,
    status: Arc<Mutex<StreamStatus>>,
    cancel: CancellationToken,
) {
    let mut control = TrickleSubscriber::new(http, &url, -2);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            n = control.next_segment() => n,
        };
        let mut segment = match next {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) if e.is_terminal() => return,
            Err(_) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let message = match segment.read_all(MAX_CONTROL_BYTES).await {
            Ok(m) => m,
            Err(e) => {
                refuse(&status, events.as_deref(), format!("control message: {e}")).await;
                continue;
            }
        };
        if message.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let update = match serde_json::from_slice::<serde_json::Value>(&message) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) | Err(_) => {
                refuse(
                    &status,
                    events.as_deref(),
                    "control message is not a JSON object".into(),
                )
                .await;
                continue;
            }
        };
        if update.len() == 1 && update.get("keep").and_then(|v| v.as_str()) == Some("alive") {
            continue;
        }
        tracing::debug!(seq = segment.seq(), keys = ?update.keys().collect::<Vec<_>>(), "control message");
        // Preparing parameters runs models (a prompt's embeddings): off
        // the async threads.
        let applied = {
            let (stream, update) = (stream.clone(), update.clone());
            tokio::task::spawn_blocking(move || stream.update(&update))
                .await
                .unwrap_or_else(|e| Err(crate::ai::AiError::Internal(e.to_string())))
        };
        match applied {
            Ok(()) => {
                // The last update is what status reports (one message's
                // worth, however many keys the gateway invents).
                let mut s = status.lock().expect("status");
                s.params = update;
                s.params_time_ms = Some(now_ms());
                s.params_unsent = true;
            }
            Err(e) => {
                refuse(
                    &status,
                    events.as_deref(),
                    format!("parameters refused: {e}"),
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn params_hash_is_python_json_md5() {
        // hashlib.md5(json.dumps({"prompt": "a cat", "seed": 3, "t": [1, 2]},
        // sort_keys=True).encode()).hexdigest()
        let params = serde_json::json!({"seed": 3, "prompt": "a cat", "t": [1, 2]});
        assert_eq!(params_hash(&params), "d34f659ba488d990cf9259c272d46eaf");
    }

    #[test]
    fn states_follow_ai_runners_rules() {
        let mut s = StreamStatus::new(object(serde_json::json!({"prompt": "x"})));
        assert_eq!(s.compute_state(), StreamState::Loading);
        s.input(Duration::from_secs(1));
        s.output(Duration::from_secs(1), 30, 30, 0);
        assert_eq!(s.compute_state(), StreamState::Online);
        // The model keeps up with half the frames: inference is degraded.
        s.output(Duration::from_secs(1), 30, 10, 20);
        assert_eq!(s.compute_state(), StreamState::DegradedInference);
        s.error("segment does not decode", true);
        assert_eq!(s.compute_state(), StreamState::DegradedInput);
        let first = s.event();
        assert_eq!(first["queue_event_type"], "ai_stream_events");
        let status = &first["event"];
        assert_eq!(status["type"], "status");
        assert_eq!(status["pipeline"], "live-video-to-video");
        assert_eq!(status["state"], "DEGRADED_INPUT");
        assert_eq!(status["inference_status"]["last_params"]["prompt"], "x");
        assert_eq!(
            status["inference_status"]["last_error"],
            "segment does not decode"
        );
        // Parameters are sent once, then null; the hash stays.
        let second = s.event();
        assert!(second["event"]["inference_status"]["last_params"].is_null());
        assert_eq!(
            second["event"]["inference_status"]["last_params_hash"],
            status["inference_status"]["last_params_hash"]
        );
        s.ended = true;
        assert_eq!(s.compute_state(), StreamState::Offline);
    }

    #[test]
    fn given_channels_must_be_the_orchestrators() {
        let bases = vec!["http://127.0.0.1:8935".to_string()];
        let request = |input: &str| StartRequest {
            subscribe_url: Some(input.into()),
            publish_url: Some("http://127.0.0.1:8935/ai/trickle/ab12cd34-out".into()),
            control_url: Some("http://127.0.0.1:8935/ai/trickle/ab12cd34-control".into()),
            events_url: Some(String::new()),
            ..StartRequest::default()
        };
        let ok = given_channels(
            &bases,
            &request("http://127.0.0.1:8935/ai/trickle/ab12cd34"),
        )
        .unwrap();
        assert_eq!(ok.events, None);
        assert!(given_channels(&bases, &request("http://10.0.0.1/ai/trickle/ab12cd34")).is_err());
        let mut half = request("http://127.0.0.1:8935/ai/trickle/ab12cd34");
        half.publish_url = None;
        assert!(given_channels(&bases, &half).is_err());
    }
}
