//! The chain client: one JSON-RPC provider with the orchestrator's signer,
//! contract addresses resolved through the Controller (cached, re-resolved
//! on demand and on every new round), and transaction sending that checks
//! first (a call that would revert is never paid for), caps gas, keeps one
//! transaction in flight per account, and waits for receipts with a timeout,
//! re-sending at the same nonce with a higher fee when one is not mined.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use alloy_primitives::{keccak256, Address, B256};
use tokio::sync::Mutex;

use super::contracts::Controller;
use super::ChainError;

/// How to reach and use the chain.
#[derive(Clone)]
pub struct ChainConfig {
    pub eth_url: String,
    pub controller: Address,
    /// Highest max fee per gas the node pays, in wei; `None` for no cap.
    pub max_gas_price: Option<u128>,
    /// How long to wait for one transaction to be mined before re-sending
    /// it at the same nonce with a higher fee.
    pub receipt_timeout: Duration,
    /// Re-sends of one transaction after a receipt timeout.
    pub tx_retries: u32,
    /// The orchestrator whose stake and tickets these are (go-livepeer's
    /// -ethOrchAddr), when it is not the signing account: the staking key
    /// stays cold and this node signs with a hot one. `None`: the account.
    pub orchestrator: Option<Address>,
}

impl std::fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL's path or query: they carry the provider's key.
        f.debug_struct("ChainConfig")
            .field("eth_url", &super::redact_url(&self.eth_url))
            .field("controller", &self.controller)
            .field("max_gas_price", &self.max_gas_price)
            .field("receipt_timeout", &self.receipt_timeout)
            .field("tx_retries", &self.tx_retries)
            .field("orchestrator", &self.orchestrator)
            .finish()
    }
}

impl ChainConfig {
    pub fn new(eth_url: &str, controller: Address) -> Self {
        ChainConfig {
            eth_url: eth_url.to_string(),
            controller,
            max_gas_price: None,
            receipt_timeout: Duration::from_secs(60),
            tx_retries: 3,
            orchestrator: None,
        }
    }
}

pub struct ChainClient {
    provider: DynProvider,
    account: Address,
    config: ChainConfig,
    addresses: RwLock<HashMap<&'static str, Address>>,
    /// One transaction in flight per account: nonces stay gap-free and a
    /// stuck transaction is replaced rather than queued behind.
    tx_lock: Mutex<()>,
    gas_price_cache: RwLock<Option<(std::time::Instant, u128)>>,
}

impl ChainClient {
    /// A client whose node is never reached: for tests of code that holds
    /// one without reading the chain.
    #[cfg(test)]
    pub(crate) fn unconnected() -> ChainClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ChainConfig::new("http://127.0.0.1:1", Address::ZERO);
        let signer = PrivateKeySigner::random();
        let account = signer.address();
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(config.eth_url.parse().expect("a URL"))
            .erased();
        ChainClient {
            provider,
            account,
            config,
            addresses: RwLock::new(HashMap::new()),
            tx_lock: Mutex::new(()),
            gas_price_cache: RwLock::new(None),
        }
    }

    /// Connects and checks that the node answers and that `controller` is a
    /// contract.
    pub async fn connect(
        config: ChainConfig,
        signer: PrivateKeySigner,
    ) -> Result<ChainClient, ChainError> {
        let url: reqwest::Url = config.eth_url.parse().map_err(|e| ChainError::Rpc {
            endpoint: super::redact_url(&config.eth_url),
            message: format!("not a URL: {e}"),
        })?;
        // The HTTP transport's rustls has no provider of its own (see
        // Cargo.toml) and its client is built eagerly, for http URLs too;
        // the WebSocket one brings aws-lc-rs beside ring. ring becomes the
        // process default, so neither is ambiguous. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let account = signer.address();
        let builder = ProviderBuilder::new().wallet(EthereumWallet::from(signer));
        let provider = match url.scheme() {
            "http" | "https" => builder.connect_http(url).erased(),
            "ws" | "wss" => builder
                .connect_ws(alloy::providers::WsConnect::new(url.as_str()))
                .await
                .map_err(|e| ChainError::Rpc {
                    endpoint: super::redact_url(&config.eth_url),
                    message: super::scrub_url(&format!("WebSocket connect: {e}"), &config.eth_url),
                })?
                .erased(),
            other => {
                return Err(ChainError::Rpc {
                    endpoint: super::redact_url(&config.eth_url),
                    message: format!("unsupported scheme {other:?}: use http(s):// or ws(s)://"),
                })
            }
        };
        let client = ChainClient {
            provider,
            account,
            config,
            addresses: RwLock::new(HashMap::new()),
            tx_lock: Mutex::new(()),
            gas_price_cache: RwLock::new(None),
        };
        let code = client
            .provider
            .get_code_at(client.config.controller)
            .await
            .map_err(|e| client.rpc_error(e))?;
        if code.is_empty() {
            return Err(ChainError::Refused(format!(
                "no contract at the Controller address {} on {}",
                client.config.controller,
                super::redact_url(&client.config.eth_url)
            )));
        }
        Ok(client)
    }

    /// The account that signs and pays for transactions.
    pub fn account(&self) -> Address {
        self.account
    }

    /// The orchestrator whose stake gates video work and to which tickets
    /// are paid: `-ethOrchAddr`, else the account.
    pub fn orchestrator(&self) -> Address {
        self.config.orchestrator.unwrap_or(self.account)
    }

    /// The account is the orchestrator itself: only then can it call
    /// `reward()`, which the BondingManager credits to its sender.
    pub fn signs_for_orchestrator(&self) -> bool {
        self.orchestrator() == self.account
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    pub(crate) fn rpc_error(&self, e: impl std::fmt::Display) -> ChainError {
        ChainError::Rpc {
            endpoint: super::redact_url(&self.config.eth_url),
            message: super::scrub_url(&e.to_string(), &self.config.eth_url),
        }
    }

    /// Maps a failed contract read to a ChainError.
    pub(crate) fn call_error(&self, what: &str, e: alloy::contract::Error) -> ChainError {
        match e {
            alloy::contract::Error::TransportError(RpcError::ErrorResp(resp))
                if is_revert(resp.code, &resp.message) =>
            {
                ChainError::WouldRevert {
                    what: what.to_string(),
                    reason: revert_reason(&resp.message),
                }
            }
            other => self.rpc_error(format!("{what}: {other}")),
        }
    }

    /// The address the Controller holds for `name` (e.g. "BondingManager"),
    /// from the cache when known.
    pub async fn address(&self, name: &'static str) -> Result<Address, ChainError> {
        if let Some(a) = self.addresses.read().expect("address cache").get(name) {
            return Ok(*a);
        }
        let controller = Controller::new(self.config.controller, &self.provider);
        let addr = controller
            .getContract(keccak256(name.as_bytes()))
            .call()
            .await
            .map_err(|e| self.call_error("Controller.getContract", e))?;
        if addr == Address::ZERO {
            return Err(ChainError::NotRegistered(name));
        }
        self.addresses
            .write()
            .expect("address cache")
            .insert(name, addr);
        Ok(addr)
    }

    /// Forgets every cached address so the next use asks the Controller
    /// again; returns the names whose address changed.
    pub async fn refresh_addresses(&self) -> Result<Vec<&'static str>, ChainError> {
        let old: Vec<(&'static str, Address)> = self
            .addresses
            .read()
            .expect("address cache")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        self.addresses.write().expect("address cache").clear();
        let mut changed = Vec::new();
        for (name, was) in old {
            let now = self.address(name).await?;
            if now != was {
                tracing::info!(contract = name, old = %was, new = %now, "contract address changed in the Controller");
                changed.push(name);
            }
        }
        Ok(changed)
    }

    pub async fn controller_paused(&self) -> Result<bool, ChainError> {
        Controller::new(self.config.controller, &self.provider)
            .paused()
            .call()
            .await
            .map_err(|e| self.call_error("Controller.paused", e))
    }

    /// The node's suggested gas price in wei, re-read at most every 10 s
    /// (it prices every ticket's face value).
    pub async fn gas_price(&self) -> Result<u128, ChainError> {
        if let Some((at, price)) = *self.gas_price_cache.read().expect("gas price cache") {
            if at.elapsed() < Duration::from_secs(10) {
                return Ok(price);
            }
        }
        self.gas_price_fresh().await
    }

    /// The node's suggested gas price read now (what a redemption about
    /// to be sent will pay), refreshing the cache.
    pub async fn gas_price_fresh(&self) -> Result<u128, ChainError> {
        let price = self
            .provider
            .get_gas_price()
            .await
            .map_err(|e| self.rpc_error(e))?;
        *self.gas_price_cache.write().expect("gas price cache") =
            Some((std::time::Instant::now(), price));
        Ok(price)
    }

    /// Sends `tx` from the account: estimates gas first (a revert there is
    /// reported and nothing is sent), applies the gas cap, then sends and
    /// waits for the receipt, re-sending at the same nonce with a 20% higher
    /// fee after each receipt timeout. A reverted receipt is an error.
    pub async fn send(
        &self,
        what: &str,
        tx: TransactionRequest,
    ) -> Result<TransactionReceipt, ChainError> {
        self.send_recorded(what, tx, None, &mut |_, _| Ok(())).await
    }

    /// Checks `tx` from the account without sending it: the gas estimate
    /// runs the call against the latest state, so a call that would revert
    /// is [`ChainError::WouldRevert`] with the contract's reason. Returns
    /// the estimate. [`send`](Self::send) starts with this.
    pub async fn preflight(&self, what: &str, tx: TransactionRequest) -> Result<u64, ChainError> {
        self.provider
            .estimate_gas(tx.with_from(self.account))
            .await
            .map_err(|e| match e {
                RpcError::ErrorResp(resp) if is_revert(resp.code, &resp.message) => {
                    ChainError::WouldRevert {
                        what: what.to_string(),
                        reason: revert_reason(&resp.message),
                    }
                }
                // A node's own trouble (rate limits, overload) is no refusal.
                other => self.rpc_error(format!("estimating gas for {what}: {other}")),
            })
    }

    /// The account's nonce as mined (transactions below it are final).
    pub async fn mined_nonce(&self) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(self.account)
            .latest()
            .await
            .map_err(|e| self.rpc_error(e))
    }

    /// [`send`](Self::send) at `nonce` when given (replacing a pending
    /// transaction there: only one of them can be mined), else at the
    /// account's next. `record(nonce, hash)` runs before the first
    /// broadcast (hash `None`) and after each (its hash), so a caller can
    /// make the transaction findable after a timeout or a crash before it
    /// can be mined; an error there sends nothing.
    pub async fn send_recorded(
        &self,
        what: &str,
        tx: TransactionRequest,
        nonce: Option<u64>,
        record: &mut (dyn FnMut(u64, Option<B256>) -> Result<(), String> + Send),
    ) -> Result<TransactionReceipt, ChainError> {
        let _one_at_a_time = self.tx_lock.lock().await;
        let tx = tx.with_from(self.account);
        let gas = self.preflight(what, tx.clone()).await?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| self.rpc_error(e))?;
        let (mut max_fee, mut tip) = (fees.max_fee_per_gas, fees.max_priority_fee_per_gas);
        if let Some(cap) = self.config.max_gas_price {
            let base_fee = self.base_fee().await?;
            if base_fee > cap {
                return Err(ChainError::GasPriceAboveCap {
                    what: what.to_string(),
                    base_fee,
                    cap,
                });
            }
            max_fee = max_fee.min(cap);
            tip = tip.min(max_fee);
        }
        let replacing = nonce.is_some();
        if replacing {
            // A replacement must outbid the pending one (nodes want +10%):
            // the previous attempt's fee is not known here, but its retries
            // bid at most 1.2³ ≈ 1.73× the estimate, so bid twice it; the
            // cap still holds.
            max_fee *= 2;
            tip *= 2;
            if let Some(cap) = self.config.max_gas_price {
                max_fee = max_fee.min(cap);
                tip = tip.min(max_fee);
            }
        }
        let nonce = match nonce {
            Some(n) => n,
            None => self
                .provider
                .get_transaction_count(self.account)
                .pending()
                .await
                .map_err(|e| self.rpc_error(e))?,
        };
        record(nonce, None).map_err(|e| ChainError::Refused(format!("recording {what}: {e}")))?;
        // 20% headroom: state can move between estimate and inclusion.
        let gas_limit = gas + gas / 5;
        let mut sent: Vec<B256> = Vec::new();
        for attempt in 0..=self.config.tx_retries {
            let request = tx
                .clone()
                .with_nonce(nonce)
                .with_gas_limit(gas_limit)
                .with_max_fee_per_gas(max_fee)
                .with_max_priority_fee_per_gas(tip);
            match self.provider.send_transaction(request).await {
                Ok(pending) => {
                    let hash = *pending.tx_hash();
                    sent.push(hash);
                    if let Err(e) = record(nonce, Some(hash)) {
                        tracing::warn!(what, %hash, error = %e, "could not record the transaction hash");
                    }
                    tracing::debug!(what, %hash, nonce, attempt, "transaction sent");
                    // Nodes that mine on receipt (dev chains, some L2
                    // sequencers) have it already: skip the block poller.
                    if let Ok(Some(receipt)) = self.provider.get_transaction_receipt(hash).await {
                        return self.check_receipt(what, receipt);
                    }
                    match pending
                        .with_timeout(Some(self.config.receipt_timeout))
                        .get_receipt()
                        .await
                    {
                        Ok(receipt) => return self.check_receipt(what, receipt),
                        Err(e) => {
                            tracing::warn!(what, %hash, error = %e, "no receipt yet; re-sending with a higher fee")
                        }
                    }
                }
                // The nonce was used: one of our earlier sends was mined.
                Err(e) if is_nonce_used(&e) && !sent.is_empty() => {}
                // Replacing a pending transaction of an earlier attempt that
                // is still pending (or was mined): it stays the one that counts.
                Err(e)
                    if replacing
                        && sent.is_empty()
                        && (is_nonce_used(&e) || is_underpriced(&e)) =>
                {
                    return Err(ChainError::StillPending {
                        what: what.to_string(),
                        nonce,
                    });
                }
                Err(e) => return Err(self.rpc_error(format!("sending {what}: {e}"))),
            }
            if let Some(receipt) = self.find_receipt(&sent).await? {
                return self.check_receipt(what, receipt);
            }
            max_fee += max_fee / 5;
            tip += tip / 5;
            if let Some(cap) = self.config.max_gas_price {
                max_fee = max_fee.min(cap);
                tip = tip.min(max_fee);
            }
        }
        Err(ChainError::ReceiptTimeout {
            what: what.to_string(),
            tx: sent.last().copied().unwrap_or_default(),
            secs: self.config.receipt_timeout.as_secs(),
        })
    }

    async fn base_fee(&self) -> Result<u128, ChainError> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.rpc_error(e))?
            .ok_or_else(|| self.rpc_error("no latest block"))?;
        Ok(u128::from(block.header.base_fee_per_gas.unwrap_or(0)))
    }

    async fn find_receipt(
        &self,
        hashes: &[B256],
    ) -> Result<Option<TransactionReceipt>, ChainError> {
        for hash in hashes {
            if let Some(r) = self
                .provider
                .get_transaction_receipt(*hash)
                .await
                .map_err(|e| self.rpc_error(e))?
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn check_receipt(
        &self,
        what: &str,
        receipt: TransactionReceipt,
    ) -> Result<TransactionReceipt, ChainError> {
        if receipt.status() {
            tracing::info!(what, tx = %receipt.transaction_hash, gas_used = receipt.gas_used, "transaction mined");
            Ok(receipt)
        } else {
            Err(ChainError::Reverted {
                what: what.to_string(),
                tx: receipt.transaction_hash,
            })
        }
    }
}

/// Whether a node's error reply is the EVM reverting (JSON-RPC code 3, or
/// a message saying so) rather than the node's own trouble.
fn is_revert(code: i64, message: &str) -> bool {
    let m = message.to_lowercase();
    code == 3 || m.contains("revert") || m.contains("invalid opcode")
}

fn is_underpriced(e: &RpcError<TransportErrorKind>) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("underpriced") || text.contains("fee too low")
}

fn is_nonce_used(e: &RpcError<TransportErrorKind>) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("nonce too low")
        || text.contains("already known")
        || text.contains("known transaction")
}

/// The human part of a node's revert message ("VM Exception while processing
/// transaction: revert X" on ganache, "execution reverted: X" on geth).
pub fn revert_reason(message: &str) -> String {
    for marker in ["revert ", "reverted: "] {
        if let Some(i) = message.find(marker) {
            let reason = message[i + marker.len()..].trim();
            if !reason.is_empty() {
                return reason.to_string();
            }
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revert_reasons_from_ganache_and_geth() {
        assert_eq!(
            revert_reason("VM Exception while processing transaction: revert ticket is used"),
            "ticket is used"
        );
        assert_eq!(
            revert_reason("execution reverted: caller must be TicketBroker"),
            "caller must be TicketBroker"
        );
        assert_eq!(revert_reason("execution reverted"), "execution reverted");
    }
}
