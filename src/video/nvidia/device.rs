//! One GPU opened for transcoding: its CUDA context and stream (shared with
//! the resize kernels), what its video engines can do, and how many
//! transcode sessions it is running, so that new sessions go to the least
//! busy GPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::ptr;

use cudarc::driver::{sys, CudaContext, CudaStream, DriverError};

use super::nvdec::DecodeLimits;
use super::probe::GpuInfo;
use super::scaler::{GpuError, GpuScaler};
use crate::video::profile::VideoCodec;

/// Binds `ctx` to the calling thread, as every NVDEC/NVENC call needs.
/// cudarc first reports, once, an error some thread recorded on the shared
/// context (an asynchronous free that failed in a drop, say): not this
/// caller's failure, so it is logged and the bind tried again.
pub fn bind(ctx: &CudaContext) -> Result<(), cudarc::driver::DriverError> {
    ctx.bind_to_thread().or_else(|recorded| {
        tracing::warn!(error = %recorded, "an earlier CUDA error was recorded on this GPU's context");
        ctx.bind_to_thread()
    })
}

/// Queues a copy of `rows` rows of `width` bytes from one pitched device
/// buffer to another on `stream` (NVDEC's surface to a frame, a frame to
/// NVENC's input buffer).
///
/// # Safety
/// `src` and `dst` must be device memory of `stream`'s context, each holding
/// at least `rows` rows of `width` bytes at its pitch, and stay allocated
/// until the stream has run the copy; the context must be current.
pub unsafe fn copy_device_2d(
    stream: &CudaStream,
    (src, src_pitch): (sys::CUdeviceptr, usize),
    (dst, dst_pitch): (sys::CUdeviceptr, usize),
    width: usize,
    rows: usize,
) -> Result<(), DriverError> {
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: ptr::null(),
        srcDevice: src,
        srcArray: ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: ptr::null_mut(),
        dstDevice: dst,
        dstArray: ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: rows,
    };
    // SAFETY: the caller's contract: both ranges are large enough device
    // memory of this stream's context, which is current.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }.result()
}

/// A GPU in use by the NVIDIA backend.
pub struct GpuDevice {
    info: GpuInfo,
    scaler: GpuScaler,
    sessions: AtomicUsize,
    engines: OnceLock<Engines>,
}

/// What a GPU's video engines can do, found by asking them (not by model
/// name): NVDEC's decoder caps and whether an NVENC session opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engines {
    /// Codecs NVDEC decodes (8-bit 4:2:0), with their size limits.
    pub decode: Vec<(VideoCodec, DecodeLimits)>,
    /// Why NVDEC is unusable, when `decode` is empty.
    pub decode_error: Option<String>,
    /// Codecs NVENC encodes; empty on GPUs without NVENC (H100, H200).
    pub encode: Vec<VideoCodec>,
    /// Why NVENC is unusable, when `encode` is empty.
    pub encode_error: Option<String>,
}

impl Engines {
    /// NVDEC's limits for `codec`; `None` when it does not decode it.
    pub fn decode_limits(&self, codec: VideoCodec) -> Option<DecodeLimits> {
        self.decode
            .iter()
            .find_map(|(c, limits)| (*c == codec).then_some(*limits))
    }

    pub fn encodes(&self, codec: VideoCodec) -> bool {
        self.encode.contains(&codec)
    }
}

/// Opens GPU `info.index` once per process: the resize kernels are compiled
/// at open (NVRTC, seconds), and the probe and the backend share the device.
pub fn open_shared(info: &GpuInfo) -> Result<Arc<GpuDevice>, GpuError> {
    static OPEN: OnceLock<Mutex<HashMap<u32, Arc<GpuDevice>>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(device) = open.get(&info.index) {
        return Ok(Arc::clone(device));
    }
    let device = GpuDevice::open(info.clone())?;
    open.insert(info.index, Arc::clone(&device));
    Ok(device)
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("info", &self.info)
            .field("sessions", &self.sessions.load(Ordering::Relaxed))
            .finish()
    }
}

impl GpuDevice {
    /// Opens the GPU `info` describes: context, stream and resize kernels.
    pub fn open(info: GpuInfo) -> Result<Arc<Self>, GpuError> {
        let scaler = GpuScaler::new(info.index as usize)?;
        Ok(Arc::new(GpuDevice {
            info,
            scaler,
            sessions: AtomicUsize::new(0),
            engines: OnceLock::new(),
        }))
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The video engines' abilities, probed on first use.
    pub fn engines(&self) -> &Engines {
        self.engines.get_or_init(|| {
            let mut engines = Engines::default();
            match super::nvdec::probe_codecs(self) {
                Ok(codecs) if !codecs.is_empty() => engines.decode = codecs,
                Ok(_) => engines.decode_error = Some("NVDEC decodes neither H.264 nor HEVC".into()),
                Err(e) => engines.decode_error = Some(e.to_string()),
            }
            match super::nvenc::probe_codecs(self) {
                Ok(codecs) if !codecs.is_empty() => engines.encode = codecs,
                Ok(_) => engines.encode_error = Some("NVENC encodes neither H.264 nor HEVC".into()),
                Err(e) => engines.encode_error = Some(e.to_string()),
            }
            tracing::info!(gpu = self.info.index, name = %self.info.name, ?engines, "GPU video engines");
            engines
        })
    }

    /// The resize kernels, on this GPU's stream.
    pub fn scaler(&self) -> &GpuScaler {
        &self.scaler
    }

    /// The stream every copy and kernel of this GPU's frames runs on, in
    /// order, so no cross-stream synchronisation is needed.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.scaler.stream()
    }

    /// The CUDA context (the device's primary context) NVDEC and NVENC use.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.scaler.stream().context()
    }

    /// Transcode sessions running on this GPU now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Counts a session on this GPU until the guard is dropped.
    pub fn begin_session(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard(Arc::clone(self))
    }
}

/// Holds one session's place on a GPU (see [`GpuDevice::begin_session`]).
#[derive(Debug)]
pub struct SessionGuard(Arc<GpuDevice>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A decoded or scaled picture in a GPU's memory, with the GPU it lives on.
#[derive(Debug)]
pub struct GpuFrame {
    pub device: Arc<GpuDevice>,
    pub frame: super::scaler::DeviceFrame,
}
