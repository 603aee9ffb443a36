//! What an endpoint's RTCP says about the media it receives (RFC 3550 §6.4): the first
//! reception report block of a sender or receiver report in a (compound) RTCP packet. The relay
//! passes RTCP on unchanged and only reads it; anything malformed is simply not a report.

/// One reception report: the reporter's view of the stream it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the stream began (a signed 24-bit count; negative with duplicates).
    pub cumulative_lost: i32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
}

impl Report {
    /// The fraction lost in percent.
    pub fn loss_percent(&self) -> f64 {
        f64::from(self.fraction_lost) * 100.0 / 256.0
    }
}

const SR: u8 = 200;
const RR: u8 = 201;

/// The first reception report in `packet`, if it holds one.
pub fn first_report(packet: &[u8]) -> Option<Report> {
    let mut rest = packet;
    // A compound packet: walk its packets by their length fields.
    while rest.len() >= 8 {
        let (v, count, pt) = (rest[0] >> 6, usize::from(rest[0] & 0x1f), rest[1]);
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if v != 2 || len > rest.len() {
            return None;
        }
        let body = &rest[..len];
        let blocks = match pt {
            SR => body.get(28..),
            RR => body.get(8..),
            _ => None,
        };
        if let Some(b) = blocks.filter(|b| count > 0 && b.len() >= 24) {
            let cum = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
            return Some(Report {
                fraction_lost: b[4],
                cumulative_lost: cum,
                jitter: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            });
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A receiver report from SSRC 1 about SSRC 2 with the given figures.
    fn rr(fraction: u8, cumulative: i32, jitter: u32) -> Vec<u8> {
        let mut p = vec![0x81, RR, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, fraction];
        p.extend_from_slice(&cumulative.to_be_bytes()[1..]);
        p.extend_from_slice(&[0, 0, 0x10, 0]);
        p.extend_from_slice(&jitter.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn receiver_and_sender_reports_are_read() {
        let r = first_report(&rr(64, 1234, 80)).unwrap();
        assert_eq!(r, Report { fraction_lost: 64, cumulative_lost: 1234, jitter: 80 });
        assert_eq!(r.loss_percent(), 25.0);
        assert_eq!(first_report(&rr(0, -3, 0)).unwrap().cumulative_lost, -3);
        // A sender report (20 bytes of sender info) with one block, then an SDES: compound.
        let mut sr = vec![0x81, SR, 0, 12, 0, 0, 0, 1];
        sr.extend_from_slice(&[0; 20]);
        sr.extend_from_slice(&rr(10, 5, 160)[8..]);
        sr.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 1]);
        assert_eq!(first_report(&sr).unwrap(), Report { fraction_lost: 10, cumulative_lost: 5, jitter: 160 });
        // An SDES first, the report after it.
        let mut compound = vec![0x81, 202, 0, 1, 0, 0, 0, 1];
        compound.extend_from_slice(&rr(1, 2, 3));
        assert_eq!(first_report(&compound).unwrap().jitter, 3);
    }

    #[test]
    fn what_is_not_a_report_gives_none() {
        assert_eq!(first_report(&[]), None);
        assert_eq!(first_report(&[0x80, RR, 0, 1, 0, 0, 0, 1]), None, "a receiver report without blocks");
        let mut short = rr(1, 1, 1);
        short[3] = 20; // length beyond the packet
        assert_eq!(first_report(&short), None);
        let mut rtp = rr(1, 1, 1);
        rtp[1] = 8; // an RTP packet (PCMA) is not RTCP
        assert_eq!(first_report(&rtp), None);
    }

    proptest! {
        #[test]
        fn any_datagram_is_read_without_panicking(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = first_report(&data);
        }
    }
}
