//! A paid live video-to-video stream on chain, end to end: the real
//! Livepeer contracts on a local chain, the shim with a keystore account
//! and a registered `lpworker attach --live-runner` serving `noop`, and the
//! official SDK (livepeer-gateway 1.0.0, unchanged, in `.venv-sdk`) as the
//! gateway: `start_lv2v` paying through a remote signer on a funded gateway
//! key (tests/common/remote_signer.rs), a clip published in real time, the
//! SDK's payment sender topping the stream up on `/payment` until it is
//! stopped, and then the shim's metering finding the credit short and
//! cutting the stream.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::chain::{
    bond_and_register, fund_sender, keystore, next_round, wait_until, ChainShim, GatewaySigner,
    LocalChain,
};
use common::live::{models_dir, python, sdk_script, start_runner, SECRET};
use common::remote_signer::RemoteSigner;
use common::{insecure_http as http, tempdir};
use serde_json::{json, Value};

/// What the stream is billed: go-livepeer's LV2V bills 720p30 whatever the
/// input, 1280 × 720 × 30 pixels a second of stream.
const PIXELS_PER_SECOND: u64 = 1280 * 720 * 30;
/// The node's price, 1 wei a pixel: a second of stream is 27,648,000 wei,
/// and one ticket (its EV) buys exactly one second. No face value cap: 100
/// × the EV, so about one ticket in a hundred wins.
const PRICING: &[&str] = &[
    "-pricePerUnit",
    "1",
    "-pixelsPerUnit",
    "1",
    "-ticketEV",
    "27648000",
    "-autoAdjustPrice",
    "false",
];
const WEI_PER_SECOND: f64 = PIXELS_PER_SECOND as f64;
/// The signer's opening payment: 60 s of 720p30 (go-livepeer's gateway
/// pays as much up front), 60 tickets here.
const OPENING_SECONDS: f64 = 60.0;
/// How long the SDK funds the stream: longer than the opening payment
/// alone covers (60 s, and less than a second of ticket rounding), so a
/// stream still running at the end of it was kept alive by its top-ups.
const FUND_SECONDS: f64 = 75.0;
/// Once funding stops, the credit left is the opening 60 s kept ahead of
/// the meter by every top-up (each pays for the time since the last), plus
/// the last top-up's rounding up to whole tickets (under 1 s), less the
/// time since the last payment when funding stopped (the SDK pays at most
/// every 5 s, on an output segment, 1-2 s apart: under 7 s). The shim bills
/// the input at most once a second (-livePaymentInterval 1s), on its
/// segments, and cuts the stream at the first bill the credit cannot
/// cover. So the stream ends 53-63 s after funding stops; the bounds below
/// leave a few seconds for a loaded machine. (No price makes it shorter:
/// the signer's opening fee and the shim's meter scale alike with the
/// price, so the opening credit is always 60 s of stream; the price and
/// the ticket EV only set how much the rounding adds.)
const CUT_AFTER_STOP: std::ops::RangeInclusive<f64> = 50.0..=68.0;
/// How long the script waits for the cut after funding stopped.
const CUT_TIMEOUT: f64 = 90.0;

/// An H.264 clip from an FFmpeg lavfi source, a keyframe every second.
fn clip(dir: &Path, seconds: u32) -> PathBuf {
    let path = dir.join("in.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x240:rate=30"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
        ])
        .args(["-g", "30", "-bf", "0"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The shim's log without its terminal colours.
fn plain_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_pays_for_a_live_video_stream_through_a_remote_signer_and_it_is_cut_when_funding_stops(
) {
    let started = Instant::now();
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    let orch_client = chain.client(1).await;
    fund_sender(&chain.client(2).await, "1", "1").await;
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();
    bond_and_register(&chain, &account);
    next_round(&orch_client).await;
    orch_client.initialize_round().await.unwrap();

    // On chain a runner declares a USD price, read through the feed; the
    // stream itself is billed at the node's wei price.
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

    let models = dir.path().join("aiModels.json");
    std::fs::write(
        &models,
        json!([{"pipeline": "live-video-to-video", "model_id": "noop"}]).to_string(),
    )
    .unwrap();
    let models_dir = models_dir();
    let runner = start_runner(
        &shim.uri,
        &[
            "--ai-models",
            models.to_str().unwrap(),
            "--models-dir",
            &models_dir,
            "--live-preset",
            "veryfast",
            "--price-usd-per-hour",
            "0.01",
        ],
    );
    assert_eq!(runner.apps, 1, "see {}", runner.log.display());
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
    wait_until("the runner listed", Duration::from_secs(30), || async {
        discovery().await["app"] == "live-video-to-video/noop"
    })
    .await;

    let input = clip(dir.path(), (FUND_SECONDS + CUT_TIMEOUT) as u32 + 10);
    let out = {
        let (python, script, uri, signer_url) = (
            python(),
            sdk_script("live_v2v_paid.py"),
            shim.uri.clone(),
            signer.url.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(["--orch", &uri, "--signer", &signer_url, "--model", "noop"])
                .arg("--input")
                .arg(input)
                .args(["--fund-seconds", &FUND_SECONDS.to_string()])
                .args(["--cut-timeout", &CUT_TIMEOUT.to_string()])
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
    let mut brief = report.clone();
    brief["segments"] = json!(report["segments"].as_array().map_or(0, Vec::len));
    eprintln!("SDK report: {brief}");
    let calls = signer.calls();
    assert!(
        out.status.success() && report["ok"] == true,
        "SDK gateway failed: {}\n{}\nsigner calls: {:#?}\nshim log: {}\nrunner log: {}",
        report["error"],
        String::from_utf8_lossy(&out.stderr),
        calls
            .iter()
            .map(|c| (c.status, c.error.clone(), c.kind.clone(), c.billable_units))
            .collect::<Vec<_>>(),
        shim.log.display(),
        runner.log.display()
    );

    let mid = report["start"]["manifest_id"].as_str().unwrap().to_string();
    assert_eq!(
        report["start"]["price_info"],
        json!({"price_per_unit": 1, "pixels_per_unit": 1})
    );
    let started_at = report["start"]["at"].as_f64().unwrap();
    let stopped_at = report["stop_funding"]["at"].as_f64().unwrap();
    let ended_at = report["output"]["ended_at"].as_f64().unwrap();

    // Funded, the SDK met no error: every payment was accepted.
    let early: Vec<&Value> = report["sdk_warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["t"].as_f64().unwrap() < stopped_at)
        .collect();
    assert!(
        early.is_empty(),
        "the SDK complained while funded: {early:?}"
    );

    // The signer: one opening payment (60 s of 720p30, for a manifest the
    // SDK does not know yet: the shim credits it to the stream it starts),
    // then top-ups for the stream's manifest, each for the time since the
    // last: the first on the first output segment, then at most every 5 s,
    // none once funding stopped.
    assert_eq!(signer.sign_requests(), 1, "the SDK signs once per process");
    assert!(
        calls.iter().all(|c| c.status == 200 && c.kind == "lv2v"),
        "{:?}",
        calls
            .iter()
            .map(|c| (c.status, &c.error, &c.kind))
            .collect::<Vec<_>>()
    );
    let opening = &calls[0];
    assert!(!opening.had_state);
    assert_eq!(
        opening.billable_units as u64,
        60 * PIXELS_PER_SECOND,
        "the opening payment is for 60 s of 720p30"
    );
    assert_eq!(opening.tickets.len(), 60, "60 s at one second a ticket");
    assert!(unix(opening.at) >= started_at);
    let top_ups = &calls[1..];
    assert!(
        top_ups.len() >= 10,
        "{} top-ups in {FUND_SECONDS} s",
        top_ups.len()
    );
    for (i, c) in top_ups.iter().enumerate() {
        assert!(c.had_state, "top-up {i} came without the signer's state");
        assert_eq!(c.sequence_number, i as u64 + 1);
        assert_eq!(c.manifest_id, mid, "top-up {i} is for another stream");
        assert_eq!(c.seg_data.as_ref().unwrap().manifest_id, mid.as_bytes());
        let gap = c.at.duration_since(calls[i].at).unwrap().as_secs_f64();
        let expected = if i == 0 { 0.0..9.0 } else { 4.9..9.0 };
        assert!(
            expected.contains(&gap),
            "top-up {i} {gap:.2} s after the last"
        );
        assert!(!c.tickets.is_empty());
    }
    let last = calls.last().unwrap();
    assert!(
        unix(last.at) <= stopped_at,
        "the signer was asked to pay after funding stopped"
    );
    assert!(
        stopped_at - unix(last.at) < 8.0,
        "funding had lapsed before it was stopped"
    );
    let tickets: usize = calls.iter().map(|c| c.tickets.len()).sum();
    let nonces: Vec<u32> = calls
        .iter()
        .flat_map(|c| c.tickets.iter().map(|t| t.sender_nonce))
        .collect();
    assert_eq!(nonces, (1..=tickets as u32).collect::<Vec<_>>());

    // The stream ran, paid, well past what the opening payment covers:
    // output kept coming until funding stopped.
    // output kept coming, without a pause, until funding stopped and on.
    let arrivals: Vec<f64> = report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at"].as_f64().unwrap())
        .collect();
    let gaps: Vec<f64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "{} output segments, the first {:.1} s after the start, gaps {:.1}-{:.1} s",
        arrivals.len(),
        arrivals.first().copied().unwrap_or(f64::NAN) - started_at,
        gaps.iter().copied().fold(f64::INFINITY, f64::min),
        gaps.iter().copied().fold(0.0, f64::max)
    );
    assert!(
        arrivals.first().is_some_and(|t| t - started_at < 10.0),
        "no output at first"
    );
    assert!(gaps.iter().all(|g| *g < 5.0), "output paused: {gaps:?}");
    assert!(
        arrivals.iter().any(|t| *t > stopped_at),
        "no output once funding stopped"
    );
    assert!(ended_at > stopped_at, "the output ended while funded");

    // Unfunded: cut once the credit ran out, bounded in time. The credit
    // is what the signer billed (the opening 60 s plus the time up to its
    // last call) plus its last rounding, so the cut is due 60 s and that
    // rounding after the last payment.
    let cut_after_stop = ended_at - stopped_at;
    let rounding_s = last.balance_after.unwrap().to_f64() / WEI_PER_SECOND;
    let due = unix(last.at) + OPENING_SECONDS + rounding_s;
    eprintln!(
        "{} payments ({tickets} tickets); funding stopped {:.1} s into the stream, {:.1} s after the last payment; output ended {cut_after_stop:.1} s after that ({:+.1} s from when the credit ran out), the publisher failed {:.1} s after funding stopped",
        calls.len(),
        stopped_at - started_at,
        stopped_at - unix(last.at),
        ended_at - due,
        report["cut"]["publisher_failed_after_stop_s"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        CUT_AFTER_STOP.contains(&cut_after_stop),
        "the stream ended {cut_after_stop:.1} s after funding stopped (expected {CUT_AFTER_STOP:?})"
    );
    assert!(
        (-2.0..=5.0).contains(&(ended_at - due)),
        "the stream ended {:+.1} s from when its credit ran out",
        ended_at - due
    );
    // The publisher found its channel gone, soon after the output ended:
    // at its next segment's POST (a 404), a second or so later; or, when
    // the cut answered the segment it had connected ahead of its data
    // (200, Lp-Trickle-Closed, which the SDK does not read), once its
    // writes to that segment timed out (5 s) and its close did (5 s).
    let publisher = &report["publisher"];
    assert!(
        publisher["error"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("channel does not exist")),
        "{publisher}"
    );
    assert!(publisher["post_404"].as_u64().unwrap() >= 1, "{publisher}");
    let publisher_failed = publisher["error"]["at"].as_f64().unwrap();
    assert!(
        (ended_at - 3.0..ended_at + 20.0).contains(&publisher_failed),
        "the publisher failed {:.1} s after the output ended",
        publisher_failed - ended_at
    );

    // The shim: the stream metered, cut for want of credit, no payment
    // refused; the runner's room given back.
    let log = plain_log(&shim.log);
    assert!(
        log.lines().any(|l| l.contains("live video stream started")
            && l.contains(&mid)
            && l.contains("metered=true")),
        "not metered: see {}",
        shim.log.display()
    );
    assert!(
        log.lines()
            .any(|l| l.contains("live video stream out of credit") && l.contains(&mid)),
        "not cut for want of credit: see {}",
        shim.log.display()
    );
    assert!(
        !log.contains("payment refused"),
        "see {}",
        shim.log.display()
    );
    wait_until(
        "the runner's room back",
        Duration::from_secs(10),
        || async { discovery().await["capacity_used"] == 0 },
    )
    .await;
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
