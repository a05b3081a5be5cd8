//! The orchestrator's Ethereum account: a standard V3 keystore (what
//! go-livepeer and geth write) or a raw private key file.
//!
//! go-livepeer's conventions are kept: `-ethKeystorePath` may name a keystore
//! file or a directory of them (then `-ethAcctAddr` picks the file, or the
//! only one is used), and `-ethPassword` is either the password itself or the
//! path of a file holding it.

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;

use super::ChainError;

/// Where the key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Keystore {
        path: PathBuf,
        address: Option<Address>,
        password: String,
    },
    /// A file holding a hex private key (with or without 0x).
    RawKeyFile(PathBuf),
}

/// Reads the password: the contents of the file if `value` names a
/// readable file (trailing newline removed), else `value` itself.
pub fn resolve_password(value: &str) -> String {
    match std::fs::read_to_string(value) {
        Ok(s) if Path::new(value).is_file() => s.trim_end_matches(['\r', '\n']).to_string(),
        _ => value.to_string(),
    }
}

pub fn load_signer(source: &KeySource) -> Result<PrivateKeySigner, ChainError> {
    match source {
        KeySource::RawKeyFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ChainError::Account(format!("reading key file {}: {e}", path.display()))
            })?;
            text.trim()
                .trim_start_matches("0x")
                .parse::<PrivateKeySigner>()
                .map_err(|e| {
                    ChainError::Account(format!(
                        "key file {} holds no valid private key: {e}",
                        path.display()
                    ))
                })
        }
        KeySource::Keystore {
            path,
            address,
            password,
        } => {
            let file = keystore_file(path, *address)?;
            let signer = decrypt(&file, password).map_err(|e| {
                ChainError::Account(format!(
                    "cannot decrypt keystore {} (wrong password or corrupt file): {e}",
                    file.display()
                ))
            })?;
            if let Some(want) = address {
                if signer.address() != *want {
                    return Err(ChainError::Account(format!(
                        "keystore {} holds {} but --eth-acct-addr is {want}",
                        file.display(),
                        signer.address()
                    )));
                }
            }
            Ok(signer)
        }
    }
}

/// Decrypts a V3 keystore. JSON keys are matched case-insensitively, as
/// geth (Go's encoding/json) matches them: ethers.js writes `"Crypto"`,
/// which the Rust keystore reader would otherwise reject.
fn decrypt(file: &Path, password: &str) -> Result<PrivateKeySigner, String> {
    fn lowercase_keys(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), lowercase_keys(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => other,
        }
    }
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let normalized = lowercase_keys(json.clone());
    if normalized == json {
        return PrivateKeySigner::decrypt_keystore(file, password).map_err(|e| e.to_string());
    }
    // The reader takes a path: a private copy in a fresh 0700 directory,
    // removed right after (the key in it is still encrypted).
    let dir = std::env::temp_dir().join(format!("lpworker-keystore-{}", uuid::Uuid::new_v4()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).map_err(|e| e.to_string())?;
    let copy = dir.join("keystore.json");
    let result = std::fs::write(&copy, normalized.to_string())
        .map_err(|e| e.to_string())
        .and_then(|()| {
            PrivateKeySigner::decrypt_keystore(&copy, password).map_err(|e| e.to_string())
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The keystore file to open: `path` itself, or in a directory the file
/// for `address` (known from the file's `address` field or geth's
/// `UTC--…--<address>` name), or the only keystore there. A file whose
/// address is unknown is still checked after decryption.
fn keystore_file(path: &Path, address: Option<Address>) -> Result<PathBuf, ChainError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| ChainError::Account(format!("keystore path {}: {e}", path.display())))?;
    let mut found: Vec<(Option<Address>, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if json.get("crypto").or_else(|| json.get("Crypto")).is_none() {
            continue;
        }
        let parse = |a: &str| {
            format!("0x{}", a.trim_start_matches("0x"))
                .parse::<Address>()
                .ok()
        };
        let from_json = json.get("address").and_then(|a| a.as_str()).and_then(parse);
        let from_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit("--").next())
            .and_then(parse);
        found.push((from_json.or(from_name), file));
    }
    if let Some(want) = address {
        if let Some((_, f)) = found.iter().find(|(a, _)| *a == Some(want)) {
            return Ok(f.clone());
        }
        let unknown: Vec<_> = found.iter().filter(|(a, _)| a.is_none()).collect();
        if unknown.len() == 1 {
            return Ok(unknown[0].1.clone());
        }
        return Err(ChainError::Account(format!(
            "no keystore for {want} in {}",
            path.display()
        )));
    }
    match found.len() {
        1 => Ok(found.pop().expect("one").1),
        0 => Err(ChainError::Account(format!(
            "no keystore files in {}",
            path.display()
        ))),
        n => Err(ChainError::Account(format!(
            "{n} keystores in {}: choose one with --eth-acct-addr",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trip_by_file_and_by_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::thread_rng();
        let (key, name) =
            PrivateKeySigner::encrypt_keystore(dir.path(), &mut rng, [7u8; 32], "pw", None)
                .unwrap();
        let address = key.address();
        let by_dir = load_signer(&KeySource::Keystore {
            path: dir.path().into(),
            address: None,
            password: "pw".into(),
        })
        .unwrap();
        assert_eq!(by_dir.address(), address);
        let by_file = load_signer(&KeySource::Keystore {
            path: dir.path().join(&name),
            address: Some(address),
            password: "pw".into(),
        })
        .unwrap();
        assert_eq!(by_file.address(), address);
        let wrong = load_signer(&KeySource::Keystore {
            path: dir.path().into(),
            address: None,
            password: "nope".into(),
        })
        .unwrap_err();
        assert!(wrong.to_string().contains("wrong password"), "{wrong}");
        // A second keystore in geth's naming: the directory is now
        // ambiguous without an address, and each is found by its address.
        let geth_name = format!("UTC--2026-01-01T00-00-00.000Z--{}", hex_addr(9));
        PrivateKeySigner::encrypt_keystore(
            dir.path(),
            &mut rng,
            [9u8; 32],
            "pw9",
            Some(&geth_name),
        )
        .unwrap();
        let ambiguous = load_signer(&KeySource::Keystore {
            path: dir.path().into(),
            address: None,
            password: "pw".into(),
        })
        .unwrap_err();
        assert!(ambiguous.to_string().contains("choose one"), "{ambiguous}");
        let nine = PrivateKeySigner::from_slice(&[9u8; 32]).unwrap().address();
        let by_name = load_signer(&KeySource::Keystore {
            path: dir.path().into(),
            address: Some(nine),
            password: "pw9".into(),
        })
        .unwrap();
        assert_eq!(by_name.address(), nine);
        let other = load_signer(&KeySource::Keystore {
            path: dir.path().join(&name),
            address: Some(Address::repeat_byte(9)),
            password: "pw".into(),
        })
        .unwrap_err();
        assert!(other.to_string().contains("holds"), "{other}");
    }

    fn hex_addr(byte: u8) -> String {
        let a = PrivateKeySigner::from_slice(&[byte; 32]).unwrap().address();
        format!("{a:x}").trim_start_matches("0x").to_string()
    }

    #[test]
    fn raw_key_file_and_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(
            &key,
            "0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d\n",
        )
        .unwrap();
        let signer = load_signer(&KeySource::RawKeyFile(key)).unwrap();
        assert_eq!(
            signer.address(),
            "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1"
                .parse::<Address>()
                .unwrap()
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(load_signer(&KeySource::RawKeyFile(bad)).is_err());
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        assert_eq!(resolve_password(pw.to_str().unwrap()), "secret");
        assert_eq!(resolve_password("literal"), "literal");
    }
}
