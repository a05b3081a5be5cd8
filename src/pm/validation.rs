//! Validating a whole payment: its tickets in go-livepeer's order, with
//! the sender monitor deciding what winners the sender can still back.

use alloy_primitives::U256;

use super::recipient::{
    check_signature, ChainView, ReceivedTicket, Recipient, SenderFunds, TicketError,
};
use super::sender_monitor::SenderMonitor;

/// Below this many tickets a payment is validated on one thread.
const PARALLEL_MIN_TICKETS: usize = 64;

/// What validating one payment's tickets came to.
#[derive(Debug, Default)]
pub struct Validation {
    pub accepted: usize,
    pub credited: U256,
    /// Winners to store, with their recipientRand (already counted as
    /// pending in the sender monitor).
    pub winners: Vec<(ReceivedTicket, U256)>,
    pub rejected: Vec<String>,
    /// The error that stopped the payment, if one did.
    pub fatal: Option<TicketError>,
}

/// Validates a payment's tickets in order, as go-livepeer does: the first
/// fatal error stops the payment (what was accepted before it stays
/// credited), a bad signature only skips its ticket. The signatures, the
/// costly and stateless part, are checked first across all cores; the
/// rest (nonces, the sender's float) runs in order on this thread.
pub fn validate_payment(
    recipient: &Recipient,
    monitor: &SenderMonitor,
    tickets: &[ReceivedTicket],
    view: &ChainView,
    funds: &SenderFunds,
    threads: usize,
) -> Validation {
    let checked = check_in_parallel(recipient, tickets, view, funds, threads);
    let mut out = Validation::default();
    for (r, pre) in tickets.iter().zip(checked) {
        let sender = r.ticket.sender;
        let accepted =
            pre.and_then(|rand| recipient.accept(r, rand, view, monitor.max_float(sender, funds)));
        let v = match accepted {
            Ok(v) => v,
            Err(e) if e.is_fatal() => {
                out.fatal = Some(e);
                break;
            }
            Err(e) => {
                out.rejected.push(e.to_string());
                continue;
            }
        };
        if v.params_expired {
            // No credit for it and the payment stops, but a winner is still
            // owed to us: the broker does not check params expiry.
            if v.winning {
                monitor.add_pending(sender, r.ticket.face_value);
                out.winners.push((r.clone(), v.recipient_rand));
            }
            out.fatal = Some(TicketError::ParamsExpired(r.expiration_block));
            break;
        }
        if v.winning {
            if let Err(max_float) = monitor.admit_winner(sender, funds, r.ticket.face_value) {
                // Concurrent payments spent the float meanwhile.
                out.fatal = Some(TicketError::FaceValueTooHigh {
                    face_value: r.ticket.face_value,
                    max_float,
                });
                break;
            }
            out.winners.push((r.clone(), v.recipient_rand));
        }
        out.accepted += 1;
        out.credited += v.expected_value;
    }
    out
}

/// The stateless checks of every ticket (params commitment, signature),
/// spread over `threads` threads for large payments. std's scoped threads
/// are enough here: chunks of one slice, no work stealing needed.
fn check_in_parallel(
    recipient: &Recipient,
    tickets: &[ReceivedTicket],
    view: &ChainView,
    funds: &SenderFunds,
    threads: usize,
) -> Vec<Result<U256, TicketError>> {
    let check = |r: &ReceivedTicket| {
        let rand = recipient.check_params(r, view, funds)?;
        check_signature(r)?;
        Ok(rand)
    };
    if tickets.len() < PARALLEL_MIN_TICKETS || threads <= 1 {
        return tickets.iter().map(check).collect();
    }
    let chunk = tickets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = tickets
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ticket check does not panic"))
            .collect()
    })
}
