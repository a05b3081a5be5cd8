//! Admission control: at most `capacity` jobs in flight. Beyond that a job is
//! refused at once ([`Admission::try_admit`], the gRPC worker: never queued) or
//! waits for a slot ([`Admission::admit`], go-livepeer's remote transcoder,
//! whose orchestrator should never send more than the registered capacity);
//! while draining every new job is refused.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Admission {
    capacity: u32,
    in_flight: AtomicU32,
    draining: AtomicBool,
    /// Woken when nothing is left in flight.
    idle: Notify,
    /// Woken whenever a slot frees (or a drain starts), for [`Admission::admit`].
    freed: Notify,
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken.
    #[error("at capacity ({capacity} concurrent jobs)")]
    Full { capacity: u32 },
    /// The worker is shutting down.
    #[error("draining for shutdown")]
    Draining,
}

/// One admitted job; its slot frees when this drops.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Admission {
    pub fn new(capacity: u32) -> Arc<Self> {
        Arc::new(Admission {
            capacity: capacity.max(1),
            in_flight: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            freed: Notify::new(),
        })
    }

    /// No limit: every job is admitted (until a drain).
    pub fn unbounded() -> Arc<Self> {
        Self::new(u32::MAX)
    }

    pub fn try_admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| Refusal::Full {
                capacity: self.capacity,
            })?;
        // A drain may have started between the check and the increment.
        if self.draining.load(Ordering::SeqCst) {
            drop(Permit {
                admission: Arc::clone(self),
            });
            return Err(Refusal::Draining);
        }
        Ok(Permit {
            admission: Arc::clone(self),
        })
    }

    /// Waits for a free slot; refused only by a drain.
    pub async fn admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        loop {
            // Registered before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            match self.try_admit() {
                Err(Refusal::Full { .. }) => freed.await,
                other => return other,
            }
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting new jobs (waiting ones are refused too).
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// Resolves once nothing is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.admission.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.admission.idle.notify_waiters();
        }
        self.admission.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn admits_up_to_capacity_then_refuses() {
        let a = Admission::new(2);
        let p1 = a.try_admit().unwrap();
        let p2 = a.try_admit().unwrap();
        assert_eq!(a.try_admit().unwrap_err(), Refusal::Full { capacity: 2 });
        drop(p1);
        let p3 = a.try_admit().unwrap();
        assert_eq!(a.in_flight(), 2);
        a.start_drain();
        assert_eq!(a.try_admit().unwrap_err(), Refusal::Draining);
        let waiter = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.wait_idle().await }
        });
        drop(p2);
        assert!(!waiter.is_finished());
        drop(p3);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.in_flight(), 0);
    }

    #[tokio::test]
    async fn admit_waits_for_a_slot_and_a_drain_refuses_waiters() {
        let a = Admission::new(1);
        let held = a.admit().await.unwrap();
        let waiter = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.admit().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a second job waits while the slot is held"
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        let held = a.try_admit().unwrap();
        let waiter = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.admit().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.start_drain();
        let refused = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refused, Err(Refusal::Draining));
        drop(held);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn refusal_says_why() {
        assert_eq!(
            Refusal::Full { capacity: 3 }.to_string(),
            "at capacity (3 concurrent jobs)"
        );
    }
}
