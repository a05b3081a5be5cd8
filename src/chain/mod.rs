//! The chain side of the orchestrator shim: a client for the Livepeer
//! protocol contracts (resolved through the Controller), rounds, staking,
//! rewards and winning-ticket redemption.
//!
//! Layout: `contracts` (ABI bindings), `account` (keystore and key files),
//! `client` (provider, address resolution, transaction sending), then one
//! module per mechanism: `rounds`, `staking` (and `actions`, the staking and ticket-sender
//! transactions of the CLI), `rewards`, `redeem`, and
//! `service`, the long-running loop that ties them to the shim.

pub mod account;
pub mod actions;
pub mod client;
pub mod contracts;
pub mod price_feed;
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
    /// `endpoint` is the node's scheme and host only: hosted RPC URLs carry
    /// the provider's API key in their path, query or user info, and this
    /// text reaches logs.
    #[error("ethereum node {endpoint}: {message}")]
    Rpc { endpoint: String, message: String },
    #[error("contract {0} is not registered in the Controller")]
    NotRegistered(&'static str),
    #[error("{what} would revert, not sent: {reason}")]
    WouldRevert { what: String, reason: String },
    #[error("{what} reverted on chain in transaction {tx}")]
    Reverted { what: String, tx: B256 },
    #[error("{what}: no receipt for transaction {tx} within {secs} s")]
    ReceiptTimeout { what: String, tx: B256, secs: u64 },
    #[error("{what}: an earlier transaction at nonce {nonce} is still pending; not replaced")]
    StillPending { what: String, nonce: u64 },
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

/// `scheme://host[:port]` of an RPC URL: what may be shown of it. The
/// path, query and user info (where providers put API keys) are dropped.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => format!("{}://", u.scheme()),
        },
        Err(_) => "(unparsable URL)".into(),
    }
}

/// `text` with every secret-bearing part of `url` (the whole URL, its
/// path and query, its user info) replaced: transport errors quote the URL
/// they failed on.
pub fn scrub_url(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Ok(u) = reqwest::Url::parse(url) {
        let mut secrets: Vec<String> = Vec::new();
        let path_query = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        secrets.push(path_query);
        secrets.push(u.path().to_string());
        if let Some(q) = u.query() {
            secrets.push(q.to_string());
        }
        secrets.push(u.username().to_string());
        if let Some(p) = u.password() {
            secrets.push(p.to_string());
        }
        // Longest first, so a path is not half-replaced by its query.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            // A bare "/" or an empty part hides nothing and would mangle text.
            if s.trim_matches('/').len() >= 4 {
                out = out.replace(&s, "/[redacted]");
            }
        }
    }
    out
}

impl ChainError {
    /// Whether retrying the same action later may succeed (node down,
    /// congestion) rather than it being refused for good.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Rpc { .. }
                | ChainError::ReceiptTimeout { .. }
                | ChainError::StillPending { .. }
                | ChainError::GasPriceAboveCap { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_lose_their_keys() {
        let url =
            "https://user:pw-secret@arb-mainnet.example.com:8443/v2/SECRETKEY123?apikey=QSECRET";
        assert_eq!(redact_url(url), "https://arb-mainnet.example.com:8443");
        let text =
            format!("error sending request for url ({url}): timed out; path /v2/SECRETKEY123");
        let clean = scrub_url(&text, url);
        for secret in ["SECRETKEY123", "QSECRET", "pw-secret"] {
            assert!(!clean.contains(secret), "{clean}");
        }
        assert!(clean.contains("arb-mainnet.example.com"), "{clean}");
        // A URL without a path keeps plain text intact.
        assert_eq!(
            scrub_url("connection refused", "http://127.0.0.1:8545"),
            "connection refused"
        );
    }
}
