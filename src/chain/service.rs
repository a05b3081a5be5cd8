//! The shim's chain loops. Each tick follows the round (re-resolving
//! contract addresses when it changes), initializes it if configured,
//! calls reward once per round if configured and active, and publishes
//! what the payment and routing code need (round, block hash, active).
//! A second loop redeems winning tickets, so a long queue never delays a
//! round's reward. A winner is redeemed only once it can be, safely and at
//! a profit: the round is initialized, the ticket's params have expired
//! (the recipientRand it reveals is then worthless to the sender), the gas
//! price is within the cap, the face value exceeds the transaction's cost,
//! and the sender's funds cover it. Otherwise it waits, until its validity
//! period ends. Senders take turns, so one sender's backlog delays no one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{watch, Mutex};

use super::client::ChainClient;
use super::redeem::{is_expired, RedeemContext, RedeemOutcome};
use super::rewards::RewardOutcome;
use super::rounds::RoundInfo;
use super::ChainError;
use crate::log_limit::{RateLimitedLog, SharedRateLimitedLog};
use crate::pm::sender_monitor::SenderMonitor;
use crate::pm::store::{Queued, Status, TicketStore};

/// A failing tick or redemption pass repeats every poll interval while the
/// RPC provider is down: one line, then one per this long.
const REPEATED_FAILURE_LOG: Duration = Duration::from_secs(60);

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
    /// Tickets looked at per redemption pass at most.
    pub redeem_batch: usize,
    /// Tickets of one sender per pass at most (senders take turns).
    pub redeem_per_sender: usize,
    /// Refusals by the chain before a ticket is given up (waiting for gas,
    /// funds or a reachable node counts none).
    pub max_redeem_attempts: u32,
    /// Gas one redemption costs (go-livepeer's redeemGas: 1.2M on Arbitrum).
    pub redeem_gas: u64,
    /// A ticket waiting for its sender's funds or cheaper gas is looked at
    /// again after this, so waiting tickets do not take every turn.
    pub recheck_after: Duration,
    /// Blocks past its params' expiry a winner waits before its
    /// recipientRand is revealed on chain. 0 when the node that judges
    /// params redeems (it knows its own block); a separate redeemer reads
    /// the chain on its own clock and keeps a margin for the orchestrator's.
    pub reveal_margin_blocks: u64,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            initialize_round: false,
            reward: true,
            poll_interval: Duration::from_secs(5),
            redeem_batch: 64,
            redeem_per_sender: 16,
            max_redeem_attempts: 20,
            redeem_gas: 1_200_000,
            recheck_after: Duration::from_secs(30),
            reveal_margin_blocks: 0,
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
    monitor: Arc<SenderMonitor>,
    /// Winners another process redeems (a separate redeemer over the
    /// shared store), with the face value per sender known settled so far.
    settled_elsewhere: Option<SettledElsewhere>,
}

/// The shared store another process redeems from, and the face value per
/// sender this node has seen it settle.
type SettledElsewhere = (Arc<TicketStore>, std::sync::Mutex<HashMap<Address, U256>>);

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
            monitor: Arc::new(SenderMonitor::new()),
            settled_elsewhere: None,
        }
    }

    /// Another process redeems the winners this node stores (built with no
    /// store of its own to redeem from): the monitor learns from the shared
    /// store which winners left its queue, so their senders owe them no
    /// more. `settled` is the per-sender settled face value read together
    /// with the pending figures the monitor started from.
    pub fn with_settlement_elsewhere(
        mut self,
        store: Arc<TicketStore>,
        settled: impl IntoIterator<Item = (Address, U256)>,
    ) -> Self {
        self.settled_elsewhere =
            Some((store, std::sync::Mutex::new(settled.into_iter().collect())));
        self
    }

    /// Reads what the other process settled since the last look and tells
    /// the monitor; returns the senders whose winners settled. Tests drive
    /// this directly.
    pub fn sync_settled(&self) -> Result<usize, crate::pm::store::StoreError> {
        let Some((store, known)) = &self.settled_elsewhere else {
            return Ok(0);
        };
        let now = store.owed_and_settled_by_sender()?;
        let mut known = known.lock().expect("settled lock");
        let mut changed = 0;
        for (sender, _, settled) in now {
            let before = known.insert(sender, settled).unwrap_or_default();
            // Rows are never deleted, so the figure only grows; a smaller one
            // is a replaced store file, and is taken as the new start.
            if settled > before {
                self.monitor.resolved(sender, settled - before);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Shares the payments' sender monitor: winners leaving the queue are
    /// no longer owed by their sender.
    pub fn with_monitor(mut self, monitor: Arc<SenderMonitor>) -> Self {
        self.monitor = monitor;
        self
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
            // Said by the tick loop's rate-limited failure line.
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
        let state = ChainState {
            round: round.clone(),
            active,
            ticket_validity_period: self.client.ticket_validity_period().await?,
        };
        // Published before reward(), whose transaction can take minutes:
        // payments judge params expiry by this block.
        self.metrics.round.set(state.round.current_round as i64);
        self.metrics.active.set(i64::from(active));
        self.state.send_replace(Some(state.clone()));
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
        Ok(state)
    }

    /// One redemption pass over the tickets that are due; returns how many
    /// reached a final state. Tests drive this directly.
    pub async fn redeem_queued(&self) -> Result<usize, ChainError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let store_err = |e: crate::pm::store::StoreError| ChainError::Refused(e.to_string());
        if self.client.controller_paused().await? {
            // Every redemption reverts while the protocol is paused: wait.
            tracing::debug!("protocol paused: winning tickets wait");
            return Ok(0);
        }
        let current_round = self.client.current_round().await?;
        if !self.client.round_initialized().await? {
            // The broker refuses every redemption until the round is
            // initialized (by us with --initialize-round, else by anyone).
            tracing::debug!(
                round = current_round,
                "waiting for the round to be initialized"
            );
            return Ok(0);
        }
        // One redeemer: a ticket still claimed from an earlier pass was
        // stranded by a store error there. Back in the queue with it.
        let stranded = store.requeue_stranded().map_err(store_err)?;
        if stranded > 0 {
            tracing::warn!(
                stranded,
                "winning tickets left mid-redemption are queued again"
            );
        }
        let validity = self.client.ticket_validity_period().await?;
        // Past the validity period nothing can pay them: expired in bulk,
        // with no chain reads per ticket.
        let oldest_valid = current_round as i64 + 1 - validity as i64;
        let mut done = 0;
        for (sender, face_value) in store.expire_before(oldest_valid).map_err(store_err)? {
            self.monitor.resolved(sender, face_value);
            self.metrics
                .redemptions
                .with_label_values(&["expired"])
                .inc();
            done += 1;
        }
        if !self.client.is_registered().await? {
            // Tickets to an unregistered recipient revert on chain: they
            // wait (until registration or expiry) instead of failing.
            let waiting = store.queued(1).map_err(store_err)?.len();
            // Checked every poll: said once per ten minutes.
            static UNREGISTERED: SharedRateLimitedLog =
                SharedRateLimitedLog::new(Duration::from_secs(600));
            if waiting > 0 && UNREGISTERED.check().is_some() {
                tracing::warn!("winning tickets wait for this node to register as a transcoder (bond to itself) before they can be redeemed");
            }
            return Ok(done);
        }
        let gas_price = self.client.gas_price_fresh().await?;
        if let Some(cap) = self.client.config().max_gas_price {
            if gas_price > cap {
                tracing::info!(
                    gas_price,
                    cap,
                    "gas price above --max-gas-price: winning tickets wait"
                );
                return Ok(done);
            }
        }
        let tx_cost = U256::from(self.options.redeem_gas) * U256::from(gas_price);
        // Redeem by the older of the chain's block and the one payments
        // judge params by: a recipientRand is revealed only once the params
        // it backs are refused by this node too.
        let mut block = self.client.l1_block().await?;
        if let Some(published) = self.state.borrow().as_ref() {
            block = block.min(published.round.block_number);
        }
        let block = block.saturating_sub(self.options.reveal_margin_blocks);
        let due = store
            .redeemable(
                block,
                self.options.redeem_per_sender,
                self.options.redeem_batch,
            )
            .map_err(store_err)?;
        let mut ctx = RedeemContext::new(current_round, validity);
        let mut i = 0;
        while i < due.len() {
            let sender = due[i].winner.ticket.sender;
            let end = due[i..]
                .iter()
                .position(|q| q.winner.ticket.sender != sender)
                .map_or(due.len(), |n| i + n);
            let (deposit, claimable) = ctx.sender_funds(&self.client, sender).await?;
            let mut available = deposit.saturating_add(claimable);
            for q in &due[i..end] {
                let t = &q.winner.ticket;
                if t.face_value <= tx_cost {
                    // Redeeming would cost more than it pays (a gas spike
                    // since the params were issued): wait for cheaper gas.
                    tracing::debug!(ticket = %t.hash(), face_value = %t.face_value, %tx_cost, "winning ticket waits: face value does not cover the gas");
                    self.defer(store, t.hash())?;
                    continue;
                }
                // The last round it can be redeemed in: take what the
                // sender can pay rather than nothing.
                let last_chance = is_expired(t.creation_round, validity, current_round + 1);
                if available <= tx_cost || (available < t.face_value && !last_chance) {
                    // A reserve share can be claimed again next round, a
                    // deposit topped up: wait for it.
                    tracing::debug!(ticket = %t.hash(), %available, face_value = %t.face_value, "winning ticket waits for the sender's funds");
                    self.defer(store, t.hash())?;
                    continue;
                }
                match self.redeem_one(store, q, &mut ctx).await? {
                    Some(RedeemOutcome::Redeemed { .. }) => {
                        available = available.saturating_sub(t.face_value);
                        done += 1;
                    }
                    Some(_) => done += 1,
                    None => {}
                }
            }
            i = end;
        }
        Ok(done)
    }

    /// Lets a waiting ticket's turn go to others for a while.
    fn defer(&self, store: &TicketStore, ticket: B256) -> Result<(), ChainError> {
        store
            .defer(ticket, self.options.recheck_after.as_secs())
            .map_err(|e| ChainError::Refused(e.to_string()))
    }

    /// Redeems one due ticket. Returns its outcome when it left the queue,
    /// `None` when it went back to wait; a transient error ends the pass.
    async fn redeem_one(
        &self,
        store: &TicketStore,
        q: &Queued,
        ctx: &mut RedeemContext,
    ) -> Result<Option<RedeemOutcome>, ChainError> {
        let store_err = |e: crate::pm::store::StoreError| ChainError::Refused(e.to_string());
        let w = &q.winner;
        let hash = w.ticket.hash();
        if !store.claim(hash).map_err(store_err)? {
            return Ok(None);
        }
        let mut record = |nonce: u64, tx: Option<B256>| {
            store
                .record_tx(hash, Some(nonce), tx)
                .map_err(|e| e.to_string())
        };
        let mut outcome = self
            .client
            .redeem_with(w, ctx, q.tx_nonce, &mut record)
            .await;
        if let Ok(RedeemOutcome::Refused(_)) = &outcome {
            // A refusal may come from a contract the Controller has moved
            // since we resolved it: resolve again and retry once.
            // (Errors here must not leave the claimed ticket stranded
            // in `redeeming`: they become this ticket's outcome.)
            match self.client.refresh_addresses().await {
                Ok(changed) if !changed.is_empty() => {
                    outcome = self
                        .client
                        .redeem_with(w, ctx, q.tx_nonce, &mut record)
                        .await;
                }
                Ok(_) => {}
                Err(e) => outcome = Err(e),
            }
        }
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(ticket = %hash, error = %e, "redemption failed; will retry");
                self.metrics.redemptions.with_label_values(&["error"]).inc();
                store
                    .finish(hash, Status::Queued, Some(&e.to_string()), None, false)
                    .map_err(store_err)?;
                return Err(e);
            }
        };
        let o = match o {
            // Used because our own earlier transaction was mined meanwhile.
            RedeemOutcome::AlreadyUsed if q.tx_nonce.is_some() => RedeemOutcome::Redeemed {
                tx: q.tx_hash.unwrap_or_default(),
                face_value: w.ticket.face_value,
            },
            o => o,
        };
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
        // A round that turned during the pass refuses every redemption
        // until it is initialized: that is a wait, not the ticket's fault.
        let refused = matches!(o, RedeemOutcome::Refused(_))
            && self.client.round_initialized().await.unwrap_or(true);
        let attempts =
            store.status(hash).map_err(store_err)?.map_or(0, |(_, a)| a) + u32::from(refused);
        let status = match o.status() {
            // A refusal can pass later (the sender tops up, the node
            // registers): retry until the refusals run out.
            Status::Failed if attempts < self.options.max_redeem_attempts => Status::Queued,
            s => s,
        };
        store
            .finish(hash, status, error.as_deref(), tx, refused)
            .map_err(store_err)?;
        if status != Status::Queued {
            self.monitor.resolved(w.ticket.sender, w.ticket.face_value);
        }
        tracing::info!(ticket = %hash, sender = %w.ticket.sender, outcome = label, reason = error.as_deref().unwrap_or(""), "winning ticket");
        self.metrics.redemptions.with_label_values(&[label]).inc();
        Ok((status != Status::Queued).then_some(o))
    }

    /// Ticks every poll interval until `shutdown` resolves, beside a
    /// second loop on the same clock: redemption when this node redeems,
    /// following the other process's settlements when a separate redeemer
    /// does. Errors are logged and the loops go on.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut background = self.clone().spawn_background();
        let mut interval = tokio::time::interval(self.options.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed = RateLimitedLog::new(REPEATED_FAILURE_LOG);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    background.abort();
                    return;
                }
                _ = interval.tick() => {
                    match self.tick().await {
                        Ok(_) => {
                            failed.reset();
                        }
                        Err(e) => {
                            if let Some(suppressed) = failed.check() {
                                tracing::warn!(error = %e, suppressed, "chain tick failed (suppressed: like failures since the last line)");
                            }
                        }
                    }
                    if background.is_finished() {
                        // Only a panic ends it: say so, and go on.
                        tracing::error!("the redemption loop stopped; restarting it");
                        background = self.clone().spawn_background();
                    }
                }
            }
        }
    }

    fn spawn_background(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(self.options.poll_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failed = RateLimitedLog::new(REPEATED_FAILURE_LOG);
            let follow_only = self.store.is_none() && self.settled_elsewhere.is_some();
            loop {
                interval.tick().await;
                self.monitor.sweep();
                if follow_only {
                    match self.sync_settled() {
                        Ok(_) => {
                            failed.reset();
                        }
                        Err(e) => {
                            if let Some(suppressed) = failed.check() {
                                tracing::warn!(error = %e, suppressed, "reading the redeemer's settlements failed (suppressed: like failures since the last line)");
                            }
                        }
                    }
                    continue;
                }
                // Drain what is due, a pass at a time, while passes settle
                // tickets (each settles at least one, so this ends).
                loop {
                    match self.redeem_queued().await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {
                            failed.reset();
                            break;
                        }
                        Err(e) => {
                            if let Some(suppressed) = failed.check() {
                                tracing::warn!(error = %e, suppressed, "redemption pass failed (suppressed: like failures since the last line)");
                            }
                            break;
                        }
                    }
                }
            }
        })
    }
}
