//! `--max-sessions`: a number, or `auto`, measured at start as `lpworker
//! bench` measures real-time capacity (go-livepeer takes `auto` on an
//! orchestrator only, summing its transcoders' numbers; a worker here
//! measures its own).

use anyhow::{Context, Result};

use lpworker::bench::capacity;
use lpworker::video::probe::Capabilities;
use lpworker::video::Transcoder;

use super::video_backend::VideoBackendArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSessions {
    Fixed(u32),
    /// Measured at start.
    Auto,
}

/// `10`, or `auto`.
pub fn parse(text: &str) -> Result<MaxSessions, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(MaxSessions::Auto);
    }
    match text.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(format!(
            "{text:?}: a number of sessions above 0, or auto (measured at start)"
        )),
        Ok(n) => Ok(MaxSessions::Fixed(n)),
    }
}

/// How `auto` is measured.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrationArgs {
    /// The clip `--max-sessions auto` transcodes at rising concurrency, as
    /// `bench --generate` takes it (gateways' 2 s segments of it).
    #[arg(long, default_value = capacity::DEFAULT_CLIP)]
    pub max_sessions_clip: String,
    /// The ladder each stream of the measurement gets.
    #[arg(long, default_value = capacity::DEFAULT_LADDER)]
    pub max_sessions_ladder: String,
    /// The most sessions `auto` admits, whatever it measures.
    #[arg(long, default_value_t = 64)]
    pub max_sessions_cap: u32,
}

impl MaxSessions {
    /// The number to admit: as given, or the streams this machine keeps in
    /// real time through the backend `video` selects among what `probe`
    /// finds (called only for `auto`: the caller may have probed already).
    pub fn resolve(
        self,
        video: &VideoBackendArgs,
        calibration: &CalibrationArgs,
        probe: impl FnOnce() -> Capabilities,
    ) -> Result<u32> {
        if let MaxSessions::Fixed(n) = self {
            return Ok(n);
        }
        let backend = video.select(&probe())?;
        let transcoder = Transcoder::new(backend);
        let dir = std::env::temp_dir().join(format!("lpworker-capacity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        tracing::info!(clip = %calibration.max_sessions_clip, ladder = %calibration.max_sessions_ladder, "--max-sessions auto: measuring real-time capacity");
        let measured = capacity::measure(
            &transcoder,
            &video.preset,
            &calibration.max_sessions_clip,
            &calibration.max_sessions_ladder,
            calibration.max_sessions_cap,
            &dir,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let c = measured.context("--max-sessions auto: measuring real-time capacity")?;
        let levels: Vec<String> = c
            .levels
            .iter()
            .map(|l| format!("{}:{:.2}x", l.sessions, l.realtime_ratio))
            .collect();
        if c.realtime {
            tracing::info!(sessions = c.sessions, levels = %levels.join(" "), seconds = c.seconds, "--max-sessions auto: measured");
        } else {
            tracing::warn!(levels = %levels.join(" "), "--max-sessions auto: even one stream falls behind real time on this machine; admitting 1");
        }
        Ok(c.sessions)
    }
}

impl MaxSessions {
    /// For roles that do not transcode (AI only): `auto` is what
    /// go-livepeer's default would be.
    pub fn resolve_without_measuring(self) -> u32 {
        match self {
            MaxSessions::Fixed(n) => n,
            MaxSessions::Auto => 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_or_auto() {
        assert_eq!(parse("12"), Ok(MaxSessions::Fixed(12)));
        assert_eq!(parse("auto"), Ok(MaxSessions::Auto));
        assert_eq!(parse("AUTO"), Ok(MaxSessions::Auto));
        for bad in ["0", "-1", "many", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
