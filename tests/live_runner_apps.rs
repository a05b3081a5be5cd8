//! lpworker as a go-livepeer 0.9 Live Runner (`lpworker attach
//! --live-runner`), end to end over real sockets and processes: registered
//! with `lpworker orchestrator`, its AI pipelines as single-shot apps and
//! live transcoding as a persistent app over trickle, driven by the
//! official SDK (livepeer-gateway 1.0.0, unchanged) and by lpworker's own
//! trickle client; its heartbeats checked against a recorder that follows
//! go-livepeer's handler.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::live::{
    discovery, frame_times, free_port, models_dir, python, sdk_script, start_runner, KillOnDrop,
    Runner, Shim, SECRET,
};
use common::{insecure_http, ready_line, tempdir};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lpworker_attaches_as_a_live_runner_and_serves_its_models_through_the_shim() {
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let models = models_dir();
    let mut runner = start_runner(
        &shim.uri,
        &[
            "--ai-models",
            "upscale:lpworker/nearest-2x:true",
            "--models-dir",
            &models,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let app = loop {
        let listed = discovery(&http, &shim).await;
        if let Some(r) = listed
            .iter()
            .find(|r| r["app"] == "upscale/lpworker/nearest-2x")
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the runner's app is not listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(app["mode"], "single-shot");
    assert_eq!(app["version"], env!("CARGO_PKG_VERSION"));
    // ai-runner's upscale route through the orchestrator's proxy.
    let input = image::RgbImage::from_fn(12, 8, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 30) as u8, 5])
    });
    let png = lpworker::ai::media::encode_png(&input).unwrap();
    let form = reqwest::multipart::Form::new()
        .text("prompt", "x")
        .text("model_id", "lpworker/nearest-2x")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png).file_name("in.png"),
        );
    let url = format!("{}/upscale", app["url"].as_str().unwrap());
    let r = http.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let data_url = body["images"][0]["url"].as_str().unwrap();
    let png = data_url.split_once("base64,").unwrap().1;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png)
        .unwrap();
    let out = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(out.dimensions(), (24, 16));
    // A request without its image: ai-runner's 422, through the proxy.
    let r = http
        .post(&url)
        .multipart(reqwest::multipart::Form::new().text("prompt", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Paused past the TTL, the runner is forgotten; resumed, it registers
    // again under the same ID.
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &runner.process.0.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    let before = app["url"].clone();
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        discovery(&http, &shim).await.is_empty(),
        "swept while paused"
    );
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = discovery(&http, &shim).await;
        if let Some(r) = listed.first() {
            assert_eq!(r["url"], before, "registered again under its own ID");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner did not register again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM: the runner unregisters before it stops.
    let ok = Command::new("kill")
        .args(["-TERM", &runner.process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(runner.process.0.wait().unwrap().success());
    assert!(discovery(&http, &shim).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_transcoding_session_over_trickle() {
    use bytes::Bytes;
    use lpworker::trickle::client::{http_client_builder, TricklePublisher, TrickleSubscriber};
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let _runner = transcoding_runner(&shim.uri, "P240p30fps16x9,P144p30fps16x9", 2);
    let app = listed_app(&http, &shim).await;
    assert_eq!(app["app"], "transcode/P240p30fps16x9,P144p30fps16x9");
    assert_eq!(app["mode"], "persistent");
    assert_eq!(app["capacity"], 2);

    // Reserve, then start the session: the app makes its channels.
    let session: Value = http
        .post(app["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_url = session["app_url"].as_str().unwrap();
    let r = http
        .post(format!("{app_url}/transcode"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["manifest_id"], session["session_id"]);
    let renditions = started["renditions"].as_array().unwrap().clone();
    assert_eq!(renditions.len(), 2);

    // Three 1 s segments, a broken one among them; every good one comes
    // back in every rendition under its own sequence number.
    let dir = tempdir();
    let client = http_client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut publisher =
        TricklePublisher::new(client.clone(), started["publish_url"].as_str().unwrap());
    publisher.start(0).await.unwrap();
    let mut inputs = Vec::new();
    for i in 0..3 {
        let (_, bytes) = common::clip(
            dir.path(),
            &format!("in{i}"),
            &common::Clip {
                seconds: 1.0,
                width: 640,
                height: 360,
                ..common::Clip::default()
            },
        );
        inputs.push(bytes);
    }
    for (i, bytes) in inputs.iter().enumerate() {
        if i == 1 {
            // Not MPEG-TS: reported and skipped.
            assert_eq!(
                publisher
                    .write_segment(Bytes::from_static(b"garbage"))
                    .await
                    .unwrap(),
                1
            );
        }
        let seq = publisher
            .write_segment(Bytes::from(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(seq, if i == 0 { 0 } else { i as i64 + 1 });
    }
    for (r, (w, h)) in renditions.iter().zip([(426, 240), (256, 144)]) {
        let mut sub =
            TrickleSubscriber::new(client.clone(), r["subscribe_url"].as_str().unwrap(), 0);
        let mut seqs = Vec::new();
        for _ in 0..4 {
            let mut seg = tokio::time::timeout(Duration::from_secs(60), sub.next_segment())
                .await
                .expect("a rendition segment within a minute")
                .unwrap()
                .unwrap();
            seqs.push(seg.seq());
            let bytes = seg.read_all(16 << 20).await.unwrap();
            if seg.seq() == 1 {
                // The broken input: an empty segment keeps the numbering.
                assert!(bytes.is_empty());
                continue;
            }
            let path = dir
                .path()
                .join(format!("{}-{}.ts", r["name"].as_str().unwrap(), seg.seq()));
            std::fs::write(&path, &bytes).unwrap();
            let probed = common::ffprobe(&path);
            assert_eq!((probed.width, probed.height), (w, h));
            assert!((probed.fps - 30.0).abs() < 0.5, "{probed:?}");
            assert!((28..=31).contains(&probed.frames), "{probed:?}");
        }
        // Sequence 1 was the broken input: skipped, not fatal.
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }
    // The events channel reported the broken segment.
    let mut events =
        TrickleSubscriber::new(client.clone(), started["events_url"].as_str().unwrap(), 0);
    let mut saw_error = false;
    for _ in 0..8 {
        let Ok(Ok(Some(mut seg))) =
            tokio::time::timeout(Duration::from_secs(5), events.next_segment()).await
        else {
            break;
        };
        let event: Value = serde_json::from_slice(&seg.read_all(1 << 20).await.unwrap()).unwrap();
        if event["type"] == "error" && event["seq"] == 1 {
            saw_error = true;
            break;
        }
    }
    assert!(
        saw_error,
        "the broken segment was reported on the events channel"
    );

    // Stopping the session closes its channels; the runner keeps serving.
    let r = http
        .post(format!("{}/stop", session["control_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(format!("{}/next", started["publish_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(discovery(&http, &shim).await[0]["capacity_used"], 0);
}

/// go-livepeer's `LiveRunnerHeartbeatRequest` (ai/runner/live_runner.go at
/// 176aa415) with its Go types. Unknown fields are refused here where Go
/// would drop them silently: a misspelt field is a defect either way.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GoHeartbeat {
    #[serde(default)]
    runner_id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    proxy: bool,
    runner_url: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    gpu: Option<GoGpu>,
    app: String,
    capacity: i64,
    price_info: GoPriceInfo,
    #[serde(default)]
    session_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GoGpu {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    vram_mb: i64,
}

/// `price` is a Go `json.Number`: a JSON number, or a string holding one.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GoPriceInfo {
    price: Value,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    unit: String,
}

#[derive(Debug, Clone)]
struct Beat {
    at: Instant,
    authorization: String,
    body: GoHeartbeat,
}

#[derive(Default)]
struct Recorded {
    beats: Vec<Beat>,
    unregistered: Vec<(String, String)>,
    /// Runner IDs to forget once (as a sweep does): their next beat is 401.
    forget: Vec<String>,
    /// Answered with a heartbeat secret so far, by app.
    ids: std::collections::HashMap<String, String>,
}

const HEARTBEAT_SECRET: &str = "recorded-heartbeat-secret";

/// A heartbeat endpoint that answers as go-livepeer's `handleHeartbeat`
/// does (1 s interval, 4 s TTL) and records what it was sent.
async fn recorder() -> (String, Arc<Mutex<Recorded>>) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    type Shared = Arc<Mutex<Recorded>>;
    async fn heartbeat(
        State(rec): State<Shared>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let parsed: GoHeartbeat = match serde_json::from_str(&body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("invalid heartbeat: {e}: {body}"),
                )
            }
        };
        let mut rec = rec.lock().unwrap();
        rec.beats.push(Beat {
            at: Instant::now(),
            authorization: authorization.clone(),
            body: parsed.clone(),
        });
        let known = rec.ids.get(&parsed.app).cloned();
        let registering = match &known {
            Some(id) if *id == parsed.runner_id => {
                if let Some(i) = rec.forget.iter().position(|f| *f == parsed.runner_id) {
                    rec.forget.remove(i);
                    rec.ids.remove(&parsed.app);
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                if authorization != HEARTBEAT_SECRET {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                false
            }
            _ if authorization == SECRET => true,
            _ => return (StatusCode::UNAUTHORIZED, String::new()),
        };
        let id = if parsed.runner_id.is_empty() {
            format!("rec-{}", rec.ids.len() + rec.unregistered.len() + 1)
        } else {
            parsed.runner_id.clone()
        };
        rec.ids.insert(parsed.app.clone(), id.clone());
        let mut answer = json!({
            "runner_id": id,
            "heartbeat_interval": "1s",
            "heartbeat_ttl": "4s",
            "session_ids": [],
        });
        if registering {
            answer["heartbeat_secret"] = json!(HEARTBEAT_SECRET);
        }
        (StatusCode::OK, answer.to_string())
    }
    async fn unregister(
        State(rec): State<Shared>,
        UrlPath(id): UrlPath<String>,
        headers: HeaderMap,
    ) -> StatusCode {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        rec.lock().unwrap().unregistered.push((id, authorization));
        StatusCode::NO_CONTENT
    }
    let rec: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/runners/heartbeat", axum::routing::post(heartbeat))
        .route("/runners/{id}/unregister", axum::routing::post(unregister))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_follow_go_livepeers_handler() {
    let (orch, rec) = recorder().await;
    // The upscaler priced in its aiModels entry, the transcoding app by
    // the runner's flag.
    let dir = tempdir();
    let models = dir.path().join("aiModels.json");
    std::fs::write(
        &models,
        r#"[{"pipeline":"upscale","model_id":"lpworker/nearest-2x","warm":true,"price_per_unit":"0.5","currency":"USD"}]"#,
    )
    .unwrap();
    let mut runner = start_runner(
        &orch,
        &[
            "--ai-models",
            models.to_str().unwrap(),
            "--models-dir",
            &models_dir(),
            "--transcode",
            "--transcode-ladder",
            "P144p30fps16x9",
            "--max-sessions",
            "3",
            "--price-usd-per-hour",
            "0.25",
        ],
    );
    assert_eq!(runner.apps, 2);
    let pid = runner.process.0.id().to_string();

    // Registered, then beating with the derived secret: a few seconds of it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let upscale_id = rec.lock().unwrap().ids["upscale/lpworker/nearest-2x"].clone();
    rec.lock().unwrap().forget.push(upscale_id.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = runner.process.0.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let rec = rec.lock().unwrap();
    for (app, mode, capacity, price, metadata) in [
        (
            "upscale/lpworker/nearest-2x",
            "single-shot",
            1,
            "0.5",
            json!({"pipeline": "upscale", "model_id": "lpworker/nearest-2x", "runtime": "onnx"}),
        ),
        (
            "transcode/P144p30fps16x9",
            "persistent",
            3,
            "0.25",
            json!({"renditions": ["P144p30fps16x9"], "backend": "cpu", "preset": "veryfast"}),
        ),
    ] {
        let beats: Vec<&Beat> = rec.beats.iter().filter(|b| b.body.app == app).collect();
        let t0 = rec.beats[0].at;
        let shown: Vec<_> = beats
            .iter()
            .map(|b| {
                (
                    b.at - t0,
                    b.authorization.len(),
                    b.body.status.clone(),
                    b.body.runner_id.clone(),
                )
            })
            .collect();
        assert!(beats.len() >= 5, "{app}: {} beats: {shown:?}", beats.len());
        // The first with the bootstrap secret and no ID; the others under
        // the ID given, with the derived secret.
        let first = beats[0];
        assert_eq!(first.authorization, SECRET, "{app}");
        assert!(first.body.runner_id.is_empty(), "{app}");
        let id = &beats[1].body.runner_id;
        assert!(id.starts_with("rec-"), "{app}: {id}");
        for b in &beats {
            assert_eq!(b.body.runner_url, runner.url);
            assert_eq!(b.body.mode, mode);
            assert_eq!(b.body.capacity, capacity);
            assert_eq!(b.body.version, env!("CARGO_PKG_VERSION"));
            assert!(
                b.body.status == "ready" || b.body.status == "draining",
                "{:?}",
                b.body.status
            );
            assert_eq!(b.body.price_info.price, json!(price));
            let meta: Value = serde_json::from_str(&b.body.metadata).unwrap();
            assert_eq!(meta, metadata);
            assert_eq!(
                (
                    b.body.price_info.currency.as_str(),
                    b.body.price_info.unit.as_str()
                ),
                ("usd", "hour")
            );
            assert!(b.body.session_ids.as_ref().is_some_and(|s| s.is_empty()));
            assert!(!b.body.proxy && b.body.label.is_empty());
            // A machine without a GPU reports none rather than a made-up one.
            assert!(b.body.gpu.is_none(), "{:?}", b.body.gpu);
        }
        // Cadence: the interval the answer named (1 s), not a busy loop.
        // Gaps around the forced re-registration and the drain are left out.
        let steady: Vec<Duration> = beats
            .windows(2)
            .filter(|w| {
                w[0].authorization == HEARTBEAT_SECRET && w[1].authorization == HEARTBEAT_SECRET
            })
            .filter(|w| w[0].body.status == "ready" && w[1].body.status == "ready")
            .map(|w| w[1].at - w[0].at)
            .collect();
        assert!(steady.len() >= 3, "{app}: {steady:?}");
        for gap in &steady {
            assert!(
                *gap >= Duration::from_millis(800) && *gap <= Duration::from_millis(1600),
                "{app}: beats {steady:?} apart"
            );
        }
        // SIGTERM: hidden first (draining), then unregistered with the
        // heartbeat secret under the ID it held last.
        let last = beats.last().unwrap();
        assert_eq!(last.body.status, "draining", "{app}");
        let last_id = rec.ids.get(app).cloned().unwrap();
        assert!(
            rec.unregistered
                .contains(&(last_id.clone(), HEARTBEAT_SECRET.to_string())),
            "{app}: {:?}",
            rec.unregistered
        );
    }
    // Forgotten once (401), the upscale app registered again with the
    // bootstrap secret, keeping its ID.
    let upscale: Vec<&Beat> = rec
        .beats
        .iter()
        .filter(|b| b.body.app == "upscale/lpworker/nearest-2x")
        .collect();
    let refused = upscale
        .iter()
        .skip(1)
        .position(|b| b.authorization == SECRET)
        .expect("registered again after the 401")
        + 1;
    assert_eq!(upscale[refused].body.runner_id, upscale_id);
    assert_eq!(upscale[refused - 1].authorization, HEARTBEAT_SECRET);
}

/// `lpworker attach --live-runner --transcode` against `shim`, on a free
/// port, logging to a file kept after the test.
fn transcoding_runner(shim_uri: &str, ladder: &str, sessions: u32) -> Runner {
    let sessions = sessions.to_string();
    let runner = start_runner(
        shim_uri,
        &[
            "--transcode",
            "--live-preset",
            "veryfast",
            "--max-sessions",
            &sessions,
            "--transcode-ladder",
            ladder,
        ],
    );
    assert_eq!(runner.apps, 1, "see {}", runner.log.display());
    runner
}

/// Waits for the one app listed in the shim's discovery.
async fn listed_app(http: &reqwest::Client, shim: &Shim) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = discovery(http, shim).await.first() {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no app listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One continuous stream cut into `n` one-second MPEG-TS segments, each
/// starting on a keyframe, with the stream's own timestamps (as a camera
/// stream published live is).
fn live_segments(dir: &Path, n: usize, size: &str) -> Vec<std::path::PathBuf> {
    let source = format!("testsrc2=size={size}:rate=30");
    let pattern = dir.join("live-%03d.ts");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &source,
        ])
        .args([
            "-t",
            &n.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
        ])
        .args([
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
        ])
        .args([
            "-bf",
            "2",
            "-f",
            "segment",
            "-segment_time",
            "1",
            "-segment_format",
            "mpegts",
        ])
        .args(["-reset_timestamps", "0"])
        .arg(&pattern)
        .status()
        .unwrap();
    assert!(status.success());
    let files: Vec<_> = (0..n)
        .map(|i| dir.join(format!("live-{i:03}.ts")))
        .collect();
    assert!(files.iter().all(|f| f.exists()), "{files:?}");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_streams_through_the_transcoding_app_with_continuous_timestamps() {
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let runner = transcoding_runner(&shim.uri, "P240p30fps16x9,P144p30fps16x9", 1);
    let log = runner.log.clone();
    let app = listed_app(&http, &shim).await;
    let dir = tempdir();
    let inputs = live_segments(dir.path(), 4, "640x360");
    let input_times: Vec<Vec<f64>> = inputs.iter().map(|p| frame_times(p)).collect();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let run = Command::new(python())
        .arg(sdk_script("live_transcode_client.py"))
        .args([
            "--orch",
            &shim.uri,
            "--app",
            app["app"].as_str().unwrap(),
            "--out",
        ])
        .arg(&out)
        .args(&inputs)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}\nrunner log: {}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr),
            log.display()
        )
    });
    assert_eq!(
        report["ok"],
        true,
        "{report}; runner log: {}",
        log.display()
    );
    for (name, (w, h)) in [
        ("P240p30fps16x9", (426, 240)),
        ("P144p30fps16x9", (256, 144)),
    ] {
        let segments = report["renditions"][name].as_array().unwrap();
        let seqs: Vec<i64> = segments
            .iter()
            .map(|s| s["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3], "{name}");
        let mut previous_end = f64::NEG_INFINITY;
        let mut all = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            let path = Path::new(s["path"].as_str().unwrap());
            let probed = common::ffprobe(path);
            assert_eq!((probed.width, probed.height), (w, h), "{name} {i}");
            assert!((probed.fps - 30.0).abs() < 0.5, "{name} {i}: {probed:?}");
            assert_eq!(
                probed.frames as usize,
                input_times[i].len(),
                "{name} {i}: every input frame"
            );
            let times = frame_times(path);
            // In order inside the segment, after the previous segment, and
            // where the input's frames were (the stream's own clock).
            assert!(
                times.windows(2).all(|w| w[1] > w[0]),
                "{name} {i}: {times:?}"
            );
            assert!(
                times[0] > previous_end,
                "{name} {i}: starts at {} before {previous_end}",
                times[0]
            );
            let input_start = input_times[i].iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(
                (times[0] - input_start).abs() < 0.05,
                "{name} {i}: {} vs input {input_start}",
                times[0]
            );
            previous_end = *times.last().unwrap();
            all.extend(times);
        }
        // The renditions' segments played back to back are one stream.
        let frame = 1.0 / 30.0;
        for w in all.windows(2) {
            assert!(
                ((w[1] - w[0]) - frame).abs() < 0.002,
                "{name}: a step of {} s",
                w[1] - w[0]
            );
        }
    }
    // Status events in the shape the events channel promises.
    let events = report["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "status" && e["fps_in"].is_number()),
        "{events:?}"
    );
    // Closed by the SDK: the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while discovery(&http, &shim).await[0]["capacity_used"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the session's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reserves a session on the listed transcoding app and starts it.
async fn start_transcoding(http: &reqwest::Client, app: &Value) -> (Value, Value) {
    let session: Value = http
        .post(app["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!(
            "{}/transcode",
            session["app_url"].as_str().unwrap()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (session, r.json().await.unwrap())
}

/// Reads a rendition's segments from `from` until `count` arrived.
async fn rendition_segments(
    client: &reqwest::Client,
    url: &str,
    from: i64,
    count: usize,
) -> Vec<(i64, bytes::Bytes)> {
    use lpworker::trickle::client::{RetryPolicy, SubscriberConfig, TrickleSubscriber};
    // Asked ahead of the live edge, it waits there (a minute at most).
    let config = SubscriberConfig {
        retry: RetryPolicy {
            max_attempts: 240,
            ..RetryPolicy::default()
        },
        ..SubscriberConfig::default()
    };
    let mut sub = TrickleSubscriber::with_config(client.clone(), url, from, config);
    let mut out = Vec::new();
    while out.len() < count {
        let mut seg = tokio::time::timeout(Duration::from_secs(60), sub.next_segment())
            .await
            .expect("a rendition segment within a minute")
            .unwrap()
            .expect("the rendition goes on");
        let bytes = seg.read_all(16 << 20).await.unwrap();
        out.push((seg.seq(), bytes));
    }
    out
}

/// Reads the events channel (from the start) until `wanted` matches one.
async fn wait_for_event(
    client: &reqwest::Client,
    url: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    use lpworker::trickle::client::TrickleSubscriber;
    let mut events = TrickleSubscriber::new(client.clone(), url, 0);
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), events.next_segment()).await;
        let Ok(Ok(Some(mut seg))) = next else {
            panic!("no such event; saw {seen:?}");
        };
        let event: Value = serde_json::from_slice(&seg.read_all(1 << 20).await.unwrap()).unwrap();
        if wanted(&event) {
            return event;
        }
        seen.push(event);
    }
}

async fn capacity_used_becomes(http: &reqwest::Client, shim: &Shim, used: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let listed = discovery(http, shim).await;
        if listed.first().is_some_and(|r| r["capacity_used"] == used) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "capacity_used never became {used}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_lost_peers_end_sessions_cleanly() {
    use bytes::Bytes;
    use lpworker::trickle::client::{http_client_builder, TricklePublisher};
    let dir = tempdir();
    let port = free_port();
    let shim = Shim::start_in(dir.path(), port, &[]);
    let http = insecure_http();
    let mut runner = transcoding_runner(&shim.uri, "P144p30fps16x9", 2);
    let log = runner.log.clone();
    let app = listed_app(&http, &shim).await;
    let client = http_client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let segments = live_segments(dir.path(), 3, "320x180");
    let good: Vec<Bytes> = segments
        .iter()
        .map(|p| Bytes::from(std::fs::read(p).unwrap()))
        .collect();

    // Session A: a truncated segment, then a gap in the numbering.
    let (_, a) = start_transcoding(&http, &app).await;
    let rendition = a["renditions"][0]["subscribe_url"]
        .as_str()
        .unwrap()
        .to_string();
    let publisher = TricklePublisher::new(client.clone(), a["publish_url"].as_str().unwrap());
    publisher.publish(0, good[0].clone()).await.unwrap();
    publisher
        .publish(1, good[1].slice(..good[1].len() / 3))
        .await
        .unwrap();
    publisher.publish(2, good[2].clone()).await.unwrap();
    let out = rendition_segments(&client, &rendition, 0, 3).await;
    assert_eq!(
        out.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(!out[0].1.is_empty() && !out[2].1.is_empty());
    // The truncated one: what could be decoded, or an empty segment; never
    // more frames than it carried, and the segment after it is whole.
    let path = dir.path().join("truncated.ts");
    std::fs::write(&path, &out[1].1).unwrap();
    if !out[1].1.is_empty() {
        assert!(common::ffprobe(&path).frames < 30);
    }
    std::fs::write(&path, &out[2].1).unwrap();
    assert_eq!(common::ffprobe(&path).frames, 30);
    // A reader that falls behind the server's retention (five segments)
    // jumps to the live edge: a long segment keeps the app busy while eight
    // more are published; it reports what it missed and goes on.
    let (_, long) = common::clip(
        dir.path(),
        "long",
        &common::Clip {
            width: 1280,
            height: 720,
            seconds: 3.0,
            ..common::Clip::default()
        },
    );
    publisher.publish(3, Bytes::from(long)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 4..12 {
        publisher
            .publish(seq, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    // As go-livepeer's readers, it resumes at the next segment to be
    // written when it noticed (12 or 13, as the timing fell), not at the
    // oldest one still kept.
    publisher.publish(12, good[0].clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.publish(13, good[1].clone()).await.unwrap();
    let gap = wait_for_event(&client, a["events_url"].as_str().unwrap(), |e| {
        e["type"] == "error" && e["seq"].as_i64().is_some_and(|s| s >= 12)
    })
    .await;
    assert!(gap["message"].as_str().unwrap().contains("missed"), "{gap}");
    let resumed = gap["seq"].as_i64().unwrap();
    let out = rendition_segments(&client, &rendition, resumed, 1).await;
    assert_eq!(out[0].0, resumed);
    assert!(!out[0].1.is_empty());

    // The input channel disappears (its publisher closes it): the session
    // ends and its slot goes back to the orchestrator.
    let mut closing = TricklePublisher::new(client.clone(), a["publish_url"].as_str().unwrap());
    closing.close().await.unwrap();
    capacity_used_becomes(&http, &shim, 0, Duration::from_secs(10)).await;

    // Heartbeats stop (the runner paused past the TTL): the orchestrator
    // releases the session and closes its channels; resumed, the runner
    // registers again, and the session's work stops here too.
    let (b_session, b) = start_transcoding(&http, &app).await;
    let b_input = TricklePublisher::new(client.clone(), b["publish_url"].as_str().unwrap());
    b_input.publish(0, good[0].clone()).await.unwrap();
    rendition_segments(
        &client,
        b["renditions"][0]["subscribe_url"].as_str().unwrap(),
        0,
        1,
    )
    .await;
    let pid = runner.process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        discovery(&http, &shim).await.is_empty(),
        "swept while paused"
    );
    let r = http
        .get(format!("{}/next", b["publish_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the released session's channels are closed"
    );
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let app = listed_app(&http, &shim).await;
    capacity_used_becomes(&http, &shim, 0, Duration::from_secs(5)).await;
    let r = http
        .post(format!(
            "{}/transcode",
            b_session["app_url"].as_str().unwrap()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the released session is gone");

    // The orchestrator goes away mid-session: the runner gives its
    // sessions up after the TTL and, when an orchestrator answers on that
    // address again, registers with it and serves.
    let (_, c) = start_transcoding(&http, &app).await;
    TricklePublisher::new(client.clone(), c["publish_url"].as_str().unwrap())
        .publish(0, good[0].clone())
        .await
        .unwrap();
    rendition_segments(
        &client,
        c["renditions"][0]["subscribe_url"].as_str().unwrap(),
        0,
        1,
    )
    .await;
    drop(shim);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("every session is released")
            && text.contains("session released by the orchestrator: stopped")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner kept a session of a lost orchestrator; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let fresh = tempdir();
    let shim = Shim::start_in(fresh.path(), port, &[]);
    let app = listed_app(&http, &shim).await;
    let (_, d) = start_transcoding(&http, &app).await;
    TricklePublisher::new(client.clone(), d["publish_url"].as_str().unwrap())
        .publish(0, good[0].clone())
        .await
        .unwrap();
    let out = rendition_segments(
        &client,
        d["renditions"][0]["subscribe_url"].as_str().unwrap(),
        0,
        1,
    )
    .await;
    assert!(!out[0].1.is_empty());
    assert!(
        runner.process.0.try_wait().unwrap().is_none(),
        "the runner kept running throughout"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "see {}", log.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_app_streams_through_the_proxy_and_the_runner_passes_as_a_static_one() {
    use futures::StreamExt;
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let models = models_dir();
    let runner = start_runner(
        &shim.uri,
        &[
            "--ai-models",
            "llm:lpworker/tiny-llama:true",
            "--models-dir",
            &models,
        ],
    );
    assert_eq!(runner.apps, 1);
    let app = listed_app(&http, &shim).await;
    assert_eq!(app["app"], "llm/lpworker/tiny-llama");
    assert_eq!(app["mode"], "single-shot");

    // ai-runner's LLM route, streamed, through the orchestrator's proxy.
    let url = format!("{}/llm", app["url"].as_str().unwrap());
    let chat = json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "model": "lpworker/tiny-llama", "max_tokens": 24, "temperature": 0, "stream": true,
    });
    let r = http.post(&url).json(&chat).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut reads = 0;
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        reads += 1;
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data events"))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let deltas: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-llama/golden.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(deltas, golden["cases"][0]["text"].as_str().unwrap());
    // Event by event, not the whole body at the end: a buffering proxy
    // hands this small body over in one read.
    assert!(reads >= 2, "{reads} reads for {} events", events.len());
    // A JSON body for the LLM that is not an object: FastAPI's 422.
    let r = http.post(&url).json(&json!([1, 2])).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // The same server as a static runner: go-livepeer's runners.json entry
    // with `health_url: /health` registers healthy.
    let entry = json!({
        "label": "lpworker-llm", "routing": "label", "runner_url": runner.url,
        "health_url": "/health", "app": "llm/lpworker/tiny-llama-static",
        "mode": "single-shot", "capacity": 1
    });
    let r = http
        .post(format!("{}/registerLiveRunners", shim.cli))
        .json(&json!({"runners": [entry]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["runners"][0]["healthy"], true, "{out}");
    let listed = discovery(&http, &shim).await;
    let static_app = listed
        .iter()
        .find(|r| r["app"] == "llm/lpworker/tiny-llama-static")
        .expect("listed");
    let mut plain = chat.clone();
    plain["stream"] = false.into();
    let r = http
        .post(format!("{}/llm", static_app["url"].as_str().unwrap()))
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        golden["cases"][0]["text"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hides_the_runner_lets_live_work_finish_then_unregisters() {
    use bytes::Bytes;
    use lpworker::trickle::client::{http_client_builder, TricklePublisher};
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let mut runner = start_runner(
        &shim.uri,
        &[
            "--transcode",
            "--transcode-ladder",
            "P144p30fps16x9",
            "--max-sessions",
            "2",
            "--drain-timeout",
            "4",
        ],
    );
    let app = listed_app(&http, &shim).await;
    let client = http_client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let dir = tempdir();
    let segments = live_segments(dir.path(), 2, "320x180");
    let (_, started) = start_transcoding(&http, &app).await;
    let rendition = started["renditions"][0]["subscribe_url"]
        .as_str()
        .unwrap()
        .to_string();
    let input = TricklePublisher::new(client.clone(), started["publish_url"].as_str().unwrap());
    input
        .publish(0, Bytes::from(std::fs::read(&segments[0]).unwrap()))
        .await
        .unwrap();
    rendition_segments(&client, &rendition, 0, 1).await;

    let pid = runner.process.0.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Hidden at once: no new session is routed to a runner going away.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !discovery(&http, &shim).await.is_empty() {
        assert!(Instant::now() < deadline, "still listed while draining");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The live session in flight still works while the drain lasts.
    input
        .publish(1, Bytes::from(std::fs::read(&segments[1]).unwrap()))
        .await
        .unwrap();
    let out = rendition_segments(&client, &rendition, 1, 1).await;
    assert_eq!(out[0].0, 1);
    assert!(!out[0].1.is_empty());
    // At the drain timeout the session is cut, the runner unregisters
    // (its session released at the orchestrator) and exits cleanly.
    let status = runner.process.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(12),
        "{took:?}"
    );
    let r = http
        .get(format!("{}/next", started["publish_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the session was released with the runner");
    let log = std::fs::read_to_string(&runner.log).unwrap();
    assert!(
        log.contains("drain timed out"),
        "see {}",
        runner.log.display()
    );
    assert!(
        log.contains("Live Runner unregistered"),
        "see {}",
        runner.log.display()
    );
}

/// Counts the requests it gets: the place a forged session callback points.
async fn hit_counter() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { axum::Json(json!({"channels": []})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

/// Only its orchestrator can use the runner. Outside the secret path of its
/// URL nothing but health is served; a session started straight at the
/// runner with a callback pointing anywhere but the orchestrator is refused
/// before anything is called, and one with a token the orchestrator never
/// issued is refused by the orchestrator (no work, no slot taken); a public
/// address without a secret path is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_orchestrator_can_use_the_runner() {
    let shim = Shim::start(&[]);
    let http = insecure_http();
    let runner = transcoding_runner(&shim.uri, "P144p30fps16x9", 1);
    let app = listed_app(&http, &shim).await;
    let (root, _secret) = runner.url.rsplit_once('/').unwrap();
    for path in ["/transcode", "/x/transcode", "/upscale", "/"] {
        let r = http.post(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = http.get(format!("{root}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let forge = |control: String| {
        http.post(format!("{}/transcode", runner.url))
            .header("Livepeer-Session-Id", "forged")
            .header("Livepeer-Session-Token", "forged-token")
            .header("Livepeer-Session-Control", control)
            .json(&json!({}))
            .send()
    };
    let (elsewhere, hits) = hit_counter().await;
    let r = forge(format!("{elsewhere}/runner/x/session/forged"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("not this runner's orchestrator"));
    // The orchestrator's own name as the prefix of another host's.
    let r = forge(format!("{}.evil.invalid/runner/x/session/forged", shim.uri))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Under the orchestrator, with a token it never issued: its callback
    // refuses, so the start fails and no session exists.
    let route = app["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .nth(1)
        .unwrap()
        .to_string();
    let r = forge(format!("{}/runner/{route}/session/forged", shim.uri))
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "{}", r.text().await.unwrap());
    // The one slot is still free: a paid-for (here off-chain) session starts.
    let (_session, started) = start_transcoding(&http, &app).await;
    assert!(started["publish_url"].as_str().is_some());

    // A public address with no secret path: refused, saying what to do.
    let port = free_port();
    let mut refused = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args(["attach", "--live-runner", "-orchAddr", &shim.uri])
            .args(["-orchSecret", SECRET, "--transcode", "--runner-url"])
            .arg(format!("http://192.0.2.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "an open runner started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let mut said = String::new();
    std::io::Read::read_to_string(&mut refused.0.stderr.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("secret path"), "{said}");
    assert!(said.contains("0.0.0.0:"), "{said}");
    // With one, it starts.
    let mut ok = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args(["attach", "--live-runner", "-orchAddr", &shim.uri])
            .args(["-orchSecret", SECRET, "--transcode", "--runner-url"])
            .arg(format!("http://192.0.2.1:{port}/0123456789abcdefghij"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = ready_line(&mut ok.0);
    assert!(
        line.starts_with("lpworker attach live runner listening"),
        "{line}"
    );
}
