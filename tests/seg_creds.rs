//! Segment credentials against an independent signer: Python eth-account
//! signing bytes built from go-livepeer's `Flatten()` rules by a script
//! that shares no code with lpworker (tests/independent/sign_segdata.py).
//! A real gateway's signature must verify, and nothing else.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use alloy_primitives::{hex, keccak256, Address};
use lpworker::lp_rpc::seg_creds::{flatten, verify};
use lpworker::proto::lp_rpc as net;

struct Case {
    manifest_id: &'static [u8],
    seq: i64,
    hash: Vec<u8>,
    profiles: &'static [&'static str],
}

#[test]
fn signatures_from_an_independent_signer_verify_and_forgeries_do_not() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv is missing: run `bash scripts/install-deps`"
    );
    let mut child = Command::new(&python)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/independent/sign_segdata.py"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let key = [0x4du8; 32];
    let sender = lpworker::pm::signature::address_of(
        &secp256k1::SecretKey::from_slice(&key)
            .unwrap()
            .public_key(secp256k1::SECP256K1),
    );
    let mut padded = b"browns".to_vec();
    padded.resize(32, 0);
    let cases = [
        // go-livepeer's own Flatten test vector.
        Case {
            manifest_id: b"abcdef",
            seq: 1234,
            hash: padded,
            profiles: &["P144p30fps16x9", "P240p30fps16x9"],
        },
        // An AI request as go-livepeer's gateway signs it: "<cap>_<model>",
        // seq 0, keccak256 of an empty segment, no profiles.
        Case {
            manifest_id: b"5_lpworker/nearest-2x",
            seq: 0,
            hash: keccak256(b"").to_vec(),
            profiles: &[],
        },
        // A live payment: the stream's manifest id.
        Case {
            manifest_id: b"a1b2c3d4",
            seq: 0,
            hash: keccak256(b"").to_vec(),
            profiles: &[],
        },
        // A video segment deep into a stream.
        Case {
            manifest_id: b"stream-7f3e",
            seq: 1 << 40,
            hash: keccak256(b"segment bytes").to_vec(),
            profiles: &["P720p30fps16x9", "P360p30fps16x9", "P240p30fps16x9"],
        },
    ];
    for c in &cases {
        let request = serde_json::json!({
            "key": format!("0x{}", hex::encode(key)),
            "manifest_id": hex::encode(c.manifest_id),
            "seq": c.seq,
            "hash": hex::encode(&c.hash),
            "profiles": c.profiles,
        });
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).expect("signer reply");
        let sig = hex::decode(reply["sig"].as_str().unwrap()).unwrap();
        let seg = net::SegData {
            manifest_id: c.manifest_id.to_vec(),
            seq: c.seq,
            hash: c.hash.clone(),
            full_profiles2: c
                .profiles
                .iter()
                .map(|n| net::VideoProfile {
                    name: n.to_string(),
                    width: 1280,
                    height: 720,
                    ..Default::default()
                })
                .collect(),
            sig: sig.clone(),
            ..Default::default()
        };
        assert_eq!(
            hex::encode(flatten(&seg)),
            reply["flatten"].as_str().unwrap(),
            "the bytes signed for {:?}",
            String::from_utf8_lossy(c.manifest_id)
        );
        assert!(verify(&seg, sender), "a gateway's signature is accepted");
        assert!(
            !verify(&seg, Address::repeat_byte(9)),
            "for its sender only"
        );
        let mut other = seg.clone();
        other.manifest_id = b"another manifest".to_vec();
        assert!(!verify(&other, sender), "and over these bytes only");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
