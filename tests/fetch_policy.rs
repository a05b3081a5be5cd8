//! `lpworker serve` refuses segment URLs on non-public addresses (SSRF): by
//! literal, by a name resolving to one, and through a redirect, without
//! touching the target and without saying what it found; `--fetch-allow`
//! lets chosen ranges through.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{clip, tempdir, Clip, ServeProcess};
use lpworker::proto::worker as pb;
use pb::worker_client::WorkerClient;
use tonic::Code;

/// An HTTP server on `bind` answering every connection with `head` then
/// `body`, counting the connections.
fn recording_server(bind: &str, head: String, body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (addr, hits)
}

fn ok_head(len: usize) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
}

fn by_url(url: &str) -> pb::TranscodeRequest {
    pb::TranscodeRequest {
        source: Some(pb::transcode_request::Source::Url(url.to_string())),
        profile_names: vec!["P144p30fps16x9".into()],
        ..Default::default()
    }
}

async fn transcode(
    c: &mut WorkerClient<tonic::transport::Channel>,
    req: pb::TranscodeRequest,
) -> Result<usize, tonic::Status> {
    let mut stream = c.transcode(req).await?.into_inner();
    let mut renditions = 0;
    while let Some(msg) = stream.message().await? {
        if let Some(pb::transcode_response::Event::Rendition(_)) = msg.event {
            renditions += 1;
        }
    }
    Ok(renditions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_public_segment_urls_are_refused_unless_allowed() {
    let dir = tempdir();
    let (_, bytes) = clip(dir.path(), "src", &Clip::default());
    // A segment on 127.0.0.1, which must never be fetched, and one on
    // 127.0.0.2, allowed below, plus a redirect from 127.0.0.2 to 127.0.0.1.
    let (loopback, loopback_hits) =
        recording_server("127.0.0.1:0", ok_head(bytes.len()), bytes.clone());
    let (allowed, allowed_hits) =
        recording_server("127.0.0.2:0", ok_head(bytes.len()), bytes.clone());
    let (redirector, redirector_hits) = recording_server(
        "127.0.0.2:0",
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{loopback}/seg.ts\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Vec::new(),
    );
    let port = loopback.rsplit_once(':').unwrap().1.to_string();

    let server = ServeProcess::start(&["--fetch-allow", "127.0.0.2/32,192.0.2.0/24"]);
    let mut c = WorkerClient::connect(server.endpoint()).await.unwrap();

    let refused = [
        format!("http://{loopback}/seg.ts"),
        format!("http://localhost:{port}/seg.ts"),
        format!("http://[::ffff:127.0.0.1]:{port}/seg.ts"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.20.30.40/seg.ts".to_string(),
    ];
    for url in &refused {
        let status = transcode(&mut c, by_url(url)).await.expect_err(url);
        assert_eq!(status.code(), Code::InvalidArgument, "{url}: {status:?}");
        let m = status.message();
        assert!(m.contains("not a public address"), "{url}: {m:?}");
        for leak in ["127.0.0", "169.254", "10.20", "::ffff", "localhost"] {
            assert!(!m.contains(leak), "{url}: message names the address: {m:?}");
        }
    }
    // The redirect reaches the allowed redirector but is not followed.
    let status = transcode(&mut c, by_url(&format!("http://{redirector}/seg.ts")))
        .await
        .expect_err("redirect");
    assert_eq!(status.message(), "segment fetch failed", "{status:?}");
    assert!(!status.message().contains("302"));
    assert_eq!(redirector_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        loopback_hits.load(Ordering::SeqCst),
        0,
        "a refused address was fetched"
    );

    // The allowed address is fetched and transcoded.
    let renditions = transcode(&mut c, by_url(&format!("http://{allowed}/seg.ts")))
        .await
        .expect("allowed segment");
    assert_eq!(renditions, 1);
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    drop(server);

    // With loopback allowed, the loopback segment is fetched.
    let server = ServeProcess::start(&["--fetch-allow", "127.0.0.1/32"]);
    let mut c = WorkerClient::connect(server.endpoint()).await.unwrap();
    let renditions = transcode(&mut c, by_url(&format!("http://{loopback}/seg.ts")))
        .await
        .expect("allowed loopback segment");
    assert_eq!(renditions, 1);
    assert_eq!(loopback_hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_bad_fetch_allow_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "serve",
            "--fetch-allow",
            "10.0.0.0/40",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid CIDR"), "{err}");
}
