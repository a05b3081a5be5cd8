//! GPU resize of one NV12 or P010 frame into every rendition of a ladder in a
//! single kernel launch (kernels/resize.cu), on the stream it is given.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::GpuContext;
use super::error::{failed, GpuError};
use super::frame::{DeviceFrame, PixelFormat};
use super::ladder::{LpwLadder, LpwPlane, MAX_RENDITIONS};
use super::launch;
use super::reference::Filter;

/// The entry point in resize.cu for `format` and `filter`.
fn kernel(format: PixelFormat, filter: Filter) -> &'static str {
    match (format, filter) {
        (PixelFormat::Nv12, Filter::Bilinear) => "lpw_nv12_bilinear",
        (PixelFormat::Nv12, Filter::Area) => "lpw_nv12_area",
        (PixelFormat::P010, Filter::Bilinear) => "lpw_p010_bilinear",
        (PixelFormat::P010, Filter::Area) => "lpw_p010_area",
    }
}

/// Queues one launch on `gpu`'s shared stream that scales `src` into every
/// frame of `outputs` (1 to 8 renditions, all in `src`'s format) with
/// `filter`.
pub fn scale_ladder(
    gpu: &GpuContext,
    src: &DeviceFrame,
    outputs: &mut [DeviceFrame],
    filter: Filter,
) -> Result<(), GpuError> {
    scale_ladder_on(gpu, gpu.stream(), src, outputs, filter)
}

/// [`scale_ladder`] on `stream`, a stream of `gpu`'s context (a rendition's
/// own).
pub fn scale_ladder_on(
    gpu: &GpuContext,
    stream: &Arc<CudaStream>,
    src: &DeviceFrame,
    outputs: &mut [DeviceFrame],
    filter: Filter,
) -> Result<(), GpuError> {
    if outputs.is_empty() || outputs.len() > MAX_RENDITIONS {
        return Err(GpuError::Invalid(format!(
            "{} renditions: one launch writes 1 to {MAX_RENDITIONS}",
            outputs.len()
        )));
    }
    if let Some(other) = outputs.iter().find(|o| o.format != src.format) {
        return Err(GpuError::Invalid(format!(
            "a {} rendition of a {} source: formats must match",
            other.format.name(),
            src.format.name()
        )));
    }
    let function = gpu.kernels().function(kernel(src.format, filter))?;
    let mut ladder = LpwLadder {
        count: outputs.len() as i32,
        ..Default::default()
    };
    // The guards record the planes' writes on the stream once dropped,
    // which must be after the launch is queued.
    let mut writes = Vec::with_capacity(outputs.len() * 2);
    for (i, out) in outputs.iter_mut().enumerate() {
        let (width, height) = (out.width as i32, out.height as i32);
        let (luma_pitch, chroma_pitch) = (out.luma_pitch() as i32, out.chroma_pitch() as i32);
        let (luma_plane, chroma_plane) = out.planes_mut();
        let (luma, luma_write) = luma_plane.device_ptr_mut(stream);
        let (chroma, chroma_write) = chroma_plane.device_ptr_mut(stream);
        writes.push(luma_write);
        writes.push(chroma_write);
        ladder.luma[i] = LpwPlane {
            ptr: luma,
            pitch: luma_pitch,
            width,
            height,
        };
        ladder.chroma[i] = LpwPlane {
            ptr: chroma,
            pitch: chroma_pitch,
            width: width / 2,
            height: height / 2,
        };
    }
    // The same geometry the CPU run of the kernels uses (launch.rs).
    let geometry = launch::ladder_launch_geometry(&ladder);
    let config = LaunchConfig {
        grid_dim: geometry.grid,
        block_dim: geometry.block,
        shared_mem_bytes: 0,
    };
    let (src_width, src_height) = (src.width as i32, src.height as i32);
    let (src_luma_pitch, src_chroma_pitch) = (src.luma_pitch() as i32, src.chroma_pitch() as i32);
    let mut launch = stream.launch_builder(function);
    launch
        .arg(src.luma())
        .arg(&src_luma_pitch)
        .arg(src.chroma())
        .arg(&src_chroma_pitch)
        .arg(&src_width)
        .arg(&src_height)
        .arg(&ladder);
    // SAFETY: the arguments match the kernels' signature in resize.cu
    // (two source planes with their pitches, the source size, the ladder
    // by value: launch::LADDER_KERNEL_PARAMS, which tests/kernel_abi.rs
    // checks against the compiled kernels); every plane the ladder points
    // to is a live allocation of the stated pitch x rows, borrowed
    // mutably until the launch is queued, and the grid covers the
    // largest plane while the kernels bound-check each one.
    unsafe { launch.launch(config) }.map_err(failed("cuLaunchKernel"))?;
    drop(writes);
    Ok(())
}
