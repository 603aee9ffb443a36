//! Lab tests of the connection limits: `max_connections` per service and in all refuse and
//! count, and the data path's share of the descriptor limit runs out before admin and health
//! checks lose theirs.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use portier::lab::{Greeting, LabSpec};

fn config(global: &str, rpc_extra: &str) -> String {
    format!(
        "[global]\n{global}\n[pools.cas]\nservers = [{{ address = \"198.18.2.11\" }}, {{ address = \"198.18.2.12\" }}]\n\
         check = {{ type = \"tcp\", port = 135, interval = \"1s\" }}\n\
         [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\n{rpc_extra}\n\
         [services.other]\nvip = \"198.19.0.10\"\nports = [6000]\npool = \"cas\"\n"
    )
}

/// A connection to VIP:`port` that got its backend's greeting, or None when portier reset it.
fn greeted(s: &Setup, port: u16) -> Option<TcpStream> {
    let stream = s.connect(c4(0), vip4(port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).ok()?;
    Greeting::parse(&line).map(|_| stream)
}

fn wait_for_metric(s: &Setup, name: &str, filters: &[&str], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = s.metrics();
        let v = metric(&m, name, filters);
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name}{filters:?} is {v}, want {want}\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn max_connections_per_service_and_in_all_refuse_and_count() {
    let s = setup(LabSpec::default(), &[135, 6000], &config("max_connections = 6", "max_connections = 4"));
    let mut rpc: Vec<TcpStream> =
        (0..4).map(|i| greeted(&s, 135).unwrap_or_else(|| panic!("rpc {i}"))).collect();
    assert!(greeted(&s, 135).is_none(), "a fifth rpc connection passed max_connections = 4");
    wait_for_metric(
        &s,
        "portier_service_connections_refused_total",
        &["service=\"rpc\"", "reason=\"service_max_connections\""],
        1.0,
    );
    let other: Vec<TcpStream> =
        (0..2).map(|i| greeted(&s, 6000).unwrap_or_else(|| panic!("other {i}"))).collect();
    assert!(greeted(&s, 6000).is_none(), "a seventh connection passed global.max_connections = 6");
    wait_for_metric(
        &s,
        "portier_service_connections_refused_total",
        &["service=\"other\"", "reason=\"max_connections\""],
        1.0,
    );
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_connections_active", &[]), 6.0, "{m}");
    assert_eq!(metric(&m, "portier_connections_limit", &[]), 6.0, "{m}");
    assert_eq!(metric(&m, "portier_service_connections_active", &["service=\"rpc\""]), 4.0, "{m}");
    assert_eq!(metric(&m, "portier_service_connections_limit", &["service=\"rpc\""]), 4.0, "{m}");
    // A refused connection held nothing: one rpc connection closed makes room for one.
    drop(rpc.pop());
    wait_for_metric(&s, "portier_connections_active", &[], 5.0);
    rpc.push(greeted(&s, 135).expect("room again after a close"));
    assert!(greeted(&s, 135).is_none());
    drop((rpc, other));
    wait_for_metric(&s, "portier_connections_active", &[], 0.0);
    wait_for_metric(&s, "portier_service_connections_active", &["service=\"rpc\""], 0.0);
}

#[test]
fn at_the_data_paths_share_of_descriptors_admin_checks_and_sip_keep_working() {
    // A high max_connections: the descriptors are what runs out. SIP on the client side.
    let sip =
        "[sip]\nlisten = [\"udp:198.18.1.1:5060\", \"tcp:198.18.1.1:5060\"]\ndomain = \"pbx.example.test\"\n\
               limits = { connections = 50 }\n";
    let s = setup(
        LabSpec::default(),
        &[135],
        &format!("{}{sip}", config("max_connections = 100000\nreserved_descriptors = 100", "")),
    );
    let pid = s.portier.pid().unwrap().to_string();
    // The soft limit lowered, then a reload works out the budget again: 400 - 100 - 2 servers
    // - 50 SIP connections.
    let st = std::process::Command::new("prlimit").args(["--pid", &pid, "--nofile=400:"]).status().unwrap();
    assert!(st.success());
    let (code, out) = s.portier.reload(exe()).unwrap();
    assert_eq!(code, 0, "{out}");
    wait_for_metric(&s, "portier_data_path_descriptors_limit", &[], 248.0);
    // Each connection holds two descriptors: 124 fit.
    let mut held = Vec::new();
    while let Some(c) = greeted(&s, 135) {
        held.push(c);
        assert!(held.len() <= 124, "more connections than the data path has descriptors for");
    }
    assert_eq!(held.len(), 124, "{}", s.portier.log_tail());
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_data_path_descriptors", &[]), 248.0, "{m}");
    assert!(
        metric(
            &m,
            "portier_service_connections_refused_total",
            &["service=\"rpc\"", "reason=\"descriptors\""]
        ) >= 1.0,
        "{m}"
    );
    // Admin answers (that scrape was one), health checks still pass, and a reload still works.
    std::thread::sleep(Duration::from_secs(3));
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_backend_up", &["server=\"198.18.2.11\""]), 1.0, "{m}");
    assert_eq!(metric(&m, "portier_backend_up", &["server=\"198.18.2.12\""]), 1.0, "{m}");
    let (code, out) = s.portier.reload(exe()).unwrap();
    assert_eq!(code, 0, "reload with the data path full: {out}");
    // SIP answers over UDP and accepts a TCP connection from its own reserve.
    let answer = s
        .lab
        .client
        .run(|| {
            let sock = std::net::UdpSocket::bind("198.18.1.2:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let local = sock.local_addr().unwrap();
            let options = format!(
                "OPTIONS sip:pbx.example.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKfull\r\nMax-Forwards: 70\r\n\
                 From: <sip:probe@pbx.example.test>;tag=p\r\nTo: <sip:pbx.example.test>\r\nCall-ID: full@lab\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            sock.send_to(options.as_bytes(), "198.18.1.1:5060").unwrap();
            let mut buf = [0u8; 4096];
            let n = sock.recv(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .unwrap();
    assert!(answer.starts_with("SIP/2.0 200"), "SIP OPTIONS with the data path full: {answer:?}");
    let sip_tcp =
        portier::lab::connect(&s.lab.client, Some(c4(0)), "198.18.1.1:5060".parse().unwrap(), T).unwrap();
    wait_for_metric(&s, "portier_sip_connections", &[], 1.0);
    drop(sip_tcp);
    drop(held);
    wait_for_metric(&s, "portier_data_path_descriptors", &[], 0.0);
    assert!(greeted(&s, 135).is_some(), "served again");
}
