//! Checking a server certificate that no CA vouches for. go-livepeer
//! orchestrators make a new self-signed certificate at every start, so their
//! clients (go-livepeer's own and lpworker's `attach`) accept any; the shim's
//! workers may be pinned to one certificate by its SHA-256 instead. Either
//! way the handshake signature is checked, so the peer must hold the key of
//! the certificate it shows.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which leaf certificate a peer may show.
#[derive(Debug)]
pub struct PeerCertificate {
    /// `None`: any (go-livepeer's `InsecureSkipVerify`).
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PeerCertificate {
    /// Any certificate: for go-livepeer orchestrators.
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin: None,
            provider,
        }
    }

    /// Only the certificate whose DER has this SHA-256.
    pub fn pinned(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin: Some(pin),
            provider,
        }
    }
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if crate::worker::constant_time_eq(&digest, pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
