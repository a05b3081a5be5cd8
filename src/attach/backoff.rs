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

    /// The next delay: the current interval ±50% ("full jitter" would allow
    /// near-zero waits that hammer a restarting orchestrator), then the
    /// interval grows by 1.5× up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.as_secs_f64();
        let delay = rand::thread_rng().gen_range(base * 0.5..=base * 1.5);
        self.current = self.current.mul_f64(1.5).min(self.max);
        Duration::from_secs_f64(delay).min(self.max)
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
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays[19] >= Duration::from_secs(1),
            "interval reached the cap: {delays:?}"
        );
        // Jitter: not every delay at the cap is identical.
        assert!(delays[15..].windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
