//! The Live Runner routes of the shim (go-livepeer 0.9's, `server/ai_http.go`
//! at 176aa415; `../shared/specs/live_runner.md` §2–§4): dynamic runners'
//! heartbeats, discovery, sessions and the proxy to runners on the public
//! listener, the runners' own callbacks, and `POST /registerLiveRunners` on
//! the loopback CLI listener. The registry itself is `crate::live_runner`.

pub mod billing;
pub mod lv2v;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::live_runner::registry::{ProxyTarget, Reserved};
use crate::live_runner::spec::Mode;
use crate::live_runner::wire::{
    self, CreateChannels, CreatedChannels, DeleteChannels, DeletedChannels, DiscoveredOrchestrator,
    ProxyRequest, ProxyResponse, RegisteredRunners, RunnersFile,
};
use crate::live_runner::{snapshot, Registry, RegistryError, Release};

/// Largest JSON body a runner or the operator sends (metadata is 1 KiB).
const MAX_JSON_BYTES: usize = 256 << 10;
/// go-livepeer's health check: every 5 s, 3 s to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub struct LiveRunners {
    pub registry: Arc<Registry>,
    /// Where the registry is kept across restarts.
    state_file: Option<std::path::PathBuf>,
    /// To runners: HTTP/1.1 (WebSocket upgrades need it), no redirects
    /// followed (the client sees them), no overall timeout (SSE lasts).
    client: reqwest::Client,
    health: reqwest::Client,
    /// On chain: challenges, payments and metering. Off chain, as in
    /// go-livepeer, sessions are free and nothing is priced.
    paid: Option<Arc<billing::LivePayments>>,
}

impl LiveRunners {
    pub fn new(
        registry: Arc<Registry>,
        state_file: Option<std::path::PathBuf>,
        paid: Option<Arc<billing::LivePayments>>,
    ) -> Arc<LiveRunners> {
        let client = reqwest::Client::builder()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        let health = reqwest::Client::builder()
            .timeout(HEALTH_TIMEOUT)
            .build()
            .expect("HTTP client");
        Arc::new(LiveRunners {
            registry,
            state_file,
            paid,
            client,
            health,
        })
    }

    /// Checks every static runner's health once, concurrently.
    pub async fn check_health(&self) {
        let checks = self.registry.health_checks();
        let results = futures::future::join_all(checks.into_iter().map(|(id, url, want)| {
            let http = self.health.clone();
            async move {
                let got = http.get(url).send().await.map(|r| r.status().as_u16());
                (id, got.is_ok_and(|s| s == want))
            }
        }))
        .await;
        for (id, healthy) in results {
            self.registry.set_health(&id, healthy);
        }
    }

    /// Writes the registry to its state file now (at shutdown), and the
    /// paid sessions' billing beside it.
    pub fn save_state(&self) {
        if let Some(path) = &self.state_file {
            if let Err(e) = snapshot::save(path, &self.registry.snapshot()) {
                tracing::warn!(error = %e, "live runner state not saved");
            }
        }
        self.save_billing();
    }

    fn save_billing(&self) {
        if let (Some(path), Some(paid)) = (&self.state_file, &self.paid) {
            if let Err(e) = billing::save_records(&billing::billing_file(path), &paid.records()) {
                tracing::warn!(error = %e, "live runner billing not saved");
            }
        }
    }

    /// After a restart on chain: paid sessions get their credit and
    /// metering back; a restored session with no billing record (paid
    /// nowhere now) is released, so no session runs unpaid.
    pub fn restore_billing(&self) {
        let (Some(path), Some(paid)) = (&self.state_file, &self.paid) else {
            return;
        };
        let records = match billing::load_records(&billing::billing_file(path)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "live runner billing unreadable: restored sessions are released");
                Vec::new()
            }
        };
        let billed = paid.restore(&self.registry, records, |sid| {
            self.registry.session_cancel(sid)
        });
        for sid in self.registry.session_ids() {
            if !billed.contains(&sid) {
                self.registry.release(&sid, Release::Unpaid);
            }
        }
    }

    /// Sweeps silent runners and checks health every heartbeat interval,
    /// and sends O2R keepalives, until the registry is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let config = self.registry.config().clone();
        if let Some(path) = &self.state_file {
            snapshot::spawn_persister(&self.registry, path.clone());
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.heartbeat_interval);
            let mut last_keepalive = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.registry.sweep();
                me.save_billing();
                if last_keepalive.elapsed() >= config.keepalive_interval {
                    me.registry.keepalive();
                    last_keepalive = tokio::time::Instant::now();
                }
                me.check_health().await;
            }
        })
    }

    /// The routes of the public listener.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/runners/heartbeat", post(heartbeat))
            .route("/runners/{id}/unregister", post(unregister))
            .route("/discovery", axum::routing::get(discovery))
            .route("/apps/{id}/session", post(reserve_session))
            .route("/apps/{id}/session/{sid}/stop", post(stop_session))
            .route("/apps/{id}/session/{sid}/payment", post(session_payment))
            .route("/refresh-payment", post(refresh_payment))
            .route("/apps/{id}/session/{sid}/app", any(session_app_root))
            .route("/apps/{id}/session/{sid}/app/", any(session_app_root))
            .route("/apps/{id}/session/{sid}/app/{*path}", any(session_app))
            .route("/apps/{id}/app", any(single_shot_root))
            .route("/apps/{id}/app/", any(single_shot_root))
            .route("/apps/{id}/app/{*path}", any(single_shot))
            .route(
                "/runner/{id}/session/{sid}/channels",
                post(create_channels).delete(delete_channels),
            )
            .route("/runner/{id}/session/{sid}/proxy", post(create_proxy))
            .route("/runner/{id}/session/{sid}/stop", post(runner_stop))
            .with_state(self.clone())
    }

    /// The loopback CLI listener's routes.
    pub fn cli_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/registerLiveRunners", any(register_live_runners))
            .with_state(self.clone())
    }
}

type Shared = State<Arc<LiveRunners>>;

/// go-livepeer's `respondWithError`: plain text and a newline.
pub(crate) fn text(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn status_of(e: &RegistryError) -> StatusCode {
    use RegistryError::*;
    match e {
        UnknownRunner | UnknownSession | UnknownChannel | DynamicDisabled => StatusCode::NOT_FOUND,
        BadBootstrapSecret | BadHeartbeatSecret | Unauthorized => StatusCode::UNAUTHORIZED,
        SessionExists => StatusCode::CONFLICT,
        Full | TooManyRunners(_) => StatusCode::SERVICE_UNAVAILABLE,
        Trickle(crate::trickle::TrickleError::TooManyChannels(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SingleShotRunner
        | PersistentRunner
        | StaticHeartbeat
        | StaticRunner
        | BadRunnerId
        | InvalidBatch { .. }
        | Invalid(_)
        | BadChannels(_)
        | BadTarget(_)
        | TooManyProxies(_)
        | Trickle(_) => StatusCode::BAD_REQUEST,
    }
}

fn registry_error(e: RegistryError) -> Response {
    text(status_of(&e), e)
}

/// A refused request body: its status and why.
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        text(self.0, self.1)
    }
}

fn too_large() -> Rejection {
    Rejection(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large".into(),
    )
}

/// A JSON body, or 400 with why not (and 413 past the size cap).
fn json_body<T: DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, Rejection> {
    if body.len() > MAX_JSON_BYTES {
        return Err(too_large());
    }
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Rejection(StatusCode::BAD_REQUEST, e.to_string()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Reads at most [`MAX_JSON_BYTES`] of a body: runners' and operators'
/// JSON is small, and nobody gets to make the shim buffer more.
async fn small_body(request: Request) -> Result<Bytes, Rejection> {
    // Within a deadline too: a body trickled in byte by byte would
    // otherwise hold its connection for good.
    let read = axum::body::to_bytes(request.into_body(), MAX_JSON_BYTES);
    match tokio::time::timeout(SMALL_BODY_TIMEOUT, read).await {
        Ok(body) => body.map_err(|_| too_large()),
        Err(_) => Err(Rejection(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time".into(),
        )),
    }
}

/// How long a small JSON body may take to arrive.
const SMALL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn heartbeat(State(lr): Shared, request: Request) -> Response {
    let auth = header(request.headers(), "authorization").to_string();
    let body = match small_body(request).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let decl: wire::RunnerDecl = match json_body(&body, false) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    match lr.registry.heartbeat(&auth, &decl) {
        Ok(r) => Json(r).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn unregister(State(lr): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match lr
        .registry
        .unregister(&id, header(&headers, "authorization"))
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

#[derive(serde::Deserialize)]
struct DiscoveryQuery {
    app: Option<String>,
    gpu: Option<String>,
}

async fn discovery(State(lr): Shared, Query(q): Query<DiscoveryQuery>) -> Response {
    let runners = lr
        .registry
        .discover(q.app.as_deref(), q.gpu.as_deref(), |spec| {
            lr.paid.as_ref().and_then(|p| p.advertised(spec))
        });
    Json(vec![DiscoveredOrchestrator {
        address: lr.registry.config().service_uri.clone(),
        runners,
    }])
    .into_response()
}

async fn reserve_session(
    State(lr): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match lr.reserve_paid(&id, Mode::Persistent, &headers).await {
        Ok(Reserved { response, .. }) => Json(response).into_response(),
        Err(r) => r,
    }
}

/// `POST /apps/{id}/session/{sid}/payment`: a metered session's top-up.
async fn session_payment(
    State(lr): Shared,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = lr.registry.session(&id, &sid) {
        return registry_error(e);
    }
    match &lr.paid {
        Some(paid) => paid.top_up(&sid, &headers).await,
        None => text(
            StatusCode::BAD_REQUEST,
            "this orchestrator runs off chain and takes no tickets",
        ),
    }
}

/// `POST /refresh-payment`: fresh params for a paid session.
async fn refresh_payment(State(lr): Shared, request: Request) -> Response {
    let Some(paid) = lr.paid.clone() else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    match small_body(request).await {
        Ok(body) => paid.refresh(&lr.registry, &body).await,
        Err(r) => r.into_response(),
    }
}

impl LiveRunners {
    /// Reserves a session of `mode` on runner `route`. On chain the request
    /// must pay: without payment headers it gets the `402` challenge; with
    /// them the payment is checked, the session reserved under its manifest
    /// ID, then the payment processed (the session is released if refused).
    async fn reserve_paid(
        self: &Arc<Self>,
        route: &str,
        mode: Mode,
        headers: &HeaderMap,
    ) -> Result<Reserved, Response> {
        let Some(paid) = &self.paid else {
            return self
                .registry
                .reserve(route, mode, None)
                .map_err(registry_error);
        };
        let spec = self.registry.runner_spec(route).map_err(registry_error)?;
        match (spec.mode, mode) {
            (Mode::SingleShot, Mode::Persistent) => {
                return Err(registry_error(RegistryError::SingleShotRunner))
            }
            (Mode::Persistent, Mode::SingleShot) => {
                return Err(registry_error(RegistryError::PersistentRunner))
            }
            _ => {}
        }
        let wei = paid.wei_price(&spec).map_err(|e| {
            tracing::warn!(runner = route, error = %e, "live runner has no price now");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "live runner price unavailable",
            )
        })?;
        if !headers.contains_key("Livepeer-Payment") && !headers.contains_key("Livepeer-Segment") {
            return Err(paid.challenge(route, headers, wei).await);
        }
        let admitted = paid.admit(headers, wei).await?;
        // Paid first, then reserved and billed with no await between: a
        // client that hangs up leaves credit, never an unbilled session.
        paid.process(&admitted, wei).await?;
        let reserved = self
            .registry
            .reserve(route, mode, Some(&admitted.sid))
            .map_err(registry_error)?;
        if let Err(r) = paid.start(
            &self.registry,
            &admitted.sid,
            admitted.sender,
            wei,
            reserved.grant.cancel.clone(),
        ) {
            self.registry.release(&admitted.sid, Release::Unpaid);
            return Err(text(r.0, r.1));
        }
        Ok(reserved)
    }
}

async fn stop_session(State(lr): Shared, Path((id, sid)): Path<(String, String)>) -> Response {
    match lr.registry.stop(&id, &sid) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

async fn session_app_root(
    state: Shared,
    Path((id, sid)): Path<(String, String)>,
    request: Request,
) -> Response {
    let path = if request.uri().path().ends_with('/') {
        "/"
    } else {
        ""
    };
    proxy_session(state, &id, &sid, path, request).await
}

async fn session_app(
    state: Shared,
    Path((id, sid, path)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    proxy_session(state, &id, &sid, &format!("/{path}"), request).await
}

async fn proxy_session(
    State(lr): Shared,
    id: &str,
    sid: &str,
    path: &str,
    request: Request,
) -> Response {
    let grant = match lr.registry.session(id, sid) {
        Ok(g) => g,
        Err(e) => return registry_error(e),
    };
    let target = grant.runner_url.clone();
    proxy::forward(&lr.client, request, &target, path, &grant, ()).await
}

async fn single_shot_root(state: Shared, Path(id): Path<String>, request: Request) -> Response {
    let path = if request.uri().path().ends_with('/') {
        "/"
    } else {
        ""
    };
    run_single_shot(state, &id, path, request).await
}

async fn single_shot(
    state: Shared,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    run_single_shot(state, &id, &format!("/{path}"), request).await
}

/// Releases a single-shot session when the response is done with.
struct ReleaseOnDrop {
    registry: Arc<Registry>,
    sid: String,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.registry.release(&self.sid, Release::Finished);
    }
}

/// One request, one session: reserved, proxied, released once the
/// response has been streamed (or the client went away).
async fn run_single_shot(State(lr): Shared, id: &str, path: &str, request: Request) -> Response {
    let reserved = match lr
        .reserve_paid(id, Mode::SingleShot, request.headers())
        .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let guard = ReleaseOnDrop {
        registry: lr.registry.clone(),
        sid: reserved.grant.sid.clone(),
    };
    let target = reserved.grant.runner_url.clone();
    proxy::forward(&lr.client, request, &target, path, &reserved.grant, guard).await
}

fn token(headers: &HeaderMap) -> &str {
    header(headers, wire::headers::SESSION_TOKEN)
}

async fn create_channels(
    State(lr): Shared,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: CreateChannels = match json_body(&body, false) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match lr
        .registry
        .create_channels(&id, &sid, token(&headers), &req.channels)
    {
        Ok(channels) => Json(CreatedChannels { channels }).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn delete_channels(
    State(lr): Shared,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: DeleteChannels = match json_body(&body, false) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match lr
        .registry
        .delete_channels(&id, &sid, token(&headers), &req.channels)
    {
        Ok(deleted) => Json(DeletedChannels { deleted }).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn create_proxy(
    State(lr): Shared,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: ProxyRequest = match json_body(&body, true) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match lr
        .registry
        .create_proxy(&id, &sid, token(&headers), &req.target_url)
    {
        Ok((proxy_id, url)) => Json(ProxyResponse { proxy_id, url }).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn runner_stop(
    State(lr): Shared,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match lr.registry.runner_stop(&id, &sid, token(&headers)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

/// Requests for a proxy URL (`-liveRunnerProxyUrl`) are taken before any
/// route, as go-livepeer does.
pub async fn proxy_layer(State(lr): Shared, request: Request, next: Next) -> Response {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let Some((id, rest)) = lr.registry.config().proxy_template.matches(&host, &path) else {
        return next.run(request).await;
    };
    let rest = rest.to_string();
    match lr.registry.proxy(&id) {
        Some(ProxyTarget::Session { target, grant }) => {
            proxy::forward(&lr.client, request, &target, &rest, &grant, ()).await
        }
        Some(ProxyTarget::SingleShot { route }) => {
            run_single_shot(State(lr.clone()), &route, &rest, request).await
        }
        None => text(StatusCode::NOT_FOUND, "live runner proxy not found"),
    }
}

/// `POST /registerLiveRunners` (loopback CLI listener): static runners,
/// all or none, health-checked before the answer.
async fn register_live_runners(State(lr): Shared, request: Request) -> Response {
    if request.method() != axum::http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    }
    let body = match small_body(request).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let file: RunnersFile = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut registered = match lr.registry.register_static(&file.runners) {
        Ok(r) => r,
        Err(e) => return registry_error(e),
    };
    lr.check_health().await;
    let healthy = lr.registry.healthy_ids();
    for r in &mut registered {
        r.healthy = healthy.contains(&r.runner_id);
    }
    Json(RegisteredRunners {
        runners: registered,
    })
    .into_response()
}
