//! The trickle server, as go-livepeer serves it (`trickle/trickle_server.go`
//! at 176aa415; `../shared/specs/live_runner.md` §5):
//!
//! - `POST {ch}`: 200 for an existing channel, 404 otherwise: only the
//!   orchestrator creates channels ([`TrickleServer::create_channel`]).
//! - `POST {ch}/{seq}` (`-1` = the next): the body is streamed into the
//!   segment as it arrives; its first byte moves the channel's next write
//!   sequence past it. `Lp-Trickle-Reset` closes every older retained
//!   segment. A publisher connected ahead of time (no byte yet) is answered
//!   as soon as its segment is closed.
//! - `GET {ch}/{seq}` (`-1` = the next write, `-2` = the current): a retained
//!   segment is streamed from its first byte and followed while written; the
//!   next segment is created on demand and long-polled; anything else is
//!   `470` with `Lp-Trickle-Latest`.
//! - `GET {ch}/next`, `DELETE {ch}/{seq}`, `DELETE {ch}`.
//!
//! Beyond go-livepeer, which has none, memory is bounded whatever
//! publishers do:
//!
//! - a segment is capped in size (413 past it), counted on the segment, so
//!   retries and concurrent requests add up; JSON channels (control, events,
//!   O2R: one object per segment) get a much smaller cap than media;
//! - a closed segment takes no more bytes: a publish on a finished one is
//!   409 (one still open takes a retry, as go-livepeer's publisher expects
//!   after a failed upload), and one that left retention is closed;
//! - the bytes retained by all channels together are capped (503 past it);
//! - the number of channels is capped.
//!
//! Sequence numbers above [`MAX_SEQ`] are refused (400): clients count up
//! from 0 or from the channel's latest, so no client reaches it, and the
//! arithmetic on them cannot overflow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::headers;

#[derive(Debug, Clone)]
pub struct TrickleConfig {
    /// Segments kept per channel (go-livepeer: 5).
    pub retention: usize,
    /// Largest segment accepted, in bytes (go-livepeer has no cap; 10 MB is
    /// livepeer/node's).
    pub max_segment_bytes: usize,
    /// Largest segment of an `application/json` channel (control, events,
    /// O2R): one JSON object each, well under this (the runner reads control
    /// messages up to 64 KiB).
    pub max_json_segment_bytes: usize,
    /// Bytes all retained segments of all channels may hold together; a
    /// write past it is refused with 503 until older segments leave
    /// retention. Channels × retention × segment cap would be hundreds of
    /// GiB at the defaults, so this is what bounds memory in practice.
    pub max_retained_bytes: usize,
    /// A channel with no segment written this long is closed (go-livepeer:
    /// 5 minutes).
    pub idle_timeout: Duration,
    /// How often idle channels are looked for (go-livepeer: 1 minute).
    pub sweep_interval: Duration,
    /// Most channels open at once.
    pub max_channels: usize,
}

impl Default for TrickleConfig {
    fn default() -> Self {
        TrickleConfig {
            retention: 5,
            max_segment_bytes: 10 << 20,
            max_json_segment_bytes: 64 << 10,
            max_retained_bytes: 1 << 30,
            idle_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(60),
            max_channels: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrickleError {
    #[error("{0} trickle channels are open, the most allowed")]
    TooManyChannels(usize),
    #[error("a trickle channel name is one URL path segment of letters, digits, '-', '_' and '.'")]
    BadName,
}

/// The largest sequence number taken from a peer: clients count up one by
/// one, so none gets near it, and `seq + 1` stays far from overflowing.
pub const MAX_SEQ: i64 = 1 << 53;

/// Locks a mutex, recovering it if a panic poisoned it: the state behind
/// these locks is valid after every statement, and one panicking request
/// must not take the sweeper or every later request down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bytes held by every retained segment, against the server's budget.
struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// Counts `n` more bytes, unless that would pass the limit.
    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Why a segment took no more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Finished, or out of retention.
    Closed,
    /// The bytes would take it past its cap.
    TooLarge,
    /// The server's retained-bytes budget is spent.
    Full,
}

/// One segment: the bytes written so far, readable while it grows.
struct Segment {
    seq: i64,
    /// Largest size, in bytes.
    cap: usize,
    /// Counts the segment's bytes while it is retained.
    budget: Arc<Budget>,
    data: Mutex<SegmentData>,
    /// Bumped on every write and on close: readers wait on it.
    version: watch::Sender<u64>,
}

#[derive(Default)]
struct SegmentData {
    chunks: Vec<Bytes>,
    len: usize,
    closed: bool,
    /// Out of its channel's ring: its bytes no longer count against the
    /// budget (readers that still follow it keep them alive).
    evicted: bool,
}

impl Segment {
    fn new(seq: i64, cap: usize, budget: Arc<Budget>) -> Arc<Segment> {
        Arc::new(Segment {
            seq,
            cap,
            budget,
            data: Mutex::default(),
            version: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SegmentData> {
        lock(&self.data)
    }

    /// Appends to an open segment within its cap and the server's budget;
    /// a refused write leaves the segment as it was.
    fn append(&self, bytes: Bytes) -> Result<(), Refused> {
        {
            let mut d = self.lock();
            if d.closed {
                return Err(Refused::Closed);
            }
            if d.len.saturating_add(bytes.len()) > self.cap {
                return Err(Refused::TooLarge);
            }
            if !self.budget.take(bytes.len()) {
                return Err(Refused::Full);
            }
            d.len += bytes.len();
            d.chunks.push(bytes);
        }
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.version.send_modify(|v| *v += 1);
    }

    /// Closes a segment leaving its channel's ring, and stops counting its
    /// bytes (it takes none after this, being closed).
    fn evict(&self) {
        {
            let mut d = self.lock();
            if !d.evicted {
                d.evicted = true;
                self.budget.give(d.len);
            }
            d.closed = true;
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closed with bytes in it: a segment some publisher finished.
    fn is_finished(&self) -> bool {
        let d = self.lock();
        d.closed && d.len > 0
    }

    /// The `index`th chunk, or `Err(closed)` when there is none (yet).
    fn chunk(&self, index: usize) -> Result<Bytes, bool> {
        let d = self.lock();
        d.chunks.get(index).cloned().ok_or(d.closed)
    }

    /// Waits until the segment has a chunk `index` or is closed; returns
    /// whether it has the chunk.
    async fn wait_for(&self, index: usize) -> bool {
        let mut rx = self.version.subscribe();
        loop {
            // Mark the version seen before looking, so a write in between
            // wakes the wait below.
            rx.borrow_and_update();
            match self.chunk(index) {
                Ok(_) => return true,
                Err(true) => return false,
                Err(false) => {
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// The segment's bytes from the start, following it until it closes.
    fn stream(self: Arc<Self>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold((self, 0usize), |(seg, index)| async move {
            if !seg.wait_for(index).await {
                return None;
            }
            let bytes = seg.chunk(index).ok()?;
            Some((Ok(bytes), (seg, index + 1)))
        })
    }
}

struct Channel {
    mime: String,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    /// At most [`MAX_SEQ`] + 1.
    next_write: i64,
    /// The cap of each segment (smaller for JSON channels).
    segment_cap: usize,
    budget: Arc<Budget>,
    /// Retained segments, at `seq % retention`.
    ring: Vec<Option<Arc<Segment>>>,
    closed: bool,
    /// Creation or the last segment started: what idleness is measured from.
    write_time: Instant,
}

impl ChannelState {
    fn slot(&self, seq: i64) -> usize {
        (seq as usize) % self.ring.len()
    }

    fn retained(&self, seq: i64) -> Option<Arc<Segment>> {
        self.ring[self.slot(seq)]
            .as_ref()
            .filter(|s| s.seq == seq)
            .cloned()
    }

    /// go-livepeer's getForWrite: the segment `seq` is written to, taking
    /// its ring slot (an older segment there is closed).
    fn for_write(&mut self, seq: i64) -> Arc<Segment> {
        self.retained(seq).unwrap_or_else(|| self.start(seq))
    }

    /// A new segment `seq` in its ring slot; the older one there is closed
    /// and leaves retention.
    fn start(&mut self, seq: i64) -> Arc<Segment> {
        let slot = self.slot(seq);
        if let Some(old) = self.ring[slot].take() {
            old.evict();
        }
        let s = Segment::new(seq, self.segment_cap, self.budget.clone());
        self.ring[slot] = Some(s.clone());
        s
    }

    /// go-livepeer's getForRead: the retained segment, or the next one to
    /// be written, created so that its readers wait for it.
    fn for_read(&mut self, seq: i64) -> Option<Arc<Segment>> {
        if let Some(s) = self.retained(seq) {
            return Some(s);
        }
        let upcoming = seq == self.next_write || (self.next_write == 0 && seq == 1);
        (upcoming && !self.closed).then(|| self.start(seq))
    }

    fn close(&mut self) {
        self.closed = true;
        for s in self.ring.iter_mut().filter_map(Option::take) {
            s.evict();
        }
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        lock(&self.state)
    }
}

/// A reader of one channel inside the orchestrator (see
/// [`TrickleServer::read_local`]); it holds no segment between calls.
pub struct LocalReader {
    channel: Arc<Channel>,
    seq: i64,
}

/// How long a local reader ahead of the channel waits before looking
/// again (the SDK subscriber's retry after a 470 with an older latest).
const LOCAL_RETRY: Duration = Duration::from_millis(250);

impl LocalReader {
    /// Waits for the next segment to get its first byte; its sequence
    /// number, or `None` once the channel is closed (deleted, swept idle).
    /// A reader left behind retention jumps to the newest segment, as
    /// go-livepeer's subscriber does on a 470.
    pub async fn next_segment(&mut self) -> Option<i64> {
        loop {
            let segment = {
                let mut state = self.channel.lock();
                if state.closed {
                    return None;
                }
                match state.for_read(self.seq) {
                    Some(s) => Some(s),
                    None if self.seq < state.next_write => {
                        self.seq = state.next_write;
                        continue;
                    }
                    None => None,
                }
            };
            let Some(segment) = segment else {
                tokio::time::sleep(LOCAL_RETRY).await;
                continue;
            };
            if segment.wait_for(0).await {
                self.seq = segment.seq.saturating_add(1);
                return Some(segment.seq);
            }
            // Closed before any byte: the channel ended, or the segment
            // was skipped (an empty publish, a reset, a delete).
            if self.channel.lock().closed {
                return None;
            }
            self.seq = segment.seq.saturating_add(1);
        }
    }
}

pub struct TrickleServer {
    config: TrickleConfig,
    channels: Mutex<HashMap<String, Arc<Channel>>>,
    budget: Arc<Budget>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "next"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TrickleServer {
    pub fn new(config: TrickleConfig) -> Arc<TrickleServer> {
        Arc::new(TrickleServer {
            budget: Arc::new(Budget {
                held: AtomicUsize::new(0),
                limit: config.max_retained_bytes,
            }),
            config,
            channels: Mutex::default(),
        })
    }

    pub fn config(&self) -> &TrickleConfig {
        &self.config
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        lock(&self.channels)
    }

    fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels().get(name).cloned()
    }

    /// Creates a channel (an existing one is kept as it is). Channels are
    /// made by the orchestrator only, never by a publisher.
    pub fn create_channel(&self, name: &str, mime: &str) -> Result<(), TrickleError> {
        self.create_channel_at(name, mime, 0)
    }

    /// Creates a channel whose first segment is `next_write`: a channel
    /// restored after a restart continues its sequence, so readers that
    /// follow it from before (a runner's O2R reader) are not sent back.
    pub fn create_channel_at(
        &self,
        name: &str,
        mime: &str,
        next_write: i64,
    ) -> Result<(), TrickleError> {
        if !valid_name(name) {
            return Err(TrickleError::BadName);
        }
        let mut channels = self.channels();
        if channels.contains_key(name) {
            return Ok(());
        }
        if channels.len() >= self.config.max_channels {
            return Err(TrickleError::TooManyChannels(channels.len()));
        }
        let segment_cap = if is_json(mime) {
            self.config.max_json_segment_bytes
        } else {
            self.config.max_segment_bytes
        };
        channels.insert(
            name.to_string(),
            Arc::new(Channel {
                mime: if mime.is_empty() {
                    "application/octet-stream".into()
                } else {
                    mime.to_string()
                },
                state: Mutex::new(ChannelState {
                    next_write: next_write.clamp(0, MAX_SEQ),
                    segment_cap,
                    budget: self.budget.clone(),
                    ring: vec![None; self.config.retention.max(1)],
                    closed: false,
                    write_time: Instant::now(),
                }),
            }),
        );
        Ok(())
    }

    /// Writes one whole segment at the channel's next sequence number, as a
    /// publisher would, for messages the orchestrator itself sends (a
    /// runner's O2R events). Returns its sequence number, or `None` for an
    /// unknown or closed channel, or a message refused (past the segment
    /// cap or the retained-bytes budget: the segment is left empty).
    pub fn publish_local(&self, name: &str, bytes: Bytes) -> Option<i64> {
        let channel = self.channel(name)?;
        let segment = {
            let mut state = channel.lock();
            if state.closed || state.next_write > MAX_SEQ {
                return None;
            }
            let seq = state.next_write;
            let segment = state.for_write(seq);
            state.next_write = seq + 1;
            state.write_time = Instant::now();
            segment
        };
        let written = bytes.is_empty() || segment.append(bytes).is_ok();
        segment.close();
        if !written {
            tracing::warn!(
                channel = name,
                seq = segment.seq,
                "a local trickle message was refused"
            );
        }
        written.then_some(segment.seq)
    }

    /// Follows a channel from inside the orchestrator, as a subscriber at
    /// `seq` (`-1`: the next segment written) would, without HTTP: what
    /// meters a live stream's input. `None` for an unknown channel.
    pub fn read_local(&self, name: &str, seq: i64) -> Option<LocalReader> {
        let channel = self.channel(name)?;
        let seq = match seq {
            s if s < 0 => channel.lock().next_write,
            s => s.min(MAX_SEQ),
        };
        Some(LocalReader { channel, seq })
    }

    /// The sequence number the next segment of a channel is written at.
    pub fn next_write(&self, name: &str) -> Option<i64> {
        Some(self.channel(name)?.lock().next_write)
    }

    /// Closes a channel: its waiting readers are told, later requests get 404.
    pub fn close_channel(&self, name: &str) -> bool {
        let removed = self.channels().remove(name);
        match removed {
            Some(c) => {
                c.lock().close();
                true
            }
            None => false,
        }
    }

    pub fn has_channel(&self, name: &str) -> bool {
        self.channel(name).is_some()
    }

    pub fn channel_count(&self) -> usize {
        self.channels().len()
    }

    /// Bytes held by every retained segment of every channel (counted as
    /// they are written and as segments leave retention).
    pub fn retained_bytes(&self) -> usize {
        self.budget.held.load(Ordering::Relaxed)
    }

    /// Closes channels idle past the timeout (names starting with `_`, go-livepeer's
    /// internal ones, are kept); returns how many.
    pub fn sweep(&self) -> usize {
        let idle: Vec<String> = self
            .channels()
            .iter()
            .filter(|(name, c)| {
                !name.starts_with('_') && c.lock().write_time.elapsed() > self.config.idle_timeout
            })
            .map(|(name, _)| name.clone())
            .collect();
        idle.iter().filter(|name| self.close_channel(name)).count()
    }

    /// Sweeps idle channels every sweep interval, for as long as the server lives.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.config.sweep_interval;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(server) = weak.upgrade() else { return };
                let n = server.sweep();
                if n > 0 {
                    tracing::info!(closed = n, "idle trickle channels closed");
                }
            }
        })
    }

    /// The HTTP routes, to be nested at [`super::BASE_PATH`].
    pub fn router(self: &Arc<Self>) -> axum::Router {
        use axum::routing::post;
        axum::Router::new()
            .route("/{ch}", post(create).delete(delete_channel))
            .route(
                "/{ch}/{seq}",
                post(publish).get(subscribe).delete(delete_segment),
            )
            .with_state(self.clone())
    }
}

type Shared = State<Arc<TrickleServer>>;

fn error(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn set(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

/// `Connection: close` where HTTP/1 allows it (go-livepeer sends it to
/// wake clients that connected ahead of time; HTTP/2 forbids the header).
fn close_connection(version: Version, headers: &mut HeaderMap) {
    if version <= Version::HTTP_11 {
        headers.insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
}

/// A sequence number from a request path: `lowest` (a negative one names
/// a position) up to [`MAX_SEQ`].
fn parse_seq(text: &str, lowest: i64) -> Option<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|s| (lowest..=MAX_SEQ).contains(s))
}

/// Whether a channel's MIME type is JSON (`application/json`, any case,
/// parameters allowed).
fn is_json(mime: &str) -> bool {
    mime.split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

async fn create(State(server): Shared, Path(ch): Path<String>) -> Response {
    if server.has_channel(&ch) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Stream not found")
    }
}

async fn delete_channel(State(server): Shared, Path(ch): Path<String>) -> Response {
    if server.close_channel(&ch) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::BAD_REQUEST, "Invalid stream")
    }
}

async fn delete_segment(
    State(server): Shared,
    Path((ch, seq)): Path<(String, String)>,
) -> Response {
    let Some(channel) = server.channel(&ch) else {
        return error(StatusCode::NOT_FOUND, "Stream not found");
    };
    let Some(seq) = parse_seq(&seq, 0) else {
        return error(StatusCode::BAD_REQUEST, "Invalid idx");
    };
    let segment = channel.lock().retained(seq);
    match segment {
        Some(s) => {
            s.close();
            StatusCode::OK.into_response()
        }
        None => error(StatusCode::BAD_REQUEST, "Nonexistent segment"),
    }
}

async fn publish(
    State(server): Shared,
    Path((ch, seq)): Path<(String, String)>,
    request: Request,
) -> Response {
    let version = request.version();
    let Some(channel) = server.channel(&ch) else {
        // The body is not read; the SDK's publisher stops on this 404.
        let mut r = error(StatusCode::NOT_FOUND, "Stream not found");
        close_connection(version, r.headers_mut());
        return r;
    };
    let Some(seq) = parse_seq(&seq, -1) else {
        return error(StatusCode::BAD_REQUEST, "Invalid idx");
    };
    let reset = request
        .headers()
        .get(headers::RESET)
        .is_some_and(|v| !v.is_empty());
    let segment = {
        let mut state = channel.lock();
        let seq = if seq == -1 { state.next_write } else { seq };
        if seq > MAX_SEQ {
            return error(StatusCode::BAD_REQUEST, "Invalid idx");
        }
        let segment = state.for_write(seq);
        if reset {
            // A publisher starting over: readers of older segments stop waiting.
            for s in state.ring.iter().flatten().filter(|s| s.seq < seq) {
                s.close();
            }
        }
        segment
    };
    let mut body = request.into_body().into_data_stream();
    // Bytes this request appended (a retry appends to what an earlier
    // request left in the segment).
    let mut taken = 0usize;
    let ended = loop {
        let frame = if taken == 0 {
            // Connected ahead of its data: answered as soon as the segment
            // is closed (by a reset, a delete or the channel closing). A
            // segment closed already is never written to.
            tokio::select! {
                biased;
                _ = wait_closed(&segment) => break Err(Refused::Closed),
                f = body.next() => f,
            }
        } else {
            body.next().await
        };
        match frame {
            Some(Ok(bytes)) if bytes.is_empty() => continue,
            Some(Ok(bytes)) => {
                let n = bytes.len();
                if let Err(refused) = segment.append(bytes) {
                    break Err(refused);
                }
                if taken == 0 {
                    let mut state = channel.lock();
                    state.next_write = segment.seq + 1;
                    state.write_time = Instant::now();
                }
                taken += n;
            }
            Some(Err(_)) => {
                // The publisher went away mid-segment. As go-livepeer, the
                // segment stays open: a retry of the same sequence appends
                // (within the segment's cap).
                return error(StatusCode::INTERNAL_SERVER_ERROR, "Server error");
            }
            None => break Ok(()),
        }
    };
    let channel_closed = channel.lock().closed;
    let mut r = match ended {
        Ok(()) if taken > 0 => {
            segment.close();
            let mut r = StatusCode::OK.into_response();
            set(r.headers_mut(), headers::SEQ, segment.seq);
            return r;
        }
        Err(Refused::TooLarge) => {
            segment.close();
            error(StatusCode::PAYLOAD_TOO_LARGE, "Segment too large")
        }
        Err(Refused::Full) => {
            // Not this publisher's fault: the segment stays open for a
            // retry once older segments have left retention.
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "Server busy");
            set(r.headers_mut(), "Retry-After", 1);
            r
        }
        // Closed under a publisher that had written (a reset, a delete,
        // the segment leaving retention, another request finishing it),
        // or a publish on a finished segment: no byte taken, and told so,
        // unless the channel ended, which publishers take as end of stream.
        Err(Refused::Closed) if (taken > 0 || segment.is_finished()) && !channel_closed => {
            error(StatusCode::CONFLICT, "Segment closed")
        }
        // An empty segment, or one closed before any byte (go-livepeer's
        // answer to a preconnected publisher): the channel moves past it
        // all the same.
        Ok(()) | Err(Refused::Closed) => {
            if taken == 0 {
                let mut state = channel.lock();
                state.next_write = segment.seq + 1;
                state.write_time = Instant::now();
            }
            segment.close();
            let mut r = StatusCode::OK.into_response();
            if channel_closed {
                set(r.headers_mut(), headers::CLOSED, "terminated");
            }
            r
        }
    };
    // The rest of the body is not read.
    set(r.headers_mut(), headers::SEQ, segment.seq);
    close_connection(version, r.headers_mut());
    r
}

async fn wait_closed(segment: &Segment) {
    let mut rx = segment.version.subscribe();
    loop {
        rx.borrow_and_update();
        if segment.is_closed() || rx.changed().await.is_err() {
            return;
        }
    }
}

async fn subscribe(State(server): Shared, Path((ch, seq)): Path<(String, String)>) -> Response {
    let Some(channel) = server.channel(&ch) else {
        return error(StatusCode::NOT_FOUND, "Stream not found");
    };
    if seq == "next" {
        let state = channel.lock();
        let mut r = state.next_write.to_string().into_response();
        set(r.headers_mut(), headers::LATEST, state.next_write);
        if state.closed {
            set(r.headers_mut(), headers::CLOSED, "terminated");
        }
        return r;
    }
    let Some(seq) = parse_seq(&seq, -2) else {
        return error(StatusCode::BAD_REQUEST, "Invalid idx");
    };
    let (segment, seq, latest, closed) = {
        let mut state = channel.lock();
        let seq = match seq {
            -1 => state.next_write,
            -2 => state.next_write.saturating_sub(1).max(0),
            s => s,
        };
        let segment = state.for_read(seq);
        (segment, seq, state.next_write, state.closed)
    };
    let Some(segment) = segment else {
        // Gone from retention, or not written yet beyond the next one.
        let mut r = (StatusCode::OK, "Entry not found").into_response();
        if closed {
            set(r.headers_mut(), headers::CLOSED, "terminated");
        } else {
            *r.status_mut() = StatusCode::from_u16(470).expect("valid status");
        }
        set(r.headers_mut(), headers::LATEST, latest);
        set(r.headers_mut(), headers::SEQ, seq);
        return r;
    };
    // Long poll: no answer until the segment has data or is closed.
    if !segment.wait_for(0).await {
        let mut r = StatusCode::OK.into_response();
        let (latest, closed) = {
            let state = channel.lock();
            (state.next_write, state.closed)
        };
        set(r.headers_mut(), headers::SEQ, segment.seq);
        set(r.headers_mut(), headers::LATEST, latest);
        if closed {
            set(r.headers_mut(), headers::CLOSED, "terminated");
        }
        return r;
    }
    let mut r = Body::from_stream(segment.clone().stream()).into_response();
    let h = r.headers_mut();
    if segment.seq != latest {
        set(h, headers::LATEST, latest);
    }
    set(h, headers::SEQ, segment.seq);
    set(h, axum::http::header::CONTENT_TYPE.as_str(), &channel.mime);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `server` on a loopback port; returns the channel base URL.
    async fn serve(server: &Arc<TrickleServer>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().nest(super::super::BASE_PATH, server.router());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}{}", super::super::BASE_PATH)
    }

    /// A GET that waits on the server (a long poll), started and given
    /// time to arrive.
    async fn waiting_get(
        http: &reqwest::Client,
        url: String,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let http = http.clone();
        let get = tokio::spawn(async move { http.get(url).send().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        get
    }

    async fn status(request: reqwest::RequestBuilder) -> u16 {
        request.send().await.unwrap().status().as_u16()
    }

    fn header(r: &reqwest::Response, name: &str) -> Option<String> {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn a_local_reader_sees_each_new_segment_and_ends_with_its_channel() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("in", "video/MP2T").unwrap();
        assert!(server.read_local("nope", -1).is_none());
        // A segment written before the reader started is not seen.
        assert_eq!(
            status(http.post(format!("{base}/in/-1")).body("old")).await,
            200
        );
        let mut reader = server.read_local("in", -1).unwrap();
        let next = tokio::spawn(async move {
            let first = reader.next_segment().await;
            let second = reader.next_segment().await;
            (first, second, reader)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        for body in ["a", "b"] {
            assert_eq!(
                status(http.post(format!("{base}/in/-1")).body(body)).await,
                200
            );
        }
        let (first, second, mut reader) = next.await.unwrap();
        assert_eq!((first, second), (Some(1), Some(2)));
        // An empty segment is skipped; the next one with data is seen.
        let waiting = tokio::spawn(async move { (reader.next_segment().await, reader) });
        assert_eq!(
            status(http.post(format!("{base}/in/-1")).body("")).await,
            200
        );
        assert_eq!(
            status(http.post(format!("{base}/in/-1")).body("c")).await,
            200
        );
        let (seen, mut reader) = waiting.await.unwrap();
        assert_eq!(seen, Some(4));
        let waiting = tokio::spawn(async move { reader.next_segment().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status(http.delete(format!("{base}/in"))).await, 200);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn local_messages_are_whole_segments_and_a_restored_channel_continues_its_sequence() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server
            .create_channel_at("o2r", "application/json", 41)
            .unwrap();
        // A reader waiting on the next segment gets the local message whole.
        let waiting = waiting_get(&http, format!("{base}/o2r/-1")).await;
        assert_eq!(
            server.publish_local("o2r", Bytes::from_static(b"{}")),
            Some(41)
        );
        let r = waiting.await.unwrap();
        assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("41"));
        assert_eq!(r.text().await.unwrap(), "{}");
        assert_eq!(server.next_write("o2r"), Some(42));
        assert_eq!(server.publish_local("nope", Bytes::new()), None);
        server.close_channel("o2r");
        assert_eq!(server.publish_local("o2r", Bytes::new()), None);
    }

    #[tokio::test]
    async fn segments_are_read_while_written_and_kept_five_deep() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        // Only the orchestrator creates channels.
        let r = http.post(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = http
            .post(format!("{base}/nope/0"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(header(&r, "connection").as_deref(), Some("close"));
        server.create_channel("s1", "video/MP2T").unwrap();
        assert_eq!(status(http.post(format!("{base}/s1"))).await, 200);

        // A subscriber waits for segment 0 before anything is written...
        let reader = {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut r = http.get(format!("{base}/s1/0")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("0"));
                assert_eq!(header(&r, "content-type").as_deref(), Some("video/MP2T"));
                // ...and sees the first chunk while the segment is still open.
                let first = r.chunk().await.unwrap().unwrap();
                let mut all = first.to_vec();
                while let Some(c) = r.chunk().await.unwrap() {
                    all.extend_from_slice(&c);
                }
                (first, all)
            })
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let publish = {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                http.post(format!("{base}/s1/0"))
                    .body(reqwest::Body::wrap_stream(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                    ))
                    .send()
                    .await
                    .unwrap()
            })
        };
        tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!reader.is_finished(), "the segment is still open");
        tx.send(Ok(Bytes::from_static(b"world"))).await.unwrap();
        drop(tx);
        let r = publish.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("0"));
        let (first, all) = reader.await.unwrap();
        assert_eq!(&first[..], b"hello ");
        assert_eq!(all, b"hello world");

        // -1 publishes at the next sequence; 7 more make 8 segments.
        for i in 1..8 {
            let r = http
                .post(format!("{base}/s1/-1"))
                .body(format!("seg{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(header(&r, "lp-trickle-seq"), Some(i.to_string()));
        }
        let r = http.get(format!("{base}/s1/next")).send().await.unwrap();
        assert_eq!(header(&r, "lp-trickle-latest").as_deref(), Some("8"));
        // The last five are kept; older ones are 470 with the latest.
        let r = http.get(format!("{base}/s1/2")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 470);
        assert_eq!(header(&r, "lp-trickle-latest").as_deref(), Some("8"));
        let r = http.get(format!("{base}/s1/3")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "seg3");
        // -2 is the current segment; far-future ones are 470 too.
        let r = http.get(format!("{base}/s1/-2")).send().await.unwrap();
        assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("7"));
        assert_eq!(r.text().await.unwrap(), "seg7");
        let r = http.get(format!("{base}/s1/20")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 470);
        assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("20"));

        // Closing the channel wakes a waiting reader with Closed; then 404.
        let waiting = waiting_get(&http, format!("{base}/s1/-1")).await;
        assert_eq!(status(http.delete(format!("{base}/s1"))).await, 200);
        let r = waiting.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "lp-trickle-closed").as_deref(),
            Some("terminated")
        );
        assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("8"));
        assert_eq!(status(http.get(format!("{base}/s1/0"))).await, 404);
        assert_eq!(status(http.delete(format!("{base}/s1"))).await, 400);
        assert_eq!(server.retained_bytes(), 0);
    }

    #[tokio::test]
    async fn oversize_segments_resets_deletes_and_idle_channels() {
        let server = TrickleServer::new(TrickleConfig {
            max_segment_bytes: 1000,
            idle_timeout: Duration::from_millis(200),
            max_channels: 2,
            ..TrickleConfig::default()
        });
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("a", "").unwrap();
        server.create_channel("b", "").unwrap();
        assert_eq!(
            server.create_channel("c", ""),
            Err(TrickleError::TooManyChannels(2))
        );
        assert_eq!(
            server.create_channel("../x", ""),
            Err(TrickleError::BadName)
        );
        // Past the cap: 413, and the segment holds no more than the cap.
        let r = http
            .post(format!("{base}/a/0"))
            .body(vec![7u8; 5000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert!(server.retained_bytes() <= 1000);
        // A reader waiting on segment 1 is released by its delete.
        let waiting = waiting_get(&http, format!("{base}/a/1")).await;
        assert_eq!(status(http.delete(format!("{base}/a/1"))).await, 200);
        let r = waiting.await.unwrap();
        assert_eq!(
            (r.status().as_u16(), header(&r, "lp-trickle-seq")),
            (200, Some("1".into()))
        );
        assert!(r.bytes().await.unwrap().is_empty());
        assert_eq!(status(http.delete(format!("{base}/a/9"))).await, 400);
        // A publisher starting over with Reset releases readers of older segments.
        let waiting = waiting_get(&http, format!("{base}/b/0")).await;
        let r = http
            .post(format!("{base}/b/3"))
            .header("Lp-Trickle-Reset", "1")
            .body("fresh")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(waiting.await.unwrap().status(), 200);
        // Bad sequence numbers are 400, not a crash.
        for bad in ["-3", "x", "99999999999999999999"] {
            assert_eq!(
                http.post(format!("{base}/b/{bad}"))
                    .body("x")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                400
            );
            assert_eq!(status(http.get(format!("{base}/b/{bad}"))).await, 400);
        }
        // Idle channels go.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.sweep(), 2);
        assert_eq!(server.channel_count(), 0);
    }

    type BodySender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;
    type PendingPost = tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>>;

    /// A POST whose body is fed, chunk by chunk, through the sender.
    fn streamed_post(http: &reqwest::Client, url: String) -> (BodySender, PendingPost) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let http = http.clone();
        let post = tokio::spawn(async move {
            http.post(url)
                .body(reqwest::Body::wrap_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .send()
                .await
        });
        (tx, post)
    }

    #[tokio::test]
    async fn a_finished_segment_takes_no_more_bytes_and_a_retry_stays_within_the_cap() {
        let server = TrickleServer::new(TrickleConfig {
            max_segment_bytes: 1000,
            ..TrickleConfig::default()
        });
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("v", "video/MP2T").unwrap();
        assert_eq!(
            status(http.post(format!("{base}/v/0")).body(vec![1u8; 900])).await,
            200
        );
        assert_eq!(server.retained_bytes(), 900);
        // Publishing segment 0 again, however often: 409, nothing taken.
        for _ in 0..5 {
            let r = http
                .post(format!("{base}/v/0"))
                .body(vec![2u8; 900])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 409);
            assert_eq!(header(&r, "lp-trickle-seq").as_deref(), Some("0"));
        }
        assert_eq!(server.retained_bytes(), 900);
        let r = http.get(format!("{base}/v/0")).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), vec![1u8; 900]);

        // A publisher that went away mid-segment may retry while the
        // segment is open, but the cap counts what the segment holds.
        let (tx, post) = streamed_post(&http, format!("{base}/v/1"));
        tx.send(Ok(Bytes::from(vec![3u8; 600]))).await.unwrap();
        while server.retained_bytes() < 1500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
        assert!(post.await.unwrap().is_err());
        let r = http
            .post(format!("{base}/v/1"))
            .body(vec![3u8; 600])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(server.retained_bytes(), 1500);
        // Within the cap a retry completes the segment.
        let (tx, post) = streamed_post(&http, format!("{base}/v/2"));
        tx.send(Ok(Bytes::from_static(b"he"))).await.unwrap();
        while server.retained_bytes() < 1502 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
        assert!(post.await.unwrap().is_err());
        assert_eq!(
            status(http.post(format!("{base}/v/2")).body("llo")).await,
            200
        );
        let r = http.get(format!("{base}/v/2")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_segment_out_of_retention_takes_no_more_bytes() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("v", "video/MP2T").unwrap();
        let (tx, post) = streamed_post(&http, format!("{base}/v/0"));
        tx.send(Ok(Bytes::from(vec![1u8; 100]))).await.unwrap();
        while server.retained_bytes() < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Segment 5 takes segment 0's ring slot: 0 leaves retention.
        assert_eq!(
            status(http.post(format!("{base}/v/5")).body(vec![2u8; 10])).await,
            200
        );
        assert_eq!(server.retained_bytes(), 10);
        tx.send(Ok(Bytes::from(vec![1u8; 100]))).await.unwrap();
        let r = post.await.unwrap().unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(header(&r, "connection").as_deref(), Some("close"));
        assert_eq!(server.retained_bytes(), 10);
        // A fresh publish of 0 is a new segment, and 5 leaves in its turn.
        assert_eq!(
            status(http.post(format!("{base}/v/0")).body(vec![3u8; 20])).await,
            200
        );
        assert_eq!(server.retained_bytes(), 20);
        server.close_channel("v");
        assert_eq!(server.retained_bytes(), 0);
    }

    #[tokio::test]
    async fn json_channels_take_small_segments() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("c", "application/json").unwrap();
        server
            .create_channel("e", "Application/JSON; charset=utf-8")
            .unwrap();
        let cap = TrickleConfig::default().max_json_segment_bytes;
        for ch in ["c", "e"] {
            let r = http
                .post(format!("{base}/{ch}/-1"))
                .body(vec![b' '; cap + 1])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 413, "{ch}");
            assert_eq!(
                status(http.post(format!("{base}/{ch}/-1")).body("{}")).await,
                200
            );
        }
        assert!(server.retained_bytes() <= 2 * cap + 4);
        assert_eq!(
            server.publish_local("c", Bytes::from(vec![b' '; cap + 1])),
            None
        );
        assert!(server
            .publish_local("c", Bytes::from_static(b"{}"))
            .is_some());
        // Media channels keep the media cap.
        server.create_channel("m", "video/MP2T").unwrap();
        assert_eq!(
            status(http.post(format!("{base}/m/0")).body(vec![0u8; cap * 4])).await,
            200
        );
    }

    #[tokio::test]
    async fn writes_past_the_retained_bytes_budget_are_503_until_memory_is_given_back() {
        let server = TrickleServer::new(TrickleConfig {
            max_segment_bytes: 2000,
            max_retained_bytes: 3000,
            ..TrickleConfig::default()
        });
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("a", "video/MP2T").unwrap();
        server.create_channel("b", "video/MP2T").unwrap();
        assert_eq!(
            status(http.post(format!("{base}/a/0")).body(vec![1u8; 2000])).await,
            200
        );
        let r = http
            .post(format!("{base}/b/0"))
            .body(vec![2u8; 2000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
        assert!(server.retained_bytes() <= 3000);
        server.create_channel("o2r", "video/MP2T").unwrap();
        assert_eq!(
            server.publish_local("o2r", Bytes::from(vec![0u8; 2000])),
            None
        );
        // Channel a going gives its bytes back; b's publisher retries.
        server.close_channel("a");
        assert!(server.retained_bytes() <= 1000);
        let before = server.retained_bytes();
        let r = http
            .post(format!("{base}/b/0"))
            .body(vec![2u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(server.retained_bytes(), before + 1000);
        server.close_channel("b");
        assert_eq!(server.retained_bytes(), 0);
    }

    #[tokio::test]
    async fn absurd_sequence_numbers_are_refused_and_cannot_overflow() {
        let server = TrickleServer::new(TrickleConfig::default());
        let base = serve(&server).await;
        let http = reqwest::Client::new();
        server.create_channel("v", "video/MP2T").unwrap();
        for bad in [i64::MAX, MAX_SEQ + 1] {
            let url = format!("{base}/v/{bad}");
            assert_eq!(status(http.post(&url).body("x")).await, 400);
            assert_eq!(status(http.get(&url)).await, 400);
            assert_eq!(status(http.delete(&url)).await, 400);
        }
        // The highest one works; past it, "next" is refused, not wrapped.
        let r = http
            .post(format!("{base}/v/{MAX_SEQ}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(server.next_write("v"), Some(MAX_SEQ + 1));
        assert_eq!(
            status(http.post(format!("{base}/v/-1")).body("y")).await,
            400
        );
        let r = http.get(format!("{base}/v/-2")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "x");
        assert_eq!(server.publish_local("v", Bytes::from_static(b"z")), None);
        let mut reader = server.read_local("v", i64::MAX).unwrap();
        assert_eq!(reader.seq, MAX_SEQ);
        assert_eq!(reader.next_segment().await, Some(MAX_SEQ));
        // Restored channels are clamped the same way.
        server
            .create_channel_at("w", "video/MP2T", i64::MAX)
            .unwrap();
        assert_eq!(server.next_write("w"), Some(MAX_SEQ));
        assert_eq!(server.sweep(), 0);
    }

    #[tokio::test]
    async fn a_poisoned_lock_takes_neither_the_sweeper_nor_the_channel_down() {
        let server = TrickleServer::new(TrickleConfig {
            idle_timeout: Duration::from_millis(50),
            ..TrickleConfig::default()
        });
        server.create_channel("p", "video/MP2T").unwrap();
        server.create_channel("q", "video/MP2T").unwrap();
        let channel = server.channel("p").unwrap();
        let poisoned = std::thread::spawn(move || {
            let _state = channel.lock();
            panic!("a request panicking with the channel locked");
        })
        .join();
        assert!(poisoned.is_err());
        assert!(server.channel("p").unwrap().state.is_poisoned());
        assert_eq!(server.publish_local("p", Bytes::from_static(b"x")), Some(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.sweep(), 2);
        assert_eq!(server.channel_count(), 0);
    }
}
