//! The CUDA driver as every other part meets it: whether the libraries
//! loaded at run time are present (the driver's checked before cudarc is
//! called
//! (cudarc panics when it cannot load a library, and even a caught panic
//! prints "panicked at" on stderr, which must not be how a machine without a
//! GPU is reported; NVRTC is opened by `super::nvrtc`, not cudarc); cudarc's
//! panics caught; a context bound to the calling thread.

use std::sync::OnceLock;

use cudarc::driver::{CudaContext, DriverError};

/// Whether one of the file names cudarc tries for `lib` ("cuda") loads, i.e.
/// whether cudarc's first call would find the library.
fn cudarc_library_loads(lib: &str) -> bool {
    cudarc::get_lib_name_candidates(lib).iter().any(|name| {
        // SAFETY: loading NVIDIA's own driver or compiler library runs only
        // its initialisers; it is dropped again at once (cudarc loads its own).
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// The CUDA driver library (libcuda) loads.
pub fn cuda_library_loads() -> bool {
    static LOADS: OnceLock<bool> = OnceLock::new();
    *LOADS.get_or_init(|| cudarc_library_loads("cuda"))
}

/// The NVRTC library loads, under the names and in the order the kernels'
/// compile opens it (NVRTC 13 first, then 12).
pub fn nvrtc_library_loads() -> bool {
    super::nvrtc::library().is_ok()
}

/// Runs `f`, turning a panic inside cudarc (a symbol missing from an old
/// driver, say) into `Err` with the panic's message.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
    })
}

/// Binds `ctx` to the calling thread, as every NVDEC/NVENC call needs.
/// cudarc first reports, once, an error some thread recorded on the shared
/// context (an asynchronous free that failed in a drop, say): not this
/// caller's failure, so it is logged and the bind tried again.
pub fn bind(ctx: &CudaContext) -> Result<(), DriverError> {
    ctx.bind_to_thread().or_else(|recorded| {
        tracing::warn!(error = %recorded, "an earlier CUDA error was recorded on this GPU's context");
        ctx.bind_to_thread()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_agree_with_cudarc_and_never_panic() {
        // Where the driver is missing, cudarc itself would panic; the check
        // says so without calling it.
        if !cuda_library_loads() {
            assert!(catch_panic(cudarc::driver::result::init).is_err());
        }
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(
            catch_panic(|| -> i32 { panic!("boom {}", 1) }),
            Err("boom 1".to_string())
        );
    }
}
