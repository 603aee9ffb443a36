//! TLS, shared by everything that speaks it: HTTPS termination (certificates chosen by SNI,
//! reloadable without dropping connections), re-encryption to pool servers, SIP over TLS and
//! the health checks. The configuration's certificate and upstream types are defined here, so
//! config, proxy, sip and health all name the same ones.
//!
//! The server side is one `ServerConfig`, built once, whose certificate resolver reads the
//! current [`CertStore`] through an `ArcSwap`: a reload swaps the store, new handshakes see it,
//! and established connections are untouched because they no longer consult the resolver.

mod client;
mod names;
mod server;
mod store;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub(crate) use client::AcceptAnyServerCert;
pub use client::{client_config, server_name};
pub use server::TlsAcceptorHandle;
pub use store::CertStore;

/// ALPN a terminating HTTPS listener offers: HTTP/2 first, then HTTP/1.1.
pub const ALPN_HTTP_SERVER: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN offered to HTTP servers: portier speaks HTTP/1.1 to its pools.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// No ALPN: SIP over TLS (RFC 3261 defines none), and anything else that is not HTTP.
pub const NO_ALPN: &[&[u8]] = &[];

/// What went wrong loading certificates or building a TLS configuration; every message names
/// the file concerned so an operator can fix it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid PEM in {}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("no certificate in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("no private key in {} (expected PKCS#8, PKCS#1 RSA or SEC1 EC PEM)", path.display())]
    NoKey { path: PathBuf },
    #[error("unusable private key in {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("invalid certificate in {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: key does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("no certificate configured: a TLS listener needs at least one certificate")]
    NoSpecs,
    #[error("upstream TLS: verify = true needs a `ca` file (portier bundles no system roots)")]
    CaRequired,
    #[error("upstream TLS: invalid sni {sni:?}: {reason}")]
    Sni { sni: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// One certificate to serve: a PEM chain (leaf first) and its private key (may be one file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to re-encrypt towards a pool's servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Check the server's certificate against `ca` and the server name.
    pub verify: bool,
    /// PEM file of trusted CA certificates; required when `verify` (unused otherwise).
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified; without it the server's IP address is used (no SNI).
    pub sni: Option<String>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The provider of portier's TLS servers: ring's suites with AES-128-GCM first, chosen in this
/// order whatever the client prefers (`ignore_client_order`). Clients (OpenSSL, Windows) list
/// AES-256-GCM-SHA384 first, whose SHA-384 key schedule has no hardware help where SHA-256
/// has SHA-NI: about 8 % of a full handshake's CPU here. X25519 and P-256 give 128-bit
/// security either way, which AES-128 matches.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite::*;
    let mut p = rustls::crypto::ring::default_provider();
    // A stable sort: within a rank the provider's own order stays.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_CHACHA20_POLY1305_SHA256 => 1,
        TLS13_AES_256_GCM_SHA384 => 2,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 4,
        _ => 5,
    });
    Arc::new(p)
}

/// The permission bits of a private key file that every user may read (`o+r`), or None when
/// it is private (or cannot be inspected: loading it reports that).
pub fn world_readable_key(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(test)]
mod tests;
