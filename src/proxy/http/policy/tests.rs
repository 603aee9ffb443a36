//! The policy without sockets: services built from configuration text, connections faked.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::metrics::Metrics;
use crate::proxy::retry::{Refusal, MAX_ATTEMPTS};
use crate::proxy::Drain;
use crate::state::State;

const POOLS: &str =
    "[pools.web]\nservers = [{ address = \"198.18.2.11:80\" }, { address = \"198.18.2.12:80\" }]\n\
     [pools.owa]\nservers = [{ address = \"198.18.2.11:80\" }, { address = \"198.18.2.12:80\" }]\n\
     [pools.ecp]\nservers = [{ address = \"198.18.2.12:80\" }, { address = \"198.18.2.11:80\" }]\n\
     [pools.four]\nservers = [{ address = \"198.18.2.21:80\" }, { address = \"198.18.2.22:80\" }, \
     { address = \"198.18.2.23:80\" }, { address = \"198.18.2.24:80\" }]\n";

/// An http service on pool `pool` with `extra` lines (routes, sticky); its state is kept
/// alive by the service's `Arc`s.
fn service(pool: &str, extra: &str) -> HttpService {
    service_with(POOLS, pool, extra)
}

fn service_with(pools: &str, pool: &str, extra: &str) -> HttpService {
    let text = format!(
        "{pools}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"http\"\npool = \"{pool}\"\n{extra}\n"
    );
    let config = crate::config::parse(&text, Path::new("t.toml")).expect("test config");
    let metrics = Metrics::new();
    let state = State::build(config, &metrics);
    HttpService::build(state.services[0].clone(), &state.config, &metrics, Arc::new(Drain::default()))
        .expect("service")
}

fn client() -> ClientAddr {
    ClientAddr("198.18.1.2:40000".parse().expect("addr"))
}

fn orig() -> OrigDstAddr {
    OrigDstAddr("198.19.0.10:80".parse().expect("addr"))
}

#[test]
fn routes_resolve_to_their_position_and_share_a_pools_settings() {
    let tls = "tls = { verify = false }\n";
    let pools = POOLS
        .replace("[pools.owa]", &format!("{tls}[pools.owa]"))
        .replace("[pools.ecp]", &format!("{tls}[pools.ecp]"));
    let hs = service_with(
        &pools,
        "web",
        "routes = [ { path = \"/owa\", pool = \"owa\" }, { host = \"web.example.test\", pool = \"web\" } ]",
    );
    let t = hs.target(None, "/");
    assert_eq!((t.pool.name.as_str(), t.route), ("web", 0));
    let owa = hs.target(None, "/OWA/auth");
    assert_eq!((owa.pool.name.as_str(), owa.route), ("owa", 1));
    let again = hs.target(Some("web.example.test:80"), "/x");
    assert_eq!((again.pool.name.as_str(), again.route), ("web", 2));
    // One TLS identity per pool: a route to the default pool reuses its server connections,
    // another pool's (maybe differently verified) never.
    let id = |t: &Target<'_>| t.tls.map(|c| c.id());
    assert!(id(&t).is_some() && id(&t) == id(&again), "{:?} {:?}", id(&t), id(&again));
    assert!(id(&owa).is_some() && id(&owa) != id(&t));
}

#[test]
fn requests_are_counted_by_route_position_server_and_class() {
    let hs =
        service("web", "routes = [ { path = \"/owa\", pool = \"owa\" }, { path = \"/w\", pool = \"web\" } ]");
    let (web, owa, web2) = (hs.target(None, "/"), hs.target(None, "/owa"), hs.target(None, "/w"));
    hs.count(&owa, 1, 200);
    hs.count(&owa, 1, 404);
    hs.count(&web, 0, 503);
    // The same pool reached by a route counts on the same labels.
    hs.count(&web2, 0, 204);
    // A status outside 1xx..5xx is clamped rather than lost.
    hs.count(&web, 0, 600);
    let get = |route: usize, server: usize, class: usize| hs.targets[route].counters[server][class].get();
    assert_eq!((get(1, 1, 1), get(1, 1, 3), get(1, 0, 1)), (1, 1, 0));
    assert_eq!((get(0, 0, 4), get(0, 0, 1), get(2, 0, 1)), (2, 1, 1));
    // An index the table lacks is ignored, never a panic.
    hs.count(&owa, 9, 200);
}

#[test]
fn a_portier_cookie_designates_its_server_also_from_another_pool() {
    let hs = service(
        "web",
        "routes = [ { path = \"/ecp\", pool = \"ecp\" } ]\nsticky = { by = \"cookie\", name = \"PORTIER\", expire = \"45m\" }",
    );
    let now = Instant::now();
    let web = hs.target(None, "/");
    let ecp = hs.target(None, "/ecp");
    let v = web.pool.cookie_value(1).to_string();
    let line = format!("a=1; PORTIER={v}");
    let cookies = || std::iter::once(line.as_bytes());
    assert_eq!(hs.hint(&web, cookies, now), Some(1));
    // Set by pool web for 198.18.2.12, which is ecp's server 0.
    assert_eq!(hs.hint(&ecp, cookies, now), Some(0));
    assert_eq!(hs.hint(&web, || std::iter::once(&b"PORTIER=forged"[..]), now), None);
    assert_eq!(hs.hint(&web, std::iter::empty, now), None);
    let set = hs.sticky_cookie(&web, 1).map(|c| c.to_string());
    assert_eq!(set.as_deref(), Some(format!("PORTIER={v}; Path=/; Max-Age=2700; HttpOnly").as_str()));
}

#[test]
fn the_cookie_of_an_https_service_is_secure() {
    let c = StickyCookie { name: "PORTIER", value: "0123", max_age: 60, secure: true };
    assert_eq!(c.to_string(), "PORTIER=0123; Path=/; Max-Age=60; HttpOnly; Secure");
}

#[test]
fn a_learnt_server_cookie_designates_the_server_that_set_it() {
    let hs = service("web", "sticky = { by = \"server-cookie\", name = \"MS-WSMAN\" }");
    let now = Instant::now();
    let t = hs.target(None, "/");
    assert_eq!(hs.sticky_cookie(&t, 0).map(|c| c.to_string()), None, "portier sets no cookie of its own");
    let server = &t.pool.servers[1];
    let set: [&[u8]; 2] = [b"other=1; Path=/", b"MS-WSMAN=abc; Path=/; Secure"];
    hs.learn_cookies(|| set.iter().copied(), server);
    assert_eq!(hs.hint(&t, || std::iter::once(&b"x=2; MS-WSMAN=abc"[..]), now), Some(1));
    assert_eq!(hs.hint(&t, || std::iter::once(&b"MS-WSMAN=unknown"[..]), now), None);
    assert_eq!(hs.hint(&t, || std::iter::once(&b"other=1"[..]), now), None);
}

#[test]
fn client_ip_stickiness_gives_no_cookie_hint() {
    let hs = service("web", "sticky = { by = \"client-ip\", table = \"t\" }");
    let t = hs.target(None, "/");
    let called = std::cell::Cell::new(false);
    let cookies = || {
        called.set(true);
        std::iter::empty()
    };
    assert_eq!(hs.hint(&t, cookies, Instant::now()), None);
    assert!(!called.get(), "cookies are not looked at");
    assert!(hs.sticky_cookie(&t, 0).is_none());
}

#[test]
fn generated_answers_are_plain() {
    let cases = [
        (
            Answer::NoServer,
            503,
            "Service Unavailable",
            "503 service unavailable: no server of pool web is up\n",
        ),
        (
            Answer::NoneAccepted,
            502,
            "Bad Gateway",
            "502 bad gateway: no server of pool web accepted the connection\n",
        ),
        (
            Answer::ServerFailed,
            502,
            "Bad Gateway",
            "502 bad gateway: the server of pool web failed to answer\n",
        ),
        (
            Answer::Timeout,
            504,
            "Gateway Timeout",
            "504 gateway timeout: the server of pool web did not answer in time\n",
        ),
    ];
    for (a, status, reason, text) in cases {
        assert_eq!((a.status(), a.reason(), a.text("web").as_str()), (status, reason, text));
    }
    assert_eq!(Answer::from(Refusal::NoServer), Answer::NoServer);
    assert_eq!(Answer::from(Refusal::NoneAccepted), Answer::NoneAccepted);
}

/// A fake way to servers: refuses the listed addresses, records every attempt.
struct Fake {
    refuse: Vec<SocketAddr>,
    calls: Vec<SocketAddr>,
}

impl Connect for Fake {
    type Conn = SocketAddr;
    async fn connect(&mut self, key: &UpstreamKey) -> Result<SocketAddr, UpstreamError> {
        self.calls.push(key.server);
        if self.refuse.contains(&key.server) {
            let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            return Err(UpstreamError::Connect(key.server, e));
        }
        Ok(key.server)
    }
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn addrs(pool: &Pool) -> Vec<SocketAddr> {
    pool.servers.iter().map(|s| s.target(80)).collect()
}

#[test]
fn a_refused_connect_tries_another_server() {
    // Whichever is chosen first refuses: the other one serves.
    for first in [0, 1] {
        let hs = service("web", "");
        let t = hs.target(None, "/");
        let all = addrs(t.pool);
        let mut fake = Fake { refuse: vec![all[first]], calls: Vec::new() };
        let c =
            run(hs.connect(&t, client(), orig(), Some(first), Instant::now(), &mut fake)).expect("served");
        assert_eq!((c.index, c.conn, c.key.server), (1 - first, all[1 - first], all[1 - first]));
        assert_eq!(fake.calls, [all[first], all[1 - first]]);
        assert_eq!(c.server.metrics.connect_errors.get(), 0);
        assert_eq!(t.pool.servers[first].metrics.connect_errors.get(), 1);
        assert_eq!(hs.svc.metrics.no_server.get(), 0);
    }
}

#[test]
fn all_refusing_is_502_counted_once_and_bounded() {
    for pool in ["web", "four"] {
        let hs = service(pool, "");
        let t = hs.target(None, "/");
        let mut fake = Fake { refuse: addrs(t.pool), calls: Vec::new() };
        let r = run(hs.connect(&t, client(), orig(), None, Instant::now(), &mut fake));
        assert_eq!(r.err(), Some(Answer::NoneAccepted), "{pool}");
        assert_eq!(fake.calls.len(), t.pool.servers.len().min(MAX_ATTEMPTS), "{pool}");
        assert_eq!(hs.svc.metrics.no_server.get(), 1, "{pool}: one refused request");
        let errors: u64 = t.pool.servers.iter().map(|s| s.metrics.connect_errors.get()).sum();
        assert_eq!(errors, fake.calls.len() as u64, "{pool}: one connect error per attempt");
    }
}

#[test]
fn no_usable_server_is_503_without_an_attempt() {
    let hs = service("web", "");
    let t = hs.target(None, "/");
    for s in &t.pool.servers {
        s.set_up(false);
    }
    let mut fake = Fake { refuse: Vec::new(), calls: Vec::new() };
    let r = run(hs.connect(&t, client(), orig(), Some(0), Instant::now(), &mut fake));
    assert_eq!(r.err(), Some(Answer::NoServer));
    assert!(fake.calls.is_empty());
    assert_eq!(hs.svc.metrics.no_server.get(), 1);
    // A transparent connection keeps the client's family: an IPv6 client has no server here.
    t.pool.servers[0].set_up(true);
    let v6 = ClientAddr("[2001:db8::2]:40000".parse().expect("addr"));
    let r = run(hs.connect(&t, v6, orig(), None, Instant::now(), &mut fake));
    assert_eq!(r.err(), Some(Answer::NoServer));
    assert_eq!(hs.svc.metrics.no_server.get(), 2);
}

#[test]
fn the_access_log_copies_nothing_when_off() {
    let hs = service("web", "access_log = \"off\"");
    let called = std::cell::Cell::new(false);
    let facts = hs.facts(Instant::now(), client(), || {
        called.set(true);
        (None, &b"GET"[..], "/")
    });
    assert!(facts.logged.is_none() && !called.get());
    let hs = service("web", "access_log = \"json\"");
    let facts = hs.facts(Instant::now() - Duration::from_millis(5), client(), || {
        (Some("mail.example.test"), &b"GET"[..], "/owa?x=1")
    });
    let l = facts.logged.as_deref().expect("logged");
    assert_eq!(
        (l.host.as_str(), l.method.as_str(), l.path.as_str()),
        ("mail.example.test", "GET", "/owa?x=1")
    );
    hs.finish(&facts, End { status: 200, server: None, bytes_in: 0, bytes_out: 2, complete: true });
}

#[test]
fn a_server_behind_snat_is_told_the_client() {
    assert!(service("web", "").client_fields(client()).is_none(), "transparent: the server sees the client");
    let hs = service("web", "source = \"balancer\"");
    let f = hs.client_fields(client()).expect("snat");
    assert_eq!((f.ip.to_string().as_str(), f.proto), ("198.18.1.2", "http"));
    assert_eq!(f.forwarded().to_string(), "for=198.18.1.2;proto=http");
    let v6 = ClientFields { ip: "2001:db8::2".parse().expect("ip"), proto: "https" };
    assert_eq!(v6.forwarded().to_string(), "for=\"[2001:db8::2]\";proto=https");
}
