//! A test orchestrator: the orchestrator side of go-livepeer's remote
//! transcoder protocol, over TLS with a self-signed certificate, gRPC and
//! HTTP on one port as go-livepeer serves them. It records registrations and
//! every posted result byte for byte. Test code only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use lpworker::proto::lp_rpc as net;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Locks ignoring poisoning: one failed assertion must not turn every later
/// lock (and the orchestrator's drop) into a second panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `POST /transcodeResults` as received.
#[derive(Debug, Clone)]
pub struct Posted {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// One `RegisterTranscoder` call.
#[derive(Debug, Clone)]
pub struct Registration {
    pub secret_ok: bool,
    pub capacity: i64,
    pub capabilities: Option<net::Capabilities>,
}

/// One `RegisterAIWorker` call.
#[derive(Debug, Clone)]
pub struct AiRegistration {
    pub secret_ok: bool,
    pub capabilities: Option<net::Capabilities>,
    pub hardware: Vec<net::HardwareInformation>,
}

#[derive(Default)]
pub struct Shared {
    pub registrations: Mutex<Vec<Registration>>,
    pub results: Mutex<Vec<Posted>>,
    pub ai_registrations: Mutex<Vec<AiRegistration>>,
    pub ai_results: Mutex<Vec<Posted>>,
    ai_jobs: Mutex<Option<mpsc::Sender<Result<net::NotifyAiJob, Status>>>>,
    segments: Mutex<HashMap<String, Vec<u8>>>,
    jobs: Mutex<Option<mpsc::Sender<Result<net::NotifySegment, Status>>>>,
    /// Jobs between their segment download and their result post, and the most at once.
    in_progress: Mutex<(i64, i64)>,
    fetched: Mutex<usize>,
    changed: Notify,
    /// Refuse a wrong secret in the stream (response headers sent, then the
    /// error as trailers: legal gRPC, what a proxy in front may produce)
    /// instead of refusing the call.
    pub refuse_in_stream: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn max_in_progress(&self) -> i64 {
        self.in_progress.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    pub fn segments_fetched(&self) -> usize {
        *self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct TranscoderService {
    secret: String,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl net::transcoder_server::Transcoder for TranscoderService {
    type RegisterTranscoderStream = ReceiverStream<Result<net::NotifySegment, Status>>;

    async fn register_transcoder(
        &self,
        request: Request<net::RegisterRequest>,
    ) -> Result<Response<Self::RegisterTranscoderStream>, Status> {
        let r = request.into_inner();
        let secret_ok = r.secret == self.secret;
        let accepted = secret_ok && r.capacity > 0;
        let (tx, rx) = mpsc::channel(64);
        // The job sender is in place before the registration is visible, so
        // a test that saw the registration can push at once.
        if accepted {
            *lock(&self.shared.jobs) = Some(tx.clone());
        }
        lock(&self.shared.registrations).push(Registration {
            secret_ok,
            capacity: r.capacity,
            capabilities: r.capabilities,
        });
        self.shared.changed.notify_waiters();
        // go-livepeer's exact error texts.
        if !secret_ok
            && self
                .shared
                .refuse_in_stream
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = tx.send(Err(Status::unknown("invalid secret"))).await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        if !secret_ok {
            return Err(Status::unknown("invalid secret"));
        }
        if r.capacity <= 0 {
            return Err(Status::unknown("zero capacity"));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct AiWorkerService {
    secret: String,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl net::ai_worker_server::AiWorker for AiWorkerService {
    type RegisterAIWorkerStream = ReceiverStream<Result<net::NotifyAiJob, Status>>;

    async fn register_ai_worker(
        &self,
        request: Request<net::RegisterAiWorkerRequest>,
    ) -> Result<Response<Self::RegisterAIWorkerStream>, Status> {
        let r = request.into_inner();
        let secret_ok = r.secret == self.secret;
        let (tx, rx) = mpsc::channel(64);
        if secret_ok {
            *lock(&self.shared.ai_jobs) = Some(tx);
        }
        lock(&self.shared.ai_registrations).push(AiRegistration {
            secret_ok,
            capabilities: r.capabilities,
            hardware: r.hardware,
        });
        self.shared.changed.notify_waiters();
        if !secret_ok {
            return Err(Status::unknown("invalid secret"));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Posted {
    fn new(headers: &HeaderMap, body: &Bytes) -> Posted {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Posted {
            headers,
            body: body.to_vec(),
        }
    }
}

async fn ai_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    lock(&shared.ai_results).push(Posted::new(&headers, &body));
    shared.changed.notify_waiters();
    "OK"
}

async fn get_segment(
    State(shared): State<Arc<Shared>>,
    UrlPath(path): UrlPath<String>,
) -> Result<Vec<u8>, StatusCode> {
    let data = shared
        .segments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&path)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)?;
    {
        let mut p = shared.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        p.0 += 1;
        p.1 = p.1.max(p.0);
    }
    *shared.fetched.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    shared.changed.notify_waiters();
    Ok(data)
}

async fn transcode_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    lock(&shared.results).push(Posted::new(&headers, &body));
    lock(&shared.in_progress).0 -= 1;
    shared.changed.notify_waiters();
    "OK"
}

pub struct TestOrch {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    secret: String,
    cert_dir: PathBuf,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: Option<tokio::task::JoinHandle<()>>,
    /// Whether the AI worker service is served.
    ai_service: bool,
}

fn self_signed(dir: &Path) {
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=orchestrator",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn tls_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl TestOrch {
    /// Starts on a free loopback port with a new self-signed certificate.
    pub async fn start(secret: &str, cert_dir: &Path) -> TestOrch {
        TestOrch::start_with(secret, cert_dir, true).await
    }

    /// As go-livepeer after PR #4036: the transcoder service only, no AI
    /// worker service (its RPCs answer UNIMPLEMENTED).
    pub async fn start_without_ai_service(secret: &str, cert_dir: &Path) -> TestOrch {
        TestOrch::start_with(secret, cert_dir, false).await
    }

    async fn start_with(secret: &str, cert_dir: &Path, ai_service: bool) -> TestOrch {
        self_signed(cert_dir);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut orch = TestOrch {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared::default()),
            secret: secret.to_string(),
            cert_dir: cert_dir.to_path_buf(),
            connections: Arc::new(Mutex::new(JoinSet::new())),
            accept: None,
            ai_service,
        };
        orch.serve(listener);
        orch
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let grpc = net::transcoder_server::TranscoderServer::new(TranscoderService {
            secret: self.secret.clone(),
            shared: Arc::clone(&self.shared),
        });
        let ai = net::ai_worker_server::AiWorkerServer::new(AiWorkerService {
            secret: self.secret.clone(),
            shared: Arc::clone(&self.shared),
        });
        let http = axum::Router::new()
            .route("/stream/{*path}", axum::routing::get(get_segment))
            .route("/transcodeResults", axum::routing::post(transcode_results))
            .route("/aiResults", axum::routing::post(ai_results))
            .with_state(Arc::clone(&self.shared));
        let mut routes = tonic::service::Routes::new(grpc);
        if self.ai_service {
            routes = routes.add_service(ai);
        }
        let app = routes.into_axum_router().merge(http);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&self.cert_dir));
        let connections = Arc::clone(&self.connections);
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                    });
            }
        }));
    }

    /// Kills the orchestrator: the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
        *self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Starts again on the same port (a restart), keeping the records.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Makes `data` downloadable and returns its URL, as go-livepeer's memory store does.
    pub fn put_segment(&self, session: &str, seq: u32, data: Vec<u8>) -> String {
        let path = format!("{session}/{seq}.tempfile");
        self.shared
            .segments
            .lock()
            .unwrap()
            .insert(path.clone(), data);
        format!("https://{}/stream/{path}", self.addr)
    }

    /// Sends a job to the registered transcoder.
    pub async fn push(&self, notify: net::NotifySegment) {
        let tx = self
            .shared
            .jobs
            .lock()
            .unwrap()
            .clone()
            .expect("a transcoder is registered");
        tx.send(Ok(notify)).await.expect("job stream open");
    }

    /// Sends an AI job to the registered AI worker.
    pub async fn push_ai(&self, job: net::NotifyAiJob) {
        let tx = self
            .shared
            .ai_jobs
            .lock()
            .unwrap()
            .clone()
            .expect("an AI worker is registered");
        tx.send(Ok(job)).await.expect("job stream open");
    }

    /// Waits until `check` holds on the shared records, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, check: impl Fn(&Shared) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            if check(&self.shared) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && !check(&self.shared) {
                panic!("timed out waiting for {what}");
            }
        }
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.shared
            .registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn results(&self) -> Vec<Posted> {
        self.shared
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TestOrch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One part of a multipart/mixed body.
#[derive(Debug)]
pub struct Part {
    pub headers: HashMap<String, String>,
    pub data: Vec<u8>,
}

/// Strictly parses a multipart/mixed body (RFC 2046 framing as Go writes it).
pub fn parse_multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let open = format!("--{boundary}\r\n");
    let sep = format!("\r\n--{boundary}");
    assert!(
        body.starts_with(open.as_bytes()),
        "body does not start with the boundary"
    );
    let mut rest = &body[open.len() - 2..];
    let mut parts = Vec::new();
    loop {
        // rest starts at "\r\n" after "--boundary".
        assert!(rest.starts_with(b"\r\n"), "malformed boundary line");
        rest = &rest[2..];
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part headers end");
        let headers = std::str::from_utf8(&rest[..head_end])
            .unwrap()
            .split("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        rest = &rest[head_end + 4..];
        let end = rest
            .windows(sep.len())
            .position(|w| w == sep.as_bytes())
            .expect("part end");
        parts.push(Part {
            headers,
            data: rest[..end].to_vec(),
        });
        rest = &rest[end + sep.len()..];
        if rest.starts_with(b"--") {
            assert_eq!(
                &rest[2..],
                b"\r\n",
                "trailing bytes after the closing boundary"
            );
            return parts;
        }
    }
}
