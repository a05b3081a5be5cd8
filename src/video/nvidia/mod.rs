//! The NVIDIA backend. Its pieces that are checked on every machine: the
//! CUDA kernels' sources, the Rust reference of their arithmetic, the Rust
//! mirror of their ladder argument, the shape of their launch (`launch`),
//! and which GPUs `--nvidia` names. The
//! GPU-side parts need the `nvidia` feature; they are layered so that
//! dependencies point one way, each `unsafe` driver call written once in the
//! layer that owns its handle:
//! - the libraries: `driver` (CUDA through cudarc), `nvrtc`, `nvdec::api`
//!   and `nvenc::api` (loaded at run time, every call wrapped once),
//!   `kernels` (NVRTC compilation and module loading), `probe` (the GPUs
//!   present);
//! - one GPU: `engines` (what NVDEC and NVENC do on it), `device` (its
//!   context, stream, kernels and sessions), `frame` (pictures in its memory
//!   and on the host, and the copies between them);
//! - the work: `nvdec` (decoding), `resize` (the ladder launch), `nvenc`
//!   (encoding), `gpu_bench` (the kernels measured);
//! - the backend: `selection` (which GPUs, which one per session) and
//!   `backend` (the `VideoBackend` over them all).

pub mod in_flight;
pub mod ladder;
pub mod launch;
pub mod reference;
pub mod selection;

#[cfg(feature = "nvidia")]
pub mod backend;
#[cfg(feature = "nvidia")]
pub mod device;
#[cfg(feature = "nvidia")]
pub mod driver;
#[cfg(feature = "nvidia")]
pub mod engines;
#[cfg(feature = "nvidia")]
pub mod error;
#[cfg(feature = "nvidia")]
pub mod frame;
#[cfg(feature = "nvidia")]
pub mod gpu_bench;
#[cfg(feature = "nvidia")]
pub mod kernels;
#[cfg(feature = "nvidia")]
pub mod nvdec;
#[cfg(feature = "nvidia")]
pub mod nvenc;
#[cfg(feature = "nvidia")]
pub mod nvrtc;
#[cfg(feature = "nvidia")]
pub mod probe;
#[cfg(feature = "nvidia")]
pub mod resize;

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
