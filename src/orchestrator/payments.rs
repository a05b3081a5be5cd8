//! Payments with a chain: ticket params for gateways, ticket validation
//! against the sender's on-chain funds, per-session balances, and winning
//! tickets written to the crash-safe store before any work is answered.
//!
//! Balances are keyed by (sender, manifest id) as go-livepeer keys them:
//! each accepted ticket credits its expected value, each piece of work
//! debits price × units at the price pinned when the session first paid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{keccak256, Address, B256, I256, U256};
use tokio::sync::watch;

use crate::chain::{ChainClient, ChainState};
use crate::pm::recipient::{
    self, ChainView, Expiration, Price, ReceivedTicket, Recipient, SenderFunds,
};
use crate::pm::signature::{personal_hash, recover_digest, sign};
use crate::pm::store::{TicketStore, WinningTicket};
use crate::pm::ticket::{from_be_bytes, minimal_bytes};
use crate::pm::Ticket;
use crate::proto::lp_rpc as net;

/// Blocks a set of ticket params stays valid (go-livepeer's paramsExpirationBlock).
const PARAMS_EXPIRY_BLOCKS: u64 = 40;
/// Sender funds are re-read from chain at most this often per sender.
const FUNDS_TTL: Duration = Duration::from_secs(2);
/// Sessions idle this long are forgotten (their credit with them).
const SESSION_IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// Expected value of one ticket, in wei (go-livepeer's -ticketEV).
    pub ticket_ev: U256,
    /// Largest face value offered, in wei (go-livepeer's -maxFaceValue).
    pub max_face_value: Option<U256>,
    /// Gas one redemption costs (1.2M on Arbitrum, go-livepeer's redeemGas).
    pub redeem_gas: u64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            ticket_ev: U256::from(8_000_000_000u64),
            max_face_value: None,
            redeem_gas: 1_200_000,
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
}

impl PaymentError {
    /// Server-side failures (5xx) rather than the gateway's (4xx).
    pub fn is_internal(&self) -> bool {
        matches!(self, PaymentError::Store(_) | PaymentError::NoChainState)
            || matches!(self, PaymentError::Chain(e) if e.is_transient())
    }
}

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
}

#[derive(Debug)]
struct Session {
    balance: I256,
    price: Price,
    touched: Instant,
}

/// What one processed payment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaymentReceipt {
    pub accepted: usize,
    pub winning: usize,
    pub credited: U256,
}

pub struct Payments {
    recipient: Recipient,
    key: secp256k1::SecretKey,
    client: Arc<ChainClient>,
    chain: watch::Receiver<Option<ChainState>>,
    store: Arc<TicketStore>,
    config: PaymentConfig,
    /// This node's price for video (wei per pixel).
    price: Price,
    prices: PriceBook,
    sessions: Mutex<HashMap<(Address, String), Session>>,
    funds: Mutex<HashMap<Address, (Instant, SenderFunds)>>,
}

fn to_i256(v: U256) -> I256 {
    I256::try_from(v).unwrap_or(I256::MAX)
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Payments")
            .field("address", &self.address())
            .field("price", &self.price)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Payments {
    pub fn new(
        key: secp256k1::SecretKey,
        client: Arc<ChainClient>,
        chain: watch::Receiver<Option<ChainState>>,
        store: Arc<TicketStore>,
        config: PaymentConfig,
        price: Price,
        prices: PriceBook,
    ) -> Self {
        let address = crate::pm::signature::address_of(&key.public_key(secp256k1::SECP256K1));
        Payments {
            recipient: Recipient::new(address, rand::random()),
            key,
            client,
            chain,
            store,
            config,
            price,
            prices,
            sessions: Mutex::new(HashMap::new()),
            funds: Mutex::new(HashMap::new()),
        }
    }

    pub fn address(&self) -> Address {
        self.recipient.address()
    }

    pub fn price(&self) -> Price {
        self.price
    }

    /// This node's price for `work` from `sender`: a model's own price for
    /// AI, else the gateway's override, else the base price.
    pub fn price_for(&self, sender: Option<Address>, work: Work<'_>) -> Price {
        if let Work::Ai { capability, model } = work {
            if let Some(p) = self.prices.per_model.get(&(capability, model.to_string())) {
                return *p;
            }
        }
        sender
            .and_then(|s| self.prices.per_gateway.get(&s).copied())
            .unwrap_or(self.price)
    }

    /// The per-model prices, as OrchestratorInfo.capabilities_prices lists them.
    pub fn model_prices(&self) -> Vec<net::PriceInfo> {
        let mut out: Vec<net::PriceInfo> = self
            .prices
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
        if let Some((at, f)) = self.funds.lock().expect("funds cache").get(&sender) {
            if at.elapsed() < FUNDS_TTL {
                return Ok(*f);
            }
        }
        let (deposit, reserve_alloc, withdraw_round) = self.client.sender_info(sender).await?;
        let f = SenderFunds {
            deposit,
            reserve_alloc,
            withdraw_round: i64::try_from(withdraw_round).unwrap_or(i64::MAX),
        };
        self.funds
            .lock()
            .expect("funds cache")
            .insert(sender, (Instant::now(), f));
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
        if state.round.last_initialized_block_hash == B256::ZERO {
            // Tickets without a creation round block hash are refused by
            // the broker: issue none until a round is initialized.
            return Err(PaymentError::NoChainState);
        }
        let funds = self.sender_funds(sender).await?;
        let gas_price = self.client.gas_price().await?;
        let tx_cost = U256::from(self.config.redeem_gas) * U256::from(gas_price);
        let ev = self.config.ticket_ev;
        let face_value =
            recipient::face_value(ev, tx_cost, funds.max_float(), self.config.max_face_value)
                .ok_or(PaymentError::InsufficientReserve(ev))?;
        let win_prob = recipient::win_prob(ev, face_value);
        let expiration = Expiration {
            creation_round: state.round.last_initialized_round as i64,
            creation_round_block_hash: state.round.last_initialized_block_hash,
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
    pub async fn process(
        &self,
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
        let session_price = self.pin_price(sender, manifest, expected, ours)?;
        let funds = self.sender_funds(sender).await?;
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
        let view = ChainView {
            block: U256::from(state.round.block_number),
            round: state.round.last_initialized_round as i64,
        };
        let mut receipt = PaymentReceipt::default();
        let mut winners = Vec::new();
        let mut rejected: Vec<String> = Vec::new();
        for tsp in &payment.ticket_sender_params {
            let r = ReceivedTicket {
                ticket: Ticket {
                    sender_nonce: tsp.sender_nonce,
                    ..template.clone()
                },
                sig: tsp.sig.clone(),
                seed,
                expiration_block,
                price: expected,
            };
            match self.recipient.validate(&r, &view, &funds) {
                Ok(v) => {
                    if v.winning {
                        winners.push(WinningTicket {
                            ticket: r.ticket.clone(),
                            sig: r.sig.clone(),
                            recipient_rand: v.recipient_rand,
                        });
                        receipt.winning += 1;
                    }
                    receipt.accepted += 1;
                    receipt.credited += v.expected_value;
                }
                Err(e) if e.is_fatal() => {
                    self.store_winners(winners).await?;
                    self.credit(sender, manifest, session_price, receipt.credited);
                    return Err(e.into());
                }
                Err(e) => rejected.push(e.to_string()),
            }
        }
        // Durable before the work is answered: one synchronous commit for
        // the payment's winners, off the async threads.
        self.store_winners(winners).await?;
        self.credit(sender, manifest, session_price, receipt.credited);
        if let Some(first) = rejected.first() {
            return Err(PaymentError::SomeRejected {
                rejected: rejected.len(),
                total: payment.ticket_sender_params.len(),
                first: first.clone(),
            });
        }
        Ok(receipt)
    }

    async fn store_winners(&self, winners: Vec<WinningTicket>) -> Result<(), PaymentError> {
        if winners.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.insert_all(&winners))
            .await
            .expect("ticket store task does not panic")?;
        Ok(())
    }

    /// The session's price: the one the gateway first paid at. A gateway
    /// may not pay below this node's price.
    fn pin_price(
        &self,
        sender: Address,
        manifest: &str,
        expected: Price,
        ours: Price,
    ) -> Result<Price, PaymentError> {
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions.len() > 1024 {
            sessions.retain(|_, s| s.touched.elapsed() < SESSION_IDLE);
        }
        if let Some(s) = sessions.get_mut(&(sender, manifest.to_string())) {
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
        sessions.insert(
            (sender, manifest.to_string()),
            Session {
                balance: I256::ZERO,
                price: expected,
                touched: Instant::now(),
            },
        );
        Ok(expected)
    }

    fn credit(&self, sender: Address, manifest: &str, price: Price, amount: U256) {
        let mut sessions = self.sessions.lock().expect("sessions");
        let s = sessions
            .entry((sender, manifest.to_string()))
            .or_insert(Session {
                balance: I256::ZERO,
                price,
                touched: Instant::now(),
            });
        s.balance = s.balance.saturating_add(to_i256(amount));
        s.touched = Instant::now();
    }

    /// The session's credit, in wei (negative when work outran payment).
    pub fn balance(&self, sender: Address, manifest: &str) -> I256 {
        self.sessions
            .lock()
            .expect("sessions")
            .get(&(sender, manifest.to_string()))
            .map_or(I256::ZERO, |s| s.balance)
    }

    /// go-livepeer's `SufficientBalance`: free sessions always pass; paid
    /// ones need at least one ticket's EV of credit.
    pub fn sufficient_balance(&self, sender: Address, manifest: &str) -> bool {
        let sessions = self.sessions.lock().expect("sessions");
        match sessions.get(&(sender, manifest.to_string())) {
            Some(s) if s.price.num == 0 => true,
            Some(s) => s.balance >= to_i256(self.config.ticket_ev),
            None => self.price.num == 0,
        }
    }

    /// Debits `units` (pixels, ms, tokens) at the session's price.
    pub fn debit(&self, sender: Address, manifest: &str, units: u64) -> U256 {
        let mut sessions = self.sessions.lock().expect("sessions");
        let Some(s) = sessions.get_mut(&(sender, manifest.to_string())) else {
            return U256::ZERO;
        };
        let cost = s.price.cost(units);
        s.balance = s.balance.saturating_sub(to_i256(cost));
        s.touched = Instant::now();
        cost
    }
}
