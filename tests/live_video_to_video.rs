//! Legacy live-video-to-video through the shim, off chain, over real
//! sockets: a Live Runner registered by heartbeat as
//! `live-video-to-video/noop` is handed streams (a recording stand-in
//! checks the wire), each with four trickle channels on the shim that
//! end with the stream.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::insecure_http;
use common::live::{Shim, SECRET};
use lpworker::proto::lp_rpc as net;
use prost::Message;
use serde_json::{json, Value};

/// What the stand-in runner was sent: headers (lowercase names) and body.
type Handoffs = Arc<Mutex<Vec<(Vec<(String, String)>, String, Value)>>>;

struct StandIn {
    /// Its URL, with a path that the handoff must keep.
    url: String,
    handoffs: Handoffs,
    /// The status it answers the handoff with.
    status: Arc<AtomicU16>,
}

async fn stand_in_runner() -> StandIn {
    use axum::extract::{Request, State};
    let handoffs: Handoffs = Arc::default();
    let status = Arc::new(AtomicU16::new(200));
    let state = (handoffs.clone(), status.clone());
    let app =
        axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/base/{*rest}",
                axum::routing::post(
                    |State((handoffs, status)): State<(Handoffs, Arc<AtomicU16>)>,
                     request: Request| async move {
                        let path = request.uri().path().to_string();
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                            .await
                            .unwrap();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        handoffs.lock().unwrap().push((headers, path, body));
                        let status =
                            axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst))
                                .unwrap();
                        // ai-runner's answer, which the orchestrator ignores.
                        (
                            status,
                            axum::Json(
                                json!({"publish_url": "", "subscribe_url": "", "control_url": ""}),
                            ),
                        )
                    },
                ),
            )
            .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    StandIn {
        url: format!("http://{addr}/base"),
        handoffs,
        status,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Off-chain segment credentials: the auth token GetOrchestrator gave.
async fn segment_credentials(shim: &Shim) -> (net::OrchestratorInfo, String) {
    let addr = shim.uri.trim_start_matches("https://");
    let info = common::shim::offchain_info(addr).await;
    let seg = net::SegData {
        auth_token: info.auth_token.clone(),
        ..Default::default()
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(seg.encode_to_vec());
    (info, b64)
}

async fn start(
    http: &reqwest::Client,
    shim: &Shim,
    creds: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut r = http
        .post(format!("{}/live-video-to-video", shim.uri))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(c) = creds {
        r = r.header("Livepeer-Segment", c);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Starts until one is accepted (room is freed by a task), within 5 s.
async fn start_when_free(http: &reqwest::Client, shim: &Shim, creds: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = start(http, shim, Some(creds), r#"{"model_id":"noop"}"#).await;
        if status == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "the stream's room was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn beat(http: &reqwest::Client, shim: &Shim, secret: &str, decl: &Value) -> Value {
    let r = http
        .post(format!("{}/runners/heartbeat", shim.uri))
        .header("authorization", secret)
        .json(decl)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_handed_to_a_live_runner_and_ends_with_its_input() {
    let shim = Shim::start(&[]);
    let runner = stand_in_runner().await;
    let http = insecure_http();
    let mut decl = json!({
        "runner_url": runner.url, "app": "live-video-to-video/noop",
        "capacity": 1, "version": "0.14.2"
    });
    let first = beat(&http, &shim, SECRET, &decl).await;
    let id = first["runner_id"].as_str().unwrap().to_string();
    let secret = first["heartbeat_secret"].as_str().unwrap().to_string();
    decl["runner_id"] = json!(id);

    // GetOrchestrator offers capability 35 with the runner's model.
    let (info, creds) = segment_credentials(&shim).await;
    let caps = info.capabilities.unwrap();
    assert_ne!(caps.bitstring[0] & (1 << 35), 0);
    let noop = &caps.constraints.unwrap().per_capability[&35].models["noop"];
    assert_eq!((noop.capacity, noop.runner_version.as_str()), (1, "0.14.2"));

    // Refused before anything is reserved.
    let (status, _) = start(&http, &shim, None, r#"{"model_id":"noop"}"#).await;
    assert_eq!(status, 403);
    let (status, body) = start(&http, &shim, Some(&creds), "{nope").await;
    assert_eq!(status, 400);
    assert!(body.starts_with("invalid request body"), "{body}");
    let (status, body) = start(&http, &shim, Some(&creds), r#"{"params":{}}"#).await;
    assert_eq!((status, body.as_str()), (400, "model_id is required"));
    let (status, body) = start(&http, &shim, Some(&creds), r#"{"model_id":"other"}"#).await;
    assert_eq!((status, body.as_str()), (503, "insufficient capacity"));
    assert!(runner.handoffs.lock().unwrap().is_empty());

    // Started: the gateway's URLs on the service URI, the runner told.
    let (status, body) = start(
        &http,
        &shim,
        Some(&creds),
        r#"{"model_id":"noop","params":{"prompt":"x"},"stream_id":"s1","gateway_request_id":"g1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    let mid = reply["manifest_id"].as_str().unwrap().to_string();
    assert!(
        mid.len() == 32 && mid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{mid}"
    );
    let trickle = format!("{}/ai/trickle", shim.uri);
    assert_eq!(
        reply,
        json!({
            "publish_url": format!("{trickle}/{mid}"),
            "subscribe_url": format!("{trickle}/{mid}-out"),
            "control_url": format!("{trickle}/{mid}-control"),
            "events_url": format!("{trickle}/{mid}-events"),
            "manifest_id": mid,
        })
    );
    let (headers, path, job) = runner.handoffs.lock().unwrap()[0].clone();
    assert_eq!(path, "/base/live-video-to-video");
    assert_eq!(header(&headers, "livepeer-runner-route"), Some(id.as_str()));
    assert_eq!(header(&headers, "livepeer-session-id"), Some(mid.as_str()));
    let control = format!("{}/runner/{id}/session/{mid}", shim.uri);
    assert_eq!(
        header(&headers, "livepeer-session-control"),
        Some(control.as_str())
    );
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let token = header(&headers, "livepeer-session-token")
        .unwrap()
        .to_string();
    assert!(!token.is_empty());
    // No -liveRunnerAddr: the runner reaches the channels at the service URI.
    assert_eq!(
        job,
        json!({
            "subscribe_url": format!("{trickle}/{mid}"),
            "publish_url": format!("{trickle}/{mid}-out"),
            "control_url": format!("{trickle}/{mid}-control"),
            "events_url": format!("{trickle}/{mid}-events"),
            "model_id": "noop", "params": {"prompt": "x"},
            "gateway_request_id": "g1", "manifest_id": mid, "stream_id": "s1",
        })
    );
    // The runner's heartbeats list the stream's session.
    let beat1 = beat(&http, &shim, &secret, &decl).await;
    assert_eq!(beat1["session_ids"], json!([mid]));

    // The four channels: input published and read, output written to.
    let r = http
        .post(format!("{trickle}/{mid}/0"))
        .body("segment 0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{trickle}/{mid}/0")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "segment 0");
    for ch in ["out", "control", "events"] {
        let r = http
            .post(format!("{trickle}/{mid}-{ch}/0"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ch}");
    }

    // Capacity 1: a second stream waits for room.
    let (status, body) = start(&http, &shim, Some(&creds), r#"{"model_id":"noop"}"#).await;
    assert_eq!((status, body.as_str()), (503, "insufficient capacity"));

    // The input closed: every channel goes, the room is free again.
    let r = http
        .delete(format!("{trickle}/{mid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second = start_when_free(&http, &shim, &creds).await;
    for ch in ["out", "control", "events"] {
        let r = http
            .post(format!("{trickle}/{mid}-{ch}/1"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{ch} outlived its stream");
    }
    let mid2 = second["manifest_id"].as_str().unwrap().to_string();
    assert_ne!(mid2, mid);
    let beat2 = beat(&http, &shim, &secret, &decl).await;
    assert_eq!(beat2["session_ids"], json!([mid2]));

    // The runner stops its session: the stream ends with it.
    let token2 = {
        let h = runner.handoffs.lock().unwrap();
        header(&h.last().unwrap().0, "livepeer-session-token")
            .unwrap()
            .to_string()
    };
    let r = http
        .post(format!("{}/runner/{id}/session/{mid2}/stop", shim.uri))
        .header("livepeer-session-token", token2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let third = start_when_free(&http, &shim, &creds).await;
    let mid3 = third["manifest_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http
            .post(format!("{trickle}/{mid2}/5"))
            .body("x")
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the input outlived its session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A runner that refuses the job: 500, the stream's room and channels
    // given back at once.
    let r = http
        .delete(format!("{trickle}/{mid3}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    runner.status.store(500, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let (status, body) = start(&http, &shim, Some(&creds), r#"{"model_id":"noop"}"#).await;
        if status != 503 {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "the stream's room was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refused,
        (500, "live video runner failed: status 500".to_string())
    );
    let refused_mid = runner.handoffs.lock().unwrap().last().unwrap().2["manifest_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{trickle}/{refused_mid}/0"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    runner.status.store(200, Ordering::SeqCst);
    let (status, body) = start(&http, &shim, Some(&creds), r#"{"model_id":"noop"}"#).await;
    assert_eq!(status, 200, "{body}");
}
