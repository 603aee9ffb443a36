//! Stage two for `[services.*]`: addresses, ports and their claims, mode-specific fields,
//! routes, stickiness and timeouts, checked against the pools.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::duration::format_duration;
use super::file::*;
use super::model::*;
use super::validate::{parse_port_spec, span, Checker};

fn list(v: &toml::Value) -> Vec<toml::Value> {
    match v {
        toml::Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    }
}

fn vips(c: &mut Checker<'_>, s: &ServiceFile, field: &dyn Fn(&str) -> String) -> Vec<IpAddr> {
    let mut vips = Vec::new();
    let values = list(s.vip.get_ref());
    if values.is_empty() {
        c.err(span(&s.vip), field("vip"), "needs at least one address");
    }
    for v in &values {
        match v.as_str().map(|t| (t, t.parse::<IpAddr>())) {
            Some((_, Ok(ip))) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                c.err(span(&s.vip), field("vip"), format!("`{ip}` cannot be a virtual IP"))
            }
            Some((_, Ok(ip))) => {
                if vips.contains(&ip) {
                    c.err(span(&s.vip), field("vip"), format!("`{ip}` is listed twice"));
                }
                vips.push(ip)
            }
            Some((t, Err(_))) => c.err(span(&s.vip), field("vip"), format!("`{t}` is not an IP address")),
            None => c.err(
                span(&s.vip),
                field("vip"),
                format!("{} is not an address; write \"198.19.0.10\" or a list of them", v.type_str()),
            ),
        }
    }
    vips
}

fn ports(c: &mut Checker<'_>, s: &ServiceFile, field: &dyn Fn(&str) -> String) -> Vec<PortRange> {
    let mut ports: Vec<PortRange> = Vec::new();
    let values = list(s.ports.get_ref());
    if values.is_empty() {
        c.err(span(&s.ports), field("ports"), "needs at least one port");
    }
    for v in &values {
        match parse_port_spec(v) {
            Ok(r) => {
                if let Some(o) = ports.iter().find(|o| o.overlaps(&r)) {
                    c.err(span(&s.ports), field("ports"), format!("{r} overlaps {o} in the same list"));
                }
                ports.push(r)
            }
            Err(m) => c.err(span(&s.ports), field("ports"), m),
        }
    }
    ports.sort();
    ports
}

fn pool_ref(
    c: &mut Checker<'_>,
    name: &Spanned<String>,
    pool_index: &BTreeMap<String, usize>,
    field: String,
) -> Option<usize> {
    match pool_index.get(name.get_ref()) {
        Some(i) => Some(*i),
        None => {
            let known: Vec<&str> = pool_index.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            c.err(span(name), field, format!("no pool named `{}` (defined: {known})", name.get_ref()));
            None
        }
    }
}

fn source(c: &mut Checker<'_>, s: &ServiceFile, field: &dyn Fn(&str) -> String) -> Source {
    let Some(t) = &s.source else { return Source::Client };
    match t.get_ref().as_str() {
        "client" => Source::Client,
        "balancer" => Source::Balancer,
        other => match other.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Source::Address(ip),
            _ => {
                c.err(
                    span(t),
                    field("source"),
                    format!("`{other}` is not \"client\", \"balancer\" or an IP address"),
                );
                Source::Client
            }
        },
    }
}

/// A transparent connection leaves from the client's address, so each VIP's family needs
/// servers of that family; a fixed SNAT address fixes the family.
fn family_coherence(
    c: &mut Checker<'_>,
    s: &ServiceFile,
    vips: &[IpAddr],
    source: Source,
    pool: &PoolConfig,
    field: &dyn Fn(&str) -> String,
) {
    match source {
        Source::Client => {
            for vip in vips {
                if !pool.servers.iter().any(|sv| sv.address.is_ipv4() == vip.is_ipv4()) {
                    c.err(
                        span(&s.vip),
                        field("vip"),
                        format!(
                            "transparent source: clients of {vip} can only reach {} servers, and pool `{}` has none",
                            if vip.is_ipv4() { "IPv4" } else { "IPv6" },
                            pool.name
                        ),
                    );
                }
            }
        }
        Source::Address(ip) => {
            if !pool.servers.iter().any(|sv| sv.address.is_ipv4() == ip.is_ipv4()) {
                c.err(
                    s.source.as_ref().map(|x| x.span()),
                    field("source"),
                    format!(
                        "SNAT address {ip} cannot reach any server of pool `{}` (other address family)",
                        pool.name
                    ),
                );
            }
        }
        Source::Balancer => {}
    }
}

fn routes(
    c: &mut Checker<'_>,
    s: &ServiceFile,
    mode: Mode,
    pool_index: &BTreeMap<String, usize>,
    field: &dyn Fn(&str) -> String,
) -> Vec<RouteConfig> {
    let Some(rs) = &s.routes else { return Vec::new() };
    if !matches!(mode, Mode::Http | Mode::Https | Mode::Tls) {
        c.err(Some(rs.span()), field("routes"), format!("routes do not apply to mode {}", mode.as_str()));
        return Vec::new();
    }
    let mut out = Vec::new();
    for r in rs.get_ref() {
        let host = r.host.as_ref().map(|h| {
            let v = h.get_ref().to_ascii_lowercase();
            let bare = v.strip_prefix("*.").unwrap_or(&v);
            if bare.is_empty() || !bare.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
            {
                c.err(
                    span(h),
                    field("routes.host"),
                    format!("`{}` is not a host name (or *.domain)", h.get_ref()),
                );
            }
            v
        });
        let path = r.path.as_ref().map(|p| {
            let v = p.get_ref().clone();
            if mode == Mode::Tls {
                c.err(span(p), field("routes.path"), "TLS passthrough routes by host (SNI) only");
            } else if !v.starts_with('/') || v.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                c.err(span(p), field("routes.path"), format!("`{v}` must start with '/' and hold no spaces"));
            }
            v.trim_end_matches('/').to_string()
        });
        if host.is_none() && path.is_none() {
            c.err(span(&r.pool), field("routes"), "a route needs a host, a path or both");
        }
        if pool_ref(c, &r.pool, pool_index, field("routes.pool")).is_some() {
            out.push(RouteConfig { host, path, pool: r.pool.get_ref().clone() });
        }
    }
    out
}

fn certificates(
    c: &mut Checker<'_>,
    s: &ServiceFile,
    mode: Mode,
    field: &dyn Fn(&str) -> String,
) -> Vec<CertSpec> {
    match (&s.certificates, mode) {
        (None, Mode::Https) => {
            c.err(
                span(&s.vip),
                field("certificates"),
                "mode https needs certificates = [{ cert = \"...pem\", key = \"...key\" }]",
            );
            Vec::new()
        }
        (Some(cs), Mode::Https) => {
            if cs.get_ref().is_empty() {
                c.err(Some(cs.span()), field("certificates"), "needs at least one certificate");
            }
            cs.get_ref()
                .iter()
                .map(|cf| CertSpec {
                    cert: PathBuf::from(cf.cert.get_ref()),
                    key: PathBuf::from(cf.key.get_ref()),
                })
                .collect()
        }
        (Some(cs), other) => {
            c.err(
                Some(cs.span()),
                field("certificates"),
                format!("certificates apply to mode https only, not {}", other.as_str()),
            );
            Vec::new()
        }
        (None, _) => Vec::new(),
    }
}

fn sticky(
    c: &mut Checker<'_>,
    s: &ServiceFile,
    sname: &str,
    mode: Mode,
    tables: &mut BTreeMap<String, (Duration, String)>,
    field: &dyn Fn(&str) -> String,
) -> Option<StickyConfig> {
    let st = s.sticky.as_ref()?;
    let f = st.get_ref();
    let expire = c.duration(&f.expire, &field("sticky.expire"), DEFAULT_STICKY_EXPIRE);
    let name = f.name.as_ref().map(|n| n.get_ref().clone());
    if let Some(n) = &f.name {
        let ok = !n.get_ref().is_empty()
            && n.get_ref().chars().all(|ch| ch.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(ch));
        if !ok {
            c.err(span(n), field("sticky.name"), format!("`{}` is not a cookie name", n.get_ref()));
        }
    }
    let by = match f.by.get_ref().as_str() {
        "client-ip" => {
            if let Some(n) = &f.name {
                c.err(
                    span(n),
                    field("sticky.name"),
                    "`name` is for cookie stickiness; client-ip uses `table`",
                );
            }
            let table = f.table.as_ref().map(|t| t.get_ref().clone()).unwrap_or_else(|| sname.to_string());
            match tables.get(&table) {
                Some((e, other)) if *e != expire => c.err(
                    Some(st.span()),
                    field("sticky.expire"),
                    format!(
                        "table `{table}` expires after {} in service `{other}`; services sharing a table must agree",
                        format_duration(*e)
                    ),
                ),
                Some(_) => {}
                None => {
                    tables.insert(table.clone(), (expire, sname.to_string()));
                }
            }
            StickyBy::ClientIp { table }
        }
        "cookie" | "server-cookie" if !mode.is_http() => {
            c.err(
                span(&f.by),
                field("sticky.by"),
                format!("`{}` needs mode http or https; use \"client-ip\"", f.by.get_ref()),
            );
            return None;
        }
        "cookie" => StickyBy::Cookie { name: name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string()) },
        "server-cookie" => match name {
            Some(name) => StickyBy::ServerCookie { name },
            None => {
                c.err(
                    Some(st.span()),
                    field("sticky.name"),
                    "server-cookie needs the server's cookie `name` (e.g. \"MS-WSMAN\")",
                );
                return None;
            }
        },
        other => {
            c.err(
                span(&f.by),
                field("sticky.by"),
                format!("`{other}` is not client-ip, cookie or server-cookie"),
            );
            return None;
        }
    };
    if f.table.is_some() && !matches!(by, StickyBy::ClientIp { .. }) {
        c.err(
            f.table.as_ref().map(|t| t.span()),
            field("sticky.table"),
            "`table` is for client-ip stickiness",
        );
    }
    Some(StickyConfig { by, expire })
}

pub(super) fn services(
    c: &mut Checker<'_>,
    file: &FileConfig,
    pools: &[PoolConfig],
    pool_index: &BTreeMap<String, usize>,
) -> Vec<ServiceConfig> {
    let mut services = Vec::new();
    let mut claims: Vec<(IpAddr, PortRange, String, Range<usize>)> = Vec::new();
    let mut tables: BTreeMap<String, (Duration, String)> = BTreeMap::new();
    for (name, s) in &file.services {
        c.name(name, "services");
        let sname = name.get_ref().clone();
        let field = |f: &str| format!("services.{sname}.{f}");
        let mode = match s.mode.as_ref().map(|m| *m.get_ref()) {
            None | Some(ModeFile::Tcp) => Mode::Tcp,
            Some(ModeFile::Http) => Mode::Http,
            Some(ModeFile::Https) => Mode::Https,
            Some(ModeFile::Tls) => Mode::Tls,
            Some(ModeFile::Redirect) => Mode::Redirect,
        };

        let vips = vips(c, s, &field);
        let ports = ports(c, s, &field);
        for vip in &vips {
            for r in &ports {
                for (ovip, or, oname, ospan) in &claims {
                    if ovip == vip && or.overlaps(r) {
                        let (ol, _) = c.loc.line_col(ospan.start);
                        c.err(
                            span(&s.ports),
                            field("ports"),
                            format!(
                                "{vip} port {r} is already claimed by service `{oname}` (line {ol}: {or})"
                            ),
                        );
                    }
                }
            }
        }
        for vip in &vips {
            for r in &ports {
                claims.push((*vip, *r, sname.clone(), s.ports.span()));
            }
        }

        let pool = match (&s.pool, mode) {
            (Some(p), Mode::Redirect) => {
                c.err(span(p), field("pool"), "a redirect service answers by itself and takes no pool");
                None
            }
            (None, Mode::Redirect) => None,
            (Some(p), _) => pool_ref(c, p, pool_index, field("pool")),
            (None, _) => {
                c.err(span(&s.vip), field("pool"), format!("mode {} needs a `pool`", mode.as_str()));
                None
            }
        };
        let source = source(c, s, &field);
        let routes = routes(c, s, mode, pool_index, &field);
        let named = pool.iter().map(|&i| &pools[i]);
        let routed = routes.iter().filter_map(|r| pool_index.get(&r.pool).map(|&i| &pools[i]));
        for p in named.chain(routed) {
            family_coherence(c, s, &vips, source, p, &field);
            if p.tls.is_some() && !mode.is_http() {
                c.err(
                    span(&s.vip),
                    field("pool"),
                    format!("pool `{}` re-encrypts (tls = ...), which only HTTP services do; mode {} relays bytes as they are", p.name, mode.as_str()),
                );
            }
        }
        let certificates = certificates(c, s, mode, &field);
        let sticky = sticky(c, s, &sname, mode, &mut tables, &field);
        if mode == Mode::Redirect && sticky.is_some() {
            c.err(
                s.sticky.as_ref().map(|x| x.span()),
                field("sticky"),
                "a redirect service has no servers to stick to",
            );
        }

        let http_only = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, n: &str| {
            if v.is_some() && !mode.is_http() {
                c.err(
                    v.as_ref().map(|x| x.span()),
                    field(n),
                    format!("`{n}` applies to modes http and https only"),
                );
            }
        };
        http_only(c, &s.header_timeout, "header_timeout");
        http_only(c, &s.response_timeout, "response_timeout");
        http_only(c, &s.access_log, "access_log");
        http_only(c, &s.server_reuse, "server_reuse");
        let idle_default = if mode.is_http() { DEFAULT_HTTP_IDLE_TIMEOUT } else { DEFAULT_IDLE_TIMEOUT };
        let idle_timeout = c.duration(&s.idle_timeout, &field("idle_timeout"), idle_default);
        let connect_timeout =
            c.duration(&s.connect_timeout, &field("connect_timeout"), DEFAULT_CONNECT_TIMEOUT);
        let header_timeout = c.duration(&s.header_timeout, &field("header_timeout"), DEFAULT_HEADER_TIMEOUT);
        let response_timeout =
            c.duration(&s.response_timeout, &field("response_timeout"), DEFAULT_RESPONSE_TIMEOUT);
        let access_log = match s.access_log.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("text") => AccessLog::Text,
            Some("json") => AccessLog::Json,
            Some("off") => AccessLog::Off,
            Some(other) => {
                c.err(
                    s.access_log.as_ref().map(|a| a.span()),
                    field("access_log"),
                    format!("`{other}` is not text, json or off"),
                );
                AccessLog::Text
            }
        };
        let server_reuse = match s.server_reuse.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("shared") => ServerReuse::Shared,
            Some("private") => ServerReuse::Private,
            Some(other) => {
                c.err(
                    s.server_reuse.as_ref().map(|a| a.span()),
                    field("server_reuse"),
                    format!("`{other}` is not shared or private"),
                );
                ServerReuse::Shared
            }
        };

        let max_connections = c.count(&s.max_connections, &field("max_connections"), 1, 10_000_000);
        services.push(ServiceConfig {
            max_connections,
            name: sname.clone(),
            vips,
            ports,
            mode,
            pool: pool.map(|i| pools[i].name.clone()),
            routes,
            certificates,
            source,
            sticky,
            idle_timeout,
            connect_timeout,
            header_timeout,
            response_timeout,
            access_log,
            server_reuse,
        });
    }
    services
}
