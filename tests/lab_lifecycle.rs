//! Lab tests: portier installs and removes its own nftables table and policy routing, survives
//! a crash without duplicates, drains on SIGTERM, and `doctor` tells what is missing.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::*;
use portier::lab::{LabSpec, Netns, PortierProcess};

fn cfg() -> String {
    format!("{}{}", pool("roundrobin", ""), rpc_service(""))
}

fn tables(ns: &Netns) -> usize {
    ns.sh(&["nft", "list", "tables"]).unwrap().lines().filter(|l| l.trim() == "table inet portier").count()
}

fn rules(ns: &Netns, fam: &str) -> usize {
    ns.sh(&["ip", fam, "rule", "show"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("fwmark 0x1 lookup 100"))
        .count()
}

fn local_route(ns: &Netns, fam: &str) -> bool {
    ns.sh(&["ip", fam, "route", "show", "table", "100"]).unwrap().contains("local default dev lo")
}

fn assert_installed_once(ns: &Netns) {
    assert_eq!(tables(ns), 1, "one inet portier table");
    for fam in ["-4", "-6"] {
        assert_eq!(rules(ns, fam), 1, "ip {fam} rule fwmark 0x1 lookup 100 exactly once");
        assert!(local_route(ns, fam), "ip {fam} local default route in table 100");
    }
}

#[test]
fn stop_removes_everything_and_a_crash_leaves_nothing_duplicated() {
    let mut s = setup(LabSpec::default(), &[135], &cfg());
    let ns = &s.lab.balancer;
    assert_installed_once(ns);

    let status = s.portier.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}\n{}", s.portier.log_tail());
    assert_eq!(tables(ns), 0, "table left after stop");
    for fam in ["-4", "-6"] {
        assert_eq!(rules(ns, fam), 0, "ip {fam} rule left after stop");
        assert!(!local_route(ns, fam), "ip {fam} local route left after stop");
    }

    // Crash: SIGKILL leaves the plumbing behind...
    let mut p = PortierProcess::start(ns, exe(), &cfg(), ADMIN).unwrap();
    p.kill().unwrap();
    assert_installed_once(ns);
    // ...and the next start replaces it instead of adding copies.
    let mut p = PortierProcess::start(ns, exe(), &cfg(), ADMIN).unwrap();
    assert_installed_once(ns);
    let g = portier::lab::greet(&s.lab.client, Some(c4(0)), vip4(135), T).unwrap();
    assert_eq!(g.peer.ip(), c4(0));
    assert!(p.stop(Duration::from_secs(10)).unwrap().success());
    assert_eq!(tables(ns), 0);
}

#[test]
fn sigterm_drains_established_connections_and_refuses_new_ones() {
    let cfg = format!("[global]\ndrain_timeout = \"20s\"\n{}", cfg());
    let mut s = setup(LabSpec::default(), &[135], &cfg);
    let mut held = s.connect(c4(0), vip4(135)).unwrap();
    read_greeting(&held);
    let pid = s.portier.pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    // New connections are refused at once (reset), not left to time out, while the rules stay.
    let refused = s.wait_for(Duration::from_secs(5), |s| {
        let t0 = Instant::now();
        let r = match portier::lab::connect(&s.lab.client, Some(c4(0)), vip4(135), Duration::from_secs(2)) {
            Err(e) => Err(e),
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = [0u8; 8];
                std::io::Read::read(&mut stream, &mut b).map(|_| ())
            }
        };
        match r {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(t0.elapsed()),
            other => {
                eprintln!("during drain: {other:?} after {:?}", t0.elapsed());
                None
            }
        }
    });
    let (took, _) = refused.expect("new connections were not reset after SIGTERM");
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    // The established one still works through the whole path.
    echo(&mut held, b"during drain\n");
    assert_installed_once(&s.lab.balancer);
    drop(held);
    let t0 = Instant::now();
    let status = s.portier.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exit should follow the last connection, took {:?}",
        t0.elapsed()
    );
    assert_eq!(tables(&s.lab.balancer), 0);
}

#[test]
fn doctor_is_happy_when_running_and_names_what_is_missing_when_not() {
    let mut s = setup(LabSpec::default(), &[135], &cfg());
    let doctor = |s: &Setup| {
        s.lab
            .balancer
            .command(&exe().to_string_lossy())
            .args(["doctor", "--config"])
            .arg(&s.portier.config_path)
            .output()
            .unwrap()
    };
    let out = doctor(&s);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("tproxy rule to 127.0.0.1:135 present") && text.contains("listener [::1]:135 is up"),
        "{text}"
    );
    assert!(text.contains("its route to clients must be via 198.18.2.1"), "{text}");

    // Keep the config file: stop() does not delete it, Drop does.
    s.portier.stop(Duration::from_secs(10)).unwrap();
    let out = doctor(&s);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("[FAIL] nftables table `inet portier` is missing"), "{text}");
    assert!(
        text.contains("IPv4 rule missing") && text.contains("ip -4 rule add fwmark 0x1 lookup 100"),
        "{text}"
    );
    assert!(text.contains("nothing listens on 127.0.0.1:135"), "{text}");
}

#[test]
fn the_printed_ruleset_is_valid_nftables() {
    let lab = portier::lab::Lab::build(&LabSpec { backends: 0, extra_clients: 0 }).unwrap();
    let out =
        std::process::Command::new(exe()).args(["nft", "--config", "configs/portier.toml"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("tproxy ip to 127.0.0.1:135"), "{text}");
    // The real nft parser and kernel, in check mode, inside a throw-away namespace.
    let mut child = lab
        .balancer
        .command("nft")
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(res.status.success(), "nft -c rejected:\n{}\n{}", String::from_utf8_lossy(&res.stderr), text);
}

#[test]
fn a_second_instance_cannot_take_the_same_listeners() {
    let s = setup(LabSpec::default(), &[135], &cfg());
    let err = PortierProcess::start(&s.lab.balancer, exe(), &cfg(), "127.0.0.1:9091")
        .err()
        .expect("a second portier on the same ports must refuse to start");
    let text = err.to_string();
    assert!(
        text.contains("transparent listener 127.0.0.1:135") || text.contains("Address already in use"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::Other);
    // The running one is unharmed.
    assert_installed_once(&s.lab.balancer);
}
