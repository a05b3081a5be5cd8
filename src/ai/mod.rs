//! The AI engine: pipelines compatible with livepeer/ai-runner, run in
//! process, each on the runtime its model needs: the image models (upscale,
//! image-transform) on ONNX Runtime through [`onnx::OnnxModel`]; OCR and
//! voice detection on ONNX Runtime through [`onnx::OnnxSession`]; the
//! generative ones (text-to-image, image-to-image, image-to-text, llm,
//! audio-to-text, with Whisper) on Candle. Every pipeline implements
//! [`Pipeline`] and is loaded into the [`registry::Registry`]. The engine
//! knows nothing of transports: the ai-runner HTTP API
//! (`crate::ai_runner_api`), the gRPC worker and go-livepeer's AI worker
//! protocol are adapters over the registry.

pub mod audio;
pub mod blip;
pub mod candle;
pub mod config;
pub mod diffusion;
mod error;
#[cfg(test)]
pub(crate) mod golden_diff;
pub mod live;
pub mod llm;
pub mod media;
pub mod ocr;
pub mod onnx;
pub mod pipelines;
pub mod registry;
pub mod tokenizer;
pub mod vad;
pub mod whisper;

use std::collections::HashMap;

pub use error::AiError;
pub use pipelines::{Pipeline, PipelineKind};
pub use registry::Registry;

/// One request, as any transport delivers it: ai-runner's fields (form
/// fields arrive as strings, JSON bodies typed) and its file fields.
#[derive(Debug, Default, Clone)]
pub struct PipelineRequest {
    pub params: serde_json::Map<String, serde_json::Value>,
    pub files: HashMap<String, Vec<u8>>,
}

/// A binary output referenced from the response body by its name.
#[derive(Debug, Clone)]
pub struct OutputFile {
    pub name: String,
    pub mime: &'static str,
    pub data: Vec<u8>,
}

/// A pipeline's result: ai-runner's response JSON, in which every media `url`
/// holds the name of one of `files` (transports turn it into a data URL or
/// an attachment), plus what the request costs in billing units.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    pub body: serde_json::Value,
    pub files: Vec<OutputFile>,
    pub units: u64,
    /// "pixels", "ms" or "tokens".
    pub unit_kind: &'static str,
}

impl PipelineRequest {
    pub fn string(&self, field: &str) -> Result<Option<String>, AiError> {
        match self.params.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(AiError::invalid(
                field,
                format!("expected a string, got {other}"),
            )),
        }
    }

    pub fn required_string(&self, field: &str) -> Result<String, AiError> {
        self.string(field)?.ok_or_else(|| AiError::missing(field))
    }

    /// An integer field, typed or (from a form) as text.
    pub fn integer(&self, field: &str) -> Result<Option<i64>, AiError> {
        match self.params.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| AiError::invalid(field, "expected an integer")),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| AiError::invalid(field, "Input should be a valid integer")),
            Some(_) => Err(AiError::invalid(field, "Input should be a valid integer")),
        }
    }

    /// A number field, typed or (from a form) as text.
    pub fn number(&self, field: &str) -> Result<Option<f64>, AiError> {
        let invalid = || AiError::invalid(field, "Input should be a valid number");
        match self.params.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => n.as_f64().map(Some).ok_or_else(invalid),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(invalid),
            Some(_) => Err(invalid()),
        }
    }

    /// A boolean field, typed or as FastAPI accepts it from a form.
    pub fn boolean(&self, field: &str) -> Result<Option<bool>, AiError> {
        match self.params.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
            Some(serde_json::Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => Ok(Some(true)),
                "false" | "0" | "no" | "off" | "f" | "n" => Ok(Some(false)),
                _ => Err(AiError::invalid(field, "Input should be a valid boolean")),
            },
            Some(_) => Err(AiError::invalid(field, "Input should be a valid boolean")),
        }
    }

    pub fn required_file(&self, field: &str) -> Result<&[u8], AiError> {
        self.files
            .get(field)
            .map(Vec::as_slice)
            .ok_or_else(|| AiError::missing(field))
    }
}
