//! `--max-sessions auto`: how many streams this machine transcodes in real
//! time, measured the way `lpworker bench` measures it (a generated clip,
//! segmented, through the worker's own transcoder and a ladder), instead
//! of a number an operator guesses. Levels are searched by doubling, then
//! bisection, so a large GPU is measured in a handful of levels.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::input::{self, ClipSpec};
use super::BenchError;
use crate::video::{TranscodeOptions, Transcoder, VideoProfile};

/// The calibration clip: 1080p30, two 2 s segments (gateways send 2 s).
pub const DEFAULT_CLIP: &str = "1080p30:4s";
/// The ladder a typical gateway asks for.
pub const DEFAULT_LADDER: &str = "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9";

/// One level tried: `sessions` streams at once kept `realtime_ratio` × real
/// time each (≥ 1 keeps up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Level {
    pub sessions: u32,
    pub realtime_ratio: f64,
}

/// What a calibration found.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Sessions to admit: the most that kept up, at least 1.
    pub sessions: u32,
    /// Whether even one stream kept up (if not, `sessions` is 1 anyway).
    pub realtime: bool,
    pub levels: Vec<Level>,
    pub seconds: f64,
}

/// The largest `n` in `1..=cap` with `ratio(n) >= 1`, taking the ratio as
/// falling with `n`: doubling until a level falls behind (or `cap`), then
/// bisection between the last that kept up and the first that did not.
/// Each level is measured once. `Ok((0, levels))` when one does not keep up.
pub fn search<E>(
    cap: u32,
    mut ratio: impl FnMut(u32) -> Result<f64, E>,
) -> Result<(u32, Vec<Level>), E> {
    let cap = cap.max(1);
    let mut levels = Vec::new();
    let mut measure = |n: u32, levels: &mut Vec<Level>| -> Result<bool, E> {
        let r = ratio(n)?;
        levels.push(Level {
            sessions: n,
            realtime_ratio: r,
        });
        Ok(r >= 1.0)
    };
    let (mut good, mut bad) = (0u32, None);
    let mut n = 1u32;
    loop {
        if measure(n, &mut levels)? {
            good = n;
            if n == cap {
                break;
            }
            n = n.saturating_mul(2).min(cap);
        } else {
            bad = Some(n);
            break;
        }
    }
    if let Some(mut hi) = bad {
        while hi - good > 1 {
            let mid = good + (hi - good) / 2;
            if measure(mid, &mut levels)? {
                good = mid;
            } else {
                hi = mid;
            }
        }
    }
    Ok((good, levels))
}

/// Measures `transcoder` on a generated `clip` through `ladder`, at most
/// `cap` sessions; media is written under `work_dir`.
pub fn measure(
    transcoder: &Transcoder,
    preset: &str,
    clip: &str,
    ladder: &str,
    cap: u32,
    work_dir: &Path,
) -> Result<Calibration, BenchError> {
    let started = Instant::now();
    let spec = ClipSpec::parse(clip)?;
    let source = input::generate(spec, work_dir)?;
    let segments = input::segment(&source, work_dir, 2.0)?;
    let media_seconds = super::media_seconds(&segments);
    let profiles = VideoProfile::parse_list(ladder)?;
    let options = TranscodeOptions {
        profiles,
        preset: preset.to_string(),
        ..Default::default()
    };
    let (found, levels) = search(cap, |n| {
        super::run_video_level(
            transcoder,
            &segments,
            &options,
            n as usize,
            media_seconds,
            &|| {},
        )
        .map(|l| l.realtime_ratio)
    })?;
    Ok(Calibration {
        sessions: found.max(1),
        realtime: found > 0,
        levels,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine that keeps `n` streams up while `n <= capacity`.
    fn machine(capacity: u32) -> impl FnMut(u32) -> Result<f64, ()> {
        move |n| Ok(capacity as f64 / n as f64)
    }

    #[test]
    fn doubling_then_bisection_finds_the_last_level_that_keeps_up() {
        for capacity in [1, 2, 3, 5, 8, 13, 31, 32, 33, 100] {
            let (found, levels) = search(64, machine(capacity)).unwrap();
            assert_eq!(found, capacity.min(64), "capacity {capacity}");
            // Every level tried once, and few of them.
            let mut tried: Vec<u32> = levels.iter().map(|l| l.sessions).collect();
            let n = tried.len();
            tried.sort();
            tried.dedup();
            assert_eq!(tried.len(), n, "{levels:?}");
            assert!(n <= 13, "{capacity}: {n} levels");
        }
    }

    #[test]
    fn one_that_does_not_keep_up_and_the_cap() {
        let (found, levels) = search(16, |_| Ok::<_, ()>(0.4)).unwrap();
        assert_eq!((found, levels.len()), (0, 1));
        let (found, levels) = search(6, machine(1000)).unwrap();
        assert_eq!(found, 6);
        assert_eq!(
            levels.iter().map(|l| l.sessions).collect::<Vec<_>>(),
            [1, 2, 4, 6]
        );
        assert_eq!(search(5, |_| Err::<f64, _>("broke")), Err("broke"));
    }
}
