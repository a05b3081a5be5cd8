//! Session auth tokens, as go-livepeer issues them in `OrchestratorInfo`:
//! `token = HMAC-SHA256(node secret, session_id || expiration)`, opaque to
//! gateways and checked on every segment.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pm::ticket::minimal_bytes;
use crate::proto::lp_rpc::AuthToken;

/// How long a token is valid (go-livepeer's `authTokenValidPeriod`).
pub const VALID_SECONDS: i64 = 30 * 60;

pub struct AuthTokens {
    secret: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing auth token")]
    Missing,
    #[error("invalid auth token")]
    Invalid,
    #[error("expired auth token")]
    Expired,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// 64 bits of keccak256(address): too many to grind an address that shares it.
fn sender_tag(address: alloy_primitives::Address) -> String {
    alloy_primitives::hex::encode(&alloy_primitives::keccak256(address)[..8])
}

/// Whether a session id may pay with `sender`'s tickets: ids bound to a
/// gateway only with its own; unbound ids (off chain) with any.
pub fn session_pays_as(session_id: &str, sender: alloy_primitives::Address) -> bool {
    match session_id.split_once('-') {
        Some((_, tag)) => {
            crate::worker::constant_time_eq(tag.as_bytes(), sender_tag(sender).as_bytes())
        }
        None => true,
    }
}

impl AuthTokens {
    pub fn new(secret: [u8; 32]) -> Self {
        AuthTokens { secret }
    }

    fn mac(&self, session_id: &str, expiration: i64) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(session_id.as_bytes());
        mac.update(&minimal_bytes(alloy_primitives::U256::from(
            expiration.max(0) as u64,
        )));
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for a new session with a random id, bound to `gateway` when
    /// given (the address whose signature GetOrchestrator checked): the id
    /// then ends in a tag of that address, which the HMAC covers, so the
    /// token pays only with that sender's tickets and credit. A segment
    /// signature seen elsewhere cannot be replayed with another token.
    pub fn issue(&self, gateway: Option<alloy_primitives::Address>) -> AuthToken {
        self.issue_random(gateway, 8)
    }

    /// As [`issue`](Self::issue), with `hex_digits` random hex digits in
    /// the session ID: a Live Runner session's ID is also what its URLs
    /// (and its unauthenticated stop, as go-livepeer has it) are reached
    /// by, so it gets more than go-livepeer's 32 random bits.
    pub fn issue_random(
        &self,
        gateway: Option<alloy_primitives::Address>,
        hex_digits: usize,
    ) -> AuthToken {
        let mut session_id: String = (0..hex_digits)
            .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
            .collect();
        if let Some(address) = gateway {
            session_id.push('-');
            session_id.push_str(&sender_tag(address));
        }
        let expiration = now() + VALID_SECONDS;
        AuthToken {
            token: self.mac(&session_id, expiration),
            session_id,
            expiration,
        }
    }

    /// A fresh token for an existing session ID (go-livepeer's
    /// `/refresh-payment`): the ID, and so the payer it is bound to, stay.
    pub fn reissue(&self, session_id: &str) -> AuthToken {
        let expiration = now() + VALID_SECONDS;
        AuthToken {
            token: self.mac(session_id, expiration),
            session_id: session_id.to_string(),
            expiration,
        }
    }

    /// Checks a token from a gateway; returns its session id.
    pub fn verify<'a>(&self, token: Option<&'a AuthToken>) -> Result<&'a str, AuthError> {
        let t = token.ok_or(AuthError::Missing)?;
        let expected = self.mac(&t.session_id, t.expiration);
        let same = crate::worker::constant_time_eq(&expected, &t.token);
        if !same || t.session_id.is_empty() {
            return Err(AuthError::Invalid);
        }
        if t.expiration < now() {
            return Err(AuthError::Expired);
        }
        Ok(&t.session_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let auth = AuthTokens::new([7; 32]);
        let t = auth.issue(None);
        assert_eq!(auth.verify(Some(&t)), Ok(t.session_id.as_str()));
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        let forged = AuthToken {
            session_id: "other".into(),
            ..t.clone()
        };
        assert_eq!(auth.verify(Some(&forged)), Err(AuthError::Invalid));
        let extended = AuthToken {
            expiration: t.expiration + 3600,
            ..t.clone()
        };
        assert_eq!(auth.verify(Some(&extended)), Err(AuthError::Invalid));
        assert_eq!(
            AuthTokens::new([8; 32]).verify(Some(&t)),
            Err(AuthError::Invalid)
        );
        let old = AuthTokens::new([7; 32]);
        let mut stale = old.issue(None);
        stale.expiration = 1;
        stale.token = old.mac(&stale.session_id, 1);
        assert_eq!(old.verify(Some(&stale)), Err(AuthError::Expired));
    }
}
