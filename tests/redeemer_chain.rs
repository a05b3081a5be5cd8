//! Keys apart, on the real contracts: the orchestrator's staking key (A)
//! stays cold, the shim signs with a hot key (B) and tickets pay A
//! (`-ethOrchAddr`), and a separate `lpworker redeemer` with its own
//! account (C) redeems the winners from the shim's ticket store.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use alloy_primitives::U256;
use common::chain::{
    bond_and_register, eth_flags, fund_sender, keystore, mine, next_round, nonce,
    orchestrator_cli as cli, post_paid, used, wait_until, ChainShim as Shim, GatewaySigner,
    LocalChain,
};
use common::{tempdir, ServeProcess};
use lpworker::proto::lp_rpc as net;

/// `lpworker redeemer` for `orchestrator` over `datadir`'s ticket store.
fn redeemer(
    chain: &LocalChain,
    account: &common::chain::Account,
    orchestrator: alloy_primitives::Address,
    datadir: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
    cmd.arg("redeemer")
        .args(["--eth-orch-addr", &orchestrator.to_string()])
        .arg("-datadir")
        .arg(datadir)
        .args(eth_flags(chain, account))
        .args(["--chain-poll", "1"]);
    cmd
}

/// Posts a credit-only payment (`POST /payment`) for the auth token's
/// session.
async fn pay(
    gateway: &mut GatewaySigner,
    info: &net::OrchestratorInfo,
    tickets: usize,
) -> (u16, String, Vec<lpworker::pm::Ticket>) {
    let payment = gateway.payment(info, tickets);
    let seg = gateway.signed(net::SegData {
        manifest_id: info
            .auth_token
            .as_ref()
            .unwrap()
            .session_id
            .as_bytes()
            .to_vec(),
        auth_token: info.auth_token.clone(),
        ..Default::default()
    });
    let (status, body) = post_paid(&format!("{}/payment", info.transcoder), &seg, &payment).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    (status, body, gateway.tickets(&payment))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_pay_the_cold_orchestrator_and_a_separate_redeemer_redeems_them() {
    let mut chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let dir = tempdir();
    let keys = |name: &str| dir.path().join(name);
    let (a, b, c) = (
        keystore(&mut chain, 1, &keys("orchestrator")),
        keystore(&mut chain, 3, &keys("hot")),
        keystore(&mut chain, 4, &keys("redeemer")),
    );
    let a_client = chain.client(1).await;
    // The gateway's funds are small on purpose: two winners of 2M wei use
    // up what it can be trusted for until they are redeemed.
    let gateway_client = chain.client(2).await;
    fund_sender(&gateway_client, "0.000000000005", "0.000000000005").await;
    let mut gateway = GatewaySigner::new(&chain, 2);
    next_round(&a_client).await;
    a_client.initialize_round().await.unwrap();

    // The operator bonds and registers A once, from A's key.
    bond_and_register(&chain, &a);
    next_round(&a_client).await;
    let a_nonce = nonce(&a_client, a.address).await;

    let worker = ServeProcess::start(&[]);
    let datadir = dir.path().join("data");
    let orch = a.address.to_string();
    // The usual test prices, with go-livepeer's default -autoAdjustPrice.
    let pricing: Vec<&str> = common::chain::PRICING
        .iter()
        .copied()
        .take_while(|a| *a != "-autoAdjustPrice")
        .collect();
    let shim = Shim::start_with(
        &chain,
        &b,
        &worker.grpc.to_string(),
        &datadir,
        &chain.rpc,
        &pricing,
        &["--eth-orch-addr", &orch, "--external-redeemer"],
    );
    // A's stake is what gates video: the shim is active though B has none.
    wait_until(
        "the shim to see A active",
        Duration::from_secs(30),
        || async {
            shim.metrics_text()
                .await
                .contains("lpworker_chain_active 1")
        },
    )
    .await;
    let mut grpc = shim.grpc().await;
    let info = grpc
        .get_orchestrator(gateway.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.address, b.address.to_vec(), "B signs");
    let params = info.ticket_params.clone().unwrap();
    assert_eq!(params.recipient, a.address.to_vec(), "tickets pay A");
    let face_value = U256::from_be_slice(&params.face_value);
    assert_eq!(face_value, U256::from(2_000_000u64));
    // -autoAdjustPrice (on by default, as in go-livepeer): 2 wei a pixel
    // plus the redemption's 1.2M wei of gas over a 2M wei winner, 3.2.
    let price = info.price_info.clone().unwrap();
    assert_eq!((price.price_per_unit, price.pixels_per_unit), (16, 5));

    // Every ticket wins. Two winners take the gateway's float; the third
    // is refused until the first two are redeemed.
    let (status, body, first) = pay(&mut gateway, &info, 1).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, second) = pay(&mut gateway, &info, 1).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = pay(&mut gateway, &info, 1).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("exceeds what the sender can pay"), "{body}");

    // The shim does not redeem: its store is another process's to redeem
    // from. One redeemer per store: a second one is refused, and so is an
    // orchestrator that would redeem itself.
    let c_client = chain.client(4).await;
    let c_nonce = nonce(&c_client, c.address).await;
    let mut running = redeemer(&chain, &c, a.address, &datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::ready_line(&mut running);
    assert!(line.contains("redeeming for"), "{line}");
    let second_redeemer = redeemer(&chain, &c, a.address, &datadir).output().unwrap();
    assert!(!second_redeemer.status.success());
    let err = String::from_utf8_lossy(&second_redeemer.stderr);
    assert!(err.contains("another process redeems"), "{err}");
    let own = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "orchestrator",
            "-serviceAddr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--workers", &worker.grpc.to_string()])
        .arg("-datadir")
        .arg(&datadir)
        .args(eth_flags(&chain, &b))
        .args(common::chain::PRICING)
        .output()
        .unwrap();
    assert!(!own.status.success());
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(err.contains("another process redeems"), "{err}");

    // Past the params' expiry (and the redeemer's margin), C redeems both.
    mine(&a_client, 45).await;
    for t in first.iter().chain(&second) {
        assert_eq!(t.recipient, a.address);
        let h = t.hash();
        wait_until("redemption by C", Duration::from_secs(60), || {
            used(&a_client, h)
        })
        .await;
    }
    assert_eq!(
        nonce(&c_client, c.address).await,
        c_nonce + 2,
        "C sent both redemptions"
    );
    assert_eq!(
        nonce(&a_client, a.address).await,
        a_nonce,
        "A's key sent nothing"
    );
    let fees = a_client.delegator_state().await.unwrap().pending_fees;
    assert!(fees > U256::ZERO, "A earned the fees");

    // The shim learns from the store that the winners are settled: the
    // gateway's float is free again.
    let mut accepted = false;
    for _ in 0..40 {
        let info = grpc
            .get_orchestrator(gateway.orchestrator_request())
            .await
            .unwrap()
            .into_inner();
        if info.ticket_params.is_some() {
            let (status, _, _) = pay(&mut gateway, &info, 1).await;
            if status == 200 {
                accepted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(accepted, "a new winner is taken once the old ones settled");

    // The operator, with A's key at hand once a round, calls reward and
    // takes the earnings: claim-earnings moves the round's rewards into the
    // bond, withdraw-fees pays out the fees C's redemptions earned A.
    let rewarded = a_client.reward_if_due().await.unwrap();
    assert!(
        matches!(rewarded, lpworker::chain::RewardOutcome::Rewarded { .. }),
        "{rewarded:?}"
    );
    let before = a_client.delegator_state().await.unwrap();
    assert!(before.pending_stake > before.bonded, "{before:?}");
    let out = cli(&["claim-earnings", "--yes"], &chain, &a);
    assert!(out.contains("BondingManager.claimEarnings"), "{out}");
    let claimed = a_client.delegator_state().await.unwrap();
    assert_eq!(claimed.bonded, before.pending_stake, "rewards bonded");
    assert_eq!(claimed.last_claim_round, claimed.current_round);
    let fees = claimed.pending_fees;
    assert!(fees > U256::ZERO);
    let eth_before = common::chain::eth_balance(&a_client, a.address).await;
    let out = cli(&["withdraw-fees", "--yes", "--json"], &chain, &a);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tx: alloy_primitives::B256 = report["sent"][0]["tx"].as_str().unwrap().parse().unwrap();
    let receipt = {
        use alloy::providers::Provider as _;
        a_client
            .provider()
            .get_transaction_receipt(tx)
            .await
            .unwrap()
            .unwrap()
    };
    let gas_cost = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    let after = common::chain::eth_balance(&a_client, a.address).await;
    assert_eq!(after + gas_cost, eth_before + fees, "{report}");
    assert_eq!(
        a_client.delegator_state().await.unwrap().pending_fees,
        U256::ZERO
    );
    let _ = running.kill();
    let _ = running.wait();
}
