//! go-livepeer remote transcoders behind `lpworker orchestrator`: lpworker's
//! own `attach` (which follows go-livepeer's transcoder) registers with the
//! shim's `-orchSecret`, takes a test gateway's segments, and when it is
//! killed mid-segment the segment goes on to a `serve` worker. Registrations
//! and result posts with the wrong credentials are refused as go-livepeer
//! refuses them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::keccak256;
use common::shim::{offchain_info, offchain_shim_command};
use common::{b64, clip, ffprobe, insecure_http as http, tempdir, Clip, Logged, ServeProcess};
use lpworker::proto::lp_rpc as net;
use prost::Message;

const SECRET: &str = "transcoder-secret";

/// The shim, off chain, with `-orchSecret` and `worker` behind it; returns
/// it and its host:port.
fn shim(worker: &ServeProcess, datadir: &std::path::Path) -> (Logged, String) {
    start_shim(offchain_shim_command(
        &worker.grpc.to_string(),
        datadir,
        &["-orchSecret", SECRET],
    ))
}

/// Starts a shim command line; returns it and its host:port.
fn start_shim(mut command: Command) -> (Logged, String) {
    let mut child = command
        .env("LPWORKER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::ready_line(&mut child);
    let addr = common::line_field(&line, "addr=")
        .unwrap_or_else(|| panic!("the shim did not start: {line:?}"))
        .to_string();
    (Logged::collect(child, "shim"), addr)
}

/// `lpworker attach` registered with the shim at `addr`, one segment at once.
fn attach(addr: &str) -> Logged {
    Logged::attach(addr, SECRET)
}

/// Segment data as go-livepeer's gateway sends it: a TS and an MP4 rendition.
fn seg_data(info: &net::OrchestratorInfo, body: &[u8], seq: i64, duration: i32) -> net::SegData {
    use net::video_profile::Format;
    let profile = |name: &str, w, h, bitrate, format: Format| net::VideoProfile {
        name: name.into(),
        width: w,
        height: h,
        bitrate,
        fps: 30,
        format: format as i32,
        ..Default::default()
    };
    net::SegData {
        manifest_id: b"manifest".to_vec(),
        seq,
        hash: keccak256(body).to_vec(),
        duration,
        auth_token: info.auth_token.clone(),
        full_profiles2: vec![
            profile("P240p30fps16x9", 426, 240, 600_000, Format::Mpegts),
            profile("P360mp4", 640, 360, 1_200_000, Format::Mp4),
        ],
        ..Default::default()
    }
}

/// Submits a segment as a gateway does; returns the renditions' sizes
/// checked with ffprobe against the profiles.
async fn submit_and_check(
    addr: &str,
    dir: &std::path::Path,
    body: Vec<u8>,
    seq: i64,
    duration: i32,
) {
    let info = offchain_info(addr).await;
    let seg = seg_data(&info, &body, seq, duration);
    let r = http()
        .post(format!("{}/segment", info.transcoder))
        .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
        .header("Content-Type", "video/MP2T")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let result = net::TranscodeResult::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(result.seq, seq);
    let Some(net::transcode_result::Result::Data(data)) = result.result else {
        panic!("no renditions: {:?}", result.result)
    };
    assert_eq!(data.segments.len(), 2);
    for (i, (s, (w, h, ext))) in data
        .segments
        .iter()
        .zip([(426, 240, "ts"), (640, 360, "mp4")])
        .enumerate()
    {
        let bytes = http()
            .get(&s.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = dir.join(format!("r{seq}-{i}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let p = ffprobe(&path);
        assert_eq!((p.width, p.height), (w, h));
        assert_eq!(
            s.pixels as u64,
            p.frames * u64::from(w * h),
            "billing pixels"
        );
    }
}

/// `RegisterTranscoder` as a go-livepeer transcoder calls it; the error,
/// whether it comes at once or as the stream's first read.
async fn register(addr: &str, secret: &str, capacity: i64) -> Option<tonic::Status> {
    let channel = lpworker::attach::insecure_tls::grpc_channel(addr, |e| e)
        .await
        .unwrap();
    let mut client = net::transcoder_client::TranscoderClient::new(channel);
    let request = net::RegisterRequest {
        secret: secret.into(),
        capacity,
        capabilities: None,
    };
    match client.register_transcoder(request).await {
        Err(status) => Some(status),
        Ok(stream) => {
            let first =
                tokio::time::timeout(Duration::from_millis(500), stream.into_inner().message())
                    .await;
            match first {
                Ok(Err(status)) => Some(status),
                _ => None,
            }
        }
    }
}

async fn post_result(addr: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http()
        .post(format!("https://{addr}/transcodeResults"))
        .body("--b--\r\n");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_transcoder_takes_the_gateways_segments() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--max-sessions", "1"]);
    let (shim, addr) = shim(&worker, &dir.path().join("data"));
    let transcoder = attach(&addr);
    shim.wait_for("remote transcoder registered", Duration::from_secs(30))
        .await;

    let (_, body) = clip(
        dir.path(),
        "seg",
        &Clip {
            width: 640,
            height: 360,
            ..Default::default()
        },
    );
    submit_and_check(&addr, dir.path(), body, 5, 1000).await;
    assert!(shim.logged("segment sent to remote transcoder"));
    transcoder
        .wait_for("transcoded", Duration::from_secs(5))
        .await;

    // A wrong secret and a zero capacity: go-livepeer's texts, which its
    // transcoders take as fatal.
    let refused = register(&addr, "wrong", 4).await.expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unknown);
    assert_eq!(refused.message(), "invalid secret");
    let refused = register(&addr, SECRET, 0).await.expect("refused");
    assert_eq!(refused.message(), "zero capacity");
    assert!(
        register(&addr, SECRET, 2).await.is_none(),
        "the right secret registers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_posts_without_the_secret_or_a_task_in_flight_are_refused() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--max-sessions", "1"]);
    let (_shim, addr) = shim(&worker, &dir.path().join("data"));
    let auth = ("Authorization", "Livepeer-Transcoder-1.0");
    let creds = ("Credentials", SECRET);
    let multipart = ("Content-Type", "multipart/mixed; boundary=b");
    let (task, pixels) = (("TaskId", "0"), ("Pixels", "0"));
    assert_eq!(
        post_result(
            &addr,
            &[auth, ("Credentials", "wrong"), multipart, task, pixels]
        )
        .await,
        (401, "Unauthorized".into())
    );
    assert_eq!(
        post_result(&addr, &[auth, multipart, task, pixels]).await.0,
        401
    );
    assert_eq!(
        post_result(
            &addr,
            &[
                ("Authorization", "Livepeer-AI-Worker-1.0"),
                creds,
                multipart,
                task,
                pixels
            ]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post_result(&addr, &[auth, creds, multipart, ("TaskId", "x"), pixels]).await,
        (400, "Invalid Task ID".into())
    );
    assert_eq!(
        post_result(&addr, &[auth, creds, multipart, task, ("Pixels", "p")]).await,
        (400, "Invalid Pixels".into())
    );
    // No task was ever sent: refused before the body is read, a success
    // or an error alike, and again on a replay.
    for _ in 0..2 {
        assert_eq!(
            post_result(&addr, &[auth, creds, multipart, task, pixels])
                .await
                .0,
            404
        );
        assert_eq!(
            post_result(
                &addr,
                &[
                    auth,
                    creds,
                    ("Content-Type", "livepeer/transcoding-error"),
                    ("TaskId", "7")
                ]
            )
            .await
            .0,
            404
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcoder_killed_mid_segment_hands_the_segment_to_a_worker() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--max-sessions", "1"]);
    let (shim, addr) = shim(&worker, &dir.path().join("data"));
    let mut transcoder = attach(&addr);
    shim.wait_for("remote transcoder registered", Duration::from_secs(30))
        .await;
    // Long enough to transcode that the kill lands mid-segment.
    let (_, body) = clip(
        dir.path(),
        "long",
        &Clip {
            width: 1280,
            height: 720,
            seconds: 4.0,
            ..Default::default()
        },
    );
    let gateway = {
        let (addr, dir) = (addr.clone(), dir.path().to_path_buf());
        tokio::spawn(async move { submit_and_check(&addr, &dir, body, 9, 4000).await })
    };
    shim.wait_for("segment sent to remote transcoder", Duration::from_secs(30))
        .await;
    transcoder.child.kill().unwrap();
    transcoder.child.wait().unwrap();
    let killed = Instant::now();
    gateway
        .await
        .expect("the gateway still gets its renditions");
    eprintln!(
        "renditions {:?} after the transcoder was killed",
        killed.elapsed()
    );
    assert!(
        !transcoder.logged("transcoded"),
        "killed before it finished"
    );
    assert!(shim.logged("remote transcoder left mid-segment"));
    assert!(shim.logged("remote transcoder removed"));
}

/// A gateway's segment as the shim answers it, submitted in the background.
fn submit(addr: &str, body: Vec<u8>, seq: i64) -> tokio::task::JoinHandle<net::TranscodeResult> {
    let addr = addr.to_string();
    tokio::spawn(async move {
        let info = offchain_info(&addr).await;
        let seg = seg_data(&info, &body, seq, 1000);
        let r = http()
            .post(format!("{}/segment", info.transcoder))
            .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        net::TranscodeResult::decode(r.bytes().await.unwrap()).unwrap()
    })
}

/// The test plays a go-livepeer transcoder by hand: what it is sent, what
/// it may fetch and when, and which of its posts count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_answered_once_from_its_transcoders_host() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--max-sessions", "1"]);
    let (shim, addr) = shim(&worker, &dir.path().join("data"));
    let channel = lpworker::attach::insecure_tls::grpc_channel(&addr, |e| e)
        .await
        .unwrap();
    let mut jobs = net::transcoder_client::TranscoderClient::new(channel)
        .register_transcoder(net::RegisterRequest {
            secret: SECRET.into(),
            capacity: 1,
            capabilities: None,
        })
        .await
        .unwrap()
        .into_inner();
    shim.wait_for("remote transcoder registered", Duration::from_secs(30))
        .await;

    let segment = b"not even video: the transcoder here is the test".to_vec();
    let gateway = submit(&addr, segment.clone(), 4);
    let notify = jobs.message().await.unwrap().expect("a task");
    let seg = notify.seg_data.clone().unwrap();
    assert_eq!((seg.seq, seg.duration), (4, 1000));
    assert_eq!(seg.full_profiles2.len(), 2, "the gateway's profiles");
    assert_eq!(seg.hash, vec![0; 32], "hash cleared, as go-livepeer does");
    assert_eq!(
        (notify.profiles.as_slice(), seg.profiles.as_slice()),
        (&b"invalid"[..], &b"invalid"[..])
    );
    assert_eq!(notify.orch_id, "offchain");
    let session = &seg.auth_token.as_ref().unwrap().session_id;
    assert!(
        notify
            .url
            .starts_with(&format!("https://{addr}/stream/{session}/4-"))
            && notify.url.ends_with(".tempfile"),
        "{}",
        notify.url
    );
    let fetched = http().get(&notify.url).send().await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), segment.as_slice());

    let mut body = lpworker::lp_rpc::results::Multipart::new();
    let renditions = [vec![b'a'; 100], vec![b'b'; 200]];
    for (data, pixels) in renditions.iter().zip(["111", "222"]) {
        body.part(
            &[
                ("Content-Type", "video/mp2t".into()),
                ("Pixels", pixels.into()),
            ],
            data,
        );
    }
    let (content_type, body) = body.finish();
    let post = |client: reqwest::Client, task_id: i64| {
        let (url, content_type, body) = (
            format!("https://{addr}/transcodeResults"),
            content_type.clone(),
            body.clone(),
        );
        async move {
            client
                .post(url)
                .header("Authorization", "Livepeer-Transcoder-1.0")
                .header("Credentials", SECRET)
                .header("TaskId", task_id.to_string())
                .header("Pixels", "999")
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let elsewhere = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    assert_eq!(post(elsewhere, notify.task_id).await, 404, "another host");
    assert_eq!(post(http(), notify.task_id + 1).await, 404, "never sent");
    assert_eq!(post(http(), notify.task_id).await, 200);
    assert_eq!(post(http(), notify.task_id).await, 404, "a replay");
    assert_eq!(
        http()
            .get(&notify.url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404,
        "the input is gone with its task"
    );

    let result = gateway.await.unwrap();
    let Some(net::transcode_result::Result::Data(data)) = result.result else {
        panic!("no renditions: {:?}", result.result)
    };
    for (s, (data, pixels)) in data.segments.iter().zip(renditions.iter().zip([111, 222])) {
        assert_eq!(s.pixels, pixels);
        let served = http()
            .get(&s.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(served.as_ref(), data.as_slice());
    }

    // The gateway ends its session: the transcoder that served it hears
    // go-livepeer's teardown notice (no URL, only the session ID).
    let channel = lpworker::attach::insecure_tls::grpc_channel(&addr, |e| e)
        .await
        .unwrap();
    net::orchestrator_client::OrchestratorClient::new(channel)
        .end_transcoding_session(net::EndTranscodingSessionRequest {
            auth_token: seg.auth_token.clone(),
        })
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), jobs.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a teardown notice");
    assert!(notice.url.is_empty());
    assert_eq!(
        &notice.seg_data.unwrap().auth_token.unwrap().session_id,
        session
    );
}

/// go-livepeer's standalone orchestrator: no `serve` workers, only the
/// transcoders that register; what it offers is theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_without_workers_serves_through_its_transcoders() {
    let dir = tempdir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lpworker"));
    command
        .args(["orchestrator", "-serviceAddr", "127.0.0.1:0", "--http-addr"])
        .args(["127.0.0.1:0", "-network", "offchain", "-pricePerUnit", "0"])
        .args(["-orchSecret", SECRET, "-datadir"])
        .arg(dir.path().join("data"));
    let (shim, addr) = start_shim(command);
    let h264 = |info: &net::OrchestratorInfo| {
        info.capabilities
            .as_ref()
            .is_some_and(|c| c.bitstring.first().is_some_and(|w| w & 1 == 1))
    };
    assert!(!h264(&offchain_info(&addr).await), "nothing registered yet");
    let _transcoder = attach(&addr);
    shim.wait_for("remote transcoder registered", Duration::from_secs(30))
        .await;
    assert!(h264(&offchain_info(&addr).await), "the transcoder's H.264");
    let (_, body) = clip(dir.path(), "seg", &Clip::default());
    submit_and_check(&addr, dir.path(), body, 1, 1000).await;
}
