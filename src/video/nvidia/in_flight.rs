//! Frames still being read by queued GPU work, each kept alive until an
//! event recorded after its last read has completed. The ladder stage reads
//! each decoded frame on its own stream, but the frame's memory is freed in
//! the order of the decoder's stream, which knows nothing of that read; so
//! the frame is kept here until its fence says the read is done, and the
//! stage queues the next frame's launch meanwhile instead of waiting. Plain
//! data with no CUDA types, so that it is tested without a GPU.

use std::collections::VecDeque;

/// A point in a stream's queued work (a CUDA event recorded after a read).
pub trait Fence {
    type Error;
    /// Whether the work before the fence is done, without waiting.
    fn is_done(&self) -> Result<bool, Self::Error>;
    /// Waits until it is.
    fn wait(&self) -> Result<(), Self::Error>;
}

/// Items waiting for their fences, oldest first, at most `limit` of them.
pub struct InFlight<F: Fence, T> {
    queue: VecDeque<(F, T)>,
    limit: usize,
}

impl<F: Fence, T> InFlight<F, T> {
    /// Keeps at most `limit` items (at least one): past it, adding one waits
    /// for the oldest.
    pub fn new(limit: usize) -> Self {
        InFlight {
            queue: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Keeps `item` until `fence` is done, and lets go of every older item
    /// whose fence is done (fences on one stream complete in order, so the
    /// first one not done ends the sweep).
    pub fn push(&mut self, fence: F, item: T) -> Result<(), F::Error> {
        self.queue.push_back((fence, item));
        while let Some((fence, _)) = self.queue.front() {
            if self.queue.len() > self.limit {
                fence.wait()?;
            } else if !fence.is_done()? {
                break;
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    /// Waits for every fence and lets go of every item.
    pub fn drain(&mut self) -> Result<(), F::Error> {
        while let Some((fence, _)) = self.queue.front() {
            fence.wait()?;
            self.queue.pop_front();
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A fence done once the shared clock reaches its time; waiting moves
    /// the clock there (the GPU catching up), or fails when planted.
    struct FakeFence {
        at: u32,
        clock: Rc<Cell<u32>>,
        waits: Rc<Cell<u32>>,
        broken: bool,
    }

    impl Fence for FakeFence {
        type Error = &'static str;
        fn is_done(&self) -> Result<bool, &'static str> {
            if self.broken {
                return Err("illegal address");
            }
            Ok(self.clock.get() >= self.at)
        }
        fn wait(&self) -> Result<(), &'static str> {
            if self.broken {
                return Err("illegal address");
            }
            self.waits.set(self.waits.get() + 1);
            self.clock.set(self.clock.get().max(self.at));
            Ok(())
        }
    }

    /// Counts live items, to see when they are let go.
    struct Item(Rc<Cell<u32>>);

    impl Drop for Item {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    struct World {
        clock: Rc<Cell<u32>>,
        waits: Rc<Cell<u32>>,
        live: Rc<Cell<u32>>,
    }

    impl World {
        fn new() -> World {
            World {
                clock: Rc::new(Cell::new(0)),
                waits: Rc::new(Cell::new(0)),
                live: Rc::new(Cell::new(0)),
            }
        }
        fn fence(&self, at: u32) -> FakeFence {
            FakeFence {
                at,
                clock: Rc::clone(&self.clock),
                waits: Rc::clone(&self.waits),
                broken: false,
            }
        }
        fn item(&self) -> Item {
            self.live.set(self.live.get() + 1);
            Item(Rc::clone(&self.live))
        }
    }

    #[test]
    fn items_are_kept_until_their_fence_is_done_and_no_longer() {
        let world = World::new();
        let mut in_flight = InFlight::new(3);
        in_flight.push(world.fence(1), world.item()).unwrap();
        in_flight.push(world.fence(2), world.item()).unwrap();
        assert_eq!(world.live.get(), 2, "nothing is done yet");
        world.clock.set(1);
        in_flight.push(world.fence(3), world.item()).unwrap();
        assert_eq!(world.live.get(), 2, "the first read finished: let go");
        world.clock.set(3);
        in_flight.push(world.fence(4), world.item()).unwrap();
        assert_eq!(world.live.get(), 1, "only the newest is still read");
        assert_eq!(world.waits.get(), 0, "nothing waited while under the limit");
    }

    #[test]
    fn past_the_limit_the_oldest_is_waited_for() {
        let world = World::new();
        let mut in_flight = InFlight::new(2);
        for at in 1..=5 {
            in_flight.push(world.fence(at), world.item()).unwrap();
            assert!(in_flight.len() <= 2);
        }
        assert_eq!(world.waits.get(), 3);
        assert_eq!(world.live.get(), 2);
        in_flight.drain().unwrap();
        assert!(in_flight.is_empty());
        assert_eq!(world.live.get(), 0);
        assert_eq!(
            world.clock.get(),
            5,
            "drained only once every read was done"
        );
    }

    #[test]
    fn a_failed_fence_is_reported_and_its_item_kept() {
        let world = World::new();
        let mut in_flight = InFlight::new(1);
        let mut broken = world.fence(1);
        broken.broken = true;
        in_flight.push(broken, world.item()).unwrap_err();
        // A frame whose read may still be running is never let go on an
        // error: the GPU is checked and re-opened instead.
        assert_eq!(world.live.get(), 1);
        assert_eq!(in_flight.drain(), Err("illegal address"));
        assert_eq!(world.live.get(), 1);
    }
}
