//! Redeeming winning tickets on the TicketBroker.
//!
//! Every check the broker would make that can fail for reasons other than
//! a bug is made first, with reads, so a ticket that cannot pay is never
//! sent: already used (redeemed by us before a crash, or elsewhere),
//! expired, creation round block hash not the chain's, sender with neither
//! deposit nor reserve for us. What remains is caught by the gas estimate.
//! A transaction already sent for a ticket (recorded by nonce before it
//! was broadcast) is found again before anything else is sent: if its
//! nonce is still unmined it is replaced at that nonce, so at most one
//! redemption of a ticket is ever mined.

use alloy::providers::DynProvider;
use alloy_primitives::{Bytes, B256, U256};

use super::client::ChainClient;
use super::contracts::{MTicketBrokerCore, TicketBroker};
use super::ChainError;
use crate::pm::store::{Status, WinningTicket};

/// What one redemption attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    Redeemed {
        tx: B256,
        face_value: U256,
    },
    /// The broker already has it as used: never sent again.
    AlreadyUsed,
    /// Its creation round is past the validity period.
    Expired {
        creation_round: i64,
        current_round: u64,
    },
    /// The creation round's block hash on chain differs (a reorg or a
    /// forged aux data): the broker would refuse it.
    BlockHashMismatch,
    /// The sender has no deposit and no reserve share for us (now: a
    /// reserve share can be claimed again next round, so it waits).
    SenderUnfunded,
    /// The broker refuses it for another reason (reported by the node).
    Refused(String),
}

impl RedeemOutcome {
    /// The store state this outcome leaves the ticket in.
    pub fn status(&self) -> Status {
        match self {
            RedeemOutcome::Redeemed { .. } => Status::Redeemed,
            RedeemOutcome::AlreadyUsed => Status::Used,
            RedeemOutcome::Expired { .. } | RedeemOutcome::BlockHashMismatch => Status::Expired,
            RedeemOutcome::SenderUnfunded => Status::Queued,
            RedeemOutcome::Refused(_) => Status::Failed,
        }
    }
}

/// The broker's expiry rule: redeemable while `creationRound +
/// ticketValidityPeriod > currentRound`.
pub fn is_expired(creation_round: i64, validity_period: u64, current_round: u64) -> bool {
    u64::try_from(creation_round)
        .unwrap_or(0)
        .saturating_add(validity_period)
        <= current_round
}

/// The contract's tuple form of a ticket.
pub fn to_contract_ticket(t: &crate::pm::Ticket) -> MTicketBrokerCore::Ticket {
    MTicketBrokerCore::Ticket {
        recipient: t.recipient,
        sender: t.sender,
        faceValue: t.face_value,
        winProb: t.win_prob,
        senderNonce: U256::from(t.sender_nonce),
        recipientRandHash: t.recipient_rand_hash,
        auxData: Bytes::from(t.aux_data()),
    }
}

impl ChainClient {
    pub async fn ticket_broker(
        &self,
    ) -> Result<TicketBroker::TicketBrokerInstance<&DynProvider>, ChainError> {
        Ok(TicketBroker::new(
            self.address("TicketBroker").await?,
            self.provider(),
        ))
    }

    /// The broker's ticket validity period, in rounds.
    pub async fn ticket_validity_period(&self) -> Result<u64, ChainError> {
        let v = self
            .ticket_broker()
            .await?
            .ticketValidityPeriod()
            .call()
            .await
            .map_err(|e| self.call_error("ticketValidityPeriod", e))?;
        Ok(u64::try_from(v).unwrap_or(u64::MAX))
    }

    /// The sender's deposit plus the part of its reserve this recipient may
    /// still claim this round: what a winning ticket can be paid from.
    pub async fn sender_funds(
        &self,
        sender: alloy_primitives::Address,
    ) -> Result<(U256, U256), ChainError> {
        let (deposit, claimable, _) = self.sender_info(sender).await?;
        Ok((deposit, claimable))
    }

    /// `(deposit, reserve share claimable by us, withdraw round)` for a
    /// sender: what ticket validation checks.
    pub async fn sender_info(
        &self,
        sender: alloy_primitives::Address,
    ) -> Result<(U256, U256, U256), ChainError> {
        let tb = self.ticket_broker().await?;
        let info = tb
            .getSenderInfo(sender)
            .call()
            .await
            .map_err(|e| self.call_error("getSenderInfo", e))?;
        // No reserve, nothing claimable: an unfunded sender (anyone's fresh
        // key asking for ticket params) costs one chain read, not two.
        let claimable = if info.reserve.fundsRemaining.is_zero() {
            U256::ZERO
        } else {
            tb.claimableReserve(sender, self.orchestrator())
                .call()
                .await
                .map_err(|e| self.call_error("claimableReserve", e))?
        };
        Ok((info.sender.deposit, claimable, info.sender.withdrawRound))
    }

    /// Redeems one winning ticket, checking first. Errors are transient
    /// (node unreachable, no receipt): the caller retries later, and the
    /// `usedTickets` check then stops a second send if the first landed.
    pub async fn redeem(&self, w: &WinningTicket) -> Result<RedeemOutcome, ChainError> {
        let mut ctx = RedeemContext::read(self).await?;
        self.redeem_with(w, &mut ctx, None, &mut |_, _| Ok(()))
            .await
    }

    /// [`redeem`](Self::redeem) with round facts shared across a batch.
    /// `sent_before` is the nonce of a transaction already sent for this
    /// ticket, if any; `record` is told the nonce (and hash) of the one
    /// sent now before it is broadcast.
    pub async fn redeem_with(
        &self,
        w: &WinningTicket,
        ctx: &mut RedeemContext,
        sent_before: Option<u64>,
        record: &mut (dyn FnMut(u64, Option<B256>) -> Result<(), String> + Send),
    ) -> Result<RedeemOutcome, ChainError> {
        let ticket = &w.ticket;
        let hash = ticket.hash();
        let tb = self.ticket_broker().await?;
        // The account's mined nonce before the ticket's state: a transaction
        // of ours mined in between then shows as used, never as pending.
        let mined = match sent_before {
            Some(_) => Some(self.mined_nonce().await?),
            None => None,
        };
        if tb
            .usedTickets(hash)
            .call()
            .await
            .map_err(|e| self.call_error("usedTickets", e))?
        {
            return Ok(RedeemOutcome::AlreadyUsed);
        }
        // Not used yet. An earlier transaction whose nonce is not mined is
        // still pending (or was dropped): replace it at that nonce. One
        // whose nonce is mined went elsewhere: send anew.
        let replace = match (sent_before, mined) {
            (Some(n), Some(m)) if m <= n => Some(n),
            _ => None,
        };
        let creation = u64::try_from(ticket.creation_round).unwrap_or(0);
        if is_expired(
            ticket.creation_round,
            ctx.validity_period,
            ctx.current_round,
        ) {
            return Ok(RedeemOutcome::Expired {
                creation_round: ticket.creation_round,
                current_round: ctx.current_round,
            });
        }
        let block_hash = match ctx.block_hashes.get(&creation) {
            Some(h) => *h,
            None => {
                let h = self.block_hash_for_round(creation).await?;
                ctx.block_hashes.insert(creation, h);
                h
            }
        };
        if block_hash != ticket.creation_round_block_hash {
            return Ok(RedeemOutcome::BlockHashMismatch);
        }
        let (deposit, claimable) = ctx.sender_funds(self, ticket.sender).await?;
        if deposit.is_zero() && claimable.is_zero() {
            return Ok(RedeemOutcome::SenderUnfunded);
        }
        let call = tb.redeemWinningTicket(
            to_contract_ticket(ticket),
            Bytes::from(w.sig.clone()),
            w.recipient_rand,
        );
        match self
            .send_recorded(
                "TicketBroker.redeemWinningTicket",
                call.into_transaction_request(),
                replace,
                record,
            )
            .await
        {
            Ok(receipt) => {
                ctx.spent(ticket.sender, ticket.face_value);
                Ok(RedeemOutcome::Redeemed {
                    tx: receipt.transaction_hash,
                    face_value: ticket.face_value,
                })
            }
            Err(ChainError::WouldRevert { reason, .. }) => Ok(RedeemOutcome::Refused(reason)),
            // Mined and reverted: a refusal like any other (counted), not
            // a transient error to be retried at our cost every pass.
            Err(ChainError::Reverted { tx, .. }) => Ok(RedeemOutcome::Refused(format!(
                "reverted on chain in transaction {tx}"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Round facts redemption checks, read once per batch.
#[derive(Debug, Clone)]
pub struct RedeemContext {
    pub current_round: u64,
    pub validity_period: u64,
    block_hashes: std::collections::HashMap<u64, B256>,
    /// Senders' (deposit, claimable reserve) as read this batch, kept
    /// current as its redemptions spend them.
    funds: std::collections::HashMap<alloy_primitives::Address, (U256, U256)>,
}

impl RedeemContext {
    pub async fn read(client: &ChainClient) -> Result<RedeemContext, ChainError> {
        Ok(Self::new(
            client.current_round().await?,
            client.ticket_validity_period().await?,
        ))
    }

    pub fn new(current_round: u64, validity_period: u64) -> RedeemContext {
        RedeemContext {
            current_round,
            validity_period,
            block_hashes: Default::default(),
            funds: Default::default(),
        }
    }

    /// A sender's (deposit, claimable reserve), read once per batch.
    pub async fn sender_funds(
        &mut self,
        client: &ChainClient,
        sender: alloy_primitives::Address,
    ) -> Result<(U256, U256), ChainError> {
        if let Some(f) = self.funds.get(&sender) {
            return Ok(*f);
        }
        let f = client.sender_funds(sender).await?;
        self.funds.insert(sender, f);
        Ok(f)
    }

    /// A redemption paid `face_value`: from the deposit first, then the
    /// reserve, as the broker pays.
    pub fn spent(&mut self, sender: alloy_primitives::Address, face_value: U256) {
        if let Some((deposit, claimable)) = self.funds.get_mut(&sender) {
            let from_deposit = face_value.min(*deposit);
            *deposit -= from_deposit;
            *claimable = claimable.saturating_sub(face_value - from_deposit);
        }
    }
}
