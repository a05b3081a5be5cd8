//! One GPU opened for transcoding: its CUDA context, a shared stream (for
//! the kernels bench; each decoder and rendition makes its own), the kernels
//! loaded for it, what its video engines can do, how many transcode sessions
//! it is running, so that new sessions go to the least busy GPU, and whether
//! a sticky CUDA error took it out of rotation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};

use super::driver;
use super::engines::Engines;
use super::error::{failed, is_sticky, GpuError};
use super::kernels::{KernelImage, Kernels};
use super::probe::GpuInfo;

/// Which GPU a [`GpuContext`] runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    /// cuDriverGetVersion: 12080 for CUDA 12.8.
    pub driver_version: i32,
}

/// A GPU opened for our own work: its primary context, a shared stream, and
/// the kernels compiled and loaded for its architecture.
///
/// Work on one stream is ordered, so the output planes, which the kernels
/// reach through raw addresses in the ladder argument, are written before
/// the copies on that stream read them back. Between streams (a decoder's
/// and its renditions') the order comes from waits, see
/// [`super::frame::GpuFrame`].
pub struct GpuContext {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    device: DeviceInfo,
}

impl GpuContext {
    /// Opens GPU `ordinal` and loads the kernels. Fails with `NoDriver` or
    /// `NoDevice` on a machine without a usable GPU, never panicking.
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        if !driver::cuda_library_loads() {
            return Err(GpuError::NoDriver);
        }
        driver::catch_panic(|| Self::open_device(ordinal))
            .unwrap_or_else(|message| Err(GpuError::DriverPanic(message)))
    }

    fn open_device(ordinal: usize) -> Result<Self, GpuError> {
        let count = match CudaContext::device_count() {
            Ok(count) => count,
            Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
            Err(e) => return Err(failed("cuInit")(e)),
        };
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        request_blocking_sync(ordinal);
        let ctx = CudaContext::new(ordinal).map_err(failed("cuDevicePrimaryCtxRetain"))?;
        keep_freed_memory_pooled(&ctx);
        // SAFETY: every hand-off between streams is ordered by hand: a
        // frame is read on the stream that wrote it or after a wait for it,
        // and is dropped only once the reads on other streams are done (a
        // host wait, or an event the ladder stage keeps it for; see
        // `GpuFrame`), so cudarc's automatic cross-stream events are not
        // needed; without them a launch is a bare cuLaunchKernel, which a
        // CUDA graph can capture. Set before anything is allocated.
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
        let kernels = Kernels::load(&ctx, device.compute_capability, device.driver_version)?;
        let stream = ctx.new_stream().map_err(failed("cuStreamCreate"))?;
        tracing::info!(
            gpu = %device.name,
            arch = %kernels.image().arch,
            image = ?kernels.image().kind,
            "resize kernels loaded"
        );
        Ok(GpuContext {
            stream,
            kernels,
            device,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    pub fn kernel_image(&self) -> &KernelImage {
        self.kernels.image()
    }

    /// The stream every copy and kernel runs on, in order, so no
    /// cross-stream synchronisation is needed (and for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context (the device's primary context) NVDEC and NVENC use.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.stream.context()
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(failed("cuStreamSynchronize"))
    }
}

/// Asks for `CU_CTX_SCHED_BLOCKING_SYNC` on GPU `ordinal`'s primary context
/// before it is retained, as FFmpeg's hwcontext_cuda does: a host thread
/// waiting on the GPU (every decoded picture's copy-out, every NVENC upload)
/// then sleeps on an interrupt instead of spinning a core, which with dozens
/// of sessions would use more CPU than the software around them. The flags
/// cannot change while the context is already active (another engine in this
/// process retained it first), which is logged and otherwise harmless.
fn request_blocking_sync(ordinal: usize) {
    let wanted = sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC as u32;
    let set = || -> Result<Option<u32>, DriverError> {
        let device = result::device::get(ordinal as i32)?;
        let (mut flags, mut active) = (0, 0);
        // SAFETY: a device handle from cuDeviceGet and valid out-pointers.
        unsafe { sys::cuDevicePrimaryCtxGetState(device, &mut flags, &mut active) }.result()?;
        if active != 0 {
            return Ok((flags & wanted == 0).then_some(flags));
        }
        // SAFETY: a device handle from cuDeviceGet; only scheduling flags,
        // set while the primary context is inactive.
        unsafe { sys::cuDevicePrimaryCtxSetFlags_v2(device, wanted) }.result()?;
        Ok(None)
    };
    match set() {
        Ok(None) => {}
        Ok(Some(flags)) => tracing::warn!(
            gpu = ordinal,
            flags,
            "the GPU's CUDA context was already active without blocking sync: threads waiting on it spin"
        ),
        Err(e) => tracing::warn!(
            gpu = ordinal,
            error = %e,
            "cuDevicePrimaryCtxSetFlags failed: threads waiting on the GPU spin"
        ),
    }
}

/// cudarc allocates with cuMemAllocAsync from the device's current memory
/// pool whenever the device supports pools, and frees with cuMemFreeAsync.
/// The pool's release threshold defaults to 0: at every stream
/// synchronisation (one per decoded picture, one per encoded frame) freed
/// memory goes back to the driver and the next frame maps it again. With the
/// threshold at its maximum the pool keeps what it has and hands it out again
/// in stream order, which is the per-format frame pool this work needs,
/// without a pool of our own that would have to track which stream last read
/// a buffer. Failing leaves allocation correct, just slower: logged.
fn keep_freed_memory_pooled(ctx: &CudaContext) {
    if !ctx.has_async_alloc() {
        return;
    }
    let set = || -> Result<(), DriverError> {
        let device = result::device::get(ctx.ordinal() as i32)?;
        // SAFETY: a device handle from cuDeviceGet.
        let pool = unsafe { result::device::get_mem_pool(device) }?;
        let mut threshold = u64::MAX;
        // SAFETY: a pool handle from cuDeviceGetMemPool; the release
        // threshold attribute takes a pointer to a cuuint64_t.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        }
        .result()
    };
    if let Err(e) = set() {
        tracing::warn!(
            gpu = ctx.ordinal(),
            error = %e,
            "the GPU's memory pool could not keep freed frames: each frame is mapped afresh"
        );
    }
}

/// A GPU in use by the NVIDIA backend.
pub struct GpuDevice {
    info: GpuInfo,
    gpu: GpuContext,
    sessions: AtomicUsize,
    engines: OnceLock<Engines>,
    /// The context returned a sticky error: no new session is given this
    /// GPU, and it is re-opened once nothing holds it any more.
    faulted: AtomicBool,
}

/// GPUs taken out of rotation since the process started, for metrics.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// How many times a GPU was taken out of rotation after a sticky CUDA error.
pub fn faults_total() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// The GPUs opened so far, one per index, shared by the probe and backends.
fn shared() -> std::sync::MutexGuard<'static, HashMap<u32, Arc<GpuDevice>>> {
    static OPEN: OnceLock<Mutex<HashMap<u32, Arc<GpuDevice>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens GPU `info.index` once per process: the kernels are compiled at open
/// (NVRTC, seconds), and the probe and the backend share the device.
pub fn open_shared(info: &GpuInfo) -> Result<Arc<GpuDevice>, GpuError> {
    let mut open = shared();
    if let Some(device) = open.get(&info.index) {
        return Ok(Arc::clone(device));
    }
    let device = GpuDevice::open(info.clone())?;
    open.insert(info.index, Arc::clone(&device));
    Ok(device)
}

/// Opens GPU `info` again after it faulted and every handle of its old
/// context was dropped (see [`GpuDevice::check_after_failure`]). Dropping
/// our last reference released the primary context, which the driver then
/// destroys; if something else in the process (an AI engine) still retains
/// it, it is reset explicitly: after a sticky error it is unusable to them
/// too. The fresh context gets the same flags and kernels as the first.
pub fn reopen(info: &GpuInfo) -> Result<Arc<GpuDevice>, GpuError> {
    let reset = || -> Result<bool, DriverError> {
        let device = result::device::get(info.index as i32)?;
        let (mut flags, mut active) = (0, 0);
        // SAFETY: a device handle from cuDeviceGet and valid out-pointers.
        unsafe { sys::cuDevicePrimaryCtxGetState(device, &mut flags, &mut active) }.result()?;
        if active == 0 {
            return Ok(false);
        }
        // SAFETY: a device handle from cuDeviceGet; none of our handles of
        // the old context remain (the caller's contract).
        unsafe { sys::cuDevicePrimaryCtxReset_v2(device) }.result()?;
        Ok(true)
    };
    match driver::catch_panic(reset) {
        Ok(Ok(true)) => tracing::warn!(
            gpu = info.index,
            "the faulted GPU's context was still retained elsewhere in the process: reset"
        ),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => return Err(failed("cuDevicePrimaryCtxReset")(e)),
        Err(message) => return Err(GpuError::DriverPanic(message)),
    }
    // A device opened meanwhile (by the probe) got the poisoned context, or
    // the one just reset: never hand that out again.
    shared().remove(&info.index);
    open_shared(info)
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
    /// Opens the GPU `info` describes: context, stream and kernels.
    pub fn open(info: GpuInfo) -> Result<Arc<Self>, GpuError> {
        let gpu = GpuContext::open(info.index as usize)?;
        Ok(Arc::new(GpuDevice {
            info,
            gpu,
            sessions: AtomicUsize::new(0),
            engines: OnceLock::new(),
            faulted: AtomicBool::new(false),
        }))
    }

    /// Whether the GPU's context returned a sticky error: it takes no new
    /// sessions until re-opened.
    pub fn is_faulted(&self) -> bool {
        self.faulted.load(Ordering::Relaxed)
    }

    /// Called after a GPU stage failed: asks the context whether the failure
    /// poisoned it (cuCtxSynchronize returns a sticky error again, whoever
    /// caused it) and if so takes the GPU out of rotation. Returns whether
    /// the GPU is faulted. Costs a context-wide wait, on failures only.
    pub fn check_after_failure(&self) -> bool {
        if self.is_faulted() {
            return true;
        }
        let status = driver::catch_panic(|| {
            driver::bind(self.context())?;
            // SAFETY: the context was made current on this thread above.
            unsafe { sys::cuCtxSynchronize() }.result()
        });
        match status {
            Ok(Err(DriverError(code))) if is_sticky(code) => {
                self.take_out_of_rotation(code);
                true
            }
            _ => false,
        }
    }

    fn take_out_of_rotation(&self, code: sys::CUresult) {
        if self.faulted.swap(true, Ordering::Relaxed) {
            return;
        }
        FAULTS.fetch_add(1, Ordering::Relaxed);
        // New opens of this index (the probe's) must not get the poisoned
        // context; the backend re-opens it once its sessions have ended.
        let mut open = shared();
        if open
            .get(&self.info.index)
            .is_some_and(|d| std::ptr::eq(Arc::as_ptr(d), self))
        {
            open.remove(&self.info.index);
        }
        tracing::error!(
            gpu = self.info.index,
            name = %self.info.name,
            error = ?code,
            sessions = self.sessions(),
            "GPU context unusable after a sticky CUDA error: out of rotation until its sessions end and it is re-opened"
        );
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The video engines' abilities, probed on first use.
    pub fn engines(&self) -> &Engines {
        self.engines
            .get_or_init(|| Engines::probe(&self.info, self.context()))
    }

    /// The opened GPU: its stream and kernels.
    pub fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    /// The GPU's shared stream, for the kernels bench and one-off work;
    /// decoders and renditions each run on their own ([`Self::new_stream`]).
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    /// The CUDA context (the device's primary context) NVDEC and NVENC use.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.gpu.context()
    }

    /// A new stream on this GPU for one decoder or one rendition, so its
    /// copies and kernels, and its waits for them, are not queued behind
    /// every other session's work on the GPU.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>, GpuError> {
        self.context()
            .new_stream()
            .map_err(failed("cuStreamCreate"))
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

impl SessionGuard {
    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.0
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_usable_gpu_open_fails_with_an_error_not_a_panic() {
        match GpuContext::open(0) {
            // A GPU machine: the context opened and names its device.
            Ok(gpu) => assert!(!gpu.device().name.is_empty()),
            Err(e @ (GpuError::NoDriver | GpuError::NoDevice { .. })) => {
                assert!(e.to_string().starts_with("no NVIDIA GPU usable"), "{e}")
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
