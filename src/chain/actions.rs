//! The staking and ticket-sender actions of `lpworker orchestrator`
//! (unbond, rebond, withdraw-stake, withdraw-fees, claim-earnings,
//! set-service-uri, and a gateway account's deposit, reserve, unlock and
//! withdraw on the TicketBroker), each in three steps: a [`Planned`]
//! transaction, checked against what is known of the account first (a
//! refusal names why); a preflight, the same gas estimate [`ChainClient::send`]
//! starts with, so a call that would revert is refused with the contract's
//! reason and costs nothing; and the send, whose receipt is returned as
//! [`Sent`]. The state to read back after is [`DelegatorState`] or
//! [`SenderState`].

use alloy::rpc::types::TransactionRequest;
use alloy_primitives::{utils::format_ether, Address, B256, U256};

/// Wei as a short decimal of ether (or LPT): `100`, `0.25`, `0`.
pub fn decimal(wei: U256) -> String {
    let s = format_ether(wei);
    match s.split_once('.') {
        Some((int, frac)) if frac.trim_end_matches('0').is_empty() => int.to_string(),
        Some((int, frac)) => format!("{int}.{}", frac.trim_end_matches('0')),
        None => s,
    }
}
use serde::Serialize;

use super::client::ChainClient;
use super::ChainError;

/// A transaction an action will send, not yet checked against the chain.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The contract function, e.g. `BondingManager.unbond`.
    pub what: String,
    /// What it does, in words: amounts, lock, account.
    pub description: String,
    pub tx: TransactionRequest,
}

/// A mined transaction, from its receipt.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub tx: B256,
    pub block: Option<u64>,
    pub gas_used: u64,
}

/// One unbonding lock: stake that can be withdrawn from `withdraw_round`,
/// or rebonded before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnbondingLock {
    pub id: u64,
    /// Wei of LPT.
    pub amount: U256,
    pub withdraw_round: u64,
}

/// The account as a delegator on the BondingManager.
#[derive(Debug, Clone, Serialize)]
pub struct DelegatorState {
    pub address: Address,
    /// Wei of LPT, as of the last claim.
    pub bonded: U256,
    pub delegate: Address,
    /// Bonded stake with the rewards earned up to the current round.
    pub pending_stake: U256,
    /// Fees earned up to the current round, in wei of ETH.
    pub pending_fees: U256,
    pub last_claim_round: u64,
    pub current_round: u64,
    /// Open locks only (withdrawn and rebonded ones are gone).
    pub unbonding_locks: Vec<UnbondingLock>,
}

/// The account as a ticket sender on the TicketBroker.
#[derive(Debug, Clone, Serialize)]
pub struct SenderState {
    pub address: Address,
    /// Wei of ETH.
    pub deposit: U256,
    pub reserve: U256,
    /// The round from which `withdraw` may be called; 0 when not unlocking.
    pub withdraw_round: u64,
    pub current_round: u64,
}

fn round(v: U256) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl ChainClient {
    /// Checks `plan` without sending it; returns the gas estimate.
    pub async fn dry_run(&self, plan: &Planned) -> Result<u64, ChainError> {
        self.preflight(&plan.what, plan.tx.clone()).await
    }

    /// Sends `plan` (checked again first: nothing is sent if it would
    /// revert) and waits for its receipt.
    pub async fn execute(&self, plan: Planned) -> Result<Sent, ChainError> {
        let receipt = self.send(&plan.what, plan.tx).await?;
        Ok(Sent {
            tx: receipt.transaction_hash,
            block: receipt.block_number,
            gas_used: receipt.gas_used,
        })
    }

    pub async fn delegator_state(&self) -> Result<DelegatorState, ChainError> {
        let me = self.account();
        let bm = self.bonding_manager().await?;
        let current_round = self.round_info().await?.current_round;
        let d = bm
            .getDelegator(me)
            .call()
            .await
            .map_err(|e| self.call_error("getDelegator", e))?;
        let end = U256::from(current_round);
        let (pending_stake, pending_fees) = if d.bondedAmount.is_zero() && d.fees.is_zero() {
            (U256::ZERO, U256::ZERO)
        } else {
            (
                bm.pendingStake(me, end)
                    .call()
                    .await
                    .map_err(|e| self.call_error("pendingStake", e))?,
                bm.pendingFees(me, end)
                    .call()
                    .await
                    .map_err(|e| self.call_error("pendingFees", e))?,
            )
        };
        let mut unbonding_locks = Vec::new();
        for id in 0..round(d.nextUnbondingLockId) {
            let lock = bm
                .getDelegatorUnbondingLock(me, U256::from(id))
                .call()
                .await
                .map_err(|e| self.call_error("getDelegatorUnbondingLock", e))?;
            if !lock.amount.is_zero() {
                unbonding_locks.push(UnbondingLock {
                    id,
                    amount: lock.amount,
                    withdraw_round: round(lock.withdrawRound),
                });
            }
        }
        Ok(DelegatorState {
            address: me,
            bonded: d.bondedAmount,
            delegate: d.delegateAddress,
            pending_stake,
            pending_fees,
            last_claim_round: round(d.lastClaimRound),
            current_round,
            unbonding_locks,
        })
    }

    pub async fn sender_state(&self) -> Result<SenderState, ChainError> {
        let me = self.account();
        let info = self
            .ticket_broker()
            .await?
            .getSenderInfo(me)
            .call()
            .await
            .map_err(|e| self.call_error("getSenderInfo", e))?;
        Ok(SenderState {
            address: me,
            deposit: info.sender.deposit,
            reserve: info.reserve.fundsRemaining,
            withdraw_round: round(info.sender.withdrawRound),
            current_round: self.round_info().await?.current_round,
        })
    }

    async fn open_lock(&self, lock_id: u64) -> Result<UnbondingLock, ChainError> {
        self.delegator_state()
            .await?
            .unbonding_locks
            .into_iter()
            .find(|l| l.id == lock_id)
            .ok_or_else(|| {
                ChainError::Refused(format!(
                    "{} has no unbonding lock {lock_id} (withdrawn, rebonded or never made): see the locks with `lpworker orchestrator status`",
                    self.account()
                ))
            })
    }

    /// `unbond(amount)`: moves `amount` of the bond into a new unbonding lock.
    pub async fn plan_unbond(&self, amount: U256) -> Result<Planned, ChainError> {
        if amount.is_zero() {
            return Err(ChainError::Refused(
                "unbond amount must be above zero".into(),
            ));
        }
        let bm = self.bonding_manager().await?;
        Ok(Planned {
            what: "BondingManager.unbond".into(),
            description: format!(
                "unbond {} LPT of {}'s bond into a new unbonding lock",
                decimal(amount),
                self.account()
            ),
            tx: bm.unbond(amount).into_transaction_request(),
        })
    }

    /// `rebond(lock)` back to the current delegate, or, when nothing is
    /// bonded any more, `rebondFromUnbonded(to, lock)` (`to` defaults to the
    /// account itself).
    pub async fn plan_rebond(
        &self,
        lock_id: u64,
        to: Option<Address>,
    ) -> Result<Planned, ChainError> {
        let lock = self.open_lock(lock_id).await?;
        let state = self.delegator_state().await?;
        let bm = self.bonding_manager().await?;
        let amount = decimal(lock.amount);
        if state.bonded.is_zero() {
            let to = to.unwrap_or(self.account());
            return Ok(Planned {
                what: "BondingManager.rebondFromUnbonded".into(),
                description: format!(
                    "rebond unbonding lock {lock_id} ({amount} LPT) of {} to {to}",
                    self.account()
                ),
                tx: bm
                    .rebondFromUnbonded(to, U256::from(lock_id))
                    .into_transaction_request(),
            });
        }
        if let Some(to) = to.filter(|to| *to != state.delegate) {
            return Err(ChainError::Refused(format!(
                "{} is bonded to {}: a lock rebonds to the current delegate, not {to}",
                self.account(),
                state.delegate
            )));
        }
        Ok(Planned {
            what: "BondingManager.rebond".into(),
            description: format!(
                "rebond unbonding lock {lock_id} ({amount} LPT) of {} to {}",
                self.account(),
                state.delegate
            ),
            tx: bm.rebond(U256::from(lock_id)).into_transaction_request(),
        })
    }

    /// `withdrawStake(lock)`: the lock's LPT back to the account, from its
    /// withdraw round on.
    pub async fn plan_withdraw_stake(&self, lock_id: u64) -> Result<Planned, ChainError> {
        let lock = self.open_lock(lock_id).await?;
        let bm = self.bonding_manager().await?;
        Ok(Planned {
            what: "BondingManager.withdrawStake".into(),
            description: format!(
                "withdraw unbonding lock {lock_id} ({} LPT, withdrawable from round {}) to {}",
                decimal(lock.amount),
                lock.withdraw_round,
                self.account()
            ),
            tx: bm
                .withdrawStake(U256::from(lock_id))
                .into_transaction_request(),
        })
    }

    /// `withdrawFees(account, amount)`: all fees earned when `amount` is
    /// not given. Refused when there are none.
    pub async fn plan_withdraw_fees(&self, amount: Option<U256>) -> Result<Planned, ChainError> {
        let state = self.delegator_state().await?;
        let amount = amount.unwrap_or(state.pending_fees);
        if amount.is_zero() {
            return Err(ChainError::Refused(format!(
                "{} has no fees to withdraw (pending fees {} ETH)",
                self.account(),
                decimal(state.pending_fees)
            )));
        }
        let bm = self.bonding_manager().await?;
        Ok(Planned {
            what: "BondingManager.withdrawFees".into(),
            description: format!(
                "withdraw {} ETH of fees (of {} ETH earned) to {}",
                decimal(amount),
                decimal(state.pending_fees),
                self.account()
            ),
            tx: bm
                .withdrawFees(self.account(), amount)
                .into_transaction_request(),
        })
    }

    /// `claimEarnings(end_round)`: rewards and fees up to `end_round`
    /// (default the current round). Refused when already claimed that far:
    /// this protocol version would accept it and only spend gas.
    pub async fn plan_claim_earnings(&self, end_round: Option<u64>) -> Result<Planned, ChainError> {
        let state = self.delegator_state().await?;
        let end = end_round.unwrap_or(state.current_round);
        if end > state.current_round {
            return Err(ChainError::Refused(format!(
                "round {end} is after the current round {}",
                state.current_round
            )));
        }
        if end <= state.last_claim_round {
            return Err(ChainError::Refused(format!(
                "{} has claimed its earnings through round {} already",
                self.account(),
                state.last_claim_round
            )));
        }
        let bm = self.bonding_manager().await?;
        Ok(Planned {
            what: "BondingManager.claimEarnings".into(),
            description: format!(
                "claim {}'s earnings for rounds {} to {end}: stake {} LPT -> {} LPT, fees {} ETH",
                self.account(),
                state.last_claim_round + 1,
                decimal(state.bonded),
                decimal(state.pending_stake),
                decimal(state.pending_fees)
            ),
            tx: bm.claimEarnings(U256::from(end)).into_transaction_request(),
        })
    }

    /// `setServiceURI(uri)`. Refused when it is that already.
    pub async fn plan_set_service_uri(&self, uri: &str) -> Result<Planned, ChainError> {
        let current = self.service_uri(self.account()).await?;
        if current == uri {
            return Err(ChainError::Refused(format!(
                "the service URI of {} is {uri} already",
                self.account()
            )));
        }
        let sr = super::contracts::ServiceRegistry::new(
            self.address("ServiceRegistry").await?,
            self.provider(),
        );
        Ok(Planned {
            what: "ServiceRegistry.setServiceURI".into(),
            description: format!(
                "set the service URI of {} to {uri} (was {})",
                self.account(),
                if current.is_empty() {
                    "unset"
                } else {
                    &current
                }
            ),
            tx: sr.setServiceURI(uri.to_string()).into_transaction_request(),
        })
    }

    /// Funds the account as a ticket sender: `fundDeposit`, `fundReserve`
    /// or `fundDepositAndReserve`, paying `deposit + reserve` wei.
    pub async fn plan_fund(&self, deposit: U256, reserve: U256) -> Result<Planned, ChainError> {
        if deposit.is_zero() && reserve.is_zero() {
            return Err(ChainError::Refused(
                "give a deposit or a reserve above zero".into(),
            ));
        }
        let tb = self.ticket_broker().await?;
        let value = deposit + reserve;
        let (what, tx) = if reserve.is_zero() {
            (
                "fundDeposit",
                tb.fundDeposit().value(value).into_transaction_request(),
            )
        } else if deposit.is_zero() {
            (
                "fundReserve",
                tb.fundReserve().value(value).into_transaction_request(),
            )
        } else {
            (
                "fundDepositAndReserve",
                tb.fundDepositAndReserve(deposit, reserve)
                    .value(value)
                    .into_transaction_request(),
            )
        };
        Ok(Planned {
            what: format!("TicketBroker.{what}"),
            description: format!(
                "add {} ETH to the deposit and {} ETH to the reserve of {} (pays {} ETH)",
                decimal(deposit),
                decimal(reserve),
                self.account(),
                decimal(value)
            ),
            tx,
        })
    }

    /// `unlock()`: starts the unlock period after which `withdraw` returns
    /// the deposit and reserve.
    pub async fn plan_unlock(&self) -> Result<Planned, ChainError> {
        let tb = self.ticket_broker().await?;
        let period = tb
            .unlockPeriod()
            .call()
            .await
            .map_err(|e| self.call_error("unlockPeriod", e))?;
        Ok(Planned {
            what: "TicketBroker.unlock".into(),
            description: format!(
                "start unlocking the deposit and reserve of {}: withdrawable after {period} rounds",
                self.account()
            ),
            tx: tb.unlock().into_transaction_request(),
        })
    }

    /// `cancelUnlock()`: the deposit and reserve stay, and the account can
    /// be paid with tickets again. Refused when nothing is unlocking.
    pub async fn plan_cancel_unlock(&self) -> Result<Planned, ChainError> {
        let s = self.sender_state().await?;
        if s.withdraw_round == 0 {
            return Err(ChainError::Refused(format!(
                "{} is not unlocking its deposit and reserve: nothing to cancel",
                self.account()
            )));
        }
        let tb = self.ticket_broker().await?;
        Ok(Planned {
            what: "TicketBroker.cancelUnlock".into(),
            description: format!(
                "cancel the unlock of {}'s deposit ({} ETH) and reserve ({} ETH), due in round {}",
                self.account(),
                decimal(s.deposit),
                decimal(s.reserve),
                s.withdraw_round
            ),
            tx: tb.cancelUnlock().into_transaction_request(),
        })
    }

    /// `withdraw()`: the whole deposit and reserve back to the account,
    /// once unlocked.
    pub async fn plan_withdraw(&self) -> Result<Planned, ChainError> {
        let s = self.sender_state().await?;
        if s.withdraw_round == 0 {
            return Err(ChainError::Refused(format!(
                "{} has not unlocked its deposit and reserve: run `lpworker orchestrator unlock` first",
                self.account()
            )));
        }
        if s.current_round < s.withdraw_round {
            return Err(ChainError::Refused(format!(
                "the deposit and reserve of {} unlock in round {}; the current round is {}",
                self.account(),
                s.withdraw_round,
                s.current_round
            )));
        }
        let tb = self.ticket_broker().await?;
        Ok(Planned {
            what: "TicketBroker.withdraw".into(),
            description: format!(
                "withdraw the deposit ({} ETH) and reserve ({} ETH) of {} to it",
                decimal(s.deposit),
                decimal(s.reserve),
                self.account()
            ),
            tx: tb.withdraw().into_transaction_request(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_as_short_decimals() {
        let e = |v: &str| alloy_primitives::utils::parse_ether(v).unwrap();
        assert_eq!(decimal(e("100")), "100");
        assert_eq!(decimal(e("0.25")), "0.25");
        assert_eq!(decimal(U256::ZERO), "0");
        assert_eq!(decimal(U256::from(1)), "0.000000000000000001");
    }
}
