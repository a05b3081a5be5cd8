//! The NVIDIA backend's pieces that are checked on every machine: the CUDA
//! kernels' sources and the Rust reference of their arithmetic. The GPU-side
//! parts (NVRTC compilation, device probing) need the `nvidia` feature.

pub mod reference;

#[cfg(feature = "nvidia")]
pub mod nvrtc;
#[cfg(feature = "nvidia")]
pub mod probe;

/// The CUDA source of the resize kernels and the header they share with the
/// CPU harness, as (file name, contents).
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
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
