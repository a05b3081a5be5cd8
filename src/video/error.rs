use std::time::Duration;

/// Why a transcode failed. Variants before `Internal` are the caller's fault
/// (bad input or request); the rest are ours or the machine's.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("input segment is empty")]
    EmptyInput,
    #[error("input segment is {size} bytes, above the limit of {limit} bytes")]
    InputTooLarge { size: usize, limit: usize },
    #[error("input is not a readable media container: {0}")]
    Demux(#[source] ffmpeg_next::Error),
    #[error("input has no video stream")]
    NoVideoStream,
    #[error("input video codec {0} is not supported (H.264 or HEVC expected)")]
    UnsupportedCodec(String),
    #[error("input resolution {width}x{height} is outside the supported range (up to {max_width}x{max_height})")]
    BadResolution {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
    #[error("input has {0} video packets, above the limit")]
    TooManyPackets(usize),
    #[error("video does not decode: {0}")]
    Decode(#[source] ffmpeg_next::Error),
    #[error("no video frame could be decoded from the input ({errors} packets failed to decode{})", last.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default())]
    NoFrames {
        errors: usize,
        last: Option<ffmpeg_next::Error>,
    },
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
    #[error("transcode did not finish within {0:?}")]
    Timeout(Duration),
    #[error("transcode was cancelled")]
    Cancelled,
    #[error("backend {0} is not available on this machine")]
    BackendUnavailable(String),
    #[error("encoder {0} is not available in this FFmpeg build")]
    EncoderUnavailable(String),
    /// A GPU call failed (CUDA, NVDEC, NVENC): the machine's fault.
    #[error("GPU {stage} failed: {message}")]
    Gpu {
        stage: &'static str,
        message: String,
    },
    #[error("{stage} failed: {source}")]
    Internal {
        stage: &'static str,
        #[source]
        source: ffmpeg_next::Error,
    },
    /// A frame transform (a live AI model) failed on a frame: the model's
    /// or the machine's fault, not the input's.
    #[error("frame transform failed: {0}")]
    Transform(String),
    /// A backend's stage answered what the engine cannot use (a scaler's
    /// frames of the wrong size): a bug of ours, reported, not a panic.
    #[error("video backend broke its contract: {0}")]
    Contract(String),
    /// The blocking task running the engine panicked or was torn down.
    #[error("transcode task failed: {0}")]
    Task(String),
    #[error("rendition {profile}: {source}")]
    Rendition {
        profile: String,
        #[source]
        source: Box<VideoError>,
    },
}

impl VideoError {
    /// True when the request or its input is at fault (a gRPC `INVALID_ARGUMENT`),
    /// false when the worker is (an `INTERNAL` / `UNAVAILABLE`).
    pub fn is_bad_input(&self) -> bool {
        match self {
            VideoError::Rendition { source, .. } => source.is_bad_input(),
            VideoError::Timeout(_)
            | VideoError::Cancelled
            | VideoError::BackendUnavailable(_)
            | VideoError::EncoderUnavailable(_)
            | VideoError::Gpu { .. }
            | VideoError::Internal { .. }
            | VideoError::Transform(_)
            | VideoError::Contract(_)
            | VideoError::Task(_) => false,
            _ => true,
        }
    }

    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            VideoError::EmptyInput => "empty_input",
            VideoError::InputTooLarge { .. } => "input_too_large",
            VideoError::Demux(_) => "demux",
            VideoError::NoVideoStream => "no_video",
            VideoError::UnsupportedCodec(_) => "unsupported_codec",
            VideoError::BadResolution { .. } => "bad_resolution",
            VideoError::TooManyPackets(_) => "too_many_packets",
            VideoError::Decode(_) => "decode",
            VideoError::NoFrames { .. } => "no_frames",
            VideoError::InvalidProfile(_) => "invalid_profile",
            VideoError::Timeout(_) => "timeout",
            VideoError::Cancelled => "cancelled",
            VideoError::BackendUnavailable(_) => "backend_unavailable",
            VideoError::EncoderUnavailable(_) => "encoder_unavailable",
            VideoError::Gpu { .. } => "gpu",
            VideoError::Internal { .. } => "internal",
            VideoError::Transform(_) => "transform",
            VideoError::Contract(_) => "internal",
            VideoError::Task(_) => "task",
            VideoError::Rendition { source, .. } => source.kind(),
        }
    }

    /// Maps a GPU-side error (anything printable) to [`VideoError::Gpu`].
    #[cfg_attr(not(feature = "nvidia"), allow(dead_code))]
    pub(crate) fn gpu<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> VideoError {
        move |e| VideoError::Gpu {
            stage,
            message: e.to_string(),
        }
    }

    pub(crate) fn internal(stage: &'static str) -> impl FnOnce(ffmpeg_next::Error) -> VideoError {
        move |source| VideoError::Internal { stage, source }
    }
}
