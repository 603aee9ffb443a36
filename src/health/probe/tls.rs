//! The TLS check (alive iff a handshake completes) and the TLS client shared by SIP over TLS.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ProbeError;

/// Handshake with `target`; close politely once it completes.
pub(super) async fn check(target: SocketAddr, sni: Option<&str>) -> Result<(), ProbeError> {
    let tcp = super::connect(target).await?;
    let mut stream = handshake(tcp, target, sni).await?;
    // close_notify; the server's reaction does not matter, the handshake already proved it alive.
    let _ = stream.shutdown().await;
    Ok(())
}

/// Run a TLS client handshake over `tcp`.
///
/// SNI is `sni` when given; otherwise the server name is the target's IP address, for which
/// rustls sends no SNI at all (as a client dialling an address would).
pub(super) async fn handshake(
    tcp: TcpStream,
    target: SocketAddr,
    sni: Option<&str>,
) -> Result<TlsStream<TcpStream>, ProbeError> {
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_owned())
            .map_err(|e| ProbeError::Tls(format!("invalid sni {s:?}: {e}")))?,
        None => ServerName::IpAddress(target.ip().into()),
    };
    let connector = TlsConnector::from(client_config()?);
    connector.connect(name, tcp).await.map_err(|e| ProbeError::Tls(format!("handshake failed: {e}")))
}

/// The probes' client configuration, built once.
///
/// Session resumption is off so every probe exercises a full handshake, signature included.
fn client_config() -> Result<Arc<ClientConfig>, ProbeError> {
    use crate::tls::AcceptAnyServerCert;
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier =
                Arc::new(AcceptAnyServerCert { algorithms: provider.signature_verification_algorithms });
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.resumption = Resumption::disabled();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| ProbeError::Tls(format!("client configuration: {e}")))
}

/// Test support: a loopback TLS server with a fresh self-signed certificate.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::ServerConfig;
    use tokio_rustls::TlsAcceptor;

    /// An acceptor for a self-signed `localhost` certificate (no SNI required).
    pub(crate) fn acceptor() -> TlsAcceptor {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use crate::config::CheckKind;
    use crate::health::probe::{probe, ProbeError};

    const SLOW: Duration = Duration::from_secs(2);

    /// A TLS server; records the SNI each client sent (None when absent).
    async fn tls_server() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
        let acceptor = super::testing::acceptor();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if let Ok(tls) = acceptor.accept(s).await {
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    record.lock().unwrap().push(sni);
                }
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn handshake_with_self_signed_server_is_alive() {
        let (addr, seen) = tls_server().await;
        probe(&CheckKind::Tls { sni: None }, addr, SLOW).await.unwrap();
        probe(&CheckKind::Tls { sni: Some("portier.test".into()) }, addr, SLOW).await.unwrap();
        // The server side finishes its half of the handshake just after the client.
        for _ in 0..100 {
            if seen.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*seen.lock().unwrap(), vec![None, Some("portier.test".to_owned())]);
    }

    #[tokio::test]
    async fn plain_tcp_garbage_is_a_tls_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let err = probe(&CheckKind::Tls { sni: None }, addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Tls(ref m) if m.starts_with("handshake failed")), "{err:?}");
        assert_eq!(err.reason(), "tls");
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error() {
        let addr = crate::health::probe::tests::closed_port().await;
        let err = probe(&CheckKind::Tls { sni: None }, addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_sni_is_a_tls_error() {
        let (addr, _) = tls_server().await;
        let err = probe(&CheckKind::Tls { sni: Some("not a name".into()) }, addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Tls(ref m) if m.contains("invalid sni")), "{err:?}");
    }
}

#[cfg(test)]
mod https_tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::config::CheckKind;
    use crate::health::probe::{probe, ProbeError};

    /// An HTTPS server answering every request with `status`; returns the Host it saw.
    async fn https_server(status: u16) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let acceptor = super::testing::acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    let mut buf = vec![0u8; 4096];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let host = head.lines().find_map(|l| l.strip_prefix("Host: ")).unwrap_or("").to_string();
                    let _ = tx.send(host);
                    let _ = tls
                        .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    fn https(expect: u16, sni: Option<&str>) -> CheckKind {
        CheckKind::Https { path: "/healthz".into(), expect, host: None, sni: sni.map(str::to_owned) }
    }

    #[tokio::test]
    async fn https_check_is_alive_on_the_expected_status() {
        let (addr, mut hosts) = https_server(200).await;
        probe(&https(200, Some("localhost")), addr, Duration::from_secs(2)).await.unwrap();
        assert_eq!(hosts.recv().await.unwrap(), "localhost", "Host defaults to the SNI name");
    }

    #[tokio::test]
    async fn https_check_fails_on_another_status() {
        let (addr, _hosts) = https_server(503).await;
        let e = probe(&https(200, None), addr, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(e, ProbeError::Http(ref m) if m.contains("503")), "{e}");
    }
}
