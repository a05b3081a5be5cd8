//! lpworker's lp_rpc definitions against bytes produced by go-livepeer's own
//! generated code (tests/vectors/lp_rpc_vectors.py, from the official
//! livepeer-gateway package): every vector decodes to the values written;
//! messages without maps re-encode to the same bytes, and those with maps to
//! bytes that decode to the same message (map entries have no canonical
//! encoding: upstream writes zero keys and its own entry order).

use lpworker::proto::lp_rpc as net;
use prost::Message;

fn vectors() -> serde_json::Map<String, serde_json::Value> {
    let text = include_str!("vectors/lp_rpc.json");
    serde_json::from_str(text).unwrap()
}

fn bytes(name: &str) -> Vec<u8> {
    let hex = vectors()[name].as_str().unwrap().to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(name: &str) -> M {
    let wire = bytes(name);
    let msg = M::decode(wire.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = msg.encode_to_vec();
    assert_eq!(
        M::decode(again.as_slice()).unwrap(),
        msg,
        "{name} does not survive a round trip"
    );
    assert_eq!(
        again.len(),
        wire.len() - zero_map_keys(name),
        "{name}: unexpected size difference"
    );
    msg
}

/// Map entries whose key is 0: upstream encodes the key, prost omits it (2 bytes each).
fn zero_map_keys(name: &str) -> usize {
    match name {
        // Capabilities.capacities holds key 0 once per embedded Capabilities.
        "register_request"
        | "notify_segment"
        | "register_ai_worker_request"
        | "orchestrator_info" => 2,
        "transcode_result" => 2,
        _ => 0,
    }
}

fn exact<M: Message + Default>(name: &str) -> M {
    let wire = bytes(name);
    let msg = M::decode(wire.as_slice()).unwrap();
    assert_eq!(
        msg.encode_to_vec(),
        wire,
        "{name} re-encodes to different bytes"
    );
    msg
}

fn check_capabilities(c: &net::Capabilities) {
    assert_eq!(c.bitstring, [0x0400_5FFF, 1 << 3]);
    assert_eq!(c.mandatories, [1 << 2]);
    assert_eq!(c.version, "0.9.1");
    assert_eq!(
        c.capacities
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 1), (16, 1)]
    );
    let constraints = c.constraints.as_ref().unwrap();
    assert_eq!(constraints.min_version, "0.8.0");
    let model = &constraints.per_capability[&27].models["stabilityai/sd-turbo"];
    assert!(model.warm);
    assert_eq!(
        (
            model.capacity,
            model.runner_version.as_str(),
            model.capacity_in_use
        ),
        (2, "0.14.0", 1)
    );
}

#[test]
fn register_request() {
    let r: net::RegisterRequest = round_trip("register_request");
    assert_eq!((r.secret.as_str(), r.capacity), ("s3cret", 10));
    check_capabilities(r.capabilities.as_ref().unwrap());
}

#[test]
fn notify_segment_with_every_field() {
    use net::video_profile::{ChromaSubsampling, Format, Profile, VideoCodec};
    let n: net::NotifySegment = round_trip("notify_segment");
    assert_eq!(n.url, "https://orch:8935/stream/sess-1/42.tempfile");
    assert_eq!(
        (n.task_id, n.orch_id.as_str(), n.profiles.as_slice()),
        (1_234_567_890_123, "0x1234", &b"invalid"[..])
    );
    let s = n.seg_data.unwrap();
    assert_eq!(
        (s.manifest_id.as_slice(), s.seq, s.duration),
        (&b"manifest-1"[..], 42, 2000)
    );
    assert_eq!(s.hash, (0..32).collect::<Vec<u8>>());
    assert_eq!(s.sig, vec![1; 65]);
    assert!(s.calc_perceptual_hash && s.force_session_reinit);
    check_capabilities(s.capabilities.as_ref().unwrap());
    let token = s.auth_token.unwrap();
    assert_eq!(
        (token.session_id.as_str(), token.expiration, token.token),
        ("sess-1", 1_767_225_600, vec![0xaa; 32])
    );
    let storage = &s.storage[0];
    assert_eq!(storage.storage_type, net::os_info::StorageType::S3 as i32);
    assert_eq!(storage.s3info.as_ref().unwrap().x_amz_date, "d");
    let params = s.segment_parameters.unwrap();
    assert_eq!((params.from, params.to), (100, 1900));
    assert!(s.full_profiles.is_empty() && s.full_profiles2.is_empty());
    let p = &s.full_profiles3;
    assert_eq!(
        (
            p[0].name.as_str(),
            p[0].width,
            p[0].height,
            p[0].bitrate,
            p[0].fps,
            p[0].fps_den
        ),
        ("P240p30fps16x9", 426, 240, 600_000, 30, 1)
    );
    assert_eq!(p[0].profile, Profile::H264ConstrainedHigh as i32);
    assert_eq!((p[0].gop, p[0].color_depth, p[0].quality), (2000, 8, 23));
    assert_eq!(p[0].chroma_format, ChromaSubsampling::Chroma420 as i32);
    assert_eq!((p[1].fps, p[1].fps_den, p[1].gop), (30000, 1001, -1));
    assert_eq!(p[1].format, Format::Mp4 as i32);
    assert_eq!(p[1].encoder, VideoCodec::H265 as i32);
}

#[test]
fn ai_worker_messages() {
    let r: net::RegisterAiWorkerRequest = round_trip("register_ai_worker_request");
    assert_eq!(r.secret, "s3cret");
    check_capabilities(r.capabilities.as_ref().unwrap());
    let hw = &r.hardware[0];
    assert_eq!(
        (hw.pipeline.as_str(), hw.model_id.as_str()),
        ("text-to-image", "stabilityai/sd-turbo")
    );
    let gpu = &hw.gpu_info["0"];
    assert_eq!(
        (gpu.name.as_str(), gpu.major, gpu.minor, gpu.memory_total),
        ("NVIDIA H100", 9, 0, 80 << 30)
    );
    let job: net::NotifyAiJob = exact("notify_ai_job");
    assert_eq!(job.task_id, 9);
    let data = job.ai_job_data.unwrap();
    assert_eq!(data.pipeline, "text-to-image");
    assert_eq!(data.request_data, br#"{"input_url":"","request":{}}"#);
}

#[test]
fn payment_and_orchestrator_info() {
    let p: net::Payment = exact("payment");
    let t = p.ticket_params.as_ref().unwrap();
    assert_eq!(t.recipient, vec![0x11; 20]);
    assert_eq!(t.face_value, 1_000_000_000_000_000_000u64.to_be_bytes());
    assert_eq!(t.expiration_block, [0x13, 0x88]);
    assert_eq!(t.expiration_params.as_ref().unwrap().creation_round, 100);
    assert_eq!(p.sender, vec![0x55; 20]);
    assert_eq!(
        p.ticket_sender_params
            .iter()
            .map(|s| s.sender_nonce)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let price = p.expected_price.unwrap();
    assert_eq!(
        (
            price.price_per_unit,
            price.pixels_per_unit,
            price.capability,
            price.constraint.as_str()
        ),
        (1200, 1, 27, "stabilityai/sd-turbo")
    );

    let info: net::OrchestratorInfo = round_trip("orchestrator_info");
    assert_eq!(info.transcoder, "https://orch:8935");
    assert_eq!(info.nodes, ["https://a:1", "https://b:2"]);
    assert_eq!(info.price_info.unwrap().pixels_per_unit, 3);
    check_capabilities(info.capabilities.as_ref().unwrap());

    let ok: net::TranscodeResult = round_trip("transcode_result");
    match ok.result.unwrap() {
        net::transcode_result::Result::Data(d) => {
            assert_eq!((d.segments[0].pixels, d.sig.len()), (123, 65))
        }
        other => panic!("{other:?}"),
    }
    let err: net::TranscodeResult = exact("transcode_result_error");
    assert_eq!(
        err.result,
        Some(net::transcode_result::Result::Error(
            "OrchestratorBusy".into()
        ))
    );
}
