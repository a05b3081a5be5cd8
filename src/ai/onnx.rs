//! ONNX models through ONNX Runtime (`ort`), loaded dynamically from the
//! `libonnxruntime` a system or the PyPI `onnxruntime` wheel provides; the CUDA
//! execution provider is used when the library has it and a GPU is present.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, ArrayViewD};

use super::AiError;

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
    roots.extend(
        python_site_packages()
            .into_iter()
            .map(|dir| dir.join("onnxruntime/capi")),
    );
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

/// The Python package directories that may hold ONNX Runtime's wheel or a
/// PyPI package's model files, most specific first: the project `.venv`,
/// pyenv's versions, then the system's site-/dist-packages.
fn python_site_packages() -> Vec<PathBuf> {
    let mut lib_dirs = vec![PathBuf::from(".venv/lib")];
    if let Some(home) = std::env::var_os("HOME") {
        let pyenv = PathBuf::from(home).join(".pyenv/versions");
        if let Ok(versions) = std::fs::read_dir(pyenv) {
            lib_dirs.extend(versions.flatten().map(|v| v.path().join("lib")));
        }
    }
    lib_dirs.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut dirs = Vec::new();
    for lib in lib_dirs {
        if let Ok(pythons) = std::fs::read_dir(&lib) {
            for py in pythons
                .flatten()
                .filter(|p| p.file_name().to_string_lossy().starts_with("python3"))
            {
                for sub in ["site-packages", "dist-packages"] {
                    dirs.push(py.path().join(sub));
                }
            }
        }
    }
    dirs
}

/// Finds a file a PyPI package ships (`relative` to site-packages, e.g.
/// `silero_vad/data/silero_vad.onnx`) where [`find_library`] looks for the
/// ONNX Runtime wheel.
pub fn find_package_file(relative: &Path) -> Option<PathBuf> {
    python_site_packages()
        .into_iter()
        .map(|dir| dir.join(relative))
        .find(|p| p.is_file())
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

/// Whether the loaded ONNX Runtime has the CUDA execution provider (the
/// `onnxruntime-gpu` wheel does, the `onnxruntime` one does not).
pub fn cuda_available() -> bool {
    use ort::ep::ExecutionProvider;
    environment(None).is_ok() && ort::ep::CUDA::is_available().unwrap_or(false)
}

/// Opens `path` as an ONNX Runtime session in the process environment, with
/// `threads` intra-op threads (ONNX Runtime's default when 0), on the GPU
/// through the CUDA execution provider when the library has it; ONNX Runtime
/// falls back to the CPU when registering it fails (no GPU or driver).
pub fn session(path: &Path, threads: usize) -> Result<ort::session::Session, AiError> {
    let env = environment(None)?;
    let fail = |e: ort::Error| AiError::Internal(format!("loading {}: {e}", path.display()));
    let mut builder = ort::session::Session::builder(env).map_err(fail)?;
    if cuda_available() {
        tracing::info!(model = %path.display(), "ONNX Runtime CUDA execution provider requested");
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build()])
            .map_err(|e| fail(e.into()))?;
    }
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| fail(e.into()))?;
    }
    builder.commit_from_file(path).map_err(fail)
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
        let session = session(path, threads)?;
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

impl OnnxModel {
    /// "onnx", the runtime a pipeline reports.
    pub fn runtime(&self) -> &'static str {
        "onnx"
    }

    /// Runs the model on `input`. The input is borrowed and the output left
    /// in ONNX Runtime's own buffer: a 2x upscaler's output is megabytes, and
    /// copying it costs as much as running the model.
    pub fn infer(&self, input: ArrayViewD<'_, f32>) -> Result<Tensor, AiError> {
        let fail = |e: ort::Error| AiError::Internal(format!("ONNX Runtime: {e}"));
        // A standard-layout view is handed to ONNX Runtime in place.
        let tensor = ort::value::TensorRef::from_array_view(input).map_err(fail)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| AiError::Internal("model lock poisoned".into()))?;
        let mut outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(fail)?;
        let output = outputs
            .remove(self.output.as_str())
            .ok_or_else(|| AiError::Internal(format!("model produced no {:?}", self.output)))?;
        Tensor::from_onnx(output)
    }
}

/// An [`OnnxModel`]'s output: ONNX Runtime's output value, read in place.
pub struct Tensor(ort::value::Tensor<f32>);

impl Tensor {
    /// An ONNX Runtime output; fails unless it is an f32 tensor the CPU can
    /// read (so that [`Tensor::view`] succeeds later).
    fn from_onnx(value: ort::value::DynValue) -> Result<Tensor, AiError> {
        let fail = |e: ort::Error| AiError::Internal(format!("model output: {e}"));
        let tensor = value
            .downcast::<ort::value::TensorValueType<f32>>()
            .map_err(fail)?;
        tensor.try_extract_array::<f32>().map_err(fail)?;
        Ok(Tensor(tensor))
    }

    /// The values, without copying.
    pub fn view(&self) -> Result<ArrayViewD<'_, f32>, AiError> {
        self.0
            .try_extract_array::<f32>()
            .map_err(|e| AiError::Internal(format!("model output: {e}")))
    }

    /// The values as an owned array (a copy of ONNX Runtime's buffer).
    pub fn into_array(self) -> Result<ArrayD<f32>, AiError> {
        self.view().map(|v| v.to_owned())
    }
}

/// One input tensor of an [`OnnxSession`] run.
pub enum OnnxInput<'a> {
    F32(ArrayViewD<'a, f32>),
    I64(ArrayViewD<'a, i64>),
}

/// An ONNX model with any number of named inputs and float outputs, for
/// models that do not fit [`OnnxModel`]'s one-image-in, one-image-out shape
/// (recurrent state, scalar parameters, several results).
pub struct OnnxSession {
    // Serialised as in `OnnxModel`: `Session::run` takes `&mut self`.
    session: Mutex<ort::session::Session>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl OnnxSession {
    pub fn load(path: &Path, threads: usize) -> Result<Self, AiError> {
        let session = session(path, threads)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(OnnxSession {
            session: Mutex::new(session),
            inputs,
            outputs,
        })
    }

    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The model's custom metadata value for `key` (ONNX `metadata_props`).
    pub fn metadata(&self, key: &str) -> Result<Option<String>, AiError> {
        let session = self.lock()?;
        let metadata = session
            .metadata()
            .map_err(|e| AiError::Internal(format!("ONNX model metadata: {e}")))?;
        Ok(metadata.custom(key))
    }

    /// Runs the model on named inputs; returns every output, in the model's
    /// output order, as float32.
    pub fn run(&self, inputs: &[(&str, OnnxInput<'_>)]) -> Result<Vec<ArrayD<f32>>, AiError> {
        let fail = |e: ort::Error| AiError::Internal(format!("ONNX Runtime: {e}"));
        let mut values: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let value = match input {
                OnnxInput::F32(a) => ort::value::TensorRef::from_array_view(a.view())
                    .map_err(fail)?
                    .into(),
                OnnxInput::I64(a) => ort::value::TensorRef::from_array_view(a.view())
                    .map_err(fail)?
                    .into(),
            };
            values.push((*name, value));
        }
        let mut session = self.lock()?;
        let outputs = session.run(values).map_err(fail)?;
        self.outputs
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name.as_str())
                    .ok_or_else(|| AiError::Internal(format!("model produced no {name:?}")))?;
                Ok(value.try_extract_array::<f32>().map_err(fail)?.to_owned())
            })
            .collect()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ort::session::Session>, AiError> {
        self.session
            .lock()
            .map_err(|_| AiError::Internal("model lock poisoned".into()))
    }
}

#[cfg(test)]
mod cuda_tests {
    use super::*;

    #[test]
    fn the_cpu_wheel_has_no_cuda_provider_and_sessions_still_open() {
        // The test machines load the CPU-only `onnxruntime` wheel, so no CUDA
        // provider is asked for and sessions open on the CPU.
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/nearest-2x/model.onnx");
        assert!(session(&model, 1).is_ok());
        assert!(!cuda_available());
    }
}
