use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

use crate::video::backend::{Frame, Scaler};
use crate::video::VideoError;

/// libswscale resize to 8-bit 4:2:0 with FFmpeg's default (bicubic) filter,
/// the same as lpms' `scale` filter. The context is rebuilt if the input
/// size or format changes mid-segment.
pub struct CpuScaler {
    width: u32,
    height: u32,
    context: Option<(SwsContext, Pixel, u32, u32)>,
}

/// A libswscale context that may move to another thread.
struct SwsContext(scaling::Context);

// SAFETY: an SwsContext has no thread affinity; it is only ever used by the
// one thread that owns the scaler at a time (`&mut self`).
unsafe impl Send for SwsContext {}

impl CpuScaler {
    pub fn new(width: u32, height: u32) -> Self {
        CpuScaler {
            width,
            height,
            context: None,
        }
    }
}

impl Scaler for CpuScaler {
    fn scale(&mut self, frame: &Frame) -> Result<Frame, VideoError> {
        let src = frame.host_video()?;
        let format = src.format();
        if src.width() == self.width && src.height() == self.height && format == Pixel::YUV420P {
            return Ok(Frame::host(super::frame_ref(src, frame.pts)?, frame.pts));
        }
        let stale = !matches!(&self.context,
            Some((_, f, w, h)) if *f == format && *w == src.width() && *h == src.height());
        if stale {
            let context = scaling::Context::get(
                format,
                src.width(),
                src.height(),
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BICUBIC,
            )
            .map_err(VideoError::internal("scaler setup"))?;
            self.context = Some((SwsContext(context), format, src.width(), src.height()));
        }
        let (context, ..) = self.context.as_mut().expect("scaler context was just set");
        let mut out = ff::frame::Video::new(Pixel::YUV420P, self.width, self.height);
        context
            .0
            .run(src, &mut out)
            .map_err(VideoError::internal("scale"))?;
        Ok(Frame::host(out, frame.pts))
    }
}
