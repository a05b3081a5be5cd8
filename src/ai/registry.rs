//! The models a process serves, loaded from `aiModels.json` entries and a
//! local models directory in Hugging Face layout. Nothing is downloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::info;

use super::config::AiModelConfig;
use super::pipelines::audio_to_text::AudioToTextPipeline;
use super::pipelines::image::ImagePipeline;
use super::pipelines::image_to_image::ImageToImagePipeline;
use super::pipelines::image_to_text::ImageToTextPipeline;
use super::pipelines::llm::LlmPipeline;
use super::pipelines::ocr::OcrPipeline;
use super::pipelines::text_to_image::TextToImagePipeline;
use super::{AiError, Pipeline, PipelineKind, PipelineOutput, PipelineRequest};

/// What a streaming run reports.
#[derive(Debug)]
pub enum StreamEvent {
    Partial(serde_json::Value),
    Done(Result<PipelineOutput, AiError>),
}

/// One served model.
pub struct Entry {
    pub config: AiModelConfig,
    pub pipeline: Arc<dyn Pipeline>,
    /// Requests allowed at once (`capacity`, at least 1).
    pub slots: Arc<Semaphore>,
    pub capacity: u32,
}

pub struct Registry {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{}/{}", e.pipeline.kind().name(), e.pipeline.model_id())),
            )
            .finish()
    }
}

/// The directory holding `model_id`: `<dir>/<org>/<name>`, or a Hugging Face
/// cache snapshot `<dir>/models--<org>--<name>/snapshots/<rev>`.
pub fn model_dir(models_dir: &Path, model_id: &str) -> Option<PathBuf> {
    if model_id
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return None;
    }
    let direct = models_dir.join(model_id);
    if direct.is_dir() {
        return Some(direct);
    }
    let snapshots = models_dir
        .join(format!("models--{}", model_id.replace('/', "--")))
        .join("snapshots");
    std::fs::read_dir(snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
}

/// The longest model id a request may name (Hugging Face ids are at most
/// 96 characters; local ones are paths under the models directory).
pub const MAX_MODEL_ID_LEN: usize = 256;

impl Registry {
    pub fn empty() -> Registry {
        Registry {
            entries: Vec::new(),
        }
    }

    /// Loads every configured model. A pipeline this build cannot run is an
    /// error, never a silent stub.
    pub fn load(
        configs: &[AiModelConfig],
        models_dir: &Path,
        threads: usize,
    ) -> Result<Registry, AiError> {
        let mut entries = Vec::new();
        for config in configs {
            let kind = PipelineKind::from_name(&config.pipeline).ok_or_else(|| {
                AiError::UnknownModel(format!("unknown pipeline {:?}", config.pipeline))
            })?;
            let dir = model_dir(models_dir, &config.model_id).ok_or_else(|| {
                AiError::UnknownModel(format!(
                    "model {} not found under {} (see models/README.md for fetching it)",
                    config.model_id,
                    models_dir.display()
                ))
            })?;
            let pipeline: Arc<dyn Pipeline> = match kind {
                PipelineKind::Upscale | PipelineKind::ImageTransform
                    if dir.join("model.onnx").is_file() =>
                {
                    Arc::new(ImagePipeline::load_onnx(
                        kind,
                        &config.model_id,
                        &dir,
                        threads,
                    )?)
                }
                PipelineKind::ImageToImage if dir.join("unet/config.json").is_file() => {
                    Arc::new(ImageToImagePipeline::load(&config.model_id, &dir)?)
                }
                PipelineKind::ImageToImage if dir.join("model.onnx").is_file() => {
                    return Err(AiError::UnknownModel(format!(
                        "image-to-image is prompt-guided Stable Diffusion (a diffusers folder \
                         with unet/config.json) and {} is an ONNX image model: serve it as \
                         pipeline image-transform",
                        config.model_id
                    )))
                }
                PipelineKind::AudioToText if dir.join("config.json").is_file() => {
                    Arc::new(AudioToTextPipeline::load(&config.model_id, &dir)?)
                }
                PipelineKind::TextToImage if dir.join("unet/config.json").is_file() => {
                    Arc::new(TextToImagePipeline::load(&config.model_id, &dir)?)
                }
                PipelineKind::Ocr => Arc::new(OcrPipeline::load(&config.model_id, &dir, threads)?),
                PipelineKind::ImageToText if super::blip::is_blip_folder(&dir) => {
                    Arc::new(ImageToTextPipeline::load(&config.model_id, &dir)?)
                }
                PipelineKind::ImageToText => {
                    return Err(AiError::UnknownModel(format!(
                        "image-to-text is BLIP captioning and {} has no BLIP config.json \
                         (model_type \"blip\"); OCR models are served as pipeline ocr",
                        config.model_id
                    )))
                }
                PipelineKind::Llm if dir.join("config.json").is_file() => {
                    Arc::new(LlmPipeline::load(&config.model_id, &dir)?)
                }
                _ => {
                    return Err(AiError::UnknownModel(format!(
                        "pipeline {} with model {} is not supported by this lpworker build",
                        kind.name(),
                        config.model_id
                    )))
                }
            };
            let capacity = config.capacity.max(1);
            info!(pipeline = kind.name(), model = %config.model_id, runtime = pipeline.runtime(), capacity, "model loaded");
            entries.push(Entry {
                config: config.clone(),
                pipeline,
                slots: Arc::new(Semaphore::new(capacity as usize)),
                capacity,
            });
        }
        Ok(Registry { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The model for `kind` named `model_id`, or the pipeline's first model
    /// when `model_id` is empty. An id longer than [`MAX_MODEL_ID_LEN`] is
    /// refused as such, and an unknown one is named back clipped.
    pub fn find(&self, kind: PipelineKind, model_id: &str) -> Result<&Entry, AiError> {
        if model_id.len() > MAX_MODEL_ID_LEN {
            return Err(AiError::BadRequest(format!(
                "model_id is longer than {MAX_MODEL_ID_LEN} bytes"
            )));
        }
        self.entries
            .iter()
            .filter(|e| e.pipeline.kind() == kind)
            .find(|e| model_id.is_empty() || e.pipeline.model_id() == model_id)
            .ok_or_else(|| {
                if model_id.is_empty() {
                    AiError::UnknownModel(format!(
                        "no model is loaded for pipeline {}",
                        kind.name()
                    ))
                } else {
                    AiError::UnknownModel(format!(
                        "model {} is not loaded for pipeline {}",
                        crate::log_limit::clip(model_id, 64),
                        kind.name()
                    ))
                }
            })
    }

    /// The pipeline serving the request's model (or the default) and a slot
    /// on it, refusing with `Busy` when that model is at capacity.
    fn admit(
        &self,
        kind: PipelineKind,
        request: &PipelineRequest,
    ) -> Result<(Arc<dyn Pipeline>, OwnedSemaphorePermit), AiError> {
        let model_id = request.string(kind.model_field())?.unwrap_or_default();
        let entry = self.find(kind, &model_id)?;
        let permit = Arc::clone(&entry.slots).try_acquire_owned().map_err(|_| {
            AiError::Busy(format!(
                "model {} is at capacity ({})",
                entry.pipeline.model_id(),
                entry.capacity
            ))
        })?;
        Ok((Arc::clone(&entry.pipeline), permit))
    }

    /// Runs the request's partial results into a channel as they come (see
    /// [`Pipeline::run_streaming`]); the last event is the outcome. Dropping
    /// the receiver stops the work.
    pub fn run_streaming(
        &self,
        kind: PipelineKind,
        request: PipelineRequest,
    ) -> Result<mpsc::Receiver<StreamEvent>, AiError> {
        let (pipeline, permit) = self.admit(kind, &request)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::task::spawn_blocking(move || {
            let result = pipeline.run_streaming(&request, &mut |event| {
                tx.blocking_send(StreamEvent::Partial(event)).is_ok()
            });
            // Free the slot before reporting the outcome, so that a client's
            // next request never finds its own finished one still holding it.
            drop(permit);
            let _ = tx.blocking_send(StreamEvent::Done(result));
        });
        Ok(rx)
    }

    /// Runs `kind` on the model the request names (or the default), refusing
    /// with `Busy` when that model is at capacity; the work runs off the async
    /// threads.
    pub async fn run(
        &self,
        kind: PipelineKind,
        request: PipelineRequest,
    ) -> Result<PipelineOutput, AiError> {
        let (pipeline, permit) = self.admit(kind, &request)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pipeline.run(&request)
        })
        .await
        .map_err(|e| AiError::Internal(format!("pipeline task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let config: AiModelConfig = serde_json::from_value(
            serde_json::json!({"pipeline": "upscale", "model_id": "lpworker/nearest-2x"}),
        )
        .unwrap();
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        Registry::load(&[config], &models, 1).unwrap()
    }

    #[test]
    fn long_and_unknown_model_ids_are_refused_and_named_back_clipped() {
        let registry = registry();
        let kind = PipelineKind::Upscale;
        assert!(registry.find(kind, "lpworker/nearest-2x").is_ok());
        assert!(registry.find(kind, "").is_ok(), "the pipeline's first");

        let long = "m".repeat(MAX_MODEL_ID_LEN + 1);
        let Err(AiError::BadRequest(msg)) = registry.find(kind, &long) else {
            panic!("a model id over the cap is a bad request")
        };
        assert!(!msg.contains(&long[..65]), "{msg}");

        let unknown = "u".repeat(MAX_MODEL_ID_LEN);
        let Err(AiError::UnknownModel(msg)) = registry.find(kind, &unknown) else {
            panic!("an unknown model is refused")
        };
        assert!(msg.len() < 150 && msg.contains('…'), "{msg}");
        let Err(AiError::UnknownModel(msg)) = registry.find(kind, "org/other") else {
            panic!("an unknown model is refused")
        };
        assert!(msg.contains("org/other"), "{msg}");
    }
}
