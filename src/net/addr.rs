//! Newtypes so that the client's address and the original destination can never be swapped.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The address of the client as seen on the accepted socket (the real one, under TPROXY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The address the client dialled (VIP:port). Under TPROXY `getsockname()` on the accepted
/// socket returns it; SO_ORIGINAL_DST is for NAT REDIRECT and does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl ClientAddr {
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
}

impl OrigDstAddr {
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
