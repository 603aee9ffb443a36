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
    // A table that never held a route does not exist: "FIB table does not exist" is no route.
    ns.sh(&["ip", fam, "route", "show", "table", "100"]).unwrap_or_default().contains("local default dev lo")
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

fn assert_nothing_installed(ns: &Netns, when: &str) {
    assert_eq!(tables(ns), 0, "table left {when}");
    for fam in ["-4", "-6"] {
        assert_eq!(rules(ns, fam), 0, "ip {fam} rule left {when}");
        assert!(!local_route(ns, fam), "ip {fam} local route left {when}");
    }
}

#[test]
fn stray_signals_are_ignored_and_sigquit_stops_cleanly() {
    let mut s = setup(LabSpec::default(), &[135], &cfg());
    use nix::sys::signal::Signal;
    for sig in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGALRM, Signal::SIGPROF, Signal::SIGIO] {
        s.portier.signal(sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.portier.is_running(), "a stray signal killed portier:\n{}", s.portier.log_tail());
    assert!(s.portier.log().contains("SIGUSR1 received and ignored"), "{}", s.portier.log_tail());
    assert_installed_once(&s.lab.balancer);
    let g = portier::lab::greet(&s.lab.client, Some(c4(0)), vip4(135), T).unwrap();
    assert_eq!(g.peer.ip(), c4(0), "still serving, transparently");

    let status = s.portier.signal_and_wait(Signal::SIGQUIT, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "SIGQUIT: {status}\n{}", s.portier.log_tail());
    assert_nothing_installed(&s.lab.balancer, "after SIGQUIT");
}

#[test]
fn cleanup_removes_what_a_killed_portier_left_refuses_while_one_runs_and_is_idempotent() {
    let mut s = setup(LabSpec::default(), &[135], &cfg());
    let ns = &s.lab.balancer;
    let config_path = s.portier.config_path.clone();
    let cleanup = |extra: &[&str]| {
        let out = ns
            .command(&exe().to_string_lossy())
            .args(["cleanup", "--config"])
            .arg(&config_path)
            .args(extra)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    // A running portier keeps its rules.
    let (code, text) = cleanup(&[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a portier is running"), "{text}");
    assert_installed_once(ns);

    // SIGKILL leaves everything; cleanup removes exactly that, and says so.
    s.portier.kill().unwrap();
    assert_installed_once(ns);
    let (code, text) = cleanup(&[]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "removed: nftables table inet portier",
        "removed: 1 ip -4 rule(s) fwmark 0x1 lookup 100",
        "removed: ip -6 local route in table 100",
        "removed: stale control socket",
    ] {
        assert!(text.contains(line), "cleanup output lacks {line:?}:\n{text}");
    }
    assert_nothing_installed(ns, "after cleanup");
    // Again: nothing to do, still success.
    let (code, text) = cleanup(&[]);
    assert_eq!((code, text.trim()), (Some(0), "nothing to remove"));
    // A file broken since the start still lets the defaults be cleaned up.
    let mut p = PortierProcess::start(ns, exe(), &cfg(), ADMIN).unwrap();
    p.kill().unwrap();
    std::fs::write(&config_path, "[pools.cas\n").unwrap();
    let (code, text) = cleanup(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning:") && text.contains("removed: nftables table inet portier"), "{text}");
    assert_nothing_installed(ns, "after cleanup with a broken file");
}

#[test]
fn sighup_at_any_moment_of_start_up_leaves_no_rules_behind() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let lab = portier::lab::Lab::build(&LabSpec::default()).unwrap();
    let ns = &lab.balancer;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portier.toml");
    let control = dir.path().join("control.sock");
    std::fs::write(&path, portier::lab::portier::with_control(&cfg(), &control)).unwrap();
    let mut survived = 0;
    for delay_ms in [0u64, 1, 2, 4, 7, 10, 15, 20, 30, 45, 70, 100, 150, 250] {
        let mut child = ns
            .command(&exe().to_string_lossy())
            .args(["run", "--config"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = kill(pid, Signal::SIGHUP);
        // Either it died of the signal before installing anything, or it reloads and runs on.
        let t0 = Instant::now();
        let mut exited = None;
        while t0.elapsed() < Duration::from_secs(5) {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            if tables(ns) == 1 && std::os::unix::net::UnixStream::connect(&control).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if exited.is_none() {
            survived += 1;
            let _ = kill(pid, Signal::SIGTERM);
            let t0 = Instant::now();
            while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Reaped in every case (a no-op when it exited); a hung one is killed first.
        let hung = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!hung, "no exit after SIGHUP at {delay_ms} ms and SIGTERM");
        assert_nothing_installed(ns, &format!("after SIGHUP {delay_ms} ms into the start ({exited:?})"));
    }
    // The later signals arrive once the handlers are in place: those starts ran on.
    assert!(survived >= 3, "only {survived} of the starts survived their SIGHUP");
}

#[test]
fn accept_failures_at_the_descriptor_limit_are_logged_once_a_second() {
    let s = setup(LabSpec::default(), &[135], &cfg());
    let pid = s.portier.pid().unwrap().to_string();
    // The soft limit only: the hard one could not be raised again.
    let limit = |n: &str| {
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:")])
            .status()
            .expect("prlimit (util-linux)");
        assert!(st.success(), "prlimit --nofile={n}:");
    };
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--noheadings", "--output", "SOFT"])
        .output()
        .unwrap();
    let soft = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Below what is open (0, 1 and 2 are stdin, stdout and stderr): every new descriptor
    // fails, so the connections wait in the listen queue while each accept fails with
    // EMFILE (retried every 50 ms); open descriptors keep working.
    limit("3");
    let held: Vec<_> = (0..20).map(|_| s.connect(c4(0), vip4(135)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(3200));
    limit(&soft);
    let log = s.portier.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("accept failed")).collect();
    assert!(!lines.is_empty(), "no accept failure at the descriptor limit:\n{}", s.portier.log_tail());
    // Two listeners (IPv4 and IPv6) at most one line a second each, over about 3 s.
    assert!(lines.len() <= 8, "{} accept-failure lines in 3 s:\n{}", lines.len(), lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("suppressed=") && !l.contains("suppressed=0")),
        "the lines count what they held back:\n{}",
        lines.join("\n")
    );
    // Descriptors back: the queued connections are served.
    drop(held);
    let g = portier::lab::greet(&s.lab.client, Some(c4(0)), vip4(135), T).unwrap();
    assert_eq!(g.peer.ip(), c4(0));
}

/// Without `threads`, the scheduler follows the CPUs the process may use: pinned to one CPU
/// (taskset, a one-vCPU appliance) it is the current-thread scheduler, else one worker per CPU.
#[test]
fn the_default_scheduler_follows_the_cpus_available() {
    let mut s = setup(LabSpec::default(), &[135], &cfg());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let expected = if cpus == 1 {
        "runtime: current-thread scheduler (1 CPU available)".to_string()
    } else {
        format!("runtime: {cpus} worker threads (CPUs available)")
    };
    assert!(s.portier.log().contains(&expected), "wanted {expected:?} in:\n{}", s.portier.log_tail());
    assert!(s.portier.stop(Duration::from_secs(10)).unwrap().success());

    // A child inherits the affinity of the thread that forks it.
    let ns = &s.lab.balancer;
    let mut p = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut one = nix::sched::CpuSet::new();
                one.set(0).unwrap();
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
                PortierProcess::start(ns, exe(), &cfg(), ADMIN).unwrap()
            })
            .join()
            .unwrap()
    });
    let log = p.log();
    assert!(log.contains("runtime: current-thread scheduler (1 CPU available)"), "pinned to one CPU:\n{log}");
    let g = portier::lab::greet(&s.lab.client, Some(c4(0)), vip4(135), T).unwrap();
    assert_eq!(g.peer.ip(), c4(0), "transparent on the current-thread scheduler");
    assert!(p.stop(Duration::from_secs(10)).unwrap().success());
}
