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
        let block_number = self.block_number().await?;
        Ok(RoundInfo {
            current_round,
            initialized,
            locked,
            round_length,
            start_block,
            last_initialized_round,
            last_initialized_block_hash,
            block_number,
        })
    }

    /// Initializes the current round if nobody has yet. Returns whether
    /// this call did it.
    pub async fn initialize_round(&self) -> Result<bool, ChainError> {
        let rm = self.rounds_manager().await?;
        if rm
            .currentRoundInitialized()
            .call()
            .await
            .map_err(|e| self.call_error("currentRoundInitialized", e))?
        {
            return Ok(false);
        }
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
