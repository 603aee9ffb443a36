//! One health probe against one server.
//!
//! Probes leave from the balancer's own address on a plain socket (no IP_TRANSPARENT, no bind):
//! a check asks "does this server answer?", not "does it answer this client?". Every probe is
//! bounded as a whole by its timeout and reads at most [`MAX_READ`] bytes, so a misbehaving
//! server can slow a probe down to its timeout but never hang it or make it allocate without
//! bound.

mod http;
mod read;
mod sip;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{CheckKind, SipTransport};

/// The most a probe reads from a server (per response), whatever the server sends.
pub const MAX_READ: usize = 16 * 1024;

/// Why a server failed a probe. The Display text completes "server X down: ...".
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("sip: {0}")]
    Sip(String),
}

impl ProbeError {
    /// A short, fixed label for the failure class, fit for a Prometheus label value.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Connect(_) => "connect",
            ProbeError::Io(_) => "io",
            ProbeError::Http(_) => "http",
            ProbeError::Tls(_) => "tls",
            ProbeError::Sip(_) => "sip",
        }
    }
}

/// Feeds server bytes to every parser a probe uses (status lines, SIP datagrams, the HTTP and
/// SIP stream exchanges over an in-memory connection). For the fuzz target and property tests:
/// none of them may panic, whatever a server sends.
#[doc(hidden)]
pub fn fuzz_server_bytes(data: &[u8]) {
    let _ = read::parse_status_line(data, &["HTTP/1.0", "HTTP/1.1"]);
    let _ = sip::parse_datagram(data);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let addr: SocketAddr = ([192, 0, 2, 1], 5060).into();
    rt.block_on(async {
        // The "server" writes `data` then closes; each exchange must end without panicking.
        let server = |data: Vec<u8>| {
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = theirs.write_all(&data).await;
                let _ = theirs.shutdown().await;
                // Keep the peer alive until the exchange has read what it wants.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
            ours
        };
        let limit = Duration::from_millis(200);
        let mut io = server(data.to_vec());
        let _ = tokio::time::timeout(limit, http::exchange(&mut io, "/", "h", 200)).await;
        let mut io = server(data.to_vec());
        let _ =
            tokio::time::timeout(limit, sip::exchange_stream(&mut io, addr, addr, SipTransport::Tcp)).await;
    });
}

/// Probe `target` once with the check `kind`; `Ok(())` means the server is alive.
///
/// `timeout` bounds the whole probe (connect and exchange); when it expires the result is
/// [`ProbeError::Timeout`].
pub async fn probe(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, run(kind, target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn run(kind: &CheckKind, target: SocketAddr) -> Result<(), ProbeError> {
    match kind {
        // The connect is the whole check; dropping the stream closes it.
        CheckKind::Tcp => connect(target).await.map(drop),
        CheckKind::Http { path, expect, host } => {
            let host = match host {
                Some(h) => h.clone(),
                None => host_of(target),
            };
            let mut stream = connect(target).await?;
            http::exchange(&mut stream, path, &host, *expect).await
        }
        CheckKind::Https { path, expect, host, sni } => {
            let host = host.clone().or_else(|| sni.clone()).unwrap_or_else(|| host_of(target));
            let tcp = connect(target).await?;
            let mut stream = tls::handshake(tcp, target, sni.as_deref()).await?;
            http::exchange(&mut stream, path, &host, *expect).await
        }
        CheckKind::Tls { sni } => tls::check(target, sni.as_deref()).await,
        CheckKind::SipOptions { transport } => match transport {
            SipTransport::Udp => sip::probe_udp(target, sip::T1, sip::T2).await,
            SipTransport::Tcp => {
                let mut stream = connect(target).await?;
                let local = stream.local_addr().map_err(ProbeError::Io)?;
                sip::exchange_stream(&mut stream, target, local, SipTransport::Tcp).await
            }
            SipTransport::Tls => {
                let tcp = connect(target).await?;
                let local = tcp.local_addr().map_err(ProbeError::Io)?;
                let mut stream = tls::handshake(tcp, target, None).await?;
                sip::exchange_stream(&mut stream, target, local, SipTransport::Tls).await
            }
        },
    }
}

/// A plain TCP connection from the balancer's own address.
async fn connect(target: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(target).await.map_err(ProbeError::Connect)?;
    // Requests are written in one piece; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The target's address as a URI/Host host: IPv6 in brackets.
fn host_of(target: SocketAddr) -> String {
    match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const QUICK: Duration = Duration::from_millis(200);

    /// A loopback port that nothing listens on (bound then released).
    pub(super) async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr
    }

    #[tokio::test]
    async fn tcp_alive_against_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { while l.accept().await.is_ok() {} });
        probe(&CheckKind::Tcp, addr, Duration::from_secs(2)).await.unwrap();
    }

    #[tokio::test]
    async fn tcp_closed_port_is_a_connect_error() {
        let addr = closed_port().await;
        let err = probe(&CheckKind::Tcp, addr, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
        assert_eq!(err.reason(), "connect");
        assert!(err.to_string().starts_with("connect failed: "), "{err}");
    }

    #[tokio::test]
    async fn timeout_bounds_the_whole_probe() {
        // Accepts but never answers: the HTTP exchange must stop at the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let kind = CheckKind::Http { path: "/".into(), expect: 200, host: None };
        let start = std::time::Instant::now();
        let err = probe(&kind, addr, QUICK).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(d) if d == QUICK), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(err.reason(), "timeout");
        assert_eq!(err.to_string(), "no answer within 200ms");
    }

    #[test]
    fn reasons_and_messages() {
        let e = |k| io::Error::new(k, "boom");
        let cases = [
            (ProbeError::Io(e(io::ErrorKind::BrokenPipe)), "io", "i/o error: boom"),
            (ProbeError::Http("status 503, expected 200".into()), "http", "http: status 503, expected 200"),
            (ProbeError::Tls("bad".into()), "tls", "tls: bad"),
            (ProbeError::Sip("bad".into()), "sip", "sip: bad"),
        ];
        for (err, reason, text) in cases {
            assert_eq!(err.reason(), reason);
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_of("[::1]:80".parse().unwrap()), "[::1]");
        assert_eq!(host_of("10.0.0.1:80".parse().unwrap()), "10.0.0.1");
    }
}

#[cfg(test)]
mod fuzz_entry_tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn server_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            super::fuzz_server_bytes(&data);
        }
    }

    #[test]
    fn fuzz_entry_handles_plausible_answers() {
        super::fuzz_server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        super::fuzz_server_bytes(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP x;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n",
        );
    }
}
