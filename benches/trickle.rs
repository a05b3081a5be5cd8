//! The trickle server on loopback: N publishers × M subscribers.
//!
//! 1. Live: every publisher sends a 4 Mbit/s stream as 1 s segments written
//!    in 50 ms pieces; each piece carries its send time, so subscribers
//!    measure each hop's latency (piece written → piece read) as it happens.
//!    Reports p50/p99 and the bytes the server retains against its bound.
//! 2. Throughput: publishers write as fast as they can; bytes delivered to
//!    subscribers per second, beside a plain loopback TCP copy with the same
//!    number of readers measured in the same run (the physical limit here).
//!
//! `cargo bench --bench trickle` (LPW_TRICKLE_STREAMS=100, LPW_TRICKLE_SUBS=2,
//! LPW_TRICKLE_SECONDS=10 by default).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lpworker::trickle::{TrickleConfig, TrickleServer, BASE_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PIECE_INTERVAL: Duration = Duration::from_millis(50);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn serve(server: &Arc<TrickleServer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest(BASE_PATH, server.router());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}{BASE_PATH}")
}

/// Publishes segments of `pieces` pieces of `piece` bytes each, paced by
/// `interval` (none: as fast as possible), until `until`.
async fn publish(
    http: reqwest::Client,
    url: String,
    piece: usize,
    pieces: usize,
    interval: Option<Duration>,
    epoch: Instant,
    until: Instant,
) {
    let mut seq = 0;
    while Instant::now() < until {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let post = http
            .post(format!("{url}/{seq}"))
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .send();
        let writer = async move {
            for _ in 0..pieces {
                let mut buf = vec![0u8; piece];
                let sent = epoch.elapsed().as_nanos() as u64;
                buf[..8].copy_from_slice(&sent.to_be_bytes());
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return;
                }
                if let Some(i) = interval {
                    tokio::time::sleep(i).await;
                }
            }
        };
        let (r, ()) = tokio::join!(post, writer);
        if r.map(|r| r.status() != 200).unwrap_or(true) {
            return;
        }
        seq += 1;
    }
}

/// Reads segments from the live edge until `until`; records each piece's
/// latency (when `latencies` is given) and the bytes read.
async fn subscribe(
    http: reqwest::Client,
    url: String,
    piece: usize,
    epoch: Instant,
    until: Instant,
    latencies: Option<Arc<Mutex<Vec<f64>>>>,
    bytes: Arc<AtomicU64>,
) {
    let mut seq: i64 = -1;
    while Instant::now() < until {
        let Ok(r) = http.get(format!("{url}/{seq}")).send().await else {
            return;
        };
        if r.status().as_u16() == 470 {
            seq = r
                .headers()
                .get("Lp-Trickle-Latest")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(-1);
            continue;
        }
        if r.status() != 200 {
            return;
        }
        let this: i64 = r
            .headers()
            .get("Lp-Trickle-Seq")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(seq);
        let mut stream = r.bytes_stream();
        // Pieces arrive split or merged: reassemble by offset.
        let mut offset = 0usize;
        let mut head = Vec::with_capacity(8);
        while let Some(Ok(chunk)) = stream.next().await {
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if latencies.is_none() {
                continue;
            }
            for b in chunk.iter() {
                if offset % piece < 8 {
                    head.push(*b);
                    if head.len() == 8 {
                        if let Some(l) = &latencies {
                            let sent = u64::from_be_bytes(head[..8].try_into().unwrap());
                            let now = epoch.elapsed().as_nanos() as u64;
                            l.lock()
                                .unwrap()
                                .push(now.saturating_sub(sent) as f64 / 1e6);
                        }
                        head.clear();
                    }
                }
                offset += 1;
            }
        }
        seq = this + 1;
    }
}

struct RunResult {
    seconds: f64,
    delivered: u64,
    latencies: Vec<f64>,
    max_retained: usize,
}

async fn run(
    streams: usize,
    subs: usize,
    seconds: u64,
    piece: usize,
    pieces: usize,
    paced: bool,
) -> RunResult {
    let server = TrickleServer::new(TrickleConfig {
        max_channels: streams + 8,
        ..TrickleConfig::default()
    });
    let base = serve(&server).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4 * streams * (subs + 1))
        .build()
        .unwrap();
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs(seconds);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in 0..streams {
        let name = format!("s{s}");
        server.create_channel(&name, "video/MP2T").unwrap();
        let url = format!("{base}/{name}");
        for _ in 0..subs {
            tasks.push(tokio::spawn(subscribe(
                http.clone(),
                url.clone(),
                piece,
                epoch,
                until,
                paced.then(|| latencies.clone()),
                delivered.clone(),
            )));
        }
        tasks.push(tokio::spawn(publish(
            http.clone(),
            url,
            piece,
            pieces,
            paced.then_some(PIECE_INTERVAL),
            epoch,
            until,
        )));
    }
    let mut max_retained = 0;
    while Instant::now() < until {
        max_retained = max_retained.max(server.retained_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = epoch.elapsed().as_secs_f64();
    let total = delivered.load(Ordering::Relaxed);
    // Close every channel: waiting readers end, publishers stop.
    for s in 0..streams {
        server.close_channel(&format!("s{s}"));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    RunResult {
        seconds: elapsed,
        delivered: total,
        latencies: l,
        max_retained,
    }
}

/// Bytes per second through loopback TCP: `writers` connections each read
/// by `readers_per` sockets (the same fan-out as the trickle run).
async fn socket_copy(writers: usize, readers_per: usize, seconds: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let acceptor = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let received = received.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers * readers_per {
        tasks.push(tokio::spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            let buf = vec![7u8; 64 * 1024];
            while Instant::now() < until {
                if sock.write_all(&buf).await.is_err() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let rate = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    acceptor.abort();
    rate
}

fn main() {
    // `cargo test --all-targets` runs this without --bench: a short smoke run.
    let bench = std::env::args().any(|a| a == "--bench");
    let streams = env("LPW_TRICKLE_STREAMS", if bench { 100 } else { 4 }) as usize;
    let subs = env("LPW_TRICKLE_SUBS", 2) as usize;
    let seconds = env("LPW_TRICKLE_SECONDS", if bench { 10 } else { 2 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // 4 Mbit/s = 500 kB/s: 1 s segments of 20 pieces of 25 kB every 50 ms.
    let (piece, pieces) = (25_000, 20);
    let live = runtime.block_on(run(streams, subs, seconds, piece, pieces, true));
    let bound = streams * TrickleConfig::default().retention * piece * pieces;
    println!(
        "live: {streams} streams at 4 Mbit/s × {subs} subscribers, {:.1} s: per-hop latency p50 {:.2} ms, p99 {:.2} ms ({} pieces); delivered {:.1} MB/s; retained at most {:.1} MB (bound: {} streams × {} segments × {:.1} MB = {:.1} MB)",
        live.seconds,
        percentile(&live.latencies, 0.5),
        percentile(&live.latencies, 0.99),
        live.latencies.len(),
        live.delivered as f64 / live.seconds / 1e6,
        live.max_retained as f64 / 1e6,
        streams,
        TrickleConfig::default().retention,
        (piece * pieces) as f64 / 1e6,
        bound as f64 / 1e6,
    );
    assert!(
        !live.latencies.is_empty() && live.max_retained <= bound,
        "pieces reached the subscribers and retention held"
    );
    let fast = runtime.block_on(run(streams, subs, seconds.min(5), 64 * 1024, 32, false));
    let trickle_rate = fast.delivered as f64 / fast.seconds;
    let socket_rate = runtime.block_on(socket_copy(streams, subs, seconds.min(5)));
    println!(
        "throughput: trickle {:.0} MB/s delivered to {} subscribers; loopback socket copy {:.0} MB/s over as many sockets; ratio {:.2}",
        trickle_rate / 1e6,
        streams * subs,
        socket_rate / 1e6,
        trickle_rate / socket_rate
    );
}
