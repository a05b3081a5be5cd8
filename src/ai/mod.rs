//! The AI engine: pipelines compatible with livepeer/ai-runner, run in
//! process. A pipeline owns a model behind the small [`Infer`] trait, whose
//! runtime (ONNX Runtime for image models, Candle for generative ones) is
//! chosen per model; the transports (the
//! ai-runner HTTP API, the gRPC `Infer` call, go-livepeer's AI worker
//! protocol) sit on top of the [`registry::Registry`].

pub mod audio;
pub mod candle;
pub mod config;
pub mod diffusion;
mod error;
pub mod http;
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

use ndarray::{ArrayD, ArrayViewD};

pub use error::AiError;
pub use pipelines::{Pipeline, PipelineKind};
pub use registry::Registry;

/// A loaded model mapping one tensor to another. The input is borrowed and
/// the output left in the runtime's own buffer: a 2x upscaler's output is
/// megabytes, and copying it costs as much as running the model.
pub trait Infer: Send + Sync {
    /// "onnx" or "candle".
    fn runtime(&self) -> &'static str;
    fn infer(&self, input: ArrayViewD<'_, f32>) -> Result<Tensor, AiError>;
}

/// A model's output: ONNX Runtime's output value, read in place, or an array.
pub struct Tensor(TensorData);

enum TensorData {
    Array(ArrayD<f32>),
    Onnx(ort::value::Tensor<f32>),
}

impl Tensor {
    /// An ONNX Runtime output; fails unless it is an f32 tensor the CPU can
    /// read (so that [`Tensor::view`] succeeds later).
    pub fn from_onnx(value: ort::value::DynValue) -> Result<Tensor, AiError> {
        let fail = |e: ort::Error| AiError::Internal(format!("model output: {e}"));
        let tensor = value
            .downcast::<ort::value::TensorValueType<f32>>()
            .map_err(fail)?;
        tensor.try_extract_array::<f32>().map_err(fail)?;
        Ok(Tensor(TensorData::Onnx(tensor)))
    }

    /// The values, without copying.
    pub fn view(&self) -> Result<ArrayViewD<'_, f32>, AiError> {
        match &self.0 {
            TensorData::Array(a) => Ok(a.view()),
            TensorData::Onnx(t) => t
                .try_extract_array::<f32>()
                .map_err(|e| AiError::Internal(format!("model output: {e}"))),
        }
    }

    /// The values as an owned array (copies an ONNX Runtime output).
    pub fn into_array(self) -> Result<ArrayD<f32>, AiError> {
        match self.0 {
            TensorData::Array(a) => Ok(a),
            TensorData::Onnx(_) => self.view().map(|v| v.to_owned()),
        }
    }
}

impl From<ArrayD<f32>> for Tensor {
    fn from(array: ArrayD<f32>) -> Tensor {
        Tensor(TensorData::Array(array))
    }
}

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
