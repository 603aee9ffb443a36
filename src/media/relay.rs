//! One relayed stream in user space: per leg an RTP and an RTCP socket, each endpoint latched
//! (`latch`) per socket, every accepted datagram sent on unchanged (RTP, RTCP, RFC 4733
//! telephone-events alike: the relay never looks inside) to the other endpoint from the other
//! leg's socket of the same kind. Signalling reaches the running relay as [`Control`] orders
//! (a re-INVITE's new address, hold, the answer that arms the timeout); it ends when the
//! stream has been silent past its `Liveness` once armed, or when its control channel closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::latch::{Latch, Liveness, Verdict};
use super::rtcp::{first_report, Report};

/// RTP or RTCP.
const KINDS: usize = 2;

/// One socket of a leg and the latch of the endpoint it faces.
pub struct Path {
    pub socket: UdpSocket,
    pub latch: Latch,
}

/// One side of the relay: what its endpoint sends RTP and RTCP to.
pub struct Leg {
    pub rtp: Path,
    pub rtcp: Path,
}

/// Signalling's news for a running stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Leg `leg`'s endpoint signalled again (RTP and RTCP addresses): learn it afresh.
    Signal { leg: usize, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr> },
    /// The stream went on or off hold (its silence is then judged by the hold timeout).
    Held(bool),
    /// The call was answered: silence counts from now (ringing without early media is quiet).
    Arm,
}

/// Per direction (0: from leg 0's endpoint to leg 1's, 1: the other way), readable while the
/// relay runs (the call log reads them when the call ends).
#[derive(Debug, Default)]
pub struct Counters {
    pub packets: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    /// Dropped: not from the source the leg accepts.
    pub foreign: [AtomicU64; 2],
    /// Dropped: the other endpoint has neither sent nor signalled an address yet.
    pub unroutable: [AtomicU64; 2],
    /// The last RTCP reception report each endpoint sent (what it receives), packed by
    /// `pack_report`; 0: none yet.
    pub report: [AtomicU64; 2],
}

/// A plain copy of [`Counters`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub foreign: [u64; 2],
    pub unroutable: [u64; 2],
    /// The last reception report from each endpoint about what it received.
    pub report: [Option<Report>; 2],
}

/// A report in one word: fraction lost (bits 56-63), cumulative lost (32-55), present (31),
/// jitter (0-30, saturated: 2^31 timestamp units is hours at any clock).
fn pack_report(r: Report) -> u64 {
    u64::from(r.fraction_lost) << 56
        | (u64::from(r.cumulative_lost as u32) & 0xff_ffff) << 32
        | 1 << 31
        | u64::from(r.jitter.min(0x7fff_ffff))
}

fn unpack_report(v: u64) -> Option<Report> {
    (v >> 31 & 1 == 1).then_some(Report {
        fraction_lost: (v >> 56) as u8,
        // Sign-extend the 24-bit count.
        cumulative_lost: (((v >> 32) as u32) << 8) as i32 >> 8,
        jitter: (v & 0x7fff_ffff) as u32,
    })
}

impl Counters {
    pub fn read(&self) -> Stats {
        let r = |a: &[AtomicU64; 2]| [a[0].load(Relaxed), a[1].load(Relaxed)];
        Stats {
            packets: r(&self.packets),
            bytes: r(&self.bytes),
            foreign: r(&self.foreign),
            unroutable: r(&self.unroutable),
            report: [
                unpack_report(self.report[0].load(Relaxed)),
                unpack_report(self.report[1].load(Relaxed)),
            ],
        }
    }
}

/// Process-wide counters every stream adds to (handles resolved once, not per packet).
#[derive(Clone, Default)]
pub struct Totals {
    pub packets: Counter,
    pub bytes: Counter,
    pub foreign: Counter,
    pub unroutable: Counter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing accepted for the stream's timeout (its hold timeout when held) after it was
    /// armed.
    Silent,
    /// The control channel closed: the call is over.
    Stopped,
}

/// Relays until the stream goes silent or `control` closes.
pub async fn relay(
    legs: [Leg; 2],
    mut live: Liveness,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
    totals: Totals,
) -> End {
    let [Leg { rtp: r0, rtcp: c0 }, Leg { rtp: r1, rtcp: c1 }] = legs;
    // paths[leg][kind]
    let mut paths = [[r0, c0], [r1, c1]];
    let (mut held, mut armed) = (false, false);
    // One timer for the stream, not one per packet: when it fires the stream may have been
    // heard since, and it is set again for the deadline that follows from then.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(live.deadline(held)));
    tokio::pin!(sleep);
    // One buffer per socket: a datagram is sent before the next is read on that socket.
    let mut bufs = [[[0u8; 2048]; KINDS]; 2];
    loop {
        let [[b00, b01], [b10, b11]] = &mut bufs;
        let (i, k, got) = tokio::select! {
            r = paths[0][0].socket.recv_from(b00) => (0, 0, r),
            r = paths[1][0].socket.recv_from(b10) => (1, 0, r),
            r = paths[0][1].socket.recv_from(b01) => (0, 1, r),
            r = paths[1][1].socket.recv_from(b11) => (1, 1, r),
            _ = &mut sleep, if armed => {
                if live.expired(Instant::now(), held) {
                    return End::Silent;
                }
                sleep.as_mut().reset(tokio::time::Instant::from_std(live.deadline(held)));
                continue;
            }
            c = control.recv() => {
                match c {
                    None => return End::Stopped,
                    Some(Control::Signal { leg, rtp, rtcp }) if leg < 2 => {
                        paths[leg][0].latch.resignal(rtp);
                        paths[leg][1].latch.resignal(rtcp);
                    }
                    Some(Control::Signal { .. }) => {}
                    Some(Control::Held(h)) => held = h,
                    Some(Control::Arm) => {
                        armed = true;
                        live.seen(Instant::now());
                    }
                }
                // Hold and arming change the deadline.
                sleep.as_mut().reset(tokio::time::Instant::from_std(live.deadline(held)));
                continue;
            }
        };
        // An ICMP error from a previous send surfaces here: it concerns one datagram.
        let Ok((n, from)) = got else { continue };
        let now = Instant::now();
        if paths[i][k].latch.on_packet(from, now) == Verdict::Foreign {
            counters.foreign[i].fetch_add(1, Relaxed);
            totals.foreign.inc();
            continue;
        }
        live.seen(now);
        if k == 1 {
            if let Some(r) = first_report(&bufs[i][k][..n]) {
                counters.report[i].store(pack_report(r), Relaxed);
            }
        }
        let j = 1 - i;
        let Some(to) = paths[j][k].latch.target() else {
            counters.unroutable[i].fetch_add(1, Relaxed);
            totals.unroutable.inc();
            continue;
        };
        if paths[j][k].socket.send_to(&bufs[i][k][..n], to).await.is_ok() {
            counters.packets[i].fetch_add(1, Relaxed);
            counters.bytes[i].fetch_add(n as u64, Relaxed);
            totals.packets.inc();
            totals.bytes.inc_by(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn udp() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// An RTP packet: 12-byte header (version 2, payload type `pt`, sequence `seq`), payload.
    fn rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, (seq >> 8) as u8, seq as u8, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p.extend_from_slice(payload);
        p
    }

    async fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut b = [0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut b))
            .await
            .expect("a packet")
            .unwrap();
        b[..n].to_vec()
    }

    /// Relay sockets and the endpoints facing them: `ends[leg][kind]`, `relay[leg][kind]`.
    struct Rig {
        ends: [[UdpSocket; 2]; 2],
        relay: [[SocketAddr; 2]; 2],
        control: mpsc::UnboundedSender<Control>,
        counters: Arc<Counters>,
        task: tokio::task::JoinHandle<End>,
    }

    async fn rig(signalled: bool, timeout: Duration) -> Rig {
        let ends = [[udp().await, udp().await], [udp().await, udp().await]];
        let mut legs = Vec::new();
        let mut relay = [[SocketAddr::from(([0, 0, 0, 0], 0)); 2]; 2];
        for (l, e) in ends.iter().enumerate() {
            let path = |s: UdpSocket, to: &UdpSocket| Path {
                latch: Latch::new(signalled.then(|| to.local_addr().unwrap())),
                socket: s,
            };
            let (s0, s1) = (udp().await, udp().await);
            relay[l] = [s0.local_addr().unwrap(), s1.local_addr().unwrap()];
            legs.push(Leg { rtp: path(s0, &e[0]), rtcp: path(s1, &e[1]) });
        }
        let legs: [Leg; 2] = legs.try_into().ok().unwrap();
        let live = Liveness::new(Instant::now(), timeout, Duration::from_secs(3600));
        let (control, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(super::relay(legs, live, rx, counters.clone(), Totals::default()));
        Rig { ends, relay, control, counters, task }
    }

    #[tokio::test]
    async fn rtp_rtcp_and_dtmf_pass_both_ways_byte_for_byte_and_a_forged_source_is_dropped() {
        let r = rig(true, Duration::from_secs(60)).await;
        let stranger = udp().await;
        // G.711 one way, an RFC 4733 telephone-event (digit 5, end bit, volume 10) both ways.
        let voice = rtp(8, 1, &[0xd5; 160]);
        let dtmf = rtp(101, 2, &[5, 0x80 | 10, 0x03, 0x20]);
        for p in [&voice, &dtmf] {
            r.ends[0][0].send_to(p, r.relay[0][0]).await.unwrap();
            assert_eq!(&recv(&r.ends[1][0]).await, p, "A to B must arrive unchanged");
        }
        r.ends[1][0].send_to(&dtmf, r.relay[1][0]).await.unwrap();
        assert_eq!(recv(&r.ends[0][0]).await, dtmf, "B to A must arrive unchanged");
        // RTCP (a receiver report) on the RTCP ports, to the other side's RTCP endpoint.
        // A receiver report: fraction lost 64/256, 3 lost in all, jitter 80.
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 64, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 80];
        rr.extend_from_slice(&[0; 8]);
        r.ends[1][1].send_to(&rr, r.relay[1][1]).await.unwrap();
        assert_eq!(recv(&r.ends[0][1]).await, rr);

        // Latched on A: a stranger's packets to A's relay port go nowhere.
        let forged = rtp(8, 999, b"forged");
        for _ in 0..5 {
            stranger.send_to(&forged, r.relay[0][0]).await.unwrap();
        }
        r.ends[0][0].send_to(&voice, r.relay[0][0]).await.unwrap();
        assert_eq!(recv(&r.ends[1][0]).await, voice, "the call's audio goes on, and no forged packet came");

        drop(r.control);
        assert_eq!(r.task.await.unwrap(), End::Stopped);
        let s = r.counters.read();
        assert_eq!(s.packets, [3, 2]);
        assert_eq!(s.bytes[0], (voice.len() * 2 + dtmf.len()) as u64);
        assert_eq!(s.foreign, [5, 0]);
        assert_eq!(s.report, [None, Some(Report { fraction_lost: 64, cumulative_lost: 3, jitter: 80 })]);
    }

    #[test]
    fn reports_pack_into_one_word_and_back() {
        for r in [
            Report { fraction_lost: 255, cumulative_lost: -1, jitter: 0x7fff_ffff },
            Report { fraction_lost: 0, cumulative_lost: 0x7f_ffff, jitter: 0 },
            Report { fraction_lost: 3, cumulative_lost: -0x80_0000, jitter: 160 },
        ] {
            assert_eq!(unpack_report(pack_report(r)), Some(r));
        }
        assert_eq!(unpack_report(0), None);
    }

    #[tokio::test]
    async fn new_signalling_moves_the_latch() {
        let r = rig(true, Duration::from_secs(60)).await;
        let voice = rtp(0, 1, &[0xff; 160]);
        r.ends[0][0].send_to(&voice, r.relay[0][0]).await.unwrap();
        recv(&r.ends[1][0]).await;
        // The phone moved (a re-INVITE with a new address): before the re-INVITE its new
        // socket is foreign, after it the new socket is learnt.
        let moved = udp().await;
        moved.send_to(&voice, r.relay[0][0]).await.unwrap();
        let sig = Control::Signal { leg: 0, rtp: Some(moved.local_addr().unwrap()), rtcp: None };
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.control.send(sig).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        moved.send_to(&voice, r.relay[0][0]).await.unwrap();
        recv(&r.ends[1][0]).await;
        r.ends[1][0].send_to(&voice, r.relay[1][0]).await.unwrap();
        assert_eq!(recv(&moved).await, voice, "B's audio goes to where A now is");
        assert_eq!(r.counters.read().foreign, [1, 0]);
    }

    #[tokio::test]
    async fn silence_counts_once_armed_and_a_held_stream_waits_longer() {
        let short = Duration::from_millis(200);
        // Not armed (ringing): silence does not end it.
        let r = rig(false, short).await;
        tokio::time::sleep(short * 3).await;
        assert!(!r.task.is_finished(), "a stream ended before the call was answered");
        let t0 = Instant::now();
        r.control.send(Control::Arm).unwrap();
        assert_eq!(r.task.await.unwrap(), End::Silent);
        assert!(t0.elapsed() >= short);
        // Held: the same silence does not end it.
        let r = rig(false, short).await;
        r.control.send(Control::Held(true)).unwrap();
        r.control.send(Control::Arm).unwrap();
        tokio::time::sleep(short * 3).await;
        assert!(!r.task.is_finished(), "a held stream ended after {short:?} of silence");
        // Off hold: the ordinary timeout applies again.
        r.control.send(Control::Held(false)).unwrap();
        assert_eq!(tokio::time::timeout(short * 5, r.task).await.expect("ends").unwrap(), End::Silent);
    }
}
