//! The ai-runner HTTP API over the registry: the same routes, request fields,
//! response schemas and error shapes as livepeer/ai-runner, for every loaded
//! model at once (a request's model id picks the model), so a go-livepeer
//! operator can point an `aiModels.json` entry's external `url` here.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::registry::StreamEvent;
use super::{AiError, OutputFile, PipelineKind, PipelineRequest, Registry};

/// Request bodies larger than this are refused (ai-runner's audio limit is 50 MiB).
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
pub struct AiHttp {
    registry: Arc<Registry>,
    auth_token: Option<Arc<str>>,
}

pub fn error_response(e: &AiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.body())).into_response()
}

/// Replaces every `url` that names one of `files` with `resolve(file)`.
pub fn resolve_urls(
    body: &mut serde_json::Value,
    files: &[OutputFile],
    resolve: &dyn Fn(&OutputFile) -> String,
) {
    match body {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(s) if key == "url" => {
                        if let Some(f) = files.iter().find(|f| f.name == *s) {
                            *s = resolve(f);
                        }
                    }
                    other => resolve_urls(other, files, resolve),
                }
            }
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|v| resolve_urls(v, files, resolve)),
        _ => {}
    }
}

impl AiHttp {
    pub fn new(registry: Arc<Registry>, auth_token: Option<String>) -> Self {
        AiHttp {
            registry,
            auth_token: auth_token.map(Arc::from),
        }
    }

    /// The router: a POST route per served pipeline plus ai-runner's GET routes.
    pub fn router(self, max_body: usize) -> axum::Router {
        let mut router = axum::Router::new()
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({"status": "OK"})) }),
            )
            .route("/version", get(version))
            .route("/hardware/info", get(hardware_info))
            .route("/hardware/stats", get(hardware_stats));
        let mut kinds: Vec<_> = self
            .registry
            .entries()
            .iter()
            .map(|e| e.pipeline.kind())
            .collect();
        kinds.dedup();
        for kind in kinds {
            router = router.route(
                &format!("/{}", kind.name()),
                post(move |state: State<AiHttp>, request: Request| handle(state, kind, request)),
            );
        }
        router
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({"detail": "Not Found"})),
                )
            })
            .layer(axum::extract::DefaultBodyLimit::max(max_body))
            .with_state(self)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.auth_token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given == &**token)
    }
}

fn first_model(state: &AiHttp) -> (String, String) {
    state
        .registry
        .entries()
        .first()
        .map(|e| {
            (
                e.pipeline.kind().name().to_string(),
                e.pipeline.model_id().to_string(),
            )
        })
        .unwrap_or_default()
}

async fn version(State(state): State<AiHttp>) -> Json<serde_json::Value> {
    let (pipeline, model_id) = first_model(&state);
    Json(
        serde_json::json!({"pipeline": pipeline, "model_id": model_id, "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn hardware_info(State(state): State<AiHttp>) -> Json<serde_json::Value> {
    let (pipeline, model_id) = first_model(&state);
    Json(serde_json::json!({"pipeline": pipeline, "model_id": model_id, "gpu_info": {}}))
}

async fn hardware_stats(State(state): State<AiHttp>) -> Json<serde_json::Value> {
    let (pipeline, model_id) = first_model(&state);
    Json(serde_json::json!({"pipeline": pipeline, "model_id": model_id, "gpu_stats": {}}))
}

/// Reads a multipart form (file fields by the pipeline's file field name,
/// everything else as text) or a JSON object body.
pub async fn read_request(
    kind: PipelineKind,
    request: Request,
) -> Result<PipelineRequest, AiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut out = PipelineRequest::default();
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| AiError::BadRequest(format!("malformed multipart body: {e}")))?;
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    return Err(AiError::TooLarge(e.body_text()))
                }
                Err(e) => {
                    return Err(AiError::BadRequest(format!(
                        "malformed multipart body: {}",
                        e.body_text()
                    )))
                }
            };
            let name = field.name().unwrap_or_default().to_string();
            let is_file = field.file_name().is_some() || Some(name.as_str()) == kind.file_field();
            let data = field.bytes().await.map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => AiError::TooLarge(e.body_text()),
                _ => AiError::BadRequest(e.body_text()),
            })?;
            if is_file {
                out.files.insert(name, data.to_vec());
            } else {
                let text = String::from_utf8(data.to_vec())
                    .map_err(|_| AiError::invalid(&name, "not UTF-8 text"))?;
                out.params.insert(name, serde_json::Value::String(text));
            }
        }
        if kind.file_field().is_none() {
            return Err(AiError::UnsupportedMedia(format!(
                "{} takes a JSON body",
                kind.name()
            )));
        }
    } else if content_type.starts_with("application/json") {
        if kind.file_field().is_some() {
            return Err(AiError::UnsupportedMedia(format!(
                "{} takes a multipart/form-data body",
                kind.name()
            )));
        }
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| AiError::TooLarge(format!("request body: {}", e.body_text())))?;
        match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(map)) => out.params = map,
            Ok(_) => {
                return Err(AiError::invalid(
                    "body",
                    "Input should be a valid dictionary",
                ))
            }
            Err(e) => return Err(AiError::invalid("body", format!("JSON decode error: {e}"))),
        }
    } else {
        return Err(AiError::UnsupportedMedia(format!(
            "unsupported content type {content_type:?}"
        )));
    }
    Ok(out)
}

async fn handle(State(state): State<AiHttp>, kind: PipelineKind, request: Request) -> Response {
    if !state.authorized(request.headers()) {
        let mut r = error_response(&AiError::BadRequest("Invalid bearer token.".into()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        return r;
    }
    let started = Instant::now();
    let result = match read_request(kind, request).await {
        Ok(req) if req.boolean("stream").ok().flatten() == Some(true) => {
            return stream_response(&state, kind, req, started).await
        }
        Ok(req) => state.registry.run(kind, req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(mut output) => {
            resolve_urls(&mut output.body, &output.files, &|f| {
                super::media::data_url(f.mime, &f.data)
            });
            tracing::info!(
                pipeline = kind.name(),
                units = output.units,
                ms = started.elapsed().as_millis() as u64,
                "ai request"
            );
            Json(output.body).into_response()
        }
        Err(e) => {
            tracing::warn!(pipeline = kind.name(), status = e.http_status(), error = %e, "ai request failed");
            error_response(&e)
        }
    }
}

/// A streamed reply as ai-runner sends it: `text/event-stream` with one
/// `data: {json}` event per partial result, then `data: [DONE]`, or
/// `data: {"error": ...}` if the run fails after it started. Failures before
/// the first partial result (bad parameters, a prompt too long) still get
/// their HTTP status.
async fn stream_response(
    state: &AiHttp,
    kind: PipelineKind,
    request: PipelineRequest,
    started: Instant,
) -> Response {
    let mut events = match state.registry.run_streaming(kind, request) {
        Ok(rx) => rx,
        Err(e) => return error_response(&e),
    };
    let first = match events.recv().await {
        Some(StreamEvent::Done(Err(e))) => {
            tracing::warn!(pipeline = kind.name(), status = e.http_status(), error = %e, "ai request failed");
            return error_response(&e);
        }
        Some(event) => event,
        None => {
            return error_response(&AiError::Internal(
                "the pipeline stopped without a result".into(),
            ))
        }
    };
    let body = futures::stream::once(async move { first })
        .chain(ReceiverStream::new(events))
        .map(move |event| {
            let text = match event {
                StreamEvent::Partial(value) => format!("data: {value}\n\n"),
                StreamEvent::Done(Ok(output)) => {
                    tracing::info!(
                        pipeline = kind.name(),
                        units = output.units,
                        ms = started.elapsed().as_millis() as u64,
                        "ai request streamed"
                    );
                    "data: [DONE]\n\n".to_string()
                }
                StreamEvent::Done(Err(e)) => {
                    tracing::warn!(pipeline = kind.name(), error = %e, "ai stream failed");
                    format!("data: {}\n\n", serde_json::json!({"error": e.to_string()}))
                }
            };
            Ok::<_, std::convert::Infallible>(Bytes::from(text))
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}
