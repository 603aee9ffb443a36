use super::*;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../../configs/portier.toml");

fn parse_str(s: &str) -> Result<Config, ConfigErrors> {
    parse(s, Path::new("test.toml"))
}

/// Parses `s` expecting failure; returns the single-string rendering of all errors.
fn fails(s: &str) -> String {
    match parse_str(s) {
        Ok(c) => panic!("config unexpectedly valid: {c:?}"),
        Err(e) => e.to_string(),
    }
}

const POOL: &str = "[pools.p]\nservers = [{ address = \"198.18.2.11\" }]\n";

#[test]
fn the_documented_example_loads_exactly_as_written() {
    let c = parse_str(EXAMPLE).expect("example must load");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.intercept, InterceptConfig { fwmark: 1, route_table: 100 });
    let pool = &c.pools[0];
    assert_eq!(pool.name, "cas");
    assert_eq!(pool.balance, Balance::LeastConn);
    assert_eq!(pool.servers.len(), 2);
    assert_eq!(
        pool.servers[1],
        ServerConfig { address: "198.18.2.12".parse().unwrap(), port: None, weight: 1, drain: false }
    );
    let check = pool.check.as_ref().unwrap();
    assert_eq!(check.kind, CheckKind::Tcp);
    assert_eq!(
        (check.port, check.interval, check.timeout, check.rise, check.fall),
        (Some(135), Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    let s = &c.services[0];
    assert_eq!(s.name, "cas-rpc");
    assert_eq!(s.vips, vec!["198.19.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.ports,
        vec![
            PortRange { low: 135, high: 135 },
            PortRange { low: 59532, high: 59532 },
            PortRange { low: 59533, high: 59534 }
        ]
    );
    assert_eq!(s.source, Source::Client);
    assert_eq!(
        s.sticky,
        Some(StickyConfig {
            by: StickyBy::ClientIp { table: "cas".into() },
            expire: Duration::from_secs(7200)
        })
    );
    assert_eq!(s.idle_timeout, Duration::from_secs(7200));
    assert_eq!(c.pool(s).unwrap().name, "cas");
}

#[test]
fn defaults_apply() {
    let c = parse_str(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\n"))
        .unwrap();
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.intercept, InterceptConfig { fwmark: 1, route_table: 100 });
    assert_eq!(c.pools[0].balance, Balance::RoundRobin);
    assert_eq!(c.pools[0].servers[0].weight, 1);
    assert!(c.pools[0].check.is_none());
    let s = &c.services[0];
    assert_eq!((s.mode, s.source, s.sticky.clone()), (Mode::Tcp, Source::Client, None));
    assert_eq!(s.idle_timeout, DEFAULT_IDLE_TIMEOUT);
}

#[test]
fn ipv6_vips_and_servers() {
    let c = parse_str(
        "[pools.p]\nservers = [{ address = \"2001:db8:2::11\" }, { address = \"[2001:db8:2::12]:8080\" }, { address = \"198.18.2.11\" }]\n\
         [services.s]\nvip = [\"198.19.0.10\", \"2001:db8:19::10\"]\nports = [135]\npool = \"p\"\n",
    )
    .unwrap();
    assert_eq!(c.pools[0].servers[1].port, Some(8080));
    assert_eq!(c.services[0].vips.len(), 2);
}

// ---- malformed configurations: each names the line and the field ----

#[test]
fn unknown_field_is_refused_with_line() {
    let e = fails(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nidle_timout = \"2h\"\n"
    ));
    assert!(e.contains("test.toml:7:"), "{e}");
    assert!(e.contains("idle_timout") && e.contains("unknown field"), "{e}");
}

#[test]
fn dangling_pool_name() {
    let e = fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"nope\"\n"));
    assert!(
        e.contains("test.toml:6:") && e.contains("services.s.pool") && e.contains("no pool named `nope`"),
        "{e}"
    );
}

#[test]
fn overlapping_vip_port_claims() {
    let e = fails(&format!(
        "{POOL}[services.a]\nvip = \"198.19.0.10\"\nports = [\"100-200\"]\npool = \"p\"\n\
         [services.b]\nvip = [\"198.19.0.11\", \"198.19.0.10\"]\nports = [150]\npool = \"p\"\n"
    ));
    assert!(e.contains("services.b.ports") && e.contains("already claimed by service `a`"), "{e}");
    assert!(e.contains("test.toml:9:"), "{e}");
}

#[test]
fn bad_vip_address() {
    let e = fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.300\"\nports = [80]\npool = \"p\"\n"));
    assert!(e.contains("services.s.vip") && e.contains("not an IP address") && e.contains(":4:"), "{e}");
}

#[test]
fn bad_server_address() {
    let e = fails("[pools.p]\nservers = [{ address = \"cas01.example\" }]\n");
    assert!(e.contains("pools.p.servers.address") && e.contains("cas01.example") && e.contains(":2:"), "{e}");
}

#[test]
fn bad_port_range() {
    let e =
        fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [\"600-500\"]\npool = \"p\"\n"));
    assert!(e.contains("runs backwards"), "{e}");
    let e = fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [70000]\npool = \"p\"\n"));
    assert!(e.contains("not a port"), "{e}");
    let e = fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [1.5]\npool = \"p\"\n"));
    assert!(e.contains("float is not a port"), "{e}");
}

#[test]
fn bad_duration() {
    let e = fails(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nidle_timeout = \"2 hours\"\n"
    ));
    assert!(e.contains("services.s.idle_timeout") && e.contains("unit"), "{e}");
}

#[test]
fn bad_balance_value() {
    let e = fails("[pools.p]\nbalance = \"fastest\"\nservers = [{ address = \"198.18.2.11\" }]\n");
    assert!(e.contains(":2:") && e.contains("fastest"), "{e}");
}

#[test]
fn missing_required_field() {
    let e = fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\npool = \"p\"\n"));
    assert!(e.contains("missing field `ports`"), "{e}");
}

#[test]
fn empty_pool() {
    let e = fails("[pools.p]\nservers = []\n");
    assert!(e.contains("pools.p.servers") && e.contains("at least one server"), "{e}");
}

#[test]
fn check_without_port_for_portless_server() {
    let e = fails("[pools.p]\nservers = [{ address = \"198.18.2.11\" }]\ncheck = { type = \"tcp\" }\n");
    assert!(e.contains("pools.p.check.port"), "{e}");
}

#[test]
fn check_timeout_longer_than_interval() {
    let e = fails("[pools.p]\nservers = [{ address = \"198.18.2.11:80\" }]\ncheck = { type = \"tcp\", interval = \"1s\", timeout = \"2s\" }\n");
    assert!(e.contains("pools.p.check.timeout"), "{e}");
}

#[test]
fn bad_source() {
    let e = fails(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nsource = \"snat\"\n"
    ));
    assert!(e.contains("services.s.source") && e.contains("snat"), "{e}");
}

#[test]
fn transparent_family_mismatch() {
    let e = fails(&format!("{POOL}[services.s]\nvip = \"2001:db8:19::10\"\nports = [80]\npool = \"p\"\n"));
    assert!(e.contains("IPv6 servers"), "{e}");
}

#[test]
fn sticky_tables_must_agree_on_expiry() {
    let e = fails(&format!(
        "{POOL}[services.a]\nvip = \"198.19.0.10\"\nports = [1]\npool = \"p\"\nsticky = {{ by = \"client-ip\", table = \"t\", expire = \"1h\" }}\n\
         [services.b]\nvip = \"198.19.0.10\"\nports = [2]\npool = \"p\"\nsticky = {{ by = \"client-ip\", table = \"t\", expire = \"2h\" }}\n"
    ));
    assert!(e.contains("services.b.sticky.expire") && e.contains("must agree"), "{e}");
}

#[test]
fn reserved_route_table_and_zero_mark() {
    let e = fails("[intercept]\nfwmark = 0\nroute_table = 254\n");
    assert!(e.contains("intercept.fwmark") && e.contains("intercept.route_table"), "{e}");
}

#[test]
fn unsupported_mode() {
    let e = fails(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nmode = \"udp\"\n"
    ));
    assert!(e.contains(":7:") && e.contains("udp"), "{e}");
}

#[test]
fn toml_syntax_error() {
    let e = fails("[pools.p\nservers = []\n");
    assert!(e.contains("test.toml:1:"), "{e}");
}

#[test]
fn all_errors_are_reported_together() {
    let e = parse_str(&format!("{POOL}[services.s]\nvip = \"x\"\nports = [0]\npool = \"q\"\n")).unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse_str(&s);
        }

        #[test]
        fn mutated_example_never_panics(pos in 0usize..1200, byte in any::<u8>()) {
            let mut b = EXAMPLE.as_bytes().to_vec();
            let p = pos % b.len();
            b[p] = byte;
            if let Ok(s) = String::from_utf8(b) { let _ = parse_str(&s); }
        }
    }
}

// ---- L7 (HTTP/HTTPS) ----

const L7_CONTRACT: &str = r#"
[pools.cas-web]
balance = "leastconn"
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }                # re-encrypt to the servers; verify = true checks against `ca`
check = { type = "https", path = "/healthz", expect = 200, interval = "2s", timeout = "1s" }

[pools.lync-web]
servers = [ { address = "198.18.2.12:443" } ]
tls = { verify = false }

[services.exchange-https]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [
  { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" },
  { cert = "/etc/portier/tls/lync.pem", key = "/etc/portier/tls/lync.key" },
]
pool = "cas-web"
routes = [ { host = "lync.example.test", pool = "lync-web" } ]
source = "client"
sticky = { by = "cookie", name = "PORTIER", expire = "45m" }
header_timeout = "10s"
idle_timeout = "2m"
response_timeout = "1h"

[services.exchange-http]
vip = "198.19.0.10"
ports = [80]
mode = "redirect"
"#;

#[test]
fn the_l7_contract_loads_exactly_as_written() {
    let c = parse_str(L7_CONTRACT).expect("L7 contract must load");
    let web = &c.pools[0];
    assert_eq!(web.name, "cas-web");
    assert_eq!(web.tls, Some(UpstreamTls { verify: false, ca: None, sni: None }));
    assert_eq!(
        web.check.as_ref().unwrap().kind,
        CheckKind::Https { path: "/healthz".into(), expect: 200, host: None, sni: None }
    );
    let https = c.services.iter().find(|s| s.name == "exchange-https").unwrap();
    assert_eq!(https.mode, Mode::Https);
    assert_eq!(https.certificates.len(), 2);
    assert_eq!(https.certificates[1].key, std::path::PathBuf::from("/etc/portier/tls/lync.key"));
    assert_eq!(https.routes.len(), 1);
    assert_eq!(https.routes[0].host.as_deref(), Some("lync.example.test"));
    assert_eq!(https.routes[0].pool, "lync-web");
    assert_eq!(
        https.sticky,
        Some(StickyConfig {
            by: StickyBy::Cookie { name: "PORTIER".into() },
            expire: Duration::from_secs(2700)
        })
    );
    assert_eq!(
        (https.header_timeout, https.idle_timeout, https.response_timeout),
        (Duration::from_secs(10), Duration::from_secs(120), Duration::from_secs(3600))
    );
    let redirect = c.services.iter().find(|s| s.name == "exchange-http").unwrap();
    assert_eq!((redirect.mode, redirect.pool.as_deref()), (Mode::Redirect, None));
}

#[test]
fn http_defaults() {
    let c = parse_str(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nmode = \"http\"\n"
    ))
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.idle_timeout, DEFAULT_HTTP_IDLE_TIMEOUT);
    assert_eq!(s.header_timeout, DEFAULT_HEADER_TIMEOUT);
    assert_eq!(s.response_timeout, DEFAULT_RESPONSE_TIMEOUT);
    assert_eq!(s.access_log, AccessLog::Text);
}

fn l7_fails(extra: &str, mode: &str) -> String {
    fails(&format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"{mode}\"\n{extra}"))
}

#[test]
fn l7_misconfigurations_are_named() {
    let e = l7_fails("pool = \"p\"\n", "https");
    assert!(e.contains("services.s.certificates") && e.contains("needs certificates"), "{e}");
    let e = l7_fails("pool = \"p\"\ncertificates = [{ cert = \"a\", key = \"b\" }]\n", "http");
    assert!(e.contains("apply to mode https only"), "{e}");
    let e = l7_fails("pool = \"p\"\nroutes = [{ host = \"a.test\", pool = \"p\" }]\n", "tcp");
    assert!(e.contains("routes do not apply to mode tcp"), "{e}");
    let e = l7_fails("pool = \"p\"\nroutes = [{ host = \"a.test\", pool = \"q\" }]\n", "http");
    assert!(e.contains("services.s.routes.pool") && e.contains("no pool named `q`"), "{e}");
    let e = l7_fails("pool = \"p\"\nroutes = [{ pool = \"p\" }]\n", "http");
    assert!(e.contains("a host, a path or both"), "{e}");
    let e =
        l7_fails("pool = \"p\"\nroutes = [{ host = \"a.test\", path = \"/owa\", pool = \"p\" }]\n", "tls");
    assert!(e.contains("routes by host (SNI) only"), "{e}");
    let e = l7_fails("pool = \"p\"\nsticky = { by = \"cookie\" }\n", "tcp");
    assert!(e.contains("needs mode http or https"), "{e}");
    let e = l7_fails("pool = \"p\"\nsticky = { by = \"server-cookie\" }\n", "http");
    assert!(e.contains("server-cookie needs the server's cookie `name`"), "{e}");
    let e = l7_fails("pool = \"p\"\n", "redirect");
    assert!(e.contains("takes no pool"), "{e}");
    let e = l7_fails("", "http");
    assert!(e.contains("mode http needs a `pool`"), "{e}");
    let e = l7_fails("pool = \"p\"\nheader_timeout = \"5s\"\n", "tcp");
    assert!(e.contains("applies to modes http and https only"), "{e}");
    let e = l7_fails("pool = \"p\"\naccess_log = \"xml\"\n", "http");
    assert!(e.contains("not text, json or off"), "{e}");
    let e = l7_fails("pool = \"p\"\nsticky = { by = \"cookie\", name = \"a b\" }\n", "http");
    assert!(e.contains("not a cookie name"), "{e}");
    let e = fails("[pools.p]\nservers = [{ address = \"198.18.2.11:443\" }]\ntls = { verify = true }\n");
    assert!(e.contains("pools.p.tls.ca"), "{e}");
    let e = fails(
        "[pools.p]\nservers = [{ address = \"198.18.2.11:443\" }]\ntls = { verify = false }\n\
         [services.s]\nvip = \"198.19.0.10\"\nports = [443]\npool = \"p\"\n",
    );
    assert!(e.contains("re-encrypts"), "{e}");
}

#[test]
fn global_threads_are_checked() {
    let base = format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\n");
    assert_eq!(parse_str(&base).unwrap().global.threads, None);
    let one = parse_str(&format!("[global]\nthreads = 1\n{base}")).unwrap();
    assert_eq!(one.global.threads, Some(1));
    let e = fails(&format!("[global]\nthreads = 0\n{base}"));
    assert!(
        e.contains("test.toml:2:") && e.contains("global.threads") && e.contains("between 1 and 256"),
        "{e}"
    );
}

#[test]
fn server_reuse_is_shared_by_default_and_for_http_only() {
    let http =
        format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"http\"\npool = \"p\"\n");
    let c = parse_str(&http).expect("valid");
    assert_eq!(c.services[0].server_reuse, ServerReuse::Shared);
    let c = parse_str(&format!("{http}server_reuse = \"private\"\n")).expect("valid");
    assert_eq!(c.services[0].server_reuse, ServerReuse::Private);
    let e = fails(&format!("{http}server_reuse = \"always\"\n"));
    assert!(e.contains(":8:") && e.contains("services.s.server_reuse") && e.contains("`always`"), "{e}");
    let e = fails(&format!(
        "{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\nserver_reuse = \"private\"\n"
    ));
    assert!(e.contains("services.s.server_reuse") && e.contains("http and https only"), "{e}");
}
