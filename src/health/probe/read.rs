//! Bounded line reading and status-line parsing shared by the HTTP and SIP probes.
//!
//! Both protocols start a response with `PROTO/VERSION CODE REASON`; the probes only need the
//! code (and for SIP a few headers), so this is a deliberately small, total parser: any input
//! yields a value or an error string, never a panic.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::MAX_READ;

/// Why no line could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    Io(io::Error),
    /// The peer closed the connection before the line ended.
    Eof,
    /// [`MAX_READ`] bytes arrived without completing what we were waiting for.
    TooLong,
}

impl ReadError {
    /// Turn into a probe error, protocol-specific failures built by `proto`.
    pub(super) fn into_probe(
        self,
        proto: fn(String) -> super::ProbeError,
        waiting_for: &str,
    ) -> super::ProbeError {
        match self {
            ReadError::Io(e) => super::ProbeError::Io(e),
            ReadError::Eof => proto(format!("connection closed before {waiting_for}")),
            ReadError::TooLong => proto(format!("gave up after {MAX_READ} bytes without {waiting_for}")),
        }
    }
}

/// Reads lines from a stream, never buffering more than [`MAX_READ`] bytes in total.
pub(super) struct LineReader<'a, S> {
    io: &'a mut S,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a, S: AsyncRead + Unpin> LineReader<'a, S> {
    pub(super) fn new(io: &'a mut S) -> Self {
        LineReader { io, buf: Vec::with_capacity(1024), pos: 0 }
    }

    /// The next line, without its `\n` or `\r\n`.
    pub(super) async fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = trim_cr(&self.buf[self.pos..self.pos + i]).to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Discard `n` bytes (a message body).
    pub(super) async fn skip(&mut self, mut n: usize) -> Result<(), ReadError> {
        loop {
            let take = n.min(self.buf.len() - self.pos);
            self.pos += take;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Read more bytes, up to the total budget.
    async fn fill(&mut self) -> Result<(), ReadError> {
        let room = MAX_READ - self.buf.len();
        if room == 0 {
            return Err(ReadError::TooLong);
        }
        let mut chunk = [0u8; 4096];
        let want = room.min(chunk.len());
        let n = self.io.read(&mut chunk[..want]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

pub(super) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parse `PROTO/VERSION CODE[ REASON]` and return CODE.
///
/// `versions` lists the accepted protocol-version tokens (compared case-insensitively).
pub(super) fn parse_status_line(line: &[u8], versions: &[&str]) -> Result<u16, String> {
    let malformed = || format!("malformed status line {:?}", preview(line));
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    if !versions.iter().any(|v| version.eq_ignore_ascii_case(v.as_bytes())) {
        return Err(malformed());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
        return Err(malformed());
    }
    Ok(code.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
}

/// At most 40 characters of what the server sent, for error messages.
pub(super) fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
    if bytes.len() > 40 {
        text + "..."
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HTTP: &[&str] = &["HTTP/1.0", "HTTP/1.1"];

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK", HTTP), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503", HTTP), Ok(503));
        assert_eq!(parse_status_line(b"http/1.1 404 Not Found here", HTTP), Ok(404));
        assert_eq!(parse_status_line(b"SIP/2.0 100 Trying", &["SIP/2.0"]), Ok(100));
        for bad in [
            &b""[..],
            b"HTTP/1.1",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc",
            b"HTTP/2 200",
            b"SSH-2.0-x",
            b"HTTP/1.1  200",
            b"HTTP/1.1 099",
        ] {
            assert!(parse_status_line(bad, HTTP).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = vec![b'a'; MAX_READ * 2];
        let mut src = &data[..];
        let mut r = LineReader::new(&mut src);
        assert!(matches!(r.line().await, Err(ReadError::TooLong)));

        let mut src = &b"one\r\ntwo\nthree"[..];
        let mut r = LineReader::new(&mut src);
        assert_eq!(r.line().await.unwrap(), b"one");
        assert_eq!(r.line().await.unwrap(), b"two");
        assert!(matches!(r.line().await, Err(ReadError::Eof)));

        let mut src = &b"body12345rest\n"[..];
        let mut r = LineReader::new(&mut src);
        r.skip(9).await.unwrap();
        assert_eq!(r.line().await.unwrap(), b"rest");
        assert!(matches!(r.skip(1).await, Err(ReadError::Eof)));
    }

    proptest! {
        #[test]
        fn status_line_parser_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(code) = parse_status_line(&bytes, HTTP) {
                prop_assert!((100..=999).contains(&code));
            }
            let _ = parse_status_line(&bytes, &["SIP/2.0"]);
            let _ = preview(&bytes);
        }

        #[test]
        fn status_like_lines_parse(code in 100u16..1000, reason in "[ -~]{0,20}") {
            let line = format!("HTTP/1.1 {code} {reason}");
            prop_assert_eq!(parse_status_line(line.as_bytes(), HTTP), Ok(code));
        }
    }
}
