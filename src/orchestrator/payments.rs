//! Payments with a chain: ticket params for gateways, ticket validation
//! against the sender's on-chain funds, per-session balances, and winning
//! tickets written to the crash-safe store before any work is answered.
//!
//! Balances are keyed by (sender, manifest id) as go-livepeer keys them:
//! each accepted ticket credits its expected value, each piece of work
//! debits price × units at the price pinned when the session first paid.
//! Work reserves its estimated cost before it runs and settles after, so
//! concurrent requests cannot spend the same credit twice. What a sender
//! may still be paid in winners is the sender monitor's (`pm::sender_monitor`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{keccak256, Address, B256, I256, U256};
use tokio::sync::watch;

use crate::chain::{ChainClient, ChainState};
use crate::pm::recipient::{
    self, check_signature, ChainView, Expiration, Price, ReceivedTicket, Recipient, SenderFunds,
};
use crate::pm::sender_monitor::SenderMonitor;
use crate::pm::signature::{personal_hash, recover_digest, sign};
use crate::pm::store::{TicketStore, WinningTicket};
use crate::pm::ticket::{from_be_bytes, minimal_bytes};
use crate::pm::validation::validate_payment;
use crate::pm::Ticket;
use crate::proto::lp_rpc as net;

/// Blocks a set of ticket params stays valid (go-livepeer's paramsExpirationBlock).
const PARAMS_EXPIRY_BLOCKS: u64 = 40;
/// Sessions idle this long are forgotten (their credit with them).
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Most balances kept; a new one beyond it is refused until idle ones go
/// (each needs a funded, signing sender, so this is a backstop).
const MAX_SESSIONS: usize = 100_000;
/// Idle sessions are swept at most this often (not on every payment).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Senders' funds read from the chain at once. Every fresh key a stranger
/// makes can ask for ticket params; without a bound, a flood of them
/// becomes as many concurrent RPC calls (which a hosted provider bills).
const FUNDS_LOOKUPS: usize = 8;
/// A funds read taking longer than this is given up (told to retry).
const FUNDS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a lookup slot before it is told to retry.
const FUNDS_LOOKUP_WAIT: Duration = Duration::from_secs(5);
/// With every lookup slot taken, a sender's funds read this recently are
/// used as they were (redemption checks the chain again before sending).
const STALE_FUNDS_WHEN_BUSY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// Expected value of one ticket, in wei (go-livepeer's -ticketEV).
    pub ticket_ev: U256,
    /// Largest face value offered, in wei (go-livepeer's -maxFaceValue).
    pub max_face_value: Option<U256>,
    /// Gas one redemption costs (1.2M on Arbitrum, go-livepeer's redeemGas).
    pub redeem_gas: u64,
    /// Raise quoted prices by the redemption overhead of the sender's
    /// winners (go-livepeer's -autoAdjustPrice, on by default there).
    pub auto_adjust_price: bool,
    /// The ticket recipient when it is not the signing key's address
    /// (go-livepeer's -ethOrchAddr): tickets pay the orchestrator whose
    /// stake this is, while the node signs with a hot key.
    pub recipient: Option<Address>,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            ticket_ev: U256::from(8_000_000_000u64),
            max_face_value: None,
            redeem_gas: 1_200_000,
            auto_adjust_price: false,
            recipient: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("payment has ticket params but no sender")]
    MissingSender,
    #[error("invalid sender address")]
    BadSender,
    #[error(
        "invalid expected price: pixelsPerUnit must be positive and pricePerUnit not negative"
    )]
    BadPrice,
    #[error("expected price {expected} is below this orchestrator's price {ours} wei/pixel")]
    PriceTooLow { expected: String, ours: String },
    #[error("invalid ticket params: {0}")]
    BadParams(&'static str),
    #[error("orchestrator is not in the active set for round {0}: video work is refused")]
    NotActive(u64),
    #[error("chain state not known yet (no initialized round); retry shortly")]
    NoChainState,
    #[error("chain: {0}")]
    Chain(#[from] crate::chain::ChainError),
    #[error("{0}")]
    Ticket(#[from] recipient::TicketError),
    #[error("{rejected} of {total} tickets rejected: {first}")]
    SomeRejected {
        rejected: usize,
        total: usize,
        first: String,
    },
    #[error("winning ticket store: {0}")]
    Store(#[from] crate::pm::store::StoreError),
    #[error("insufficient sender reserve for a ticket of EV {0} wei")]
    InsufficientReserve(U256),
    #[error("too many open payment sessions; retry later")]
    TooManySessions,
    #[error("senders' funds cannot be read from the chain right now; retry shortly")]
    FundsLookupsBusy,
}

impl PaymentError {
    /// Server-side failures (5xx) rather than the gateway's (4xx).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            PaymentError::Store(_)
                | PaymentError::NoChainState
                | PaymentError::TooManySessions
                | PaymentError::FundsLookupsBusy
        ) || matches!(self, PaymentError::Chain(_))
    }

    /// What a gateway is told: this node's own trouble is described
    /// generically (chain errors name the RPC endpoint, whose URL carries
    /// the provider's key, and say nothing a gateway can act on).
    pub fn public_message(&self) -> String {
        match self {
            PaymentError::Chain(_) | PaymentError::Store(_) => {
                "orchestrator cannot process payments right now; retry shortly".into()
            }
            other => other.to_string(),
        }
    }
}

/// Work's balance was short of its estimated cost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Insufficient balance")]
pub struct InsufficientBalance;

/// Prices beyond the base video price: per gateway (go-livepeer's
/// -pricePerGateway) and per AI capability and model (aiModels.json).
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    pub per_gateway: HashMap<Address, Price>,
    /// (capability, model id) → wei per unit.
    pub per_model: HashMap<(u32, String), Price>,
}

/// What a piece of work is, for pricing and balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work<'a> {
    /// Transcoding: needs the node in the active set.
    Video,
    /// An AI pipeline on a model: never gated by stake.
    Ai { capability: u32, model: &'a str },
    /// Credit without work (`POST /payment`): at the base price, not gated
    /// (the work it later pays for is).
    Credit,
    /// A Live Runner session, at its runner's price (converted from USD).
    LiveRunner(Price),
}

#[derive(Debug)]
struct Session {
    balance: I256,
    /// Estimated cost of work admitted and not yet settled.
    reserved: U256,
    price: Price,
    touched: Instant,
}

#[derive(Debug)]
struct Sessions {
    map: HashMap<(Address, String), Session>,
    swept: Instant,
}

impl Sessions {
    fn sweep(&mut self) {
        if self.swept.elapsed() >= SWEEP_EVERY || self.map.len() >= MAX_SESSIONS {
            self.map
                .retain(|_, s| !s.reserved.is_zero() || s.touched.elapsed() < SESSION_IDLE);
            self.swept = Instant::now();
        }
    }
}

/// What one processed payment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaymentReceipt {
    pub accepted: usize,
    pub winning: usize,
    pub credited: U256,
}

pub struct Payments {
    /// The key's address: signs results and OrchestratorInfo.
    signer: Address,
    recipient: Arc<Recipient>,
    monitor: Arc<SenderMonitor>,
    key: secp256k1::SecretKey,
    client: Arc<ChainClient>,
    chain: watch::Receiver<Option<ChainState>>,
    store: Arc<TicketStore>,
    config: PaymentConfig,
    /// This node's price for video (wei per pixel); moves with ETH/USD
    /// when it is set in USD.
    price: std::sync::RwLock<Price>,
    /// Per-gateway and per-model prices; move with ETH/USD when in USD.
    prices: std::sync::RwLock<PriceBook>,
    sessions: Mutex<Sessions>,
    /// Chain reads of senders' funds in flight (see [`FUNDS_LOOKUPS`]).
    funds_lookups: tokio::sync::Semaphore,
}

fn to_i256(v: U256) -> I256 {
    I256::try_from(v).unwrap_or(I256::MAX)
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Payments")
            .field("address", &self.address())
            .field("recipient", &self.recipient_address())
            .field("price", &self.price())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Payments {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: secp256k1::SecretKey,
        client: Arc<ChainClient>,
        chain: watch::Receiver<Option<ChainState>>,
        store: Arc<TicketStore>,
        monitor: Arc<SenderMonitor>,
        config: PaymentConfig,
        price: Price,
        prices: PriceBook,
    ) -> Self {
        let signer = crate::pm::signature::address_of(&key.public_key(secp256k1::SECP256K1));
        let recipient = config.recipient.unwrap_or(signer);
        Payments {
            signer,
            recipient: Arc::new(Recipient::new(recipient, rand::random())),
            monitor,
            key,
            client,
            chain,
            store,
            config,
            price: std::sync::RwLock::new(price),
            prices: std::sync::RwLock::new(prices),
            sessions: Mutex::new(Sessions {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            funds_lookups: tokio::sync::Semaphore::new(FUNDS_LOOKUPS),
        }
    }

    pub fn monitor(&self) -> &Arc<SenderMonitor> {
        &self.monitor
    }

    /// Whether any price is set (base, per gateway or per model).
    pub fn has_prices(&self) -> bool {
        let prices = self.prices();
        self.price().num != 0
            || prices.per_gateway.values().any(|p| p.num != 0)
            || prices.per_model.values().any(|p| p.num != 0)
    }

    fn prices(&self) -> std::sync::RwLockReadGuard<'_, PriceBook> {
        self.prices.read().expect("prices lock")
    }

    /// New per-gateway and per-model prices (USD ones converted at a new
    /// ETH/USD reading). Sessions keep the price they were first paid at.
    pub fn set_prices(&self, prices: PriceBook) {
        *self.prices.write().expect("prices lock") = prices;
    }

    /// The node's own address, which signs results (OrchestratorInfo's
    /// `address`, as go-livepeer sets it).
    pub fn address(&self) -> Address {
        self.signer
    }

    /// Whom tickets pay: the orchestrator (`-ethOrchAddr`), else the node.
    pub fn recipient_address(&self) -> Address {
        self.recipient.address()
    }

    pub fn price(&self) -> Price {
        *self.price.read().expect("price lock")
    }

    /// A new base price (a USD price converted at a new ETH/USD reading).
    /// Sessions keep the price they were first paid at.
    pub fn set_price(&self, price: Price) {
        *self.price.write().expect("price lock") = price;
    }

    /// This node's price for `work` from `sender`: a model's own price for
    /// AI, else the gateway's override, else the base price.
    pub fn price_for(&self, sender: Option<Address>, work: Work<'_>) -> Price {
        if let Work::LiveRunner(price) = work {
            return price;
        }
        if let Work::Ai { capability, model } = work {
            if let Some(p) = self
                .prices()
                .per_model
                .get(&(capability, model.to_string()))
            {
                return *p;
            }
        }
        sender
            .and_then(|s| self.prices().per_gateway.get(&s).copied())
            .unwrap_or_else(|| self.price())
    }

    /// The price quoted to `sender` for `work`: [`Payments::price_for`],
    /// raised with -autoAdjustPrice by what redeeming this sender's winners
    /// costs against their face value (gas price now, the sender's float).
    /// Payments are held to `price_for`, the floor of every quote: the
    /// quote itself is bound into the params' recipientRand, so a gateway
    /// cannot pay at a price it was not quoted.
    pub async fn quote(&self, sender: Option<Address>, work: Work<'_>) -> Price {
        let base = self.price_for(sender, work);
        if !self.config.auto_adjust_price || matches!(work, Work::LiveRunner(_)) {
            return base;
        }
        let Some(sender) = sender.filter(|s| *s != Address::ZERO) else {
            return base;
        };
        let overhead = async {
            let funds = self.sender_funds(sender).await?;
            let gas_price = self.client.gas_price().await?;
            let tx_cost = U256::from(self.config.redeem_gas) * U256::from(gas_price);
            let face_value = recipient::face_value(
                self.config.ticket_ev,
                tx_cost,
                self.monitor.max_float(sender, &funds),
                self.config.max_face_value,
            );
            Ok::<_, PaymentError>(face_value.map(|fv| (fv, tx_cost)))
        };
        match overhead.await {
            // No face value for this sender: no params either, so nothing
            // can be paid at the quote.
            Ok(None) | Err(_) => base,
            Ok(Some((face_value, tx_cost))) => {
                recipient::auto_adjusted(base, face_value, tx_cost).unwrap_or(base)
            }
        }
    }

    /// The per-model prices, as OrchestratorInfo.capabilities_prices lists them.
    pub fn model_prices(&self) -> Vec<net::PriceInfo> {
        let mut out: Vec<net::PriceInfo> = self
            .prices()
            .per_model
            .iter()
            .map(|((capability, model), p)| net::PriceInfo {
                price_per_unit: i64::try_from(p.num).unwrap_or(i64::MAX),
                pixels_per_unit: i64::try_from(p.den).unwrap_or(i64::MAX),
                capability: *capability,
                constraint: model.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.capability, &a.constraint).cmp(&(b.capability, &b.constraint)));
        out
    }

    /// go-livepeer's `orchestrator.Sign(m)`: personal-sign over keccak256(m).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        sign(&self.key, keccak256(msg).as_slice()).to_vec()
    }

    /// Personal-sign directly over a 32-byte hash (`TranscodeData.sig`).
    pub fn sign_hash(&self, hash: B256) -> Vec<u8> {
        sign(&self.key, hash.as_slice()).to_vec()
    }

    /// Checks an `OrchestratorRequest`: `sig` is the gateway's signature of
    /// its EIP-55 address string. Returns the gateway's address.
    pub fn verify_gateway(&self, address: &[u8], sig: &[u8]) -> Result<Address, String> {
        if address.len() != 20 {
            return Err("orchestrator request has no valid address".into());
        }
        let addr = Address::from_slice(address);
        let msg = keccak256(addr.to_checksum(None).as_bytes());
        match recover_digest(personal_hash(msg.as_slice()), sig) {
            Ok(signer) if signer == addr => Ok(addr),
            _ => Err("orchestrator req sig check failed".into()),
        }
    }

    fn state(&self) -> Result<ChainState, PaymentError> {
        self.chain
            .borrow()
            .clone()
            .ok_or(PaymentError::NoChainState)
    }

    pub fn is_active(&self) -> bool {
        self.chain.borrow().as_ref().is_some_and(|s| s.active)
    }

    async fn sender_funds(&self, sender: Address) -> Result<SenderFunds, PaymentError> {
        if let Some(f) = self.monitor.cached_funds(sender) {
            return Ok(f);
        }
        let _lookup = match self.funds_lookups.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // Busy (a flood of fresh keys, say): a sender read lately
                // keeps that reading rather than queueing behind strangers.
                if let Some(f) = self.monitor.recent_funds(sender, STALE_FUNDS_WHEN_BUSY) {
                    return Ok(f);
                }
                tokio::time::timeout(FUNDS_LOOKUP_WAIT, self.funds_lookups.acquire())
                    .await
                    .map_err(|_| PaymentError::FundsLookupsBusy)?
                    .expect("the lookup semaphore is never closed")
            }
        };
        // Another request for the same sender may have read it meanwhile.
        if let Some(f) = self.monitor.cached_funds(sender) {
            return Ok(f);
        }
        // A stalled provider must not hold a lookup slot for good.
        let (deposit, reserve_alloc, withdraw_round) =
            tokio::time::timeout(FUNDS_LOOKUP_TIMEOUT, self.client.sender_info(sender))
                .await
                .map_err(|_| PaymentError::FundsLookupsBusy)??;
        let f = SenderFunds {
            deposit,
            reserve_alloc,
            withdraw_round: i64::try_from(withdraw_round).unwrap_or(i64::MAX),
        };
        self.monitor.set_funds(sender, f);
        Ok(f)
    }

    /// Ticket params for `sender` at `price`, or `None` when nothing needs
    /// paying (price 0) or the sender is unknown.
    pub async fn ticket_params(
        &self,
        sender: Address,
        price: Price,
    ) -> Result<Option<net::TicketParams>, PaymentError> {
        if sender == Address::ZERO || price.num == 0 {
            return Ok(None);
        }
        let state = self.state()?;
        if state.round.creation_round_block_hash == B256::ZERO {
            // Tickets without a creation round block hash are refused by
            // the broker: issue none until a round is initialized.
            return Err(PaymentError::NoChainState);
        }
        let funds = self.sender_funds(sender).await?;
        let gas_price = self.client.gas_price().await?;
        let tx_cost = U256::from(self.config.redeem_gas) * U256::from(gas_price);
        let ev = self.config.ticket_ev;
        let face_value = recipient::face_value(
            ev,
            tx_cost,
            self.monitor.max_float(sender, &funds),
            self.config.max_face_value,
        )
        .ok_or(PaymentError::InsufficientReserve(ev))?;
        let win_prob = recipient::win_prob(ev, face_value);
        let expiration = Expiration {
            creation_round: state.round.creation_round as i64,
            creation_round_block_hash: state.round.creation_round_block_hash,
        };
        let expiration_block = U256::from(state.round.block_number + PARAMS_EXPIRY_BLOCKS);
        let p = self.recipient.ticket_params(
            sender,
            face_value,
            win_prob,
            price,
            expiration_block,
            expiration,
        );
        Ok(Some(net::TicketParams {
            recipient: p.recipient.to_vec(),
            face_value: minimal_bytes(p.face_value),
            win_prob: minimal_bytes(p.win_prob),
            recipient_rand_hash: p.recipient_rand_hash.to_vec(),
            seed: minimal_bytes(p.seed),
            expiration_block: minimal_bytes(p.expiration_block),
            expiration_params: Some(net::TicketExpirationParams {
                creation_round: p.expiration.creation_round,
                creation_round_block_hash: p.expiration.creation_round_block_hash.to_vec(),
            }),
        }))
    }

    /// Validates and credits a payment for `manifest`; stores winners
    /// (durably) before returning. `video` work also needs the node active.
    /// Ticket signatures are checked off the async threads, in parallel.
    pub async fn process(
        self: &Arc<Self>,
        payment: &net::Payment,
        manifest: &str,
        work: Work<'_>,
    ) -> Result<PaymentReceipt, PaymentError> {
        let state = self.state()?;
        if work == Work::Video && !state.active {
            return Err(PaymentError::NotActive(state.round.current_round));
        }
        let Some(params) = &payment.ticket_params else {
            // No tickets: the session's existing credit has to cover the work.
            return Ok(PaymentReceipt::default());
        };
        if payment.sender.is_empty() {
            return Err(PaymentError::MissingSender);
        }
        if payment.sender.len() != 20 {
            return Err(PaymentError::BadSender);
        }
        let sender = Address::from_slice(&payment.sender);
        let expected = payment
            .expected_price
            .as_ref()
            .ok_or(PaymentError::BadPrice)?;
        if expected.pixels_per_unit <= 0 || expected.price_per_unit < 0 {
            return Err(PaymentError::BadPrice);
        }
        let expected = Price::new(
            expected.price_per_unit as u128,
            expected.pixels_per_unit as u128,
        )
        .ok_or(PaymentError::BadPrice)?;
        let ours = self.price_for(Some(sender), work);
        let session_price = self.session_price(sender, manifest, expected, ours)?;
        let exp = payment.expiration_params.clone().unwrap_or_default();
        let word =
            |b: &[u8], what: &'static str| from_be_bytes(b).ok_or(PaymentError::BadParams(what));
        if params.recipient.len() != 20 || params.recipient_rand_hash.len() != 32 {
            return Err(PaymentError::BadParams(
                "recipient or recipientRandHash has the wrong length",
            ));
        }
        if !exp.creation_round_block_hash.is_empty() && exp.creation_round_block_hash.len() != 32 {
            return Err(PaymentError::BadParams(
                "creation round block hash has the wrong length",
            ));
        }
        let template = Ticket {
            recipient: Address::from_slice(&params.recipient),
            sender,
            face_value: word(&params.face_value, "face value")?,
            win_prob: word(&params.win_prob, "win prob")?,
            sender_nonce: 0,
            recipient_rand_hash: B256::from_slice(&params.recipient_rand_hash),
            creation_round: exp.creation_round,
            creation_round_block_hash: if exp.creation_round_block_hash.is_empty() {
                B256::ZERO
            } else {
                B256::from_slice(&exp.creation_round_block_hash)
            },
        };
        let seed = word(&params.seed, "seed")?;
        let expiration_block = word(&params.expiration_block, "expiration block")?;
        let total = payment.ticket_sender_params.len();
        let received: Vec<ReceivedTicket> = payment
            .ticket_sender_params
            .iter()
            .map(|tsp| ReceivedTicket {
                ticket: Ticket {
                    sender_nonce: tsp.sender_nonce,
                    ..template.clone()
                },
                sig: tsp.sig.clone(),
                seed,
                expiration_block,
                price: expected,
            })
            .collect();
        // The sender's funds may cost a chain read, so what needs none comes
        // first: params this node never issued are refused on an HMAC, a
        // payment none of whose tickets the sender signed on signature
        // checks. An honest payment pays one extra HMAC and one recovery.
        let Some(first) = received.first() else {
            // No tickets: nothing to credit (the session's credit has to
            // cover the work).
            return Ok(PaymentReceipt::default());
        };
        self.recipient.issued_here(first)?;
        let (received, unsigned) = tokio::task::spawn_blocking(move || {
            let signed = received.iter().any(|r| check_signature(r).is_ok());
            let error = match signed {
                true => None,
                false => received.first().and_then(|r| check_signature(r).err()),
            };
            (received, error)
        })
        .await
        .expect("signature check does not panic");
        if let Some(e) = unsigned {
            return Err(PaymentError::SomeRejected {
                rejected: total,
                total,
                first: e.to_string(),
            });
        }
        let funds = self.sender_funds(sender).await?;
        let view = ChainView {
            block: U256::from(state.round.block_number),
            round: state.round.last_initialized_round as i64,
        };
        // Validation records nonces and counts winners as owed; storing them
        // and crediting must follow even if the gateway hangs up meanwhile,
        // so the three run as one task of their own.
        let this = self.clone();
        let manifest = manifest.to_string();
        tokio::spawn(async move {
            this.settle_payment(
                sender,
                &manifest,
                session_price,
                received,
                view,
                funds,
                expiration_block,
                total,
            )
            .await
        })
        .await
        .expect("payment settlement does not panic")
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_payment(
        &self,
        sender: Address,
        manifest: &str,
        session_price: Price,
        received: Vec<ReceivedTicket>,
        view: ChainView,
        funds: SenderFunds,
        expiration_block: U256,
        total: usize,
    ) -> Result<PaymentReceipt, PaymentError> {
        let (recipient, monitor) = (self.recipient.clone(), self.monitor.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let outcome = tokio::task::spawn_blocking(move || {
            validate_payment(&recipient, &monitor, &received, &view, &funds, threads)
        })
        .await
        .expect("ticket validation does not panic");
        let params_expiry = u64::try_from(expiration_block).unwrap_or(u64::MAX);
        let winners: Vec<WinningTicket> = outcome
            .winners
            .iter()
            .map(|(r, rand)| WinningTicket {
                ticket: r.ticket.clone(),
                sig: r.sig.clone(),
                recipient_rand: *rand,
                params_expiration_block: params_expiry,
            })
            .collect();
        // Durable before the work is answered: one synchronous commit for
        // the payment's winners, off the async threads.
        match self.store_winners(winners).await {
            Ok(new) => {
                // A winner stored before (a replay) is owed once, not twice.
                for ((r, _), _) in outcome.winners.iter().zip(new).filter(|(_, n)| !n) {
                    self.monitor.resolved(sender, r.ticket.face_value);
                }
            }
            Err(e) => {
                for (r, _) in &outcome.winners {
                    self.monitor.resolved(sender, r.ticket.face_value);
                }
                return Err(e);
            }
        }
        let receipt = PaymentReceipt {
            accepted: outcome.accepted,
            winning: outcome.winners.len(),
            credited: outcome.credited,
        };
        if !receipt.credited.is_zero() {
            self.credit(sender, manifest, session_price, receipt.credited)?;
        }
        if let Some(e) = outcome.fatal {
            return Err(e.into());
        }
        if let Some(first) = outcome.rejected.first() {
            return Err(PaymentError::SomeRejected {
                rejected: outcome.rejected.len(),
                total,
                first: first.clone(),
            });
        }
        Ok(receipt)
    }

    /// Stores winners; says for each whether it was new.
    async fn store_winners(&self, winners: Vec<WinningTicket>) -> Result<Vec<bool>, PaymentError> {
        if winners.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        Ok(
            tokio::task::spawn_blocking(move || store.insert_new(&winners))
                .await
                .expect("ticket store task does not panic")?,
        )
    }

    /// The session's price: the one the gateway first paid at. A gateway
    /// may not pay below this node's price. Nothing is stored until a
    /// ticket is accepted.
    fn session_price(
        &self,
        sender: Address,
        manifest: &str,
        expected: Price,
        ours: Price,
    ) -> Result<Price, PaymentError> {
        let mut sessions = self.sessions.lock().expect("sessions");
        if let Some(s) = sessions.map.get_mut(&(sender, manifest.to_string())) {
            s.touched = Instant::now();
            return Ok(s.price);
        }
        // expected < ours  ⇔  e.num × ours.den < ours.num × e.den
        if U256::from(expected.num) * U256::from(ours.den)
            < U256::from(ours.num) * U256::from(expected.den)
        {
            return Err(PaymentError::PriceTooLow {
                expected: format!("{}/{}", expected.num, expected.den),
                ours: format!("{}/{}", ours.num, ours.den),
            });
        }
        Ok(expected)
    }

    fn credit(
        &self,
        sender: Address,
        manifest: &str,
        price: Price,
        amount: U256,
    ) -> Result<(), PaymentError> {
        let mut sessions = self.sessions.lock().expect("sessions");
        sessions.sweep();
        let key = (sender, manifest.to_string());
        if !sessions.map.contains_key(&key) && sessions.map.len() >= MAX_SESSIONS {
            return Err(PaymentError::TooManySessions);
        }
        let s = sessions.map.entry(key).or_insert(Session {
            balance: I256::ZERO,
            reserved: U256::ZERO,
            price,
            touched: Instant::now(),
        });
        s.balance = s.balance.saturating_add(to_i256(amount));
        s.touched = Instant::now();
        Ok(())
    }

    /// The session's credit, in wei (negative when work outran payment).
    pub fn balance(&self, sender: Address, manifest: &str) -> I256 {
        self.sessions
            .lock()
            .expect("sessions")
            .map
            .get(&(sender, manifest.to_string()))
            .map_or(I256::ZERO, |s| s.balance)
    }

    /// Admits work estimated at `units` for (sender, manifest): free work
    /// (this node's price for it is 0) always; priced work when the
    /// session's credit not already reserved covers the estimate and at
    /// least one ticket's EV (go-livepeer's SufficientBalance). The
    /// estimate is reserved until the returned reservation is settled or
    /// dropped, so concurrent requests cannot all spend the same credit.
    pub fn reserve(
        self: &Arc<Self>,
        sender: Option<Address>,
        manifest: &str,
        work: Work<'_>,
        units: u64,
    ) -> Result<Reservation, InsufficientBalance> {
        let mut sessions = self.sessions.lock().expect("sessions");
        let key = (sender.unwrap_or(Address::ZERO), manifest.to_string());
        let free = Reservation {
            payments: None,
            key: key.clone(),
            cost: U256::ZERO,
            price: None,
        };
        let Some(s) = sender.and_then(|_| sessions.map.get_mut(&key)) else {
            // No credit at all: only work this node does not charge for.
            return if self.price_for(sender, work).num == 0 {
                Ok(free)
            } else {
                Err(InsufficientBalance)
            };
        };
        // The work costs what this node asks for it now, or the session's
        // price if that is higher: a balance first paid at a lower price
        // (credit through `/payment`, at the base price, into the key a
        // model's requests use) must not buy dearer work at that price.
        let ours = self.price_for(sender, work);
        let higher = U256::from(ours.num) * U256::from(s.price.den)
            > U256::from(s.price.num) * U256::from(ours.den);
        let price = if higher { ours } else { s.price };
        if price.num == 0 {
            return Ok(free);
        }
        // Each piece of work in flight holds at least one ticket's EV, so
        // work whose size is unknown before it runs (estimate 0) cannot run
        // many times over on one EV of credit.
        let cost = price.cost(units).max(self.config.ticket_ev);
        let available = s.balance.saturating_sub(to_i256(s.reserved));
        if available < to_i256(cost) {
            return Err(InsufficientBalance);
        }
        s.reserved = s.reserved.saturating_add(cost);
        s.touched = Instant::now();
        Ok(Reservation {
            payments: Some(self.clone()),
            key,
            cost,
            price: Some(price),
        })
    }

    /// Frees `reserved` and debits `spent_units` at `price` (the session's
    /// own when None).
    fn release(
        &self,
        key: &(Address, String),
        reserved: U256,
        spent_units: Option<u64>,
        price: Option<Price>,
    ) -> U256 {
        let mut sessions = self.sessions.lock().expect("sessions");
        let Some(s) = sessions.map.get_mut(key) else {
            return U256::ZERO;
        };
        s.reserved = s.reserved.saturating_sub(reserved);
        let Some(units) = spent_units else {
            return U256::ZERO;
        };
        let cost = price.unwrap_or(s.price).cost(units);
        s.balance = s.balance.saturating_sub(to_i256(cost));
        s.touched = Instant::now();
        cost
    }

    /// Debits `units` (pixels, ms, tokens) at the session's price.
    pub fn debit(&self, sender: Address, manifest: &str, units: u64) -> U256 {
        self.release(
            &(sender, manifest.to_string()),
            U256::ZERO,
            Some(units),
            None,
        )
    }

    /// Debits `fee` wei if the session's credit not reserved covers it
    /// (Live Runner sessions, billed at their runner's price whatever the
    /// balance was first paid at). Returns what is left.
    pub fn try_debit_wei(
        &self,
        sender: Address,
        manifest: &str,
        fee: U256,
    ) -> Result<I256, InsufficientBalance> {
        let mut sessions = self.sessions.lock().expect("sessions");
        let s = sessions
            .map
            .get_mut(&(sender, manifest.to_string()))
            .ok_or(InsufficientBalance)?;
        if s.balance.saturating_sub(to_i256(s.reserved)) < to_i256(fee) {
            return Err(InsufficientBalance);
        }
        s.balance = s.balance.saturating_sub(to_i256(fee));
        s.touched = Instant::now();
        Ok(s.balance)
    }

    /// The price recorded for (sender, manifest) at its first payment, if
    /// it has credit on this node.
    pub fn recorded_price(&self, sender: Address, manifest: &str) -> Option<Price> {
        self.sessions
            .lock()
            .expect("sessions")
            .map
            .get(&(sender, manifest.to_string()))
            .map(|s| s.price)
    }

    /// Debits `units` at the session's recorded price if its credit not
    /// reserved covers them (a live stream's metering); returns the fee.
    pub fn try_debit_units(
        &self,
        sender: Address,
        manifest: &str,
        units: u64,
    ) -> Result<U256, InsufficientBalance> {
        let mut sessions = self.sessions.lock().expect("sessions");
        let s = sessions
            .map
            .get_mut(&(sender, manifest.to_string()))
            .ok_or(InsufficientBalance)?;
        let fee = s.price.cost(units);
        if s.balance.saturating_sub(to_i256(s.reserved)) < to_i256(fee) {
            return Err(InsufficientBalance);
        }
        s.balance = s.balance.saturating_sub(to_i256(fee));
        s.touched = Instant::now();
        Ok(fee)
    }

    /// Puts back a session's credit kept over a restart.
    pub fn restore_credit(
        &self,
        sender: Address,
        manifest: &str,
        price: Price,
        amount: U256,
    ) -> Result<(), PaymentError> {
        self.credit(sender, manifest, price, amount)
    }
}

/// Credit set aside for work in flight; released when dropped, turned
/// into the actual debit by [`settle`](Reservation::settle).
#[must_use = "a reservation is released when dropped"]
pub struct Reservation {
    payments: Option<Arc<Payments>>,
    key: (Address, String),
    cost: U256,
    /// The price the work is debited at when it settles.
    price: Option<Price>,
}

impl Reservation {
    /// The estimate reserved, in wei.
    pub fn reserved(&self) -> U256 {
        self.cost
    }

    /// Debits what the work really used and frees the reservation.
    /// Returns the fee in wei.
    pub fn settle(mut self, units: u64) -> U256 {
        match self.payments.take() {
            Some(p) => p.release(&self.key, self.cost, Some(units), self.price),
            None => U256::ZERO,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = self.payments.take() {
            p.release(&self.key, self.cost, None, None);
        }
    }
}

#[cfg(test)]
/// Payments with no chain behind them, for tests of what does not read
/// it.
pub(crate) fn offline_payments(
    base: Price,
    prices: PriceBook,
) -> (Arc<Payments>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TicketStore::open(&dir.path().join("t.sqlite")).unwrap());
    let (_, chain) = watch::channel(None);
    let payments = Payments::new(
        secp256k1::SecretKey::from_slice(&[7; 32]).unwrap(),
        Arc::new(ChainClient::unconnected()),
        chain,
        store,
        Arc::new(SenderMonitor::new()),
        PaymentConfig {
            ticket_ev: U256::from(1u64),
            ..PaymentConfig::default()
        },
        base,
        prices,
    );
    (Arc::new(payments), dir)
}

#[cfg(test)]
mod sessions_tests {
    use super::*;

    /// Credit paid into a model's balance at the base price (through
    /// `/payment`, which names any manifest) buys that model's work at the
    /// model's own price, not the base one.
    #[test]
    fn work_is_charged_at_least_its_own_price_whatever_the_balance_was_paid_at() {
        let mut prices = PriceBook::default();
        prices
            .per_model
            .insert((30, "m".into()), Price::new(2, 1).unwrap());
        let (payments, _dir) = super::offline_payments(Price::new(1, 1).unwrap(), prices);
        let sender = Address::repeat_byte(9);
        payments
            .restore_credit(
                sender,
                "30_m",
                Price::new(1, 1).unwrap(),
                U256::from(1000u64),
            )
            .unwrap();
        let work = Work::Ai {
            capability: 30,
            model: "m",
        };
        let r = payments.reserve(Some(sender), "30_m", work, 100).unwrap();
        assert_eq!(
            r.reserved(),
            U256::from(200u64),
            "reserved at the model's price"
        );
        assert_eq!(r.settle(100), U256::from(200u64));
        assert_eq!(
            payments.balance(sender, "30_m"),
            I256::try_from(800).unwrap()
        );
        // 800 left buys 400 units at 2, not 800 at 1.
        assert!(payments.reserve(Some(sender), "30_m", work, 401).is_err());
        assert!(payments.reserve(Some(sender), "30_m", work, 400).is_ok());
    }

    fn session(touched: Instant, reserved: u64) -> Session {
        Session {
            balance: I256::ZERO,
            reserved: U256::from(reserved),
            price: Price { num: 1, den: 1 },
            touched,
        }
    }

    /// A full map is swept at once (not only every minute): idle sessions
    /// go, those with work in flight stay.
    #[test]
    fn a_full_session_map_drops_idle_sessions() {
        let idle = Instant::now() - SESSION_IDLE - Duration::from_secs(1);
        let mut sessions = Sessions {
            map: HashMap::new(),
            swept: Instant::now(),
        };
        for i in 0..MAX_SESSIONS {
            let reserved = u64::from(i == 7);
            sessions
                .map
                .insert((Address::ZERO, i.to_string()), session(idle, reserved));
        }
        sessions.sweep();
        assert_eq!(sessions.map.len(), 1, "only the one with work in flight");
        assert!(sessions.map.contains_key(&(Address::ZERO, "7".to_string())));

        // Below the cap and within the minute, nothing is scanned.
        sessions
            .map
            .insert((Address::ZERO, "old".into()), session(idle, 0));
        sessions.sweep();
        assert_eq!(sessions.map.len(), 2);
    }
}
