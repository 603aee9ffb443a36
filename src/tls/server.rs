//! The terminating side: one server configuration per listener whose certificates a reload
//! replaces underneath it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::{server_provider, CertSpec, CertStore, TlsError};

/// Picks the certificate by SNI from whatever store is current at handshake time.
#[derive(Debug)]
struct SniResolver {
    store: Arc<ArcSwap<CertStore>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().select(hello.server_name()))
    }
}

/// The terminating side: a server configuration that stays the same across certificate
/// reloads, so listeners keep their acceptor and only the certificates change.
pub struct TlsAcceptorHandle {
    store: Arc<ArcSwap<CertStore>>,
    config: Arc<ServerConfig>,
}

impl TlsAcceptorHandle {
    /// Load the certificates and build the server configuration offering `alpn` (e.g.
    /// [`super::ALPN_HTTP_SERVER`] for HTTPS, [`super::NO_ALPN`] for SIP), TLS 1.2 and 1.3, ring.
    pub fn load(specs: &[CertSpec], alpn: &[&[u8]]) -> Result<TlsAcceptorHandle, TlsError> {
        TlsAcceptorHandle::new(CertStore::load(specs)?, alpn)
    }

    pub fn new(store: CertStore, alpn: &[&[u8]]) -> Result<TlsAcceptorHandle, TlsError> {
        let store = Arc::new(ArcSwap::from_pointee(store));
        let resolver = Arc::new(SniResolver { store: store.clone() });
        let mut config = ServerConfig::builder_with_provider(server_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.ignore_client_order = true;
        Ok(TlsAcceptorHandle { store, config: Arc::new(config) })
    }

    /// Replace the certificates for new handshakes; established connections are unaffected.
    ///
    /// The new set is loaded and checked completely before the swap, so on error the running
    /// certificates stay and the error says what is wrong with the new ones.
    pub fn reload(&self, specs: &[CertSpec]) -> Result<(), TlsError> {
        let store = CertStore::load(specs)?;
        self.store.store(Arc::new(store));
        Ok(())
    }

    /// The shared server configuration; the same `Arc` for the handle's whole life.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }

    /// The store new handshakes currently use.
    pub fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }
}
