//! The live transcoding app's latency (`lpworker bench --live`): the time
//! from the last byte of an input segment published to the first byte of
//! each rendition's segment readable, beside the same segment's offline
//! transcode time, measured in the same process and run.
//!
//! 1. Media: a generated clip (FFmpeg's testsrc2, H.264 with a keyframe
//!    every 2 s, and a tone) cut into 2 s MPEG-TS segments with continuous
//!    timestamps, as a gateway cuts them ([`super::input`]).
//! 2. Offline: the engine transcodes every segment directly, with the
//!    app's options (profiles, preset), as `lpworker transcode` does.
//! 3. Live: the real [`TranscodeApp`] serves its `/transcode` route over
//!    loopback beside an in-process orchestrator side ([`super::harness`]:
//!    trickle server and session callback). The session is started over
//!    HTTP with the orchestrator's session headers, segments are published
//!    with [`TricklePublisher`] and every rendition is read from its
//!    channel, all in this process.
//!
//! Segments are published at their real cadence (one per segment duration),
//! so the transcoder is measured as a live stream uses it: whether each
//! segment's renditions are complete before the next input is due, and how
//! much of each segment's duration the pipeline was busy. With
//! `as_fast_as_possible`, each segment is published as soon as the previous
//! one's renditions are complete: the pipeline's own latency, with no
//! waiting for the clock and no backlog.
//!
//! With two cores, anything else running (a build) shows in every figure:
//! the machine's other load is reported beside them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::harness::{follow, session_error, Arrival, Harness};
use super::{input, Latency, LoadWindow};
use crate::runner::transcode::TranscodeApp;
use crate::trickle::client::TricklePublisher;
use crate::video::{TranscodeOptions, Transcoder, VideoError, VideoProfile};

pub use super::harness::LiveError;

/// The issue's ladder: 1080p30 in, 720p/480p/360p out.
pub const DEFAULT_LADDER: &str = "P720p30fps16x9,P480p30fps16x9,P360p30fps16x9";
/// The target: live first-byte p99 at most this many times the offline p99.
pub const TARGET_RATIO: f64 = 1.2;
/// The app's own cap on an input segment (`runner::transcode`).
const MAX_SEGMENT_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    /// Input segments.
    pub segments: usize,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub segment_seconds: f64,
    pub profiles: Vec<VideoProfile>,
    /// The same profiles as the session's start request carries them
    /// (names, or go-livepeer's JSON objects).
    pub session_profiles: Vec<serde_json::Value>,
    /// x264/x265 preset (go-livepeer and `lpworker attach`: medium).
    pub preset: String,
    /// Publish each segment once the previous one's renditions are all
    /// complete, instead of at the real cadence.
    pub as_fast_as_possible: bool,
}

impl Default for Options {
    /// The issue's load: ten 2 s segments of 1080p30 to 720p/480p/360p.
    fn default() -> Self {
        let (profiles, session_profiles) = ladder(DEFAULT_LADDER).expect("the default ladder");
        Options {
            segments: 10,
            width: 1920,
            height: 1080,
            fps: 30,
            segment_seconds: 2.0,
            profiles,
            session_profiles,
            preset: "medium".into(),
            as_fast_as_possible: false,
        }
    }
}

/// The 480p rung go-livepeer's ladders name but lpms does not predefine:
/// 854x480 at 30 fps, at the bitrate of lpms' 576p rung (its "480p-class"
/// rung), sent to the app as a `-transcodingOptions` JSON object.
const P480P: &str =
    r#"{"name":"P480p30fps16x9","width":854,"height":480,"bitrate":1500000,"fps":30}"#;

/// A ladder: comma-separated profile names (lpms' predefined ones and
/// `P480p30fps16x9`) or a `-transcodingOptions` JSON file. Returns the
/// profiles and the same as the session's start request carries them.
pub fn ladder(spec: &str) -> Result<(Vec<VideoProfile>, Vec<serde_json::Value>), VideoError> {
    if spec.ends_with(".json") || Path::new(spec).is_file() {
        let profiles = VideoProfile::from_spec(spec)?;
        let text = std::fs::read_to_string(spec)
            .map_err(|e| VideoError::InvalidProfile(format!("{spec}: {e}")))?;
        let objects: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| VideoError::InvalidProfile(format!("profiles JSON: {e}")))?;
        return Ok((profiles, objects));
    }
    let mut profiles = Vec::new();
    let mut wire = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "P480p30fps16x9" {
            profiles.extend(VideoProfile::parse_json(&format!("[{P480P}]"))?);
            wire.push(serde_json::from_str(P480P).expect("valid JSON"));
        } else {
            profiles.extend(VideoProfile::parse_list(name)?);
            wire.push(name.into());
        }
    }
    if profiles.is_empty() {
        return Err(VideoError::InvalidProfile("no profiles given".into()));
    }
    Ok((profiles, wire))
}

/// Parses `WIDTHxHEIGHT` (`1920x1080`).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: expected WIDTHxHEIGHT, e.g. 1920x1080");
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(16..=7680).contains(&w) || !(16..=4320).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

/// One rendition's latencies over the live run.
#[derive(Debug, Clone, Serialize)]
pub struct RenditionLatency {
    pub profile: String,
    pub width: u32,
    pub height: u32,
    /// Segments read with a body (a skipped or lost segment is not counted).
    pub segments: usize,
    /// Input segment's last byte published → this rendition's first byte read.
    pub first_byte_ms: Latency,
    /// Input segment's last byte published → this rendition's last byte read.
    pub complete_ms: Latency,
    /// First-byte p50 / offline p50.
    pub ratio_p50: f64,
    /// First-byte p99 / offline p99 (the target is at most [`TARGET_RATIO`]).
    pub ratio_p99: f64,
    /// First-byte latency per segment, in order (`null` where none was read).
    pub first_byte_samples_ms: Vec<Option<f64>>,
}

/// Whether one stream keeps real time (real-cadence runs only).
#[derive(Debug, Clone, Serialize)]
pub struct Realtime {
    /// Segments whose renditions were all complete before the next input
    /// segment was due.
    pub kept: usize,
    pub segments: usize,
    pub fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lpworker_version: String,
    pub backend: String,
    pub cores: usize,
    pub input: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub segments: usize,
    pub segment_seconds: f64,
    pub profiles: Vec<String>,
    pub preset: String,
    /// Published at the real cadence (else as fast as the renditions came).
    pub real_time_cadence: bool,
    /// The engine transcoding each segment directly (all renditions).
    pub offline_ms: Latency,
    pub offline_samples_ms: Vec<f64>,
    pub renditions: Vec<RenditionLatency>,
    /// The worst rendition's first-byte p99 / offline p99.
    pub ratio_p99: f64,
    pub target_ratio: f64,
    pub within_target: bool,
    /// Real-cadence runs only.
    pub realtime: Option<Realtime>,
    /// Mean over segments of the time the pipeline worked on a segment (from
    /// its input's last byte, or the previous segment's completion if later,
    /// to its last rendition complete) / the segment duration.
    pub mean_busy_fraction: f64,
    pub live_seconds: f64,
    /// This process's CPU time over the live run / (wall time × cores).
    pub cpu_utilisation: Option<f64>,
    /// Every other process's CPU time / (wall time × cores), the most of the
    /// offline and live runs.
    pub other_load: Option<f64>,
}

impl Report {
    /// A table for a terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "live transcoding bench: {} × {:.0} s segments of {}x{} {} fps → {} (preset {}, {} backend, {} cores)\n\
             input published {}\n\n",
            self.segments,
            self.segment_seconds,
            self.width,
            self.height,
            self.fps,
            self.profiles.join(","),
            self.preset,
            self.backend,
            self.cores,
            if self.real_time_cadence {
                "at its real cadence (one segment per segment duration)"
            } else {
                "as fast as possible (each once the previous one's renditions were complete)"
            },
        );
        s.push_str(&format!(
            "{:<18} {:>9} {:>13} {:>13} {:>14} {:>14} {:>11}\n",
            "rendition",
            "segments",
            "1st byte p50",
            "1st byte p99",
            "complete p50",
            "complete p99",
            "p99/offline"
        ));
        for r in &self.renditions {
            s.push_str(&format!(
                "{:<18} {:>9} {:>10.0} ms {:>10.0} ms {:>11.0} ms {:>11.0} ms {:>11.2}\n",
                format!("{} {}x{}", short(&r.profile), r.width, r.height),
                format!("{}/{}", r.segments, self.segments),
                r.first_byte_ms.p50,
                r.first_byte_ms.p99,
                r.complete_ms.p50,
                r.complete_ms.p99,
                r.ratio_p99,
            ));
        }
        s.push_str(&format!(
            "{:<18} {:>9} {:>10.0} ms {:>10.0} ms   (the engine on the same bytes, all renditions, same process)\n\n",
            "offline transcode",
            self.offline_samples_ms.len(),
            self.offline_ms.p50,
            self.offline_ms.p99,
        ));
        s.push_str(&format!(
            "live p99 / offline p99: {:.2} (worst rendition; target ≤ {:.1}: {})\n",
            self.ratio_p99,
            self.target_ratio,
            if self.within_target { "met" } else { "missed" }
        ));
        if let Some(rt) = &self.realtime {
            s.push_str(&format!(
                "real time on {} cores: {}/{} segments ({:.0}%) had every rendition complete before the next input segment was due\n",
                self.cores,
                rt.kept,
                rt.segments,
                rt.fraction * 100.0
            ));
        }
        let pct = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{:.0}%", v * 100.0));
        s.push_str(&format!(
            "busy {:.0}% of each segment's duration on average; CPU of {} cores: this process {}, other processes up to {}{}\n",
            self.mean_busy_fraction * 100.0,
            self.cores,
            pct(self.cpu_utilisation),
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

/// A profile's name for the table: `P720p30fps16x9` → `P720p30`.
fn short(name: &str) -> &str {
    if name.len() <= 8 {
        name
    } else {
        name.split_once("fps").map_or(name, |(a, _)| a)
    }
}

/// The options the app transcodes a segment with (`runner::transcode`).
fn app_options(o: &Options) -> TranscodeOptions {
    TranscodeOptions {
        profiles: o.profiles.clone(),
        preset: o.preset.clone(),
        max_input_bytes: MAX_SEGMENT_BYTES,
        ..TranscodeOptions::default()
    }
}

/// Generates and cuts the media in `dir`, transcodes it offline, then
/// through the app; `progress` is told what is happening.
pub fn run(
    options: &Options,
    transcoder: &Transcoder,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Report, LiveError> {
    if options.segments == 0
        || options.profiles.is_empty()
        || options.profiles.len() != options.session_profiles.len()
    {
        return Err(LiveError::Session(
            "at least one segment and one profile (as many in the session request) are needed"
                .into(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    progress("generating the input");
    let spec = input::ClipSpec {
        width: options.width,
        height: options.height,
        fps: options.fps,
        seconds: options.segments as f64 * options.segment_seconds,
    };
    let source = input::generate(spec, dir)?;
    let mut segments = input::segment(&source, dir, options.segment_seconds)?;
    if segments.len() < options.segments {
        return Err(LiveError::Session(format!(
            "the clip was cut into {} segments, not {}",
            segments.len(),
            options.segments
        )));
    }
    // A last sliver past the whole segments is left out.
    segments.truncate(options.segments);
    let first = crate::video::container::demux(
        segments[0].bytes.clone().into(),
        &Default::default(),
        None,
    )?;
    let input_size = (first.width, first.height);

    progress("offline transcode");
    let transcode_options = app_options(options);
    let load = LoadWindow::start();
    let mut offline = Vec::new();
    for seg in &segments {
        let t = Instant::now();
        transcoder.transcode(seg.bytes.clone(), &transcode_options, &mut |_| {})?;
        offline.push(t.elapsed());
    }
    let (_, offline_other) = load.finish();

    progress("live session");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let load = LoadWindow::start();
    let live = runtime.block_on(live(options, transcoder, &segments))?;
    let (cpu, live_other) = load.finish();
    drop(runtime);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let offline_ms = Latency::of(&mut offline.clone());
    let mut renditions = Vec::new();
    for (k, p) in options.profiles.iter().enumerate() {
        let (w, h) = p.output_size(input_size.0, input_size.1);
        let mut first = Vec::new();
        let mut complete = Vec::new();
        let mut samples = Vec::new();
        for (i, input) in live.inputs.iter().enumerate() {
            let got = live.arrivals[k]
                .iter()
                .find(|a| a.seq == i as i64 && !a.body.is_empty());
            match (got, input.last_byte) {
                (Some(a), Some(last)) => {
                    let f = a.first.saturating_duration_since(last);
                    first.push(f);
                    complete.push(a.done.saturating_duration_since(last));
                    samples.push(Some(ms(f)));
                }
                _ => samples.push(None),
            }
        }
        let first_byte_ms = Latency::of(&mut first);
        renditions.push(RenditionLatency {
            profile: p.name.clone(),
            width: w,
            height: h,
            segments: first.len(),
            ratio_p50: first_byte_ms.p50 / offline_ms.p50,
            ratio_p99: first_byte_ms.p99 / offline_ms.p99,
            first_byte_ms,
            complete_ms: Latency::of(&mut complete),
            first_byte_samples_ms: samples,
        });
    }
    let ratio_p99 = renditions.iter().map(|r| r.ratio_p99).fold(0.0, f64::max);
    let all_read = renditions.iter().all(|r| r.segments == options.segments);

    // Per segment: when every rendition was complete (None if one is missing).
    let done: Vec<Option<Instant>> = (0..segments.len())
        .map(|i| {
            live.arrivals
                .iter()
                .map(|a| {
                    a.iter()
                        .find(|a| a.seq == i as i64 && !a.body.is_empty())
                        .map(|a| a.done)
                })
                .collect::<Option<Vec<_>>>()
                .and_then(|d| d.into_iter().max())
        })
        .collect();
    let period = Duration::from_secs_f64(options.segment_seconds);
    let mut busy = Vec::new();
    let mut previous: Option<Instant> = None;
    for (input, done) in live.inputs.iter().zip(&done) {
        if let (Some(last), Some(done)) = (input.last_byte, done) {
            let from = previous.map_or(last, |p| p.max(last));
            busy.push(done.saturating_duration_since(from).as_secs_f64() / period.as_secs_f64());
        }
        previous = *done;
    }
    let mean_busy_fraction = if busy.is_empty() {
        0.0
    } else {
        busy.iter().sum::<f64>() / busy.len() as f64
    };
    let realtime = (!options.as_fast_as_possible).then(|| {
        let kept = done
            .iter()
            .enumerate()
            .filter(|(i, d)| d.is_some_and(|d| d <= live.start + period * (*i as u32 + 1)))
            .count();
        Realtime {
            kept,
            segments: segments.len(),
            fraction: kept as f64 / segments.len() as f64,
        }
    });
    Ok(Report {
        lpworker_version: env!("CARGO_PKG_VERSION").into(),
        backend: transcoder.backend_name().into(),
        cores,
        input: format!(
            "generated testsrc2 {}x{} {} fps, keyframe every {} s, cut into {} s MPEG-TS segments",
            options.width,
            options.height,
            options.fps,
            options.segment_seconds,
            options.segment_seconds
        ),
        width: input_size.0,
        height: input_size.1,
        fps: options.fps,
        segments: segments.len(),
        segment_seconds: options.segment_seconds,
        profiles: options.profiles.iter().map(|p| p.name.clone()).collect(),
        preset: options.preset.clone(),
        real_time_cadence: !options.as_fast_as_possible,
        offline_samples_ms: offline.iter().map(|d| ms(*d)).collect(),
        offline_ms,
        within_target: all_read && ratio_p99 <= TARGET_RATIO,
        ratio_p99,
        target_ratio: TARGET_RATIO,
        renditions,
        realtime,
        mean_busy_fraction,
        live_seconds: live.seconds,
        cpu_utilisation: cpu,
        other_load: match (offline_other, live_other) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    })
}

/// An input segment as published.
struct Published {
    /// When its last byte was at the server (the POST answered), if it was.
    last_byte: Option<Instant>,
}

struct LiveRun {
    /// When segment 0 was due: segment i is due `i` durations later.
    start: Instant,
    inputs: Vec<Published>,
    /// Per rendition, in profile order.
    arrivals: Vec<Vec<Arrival>>,
    seconds: f64,
}

async fn live(
    options: &Options,
    transcoder: &Transcoder,
    segments: &[input::Segment],
) -> Result<LiveRun, LiveError> {
    // The runner's side: the transcoding app as `lpworker attach` serves it.
    let app = TranscodeApp::new(
        Arc::new(transcoder.clone()),
        options.profiles.clone(),
        options.preset.clone(),
    );
    let harness = Harness::start(app).await?;
    let http = harness.http.clone();
    // The gateway's side: start the session with the orchestrator's headers.
    let started = harness
        .start_session(
            "/transcode",
            serde_json::json!({ "profiles": options.session_profiles }),
        )
        .await?;
    let publish_url = started["publish_url"]
        .as_str()
        .ok_or_else(|| session_error("the session's answer", "no publish_url"))?;
    let mut subscribe_urls = Vec::new();
    for p in &options.profiles {
        let url = started["renditions"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == p.name.as_str()))
            .and_then(|r| r["subscribe_url"].as_str())
            .ok_or_else(|| session_error("the session's answer", format!("no {}", p.name)))?;
        subscribe_urls.push(url.to_string());
    }

    // Every rendition read from segment 0, waiting at the server before it
    // is published.
    let last_seq = segments.len() as i64 - 1;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let readers: Vec<_> = subscribe_urls
        .into_iter()
        .enumerate()
        .map(|(k, url)| {
            tokio::spawn(follow(
                http.clone(),
                url,
                last_seq,
                k,
                Some(done_tx.clone()),
            ))
        })
        .collect();
    drop(done_tx);
    let mut publisher = TricklePublisher::new(http.clone(), publish_url);
    publisher
        .start(0)
        .await
        .map_err(|e| session_error("publishing", e))?;
    // Let the app's reader and the rendition readers reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let period = Duration::from_secs_f64(options.segment_seconds);
    let renditions = options.profiles.len();
    let mut complete = vec![0usize; segments.len()];
    let start = Instant::now();
    let mut inputs = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        if options.as_fast_as_possible {
            // Once the previous segment is in every rendition.
            while i > 0 && complete[i - 1] < renditions {
                match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
                    Ok(Some((_, seq))) => {
                        if let Some(c) = usize::try_from(seq).ok().and_then(|s| complete.get_mut(s))
                        {
                            *c += 1;
                        }
                    }
                    // A reader ended or a rendition is lost: go on.
                    _ => break,
                }
            }
        } else {
            tokio::time::sleep_until((start + period * i as u32).into()).await;
        }
        let written = publisher
            .write_segment(Bytes::from(seg.bytes.clone()))
            .await;
        inputs.push(Published {
            last_byte: written.ok().map(|_| Instant::now()),
        });
    }
    // Every rendition's last segment: a backlog of a few segments, each
    // within the app's 20 s limit.
    let limit = Duration::from_secs(30 + 25 * segments.len() as u64);
    let mut arrivals = Vec::new();
    for reader in readers {
        let got = match tokio::time::timeout(limit, reader).await {
            Ok(Ok(Ok(a))) => a,
            Ok(Ok(Err(e))) => return Err(session_error("reading a rendition", e)),
            Ok(Err(e)) => return Err(session_error("reading a rendition", e)),
            Err(_) => Vec::new(),
        };
        arrivals.push(got);
    }
    let seconds = start.elapsed().as_secs_f64();
    // The input's end ends the session: the app stops it at the callback.
    let _ = publisher.close().await;
    harness.session_ended(Duration::from_secs(5)).await;
    Ok(LiveRun {
        start,
        inputs,
        arrivals,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ladders_parse() {
        assert_eq!(parse_size("1920x1080"), Ok((1920, 1080)));
        assert_eq!(parse_size(" 320X180 "), Ok((320, 180)));
        for bad in ["1920", "0x0", "axb", "1920x99999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let (profiles, wire) = ladder(DEFAULT_LADDER).unwrap();
        assert_eq!(
            profiles
                .iter()
                .map(|p| (p.width, p.height, p.frame_rate()))
                .collect::<Vec<_>>(),
            [
                (1280, 720, Some((30, 1))),
                (854, 480, Some((30, 1))),
                (640, 360, Some((30, 1)))
            ]
        );
        assert_eq!(wire[0], "P720p30fps16x9");
        assert_eq!(wire[1]["name"], "P480p30fps16x9");
        assert_eq!(wire[1]["bitrate"], 1_500_000);
        assert_eq!(wire[2], "P360p30fps16x9");
        assert!(ladder("P9000p").is_err());
        assert!(ladder(" , ").is_err());
    }
}
