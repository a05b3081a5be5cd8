//! NVRTC, opened at run time through a table of the few functions lpworker
//! calls, each wrapped once here.
//!
//! Why not cudarc's `nvrtc::sys`: cudarc is built for one CUDA version
//! (`cuda-12090`) and opens NVRTC only under the sonames of that major and
//! older ones (`libnvrtc.so`, `.so.12`, `.so.11`, ...), with no way to hand
//! it another file (cudarc 0.19.10), so a CUDA 13 machine with only
//! `libnvrtc.so.13` would have no NVRTC for us. The functions below are the
//! same C API in NVRTC 12 and 13, so one small table (libloading, as cudarc
//! itself uses) serves both; cudarc still does the driver side.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use libloading::Library;

use super::error::NvrtcError;

/// The NVRTC file names tried, in order: the newest first, since it knows
/// the newest GPUs (a GPU newer than NVRTC only gets PTX for an older
/// architecture); the plain name last, for a toolkit's development link.
pub const LIBRARY_CANDIDATES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// Names one NVRTC file to open instead of the candidates: for a machine
/// whose driver is too old for the newest NVRTC installed (its PTX needs a
/// newer driver), or an NVRTC outside the loader's path.
pub const LIBRARY_ENV: &str = "LPWORKER_NVRTC_LIBRARY";

/// `nvrtcResult`: 0 is success.
type Status = c_int;
/// `nvrtcProgram`, an opaque handle.
type RawProgram = *mut c_void;
/// The functions that report the size of a program's output (log, PTX, cubin).
type OutputSizeFn = unsafe extern "C" fn(RawProgram, *mut usize) -> Status;
/// The functions that copy a program's output into a buffer of that size.
type OutputFn = unsafe extern "C" fn(RawProgram, *mut c_char) -> Status;

/// The loaded library and the functions lpworker calls.
pub struct Nvrtc {
    /// The file name it was opened by.
    pub library_name: String,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    get_num_supported_archs: unsafe extern "C" fn(*mut c_int) -> Status,
    get_supported_archs: unsafe extern "C" fn(*mut c_int) -> Status,
    create_program: unsafe extern "C" fn(
        *mut RawProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile_program: unsafe extern "C" fn(RawProgram, c_int, *const *const c_char) -> Status,
    get_program_log_size: OutputSizeFn,
    get_program_log: OutputFn,
    get_cubin_size: OutputSizeFn,
    get_cubin: OutputFn,
    get_ptx_size: OutputSizeFn,
    get_ptx: OutputFn,
    destroy_program: unsafe extern "C" fn(*mut RawProgram) -> Status,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    // Keeps the functions above mapped; never unloaded while they are used.
    _library: Library,
}

/// The NVRTC of this machine, opened once: the file `LPWORKER_NVRTC_LIBRARY`
/// names, else the first of [`LIBRARY_CANDIDATES`] that loads.
pub fn library() -> Result<&'static Nvrtc, NvrtcError> {
    static NVRTC: OnceLock<Result<Nvrtc, String>> = OnceLock::new();
    NVRTC
        .get_or_init(|| {
            let chosen = std::env::var(LIBRARY_ENV).ok().filter(|p| !p.is_empty());
            let candidates: Vec<&str> = match &chosen {
                Some(path) => vec![path.as_str()],
                None => LIBRARY_CANDIDATES.to_vec(),
            };
            open_first(&candidates).map_err(|e| match e {
                NvrtcError::NotFound { tried } => tried,
                other => other.to_string(),
            })
        })
        .as_ref()
        .map_err(|tried| NvrtcError::NotFound {
            tried: tried.clone(),
        })
}

/// Opens the first of `candidates` that loads and has every function.
fn open_first(candidates: &[&str]) -> Result<Nvrtc, NvrtcError> {
    let mut failures = Vec::new();
    for name in candidates {
        match open(name) {
            Ok(nvrtc) => return Ok(nvrtc),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Err(NvrtcError::NotFound {
        tried: failures.join("; "),
    })
}

fn open(name: &str) -> Result<Nvrtc, libloading::Error> {
    // SAFETY: loading NVIDIA's compiler library runs only its initialisers.
    let library = unsafe { Library::new(name) }?;
    Ok(Nvrtc {
        library_name: name.to_string(),
        version: symbol(&library, b"nvrtcVersion\0")?,
        get_num_supported_archs: symbol(&library, b"nvrtcGetNumSupportedArchs\0")?,
        get_supported_archs: symbol(&library, b"nvrtcGetSupportedArchs\0")?,
        create_program: symbol(&library, b"nvrtcCreateProgram\0")?,
        compile_program: symbol(&library, b"nvrtcCompileProgram\0")?,
        get_program_log_size: symbol(&library, b"nvrtcGetProgramLogSize\0")?,
        get_program_log: symbol(&library, b"nvrtcGetProgramLog\0")?,
        get_cubin_size: symbol(&library, b"nvrtcGetCUBINSize\0")?,
        get_cubin: symbol(&library, b"nvrtcGetCUBIN\0")?,
        get_ptx_size: symbol(&library, b"nvrtcGetPTXSize\0")?,
        get_ptx: symbol(&library, b"nvrtcGetPTX\0")?,
        destroy_program: symbol(&library, b"nvrtcDestroyProgram\0")?,
        get_error_string: symbol(&library, b"nvrtcGetErrorString\0")?,
        _library: library,
    })
}

/// The function `name` (NUL-terminated) of `library`, as a pointer of type `F`.
fn symbol<F: Copy>(library: &Library, name: &[u8]) -> Result<F, libloading::Error> {
    // SAFETY: every caller names one of NVRTC's C functions with `F` its
    // signature from nvrtc.h (the same in NVRTC 12 and 13); the pointer is
    // copied out and stays valid while the `Library`, kept in `Nvrtc`, lives.
    unsafe { library.get::<F>(name).map(|f| *f) }
}

impl Nvrtc {
    /// `Err` naming `call` and NVRTC's own words for a failed status.
    fn check(&self, call: &'static str, status: Status) -> Result<(), NvrtcError> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString takes any status and returns a static
        // NUL-terminated string (or null, handled).
        let message = unsafe {
            let text = (self.get_error_string)(status);
            if text.is_null() {
                String::new()
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            }
        };
        Err(NvrtcError::Call {
            call,
            code: status,
            message,
        })
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> Result<(i32, i32), NvrtcError> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let status = unsafe { (self.version)(&mut major, &mut minor) };
        self.check("nvrtcVersion", status)?;
        Ok((major, minor))
    }

    /// The real architectures NVRTC compiles for (90 for sm_90), ascending.
    pub fn supported_archs(&self) -> Result<Vec<i32>, NvrtcError> {
        let mut count = 0;
        // SAFETY: a valid out-pointer.
        let status = unsafe { (self.get_num_supported_archs)(&mut count) };
        self.check("nvrtcGetNumSupportedArchs", status)?;
        let mut archs = vec![0; count.max(0) as usize];
        // SAFETY: the buffer holds as many entries as NVRTC reported.
        let status = unsafe { (self.get_supported_archs)(archs.as_mut_ptr()) };
        self.check("nvrtcGetSupportedArchs", status)?;
        archs.sort_unstable();
        Ok(archs)
    }

    /// A program of `source`, named `name` in NVRTC's messages, with no
    /// headers (the kernels' source has them inlined).
    pub fn program(&self, source: &CStr, name: &CStr) -> Result<Program<'_>, NvrtcError> {
        let mut handle: RawProgram = std::ptr::null_mut();
        // SAFETY: a valid out-pointer and NUL-terminated strings that outlive
        // the call (NVRTC copies them); zero headers, so null header arrays.
        let status = unsafe {
            (self.create_program)(
                &mut handle,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.check("nvrtcCreateProgram", status)?;
        Ok(Program {
            nvrtc: self,
            handle,
        })
    }
}

/// One NVRTC program, destroyed when dropped.
pub struct Program<'a> {
    nvrtc: &'a Nvrtc,
    handle: RawProgram,
}

impl Program<'_> {
    /// Compiles the program with `options` (e.g. `--gpu-architecture=sm_90`);
    /// on failure the reason is in [`Program::log`].
    pub fn compile(&self, options: &[CString]) -> Result<(), NvrtcError> {
        let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let count = c_int::try_from(pointers.len()).expect("a handful of options");
        // SAFETY: a live program and `count` NUL-terminated strings that
        // outlive the call.
        let status = unsafe { (self.nvrtc.compile_program)(self.handle, count, pointers.as_ptr()) };
        self.nvrtc.check("nvrtcCompileProgram", status)
    }

    /// The compiler's log (errors and warnings), trimmed; empty for a clean build.
    pub fn log(&self) -> Result<String, NvrtcError> {
        let bytes = self.read(
            ("nvrtcGetProgramLogSize", self.nvrtc.get_program_log_size),
            ("nvrtcGetProgramLog", self.nvrtc.get_program_log),
        )?;
        Ok(text(&bytes))
    }

    /// The compiled PTX text.
    pub fn ptx(&self) -> Result<String, NvrtcError> {
        let bytes = self.read(
            ("nvrtcGetPTXSize", self.nvrtc.get_ptx_size),
            ("nvrtcGetPTX", self.nvrtc.get_ptx),
        )?;
        Ok(text(&bytes))
    }

    /// The compiled cubin (an ELF image), for a real architecture `sm_XY`.
    pub fn cubin(&self) -> Result<Vec<u8>, NvrtcError> {
        self.read(
            ("nvrtcGetCUBINSize", self.nvrtc.get_cubin_size),
            ("nvrtcGetCUBIN", self.nvrtc.get_cubin),
        )
    }

    /// Reads one of the program's outputs: its size, then the bytes.
    fn read(
        &self,
        (size_call, size_fn): (&'static str, OutputSizeFn),
        (read_call, read_fn): (&'static str, OutputFn),
    ) -> Result<Vec<u8>, NvrtcError> {
        let mut size = 0usize;
        // SAFETY: a live program and a valid out-pointer.
        self.nvrtc
            .check(size_call, unsafe { size_fn(self.handle, &mut size) })?;
        let mut buffer = vec![0u8; size];
        // SAFETY: a live program and a buffer of the size NVRTC reported.
        self.nvrtc.check(read_call, unsafe {
            read_fn(self.handle, buffer.as_mut_ptr().cast())
        })?;
        Ok(buffer)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is live and destroyed exactly once, here.
        let status = unsafe { (self.nvrtc.destroy_program)(&mut self.handle) };
        if let Err(e) = self.nvrtc.check("nvrtcDestroyProgram", status) {
            tracing::warn!(error = %e, "NVRTC program not destroyed");
        }
    }
}

/// NVRTC's NUL-terminated text as a trimmed string.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_nvrtc_is_tried_first() {
        assert_eq!(LIBRARY_CANDIDATES[0], "libnvrtc.so.13");
        assert_eq!(LIBRARY_CANDIDATES[1], "libnvrtc.so.12");
        assert_eq!(LIBRARY_CANDIDATES.last(), Some(&"libnvrtc.so"));
    }

    #[test]
    fn a_missing_library_is_an_error_naming_what_was_tried() {
        let err = open_first(&["libnvrtc-not-here.so.99", "/nonexistent/libnvrtc.so"])
            .err()
            .expect("nothing to open");
        let message = err.to_string();
        assert!(matches!(err, NvrtcError::NotFound { .. }), "{message}");
        assert!(message.contains("libnvrtc-not-here.so.99"), "{message}");
        assert!(message.contains("/nonexistent/libnvrtc.so"), "{message}");
        assert!(message.contains(LIBRARY_ENV), "{message}");
    }

    #[test]
    fn a_library_without_nvrtc_functions_is_refused() {
        // The C library loads but has no nvrtcVersion: refused, not a crash.
        let err = open_first(&["libc.so.6"]).err().expect("not NVRTC");
        assert!(err.to_string().contains("nvrtcVersion"), "{err}");
    }

    #[test]
    fn outputs_are_read_up_to_their_terminator() {
        assert_eq!(text(b"  warning: x \n\0"), "warning: x");
        assert_eq!(text(b""), "");
    }
}
