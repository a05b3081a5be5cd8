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

/// What choosing a GPU for a session needs to know of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuState {
    /// Transcode sessions running on it.
    pub sessions: usize,
    /// Its context returned a sticky error: it takes no new sessions.
    pub faulted: bool,
    /// Owners of its handles besides the set itself (sessions, decoders,
    /// encoders, frames still in flight).
    pub other_holders: usize,
}

/// The least busy GPU that is not faulted, searching from `start` (mod len)
/// so that equally busy GPUs take turns; `None` when every GPU is faulted
/// (or there are none), and the session goes to the CPU.
pub fn least_busy_usable(states: &[GpuState], start: usize) -> Option<usize> {
    let n = states.len();
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| !states[i].faulted)
        .min_by_key(|&i| states[i].sessions)
}

/// Whether a faulted GPU can be re-opened now: nothing but the set holds
/// its old context, so dropping that releases the context and no session,
/// frame or encoder is left with handles into it.
pub fn ready_to_reopen(state: &GpuState) -> bool {
    state.faulted && state.sessions == 0 && state.other_holders == 0
}

#[cfg(feature = "nvidia")]
pub use gpu_set::GpuSet;

#[cfg(feature = "nvidia")]
mod gpu_set {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::{least_busy_usable, ready_to_reopen, GpuSelection, GpuState};
    use crate::video::nvidia::device::{self, GpuDevice};
    use crate::video::nvidia::probe::GpuInfo;
    use crate::video::VideoError;

    /// One GPU of a set: its device, `None` while it is being re-opened
    /// after a fault (or after re-opening failed, to be tried again).
    struct Slot {
        info: GpuInfo,
        gpu: Mutex<Option<Arc<GpuDevice>>>,
    }

    impl Slot {
        fn gpu(&self) -> std::sync::MutexGuard<'_, Option<Arc<GpuDevice>>> {
            self.gpu
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    /// The GPUs one backend transcodes on.
    #[derive(Default)]
    pub struct GpuSet {
        slots: Vec<Arc<Slot>>,
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
            let mut slots = Vec::with_capacity(chosen.len());
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
                slots.push(Arc::new(Slot {
                    info: info.clone(),
                    gpu: Mutex::new(Some(gpu)),
                }));
            }
            Ok(GpuSet {
                slots,
                next: AtomicUsize::new(0),
            })
        }

        /// The GPUs open now (one being re-opened is left out).
        pub fn gpus(&self) -> Vec<Arc<GpuDevice>> {
            self.slots.iter().filter_map(|s| s.gpu().clone()).collect()
        }

        /// The GPU for a new session: the least busy that is not faulted,
        /// ties taken in turn; `None` when every GPU is out of rotation.
        /// Faulted GPUs nothing holds any more are re-opened on the way, in
        /// the background (their kernels take seconds to compile).
        pub fn pick(&self) -> Result<Option<Arc<GpuDevice>>, VideoError> {
            if self.slots.is_empty() {
                return Err(VideoError::BackendUnavailable(
                    "nvidia (no GPU open)".into(),
                ));
            }
            let gpus: Vec<Option<Arc<GpuDevice>>> =
                self.slots.iter().map(|s| s.gpu().clone()).collect();
            let states: Vec<GpuState> = gpus
                .iter()
                .map(|gpu| match gpu {
                    Some(gpu) => GpuState {
                        sessions: gpu.sessions(),
                        faulted: gpu.is_faulted(),
                        // The slot's reference and the clone in `gpus`.
                        other_holders: Arc::strong_count(gpu).saturating_sub(2),
                    },
                    // Being re-opened: not usable yet, nothing to reopen.
                    None => GpuState {
                        faulted: true,
                        other_holders: 1,
                        ..Default::default()
                    },
                })
                .collect();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let chosen = least_busy_usable(&states, start).and_then(|i| gpus[i].clone());
            drop(gpus);
            for (slot, state) in self.slots.iter().zip(&states) {
                if ready_to_reopen(state) {
                    Self::reopen(slot);
                }
            }
            Ok(chosen)
        }

        /// Takes a faulted GPU out of its slot, if the slot still holds the
        /// only reference, and re-opens it on another thread.
        fn reopen(slot: &Arc<Slot>) {
            let old = {
                let mut gpu = slot.gpu();
                match gpu.as_ref() {
                    Some(g) if g.is_faulted() && Arc::strong_count(g) == 1 => gpu.take(),
                    _ => return,
                }
            };
            let slot = Arc::clone(slot);
            std::thread::spawn(move || {
                // The last reference: its stream, kernels and context go.
                drop(old);
                match device::reopen(&slot.info) {
                    Ok(fresh) => {
                        tracing::info!(
                            gpu = slot.info.index,
                            "faulted GPU re-opened: back in rotation"
                        );
                        *slot.gpu() = Some(fresh);
                    }
                    Err(e) => tracing::error!(
                        gpu = slot.info.index,
                        error = %e,
                        "faulted GPU did not re-open: left out of rotation"
                    ),
                }
            });
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

    #[test]
    fn faulted_gpus_leave_rotation_and_return_once_nothing_holds_them() {
        let healthy = |sessions| GpuState {
            sessions,
            faulted: false,
            other_holders: sessions,
        };
        let faulted = |sessions, other_holders| GpuState {
            sessions,
            faulted: true,
            other_holders,
        };
        assert_eq!(least_busy_usable(&[], 0), None);
        // The idle GPU faulted: sessions go to the busy healthy one.
        let states = [faulted(0, 0), healthy(3)];
        for start in 0..4 {
            assert_eq!(least_busy_usable(&states, start), Some(1));
        }
        // Every GPU faulted: none, so the session goes to the CPU.
        assert_eq!(least_busy_usable(&[faulted(0, 0), faulted(2, 2)], 0), None);
        // Healthy ties still take turns around a faulted GPU.
        let states = [healthy(1), faulted(0, 0), healthy(1)];
        let picks: Vec<_> = (0..3).map(|s| least_busy_usable(&states, s)).collect();
        assert_eq!(picks, vec![Some(0), Some(2), Some(2)]);

        // Re-opened only when faulted and neither a session nor a frame,
        // decoder or encoder still holds the old context.
        assert!(ready_to_reopen(&faulted(0, 0)));
        assert!(!ready_to_reopen(&faulted(1, 1)));
        assert!(!ready_to_reopen(&faulted(0, 1)));
        assert!(!ready_to_reopen(&healthy(0)));
    }
}
