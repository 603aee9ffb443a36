//! The connecting side: client configurations towards pool servers, SIP peers and health
//! check targets.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::store::read_certs;
use super::{provider, TlsError, UpstreamTls};

/// A client configuration offering `alpn` (e.g. [`super::ALPN_HTTP1`] towards pool servers,
/// [`super::NO_ALPN`] towards SIP peers), TLS 1.2 and 1.3, ring.
///
/// `verify = false` still checks the handshake signatures, so the server must hold the key of
/// the certificate it presents; only trust (chain, name, expiry) is skipped. Warning about it
/// is the caller's business. An invalid `sni` is refused here, once, rather than per connection.
pub fn client_config(u: &UpstreamTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    if let Some(sni) = &u.sni {
        ServerName::try_from(sni.as_str())
            .map_err(|e| TlsError::Sni { sni: sni.clone(), reason: e.to_string() })?;
    }
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = if u.verify {
        let ca = u.ca.as_deref().ok_or(TlsError::CaRequired)?;
        builder.with_root_certificates(load_roots(ca)?).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { algorithms }))
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to hand rustls for a connection to `server_ip`: the configured `sni`, else the
/// IP address (rustls then sends no SNI and, when verifying, checks the certificate's IP SANs).
///
/// An `sni` that is not a valid name falls back to the IP; [`client_config`] refuses such an
/// `sni`, so a caller that built its configuration first never gets here with one.
pub fn server_name(u: &UpstreamTls, server_ip: IpAddr) -> ServerName<'static> {
    u.sni
        .as_ref()
        .and_then(|s| ServerName::try_from(s.clone()).ok())
        .unwrap_or(ServerName::IpAddress(server_ip.into()))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Certificate { path: path.to_owned(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks the handshake signatures.
///
/// Used where trust is not the question: `verify = false` pools (labs, self-signed estates,
/// logged at start) and health checks, which prove that a server's TLS stack answers and holds
/// the key of the certificate it presents; failing a server over an internal CA or an IP name
/// would take healthy servers out of rotation.
#[derive(Debug)]
pub(crate) struct AcceptAnyServerCert {
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
