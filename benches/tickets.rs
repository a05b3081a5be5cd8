//! Ticket validation per second on one core, signature recovery included,
//! beside the raw libsecp256k1 public-key recovery rate of the same
//! signatures (the physical limit); then whole payments of 600 tickets as
//! the shim takes them (segment credentials checked, the sender monitor
//! deciding each winner) on 1 thread and on every core.
//! `cargo bench --bench tickets`.

use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use criterion::{criterion_group, Criterion, Throughput};
use lpworker::pm::recipient::{ChainView, Price, ReceivedTicket, Recipient, SenderFunds};
use lpworker::pm::sender_monitor::SenderMonitor;
use lpworker::pm::{signature, Ticket};
use lpworker::proto::lp_rpc::SegData;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, SECP256K1};

const SECRET: [u8; 32] = [0x5a; 32];
const RECIPIENT: Address = Address::repeat_byte(0x42);

fn tickets(n: u32) -> Vec<ReceivedTicket> {
    let key = secp256k1::SecretKey::from_slice(&[3u8; 32]).unwrap();
    let sender = signature::address_of(&key.public_key(SECP256K1));
    let recipient = Recipient::new(RECIPIENT, SECRET);
    let price = Price::new(1200, 1).unwrap();
    let expiration = lpworker::pm::recipient::Expiration {
        creation_round: 10,
        creation_round_block_hash: B256::repeat_byte(1),
    };
    let params = recipient.ticket_params(
        sender,
        U256::from(10u64.pow(15)),
        U256::MAX / U256::from(100),
        price,
        U256::from(1000),
        expiration,
    );
    (1..=n)
        .map(|nonce| {
            let ticket = Ticket {
                recipient: RECIPIENT,
                sender,
                face_value: params.face_value,
                win_prob: params.win_prob,
                sender_nonce: nonce,
                recipient_rand_hash: params.recipient_rand_hash,
                creation_round: 10,
                creation_round_block_hash: B256::repeat_byte(1),
            };
            let sig = signature::sign(&key, ticket.hash().as_slice()).to_vec();
            ReceivedTicket {
                ticket,
                sig,
                seed: params.seed,
                expiration_block: params.expiration_block,
                price,
            }
        })
        .collect()
}

fn chain() -> ChainView {
    ChainView {
        block: U256::from(900),
        round: 10,
    }
}

fn funds() -> SenderFunds {
    SenderFunds {
        deposit: U256::from(10u128.pow(19)),
        reserve_alloc: U256::from(10u128.pow(19)),
        withdraw_round: 0,
    }
}

/// The bare recovery: digest already computed, signature parsed, key recovered.
fn raw_recover(t: &ReceivedTicket, digest: &B256) -> secp256k1::PublicKey {
    let id = RecoveryId::try_from(i32::from(t.sig[64] - 27)).unwrap();
    let sig = RecoverableSignature::from_compact(&t.sig[..64], id).unwrap();
    SECP256K1
        .recover_ecdsa(&Message::from_digest(digest.0), &sig)
        .unwrap()
}

fn validate_all(batch: &[ReceivedTicket]) -> usize {
    let recipient = Recipient::new(RECIPIENT, SECRET);
    batch
        .iter()
        .filter(|t| recipient.validate(t, &chain(), &funds()).is_ok())
        .count()
}

/// A whole payment as the shim validates it: the segment credentials'
/// signature, then every ticket with the sender monitor, on `threads`.
fn validate_payment(batch: &[ReceivedTicket], seg: &SegData, threads: usize) -> usize {
    assert!(lpworker::lp_rpc::seg_creds::verify(
        seg,
        batch[0].ticket.sender
    ));
    let recipient = Recipient::new(RECIPIENT, SECRET);
    let monitor = SenderMonitor::new();
    let v = lpworker::pm::validation::validate_payment(
        &recipient,
        &monitor,
        batch,
        &chain(),
        &funds(),
        threads,
    );
    assert!(v.fatal.is_none() && v.rejected.is_empty());
    v.accepted
}

fn bench_tickets(c: &mut Criterion) {
    let batch = tickets(500);
    let digests: Vec<B256> = batch
        .iter()
        .map(|t| signature::personal_hash(t.ticket.hash().as_slice()))
        .collect();
    let mut group = c.benchmark_group("tickets");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("validate_500", |b| {
        b.iter(|| assert_eq!(validate_all(&batch), batch.len()))
    });
    group.bench_function("raw_recover_500", |b| {
        b.iter(|| {
            for (t, d) in batch.iter().zip(&digests) {
                std::hint::black_box(raw_recover(t, d));
            }
        })
    });
    group.finish();

    // Interleaved timing for the ratio, on this one thread.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        20
    } else {
        1
    };
    let (mut validate_s, mut raw_s) = (0.0, 0.0);
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(validate_all(&batch), batch.len());
        validate_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (t, d) in batch.iter().zip(&digests) {
            std::hint::black_box(raw_recover(t, d));
        }
        raw_s += t.elapsed().as_secs_f64();
    }
    let n = (batch.len() * rounds) as f64;
    println!(
        "ticket validation: {:.0}/s per core; raw secp256k1 recovery of the same signatures: {:.0}/s; ratio {:.3}",
        n / validate_s,
        n / raw_s,
        raw_s / validate_s
    );

    // Payments of 600 tickets, with the segment credentials and the sender
    // monitor, on one thread and on every core, interleaved with the raw rate.
    let payment = tickets(600);
    let key = secp256k1::SecretKey::from_slice(&[3u8; 32]).unwrap();
    let mut seg = SegData {
        manifest_id: b"5_lpworker/nearest-2x".to_vec(),
        hash: alloy_primitives::keccak256(b"").to_vec(),
        ..Default::default()
    };
    seg.sig = signature::sign(
        &key,
        alloy_primitives::keccak256(lpworker::lp_rpc::seg_creds::flatten(&seg)).as_slice(),
    )
    .to_vec();
    let digests: Vec<B256> = payment
        .iter()
        .map(|t| signature::personal_hash(t.ticket.hash().as_slice()))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut one_s, mut all_s, mut raw_s) = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(validate_payment(&payment, &seg, 1), payment.len());
        one_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        assert_eq!(validate_payment(&payment, &seg, cores), payment.len());
        all_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (t, d) in payment.iter().zip(&digests) {
            std::hint::black_box(raw_recover(t, d));
        }
        raw_s += t.elapsed().as_secs_f64();
    }
    let n = (payment.len() * rounds) as f64;
    println!(
        "600-ticket payments (segment credentials + sender monitor): {:.0} tickets/s on 1 thread (ratio {:.3} to raw), {:.0} tickets/s on {cores} threads; raw recovery {:.0}/s per core",
        n / one_s,
        raw_s / one_s,
        n / all_s,
        n / raw_s
    );
}

criterion_group!(benches, bench_tickets);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
