//! Lab tests of the L7 proxy with real clients and servers (root, namespaces): curl and h2load
//! against portier terminating TLS with certificates chosen by SNI, nginx backends reached
//! over re-encrypted HTTP/1.1 from the client's own address; host and path routes; cookie,
//! server-cookie and shared client-IP stickiness; the 301-to-https redirect service; uploads,
//! HEAD, chunked responses, IPv6, SNAT with X-Forwarded-For, failover of a cookie's server.

mod common;

use std::collections::BTreeMap;

use common::nginx::{count, start, L7};
use common::*;
use portier::lab::LabSpec;

/// The configuration contract of the L7 issue, as written there (certificate paths are
/// rewritten to the test's own).
const CONTRACT: &str = r#"
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

const CLIENT: &str = "198.18.1.2";

#[test]
fn https_terminated_by_sni_over_h1_and_h2_reencrypted_to_backends_that_see_the_client() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    for name in ["mail.example.test", "lync.example.test"] {
        let url = format!("https://{name}/owa/");
        for (flag, version) in [("--http1.1", "HTTP/1.1 200"), ("--http2", "HTTP/2 200")] {
            let (out, e) = l.get(c4(0), &["-v", flag, &url]);
            assert_eq!(out.subject(), Some(format!("CN={name}").as_str()), "SNI {name}:\n{}", out.stderr);
            assert!(out.stderr.contains("SSL certificate verify ok"), "{}", out.stderr);
            assert!(out.stderr.contains(&format!("< {version}")), "{flag}:\n{}", out.stderr);
            assert_eq!(e.proto, "https", "the backend must be reached over TLS: {e:?}");
            assert_eq!(e.peer, CLIENT, "the backend must see the client's address: {e:?}");
            assert_eq!(e.host, name);
            assert_eq!(e.xff, "", "transparent: no X-Forwarded-For");
        }
    }
    // A name without a certificate of its own gets the first (default) one, which curl refuses.
    let out = l.curl(
        c4(0),
        &["-v", "--resolve", "other.example.test:443:198.19.0.10", "https://other.example.test/"],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("mail.example.test"), "{}", out.stderr);

    // h2load: 100 requests over 4 HTTP/2 connections, 10 streams at a time, every one 2xx.
    let out = l
        .lab
        .client
        .command("timeout")
        .args(["20", "h2load", "-n", "100", "-c", "4", "-m", "10", "--connect-to=198.19.0.10:443"])
        .arg("https://mail.example.test/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(text.contains("requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed"), "{text}");
    assert!(text.contains("status codes: 100 2xx"), "{text}");
    let served: usize = l
        .nginx
        .iter()
        .map(|n| n.access_log().lines().filter(|l| l.contains("\"GET / HTTP/1.1\"")).count())
        .sum();
    assert_eq!(served, 100, "the backends must have served h2load's 100 requests over HTTP/1.1");
    // 4 curl requests and h2load's 100, all answered 2xx by a server; no stream left open.
    let m = l.portier.get("/metrics").unwrap();
    let answered = metric(&m, "portier_http_requests_total", &["service=\"exchange-https\"", "code=\"2xx\""]);
    assert_eq!(answered, 104.0, "{m}");
    assert_eq!(metric(&m, "portier_http2_active_streams", &["service=\"exchange-https\""]), 0.0, "{m}");
    // 100 streams at once per connection, announced in SETTINGS, as HAProxy and nginx.
    let out = l
        .lab
        .client
        .command("timeout")
        .args(["10", "nghttp", "-nv", "--no-verify-peer"])
        .arg("https://198.19.0.10/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]"), "{text}");
}

#[test]
fn host_routes_send_lync_to_its_own_pool() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    let lync = count((0..10).map(|_| l.backend(c4(0), &["https://lync.example.test/"])));
    assert_eq!(lync, BTreeMap::from([("cas02".to_string(), 10)]), "lync-web holds only 198.18.2.12");
    let mail = count((0..10).map(|_| l.backend(c4(0), &["https://MAIL.example.test/"])));
    assert_eq!(mail.len(), 2, "cas-web without a cookie spreads: {mail:?}");
}

#[test]
fn path_routes_and_verified_reencryption() {
    let cfg = r#"
[pools.web]
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }
[pools.owa]
servers = [ { address = "198.18.2.11:443" } ]
tls = { verify = true, ca = "/etc/portier/tls/ca.pem", sni = "cas.example.test" }
[pools.wrong-name]
servers = [ { address = "198.18.2.12:443" } ]
tls = { verify = true, ca = "/etc/portier/tls/ca.pem", sni = "other.example.test" }
[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "web"
routes = [ { path = "/owa", pool = "owa" }, { path = "/wrong/", pool = "wrong-name" } ]
"#;
    let l = start(LabSpec { backends: 2, extra_clients: 1 }, &[], cfg);
    for path in ["/owa", "/owa/", "/OWA/auth/logon.aspx", "/owa?x=1"] {
        let url = format!("https://mail.example.test{path}");
        let got = count((0..4).map(|_| l.backend(c4(0), &[url.as_str()])));
        assert_eq!(got, BTreeMap::from([("cas01".to_string(), 4)]), "{path} must go to pool owa");
    }
    for path in ["/", "/owax", "/ecp/owa"] {
        let url = format!("https://mail.example.test{path}");
        let got = count((0..4).map(|_| l.backend(c4(0), &[url.as_str()])));
        assert_eq!(got.len(), 2, "{path} must use the default pool: {got:?}");
    }
    // Verification is real: a server certificate not valid for the configured name fails.
    // (A new client connection: see the ignored test below for a reused one.)
    let out =
        l.curl(c4(1), &["-s", "-o", "/dev/null", "-w", "%{http_code}", "https://mail.example.test/wrong/x"]);
    assert_eq!(out.stdout, "502", "{out:?}\n{}", l.portier.log_tail());
}

#[test]
fn the_portier_cookie_keeps_a_client_on_one_server_across_100_connections() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar").display().to_string();
    let (first, e) = l.get(c4(0), &["-v", "-c", &jar, "https://mail.example.test/owa/"]);
    let set = first.response_headers("set-cookie");
    assert_eq!(set.len(), 1, "{}", first.stderr);
    assert!(set[0].starts_with("PORTIER="), "{set:?}");
    for attr in ["; Path=/", "; Max-Age=2700", "; HttpOnly", "; Secure"] {
        assert!(set[0].contains(attr), "{attr} missing in {set:?}");
    }
    let mut seen = Vec::new();
    for _ in 0..100 {
        // Each request is a new curl process, so a new TCP and TLS connection.
        let (_, e) = l.get(c4(0), &["-b", &jar, "-c", &jar, "https://mail.example.test/owa/"]);
        assert!(e.cookie.contains("PORTIER="), "{e:?}");
        seen.push(e.backend);
    }
    let got = count(seen);
    assert_eq!(got, BTreeMap::from([(e.backend.clone(), 100)]), "all 100 must stay on {}", e.backend);
    // HTTP/2 honours it too.
    assert_eq!(l.backend(c4(0), &["--http2", "-b", &jar, "https://mail.example.test/"]), e.backend);
    // Without the cookie, the same client spreads.
    let spread = count((0..10).map(|_| l.backend(c4(0), &["https://mail.example.test/owa/"])));
    assert_eq!(spread.len(), 2, "{spread:?}");
    // A cookie naming no server of the pool is ignored rather than failing.
    let (_, e) = l.get(c4(0), &["-b", "PORTIER=bogus", "https://mail.example.test/"]);
    assert!(e.backend.starts_with("cas0"));
}

#[test]
fn a_server_cookie_routes_to_the_server_that_set_it_and_passes_through_unmodified() {
    let cfg = r#"
[pools.lync-web]
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }
[services.lync-https]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/lync.pem", key = "/etc/portier/tls/lync.key" } ]
pool = "lync-web"
sticky = { by = "server-cookie", name = "MS-WSMAN" }
"#;
    let l = start(LabSpec::default(), &[], cfg);
    // Learn one cookie per server (roundrobin alternates without a cookie).
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..4 {
        let out = l.curl(c4(0), &["-v", "https://lync.example.test/wsman"]);
        assert!(out.ok, "{}", out.stderr);
        let backend =
            out.stdout.trim().strip_prefix("backend=").unwrap().strip_suffix(" wsman").unwrap().to_string();
        let set = out.response_headers("set-cookie");
        assert_eq!(set.len(), 1, "exactly the server's cookie, no portier cookie:\n{}", out.stderr);
        let value = set[0].strip_prefix("MS-WSMAN=").and_then(|v| v.strip_suffix("; Path=/"));
        let value = value.unwrap_or_else(|| panic!("the server's Set-Cookie must pass unmodified: {set:?}"));
        assert!(value.starts_with(&format!("{backend}-")), "{value}");
        cookies.insert(backend, value.to_string());
    }
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for (backend, value) in &cookies {
        let c = format!("MS-WSMAN={value}");
        for i in 0..20 {
            let http = if i % 2 == 0 { "--http1.1" } else { "--http2" };
            let (_, e) = l.get(c4(0), &[http, "-b", &c, "https://lync.example.test/"]);
            assert_eq!(&e.backend, backend, "cookie {c} was set by {backend}");
            assert_eq!(e.cookie, c, "the cookie reaches the server unmodified");
        }
    }
    let spread = count((0..6).map(|_| l.backend(c4(0), &["https://lync.example.test/"])));
    assert_eq!(spread.len(), 2, "without a cookie requests spread: {spread:?}");
}

#[test]
fn a_client_ip_table_shared_by_tcp_and_https_keeps_each_client_on_one_server() {
    let cfg = r#"
[pools.cas]
servers = [ { address = "198.18.2.11" }, { address = "198.18.2.12" } ]
[pools.cas-web]
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }
[services.rpc]
vip = "198.19.0.10"
ports = [135]
pool = "cas"
sticky = { by = "client-ip", table = "cas", expire = "1h" }
[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "cas-web"
sticky = { by = "client-ip", table = "cas", expire = "1h" }
"#;
    let l = start(LabSpec { backends: 2, extra_clients: 7 }, &[135], cfg);
    let mut first_choice = Vec::new();
    for i in 0..8 {
        let client = c4(i);
        let tcp = |l: &L7| {
            let g = l.greet(client, 135);
            assert_eq!(g.peer.ip(), client);
            g.backend
        };
        let web = |l: &L7| {
            let (_, e) = l.get(client, &["https://mail.example.test/"]);
            assert_eq!(e.peer, client.to_string());
            e.backend
        };
        // Half the clients start with RPC, the other half with HTTPS.
        let first = if i % 2 == 0 { tcp(&l) } else { web(&l) };
        for round in 0..3 {
            assert_eq!(web(&l), first, "client {client} https round {round}");
            assert_eq!(tcp(&l), first, "client {client} rpc round {round}");
        }
        first_choice.push(first);
    }
    let spread = count(first_choice);
    assert_eq!(spread.len(), 2, "different clients spread: {spread:?}");
}

#[test]
fn port_80_redirects_to_https_keeping_host_and_path() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    let url = "http://mail.example.test/owa/auth/logon.aspx?replaceCurrent=1&url=%2Fowa";
    let out = l.curl(c4(0), &["-v", url]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("< HTTP/1.1 301"), "{}", out.stderr);
    assert_eq!(
        out.response_headers("location"),
        vec!["https://mail.example.test/owa/auth/logon.aspx?replaceCurrent=1&url=%2Fowa".to_string()]
    );
    // A port in Host is dropped (the redirect goes to 443), the host's case is kept.
    let out = l.curl(c4(0), &["-v", "-H", "Host: Lync.example.test:80", "http://lync.example.test/meet/x"]);
    assert_eq!(
        out.response_headers("location"),
        vec!["https://Lync.example.test/meet/x".to_string()],
        "{}",
        out.stderr
    );
    // Following it lands on a backend over TLS.
    let (out, e) = l.get(c4(0), &["-L", "-w", "\n%{url_effective} %{num_redirects}", url]);
    assert_eq!(e.proto, "https");
    assert!(out.stdout.ends_with(" 1"), "{}", out.stdout);
    // portier answered the three redirects itself.
    let m = l.portier.get("/metrics").unwrap();
    assert_eq!(
        metric(&m, "portier_http_responses_generated_total", &["service=\"exchange-http\""]),
        3.0,
        "{m}"
    );
}

#[test]
fn http2_cookie_crumbs_reach_an_http1_server_as_one_cookie_line() {
    // RFC 9113 8.2.3: HTTP/2 clients may send each cookie as its own field (browsers do);
    // forwarded to HTTP/1.1 they must be joined into one `Cookie:` line with "; ". IIS joins
    // repeated header lines with ", ", which would corrupt the cookies.
    let cfg = r#"
[pools.raw]
servers = [ { address = "198.18.2.11:8080" } ]
[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "raw"
sticky = { by = "cookie", name = "PORTIER" }
"#;
    let l = start(LabSpec::default(), &[], cfg);
    let _raw = common::nginx::HeadEcho::start(&l.lab.backends[0], 8080);
    for http in ["--http2", "--http1.1"] {
        let out = l.curl(
            c4(0),
            &[http, "-H", "Cookie: a=1", "-H", "Cookie: PORTIER=x; b=2", "https://mail.example.test/c"],
        );
        assert!(out.ok, "{}\n{}", out.stderr, l.portier.log_tail());
        let cookies: Vec<&str> =
            out.stdout.lines().filter(|l| l.to_ascii_lowercase().starts_with("cookie:")).collect();
        if http == "--http2" {
            assert_eq!(cookies, vec!["cookie: a=1; PORTIER=x; b=2"], "{}", out.stdout);
        } else {
            // HTTP/1.1 is passed as the client sent it.
            assert_eq!(cookies.len(), 2, "{}", out.stdout);
        }
    }
}

#[test]
fn the_portier_cookie_holds_across_path_routes_to_pools_of_the_same_servers() {
    // OWA and ECP in pools of their own (e.g. for their own checks), on the same CAS servers:
    // a user going back and forth between them must stay on one server, although each
    // pool's responses set the one PORTIER cookie (Path=/) to their own value.
    let cfg = r#"
[pools.web]
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }
[pools.owa]
servers = [ { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" } ]
tls = { verify = false }
[pools.ecp]
servers = [ { address = "198.18.2.12:443" }, { address = "198.18.2.11:443" } ]
tls = { verify = false }
[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "web"
routes = [ { path = "/owa", pool = "owa" }, { path = "/ecp", pool = "ecp" } ]
sticky = { by = "cookie", name = "PORTIER" }
"#;
    let l = start(LabSpec::default(), &[], cfg);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let jar = dir.path().join(format!("jar{round}")).display().to_string();
        let first = l.backend(c4(0), &["-c", &jar, "https://mail.example.test/owa/"]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            for path in ["/", "/ecp/", "/owa/", "/ecp/?rfr=owa", "/"] {
                let url = format!("https://mail.example.test{path}");
                seen.push(l.backend(c4(0), &["-b", &jar, "-c", &jar, url.as_str()]));
            }
        }
        assert_eq!(count(seen), BTreeMap::from([(first.clone(), 30)]), "round {round}: all on {first}");
    }
}

#[test]
fn a_verifying_pool_never_reuses_a_connection_another_pool_opened_unverified() {
    let cfg = r#"
[pools.web]
servers = [ { address = "198.18.2.12:443" } ]
tls = { verify = false }
[pools.strict]
servers = [ { address = "198.18.2.12:443" } ]
tls = { verify = true, ca = "/etc/portier/tls/ca.pem", sni = "other.example.test" }
[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "web"
routes = [ { path = "/strict", pool = "strict" } ]
"#;
    let l = start(LabSpec::default(), &[], cfg);
    // Three requests on one client connection (curl reuses it).
    let out = l.curl(
        c4(0),
        &[
            "-v",
            "-w",
            "%{http_code}\n",
            "https://mail.example.test/strict",
            "-o",
            "/dev/null",
            "https://mail.example.test/",
            "-o",
            "/dev/null",
            "https://mail.example.test/strict",
            "-o",
            "/dev/null",
        ],
    );
    assert!(out.stderr.contains("Re-using existing connection"), "{}", out.stderr);
    let codes: Vec<&str> = out.stdout.lines().collect();
    // A fresh server connection is verified (the name does not match); the unverified one
    // the default pool then opened must not serve the strict pool.
    assert_eq!(codes, ["502", "200", "502"], "{}", l.portier.log_tail());
}

#[test]
fn head_and_uploads_with_expect_100_continue_pass_over_h1_and_h2() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 3 << 20]).unwrap();
    let at_body = format!("@{}", body.display());
    for http in ["--http1.1", "--http2"] {
        let t0 = std::time::Instant::now();
        // Over HTTP/1.1 curl sends `Expect: 100-continue` above 1 MiB and waits (here up to
        // 10 s) for the 100 before sending the body.
        let out = l.curl(
            c4(0),
            &[
                http,
                "-v",
                "--expect100-timeout",
                "10",
                "--data-binary",
                &at_body,
                "https://mail.example.test/upload",
            ],
        );
        assert!(out.ok, "{http}: {}\n{}", out.stderr, l.portier.log_tail());
        assert!(out.stdout.starts_with("backend=cas0"), "{}", out.stdout);
        assert!(out.stdout.ends_with(" uploaded=3145728\n"), "{http}: {}", out.stdout);
        if http == "--http1.1" {
            assert!(out.stderr.contains("> Expect: 100-continue"), "{}", out.stderr);
            assert!(out.stderr.contains("< HTTP/1.1 100 Continue"), "{}", out.stderr);
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{http}: {:?}\n{}",
            t0.elapsed(),
            out.stderr
        );
        let out = l.curl(c4(0), &[http, "-sS", "-I", "https://mail.example.test/"]);
        assert!(out.ok, "{}", out.stderr);
        let head = out.stdout.to_ascii_lowercase();
        assert!(head.contains(" 200") && head.contains("content-length: "), "{http} HEAD: {}", out.stdout);
    }
}

#[test]
fn when_the_cookie_server_dies_requests_move_at_once_and_the_cookie_follows() {
    let mut l = start(LabSpec::default(), &[], CONTRACT);
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar").display().to_string();
    let first = l.backend(c4(0), &["-c", &jar, "https://mail.example.test/"]);
    for _ in 0..3 {
        assert_eq!(l.backend(c4(0), &["-b", &jar, "-c", &jar, "https://mail.example.test/"]), first);
    }
    let dead = l.nginx.iter().position(|n| n.name == first).unwrap();
    drop(l.nginx.remove(dead));
    // Before the health check notices: the refused connection is retried on the other server.
    let t0 = std::time::Instant::now();
    let (out, e) = l.get(c4(0), &["-v", "-b", &jar, "-c", &jar, "https://mail.example.test/"]);
    assert_ne!(e.backend, first);
    assert!(t0.elapsed() < std::time::Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(out.response_headers("set-cookie").len(), 1, "the cookie now names the new server");
    let other = e.backend;
    for _ in 0..5 {
        assert_eq!(l.backend(c4(0), &["-b", &jar, "-c", &jar, "https://mail.example.test/"]), other);
    }
}

#[test]
fn ipv6_clients_are_terminated_redirected_and_seen_by_the_backends() {
    let cfg = r#"
[pools.web]
servers = [
  { address = "198.18.2.11:443" }, { address = "198.18.2.12:443" },
  { address = "[2001:db8:2::11]:443" }, { address = "[2001:db8:2::12]:443" },
]
tls = { verify = false }
[services.web]
vip = ["198.19.0.10", "2001:db8:19::10"]
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "web"
sticky = { by = "cookie", name = "PORTIER" }
[services.redirect]
vip = ["198.19.0.10", "2001:db8:19::10"]
ports = [80]
mode = "redirect"
"#;
    let l = start(LabSpec::default(), &[], cfg);
    let to6 = "mail.example.test:443:[2001:db8:19::10]:443";
    for http in ["--http1.1", "--http2"] {
        let (out, e) = l.get(c6(0), &["-v", http, "--connect-to", to6, "https://mail.example.test/"]);
        assert!(
            out.stderr.contains("Connected to 2001:db8:19::10") || out.stderr.contains("(2001:db8:19::10)"),
            "{}",
            out.stderr
        );
        assert_eq!(e.peer, "2001:db8:1::2", "{e:?}");
        assert_eq!(e.proto, "https");
    }
    let out = l.curl(c6(0), &["-g", "-v", "http://[2001:db8:19::10]/owa/x?y=1"]);
    assert_eq!(
        out.response_headers("location"),
        vec!["https://[2001:db8:19::10]/owa/x?y=1".to_string()],
        "{}",
        out.stderr
    );
}

#[test]
fn chunked_compressed_responses_stream_to_h1_and_h2_clients() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    for http in ["--http1.1", "--http2"] {
        let (out, e) = l.get(c4(0), &["-v", http, "--compressed", "https://mail.example.test/gz"]);
        assert_eq!(e.proto, "https");
        assert_eq!(out.response_headers("content-encoding"), vec!["gzip".to_string()], "{}", out.stderr);
        assert!(out.response_headers("content-length").is_empty(), "{}", out.stderr);
        if http == "--http1.1" {
            assert_eq!(
                out.response_headers("transfer-encoding"),
                vec!["chunked".to_string()],
                "{}",
                out.stderr
            );
        } else {
            assert!(out.response_headers("transfer-encoding").is_empty(), "{}", out.stderr);
        }
    }
}

#[test]
fn a_fully_qualified_host_with_its_trailing_dot_takes_the_same_route() {
    let l = start(LabSpec::default(), &[], CONTRACT);
    let got = count((0..6).map(|_| {
        let (out, e) = l.get(
            c4(0),
            &["-v", "--resolve", "lync.example.test.:443:198.19.0.10", "https://lync.example.test./"],
        );
        assert_eq!(out.subject(), Some("CN=lync.example.test"), "{}", out.stderr);
        e.backend
    }));
    assert_eq!(got, BTreeMap::from([("cas02".to_string(), 6)]), "lync.example.test. is lync.example.test");
}

#[test]
fn snat_https_tells_the_server_the_client_in_x_forwarded_for() {
    let cfg = CONTRACT.replace("source = \"client\"", "source = \"balancer\"");
    let l = start(LabSpec::default(), &[], &cfg);
    for http in ["--http1.1", "--http2"] {
        let (_, e) = l.get(c4(0), &[http, "-H", "X-Forwarded-Proto: http", "https://mail.example.test/"]);
        assert_eq!(e.peer, "198.18.2.1", "SNAT: {e:?}");
        assert_eq!(e.xff, "198.18.1.2", "{e:?}");
        assert_eq!(e.proto, "https");
        // The client's own X-Forwarded-Proto is replaced, not kept in front of portier's.
        assert_eq!(e.xfp, "https", "{http}: {e:?}");
    }
}

/// SYN retransmissions the client namespace's kernel counted so far.
fn syn_retransmits(l: &L7) -> u64 {
    let out = l.lab.client.sh(&["nstat", "-az", "TcpExtTCPSynRetrans"]).expect("nstat (iproute2)");
    out.lines()
        .find_map(|line| line.strip_prefix("TcpExtTCPSynRetrans"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExtTCPSynRetrans in nstat output:\n{out}"))
}

/// A client that reuses its source port while the previous connection still sits in
/// TIME_WAIT on the balancer (portier closed first: `Connection: close`) gets through at once.
/// Without the SYN exclusion in the `socket transparent` rule, the SYN is delivered to that
/// TIME_WAIT socket, the kernel finds no listener on the VIP and drops it, and the client
/// retransmits its SYN a second later (clients behind one NAT reuse ports all the time).
#[test]
fn a_client_port_reused_during_time_wait_connects_without_a_syn_retry() {
    use std::io::{Read, Write};
    let l = start(LabSpec::default(), &[], CONTRACT);
    let before = syn_retransmits(&l);
    let port = format!("{}:40000", c4(0));
    for i in 0..5 {
        if i > 0 {
            let tw = l.lab.balancer.sh(&["ss", "-tanH", "state", "time-wait"]).unwrap_or_default();
            assert!(
                tw.contains(&port),
                "request {i}: portier closed first, its TIME_WAIT must be there: {tw}"
            );
        }
        // Our own client: it reads to EOF before closing, so portier always closes first.
        let mut s = l
            .lab
            .client
            .run(|| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&std::net::SocketAddr::new(c4(0), 40000).into())?;
                s.connect_timeout(&vip4(80).into(), std::time::Duration::from_secs(5))?;
                Ok::<std::net::TcpStream, std::io::Error>(s.into())
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: connect from port 40000: {e}"));
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /owa HTTP/1.1\r\nHost: mail.example.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 301"), "request {i}: {answer}");
    }
    let retries = syn_retransmits(&l) - before;
    assert_eq!(retries, 0, "SYN retransmissions while reusing port 40000\n{}", l.portier.log_tail());
}

/// Raw bytes to VIP:80 from the first client address; what came back until the close.
fn raw_http(l: &L7, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = portier::lab::connect(&l.lab.client, Some(c4(0)), vip4(80), T).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn two_hosts_or_a_host_that_disagrees_with_the_target_are_refused_with_400() {
    let cfg = r#"
[pools.mail]
servers = [ { address = "198.18.2.11:80" } ]
[pools.lync]
servers = [ { address = "198.18.2.12:80" } ]
[services.web]
vip = "198.19.0.10"
ports = [80]
mode = "http"
pool = "mail"
routes = [ { host = "lync.example.test", pool = "lync" } ]
"#;
    let l = start(LabSpec { backends: 2, extra_clients: 0 }, &[], cfg);
    for (what, head) in [
        ("two Host fields", "GET / HTTP/1.1\r\nHost: mail.example.test\r\nHost: lync.example.test\r\n\r\n"),
        (
            "the same Host twice",
            "GET / HTTP/1.1\r\nHost: lync.example.test\r\nHost: lync.example.test\r\n\r\n",
        ),
        (
            "an absolute target for another host",
            "GET http://lync.example.test/ HTTP/1.1\r\nHost: mail.example.test\r\n\r\n",
        ),
    ] {
        // Connection: close, so the answer ends with the connection.
        let head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
        let out = raw_http(&l, head.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        assert!(!out.contains("backend="), "{what} reached a server: {out}");
    }
    // Agreeing: routed by the target, and the server sees that name.
    let out = raw_http(
        &l,
        b"GET http://lync.example.test/ HTTP/1.1\r\nHost: LYNC.example.test\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("backend=cas02"), "{out}");
    assert!(out.contains("host=lync.example.test"), "{out}");
    let m = l.portier.get("/metrics").unwrap();
    assert_eq!(metric(&m, "portier_http_responses_generated_total", &["status=\"400\""]), 3.0, "{m}");
}

#[test]
fn connect_is_refused_a_missing_host_is_400_and_te_never_reaches_the_server() {
    let cfg = "[pools.mail]\nservers = [ { address = \"198.18.2.11:80\" } ]\n[services.web]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"http\"\npool = \"mail\"\n";
    let l = start(LabSpec { backends: 1, extra_clients: 0 }, &[], cfg);
    let out = raw_http(
        &l,
        b"CONNECT mail.example.test:443 HTTP/1.1\r\nHost: mail.example.test:443\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 501") && !out.contains("backend="), "CONNECT: {out}");
    let out = raw_http(&l, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400") && !out.contains("backend="), "HTTP/1.1 without Host: {out}");
    // HTTP/1.0 may leave Host out: routed to the default pool.
    let out = raw_http(&l, b"GET / HTTP/1.0\r\n\r\n");
    assert!(out.contains("backend=cas01"), "HTTP/1.0 without Host: {out}");
    // TE is hop-by-hop: the fast path (origin form), and hyper's (HTTP/1.0, absolute form).
    for head in [
        "GET /te HTTP/1.1\r\nHost: mail.example.test\r\nTE: trailers, gzip\r\nConnection: TE, close\r\n\r\n",
        "GET /te HTTP/1.0\r\nHost: mail.example.test\r\nTE: gzip\r\nConnection: TE\r\n\r\n",
        "GET http://mail.example.test/te HTTP/1.1\r\nHost: mail.example.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    ] {
        let out = raw_http(&l, head.as_bytes());
        assert!(out.contains("backend=cas01 te=[]"), "{head:?}: {out}");
    }
    let m = l.portier.get("/metrics").unwrap();
    for status in ["501", "400"] {
        let want = [format!("status=\"{status}\"")];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(metric(&m, "portier_http_responses_generated_total", &want), 1.0, "{status}: {m}");
    }
}

#[test]
fn equal_content_lengths_reach_the_server_as_one() {
    // nginx answers a repeated Content-Length with 400 itself: forwarded twice, it would.
    let cfg = "[pools.mail]\nservers = [ { address = \"198.18.2.11:80\" } ]\n[services.web]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"http\"\npool = \"mail\"\n";
    let l = start(LabSpec { backends: 1, extra_clients: 0 }, &[], cfg);
    // Small (the fast path) and larger than it reads whole (handed to hyper).
    for len in [5usize, 100_000] {
        let body = "x".repeat(len);
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: mail.example.test\r\nContent-Length: {len}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let out = raw_http(&l, format!("{head}{body}").as_bytes());
        assert!(out.starts_with("HTTP/1.1 200"), "{len} bytes: {}", &out[..out.len().min(400)]);
        assert!(out.contains(&format!("uploaded={len}")), "{len} bytes: {out}");
    }
}
