//! Finding NVIDIA GPUs at run time: the CUDA driver (libcuda) through cudarc,
//! and whether the video engines' libraries (libnvcuvid for NVDEC,
//! libnvidia-encode for NVENC) are present. Without a driver it finds nothing;
//! it never fails the process.

use std::sync::OnceLock;

use cudarc::driver::{result, sys};

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub compute_capability: (i32, i32),
    /// libnvcuvid loads (NVDEC usable by the driver install).
    pub nvdec_library: bool,
    /// libnvidia-encode loads. Data-centre GPUs without NVENC (H100, H200,
    /// A100) still ship the library; encoding there must fall back to the CPU.
    pub nvenc_library: bool,
    /// Whether this model has NVENC hardware at all.
    pub nvenc_hardware: bool,
}

fn library_loads(names: &[&str]) -> bool {
    names.iter().any(|n| {
        // SAFETY: loading a vendor library runs its initialisers; these are
        // NVIDIA's own driver libraries, loaded here only to test presence.
        unsafe { libloading::Library::new(n) }.is_ok()
    })
}

/// GPU models whose dies have no NVENC engine (NVIDIA's support matrix).
fn lacks_nvenc(name: &str) -> bool {
    [
        "H100", "H200", "H800", "A100", "A800", "A30", "GH200", "B200", "B100",
    ]
    .iter()
    .any(|m| name.contains(m))
}

/// Every GPU the driver sees; empty without a driver or GPU. Read once per
/// process (the capability probe and the backend both ask): the driver's
/// device list does not change while it runs.
pub fn probe() -> Vec<GpuInfo> {
    static FOUND: OnceLock<Vec<GpuInfo>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            // cudarc panics when libcuda cannot be loaded: no driver, no
            // GPUs. The check first keeps that panic's message off stderr.
            if !super::driver::cuda_library_loads() {
                return Vec::new();
            }
            super::driver::catch_panic(probe_driver).unwrap_or_default()
        })
        .clone()
}

fn probe_driver() -> Vec<GpuInfo> {
    if result::init().is_err() {
        return Vec::new();
    }
    let count = result::device::get_count().unwrap_or(0);
    let nvdec = library_loads(&super::nvdec::api::LIBRARY_NAMES);
    let nvenc = library_loads(super::nvenc::api::LIBRARY_NAMES);
    (0..count)
        .filter_map(|i| {
            let dev = result::device::get(i).ok()?;
            let name = result::device::get_name(dev).ok()?;
            // SAFETY: `dev` is a valid device handle from the driver.
            let memory = unsafe { result::device::total_mem(dev) }.ok()? as u64;
            let attr = |a| unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0);
            let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
            let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
            Some(GpuInfo {
                index: i as u32,
                nvenc_hardware: !lacks_nvenc(&name),
                name,
                memory_bytes: memory,
                compute_capability: (major, minor),
                nvdec_library: nvdec,
                nvenc_library: nvenc,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA's real driver library (535, from Debian non-free, on the path
    /// in `scripts/test`) on a machine without a GPU: it loads, every
    /// symbol cudarc resolves lazily is found when called, and cuInit's
    /// CUDA_ERROR_NO_DEVICE means "no usable GPU", an empty probe, not an
    /// error or a panic.
    #[test]
    fn the_real_driver_without_a_gpu_means_no_gpus() {
        if std::env::var_os("LPW_NVIDIA_DRIVER_LIBS").is_none() {
            eprintln!("skipped: NVIDIA's libraries are not on the path (bash scripts/test)");
            return;
        }
        assert!(super::super::driver::cuda_library_loads());
        assert!(library_loads(&super::super::nvdec::api::LIBRARY_NAMES));
        assert!(library_loads(super::super::nvenc::api::LIBRARY_NAMES));
        let init = super::super::driver::catch_panic(result::init).expect("cuInit resolves");
        let code = init.expect_err("no GPU here").0;
        assert_eq!(code, sys::cudaError_enum::CUDA_ERROR_NO_DEVICE);
        // Driver 535 is CUDA 12.2: cudarc built for 12.9 still loads it.
        let version = super::super::driver::catch_panic(|| {
            let mut version = 0;
            // SAFETY: a valid out-pointer; cuDriverGetVersion needs no cuInit.
            unsafe { sys::cuDriverGetVersion(&mut version) }
                .result()
                .map(|()| version)
        })
        .expect("cuDriverGetVersion resolves");
        assert_eq!(version, Ok(12020));
        assert_eq!(probe(), Vec::new());
    }

    #[test]
    fn nvenc_less_models() {
        assert!(lacks_nvenc("NVIDIA H100 80GB HBM3"));
        assert!(lacks_nvenc("NVIDIA H200"));
        assert!(!lacks_nvenc("NVIDIA L4"));
        assert!(!lacks_nvenc("NVIDIA GeForce RTX 4090"));
    }

    #[test]
    fn no_driver_means_no_gpus_and_no_panic() {
        // On a machine with a driver this lists its GPUs; without one it is empty.
        let gpus = probe();
        for g in &gpus {
            assert!(!g.name.is_empty() && g.memory_bytes > 0);
        }
    }
}
