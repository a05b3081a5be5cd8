//! Choosing GPUs: which ones `--nvidia` names (parsed on every build, so the
//! flag reads the same without the `nvidia` feature), and, with the feature,
//! the set a backend opens from them and which of its GPUs takes each new
//! session.

/// Which GPUs the NVIDIA backend uses, as go-livepeer's `-nvidia` takes
/// them: `all`, or device indices separated by commas (`0,1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    All,
    Only(Vec<u32>),
}

impl std::str::FromStr for GpuSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(GpuSelection::All);
        }
        let mut indices = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let index: u32 = part.parse().map_err(|_| {
                format!("{part:?} is not a GPU index: expected \"all\" or indices like \"0,1\"")
            })?;
            if indices.contains(&index) {
                return Err(format!("GPU {index} is listed twice"));
            }
            indices.push(index);
        }
        Ok(GpuSelection::Only(indices))
    }
}

/// The index of the smallest load, searching from `start` (mod len) so that
/// equally busy GPUs take turns; `None` when there are none.
pub fn least_busy(loads: &[usize], start: usize) -> Option<usize> {
    let n = loads.len();
    (0..n).map(|k| (start + k) % n).min_by_key(|&i| loads[i])
}

#[cfg(feature = "nvidia")]
pub use gpu_set::GpuSet;

#[cfg(feature = "nvidia")]
mod gpu_set {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::{least_busy, GpuSelection};
    use crate::video::nvidia::device::{self, GpuDevice};
    use crate::video::nvidia::probe::GpuInfo;
    use crate::video::VideoError;

    /// The GPUs one backend transcodes on.
    #[derive(Default)]
    pub struct GpuSet {
        gpus: Vec<Arc<GpuDevice>>,
        /// Where the next tie between equally busy GPUs is broken.
        next: AtomicUsize,
    }

    impl GpuSet {
        /// Opens the GPUs of `selection` among those `found`. Fails when one
        /// asked for by index is missing or does not open, or none has NVDEC.
        pub fn open(selection: &GpuSelection, found: &[GpuInfo]) -> Result<Self, VideoError> {
            let unavailable =
                |why: String| VideoError::BackendUnavailable(format!("nvidia ({why})"));
            let chosen: Vec<&GpuInfo> = match selection {
                GpuSelection::All => found.iter().collect(),
                GpuSelection::Only(indices) => indices
                    .iter()
                    .map(|i| {
                        found.iter().find(|g| g.index == *i).ok_or_else(|| {
                            unavailable(format!(
                                "GPU {i} not found; the driver reports {} GPU(s)",
                                found.len()
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            if chosen.is_empty() {
                return Err(unavailable("no NVIDIA GPU found".into()));
            }
            let mut gpus = Vec::with_capacity(chosen.len());
            for info in chosen {
                let gpu = device::open_shared(info)
                    .map_err(|e| unavailable(format!("GPU {}: {e}", info.index)))?;
                let engines = gpu.engines();
                if engines.decode.is_empty() {
                    return Err(unavailable(format!(
                        "GPU {} ({}) has no usable NVDEC: {}",
                        info.index,
                        info.name,
                        engines.decode_error.as_deref().unwrap_or("unknown")
                    )));
                }
                if engines.encode.is_empty() {
                    tracing::warn!(
                        gpu = info.index,
                        name = %info.name,
                        reason = engines.encode_error.as_deref().unwrap_or("unknown"),
                        "no NVENC on this GPU: renditions are decoded and scaled on it and encoded on the CPU"
                    );
                }
                gpus.push(gpu);
            }
            Ok(GpuSet {
                gpus,
                next: AtomicUsize::new(0),
            })
        }

        pub fn gpus(&self) -> &[Arc<GpuDevice>] {
            &self.gpus
        }

        /// The GPU for a new session: the least busy, ties taken in turn.
        pub fn pick(&self) -> Result<Arc<GpuDevice>, VideoError> {
            let loads: Vec<usize> = self.gpus.iter().map(|g| g.sessions()).collect();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            least_busy(&loads, start)
                .map(|i| Arc::clone(&self.gpus[i]))
                .ok_or_else(|| VideoError::BackendUnavailable("nvidia (no GPU open)".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_selection_reads_go_livepeers_nvidia_flag() {
        assert_eq!("all".parse::<GpuSelection>(), Ok(GpuSelection::All));
        assert_eq!("ALL".parse::<GpuSelection>(), Ok(GpuSelection::All));
        assert_eq!("0".parse::<GpuSelection>(), Ok(GpuSelection::Only(vec![0])));
        assert_eq!(
            " 0, 1 ,3".parse::<GpuSelection>(),
            Ok(GpuSelection::Only(vec![0, 1, 3]))
        );
        for bad in ["", "0,", "a", "0;1", "-1", "0,0"] {
            assert!(bad.parse::<GpuSelection>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sessions_go_to_the_least_busy_gpu_and_ties_take_turns() {
        assert_eq!(least_busy(&[], 0), None);
        assert_eq!(least_busy(&[0], 5), Some(0));
        assert_eq!(least_busy(&[2, 0, 1], 0), Some(1));
        assert_eq!(least_busy(&[2, 0, 1], 2), Some(1));
        // Equal loads: the starting point rotates through the GPUs.
        let picks: Vec<_> = (0..4).map(|s| least_busy(&[1, 1], s)).collect();
        assert_eq!(picks, vec![Some(0), Some(1), Some(0), Some(1)]);
        // Simulate sessions opening and never closing on two GPUs: they
        // alternate, so neither gets two more than the other.
        let mut loads = [0usize; 2];
        for s in 0..10 {
            let i = least_busy(&loads, s).unwrap();
            loads[i] += 1;
        }
        assert_eq!(loads, [5, 5]);
    }
}
