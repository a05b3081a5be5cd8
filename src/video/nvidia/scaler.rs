//! GPU resize of one NV12 or P010 frame into every rendition of a ladder in a
//! single kernel launch (kernels/resize.cu), through cudarc's driver API.
//!
//! The kernels are compiled at run time with NVRTC for the device's compute
//! capability and loaded as a cubin; if the driver refuses the cubin the PTX
//! of the same compile is loaded (the driver compiles it), and a GPU newer
//! than NVRTC gets PTX for the newest architecture NVRTC knows.
//!
//! Every call runs on one stream owned by the scaler, so the output planes,
//! which the kernels reach through raw addresses in the ladder argument, are
//! ordered with the copies that read them back.

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtrMut, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::driver;
use super::ladder::{LpwLadder, LpwPlane, MAX_RENDITIONS};
use super::nvrtc::{self, NvrtcError};
use super::reference::{Depth, Filter};

/// Rows of device planes start at multiples of this many bytes, as
/// cuMemAllocPitch would place them, so warps read whole cache lines.
const PITCH_ALIGN: usize = 256;
/// Threads per block: 32 x 8 output samples, a warp per row segment.
const BLOCK: (u32, u32) = (32, 8);

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
    #[error("invalid frame or ladder: {0}")]
    Invalid(String),
}

/// Maps a failed driver call to `GpuError::Driver` naming the call.
fn failed(call: &'static str) -> impl Fn(DriverError) -> GpuError {
    move |source| GpuError::Driver { call, source }
}

/// The frame layouts the kernels scale: 4:2:0 with a luma plane and an
/// interleaved chroma plane at half size in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit samples.
    Nv12,
    /// 10-bit samples in the high bits of 16-bit little-endian words.
    P010,
}

impl PixelFormat {
    pub fn depth(self) -> Depth {
        match self {
            PixelFormat::Nv12 => Depth::Eight,
            PixelFormat::P010 => Depth::Ten,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            PixelFormat::Nv12 => 1,
            PixelFormat::P010 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Nv12 => "nv12",
            PixelFormat::P010 => "p010",
        }
    }

    /// Bytes of picture (padding excluded) in a `width` x `height` frame.
    pub fn frame_bytes(self, width: usize, height: usize) -> usize {
        (width * height + (width / 2) * (height / 2) * 2) * self.bytes_per_sample()
    }

    fn kernel(self, filter: Filter) -> &'static str {
        match (self, filter) {
            (PixelFormat::Nv12, Filter::Bilinear) => "lpw_nv12_bilinear",
            (PixelFormat::Nv12, Filter::Area) => "lpw_nv12_area",
            (PixelFormat::P010, Filter::Bilinear) => "lpw_p010_bilinear",
            (PixelFormat::P010, Filter::Area) => "lpw_p010_area",
        }
    }
}

/// Checks a frame size the kernels can take: even (4:2:0 chroma), and small
/// enough for their `int` arithmetic.
fn check_size(width: usize, height: usize) -> Result<(), GpuError> {
    if width < 2
        || height < 2
        || width % 2 != 0
        || height % 2 != 0
        || width > 16384
        || height > 16384
    {
        return Err(GpuError::Invalid(format!(
            "{width}x{height}: 4:2:0 frames need even sizes from 2x2 to 16384x16384"
        )));
    }
    Ok(())
}

/// A frame in host memory: `luma` rows then `chroma` rows (interleaved U/V),
/// each plane's rows `*_pitch` bytes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
    pub luma_pitch: usize,
    pub chroma: Vec<u8>,
    pub chroma_pitch: usize,
}

impl HostFrame {
    /// A black-zero frame with rows packed tightly.
    pub fn new(format: PixelFormat, width: usize, height: usize) -> Self {
        let pitch = width * format.bytes_per_sample();
        HostFrame {
            format,
            width,
            height,
            luma: vec![0; pitch * height],
            luma_pitch: pitch,
            chroma: vec![0; pitch * (height / 2)],
            chroma_pitch: pitch,
        }
    }

    fn check(&self) -> Result<(), GpuError> {
        check_size(self.width, self.height)?;
        let row = self.width * self.format.bytes_per_sample();
        let fits = |plane: &[u8], pitch: usize, rows: usize| {
            pitch >= row && plane.len() >= pitch * (rows - 1) + row
        };
        if !fits(&self.luma, self.luma_pitch, self.height)
            || !fits(&self.chroma, self.chroma_pitch, self.height / 2)
        {
            return Err(GpuError::Invalid(format!(
                "{}x{} {} frame: planes or pitches too small",
                self.width,
                self.height,
                self.format.name()
            )));
        }
        Ok(())
    }
}

/// A frame in device memory, allocated by [`GpuScaler::alloc_frame`] or
/// [`GpuScaler::upload`].
#[derive(Debug)]
pub struct DeviceFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    luma: CudaSlice<u8>,
    luma_pitch: usize,
    chroma: CudaSlice<u8>,
    chroma_pitch: usize,
}

impl DeviceFrame {
    /// The luma plane: `height` rows, [`Self::luma_pitch`] bytes apart.
    pub fn luma(&self) -> &CudaSlice<u8> {
        &self.luma
    }

    pub fn luma_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.luma
    }

    pub fn luma_pitch(&self) -> usize {
        self.luma_pitch
    }

    /// The interleaved U/V plane: `height / 2` rows, [`Self::chroma_pitch`]
    /// bytes apart.
    pub fn chroma(&self) -> &CudaSlice<u8> {
        &self.chroma
    }

    pub fn chroma_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.chroma
    }

    pub fn chroma_pitch(&self) -> usize {
        self.chroma_pitch
    }

    /// Bytes of picture in the frame (what a resize reads or writes of it).
    pub fn picture_bytes(&self) -> usize {
        self.format.frame_bytes(self.width, self.height)
    }
}

/// Which GPU the scaler runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    /// cuDriverGetVersion: 12080 for CUDA 12.8.
    pub driver_version: i32,
}

/// How the kernels were loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Cubin,
    Ptx,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    pub kind: ImageKind,
    /// The architecture NVRTC compiled for, e.g. "sm_90".
    pub arch: String,
    pub nvrtc_version: (i32, i32),
    /// NVRTC's warnings (empty for a clean build).
    pub nvrtc_log: String,
    /// Why the cubin was not used, when PTX was loaded instead.
    pub cubin_refused: Option<String>,
}

/// Resizes NV12/P010 frames on one GPU.
pub struct GpuScaler {
    stream: Arc<CudaStream>,
    // The functions keep their module loaded; the module keeps the context.
    functions: Vec<(&'static str, CudaFunction)>,
    device: DeviceInfo,
    image: KernelImage,
}

impl GpuScaler {
    /// Opens GPU `ordinal` and loads the kernels. Fails with `NoDriver` or
    /// `NoDevice` on a machine without a usable GPU, never panicking.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        if !driver::cuda_library_loads() {
            return Err(GpuError::NoDriver);
        }
        driver::catch_panic(|| Self::open(ordinal))
            .unwrap_or_else(|message| Err(GpuError::DriverPanic(message)))
    }

    fn open(ordinal: usize) -> Result<Self, GpuError> {
        let count = match CudaContext::device_count() {
            Ok(count) => count,
            Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
            Err(e) => return Err(failed("cuInit")(e)),
        };
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(failed("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: every allocation and launch of this scaler runs on its one
        // stream, in order, so cudarc's cross-stream events are not needed;
        // without them a launch is a bare cuLaunchKernel, which a CUDA graph
        // can capture. Set before anything is allocated.
        unsafe { ctx.disable_event_tracking() };
        let mut driver_version = 0;
        // SAFETY: a valid out-pointer; the driver is initialised (cuInit above).
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(failed("cuDriverGetVersion"))?;
        let device = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(failed("cuDeviceGetName"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(failed("cuDeviceGetAttribute"))?,
            memory_bytes: ctx.total_mem().map_err(failed("cuDeviceTotalMem"))?,
            driver_version,
        };
        let (module, image) = load_kernels(&ctx, device.compute_capability)?;
        let functions = super::KERNELS
            .iter()
            .map(|&name| {
                module
                    .load_function(name)
                    .map(|f| (name, f))
                    .map_err(failed("cuModuleGetFunction"))
            })
            .collect::<Result<_, _>>()?;
        let stream = ctx.new_stream().map_err(failed("cuStreamCreate"))?;
        tracing::info!(
            gpu = %device.name,
            arch = %image.arch,
            image = ?image.kind,
            "resize kernels loaded"
        );
        Ok(GpuScaler {
            stream,
            functions,
            device,
            image,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    pub fn kernel_image(&self) -> &KernelImage {
        &self.image
    }

    /// The stream every call of this scaler runs on (for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A device frame of `width` x `height`, rows aligned to 256 bytes,
    /// zeroed.
    pub fn alloc_frame(
        &self,
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<DeviceFrame, GpuError> {
        check_size(width, height)?;
        let pitch = (width * format.bytes_per_sample()).next_multiple_of(PITCH_ALIGN);
        let luma = self
            .stream
            .alloc_zeros::<u8>(pitch * height)
            .map_err(failed("cuMemAlloc"))?;
        let chroma = self
            .stream
            .alloc_zeros::<u8>(pitch * (height / 2))
            .map_err(failed("cuMemAlloc"))?;
        Ok(DeviceFrame {
            format,
            width,
            height,
            luma,
            luma_pitch: pitch,
            chroma,
            chroma_pitch: pitch,
        })
    }

    /// Copies a host frame to a new device frame.
    pub fn upload(&self, frame: &HostFrame) -> Result<DeviceFrame, GpuError> {
        frame.check()?;
        let mut device = self.alloc_frame(frame.format, frame.width, frame.height)?;
        let row = frame.width * frame.format.bytes_per_sample();
        let planes = [
            (
                &frame.luma,
                frame.luma_pitch,
                frame.height,
                &mut device.luma,
            ),
            (
                &frame.chroma,
                frame.chroma_pitch,
                frame.height / 2,
                &mut device.chroma,
            ),
        ];
        for (host, host_pitch, rows, dst) in planes {
            // Repack the rows at the device pitch, then one copy per plane.
            let pitch = dst.len() / rows;
            let mut staging = vec![0u8; dst.len()];
            for y in 0..rows {
                staging[y * pitch..y * pitch + row]
                    .copy_from_slice(&host[y * host_pitch..y * host_pitch + row]);
            }
            self.stream
                .memcpy_htod(&staging, dst)
                .map_err(failed("cuMemcpyHtoDAsync"))?;
        }
        Ok(device)
    }

    /// Copies a device frame back to the host, at the device's pitches.
    pub fn download(&self, frame: &DeviceFrame) -> Result<HostFrame, GpuError> {
        let luma = self
            .stream
            .clone_dtoh(&frame.luma)
            .map_err(failed("cuMemcpyDtoHAsync"))?;
        let chroma = self
            .stream
            .clone_dtoh(&frame.chroma)
            .map_err(failed("cuMemcpyDtoHAsync"))?;
        self.synchronize()?;
        Ok(HostFrame {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            luma,
            luma_pitch: frame.luma_pitch,
            chroma,
            chroma_pitch: frame.chroma_pitch,
        })
    }

    /// Waits for everything queued on the scaler's stream.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(failed("cuStreamSynchronize"))
    }

    /// Queues one launch that scales `src` into every frame of `outputs`
    /// (1 to 8 renditions, all in `src`'s format) with `filter`.
    pub fn scale_ladder(
        &self,
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
        let function = self.function(src.format.kernel(filter))?;
        let mut ladder = LpwLadder {
            count: outputs.len() as i32,
            ..Default::default()
        };
        let (mut grid_width, mut grid_height) = (0u32, 0u32);
        // The guards record the planes' writes on the stream once dropped,
        // which must be after the launch is queued.
        let mut writes = Vec::with_capacity(outputs.len() * 2);
        for (i, out) in outputs.iter_mut().enumerate() {
            let (width, height) = (out.width as i32, out.height as i32);
            let (luma_pitch, chroma_pitch) = (out.luma_pitch as i32, out.chroma_pitch as i32);
            let (luma, luma_write) = out.luma.device_ptr_mut(&self.stream);
            let (chroma, chroma_write) = out.chroma.device_ptr_mut(&self.stream);
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
            grid_width = grid_width.max(width as u32);
            grid_height = grid_height.max(height as u32);
        }
        let config = LaunchConfig {
            grid_dim: (
                grid_width.div_ceil(BLOCK.0),
                grid_height.div_ceil(BLOCK.1),
                2 * ladder.count as u32,
            ),
            block_dim: (BLOCK.0, BLOCK.1, 1),
            shared_mem_bytes: 0,
        };
        let (src_width, src_height) = (src.width as i32, src.height as i32);
        let (src_luma_pitch, src_chroma_pitch) = (src.luma_pitch as i32, src.chroma_pitch as i32);
        let mut launch = self.stream.launch_builder(function);
        launch
            .arg(&src.luma)
            .arg(&src_luma_pitch)
            .arg(&src.chroma)
            .arg(&src_chroma_pitch)
            .arg(&src_width)
            .arg(&src_height)
            .arg(&ladder);
        // SAFETY: the arguments match the kernels' signature in resize.cu
        // (two source planes with their pitches, the source size, the ladder
        // by value, whose layout tests check); every plane the ladder points
        // to is a live allocation of the stated pitch x rows, borrowed
        // mutably until the launch is queued, and the grid covers the
        // largest plane while the kernels bound-check each one.
        unsafe { launch.launch(config) }.map_err(failed("cuLaunchKernel"))?;
        drop(writes);
        Ok(())
    }

    fn function(&self, name: &str) -> Result<&CudaFunction, GpuError> {
        self.functions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| GpuError::Invalid(format!("kernel {name} not loaded")))
    }
}

/// Compiles the kernels for the device and loads them: the cubin, else the
/// PTX of the same compile; a device newer than NVRTC gets PTX for the
/// newest architecture NVRTC knows.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
) -> Result<(Arc<CudaModule>, KernelImage), GpuError> {
    let nvrtc_version = nvrtc::version()?;
    let device_arch = major * 10 + minor;
    let supported = nvrtc::supported_archs()?;
    let (target, try_cubin) = if supported.contains(&device_arch) {
        (device_arch, true)
    } else {
        let older = supported
            .iter()
            .copied()
            .filter(|a| *a < device_arch)
            .max()
            .ok_or(GpuError::UnsupportedArch(device_arch))?;
        tracing::warn!(
            device = device_arch,
            nvrtc = older,
            "NVRTC does not know this GPU; loading PTX for an older architecture"
        );
        (older, false)
    };
    let arch = format!("sm_{target}");
    let compiled = nvrtc::compile(&arch)?;
    let cubin_refused = if try_cubin {
        match ctx.load_module(Ptx::from_binary(compiled.cubin)) {
            Ok(module) => {
                let image = KernelImage {
                    kind: ImageKind::Cubin,
                    arch,
                    nvrtc_version,
                    nvrtc_log: compiled.log,
                    cubin_refused: None,
                };
                return Ok((module, image));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the driver refused the cubin; loading PTX");
                e.to_string()
            }
        }
    } else {
        format!("NVRTC cannot compile for sm_{device_arch}")
    };
    match ctx.load_module(Ptx::from_src(compiled.ptx)) {
        Ok(module) => Ok((
            module,
            KernelImage {
                kind: ImageKind::Ptx,
                arch,
                nvrtc_version,
                nvrtc_log: compiled.log,
                cubin_refused: Some(cubin_refused),
            },
        )),
        Err(e) => Err(GpuError::Load {
            reason: format!("PTX: {e}; cubin: {cubin_refused}"),
            arch,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_usable_gpu_new_fails_with_an_error_not_a_panic() {
        match GpuScaler::new(0) {
            // A GPU machine: the scaler opened and names its device.
            Ok(scaler) => assert!(!scaler.device().name.is_empty()),
            Err(e @ (GpuError::NoDriver | GpuError::NoDevice { .. })) => {
                assert!(e.to_string().starts_with("no NVIDIA GPU usable"), "{e}")
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn frame_sizes_and_bytes() {
        assert!(check_size(1920, 1080).is_ok());
        assert!(check_size(853, 480).is_err());
        assert!(check_size(0, 2).is_err());
        assert_eq!(
            PixelFormat::Nv12.frame_bytes(1920, 1080),
            1920 * 1080 * 3 / 2
        );
        assert_eq!(PixelFormat::P010.frame_bytes(4, 2), 24);
        let mut frame = HostFrame::new(PixelFormat::P010, 4, 2);
        assert!(frame.check().is_ok());
        frame.chroma.pop();
        assert!(frame.check().is_err());
    }
}
