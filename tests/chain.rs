//! The chain client against the real Livepeer protocol contracts
//! (@livepeer/sdk artifacts) deployed on a local ganache chain: rounds,
//! staking, rewards, ticket redemption and Controller upgrades.
//!
//! Needs `node` and tests/chain/node_modules (scripts/install-deps).

mod common;

use std::sync::Arc;

use alloy_primitives::{utils::parse_ether, Address, B256, U256};
use common::chain::{
    eth_balance, fund_sender, into_lock_period, mine, next_round, nonce, LocalChain,
};
use lpworker::chain::account::{load_signer, KeySource};
use lpworker::chain::rewards::RewardOutcome;
use lpworker::chain::{
    ChainClient, ChainError, ChainMetrics, ChainService, RedeemOutcome, ServiceOptions,
};
use lpworker::pm::recipient::{
    ChainView, Expiration, Price, ReceivedTicket, Recipient, SenderFunds,
};
use lpworker::pm::store::{Status, TicketStore, WinningTicket};
use lpworker::pm::ticket::MAX_WIN_PROB;
use lpworker::pm::Ticket;

fn service(
    client: Arc<ChainClient>,
    store: Option<Arc<TicketStore>>,
    initialize: bool,
) -> (ChainService, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let options = ServiceOptions {
        initialize_round: initialize,
        reward: true,
        // Tests look again at once where the shim lets others go first.
        recheck_after: std::time::Duration::ZERO,
        ..ServiceOptions::default()
    };
    let svc = ChainService::new(client, store, options, ChainMetrics::new(&registry));
    (svc, registry)
}

fn metric(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        // A family is either counters or gauges; the other reads as zero.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Bonds `lpt` to itself and registers, in a round that is not locked.
async fn become_transcoder(client: &ChainClient, lpt: &str) {
    client
        .bond(parse_ether(lpt).unwrap(), None)
        .await
        .expect("bond");
    if client.round_info().await.unwrap().locked {
        next_round(client).await;
    }
    client
        .register_transcoder(10.0, 5.0)
        .await
        .expect("transcoder()");
}

#[tokio::test(flavor = "multi_thread")]
async fn keystore_staking_rounds_and_rewards_on_the_real_contracts() {
    let mut chain = LocalChain::start(&["--round-length=20"]);
    let dir = common::tempdir();
    let ks = chain.command(&format!(
        "keystore 1 {} s3cret",
        dir.path().join("keystore").display()
    ));
    let orch_addr: Address = ks["address"].as_str().unwrap().parse().unwrap();

    // The orchestrator's key comes from a V3 keystore written by ethers.js,
    // found in its directory by address, as go-livepeer finds it.
    let signer = load_signer(&KeySource::Keystore {
        path: dir.path().join("keystore"),
        address: Some(orch_addr),
        password: "s3cret".into(),
    })
    .expect("keystore decrypts");
    let client = ChainClient::connect(chain.config(), signer).await.unwrap();
    assert_eq!(client.account(), orch_addr);

    // Addresses come from the Controller.
    assert_eq!(
        client.address("BondingManager").await.unwrap().to_string(),
        chain.info["contracts"]["BondingManager"].as_str().unwrap()
    );
    assert!(matches!(
        client.address("NoSuchContract").await,
        Err(ChainError::NotRegistered("NoSuchContract"))
    ));

    // Rounds: initialize once; a second call sends nothing.
    let round = next_round(&client).await;
    assert!(!client.round_info().await.unwrap().initialized);
    assert!(client.initialize_round().await.unwrap());
    let n = nonce(&client, orch_addr).await;
    assert!(!client.initialize_round().await.unwrap());
    assert_eq!(nonce(&client, orch_addr).await, n);
    let info = client.round_info().await.unwrap();
    assert!(info.initialized);
    assert_eq!(info.last_initialized_round, round);
    assert_ne!(info.last_initialized_block_hash, B256::ZERO);

    // Registering before bonding is refused before anything is sent.
    let n = nonce(&client, orch_addr).await;
    let err = client.register_transcoder(10.0, 5.0).await.unwrap_err();
    assert!(err.to_string().contains("bond"), "{err}");
    assert_eq!(nonce(&client, orch_addr).await, n);

    // Bonding more than the account holds is refused with the amounts.
    let err = client
        .bond(parse_ether("20000").unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::Insufficient { .. }), "{err}");

    become_transcoder(&client, "1000").await;
    let status = client.stake_status().await.unwrap();
    assert!(status.registered);
    assert_eq!(status.bonded, parse_ether("1000").unwrap().to_string());
    assert_eq!(status.reward_cut_percent, 10.0);
    assert_eq!(status.fee_share_percent, 5.0);
    assert_eq!(status.pool_position, Some(1));
    // Active from the next round on.
    assert!(!status.active);

    // In the lock period, transcoder() is refused before sending.
    into_lock_period(&client).await;
    let n = nonce(&client, orch_addr).await;
    let err = client.register_transcoder(20.0, 5.0).await.unwrap_err();
    assert!(err.to_string().contains("lock period"), "{err}");
    assert_eq!(nonce(&client, orch_addr).await, n);

    // The service loop initializes the next round and calls reward once.
    let client = Arc::new(client);
    let (svc, registry) = service(client.clone(), None, true);
    let round = next_round(&client).await;
    let state = svc.tick().await.unwrap();
    assert_eq!(state.round.current_round, round);
    assert!(state.round.initialized, "the service initialized the round");
    assert!(state.active, "active after the activation round");
    assert_eq!(metric(&registry, "chain_rewards_total", None), 1.0);
    let minted = metric(&registry, "chain_last_reward_minted_wei", None);
    assert!(minted > 0.0, "reward minted LPT");
    let status = client.stake_status().await.unwrap();
    assert_eq!(status.last_reward_round, round);
    assert!(status.total_stake.parse::<U256>().unwrap() > parse_ether("1000").unwrap());

    // Once per round: a second tick, and a direct attempt, send nothing.
    let n = nonce(&client, orch_addr).await;
    svc.tick().await.unwrap();
    assert_eq!(metric(&registry, "chain_rewards_total", None), 1.0);
    assert_eq!(
        client.reward_if_due().await.unwrap(),
        RewardOutcome::AlreadyRewarded { round }
    );
    // Even bypassing that check, the gas estimate catches the revert and
    // no transaction is paid for.
    let bm = client.bonding_manager().await.unwrap();
    let balance = eth_balance(&client, orch_addr).await;
    let err = client
        .send(
            "BondingManager.reward",
            bm.reward().into_transaction_request(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::WouldRevert { .. }), "{err}");
    assert_eq!(nonce(&client, orch_addr).await, n);
    assert_eq!(eth_balance(&client, orch_addr).await, balance);

    // Next round: reward again, exactly once.
    let round = next_round(&client).await;
    svc.tick().await.unwrap();
    assert_eq!(metric(&registry, "chain_rewards_total", None), 2.0);
    assert_eq!(
        client.stake_status().await.unwrap().last_reward_round,
        round
    );

    // A fresh service (a restart) reads the last reward round from chain.
    let (svc2, registry2) = service(client.clone(), None, true);
    svc2.tick().await.unwrap();
    assert_eq!(metric(&registry2, "chain_rewards_total", None), 0.0);

    // Service URI: set once, not re-sent when unchanged.
    assert!(client
        .set_service_uri("https://127.0.0.1:8935")
        .await
        .unwrap());
    let n = nonce(&client, orch_addr).await;
    assert!(!client
        .set_service_uri("https://127.0.0.1:8935")
        .await
        .unwrap());
    assert_eq!(nonce(&client, orch_addr).await, n);
    assert_eq!(
        client.stake_status().await.unwrap().service_uri,
        "https://127.0.0.1:8935"
    );
}

/// A sender's signed ticket for `recipient`'s params, validated the way the
/// shim validates payments.
struct Sender {
    key: secp256k1::SecretKey,
    address: Address,
    /// The block its tickets' params expire at.
    params_expire_at: u64,
}

impl Sender {
    fn new(chain: &LocalChain, i: usize) -> Sender {
        let hex = chain.private_key(i);
        let bytes: B256 = hex.parse().unwrap();
        Sender {
            key: secp256k1::SecretKey::from_slice(bytes.as_slice()).unwrap(),
            address: chain.address(i),
            params_expire_at: 1 << 40,
        }
    }

    fn ticket(
        &self,
        recipient: &Recipient,
        face_value: U256,
        nonce: u32,
        round: i64,
        hash: B256,
    ) -> ReceivedTicket {
        let price = Price::new(1, 1).unwrap();
        let expiration = Expiration {
            creation_round: round,
            creation_round_block_hash: hash,
        };
        let params = recipient.ticket_params(
            self.address,
            face_value,
            MAX_WIN_PROB,
            price,
            U256::from(self.params_expire_at),
            expiration,
        );
        let ticket = Ticket {
            recipient: params.recipient,
            sender: self.address,
            face_value,
            win_prob: params.win_prob,
            sender_nonce: nonce,
            recipient_rand_hash: params.recipient_rand_hash,
            creation_round: round,
            creation_round_block_hash: hash,
        };
        let sig = lpworker::pm::signature::sign(&self.key, ticket.hash().as_slice()).to_vec();
        ReceivedTicket {
            ticket,
            sig,
            seed: params.seed,
            expiration_block: params.expiration_block,
            price,
        }
    }
}

/// Validates `r` against the chain's view and stores it if it wins.
async fn accept(
    recipient: &Recipient,
    client: &ChainClient,
    store: &TicketStore,
    r: &ReceivedTicket,
) -> WinningTicket {
    let info = client.round_info().await.unwrap();
    let (deposit, reserve_alloc) = client.sender_funds(r.ticket.sender).await.unwrap();
    let v = recipient
        .validate(
            r,
            &ChainView {
                block: U256::from(info.block_number),
                round: info.last_initialized_round as i64,
            },
            &SenderFunds {
                deposit,
                reserve_alloc,
                withdraw_round: 0,
            },
        )
        .expect("valid ticket");
    assert!(v.winning);
    let w = WinningTicket {
        ticket: r.ticket.clone(),
        sig: r.sig.clone(),
        recipient_rand: v.recipient_rand,
        params_expiration_block: r.expiration_block.to::<u64>(),
    };
    assert!(store.insert(&w).unwrap());
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn winning_tickets_are_redeemed_once_and_follow_upgrades() {
    // Rounds well longer than the params' 40 blocks, as on Arbitrum.
    let mut chain = LocalChain::start(&["--round-length=100"]);
    let orch = Arc::new(chain.client(1).await);
    let orch_addr = orch.account();
    let gateway = chain.client(2).await;
    let mut sender = Sender::new(&chain, 2);

    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    become_transcoder(&orch, "500").await;
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    fund_sender(&gateway, "1", "1").await;

    let dir = common::tempdir();
    let store = Arc::new(TicketStore::open(&dir.path().join("tickets.sqlite")).unwrap());
    let recipient = Recipient::new(orch_addr, [42u8; 32]);
    let info = orch.round_info().await.unwrap();
    let (round, hash) = (
        info.last_initialized_round as i64,
        info.last_initialized_block_hash,
    );
    let face = parse_ether("0.01").unwrap();
    // Params live 40 blocks, as go-livepeer issues them.
    sender.params_expire_at = info.block_number + 40;

    // Our ticket hash is what the deployed TicketBroker computes.
    let r = sender.ticket(&recipient, face, 1, round, hash);
    let onchain = orch
        .ticket_broker()
        .await
        .unwrap()
        .getTicketHash(lpworker::chain::redeem::to_contract_ticket(&r.ticket))
        .call()
        .await
        .unwrap();
    assert_eq!(onchain, r.ticket.hash());

    let w1 = accept(&recipient, &orch, &store, &r).await;
    let w2 = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, face, 2, round, hash),
    )
    .await;
    // A replayed ticket is refused by validation (nonce seen) and by the store.
    assert!(recipient
        .validate(
            &r,
            &ChainView {
                block: U256::from(info.block_number),
                round
            },
            &SenderFunds {
                deposit: face,
                reserve_alloc: face,
                withdraw_round: 0
            }
        )
        .is_err());
    assert!(!store.insert(&w1).unwrap());

    let fees_before = orch
        .bonding_manager()
        .await
        .unwrap()
        .pendingFees(orch_addr, U256::from(info.current_round))
        .call()
        .await
        .unwrap();
    let deposit_before = orch.sender_funds(sender.address).await.unwrap().0;
    let (svc, registry) = service(orch.clone(), Some(store.clone()), false);
    svc.tick().await.unwrap();
    // Nothing is redeemed while the tickets' params are live: the
    // recipientRand a redemption reveals would let the sender pick losing
    // tickets on them.
    let n = nonce(&orch, orch_addr).await;
    assert_eq!(svc.redeem_queued().await.unwrap(), 0);
    assert_eq!(
        nonce(&orch, orch_addr).await,
        n,
        "nothing sent before expiry"
    );
    for w in [&w1, &w2] {
        assert_eq!(
            store.status(w.ticket.hash()).unwrap().unwrap().0,
            Status::Queued
        );
    }
    let expiry = w1.params_expiration_block.max(w2.params_expiration_block);
    let block = orch.round_info().await.unwrap().block_number;
    mine(&orch, expiry.saturating_sub(block)).await;
    // Redeemed once the chain, and what payments see of it, pass the expiry.
    svc.redeem_queued().await.unwrap();
    assert_eq!(
        store.status(w1.ticket.hash()).unwrap().unwrap().0,
        Status::Queued,
        "payments still judge params by the last tick's block"
    );
    svc.tick().await.unwrap();
    svc.redeem_queued().await.unwrap();
    for w in [&w1, &w2] {
        assert_eq!(
            store.status(w.ticket.hash()).unwrap().unwrap().0,
            Status::Redeemed
        );
        assert!(orch
            .ticket_broker()
            .await
            .unwrap()
            .usedTickets(w.ticket.hash())
            .call()
            .await
            .unwrap());
    }
    assert_eq!(
        metric(
            &registry,
            "ticket_redemptions_total",
            Some(("outcome", "redeemed"))
        ),
        2.0
    );
    let fees_after = orch
        .bonding_manager()
        .await
        .unwrap()
        .pendingFees(orch_addr, U256::from(info.current_round))
        .call()
        .await
        .unwrap();
    // The full face values left the sender's deposit; the fee pool got at
    // least the transcoder's 95% cut (the rest is shared by stake, and the
    // pool's fixed-point factors round down).
    let deposit_after = orch.sender_funds(sender.address).await.unwrap().0;
    assert_eq!(deposit_before - deposit_after, face * U256::from(2));
    let earned = fees_after - fees_before;
    assert!(
        earned >= face * U256::from(2) * U256::from(95) / U256::from(100),
        "{earned}"
    );

    // The ETH arrives: withdraw the fees.
    let before = eth_balance(&orch, orch_addr).await;
    let bm = orch.bonding_manager().await.unwrap();
    let receipt = orch
        .send(
            "BondingManager.withdrawFees",
            bm.withdrawFees(orch_addr, fees_after)
                .into_transaction_request(),
        )
        .await
        .unwrap();
    let gas = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert_eq!(
        eth_balance(&orch, orch_addr).await + gas - before,
        fees_after
    );

    // Redeeming a used ticket again is caught before sending.
    let n = nonce(&orch, orch_addr).await;
    assert_eq!(orch.redeem(&w1).await.unwrap(), RedeemOutcome::AlreadyUsed);
    assert_eq!(nonce(&orch, orch_addr).await, n);

    // A winning ticket that expires before redemption is never sent (its
    // params live on: it is the round that ends it).
    sender.params_expire_at = 1 << 40;
    let w3 = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, face, 3, round, hash),
    )
    .await;
    for _ in 0..2 {
        next_round(&orch).await;
        orch.initialize_round().await.unwrap();
    }
    let n = nonce(&orch, orch_addr).await;
    svc.redeem_queued().await.unwrap();
    assert_eq!(
        store.status(w3.ticket.hash()).unwrap().unwrap().0,
        Status::Expired
    );
    assert_eq!(nonce(&orch, orch_addr).await, n);

    // A sender with no funds on the broker: not sent.
    let broke = Sender::new(&chain, 3);
    let info = orch.round_info().await.unwrap();
    let (round, hash) = (
        info.last_initialized_round as i64,
        info.last_initialized_block_hash,
    );
    let r4 = broke.ticket(&recipient, face, 1, round, hash);
    let w4 = WinningTicket {
        ticket: r4.ticket.clone(),
        sig: r4.sig.clone(),
        recipient_rand: recipient.recipient_rand(
            r4.seed,
            broke.address,
            face,
            r4.ticket.win_prob,
            r4.expiration_block,
            r4.price,
            &r4.ticket.aux_data(),
        ),
        params_expiration_block: 0,
    };
    assert_eq!(
        orch.redeem(&w4).await.unwrap(),
        RedeemOutcome::SenderUnfunded
    );
    assert_eq!(nonce(&orch, orch_addr).await, n);

    // Upgrade: the Controller points TicketBroker at a new proxy. The
    // client's cached address is stale; redemption through the old proxy
    // is refused by the BondingManager, so the service resolves again and
    // redeems on the new broker.
    let old = orch.address("TicketBroker").await.unwrap();
    let up = chain.command("upgrade TicketBroker");
    let new: Address = up["address"].as_str().unwrap().parse().unwrap();
    assert_ne!(old, new);
    // The gateway resolves the new broker (fresh client) and funds it.
    let gateway = chain.client(2).await;
    assert_eq!(gateway.address("TicketBroker").await.unwrap(), new);
    fund_sender(&gateway, "1", "1").await;
    sender.params_expire_at = orch.round_info().await.unwrap().block_number + 1;
    let w5 = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, face, 5, round, hash),
    )
    .await;
    assert_eq!(
        orch.address("TicketBroker").await.unwrap(),
        old,
        "still cached"
    );
    mine(&orch, 1).await;
    svc.tick().await.unwrap();
    svc.redeem_queued().await.unwrap();
    assert_eq!(
        store.status(w5.ticket.hash()).unwrap().unwrap().0,
        Status::Redeemed
    );
    assert_eq!(orch.address("TicketBroker").await.unwrap(), new);
    let tb_new = lpworker::chain::contracts::TicketBroker::new(new, orch.provider());
    assert!(tb_new.usedTickets(w5.ticket.hash()).call().await.unwrap());

    // An AI-only orchestrator that never registered as a transcoder: the
    // BondingManager refuses to credit it, so redemption reverts. That is
    // caught before sending (no gas), and the shim warns such operators at
    // start that they must bond to themselves (not be active) to be paid.
    let ai = chain.client(4).await;
    let ai_recipient = Recipient::new(ai.account(), [7u8; 32]);
    let r6 = sender.ticket(&ai_recipient, face, 6, round, hash);
    let w6 = WinningTicket {
        ticket: r6.ticket.clone(),
        sig: r6.sig.clone(),
        recipient_rand: ai_recipient.recipient_rand(
            r6.seed,
            sender.address,
            face,
            r6.ticket.win_prob,
            r6.expiration_block,
            r6.price,
            &r6.ticket.aux_data(),
        ),
        params_expiration_block: 0,
    };
    let before = eth_balance(&ai, ai.account()).await;
    assert_eq!(
        ai.redeem(&w6).await.unwrap(),
        RedeemOutcome::Refused("transcoder must be registered".into())
    );
    assert_eq!(eth_balance(&ai, ai.account()).await, before);

    // Every ticket in the store went through exactly one final state.
    let counts: std::collections::HashMap<String, u64> =
        store.counts().unwrap().into_iter().collect();
    assert_eq!(counts.get("redeemed"), Some(&3));
    assert_eq!(counts.get("expired"), Some(&1));
    mine(&orch, 1).await;
}

#[tokio::test]
async fn unreachable_or_bad_endpoints_are_clear_errors() {
    let signer = alloy::signers::local::PrivateKeySigner::from_slice(&[5u8; 32]).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // HTTPS goes through rustls with ring as the provider: an error, never a panic.
    for url in [
        format!("https://{closed}"),
        format!("http://{closed}"),
        format!("ws://{closed}"),
    ] {
        let err = ChainClient::connect(
            lpworker::chain::ChainConfig::new(&url, Address::repeat_byte(1)),
            signer.clone(),
        )
        .await
        .err()
        .expect("no node there");
        assert!(matches!(err, ChainError::Rpc { .. }), "{err}");
    }
    let err = ChainClient::connect(
        lpworker::chain::ChainConfig::new("ftp://x", Address::ZERO),
        signer.clone(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("unsupported scheme"), "{err}");
    let err = ChainClient::connect(
        lpworker::chain::ChainConfig::new("not a url", Address::ZERO),
        signer,
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("not a URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_works_over_websocket_too() {
    let chain = LocalChain::start(&["--round-length=20"]);
    // ganache answers JSON-RPC over WebSocket on the same port.
    let mut config = chain.config();
    config.eth_url = chain.rpc.replace("http://", "ws://");
    let client = ChainClient::connect(config, chain.signer(1)).await.unwrap();
    assert_eq!(
        client.address("TicketBroker").await.unwrap().to_string(),
        chain.info["contracts"]["TicketBroker"].as_str().unwrap()
    );
    next_round(&client).await;
    assert!(
        client.initialize_round().await.unwrap(),
        "a transaction over WebSocket"
    );
    assert!(client.round_info().await.unwrap().initialized);
}

async fn set_gas_price(client: &ChainClient, wei: u64) {
    use alloy::providers::Provider;
    let _: bool = client
        .provider()
        .raw_request("miner_setGasPrice".into(), (format!("{wei:#x}"),))
        .await
        .expect("miner_setGasPrice");
}

async fn miner(client: &ChainClient, method: &'static str) {
    use alloy::providers::Provider;
    let _: bool = client
        .provider()
        .raw_request(method.into(), ())
        .await
        .expect(method);
}

#[tokio::test(flavor = "multi_thread")]
async fn redemption_waits_for_profit_gas_and_funds_and_one_ticket_is_sent_once() {
    // Gas at 10 wei: a redemption (1.2M gas) costs 1.2e7 wei.
    let chain = LocalChain::start(&["--round-length=200", "--gas-price=10"]);
    let mut config = chain.config();
    config.max_gas_price = Some(100);
    config.receipt_timeout = std::time::Duration::from_secs(1);
    config.tx_retries = 1;
    let orch = Arc::new(ChainClient::connect(config, chain.signer(1)).await.unwrap());
    let orch_addr = orch.account();
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    become_transcoder(&orch, "500").await;
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    fund_sender(&chain.client(2).await, "1", "0").await;
    let mut sender = Sender::new(&chain, 2);
    let dir = common::tempdir();
    let store = Arc::new(TicketStore::open(&dir.path().join("tickets.sqlite")).unwrap());
    let recipient = Recipient::new(orch_addr, [9u8; 32]);
    let (svc, registry) = service(orch.clone(), Some(store.clone()), false);
    let info = orch.round_info().await.unwrap();
    let (round, hash) = (
        info.last_initialized_round as i64,
        info.last_initialized_block_hash,
    );
    sender.params_expire_at = info.block_number + 1;
    let status = |w: &WinningTicket| store.status(w.ticket.hash()).unwrap().unwrap();

    // A winner worth less than its redemption's gas, and a good one.
    let dust = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, U256::from(1_000_000u64), 1, round, hash),
    )
    .await;
    let face = parse_ether("0.01").unwrap();
    let good = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, face, 2, round, hash),
    )
    .await;
    mine(&orch, 1).await;

    // Gas spikes above --max-gas-price: everything waits, nothing is sent,
    // no attempt is counted, however long it lasts.
    set_gas_price(&orch, 1000).await;
    let n = orch.mined_nonce().await.unwrap();
    for _ in 0..25 {
        svc.redeem_queued().await.unwrap();
    }
    assert_eq!(
        orch.mined_nonce().await.unwrap(),
        n,
        "nothing sent in the spike"
    );
    assert_eq!(status(&good), (Status::Queued, 0));
    // It falls: the good ticket is redeemed; the dust one stays queued
    // (redeeming it would cost more than it pays) and is never sent.
    set_gas_price(&orch, 10).await;
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&good).0, Status::Redeemed);
    assert_eq!(status(&dust), (Status::Queued, 0));
    assert_eq!(orch.mined_nonce().await.unwrap(), n + 1);

    // A redemption whose receipt does not come (the chain stops mining):
    // it is recorded, found again, replaced at its own nonce, and mined
    // exactly once when the chain resumes; nothing reverts at our cost.
    let info = orch.round_info().await.unwrap();
    sender.params_expire_at = info.block_number + 1;
    let stuck = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, face, 3, round, hash),
    )
    .await;
    mine(&orch, 1).await;
    let n = orch.mined_nonce().await.unwrap();
    miner(&orch, "miner_stop").await;
    assert!(
        svc.redeem_queued().await.is_err(),
        "no receipt: a transient error"
    );
    assert_eq!(status(&stuck), (Status::Queued, 0));
    let _ = svc.redeem_queued().await; // the pending one is replaced, not doubled
    miner(&orch, "miner_start").await;
    mine(&orch, 1).await;
    assert_eq!(orch.mined_nonce().await.unwrap(), n + 1);
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&stuck).0, Status::Redeemed);
    assert_eq!(
        orch.mined_nonce().await.unwrap(),
        n + 1,
        "one transaction for the ticket"
    );
    assert!(orch
        .ticket_broker()
        .await
        .unwrap()
        .usedTickets(stuck.ticket.hash())
        .call()
        .await
        .unwrap());

    // A sender with no funds: its winner waits (a deposit or next round's
    // reserve may come) instead of being written off, and is redeemed once
    // the sender is funded.
    let broke = Sender::new(&chain, 3);
    let r = broke.ticket(&recipient, face, 1, round, hash);
    let unfunded = WinningTicket {
        ticket: r.ticket.clone(),
        sig: r.sig.clone(),
        recipient_rand: recipient.recipient_rand(
            r.seed,
            broke.address,
            face,
            r.ticket.win_prob,
            r.expiration_block,
            r.price,
            &r.ticket.aux_data(),
        ),
        params_expiration_block: 0,
    };
    store.insert(&unfunded).unwrap();
    let n = orch.mined_nonce().await.unwrap();
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&unfunded), (Status::Queued, 0));
    assert_eq!(orch.mined_nonce().await.unwrap(), n);
    fund_sender(&chain.client(3).await, "1", "0").await;
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&unfunded).0, Status::Redeemed);
    assert_eq!(
        status(&dust),
        (Status::Queued, 0),
        "still waiting for cheap gas"
    );
    assert_eq!(
        metric(
            &registry,
            "ticket_redemptions_total",
            Some(("outcome", "redeemed"))
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_of_one_ev_backs_one_winner_and_work_reserves_its_cost() {
    use lpworker::orchestrator::payments::{
        PaymentConfig, PaymentError, Payments, PriceBook, Work,
    };
    use lpworker::pm::recipient::TicketError;
    use lpworker::pm::sender_monitor::SenderMonitor;
    use lpworker::proto::lp_rpc as net;

    let chain = LocalChain::start(&["--round-length=100", "--gas-price=1"]);
    let orch = Arc::new(chain.client(1).await);
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    let (svc, _) = service(orch.clone(), None, false);
    svc.tick().await.unwrap();
    let dir = common::tempdir();
    let store = Arc::new(TicketStore::open(&dir.path().join("tickets.sqlite")).unwrap());
    let key: B256 = chain.private_key(1).parse().unwrap();
    let ev = U256::from(2_000_000u64);
    let payments = Arc::new(Payments::new(
        secp256k1::SecretKey::from_slice(key.as_slice()).unwrap(),
        orch.clone(),
        svc.subscribe(),
        store.clone(),
        Arc::new(SenderMonitor::new()),
        PaymentConfig {
            ticket_ev: ev,
            max_face_value: Some(ev),
            redeem_gas: 1_200_000,
            ..PaymentConfig::default()
        },
        Price::new(1, 1).unwrap(),
        PriceBook::default(),
    ));
    let price = Price::new(1, 1).unwrap();
    let info_for = |params| net::OrchestratorInfo {
        ticket_params: params,
        price_info: Some(net::PriceInfo {
            price_per_unit: 1,
            pixels_per_unit: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let queued = || {
        store
            .counts()
            .unwrap()
            .into_iter()
            .find(|(s, _)| s == "queued")
            .map_or(0, |(_, n)| n)
    };

    // A sender whose deposit is one EV (2e6 wei; gas at 1 wei makes a
    // redemption cost 1.2e6): face value = EV, so every ticket wins.
    fund_sender(&chain.client(3).await, "0.000000000002", "0").await;
    let mut poor = common::chain::GatewaySigner::new(&chain, 3);
    let params = payments.ticket_params(poor.address, price).await.unwrap();
    let payment = poor.payment(&info_for(params), 1000);
    let err = payments
        .process(&payment, "m", Work::Credit)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::Ticket(TicketError::FaceValueTooHigh { .. })
        ),
        "{err}"
    );
    // One winner's worth of credit and one stored winner, not a thousand.
    assert_eq!(
        payments.balance(poor.address, "m"),
        alloy_primitives::I256::try_from(2_000_000).unwrap()
    );
    assert_eq!(queued(), 1);
    // While that winner is owed the sender gets no more params.
    assert!(matches!(
        payments.ticket_params(poor.address, price).await,
        Err(PaymentError::InsufficientReserve(_))
    ));

    // Work reserves its estimated cost before it runs: two concurrent
    // requests cannot both spend the same credit.
    let first = payments
        .reserve(Some(poor.address), "m", Work::Credit, 1_500_000)
        .unwrap();
    assert!(payments
        .reserve(Some(poor.address), "m", Work::Credit, 1_500_000)
        .is_err());
    drop(first); // the work failed: nothing debited
    let second = payments
        .reserve(Some(poor.address), "m", Work::Credit, 1_500_000)
        .unwrap();
    assert_eq!(second.settle(1_200_000), U256::from(1_200_000u64));
    assert_eq!(
        payments.balance(poor.address, "m"),
        alloy_primitives::I256::try_from(800_000).unwrap()
    );
    // Free only where this node charges nothing: no session, priced work.
    assert!(payments
        .reserve(Some(poor.address), "other", Work::Video, 1)
        .is_err());

    // Tickets on params that expired earn nothing, but a winner among
    // them is still kept for redemption.
    fund_sender(&chain.client(2).await, "1", "0").await;
    let mut late = common::chain::GatewaySigner::new(&chain, 2);
    let params = payments.ticket_params(late.address, price).await.unwrap();
    mine(&orch, 41).await;
    svc.tick().await.unwrap();
    let payment = late.payment(&info_for(params), 3);
    let err = payments
        .process(&payment, "late", Work::Credit)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PaymentError::Ticket(TicketError::ParamsExpired(_))),
        "{err}"
    );
    assert_eq!(
        payments.balance(late.address, "late"),
        alloy_primitives::I256::ZERO
    );
    assert_eq!(queued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn winners_wait_for_an_initialized_round_and_next_rounds_reserve() {
    let chain = LocalChain::start(&["--round-length=100", "--gas-price=10"]);
    let orch = Arc::new(chain.client(1).await);
    let other = chain.client(5).await;
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    // Two active transcoders: each may claim half of a sender's reserve per
    // round (of what remains of it).
    become_transcoder(&orch, "500").await;
    become_transcoder(&other, "400").await;
    next_round(&orch).await;
    orch.initialize_round().await.unwrap();
    assert!(orch.is_active().await.unwrap());
    // A sender with a reserve and no deposit.
    fund_sender(&chain.client(2).await, "0", "1").await;
    let mut sender = Sender::new(&chain, 2);
    let dir = common::tempdir();
    let store = Arc::new(TicketStore::open(&dir.path().join("tickets.sqlite")).unwrap());
    let recipient = Recipient::new(orch.account(), [5u8; 32]);
    let (svc, _) = service(orch.clone(), Some(store.clone()), false);
    let info = orch.round_info().await.unwrap();
    let (round, hash) = (
        info.last_initialized_round as i64,
        info.last_initialized_block_hash,
    );
    let share = orch.sender_funds(sender.address).await.unwrap().1;
    assert_eq!(share, parse_ether("0.5").unwrap());
    sender.params_expire_at = info.block_number + 1;
    let status = |w: &WinningTicket| store.status(w.ticket.hash()).unwrap().unwrap().0;
    // Two winners in this round: the first takes this round's whole share.
    let first = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, share, 1, round, hash),
    )
    .await;
    let second = accept(
        &recipient,
        &orch,
        &store,
        &sender.ticket(&recipient, share / U256::from(2), 2, round, hash),
    )
    .await;
    mine(&orch, 1).await;
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&first), Status::Redeemed);
    let n = orch.mined_nonce().await.unwrap();
    svc.redeem_queued().await.unwrap();
    assert_eq!(
        (status(&second), orch.mined_nonce().await.unwrap()),
        (Status::Queued, n),
        "this round's share is spent: it waits, not written off"
    );

    // The round turns and nobody initializes it: the broker would refuse
    // every redemption, so none is sent.
    next_round(&orch).await;
    for _ in 0..3 {
        svc.redeem_queued().await.unwrap();
    }
    assert_eq!(
        (status(&second), orch.mined_nonce().await.unwrap()),
        (Status::Queued, n)
    );
    assert_eq!(store.status(second.ticket.hash()).unwrap().unwrap().1, 0);
    // Someone initializes it: next round's share of what remains pays it.
    other.initialize_round().await.unwrap();
    svc.redeem_queued().await.unwrap();
    assert_eq!(status(&second), Status::Redeemed);
    assert_eq!(orch.mined_nonce().await.unwrap(), n + 1);
}
