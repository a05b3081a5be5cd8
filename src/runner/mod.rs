//! `lpworker attach --live-runner`: lpworker as a go-livepeer 0.9 Live
//! Runner. Its HTTP server is the runner: each loaded AI pipeline is a
//! single-shot app `PIPELINE/MODEL_ID` answering ai-runner's route under
//! the runner's URL (a gateway calls `/apps/{id}/app/upscale` on the
//! orchestrator), registered dynamically with the orchestrator, one
//! registration per app. `GET /health` makes the same server usable as a
//! static runner (`health_url: /health` in go-livepeer's runners.json).

pub mod registration;

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

impl BoundRunner {
    pub async fn bind(config: &RunnerConfig, models: Arc<Models>) -> std::io::Result<BoundRunner> {
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let registrations = models
            .entries()
            .iter()
            .map(|e| {
                let app = format!("{}/{}", e.pipeline.kind().name(), e.pipeline.model_id());
                Registration::new(
                    &config.orchestrator,
                    &config.secret,
                    declaration(config, app, e.capacity),
                )
            })
            .collect();
        let router = crate::ai::http::AiHttp::new(models, None).router(config.max_body);
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
