//! Tests for tls: certificates from rcgen in a tempdir, real loopback handshakes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use rustls::pki_types::pem::PemObject;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA in a tempdir that issues leaf certificates into PEM files.
struct Pki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "portier test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Issue a certificate for `names` (IP strings become IP SANs) into `<file>.crt`/`.key`.
    fn issue(&self, file: &str, names: &[&str]) -> (CertSpec, CertificateDer<'static>) {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        self.issue_with(file, params)
    }

    fn issue_with(&self, file: &str, params: CertificateParams) -> (CertSpec, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let spec =
            CertSpec { cert: self.path(&format!("{file}.crt")), key: self.path(&format!("{file}.key")) };
        // The chain: leaf first, then the CA (as a server would normally send it).
        std::fs::write(&spec.cert, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&spec.key, key.serialize_pem()).unwrap();
        (spec, cert.der().clone())
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// A TLS echo server on loopback; the acceptor is taken once, as a listener would.
async fn serve(acceptor: TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// A client that verifies against the test CA (so the name check takes part too).
fn verifying(pki: &Pki) -> Arc<ClientConfig> {
    client_config(&UpstreamTls { verify: true, ca: Some(pki.ca_path()), sni: None }, ALPN_HTTP1).unwrap()
}

/// A client that accepts any certificate, to see what is presented when the name won't match.
fn accept_any() -> Arc<ClientConfig> {
    client_config(&UpstreamTls::default(), ALPN_HTTP1).unwrap()
}

async fn echo(stream: &mut TlsStream<TcpStream>, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
}

// ---- server side: loading ----

#[test]
fn load_indexes_san_names_and_cn_fallback() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test", "autodiscover.example.test", "192.0.2.1"]);
    let (wild, _) = pki.issue("wild", &["*.Example.Test"]);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::OrganizationName, "Legacy Org");
    params.distinguished_name.push(DnType::CommonName, "Legacy.Example.Test");
    let (legacy, _) = pki.issue_with("legacy", params);

    let store = CertStore::load(&[mail.clone(), wild.clone(), legacy.clone()]).unwrap();
    let names: Vec<_> = store.names().map(|(spec, names)| (spec.clone(), names.to_vec())).collect();
    assert_eq!(
        names,
        vec![
            (mail, vec!["mail.example.test".to_owned(), "autodiscover.example.test".to_owned()]),
            (wild, vec!["*.example.test".to_owned()]),
            (legacy, vec!["legacy.example.test".to_owned()]),
        ]
    );
    assert_eq!(store.len(), 3);
}

#[test]
fn cert_and_key_in_one_file_and_sec1_key_load() {
    let pki = Pki::new();
    let (spec, _) = pki.issue("mail", &["mail.example.test"]);
    // One file holding the chain and the PKCS#8 key.
    let both = pki.path("both.pem");
    let combined =
        std::fs::read_to_string(&spec.cert).unwrap() + &std::fs::read_to_string(&spec.key).unwrap();
    std::fs::write(&both, combined).unwrap();
    CertStore::load(&[CertSpec { cert: both.clone(), key: both }]).unwrap();

    // The same key as SEC1 ("EC PRIVATE KEY"): the OCTET STRING inside the PKCS#8 structure.
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(&spec.key).unwrap();
    let (_, info, _) = names::next(pkcs8.secret_pkcs8_der()).unwrap();
    let (_, _, rest) = names::next(info).unwrap(); // version
    let (_, _, rest) = names::next(rest).unwrap(); // algorithm
    let (tag, sec1, _) = names::next(rest).unwrap();
    assert_eq!(tag, 0x04);
    let sec1_path = pki.write("sec1.key", &pem_encode("EC PRIVATE KEY", sec1));
    CertStore::load(&[CertSpec { cert: spec.cert, key: sec1_path }]).unwrap();
}

#[test]
fn empty_list_is_refused() {
    let err = CertStore::load(&[]).unwrap_err();
    assert!(matches!(err, TlsError::NoSpecs), "{err:?}");
}

#[test]
fn key_mismatch_names_both_files() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test"]);
    let (lync, _) = pki.issue("lync", &["lync.example.test"]);
    let err = CertStore::load(&[CertSpec { cert: mail.cert.clone(), key: lync.key.clone() }]).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: key does not match certificate {}", lync.key.display(), mail.cert.display())
    );
}

#[test]
fn missing_file_is_named() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test"]);
    let missing = pki.path("nope.pem");
    let err = CertStore::load(&[CertSpec { cert: missing.clone(), key: mail.key.clone() }]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("cannot read {}: No such file", missing.display())), "{msg}");
    let err = CertStore::load(&[CertSpec { cert: mail.cert, key: missing.clone() }]).unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot read {}", missing.display())), "{err}");
}

#[test]
fn garbage_pem_is_named() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test"]);
    let load = |cert: &Path, key: &Path| {
        CertStore::load(&[CertSpec { cert: cert.to_owned(), key: key.to_owned() }]).unwrap_err().to_string()
    };

    let text = pki.write("text.pem", "this is not PEM at all\n");
    assert_eq!(load(&text, &mail.key), format!("no certificate in {}", text.display()));

    let bad_base64 = pki.write("b64.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let msg = load(&bad_base64, &mail.key);
    assert!(msg.starts_with(&format!("invalid PEM in {}: ", bad_base64.display())), "{msg}");

    let unterminated = pki.write("open.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    let msg = load(&unterminated, &mail.key);
    assert!(msg.starts_with(&format!("invalid PEM in {}: ", unterminated.display())), "{msg}");

    // Well-formed PEM around bytes that are not a certificate.
    let not_der = pki.write("notder.pem", &pem_encode("CERTIFICATE", b"not a certificate"));
    let msg = load(&not_der, &mail.key);
    assert!(msg.starts_with(&format!("invalid certificate in {}: ", not_der.display())), "{msg}");

    // A certificate file given as the key.
    let msg = load(&mail.cert, &mail.cert);
    assert!(msg.starts_with(&format!("no private key in {}", mail.cert.display())), "{msg}");

    let bad_key = pki.write("bad.key", &pem_encode("PRIVATE KEY", b"not a key"));
    let msg = load(&mail.cert, &bad_key);
    assert!(msg.starts_with(&format!("unusable private key in {}: ", bad_key.display())), "{msg}");
}

// ---- server side: SNI over real handshakes ----

#[tokio::test]
async fn sni_selects_the_named_certificate() {
    let pki = Pki::new();
    let (mail, mail_der) = pki.issue("mail", &["mail.example.test"]);
    let (lync, lync_der) = pki.issue("lync", &["lync.example.test", "lyncdiscover.example.test"]);
    let handle = TlsAcceptorHandle::load(&[mail, lync], ALPN_HTTP_SERVER).unwrap();
    let addr = serve(handle.acceptor()).await;

    let s = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
    let s = connect(addr, verifying(&pki), dns("lync.example.test")).await.unwrap();
    assert_eq!(presented(&s), lync_der);
    let s = connect(addr, verifying(&pki), dns("lyncdiscover.example.test")).await.unwrap();
    assert_eq!(presented(&s), lync_der);
    // Case does not matter.
    let mut s = connect(addr, verifying(&pki), dns("LYNC.Example.TEST")).await.unwrap();
    assert_eq!(presented(&s), lync_der);
    echo(&mut s, b"hello").await;
}

#[tokio::test]
async fn no_sni_or_unknown_name_gets_the_first() {
    let pki = Pki::new();
    let (mail, mail_der) = pki.issue("mail", &["mail.example.test"]);
    let (lync, _) = pki.issue("lync", &["lync.example.test"]);
    let addr = serve(TlsAcceptorHandle::load(&[mail, lync], ALPN_HTTP_SERVER).unwrap().acceptor()).await;

    // An IP address as the server name: rustls sends no SNI.
    let s = connect(addr, accept_any(), ServerName::IpAddress(LOCALHOST.into())).await.unwrap();
    assert_eq!(presented(&s), mail_der);
    let s = connect(addr, accept_any(), dns("unknown.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
}

#[tokio::test]
async fn wildcard_matches_one_label_deep_after_exact_names() {
    let pki = Pki::new();
    let (mail, mail_der) = pki.issue("mail", &["mail.example.test"]);
    let (wild, wild_der) = pki.issue("wild", &["*.example.test"]);
    let addr = serve(TlsAcceptorHandle::load(&[mail, wild], ALPN_HTTP_SERVER).unwrap().acceptor()).await;

    let s = connect(addr, verifying(&pki), dns("a.example.test")).await.unwrap();
    assert_eq!(presented(&s), wild_der);
    let s = connect(addr, verifying(&pki), dns("A.Example.Test")).await.unwrap();
    assert_eq!(presented(&s), wild_der);
    // The exact name beats the wildcard.
    let s = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
    // Two labels deep and the bare parent are not covered: the default is served.
    let s = connect(addr, accept_any(), dns("b.a.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
    let s = connect(addr, accept_any(), dns("example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
}

#[tokio::test]
async fn server_offers_h2_then_http11() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test"]);
    let handle = TlsAcceptorHandle::load(&[mail], ALPN_HTTP_SERVER).unwrap();
    assert_eq!(handle.server_config().alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let addr = serve(handle.acceptor()).await;

    let mut both = (*verifying(&pki)).clone();
    both.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let s = connect(addr, Arc::new(both), dns("mail.example.test")).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The upstream client config offers HTTP/1.1 only.
    let s = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_listener_without_alpn_picks_none_and_a_client_without_alpn_offers_none() {
    let pki = Pki::new();
    let (pbx, _) = pki.issue("pbx", &["pbx.example.test"]);
    let handle = TlsAcceptorHandle::load(&[pbx], NO_ALPN).unwrap();
    assert!(handle.server_config().alpn_protocols.is_empty());
    let addr = serve(handle.acceptor()).await;
    // A client offering HTTP's values still gets a session, with no protocol chosen.
    let mut http = (*verifying(&pki)).clone();
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let s = connect(addr, Arc::new(http), dns("pbx.example.test")).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let u = UpstreamTls { verify: true, ca: Some(pki.ca_path()), sni: None };
    assert!(client_config(&u, NO_ALPN).unwrap().alpn_protocols.is_empty());
}

#[tokio::test]
async fn tls12_and_tls13_clients_are_served() {
    let pki = Pki::new();
    let (mail, mail_der) = pki.issue("mail", &["mail.example.test"]);
    let addr = serve(TlsAcceptorHandle::load(&[mail], ALPN_HTTP_SERVER).unwrap().acceptor()).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut s = connect(addr, Arc::new(config), dns("mail.example.test")).await.unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(presented(&s), mail_der);
        echo(&mut s, b"hi").await;
    }
}

#[tokio::test]
async fn aes_128_gcm_is_chosen_over_a_clients_aes_256_preference() {
    let pki = Pki::new();
    let (mail, _) = pki.issue("mail", &["mail.example.test"]);
    let addr = serve(TlsAcceptorHandle::load(&[mail], ALPN_HTTP_SERVER).unwrap().acceptor()).await;
    use rustls::CipherSuite::*;
    for (version, want) in [
        (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ] {
        // The client lists AES-256 first, as OpenSSL and Windows do.
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_256"));
        assert!(format!("{:?}", provider.cipher_suites[0].suite()).contains("AES_256"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut s = connect(addr, Arc::new(config), dns("mail.example.test")).await.unwrap();
        assert_eq!(s.get_ref().1.negotiated_cipher_suite().map(|c| c.suite()), Some(want));
        echo(&mut s, b"hi").await;
    }
}

// ---- server side: reload ----

#[tokio::test]
async fn reload_swaps_for_new_handshakes_and_keeps_established_ones() {
    let pki = Pki::new();
    let (old, old_der) = pki.issue("mail-2024", &["mail.example.test"]);
    let (new, new_der) = pki.issue("mail-2025", &["mail.example.test"]);
    let handle = TlsAcceptorHandle::load(&[old], ALPN_HTTP_SERVER).unwrap();
    let config = handle.server_config();
    // The listener took its acceptor once, before the reload.
    let addr = serve(handle.acceptor()).await;

    let mut established = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(presented(&established), old_der);
    echo(&mut established, b"before").await;

    handle.reload(&[new]).unwrap();
    assert!(Arc::ptr_eq(&config, &handle.server_config()), "the config must not be rebuilt");

    let mut fresh = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(presented(&fresh), new_der);
    echo(&mut fresh, b"fresh").await;
    echo(&mut established, b"after the reload").await;
}

#[tokio::test]
async fn failed_reload_keeps_the_running_certificates() {
    let pki = Pki::new();
    let (mail, mail_der) = pki.issue("mail", &["mail.example.test"]);
    let (lync, _) = pki.issue("lync", &["lync.example.test"]);
    let handle = TlsAcceptorHandle::load(std::slice::from_ref(&mail), ALPN_HTTP_SERVER).unwrap();
    let addr = serve(handle.acceptor()).await;

    let missing = CertSpec { cert: pki.path("gone.crt"), key: pki.path("gone.key") };
    let err = handle.reload(&[lync.clone(), missing]).unwrap_err();
    assert!(err.to_string().contains("gone.crt"), "{err}");
    let err = handle.reload(&[CertSpec { cert: lync.cert, key: mail.key }]).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let err = handle.reload(&[]).unwrap_err();
    assert!(matches!(err, TlsError::NoSpecs), "{err:?}");

    assert_eq!(handle.current().len(), 1);
    let s = connect(addr, accept_any(), dns("lync.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
    let s = connect(addr, verifying(&pki), dns("mail.example.test")).await.unwrap();
    assert_eq!(presented(&s), mail_der);
}

// ---- client side (re-encryption to servers) ----

/// A server for "app.example.test" and 127.0.0.1, issued by `pki`.
async fn app_server(pki: &Pki) -> SocketAddr {
    let (app, _) = pki.issue("app", &["app.example.test", "127.0.0.1"]);
    serve(TlsAcceptorHandle::load(&[app], ALPN_HTTP_SERVER).unwrap().acceptor()).await
}

#[tokio::test]
async fn verify_with_the_right_ca_succeeds_by_name_and_by_ip() {
    let pki = Pki::new();
    let addr = app_server(&pki).await;

    let by_name = UpstreamTls { verify: true, ca: Some(pki.ca_path()), sni: Some("app.example.test".into()) };
    let config = client_config(&by_name, ALPN_HTTP1).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let mut s = connect(addr, config, server_name(&by_name, addr.ip())).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;

    let by_ip = UpstreamTls { sni: None, ..by_name };
    let s = connect(addr, client_config(&by_ip, ALPN_HTTP1).unwrap(), server_name(&by_ip, addr.ip())).await;
    s.unwrap();
}

#[tokio::test]
async fn verify_with_a_wrong_ca_is_a_certificate_error() {
    let pki = Pki::new();
    let other = Pki::new();
    let addr = app_server(&pki).await;

    let u = UpstreamTls { verify: true, ca: Some(other.ca_path()), sni: Some("app.example.test".into()) };
    let err =
        connect(addr, client_config(&u, ALPN_HTTP1).unwrap(), server_name(&u, addr.ip())).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(matches!(inner, Some(rustls::Error::InvalidCertificate(_))), "{err:?}");

    // The right CA but a name the certificate does not cover is a certificate error too.
    let u = UpstreamTls { verify: true, ca: Some(pki.ca_path()), sni: Some("other.example.test".into()) };
    let err =
        connect(addr, client_config(&u, ALPN_HTTP1).unwrap(), server_name(&u, addr.ip())).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(matches!(inner, Some(rustls::Error::InvalidCertificate(_))), "{err:?}");
}

#[tokio::test]
async fn no_verify_accepts_a_self_signed_server() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = CertSpec { cert: dir.path().join("self.crt"), key: dir.path().join("self.key") };
    std::fs::write(&spec.cert, certified.cert.pem()).unwrap();
    std::fs::write(&spec.key, certified.key_pair.serialize_pem()).unwrap();
    let addr = serve(TlsAcceptorHandle::load(&[spec], ALPN_HTTP_SERVER).unwrap().acceptor()).await;

    let u = UpstreamTls { verify: false, ca: None, sni: None };
    let mut s =
        connect(addr, client_config(&u, ALPN_HTTP1).unwrap(), server_name(&u, addr.ip())).await.unwrap();
    assert_eq!(presented(&s), *certified.cert.der());
    echo(&mut s, b"ping").await;
}

#[test]
fn verify_without_ca_is_refused() {
    let err = client_config(&UpstreamTls { verify: true, ca: None, sni: None }, ALPN_HTTP1).unwrap_err();
    assert!(matches!(err, TlsError::CaRequired), "{err:?}");
    assert!(err.to_string().contains("verify = true needs a `ca` file"), "{err}");
}

#[test]
fn unreadable_or_empty_ca_file_is_named() {
    let pki = Pki::new();
    let missing = pki.path("missing-ca.pem");
    let err = client_config(&UpstreamTls { verify: true, ca: Some(missing.clone()), sni: None }, ALPN_HTTP1)
        .unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot read {}", missing.display())), "{err}");
    let empty = pki.write("empty-ca.pem", "");
    let err = client_config(&UpstreamTls { verify: true, ca: Some(empty.clone()), sni: None }, ALPN_HTTP1)
        .unwrap_err();
    assert_eq!(err.to_string(), format!("no certificate in {}", empty.display()));
}

#[test]
fn invalid_sni_is_refused() {
    let err =
        client_config(&UpstreamTls { verify: false, ca: None, sni: Some("not a name".into()) }, ALPN_HTTP1)
            .unwrap_err();
    assert!(matches!(err, TlsError::Sni { .. }), "{err:?}");
}

#[test]
fn server_name_is_the_sni_else_the_ip() {
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let with = UpstreamTls { verify: false, ca: None, sni: Some("mail.example.test".into()) };
    assert_eq!(server_name(&with, ip), dns("mail.example.test"));
    let without = UpstreamTls { sni: None, ..with };
    assert_eq!(server_name(&without, ip), ServerName::IpAddress(ip.into()));
}

/// PEM-encode `der` under `label` (test support; nothing else here needs base64).
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
