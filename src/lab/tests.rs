//! These tests build real namespaces: they need root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN) and iproute2. Without them they fail loudly rather than
//! skip, so a CI misconfiguration cannot hide the whole integration suite.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::*;

const T: Duration = Duration::from_secs(5);

fn build(spec: &LabSpec) -> Lab {
    match Lab::build(spec) {
        Ok(lab) => lab,
        Err(e) => panic!(
            "Lab::build failed (these tests must run as root with iproute2 installed; \
             euid={}): {e}",
            nix::unistd::geteuid()
        ),
    }
}

fn netns_list() -> String {
    let out = std::process::Command::new(netns::ip_bin())
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "ip netns list failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(prefix: &str) {
    let list = netns_list();
    assert!(
        !list.lines().any(|l| l.starts_with(&format!("{prefix}-"))),
        "namespaces of {prefix} still present:\n{list}"
    );
    assert!(
        !std::fs::read_dir(netns::NETNS_DIR)
            .map(|d| d
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{prefix}-"))))
            .unwrap_or(false),
        "{prefix} still has files in {}",
        netns::NETNS_DIR
    );
}

/// Polls `cond` for up to 5 s: for server-side state that settles shortly
/// after the client side is done.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn addresses() {
    assert_eq!(backend_v4(0).to_string(), "198.18.2.11");
    assert_eq!(backend_v4(1).to_string(), "198.18.2.12");
    assert_eq!(backend_v6(0).to_string(), "2001:db8:2::11");
    assert_eq!(backend_v6(1).to_string(), "2001:db8:2::12");
    assert_eq!(backend_v6(MAX_BACKENDS - 1).to_string(), "2001:db8:2::254");
    assert_eq!(client_v4(0), CLIENT_V4);
    assert_eq!(client_v6(0), CLIENT_V6);
    assert_eq!(client_v4(1).to_string(), "198.18.1.3");
    assert_eq!(client_v6(8).to_string(), "2001:db8:1::10");
    assert_eq!(CLIENT_V6.to_string(), "2001:db8:1::2");
    assert_eq!(VIP_V4.to_string(), "198.19.0.10");
    assert_eq!(VIP_V6.to_string(), "2001:db8:19::10");
    assert_eq!(BALANCER_CLIENT_SIDE_V6.to_string(), "2001:db8:1::1");
    assert_eq!(BALANCER_BACKEND_SIDE_V6.to_string(), "2001:db8:2::1");
    // All backend addresses are distinct (no wrap-around in either family).
    let v4: std::collections::HashSet<_> = (0..MAX_BACKENDS).map(backend_v4).collect();
    let v6: std::collections::HashSet<_> = (0..MAX_BACKENDS).map(backend_v6).collect();
    assert_eq!(v4.len(), MAX_BACKENDS);
    assert_eq!(v6.len(), MAX_BACKENDS);
}

#[test]
fn interface_names_fit_ifnamsiz() {
    let short = short_prefix(&format!("pt{}x{}", u32::MAX, u64::MAX));
    for name in [format!("{short}c"), format!("{short}br"), format!("{short}b{}", MAX_BACKENDS - 1)] {
        assert!(name.len() <= 15, "{name:?} is longer than 15 bytes");
    }
}

#[test]
fn lab_pid_parsing() {
    assert_eq!(lab_pid("pt123x4-client"), Some(123));
    assert_eq!(lab_pid("pt123x4-b10"), Some(123));
    assert_eq!(lab_pid("pt123x-b0"), None);
    assert_eq!(lab_pid("ptx4-b0"), None);
    assert_eq!(lab_pid("pt12a3x4-b0"), None);
    assert_eq!(lab_pid("other"), None);
}

#[test]
fn greeting_roundtrip() {
    let line = "backend=b0 peer=198.18.1.2:40000 local=198.18.2.11:7000\n";
    let g = Greeting::parse(line).expect("parses");
    assert_eq!(g.backend, "b0");
    assert_eq!(g.peer, sa(CLIENT_V4, 40000));
    assert_eq!(g.local, sa(backend_v4(0), 7000));
    assert_eq!(format!("{g}\n"), line);

    let line = "backend=b1 peer=[2001:db8:1::2]:1 local=[2001:db8:2::12]:7000";
    let g = Greeting::parse(line).expect("parses v6");
    assert_eq!(g.peer, sa(CLIENT_V6, 1));
    assert_eq!(g.to_string(), line);

    for bad in [
        "",
        "hello",
        "backend= peer=1.2.3.4:1 local=1.2.3.4:2",
        "backend=x peer=1.2.3.4 local=1.2.3.4:2",
        "backend=x peer=1.2.3.4:1 local=1.2.3.4:2 extra",
        "peer=1.2.3.4:1 backend=x local=1.2.3.4:2",
    ] {
        assert_eq!(Greeting::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn direct_greetings_through_forwarding_v4_and_v6() {
    let t0 = Instant::now();
    let lab = build(&LabSpec { backends: 2, extra_clients: 1 });
    eprintln!("Lab::build took {:?}", t0.elapsed());
    let _b0 = EchoBackend::start(&lab.backends[0], "b0", &[7000]).unwrap();
    let _b1 = EchoBackend::start(&lab.backends[1], "b1", &[7000]).unwrap();

    for (dst, src0, src1) in [
        (sa(backend_v4(0), 7000), IpAddr::from(client_v4(0)), IpAddr::from(client_v4(1))),
        (sa(backend_v6(0), 7000), IpAddr::from(client_v6(0)), IpAddr::from(client_v6(1))),
    ] {
        let g = greet(&lab.client, None, dst, T).unwrap();
        assert_eq!(g.backend, "b0");
        assert_eq!(g.peer.ip(), src0, "{g}");
        assert_eq!(g.local, dst);

        let g = greet(&lab.client, Some(src1), dst, T).unwrap();
        assert_eq!(g.backend, "b0");
        assert_eq!(g.peer.ip(), src1, "{g}");
    }
    let g = greet(&lab.client, None, sa(backend_v4(1), 7000), T).unwrap();
    assert_eq!(g.backend, "b1");
    let g = greet(&lab.client, None, sa(backend_v6(1), 7000), T).unwrap();
    assert_eq!(g.backend, "b1");
    assert_eq!(g.peer.ip(), IpAddr::from(CLIENT_V6));

    // The balancer is configured as a forwarding router.
    let sysctl = |k: &str| lab.balancer.sh(&["sysctl", "-n", k]).unwrap().trim().to_owned();
    assert_eq!(sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl("net.ipv4.conf.all.rp_filter"), "0");
    assert_eq!(sysctl("net.ipv4.conf.default.rp_filter"), "0");
    assert!(lab.balancer.name().starts_with(lab.name_prefix()));
    let links = lab.balancer.sh(&["ip", "-o", "link", "show"]).unwrap();
    assert!(links.contains(&lab.bridge()), "{links}");
    assert!(links.contains(&lab.backend_link(1)), "{links}");
    // Interfaces are created directly inside the lab namespaces: nothing of
    // the lab ever appears in the host namespace.
    let host = std::process::Command::new(netns::ip_bin()).args(["-o", "link", "show"]).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(!host.contains(&lab.client_link()), "{host}");

    // The VIP is not assigned: without a proxy the balancer has no route.
    let err = greet(&lab.client, None, sa(VIP_V4, 7000), Duration::from_secs(2)).unwrap_err();
    assert!(err.to_string().contains("198.19.0.10:7000"), "{err}");
}

#[test]
fn echo_backend_stop_and_start_again() {
    let lab = build(&LabSpec { backends: 1, extra_clients: 0 });
    let mut b0 = EchoBackend::start(&lab.backends[0], "b0", &[7000, 7001]).unwrap();
    assert_eq!(b0.ports(), &[7000, 7001]);
    let v4 = sa(backend_v4(0), 7000);
    let v6 = sa(backend_v6(0), 7001);
    assert_eq!(greet(&lab.client, None, v4, T).unwrap().local, v4);
    assert_eq!(greet(&lab.client, None, v6, T).unwrap().local, v6);

    // Hold a connection open across stop().
    let mut held = connect(&lab.client, None, v4, T).unwrap();
    let mut line = [0u8; 256];
    held.set_read_timeout(Some(T)).unwrap();
    let n = held.read(&mut line).unwrap();
    assert!(line[..n].starts_with(b"backend=b0 "));
    // The greet() connections may still be winding down on the server side.
    wait_for("only the held connection open", || b0.open_connections() == 1);
    assert_eq!(b0.connections_served(), 3);

    b0.stop();
    assert!(!b0.is_running());
    for dst in [v4, v6] {
        let err = connect(&lab.client, None, dst, T).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&format!("connect {dst}")), "{err}");
    }
    let t0 = Instant::now();
    held.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    match held.read(&mut line) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("held connection still delivers data: {n} bytes"),
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "EOF took {:?}", t0.elapsed());
    assert_eq!(b0.open_connections(), 0);

    b0.start_again().unwrap();
    assert!(b0.is_running());
    assert_eq!(greet(&lab.client, None, v4, T).unwrap().backend, "b0");
    assert_eq!(greet(&lab.client, None, v6, T).unwrap().backend, "b0");
    assert_eq!(b0.connections_served(), 5);
}

#[test]
fn echo_backend_port_zero_uses_same_port_for_both_families() {
    let lab = build(&LabSpec { backends: 1, extra_clients: 0 });
    let b = EchoBackend::start(&lab.backends[0], "zero", &[0]).unwrap();
    let port = b.ports()[0];
    assert_ne!(port, 0);
    greet(&lab.client, None, sa(backend_v4(0), port), T).unwrap();
    greet(&lab.client, None, sa(backend_v6(0), port), T).unwrap();
}

#[test]
fn drop_removes_namespaces() {
    let lab = build(&LabSpec::default());
    let prefix = lab.name_prefix().to_owned();
    let list = netns_list();
    for ns in lab.namespaces() {
        assert!(list.contains(ns.name()), "{} missing from:\n{list}", ns.name());
    }
    assert_eq!(lab.namespaces().count(), 4);
    drop(lab);
    assert_gone(&prefix);
}

#[test]
fn drop_removes_namespaces_on_panic() {
    let prefix = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = build(&LabSpec::default());
        *prefix.lock().unwrap() = Some(lab.name_prefix().to_owned());
        let _b = EchoBackend::start(&lab.backends[0], "b0", &[7000]).unwrap();
        panic!("test body failed");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap().expect("lab was built");
    assert_gone(&prefix);
}

#[test]
fn failed_build_cleans_up() {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let spec = LabSpec::default();
    let err = Lab::build_with_id(&spec, n, Some("link set nonexistent0 up")).unwrap_err();
    assert!(err.to_string().contains("nonexistent0"), "{err}");
    assert_gone(&format!("pt{}x{n}", std::process::id()));
}

#[test]
fn invalid_spec_is_rejected() {
    let err = Lab::build(&LabSpec { backends: MAX_BACKENDS + 1, extra_clients: 0 }).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn concurrent_labs() {
    let threads: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let lab = build(&LabSpec::default());
                let _b = EchoBackend::start(&lab.backends[1], &format!("t{i}"), &[7000]).unwrap();
                let g = greet(&lab.client, None, sa(backend_v4(1), 7000), T).unwrap();
                assert_eq!(g.backend, format!("t{i}"));
                let g = greet(&lab.client, None, sa(backend_v6(1), 7000), T).unwrap();
                assert_eq!(g.backend, format!("t{i}"));
                lab.name_prefix().to_owned()
            })
        })
        .collect();
    let prefixes: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_ne!(prefixes[0], prefixes[1]);
    for p in &prefixes {
        assert_gone(p);
    }
}

#[test]
fn netns_run_and_sh() {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let ns = Netns::create(&format!("pt{}x{n}-solo", std::process::id())).unwrap();
    // Only loopback exists in a fresh namespace, as seen from a thread inside it.
    let links = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
    assert_eq!(links.lines().count(), 3, "{links}");
    let out = ns.sh(&["ip", "-o", "link", "show"]).unwrap();
    assert!(out.contains("lo:"), "{out}");
    let err = ns.sh(&["ip", "link", "show", "nonexistent0"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ip netns exec") && msg.contains("nonexistent0"), "{msg}");
    let name = ns.name().to_owned();
    drop(ns);
    assert!(!netns::netns_path(&name).exists());
}
