//! The NVIDIA backend's pieces that are checked on every machine: the CUDA
//! kernels' sources, the Rust reference of their arithmetic and the Rust
//! mirror of their ladder argument. The GPU-side parts (NVRTC compilation,
//! device probing, the scaler and its benchmark) need the `nvidia` feature.

pub mod ladder;
pub mod reference;

#[cfg(feature = "nvidia")]
pub mod backend;
#[cfg(feature = "nvidia")]
pub mod device;
#[cfg(feature = "nvidia")]
pub mod driver;
#[cfg(feature = "nvidia")]
pub mod gpu_bench;
#[cfg(feature = "nvidia")]
pub mod nvdec;
#[cfg(feature = "nvidia")]
pub mod nvenc;
#[cfg(feature = "nvidia")]
pub mod nvrtc;
#[cfg(feature = "nvidia")]
pub mod probe;
#[cfg(feature = "nvidia")]
pub mod scaler;

/// The headers the resize kernels include (shared with the CPU harness), then
/// the kernels' source, as (file name, contents).
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("ladder.cuh", include_str!("../../../kernels/ladder.cuh")),
    (
        "resize_math.cuh",
        include_str!("../../../kernels/resize_math.cuh"),
    ),
    ("resize.cu", include_str!("../../../kernels/resize.cu")),
];

/// Kernel entry points in `resize.cu`.
pub const KERNELS: &[&str] = &[
    "lpw_nv12_bilinear",
    "lpw_nv12_area",
    "lpw_p010_bilinear",
    "lpw_p010_area",
];
