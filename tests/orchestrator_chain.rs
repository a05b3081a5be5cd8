//! `lpworker orchestrator` on a chain, end to end with real processes: the
//! real Livepeer contracts on a local ganache chain, a `serve` worker, the
//! shim with a keystore account, and a test gateway that pays with signed
//! tickets the way go-livepeer's gateway does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{keccak256, utils::parse_ether, B256};
use common::chain::{
    bond_and_register, eth_flags, fund_sender, keystore, next_round, orchestrator_cli as cli,
    post_paid, rpc_proxy, used, wait_until, ChainShim as Shim, GatewaySigner, LocalChain, PRICING,
    RPC_KEY,
};
use common::{b64, clip, insecure_http as http, tempdir, Clip, ServeProcess};
use lpworker::proto::lp_rpc as net;
use prost::Message;

/// The shim's secret for go-livepeer remote transcoders (-orchSecret).
const TRANSCODER_SECRET: &str = "transcoder-secret";

/// `lpworker attach` registered with a shim, killed when dropped.
fn attach(addr: &str) -> common::Logged {
    common::Logged::attach(addr, TRANSCODER_SECRET)
}

/// A signed segment's credentials, as a go-livepeer gateway sends them.
fn seg_data(
    gateway: &GatewaySigner,
    info: &net::OrchestratorInfo,
    body: &[u8],
    seq: i64,
) -> net::SegData {
    let profile = |name: &str, w, h| net::VideoProfile {
        name: name.into(),
        width: w,
        height: h,
        bitrate: 400_000,
        fps: 30,
        ..Default::default()
    };
    gateway.signed(net::SegData {
        manifest_id: b"manifest".to_vec(),
        seq,
        hash: keccak256(body).to_vec(),
        duration: 1000,
        auth_token: info.auth_token.clone(),
        full_profiles2: vec![
            profile("P144p30fps16x9", 256, 144),
            profile("P240p30fps16x9", 426, 240),
        ],
        ..Default::default()
    })
}

/// Output pixels the shim reserves for one `seg_data` segment before
/// transcoding it: 1 s at 30 fps of 256×144 and 426×240.
const SEGMENT_ESTIMATE: i64 = 30 * (256 * 144 + 426 * 240);

/// A GetOrchestrator request for the upscale model: params at its price.
fn model_request(g: &GatewaySigner) -> net::OrchestratorRequest {
    let upscale = lpworker::ai::PipelineKind::from_name("upscale")
        .unwrap()
        .capability()
        .expect("an ai-runner pipeline");
    let mut request = g.orchestrator_request();
    let mut caps = net::Capabilities::default();
    caps.constraints
        .get_or_insert_with(Default::default)
        .per_capability
        .insert(
            upscale,
            net::capabilities::CapabilityConstraints {
                models: [("lpworker/nearest-2x".to_string(), Default::default())].into(),
            },
        );
    request.capabilities = Some(caps);
    request
}

/// A `serve` worker running the upscale model, and an aiModels.json in
/// `dir` pricing it at `price` wei per output pixel.
fn upscale_worker(dir: &Path, price: u32) -> (ServeProcess, PathBuf) {
    let worker = ServeProcess::start(&[
        "--max-sessions",
        "2",
        "--ai-models",
        "upscale:lpworker/nearest-2x:true",
        "--models-dir",
        "models",
    ]);
    let ai_models = dir.join("aiModels.json");
    std::fs::write(
        &ai_models,
        format!(r#"[{{"pipeline":"upscale","model_id":"lpworker/nearest-2x","warm":true,"price_per_unit":{price},"pixels_per_unit":1}}]"#),
    )
    .unwrap();
    (worker, ai_models)
}

/// Segment credentials for an AI request as go-livepeer's gateway signs
/// them: manifest "<capability>_<model>", seq 0, the hash of no data.
fn ai_creds(gateway: &GatewaySigner, info: &net::OrchestratorInfo, model: &str) -> String {
    let upscale = lpworker::ai::PipelineKind::from_name("upscale")
        .unwrap()
        .capability()
        .expect("an ai-runner pipeline");
    b64(&gateway
        .signed(net::SegData {
            manifest_id: format!("{upscale}_{model}").into_bytes(),
            hash: keccak256(b"").to_vec(),
            auth_token: info.auth_token.clone(),
            ..Default::default()
        })
        .encode_to_vec())
}

async fn post(
    url: &str,
    seg: &net::SegData,
    payment: &net::Payment,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let r = http()
        .post(url)
        .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
        .header("Livepeer-Payment", b64(&payment.encode_to_vec()))
        .header("Content-Type", "video/MP2T")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_pays_with_tickets_video_is_gated_by_stake_and_winners_are_redeemed() {
    // Rounds well longer than the params' 40 blocks, as on Arbitrum.
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    let gateway_client = chain.client(2).await;
    fund_sender(&gateway_client, "1", "1").await;
    let mut gateway = GatewaySigner::new(&chain, 2);
    // Deployment used most of round 0: start at the top of round 1.
    next_round(&orch_client).await;

    // The upscale model has its own price: 4 wei per output pixel.
    let (worker, ai_models) = upscale_worker(dir.path(), 4);
    let shim = Shim::start(
        &chain,
        &account,
        &worker.grpc.to_string(),
        &dir.path().join("data"),
        &[
            "--ai-models",
            ai_models.to_str().unwrap(),
            "-orchSecret",
            TRANSCODER_SECRET,
        ],
    );
    let mut grpc = shim.grpc().await;

    // GetOrchestrator must carry the gateway's signature over its address.
    let err = grpc
        .get_orchestrator(net::OrchestratorRequest {
            address: gateway.address.to_vec(),
            sig: vec![0; 65],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let info = grpc
        .get_orchestrator(gateway.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.address, account.address.to_vec());
    let params = info.ticket_params.clone().expect("ticket params on chain");
    assert_eq!(params.recipient, account.address.to_vec());
    assert_eq!(info.price_info.as_ref().unwrap().price_per_unit, 2);
    // Ping answers with the orchestrator's signature of the value.
    let pong = grpc
        .ping(net::PingPong {
            value: b"hello".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let digest = lpworker::pm::signature::personal_hash(keccak256(b"hello").as_slice());
    assert_eq!(
        lpworker::pm::signature::recover_digest(digest, &pong.value).unwrap(),
        account.address
    );

    // Not registered, not active: video is refused before any work...
    let (_, segment) = clip(
        dir.path(),
        "seg.ts",
        &Clip {
            seconds: 1.0,
            width: 320,
            height: 180,
            ..Clip::default()
        },
    );
    let url = format!("{}/segment", info.transcoder);
    let payment = gateway.payment(&info, 12);
    let (status, body) = post(
        &url,
        &seg_data(&gateway, &info, &segment, 0),
        &payment,
        segment.clone(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("active set"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // ...while AI work is paid for and served: not gated by stake.
    let png =
        lpworker::ai::media::encode_png(&image::RgbImage::from_pixel(12, 8, image::Rgb([9, 9, 9])))
            .unwrap();
    let upscale = lpworker::ai::PipelineKind::from_name("upscale")
        .unwrap()
        .capability()
        .expect("an ai-runner pipeline");
    let info = grpc
        .get_orchestrator(gateway.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.capabilities_prices,
        vec![net::PriceInfo {
            price_per_unit: 4,
            pixels_per_unit: 1,
            capability: upscale,
            constraint: "lpworker/nearest-2x".into()
        }]
    );
    let form = |png: &[u8]| {
        reqwest::multipart::Form::new()
            .text("prompt", "x")
            .text("model_id", "lpworker/nearest-2x")
            .part(
                "image",
                reqwest::multipart::Part::bytes(png.to_vec()).file_name("in.png"),
            )
    };
    // Paying the base price for a model priced higher is refused.
    let cheap = gateway.payment(&info, 1);
    let r = http()
        .post(format!("{}/upscale", info.transcoder))
        .header(
            "Livepeer-Segment",
            ai_creds(&gateway, &info, "lpworker/nearest-2x"),
        )
        .header("Livepeer-Payment", b64(&cheap.encode_to_vec()))
        .multipart(form(&png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("below this orchestrator's price"));
    // Leaving the model out does not make it cheaper: the model a worker
    // would run is priced as itself.
    let r = http()
        .post(format!("{}/upscale", info.transcoder))
        .header(
            "Livepeer-Segment",
            ai_creds(&gateway, &info, "lpworker/nearest-2x"),
        )
        .header(
            "Livepeer-Payment",
            b64(&gateway.payment(&info, 1).encode_to_vec()),
        )
        .multipart(reqwest::multipart::Form::new().text("prompt", "x").part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("in.png"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("below this orchestrator's price"));
    // A gateway asking for the model gets params at the model's price.
    let info = grpc
        .get_orchestrator(model_request(&gateway))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.price_info.as_ref().unwrap().price_per_unit, 4);
    let ai_payment = gateway.payment(&info, 1);
    let ai_tickets = gateway.tickets(&ai_payment);

    let r = http()
        .post(format!("{}/upscale", info.transcoder))
        .header(
            "Livepeer-Segment",
            ai_creds(&gateway, &info, "lpworker/nearest-2x"),
        )
        .header("Livepeer-Payment", b64(&ai_payment.encode_to_vec()))
        .header("Authorization", "Livepeer-AI-Worker-1.0")
        .multipart(form(&png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // The operator bonds and registers with the CLI; active from the next round.
    // Without --yes each is a plan and a dry run: nothing is sent.
    let before = common::chain::nonce(&orch_client, account.address).await;
    let out = cli(&["bond", "--amount", "500"], &chain, &account);
    assert!(
        out.contains("plan: LivepeerToken.approve")
            && out.contains("plan: BondingManager.bond")
            && out.contains("dry run: BondingManager.bond is checked when sent")
            && out.contains("add --yes to send"),
        "{out}"
    );
    assert_eq!(
        common::chain::nonce(&orch_client, account.address).await,
        before
    );
    let out = cli(&["bond", "--amount", "500", "--yes"], &chain, &account);
    assert!(out.contains("bonded 500 LPT"), "{out}");
    let register = [
        "register",
        "--reward-cut",
        "10",
        "--fee-share",
        "5",
        "--service-uri",
        &info.transcoder,
    ];
    let out = cli(&register, &chain, &account);
    assert!(
        out.contains("plan: BondingManager.transcoder")
            && out.contains("plan: ServiceRegistry.setServiceURI")
            && out.contains("dry run: would succeed (gas estimate "),
        "{out}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json"], &chain, &account)).unwrap();
    // (Bonded to itself it counts as registered already; the dry run set
    // neither its parameters nor its URI.)
    assert_eq!(
        (&status["reward_cut_percent"], &status["service_uri"]),
        (&serde_json::json!(0.0), &serde_json::json!("")),
        "a dry run sends nothing"
    );
    let out = cli(&[&register[..], &["--yes"]].concat(), &chain, &account);
    assert!(out.contains("registered"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json"], &chain, &account)).unwrap();
    assert_eq!(status["registered"], true);
    assert_eq!(status["active"], false);
    assert_eq!(status["service_uri"], info.transcoder.as_str());
    let round = next_round(&orch_client).await;

    // The shim initializes the round, sees itself active and calls reward.
    wait_until(
        "the shim to reward in the new round",
        Duration::from_secs(30),
        || async { orch_client.stake_status().await.unwrap().last_reward_round == round },
    )
    .await;

    // A segment without tickets: no credit, refused, nothing done.
    let info = grpc
        .get_orchestrator(gateway.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    let empty = net::Payment {
        sender: gateway.address.to_vec(),
        expected_price: info.price_info.clone(),
        ..Default::default()
    };
    let (status, body) = post(
        &url,
        &seg_data(&gateway, &info, &segment, 1),
        &empty,
        segment.clone(),
    )
    .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "Insufficient balance")
    );

    // A go-livepeer remote transcoder (lpworker attach, which speaks its
    // protocol) registers with the shim and does the paid work.
    let _transcoder = attach(&shim.addr);
    let shim_log = || std::fs::read_to_string(&shim.log).unwrap_or_default();
    wait_until(
        "the transcoder to register",
        Duration::from_secs(30),
        || async { shim_log().contains("remote transcoder registered") },
    )
    .await;

    // Paid: 12 tickets of EV 2e6 wei cover 12M pixels at 2 wei/pixel.
    let payment = gateway.payment(&info, 12);
    let video_tickets = gateway.tickets(&payment);
    let (status, body) = post(
        &url,
        &seg_data(&gateway, &info, &segment, 2),
        &payment,
        segment.clone(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let result = net::TranscodeResult::decode(body.as_slice()).unwrap();
    let Some(net::transcode_result::Result::Data(data)) = result.result else {
        panic!("transcode failed: {result:?}");
    };
    assert_eq!(data.segments.len(), 2);
    assert!(
        shim_log().contains("segment sent to remote transcoder"),
        "the paid segment went to the remote transcoder"
    );
    let mut hashes = Vec::new();
    let mut pixels = 0;
    for s in &data.segments {
        let bytes = http()
            .get(&s.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(bytes.len() > 1000);
        hashes.extend_from_slice(keccak256(&bytes).as_slice());
        pixels += s.pixels;
    }
    // TranscodeData.sig: the orchestrator's signature over the renditions.
    let signer = lpworker::pm::signature::recover_digest(
        lpworker::pm::signature::personal_hash(keccak256(&hashes).as_slice()),
        &data.sig,
    )
    .unwrap();
    assert_eq!(signer, account.address);
    assert!(pixels > 1_000_000 && pixels < 12_000_000, "{pixels}");
    let info = result.info.unwrap();
    assert!(
        info.ticket_params.is_some(),
        "fresh params come back with the result"
    );

    // Credit left over pays for further segments without tickets while it
    // covers the segment's estimated cost and at least one ticket's EV
    // (go-livepeer's SufficientBalance); then the balance is short and work
    // is refused. In pixels at 2 wei each: 12M of credit, EV 1M.
    let mut balance = 12_000_000 - pixels;
    let mut seq = 3;
    while balance >= SEGMENT_ESTIMATE.max(1_000_000) {
        let (status, body) = post(
            &url,
            &seg_data(&gateway, &info, &segment, seq),
            &empty,
            segment.clone(),
        )
        .await;
        assert_eq!(
            status,
            200,
            "balance {balance}: {}",
            String::from_utf8_lossy(&body)
        );
        balance -= pixels;
        seq += 1;
    }
    let (status, body) = post(
        &url,
        &seg_data(&gateway, &info, &segment, seq),
        &empty,
        segment.clone(),
    )
    .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "Insufficient balance")
    );

    // Every ticket won (face value = EV). None is redeemed while its params
    // live (redeeming reveals the recipientRand); once the chain passes
    // their expiration block the shim redeems them all.
    // (The AI ticket's params expired with the round mined above.)
    for t in &video_tickets {
        assert!(
            !used(&orch_client, t.hash()).await,
            "redeemed before its params expired"
        );
    }
    common::chain::mine(&orch_client, 41).await;
    for t in ai_tickets.iter().chain(&video_tickets) {
        let h = t.hash();
        wait_until("redemption", Duration::from_secs(60), || {
            used(&orch_client, h)
        })
        .await;
    }
    let metrics = shim.metrics_text().await;
    let redeemed = Shim::redeemed(&metrics);
    assert!(redeemed >= 13.0, "{metrics}");
    assert!(
        metrics.contains("lpworker_chain_rewards_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn winning_tickets_survive_kill_9_and_are_each_redeemed_once() {
    let mut chain = LocalChain::start(&["--round-length=2000", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    orch_client
        .bond(parse_ether("100").unwrap(), None)
        .await
        .unwrap();
    orch_client.register_transcoder(10.0, 5.0).await.unwrap();
    next_round(&orch_client).await;
    assert!(orch_client.initialize_round().await.unwrap());
    let gateway_client = chain.client(2).await;
    fund_sender(&gateway_client, "1", "1").await;

    let worker = ServeProcess::start(&["--max-sessions", "1"]);
    let datadir = dir.path().join("data");
    let mut shim = Shim::start(&chain, &account, &worker.grpc.to_string(), &datadir, &[]);
    let info = shim
        .grpc()
        .await
        .get_orchestrator(GatewaySigner::new(&chain, 2).orchestrator_request())
        .await
        .unwrap()
        .into_inner();

    // Four gateway streams pay 10 tickets per `POST /payment`, each taking
    // the fresh params from the last result, until ≥ 1000 are acknowledged.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<B256>::new()));
    let mut streams = Vec::new();
    for _ in 0..4 {
        let acked = acked.clone();
        let mut gateway = GatewaySigner::new(&chain, 2);
        let mut info = info.clone();
        streams.push(tokio::spawn(async move {
            loop {
                let payment = gateway.payment(&info, 10);
                let tickets = gateway.tickets(&payment);
                let seg = gateway.signed(net::SegData {
                    auth_token: info.auth_token.clone(),
                    ..Default::default()
                });
                let r = http()
                    .post(format!("{}/payment", info.transcoder))
                    .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
                    .header("Livepeer-Payment", b64(&payment.encode_to_vec()))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != 200 {
                    return;
                }
                let Ok(body) = r.bytes().await else { return };
                info = net::PaymentResult::decode(body.as_ref())
                    .unwrap()
                    .info
                    .unwrap();
                acked
                    .lock()
                    .unwrap()
                    .extend(tickets.iter().map(|t| t.hash()));
            }
        }));
    }
    wait_until(
        "1000 acknowledged tickets",
        Duration::from_secs(300),
        || {
            let n = acked.lock().unwrap().len();
            async move { n >= 1000 }
        },
    )
    .await;
    // Mid-load: the streams are still sending.
    shim.kill9();
    for s in streams {
        s.await.unwrap();
    }
    let acked: Vec<B256> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000);

    // On disk after the crash: every acknowledged winning ticket, once.
    let db = datadir.join("tickets.sqlite");
    let rows: Vec<(Vec<u8>, String)> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn
            .prepare("SELECT ticket_hash, status FROM winning_tickets")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let stored: std::collections::HashMap<B256, String> = rows
        .iter()
        .map(|(h, s)| (B256::from_slice(h), s.clone()))
        .collect();
    assert_eq!(stored.len(), rows.len(), "each ticket stored once");
    for h in &acked {
        let status = stored
            .get(h)
            .unwrap_or_else(|| panic!("acknowledged ticket {h} lost"));
        assert!(
            ["queued", "redeeming", "redeemed"].contains(&status.as_str()),
            "{status}"
        );
    }

    // Restart: whatever was queued or mid-redemption is redeemed, each once.
    let nonce_before = common::chain::nonce(&orch_client, account.address).await;
    let _shim = Shim::start(&chain, &account, &worker.grpc.to_string(), &datadir, &[]);
    // Redeemable once their params expire (40 blocks after issue).
    common::chain::mine(&orch_client, 41).await;
    let total = rows.len();
    wait_until(
        "every stored ticket redeemed",
        // All of them wait for their params to expire, then go one
        // transaction each through ganache's JavaScript EVM (~0.5 s).
        Duration::from_secs(1200),
        || {
            let db = db.clone();
            async move {
                let conn = rusqlite::Connection::open(&db).unwrap();
                let n: usize = conn
                    // `used`: sent just before the crash and mined; found used
                    // on chain after the restart, so not sent again.
                    .query_row(
                        "SELECT COUNT(*) FROM winning_tickets WHERE status IN ('redeemed', 'used')",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                n == total
            }
        },
    )
    .await;
    for h in &acked {
        assert!(used(&orch_client, *h).await, "ticket {h} redeemed on chain");
    }
    // Never twice and never a wasted transaction: one per ticket redeemed
    // after the restart, plus at most a round initialization and a reward.
    let was_redeemed = rows.iter().filter(|(_, s)| s == "redeemed").count() as u64;
    let sent = common::chain::nonce(&orch_client, account.address).await - nonce_before;
    assert!(
        sent <= (total as u64 - was_redeemed) + 2,
        "{sent} transactions for {} tickets",
        total as u64 - was_redeemed
    );
}

/// A JSON-RPC proxy in front of the test chain at a hosted-provider-like
/// URL whose path is the API key; once `fail` is set it answers 429 as a
/// provider does under load.
/// `gateway`'s SegData signed by the independent signer (Python
/// eth-account over bytes built from go-livepeer's rules).
fn independently_signed(chain: &LocalChain, index: usize, seg: net::SegData) -> net::SegData {
    use std::io::Write;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/independent/sign_segdata.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let request = serde_json::json!({
        "key": chain.private_key(index),
        "manifest_id": alloy_primitives::hex::encode(&seg.manifest_id),
        "seq": seg.seq,
        "hash": alloy_primitives::hex::encode(&seg.hash),
        "profiles": Vec::<String>::new(),
    });
    writeln!(child.stdin.take().unwrap(), "{request}").unwrap();
    let out = child.wait_with_output().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    net::SegData {
        sig: alloy_primitives::hex::decode(reply["sig"].as_str().unwrap()).unwrap(),
        ..seg
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_works_free_spends_another_gateways_credit_or_reads_the_rpc_key() {
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());

    // On a chain with no price at all the shim refuses to start (go-livepeer
    // refuses too): it would work for free by accident.
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "orchestrator",
            "-serviceAddr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--workers", "127.0.0.1:9", "-datadir"])
        .arg(dir.path().join("unpriced"))
        .args(eth_flags(&chain, &account))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no price set"), "{stderr}");

    // Deployment used most of round 0: start at the top of round 1 (the
    // shim initializes it).
    next_round(&chain.client(1).await).await;
    let victim_client = chain.client(2).await;
    fund_sender(&victim_client, "1", "0").await;
    let late_client = chain.client(4).await;
    fund_sender(&late_client, "1", "0").await;
    let mut victim = GatewaySigner::new(&chain, 2);
    let thief = GatewaySigner::new(&chain, 3);
    let mut late = GatewaySigner::new(&chain, 4);
    let proxy = rpc_proxy(&chain.rpc).await;
    // AI-only pricing: base price 0, the model at 2 wei per output pixel.
    let (worker, ai_models) = upscale_worker(dir.path(), 2);
    let shim = Shim::start_with(
        &chain,
        &account,
        &worker.grpc.to_string(),
        &dir.path().join("data"),
        &proxy.url,
        &[
            "-pricePerUnit",
            "0",
            "-ticketEV",
            "2000000",
            "-maxFaceValue",
            "2000000",
            "-autoAdjustPrice",
            "false",
        ],
        &["--ai-models", ai_models.to_str().unwrap()],
    );
    let mut grpc = shim.grpc().await;
    let upscale = lpworker::ai::PipelineKind::from_name("upscale")
        .unwrap()
        .capability()
        .expect("an ai-runner pipeline");
    let png =
        lpworker::ai::media::encode_png(&image::RgbImage::from_pixel(12, 8, image::Rgb([9, 9, 9])))
            .unwrap();
    let upscale_request = |creds: String, payment: &net::Payment, model: Option<&str>| {
        let mut form = reqwest::multipart::Form::new().text("prompt", "x").part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("in.png"),
        );
        if let Some(m) = model {
            form = form.text("model_id", m.to_string());
        }
        http()
            .post(format!("https://{}/upscale", shim.addr))
            .header("Livepeer-Segment", creds)
            .header("Livepeer-Payment", b64(&payment.encode_to_vec()))
            .multipart(form)
            .send()
    };
    let served = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .matches("ai request served")
            .count()
    };

    // Base price 0 does not make a priced model free: no tickets, 400,
    // nothing run; with the model left out it is priced as the model the
    // workers would run.
    let info = grpc
        .get_orchestrator(victim.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    let no_tickets = net::Payment {
        sender: victim.address.to_vec(),
        ..Default::default()
    };
    for model in [Some("lpworker/nearest-2x"), None] {
        let r = upscale_request(
            ai_creds(&victim, &info, "lpworker/nearest-2x"),
            &no_tickets,
            model,
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(r.text().await.unwrap(), "Insufficient balance");
    }
    // At base price 0 no params are issued for unpriced work at all.
    assert!(info.ticket_params.is_none());
    // A model nobody serves is refused before any payment is looked at.
    let r = upscale_request(
        ai_creds(&victim, &info, "x"),
        &no_tickets,
        Some("no/such-model"),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("not served"));
    assert_eq!(served(&shim.log), 0, "nothing ran");

    // The victim pays for the model and keeps credit after its request.
    let info = grpc
        .get_orchestrator(model_request(&victim))
        .await
        .unwrap()
        .into_inner();
    let paid = victim.payment(&info, 3);
    let r = upscale_request(
        ai_creds(&victim, &info, "lpworker/nearest-2x"),
        &paid,
        Some("lpworker/nearest-2x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(served(&shim.log), 1);

    // The thief, with its own valid auth token, names the victim as payer:
    // refused, whether it signs the segment credentials itself, not at all,
    // or replays credentials the victim signed (as another orchestrator the
    // victim pays could): the token pays only as the gateway it was issued to.
    let thief_info = grpc
        .get_orchestrator(model_request(&thief))
        .await
        .unwrap()
        .into_inner();
    let as_victim = net::Payment {
        sender: victim.address.to_vec(),
        ..Default::default()
    };
    let unsigned = b64(&net::SegData {
        manifest_id: format!("{upscale}_lpworker/nearest-2x").into_bytes(),
        auth_token: thief_info.auth_token.clone(),
        ..Default::default()
    }
    .encode_to_vec());
    let replayed = ai_creds(&victim, &thief_info, "lpworker/nearest-2x");
    for creds in [
        ai_creds(&thief, &thief_info, "lpworker/nearest-2x"),
        unsigned,
        replayed,
    ] {
        let r = upscale_request(creds, &as_victim, Some("lpworker/nearest-2x"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        assert_eq!(
            r.text().await.unwrap(),
            "auth token was issued to another sender"
        );
    }
    // A token issued to the victim, the victim's name, but no signature of
    // the victim's: the signature check refuses it.
    let victim_info = grpc
        .get_orchestrator(model_request(&victim))
        .await
        .unwrap()
        .into_inner();
    let r = upscale_request(
        ai_creds(&thief, &victim_info, "lpworker/nearest-2x"),
        &as_victim,
        Some("lpworker/nearest-2x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.text().await.unwrap(), "Sig check failed");
    assert_eq!(served(&shim.log), 1, "the thief got nothing done");
    // The victim's own credit still pays for its next request, signed by a
    // signer that shares no code with lpworker (as a real gateway's would be).
    let creds = independently_signed(
        &chain,
        2,
        net::SegData {
            manifest_id: format!("{upscale}_lpworker/nearest-2x").into_bytes(),
            hash: keccak256(b"").to_vec(),
            auth_token: info.auth_token.clone(),
            ..Default::default()
        },
    );
    let r = upscale_request(
        b64(&creds.encode_to_vec()),
        &as_victim,
        Some("lpworker/nearest-2x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(served(&shim.log), 2);

    // Ticket signatures are checked off the async threads: thousands of
    // badly signed tickets on valid params (the costly case: every one is
    // recovered) do not hold up GetOrchestrator for other gateways.
    let flood_info = grpc
        .get_orchestrator(model_request(&victim))
        .await
        .unwrap()
        .into_inner();
    let mut floods = Vec::new();
    for _ in 0..8 {
        let mut p = victim.payment(&flood_info, 3000);
        for t in &mut p.ticket_sender_params {
            t.sig[10] ^= 0xff;
        }
        let seg = b64(&victim
            .signed(net::SegData {
                auth_token: flood_info.auth_token.clone(),
                ..Default::default()
            })
            .encode_to_vec());
        // HTTP/1.1: a 3000-ticket header is larger than HTTP/2 allows.
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .http1_only()
            .build()
            .unwrap();
        let url = format!("https://{}/payment", shim.addr);
        floods.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("Livepeer-Segment", seg)
                .header("Livepeer-Payment", b64(&p.encode_to_vec()))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut latencies = Vec::new();
    while !floods.iter().all(|f| f.is_finished()) {
        let t = Instant::now();
        grpc.get_orchestrator(late.orchestrator_request())
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    for f in floods {
        let (status, body) = f.await.unwrap();
        assert_eq!(status, 400);
        assert!(body.contains("3000 of 3000 tickets rejected"), "{body}");
    }
    latencies.sort();
    assert!(latencies.len() >= 5, "{latencies:?}");
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    eprintln!(
        "GetOrchestrator during 8 payments of 3000 badly signed tickets: {} calls, p50 {:?}, p99 {p99:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    // Debug build, 2 cores shared with the other tests: generous, but far
    // below the seconds a blocked runtime would take.
    assert!(p99 < Duration::from_millis(250), "{latencies:?}");

    // The provider starts refusing (429). A gateway whose funds must be read
    // gets a 503 that does not carry the RPC URL's key; neither does the log.
    let late_info = grpc
        .get_orchestrator(model_request(&late))
        .await
        .unwrap()
        .into_inner();
    let late_payment = late.payment(&late_info, 1);
    tokio::time::sleep(Duration::from_secs(3)).await; // past the funds cache
    proxy.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = http()
        .post(format!("https://{}/payment", shim.addr))
        .header(
            "Livepeer-Segment",
            b64(&late
                .signed(net::SegData {
                    auth_token: late_info.auth_token.clone(),
                    ..Default::default()
                })
                .encode_to_vec()),
        )
        .header("Livepeer-Payment", b64(&late_payment.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(!body.contains(RPC_KEY), "{body}");
    // Let the chain loop fail a few times too, then read the whole log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(&shim.log).unwrap();
    assert!(
        log.contains("429") || log.contains("rate limited"),
        "the failure is logged"
    );
    assert!(!log.contains(RPC_KEY), "the RPC key is in the log");
}

/// A runner app for paid sessions: `/health` and `/echo` (the session it
/// was reached as).
async fn echo_runner() -> String {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/echo",
            axum::routing::any(|headers: axum::http::HeaderMap| async move {
                headers
                    .get("livepeer-session-id")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runner_sessions_are_priced_in_usd_paid_metered_and_released_when_payment_stops() {
    use base64::Engine;
    const SECRET: &str = "runner-bootstrap";
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    fund_sender(&chain.client(2).await, "1", "1").await;
    fund_sender(&chain.client(3).await, "1", "1").await;
    let mut gateway = GatewaySigner::new(&chain, 2);
    let mut other = GatewaySigner::new(&chain, 3);
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();
    // Bonded and registered, active from the next round: the broker
    // credits a winning ticket's fees to an active transcoder's pool.
    bond_and_register(&chain, &account);
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();

    // Chainlink's aggregator behind a feed that says "ETH / USD": $2000,
    // but last updated 3 hours ago.
    let feed = chain.command("deployPriceFeed 8 200000000000");
    let aggregator = feed["aggregator"].as_str().unwrap().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    chain.command(&format!(
        "setPrice {aggregator} 200000000000 {}",
        now - 3 * 3600
    ));
    // A wrong address (the bare aggregator describes itself otherwise) is
    // refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "orchestrator",
            "-serviceAddr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--use-live-runners",
            "--orch-secret",
            SECRET,
            "-priceFeedAddr",
            &aggregator,
        ])
        .arg("-datadir")
        .arg(dir.path().join("wrong"))
        .args(eth_flags(&chain, &account))
        .args(PRICING)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ETH / USD"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Video priced in USD too: $0.000002 a pixel is 1e9 wei at $2000; one
    // gateway pays half that, also in USD (-pricePerGateway, go-livepeer's
    // JSON with "currency": "USD").
    let usd_pricing: Vec<&str> = PRICING
        .iter()
        .map(|a| if *a == "2" { "0.000002USD" } else { a })
        .collect();
    let favoured = GatewaySigner::new(&chain, 5);
    let per_gateway = format!(
        r#"{{"gateways":[{{"ethaddress":"{}","priceperunit":"0.000001","pixelsperunit":1,"currency":"USD"}}]}}"#,
        favoured.address
    );
    let shim = Shim::start_with(
        &chain,
        &account,
        "",
        &dir.path().join("data"),
        &chain.rpc,
        &usd_pricing,
        &[
            "--use-live-runners",
            "--orch-secret",
            SECRET,
            "-priceFeedAddr",
            feed["feed"].as_str().unwrap(),
            "-livePaymentInterval",
            "1s",
            "--price-feed-refresh",
            "1s",
            "-pricePerGateway",
            &per_gateway,
        ],
    );
    let uri = format!("https://{}", shim.addr);
    let runner_url = echo_runner().await;
    // $0.0000072 an hour at $2000 is 1e6 wei a second: one 2e6 wei
    // ticket pays for 2 s.
    let (status, body) = http()
        .post(format!("{uri}/runners/heartbeat"))
        .header("authorization", SECRET)
        .json(&serde_json::json!({
            "runner_url": runner_url, "app": "test/paid", "capacity": 2,
            "price_info": {"price": "0.0000072", "currency": "usd", "unit": "hour"}
        }))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    let runner: serde_json::Value = body.json().await.unwrap();
    let id = runner["runner_id"].as_str().unwrap().to_string();
    // Unpriced on chain is refused.
    let r = http()
        .post(format!("{uri}/runners/heartbeat"))
        .header("authorization", SECRET)
        .json(&serde_json::json!({"runner_url": runner_url, "app": "test/free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let discovery = || async {
        let v: serde_json::Value = http()
            .get(format!("{uri}/discovery"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[0]["runners"][0].clone()
    };
    // A stale reading prices no session: no price advertised, no session.
    assert_eq!(discovery().await["price_info"], serde_json::Value::Null);
    let reserve = format!("{uri}/apps/{id}/session");
    let r = http()
        .post(&reserve)
        .header("Livepeer-Payer-Address", gateway.address.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // A fresh round: picked up within the refresh period.
    chain.command(&format!("setPrice {aggregator} 200000000000"));
    wait_until("a fresh price", Duration::from_secs(15), || async {
        discovery().await["price_info"]
            == serde_json::json!({"price": 1_000_000, "currency": "wei", "unit": "seconds"})
    })
    .await;

    let quote = |request: net::OrchestratorRequest| {
        let shim = &shim;
        async move {
            let mut grpc = shim.grpc().await;
            let info = grpc.get_orchestrator(request).await.unwrap().into_inner();
            info.price_info
                .map(|p| (p.price_per_unit, p.pixels_per_unit))
        }
    };
    let price_request = gateway.orchestrator_request();
    let video_price = || quote(price_request.clone());
    assert_eq!(video_price().await, Some((1_000_000_000, 1)));
    assert_eq!(
        quote(favoured.orchestrator_request()).await,
        Some((500_000_000, 1))
    );

    // No payer: 402 with go-livepeer's JSON error; a payer: the challenge.
    let r = http().post(&reserve).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"error": {"message": "invalid live runner payment signer address"}})
    );
    let r = http()
        .post(&reserve)
        .header("Livepeer-Payer-Address", gateway.address.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let challenge: serde_json::Value = r.json().await.unwrap();
    let manifest = challenge["manifest_id"].as_str().unwrap().to_string();
    assert_eq!(challenge["orchestrator"], uri.as_str());
    assert_eq!(
        challenge["payment_url"],
        format!("{uri}/apps/{id}/session/{manifest}/payment")
    );
    let info = net::OrchestratorInfo::decode(
        base64::engine::general_purpose::STANDARD
            .decode(challenge["payment_params"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(info.address, account.address.to_vec());
    assert_eq!(
        info.price_info
            .as_ref()
            .map(|p| (p.price_per_unit, p.pixels_per_unit)),
        Some((1_000_000, 1))
    );
    assert_eq!(info.auth_token.as_ref().unwrap().session_id, manifest);
    let seg_for = |signer: &GatewaySigner, manifest_id: &str| {
        signer.signed(net::SegData {
            manifest_id: manifest_id.as_bytes().to_vec(),
            auth_token: info.auth_token.clone(),
            ..Default::default()
        })
    };

    // Another gateway cannot pay for (and so use) this challenge.
    let theirs = other.payment(&info, 1);
    let (status, body) = post_paid(&reserve, &seg_for(&other, &manifest), &theirs).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (403, "auth token was issued to another sender\n")
    );
    // The segment credentials must name the challenge's manifest.
    let payment = gateway.payment(&info, 3);
    let (status, body) = post_paid(&reserve, &seg_for(&gateway, "another"), &payment).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (403, "mismatched manifest and auth token\n")
    );
    let (status, body) = post_paid(&reserve, &seg_for(&gateway, &manifest), &payment).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let session: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(session["session_id"], manifest.as_str());
    let app_url = session["app_url"].as_str().unwrap().to_string();
    // The same payment again is a replay; a new one cannot reserve the
    // session twice.
    let (status, _) = post_paid(&reserve, &seg_for(&gateway, &manifest), &payment).await;
    assert_eq!(status, 400);
    let again = gateway.payment(&info, 1);
    let (status, _) = post_paid(&reserve, &seg_for(&gateway, &manifest), &again).await;
    assert_eq!(status, 409);
    // A payment without tickets buys no session (a challenge answered
    // with nothing): the first interval is paid before anything runs.
    let r = http()
        .post(&reserve)
        .header("Livepeer-Payer-Address", gateway.address.to_string())
        .send()
        .await
        .unwrap();
    let empty_challenge: serde_json::Value = r.json().await.unwrap();
    let empty_manifest = empty_challenge["manifest_id"].as_str().unwrap();
    let empty_info = net::OrchestratorInfo::decode(
        base64::engine::general_purpose::STANDARD
            .decode(empty_challenge["payment_params"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let no_tickets = net::Payment {
        sender: gateway.address.to_vec(),
        expected_price: empty_info.price_info.clone(),
        ..Default::default()
    };
    let seg = gateway.signed(net::SegData {
        manifest_id: empty_manifest.as_bytes().to_vec(),
        auth_token: empty_info.auth_token.clone(),
        ..Default::default()
    });
    let (status, body) = post_paid(&reserve, &seg, &no_tickets).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "Insufficient balance\n")
    );
    assert_eq!(discovery().await["capacity_used"], 1);
    let r = http().get(format!("{app_url}/echo")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), manifest);

    // A top-up: 2 more tickets, answered with fresh params.
    let more = gateway.payment(&info, 2);
    let payment_url = challenge["payment_url"].as_str().unwrap();
    let (status, body) = post_paid(payment_url, &seg_for(&gateway, &manifest), &more).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let result = net::PaymentResult::decode(body.as_slice()).unwrap();
    assert!(result.info.unwrap().ticket_params.is_some());
    // Params about to expire: /refresh-payment gives new ones and a new
    // token for the same session, paid at the session's own URL.
    let refresh = |sender: String| {
        let uri = uri.clone();
        let manifest = manifest.clone();
        async move {
            let r = http()
                .post(format!("{uri}/refresh-payment"))
                .json(&serde_json::json!({"sender": sender, "manifest_id": manifest}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = refresh(gateway.address.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let refreshed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refreshed["manifest_id"], manifest.as_str());
    assert_eq!(refreshed["payment_url"], challenge["payment_url"]);
    let refreshed_info = net::OrchestratorInfo::decode(
        base64::engine::general_purpose::STANDARD
            .decode(refreshed["payment_params"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(refreshed_info.auth_token.unwrap().session_id, manifest);
    assert_eq!(refresh(other.address.to_string()).await.0, 409);
    assert_eq!(refresh("not-an-address".into()).await.0, 400);
    // Someone else's tickets cannot top it up.
    let (status, _) = post_paid(
        payment_url,
        &seg_for(&other, &manifest),
        &other.payment(&info, 1),
    )
    .await;
    assert_eq!(status, 403);

    // Payments stop: 5 tickets are 10 s of credit, billed each second;
    // then the session is released.
    let paid_at = Instant::now();
    wait_until(
        "the unpaid session's release",
        Duration::from_secs(30),
        || async {
            http()
                .get(format!("{app_url}/echo"))
                .send()
                .await
                .unwrap()
                .status()
                == 404
        },
    )
    .await;
    let lasted = paid_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(6),
        "released after {lasted:?}: before its credit ran out"
    );
    assert_eq!(discovery().await["capacity_used"], 0);

    // ETH doubles: the video price halves, the runner's advertised price too.
    chain.command(&format!("setPrice {aggregator} 400000000000"));
    wait_until("the new ETH price", Duration::from_secs(15), || async {
        video_price().await == Some((500_000_000, 1))
            && quote(favoured.orchestrator_request()).await == Some((250_000_000, 1))
    })
    .await;
    assert_eq!(discovery().await["price_info"]["price"], 500_000);

    // Every ticket won; once their params expire they are redeemed.
    common::chain::mine(&orch_client, 41).await;
    for t in gateway
        .tickets(&payment)
        .iter()
        .chain(&gateway.tickets(&more))
    {
        let h = t.hash();
        wait_until("redemption", Duration::from_secs(60), || {
            used(&orch_client, h)
        })
        .await;
    }
}
