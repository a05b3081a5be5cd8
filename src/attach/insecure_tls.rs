//! TLS to a go-livepeer orchestrator. Orchestrators regenerate a self-signed
//! certificate on every start, so go-livepeer's own clients skip verification
//! (`InsecureSkipVerify`); lpworker must do the same to talk to them. Handshake
//! signatures are still checked, so the peer must hold the certificate's key.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::peer_tls::PeerCertificate;

/// A rustls client configuration that trusts any certificate, offering `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCertificate::any(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Opens a gRPC channel to `addr` (`host:port`) over TLS without certificate
/// verification, as go-livepeer's remote transcoder does.
pub async fn grpc_channel(
    addr: &str,
    endpoint: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(&[b"h2"])));
    // The scheme is http so tonic does no TLS of its own; the connector does.
    let base = Endpoint::from_shared(format!("http://{addr}"))?;
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint(base).connect_with_connector(connector).await
}
