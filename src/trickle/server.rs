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
//! Beyond go-livepeer, which has none, a segment is capped in size (413
//! past it) and the number of channels is capped, so memory is bounded by
//! channels × retained segments × segment cap whatever publishers do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// One segment: the bytes written so far, readable while it grows.
struct Segment {
    seq: i64,
    data: Mutex<SegmentData>,
    /// Bumped on every write and on close: readers wait on it.
    version: watch::Sender<u64>,
}

#[derive(Default)]
struct SegmentData {
    chunks: Vec<Bytes>,
    len: usize,
    closed: bool,
}

impl Segment {
    fn new(seq: i64) -> Arc<Segment> {
        Arc::new(Segment {
            seq,
            data: Mutex::default(),
            version: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SegmentData> {
        self.data.lock().expect("segment lock")
    }

    fn append(&self, bytes: Bytes) {
        {
            let mut d = self.lock();
            d.len += bytes.len();
            d.chunks.push(bytes);
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.version.send_modify(|v| *v += 1);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
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
    next_write: i64,
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

    /// A new segment `seq` in its ring slot; the older one there is closed.
    fn start(&mut self, seq: i64) -> Arc<Segment> {
        let slot = self.slot(seq);
        if let Some(old) = self.ring[slot].take() {
            old.close();
        }
        let s = Segment::new(seq);
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
            s.close();
        }
    }
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().expect("channel lock")
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
                self.seq = segment.seq + 1;
                return Some(segment.seq);
            }
            // Closed before any byte: the channel ended, or the segment
            // was skipped (an empty publish, a reset, a delete).
            if self.channel.lock().closed {
                return None;
            }
            self.seq = segment.seq + 1;
        }
    }
}

pub struct TrickleServer {
    config: TrickleConfig,
    channels: Mutex<HashMap<String, Arc<Channel>>>,
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
            config,
            channels: Mutex::default(),
        })
    }

    pub fn config(&self) -> &TrickleConfig {
        &self.config
    }

    fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels
            .lock()
            .expect("channels lock")
            .get(name)
            .cloned()
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
        let mut channels = self.channels.lock().expect("channels lock");
        if channels.contains_key(name) {
            return Ok(());
        }
        if channels.len() >= self.config.max_channels {
            return Err(TrickleError::TooManyChannels(channels.len()));
        }
        channels.insert(
            name.to_string(),
            Arc::new(Channel {
                mime: if mime.is_empty() {
                    "application/octet-stream".into()
                } else {
                    mime.to_string()
                },
                state: Mutex::new(ChannelState {
                    next_write: next_write.max(0),
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
    /// unknown or closed channel.
    pub fn publish_local(&self, name: &str, bytes: Bytes) -> Option<i64> {
        let channel = self.channel(name)?;
        let segment = {
            let mut state = channel.lock();
            if state.closed {
                return None;
            }
            let seq = state.next_write;
            let segment = state.for_write(seq);
            state.next_write = seq + 1;
            state.write_time = Instant::now();
            segment
        };
        if !bytes.is_empty() {
            segment.append(bytes);
        }
        segment.close();
        Some(segment.seq)
    }

    /// Follows a channel from inside the orchestrator, as a subscriber at
    /// `seq` (`-1`: the next segment written) would, without HTTP: what
    /// meters a live stream's input. `None` for an unknown channel.
    pub fn read_local(&self, name: &str, seq: i64) -> Option<LocalReader> {
        let channel = self.channel(name)?;
        let seq = match seq {
            s if s < 0 => channel.lock().next_write,
            s => s,
        };
        Some(LocalReader { channel, seq })
    }

    /// The sequence number the next segment of a channel is written at.
    pub fn next_write(&self, name: &str) -> Option<i64> {
        Some(self.channel(name)?.lock().next_write)
    }

    /// Closes a channel: its waiting readers are told, later requests get 404.
    pub fn close_channel(&self, name: &str) -> bool {
        let removed = self.channels.lock().expect("channels lock").remove(name);
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
        self.channels.lock().expect("channels lock").len()
    }

    /// Bytes held by every retained segment of every channel.
    pub fn retained_bytes(&self) -> usize {
        let channels: Vec<Arc<Channel>> = self
            .channels
            .lock()
            .expect("channels lock")
            .values()
            .cloned()
            .collect();
        channels
            .iter()
            .map(|c| {
                c.lock()
                    .ring
                    .iter()
                    .flatten()
                    .map(|s| s.lock().len)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Closes channels idle past the timeout (names starting with `_`, go-livepeer's
    /// internal ones, are kept); returns how many.
    pub fn sweep(&self) -> usize {
        let idle: Vec<String> = self
            .channels
            .lock()
            .expect("channels lock")
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

fn parse_seq(text: &str, lowest: i64) -> Option<i64> {
    text.parse::<i64>().ok().filter(|s| *s >= lowest)
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
    let mut total = 0usize;
    loop {
        let frame = if total == 0 {
            // Connected ahead of its data: answered as soon as the segment
            // is closed (by a reset, a delete or the channel closing).
            tokio::select! {
                f = body.next() => f,
                _ = wait_closed(&segment) => None,
            }
        } else {
            body.next().await
        };
        match frame {
            Some(Ok(bytes)) if bytes.is_empty() => continue,
            Some(Ok(bytes)) => {
                if total == 0 {
                    let mut state = channel.lock();
                    state.next_write = segment.seq + 1;
                    state.write_time = Instant::now();
                }
                total += bytes.len();
                if total > server.config.max_segment_bytes {
                    segment.close();
                    let mut r = error(StatusCode::PAYLOAD_TOO_LARGE, "Segment too large");
                    set(r.headers_mut(), headers::SEQ, segment.seq);
                    close_connection(version, r.headers_mut());
                    return r;
                }
                segment.append(bytes);
            }
            Some(Err(_)) => {
                // The publisher went away mid-segment. As go-livepeer, the
                // segment stays open: a retry of the same sequence appends.
                return error(StatusCode::INTERNAL_SERVER_ERROR, "Server error");
            }
            None => break,
        }
    }
    let mut r = StatusCode::OK.into_response();
    set(r.headers_mut(), headers::SEQ, segment.seq);
    if total == 0 {
        // An empty segment (or one closed before any byte): the channel
        // moves past it all the same.
        let closed = {
            let mut state = channel.lock();
            state.next_write = segment.seq + 1;
            state.write_time = Instant::now();
            state.closed
        };
        if closed {
            set(r.headers_mut(), headers::CLOSED, "terminated");
        }
        close_connection(version, r.headers_mut());
    }
    segment.close();
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
            -2 => (state.next_write - 1).max(0),
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
}
