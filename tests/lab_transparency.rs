//! Lab tests (root, real nftables TPROXY in network namespaces): transparency, stickiness
//! across the RPC ports, spreading, SNAT, half-close, idle timeout, redispatch.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;
use portier::lab::LabSpec;

const PORTS: [u16; 4] = [135, 59532, 59533, 59534];

#[test]
fn rpc_ports_of_one_client_reach_one_backend_which_sees_the_client_v4_and_v6() {
    let cfg = format!(
        "{}{}",
        pool("leastconn", ""),
        rpc_service("sticky = { by = \"client-ip\", table = \"cas\", expire = \"2h\" }")
    );
    let s = setup(LabSpec { backends: 2, extra_clients: 5 }, &PORTS, &cfg);
    let mut used = std::collections::HashSet::new();
    for client in (0..6).map(c4).chain([c6(0), c6(1)]) {
        let vip = |p| if client.is_ipv4() { vip4(p) } else { vip6(p) };
        let first = s.greet(client, vip(135));
        for port in [59532, 59533, 135, 59534] {
            let g = s.greet(client, vip(port));
            assert_eq!(g.backend, first.backend, "client {client} port {port} changed backend");
            assert_eq!(g.peer.ip(), client, "backend saw {} instead of the client {client}", g.peer);
            assert_eq!(g.local.port(), port, "servers without a port get the port the client dialled");
        }
        assert_eq!(first.peer.ip(), client);
        used.insert(first.backend);
    }
    assert_eq!(used.len(), 2, "eight clients under leastconn must use both backends");
}

fn distribution(s: &Setup, clients: usize, hold: bool) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    let mut held = Vec::new();
    for i in 0..clients {
        if hold {
            let stream = s.connect(c4(i), vip4(135)).unwrap();
            let g = read_greeting(&stream);
            assert_eq!(g.peer.ip(), c4(i));
            *count.entry(g.backend).or_insert(0) += 1;
            held.push(stream);
        } else {
            let g = s.greet(c4(i), vip4(135));
            assert_eq!(g.peer.ip(), c4(i));
            *count.entry(g.backend).or_insert(0) += 1;
        }
    }
    count
}

#[test]
fn roundrobin_spreads_many_clients_evenly() {
    let s = setup(
        LabSpec { backends: 2, extra_clients: 19 },
        &PORTS,
        &format!("{}{}", pool("roundrobin", ""), rpc_service("")),
    );
    let d = distribution(&s, 20, false);
    assert_eq!((d["cas01"], d["cas02"]), (10, 10), "{d:?}");
}

#[test]
fn leastconn_balances_held_connections() {
    let s = setup(
        LabSpec { backends: 2, extra_clients: 19 },
        &PORTS,
        &format!("{}{}", pool("leastconn", ""), rpc_service("")),
    );
    let d = distribution(&s, 20, true);
    assert_eq!((d["cas01"], d["cas02"]), (10, 10), "{d:?}");
}

#[test]
fn weights_are_respected() {
    let cfg =
        "[pools.cas]\nservers = [{ address = \"198.18.2.11\", weight = 3 }, { address = \"198.18.2.12\" }]\n\
               [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\n";
    let s = setup(LabSpec { backends: 2, extra_clients: 19 }, &PORTS, cfg);
    let d = distribution(&s, 20, false);
    assert_eq!((d["cas01"], d["cas02"]), (15, 5), "{d:?}");
}

#[test]
fn snat_modes_show_the_balancer_address() {
    let cfg = format!(
        "{}[services.rpc]\nvip = [\"198.19.0.10\", \"2001:db8:19::10\"]\nports = [135]\npool = \"cas\"\nsource = \"balancer\"\n\
         [services.fixed]\nvip = \"198.19.0.10\"\nports = [59532]\npool = \"cas\"\nsource = \"198.18.2.1\"\n",
        pool("roundrobin", "")
    );
    let s = setup(LabSpec::default(), &PORTS, &cfg);
    // SNAT may cross families (the pool mixes IPv4 and IPv6 servers): the backend sees the
    // balancer's address of the family it was reached over.
    let from_balancer =
        |g: &portier::lab::Greeting| g.peer.ip() == if g.local.is_ipv4() { BAL4 } else { BAL6 };
    for _ in 0..4 {
        let g = s.greet(c4(0), vip4(135));
        assert!(from_balancer(&g), "{g:?}");
        let g = s.greet(c6(0), vip6(135));
        assert!(from_balancer(&g), "{g:?}");
        assert_eq!(s.greet(c4(0), vip4(59532)).peer.ip(), BAL4);
    }
}

#[test]
fn half_close_and_large_transfers_pass_intact() {
    let s = setup(LabSpec::default(), &PORTS, &format!("{}{}", pool("roundrobin", ""), rpc_service("")));
    let mut stream = s.connect(c4(0), vip4(59533)).unwrap();
    let g = read_greeting(&stream);
    let greeting_len = g.to_string().len() + 1;
    // 4 MiB both ways, written from a thread while this one reads the echo.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = stream.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&p2).unwrap();
        w.shutdown(Shutdown::Write).unwrap(); // half-close: the echo must still come back
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(greeting_len > 10);
    assert_eq!(back.len(), payload.len(), "echo length after half-close");
    assert!(back == payload, "echoed bytes differ");
}

#[test]
fn idle_connections_are_closed_and_active_ones_survive() {
    let s = setup(
        LabSpec::default(),
        &PORTS,
        &format!("{}{}", pool("roundrobin", ""), rpc_service("idle_timeout = \"1s\"")),
    );
    let mut idle = s.connect(c4(0), vip4(135)).unwrap();
    let mut busy = s.connect(c4(0), vip4(59532)).unwrap();
    read_greeting(&idle);
    read_greeting(&busy);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(300));
        echo(&mut busy, b"keepalive\n");
    }
    idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection must have been closed by its 1 s idle timeout");
    echo(&mut busy, b"still here\n");
}

#[test]
fn a_server_that_does_not_answer_is_skipped_within_the_connect_timeout() {
    // 198.18.2.99 does not exist: connecting to it hangs until connect_timeout.
    let cfg = "[pools.cas]\nservers = [{ address = \"198.18.2.99\" }, { address = \"198.18.2.11\" }]\n\
               [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\nconnect_timeout = \"300ms\"\n";
    let s = setup(LabSpec::default(), &PORTS, cfg);
    for _ in 0..4 {
        let t0 = Instant::now();
        let g = s.greet(c4(0), vip4(135));
        assert_eq!(g.backend, "cas01");
        assert!(t0.elapsed() < Duration::from_secs(3), "redispatch took {:?}", t0.elapsed());
    }
    let m = s.metrics();
    assert!(metric(&m, "portier_backend_connect_errors_total", &["server=\"198.18.2.99\""]) >= 2.0, "{m}");
    assert_eq!(metric(&m, "portier_backend_connections_total", &["server=\"198.18.2.11\""]), 4.0);
}

#[test]
fn source_hash_keeps_each_client_on_one_server_and_spreads_clients() {
    let s = setup(
        LabSpec { backends: 2, extra_clients: 15 },
        &PORTS,
        &format!("{}{}", pool("source-hash", ""), rpc_service("")),
    );
    let mut used = std::collections::HashSet::new();
    for i in 0..16 {
        let first = s.greet(c4(i), vip4(135));
        assert_eq!(first.peer.ip(), c4(i));
        for port in [59532, 59533, 135] {
            assert_eq!(s.greet(c4(i), vip4(port)).backend, first.backend, "client {} moved", c4(i));
        }
        used.insert(first.backend);
    }
    assert_eq!(used.len(), 2, "16 client addresses must hash onto both servers");
}
