//! `lpworker orchestrator` on a chain, end to end with real processes: the
//! real Livepeer contracts on a local ganache chain, a `serve` worker, the
//! shim with a keystore account, and a test gateway that pays with signed
//! tickets the way go-livepeer's gateway does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{keccak256, utils::parse_ether, Address, B256};
use common::chain::{fund_sender, next_round, GatewaySigner, LocalChain};
use common::{b64, clip, insecure_http as http, tempdir, Clip, ServeProcess};
use lpworker::chain::ChainClient;
use lpworker::proto::lp_rpc as net;
use prost::Message;

/// An orchestrator account in a keystore directory, with its password file.
struct Account {
    keystore: PathBuf,
    password_file: PathBuf,
    address: Address,
}

fn keystore(chain: &mut LocalChain, index: usize, dir: &Path) -> Account {
    let reply = chain.command(&format!(
        "keystore {index} {} hunter2",
        dir.join("keystore").display()
    ));
    let password_file = dir.join("password");
    std::fs::write(&password_file, "hunter2\n").unwrap();
    Account {
        keystore: dir.join("keystore"),
        password_file,
        address: reply["address"].as_str().unwrap().parse().unwrap(),
    }
}

fn eth_flags(chain: &LocalChain, account: &Account) -> Vec<String> {
    vec![
        "-ethUrl".into(),
        chain.rpc.clone(),
        "-ethController".into(),
        chain.controller.to_string(),
        "-ethKeystorePath".into(),
        account.keystore.display().to_string(),
        "-ethPassword".into(),
        account.password_file.display().to_string(),
    ]
}

/// Runs `lpworker orchestrator <sub> ...` and returns its stdout.
fn cli(sub: &[&str], chain: &LocalChain, account: &Account) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .arg("orchestrator")
        .args(sub)
        .args(eth_flags(chain, account))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "orchestrator {sub:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Shim {
    child: Child,
    addr: String,
    metrics: String,
}

impl Shim {
    fn start(
        chain: &LocalChain,
        account: &Account,
        workers: &str,
        datadir: &Path,
        extra: &[&str],
    ) -> Shim {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // Logs outlive the test's temporary directory, for post-mortems.
        let log_path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("shim-{}.log", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(&log_path).unwrap();
        eprintln!("shim log: {}", log_path.display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args([
                "orchestrator",
                "-serviceAddr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--workers", workers, "-datadir"])
            .arg(datadir)
            .args(eth_flags(chain, account))
            // Every ticket wins (face value = EV) so that redemption is exercised.
            .args([
                "-pricePerUnit",
                "1",
                "-pixelsPerUnit",
                "1",
                "-ticketEV",
                "1000000",
                "-maxFaceValue",
                "1000000",
            ])
            .args([
                "-initializeRound",
                "true",
                "--chain-poll",
                "1",
                "--metrics-addr",
            ])
            .arg(metrics.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let line = common::ready_line(&mut child);
        let addr = common::line_field(&line, "addr=")
            .unwrap_or_else(|| panic!("shim did not start: {line:?}; see {}", log_path.display()))
            .to_string();
        Shim {
            child,
            addr,
            metrics: format!("http://{metrics}/metrics"),
        }
    }

    async fn grpc(
        &self,
    ) -> net::orchestrator_client::OrchestratorClient<tonic::transport::Channel> {
        let channel = lpworker::attach::insecure_tls::grpc_channel(&self.addr, |e| e)
            .await
            .unwrap();
        net::orchestrator_client::OrchestratorClient::new(channel)
    }

    fn kill9(&mut self) {
        // SIGKILL: no shutdown path runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seg_data(info: &net::OrchestratorInfo, body: &[u8], seq: i64) -> net::SegData {
    let profile = |name: &str, w, h| net::VideoProfile {
        name: name.into(),
        width: w,
        height: h,
        bitrate: 400_000,
        fps: 30,
        ..Default::default()
    };
    net::SegData {
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
    }
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

async fn used(client: &ChainClient, hash: B256) -> bool {
    client
        .ticket_broker()
        .await
        .unwrap()
        .usedTickets(hash)
        .call()
        .await
        .unwrap()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_pays_with_tickets_video_is_gated_by_stake_and_winners_are_redeemed() {
    let mut chain = LocalChain::start(&["--round-length=50"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    let gateway_client = chain.client(2).await;
    fund_sender(&gateway_client, "1", "1").await;
    let mut gateway = GatewaySigner::new(&chain, 2);
    // Deployment used most of round 0: start at the top of round 1.
    next_round(&orch_client).await;

    let worker = ServeProcess::start(&[
        "--max-sessions",
        "2",
        "--ai-models",
        "upscale:lpworker/nearest-2x:true",
        "--models-dir",
        "models",
    ]);
    // The upscale model has its own price: 2 wei per output pixel.
    let ai_models = dir.path().join("aiModels.json");
    std::fs::write(
        &ai_models,
        r#"[{"pipeline":"upscale","model_id":"lpworker/nearest-2x","warm":true,"price_per_unit":2,"pixels_per_unit":1}]"#,
    )
    .unwrap();
    let shim = Shim::start(
        &chain,
        &account,
        &worker.grpc.to_string(),
        &dir.path().join("data"),
        &["--ai-models", ai_models.to_str().unwrap()],
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
    assert_eq!(info.price_info.as_ref().unwrap().price_per_unit, 1);
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
        &seg_data(&info, &segment, 0),
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
        .capability();
    let info = grpc
        .get_orchestrator(gateway.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.capabilities_prices,
        vec![net::PriceInfo {
            price_per_unit: 2,
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
            b64(&net::SegData {
                auth_token: info.auth_token.clone(),
                ..Default::default()
            }
            .encode_to_vec()),
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
    // A gateway asking for the model gets params at the model's price.
    let mut request = gateway.orchestrator_request();
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
    let info = grpc.get_orchestrator(request).await.unwrap().into_inner();
    assert_eq!(info.price_info.as_ref().unwrap().price_per_unit, 2);
    let ai_payment = gateway.payment(&info, 1);
    let ai_tickets = gateway.tickets(&ai_payment);

    let r = http()
        .post(format!("{}/upscale", info.transcoder))
        .header(
            "Livepeer-Segment",
            b64(&net::SegData {
                auth_token: info.auth_token.clone(),
                ..Default::default()
            }
            .encode_to_vec()),
        )
        .header("Livepeer-Payment", b64(&ai_payment.encode_to_vec()))
        .header("Authorization", "Livepeer-AI-Worker-1.0")
        .multipart(form(&png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // The operator bonds and registers with the CLI; active from the next round.
    let out = cli(&["bond", "--amount", "500"], &chain, &account);
    assert!(out.contains("bonded 500 LPT"), "{out}");
    let out = cli(
        &[
            "register",
            "--reward-cut",
            "10",
            "--fee-share",
            "5",
            "--service-uri",
            &info.transcoder,
        ],
        &chain,
        &account,
    );
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
    let (status, body) = post(&url, &seg_data(&info, &segment, 1), &empty, segment.clone()).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "Insufficient balance")
    );

    // Paid: 12 tickets of EV 1e6 wei cover ~1.4M pixels at 1 wei/pixel.
    let payment = gateway.payment(&info, 12);
    let video_tickets = gateway.tickets(&payment);
    let (status, body) = post(
        &url,
        &seg_data(&info, &segment, 2),
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
    // is at least one ticket's EV (go-livepeer's SufficientBalance); then
    // the balance is short and work is refused.
    let mut balance = 12_000_000 - pixels;
    let mut seq = 3;
    while balance >= 1_000_000 {
        let (status, body) = post(
            &url,
            &seg_data(&info, &segment, seq),
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
        &seg_data(&info, &segment, seq),
        &empty,
        segment.clone(),
    )
    .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "Insufficient balance")
    );

    // Every ticket won (face value = EV): the shim redeems them all.
    for t in ai_tickets.iter().chain(&video_tickets) {
        let h = t.hash();
        wait_until("redemption", Duration::from_secs(60), || {
            used(&orch_client, h)
        })
        .await;
    }
    let metrics = http()
        .get(&shim.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let redeemed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("lpworker_ticket_redemptions_total{outcome=\"redeemed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(redeemed >= 13.0, "{metrics}");
    assert!(
        metrics.contains("lpworker_chain_rewards_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn winning_tickets_survive_kill_9_and_are_each_redeemed_once() {
    let mut chain = LocalChain::start(&["--round-length=2000"]);
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
                let seg = net::SegData {
                    auth_token: info.auth_token.clone(),
                    ..Default::default()
                };
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
    let total = rows.len();
    wait_until(
        "every stored ticket redeemed",
        Duration::from_secs(600),
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
