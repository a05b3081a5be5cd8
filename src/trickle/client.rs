//! Trickle clients: a publisher that streams segments to a channel and a
//! subscriber that reads them while they are written
//! (`../shared/specs/live_runner.md` §5). They follow go-livepeer's
//! `trickle/trickle_publisher.go` and `trickle/trickle_subscriber.go`
//! (176aa415) and the official SDK's `trickle_publisher.py` and
//! `trickle_subscriber.py` (livepeer-gateway 1.0.0), and talk to
//! [`super::TrickleServer`] as well as to go-livepeer's server.
//!
//! # Publisher
//!
//! - [`TricklePublisher::start`] from `-1` asks `GET {url}/next` for the
//!   channel's next sequence number (`Lp-Trickle-Latest`) and sends the first
//!   segment with `Lp-Trickle-Reset`, which releases readers stuck on older
//!   segments (SDK). From `n >= 0` it starts at `n` without a reset
//!   (go-livepeer starts at 0). Without a `start`, the first
//!   [`TricklePublisher::next_segment`] starts from `-1`.
//! - Each segment is one `POST {url}/{seq}` whose body is streamed: bytes
//!   handed to [`SegmentWriter::write`] go out as they are written.
//! - The POST of the next segment is opened ("preconnected") as soon as a
//!   segment starts, so the next segment's request is already at the server
//!   when its first byte is written (go-livepeer `Next`; SDK `next`). The
//!   first segment's POST is opened by `start`.
//! - A POST that fails before any byte of its body went out (connection
//!   refused or reset, HTTP 408/429/5xx) is retried with exponential backoff
//!   up to [`RetryPolicy::max_attempts`] (the SDK retries once when no body
//!   was consumed). Once bytes went out it is not retried: the server
//!   appends a retried body to what it already has.
//! - 404 (channel gone) and `Lp-Trickle-Closed` (end of stream) are terminal
//!   for the publisher; so are [`PublisherConfig::max_consecutive_failures`]
//!   failed segments in a row (SDK: 3). Other failures fail one segment.
//! - A write waits at most [`PublisherConfig::write_timeout`] for the
//!   transport to take the bytes (SDK: 5 s per chunk); `finish` waits at most
//!   [`PublisherConfig::response_timeout`] for the server's answer after
//!   the body ended. The preconnected POST itself has no timeout: a
//!   segment may stay open as long as its producer needs.
//! - [`TricklePublisher::close`] is `DELETE {url}`.
//!
//! # Subscriber
//!
//! - `GET {url}/{seq}` with `-1` (next write), `-2` (current write) or `n`.
//!   The next segment read is `Lp-Trickle-Seq + 1` of the last one.
//! - 470 means the segment is gone (fell out of the server's retention) or
//!   not there yet: with `Lp-Trickle-Latest >= seq` the subscriber jumps to
//!   `Latest` (go-livepeer and SDK) and reports the jump as a [`Gap`] on the
//!   segment it then reads; with `Latest < seq` it is ahead of the live edge
//!   and asks again after [`SubscriberConfig::ahead_wait`] (SDK: 0.25 s).
//! - 404 or `Lp-Trickle-Closed` ends the stream: `next_segment` gives `None`
//!   from then on.
//! - Connection errors and HTTP 408/429/5xx are retried with exponential
//!   backoff up to [`RetryPolicy::max_attempts`] (SDK: 5 tries 0.5 s apart;
//!   go-livepeer: fails after more than 5 preconnect errors); then
//!   [`TrickleClientError::Unavailable`]. An error is not sticky: the next
//!   call tries the same sequence number again.
//! - A GET waiting for its segment (a long poll) that has no response
//!   headers after [`SubscriberConfig::repoll_interval`] is dropped and sent
//!   again, 20 s by default as go-livepeer's `preconnectRefreshTimeout`, so a
//!   connection silently lost (NAT, proxy, server restart) is not waited on
//!   forever. Re-issues are not failures.
//! - Like go-livepeer and the SDK, the GET for the next segment is sent in
//!   the background as soon as a segment's headers arrive.
//! - A segment's body is read chunk by chunk as it arrives; more than
//!   [`SubscriberConfig::max_segment_bytes`] (SDK: 10 MiB) is an error, and
//!   so is a body with no bytes for [`SubscriberConfig::idle_timeout`]
//!   (60 s; neither upstream client has one, and a dead connection would
//!   otherwise hang the reader; the SDK's media publisher rotates segments
//!   after 25 s without data).
//!
//! # HTTP client
//!
//! Both take a `reqwest::Client`; [`http_client_builder`] gives the one
//! these decisions assume: a connect timeout, TCP keepalive, no overall
//! request timeout (it would cut long polls and long segments).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::headers;

/// A `reqwest::ClientBuilder` set up for trickle: 5 s connect timeout, TCP
/// keepalive, no Nagle delay, idle pooled connections dropped after a
/// minute (go-livepeer's `IdleConnTimeout`), and no overall timeout.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60))
}

/// Bounded retries with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The pause after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `failures` (1 = the first failure).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrickleClientError {
    /// 404: the channel does not exist (or no longer). Terminal.
    #[error("trickle channel {url} does not exist (404)")]
    ChannelNotFound { url: String },
    /// `Lp-Trickle-Closed`, or the publisher was closed: end of stream. Terminal.
    #[error("trickle channel {url} is closed")]
    ChannelClosed { url: String },
    /// The server answered a segment's POST before its body ended: the
    /// segment was closed under the publisher (a newer publisher's reset, a
    /// `DELETE` of the segment).
    #[error("trickle segment {url}/{seq} was closed by the server before it was written")]
    SegmentClosed { url: String, seq: i64 },
    /// A segment bigger than the reader's limit.
    #[error("trickle segment {url}/{seq} is larger than the {limit}-byte limit")]
    TooLarge { url: String, seq: i64, limit: usize },
    /// An HTTP status that retrying does not help (or the last one of the retries).
    #[error("trickle {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// Retries used up.
    #[error("trickle {url} failed after {attempts} attempts: {last}")]
    Unavailable {
        url: String,
        attempts: u32,
        last: String,
    },
    /// A connection failed after part of a body went through: not retried.
    #[error("trickle {url}: connection failed mid-segment: {message}")]
    Interrupted { url: String, message: String },
    /// No progress for this long (a stalled write, a silent body, no answer).
    #[error("trickle {url}: no progress for {after:?}")]
    Timeout { url: String, after: Duration },
    /// Too many segments failed in a row. Terminal.
    #[error("trickle publisher for {url} gave up after {failures} failed segments in a row; the last: {last}")]
    TooManyFailures {
        url: String,
        failures: u32,
        last: Box<TrickleClientError>,
    },
}

impl TrickleClientError {
    /// Whether the publisher can go on after this error (it cannot after
    /// 404, end of stream, or too many failures).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TrickleClientError::ChannelNotFound { .. }
                | TrickleClientError::ChannelClosed { .. }
                | TrickleClientError::TooManyFailures { .. }
        )
    }
}

type Result<T, E = TrickleClientError> = std::result::Result<T, E>;

/// An error with its sources (reqwest's own message leaves out the cause).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn header_i64(headers: &HeaderMap, name: &str) -> Option<i64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn is_closed(headers: &HeaderMap) -> bool {
    headers.contains_key(headers::CLOSED)
}

/// Statuses worth another try: the server or a proxy may get better.
fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// At most the first 512 bytes of an error body, as text.
async fn error_body(resp: reqwest::Response) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(2), resp.bytes())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]);
    text.trim().to_string()
}

fn joined<T>(r: std::result::Result<Result<T>, JoinError>, url: &str) -> Result<T> {
    r.unwrap_or_else(|e| {
        Err(TrickleClientError::Interrupted {
            url: url.to_string(),
            message: format!("request task ended: {e}"),
        })
    })
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `Content-Type` of the POSTs (go-livepeer always sends `video/MP2T`;
    /// the server ignores it, the channel's type is fixed at creation).
    pub content_type: String,
    /// Retries of a POST before any of its body went out, and of
    /// `GET {url}/next`, `DELETE` and [`TricklePublisher::publish`].
    pub retry: RetryPolicy,
    /// Failed segments in a row after which the publisher gives up (SDK: 3).
    pub max_consecutive_failures: u32,
    /// Longest a write waits for the transport to take its bytes (SDK: 5 s).
    pub write_timeout: Duration,
    /// Longest wait for an answer: after a segment's body ended, and for the
    /// short requests (`/next`, `DELETE`, `publish`).
    pub response_timeout: Duration,
    /// Chunks buffered between a writer and its POST.
    pub queue_chunks: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            content_type: "video/MP2T".into(),
            retry: RetryPolicy::default(),
            max_consecutive_failures: 3,
            write_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            queue_chunks: 8,
        }
    }
}

struct PubShared {
    http: reqwest::Client,
    url: String,
    config: PublisherConfig,
    state: Mutex<PubState>,
}

#[derive(Default)]
struct PubState {
    terminal: Option<TrickleClientError>,
    consecutive_failures: u32,
}

impl PubShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn terminal(&self) -> Option<TrickleClientError> {
        self.lock().terminal.clone()
    }

    /// The first terminal error sticks.
    fn set_terminal(&self, e: TrickleClientError) {
        let mut state = self.lock();
        if state.terminal.is_none() {
            if matches!(e, TrickleClientError::ChannelClosed { .. }) {
                tracing::info!(url = %self.url, "trickle channel closed");
            } else {
                tracing::warn!(url = %self.url, error = %e, "trickle publisher stopped");
            }
            state.terminal = Some(e);
        }
    }

    /// Counts a segment's success or failure.
    fn record(&self, result: &Result<i64>) {
        match result {
            Ok(_) => self.lock().consecutive_failures = 0,
            Err(e) if e.is_terminal() => self.set_terminal(e.clone()),
            Err(e) => {
                let failures = {
                    let mut state = self.lock();
                    state.consecutive_failures += 1;
                    state.consecutive_failures
                };
                tracing::warn!(url = %self.url, failures, error = %e, "trickle segment failed");
                if failures >= self.config.max_consecutive_failures.max(1) {
                    self.set_terminal(TrickleClientError::TooManyFailures {
                        url: self.url.clone(),
                        failures,
                        last: Box::new(e.clone()),
                    });
                }
            }
        }
    }

    fn closed(&self) -> TrickleClientError {
        TrickleClientError::ChannelClosed {
            url: self.url.clone(),
        }
    }

    fn not_found(&self) -> TrickleClientError {
        TrickleClientError::ChannelNotFound {
            url: self.url.clone(),
        }
    }
}

enum BodyMsg {
    Data(Bytes),
    End,
}

/// The writer's side of a segment's body, shared by the POST's attempts:
/// an attempt that failed before taking any data leaves the queue intact
/// for the next one.
struct BodySource {
    rx: Mutex<mpsc::Receiver<BodyMsg>>,
    /// Some data went to the transport: the POST cannot be retried.
    consumed: AtomicBool,
    /// The end of the body went to the transport.
    ended: AtomicBool,
}

/// One attempt's request body. It ends only on the writer's explicit end;
/// a writer dropped without finishing makes it fail, so the server sees an
/// aborted upload rather than a short segment.
struct BodyStream {
    source: Arc<BodySource>,
    done: bool,
}

impl futures::Stream for BodyStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done || self.source.ended.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        let polled = self
            .source
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll_recv(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(BodyMsg::Data(bytes))) => {
                self.source.consumed.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(BodyMsg::End)) => {
                self.source.ended.store(true, Ordering::SeqCst);
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(io::Error::other(
                    "trickle segment abandoned by its writer",
                ))))
            }
        }
    }
}

/// The server's 200 to a segment's POST.
#[derive(Debug)]
struct PostOk {
    seq: Option<i64>,
    closed: bool,
    /// The whole body, its end included, went to the transport.
    body_ended: bool,
}

/// A segment's POST, opened ahead of its data.
struct PendingPost {
    seq: i64,
    url: String,
    tx: Option<mpsc::Sender<BodyMsg>>,
    task: JoinHandle<Result<PostOk>>,
}

impl Drop for PendingPost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PendingPost {
    fn open(shared: &Arc<PubShared>, seq: i64, reset: bool) -> PendingPost {
        let (tx, rx) = mpsc::channel(shared.config.queue_chunks.max(1));
        let source = Arc::new(BodySource {
            rx: Mutex::new(rx),
            consumed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        let url = format!("{}/{seq}", shared.url);
        tracing::debug!(%url, reset, "trickle preconnect");
        let task = tokio::spawn(run_post(shared.clone(), url.clone(), reset, source));
        PendingPost {
            seq,
            url,
            tx: Some(tx),
            task,
        }
    }
}

async fn run_post(
    shared: Arc<PubShared>,
    url: String,
    reset: bool,
    source: Arc<BodySource>,
) -> Result<PostOk> {
    let retry = shared.config.retry;
    let mut failures = 0;
    loop {
        let mut request = shared
            .http
            .post(&url)
            .header(CONTENT_TYPE, &shared.config.content_type)
            .body(reqwest::Body::wrap_stream(BodyStream {
                source: source.clone(),
                done: false,
            }));
        if reset {
            request = request.header(headers::RESET, "1");
        }
        let last = match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let closed = is_closed(resp.headers());
                let seq = header_i64(resp.headers(), headers::SEQ);
                if closed {
                    shared.set_terminal(shared.closed());
                }
                if status == 200 || closed {
                    let _ =
                        tokio::time::timeout(shared.config.response_timeout, resp.bytes()).await;
                    return Ok(PostOk {
                        seq,
                        closed,
                        body_ended: source.ended.load(Ordering::SeqCst),
                    });
                }
                if status == 404 {
                    let e = shared.not_found();
                    shared.set_terminal(e.clone());
                    return Err(e);
                }
                let e = TrickleClientError::Status {
                    url: url.clone(),
                    status,
                    body: error_body(resp).await,
                };
                if !retryable(status) {
                    return Err(e);
                }
                e.to_string()
            }
            Err(e) => {
                let message = describe(&e);
                if source.consumed.load(Ordering::SeqCst) {
                    return Err(TrickleClientError::Interrupted { url, message });
                }
                message
            }
        };
        failures += 1;
        if source.consumed.load(Ordering::SeqCst) || failures >= retry.attempts() {
            return Err(TrickleClientError::Unavailable {
                url,
                attempts: failures,
                last,
            });
        }
        let pause = retry.backoff(failures);
        tracing::warn!(%url, attempt = failures, error = %last, ?pause, "trickle POST failed before its body, retrying");
        tokio::time::sleep(pause).await;
    }
}

/// Publishes segments to one trickle channel. See the module docs.
pub struct TricklePublisher {
    shared: Arc<PubShared>,
    /// The next segment's sequence number; `None` until started.
    next_seq: Option<i64>,
    /// The segment whose POST carries `Lp-Trickle-Reset`.
    reset_seq: Option<i64>,
    pending: Option<PendingPost>,
    closed: bool,
}

impl TricklePublisher {
    /// A publisher for the channel at `url` (`http://host/ai/trickle/name`).
    pub fn new(http: reqwest::Client, url: &str) -> TricklePublisher {
        TricklePublisher::with_config(http, url, PublisherConfig::default())
    }

    pub fn with_config(
        http: reqwest::Client,
        url: &str,
        config: PublisherConfig,
    ) -> TricklePublisher {
        TricklePublisher {
            shared: Arc::new(PubShared {
                http,
                url: url.trim_end_matches('/').to_string(),
                config,
                state: Mutex::default(),
            }),
            next_seq: None,
            reset_seq: None,
            pending: None,
            closed: false,
        }
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The sequence number the next segment gets (`None` before `start`).
    pub fn next_seq(&self) -> Option<i64> {
        self.next_seq
    }

    /// The error that stopped the publisher, if any.
    pub fn terminal_error(&self) -> Option<TrickleClientError> {
        self.shared.terminal()
    }

    /// Starts (or restarts) at `start_seq`: `-1` (any negative) = the
    /// channel's next sequence number from `GET {url}/next`, with
    /// `Lp-Trickle-Reset` on the first segment (SDK); `n >= 0` = `n` (go-livepeer
    /// starts at 0). Opens the first segment's POST; returns its sequence number.
    pub async fn start(&mut self, start_seq: i64) -> Result<i64> {
        if self.closed {
            return Err(self.shared.closed());
        }
        if let Some(e) = self.shared.terminal() {
            return Err(e);
        }
        let (seq, reset) = if start_seq < 0 {
            (self.resolve_next().await?, true)
        } else {
            (start_seq, false)
        };
        self.pending = None;
        self.next_seq = Some(seq);
        self.reset_seq = reset.then_some(seq);
        self.pending = Some(PendingPost::open(&self.shared, seq, reset));
        Ok(seq)
    }

    /// `GET {url}/next`: the channel's next write sequence number.
    async fn resolve_next(&self) -> Result<i64> {
        let shared = &self.shared;
        let url = format!("{}/next", shared.url);
        let retry = shared.config.retry;
        let mut failures = 0;
        loop {
            let sent = shared
                .http
                .get(&url)
                .timeout(shared.config.response_timeout)
                .send()
                .await;
            let last = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 404 {
                        let e = shared.not_found();
                        shared.set_terminal(e.clone());
                        return Err(e);
                    }
                    if is_closed(resp.headers()) {
                        shared.set_terminal(shared.closed());
                        return Err(shared.closed());
                    }
                    let latest = header_i64(resp.headers(), headers::LATEST);
                    match (status, latest) {
                        (200, Some(seq)) if seq >= 0 => return Ok(seq),
                        (200, _) => format!("no {} header in the answer", headers::LATEST),
                        (s, _) if retryable(s) => format!("HTTP {s}: {}", error_body(resp).await),
                        (s, _) => {
                            return Err(TrickleClientError::Status {
                                url,
                                status: s,
                                body: error_body(resp).await,
                            })
                        }
                    }
                }
                Err(e) => describe(&e),
            };
            failures += 1;
            if failures >= retry.attempts() {
                return Err(TrickleClientError::Unavailable {
                    url,
                    attempts: failures,
                    last,
                });
            }
            tokio::time::sleep(retry.backoff(failures)).await;
        }
    }

    /// Starts the next segment, whose POST was opened ahead (or is opened
    /// now), and opens the POST of the one after it.
    pub async fn next_segment(&mut self) -> Result<SegmentWriter> {
        if self.closed {
            return Err(self.shared.closed());
        }
        if let Some(e) = self.shared.terminal() {
            return Err(e);
        }
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => self.start(-1).await?,
        };
        let post = match self.pending.take() {
            Some(p) if p.seq == seq && !p.task.is_finished() => p,
            other => {
                // A preconnected POST answered before its data (retries used
                // up, or its segment closed under it): a fresh one, unless
                // its answer stopped the publisher.
                if let Some(p) = &other {
                    tracing::debug!(url = %p.url, "trickle preconnect ended before use; reopening");
                }
                drop(other);
                if let Some(e) = self.shared.terminal() {
                    return Err(e);
                }
                PendingPost::open(&self.shared, seq, self.reset_seq == Some(seq))
            }
        };
        if self.reset_seq == Some(seq) {
            self.reset_seq = None;
        }
        self.next_seq = Some(seq + 1);
        self.pending = Some(PendingPost::open(&self.shared, seq + 1, false));
        Ok(SegmentWriter {
            post,
            shared: self.shared.clone(),
            written: 0,
            outcome: None,
            failed: None,
        })
    }

    /// One whole segment through the preconnected pipeline: `next_segment`,
    /// `write`, `finish`. Returns the segment's sequence number.
    pub async fn write_segment(&mut self, bytes: Bytes) -> Result<i64> {
        let mut writer = self.next_segment().await?;
        writer.write(bytes).await?;
        writer.finish().await
    }

    /// A one-off `POST {url}/{seq}` of a whole small message (a JSON event),
    /// outside the preconnected pipeline: `seq_or_next` is a sequence number
    /// or `-1` for the channel's next. Returns the server's `Lp-Trickle-Seq`.
    /// Failures are retried per the policy: at `-1` whatever the failure
    /// (at least once: a lost answer may mean the message is sent twice, in
    /// two segments), at an explicit sequence number only when the
    /// connection could not be made (the server appends a retried body).
    /// Do not mix with [`Self::next_segment`] on one channel.
    pub async fn publish(&self, seq_or_next: i64, body: Bytes) -> Result<i64> {
        let shared = &self.shared;
        if self.closed {
            return Err(shared.closed());
        }
        let seq = seq_or_next.max(-1);
        let url = format!("{}/{seq}", shared.url);
        let retry = shared.config.retry;
        let mut failures = 0;
        loop {
            let sent = shared
                .http
                .post(&url)
                .header(CONTENT_TYPE, &shared.config.content_type)
                .timeout(shared.config.response_timeout)
                .body(body.clone())
                .send()
                .await;
            let last = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if is_closed(resp.headers()) {
                        return Err(shared.closed());
                    }
                    match status {
                        200 => {
                            let got = header_i64(resp.headers(), headers::SEQ).unwrap_or(seq);
                            return Ok(got);
                        }
                        404 => return Err(shared.not_found()),
                        s if retryable(s) => format!("HTTP {s}: {}", error_body(resp).await),
                        s => {
                            return Err(TrickleClientError::Status {
                                url,
                                status: s,
                                body: error_body(resp).await,
                            })
                        }
                    }
                }
                Err(e) if seq < 0 || e.is_connect() => describe(&e),
                Err(e) => {
                    return Err(TrickleClientError::Interrupted {
                        url,
                        message: describe(&e),
                    })
                }
            };
            failures += 1;
            if failures >= retry.attempts() {
                return Err(TrickleClientError::Unavailable {
                    url,
                    attempts: failures,
                    last,
                });
            }
            tokio::time::sleep(retry.backoff(failures)).await;
        }
    }

    /// Closes the channel: `DELETE {url}` (go-livepeer and SDK), then drops
    /// the preconnected POST. A channel already gone (400/404) is no error.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let shared = self.shared.clone();
        let retry = shared.config.retry;
        let mut failures = 0;
        let result = loop {
            let sent = shared
                .http
                .delete(&shared.url)
                .timeout(shared.config.response_timeout)
                .send()
                .await;
            let last = match sent {
                Ok(resp) => match resp.status().as_u16() {
                    200 | 400 | 404 => break Ok(()),
                    s if retryable(s) => format!("HTTP {s}: {}", error_body(resp).await),
                    s => {
                        break Err(TrickleClientError::Status {
                            url: shared.url.clone(),
                            status: s,
                            body: error_body(resp).await,
                        })
                    }
                },
                Err(e) => describe(&e),
            };
            failures += 1;
            if failures >= retry.attempts() {
                break Err(TrickleClientError::Unavailable {
                    url: shared.url.clone(),
                    attempts: failures,
                    last,
                });
            }
            tokio::time::sleep(retry.backoff(failures)).await;
        };
        self.pending = None;
        shared.set_terminal(shared.closed());
        result
    }
}

/// One segment being written: its bytes go to the server as they are
/// written. End it with [`Self::finish`]; dropped unfinished, its upload is
/// aborted (the server keeps what it got and leaves the segment open until
/// the channel moves on; [`Self::abort`] also closes it for readers).
pub struct SegmentWriter {
    post: PendingPost,
    shared: Arc<PubShared>,
    written: u64,
    /// The POST's result, once it has ended.
    outcome: Option<Result<PostOk>>,
    /// The error this segment failed with (counted once).
    failed: Option<TrickleClientError>,
}

enum Sent {
    Taken,
    PostEnded,
    Stalled,
}

impl SegmentWriter {
    pub fn seq(&self) -> i64 {
        self.post.seq
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn fail(&mut self, e: TrickleClientError) -> TrickleClientError {
        if self.failed.is_none() {
            self.shared.record(&Err(e.clone()));
            self.failed = Some(e.clone());
        }
        e
    }

    /// Waits (bounded) for the POST to end; the error its end means for a
    /// segment still being written.
    async fn ended_early(&mut self) -> TrickleClientError {
        if self.outcome.is_none() {
            let after = self.shared.config.response_timeout;
            match tokio::time::timeout(after, &mut self.post.task).await {
                Ok(r) => self.outcome = Some(joined(r, &self.post.url)),
                Err(_) => {
                    return TrickleClientError::Timeout {
                        url: self.post.url.clone(),
                        after,
                    }
                }
            }
        }
        match self.outcome.as_ref().expect("outcome set") {
            Err(e) => e.clone(),
            Ok(ok) if ok.closed => self.shared.closed(),
            Ok(_) => TrickleClientError::SegmentClosed {
                url: self.shared.url.clone(),
                seq: self.post.seq,
            },
        }
    }

    /// Sends `bytes` as the segment's next part. Waits while the transport
    /// is behind, at most the write timeout.
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(e) = self.shared.terminal() {
            return Err(self.fail(e));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len() as u64;
        let after = self.shared.config.write_timeout;
        let sent = match (&self.post.tx, self.outcome.is_none()) {
            (Some(tx), true) => {
                tokio::select! {
                    biased;
                    r = &mut self.post.task => {
                        self.outcome = Some(joined(r, &self.post.url));
                        Sent::PostEnded
                    }
                    r = tokio::time::timeout(after, tx.send(BodyMsg::Data(bytes))) => match r {
                        Ok(Ok(())) => Sent::Taken,
                        Ok(Err(_)) => Sent::PostEnded,
                        Err(_) => Sent::Stalled,
                    },
                }
            }
            _ => Sent::PostEnded,
        };
        match sent {
            Sent::Taken => {
                self.written += len;
                Ok(())
            }
            Sent::Stalled => {
                let e = TrickleClientError::Timeout {
                    url: self.post.url.clone(),
                    after,
                };
                Err(self.fail(e))
            }
            Sent::PostEnded => {
                let e = self.ended_early().await;
                Err(self.fail(e))
            }
        }
    }

    /// Ends the segment and waits for the server's answer; returns the
    /// sequence number it stored the segment at (`Lp-Trickle-Seq`).
    pub async fn finish(mut self) -> Result<i64> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let result = self.finish_inner().await;
        self.shared.record(&result);
        result
    }

    async fn finish_inner(&mut self) -> Result<i64> {
        let url = self.post.url.clone();
        if let (Some(tx), true) = (self.post.tx.take(), self.outcome.is_none()) {
            let after = self.shared.config.write_timeout;
            tokio::select! {
                biased;
                r = &mut self.post.task => self.outcome = Some(joined(r, &url)),
                r = tokio::time::timeout(after, tx.send(BodyMsg::End)) => {
                    if r.is_err() {
                        return Err(TrickleClientError::Timeout { url, after });
                    }
                    // Sent, or the POST has ended: its answer tells.
                }
            }
        }
        if self.outcome.is_none() {
            let after = self.shared.config.response_timeout;
            match tokio::time::timeout(after, &mut self.post.task).await {
                Ok(r) => self.outcome = Some(joined(r, &url)),
                Err(_) => return Err(TrickleClientError::Timeout { url, after }),
            }
        }
        match self.outcome.as_ref().expect("outcome set") {
            Err(e) => Err(e.clone()),
            Ok(ok) if !ok.body_ended && self.written > 0 => Err(if ok.closed {
                self.shared.closed()
            } else {
                TrickleClientError::SegmentClosed {
                    url: self.shared.url.clone(),
                    seq: self.post.seq,
                }
            }),
            Ok(ok) if ok.closed && self.written == 0 => Err(self.shared.closed()),
            Ok(ok) => Ok(ok.seq.unwrap_or(self.post.seq)),
        }
    }

    /// Gives the segment up: aborts its upload and closes it on the server
    /// (`DELETE {url}/{seq}`, go-livepeer's `pendingPost.Close`) so its
    /// readers stop waiting. Best effort.
    pub async fn abort(self) {
        let shared = self.shared.clone();
        let url = self.post.url.clone();
        drop(self);
        let sent = shared
            .http
            .delete(&url)
            .timeout(shared.config.response_timeout)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(%url, error = %describe(&e), "trickle segment DELETE failed");
        }
    }
}

// ---------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Retries of a segment's GET (connection errors, 408/429/5xx; 470s
    /// count too).
    pub retry: RetryPolicy,
    /// A GET with no response headers after this long is sent again
    /// (go-livepeer: 20 s).
    pub repoll_interval: Duration,
    /// The pause before asking again for a segment past the live edge
    /// (470 with `Lp-Trickle-Latest` < seq; SDK: 0.25 s).
    pub ahead_wait: Duration,
    /// Largest segment read (SDK: 10 MiB; the server's default cap too).
    pub max_segment_bytes: usize,
    /// Longest silence inside a segment's body; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// Send the next segment's GET as soon as a segment arrives.
    pub preconnect: bool,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            retry: RetryPolicy::default(),
            repoll_interval: Duration::from_secs(20),
            ahead_wait: Duration::from_millis(250),
            max_segment_bytes: 10 << 20,
            idle_timeout: Some(Duration::from_secs(60)),
            preconnect: true,
        }
    }
}

/// A jump in the sequence: `expected` was wanted, `got` was read (the
/// segments in between were lost to the server's retention; a `got` below
/// `expected` means the channel started over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub expected: i64,
    pub got: i64,
}

impl Gap {
    /// Segments skipped (negative when the sequence went back).
    pub fn missed(&self) -> i64 {
        self.got - self.expected
    }
}

struct SubShared {
    http: reqwest::Client,
    url: String,
    config: SubscriberConfig,
}

enum Opened {
    Segment(reqwest::Response),
    End,
}

/// GETs segment `seq`, following 470s and retrying failures.
async fn open_segment(shared: Arc<SubShared>, mut seq: i64) -> Result<Opened> {
    let config = &shared.config;
    let retry = config.retry;
    let mut failures = 0;
    loop {
        let url = format!("{}/{seq}", shared.url);
        let request = shared.http.get(&url).send();
        let sent = match tokio::time::timeout(config.repoll_interval, request).await {
            Ok(sent) => sent,
            Err(_) => {
                tracing::debug!(%url, "trickle GET still waiting; re-issuing it");
                continue;
            }
        };
        let (last, pause) = match sent {
            Err(e) => (describe(&e), None),
            Ok(resp) => {
                let status = resp.status().as_u16();
                if is_closed(resp.headers()) || status == 404 {
                    tracing::debug!(%url, status, "trickle channel ended");
                    return Ok(Opened::End);
                }
                match status {
                    200 => return Ok(Opened::Segment(resp)),
                    470 => match header_i64(resp.headers(), headers::LATEST) {
                        Some(latest) if latest >= seq => {
                            tracing::warn!(%url, latest, "trickle segment gone; jumping to the latest");
                            seq = latest;
                            (
                                format!("HTTP 470: segment gone, latest {latest}"),
                                Some(Duration::ZERO),
                            )
                        }
                        Some(latest) => (
                            format!("HTTP 470: ahead of the live edge (latest {latest})"),
                            Some(config.ahead_wait),
                        ),
                        None => (format!("HTTP 470 without {}", headers::LATEST), None),
                    },
                    s if retryable(s) => (format!("HTTP {s}: {}", error_body(resp).await), None),
                    s => {
                        return Err(TrickleClientError::Status {
                            url,
                            status: s,
                            body: error_body(resp).await,
                        })
                    }
                }
            }
        };
        failures += 1;
        if failures >= retry.attempts() {
            return Err(TrickleClientError::Unavailable {
                url,
                attempts: failures,
                last,
            });
        }
        let pause = pause.unwrap_or_else(|| retry.backoff(failures));
        if !pause.is_zero() {
            tracing::debug!(%url, attempt = failures, error = %last, ?pause, "trickle GET retry");
            tokio::time::sleep(pause).await;
        }
    }
}

/// Reads the segments of one trickle channel. See the module docs.
pub struct TrickleSubscriber {
    shared: Arc<SubShared>,
    next_seq: i64,
    /// The sequence number the next segment should have; `None` when
    /// starting at the live edge (-1/-2).
    expected: Option<i64>,
    /// The GET of `.0`, in flight.
    pending: Option<(i64, JoinHandle<Result<Opened>>)>,
    ended: bool,
    gaps: u64,
}

impl Drop for TrickleSubscriber {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.pending {
            task.abort();
        }
    }
}

impl TrickleSubscriber {
    /// A subscriber for the channel at `url`, from `start_seq`: `-1` = the
    /// next segment written, `-2` = the one being written, `n` = segment `n`.
    pub fn new(http: reqwest::Client, url: &str, start_seq: i64) -> TrickleSubscriber {
        TrickleSubscriber::with_config(http, url, start_seq, SubscriberConfig::default())
    }

    pub fn with_config(
        http: reqwest::Client,
        url: &str,
        start_seq: i64,
        config: SubscriberConfig,
    ) -> TrickleSubscriber {
        let start_seq = start_seq.max(-2);
        TrickleSubscriber {
            shared: Arc::new(SubShared {
                http,
                url: url.trim_end_matches('/').to_string(),
                config,
            }),
            next_seq: start_seq,
            expected: (start_seq >= 0).then_some(start_seq),
            pending: None,
            ended: false,
            gaps: 0,
        }
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The sequence number asked for next (-1/-2 before the first segment).
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Jumps so far (each also on its segment, [`SegmentReader::gap`]).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Whether the channel has ended (404 or `Lp-Trickle-Closed`).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next segment, once its first bytes (or its end) are at the
    /// server; `None` once the channel has ended. Cancel safe: a call
    /// dropped midway leaves its GET for the next call.
    pub async fn next_segment(&mut self) -> Result<Option<SegmentReader>> {
        if self.ended {
            return Ok(None);
        }
        let seq = self.next_seq;
        if !matches!(&self.pending, Some((s, _)) if *s == seq) {
            if let Some((_, task)) = self.pending.take() {
                task.abort();
            }
            let task = tokio::spawn(open_segment(self.shared.clone(), seq));
            self.pending = Some((seq, task));
        }
        let (_, task) = self.pending.as_mut().expect("pending GET");
        let joined = joined(task.await, &self.shared.url);
        self.pending = None;
        let resp = match joined? {
            Opened::End => {
                self.ended = true;
                return Ok(None);
            }
            Opened::Segment(resp) => resp,
        };
        let got = header_i64(resp.headers(), headers::SEQ).filter(|s| *s >= 0);
        let seg_seq = got.unwrap_or(seq);
        let gap = match (self.expected, got) {
            (Some(expected), Some(got)) if got != expected => Some(Gap { expected, got }),
            _ => None,
        };
        if let Some(gap) = gap {
            self.gaps += 1;
            // A publisher decides the numbering: gaps come as often as it
            // likes, the log line not.
            static GAPS: crate::log_limit::SharedRateLimitedLog =
                crate::log_limit::SharedRateLimitedLog::new(crate::log_limit::REFUSAL_LOG_INTERVAL);
            if let Some(suppressed) = GAPS.check() {
                tracing::warn!(
                    url = %self.shared.url,
                    expected = gap.expected,
                    got = gap.got,
                    suppressed,
                    "trickle subscriber skipped segments (suppressed: like lines since the last)"
                );
            }
        }
        if seg_seq >= 0 {
            self.next_seq = seg_seq + 1;
            self.expected = Some(seg_seq + 1);
        }
        if self.shared.config.preconnect && self.next_seq >= 0 {
            let task = tokio::spawn(open_segment(self.shared.clone(), self.next_seq));
            self.pending = Some((self.next_seq, task));
        }
        Ok(Some(SegmentReader::new(
            resp,
            format!("{}/{seg_seq}", self.shared.url),
            seg_seq,
            gap,
            &self.shared.config,
        )))
    }
}

/// One segment being read: its body's chunks as they arrive.
pub struct SegmentReader {
    resp: reqwest::Response,
    url: String,
    seq: i64,
    gap: Option<Gap>,
    latest: Option<i64>,
    content_type: Option<String>,
    max_bytes: usize,
    idle_timeout: Option<Duration>,
    read: usize,
    done: bool,
    failed: Option<TrickleClientError>,
}

impl SegmentReader {
    fn new(
        resp: reqwest::Response,
        url: String,
        seq: i64,
        gap: Option<Gap>,
        config: &SubscriberConfig,
    ) -> SegmentReader {
        let headers = resp.headers();
        let latest = header_i64(headers, headers::LATEST);
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut reader = SegmentReader {
            url,
            seq,
            gap,
            latest,
            content_type,
            max_bytes: config.max_segment_bytes,
            idle_timeout: config.idle_timeout,
            read: 0,
            done: false,
            failed: None,
            resp,
        };
        if reader
            .resp
            .content_length()
            .is_some_and(|n| n > reader.max_bytes as u64)
        {
            reader.failed = Some(reader.too_large(reader.max_bytes));
        }
        reader
    }

    /// The segment's sequence number (`Lp-Trickle-Seq`).
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Set when this segment is not the one expected: segments were skipped.
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// `Lp-Trickle-Latest` when the server sent it: the channel's next write
    /// when this segment was not the newest (the reader is behind).
    pub fn latest(&self) -> Option<i64> {
        self.latest
    }

    /// The channel's MIME type.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    pub fn bytes_read(&self) -> usize {
        self.read
    }

    fn too_large(&self, limit: usize) -> TrickleClientError {
        TrickleClientError::TooLarge {
            url: self.url.clone(),
            seq: self.seq,
            limit,
        }
    }

    /// The next chunk of the body as it arrives; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.done {
            return Ok(None);
        }
        let next = match self.idle_timeout {
            Some(after) => match tokio::time::timeout(after, self.resp.chunk()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = TrickleClientError::Timeout {
                        url: self.url.clone(),
                        after,
                    };
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            },
            None => self.resp.chunk().await,
        };
        match next {
            Ok(Some(bytes)) => {
                self.read += bytes.len();
                if self.read > self.max_bytes {
                    let e = self.too_large(self.max_bytes);
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                Ok(Some(bytes))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                let e = TrickleClientError::Interrupted {
                    url: self.url.clone(),
                    message: describe(&e),
                };
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The rest of the body, at most `max_bytes` (and the reader's limit).
    pub async fn read_all(&mut self, max_bytes: usize) -> Result<Bytes> {
        let limit = max_bytes.min(self.max_bytes);
        let mut all = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if all.len() + chunk.len() > limit {
                let e = self.too_large(limit);
                self.failed = Some(e.clone());
                return Err(e);
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let pauses: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(200), Duration::from_secs(1));
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..p
            }
            .attempts(),
            1
        );
    }

    #[test]
    fn headers_and_statuses() {
        let mut h = HeaderMap::new();
        h.insert(headers::SEQ, "41".parse().unwrap());
        h.insert(headers::LATEST, " 7 ".parse().unwrap());
        h.insert("x", "nope".parse().unwrap());
        assert_eq!(header_i64(&h, headers::SEQ), Some(41));
        assert_eq!(header_i64(&h, "lp-trickle-latest"), Some(7));
        assert_eq!(header_i64(&h, "x"), None);
        assert_eq!(header_i64(&h, "missing"), None);
        assert!(!is_closed(&h));
        h.insert(headers::CLOSED, "terminated".parse().unwrap());
        assert!(is_closed(&h));
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(retryable(s), "{s}");
        }
        for s in [200, 400, 404, 413, 470] {
            assert!(!retryable(s), "{s}");
        }
    }

    #[test]
    fn terminal_errors_and_gaps() {
        let url = "u".to_string();
        assert!(TrickleClientError::ChannelNotFound { url: url.clone() }.is_terminal());
        assert!(TrickleClientError::ChannelClosed { url: url.clone() }.is_terminal());
        let last = TrickleClientError::Timeout {
            url: url.clone(),
            after: Duration::from_secs(1),
        };
        assert!(!last.is_terminal());
        let many = TrickleClientError::TooManyFailures {
            url: url.clone(),
            failures: 3,
            last: Box::new(last),
        };
        assert!(many.is_terminal());
        assert!(many.to_string().contains("3 failed segments in a row"));
        assert_eq!(
            Gap {
                expected: 2,
                got: 9
            }
            .missed(),
            7
        );
        assert_eq!(
            Gap {
                expected: 9,
                got: 0
            }
            .missed(),
            -9
        );
    }

    #[test]
    fn describe_includes_the_causes() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(describe(&e), "request failed: refused");
    }

    fn source() -> (mpsc::Sender<BodyMsg>, Arc<BodySource>) {
        let (tx, rx) = mpsc::channel(4);
        let src = Arc::new(BodySource {
            rx: Mutex::new(rx),
            consumed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        (tx, src)
    }

    fn stream(src: &Arc<BodySource>) -> BodyStream {
        BodyStream {
            source: src.clone(),
            done: false,
        }
    }

    #[tokio::test]
    async fn a_body_ends_only_on_its_explicit_end() {
        let (tx, src) = source();
        tx.send(BodyMsg::Data(Bytes::from_static(b"ab")))
            .await
            .unwrap();
        tx.send(BodyMsg::End).await.unwrap();
        let mut s = stream(&src);
        assert_eq!(s.next().await.unwrap().unwrap(), "ab");
        assert!(src.consumed.load(Ordering::SeqCst));
        assert!(s.next().await.is_none());
        assert!(src.ended.load(Ordering::SeqCst));
        // A retry's body after the end went out is empty.
        assert!(stream(&src).next().await.is_none());

        // A writer gone without its end: the body fails, once.
        let (tx, src) = source();
        drop(tx);
        let mut s = stream(&src);
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
        assert!(!src.consumed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_retry_takes_over_the_queue_of_an_attempt_that_took_nothing() {
        let (tx, src) = source();
        let first = stream(&src);
        drop(first); // the attempt failed before its body was read
        tx.send(BodyMsg::Data(Bytes::from_static(b"x")))
            .await
            .unwrap();
        drop(tx);
        let mut retry = stream(&src);
        assert_eq!(retry.next().await.unwrap().unwrap(), "x");
    }
}
