//! Ethereum personal-sign signatures, as go-livepeer signs tickets and
//! verifies them: secp256k1 over keccak256("\x19Ethereum Signed Message:\n32" ||
//! hash), 65 bytes R || S || V with V in {27, 28}, low S required.

use alloy_primitives::{keccak256, Address, B256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};

/// Half the secp256k1 group order: a valid signature's S is at most this.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature is {0} bytes, not 65")]
    Length(usize),
    #[error("signature has a high S value")]
    HighS,
    #[error("signature recovery id V={0} is not 27 or 28")]
    BadV(u8),
    #[error("signature does not recover a public key")]
    Unrecoverable,
}

/// keccak256("\x19Ethereum Signed Message:\n" + len + msg), geth's `TextHash`.
pub fn personal_hash(msg: &[u8]) -> B256 {
    let mut data = format!("\x19Ethereum Signed Message:\n{}", msg.len()).into_bytes();
    data.extend_from_slice(msg);
    keccak256(data)
}

pub fn address_of(key: &PublicKey) -> Address {
    let uncompressed = key.serialize_uncompressed();
    Address::from_slice(&keccak256(&uncompressed[1..])[12..])
}

/// Signs `msg` the way go-livepeer's account manager does.
pub fn sign(key: &SecretKey, msg: &[u8]) -> [u8; 65] {
    let digest = personal_hash(msg);
    let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(digest.0), key);
    let (id, compact) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&compact);
    out[64] = 27 + i32::from(id) as u8;
    out
}

/// The address that signed `msg`, with go-livepeer's checks on the signature's form.
pub fn recover(msg: &[u8], sig: &[u8]) -> Result<Address, SignatureError> {
    recover_digest(personal_hash(msg), sig)
}

/// Like [`recover`], for an already computed personal-sign digest.
pub fn recover_digest(digest: B256, sig: &[u8]) -> Result<Address, SignatureError> {
    if sig.len() != 65 {
        return Err(SignatureError::Length(sig.len()));
    }
    if sig[32..64] > HALF_ORDER[..] {
        return Err(SignatureError::HighS);
    }
    let v = sig[64];
    if v != 27 && v != 28 {
        return Err(SignatureError::BadV(v));
    }
    let id = RecoveryId::try_from(i32::from(v - 27)).map_err(|_| SignatureError::BadV(v))?;
    let rsig = RecoverableSignature::from_compact(&sig[..64], id)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let key = SECP256K1
        .recover_ecdsa(&Message::from_digest(digest.0), &rsig)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_recover() {
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let addr = address_of(&key.public_key(SECP256K1));
        let sig = sign(&key, b"hello");
        assert_eq!(recover(b"hello", &sig), Ok(addr));
        assert_ne!(recover(b"hellO", &sig), Ok(addr));
        assert_eq!(
            recover(b"hello", &sig[..64]),
            Err(SignatureError::Length(64))
        );
        let mut bad_v = sig;
        bad_v[64] = 1;
        assert_eq!(recover(b"hello", &bad_v), Err(SignatureError::BadV(1)));
        let mut high_s = sig;
        high_s[32] = 0xff;
        assert_eq!(recover(b"hello", &high_s), Err(SignatureError::HighS));
    }
}
