//! Worker overhead per segment beyond the engine's own compute time (gRPC,
//! copies, scheduling), p50 and p99 over sequential round trips on loopback,
//! through the shim's own worker client, for a plain worker and for one
//! with TLS and a secret (measured in the same run, side by side), and the
//! idle RSS of a `lpworker serve` process.
//!
//! `cargo bench --bench worker`

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use lpworker::orchestrator::workers::{ClientOptions, ServerTrust, WorkerPool};
use lpworker::proto::worker as pb;
use lpworker::video::probe::BackendChoice;
use lpworker::worker::service::RequestLimits;
use lpworker::worker::{BoundWorker, TlsFiles, WorkerConfig};

/// A CA-signed certificate for 127.0.0.1 in `dir`: (CA, cert, key) paths.
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    [
        write("ca.pem", ca.pem()),
        write("worker.pem", cert.pem()),
        write("worker.key", key.serialize_pem()),
    ]
}

fn tiny_segment() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.ts");
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=30",
        ])
        .args([
            "-t", "0.5", "-c:v", "libx264", "-preset", "veryfast", "-f", "mpegts",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::read(path).unwrap()
}

fn config() -> WorkerConfig {
    WorkerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        max_sessions: 4,
        drain_timeout: Duration::from_secs(5),
        limits: RequestLimits {
            timeout: Duration::from_secs(30),
            max_segment_bytes: 64 << 20,
            max_profiles: 16,
            preset: "ultrafast".into(),
        },
        backend: BackendChoice::Cpu,
        nvidia: None,
        tls: None,
        auth_secret: None,
        fetch_insecure: false,
        fetch_allow: Vec::new(),
        ai: None,
    }
}

/// One round trip through the shim's worker client; returns (wall time
/// at the client, compute time the worker reported).
async fn round_trip(pool: &WorkerPool, segment: &[u8]) -> (Duration, Duration) {
    let req = pb::TranscodeRequest {
        source: Some(pb::transcode_request::Source::Segment(segment.to_vec())),
        profile_names: vec!["P144p30fps16x9".into()],
        ..Default::default()
    };
    let started = Instant::now();
    let out = pool.transcode(req).await.unwrap();
    let compute = out
        .summary
        .map(|s| Duration::from_secs_f64(s.compute_seconds))
        .unwrap_or_default();
    (started.elapsed(), compute)
}

/// A worker (with TLS and a secret when `secured`) and the shim's client
/// of it; the worker stops when the sender drops.
fn start(
    rt: &tokio::runtime::Runtime,
    secured: Option<&[std::path::PathBuf; 3]>,
) -> (WorkerPool, tokio::sync::oneshot::Sender<()>) {
    const SECRET: &str = "bench-secret";
    let mut config = config();
    if let Some([_, cert, key]) = secured {
        config.tls = Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        });
        config.auth_secret = Some(SECRET.into());
    }
    rt.block_on(async {
        let worker = BoundWorker::bind(config).await.unwrap();
        let addr = worker.grpc_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        let pool = match secured {
            None => WorkerPool::new(&[addr.to_string()], ClientOptions::default()).unwrap(),
            Some([ca, _, _]) => WorkerPool::new(
                &[format!("https://{addr}")],
                ClientOptions::default()
                    .with_secret(SECRET)
                    .unwrap()
                    .with_tls(ServerTrust::Ca(ca), None)
                    .unwrap(),
            )
            .unwrap(),
        };
        assert!(pool.refresh().await.is_some(), "the worker answers");
        (pool, tx)
    })
}

/// Overhead beyond compute, in ms, sorted.
fn overheads(
    rt: &tokio::runtime::Runtime,
    pool: &WorkerPool,
    segment: &[u8],
    runs: usize,
) -> Vec<f64> {
    let mut out: Vec<f64> = (0..runs)
        .map(|_| {
            let (total, compute) = rt.block_on(round_trip(pool, segment));
            total.saturating_sub(compute).as_secs_f64() * 1000.0
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn bench_worker(c: &mut Criterion) {
    // As main.rs: one TLS provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let segment = tiny_segment();
    let dir = tempfile::tempdir().unwrap();
    let pki = certificates(dir.path());
    let (plain, _stop_plain) = start(&rt, None);
    let (secured, _stop_secured) = start(&rt, Some(&pki));

    c.bench_function("worker_round_trip_tiny_segment", |b| {
        b.iter(|| rt.block_on(round_trip(&plain, &segment)))
    });
    c.bench_function("worker_round_trip_tiny_segment_tls_secret", |b| {
        b.iter(|| rt.block_on(round_trip(&secured, &segment)))
    });

    let runs = if std::env::args().any(|a| a == "--bench") {
        300
    } else {
        5
    };
    // Interleaved in blocks, so both see the same machine.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..(runs / 50).max(1) {
        a.extend(overheads(&rt, &plain, &segment, runs.min(50)));
        b.extend(overheads(&rt, &secured, &segment, runs.min(50)));
    }
    // The transport's own floor on this machine: a unary capabilities
    // call through the same client (no segment, no engine).
    let floor = |pool: &WorkerPool| {
        let mut out: Vec<f64> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                assert!(rt.block_on(pool.refresh()).is_some());
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    };
    for (name, o) in [("plain", floor(&plain)), ("TLS + secret", floor(&secured))] {
        let pct = |p: f64| o[((o.len() - 1) as f64 * p).round() as usize];
        println!(
            "unary capabilities call, {name} ({} calls, the floor of any round trip here): p50 {:.3} ms, p99 {:.3} ms",
            o.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    for (name, mut o) in [("plain", a), ("TLS + secret", b)] {
        o.sort_by(f64::total_cmp);
        let pct = |p: f64| o[((o.len() - 1) as f64 * p).round() as usize];
        println!(
            "worker overhead beyond engine compute, {name} ({} round trips, {} KiB segment, the shim's client): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            o.len(),
            segment.len() / 1024,
            pct(0.5),
            pct(0.99),
            o[o.len() - 1]
        );
    }
}

/// RSS of an idle `lpworker serve` process, one second after it is ready.
fn idle_rss() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    println!("idle lpworker serve: {rss}");
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, bench_worker);

fn main() {
    benches();
    idle_rss();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
