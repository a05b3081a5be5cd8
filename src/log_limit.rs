//! Rate-limited logging for errors that can repeat without bound, and the
//! accept loops that use it.
//!
//! A listener at the file-descriptor limit fails every `accept` at once; a
//! loop that logs each failure (or none, and retries at once) fills the disk
//! or burns a core. [`RateLimitedLog`] logs the first occurrence and then at
//! most one line per interval, saying how many were suppressed in between.
//! [`accept`], [`Listener`] (for `axum::serve`) and [`incoming`] (for
//! tonic's `serve_with_incoming`) retry accept failures after a short pause
//! and log them through it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{info, warn};

/// Logs the first occurrence of a repeating event, then at most once per
/// `interval`, counting what it suppressed in between.
///
/// Times are `tokio::time` instants; [`check_at`](Self::check_at) takes one
/// explicitly (tests use it as a fake clock).
#[derive(Debug, Clone)]
pub struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// One occurrence now. `Some(n)`: log it, saying that `n` more like it
    /// were suppressed since the last line; `None`: stay quiet.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at a given time.
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The event stopped repeating: the number suppressed since the last line
    /// logged (to report once), and the next occurrence is logged at once.
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.suppressed)
    }
}

/// At most one line per call site per this long for refusals that anyone
/// can cause at will (bad payments, unfunded senders).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A [`RateLimitedLog`] shared by every request reaching one call site
/// (kept in a `static` there): what strangers can repeat at will is logged
/// once, then at most once per interval with the count suppressed.
#[derive(Debug)]
pub struct SharedRateLimitedLog(std::sync::Mutex<RateLimitedLog>);

impl SharedRateLimitedLog {
    pub const fn new(interval: Duration) -> Self {
        Self(std::sync::Mutex::new(RateLimitedLog::new(interval)))
    }

    /// As [`RateLimitedLog::check`].
    pub fn check(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check()
    }
}

/// `value` for a log line or an error message that a refused request
/// supplied: its first `max` characters (quoted by the caller as it likes),
/// with `…` when it was longer, so that a stranger never sets a line's size.
pub fn clip(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(value),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &value[..end])),
    }
}

/// At most one accept-failure line per listener per this long.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed accept, so a listener out of descriptors does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept failures of one listener: rate-limited logging and a pause after each.
#[derive(Debug)]
pub struct AcceptErrors {
    name: &'static str,
    log: RateLimitedLog,
    failing: bool,
}

impl AcceptErrors {
    /// `name` says which listener in the log lines.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            log: RateLimitedLog::new(ACCEPT_LOG_INTERVAL),
            failing: false,
        }
    }

    /// A failed accept: logged when the limit allows, then a short pause.
    /// Errors about one connection (reset or aborted before it was accepted)
    /// are not the listener's: they are neither logged nor waited on.
    pub async fn failed(&mut self, error: &io::Error) {
        if is_connection_error(error) {
            return;
        }
        self.failing = true;
        if let Some(suppressed) = self.log.check() {
            if suppressed == 0 {
                warn!(listener = self.name, error = %error, "accept failed; retrying");
            } else {
                warn!(
                    listener = self.name,
                    error = %error,
                    suppressed,
                    "accept failed; retrying ({suppressed} more like this suppressed)"
                );
            }
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    /// A connection was accepted: after failures, one line saying so.
    pub fn succeeded(&mut self) {
        if std::mem::take(&mut self.failing) {
            let suppressed = self.log.reset();
            info!(
                listener = self.name,
                suppressed, "accepting again ({suppressed} more failures suppressed)"
            );
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The next connection on `listener`, retrying failures through `errors`.
pub async fn accept(listener: &TcpListener, errors: &mut AcceptErrors) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                errors.succeeded();
                return conn;
            }
            Err(e) => errors.failed(&e).await,
        }
    }
}

/// A TCP listener for `axum::serve` whose accept failures are paused and
/// logged through [`AcceptErrors`], with `TCP_NODELAY` on each connection.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    errors: AcceptErrors,
}

impl Listener {
    pub const fn new(inner: TcpListener, name: &'static str) -> Self {
        Self {
            inner,
            errors: AcceptErrors::new(name),
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (tcp, peer) = accept(&self.inner, &mut self.errors).await;
        let _ = tcp.set_nodelay(true);
        (tcp, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The connections on `listener` as a stream for tonic's
/// `serve_with_incoming`. It never yields an error: tonic retries those at
/// once and silently, which spins a core while descriptors run out.
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
) -> impl futures::Stream<Item = io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold(
        (listener, AcceptErrors::new(name)),
        |(listener, mut errors)| async move {
            let (tcp, _) = accept(&listener, &mut errors).await;
            let _ = tcp.set_nodelay(true);
            Some((Ok(tcp), (listener, errors)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_once_per_interval_with_the_suppressed_count() {
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.check_at(at(0)), Some(0), "the first is logged");
        // A tight loop of failures: 1000 in one second, none logged.
        for ms in 1..=1000 {
            assert_eq!(log.check_at(at(ms)), None);
        }
        assert_eq!(log.check_at(at(9_999)), None);
        assert_eq!(log.check_at(at(10_000)), Some(1001), "with what it hid");
        assert_eq!(log.check_at(at(10_001)), None);
        assert_eq!(log.check_at(at(25_000)), Some(1));
        // Quiet after a line; a reset hands back what was pending.
        assert_eq!(log.check_at(at(25_001)), None);
        assert_eq!(log.reset(), 1);
        assert_eq!(log.check_at(at(25_002)), Some(0), "logged after a reset");
    }

    #[test]
    fn clip_keeps_short_values_and_cuts_long_ones_on_characters() {
        assert_eq!(clip("model", 64), "model");
        assert_eq!(clip("", 3), "");
        assert_eq!(clip("abcd", 4), "abcd");
        assert_eq!(clip("abcde", 4), "abcd…");
        assert_eq!(clip("ééééé", 2), "éé…");
        assert_eq!(clip(&"x".repeat(1 << 20), 64).len(), 64 + "…".len());
    }

    #[test]
    fn a_minute_of_failures_every_backoff_logs_seven_lines() {
        let mut log = RateLimitedLog::new(ACCEPT_LOG_INTERVAL);
        let t0 = Instant::now();
        let (mut lines, mut reported, mut total) = (0, 0, 0);
        let mut elapsed = Duration::ZERO;
        while elapsed <= Duration::from_secs(60) {
            total += 1;
            if let Some(n) = log.check_at(t0 + elapsed) {
                lines += 1;
                reported += n + 1;
            }
            elapsed += ACCEPT_BACKOFF;
        }
        assert_eq!(total, 1201);
        assert_eq!(lines, 7, "at 0, 10, .. 60 s");
        assert_eq!(reported + log.reset(), total, "every failure is counted");
    }

    #[tokio::test]
    async fn accept_failures_pause_and_connection_errors_do_not() {
        let mut errors = AcceptErrors::new("test");
        let start = std::time::Instant::now();
        errors
            .failed(&io::Error::from(io::ErrorKind::ConnectionAborted))
            .await;
        assert!(start.elapsed() < ACCEPT_BACKOFF);
        assert!(!errors.failing);
        let emfile = io::Error::from_raw_os_error(24);
        for _ in 0..4 {
            errors.failed(&emfile).await;
        }
        assert!(start.elapsed() >= ACCEPT_BACKOFF * 4, "no busy loop");
        assert!(errors.failing);
        assert_eq!(errors.log.suppressed, 3, "one line for four failures");
        errors.succeeded();
        assert!(!errors.failing);
        assert_eq!(errors.log.check(), Some(0), "a new failure is logged");
    }

    #[tokio::test]
    async fn incoming_and_listener_yield_connections() {
        use futures::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = Box::pin(incoming(listener, "test"));
        let _client = TcpStream::connect(addr).await.unwrap();
        let tcp = stream.next().await.unwrap().unwrap();
        assert!(tcp.nodelay().unwrap());

        let mut listener = Listener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), "t");
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_, peer) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(peer, client.local_addr().unwrap());
    }
}
