//! Why the GPU layer (opening a device, compiling and loading the kernels,
//! frames and launches) failed. NVDEC and NVENC have their own errors, in
//! their `api` modules, since their libraries report their own statuses.

use cudarc::driver::{sys::CUresult, DriverError};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no NVIDIA GPU usable: the CUDA driver library (libcuda.so.1) is not installed or not on the loader's path")]
    NoDriver,
    #[error(
        "no NVIDIA GPU usable: there is no CUDA device {ordinal} (the driver reports {count})"
    )]
    NoDevice { ordinal: usize, count: i32 },
    #[error("the CUDA driver could not be used: {0}")]
    DriverPanic(String),
    #[error("CUDA {call} failed: {source}")]
    Driver {
        call: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("compiling the resize kernels: {0}")]
    Nvrtc(#[from] NvrtcError),
    #[error("NVRTC knows no architecture at or below the device's sm_{0}")]
    UnsupportedArch(i32),
    #[error("the resize kernels compiled for {arch} did not load: {reason}")]
    Load { arch: String, reason: String },
    /// The driver is older than the PTX NVRTC wrote: a newer NVRTC writes a
    /// newer PTX ISA, which only a driver of that CUDA version or later loads.
    #[error(transparent)]
    DriverOlderThanPtx(Box<DriverOlderThanPtx>),
    #[error("invalid frame or ladder: {0}")]
    Invalid(String),
}

/// The versions behind [`GpuError::DriverOlderThanPtx`] (boxed: the
/// variant would make every `GpuError` this big).
#[derive(Debug, thiserror::Error)]
#[error("the resize kernels' PTX ({arch}, PTX ISA {ptx_isa} from NVRTC {nvrtc}) needs a driver for {needs}, but this driver supports CUDA {driver}: update the driver, or point LPWORKER_NVRTC_LIBRARY at an NVRTC no newer than CUDA {driver} ({reason})")]
pub struct DriverOlderThanPtx {
    pub arch: String,
    pub ptx_isa: String,
    pub nvrtc: String,
    /// The oldest driver that loads the PTX, e.g. "CUDA 12.9 (Linux driver 575 or newer)".
    pub needs: String,
    /// The CUDA version the driver supports, e.g. "12.8".
    pub driver: String,
    /// The driver's own error.
    pub reason: String,
}

/// Maps a failed driver call to `GpuError::Driver` naming the call.
pub fn failed(call: &'static str) -> impl Fn(DriverError) -> GpuError {
    move |source| GpuError::Driver { call, source }
}

/// Whether `code` leaves the CUDA context that returned it unusable: after
/// these (a kernel that faulted, an uncorrectable memory error, a context
/// torn down under us) every later call in the context fails with the same
/// code, so the GPU can only be used again through a fresh context. Every
/// other error (out of memory, an invalid argument, an unsupported format)
/// fails that call alone.
pub fn is_sticky(code: CUresult) -> bool {
    use CUresult::*;
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_NVLINK_UNCORRECTABLE
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUDA_ERROR_EXTERNAL_DEVICE
            | CUDA_ERROR_UNKNOWN
    )
}

/// Why NVRTC could not compile the kernels.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("libnvrtc could not be loaded (tried {tried}): install the CUDA toolkit's NVRTC or the nvidia-cuda-nvrtc wheel and put its lib directory on LD_LIBRARY_PATH, or name the file in LPWORKER_NVRTC_LIBRARY")]
    NotFound { tried: String },
    #[error("NVRTC {call} failed: {message} (status {code})")]
    Call {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("kernels do not compile for {arch}:\n{log}")]
    Compile { arch: String, log: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_that_poison_the_context_are_told_from_errors_of_one_call() {
        use CUresult::*;
        for sticky in [
            CUDA_ERROR_ILLEGAL_ADDRESS,
            CUDA_ERROR_LAUNCH_FAILED,
            CUDA_ERROR_ECC_UNCORRECTABLE,
            CUDA_ERROR_HARDWARE_STACK_ERROR,
            CUDA_ERROR_ILLEGAL_INSTRUCTION,
            CUDA_ERROR_MISALIGNED_ADDRESS,
            CUDA_ERROR_INVALID_PC,
            CUDA_ERROR_ASSERT,
            CUDA_ERROR_CONTEXT_IS_DESTROYED,
        ] {
            assert!(is_sticky(sticky), "{sticky:?}");
        }
        for passing in [
            CUDA_SUCCESS,
            CUDA_ERROR_OUT_OF_MEMORY,
            CUDA_ERROR_INVALID_VALUE,
            CUDA_ERROR_NOT_SUPPORTED,
            CUDA_ERROR_NOT_READY,
            CUDA_ERROR_NO_DEVICE,
            CUDA_ERROR_INVALID_CONTEXT,
        ] {
            assert!(!is_sticky(passing), "{passing:?}");
        }
    }
}
