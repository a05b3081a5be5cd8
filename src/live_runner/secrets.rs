//! Per-runner secrets, derived as go-livepeer derives them
//! (`ai/runner/live_runner.go`, 176aa415): one random 32-byte seed per
//! runner, and every secret is `lowercase(base32(HMAC-SHA256(seed, label)))`
//! without padding. The heartbeat secret, each session's token and the O2R
//! channel name are labels of the same seed, so nothing but the seed needs
//! keeping (and persisting) to recognise them again.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Base32 as Go's `base32.StdEncoding.WithPadding(NoPadding)`, lowercased.
fn base32_lower(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

/// `prefix` and `chars` random base32 characters: runner, session and proxy IDs.
pub fn random_id(prefix: &str, chars: usize) -> String {
    // 5 bits per character; enough random bytes to fill them.
    let bytes: Vec<u8> = (0..chars.div_ceil(8) * 5).map(|_| rand::random()).collect();
    let mut id = base32_lower(&bytes);
    id.truncate(chars);
    format!("{prefix}{id}")
}

#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(…)")
    }
}

impl Seed {
    pub fn random() -> Seed {
        Seed(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Seed {
        Seed(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn derive(&self, label: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        base32_lower(&mac.finalize().into_bytes())
    }

    /// What a dynamic runner sends in `Authorization` after registering.
    pub fn heartbeat_secret(&self) -> String {
        self.derive("heartbeat")
    }

    /// `Livepeer-Session-Token` of session `sid`: proves a callback comes
    /// from the runner the session was proxied to.
    pub fn session_token(&self, sid: &str) -> String {
        self.derive(&format!("session:{sid}"))
    }

    /// The orchestrator-to-runner channel: unguessable, so only its runner reads it.
    pub fn o2r_channel(&self, runner_id: &str) -> String {
        let tag = self.derive("trickle:o2r");
        format!("{runner_id}-{}-o2r", &tag[..16])
    }
}

/// Compares secrets in time independent of where they differ.
pub fn secret_eq(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_go_livepeers_hmac_in_lowercase_unpadded_base32() {
        let seed = Seed::from_bytes([7; 32]);
        // HMAC-SHA256 is 32 bytes: 52 base32 characters without padding.
        let hb = seed.heartbeat_secret();
        assert_eq!(hb.len(), 52);
        assert!(hb
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        let mac = {
            let mut m = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
            m.update(b"heartbeat");
            m.finalize().into_bytes()
        };
        assert_eq!(
            data_encoding::BASE32_NOPAD
                .decode(hb.to_ascii_uppercase().as_bytes())
                .unwrap(),
            mac.to_vec()
        );
        assert_ne!(seed.session_token("a"), seed.session_token("b"));
        assert_ne!(Seed::random().heartbeat_secret(), hb);
        let o2r = seed.o2r_channel("runner_abcdefgh");
        assert!(o2r.starts_with("runner_abcdefgh-") && o2r.ends_with("-o2r"));
        assert_eq!(o2r.len(), "runner_abcdefgh-".len() + 16 + 4);
    }

    #[test]
    fn ids_have_their_prefix_and_length() {
        let id = random_id("session_", 8);
        assert_eq!(id.len(), 16);
        assert!(id.starts_with("session_"));
        assert_eq!(random_id("", 26).len(), 26);
        assert_ne!(random_id("", 26), random_id("", 26));
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("ab", "abc"));
        assert!(!secret_eq("", "abc"));
    }
}
