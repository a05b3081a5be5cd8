//! `lpworker bench --gpu-kernels`: the resize kernels on a real GPU, as JSON.
//!
//! - accuracy: every sample of a 1080p NV12 and P010 frame scaled to the
//!   standard ladder by each filter, against the Rust reference
//!   (reference.rs), as the largest absolute difference in sample units;
//! - speed: ladders per second and effective bandwidth (picture bytes read
//!   once plus written, per second), beside a device-to-device copy measured
//!   in the same run (bytes read plus written), timed with CUDA events. The
//!   launches rotate over enough frames that the working set exceeds L2, as
//!   freshly decoded frames would, and are replayed from a CUDA graph so the
//!   figure is the GPU's, not the host's launch rate (the plain-stream rate is
//!   reported too);
//! - the device: name, compute capability, driver, NVENC (probe.rs), and how
//!   the kernels were compiled and loaded.

use cudarc::driver::{sys, CudaEvent, CudaStream};
use serde_json::{json, Value};

use super::device::GpuContext;
use super::error::{failed, GpuError};
use super::frame::{DeviceFrame, HostFrame, PixelFormat};
use super::kernels::ImageKind;
use super::probe;
use super::reference::{self, fill_test_pattern, read_sample, Filter, Plane};
use super::resize::scale_ladder;

/// The source size and the ladder the figures are for (go-livepeer's
/// 720p/480p/360p/240p renditions of a 1080p stream).
pub const SOURCE: (usize, usize) = (1920, 1080);
pub const LADDER: [(usize, usize); 4] = [(1280, 720), (854, 480), (640, 360), (426, 240)];

/// Source frames (each with its own outputs) the timed launches rotate over:
/// 32 x 6 MB of NV12 is well past the 50-60 MB of an H100/H200's L2.
const ROTATION: usize = 32;
/// Times the captured rotation is replayed between the timing events.
const REPLAYS: usize = 20;
/// The copy the bandwidth is compared with: 512 MiB each way, 10 times.
const COPY_BYTES: usize = 512 << 20;
const COPY_REPEATS: usize = 10;

/// A source frame with edges, gradients and noise (the pattern of the
/// reference tests), so that both filters' every branch is exercised.
pub fn test_frame(format: PixelFormat, width: usize, height: usize) -> HostFrame {
    let mut frame = HostFrame::new(format, width, height);
    let mut state = 0x9e37_79b9u32;
    let depth = format.depth();
    let mut fill = |plane: &mut [u8], pitch: usize, samples: usize, rows: usize| {
        fill_test_pattern(plane, pitch, samples, rows, depth, &mut state)
    };
    fill(&mut frame.luma, frame.luma_pitch, width, height);
    fill(&mut frame.chroma, frame.chroma_pitch, width, height / 2);
    frame
}

/// The largest difference, in sample units, between a scaled frame from the
/// GPU and the Rust reference's scaling of `src`.
pub fn max_abs_diff(src: &HostFrame, gpu: &HostFrame, filter: Filter) -> i32 {
    let depth = src.format.depth();
    let planes = [
        // (source plane, its pitch, its size in pixels, output plane, pitch, size, samples per pixel)
        (
            &src.luma,
            src.luma_pitch,
            (src.width, src.height),
            &gpu.luma,
            gpu.luma_pitch,
            (gpu.width, gpu.height),
            1,
        ),
        (
            &src.chroma,
            src.chroma_pitch,
            (src.width / 2, src.height / 2),
            &gpu.chroma,
            gpu.chroma_pitch,
            (gpu.width / 2, gpu.height / 2),
            2,
        ),
    ];
    let mut max = 0;
    for (data, pitch, (w, h), out, out_pitch, (ow, oh), step) in planes {
        let mut expected = vec![0u8; out_pitch * oh];
        for channel in 0..step {
            let plane = Plane {
                data,
                pitch,
                width: w,
                height: h,
                step,
                channel,
                depth,
            };
            reference::scale_plane(filter, &plane, &mut expected, out_pitch, ow, oh);
        }
        for y in 0..oh {
            for x in 0..ow * step {
                let d = read_sample(&expected, out_pitch, x, y, depth)
                    - read_sample(out, out_pitch, x, y, depth);
                max = max.max(d.abs());
            }
        }
    }
    max
}

fn timing_event(stream: &CudaStream) -> Result<CudaEvent, GpuError> {
    stream
        .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(failed("cuEventRecord"))
}

fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f64, GpuError> {
    start
        .elapsed_ms(end)
        .map(f64::from)
        .map_err(failed("cuEventElapsedTime"))
}

/// Bytes per second of a device-to-device copy, counting bytes read and written.
fn copy_bandwidth(gpu: &GpuContext) -> Result<Value, GpuError> {
    let stream = gpu.stream();
    let src = stream
        .alloc_zeros::<u8>(COPY_BYTES)
        .map_err(failed("cuMemAlloc"))?;
    let mut dst = stream
        .alloc_zeros::<u8>(COPY_BYTES)
        .map_err(failed("cuMemAlloc"))?;
    // One untimed copy: first-touch costs stay out of the figure.
    stream
        .memcpy_dtod(&src, &mut dst)
        .map_err(failed("cuMemcpyDtoDAsync"))?;
    let start = timing_event(stream)?;
    for _ in 0..COPY_REPEATS {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(failed("cuMemcpyDtoDAsync"))?;
    }
    let end = timing_event(stream)?;
    let ms = elapsed_ms(&start, &end)?;
    let bytes = 2 * COPY_BYTES * COPY_REPEATS;
    Ok(json!({
        "buffer_bytes": COPY_BYTES,
        "repeats": COPY_REPEATS,
        "ms": ms,
        "bytes_per_second": bytes as f64 / (ms / 1e3),
    }))
}

/// One rotation slot: a source frame and its ladder's outputs.
struct Slot {
    src: DeviceFrame,
    outputs: Vec<DeviceFrame>,
}

fn slots(gpu: &GpuContext, host: &HostFrame, count: usize) -> Result<Vec<Slot>, GpuError> {
    (0..count)
        .map(|_| {
            Ok(Slot {
                src: DeviceFrame::upload(gpu.stream(), host)?,
                outputs: LADDER
                    .iter()
                    .map(|&(w, h)| DeviceFrame::alloc(gpu.stream(), host.format, w, h))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// Accuracy of one format and filter over the ladder.
fn accuracy(
    gpu: &GpuContext,
    host: &HostFrame,
    slot: &mut Slot,
    filter: Filter,
) -> Result<Value, GpuError> {
    scale_ladder(gpu, &slot.src, &mut slot.outputs, filter)?;
    let mut renditions = Vec::new();
    let mut worst = 0;
    for out in &slot.outputs {
        let downloaded = out.download(gpu.stream())?;
        let diff = max_abs_diff(host, &downloaded, filter);
        worst = worst.max(diff);
        renditions
            .push(json!({ "size": format!("{}x{}", out.width, out.height), "max_abs_diff": diff }));
    }
    Ok(json!({ "max_abs_diff": worst, "renditions": renditions }))
}

/// Milliseconds per ladder, launching `REPLAYS` rotations one launch at a time.
fn time_stream(gpu: &GpuContext, slots: &mut [Slot], filter: Filter) -> Result<f64, GpuError> {
    let stream = gpu.stream();
    let start = timing_event(stream)?;
    for _ in 0..REPLAYS {
        for slot in slots.iter_mut() {
            scale_ladder(gpu, &slot.src, &mut slot.outputs, filter)?;
        }
    }
    let end = timing_event(stream)?;
    Ok(elapsed_ms(&start, &end)? / (REPLAYS * slots.len()) as f64)
}

/// Milliseconds per ladder, replaying the rotation captured as a CUDA graph.
fn time_graph(gpu: &GpuContext, slots: &mut [Slot], filter: Filter) -> Result<f64, GpuError> {
    let stream = gpu.stream();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(failed("cuStreamBeginCapture"))?;
    let captured = slots
        .iter_mut()
        .try_for_each(|slot| scale_ladder(gpu, &slot.src, &mut slot.outputs, filter));
    // End the capture whatever happened, so the stream is usable again.
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    captured?;
    let graph = graph
        .map_err(failed("cuStreamEndCapture"))?
        .ok_or_else(|| GpuError::Invalid("the capture recorded no graph".into()))?;
    graph.upload().map_err(failed("cuGraphUpload"))?;
    graph.launch().map_err(failed("cuGraphLaunch"))?;
    let start = timing_event(stream)?;
    for _ in 0..REPLAYS {
        graph.launch().map_err(failed("cuGraphLaunch"))?;
    }
    let end = timing_event(stream)?;
    Ok(elapsed_ms(&start, &end)? / (REPLAYS * slots.len()) as f64)
}

fn filter_name(filter: Filter) -> &'static str {
    match filter {
        Filter::Bilinear => "bilinear",
        Filter::Area => "area",
    }
}

/// Runs everything on GPU `ordinal` and returns the report. Without a usable
/// GPU it fails with `NoDriver` or `NoDevice`.
pub fn run(ordinal: usize) -> Result<Value, GpuError> {
    let gpu = GpuContext::open(ordinal)?;
    let device = gpu.device().clone();
    let image = gpu.kernel_image().clone();
    let engines = probe::probe()
        .into_iter()
        .find(|g| g.index as usize == ordinal);

    let copy = copy_bandwidth(&gpu)?;
    let copy_bytes_per_second = copy["bytes_per_second"].as_f64().unwrap_or(f64::NAN);

    let mut results = Vec::new();
    let mut worst = 0;
    for format in [PixelFormat::Nv12, PixelFormat::P010] {
        let host = test_frame(format, SOURCE.0, SOURCE.1);
        let mut rotation = slots(&gpu, &host, ROTATION)?;
        let ladder_bytes = rotation[0].src.picture_bytes()
            + rotation[0]
                .outputs
                .iter()
                .map(DeviceFrame::picture_bytes)
                .sum::<usize>();
        for filter in [Filter::Bilinear, Filter::Area] {
            let accuracy = accuracy(&gpu, &host, &mut rotation[0], filter)?;
            worst = worst.max(accuracy["max_abs_diff"].as_i64().unwrap_or(i64::MAX));
            // Warm up (module first use, clocks), then time both ways.
            time_stream(&gpu, &mut rotation, filter)?;
            let stream_ms = time_stream(&gpu, &mut rotation, filter)?;
            let graph_ms = match time_graph(&gpu, &mut rotation, filter) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    tracing::warn!(error = %e, "graph timing failed; reporting the stream's");
                    None
                }
            };
            let ms = graph_ms.unwrap_or(stream_ms);
            let bytes_per_second = ladder_bytes as f64 / (ms / 1e3);
            results.push(json!({
                "format": format.name(),
                "filter": filter_name(filter),
                "accuracy": accuracy,
                "speed": {
                    "timed_with": if graph_ms.is_some() { "cuda_graph" } else { "stream" },
                    "bytes_per_ladder": ladder_bytes,
                    "us_per_ladder": ms * 1e3,
                    "us_per_ladder_stream_launches": stream_ms * 1e3,
                    "ladders_per_second": 1e3 / ms,
                    "effective_bytes_per_second": bytes_per_second,
                    "fraction_of_copy_bandwidth": bytes_per_second / copy_bytes_per_second,
                },
            }));
        }
    }
    gpu.synchronize()?;

    Ok(json!({
        "device": {
            "ordinal": device.ordinal,
            "name": device.name,
            "compute_capability": format!("{}.{}", device.compute_capability.0, device.compute_capability.1),
            "memory_bytes": device.memory_bytes,
            "driver_version": device.driver_version,
            "nvenc_hardware": engines.as_ref().map(|g| g.nvenc_hardware),
            "nvenc_library": engines.as_ref().map(|g| g.nvenc_library),
            "nvdec_library": engines.as_ref().map(|g| g.nvdec_library),
        },
        "kernels": {
            "arch": image.arch,
            "image": match image.kind { ImageKind::Cubin => "cubin", ImageKind::Ptx => "ptx" },
            "cubin_refused": image.cubin_refused,
            "nvrtc_version": format!("{}.{}", image.nvrtc_version.0, image.nvrtc_version.1),
            "nvrtc_log": image.nvrtc_log,
        },
        "source": format!("{}x{}", SOURCE.0, SOURCE.1),
        "ladder": LADDER.iter().map(|(w, h)| format!("{w}x{h}")).collect::<Vec<_>>(),
        "rotation_frames": ROTATION,
        "copy": copy,
        "results": results,
        "max_abs_diff": worst,
        // The kernels and reference evaluate the same float operations in
        // the same order; a difference of 1 is allowed as in the CPU tests.
        "accuracy_ok": worst <= 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison itself, without a GPU: the reference's own output
    /// differs from itself by 0, and a changed sample is found.
    #[test]
    fn max_abs_diff_finds_a_changed_sample() {
        for format in [PixelFormat::Nv12, PixelFormat::P010] {
            let src = test_frame(format, 64, 36);
            let mut out = HostFrame::new(format, 42, 24);
            for (plane, pitch, (w, h), step, dst_pitch, (ow, oh)) in [
                (
                    &src.luma,
                    src.luma_pitch,
                    (64, 36),
                    1,
                    out.luma_pitch,
                    (42, 24),
                ),
                (
                    &src.chroma,
                    src.chroma_pitch,
                    (32, 18),
                    2,
                    out.chroma_pitch,
                    (21, 12),
                ),
            ] {
                let dst = if step == 1 {
                    &mut out.luma
                } else {
                    &mut out.chroma
                };
                for channel in 0..step {
                    let p = Plane {
                        data: plane,
                        pitch,
                        width: w,
                        height: h,
                        step,
                        channel,
                        depth: format.depth(),
                    };
                    reference::scale_plane(Filter::Area, &p, dst, dst_pitch, ow, oh);
                }
            }
            assert_eq!(max_abs_diff(&src, &out, Filter::Area), 0);
            let last = out.chroma.len() - 1;
            out.chroma[last] ^= 0x80;
            assert!(max_abs_diff(&src, &out, Filter::Area) > 0);
        }
    }
}
