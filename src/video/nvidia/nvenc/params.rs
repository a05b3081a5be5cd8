//! NVENC's parameter structs, zero-filled as the SDK's samples start every
//! one, with their versions set: what each call in `api` takes.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::addr_of_mut;

use nvidia_video_codec_sdk::sys::nvEncodeAPI as nv;

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
pub fn zeroed_config() -> nv::NV_ENC_CONFIG {
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
pub fn preset_config() -> nv::NV_ENC_PRESET_CONFIG {
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
pub fn picture_params(
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
pub fn eos_params() -> nv::NV_ENC_PIC_PARAMS {
    let mut pic = zeroed_pic_params();
    pic.encodePicFlags = nv::NV_ENC_PIC_FLAGS::NV_ENC_PIC_FLAG_EOS as u32;
    pic
}

/// Lock parameters for a blocking nvEncLockBitstream of `bitstream`.
pub fn lock_params(bitstream: nv::NV_ENC_OUTPUT_PTR) -> nv::NV_ENC_LOCK_BITSTREAM {
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

/// nvEncOpenEncodeSessionEx's parameters for a CUDA context.
pub fn open_session_params(context: *mut c_void) -> nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS {
    // SAFETY: integers and pointers, and `deviceType` whose zero is a
    // variant (DIRECTX), overwritten below.
    let mut params: nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS = unsafe { std::mem::zeroed() };
    params.version = nv::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER;
    params.deviceType = nv::NV_ENC_DEVICE_TYPE::NV_ENC_DEVICE_TYPE_CUDA;
    params.device = context;
    params.apiVersion = nv::NVENCAPI_VERSION;
    params
}

/// Zeroed NV_ENC_INITIALIZE_PARAMS, for `config::initialize_params` to fill.
pub fn zeroed_initialize_params() -> nv::NV_ENC_INITIALIZE_PARAMS {
    // SAFETY: every field is an integer, pointer, GUID, bitfield unit or an
    // enum whose zero is a variant (tuning UNDEFINED, buffer format
    // UNDEFINED, output stats NONE).
    unsafe { std::mem::zeroed() }
}

/// nvEncGetSequenceParams' payload: the parameter sets go to `buffer`, their
/// size to `size`.
pub fn sequence_payload(buffer: &mut [u8], size: &mut u32) -> nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD {
    // SAFETY: integers and pointers only.
    let mut payload: nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD = unsafe { std::mem::zeroed() };
    payload.version = nv::NV_ENC_SEQUENCE_PARAM_PAYLOAD_VER;
    payload.inBufferSize = buffer.len() as u32;
    payload.spsppsBuffer = buffer.as_mut_ptr().cast::<c_void>();
    payload.outSPSPPSPayloadSize = size;
    payload
}

/// nvEncRegisterResource's parameters for an NV12 picture in CUDA device
/// memory at `memory`, `pitch` bytes per row.
pub fn register_params(
    memory: *mut c_void,
    width: u32,
    height: u32,
    pitch: u32,
) -> nv::NV_ENC_REGISTER_RESOURCE {
    // SAFETY: integers, pointers and enums whose zero is a variant
    // (resource type DIRECTX, buffer format UNDEFINED, usage INPUT_IMAGE),
    // all set below.
    let mut register: nv::NV_ENC_REGISTER_RESOURCE = unsafe { std::mem::zeroed() };
    register.version = nv::NV_ENC_REGISTER_RESOURCE_VER;
    register.resourceType =
        nv::NV_ENC_INPUT_RESOURCE_TYPE::NV_ENC_INPUT_RESOURCE_TYPE_CUDADEVICEPTR;
    register.width = width;
    register.height = height;
    register.pitch = pitch;
    register.resourceToRegister = memory;
    register.bufferFormat = nv::NV_ENC_BUFFER_FORMAT::NV_ENC_BUFFER_FORMAT_NV12;
    register.bufferUsage = nv::NV_ENC_BUFFER_USAGE::NV_ENC_INPUT_IMAGE;
    register
}

/// nvEncCreateBitstreamBuffer's parameters.
pub fn create_bitstream_params() -> nv::NV_ENC_CREATE_BITSTREAM_BUFFER {
    // SAFETY: integers, pointers and a memory-heap enum whose zero is a
    // variant (AUTOSELECT; deprecated, left 0).
    let mut create: nv::NV_ENC_CREATE_BITSTREAM_BUFFER = unsafe { std::mem::zeroed() };
    create.version = nv::NV_ENC_CREATE_BITSTREAM_BUFFER_VER;
    create
}

/// nvEncMapInputResource's parameters for a registered input.
pub fn map_params(registered: nv::NV_ENC_REGISTERED_PTR) -> nv::NV_ENC_MAP_INPUT_RESOURCE {
    // SAFETY: integers, pointers and a buffer-format enum whose zero is
    // a variant (UNDEFINED).
    let mut map: nv::NV_ENC_MAP_INPUT_RESOURCE = unsafe { std::mem::zeroed() };
    map.version = nv::NV_ENC_MAP_INPUT_RESOURCE_VER;
    map.registeredResource = registered;
    map
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    #[test]
    fn parameter_structs() {
        // Building every struct exercises the zero-initialisation (which
        // would panic for an enum field left at an invalid zero).
        let preset = preset_config();
        assert_eq!(preset.version, nv::NV_ENC_PRESET_CONFIG_VER);
        assert_eq!(preset.presetCfg.version, nv::NV_ENC_CONFIG_VER);

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
}
