//! The shim's chain loop: each tick follows the round (re-resolving
//! contract addresses when it changes), initializes it if configured,
//! calls reward once per round if configured and active, publishes what the
//! payment and routing code need (round, block hash, active), and drains
//! the winning-ticket queue.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::B256;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{watch, Mutex};

use super::client::ChainClient;
use super::redeem::{is_expired, RedeemContext, RedeemOutcome};
use super::rewards::RewardOutcome;
use super::rounds::RoundInfo;
use super::ChainError;
use crate::pm::store::{Status, TicketStore};

/// What the rest of the shim reads from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub round: RoundInfo,
    /// In the active set: video work is allowed.
    pub active: bool,
    pub ticket_validity_period: u64,
}

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Initialize rounds nobody has initialized (go-livepeer's -initializeRound).
    pub initialize_round: bool,
    /// Call reward once per round while active (go-livepeer's -reward).
    pub reward: bool,
    pub poll_interval: Duration,
    /// Tickets redeemed per tick at most.
    pub redeem_batch: usize,
    /// Attempts before a ticket that keeps failing transiently is given up.
    pub max_redeem_attempts: u32,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            initialize_round: false,
            reward: true,
            poll_interval: Duration::from_secs(5),
            redeem_batch: 32,
            max_redeem_attempts: 20,
        }
    }
}

#[derive(Clone)]
pub struct ChainMetrics {
    pub round: IntGauge,
    pub active: IntGauge,
    pub rewards: IntCounter,
    /// Wei of LPT minted by this node's reward calls.
    pub reward_minted_wei: prometheus::Counter,
    pub last_reward_minted_wei: prometheus::Gauge,
    pub redemptions: IntCounterVec,
    pub chain_errors: IntCounter,
}

impl ChainMetrics {
    pub fn new(registry: &Registry) -> Self {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        ChainMetrics {
            round: reg(
                registry,
                IntGauge::new("chain_round", "Current protocol round").expect("gauge"),
            ),
            active: reg(
                registry,
                IntGauge::new("chain_active", "1 while the node is in the active set")
                    .expect("gauge"),
            ),
            rewards: reg(
                registry,
                IntCounter::new("chain_rewards_total", "reward() calls that minted LPT")
                    .expect("counter"),
            ),
            reward_minted_wei: reg(
                registry,
                prometheus::Counter::new(
                    "chain_reward_minted_wei_total",
                    "LPT minted by reward(), in wei",
                )
                .expect("counter"),
            ),
            last_reward_minted_wei: reg(
                registry,
                prometheus::Gauge::new(
                    "chain_last_reward_minted_wei",
                    "LPT minted by the last reward(), in wei",
                )
                .expect("gauge"),
            ),
            redemptions: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "ticket_redemptions_total",
                        "Winning ticket redemption outcomes",
                    ),
                    &["outcome"],
                )
                .expect("counter"),
            ),
            chain_errors: reg(
                registry,
                IntCounter::new("chain_errors_total", "Failed chain reads and transactions")
                    .expect("counter"),
            ),
        }
    }
}

pub struct ChainService {
    client: Arc<ChainClient>,
    store: Option<Arc<TicketStore>>,
    options: ServiceOptions,
    metrics: ChainMetrics,
    state: watch::Sender<Option<ChainState>>,
    last_round: Mutex<Option<u64>>,
}

impl ChainService {
    pub fn new(
        client: Arc<ChainClient>,
        store: Option<Arc<TicketStore>>,
        options: ServiceOptions,
        metrics: ChainMetrics,
    ) -> Self {
        ChainService {
            client,
            store,
            options,
            metrics,
            state: watch::channel(None).0,
            last_round: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &Arc<ChainClient> {
        &self.client
    }

    /// The published chain state; `None` until the first tick succeeds.
    pub fn subscribe(&self) -> watch::Receiver<Option<ChainState>> {
        self.state.subscribe()
    }

    /// One pass of the loop. Tests drive this directly.
    pub async fn tick(&self) -> Result<ChainState, ChainError> {
        let result = self.tick_inner().await;
        if result.is_err() {
            self.metrics.chain_errors.inc();
        }
        result
    }

    async fn tick_inner(&self) -> Result<ChainState, ChainError> {
        if self.client.controller_paused().await? {
            // Every protocol transaction reverts while paused: send nothing,
            // publish nothing new (payments keep the last known state).
            tracing::warn!("the protocol's Controller is paused; waiting");
            return Err(ChainError::Refused(
                "the protocol's Controller is paused".into(),
            ));
        }
        let mut round = self.client.round_info().await?;
        {
            let mut last = self.last_round.lock().await;
            if *last != Some(round.current_round) {
                if last.is_some() {
                    // Upgrades take effect at round boundaries in practice;
                    // resolving again here bounds how long a stale address lives.
                    self.client.refresh_addresses().await?;
                }
                tracing::info!(
                    round = round.current_round,
                    initialized = round.initialized,
                    block = round.block_number,
                    "new round"
                );
                *last = Some(round.current_round);
            }
        }
        if !round.initialized && self.options.initialize_round {
            if self.client.initialize_round().await? {
                tracing::info!(round = round.current_round, "initialized the round");
            }
            round = self.client.round_info().await?;
        }
        let active = self.client.is_active().await?;
        if self.options.reward && active && round.initialized {
            match self.client.reward_if_due().await? {
                RewardOutcome::Rewarded { minted, .. } => {
                    self.metrics.rewards.inc();
                    let wei = u128::try_from(minted).map_or(f64::MAX, |v| v as f64);
                    self.metrics.reward_minted_wei.inc_by(wei);
                    self.metrics.last_reward_minted_wei.set(wei);
                }
                other => tracing::debug!(?other, "no reward call"),
            }
        }
        let state = ChainState {
            round,
            active,
            ticket_validity_period: self.client.ticket_validity_period().await?,
        };
        self.metrics.round.set(state.round.current_round as i64);
        self.metrics.active.set(i64::from(active));
        self.state.send_replace(Some(state.clone()));
        // Tickets to an unregistered recipient revert on chain: they wait
        // (until registration or expiry) instead of failing.
        if self.client.is_registered().await? {
            // Drain the queue: a batch at a time, until a batch comes back short.
            while self.redeem_queued().await? >= self.options.redeem_batch {}
        } else {
            self.expire_queued(&state).await?;
        }
        Ok(state)
    }

    /// Redeems up to one batch of queued winning tickets, oldest creation
    /// round first; returns how many reached a final state.
    pub async fn redeem_queued(&self) -> Result<usize, ChainError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let store_err = |e: crate::pm::store::StoreError| ChainError::Refused(e.to_string());
        let mut done = 0;
        let queued = store.queued(self.options.redeem_batch).map_err(store_err)?;
        if queued.is_empty() {
            return Ok(0);
        }
        let mut ctx = RedeemContext::read(&self.client).await?;
        for w in queued {
            let hash = w.ticket.hash();
            if !store.claim(hash).map_err(store_err)? {
                continue;
            }
            let mut outcome = self.client.redeem_with(&w, &mut ctx).await;
            if let Ok(RedeemOutcome::Refused(_)) = &outcome {
                // A refusal may come from a contract the Controller has moved
                // since we resolved it: resolve again and retry once.
                // (Errors here must not leave the claimed ticket stranded
                // in `redeeming`: they become this ticket's outcome.)
                match self.client.refresh_addresses().await {
                    Ok(changed) if !changed.is_empty() => {
                        outcome = self.client.redeem_with(&w, &mut ctx).await;
                    }
                    Ok(_) => {}
                    Err(e) => outcome = Err(e),
                }
            }
            match outcome {
                Ok(o) => {
                    let (label, error, tx): (&str, Option<String>, Option<B256>) = match &o {
                        RedeemOutcome::Redeemed { tx, .. } => ("redeemed", None, Some(*tx)),
                        RedeemOutcome::AlreadyUsed => ("used", None, None),
                        RedeemOutcome::Expired { .. } => ("expired", None, None),
                        RedeemOutcome::BlockHashMismatch => (
                            "expired",
                            Some("creation round block hash differs on chain".into()),
                            None,
                        ),
                        RedeemOutcome::SenderUnfunded => ("unfunded", None, None),
                        RedeemOutcome::Refused(reason) => ("refused", Some(reason.clone()), None),
                    };
                    let attempts = store.status(hash).map_err(store_err)?.map_or(0, |(_, a)| a);
                    let status = match o.status() {
                        // A refusal can pass later (the sender tops up, the
                        // node registers): retry until the attempts run out.
                        Status::Failed if attempts < self.options.max_redeem_attempts => {
                            Status::Queued
                        }
                        s => s,
                    };
                    tracing::info!(ticket = %hash, sender = %w.ticket.sender, outcome = label, reason = error.as_deref().unwrap_or(""), "winning ticket");
                    self.metrics.redemptions.with_label_values(&[label]).inc();
                    store
                        .finish(hash, status, error.as_deref(), tx)
                        .map_err(store_err)?;
                    // Only tickets that left the queue count: requeued ones
                    // wait for the next tick, not this one's drain loop.
                    if status != Status::Queued {
                        done += 1;
                    }
                }
                Err(e) => {
                    let attempts = store.status(hash).map_err(store_err)?.map_or(0, |(_, a)| a);
                    let status = if attempts >= self.options.max_redeem_attempts {
                        Status::Failed
                    } else {
                        Status::Queued
                    };
                    tracing::warn!(ticket = %hash, attempts, error = %e, "redemption failed; will retry");
                    self.metrics.redemptions.with_label_values(&["error"]).inc();
                    store
                        .finish(hash, status, Some(&e.to_string()), None)
                        .map_err(store_err)?;
                    if e.is_transient() {
                        // The node is struggling: leave the rest for the next tick.
                        return Err(e);
                    }
                }
            }
        }
        Ok(done)
    }

    /// Marks queued tickets past their validity period expired (without
    /// redeeming anything else).
    async fn expire_queued(&self, state: &ChainState) -> Result<(), ChainError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let store_err = |e: crate::pm::store::StoreError| ChainError::Refused(e.to_string());
        let queued = store.queued(usize::MAX >> 1).map_err(store_err)?;
        if !queued.is_empty() {
            tracing::warn!(
                waiting = queued.len(),
                "winning tickets wait for this node to register as a transcoder (bond to itself) before they can be redeemed"
            );
        }
        for w in queued {
            if is_expired(
                w.ticket.creation_round,
                state.ticket_validity_period,
                state.round.current_round,
            ) {
                let hash = w.ticket.hash();
                if store.claim(hash).map_err(store_err)? {
                    store
                        .finish(
                            hash,
                            Status::Expired,
                            Some("expired before the node registered"),
                            None,
                        )
                        .map_err(store_err)?;
                    self.metrics
                        .redemptions
                        .with_label_values(&["expired"])
                        .inc();
                }
            }
        }
        Ok(())
    }

    /// Ticks every poll interval until `shutdown` resolves; errors are
    /// logged and the loop goes on.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(self.options.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = interval.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "chain tick failed");
                    }
                }
            }
        }
    }
}
