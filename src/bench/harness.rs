//! The orchestrator's side of a Live Runner session, in this process, for
//! the live benches (`--live`, `--live-v2v`): a [`TrickleServer`] on a
//! loopback socket stands for the orchestrator's trickle, with a minimal
//! session callback (creates the session's channels, closes them on stop),
//! and the app under test is served on another socket as `lpworker attach`
//! serves it. That callback is a harness: the orchestrator's own handler
//! (`orchestrator::runners`) needs a registered runner and a reserved, paid
//! session around it. A session is started over HTTP with the
//! orchestrator's session headers, and channels are read with the time of
//! each segment's first and last byte.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use tokio::net::TcpListener;

use super::input;
use crate::live_runner::wire::{headers as lr, ChannelInfo, CreateChannels, CreatedChannels};
use crate::runner::PersistentApp;
use crate::trickle::client::{http_client_builder, TrickleSubscriber};
use crate::trickle::{TrickleConfig, TrickleServer, BASE_PATH};
use crate::video::VideoError;

const SESSION_ID: &str = "bench-live";
const SESSION_TOKEN: &str = "bench-live-token";

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Session(String),
}

pub(crate) fn session_error(what: &str, e: impl std::fmt::Display) -> LiveError {
    LiveError::Session(format!("{what}: {e}"))
}

/// The app under test and the orchestrator's side, each on its own
/// loopback socket; both stop when this is dropped.
pub(crate) struct Harness {
    app: Arc<dyn PersistentApp>,
    /// The gateway's client (and the channels' readers and writers).
    pub http: reqwest::Client,
    app_url: String,
    orch: String,
    _orch: Aborting,
    _app: Aborting,
}

impl Harness {
    /// Serves the orchestrator's trickle routes and session callback, and
    /// `app` (which takes the callback's base as its orchestrator's).
    pub async fn start(app: Arc<dyn PersistentApp>) -> Result<Harness, LiveError> {
        let server = TrickleServer::new(TrickleConfig::default());
        let (orch_listener, orch) = bind().await?;
        let callback = Arc::new(Callback {
            server: server.clone(),
            base: format!("{orch}{BASE_PATH}"),
            made: Mutex::default(),
        });
        let orch_router = axum::Router::new()
            .route(
                "/runner/{route}/session/{sid}/channels",
                axum::routing::post(create_channels),
            )
            .route(
                "/runner/{route}/session/{sid}/stop",
                axum::routing::post(stop_session),
            )
            .with_state(callback)
            .nest(BASE_PATH, server.router());
        let orch_task = serve(orch_listener, orch_router);
        let bases = vec![orch.clone()];
        app.sessions()
            .follow_controls_of(Arc::new(move || bases.clone()));
        let (app_listener, app_url) = bind().await?;
        let app_task = serve(app_listener, app.clone().router());
        let http = http_client_builder()
            .build()
            .map_err(|e| session_error("HTTP client", e))?;
        Ok(Harness {
            app,
            http,
            app_url,
            orch,
            _orch: orch_task,
            _app: app_task,
        })
    }

    /// Starts the session as the gateway does through the orchestrator:
    /// `POST {app}{route}` with the session headers and `body`. Returns the
    /// app's JSON answer.
    pub async fn start_session(
        &self,
        route: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, LiveError> {
        let r = self
            .http
            .post(format!("{}{route}", self.app_url))
            .header(lr::SESSION_ID, SESSION_ID)
            .header(lr::SESSION_TOKEN, SESSION_TOKEN)
            .header(
                lr::SESSION_CONTROL,
                format!("{}/runner/bench/session/{SESSION_ID}", self.orch),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| session_error("starting the session", e))?;
        let status = r.status();
        let body = r
            .bytes()
            .await
            .map_err(|e| session_error("starting the session", e))?;
        if !status.is_success() {
            return Err(session_error(
                "starting the session",
                format!("{status}: {}", String::from_utf8_lossy(&body)),
            ));
        }
        serde_json::from_slice(&body).map_err(|e| session_error("the session's answer", e))
    }

    /// Waits up to `limit` for the app to end its session (it stops it at
    /// the callback once the input ends).
    pub async fn session_ended(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.app.sessions().ids().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A segment as read from a channel.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    pub seq: i64,
    /// Its first body byte read (its end, for an empty segment).
    pub first: Instant,
    /// Its last byte read.
    pub done: Instant,
    pub body: Vec<u8>,
}

/// Reads channel `url` from segment 0 until `last_seq` (or the channel's
/// end), timing each segment's first and last byte; `(index, seq)` goes to
/// `done` as each segment completes.
pub(crate) async fn follow(
    http: reqwest::Client,
    url: String,
    last_seq: i64,
    index: usize,
    done: Option<tokio::sync::mpsc::UnboundedSender<(usize, i64)>>,
) -> Result<Vec<Arrival>, String> {
    let mut sub = TrickleSubscriber::new(http, &url, 0);
    let mut arrivals = Vec::new();
    loop {
        let Some(mut seg) = sub.next_segment().await.map_err(|e| e.to_string())? else {
            break;
        };
        let seq = seg.seq();
        let mut body = Vec::new();
        let mut first = None;
        while let Some(chunk) = seg.chunk().await.map_err(|e| e.to_string())? {
            first.get_or_insert_with(Instant::now);
            body.extend_from_slice(&chunk);
        }
        let end = Instant::now();
        arrivals.push(Arrival {
            seq,
            first: first.unwrap_or(end),
            done: end,
            body,
        });
        if let Some(done) = &done {
            let _ = done.send((index, seq));
        }
        if seq >= last_seq {
            break;
        }
    }
    Ok(arrivals)
}

/// The stand-in for the orchestrator's session callback: makes the
/// session's channels on the trickle server, closes them on stop.
struct Callback {
    server: Arc<TrickleServer>,
    /// Where the channels are served: `http://HOST:PORT/ai/trickle`.
    base: String,
    made: Mutex<Vec<String>>,
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get(lr::SESSION_TOKEN).and_then(|v| v.to_str().ok()) == Some(SESSION_TOKEN)
}

async fn create_channels(
    State(cb): State<Arc<Callback>>,
    UrlPath((_route, sid)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(wanted) = serde_json::from_slice::<CreateChannels>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut channels = Vec::new();
    for c in wanted.channels {
        let channel_name = format!("{sid}-{}", c.name);
        if let Err(e) = cb.server.create_channel(&channel_name, &c.mime_type) {
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
        cb.made.lock().expect("channels").push(channel_name.clone());
        channels.push(ChannelInfo {
            name: c.name,
            url: format!("{}/{channel_name}", cb.base),
            channel_name,
            internal_url: String::new(),
            mime_type: c.mime_type,
        });
    }
    Json(CreatedChannels { channels }).into_response()
}

async fn stop_session(State(cb): State<Arc<Callback>>, headers: HeaderMap) -> StatusCode {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED;
    }
    let made = std::mem::take(&mut *cb.made.lock().expect("channels"));
    for name in made {
        cb.server.close_channel(&name);
    }
    StatusCode::NO_CONTENT
}

/// Serves `router` on `listener` with `TCP_NODELAY`; aborted on drop.
fn serve(listener: TcpListener, router: axum::Router) -> Aborting {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    Aborting(tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    }))
}

/// A loopback listener and its base URL.
async fn bind() -> std::io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}
