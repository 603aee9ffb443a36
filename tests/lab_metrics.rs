//! Lab test: /metrics passes `promtool check metrics` and its counters match the traffic.

mod common;

use std::time::Duration;

use common::*;
use portier::lab::LabSpec;

#[test]
fn metrics_are_valid_and_count_the_traffic_sent() {
    let check = "check = { type = \"tcp\", port = 135, interval = \"300ms\", timeout = \"200ms\" }";
    let cfg = format!("{}{}", pool("roundrobin", check), rpc_service(""));
    let s = setup(LabSpec { backends: 2, extra_clients: 9 }, &[135, 59532], &cfg);

    let mut to_server = 0u64;
    let mut to_client = 0u64;
    for i in 0..10 {
        let mut stream = s.connect(c4(i), vip4(if i % 2 == 0 { 135 } else { 59532 })).unwrap();
        let g = read_greeting(&stream);
        let payload = vec![b'x'; 1000 * (i + 1)];
        echo(&mut stream, &payload);
        to_server += payload.len() as u64;
        to_client += (g.to_string().len() + 1 + payload.len()) as u64;
    }
    let want = |m: &str| {
        let b =
            |dir: &str| metric(m, "portier_backend_bytes_total", &[&format!("direction=\"{dir}\"")]) as u64;
        metric(m, "portier_service_connections_total", &["service=\"rpc\""]) == 10.0
            && metric(m, "portier_backend_connections_total", &[]) == 10.0
            && metric(m, "portier_backend_active_connections", &[]) == 0.0
            && b("to_server") == to_server
            && b("to_client") == to_client
    };
    let (text, _) = s
        .wait_for(Duration::from_secs(5), |s| {
            let m = s.metrics();
            want(&m).then_some(m)
        })
        .unwrap_or_else(|| {
            panic!("counters never matched the traffic ({to_server} up, {to_client} down):\n{}", s.metrics())
        });
    assert_eq!(metric(&text, "portier_backend_connections_total", &["server=\"198.18.2.11\""]), 5.0);
    assert_eq!(metric(&text, "portier_backend_up", &["server=\"198.18.2.12\""]), 1.0);
    assert!(text.contains("portier_backend_check_duration_seconds_bucket"));
    assert!(text.contains("portier_backend_connect_errors_total"));

    promtool_check(&text);
}
