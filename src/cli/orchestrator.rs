//! `lpworker orchestrator`: the shim between gateways and `serve` workers,
//! and its staking actions (`register`, `bond`, `status`, `unbond`,
//! `rebond`, `withdraw-stake`, `withdraw-fees`, `claim-earnings`,
//! `set-service-uri`) and a gateway account's TicketBroker funding
//! (`deposit`, `unlock`, `cancel-unlock`, `withdraw`). The transaction actions print their
//! plan and only check it (a dry run) unless given --yes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{utils::parse_ether, Address, U256};
use anyhow::{bail, Context, Result};

use lpworker::chain::account::{load_signer, resolve_password, KeySource};
use lpworker::chain::actions::decimal;
use lpworker::chain::{ChainClient, ChainConfig, ChainMetrics, ChainService, ServiceOptions};
use lpworker::orchestrator::payments::{PaymentConfig, Payments};
use lpworker::orchestrator::workers::{ClientOptions, ServerTrust};
use lpworker::orchestrator::{BoundOrchestrator, OrchestratorConfig};
use lpworker::pm::recipient::Price;
use lpworker::pm::sender_monitor::SenderMonitor;
use lpworker::pm::store::TicketStore;

/// The Controller on Arbitrum One (go-livepeer's default for
/// `-network arbitrum-one-mainnet`).
const ARBITRUM_ONE_CONTROLLER: &str = "0xD8E8328501E9645d16Cf49539efC04f734606ee4";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct OrchestratorCmd {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub serve: OrchestratorArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Register (or update) this account as a transcoder: transcoder(rewardCut, feeShare).
    Register(RegisterArgs),
    /// Bond LPT (to this account by default), approving the BondingManager first when needed.
    Bond(BondArgs),
    /// Round, stake, pool position, active set, last reward round, service URI.
    Status(StatusArgs),
    /// Unbond LPT into a new unbonding lock: unbond(amount).
    Unbond(UnbondArgs),
    /// Rebond an unbonding lock: rebond(lockId), or rebondFromUnbonded when nothing is bonded.
    Rebond(RebondArgs),
    /// Withdraw an unbonding lock's LPT after the unbonding period: withdrawStake(lockId).
    WithdrawStake(LockArgs),
    /// Withdraw earned fees (all by default): withdrawFees(account, amount).
    WithdrawFees(WithdrawFeesArgs),
    /// Claim rewards and fees up to a round (default the current one): claimEarnings(endRound).
    ClaimEarnings(ClaimEarningsArgs),
    /// Set the public service URI in the ServiceRegistry: setServiceURI(uri).
    SetServiceUri(SetServiceUriArgs),
    /// Fund this account as a ticket sender (a gateway): fundDeposit / fundReserve / fundDepositAndReserve.
    Deposit(DepositArgs),
    /// Start unlocking this account's TicketBroker deposit and reserve: unlock().
    Unlock(TxArgs),
    /// Stop unlocking the deposit and reserve: cancelUnlock().
    CancelUnlock(TxArgs),
    /// Withdraw the TicketBroker deposit and reserve after the unlock period: withdraw().
    Withdraw(TxArgs),
}

/// What every transaction action takes.
#[derive(Debug, clap::Args)]
pub struct TxArgs {
    /// Send the transaction; without it the plan is only checked (a dry run).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print one JSON object for scripts: the plan, the dry run's gas or
    /// the receipts, and the state read back.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub eth: EthArgs,
}

#[derive(Debug, clap::Args)]
pub struct UnbondArgs {
    /// Amount in LPT (decimal, e.g. 100.5).
    #[arg(long)]
    pub amount: String,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct RebondArgs {
    /// The unbonding lock (its id, as `unbond` and `status` show it).
    #[arg(long, alias = "unbondingLockId")]
    pub lock_id: u64,
    /// Delegate to rebond to when nothing is bonded any more; default this account.
    #[arg(long)]
    pub to: Option<Address>,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The unbonding lock (its id, as `unbond` and `status` show it).
    #[arg(long, alias = "unbondingLockId")]
    pub lock_id: u64,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct WithdrawFeesArgs {
    /// Amount in ETH (decimal); default all fees earned.
    #[arg(long)]
    pub amount: Option<String>,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct ClaimEarningsArgs {
    /// Last round to claim for; default the current round.
    #[arg(long, alias = "endRound")]
    pub end_round: Option<u64>,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct SetServiceUriArgs {
    /// The public service URI (https://host:port).
    pub uri: String,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct DepositArgs {
    /// ETH to add to the deposit (decimal); may be 0.
    #[arg(long, default_value = "0")]
    pub deposit: String,
    /// ETH to add to the reserve (decimal); may be 0.
    #[arg(long, default_value = "0")]
    pub reserve: String,
    #[command(flatten)]
    pub tx: TxArgs,
}

/// Chain settings, named as go-livepeer names them.
#[derive(Debug, Clone, clap::Args)]
pub struct EthArgs {
    /// `offchain` (no chain, no payments), `arbitrum-one-mainnet`, or any
    /// name for a chain given by --eth-url and --eth-controller.
    #[arg(long, alias = "network", env = "LP_NETWORK")]
    pub network: Option<String>,
    /// Ethereum JSON-RPC URL (go-livepeer's -ethUrl). Hosted URLs carry an
    /// API key: only its scheme and host are ever logged or shown.
    #[arg(long, alias = "ethUrl", env = "LP_ETHURL", hide_env_values = true)]
    pub eth_url: Option<String>,
    /// Controller contract; every other address is resolved through it.
    #[arg(long, alias = "ethController", env = "LP_ETHCONTROLLER")]
    pub eth_controller: Option<Address>,
    /// The account to use when the keystore holds several.
    #[arg(long, alias = "ethAcctAddr", env = "LP_ETHACCTADDR")]
    pub eth_acct_addr: Option<Address>,
    /// Keystore file or directory (go-livepeer's -ethKeystorePath); default <datadir>/keystore.
    #[arg(long, alias = "ethKeystorePath", env = "LP_ETHKEYSTOREPATH")]
    pub eth_keystore_path: Option<PathBuf>,
    /// Keystore password, or a file holding it (go-livepeer's -ethPassword).
    #[arg(
        long,
        alias = "ethPassword",
        env = "LP_ETHPASSWORD",
        hide_env_values = true
    )]
    pub eth_password: Option<String>,
    /// A file with a raw hex private key instead of a keystore.
    #[arg(long, conflicts_with = "eth_keystore_path")]
    pub eth_key_file: Option<PathBuf>,
    /// Highest gas price paid, in wei (go-livepeer's -maxGasPrice).
    #[arg(long, alias = "maxGasPrice", env = "LP_MAXGASPRICE")]
    pub max_gas_price: Option<u128>,
    /// Seconds to wait for a transaction to be mined before re-sending it with a higher fee.
    #[arg(long, default_value_t = 60)]
    pub tx_timeout: u64,
    /// Data directory (TLS identity, ticket store, default keystore).
    #[arg(
        long,
        alias = "datadir",
        env = "LP_DATADIR",
        default_value = "lpworker-data"
    )]
    pub datadir: PathBuf,
}

impl EthArgs {
    /// The chain to use, or `None` off chain.
    pub(crate) fn chain_config(&self) -> Result<Option<ChainConfig>> {
        let network = self
            .network
            .as_deref()
            .unwrap_or(if self.eth_url.is_some() {
                "custom"
            } else {
                "offchain"
            });
        if network == "offchain" {
            if self.eth_url.is_some() || self.eth_controller.is_some() {
                bail!("--network offchain takes no --eth-url or --eth-controller");
            }
            return Ok(None);
        }
        let url = self.eth_url.clone().with_context(|| {
            format!("--network {network} needs --eth-url (an Arbitrum One JSON-RPC endpoint)")
        })?;
        let controller = match (self.eth_controller, network) {
            (Some(c), _) => c,
            (None, "arbitrum-one-mainnet") => {
                ARBITRUM_ONE_CONTROLLER.parse().expect("valid address")
            }
            (None, other) => {
                bail!("--network {other}: give the Controller address with --eth-controller")
            }
        };
        let mut config = ChainConfig::new(&url, controller);
        config.max_gas_price = self.max_gas_price;
        config.receipt_timeout = Duration::from_secs(self.tx_timeout.max(1));
        Ok(Some(config))
    }

    pub(crate) fn key_source(&self) -> Result<KeySource> {
        if let Some(path) = &self.eth_key_file {
            return Ok(KeySource::RawKeyFile(path.clone()));
        }
        let password = self.eth_password.as_deref().map(resolve_password).with_context(|| {
            "--eth-password (or LP_ETHPASSWORD) is needed to unlock the keystore; it may name a file"
        })?;
        Ok(KeySource::Keystore {
            path: self
                .eth_keystore_path
                .clone()
                .unwrap_or_else(|| self.datadir.join("keystore")),
            address: self.eth_acct_addr,
            password,
        })
    }

    /// Loads the key and connects; fails unless a chain is configured.
    async fn connect(&self) -> Result<ChainClient> {
        let config = self
            .chain_config()?
            .context("this needs a chain: give --eth-url and --eth-controller (or --network arbitrum-one-mainnet)")?;
        let signer = load_signer(&self.key_source()?)?;
        Ok(ChainClient::connect(config, signer).await?)
    }
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Percent of rewards kept by the orchestrator (livepeer_cli's rewardCut).
    #[arg(long)]
    pub reward_cut: f64,
    /// Percent of fees shared with delegators (livepeer_cli's feeShare).
    #[arg(long)]
    pub fee_share: f64,
    /// Also set the public service URI in the ServiceRegistry (https://host:port).
    #[arg(long, alias = "serviceURI")]
    pub service_uri: Option<String>,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct BondArgs {
    /// Amount in LPT (decimal, e.g. 100.5).
    #[arg(long)]
    pub amount: String,
    /// Delegate to bond to; default this account.
    #[arg(long)]
    pub to: Option<Address>,
    #[command(flatten)]
    pub tx: TxArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub eth: EthArgs,
}

#[derive(Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// Public host:port gateways reach this node at (go-livepeer's -serviceAddr).
    #[arg(long, alias = "serviceAddr", env = "LP_SERVICEADDR", required = true)]
    pub service_addr: Option<String>,
    /// Other instances of this orchestrator to advertise, comma-separated
    /// URLs (go-livepeer's -nodes): gateways that find this node ask them
    /// too. `https://` is assumed when no scheme is given.
    #[arg(long, alias = "nodes", env = "LP_NODES")]
    pub nodes: Option<String>,
    /// Listen address (go-livepeer's -httpAddr); default: all interfaces, the service port.
    #[arg(long, alias = "httpAddr", env = "LP_HTTPADDR")]
    pub http_addr: Option<SocketAddr>,
    /// `lpworker serve` workers, comma-separated: `host:port` (plain gRPC,
    /// a name is resolved to all its addresses) or `https://host:port` (TLS,
    /// with --worker-ca or --worker-cert-pin). A shim that only hosts Live
    /// Runners or remote transcoders (-orchSecret) needs none.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present_any = ["use_live_runners", "live_runner_config", "orch_secret"]
    )]
    pub workers: Vec<String>,
    /// The workers' `serve --auth-secret`, sent as `authorization: Bearer` on every call.
    #[arg(long, env = "LPWORKER_WORKER_SECRET", hide_env_values = true)]
    pub worker_secret: Option<String>,
    /// PEM CA that signed the `https://` workers' certificates.
    #[arg(long, value_name = "FILE", conflicts_with = "worker_cert_pin")]
    pub worker_ca: Option<PathBuf>,
    /// Trust exactly this `https://` worker certificate: the SHA-256 of its
    /// DER in hex (`openssl x509 -in cert.pem -outform der | sha256sum`).
    #[arg(long, value_name = "SHA256")]
    pub worker_cert_pin: Option<String>,
    /// PEM client certificate shown to `https://` workers that require one
    /// (`serve --tls-client-ca`).
    #[arg(long, value_name = "FILE", requires = "worker_client_key")]
    pub worker_client_cert: Option<PathBuf>,
    /// PEM private key of --worker-client-cert.
    #[arg(long, value_name = "FILE", requires = "worker_client_cert")]
    pub worker_client_key: Option<PathBuf>,
    /// Longest a transcode or AI call to a worker may take, in seconds; a
    /// worker that does not finish by then counts as failed.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub worker_timeout: f64,
    /// Host Live Runners (go-livepeer 0.9's -useLiveRunners): dynamic
    /// registration needs --orch-secret, static runners --live-runner-config.
    #[arg(long, alias = "useLiveRunners", env = "LP_USELIVERUNNERS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub use_live_runners: bool,
    /// Static Live Runners: a runners.json file (go-livepeer's -liveRunnerConfig).
    #[arg(long, alias = "liveRunnerConfig", env = "LP_LIVERUNNERCONFIG")]
    pub live_runner_config: Option<PathBuf>,
    /// The base URL runners reach this node at (-liveRunnerAddr); default the service URI.
    #[arg(long, alias = "liveRunnerAddr", env = "LP_LIVERUNNERADDR")]
    pub live_runner_addr: Option<String>,
    /// Where session proxies are published, with one {proxy} in the host or
    /// as the last path segment (-liveRunnerProxyUrl); default {serviceURI}/run/{proxy}.
    #[arg(long, alias = "liveRunnerProxyUrl", env = "LP_LIVERUNNERPROXYURL")]
    pub live_runner_proxy_url: Option<String>,
    /// The secret remote transcoders register with and dynamic Live
    /// Runners' bootstrap secret, or a file holding it (-orchSecret).
    #[arg(
        long,
        alias = "orchSecret",
        env = "LP_ORCHSECRET",
        hide_env_values = true
    )]
    pub orch_secret: Option<String>,
    /// The operator's listener for POST /registerLiveRunners (go-livepeer's
    /// -cliAddr); plain HTTP, so keep it on loopback.
    #[arg(
        long,
        alias = "cliAddr",
        env = "LP_CLIADDR",
        default_value = "127.0.0.1:7935"
    )]
    pub cli_addr: SocketAddr,
    /// How often metered Live Runner sessions are billed (go-livepeer's
    /// -livePaymentInterval), e.g. `5s`.
    #[arg(long, alias = "livePaymentInterval", env = "LP_LIVEPAYMENTINTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub live_payment_interval: Duration,
    /// The Chainlink ETH/USD feed that turns runners' USD prices into wei
    /// (go-livepeer's -priceFeedAddr); on arbitrum-one-mainnet the Arbitrum
    /// feed by default.
    #[arg(long, alias = "priceFeedAddr", env = "LP_PRICEFEEDADDR")]
    pub price_feed_addr: Option<Address>,
    /// New priced sessions are refused while the ETH/USD reading is older
    /// than this (go-livepeer has no limit), e.g. `2h`.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub price_feed_max_age: Duration,
    /// How often the ETH/USD feed is read (go-livepeer: hourly).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub price_feed_refresh: Duration,
    /// Seconds between runner heartbeats (and static health checks).
    #[arg(long, default_value_t = 5)]
    pub live_runner_heartbeat_interval: u64,
    /// Seconds after its last heartbeat a runner is removed (at least two intervals).
    #[arg(long, default_value_t = 20)]
    pub live_runner_heartbeat_ttl: u64,
    /// PEM certificate and key; a self-signed pair is generated in --datadir when absent.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Wei per --pixels-per-unit pixels, advertised in OrchestratorInfo.
    /// On a chain it must be given (0 only when said explicitly) unless
    /// --ai-models or --price-per-gateway set prices: as go-livepeer, a
    /// node never works for free by accident.
    /// Wei (an integer), or US dollars with a `USD` suffix (`0.5USD`),
    /// converted with the ETH/USD feed as go-livepeer does.
    #[arg(long, alias = "pricePerUnit")]
    pub price_per_unit: Option<String>,
    #[arg(long, alias = "pixelsPerUnit", default_value_t = 1)]
    pub pixels_per_unit: i64,
    /// Expected value of one ticket, in wei (go-livepeer's -ticketEV).
    #[arg(long, alias = "ticketEV", default_value = "8000000000")]
    pub ticket_ev: U256,
    /// Upper bound on --ticket-ev (go-livepeer's -maxTicketEV, whose gateway
    /// default is 3e12 wei): gateways refuse params above their limit, so a
    /// larger --ticket-ev is refused at start instead of failing every session.
    #[arg(long, alias = "maxTicketEV", default_value = "3000000000000")]
    pub max_ticket_ev: U256,
    /// Largest ticket face value offered, in wei (go-livepeer's -maxFaceValue).
    #[arg(long, alias = "maxFaceValue")]
    pub max_face_value: Option<U256>,
    /// The registered orchestrator whose stake and tickets these are, when
    /// the keystore account is another, hot one (go-livepeer's
    /// -ethOrchAddr): tickets pay it and its stake gates video work; the
    /// account signs results, and reward() is left to the orchestrator's
    /// own key.
    #[arg(long, alias = "ethOrchAddr", env = "LP_ETHORCHADDR")]
    pub eth_orch_addr: Option<Address>,
    /// Winning tickets are redeemed by a separate `lpworker redeemer` over
    /// this node's ticket store (in --datadir): this node stores them and
    /// follows what the redeemer settles, and sends no redemptions.
    #[arg(long, env = "LPWORKER_EXTERNAL_REDEEMER")]
    pub external_redeemer: bool,
    /// Raise the price quoted to each gateway by what redeeming its winning
    /// tickets costs against their face value (go-livepeer's
    /// -autoAdjustPrice, on by default there and here).
    #[arg(long, alias = "autoAdjustPrice", env = "LP_AUTOADJUSTPRICE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auto_adjust_price: bool,
    /// Call reward() once per round while active (go-livepeer's -reward).
    #[arg(long, alias = "reward", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub reward: bool,
    /// Initialize rounds nobody has initialized (go-livepeer's -initializeRound).
    #[arg(long, alias = "initializeRound", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub initialize_round: bool,
    /// Seconds between chain checks (rounds, rewards, redemptions).
    #[arg(long, default_value_t = 5)]
    pub chain_poll: u64,
    /// Per-gateway prices, go-livepeer's -pricePerGateway JSON (or a file):
    /// {"gateways":[{"ethaddress":"0x…","priceperunit":N,"pixelsperunit":N}]}.
    /// (-pricePerBroadcaster, go-livepeer's older name, is read too.)
    #[arg(long, aliases = ["pricePerGateway", "pricePerBroadcaster"])]
    pub price_per_gateway: Option<String>,
    /// aiModels.json whose price_per_unit/pixels_per_unit price each model
    /// (go-livepeer's -aiModels; the models themselves run on the workers).
    #[arg(long, alias = "aiModels")]
    pub ai_models: Option<String>,
    /// Prometheus metrics listen address (chain and payment metrics).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Largest segment accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_segment_bytes: usize,
    /// Whole request bodies (segments, AI requests) held in memory at once,
    /// in bytes; past it uploads get 503 and retry.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_buffered_bodies: usize,
    /// Seconds a request body may take to arrive (408 after).
    #[arg(long, default_value_t = 60.0)]
    pub body_read_timeout: f64,
    /// go-livepeer version whose protocol is spoken (sent in capabilities).
    #[arg(long, default_value = "0.9.1")]
    pub livepeer_version: String,
    #[command(flatten)]
    pub eth: EthArgs,
}

pub fn run(cmd: OrchestratorCmd) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cmd.action {
        Some(Action::Status(a)) => runtime.block_on(status(a)),
        Some(action) => runtime.block_on(transaction(action)),
        None => runtime.block_on(serve(cmd.serve)),
    }
}

async fn status(a: StatusArgs) -> Result<()> {
    let client = a.eth.connect().await?;
    let s = client.stake_status().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let lpt = |wei: &str| {
        wei.parse::<U256>()
            .map(alloy_primitives::utils::format_ether)
            .unwrap_or_else(|_| wei.to_string())
    };
    println!("account            {}", s.address);
    println!(
        "round              {} ({}{})",
        s.current_round,
        if s.round_initialized {
            "initialized"
        } else {
            "not initialized"
        },
        if s.round_locked { ", locked" } else { "" }
    );
    println!("registered         {}", s.registered);
    println!("active             {}", s.active);
    println!("total stake        {} LPT", lpt(&s.total_stake));
    println!("own bond           {} LPT", lpt(&s.bonded));
    println!(
        "pool position      {} of {} (active set size {})",
        s.pool_position.map_or("-".to_string(), |p| p.to_string()),
        s.pool_size,
        s.active_set_size
    );
    println!("last reward round  {}", s.last_reward_round);
    println!("reward cut         {}%", s.reward_cut_percent);
    println!("fee share          {}%", s.fee_share_percent);
    println!(
        "service URI        {}",
        if s.service_uri.is_empty() {
            "-"
        } else {
            &s.service_uri
        }
    );
    println!("LPT balance        {}", lpt(&s.lpt_balance));
    println!("ETH balance        {}", lpt(&s.eth_balance));
    let d = client.delegator_state().await?;
    println!("pending fees       {} ETH", decimal(d.pending_fees));
    println!("last claim round   {}", d.last_claim_round);
    for l in &d.unbonding_locks {
        println!(
            "unbonding lock {}   {} LPT, withdrawable from round {}",
            l.id,
            decimal(l.amount),
            l.withdraw_round
        );
    }
    Ok(())
}

fn parse_amount(text: &str, flag: &str, unit: &str) -> Result<U256> {
    parse_ether(text).with_context(|| format!("{flag} {text:?}: expected {unit} as a decimal"))
}

/// The transaction actions: plan, then a dry run or (with --yes) the send,
/// then the state read back.
async fn transaction(action: Action) -> Result<()> {
    let (tx, broker) = match &action {
        Action::Register(a) => (&a.tx, false),
        Action::Bond(a) => (&a.tx, false),
        Action::Unbond(a) => (&a.tx, false),
        Action::Rebond(a) => (&a.tx, false),
        Action::WithdrawStake(a) => (&a.tx, false),
        Action::WithdrawFees(a) => (&a.tx, false),
        Action::ClaimEarnings(a) => (&a.tx, false),
        Action::SetServiceUri(a) => (&a.tx, false),
        Action::Deposit(a) => (&a.tx, true),
        Action::Unlock(a) | Action::CancelUnlock(a) | Action::Withdraw(a) => (a, true),
        Action::Status(_) => unreachable!("not a transaction action"),
    };
    let client = tx.eth.connect().await?;
    let mut out = Report::new(tx.json, client.account());
    // Most actions are one transaction; bond may approve first, register
    // may set the service URI after.
    let plans = match &action {
        Action::Bond(a) => {
            client
                .plan_bond(parse_amount(&a.amount, "--amount", "LPT")?, a.to)
                .await?
        }
        Action::Register(a) => {
            let mut plans = vec![client.plan_register(a.reward_cut, a.fee_share).await?];
            if let Some(uri) = &a.service_uri {
                match client.plan_set_service_uri(uri).await {
                    Ok(p) => plans.push(p),
                    // Already this URI: nothing to send for it.
                    Err(lpworker::chain::ChainError::Refused(why)) => out.note(&why),
                    Err(e) => return Err(e.into()),
                }
            }
            plans
        }
        other => vec![single_plan(&client, other).await?],
    };
    // A bond after its approval can only be checked once the approval is
    // mined; every other step stands alone.
    let dependent = matches!(action, Action::Bond(_)) && plans.len() > 1;
    for plan in &plans {
        out.plan(plan);
    }
    if !tx.yes {
        let mut gas = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            if dependent && i > 0 {
                out.note(&format!(
                    "dry run: {} is checked when sent, after the step before it",
                    plan.what
                ));
                continue;
            }
            gas.push(client.dry_run(plan).await?);
        }
        out.dry_run(&gas);
        return out.finish();
    }
    for plan in plans {
        let sent = client.execute(plan).await?;
        out.sent(&sent);
    }
    match &action {
        Action::Bond(a) => out.note(&format!(
            "bonded {} LPT from {} to {}",
            a.amount,
            client.account(),
            a.to.unwrap_or(client.account())
        )),
        Action::Register(a) => out.note(&format!(
            "registered {} as a transcoder: reward cut {}%, fee share {}%",
            client.account(),
            a.reward_cut,
            a.fee_share
        )),
        _ => {}
    }
    read_back(&client, &action, broker, &mut out).await?;
    out.finish()
}

/// What a transaction action says: lines for a person, or (--json) one
/// object for scripts with the same facts.
struct Report {
    json: Option<serde_json::Map<String, serde_json::Value>>,
    account: Address,
}

impl Report {
    fn new(json: bool, account: Address) -> Report {
        Report {
            json: json.then(|| {
                let mut m = serde_json::Map::new();
                m.insert("account".into(), account.to_string().into());
                m.insert("plans".into(), serde_json::Value::Array(Vec::new()));
                m.insert("notes".into(), serde_json::Value::Array(Vec::new()));
                m
            }),
            account,
        }
    }

    fn push(&mut self, key: &str, value: serde_json::Value) {
        if let Some(m) = &mut self.json {
            if let Some(serde_json::Value::Array(a)) = m.get_mut(key) {
                a.push(value);
            } else {
                m.insert(key.into(), serde_json::Value::Array(vec![value]));
            }
        }
    }

    fn note(&mut self, line: &str) {
        match &self.json {
            Some(_) => self.push("notes", line.into()),
            None => println!("{line}"),
        }
    }

    fn plan(&mut self, plan: &lpworker::chain::actions::Planned) {
        match &self.json {
            Some(_) => self.push(
                "plans",
                serde_json::json!({"what": plan.what, "description": plan.description}),
            ),
            None => {
                println!("plan: {} from {}", plan.what, self.account);
                println!("  {}", plan.description);
            }
        }
    }

    fn dry_run(&mut self, gas: &[u64]) {
        match &mut self.json {
            Some(m) => {
                m.insert("dry_run".into(), serde_json::json!({ "gas": gas }));
            }
            None => println!(
                "dry run: would succeed (gas estimate {}); add --yes to send",
                gas.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        }
    }

    fn sent(&mut self, sent: &lpworker::chain::actions::Sent) {
        match &self.json {
            Some(_) => self.push("sent", serde_json::to_value(sent).expect("serializable")),
            None => println!(
                "sent: transaction {} in block {}, gas used {}",
                sent.tx,
                sent.block.map_or("-".to_string(), |b| b.to_string()),
                sent.gas_used
            ),
        }
    }

    /// The state read back: `value` for scripts, `lines` for a person.
    fn state(&mut self, value: serde_json::Value, lines: &[String]) {
        match &mut self.json {
            Some(m) => {
                m.insert("state".into(), value);
            }
            None => lines.iter().for_each(|l| println!("{l}")),
        }
    }

    fn finish(self) -> Result<()> {
        if let Some(m) = self.json {
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        Ok(())
    }
}
/// The one transaction of every action but bond and register.
async fn single_plan(
    client: &ChainClient,
    action: &Action,
) -> Result<lpworker::chain::actions::Planned> {
    Ok(match action {
        Action::Unbond(a) => {
            client
                .plan_unbond(parse_amount(&a.amount, "--amount", "LPT")?)
                .await?
        }
        Action::Rebond(a) => client.plan_rebond(a.lock_id, a.to).await?,
        Action::WithdrawStake(a) => client.plan_withdraw_stake(a.lock_id).await?,
        Action::WithdrawFees(a) => {
            let amount = a
                .amount
                .as_deref()
                .map(|t| parse_amount(t, "--amount", "ETH"))
                .transpose()?;
            client.plan_withdraw_fees(amount).await?
        }
        Action::ClaimEarnings(a) => client.plan_claim_earnings(a.end_round).await?,
        Action::SetServiceUri(a) => client.plan_set_service_uri(&a.uri).await?,
        Action::Deposit(a) => {
            client
                .plan_fund(
                    parse_amount(&a.deposit, "--deposit", "ETH")?,
                    parse_amount(&a.reserve, "--reserve", "ETH")?,
                )
                .await?
        }
        Action::Unlock(_) => client.plan_unlock().await?,
        Action::CancelUnlock(_) => client.plan_cancel_unlock().await?,
        Action::Withdraw(_) => client.plan_withdraw().await?,
        Action::Register(_) | Action::Bond(_) | Action::Status(_) => {
            unreachable!("not a single transaction")
        }
    })
}

/// The account's state after an action, read back from the chain.
async fn read_back(
    client: &ChainClient,
    action: &Action,
    broker: bool,
    out: &mut Report,
) -> Result<()> {
    if broker {
        let s = client.sender_state().await?;
        let line = format!(
            "now: deposit {} ETH, reserve {} ETH, {} (round {})",
            decimal(s.deposit),
            decimal(s.reserve),
            if s.withdraw_round == 0 {
                "locked".to_string()
            } else {
                format!("withdrawable from round {}", s.withdraw_round)
            },
            s.current_round
        );
        out.state(serde_json::to_value(&s)?, &[line]);
        return Ok(());
    }
    let uri_set = match action {
        Action::SetServiceUri(_) => true,
        Action::Register(a) => a.service_uri.is_some(),
        _ => false,
    };
    if let Action::SetServiceUri(_) = action {
        let uri = client.service_uri(client.account()).await?;
        out.state(
            serde_json::json!({ "service_uri": uri }),
            &[format!("now: service URI {uri}")],
        );
        return Ok(());
    }
    let d = client.delegator_state().await?;
    let mut lines = vec![format!(
        "now: bonded {} LPT to {}, pending stake {} LPT, fees {} ETH, claimed through round {} (round {})",
        decimal(d.bonded),
        d.delegate,
        decimal(d.pending_stake),
        decimal(d.pending_fees),
        d.last_claim_round,
        d.current_round
    )];
    for l in &d.unbonding_locks {
        lines.push(format!(
            "  unbonding lock {}: {} LPT, withdrawable from round {}",
            l.id,
            decimal(l.amount),
            l.withdraw_round
        ));
    }
    let mut value = serde_json::to_value(&d)?;
    if uri_set {
        let uri = client.service_uri(client.account()).await?;
        lines.push(format!("now: service URI {uri}"));
        value["service_uri"] = uri.into();
    }
    out.state(value, &lines);
    Ok(())
}

/// -pricePerUnit: wei, or USD to be converted at the feed's rate.
#[derive(Debug, Clone, PartialEq)]
enum BasePrice {
    Wei(i64),
    Usd(lpworker::live_runner::price::UsdPrice),
}

fn parse_base_price(text: &str) -> Result<BasePrice> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    if let Some(amount) = lower.strip_suffix("usd") {
        let usd = lpworker::live_runner::price::UsdPrice::parse(amount.trim(), "usd", "fixed")
            .with_context(|| format!("-pricePerUnit {text:?}"))?;
        return Ok(BasePrice::Usd(usd));
    }
    let wei: i64 = t.parse().with_context(|| {
        format!("-pricePerUnit {text:?}: wei as an integer, or dollars as 0.5USD")
    })?;
    if wei < 0 {
        bail!("-pricePerUnit must not be negative");
    }
    Ok(BasePrice::Wei(wei))
}

/// Wei per `pixels_per_unit` pixels for a USD price at `eth`.
fn usd_base_price(
    usd: &lpworker::live_runner::price::UsdPrice,
    eth: &lpworker::live_runner::price::EthUsd,
    pixels_per_unit: i64,
) -> Result<Price> {
    let wei = usd
        .to_wei(eth)
        .with_context(|| "-pricePerUnit in USD at the feed's ETH/USD rate")?;
    Ok(Price::new(u128::from(wei.wei), pixels_per_unit as u128).expect("pixels per unit checked"))
}

async fn serve(args: OrchestratorArgs) -> Result<()> {
    let base_price = args
        .price_per_unit
        .as_deref()
        .map(parse_base_price)
        .transpose()?;
    let price_per_unit = match &base_price {
        Some(BasePrice::Wei(w)) => *w,
        _ => 0,
    };
    if args.pixels_per_unit <= 0 {
        bail!("--pixels-per-unit must be positive");
    }
    if matches!(base_price, Some(BasePrice::Usd(_))) && args.eth.chain_config()?.is_none() {
        bail!("-pricePerUnit in USD needs a chain and its ETH/USD feed (-priceFeedAddr); off chain nothing is charged");
    }
    if args.ticket_ev.is_zero() || args.ticket_ev > args.max_ticket_ev {
        bail!(
            "--ticket-ev {} must be above 0 and at most --max-ticket-ev {} (gateways refuse tickets worth more than their limit)",
            args.ticket_ev,
            args.max_ticket_ev
        );
    }
    if args.max_face_value.is_some_and(|f| f < args.ticket_ev) {
        bail!("--max-face-value must be at least --ticket-ev: a ticket cannot be worth more than its face value");
    }
    let service_addr = args
        .service_addr
        .clone()
        .context("--service-addr is required")?;
    let port = service_port(&service_addr)
        .with_context(|| format!("--service-addr {service_addr:?}: expected host:port or a URL"))?;
    let listen = args
        .http_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    std::fs::create_dir_all(&args.eth.datadir)
        .with_context(|| format!("creating --datadir {}", args.eth.datadir.display()))?;

    let registry =
        prometheus::Registry::new_custom(Some("lpworker".into()), None).expect("valid prefix");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut payments = None;
    let mut chain_task = None;
    // ETH/USD for runners' USD prices; read on chain only.
    let mut eth_usd: Option<Arc<dyn lpworker::live_runner::price::EthUsdSource>> = None;
    // Held while this node redeems: no second redeemer on the same store.
    let mut _redemption_lock = None;
    if let Some(mut chain_config) = args.eth.chain_config()? {
        chain_config.orchestrator = args.eth_orch_addr;
        let signer = load_signer(&args.eth.key_source()?)?;
        let key = secp256k1::SecretKey::from_slice(signer.to_bytes().as_slice())
            .context("orchestrator key")?;
        let client = Arc::new(ChainClient::connect(chain_config, signer).await?);
        if !client.signs_for_orchestrator() {
            tracing::info!(
                orchestrator = %client.orchestrator(),
                account = %client.account(),
                "tickets pay -ethOrchAddr; this account signs. reward() credits its sender, so the orchestrator's own key must call it"
            );
        }
        let store = Arc::new(
            TicketStore::open(&args.eth.datadir.join("tickets.sqlite"))
                .context("opening the winning-ticket store")?,
        );
        if !args.external_redeemer {
            _redemption_lock =
                Some(store.take_redemption().context(
                    "this node redeems its winning tickets (without --external-redeemer)",
                )?);
        }
        let counts = store.counts()?;
        if let Some((_, n)) = counts.iter().find(|(s, _)| s == "queued") {
            tracing::info!(
                queued = n,
                "winning tickets waiting for redemption from before the restart"
            );
        }
        // What each sender still owes in winners, and what the store has
        // settled so far, in one read: a separate redeemer settles more.
        let owed_and_settled = store
            .owed_and_settled_by_sender()
            .context("reading pending winners")?;
        let monitor = Arc::new(SenderMonitor::with_pending(
            owed_and_settled.iter().map(|(s, owed, _)| (*s, *owed)),
        ));
        let service = ChainService::new(
            client.clone(),
            (!args.external_redeemer).then(|| store.clone()),
            ServiceOptions {
                initialize_round: args.initialize_round,
                reward: args.reward,
                poll_interval: Duration::from_secs(args.chain_poll.max(1)),
                ..ServiceOptions::default()
            },
            ChainMetrics::new(&registry),
        )
        .with_monitor(monitor.clone());
        let service = match args.external_redeemer {
            true => service.with_settlement_elsewhere(
                store.clone(),
                owed_and_settled
                    .iter()
                    .map(|(s, _, settled)| (*s, *settled)),
            ),
            false => service,
        };
        let service = Arc::new(service);
        // The first tick must succeed: payments need the round and block.
        let state = service.tick().await.context("reading the chain's state")?;
        let stake = client.stake_status().await?;
        if !stake.registered {
            tracing::warn!(
                orchestrator = %client.orchestrator(),
                "not a registered transcoder: the TicketBroker cannot credit tickets to this orchestrator, so winning tickets can not be redeemed. Bond LPT to it from its own key (`lpworker orchestrator bond`, then `register`); AI work needs no active-set membership, only registration"
            );
        }
        if !state.active {
            tracing::warn!(
                round = state.round.current_round,
                "not in the active set: video work is refused, AI work is served"
            );
        }
        let expected_uri = lpworker::orchestrator::service_uri(&service_addr, port);
        if stake.registered && stake.service_uri != expected_uri {
            tracing::warn!(on_chain = %stake.service_uri, expected = %expected_uri, "the ServiceRegistry holds another service URI; set it with `lpworker orchestrator register --service-uri`");
        }
        let models = match &args.ai_models {
            Some(spec) => lpworker::ai::config::load(spec)?,
            None => Vec::new(),
        };
        let specs =
            lpworker::orchestrator::pricing::specs(args.price_per_gateway.as_deref(), &models)?;
        let wants_feed = matches!(base_price, Some(BasePrice::Usd(_)))
            || specs.in_usd()
            || args.use_live_runners
            || args.live_runner_config.is_some();
        let feed = match wants_feed {
            true => Some(eth_usd_feed(&args, client.clone(), shutdown.clone()).await?),
            false => None,
        };
        let price = match (&base_price, &feed) {
            (Some(BasePrice::Usd(usd)), Some(feed)) => {
                // The latest reading however old: gateways' sessions need a
                // price, and it follows the feed from here on.
                if let Err(e) = feed.eth_usd_now() {
                    tracing::warn!(error = %e, "-pricePerUnit in USD converted at an old ETH/USD reading");
                }
                let reading = feed.watcher.current().context(
                    "-pricePerUnit in USD: the ETH/USD feed could not be read to convert it",
                )?;
                usd_base_price(usd, &reading.to_eth_usd(), args.pixels_per_unit)?
            }
            _ => Price::new(price_per_unit as u128, args.pixels_per_unit as u128)
                .expect("pixels per unit checked"),
        };
        let prices = match (&feed, specs.in_usd()) {
            (Some(feed), true) => {
                let reading = feed.watcher.current().context(
                    "-pricePerGateway or --ai-models in USD: the ETH/USD feed could not be read to convert them",
                )?;
                specs.resolve(Some(&reading.to_eth_usd()))?
            }
            _ => specs.resolve(None)?,
        };
        let others_priced = prices.per_gateway.values().any(|p| p.num != 0)
            || prices.per_model.values().any(|p| p.num != 0);
        let stated = match &base_price {
            None => None,
            Some(BasePrice::Wei(w)) => Some(*w),
            Some(BasePrice::Usd(_)) => Some(i64::try_from(price.num).unwrap_or(i64::MAX).max(1)),
        };
        match (stated, others_priced) {
            (None, false) => bail!(
                "no price set: give -pricePerUnit (and -pixelsPerUnit), or price models in --ai-models; \
                 -pricePerUnit 0 works for free on purpose (go-livepeer refuses to start unpriced too)"
            ),
            (Some(0) | None, true) => tracing::warn!(
                "-pricePerUnit is 0: work not priced per gateway or per model (video, and models without a price) is done for free"
            ),
            (Some(0), false) => tracing::warn!("-pricePerUnit 0: all work is done for free"),
            _ => {}
        }
        payments = Some(Arc::new(Payments::new(
            key,
            client.clone(),
            service.subscribe(),
            store,
            monitor,
            PaymentConfig {
                ticket_ev: args.ticket_ev,
                max_face_value: args.max_face_value,
                recipient: Some(client.orchestrator()),
                auto_adjust_price: args.auto_adjust_price,
                ..PaymentConfig::default()
            },
            price,
            prices,
        )));
        let stop = shutdown.clone();
        chain_task = Some(tokio::spawn(
            service.run(async move { stop.cancelled().await }),
        ));
        let usd_base = match &base_price {
            Some(BasePrice::Usd(usd)) => Some(usd.clone()),
            _ => None,
        };
        if let (Some(feed), Some(payments)) = (&feed, &payments) {
            if usd_base.is_some() || specs.in_usd() {
                // USD prices follow ETH/USD; sessions keep theirs.
                let (feed, payments) = (feed.clone(), payments.clone());
                let pixels = args.pixels_per_unit;
                let mut updates = feed.watcher.subscribe();
                tokio::spawn(async move {
                    while updates.changed().await.is_ok() {
                        let reading = updates.borrow_and_update().clone();
                        let Some(eth) = reading.map(|r| r.to_eth_usd()) else {
                            continue;
                        };
                        if let Some(usd) = &usd_base {
                            match usd_base_price(usd, &eth, pixels) {
                                Ok(p) => payments.set_price(p),
                                Err(e) => tracing::warn!(error = %e, "price not updated"),
                            }
                        }
                        if specs.in_usd() {
                            match specs.resolve(Some(&eth)) {
                                Ok(book) => payments.set_prices(book),
                                Err(e) => {
                                    tracing::warn!(error = %e, "per-gateway and per-model prices not updated")
                                }
                            }
                        }
                    }
                });
            }
        }
        if args.use_live_runners || args.live_runner_config.is_some() {
            eth_usd = feed.map(|f| f as Arc<dyn lpworker::live_runner::price::EthUsdSource>);
        }
    }
    if payments.is_none() && (args.ai_models.is_some() || args.price_per_gateway.is_some()) {
        tracing::warn!("--ai-models and --price-per-gateway price ticket payments; off chain nothing is charged");
    }
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-addr {addr}"))?;
        let stop = shutdown.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = lpworker::worker::metrics::serve_registry(listener, registry, async move {
                stop.cancelled().await
            })
            .await;
        });
    }
    let live_runners = live_runner_options(&args, eth_usd)?;
    let config = OrchestratorConfig {
        listen,
        service_addr: service_addr.clone(),
        workers: args.workers.clone(),
        worker_client: worker_client(&args)?,
        datadir: args.eth.datadir.clone(),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        price_per_unit,
        pixels_per_unit: args.pixels_per_unit,
        max_segment_bytes: args.max_segment_bytes,
        max_buffered_bodies: if args.max_buffered_bodies < args.max_segment_bytes {
            bail!(
                "--max-buffered-bodies ({}) must be at least --max-segment-bytes ({}): a full-size upload would never fit",
                args.max_buffered_bodies,
                args.max_segment_bytes
            );
        } else {
            args.max_buffered_bodies
        },
        body_read_timeout: super::serve::seconds("body-read-timeout", args.body_read_timeout)?,
        livepeer_version: args.livepeer_version.clone(),
        nodes: match &args.nodes {
            Some(list) => lpworker::orchestrator::parse_nodes(list).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        },
        payments,
        live_runners,
        orch_secret: args
            .orch_secret
            .as_deref()
            .map(lpworker::chain::account::resolve_password),
    };
    let orch = BoundOrchestrator::bind(config).await?;
    match orch.cli_addr() {
        Some(cli) => println!(
            "lpworker orchestrator listening addr={} uri={} cli={cli}",
            orch.local_addr(),
            orch.service_uri()
        ),
        None => println!(
            "lpworker orchestrator listening addr={} uri={}",
            orch.local_addr(),
            orch.service_uri()
        ),
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        stop.cancel();
    });
    orch.run(async move { shutdown.cancelled().await }).await;
    if let Some(t) = chain_task {
        let _ = t.await;
    }
    Ok(())
}

/// ETH/USD from the Chainlink feed, for runners' USD prices: read now,
/// then refreshed in the background; readings older than
/// --price-feed-max-age price nothing.
async fn eth_usd_feed(
    args: &OrchestratorArgs,
    client: Arc<ChainClient>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Arc<FreshEthUsd>> {
    use lpworker::chain::price_feed::{
        PriceFeed, PriceFeedWatcher, WatcherOptions, ARBITRUM_ONE_ETH_USD_FEED,
    };
    let address = match (args.price_feed_addr, args.eth.network.as_deref()) {
        (Some(a), _) => a,
        (None, Some("arbitrum-one-mainnet")) => ARBITRUM_ONE_ETH_USD_FEED,
        (None, _) => bail!(
            "on chain, prices in USD (Live Runners', -pricePerUnit, -pricePerGateway, aiModels) need the Chainlink ETH/USD feed: give -priceFeedAddr"
        ),
    };
    let feed = PriceFeed::connect(client, address)
        .await
        .with_context(|| format!("-priceFeedAddr {address}"))?;
    let watcher = Arc::new(PriceFeedWatcher::new(
        feed,
        WatcherOptions {
            refresh: args.price_feed_refresh,
            ..WatcherOptions::default()
        },
    ));
    if let Err(e) = watcher.refresh().await {
        tracing::warn!(error = %e, "the ETH/USD feed could not be read yet: priced sessions wait for it");
    }
    tokio::spawn(
        watcher
            .clone()
            .run(async move { shutdown.cancelled().await }),
    );
    Ok(Arc::new(FreshEthUsd {
        watcher,
        max_age: args.price_feed_max_age,
    }))
}

/// The feed's reading while it is fresh enough to price new sessions.
struct FreshEthUsd {
    watcher: Arc<lpworker::chain::price_feed::PriceFeedWatcher>,
    max_age: Duration,
}

impl FreshEthUsd {
    fn eth_usd_now(&self) -> Result<lpworker::live_runner::price::EthUsd> {
        Ok(self.watcher.fresh(self.max_age)?.to_eth_usd())
    }
}

impl lpworker::live_runner::price::EthUsdSource for FreshEthUsd {
    fn eth_usd(&self) -> Result<lpworker::live_runner::price::EthUsd, String> {
        self.eth_usd_now().map_err(|e| e.to_string())
    }
}

/// The port of `-serviceAddr`: `host:port`, or a URL (its port, or its
/// scheme's).
/// How the shim reaches its workers: secret, TLS, deadline.
fn worker_client(args: &OrchestratorArgs) -> Result<ClientOptions> {
    if !(args.worker_timeout > 0.0 && args.worker_timeout.is_finite()) {
        bail!("--worker-timeout must be a positive number of seconds");
    }
    let mut options =
        ClientOptions::default().with_timeout(Duration::from_secs_f64(args.worker_timeout));
    if let Some(secret) = &args.worker_secret {
        options = options
            .with_secret(secret)
            .context("--worker-secret (LPWORKER_WORKER_SECRET)")?;
    }
    let trust = match (&args.worker_ca, &args.worker_cert_pin) {
        (Some(ca), _) => Some(ServerTrust::Ca(ca)),
        (None, Some(pin)) => Some(ServerTrust::Pin(pin)),
        (None, None) => None,
    };
    let client = args
        .worker_client_cert
        .as_deref()
        .zip(args.worker_client_key.as_deref());
    match trust {
        Some(trust) => {
            options = options
                .with_tls(trust, client)
                .context("worker TLS (--worker-ca, --worker-cert-pin, --worker-client-cert)")?;
        }
        None if args.workers.iter().any(|w| w.starts_with("https://")) => bail!(
            "https:// workers need --worker-ca FILE or --worker-cert-pin SHA256 to verify them"
        ),
        None if client.is_some() => {
            bail!("--worker-client-cert is for https:// workers: give --worker-ca or --worker-cert-pin too")
        }
        None => {}
    }
    Ok(options)
}

fn service_port(service_addr: &str) -> Option<u16> {
    if service_addr.contains("://") {
        return reqwest::Url::parse(service_addr)
            .ok()?
            .port_or_known_default();
    }
    service_addr.rsplit_once(':')?.1.parse().ok()
}

/// go-livepeer's rules for the Live Runner flags: -useLiveRunners needs a
/// secret or a config file, and a config file that does not load stops
/// the node.
fn live_runner_options(
    args: &OrchestratorArgs,
    prices: Option<Arc<dyn lpworker::live_runner::price::EthUsdSource>>,
) -> Result<Option<lpworker::orchestrator::LiveRunnerOptions>> {
    let secret = args
        .orch_secret
        .as_deref()
        .map(lpworker::chain::account::resolve_password)
        .filter(|s| !s.is_empty());
    if !args.use_live_runners && args.live_runner_config.is_none() {
        return Ok(None);
    }
    if secret.is_none() && args.live_runner_config.is_none() {
        bail!("-useLiveRunners needs -orchSecret (dynamic runners) or -liveRunnerConfig (static runners)");
    }
    let static_runners = match &args.live_runner_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading -liveRunnerConfig {}", path.display()))?;
            let file: lpworker::live_runner::wire::RunnersFile = serde_json::from_str(&text)
                .with_context(|| format!("-liveRunnerConfig {}", path.display()))?;
            file.runners
        }
        None => Vec::new(),
    };
    Ok(Some(lpworker::orchestrator::LiveRunnerOptions {
        orch_secret: secret,
        static_runners,
        runner_addr: args.live_runner_addr.clone(),
        proxy_url: args.live_runner_proxy_url.clone(),
        cli_listen: Some(args.cli_addr),
        heartbeat_interval: Some(Duration::from_secs(args.live_runner_heartbeat_interval)),
        heartbeat_ttl: Some(Duration::from_secs(args.live_runner_heartbeat_ttl)),
        state_file: Some(
            args.eth
                .datadir
                .join(lpworker::live_runner::snapshot::FILE_NAME),
        ),
        prices,
        payment_interval: args.live_payment_interval,
    }))
}

#[cfg(test)]
mod tests {
    use super::service_port;

    #[test]
    fn go_livepeers_flag_spellings_are_taken() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::OrchestratorArgs,
        }
        use clap::Parser as _;
        for flag in ["-pricePerGateway", "-pricePerBroadcaster"] {
            let argv = crate::cli::normalize_go_flags(
                [
                    "lpworker",
                    "-serviceAddr",
                    "o.example:8935",
                    "-orchSecret",
                    "s",
                    flag,
                    "{}",
                    "-ethOrchAddr",
                    "0x0000000000000000000000000000000000000001",
                    "-autoAdjustPrice=false",
                    "-nodes",
                    "a.example:1",
                ]
                .map(String::from),
            );
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.args.price_per_gateway.as_deref(), Some("{}"));
            assert!(!cli.args.auto_adjust_price);
            assert_eq!(cli.args.nodes.as_deref(), Some("a.example:1"));
            assert_eq!(
                cli.args.eth_orch_addr,
                Some(alloy_primitives::Address::with_last_byte(1))
            );
        }
    }

    #[test]
    fn a_base_price_is_wei_or_usd() {
        use super::{parse_base_price, usd_base_price, BasePrice};
        assert_eq!(parse_base_price("1200").unwrap(), BasePrice::Wei(1200));
        assert!(parse_base_price("-1").is_err());
        assert!(parse_base_price("ten").is_err());
        let BasePrice::Usd(usd) = parse_base_price("0.000002USD").unwrap() else {
            panic!("USD expected")
        };
        assert!(matches!(parse_base_price("0.5 usd"), Ok(BasePrice::Usd(_))));
        assert!(parse_base_price("0usd").is_err());
        // $0.000002 at $2000 is 1e9 wei per -pixelsPerUnit pixels.
        let eth = lpworker::live_runner::price::EthUsd {
            answer: alloy_primitives::U256::from(200_000_000_000u64),
            decimals: 8,
        };
        let p = usd_base_price(&usd, &eth, 3).unwrap();
        assert_eq!((p.num, p.den), (1_000_000_000, 3));
    }

    #[test]
    fn the_service_address_is_host_port_or_a_url() {
        assert_eq!(service_port("o.example:8935"), Some(8935));
        assert_eq!(service_port("https://o.example:9000/"), Some(9000));
        assert_eq!(service_port("https://o.example"), Some(443));
        assert_eq!(service_port("http://o.example"), Some(80));
        assert_eq!(service_port("o.example"), None);
    }
}
