//! libnvidia-encode opened at run time, and each NVENC call wrapped once.
//!
//! The API's types, constants and GUIDs come from `nvidia_video_codec_sdk::sys`
//! (Video Codec SDK 12.1 headers); its functions are never linked: the library
//! is opened with libloading, `NvEncodeAPIGetMaxSupportedVersion` is checked
//! against the headers' version, and `NvEncodeAPICreateInstance` fills the
//! function table every later call goes through. A [`Session`] owns an
//! encode session's handle; the buffers it creates are handed out as owned
//! tokens ([`Registered`], [`Bitstream`], [`MappedInput`]) that only it can
//! release. Every call needs the GPU's context current on the calling thread
//! ([`bind`]).

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::{sys as cuda, CudaContext, DriverError};
use nvidia_video_codec_sdk::sys::nvEncodeAPI as nv;

use super::super::driver;
use super::params;
use crate::video::profile::VideoCodec;

/// File names tried for the NVENC library, in order.
pub const LIBRARY_NAMES: &[&str] = &["libnvidia-encode.so.1", "libnvidia-encode.so"];

/// The API version of the headers the bindings were generated from, in the
/// form `NvEncodeAPIGetMaxSupportedVersion` reports: `major << 4 | minor`.
pub const HEADER_API_VERSION: u32 = (nv::NVENCAPI_MAJOR_VERSION << 4) | nv::NVENCAPI_MINOR_VERSION;

pub const SUCCESS: u32 = nv::NVENCSTATUS::NV_ENC_SUCCESS as u32;
pub const NEED_MORE_INPUT: u32 = nv::NVENCSTATUS::NV_ENC_ERR_NEED_MORE_INPUT as u32;

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
    pub fn call(call: &'static str, status: u32, detail: String) -> Self {
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

pub fn cuda_error(call: &'static str) -> impl FnOnce(DriverError) -> NvencError {
    move |e| NvencError::Cuda {
        call,
        message: e.to_string(),
    }
}

/// Binds `ctx` to the calling thread (see [`driver::bind`]).
pub fn bind(ctx: &CudaContext) -> Result<(), NvencError> {
    driver::bind(ctx).map_err(cuda_error("cuCtxSetCurrent"))
}

/// Runs `f`, turning a panic (cudarc's, say) into an error.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, NvencError>) -> Result<T, NvencError> {
    driver::catch_panic(f).unwrap_or_else(|message| {
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
pub struct Api {
    fns: Functions,
    /// NvEncodeAPIGetMaxSupportedVersion's answer, `major << 4 | minor`.
    driver_version: u32,
    _library: libloading::Library,
}

impl Api {
    /// The newest NVENC API version the driver speaks, as (major, minor).
    pub fn driver_api_version(&self) -> (u32, u32) {
        (self.driver_version >> 4, self.driver_version & 0xf)
    }
}

/// The library and its function table, loaded on first use.
pub fn api() -> Result<&'static Api, NvencError> {
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
        driver_version: version,
        _library: library,
    })
}

/// The API's GUID for `codec`.
pub fn codec_guid(codec: VideoCodec) -> nv::GUID {
    match codec {
        VideoCodec::H264 => nv::NV_ENC_CODEC_H264_GUID,
        VideoCodec::Hevc => nv::NV_ENC_CODEC_HEVC_GUID,
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

/// An open encode session; destroyed on drop (the CUDA context must be
/// current on the dropping thread).
pub struct Session {
    fns: &'static Functions,
    handle: Handle,
}

/// An input buffer registered with a session (nvEncRegisterResource).
pub struct Registered(nv::NV_ENC_REGISTERED_PTR);

/// A session's output buffer (nvEncCreateBitstreamBuffer).
pub struct Bitstream(nv::NV_ENC_OUTPUT_PTR);

/// A registered input mapped for one encode (nvEncMapInputResource).
pub struct MappedInput(nv::NV_ENC_INPUT_PTR);

/// One picture's output, read from a locked bitstream buffer.
pub struct EncodedPicture<T> {
    /// What the reader made of the bitstream; `None` for an empty output.
    pub data: Option<T>,
    /// NV_ENC_PIC_TYPE, as the integer C stores.
    pub picture_type: u32,
    /// The input's timestamp, handed back.
    pub timestamp: u64,
}

// SAFETY: NVENC sessions may be used from any thread as long as calls on one
// session do not overlap: every call takes the session, which is `Send` but
// not `Sync`, so one thread at a time holds it; the buffers are only used
// through it.
unsafe impl Send for Session {}
// SAFETY: as above: a buffer is only handed to the session that created it.
unsafe impl Send for Registered {}
// SAFETY: as above.
unsafe impl Send for Bitstream {}
// SAFETY: as above.
unsafe impl Send for MappedInput {}

impl Session {
    /// Opens a session on `context`, which must be current on this thread.
    pub fn open(api: &'static Api, context: cuda::CUcontext) -> Result<Session, NvencError> {
        let fns = &api.fns;
        let mut params = params::open_session_params(context.cast::<c_void>());
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
    pub fn last_error(&self) -> String {
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

    /// Fails with `Call` (and the session's last error) unless `status` is
    /// NV_ENC_SUCCESS.
    pub fn check(&self, call: &'static str, status: u32) -> Result<(), NvencError> {
        if status == SUCCESS {
            Ok(())
        } else {
            Err(NvencError::call(call, status, self.last_error()))
        }
    }

    /// The codec GUIDs the session's GPU encodes.
    pub fn encode_guids(&self) -> Result<Vec<nv::GUID>, NvencError> {
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
        Ok(guids)
    }

    /// nvEncGetEncodePresetConfigEx: the preset's configuration for a codec.
    pub fn preset_config(
        &self,
        codec: nv::GUID,
        preset: nv::GUID,
        tuning: nv::NV_ENC_TUNING_INFO,
    ) -> Result<nv::NV_ENC_PRESET_CONFIG, NvencError> {
        let mut config = params::preset_config();
        // SAFETY: live session; `config` is zeroed with both versions set, as
        // the call requires.
        let status = unsafe {
            (self.fns.get_preset_config_ex)(self.handle, codec, preset, tuning, &mut config)
        };
        self.check("nvEncGetEncodePresetConfigEx", status)?;
        Ok(config)
    }

    /// nvEncInitializeEncoder with `init`, whose encode config is `config`.
    pub fn initialize(
        &self,
        init: &mut nv::NV_ENC_INITIALIZE_PARAMS,
        config: &mut nv::NV_ENC_CONFIG,
    ) -> Result<(), NvencError> {
        init.encodeConfig = config;
        // SAFETY: live session; `init` and the config it points to (alive
        // across the call) are plain parameter structs.
        let status = unsafe { (self.fns.initialize_encoder)(self.handle, init) };
        self.check("nvEncInitializeEncoder", status)
    }

    /// nvEncGetSequenceParams into `buffer`: the bytes written.
    pub fn sequence_params(&self, buffer: &mut [u8]) -> Result<usize, NvencError> {
        let mut size = 0u32;
        let mut payload = params::sequence_payload(buffer, &mut size);
        // SAFETY: an initialised session; `buffer` and `size` outlive the call
        // and the buffer's size is the one passed.
        let status = unsafe { (self.fns.get_sequence_params)(self.handle, &mut payload) };
        self.check("nvEncGetSequenceParams", status)?;
        Ok(size as usize)
    }

    /// nvEncRegisterResource of an NV12 picture in CUDA device memory.
    ///
    /// # Safety
    /// `memory` must hold a whole `width` x `height` NV12 picture at `pitch`
    /// (luma rows, then chroma rows) and stay allocated until unregistered.
    pub unsafe fn register_nv12(
        &self,
        memory: cuda::CUdeviceptr,
        width: u32,
        height: u32,
        pitch: u32,
    ) -> Result<Registered, NvencError> {
        let mut register =
            params::register_params(memory as usize as *mut c_void, width, height, pitch);
        // SAFETY: an initialised session; the memory is the caller's contract.
        let status = unsafe { (self.fns.register_resource)(self.handle, &mut register) };
        self.check("nvEncRegisterResource", status)?;
        Ok(Registered(register.registeredResource))
    }

    /// nvEncUnregisterResource; its status is not checked (teardown).
    pub fn unregister(&self, resource: Registered) {
        // SAFETY: a resource this session registered, released once (consumed).
        unsafe { (self.fns.unregister_resource)(self.handle, resource.0) };
    }

    /// nvEncCreateBitstreamBuffer.
    pub fn create_bitstream(&self) -> Result<Bitstream, NvencError> {
        let mut create = params::create_bitstream_params();
        // SAFETY: an initialised session and a valid parameter struct.
        let status = unsafe { (self.fns.create_bitstream_buffer)(self.handle, &mut create) };
        self.check("nvEncCreateBitstreamBuffer", status)?;
        Ok(Bitstream(create.bitstreamBuffer))
    }

    /// nvEncDestroyBitstreamBuffer; its status is not checked (teardown).
    pub fn destroy_bitstream(&self, bitstream: Bitstream) {
        // SAFETY: a buffer this session created, destroyed once (consumed).
        unsafe { (self.fns.destroy_bitstream_buffer)(self.handle, bitstream.0) };
    }

    /// nvEncMapInputResource of a registered input.
    pub fn map_input(&self, resource: &Registered) -> Result<MappedInput, NvencError> {
        let mut map = params::map_params(resource.0);
        // SAFETY: an initialised session and a resource it registered.
        let status = unsafe { (self.fns.map_input_resource)(self.handle, &mut map) };
        self.check("nvEncMapInputResource", status)?;
        Ok(MappedInput(map.mappedResource))
    }

    /// nvEncUnmapInputResource.
    pub fn unmap_input(&self, mapped: MappedInput) -> Result<(), NvencError> {
        // SAFETY: a resource this session mapped, unmapped once (consumed).
        let status = unsafe { (self.fns.unmap_input_resource)(self.handle, mapped.0) };
        self.check("nvEncUnmapInputResource", status)
    }

    /// nvEncEncodePicture of one NV12 frame from `input` into `output`,
    /// returning the status (NEED_MORE_INPUT is not a failure).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_picture(
        &self,
        input: &MappedInput,
        output: &Bitstream,
        width: u32,
        height: u32,
        pitch: u32,
        pts: i64,
        duration: i64,
    ) -> u32 {
        let mut pic =
            params::picture_params(input.0, output.0, width, height, pitch, pts, duration);
        // SAFETY: an initialised session; the input is mapped and the
        // bitstream buffer is this session's and not locked.
        unsafe { (self.fns.encode_picture)(self.handle, &mut pic) }
    }

    /// nvEncEncodePicture of the end of the stream, returning the status.
    pub fn end_of_stream(&self) -> u32 {
        let mut pic = params::eos_params();
        // SAFETY: an initialised session; an EOS picture carries no buffers.
        unsafe { (self.fns.encode_picture)(self.handle, &mut pic) }
    }

    /// Locks `bitstream` (waiting for its encode), hands its bytes to `read`
    /// and unlocks it.
    pub fn read_bitstream<T>(
        &self,
        bitstream: &Bitstream,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<EncodedPicture<T>, NvencError> {
        let mut lock = params::lock_params(bitstream.0);
        // SAFETY: an initialised session and its bitstream buffer, which was
        // passed to a successful nvEncEncodePicture.
        let status = unsafe { (self.fns.lock_bitstream)(self.handle, &mut lock) };
        self.check("nvEncLockBitstream", status)?;
        let size = lock.bitstreamSizeInBytes as usize;
        let bytes = lock.bitstreamBufferPtr.cast::<u8>();
        let data = (!bytes.is_null() && size > 0).then(|| {
            // SAFETY: while locked, the buffer holds `size` bytes of
            // bitstream at `bytes`; `read` is done with them before the
            // unlock below.
            read(unsafe { std::slice::from_raw_parts(bytes, size) })
        });
        // SAFETY: a 4-byte C enum field the driver wrote; read as the integer
        // it is, so an unexpected value cannot be an invalid Rust enum.
        let picture_type = unsafe { ptr::addr_of!(lock.pictureType).cast::<u32>().read() };
        let timestamp = lock.outputTimeStamp;
        // SAFETY: the buffer was locked above by this session.
        let status = unsafe { (self.fns.unlock_bitstream)(self.handle, bitstream.0) };
        self.check("nvEncUnlockBitstream", status)?;
        Ok(EncodedPicture {
            data,
            picture_type,
            timestamp,
        })
    }

    /// Destroys the session now (idempotent).
    pub fn close(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::VideoError;

    /// NVIDIA's real libnvidia-encode (driver 535, Debian non-free, which
    /// `scripts/test` puts on LD_LIBRARY_PATH): the version handshake and
    /// every entry point of the function table, without a GPU.
    #[test]
    fn the_real_library_speaks_the_api_version_our_headers_need() {
        if std::env::var_os("LPW_NVIDIA_DRIVER_LIBS").is_none() {
            eprintln!("skipped: NVIDIA's libraries are not on the path (bash scripts/test)");
            return;
        }
        let api = api().expect("libnvidia-encode loads, hands shakes and fills its table");
        let driver = api.driver_api_version();
        // Driver 535 speaks NVENC API 12.1, the version of our headers.
        assert_eq!(driver, (12, 1));
        assert!(driver >= (HEADER_API_VERSION >> 4, HEADER_API_VERSION & 0xf));
        // The handshake refuses a driver older than the headers, naming both.
        let e = check_api_version(0xc0, HEADER_API_VERSION)
            .unwrap_err()
            .to_string();
        assert!(e.contains("12.0") && e.contains("12.1"), "{e}");
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
}
