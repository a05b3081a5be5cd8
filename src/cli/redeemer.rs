//! `lpworker redeemer`: redeems an orchestrator's winning tickets from its
//! ticket store with an account of its own, so neither the orchestrator's
//! staking key nor the node's hot key pays redemption gas or needs to be
//! where the tickets are taken. The orchestrator runs with
//! `--external-redeemer` over the same store (its `--datadir`).

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use anyhow::{bail, Context, Result};

use lpworker::chain::account::load_signer;
use lpworker::chain::{ChainClient, ChainMetrics, ChainService, ServiceOptions};
use lpworker::pm::sender_monitor::SenderMonitor;
use lpworker::pm::store::TicketStore;

use super::orchestrator::EthArgs;

#[derive(Debug, clap::Args)]
pub struct RedeemerArgs {
    /// The orchestrator the tickets pay (go-livepeer's -ethOrchAddr);
    /// default the account itself.
    #[arg(long, alias = "ethOrchAddr", env = "LP_ETHORCHADDR")]
    pub eth_orch_addr: Option<Address>,
    /// Seconds between chain checks and redemption passes.
    #[arg(long, default_value_t = 5)]
    pub chain_poll: u64,
    /// L1 blocks past a ticket's params expiry before it is redeemed: the
    /// orchestrator judges params by its own reading of the chain, and a
    /// recipientRand revealed while it still takes those params lets the
    /// gateway tell winners from losers.
    #[arg(long, default_value_t = 2)]
    pub reveal_margin_blocks: u64,
    /// Initialize rounds nobody has initialized (go-livepeer's -initializeRound).
    #[arg(long, alias = "initializeRound", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub initialize_round: bool,
    /// Prometheus metrics listen address (redemptions, rounds, errors).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub eth: EthArgs,
}

pub fn run(args: RedeemerArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(redeem(args))
}

async fn redeem(args: RedeemerArgs) -> Result<()> {
    let Some(mut config) = args.eth.chain_config()? else {
        bail!("the redeemer needs a chain: give --eth-url and --eth-controller (or --network arbitrum-one-mainnet)");
    };
    config.orchestrator = args.eth_orch_addr;
    let signer = load_signer(&args.eth.key_source()?)?;
    let client = Arc::new(ChainClient::connect(config, signer).await?);
    let path = args.eth.datadir.join("tickets.sqlite");
    if !path.exists() {
        bail!(
            "no ticket store at {}: give the orchestrator's --datadir",
            path.display()
        );
    }
    let store = Arc::new(
        TicketStore::open(&path)
            .with_context(|| format!("opening the ticket store {}", path.display()))?,
    );
    let _lock = store.take_redemption().context(
        "the orchestrator must run with --external-redeemer, and only one redeemer per store",
    )?;
    if !client.is_registered().await? {
        tracing::warn!(orchestrator = %client.orchestrator(), "not a registered transcoder: its winning tickets wait until it registers");
    }
    let monitor = Arc::new(SenderMonitor::with_pending(
        store
            .pending_by_sender()
            .context("reading pending winners")?,
    ));
    let registry =
        prometheus::Registry::new_custom(Some("lpworker".into()), None).expect("valid prefix");
    let service = Arc::new(
        ChainService::new(
            client.clone(),
            Some(store.clone()),
            ServiceOptions {
                initialize_round: args.initialize_round,
                // reward() credits its sender: the orchestrator's own node
                // (or key) calls it, not the redeemer.
                reward: false,
                poll_interval: Duration::from_secs(args.chain_poll.max(1)),
                reveal_margin_blocks: args.reveal_margin_blocks,
                ..ServiceOptions::default()
            },
            ChainMetrics::new(&registry),
        )
        .with_monitor(monitor),
    );
    service.tick().await.context("reading the chain's state")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-addr {addr}"))?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = lpworker::worker::metrics::serve_registry(listener, registry, async move {
                stop.cancelled().await
            })
            .await;
        });
    }
    println!(
        "lpworker redeemer redeeming for {} from account {} store={}",
        client.orchestrator(),
        client.account(),
        path.display()
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        stop.cancel();
    });
    service.run(async move { shutdown.cancelled().await }).await;
    Ok(())
}
