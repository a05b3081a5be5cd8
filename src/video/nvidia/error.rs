//! Why the GPU layer (opening a device, compiling and loading the kernels,
//! frames and launches) failed. NVDEC and NVENC have their own errors, in
//! their `api` modules, since their libraries report their own statuses.

use cudarc::driver::DriverError;

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
