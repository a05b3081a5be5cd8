//! Worker overhead per segment beyond the engine's own compute time (gRPC,
//! copies, scheduling), p50 and p99 over sequential round trips on loopback,
//! and the idle RSS of a `lpworker serve` process.
//!
//! `cargo bench --bench worker`

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use lpworker::proto::worker as pb;
use lpworker::video::probe::BackendChoice;
use lpworker::worker::service::RequestLimits;
use lpworker::worker::{BoundWorker, WorkerConfig};

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
        ai: None,
    }
}

/// One round trip; returns (wall time at the client, compute time the worker reported).
async fn round_trip(
    client: &mut pb::worker_client::WorkerClient<tonic::transport::Channel>,
    segment: &[u8],
) -> (Duration, Duration) {
    let req = pb::TranscodeRequest {
        source: Some(pb::transcode_request::Source::Segment(segment.to_vec())),
        profile_names: vec!["P144p30fps16x9".into()],
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = client.transcode(req).await.unwrap().into_inner();
    let mut compute = Duration::ZERO;
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(pb::transcode_response::Event::Summary(s)) = m.event {
            compute = Duration::from_secs_f64(s.compute_seconds);
        }
    }
    (started.elapsed(), compute)
}

fn bench_worker(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let segment = tiny_segment();
    let (addr, _stop) = rt.block_on(async {
        let worker = BoundWorker::bind(config()).await.unwrap();
        let addr = worker.grpc_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        (addr, tx)
    });
    let mut client = rt
        .block_on(pb::worker_client::WorkerClient::connect(format!(
            "http://{addr}"
        )))
        .unwrap();

    c.bench_function("worker_round_trip_tiny_segment", |b| {
        b.iter(|| rt.block_on(round_trip(&mut client, &segment)))
    });

    let runs = if std::env::args().any(|a| a == "--bench") {
        300
    } else {
        5
    };
    let mut overhead: Vec<f64> = (0..runs)
        .map(|_| {
            let (total, compute) = rt.block_on(round_trip(&mut client, &segment));
            (total.saturating_sub(compute)).as_secs_f64() * 1000.0
        })
        .collect();
    overhead.sort_by(f64::total_cmp);
    let pct = |p: f64| overhead[((overhead.len() - 1) as f64 * p).round() as usize];
    println!(
        "worker overhead beyond engine compute ({runs} round trips, {} KiB segment): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        segment.len() / 1024,
        pct(0.5),
        pct(0.99),
        overhead[overhead.len() - 1]
    );
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
