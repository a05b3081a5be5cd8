//! The three backend traits the engine is written against, and the frame type
//! that flows between them. A backend decides where a frame's pixels live
//! (host memory for the CPU backend, device memory for NVIDIA); the engine never
//! looks inside.

use ffmpeg_next as ff;

use super::{profile::VideoProfile, VideoError};

/// Where a frame's pixels live.
pub enum FrameData {
    /// A planar YUV frame in host memory, as libavcodec/libswscale use it.
    Host(ff::frame::Video),
    /// An NV12 frame in a GPU's memory (NVDEC output or GPU-scaled).
    #[cfg(feature = "nvidia")]
    Device(super::nvidia::frame::GpuFrame),
}

/// One picture with its presentation time, in the input stream's time base.
pub struct Frame {
    pub pts: i64,
    pub width: u32,
    pub height: u32,
    pub data: FrameData,
}

impl Frame {
    pub fn host(mut video: ff::frame::Video, pts: i64) -> Frame {
        video.set_pts(Some(pts));
        Frame {
            pts,
            width: video.width(),
            height: video.height(),
            data: FrameData::Host(video),
        }
    }

    /// The frame's host picture; a GPU frame reaching a CPU stage is a
    /// backend bug, reported rather than panicking.
    pub fn host_video(&self) -> Result<&ff::frame::Video, VideoError> {
        match &self.data {
            FrameData::Host(video) => Ok(video),
            #[cfg(feature = "nvidia")]
            FrameData::Device(_) => Err(VideoError::Gpu {
                stage: "frame routing",
                message: "a GPU frame reached a CPU stage".into(),
            }),
        }
    }

    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// What the demuxer found about the video stream, enough to open a decoder.
#[derive(Clone)]
pub struct VideoStreamInfo {
    pub parameters: ff::codec::Parameters,
    pub time_base: ff::Rational,
    pub frame_rate: Option<ff::Rational>,
}

/// Turns compressed packets into frames. One decoder per segment.
pub trait Decoder: Send {
    /// Feeds one packet (`None` drains the decoder at the end of the stream)
    /// and hands each finished frame to `emit`. A packet that fails to decode
    /// is reported as `Err` with the decoder still usable for the next one.
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError>;
}

/// Resizes frames to one rendition's size. One scaler per rendition.
pub trait Scaler: Send {
    fn scale(&mut self, frame: &Frame) -> Result<Frame, VideoError>;
}

/// Resizes each frame to every rendition's size in one step, for a backend
/// where one pass over the source is cheaper than one per rendition (a GPU
/// kernel that writes the whole ladder in one launch). One per segment.
pub trait LadderScaler: Send {
    /// One frame per entry of `sizes`, in that order, each with `frame`'s
    /// `pts`; or the frame back when this scaler does not take it (a host
    /// frame reaching a GPU ladder: the renditions then scale it, in
    /// parallel). `sizes` is the same on every call of one segment. Takes
    /// the frame: a GPU scaler keeps it until its queued reads are done.
    fn scale(&mut self, frame: Frame, sizes: &[(u32, u32)]) -> Result<Ladder, VideoError>;
}

/// What a [`LadderScaler`] made of one frame.
pub enum Ladder {
    Scaled(Vec<Frame>),
    Declined(Frame),
}

/// What an encoder needs to know about one rendition.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub profile: VideoProfile,
    pub width: u32,
    pub height: u32,
    /// Time base of the frames' `pts` (the input stream's).
    pub time_base: ff::Rational,
    /// Output frame rate (the profile's, or the input's when it keeps it).
    pub frame_rate: ff::Rational,
    /// The muxer wants codec headers out of band (MP4) rather than in the stream (MPEG-TS).
    pub global_header: bool,
    /// libx264/libx265 preset.
    pub preset: String,
    /// Encoder threads; 0 lets the encoder choose.
    pub threads: usize,
}

/// Compresses frames of one rendition.
pub trait Encoder: Send {
    /// Encodes one frame (`None` flushes at the end) and hands each finished
    /// packet, timestamped in [`EncoderSettings::time_base`], to `emit`.
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError>;

    /// Codec parameters for the muxer (valid once the encoder is open).
    fn parameters(&self) -> ff::codec::Parameters;
}

/// A family of decoders, scalers and encoders that share a memory domain.
pub trait VideoBackend: Send + Sync {
    /// Short name for logs, metrics and `Capabilities` ("cpu", "nvidia").
    fn name(&self) -> &'static str;
    fn decoder(&self, stream: &VideoStreamInfo) -> Result<Box<dyn Decoder>, VideoError>;
    fn scaler(&self, width: u32, height: u32) -> Result<Box<dyn Scaler>, VideoError>;
    fn encoder(&self, settings: &EncoderSettings) -> Result<Box<dyn Encoder>, VideoError>;

    /// The backend's ladder scaler, if scaling every rendition in one step
    /// pays on it: the engine then scales once per decoded frame, between
    /// the decoder and the rendition threads, instead of in each rendition
    /// thread. The CPU backend has none: its scalers already run in
    /// parallel, one per rendition thread.
    fn ladder_scaler(&self) -> Option<Box<dyn LadderScaler>> {
        None
    }
}
