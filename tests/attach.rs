//! `lpworker attach` against an in-repo test orchestrator speaking go-livepeer's
//! remote transcoder protocol over TLS with a self-signed certificate.

mod common;

use std::process::Command;
use std::time::Duration;

use common::orch::{parse_multipart, Posted, TestOrch};
use common::{clip, ffprobe, tempdir, Clip, Logged};
use lpworker::proto::lp_rpc as net;

const SECRET: &str = "orch-secret";

/// A running `lpworker attach`, with its log lines collected.
fn start_attach(orch: &TestOrch, secret: &str, extra: &[&str]) -> Logged {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
    // go-livepeer's flag spellings.
    cmd.args([
        "attach",
        "-orchAddr",
        &orch.addr.to_string(),
        "-orchSecret",
        secret,
    ]);
    if !extra.contains(&"--preset") {
        cmd.args(["--preset", "veryfast"]);
    }
    Logged::spawn(cmd.args(extra), "attach")
}

fn profile(
    name: &str,
    w: i32,
    h: i32,
    bitrate: i32,
    format: net::video_profile::Format,
) -> net::VideoProfile {
    net::VideoProfile {
        name: name.into(),
        width: w,
        height: h,
        bitrate,
        fps: 30,
        format: format as i32,
        ..Default::default()
    }
}

fn notify(url: String, task_id: i64, profiles: Vec<net::VideoProfile>) -> net::NotifySegment {
    net::NotifySegment {
        url,
        task_id,
        orch_id: "offchain".into(),
        profiles: b"invalid".to_vec(),
        seg_data: Some(net::SegData {
            manifest_id: b"manifest".to_vec(),
            seq: task_id,
            duration: 1000,
            profiles: b"invalid".to_vec(),
            auth_token: Some(net::AuthToken {
                session_id: "sess".into(),
                ..Default::default()
            }),
            full_profiles3: profiles,
            ..Default::default()
        }),
    }
}

fn result_for(orch: &TestOrch, task_id: i64) -> Option<Posted> {
    orch.results()
        .into_iter()
        .find(|p| p.headers.get("taskid").map(String::as_str) == Some(&task_id.to_string()))
}

async fn wait_result(orch: &TestOrch, task_id: i64, limit: Duration) -> Posted {
    orch.wait_for(limit, &format!("result of task {task_id}"), |s| {
        s.results
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.headers.get("taskid") == Some(&task_id.to_string()))
    })
    .await;
    result_for(orch, task_id).unwrap()
}

async fn wait_registrations(orch: &TestOrch, n: usize) {
    orch.wait_for(
        Duration::from_secs(20),
        &format!("{n} registrations"),
        |s| s.registrations.lock().unwrap().len() >= n,
    )
    .await;
}

/// Checks a success post byte by byte and returns its parts.
fn check_success(post: &Posted, secret: &str, decoded_pixels: u64) -> Vec<common::orch::Part> {
    assert_eq!(post.headers["authorization"], "Livepeer-Transcoder-1.0");
    assert_eq!(post.headers["credentials"], secret);
    assert_eq!(
        post.headers["pixels"],
        decoded_pixels.to_string(),
        "top-level Pixels = decoded pixels; body: {}",
        String::from_utf8_lossy(&post.body[..post.body.len().min(300)])
    );
    let content_type = &post.headers["content-type"];
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap_or_else(|| panic!("{content_type}"));
    parse_multipart(&post.body, boundary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_transcodes_and_posts_results_as_go_livepeer_expects() {
    use net::video_profile::Format;
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    let _attach = start_attach(&orch, SECRET, &["-maxSessions", "3"]);
    wait_registrations(&orch, 1).await;
    let reg = &orch.registrations()[0];
    assert!(reg.secret_ok);
    assert_eq!(reg.capacity, 3);
    let caps = reg.capabilities.as_ref().unwrap();
    assert_eq!(caps.version, "0.9.1");
    // H.264 (0), MPEG-TS (1), MP4 (2) and H.264 profiles (7-10) are offered.
    for c in [0u32, 1, 2, 7, 8, 9, 10, 11] {
        assert!(caps.bitstring[0] & (1 << c) != 0, "capability {c} missing");
    }
    assert!(caps.bitstring[0] & (1 << 14) == 0, "no perceptual hashes");

    let (_, bytes) = clip(
        dir.path(),
        "seg",
        &Clip {
            width: 640,
            height: 360,
            ..Default::default()
        },
    );
    let url = orch.put_segment("sess", 1, bytes);
    orch.push(notify(
        url,
        1001,
        vec![
            profile("P240p30fps16x9", 426, 240, 600_000, Format::Mpegts),
            profile("P360mp4", 640, 360, 1_200_000, Format::Mp4),
        ],
    ))
    .await;
    // A session teardown notice gets no result.
    orch.push(net::NotifySegment {
        seg_data: Some(net::SegData {
            auth_token: Some(net::AuthToken {
                session_id: "sess".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;

    let post = wait_result(&orch, 1001, Duration::from_secs(30)).await;
    let parts = check_success(&post, SECRET, 30 * 640 * 360);
    assert_eq!(parts.len(), 2, "one part per profile, in order");
    for (i, (part, (mime, w, h, ext))) in parts
        .iter()
        .zip([
            ("video/mp2t", 426, 240, "ts"),
            ("video/mp4", 640, 360, "mp4"),
        ])
        .enumerate()
    {
        assert_eq!(part.headers["content-type"], mime);
        assert_eq!(part.headers["content-length"], part.data.len().to_string());
        let path = dir.path().join(format!("part{i}.{ext}"));
        std::fs::write(&path, &part.data).unwrap();
        let p = ffprobe(&path);
        assert_eq!((p.width, p.height), (w, h));
        assert_eq!(
            part.headers["pixels"],
            (p.frames * u64::from(w * h)).to_string(),
            "part Pixels = encoded pixels"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        orch.results().len(),
        1,
        "the teardown notice must not produce a result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_exceeds_the_registered_capacity() {
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    let _attach = start_attach(&orch, SECRET, &["--max-sessions", "2"]);
    wait_registrations(&orch, 1).await;
    let (_, bytes) = clip(
        dir.path(),
        "seg",
        &Clip {
            width: 640,
            height: 360,
            ..Default::default()
        },
    );
    for task in 0..6 {
        let url = orch.put_segment("burst", task as u32, bytes.clone());
        orch.push(notify(
            url,
            task,
            vec![profile(
                "p",
                640,
                360,
                1_000_000,
                net::video_profile::Format::Mpegts,
            )],
        ))
        .await;
    }
    orch.wait_for(Duration::from_secs(60), "six results", |s| {
        s.results.lock().unwrap().len() == 6
    })
    .await;
    for task in 0..6 {
        let post = result_for(&orch, task).unwrap();
        assert_eq!(check_success(&post, SECRET, 30 * 640 * 360).len(), 1);
    }
    let max = orch.shared.max_in_progress();
    assert!(
        (1..=2).contains(&max),
        "{max} jobs ran at once with capacity 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_reported_and_retried_slowly() {
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    let mut attach = start_attach(&orch, "not-the-secret", &[]);
    wait_registrations(&orch, 1).await;
    assert!(!orch.registrations()[0].secret_ok);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        orch.registrations().len(),
        1,
        "a refused secret must not be retried quickly"
    );
    assert!(
        attach.logged("invalid secret"),
        "log: {:?}",
        attach.log.lock().unwrap()
    );
    assert!(attach.alive(), "the worker keeps running and will retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_segments_post_errors_and_the_worker_stays_up() {
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    let mut attach = start_attach(&orch, SECRET, &[]);
    wait_registrations(&orch, 1).await;
    let p = || {
        vec![profile(
            "p",
            426,
            240,
            600_000,
            net::video_profile::Format::Mpegts,
        )]
    };
    orch.push(notify(
        orch.put_segment("bad", 1, vec![0x47; 188 * 50]),
        1,
        p(),
    ))
    .await;
    orch.push(notify(
        format!("https://{}/stream/missing/9.tempfile", orch.addr),
        2,
        p(),
    ))
    .await;
    let mut incompatible = notify(orch.put_segment("bad", 3, vec![1; 10]), 3, p());
    incompatible.seg_data.as_mut().unwrap().capabilities = Some(net::Capabilities {
        bitstring: vec![1 << 14],
        ..Default::default()
    });
    orch.push(incompatible).await;
    let mut vp8 = p();
    vp8[0].encoder = net::video_profile::VideoCodec::Vp8 as i32;
    orch.push(notify(orch.put_segment("bad", 4, vec![1; 10]), 4, vp8))
        .await;

    // Only the orchestrator's own address is allowed beyond public ones.
    orch.push(notify(
        "http://169.254.169.254/latest/meta-data/".into(),
        6,
        p(),
    ))
    .await;

    for (task, expect) in [
        (1, "not a readable media container"),
        // The status is not repeated back (the fetch policy says no more).
        (2, "segment fetch failed"),
        (3, "incompatible segment capabilities"),
        (4, "VP8"),
        (6, "segment URL refused: not a public address"),
    ] {
        let post = wait_result(&orch, task, Duration::from_secs(30)).await;
        assert_eq!(
            post.headers["content-type"], "livepeer/transcoding-error",
            "task {task}"
        );
        assert_eq!(post.headers["pixels"], "0");
        assert_eq!(post.headers["credentials"], SECRET);
        let text = String::from_utf8(post.body).unwrap();
        assert!(
            text.contains(expect),
            "task {task}: {text:?} lacks {expect:?}"
        );
    }
    // Still working.
    let (_, good) = clip(dir.path(), "good", &Clip::default());
    orch.push(notify(orch.put_segment("good", 5, good), 5, p()))
        .await;
    let post = wait_result(&orch, 5, Duration::from_secs(30)).await;
    assert_eq!(check_success(&post, SECRET, 30 * 320 * 180).len(), 1);
    assert!(attach.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_orchestrator_restart_mid_job_and_drains_on_sigterm() {
    let dir = tempdir();
    let mut orch = TestOrch::start(SECRET, dir.path()).await;
    let mut attach = start_attach(&orch, SECRET, &["--preset", "medium"]);
    wait_registrations(&orch, 1).await;
    let (_, heavy) = clip(
        dir.path(),
        "heavy",
        &Clip {
            width: 1280,
            height: 720,
            seconds: 2.0,
            ..Default::default()
        },
    );
    let profiles = || {
        vec![
            profile(
                "a",
                1280,
                720,
                4_000_000,
                net::video_profile::Format::Mpegts,
            ),
            profile("b", 640, 360, 1_200_000, net::video_profile::Format::Mpegts),
        ]
    };
    orch.push(notify(
        orch.put_segment("s", 1, heavy.clone()),
        1,
        profiles(),
    ))
    .await;
    // Let the worker fetch the segment, then kill the orchestrator mid-job.
    orch.wait_for(Duration::from_secs(10), "the segment download", |s| {
        s.max_in_progress() >= 1
    })
    .await;
    // Give the download a moment to finish; the transcode itself takes seconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    orch.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    orch.restart().await;
    // The job finished while the orchestrator was away; its result still arrives.
    let post = wait_result(&orch, 1, Duration::from_secs(60)).await;
    assert_eq!(check_success(&post, SECRET, 60 * 1280 * 720).len(), 2);
    // And the worker registered again.
    wait_registrations(&orch, 2).await;
    orch.push(notify(
        orch.put_segment("s", 2, heavy.clone()),
        2,
        profiles(),
    ))
    .await;
    orch.wait_for(Duration::from_secs(10), "the second download", |s| {
        s.segments_fetched() >= 2
    })
    .await;

    // SIGTERM with a job in flight: it completes and posts, then exit 0.
    let kill = Command::new("kill")
        .args(["-TERM", &attach.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let post = wait_result(&orch, 2, Duration::from_secs(60)).await;
    assert_eq!(check_success(&post, SECRET, 60 * 1280 * 720).len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = attach.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attach did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

fn ai_job(
    task_id: i64,
    pipeline: &str,
    input_url: &str,
    request: serde_json::Value,
) -> net::NotifyAiJob {
    let data = serde_json::json!({"input_url": input_url, "request": request});
    net::NotifyAiJob {
        task_id,
        ai_job_data: Some(net::AiJobData {
            pipeline: pipeline.into(),
            request_data: serde_json::to_vec(&data).unwrap(),
        }),
    }
}

async fn wait_ai_result(orch: &TestOrch, task_id: i64) -> Posted {
    let id = task_id.to_string();
    orch.wait_for(
        Duration::from_secs(30),
        &format!("AI result {task_id}"),
        |s| {
            s.ai_results
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.headers.get("taskid") == Some(&id))
        },
    )
    .await;
    orch.shared
        .ai_results
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.headers["taskid"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_worker_registers_models_runs_jobs_and_posts_results() {
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    // Both roles from one process.
    let mut attach = start_attach(
        &orch,
        SECRET,
        &[
            "--transcode",
            "-aiModels",
            "upscale:lpworker/nearest-2x:true",
            "--models-dir",
            "models",
        ],
    );
    orch.wait_for(Duration::from_secs(20), "both registrations", |s| {
        !s.ai_registrations.lock().unwrap().is_empty()
            && !s.registrations.lock().unwrap().is_empty()
    })
    .await;
    let reg = orch.shared.ai_registrations.lock().unwrap()[0].clone();
    assert!(reg.secret_ok);
    let caps = reg.capabilities.unwrap();
    assert_eq!(caps.bitstring, vec![1 << 30], "Upscale is capability 30");
    let model =
        &caps.constraints.as_ref().unwrap().per_capability[&30].models["lpworker/nearest-2x"];
    assert!(model.warm);
    assert_eq!(model.capacity, 1);
    assert_eq!(
        (
            reg.hardware[0].pipeline.as_str(),
            reg.hardware[0].model_id.as_str()
        ),
        ("upscale", "lpworker/nearest-2x")
    );

    let input = image::RgbImage::from_fn(9, 6, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 40) as u8, 99])
    });
    let png = lpworker::ai::media::encode_png(&input).unwrap();
    let url = orch.put_segment("ai-req", 1, png);
    orch.push_ai(ai_job(
        5,
        "upscale",
        &url,
        serde_json::json!({"prompt": "x", "model_id": "lpworker/nearest-2x", "seed": 11}),
    ))
    .await;
    let post = wait_ai_result(&orch, 5).await;
    assert_eq!(post.headers["authorization"], "Livepeer-AI-Worker-1.0");
    assert_eq!(post.headers["credentials"], SECRET);
    assert_eq!(post.headers["pipeline"], "upscale");
    let boundary = post.headers["content-type"]
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap()
        .to_string();
    let parts = parse_multipart(&post.body, &boundary);
    assert_eq!(parts.len(), 2, "the image, then the JSON");
    assert_eq!(parts[0].headers["content-type"], "image/png");
    assert_eq!(
        parts[0].headers["content-disposition"],
        "attachment; filename=image_0.png"
    );
    assert_eq!(
        parts[0].headers["content-length"],
        parts[0].data.len().to_string()
    );
    let out = image::load_from_memory(&parts[0].data).unwrap().to_rgb8();
    assert_eq!(
        out,
        image::imageops::resize(&input, 18, 12, image::imageops::FilterType::Nearest)
    );
    assert_eq!(parts[1].headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&parts[1].data).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"images": [{"url": "image_0.png", "seed": 11, "nsfw": false}]})
    );

    // Failures are posted in go-livepeer's error form and the worker stays up.
    let bad = orch.put_segment("ai-req", 2, b"not an image".to_vec());
    orch.push_ai(ai_job(
        6,
        "upscale",
        &bad,
        serde_json::json!({"prompt": "x", "model_id": "lpworker/nearest-2x"}),
    ))
    .await;
    orch.push_ai(ai_job(
        7,
        "llm",
        "",
        serde_json::json!({"model": "some/llm", "messages": []}),
    ))
    .await;
    orch.push_ai(ai_job(
        8,
        "upscale",
        &url,
        serde_json::json!({"prompt": "x"}),
    ))
    .await;
    for (task, expect) in [(6, "decode"), (7, "not loaded"), (8, "model_id")] {
        let post = wait_ai_result(&orch, task).await;
        assert_eq!(
            post.headers["content-type"], "livepeer/ai-worker-error",
            "task {task}"
        );
        let text = String::from_utf8(post.body).unwrap();
        assert!(
            text.contains(expect) || text.contains("image"),
            "task {task}: {text}"
        );
    }
    assert!(attach.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_arrives_on_the_stream_is_still_a_refusal() {
    let dir = tempdir();
    let orch = TestOrch::start(SECRET, dir.path()).await;
    orch.shared
        .refuse_in_stream
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attach = start_attach(&orch, "not-the-secret", &[]);
    wait_registrations(&orch, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        orch.registrations().len(),
        1,
        "a refusal read off the stream must not be retried quickly"
    );
    let log = attach.log.lock().unwrap().clone();
    assert!(attach.logged("invalid secret"), "log: {log:?}");
    assert!(
        !log.iter()
            .any(|l| l.contains("registered") && !l.contains("refused")),
        "logged as registered: {log:?}"
    );
    assert!(attach.alive());
}

/// go-livepeer 0.9 removes the AI worker service (PR #4036): the AI role
/// says so once, with what to do instead, and retries quietly, while the
/// transcoder role of the same process works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_without_the_ai_worker_service_is_told_once() {
    let dir = tempdir();
    let orch = TestOrch::start_without_ai_service(SECRET, dir.path()).await;
    let mut attach = start_attach(
        &orch,
        SECRET,
        &[
            "--transcode",
            "-aiModels",
            "upscale:lpworker/nearest-2x:true",
            "--models-dir",
            "models",
        ],
    );
    wait_registrations(&orch, 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = attach.log.lock().unwrap().clone();
    let told: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("no AI worker service"))
        .collect();
    assert_eq!(told.len(), 1, "{log:#?}");
    assert!(told[0].contains("--live-runner"), "{}", told[0]);
    assert!(
        !log.iter().any(|l| l.contains("cannot register")),
        "no retry noise: {log:#?}"
    );
    assert!(attach.alive());
    assert_eq!(orch.registrations().len(), 1, "the transcoder registered");
}
