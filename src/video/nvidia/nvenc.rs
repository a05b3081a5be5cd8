//! NVENC H.264 and HEVC encoding of NV12 frames that are already in a GPU's
//! memory, through `libnvidia-encode.so.1` opened at run time.
//!
//! The API's types, constants and GUIDs come from `nvidia_video_codec_sdk::sys`
//! (Video Codec SDK 12.1 headers); its functions are never linked: the library
//! is opened with libloading, `NvEncodeAPIGetMaxSupportedVersion` is checked
//! against the headers' version, and `NvEncodeAPICreateInstance` fills the
//! function table every later call goes through.
//!
//! How a rendition is encoded:
//! - one session per encoder, on the GPU's primary CUDA context (bound to the
//!   calling thread before every call: frames arrive on a worker thread);
//! - preset P4 with the high-quality tuning (`nvEncGetEncodePresetConfigEx`),
//!   then the profile's rate control and GOP written over it ([`configure`]),
//!   as the CPU encoder configures libx264: min = average = max rate = VBV
//!   buffer = the profile's bitrate (NVENC's CBR mode), a keyframe every
//!   `gop` (250 frames by default, x264's default), every keyframe an IDR;
//! - **no B-frames and no lookahead** (`frameIntervalP = 1`,
//!   `zeroReorderDelay`), so packets come out in input order and each
//!   packet's `dts` equals its `pts` (the frame's own timestamp);
//! - a profile's `quality` (a CRF-like 1..=51) selects NVENC's constant-quality
//!   VBR mode instead (`targetQuality`), the bitrate then only capping it, as
//!   x264's CRF with a VBV limit;
//! - synchronous mode: each frame is copied into a registered NV12 device
//!   buffer of the encoder's own (luma rows, then the interleaved chroma rows
//!   from `pitch * height`), mapped, encoded, and its bitstream locked (which
//!   waits for the hardware) and copied into an FFmpeg packet. Normally one
//!   input buffer and one bitstream buffer serve every frame; if the driver
//!   ever holds a frame back (`NV_ENC_ERR_NEED_MORE_INPUT`, which this
//!   configuration should never cause) further buffers are added so the held
//!   frame's input stays intact until its output is locked;
//! - MPEG-TS output (`global_header == false`) repeats SPS/PPS (and VPS) at
//!   every IDR; MP4 output gets them once, out of band, as Annex-B extradata
//!   from `nvEncGetSequenceParams` (and not in band, as FFmpeg's nvenc does);
//!   the MP4 muxer converts both the extradata and the Annex-B packets.
//!
//! GPUs without NVENC (H100, H200, A100) fail at `nvEncOpenEncodeSessionEx`;
//! that is an [`NvencError`], never a panic.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::mem::MaybeUninit;
use std::ptr::{self, addr_of_mut};
use std::sync::{Arc, OnceLock};

use cudarc::driver::{sys as cuda, DevicePtr, DriverError};
use ffmpeg_next as ff;
use nvidia_video_codec_sdk::sys::nvEncodeAPI as nv;

use super::device::GpuDevice;
use super::scaler::{DeviceFrame, PixelFormat};
use crate::video::backend::{Encoder, EncoderSettings, Frame, FrameData};
use crate::video::profile::{Gop, H264Profile, VideoCodec};
use crate::video::VideoError;

/// File names tried for the NVENC library, in order.
pub(super) const LIBRARY_NAMES: &[&str] = &["libnvidia-encode.so.1", "libnvidia-encode.so"];

/// The API version of the headers the bindings were generated from, in the
/// form `NvEncodeAPIGetMaxSupportedVersion` reports: `major << 4 | minor`.
pub const HEADER_API_VERSION: u32 = (nv::NVENCAPI_MAJOR_VERSION << 4) | nv::NVENCAPI_MINOR_VERSION;

/// Keyframe interval for [`Gop::Default`]: x264's default `keyint`.
pub const DEFAULT_GOP_FRAMES: u32 = 250;

/// Input (and bitstream) buffers an encoder may hold at once; more than one
/// only while the driver holds frames back.
const MAX_SLOTS: usize = 8;

/// Bytes offered to `nvEncGetSequenceParams` (SPS + PPS, or VPS + SPS + PPS).
const SEQUENCE_HEADER_CAPACITY: usize = 1024;

const SUCCESS: u32 = nv::NVENCSTATUS::NV_ENC_SUCCESS as u32;
const NEED_MORE_INPUT: u32 = nv::NVENCSTATUS::NV_ENC_ERR_NEED_MORE_INPUT as u32;

/// Every NVENCSTATUS of the headers, in value order (checked by a test), so
/// a status the driver returns is named by the bindings' own spelling.
const STATUSES: [nv::NVENCSTATUS; 27] = {
    use nv::NVENCSTATUS::*;
    [
        NV_ENC_SUCCESS,
        NV_ENC_ERR_NO_ENCODE_DEVICE,
        NV_ENC_ERR_UNSUPPORTED_DEVICE,
        NV_ENC_ERR_INVALID_ENCODERDEVICE,
        NV_ENC_ERR_INVALID_DEVICE,
        NV_ENC_ERR_DEVICE_NOT_EXIST,
        NV_ENC_ERR_INVALID_PTR,
        NV_ENC_ERR_INVALID_EVENT,
        NV_ENC_ERR_INVALID_PARAM,
        NV_ENC_ERR_INVALID_CALL,
        NV_ENC_ERR_OUT_OF_MEMORY,
        NV_ENC_ERR_ENCODER_NOT_INITIALIZED,
        NV_ENC_ERR_UNSUPPORTED_PARAM,
        NV_ENC_ERR_LOCK_BUSY,
        NV_ENC_ERR_NOT_ENOUGH_BUFFER,
        NV_ENC_ERR_INVALID_VERSION,
        NV_ENC_ERR_MAP_FAILED,
        NV_ENC_ERR_NEED_MORE_INPUT,
        NV_ENC_ERR_ENCODER_BUSY,
        NV_ENC_ERR_EVENT_NOT_REGISTERD,
        NV_ENC_ERR_GENERIC,
        NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY,
        NV_ENC_ERR_UNIMPLEMENTED,
        NV_ENC_ERR_RESOURCE_REGISTER_FAILED,
        NV_ENC_ERR_RESOURCE_NOT_REGISTERED,
        NV_ENC_ERR_RESOURCE_NOT_MAPPED,
        NV_ENC_ERR_NEED_MORE_OUTPUT,
    ]
};

/// The name of an NVENCSTATUS value, e.g. `NV_ENC_ERR_NO_ENCODE_DEVICE`.
pub fn status_name(status: u32) -> String {
    STATUSES
        .iter()
        .find(|s| **s as u32 == status)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|| format!("NVENCSTATUS {status}"))
}

/// Why NVENC is unusable or a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvencError {
    /// libnvidia-encode is missing or lacks an entry point.
    #[error("NVENC is not available: {0}")]
    Library(String),
    #[error(
        "the NVIDIA driver supports NVENC API {}.{} at most, lpworker needs {}.{} \
         (Video Codec SDK 12.1: Linux driver 530 or newer); update the driver",
        .driver.0, .driver.1, .required.0, .required.1
    )]
    DriverTooOld {
        driver: (u32, u32),
        required: (u32, u32),
    },
    /// An NVENC call returned an error status; `detail` holds the API's last
    /// error string (or a hint) when there is one.
    #[error("{call} failed with {name}{}", detail_suffix(.detail))]
    Call {
        call: &'static str,
        status: u32,
        name: String,
        detail: String,
    },
    #[error("CUDA {call} failed: {message}")]
    Cuda { call: &'static str, message: String },
    /// The encoder was used in a way it cannot serve (wrong frame, bad size).
    #[error("{0}")]
    Invalid(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl NvencError {
    fn call(call: &'static str, status: u32, detail: String) -> Self {
        NvencError::Call {
            call,
            status,
            name: status_name(status),
            detail,
        }
    }

    /// The NVENCSTATUS of a failed call.
    pub fn status(&self) -> Option<u32> {
        match self {
            NvencError::Call { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn cuda_error(call: &'static str) -> impl FnOnce(DriverError) -> NvencError {
    move |e| NvencError::Cuda {
        call,
        message: e.to_string(),
    }
}

/// Binds `device`'s context to the calling thread (see [`super::device::bind`]).
fn bind(device: &GpuDevice) -> Result<(), NvencError> {
    super::device::bind(device.context()).map_err(cuda_error("cuCtxSetCurrent"))
}

/// Runs `f`, turning a panic (cudarc's, say) into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, NvencError>) -> Result<T, NvencError> {
    super::driver::catch_panic(f).unwrap_or_else(|message| {
        Err(NvencError::Cuda {
            call: "driver",
            message,
        })
    })
}

/// Checks the driver's `NvEncodeAPIGetMaxSupportedVersion` value (`major << 4
/// | minor`) against the API version the headers were written for.
pub fn check_api_version(driver: u32, header: u32) -> Result<(), NvencError> {
    if driver >= header {
        Ok(())
    } else {
        Err(NvencError::DriverTooOld {
            driver: (driver >> 4, driver & 0xf),
            required: (header >> 4, header & 0xf),
        })
    }
}

/// libnvidia-encode.so.1 (or .so) opens.
pub fn library_loads() -> bool {
    open_library().is_ok()
}

type Handle = *mut c_void;

/// The entry points of NV_ENCODE_API_FUNCTION_LIST this module calls, with
/// their NVENCSTATUS results typed as the `u32` they are in C, so that a
/// status the Rust enum does not list can never become an invalid enum.
struct Functions {
    open_session_ex:
        unsafe extern "C" fn(*mut nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS, *mut Handle) -> u32,
    get_encode_guid_count: unsafe extern "C" fn(Handle, *mut u32) -> u32,
    get_encode_guids: unsafe extern "C" fn(Handle, *mut nv::GUID, u32, *mut u32) -> u32,
    get_preset_config_ex: unsafe extern "C" fn(
        Handle,
        nv::GUID,
        nv::GUID,
        nv::NV_ENC_TUNING_INFO,
        *mut nv::NV_ENC_PRESET_CONFIG,
    ) -> u32,
    initialize_encoder: unsafe extern "C" fn(Handle, *mut nv::NV_ENC_INITIALIZE_PARAMS) -> u32,
    create_bitstream_buffer:
        unsafe extern "C" fn(Handle, *mut nv::NV_ENC_CREATE_BITSTREAM_BUFFER) -> u32,
    destroy_bitstream_buffer: unsafe extern "C" fn(Handle, nv::NV_ENC_OUTPUT_PTR) -> u32,
    encode_picture: unsafe extern "C" fn(Handle, *mut nv::NV_ENC_PIC_PARAMS) -> u32,
    lock_bitstream: unsafe extern "C" fn(Handle, *mut nv::NV_ENC_LOCK_BITSTREAM) -> u32,
    unlock_bitstream: unsafe extern "C" fn(Handle, nv::NV_ENC_OUTPUT_PTR) -> u32,
    get_sequence_params:
        unsafe extern "C" fn(Handle, *mut nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD) -> u32,
    map_input_resource: unsafe extern "C" fn(Handle, *mut nv::NV_ENC_MAP_INPUT_RESOURCE) -> u32,
    unmap_input_resource: unsafe extern "C" fn(Handle, nv::NV_ENC_INPUT_PTR) -> u32,
    destroy_encoder: unsafe extern "C" fn(Handle) -> u32,
    register_resource: unsafe extern "C" fn(Handle, *mut nv::NV_ENC_REGISTER_RESOURCE) -> u32,
    unregister_resource: unsafe extern "C" fn(Handle, nv::NV_ENC_REGISTERED_PTR) -> u32,
    get_last_error_string: unsafe extern "C" fn(Handle) -> *const c_char,
}

/// The loaded library and its function table; loaded once per process and
/// kept for its lifetime, so the function pointers never dangle.
struct Api {
    fns: Functions,
    _library: libloading::Library,
}

fn api() -> Result<&'static Api, NvencError> {
    static API: OnceLock<Result<Api, NvencError>> = OnceLock::new();
    API.get_or_init(load_api).as_ref().map_err(Clone::clone)
}

fn open_library() -> Result<libloading::Library, NvencError> {
    let mut errors = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: loading NVIDIA's encode library runs only its initialisers.
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return Ok(library),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(NvencError::Library(format!(
        "the NVENC library (part of the NVIDIA driver) does not load ({})",
        errors.join("; ")
    )))
}

/// Takes one entry out of the function table, retyped with a `u32` status.
macro_rules! entry {
    ($list:ident . $field:ident : fn($($arg:ty),*)) => {{
        let f = $list.$field.ok_or_else(|| {
            NvencError::Library(format!(
                "the driver's NVENC function table has no {}",
                stringify!($field)
            ))
        })?;
        // SAFETY: the same C function with its NVENCSTATUS result read as the
        // 32-bit unsigned integer it is (a C enum; the bindings' Rust enum is
        // `repr(u32)`): identical ABI, and no invalid enum value can arise.
        // The annotation on the source type makes the compiler check the
        // arguments against the bindings' signature.
        unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn($($arg),*) -> nv::NVENCSTATUS,
                unsafe extern "C" fn($($arg),*) -> u32,
            >(f)
        }
    }};
}

fn load_api() -> Result<Api, NvencError> {
    let library = open_library()?;
    let symbol = |name: &'static [u8]| {
        NvencError::Library(format!(
            "libnvidia-encode has no {}",
            String::from_utf8_lossy(&name[..name.len() - 1])
        ))
    };
    // SAFETY: the symbol's C signature is
    // `NVENCSTATUS NvEncodeAPIGetMaxSupportedVersion(uint32_t*)` (nvEncodeAPI.h);
    // the pointer is copied out and stays valid while `library` is loaded,
    // which is for the process's lifetime (it is stored in `Api`).
    let get_max_version: unsafe extern "C" fn(*mut u32) -> u32 = unsafe {
        *library
            .get(b"NvEncodeAPIGetMaxSupportedVersion\0")
            .map_err(|_| symbol(b"NvEncodeAPIGetMaxSupportedVersion\0"))?
    };
    // SAFETY: `NVENCSTATUS NvEncodeAPICreateInstance(NV_ENCODE_API_FUNCTION_LIST*)`,
    // kept valid as above.
    let create_instance: unsafe extern "C" fn(*mut nv::NV_ENCODE_API_FUNCTION_LIST) -> u32 = unsafe {
        *library
            .get(b"NvEncodeAPICreateInstance\0")
            .map_err(|_| symbol(b"NvEncodeAPICreateInstance\0"))?
    };

    let mut version = 0u32;
    // SAFETY: a valid out-pointer to a u32.
    let status = unsafe { get_max_version(&mut version) };
    if status != SUCCESS {
        return Err(NvencError::call(
            "NvEncodeAPIGetMaxSupportedVersion",
            status,
            String::new(),
        ));
    }
    check_api_version(version, HEADER_API_VERSION)?;

    // SAFETY: every field of the function list is an integer, a raw pointer
    // or an `Option` of a function pointer, all valid as zero bytes (None).
    let mut list: nv::NV_ENCODE_API_FUNCTION_LIST = unsafe { std::mem::zeroed() };
    list.version = nv::NV_ENCODE_API_FUNCTION_LIST_VER;
    // SAFETY: `list` is a zeroed function list with its version set, as the
    // API requires; the driver fills in the function pointers.
    let status = unsafe { create_instance(&mut list) };
    if status != SUCCESS {
        return Err(NvencError::call(
            "NvEncodeAPICreateInstance",
            status,
            String::new(),
        ));
    }

    let fns = Functions {
        open_session_ex: entry!(list.nvEncOpenEncodeSessionEx: fn(*mut nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS, *mut Handle)),
        get_encode_guid_count: entry!(list.nvEncGetEncodeGUIDCount: fn(Handle, *mut u32)),
        get_encode_guids: entry!(list.nvEncGetEncodeGUIDs: fn(Handle, *mut nv::GUID, u32, *mut u32)),
        get_preset_config_ex: entry!(list.nvEncGetEncodePresetConfigEx: fn(Handle, nv::GUID, nv::GUID, nv::NV_ENC_TUNING_INFO, *mut nv::NV_ENC_PRESET_CONFIG)),
        initialize_encoder: entry!(list.nvEncInitializeEncoder: fn(Handle, *mut nv::NV_ENC_INITIALIZE_PARAMS)),
        create_bitstream_buffer: entry!(list.nvEncCreateBitstreamBuffer: fn(Handle, *mut nv::NV_ENC_CREATE_BITSTREAM_BUFFER)),
        destroy_bitstream_buffer: entry!(list.nvEncDestroyBitstreamBuffer: fn(Handle, nv::NV_ENC_OUTPUT_PTR)),
        encode_picture: entry!(list.nvEncEncodePicture: fn(Handle, *mut nv::NV_ENC_PIC_PARAMS)),
        lock_bitstream: entry!(list.nvEncLockBitstream: fn(Handle, *mut nv::NV_ENC_LOCK_BITSTREAM)),
        unlock_bitstream: entry!(list.nvEncUnlockBitstream: fn(Handle, nv::NV_ENC_OUTPUT_PTR)),
        get_sequence_params: entry!(list.nvEncGetSequenceParams: fn(Handle, *mut nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD)),
        map_input_resource: entry!(list.nvEncMapInputResource: fn(Handle, *mut nv::NV_ENC_MAP_INPUT_RESOURCE)),
        unmap_input_resource: entry!(list.nvEncUnmapInputResource: fn(Handle, nv::NV_ENC_INPUT_PTR)),
        destroy_encoder: entry!(list.nvEncDestroyEncoder: fn(Handle)),
        register_resource: entry!(list.nvEncRegisterResource: fn(Handle, *mut nv::NV_ENC_REGISTER_RESOURCE)),
        unregister_resource: entry!(list.nvEncUnregisterResource: fn(Handle, nv::NV_ENC_REGISTERED_PTR)),
        get_last_error_string: list.nvEncGetLastErrorString.ok_or_else(|| {
            NvencError::Library(
                "the driver's NVENC function table has no nvEncGetLastErrorString".into(),
            )
        })?,
    };
    tracing::debug!(
        driver_api = format!("{}.{}", version >> 4, version & 0xf),
        header_api = format!(
            "{}.{}",
            nv::NVENCAPI_MAJOR_VERSION,
            nv::NVENCAPI_MINOR_VERSION
        ),
        "NVENC library loaded"
    );
    Ok(Api {
        fns,
        _library: library,
    })
}

/// A zero-filled NVENC parameter struct, as the SDK's samples start every
/// one. The bindings type a few fields as Rust enums without a zero variant
/// (`NV_ENC_PIC_STRUCT`, `NV_ENC_PARAMS_FRAME_FIELD_MODE`), for which zero
/// bytes are not a valid value (`mem::zeroed` of such a struct is a
/// non-unwinding panic that aborts the process); `fix` writes
/// those fields through the raw pointer before the value is assumed
/// initialised.
///
/// # Safety
/// `fix` must write every field of `T` that is not valid as zero bytes.
unsafe fn zeroed_with<T>(fix: impl FnOnce(*mut T)) -> T {
    let mut value = MaybeUninit::<T>::zeroed();
    fix(value.as_mut_ptr());
    // SAFETY: zero bytes everywhere except what `fix` wrote, which the
    // caller guarantees makes every field valid.
    unsafe { value.assume_init() }
}

/// A zeroed NV_ENC_CONFIG with its version set and `frameFieldMode` = FRAME,
/// the starting point [`configure`] is tested from.
#[cfg(test)]
fn zeroed_config() -> nv::NV_ENC_CONFIG {
    // SAFETY: `frameFieldMode` is NV_ENC_CONFIG's only field (outside its
    // union, whose variants are never validity-checked) without a zero
    // value; it is written here. The rest are integers, pointers, a GUID and
    // enums whose zero is a variant (rate control CONSTQP, MV precision
    // DEFAULT, QP map DISABLED, multi-pass DISABLED).
    let mut config: nv::NV_ENC_CONFIG = unsafe {
        zeroed_with(|p: *mut nv::NV_ENC_CONFIG| {
            // `p` points to the zeroed, writable struct.
            addr_of_mut!((*p).frameFieldMode)
                .write(nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME);
        })
    };
    config.version = nv::NV_ENC_CONFIG_VER;
    config
}

/// NV_ENC_PRESET_CONFIG ready for nvEncGetEncodePresetConfigEx: zeroed, both
/// its own and the nested config's versions set.
fn preset_config() -> nv::NV_ENC_PRESET_CONFIG {
    // SAFETY: as `zeroed_config`: the nested config's `frameFieldMode` is the
    // only field without a zero value, and it is written.
    let mut preset: nv::NV_ENC_PRESET_CONFIG = unsafe {
        zeroed_with(|p: *mut nv::NV_ENC_PRESET_CONFIG| {
            // `p` points to the zeroed, writable struct.
            addr_of_mut!((*p).presetCfg.frameFieldMode)
                .write(nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME);
        })
    };
    preset.version = nv::NV_ENC_PRESET_CONFIG_VER;
    preset.presetCfg.version = nv::NV_ENC_CONFIG_VER;
    preset
}

/// Zeroed NV_ENC_PIC_PARAMS with its version and a progressive picture.
fn zeroed_pic_params() -> nv::NV_ENC_PIC_PARAMS {
    // SAFETY: `pictureStruct` is the only field without a zero value and is
    // written; `pictureType` 0 is P, `bufferFmt` 0 UNDEFINED, the codec
    // parameters are a union.
    let mut pic: nv::NV_ENC_PIC_PARAMS = unsafe {
        zeroed_with(|p: *mut nv::NV_ENC_PIC_PARAMS| {
            // `p` points to the zeroed, writable struct.
            addr_of_mut!((*p).pictureStruct).write(nv::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME);
        })
    };
    pic.version = nv::NV_ENC_PIC_PARAMS_VER;
    pic
}

/// The parameters of one frame's encode: the mapped input, the bitstream
/// buffer its output goes to, its size and timestamp.
#[allow(clippy::too_many_arguments)]
fn picture_params(
    input: nv::NV_ENC_INPUT_PTR,
    output: nv::NV_ENC_OUTPUT_PTR,
    width: u32,
    height: u32,
    pitch: u32,
    pts: i64,
    duration: i64,
) -> nv::NV_ENC_PIC_PARAMS {
    let mut pic = zeroed_pic_params();
    pic.inputWidth = width;
    pic.inputHeight = height;
    pic.inputPitch = pitch;
    pic.inputBuffer = input;
    pic.outputBitstream = output;
    pic.bufferFmt = nv::NV_ENC_BUFFER_FORMAT::NV_ENC_BUFFER_FORMAT_NV12;
    pic.pictureStruct = nv::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME;
    // Opaque to NVENC and handed back as outputTimeStamp; a negative pts
    // wraps here and back on the way out.
    pic.inputTimeStamp = pts as u64;
    pic.inputDuration = duration.max(0) as u64;
    pic
}

/// The end-of-stream picture: no input, only the EOS flag.
fn eos_params() -> nv::NV_ENC_PIC_PARAMS {
    let mut pic = zeroed_pic_params();
    pic.encodePicFlags = nv::NV_ENC_PIC_FLAGS::NV_ENC_PIC_FLAG_EOS as u32;
    pic
}

/// Lock parameters for a blocking nvEncLockBitstream of `bitstream`.
fn lock_params(bitstream: nv::NV_ENC_OUTPUT_PTR) -> nv::NV_ENC_LOCK_BITSTREAM {
    // SAFETY: `pictureStruct` is the only field without a zero value and is
    // written; `pictureType` 0 is P.
    let mut lock: nv::NV_ENC_LOCK_BITSTREAM = unsafe {
        zeroed_with(|p: *mut nv::NV_ENC_LOCK_BITSTREAM| {
            // `p` points to the zeroed, writable struct.
            addr_of_mut!((*p).pictureStruct).write(nv::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME);
        })
    };
    lock.version = nv::NV_ENC_LOCK_BITSTREAM_VER;
    lock.outputBitstream = bitstream;
    // doNotWait stays 0: the lock blocks until the picture is encoded.
    lock
}

fn codec_guid(codec: VideoCodec) -> nv::GUID {
    match codec {
        VideoCodec::H264 => nv::NV_ENC_CODEC_H264_GUID,
        VideoCodec::Hevc => nv::NV_ENC_CODEC_HEVC_GUID,
    }
}

/// The NVENC profile for a rendition. H.264 without a named profile is High,
/// x264's choice for 8-bit 4:2:0. Constrained High is High without B-frames
/// (as lpms and the CPU encoder encode it); this encoder never uses
/// B-frames, so High's GUID serves, avoiding NVENC's separate Constrained
/// High GUID, which is not needed for a conforming stream.
pub fn profile_guid(codec: VideoCodec, h264: Option<H264Profile>) -> nv::GUID {
    match codec {
        VideoCodec::Hevc => nv::NV_ENC_HEVC_PROFILE_MAIN_GUID,
        VideoCodec::H264 => match h264 {
            Some(H264Profile::Baseline) => nv::NV_ENC_H264_PROFILE_BASELINE_GUID,
            Some(H264Profile::Main) => nv::NV_ENC_H264_PROFILE_MAIN_GUID,
            Some(H264Profile::High | H264Profile::ConstrainedHigh) | None => {
                nv::NV_ENC_H264_PROFILE_HIGH_GUID
            }
        },
    }
}

/// Frames per second of a rational rate, or `None` when it is not a rate.
fn fps(rate: ff::Rational) -> Option<f64> {
    let (num, den) = (rate.numerator(), rate.denominator());
    (num > 0 && den > 0).then(|| f64::from(num) / f64::from(den))
}

/// Keyframe interval in frames, as the CPU encoder sets libx264's:
/// [`DEFAULT_GOP_FRAMES`] by default, 1 for intra-only, else seconds × fps.
pub fn gop_frames(gop: Gop, frame_rate: ff::Rational) -> u32 {
    match gop {
        Gop::Default => DEFAULT_GOP_FRAMES,
        Gop::Intra => 1,
        Gop::Seconds(s) => match fps(frame_rate) {
            Some(fps) => ((s * fps) as u32).max(1),
            None => DEFAULT_GOP_FRAMES,
        },
    }
}

/// The frame rate as NVENC's (num, den); 30/1 when the rate is unusable.
fn frame_rate_parts(rate: ff::Rational) -> (u32, u32) {
    match fps(rate) {
        Some(_) => (rate.numerator() as u32, rate.denominator() as u32),
        None => (30, 1),
    }
}

/// One frame's duration in `time_base` ticks, rounded; 0 when unknown.
pub fn frame_ticks(time_base: ff::Rational, frame_rate: ff::Rational) -> i64 {
    let num = i128::from(frame_rate.denominator()) * i128::from(time_base.denominator());
    let den = i128::from(frame_rate.numerator()) * i128::from(time_base.numerator());
    if num <= 0 || den <= 0 {
        return 0;
    }
    ((num + den / 2) / den).min(i128::from(i64::MAX)) as i64
}

/// Writes a rendition's settings over an encode config (the preset's, in
/// use; a zeroed one in tests): profile, GOP without B-frames, rate control,
/// and where SPS/PPS go.
pub fn configure(config: &mut nv::NV_ENC_CONFIG, settings: &EncoderSettings) {
    let profile = &settings.profile;
    let bitrate = profile.bitrate.min(u64::from(u32::MAX)) as u32;
    let gop = gop_frames(profile.gop, settings.frame_rate);

    config.version = nv::NV_ENC_CONFIG_VER;
    config.profileGUID = profile_guid(profile.codec, profile.h264_profile);
    config.gopLength = gop;
    // IPP…: no B-frames, so output order is input order and dts == pts.
    config.frameIntervalP = 1;
    config.frameFieldMode =
        nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME;

    let rc = &mut config.rcParams;
    match profile.quality {
        // libx264 with min = average = max rate = VBV buffer.
        None => {
            rc.rateControlMode = nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR;
            rc.averageBitRate = bitrate;
            rc.maxBitRate = bitrate;
            rc.targetQuality = 0;
        }
        // libx264's CRF capped by the bitrate: constant-quality VBR. With an
        // average of 0 the target quality alone drives the rate.
        Some(quality) => {
            rc.rateControlMode = nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_VBR;
            rc.averageBitRate = 0;
            rc.maxBitRate = bitrate;
            rc.targetQuality = quality.clamp(1, 51) as u8;
        }
    }
    rc.targetQualityLSB = 0;
    rc.vbvBufferSize = bitrate;
    rc.vbvInitialDelay = bitrate;
    // Lookahead delays output behind input; none, and no reordering either.
    rc.set_enableLookahead(0);
    rc.lookaheadDepth = 0;
    rc.set_zeroReorderDelay(1);

    let in_band = u32::from(!settings.global_header);
    match profile.codec {
        VideoCodec::H264 => {
            // SAFETY: the H.264 member of the codec union is the one an H.264
            // session reads; every field of it is valid as whatever the
            // preset (or zeroing) left there.
            let h264 = unsafe { &mut config.encodeCodecConfig.h264Config };
            h264.idrPeriod = gop;
            h264.set_repeatSPSPPS(in_band);
            h264.set_disableSPSPPS(1 - in_band);
            h264.chromaFormatIDC = 1;
            h264.useBFramesAsRef = nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED;
            match profile.h264_profile {
                // Baseline has neither CABAC nor the 8x8 transform; Main no 8x8.
                Some(H264Profile::Baseline) => {
                    h264.entropyCodingMode =
                        nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_CAVLC;
                    h264.adaptiveTransformMode =
                        nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE;
                }
                Some(H264Profile::Main) => {
                    h264.adaptiveTransformMode =
                        nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE;
                }
                _ => {}
            }
        }
        VideoCodec::Hevc => {
            // SAFETY: as above, for the HEVC member.
            let hevc = unsafe { &mut config.encodeCodecConfig.hevcConfig };
            hevc.idrPeriod = gop;
            hevc.set_repeatSPSPPS(in_band);
            hevc.set_disableSPSPPS(1 - in_band);
            hevc.set_chromaFormatIDC(1);
            hevc.set_pixelBitDepthMinus8(0);
            hevc.useBFramesAsRef = nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED;
        }
    }
}

/// NV_ENC_INITIALIZE_PARAMS for a synchronous session with picture-type
/// decision, preset P4 / high-quality tuning and `config`.
fn initialize_params(
    settings: &EncoderSettings,
    config: *mut nv::NV_ENC_CONFIG,
) -> nv::NV_ENC_INITIALIZE_PARAMS {
    // SAFETY: every field is an integer, pointer, GUID, bitfield unit or an
    // enum whose zero is a variant (tuning UNDEFINED, buffer format
    // UNDEFINED, output stats NONE).
    let mut init: nv::NV_ENC_INITIALIZE_PARAMS = unsafe { std::mem::zeroed() };
    let (num, den) = frame_rate_parts(settings.frame_rate);
    init.version = nv::NV_ENC_INITIALIZE_PARAMS_VER;
    init.encodeGUID = codec_guid(settings.profile.codec);
    init.presetGUID = nv::NV_ENC_PRESET_P4_GUID;
    init.tuningInfo = nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY;
    init.encodeWidth = settings.width;
    init.encodeHeight = settings.height;
    init.darWidth = settings.width;
    init.darHeight = settings.height;
    init.maxEncodeWidth = settings.width;
    init.maxEncodeHeight = settings.height;
    init.frameRateNum = num;
    init.frameRateDen = den;
    init.enableEncodeAsync = 0;
    init.enablePTD = 1;
    init.encodeConfig = config;
    init
}

/// Codec parameters describing an encoded stream for the muxer: an H.264 or
/// HEVC video stream of `width` x `height` that decodes to YUV 4:2:0, with
/// `extradata` (Annex-B parameter sets; empty for in-band headers).
pub fn stream_parameters(
    codec: VideoCodec,
    width: u32,
    height: u32,
    bit_rate: u64,
    extradata: &[u8],
) -> ff::codec::Parameters {
    let mut parameters = ff::codec::Parameters::new();
    // SAFETY: `Parameters::new` allocates a fresh AVCodecParameters (checked
    // for null) that `parameters` owns; these are plain fields, and the
    // extradata buffer comes from av_mallocz with the zeroed padding FFmpeg
    // requires, so avcodec_parameters_free (in its Drop) frees it with
    // av_free, as it expects.
    unsafe {
        let p = parameters.as_mut_ptr();
        if p.is_null() {
            return parameters;
        }
        (*p).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
        (*p).codec_id = match codec {
            VideoCodec::H264 => ff::ffi::AVCodecID::AV_CODEC_ID_H264,
            VideoCodec::Hevc => ff::ffi::AVCodecID::AV_CODEC_ID_HEVC,
        };
        (*p).width = width.min(i32::MAX as u32) as i32;
        (*p).height = height.min(i32::MAX as u32) as i32;
        (*p).format = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32;
        (*p).bit_rate = bit_rate.min(i64::MAX as u64) as i64;
        if !extradata.is_empty() && extradata.len() < i32::MAX as usize / 2 {
            let padding = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
            let buffer = ff::ffi::av_mallocz(extradata.len() + padding).cast::<u8>();
            if !buffer.is_null() {
                ptr::copy_nonoverlapping(extradata.as_ptr(), buffer, extradata.len());
                (*p).extradata = buffer;
                (*p).extradata_size = extradata.len() as i32;
            }
        }
    }
    parameters
}

/// An open encode session; destroyed on drop (the CUDA context must be
/// current on the dropping thread).
struct Session {
    fns: &'static Functions,
    handle: Handle,
}

impl Session {
    /// Opens a session on `context`, which must be current on this thread.
    fn open(api: &'static Api, context: cuda::CUcontext) -> Result<Session, NvencError> {
        let fns = &api.fns;
        // SAFETY: integers and pointers, and `deviceType` whose zero is a
        // variant (DIRECTX), overwritten below.
        let mut params: nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS = unsafe { std::mem::zeroed() };
        params.version = nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER;
        params.deviceType = nv::NV_ENC_DEVICE_TYPE::NV_ENC_DEVICE_TYPE_CUDA;
        params.device = context.cast::<c_void>();
        params.apiVersion = nv::NVENCAPI_VERSION;
        let mut handle: Handle = ptr::null_mut();
        // SAFETY: valid parameter struct and out-pointer; `context` is a live
        // CUDA context, current on this thread.
        let status = unsafe { (fns.open_session_ex)(&mut params, &mut handle) };
        if status != SUCCESS {
            if !handle.is_null() {
                // SAFETY: the header requires destroying a session whose
                // creation failed; the handle came from the call above.
                unsafe { (fns.destroy_encoder)(handle) };
            }
            return Err(NvencError::call(
                "nvEncOpenEncodeSessionEx",
                status,
                open_failure_hint(status).to_string(),
            ));
        }
        if handle.is_null() {
            return Err(NvencError::Invalid(
                "nvEncOpenEncodeSessionEx succeeded without a session".into(),
            ));
        }
        Ok(Session { fns, handle })
    }

    /// The API's description of the session's last error, if any.
    fn last_error(&self) -> String {
        if self.handle.is_null() {
            return String::new();
        }
        // SAFETY: a live session handle; the API returns null or a
        // NUL-terminated string it owns, copied here at once.
        unsafe {
            let text = (self.fns.get_last_error_string)(self.handle);
            if text.is_null() {
                String::new()
            } else {
                CStr::from_ptr(text).to_string_lossy().trim().to_string()
            }
        }
    }

    fn check(&self, call: &'static str, status: u32) -> Result<(), NvencError> {
        if status == SUCCESS {
            Ok(())
        } else {
            Err(NvencError::call(call, status, self.last_error()))
        }
    }

    /// Which of H.264 and HEVC the session's GPU encodes.
    fn codecs(&self) -> Result<Vec<VideoCodec>, NvencError> {
        let mut count = 0u32;
        // SAFETY: live session, valid out-pointer.
        let status = unsafe { (self.fns.get_encode_guid_count)(self.handle, &mut count) };
        self.check("nvEncGetEncodeGUIDCount", status)?;
        let mut guids = vec![nv::GUID::default(); count as usize];
        let mut written = 0u32;
        // SAFETY: `guids` holds `count` GUIDs, the size passed.
        let status = unsafe {
            (self.fns.get_encode_guids)(self.handle, guids.as_mut_ptr(), count, &mut written)
        };
        self.check("nvEncGetEncodeGUIDs", status)?;
        guids.truncate(written.min(count) as usize);
        Ok([VideoCodec::H264, VideoCodec::Hevc]
            .into_iter()
            .filter(|codec| guids.contains(&codec_guid(*codec)))
            .collect())
    }

    /// Destroys the session now (idempotent).
    fn close(&mut self) {
        if self.handle.is_null() {
            return;
        }
        // SAFETY: a live session handle, destroyed once and then forgotten.
        let status = unsafe { (self.fns.destroy_encoder)(self.handle) };
        if status != SUCCESS {
            tracing::warn!(status = %status_name(status), "nvEncDestroyEncoder failed");
        }
        self.handle = ptr::null_mut();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// What an open failure most likely means.
fn open_failure_hint(status: u32) -> &'static str {
    use nv::NVENCSTATUS::*;
    match status {
        s if s == NV_ENC_ERR_NO_ENCODE_DEVICE as u32
            || s == NV_ENC_ERR_UNSUPPORTED_DEVICE as u32
            || s == NV_ENC_ERR_INVALID_DEVICE as u32 =>
        {
            "this GPU has no NVENC engine (H100, H200 and A100 have none)"
        }
        s if s == NV_ENC_ERR_OUT_OF_MEMORY as u32
            || s == NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY as u32 =>
        {
            "the GPU's limit of concurrent NVENC sessions may be reached"
        }
        _ => "",
    }
}

/// Opens a throwaway session on `device` and lists which of H.264 and HEVC
/// its NVENC encodes. Fails on GPUs without NVENC (H100, H200: the session
/// does not open) and when the library is absent or too old.
pub fn probe_codecs(device: &GpuDevice) -> Result<Vec<VideoCodec>, NvencError> {
    let api = api()?;
    guarded(|| {
        bind(device)?;
        Session::open(api, device.context().cu_ctx())?.codecs()
    })
}

/// One registered NV12 input buffer with the bitstream buffer its frame's
/// output goes to. Null / zero members are not (yet) created.
struct Slot {
    /// Device memory: `height` luma rows, then `height / 2` chroma rows.
    memory: cuda::CUdeviceptr,
    pitch: usize,
    registered: nv::NV_ENC_REGISTERED_PTR,
    bitstream: nv::NV_ENC_OUTPUT_PTR,
    /// The mapped input while a frame from this slot is being encoded.
    mapped: nv::NV_ENC_INPUT_PTR,
}

/// NVENC H.264 / HEVC encoder of NV12 device frames (see the module docs).
pub struct NvencEncoder {
    session: Session,
    slots: Vec<Slot>,
    /// Slots whose frames were submitted and whose output is not yet read,
    /// oldest first.
    pending: VecDeque<usize>,
    codec: VideoCodec,
    width: u32,
    height: u32,
    bit_rate: u64,
    /// Annex-B SPS/PPS (VPS) for out-of-band headers; empty for in-band.
    extradata: Vec<u8>,
    frame_ticks: i64,
    submitted: u64,
    finished: bool,
    /// Last, so the CUDA context outlives everything above when dropped.
    device: Arc<GpuDevice>,
}

// SAFETY: the session handle, NVENC buffers and device pointers are only used
// through `&mut self` (one thread at a time), each call path binding the CUDA
// context to the calling thread first; NVENC sessions and CUDA contexts may
// be used from any thread as long as calls on one session do not overlap.
unsafe impl Send for NvencEncoder {}

impl NvencEncoder {
    /// Opens and initialises a session for one rendition on `device`.
    pub fn new(device: Arc<GpuDevice>, settings: &EncoderSettings) -> Result<Self, VideoError> {
        guarded(|| Self::open(device, settings)).map_err(VideoError::gpu("NVENC setup"))
    }

    fn open(device: Arc<GpuDevice>, settings: &EncoderSettings) -> Result<Self, NvencError> {
        let (width, height) = (settings.width, settings.height);
        if width < 2 || height < 2 || width % 2 != 0 || height % 2 != 0 {
            return Err(NvencError::Invalid(format!(
                "{width}x{height}: NV12 encoding needs even sizes"
            )));
        }
        let codec = settings.profile.codec;
        // What the engine probe found once for this GPU.
        if !device.engines().encodes(codec) {
            return Err(NvencError::Invalid(format!(
                "this GPU's NVENC does not encode {}",
                codec.name()
            )));
        }
        let api = api()?;
        bind(&device)?;
        let session = Session::open(api, device.context().cu_ctx())?;

        let mut preset = preset_config();
        // SAFETY: live session; `preset` is zeroed with both versions set, as
        // the call requires.
        let status = unsafe {
            (api.fns.get_preset_config_ex)(
                session.handle,
                codec_guid(codec),
                nv::NV_ENC_PRESET_P4_GUID,
                nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY,
                &mut preset,
            )
        };
        session.check("nvEncGetEncodePresetConfigEx", status)?;
        configure(&mut preset.presetCfg, settings);
        let mut init = initialize_params(settings, &mut preset.presetCfg);
        // SAFETY: live session; `init` and the config it points to (in
        // `preset`, alive across the call) are fully set up.
        let status = unsafe { (api.fns.initialize_encoder)(session.handle, &mut init) };
        session.check("nvEncInitializeEncoder", status)?;

        // From here on Drop releases whatever exists.
        let mut encoder = NvencEncoder {
            session,
            slots: Vec::new(),
            pending: VecDeque::new(),
            codec,
            width,
            height,
            bit_rate: settings.profile.bitrate,
            extradata: Vec::new(),
            frame_ticks: frame_ticks(settings.time_base, settings.frame_rate),
            submitted: 0,
            finished: false,
            device,
        };
        if settings.global_header {
            encoder.extradata = encoder.sequence_header()?;
        }
        encoder.add_slot()?;
        tracing::debug!(
            codec = codec.name(),
            width,
            height,
            bitrate = settings.profile.bitrate,
            gop = gop_frames(settings.profile.gop, settings.frame_rate),
            quality = ?settings.profile.quality,
            global_header = settings.global_header,
            pitch = encoder.slots[0].pitch,
            "NVENC session open"
        );
        Ok(encoder)
    }

    /// The sequence (and picture, video) parameter sets as Annex-B bytes.
    fn sequence_header(&self) -> Result<Vec<u8>, NvencError> {
        let mut buffer = vec![0u8; SEQUENCE_HEADER_CAPACITY];
        let mut size = 0u32;
        // SAFETY: integers and pointers only.
        let mut payload: nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD = unsafe { std::mem::zeroed() };
        payload.version = nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD_VER;
        payload.inBufferSize = buffer.len() as u32;
        payload.spsppsBuffer = buffer.as_mut_ptr().cast::<c_void>();
        payload.outSPSPPSPayloadSize = &mut size;
        // SAFETY: an initialised session; `buffer` and `size` outlive the call
        // and the buffer's size is the one passed.
        let status =
            unsafe { (self.session.fns.get_sequence_params)(self.session.handle, &mut payload) };
        self.session.check("nvEncGetSequenceParams", status)?;
        buffer.truncate((size as usize).min(SEQUENCE_HEADER_CAPACITY));
        if buffer.is_empty() {
            return Err(NvencError::Invalid(
                "nvEncGetSequenceParams returned no parameter sets".into(),
            ));
        }
        Ok(buffer)
    }

    /// Allocates, registers and pairs with a bitstream buffer one more input
    /// slot. The context must be current.
    fn add_slot(&mut self) -> Result<usize, NvencError> {
        let (width, height) = (self.width as usize, self.height as usize);
        let mut memory: cuda::CUdeviceptr = 0;
        let mut pitch = 0usize;
        // SAFETY: valid out-pointers; the encoder's context is current.
        // Luma rows then chroma rows, pitched as the SDK's samples allocate.
        unsafe {
            cuda::cuMemAllocPitch_v2(&mut memory, &mut pitch, width, height + height / 2, 16)
        }
        .result()
        .map_err(cuda_error("cuMemAllocPitch"))?;
        self.slots.push(Slot {
            memory,
            pitch,
            registered: ptr::null_mut(),
            bitstream: ptr::null_mut(),
            mapped: ptr::null_mut(),
        });
        let index = self.slots.len() - 1;
        if pitch < width || pitch % 4 != 0 || pitch > u32::MAX as usize {
            return Err(NvencError::Invalid(format!(
                "cuMemAllocPitch gave a pitch of {pitch} bytes for {width}-byte rows"
            )));
        }

        // SAFETY: integers, pointers and enums whose zero is a variant
        // (resource type DIRECTX, buffer format UNDEFINED, usage INPUT_IMAGE),
        // all set below.
        let mut register: nv::NV_ENC_REGISTER_RESOURCE = unsafe { std::mem::zeroed() };
        register.version = nv::NV_ENC_REGISTER_RESOURCE_VER;
        register.resourceType =
            nv::NV_ENC_INPUT_RESOURCE_TYPE::NV_ENC_INPUT_RESOURCE_TYPE_CUDADEVICEPTR;
        register.width = self.width;
        register.height = self.height;
        register.pitch = pitch as u32;
        register.resourceToRegister = memory as usize as *mut c_void;
        register.bufferFormat = nv::NV_ENC_BUFFER_FORMAT::NV_ENC_BUFFER_FORMAT_NV12;
        register.bufferUsage = nv::NV_ENC_BUFFER_USAGE::NV_ENC_INPUT_IMAGE;
        // SAFETY: an initialised session; the device memory holds a whole
        // NV12 picture at this pitch and stays allocated until unregistered.
        let status =
            unsafe { (self.session.fns.register_resource)(self.session.handle, &mut register) };
        self.session.check("nvEncRegisterResource", status)?;
        self.slots[index].registered = register.registeredResource;

        // SAFETY: integers, pointers and a memory-heap enum whose zero is a
        // variant (AUTOSELECT; deprecated, left 0).
        let mut create: nv::NV_ENC_CREATE_BITSTREAM_BUFFER = unsafe { std::mem::zeroed() };
        create.version = nv::NV_ENC_CREATE_BITSTREAM_BUFFER_VER;
        // SAFETY: an initialised session and a valid parameter struct.
        let status =
            unsafe { (self.session.fns.create_bitstream_buffer)(self.session.handle, &mut create) };
        self.session.check("nvEncCreateBitstreamBuffer", status)?;
        self.slots[index].bitstream = create.bitstreamBuffer;
        Ok(index)
    }

    /// A slot no pending frame uses, created when all are busy.
    fn free_slot(&mut self) -> Result<usize, NvencError> {
        if let Some(index) = (0..self.slots.len()).find(|i| !self.pending.contains(i)) {
            return Ok(index);
        }
        if self.slots.len() >= MAX_SLOTS {
            return Err(NvencError::Invalid(format!(
                "NVENC holds {} frames back without output",
                self.pending.len()
            )));
        }
        tracing::debug!(
            slots = self.slots.len() + 1,
            "NVENC held a frame back: adding an input buffer"
        );
        self.add_slot()
    }

    /// Checks that a device frame is what this session encodes.
    fn check_frame(&self, gpu: &super::device::GpuFrame) -> Result<(), NvencError> {
        let frame = &gpu.frame;
        if frame.format != PixelFormat::Nv12 {
            return Err(NvencError::Invalid(format!(
                "NVENC encodes 8-bit NV12 here, not {}",
                frame.format.name()
            )));
        }
        if frame.width != self.width as usize || frame.height != self.height as usize {
            return Err(NvencError::Invalid(format!(
                "a {}x{} frame reached a {}x{} NVENC session",
                frame.width, frame.height, self.width, self.height
            )));
        }
        if gpu.device.context().cu_ctx() != self.device.context().cu_ctx() {
            return Err(NvencError::Invalid(
                "a frame from another GPU reached this NVENC session".into(),
            ));
        }
        let (width, height) = (frame.width, frame.height);
        let fits = |len: usize, pitch: usize, rows: usize| {
            pitch >= width && len >= pitch * (rows - 1) + width
        };
        if !fits(frame.luma().len(), frame.luma_pitch(), height)
            || !fits(frame.chroma().len(), frame.chroma_pitch(), height / 2)
        {
            return Err(NvencError::Invalid(format!(
                "{width}x{height} NV12 frame: planes or pitches too small"
            )));
        }
        Ok(())
    }

    /// Copies a frame's planes into a slot's buffer on the GPU's stream and
    /// waits for the copies.
    fn upload(&self, slot: usize, frame: &DeviceFrame) -> Result<(), NvencError> {
        let stream = self.device.stream();
        let slot = &self.slots[slot];
        let (luma, _luma_read) = frame.luma().device_ptr(stream);
        let (chroma, _chroma_read) = frame.chroma().device_ptr(stream);
        let chroma_offset = (slot.pitch * frame.height) as cuda::CUdeviceptr;
        let planes = [
            (luma, frame.luma_pitch(), slot.memory, frame.height),
            (
                chroma,
                frame.chroma_pitch(),
                slot.memory + chroma_offset,
                frame.height / 2,
            ),
        ];
        for (src, src_pitch, dst, rows) in planes {
            // SAFETY: both regions are device memory of this context, large
            // enough for `rows` rows of `width` bytes at their pitches
            // (checked by `check_frame`; the slot was allocated for this
            // size); the context is current and the frame outlives the
            // synchronisation below.
            unsafe {
                super::device::copy_device_2d(
                    stream,
                    (src, src_pitch),
                    (dst, slot.pitch),
                    frame.width,
                    rows,
                )
            }
            .map_err(cuda_error("cuMemcpy2DAsync"))?;
        }
        stream
            .synchronize()
            .map_err(cuda_error("cuStreamSynchronize"))
    }

    fn map(&mut self, slot: usize) -> Result<(), NvencError> {
        // SAFETY: integers, pointers and a buffer-format enum whose zero is
        // a variant (UNDEFINED).
        let mut map: nv::NV_ENC_MAP_INPUT_RESOURCE = unsafe { std::mem::zeroed() };
        map.version = nv::NV_ENC_MAP_INPUT_RESOURCE_VER;
        map.registeredResource = self.slots[slot].registered;
        // SAFETY: an initialised session and a resource it registered.
        let status =
            unsafe { (self.session.fns.map_input_resource)(self.session.handle, &mut map) };
        self.session.check("nvEncMapInputResource", status)?;
        self.slots[slot].mapped = map.mappedResource;
        Ok(())
    }

    fn unmap(&mut self, slot: usize) -> Result<(), NvencError> {
        let mapped = std::mem::replace(&mut self.slots[slot].mapped, ptr::null_mut());
        if mapped.is_null() {
            return Ok(());
        }
        // SAFETY: a resource this session mapped and has not unmapped.
        let status =
            unsafe { (self.session.fns.unmap_input_resource)(self.session.handle, mapped) };
        self.session.check("nvEncUnmapInputResource", status)
    }

    fn encode_frame(
        &mut self,
        frame: &Frame,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), NvencError> {
        let gpu = match &frame.data {
            FrameData::Device(gpu) => gpu,
            FrameData::Host(_) => {
                return Err(NvencError::Invalid(
                    "a host frame reached the NVENC encoder".into(),
                ))
            }
        };
        if self.finished {
            return Err(NvencError::Invalid(
                "a frame reached the NVENC encoder after the end of the stream".into(),
            ));
        }
        self.check_frame(gpu)?;
        bind(&self.device)?;
        let slot = self.free_slot()?;
        self.upload(slot, &gpu.frame)?;
        self.map(slot)?;
        let mut pic = picture_params(
            self.slots[slot].mapped,
            self.slots[slot].bitstream,
            self.width,
            self.height,
            self.slots[slot].pitch as u32,
            frame.pts,
            self.frame_ticks,
        );
        // SAFETY: an initialised session; the input is mapped and the
        // bitstream buffer is this session's and not locked.
        let status = unsafe { (self.session.fns.encode_picture)(self.session.handle, &mut pic) };
        match status {
            SUCCESS => {
                self.submitted += 1;
                self.pending.push_back(slot);
                self.drain(emit)
            }
            // Buffered for later output (B-frames or lookahead, neither of
            // which is configured): its output comes with a later SUCCESS.
            NEED_MORE_INPUT => {
                self.submitted += 1;
                self.pending.push_back(slot);
                tracing::debug!(pending = self.pending.len(), "NVENC needs more input");
                Ok(())
            }
            _ => {
                let error =
                    NvencError::call("nvEncEncodePicture", status, self.session.last_error());
                let _ = self.unmap(slot);
                Err(error)
            }
        }
    }

    /// Sends end-of-stream and emits whatever output is still pending.
    fn flush(&mut self, emit: &mut dyn FnMut(ff::Packet)) -> Result<(), NvencError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if self.submitted == 0 {
            return Ok(());
        }
        bind(&self.device)?;
        let mut pic = eos_params();
        // SAFETY: an initialised session; an EOS picture carries no buffers.
        let status = unsafe { (self.session.fns.encode_picture)(self.session.handle, &mut pic) };
        match status {
            SUCCESS => self.drain(emit),
            // Nothing held back: nothing to read. (With frames held back the
            // outputs may not be locked after this status, so that is an
            // error below.)
            NEED_MORE_INPUT if self.pending.is_empty() => Ok(()),
            _ => Err(NvencError::call(
                "nvEncEncodePicture (end of stream)",
                status,
                self.session.last_error(),
            )),
        }
    }

    /// Reads every pending frame's output, in submission order.
    fn drain(&mut self, emit: &mut dyn FnMut(ff::Packet)) -> Result<(), NvencError> {
        while let Some(slot) = self.pending.pop_front() {
            let packet = self.read_output(slot);
            let unmapped = self.unmap(slot);
            let packet = packet?;
            unmapped?;
            if let Some(packet) = packet {
                emit(packet);
            }
        }
        Ok(())
    }

    /// Locks a slot's bitstream (waiting for the encode), copies it into a
    /// packet and unlocks it. `None` for an empty output.
    fn read_output(&mut self, slot: usize) -> Result<Option<ff::Packet>, NvencError> {
        let bitstream = self.slots[slot].bitstream;
        let mut lock = lock_params(bitstream);
        // SAFETY: an initialised session and its bitstream buffer, which was
        // passed to a successful nvEncEncodePicture.
        let status = unsafe { (self.session.fns.lock_bitstream)(self.session.handle, &mut lock) };
        self.session.check("nvEncLockBitstream", status)?;
        let size = lock.bitstreamSizeInBytes as usize;
        let data = lock.bitstreamBufferPtr.cast::<u8>();
        let packet = (!data.is_null() && size > 0).then(|| {
            // SAFETY: while locked, the buffer holds `size` bytes of
            // bitstream at `data`; they are copied before the unlock below.
            ff::Packet::copy(unsafe { std::slice::from_raw_parts(data, size) })
        });
        // SAFETY: a 4-byte C enum field the driver wrote; read as the integer
        // it is, so an unexpected value cannot be an invalid Rust enum.
        let picture_type = unsafe { ptr::addr_of!(lock.pictureType).cast::<u32>().read() };
        let pts = lock.outputTimeStamp as i64;
        // SAFETY: the buffer was locked above by this session.
        let status = unsafe { (self.session.fns.unlock_bitstream)(self.session.handle, bitstream) };
        self.session.check("nvEncUnlockBitstream", status)?;

        let Some(mut packet) = packet else {
            tracing::debug!(pts, "NVENC produced an empty picture");
            return Ok(None);
        };
        packet.set_pts(Some(pts));
        // No B-frames: decode order is presentation order.
        packet.set_dts(Some(pts));
        if self.frame_ticks > 0 {
            packet.set_duration(self.frame_ticks);
        }
        if is_keyframe(picture_type) {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        Ok(Some(packet))
    }
}

/// Whether an NV_ENC_PIC_TYPE value is a random-access point: an IDR only
/// (pictures after a plain I may reference ones before it), as FFmpeg's
/// nvenc flags packets.
fn is_keyframe(picture_type: u32) -> bool {
    picture_type == nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_IDR as u32
}

impl Encoder for NvencEncoder {
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError> {
        match frame {
            Some(frame) => self.encode_frame(frame, emit),
            None => self.flush(emit),
        }
        .map_err(VideoError::gpu("NVENC encode"))
    }

    fn parameters(&self) -> ff::codec::Parameters {
        stream_parameters(
            self.codec,
            self.width,
            self.height,
            self.bit_rate,
            &self.extradata,
        )
    }
}

impl Drop for NvencEncoder {
    fn drop(&mut self) {
        if let Err(e) = super::device::bind(self.device.context()) {
            tracing::warn!(error = %e, "NVENC teardown: the CUDA context could not be bound");
        }
        let fns = self.session.fns;
        let handle = self.session.handle;
        for slot in &mut self.slots {
            // SAFETY: each handle was created by this session and is released
            // once (nulled after); the session is still open.
            unsafe {
                if !handle.is_null() {
                    if !slot.mapped.is_null() {
                        (fns.unmap_input_resource)(handle, slot.mapped);
                    }
                    if !slot.registered.is_null() {
                        (fns.unregister_resource)(handle, slot.registered);
                    }
                    if !slot.bitstream.is_null() {
                        (fns.destroy_bitstream_buffer)(handle, slot.bitstream);
                    }
                }
            }
            slot.mapped = ptr::null_mut();
            slot.registered = ptr::null_mut();
            slot.bitstream = ptr::null_mut();
        }
        self.session.close();
        for slot in &mut self.slots {
            if slot.memory != 0 {
                // SAFETY: memory from cuMemAllocPitch in this context (which
                // is current), no longer registered with NVENC, freed once.
                let result = unsafe { cuda::cuMemFree_v2(slot.memory) };
                if result != cuda::CUresult::CUDA_SUCCESS {
                    tracing::warn!(?result, "NVENC teardown: cuMemFree failed");
                }
                slot.memory = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::container::{self, DemuxLimits, MuxTrack};
    use crate::video::cpu::{CpuDecoder, CpuEncoder};
    use crate::video::{Decoder, VideoProfile};

    fn settings(codec: VideoCodec, global_header: bool) -> EncoderSettings {
        EncoderSettings {
            profile: VideoProfile {
                name: "test".into(),
                width: 320,
                height: 180,
                bitrate: 600_000,
                fps: 30,
                fps_den: 1,
                codec,
                h264_profile: None,
                gop: Gop::Default,
                quality: None,
                format: None,
            },
            width: 320,
            height: 180,
            time_base: ff::Rational::new(1, 90_000),
            frame_rate: ff::Rational::new(30, 1),
            global_header,
            preset: "ultrafast".into(),
            threads: 1,
        }
    }

    fn h264(config: &nv::NV_ENC_CONFIG) -> &nv::NV_ENC_CONFIG_H264 {
        // SAFETY: test configs for H.264 sessions; the union is plain data.
        unsafe { &config.encodeCodecConfig.h264Config }
    }

    fn hevc(config: &nv::NV_ENC_CONFIG) -> &nv::NV_ENC_CONFIG_HEVC {
        // SAFETY: as above, for HEVC.
        unsafe { &config.encodeCodecConfig.hevcConfig }
    }

    #[test]
    fn no_library_here_means_false_not_a_panic() {
        // This machine has no NVIDIA driver; where one is installed the
        // answer follows the library, and loading never panics either way.
        let loads = library_loads();
        match api() {
            Ok(_) => assert!(loads),
            Err(e) => {
                if !loads {
                    assert!(matches!(e, NvencError::Library(_)), "{e}");
                    assert!(e.to_string().contains("libnvidia-encode"), "{e}");
                }
            }
        }
    }

    #[test]
    fn api_version_check() {
        assert_eq!(HEADER_API_VERSION, (12 << 4) | 1);
        let header = HEADER_API_VERSION;
        for ok in [(12 << 4) | 1, (12 << 4) | 2, 13 << 4, (13 << 4) | 15] {
            assert!(check_api_version(ok, header).is_ok(), "{ok:#x}");
        }
        for old in [0, (11 << 4) | 1, 12 << 4, (11 << 4) | 15] {
            let err = check_api_version(old, header).unwrap_err();
            match &err {
                NvencError::DriverTooOld { driver, required } => {
                    assert_eq!(*driver, (old >> 4, old & 0xf));
                    assert_eq!(*required, (12, 1));
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("needs 12.1"), "{err}");
        }
        let err = check_api_version(12 << 4, header).unwrap_err();
        assert!(
            err.to_string().contains("at most, lpworker needs 12.1"),
            "{err}"
        );
        assert!(err.to_string().contains("12.0"), "{err}");
    }

    #[test]
    fn status_names_follow_the_bindings() {
        for (value, status) in STATUSES.iter().enumerate() {
            assert_eq!(*status as u32, value as u32, "{status:?}");
            assert_eq!(status_name(value as u32), format!("{status:?}"));
        }
        assert_eq!(status_name(0), "NV_ENC_SUCCESS");
        assert_eq!(status_name(1), "NV_ENC_ERR_NO_ENCODE_DEVICE");
        assert_eq!(status_name(2), "NV_ENC_ERR_UNSUPPORTED_DEVICE");
        assert_eq!(status_name(17), "NV_ENC_ERR_NEED_MORE_INPUT");
        assert_eq!(status_name(26), "NV_ENC_ERR_NEED_MORE_OUTPUT");
        assert_eq!(status_name(27), "NVENCSTATUS 27");
        assert_eq!(status_name(u32::MAX), format!("NVENCSTATUS {}", u32::MAX));

        let err = NvencError::call("nvEncOpenEncodeSessionEx", 1, open_failure_hint(1).into());
        assert_eq!(err.status(), Some(1));
        assert_eq!(
            err.to_string(),
            "nvEncOpenEncodeSessionEx failed with NV_ENC_ERR_NO_ENCODE_DEVICE: \
             this GPU has no NVENC engine (H100, H200 and A100 have none)"
        );
        let err = NvencError::call("nvEncLockBitstream", 20, String::new());
        assert_eq!(
            err.to_string(),
            "nvEncLockBitstream failed with NV_ENC_ERR_GENERIC"
        );
        assert_eq!(open_failure_hint(8), "");
        let video: VideoError = VideoError::gpu("NVENC setup")(err);
        assert_eq!(video.kind(), "gpu");
        assert!(!video.is_bad_input());
    }

    #[test]
    fn profile_guids() {
        use H264Profile::*;
        let h264 = |p| profile_guid(VideoCodec::H264, p);
        assert_eq!(h264(Some(Baseline)), nv::NV_ENC_H264_PROFILE_BASELINE_GUID);
        assert_eq!(h264(Some(Main)), nv::NV_ENC_H264_PROFILE_MAIN_GUID);
        assert_eq!(h264(Some(High)), nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!(
            h264(Some(ConstrainedHigh)),
            nv::NV_ENC_H264_PROFILE_HIGH_GUID
        );
        assert_eq!(h264(None), nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!(
            profile_guid(VideoCodec::Hevc, Some(High)),
            nv::NV_ENC_HEVC_PROFILE_MAIN_GUID
        );
        assert_eq!(codec_guid(VideoCodec::H264), nv::NV_ENC_CODEC_H264_GUID);
        assert_eq!(codec_guid(VideoCodec::Hevc), nv::NV_ENC_CODEC_HEVC_GUID);
        // The GUIDs as the header spells them.
        assert_eq!(nv::NV_ENC_H264_PROFILE_HIGH_GUID.Data1, 0xe7cbc309);
        assert_eq!(nv::NV_ENC_PRESET_P4_GUID.Data1, 0x90a7b826);
    }

    #[test]
    fn gop_and_timing() {
        let fps30 = ff::Rational::new(30, 1);
        let ntsc = ff::Rational::new(30000, 1001);
        assert_eq!(gop_frames(Gop::Default, fps30), 250);
        assert_eq!(gop_frames(Gop::Intra, fps30), 1);
        assert_eq!(gop_frames(Gop::Seconds(2.0), fps30), 60);
        assert_eq!(gop_frames(Gop::Seconds(2.0), ntsc), 59);
        assert_eq!(gop_frames(Gop::Seconds(0.01), fps30), 1);
        assert_eq!(gop_frames(Gop::Seconds(2.0), ff::Rational::new(0, 1)), 250);
        assert_eq!(frame_rate_parts(ntsc), (30000, 1001));
        assert_eq!(frame_rate_parts(ff::Rational::new(0, 0)), (30, 1));
        assert_eq!(frame_ticks(ff::Rational::new(1, 90_000), fps30), 3000);
        assert_eq!(frame_ticks(ff::Rational::new(1, 90_000), ntsc), 3003);
        assert_eq!(frame_ticks(ff::Rational::new(1, 1000), ntsc), 33);
        assert_eq!(
            frame_ticks(ff::Rational::new(1, 90_000), ff::Rational::new(0, 1)),
            0
        );
        assert!(is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_IDR as u32));
        assert!(!is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_I as u32));
        assert!(!is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_P as u32));
        assert!(!is_keyframe(
            nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_UNKNOWN as u32
        ));
    }

    #[test]
    fn h264_config_mirrors_the_cpu_encoder() {
        let mut s = settings(VideoCodec::H264, false);
        s.profile.h264_profile = Some(H264Profile::Baseline);
        s.profile.gop = Gop::Seconds(2.0);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.version, nv::NV_ENC_CONFIG_VER);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_BASELINE_GUID);
        assert_eq!(config.gopLength, 60);
        assert_eq!(config.frameIntervalP, 1);
        assert_eq!(
            config.frameFieldMode,
            nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME
        );
        let rc = &config.rcParams;
        assert_eq!(
            rc.rateControlMode,
            nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR
        );
        assert_eq!(
            (
                rc.averageBitRate,
                rc.maxBitRate,
                rc.vbvBufferSize,
                rc.vbvInitialDelay
            ),
            (600_000, 600_000, 600_000, 600_000)
        );
        assert_eq!((rc.enableLookahead(), rc.lookaheadDepth), (0, 0));
        assert_eq!(rc.zeroReorderDelay(), 1);
        assert_eq!(rc.targetQuality, 0);
        let h = h264(&config);
        assert_eq!(h.idrPeriod, 60);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (1, 0));
        assert_eq!(h.chromaFormatIDC, 1);
        assert_eq!(
            h.entropyCodingMode,
            nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_CAVLC
        );
        assert_eq!(
            h.adaptiveTransformMode,
            nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE
        );
        assert_eq!(
            h.useBFramesAsRef,
            nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED
        );

        // MP4: headers out of band only; intra-only; High keeps the preset's
        // entropy coding and transform.
        let mut s = settings(VideoCodec::H264, true);
        s.profile.h264_profile = Some(H264Profile::ConstrainedHigh);
        s.profile.gop = Gop::Intra;
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!((config.gopLength, config.frameIntervalP), (1, 1));
        let h = h264(&config);
        assert_eq!(h.idrPeriod, 1);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (0, 1));
        assert_eq!(
            h.entropyCodingMode,
            nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_AUTOSELECT
        );

        // Main: no 8x8 transform; default GOP is x264's 250.
        let mut s = settings(VideoCodec::H264, false);
        s.profile.h264_profile = Some(H264Profile::Main);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_MAIN_GUID);
        assert_eq!((config.gopLength, h264(&config).idrPeriod), (250, 250));
        assert_eq!(
            h264(&config).adaptiveTransformMode,
            nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE
        );
    }

    #[test]
    fn quality_selects_constant_quality_vbr() {
        let mut s = settings(VideoCodec::H264, false);
        s.profile.quality = Some(23);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        let rc = &config.rcParams;
        assert_eq!(
            rc.rateControlMode,
            nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_VBR
        );
        assert_eq!((rc.targetQuality, rc.targetQualityLSB), (23, 0));
        assert_eq!(
            (rc.averageBitRate, rc.maxBitRate, rc.vbvBufferSize),
            (0, 600_000, 600_000)
        );
        s.profile.quality = Some(80);
        s.profile.bitrate = 0;
        configure(&mut config, &s);
        let rc = &config.rcParams;
        assert_eq!(rc.targetQuality, 51);
        assert_eq!(
            (rc.maxBitRate, rc.vbvBufferSize, rc.vbvInitialDelay),
            (0, 0, 0)
        );
        // An absurd bitrate saturates rather than wrapping.
        s.profile.quality = None;
        s.profile.bitrate = 10_000_000_000;
        configure(&mut config, &s);
        assert_eq!(config.rcParams.averageBitRate, u32::MAX);
    }

    #[test]
    fn hevc_config() {
        let mut s = settings(VideoCodec::Hevc, false);
        s.profile.gop = Gop::Seconds(1.0);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_HEVC_PROFILE_MAIN_GUID);
        assert_eq!((config.gopLength, config.frameIntervalP), (30, 1));
        let h = hevc(&config);
        assert_eq!(h.idrPeriod, 30);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (1, 0));
        assert_eq!((h.chromaFormatIDC(), h.pixelBitDepthMinus8()), (1, 0));
        let s = settings(VideoCodec::Hevc, true);
        configure(&mut config, &s);
        assert_eq!(
            (hevc(&config).repeatSPSPPS(), hevc(&config).disableSPSPPS()),
            (0, 1)
        );
    }

    #[test]
    fn parameter_structs() {
        // Building every struct exercises the zero-initialisation (which
        // would panic for an enum field left at an invalid zero).
        let preset = preset_config();
        assert_eq!(preset.version, nv::NV_ENC_PRESET_CONFIG_VER);
        assert_eq!(preset.presetCfg.version, nv::NV_ENC_CONFIG_VER);

        let s = settings(VideoCodec::Hevc, false);
        let mut config = zeroed_config();
        let init = initialize_params(&s, &mut config);
        assert_eq!(init.version, nv::NV_ENC_INITIALIZE_PARAMS_VER);
        assert_eq!(init.encodeGUID, nv::NV_ENC_CODEC_HEVC_GUID);
        assert_eq!(init.presetGUID, nv::NV_ENC_PRESET_P4_GUID);
        assert_eq!(
            init.tuningInfo,
            nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY
        );
        assert_eq!((init.encodeWidth, init.encodeHeight), (320, 180));
        assert_eq!((init.darWidth, init.darHeight), (320, 180));
        assert_eq!((init.frameRateNum, init.frameRateDen), (30, 1));
        assert_eq!((init.enableEncodeAsync, init.enablePTD), (0, 1));
        assert_eq!(init.encodeConfig, &mut config as *mut _);

        let pic = picture_params(ptr::null_mut(), ptr::null_mut(), 320, 180, 512, -5, 3000);
        assert_eq!(pic.version, nv::NV_ENC_PIC_PARAMS_VER);
        assert_eq!(
            (pic.inputWidth, pic.inputHeight, pic.inputPitch),
            (320, 180, 512)
        );
        assert_eq!(pic.inputTimeStamp as i64, -5);
        assert_eq!(pic.inputDuration, 3000);
        assert_eq!(pic.encodePicFlags, 0);
        assert_eq!(
            pic.bufferFmt,
            nv::NV_ENC_BUFFER_FORMAT::NV_ENC_BUFFER_FORMAT_NV12
        );
        assert_eq!(
            pic.pictureStruct,
            nv::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME
        );
        let eos = eos_params();
        assert_eq!(
            eos.encodePicFlags,
            nv::NV_ENC_PIC_FLAGS::NV_ENC_PIC_FLAG_EOS as u32
        );
        assert!(eos.inputBuffer.is_null() && eos.outputBitstream.is_null());
        let lock = lock_params(ptr::null_mut());
        assert_eq!(lock.version, nv::NV_ENC_LOCK_BITSTREAM_VER);
        assert_eq!(lock.doNotWait(), 0);
    }

    // ---- NVENC-shaped output through the muxer, without a GPU ----

    /// A moving gradient, so that the encoder has something to code.
    fn picture(width: u32, height: u32, index: usize) -> ff::frame::Video {
        let mut video = ff::frame::Video::new(ff::format::Pixel::YUV420P, width, height);
        for plane in 0..3 {
            let stride = video.stride(plane);
            let (w, h) = if plane == 0 {
                (width as usize, height as usize)
            } else {
                (width as usize / 2, height as usize / 2)
            };
            let data = video.data_mut(plane);
            for y in 0..h {
                for x in 0..w {
                    data[y * stride + x] = ((x + 2 * y + 3 * index + 40 * plane) % 256) as u8;
                }
            }
        }
        video
    }

    /// Splits Annex-B bytes into NAL units (start codes removed).
    fn nal_units(data: &[u8]) -> Vec<&[u8]> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
                // A 4-byte start code's leading zero belongs to it.
                while end > start && data[end - 1] == 0 {
                    end -= 1;
                }
                &data[start..end]
            })
            .collect()
    }

    fn nal_type(codec: VideoCodec, nal: &[u8]) -> u8 {
        match codec {
            VideoCodec::H264 => nal[0] & 0x1f,
            VideoCodec::Hevc => (nal[0] >> 1) & 0x3f,
        }
    }

    fn is_parameter_set(codec: VideoCodec, nal: &[u8]) -> bool {
        match codec {
            VideoCodec::H264 => matches!(nal_type(codec, nal), 7 | 8),
            VideoCodec::Hevc => matches!(nal_type(codec, nal), 32..=34),
        }
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [0, 0, 0, 1].iter().chain(nal.iter()).copied())
            .collect()
    }

    const FRAMES: usize = 12;

    /// Encodes FRAMES pictures with the CPU encoder, headers in band, no
    /// B-frames: what NVENC emits for MPEG-TS.
    fn cpu_packets(codec: VideoCodec) -> Option<(EncoderSettings, Vec<ff::Packet>)> {
        crate::video::init_ffmpeg();
        ff::encoder::find_by_name(CpuEncoder::library(codec))?;
        let mut s = settings(codec, false);
        // The CPU encoder drops B-frames for this profile (for either codec).
        s.profile.h264_profile = Some(H264Profile::ConstrainedHigh);
        let mut encoder = CpuEncoder::new(&s).expect("CPU encoder opens");
        let mut packets = Vec::new();
        let ticks = frame_ticks(s.time_base, s.frame_rate);
        for i in 0..FRAMES {
            let frame = Frame::host(picture(s.width, s.height, i), i as i64 * ticks);
            encoder
                .encode(Some(&frame), &mut |p| packets.push(p))
                .expect("encodes");
        }
        encoder
            .encode(None, &mut |p| packets.push(p))
            .expect("flushes");
        assert_eq!(packets.len(), FRAMES);
        for (i, p) in packets.iter().enumerate() {
            // NVENC's packet shape: decode order is presentation order.
            assert_eq!(p.pts(), Some(i as i64 * ticks));
            assert_eq!(p.dts(), p.pts());
        }
        assert!(packets[0].is_key());
        Some((s, packets))
    }

    /// Demuxes and decodes a rendition, returning its frames' sizes.
    fn decode_all(bytes: Vec<u8>, codec: VideoCodec) -> Vec<(u32, u32)> {
        let segment =
            container::demux(Arc::from(bytes), &DemuxLimits::default(), None).expect("demuxes");
        let id = match codec {
            VideoCodec::H264 => ff::codec::Id::H264,
            VideoCodec::Hevc => ff::codec::Id::HEVC,
        };
        assert_eq!(segment.codec, id);
        assert_eq!(segment.video_packets.len(), FRAMES);
        let mut decoder = CpuDecoder::new(&segment.video).expect("decoder opens");
        let mut sizes = Vec::new();
        for packet in segment.video_packets.iter().map(Some).chain([None]) {
            decoder
                .decode(packet, &mut |f| {
                    sizes.push((f.width, f.height));
                    Ok(())
                })
                .expect("decodes");
        }
        sizes
    }

    /// The MP4 path: parameter sets only in Annex-B extradata (as
    /// nvEncGetSequenceParams gives them, with disableSPSPPS), Annex-B
    /// packets without them.
    fn mp4_round_trip(codec: VideoCodec) {
        let Some((s, packets)) = cpu_packets(codec) else {
            eprintln!(
                "{} is not in this FFmpeg build; skipped",
                CpuEncoder::library(codec)
            );
            return;
        };
        let first = packets[0].data().expect("packet data");
        let headers: Vec<&[u8]> = nal_units(first)
            .into_iter()
            .filter(|nal| is_parameter_set(codec, nal))
            .collect();
        let wanted = if codec == VideoCodec::H264 { 2 } else { 3 };
        assert_eq!(
            headers.len(),
            wanted,
            "parameter sets in the first keyframe"
        );
        let extradata = annex_b(&headers);

        let stripped: Vec<ff::Packet> = packets
            .iter()
            .map(|p| {
                let nals: Vec<&[u8]> = nal_units(p.data().expect("packet data"))
                    .into_iter()
                    .filter(|nal| !is_parameter_set(codec, nal))
                    .collect();
                let mut out = ff::Packet::copy(&annex_b(&nals));
                out.set_pts(p.pts());
                out.set_dts(p.dts());
                out.set_duration(p.duration());
                out.set_flags(p.flags());
                out
            })
            .collect();

        let parameters = stream_parameters(codec, s.width, s.height, s.profile.bitrate, &extradata);
        assert_eq!(
            parameters.id(),
            match codec {
                VideoCodec::H264 => ff::codec::Id::H264,
                VideoCodec::Hevc => ff::codec::Id::HEVC,
            }
        );
        assert_eq!(parameters.medium(), ff::media::Type::Video);
        assert_eq!(parameters.bit_rate(), 600_000);
        // SAFETY: reads plain fields of the parameters just built.
        unsafe {
            let p = parameters.as_ptr();
            assert_eq!(((*p).width, (*p).height), (320, 180));
            assert_eq!(
                (*p).format,
                ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32
            );
            assert_eq!((*p).extradata_size as usize, extradata.len());
            let copied = std::slice::from_raw_parts((*p).extradata, extradata.len());
            assert_eq!(copied, &extradata[..]);
        }
        let mp4 = container::mux(
            "mp4",
            &[MuxTrack {
                parameters,
                time_base: s.time_base,
                packets: &stripped,
            }],
        )
        .expect("muxes to MP4");
        let sizes = decode_all(mp4, codec);
        assert_eq!(sizes, vec![(320, 180); FRAMES]);
    }

    #[test]
    fn h264_mp4_with_annex_b_extradata_plays() {
        mp4_round_trip(VideoCodec::H264);
    }

    #[test]
    fn hevc_mp4_with_annex_b_extradata_plays() {
        mp4_round_trip(VideoCodec::Hevc);
    }

    #[test]
    fn mpegts_with_in_band_headers_plays() {
        let codec = VideoCodec::H264;
        let (s, packets) = cpu_packets(codec).expect("libx264 is in this FFmpeg build");
        let parameters = stream_parameters(codec, s.width, s.height, s.profile.bitrate, &[]);
        // SAFETY: reads a plain field of the parameters just built.
        assert_eq!(unsafe { (*parameters.as_ptr()).extradata_size }, 0);
        let ts = container::mux(
            "mpegts",
            &[MuxTrack {
                parameters,
                time_base: s.time_base,
                packets: &packets,
            }],
        )
        .expect("muxes to MPEG-TS");
        assert_eq!(decode_all(ts, codec), vec![(320, 180); FRAMES]);
    }

    #[test]
    fn nal_splitting() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals = nal_units(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]
        );
        assert!(is_parameter_set(VideoCodec::H264, nals[0]));
        assert!(!is_parameter_set(VideoCodec::H264, nals[2]));
        assert_eq!(annex_b(&nals[..1]), vec![0, 0, 0, 1, 0x67, 1, 2]);
    }
}
