//! `[sip.media]` and the `media = "relay" | "direct"` of extensions and trunks.

use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;

use super::file::{MediaFile, SipFile};
use crate::config::validate::{span, Checker};
use crate::media::ports::PortRange;
use crate::sip::{MediaMode, SipAddr, SipMedia};

/// A party's `media` field.
pub(super) fn mode(c: &mut Checker<'_>, v: &Option<Spanned<String>>, field: &str) -> MediaMode {
    match v.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("relay") => MediaMode::Relay,
        Some("direct") => MediaMode::Direct,
        Some(other) => {
            c.err(v.as_ref().and_then(span), field, format!("`{other}` is not relay or direct"));
            MediaMode::Relay
        }
    }
}

/// `[sip.media]`; `relayed`: whether any party relays (then a listener on a wildcard address
/// needs `address`, the relay must name a real one in SDP).
pub(super) fn media(c: &mut Checker<'_>, f: &SipFile, listen: &[SipAddr], relayed: bool) -> SipMedia {
    let d = SipMedia::default();
    let none = MediaFile { ports: None, address: None, timeout: None, hold_timeout: None };
    let m = f.media.as_ref().unwrap_or(&none);
    let ports = match &m.ports {
        None => d.ports,
        Some(p) => match parse_range(p.get_ref()) {
            Ok(r) => r,
            Err(e) => {
                c.err(span(p), "sip.media.ports", e);
                d.ports
            }
        },
    };
    let address = m.address.as_ref().and_then(|a| match a.get_ref().parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
            c.err(
                span(a),
                "sip.media.address",
                format!("`{ip}` cannot be named in SDP: give this host's address"),
            );
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            c.err(span(a), "sip.media.address", format!("`{}` is not an IP address", a.get_ref()));
            None
        }
    });
    let timeout = c.duration(&m.timeout, "sip.media.timeout", d.timeout);
    let hold_timeout = c.duration(&m.hold_timeout, "sip.media.hold_timeout", d.hold_timeout);
    for (v, name, got) in [(&m.timeout, "timeout", timeout), (&m.hold_timeout, "hold_timeout", hold_timeout)]
    {
        if got < Duration::from_secs(1) {
            c.err(v.as_ref().and_then(span), format!("sip.media.{name}"), "must be at least 1s");
        }
    }
    if relayed {
        for l in listen.iter().filter(|l| l.addr.ip().is_unspecified()) {
            let covered = address.is_some_and(|a| a.is_ipv4() == l.addr.is_ipv4());
            if !covered {
                c.err(
                    span(&f.listen),
                    "sip.media.address",
                    format!(
                        "SIP listener {l} is on a wildcard address: set sip.media.address to the address the media relay names in SDP (or media = \"direct\" on every extension and trunk)"
                    ),
                );
            }
        }
    }
    SipMedia { ports, address, timeout, hold_timeout }
}

fn parse_range(text: &str) -> Result<PortRange, String> {
    let form = "write \"FIRST-LAST\" with an even first port, e.g. \"30000-39999\"";
    let (a, b) = text.split_once('-').ok_or_else(|| format!("`{text}` is not a range; {form}"))?;
    let (a, b): (u16, u16) = match (a.trim().parse(), b.trim().parse()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(format!("`{text}` is not a range of port numbers; {form}")),
    };
    if a < 1024 {
        return Err(format!("`{text}` starts below 1024, among the ports of system services; {form}"));
    }
    PortRange::new(a, b).ok_or_else(|| {
        format!("`{text}` holds no RTP/RTCP pair (the first port must be even and below the last); {form}")
    })
}
