//! Errors on ai-runner's wire: the HTTP status each route answers and the
//! JSON body ai-runner (FastAPI) sends with it. The engine's [`AiError`] says
//! what went wrong; this module decides what a client of ai-runner's API
//! sees, within the statuses ai-runner's OpenAPI document lists per route.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ai::{AiError, PipelineKind};

/// Why an ai-runner request was not answered with a result.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The engine refused or failed the request.
    #[error(transparent)]
    Ai(#[from] AiError),
    /// The request body is over the server's size limit (413 on every route).
    #[error("{0}")]
    BodyTooLarge(String),
    /// A multipart body that does not parse (400, as Starlette answers).
    #[error("{0}")]
    MalformedBody(String),
    /// The body as a whole is not what a JSON route takes (FastAPI's 422
    /// located at `["body"]`).
    #[error("body: {0}")]
    InvalidBody(String),
    /// A bearer token is configured and the request lacks it (401).
    #[error("Invalid bearer token.")]
    Unauthorized,
}

impl ApiError {
    /// The status `kind`'s route answers.
    pub fn status(&self, kind: PipelineKind) -> StatusCode {
        match self {
            ApiError::Ai(e) => status(kind, e),
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The JSON body: FastAPI's validation list for a 422, otherwise
    /// ai-runner's `{"detail": {"msg": ...}}`.
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::Ai(e) => body(e),
            ApiError::InvalidBody(msg) => validation(&["body"], msg),
            other => serde_json::json!({"detail": {"msg": other.to_string()}}),
        }
    }

    /// The whole answer on `kind`'s route.
    pub fn response(&self, kind: PipelineKind) -> Response {
        let mut response = (self.status(kind), Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The status ai-runner's route for `kind` answers for an engine error. Only
/// audio-to-text lists 415 and only audio-to-text and image-to-text list 413
/// (lpworker's ocr answers as image-to-text, image-transform as upscale);
/// elsewhere input too large or of an unsupported type is a bad request
/// (400). A model at capacity is a server-side failure (500): ai-runner's API
/// has no status for it.
pub fn status(kind: PipelineKind, e: &AiError) -> StatusCode {
    match e {
        AiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        AiError::BadRequest(_) | AiError::UnknownModel(_) => StatusCode::BAD_REQUEST,
        AiError::TooLarge(_)
            if matches!(
                kind,
                PipelineKind::AudioToText | PipelineKind::ImageToText | PipelineKind::Ocr
            ) =>
        {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        AiError::UnsupportedMedia(_) if kind == PipelineKind::AudioToText => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        AiError::TooLarge(_) | AiError::UnsupportedMedia(_) => StatusCode::BAD_REQUEST,
        AiError::Busy(_) | AiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// ai-runner's JSON error body for an engine error: FastAPI's validation list
/// for a field at fault, `{"detail": {"msg": ...}}` otherwise.
pub fn body(e: &AiError) -> serde_json::Value {
    match e {
        AiError::Validation { field, msg } => validation(&["body", field], msg),
        other => serde_json::json!({"detail": {"msg": other.to_string()}}),
    }
}

/// `status` with [`body`].
pub fn respond(status: StatusCode, e: &AiError) -> Response {
    (status, Json(body(e))).into_response()
}

/// An engine error as `kind`'s route answers it.
pub fn error_response(kind: PipelineKind, e: &AiError) -> Response {
    respond(status(kind, e), e)
}

/// FastAPI's validation error body, one entry at `loc`.
fn validation(loc: &[&str], msg: &str) -> serde_json::Value {
    let kind = if msg == "Field required" {
        "missing"
    } else {
        "value_error"
    };
    serde_json::json!({"detail": [{"type": kind, "loc": loc, "msg": msg}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ai-runner's OpenAPI document: the statuses it lists for `route`.
    fn declared(route: &str) -> Vec<u16> {
        let api: serde_json::Value =
            serde_yaml::from_str(include_str!("../../tests/ai-runner-openapi.yaml")).unwrap();
        api["paths"][format!("/{route}")]["post"]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{route} is in ai-runner's API"))
            .keys()
            .map(|k| k.parse().unwrap())
            .collect()
    }

    fn every_error() -> Vec<ApiError> {
        vec![
            AiError::missing("image").into(),
            AiError::BadRequest("x".into()).into(),
            AiError::UnknownModel("x".into()).into(),
            AiError::TooLarge("x".into()).into(),
            AiError::UnsupportedMedia("x".into()).into(),
            AiError::Busy("x".into()).into(),
            AiError::Internal("x".into()).into(),
            ApiError::MalformedBody("x".into()),
            ApiError::InvalidBody("x".into()),
            ApiError::Unauthorized,
        ]
    }

    #[test]
    fn every_status_is_one_ai_runner_lists_for_the_route() {
        for kind in PipelineKind::ALL
            .into_iter()
            .filter(|k| k.capability().is_some())
        {
            let listed = declared(kind.name());
            for e in every_error() {
                let status = e.status(kind).as_u16();
                assert!(
                    listed.contains(&status),
                    "{}: {e:?} answers {status}, not in {listed:?}",
                    kind.name()
                );
            }
            // Beyond the document: a body over the size limit.
            assert_eq!(
                ApiError::BodyTooLarge("x".into()).status(kind),
                StatusCode::PAYLOAD_TOO_LARGE
            );
        }
    }

    #[test]
    fn validation_is_422_with_fastapis_list() {
        let e = ApiError::from(AiError::missing("image"));
        assert_eq!(e.status(PipelineKind::Upscale), 422);
        assert_eq!(
            e.body(),
            serde_json::json!({"detail": [{"type": "missing", "loc": ["body", "image"], "msg": "Field required"}]})
        );
        let e = ApiError::from(AiError::invalid("seed", "Input should be a valid integer"));
        assert_eq!(e.body()["detail"][0]["type"], "value_error");
    }

    #[test]
    fn an_invalid_body_is_422_at_the_body() {
        let e = ApiError::InvalidBody("Input should be a valid dictionary".into());
        assert_eq!(e.status(PipelineKind::Llm), 422);
        assert_eq!(e.body()["detail"][0]["loc"], serde_json::json!(["body"]));
    }

    #[test]
    fn bad_and_unknown_requests_are_400() {
        for e in [
            AiError::BadRequest("x".into()),
            AiError::UnknownModel("x".into()),
        ] {
            assert_eq!(status(PipelineKind::Upscale, &e), 400);
            assert_eq!(body(&e), serde_json::json!({"detail": {"msg": "x"}}));
        }
        let e = ApiError::MalformedBody("x".into());
        assert_eq!(e.status(PipelineKind::Upscale), 400);
    }

    #[test]
    fn too_large_is_413_where_the_route_lists_it() {
        let e = AiError::TooLarge("x".into());
        assert_eq!(status(PipelineKind::AudioToText, &e), 413);
        assert_eq!(status(PipelineKind::ImageToText, &e), 413);
        assert_eq!(status(PipelineKind::Upscale, &e), 400);
        let body = ApiError::BodyTooLarge("x".into());
        assert_eq!(body.status(PipelineKind::Llm), 413);
    }

    #[test]
    fn unsupported_media_is_415_only_for_audio() {
        let e = AiError::UnsupportedMedia("x".into());
        assert_eq!(status(PipelineKind::AudioToText, &e), 415);
        assert_eq!(status(PipelineKind::ImageToText, &e), 400);
        assert_eq!(status(PipelineKind::Upscale, &e), 400);
    }

    #[test]
    fn busy_and_internal_are_500() {
        for e in [AiError::Busy("x".into()), AiError::Internal("x".into())] {
            assert_eq!(status(PipelineKind::Llm, &e), 500);
            assert_eq!(body(&e)["detail"]["msg"], "x");
        }
    }

    #[test]
    fn unauthorized_is_401_with_a_challenge() {
        let r = ApiError::Unauthorized.response(PipelineKind::Upscale);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
