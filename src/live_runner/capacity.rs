//! Capacity admitted per GPU, not per registration. go-livepeer counts
//! sessions against each registration's own `capacity` only, so two
//! runners that declare the same GPU each fill it (go-livepeer #4015).
//! Here a runner's capacity says how many of its sessions one GPU holds, so
//! each of its sessions takes `1/capacity` of that GPU, and a reservation is
//! admitted only while the GPU's shares, over every runner that declares
//! it, stay within one whole GPU.

/// One GPU, in shares: divisible by every capacity from 1 to 16, so the
/// common cases are exact; for others a share is rounded down, which lets
/// at most a few millionths of a GPU be overcommitted.
pub const GPU_SHARES: u64 = 720_720_000;

/// The GPU share one session of a runner with `capacity` takes.
pub fn session_share(capacity: u32) -> u64 {
    // At least one share: a capacity past GPU_SHARES must not divide by 0.
    (GPU_SHARES / u64::from(capacity.max(1))).max(1)
}

/// A runner as capacity sees it: its own limit and its sessions.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub capacity: u32,
    pub sessions: u32,
}

impl Load {
    fn gpu_shares(self) -> u64 {
        session_share(self.capacity) * u64::from(self.sessions)
    }
}

/// How many more sessions `runner` can take, given the other runners on
/// the same GPU (`None` when it declares no GPU: then only its own limit).
pub fn available(runner: Load, same_gpu_others: Option<&[Load]>) -> u32 {
    let own = runner.capacity.saturating_sub(runner.sessions);
    let Some(others) = same_gpu_others else {
        return own;
    };
    let used: u64 = runner.gpu_shares() + others.iter().map(|l| l.gpu_shares()).sum::<u64>();
    let free = GPU_SHARES.saturating_sub(used) / session_share(runner.capacity);
    own.min(u32::try_from(free).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(capacity: u32, sessions: u32) -> Load {
        Load { capacity, sessions }
    }

    #[test]
    fn a_runner_alone_gets_its_declared_capacity() {
        for c in 1..=40 {
            assert_eq!(available(load(c, 0), Some(&[])), c, "capacity {c}");
            assert_eq!(available(load(c, c), Some(&[])), 0);
        }
        assert_eq!(available(load(3, 1), None), 2);
        // Absurd capacities are refused by spec; here they do not panic.
        assert!(available(load(u32::MAX, 0), Some(&[])) > 0);
    }

    #[test]
    fn runners_sharing_a_gpu_do_not_overcommit_it() {
        // Two registrations of capacity 2 on one GPU: 2 sessions in all,
        // where go-livepeer would admit 4.
        assert_eq!(available(load(2, 1), Some(&[load(2, 1)])), 0);
        assert_eq!(available(load(2, 0), Some(&[load(2, 1)])), 1);
        // A heavy app (1 per GPU) and a light one (3 per GPU).
        assert_eq!(available(load(1, 0), Some(&[load(3, 1)])), 0);
        assert_eq!(available(load(3, 0), Some(&[load(1, 0)])), 3);
        assert_eq!(available(load(3, 1), Some(&[load(3, 1)])), 1);
    }
}
