//! `lpworker bench`: how many concurrent real-time streams (and AI requests)
//! this machine carries. Each concurrency level runs that many simulated
//! streams, each transcoding every segment of the input in order, as a live
//! stream arrives; optionally the FFmpeg CLI does the same work alongside.

pub mod capacity;
pub mod hardware;
mod harness;
pub mod input;
pub mod live;
pub mod live_v2v;
pub mod report;
pub mod trickle;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ai::{PipelineKind, PipelineRequest, Registry};
use crate::video::{TranscodeOptions, Transcoder, VideoError, VideoProfile};
use input::Segment;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error("AI model {0}: {1}")]
    Ai(String, crate::ai::AiError),
    #[error("ffmpeg comparison failed: {0}")]
    Ffmpeg(String),
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest-rank percentile.
        let pick = |p: f64| {
            ms(samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1])
        };
        Latency {
            p50: pick(0.50),
            p95: pick(0.95),
            p99: pick(0.99),
            max: ms(samples[samples.len() - 1]),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RenditionStats {
    pub profile: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub pixels: u64,
    /// Frames encoded per wall-clock second, over all streams.
    pub fps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FfmpegStats {
    pub wall_seconds: f64,
    pub realtime_ratio: f64,
    /// FFmpeg's wall time / lpworker's: above 1, lpworker is faster.
    pub lpworker_speedup: f64,
}

/// One concurrency level of the video benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct VideoLevel {
    pub concurrency: usize,
    pub segments: usize,
    pub wall_seconds: f64,
    /// Media seconds each stream transcoded.
    pub media_seconds_per_stream: f64,
    /// media_seconds_per_stream / wall_seconds: at or above 1 every stream keeps up.
    pub realtime_ratio: f64,
    /// All streams' media seconds / wall seconds.
    pub aggregate_realtime_ratio: f64,
    pub segment_latency_ms: Latency,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub pixels_per_second: f64,
    pub renditions: Vec<RenditionStats>,
    /// CPU time / (wall time × cores), when measurable.
    pub cpu_utilisation: Option<f64>,
    /// Mean GPU utilisation over the level (0..1, all GPUs), when `nvidia-smi` answers.
    pub gpu_utilisation: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub ffmpeg: Option<FfmpegStats>,
}

/// One concurrency level of an AI pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct AiLevel {
    pub concurrency: usize,
    pub requests: usize,
    pub wall_seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct AiBench {
    pub pipeline: String,
    pub model_id: String,
    pub runtime: String,
    pub levels: Vec<AiLevel>,
}

/// Everything `lpworker bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lpworker_version: String,
    pub hardware: hardware::Hardware,
    pub backend: String,
    pub input: String,
    pub media_seconds: f64,
    pub segments: usize,
    pub profiles: Vec<String>,
    pub preset: String,
    pub video: Vec<VideoLevel>,
    /// The largest concurrency at which every stream kept up with real time.
    pub max_realtime_concurrency: Option<usize>,
    pub ai: Vec<AiBench>,
}

/// Total CPU seconds this process has used (user + system).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// This process's and the machine's CPU time over a window.
pub(crate) struct LoadWindow {
    started: Instant,
    own: Option<f64>,
    all: Option<f64>,
}

impl LoadWindow {
    pub(crate) fn start() -> LoadWindow {
        LoadWindow {
            started: Instant::now(),
            own: cpu_seconds(),
            all: trickle::machine_cpu_seconds(),
        }
    }

    /// (this process, every other process), each / (wall time × cores).
    pub(crate) fn finish(self) -> (Option<f64>, Option<f64>) {
        let share = self.started.elapsed().as_secs_f64()
            * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let own = cpu_seconds().zip(self.own).map(|(b, a)| b - a);
        let all = trickle::machine_cpu_seconds()
            .zip(self.all)
            .map(|(b, a)| b - a);
        (
            own.map(|c| c / share),
            own.zip(all).map(|(own, all)| (all - own).max(0.0) / share),
        )
    }
}

/// Samples `nvidia-smi`'s GPU utilisation twice a second in the background.
struct GpuSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<f64>>>,
}

fn gpu_utilisation_now() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let values: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (out.status.success() && !values.is_empty())
        .then(|| values.iter().sum::<f64>() / values.len() as f64 / 100.0)
}

impl GpuSampler {
    fn start() -> GpuSampler {
        if gpu_utilisation_now().is_none() {
            return GpuSampler {
                stop: Default::default(),
                handle: None,
            };
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                samples.extend(gpu_utilisation_now());
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        });
        GpuSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Mean utilisation, or None where no GPU could be sampled.
    fn finish(self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.handle?.join().ok()?;
        (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
    }
}

/// Resets the kernel's peak-RSS mark so each level reports its own peak.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Media duration of a segment list, from the engine's demuxer.
pub fn media_seconds(segments: &[Segment]) -> f64 {
    // A segment's duration is what its transcode reports; probing is cheaper.
    segments
        .iter()
        .map(|s| {
            crate::video::container::demux(s.bytes.clone().into(), &Default::default(), None)
                .map(|d| d.duration_seconds)
                .unwrap_or(0.0)
        })
        .sum()
}

/// One simulated stream's segment latencies and outputs (renditions' bytes dropped).
type StreamRun = (Vec<Duration>, Vec<crate::video::TranscodeOutput>);

/// Runs `concurrency` streams over `segments`; `tick` is called per segment done.
pub fn run_video_level(
    transcoder: &Transcoder,
    segments: &[Segment],
    options: &TranscodeOptions,
    concurrency: usize,
    media_seconds: f64,
    tick: &(dyn Fn() + Sync),
) -> Result<VideoLevel, BenchError> {
    let peak_reset = reset_peak_rss();
    let cpu_before = cpu_seconds();
    let gpu = GpuSampler::start();
    let started = Instant::now();
    let results: Vec<Result<StreamRun, VideoError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    let mut outputs = Vec::new();
                    for seg in segments {
                        let t = Instant::now();
                        let mut out =
                            transcoder.transcode(seg.bytes.clone(), options, &mut |_| {})?;
                        latencies.push(t.elapsed());
                        for r in &mut out.renditions {
                            r.data = Vec::new();
                        }
                        outputs.push(out);
                        tick();
                    }
                    Ok((latencies, outputs))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench stream panicked"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(cpu_seconds()).map(|(a, b)| {
        (b - a) / (wall * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64)
    });
    let mut latencies = Vec::new();
    let mut renditions: BTreeMap<usize, RenditionStats> = BTreeMap::new();
    let (mut decoded, mut encoded) = (0u64, 0u64);
    for r in results {
        let (lat, outputs) = r?;
        latencies.extend(lat);
        for out in outputs {
            decoded += out.decoded.pixels;
            for (i, r) in out.renditions.iter().enumerate() {
                let s = renditions.entry(i).or_insert_with(|| RenditionStats {
                    profile: r.profile.clone(),
                    width: r.width,
                    height: r.height,
                    frames: 0,
                    pixels: 0,
                    fps: 0.0,
                });
                s.frames += r.encoded.frames;
                s.pixels += r.encoded.pixels;
                encoded += r.encoded.pixels;
            }
        }
    }
    let renditions: Vec<_> = renditions
        .into_values()
        .map(|mut s| {
            s.fps = s.frames as f64 / wall;
            s
        })
        .collect();
    Ok(VideoLevel {
        concurrency,
        segments: segments.len() * concurrency,
        wall_seconds: wall,
        media_seconds_per_stream: media_seconds,
        realtime_ratio: media_seconds / wall,
        aggregate_realtime_ratio: media_seconds * concurrency as f64 / wall,
        segment_latency_ms: Latency::of(&mut latencies),
        decoded_pixels: decoded,
        encoded_pixels: encoded,
        pixels_per_second: encoded as f64 / wall,
        renditions,
        cpu_utilisation: cpu,
        gpu_utilisation: gpu.finish(),
        peak_rss_mib: if peak_reset { peak_rss_mib() } else { None },
        ffmpeg: None,
    })
}

/// The same work with the FFmpeg CLI: one process per segment, `concurrency`
/// streams at once, the same sizes, filter, frame rates, x264 preset and rate
/// control as lpworker (lpms' settings).
pub fn run_ffmpeg_level(
    segments: &[Segment],
    profiles: &[VideoProfile],
    input_size: (u32, u32),
    preset: &str,
    concurrency: usize,
    scratch: &std::path::Path,
    tick: &(dyn Fn() + Sync),
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|stream| {
                scope.spawn(move || {
                    for (n, seg) in segments.iter().enumerate() {
                        let mut cmd = ffmpeg_command(
                            seg,
                            profiles,
                            input_size,
                            preset,
                            &scratch.join(format!("ff_{stream}_{n}")),
                        );
                        let out = cmd
                            .output()
                            .map_err(|e| BenchError::Ffmpeg(e.to_string()))?;
                        if !out.status.success() {
                            return Err(BenchError::Ffmpeg(
                                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                            ));
                        }
                        tick();
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ffmpeg stream panicked"))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn ffmpeg_command(
    seg: &Segment,
    profiles: &[VideoProfile],
    (in_w, in_h): (u32, u32),
    preset: &str,
    out_prefix: &std::path::Path,
) -> std::process::Command {
    let n = profiles.len();
    let mut graph = format!(
        "[0:v]split={n}{}",
        (0..n).map(|i| format!("[s{i}]")).collect::<String>()
    );
    for (i, p) in profiles.iter().enumerate() {
        let (w, h) = p.output_size(in_w, in_h);
        graph.push_str(&format!(";[s{i}]scale={w}:{h}:flags=bicubic"));
        if let Some((num, den)) = p.frame_rate() {
            graph.push_str(&format!(",fps={num}/{den}"));
        }
        graph.push_str(&format!("[o{i}]"));
    }
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y", "-copyts", "-i"])
        .arg(&seg.path);
    cmd.args(["-filter_complex", &graph]);
    for (i, p) in profiles.iter().enumerate() {
        let rate = p.bitrate.to_string();
        let codec = crate::video::cpu::CpuEncoder::library(p.codec);
        cmd.args([
            "-map",
            &format!("[o{i}]"),
            "-map",
            "0:a?",
            "-c:v",
            codec,
            "-preset",
            preset,
        ]);
        cmd.args([
            "-b:v",
            &rate,
            "-minrate",
            &rate,
            "-maxrate",
            &rate,
            "-bufsize",
            &rate,
            "-bf",
            "3",
            "-forced-idr",
            "1",
        ]);
        cmd.args(["-c:a", "copy", "-muxdelay", "0", "-f", "mpegts"]);
        cmd.arg(format!("{}_{i}.ts", out_prefix.display()));
    }
    cmd
}

/// A generated input for an AI pipeline (a 512x512 test pattern for image pipelines).
pub fn ai_request(kind: PipelineKind, model_id: &str) -> Result<PipelineRequest, BenchError> {
    let mut request = PipelineRequest::default();
    request
        .params
        .insert(kind.model_field().into(), model_id.into());
    request
        .params
        .insert("prompt".into(), "a benchmark picture".into());
    request.params.insert("seed".into(), 1.into());
    match kind.file_field() {
        Some("image") => {
            let img = image::RgbImage::from_fn(512, 512, |x, y| {
                image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
            });
            let png = crate::ai::media::encode_png(&img)
                .map_err(|e| BenchError::Ai(model_id.into(), e))?;
            request.files.insert("image".into(), png);
        }
        Some(other) => {
            return Err(BenchError::Ai(
                model_id.into(),
                crate::ai::AiError::BadRequest(format!(
                    "no benchmark input for {other} pipelines yet"
                )),
            ))
        }
        None => {}
    }
    Ok(request)
}

/// Runs `requests_per_stream` requests on each of `concurrency` threads.
pub fn run_ai_level(
    registry: &Registry,
    kind: PipelineKind,
    model_id: &str,
    concurrency: usize,
    requests_per_stream: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<AiLevel, BenchError> {
    let entry = registry
        .find(kind, model_id)
        .map_err(|e| BenchError::Ai(model_id.into(), e))?;
    let pipeline = Arc::clone(&entry.pipeline);
    let request = ai_request(kind, model_id)?;
    let started = Instant::now();
    let results: Vec<Result<Vec<Duration>, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    for _ in 0..requests_per_stream {
                        let t = Instant::now();
                        pipeline
                            .run(&request)
                            .map_err(|e| BenchError::Ai(model_id.into(), e))?;
                        latencies.push(t.elapsed());
                        tick();
                    }
                    Ok(latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("AI bench thread panicked"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for r in results {
        latencies.extend(r?);
    }
    Ok(AiLevel {
        concurrency,
        requests: latencies.len(),
        wall_seconds: wall,
        requests_per_second: latencies.len() as f64 / wall,
        latency_ms: Latency::of(&mut latencies),
    })
}

/// The largest concurrency at which every stream kept up with real time.
pub fn max_realtime(levels: &[VideoLevel]) -> Option<usize> {
    levels
        .iter()
        .filter(|l| l.realtime_ratio >= 1.0)
        .map(|l| l.concurrency)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut s);
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(Latency::of(&mut one).p99, 7.0);
        assert_eq!(Latency::of(&mut []).p50, 0.0);
    }
}
