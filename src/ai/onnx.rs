//! ONNX models through ONNX Runtime (`ort`), loaded dynamically from the
//! `libonnxruntime` a system or the PyPI `onnxruntime` wheel provides; the CUDA
//! execution provider is used when the library has it and a GPU is present.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::ArrayD;

use super::{AiError, Infer};

/// Finds `libonnxruntime`: `ORT_DYLIB_PATH`, then the library next to the
/// executable, then the PyPI wheel in a project `.venv` or a system/pyenv
/// site-packages, then the system library directories.
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        return Some(p);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        roots.push(dir.join("lib"));
        roots.push(dir.clone());
    }
    let mut site_packages = vec![PathBuf::from(".venv/lib")];
    if let Some(home) = std::env::var_os("HOME") {
        let pyenv = PathBuf::from(home).join(".pyenv/versions");
        if let Ok(versions) = std::fs::read_dir(pyenv) {
            site_packages.extend(versions.flatten().map(|v| v.path().join("lib")));
        }
    }
    site_packages.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    for lib in site_packages {
        if let Ok(pythons) = std::fs::read_dir(&lib) {
            for py in pythons
                .flatten()
                .filter(|p| p.file_name().to_string_lossy().starts_with("python3"))
            {
                for sub in ["site-packages", "dist-packages"] {
                    roots.push(py.path().join(sub).join("onnxruntime/capi"));
                }
            }
        }
    }
    roots.extend(["/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib"].map(PathBuf::from));
    roots.into_iter().find_map(|dir| {
        let entries = std::fs::read_dir(&dir).ok()?;
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
            })
            .min_by_key(|p| p.as_os_str().len())
    })
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (or [`find_library`]'s choice) if it is
/// not loaded yet. Call before loading models to choose the library.
pub fn init(library: Option<&Path>) -> Result<(), AiError> {
    environment(library).map(|_| ())
}

/// Loads ONNX Runtime once per process.
pub fn environment(
    library: Option<&Path>,
) -> Result<&'static ort::environment::Environment, AiError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = library.map(Path::to_path_buf).or_else(find_library).ok_or_else(|| {
            "libonnxruntime not found: install the onnxruntime Python wheel or set ORT_DYLIB_PATH".to_string()
        })?;
        let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        builder
            .with_name("lpworker")
            .build()
            .map_err(|e| format!("ONNX Runtime environment: {e}"))
    });
    env.as_ref().map_err(|e| AiError::Internal(e.clone()))
}

/// One ONNX model with a single image-like input and output.
pub struct OnnxModel {
    // `Session::run` takes `&mut self`; requests to one model are serialised
    // here and parallelism comes from ONNX Runtime's intra-op threads.
    session: Mutex<ort::session::Session>,
    input: String,
    output: String,
}

impl OnnxModel {
    /// Loads `path`; `input`/`output` name the tensors (the first ones when None).
    pub fn load(
        path: &Path,
        input: Option<&str>,
        output: Option<&str>,
        threads: usize,
    ) -> Result<Self, AiError> {
        let env = environment(None)?;
        let fail = |e: ort::Error| AiError::Internal(format!("loading {}: {e}", path.display()));
        let mut builder = ort::session::Session::builder(env).map_err(fail)?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| fail(e.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(fail)?;
        let pick =
            |wanted: Option<&str>, names: Vec<String>, what: &str| -> Result<String, AiError> {
                match wanted {
                    Some(w) if names.iter().any(|n| n == w) => Ok(w.to_string()),
                    Some(w) => Err(AiError::Internal(format!(
                        "{}: no {what} named {w:?} (has {names:?})",
                        path.display()
                    ))),
                    None => names
                        .into_iter()
                        .next()
                        .ok_or_else(|| AiError::Internal(format!("{}: no {what}", path.display()))),
                }
            };
        let input = pick(
            input,
            session
                .inputs()
                .iter()
                .map(|i| i.name().to_string())
                .collect(),
            "input",
        )?;
        let output = pick(
            output,
            session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect(),
            "output",
        )?;
        Ok(OnnxModel {
            session: Mutex::new(session),
            input,
            output,
        })
    }
}

impl Infer for OnnxModel {
    fn runtime(&self) -> &'static str {
        "onnx"
    }

    fn infer(&self, input: ArrayD<f32>) -> Result<ArrayD<f32>, AiError> {
        let fail = |e: ort::Error| AiError::Internal(format!("ONNX Runtime: {e}"));
        let tensor = ort::value::TensorRef::from_array_view(input.view()).map_err(fail)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| AiError::Internal("model lock poisoned".into()))?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(fail)?;
        let output = outputs
            .get(self.output.as_str())
            .ok_or_else(|| AiError::Internal(format!("model produced no {:?}", self.output)))?;
        Ok(output.try_extract_array::<f32>().map_err(fail)?.to_owned())
    }
}
