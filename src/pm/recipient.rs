//! The recipient's side of probabilistic payments, as go-livepeer's pm package
//! does it: randomness committed per ticket-params issuance and derived from a
//! secret with HMAC (so nothing is stored per ticket until one wins), face
//! value and win probability from the target EV, and validation of received
//! tickets with replay protection.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use alloy_primitives::{keccak256, Address, B256, U256};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::signature::{personal_hash, recover_digest};
use super::ticket::{minimal_bytes, Ticket, MAX_WIN_PROB};

/// Nonces remembered per recipientRand before further tickets are refused (go-livepeer's limit).
pub const MAX_NONCES_PER_RAND: usize = 600;
/// Rounds a ticket stays redeemable after its creation round (TicketBroker's validity period).
pub const TICKET_VALIDITY_ROUNDS: i64 = 2;

/// A price in wei per pixel (or unit) as a fraction, kept in lowest terms as
/// go-livepeer's `big.Rat` keeps it, because both enter the ticket's HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub num: u128,
    pub den: u128,
}

impl Price {
    pub fn new(price_per_unit: u128, pixels_per_unit: u128) -> Option<Price> {
        if pixels_per_unit == 0 {
            return None;
        }
        fn gcd(a: u128, b: u128) -> u128 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let g = gcd(price_per_unit, pixels_per_unit).max(1);
        Some(Price {
            num: price_per_unit / g,
            den: pixels_per_unit / g,
        })
    }

    /// Wei owed for `units` at this price, rounded up.
    pub fn cost(&self, units: u64) -> U256 {
        let total = U256::from(self.num) * U256::from(units);
        total.div_ceil(U256::from(self.den))
    }
}

/// The round a ticket is created in, with its block hash (the aux data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiration {
    pub creation_round: i64,
    pub creation_round_block_hash: B256,
}

/// What the recipient issues to a sender (go-livepeer's `TicketParams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketParams {
    pub recipient: Address,
    pub face_value: U256,
    pub win_prob: U256,
    pub recipient_rand_hash: B256,
    pub seed: U256,
    pub expiration_block: U256,
    pub expiration: Expiration,
    pub price: Price,
}

/// A received ticket and the params it claims to have been made from.
#[derive(Debug, Clone)]
pub struct ReceivedTicket {
    pub ticket: Ticket,
    pub sig: Vec<u8>,
    pub seed: U256,
    pub expiration_block: U256,
    pub price: Price,
}

/// The chain state validation needs (from the chain client; fixed values off chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainView {
    /// Last seen L1 block (ticket params expire by it).
    pub block: U256,
    /// Last initialized round.
    pub round: i64,
}

/// What the sender can pay this recipient, from TicketBroker.
#[derive(Debug, Clone, Copy, Default)]
pub struct SenderFunds {
    pub deposit: U256,
    /// This recipient's share of the sender's reserve (go-livepeer's `reserveAlloc`).
    pub reserve_alloc: U256,
    /// Round in which the sender's funds unlock; 0 when not unlocking.
    pub withdraw_round: i64,
}

impl SenderFunds {
    /// The most a single ticket may be worth with nothing pending (the
    /// sender monitor subtracts what is: [`super::sender_monitor`]).
    pub fn max_float(&self) -> U256 {
        super::sender_monitor::max_float(self, U256::ZERO)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("invalid ticket recipient {0}")]
    InvalidRecipient(Address),
    #[error("invalid ticket sender: zero address")]
    ZeroSender,
    #[error("invalid recipientRand for ticket recipientRandHash")]
    InvalidRecipientRand,
    #[error("invalid ticket signature: {0}")]
    InvalidSignature(String),
    #[error("invalid ticket senderNonce {0}: already seen")]
    NonceSeen(u32),
    #[error("invalid ticket senderNonce: too many values for this recipientRand")]
    TooManyNonces,
    #[error("TicketParams expired at block {0}")]
    ParamsExpired(U256),
    #[error("ticket creation round {created} expired (current round {current})")]
    RoundExpired { created: i64, current: i64 },
    #[error("ticket creation round {0} is in the future")]
    RoundInFuture(i64),
    #[error(
        "ticket face value {face_value} exceeds what the sender can pay this node ({max_float})"
    )]
    FaceValueTooHigh { face_value: U256, max_float: U256 },
    #[error("sender {0} has no deposit or reserve")]
    SenderUnfunded(Address),
    #[error("sender {0} is unlocking its funds")]
    SenderUnlocking(Address),
}

impl TicketError {
    /// go-livepeer treats every validation error but a bad signature as fatal
    /// for the whole payment.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TicketError::InvalidSignature(_))
    }
}

/// A ticket that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub recipient_rand: U256,
    pub winning: bool,
    pub expected_value: U256,
    /// Its params expired: it earns no credit, but a winner is still worth
    /// redeeming (the broker does not check the params' expiry).
    pub params_expired: bool,
}

/// The recipient: its address, HMAC secret and per-rand nonce memory.
pub struct Recipient {
    address: Address,
    secret: [u8; 32],
    nonces: Mutex<Nonces>,
}

/// Nonces seen per recipientRand, with each rand's params expiration block.
#[derive(Default)]
struct Nonces {
    by_rand: HashMap<U256, (U256, HashSet<u32>)>,
    /// Block at which expired entries were last purged: once per new block,
    /// not once per ticket.
    purged_at: U256,
}

impl Recipient {
    pub fn new(address: Address, secret: [u8; 32]) -> Self {
        Recipient {
            address,
            secret,
            nonces: Mutex::new(Nonces::default()),
        }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// HMAC-SHA256(secret, seed || sender || faceValue || winProb ||
    /// expirationBlock || price.num || price.den || auxData), every integer
    /// as minimal big-endian bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn recipient_rand(
        &self,
        seed: U256,
        sender: Address,
        face_value: U256,
        win_prob: U256,
        expiration_block: U256,
        price: Price,
        aux_data: &[u8],
    ) -> U256 {
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(&minimal_bytes(seed));
        mac.update(sender.as_slice());
        mac.update(&minimal_bytes(face_value));
        mac.update(&minimal_bytes(win_prob));
        mac.update(&minimal_bytes(expiration_block));
        mac.update(&minimal_bytes(U256::from(price.num)));
        mac.update(&minimal_bytes(U256::from(price.den)));
        mac.update(aux_data);
        U256::from_be_slice(&mac.finalize().into_bytes())
    }

    pub fn rand_hash(rand: U256) -> B256 {
        keccak256(rand.to_be_bytes::<32>())
    }

    /// `keccak256(sig || leftPad32(rand)) < winProb`.
    pub fn is_winning(sig: &[u8], rand: U256, win_prob: U256) -> bool {
        let mut hasher = alloy_primitives::Keccak256::new();
        hasher.update(sig);
        hasher.update(rand.to_be_bytes::<32>());
        U256::from_be_bytes(hasher.finalize().0) < win_prob
    }

    /// Issues params for `sender` at `price` with a fresh random seed.
    pub fn ticket_params(
        &self,
        sender: Address,
        face_value: U256,
        win_prob: U256,
        price: Price,
        expiration_block: U256,
        expiration: Expiration,
    ) -> TicketParams {
        let seed = U256::from_be_bytes(rand::random::<[u8; 32]>());
        let aux = Ticket {
            creation_round: expiration.creation_round,
            creation_round_block_hash: expiration.creation_round_block_hash,
            ..Ticket::default()
        }
        .aux_data();
        let rand = self.recipient_rand(
            seed,
            sender,
            face_value,
            win_prob,
            expiration_block,
            price,
            &aux,
        );
        TicketParams {
            recipient: self.address,
            face_value,
            win_prob,
            recipient_rand_hash: Self::rand_hash(rand),
            seed,
            expiration_block,
            expiration,
            price,
        }
    }

    /// Checks a ticket in go-livepeer's order, then the creation round and the
    /// face value against the sender's funds; records its nonce.
    pub fn validate(
        &self,
        r: &ReceivedTicket,
        chain: &ChainView,
        funds: &SenderFunds,
    ) -> Result<Validated, TicketError> {
        let v = self.check_params(r, chain, funds)?;
        check_signature(r)?;
        let v = self.accept(r, v, chain, funds.max_float())?;
        if v.params_expired {
            return Err(TicketError::ParamsExpired(r.expiration_block));
        }
        Ok(v)
    }

    /// Whether `r`'s params are ones this recipient issued (recipient, sender
    /// and the recipientRand commitment): no chain state needed, so a
    /// payment on made-up params is refused before its sender's funds are
    /// read. Every ticket of a payment shares its params: one check covers
    /// them all.
    pub fn issued_here(&self, r: &ReceivedTicket) -> Result<U256, TicketError> {
        let t = &r.ticket;
        if t.recipient != self.address {
            return Err(TicketError::InvalidRecipient(t.recipient));
        }
        if t.sender == Address::ZERO {
            return Err(TicketError::ZeroSender);
        }
        let rand = self.recipient_rand(
            r.seed,
            t.sender,
            t.face_value,
            t.win_prob,
            r.expiration_block,
            r.price,
            &t.aux_data(),
        );
        if Self::rand_hash(rand) != t.recipient_rand_hash {
            return Err(TicketError::InvalidRecipientRand);
        }
        Ok(rand)
    }

    /// The checks before the signature: sender funds, recipient, and the
    /// recipientRand commitment (whose rand it returns). Fatal when they fail.
    pub fn check_params(
        &self,
        r: &ReceivedTicket,
        chain: &ChainView,
        funds: &SenderFunds,
    ) -> Result<U256, TicketError> {
        let t = &r.ticket;
        if funds.withdraw_round != 0 && funds.withdraw_round <= chain.round + 1 {
            return Err(TicketError::SenderUnlocking(t.sender));
        }
        if funds.deposit.is_zero() && funds.reserve_alloc.is_zero() {
            return Err(TicketError::SenderUnfunded(t.sender));
        }
        self.issued_here(r)
    }

    /// The checks after the signature, with `rand` from [`check_params`]:
    /// creation round, face value against `max_float`, nonce replay, and
    /// the params' expiry (reported in [`Validated::params_expired`] so a
    /// winner on expired params is still kept). Records the nonce.
    ///
    /// [`check_params`]: Self::check_params
    pub fn accept(
        &self,
        r: &ReceivedTicket,
        rand: U256,
        chain: &ChainView,
        max_float: U256,
    ) -> Result<Validated, TicketError> {
        let t = &r.ticket;
        // The broker redeems while creationRound + validity > currentRound:
        // credit nothing it would refuse.
        if t.creation_round + TICKET_VALIDITY_ROUNDS <= chain.round {
            return Err(TicketError::RoundExpired {
                created: t.creation_round,
                current: chain.round,
            });
        }
        if t.creation_round > chain.round + 1 {
            return Err(TicketError::RoundInFuture(t.creation_round));
        }
        if t.face_value > max_float {
            return Err(TicketError::FaceValueTooHigh {
                face_value: t.face_value,
                max_float,
            });
        }
        self.record_nonce(rand, t.sender_nonce, r.expiration_block, chain.block)?;
        Ok(Validated {
            recipient_rand: rand,
            winning: Self::is_winning(&r.sig, rand, t.win_prob),
            expected_value: t.expected_value(),
            params_expired: r.expiration_block <= chain.block,
        })
    }

    fn record_nonce(
        &self,
        rand: U256,
        nonce: u32,
        expiration_block: U256,
        block: U256,
    ) -> Result<(), TicketError> {
        let mut nonces = self.nonces.lock().expect("nonce map lock");
        if nonces.purged_at != block {
            // Params past their expiry can no longer produce valid tickets.
            nonces.by_rand.retain(|_, (expires, _)| *expires > block);
            nonces.purged_at = block;
        }
        let (_, seen) = nonces
            .by_rand
            .entry(rand)
            .or_insert_with(|| (expiration_block, HashSet::new()));
        if seen.contains(&nonce) {
            return Err(TicketError::NonceSeen(nonce));
        }
        if seen.len() >= MAX_NONCES_PER_RAND {
            return Err(TicketError::TooManyNonces);
        }
        seen.insert(nonce);
        Ok(())
    }
}

/// The sender's signature over the ticket hash (personal-sign). The costly
/// part of validation and free of state, so payments check it in parallel.
/// Not fatal for the payment (go-livepeer skips such a ticket).
pub fn check_signature(r: &ReceivedTicket) -> Result<(), TicketError> {
    let t = &r.ticket;
    let signer = recover_digest(personal_hash(t.hash().as_slice()), &r.sig)
        .map_err(|e| TicketError::InvalidSignature(e.to_string()))?;
    if signer != t.sender {
        return Err(TicketError::InvalidSignature(format!(
            "signed by {signer}, not the sender {}",
            t.sender
        )));
    }
    Ok(())
}

/// Face value for a target `ev`: go-livepeer's rule (100× the redemption
/// transaction cost, at least 100× the EV) capped by the sender's max float
/// and the operator's `max_face_value`. `None` when the result is below
/// the EV or does not cover the redemption's transaction cost (a winner
/// would cost more to redeem than it pays: go-livepeer's
/// errInsufficientSenderReserve).
pub fn face_value(
    ev: U256,
    tx_cost: U256,
    max_float: U256,
    max_face_value: Option<U256>,
) -> Option<U256> {
    let mut fv = tx_cost * U256::from(100);
    if fv < ev {
        fv = ev * U256::from(100);
    }
    fv = fv.min(max_float);
    if let Some(cap) = max_face_value {
        fv = fv.min(cap);
    }
    (fv >= ev && !fv.is_zero() && fv > tx_cost).then_some(fv)
}

/// go-livepeer's -autoAdjustPrice: the price raised by what redeeming a
/// winner costs against what it pays, `base × (1 + tx_cost / face_value)`,
/// so the gas a sender's winners cost is charged to that sender. Rounded
/// up to a thousandth of the base's unit (go-livepeer fixes prices to
/// three decimals too, rounding down, which turns prices below 0.001 wei a
/// pixel into 0). `None` when the result does not fit a PriceInfo's i64s.
pub fn auto_adjusted(base: Price, face_value: U256, tx_cost: U256) -> Option<Price> {
    if base.num == 0 || face_value.is_zero() || tx_cost.is_zero() {
        return Some(base);
    }
    const SCALE: u128 = 1000;
    let scaled = U256::from(base.num) * U256::from(SCALE) * (face_value + tx_cost);
    let num = scaled.div_ceil(face_value);
    let den = base.den.checked_mul(SCALE)?;
    let price = Price::new(u128::try_from(num).ok()?, den)?;
    (i64::try_from(price.num).is_ok() && i64::try_from(price.den).is_ok()).then_some(price)
}

/// Win probability giving `ev` at `face_value`: EV × ⌈(2^256 − 1) / faceValue⌉.
pub fn win_prob(ev: U256, face_value: U256) -> U256 {
    if face_value.is_zero() {
        return U256::ZERO;
    }
    if face_value == ev {
        return MAX_WIN_PROB;
    }
    let per_wei = MAX_WIN_PROB.div_ceil(face_value);
    ev.saturating_mul(per_wei).min(MAX_WIN_PROB)
}

#[cfg(test)]
mod tests {
    use super::super::ticket::expected_value;
    use super::*;

    #[test]
    fn auto_adjusted_prices_carry_the_redemption_overhead() {
        let p = |n, d| Price::new(n, d).unwrap();
        let wei = U256::from;
        // 2 wei a pixel, winners of 2M wei costing 1.2M to redeem: 3.2.
        assert_eq!(
            auto_adjusted(p(2, 1), wei(2_000_000u64), wei(1_200_000u64)),
            Some(p(16, 5))
        );
        // go-livepeer's usual 100× face value: 1% more.
        assert_eq!(
            auto_adjusted(p(1200, 1), wei(100u64), wei(1u64)),
            Some(p(1212, 1))
        );
        // Rounded up, never below the exact price, by under a thousandth.
        let up = auto_adjusted(p(1, 3), wei(3u64), wei(1u64)).unwrap();
        assert!(up.num * 9 >= 4 * up.den && (up.num * 9 - 4 * up.den) * 1000 < up.den * 9);
        // A small price per pixel stays above 0 (go-livepeer's would not).
        let tiny = auto_adjusted(p(1, 1_000_000), wei(100u64), wei(1u64)).unwrap();
        assert!(tiny.num > 0);
        // Free stays free; no gas cost, no overhead.
        assert_eq!(auto_adjusted(p(0, 1), wei(1u64), wei(1u64)), Some(p(0, 1)));
        assert_eq!(auto_adjusted(p(5, 1), wei(1u64), U256::ZERO), Some(p(5, 1)));
        // Too large for a PriceInfo.
        assert_eq!(
            auto_adjusted(p(i64::MAX as u128, 1), wei(1u64), wei(1u64)),
            None
        );
    }

    #[test]
    fn price_is_reduced_and_costs_round_up() {
        assert_eq!(Price::new(2, 6), Some(Price { num: 1, den: 3 }));
        assert_eq!(Price::new(0, 5), Some(Price { num: 0, den: 1 }));
        assert_eq!(Price::new(1, 0), None);
        assert_eq!(Price::new(1, 3).unwrap().cost(10), U256::from(4));
    }

    #[test]
    fn face_value_and_win_prob_give_the_ev() {
        let ev = U256::from(8_000_000_000u64);
        let fv = face_value(ev, U256::from(1_000_000_000_000u64), U256::MAX, None).unwrap();
        assert_eq!(fv, U256::from(100_000_000_000_000u64));
        let wp = win_prob(ev, fv);
        let got = expected_value(fv, wp);
        assert!(got >= ev && got - ev <= U256::from(1), "EV {got} vs {ev}");
        // Capped by the sender's float: below the EV, no params.
        assert_eq!(face_value(ev, U256::from(1), U256::from(100), None), None);
        // A face value that does not cover the redemption's gas: no params
        // (EV 8e9 wei, tx cost 1.2e13 wei, float 8e9).
        assert_eq!(
            face_value(ev, U256::from(12_000_000_000_000u64), ev, None),
            None
        );
        assert_eq!(
            face_value(
                ev,
                U256::from(10_000_000_000u64),
                U256::MAX,
                Some(U256::from(9_000_000_000u64))
            ),
            None,
            "an operator cap below the tx cost gives no params either"
        );
        assert_eq!(win_prob(ev, ev), MAX_WIN_PROB);
    }
}
