//! Client-side helpers: open connections from inside a namespace and read the
//! echo backend's greeting, which tells a test which backend answered and
//! which source address that backend saw (the point of transparent proxying).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::Netns;

/// The first line an [`EchoBackend`](super::EchoBackend) sends:
/// `backend=<name> peer=<ip>:<port> local=<ip>:<port>` (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The backend's name (as given to `EchoBackend::start`).
    pub backend: String,
    /// The connection's remote address as the backend saw it. With
    /// transparent proxying this is the real client address.
    pub peer: SocketAddr,
    /// The backend's own address of the connection.
    pub local: SocketAddr,
}

impl Greeting {
    /// Parses a greeting line (trailing CR/LF allowed). Returns `None` for
    /// anything else, so callers can report the offending line themselves.
    pub fn parse(line: &str) -> Option<Greeting> {
        let mut fields = line.trim_end_matches(['\r', '\n']).split(' ');
        let backend = fields.next()?.strip_prefix("backend=")?;
        let peer = fields.next()?.strip_prefix("peer=")?.parse().ok()?;
        let local = fields.next()?.strip_prefix("local=")?.parse().ok()?;
        if backend.is_empty() || fields.next().is_some() {
            return None;
        }
        Some(Greeting { backend: backend.to_owned(), peer, local })
    }
}

impl fmt::Display for Greeting {
    /// The wire format, without the trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend={} peer={} local={}", self.backend, self.peer, self.local)
    }
}

/// "198.19.0.10:135 from 198.18.1.2" / "... from netns NAME": what every
/// error of this module is prefixed with, so a failing test says which
/// connection failed.
fn describe(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr) -> String {
    match src {
        Some(ip) => format!("{dst} from {ip}"),
        None => format!("{dst} from netns {}", ns.name()),
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens a TCP connection to `dst` from inside `ns`, bound to `src` (port 0)
/// when given, and returns the stream. The socket stays in `ns` although the
/// stream is used from the caller's thread. Errors keep the OS error kind
/// (e.g. `ConnectionRefused`) and read like
/// `connect 198.19.0.10:135 from 198.18.1.2: Connection refused (os error 111)`.
pub fn connect(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let what = format!("connect {}", describe(ns, src, dst));
    let result = ns.run(move || -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(ip) = src {
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        sock.connect_timeout(&dst.into(), timeout)?;
        Ok(sock.into())
    });
    result.and_then(|r| r).map_err(|e| with_context(e, &what))
}

/// Connects like [`connect`], reads the greeting, checks that `ping\n` is
/// echoed back, and closes. The whole exchange must finish within `timeout`.
pub fn greet(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<Greeting> {
    let deadline = Instant::now() + timeout;
    let stream = connect(ns, src, dst, timeout)?;
    let what = describe(ns, src, dst);
    let mut reader = BufReader::new(stream);

    let line =
        read_line(&mut reader, deadline).map_err(|e| with_context(e, &format!("read greeting {what}")))?;
    let greeting = Greeting::parse(&line).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("read greeting {what}: not a greeting: {line:?}"))
    })?;

    set_remaining(reader.get_ref(), deadline)
        .and_then(|()| reader.get_mut().write_all(b"ping\n"))
        .map_err(|e| with_context(e, &format!("send ping {what}")))?;
    let echo = read_line(&mut reader, deadline).map_err(|e| with_context(e, &format!("read echo {what}")))?;
    if echo != "ping\n" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("read echo {what}: expected \"ping\\n\", got {echo:?}"),
        ));
    }
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    Ok(greeting)
}

/// Reads one `\n`-terminated line before `deadline`; EOF before the newline
/// is an error (the backend closed or a proxy reset the connection).
fn read_line(reader: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<String> {
    const MAX_LINE: u64 = 4096;
    set_remaining(reader.get_ref(), deadline)?;
    let mut buf = Vec::new();
    let result = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf);
    match result {
        Ok(_) if buf.ends_with(b"\n") => {
            String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed after {:?} without a complete line", String::from_utf8_lossy(&buf)),
        )),
        // A socket read timeout surfaces as WouldBlock on Linux.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
        }
        Err(e) => Err(e),
    }
}

fn set_remaining(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}
