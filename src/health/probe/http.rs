//! The HTTP check: one `GET`, alive iff the final status code is the expected one.
//!
//! The exchange is generic over the stream so an HTTPS check can run it over TLS unchanged.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::read::{parse_status_line, LineReader};
use super::ProbeError;

const VERSIONS: &[&str] = &["HTTP/1.0", "HTTP/1.1"];

/// Send the check request on `io` and read the status line of the answer.
///
/// Only the status line is read (headers can be large and are irrelevant), except that
/// interim 1xx responses are skipped to reach the final one.
pub(super) async fn exchange<S>(io: &mut S, path: &str, host: &str, expect: u16) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Config validation should already forbid these; a stray CR/LF here would inject headers.
    let unsafe_text = |s: &str| s.is_empty() || s.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if unsafe_text(path) || unsafe_text(host) {
        return Err(ProbeError::Http(format!("refusing to send path {path:?} host {host:?}")));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portier-check\r\nConnection: close\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await.map_err(ProbeError::Io)?;
    io.flush().await.map_err(ProbeError::Io)?;

    let mut reader = LineReader::new(io);
    loop {
        let line = reader.line().await.map_err(|e| e.into_probe(ProbeError::Http, "a status line"))?;
        let code = parse_status_line(&line, VERSIONS).map_err(ProbeError::Http)?;
        if code == expect {
            return Ok(());
        }
        if !(100..200).contains(&code) || code == 101 {
            return Err(ProbeError::Http(format!("status {code}, expected {expect}")));
        }
        // An interim response (100 Continue, 103 Early Hints): skip its headers.
        loop {
            let header = reader
                .line()
                .await
                .map_err(|e| e.into_probe(ProbeError::Http, "the end of an interim response"))?;
            if header.is_empty() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use crate::config::CheckKind;
    use crate::health::probe::{probe, ProbeError};

    const QUICK: Duration = Duration::from_millis(200);
    const SLOW: Duration = Duration::from_secs(2);

    fn check(expect: u16) -> CheckKind {
        CheckKind::Http { path: "/health".into(), expect, host: None }
    }

    /// A server that reads the request head, checks it, then writes `answer` and closes.
    async fn serve(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.ends_with(b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8(req).unwrap();
                    assert!(req.starts_with("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"), "{req}");
                    assert!(req.contains("\r\nUser-Agent: portier-check\r\nConnection: close\r\n"), "{req}");
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, answer).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn expected_status_is_alive() {
        let addr = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        probe(&check(200), addr, SLOW).await.unwrap();
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let addr =
            serve(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
        probe(&check(204), addr, SLOW).await.unwrap();
    }

    #[tokio::test]
    async fn other_status_names_it() {
        let addr = serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = probe(&check(200), addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
        assert_eq!(err.to_string(), "http: status 503, expected 200");
    }

    #[tokio::test]
    async fn host_header_is_used() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let ok = String::from_utf8_lossy(&buf[..n]).contains("\r\nHost: www.example\r\n");
            let answer: &[u8] = if ok { b"HTTP/1.1 200 OK\r\n\r\n" } else { b"HTTP/1.1 400 Bad\r\n\r\n" };
            tokio::io::AsyncWriteExt::write_all(&mut s, answer).await.unwrap();
        });
        let kind = CheckKind::Http { path: "/".into(), expect: 200, host: Some("www.example".into()) };
        probe(&kind, addr, SLOW).await.unwrap();
    }

    #[tokio::test]
    async fn garbage_is_an_http_error() {
        let addr = serve(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let err = probe(&check(200), addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(ref m) if m.contains("malformed status line")), "{err:?}");
    }

    #[tokio::test]
    async fn close_without_answer_is_an_http_error() {
        let addr = serve(b"").await;
        let err = probe(&check(200), addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(ref m) if m.contains("closed")), "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let err = probe(&check(200), addr, QUICK).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn endless_response_is_cut_off() {
        // A status line that never ends, streamed forever: an error, well within the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let chunk = [b'x'; 4096];
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"HTTP/1.1 200 OK").await;
            while tokio::io::AsyncWriteExt::write_all(&mut s, &chunk).await.is_ok() {}
        });
        let err = probe(&check(200), addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(ref m) if m.contains("16384 bytes")), "{err:?}");
    }

    #[tokio::test]
    async fn endless_interim_headers_are_cut_off() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"HTTP/1.1 100 Continue\r\n").await;
            while tokio::io::AsyncWriteExt::write_all(&mut s, b"X-Padding: yes\r\n").await.is_ok() {}
        });
        let err = probe(&check(200), addr, SLOW).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
    }

    #[tokio::test]
    async fn control_characters_in_path_are_refused() {
        let mut io = tokio::io::duplex(64).0;
        let err = super::exchange(&mut io, "/\r\nX: y", "h", 200).await.unwrap_err();
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_response_bytes_never_panic(answer in proptest::collection::vec(any::<u8>(), 0..256), expect in 100u16..600) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
                tokio::io::AsyncWriteExt::write_all(&mut theirs, &answer).await.unwrap();
                // EOF after the answer, while our request still has room to be written.
                tokio::io::AsyncWriteExt::shutdown(&mut theirs).await.unwrap();
                let _ = super::exchange(&mut ours, "/", "h", expect).await;
                drop(theirs);
            });
        }
    }
}
