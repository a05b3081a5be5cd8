/// Why an AI request failed, with the HTTP status ai-runner would answer.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// A required field is missing or has the wrong type (FastAPI's 422).
    #[error("{field}: {msg}")]
    Validation { field: String, msg: String },
    /// The request is well formed but unusable (400).
    #[error("{0}")]
    BadRequest(String),
    /// No loaded model serves this pipeline / model id (400, as ai-runner
    /// answers requests for a model it does not run).
    #[error("{0}")]
    UnknownModel(String),
    /// Input too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// Input media type not supported (415).
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The worker is at capacity for this model (503).
    #[error("{0}")]
    Busy(String),
    /// The model or runtime failed (500).
    #[error("{0}")]
    Internal(String),
}

impl AiError {
    pub fn http_status(&self) -> u16 {
        match self {
            AiError::Validation { .. } => 422,
            AiError::BadRequest(_) | AiError::UnknownModel(_) => 400,
            AiError::TooLarge(_) => 413,
            AiError::UnsupportedMedia(_) => 415,
            AiError::Busy(_) => 503,
            AiError::Internal(_) => 500,
        }
    }

    pub fn missing(field: &str) -> AiError {
        AiError::Validation {
            field: field.to_string(),
            msg: "Field required".into(),
        }
    }

    pub fn invalid(field: &str, msg: impl Into<String>) -> AiError {
        AiError::Validation {
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    /// ai-runner's JSON error body: `{"detail": {"msg": ...}}`, or FastAPI's
    /// validation list for 422.
    pub fn body(&self) -> serde_json::Value {
        match self {
            AiError::Validation { field, msg } => serde_json::json!({
                "detail": [{"loc": ["body", field], "msg": msg, "type": if msg == "Field required" { "missing" } else { "value_error" }}]
            }),
            other => serde_json::json!({"detail": {"msg": other.to_string()}}),
        }
    }
}
