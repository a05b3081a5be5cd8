//! Jittered exponential backoff for reconnecting to the orchestrator.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: uniform in [interval/2, interval] ("equal jitter":
    /// full jitter would allow near-zero waits that hammer a restarting
    /// orchestrator, and jitter above the interval would be clipped at the cap,
    /// making capped workers retry in lockstep), then the interval grows by
    /// 1.5× up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.as_secs_f64();
        let delay = rand::thread_rng().gen_range(base * 0.5..=base);
        self.current = self.current.mul_f64(1.5).min(self.max);
        Duration::from_secs_f64(delay)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays[19] >= Duration::from_secs(1),
            "interval reached the cap: {delays:?}"
        );
        // Jitter: delays at the cap still spread over [cap/2, cap], so
        // workers that lost the orchestrator together do not retry together.
        assert!(delays[15..].windows(2).all(|w| w[0] != w[1]), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
