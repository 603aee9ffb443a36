//! Where requests to a phone go: RFC 3261 sends them to its Contact (§8.1.1.8, §10.3, §12.1),
//! which is wrong behind NAT, where the Contact names the phone's private address and only the
//! address its messages came from reaches it. Per extension `nat`:
//! - `force`: always the source (Asterisk's `force_rport` + `rewrite_contact`);
//! - `off`: always the Contact, when it names an IP address (a host name: the source, as
//!   portier resolves no names on this path);
//! - `auto` (default): the Contact, unless NAT is detected: the Contact names another host
//!   than the source, or a private address while the source is public (Kamailio's
//!   `nat_uac_test` flags 1 and 2 in spirit). A phone that only sends from another port than
//!   its Contact names is not behind NAT and is reached on its Contact.
//!
//! Over TCP and TLS the phone's own connection is always used: a phone's listening port is
//! not reachable through most firewalls, and RFC 5626 keeps requests on the flow the phone
//! opened.

use std::net::{IpAddr, SocketAddr};

use super::Dest;
use crate::sip::{SipNat, SipTransport, Uri};

/// The destination of requests to a UA whose messages come from `source` and whose Contact is
/// `contact`.
pub fn reach(contact: &Uri, source: Dest, nat: SipNat) -> Dest {
    if nat == SipNat::Force || source.transport != SipTransport::Udp {
        return source;
    }
    let Some(sip) = contact.as_sip() else { return source };
    let host = sip.host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = host.parse::<IpAddr>() else { return source };
    if nat == SipNat::Auto && nat_detected(ip, source.addr.ip()) {
        return source;
    }
    // sips: is never UDP; a Contact asking for another transport than the one the phone used
    // is reached where it registered from (portier opens no connections to phones).
    match sip.transport() {
        Some(t) if !t.eq_ignore_ascii_case("udp") => return source,
        _ => {}
    }
    let port = sip.port.unwrap_or(5060);
    Dest { transport: SipTransport::Udp, addr: SocketAddr::new(ip, port), conn: None }
}

/// Whether a Contact naming `contact` sent from `source` shows NAT on the way.
pub fn nat_detected(contact: IpAddr, source: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (contact, source) = (canon(contact), canon(source));
    contact != source || (is_private(contact) && !is_private(source))
}

/// Addresses that do not route on the Internet: RFC 1918, shared CGN space (RFC 6598),
/// link-local, unique local (RFC 4193), loopback.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || v4.is_loopback() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(addr: &str) -> Dest {
        Dest { transport: SipTransport::Udp, addr: addr.parse().unwrap(), conn: None }
    }

    fn contact(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    #[test]
    fn auto_uses_the_contact_without_nat_and_the_source_behind_it() {
        let src = udp("198.18.0.12:5070");
        // Same host, another port: no NAT, the Contact's port is where the phone listens.
        let d = reach(&contact("sip:2002@198.18.0.12:5080"), src, SipNat::Auto);
        assert_eq!(d.addr, "198.18.0.12:5080".parse().unwrap());
        assert_eq!(d.conn, None);
        // No port: 5060.
        assert_eq!(reach(&contact("sip:2002@198.18.0.12"), src, SipNat::Auto).addr.port(), 5060);
        // Another host named in the Contact: NAT.
        assert_eq!(reach(&contact("sip:2002@192.168.1.20:5060"), src, SipNat::Auto), src);
        assert_eq!(reach(&contact("sip:2002@198.18.0.99:5060"), src, SipNat::Auto), src);
        // A name cannot be compared: the source.
        assert_eq!(reach(&contact("sip:2002@phone.example.test"), src, SipNat::Auto), src);
        // IPv6, bracketed.
        let src6 = udp("[2001:db8::12]:5070");
        assert_eq!(reach(&contact("sip:2002@[2001:db8::12]:5080"), src6, SipNat::Auto).addr.port(), 5080);
        assert_eq!(reach(&contact("sip:2002@[fd00::12]:5080"), src6, SipNat::Auto), src6);
    }

    #[test]
    fn force_off_and_connections() {
        let src = udp("198.18.0.12:5070");
        assert_eq!(reach(&contact("sip:2002@198.18.0.12:5080"), src, SipNat::Force), src);
        let off = reach(&contact("sip:2002@198.18.0.99:5080"), src, SipNat::Off);
        assert_eq!(off.addr, "198.18.0.99:5080".parse().unwrap());
        // TCP and TLS stay on the phone's connection whatever the setting.
        for transport in [SipTransport::Tcp, SipTransport::Tls] {
            let conn = Dest { transport, addr: src.addr, conn: Some(7) };
            for nat in [SipNat::Auto, SipNat::Off, SipNat::Force] {
                assert_eq!(reach(&contact("sip:2002@198.18.0.12:5080;transport=tcp"), conn, nat), conn);
            }
        }
        // A UDP registration whose Contact asks for TCP: where it came from.
        assert_eq!(reach(&contact("sip:2002@198.18.0.12:5080;transport=tcp"), src, SipNat::Off), src);
        assert_eq!(reach(&contact("tel:+4930123"), src, SipNat::Off), src);
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.1",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.1.1",
            "169.254.1.1",
            "127.0.0.1",
            "fd12::1",
            "fe80::1",
            "::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.18.0.12", "172.32.0.1", "100.128.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        // A private Contact from a public source, even if they were equal, is NAT; equal
        // addresses otherwise are not (an IPv4-mapped source counts as its IPv4 address).
        assert!(nat_detected("10.0.0.5".parse().unwrap(), "198.18.0.5".parse().unwrap()));
        assert!(!nat_detected("10.0.0.5".parse().unwrap(), "10.0.0.5".parse().unwrap()));
        assert!(!nat_detected("198.18.0.5".parse().unwrap(), "::ffff:198.18.0.5".parse().unwrap()));
    }
}
