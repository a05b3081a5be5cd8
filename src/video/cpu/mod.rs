//! The CPU backend: libavcodec decoders, libswscale scaling, libx264/libx265
//! encoders. The embedded default, present on every machine.

mod decode;
mod encode;
mod scale;

pub use decode::CpuDecoder;
pub use encode::CpuEncoder;
pub use scale::CpuScaler;

use super::backend::{Decoder, Encoder, EncoderSettings, Scaler, VideoBackend, VideoStreamInfo};
use super::VideoError;

#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl VideoBackend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn decoder(&self, stream: &VideoStreamInfo) -> Result<Box<dyn Decoder>, VideoError> {
        Ok(Box::new(CpuDecoder::new(stream)?))
    }

    fn scaler(&self, width: u32, height: u32) -> Result<Box<dyn Scaler>, VideoError> {
        Ok(Box::new(CpuScaler::new(width, height)))
    }

    fn encoder(&self, settings: &EncoderSettings) -> Result<Box<dyn Encoder>, VideoError> {
        Ok(Box::new(CpuEncoder::new(settings)?))
    }
}

/// Makes a new reference to `src`'s pixel buffers (no copy) with a fresh
/// timestamp and no frame type, ready to hand to an encoder or a muxer.
pub(crate) fn frame_ref(
    src: &ffmpeg_next::frame::Video,
    pts: i64,
) -> Result<ffmpeg_next::frame::Video, VideoError> {
    let mut dst = ffmpeg_next::frame::Video::empty();
    // SAFETY: both pointers are valid AVFrames owned by live wrappers; `dst` is
    // empty as av_frame_ref requires, and it takes its own buffer references.
    let rc = unsafe { ffmpeg_next::ffi::av_frame_ref(dst.as_mut_ptr(), src.as_ptr()) };
    if rc < 0 {
        return Err(VideoError::Internal {
            stage: "frame reference",
            source: ffmpeg_next::Error::from(rc),
        });
    }
    dst.set_pts(Some(pts));
    // The decoder's picture type would force keyframes where the source had them.
    dst.set_kind(ffmpeg_next::picture::Type::None);
    Ok(dst)
}
