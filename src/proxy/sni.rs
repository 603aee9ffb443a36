//! Reads the server name (SNI) and ALPN protocols from a TLS ClientHello without consuming it,
//! so TLS passthrough (`mode = "tls"`) can choose a pool by name and still relay every byte of
//! the handshake to the server, which terminates TLS itself.
//!
//! [`parse_client_hello`] is sans-IO: it looks at whatever bytes have arrived and either answers
//! or says how many bytes it needs at least. [`peek_client_hello`] drives it over a socket with
//! `MSG_PEEK`, so the bytes stay queued for the relay.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most bytes (record headers included) a ClientHello may take. Post-quantum key shares
/// push real hellos past one 16 KiB record, but nothing legitimate comes near 64 KiB; the cap
/// bounds what one connection can make us buffer before a pool is chosen.
pub const MAX_CLIENT_HELLO_LEN: usize = 64 * 1024;

const RECORD_HEADER_LEN: usize = 5;
/// Largest plaintext fragment a record may carry (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_HOST_NAME_LEN: usize = 255;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The SNI host name, lowercased (DNS names compare case-insensitively). `None` when the
    /// client sent no SNI, as clients dialling an IP address do.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order of preference; empty without the extension.
    pub alpn: Vec<String>,
    /// The hello's `legacy_version` (0x0303 for TLS 1.2 and 1.3; the real version of a 1.3
    /// hello is in `supported_versions`, which routing does not need).
    pub legacy_version: u16,
}

/// Why no [`ClientHelloInfo`] came out of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Everything so far is a plausible ClientHello prefix; read until the buffer holds at
    /// least `need_at_least` bytes and parse again. Never more than [`MAX_CLIENT_HELLO_LEN`].
    #[error("incomplete TLS ClientHello: need at least {need_at_least} bytes")]
    Incomplete { need_at_least: usize },
    /// The stream does not start with a TLS handshake record (plain HTTP, SSLv2, ...).
    #[error("not a TLS handshake: {0}")]
    NotTls(&'static str),
    /// It starts like TLS but breaks the ClientHello grammar.
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello would need more than [`MAX_CLIENT_HELLO_LEN`] bytes.
    #[error("TLS ClientHello larger than {MAX_CLIENT_HELLO_LEN} bytes")]
    TooLarge,
}

/// Parses the ClientHello at the start of `buf`: one handshake message carried in one or more
/// TLS records. Bytes after the record that completes the hello (early data, a
/// ChangeCipherSpec) are ignored.
///
/// A strict prefix of a valid hello always gives `Incomplete`, never a partial answer: the
/// hello is only interpreted once all of it is here.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHelloInfo, HelloError> {
    let msg = reassemble(buf)?;
    let body = msg.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
    parse_body(body)
}

/// Concatenates handshake record fragments until the first handshake message (header
/// included) is complete.
fn reassemble(buf: &[u8]) -> Result<Vec<u8>, HelloError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let total = handshake_total(&msg)?;
        if let Some(t) = total.filter(|&t| msg.len() >= t) {
            msg.truncate(t);
            return Ok(msg);
        }
        // Message bytes still missing; at least this many more must arrive in later records.
        let missing = match total {
            Some(t) => t - msg.len(),
            None => HANDSHAKE_HEADER_LEN - msg.len(),
        };
        let rest = buf.get(pos..).unwrap_or_default();
        check_record_prefix(rest, pos == 0)?;
        let Some(len) = rest.get(3..5).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return incomplete(pos + RECORD_HEADER_LEN + missing);
        };
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT_LEN {
            return Err(HelloError::Malformed("record longer than 16 KiB"));
        }
        let end = pos + RECORD_HEADER_LEN + len;
        if end > MAX_CLIENT_HELLO_LEN {
            return Err(HelloError::TooLarge); // even with all of it here: tiny records add up
        }
        let fragment = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let fragment = fragment.get(..len).unwrap_or(fragment);
        let before = msg.len();
        msg.extend_from_slice(fragment);
        if end > buf.len() {
            // Look at the partial fragment first, so a wrong message type or an oversized
            // hello is refused now instead of after waiting for the rest of the record.
            let total = handshake_total(&msg)?;
            let after = before + len; // message bytes once this record is complete
            let more = match total {
                Some(t) if t > after => RECORD_HEADER_LEN + t - after,
                None if after < HANDSHAKE_HEADER_LEN => RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN - after,
                _ => 0,
            };
            return incomplete(end + more);
        }
        pos = end;
    }
}

/// `Incomplete`, or `TooLarge` when even the lower bound is past the cap.
fn incomplete(need_at_least: usize) -> Result<Vec<u8>, HelloError> {
    if need_at_least > MAX_CLIENT_HELLO_LEN {
        Err(HelloError::TooLarge)
    } else {
        Err(HelloError::Incomplete { need_at_least })
    }
}

/// Checks the record header bytes present so far, so non-TLS traffic is refused from its
/// first byte. Outside the first record, a foreign record is a broken hello (RFC 8446 §5.1:
/// handshake messages are not interleaved with other record types), not "not TLS".
fn check_record_prefix(rest: &[u8], first: bool) -> Result<(), HelloError> {
    let err = |not_tls, malformed| {
        Err(if first { HelloError::NotTls(not_tls) } else { HelloError::Malformed(malformed) })
    };
    if let Some(&ty) = rest.first() {
        if first && ty & 0x80 != 0 {
            return Err(HelloError::NotTls("SSLv2-style ClientHello"));
        }
        if ty != CONTENT_TYPE_HANDSHAKE {
            return err(
                "first record is not a handshake record",
                "non-handshake record inside the ClientHello",
            );
        }
    }
    if let Some(&major) = rest.get(1) {
        if major != 3 {
            return err("record version is not TLS 1.x", "record version is not TLS 1.x");
        }
    }
    if let Some(&minor) = rest.get(2) {
        if !(1..=4).contains(&minor) {
            return err("record version is not TLS 1.0 to 1.3", "record version is not TLS 1.0 to 1.3");
        }
    }
    Ok(())
}

/// The whole handshake message length (header included) once its header is in `msg`.
fn handshake_total(msg: &[u8]) -> Result<Option<usize>, HelloError> {
    if msg.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
        return Err(HelloError::Malformed("first handshake message is not a ClientHello"));
    }
    let Some(&[_, a, b, c]) = msg.get(..HANDSHAKE_HEADER_LEN) else { return Ok(None) };
    let total = HANDSHAKE_HEADER_LEN + ((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c));
    if total > MAX_CLIENT_HELLO_LEN {
        return Err(HelloError::TooLarge);
    }
    Ok(Some(total))
}

/// The ClientHello body (RFC 8446 §4.1.2; the TLS 1.0–1.2 form is the same, extensions
/// optional).
fn parse_body(body: &[u8]) -> Result<ClientHelloInfo, HelloError> {
    use HelloError::Malformed;
    let mut r = Reader(body);
    let legacy_version = r.u16().ok_or(Malformed("truncated legacy_version"))?;
    if legacy_version >> 8 != 3 {
        return Err(Malformed("legacy_version is not 3.x"));
    }
    r.take(32).ok_or(Malformed("truncated random"))?;
    let session_id = r.vec8().ok_or(Malformed("truncated session_id"))?;
    if session_id.len() > 32 {
        return Err(Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16().ok_or(Malformed("truncated cipher_suites"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("cipher_suites empty or of odd length"));
    }
    let compression = r.vec8().ok_or(Malformed("truncated compression_methods"))?;
    if compression.is_empty() {
        return Err(Malformed("no compression method"));
    }
    let mut info = ClientHelloInfo { legacy_version, ..Default::default() };
    if r.is_empty() {
        return Ok(info); // a hello without extensions (TLS 1.0 to 1.2)
    }
    let mut exts = Reader(r.vec16().ok_or(Malformed("truncated extensions"))?);
    if !r.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    // A second copy of an extension we route on would leave it to the server which one
    // counts; refuse it (RFC 8446 §4.2 forbids duplicates anyway). Others are the server's
    // business.
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let ty = exts.u16().ok_or(Malformed("truncated extension type"))?;
        let data = exts.vec16().ok_or(Malformed("truncated extension"))?;
        match ty {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(Malformed("duplicate server_name extension"));
                }
                info.server_name = parse_server_name(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(Malformed("duplicate ALPN extension"));
                }
                info.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The server_name extension (RFC 6066 §3): the host_name entry, if any.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    use HelloError::Malformed;
    let mut r = Reader(data);
    let mut list = Reader(r.vec16().ok_or(Malformed("truncated server_name list"))?);
    if !r.is_empty() {
        return Err(Malformed("bytes after the server_name list"));
    }
    if list.is_empty() {
        return Err(Malformed("empty server_name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let ty = list.u8().ok_or(Malformed("truncated server_name entry"))?;
        let name = list.vec16().ok_or(Malformed("truncated server_name entry"))?;
        if ty != NAME_TYPE_HOST_NAME {
            continue; // no other name type is defined; not ours to judge
        }
        if host.is_some() {
            return Err(Malformed("more than one host_name"));
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// Validates and lowercases a host_name. Control characters (NUL included) are refused as
/// well as non-ASCII: the name ends up in logs and pool lookups, where a NUL or a line break
/// could make one name look like another.
fn host_name(name: &[u8]) -> Result<String, HelloError> {
    use HelloError::Malformed;
    if name.is_empty() {
        return Err(Malformed("empty host_name"));
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(Malformed("host_name longer than 255 bytes"));
    }
    if !name.is_ascii() {
        return Err(Malformed("host_name is not ASCII"));
    }
    if name.iter().any(u8::is_ascii_control) {
        return Err(Malformed("host_name contains a control character"));
    }
    Ok(name.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect())
}

/// The ALPN extension (RFC 7301 §3.1). Protocol names are opaque bytes on the wire; every
/// registered one is ASCII, so a name that is not UTF-8 is treated as malformed rather than
/// routed on a lossy conversion.
fn parse_alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    use HelloError::Malformed;
    let mut r = Reader(data);
    let mut list = Reader(r.vec16().ok_or(Malformed("truncated ALPN list"))?);
    if !r.is_empty() {
        return Err(Malformed("bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(Malformed("empty ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let name = list.vec8().ok_or(Malformed("truncated ALPN protocol name"))?;
        if name.is_empty() {
            return Err(Malformed("empty ALPN protocol name"));
        }
        let name = std::str::from_utf8(name).map_err(|_| Malformed("ALPN protocol name is not UTF-8"))?;
        protocols.push(name.to_owned());
    }
    Ok(protocols)
}

/// A cursor whose reads return `None` instead of going out of bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Why [`peek_client_hello`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The bytes are not an acceptable ClientHello (never `Incomplete`).
    #[error(transparent)]
    Hello(HelloError),
    #[error("no complete TLS ClientHello within the timeout ({received} bytes received)")]
    Timeout { received: usize },
    /// The client half-closed before the hello was complete.
    #[error("connection closed before the TLS ClientHello was complete ({received} bytes received)")]
    Closed { received: usize },
    #[error("reading the TLS ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// First peek size: most hellos fit, and a bigger one says how much more it needs.
const FIRST_PEEK: usize = 2048;
/// Backoff between peeks that found no new data (see [`peek_client_hello`]).
const MIN_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Waits up to `timeout` for a complete ClientHello on `stream` and parses it, leaving every
/// byte in the socket (`MSG_PEEK`) so the relay later forwards the hello untouched.
///
/// Peeking never drains the socket, so once any byte is queued the socket stays readable and
/// `readable()` returns at once: waiting for *more* data would spin. When a peek found nothing
/// new, the loop therefore sleeps a short backoff (1 ms doubling to 20 ms) before peeking
/// again. A half-close is seen through the readiness' read-closed flag, so a client that
/// stops mid-hello is refused at once instead of at the timeout.
pub async fn peek_client_hello(stream: &TcpStream, timeout: Duration) -> Result<ClientHelloInfo, PeekError> {
    let mut received = 0usize;
    match tokio::time::timeout_at(Instant::now() + timeout, peek_loop(stream, &mut received)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(PeekError::Timeout { received }),
    }
}

async fn peek_loop(stream: &TcpStream, received: &mut usize) -> Result<ClientHelloInfo, PeekError> {
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut backoff = MIN_BACKOFF;
    loop {
        // Readiness taken before the peek: if it says the peer half-closed, everything the
        // peer sent was queued before the FIN and so is in this peek.
        let ready = stream.ready(Interest::READABLE).await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(PeekError::Closed { received: *received });
        }
        let grew = n > *received;
        *received = n;
        let need = match parse_client_hello(&buf[..n]) {
            Err(HelloError::Incomplete { need_at_least }) => need_at_least,
            Ok(info) => return Ok(info),
            Err(e) => return Err(PeekError::Hello(e)),
        };
        if ready.is_read_closed() {
            return Err(PeekError::Closed { received: n });
        }
        let was_full = n == buf.len();
        if need > buf.len() {
            buf.resize(need, 0);
        }
        if was_full {
            continue; // more may already be queued: peek again with the larger buffer
        }
        backoff = if grew { MIN_BACKOFF } else { (backoff * 2).min(MAX_BACKOFF) };
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
