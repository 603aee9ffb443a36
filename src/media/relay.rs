//! One relayed stream in user space: a socket per leg, each endpoint latched (`latch`),
//! every accepted datagram sent on unchanged (RTP, RTCP, RFC 4733 telephone-events alike: the
//! relay never looks inside) to the other endpoint from the other leg's socket. Ends when the
//! stream has been silent past its `Liveness`, or when told to stop.

use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::latch::{Latch, Liveness, Verdict};

/// One side of the relay: the socket the endpoint sends to and receives from, and its latch.
pub struct Leg {
    pub socket: UdpSocket,
    pub latch: Latch,
}

/// Per direction (0: from leg 0's endpoint to leg 1's, 1: the other way).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Dropped: not from the source the leg accepts.
    pub foreign: [u64; 2],
    /// Dropped: the other endpoint has neither sent nor signalled an address yet.
    pub unroutable: [u64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing accepted for the stream's timeout (its hold timeout when `held`).
    Silent,
    Stopped,
}

/// Relays until the stream goes silent or `stop` fires (or its sender is dropped).
pub async fn relay(
    mut legs: [Leg; 2],
    mut live: Liveness,
    held: bool,
    mut stop: oneshot::Receiver<()>,
) -> (End, Stats) {
    let mut stats = Stats::default();
    // One buffer per leg: a datagram is sent before the next is read on that leg.
    let mut bufs = [vec![0u8; 2048], vec![0u8; 2048]];
    loop {
        let deadline = tokio::time::Instant::from_std(live.deadline(held));
        let [b0, b1] = &mut bufs;
        let (i, got) = tokio::select! {
            r = legs[0].socket.recv_from(b0) => (0, r),
            r = legs[1].socket.recv_from(b1) => (1, r),
            _ = tokio::time::sleep_until(deadline) => return (End::Silent, stats),
            _ = &mut stop => return (End::Stopped, stats),
        };
        // An ICMP error from a previous send surfaces here: it concerns one datagram.
        let Ok((n, from)) = got else { continue };
        let now = Instant::now();
        if legs[i].latch.on_packet(from, now) == Verdict::Foreign {
            stats.foreign[i] += 1;
            continue;
        }
        live.seen(now);
        let j = 1 - i;
        let Some(to) = legs[j].latch.target() else {
            stats.unroutable[i] += 1;
            continue;
        };
        if legs[j].socket.send_to(&bufs[i][..n], to).await.is_ok() {
            stats.packets[i] += 1;
            stats.bytes[i] += n as u64;
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

    #[tokio::test]
    async fn both_ways_byte_for_byte_and_a_forged_source_is_dropped() {
        let (a, b, stranger) = (udp().await, udp().await, udp().await);
        let (ra, rb) = (udp().await, udp().await);
        let (ra_addr, rb_addr) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
        let legs = [
            Leg { socket: ra, latch: Latch::new(Some(a.local_addr().unwrap())) },
            Leg { socket: rb, latch: Latch::new(Some(b.local_addr().unwrap())) },
        ];
        let live = Liveness::new(Instant::now(), Duration::from_secs(60), Duration::from_secs(3600));
        let (stop_tx, stop) = oneshot::channel();
        let task = tokio::spawn(relay(legs, live, false, stop));

        // G.711 one way, an RFC 4733 telephone-event (digit 5, end bit, volume 10) both ways.
        let voice = rtp(8, 1, &[0xd5; 160]);
        let dtmf = rtp(101, 2, &[5, 0x80 | 10, 0x03, 0x20]);
        for p in [&voice, &dtmf] {
            a.send_to(p, ra_addr).await.unwrap();
            assert_eq!(&recv(&b).await, p, "A to B must arrive unchanged");
        }
        b.send_to(&dtmf, rb_addr).await.unwrap();
        assert_eq!(recv(&a).await, dtmf, "B to A must arrive unchanged");

        // Latched on A: a stranger's packets to A's relay port go nowhere.
        let forged = rtp(8, 999, b"forged");
        for _ in 0..5 {
            stranger.send_to(&forged, ra_addr).await.unwrap();
        }
        a.send_to(&voice, ra_addr).await.unwrap();
        assert_eq!(recv(&b).await, voice, "the call's audio goes on, and the forged packets never came");

        stop_tx.send(()).unwrap();
        let (end, stats) = task.await.unwrap();
        assert_eq!(end, End::Stopped);
        assert_eq!(stats.packets, [3, 1]);
        assert_eq!(stats.bytes[0], (voice.len() * 2 + dtmf.len()) as u64);
        assert_eq!(stats.foreign, [5, 0]);
    }

    #[tokio::test]
    async fn a_silent_stream_ends_and_a_held_one_waits_longer() {
        let short = Duration::from_millis(200);
        let legs = |s0, s1| {
            [Leg { socket: s0, latch: Latch::new(None) }, Leg { socket: s1, latch: Latch::new(None) }]
        };
        let t0 = std::time::Instant::now();
        let live = Liveness::new(Instant::now(), short, Duration::from_secs(3600));
        let (_keep, stop) = oneshot::channel();
        let (end, _) = relay(legs(udp().await, udp().await), live, false, stop).await;
        assert_eq!(end, End::Silent);
        assert!(t0.elapsed() >= short);
        // Held: the same silence does not end it.
        let live = Liveness::new(Instant::now(), short, Duration::from_secs(3600));
        let (_keep, stop) = oneshot::channel();
        let held =
            tokio::time::timeout(short * 3, relay(legs(udp().await, udp().await), live, true, stop)).await;
        assert!(held.is_err(), "a held stream ended after {short:?} of silence");
    }
}
