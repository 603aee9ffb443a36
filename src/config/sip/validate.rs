//! Stage two of `[sip]`: meaning. Addresses, names, durations and references between the
//! parts (dial plan -> trunks, forwards -> extensions, voicemail -> trunk) are checked, every
//! error reported with its line, and the result is the engine's typed [`SipConfig`].

use crate::tls::CertSpec;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::dialplan::dialplan;
use super::extensions::extensions;
use super::file::{LimitsFile, SipFile, TrunkFile, TrunkKindFile};
use super::{DEFAULT_NONCE_LIFETIME, DEFAULT_REGISTER_EXPIRES};
use crate::config::validate::{span, Checker};
use crate::sip::dialplan::is_number;
use crate::sip::digest::Algorithm;
use crate::sip::{
    Identity, MediaMode, SipAddr, SipConfig, SipLimits, SipTransport, SipTrunk, SipVoicemail, TrunkId,
    TrunkKind,
};

/// Parses `transport:IP:port`.
pub fn parse_sip_addr(text: &str) -> Result<SipAddr, String> {
    let form = "write transport:IP:port, e.g. \"udp:198.18.1.1:5060\" or \"tls:[2001:db8::1]:5061\"";
    let (t, rest) = text.split_once(':').ok_or_else(|| format!("`{text}` has no transport; {form}"))?;
    let transport = match t {
        "udp" => SipTransport::Udp,
        "tcp" => SipTransport::Tcp,
        "tls" => SipTransport::Tls,
        other => return Err(format!("`{other}` is not a transport (udp, tcp or tls) in `{text}`; {form}")),
    };
    let addr: SocketAddr =
        rest.parse().map_err(|_| format!("`{rest}` is not IP:port in `{text}`; {form}"))?;
    if addr.port() == 0 {
        return Err(format!("`{text}`: port 0 is not a port"));
    }
    Ok(SipAddr { transport, addr })
}

fn host_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':')
}

pub(in crate::config) fn validate_sip(c: &mut Checker<'_>, f: &SipFile) -> SipConfig {
    // listen
    let mut listen: Vec<SipAddr> = Vec::new();
    if f.listen.get_ref().is_empty() {
        c.err(span(&f.listen), "sip.listen", "needs at least one listener, e.g. \"udp:198.18.1.1:5060\"");
    }
    for l in f.listen.get_ref() {
        match parse_sip_addr(l.get_ref()) {
            Ok(a) => {
                if listen.contains(&a) {
                    c.err(span(l), "sip.listen", format!("`{}` is listed twice", l.get_ref()));
                }
                if a.transport == SipTransport::Tls && f.tls.is_none() {
                    c.err(
                        span(l),
                        "sip.listen",
                        format!(
                            "`{}` is a TLS listener: set sip.tls = {{ cert = ..., key = ... }}",
                            l.get_ref()
                        ),
                    );
                }
                listen.push(a);
            }
            Err(m) => c.err(span(l), "sip.listen", m),
        }
    }

    if !host_ok(f.domain.get_ref()) {
        c.err(span(&f.domain), "sip.domain", format!("`{}` is not a domain name", f.domain.get_ref()));
    }
    let tls = f.tls.as_ref().map(|t| {
        for (v, n) in [(&t.cert, "cert"), (&t.key, "key")] {
            if v.get_ref().is_empty() {
                c.err(span(v), format!("sip.tls.{n}"), "must name a PEM file");
            }
        }
        CertSpec { cert: PathBuf::from(t.cert.get_ref()), key: PathBuf::from(t.key.get_ref()) }
    });

    let nonce_lifetime = c.duration(&f.nonce_lifetime, "sip.nonce_lifetime", DEFAULT_NONCE_LIFETIME);
    if nonce_lifetime < Duration::from_secs(1) {
        c.err(f.nonce_lifetime.as_ref().and_then(span), "sip.nonce_lifetime", "must be at least 1s");
    }

    // MD5 first by default: most desk phones (and sipp) answer only the first challenge and
    // know only MD5; SHA-256 is still offered, and `["SHA-256", "MD5"]` prefers it.
    let mut digest_algorithms = Vec::new();
    match &f.digest_algorithms {
        None => digest_algorithms = vec![Algorithm::Md5, Algorithm::Sha256],
        Some(list) => {
            if list.get_ref().is_empty() {
                c.err(span(list), "sip.digest_algorithms", "needs at least one of \"MD5\", \"SHA-256\"");
            }
            for a in list.get_ref() {
                match Algorithm::from_token(a.get_ref()) {
                    Some(alg) if digest_algorithms.contains(&alg) => {
                        c.err(span(a), "sip.digest_algorithms", format!("`{}` is listed twice", a.get_ref()))
                    }
                    Some(alg) => digest_algorithms.push(alg),
                    None => c.err(
                        span(a),
                        "sip.digest_algorithms",
                        format!("`{}` is not a digest algorithm: use \"MD5\" or \"SHA-256\"", a.get_ref()),
                    ),
                }
            }
        }
    }

    // trunks (before the dial plan, which refers to them)
    let mut trunks = BTreeMap::new();
    for (name, t) in &f.trunks {
        c.name(name, "sip.trunks");
        let n = name.get_ref();
        if n == "extension" {
            c.err(span(name), format!("sip.trunks.{n}"), "`extension` is reserved for dial plan rules");
        }
        if let Some(tr) = trunk(c, n, name, t) {
            trunks.insert(TrunkId::new(n), tr);
        }
    }

    let dialplan = dialplan(c, f);

    // voicemail
    let voicemail = f.voicemail.as_ref().map(|v| {
        let t = v.trunk.get_ref();
        match trunks.get(t.as_str()) {
            None if !f.trunks.keys().any(|k| k.get_ref() == t) => c.err(
                span(&v.trunk),
                "sip.voicemail.trunk",
                format!("no trunk named `{t}` (defined: {})", names(&f.trunks)),
            ),
            Some(SipTrunk { kind: TrunkKind::Peer { trusted: false, .. }, .. }) | Some(SipTrunk { kind: TrunkKind::Register { .. }, .. })
                if v.mwi == Some(true) =>
            {
                c.err(
                    span(&v.trunk),
                    "sip.voicemail.trunk",
                    format!("mwi = true needs `{t}` to be a peer with trusted = true (the voicemail system sends NOTIFY without credentials)"),
                )
            }
            _ => {}
        }
        if !is_number(v.pilot.get_ref()) {
            c.err(span(&v.pilot), "sip.voicemail.pilot", format!("`{}` is not a number", v.pilot.get_ref()));
        }
        let mailbox_prefix = v.mailbox_prefix.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
        if let Some(p) = &v.mailbox_prefix {
            if !p.get_ref().is_empty() && !is_number(p.get_ref()) {
                c.err(span(p), "sip.voicemail.mailbox_prefix", format!("`{}` may hold only digits", p.get_ref()));
            }
        }
        SipVoicemail {
            trunk: TrunkId::new(t),
            pilot: v.pilot.get_ref().clone(),
            mailbox_prefix,
            own_extension_to_mailbox: v.own_extension_to_mailbox.unwrap_or(false),
            mwi: v.mwi.unwrap_or(false),
        }
    });

    // extensions (last: forwards are checked against the extensions and the dial plan)
    let extensions = extensions(c, f, &dialplan);

    // register trunks: `inbound` must name an extension
    for (name, t) in &f.trunks {
        if let (TrunkKindFile::Register, Some(i)) = (*t.kind.get_ref(), &t.inbound) {
            if !f.extensions.keys().any(|k| k.get_ref() == i.get_ref()) {
                c.err(
                    span(i),
                    format!("sip.trunks.{}.inbound", name.get_ref()),
                    format!("no extension {} (defined: {})", i.get_ref(), names(&f.extensions)),
                );
            }
        }
    }

    let limits = limits(c, f.limits.as_ref());
    let relayed = extensions
        .values()
        .map(|e| e.media)
        .chain(trunks.values().map(|t| t.media))
        .any(|m| m == MediaMode::Relay)
        || extensions.is_empty() && trunks.is_empty();
    let media = super::media::media(c, f, &listen, relayed);

    SipConfig {
        media,
        limits,
        listen,
        domain: f.domain.get_ref().clone(),
        tls,
        nonce_lifetime,
        digest_algorithms,
        extensions,
        trunks,
        voicemail,
        dialplan,
    }
}

fn limits(c: &mut Checker<'_>, f: Option<&LimitsFile>) -> SipLimits {
    let d = SipLimits::default();
    let Some(f) = f else { return d };
    let mut count = |v: &Option<Spanned<i64>>, name: &str, default: usize| {
        c.count(v, &format!("sip.limits.{name}"), 1, 1_000_000).unwrap_or(default)
    };
    let mut l = SipLimits {
        transactions: count(&f.transactions, "transactions", d.transactions),
        transactions_per_source: count(
            &f.transactions_per_source,
            "transactions_per_source",
            d.transactions_per_source,
        ),
        connections: count(&f.connections, "connections", d.connections),
        connections_per_source: count(
            &f.connections_per_source,
            "connections_per_source",
            d.connections_per_source,
        ),
        ..d
    };
    // A per-source limit above the global one would never apply: the global one is meant.
    l.transactions_per_source = l.transactions_per_source.min(l.transactions);
    l.connections_per_source = l.connections_per_source.min(l.connections);
    l.message_timeout = c.duration(&f.message_timeout, "sip.limits.message_timeout", d.message_timeout);
    l.idle_timeout = c.duration(&f.idle_timeout, "sip.limits.idle_timeout", d.idle_timeout);
    l
}

pub(super) fn names<T>(m: &BTreeMap<Spanned<String>, T>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.keys().map(|k| k.get_ref().as_str()).collect::<Vec<_>>().join(", ")
}

fn trunk(c: &mut Checker<'_>, n: &str, name: &Spanned<String>, t: &TrunkFile) -> Option<SipTrunk> {
    let field = |x: &str| format!("sip.trunks.{n}.{x}");
    let identity = match t.identity.as_ref().map(|i| i.get_ref().as_str()) {
        None | Some("none") => Identity::None,
        Some("pai") => Identity::Pai,
        Some("rpid") => Identity::Rpid,
        Some(other) => {
            c.err(
                t.identity.as_ref().map(|i| i.span()),
                field("identity"),
                format!("`{other}` is not pai, rpid or none"),
            );
            Identity::None
        }
    };
    let kind_name = match t.kind.get_ref() {
        TrunkKindFile::Peer => "peer",
        TrunkKindFile::Register => "register",
    };
    let wrong_kind = |c: &mut Checker<'_>, present: Option<std::ops::Range<usize>>, fname: &str| {
        if present.is_some() {
            c.err(present, field(fname), format!("`{fname}` does not apply to {kind_name} trunks"));
        }
    };
    let sp = |v: &Option<Spanned<String>>| v.as_ref().map(|x| x.span());
    let addr = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, fname: &str| -> Option<SipAddr> {
        match v {
            None => {
                c.err(span(name), field(fname), format!("a {kind_name} trunk needs `{fname}`"));
                None
            }
            Some(a) => parse_sip_addr(a.get_ref()).map_err(|m| c.err(span(a), field(fname), m)).ok(),
        }
    };
    let kind = match t.kind.get_ref() {
        TrunkKindFile::Peer => {
            for (v, f) in [
                (&t.registrar, "registrar"),
                (&t.domain, "domain"),
                (&t.username, "username"),
                (&t.secret, "secret"),
                (&t.expires, "expires"),
                (&t.inbound, "inbound"),
            ] {
                wrong_kind(c, sp(v), f);
            }
            let address = addr(c, &t.address, "address");
            let options_ping = t
                .options_ping
                .as_ref()
                .map(|_| c.duration(&t.options_ping, &field("options_ping"), Duration::from_secs(30)));
            TrunkKind::Peer {
                address: address?,
                trusted: t.trusted.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
                options_ping,
            }
        }
        TrunkKindFile::Register => {
            wrong_kind(c, sp(&t.address), "address");
            wrong_kind(c, sp(&t.options_ping), "options_ping");
            wrong_kind(c, t.trusted.as_ref().map(|b| b.span()), "trusted");
            let registrar = addr(c, &t.registrar, "registrar");
            let required = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, fname: &str| -> String {
                match v {
                    None => {
                        c.err(span(name), field(fname), format!("a register trunk needs `{fname}`"));
                        String::new()
                    }
                    Some(s) if s.get_ref().is_empty() => {
                        c.err(span(s), field(fname), "must not be empty");
                        String::new()
                    }
                    Some(s) => s.get_ref().clone(),
                }
            };
            let username = required(c, &t.username, "username");
            let secret = required(c, &t.secret, "secret");
            let domain = match &t.domain {
                Some(d) if !host_ok(d.get_ref()) => {
                    c.err(span(d), field("domain"), format!("`{}` is not a domain name", d.get_ref()));
                    String::new()
                }
                Some(d) => d.get_ref().clone(),
                None => registrar.map(|r| r.addr.ip().to_string()).unwrap_or_default(),
            };
            let expires = c.duration(&t.expires, &field("expires"), DEFAULT_REGISTER_EXPIRES);
            TrunkKind::Register {
                registrar: registrar?,
                domain,
                username,
                secret,
                expires,
                inbound: t.inbound.as_ref().map(|i| i.get_ref().clone()),
            }
        }
    };
    let tls = trunk_tls(c, &kind, t, &field);
    let media = super::media::mode(c, &t.media, &field("media"));
    Some(SipTrunk { kind, identity, tls, media })
}

/// `tls = { verify, ca, sni }` of a trunk: as a pool's, and only where portier speaks TLS to it.
fn trunk_tls(
    c: &mut Checker<'_>,
    kind: &TrunkKind,
    t: &TrunkFile,
    field: &dyn Fn(&str) -> String,
) -> Option<crate::tls::UpstreamTls> {
    let spanned = t.tls.as_ref()?;
    let f = spanned.get_ref();
    let address = match kind {
        TrunkKind::Peer { address, .. } => address,
        TrunkKind::Register { registrar, .. } => registrar,
    };
    if address.transport != SipTransport::Tls {
        c.err(
            Some(spanned.span()),
            field("tls"),
            format!("`tls` needs a tls: address; this trunk is reached over {}", address.transport.as_str()),
        );
    }
    let verify = f.verify.unwrap_or(true);
    if verify && f.ca.is_none() {
        c.err(
            Some(spanned.span()),
            field("tls.ca"),
            "verify = true needs `ca` (a PEM file of the CAs that signed the trunk's certificate); verify = false skips the check",
        );
    }
    Some(crate::tls::UpstreamTls {
        verify,
        ca: f.ca.as_ref().map(|a| std::path::PathBuf::from(a.get_ref())),
        sni: f.sni.as_ref().map(|n| n.get_ref().clone()),
    })
}
