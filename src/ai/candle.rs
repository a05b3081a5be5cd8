//! Candle, the runtime of the generative pipelines: the device models run on
//! and the loading of Hugging Face safetensors weights.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::AiError;

/// The device Candle models run on: the first CUDA GPU when this build has
/// Candle's CUDA backend (feature `candle-cuda`) and a GPU is present, else
/// the CPU. That backend compiles its kernels with nvcc at build time, which
/// the `nvidia` feature must not need, hence a feature of its own.
pub fn device() -> Device {
    match Device::cuda_if_available(0) {
        Ok(device) => device,
        Err(e) => {
            tracing::warn!(error = %e, "CUDA device unavailable; Candle models run on the CPU");
            Device::Cpu
        }
    }
}

/// A runtime error as the client sees it: its first line (Candle appends a
/// backtrace when RUST_BACKTRACE is set; that goes to the log, not the client).
pub fn model_error(context: &str, e: impl std::fmt::Display) -> AiError {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default();
    if full.len() > first.len() {
        tracing::debug!(context, error = %full, "model error");
    }
    AiError::Internal(format!("{context}: {first}"))
}

/// The weight files of a model folder: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` lists, or every `*.safetensors` there.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, AiError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if let Ok(text) = std::fs::read_to_string(&index) {
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| model_error(&index.display().to_string(), e))?;
        let mut files: Vec<PathBuf> = json["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str())
                    .map(|f| dir.join(f))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| model_error(&dir.display().to_string(), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(AiError::UnknownModel(format!(
            "no safetensors weights in {}",
            dir.display()
        )));
    }
    Ok(files)
}

/// Weights of a model folder (or of one subfolder, as diffusers lays them out).
pub fn weights(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, AiError> {
    let files = safetensors_files(dir)?;
    // SAFETY: the weight files are memory-mapped read-only; lpworker never
    // writes them, and operators must not rewrite a model folder while it is
    // being served (the same contract as every mmap-based model loader).
    unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
        .map_err(|e| model_error(&format!("loading weights from {}", dir.display()), e))
}

/// Runs a model constructor that may panic on malformed weights (some of
/// Candle's model loaders unwrap), turning the panic into an error so that a
/// bad model folder fails its load instead of the process.
pub fn load_guarded<T>(
    what: &str,
    load: impl FnOnce() -> candle_core::Result<T>,
) -> Result<T, AiError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
        Ok(Ok(model)) => Ok(model),
        Ok(Err(e)) => Err(model_error(what, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            Err(model_error(what, msg))
        }
    }
}

/// Reads and parses a JSON file of a model folder.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, AiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AiError::UnknownModel(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| model_error(&path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_loader_becomes_an_error() {
        let r: Result<(), AiError> = load_guarded("tiny", || panic!("missing tensor"));
        let e = r.unwrap_err();
        assert!(matches!(e, AiError::Internal(_)), "{e:?}");
        assert!(e.to_string().contains("missing tensor"), "{e}");
    }

    #[test]
    fn a_folder_without_weights_is_refused() {
        let dir = std::env::temp_dir().join(format!("lpw-noweights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = safetensors_files(&dir).unwrap_err();
        assert!(matches!(e, AiError::UnknownModel(_)), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
