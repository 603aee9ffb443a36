//! One call's relayed media, sans-IO: the SDP each side sends is carried to the other side
//! rewritten to the relay's ports for that side ([`Session::carry`]), and what the running
//! relays must learn from it comes out as [`Order`]s (start a stream with its sockets, a new
//! address, hold, arm the timeout). Side 0 is the caller's, side 1 the callee's; a stream's
//! leg `i` is the socket pair side `i` sends to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::ports::{PortError, PortPair, PortPool};
use super::relay::{Counters, Stats};
use super::sdp::{Media, OriginStamp, RelayPort, Sdp, SdpError};

/// Media sections relayed per call; later ones pass unchanged (a bound on the ports one
/// caller's SDP can take).
pub const MAX_STREAMS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller = 0,
    Callee = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// Where an endpoint's SDP says it receives (and, symmetric RTP, sends from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
}

impl Endpoint {
    /// From a media section; nothing for a stream on hold by `c=0.0.0.0` or port 0 (the latch
    /// keeps what it had learnt).
    fn of(m: &Media) -> Endpoint {
        match m.address.filter(|a| !a.is_unspecified()) {
            Some(a) if m.port != 0 => Endpoint {
                rtp: Some(SocketAddr::new(a, m.port)),
                rtcp: Some(SocketAddr::new(a, m.rtcp_port.unwrap_or(m.port.wrapping_add(1)))),
            },
            _ => Endpoint::default(),
        }
    }
}

/// An endpoint's last RTCP reception report, in the call log's units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub loss_percent: f64,
    pub jitter_ms: Option<f64>,
}

/// What the relays must do, in order.
#[derive(Debug)]
pub enum Order {
    /// Relay stream `stream` between `legs[0]` (the caller sends there) and `legs[1]`.
    Start {
        stream: usize,
        legs: [PortPair; 2],
        signalled: [Endpoint; 2],
        held: bool,
        counters: Arc<Counters>,
    },
    /// Side `side`'s endpoint of `stream` signalled a new address.
    Signal {
        stream: usize,
        side: Side,
        endpoint: Endpoint,
    },
    Held {
        stream: usize,
        held: bool,
    },
    /// The call was answered: every stream's silence counts from now.
    Arm,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    Sdp(#[from] SdpError),
    #[error("{0}")]
    Ports(#[from] PortError),
}

struct Stream {
    /// The relay's RTP port per side; None: not relayed (refused stream, or past the cap).
    ports: Option<[u16; 2]>,
    signalled: [Endpoint; 2],
    held: [bool; 2],
    counters: Arc<Counters>,
    silent: bool,
    /// The RTP clock of its codec (from the latest SDP), to read RTCP jitter in time.
    clock: Option<u32>,
}

impl Stream {
    fn held(&self) -> bool {
        self.held[0] || self.held[1]
    }
}

/// See the module docs.
pub struct Session {
    /// The relay's address on each side: where its ports are bound and what its SDP names.
    addresses: [IpAddr; 2],
    streams: Vec<Stream>,
    stamps: [OriginStamp; 2],
    orders: Vec<Order>,
    armed: bool,
}

impl Session {
    pub fn new(caller_side: IpAddr, callee_side: IpAddr) -> Session {
        Session {
            addresses: [caller_side, callee_side],
            streams: Vec::new(),
            stamps: Default::default(),
            orders: Vec::new(),
            armed: false,
        }
    }

    /// The body `from` sent, as the other side must get it. Streams seen for the first time get
    /// their ports from `pool`; the addresses and hold states it signals become orders.
    pub fn carry(&mut self, from: Side, body: &[u8], pool: &mut PortPool) -> Result<Vec<u8>, MediaError> {
        let mut sdp = Sdp::parse(body)?;
        let to = from.other();
        let mut relay = Vec::new();
        let media = sdp.media();
        for (i, m) in media.iter().enumerate() {
            if i >= MAX_STREAMS {
                break;
            }
            let endpoint = Endpoint::of(m);
            let held = m.is_held();
            if i == self.streams.len() {
                self.open(from, m, endpoint, held, pool)?;
            } else {
                let s = &mut self.streams[i];
                if s.ports.is_some() && endpoint.rtp.is_some() && s.signalled[from as usize] != endpoint {
                    s.signalled[from as usize] = endpoint;
                    self.orders.push(Order::Signal { stream: i, side: from, endpoint });
                }
                let was = s.held();
                s.held[from as usize] = held;
                if s.ports.is_some() && s.held() != was {
                    self.orders.push(Order::Held { stream: i, held: s.held() });
                }
            }
            let clock = sdp.clock_rate(i);
            let s = &mut self.streams[i];
            s.clock = clock.or(s.clock);
            relay.push(
                s.ports.map(|p| RelayPort { address: self.addresses[to as usize], port: p[to as usize] }),
            );
        }
        sdp.relay(&relay);
        self.stamps[to as usize].stamp(&mut sdp, self.addresses[to as usize]);
        Ok(sdp.to_bytes())
    }

    fn open(
        &mut self,
        from: Side,
        m: &Media,
        endpoint: Endpoint,
        held: bool,
        pool: &mut PortPool,
    ) -> Result<(), MediaError> {
        let mut signalled = [Endpoint::default(); 2];
        signalled[from as usize] = endpoint;
        let mut h = [false; 2];
        h[from as usize] = held;
        let counters = Arc::new(Counters::default());
        let mut s = Stream {
            ports: None,
            signalled,
            held: h,
            counters: counters.clone(),
            silent: false,
            clock: None,
        };
        if m.port != 0 {
            let caller = pool.open(self.addresses[0])?;
            let callee = pool.open(self.addresses[1])?;
            s.ports = Some([caller.port, callee.port]);
            self.orders.push(Order::Start {
                stream: self.streams.len(),
                legs: [caller, callee],
                signalled,
                held,
                counters,
            });
            if self.armed {
                self.orders.push(Order::Arm);
            }
        }
        self.streams.push(s);
        Ok(())
    }

    /// The call was answered.
    pub fn arm(&mut self) {
        if !self.armed {
            self.armed = true;
            self.orders.push(Order::Arm);
        }
    }

    pub fn take_orders(&mut self) -> Vec<Order> {
        std::mem::take(&mut self.orders)
    }

    /// Stream `stream`'s relay ended for silence; true when every relayed stream of the call
    /// has (the call is over).
    pub fn on_silent(&mut self, stream: usize) -> bool {
        if let Some(s) = self.streams.get_mut(stream) {
            s.silent = true;
        }
        self.streams.iter().filter(|s| s.ports.is_some()).all(|s| s.silent)
    }

    /// Whether any stream is relayed (a call whose SDP offered none has nothing to time out).
    pub fn relays(&self) -> bool {
        self.streams.iter().any(|s| s.ports.is_some())
    }

    /// Relay ports (RTP and RTCP, both sides) the call holds.
    pub fn ports_open(&self) -> usize {
        self.streams.iter().filter(|s| s.ports.is_some()).count() * 4
    }

    /// What each side's RTCP last reported about the audio it receives (0: the caller), from
    /// the first stream with a report: loss in percent since the report before, jitter in
    /// milliseconds when the codec's clock is known.
    pub fn reported(&self) -> [Option<Reported>; 2] {
        let mut out = [None, None];
        for (side, slot) in out.iter_mut().enumerate() {
            *slot = self.streams.iter().find_map(|s| {
                let r = s.counters.read().report[side]?;
                Some(Reported {
                    loss_percent: r.loss_percent(),
                    jitter_ms: s.clock.map(|c| f64::from(r.jitter) * 1000.0 / f64::from(c)),
                })
            });
        }
        out
    }

    /// The call's figures so far, all streams together (0: caller to callee).
    pub fn stats(&self) -> Stats {
        let mut t = Stats::default();
        for s in &self.streams {
            let r = s.counters.read();
            for d in 0..2 {
                t.report[d] = t.report[d].or(r.report[d]);
                t.packets[d] += r.packets[d];
                t.bytes[d] += r.bytes[d];
                t.foreign[d] += r.foreign[d];
                t.unroutable[d] += r.unroutable[d];
            }
        }
        t
    }
}

#[cfg(test)]
mod tests;
