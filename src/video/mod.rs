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

/// A 1 s, 30 fps testsrc2 clip (GOP 30) encoded by the FFmpeg CLI, for the
/// video modules' tests.
#[cfg(test)]
pub(crate) fn test_clip(width: u32, height: u32, codec: &str, pix_fmt: &str, ext: &str) -> Vec<u8> {
    let source = format!("testsrc2=size={width}x{height}:rate=30");
    let mut args = vec!["-pix_fmt", pix_fmt, "-c:v", codec, "-g", "30"];
    match codec {
        "libx265" => args.extend(["-preset", "ultrafast", "-x265-params", "log-level=none"]),
        _ => args.extend(["-preset", "veryfast"]),
    }
    test_stream(&source, &args, ext)
}

/// One second of the lavfi `source` (however `args` retime it) encoded by
/// the FFmpeg CLI with `args` into a `.ext` file, whose bytes it returns.
#[cfg(test)]
pub(crate) fn test_stream(source: &str, args: &[&str], ext: &str) -> Vec<u8> {
    crate::video::init_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join(format!("clip.{ext}"));
    let out_arg = out.to_string_lossy();
    let mut all = vec!["-f", "lavfi", "-t", "1", "-i", source];
    all.extend(args);
    all.push(&out_arg);
    crate::bench::input::ffmpeg(&all, "encode the test clip").expect("the ffmpeg CLI encodes");
    std::fs::read(&out).expect("ffmpeg wrote the clip")
}
