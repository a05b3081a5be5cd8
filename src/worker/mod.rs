//! `lpworker serve`: the stateless gRPC worker. It owns no chain, payment or
//! session state, so replicas can be added and removed freely.
//!
//! [`BoundWorker::run`] serves `lpworker.v1.Worker`, `grpc.health.v1.Health`
//! and server reflection on one port and Prometheus metrics on another, and
//! drains on the shutdown signal: health turns NOT_SERVING, new work is refused,
//! in-flight work finishes (up to the drain timeout), then it returns.

pub mod fetch;
pub mod metrics;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::Status;
use tracing::{info, warn};

use crate::ai::Registry;
use crate::proto::worker as pb;
use crate::video::nvidia::selection::GpuSelection;
use crate::video::probe::{self, BackendChoice};
use crate::video::{Admission, Transcoder};
use metrics::Metrics;
use service::{RequestLimits, WorkerService};

/// Everything `lpworker serve` can be told.
/// How long a drained worker waits for finished responses to be sent.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// The ai-runner HTTP listener's limits. Its header deadline also closes a
/// kept-alive connection idle that long (ai-runner's uvicorn closes them
/// after 5 s).
const AI_HTTP_LIMITS: crate::listener::Limits = crate::listener::Limits {
    max_connections: 8192,
    // No handshake: plain HTTP.
    handshake_timeout: Duration::from_secs(10),
    header_read_timeout: Duration::from_secs(10),
    http2: false,
    // Work has drained by the time the listener stops; this bounds the
    // wait for a response to reach a client that reads it slowly.
    drain_timeout: Duration::from_secs(10),
};

#[derive(Debug, Clone)]

pub struct WorkerConfig {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Concurrent requests admitted (go-livepeer's `-maxSessions`).
    pub max_sessions: u32,
    /// How long a drain waits for in-flight work.
    pub drain_timeout: Duration,
    pub limits: RequestLimits,
    pub backend: BackendChoice,
    /// `--nvidia`: the GPUs to transcode on.
    pub nvidia: Option<GpuSelection>,
    pub tls: Option<TlsFiles>,
    /// When set, callers must send `authorization: Bearer <secret>`.
    pub auth_secret: Option<String>,
    /// Trust self-signed certificates when fetching segment URLs.
    pub fetch_insecure: bool,
    /// Non-public addresses segment URLs may still be fetched from
    /// (`--fetch-allow`); public addresses always may.
    pub fetch_allow: Vec<fetch::Cidr>,
    /// AI pipelines served over gRPC `Infer` and, with an address, the ai-runner HTTP API.
    pub ai: Option<AiServing>,
}

#[derive(Debug, Clone)]
pub struct AiServing {
    pub registry: Arc<Registry>,
    /// Where to serve the ai-runner HTTP API.
    pub http_addr: Option<SocketAddr>,
    /// ai-runner's `AUTH_TOKEN`: required as a bearer token on pipeline routes.
    pub auth_token: Option<String>,
    pub max_body: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, callers must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error(transparent)]
    Backend(#[from] crate::video::VideoError),
}

/// A worker with its sockets bound, ready to [`run`](BoundWorker::run).
pub struct BoundWorker {
    config: WorkerConfig,
    grpc: TcpListener,
    metrics_listener: Option<TcpListener>,
    ai_listener: Option<TcpListener>,
    admission: Arc<Admission>,
    metrics: Metrics,
    service: WorkerService,
}

/// Checks the shared secret on every Worker call.
#[derive(Clone)]
struct SecretCheck(Option<Arc<str>>);

impl Interceptor for SecretCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(secret) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong worker secret"))
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed secret was right. Hand-written: eight lines do not
/// justify a dependency.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read(path: &PathBuf) -> Result<Vec<u8>, WorkerError> {
    std::fs::read(path).map_err(|source| WorkerError::TlsFile {
        path: path.clone(),
        source,
    })
}

impl BoundWorker {
    /// Probes the machine, picks the backend and binds the sockets.
    pub async fn bind(config: WorkerConfig) -> Result<Self, WorkerError> {
        let capabilities = probe::probe();
        let backend = probe::select_backend(config.backend, config.nvidia.as_ref(), &capabilities)?;
        let transcoder = Transcoder::new(backend);
        let grpc = TcpListener::bind(config.addr)
            .await
            .map_err(|source| WorkerError::Bind {
                addr: config.addr,
                source,
            })?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| WorkerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let ai_listener = match config.ai.as_ref().and_then(|a| a.http_addr) {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| WorkerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let registry = config
            .ai
            .as_ref()
            .map(|a| Arc::clone(&a.registry))
            .unwrap_or_else(|| Arc::new(Registry::empty()));
        let admission = Admission::new(config.max_sessions);
        let metrics = Metrics::new();
        let fetcher = fetch::Fetcher::new(
            config.limits.timeout,
            config.limits.max_segment_bytes,
            config.fetch_insecure,
            fetch::AddressPolicy::new(config.fetch_allow.clone()),
        );
        let service = WorkerService::new(
            transcoder,
            capabilities,
            Arc::clone(&admission),
            metrics.clone(),
            fetcher,
            config.limits.clone(),
            registry,
        );
        Ok(BoundWorker {
            config,
            grpc,
            metrics_listener,
            ai_listener,
            admission,
            metrics,
            service,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound socket has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where the ai-runner HTTP API listens, if it is served.
    pub fn ai_http_addr(&self) -> Option<SocketAddr> {
        self.ai_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkerError> {
        let BoundWorker {
            config,
            grpc,
            metrics_listener,
            ai_listener,
            admission,
            metrics,
            service,
        } = self;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::worker_server::WorkerServer<WorkerService>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        // Reflection on both v1 and v1alpha: grpcurl and most tools ask v1,
        // older clients (and some UIs) still ask only v1alpha.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder()
            .build_v1()
            .expect("descriptor sets are valid");
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .expect("descriptor sets are valid");

        let max_message = config.limits.max_segment_bytes.saturating_add(64 << 10);
        let worker = tonic::service::interceptor::InterceptedService::new(
            pb::worker_server::WorkerServer::new(service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(service::CHUNK_BYTES + (64 << 10)),
            SecretCheck(config.auth_secret.as_deref().map(Arc::from)),
        );

        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            let mut tls_config = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
            if let Some(ca) = &tls.client_ca {
                tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            builder = builder.tls_config(tls_config).map_err(WorkerError::Tls)?;
        }

        // Drain sequence: signal → NOT_SERVING and refuse new work → wait for
        // in-flight work (bounded) → stop the server.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let drain = {
            let admission = Arc::clone(&admission);
            let drain_timeout = config.drain_timeout;
            async move {
                shutdown.await;
                info!(in_flight = admission.in_flight(), "draining");
                admission.start_drain();
                health_reporter
                    .set_not_serving::<pb::worker_server::WorkerServer<WorkerService>>()
                    .await;
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                if tokio::time::timeout(drain_timeout, admission.wait_idle())
                    .await
                    .is_err()
                {
                    warn!(
                        in_flight = admission.in_flight(),
                        "drain timeout reached; stopping with work in flight"
                    );
                }
                // Work counts as done when its renditions are produced; their
                // response streams may still be on their way out. A moment for
                // them to reach the clients before the listener stops (under
                // load a stop right away reset a finished job's stream).
                tokio::time::sleep(FLUSH_GRACE).await;
                let _ = stop_tx.send(true);
            }
        };
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let metrics_task = metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                stopped(stop_rx.clone()),
            ))
        });
        let ai_task = match (ai_listener, &config.ai) {
            (Some(listener), Some(ai)) => {
                let router = crate::ai_runner_api::AiHttp::new(
                    Arc::clone(&ai.registry),
                    ai.auth_token.clone(),
                )
                .router(ai.max_body);
                let shutdown = stopped(stop_rx.clone());
                Some(tokio::spawn(async move {
                    crate::listener::serve(
                        &listener,
                        "ai-http",
                        AI_HTTP_LIMITS,
                        router,
                        |tcp| async { Some(tcp) },
                        shutdown,
                    )
                    .await
                }))
            }
            _ => None,
        };
        info!(addr = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(), capacity = admission.capacity(), "serving");
        tokio::spawn(drain);
        let result = builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(worker)
            .serve_with_incoming_shutdown(
                crate::log_limit::incoming(grpc, "grpc"),
                stopped(stop_rx),
            )
            .await
            .map_err(WorkerError::Serve);
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        if let Some(task) = ai_task {
            let _ = task.await;
        }
        info!("stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    }
}
