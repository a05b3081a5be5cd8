//! The connection-serving loop shared by the HTTP listeners that face the
//! network: the shim's HTTPS listener and the worker's ai-runner API.
//!
//! Over `axum::serve` it adds what a listener open to anyone needs: a cap on
//! connections served at once (a flood waits in the kernel's backlog instead
//! of exhausting descriptors and memory), a handshake deadline (TLS), a
//! deadline for a request's header, which hyper also applies to a kept-alive
//! connection waiting for its next request, a deadline for a connection's
//! first byte (hyper's protocol detection has none), reaped connection
//! tasks, and accept failures paced by [`crate::log_limit`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How often an HTTP/2 peer is pinged, and how long its answer may take.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A handshake (see [`serve`]'s `handshake`) not done by then is dropped.
    pub handshake_timeout: Duration,
    /// A request header (the first, or the next on a kept-alive connection)
    /// not received by then drops the connection; so does a connection
    /// silent that long after it opened.
    pub header_read_timeout: Duration,
    /// HTTP/2 as well as HTTP/1 (told apart by the connection's first bytes).
    pub http2: bool,
    /// After shutdown, how long connections have to finish the requests
    /// they are serving before they are dropped.
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets the connections finish their requests (at most
/// `limits.drain_timeout`) and drops those left. `handshake` turns each
/// accepted TCP connection into the stream served (a TLS handshake, say);
/// `None` drops the connection.
pub async fn serve<H, F, Io>(
    listener: &TcpListener,
    name: &'static str,
    limits: Limits,
    app: axum::Router,
    handshake: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connections = Arc::new(Mutex::new(JoinSet::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accept = {
        let connections = Arc::clone(&connections);
        async move {
            let mut errors = crate::log_limit::AcceptErrors::new(name);
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = crate::log_limit::accept(listener, &mut errors).await;
                let _ = tcp.set_nodelay(true);
                let (handshake, app, stop) = (handshake.clone(), app.clone(), stop_rx.clone());
                let mut set = connections.lock().expect("connection set");
                // Finished connections are reaped as new ones come.
                while set.try_join_next().is_some() {}
                set.spawn(async move {
                    let _permit = permit;
                    let Ok(Some(io)) =
                        tokio::time::timeout(limits.handshake_timeout, handshake(tcp)).await
                    else {
                        return;
                    };
                    connection(io, app, limits, stop, peer).await;
                });
            }
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    let _ = stop_tx.send(true);
    let mut set = std::mem::take(&mut *connections.lock().expect("connection set"));
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        set.abort_all();
    }
}

/// Serves one connection; on `stop`, finishes the request in progress and
/// closes.
async fn connection<Io>(
    io: Io,
    app: axum::Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let heard = Arc::new(AtomicBool::new(false));
    let io = Heard {
        inner: io,
        heard: Arc::clone(&heard),
    };
    // Handlers may ask who is calling (results must come from the host a
    // remote transcoder registered from).
    let app = tower::util::MapRequest::new(
        app,
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    if limits.http2 {
        // A peer gone without a word (a remote transcoder's host lost its
        // network) is noticed, and its long-lived streams end.
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    } else {
        builder = builder.http1_only();
    }
    // Upgrades: WebSockets proxied to Live Runners.
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    // Telling HTTP/1 from HTTP/2 waits for the first bytes with no deadline.
    let silent = async {
        tokio::time::sleep(limits.header_read_timeout).await;
        if heard.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = silent => return,
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// A stream that notes when its first byte arrives.
struct Heard<Io> {
    inner: Io,
    heard: Arc<AtomicBool>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Heard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Heard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a listener buffers of whole request bodies (segments, AI requests)
/// at once, and how long a body may take to arrive. Credentials are free
/// to anyone (a fresh key and an auth token), so without a budget a crowd
/// of valid-looking uploads could make the process hold connections ×
/// body limit bytes; without a deadline one slow upload holds its share
/// forever.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// One permit per [`BODY_UNIT`] bytes.
    units: Arc<tokio::sync::Semaphore>,
    total_units: usize,
    read_timeout: Duration,
}

/// The budget's granularity.
const BODY_UNIT: usize = 64 << 10;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefused {
    /// The budget is spent by bodies in flight: 503, retry shortly.
    #[error("too many request bodies in flight; retry shortly")]
    Busy,
    /// Not all there by the read deadline: 408.
    #[error("request body not received in time")]
    TooSlow,
}

impl BodyRefused {
    pub fn status(self) -> axum::http::StatusCode {
        match self {
            BodyRefused::Busy => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            BodyRefused::TooSlow => axum::http::StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl BodyBudget {
    /// At most `bytes` buffered at once; each body read within `read_timeout`.
    pub fn new(bytes: usize, read_timeout: Duration) -> Self {
        let units = (bytes / BODY_UNIT).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(tokio::sync::Semaphore::new(units)),
            total_units: units,
            read_timeout,
        }
    }

    /// Room for the body `headers` announce (at most `max`; `max` when its
    /// length is not announced), held until the permit drops. Refused at
    /// once when the budget is spent: waiting would let slow uploads queue
    /// everyone else.
    pub fn reserve(
        &self,
        headers: &axum::http::HeaderMap,
        max: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, BodyRefused> {
        let announced = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(max)
            .min(max);
        let total = u32::try_from(self.total_units).unwrap_or(u32::MAX);
        let units = u32::try_from(announced.div_ceil(BODY_UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(total);
        Arc::clone(&self.units)
            .try_acquire_many_owned(units)
            .map_err(|_| BodyRefused::Busy)
    }

    /// Runs `read` (a body being read) within the read deadline.
    pub async fn within_deadline<T>(
        &self,
        read: impl Future<Output = T>,
    ) -> Result<T, BodyRefused> {
        tokio::time::timeout(self.read_timeout, read)
            .await
            .map_err(|_| BodyRefused::TooSlow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bodies_are_budgeted_and_timed() {
        let budget = BodyBudget::new(4 * BODY_UNIT, Duration::from_millis(50));
        let announce = |len: usize| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::CONTENT_LENGTH, len.into());
            h
        };
        let max = 3 * BODY_UNIT;
        // A body past the limit only counts up to it (the limit refuses it).
        let big = budget.reserve(&announce(100 * BODY_UNIT), max).unwrap();
        let small = budget.reserve(&announce(10), max).unwrap();
        assert_eq!(
            budget.reserve(&announce(10), max).unwrap_err(),
            BodyRefused::Busy
        );
        // An unannounced length counts as the limit.
        drop(small);
        assert_eq!(
            budget
                .reserve(&axum::http::HeaderMap::new(), max)
                .unwrap_err(),
            BodyRefused::Busy
        );
        drop(big);
        let _unannounced = budget.reserve(&axum::http::HeaderMap::new(), max).unwrap();
        assert_eq!(
            budget.within_deadline(std::future::pending::<()>()).await,
            Err(BodyRefused::TooSlow)
        );
        assert_eq!(budget.within_deadline(async { 7 }).await, Ok(7));
    }

    const LIMITS: Limits = Limits {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_millis(300),
        http2: false,
        drain_timeout: Duration::from_secs(1),
    };

    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            serve(
                &listener,
                "test",
                LIMITS,
                app,
                |tcp| async { Some(tcp) },
                async {
                    let _ = rx.await;
                },
            )
            .await;
        });
        (addr, tx)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        reply
    }

    /// Reads until the server closes; how long that took.
    async fn closed_after(tcp: &mut TcpStream) -> Duration {
        let started = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
            .await
            .expect("connection closed");
        started.elapsed()
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_and_the_cap_holds() {
        let (addr, _stop) = server().await;
        // Silent from the start: dropped after the header deadline.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A header begun and never finished: likewise.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // Both slots are taken: a third connection waits for one.
        let waiting = tokio::spawn(get(addr));
        assert!(closed_after(&mut silent).await < Duration::from_secs(2));
        assert!(closed_after(&mut partial).await < Duration::from_secs(2));
        assert!(waiting.await.unwrap().ends_with("ok"));
        // Kept alive after a request, then idle: closed too.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        assert!(closed_after(&mut idle).await < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, stop) = server().await;
        assert!(get(addr).await.ends_with("ok"));
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
