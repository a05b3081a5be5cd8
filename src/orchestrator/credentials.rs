//! The credentials every paid request carries, checked one way for
//! segments, AI requests, `/payment` and Live Runner sessions:
//! `Livepeer-Payment` (a protobuf `Payment`) and `Livepeer-Segment` (a
//! protobuf `SegData` with the session's auth token and, on chain, the
//! gateway's signature).

use alloy_primitives::Address;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use prost::Message;

use super::auth::AuthTokens;
use super::payments::{PaymentError, Payments};
use crate::log_limit::{SharedRateLimitedLog, REFUSAL_LOG_INTERVAL};
use crate::proto::lp_rpc as net;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Checks a request's `Livepeer-Segment` (session credentials) and
/// `Livepeer-Payment` headers as `/segment` does; returns the session id.
/// On chain the segment credentials must carry the paying sender's
/// signature (go-livepeer's `verifySegCreds`), so no one can spend another
/// gateway's credit or pose as it.
pub async fn check(
    auth: &AuthTokens,
    payments: Option<&Payments>,
    headers: &HeaderMap,
) -> Result<(String, net::SegData, net::Payment), (StatusCode, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let payment = match b64
        .decode(header(headers, "Livepeer-Payment"))
        .map(|b| net::Payment::decode(b.as_slice()))
    {
        Ok(Ok(p)) => p,
        _ => return Err((StatusCode::PAYMENT_REQUIRED, "Invalid payment".into())),
    };
    let seg = match b64
        .decode(header(headers, "Livepeer-Segment"))
        .map(|b| net::SegData::decode(b.as_slice()))
    {
        Ok(Ok(s)) => s,
        _ => return Err((StatusCode::FORBIDDEN, "Invalid segment credentials".into())),
    };
    if payment.ticket_params.is_some() && payments.is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            "this orchestrator runs off chain and takes no tickets".into(),
        ));
    }
    // The cheap HMAC check first, then the signature.
    let session = match auth.verify(seg.auth_token.as_ref()) {
        Ok(s) => s.to_string(),
        Err(e) => return Err((StatusCode::FORBIDDEN, e.to_string())),
    };
    if payments.is_some() {
        // go-livepeer takes a missing sender as the zero address, which
        // no signature recovers to.
        let sender = if payment.sender.len() == 20 {
            Address::from_slice(&payment.sender)
        } else {
            Address::ZERO
        };
        if !super::auth::session_pays_as(&session, sender) {
            return Err((
                StatusCode::FORBIDDEN,
                "auth token was issued to another sender".into(),
            ));
        }
        // One signature recovery: off the async threads like the tickets'.
        let seg_for_check = seg.clone();
        let signed = tokio::task::spawn_blocking(move || {
            crate::lp_rpc::seg_creds::verify(&seg_for_check, sender)
        })
        .await
        .expect("signature check does not panic");
        if !signed {
            return Err((StatusCode::FORBIDDEN, "Sig check failed".into()));
        }
    }
    Ok((session, seg, payment))
}

/// A refused payment's answer: 503 when this node could not check it (store
/// or chain trouble, told generically), else 400 as go-livepeer answers
/// payment errors.
pub fn refusal(e: &PaymentError) -> (StatusCode, String) {
    let status = if e.is_internal() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, e.public_message())
}

/// Where a refused payment's log line is limited: the gateway's faults
/// (anyone can send those at will) apart from this node's own, so a flood
/// of junk never hides a store or chain failure.
pub fn refusal_log(e: &PaymentError) -> &'static SharedRateLimitedLog {
    static GATEWAYS: SharedRateLimitedLog = SharedRateLimitedLog::new(REFUSAL_LOG_INTERVAL);
    static BUSY: SharedRateLimitedLog = SharedRateLimitedLog::new(REFUSAL_LOG_INTERVAL);
    static OURS: SharedRateLimitedLog = SharedRateLimitedLog::new(REFUSAL_LOG_INTERVAL);
    if matches!(e, PaymentError::FundsLookupsBusy) {
        // A flood of fresh keys causes it: never in the node's own bucket.
        &BUSY
    } else if e.is_internal() {
        &OURS
    } else {
        &GATEWAYS
    }
}
