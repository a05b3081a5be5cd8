//! libnvcuvid opened at run time, and each of its calls wrapped once.
//!
//! The types come from `nvidia_video_codec_sdk::sys`, whose `extern`
//! declarations are never called (its `ci-check` build links nothing): the
//! functions are looked up in the library, which stays loaded for the
//! process's life. The decoder and the parser are owned handles destroyed on
//! drop; every call needs the GPU's context current on the calling thread
//! ([`bind`]).

use std::ffi::{c_int, c_uint, c_ulong, c_ulonglong};
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::{CudaContext, CudaStream, DriverError};
use libloading::Library;
use nvidia_video_codec_sdk::sys::cuviddec::{
    cudaVideoCodec, CUvideodecoder, CUVIDDECODECAPS, CUVIDDECODECREATEINFO, CUVIDGETDECODESTATUS,
    CUVIDPICPARAMS, CUVIDPROCPARAMS,
};
use nvidia_video_codec_sdk::sys::nvcuvid::{
    CUvideopacketflags, CUvideoparser, CUVIDPARSERPARAMS, CUVIDSOURCEDATAPACKET,
};

use super::super::driver;
use super::super::error::GpuError;
use crate::video::profile::VideoCodec;

/// The library's file names, most specific first.
pub const LIBRARY_NAMES: [&str; 2] = ["libnvcuvid.so.1", "libnvcuvid.so"];

/// A `CUresult` as the library returns it. Read as a plain integer rather
/// than as cudarc's enum, so that a code the enum lacks is not undefined
/// behaviour.
pub type CuStatus = c_uint;
pub const CUDA_SUCCESS: CuStatus = 0;
pub const CUDA_ERROR_INVALID_VALUE: CuStatus = 1;

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
pub fn result_name(code: CuStatus) -> String {
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
pub fn check(call: &'static str, result: CuStatus) -> Result<(), NvdecError> {
    if result == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(NvdecError::Call { call, result })
    }
}

/// Runs `f`, turning a panic (cudarc's, say) into `NvdecError::Panic`.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, NvdecError>) -> Result<T, NvdecError> {
    driver::catch_panic(f).unwrap_or_else(|message| Err(NvdecError::Panic(message)))
}

/// Makes `ctx` the calling thread's current context, as every cuvid call needs.
pub fn bind(ctx: &CudaContext) -> Result<(), NvdecError> {
    driver::bind(ctx).map_err(|source| NvdecError::Cuda {
        call: "cuCtxSetCurrent",
        source,
    })
}

pub fn cuvid_codec(codec: VideoCodec) -> cudaVideoCodec {
    match codec {
        VideoCodec::H264 => cudaVideoCodec::cudaVideoCodec_H264,
        VideoCodec::Hevc => cudaVideoCodec::cudaVideoCodec_HEVC,
    }
}

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
pub struct Api {
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

    /// cuvidGetDecoderCaps: fills the OUT fields of `caps`, whose IN fields
    /// (codec, chroma format, bit depth) say what is asked. The context must
    /// be current.
    pub fn decoder_caps(&self, caps: &mut CUVIDDECODECAPS) -> Result<(), NvdecError> {
        // SAFETY: `caps` is a valid CUVIDDECODECAPS with its IN fields set;
        // the library writes only its OUT fields (integers).
        check("cuvidGetDecoderCaps", unsafe {
            (self.get_decoder_caps)(caps)
        })
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

/// The library, loaded on first use.
pub fn api() -> Result<&'static Api, NvdecError> {
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

/// A hardware decoder (cuvidCreateDecoder), destroyed on drop. The context
/// it was created in must be current for every call and for the drop.
pub struct VideoDecoder {
    api: &'static Api,
    handle: CUvideodecoder,
}

/// A decoded picture mapped for reading (cuvidMapVideoFrame64): an NV12
/// surface in device memory, `pitch` bytes per row, until it is unmapped.
#[must_use = "a mapped picture must be unmapped"]
pub struct MappedPicture {
    pub device_ptr: c_ulonglong,
    pub pitch: c_uint,
}

impl VideoDecoder {
    /// cuvidCreateDecoder with `info`. Its one pointer, the context lock, is
    /// cleared: every call binds the context itself.
    pub fn create(api: &'static Api, info: &CUVIDDECODECREATEINFO) -> Result<Self, NvdecError> {
        let mut info = *info;
        info.vidLock = ptr::null_mut();
        let mut handle: CUvideodecoder = ptr::null_mut();
        // SAFETY: a valid out-pointer and create info (integers and enums,
        // the lock null); the context is current (the owner's contract).
        check("cuvidCreateDecoder", unsafe {
            (api.create_decoder)(&mut handle, &mut info)
        })?;
        Ok(VideoDecoder { api, handle })
    }

    /// cuvidDecodePicture: submits one picture, returning the library's status.
    ///
    /// # Safety
    /// `picture` must be the parameters the parser passed to its decode
    /// callback, which is running.
    pub unsafe fn decode_picture(&self, picture: *mut CUVIDPICPARAMS) -> CuStatus {
        // SAFETY: a live decoder, the parser's parameters (the caller's
        // contract), the context current.
        unsafe { (self.api.decode_picture)(self.handle, picture) }
    }

    /// cuvidGetDecodeStatus of picture `index`, as the integer C stores;
    /// `None` where the driver lacks the call or it fails.
    pub fn decode_status(&self, index: c_int) -> Option<u32> {
        let get = self.api.get_decode_status?;
        let mut status = CUVIDGETDECODESTATUS::default();
        // SAFETY: a live decoder and a valid out-struct; the context is current.
        let result = unsafe { get(self.handle, index, &mut status) };
        // SAFETY: the status enum is read as the integer C stores.
        (result == CUDA_SUCCESS)
            .then(|| unsafe { ptr::addr_of!(status.decodeStatus).cast::<u32>().read() })
    }

    /// cuvidMapVideoFrame64 of picture `index`, post-processed with `params`
    /// on `stream` (which the call sets, with the other pointers cleared).
    pub fn map(
        &self,
        index: c_int,
        mut params: CUVIDPROCPARAMS,
        stream: &CudaStream,
    ) -> Result<MappedPicture, CuStatus> {
        params.output_stream = stream.cu_stream().cast();
        params.histogram_dptr = ptr::null_mut();
        params.Reserved2 = [ptr::null_mut()];
        let mut device_ptr: c_ulonglong = 0;
        let mut pitch: c_uint = 0;
        // SAFETY: a live decoder, valid out-pointers and parameters whose
        // only pointers are a live stream and nulls; the context is current.
        let result = unsafe {
            (self.api.map_video_frame)(self.handle, index, &mut device_ptr, &mut pitch, &mut params)
        };
        if result == CUDA_SUCCESS {
            Ok(MappedPicture { device_ptr, pitch })
        } else {
            Err(result)
        }
    }

    /// cuvidUnmapVideoFrame64. Whatever reads the surface must have finished.
    pub fn unmap(&self, picture: MappedPicture) -> Result<(), NvdecError> {
        // SAFETY: `picture` was mapped from this decoder and is unmapped once
        // (it is consumed).
        check("cuvidUnmapVideoFrame64", unsafe {
            (self.api.unmap_video_frame)(self.handle, picture.device_ptr)
        })
    }
}

impl Drop for VideoDecoder {
    fn drop(&mut self) {
        // SAFETY: `handle` came from cuvidCreateDecoder and is destroyed once;
        // the context is current (the owner's contract).
        let result = unsafe { (self.api.destroy_decoder)(self.handle) };
        if result != CUDA_SUCCESS {
            tracing::warn!(result = %result_name(result), "cuvidDestroyDecoder failed");
        }
    }
}

/// NVIDIA's bitstream parser (cuvidCreateVideoParser), destroyed on drop.
pub struct VideoParser {
    api: &'static Api,
    handle: CUvideoparser,
}

impl VideoParser {
    /// cuvidCreateVideoParser with `params`.
    ///
    /// # Safety
    /// The callbacks in `params` must match the header's prototypes, and the
    /// user data they get must stay valid for them until the parser is
    /// dropped.
    pub unsafe fn create(
        api: &'static Api,
        params: &mut CUVIDPARSERPARAMS,
    ) -> Result<Self, NvdecError> {
        let mut handle: CUvideoparser = ptr::null_mut();
        // SAFETY: valid out-pointer and parameters (the caller's contract).
        check("cuvidCreateVideoParser", unsafe {
            (api.create_video_parser)(&mut handle, params)
        })?;
        Ok(VideoParser { api, handle })
    }

    /// cuvidParseVideoData of one packet (`payload` with its `timestamp`, or
    /// with `end` the end of the stream); the callbacks run inside the call.
    ///
    /// # Safety
    /// Nothing may hold a reference to the callbacks' user data across the
    /// call, and the context they use must be current.
    pub unsafe fn parse(&mut self, payload: &[u8], timestamp: Option<i64>, end: bool) -> CuStatus {
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
        // call; the rest is the caller's contract.
        unsafe { (self.api.parse_video_data)(self.handle, &mut packet) }
    }
}

impl Drop for VideoParser {
    fn drop(&mut self) {
        // SAFETY: the parser came from cuvidCreateVideoParser and is
        // destroyed once.
        let result = unsafe { (self.api.destroy_video_parser)(self.handle) };
        if result != CUDA_SUCCESS {
            tracing::warn!(result = %result_name(result), "cuvidDestroyVideoParser failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
