//! ai-runner's HTTP API, the wire the HTTP-speaking adapters share: the same
//! routes, request fields, response schemas and error shapes as
//! livepeer/ai-runner. [`AiHttp`] serves it over the AI engine's registry for
//! every loaded model at once (a request's model id picks the model), so a
//! go-livepeer operator can point an `aiModels.json` entry's external `url`
//! here; `serve`, the Live Runner apps and the orchestrator shim's gateway
//! read requests ([`request`]) and answer errors ([`error`]) the same way.

pub mod error;
pub mod request;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::ai::registry::StreamEvent;
use crate::ai::{AiError, OutputFile, PipelineKind, PipelineRequest, Registry};

pub use error::{error_response, ApiError};
pub use request::{read_request, DEFAULT_MAX_BODY};

#[derive(Clone)]
pub struct AiHttp {
    registry: Arc<Registry>,
    auth_token: Option<Arc<str>>,
    max_body: usize,
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
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The router: a POST route per served pipeline plus ai-runner's GET
    /// routes, refusing request bodies over `max_body` bytes (413).
    pub fn router(mut self, max_body: usize) -> axum::Router {
        self.max_body = max_body;
        let mut router = axum::Router::new()
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({"status": "OK"})) }),
            )
            .route("/version", get(version))
            .route("/hardware/info", get(hardware_info))
            .route("/hardware/stats", get(hardware_stats));
        // One route per kind however many models serve it, wherever they sit
        // in the list: axum panics on a route registered twice.
        let kinds: BTreeSet<PipelineKind> = self
            .registry
            .entries()
            .iter()
            .map(|e| e.pipeline.kind())
            .collect();
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
            // Constant time: the response timing must not reveal how much
            // of a guessed token was right.
            .is_some_and(|given| {
                crate::worker::constant_time_eq(given.as_bytes(), token.as_bytes())
            })
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

async fn handle(State(state): State<AiHttp>, kind: PipelineKind, request: Request) -> Response {
    if !state.authorized(request.headers()) {
        return ApiError::Unauthorized.response(kind);
    }
    // A body announced over the limit is refused before any of it is read
    // (one that grows past it on the way is refused by the body limit).
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = announced.filter(|&n| n > state.max_body as u64) {
        return ApiError::BodyTooLarge(format!(
            "request body of {length} bytes is over the limit of {} bytes",
            state.max_body
        ))
        .response(kind);
    }
    let started = Instant::now();
    let result = match read_request(kind, request).await {
        Ok(req) if req.boolean("stream").ok().flatten() == Some(true) => {
            return stream_response(&state, kind, req, started).await
        }
        Ok(req) => state.registry.run(kind, req).await.map_err(ApiError::Ai),
        Err(e) => Err(e),
    };
    match result {
        Ok(mut output) => {
            resolve_urls(&mut output.body, &output.files, &|f| {
                crate::ai::media::data_url(f.mime, &f.data)
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
            tracing::warn!(pipeline = kind.name(), status = e.status(kind).as_u16(), error = %logged(&e), "ai request failed");
            e.response(kind)
        }
    }
}

/// Longest error text a refused or failed request puts in a log line.
const LOGGED_ERROR_CHARS: usize = 256;

/// An error for the log: request data quoted in it (a JSON decode error
/// quotes the offending value, for one) never sets the line's size.
fn logged(e: &impl std::fmt::Display) -> String {
    crate::log_limit::clip(&e.to_string(), LOGGED_ERROR_CHARS).into_owned()
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
        Err(e) => return error_response(kind, &e),
    };
    let first = match events.recv().await {
        Some(StreamEvent::Done(Err(e))) => {
            tracing::warn!(pipeline = kind.name(), status = error::status(kind, &e).as_u16(), error = %logged(&e), "ai request failed");
            return error_response(kind, &e);
        }
        Some(event) => event,
        None => {
            return error_response(
                kind,
                &AiError::Internal("the pipeline stopped without a result".into()),
            )
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
                    tracing::warn!(pipeline = kind.name(), error = %logged(&e), "ai stream failed");
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::ai::config::AiModelConfig;

    fn config(pipeline: &str, model_id: &str) -> AiModelConfig {
        serde_json::from_value(serde_json::json!({"pipeline": pipeline, "model_id": model_id}))
            .unwrap()
    }

    async fn get(router: &axum::Router, path: &str) -> StatusCode {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    /// Two models of one kind with another kind between them: one route for
    /// the kind (registering it twice would panic), and both kinds served.
    #[tokio::test]
    async fn a_kind_served_by_models_apart_in_the_list_gets_one_route() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let registry = Registry::load(
            &[
                config("upscale", "lpworker/nearest-2x"),
                config("image-transform", "lpworker/nearest-2x"),
                config("upscale", "lpworker/nearest-2x"),
            ],
            &models,
            1,
        )
        .unwrap();
        let kinds: Vec<_> = registry
            .entries()
            .iter()
            .map(|e| e.pipeline.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                PipelineKind::Upscale,
                PipelineKind::ImageTransform,
                PipelineKind::Upscale
            ]
        );
        let router = AiHttp::new(Arc::new(registry), None).router(DEFAULT_MAX_BODY);
        // The POST routes exist (a GET is refused by method, not unknown).
        assert_eq!(
            get(&router, "/upscale").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            get(&router, "/image-transform").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(get(&router, "/text-to-image").await, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let registry = Arc::new(Registry::load(&[], Path::new("."), 1).unwrap());
        let http = AiHttp::new(registry, Some("s3cret".into()));
        let headers = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        assert!(http.authorized(&headers(Some("Bearer s3cret"))));
        for wrong in [
            None,
            Some("Bearer s3creT"),
            Some("Bearer s3cre"),
            Some("Bearer s3crets"),
            Some("Bearer "),
            Some("s3cret"),
        ] {
            assert!(!http.authorized(&headers(wrong)), "{wrong:?}");
        }
        let open = AiHttp::new(
            Arc::new(Registry::load(&[], Path::new("."), 1).unwrap()),
            None,
        );
        assert!(open.authorized(&headers(None)));
    }

    #[test]
    fn logged_errors_are_clipped() {
        let e = AiError::BadRequest(format!("invalid type: string {:?}", "x".repeat(1 << 16)));
        let line = logged(&e);
        assert!(
            line.chars().count() <= LOGGED_ERROR_CHARS + 1,
            "{}",
            line.len()
        );
        assert!(line.ends_with('…'));
        assert_eq!(
            logged(&AiError::BadRequest("short".into())),
            AiError::BadRequest("short".into()).to_string()
        );
    }
}
