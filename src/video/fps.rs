//! Constant frame-rate conversion, with the semantics of FFmpeg's `fps` filter
//! (rounding to the nearest output slot): frames are dropped when the output
//! rate is lower and repeated when it is higher.
//!
//! Hand-written rather than built on libavfilter so that it works on any
//! backend's frames (host or device) without a filter graph per rendition.

/// Converts input timestamps into a constant-rate output timeline.
///
/// Timestamps are in the input time base `tb` (seconds per tick = tb_num/tb_den);
/// output slot `k` sits at `origin + k * step` where `step = (fps_den/fps_num)/tb`.
#[derive(Debug)]
pub struct FpsConverter<T> {
    tb_num: i64,
    tb_den: i64,
    fps_num: i64,
    fps_den: i64,
    /// Input timestamp that maps to slot 0 (moved at discontinuities).
    origin: Option<i64>,
    /// Output timestamp of slot 0: the first frame's, never moved, so output
    /// timestamps stay continuous across input discontinuities.
    out_origin: Option<i64>,
    /// Next output slot to fill.
    next_slot: i64,
    /// The latest frame, waiting to learn how many slots it covers.
    pending: Option<(T, i64)>,
    emitted: u64,
    /// Largest jump (in slots) treated as real time passing; beyond it the
    /// timeline is broken (spliced or damaged input) and is re-anchored, so a
    /// bad timestamp cannot make the converter repeat a frame millions of times.
    max_gap: i64,
}

impl<T> FpsConverter<T> {
    pub fn new(time_base: (i32, i32), fps: (u32, u32)) -> Self {
        FpsConverter {
            tb_num: i64::from(time_base.0.max(1)),
            tb_den: i64::from(time_base.1.max(1)),
            fps_num: i64::from(fps.0.max(1)),
            fps_den: i64::from(fps.1.max(1)),
            origin: None,
            out_origin: None,
            next_slot: 0,
            pending: None,
            emitted: 0,
            max_gap: (2 * i64::from(fps.0.max(1)) / i64::from(fps.1.max(1))).max(4),
        }
    }

    /// Output slot nearest to `pts` (ties away from zero, as `av_rescale`).
    fn slot_of(&self, pts: i64) -> i64 {
        let origin = self.origin.unwrap_or(pts);
        // (pts - origin) * tb * fps, in integers: ticks * tb_num * fps_num / (tb_den * fps_den).
        let num = i128::from(pts - origin) * i128::from(self.tb_num) * i128::from(self.fps_num);
        let den = i128::from(self.tb_den) * i128::from(self.fps_den);
        let rounded = if num >= 0 {
            (2 * num + den) / (2 * den)
        } else {
            -((-2 * num + den) / (2 * den))
        };
        rounded.clamp(i128::from(i64::MIN / 4), i128::from(i64::MAX / 4)) as i64
    }

    /// Timestamp (input time base) of output slot `k`.
    pub fn slot_pts(&self, slot: i64) -> i64 {
        let num = i128::from(slot) * i128::from(self.fps_den) * i128::from(self.tb_den);
        let den = i128::from(self.fps_num) * i128::from(self.tb_num);
        self.out_origin.unwrap_or(0) + (num / den) as i64
    }

    /// Offers the next input frame; `emit(frame, pts)` receives each output
    /// frame (a repeated frame is emitted once per slot it fills).
    pub fn push<E>(
        &mut self,
        frame: T,
        pts: i64,
        emit: &mut impl FnMut(&T, i64) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.origin.is_none() {
            self.origin = Some(pts);
            self.out_origin = Some(pts);
        }
        let mut slot = self.slot_of(pts);
        if self.pending.is_some() && (slot - self.next_slot).abs() > self.max_gap {
            // Discontinuity: show the previous frame once, then continue the
            // output timeline from this frame.
            let (prev, _) = self.pending.take().expect("checked above");
            emit(&prev, self.slot_pts(self.next_slot))?;
            self.next_slot += 1;
            self.emitted += 1;
            let offset = self.slot_pts(self.next_slot) - self.out_origin.unwrap_or(0);
            self.origin = Some(pts - offset);
            slot = self.next_slot;
        }
        if let Some((prev, _)) = self.pending.take() {
            // The previous frame fills every slot up to (not including) this one's;
            // a frame landing in an already filled slot replaces it instead.
            while self.next_slot < slot {
                let at = self.slot_pts(self.next_slot);
                emit(&prev, at)?;
                self.next_slot += 1;
                self.emitted += 1;
            }
        }
        self.pending = Some((frame, slot));
        Ok(())
    }

    /// Ends the stream: the last frame fills slots up to `end_pts` (exclusive;
    /// the time the last input frame stops showing), and at least one slot if it
    /// would otherwise vanish from a stream that produced nothing.
    pub fn finish<E>(
        &mut self,
        end_pts: Option<i64>,
        emit: &mut impl FnMut(&T, i64) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some((last, last_slot)) = self.pending.take() {
            let mut end_slot = end_pts.map(|e| self.slot_of(e)).unwrap_or(last_slot + 1);
            if self.emitted == 0 {
                end_slot = end_slot.max(self.next_slot + 1);
            }
            while self.next_slot < end_slot {
                let at = self.slot_pts(self.next_slot);
                emit(&last, at)?;
                self.next_slot += 1;
                self.emitted += 1;
            }
        }
        Ok(())
    }

    pub fn emitted(&self) -> u64 {
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` frames at `in_fps` through a converter to `out_fps` on a 90 kHz clock.
    fn run(n: i64, in_fps: i64, out_fps: u32, start: i64) -> Vec<(i64, i64)> {
        let step = 90_000 / in_fps;
        let mut conv = FpsConverter::new((1, 90_000), (out_fps, 1));
        let mut out = Vec::new();
        let mut emit = |f: &i64, pts: i64| -> Result<(), ()> {
            out.push((*f, pts));
            Ok(())
        };
        for i in 0..n {
            conv.push(i, start + i * step, &mut emit).unwrap();
        }
        conv.finish(Some(start + n * step), &mut emit).unwrap();
        out
    }

    #[test]
    fn same_rate_passes_every_frame() {
        let out = run(60, 30, 30, 126_000);
        assert_eq!(out.len(), 60);
        for (i, (frame, pts)) in out.iter().enumerate() {
            assert_eq!(*frame, i as i64);
            assert_eq!(*pts, 126_000 + i as i64 * 3000);
        }
    }

    #[test]
    fn halving_drops_every_other_frame() {
        let out = run(120, 60, 30, 0);
        assert_eq!(out.len(), 60, "2 s at 30 fps");
        assert_eq!(out[0], (0, 0));
        assert_eq!(out[59].1, 59 * 3000);
        // Each output frame comes from near its slot.
        for (k, (frame, _)) in out.iter().enumerate() {
            assert!(
                (frame - 2 * k as i64).abs() <= 1,
                "slot {k} got frame {frame}"
            );
        }
    }

    #[test]
    fn doubling_repeats_frames() {
        let out = run(30, 30, 60, 0);
        assert_eq!(out.len(), 60);
        assert_eq!(out[0].0, out[1].0);
        assert_eq!(out[58].0, 29);
    }

    #[test]
    fn ntsc_to_25() {
        // 2 s of 29.97 → 25 fps: 50 frames.
        let mut conv = FpsConverter::new((1, 30_000), (25, 1));
        let mut n = 0;
        let mut emit = |_: &i64, _: i64| -> Result<(), ()> {
            n += 1;
            Ok(())
        };
        for i in 0..60 {
            conv.push(i, i * 1001, &mut emit).unwrap();
        }
        conv.finish(Some(60 * 1001), &mut emit).unwrap();
        assert!((50..=51).contains(&n), "{n}");
    }

    #[test]
    fn single_frame_still_emits() {
        let out = run(1, 30, 30, 5);
        assert_eq!(out, vec![(0, 5)]);
        let mut conv = FpsConverter::new((1, 90_000), (30, 1));
        let mut n = 0;
        conv.push(7u8, 100, &mut |_, _| -> Result<(), ()> {
            n += 1;
            Ok(())
        })
        .unwrap();
        conv.finish(None, &mut |_, _| -> Result<(), ()> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn timestamp_jumps_are_discontinuities_not_floods() {
        let mut conv = FpsConverter::new((1, 90_000), (30, 1));
        let mut out = Vec::new();
        let mut emit = |f: &u32, pts: i64| -> Result<(), ()> {
            out.push((*f, pts));
            Ok(())
        };
        // Three frames, then a jump of ten hours, then three more.
        let jump = 10 * 3600 * 90_000;
        for (i, pts) in [0, 3000, 6000, jump, jump + 3000, jump + 6000]
            .into_iter()
            .enumerate()
        {
            conv.push(i as u32, pts, &mut emit).unwrap();
        }
        conv.finish(Some(jump + 9000), &mut emit).unwrap();
        assert_eq!(out.len(), 6, "{out:?}");
        assert!(out.windows(2).all(|w| w[1].1 - w[0].1 == 3000), "{out:?}");
        // And a jump back by an hour is handled the same way.
        let mut conv = FpsConverter::new((1, 90_000), (30, 1));
        let mut n = 0;
        for (i, pts) in [jump, jump + 3000, 0, 3000].into_iter().enumerate() {
            conv.push(i as u32, pts, &mut |_, _| -> Result<(), ()> {
                n += 1;
                Ok(())
            })
            .unwrap();
        }
        conv.finish(Some(6000), &mut |_, _| -> Result<(), ()> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn backwards_timestamps_never_emit_backwards() {
        let mut conv = FpsConverter::new((1, 90_000), (30, 1));
        let mut pts_out = Vec::new();
        let mut emit = |_: &u32, pts: i64| -> Result<(), ()> {
            pts_out.push(pts);
            Ok(())
        };
        for (i, pts) in [0i64, 3000, 6000, 1000, 9000, -50_000, 12000]
            .into_iter()
            .enumerate()
        {
            conv.push(i as u32, pts, &mut emit).unwrap();
        }
        conv.finish(Some(15000), &mut emit).unwrap();
        assert!(pts_out.windows(2).all(|w| w[0] < w[1]), "{pts_out:?}");
    }
}
