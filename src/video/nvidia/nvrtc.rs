//! Compiling the CUDA kernels with NVRTC (loaded at run time through cudarc),
//! to PTX and to a cubin for one GPU architecture. No GPU or driver is needed:
//! NVRTC is a compiler library.

use std::ffi::{c_char, CStr, CString};

use cudarc::nvrtc::{result, sys};

/// Kernels compiled for one architecture.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub arch: String,
    pub ptx: String,
    pub cubin: Vec<u8>,
    /// NVRTC's log: warnings (empty for a clean build).
    pub log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("libnvrtc could not be loaded (install the nvidia-cuda-nvrtc wheel or the CUDA toolkit and put its lib directory on LD_LIBRARY_PATH)")]
    NotFound,
    #[error("NVRTC {call} failed: {code:?}")]
    Call {
        call: &'static str,
        code: sys::nvrtcResult,
    },
    #[error("kernels do not compile for {arch}:\n{log}")]
    Compile { arch: String, log: String },
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

fn text(raw: &[c_char]) -> String {
    // SAFETY: NVRTC returns NUL-terminated strings; the buffer holds the terminator.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// NVRTC's version, or NotFound when the library is missing.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    // cudarc panics when the library cannot be loaded: check first, so that
    // nothing prints a panic, and still turn any panic into an error.
    if !super::driver::nvrtc_library_loads() {
        return Err(NvrtcError::NotFound);
    }
    std::panic::catch_unwind(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let code = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        (code, major, minor)
    })
    .map_err(|_| NvrtcError::NotFound)
    .and_then(|(code, major, minor)| match code {
        sys::nvrtcResult::NVRTC_SUCCESS => Ok((major, minor)),
        code => Err(NvrtcError::Call {
            call: "nvrtcVersion",
            code,
        }),
    })
}

/// The real GPU architectures NVRTC compiles for, as numbers (90 for sm_90),
/// ascending.
pub fn supported_archs() -> Result<Vec<i32>, NvrtcError> {
    version()?;
    let mut count = 0;
    // SAFETY: a valid out-pointer.
    match unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) } {
        sys::nvrtcResult::NVRTC_SUCCESS => {}
        code => {
            return Err(NvrtcError::Call {
                call: "nvrtcGetNumSupportedArchs",
                code,
            })
        }
    }
    let mut archs = vec![0; count.max(0) as usize];
    // SAFETY: the buffer holds as many entries as NVRTC reported.
    match unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) } {
        sys::nvrtcResult::NVRTC_SUCCESS => {
            archs.sort_unstable();
            Ok(archs)
        }
        code => Err(NvrtcError::Call {
            call: "nvrtcGetSupportedArchs",
            code,
        }),
    }
}

/// Compiles every kernel for `arch` (e.g. "sm_90"), without fused
/// multiply-add so the arithmetic matches the CPU reference exactly.
pub fn compile(arch: &str) -> Result<Compiled, NvrtcError> {
    compile_source(&kernel_source(), arch)
}

/// Compiles CUDA `source` for `arch` with the kernels' options.
pub fn compile_source(source: &str, arch: &str) -> Result<Compiled, NvrtcError> {
    version()?;
    let source = CString::new(source).map_err(|_| NvrtcError::Compile {
        arch: arch.to_string(),
        log: "source contains NUL".into(),
    })?;
    let name = CString::new("resize.cu").expect("static name");
    let call =
        |call: &'static str| move |e: result::NvrtcError| NvrtcError::Call { call, code: e.0 };
    let prog = result::create_program(&source, Some(&name)).map_err(call("nvrtcCreateProgram"))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--std=c++17".into(),
    ];
    // SAFETY: `prog` is a live program from create_program, destroyed below on every path.
    let compiled = unsafe { result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| text(&l))
        .unwrap_or_default();
    let out = compiled
        .map_err(|_| NvrtcError::Compile {
            arch: arch.to_string(),
            log: log.clone(),
        })
        .and_then(|()| {
            // SAFETY: as above; the program compiled, so PTX and cubin exist.
            let ptx = unsafe { result::get_ptx(prog) }.map_err(call("nvrtcGetPTX"))?;
            let mut size = 0usize;
            // SAFETY: as above, with a valid out-pointer, then a buffer of the reported size.
            let cubin = unsafe {
                match sys::nvrtcGetCUBINSize(prog, &mut size) {
                    sys::nvrtcResult::NVRTC_SUCCESS => {}
                    code => {
                        return Err(NvrtcError::Call {
                            call: "nvrtcGetCUBINSize",
                            code,
                        })
                    }
                }
                let mut buf = vec![0u8; size];
                match sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) {
                    sys::nvrtcResult::NVRTC_SUCCESS => buf,
                    code => {
                        return Err(NvrtcError::Call {
                            call: "nvrtcGetCUBIN",
                            code,
                        })
                    }
                }
            };
            Ok(Compiled {
                arch: arch.to_string(),
                ptx: text(&ptx),
                cubin,
                log: log.clone(),
            })
        });
    // SAFETY: destroyed exactly once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}
