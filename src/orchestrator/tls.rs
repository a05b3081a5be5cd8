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
    let write = |path: &Path, data: String| {
        std::fs::write(path, data).map_err(|source| TlsError::File {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&key, generated.key_pair.serialize_pem())?;
    write(&cert, generated.cert.pem())?;
    Ok((cert, key))
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
