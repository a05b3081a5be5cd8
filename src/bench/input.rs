//! The benchmark's media: a generated test clip or the user's file, cut into
//! go-livepeer-sized segments with the FFmpeg CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the ffmpeg command is needed to prepare benchmark media: {0}")]
    NoFfmpeg(std::io::Error),
    #[error("ffmpeg failed to {0}")]
    Ffmpeg(String),
    #[error("--generate {0:?}: expected WIDTHxHEIGHT or NAMEp with a frame rate and length, e.g. 1080p30:60s or 1280x720p60:20s")]
    BadSpec(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no segments were produced from {0}")]
    Empty(String),
}

/// A clip to generate: size, frame rate and length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: f64,
}

impl ClipSpec {
    /// Parses `1080p30:60s`, `720p60:20s` or `640x360p30:4s`.
    pub fn parse(spec: &str) -> Result<ClipSpec, InputError> {
        let bad = || InputError::BadSpec(spec.to_string());
        let (video, length) = spec.split_once(':').ok_or_else(bad)?;
        let seconds: f64 = length.trim_end_matches('s').parse().map_err(|_| bad())?;
        let (size, fps) = video.split_once('p').ok_or_else(bad)?;
        let fps: u32 = fps.parse().map_err(|_| bad())?;
        let (width, height) = match size.split_once('x') {
            Some((w, h)) => (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?),
            None => {
                let h: u32 = size.parse().map_err(|_| bad())?;
                ((h * 16 / 9 + 1) & !1, h)
            }
        };
        if !(seconds > 0.0 && seconds <= 3600.0)
            || fps == 0
            || fps > 240
            || width < 16
            || height < 16
            || width > 7680
            || height > 4320
        {
            return Err(bad());
        }
        Ok(ClipSpec {
            width,
            height,
            fps,
            seconds,
        })
    }
}

/// One segment of the benchmark input.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Runs the FFmpeg CLI quietly (`-y`); its stderr becomes the error.
pub(crate) fn ffmpeg(args: &[&str], what: &str) -> Result<(), InputError> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .map_err(InputError::NoFfmpeg)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(InputError::Ffmpeg(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Generates `spec` (FFmpeg's testsrc2 pattern and a tone, H.264 + AAC in
/// MPEG-TS) with a keyframe every 2 s.
pub fn generate(spec: ClipSpec, dir: &Path) -> Result<PathBuf, InputError> {
    generate_keyed(spec, 2.0, dir)
}

/// [`generate`] with a keyframe every `keyframe_seconds` (and nowhere
/// else), so that segments of that length each start with one.
pub fn generate_keyed(
    spec: ClipSpec,
    keyframe_seconds: f64,
    dir: &Path,
) -> Result<PathBuf, InputError> {
    let path = dir.join(format!(
        "source_{}x{}p{}_{}s.ts",
        spec.width, spec.height, spec.fps, spec.seconds
    ));
    let video = format!(
        "testsrc2=size={}x{}:rate={}",
        spec.width, spec.height, spec.fps
    );
    let gop = ((f64::from(spec.fps) * keyframe_seconds).round() as u32)
        .max(1)
        .to_string();
    let seconds = spec.seconds.to_string();
    let out = path.to_string_lossy();
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &video,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &seconds,
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            &gop,
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
            &out,
        ],
        "generate the test clip",
    )?;
    Ok(path)
}

/// Cuts `source` into ~`seconds`-long MPEG-TS segments at keyframes (stream
/// copy, timestamps kept), as a gateway does.
pub fn segment(source: &Path, dir: &Path, seconds: f64) -> Result<Vec<Segment>, InputError> {
    let pattern = dir.join("segment_%04d.ts");
    let (src, pat, len) = (
        source.to_string_lossy(),
        pattern.to_string_lossy(),
        seconds.to_string(),
    );
    ffmpeg(
        &[
            "-i",
            &src,
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-c",
            "copy",
            "-f",
            "segment",
            "-segment_time",
            &len,
            "-segment_format",
            "mpegts",
            "-reset_timestamps",
            "0",
            &pat,
        ],
        "cut the input into segments",
    )?;
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| InputError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("segment_"))
        })
        .collect();
    paths.sort();
    let segments: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|source| InputError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Segment { path, bytes })
        })
        .collect::<Result<_, InputError>>()?;
    if segments.is_empty() {
        return Err(InputError::Empty(source.display().to_string()));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_specs() {
        assert_eq!(
            ClipSpec::parse("1080p30:60s").unwrap(),
            ClipSpec {
                width: 1920,
                height: 1080,
                fps: 30,
                seconds: 60.0
            }
        );
        assert_eq!(ClipSpec::parse("720p60:20").unwrap().width, 1280);
        assert_eq!(
            ClipSpec::parse("640x360p25:4s").unwrap(),
            ClipSpec {
                width: 640,
                height: 360,
                fps: 25,
                seconds: 4.0
            }
        );
        for bad in [
            "1080p",
            "1080:60s",
            "p30:1s",
            "1080p0:1s",
            "1080p30:0s",
            "99999p30:1s",
            "axbp30:1s",
        ] {
            assert!(ClipSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
