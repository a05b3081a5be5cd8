//! `lpworker orchestrator` (off chain) end to end: a test gateway gets the
//! orchestrator info over gRPC, submits segments to `/segment` the way
//! go-livepeer's gateway does, and fetches renditions transcoded by a real
//! `lpworker serve` worker behind the shim.

mod common;

use std::process::Command;

use alloy_primitives::keccak256;
use common::shim::OffChainShim;
use common::{b64, clip, ffprobe, insecure_http as http, tempdir, Clip, ServeProcess};
use lpworker::proto::lp_rpc as net;
use prost::Message;

fn seg_data(info: &net::OrchestratorInfo, body: &[u8], seq: i64) -> net::SegData {
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
        duration: 1000,
        auth_token: info.auth_token.clone(),
        full_profiles2: vec![
            profile("P240p30fps16x9", 426, 240, 600_000, Format::Mpegts),
            profile("P360mp4", 640, 360, 1_200_000, Format::Mp4),
        ],
        ..Default::default()
    }
}

async fn submit(url: &str, seg: &net::SegData, payment: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let r = http()
        .post(format!("{url}/segment"))
        .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
        .header("Livepeer-Payment", payment)
        .header("Content-Type", "video/MP2T")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_gets_info_pays_nothing_off_chain_and_receives_renditions() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--max-sessions", "2"]);
    let orch = OffChainShim::start(
        &worker.grpc.to_string(),
        &dir.path().join("data"),
        &["-nodes", "node2.example:8935,https://node3.example:8936"],
    );
    assert!(
        dir.path().join("data/cert.pem").is_file(),
        "self-signed identity generated on first start"
    );

    let channel = lpworker::attach::insecure_tls::grpc_channel(&orch.addr, |e| e)
        .await
        .unwrap();
    let mut client = net::orchestrator_client::OrchestratorClient::new(channel);
    let info = client
        .get_orchestrator(net::OrchestratorRequest::default())
        .await
        .unwrap()
        .into_inner();
    let uri = info.transcoder.clone();
    assert!(uri.starts_with("https://127.0.0.1:"), "{uri}");
    let token = info.auth_token.clone().unwrap();
    assert!(!token.session_id.is_empty() && token.token.len() == 32 && token.expiration > 0);
    let caps = info.capabilities.as_ref().unwrap();
    assert!(caps.bitstring[0] & 0b111 == 0b111, "H.264, MPEG-TS and MP4");
    // The other instances of this orchestrator, for gateways to ask too.
    assert_eq!(
        info.nodes,
        ["https://node2.example:8935", "https://node3.example:8936"]
    );
    assert_eq!(info.price_info.as_ref().unwrap().pixels_per_unit, 1);

    let (_, body) = clip(
        dir.path(),
        "seg",
        &Clip {
            width: 640,
            height: 360,
            ..Default::default()
        },
    );
    let seg = seg_data(&info, &body, 7);
    let (status, reply) = submit(&uri, &seg, "", body.clone()).await;
    assert_eq!(status, 200);
    let result = net::TranscodeResult::decode(reply.as_slice()).unwrap();
    assert_eq!(result.seq, 7);
    assert_eq!(
        result
            .info
            .as_ref()
            .unwrap()
            .auth_token
            .as_ref()
            .unwrap()
            .session_id,
        token.session_id,
        "same session"
    );
    let Some(net::transcode_result::Result::Data(data)) = result.result else {
        panic!("{:?}", result.result)
    };
    assert_eq!(data.segments.len(), 2);
    for (i, (s, (w, h, ext))) in data
        .segments
        .iter()
        .zip([(426, 240, "ts"), (640, 360, "mp4")])
        .enumerate()
    {
        assert!(
            s.url
                .starts_with(&format!("{uri}/stream/{}/", token.session_id))
                && s.url.ends_with(&format!("/7.{ext}")),
            "{}",
            s.url
        );
        let bytes = http()
            .get(&s.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = dir.path().join(format!("r{i}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let p = ffprobe(&path);
        assert_eq!((p.width, p.height), (w, h));
        assert_eq!(
            s.pixels as u64,
            p.frames * u64::from(w * h),
            "billing pixels"
        );
    }

    // Refusals before any work.
    let mut forged = seg.clone();
    forged.auth_token.as_mut().unwrap().session_id = "stolen".into();
    assert_eq!(submit(&uri, &forged, "", body.clone()).await.0, 403);
    let mut no_token = seg.clone();
    no_token.auth_token = None;
    assert_eq!(submit(&uri, &no_token, "", body.clone()).await.0, 403);
    let mut bad_hash = seg.clone();
    bad_hash.hash = vec![0; 32];
    assert_eq!(submit(&uri, &bad_hash, "", body.clone()).await.0, 403);
    assert_eq!(
        submit(&uri, &seg, "%%%not-base64", body.clone()).await.0,
        402
    );
    let paid = net::Payment {
        ticket_params: Some(net::TicketParams::default()),
        ..Default::default()
    };
    let (status, text) = submit(&uri, &seg, &b64(&paid.encode_to_vec()), body.clone()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let r = http()
        .post(format!("{uri}/segment"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "no Livepeer-Segment header");

    // A corrupt segment with a matching hash: accepted, and the error comes back in the result.
    let junk = vec![0x47u8; 188 * 40];
    let (status, reply) = submit(&uri, &seg_data(&info, &junk, 8), "", junk).await;
    assert_eq!(status, 200);
    let result = net::TranscodeResult::decode(reply.as_slice()).unwrap();
    assert!(
        matches!(result.result, Some(net::transcode_result::Result::Error(ref e)) if e.contains("not a readable media container")),
        "{:?}",
        result.result
    );

    // Sessions end with a valid token only; the node keeps serving.
    assert!(client
        .end_transcoding_session(net::EndTranscodingSessionRequest {
            auth_token: Some(token.clone())
        })
        .await
        .is_ok());
    let bad = net::AuthToken {
        token: vec![1; 32],
        ..token
    };
    assert_eq!(
        client
            .end_transcoding_session(net::EndTranscodingSessionRequest {
                auth_token: Some(bad)
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        submit(&uri, &seg_data(&info, &body, 9), "", body.clone())
            .await
            .0,
        200
    );
}

#[test]
fn chain_mode_without_a_chain_url_is_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "orchestrator",
            "--service-addr",
            "127.0.0.1:0",
            "--workers",
            "127.0.0.1:1",
            "-network",
            "arbitrum-one-mainnet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --eth-url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_requests_are_routed_to_a_worker_serving_the_model() {
    let dir = tempdir();
    let worker = ServeProcess::start(&[
        "--ai-models",
        "upscale:lpworker/nearest-2x:true",
        "--models-dir",
        "models",
    ]);
    let orch = OffChainShim::start(&worker.grpc.to_string(), &dir.path().join("data"), &[]);
    let channel = lpworker::attach::insecure_tls::grpc_channel(&orch.addr, |e| e)
        .await
        .unwrap();
    let info = net::orchestrator_client::OrchestratorClient::new(channel)
        .get_orchestrator(net::OrchestratorRequest::default())
        .await
        .unwrap()
        .into_inner();
    let caps = info.capabilities.as_ref().unwrap();
    assert!(
        caps.bitstring[0] & (1 << 30) != 0,
        "Upscale (30) advertised"
    );
    assert!(caps.bitstring[0] & 1 != 0, "and H.264 still");
    assert!(caps.constraints.as_ref().unwrap().per_capability[&30]
        .models
        .contains_key("lpworker/nearest-2x"));

    let input = image::RgbImage::from_fn(12, 8, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 30) as u8, 5])
    });
    let png = lpworker::ai::media::encode_png(&input).unwrap();
    let creds = b64(&net::SegData {
        auth_token: info.auth_token.clone(),
        ..Default::default()
    }
    .encode_to_vec());
    let form = || {
        reqwest::multipart::Form::new()
            .text("prompt", "x")
            .text("model_id", "lpworker/nearest-2x")
            .part(
                "image",
                reqwest::multipart::Part::bytes(png.clone()).file_name("in.png"),
            )
    };
    let url = format!("{}/upscale", info.transcoder);
    let r = http()
        .post(&url)
        .header("Livepeer-Segment", &creds)
        .header("Livepeer-Payment", "")
        .header("Authorization", "Livepeer-AI-Worker-1.0")
        .multipart(form())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let image_url = body["images"][0]["url"].as_str().unwrap();
    assert!(
        image_url.starts_with(&format!("{}/stream/", info.transcoder)),
        "{image_url}"
    );
    let bytes = http()
        .get(image_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let out = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(
        out,
        image::imageops::resize(&input, 24, 16, image::imageops::FilterType::Nearest)
    );

    // Older gateways (no Authorization header) get a data URL.
    let r = http()
        .post(&url)
        .header("Livepeer-Segment", &creds)
        .header("Livepeer-Payment", "")
        .multipart(form())
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["images"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));

    // No credentials, an unknown model, a pipeline nobody serves.
    let r = http().post(&url).multipart(form()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let unknown = reqwest::multipart::Form::new()
        .text("prompt", "x")
        .text("model_id", "nope/none")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("in.png"),
        );
    let r = http()
        .post(&url)
        .header("Livepeer-Segment", &creds)
        .header("Livepeer-Payment", "")
        .multipart(unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["detail"]["msg"]
            .as_str()
            .unwrap()
            .contains("nope/none"),
        "{body}"
    );
    let r = http()
        .post(format!("{}/text-to-image", info.transcoder))
        .header("Livepeer-Segment", &creds)
        .header("Livepeer-Payment", "")
        .json(&serde_json::json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn inconsistent_ticket_settings_are_refused_at_start() {
    for (args, needle) in [
        (vec!["-ticketEV", "4000000000000"], "max-ticket-ev"),
        (vec!["-ticketEV", "0"], "above 0"),
        (
            vec!["-ticketEV", "1000", "-maxFaceValue", "999"],
            "max-face-value",
        ),
        (vec!["-nodes", "http://node2.example"], "must be https"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args([
                "orchestrator",
                "--service-addr",
                "127.0.0.1:0",
                "--workers",
                "127.0.0.1:1",
                "-network",
                "offchain",
            ])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
