//! The trickle server against the official SDK (livepeer-gateway 1.0.0,
//! unchanged, in `.venv-sdk`): its `TricklePublisher` publishes MPEG-TS
//! segments in pieces, its `TrickleSubscriber` reads them back while they
//! are written, and sees the channel's end when the publisher closes it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{clip, tempdir, Clip};
use lpworker::trickle::{TrickleConfig, TrickleServer, BASE_PATH};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_publisher_and_subscriber_round_trip_mpeg_ts_segments() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-sdk/bin/python");
    assert!(
        python.exists(),
        ".venv-sdk is missing: run `bash scripts/install-deps`"
    );
    let server = TrickleServer::new(TrickleConfig::default());
    server.create_channel("stream-out", "video/MP2T").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest(BASE_PATH, server.router());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempdir();
    let mut files = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let (path, bytes) = clip(
            dir.path(),
            &format!("seg{i}"),
            &Clip {
                seconds: 1.0,
                width: 640,
                height: 360,
                ..Clip::default()
            },
        );
        assert!(bytes.len() > 64 * 1024, "several pieces per segment");
        hashes.push(format!("{:x}", Sha256::digest(&bytes)));
        files.push(path);
    }
    let url = format!("http://{addr}{BASE_PATH}/stream-out");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root.join("tests/sdk/trickle_roundtrip.py"))
            .arg(&url)
            .args(&files)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let published: Vec<&str> = report["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        hashes.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let read = report["read"].as_array().unwrap();
    let got: Vec<(i64, &str)> = read
        .iter()
        .map(|r| (r["seq"].as_i64().unwrap(), r["sha256"].as_str().unwrap()))
        .collect();
    let want: Vec<(i64, &str)> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (i as i64, h.as_str()))
        .collect();
    assert_eq!(got, want, "every segment, byte for byte, in order");
    assert_eq!(report["eos"], true, "the subscriber saw the channel close");
    // The publisher's close deleted the channel: nothing is retained.
    assert!(!server.has_channel("stream-out"));
}
