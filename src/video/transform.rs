//! A per-frame picture stage between decoding and encoding: what real-time
//! AI video runs (a model applied to every frame of a live stream). The
//! engine hands each decoded frame to a [`FrameTransform`] as packed RGB,
//! converts its answer back to 4:2:0 at the rendition's size, and keeps the
//! stage to real time: a frame that arrives while the transform is behind
//! the segment's own clock is dropped at the input (the previous output is
//! shown again), so output never falls further and further behind.

use std::sync::Arc;
use std::time::Instant;

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use image::RgbImage;

use super::backend::{Frame, Scaler};
use super::VideoError;

/// A picture transform: packed RGB in, packed RGB out (any size; the engine
/// scales the result to the rendition's size).
pub trait FrameTransform: Send + Sync {
    /// Frames pass through untouched: the engine skips the RGB round trip
    /// (what a `noop` model measures is the pipeline's own cost).
    fn is_identity(&self) -> bool {
        false
    }

    fn apply(&self, picture: RgbImage) -> Result<RgbImage, VideoError>;
}

/// A transform as one run uses it.
#[derive(Clone)]
pub struct TransformStage {
    pub transform: Arc<dyn FrameTransform>,
    /// Drop input frames while the transform is behind the media clock
    /// (live); without it every frame is transformed however long it takes.
    pub realtime: bool,
}

impl std::fmt::Debug for TransformStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformStage")
            .field("identity", &self.transform.is_identity())
            .field("realtime", &self.realtime)
            .finish()
    }
}

/// What a transform stage did in one rendition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransformCount {
    /// Frames the transform ran on.
    pub transformed: u64,
    /// Frames dropped because the transform was behind real time.
    pub dropped: u64,
}

/// A libswscale context that may move to another thread.
struct Sws(scaling::Context);

// SAFETY: an SwsContext has no thread affinity; it is only ever used by the
// one rendition thread that owns the stage (`&mut self`).
unsafe impl Send for Sws {}

/// A cached conversion: rebuilt when the source format or size changes (a
/// resolution change mid-stream).
#[derive(Default)]
struct Conversion {
    context: Option<(Sws, Pixel, u32, u32, Pixel, u32, u32)>,
}

impl Conversion {
    fn run(
        &mut self,
        src: &ff::frame::Video,
        to: Pixel,
        width: u32,
        height: u32,
    ) -> Result<ff::frame::Video, VideoError> {
        let key = (src.format(), src.width(), src.height(), to, width, height);
        let stale = !matches!(&self.context,
            Some((_, f, w, h, t, ow, oh)) if (*f, *w, *h, *t, *ow, *oh) == key);
        if stale {
            let context = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                to,
                width,
                height,
                scaling::Flags::BICUBIC,
            )
            .map_err(VideoError::internal("transform conversion setup"))?;
            self.context = Some((Sws(context), key.0, key.1, key.2, to, width, height));
        }
        let (sws, ..) = self.context.as_mut().expect("conversion was just set");
        let mut out = ff::frame::Video::new(to, width, height);
        sws.0
            .run(src, &mut out)
            .map_err(VideoError::internal("transform conversion"))?;
        Ok(out)
    }
}

/// Packed RGB24 of a frame, without the row padding FFmpeg keeps.
fn to_image(frame: &ff::frame::Video) -> Result<RgbImage, VideoError> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.stride(0);
    let data = frame.data(0);
    let mut packed = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        packed.extend_from_slice(&data[row * stride..row * stride + w * 3]);
    }
    RgbImage::from_raw(w as u32, h as u32, packed)
        .ok_or_else(|| VideoError::Transform("RGB picture of the wrong size".into()))
}

/// An RGB24 FFmpeg frame holding `image`.
fn from_image(image: &RgbImage) -> ff::frame::Video {
    let (w, h) = image.dimensions();
    let mut frame = ff::frame::Video::new(Pixel::RGB24, w, h);
    let stride = frame.stride(0);
    let row = w as usize * 3;
    let data = frame.data_mut(0);
    for (y, src) in image.as_raw().chunks_exact(row).enumerate() {
        data[y * stride..y * stride + row].copy_from_slice(src);
    }
    frame
}

/// The stage inside one rendition thread: conversions, the real-time clock
/// and its counts.
pub(crate) struct StageRun {
    stage: TransformStage,
    to_rgb: Conversion,
    to_yuv: Conversion,
    /// Seconds per `pts` tick.
    tick: f64,
    /// One input frame's duration, seconds.
    frame_seconds: f64,
    /// The segment's first frame: its time stamp, and when it reached the
    /// stage.
    first: Option<(i64, Instant)>,
    pub(crate) count: TransformCount,
}

impl StageRun {
    pub(crate) fn new(stage: TransformStage, tick: f64, frame_seconds: f64) -> StageRun {
        StageRun {
            stage,
            to_rgb: Conversion::default(),
            to_yuv: Conversion::default(),
            tick,
            frame_seconds,
            first: None,
            count: TransformCount::default(),
        }
    }

    /// Whether the frame at `pts` should be dropped: the segment has taken
    /// longer since its first frame than the media time up to the end of
    /// this frame. Wall time, not the model's alone: decoding and encoding
    /// share the budget, so a model just slower than real time still keeps
    /// the segment within its own length. The first frame is never dropped
    /// (something must be shown).
    pub(crate) fn behind(&mut self, pts: i64, have_output: bool) -> bool {
        let (first_pts, first_seen) = *self.first.get_or_insert((pts, Instant::now()));
        if !self.stage.realtime || !have_output || self.stage.transform.is_identity() {
            return false;
        }
        let media = ((pts - first_pts) as f64 * self.tick).max(0.0) + self.frame_seconds;
        first_seen.elapsed().as_secs_f64() > media
    }

    /// Transforms `frame` and scales the result with `scaler` (which makes
    /// the rendition's size and format).
    pub(crate) fn apply(
        &mut self,
        frame: &Frame,
        scaler: &mut dyn Scaler,
        width: u32,
        height: u32,
    ) -> Result<Frame, VideoError> {
        if self.stage.transform.is_identity() {
            self.count.transformed += 1;
            return scaler.scale(frame);
        }
        // A decoder on the GPU (NVDEC) hands over frames in its memory: the
        // model takes pictures in ours.
        #[cfg(feature = "nvidia")]
        let downloaded = match &frame.data {
            super::backend::FrameData::Device(gpu) => {
                Some(super::nvidia::backend::download(gpu, frame.pts)?)
            }
            super::backend::FrameData::Host(_) => None,
        };
        #[cfg(feature = "nvidia")]
        let frame = downloaded.as_ref().unwrap_or(frame);
        let src = frame.host_video()?;
        // The model sees the frame at the rendition's size (at most 720p's
        // pixels for live output), whatever size the input came in at.
        let rgb = self.to_rgb.run(src, Pixel::RGB24, width, height)?;
        let picture = self.stage.transform.apply(to_image(&rgb)?)?;
        let (pw, ph) = picture.dimensions();
        if pw == 0 || ph == 0 {
            return Err(VideoError::Transform(
                "the transform returned an empty picture".into(),
            ));
        }
        let out = self
            .to_yuv
            .run(&from_image(&picture), Pixel::YUV420P, width, height)?;
        self.count.transformed += 1;
        Ok(Frame::host(out, frame.pts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rgb_round_trip_keeps_pixels() {
        let image = RgbImage::from_fn(33, 7, |x, y| image::Rgb([x as u8 * 7, y as u8 * 30, 99]));
        let frame = from_image(&image);
        assert_eq!(to_image(&frame).unwrap(), image);
    }

    struct Slow(Duration);
    impl FrameTransform for Slow {
        fn apply(&self, picture: RgbImage) -> Result<RgbImage, VideoError> {
            std::thread::sleep(self.0);
            Ok(picture)
        }
    }

    #[test]
    fn a_transform_slower_than_the_clock_drops_frames() {
        let stage = TransformStage {
            transform: Arc::new(Slow(Duration::from_millis(20))),
            realtime: true,
        };
        // 100 frames at 100 fps (10 ms each) in a 1/1000 time base.
        let mut run = StageRun::new(stage, 1e-3, 0.01);
        let mut scaler = crate::video::cpu::CpuScaler::new(16, 16);
        let mut applied = 0;
        let started = Instant::now();
        for i in 0..100i64 {
            let pts = i * 10;
            if run.behind(pts, applied > 0) {
                run.count.dropped += 1;
                continue;
            }
            let picture = ff::frame::Video::new(Pixel::YUV420P, 16, 16);
            let frame = Frame::host(picture, pts);
            run.apply(&frame, &mut scaler, 16, 16).unwrap();
            applied += 1;
        }
        // 20 ms of work per 10 ms of media: about every other frame runs.
        assert!(
            (40..=60).contains(&run.count.transformed),
            "{:?}",
            run.count
        );
        assert_eq!(run.count.transformed + run.count.dropped, 100);
        // The work kept to the media clock (1 s), give or take a frame or two.
        let took = started.elapsed();
        assert!(took.as_secs_f64() <= 1.0 + 0.05, "{took:?}");
    }
}
