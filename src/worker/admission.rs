//! Admission control: at most `capacity` requests in flight; beyond that a
//! request is refused at once (never queued), and while draining all new
//! requests are refused.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Admission {
    capacity: u32,
    in_flight: AtomicU32,
    draining: AtomicBool,
    idle: Notify,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken.
    Full,
    /// The worker is shutting down.
    Draining,
}

/// One admitted request; its slot frees when this drops.
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
        })
    }

    pub fn try_admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| Refusal::Full)?;
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

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting new requests.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_capacity_then_refuses() {
        let a = Admission::new(2);
        let p1 = a.try_admit().unwrap();
        let p2 = a.try_admit().unwrap();
        assert_eq!(a.try_admit().unwrap_err(), Refusal::Full);
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
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.in_flight(), 0);
    }
}
