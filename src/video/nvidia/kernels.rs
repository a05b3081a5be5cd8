//! The CUDA kernels, compiled and loaded for one GPU: NVRTC (opened at run
//! time by [`super::nvrtc`]) compiles them to PTX and to a cubin for the device's
//! architecture; the driver loads the cubin, else the PTX of the same compile
//! (the driver compiles it), and a GPU newer than NVRTC gets PTX for the
//! newest architecture NVRTC knows. Compiling needs no GPU or driver: NVRTC
//! is a compiler library.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::error::{failed, GpuError, NvrtcError};
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
    /// loads every entry point on `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Self, GpuError> {
        let (module, image) = load_module(ctx, cc)?;
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
/// newest architecture NVRTC knows.
fn load_module(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
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
        tracing::warn!(
            device = device_arch,
            nvrtc = older,
            "NVRTC does not know this GPU; loading PTX for an older architecture"
        );
        (older, false)
    };
    let arch = format!("sm_{target}");
    let compiled = compile(&arch)?;
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
