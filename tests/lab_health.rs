//! Lab tests: health checks take a dead server out within fall x interval (+ one interval),
//! sticky clients move, the server rejoins after rise checks; all down is refused cleanly.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use portier::lab::LabSpec;

const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 3;
/// Scheduling slack on a loaded 2-core CI machine; the bound being tested is the rest.
const SLACK: Duration = Duration::from_millis(700);

fn up(s: &Setup, server: &str) -> f64 {
    metric(&s.metrics(), "portier_backend_up", &[&format!("server=\"{server}\"")])
}

#[test]
fn a_killed_backend_is_taken_out_and_rejoins_after_rise_checks() {
    let check = format!(
        "check = {{ type = \"tcp\", port = 135, interval = \"{INTERVAL_MS}ms\", timeout = \"100ms\", rise = {RISE}, fall = {FALL} }}"
    );
    let cfg = format!(
        "{}{}",
        pool("leastconn", &check),
        rpc_service("sticky = { by = \"client-ip\", table = \"cas\" }")
    );
    let mut s = setup(LabSpec { backends: 2, extra_clients: 6 }, &[135, 59532, 59533, 59534], &cfg);
    let sticky_client = c4(0);
    let first = s.greet(sticky_client, vip4(135));
    let (victim, victim_ip, survivor) =
        if first.backend == "cas01" { (0, "198.18.2.11", "cas02") } else { (1, "198.18.2.12", "cas01") };

    s.backends[victim].stop();
    let killed = Instant::now();
    // Meanwhile the sticky client is redispatched to the survivor on connect failure.
    assert_eq!(s.greet(sticky_client, vip4(59532)).backend, survivor);
    let (_, _) = s
        .wait_for(Duration::from_secs(10), |s| (up(s, victim_ip) == 0.0).then_some(()))
        .expect("never marked down");
    let took = killed.elapsed();
    let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1)) + SLACK;
    assert!(took <= bound, "marked down after {took:?}, bound {bound:?}");

    // Down means not tried any more: the connect-error counter of the victim stays put.
    let errors = |s: &Setup| {
        metric(&s.metrics(), "portier_backend_connect_errors_total", &[&format!("server=\"{victim_ip}\"")])
    };
    let before = errors(&s);
    for i in 0..6 {
        assert_eq!(s.greet(c4(i), vip4(135)).backend, survivor, "client {i} after the kill");
    }
    assert_eq!(errors(&s), before, "a down server was still tried");
    let m = s.metrics();
    assert!(
        metric(&m, "portier_backend_check_failures_total", &[&format!("server=\"{victim_ip}\"")])
            >= FALL as f64
    );
    assert!(metric(&m, "portier_backend_check_duration_seconds_count", &[]) > 0.0);

    s.backends[victim].start_again().unwrap();
    let revived = Instant::now();
    s.wait_for(Duration::from_secs(10), |s| (up(s, victim_ip) == 1.0).then_some(()))
        .expect("never came back");
    let took = revived.elapsed();
    let bound = Duration::from_millis(INTERVAL_MS * (RISE + 1)) + SLACK;
    assert!(took <= bound, "back up after {took:?}, bound {bound:?}");
    // New clients reach it again (leastconn with nothing held alternates).
    let names: Vec<String> = (1..7).map(|i| s.greet(c4(i), vip4(59533)).backend).collect();
    assert!(names.iter().any(|n| n == &first.backend), "{names:?}");
}

#[test]
fn all_servers_down_is_a_clean_fast_refusal_and_counted() {
    let check = "check = { type = \"tcp\", port = 135, interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let cfg = format!("{}{}", pool("roundrobin", check), rpc_service(""));
    let mut s = setup(LabSpec::default(), &[135], &cfg);
    assert_eq!(s.greet(c4(0), vip4(135)).peer.ip(), c4(0));
    for b in &mut s.backends {
        b.stop();
    }
    s.wait_for(Duration::from_secs(5), |s| {
        (up(s, "198.18.2.11") == 0.0 && up(s, "198.18.2.12") == 0.0).then_some(())
    })
    .expect("both down");
    for _ in 0..3 {
        let t0 = Instant::now();
        // The handshake completes at the transparent listener, then portier resets it; the
        // reset may even arrive before connect() returns.
        match s.connect(c4(0), vip4(135)) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = [0u8; 16];
                let r = stream.read(&mut buf);
                assert!(matches!(r, Ok(0) | Err(_)), "got data from nowhere: {r:?}");
                if let Err(e) = &r {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "refusal took {:?}", t0.elapsed());
    }
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_service_no_server_total", &["service=\"rpc\""]), 3.0, "{m}");
    assert!(s.portier.log().contains("no server available"), "the refusal must be logged");
}
