//! Rewards: `rewardWithHint` once per round while active.
//!
//! Whether the round is already rewarded is read from chain each time
//! (`getTranscoder().lastRewardRound`), never remembered, so restarts and
//! other instances can not make the node call twice.

use alloy::sol_types::SolEvent;
use alloy_primitives::U256;

use super::client::ChainClient;
use super::contracts::BondingManager;
use super::ChainError;

/// What one reward attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardOutcome {
    /// Minted this many wei of LPT for the round.
    Rewarded {
        round: u64,
        minted: U256,
    },
    AlreadyRewarded {
        round: u64,
    },
    NotActive {
        round: u64,
    },
    RoundNotInitialized {
        round: u64,
    },
    /// The account signs for another orchestrator (-ethOrchAddr): reward()
    /// credits its sender, so only the orchestrator's own key can call it.
    NotTheOrchestrator,
}

impl ChainClient {
    pub async fn reward_if_due(&self) -> Result<RewardOutcome, ChainError> {
        if !self.signs_for_orchestrator() {
            return Ok(RewardOutcome::NotTheOrchestrator);
        }
        let rounds = self.round_info().await?;
        let round = rounds.current_round;
        if !rounds.initialized {
            return Ok(RewardOutcome::RoundNotInitialized { round });
        }
        if !self.is_active().await? {
            return Ok(RewardOutcome::NotActive { round });
        }
        let bm = self.bonding_manager().await?;
        let me = self.account();
        let last = bm
            .getTranscoder(me)
            .call()
            .await
            .map_err(|e| self.call_error("getTranscoder", e))?
            .lastRewardRound;
        if last >= U256::from(round) {
            return Ok(RewardOutcome::AlreadyRewarded { round });
        }
        let (prev, next) = self.pool_hints().await?;
        let receipt = self
            .send(
                "BondingManager.rewardWithHint",
                bm.rewardWithHint(prev, next).into_transaction_request(),
            )
            .await?;
        let minted = receipt
            .inner
            .logs()
            .iter()
            .filter_map(|log| BondingManager::Reward::decode_log(&log.inner).ok())
            .filter(|ev| ev.transcoder == me)
            .map(|ev| ev.amount)
            .fold(U256::ZERO, |a, b| a + b);
        tracing::info!(round, minted_wei = %minted, minted_lpt = %alloy_primitives::utils::format_ether(minted), "reward called");
        Ok(RewardOutcome::Rewarded { round, minted })
    }
}
