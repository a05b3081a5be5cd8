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
}

impl Sender {
    fn new(chain: &LocalChain, i: usize) -> Sender {
        let hex = chain.private_key(i);
        let bytes: B256 = hex.parse().unwrap();
        Sender {
            key: secp256k1::SecretKey::from_slice(bytes.as_slice()).unwrap(),
            address: chain.address(i),
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
            U256::from(1u64 << 40),
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
    };
    assert!(store.insert(&w).unwrap());
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn winning_tickets_are_redeemed_once_and_follow_upgrades() {
    let mut chain = LocalChain::start(&["--round-length=20"]);
    let orch = Arc::new(chain.client(1).await);
    let orch_addr = orch.account();
    let gateway = chain.client(2).await;
    let sender = Sender::new(&chain, 2);

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

    // A winning ticket that expires before redemption is never sent.
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
