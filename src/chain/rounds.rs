//! Rounds: where the protocol's clock stands, and initializing a round.

use alloy_primitives::{B256, U256};
use serde::Serialize;

use super::client::ChainClient;
use super::contracts::RoundsManager;
use super::ChainError;

/// A snapshot of the RoundsManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoundInfo {
    pub current_round: u64,
    pub initialized: bool,
    /// In the round's lock period: stake and transcoder parameters are
    /// frozen for the next active set.
    pub locked: bool,
    pub round_length: u64,
    pub start_block: u64,
    /// The newest initialized round: tickets are created against it and
    /// its block hash (go-livepeer's creationRound).
    pub last_initialized_round: u64,
    pub last_initialized_block_hash: B256,
    /// The round new tickets are created in and its block hash: the last
    /// initialized round, or the one before it when the chain holds no
    /// hash for it (go-livepeer's PreLastInitializedL1BlockHash fallback;
    /// on Arbitrum the hash can read as zero).
    pub creation_round: u64,
    pub creation_round_block_hash: B256,
    /// The protocol's block clock, `RoundsManager.blockNum()`: the L1
    /// block on Arbitrum, where `eth_blockNumber` is the L2 block (about
    /// four a second). Rounds and ticket params expire by this clock.
    pub block_number: u64,
}

fn small(v: U256, what: &str) -> Result<u64, ChainError> {
    u64::try_from(v).map_err(|_| ChainError::Refused(format!("{what} {v} does not fit in 64 bits")))
}

impl ChainClient {
    pub async fn rounds_manager(
        &self,
    ) -> Result<RoundsManager::RoundsManagerInstance<&alloy::providers::DynProvider>, ChainError>
    {
        Ok(RoundsManager::new(
            self.address("RoundsManager").await?,
            self.provider(),
        ))
    }

    pub async fn round_info(&self) -> Result<RoundInfo, ChainError> {
        let rm = self.rounds_manager().await?;
        let e = |what: &'static str| move |err| self.call_error(what, err);
        let current_round = small(
            rm.currentRound().call().await.map_err(e("currentRound"))?,
            "round",
        )?;
        let initialized = rm
            .currentRoundInitialized()
            .call()
            .await
            .map_err(e("currentRoundInitialized"))?;
        let locked = rm
            .currentRoundLocked()
            .call()
            .await
            .map_err(e("currentRoundLocked"))?;
        let round_length = small(
            rm.roundLength().call().await.map_err(e("roundLength"))?,
            "round length",
        )?;
        let start_block = small(
            rm.currentRoundStartBlock()
                .call()
                .await
                .map_err(e("currentRoundStartBlock"))?,
            "start block",
        )?;
        let last_initialized_round = small(
            rm.lastInitializedRound()
                .call()
                .await
                .map_err(e("lastInitializedRound"))?,
            "round",
        )?;
        let last_initialized_block_hash = rm
            .blockHashForRound(U256::from(last_initialized_round))
            .call()
            .await
            .map_err(e("blockHashForRound"))?;
        let (creation_round, creation_round_block_hash) =
            if last_initialized_block_hash == B256::ZERO && last_initialized_round > 0 {
                let prev = last_initialized_round - 1;
                let hash = rm
                    .blockHashForRound(U256::from(prev))
                    .call()
                    .await
                    .map_err(e("blockHashForRound"))?;
                (prev, hash)
            } else {
                (last_initialized_round, last_initialized_block_hash)
            };
        let block_number = self.l1_block().await?;
        Ok(RoundInfo {
            current_round,
            initialized,
            locked,
            round_length,
            start_block,
            last_initialized_round,
            last_initialized_block_hash,
            creation_round,
            creation_round_block_hash,
            block_number,
        })
    }

    /// Initializes the current round if nobody has yet. Returns whether
    /// this call did it.
    pub async fn initialize_round(&self) -> Result<bool, ChainError> {
        if self.round_initialized().await? {
            return Ok(false);
        }
        let rm = self.rounds_manager().await?;
        let tx = rm.initializeRound().into_transaction_request();
        match self.send("RoundsManager.initializeRound", tx).await {
            Ok(_) => Ok(true),
            // Someone else initialized it between our read and our send.
            Err(ChainError::WouldRevert { .. }) | Err(ChainError::Reverted { .. })
                if rm.currentRoundInitialized().call().await.unwrap_or(false) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the current round is initialized (the broker redeems
    /// nothing before it is).
    pub async fn round_initialized(&self) -> Result<bool, ChainError> {
        self.rounds_manager()
            .await?
            .currentRoundInitialized()
            .call()
            .await
            .map_err(|e| self.call_error("currentRoundInitialized", e))
    }

    /// The protocol's block clock (`RoundsManager.blockNum()`, the L1
    /// block on Arbitrum).
    pub async fn l1_block(&self) -> Result<u64, ChainError> {
        let b = self
            .rounds_manager()
            .await?
            .blockNum()
            .call()
            .await
            .map_err(|e| self.call_error("blockNum", e))?;
        small(b, "block number")
    }

    /// Just the current round number (one call, for hot paths).
    pub async fn current_round(&self) -> Result<u64, ChainError> {
        let round = self
            .rounds_manager()
            .await?
            .currentRound()
            .call()
            .await
            .map_err(|e| self.call_error("currentRound", e))?;
        small(round, "round")
    }

    pub async fn block_hash_for_round(&self, round: u64) -> Result<B256, ChainError> {
        self.rounds_manager()
            .await?
            .blockHashForRound(U256::from(round))
            .call()
            .await
            .map_err(|e| self.call_error("blockHashForRound", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{keccak256, Address};

    /// A JSON-RPC node that answers like Arbitrum: `RoundsManager.blockNum()`
    /// (the L1 block) far below `eth_blockNumber` (the L2 block), and no
    /// block hash for the last initialized round (a known Arbitrum artefact).
    async fn arbitrum_like_node() -> String {
        let word = |v: U256| format!("0x{}", alloy_primitives::hex::encode(v.to_be_bytes::<32>()));
        let selector = |sig: &str| alloy_primitives::hex::encode(&keccak256(sig.as_bytes())[..4]);
        let answers: Vec<(String, String)> = vec![
            (
                selector("getContract(bytes32)"),
                word(U256::from_be_slice(Address::repeat_byte(7).as_slice())),
            ),
            (selector("currentRound()"), word(U256::from(3000))),
            (selector("currentRoundInitialized()"), word(U256::from(1))),
            (selector("currentRoundLocked()"), word(U256::ZERO)),
            (selector("roundLength()"), word(U256::from(5760))),
            (
                selector("currentRoundStartBlock()"),
                word(U256::from(17_280_000)),
            ),
            (selector("lastInitializedRound()"), word(U256::from(3000))),
            (selector("blockNum()"), word(U256::from(17_280_100))),
        ];
        let block_hash_sel = selector("blockHashForRound(uint256)");
        let handler = move |axum::Json(req): axum::Json<serde_json::Value>| {
            let answers = answers.clone();
            let block_hash_sel = block_hash_sel.clone();
            async move {
                let result = match req["method"].as_str().unwrap_or("") {
                    "eth_getCode" => serde_json::json!("0x6001"),
                    "eth_blockNumber" => serde_json::json!("0x10000000"),
                    "eth_chainId" => serde_json::json!("0xa4b1"),
                    "eth_call" => {
                        let tx = &req["params"][0];
                        let data = tx["input"].as_str().or(tx["data"].as_str()).unwrap_or("");
                        let data = data.trim_start_matches("0x");
                        let sel = &data[..8];
                        if sel == block_hash_sel {
                            // Round 3000's hash reads as zero; 2999's is known.
                            let round = U256::from_str_radix(&data[8..], 16).unwrap();
                            let hash = if round == U256::from(2999) {
                                U256::from_be_bytes([0x11; 32])
                            } else {
                                U256::ZERO
                            };
                            serde_json::json!(format!(
                                "0x{}",
                                alloy_primitives::hex::encode(hash.to_be_bytes::<32>())
                            ))
                        } else {
                            let (_, v) = answers
                                .iter()
                                .find(|(s, _)| s == sel)
                                .unwrap_or_else(|| panic!("unexpected call {sel}"));
                            serde_json::json!(v)
                        }
                    }
                    other => panic!("unexpected method {other}"),
                };
                axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": result}))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::post(handler));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn rounds_follow_the_l1_block_and_skip_a_zero_block_hash() {
        let url = arbitrum_like_node().await;
        let signer = alloy::signers::local::PrivateKeySigner::from_slice(&[5u8; 32]).unwrap();
        let client = ChainClient::connect(
            crate::chain::ChainConfig::new(&url, Address::repeat_byte(1)),
            signer,
        )
        .await
        .unwrap();
        let info = client.round_info().await.unwrap();
        // The protocol's clock, not eth_blockNumber (0x10000000 here): ticket
        // params expire 40 of these blocks after issue, as go-livepeer counts.
        assert_eq!(info.block_number, 17_280_100);
        assert_eq!(client.l1_block().await.unwrap(), 17_280_100);
        // No hash for round 3000: tickets are created against round 2999.
        assert_eq!(info.last_initialized_round, 3000);
        assert_eq!(info.last_initialized_block_hash, B256::ZERO);
        assert_eq!(
            (info.creation_round, info.creation_round_block_hash),
            (2999, B256::repeat_byte(0x11))
        );
    }
}
