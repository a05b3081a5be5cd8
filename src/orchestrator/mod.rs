//! `lpworker orchestrator`: the thin shim gateways talk to. It speaks
//! go-livepeer's gateway protocol (the `net.Orchestrator` gRPC service and
//! `POST /segment` on one TLS port), issues session tokens, and routes the
//! work to `lpworker serve` workers. Off chain (go-livepeer's `-network
//! offchain`) no tickets are issued or taken; with a chain, `payments`
//! issues ticket params, validates tickets and keeps balances, and the
//! chain service (`crate::chain`) follows rounds and redeems winners.

pub mod auth;
pub mod credentials;
pub mod gateway;
pub mod media;
pub mod payments;
pub mod pricing;
pub mod routing;
pub mod runners;
pub mod tls;
pub mod transcoders;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::lp_rpc::capabilities;
use crate::proto::lp_rpc as net;
use gateway::{Gateway, OrchestratorService};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 8192;
/// A TLS handshake not done by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request whose header has not arrived by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The public `host:port` gateways use (go-livepeer's `-serviceAddr`).
    pub service_addr: String,
    pub workers: Vec<String>,
    /// Secret, TLS and deadlines for calls to the workers.
    pub worker_client: workers::ClientOptions,
    pub datadir: PathBuf,
    /// Operator's certificate and key; generated into `datadir` when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub price_per_unit: i64,
    pub pixels_per_unit: i64,
    pub max_segment_bytes: usize,
    /// Whole request bodies (segments, AI requests) buffered at once, in
    /// bytes, and how long one may take to arrive.
    pub max_buffered_bodies: usize,
    pub body_read_timeout: Duration,
    pub livepeer_version: String,
    /// Other instances of this orchestrator advertised in OrchestratorInfo
    /// (go-livepeer's -nodes): gateways discover them through this one.
    pub nodes: Vec<String>,
    /// Ticket payments on a chain; `None` runs off chain.
    pub payments: Option<Arc<payments::Payments>>,
    /// Hosting Live Runners; `None` leaves their routes out.
    pub live_runners: Option<LiveRunnerOptions>,
    /// `-orchSecret`: go-livepeer remote transcoders may register with it;
    /// `None` leaves the `net.Transcoder` service and its routes out.
    pub orch_secret: Option<String>,
}

/// go-livepeer's Live Runner flags.
#[derive(Clone, Default)]
pub struct LiveRunnerOptions {
    /// `-orchSecret`: dynamic registration's bootstrap secret.
    pub orch_secret: Option<String>,
    /// `-liveRunnerConfig`: static runners.
    pub static_runners: Vec<crate::live_runner::wire::RunnerDecl>,
    /// `-liveRunnerAddr`: the base URL runners reach this node at.
    pub runner_addr: Option<String>,
    /// `-liveRunnerProxyUrl`.
    pub proxy_url: Option<String>,
    /// Where `POST /registerLiveRunners` is served (`-cliAddr`).
    pub cli_listen: Option<SocketAddr>,
    /// Heartbeat period asked of runners, and static runners' health-check
    /// period (go-livepeer: 5 s).
    pub heartbeat_interval: Option<Duration>,
    /// A runner silent this long is removed (go-livepeer: 20 s).
    pub heartbeat_ttl: Option<Duration>,
    /// Where the registry is kept across restarts; `None` keeps it in memory.
    pub state_file: Option<PathBuf>,
    /// ETH/USD readings for runners' USD prices (needed on chain).
    pub prices: Option<Arc<dyn crate::live_runner::price::EthUsdSource>>,
    /// How often metered sessions are billed (-livePaymentInterval).
    pub payment_interval: Duration,
}

impl std::fmt::Debug for LiveRunnerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bootstrap secret.
        f.debug_struct("LiveRunnerOptions")
            .field("static_runners", &self.static_runners.len())
            .field("runner_addr", &self.runner_addr)
            .field("proxy_url", &self.proxy_url)
            .field("cli_listen", &self.cli_listen)
            .field("state_file", &self.state_file)
            .field("payment_interval", &self.payment_interval)
            .finish_non_exhaustive()
    }
}

/// The public base URL for `-serviceAddr`: `host:port` (HTTPS, as
/// go-livepeer assumes) or a URL with its scheme. A `:0` port is the
/// listener's real one (tests).
pub fn service_uri(service_addr: &str, port: u16) -> String {
    let addr = service_addr.trim().trim_end_matches('/');
    let (scheme, rest) = addr.split_once("://").unwrap_or(("https", addr));
    let rest = match rest.strip_suffix(":0") {
        Some(host) => format!("{host}:{port}"),
        None => rest.to_string(),
    };
    format!("{scheme}://{rest}")
}

/// go-livepeer's `-nodes`: comma-separated instance URLs, `https://` added
/// where no scheme is given, anything but https refused, each in its
/// canonical form (gateways compare them as strings to avoid asking one
/// node twice).
pub fn parse_nodes(list: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for node in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let with_scheme = match node.contains("://") {
            true => node.to_string(),
            false => format!("https://{node}"),
        };
        let url = reqwest::Url::parse(&with_scheme)
            .map_err(|e| format!("-nodes {node:?}: not a URL ({e})"))?;
        if url.scheme() != "https" {
            return Err(format!("-nodes {node:?}: node URLs must be https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("-nodes {node:?}: no host"));
        }
        // As Go's url.String() writes it: no "/" added to a bare host.
        let mut canonical = url.to_string();
        if url.path() == "/" && url.query().is_none() && !with_scheme.ends_with('/') {
            canonical.pop();
        }
        nodes.push(canonical);
    }
    if nodes.is_empty() {
        return Err("-nodes is empty".into());
    }
    Ok(nodes)
}

/// The host name in `-serviceAddr` (for the TLS certificate).
fn service_host(service_addr: &str) -> String {
    let addr = service_addr.trim();
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_string();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string()
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
    #[error("live runners: {0}")]
    LiveRunners(String),
}

/// Adds the AI pipelines the workers serve: one capability per pipeline and
/// each model in go-livepeer's per-capability constraints.
fn add_ai_capabilities(caps: &mut net::Capabilities, pipelines: &[(String, String)]) {
    use net::capabilities::{capability_constraints::ModelConstraint, Constraints};
    let constraints = caps.constraints.get_or_insert_with(Constraints::default);
    for (pipeline, model) in pipelines {
        let Some(capability) =
            crate::ai::PipelineKind::from_name(pipeline).and_then(|k| k.capability())
        else {
            continue;
        };
        capabilities::add(&mut caps.bitstring, capability);
        *caps.capacities.entry(capability).or_default() += 1;
        constraints
            .per_capability
            .entry(capability)
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

/// The Live Runner registry with its static runners loaded, and the CLI
/// listener bound.
async fn live_runners(
    options: &LiveRunnerOptions,
    service_uri: &str,
    payments: Option<&Arc<payments::Payments>>,
    auth: &Arc<auth::AuthTokens>,
    trickle: &Arc<crate::trickle::TrickleServer>,
    http_addr: std::net::SocketAddr,
) -> Result<(Arc<runners::LiveRunners>, Option<TcpListener>), OrchestratorError> {
    let on_chain = payments.is_some();
    use crate::live_runner::{proxy_url::ProxyTemplate, Registry, RegistryConfig};
    let bad = |e: &dyn std::fmt::Display| OrchestratorError::LiveRunners(e.to_string());
    let cli = match options.cli_listen {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                warn!(%addr, "the CLI listener is not on loopback: anyone who reaches it can register Live Runners");
            }
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| OrchestratorError::Bind { addr, source })?,
            )
        }
        None => None,
    };
    let mut config = RegistryConfig::new(service_uri);
    // No dynamic runner may send gateways' requests to these.
    config.own_addrs = std::iter::once(http_addr)
        .chain(cli.as_ref().and_then(|l| l.local_addr().ok()))
        .collect();
    config.orch_secret = options.orch_secret.clone().filter(|s| !s.is_empty());
    config.on_chain = on_chain;
    if let Some(every) = options.heartbeat_interval {
        config.heartbeat_interval = every.max(Duration::from_secs(1));
    }
    if let Some(ttl) = options.heartbeat_ttl {
        config.heartbeat_ttl = ttl.max(config.heartbeat_interval * 2);
    }
    if let Some(addr) = &options.runner_addr {
        let url = reqwest::Url::parse(addr)
            .map_err(|e| bad(&format!("-liveRunnerAddr {addr:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(&format!(
                "-liveRunnerAddr {addr:?} must be an absolute http(s) URL"
            )));
        }
        config.runner_base = addr.trim_end_matches('/').to_string();
    }
    if let Some(template) = &options.proxy_url {
        config.proxy_template = ProxyTemplate::parse(template, service_uri)
            .map_err(|e| bad(&format!("invalid -liveRunnerProxyUrl: {e}")))?;
    }
    let registry = Registry::new(config, trickle.clone());
    // What was live before a restart first; the config file then updates
    // its runners by label, keeping their IDs and sessions.
    if let Some(path) = &options.state_file {
        if let Some(snap) = crate::live_runner::snapshot::load(path).map_err(|e| bad(&e))? {
            let (runners, sessions) = registry.restore(snap);
            info!(runners, sessions, "live runners restored");
        }
    }
    if !options.static_runners.is_empty() {
        registry
            .register_static(&options.static_runners)
            .map_err(|e| bad(&format!("-liveRunnerConfig: {e}")))?;
    }
    let paid = match (payments, &options.prices) {
        (None, _) => None,
        (Some(payments), Some(prices)) => Some(runners::billing::LivePayments::new(
            payments.clone(),
            auth.clone(),
            prices.clone(),
            options.payment_interval,
            service_uri,
        )),
        (Some(_), None) => {
            return Err(bad(
                &"on chain, runners' USD prices need an ETH/USD price feed (-priceFeedAddr)",
            ))
        }
    };
    let runners = runners::LiveRunners::new(registry, options.state_file.clone(), paid);
    runners.restore_billing();
    runners.check_health().await;
    Ok((runners, cli))
}

pub struct BoundOrchestrator {
    listener: TcpListener,
    /// Loopback operator API (`/registerLiveRunners`).
    cli: Option<TcpListener>,
    gateway: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
}

impl BoundOrchestrator {
    pub async fn bind(config: OrchestratorConfig) -> Result<Self, OrchestratorError> {
        std::fs::create_dir_all(&config.datadir).map_err(|source| OrchestratorError::Datadir {
            path: config.datadir.clone(),
            source,
        })?;
        let pool = Arc::new(workers::WorkerPool::new(
            &config.workers,
            config.worker_client.clone(),
        )?);
        // A shim that only hosts Live Runners or remote transcoders has no
        // workers.
        let caps = if config.workers.is_empty() {
            Default::default()
        } else {
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
            caps
        };
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
        let host = service_host(&config.service_addr);
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
        let service_uri = service_uri(
            &config.service_addr,
            listener.local_addr().map(|a| a.port()).unwrap_or(0),
        );
        let auth = Arc::new(auth::AuthTokens::new(rand::random()));
        let trickle = crate::trickle::TrickleServer::new(Default::default());
        let (runners, cli) = match &config.live_runners {
            Some(options) => {
                let (runners, cli) = live_runners(
                    options,
                    &service_uri,
                    config.payments.as_ref(),
                    &auth,
                    &trickle,
                    listener
                        .local_addr()
                        .map_err(|source| OrchestratorError::Bind {
                            addr: config.listen,
                            source,
                        })?,
                )
                .await?;
                (Some(runners), cli)
            }
            None => (None, None),
        };
        let gateway = Arc::new(Gateway {
            service_uri,
            nodes: config.nodes.clone(),
            auth: auth.clone(),
            workers: pool,
            media: media::MediaStore::new(512 << 20),
            capabilities: net_caps,
            price: net::PriceInfo {
                price_per_unit: config.price_per_unit,
                pixels_per_unit: config.pixels_per_unit.max(1),
                ..Default::default()
            },
            max_segment_bytes: config.max_segment_bytes,
            bodies: crate::listener::BodyBudget::new(
                config.max_buffered_bodies,
                config.body_read_timeout,
            ),
            payments: config.payments.clone(),
            trickle,
            runners,
            transcoders: config
                .orch_secret
                .filter(|s| !s.is_empty())
                .map(|s| Arc::new(transcoders::RemoteTranscoders::new(s))),
        });
        Ok(BoundOrchestrator {
            listener,
            cli,
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

    /// Where the CLI listener (`/registerLiveRunners`) is, when there is one.
    pub fn cli_addr(&self) -> Option<SocketAddr> {
        self.cli.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; open connections are then closed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let grpc = net::orchestrator_server::OrchestratorServer::new(OrchestratorService(
            Arc::clone(&self.gateway),
        ));
        let mut http = axum::Router::new()
            .route("/segment", axum::routing::post(gateway::segment))
            .route("/payment", axum::routing::post(gateway::payment))
            .route("/stream/{*path}", axum::routing::get(gateway::stream))
            .route(
                "/live-video-to-video",
                axum::routing::post(runners::lv2v::start),
            )
            .route("/{pipeline}", axum::routing::post(gateway::ai))
            .layer(axum::extract::DefaultBodyLimit::max(
                self.gateway.max_segment_bytes,
            ))
            .with_state(Arc::clone(&self.gateway))
            // Trickle channels (Live Runner sessions and live video create
            // them); the server streams bodies itself and caps segments.
            .nest(crate::trickle::BASE_PATH, self.gateway.trickle.router());
        let _sweeper = self.gateway.trickle.spawn_sweeper();
        let mut grpc = tonic::service::Routes::new(grpc);
        if let Some(pool) = &self.gateway.transcoders {
            // As go-livepeer: remote transcoders only with -orchSecret.
            grpc = grpc.add_service(
                net::transcoder_server::TranscoderServer::new(
                    transcoders::service::TranscoderService(Arc::clone(pool)),
                )
                .max_decoding_message_size(1 << 20),
            );
            http = http.route(
                "/transcodeResults",
                axum::routing::post(transcoders::results::transcode_results)
                    .with_state(Arc::clone(&self.gateway)),
            );
        }
        let mut app = grpc.into_axum_router().merge(http);
        let mut _maintenance = None;
        if let Some(runners) = &self.gateway.runners {
            // Proxy URLs are matched before every route, as go-livepeer does.
            app = app
                .merge(runners.router())
                .layer(axum::middleware::from_fn_with_state(
                    runners.clone(),
                    runners::proxy_layer,
                ));
            _maintenance = Some(runners.spawn_maintenance());
            if let Some(cli) = self.cli {
                let router = runners.cli_router();
                tokio::spawn(async move {
                    let cli = crate::log_limit::Listener::new(cli, "cli");
                    if let Err(e) = axum::serve(cli, router).await {
                        warn!(error = %e, "CLI listener stopped");
                    }
                });
            }
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        let limits = crate::listener::Limits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            // gRPC from gateways.
            http2: true,
            // Connections are dropped at once on shutdown.
            drain_timeout: Duration::ZERO,
        };
        match &self.gateway.payments {
            Some(p) => {
                info!(uri = %self.gateway.service_uri, address = %p.address(), recipient = %p.recipient_address(), "orchestrator serving (on chain, ticket payments)")
            }
            None => info!(uri = %self.gateway.service_uri, "orchestrator serving (off chain)"),
        }
        let handshake = move |tcp| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(tcp).await.ok() }
        };
        crate::listener::serve(&self.listener, "https", limits, app, handshake, shutdown).await;
        if let Some(runners) = &self.gateway.runners {
            runners.save_state();
        }
        info!("orchestrator stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_nodes;

    #[test]
    fn nodes_are_https_urls_in_go_livepeers_form() {
        assert_eq!(
            parse_nodes(" a.example:8935, https://B.example/x ,,https://c.example/").unwrap(),
            [
                "https://a.example:8935",
                "https://b.example/x",
                "https://c.example/"
            ]
        );
        for bad in ["", " , ", "http://a.example", "https://", "ftp://a.example"] {
            assert!(parse_nodes(bad).is_err(), "{bad:?}");
        }
    }
}
