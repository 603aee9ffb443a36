//! Tests for the SIP OPTIONS probe, against loopback UDP, TCP and TLS servers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::*;
use crate::config::CheckKind;
use crate::health::probe::probe;

const QUICK: Duration = Duration::from_millis(200);
const SLOW: Duration = Duration::from_secs(2);

fn check(transport: SipTransport) -> CheckKind {
    CheckKind::SipOptions { transport }
}

/// A response to `request` with `status` (e.g. "200 OK"), echoing the transaction headers.
fn reply(request: &[u8], status: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in text.lines() {
        let name = line.split(':').next().unwrap_or_default();
        if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
            out += &format!("{line}\r\n");
        } else if name == "To" {
            out += &format!("{line};tag=srv\r\n");
        }
    }
    out += "Server: test\r\nContent-Length: 0\r\n\r\n";
    out.into_bytes()
}

/// A UDP server: for the n-th request received (from 0) `answers(n, request)` lists the
/// datagrams to send back. Returns its address and every request it received.
async fn udp_server<F>(answers: F) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>)
where
    F: Fn(usize, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
{
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            record.lock().unwrap().push(buf[..len].to_vec());
            for datagram in answers(n, &buf[..len]) {
                let _ = socket.send_to(&datagram, from).await;
            }
            n += 1;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn udp_200_is_alive_and_request_is_well_formed() {
    let (addr, seen) = udp_server(|_, req| vec![reply(req, "200 OK")]).await;
    probe(&check(SipTransport::Udp), addr, SLOW).await.unwrap();

    let requests = seen.lock().unwrap();
    assert_eq!(requests.len(), 1);
    let text = String::from_utf8(requests[0].clone()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], format!("OPTIONS sip:127.0.0.1:{} SIP/2.0", addr.port()));
    assert!(lines[1].starts_with("Via: SIP/2.0/UDP 127.0.0.1:"), "{text}");
    assert!(lines[1].contains(";branch=z9hG4bK") && lines[1].ends_with(";rport"), "{text}");
    assert_eq!(lines[2], "Max-Forwards: 70");
    assert!(lines[3].starts_with("From: <sip:portier@127.0.0.1>;tag="), "{text}");
    assert_eq!(lines[4], format!("To: <sip:127.0.0.1:{}>", addr.port()));
    assert!(lines[5].starts_with("Call-ID: ") && lines[5].ends_with("@portier"), "{text}");
    assert_eq!(
        &lines[6..],
        ["CSeq: 1 OPTIONS", "User-Agent: portier", "Accept: application/sdp", "Content-Length: 0", "", ""]
    );
}

#[tokio::test]
async fn udp_retransmits_until_answered() {
    let (addr, seen) = udp_server(|n, req| if n < 2 { vec![] } else { vec![reply(req, "200 OK")] }).await;
    let run = probe_udp(addr, Duration::from_millis(20), Duration::from_millis(80));
    tokio::time::timeout(SLOW, run).await.expect("answered after retransmissions").unwrap();
    let requests = seen.lock().unwrap();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r == &requests[0]), "retransmissions are identical");
}

#[tokio::test]
async fn udp_404_is_alive() {
    let (addr, _) = udp_server(|_, req| vec![reply(req, "404 Not Found")]).await;
    probe(&check(SipTransport::Udp), addr, SLOW).await.unwrap();
}

#[tokio::test]
async fn udp_ignores_strays_and_provisional_responses() {
    let (addr, _) = udp_server(|_, req| {
        let other = String::from_utf8_lossy(req).replace("@portier", "@elsewhere");
        vec![
            b"\x00\x01garbage".to_vec(),
            req.to_vec(),
            reply(other.as_bytes(), "200 OK"),
            reply(req, "100 Trying"),
            reply(req, "200 OK"),
        ]
    })
    .await;
    probe(&check(SipTransport::Udp), addr, SLOW).await.unwrap();
}

#[tokio::test]
async fn udp_wrong_branch_is_not_an_answer() {
    let (addr, _) = udp_server(|_, req| {
        let other = String::from_utf8_lossy(req).replace("branch=z9hG4bK", "branch=z9hG4bKx");
        vec![reply(other.as_bytes(), "200 OK")]
    })
    .await;
    let err = probe(&check(SipTransport::Udp), addr, QUICK).await.unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn udp_silent_server_times_out() {
    let (addr, _) = udp_server(|_, _| vec![]).await;
    let start = std::time::Instant::now();
    let err = probe(&check(SipTransport::Udp), addr, QUICK).await.unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn udp_garbage_server_times_out() {
    let (addr, _) = udp_server(|_, _| vec![b"SIP/2.0 2000 Huh\r\n\r\n".to_vec(), vec![0xff; 3000]]).await;
    let err = probe(&check(SipTransport::Udp), addr, QUICK).await.unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn udp_port_unreachable_is_a_connect_error() {
    // Nothing listens: loopback answers with ICMP port unreachable, seen as ECONNREFUSED.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let err = probe(&check(SipTransport::Udp), addr, SLOW).await.unwrap_err();
    assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
}

/// A stream server (TCP, or TLS when `tls`): reads one request head, then writes
/// `answer(request)` and holds the connection open briefly.
async fn stream_server(tls: bool, answer: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: fn(&[u8]) -> Vec<u8>) {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(&answer(&req)).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let acceptor = tls.then(crate::health::probe::tls::testing::acceptor);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(s).await {
                            serve(s, answer).await
                        }
                    }
                    None => serve(s, answer).await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_200_is_alive() {
    let addr = stream_server(false, |req| {
        assert!(String::from_utf8_lossy(req).contains("Via: SIP/2.0/TCP 127.0.0.1:"));
        reply(req, "200 OK")
    })
    .await;
    probe(&check(SipTransport::Tcp), addr, SLOW).await.unwrap();
}

#[tokio::test]
async fn tcp_provisional_then_final_is_alive() {
    let addr = stream_server(false, |req| {
        let mut out = b"\r\n".to_vec();
        out.extend(reply(req, "100 Trying"));
        out.extend(reply(req, "405 Method Not Allowed"));
        out
    })
    .await;
    probe(&check(SipTransport::Tcp), addr, SLOW).await.unwrap();
}

#[tokio::test]
async fn tcp_garbage_is_a_sip_error() {
    let addr = stream_server(false, |_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
    let err = probe(&check(SipTransport::Tcp), addr, SLOW).await.unwrap_err();
    assert!(matches!(err, ProbeError::Sip(ref m) if m.contains("malformed status line")), "{err:?}");
    assert_eq!(err.reason(), "sip");
}

#[tokio::test]
async fn tcp_endless_head_is_cut_off() {
    let addr = stream_server(false, |_| {
        let mut out = b"SIP/2.0 100 Trying\r\n".to_vec();
        out.extend(b"X: y\r\n".repeat(MAX_READ));
        out
    })
    .await;
    let err = probe(&check(SipTransport::Tcp), addr, SLOW).await.unwrap_err();
    assert!(matches!(err, ProbeError::Sip(_)), "{err:?}");
}

#[tokio::test]
async fn tcp_closed_port_is_a_connect_error() {
    let addr = crate::health::probe::tests::closed_port().await;
    let err = probe(&check(SipTransport::Tcp), addr, SLOW).await.unwrap_err();
    assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn tls_200_is_alive() {
    let addr = stream_server(true, |req| {
        assert!(String::from_utf8_lossy(req).contains("Via: SIP/2.0/TLS 127.0.0.1:"));
        reply(req, "200 OK")
    })
    .await;
    probe(&check(SipTransport::Tls), addr, SLOW).await.unwrap();
}

#[test]
fn ipv6_request_uses_brackets() {
    let target: SocketAddr = "[2001:db8::5]:5061".parse().unwrap();
    let local: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let req = build_request(target, local, SipTransport::Tls);
    let text = String::from_utf8(req.bytes).unwrap();
    assert!(text.starts_with(
        "OPTIONS sip:[2001:db8::5]:5061 SIP/2.0\r\nVia: SIP/2.0/TLS [2001:db8::1]:40000;branch="
    ));
    assert!(text.contains("\r\nFrom: <sip:portier@[2001:db8::1]>;tag="));
    assert!(text.contains("\r\nTo: <sip:[2001:db8::5]:5061>\r\n"));
}

#[test]
fn identifiers_are_unique() {
    let a =
        build_request("127.0.0.1:5060".parse().unwrap(), "127.0.0.1:1".parse().unwrap(), SipTransport::Udp);
    let b =
        build_request("127.0.0.1:5060".parse().unwrap(), "127.0.0.1:1".parse().unwrap(), SipTransport::Udp);
    assert_ne!(a.call_id, b.call_id);
    assert_ne!(a.branch, b.branch);
}

#[test]
fn heads_parse_compact_and_folded_headers() {
    let head = parse_datagram(
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 10.0.0.1;rport=5;BRANCH = z9hG4bKabc ;received=1.2.3.4, SIP/2.0/UDP x;branch=z9hG4bKother\r\n\
          Via: SIP/2.0/UDP y;branch=z9hG4bKlater\r\ni: abc@portier\r\nCall-ID: later\r\nl: 12\r\n\r\nv: body\r\n",
    )
    .unwrap();
    assert_eq!(
        head,
        ResponseHead {
            status: 200,
            call_id: Some("abc@portier".into()),
            branch: Some("z9hG4bKabc".into()),
            content_length: Some(12)
        }
    );
    let folded = parse_datagram(b"SIP/2.0 486 Busy\nCall-ID:\n  folded@x\nVia: SIP/2.0/TCP h\n").unwrap();
    assert_eq!(folded.call_id.as_deref(), Some("folded@x"));
    assert_eq!(folded.branch.as_deref(), Some(""));
    assert!(parse_datagram(b"OPTIONS sip:x SIP/2.0\r\n\r\n").is_err());
    assert!(parse_datagram(b"SIP/2.0 700 Nope\r\n\r\n").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn datagram_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(head) = parse_datagram(&bytes) {
            prop_assert!((100..700).contains(&head.status));
        }
    }

    #[test]
    fn response_like_datagrams_never_panic(
        status in 0u16..1000,
        headers in proptest::collection::vec("[ -~\t]{0,40}", 0..8),
    ) {
        let text = format!("SIP/2.0 {status} X\r\n{}\r\n\r\n", headers.join("\r\n"));
        let _ = parse_datagram(text.as_bytes());
    }

    #[test]
    fn stream_exchange_never_panics(answer in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
            theirs.write_all(&answer).await.unwrap();
            theirs.shutdown().await.unwrap();
            let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
            let _ = exchange_stream(&mut ours, addr, addr, SipTransport::Tcp).await;
            drop(theirs);
        });
    }
}
