//! The relay's UDP ports: pairs (RTP on an even port, RTCP on the next) from the configured
//! range, handed out round robin so a port just released is not reused while the previous
//! call's last packets may still arrive. The kernel is the allocator: a pair is free when both
//! ports bind, so a port another program holds is skipped and nothing is tracked here.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// `first..=last`, `first` even and `last` odd, at least one pair (checked by the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// A range of whole pairs; None when it holds none (first odd, or first > last - 1).
    pub fn new(first: u16, last: u16) -> Option<PortRange> {
        if first % 2 != 0 || first == 0 || last <= first {
            return None;
        }
        // A lone port at the end cannot make a pair.
        let last = if (last - first) % 2 == 0 { last - 1 } else { last };
        Some(PortRange { first, last })
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    /// How many RTP/RTCP pairs it holds.
    pub fn pairs(&self) -> u32 {
        u32::from(self.last - self.first).div_ceil(2)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Two bound, non-blocking sockets: RTP on `port`, RTCP on `port + 1`.
#[derive(Debug)]
pub struct PortPair {
    pub port: u16,
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no free port pair left in sip.media.ports {range} on {address}")]
    Exhausted { range: PortRange, address: IpAddr },
    #[error("cannot open relay ports on {address}: {source}")]
    Bind { address: IpAddr, source: io::Error },
}

/// Hands out pairs; see the module docs.
#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    /// Index of the pair tried next.
    next: u32,
}

impl PortPool {
    pub fn new(range: PortRange) -> PortPool {
        PortPool { range, next: 0 }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The next free pair on `address`, trying each pair of the range at most once.
    pub fn open(&mut self, address: IpAddr) -> Result<PortPair, PortError> {
        let pairs = self.range.pairs();
        for _ in 0..pairs {
            let port = self.range.first + (2 * self.next) as u16;
            self.next = (self.next + 1) % pairs;
            match bind_pair(address, port) {
                Ok(p) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                // Not this port's fault (the address is not ours, descriptors exhausted).
                Err(source) => return Err(PortError::Bind { address, source }),
            }
        }
        Err(PortError::Exhausted { range: self.range, address })
    }
}

fn bind_pair(address: IpAddr, port: u16) -> io::Result<PortPair> {
    let rtp = UdpSocket::bind(SocketAddr::new(address, port))?;
    let rtcp = UdpSocket::bind(SocketAddr::new(address, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok(PortPair { port, rtp, rtcp })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A range of `pairs` pairs whose ports nothing else binds right now.
    fn free_range(pairs: u16) -> PortRange {
        for first in (41_000u16..60_000).step_by(200) {
            let all_free = (first..first + 2 * pairs).all(|p| UdpSocket::bind((LOOPBACK, p)).is_ok());
            if all_free {
                return PortRange::new(first, first + 2 * pairs - 1).unwrap();
            }
        }
        panic!("no free loopback port range");
    }

    #[test]
    fn ranges_hold_whole_pairs() {
        assert_eq!(PortRange::new(30_000, 39_999).unwrap().pairs(), 5_000);
        assert_eq!(PortRange::new(30_000, 30_001).unwrap().pairs(), 1);
        assert!(PortRange::new(30_001, 39_999).is_none(), "an odd first port splits the pairs");
        assert!(PortRange::new(30_000, 30_000).is_none());
        assert!(PortRange::new(0, 10).is_none());
        assert_eq!(PortRange::new(30_000, 30_004).unwrap().last(), 30_003, "a lone last port is left out");
    }

    #[test]
    fn pairs_go_round_robin_skip_busy_ports_and_run_out() {
        let range = free_range(3);
        let mut pool = PortPool::new(range);
        let a = pool.open(LOOPBACK).unwrap();
        assert_eq!(a.port, range.first());
        assert_eq!(a.rtp.local_addr().unwrap().port(), a.port);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.port + 1);
        // Someone else holds the second pair's RTCP port: that pair is skipped.
        let squatter = UdpSocket::bind((LOOPBACK, range.first() + 3)).unwrap();
        let c = pool.open(LOOPBACK).unwrap();
        assert_eq!(c.port, range.first() + 4);
        let e = pool.open(LOOPBACK).unwrap_err();
        assert!(matches!(e, PortError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains(&range.to_string()), "{e}");
        // Released ports come back, after the ones not used since.
        drop((a, squatter));
        assert_eq!(pool.open(LOOPBACK).unwrap().port, range.first());
    }
}
