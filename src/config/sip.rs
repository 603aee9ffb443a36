//! The `[sip]` section (the B2BUA side): file shapes, typed model and validation in one place.
//!
//! Shapes follow the rest of the configuration: `deny_unknown_fields`, `Spanned` values so every
//! error names the line, and all errors reported together through the shared `Checker`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::format_duration;
use super::file::CertFile;
use super::model::{CertSpec, SipTransport};
use super::validate::{span, Checker};
use crate::sip::dialplan::{is_number, DialPlan, Pattern, Route, Rule, Target};
use crate::sip::digest::Algorithm;

pub const DEFAULT_RING_TIME: Duration = Duration::from_secs(20);
pub const DEFAULT_REGISTER_EXPIRES: Duration = Duration::from_secs(3600);
/// How long a digest nonce is accepted (then `stale=true` asks for a fresh one).
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Stage one: the file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipFile {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub domain: Spanned<String>,
    pub tls: Option<CertFile>,
    pub nonce_lifetime: Option<Spanned<String>>,
    pub digest_algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub extensions: BTreeMap<Spanned<String>, ExtensionFile>,
    #[serde(default)]
    pub trunks: BTreeMap<Spanned<String>, TrunkFile>,
    pub voicemail: Option<VoicemailFile>,
    #[serde(default)]
    pub dialplan: Vec<DialRuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionFile {
    pub name: Option<Spanned<String>>,
    pub secret: Spanned<String>,
    pub voicemail: Option<Spanned<bool>>,
    pub ring_time: Option<Spanned<String>>,
    pub forward: Option<ForwardFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    pub always: Option<Spanned<String>>,
    pub busy: Option<Spanned<String>>,
    pub no_answer: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TrunkKindFile {
    Peer,
    Register,
}

/// One flat shape for both kinds, so a field of the other kind is named precisely.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkFile {
    pub kind: Spanned<TrunkKindFile>,
    pub identity: Option<Spanned<String>>,
    // peer
    pub address: Option<Spanned<String>>,
    pub trusted: Option<Spanned<bool>>,
    pub options_ping: Option<Spanned<String>>,
    // register
    pub registrar: Option<Spanned<String>>,
    pub domain: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub expires: Option<Spanned<String>>,
    pub inbound: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailFile {
    pub trunk: Spanned<String>,
    pub pilot: Spanned<String>,
    pub mailbox_prefix: Option<Spanned<String>>,
    pub own_extension_to_mailbox: Option<bool>,
    pub mwi: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRuleFile {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub to: Spanned<String>,
    pub strip: Option<Spanned<u32>>,
    pub prepend: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// The typed model.

#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    pub listen: Vec<SipAddr>,
    pub domain: String,
    /// Certificate and key for `tls:` listeners (and mutual TLS towards peers).
    pub tls: Option<CertSpec>,
    /// How long a digest nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Digest algorithms offered in challenges, most preferred first; credentials using
    /// another are refused.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// By extension number.
    pub extensions: BTreeMap<String, SipExtension>,
    /// By trunk name.
    pub trunks: BTreeMap<String, SipTrunk>,
    pub voicemail: Option<SipVoicemail>,
    pub dialplan: DialPlan,
}

/// `transport:IP:port`, e.g. `tcp:198.18.2.20:5060` or `tls:[2001:db8::1]:5061`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddr {
    pub transport: SipTransport,
    pub addr: SocketAddr,
}

impl fmt::Display for SipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.transport {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        };
        write!(f, "{t}:{}", self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipExtension {
    /// Display name; the extension number when not given.
    pub name: String,
    pub secret: String,
    pub voicemail: bool,
    /// How long the extension rings before `forward.no_answer` (or the caller gives up).
    pub ring_time: Duration,
    pub forward: Forward,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    pub always: Option<ForwardTo>,
    pub busy: Option<ForwardTo>,
    pub no_answer: Option<ForwardTo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    /// An extension or a number the dial plan routes.
    Number(String),
    /// The extension's own mailbox (needs `voicemail = true` and `[sip.voicemail]`).
    Voicemail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// P-Asserted-Identity (what Exchange UM expects).
    Pai,
    /// Remote-Party-ID (what many ISPs expect).
    Rpid,
    None,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Pai => "pai",
            Identity::Rpid => "rpid",
            Identity::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTrunk {
    pub kind: TrunkKind,
    /// How the caller identity is sent on calls out of this trunk.
    pub identity: Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkKind {
    /// Addressed (and, if trusted, authenticated) by IP; never registers.
    Peer {
        address: SipAddr,
        /// Accept INVITE / NOTIFY from this address without digest authentication.
        trusted: bool,
        /// OPTIONS every this long; down after 3 unanswered. None: no pings.
        options_ping: Option<Duration>,
    },
    /// We REGISTER to it with digest authentication, refreshed before expiry.
    Register {
        registrar: SipAddr,
        domain: String,
        username: String,
        secret: String,
        expires: Duration,
        /// The extension calls arriving on this trunk ring; None: the called number is
        /// looked up among the extensions.
        inbound: Option<String>,
    },
}

impl TrunkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TrunkKind::Peer { .. } => "peer",
            TrunkKind::Register { .. } => "register",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipVoicemail {
    /// The trunk towards the voicemail system (Exchange UM).
    pub trunk: String,
    /// The pilot number calls to a mailbox are sent to.
    pub pilot: String,
    /// Put in front of the extension to make the mailbox number (Asterisk's UMOUTDIALPREFIX).
    pub mailbox_prefix: String,
    /// An extension dialling its own number reaches its mailbox.
    pub own_extension_to_mailbox: bool,
    /// Accept unsolicited message-waiting NOTIFYs from the voicemail trunk.
    pub mwi: bool,
}

// ---------------------------------------------------------------------------------------------
// Stage two: validation.

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

pub(super) fn validate_sip(c: &mut Checker<'_>, f: &SipFile) -> SipConfig {
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
            trunks.insert(n.clone(), tr);
        }
    }

    // dial plan
    let mut dialplan = DialPlan::default();
    for (i, r) in f.dialplan.iter().enumerate() {
        let field = |x: &str| format!("sip.dialplan[{i}].{x}");
        let pattern = match Pattern::parse(r.pattern.get_ref()) {
            Ok(p) => Some(p),
            Err(m) => {
                c.err(span(&r.pattern), field("match"), format!("`{}`: {m}", r.pattern.get_ref()));
                None
            }
        };
        let to = match r.to.get_ref().as_str() {
            "extension" => Target::Extension,
            t => {
                if !f.trunks.keys().any(|k| k.get_ref() == t) {
                    c.err(
                        span(&r.to),
                        field("to"),
                        format!("no trunk named `{t}` (defined: {})", names(&f.trunks)),
                    );
                }
                Target::Trunk(t.to_string())
            }
        };
        let strip = r.strip.as_ref().map(|s| *s.get_ref() as usize).unwrap_or(0);
        let prepend = r.prepend.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
        if let Some(p) = &r.prepend {
            if !is_number(p.get_ref()) {
                c.err(
                    span(p),
                    field("prepend"),
                    format!("`{}` may hold only digits, '*', '#' and '+'", p.get_ref()),
                );
            }
        }
        if let (Some(pat), Some(s)) = (&pattern, &r.strip) {
            if strip >= pat.min_len() && prepend.is_empty() {
                c.err(
                    span(s),
                    field("strip"),
                    format!(
                        "strip {strip} removes all of `{}`'s shortest match ({} characters)",
                        pat,
                        pat.min_len()
                    ),
                );
            }
        }
        if let Some(pattern) = pattern {
            dialplan.rules.push(Rule { pattern, to, strip, prepend });
        }
    }

    // voicemail
    let voicemail = f.voicemail.as_ref().map(|v| {
        let t = v.trunk.get_ref();
        match trunks.get(t) {
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
            trunk: t.clone(),
            pilot: v.pilot.get_ref().clone(),
            mailbox_prefix,
            own_extension_to_mailbox: v.own_extension_to_mailbox.unwrap_or(false),
            mwi: v.mwi.unwrap_or(false),
        }
    });

    // extensions (last: forwards are checked against the extensions and the dial plan)
    let mut extensions = BTreeMap::new();
    for (num, e) in &f.extensions {
        let n = num.get_ref();
        let field = |x: &str| format!("sip.extensions.{n}.{x}");
        if n.is_empty() || n.len() > 15 || !n.bytes().all(|b| b.is_ascii_digit()) {
            c.err(span(num), format!("sip.extensions.{n}"), format!("extension `{n}` must be 1-15 digits"));
        }
        if e.secret.get_ref().is_empty() {
            c.err(span(&e.secret), field("secret"), "must not be empty");
        }
        let voicemail = e.voicemail.as_ref().map(|v| *v.get_ref()).unwrap_or(false);
        if let (Some(v), None) = (&e.voicemail, &f.voicemail) {
            if *v.get_ref() {
                c.err(span(v), field("voicemail"), "voicemail = true needs a [sip.voicemail] section");
            }
        }
        let ring_time = c.duration(&e.ring_time, &field("ring_time"), DEFAULT_RING_TIME);
        let mut forward = Forward::default();
        if let Some(fw) = &e.forward {
            for (v, which, slot) in [
                (&fw.always, "always", &mut forward.always),
                (&fw.busy, "busy", &mut forward.busy),
                (&fw.no_answer, "no_answer", &mut forward.no_answer),
            ] {
                let Some(v) = v else { continue };
                let fname = field(&format!("forward.{which}"));
                let to = v.get_ref();
                if to == "voicemail" {
                    if !voicemail {
                        c.err(
                            span(v),
                            fname,
                            format!("extension {n} has no voicemail (set voicemail = true)"),
                        );
                    }
                    *slot = Some(ForwardTo::Voicemail);
                    continue;
                }
                if to == n {
                    c.err(span(v), fname, format!("extension {n} forwards to itself"));
                } else if !is_number(to) {
                    c.err(span(v), fname, format!("`{to}` is neither a number nor \"voicemail\""));
                } else if !f.extensions.keys().any(|k| k.get_ref() == to) {
                    match dialplan.route(to) {
                        None => c.err(
                            span(v),
                            fname,
                            format!("`{to}` is not an extension and no dial plan rule routes it"),
                        ),
                        Some(Route { target: Target::Extension, number })
                            if !f.extensions.keys().any(|k| *k.get_ref() == number) =>
                        {
                            c.err(
                                span(v),
                                fname,
                                format!("`{to}` routes to extension {number}, which does not exist"),
                            )
                        }
                        Some(_) => {}
                    }
                }
                *slot = Some(ForwardTo::Number(to.clone()));
            }
        }
        extensions.insert(
            n.clone(),
            SipExtension {
                name: e.name.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| n.clone()),
                secret: e.secret.get_ref().clone(),
                voicemail,
                ring_time,
                forward,
            },
        );
    }

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

    SipConfig {
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

fn names<T>(m: &BTreeMap<Spanned<String>, T>) -> String {
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
    Some(SipTrunk { kind, identity })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config, ConfigErrors};
    use std::path::Path;

    const PBX: &str = include_str!("../../configs/pbx.toml");

    fn parse_str(s: &str) -> Result<Config, ConfigErrors> {
        parse(s, Path::new("test.toml"))
    }

    fn sip(s: &str) -> SipConfig {
        parse_str(s).unwrap_or_else(|e| panic!("{e}")).sip.expect("[sip] present")
    }

    /// Lines 1-3; every case appends below.
    const BASE: &str = "[sip]\nlisten = [\"udp:198.18.1.1:5060\"]\ndomain = \"pbx.example.test\"\n";

    #[test]
    fn the_contract_loads_exactly_as_written() {
        let s = sip(PBX);
        let addr = |t, a: &str| SipAddr { transport: t, addr: a.parse().unwrap() };
        assert_eq!(
            s.listen,
            vec![
                addr(SipTransport::Udp, "198.18.1.1:5060"),
                addr(SipTransport::Tcp, "198.18.1.1:5060"),
                addr(SipTransport::Tls, "198.18.1.1:5061"),
            ]
        );
        assert_eq!(s.domain, "pbx.example.test");
        assert_eq!(
            s.tls,
            Some(CertSpec {
                cert: "/etc/portier/tls/pbx.pem".into(),
                key: "/etc/portier/tls/pbx.key".into()
            })
        );
        assert_eq!(s.extensions.keys().collect::<Vec<_>>(), ["2000", "2001", "2002"]);
        assert_eq!(
            s.extensions["2000"],
            SipExtension {
                name: "Main number".into(),
                secret: "change-me".into(),
                voicemail: false,
                ring_time: DEFAULT_RING_TIME,
                forward: Forward {
                    always: Some(ForwardTo::Number("1900".into())),
                    busy: None,
                    no_answer: None
                },
            }
        );
        assert!(s.extensions["2001"].voicemail && s.extensions["2001"].name == "Alice");
        assert_eq!(s.extensions["2002"].ring_time, Duration::from_secs(20));
        assert_eq!(
            s.trunks["exchange-um"],
            SipTrunk {
                kind: TrunkKind::Peer {
                    address: addr(SipTransport::Tcp, "198.18.2.20:5060"),
                    trusted: true,
                    options_ping: Some(Duration::from_secs(30)),
                },
                identity: Identity::Pai,
            }
        );
        assert_eq!(
            s.trunks["isp"],
            SipTrunk {
                kind: TrunkKind::Register {
                    registrar: addr(SipTransport::Udp, "198.18.3.10:5060"),
                    domain: "isp.example.test".into(),
                    username: "0999999999".into(),
                    secret: "isp-secret".into(),
                    expires: Duration::from_secs(600),
                    inbound: Some("2000".into()),
                },
                identity: Identity::Rpid,
            }
        );
        assert_eq!(
            s.voicemail,
            Some(SipVoicemail {
                trunk: "exchange-um".into(),
                pilot: "1000".into(),
                mailbox_prefix: String::new(),
                own_extension_to_mailbox: false,
                mwi: true,
            })
        );
        let rules: Vec<String> = s.dialplan.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["2XXX -> extension", "1XXX -> trunk exchange-um", "0. -> trunk isp strip 1"]);
        assert_eq!(s.dialplan.route("00112345678").unwrap().number, "0112345678");
        assert_eq!(s.dialplan.route("1900").unwrap().target, Target::Trunk("exchange-um".into()));
    }

    #[test]
    fn defaults_apply() {
        let s = sip(&format!("{BASE}[sip.extensions]\n2001 = {{ secret = \"x\" }}\n"));
        let e = &s.extensions["2001"];
        assert_eq!((e.name.as_str(), e.voicemail, e.ring_time), ("2001", false, DEFAULT_RING_TIME));
        assert_eq!(e.forward, Forward::default());
        assert!(
            s.tls.is_none() && s.voicemail.is_none() && s.trunks.is_empty() && s.dialplan.rules.is_empty()
        );
        assert!(parse_str(BASE).unwrap().sip.is_some());
    }

    #[test]
    fn sip_addresses() {
        assert_eq!(parse_sip_addr("tls:[2001:db8::1]:5061").unwrap().to_string(), "tls:[2001:db8::1]:5061");
        assert!(parse_sip_addr("198.18.1.1:5060").unwrap_err().contains("not a transport"));
        assert!(parse_sip_addr("udp:198.18.1.1:0").unwrap_err().contains("port 0"));
        assert!(parse_sip_addr("udp").unwrap_err().contains("no transport"));
    }

    const TRUNK_UM: &str =
        "[sip.trunks.um]\nkind = \"peer\"\naddress = \"tcp:198.18.2.20:5060\"\ntrusted = true\n";

    /// (what, config, line, field, message fragment)
    fn malformed() -> Vec<(&'static str, String, usize, &'static str, &'static str)> {
        let ext = |body: &str| format!("{BASE}[sip.extensions]\n{body}");
        vec![
            (
                "listen without port",
                BASE.replace("udp:198.18.1.1:5060", "udp:198.18.1.1"),
                2,
                "sip.listen",
                "is not IP:port",
            ),
            (
                "listen with unknown transport",
                BASE.replace("udp:", "sctp:"),
                2,
                "sip.listen",
                "`sctp` is not a transport (udp, tcp or tls)",
            ),
            (
                "tls listener without certificates",
                BASE.replace("udp:198.18.1.1:5060", "tls:198.18.1.1:5061"),
                2,
                "sip.listen",
                "TLS listener: set sip.tls",
            ),
            ("extension key not digits", ext("20a1 = { secret = \"x\" }\n"), 5, "sip.extensions.20a1", "must be 1-15 digits"),
            ("empty extension secret", ext("2001 = { secret = \"\" }\n"), 5, "sip.extensions.2001.secret", "must not be empty"),
            (
                "forward to an unknown number",
                ext("2001 = { secret = \"x\", forward = { busy = \"3000\" } }\n"),
                5,
                "sip.extensions.2001.forward.busy",
                "`3000` is not an extension and no dial plan rule routes it",
            ),
            (
                "forward routed to a missing extension",
                ext("2001 = { secret = \"x\", forward = { always = \"2999\" } }\n[[sip.dialplan]]\nmatch = \"2XXX\"\nto = \"extension\"\n"),
                5,
                "sip.extensions.2001.forward.always",
                "routes to extension 2999, which does not exist",
            ),
            (
                "forward to voicemail without voicemail",
                ext("2001 = { secret = \"x\", forward = { no_answer = \"voicemail\" } }\n"),
                5,
                "sip.extensions.2001.forward.no_answer",
                "has no voicemail",
            ),
            (
                "voicemail without [sip.voicemail]",
                ext("2001 = { secret = \"x\", voicemail = true }\n"),
                5,
                "sip.extensions.2001.voicemail",
                "needs a [sip.voicemail] section",
            ),
            (
                "dial plan to an unknown trunk",
                format!("{BASE}{TRUNK_UM}[[sip.dialplan]]\nmatch = \"0.\"\nto = \"isp\"\n"),
                10,
                "sip.dialplan[0].to",
                "no trunk named `isp` (defined: um)",
            ),
            (
                "bad pattern",
                format!("{BASE}[[sip.dialplan]]\nmatch = \"2[1\"\nto = \"extension\"\n"),
                5,
                "sip.dialplan[0].match",
                "`2[1`: unclosed [",
            ),
            (
                "strip removes everything",
                format!("{BASE}{TRUNK_UM}[[sip.dialplan]]\nmatch = \"1X\"\nto = \"um\"\nstrip = 2\n"),
                11,
                "sip.dialplan[0].strip",
                "removes all of `1X`'s shortest match",
            ),
            (
                "voicemail on an unknown trunk",
                format!("{BASE}[sip.voicemail]\ntrunk = \"exchange\"\npilot = \"1000\"\n"),
                5,
                "sip.voicemail.trunk",
                "no trunk named `exchange`",
            ),
            (
                "mwi from an untrusted trunk",
                format!("{BASE}{}[sip.voicemail]\ntrunk = \"um\"\npilot = \"1000\"\nmwi = true\n", TRUNK_UM.replace("true", "false")),
                9,
                "sip.voicemail.trunk",
                "needs `um` to be a peer with trusted = true",
            ),
            (
                "inbound to an unknown extension",
                format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"s\"\ninbound = \"2000\"\n"),
                9,
                "sip.trunks.isp.inbound",
                "no extension 2000 (defined: none)",
            ),
            (
                "identity not pai|rpid|none",
                format!("{BASE}{TRUNK_UM}identity = \"pani\"\n"),
                8,
                "sip.trunks.um.identity",
                "`pani` is not pai, rpid or none",
            ),
            (
                "register field on a peer",
                format!("{BASE}{TRUNK_UM}expires = \"600s\"\n"),
                8,
                "sip.trunks.um.expires",
                "`expires` does not apply to peer trunks",
            ),
            (
                "peer field on a register trunk",
                format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"s\"\ntrusted = true\n"),
                9,
                "sip.trunks.isp.trusted",
                "`trusted` does not apply to register trunks",
            ),
            (
                "empty trunk secret",
                format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"\"\n"),
                8,
                "sip.trunks.isp.secret",
                "must not be empty",
            ),
            (
                "register trunk without registrar",
                format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nusername = \"099\"\nsecret = \"s\"\n"),
                4,
                "sip.trunks.isp.registrar",
                "a register trunk needs `registrar`",
            ),
            (
                "bad peer address",
                format!("{BASE}{}", TRUNK_UM.replace("tcp:198.18.2.20:5060", "tcp:um.example.test:5060")),
                6,
                "sip.trunks.um.address",
                "is not IP:port",
            ),
            (
                "bad ring time",
                ext("2001 = { secret = \"x\", ring_time = \"20\" }\n"),
                5,
                "sip.extensions.2001.ring_time",
                "has no unit",
            ),
        ]
    }

    #[test]
    fn malformed_sip_sections_name_line_and_field() {
        let cases = malformed();
        assert!(cases.len() >= 10);
        for (what, src, line, field, msg) in cases {
            let e = match parse_str(&src) {
                Ok(_) => panic!("{what}: unexpectedly valid:\n{src}"),
                Err(e) => e,
            };
            assert!(
                e.0.iter().any(|x| x.line == line && x.field == field && x.message.contains(msg)),
                "{what}: want line {line}, field {field}, message containing {msg:?}; got:\n{e}\nin:\n{src}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let e =
            parse_str(&format!("{BASE}[sip.voicemail]\ntrunk = \"um\"\npilott = \"1000\"\n")).unwrap_err();
        assert!(e.to_string().contains("test.toml:6:") && e.to_string().contains("pilott"), "{e}");
        let e = parse_str(&format!("{BASE}{TRUNK_UM}kind2 = 1\n")).unwrap_err();
        assert!(e.to_string().contains("test.toml:8:") && e.to_string().contains("unknown field"), "{e}");
        let e = parse_str(&format!("{BASE}{TRUNK_UM}").replace("\"peer\"", "\"friend\"")).unwrap_err();
        assert!(e.to_string().contains("test.toml:5:"), "{e}");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let src = format!(
            "{}[sip.extensions]\n2001 = {{ secret = \"\" }}\n[[sip.dialplan]]\nmatch = \"X.X\"\nto = \"nowhere\"\n",
            BASE.replace("udp:", "sctp:")
        );
        let e = parse_str(&src).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|x| x.field.as_str()).collect();
        for f in ["sip.listen", "sip.extensions.2001.secret", "sip.dialplan[0].match", "sip.dialplan[0].to"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn summary_names_listeners_extensions_trunks_and_rules() {
        let s = summary(&sip(PBX));
        assert!(s.contains("sip: domain pbx.example.test; listen udp:198.18.1.1:5060, tcp:198.18.1.1:5060, tls:198.18.1.1:5061; 3 extension(s), 2 trunk(s), 3 dial plan rule(s)"), "{s}");
        assert!(s.contains("trunk exchange-um: peer tcp:198.18.2.20:5060 trusted"), "{s}");
        assert!(s.contains("trunk isp: register 0999999999@isp.example.test at udp:198.18.3.10:5060"), "{s}");
        assert!(s.contains("dialplan 0. -> trunk isp strip 1"), "{s}");
    }
}
