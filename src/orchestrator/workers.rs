//! The `lpworker serve` workers behind the shim: free capacity polled from
//! their `Capabilities`, each segment sent to the least busy healthy worker,
//! and retried on another when one is full, draining or unreachable. A
//! configured host name is resolved to all its addresses on every refresh, so
//! a Kubernetes headless Service gives one worker per ready pod.
//!
//! Workers run with `serve --auth-secret` get the secret as a bearer token on
//! every call; `https://` workers are reached over TLS, trusting a CA file or
//! one pinned certificate, optionally with a client certificate (mTLS). Every
//! call has a deadline and every connection HTTP/2 keepalives, so a worker
//! that vanishes without a reset is given up on and the next one tried.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use tracing::warn;

use crate::peer_tls::PeerCertificate;
use crate::proto::worker as pb;

#[derive(Debug, thiserror::Error)]
#[error("invalid worker address {0:?}")]
pub struct InvalidWorker(pub String);

/// How long a worker may take to answer a capacity poll.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 PING interval on worker connections, and how long an unanswered
/// PING is waited for before the connection is dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the shim authenticates to its workers and bounds its calls.
#[derive(Clone)]
pub struct ClientOptions {
    /// `authorization: Bearer <secret>`, sent on every call.
    authorization: Option<MetadataValue<Ascii>>,
    /// TLS for `https://` workers.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Deadline of one transcode or AI call (sent as `grpc-timeout` too).
    timeout: Duration,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("secret", &self.authorization.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            authorization: None,
            tls: None,
            timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("the worker secret must be non-empty printable ASCII")]
    Secret,
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate or key in it")]
    Pem(std::path::PathBuf),
    #[error("the certificate pin must be 64 hex digits (SHA-256 of the certificate's DER)")]
    Pin,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Which certificates an `https://` worker may present.
pub enum ServerTrust<'a> {
    /// Chains to a CA in this PEM file, for the worker's name or IP address.
    Ca(&'a Path),
    /// This leaf certificate, by the SHA-256 of its DER, in hex; name and
    /// expiry are not checked (a self-signed worker certificate).
    Pin(&'a str),
}

impl ClientOptions {
    /// The deadline of one transcode or AI call (default 120 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `secret` as a bearer token.
    pub fn with_secret(mut self, secret: &str) -> Result<Self, ClientSetupError> {
        if secret.is_empty() {
            return Err(ClientSetupError::Secret);
        }
        let value = format!("Bearer {secret}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| ClientSetupError::Secret)?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// TLS for `https://` workers, with a client certificate and key (PEM)
    /// when the workers require one.
    pub fn with_tls(
        mut self,
        trust: ServerTrust<'_>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match trust {
            ServerTrust::Ca(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
                builder.with_root_certificates(roots)
            }
            ServerTrust::Pin(hex) => {
                let pin = alloy_primitives::hex::decode(hex.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(ClientSetupError::Pin)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PeerCertificate::pinned(
                        pin, provider,
                    )))
            }
        };
        let mut config = match client {
            Some((cert, key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|_| ClientSetupError::Pem(key.to_path_buf()))?;
                builder.with_client_auth_cert(read_certs(cert)?, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.tls = Some(Arc::new(config));
        Ok(self)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientSetupError> {
    let pem = std::fs::read(path).map_err(|source| ClientSetupError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| ClientSetupError::Pem(path.to_path_buf()))?;
    if certs.is_empty() {
        return Err(ClientSetupError::Pem(path.to_path_buf()));
    }
    Ok(certs)
}

struct Worker {
    addr: String,
    client: pb::worker_client::WorkerClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    /// Free slots as last reported, minus what we have sent since.
    free: AtomicI64,
    healthy: AtomicBool,
    /// (pipeline, model id) pairs the worker serves, from its Capabilities.
    pipelines: std::sync::Mutex<Vec<(String, String)>>,
}

pub struct WorkerPool {
    /// As configured: `host:port` or URLs.
    targets: Vec<String>,
    options: ClientOptions,
    workers: RwLock<Vec<Arc<Worker>>>,
}

/// The URL for a configured target: `host:port` means plain `http://`.
fn url_of(target: &str) -> String {
    if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    }
}

fn worker(addr: String, url: &str, options: &ClientOptions) -> Result<Worker, InvalidWorker> {
    let invalid = || InvalidWorker(addr.clone());
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    let endpoint = |url: String| {
        Endpoint::from_shared(url).map(|e| {
            e.connect_timeout(POLL_TIMEOUT)
                .timeout(options.timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        })
    };
    let channel = match uri.scheme_str() {
        Some("http") => endpoint(url.to_string())
            .map_err(|_| invalid())?
            .connect_lazy(),
        Some("https") => {
            let tls = options.tls.clone().ok_or_else(invalid)?;
            let host = uri.host().ok_or_else(invalid)?;
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|_| invalid())?;
            // The scheme is http so tonic does no TLS of its own; the
            // connector does, with the configured trust.
            let base = endpoint(format!("http://{}", uri.authority().ok_or_else(invalid)?))
                .map_err(|_| invalid())?;
            let connector = tower::service_fn(move |uri: Uri| {
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
                let name = name.clone();
                async move {
                    let host = uri
                        .host()
                        .unwrap_or("localhost")
                        .trim_matches(['[', ']'])
                        .to_string();
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    let stream = tls.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            base.connect_with_connector_lazy(connector)
        }
        _ => return Err(invalid()),
    };
    Ok(Worker {
        addr,
        client: pb::worker_client::WorkerClient::new(channel).max_decoding_message_size(8 << 20),
        authorization: options.authorization.clone(),
        free: AtomicI64::new(1),
        healthy: AtomicBool::new(true),
        pipelines: Default::default(),
    })
}

impl Worker {
    /// `message` with the worker secret and a deadline.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request.set_timeout(timeout);
        request
    }
}

/// A transcode response put back together.
#[derive(Debug, Default)]
pub struct Transcoded {
    pub renditions: Vec<(pb::RenditionHeader, Vec<u8>)>,
    pub summary: Option<pb::TranscodeSummary>,
}

impl WorkerPool {
    /// Workers by address (`host:port`, `http://` or `https://` URLs);
    /// connections open lazily. An `https://` worker needs TLS options.
    pub fn new(addrs: &[String], options: ClientOptions) -> Result<WorkerPool, InvalidWorker> {
        let workers = addrs
            .iter()
            .map(|a| worker(a.clone(), &url_of(a), &options).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(WorkerPool {
            targets: addrs.to_vec(),
            options,
            workers: RwLock::new(workers),
        })
    }

    fn snapshot(&self) -> Vec<Arc<Worker>> {
        self.workers.read().expect("workers lock").clone()
    }

    /// Re-resolves `host:port` targets to every address they name, keeping
    /// the workers (and connections) whose address is unchanged.
    async fn resolve(&self) {
        let mut wanted: Vec<(String, String)> = Vec::new();
        for target in &self.targets {
            if target.contains("://") || target.parse::<std::net::SocketAddr>().is_ok() {
                wanted.push((target.clone(), url_of(target)));
                continue;
            }
            match tokio::net::lookup_host(target.as_str()).await {
                Ok(addrs) => {
                    wanted.extend(addrs.map(|a| (format!("{target} ({a})"), format!("http://{a}"))))
                }
                Err(e) => warn!(worker = %target, error = %e, "cannot resolve worker address"),
            }
        }
        if wanted.is_empty() {
            return;
        }
        let mut workers = self.workers.write().expect("workers lock");
        let mut next = Vec::new();
        for (addr, url) in wanted {
            match workers.iter().find(|w| w.addr == addr) {
                Some(w) => next.push(Arc::clone(w)),
                None => match worker(addr, &url, &self.options) {
                    Ok(w) => next.push(Arc::new(w)),
                    Err(e) => warn!(error = %e, "skipping worker"),
                },
            }
        }
        *workers = next;
    }

    /// Polls every worker's capacity once; returns the first answer.
    pub async fn refresh(&self) -> Option<pb::CapabilitiesResponse> {
        self.resolve().await;
        let mut first = None;
        for w in self.snapshot() {
            let mut client = w.client.clone();
            let request = w.request(pb::CapabilitiesRequest {}, POLL_TIMEOUT);
            match tokio::time::timeout(POLL_TIMEOUT, client.capabilities(request)).await {
                Ok(Ok(r)) => {
                    let caps = r.into_inner();
                    w.free.store(
                        if caps.draining {
                            0
                        } else {
                            i64::from(caps.free_slots)
                        },
                        Ordering::Relaxed,
                    );
                    w.healthy.store(!caps.draining, Ordering::Relaxed);
                    *w.pipelines.lock().expect("pipelines lock") = caps
                        .pipelines
                        .iter()
                        .map(|p| (p.pipeline.clone(), p.model_id.clone()))
                        .collect();
                    first.get_or_insert(caps);
                }
                Ok(Err(s)) => {
                    // Said once per outage (and at start): a refusal names
                    // the cause, e.g. a missing or wrong --worker-secret.
                    if w.healthy.swap(false, Ordering::Relaxed) {
                        warn!(worker = %w.addr, code = ?s.code(), error = s.message(), "worker not usable");
                    }
                }
                Err(_) => {
                    if w.healthy.swap(false, Ordering::Relaxed) {
                        warn!(worker = %w.addr, "worker did not answer its capacity poll in time");
                    }
                }
            }
        }
        first
    }

    /// Keeps capacities fresh in the background.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                pool.refresh().await;
            }
        });
    }

    /// Sends one segment, least busy healthy worker first, moving on to the
    /// next when a worker is full, draining or unreachable. Errors about the
    /// request itself (bad input) are returned at once.
    pub async fn transcode(&self, request: pb::TranscodeRequest) -> Result<Transcoded, Status> {
        let workers = self.snapshot();
        let mut order: Vec<&Worker> = workers.iter().map(|w| &**w).collect();
        order.sort_by_key(|w| {
            (
                !w.healthy.load(Ordering::Relaxed),
                -w.free.load(Ordering::Relaxed),
            )
        });
        let mut last = Status::unavailable("no transcoding workers configured");
        for w in order {
            w.free.fetch_sub(1, Ordering::Relaxed);
            let result = match tokio::time::timeout(
                self.options.timeout,
                Self::call(w, request.clone(), self.options.timeout),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(
                    "the worker did not finish in time",
                )),
            };
            w.free.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(t) => {
                    w.healthy.store(true, Ordering::Relaxed);
                    return Ok(t);
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::ResourceExhausted
                            | Code::Unknown
                            | Code::Internal
                    ) =>
                {
                    warn!(worker = %w.addr, code = ?s.code(), error = s.message(), "worker failed; trying another");
                    if s.code() == Code::Unavailable {
                        w.healthy.store(false, Ordering::Relaxed);
                    }
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    /// Every (pipeline, model id) some worker serves.
    pub fn pipelines(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .snapshot()
            .iter()
            .flat_map(|w| w.pipelines.lock().expect("pipelines lock").clone())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Runs an AI request on a worker serving its pipeline and model (any
    /// model of the pipeline when none is named), least busy first, moving on
    /// when one is full or unreachable.
    pub async fn infer(&self, request: pb::InferRequest) -> Result<pb::InferResponse, Status> {
        let serves = |w: &Worker| {
            w.pipelines
                .lock()
                .expect("pipelines lock")
                .iter()
                .any(|(p, m)| {
                    *p == request.pipeline
                        && (request.model_id.is_empty() || *m == request.model_id)
                })
        };
        let workers = self.snapshot();
        let mut order: Vec<&Worker> = workers.iter().map(|w| &**w).filter(|w| serves(w)).collect();
        if order.is_empty() {
            return Err(Status::not_found(format!(
                "no worker serves pipeline {} with model {:?}",
                request.pipeline, request.model_id
            )));
        }
        order.sort_by_key(|w| {
            (
                !w.healthy.load(Ordering::Relaxed),
                -w.free.load(Ordering::Relaxed),
            )
        });
        let mut last = Status::unavailable("no worker answered");
        for w in order {
            let mut client = w.client.clone();
            let call = client.infer(w.request(request.clone(), self.options.timeout));
            let result = match tokio::time::timeout(self.options.timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(
                    "the worker did not answer in time",
                )),
            };
            match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
                    ) =>
                {
                    warn!(worker = %w.addr, code = ?s.code(), error = s.message(), "worker failed an AI request; trying another");
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    async fn call(
        w: &Worker,
        request: pb::TranscodeRequest,
        timeout: Duration,
    ) -> Result<Transcoded, Status> {
        use pb::transcode_response::Event;
        let mut client = w.client.clone();
        let mut stream = client
            .transcode(w.request(request, timeout))
            .await?
            .into_inner();
        let mut out = Transcoded::default();
        while let Some(msg) = stream.message().await? {
            match msg.event {
                Some(Event::Rendition(h)) => out.renditions.push((h, Vec::new())),
                Some(Event::Chunk(c)) => match out.renditions.get_mut(c.index as usize) {
                    Some((_, data)) => data.extend_from_slice(&c.data),
                    None => {
                        return Err(Status::internal(
                            "worker sent a chunk for an unknown rendition",
                        ))
                    }
                },
                Some(Event::Summary(s)) => out.summary = Some(s),
                None => {}
            }
        }
        if out
            .renditions
            .iter()
            .any(|(h, d)| h.size as usize != d.len())
        {
            return Err(Status::internal("worker sent a truncated rendition"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_options_refuse_bad_secrets_and_pins() {
        assert!(ClientOptions::default().with_secret("").is_err());
        assert!(ClientOptions::default().with_secret("line\nbreak").is_err());
        let ok = ClientOptions::default().with_secret("s3cret").unwrap();
        assert_eq!(
            ok.authorization.as_ref().unwrap().to_str().unwrap(),
            "Bearer s3cret"
        );
        assert!(!format!("{ok:?}").contains("s3cret"), "secret not in Debug");
        for pin in ["", "abcd", &"zz".repeat(32), &"00".repeat(33)] {
            assert!(matches!(
                ClientOptions::default().with_tls(ServerTrust::Pin(pin), None),
                Err(ClientSetupError::Pin)
            ));
        }
        assert!(ClientOptions::default()
            .with_tls(ServerTrust::Pin(&"AB".repeat(32)), None)
            .is_ok());
    }

    #[tokio::test]
    async fn https_workers_need_tls_options() {
        let addrs = ["https://127.0.0.1:1".to_string()];
        assert!(WorkerPool::new(&addrs, ClientOptions::default()).is_err());
        let tls = ClientOptions::default()
            .with_tls(ServerTrust::Pin(&"00".repeat(32)), None)
            .unwrap();
        assert!(WorkerPool::new(&addrs, tls).is_ok());
        assert!(WorkerPool::new(&["ftp://x:1".to_string()], ClientOptions::default()).is_err());
        assert!(WorkerPool::new(&["127.0.0.1:1".to_string()], ClientOptions::default()).is_ok());
    }
}
