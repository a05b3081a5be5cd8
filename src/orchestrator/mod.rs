//! `lpworker orchestrator`: the thin shim gateways talk to. It speaks
//! go-livepeer's gateway protocol (the `net.Orchestrator` gRPC service and
//! `POST /segment` on one TLS port), issues session tokens, and routes the
//! work to `lpworker serve` workers. Off chain (go-livepeer's `-network
//! offchain`) no tickets are issued or taken; with a chain, `payments`
//! issues ticket params, validates tickets and keeps balances, and the
//! chain service (`crate::chain`) follows rounds and redeems winners.

pub mod auth;
pub mod gateway;
pub mod media;
pub mod payments;
pub mod pricing;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::attach::capabilities;
use crate::proto::lp_rpc as net;
use gateway::{Gateway, OrchestratorService};

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The public `host:port` gateways use (go-livepeer's `-serviceAddr`).
    pub service_addr: String,
    pub workers: Vec<String>,
    pub datadir: PathBuf,
    /// Operator's certificate and key; generated into `datadir` when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub price_per_unit: i64,
    pub pixels_per_unit: i64,
    pub max_segment_bytes: usize,
    pub livepeer_version: String,
    /// Ticket payments on a chain; `None` runs off chain.
    pub payments: Option<Arc<payments::Payments>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("data directory {path}: {source}")]
    Datadir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Worker(#[from] workers::InvalidWorker),
    #[error("no worker answered at {0:?}; start `lpworker serve` first")]
    NoWorkers(Vec<String>),
}

/// Adds the AI pipelines the workers serve: one capability per pipeline and
/// each model in go-livepeer's per-capability constraints.
fn add_ai_capabilities(caps: &mut net::Capabilities, pipelines: &[(String, String)]) {
    use net::capabilities::{capability_constraints::ModelConstraint, Constraints};
    let constraints = caps.constraints.get_or_insert_with(Constraints::default);
    for (pipeline, model) in pipelines {
        let Some(kind) = crate::ai::PipelineKind::from_name(pipeline) else {
            continue;
        };
        capabilities::add(&mut caps.bitstring, kind.capability());
        *caps.capacities.entry(kind.capability()).or_default() += 1;
        constraints
            .per_capability
            .entry(kind.capability())
            .or_default()
            .models
            .insert(
                model.clone(),
                ModelConstraint {
                    warm: true,
                    capacity: 1,
                    runner_version: String::new(),
                    capacity_in_use: 0,
                },
            );
    }
}

pub struct BoundOrchestrator {
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
}

impl BoundOrchestrator {
    pub async fn bind(config: OrchestratorConfig) -> Result<Self, OrchestratorError> {
        std::fs::create_dir_all(&config.datadir).map_err(|source| OrchestratorError::Datadir {
            path: config.datadir.clone(),
            source,
        })?;
        let pool = Arc::new(workers::WorkerPool::new(&config.workers)?);
        let mut caps = None;
        for _ in 0..20 {
            caps = pool.refresh().await;
            if caps.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let caps = caps.ok_or_else(|| OrchestratorError::NoWorkers(config.workers.clone()))?;
        pool.spawn_refresher(Duration::from_secs(5));
        // What the workers can do, in go-livepeer's capability encoding.
        let probe = crate::video::probe::Capabilities {
            cpu_model: caps.cpu_model.clone(),
            cpu_cores: caps.cpu_cores as usize,
            decoders: caps.decoders.clone(),
            encoders: caps.encoders.clone(),
            gpus: Vec::new(),
            backends: caps.backends.clone(),
        };
        let mut net_caps = capabilities::to_net(
            &capabilities::transcoder_capabilities(&probe),
            &config.livepeer_version,
        );
        add_ai_capabilities(&mut net_caps, &pool.pipelines());
        let host = config
            .service_addr
            .rsplit_once(':')
            .map_or(config.service_addr.as_str(), |(h, _)| h)
            .to_string();
        let (cert, key) = tls::ensure_identity(
            &config.datadir,
            config.tls.clone(),
            &[host, "localhost".into(), "127.0.0.1".into()],
        )?;
        let tls = tls::server_config(&cert, &key)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| OrchestratorError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let service_addr = if config.service_addr.ends_with(":0") {
            // Tests listen on an ephemeral port: advertise the real one.
            format!(
                "{}:{}",
                &config.service_addr[..config.service_addr.len() - 2],
                listener.local_addr().map(|a| a.port()).unwrap_or(0)
            )
        } else {
            config.service_addr.clone()
        };
        let gateway = Arc::new(Gateway {
            service_uri: format!("https://{service_addr}"),
            auth: auth::AuthTokens::new(rand::random()),
            workers: pool,
            media: media::MediaStore::new(512 << 20),
            capabilities: net_caps,
            price: net::PriceInfo {
                price_per_unit: config.price_per_unit,
                pixels_per_unit: config.pixels_per_unit.max(1),
                ..Default::default()
            },
            max_segment_bytes: config.max_segment_bytes,
            payments: config.payments.clone(),
            trickle: crate::trickle::TrickleServer::new(Default::default()),
        });
        Ok(BoundOrchestrator {
            listener,
            gateway,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn service_uri(&self) -> &str {
        &self.gateway.service_uri
    }

    /// Serves until `shutdown` resolves; open connections are then closed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let grpc = net::orchestrator_server::OrchestratorServer::new(OrchestratorService(
            Arc::clone(&self.gateway),
        ));
        let http = axum::Router::new()
            .route("/segment", axum::routing::post(gateway::segment))
            .route("/payment", axum::routing::post(gateway::payment))
            .route("/stream/{*path}", axum::routing::get(gateway::stream))
            .route("/{pipeline}", axum::routing::post(gateway::ai))
            .layer(axum::extract::DefaultBodyLimit::max(
                self.gateway.max_segment_bytes,
            ))
            .with_state(Arc::clone(&self.gateway))
            // Trickle channels (Live Runner sessions and live video create
            // them); the server streams bodies itself and caps segments.
            .nest(crate::trickle::BASE_PATH, self.gateway.trickle.router());
        let _sweeper = self.gateway.trickle.spawn_sweeper();
        let app = tonic::service::Routes::new(grpc)
            .into_axum_router()
            .merge(http);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accept = {
            let connections = Arc::clone(&connections);
            async move {
                loop {
                    let (tcp, peer) = match self.listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    connections
                        .lock()
                        .expect("connection set")
                        .spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            if let Err(e) = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await
                            {
                                tracing::debug!(%peer, error = %e, "connection ended");
                            }
                        });
                }
            }
        };
        match &self.gateway.payments {
            Some(p) => {
                info!(uri = %self.gateway.service_uri, address = %p.address(), "orchestrator serving (on chain, ticket payments)")
            }
            None => info!(uri = %self.gateway.service_uri, "orchestrator serving (off chain)"),
        }
        tokio::select! {
            _ = accept => {},
            _ = shutdown => {},
        }
        connections.lock().expect("connection set").abort_all();
        info!("orchestrator stopped");
    }
}
