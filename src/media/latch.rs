//! Which source a relayed stream accepts (symmetric RTP, RFC 4961, learnt safely), and when a
//! silent stream ends its call. Sans-IO, time injected.
//!
//! Learning follows rtpengine's `--endpoint-learning=heuristic`: for `LEARN_WINDOW` after the
//! first packet, a source is ranked by how well it matches the address the endpoint signalled
//! (address and port, then address, then anything: behind NAT the source is neither), packets
//! from the best source so far pass, and a source matching address and port latches at once.
//! Once latched only that source passes; anything else is dropped and counted: the RTP Bleed /
//! RTP Inject class (CVE-2017-14114), where a stranger sends to a relay port to have the
//! media turned towards it. Learning starts again only when the endpoint signals again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long after the first packet the best source is still being chosen.
pub const LEARN_WINDOW: Duration = Duration::from_secs(3);

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Not from the source this stream accepts: dropped and counted.
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Any,
    Address,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing heard since the last signalling.
    Waiting,
    Learning {
        since: Instant,
        best: SocketAddr,
        rank: Rank,
    },
    Latched(SocketAddr),
}

/// One endpoint of a relayed stream, as its relay port sees it.
#[derive(Debug, Clone)]
pub struct Latch {
    /// Where its SDP says it sends from and receives on.
    signalled: Option<SocketAddr>,
    state: State,
    /// Packets dropped as foreign since the stream began.
    pub foreign: u64,
}

impl Latch {
    pub fn new(signalled: Option<SocketAddr>) -> Latch {
        Latch { signalled, state: State::Waiting, foreign: 0 }
    }

    fn rank(&self, from: SocketAddr) -> Rank {
        match self.signalled {
            Some(s) if s == from => Rank::Exact,
            Some(s) if s.ip() == from.ip() => Rank::Address,
            _ => Rank::Any,
        }
    }

    /// Judges a packet that arrived from `from` at `now`.
    pub fn on_packet(&mut self, from: SocketAddr, now: Instant) -> Verdict {
        if let State::Learning { since, best, .. } = self.state {
            if now.duration_since(since) >= LEARN_WINDOW {
                self.state = State::Latched(best);
            }
        }
        let rank = self.rank(from);
        let verdict = match self.state {
            State::Waiting => {
                self.state = if rank == Rank::Exact {
                    State::Latched(from)
                } else {
                    State::Learning { since: now, best: from, rank }
                };
                Verdict::Accept
            }
            State::Learning { since, best, rank: held } => {
                if from == best {
                    Verdict::Accept
                } else if rank > held {
                    self.state = if rank == Rank::Exact {
                        State::Latched(from)
                    } else {
                        State::Learning { since, best: from, rank }
                    };
                    Verdict::Accept
                } else {
                    Verdict::Foreign
                }
            }
            State::Latched(addr) if addr == from => Verdict::Accept,
            State::Latched(_) => Verdict::Foreign,
        };
        if verdict == Verdict::Foreign {
            self.foreign += 1;
        }
        verdict
    }

    /// The endpoint signalled again (re-INVITE, UPDATE): learn afresh from its new address.
    pub fn resignal(&mut self, signalled: Option<SocketAddr>) {
        self.signalled = signalled;
        self.state = State::Waiting;
    }

    /// The source packets are accepted from once learnt.
    pub fn latched(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched(a) => Some(a),
            _ => None,
        }
    }

    /// Where packets for this endpoint go: the source it sends from (symmetric RTP) once one
    /// was heard, else the address it signalled.
    pub fn target(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched(a) | State::Learning { best: a, .. } => Some(a),
            State::Waiting => self.signalled,
        }
    }
}

/// Whether a stream is still alive: any RTP or RTCP packet (RTCP counts, RFC 3264 §5.1, so a
/// held stream that only reports stays up) restarts the clock; a sendrecv stream may be silent
/// for `timeout`, a held one for `hold_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    last: Instant,
    pub timeout: Duration,
    pub hold_timeout: Duration,
}

impl Liveness {
    pub fn new(now: Instant, timeout: Duration, hold_timeout: Duration) -> Liveness {
        Liveness { last: now, timeout, hold_timeout }
    }

    pub fn seen(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// Whether the stream has been silent too long for its state (`held`: on hold now).
    pub fn expired(&self, now: Instant, held: bool) -> bool {
        now.saturating_duration_since(self.last) >= if held { self.hold_timeout } else { self.timeout }
    }

    /// When it will expire if nothing arrives.
    pub fn deadline(&self, held: bool) -> Instant {
        self.last + if held { self.hold_timeout } else { self.timeout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const PHONE: &str = "198.18.0.11:40000";
    const STRANGER: &str = "198.18.0.99:40000";

    #[test]
    fn the_signalled_source_latches_at_once_and_a_stranger_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a(PHONE)));
        assert_eq!(l.target(), Some(a(PHONE)), "before anything is heard: the signalled address");
        assert_eq!(l.on_packet(a(PHONE), t0), Verdict::Accept);
        assert_eq!(l.latched(), Some(a(PHONE)));
        for i in 0..10 {
            assert_eq!(l.on_packet(a(STRANGER), t0 + Duration::from_millis(i)), Verdict::Foreign);
            assert_eq!(
                l.on_packet(a(PHONE), t0 + Duration::from_millis(i)),
                Verdict::Accept,
                "the call's audio goes on"
            );
        }
        assert_eq!(l.foreign, 10);
        assert_eq!(l.target(), Some(a(PHONE)));
    }

    #[test]
    fn a_stranger_first_loses_to_the_signalled_source_within_the_window() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a(PHONE)));
        // RTP Bleed: the attacker sprays the relay port before the phone sends.
        assert_eq!(l.on_packet(a(STRANGER), t0), Verdict::Accept);
        assert_eq!(l.target(), Some(a(STRANGER)));
        // The phone's own port on its address outranks it, the exact source latches.
        assert_eq!(l.on_packet(a("198.18.0.11:40002"), t0 + Duration::from_millis(20)), Verdict::Accept);
        assert_eq!(l.on_packet(a(STRANGER), t0 + Duration::from_millis(30)), Verdict::Foreign);
        assert_eq!(l.on_packet(a(PHONE), t0 + Duration::from_millis(40)), Verdict::Accept);
        assert_eq!(l.latched(), Some(a(PHONE)));
        assert_eq!(l.on_packet(a(STRANGER), t0 + Duration::from_secs(10)), Verdict::Foreign);
    }

    #[test]
    fn behind_nat_the_only_source_latches_after_the_window_and_signalling_relearns() {
        let t0 = Instant::now();
        // Signalled a private address; the packets come from the NAT's.
        let mut l = Latch::new(Some(a("10.0.0.5:40000")));
        let nat = a("198.18.0.11:61000");
        assert_eq!(l.on_packet(nat, t0), Verdict::Accept);
        assert_eq!(l.latched(), None, "still learning");
        assert_eq!(l.on_packet(nat, t0 + LEARN_WINDOW), Verdict::Accept);
        assert_eq!(l.latched(), Some(nat));
        assert_eq!(l.on_packet(a(STRANGER), t0 + LEARN_WINDOW), Verdict::Foreign);
        // A stranger never takes over while latched, however long it tries...
        assert_eq!(l.on_packet(a(STRANGER), t0 + Duration::from_secs(600)), Verdict::Foreign);
        // ...but a re-INVITE from the phone (it moved) starts learning again.
        l.resignal(Some(a("198.18.0.12:40000")));
        assert_eq!(l.latched(), None);
        assert_eq!(l.on_packet(a("198.18.0.12:40000"), t0 + Duration::from_secs(601)), Verdict::Accept);
        assert_eq!(l.latched(), Some(a("198.18.0.12:40000")));
    }

    #[test]
    fn a_silent_stream_ends_after_timeout_a_held_one_after_hold_timeout() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0, Duration::from_secs(60), Duration::from_secs(3600));
        assert!(!live.expired(t0 + Duration::from_secs(59), false));
        assert!(live.expired(t0 + Duration::from_secs(60), false));
        // Held: 60 s of silence is normal.
        assert!(!live.expired(t0 + Duration::from_secs(600), true));
        assert!(live.expired(t0 + Duration::from_secs(3600), true));
        // A packet (RTP or RTCP) restarts the clock; an older timestamp never moves it back.
        live.seen(t0 + Duration::from_secs(50));
        live.seen(t0 + Duration::from_secs(10));
        assert!(!live.expired(t0 + Duration::from_secs(100), false));
        assert_eq!(live.deadline(false), t0 + Duration::from_secs(110));
    }

    proptest! {
        /// Once latched, every packet from another source is dropped and counted, whatever
        /// arrives in whatever order, and the latched source always passes.
        #[test]
        fn latched_means_strict(packets in proptest::collection::vec((0u8..4, 0u16..3, 0u64..5000), 1..200)) {
            let t0 = Instant::now();
            let mut l = Latch::new(Some(a(PHONE)));
            let mut latched_at: Option<SocketAddr> = None;
            let mut dropped = 0;
            let mut t = t0;
            for (host, port, dt) in packets {
                t += Duration::from_millis(dt);
                let from = SocketAddr::new(format!("198.18.0.{}", 11 + host).parse().unwrap(), 40000 + 2 * port);
                let v = l.on_packet(from, t);
                if v == Verdict::Foreign {
                    dropped += 1;
                }
                if let Some(s) = latched_at {
                    prop_assert_eq!(v == Verdict::Accept, from == s);
                }
                if latched_at.is_none() {
                    latched_at = l.latched();
                }
                if let Some(s) = latched_at {
                    prop_assert_eq!(l.latched(), Some(s));
                }
            }
            prop_assert_eq!(l.foreign, dropped);
        }
    }
}
