//! Staking: registering as a transcoder, bonding LPT, and the node's place
//! in the transcoder pool and the active set.

use alloy::providers::DynProvider;
use alloy_primitives::{utils::format_ether, Address, U256};
use serde::Serialize;

use super::actions::{decimal, Planned};
use super::client::ChainClient;
use super::contracts::{BondingManager, LivepeerToken, ServiceRegistry};
use super::ChainError;

/// Parts per million: the unit of rewardCut and feeShare on chain.
const PERC_DIVISOR: u64 = 1_000_000;

/// What `lpworker orchestrator status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StakeStatus {
    pub address: Address,
    pub current_round: u64,
    pub round_initialized: bool,
    pub round_locked: bool,
    pub registered: bool,
    pub active: bool,
    /// Total stake delegated to the node (its own bond included), in wei of LPT.
    pub total_stake: String,
    /// The node's own bond, in wei of LPT.
    pub bonded: String,
    /// 1-based position in the transcoder pool by stake; `None` when not in it.
    pub pool_position: Option<usize>,
    pub pool_size: usize,
    pub active_set_size: usize,
    pub last_reward_round: u64,
    /// Percent, as livepeer_cli shows them.
    pub reward_cut_percent: f64,
    pub fee_share_percent: f64,
    pub service_uri: String,
    pub lpt_balance: String,
    pub eth_balance: String,
}

/// A percentage (e.g. "10" or "12.5") as parts per million.
pub fn percent_to_ppm(pct: f64) -> Result<U256, ChainError> {
    if !(0.0..=100.0).contains(&pct) || !pct.is_finite() {
        return Err(ChainError::Refused(format!(
            "{pct} is not a percentage between 0 and 100"
        )));
    }
    Ok(U256::from(
        (pct * (PERC_DIVISOR as f64) / 100.0).round() as u64
    ))
}

fn ppm_to_percent(v: U256) -> f64 {
    u64::try_from(v).map_or(f64::NAN, |v| v as f64 * 100.0 / PERC_DIVISOR as f64)
}

impl ChainClient {
    pub async fn bonding_manager(
        &self,
    ) -> Result<BondingManager::BondingManagerInstance<&DynProvider>, ChainError> {
        Ok(BondingManager::new(
            self.address("BondingManager").await?,
            self.provider(),
        ))
    }

    pub async fn token(
        &self,
    ) -> Result<LivepeerToken::LivepeerTokenInstance<&DynProvider>, ChainError> {
        Ok(LivepeerToken::new(
            self.address("LivepeerToken").await?,
            self.provider(),
        ))
    }

    pub async fn is_active(&self) -> Result<bool, ChainError> {
        self.bonding_manager()
            .await?
            .isActiveTranscoder(self.orchestrator())
            .call()
            .await
            .map_err(|e| self.call_error("isActiveTranscoder", e))
    }

    /// Bonded to itself: the BondingManager credits ticket fees only to
    /// registered transcoders, active or not.
    pub async fn is_registered(&self) -> Result<bool, ChainError> {
        self.bonding_manager()
            .await?
            .isRegisteredTranscoder(self.orchestrator())
            .call()
            .await
            .map_err(|e| self.call_error("isRegisteredTranscoder", e))
    }

    /// The transcoder pool in order of stake, highest first.
    pub async fn transcoder_pool(&self) -> Result<Vec<Address>, ChainError> {
        let bm = self.bonding_manager().await?;
        let size = bm
            .getTranscoderPoolSize()
            .call()
            .await
            .map_err(|e| self.call_error("getTranscoderPoolSize", e))?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let mut pool = Vec::new();
        let mut next = bm
            .getFirstTranscoderInPool()
            .call()
            .await
            .map_err(|e| self.call_error("getFirstTranscoderInPool", e))?;
        while next != Address::ZERO && pool.len() < size {
            pool.push(next);
            next = bm
                .getNextTranscoderInPool(next)
                .call()
                .await
                .map_err(|e| self.call_error("getNextTranscoderInPool", e))?;
        }
        Ok(pool)
    }

    /// The node's neighbours in the pool, as position hints for calls that
    /// move its stake (`rewardWithHint`): exact when the order does not
    /// change, and only a gas cost (the contract searches) when it does.
    pub async fn pool_hints(&self) -> Result<(Address, Address), ChainError> {
        let pool = self.transcoder_pool().await?;
        let me = self.account();
        Ok(match pool.iter().position(|a| *a == me) {
            Some(i) => (
                if i > 0 { pool[i - 1] } else { Address::ZERO },
                pool.get(i + 1).copied().unwrap_or(Address::ZERO),
            ),
            None => (Address::ZERO, Address::ZERO),
        })
    }

    /// Bonds `amount` (wei of LPT) from the account to `to` (itself by
    /// default), approving the BondingManager first when needed.
    pub async fn bond(&self, amount: U256, to: Option<Address>) -> Result<(), ChainError> {
        for step in self.plan_bond(amount, to).await? {
            self.execute(step).await?;
        }
        Ok(())
    }

    /// The transactions of a bond: `LivepeerToken.approve` when the
    /// BondingManager may not spend `amount` yet, then `bond(amount, to)`.
    /// Refused before anything is sent when the account lacks the LPT.
    pub async fn plan_bond(
        &self,
        amount: U256,
        to: Option<Address>,
    ) -> Result<Vec<Planned>, ChainError> {
        if amount.is_zero() {
            return Err(ChainError::Refused("bond amount must be above zero".into()));
        }
        let me = self.account();
        let to = to.unwrap_or(me);
        let token = self.token().await?;
        let bm_addr = self.address("BondingManager").await?;
        let balance = token
            .balanceOf(me)
            .call()
            .await
            .map_err(|e| self.call_error("balanceOf", e))?;
        if balance < amount {
            return Err(ChainError::Insufficient {
                address: me,
                what: "bonding".into(),
                have: format!("{} LPT", format_ether(balance)),
                need: format!("{} LPT", format_ether(amount)),
            });
        }
        let allowance = token
            .allowance(me, bm_addr)
            .call()
            .await
            .map_err(|e| self.call_error("allowance", e))?;
        let mut steps = Vec::new();
        if allowance < amount {
            steps.push(Planned {
                what: "LivepeerToken.approve".into(),
                description: format!(
                    "let the BondingManager take {} LPT from {me} (it may take {} now)",
                    decimal(amount),
                    decimal(allowance)
                ),
                tx: token.approve(bm_addr, amount).into_transaction_request(),
            });
        }
        let bm = self.bonding_manager().await?;
        steps.push(Planned {
            what: "BondingManager.bond".into(),
            description: format!("bond {} LPT from {me} to {to}", decimal(amount)),
            tx: bm.bond(amount, to).into_transaction_request(),
        });
        Ok(steps)
    }

    /// Registers (or updates) the account as a transcoder with the given
    /// reward cut and fee share, in percent.
    pub async fn register_transcoder(
        &self,
        reward_cut_pct: f64,
        fee_share_pct: f64,
    ) -> Result<(), ChainError> {
        let plan = self.plan_register(reward_cut_pct, fee_share_pct).await?;
        self.execute(plan).await?;
        Ok(())
    }

    /// `transcoder(rewardCut, feeShare)`, refused before sending in the
    /// round's lock period and when the account has not bonded to itself
    /// (the contract's own refusals, with a reason an operator can act on).
    pub async fn plan_register(
        &self,
        reward_cut_pct: f64,
        fee_share_pct: f64,
    ) -> Result<Planned, ChainError> {
        let reward_cut = percent_to_ppm(reward_cut_pct)?;
        let fee_share = percent_to_ppm(fee_share_pct)?;
        let rounds = self.round_info().await?;
        if rounds.locked {
            let unlock = rounds.start_block + rounds.round_length;
            return Err(ChainError::Refused(format!(
                "round {} is in its lock period: transcoder parameters cannot change until round {} starts at block {unlock}",
                rounds.current_round,
                rounds.current_round + 1
            )));
        }
        let bm = self.bonding_manager().await?;
        let me = self.account();
        let delegator = bm
            .getDelegator(me)
            .call()
            .await
            .map_err(|e| self.call_error("getDelegator", e))?;
        if delegator.delegateAddress != me || delegator.bondedAmount.is_zero() {
            return Err(ChainError::Refused(format!(
                "{me} has not bonded LPT to itself: run `lpworker orchestrator bond --amount LPT` first"
            )));
        }
        Ok(Planned {
            what: "BondingManager.transcoder".into(),
            description: format!(
                "register {me} as a transcoder keeping {reward_cut_pct}% of rewards and sharing {fee_share_pct}% of fees"
            ),
            tx: bm
                .transcoder(reward_cut, fee_share)
                .into_transaction_request(),
        })
    }

    pub async fn service_uri(&self, addr: Address) -> Result<String, ChainError> {
        ServiceRegistry::new(self.address("ServiceRegistry").await?, self.provider())
            .getServiceURI(addr)
            .call()
            .await
            .map_err(|e| self.call_error("getServiceURI", e))
    }

    /// Sets the node's public service URI unless it is already that.
    /// Returns whether a transaction was sent.
    pub async fn set_service_uri(&self, uri: &str) -> Result<bool, ChainError> {
        if self.service_uri(self.account()).await? == uri {
            return Ok(false);
        }
        let sr = ServiceRegistry::new(self.address("ServiceRegistry").await?, self.provider());
        self.send(
            "ServiceRegistry.setServiceURI",
            sr.setServiceURI(uri.to_string()).into_transaction_request(),
        )
        .await?;
        Ok(true)
    }

    pub async fn stake_status(&self) -> Result<StakeStatus, ChainError> {
        // The orchestrator's state (the account's own unless -ethOrchAddr).
        let me = self.orchestrator();
        let rounds = self.round_info().await?;
        let bm = self.bonding_manager().await?;
        let e = |what: &'static str| move |err| self.call_error(what, err);
        let transcoder = bm
            .getTranscoder(me)
            .call()
            .await
            .map_err(e("getTranscoder"))?;
        let delegator = bm
            .getDelegator(me)
            .call()
            .await
            .map_err(e("getDelegator"))?;
        let registered = self.is_registered().await?;
        let total_stake = bm
            .transcoderTotalStake(me)
            .call()
            .await
            .map_err(e("transcoderTotalStake"))?;
        let active = self.is_active().await?;
        let pool = self.transcoder_pool().await?;
        let max_size = bm
            .getTranscoderPoolMaxSize()
            .call()
            .await
            .map_err(e("getTranscoderPoolMaxSize"))?;
        let lpt = self
            .token()
            .await?
            .balanceOf(me)
            .call()
            .await
            .map_err(e("balanceOf"))?;
        let eth = self
            .provider()
            .get_balance(me)
            .await
            .map_err(|err| self.rpc_error(err))?;
        Ok(StakeStatus {
            address: me,
            current_round: rounds.current_round,
            round_initialized: rounds.initialized,
            round_locked: rounds.locked,
            registered,
            active,
            total_stake: total_stake.to_string(),
            bonded: delegator.bondedAmount.to_string(),
            pool_position: pool.iter().position(|a| *a == me).map(|i| i + 1),
            pool_size: pool.len(),
            active_set_size: usize::try_from(max_size).unwrap_or(usize::MAX),
            last_reward_round: u64::try_from(transcoder.lastRewardRound).unwrap_or(u64::MAX),
            reward_cut_percent: ppm_to_percent(transcoder.rewardCut),
            fee_share_percent: ppm_to_percent(transcoder.feeShare),
            service_uri: self.service_uri(me).await?,
            lpt_balance: lpt.to_string(),
            eth_balance: eth.to_string(),
        })
    }
}

use alloy::providers::Provider as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_parts_per_million() {
        assert_eq!(percent_to_ppm(10.0).unwrap(), U256::from(100_000));
        assert_eq!(percent_to_ppm(12.5).unwrap(), U256::from(125_000));
        assert_eq!(percent_to_ppm(100.0).unwrap(), U256::from(1_000_000));
        assert!(percent_to_ppm(100.1).is_err());
        assert!(percent_to_ppm(-1.0).is_err());
        assert!(percent_to_ppm(f64::NAN).is_err());
        assert_eq!(ppm_to_percent(U256::from(50_000)), 5.0);
    }
}
