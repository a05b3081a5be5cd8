//! The staking and ticket-sender actions of `lpworker orchestrator` on the
//! real Livepeer contracts (a local ganache chain): each changes the state
//! read back from the BondingManager and TicketBroker, and each refused case
//! is refused before anything is sent (the nonce and ETH balance stay).
//!
//! Needs `node` and tests/chain/node_modules (scripts/install-deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alloy_primitives::{utils::parse_ether, Address, U256};
use common::chain::{eth_balance, next_round, nonce, LocalChain};
use lpworker::chain::{ChainClient, ChainError};

/// `lpworker orchestrator <args>` as the account whose raw key is in `key`.
fn cli(chain: &LocalChain, key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .arg("orchestrator")
        .args(args)
        .args(["--eth-url", &chain.rpc, "--eth-controller"])
        .arg(chain.controller.to_string())
        .arg("--eth-key-file")
        .arg(key)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn refused(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn key_file(chain: &LocalChain, i: usize, dir: &Path) -> PathBuf {
    let path = dir.join(format!("key{i}"));
    std::fs::write(&path, chain.private_key(i)).unwrap();
    path
}

/// The next round, initialized (every staking call needs that).
async fn new_round(client: &ChainClient) -> u64 {
    let round = next_round(client).await;
    client.initialize_round().await.unwrap();
    round
}

/// Runs `f` and checks that it sent nothing: same nonce, same ETH balance.
async fn sends_nothing<T>(
    client: &ChainClient,
    who: Address,
    f: impl std::future::Future<Output = T>,
) -> T {
    let (n, balance) = (nonce(client, who).await, eth_balance(client, who).await);
    let out = f.await;
    assert_eq!(nonce(client, who).await, n, "a transaction was sent");
    assert_eq!(eth_balance(client, who).await, balance, "gas was spent");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn staking_and_sender_actions_change_chain_state_and_refusals_cost_nothing() {
    let chain = LocalChain::start(&["--round-length=20"]);
    let dir = common::tempdir();
    let orch = chain.client(1).await;
    let me = orch.account();
    let key = key_file(&chain, 1, dir.path());
    new_round(&orch).await;
    orch.bond(parse_ether("1000").unwrap(), None).await.unwrap();
    // Register plans, dry-runs and waits for --yes like every action.
    let out = sends_nothing(&orch, me, async {
        ok(cli(
            &chain,
            &key,
            &["register", "--reward-cut", "10", "--fee-share", "5"],
        ))
    })
    .await;
    assert!(out.contains("BondingManager.transcoder"), "{out}");
    assert!(out.contains("dry run: would succeed"), "{out}");
    assert_eq!(
        orch.stake_status().await.unwrap().reward_cut_percent,
        0.0,
        "a dry run sets nothing"
    );
    // Bonded (not pending) from the next round on.
    new_round(&orch).await;
    let lpt = |v: &str| parse_ether(v).unwrap();

    // So does bond; a bond of more LPT than the account holds is refused
    // either way.
    for yes in [false, true] {
        let mut args = vec!["bond", "--amount", "1000000000"];
        if yes {
            args.push("--yes");
        }
        let err = sends_nothing(&orch, me, async { refused(cli(&chain, &key, &args)) }).await;
        assert!(err.contains("LPT"), "{err}");
    }

    // Without --yes: the plan and a dry run, nothing sent.
    let out = sends_nothing(&orch, me, async {
        ok(cli(&chain, &key, &["unbond", "--amount", "100"]))
    })
    .await;
    assert!(out.contains("BondingManager.unbond"), "{out}");
    assert!(out.contains("dry run: would succeed"), "{out}");
    assert_eq!(orch.delegator_state().await.unwrap().bonded, lpt("1000"));

    // With --yes: sent, and the new lock read back.
    let out = ok(cli(&chain, &key, &["unbond", "--amount", "100", "--yes"]));
    assert!(out.contains("sent: transaction 0x"), "{out}");
    assert!(out.contains("unbonding lock 0: 100 LPT"), "{out}");
    let state = orch.delegator_state().await.unwrap();
    assert_eq!(state.bonded, lpt("900"));
    assert_eq!(state.unbonding_locks.len(), 1);
    assert_eq!(state.unbonding_locks[0].amount, lpt("100"));
    assert_eq!(
        state.unbonding_locks[0].withdraw_round,
        state.current_round + 2
    );

    // Unbonding more than bonded: refused with the contract's reason, with
    // and without --yes.
    for yes in [false, true] {
        let mut args = vec!["unbond", "--amount", "5000"];
        if yes {
            args.push("--yes");
        }
        let err = sends_nothing(&orch, me, async { refused(cli(&chain, &key, &args)) }).await;
        assert!(
            err.contains("amount is greater than bonded amount"),
            "{err}"
        );
        assert!(err.contains("not sent"), "{err}");
    }

    // `status` lists the lock.
    let out = ok(cli(&chain, &key, &["status"]));
    assert!(out.contains("unbonding lock 0   100 LPT"), "{out}");

    // Rebond the lock: all bonded again, no lock left.
    let out = ok(cli(&chain, &key, &["rebond", "--lock-id", "0", "--yes"]));
    assert!(out.contains("BondingManager.rebond "), "{out}");
    let state = orch.delegator_state().await.unwrap();
    assert_eq!(state.bonded, lpt("1000"));
    assert!(state.unbonding_locks.is_empty());

    // Unbond again (lock 1); withdrawing it before the unbonding period is
    // refused before sending.
    orch.execute(orch.plan_unbond(lpt("100")).await.unwrap())
        .await
        .unwrap();
    let err = sends_nothing(&orch, me, async {
        refused(cli(
            &chain,
            &key,
            &["withdraw-stake", "--lock-id", "1", "--yes"],
        ))
    })
    .await;
    assert!(err.contains("withdraw round"), "{err}");
    // A lock that is gone is refused by name.
    let err = orch.plan_withdraw_stake(0).await.unwrap_err();
    assert!(matches!(err, ChainError::Refused(_)), "{err}");

    // Past the unbonding period the LPT comes back.
    new_round(&orch).await;
    new_round(&orch).await;
    let token = orch.token().await.unwrap();
    let before = token.balanceOf(me).call().await.unwrap();
    let out = ok(cli(
        &chain,
        &key,
        &["withdraw-stake", "--lock-id", "1", "--yes"],
    ));
    assert!(out.contains("bonded 900 LPT"), "{out}");
    assert_eq!(
        token.balanceOf(me).call().await.unwrap(),
        before + lpt("100")
    );
    assert!(orch
        .delegator_state()
        .await
        .unwrap()
        .unbonding_locks
        .is_empty());

    // Everything unbonded: a lock rebonds with rebondFromUnbonded.
    orch.execute(orch.plan_unbond(lpt("900")).await.unwrap())
        .await
        .unwrap();
    assert!(orch.delegator_state().await.unwrap().bonded.is_zero());
    let out = ok(cli(&chain, &key, &["rebond", "--lock-id", "2", "--yes"]));
    assert!(out.contains("BondingManager.rebondFromUnbonded"), "{out}");
    let state = orch.delegator_state().await.unwrap();
    assert_eq!((state.bonded, state.delegate), (lpt("900"), me));
    assert!(state.unbonding_locks.is_empty());

    // Claim earnings to the current round; claiming again is refused.
    let round = new_round(&orch).await;
    orch.execute(orch.plan_claim_earnings(None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        orch.delegator_state().await.unwrap().last_claim_round,
        round
    );
    let err = sends_nothing(&orch, me, async {
        refused(cli(&chain, &key, &["claim-earnings", "--yes"]))
    })
    .await;
    assert!(err.contains("claimed its earnings through round"), "{err}");

    // No fees: withdraw-fees is refused, and so is an explicit amount, by
    // the contract.
    let err = sends_nothing(&orch, me, async {
        refused(cli(&chain, &key, &["withdraw-fees", "--yes"]))
    })
    .await;
    assert!(err.contains("no fees to withdraw"), "{err}");
    let err = sends_nothing(&orch, me, async {
        refused(cli(
            &chain,
            &key,
            &["withdraw-fees", "--amount", "0.1", "--yes"],
        ))
    })
    .await;
    assert!(err.contains("insufficient fees to withdraw"), "{err}");

    // The service URI.
    let out = ok(cli(
        &chain,
        &key,
        &["set-service-uri", "https://orch.example:8935", "--yes"],
    ));
    assert!(
        out.contains("now: service URI https://orch.example:8935"),
        "{out}"
    );
    assert_eq!(
        orch.service_uri(me).await.unwrap(),
        "https://orch.example:8935"
    );

    // A gateway's account: deposit and reserve, unlock, withdraw.
    let gw = chain.client(2).await;
    let gw_addr = gw.account();
    let gw_key = key_file(&chain, 2, dir.path());
    let out = ok(cli(
        &chain,
        &gw_key,
        &["deposit", "--deposit", "1", "--reserve", "0.5", "--yes"],
    ));
    assert!(out.contains("TicketBroker.fundDepositAndReserve"), "{out}");
    // --json: one object with the plan, the dry run or receipt, the state.
    let dry: serde_json::Value = serde_json::from_str(
        &sends_nothing(&gw, gw_addr, async {
            ok(cli(
                &chain,
                &gw_key,
                &["deposit", "--deposit", "0.25", "--json"],
            ))
        })
        .await,
    )
    .unwrap();
    assert_eq!(dry["plans"][0]["what"], "TicketBroker.fundDeposit", "{dry}");
    assert!(dry["dry_run"]["gas"][0].as_u64().unwrap() > 21_000, "{dry}");
    assert!(
        dry.get("sent").is_none() && dry.get("state").is_none(),
        "{dry}"
    );
    let sent: serde_json::Value = serde_json::from_str(&ok(cli(
        &chain,
        &gw_key,
        &["deposit", "--deposit", "0.25", "--yes", "--json"],
    )))
    .unwrap();
    assert_eq!(sent["account"], gw_addr.to_string(), "{sent}");
    assert!(
        sent["sent"][0]["gas_used"].as_u64().unwrap() > 21_000,
        "{sent}"
    );
    let deposit: U256 = sent["state"]["deposit"].as_str().unwrap().parse().unwrap();
    assert_eq!(deposit, lpt("1.25"), "{sent}");
    let s = gw.sender_state().await.unwrap();
    assert_eq!((s.deposit, s.reserve), (lpt("1.25"), lpt("0.5")));
    assert_eq!(s.withdraw_round, 0);

    let err = sends_nothing(&gw, gw_addr, async {
        refused(cli(&chain, &gw_key, &["withdraw", "--yes"]))
    })
    .await;
    assert!(err.contains("not unlocked"), "{err}");
    // Nothing unlocking: nothing to cancel. Unlock, cancel, unlock again.
    let err = sends_nothing(&gw, gw_addr, async {
        refused(cli(&chain, &gw_key, &["cancel-unlock", "--yes"]))
    })
    .await;
    assert!(err.contains("nothing to cancel"), "{err}");
    ok(cli(&chain, &gw_key, &["unlock", "--yes"]));
    let out = ok(cli(&chain, &gw_key, &["cancel-unlock", "--yes"]));
    assert!(out.contains("TicketBroker.cancelUnlock"), "{out}");
    assert!(out.contains("locked (round"), "{out}");
    assert_eq!(gw.sender_state().await.unwrap().withdraw_round, 0);
    ok(cli(&chain, &gw_key, &["unlock", "--yes"]));
    let s = gw.sender_state().await.unwrap();
    assert_eq!(s.withdraw_round, s.current_round + 2);
    let err = sends_nothing(&gw, gw_addr, async {
        refused(cli(&chain, &gw_key, &["withdraw", "--yes"]))
    })
    .await;
    assert!(err.contains("unlock in round"), "{err}");
    // Unlocking twice: the contract's refusal.
    let err = sends_nothing(&gw, gw_addr, async {
        refused(cli(&chain, &gw_key, &["unlock"]))
    })
    .await;
    assert!(err.contains("unlock already initiated"), "{err}");

    new_round(&orch).await;
    new_round(&orch).await;
    let before = eth_balance(&gw, gw_addr).await;
    let out = ok(cli(&chain, &gw_key, &["withdraw", "--yes"]));
    assert!(out.contains("deposit 0 ETH, reserve 0 ETH"), "{out}");
    let s = gw.sender_state().await.unwrap();
    assert_eq!((s.deposit, s.reserve), (U256::ZERO, U256::ZERO));
    let after = eth_balance(&gw, gw_addr).await;
    // 1.75 ETH back, less the gas of one transaction.
    assert!(after > before + lpt("1.7"), "{before} -> {after}");
}
