//! The transcode engine: demux a segment once, decode it once, and for every
//! rendition convert the frame rate, scale and encode, then mux.
//!
//! Backends (CPU today, NVIDIA behind the `nvidia` feature) implement the three
//! small traits in [`backend`]; the engine in [`engine`] only talks to those.
//! [`service`] is the async layer over the engine that every adapter calls:
//! admission ([`admission`]), deadlines, cancellation and metrics hooks.

pub mod admission;
pub mod backend;
mod bsf;
pub mod compare;
pub mod container;
pub mod cpu;
pub mod engine;
mod error;
pub mod fps;
pub mod nvidia;
pub mod probe;
pub mod profile;
pub mod service;
pub mod transform;

pub use admission::{Admission, Permit, Refusal};
pub use backend::{Decoder, Encoder, EncoderSettings, Frame, Scaler, VideoBackend};
pub use engine::{
    DecodeOutput, InputInfo, PixelCount, Rendition, TranscodeOptions, TranscodeOutput, Transcoder,
};
pub use error::VideoError;
pub use profile::{Gop, H264Profile, OutputContainer, VideoCodec, VideoProfile};
pub use service::{JobError, Slot, TranscodeEngine, VideoMetrics, VideoService};
pub use transform::{FrameTransform, TransformCount, TransformStage};

/// Initialises FFmpeg once per process and quiets its logging (errors are
/// returned as values; FFmpeg's own chatter would flood worker logs).
pub fn init_ffmpeg() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        ffmpeg_next::init().expect("FFmpeg libraries failed to initialise");
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}
