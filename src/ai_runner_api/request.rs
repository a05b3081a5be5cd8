//! Reading an ai-runner request: a multipart form on the routes that take a
//! file, a JSON object on the others, refused as FastAPI refuses them.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};

use super::error::ApiError;
use crate::ai::{AiError, PipelineKind, PipelineRequest};

/// Request bodies larger than this are refused (ai-runner's audio limit is 50 MiB).
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

/// Reads a multipart form (file fields by the pipeline's file field name,
/// everything else as text) or a JSON object body, by the route's kind.
///
/// A body that is not what the route takes is a validation error (422), as
/// FastAPI answers it: a form route without a multipart body reads an empty
/// form and misses its file field; a JSON route takes any body without a
/// content type as JSON and any other as raw bytes, which are no object.
pub async fn read_request(
    kind: PipelineKind,
    request: Request,
) -> Result<PipelineRequest, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    match kind.file_field() {
        Some(file_field) => {
            if !content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("multipart/form-data"))
            {
                return Err(AiError::missing(file_field).into());
            }
            read_form(kind, request).await
        }
        None => {
            let json = content_type.as_deref().is_none_or(is_json);
            let body = Bytes::from_request(request, &())
                .await
                .map_err(|e| ApiError::BodyTooLarge(format!("request body: {}", e.body_text())))?;
            if body.is_empty() {
                return Err(ApiError::InvalidBody("Field required".into()));
            }
            if !json {
                return Err(ApiError::InvalidBody(
                    "Input should be a valid dictionary or object to extract fields from".into(),
                ));
            }
            match serde_json::from_slice(&body) {
                Ok(serde_json::Value::Object(params)) => Ok(PipelineRequest {
                    params,
                    ..Default::default()
                }),
                Ok(_) => Err(ApiError::InvalidBody(
                    "Input should be a valid dictionary or object to extract fields from".into(),
                )),
                Err(e) => Err(ApiError::InvalidBody(format!("JSON decode error: {e}"))),
            }
        }
    }
}

/// `application/json` or any `application/*+json`, parameters aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

async fn read_form(kind: PipelineKind, request: Request) -> Result<PipelineRequest, ApiError> {
    let mut out = PipelineRequest::default();
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::MalformedBody(format!("malformed multipart body: {e}")))?;
    let refused = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge(e.body_text()),
        _ => ApiError::MalformedBody(format!("malformed multipart body: {}", e.body_text())),
    };
    while let Some(field) = form.next_field().await.map_err(refused)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some() || Some(name.as_str()) == kind.file_field();
        let data = field.bytes().await.map_err(refused)?;
        if is_file {
            out.files.insert(name, data.to_vec());
        } else {
            let text = String::from_utf8(data.to_vec())
                .map_err(|_| AiError::invalid(&name, "not UTF-8 text"))?;
            out.params.insert(name, serde_json::Value::String(text));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: Option<&str>, body: &'static [u8]) -> Request {
        let mut b = Request::builder().method("POST").uri("/x");
        if let Some(t) = content_type {
            b = b.header(header::CONTENT_TYPE, t);
        }
        b.body(axum::body::Body::from(body)).unwrap()
    }

    async fn status(kind: PipelineKind, content_type: Option<&str>, body: &'static [u8]) -> u16 {
        match read_request(kind, request(content_type, body)).await {
            Ok(_) => 200,
            Err(e) => e.status(kind).as_u16(),
        }
    }

    #[tokio::test]
    async fn a_form_route_without_a_form_misses_its_file() {
        for content_type in [Some("application/json"), Some("text/plain"), None] {
            let err = read_request(PipelineKind::Upscale, request(content_type, b"{}"))
                .await
                .unwrap_err();
            assert_eq!(err.status(PipelineKind::Upscale), 422, "{content_type:?}");
            assert_eq!(
                err.body()["detail"][0],
                serde_json::json!({"type": "missing", "loc": ["body", "image"], "msg": "Field required"})
            );
        }
        assert_eq!(
            status(PipelineKind::AudioToText, Some("text/plain"), b"x").await,
            422
        );
    }

    #[tokio::test]
    async fn a_json_route_takes_json_and_json_without_a_content_type() {
        let body = br#"{"prompt": "a cat"}"#;
        for content_type in [
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("application/vnd.api+json"),
            None,
        ] {
            let req = read_request(PipelineKind::TextToImage, request(content_type, body))
                .await
                .unwrap();
            assert_eq!(req.params["prompt"], "a cat", "{content_type:?}");
        }
    }

    #[tokio::test]
    async fn a_json_route_refuses_other_bodies_with_422_at_the_body() {
        let kind = PipelineKind::Llm;
        for (content_type, body) in [
            (Some("text/plain"), &b"{}"[..]),
            (Some("multipart/form-data; boundary=x"), b"--x--"),
            (Some("application/json"), b"[1]"),
            (Some("application/json"), b"{"),
            (Some("application/json"), b""),
        ] {
            let err = read_request(kind, request(content_type, body))
                .await
                .unwrap_err();
            assert_eq!(err.status(kind), 422, "{content_type:?}");
            assert_eq!(err.body()["detail"][0]["loc"], serde_json::json!(["body"]));
        }
    }

    #[tokio::test]
    async fn a_malformed_form_is_400() {
        assert_eq!(
            status(
                PipelineKind::Upscale,
                Some("multipart/form-data; boundary=x"),
                b"garbage"
            )
            .await,
            400
        );
    }

    #[tokio::test]
    async fn form_fields_are_text_and_the_file_field_is_bytes() {
        let body = b"--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n\xff\xd8\r\n--x--\r\n";
        let req = read_request(
            PipelineKind::Upscale,
            request(Some("multipart/form-data; boundary=x"), body),
        )
        .await
        .unwrap();
        assert_eq!(req.params["prompt"], "hi");
        assert_eq!(req.files["image"], b"\xff\xd8");
    }
}
