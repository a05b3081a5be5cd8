//! Tickets against vectors computed independently with eth-account, eth-utils
//! and Python's hmac (tests/vectors/pm_vectors.py), and validation outcomes.

use alloy_primitives::{Address, B256, U256};
use lpworker::pm::recipient::{
    ChainView, Price, ReceivedTicket, Recipient, SenderFunds, TicketError,
};
use lpworker::pm::signature;
use lpworker::pm::Ticket;
use serde_json::Value;

fn hex_bytes(s: &str) -> Vec<u8> {
    alloy_primitives::hex::decode(s.trim_start_matches("0x")).unwrap()
}

fn u256(v: &Value) -> U256 {
    match v {
        Value::String(s) if s.starts_with("0x") => U256::from_str_radix(&s[2..], 16).unwrap(),
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => U256::from(n.as_u64().unwrap()),
        _ => panic!("{v}"),
    }
}

struct Case {
    recipient: Recipient,
    received: ReceivedTicket,
    json: Value,
}

fn cases() -> Vec<Case> {
    let all: Vec<Value> = serde_json::from_str(include_str!("vectors/pm.json")).unwrap();
    all.into_iter()
        .map(|c| {
            let secret: [u8; 32] = hex_bytes(c["secret"].as_str().unwrap()).try_into().unwrap();
            let recipient_addr: Address = c["recipient"].as_str().unwrap().parse().unwrap();
            let ticket = Ticket {
                recipient: recipient_addr,
                sender: c["sender"].as_str().unwrap().parse().unwrap(),
                face_value: u256(&c["face_value"]),
                win_prob: u256(&c["win_prob"]),
                sender_nonce: c["sender_nonce"].as_u64().unwrap() as u32,
                recipient_rand_hash: B256::from_slice(&hex_bytes(
                    c["recipient_rand_hash"].as_str().unwrap(),
                )),
                creation_round: c["creation_round"].as_i64().unwrap(),
                creation_round_block_hash: B256::from_slice(&hex_bytes(
                    c["creation_round_block_hash"].as_str().unwrap(),
                )),
            };
            let received = ReceivedTicket {
                ticket,
                sig: hex_bytes(c["sig"].as_str().unwrap()),
                seed: u256(&c["seed"]),
                expiration_block: u256(&c["expiration_block"]),
                price: Price::new(
                    c["price_num"].as_u64().unwrap().into(),
                    c["price_den"].as_u64().unwrap().into(),
                )
                .unwrap(),
            };
            Case {
                recipient: Recipient::new(recipient_addr, secret),
                received,
                json: c,
            }
        })
        .collect()
}

fn chain_for(c: &Case) -> ChainView {
    ChainView {
        block: c.received.expiration_block - U256::from(10),
        round: c.received.ticket.creation_round,
    }
}

fn funded() -> SenderFunds {
    SenderFunds {
        deposit: U256::from(10u128.pow(19)),
        reserve_alloc: U256::from(10u128.pow(19)),
        withdraw_round: 0,
    }
}

#[test]
fn hash_signature_rand_and_win_match_independent_vectors() {
    for c in cases() {
        let t = &c.received.ticket;
        assert_eq!(
            alloy_primitives::hex::encode(t.hash()),
            c.json["ticket_hash"].as_str().unwrap()
        );
        let rand = c.recipient.recipient_rand(
            c.received.seed,
            t.sender,
            t.face_value,
            t.win_prob,
            c.received.expiration_block,
            c.received.price,
            &t.aux_data(),
        );
        assert_eq!(rand, u256(&c.json["recipient_rand"]), "HMAC recipientRand");
        assert_eq!(Recipient::rand_hash(rand), t.recipient_rand_hash);
        let signer = signature::recover_digest(
            signature::personal_hash(t.hash().as_slice()),
            &c.received.sig,
        )
        .unwrap();
        assert_eq!(signer, t.sender);
        assert_eq!(
            Recipient::is_winning(&c.received.sig, rand, t.win_prob),
            c.json["winning"].as_bool().unwrap()
        );
        // And our own signing produces the same signature (RFC 6979 is deterministic).
        let key =
            secp256k1::SecretKey::from_slice(&hex_bytes(c.json["sender_key"].as_str().unwrap()))
                .unwrap();
        assert_eq!(
            signature::sign(&key, t.hash().as_slice()).to_vec(),
            c.received.sig
        );

        let v = c
            .recipient
            .validate(&c.received, &chain_for(&c), &funded())
            .expect("valid ticket accepted");
        assert_eq!(v.winning, c.json["winning"].as_bool().unwrap());
        assert_eq!(v.expected_value, t.expected_value());
    }
}

#[test]
fn bad_tickets_are_refused_with_clear_errors() {
    let c = cases().into_iter().next().unwrap();
    let chain = chain_for(&c);
    let check = |r: &ReceivedTicket, chain: &ChainView, funds: &SenderFunds| {
        c.recipient.validate(r, chain, funds)
    };

    // Forged: signed by someone else.
    let mut forged = c.received.clone();
    let other = secp256k1::SecretKey::from_slice(&[9u8; 32]).unwrap();
    forged.sig = signature::sign(&other, forged.ticket.hash().as_slice()).to_vec();
    assert!(
        matches!(check(&forged, &chain, &funded()), Err(TicketError::InvalidSignature(m)) if m.contains("not the sender"))
    );
    let mut garbled = c.received.clone();
    garbled.sig.truncate(60);
    assert!(matches!(
        check(&garbled, &chain, &funded()),
        Err(TicketError::InvalidSignature(_))
    ));

    // Wrong recipientRandHash (or params the recipient never issued).
    let mut wrong_hash = c.received.clone();
    wrong_hash.ticket.recipient_rand_hash = B256::repeat_byte(1);
    assert_eq!(
        check(&wrong_hash, &chain, &funded()),
        Err(TicketError::InvalidRecipientRand)
    );
    let mut wrong_price = c.received.clone();
    wrong_price.price = Price::new(1, 1).unwrap();
    assert_eq!(
        check(&wrong_price, &chain, &funded()),
        Err(TicketError::InvalidRecipientRand)
    );

    // Not for us.
    let stranger = Recipient::new(Address::repeat_byte(3), [0; 32]);
    assert!(matches!(
        stranger.validate(&c.received, &chain, &funded()),
        Err(TicketError::InvalidRecipient(_))
    ));

    // Expired creation round (from the round the broker stops redeeming
    // it: creation + validity); params past their expiration block.
    let late = ChainView {
        round: c.received.ticket.creation_round + 2,
        ..chain
    };
    assert!(matches!(
        check(&c.received, &late, &funded()),
        Err(TicketError::RoundExpired { .. })
    ));
    // Face value over the sender's reserve share; unfunded and unlocking senders.
    let poor = SenderFunds {
        reserve_alloc: U256::from(1),
        ..funded()
    };
    assert!(matches!(
        check(&c.received, &chain, &poor),
        Err(TicketError::FaceValueTooHigh { .. })
    ));
    assert!(matches!(
        check(&c.received, &chain, &SenderFunds::default()),
        Err(TicketError::SenderUnfunded(_))
    ));
    let unlocking = SenderFunds {
        withdraw_round: chain.round + 1,
        ..funded()
    };
    assert!(matches!(
        check(&c.received, &chain, &unlocking),
        Err(TicketError::SenderUnlocking(_))
    ));

    // Accepted once, then a replay of the same nonce is refused.
    assert!(check(&c.received, &chain, &funded()).is_ok());
    assert_eq!(
        check(&c.received, &chain, &funded()),
        Err(TicketError::NonceSeen(c.received.ticket.sender_nonce))
    );

    // Params expired: reported after the nonce is recorded, as go-livepeer does.
    let c2 = cases().into_iter().nth(1).unwrap();
    let past = ChainView {
        block: c2.received.expiration_block,
        round: c2.received.ticket.creation_round,
    };
    assert_eq!(
        c2.recipient.validate(&c2.received, &past, &funded()),
        Err(TicketError::ParamsExpired(c2.received.expiration_block))
    );
    assert!(!TicketError::InvalidSignature(String::new()).is_fatal());
    assert!(TicketError::NonceSeen(1).is_fatal());
}

#[test]
fn issued_params_round_trip_through_a_signed_ticket() {
    let key = secp256k1::SecretKey::from_slice(&[5u8; 32]).unwrap();
    let sender = signature::address_of(&key.public_key(secp256k1::SECP256K1));
    let recipient = Recipient::new(Address::repeat_byte(0x42), rand::random());
    let price = Price::new(1200, 1).unwrap();
    let expiration = lpworker::pm::recipient::Expiration {
        creation_round: 77,
        creation_round_block_hash: B256::repeat_byte(7),
    };
    let params = recipient.ticket_params(
        sender,
        U256::from(10u64.pow(15)),
        U256::MAX,
        price,
        U256::from(500),
        expiration,
    );
    let mut accepted = 0;
    for nonce in 1..=20u32 {
        let ticket = Ticket {
            recipient: params.recipient,
            sender,
            face_value: params.face_value,
            win_prob: params.win_prob,
            sender_nonce: nonce,
            recipient_rand_hash: params.recipient_rand_hash,
            creation_round: 77,
            creation_round_block_hash: B256::repeat_byte(7),
        };
        let sig = signature::sign(&key, ticket.hash().as_slice()).to_vec();
        let r = ReceivedTicket {
            ticket,
            sig,
            seed: params.seed,
            expiration_block: params.expiration_block,
            price,
        };
        let v = recipient
            .validate(
                &r,
                &ChainView {
                    block: U256::from(400),
                    round: 77,
                },
                &funded(),
            )
            .unwrap();
        assert_eq!(
            Recipient::rand_hash(v.recipient_rand),
            params.recipient_rand_hash
        );
        accepted += usize::from(v.winning);
    }
    // Win probability 2^256 - 1: every ticket wins.
    assert_eq!(accepted, 20);
}
