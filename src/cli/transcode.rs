//! `lpworker transcode`: one segment or clip through a ladder, from the shell.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use lpworker::video::probe;
use lpworker::video::profile::DEFAULT_LADDER;
use lpworker::video::{OutputContainer, TranscodeOptions, Transcoder, VideoProfile};

#[derive(Debug, clap::Args)]
pub struct TranscodeArgs {
    /// Input file (MPEG-TS or MP4; H.264 or HEVC video), or `-` for stdin.
    pub input: String,
    /// Profiles: comma-separated standard names (P720p30fps16x9,...) or a JSON
    /// file in go-livepeer's -transcodingOptions format. Default: a 1080p to
    /// 240p ladder.
    #[arg(long, alias = "transcodingOptions", value_name = "NAMES|FILE")]
    pub profiles: Option<String>,
    /// Directory for the renditions (created if missing).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Container of the renditions.
    #[arg(long, value_enum, default_value_t = OutputContainer::Mpegts)]
    pub container: OutputContainer,
    #[command(flatten)]
    pub video: super::video_backend::VideoBackendArgs,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Print a JSON summary on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only demux and decode (no scaling, no encoding), and report the
    /// decoder's speed: the baseline a ladder's cost is measured against.
    #[arg(long)]
    pub decode_only: bool,
    /// Transcode (or decode) the input this many times in this process and
    /// report every run's time; the first run includes the backend's
    /// warm-up (GPU contexts, encoder sessions).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Scale in each rendition's thread even where the backend scales the
    /// whole ladder in one step (the NVIDIA backend): to measure what the
    /// one-step ladder gains.
    #[arg(long)]
    pub per_rendition_scaling: bool,
}

/// `amount` (frames, seconds of video) per second of `seconds`; 0 for no time.
fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Adds the timing of repeated runs and the GPUs the probe found to a JSON
/// summary; returns the median run time.
fn add_timing(
    summary: &mut serde_json::Value,
    runs: &[f64],
    frames: u64,
    caps: &probe::Capabilities,
) -> Result<f64> {
    let median_seconds = median(runs);
    summary["runs_seconds"] = serde_json::json!(runs);
    summary["median_seconds"] = serde_json::json!(median_seconds);
    summary["median_fps"] = serde_json::json!(per_second(frames as f64, median_seconds));
    // What the capability probe found on each GPU (engines, codecs, and why
    // one is unusable): shows which stages ran where.
    summary["gpus"] = serde_json::to_value(&caps.gpus)?;
    Ok(median_seconds)
}

/// Runs `run` `repeat` times (at least once); returns each run's time in
/// seconds, as `elapsed` reads it from the output, and the last output.
fn repeated<T>(
    repeat: u32,
    mut run: impl FnMut() -> Result<T>,
    elapsed: impl Fn(&T) -> Duration,
) -> Result<(Vec<f64>, T)> {
    let mut last = run()?;
    let mut runs = vec![elapsed(&last).as_secs_f64()];
    for _ in 1..repeat {
        last = run()?;
        runs.push(elapsed(&last).as_secs_f64());
    }
    Ok((runs, last))
}

/// The median of some run times (seconds).
fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn decode_only(
    transcoder: &Transcoder,
    input: Vec<u8>,
    options: &TranscodeOptions,
    args: &TranscodeArgs,
    caps: &probe::Capabilities,
) -> Result<()> {
    let input: std::sync::Arc<[u8]> = input.into();
    let (runs, output) = repeated(
        args.repeat,
        || {
            transcoder
                .decode_only(input.clone(), options)
                .with_context(|| format!("decoding {}", args.input))
        },
        |o| o.elapsed,
    )?;
    if args.json {
        let mut summary = serde_json::to_value(&output)?;
        add_timing(&mut summary, &runs, output.decoded.frames, caps)?;
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let median_seconds = median(&runs);
        let median_fps = per_second(output.decoded.frames as f64, median_seconds);
        println!(
            "decoded {} frames, {} pixels ({} backend): median {:.3} s over {} run(s), {:.1} fps",
            output.decoded.frames,
            output.decoded.pixels,
            output.backend,
            median_seconds,
            runs.len(),
            median_fps
        );
    }
    Ok(())
}

pub fn run(args: TranscodeArgs) -> Result<()> {
    let profiles = match &args.profiles {
        Some(spec) => VideoProfile::from_spec(spec)?,
        None => VideoProfile::parse_list(&DEFAULT_LADDER.join(","))?,
    };
    let input = if args.input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else {
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input))?
    };
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            bail!("--timeout must be a positive number of seconds")
        }
        t => t.map(Duration::from_secs_f64),
    };
    let caps = probe::probe();
    let backend = args.video.select(&caps)?;
    let transcoder = Transcoder::new(backend);
    let options = TranscodeOptions {
        profiles,
        container: args.container,
        timeout,
        preset: args.video.preset.clone(),
        ladder_stage: !args.per_rendition_scaling,
        ..Default::default()
    };

    if args.decode_only {
        return decode_only(&transcoder, input, &options, &args, &caps);
    }

    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} decoding {bar:40} {pos}/{len} packets {elapsed}",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let input: std::sync::Arc<[u8]> = input.into();
    let result = repeated(
        args.repeat,
        || {
            transcoder
                .transcode(input.clone(), &options, &mut |p| {
                    if let Some(bar) = &bar {
                        bar.set_length(p.packets_total as u64);
                        bar.set_position(p.packets_done as u64);
                    }
                })
                .with_context(|| format!("transcoding {}", args.input))
        },
        |o| o.elapsed,
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (runs, output) = result?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut files = Vec::new();
    for r in &output.renditions {
        let path = args
            .out
            .join(format!("{}.{}", r.profile, r.container.extension()));
        std::fs::write(&path, &r.data).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }

    if args.json {
        let mut summary = serde_json::to_value(&output)?;
        for (r, path) in summary["renditions"]
            .as_array_mut()
            .expect("renditions serialize as an array")
            .iter_mut()
            .zip(&files)
        {
            r["path"] = serde_json::Value::String(path.display().to_string());
        }
        let median_seconds = add_timing(&mut summary, &runs, output.decoded.frames, &caps)?;
        // Seconds of video per second of transcoding: above 1 is faster than
        // real time.
        summary["realtime_ratio"] =
            serde_json::json!(per_second(output.input.duration_seconds, median_seconds));
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let i = &output.input;
        println!(
            "input: {} {}x{} {:.2} fps, {:.2} s{}; decoded {} frames, {} pixels ({} backend, {:.2} s)",
            i.codec,
            i.width,
            i.height,
            i.frame_rate,
            i.duration_seconds,
            if i.has_audio { ", with audio" } else { "" },
            output.decoded.frames,
            output.decoded.pixels,
            output.backend,
            output.elapsed.as_secs_f64(),
        );
        println!(
            "{:<18} {:>10} {:>7} {:>13} {:>10}  file",
            "profile", "size", "frames", "pixels", "bytes"
        );
        for (r, path) in output.renditions.iter().zip(&files) {
            println!(
                "{:<18} {:>10} {:>7} {:>13} {:>10}  {}",
                r.profile,
                format!("{}x{}", r.width, r.height),
                r.encoded.frames,
                r.encoded.pixels,
                r.bytes,
                path.display()
            );
        }
        if i.duration_seconds > 0.0 {
            println!(
                "real-time ratio: {:.2}x",
                i.duration_seconds / output.elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}
