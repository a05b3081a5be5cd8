/// Why an AI request failed. Transports decide what their clients see (the
/// ai-runner HTTP API in `ai_runner_api::error`, the gRPC worker in
/// `worker::service`).
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// A request field is missing or not of its type (`field` names it).
    #[error("{field}: {msg}")]
    Validation { field: String, msg: String },
    /// The request is well formed but unusable: input that does not decode,
    /// parameters out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No loaded model serves this pipeline / model id.
    #[error("{0}")]
    UnknownModel(String),
    /// The input is larger than the pipeline takes.
    #[error("{0}")]
    TooLarge(String),
    /// The input is of a media type the pipeline cannot read.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The model is running as many requests as it has slots for.
    #[error("{0}")]
    Busy(String),
    /// The model or its runtime failed.
    #[error("{0}")]
    Internal(String),
}

impl AiError {
    /// A required field the request lacks.
    pub fn missing(field: &str) -> AiError {
        AiError::Validation {
            field: field.to_string(),
            msg: "Field required".into(),
        }
    }

    /// A field whose value is not of its type.
    pub fn invalid(field: &str, msg: impl Into<String>) -> AiError {
        AiError::Validation {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
