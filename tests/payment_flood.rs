//! `lpworker orchestrator` on the local chain (real Livepeer contracts)
//! under a flood of payments from strangers: 2,500 fresh keys each ask for
//! ticket params (the auth token a payment needs; one chain read per key),
//! then 50,000 payments with junk tickets come from them (half with garbage
//! signatures, half signed by the key over params the orchestrator never
//! issued; every tenth instead from a funded gateway, on params the node did
//! issue it, with garbage signatures). Nothing may be credited, no payment may cost a chain read,
//! memory and the log must stay bounded, and the last payments must be
//! refused as fast as the first. `LPWORKER_FLOOD_KEYS` and
//! `LPWORKER_FLOOD_PAYMENTS` set other counts (every key costs the local
//! chain ~25 ms, one at a time: 50,000 keys take over 20 minutes).

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::U256;
use common::chain::{
    fund_sender, keystore, next_round, rpc_proxy, ChainShim, GatewaySigner, LocalChain, PRICING,
};
use common::{b64, insecure_http, tempdir, ServeProcess};
use lpworker::pm::ticket::minimal_bytes;
use lpworker::proto::lp_rpc as net;
use prost::Message;

/// Payments in flight at once.
const CLIENTS: usize = 8;
/// Latencies are compared window by window.
const WINDOWS: usize = 10;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A payment from `gateway` with tickets on params made up here (the
/// orchestrator never issued them): signed by the key when `signed`, else
/// with 65 random bytes for each signature.
fn junk_payment(
    gateway: &GatewaySigner,
    info: &net::OrchestratorInfo,
    signed: bool,
) -> net::Payment {
    let params = net::TicketParams {
        recipient: info.address.clone(),
        face_value: minimal_bytes(U256::from(rand::random::<u64>() | 1)),
        win_prob: minimal_bytes(U256::from(rand::random::<u64>())),
        recipient_rand_hash: rand::random::<[u8; 32]>().to_vec(),
        seed: minimal_bytes(U256::from(rand::random::<u64>())),
        expiration_block: minimal_bytes(U256::from(1_000_000u64)),
        expiration_params: None,
    };
    let template = lpworker::pm::Ticket {
        recipient: alloy_primitives::Address::from_slice(&info.address),
        sender: gateway.address,
        face_value: lpworker::pm::ticket::from_be_bytes(&params.face_value).unwrap(),
        win_prob: lpworker::pm::ticket::from_be_bytes(&params.win_prob).unwrap(),
        sender_nonce: 0,
        recipient_rand_hash: alloy_primitives::B256::from_slice(&params.recipient_rand_hash),
        creation_round: 1,
        creation_round_block_hash: alloy_primitives::B256::ZERO,
    };
    let tickets = (1..=3)
        .map(|nonce| net::TicketSenderParams {
            sender_nonce: nonce,
            sig: match signed {
                true => gateway.eth_sign(
                    lpworker::pm::Ticket {
                        sender_nonce: nonce,
                        ..template.clone()
                    }
                    .hash()
                    .as_slice(),
                ),
                false => (0..65).map(|_| rand::random::<u8>()).collect(),
            },
        })
        .collect();
    net::Payment {
        ticket_params: Some(params),
        sender: gateway.address.to_vec(),
        expiration_params: Some(net::TicketExpirationParams {
            creation_round: 1,
            creation_round_block_hash: vec![0; 32],
        }),
        ticket_sender_params: tickets,
        expected_price: info.price_info.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_junk_payments_from_fresh_keys_change_nothing() {
    let count = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let keys = count("LPWORKER_FLOOD_KEYS", 2_500);
    let total = count("LPWORKER_FLOOD_PAYMENTS", 50_000);
    let mut chain = LocalChain::start(&["--round-length=1000", "--gas-price=1"]);
    let dir = tempdir();
    let account = keystore(&mut chain, 1, dir.path());
    next_round(&chain.client(1).await).await;
    let funded_client = chain.client(2).await;
    fund_sender(&funded_client, "1", "1").await;
    let mut funded = GatewaySigner::new(&chain, 2);
    let proxy = rpc_proxy(&chain.rpc).await;
    // A worker so the shim has work to sell; no payment here reaches it.
    let worker = ServeProcess::start(&[]);
    let shim = ChainShim::start_with(
        &chain,
        &account,
        &worker.grpc.to_string(),
        &dir.path().join("data"),
        &proxy.url,
        PRICING,
        &[],
    );
    let channel = lpworker::attach::insecure_tls::grpc_channel(&shim.addr, |e| e)
        .await
        .unwrap();
    let grpc = net::orchestrator_client::OrchestratorClient::new(channel);
    let http = insecure_http();
    let url = format!("https://{}/payment", shim.addr);
    let pid = shim.child.id();
    let started = Instant::now();

    // Every key asks for params: one funds read each (as go-livepeer does),
    // no ticket params for the unfunded, an auth token bound to the key.
    let next = Arc::new(AtomicU64::new(0));
    let asked = Arc::new(Mutex::new(Vec::with_capacity(keys)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (mut grpc, next, asked) = (grpc.clone(), next.clone(), asked.clone());
        tasks.spawn(async move {
            while (next.fetch_add(1, Ordering::SeqCst) as usize) < keys {
                let gateway = GatewaySigner::random();
                let info = grpc
                    .get_orchestrator(gateway.orchestrator_request())
                    .await
                    .expect("GetOrchestrator answers a stranger")
                    .into_inner();
                assert!(info.ticket_params.is_none(), "an unfunded key got params");
                asked.lock().unwrap().push((gateway, info));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // A funded gateway gets real params; its payments on them below carry
    // garbage signatures (a thief's, say).
    let funded_info = grpc
        .clone()
        .get_orchestrator(funded.orchestrator_request())
        .await
        .unwrap()
        .into_inner();
    let mut stolen = funded.payment(&funded_info, 3);
    for t in &mut stolen.ticket_sender_params {
        t.sig = (0..65).map(|_| rand::random::<u8>()).collect();
    }
    let stolen_seg = funded.signed(net::SegData {
        auth_token: funded_info.auth_token.clone(),
        manifest_id: b"flood".to_vec(),
        ..Default::default()
    });
    let stolen = Arc::new((stolen, stolen_seg));
    let asking = started.elapsed();
    let reads_asking = proxy.calls_to("getSenderInfo(address)");
    // One read per key (and one for the funded gateway), no more.
    assert!(
        reads_asking <= keys + 1,
        "{reads_asking} funds reads for {keys} keys"
    );
    // Past the funds cache's TTL: a payment that needed the funds would
    // read them again now.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let asked = Arc::new(std::mem::take(&mut *asked.lock().unwrap()));
    let reads_before = proxy.calls_to("getSenderInfo(address)");
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(vec![Duration::ZERO; total]));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let (warm_rss, warm_log) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let log_len = |path: &std::path::Path| std::fs::metadata(path).unwrap().len();
    let paying = Instant::now();
    for _ in 0..CLIENTS {
        let (http, url, asked, stolen) = (http.clone(), url.clone(), asked.clone(), stolen.clone());
        let (next, latencies, statuses) = (next.clone(), latencies.clone(), statuses.clone());
        let (warm_rss, warm_log, log) = (warm_rss.clone(), warm_log.clone(), shim.log.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= total {
                    return;
                }
                if i == total / WINDOWS {
                    // Past the warm-up (allocator arenas, connection pools).
                    warm_rss.store(rss_kib(pid), Ordering::SeqCst);
                    warm_log.store(log_len(&log), Ordering::SeqCst);
                }
                let (payment, seg) = if i % 10 == 5 {
                    stolen.as_ref().clone()
                } else {
                    let (gateway, info) = &asked[i % keys];
                    let seg = gateway.signed(net::SegData {
                        auth_token: info.auth_token.clone(),
                        manifest_id: b"flood".to_vec(),
                        ..Default::default()
                    });
                    (junk_payment(gateway, info, i % 2 == 0), seg)
                };
                let sent = Instant::now();
                let r = http
                    .post(&url)
                    .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
                    .header("Livepeer-Payment", b64(&payment.encode_to_vec()))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let _ = r.bytes().await.unwrap();
                latencies.lock().unwrap()[i] = sent.elapsed();
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let paid = paying.elapsed();

    // Every payment refused as the gateway's fault (a credited one is 200),
    // and not one sent the shim to the chain for the sender's funds.
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(statuses.get(&400).copied(), Some(total), "{statuses:?}");
    let reads_paying = proxy.calls_to("getSenderInfo(address)") - reads_before;
    assert_eq!(reads_paying, 0, "junk payments read senders' funds");

    // Flat: the last window's p99 is not above the first's after warm-up
    // (with slack for a shared machine).
    let latencies = latencies.lock().unwrap().clone();
    let per_window = total / WINDOWS;
    let p99s: Vec<Duration> = latencies
        .chunks(per_window)
        .take(WINDOWS)
        .map(|w| {
            let mut w = w.to_vec();
            w.sort();
            percentile(&w, 0.99)
        })
        .collect();
    // Medians of three windows' p99s: one pause on a shared machine does
    // not decide it.
    let median = |w: &[Duration]| {
        let mut w = w.to_vec();
        w.sort();
        w[w.len() / 2]
    };
    let (first, last) = (median(&p99s[1..4]), median(&p99s[WINDOWS - 3..]));
    let rss = rss_kib(pid);
    let logged = log_len(&shim.log) - warm_log.load(Ordering::SeqCst);
    let warm = warm_rss.load(Ordering::SeqCst);
    eprintln!(
        "{keys} fresh keys: params asked in {asking:?} ({reads_asking} funds reads, RPC {:?}); \
         {total} junk payments in {paid:?} ({:.0}/s, {reads_paying} funds reads): p99 per window {p99s:?}; \
         RSS {warm} KiB after warm-up -> {rss} KiB; log +{logged} bytes; statuses {statuses:?}",
        proxy.methods(),
        total as f64 / paid.as_secs_f64()
    );
    assert!(
        last <= first * 3 + Duration::from_millis(20),
        "p99 grew from {first:?} to {last:?}"
    );
    assert!(
        rss < warm + 64 * 1024,
        "RSS grew from {warm} KiB to {rss} KiB"
    );
    assert!(logged < 64 * 1024, "the log grew by {logged} bytes");
    let mut log = String::new();
    std::fs::File::open(&shim.log)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("payment refused"), "refusals are still said");
}
