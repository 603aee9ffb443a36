//! Stage two: from the file's shape to a typed `Config`, checking meaning and cross references.
//! Every error names file, line and field; all errors of a file are reported together.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::duration::{format_duration, parse_duration};
use super::error::{ConfigError, ConfigErrors, Locator};
use super::file::*;
use super::model::*;
use crate::sip::SipTransport;

pub(super) struct Checker<'a> {
    pub(super) loc: Locator<'a>,
    pub(super) errors: Vec<ConfigError>,
}

pub(super) fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Checker<'_> {
    pub(super) fn err(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let e = self.loc.error(span, field, msg);
        self.errors.push(e);
    }

    /// An optional whole number in `min..=max`; out of range is an error naming the field.
    pub(super) fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        field: &str,
        min: i64,
        max: i64,
    ) -> Option<usize> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(span(v), field, format!("must be between {min} and {max}"));
            return None;
        }
        usize::try_from(n).ok()
    }

    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if d.is_zero() => {
                    self.err(span(s), field, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(span(s), field, m);
                    default
                }
            },
        }
    }

    pub(super) fn name(&mut self, n: &Spanned<String>, what: &str) {
        let ok = !n.get_ref().is_empty()
            && n.get_ref().len() <= 64
            && n.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.err(
                span(n),
                format!("{what}.{}", n.get_ref()),
                "names may use only letters, digits, '-' and '_' (at most 64)",
            );
        }
    }
}

/// Parses a server address: `198.18.2.11`, `198.18.2.11:443`, `2001:db8::11`, `[2001:db8::11]:443`.
pub fn parse_server_address(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    match text.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => Err(format!("`{text}`: port 0 is not a port")),
        Ok(sa) => Ok((sa.ip(), Some(sa.port()))),
        Err(_) => Err(format!(
            "`{text}` is not an IP address or address:port (IPv6 with a port needs brackets: [2001:db8::1]:443)"
        )),
    }
}

/// Parses one `ports` element: an integer or a "low-high" string.
pub fn parse_port_spec(v: &toml::Value) -> Result<PortRange, String> {
    let one = |n: i64| -> Result<u16, String> {
        if (1..=65535).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("{n} is not a port (1-65535)"))
        }
    };
    match v {
        toml::Value::Integer(n) => {
            let p = one(*n)?;
            Ok(PortRange { low: p, high: p })
        }
        toml::Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (s.trim(), s.trim()),
            };
            let lo: i64 = lo.parse().map_err(|_| format!("`{s}` is not a port or \"low-high\" range"))?;
            let hi: i64 = hi.parse().map_err(|_| format!("`{s}` is not a port or \"low-high\" range"))?;
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!("range `{s}` runs backwards"));
            }
            Ok(PortRange { low: lo, high: hi })
        }
        other => {
            Err(format!("{} is not a port; write an integer or a \"low-high\" string", other.type_str()))
        }
    }
}

pub fn validate(file: &FileConfig, path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut c = Checker { loc: Locator::new(path, src), errors: Vec::new() };

    // [global]
    let global = match &file.global {
        None => GlobalConfig {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            log_level: "info".into(),
            threads: None,
            max_connections: None,
            reserved_descriptors: DEFAULT_RESERVED_DESCRIPTORS,
        },
        Some(g) => {
            let drain_timeout = c.duration(&g.drain_timeout, "global.drain_timeout", DEFAULT_DRAIN_TIMEOUT);
            let log_level = match &g.log_level {
                None => "info".to_string(),
                Some(l) => {
                    let v = l.get_ref().to_ascii_lowercase();
                    if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                        c.err(span(l), "global.log_level", "use one of error, warn, info, debug, trace");
                    }
                    v
                }
            };
            let threads = g.threads.as_ref().and_then(|t| match usize::try_from(*t.get_ref()) {
                Ok(n @ 1..=256) => Some(n),
                _ => {
                    c.err(span(t), "global.threads", "must be between 1 and 256");
                    None
                }
            });
            let max_connections = c.count(&g.max_connections, "global.max_connections", 1, 10_000_000);
            let reserved_descriptors = c
                .count(&g.reserved_descriptors, "global.reserved_descriptors", 16, 1_000_000)
                .unwrap_or(DEFAULT_RESERVED_DESCRIPTORS);
            GlobalConfig { drain_timeout, log_level, threads, max_connections, reserved_descriptors }
        }
    };

    // [admin]
    let default_listen = || DEFAULT_ADMIN_LISTEN.parse().expect("default admin address is valid");
    let mut admin = AdminConfig {
        listen: default_listen(),
        control: std::path::PathBuf::from(DEFAULT_CONTROL_SOCKET),
        token: None,
    };
    if let Some(a) = &file.admin {
        if let Some(l) = &a.listen {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(sa) => admin.listen = sa,
                Err(_) => c.err(span(l), "admin.listen", format!("`{}` is not an address:port", l.get_ref())),
            }
        }
        if let Some(p) = &a.control {
            let path = std::path::PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                c.err(span(p), "admin.control", format!("`{}` must be an absolute path", p.get_ref()));
            }
            admin.control = path;
        }
        if let Some(t) = &a.token {
            let v = t.get_ref();
            if v.len() < 16 || !v.chars().all(|ch| ch.is_ascii_graphic()) {
                c.err(span(t), "admin.token", "needs at least 16 printable characters, no spaces");
            }
            admin.token = Some(v.clone());
        }
    }

    // [intercept]
    let mut intercept = InterceptConfig { fwmark: DEFAULT_FWMARK, route_table: DEFAULT_ROUTE_TABLE };
    if let Some(i) = &file.intercept {
        if let Some(m) = &i.fwmark {
            if *m.get_ref() == 0 {
                c.err(span(m), "intercept.fwmark", "0 means \"no mark\"; choose a non-zero mark");
            }
            intercept.fwmark = *m.get_ref();
        }
        if let Some(t) = &i.route_table {
            let t_v = *t.get_ref();
            if t_v == 0 || (253..=255).contains(&t_v) {
                c.err(
                    span(t),
                    "intercept.route_table",
                    format!("table {t_v} is reserved (0 unspec, 253 default, 254 main, 255 local)"),
                );
            }
            intercept.route_table = t_v;
        }
    }

    // [pools.*]
    let mut pools = Vec::new();
    let mut pool_index = BTreeMap::new();
    for (name, p) in &file.pools {
        c.name(name, "pools");
        let field = |f: &str| format!("pools.{}.{f}", name.get_ref());
        let balance = match p.balance.unwrap_or(BalanceFile::Roundrobin) {
            BalanceFile::Roundrobin => Balance::RoundRobin,
            BalanceFile::Leastconn => Balance::LeastConn,
            BalanceFile::SourceHash => Balance::SourceHash,
        };
        let mut servers: Vec<ServerConfig> = Vec::new();
        if p.servers.get_ref().is_empty() {
            c.err(span(&p.servers), field("servers"), "a pool needs at least one server");
        }
        for s in p.servers.get_ref() {
            let weight = match &s.weight {
                None => 1,
                Some(w) if (1..=1000).contains(w.get_ref()) => *w.get_ref(),
                Some(w) => {
                    c.err(span(w), field("servers.weight"), format!("{} is outside 1-1000", w.get_ref()));
                    1
                }
            };
            match parse_server_address(s.address.get_ref()) {
                Ok((address, port)) => {
                    let sc = ServerConfig { address, port, weight, drain: s.drain.unwrap_or(false) };
                    if servers.iter().any(|o| o.address == sc.address && o.port == sc.port) {
                        c.err(
                            span(&s.address),
                            field("servers.address"),
                            format!("`{}` is listed twice", s.address.get_ref()),
                        );
                    }
                    if address.is_unspecified() || address.is_multicast() {
                        c.err(
                            span(&s.address),
                            field("servers.address"),
                            format!("`{address}` cannot be a server"),
                        );
                    }
                    servers.push(sc);
                }
                Err(m) => c.err(span(&s.address), field("servers.address"), m),
            }
        }
        let check = p.check.as_ref().map(|ch| check_config(&mut c, ch, name.get_ref(), &servers));
        pool_index.insert(name.get_ref().clone(), pools.len());
        let tls = p.tls.as_ref().map(|t| {
            let t = t.get_ref();
            let verify = t.verify.unwrap_or(true);
            if verify && t.ca.is_none() {
                c.err(
                    p.tls.as_ref().map(|t| t.span()),
                    field("tls.ca"),
                    "verify = true needs `ca` (a PEM file of the CAs that signed the servers' certificates); verify = false skips the check",
                );
            }
            UpstreamTls {
                verify,
                ca: t.ca.as_ref().map(|a| std::path::PathBuf::from(a.get_ref())),
                sni: t.sni.as_ref().map(|n| n.get_ref().clone()),
            }
        });
        pools.push(PoolConfig { name: name.get_ref().clone(), balance, servers, check, tls });
    }

    // [services.*]
    let services = super::service::services(&mut c, file, &pools, &pool_index);

    // [sip]
    let sip = file.sip.as_ref().map(|s| super::sip::validate_sip(&mut c, s));

    if c.errors.is_empty() {
        Ok(Config { path: path.to_path_buf(), global, admin, intercept, pools, services, sip })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn check_config(
    c: &mut Checker<'_>,
    ch: &Spanned<CheckFile>,
    pool: &str,
    servers: &[ServerConfig],
) -> CheckConfig {
    let f = ch.get_ref();
    let field = |x: &str| format!("pools.{pool}.check.{x}");
    let interval = c.duration(&f.interval, &field("interval"), Duration::from_secs(2));
    let timeout = c.duration(&f.timeout, &field("timeout"), Duration::from_secs(1));
    if timeout > interval {
        c.err(
            f.timeout.as_ref().map(|t| t.span()).or(Some(ch.span())),
            field("timeout"),
            format!("{} is longer than the interval {}", format_duration(timeout), format_duration(interval)),
        );
    }
    let mut count = |v: &Option<Spanned<u32>>, name: &str, default: u32| match v {
        None => default,
        Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            c.err(span(n), field(name), format!("{} is outside 1-100", n.get_ref()));
            default
        }
    };
    let rise = count(&f.rise, "rise", 2);
    let fall = count(&f.fall, "fall", 3);
    let port = match &f.port {
        Some(p) if *p.get_ref() == 0 => {
            c.err(span(p), field("port"), "0 is not a port");
            None
        }
        Some(p) => Some(*p.get_ref()),
        None => None,
    };
    if port.is_none() {
        if let Some(s) = servers.iter().find(|s| s.port.is_none()) {
            c.err(
                Some(ch.span()),
                field("port"),
                format!("server {} has no port of its own, so the check needs `port`", s.address),
            );
        }
    }
    let unused = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, name: &str, kind: &str| {
        if let Some(v) = v {
            c.err(span(v), field(name), format!("`{name}` does not apply to {kind} checks"));
        }
    };
    let unused_num = |c: &mut Checker<'_>, v: &Option<Spanned<u16>>, name: &str, kind: &str| {
        if let Some(v) = v {
            c.err(span(v), field(name), format!("`{name}` does not apply to {kind} checks"));
        }
    };
    // A value the probe would refuse to send would mark every server down for ever.
    if let Some(h) = &f.host {
        let v = h.get_ref();
        if v.is_empty() || v.len() > 255 || v.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            c.err(span(h), field("host"), format!("`{v}` is not a usable Host header value"));
        }
    }
    if let Some(n) = &f.sni {
        if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err()
            || n.get_ref().parse::<IpAddr>().is_ok()
        {
            c.err(span(n), field("sni"), format!("`{}` is not a DNS name to send as SNI", n.get_ref()));
        }
    }
    let kind = match f.kind {
        CheckTypeFile::Tcp => {
            unused(c, &f.path, "path", "tcp");
            unused(c, &f.sni, "sni", "tcp");
            unused(c, &f.host, "host", "tcp");
            unused(c, &f.transport, "transport", "tcp");
            unused_num(c, &f.expect, "expect", "tcp");
            CheckKind::Tcp
        }
        CheckTypeFile::Http => {
            let (path, expect) = http_check_fields(c, f, &field);
            unused(c, &f.sni, "sni", "http");
            unused(c, &f.transport, "transport", "http");
            CheckKind::Http { path, expect, host: f.host.as_ref().map(|h| h.get_ref().clone()) }
        }
        CheckTypeFile::Https => {
            let (path, expect) = http_check_fields(c, f, &field);
            unused(c, &f.transport, "transport", "https");
            CheckKind::Https {
                path,
                expect,
                host: f.host.as_ref().map(|h| h.get_ref().clone()),
                sni: f.sni.as_ref().map(|h| h.get_ref().clone()),
            }
        }
        CheckTypeFile::Tls => {
            unused(c, &f.path, "path", "tls");
            unused(c, &f.transport, "transport", "tls");
            unused_num(c, &f.expect, "expect", "tls");
            CheckKind::Tls { sni: f.sni.as_ref().or(f.host.as_ref()).map(|h| h.get_ref().clone()) }
        }
        CheckTypeFile::SipOptions => {
            unused(c, &f.path, "path", "sip-options");
            let transport = match f.transport.as_ref().map(|t| t.get_ref().as_str()) {
                // TCP by default: Exchange UM and OCS listen on TCP, not UDP.
                Some("udp") => SipTransport::Udp,
                None | Some("tcp") => SipTransport::Tcp,
                Some("tls") => SipTransport::Tls,
                Some(other) => {
                    c.err(
                        f.transport.as_ref().map(|t| t.span()),
                        field("transport"),
                        format!("`{other}` is not udp, tcp or tls"),
                    );
                    SipTransport::Tcp
                }
            };
            unused(c, &f.host, "host", "sip-options");
            unused(c, &f.sni, "sni", "sip-options");
            unused_num(c, &f.expect, "expect", "sip-options");
            CheckKind::SipOptions { transport }
        }
    };
    CheckConfig { kind, port, interval, timeout, rise, fall }
}

/// `path` and `expect` of an http or https check.
fn http_check_fields(c: &mut Checker<'_>, f: &CheckFile, field: &dyn Fn(&str) -> String) -> (String, u16) {
    let path = f.path.as_ref().map(|p| p.get_ref().clone()).unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        c.err(
            f.path.as_ref().map(|p| p.span()),
            field("path"),
            format!("`{path}` must start with '/' and hold no spaces"),
        );
    }
    let expect = f.expect.as_ref().map(|e| *e.get_ref()).unwrap_or(200);
    if !(100..=599).contains(&expect) {
        c.err(
            f.expect.as_ref().map(|e| e.span()),
            field("expect"),
            format!("{expect} is not an HTTP status"),
        );
    }
    (path, expect)
}
