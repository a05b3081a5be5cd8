//! NVDEC decoding of H.264 and HEVC (8-bit 4:2:0) into NV12 frames in CUDA
//! device memory.
//!
//! `libnvcuvid.so.1` is opened at run time (the types come from
//! `nvidia_video_codec_sdk::sys`, whose `extern` declarations are never
//! called: its `ci-check` build links nothing). The flow is NVIDIA's
//! `NvDecoder` sample's: packets, converted to Annex B by FFmpeg's
//! `*_mp4toannexb` filter, go to NVIDIA's bitstream parser, which calls back
//!
//! * the sequence callback on the first sequence header (and on a format
//!   change): the hardware decoder is created for the stream's coded size,
//!   cropping to the display area;
//! * the decode callback for every picture, in decode order:
//!   `cuvidDecodePicture`;
//! * the display callback for every picture, in display order: the decoded
//!   surface is mapped and copied into a fresh [`DeviceFrame`] on the GPU's
//!   stream, then unmapped.
//!
//! The callbacks run synchronously inside `cuvidParseVideoData` on the thread
//! that calls [`Decoder::decode`]; they never unwind into the parser.

use std::ffi::{c_int, c_uint, c_ulong, c_ulonglong, c_void};
use std::ptr;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut, DriverError};
use ff::ffi::AVPixelFormat::{AV_PIX_FMT_NONE, AV_PIX_FMT_YUV420P, AV_PIX_FMT_YUVJ420P};
use ffmpeg_next as ff;
use libloading::Library;
use nvidia_video_codec_sdk::sys::cuviddec::{
    _CUVIDDECODECREATEINFO__bindgen_ty_1 as DisplayArea, cudaVideoChromaFormat, cudaVideoCodec,
    cudaVideoCreateFlags, cudaVideoDeinterlaceMode, cudaVideoSurfaceFormat, cuvidDecodeStatus,
    CUvideodecoder, CUVIDDECODECAPS, CUVIDDECODECREATEINFO, CUVIDGETDECODESTATUS, CUVIDPICPARAMS,
    CUVIDPROCPARAMS,
};
use nvidia_video_codec_sdk::sys::nvcuvid::{
    CUvideopacketflags, CUvideoparser, CUVIDEOFORMAT, CUVIDPARSERDISPINFO, CUVIDPARSERPARAMS,
    CUVIDSOURCEDATAPACKET,
};

use super::device::{copy_device_2d, GpuDevice, GpuFrame};
use super::scaler::{DeviceFrame, GpuError, PixelFormat};
use crate::video::backend::{Decoder, Frame, FrameData, VideoStreamInfo};
use crate::video::bsf::BitstreamFilter;
use crate::video::profile::VideoCodec;
use crate::video::VideoError;

/// The library's file names, most specific first.
pub(super) const LIBRARY_NAMES: [&str; 2] = ["libnvcuvid.so.1", "libnvcuvid.so"];

/// `VideoError::Gpu` stages.
const SETUP: &str = "NVDEC setup";
const DECODE: &str = "NVDEC decode";

/// A `CUresult` as the library returns it. Read as a plain integer rather
/// than as cudarc's enum, so that a code the enum lacks is not undefined
/// behaviour.
type CuStatus = c_uint;
const CUDA_SUCCESS: CuStatus = 0;
const CUDA_ERROR_INVALID_VALUE: CuStatus = 1;

#[derive(Debug, thiserror::Error)]
pub enum NvdecError {
    #[error("the NVDEC library is not usable: {0}")]
    Library(String),
    #[error("{call} failed: {}", result_name(*result))]
    Call {
        call: &'static str,
        result: CuStatus,
    },
    #[error("CUDA {call} failed: {source}")]
    Cuda {
        call: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("allocating a decoded frame failed: {0}")]
    Alloc(#[source] GpuError),
    #[error("NVDEC cannot decode this stream: {0}")]
    Unsupported(String),
    #[error("NVDEC code panicked: {0}")]
    Panic(String),
}

/// The name of a `CUresult` code (the common ones), with its number.
fn result_name(code: CuStatus) -> String {
    let name = match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        205 => "CUDA_ERROR_MAP_FAILED",
        206 => "CUDA_ERROR_UNMAP_FAILED",
        214 => "CUDA_ERROR_ECC_UNCORRECTABLE",
        304 => "CUDA_ERROR_OPERATING_SYSTEM",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        401 => "CUDA_ERROR_ILLEGAL_STATE",
        500 => "CUDA_ERROR_NOT_FOUND",
        600 => "CUDA_ERROR_NOT_READY",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        709 => "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        800 => "CUDA_ERROR_NOT_PERMITTED",
        801 => "CUDA_ERROR_NOT_SUPPORTED",
        802 => "CUDA_ERROR_SYSTEM_NOT_READY",
        803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        909 => "CUDA_ERROR_TIMEOUT",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "CUresult",
    };
    format!("{name} ({code})")
}

/// Fails with `Call` unless `result` is `CUDA_SUCCESS`.
fn check(call: &'static str, result: CuStatus) -> Result<(), NvdecError> {
    if result == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(NvdecError::Call { call, result })
    }
}

/// Runs `f`, turning a panic (cudarc's, say) into `NvdecError::Panic`.
fn guarded<T>(f: impl FnOnce() -> Result<T, NvdecError>) -> Result<T, NvdecError> {
    super::driver::catch_panic(f).unwrap_or_else(|message| Err(NvdecError::Panic(message)))
}

/// Makes `ctx` the calling thread's current context, as every cuvid call needs.
fn bind(ctx: &CudaContext) -> Result<(), NvdecError> {
    super::device::bind(ctx).map_err(|source| NvdecError::Cuda {
        call: "cuCtxSetCurrent",
        source,
    })
}

// ---------------------------------------------------------------------------
// The library.

type GetDecoderCapsFn = unsafe extern "C" fn(*mut CUVIDDECODECAPS) -> CuStatus;
type CreateDecoderFn =
    unsafe extern "C" fn(*mut CUvideodecoder, *mut CUVIDDECODECREATEINFO) -> CuStatus;
type DestroyDecoderFn = unsafe extern "C" fn(CUvideodecoder) -> CuStatus;
type DecodePictureFn = unsafe extern "C" fn(CUvideodecoder, *mut CUVIDPICPARAMS) -> CuStatus;
type GetDecodeStatusFn =
    unsafe extern "C" fn(CUvideodecoder, c_int, *mut CUVIDGETDECODESTATUS) -> CuStatus;
type MapVideoFrameFn = unsafe extern "C" fn(
    CUvideodecoder,
    c_int,
    *mut c_ulonglong,
    *mut c_uint,
    *mut CUVIDPROCPARAMS,
) -> CuStatus;
type UnmapVideoFrameFn = unsafe extern "C" fn(CUvideodecoder, c_ulonglong) -> CuStatus;
type CreateVideoParserFn =
    unsafe extern "C" fn(*mut CUvideoparser, *mut CUVIDPARSERPARAMS) -> CuStatus;
type ParseVideoDataFn = unsafe extern "C" fn(CUvideoparser, *mut CUVIDSOURCEDATAPACKET) -> CuStatus;
type DestroyVideoParserFn = unsafe extern "C" fn(CUvideoparser) -> CuStatus;

/// libnvcuvid's functions, resolved once per process. The library stays
/// loaded for the process's life, so the pointers stay valid.
struct Api {
    _library: Library,
    get_decoder_caps: GetDecoderCapsFn,
    create_decoder: CreateDecoderFn,
    destroy_decoder: DestroyDecoderFn,
    decode_picture: DecodePictureFn,
    /// Absent from old drivers; damaged pictures then go undetected.
    get_decode_status: Option<GetDecodeStatusFn>,
    map_video_frame: MapVideoFrameFn,
    unmap_video_frame: UnmapVideoFrameFn,
    create_video_parser: CreateVideoParserFn,
    parse_video_data: ParseVideoDataFn,
    destroy_video_parser: DestroyVideoParserFn,
}

impl Api {
    fn load() -> Result<Api, String> {
        let mut reasons = Vec::new();
        let library = LIBRARY_NAMES.iter().find_map(|name| {
            // SAFETY: loading NVIDIA's own driver library runs only its
            // initialisers; it is kept loaded for the process's life.
            match unsafe { Library::new(name) } {
                Ok(library) => Some(library),
                Err(e) => {
                    reasons.push(format!("{name}: {e}"));
                    None
                }
            }
        });
        let Some(library) = library else {
            return Err(reasons.join("; "));
        };
        // SAFETY (for every `symbol` call below): each type is the function's
        // C prototype in cuviddec.h / nvcuvid.h (SDK 12), with the `CUresult`
        // return read as the 32-bit integer a C enum is.
        unsafe {
            Ok(Api {
                get_decoder_caps: symbol(&library, "cuvidGetDecoderCaps")?,
                create_decoder: symbol(&library, "cuvidCreateDecoder")?,
                destroy_decoder: symbol(&library, "cuvidDestroyDecoder")?,
                decode_picture: symbol(&library, "cuvidDecodePicture")?,
                get_decode_status: symbol(&library, "cuvidGetDecodeStatus").ok(),
                map_video_frame: symbol(&library, "cuvidMapVideoFrame64")?,
                unmap_video_frame: symbol(&library, "cuvidUnmapVideoFrame64")?,
                create_video_parser: symbol(&library, "cuvidCreateVideoParser")?,
                parse_video_data: symbol(&library, "cuvidParseVideoData")?,
                destroy_video_parser: symbol(&library, "cuvidDestroyVideoParser")?,
                _library: library,
            })
        }
    }
}

/// The function `name` of `library`, as a `T`.
///
/// # Safety
/// `T` must be the function's exact type.
unsafe fn symbol<T: Copy>(library: &Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees the type.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|symbol| *symbol)
        .map_err(|e| format!("{} lacks {name}: {e}", LIBRARY_NAMES[0]))
}

fn api() -> Result<&'static Api, NvdecError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let api = Api::load();
        if let Err(e) = &api {
            tracing::debug!(error = %e, "NVDEC library not loaded");
        }
        api
    })
    .as_ref()
    .map_err(|e| NvdecError::Library(e.clone()))
}

/// Whether libnvcuvid (`libnvcuvid.so.1` or `libnvcuvid.so`) opens and has
/// the functions this decoder uses.
pub fn library_loads() -> bool {
    api().is_ok()
}

// ---------------------------------------------------------------------------
// Capabilities.

fn cuvid_codec(codec: VideoCodec) -> cudaVideoCodec {
    match codec {
        VideoCodec::H264 => cudaVideoCodec::cudaVideoCodec_H264,
        VideoCodec::Hevc => cudaVideoCodec::cudaVideoCodec_HEVC,
    }
}

/// What NVDEC accepts for one codec at 8-bit 4:2:0 (coded sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub min_width: u32,
    pub min_height: u32,
    pub max_width: u32,
    pub max_height: u32,
    /// Largest `(coded_width / 16) * (coded_height / 16)`.
    pub max_macroblocks: u32,
}

/// cuvidGetDecoderCaps for 8-bit 4:2:0 `codec`; `None` when the GPU does not
/// decode it. The device's context must be current.
fn query_caps(api: &Api, codec: VideoCodec) -> Result<Option<DecodeLimits>, NvdecError> {
    let mut caps = CUVIDDECODECAPS {
        eCodecType: cuvid_codec(codec),
        eChromaFormat: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
        nBitDepthMinus8: 0,
        ..Default::default()
    };
    // SAFETY: `caps` is a valid CUVIDDECODECAPS with its IN fields set; the
    // library writes only its OUT fields (integers).
    check("cuvidGetDecoderCaps", unsafe {
        (api.get_decoder_caps)(&mut caps)
    })?;
    Ok((caps.bIsSupported != 0).then_some(DecodeLimits {
        min_width: u32::from(caps.nMinWidth),
        min_height: u32::from(caps.nMinHeight),
        max_width: caps.nMaxWidth,
        max_height: caps.nMaxHeight,
        max_macroblocks: caps.nMaxMBCount,
    }))
}

/// cuvidGetDecoderCaps for 8-bit 4:2:0 H.264 and HEVC on `device`: the codecs
/// it decodes, with their size limits.
pub fn probe_codecs(device: &GpuDevice) -> Result<Vec<(VideoCodec, DecodeLimits)>, NvdecError> {
    let api = api()?;
    guarded(|| {
        bind(device.context())?;
        let mut codecs = Vec::new();
        for codec in [VideoCodec::H264, VideoCodec::Hevc] {
            if let Some(limits) = query_caps(api, codec)? {
                codecs.push((codec, limits));
            }
        }
        Ok(codecs)
    })
}

// ---------------------------------------------------------------------------
// Which streams.

fn stream_codec(id: ff::codec::Id) -> Option<VideoCodec> {
    match id {
        ff::codec::Id::H264 => Some(VideoCodec::H264),
        ff::codec::Id::HEVC => Some(VideoCodec::Hevc),
        _ => None,
    }
}

/// Whether NVDEC can take this stream: H.264/HEVC, 8-bit 4:2:0 (from the
/// codec parameters' codec id and pixel format; yuv420p / yuvj420p / unknown
/// accepted; 10-bit or 4:2:2/4:4:4 refused). Pure function, no GPU.
///
/// Where the pixel format is unknown, a profile that implies more than 8 bits
/// or 4:2:0 (H.264 High 10/4:2:2/4:4:4, HEVC Main 10/RExt) or a known sample
/// depth above 8 bits refuses the stream.
pub fn supports_stream(stream: &VideoStreamInfo) -> bool {
    let Some(codec) = stream_codec(stream.parameters.id()) else {
        return false;
    };
    // SAFETY: `parameters` wraps a live AVCodecParameters; three ints are read.
    let (format, profile, bits) = unsafe {
        let p = stream.parameters.as_ptr();
        ((*p).format, (*p).profile, (*p).bits_per_raw_sample)
    };
    if format == AV_PIX_FMT_YUV420P as c_int || format == AV_PIX_FMT_YUVJ420P as c_int {
        return true;
    }
    if format != AV_PIX_FMT_NONE as c_int {
        return false;
    }
    if bits > 8 {
        return false;
    }
    match codec {
        // FF_PROFILE_H264_*: High 10 (110), High 4:2:2 (122), High 4:4:4
        // (144, 244), CAVLC 4:4:4 (44), with or without the intra flag (2048).
        VideoCodec::H264 => !matches!(profile & !2048, 44 | 110 | 122 | 144 | 244),
        // FF_PROFILE_HEVC_MAIN_10 (2), FF_PROFILE_HEVC_REXT (4).
        VideoCodec::Hevc => !matches!(profile, 2 | 4),
    }
}

// ---------------------------------------------------------------------------
// Annex B.

/// Turns the demuxer's packets into the Annex B byte stream NVIDIA's parser
/// reads: MP4's length-prefixed NAL units (with the parameter sets from
/// avcC/hvcC put in front of keyframes) through FFmpeg's `h264_mp4toannexb`
/// / `hevc_mp4toannexb`; input that is Annex B already (MPEG-TS) passes
/// through unchanged.
struct AnnexB {
    filter: BitstreamFilter,
}

impl AnnexB {
    fn new(stream: &VideoStreamInfo) -> Result<AnnexB, VideoError> {
        let name = match stream_codec(stream.parameters.id()) {
            Some(VideoCodec::H264) => "h264_mp4toannexb",
            Some(VideoCodec::Hevc) => "hevc_mp4toannexb",
            None => {
                return Err(VideoError::UnsupportedCodec(
                    format!("{:?}", stream.parameters.id()).to_lowercase(),
                ))
            }
        };
        Ok(AnnexB {
            filter: BitstreamFilter::new(name, &stream.parameters, stream.time_base)?,
        })
    }

    /// The Annex B packets for one demuxed packet (usually exactly one).
    fn convert(&mut self, packet: &ff::Packet) -> Vec<ff::Packet> {
        self.filter.filter(packet.clone())
    }

    /// Signals the end of the stream and returns what the filter held.
    fn flush(&mut self) -> Vec<ff::Packet> {
        // A packet without data or side data is libavcodec's end of stream.
        self.filter.filter(ff::Packet::empty())
    }
}

// ---------------------------------------------------------------------------
// From the parser's format to the decoder's.

/// The fields of a CUVIDEOFORMAT the decoder is created from, read without
/// trusting its enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SequenceFormat {
    codec: u32,
    chroma_format: u32,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
    progressive: bool,
    min_surfaces: u8,
    coded_width: u32,
    coded_height: u32,
    /// left, top, right, bottom
    display: [i32; 4],
}

impl SequenceFormat {
    /// # Safety
    /// `format` must point to a readable, initialised CUVIDEOFORMAT.
    unsafe fn read(format: *const CUVIDEOFORMAT) -> SequenceFormat {
        // SAFETY: the caller guarantees `format`; the enum fields are read as
        // the 32-bit integers C stores, so any value is defined.
        unsafe {
            let area = (*format).display_area;
            SequenceFormat {
                codec: ptr::addr_of!((*format).codec).cast::<u32>().read(),
                chroma_format: ptr::addr_of!((*format).chroma_format).cast::<u32>().read(),
                bit_depth_luma_minus8: (*format).bit_depth_luma_minus8,
                bit_depth_chroma_minus8: (*format).bit_depth_chroma_minus8,
                progressive: (*format).progressive_sequence != 0,
                min_surfaces: (*format).min_num_decode_surfaces,
                coded_width: (*format).coded_width,
                coded_height: (*format).coded_height,
                display: [area.left, area.top, area.right, area.bottom],
            }
        }
    }
}

/// How the decoder is created for a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DecoderConfig {
    codec: VideoCodec,
    coded_width: u32,
    coded_height: u32,
    /// The crop NVDEC applies: left, top, right, bottom in the coded frame.
    display: [i16; 4],
    /// Output (and frame) size: the display area's, rounded up to even.
    target_width: u32,
    target_height: u32,
    /// Decode surfaces, returned to the parser.
    surfaces: u32,
    progressive: bool,
}

/// Checks the parser's format against what this decoder and the GPU take and
/// derives the decoder's configuration.
fn decoder_config(
    format: &SequenceFormat,
    codec: VideoCodec,
    limits: &DecodeLimits,
) -> Result<DecoderConfig, NvdecError> {
    let unsupported = |what: String| Err(NvdecError::Unsupported(what));
    if format.codec != cuvid_codec(codec) as u32 {
        return unsupported(format!(
            "the parser reports codec {} for a {} stream",
            format.codec,
            codec.name()
        ));
    }
    if format.chroma_format != cudaVideoChromaFormat::cudaVideoChromaFormat_420 as u32 {
        let name = match format.chroma_format {
            0 => "monochrome",
            2 => "4:2:2",
            3 => "4:4:4",
            _ => "unknown",
        };
        return unsupported(format!("{name} chroma (only 4:2:0 is decoded)"));
    }
    if format.bit_depth_luma_minus8 != 0 || format.bit_depth_chroma_minus8 != 0 {
        return unsupported(format!(
            "{}-bit video (only 8-bit is decoded)",
            8 + u32::from(
                format
                    .bit_depth_luma_minus8
                    .max(format.bit_depth_chroma_minus8)
            )
        ));
    }
    let (width, height) = (format.coded_width, format.coded_height);
    let macroblocks = u64::from(width / 16) * u64::from(height / 16);
    if width < limits.min_width.max(1)
        || height < limits.min_height.max(1)
        || width > limits.max_width
        || height > limits.max_height
        || macroblocks > u64::from(limits.max_macroblocks)
    {
        return unsupported(format!(
            "coded size {width}x{height} is outside this GPU's range for {} \
             ({}x{} to {}x{}, {} macroblocks)",
            codec.name(),
            limits.min_width,
            limits.min_height,
            limits.max_width,
            limits.max_height,
            limits.max_macroblocks
        ));
    }
    // The display area, inside the coded frame; an empty one means all of it.
    let [left, top, right, bottom] = format.display;
    let clamp = |v: i32, max: u32| v.clamp(0, i32::try_from(max).unwrap_or(i32::MAX));
    let (left, right) = (clamp(left, width), clamp(right, width));
    let (top, bottom) = (clamp(top, height), clamp(bottom, height));
    let (left, top, right, bottom) = if right > left && bottom > top {
        (left, top, right, bottom)
    } else {
        (0, 0, clamp(i32::MAX, width), clamp(i32::MAX, height))
    };
    let short = |v: i32| {
        i16::try_from(v).map_err(|_| {
            NvdecError::Unsupported(format!("display area coordinate {v} out of range"))
        })
    };
    let display = [short(left)?, short(top)?, short(right)?, short(bottom)?];
    let even = |v: i32| (v.unsigned_abs() + 1) & !1;
    Ok(DecoderConfig {
        codec,
        coded_width: width,
        coded_height: height,
        display,
        target_width: even(right - left),
        target_height: even(bottom - top),
        surfaces: u32::from(format.min_surfaces.max(1)),
        progressive: format.progressive,
    })
}

/// cuvidCreateDecoder's parameters for `config`: NV12 output at the target
/// size, cropped to the display area, as NVIDIA's NvDecoder sample creates it.
fn create_info(config: &DecoderConfig) -> CUVIDDECODECREATEINFO {
    let [left, top, right, bottom] = config.display;
    CUVIDDECODECREATEINFO {
        ulWidth: c_ulong::from(config.coded_width),
        ulHeight: c_ulong::from(config.coded_height),
        ulNumDecodeSurfaces: c_ulong::from(config.surfaces),
        CodecType: cuvid_codec(config.codec),
        ChromaFormat: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
        ulCreationFlags: cudaVideoCreateFlags::cudaVideoCreate_PreferCUVID as c_ulong,
        bitDepthMinus8: 0,
        ulIntraDecodeOnly: 0,
        ulMaxWidth: c_ulong::from(config.coded_width),
        ulMaxHeight: c_ulong::from(config.coded_height),
        display_area: DisplayArea {
            left,
            top,
            right,
            bottom,
        },
        OutputFormat: cudaVideoSurfaceFormat::cudaVideoSurfaceFormat_NV12,
        DeinterlaceMode: if config.progressive {
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Weave
        } else {
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Adaptive
        },
        ulTargetWidth: c_ulong::from(config.target_width),
        ulTargetHeight: c_ulong::from(config.target_height),
        ulNumOutputSurfaces: 2,
        vidLock: ptr::null_mut(),
        // target_rect zero: the whole target.
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// The parser's callbacks and the state they share with the decoder.

/// What the callbacks work on: owned by [`NvdecDecoder`] through a raw
/// pointer (the parser's `pUserData`), so it does not move and no Rust
/// reference to it is alive while the parser runs.
struct ParserState {
    api: &'static Api,
    device: Arc<GpuDevice>,
    codec: VideoCodec,
    limits: DecodeLimits,
    decoder: CUvideodecoder,
    config: Option<DecoderConfig>,
    /// Frames the display callback produced, in display order.
    frames: Vec<(i64, DeviceFrame)>,
    /// An error that ends decoding (GPU fault, unsupported format); kept.
    fatal: Option<NvdecError>,
    /// Pictures that failed to decode since the last report.
    damaged: usize,
    last_damage: Option<String>,
    /// Per picture index: its cuvidDecodePicture failed, so it is not shown.
    failed: Vec<bool>,
}

impl ParserState {
    fn fail(&mut self, error: NvdecError) {
        tracing::warn!(error = %error, "NVDEC decoding failed");
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
    }

    fn damage(&mut self, what: String) {
        tracing::debug!(%what, "NVDEC picture damaged");
        self.damaged += 1;
        self.last_damage = Some(what);
    }

    fn set_failed(&mut self, index: c_int, failed: bool) {
        let Ok(index) = usize::try_from(index) else {
            return;
        };
        if index >= 256 {
            return;
        }
        if self.failed.len() <= index {
            self.failed.resize(index + 1, false);
        }
        self.failed[index] = failed;
    }

    fn is_failed(&self, index: c_int) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.failed.get(i).copied())
            .unwrap_or(false)
    }

    fn destroy_decoder(&mut self) {
        if self.decoder.is_null() {
            return;
        }
        // SAFETY: `decoder` came from cuvidCreateDecoder and is destroyed
        // once (nulled here); the context is current (the caller's contract).
        let result = unsafe { (self.api.destroy_decoder)(self.decoder) };
        if result != CUDA_SUCCESS {
            tracing::warn!(result = %result_name(result), "cuvidDestroyDecoder failed");
        }
        self.decoder = ptr::null_mut();
        self.config = None;
    }

    /// The sequence callback: (re)creates the decoder for `format`.
    fn on_sequence(&mut self, format: *const CUVIDEOFORMAT) -> c_int {
        if self.fatal.is_some() || format.is_null() {
            return 0;
        }
        // SAFETY: the parser passes a valid CUVIDEOFORMAT for the call.
        let format = unsafe { SequenceFormat::read(format) };
        let config = match decoder_config(&format, self.codec, &self.limits) {
            Ok(config) => config,
            Err(e) => {
                self.fail(e);
                return 0;
            }
        };
        let surfaces = c_int::try_from(config.surfaces).unwrap_or(1);
        if self.config == Some(config) && !self.decoder.is_null() {
            return surfaces;
        }
        if !self.decoder.is_null() {
            tracing::info!(
                old = ?self.config,
                new = ?config,
                "stream format changed: NVDEC decoder recreated"
            );
            self.destroy_decoder();
        }
        let mut info = create_info(&config);
        let mut decoder: CUvideodecoder = ptr::null_mut();
        // SAFETY: valid out-pointer and create info; the context is current
        // (bound by `decode` before parsing).
        let result = unsafe { (self.api.create_decoder)(&mut decoder, &mut info) };
        if let Err(e) = check("cuvidCreateDecoder", result) {
            self.fail(e);
            return 0;
        }
        tracing::debug!(?config, "NVDEC decoder created");
        self.decoder = decoder;
        self.config = Some(config);
        self.failed.clear();
        surfaces
    }

    /// The decode callback: submits one picture.
    fn on_decode(&mut self, picture: *mut CUVIDPICPARAMS) -> c_int {
        if self.fatal.is_some() {
            return 0;
        }
        if self.decoder.is_null() || picture.is_null() {
            self.fail(NvdecError::Unsupported(
                "a picture arrived before a usable sequence header".into(),
            ));
            return 0;
        }
        // SAFETY: the parser passes valid picture parameters for the call.
        let index = unsafe { (*picture).CurrPicIdx };
        // SAFETY: a live decoder, the parser's parameters, the context current.
        let result = unsafe { (self.api.decode_picture)(self.decoder, picture) };
        self.set_failed(index, result != CUDA_SUCCESS);
        match result {
            CUDA_SUCCESS => 1,
            // Parameters the hardware refuses: a damaged bitstream. The
            // picture is skipped at display; decoding goes on.
            CUDA_ERROR_INVALID_VALUE => {
                self.damage(format!(
                    "cuvidDecodePicture failed: {}",
                    result_name(result)
                ));
                1
            }
            _ => {
                self.fail(NvdecError::Call {
                    call: "cuvidDecodePicture",
                    result,
                });
                0
            }
        }
    }

    /// The display callback: copies one decoded picture out.
    fn on_display(&mut self, info: *const CUVIDPARSERDISPINFO) -> c_int {
        if info.is_null() {
            // End of stream (CUVID_PKT_NOTIFY_EOS); nothing to show.
            return 1;
        }
        if self.fatal.is_some() {
            return 0;
        }
        // SAFETY: the parser passes a valid CUVIDPARSERDISPINFO (all integers).
        let info = unsafe { *info };
        if self.is_failed(info.picture_index) {
            // Counted when its decode failed.
            self.set_failed(info.picture_index, false);
            return 1;
        }
        match self.output(&info) {
            Ok(Some(frame)) => {
                self.frames.push((info.timestamp, frame));
                1
            }
            Ok(None) => 1,
            Err(e) => {
                self.fail(e);
                0
            }
        }
    }

    /// cuvidGetDecodeStatus of picture `index`, where the driver has it.
    fn decode_status(&self, index: c_int) -> Option<u32> {
        let get = self.api.get_decode_status?;
        let mut status = CUVIDGETDECODESTATUS::default();
        // SAFETY: a live decoder and a valid out-struct; the context is current.
        let result = unsafe { get(self.decoder, index, &mut status) };
        // SAFETY: the status enum is read as the integer C stores.
        (result == CUDA_SUCCESS)
            .then(|| unsafe { ptr::addr_of!(status.decodeStatus).cast::<u32>().read() })
    }

    /// Maps picture `info.picture_index`, copies it into a new frame and
    /// unmaps it. `None` for a picture the hardware reports damaged.
    fn output(&mut self, info: &CUVIDPARSERDISPINFO) -> Result<Option<DeviceFrame>, NvdecError> {
        let Some(config) = self.config.filter(|_| !self.decoder.is_null()) else {
            return Err(NvdecError::Unsupported(
                "a picture to display without a decoder".into(),
            ));
        };
        let index = info.picture_index;
        // As NVIDIA's NvDecoder sample sets them.
        let mut params = CUVIDPROCPARAMS {
            // The sequence's flag, not the picture's: FFmpeg's cuviddec
            // found the per-picture one unreliable.
            progressive_frame: c_int::from(config.progressive),
            second_field: info.repeat_first_field + 1,
            top_field_first: info.top_field_first,
            unpaired_field: c_int::from(info.repeat_first_field < 0),
            output_stream: self.device.stream().cu_stream().cast(),
            ..Default::default()
        };
        let mut surface: c_ulonglong = 0;
        let mut pitch: c_uint = 0;
        // SAFETY: a live decoder, valid out-pointers and parameters; the
        // context is current.
        let result = unsafe {
            (self.api.map_video_frame)(self.decoder, index, &mut surface, &mut pitch, &mut params)
        };
        if result != CUDA_SUCCESS {
            if self.decode_status(index) == Some(cuvidDecodeStatus::cuvidDecodeStatus_Error as u32)
            {
                self.damage(format!("picture {index} did not decode"));
                return Ok(None);
            }
            return Err(NvdecError::Call {
                call: "cuvidMapVideoFrame64",
                result,
            });
        }
        let copied = self.copy_surface(index, surface, pitch as usize, &config);
        // SAFETY: `surface` was mapped above from this decoder; the copies
        // reading it have finished (the stream was synchronised) or failed.
        let unmapped = unsafe { (self.api.unmap_video_frame)(self.decoder, surface) };
        let frame = copied?;
        check("cuvidUnmapVideoFrame64", unmapped)?;
        Ok(frame)
    }

    fn copy_surface(
        &mut self,
        index: c_int,
        surface: c_ulonglong,
        pitch: usize,
        config: &DecoderConfig,
    ) -> Result<Option<DeviceFrame>, NvdecError> {
        match self.decode_status(index) {
            Some(s) if s == cuvidDecodeStatus::cuvidDecodeStatus_Error as u32 => {
                self.damage(format!("picture {index} did not decode"));
                return Ok(None);
            }
            Some(s) if s == cuvidDecodeStatus::cuvidDecodeStatus_Error_Concealed as u32 => {
                // libavcodec shows concealed pictures too.
                tracing::debug!(index, "NVDEC concealed errors in a picture");
            }
            _ => {}
        }
        let (width, height) = (config.target_width as usize, config.target_height as usize);
        let mut frame = self
            .device
            .scaler()
            .alloc_frame(PixelFormat::Nv12, width, height)
            .map_err(NvdecError::Alloc)?;
        let stream = self.device.stream();
        let (luma_pitch, chroma_pitch) = (frame.luma_pitch(), frame.chroma_pitch());
        // The NV12 surface: `height` luma rows, then the interleaved chroma
        // rows, `pitch` bytes apart (the sample's `pitch * ((height + 1) & ~1)`;
        // the target height is even).
        let chroma = surface + (pitch * height) as c_ulonglong;
        let queued = copy_plane(
            stream,
            surface,
            pitch,
            frame.luma_mut(),
            luma_pitch,
            width,
            height,
        )
        .and_then(|()| {
            copy_plane(
                stream,
                chroma,
                pitch,
                frame.chroma_mut(),
                chroma_pitch,
                width,
                height / 2,
            )
        });
        // Waited for even when a copy failed to queue: the surface is
        // unmapped next, so nothing may still be reading it.
        let synced = stream.synchronize().map_err(|source| NvdecError::Cuda {
            call: "cuStreamSynchronize",
            source,
        });
        queued?;
        synced?;
        Ok(Some(frame))
    }
}

/// Queues a copy of `rows` rows of `width` bytes from device address `src`
/// (rows `src_pitch` apart) into `dst` (rows `dst_pitch` apart) on `stream`.
fn copy_plane(
    stream: &CudaStream,
    src: c_ulonglong,
    src_pitch: usize,
    dst: &mut CudaSlice<u8>,
    dst_pitch: usize,
    width: usize,
    rows: usize,
) -> Result<(), NvdecError> {
    if rows == 0 || src_pitch < width || dst_pitch < width || dst.len() < dst_pitch * rows {
        return Err(NvdecError::Unsupported(format!(
            "plane copy of {rows} rows of {width} bytes does not fit \
             (source pitch {src_pitch}, destination pitch {dst_pitch}, {} bytes)",
            dst.len()
        )));
    }
    let (dst_ptr, _written) = dst.device_ptr_mut(stream);
    // SAFETY: both ranges are device memory of at least `pitch * rows` bytes
    // (the mapped surface holds the target size; `dst` was checked above);
    // the stream belongs to the current context.
    unsafe { copy_device_2d(stream, (src, src_pitch), (dst_ptr, dst_pitch), width, rows) }.map_err(
        |source| NvdecError::Cuda {
            call: "cuMemcpy2DAsync",
            source,
        },
    )
}

/// Runs one callback body on the state, never unwinding into the parser.
///
/// # Safety
/// `user` must be the `ParserState` pointer the parser was created with, not
/// otherwise borrowed while the parser runs.
unsafe fn with_state(user: *mut c_void, f: impl FnOnce(&mut ParserState) -> c_int) -> c_int {
    if user.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract: the state is alive and unaliased.
    let state = unsafe { &mut *user.cast::<ParserState>() };
    match super::driver::catch_panic(|| f(&mut *state)) {
        Ok(result) => result,
        Err(message) => {
            state.fail(NvdecError::Panic(message));
            0
        }
    }
}

unsafe extern "C" fn sequence_callback(user: *mut c_void, format: *mut CUVIDEOFORMAT) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState.
    unsafe { with_state(user, |state| state.on_sequence(format)) }
}

unsafe extern "C" fn decode_callback(user: *mut c_void, picture: *mut CUVIDPICPARAMS) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState.
    unsafe { with_state(user, |state| state.on_decode(picture)) }
}

unsafe extern "C" fn display_callback(user: *mut c_void, info: *mut CUVIDPARSERDISPINFO) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState.
    unsafe { with_state(user, |state| state.on_display(info)) }
}

// ---------------------------------------------------------------------------
// The decoder.

/// The parser's timestamp units. It reorders timestamps into display order
/// and interpolates them for pictures that came without one, in units of
/// `ulClockRate` Hz: the stream's own when its time base is 1/N (MPEG-TS's
/// 1/90000, exact), else 10 MHz with a rescale each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserClock {
    pub rate: u32,
    time_base: ff::Rational,
}

const DEFAULT_CLOCK_HZ: u32 = 10_000_000;

impl ParserClock {
    pub fn for_time_base(time_base: ff::Rational) -> ParserClock {
        let rate = match (time_base.numerator(), time_base.denominator()) {
            (1, den) if den > 0 => den as u32,
            _ => DEFAULT_CLOCK_HZ,
        };
        ParserClock { rate, time_base }
    }

    fn parser_base(&self) -> ff::Rational {
        ff::Rational(1, self.rate as i32)
    }

    /// A stream timestamp in the parser's units.
    pub fn to_parser(&self, pts: i64) -> i64 {
        use ff::Rescale;
        pts.rescale(self.time_base, self.parser_base())
    }

    /// A parser timestamp back in the stream's time base.
    pub fn from_parser(&self, timestamp: i64) -> i64 {
        use ff::Rescale;
        timestamp.rescale(self.parser_base(), self.time_base)
    }
}

/// An NVDEC decoder for one H.264 or HEVC stream; frames come out as NV12 in
/// the GPU's memory.
pub struct NvdecDecoder {
    api: &'static Api,
    device: Arc<GpuDevice>,
    annexb: AnnexB,
    parser: CUvideoparser,
    /// From `Box::into_raw`; freed in `Drop`.
    state: *mut ParserState,
    /// The end of stream was sent to the parser.
    flushed: bool,
    clock: ParserClock,
}

// SAFETY: the parser, the decoder and the state are owned by this value alone
// and used only through `&mut self` (and the parser's synchronous callbacks
// within such calls); NVDEC handles have no thread affinity once the
// context is bound to the calling thread, which every entry point does.
unsafe impl Send for NvdecDecoder {}

impl NvdecDecoder {
    /// Opens a decoder for `stream` on `device`. Fails (for a CPU fallback)
    /// when the library is missing, the stream is not 8-bit 4:2:0 H.264/HEVC
    /// or its size is outside what the GPU's NVDEC decodes.
    pub fn new(device: Arc<GpuDevice>, stream: &VideoStreamInfo) -> Result<Self, VideoError> {
        let Some(codec) = stream_codec(stream.parameters.id()) else {
            return Err(VideoError::UnsupportedCodec(
                format!("{:?}", stream.parameters.id()).to_lowercase(),
            ));
        };
        if !supports_stream(stream) {
            return Err(VideoError::gpu(SETUP)(NvdecError::Unsupported(
                "not 8-bit 4:2:0 video".into(),
            )));
        }
        let api = api().map_err(VideoError::gpu(SETUP))?;
        let annexb = AnnexB::new(stream)?;
        // The caps the engine probe read once for this GPU.
        let limits = device.engines().decode_limits(codec).ok_or_else(|| {
            VideoError::gpu(SETUP)(NvdecError::Unsupported(format!(
                "this GPU's NVDEC does not decode 8-bit 4:2:0 {}",
                codec.name()
            )))
        })?;
        // SAFETY: `parameters` wraps a live AVCodecParameters; two ints are read.
        let (width, height) = unsafe {
            let p = stream.parameters.as_ptr();
            ((*p).width, (*p).height)
        };
        let (width, height) = (width.max(0) as u32, height.max(0) as u32);
        if width > 0
            && height > 0
            && (width < limits.min_width
                || height < limits.min_height
                || width > limits.max_width
                || height > limits.max_height)
        {
            return Err(VideoError::gpu(SETUP)(NvdecError::Unsupported(format!(
                "{width}x{height} is outside this GPU's range for {} ({}x{} to {}x{})",
                codec.name(),
                limits.min_width,
                limits.min_height,
                limits.max_width,
                limits.max_height
            ))));
        }
        let state = Box::into_raw(Box::new(ParserState {
            api,
            device: Arc::clone(&device),
            codec,
            limits,
            decoder: ptr::null_mut(),
            config: None,
            frames: Vec::new(),
            fatal: None,
            damaged: 0,
            last_damage: None,
            failed: Vec::new(),
        }));
        // From here `Drop` frees the state (and the parser, once created).
        let mut decoder = NvdecDecoder {
            api,
            device,
            annexb,
            parser: ptr::null_mut(),
            state,
            flushed: false,
            clock: ParserClock::for_time_base(stream.time_base),
        };
        let mut params = CUVIDPARSERPARAMS {
            CodecType: cuvid_codec(codec),
            // The sequence callback returns the number the stream needs.
            ulMaxNumDecodeSurfaces: 1,
            ulClockRate: decoder.clock.rate,
            ulErrorThreshold: 0,
            ulMaxDisplayDelay: 1,
            pUserData: state.cast(),
            pfnSequenceCallback: Some(sequence_callback),
            pfnDecodePicture: Some(decode_callback),
            pfnDisplayPicture: Some(display_callback),
            ..Default::default()
        };
        let mut parser: CUvideoparser = ptr::null_mut();
        // SAFETY: valid out-pointer and parameters; the callbacks match the
        // header's prototypes and `state` outlives the parser (see `Drop`).
        let result = unsafe { (api.create_video_parser)(&mut parser, &mut params) };
        check("cuvidCreateVideoParser", result).map_err(VideoError::gpu(SETUP))?;
        decoder.parser = parser;
        tracing::debug!(codec = codec.name(), ?limits, "NVDEC parser created");
        Ok(decoder)
    }

    fn state(&mut self) -> &mut ParserState {
        // SAFETY: the state lives until `Drop`; the parser only touches it
        // during `parse`, which takes `&mut self` and holds no reference.
        unsafe { &mut *self.state }
    }

    /// Sends one packet (or, with `end`, the end of stream) to the parser,
    /// which runs the callbacks.
    fn parse(&mut self, payload: &[u8], timestamp: Option<i64>, end: bool) {
        let mut flags = 0;
        if timestamp.is_some() {
            flags |= CUvideopacketflags::CUVID_PKT_TIMESTAMP as c_ulong;
        }
        if end {
            flags |= CUvideopacketflags::CUVID_PKT_ENDOFSTREAM as c_ulong;
        }
        let mut packet = CUVIDSOURCEDATAPACKET {
            flags,
            payload_size: payload.len() as c_ulong,
            payload: if payload.is_empty() {
                ptr::null()
            } else {
                payload.as_ptr()
            },
            timestamp: timestamp.unwrap_or(0),
        };
        // SAFETY: a live parser; `packet` points at `payload`, alive for the
        // call; the context is bound (by `decode`) and no reference to the
        // state the callbacks use is held across the call.
        let result = unsafe { (self.api.parse_video_data)(self.parser, &mut packet) };
        if result != CUDA_SUCCESS {
            let state = self.state();
            // A callback's fatal error explains the failure; otherwise the
            // parser rejected the data.
            if state.fatal.is_none() {
                state.damage(format!(
                    "cuvidParseVideoData failed: {}",
                    result_name(result)
                ));
            }
        }
    }
}

impl Decoder for NvdecDecoder {
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        if let Some(e) = &self.state().fatal {
            return Err(VideoError::gpu(DECODE)(e));
        }
        let context = Arc::clone(self.device.context());
        guarded(|| bind(&context)).map_err(VideoError::gpu(DECODE))?;
        let packets = match packet {
            Some(packet) => self.annexb.convert(packet),
            None => self.annexb.flush(),
        };
        for packet in &packets {
            if self.state().fatal.is_some() {
                break;
            }
            if let Some(data) = packet.data().filter(|d| !d.is_empty()) {
                // Only a presentation time: a decode time would come back
                // in display order as the wrong picture's.
                let timestamp = packet.pts().map(|pts| self.clock.to_parser(pts));
                self.parse(data, timestamp, false);
            }
        }
        if packet.is_none() && !self.flushed && self.state().fatal.is_none() {
            self.flushed = true;
            self.parse(&[], None, true);
        }
        let frames = std::mem::take(&mut self.state().frames);
        for (timestamp, frame) in frames {
            emit(Frame {
                pts: self.clock.from_parser(timestamp),
                width: frame.width as u32,
                height: frame.height as u32,
                data: FrameData::Device(GpuFrame {
                    device: Arc::clone(&self.device),
                    frame,
                }),
            })?;
        }
        let state = self.state();
        if let Some(e) = &state.fatal {
            return Err(VideoError::gpu(DECODE)(e));
        }
        if state.damaged > 0 {
            tracing::debug!(
                pictures = state.damaged,
                last = state.last_damage.as_deref().unwrap_or_default(),
                "NVDEC skipped damaged pictures"
            );
            state.damaged = 0;
            return Err(VideoError::Decode(ff::Error::InvalidData));
        }
        Ok(())
    }
}

impl Drop for NvdecDecoder {
    fn drop(&mut self) {
        let (api, parser, state) = (self.api, self.parser, self.state);
        let context = Arc::clone(self.device.context());
        let cleaned = super::driver::catch_panic(|| {
            let bound = bind(&context);
            if let Err(e) = &bound {
                tracing::warn!(error = %e, "NVDEC teardown without the CUDA context");
            }
            if !parser.is_null() {
                // SAFETY: the parser came from cuvidCreateVideoParser and is
                // destroyed once, before the decoder and state it calls into.
                let result = unsafe { (api.destroy_video_parser)(parser) };
                if result != CUDA_SUCCESS {
                    tracing::warn!(result = %result_name(result), "cuvidDestroyVideoParser failed");
                }
            }
            // SAFETY: the state is alive until freed below; the parser is gone.
            let state = unsafe { &mut *state };
            if bound.is_ok() {
                state.destroy_decoder();
            } else if !state.decoder.is_null() {
                tracing::warn!("NVDEC decoder leaked: its context could not be bound");
            }
        });
        if let Err(message) = cleaned {
            tracing::warn!(%message, "NVDEC teardown panicked");
        }
        self.parser = ptr::null_mut();
        // SAFETY: `state` came from Box::into_raw in `new` and is freed once
        // here; nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.state) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::container::{demux, DemuxLimits, DemuxedSegment};

    /// A 1 s testsrc2 clip from the FFmpeg CLI, demuxed.
    fn clip(width: u32, height: u32, codec: &str, pix_fmt: &str, ext: &str) -> DemuxedSegment {
        let bytes = super::super::test_clip(width, height, codec, pix_fmt, ext);
        demux(bytes.into(), &DemuxLimits::default(), None).expect("the clip demuxes")
    }

    #[test]
    fn library_check_never_panics() {
        // False on a machine without the NVIDIA driver, true on a GPU host.
        let loads = library_loads();
        assert_eq!(loads, library_loads());
        if !loads {
            let e = api().err().expect("no library, an error");
            assert!(e.to_string().contains("libnvcuvid"), "{e}");
        }
    }

    #[test]
    fn supports_8_bit_4_2_0_h264_and_hevc_only() {
        let h264 = clip(64, 64, "libx264", "yuv420p", "ts");
        let hevc = clip(64, 64, "libx265", "yuv420p", "ts");
        let h264_10 = clip(64, 64, "libx264", "yuv420p10le", "ts");
        let h264_444 = clip(64, 64, "libx264", "yuv444p", "mp4");
        assert!(supports_stream(&h264.video));
        assert!(supports_stream(&hevc.video));
        assert!(!supports_stream(&h264_10.video));
        assert!(!supports_stream(&h264_444.video));

        // An unknown pixel format is accepted, unless the profile rules it out.
        let with = |stream: &VideoStreamInfo, format: c_int, profile: Option<c_int>| {
            let mut stream = stream.clone();
            // SAFETY: `parameters` is our own copy; two ints are written.
            unsafe {
                let p = stream.parameters.as_mut_ptr();
                (*p).format = format;
                if let Some(profile) = profile {
                    (*p).profile = profile;
                }
            }
            stream
        };
        assert!(supports_stream(&with(&h264.video, -1, None)));
        assert!(supports_stream(&with(&hevc.video, -1, None)));
        assert!(!supports_stream(&with(&h264.video, -1, Some(110))));
        assert!(!supports_stream(&with(&hevc.video, -1, Some(2))));
        let yuvj = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUVJ420P as c_int;
        assert!(supports_stream(&with(&h264.video, yuvj, None)));
        let nv12 = ff::ffi::AVPixelFormat::AV_PIX_FMT_NV12 as c_int;
        assert!(!supports_stream(&with(&h264.video, nv12, None)));
    }

    fn starts_with_start_code(data: &[u8]) -> bool {
        data.starts_with(&[0, 0, 0, 1]) || data.starts_with(&[0, 0, 1])
    }

    /// Every video packet of `segment` through [`AnnexB`], flushed.
    fn to_annex_b(segment: &DemuxedSegment) -> Vec<ff::Packet> {
        let mut annexb = AnnexB::new(&segment.video).expect("filter opens");
        let mut out: Vec<ff::Packet> = segment
            .video_packets
            .iter()
            .flat_map(|packet| annexb.convert(packet))
            .collect();
        out.extend(annexb.flush());
        out
    }

    #[test]
    fn mp4_packets_become_annex_b_and_mpegts_packets_pass_unchanged() {
        for codec in ["libx264", "libx265"] {
            let mp4 = clip(64, 64, codec, "yuv420p", "mp4");
            assert!(!mp4.video_packets.is_empty());
            // MP4 stores NAL units with 4-byte length prefixes.
            let first = mp4.video_packets[0].data().expect("data");
            assert!(
                !starts_with_start_code(first),
                "{codec}: MP4 already Annex B?"
            );
            let out = to_annex_b(&mp4);
            assert_eq!(out.len(), mp4.video_packets.len(), "{codec}");
            for (packet, original) in out.iter().zip(&mp4.video_packets) {
                let data = packet.data().expect("data");
                assert!(starts_with_start_code(data), "{codec}: {:02x?}", &data[..8]);
                assert_eq!(packet.pts(), original.pts());
            }
            // The keyframe carries the parameter sets from avcC/hvcC in band.
            let key = out[0].data().expect("data");
            let nal_types: Vec<u8> = key
                .windows(4)
                .filter(|w| w[..3] == [0, 0, 1])
                .map(|w| match codec {
                    "libx264" => w[3] & 0x1f,
                    _ => (w[3] >> 1) & 0x3f,
                })
                .collect();
            let (sps, pps) = if codec == "libx264" { (7, 8) } else { (33, 34) };
            assert!(
                nal_types.contains(&sps) && nal_types.contains(&pps),
                "{codec}: {nal_types:?}"
            );

            let ts = clip(64, 64, codec, "yuv420p", "ts");
            let out = to_annex_b(&ts);
            assert_eq!(out.len(), ts.video_packets.len(), "{codec}");
            for (packet, original) in out.iter().zip(&ts.video_packets) {
                assert_eq!(packet.data(), original.data(), "{codec}");
                assert_eq!(packet.pts(), original.pts());
            }
        }
    }

    fn format_1080p() -> CUVIDEOFORMAT {
        let mut format = CUVIDEOFORMAT {
            codec: cudaVideoCodec::cudaVideoCodec_H264,
            chroma_format: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
            progressive_sequence: 1,
            min_num_decode_surfaces: 9,
            coded_width: 1920,
            coded_height: 1088,
            ..Default::default()
        };
        format.display_area.right = 1920;
        format.display_area.bottom = 1080;
        format
    }

    const LIMITS: DecodeLimits = DecodeLimits {
        min_width: 48,
        min_height: 16,
        max_width: 4096,
        max_height: 4096,
        max_macroblocks: 65536,
    };

    fn config_of(format: &CUVIDEOFORMAT, codec: VideoCodec) -> Result<DecoderConfig, NvdecError> {
        // SAFETY: a valid, initialised CUVIDEOFORMAT.
        let format = unsafe { SequenceFormat::read(format) };
        decoder_config(&format, codec, &LIMITS)
    }

    #[test]
    fn decoder_creation_follows_the_sequence_format() {
        let config = config_of(&format_1080p(), VideoCodec::H264).expect("1080p decodes");
        assert_eq!((config.target_width, config.target_height), (1920, 1080));
        assert_eq!(config.display, [0, 0, 1920, 1080]);
        assert_eq!(config.surfaces, 9);
        let info = create_info(&config);
        assert_eq!((info.ulWidth, info.ulHeight), (1920, 1088));
        assert_eq!((info.ulTargetWidth, info.ulTargetHeight), (1920, 1080));
        assert_eq!(
            (
                info.display_area.left,
                info.display_area.top,
                info.display_area.right,
                info.display_area.bottom
            ),
            (0, 0, 1920, 1080)
        );
        assert_eq!(info.ulNumDecodeSurfaces, 9);
        assert_eq!(info.ulNumOutputSurfaces, 2);
        assert_eq!(info.CodecType, cudaVideoCodec::cudaVideoCodec_H264);
        assert_eq!(
            info.ChromaFormat,
            cudaVideoChromaFormat::cudaVideoChromaFormat_420
        );
        assert_eq!(
            info.OutputFormat,
            cudaVideoSurfaceFormat::cudaVideoSurfaceFormat_NV12
        );
        assert_eq!(info.bitDepthMinus8, 0);
        assert_eq!(
            info.DeinterlaceMode,
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Weave
        );
        assert_eq!(
            info.ulCreationFlags,
            cudaVideoCreateFlags::cudaVideoCreate_PreferCUVID as c_ulong
        );
        assert!(info.vidLock.is_null());

        // Interlaced: adaptive deinterlacing.
        let mut interlaced = format_1080p();
        interlaced.progressive_sequence = 0;
        let info = create_info(&config_of(&interlaced, VideoCodec::H264).unwrap());
        assert_eq!(
            info.DeinterlaceMode,
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Adaptive
        );

        // A cropped, odd display area: the output rounds up to even.
        let mut cropped = format_1080p();
        cropped.display_area.left = 8;
        cropped.display_area.top = 2;
        cropped.display_area.right = 1289;
        cropped.display_area.bottom = 723;
        let config = config_of(&cropped, VideoCodec::H264).unwrap();
        assert_eq!(config.display, [8, 2, 1289, 723]);
        assert_eq!((config.target_width, config.target_height), (1282, 722));

        // An empty display area means the whole coded frame.
        let mut uncropped = format_1080p();
        uncropped.display_area.right = 0;
        uncropped.display_area.bottom = 0;
        let config = config_of(&uncropped, VideoCodec::H264).unwrap();
        assert_eq!((config.target_width, config.target_height), (1920, 1088));

        // Refused: more than 8 bits, other chroma, another codec, too large.
        let mut ten_bit = format_1080p();
        ten_bit.bit_depth_luma_minus8 = 2;
        let e = config_of(&ten_bit, VideoCodec::H264).unwrap_err();
        assert!(e.to_string().contains("10-bit"), "{e}");
        let mut yuv444 = format_1080p();
        yuv444.chroma_format = cudaVideoChromaFormat::cudaVideoChromaFormat_444;
        assert!(config_of(&yuv444, VideoCodec::H264).is_err());
        assert!(config_of(&format_1080p(), VideoCodec::Hevc).is_err());
        let mut huge = format_1080p();
        huge.coded_width = 8192;
        assert!(config_of(&huge, VideoCodec::H264).is_err());
        let mut tiny = format_1080p();
        tiny.coded_width = 32;
        assert!(config_of(&tiny, VideoCodec::H264).is_err());
    }

    #[test]
    fn parser_timestamps_round_trip_in_the_streams_time_base() {
        // MPEG-TS: the parser counts in the stream's own 90 kHz.
        let ts = ParserClock::for_time_base(ff::Rational(1, 90_000));
        assert_eq!(ts.rate, 90_000);
        for pts in [0, 1, 3003, 8_589_934_591, -3003] {
            assert_eq!(ts.to_parser(pts), pts);
            assert_eq!(ts.from_parser(pts), pts);
        }
        // A time base that is not 1/N: 10 MHz, rescaled both ways without loss
        // at frame granularity.
        let ntsc = ParserClock::for_time_base(ff::Rational(1001, 30_000));
        assert_eq!(ntsc.rate, 10_000_000);
        assert_eq!(ntsc.to_parser(30), 10_010_000);
        for pts in [0, 1, 29, 30, 12_345] {
            assert_eq!(ntsc.from_parser(ntsc.to_parser(pts)), pts);
        }
        // MP4's common 1/15360: native rate.
        let mp4 = ParserClock::for_time_base(ff::Rational(1, 15_360));
        assert_eq!((mp4.rate, mp4.to_parser(512)), (15_360, 512));
    }

    #[test]
    fn errors_name_the_failing_call() {
        let e = NvdecError::Call {
            call: "cuvidCreateDecoder",
            result: 2,
        };
        assert_eq!(
            e.to_string(),
            "cuvidCreateDecoder failed: CUDA_ERROR_OUT_OF_MEMORY (2)"
        );
        assert!(result_name(12345).contains("12345"));
    }

    /// On a machine with an NVIDIA GPU and libnvcuvid: NVDEC's frames are
    /// the CPU decoder's, bit for bit, with the same timestamps (H.264 with
    /// B-frames in MPEG-TS, HEVC in MP4, both with a cropped coded size).
    /// Elsewhere it returns at once.
    #[test]
    fn decodes_like_the_cpu_decoder_where_a_gpu_is_present() {
        use crate::video::cpu::CpuDecoder;

        let Some(info) = super::super::probe::probe()
            .into_iter()
            .find(|g| g.nvdec_library)
        else {
            return;
        };
        let device = super::super::device::open_shared(&info).expect("GPU opens");
        let codecs = probe_codecs(&device).expect("decoder caps");
        for codec in [VideoCodec::H264, VideoCodec::Hevc] {
            assert!(
                codecs
                    .iter()
                    .any(|&(c, l)| c == codec && l.max_width >= 1920 && l.max_height >= 1080),
                "{codecs:?}"
            );
        }
        for (codec, ext) in [("libx264", "ts"), ("libx265", "mp4"), ("libx264", "mp4")] {
            let segment = clip(320, 180, codec, "yuv420p", ext);

            let mut cpu = Vec::new();
            let mut decoder = CpuDecoder::new(&segment.video).expect("CPU decoder");
            for packet in segment.video_packets.iter().map(Some).chain([None]) {
                decoder
                    .decode(packet, &mut |frame| {
                        let video = frame.host_video()?;
                        let (w, h) = (video.width() as usize, video.height() as usize);
                        let plane = |i: usize, w: usize, h: usize| -> Vec<u8> {
                            (0..h)
                                .flat_map(|y| {
                                    let row = y * video.stride(i);
                                    video.data(i)[row..row + w].to_vec()
                                })
                                .collect()
                        };
                        let (u, v) = (plane(1, w / 2, h / 2), plane(2, w / 2, h / 2));
                        let uv: Vec<u8> = u.iter().zip(&v).flat_map(|(&u, &v)| [u, v]).collect();
                        cpu.push((frame.pts, w, h, plane(0, w, h), uv));
                        Ok(())
                    })
                    .expect("CPU decode");
            }

            let mut gpu = Vec::new();
            let mut decoder =
                NvdecDecoder::new(Arc::clone(&device), &segment.video).expect("NVDEC opens");
            for packet in segment.video_packets.iter().map(Some).chain([None]) {
                decoder
                    .decode(packet, &mut |frame| {
                        let FrameData::Device(f) = &frame.data else {
                            panic!("a host frame from NVDEC");
                        };
                        let host = f.device.scaler().download(&f.frame).expect("download");
                        let (w, h) = (host.width, host.height);
                        let plane = |data: &[u8], pitch: usize, rows: usize| -> Vec<u8> {
                            (0..rows)
                                .flat_map(|y| data[y * pitch..y * pitch + w].to_vec())
                                .collect()
                        };
                        gpu.push((
                            frame.pts,
                            w,
                            h,
                            plane(&host.luma, host.luma_pitch, h),
                            plane(&host.chroma, host.chroma_pitch, h / 2),
                        ));
                        Ok(())
                    })
                    .expect("NVDEC decode");
            }

            assert_eq!(gpu.len(), cpu.len(), "{codec} {ext}: frame count");
            assert_eq!(gpu.len(), 30, "{codec} {ext}");
            // Both decoders are exact by the standards; a tolerance keeps a
            // 1:1 NVDEC crop that resampled by a hair from failing, while a
            // wrong pitch, offset or plane is off by tens.
            let differ = |a: &[u8], b: &[u8]| {
                assert_eq!(a.len(), b.len());
                let diffs = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y)));
                let (max, sum) = diffs.fold((0, 0), |(m, s), d| (m.max(d), s + d));
                (max, sum as f64 / a.len().max(1) as f64)
            };
            for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                assert_eq!((g.0, g.1, g.2), (c.0, c.1, c.2), "{codec} {ext} frame {i}");
                for (plane, a, b) in [("luma", &g.3, &c.3), ("chroma", &g.4, &c.4)] {
                    let (max, mean) = differ(a, b);
                    assert!(
                        max <= 8 && mean < 0.5,
                        "{codec} {ext} frame {i}: {plane} differs (max {max}, mean {mean:.3})"
                    );
                }
            }
        }
    }
}
