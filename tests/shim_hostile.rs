//! `lpworker orchestrator` against hostile clients, end to end: the shim
//! runs as its own process (off chain, hosting Live Runners only, so no
//! worker is needed) and its resident memory is read from
//! `/proc/PID/status` while clients announce bodies they never send, open
//! and drop connections by the hundred thousand, and name models tens of
//! megabytes long.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{b64, insecure_http, line_field, ready_line, tempdir};
use lpworker::proto::lp_rpc as net;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running shim, its stderr counted as it is written.
struct Shim {
    child: Child,
    /// host:port of the HTTPS/gRPC listener.
    addr: String,
    uri: String,
    stderr_bytes: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl Shim {
    fn start() -> Shim {
        Shim::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Shim {
        let dir = tempdir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args([
                "orchestrator",
                "--service-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--cli-addr",
                "127.0.0.1:0",
                "-network",
                "offchain",
                "--use-live-runners",
                "--orch-secret",
                "hostile-test-secret",
                "--datadir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lpworker orchestrator starts");
        let line = ready_line(&mut child);
        assert!(
            line.starts_with("lpworker orchestrator listening"),
            "the shim did not start: {line:?}"
        );
        let stderr_bytes = Arc::new(AtomicU64::new(0));
        let mut stderr = child.stderr.take().unwrap();
        let counted = stderr_bytes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                counted.fetch_add(n as u64, Ordering::SeqCst);
                if std::env::var_os("LPWORKER_TEST_LOGS").is_some() {
                    eprint!("{}", String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Shim {
            addr: line_field(&line, "addr=").unwrap().to_string(),
            uri: line_field(&line, "uri=").unwrap().to_string(),
            child,
            stderr_bytes,
            _dir: dir,
        }
    }

    /// Resident memory in KiB (VmRSS).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The shim still serves: gRPC info with a fresh auth token.
    async fn info(&self) -> net::OrchestratorInfo {
        common::shim::offchain_info(&self.addr).await
    }

    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let config = lpworker::attach::insecure_tls::client_config(&[b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the RSS to settle (allocator returns, reaped tasks) and gives
/// the lowest of a few reads.
async fn settled_rss(shim: &Shim) -> u64 {
    let mut low = u64::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        low = low.min(shim.rss_kib());
    }
    low
}

/// The status code of an HTTP/1.1 response head read from `stream`.
async fn status_of(stream: &mut (impl AsyncReadExt + Unpin)) -> u16 {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a response: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 50 clients announce a 64 MiB segment without credentials and never send
/// it: each is refused from its headers alone, promptly, and the shim
/// reserves nothing for the bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_bodies_without_credentials_are_refused_before_they_arrive() {
    let shim = Shim::start();
    let base = settled_rss(&shim).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(shim.tls().await);
    }
    let head = "POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/MP2T\r\n\
                Content-Length: 67108864\r\n\r\n";
    let sent = Instant::now();
    for s in &mut streams {
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
    }
    let mut slowest = Duration::ZERO;
    for s in &mut streams {
        let status = tokio::time::timeout(Duration::from_secs(2), status_of(s))
            .await
            .expect("refused without waiting for the 64 MiB body");
        // No Livepeer-Segment: no valid auth token (credentials.rs).
        assert_eq!(status, 403);
        slowest = slowest.max(sent.elapsed());
    }
    let after = settled_rss(&shim).await;
    eprintln!(
        "50 announced 64 MiB bodies: slowest refusal {slowest:?}, RSS {base} KiB -> {after} KiB"
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(after < base + 20 * 1024, "RSS {base} KiB -> {after} KiB");
    drop(streams);
}

/// 100k TCP connect/close cycles (closed with a reset, so neither side
/// keeps TIME_WAIT ports): every connection is accepted, fails its TLS
/// handshake and is reaped; memory stays bounded and the shim still
/// answers. About 30 s on an idle 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_dropped_connections_leak_nothing() {
    const CYCLES: usize = 100_000;
    const CLIENTS: usize = 16;
    let shim = Shim::start();
    shim.info().await;
    let base = settled_rss(&shim).await;
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (addr, done) = (shim.addr.clone(), done.clone());
        tasks.spawn(async move {
            for _ in 0..CYCLES / CLIENTS {
                let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                // Linger 0 closes with a reset: no blocking on drop.
                #[allow(deprecated)]
                tcp.set_linger(Some(Duration::ZERO)).unwrap();
                drop(tcp);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let took = started.elapsed();
    let cycles = done.load(Ordering::Relaxed);
    let mut shim = shim;
    assert!(shim.alive());
    let info = tokio::time::timeout(Duration::from_secs(10), shim.info())
        .await
        .expect("the shim still answers gRPC");
    assert!(info.auth_token.is_some());
    let after = settled_rss(&shim).await;
    eprintln!("{cycles} connect/reset cycles in {took:?}: RSS {base} KiB -> {after} KiB");
    assert!(after < base + 20 * 1024, "RSS {base} KiB -> {after} KiB");
}

/// An AI request naming a 32 MiB model is refused as a bad request before
/// any payment, and the log does not echo the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_model_id_is_refused_before_payment_and_not_logged() {
    let shim = Shim::start();
    let info = shim.info().await;
    let seg = net::SegData {
        auth_token: info.auth_token.clone(),
        ..Default::default()
    };
    let model = "x".repeat(32 << 20);
    let body =
        serde_json::to_vec(&serde_json::json!({ "model_id": model, "prompt": "a cat" })).unwrap();
    let base = settled_rss(&shim).await;
    let logged = shim.stderr_bytes.load(Ordering::SeqCst);
    let http = insecure_http();
    let r = http
        .post(format!("{}/text-to-image", shim.uri))
        .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let reply = r.bytes().await.unwrap();
    // The body is within the 64 MiB limit, so the model itself is judged:
    // not one the workers serve, refused before the payment is looked at.
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
    assert!(reply.len() < 4096, "the refusal is {} bytes", reply.len());
    assert!(String::from_utf8_lossy(&reply).contains("not served"));

    // Without credentials the same body is refused on its headers.
    let r = http
        .post(format!("{}/text-to-image", shim.uri))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let grew = shim.stderr_bytes.load(Ordering::SeqCst) - logged;
    let after = settled_rss(&shim).await;
    eprintln!(
        "32 MiB model_id: {status}, reply {} bytes, log +{grew} bytes, RSS {base} KiB -> {after} KiB",
        reply.len()
    );
    assert!(grew < 4096, "the log grew by {grew} bytes");
}

/// Whole bodies held at once are budgeted, and each must arrive in time.
/// Uploads with valid credentials that announce bodies and send nothing
/// take the budget (the next is told 503 at once, not queued), are told 408
/// at the read deadline, and leave the budget free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_a_memory_budget_and_a_deadline() {
    let shim = Shim::start_with(&[
        "--max-segment-bytes",
        "1048576",
        "--max-buffered-bodies",
        "4194304",
        "--body-read-timeout",
        "10",
    ]);
    let info = shim.info().await;
    let seg = net::SegData {
        auth_token: info.auth_token.clone(),
        full_profiles3: vec![net::VideoProfile {
            name: "P144p30fps16x9".into(),
            width: 256,
            height: 144,
            bitrate: 400_000,
            fps: 30,
            ..Default::default()
        }],
        ..Default::default()
    };
    let head = |len: usize| {
        format!(
            "POST /segment HTTP/1.1\r\nhost: x\r\nLivepeer-Segment: {}\r\n\
             content-type: video/mp2t\r\ncontent-length: {len}\r\n\r\n",
            b64(&seg.encode_to_vec())
        )
    };
    let mut held = Vec::new();
    let sent = Instant::now();
    for _ in 0..4 {
        let mut s = shim.tls().await;
        s.write_all(head(1 << 20).as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        let mut s = shim.tls().await;
        s.write_all(head(1 << 20).as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        // At once, not queued behind the stalled ones (well before the
        // 10 s deadline would free them).
        let status = tokio::time::timeout(Duration::from_secs(5), status_of(&mut s))
            .await
            .expect("told at once");
        assert_eq!(status, 503);
    }
    for s in &mut held {
        let status = tokio::time::timeout(Duration::from_secs(20), status_of(s))
            .await
            .expect("told at the read deadline");
        assert_eq!(status, 408);
        assert!(
            sent.elapsed() >= Duration::from_secs(9),
            "before the deadline"
        );
    }
    // The budget is free: the next upload is read (and refused for its
    // hash, the check after the body).
    let mut s = shim.tls().await;
    s.write_all(head(4).as_bytes()).await.unwrap();
    s.write_all(b"junk").await.unwrap();
    s.flush().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), status_of(&mut s))
        .await
        .unwrap();
    assert_eq!(status, 403);
}
