//! The CUDA kernels, compiled and loaded for one GPU: NVRTC (opened at run
//! time by [`super::nvrtc`]) compiles them to PTX and to a cubin for the device's
//! architecture; the driver loads the cubin, else the PTX of the same compile
//! (the driver compiles it), and a GPU newer than NVRTC gets PTX for the
//! newest architecture NVRTC knows, which loads only on a driver at least as
//! new as that NVRTC (its PTX ISA; see [`ptx_driver_floor`]). Compiling needs
//! no GPU or driver: NVRTC is a compiler library.

use std::ffi::CString;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::error::{failed, DriverOlderThanPtx, GpuError, NvrtcError};
use super::nvrtc;

/// Kernels compiled for one architecture.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub arch: String,
    pub ptx: String,
    pub cubin: Vec<u8>,
    /// NVRTC's log: warnings (empty for a clean build).
    pub log: String,
}

/// The kernels as one source string: the shared headers are inlined, so the
/// compile needs no include path (and works from an installed binary).
pub fn kernel_source() -> String {
    let (kernels, headers) = super::KERNEL_SOURCES
        .split_last()
        .expect("KERNEL_SOURCES ends with the kernels");
    headers
        .iter()
        .fold(kernels.1.to_string(), |source, (name, header)| {
            source.replace(&format!("#include \"{name}\""), header)
        })
}

/// NVRTC's version, or NotFound when the library is missing.
pub fn nvrtc_version() -> Result<(i32, i32), NvrtcError> {
    nvrtc::library()?.version()
}

/// The real GPU architectures NVRTC compiles for, as numbers (90 for sm_90),
/// ascending.
pub fn supported_archs() -> Result<Vec<i32>, NvrtcError> {
    nvrtc::library()?.supported_archs()
}

/// Compiles every kernel for `arch` (e.g. "sm_90"), without fused
/// multiply-add so the arithmetic matches the CPU reference exactly.
pub fn compile(arch: &str) -> Result<Compiled, NvrtcError> {
    compile_source(&kernel_source(), arch)
}

/// Compiles CUDA `source` for `arch` with the kernels' options.
pub fn compile_source(source: &str, arch: &str) -> Result<Compiled, NvrtcError> {
    let nvrtc = nvrtc::library()?;
    let source = CString::new(source).map_err(|_| NvrtcError::Compile {
        arch: arch.to_string(),
        log: "source contains NUL".into(),
    })?;
    let program = nvrtc.program(&source, c"resize.cu")?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--std=c++17".into(),
    ]
    .map(|option| CString::new(option).expect("options have no NUL"));
    let compiled = program.compile(&options);
    let log = program.log().unwrap_or_default();
    if compiled.is_err() {
        return Err(NvrtcError::Compile {
            arch: arch.to_string(),
            log,
        });
    }
    Ok(Compiled {
        arch: arch.to_string(),
        ptx: program.ptx()?,
        cubin: program.cubin()?,
        log,
    })
}

/// The PTX ISA version of PTX text, from its `.version` line
/// (`.version 8.8`).
pub fn ptx_isa(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(".version"))?;
    let (major, minor) = line.strip_prefix(".version")?.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.trim().parse().ok()?))
}

/// The oldest driver that loads PTX of one ISA version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverFloor {
    /// The CUDA version such a driver supports, as cuDriverGetVersion
    /// reports it: 12090 for CUDA 12.9.
    pub cuda_version: i32,
    /// The first Linux driver branch of that CUDA version (575 for 12.9),
    /// where known.
    pub linux_driver: Option<u32>,
}

impl fmt::Display for DriverFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CUDA {}", cuda_version_text(self.cuda_version))?;
        match self.linux_driver {
            Some(branch) => write!(f, " (Linux driver {branch} or newer)"),
            None => Ok(()),
        }
    }
}

/// A CUDA version as cuDriverGetVersion reports it (12090), as text ("12.9").
pub fn cuda_version_text(version: i32) -> String {
    format!("{}.{}", version / 1000, version % 1000 / 10)
}

/// The oldest driver that loads PTX of ISA `(major, minor)`. A driver JIT-
/// compiles PTX only up to the ISA of the CUDA version it supports, and NVRTC
/// writes its own toolkit's ISA whatever the target, so PTX from a newer
/// NVRTC fails on an older driver (NVRTC 12.9 writes ISA 8.8, which needs
/// CUDA 12.9, driver 575; NVRTC 13.0 writes 9.0: CUDA 13.0, driver 580).
/// ISA to CUDA follows the PTX ISA's release history (8.6 was CUDA 12.7, not
/// a public toolkit; 12.6 kept 8.5); each CUDA version's first Linux driver
/// is from the CUDA toolkit release notes. `None` for an ISA this table
/// predates (the load is still tried; only its error is less specific).
pub fn ptx_driver_floor((major, minor): (u32, u32)) -> Option<DriverFloor> {
    let (cuda_major, cuda_minor) = match (major, minor) {
        (7, 0..=8) => (11, minor),
        (8, 0..=5) => (12, minor),
        (8, 6) => (12, 7),
        (8, 7) => (12, 8),
        (8, 8) => (12, 9),
        (9, 0..=9) => (13, minor),
        _ => return None,
    };
    let linux_driver = match (cuda_major, cuda_minor) {
        (11, 8) => Some(520),
        (12, 0) => Some(525),
        (12, 1) => Some(530),
        (12, 2) => Some(535),
        (12, 3) => Some(545),
        (12, 4) => Some(550),
        (12, 5) => Some(555),
        (12, 7) => Some(565),
        (12, 8) => Some(570),
        (12, 9) => Some(575),
        (13, 0) => Some(580),
        (13, 1) => Some(590),
        _ => None,
    };
    Some(DriverFloor {
        cuda_version: cuda_major * 1000 + cuda_minor as i32 * 10,
        linux_driver,
    })
}

/// Why PTX did not load, naming the driver's and the PTX's versions when the
/// driver (`driver_version`, cuDriverGetVersion) is older than the PTX.
fn ptx_load_error(
    arch: String,
    isa: Option<(u32, u32)>,
    nvrtc_version: (i32, i32),
    driver_version: i32,
    reason: String,
) -> GpuError {
    match isa.and_then(|isa| Some((isa, ptx_driver_floor(isa)?))) {
        Some(((isa_major, isa_minor), floor)) if driver_version < floor.cuda_version => {
            GpuError::DriverOlderThanPtx(Box::new(DriverOlderThanPtx {
                arch,
                ptx_isa: format!("{isa_major}.{isa_minor}"),
                nvrtc: format!("{}.{}", nvrtc_version.0, nvrtc_version.1),
                needs: floor.to_string(),
                driver: cuda_version_text(driver_version),
                reason,
            }))
        }
        _ => GpuError::Load { arch, reason },
    }
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

/// Every kernel of [`super::KERNELS`], loaded on one device.
pub struct Kernels {
    // The functions keep their module loaded; the module keeps the context.
    functions: Vec<(&'static str, CudaFunction)>,
    image: KernelImage,
}

impl Kernels {
    /// Compiles the kernels for a device of compute capability `cc` and
    /// loads every entry point on `ctx`; `driver_version` (cuDriverGetVersion)
    /// explains a refused PTX.
    pub fn load(
        ctx: &Arc<CudaContext>,
        cc: (i32, i32),
        driver_version: i32,
    ) -> Result<Self, GpuError> {
        let (module, image) = load_module(ctx, cc, driver_version)?;
        let functions = super::KERNELS
            .iter()
            .map(|&name| {
                module
                    .load_function(name)
                    .map(|f| (name, f))
                    .map_err(failed("cuModuleGetFunction"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Kernels { functions, image })
    }

    pub fn image(&self) -> &KernelImage {
        &self.image
    }

    /// The loaded entry point `name`.
    pub fn function(&self, name: &str) -> Result<&CudaFunction, GpuError> {
        self.functions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| GpuError::Invalid(format!("kernel {name} not loaded")))
    }
}

/// Compiles the kernels for the device and loads them: the cubin, else the
/// PTX of the same compile; a device newer than NVRTC gets PTX for the
/// newest architecture NVRTC knows. PTX needs a driver at least as new as
/// the NVRTC that wrote it ([`ptx_driver_floor`]).
fn load_module(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
    driver_version: i32,
) -> Result<(Arc<CudaModule>, KernelImage), GpuError> {
    let nvrtc_version = nvrtc_version()?;
    let device_arch = major * 10 + minor;
    let supported = supported_archs()?;
    let (target, try_cubin) = if supported.contains(&device_arch) {
        (device_arch, true)
    } else {
        let older = supported
            .iter()
            .copied()
            .filter(|a| *a < device_arch)
            .max()
            .ok_or(GpuError::UnsupportedArch(device_arch))?;
        (older, false)
    };
    let arch = format!("sm_{target}");
    let compiled = compile(&arch)?;
    let isa = ptx_isa(&compiled.ptx);
    if !try_cubin {
        let needs = isa
            .and_then(ptx_driver_floor)
            .map_or("an unknown driver".into(), |floor| floor.to_string());
        tracing::warn!(
            device = device_arch,
            nvrtc_arch = target,
            nvrtc = %format!("{}.{}", nvrtc_version.0, nvrtc_version.1),
            ptx_needs = %needs,
            driver = %cuda_version_text(driver_version),
            "NVRTC does not know this GPU; loading PTX for an older architecture"
        );
    }
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
        Err(e) => Err(ptx_load_error(
            arch,
            isa,
            nvrtc_version,
            driver_version,
            format!("PTX: {e}; cubin: {cubin_refused}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_isa_is_read_from_the_version_line() {
        let ptx = "//\n// Generated by NVIDIA NVVM Compiler\n\n.version 8.8\n.target sm_90\n";
        assert_eq!(ptx_isa(ptx), Some((8, 8)));
        assert_eq!(ptx_isa(".version 9.0\n"), Some((9, 0)));
        assert_eq!(ptx_isa(".target sm_90\n"), None);
        assert_eq!(ptx_isa(".version eight\n"), None);
    }

    #[test]
    fn each_ptx_isa_needs_the_driver_of_its_cuda_version() {
        let floor = |isa| ptx_driver_floor(isa).map(|f| (f.cuda_version, f.linux_driver));
        assert_eq!(floor((8, 8)), Some((12090, Some(575))), "NVRTC 12.9");
        assert_eq!(floor((9, 0)), Some((13000, Some(580))), "NVRTC 13.0");
        assert_eq!(floor((8, 7)), Some((12080, Some(570))), "NVRTC 12.8");
        // CUDA 12.6 kept ISA 8.5; 8.6 was CUDA 12.7.
        assert_eq!(floor((8, 5)), Some((12050, Some(555))));
        assert_eq!(floor((8, 6)), Some((12070, Some(565))));
        assert_eq!(floor((8, 0)), Some((12000, Some(525))));
        // A CUDA version whose driver branch the table does not know yet.
        assert_eq!(floor((9, 4)), Some((13040, None)));
        assert_eq!(floor((10, 0)), None);
        assert_eq!(
            ptx_driver_floor((8, 8)).unwrap().to_string(),
            "CUDA 12.9 (Linux driver 575 or newer)"
        );
        assert_eq!(cuda_version_text(12080), "12.8");
        assert_eq!(cuda_version_text(13000), "13.0");
    }

    #[test]
    fn a_refused_ptx_names_the_driver_and_the_version_it_needs() {
        let err = ptx_load_error(
            "sm_90".into(),
            Some((9, 0)),
            (13, 0),
            12090,
            "PTX: CUDA_ERROR_UNSUPPORTED_PTX_VERSION".into(),
        );
        let message = err.to_string();
        assert!(matches!(err, GpuError::DriverOlderThanPtx(_)), "{message}");
        for part in [
            "PTX ISA 9.0",
            "NVRTC 13.0",
            "CUDA 13.0 (Linux driver 580 or newer)",
            "this driver supports CUDA 12.9",
            "UNSUPPORTED_PTX_VERSION",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        // A driver new enough (or an ISA the table does not know): the plain error.
        for (isa, driver) in [(Some((9, 0)), 13000), (Some((10, 0)), 12090), (None, 12090)] {
            let err = ptx_load_error("sm_90".into(), isa, (13, 0), driver, "why".into());
            assert!(matches!(err, GpuError::Load { .. }), "{err}");
        }
    }
}
