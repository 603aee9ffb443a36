//! The SIP OPTIONS check (RFC 3261 §11): alive iff the server sends any final response.
//!
//! A 404, 403 or 405 still proves a live SIP stack that parsed our request, which is all a
//! load balancer needs to know; only silence, garbage and transport errors mean "down".

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::read::{parse_status_line, trim_cr, LineReader, ReadError};
use super::{host_of, ProbeError, MAX_READ};
use crate::config::SipTransport;

/// RFC 3261 timer T1: the first retransmission interval over UDP.
pub(super) const T1: Duration = Duration::from_millis(500);
/// RFC 3261 timer T2: the cap on the retransmission interval.
pub(super) const T2: Duration = Duration::from_secs(4);

/// An OPTIONS request and the identifiers its responses must carry.
pub(super) struct Request {
    pub(super) bytes: Vec<u8>,
    pub(super) call_id: String,
    pub(super) branch: String,
}

/// A token unique within this process (counter) and very likely across processes and restarts
/// (pid and time), as Call-ID, tags and branches need.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    // splitmix64 finaliser: spreads time and pid over all 64 bits.
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("{z:016x}{n:x}")
}

pub(super) fn build_request(target: SocketAddr, local: SocketAddr, transport: SipTransport) -> Request {
    let call_id = format!("{}@portier", unique());
    let branch = format!("z9hG4bK{}", unique());
    let tag = unique();
    let proto = match transport {
        SipTransport::Udp => "UDP",
        SipTransport::Tcp => "TCP",
        SipTransport::Tls => "TLS",
    };
    let (host, port) = (host_of(target), target.port());
    let local_host = host_of(local);
    let text = format!(
        "OPTIONS sip:{host}:{port} SIP/2.0\r\n\
         Via: SIP/2.0/{proto} {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:portier@{local_host}>;tag={tag}\r\n\
         To: <sip:{host}:{port}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         User-Agent: portier\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\
         \r\n"
    );
    Request { bytes: text.into_bytes(), call_id, branch }
}

/// What the probe needs from a response head.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) call_id: Option<String>,
    /// The branch parameter of the topmost Via.
    pub(super) branch: Option<String>,
    pub(super) content_length: Option<usize>,
}

impl ResponseHead {
    fn matches(&self, request: &Request) -> bool {
        self.call_id.as_deref() == Some(request.call_id.as_str())
            && self.branch.as_deref() == Some(request.branch.as_str())
    }
}

/// Parse a response's status line and headers (`lines` stop at the blank line or run out).
pub(super) fn parse_head<'a>(mut lines: impl Iterator<Item = &'a [u8]>) -> Result<ResponseHead, String> {
    let first = lines.next().unwrap_or_default();
    let status = parse_status_line(first, &["SIP/2.0"])?;
    if status >= 700 {
        return Err(format!("status {status} out of range"));
    }
    // Unfold continuation lines, then keep the headers we care about.
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(text.trim());
            }
        } else if let Some((name, value)) = text.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut head = ResponseHead { status, ..ResponseHead::default() };
    for (name, value) in headers {
        match name.as_str() {
            "call-id" | "i" if head.call_id.is_none() => head.call_id = Some(value),
            "via" | "v" if head.branch.is_none() => {
                head.branch = Some(top_via_branch(&value).unwrap_or_default())
            }
            "content-length" | "l" if head.content_length.is_none() => {
                head.content_length = value.parse().ok()
            }
            _ => {}
        }
    }
    Ok(head)
}

/// The branch parameter of the first Via value in a (possibly comma-joined) Via header.
fn top_via_branch(via: &str) -> Option<String> {
    let first = via.split(',').next()?;
    first.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("branch").then(|| value.trim().to_owned())
    })
}

/// Parse one datagram as a response.
pub(super) fn parse_datagram(datagram: &[u8]) -> Result<ResponseHead, String> {
    parse_head(datagram.split(|&b| b == b'\n').map(trim_cr))
}

/// OPTIONS over a connected UDP socket, retransmitted per RFC 3261 timer E (`t1` doubling up to
/// `t2`, then every `t2` once a provisional response arrived) until a final response matching
/// our Call-ID and branch arrives. Stray datagrams are ignored; the caller's timeout ends it.
pub(super) async fn probe_udp(target: SocketAddr, t1: Duration, t2: Duration) -> Result<(), ProbeError> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).await.map_err(ProbeError::Io)?;
    socket.connect(target).await.map_err(ProbeError::Connect)?;
    let local = socket.local_addr().map_err(ProbeError::Io)?;
    let request = build_request(target, local, SipTransport::Udp);

    let mut buf = vec![0u8; MAX_READ];
    let mut interval = t1;
    let mut proceeding = false;
    loop {
        socket.send(&request.bytes).await.map_err(udp_error)?;
        let resend_at = Instant::now() + interval;
        loop {
            let n = match tokio::time::timeout_at(resend_at, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(received) => received.map_err(udp_error)?,
            };
            match parse_datagram(&buf[..n]) {
                Ok(head) if head.matches(&request) => {
                    if head.status >= 200 {
                        return Ok(());
                    }
                    proceeding = true;
                }
                // Not ours, or not a response at all: keep waiting.
                _ => {}
            }
        }
        interval = if proceeding { t2 } else { (interval * 2).min(t2) };
    }
}

/// An ICMP port unreachable surfaces as ECONNREFUSED on a connected UDP socket: nothing listens.
fn udp_error(e: io::Error) -> ProbeError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        ProbeError::Connect(e)
    } else {
        ProbeError::Io(e)
    }
}

/// OPTIONS over a connected stream (TCP or TLS), whose local address is `local`.
///
/// The connection is ours alone, so the first final response is the answer; provisional ones
/// are skipped. Call-ID and branch are not compared: there is no one else's response to ignore.
pub(super) async fn exchange_stream<S>(
    io: &mut S,
    target: SocketAddr,
    local: SocketAddr,
    transport: SipTransport,
) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = build_request(target, local, transport);
    io.write_all(&request.bytes).await.map_err(ProbeError::Io)?;
    io.flush().await.map_err(ProbeError::Io)?;

    let mut reader = LineReader::new(io);
    let read_error = |e: ReadError| e.into_probe(ProbeError::Sip, "a complete response head");
    loop {
        let mut lines = Vec::new();
        loop {
            let line = reader.line().await.map_err(read_error)?;
            if line.is_empty() && !lines.is_empty() {
                break;
            }
            // RFC 3261 §7.5: ignore CRLF keep-alives before a message.
            if !line.is_empty() {
                lines.push(line);
            }
        }
        let head = parse_head(lines.iter().map(Vec::as_slice)).map_err(ProbeError::Sip)?;
        if head.status >= 200 {
            return Ok(());
        }
        reader.skip(head.content_length.unwrap_or(0)).await.map_err(read_error)?;
    }
}

#[cfg(test)]
#[path = "sip_tests.rs"]
mod tests;
