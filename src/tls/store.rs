//! Loading and indexing certificates: PEM chains and keys read, matched and indexed by the
//! DNS names they cover, complete before use.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{names, provider, CertSpec, TlsError};

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

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}

/// Every certificate in a PEM file, in order; an empty file is an error naming it.
pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
