//! The shim's TLS identity: the operator's certificate, or a self-signed one
//! generated on first start and kept in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS certificate or key in {0} is not valid PEM")]
    Pem(PathBuf),
    #[error("generating a self-signed certificate failed: {0}")]
    Generate(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Returns (cert, key) paths: the given ones, or `<datadir>/cert.pem` and
/// `key.pem`, generated for `hosts` when missing.
pub fn ensure_identity(
    datadir: &Path,
    given: Option<(PathBuf, PathBuf)>,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some(pair) = given {
        return Ok(pair);
    }
    let (cert, key) = (datadir.join("cert.pem"), datadir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, data: String, private: bool| {
        write_file(path, data.as_bytes(), private).map_err(|source| TlsError::File {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&key, generated.key_pair.serialize_pem(), true)?;
    write(&cert, generated.cert.pem(), false)?;
    Ok((cert, key))
}

/// Writes `data` to `path`; a `private` file is readable by its owner only
/// (0600 whatever the umask, also when it already existed).
fn write_file(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // The mode applies only to a new file: an existing one is narrowed
        // before the key is written into it.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)?.write_all(data)
}

/// A rustls server config offering HTTP/2 and HTTP/1.1 (go-livepeer's
/// workers and gateways speak HTTP/2; other clients may not).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .map_err(|_| TlsError::Pem(cert.to_path_buf()))?
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem(cert.to_path_buf()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::Pem(key.to_path_buf()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_generated_key_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A key left world-readable by an earlier version, without its
        // certificate: regenerated, and narrowed to 0600.
        let stale = dir.path().join("key.pem");
        std::fs::write(&stale, "old").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (cert, key) = ensure_identity(dir.path(), None, &["localhost".into()]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY"));
        assert!(std::fs::read_to_string(&cert)
            .unwrap()
            .contains("CERTIFICATE"));
        server_config(&cert, &key).expect("the written pair loads");

        let fresh = tempfile::tempdir().unwrap();
        let (_, key) = ensure_identity(fresh.path(), None, &["localhost".into()]).unwrap();
        assert_eq!(mode(&key), 0o600);
    }
}
