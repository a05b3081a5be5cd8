//! `lpworker transcode`: one segment or clip through a ladder, from the shell.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use lpworker::video::probe::{self, BackendChoice};
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
    /// Which backend transcodes.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "LPWORKER_BACKEND")]
    pub backend: BackendChoice,
    /// x264/x265 preset (go-livepeer uses medium).
    #[arg(long, default_value = "medium")]
    pub preset: String,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Print a JSON summary on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
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
    let backend = probe::select_backend(args.backend, &caps)?;
    let transcoder = Transcoder::new(backend);
    let options = TranscodeOptions {
        profiles,
        container: args.container,
        timeout,
        preset: args.preset.clone(),
        ..Default::default()
    };

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
    let result = transcoder.transcode(input, &options, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.packets_total as u64);
            bar.set_position(p.packets_done as u64);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let output = result.with_context(|| format!("transcoding {}", args.input))?;

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
