//! The live video-to-video app's added latency and frame rate
//! (`lpworker bench --live-v2v`): for each model and input size, the time
//! from the last byte of an input segment published to the first byte of
//! the matching output segment, and the output's sustained frame rate,
//! beside the pipeline's floor (decoding and encoding the same segments with
//! the app's settings and no model) measured in the same run.
//!
//! 1. Media: a generated clip (FFmpeg's testsrc2 and a tone, H.264 with a
//!    keyframe at every segment start) cut into MPEG-TS segments with
//!    continuous timestamps, as a gateway cuts them ([`super::input`]).
//! 2. Floor: the engine decodes and encodes every segment directly with the
//!    app's options ([`live_video::segment_options`]: the input's size and
//!    frame rate, no B-frames, 1 s GOP, the same preset) and no model. For a
//!    model that changes pictures, the same again with the model on every
//!    frame (none dropped): what the model adds when nothing is skipped.
//! 3. Live: the real [`LiveVideoApp`] serves `/live-video-to-video` over
//!    loopback beside an in-process orchestrator side ([`super::harness`]),
//!    with the CPU backend as `lpworker attach --live-runner` runs it. The
//!    stream is started with the SDK's `StartJobRequest` (the app makes its
//!    four channels through the session callback); the output and events
//!    channels are read from segment 0 before the input starts, and the
//!    input segments are published one per segment duration, as a gateway
//!    relays a live source.
//!
//! Frame rate: the output's frames after its first segment over the time
//! from the first output segment's first byte to the last one's (a steady
//! stream delivers one segment's frames per segment duration, whatever its
//! latency). Frames lost are the input's frames that never came out (a
//! segment skipped as stale, or failed); frames repeated are those the model
//! was too slow for (the previous picture shown again), from the app's last
//! status event.
//!
//! The target (for `noop`, whose frames pass through untouched): added
//! latency p99 at most the floor's p99 + [`LATENCY_MARGIN_MS`], and the
//! output keeping the input's frame rate (within [`FPS_TOLERANCE`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::harness::{follow, session_error, Arrival, Harness, LiveError};
use super::{input, Latency, LoadWindow};
use crate::ai::live::FrameModel;
use crate::runner::live_video::{self, LiveVideoApp};
use crate::trickle::client::{TricklePublisher, TrickleSubscriber};
use crate::video::{Transcoder, VideoError};

/// The most the app may add to the floor's p99 (noop's target), ms.
pub const LATENCY_MARGIN_MS: f64 = 100.0;
/// The output's frame rate must be at least this fraction of the input's.
pub const FPS_TOLERANCE: f64 = 0.99;
/// The input sizes.
pub const DEFAULT_SIZES: [(u32, u32); 2] = [(512, 512), (1280, 720)];
/// The models: the pipeline alone, and an ONNX model on every frame.
pub const DEFAULT_MODELS: [&str; 2] = ["noop", "lpworker/sepia"];
/// Largest status event read.
const MAX_EVENT_BYTES: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct Options {
    /// Input segments per run.
    pub segments: usize,
    /// Input sizes; every model runs at each.
    pub sizes: Vec<(u32, u32)>,
    pub fps: u32,
    /// Segment length, with a keyframe at each segment's start.
    pub segment_seconds: f64,
    /// x264 preset of the app's output (`lpworker attach --live-preset`).
    pub preset: String,
}

impl Default for Options {
    /// The load: twenty 1 s segments at 30 fps, 512x512 and 720p.
    fn default() -> Self {
        Options {
            segments: 20,
            sizes: DEFAULT_SIZES.to_vec(),
            fps: 30,
            segment_seconds: 1.0,
            preset: "veryfast".into(),
        }
    }
}

/// Whether a run met noop's target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// The floor's p99 + [`LATENCY_MARGIN_MS`].
    pub latency_p99_limit_ms: f64,
    pub latency_met: bool,
    /// The input's frame rate × [`FPS_TOLERANCE`].
    pub fps_min: f64,
    pub fps_met: bool,
    /// Both, and every segment came out.
    pub met: bool,
}

/// One model at one input size.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub model: String,
    pub runtime: String,
    pub width: u32,
    pub height: u32,
    /// Output segments read with a body, of the input's `segments`.
    pub segments_out: usize,
    /// Input segment's last byte published → its output segment's first byte.
    pub added_latency_ms: Latency,
    /// Per input segment, in order (`null` where no output came).
    pub added_latency_samples_ms: Vec<Option<f64>>,
    /// Decode + encode of the same segments with the app's settings, no model.
    pub floor_ms: Latency,
    pub floor_samples_ms: Vec<f64>,
    /// Decode + the model on every frame + encode (models that change
    /// pictures only).
    pub offline_model_ms: Option<Latency>,
    pub input_fps: f64,
    /// The output's sustained frame rate (see the module's notes).
    pub fps: f64,
    pub input_frames: u64,
    pub output_frames: u64,
    /// Input frames that never came out.
    pub lost_frames: u64,
    /// Frames the model was too slow for, shown as the previous picture
    /// (the app's last status event; `null` if none was read).
    pub repeated_frames: Option<u64>,
    pub live_seconds: f64,
    /// This process's CPU time over the live run / (wall time × cores).
    pub cpu_utilisation: Option<f64>,
    /// Every other process's CPU time over the live run / (wall time ×
    /// cores): above 10 %, this run's figures are disturbed.
    pub other_load: Option<f64>,
    /// The target, for models that pass frames through.
    pub target: Option<TargetCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lpworker_version: String,
    pub backend: String,
    pub cores: usize,
    pub input: String,
    pub segments: usize,
    pub segment_seconds: f64,
    pub fps: u32,
    pub preset: String,
    pub latency_margin_ms: f64,
    pub fps_tolerance: f64,
    pub runs: Vec<Run>,
    /// Every run with a target met it.
    pub within_target: bool,
    /// Every other process's CPU time / (wall time × cores), the most over
    /// the floors and live runs.
    pub other_load: Option<f64>,
}

impl Report {
    /// A table for a terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "live video-to-video bench: {} × {} s segments at {} fps per run, published in real time \
             (preset {}, {} backend, {} cores)\n\
             added latency: an input segment's last byte published → its output segment's first byte; \
             floor: decode + encode of the same segments with the app's settings, no model\n\n",
            self.segments,
            self.segment_seconds,
            self.fps,
            self.preset,
            self.backend,
            self.cores,
        );
        s.push_str(&format!(
            "{:<16} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>5} {:>8} {:>5} {:>6}  {}\n",
            "model",
            "size",
            "out",
            "added p50",
            "added p99",
            "floor p50",
            "floor p99",
            "model p99",
            "fps",
            "lost",
            "repeated",
            "CPU",
            "other",
            "target"
        ));
        let pct = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{:.0}%", v * 100.0));
        for r in &self.runs {
            s.push_str(&format!(
                "{:<16} {:>9} {:>6} {:>7.0} ms {:>7.0} ms {:>7.0} ms {:>7.0} ms {:>10} {:>6.2} {:>5} {:>8} {:>5} {:>6}  {}\n",
                r.model,
                format!("{}x{}", r.width, r.height),
                format!("{}/{}", r.segments_out, self.segments),
                r.added_latency_ms.p50,
                r.added_latency_ms.p99,
                r.floor_ms.p50,
                r.floor_ms.p99,
                r.offline_model_ms
                    .map_or("-".to_string(), |m| format!("{:.0} ms", m.p99)),
                r.fps,
                r.lost_frames,
                r.repeated_frames.map_or("?".to_string(), |n| n.to_string()),
                pct(r.cpu_utilisation),
                pct(r.other_load),
                r.target
                    .as_ref()
                    .map_or("-", |t| if t.met { "met" } else { "missed" }),
            ));
        }
        s.push('\n');
        for r in &self.runs {
            let Some(t) = &r.target else { continue };
            s.push_str(&format!(
                "{} {}x{}: added p99 {:.0} ms ≤ floor p99 + {:.0} ms = {:.0} ms: {}; fps {:.2} ≥ {:.2}: {}; {}/{} segments out\n",
                r.model,
                r.width,
                r.height,
                r.added_latency_ms.p99,
                self.latency_margin_ms,
                t.latency_p99_limit_ms,
                if t.latency_met { "met" } else { "missed" },
                r.fps,
                t.fps_min,
                if t.fps_met { "met" } else { "missed" },
                r.segments_out,
                self.segments,
            ));
        }
        s.push_str(&format!(
            "model p99: decode + the model on every frame + encode, offline; repeated: frames the model was too slow for; \
             CPU: this process's, and other processes', over each live run; other processes' CPU up to {}{}\n",
            pct(self.other_load),
            if self.other_load.is_some_and(|o| o > 0.1) {
                " (figures disturbed: run again on an idle machine)"
            } else {
                ""
            },
        ));
        s
    }
}

/// Video frames in an MPEG-TS segment (0 where it does not demux).
fn frames(bytes: &[u8]) -> u64 {
    if bytes.is_empty() {
        return 0;
    }
    crate::video::container::demux(bytes.to_vec().into(), &Default::default(), None)
        .map_or(0, |d| d.video_packets.len() as u64)
}

/// Times `transcoder` on every segment with the app's options and
/// `transform`.
fn offline(
    transcoder: &Transcoder,
    segments: &[input::Segment],
    preset: &str,
    transform: Option<crate::video::TransformStage>,
) -> Result<Vec<Duration>, VideoError> {
    let options = live_video::segment_options(preset, transform);
    segments
        .iter()
        .map(|seg| {
            let t = Instant::now();
            transcoder.transcode(seg.bytes.clone(), &options, &mut |_| {})?;
            Ok(t.elapsed())
        })
        .collect()
}

/// Generates the media in `dir`, then for each size measures the floor and
/// runs each of `models` through the app; `progress` is told what is
/// happening.
pub fn run(
    options: &Options,
    models: &[Arc<dyn FrameModel>],
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Report, LiveError> {
    if options.segments == 0 || options.sizes.is_empty() || models.is_empty() {
        return Err(LiveError::Session(
            "at least one segment, one size and one model are needed".into(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The app's backend as `lpworker attach --live-runner` gives it.
    let transcoder = Transcoder::new(Arc::new(crate::video::cpu::CpuBackend));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut other_load: Option<f64> = None;
    let mut note_load = |o: Option<f64>| {
        if let Some(o) = o {
            other_load = Some(other_load.map_or(o, |l| l.max(o)));
        }
    };
    let mut runs = Vec::new();
    for &(width, height) in &options.sizes {
        let size = format!("{width}x{height}");
        progress(&format!("{size}: generating the input"));
        let media = dir.join(&size);
        std::fs::create_dir_all(&media)?;
        let spec = input::ClipSpec {
            width,
            height,
            fps: options.fps,
            seconds: options.segments as f64 * options.segment_seconds,
        };
        let source = input::generate_keyed(spec, options.segment_seconds, &media)?;
        let mut segments = input::segment(&source, &media, options.segment_seconds)?;
        if segments.len() < options.segments {
            return Err(LiveError::Session(format!(
                "the clip was cut into {} segments, not {}",
                segments.len(),
                options.segments
            )));
        }
        // A last sliver past the whole segments is left out.
        segments.truncate(options.segments);
        let input_frames: Vec<u64> = segments.iter().map(|s| frames(&s.bytes)).collect();

        progress(&format!("{size}: floor (decode + encode)"));
        let load = LoadWindow::start();
        let floor = offline(&transcoder, &segments, &options.preset, None)?;
        note_load(load.finish().1);

        for model in models {
            let id = model.model_id().to_string();
            let stream = model
                .clone()
                .stream(&Default::default())
                .map_err(|e| session_error(&id, e))?;
            let identity = stream.is_identity();
            let offline_model = if identity {
                None
            } else {
                progress(&format!("{size}: {id} offline, every frame"));
                let stage = live_video::model_stage(stream, false);
                Some(offline(
                    &transcoder,
                    &segments,
                    &options.preset,
                    Some(stage),
                )?)
            };
            progress(&format!("{size}: {id} live"));
            let load = LoadWindow::start();
            let live =
                runtime.block_on(live(model.clone(), transcoder.clone(), options, &segments))?;
            let (cpu, other) = load.finish();
            note_load(other);
            runs.push(measure(
                options,
                model.as_ref(),
                identity,
                (width, height),
                &input_frames,
                &floor,
                offline_model,
                &live,
                (cpu, other),
            ));
        }
    }
    drop(runtime);
    let within_target = runs.iter().filter_map(|r| r.target.as_ref()).all(|t| t.met);
    Ok(Report {
        lpworker_version: env!("CARGO_PKG_VERSION").into(),
        backend: transcoder.backend_name().into(),
        cores,
        input: format!(
            "generated testsrc2 at {} fps, a keyframe every {} s, cut into {} s MPEG-TS segments",
            options.fps, options.segment_seconds, options.segment_seconds
        ),
        segments: options.segments,
        segment_seconds: options.segment_seconds,
        fps: options.fps,
        preset: options.preset.clone(),
        latency_margin_ms: LATENCY_MARGIN_MS,
        fps_tolerance: FPS_TOLERANCE,
        runs,
        within_target,
        other_load,
    })
}

/// One run's figures from what was published and read.
#[allow(clippy::too_many_arguments)]
fn measure(
    options: &Options,
    model: &dyn FrameModel,
    identity: bool,
    (width, height): (u32, u32),
    input_frames: &[u64],
    floor: &[Duration],
    offline_model: Option<Vec<Duration>>,
    live: &LiveRun,
    (cpu_utilisation, other_load): (Option<f64>, Option<f64>),
) -> Run {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Each input segment's output: the first with its number and a body.
    let outputs: Vec<Option<&Arrival>> = (0..input_frames.len())
        .map(|i| {
            live.output
                .iter()
                .find(|a| a.seq == i as i64 && !a.body.is_empty())
        })
        .collect();
    let mut added = Vec::new();
    let mut samples = Vec::new();
    for (out, published) in outputs.iter().zip(&live.published) {
        match (out, published) {
            (Some(a), Some(last)) => {
                let d = a.first.saturating_duration_since(*last);
                added.push(d);
                samples.push(Some(ms(d)));
            }
            _ => samples.push(None),
        }
    }
    let output_frames: Vec<u64> = outputs
        .iter()
        .map(|o| o.map_or(0, |a| frames(&a.body)))
        .collect();
    // Frames after the first output segment over the time from its first
    // byte to the last output segment's.
    let came: Vec<(Instant, u64)> = outputs
        .iter()
        .zip(&output_frames)
        .filter_map(|(o, n)| o.map(|a| (a.first, *n)))
        .collect();
    let fps = match (came.first(), came.last()) {
        (Some(first), Some(last)) if came.len() >= 2 && last.0 > first.0 => {
            came[1..].iter().map(|(_, n)| n).sum::<u64>() as f64
                / last.0.duration_since(first.0).as_secs_f64()
        }
        _ => 0.0,
    };
    let input_total: u64 = input_frames.iter().sum();
    let output_total: u64 = output_frames.iter().sum();
    let segments_out = outputs.iter().filter(|o| o.is_some()).count();
    let added_latency_ms = Latency::of(&mut added);
    let floor_ms = Latency::of(&mut floor.to_vec());
    let input_fps = f64::from(options.fps);
    let target = identity.then(|| {
        let latency_p99_limit_ms = floor_ms.p99 + LATENCY_MARGIN_MS;
        let fps_min = input_fps * FPS_TOLERANCE;
        let latency_met = segments_out > 0 && added_latency_ms.p99 <= latency_p99_limit_ms;
        let fps_met = fps >= fps_min;
        TargetCheck {
            latency_p99_limit_ms,
            latency_met,
            fps_min,
            fps_met,
            met: latency_met && fps_met && segments_out == input_frames.len(),
        }
    });
    Run {
        model: model.model_id().to_string(),
        runtime: model.runtime().to_string(),
        width,
        height,
        segments_out,
        added_latency_ms,
        added_latency_samples_ms: samples,
        floor_samples_ms: floor.iter().map(|d| ms(*d)).collect(),
        floor_ms,
        offline_model_ms: offline_model.map(|mut o| Latency::of(&mut o)),
        input_fps,
        fps,
        input_frames: input_total,
        output_frames: output_total,
        lost_frames: input_total.saturating_sub(output_total),
        repeated_frames: live.repeated_frames,
        live_seconds: live.seconds,
        cpu_utilisation,
        other_load,
        target,
    }
}

struct LiveRun {
    /// Per input segment: when its last byte was at the server (the POST
    /// answered), if it was.
    published: Vec<Option<Instant>>,
    output: Vec<Arrival>,
    /// From the app's last status event.
    repeated_frames: Option<u64>,
    seconds: f64,
}

/// Streams `segments` through a live video-to-video session on `model`.
async fn live(
    model: Arc<dyn FrameModel>,
    transcoder: Transcoder,
    options: &Options,
    segments: &[input::Segment],
) -> Result<LiveRun, LiveError> {
    let id = model.model_id().to_string();
    // The runner's side: the app as `lpworker attach --live-runner` serves it.
    let period = Duration::from_secs_f64(options.segment_seconds);
    let app = LiveVideoApp::new(
        model,
        transcoder,
        options.preset.clone(),
        // Longer than any gap in this input.
        period * 4 + Duration::from_secs(10),
    );
    let harness = Harness::start(app).await?;
    let http = harness.http.clone();
    // The gateway's side: the SDK's StartJobRequest on the reserved session.
    let started = harness
        .start_session(
            "/live-video-to-video",
            serde_json::json!({
                "model_id": id,
                "params": {},
                "stream_id": "bench-stream",
                "gateway_request_id": "bench-request",
            }),
        )
        .await?;
    let url = |key: &str| {
        started[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| session_error("the session's answer", format!("no {key}")))
    };
    let (publish_url, subscribe_url, events_url) = (
        url("publish_url")?,
        url("subscribe_url")?,
        url("events_url")?,
    );

    // The output read from segment 0, waiting at the server before the app
    // publishes it; the events likewise.
    let last_seq = segments.len() as i64 - 1;
    let reader = tokio::spawn(follow(http.clone(), subscribe_url, last_seq, 0, None));
    let events = tokio::spawn(repeated_frames(http.clone(), events_url));
    let mut publisher = TricklePublisher::new(http.clone(), &publish_url);
    publisher
        .start(0)
        .await
        .map_err(|e| session_error("publishing", e))?;
    // Let the app's input reader and the output reader reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let mut published = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let written = publisher
            .write_segment(Bytes::from(seg.bytes.clone()))
            .await;
        published.push(written.ok().map(|_| Instant::now()));
    }
    // The last output segment: a backlog of a few segments, each within the
    // app's 20 s limit.
    let limit = Duration::from_secs(30 + 25 * segments.len() as u64);
    let output = match tokio::time::timeout(limit, reader).await {
        Ok(Ok(Ok(a))) => a,
        Ok(Ok(Err(e))) => return Err(session_error("reading the output", e)),
        Ok(Err(e)) => return Err(session_error("reading the output", e)),
        Err(_) => Vec::new(),
    };
    let seconds = start.elapsed().as_secs_f64();
    // The input's end ends the stream: the app sends its last status and
    // stops the session at the callback, which closes the channels.
    let _ = publisher.close().await;
    harness.session_ended(Duration::from_secs(5)).await;
    let repeated_frames = match tokio::time::timeout(Duration::from_secs(5), events).await {
        Ok(Ok(n)) => n,
        _ => None,
    };
    Ok(LiveRun {
        published,
        output,
        repeated_frames,
        seconds,
    })
}

/// Reads the events channel to its end: the last status event's
/// `frames_dropped` (ai-runner's count of frames the model skipped).
async fn repeated_frames(http: reqwest::Client, url: String) -> Option<u64> {
    let mut events = TrickleSubscriber::new(http, &url, 0);
    let mut last = None;
    while let Ok(Some(mut seg)) = events.next_segment().await {
        let Ok(body) = seg.read_all(MAX_EVENT_BYTES).await else {
            continue;
        };
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let event = &event["event"];
        if event["type"] == "status" {
            if let Some(n) = event["inference_status"]["frames_dropped"].as_u64() {
                last = Some(n);
            }
        }
    }
    last
}
