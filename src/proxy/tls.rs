//! TLS for the L7 proxy: HTTPS termination (certificates chosen by SNI, reloadable without
//! dropping connections) and re-encryption to the servers.
//!
//! The server side is one `ServerConfig`, built once, whose certificate resolver reads the
//! current [`CertStore`] through an `ArcSwap`: a reload swaps the store, new handshakes see it,
//! and established connections are untouched because they no longer consult the resolver.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

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

/// A loaded, validated set of certificates indexed by the DNS names they cover.
///
/// Built completely before use, so a reload either yields a whole new store or an error.
pub struct CertStore {
    /// In configuration order; the first is served to clients that send no (or no known) SNI.
    certs: Vec<Loaded>,
    /// Lower-case exact name -> index into `certs`.
    exact: HashMap<String, usize>,
    /// Lower-case parent domain of a `*.parent` name -> index into `certs`.
    wildcard: HashMap<String, usize>,
}

struct Loaded {
    spec: CertSpec,
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl CertStore {
    /// Read, parse and check every spec; the first certificate is the default.
    ///
    /// When two certificates cover the same name, the earlier one wins, consistently with the
    /// first being the default.
    pub fn load(specs: &[CertSpec]) -> Result<CertStore, TlsError> {
        if specs.is_empty() {
            return Err(TlsError::NoSpecs);
        }
        let provider = provider();
        let mut store = CertStore { certs: Vec::new(), exact: HashMap::new(), wildcard: HashMap::new() };
        for spec in specs {
            let loaded = load_one(spec, &provider)?;
            let index = store.certs.len();
            for name in &loaded.names {
                match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.entry(parent.to_owned()).or_insert(index),
                    None => store.exact.entry(name.clone()).or_insert(index),
                };
            }
            store.certs.push(loaded);
        }
        Ok(store)
    }

    /// The certificate for a client's SNI: exact name, then a wildcard one label deep, then
    /// the default (first), so clients without SNI or with an unknown name still get one.
    pub fn select(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let index = sni.and_then(|name| self.lookup(name)).unwrap_or(0);
        // `load` refuses an empty list, so index 0 exists and lookups return valid indexes.
        self.certs[index].key.clone()
    }

    fn lookup(&self, sni: &str) -> Option<usize> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return Some(i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// The DNS names each certificate is indexed under, in load order (for status and logs).
    pub fn names(&self) -> impl Iterator<Item = (&CertSpec, &[String])> {
        self.certs.iter().map(|c| (&c.spec, c.names.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Always false for a loaded store (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.certs.iter().map(|c| (&c.spec.cert, &c.names))).finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}

/// Every certificate in a PEM file, in order; an empty file is an error naming it.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn load_one(spec: &CertSpec, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let chain = read_certs(&spec.cert)?;
    let key_bytes = read(&spec.key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { path: spec.key.clone() },
        e => pem_error(&spec.key, e),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key { path: spec.key.clone(), reason: e.to_string() })?;
    let names = names::dns_names(&chain[0])
        .map_err(|reason| TlsError::Certificate { path: spec.cert.clone(), reason: reason.to_owned() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch { cert: spec.cert.clone(), key: spec.key.clone() })
        }
        // Unknown: the key cannot export its public half (not the case for ring's keys); a
        // certificate we cannot check is refused rather than served blindly.
        Err(e) => return Err(TlsError::Certificate { path: spec.cert.clone(), reason: e.to_string() }),
    }
    Ok(Loaded { spec: spec.clone(), names, key: Arc::new(certified) })
}

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
    /// Load the certificates and build the server configuration (ALPN h2 then http/1.1,
    /// TLS 1.2 and 1.3, ring).
    pub fn load(specs: &[CertSpec]) -> Result<TlsAcceptorHandle, TlsError> {
        TlsAcceptorHandle::new(CertStore::load(specs)?)
    }

    pub fn new(store: CertStore) -> Result<TlsAcceptorHandle, TlsError> {
        let store = Arc::new(ArcSwap::from_pointee(store));
        let resolver = Arc::new(SniResolver { store: store.clone() });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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

/// The client configuration for one pool's servers: HTTP/1.1 only, TLS 1.2 and 1.3, ring.
///
/// `verify = false` still checks the handshake signatures, so the server must hold the key of
/// the certificate it presents; only trust (chain, name, expiry) is skipped. Warning about it
/// is the caller's business. An invalid `sni` is refused here, once, rather than per connection.
pub fn client_config(u: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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

/// The names a leaf certificate is indexed under, read with a minimal DER walker.
///
/// rustls does not expose the parsed certificate's names and no X.509 crate is a dependency;
/// the walk only has to find two things in a certificate the operator supplied (and that
/// rustls has parsed to check the key): the SubjectAltName DNS names and the subject CN.
mod names {
    use super::{CertificateDer, DnsName};

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
    const DNS_NAME: u8 = 0x82; // GeneralName dNSName, [2] IMPLICIT IA5String
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;

    type Result<T> = std::result::Result<T, &'static str>;

    /// Lower-case DNS SANs; the CN only when there is no DNS SAN (as clients verify).
    /// Names that are not valid host names (or `*.` wildcards of one) are skipped.
    pub(super) fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>> {
        let (subject, extensions) = subject_and_extensions(cert.as_ref())?;
        let mut names = Vec::new();
        for raw in san_dns_names(extensions)? {
            push_name(&mut names, raw);
        }
        if names.is_empty() {
            for raw in common_names(subject)? {
                push_name(&mut names, raw);
            }
        }
        Ok(names)
    }

    fn push_name(names: &mut Vec<String>, raw: &[u8]) {
        let Ok(name) = std::str::from_utf8(raw) else { return };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let host = name.strip_prefix("*.").unwrap_or(&name);
        if DnsName::try_from(host).is_ok() && !host.contains('*') && !names.contains(&name) {
            names.push(name);
        }
    }

    /// (tag, contents, rest) of the first element of `input`.
    pub(super) fn next(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
        const TRUNCATED: &str = "truncated DER";
        let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err("unsupported DER tag");
        }
        let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad DER length");
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(TRUNCATED);
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    fn expect(input: &[u8], want: u8) -> Result<(&[u8], &[u8])> {
        match next(input)? {
            (tag, contents, rest) if tag == want => Ok((contents, rest)),
            _ => Err("unexpected DER structure"),
        }
    }

    /// The subject Name's contents and the extensions' SEQUENCE contents (empty if none).
    fn subject_and_extensions(der: &[u8]) -> Result<(&[u8], &[u8])> {
        let (certificate, _) = expect(der, SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, SEQUENCE)?;
        if tbs.first() == Some(&VERSION) {
            tbs = next(tbs)?.2;
        }
        // serialNumber, signature, issuer, validity
        for _ in 0..4 {
            tbs = next(tbs)?.2;
        }
        let (subject, mut rest) = expect(tbs, SEQUENCE)?;
        rest = expect(rest, SEQUENCE)?.1; // subjectPublicKeyInfo
        while !rest.is_empty() {
            let (tag, contents, after) = next(rest)?;
            if tag == EXTENSIONS {
                return Ok((subject, expect(contents, SEQUENCE)?.0));
            }
            rest = after; // issuerUniqueID, subjectUniqueID
        }
        Ok((subject, &[]))
    }

    fn san_dns_names(mut extensions: &[u8]) -> Result<Vec<&[u8]>> {
        let mut names = Vec::new();
        while !extensions.is_empty() {
            let (extension, rest) = expect(extensions, SEQUENCE)?;
            extensions = rest;
            let (oid, mut fields) = expect(extension, OID)?;
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            if fields.first() == Some(&BOOLEAN) {
                fields = next(fields)?.2; // critical
            }
            let (value, _) = expect(fields, OCTET_STRING)?;
            let (mut general_names, _) = expect(value, SEQUENCE)?;
            while !general_names.is_empty() {
                let (tag, contents, rest) = next(general_names)?;
                if tag == DNS_NAME {
                    names.push(contents);
                }
                general_names = rest;
            }
        }
        Ok(names)
    }

    fn common_names(mut subject: &[u8]) -> Result<Vec<&[u8]>> {
        let mut names = Vec::new();
        while !subject.is_empty() {
            let (mut rdn, rest) = expect(subject, SET)?;
            subject = rest;
            while !rdn.is_empty() {
                let (attribute, rest) = expect(rdn, SEQUENCE)?;
                rdn = rest;
                let (oid, value) = expect(attribute, OID)?;
                let (tag, contents, _) = next(value)?;
                if oid == COMMON_NAME && matches!(tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING) {
                    names.push(contents);
                }
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
