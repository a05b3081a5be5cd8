//! The trickle server on loopback under N publishers × M subscribers
//! (`lpworker bench --trickle`, `cargo bench --bench trickle`).
//!
//! 1. Live: every publisher sends a constant-bitrate stream as 1 s segments
//!    written in 50 ms pieces; each piece carries its send time, so the
//!    subscribers measure each hop's first-byte latency (piece handed to the
//!    publisher's HTTP client → its first byte read by a subscriber). The
//!    bytes the server retains are sampled against their bound (channels ×
//!    retained segments × segment size).
//! 2. Throughput: publishers write segments of the same size (in 64 KiB
//!    pieces) as fast as they can; bytes delivered to subscribers per
//!    second, measured once every channel has cycled through its retention
//!    (a server that has just started first faults in the memory it
//!    retains; a running one reuses it).
//!
//! Both are measured again, in the same run, on a plain loopback socket
//! relay of the same bytes with the same hops: each publisher writes into a
//! socket, a relay task reads it and writes every read to its M subscribers'
//! sockets, retaining nothing. That is the floor for latency and the ceiling
//! for throughput on this machine.
//!
//! Everything runs in one process, in one runtime with a worker per core:
//! the server is served as the orchestrator serves it (hyper's auto
//! connection builder, `TCP_NODELAY`, without TLS), and the peers are as
//! cheap as real ones: one HTTP/1.1 connection each, `TCP_NODELAY` (as Go
//! and aiohttp set), hyper's client connection directly, reads as large as
//! hyper's adaptive buffer makes them, and pieces found by offset rather
//! than by looking at every byte.
//!
//! Independent streams do not write in step: by default each publisher
//! starts at a random (seeded) phase of the 50 ms interval. `aligned` makes
//! every publisher write at the same instants, a burst of all streams at
//! once every 50 ms.
//!
//! The machine's other load is reported beside the results: with two cores,
//! anything else running (a build) shows in every figure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as _, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Latency;
use crate::trickle::{headers, TrickleConfig, TrickleServer, BASE_PATH};

/// How often a live publisher writes a piece.
pub const PIECE_INTERVAL: Duration = Duration::from_millis(50);
/// Live segments are this many pieces (1 s).
const PIECES_PER_SEGMENT: usize = 20;
/// Flat out, publishers write pieces of this size.
const FAST_PIECE: usize = 64 * 1024;
/// The relay's (and its subscribers') read buffer.
const RELAY_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    pub streams: usize,
    pub subscribers: usize,
    /// Each live stream's bitrate, bits per second.
    pub bitrate: u64,
    /// Length of the live run (and of its relay baseline).
    pub seconds: f64,
    /// Length of the throughput run (and of its relay baseline).
    pub throughput_seconds: f64,
    /// Every publisher writes its pieces at the same instants.
    pub aligned: bool,
}

impl Default for Options {
    /// The load: 100 streams at 4 Mbit/s, 2 subscribers each, 10 s.
    fn default() -> Self {
        Options {
            streams: 100,
            subscribers: 2,
            bitrate: 4_000_000,
            seconds: 10.0,
            throughput_seconds: 5.0,
            aligned: false,
        }
    }
}

impl Options {
    /// Bytes per live piece.
    pub fn piece_bytes(&self) -> usize {
        (self.bitrate as f64 / 8.0 * PIECE_INTERVAL.as_secs_f64()).round() as usize
    }

    /// Flat out, segments as large as live ones, in whole [`FAST_PIECE`]s.
    fn fast_pieces_per_segment(&self) -> usize {
        ((self.piece_bytes() * PIECES_PER_SEGMENT) as f64 / FAST_PIECE as f64)
            .round()
            .max(1.0) as usize
    }

    fn check(&self) -> Result<(), String> {
        if self.streams == 0 || self.subscribers == 0 {
            return Err("streams and subscribers must be at least 1".into());
        }
        if self.piece_bytes() < 8 {
            return Err("the bitrate must be at least 2 kbit/s".into());
        }
        if self.piece_bytes() * PIECES_PER_SEGMENT > TrickleConfig::default().max_segment_bytes {
            return Err("a 1 s segment at this bitrate is past the server's segment cap".into());
        }
        if !(self.seconds >= 0.5 && self.throughput_seconds >= 0.5) {
            return Err("runs must be at least 0.5 s".into());
        }
        Ok(())
    }
}

/// Parses a bitrate in bits per second: `4000000`, `4M`, `4Mbit`, `4 Mbit/s`,
/// `500k`, `1.5G`.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(&t);
    let t = t
        .strip_suffix("bits")
        .or_else(|| t.strip_suffix("bit"))
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let (number, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * scale < 1e12 => Ok((n * scale).round() as u64),
        _ => Err(format!("{s:?} is not a bitrate (e.g. 4M, 4Mbit, 500k)")),
    }
}

/// One run of a load against the trickle server or the relay.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub seconds: f64,
    pub delivered_bytes: u64,
    pub delivered_bytes_per_second: f64,
    /// First-byte latency per hop (live runs only).
    pub latency_ms: Option<Latency>,
    /// Latency samples: pieces seen by subscribers.
    pub pieces: usize,
    /// This process's CPU time over the run / (wall time × cores).
    pub cpu_utilisation: Option<f64>,
    /// Every other process's CPU time over the run / (wall time × cores).
    pub other_load: Option<f64>,
    /// Most bytes the trickle server retained (sampled every 100 ms).
    pub max_retained_bytes: Option<usize>,
    /// Channels × retained segments × segment size.
    pub retained_bound_bytes: Option<usize>,
    /// This process's peak resident memory over the run (server and
    /// peers), where the kernel lets it be reset.
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub streams: usize,
    pub subscribers: usize,
    pub bitrate: u64,
    pub aligned: bool,
    pub cores: usize,
    pub live: Run,
    pub live_relay: Run,
    pub throughput: Run,
    pub throughput_relay: Run,
    /// Trickle throughput / relay throughput.
    pub throughput_ratio: f64,
    /// The same per CPU second this process used: steadier than the ratio
    /// above where other processes take CPU time from one run more than
    /// from the other.
    pub throughput_ratio_per_cpu: Option<f64>,
}

impl Report {
    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let lat = |r: &Run| {
            let l = r.latency_ms.unwrap_or_default();
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} pieces)",
                l.p50, l.p99, l.max, r.pieces
            )
        };
        let pct = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{:.0}%", v * 100.0));
        let mb = |b: f64| b / 1e6;
        let (live, relay) = (&self.live, &self.live_relay);
        let (fast, fast_relay) = (&self.throughput, &self.throughput_relay);
        let other = [live, relay, fast, fast_relay]
            .iter()
            .filter_map(|r| r.other_load)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let segment = live.retained_bound_bytes.unwrap_or(0) as f64
            / (self.streams * TrickleConfig::default().retention) as f64;
        format!(
            "trickle bench: {} streams at {:.1} Mbit/s × {} subscribers, {} cores, {}\n\
             live {:.1} s, first-byte latency per hop: trickle {}; socket relay {}\n\
             live: {:.1} MB/s delivered; retained at most {:.1} MB (bound {:.1} MB: {} channels × {} segments × {:.2} MB); process peak RSS {}\n\
             throughput: trickle {:.0} MB/s to {} subscribers (retained at most {:.1} MB of {:.1} MB); socket relay {:.0} MB/s; ratio {:.2} (per CPU second: {})\n\
             CPU of {} cores: live trickle {}, relay {}; throughput trickle {}, relay {}; other processes up to {}{}\n",
            self.streams,
            self.bitrate as f64 / 1e6,
            self.subscribers,
            self.cores,
            if self.aligned {
                "publishers aligned (all write at the same instants)"
            } else {
                "publishers at random phases of the 50 ms interval"
            },
            live.seconds,
            lat(live),
            lat(relay),
            mb(live.delivered_bytes_per_second),
            mb(live.max_retained_bytes.unwrap_or(0) as f64),
            mb(live.retained_bound_bytes.unwrap_or(0) as f64),
            self.streams,
            TrickleConfig::default().retention,
            mb(segment),
            live.peak_rss_bytes
                .map_or("?".to_string(), |b| format!("{:.0} MB (server and peers)", mb(b as f64))),
            mb(fast.delivered_bytes_per_second),
            self.streams * self.subscribers,
            mb(fast.max_retained_bytes.unwrap_or(0) as f64),
            mb(fast.retained_bound_bytes.unwrap_or(0) as f64),
            mb(fast_relay.delivered_bytes_per_second),
            self.throughput_ratio,
            self.throughput_ratio_per_cpu
                .map_or("?".to_string(), |r| format!("{r:.2}")),
            self.cores,
            pct(live.cpu_utilisation),
            pct(relay.cpu_utilisation),
            pct(fast.cpu_utilisation),
            pct(fast_relay.cpu_utilisation),
            pct(other),
            if other.is_some_and(|o| o > 0.1) {
                " (figures disturbed: run again on an idle machine)"
            } else {
                ""
            },
        )
    }
}

/// Runs the live load and the flat-out load on the trickle server and on
/// the relay, in a runtime of its own (one worker per core).
pub fn run(options: &Options) -> std::io::Result<Report> {
    options.check().map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let live = Load {
        piece: options.piece_bytes(),
        pieces_per_segment: PIECES_PER_SEGMENT,
        paced: true,
        aligned: options.aligned,
    };
    let fast = Load {
        piece: FAST_PIECE,
        pieces_per_segment: options.fast_pieces_per_segment(),
        paced: false,
        aligned: false,
    };
    let o = options;
    runtime.block_on(async {
        let live_run = trickle_run(o, &live, o.seconds).await?;
        let live_relay = relay_run(o, &live, o.seconds).await?;
        // Flat out, alternating halves so that a noisy neighbour weighs on both.
        let half = o.throughput_seconds / 2.0;
        let t1 = trickle_run(o, &fast, half).await?;
        let r1 = relay_run(o, &fast, half).await?;
        let r2 = relay_run(o, &fast, half).await?;
        let t2 = trickle_run(o, &fast, half).await?;
        let throughput = Run::merge(&t1, &t2);
        let throughput_relay = Run::merge(&r1, &r2);
        Ok(Report {
            streams: o.streams,
            subscribers: o.subscribers,
            bitrate: o.bitrate,
            aligned: o.aligned,
            cores,
            throughput_ratio: throughput.delivered_bytes_per_second
                / throughput_relay.delivered_bytes_per_second,
            throughput_ratio_per_cpu: throughput
                .per_cpu()
                .zip(throughput_relay.per_cpu())
                .map(|(t, r)| t / r),
            live: live_run,
            live_relay,
            throughput,
            throughput_relay,
        })
    })
}

impl Run {
    /// Bytes delivered per second of this process's CPU time.
    fn per_cpu(&self) -> Option<f64> {
        self.cpu_utilisation
            .filter(|c| *c > 0.0)
            .map(|c| self.delivered_bytes_per_second / c)
    }

    fn merge(a: &Run, b: &Run) -> Run {
        let seconds = a.seconds + b.seconds;
        let delivered_bytes = a.delivered_bytes + b.delivered_bytes;
        let mean = |x: Option<f64>, y: Option<f64>| {
            x.zip(y)
                .map(|(x, y)| (x * a.seconds + y * b.seconds) / seconds)
        };
        Run {
            seconds,
            delivered_bytes,
            delivered_bytes_per_second: delivered_bytes as f64 / seconds,
            latency_ms: None,
            pieces: 0,
            cpu_utilisation: mean(a.cpu_utilisation, b.cpu_utilisation),
            other_load: mean(a.other_load, b.other_load),
            max_retained_bytes: a.max_retained_bytes.max(b.max_retained_bytes),
            retained_bound_bytes: a.retained_bound_bytes.max(b.retained_bound_bytes),
            peak_rss_bytes: a.peak_rss_bytes.max(b.peak_rss_bytes),
        }
    }
}

#[derive(Debug, Clone)]
struct Load {
    piece: usize,
    pieces_per_segment: usize,
    /// One piece per [`PIECE_INTERVAL`], stamped with its send time; else
    /// unstamped pieces as fast as the connection takes them.
    paced: bool,
    aligned: bool,
}

/// A run's clock: every peer connects first, then the load starts at
/// once for all of them and runs until stopped.
#[derive(Clone)]
struct Clock {
    /// Stamps count from here.
    epoch: Instant,
    /// Set once every peer is connected: when the load starts.
    go: tokio::sync::watch::Receiver<Option<Instant>>,
    stop: Arc<AtomicBool>,
    /// A permit per peer connected (or failed to).
    ready: Arc<tokio::sync::Semaphore>,
}

impl Clock {
    fn new() -> (Clock, tokio::sync::watch::Sender<Option<Instant>>) {
        let (tx, go) = tokio::sync::watch::channel(None);
        let clock = Clock {
            epoch: Instant::now(),
            go,
            stop: Arc::default(),
            ready: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        (clock, tx)
    }

    /// This peer is connected (or gave up): waits for the start.
    async fn ready(&mut self) -> Instant {
        self.ready.add_permits(1);
        match self.go.wait_for(Option::is_some).await {
            Ok(start) => start.expect("set"),
            Err(_) => {
                // The run was dropped.
                self.stop.store(true, Ordering::Relaxed);
                self.epoch
            }
        }
    }

    /// Waits for `peers` to be ready (10 s at most), then starts the load
    /// shortly after (so that long polls arrive first), and waits for it.
    async fn start(&self, go: &tokio::sync::watch::Sender<Option<Instant>>, peers: usize) {
        let wait = self.ready.acquire_many(peers as u32);
        if let Ok(Ok(permits)) = tokio::time::timeout(Duration::from_secs(10), wait).await {
            permits.forget();
        }
        let start = Instant::now() + Duration::from_millis(100);
        go.send_replace(Some(start));
        tokio::time::sleep_until(start.into()).await;
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Stream `stream`'s phase, a fraction of the piece interval: uniformly
/// random, the same in every run (splitmix64 of the stream's index).
fn phase(stream: usize) -> f64 {
    let mut z = (stream as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A publisher's pieces: when paced, a fresh piece stamped with its send
/// time at each interval; else `fast` again and again, as fast as taken.
struct Schedule {
    load: Load,
    clock: Clock,
    next: Instant,
    fast: Bytes,
}

impl Schedule {
    /// Stream `stream`'s pieces, from the start of the run.
    async fn new(load: Load, mut clock: Clock, stream: usize) -> Schedule {
        let start = clock.ready().await;
        let next = if load.aligned {
            start
        } else {
            start + PIECE_INTERVAL.mul_f64(phase(stream))
        };
        Schedule {
            fast: Bytes::from(vec![7u8; load.piece]),
            load,
            clock,
            next,
        }
    }

    /// The next piece, once it is due; `None` once the run is stopped.
    async fn piece(&mut self) -> Option<Bytes> {
        if !self.load.paced {
            return (!self.clock.stopped()).then(|| self.fast.clone());
        }
        tokio::time::sleep_until(self.next.into()).await;
        if self.clock.stopped() {
            return None;
        }
        self.next += PIECE_INTERVAL;
        let mut piece = vec![0u8; self.load.piece];
        piece[..8].copy_from_slice(&self.clock.nanos().to_be_bytes());
        Some(Bytes::from(piece))
    }
}

/// Finds the pieces in what a subscriber reads and records each one's
/// latency: from its stamp to when its first byte arrived.
struct Pieces {
    piece: usize,
    offset: usize,
    stamp: [u8; 8],
    first_byte: u64,
    latencies: Vec<Duration>,
}

impl Pieces {
    fn new(piece: usize) -> Pieces {
        Pieces {
            piece,
            offset: 0,
            stamp: [0; 8],
            first_byte: 0,
            latencies: Vec::new(),
        }
    }

    /// A new segment: pieces start again at its first byte.
    fn restart(&mut self) {
        self.offset = 0;
    }

    fn feed(&mut self, mut data: &[u8], now: u64) {
        while !data.is_empty() {
            let at = self.offset % self.piece;
            let take = if at < 8 {
                if at == 0 {
                    self.first_byte = now;
                }
                let take = (8 - at).min(data.len());
                self.stamp[at..at + take].copy_from_slice(&data[..take]);
                if at + take == 8 {
                    let sent = u64::from_be_bytes(self.stamp);
                    self.latencies
                        .push(Duration::from_nanos(self.first_byte.saturating_sub(sent)));
                }
                take
            } else {
                (self.piece - at).min(data.len())
            };
            data = &data[take..];
            self.offset += take;
        }
    }
}

/// Bytes delivered to the subscribers of a run.
type Tally = AtomicU64;

/// A request body fed piece by piece.
struct PieceBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for PieceBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|p| p.map(|b| Ok(Frame::data(b))))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// One HTTP/1.1 connection to `addr`, as a peer would open it. The
/// connection runs in a task of its own, as in any hyper client (driving it
/// in the peer's task instead was measured: a quarter less throughput).
async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

fn request(method: &str, path: &str, body: Body) -> hyper::Request<Body> {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(body)
        .expect("valid request")
}

/// A trickle publisher: segment after segment on one connection.
async fn trickle_publisher(
    addr: SocketAddr,
    path: String,
    load: Load,
    clock: Clock,
    stream: usize,
) -> std::io::Result<()> {
    let connected = connect(addr).await;
    let schedule = Schedule::new(load, clock, stream).await;
    publish(connected?, path, schedule).await
}

/// Segment after segment until the run stops (or the server says no).
async fn publish(mut http: Sender, path: String, mut schedule: Schedule) -> std::io::Result<()> {
    for seq in 0u64.. {
        http.ready().await.map_err(std::io::Error::other)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let post = http.send_request(request(
            "POST",
            &format!("{path}/{seq}"),
            Body::new(PieceBody(rx)),
        ));
        let mut ended = false;
        let writer = async {
            for _ in 0..schedule.load.pieces_per_segment {
                let Some(piece) = schedule.piece().await else {
                    ended = true;
                    return;
                };
                if tx.send(piece).await.is_err() {
                    ended = true;
                    return;
                }
            }
            drop(tx);
        };
        let (response, ()) = tokio::join!(post, writer);
        match response {
            Ok(r) if r.status() == 200 && !ended => {}
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// A trickle subscriber: from the live edge, segment after segment, until
/// the run stops or the channel closes. Returns the pieces' latencies.
async fn trickle_subscriber(
    addr: SocketAddr,
    path: String,
    piece: Option<usize>,
    mut clock: Clock,
    tally: Arc<Tally>,
) -> std::io::Result<Vec<Duration>> {
    let connected = connect(addr).await;
    clock.ready().await;
    subscribe(connected?, path, piece, clock, tally).await
}

/// Segment after segment until the run stops or the channel closes.
async fn subscribe(
    mut http: Sender,
    path: String,
    piece: Option<usize>,
    clock: Clock,
    tally: Arc<Tally>,
) -> std::io::Result<Vec<Duration>> {
    let mut pieces = piece.map(Pieces::new);
    let mut seq: i64 = -1;
    let header = |r: &hyper::Response<hyper::body::Incoming>, name: &str| -> Option<i64> {
        r.headers().get(name)?.to_str().ok()?.parse().ok()
    };
    while !clock.stopped() {
        http.ready().await.map_err(std::io::Error::other)?;
        let r = http
            .send_request(request("GET", &format!("{path}/{seq}"), Body::empty()))
            .await
            .map_err(std::io::Error::other)?;
        if r.status().as_u16() == 470 {
            seq = header(&r, headers::LATEST).unwrap_or(-1);
            continue;
        }
        if r.status() != 200 || r.headers().contains_key(headers::CLOSED) {
            break;
        }
        let this = header(&r, headers::SEQ).unwrap_or(seq);
        if let Some(p) = &mut pieces {
            p.restart();
        }
        let mut body = r.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
                continue;
            };
            tally.fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(p) = &mut pieces {
                p.feed(&data, clock.nanos());
            }
        }
        seq = this + 1;
    }
    Ok(pieces.map(|p| p.latencies).unwrap_or_default())
}

/// Serves the trickle routes as the orchestrator does, without TLS.
async fn serve(server: &Arc<TrickleServer>) -> std::io::Result<(SocketAddr, Aborting)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().nest(BASE_PATH, server.router());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, Aborting(task)))
}

/// A task aborted when dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a run measured between its start and end.
struct Window {
    delivered: u64,
    seconds: f64,
    cpu: Option<f64>,
    other_load: Option<f64>,
    max_retained: usize,
    peak_rss: Option<u64>,
}

/// CPU seconds every process on the machine has used, from `/proc/stat`:
/// user, nice, system and steal time. Interrupt time is left out: loopback
/// traffic is received in softirqs, which are this run's own work but
/// counted to no process.
pub(super) fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    Some((fields.first()? + fields.get(1)? + fields.get(2)? + fields.get(7)?) / 100.0)
}

/// Measures what a run delivers for `seconds`, its CPU time, the machine's
/// other load and (given a server) the most bytes it retains, then stops
/// the run.
async fn measure(
    clock: &Clock,
    seconds: f64,
    tally: &Tally,
    server: Option<&TrickleServer>,
) -> Window {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let delivered0 = tally.load(Ordering::Relaxed);
    let (own0, all0) = (super::cpu_seconds(), machine_cpu_seconds());
    let mut max_retained = 0;
    loop {
        if let Some(s) = server {
            max_retained = max_retained.max(s.retained_bytes());
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let delivered = tally.load(Ordering::Relaxed) - delivered0;
    let own = super::cpu_seconds().zip(own0).map(|(b, a)| b - a);
    let all = machine_cpu_seconds().zip(all0).map(|(b, a)| b - a);
    clock.stop.store(true, Ordering::Relaxed);
    let share = seconds * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Window {
        delivered,
        seconds,
        cpu: own.map(|c| c / share),
        other_load: own.zip(all).map(|(own, all)| (all - own).max(0.0) / share),
        max_retained,
        peak_rss: super::peak_rss_mib().map(|m| (m * 1024.0 * 1024.0) as u64),
    }
}

/// Flat out: waits until every channel has written past its retention (the
/// memory it keeps is then reused rather than faulted in), 10 s at most.
async fn warm_up(server: &TrickleServer, streams: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let cycled = |s: usize| {
        server
            .next_write(&format!("s{s}"))
            .is_some_and(|n| n > server.config().retention as i64)
    };
    while Instant::now() < deadline && !(0..streams).all(cycled) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The relay's warm-up when flat out (it keeps nothing: connections only).
const RELAY_WARM_UP: Duration = Duration::from_millis(500);

impl Run {
    fn of(w: Window, latencies: Option<Vec<Duration>>, bound: Option<usize>) -> Run {
        Run {
            seconds: w.seconds,
            delivered_bytes: w.delivered,
            delivered_bytes_per_second: w.delivered as f64 / w.seconds,
            pieces: latencies.as_ref().map_or(0, Vec::len),
            latency_ms: latencies.map(|mut l| Latency::of(&mut l)),
            cpu_utilisation: w.cpu,
            other_load: w.other_load,
            max_retained_bytes: bound.map(|_| w.max_retained),
            retained_bound_bytes: bound,
            peak_rss_bytes: w.peak_rss,
        }
    }
}

/// Subscribers' latencies, each given 5 s to finish.
async fn latencies(subscribers: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Vec<Duration> {
    let mut all = Vec::new();
    for s in subscribers {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(5), s).await {
            all.extend(l);
        }
    }
    all
}

async fn trickle_run(o: &Options, load: &Load, seconds: f64) -> std::io::Result<Run> {
    let mut config = TrickleConfig {
        max_channels: o.streams + 8,
        ..TrickleConfig::default()
    };
    let bound = o.streams * config.retention * load.piece * load.pieces_per_segment;
    // A heavy load may retain more than the default budget: the bench
    // measures what it retains rather than have its writes refused.
    config.max_retained_bytes = config.max_retained_bytes.max(2 * bound);
    let server = TrickleServer::new(config);
    let (addr, _serving) = serve(&server).await?;
    let rss = super::reset_peak_rss();
    let (clock, go) = Clock::new();
    let tally = Arc::new(Tally::new(0));
    let mut subscribers = Vec::new();
    let mut publishers = tokio::task::JoinSet::new();
    for s in 0..o.streams {
        let name = format!("s{s}");
        server
            .create_channel(&name, "video/MP2T")
            .map_err(std::io::Error::other)?;
        let path = format!("{BASE_PATH}/{name}");
        for _ in 0..o.subscribers {
            let sub = trickle_subscriber(
                addr,
                path.clone(),
                load.paced.then_some(load.piece),
                clock.clone(),
                tally.clone(),
            );
            subscribers.push(tokio::spawn(async move { sub.await.unwrap_or_default() }));
        }
        let publisher = trickle_publisher(addr, path, load.clone(), clock.clone(), s);
        publishers.spawn(publisher);
    }
    clock.start(&go, o.streams * (o.subscribers + 1)).await;
    if !load.paced {
        warm_up(&server, o.streams).await;
    }
    let mut window = measure(&clock, seconds, &tally, Some(&server)).await;
    window.peak_rss = window.peak_rss.filter(|_| rss);
    // Readers waiting on a segment that will not come are released.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for s in 0..o.streams {
        server.close_channel(&format!("s{s}"));
    }
    let latencies = latencies(subscribers).await;
    publishers.abort_all();
    Ok(Run::of(
        window,
        load.paced.then_some(latencies),
        Some(bound),
    ))
}

/// A connected pair of loopback sockets.
async fn pair(listener: &TcpListener) -> std::io::Result<(TcpStream, TcpStream)> {
    let (a, b) = tokio::join!(
        TcpStream::connect(listener.local_addr()?),
        listener.accept()
    );
    let (a, (b, _)) = (a?, b?);
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

async fn relay_run(o: &Options, load: &Load, seconds: f64) -> std::io::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let rss = super::reset_peak_rss();
    let (clock, go) = Clock::new();
    let tally = Arc::new(Tally::new(0));
    let mut subscribers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..o.streams {
        let (mut publisher, mut input) = pair(&listener).await?;
        let mut outputs = Vec::new();
        for _ in 0..o.subscribers {
            let (output, mut sub) = pair(&listener).await?;
            outputs.push(output);
            let (tally, clock) = (tally.clone(), clock.clone());
            let mut pieces = load.paced.then(|| Pieces::new(load.piece));
            subscribers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; RELAY_BUFFER];
                while let Ok(n) = sub.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tally.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some(p) = &mut pieces {
                        p.feed(&buf[..n], clock.nanos());
                    }
                }
                pieces.map(|p| p.latencies).unwrap_or_default()
            }));
        }
        tasks.spawn(async move {
            let mut buf = vec![0u8; RELAY_BUFFER];
            while let Ok(n) = input.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for out in &mut outputs {
                    if out.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
        let (load, clock) = (load.clone(), clock.clone());
        tasks.spawn(async move {
            let mut schedule = Schedule::new(load, clock, s).await;
            while let Some(piece) = schedule.piece().await {
                if publisher.write_all(&piece).await.is_err() {
                    return;
                }
            }
            // Closing the socket ends the relay, which ends the subscribers.
        });
    }
    clock.start(&go, o.streams).await;
    if !load.paced {
        tokio::time::sleep(RELAY_WARM_UP).await;
    }
    let mut window = measure(&clock, seconds, &tally, None).await;
    window.peak_rss = window.peak_rss.filter(|_| rss);
    let latencies = latencies(subscribers).await;
    tasks.abort_all();
    Ok(Run::of(window, load.paced.then_some(latencies), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates_parse_with_or_without_units() {
        assert_eq!(parse_bitrate("4000000"), Ok(4_000_000));
        assert_eq!(parse_bitrate("4M"), Ok(4_000_000));
        assert_eq!(parse_bitrate("4Mbit"), Ok(4_000_000));
        assert_eq!(parse_bitrate("4 Mbit/s"), Ok(4_000_000));
        assert_eq!(parse_bitrate("1.5mbps"), Ok(1_500_000));
        assert_eq!(parse_bitrate("500k"), Ok(500_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-4M").is_err());
        assert_eq!(Options::default().piece_bytes(), 25_000);
    }

    #[test]
    fn pieces_are_found_however_the_bytes_are_split() {
        let piece = 20;
        let mut stream = Vec::new();
        for stamp in [5u64, 9, 13] {
            stream.extend_from_slice(&stamp.to_be_bytes());
            stream.extend_from_slice(&[0; 12]);
        }
        for split in [1, 3, 7, 8, 20, 33, 60] {
            let mut p = Pieces::new(piece);
            for (i, chunk) in stream.chunks(split).enumerate() {
                p.feed(chunk, 100 + i as u64);
            }
            assert_eq!(p.latencies.len(), 3, "split {split}");
            // A stamp's latency counts from the chunk holding its first byte.
            let first = |offset: usize| 100 + (offset / split) as u64;
            let expect: Vec<Duration> = [(0, 5), (20, 9), (40, 13)]
                .iter()
                .map(|&(o, s)| Duration::from_nanos(first(o) - s))
                .collect();
            assert_eq!(p.latencies, expect, "split {split}");
        }
    }

    #[test]
    fn a_small_load_reaches_its_subscribers_within_retention() {
        let report = run(&Options {
            streams: 2,
            subscribers: 2,
            bitrate: 400_000,
            seconds: 0.5,
            throughput_seconds: 1.0,
            aligned: false,
        })
        .unwrap();
        assert!(report.live.pieces > 0 && report.live_relay.pieces > 0);
        assert!(report.live.max_retained_bytes <= report.live.retained_bound_bytes);
        assert!(report.throughput.delivered_bytes > 0);
        assert!(report.throughput_ratio > 0.0);
        assert!(report.summary().contains("ratio"));
    }
}
