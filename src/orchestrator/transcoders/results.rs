//! `POST /transcodeResults`: where remote transcoders deliver, checked as
//! go-livepeer's orchestrator checks them (server/ot_rpc.go
//! `TranscodeResults`): the protocol marker and the shared secret, else 401;
//! an unparsable content type 415, task ID 400 "Invalid Task ID", pixels 400
//! "Invalid Pixels"; a body it cannot read 500. Stricter than go-livepeer,
//! which reads any body for any task ID: the task must be in flight, sent to
//! a transcoder on the poster's host, and not answered yet (else 404 before
//! any of the body is read), and the body is bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use tracing::warn;

use super::Outcome;
use crate::lp_rpc::results::{media_type, read_transcode_parts, TRANSCODER_AUTH, TRANSCODE_ERROR};
use crate::orchestrator::gateway::{text, Gateway};

/// Error text kept from a failed transcode.
const MAX_ERROR_TEXT: usize = 4 << 10;

/// Result bytes allowed per rendition asked for, in segments' worth: a
/// rendition may be larger than its source (a higher bitrate or size).
const RENDITION_TO_SEGMENT: usize = 4;

fn header<'a>(request: &'a axum::extract::Request, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

pub async fn transcode_results(
    axum::extract::State(gw): axum::extract::State<Arc<Gateway>>,
    request: axum::extract::Request,
) -> Response {
    let Some(pool) = &gw.transcoders else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    if header(&request, "Authorization") != TRANSCODER_AUTH
        || !pool.secret_matches(header(&request, "Credentials"))
    {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let (media, params) = match media_type(header(&request, "Content-Type")) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string()),
    };
    let Ok(task_id) = header(&request, "TaskId").parse::<i64>() else {
        return text(StatusCode::BAD_REQUEST, "Invalid Task ID");
    };
    let pixels = header(&request, "Pixels").parse::<i64>();
    if media != TRANSCODE_ERROR && pixels.is_err() {
        return text(StatusCode::BAD_REQUEST, "Invalid Pixels");
    }
    let from = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Ok(task) = pool.claim(task_id, from) else {
        // A holder of the secret can repeat this at will (replays, guesses).
        static REFUSED: crate::log_limit::SharedRateLimitedLog =
            crate::log_limit::SharedRateLimitedLog::new(crate::log_limit::REFUSAL_LOG_INTERVAL);
        if let Some(suppressed) = REFUSED.check() {
            warn!(
                task_id,
                ?from,
                suppressed,
                "result for no task in flight refused (suppressed: like lines since the last)"
            );
        }
        return text(StatusCode::NOT_FOUND, "Unknown Task ID");
    };
    let limit = if media == TRANSCODE_ERROR {
        MAX_ERROR_TEXT
    } else {
        gw.max_segment_bytes
            .saturating_mul(RENDITION_TO_SEGMENT)
            .saturating_mul(task.renditions.max(1))
    };
    let _room = match gw.bodies.reserve(request.headers(), limit) {
        Ok(room) => room,
        Err(e) => {
            task.answer(Outcome::Failed(e.to_string()));
            return text(e.status(), e.to_string());
        }
    };
    let read = axum::body::to_bytes(request.into_body(), limit);
    let body = match gw.bodies.within_deadline(read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            task.answer(Outcome::Failed("result too large".into()));
            return text(StatusCode::PAYLOAD_TOO_LARGE, "result too large");
        }
        Err(e) => {
            task.answer(Outcome::Failed(e.to_string()));
            return text(e.status(), e.to_string());
        }
    };
    if media == TRANSCODE_ERROR {
        let message = String::from_utf8_lossy(&body).into_owned();
        warn!(task_id, error = %message, "remote transcode failed");
        task.answer(Outcome::Failed(message));
        return text(StatusCode::OK, "OK");
    }
    if media != "multipart/mixed" {
        task.answer(Outcome::Failed(format!("unexpected result type {media}")));
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected multipart/mixed",
        );
    }
    let boundary = params
        .iter()
        .find(|(k, _)| k == "boundary")
        .map_or("", |(_, v)| v.as_str());
    match read_transcode_parts(boundary, &body, task.renditions) {
        Ok(renditions) => {
            task.answer(Outcome::Done {
                renditions,
                decoded_pixels: pixels.unwrap_or(0),
            });
            text(StatusCode::OK, "OK")
        }
        Err(e) => {
            task.answer(Outcome::Failed(e.to_string()));
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
