//! A paid Live Runner session on chain driven by the official SDK
//! (livepeer-gateway 1.0.0, unchanged, in `.venv-sdk`) end to end: the real
//! Livepeer contracts and a Chainlink ETH/USD feed on a local chain, the
//! shim with a keystore account, the SDK as the runner (priced in USD) and
//! as the gateway, paying through a remote signer served here on a funded
//! gateway key (tests/common/remote_signer.rs, go-livepeer's semantics).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::chain::{
    bond_and_register, fund_sender, keystore, next_round, used, wait_until, ChainShim,
    GatewaySigner, LocalChain,
};
use common::live::{python, sdk_script, KillOnDrop};
use common::remote_signer::RemoteSigner;
use common::{insecure_http as http, tempdir};
use serde_json::Value;

const SECRET: &str = "runner-bootstrap";
const APP: &str = "test/paid-sdk";

/// One ticket is worth 2e6 wei and every ticket all but surely wins, so
/// redemption is exercised; the chain's gas price is 1 wei, so a
/// redemption costs 1.2M wei and the face value pays for it. The face
/// value is one wei above the EV: with face value = EV (win probability
/// 2^256 − 1) go-livepeer's sender refuses the params ("ticket faceValue
/// too low", pm/sender.go:203-205), and so does the test's signer.
const PRICING: &[&str] = &[
    "-pricePerUnit",
    "2",
    "-pixelsPerUnit",
    "1",
    "-ticketEV",
    "2000000",
    "-maxFaceValue",
    "2000001",
    "-autoAdjustPrice",
    "false",
];
/// $0.0000072 an hour at $2000 an ETH is 1e6 wei a second: a ticket buys 2 s.
const USD_PER_HOUR: &str = "0.0000072";
const WEI_PER_SECOND: f64 = 1e6;
const TICKET_EV_WEI: f64 = 2e6;
/// When the SDK gateway stops funding: between its 4th and 5th payment
/// (the SDK pays every 3 s after the reservation).
const FUND_SECONDS: f64 = 13.5;

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_pays_for_a_live_runner_session_through_a_remote_signer_and_it_is_released_when_funding_stops(
) {
    let started = Instant::now();
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    fund_sender(&chain.client(2).await, "1", "1").await;
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();
    // Bonded, registered and active from the next round: the broker
    // credits a winning ticket's fees to an active transcoder's pool.
    bond_and_register(&chain, &account);
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();

    // Chainlink's aggregator at $2000, behind a feed that says "ETH / USD".
    let feed = chain.command("deployPriceFeed 8 200000000000");
    let shim = ChainShim::start_with(
        &chain,
        &account,
        "",
        &dir.path().join("data"),
        &chain.rpc,
        PRICING,
        &[
            "--use-live-runners",
            "--orch-secret",
            SECRET,
            "-priceFeedAddr",
            feed["feed"].as_str().unwrap(),
            "-livePaymentInterval",
            "1s",
        ],
    );
    let signer = RemoteSigner::start(GatewaySigner::new(&chain, 2), Some(chain.rpc.clone())).await;

    // The runner: the SDK's register_runner, priced in USD an hour.
    let mut runner = Command::new(python())
        .arg(sdk_script("live_runner_app.py"))
        .args(["--orch", &shim.uri, "--secret", SECRET, "--app", APP])
        .args(["--price", USD_PER_HOUR, "--unit", "hour"])
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
    let runner_stderr = runner.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(runner_stderr).lines().map_while(Result::ok) {
            if std::env::var_os("LPWORKER_TEST_LOGS").is_some() {
                eprintln!("[runner] {l}");
            }
        }
    });
    let runner = KillOnDrop(runner);
    let runner_id = registered["runner_id"].as_str().unwrap().to_string();
    // The session events the runner's O2R channel reports.
    let (events_tx, events) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                let _ = events_tx.send(v);
            }
        }
    });

    let discovery = || async {
        let v: Value = http()
            .get(format!("{}/discovery", shim.uri))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[0]["runners"][0].clone()
    };
    wait_until(
        "the runner's wei price",
        Duration::from_secs(30),
        || async {
            discovery().await["price_info"]
                == serde_json::json!({"price": 1_000_000, "currency": "wei", "unit": "seconds"})
        },
    )
    .await;

    // The gateway: the SDK with the signer, nothing else.
    let sdk_started = SystemTime::now();
    let out = {
        let (python, script, uri, signer_url) = (
            python(),
            sdk_script("live_runner_paid.py"),
            shim.uri.clone(),
            signer.url.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(["--orch", &uri, "--app", APP, "--signer", &signer_url])
                .args(["--fund-seconds", &FUND_SECONDS.to_string()])
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
    eprintln!("SDK report: {report}");
    assert!(
        out.status.success() && report["ok"] == true,
        "SDK gateway failed: {}\n{}\nsigner calls: {:#?}\nshim log: {}",
        report["error"],
        String::from_utf8_lossy(&out.stderr),
        signer
            .calls()
            .iter()
            .map(|c| (c.status, c.error.clone(), c.kind.clone(), c.billable_units))
            .collect::<Vec<_>>(),
        shim.log.display()
    );
    assert_eq!(
        report["sdk_warnings"],
        serde_json::json!([]),
        "the SDK logged warnings"
    );

    // Without a signer the reservation is a 402 challenge.
    assert_eq!(report["unpaid"]["cause_status"], 402);
    assert_eq!(
        report["unpaid"]["error"],
        "Live runner paid call requires signer_url"
    );

    // 402 → signer → paid retry: the session is the challenge's manifest.
    let sid = report["session"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // (Off chain sessions are "session_…"; on chain the manifest ID the
    // signer was asked to pay for, checked below.)
    assert!(!sid.starts_with("session_"), "{sid}");
    assert_eq!(
        report["session"]["app_url"],
        format!("{}/apps/{runner_id}/session/{sid}/app", shim.uri)
    );
    assert_eq!(signer.sign_requests(), 1, "the SDK signs once per process");
    let calls = signer.calls();
    assert!(
        calls.iter().all(|c| c.status == 200),
        "the signer refused: {:?}",
        calls
            .iter()
            .filter(|c| c.status != 200)
            .map(|c| (c.status, &c.error))
            .collect::<Vec<_>>()
    );
    assert!(calls
        .iter()
        .all(|c| c.manifest_id == sid && c.kind == "live" && c.app == APP));
    let opening = &calls[0];
    assert!(!opening.had_state);
    assert_eq!(
        opening.billable_units, 10,
        "the opening payment is for 10 s"
    );
    assert_eq!(opening.tickets.len(), 5, "10 s at 1e6 wei/s is 5 tickets");
    let payment = opening.payment.as_ref().unwrap();
    assert_eq!(
        payment
            .expected_price
            .as_ref()
            .map(|p| (p.price_per_unit, p.pixels_per_unit)),
        Some((1_000_000, 1))
    );
    let seg = opening.seg_data.as_ref().unwrap();
    assert_eq!(seg.manifest_id, sid.as_bytes());
    assert_eq!(seg.auth_token.as_ref().unwrap().session_id, sid);
    assert!(lpworker::lp_rpc::seg_creds::verify(seg, signer.address()));

    // The SDK topped the session up every 3 s while funding it.
    let top_ups = &calls[1..];
    assert!(
        (3..=5).contains(&top_ups.len()),
        "{} top-ups in {FUND_SECONDS} s",
        top_ups.len()
    );
    for (i, c) in top_ups.iter().enumerate() {
        assert!(c.had_state, "top-up {i} came without the signer's state");
        assert_eq!(c.sequence_number, i as u64 + 1);
        // ⌈seconds since the last payment⌉: a little over 3.
        assert!(
            (3..=5).contains(&c.billable_units),
            "top-up {i} billed {} s",
            c.billable_units
        );
        assert!(!c.tickets.is_empty());
        let gap = c.at.duration_since(calls[i].at).unwrap().as_secs_f64();
        assert!(
            (2.5..4.5).contains(&gap),
            "top-up {i} {gap:.2} s after the last"
        );
    }
    // Nonces run on across the calls (carried in the state).
    let nonces: Vec<u32> = calls
        .iter()
        .flat_map(|c| c.tickets.iter().map(|t| t.sender_nonce))
        .collect();
    assert_eq!(nonces, (1..=nonces.len() as u32).collect::<Vec<_>>());
    let tickets: Vec<_> = calls.iter().flat_map(|c| c.tickets.clone()).collect();
    assert!(tickets.iter().all(|t| t.sender == signer.address()));

    // Requests through the app URL were served while funded.
    let echoes = report["echoes"].as_array().unwrap();
    assert!(echoes.len() >= 5, "{echoes:?}");
    assert!(echoes
        .iter()
        .all(|e| e["status"] == 200 && e["session_id"] == sid.as_str()));

    // Funding stopped: the credit still bought time, then the session was
    // released. The orchestrator credits each ticket's EV (2e6 wei, 2 s)
    // and meters 1e6 wei a second from the reservation, every second.
    let paid_s = tickets.len() as f64 * TICKET_EV_WEI / WEI_PER_SECOND;
    let reserved_at = report["session"]["reserved_at"].as_f64().unwrap();
    let stopped_at = report["stop_funding"]["at"].as_f64().unwrap();
    let released_at = report["released"]["at"].as_f64().unwrap();
    let lasted = released_at - reserved_at;
    eprintln!(
        "{} tickets ({paid_s} s of credit); funding stopped after {:.1} s; released after {lasted:.1} s",
        tickets.len(),
        stopped_at - reserved_at
    );
    assert!(
        lasted >= paid_s - 1.5 && lasted <= paid_s + 4.0,
        "released {lasted:.1} s after the reservation, with {paid_s} s paid"
    );
    assert!(
        unix(calls.last().unwrap().at) < stopped_at,
        "the signer was asked to pay after funding stopped"
    );
    assert!(unix(calls[0].at) >= unix(sdk_started));
    assert_eq!(report["close"]["ok"], true);

    // The runner saw the session reserved and released.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e: &Value| e["event"] == "released" && e["session_id"] == sid.as_str())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(v) => seen.push(v),
            Err(_) => panic!("the runner never saw the release: {seen:?}"),
        }
    }
    assert!(seen
        .iter()
        .any(|e| e["event"] == "reserved" && e["session_id"] == sid.as_str()));
    assert_eq!(discovery().await["capacity_used"], 0);

    // The signer refuses as go-livepeer's does: a price over the client's
    // ceiling is 481; once the params expire, 480 (refresh, naming the
    // orchestrator).
    let resign = |request: Value| {
        let url = format!("{}/generate-live-payment", signer.url);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&request)
                .send()
                .await
                .unwrap();
            let refresh = r
                .headers()
                .get("Livepeer-Orchestrator-URL")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), refresh)
        }
    };
    let mut cheaper = calls[0].request.clone();
    assert_eq!(cheaper["maxPrice"]["unit"], "seconds");
    cheaper["maxPrice"]["price"] = serde_json::json!(999_999);
    assert_eq!(resign(cheaper).await, (481, None));

    // Every ticket (all but surely) won; once their params expire they are
    // redeemed, each one: the orchestrator received every payment.
    common::chain::mine(&orch_client, 41).await;
    assert_eq!(
        resign(calls[0].request.clone()).await,
        (480, Some(shim.uri.clone()))
    );
    for t in &tickets {
        let h = t.hash();
        wait_until("redemption", Duration::from_secs(60), || {
            used(&orch_client, h)
        })
        .await;
    }
    let metrics = shim.metrics_text().await;
    let redeemed = ChainShim::redeemed(&metrics);
    assert!(redeemed >= tickets.len() as f64, "{metrics}");
    drop(runner);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
