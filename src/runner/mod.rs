//! `lpworker attach --live-runner`: lpworker as a go-livepeer 0.9 Live
//! Runner. Its HTTP server is the runner: each loaded AI pipeline is a
//! single-shot app `PIPELINE/MODEL_ID` answering ai-runner's route under
//! the runner's URL (a gateway calls `/apps/{id}/app/upscale` on the
//! orchestrator), registered dynamically with the orchestrator, one
//! registration per app. `GET /health` makes the same server usable as a
//! static runner (`health_url: /health` in go-livepeer's runners.json).
//!
//! Who can call it: the orchestrator proxies paid requests here, but the
//! runner cannot check a session (its token is the orchestrator's HMAC), so
//! anyone reaching the port would be served free. The apps are therefore
//! served only under the path of the runner's URL, compared as a secret:
//! orchestrators never show runner URLs, so a random path there leaves a
//! runner only its orchestrator can call. A session's callbacks are
//! followed only to that orchestrator.

pub mod live_video;
pub mod registration;
pub mod sessions;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::IntoResponse;

use crate::ai::Registry as Models;
use crate::live_runner::wire::{GpuInfo, PriceInfoDecl, RunnerDecl};
pub use registration::{Registered, Registration, RegistrationError, SessionEvent};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The orchestrator, `host:port` or a URL (go-livepeer's -orchAddr).
    pub orchestrator: String,
    /// Its bootstrap secret (-orchSecret).
    pub secret: String,
    /// The URL the orchestrator reaches this runner at.
    pub runner_url: String,
    /// Where the runner's HTTP server listens.
    pub http_addr: SocketAddr,
    /// Price per hour of a session, in US dollars (on-chain orchestrators
    /// require one; off chain it is ignored).
    pub price_usd_per_hour: Option<String>,
    pub gpu: Option<GpuInfo>,
    pub max_body: usize,
    /// How long a shutdown waits for work in flight before cutting it.
    pub drain_timeout: std::time::Duration,
}

/// A bound runner: its HTTP server and one registration per app.
pub struct BoundRunner {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    pub registrations: Vec<Arc<Registration>>,
    persistent: Vec<Arc<dyn PersistentApp>>,
    drain_timeout: std::time::Duration,
}

/// A persistent app (a session reserved, then started with a request to
/// the app; work goes on until it ends or the orchestrator releases it).
pub trait PersistentApp: Send + Sync + 'static {
    /// The app's name in registrations (`transcode/LADDER`,
    /// `live-video-to-video/MODEL`).
    fn app_name(&self) -> String;
    /// Registration metadata (JSON).
    fn metadata(&self) -> serde_json::Value;
    /// Its routes, under the runner's URL.
    fn router(self: Arc<Self>) -> axum::Router;
    fn sessions(&self) -> &sessions::Sessions;
    /// ai-runner's `/health` status for the app, when it has one of its own
    /// (`LOADING`, `OK`, `ERROR`, `IDLE`).
    fn health(&self) -> Option<&'static str> {
        None
    }

    /// A path of its own under the runner's URL (apps whose routes would
    /// otherwise collide: one runner serves several live models, each at
    /// ai-runner's `/live-video-to-video`). Registered as part of the app's
    /// runner URL, so the orchestrator's proxy and handoff reach it there.
    fn path(&self) -> Option<String> {
        None
    }
}

/// A persistent app and how many sessions it takes at once.
pub struct Persistent {
    pub app: Arc<dyn PersistentApp>,
    pub capacity: u32,
}

/// An AI app's price: its aiModels entry's when that is in US dollars
/// (`"currency": "USD"`, `price_per_unit` per hour of a session), else the
/// runner's --price-usd-per-hour.
fn app_price(config: &RunnerConfig, model: &crate::ai::config::AiModelConfig) -> Option<String> {
    match &model.price_per_unit {
        Some(p) if model.currency.eq_ignore_ascii_case("usd") => Some(rational_text(p.num, p.den)),
        _ => config.price_usd_per_hour.clone(),
    }
}

/// A rational as go-livepeer's `big.Rat.SetString` reads it: a decimal
/// when it has one ("0.5"), else a fraction ("1/3").
fn rational_text(num: u128, den: u128) -> String {
    let places = (0..=18u32).find(|&k| 10u128.pow(k) % den == 0);
    match places {
        Some(0) => (num / den).to_string(),
        Some(k) => {
            let scaled = num * (10u128.pow(k) / den);
            let unit = 10u128.pow(k);
            let frac = format!("{:0width$}", scaled % unit, width = k as usize);
            format!("{}.{}", scaled / unit, frac.trim_end_matches('0'))
                .trim_end_matches('.')
                .to_string()
        }
        None => format!("{num}/{den}"),
    }
}

/// What an orchestrator operator sees of an app besides its name (JSON,
/// well under go-livepeer's 1024 bytes).
fn metadata(value: serde_json::Value) -> String {
    let text = value.to_string();
    debug_assert!(text.len() <= 1024);
    text
}

/// The declaration of one app: single-shot (a request is a session), at
/// the runner's own URL.
fn declaration(config: &RunnerConfig, app: String, capacity: u32) -> RunnerDecl {
    RunnerDecl {
        runner_url: config.runner_url.clone(),
        app,
        mode: "single-shot".into(),
        capacity: i64::from(capacity.max(1)),
        version: env!("CARGO_PKG_VERSION").into(),
        gpu: config
            .gpu
            .as_ref()
            .and_then(|g| serde_json::to_value(g).ok())
            .unwrap_or_default(),
        price_info: config.price_usd_per_hour.as_ref().map(|p| PriceInfoDecl {
            price: serde_json::Value::String(p.clone()),
            currency: "usd".into(),
            unit: "hour".into(),
        }),
        status: "ready".into(),
        ..RunnerDecl::default()
    }
}

/// Connections the runner's HTTP server takes at once (the orchestrator's
/// proxy is the only expected client; a flood waits in the backlog).
const MAX_CONNECTIONS: usize = 1024;
/// A request header not received by then drops the connection.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `router` served under `prefix` only (the runner URL's path), which is
/// compared in constant time: an operator may make it the runner's secret.
/// Requests elsewhere get 404 without reaching an app, but for `/health`
/// at the root (for probes, and static runners' `health_url: /health`).
fn under_secret_path(router: axum::Router, prefix: &str, health: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    let prefix: Arc<str> = Arc::from(prefix.trim_end_matches('/'));
    if prefix.is_empty() {
        return router;
    }
    let service = tower::service_fn(move |mut request: axum::extract::Request| {
        let (router, prefix) = (router.clone(), Arc::clone(&prefix));
        async move {
            let path = request.uri().path();
            let head = path.as_bytes().get(..prefix.len()).unwrap_or_default();
            let rest = path.get(prefix.len()..).unwrap_or("");
            let inside = crate::worker::constant_time_eq(head, prefix.as_bytes())
                && (rest.is_empty() || rest.starts_with('/'));
            if !inside {
                return Ok::<_, std::convert::Infallible>(
                    axum::http::StatusCode::NOT_FOUND.into_response(),
                );
            }
            let rest = if rest.is_empty() { "/" } else { rest };
            let path_and_query = match request.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = path_and_query.parse().ok();
            match axum::http::Uri::from_parts(parts) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Ok(axum::http::StatusCode::BAD_REQUEST.into_response()),
            }
            router.oneshot(request).await
        }
    });
    health.fallback_service(service)
}

/// `GET /health` in ai-runner's shape: the worst of the persistent apps'
/// own states (ERROR over LOADING over OK over IDLE), else OK.
fn health(apps: Vec<Arc<dyn PersistentApp>>) -> axum::Router {
    let status = move || {
        let states: Vec<&str> = apps.iter().filter_map(|a| a.health()).collect();
        ["ERROR", "LOADING", "OK", "IDLE"]
            .into_iter()
            .find(|s| states.contains(s))
            .unwrap_or("OK")
    };
    axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let status = status();
            async move { axum::Json(serde_json::json!({ "status": status })) }
        }),
    )
}

impl BoundRunner {
    pub async fn bind(
        config: &RunnerConfig,
        models: Option<Arc<Models>>,
        persistent: Vec<Persistent>,
    ) -> std::io::Result<BoundRunner> {
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let mut registrations = Vec::new();
        let mut router = axum::Router::new();
        if let Some(models) = models {
            registrations.extend(models.entries().iter().map(|e| {
                let app = format!("{}/{}", e.pipeline.kind().name(), e.pipeline.model_id());
                let mut decl = declaration(config, app, e.capacity);
                decl.price_info = app_price(config, &e.config).map(|price| PriceInfoDecl {
                    price: serde_json::Value::String(price),
                    currency: "usd".into(),
                    unit: "hour".into(),
                });
                decl.metadata = metadata(serde_json::json!({
                    "pipeline": e.pipeline.kind().name(),
                    "model_id": e.pipeline.model_id(),
                    "runtime": e.pipeline.runtime(),
                }));
                Registration::new(&config.orchestrator, &config.secret, decl)
            }));
            router = router
                .merge(crate::ai_runner_api::AiHttp::new(models, None).router(config.max_body));
        }
        let apps: Vec<Arc<dyn PersistentApp>> = persistent.iter().map(|p| p.app.clone()).collect();
        if !router.has_routes() {
            // No AI app answers ai-runner's /health under the runner's URL.
            router = router.merge(health(apps.clone()));
        }
        let path = reqwest::Url::parse(&config.runner_url)
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        for p in persistent {
            let mut decl = declaration(config, p.app.app_name(), p.capacity);
            let app_router = match p.app.path() {
                Some(sub) => {
                    decl.runner_url = format!("{}{sub}", config.runner_url.trim_end_matches('/'));
                    axum::Router::new().nest(&sub, p.app.clone().router())
                }
                None => p.app.clone().router(),
            };
            decl.mode = "persistent".into();
            decl.metadata = metadata(p.app.metadata());
            let registration = Registration::new(&config.orchestrator, &config.secret, decl);
            let trusted = registration.clone();
            p.app
                .sessions()
                .follow_controls_of(Arc::new(move || trusted.control_bases()));
            spawn_reconciler(registration.clone(), p.app.clone());
            registrations.push(registration);
            router = router.merge(app_router);
        }
        let router = under_secret_path(router, &path, health(apps.clone()));
        Ok(BoundRunner {
            listener,
            router,
            registrations,
            persistent: apps,
            drain_timeout: config.drain_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    /// Registers every app, then serves until `stop` is cancelled. Then it
    /// drains: every app is reported `draining` at once (hidden, so no new
    /// request or session comes), requests and live sessions in flight get
    /// up to the drain timeout to finish (live sessions left are stopped),
    /// and only then are the apps unregistered, which releases their
    /// sessions at the orchestrator.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
        for r in &self.registrations {
            if let Err(e) = r.register().await {
                tracing::warn!(error = %e, "Live Runner registration failed; retrying at each heartbeat");
            }
        }
        let drained = tokio_util::sync::CancellationToken::new();
        let beats: Vec<_> = self
            .registrations
            .iter()
            .map(|r| {
                let drained = drained.clone();
                tokio::spawn(r.clone().run(async move { drained.cancelled().await }))
            })
            .collect();
        let hidden = {
            let (stop, registrations) = (stop.clone(), self.registrations.clone());
            async move {
                stop.cancelled().await;
                tracing::info!("draining: hiding every app from new work");
                for r in &registrations {
                    if let Err(e) = r.announce_status("draining").await {
                        tracing::warn!(error = %e, "could not report draining");
                    }
                }
            }
        };
        let limits = crate::listener::Limits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HEADER_TIMEOUT,
            header_read_timeout: HEADER_TIMEOUT,
            http2: true,
            drain_timeout: self.drain_timeout,
        };
        // The listener goes with the serving: once it stops, new
        // connections are refused rather than left waiting in the backlog.
        let (listener, router) = (self.listener, self.router);
        let serving = async move {
            crate::listener::serve(
                &listener,
                "live runner",
                limits,
                router,
                |tcp| async move { Some(tcp) },
                hidden,
            )
            .await
        };
        let sessions_done = {
            let (stop, apps) = (stop.clone(), self.persistent.clone());
            async move {
                stop.cancelled().await;
                while apps.iter().any(|a| !a.sessions().ids().is_empty()) {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        let drain_timeout = self.drain_timeout;
        let result = {
            let drain = async {
                tokio::join!(serving, sessions_done);
                Ok(())
            };
            tokio::pin!(drain);
            tokio::select! {
                r = &mut drain => r,
                _ = async {
                    stop.cancelled().await;
                    tokio::time::sleep(drain_timeout).await;
                } => {
                    tracing::warn!(?drain_timeout, "drain timed out: stopping the work left");
                    for app in &self.persistent {
                        for sid in app.sessions().ids() {
                            app.sessions().stop(&sid);
                        }
                    }
                    Ok(())
                }
            }
        };
        drained.cancel();
        for b in beats {
            let _ = b.await;
        }
        result
    }
}

/// Keeps a persistent app's sessions in line with the orchestrator's:
/// reports what it works on in each beat, stops a session the O2R channel
/// says was released, and stops work on sessions each heartbeat answer no
/// longer lists (O2R messages can be dropped: the answer is the backstop).
fn spawn_reconciler(registration: Arc<Registration>, app: Arc<dyn PersistentApp>) {
    let mut answers = registration.subscribe();
    let mut events = registration.session_events();
    tokio::spawn(async move {
        let app = app.sessions();
        loop {
            registration.set_local_sessions(app.ids());
            tokio::select! {
                event = events.recv() => match event {
                    Ok(SessionEvent::Released(sid)) => app.stop(&sid),
                    Ok(SessionEvent::Lost) => {
                        for sid in app.ids() {
                            app.stop(&sid);
                        }
                    }
                    Ok(SessionEvent::Reserved(_))
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                changed = answers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let held = answers
                        .borrow_and_update()
                        .as_ref()
                        .map(|r| r.session_ids.clone());
                    if let Some(held) = held {
                        app.retain(&held);
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `router` answers to `GET path`: status and body.
    async fn get(router: &axum::Router, path: &str) -> (u16, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn apps_are_served_only_under_the_secret_path() {
        let app = axum::Router::new().route(
            "/echo",
            axum::routing::get(|uri: axum::http::Uri| async move { uri.to_string() }),
        );
        let router = under_secret_path(app.clone(), "/s3cr3t-0123456789/", health(Vec::new()));
        assert_eq!(
            get(&router, "/s3cr3t-0123456789/echo?x=1").await,
            (200, "/echo?x=1".into())
        );
        for outside in [
            "/echo",
            "/s3cr3t-0123456789x/echo",
            "/s3cr3t/echo",
            "/",
            "/s3cr3t-012345678",
        ] {
            assert_eq!(get(&router, outside).await.0, 404, "{outside}");
        }
        // Health stays at the root for probes.
        assert_eq!(get(&router, "/health").await.0, 200);
        // No path: served as it is (its own routes only).
        let open = under_secret_path(app, "/", health(Vec::new()));
        assert_eq!(get(&open, "/echo").await, (200, "/echo".into()));
    }

    #[test]
    fn prices_read_as_go_livepeer_parses_them() {
        assert_eq!(rational_text(3, 1), "3");
        assert_eq!(rational_text(5, 10), "0.5");
        assert_eq!(rational_text(125, 100), "1.25");
        assert_eq!(rational_text(1, 3), "1/3");
        assert_eq!(rational_text(0, 1), "0");
    }

    #[test]
    fn an_apps_usd_price_is_its_own_else_the_runners() {
        let config = RunnerConfig {
            orchestrator: "o:1".into(),
            secret: "s".into(),
            runner_url: "http://r:1".into(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            price_usd_per_hour: Some("0.25".into()),
            gpu: None,
            max_body: 1,
            drain_timeout: std::time::Duration::from_secs(1),
        };
        let model = |json: &str| -> crate::ai::config::AiModelConfig {
            serde_json::from_str(json).unwrap()
        };
        let own = model(
            r#"{"pipeline":"upscale","model_id":"m","price_per_unit":"0.5","currency":"USD"}"#,
        );
        assert_eq!(app_price(&config, &own).as_deref(), Some("0.5"));
        // Wei prices are the shim's business, not a runner's USD price.
        let wei = model(r#"{"pipeline":"upscale","model_id":"m","price_per_unit":7}"#);
        assert_eq!(app_price(&config, &wei).as_deref(), Some("0.25"));
    }
}
