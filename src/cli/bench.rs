//! `lpworker bench`: measure what this machine carries and write a report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use lpworker::ai::PipelineKind;
use lpworker::bench::{self, hardware, input, report, Report};
use lpworker::video::probe;
use lpworker::video::{TranscodeOptions, Transcoder, VideoProfile};

#[derive(Debug, clap::Args)]
// `bench --backend` has never read LPWORKER_BACKEND nor had a help line;
// the shared flags keep it so.
#[command(mut_arg("backend", |arg| arg.env(None::<&str>).help(None::<&str>)))]
pub struct BenchArgs {
    /// Benchmark this file (MPEG-TS or MP4) instead of a generated clip.
    #[arg(long, conflicts_with = "generate")]
    pub input: Option<PathBuf>,
    /// Generate the input: SIZEpFPS:LENGTH, e.g. 1080p30:60s or 1280x720p60:20s.
    #[arg(long, default_value = "1080p30:10s")]
    pub generate: String,
    /// Segment length in seconds (go-livepeer gateways cut 2 s segments;
    /// with --live-v2v the default is 1 s).
    #[arg(long)]
    pub segment_seconds: Option<f64>,
    /// Profiles: standard names or a -transcodingOptions JSON file.
    #[arg(
        long,
        alias = "transcodingOptions",
        default_value = "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9"
    )]
    pub profiles: String,
    /// Concurrency levels; the default doubles from 1 up to twice the cores,
    /// stopping once streams fall well behind real time.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub video: super::video_backend::VideoBackendArgs,
    /// With --live and --live-v2v: the live apps' preset (as `lpworker
    /// attach --live-preset`, whose default it shares).
    #[arg(long, default_value = "veryfast")]
    pub live_preset: String,
    /// Benchmark an AI pipeline too: PIPELINE:MODEL_ID (repeatable).
    #[arg(long, value_name = "PIPELINE:MODEL")]
    pub ai: Vec<String>,
    /// Requests per concurrent AI client and level.
    #[arg(long, default_value_t = 8)]
    pub ai_requests: usize,
    #[command(flatten)]
    pub models: super::serve::AiArgs,
    /// Run the ffmpeg CLI with the same settings alongside and report the ratio.
    #[arg(long)]
    pub compare_ffmpeg: bool,
    /// Where the report, summary and plots go.
    #[arg(long, default_value = "bench-report")]
    pub out: PathBuf,
    /// Instead, check and time the NVIDIA resize kernels on GPU 0 and print
    /// JSON (needs a build with `--features nvidia`).
    #[arg(long)]
    pub gpu_kernels: bool,
    /// Instead, compare the selected backend (--backend/--nvidia) with the
    /// CPU's on this clip, pixel by pixel: decoded frames (max and mean
    /// difference per plane) and every rendition of --profiles decoded back
    /// (PSNR per plane). Prints JSON; exits non-zero if decoded frames
    /// differ or a rendition's luma PSNR is under --min-luma-psnr.
    #[arg(long, value_name = "CLIP", conflicts_with_all = ["gpu_kernels", "trickle", "live_mode"])]
    pub compare_backends: Option<PathBuf>,
    /// With --compare-backends: the least luma PSNR (dB) a rendition may
    /// have against the CPU's rendition of the same ladder.
    #[arg(long, default_value_t = 40.0, requires = "compare_backends")]
    pub min_luma_psnr: f64,
    /// Instead, load the trickle server on loopback: publishers × subscribers,
    /// first-byte latency per hop, retained bytes, throughput beside a plain
    /// socket relay of the same bytes.
    #[arg(long)]
    pub trickle: bool,
    /// Trickle: live streams (one publisher each).
    #[arg(long, default_value_t = 100, requires = "trickle")]
    pub streams: usize,
    /// Trickle: subscribers per stream.
    #[arg(long, default_value_t = 2, requires = "trickle")]
    pub subscribers: usize,
    /// Trickle: each stream's bitrate (e.g. 4M, 4Mbit, 500k).
    #[arg(long, default_value = "4M", value_parser = bench::trickle::parse_bitrate, requires = "trickle")]
    pub bitrate: u64,
    /// Trickle: seconds of live load (the flat-out run takes half as long).
    #[arg(long, default_value_t = 10.0, requires = "trickle")]
    pub seconds: f64,
    /// Trickle: every publisher writes at the same instants (by default each
    /// stream starts at a random phase of the 50 ms piece interval, as
    /// independent streams do).
    #[arg(long, requires = "trickle")]
    pub aligned: bool,
    /// Instead, the live transcoding app's latency: input segments
    /// published over trickle at their real cadence, time from an input
    /// segment's last byte to each rendition's first byte, beside the
    /// engine's offline transcode of the same segment; and whether one
    /// stream keeps real time.
    #[arg(long, group = "live_mode", conflicts_with_all = ["trickle", "gpu_kernels"])]
    pub live: bool,
    /// Instead, the live video-to-video app's added latency: for each
    /// --model and --live-size, input segments published over trickle at
    /// their real cadence, time from an input segment's last byte to its
    /// output segment's first byte and the output's sustained frame rate,
    /// beside the decode + encode time of the same segments (the floor).
    #[arg(long, group = "live_mode", conflicts_with_all = ["trickle", "gpu_kernels"])]
    pub live_v2v: bool,
    /// Live: input segments (default 10 with --live, 20 with --live-v2v).
    #[arg(long, requires = "live_mode")]
    pub segments: Option<usize>,
    /// Live: the generated input's size, WIDTHxHEIGHT at 30 fps (default
    /// 1920x1080 with --live; with --live-v2v a list, default
    /// 512x512,1280x720).
    #[arg(long, value_delimiter = ',', value_parser = bench::live::parse_size, requires = "live_mode")]
    pub live_size: Vec<(u32, u32)>,
    /// Live video-to-video: the models (`noop` or a folder under
    /// --models-dir), each run at every size (default noop,lpworker/sepia).
    #[arg(long, value_delimiter = ',', requires = "live_v2v")]
    pub model: Vec<String>,
    /// Live: the session's profiles (lpms' names, P480p30fps16x9 as 854x480
    /// at 1.5 Mbit/s, or a -transcodingOptions JSON file).
    #[arg(long, default_value = bench::live::DEFAULT_LADDER, requires = "live")]
    pub ladder: String,
    /// Live: publish each segment once the previous one's renditions are
    /// complete instead of at the real cadence (the pipeline's own latency,
    /// no backlog).
    #[arg(long, requires = "live")]
    pub as_fast_as_possible: bool,
    /// Trickle, live and live video-to-video: print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--compare-backends`: the selected backend against the CPU's, gated.
fn compare_backends(args: &BenchArgs, clip: &std::path::Path) -> Result<()> {
    let input = std::fs::read(clip).with_context(|| format!("reading {}", clip.display()))?;
    let backend = probe::select_backend(
        args.video.backend,
        args.video.nvidia.as_ref(),
        &probe::probe(),
    )?;
    let options = TranscodeOptions {
        profiles: VideoProfile::from_spec(&args.profiles)?,
        preset: args.video.preset.clone(),
        ..Default::default()
    };
    let reference: Arc<dyn lpworker::video::VideoBackend> =
        Arc::new(lpworker::video::cpu::CpuBackend);
    let comparison =
        lpworker::video::compare::compare_backends(backend, reference, input.into(), &options)?;
    let failures = comparison.failures(args.min_luma_psnr);
    let mut report = serde_json::to_value(&comparison)?;
    report["min_luma_psnr_db"] = serde_json::json!(args.min_luma_psnr);
    report["failures"] = serde_json::json!(failures);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(feature = "nvidia")]
fn gpu_kernels() -> Result<()> {
    let report = lpworker::video::nvidia::gpu_bench::run(0)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(not(feature = "nvidia"))]
fn gpu_kernels() -> Result<()> {
    bail!("--gpu-kernels needs the NVIDIA backend: this lpworker was built without `--features nvidia`")
}

fn levels(args: &BenchArgs, cores: usize) -> Vec<usize> {
    if !args.concurrency.is_empty() {
        return args.concurrency.clone();
    }
    std::iter::successors(Some(1usize), |c| Some(c * 2))
        .take_while(|c| *c <= (2 * cores).max(2))
        .collect()
}

fn trickle(args: &BenchArgs) -> Result<()> {
    let options = bench::trickle::Options {
        streams: args.streams,
        subscribers: args.subscribers,
        bitrate: args.bitrate,
        seconds: args.seconds,
        throughput_seconds: (args.seconds / 2.0).max(1.0),
        aligned: args.aligned,
    };
    let report = bench::trickle::run(&options).context("trickle bench")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

fn live(args: &BenchArgs) -> Result<()> {
    let defaults = bench::live::Options::default();
    let segments = args.segments.unwrap_or(defaults.segments);
    if segments == 0 {
        bail!("--segments must be at least 1");
    }
    let (width, height) = match args.live_size[..] {
        [] => (defaults.width, defaults.height),
        [size] => size,
        _ => bail!("--live takes one --live-size"),
    };
    let (profiles, session_profiles) = bench::live::ladder(&args.ladder)?;
    let options = bench::live::Options {
        segments,
        width,
        height,
        profiles,
        session_profiles,
        preset: args.live_preset.clone(),
        as_fast_as_possible: args.as_fast_as_possible,
        ..Default::default()
    };
    let caps = probe::probe();
    let backend = args.video.select(&caps)?;
    let transcoder = Transcoder::new(backend);
    let dir = std::env::temp_dir().join(format!("lpworker-bench-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let quiet = args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = bench::live::run(&options, &transcoder, &dir, &|step| {
        if !quiet {
            eprintln!("{step}…");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report = result.context("live bench")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

fn live_v2v(args: &BenchArgs) -> Result<()> {
    let defaults = bench::live_v2v::Options::default();
    let options = bench::live_v2v::Options {
        segments: args.segments.unwrap_or(defaults.segments),
        sizes: if args.live_size.is_empty() {
            defaults.sizes
        } else {
            args.live_size.clone()
        },
        segment_seconds: args.segment_seconds.unwrap_or(defaults.segment_seconds),
        preset: args.live_preset.clone(),
        ..defaults
    };
    if options.segments == 0 {
        bail!("--segments must be at least 1");
    }
    if !(0.5..=10.0).contains(&options.segment_seconds) {
        bail!("--segment-seconds must be between 0.5 and 10 with --live-v2v");
    }
    let ids: Vec<String> = if args.model.is_empty() {
        bench::live_v2v::DEFAULT_MODELS.map(String::from).to_vec()
    } else {
        args.model.clone()
    };
    let mut models = Vec::new();
    for id in &ids {
        if id != "noop" {
            lpworker::ai::onnx::init(args.models.onnxruntime.as_deref())?;
        }
        models.push(
            lpworker::ai::live::load(id, &args.models.models_dir, args.models.ai_threads)
                .with_context(|| format!("--model {id:?}"))?,
        );
    }
    let dir = std::env::temp_dir().join(format!("lpworker-bench-v2v-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let quiet = args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = bench::live_v2v::run(&options, &models, &dir, &|step| {
        if !quiet {
            eprintln!("{step}…");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report = result.context("live video-to-video bench")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.gpu_kernels {
        return gpu_kernels();
    }
    if let Some(clip) = &args.compare_backends {
        return compare_backends(&args, clip);
    }
    if args.trickle {
        return trickle(&args);
    }
    if args.live {
        return live(&args);
    }
    if args.live_v2v {
        return live_v2v(&args);
    }
    if args.json {
        bail!("--json goes with --trickle, --live or --live-v2v");
    }
    if args.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    let segment_seconds = args.segment_seconds.unwrap_or(2.0);
    if !(0.5..=300.0).contains(&segment_seconds) {
        bail!("--segment-seconds must be between 0.5 and 300");
    }
    let profiles = VideoProfile::from_spec(&args.profiles)?;
    let ai_targets: Vec<(PipelineKind, String)> = args
        .ai
        .iter()
        .map(|spec| {
            let (pipeline, model) = spec
                .split_once(':')
                .with_context(|| format!("--ai {spec:?}: expected PIPELINE:MODEL_ID"))?;
            let kind = PipelineKind::from_name(pipeline)
                .with_context(|| format!("--ai: unknown pipeline {pipeline:?}"))?;
            Ok((kind, model.to_string()))
        })
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let media_dir = args.out.join("media");
    let _ = std::fs::remove_dir_all(&media_dir);
    std::fs::create_dir_all(&media_dir)?;

    let hardware = hardware::detect();
    let caps = probe::probe();
    let backend = args.video.select(&caps)?;
    let transcoder = Transcoder::new(backend);

    let progress =
        MultiProgress::with_draw_target(if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
    let style = ProgressStyle::with_template("{prefix:>28} {bar:30} {pos}/{len} {elapsed}")
        .expect("valid template");
    let spinner = progress.add(ProgressBar::new_spinner().with_prefix("preparing media"));

    let (source, input_name) = match &args.input {
        Some(path) => (path.clone(), path.display().to_string()),
        None => {
            let spec = input::ClipSpec::parse(&args.generate)?;
            let path = input::generate(spec, &media_dir)?;
            (
                path,
                format!(
                    "generated {}x{} {} fps, {} s",
                    spec.width, spec.height, spec.fps, spec.seconds
                ),
            )
        }
    };
    let segments = input::segment(&source, &media_dir, segment_seconds)?;
    let media_seconds = bench::media_seconds(&segments);
    let first = lpworker::video::container::demux(
        segments[0].bytes.clone().into(),
        &Default::default(),
        None,
    )?;
    let input_size = (first.width, first.height);
    spinner.finish_and_clear();

    let options = TranscodeOptions {
        profiles: profiles.clone(),
        preset: args.video.preset.clone(),
        ..Default::default()
    };
    let mut video = Vec::new();
    for c in levels(&args, hardware.cpu_cores) {
        let bar = progress.add(
            ProgressBar::new((segments.len() * c) as u64)
                .with_style(style.clone())
                .with_prefix(format!("lpworker, {c} stream(s)")),
        );
        let mut level =
            bench::run_video_level(&transcoder, &segments, &options, c, media_seconds, &|| {
                bar.inc(1)
            })?;
        bar.finish();
        if args.compare_ffmpeg {
            let bar = progress.add(
                ProgressBar::new((segments.len() * c) as u64)
                    .with_style(style.clone())
                    .with_prefix(format!("ffmpeg CLI, {c} stream(s)")),
            );
            let wall = bench::run_ffmpeg_level(
                &segments,
                &profiles,
                input_size,
                &args.video.preset,
                c,
                &media_dir,
                &|| bar.inc(1),
            )?;
            bar.finish();
            level.ffmpeg = Some(bench::FfmpegStats {
                wall_seconds: wall,
                realtime_ratio: media_seconds / wall,
                lpworker_speedup: wall / level.wall_seconds,
            });
        }
        let behind = level.realtime_ratio < 0.5;
        video.push(level);
        // Past this point every level only takes longer and says the same.
        if behind && args.concurrency.is_empty() {
            break;
        }
    }

    let mut ai = Vec::new();
    if !ai_targets.is_empty() {
        let registry = if args.models.ai_models.is_some() {
            args.models.load()?.expect("models configured")
        } else {
            let spec = ai_targets
                .iter()
                .map(|(k, m)| format!("{}:{m}", k.name()))
                .collect::<Vec<_>>()
                .join(",");
            let configs = lpworker::ai::config::load(&spec)?;
            lpworker::ai::onnx::init(args.models.onnxruntime.as_deref())?;
            Arc::new(lpworker::ai::Registry::load(
                &configs,
                &args.models.models_dir,
                args.models.ai_threads,
            )?)
        };
        for (kind, model) in &ai_targets {
            let mut levels_out = Vec::new();
            for c in levels(&args, hardware.cpu_cores) {
                let bar = progress.add(
                    ProgressBar::new((c * args.ai_requests) as u64)
                        .with_style(style.clone())
                        .with_prefix(format!("{}, {c} client(s)", kind.name())),
                );
                levels_out.push(bench::run_ai_level(
                    &registry,
                    *kind,
                    model,
                    c,
                    args.ai_requests,
                    &|| bar.inc(1),
                )?);
                bar.finish();
            }
            let runtime = registry
                .find(*kind, model)
                .map(|e| e.pipeline.runtime())
                .unwrap_or("?");
            ai.push(bench::AiBench {
                pipeline: kind.name().into(),
                model_id: model.clone(),
                runtime: runtime.into(),
                levels: levels_out,
            });
        }
    }

    let report = Report {
        lpworker_version: env!("CARGO_PKG_VERSION").into(),
        hardware,
        backend: transcoder.backend_name().into(),
        input: input_name,
        media_seconds,
        segments: segments.len(),
        profiles: profiles.iter().map(|p| p.name.clone()).collect(),
        preset: args.video.preset.clone(),
        max_realtime_concurrency: bench::max_realtime(&video),
        video,
        ai,
    };
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let summary = report::markdown(&report);
    std::fs::write(args.out.join("summary.md"), &summary)?;
    report::plot(&report, &args.out, "bench")?;
    println!("{summary}");
    println!(
        "report: {}/report.json, summary.md, bench.svg, bench.png",
        args.out.display()
    );
    Ok(())
}
