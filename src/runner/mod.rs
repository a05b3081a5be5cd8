//! `lpworker attach --live-runner`: lpworker as a go-livepeer 0.9 Live
//! Runner. Its HTTP server is the runner: each loaded AI pipeline is a
//! single-shot app `PIPELINE/MODEL_ID` answering ai-runner's route under
//! the runner's URL (a gateway calls `/apps/{id}/app/upscale` on the
//! orchestrator), registered dynamically with the orchestrator, one
//! registration per app. `GET /health` makes the same server usable as a
//! static runner (`health_url: /health` in go-livepeer's runners.json).

pub mod registration;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::ai::Registry as Models;
use crate::live_runner::wire::{GpuInfo, PriceInfoDecl, RunnerDecl};
pub use registration::{Registered, Registration, RegistrationError};

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
}

/// A bound runner: its HTTP server and one registration per app.
pub struct BoundRunner {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    pub registrations: Vec<Arc<Registration>>,
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

/// The live transcoding app and how many sessions it takes at once.
pub struct Transcoding {
    pub app: Arc<transcode::TranscodeApp>,
    pub capacity: u32,
}

impl BoundRunner {
    pub async fn bind(
        config: &RunnerConfig,
        models: Option<Arc<Models>>,
        transcoding: Option<Transcoding>,
    ) -> std::io::Result<BoundRunner> {
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let mut registrations = Vec::new();
        let mut router = axum::Router::new();
        if let Some(models) = models {
            registrations.extend(models.entries().iter().map(|e| {
                let app = format!("{}/{}", e.pipeline.kind().name(), e.pipeline.model_id());
                Registration::new(
                    &config.orchestrator,
                    &config.secret,
                    declaration(config, app, e.capacity),
                )
            }));
            router =
                router.merge(crate::ai::http::AiHttp::new(models, None).router(config.max_body));
        } else {
            router = router.route(
                "/health",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "OK"})) }),
            );
        }
        if let Some(t) = transcoding {
            let mut decl = declaration(config, t.app.app_name(), t.capacity);
            decl.mode = "persistent".into();
            let registration = Registration::new(&config.orchestrator, &config.secret, decl);
            spawn_reconciler(registration.clone(), t.app.clone());
            registrations.push(registration);
            router = router.merge(t.app.router());
        }
        Ok(BoundRunner {
            listener,
            router,
            registrations,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    /// Registers every app, then serves until `stop` resolves; the apps
    /// are unregistered first and requests in flight then finish.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
        for r in &self.registrations {
            if let Err(e) = r.register().await {
                tracing::warn!(error = %e, "Live Runner registration failed; retrying at each heartbeat");
            }
        }
        let beats: Vec<_> = self
            .registrations
            .iter()
            .map(|r| {
                let stop = stop.clone();
                tokio::spawn(r.clone().run(async move { stop.cancelled().await }))
            })
            .collect();
        let serving = {
            let stop = stop.clone();
            axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
                stop.cancelled().await;
                // Unregistered first, so no new request is routed here.
            })
        };
        let result = serving.await;
        for b in beats {
            let _ = b.await;
        }
        result
    }
}

/// Keeps a persistent app's sessions in line with the orchestrator's:
/// reports what it works on in each beat, and stops work on sessions each
/// heartbeat answer no longer lists.
fn spawn_reconciler(registration: Arc<Registration>, app: Arc<transcode::TranscodeApp>) {
    let mut answers = registration.subscribe();
    tokio::spawn(async move {
        loop {
            registration.set_local_sessions(app.session_ids());
            tokio::select! {
                changed = answers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let held = answers
                        .borrow_and_update()
                        .as_ref()
                        .map(|r| r.session_ids.clone());
                    if let Some(held) = held {
                        app.retain_sessions(&held);
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    });
}
