//! Lab tests of the configuration reload on layer-4 services, against a real portier process
//! and real nftables: servers and services added, removed and drained while connections
//! stay up; health and stickiness carried across; an invalid file changes nothing and is
//! reported by `portier reload`, the API, the log and the metrics.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use portier::lab::LabSpec;

fn servers(list: &[&str]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{{ address = \"{s}\" }}")).collect();
    format!("[{}]", items.join(", "))
}

fn cfg(servers_list: &str, extra: &str) -> String {
    format!(
        "[global]\ndrain_timeout = \"2s\"\n\n[pools.cas]\nbalance = \"roundrobin\"\nservers = {servers_list}\n\n\
         [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\n{extra}"
    )
}

const WEB: &str = "\n[pools.web]\nservers = [{ address = \"198.18.2.13\" }]\n\n\
    [services.web]\nvip = \"198.19.0.10\"\nports = [8080]\npool = \"web\"\n";

/// Backends that served `n` new connections from distinct clients.
fn served(s: &Setup, dst: std::net::SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| s.greet(c4(i % 4), dst).backend).collect()
}

fn reload(s: &Setup) -> (i32, String) {
    s.portier.reload(exe()).expect("portier reload")
}

#[test]
fn servers_and_services_change_live_and_established_connections_stay() {
    let s = setup(
        LabSpec { backends: 3, extra_clients: 3 },
        &[135, 8080],
        &cfg(&servers(&["198.18.2.11", "198.18.2.12"]), ""),
    );
    assert_eq!(served(&s, vip4(135), 8), BTreeSet::from(["cas01".to_string(), "cas02".to_string()]));
    assert_loaded_table_is_printed(&s.lab, &s.portier.config_path);

    // One connection to each server, held across every reload below.
    let mut held: Vec<_> = (0..2).map(|_| s.connect(c4(0), vip4(135)).unwrap()).collect();
    let held_by: Vec<String> = held.iter().map(|c| read_greeting(c).backend).collect();
    assert_eq!(held_by.iter().collect::<BTreeSet<_>>().len(), 2, "{held_by:?}");

    // cas02 leaves, cas03 joins, a service is added: one reload.
    s.portier.write_config(&cfg(&servers(&["198.18.2.11", "198.18.2.13"]), WEB)).unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 0, "{out}");
    for line in [
        "pool cas: server 198.18.2.13 added",
        "pool cas: server 198.18.2.12 removed",
        "service web added",
        "nftables table replaced",
    ] {
        assert!(out.contains(line), "reload output lacks {line:?}:\n{out}");
    }
    assert_eq!(served(&s, vip4(135), 8), BTreeSet::from(["cas01".to_string(), "cas03".to_string()]));
    assert_eq!(s.greet(c4(1), vip4(8080)).backend, "cas03", "the added service serves at once");
    assert_loaded_table_is_printed(&s.lab, &s.portier.config_path);
    for c in &mut held {
        echo(c, b"still here after the first reload\n");
    }

    // The service leaves again; the L4 connections still run.
    s.portier.write_config(&cfg(&servers(&["198.18.2.11", "198.18.2.13"]), "")).unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("service web removed"), "{out}");
    assert!(s.connect(c4(1), vip4(8080)).is_err(), "a removed service no longer answers");
    assert_loaded_table_is_printed(&s.lab, &s.portier.config_path);
    // The connection to the removed server (cas02) finished its drain time (2 s) and was
    // closed; the one to the kept server runs on.
    std::thread::sleep(Duration::from_millis(2600));
    for (c, by) in held.iter_mut().zip(&held_by) {
        use std::io::{Read, Write};
        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
        if by == "cas02" {
            let _ = c.write_all(b"x\n");
            let mut buf = [0u8; 8];
            assert!(
                matches!(c.read(&mut buf), Ok(0) | Err(_)),
                "a removed server's connection ends after the drain time"
            );
        } else {
            echo(c, b"kept server, kept connection\n");
        }
    }
    assert!(s.portier.log().contains("its server left the configuration"), "{}", s.portier.log_tail());
    // After the drain time /metrics shows what runs: no series of the removed server or
    // service, the kept ones still there.
    let text = s.metrics();
    assert!(!text.contains("server=\"198.18.2.12\"") && !text.contains("service=\"web\""), "{text}");
    assert!(text.contains("portier_backend_up{pool=\"cas\",server=\"198.18.2.13\"} 1"), "{text}");
    promtool_check(&text);
}

#[test]
fn an_invalid_file_changes_nothing_and_is_reported_everywhere() {
    let good = cfg(&servers(&["198.18.2.11", "198.18.2.12"]), "");
    let s = setup(LabSpec { backends: 2, extra_clients: 3 }, &[135], &good);
    let before = served(&s, vip4(135), 4);
    let ts = |s: &Setup| metric(&s.metrics(), "portier_config_last_reload_success_timestamp_seconds", &[]);
    let started_at = ts(&s);
    assert!(started_at > 1.0e9, "the start counts as a load");

    s.portier.write_config(&good.replace("pool = \"cas\"", "pool = \"nope\"")).unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("services.rpc.pool") && out.contains("no pool named `nope`") && out.contains(".toml:"),
        "{out}"
    );
    assert!(out.contains("reload refused"), "{out}");
    // The API says the same (the running file is re-read).
    let (status, body) = s.portier.post("/api/reload", None).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no pool named `nope`"), "{body}");
    // And SIGHUP.
    s.portier.hangup().unwrap();
    let logged = s.wait_for(Duration::from_secs(5), |s| {
        (s.portier.log().matches("reload refused").count() >= 3).then_some(())
    });
    assert!(logged.is_some(), "{}", s.portier.log_tail());
    assert!(s.portier.log().contains("services.rpc.pool"), "the log names the field");
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_config_reload_failures_total", &[]), 3.0, "{m}");
    assert_eq!(metric(&m, "portier_config_last_reload_successful", &[]), 0.0);
    assert_eq!(ts(&s), started_at, "no success since the start");
    // Still serving as before, with the same table.
    assert_eq!(served(&s, vip4(135), 4), before);

    // A good file again: applied, and the metrics say so.
    s.portier.write_config(&good.replace("balance = \"roundrobin\"", "balance = \"leastconn\"")).unwrap();
    let (status, body) = s.portier.post("/api/reload", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pool cas: balance changed"), "{body}");
    let m = s.metrics();
    assert_eq!(metric(&m, "portier_config_last_reload_successful", &[]), 1.0);
    assert!(ts(&s) >= started_at);
    promtool_check(&m);
}

#[test]
fn a_down_server_stays_down_and_sticky_clients_stay_across_reloads() {
    let check = "check = { type = \"tcp\", port = 135, interval = \"300ms\", timeout = \"200ms\", rise = 2, fall = 1 }\n";
    let sticky = "sticky = { by = \"client-ip\", table = \"cas\", expire = \"1h\" }\n";
    let base = cfg(&format!("{}\n{check}", servers(&["198.18.2.11", "198.18.2.12", "198.18.2.13"])), sticky);
    let mut s = setup(LabSpec { backends: 3, extra_clients: 3 }, &[135], &base);
    let sticky_before: Vec<String> = (0..4).map(|i| s.greet(c4(i), vip4(135)).backend).collect();

    s.backends[1].stop();
    let down = s.wait_for(Duration::from_secs(5), |s| {
        s.portier
            .get("/status")
            .ok()
            .filter(|t| t.lines().any(|l| l.contains("198.18.2.12") && l.contains("DOWN")))
    });
    assert!(down.is_some(), "cas02 never went DOWN:\n{}", s.portier.log_tail());

    // Another weight, another check interval, the servers in another order.
    let changed = cfg(
        &format!(
            "[{{ address = \"198.18.2.13\" }}, {{ address = \"198.18.2.12\", weight = 5 }}, {{ address = \"198.18.2.11\", weight = 2 }}]\n{}",
            check.replace("300ms", "400ms")
        ),
        sticky,
    );
    s.portier.write_config(&changed).unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pool cas: check changed"), "{out}");
    let status = s.portier.get("/status").unwrap();
    let line = status.lines().find(|l| l.contains("198.18.2.12")).unwrap();
    assert!(line.contains("DOWN") && line.contains("weight=5"), "right after the reload: {status}");
    // Sticky clients whose server is still up stay on it; none lands on the DOWN one.
    for (i, before) in sticky_before.iter().enumerate() {
        let now = s.greet(c4(i), vip4(135)).backend;
        assert_ne!(now, "cas02");
        if before != "cas02" {
            assert_eq!(&now, before, "client {i} moved across the reload");
        }
    }
    // It comes back by its checks only (rise = 2 at the new interval).
    s.backends[1].start_again().unwrap();
    let up = s.wait_for(Duration::from_secs(5), |s| {
        s.portier
            .get("/status")
            .ok()
            .filter(|t| t.lines().any(|l| l.contains("198.18.2.12") && l.contains(" UP ")))
    });
    assert!(up.is_some(), "cas02 never came back:\n{}", s.portier.log_tail());
}

#[test]
fn a_drained_server_takes_no_new_connections_and_keeps_its_own() {
    let list = servers(&["198.18.2.11", "198.18.2.12"]);
    let s = setup(
        LabSpec { backends: 2, extra_clients: 3 },
        &[135],
        &cfg(&list, "").replace("drain_timeout = \"2s\"", "drain_timeout = \"30s\""),
    );
    let mut held: Vec<_> = (0..2).map(|_| s.connect(c4(0), vip4(135)).unwrap()).collect();
    let by: Vec<String> = held.iter().map(|c| read_greeting(c).backend).collect();
    let drained =
        list.replace("{ address = \"198.18.2.12\" }", "{ address = \"198.18.2.12\", drain = true }");
    s.portier
        .write_config(&cfg(&drained, "").replace("drain_timeout = \"2s\"", "drain_timeout = \"30s\""))
        .unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pool cas: server 198.18.2.12 draining"), "{out}");
    assert!(!out.contains("nftables"), "servers are not in the rules: {out}");
    assert_eq!(served(&s, vip4(135), 6), BTreeSet::from(["cas01".to_string()]));
    let status = s.portier.get("/status").unwrap();
    assert!(
        status.lines().any(|l| l.contains("198.18.2.12") && l.contains("DRAIN") && l.contains("active=1")),
        "{status}"
    );
    for c in &mut held {
        echo(c, b"in flight on a draining server\n");
    }
    assert!(by.contains(&"cas02".to_string()));
}

#[test]
fn a_service_removed_and_added_back_at_once_serves_again() {
    let list = servers(&["198.18.2.11", "198.18.2.12", "198.18.2.13"]);
    let s = setup(LabSpec { backends: 3, extra_clients: 1 }, &[135, 8080], &cfg(&list, WEB));
    assert_eq!(s.greet(c4(0), vip4(8080)).backend, "cas03");
    // Well within the removed listener's closing grace: its socket is taken over, not re-bound.
    for round in 0..3 {
        s.portier.write_config(&cfg(&list, "")).unwrap();
        let (code, out) = reload(&s);
        assert_eq!(code, 0, "round {round}: {out}");
        s.portier.write_config(&cfg(&list, WEB)).unwrap();
        let (code, out) = reload(&s);
        assert_eq!(code, 0, "round {round}: {out}");
        assert_eq!(s.greet(c4(1), vip4(8080)).backend, "cas03", "round {round}");
    }
    // And once closed for good, the port is free for a later service again.
    s.portier.write_config(&cfg(&list, "")).unwrap();
    assert_eq!(reload(&s).0, 0);
    std::thread::sleep(Duration::from_millis(1200));
    s.portier.write_config(&cfg(&list, WEB)).unwrap();
    let (code, out) = reload(&s);
    assert_eq!(code, 0, "{out}");
    assert_eq!(s.greet(c4(1), vip4(8080)).backend, "cas03");
    assert_loaded_table_is_printed(&s.lab, &s.portier.config_path);
}
