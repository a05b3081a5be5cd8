//! Live Runners hosted by `lpworker orchestrator`, end to end over real
//! sockets and processes: the official SDK (livepeer-gateway 1.0.0,
//! unchanged, in `.venv-sdk`) as the runner and as the gateway, and each of
//! go-livepeer's rules checked over HTTP against a runner served here.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::live::{discovery, free_port, python, sdk_script, Shim, SECRET};
use common::{insecure_http, tempdir};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_as_runner_and_gateway_through_the_shim() {
    let shim = Shim::start(&[]);
    let http = insecure_http();

    // The runner: the SDK's register_runner, heartbeats and O2R reader.
    let mut runner = Command::new(python())
        .arg(sdk_script("live_runner_app.py"))
        .args(["--orch", &shim.uri, "--secret", SECRET, "--capacity", "2"])
        .args(["--metadata", "{\"model\":\"echo\"}", "--version", "1.0.0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a registration line").unwrap();
    let registered: Value = serde_json::from_str(&first).unwrap_or_else(|_| {
        let _ = runner.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(runner.stderr.as_mut().unwrap(), &mut err);
        panic!("the SDK runner did not register: {first:?}\n{err}")
    });
    let runner_id = registered["runner_id"].as_str().unwrap().to_string();
    assert!(runner_id.starts_with("runner_"));
    assert_eq!(registered["heartbeat_interval_s"], 1.0);
    assert_eq!(registered["heartbeat_ttl_s"], 3.0);
    // The O2R channel is at the runner-facing address (the service URI here).
    assert!(registered["o2r"]["url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/ai/trickle/{runner_id}-", shim.uri)));
    let listed = discovery(&http, &shim).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["url"],
        format!("{}/apps/{runner_id}/session", shim.uri)
    );
    assert_eq!(listed[0]["metadata"], "{\"model\":\"echo\"}");
    // The runner's private address is never published.
    let text = serde_json::to_string(&listed).unwrap();
    assert!(!text.contains(registered["runner_url"].as_str().unwrap()));
    assert!(!text.contains("price_info"), "no prices off chain");

    // Outlive several heartbeat TTLs: the SDK keeps the runner registered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(discovery(&http, &shim).await.len(), 1);

    // The gateway: discovery, reserve_session, call_runner through the
    // proxy (JSON, SSE), a WebSocket, trickle channels, stop.
    let out = {
        let (python, script, uri) = (
            python(),
            sdk_script("live_runner_gateway.py"),
            shim.uri.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(["--orch", &uri, "--app", "live-runner-test/echo"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no report from the SDK gateway: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && report["ok"] == true,
        "SDK gateway failed: {}\n{}",
        report["error"],
        String::from_utf8_lossy(&out.stderr)
    );
    let sid = report["session"]["session_id"].as_str().unwrap();
    assert!(sid.starts_with("session_") && sid.len() == 16);
    assert_eq!(
        report["session"]["app_url"],
        format!("{}/apps/{runner_id}/session/{sid}/app", shim.uri)
    );
    assert_eq!(report["discovery_during"]["runner"]["capacity_used"], 1);
    assert_eq!(
        report["discovery_during"]["runner"]["capacity_available"],
        1
    );
    // What the runner saw through the proxy: the path and query joined,
    // the session headers set, nothing forwarded about the client.
    let echo = &report["echo"]["data"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["raw_path"], "/v1/echo?x=1&y=two");
    assert_eq!(echo["body"], "{\"hello\": \"world\", \"n\": 1}");
    let seen = &echo["headers"];
    assert_eq!(seen["Livepeer-Runner-Route"], runner_id.as_str());
    assert_eq!(seen["Livepeer-Session-Id"], sid);
    assert_eq!(
        seen["Livepeer-Session-Control"],
        format!("{}/runner/{runner_id}/session/{sid}", shim.uri)
    );
    let token = seen["Livepeer-Session-Token"].as_str().unwrap();
    assert_eq!(token.len(), 52);
    assert_eq!(
        seen["Host"],
        format!("127.0.0.1:{}", registered["port"]).as_str()
    );
    // Forged session headers are overwritten, X-Forwarded-* dropped.
    let spoofed = &report["echo_spoofed"]["data"]["headers"];
    assert_eq!(spoofed["Livepeer-Session-Token"], token);
    assert_eq!(spoofed["X-Forwarded-For"], Value::Null);
    // SSE arrives event by event, not buffered to the end.
    let sse = &report["sse"];
    assert_eq!(sse["content_type"], "text/event-stream");
    assert_eq!(sse["events"], json!(["0", "1", "2", "3", "4"]));
    let arrival: Vec<i64> = sse["arrival_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        arrival[4] - arrival[0] >= 300,
        "events 100 ms apart at the runner arrived together: {arrival:?}"
    );
    assert_eq!(report["ws"]["echoes"], json!(["echo:hello", "echo:world"]));
    assert_eq!(report["ws"]["headers"]["Livepeer-Session-Id"], sid);
    // The runner made a trickle channel through its callback; the SDK's
    // publisher and subscriber used it, and it closed with the session.
    let channel = &report["channels"]["data"]["channels"][0];
    assert_eq!(channel["channel_name"], format!("{sid}-out"));
    let trickle = &report["trickle"];
    assert_eq!(trickle["read"][0]["data"], trickle["published"][0]);
    assert_eq!(trickle["read"][1]["data"], trickle["published"][1]);
    assert_eq!(trickle["eos_on_session_close"], true);
    assert_eq!(report["after_close"]["status"], 404);
    // A runner that stops its own session: the request that stopped it is
    // still answered, later ones are not.
    assert_eq!(report["runner_stop"]["after_stop"]["status"], 404);
    assert_eq!(report["discovery_after"]["runner"]["capacity_used"], 0);

    // The runner heard of both sessions on its O2R channel.
    runner.stdin.take().unwrap().write_all(b"").unwrap();
    let mut events = Vec::new();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v.get("closed").is_some() {
            break;
        }
        if let Some(e) = v.get("event") {
            events.push((e.as_str().unwrap().to_string(), v["session_id"].clone()));
        }
    }
    let second = report["runner_stop"]["session_id"].clone();
    assert_eq!(
        events,
        vec![
            ("reserved".to_string(), json!(sid)),
            ("released".to_string(), json!(sid)),
            ("reserved".to_string(), second.clone()),
            ("released".to_string(), second),
        ]
    );
    assert!(runner.wait().unwrap().success());
    // Closing the registration unregistered it.
    assert!(discovery(&http, &shim).await.is_empty());
}

/// A runner app served here: `/health` answers what the test sets,
/// `/echo/...` what it was sent, `/slow` after a second.
struct TestRunner {
    url: String,
    health: Arc<AtomicU16>,
}

async fn test_runner() -> TestRunner {
    use axum::extract::{Request, State};
    use axum::routing::{any, get};
    let health = Arc::new(AtomicU16::new(200));
    let app = axum::Router::new()
        .route(
            "/health",
            get(|State(h): State<Arc<AtomicU16>>| async move {
                axum::http::StatusCode::from_u16(h.load(Ordering::Relaxed)).unwrap()
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done"
            }),
        )
        .route(
            "/echo/{*rest}",
            any(|request: Request| async move {
                let h = |n: &str| {
                    request
                        .headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap().to_string())
                };
                axum::Json(json!({
                    "path": request.uri().path(),
                    "query": request.uri().query(),
                    "session": h("livepeer-session-id"),
                    "token": h("livepeer-session-token"),
                    "payment": h("livepeer-payment"),
                }))
            }),
        )
        .with_state(health.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestRunner {
        url: format!("http://{addr}"),
        health,
    }
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, String) {
    let mut r = http.post(url).json(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_runners_sessions_and_callbacks_keep_go_livepeers_rules() {
    let shim = Shim::start(&[]);
    let runner = test_runner().await;
    let http = insecure_http();
    let beat_url = format!("{}/runners/heartbeat", shim.uri);
    let decl = json!({"runner_url": runner.url, "app": "test/echo", "capacity": 1});

    // Malformed JSON, a wrong or missing bootstrap secret, oversize metadata.
    let r = http
        .post(&beat_url)
        .header("authorization", SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        post_json(&http, &beat_url, Some("wrong"), &decl).await.0,
        401
    );
    assert_eq!(post_json(&http, &beat_url, None, &decl).await.0, 401);
    let mut fat = decl.clone();
    fat["metadata"] = json!("m".repeat(1025));
    let (status, body) = post_json(&http, &beat_url, Some(SECRET), &fat).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "metadata must be at most 1024 bytes\n")
    );
    let huge = json!({"runner_url": runner.url, "app": "x".repeat(300 << 10)});
    assert_eq!(
        post_json(&http, &beat_url, Some(SECRET), &huge).await.0,
        413
    );

    let (status, body) = post_json(&http, &beat_url, Some(SECRET), &decl).await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    let id = first["runner_id"].as_str().unwrap().to_string();
    let secret = first["heartbeat_secret"].as_str().unwrap().to_string();
    assert_eq!(first["session_ids"], json!([]));

    // Capacity 1: the second reservation is refused with 503.
    let reserve = format!("{}/apps/{id}/session", shim.uri);
    let (status, body) = post_json(&http, &reserve, None, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let sid = session["session_id"].as_str().unwrap().to_string();
    let app_url = session["app_url"].as_str().unwrap().to_string();
    let (status, body) = post_json(&http, &reserve, None, &json!({})).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "no capacity available for runner\n")
    );
    assert_eq!(
        post_json(
            &http,
            &format!("{}/apps/runner_nope/session", shim.uri),
            None,
            &json!({})
        )
        .await
        .0,
        404
    );

    // Through the proxy: path and query joined; the gateway's payment
    // headers are not passed on.
    let r: Value = http
        .put(format!("{app_url}/echo/a/b?q=1"))
        .header("livepeer-payment", "ticket")
        .header("livepeer-session-id", "forged")
        .body("x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["path"], "/echo/a/b");
    assert_eq!(r["query"], "q=1");
    assert_eq!(r["session"], sid.as_str());
    assert_eq!(r["payment"], Value::Null);
    let token = r["token"].as_str().unwrap().to_string();

    // Callbacks: the session's own token, 25 channels at most, proxies to
    // the runner's own host only.
    let control = format!("{}/runner/{id}/session/{sid}", shim.uri);
    let channels = |n: usize| json!({"channels": (0..n).map(|i| json!({"name": format!("c{i}")})).collect::<Vec<_>>()});
    let call = |path: &str, token: &str, body: Value| {
        let req = http
            .post(format!("{control}/{path}"))
            .header("livepeer-session-token", token.to_string())
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(call("channels", "wrong", channels(1)).await.0, 401);
    let r = http
        .post(format!(
            "{}/runner/{id}/session/session_nope/channels",
            shim.uri
        ))
        .header("livepeer-session-token", &token)
        .json(&channels(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, body) = call("channels", &token, channels(26)).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "channels cannot contain more than 25 entries\n")
    );
    let (status, body) = call("channels", &token, channels(25)).await;
    assert_eq!(status, 200, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    let trickle_url = made["channels"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(trickle_url, format!("{}/ai/trickle/{sid}-c0", shim.uri));
    let (status, _) = call(
        "channels",
        &token,
        json!({"channels": [{"name": "one-more"}]}),
    )
    .await;
    assert_eq!(status, 400, "25 channels per session, not per request");
    let (status, body) = call(
        "proxy",
        &token,
        json!({"target_url": "http://169.254.169.254/latest/meta-data"}),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "target_url hostname must match registered runner_url hostname\n"
        )
    );
    let (status, body) = call("proxy", &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let proxy_url = serde_json::from_str::<Value>(&body).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(proxy_url.starts_with(&format!("{}/run/", shim.uri)));
    let r: Value = http
        .get(format!("{proxy_url}/echo/via-proxy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["path"], "/echo/via-proxy");
    assert_eq!(r["session"], sid.as_str());

    // A heartbeat with the runner's own secret lists the session.
    let mut beat = decl.clone();
    beat["runner_id"] = json!(id);
    assert_eq!(
        post_json(&http, &beat_url, Some(SECRET), &beat).await.0,
        401
    );
    let (status, body) = post_json(&http, &beat_url, Some(&secret), &beat).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["session_ids"],
        json!([sid])
    );

    // Silence past the TTL: the runner is removed, its session, channels
    // and proxies with it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(discovery(&http, &shim).await.is_empty());
    let r = http.get(format!("{app_url}/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{proxy_url}/echo/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "live runner proxy not found\n");
    let r = http
        .get(format!("{trickle_url}/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the session's channels are closed");
    // Swept: the old secret is refused (401), and the SDK registers again.
    assert_eq!(
        post_json(&http, &beat_url, Some(&secret), &beat).await.0,
        401
    );

    // Unregister: only with the heartbeat secret.
    let (_, body) = post_json(&http, &beat_url, Some(SECRET), &decl).await;
    let second: Value = serde_json::from_str(&body).unwrap();
    let unregister_url = format!(
        "{}/runners/{}/unregister",
        shim.uri,
        second["runner_id"].as_str().unwrap()
    );
    let unregister = |auth: &str| {
        let req = http
            .post(&unregister_url)
            .header("authorization", auth.to_string());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let own = second["heartbeat_secret"].as_str().unwrap();
    assert_eq!(unregister(SECRET).await, 401);
    assert_eq!(unregister(own).await, 204);
    assert_eq!(unregister(own).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_runners_are_health_checked_and_single_shot_takes_one_slot_per_request() {
    let shim = Shim::start(&[]);
    let runner = test_runner().await;
    let http = insecure_http();
    let register = format!("{}/registerLiveRunners", shim.cli);
    let r = http.get(&register).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let entry = json!({
        "label": "static-echo", "routing": "label", "runner_url": runner.url,
        "health_url": "/health", "app": "test/static", "mode": "single_shot", "capacity": 1
    });
    let mut bad = entry.clone();
    bad["label"] = json!("other");
    bad["metadata"] = json!("m".repeat(2000));
    let (status, body) = post_json(&http, &register, None, &json!({"runners": [entry, bad]})).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "runners[1]: metadata must be at most 1024 bytes\n")
    );
    assert!(
        discovery(&http, &shim).await.is_empty(),
        "a bad batch registers nothing"
    );
    let (status, body) = post_json(&http, &register, None, &json!({"runners": [entry]})).await;
    assert_eq!(status, 200, "{body}");
    let out: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(out["runners"][0]["healthy"], true);
    assert_eq!(out["runners"][0]["mode"], "single-shot");
    assert_eq!(
        out["runners"][0]["health_url"],
        format!("{}/health", runner.url)
    );
    let listed = discovery(&http, &shim).await;
    assert_eq!(
        listed[0]["url"],
        format!("{}/apps/static-echo/app", shim.uri)
    );

    // One request, one session: a second one while the first runs is 503,
    // and the slot is free again once the answer is sent.
    let single = format!("{}/apps/static-echo/app", shim.uri);
    let slow = {
        let (http, url) = (http.clone(), format!("{single}/slow"));
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http.get(format!("{single}/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(discovery(&http, &shim).await[0]["capacity_used"], 1);
    assert_eq!(slow.await.unwrap(), "done");
    let r: Value = http
        .get(format!("{single}/echo/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["session"].as_str().unwrap().starts_with("session_"));
    assert_eq!(discovery(&http, &shim).await[0]["capacity_used"], 0);
    // A persistent session cannot be reserved on a single-shot runner.
    let (status, body) = post_json(
        &http,
        &format!("{}/apps/static-echo/session", shim.uri),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, "only persistent runners have sessions\n")
    );

    // Unhealthy: hidden within a health-check period, requests refused.
    runner.health.store(503, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !discovery(&http, &shim).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "an unhealthy runner stays listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http.get(format!("{single}/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Healthy again: back.
    runner.health.store(200, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while discovery(&http, &shim).await.is_empty() {
        assert!(Instant::now() < deadline, "a healthy runner stays hidden");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_shim_keeps_live_sessions() {
    let dir = tempdir();
    let port = free_port();
    let mut shim = Shim::start_in(dir.path(), port, &[]);
    let http = insecure_http();
    let mut runner = Command::new(python())
        .arg(sdk_script("live_runner_app.py"))
        .args(["--orch", &shim.uri, "--secret", SECRET, "--capacity", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    let registered: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let id = registered["runner_id"].as_str().unwrap().to_string();
    let (status, body) = post_json(
        &http,
        &format!("{}/apps/{id}/session", shim.uri),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let sid = session["session_id"].as_str().unwrap().to_string();
    let app_url = session["app_url"].as_str().unwrap().to_string();
    let echo = |http: reqwest::Client, url: String| async move {
        let r = http.post(url).body("hi").send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.ok())
    };
    let (status, seen) = echo(http.clone(), format!("{app_url}/v1/echo")).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.unwrap()["headers"]["Livepeer-Session-Id"],
        sid.as_str()
    );
    // The runner heard of the session on its O2R channel.
    let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (line["event"].as_str(), line["session_id"].as_str()),
        (Some("reserved"), Some(sid.as_str()))
    );

    // Killed, not shut down: what was written after the reservation is all
    // there is. Then started again on the same port and data directory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shim.child.kill().unwrap();
    shim.child.wait().unwrap();
    let shim = Shim::start_in(dir.path(), port, &[]);
    let (status, seen) = echo(http.clone(), format!("{app_url}/v1/echo")).await;
    assert_eq!(status, 200, "the session's URL leads to its runner again");
    let seen = seen.unwrap();
    assert_eq!(seen["headers"]["Livepeer-Session-Id"], sid.as_str());
    // Past several heartbeats (the runner reports the session it tracks)
    // and the TTL, the session is still held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let listed = discovery(&http, &shim).await;
    assert_eq!(listed.len(), 1, "the runner kept its registration");
    assert_eq!(listed[0]["capacity_used"], 1);
    let (status, _) = echo(http.clone(), format!("{app_url}/v1/echo")).await;
    assert_eq!(status, 200);
    // A stop after the restart still reaches the runner over O2R.
    let r = http
        .post(session["control_url"].as_str().unwrap().to_string() + "/stop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (line["event"].as_str(), line["session_id"].as_str()),
        (Some("released"), Some(sid.as_str()))
    );
    drop(runner.stdin.take());
    let _ = runner.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_shakes_hands_is_dropped() {
    use tokio::io::AsyncReadExt;
    let shim = Shim::start(&[]);
    let addr = shim.uri.trim_start_matches("https://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("closed by the shim, not left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    assert!(discovery(&insecure_http(), &shim).await.is_empty());
}

/// Beyond go-livepeer: a dynamic runner (anyone with the bootstrap secret)
/// cannot point gateways' requests at the orchestrator's own listeners
/// (the CLI port registers runners without credentials) or at link-local
/// metadata services; runners on loopback or private addresses are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_runner_cannot_target_the_orchestrator_itself() {
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let beat_url = format!("{}/runners/heartbeat", shim.uri);
    let https = shim.uri.replace("https://", "http://");
    for (target, why) in [
        (shim.cli.clone(), "one of the orchestrator's own listeners"),
        (
            shim.cli.replace("127.0.0.1", "localhost"),
            "one of the orchestrator's own listeners",
        ),
        (https, "one of the orchestrator's own listeners"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "a link-local address",
        ),
    ] {
        let (status, body) = post_json(
            &http,
            &beat_url,
            Some(SECRET),
            &json!({"runner_url": target, "app": "evil/app", "capacity": 1}),
        )
        .await;
        assert_eq!(
            (status, body.trim()),
            (400, format!("runner_url must not be {why}").as_str()),
            "{target}"
        );
    }
    assert!(discovery(&http, &shim).await.is_empty());
    let (status, body) = post_json(
        &http,
        &beat_url,
        Some(SECRET),
        &json!({"runner_url": format!("http://127.0.0.1:{}", free_port()), "app": "fine/app", "capacity": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
