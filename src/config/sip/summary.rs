//! The `[sip]` lines of `portier check`.

use crate::config::duration::format_duration;
use crate::sip::{MediaMode, SipConfig, TrunkKind};

/// Lines for `portier check`.
pub fn summary(s: &SipConfig) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let listen: Vec<String> = s.listen.iter().map(|l| l.to_string()).collect();
    let _ = writeln!(
        out,
        "sip: domain {}; listen {}; {} extension(s), {} trunk(s), {} dial plan rule(s)",
        s.domain,
        listen.join(", "),
        s.extensions.len(),
        s.trunks.len(),
        s.dialplan.rules.len()
    );
    let m = &s.media;
    let _ = writeln!(
        out,
        "  media relay: ports {}; address {}; timeout {}, on hold {}",
        m.ports,
        m.address.map_or("of each leg's listener".to_string(), |a| a.to_string()),
        format_duration(m.timeout),
        format_duration(m.hold_timeout)
    );
    let direct: Vec<&str> = s
        .extensions
        .iter()
        .filter(|(_, e)| e.media == MediaMode::Direct)
        .map(|(n, _)| n.as_str())
        .chain(s.trunks.iter().filter(|(_, t)| t.media == MediaMode::Direct).map(|(n, _)| n.as_str()))
        .collect();
    if !direct.is_empty() {
        let _ = writeln!(out, "  media direct for: {}", direct.join(", "));
    }
    for (name, t) in &s.trunks {
        let what = match &t.kind {
            TrunkKind::Peer { address, trusted, options_ping } => format!(
                "peer {address}{}{}",
                if *trusted { " trusted" } else { "" },
                options_ping
                    .map(|d| format!(", options ping every {}", format_duration(d)))
                    .unwrap_or_default()
            ),
            TrunkKind::Register { registrar, domain, username, expires, inbound, .. } => format!(
                "register {username}@{domain} at {registrar} every {}{}",
                format_duration(*expires),
                inbound.as_ref().map(|i| format!(", inbound -> {i}")).unwrap_or_default()
            ),
        };
        let _ = writeln!(out, "  trunk {name}: {what}; identity {}", t.identity.as_str());
    }
    if let Some(v) = &s.voicemail {
        let _ = writeln!(
            out,
            "  voicemail: trunk {} pilot {}; mailbox prefix \"{}\"; mwi {}",
            v.trunk,
            v.pilot,
            v.mailbox_prefix,
            if v.mwi { "on" } else { "off" }
        );
    }
    for r in &s.dialplan.rules {
        let _ = writeln!(out, "  dialplan {r}");
    }
    out
}
