//! Probabilistic micropayment tickets: the fields TicketBroker hashes, in the
//! order and widths of its `getTicketHash` (Solidity `abi.encodePacked`).

use alloy_primitives::{keccak256, Address, B256, U256};

/// 2^256 − 1: a ticket with this win probability always wins.
pub const MAX_WIN_PROB: U256 = U256::MAX;

/// A ticket as the sender signs it and the broker redeems it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticket {
    pub recipient: Address,
    pub sender: Address,
    pub face_value: U256,
    pub win_prob: U256,
    pub sender_nonce: u32,
    pub recipient_rand_hash: B256,
    pub creation_round: i64,
    pub creation_round_block_hash: B256,
}

impl Ticket {
    /// `leftPad32(creationRound) || creationRoundBlockHash`, or empty when
    /// both are zero (go-livepeer's `AuxData`).
    pub fn aux_data(&self) -> Vec<u8> {
        if self.creation_round == 0 && self.creation_round_block_hash == B256::ZERO {
            return Vec::new();
        }
        let mut aux = Vec::with_capacity(64);
        aux.extend_from_slice(&U256::from(self.creation_round as u64).to_be_bytes::<32>());
        aux.extend_from_slice(self.creation_round_block_hash.as_slice());
        aux
    }

    /// The tightly packed fields: 168 bytes, plus 64 of aux data.
    pub fn flatten(&self) -> Vec<u8> {
        let (buf, len) = self.packed();
        buf[..len].to_vec()
    }

    /// The packed fields in a stack buffer (hashing is on the hot path), and
    /// how many bytes are used.
    fn packed(&self) -> ([u8; 232], usize) {
        let mut buf = [0u8; 232];
        buf[..20].copy_from_slice(self.recipient.as_slice());
        buf[20..40].copy_from_slice(self.sender.as_slice());
        buf[40..72].copy_from_slice(&self.face_value.to_be_bytes::<32>());
        buf[72..104].copy_from_slice(&self.win_prob.to_be_bytes::<32>());
        buf[132..136].copy_from_slice(&self.sender_nonce.to_be_bytes());
        buf[136..168].copy_from_slice(self.recipient_rand_hash.as_slice());
        let aux = self.aux_data();
        buf[168..168 + aux.len()].copy_from_slice(&aux);
        (buf, 168 + aux.len())
    }

    /// keccak256 of [`flatten`](Self::flatten): what the sender signs and the broker checks.
    pub fn hash(&self) -> B256 {
        let (buf, len) = self.packed();
        keccak256(&buf[..len])
    }

    /// Expected value: faceValue × winProb / (2^256 − 1), rounded down.
    pub fn expected_value(&self) -> U256 {
        expected_value(self.face_value, self.win_prob)
    }
}

/// faceValue × winProb / (2^256 − 1) without overflow.
pub fn expected_value(face_value: U256, win_prob: U256) -> U256 {
    use alloy_primitives::ruint::Uint;
    let wide: Uint<512, 8> = face_value.widening_mul(win_prob);
    let quotient = wide / Uint::<512, 8>::from(MAX_WIN_PROB);
    // The quotient is at most faceValue, so it fits in 256 bits.
    U256::from_limbs_slice(&quotient.as_limbs()[..4])
}

/// Minimal big-endian bytes (Go's `big.Int.Bytes()`: no leading zeros, zero is empty).
pub fn minimal_bytes(v: U256) -> Vec<u8> {
    let bytes = v.to_be_bytes::<32>();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(32);
    bytes[first..].to_vec()
}

/// Parses minimal (or padded) big-endian bytes of at most 32 bytes.
pub fn from_be_bytes(bytes: &[u8]) -> Option<U256> {
    (bytes.len() <= 32).then(|| U256::from_be_slice(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero() -> Ticket {
        Ticket::default()
    }

    fn hex(h: B256) -> String {
        alloy_primitives::hex::encode(h)
    }

    /// go-livepeer's pm/ticket_test.go TestHash vectors.
    #[test]
    fn hash_matches_go_livepeer_vectors() {
        let rrh: B256 = "0x41b1a0649752af1b28b3dc29a1556eee781e4a4c3a1f7f53f90fa834de098c4d"
            .parse()
            .unwrap();
        let cases = [
            (
                Ticket {
                    sender_nonce: u32::MAX,
                    ..zero()
                },
                "e1393fc7f6de093780674022f96cb8e3872235167d037c04d554e58c0e63d280",
            ),
            (
                Ticket {
                    sender_nonce: 1,
                    ..zero()
                },
                "ce0918ba94518293e9712effbe5fca4f1f431089833a5b8c257cb1e024595f68",
            ),
            (
                Ticket {
                    face_value: U256::from(1),
                    win_prob: U256::from(500),
                    ..zero()
                },
                "87ef13f2d37e4d5352a01d3c77b8179d80e0887f1953bfabfd0bfd7b0f689ddd",
            ),
            (
                Ticket {
                    face_value: U256::from(500),
                    win_prob: U256::from(1),
                    ..zero()
                },
                "aa4b35071043587992ac8b9dd1b2cf1d8311130e6458cf0b2342484e21af5f5b",
            ),
            (
                Ticket {
                    recipient: "0x73AEd7b5dEb30222fa896f399d46cC99c7BEe57F"
                        .parse()
                        .unwrap(),
                    ..zero()
                },
                "81e353ae39046e2b77b9f996abbaeed527fda559b61ef90f299c4499dd508ccc",
            ),
            (
                Ticket {
                    recipient_rand_hash: rrh,
                    ..zero()
                },
                "be5eaf9a49a39540b9bb02f1a21904f61324a29819e2c032824bfaa10c100b17",
            ),
            (
                Ticket {
                    creation_round: 10,
                    creation_round_block_hash: rrh,
                    ..zero()
                },
                "e502907c16036ab3d11b78c5a2e93c20f3d6415c67f91de4ed01348182b3b2e2",
            ),
        ];
        for (ticket, want) in cases {
            assert_eq!(hex(ticket.hash()), want, "{ticket:?}");
        }
        assert_eq!(zero().flatten().len(), 168);
        assert_eq!(
            Ticket {
                creation_round: 1,
                ..zero()
            }
            .flatten()
            .len(),
            232
        );
    }

    #[test]
    fn expected_value_and_bytes() {
        assert_eq!(
            expected_value(U256::from(1000), MAX_WIN_PROB),
            U256::from(1000)
        );
        assert_eq!(
            expected_value(U256::from(1000), MAX_WIN_PROB / U256::from(4)),
            U256::from(249)
        );
        assert_eq!(expected_value(U256::MAX, U256::MAX), U256::MAX);
        assert_eq!(minimal_bytes(U256::ZERO), Vec::<u8>::new());
        assert_eq!(minimal_bytes(U256::from(0x1388)), vec![0x13, 0x88]);
        assert_eq!(from_be_bytes(&[0x13, 0x88]), Some(U256::from(5000)));
        assert_eq!(from_be_bytes(&[1; 33]), None);
    }
}
