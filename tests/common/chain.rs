//! A local chain with the real Livepeer contracts (tests/chain/localchain.js:
//! ganache plus the @livepeer/sdk artifacts), driven from Rust tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use lpworker::proto::lp_rpc as net;

use alloy::providers::Provider;
use alloy_primitives::Address;
use lpworker::chain::{ChainClient, ChainConfig};
use serde_json::Value;

pub struct LocalChain {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub info: Value,
    pub rpc: String,
    pub controller: Address,
}

impl LocalChain {
    /// Starts the chain; `args` are localchain.js options such as
    /// `--round-length=20`.
    pub fn start(args: &[&str]) -> LocalChain {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chain");
        assert!(
            dir.join("node_modules/ganache").is_dir(),
            "tests/chain/node_modules is missing: run `bash scripts/install-deps`"
        );
        let mut child = Command::new("node")
            .arg(dir.join("localchain.js"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (scripts/install-deps installs it)");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("localchain prints its ready line");
        let info: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("localchain ready line {line:?}: {e}"));
        let rpc = info["rpc"].as_str().expect("rpc").to_string();
        let controller = info["controller"]
            .as_str()
            .expect("controller")
            .parse()
            .expect("address");
        LocalChain {
            child,
            stdin: Some(stdin),
            stdout,
            info,
            rpc,
            controller,
        }
    }

    /// Sends a command to localchain.js and returns its JSON reply.
    pub fn command(&mut self, cmd: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("localchain stdin open");
        writeln!(stdin, "{cmd}").expect("write command");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reply");
        let v: Value = serde_json::from_str(&line).expect("JSON reply");
        assert!(v.get("error").is_none(), "localchain {cmd}: {v}");
        v
    }

    pub fn address(&self, i: usize) -> Address {
        self.info["accounts"][i]["address"]
            .as_str()
            .expect("account")
            .parse()
            .expect("address")
    }

    pub fn private_key(&self, i: usize) -> String {
        self.info["accounts"][i]["privateKey"]
            .as_str()
            .expect("key")
            .to_string()
    }

    pub fn signer(&self, i: usize) -> alloy::signers::local::PrivateKeySigner {
        self.private_key(i)
            .trim_start_matches("0x")
            .parse()
            .expect("private key")
    }

    pub fn config(&self) -> ChainConfig {
        let mut c = ChainConfig::new(&self.rpc, self.controller);
        c.receipt_timeout = std::time::Duration::from_secs(20);
        c
    }

    pub async fn client(&self, i: usize) -> ChainClient {
        ChainClient::connect(self.config(), self.signer(i))
            .await
            .expect("chain client connects")
    }

    pub fn round_length(&self) -> u64 {
        self.info["params"]["roundLength"]
            .as_u64()
            .expect("roundLength")
    }

    /// Deploys a Chainlink MockV3Aggregator answering `answer` with
    /// `decimals` decimals and, reading it, an EthUsdFeed that describes
    /// itself "ETH / USD" (the bare aggregator does not).
    pub fn deploy_price_feed(&mut self, decimals: u8, answer: &str) -> PriceFeedContracts {
        let v = self.command(&format!("deployPriceFeed {decimals} {answer}"));
        let addr = |k: &str| v[k].as_str().expect(k).parse().expect("address");
        PriceFeedContracts {
            aggregator: addr("aggregator"),
            feed: addr("feed"),
            round: FeedRound::from_reply(&v),
        }
    }

    /// A new round on `aggregator` answering `answer`, updated now or at
    /// `updated_at` (unix seconds).
    pub fn set_price(
        &mut self,
        aggregator: Address,
        answer: &str,
        updated_at: Option<u64>,
    ) -> FeedRound {
        let at = updated_at.map(|t| format!(" {t}")).unwrap_or_default();
        FeedRound::from_reply(&self.command(&format!("setPrice {aggregator} {answer}{at}")))
    }
}

/// What `deployPriceFeed` deployed.
#[derive(Debug, Clone)]
pub struct PriceFeedContracts {
    pub aggregator: Address,
    pub feed: Address,
    pub round: FeedRound,
}

/// An aggregator's latest round, as localchain.js reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRound {
    pub round_id: u128,
    pub answer: String,
    pub updated_at: u64,
}

impl FeedRound {
    fn from_reply(v: &Value) -> FeedRound {
        FeedRound {
            round_id: v["roundId"].as_u64().expect("roundId").into(),
            answer: v["answer"].as_str().expect("answer").to_string(),
            updated_at: v["updatedAt"].as_u64().expect("updatedAt"),
        }
    }
}

impl Drop for LocalChain {
    fn drop(&mut self) {
        // Closing stdin lets localchain.js close ganache, which removes its
        // database directory under /tmp; killing it would leave that behind.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mines `n` empty blocks.
pub async fn mine(client: &ChainClient, n: u64) {
    if n == 0 {
        return;
    }
    let _: Value = client
        .provider()
        .raw_request("evm_mine".into(), (serde_json::json!({ "blocks": n }),))
        .await
        .expect("evm_mine");
}

/// Mines to the first block of the next round and returns the new round.
pub async fn next_round(client: &ChainClient) -> u64 {
    let before = client.round_info().await.unwrap();
    let next_start = before.start_block + before.round_length;
    mine(client, next_start - before.block_number).await;
    let info = client.round_info().await.unwrap();
    assert_eq!(info.current_round, before.current_round + 1, "{info:?}");
    info.current_round
}

/// Mines until the current round is in its lock period.
pub async fn into_lock_period(client: &ChainClient) {
    for _ in 0..1000 {
        if client.round_info().await.unwrap().locked {
            return;
        }
        mine(client, 1).await;
    }
    panic!("never reached a lock period");
}

/// The account's transaction count: unchanged when nothing was sent.
pub async fn nonce(client: &ChainClient, who: Address) -> u64 {
    client.provider().get_transaction_count(who).await.unwrap()
}

pub async fn eth_balance(client: &ChainClient, who: Address) -> alloy_primitives::U256 {
    client.provider().get_balance(who).await.unwrap()
}

/// A test gateway's signing side: go-livepeer's broadcaster signatures and
/// ticket batches.
pub struct GatewaySigner {
    key: secp256k1::SecretKey,
    pub address: Address,
    nonces: std::collections::HashMap<Vec<u8>, u32>,
}

impl GatewaySigner {
    pub fn new(chain: &LocalChain, i: usize) -> GatewaySigner {
        let bytes: alloy_primitives::B256 = chain.private_key(i).parse().unwrap();
        GatewaySigner {
            key: secp256k1::SecretKey::from_slice(bytes.as_slice()).unwrap(),
            address: chain.address(i),
            nonces: Default::default(),
        }
    }

    /// A gateway on a fresh random key (no deposit, unknown to the chain):
    /// what anyone can make by the thousand.
    pub fn random() -> GatewaySigner {
        let key = secp256k1::SecretKey::new(&mut rand::thread_rng());
        GatewaySigner {
            address: lpworker::pm::signature::address_of(&key.public_key(secp256k1::SECP256K1)),
            key,
            nonces: Default::default(),
        }
    }

    /// `broadcaster.Sign(m)`: personal-sign over keccak256(m).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        lpworker::pm::signature::sign(&self.key, alloy_primitives::keccak256(msg).as_slice())
            .to_vec()
    }

    /// `seg` with the gateway's signature over go-livepeer's `Flatten()`
    /// (segment credentials: `SegData.sig`).
    pub fn signed(
        &self,
        mut seg: lpworker::proto::lp_rpc::SegData,
    ) -> lpworker::proto::lp_rpc::SegData {
        seg.sig = self.sign(&lpworker::lp_rpc::seg_creds::flatten(&seg));
        seg
    }

    /// A GetOrchestrator request signed over the EIP-55 address string.
    pub fn orchestrator_request(&self) -> lpworker::proto::lp_rpc::OrchestratorRequest {
        lpworker::proto::lp_rpc::OrchestratorRequest {
            address: self.address.to_vec(),
            sig: self.sign(self.address.to_checksum(None).as_bytes()),
            ..Default::default()
        }
    }

    /// A payment of `n` tickets on `info`'s params at its price; nonces
    /// start at 1 per recipientRandHash, as go-livepeer's sender counts.
    pub fn payment(
        &mut self,
        info: &lpworker::proto::lp_rpc::OrchestratorInfo,
        n: usize,
    ) -> lpworker::proto::lp_rpc::Payment {
        use lpworker::pm::ticket::from_be_bytes;
        use lpworker::proto::lp_rpc as net;
        let params = info
            .ticket_params
            .clone()
            .expect("ticket params in OrchestratorInfo");
        let exp = params.expiration_params.clone().unwrap_or_default();
        let template = lpworker::pm::Ticket {
            recipient: Address::from_slice(&params.recipient),
            sender: self.address,
            face_value: from_be_bytes(&params.face_value).unwrap(),
            win_prob: from_be_bytes(&params.win_prob).unwrap(),
            sender_nonce: 0,
            recipient_rand_hash: alloy_primitives::B256::from_slice(&params.recipient_rand_hash),
            creation_round: exp.creation_round,
            creation_round_block_hash: alloy_primitives::B256::from_slice(
                &exp.creation_round_block_hash,
            ),
        };
        let counter = self
            .nonces
            .entry(params.recipient_rand_hash.clone())
            .or_insert(0);
        let mut senders = Vec::new();
        for _ in 0..n {
            *counter += 1;
            let t = lpworker::pm::Ticket {
                sender_nonce: *counter,
                ..template.clone()
            };
            senders.push(net::TicketSenderParams {
                sender_nonce: *counter,
                sig: lpworker::pm::signature::sign(&self.key, t.hash().as_slice()).to_vec(),
            });
        }
        net::Payment {
            ticket_params: Some(net::TicketParams {
                expiration_params: None,
                ..params
            }),
            sender: self.address.to_vec(),
            expiration_params: Some(exp),
            ticket_sender_params: senders,
            expected_price: info.price_info.clone(),
        }
    }

    /// `Eth.Sign(msg)`: personal-sign over `msg` itself (no keccak256
    /// first), as go-livepeer's remote signer signs its state blob.
    pub fn eth_sign(&self, msg: &[u8]) -> Vec<u8> {
        lpworker::pm::signature::sign(&self.key, msg).to_vec()
    }

    /// [`Self::payment`] continuing after `last_nonce` on `info`'s
    /// recipientRandHash (go-livepeer's `StartSessionWithNonce`: the first
    /// ticket gets `last_nonce + 1`).
    pub fn payment_after_nonce(
        &mut self,
        info: &lpworker::proto::lp_rpc::OrchestratorInfo,
        n: usize,
        last_nonce: u32,
    ) -> lpworker::proto::lp_rpc::Payment {
        let rand_hash = info
            .ticket_params
            .as_ref()
            .expect("ticket params in OrchestratorInfo")
            .recipient_rand_hash
            .clone();
        self.nonces.insert(rand_hash, last_nonce);
        self.payment(info, n)
    }

    /// The tickets of `payment`, as the orchestrator hashes them.
    pub fn tickets(&self, payment: &lpworker::proto::lp_rpc::Payment) -> Vec<lpworker::pm::Ticket> {
        use lpworker::pm::ticket::from_be_bytes;
        let params = payment.ticket_params.as_ref().unwrap();
        let exp = payment.expiration_params.clone().unwrap_or_default();
        payment
            .ticket_sender_params
            .iter()
            .map(|tsp| lpworker::pm::Ticket {
                recipient: Address::from_slice(&params.recipient),
                sender: self.address,
                face_value: from_be_bytes(&params.face_value).unwrap(),
                win_prob: from_be_bytes(&params.win_prob).unwrap(),
                sender_nonce: tsp.sender_nonce,
                recipient_rand_hash: alloy_primitives::B256::from_slice(
                    &params.recipient_rand_hash,
                ),
                creation_round: exp.creation_round,
                creation_round_block_hash: alloy_primitives::B256::from_slice(
                    &exp.creation_round_block_hash,
                ),
            })
            .collect()
    }
}

/// Funds `client`'s account as a ticket sender on the current TicketBroker.
pub async fn fund_sender(client: &ChainClient, deposit: &str, reserve: &str) {
    use alloy_primitives::utils::parse_ether;
    let tb = client.ticket_broker().await.unwrap();
    let (d, r) = (parse_ether(deposit).unwrap(), parse_ether(reserve).unwrap());
    client
        .send(
            "TicketBroker.fundDepositAndReserve",
            tb.fundDepositAndReserve(d, r)
                .value(d + r)
                .into_transaction_request(),
        )
        .await
        .expect("fund deposit and reserve");
}

/// An orchestrator account in a keystore directory, with its password file.
pub struct Account {
    pub keystore: std::path::PathBuf,
    pub password_file: std::path::PathBuf,
    pub address: Address,
}

/// Writes account `index`'s key to a keystore under `dir`.
pub fn keystore(chain: &mut LocalChain, index: usize, dir: &Path) -> Account {
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

/// go-livepeer's chain flags for `account`, with the node reached at `rpc`
/// (the chain's own, or a proxy in front of it).
pub fn eth_flags_at(rpc: &str, chain: &LocalChain, account: &Account) -> Vec<String> {
    vec![
        "-ethUrl".into(),
        rpc.to_string(),
        "-ethController".into(),
        chain.controller.to_string(),
        "-ethKeystorePath".into(),
        account.keystore.display().to_string(),
        "-ethPassword".into(),
        account.password_file.display().to_string(),
    ]
}

pub fn eth_flags(chain: &LocalChain, account: &Account) -> Vec<String> {
    eth_flags_at(&chain.rpc, chain, account)
}

/// Runs `lpworker orchestrator <sub> ...` (bond, register, status) on the
/// chain and returns its stdout.
pub fn orchestrator_cli(sub: &[&str], chain: &LocalChain, account: &Account) -> String {
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

/// Bonds 500 LPT and registers (10 % reward cut, 5 % fee share) with the
/// operator's CLI, as every on-chain shim test's orchestrator does; active
/// from the next round.
pub fn bond_and_register(chain: &LocalChain, account: &Account) {
    let out = orchestrator_cli(&["bond", "--amount", "500", "--yes"], chain, account);
    assert!(out.contains("bonded 500 LPT"), "{out}");
    let register = [
        "register",
        "--reward-cut",
        "10",
        "--fee-share",
        "5",
        "--yes",
    ];
    let out = orchestrator_cli(&register, chain, account);
    assert!(out.contains("registered"), "{out}");
}

/// Whether the TicketBroker has redeemed the ticket with this hash.
pub async fn used(client: &ChainClient, hash: alloy_primitives::B256) -> bool {
    client
        .ticket_broker()
        .await
        .unwrap()
        .usedTickets(hash)
        .call()
        .await
        .unwrap()
}

/// Polls `f` every 250 ms until it holds; fails the test after `timeout`.
pub async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `lpworker orchestrator` on the local chain, its log in a file that
/// outlives the test.
pub struct ChainShim {
    pub child: Child,
    /// host:port of its gRPC/HTTPS listener.
    pub addr: String,
    /// Its service URI (`https://host:port`).
    pub uri: String,
    pub metrics: String,
    /// Its stderr: what an operator's log would hold.
    pub log: PathBuf,
}

/// The shims' usual prices: every ticket wins (face value = EV) so that
/// redemption is exercised; the chain's gas price is 1 wei, so a
/// redemption costs 1.2M wei and a 2M wei face value pays for it.
pub const PRICING: &[&str] = &[
    "-pricePerUnit",
    "2",
    "-pixelsPerUnit",
    "1",
    "-ticketEV",
    "2000000",
    "-maxFaceValue",
    "2000000",
    // Quoted prices as given: the tests check amounts at these prices
    // (the overhead go-livepeer adds by default is tested on its own).
    "-autoAdjustPrice",
    "false",
];

impl ChainShim {
    /// Its Prometheus metrics, as scraped.
    pub async fn metrics_text(&self) -> String {
        super::insecure_http()
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Tickets its redeemer has redeemed on chain, by its metrics.
    pub fn redeemed(metrics: &str) -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("lpworker_ticket_redemptions_total{outcome=\"redeemed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn start(
        chain: &LocalChain,
        account: &Account,
        workers: &str,
        datadir: &Path,
        extra: &[&str],
    ) -> ChainShim {
        Self::start_with(chain, account, workers, datadir, &chain.rpc, PRICING, extra)
    }

    /// A shim reaching the chain at `rpc`, priced by `pricing`.
    pub fn start_with(
        chain: &LocalChain,
        account: &Account,
        workers: &str,
        datadir: &Path,
        rpc: &str,
        pricing: &[&str],
        extra: &[&str],
    ) -> ChainShim {
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
            .args(if workers.is_empty() {
                // Live Runners only.
                vec![]
            } else {
                vec!["--workers", workers]
            })
            .arg("-datadir")
            .arg(datadir)
            .args(eth_flags_at(rpc, chain, account))
            .args(pricing)
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
        let line = super::ready_line(&mut child);
        let field = |name: &str| {
            super::line_field(&line, name)
                .unwrap_or_else(|| {
                    panic!("shim did not start: {line:?}; see {}", log_path.display())
                })
                .to_string()
        };
        ChainShim {
            addr: field("addr="),
            uri: field("uri="),
            child,
            metrics: format!("http://{metrics}/metrics"),
            log: log_path,
        }
    }

    pub async fn grpc(
        &self,
    ) -> net::orchestrator_client::OrchestratorClient<tonic::transport::Channel> {
        let channel = lpworker::attach::insecure_tls::grpc_channel(&self.addr, |e| e)
            .await
            .unwrap();
        net::orchestrator_client::OrchestratorClient::new(channel)
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no shutdown path runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChainShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON-RPC proxy in front of the chain, as a hosted provider's URL with
/// its key in the path: it can be made to fail (rate limiting) and counts
/// the contract calls it forwards by function selector.
pub struct RpcProxy {
    pub url: String,
    pub fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 4], usize>>>,
    /// JSON-RPC requests forwarded, by method.
    methods: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

/// The provider key in [`RpcProxy`]'s URL, which nothing may show.
pub const RPC_KEY: &str = "SECRETKEY7f3a9c";

impl RpcProxy {
    /// `eth_call`s forwarded so far to the function with this signature
    /// (e.g. `getSenderInfo(address)`).
    pub fn calls_to(&self, signature: &str) -> usize {
        let selector: [u8; 4] = alloy_primitives::keccak256(signature)[..4]
            .try_into()
            .unwrap();
        self.calls
            .lock()
            .unwrap()
            .get(&selector)
            .copied()
            .unwrap_or(0)
    }

    /// Requests forwarded so far, by JSON-RPC method.
    pub fn methods(&self) -> std::collections::BTreeMap<String, usize> {
        self.methods.lock().unwrap().clone()
    }
}

/// The requests in a JSON-RPC body (one or a batch).
fn rpc_requests(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(batch)) => batch,
        Ok(one) => vec![one],
        Err(_) => Vec::new(),
    }
}

/// The selectors of the `eth_call`s among `requests`.
fn call_selectors(requests: &[Value]) -> Vec<[u8; 4]> {
    requests
        .iter()
        .filter(|r| r["method"] == "eth_call")
        .filter_map(|r| {
            let call = &r["params"][0];
            let data = call["input"].as_str().or(call["data"].as_str())?;
            let bytes = alloy_primitives::hex::decode(data.get(2..10)?).ok()?;
            bytes.try_into().ok()
        })
        .collect()
}

pub async fn rpc_proxy(upstream: &str) -> RpcProxy {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let fail = Arc::new(AtomicBool::new(false));
    let calls: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 4], usize>>> = Arc::default();
    let methods: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // One client: a connection per call would run out of ports in a flood.
    let client = reqwest::Client::new();
    let (upstream, flag) = (upstream.to_string(), fail.clone());
    let (counted, by_method) = (calls.clone(), methods.clone());
    let app = axum::Router::new().route(
        &format!("/v2/{RPC_KEY}"),
        axum::routing::post(move |body: axum::body::Bytes| {
            let (upstream, flag, counted, client) = (
                upstream.clone(),
                flag.clone(),
                counted.clone(),
                client.clone(),
            );
            async move {
                if flag.load(Ordering::SeqCst) {
                    return (StatusCode::TOO_MANY_REQUESTS, "rate limited".to_string());
                }
                let requests = rpc_requests(&body);
                {
                    let mut counted = counted.lock().unwrap();
                    for selector in call_selectors(&requests) {
                        *counted.entry(selector).or_default() += 1;
                    }
                    let mut by_method = by_method.lock().unwrap();
                    for r in &requests {
                        let method = r["method"].as_str().unwrap_or("?").to_string();
                        *by_method.entry(method).or_default() += 1;
                    }
                }
                let r = client
                    .post(&upstream)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (StatusCode::OK, r.text().await.unwrap())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    RpcProxy {
        url: format!("http://{addr}/v2/{RPC_KEY}"),
        fail,
        calls,
        methods,
    }
}

/// Posts `payment` and `seg` as a payment's headers, with no body (`POST
/// /payment`, a Live Runner session's payment URL); the status and body.
pub async fn post_paid(
    url: &str,
    seg: &lpworker::proto::lp_rpc::SegData,
    payment: &lpworker::proto::lp_rpc::Payment,
) -> (u16, Vec<u8>) {
    use prost::Message as _;
    let r = super::insecure_http()
        .post(url)
        .header("Livepeer-Segment", super::b64(&seg.encode_to_vec()))
        .header("Livepeer-Payment", super::b64(&payment.encode_to_vec()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}
