//! Segment credentials: the gateway's signature over a segment's metadata
//! (`SegData.sig`), as go-livepeer's `verifySegCreds` checks it before any
//! payment is taken (`server/segment_rpc.go`, `core/streamdata.go`).
//!
//! The signed bytes are go-livepeer's `SegTranscodingMetadata.Flatten()`:
//! the manifest id as sent, the sequence number as 32 big-endian bytes, the
//! 32-byte segment hash, then the profiles as lowercase hex of the first
//! four bytes of keccak256 of each profile name. The signature is the
//! gateway's personal-sign over keccak256 of those bytes.

use alloy_primitives::{keccak256, Address, B256};

use crate::pm::signature::{personal_hash, recover_digest};
use crate::proto::lp_rpc as net;

/// go-livepeer's `Flatten()` of a `SegData`.
pub fn flatten(seg: &net::SegData) -> Vec<u8> {
    // fullProfiles3 over fullProfiles2 over fullProfiles; the legacy
    // `profiles` bytes are ignored, as go-livepeer's coreSegMetadata does.
    let profiles = [&seg.full_profiles3, &seg.full_profiles2, &seg.full_profiles]
        .into_iter()
        .find(|p| !p.is_empty())
        .map_or(&[][..], |p| p.as_slice());
    let mut out = Vec::with_capacity(seg.manifest_id.len() + 64 + profiles.len() * 8);
    out.extend_from_slice(&seg.manifest_id);
    // big.Int.Bytes() of the sequence: its magnitude, left-padded.
    let seq = seg.seq.unsigned_abs().to_be_bytes();
    out.extend_from_slice(&[0u8; 24]);
    out.extend_from_slice(&seq);
    out.extend_from_slice(bytes_to_hash(&seg.hash).as_slice());
    for p in profiles {
        let name = if p.name.is_empty() {
            // go-livepeer names an unnamed profile "net_" + lpms' default name.
            format!("net_{}x{}_{}", p.width, p.height, p.bitrate)
        } else {
            p.name.clone()
        };
        let id = &keccak256(name.as_bytes())[..4];
        for b in id {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    }
    out
}

/// go-ethereum's `BytesToHash`: left-padded, or the last 32 bytes.
fn bytes_to_hash(b: &[u8]) -> B256 {
    let mut h = [0u8; 32];
    let tail = &b[b.len().saturating_sub(32)..];
    h[32 - tail.len()..].copy_from_slice(tail);
    B256::from(h)
}

/// Whether `seg.sig` is `sender`'s signature over [`flatten`]`(seg)`.
pub fn verify(seg: &net::SegData, sender: Address) -> bool {
    let digest = personal_hash(keccak256(flatten(seg)).as_slice());
    matches!(recover_digest(digest, &seg.sig), Ok(signer) if signer == sender && sender != Address::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> net::VideoProfile {
        net::VideoProfile {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn flatten_matches_go_livepeers_test_vector() {
        // core/stream_test.go TestSegmentFlatten: keccak256(Flatten()) of
        // manifest "abcdef", seq 1234, hash "browns" right-padded, and the
        // P144p30fps16x9 and P240p30fps16x9 profiles.
        let mut hash = b"browns".to_vec();
        hash.resize(32, 0);
        let seg = net::SegData {
            manifest_id: b"abcdef".to_vec(),
            seq: 1234,
            hash,
            full_profiles2: vec![profile("P144p30fps16x9"), profile("P240p30fps16x9")],
            ..Default::default()
        };
        assert_eq!(
            keccak256(flatten(&seg)).to_string(),
            "0x08a398e7e7a5a545b0b07d9e7e1eab52b4131e0df1621bd53ee6e7550a15465b"
        );
        // The profiles part is ASCII hex, 8 characters a profile.
        assert!(flatten(&seg).ends_with(b"fca40bf9c0a6517a"));
    }

    #[test]
    fn only_the_senders_signature_over_these_bytes_verifies() {
        let key = secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let sender = crate::pm::signature::address_of(&key.public_key(secp256k1::SECP256K1));
        let mut seg = net::SegData {
            manifest_id: b"5_lpworker/nearest-2x".to_vec(),
            hash: keccak256(b"").to_vec(),
            ..Default::default()
        };
        seg.sig = crate::pm::signature::sign(&key, keccak256(flatten(&seg)).as_slice()).to_vec();
        assert!(verify(&seg, sender));
        assert!(!verify(&seg, Address::repeat_byte(1)), "another sender");
        let mut moved = seg.clone();
        moved.seq = 1;
        assert!(!verify(&moved, sender), "a changed field");
        seg.sig.clear();
        assert!(!verify(&seg, sender), "no signature");
    }
}
