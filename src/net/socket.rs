//! Transparent listeners and upstream sockets (IP_TRANSPARENT / IPV6_TRANSPARENT).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::descriptors::{FdSlot, DATA_PATH};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Where an upstream connection leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamSource {
    /// Transparent: bind the client's address (needs IP_TRANSPARENT and the return route).
    Client(IpAddr),
    /// SNAT from a given address.
    Fixed(IpAddr),
    /// SNAT from whatever address the kernel's routing picks.
    Kernel,
}

fn set_transparent(fd: RawFd, v6: bool) -> io::Result<()> {
    let (level, opt) =
        if v6 { (libc::SOL_IPV6, libc::IPV6_TRANSPARENT) } else { (libc::SOL_IP, libc::IP_TRANSPARENT) };
    set_int_opt(fd, level, opt).map_err(|e| {
        io::Error::new(e.kind(), format!("setsockopt(IP_TRANSPARENT): {e} (portier needs CAP_NET_ADMIN)"))
    })
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the caller passes a valid socket fd; the option value is a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listener that accepts connections diverted to it by an nftables `tproxy` rule.
/// The accepted socket's local address is the original destination (VIP:port).
pub fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    set_transparent(sock.as_raw_fd(), addr.is_ipv6())?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

/// Opens an upstream connection to `server`, leaving from `source`, within `timeout`.
pub async fn connect_upstream(
    server: SocketAddr,
    source: UpstreamSource,
    timeout: Duration,
) -> io::Result<(TcpStream, FdSlot)> {
    // Counted before the socket exists: past the data path's budget no descriptor is taken.
    let slot = DATA_PATH.take().ok_or_else(|| {
        io::Error::other(
            "the data path's share of the descriptor limit is used up (see portier_data_path_descriptors)",
        )
    })?;
    let sock = if server.is_ipv6() { TcpSocket::new_v6()? } else { TcpSocket::new_v4()? };
    match source {
        UpstreamSource::Client(ip) => {
            set_transparent(sock.as_raw_fd(), server.is_ipv6())?;
            // Choose the source port at connect() time from the full 4-tuple, so one client
            // address can hold many upstream connections without exhausting bind() ports.
            set_int_opt(sock.as_raw_fd(), libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT)?;
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        UpstreamSource::Fixed(ip) => {
            set_int_opt(sock.as_raw_fd(), libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT)?;
            sock.bind(SocketAddr::new(ip, 0))?
        }
        UpstreamSource::Kernel => {}
    }
    sock.set_nodelay(true)?;
    match tokio::time::timeout(timeout, sock.connect(server)).await {
        Ok(r) => r.map(|s| (s, slot)),
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}")))
        }
    }
}
