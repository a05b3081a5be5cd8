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

/// A 1 s, 30 fps testsrc2 clip (GOP 30) encoded by the FFmpeg CLI, for the
/// NVIDIA modules' tests.
#[cfg(all(test, feature = "nvidia"))]
pub(crate) fn test_clip(width: u32, height: u32, codec: &str, pix_fmt: &str, ext: &str) -> Vec<u8> {
    crate::video::init_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join(format!("clip.{ext}"));
    let source = format!("testsrc2=size={width}x{height}:rate=30");
    let out_arg = out.to_string_lossy();
    let mut args = vec![
        "-f", "lavfi", "-i", &source, "-t", "1", "-pix_fmt", pix_fmt, "-c:v", codec, "-g", "30",
    ];
    match codec {
        "libx265" => args.extend(["-preset", "ultrafast", "-x265-params", "log-level=none"]),
        _ => args.extend(["-preset", "veryfast"]),
    }
    args.push(&out_arg);
    crate::bench::input::ffmpeg(&args, "encode the test clip").expect("the ffmpeg CLI encodes");
    std::fs::read(&out).expect("ffmpeg wrote the clip")
}
