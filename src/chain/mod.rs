//! The chain side of the orchestrator shim: a client for the Livepeer
//! protocol contracts (resolved through the Controller), rounds, staking,
//! rewards and winning-ticket redemption.
//!
//! Layout: `contracts` (ABI bindings), `account` (keystore and key files),
//! `client` (provider, address resolution, transaction sending), then one
//! module per mechanism: `rounds`, `staking`, `rewards`, `redeem`, and
//! `service`, the long-running loop that ties them to the shim.

pub mod account;
pub mod client;
pub mod contracts;
pub mod redeem;
pub mod rewards;
pub mod rounds;
pub mod service;
pub mod staking;

pub use client::{ChainClient, ChainConfig};

pub use redeem::RedeemOutcome;
pub use rewards::RewardOutcome;
pub use rounds::RoundInfo;
pub use service::{ChainMetrics, ChainService, ChainState, ServiceOptions};
pub use staking::StakeStatus;

use alloy_primitives::{Address, B256};

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("ethereum account: {0}")]
    Account(String),
    #[error("ethereum node {url}: {message}")]
    Rpc { url: String, message: String },
    #[error("contract {0} is not registered in the Controller")]
    NotRegistered(&'static str),
    #[error("{what} would revert, not sent: {reason}")]
    WouldRevert { what: String, reason: String },
    #[error("{what} reverted on chain in transaction {tx}")]
    Reverted { what: String, tx: B256 },
    #[error("{what}: no receipt for transaction {tx} within {secs} s")]
    ReceiptTimeout { what: String, tx: B256, secs: u64 },
    #[error("gas price {base_fee} wei (base fee) is above the cap of {cap} wei (--max-gas-price); {what} not sent")]
    GasPriceAboveCap {
        what: String,
        base_fee: u128,
        cap: u128,
    },
    #[error("{0}")]
    Refused(String),
    #[error("account {address} has {have} and needs {need} for {what}")]
    Insufficient {
        address: Address,
        what: String,
        have: String,
        need: String,
    },
}

impl ChainError {
    /// Whether retrying the same action later may succeed (node down,
    /// congestion) rather than it being refused for good.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Rpc { .. }
                | ChainError::ReceiptTimeout { .. }
                | ChainError::GasPriceAboveCap { .. }
        )
    }
}
