//! The trickle clients (`lpworker::trickle::client`) against our
//! `TrickleServer` on loopback: segments read while written, the next
//! segment's requests opened ahead, 470 jumps, the channel's end, a server
//! that goes away, the reader's size limit, long polls re-issued, and the
//! official SDK's subscriber and publisher on the other end.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use lpworker::trickle::{
    Gap, PublisherConfig, RetryPolicy, SubscriberConfig, TrickleClientError, TrickleConfig,
    TricklePublisher, TrickleServer, TrickleSubscriber, BASE_PATH,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

/// A request as it reached the server (before its body).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    reset: bool,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn log_requests(State(log): State<Log>, request: Request, next: Next) -> Response {
    log.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        reset: request.headers().contains_key("lp-trickle-reset"),
        at: Instant::now(),
    });
    next.run(request).await
}

/// A trickle server on a loopback port that logs requests and can be
/// killed (listener and every open connection).
struct TestServer {
    server: Arc<TrickleServer>,
    base: String,
    log: Log,
    accept: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let server = TrickleServer::new(TrickleConfig::default());
        let log: Log = Arc::default();
        let app = axum::Router::new().nest(BASE_PATH, server.router()).layer(
            axum::middleware::from_fn_with_state(log.clone(), log_requests),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let accept = {
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let app = app.clone();
                    connections.lock().unwrap().spawn(async move {
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                    });
                }
            })
        };
        TestServer {
            server,
            base: format!("http://{addr}{BASE_PATH}"),
            log,
            accept,
            connections,
        }
    }

    fn channel(&self, name: &str) -> String {
        self.server.create_channel(name, "video/MP2T").unwrap();
        format!("{}/{name}", self.base)
    }

    /// When requests `METHOD {BASE_PATH}/{path}` arrived.
    fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        let want = format!("{BASE_PATH}/{path}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path == want)
            .cloned()
            .collect()
    }

    /// Stops accepting, then drops every connection. The accept loop is
    /// waited for first: a connection it accepted while being aborted (a
    /// subscriber's preconnected GET) would otherwise outlive the kill and
    /// hold a request open, unanswered, for as long as the client waits.
    async fn kill(&mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.connections.lock().unwrap().abort_all();
    }
}

fn http() -> reqwest::Client {
    lpworker::trickle::client::http_client_builder()
        .build()
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_are_read_while_they_are_written() {
    let ts = TestServer::start().await;
    let url = ts.channel("rt");
    // The subscriber waits for the next segment before anything is written
    // and reports each chunk as it gets it.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Bytes)>();
    let reader = {
        let (http, url) = (http(), url.clone());
        tokio::spawn(async move {
            let mut sub = TrickleSubscriber::new(http, &url, -1);
            let mut segments = Vec::new();
            while let Some(mut seg) = sub.next_segment().await.unwrap() {
                assert_eq!(seg.content_type(), Some("video/MP2T"));
                assert_eq!(seg.gap(), None);
                let mut all = Vec::new();
                while let Some(chunk) = seg.chunk().await.unwrap() {
                    all.extend_from_slice(&chunk);
                    got_tx.send((seg.seq(), chunk)).unwrap();
                }
                segments.push((seg.seq(), all));
            }
            (segments, sub.gaps())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut publisher = TricklePublisher::new(http(), &url);
    assert_eq!(publisher.start(0).await.unwrap(), 0);
    for seq in 0..4i64 {
        let mut w = publisher.next_segment().await.unwrap();
        assert_eq!(w.seq(), seq);
        for part in 0..3 {
            let bytes = Bytes::from(format!("seg{seq}-part{part};"));
            w.write(bytes.clone()).await.unwrap();
            // The reader has this part before the next one is even written.
            let mut got = Vec::new();
            while got.len() < bytes.len() {
                let (s, chunk) = within("a part read while written", got_rx.recv())
                    .await
                    .unwrap();
                assert_eq!(s, seq);
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, bytes);
        }
        assert_eq!(w.finish().await.unwrap(), seq);
    }
    publisher.close().await.unwrap();
    let (segments, gaps) = within("the reader sees the end", reader).await.unwrap();
    assert_eq!(gaps, 0);
    let want: Vec<(i64, Vec<u8>)> = (0..4)
        .map(|s| {
            let text: String = (0..3).map(|p| format!("seg{s}-part{p};")).collect();
            (s, text.into_bytes())
        })
        .collect();
    assert_eq!(segments, want);
    assert!(!ts.server.has_channel("rt"), "close deleted the channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_segments_requests_are_open_before_it_starts() {
    let ts = TestServer::start().await;
    let url = ts.channel("pre");
    let mut sub = TrickleSubscriber::new(http(), &url, 0);
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();

    let mut w0 = publisher.next_segment().await.unwrap();
    w0.write(Bytes::from_static(b"zero")).await.unwrap();
    let mut r0 = within("segment 0", sub.next_segment())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r0.seq(), 0);
    assert_eq!(&r0.chunk().await.unwrap().unwrap()[..], b"zero");
    // Segment 0 is still open, and both sides already wait on segment 1.
    within("the requests of segment 1", async {
        while ts.seen("POST", "pre/1").is_empty() || ts.seen("GET", "pre/1").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let post1 = ts.seen("POST", "pre/1");
    let get1 = ts.seen("GET", "pre/1");
    assert_eq!(post1.len(), 1, "the POST of segment 1 is preconnected");
    assert_eq!(get1.len(), 1, "the GET of segment 1 is preconnected");
    assert_eq!(w0.finish().await.unwrap(), 0);
    assert_eq!(&r0.read_all(1 << 20).await.unwrap()[..], b"");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut w1 = publisher.next_segment().await.unwrap();
    let first_byte = Instant::now();
    w1.write(Bytes::from_static(b"one")).await.unwrap();
    assert!(post1[0].at < first_byte && get1[0].at < first_byte);
    let mut r1 = within("segment 1", sub.next_segment())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&r1.chunk().await.unwrap().unwrap()[..], b"one");
    assert_eq!(w1.finish().await.unwrap(), 1);
    // One POST per segment, no re-sends: 0, 1 and the preconnected 2.
    for (seq, n) in [(0, 1), (1, 1), (2, 1), (3, 0)] {
        assert_eq!(
            ts.seen("POST", &format!("pre/{seq}")).len(),
            n,
            "POST {seq}"
        );
    }
    assert!(ts.seen("POST", "pre/0").iter().all(|s| !s.reset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_behind_the_retention_jumps_to_the_latest() {
    let ts = TestServer::start().await;
    let url = ts.channel("lag");
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    let mut sub = TrickleSubscriber::new(http(), &url, 0);
    assert_eq!(
        publisher.write_segment(Bytes::from("seg0")).await.unwrap(),
        0
    );
    let mut r = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(
        (r.seq(), &r.read_all(100).await.unwrap()[..]),
        (0, &b"seg0"[..])
    );
    // The publisher runs 8 segments ahead; the server keeps 5.
    for seq in 1..=8 {
        let body = Bytes::from(format!("seg{seq}"));
        assert_eq!(publisher.write_segment(body).await.unwrap(), seq);
    }
    // Segment 1's GET was already waiting: it is read whole.
    let mut r = sub.next_segment().await.unwrap().unwrap();
    assert_eq!((r.seq(), r.gap()), (1, None));
    assert_eq!(&r.read_all(100).await.unwrap()[..], b"seg1");
    // Segment 2 is gone: 470, jump to the latest (9), reported as a gap.
    let next = tokio::spawn(async move {
        let r = sub.next_segment().await.map(|r| r.unwrap());
        (sub, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        publisher.write_segment(Bytes::from("seg9")).await.unwrap(),
        9
    );
    let (sub, r) = within("segment 9", next).await.unwrap();
    let mut r = r.unwrap();
    assert_eq!(r.seq(), 9);
    assert_eq!(
        r.gap(),
        Some(Gap {
            expected: 2,
            got: 9
        })
    );
    assert_eq!(r.gap().unwrap().missed(), 7);
    assert_eq!(&r.read_all(100).await.unwrap()[..], b"seg9");
    assert_eq!(sub.gaps(), 1);
    assert_eq!(sub.next_seq(), 10);
    assert_eq!(ts.seen("GET", "lag/2").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_channel_ends_the_subscriber_and_stops_the_publisher() {
    let ts = TestServer::start().await;
    let url = ts.channel("del");
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let reader = {
        let (http, url) = (http(), url.clone());
        tokio::spawn(async move {
            let mut sub = TrickleSubscriber::new(http, &url, 0);
            let mut segments = Vec::new();
            while let Some(mut seg) = sub.next_segment().await.unwrap() {
                let mut all = Vec::new();
                while let Some(chunk) = seg.chunk().await.unwrap() {
                    all.extend_from_slice(&chunk);
                    got_tx.send(seg.seq()).unwrap();
                }
                segments.push((seg.seq(), String::from_utf8(all).unwrap()));
            }
            (segments, sub.ended())
        })
    };
    assert_eq!(
        publisher.write_segment(Bytes::from("one")).await.unwrap(),
        0
    );
    let mut w = publisher.next_segment().await.unwrap();
    w.write(Bytes::from("partial")).await.unwrap();
    while within("the partial segment read", got_rx.recv())
        .await
        .unwrap()
        != 1
    {}

    // The orchestrator deletes the channel mid-segment.
    assert!(ts.server.close_channel("del"));
    let (segments, ended) = within("the subscriber ends", reader).await.unwrap();
    assert!(ended);
    assert_eq!(
        segments,
        [(0, "one".to_string()), (1, "partial".to_string())]
    );
    // What was sent is accepted, and the publisher is done: the
    // preconnected POST of segment 2 is answered with Lp-Trickle-Closed,
    // or, when it reached the server after the delete, with a 404. The
    // open segment's answer then says 1, or (when its POST had to be sent
    // again, after the delete) that the channel is gone; never anything
    // else.
    match w.finish().await {
        Ok(seq) => assert_eq!(seq, 1),
        Err(e) => assert!(
            e.is_terminal()
                && matches!(
                    e,
                    TrickleClientError::ChannelNotFound { .. }
                        | TrickleClientError::ChannelClosed { .. }
                ),
            "{e}"
        ),
    }
    within("the publisher stops", async {
        while publisher.terminal_error().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let e = publisher.next_segment().await.err().expect("terminal");
    assert!(
        matches!(
            e,
            TrickleClientError::ChannelClosed { .. } | TrickleClientError::ChannelNotFound { .. }
        ),
        "{e}"
    );
    assert!(e.is_terminal());
    assert_eq!(publisher.terminal_error(), Some(e));
    // Now the channel is gone: 404s.
    let e = publisher.publish(-1, Bytes::from("{}")).await.unwrap_err();
    assert!(
        matches!(e, TrickleClientError::ChannelNotFound { .. }),
        "{e}"
    );
    let mut again = TricklePublisher::new(http(), &url);
    let e = again.start(-1).await.unwrap_err();
    assert!(
        matches!(e, TrickleClientError::ChannelNotFound { .. }),
        "{e}"
    );
    let mut sub = TrickleSubscriber::new(http(), &url, -1);
    assert!(sub.next_segment().await.unwrap().is_none());
    publisher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_gone_mid_stream_gives_bounded_retries_then_a_clear_error() {
    let mut ts = TestServer::start().await;
    let url = ts.channel("gone");
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let mut publisher = TricklePublisher::with_config(
        http(),
        &url,
        PublisherConfig {
            retry,
            write_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            ..PublisherConfig::default()
        },
    );
    publisher.start(0).await.unwrap();
    let mut sub = TrickleSubscriber::with_config(
        http(),
        &url,
        0,
        SubscriberConfig {
            retry,
            ..SubscriberConfig::default()
        },
    );
    assert_eq!(
        publisher.write_segment(Bytes::from("seg0")).await.unwrap(),
        0
    );
    let mut r0 = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(&r0.read_all(100).await.unwrap()[..], b"seg0");
    let mut w1 = publisher.next_segment().await.unwrap();
    w1.write(Bytes::from("x")).await.unwrap();
    let mut r1 = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(&r1.chunk().await.unwrap().unwrap()[..], b"x");

    ts.kill().await;
    let started = Instant::now();
    // The reader's connection broke mid-segment.
    let e = within("the reader's error", r1.chunk()).await.unwrap_err();
    assert!(matches!(e, TrickleClientError::Interrupted { .. }), "{e}");
    // The next segment: 3 attempts, then a clear error.
    let e = within("the subscriber's retries", sub.next_segment())
        .await
        .err()
        .expect("no server");
    assert!(
        matches!(e, TrickleClientError::Unavailable { attempts: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("gone/2 failed after 3 attempts"),
        "{e}"
    );

    // The publisher: the open segment fails, and so do the next ones until
    // it gives up after 3 in a row.
    let mut errors = vec![match w1.write(Bytes::from("y")).await {
        Err(e) => e,
        Ok(()) => w1.finish().await.unwrap_err(),
    }];
    let terminal = loop {
        let e = match publisher.next_segment().await {
            Err(e) => break e,
            Ok(mut w) => match w.write(Bytes::from("z")).await {
                Err(e) => e,
                Ok(()) => w.finish().await.unwrap_err(),
            },
        };
        assert!(!e.is_terminal(), "{e}");
        errors.push(e);
        assert!(errors.len() <= 3, "{errors:?}");
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[1..]
            .iter()
            .all(|e| matches!(e, TrickleClientError::Unavailable { attempts: 3, .. })),
        "{errors:?}"
    );
    let TrickleClientError::TooManyFailures { failures, .. } = &terminal else {
        panic!("{terminal}");
    };
    assert_eq!(*failures, 3);
    assert!(terminal
        .to_string()
        .contains("gave up after 3 failed segments"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Closing an unreachable channel fails, bounded, too.
    let e = publisher.close().await.unwrap_err();
    assert!(
        matches!(e, TrickleClientError::Unavailable { attempts: 3, .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_past_the_readers_limit_is_an_error_and_the_next_one_reads() {
    let ts = TestServer::start().await;
    let url = ts.channel("big");
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    let mut sub = TrickleSubscriber::with_config(
        http(),
        &url,
        0,
        SubscriberConfig {
            max_segment_bytes: 1000,
            ..SubscriberConfig::default()
        },
    );
    let mut w = publisher.next_segment().await.unwrap();
    for _ in 0..5 {
        w.write(Bytes::from(vec![7u8; 1000])).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), 0);
    assert_eq!(publisher.write_segment(Bytes::from("ok")).await.unwrap(), 1);
    assert_eq!(
        publisher
            .write_segment(Bytes::from("too long"))
            .await
            .unwrap(),
        2
    );

    let mut r = sub.next_segment().await.unwrap().unwrap();
    let e = r.read_all(usize::MAX).await.unwrap_err();
    assert!(
        matches!(
            e,
            TrickleClientError::TooLarge {
                seq: 0,
                limit: 1000,
                ..
            }
        ),
        "{e}"
    );
    assert!(r.bytes_read() <= 2000, "stopped near the limit");
    assert!(r.chunk().await.is_err(), "the error sticks");
    let mut r = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(&r.read_all(usize::MAX).await.unwrap()[..], b"ok");
    // A caller's own, lower limit.
    let mut r = sub.next_segment().await.unwrap().unwrap();
    let e = r.read_all(3).await.unwrap_err();
    assert!(
        matches!(
            e,
            TrickleClientError::TooLarge {
                seq: 2,
                limit: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_is_reissued_and_a_reset_start_continues_the_sequence() {
    let ts = TestServer::start().await;
    ts.server
        .create_channel_at("rp", "application/json", 41)
        .unwrap();
    let url = format!("{}/rp", ts.base);
    let reader = {
        let (http, url) = (http(), url.clone());
        tokio::spawn(async move {
            let mut sub = TrickleSubscriber::with_config(
                http,
                &url,
                -1,
                SubscriberConfig {
                    repoll_interval: Duration::from_millis(150),
                    ..SubscriberConfig::default()
                },
            );
            let mut seg = sub.next_segment().await.unwrap().unwrap();
            (seg.seq(), seg.read_all(1 << 10).await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // From -1: GET /next gives 41, and the first POST carries the reset.
    let mut publisher = TricklePublisher::with_config(
        http(),
        &url,
        PublisherConfig {
            content_type: "application/json".into(),
            ..PublisherConfig::default()
        },
    );
    assert_eq!(publisher.start(-1).await.unwrap(), 41);
    assert_eq!(
        publisher
            .write_segment(Bytes::from(r#"{"a":1}"#))
            .await
            .unwrap(),
        41
    );
    let (seq, body) = within("the event", reader).await.unwrap();
    assert_eq!((seq, &body[..]), (41, &br#"{"a":1}"#[..]));
    let gets = ts.seen("GET", "rp/-1").len();
    assert!(gets >= 3, "the waiting GET was re-issued: {gets} GETs");
    assert_eq!(ts.seen("GET", "rp/next").len(), 1);
    let posts = ts.seen("POST", "rp/41");
    assert!(posts.len() == 1 && posts[0].reset, "{posts:?}");
    assert!(ts.seen("POST", "rp/42").iter().all(|s| !s.reset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_off_messages_are_whole_segments() {
    let ts = TestServer::start().await;
    let url = ts.channel("ev");
    let publisher = TricklePublisher::new(http(), &url);
    assert_eq!(
        publisher
            .publish(-1, Bytes::from("{\"n\":0}"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        publisher
            .publish(-1, Bytes::from("{\"n\":1}"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        publisher
            .publish(2, Bytes::from("{\"n\":2}"))
            .await
            .unwrap(),
        2
    );
    let mut sub = TrickleSubscriber::new(http(), &url, 0);
    for n in 0..3 {
        let mut seg = sub.next_segment().await.unwrap().unwrap();
        assert_eq!(seg.seq(), n);
        let body = seg.read_all(1 << 10).await.unwrap();
        assert_eq!(body, format!("{{\"n\":{n}}}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_segment_releases_its_readers_and_the_publisher_goes_on() {
    let ts = TestServer::start().await;
    let url = ts.channel("ab");
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    let mut sub = TrickleSubscriber::new(http(), &url, 0);
    let mut w = publisher.next_segment().await.unwrap();
    w.write(Bytes::from("half")).await.unwrap();
    let mut r = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(&r.chunk().await.unwrap().unwrap()[..], b"half");
    w.abort().await;
    assert_eq!(ts.seen("DELETE", "ab/0").len(), 1);
    // The reader has what was written, and the segment's end.
    assert_eq!(
        within("the aborted segment ends", r.chunk()).await.unwrap(),
        None
    );
    assert_eq!(
        publisher.write_segment(Bytes::from("next")).await.unwrap(),
        1
    );
    let mut r = sub.next_segment().await.unwrap().unwrap();
    assert_eq!(
        (r.seq(), &r.read_all(10).await.unwrap()[..]),
        (1, &b"next"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_ahead_of_the_live_edge_waits_then_fails_and_can_try_again() {
    let ts = TestServer::start().await;
    let url = ts.channel("ahead");
    let mut sub = TrickleSubscriber::with_config(
        http(),
        &url,
        3,
        SubscriberConfig {
            retry: RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            },
            ahead_wait: Duration::from_millis(50),
            ..SubscriberConfig::default()
        },
    );
    // Nothing written: 470 with Latest 0 < 3, asked again after a pause.
    let e = sub.next_segment().await.err().expect("ahead");
    assert!(
        matches!(e, TrickleClientError::Unavailable { attempts: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("ahead of the live edge"), "{e}");
    assert_eq!(ts.seen("GET", "ahead/3").len(), 3);
    // Not sticky: once the channel is at 3, segment 3 is read.
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    for seq in 0..3 {
        publisher.write_segment(Bytes::from("x")).await.unwrap();
        assert_eq!(publisher.next_seq(), Some(seq + 1));
    }
    let next = tokio::spawn(async move { sub.next_segment().await.map(|r| r.map(|r| r.seq())) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher.write_segment(Bytes::from("three")).await.unwrap();
    assert_eq!(within("segment 3", next).await.unwrap().unwrap(), Some(3));
}

const SDK_SUBSCRIBER: &str = r#"
import asyncio, hashlib, json, sys
from livepeer_gateway.trickle_subscriber import TrickleSubscriber

async def main():
    url, want = sys.argv[1], int(sys.argv[2])
    sub = TrickleSubscriber(url, start_seq=0)
    read = []
    try:
        while len(read) < want:
            seg = await sub.next()
            if seg is None:
                break
            reader, data = seg.make_reader(), b""
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                data += chunk
            await seg.close()
            read.append({"seq": seg.seq(), "sha256": hashlib.sha256(data).hexdigest()})
        eos = (await sub.next()) is None
    finally:
        await sub.close()
    print(json.dumps({"read": read, "eos": eos}), flush=True)

asyncio.run(main())
"#;

const SDK_PUBLISHER: &str = r#"
import asyncio, hashlib, json, sys
from livepeer_gateway.trickle_publisher import TricklePublisher

async def main():
    url, n = sys.argv[1], int(sys.argv[2])
    pub = TricklePublisher(url, "video/MP2T")
    sent = []
    for i in range(n):
        data = bytes((i * 7 + j) % 251 for j in range(150_000))
        seg = await pub.next()
        for k in range(0, len(data), 32 * 1024):
            await seg.write(data[k : k + 32 * 1024])
        await seg.close()
        sent.append(hashlib.sha256(data).hexdigest())
    await asyncio.sleep(0.5)
    await pub.close()
    print(json.dumps({"sent": sent}), flush=True)

asyncio.run(main())
"#;

fn python() -> Option<std::path::PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sdk/bin/python");
    if python.exists() {
        Some(python)
    } else {
        eprintln!("skipped: .venv-sdk is missing (bash scripts/install-deps)");
        None
    }
}

fn run_python(
    python: std::path::PathBuf,
    script: &'static str,
    args: Vec<String>,
) -> serde_json::Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdks_subscriber_reads_our_publisher_and_ours_reads_the_sdks_publisher() {
    let Some(python) = python() else { return };
    let ts = TestServer::start().await;

    // Ours → the SDK's TrickleSubscriber.
    let url = ts.channel("to-sdk");
    let sdk = {
        let (python, url) = (python.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            run_python(python, SDK_SUBSCRIBER, vec![url, "3".into()])
        })
    };
    let mut publisher = TricklePublisher::new(http(), &url);
    publisher.start(0).await.unwrap();
    let mut hashes = Vec::new();
    for seq in 0..3u8 {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ seq).collect();
        hashes.push(format!("{:x}", Sha256::digest(&data)));
        let mut w = publisher.next_segment().await.unwrap();
        for part in data.chunks(16 * 1024) {
            w.write(Bytes::copy_from_slice(part)).await.unwrap();
        }
        w.finish().await.unwrap();
    }
    // Close once the SDK waits on segment 3, having read 0..2.
    within("the SDK reads three segments", async {
        while ts.seen("GET", "to-sdk/3").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    publisher.close().await.unwrap();
    let report = within("the SDK subscriber", sdk).await.unwrap();
    let read: Vec<(i64, String)> = report["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["seq"].as_i64().unwrap(),
                r["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(i64, String)> = hashes
        .into_iter()
        .enumerate()
        .map(|(i, h)| (i as i64, h))
        .collect();
    assert_eq!(read, want);
    assert_eq!(report["eos"], true);

    // The SDK's TricklePublisher (from -1, with a reset) → ours.
    let url = ts.channel("from-sdk");
    let reader = {
        let (http, url) = (http(), url.clone());
        tokio::spawn(async move {
            let mut sub = TrickleSubscriber::new(http, &url, -1);
            let mut read = Vec::new();
            while let Some(mut seg) = sub.next_segment().await.unwrap() {
                let data = seg.read_all(1 << 20).await.unwrap();
                read.push((seg.seq(), format!("{:x}", Sha256::digest(&data))));
            }
            read
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = within(
        "the SDK publisher",
        tokio::task::spawn_blocking(move || {
            run_python(python, SDK_PUBLISHER, vec![url, "3".into()])
        }),
    )
    .await
    .unwrap();
    let read = within("our subscriber ends", reader).await.unwrap();
    let sent: Vec<(i64, String)> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, h)| (i as i64, h.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(read, sent);
}
