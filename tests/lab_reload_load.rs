//! Lab test: 20 reloads during 30 s of load. wrk on an HTTP service, h2load on an HTTPS
//! service and an iperf3 stream on an L4 service run through a real portier while the file
//! changes weights, adds and removes servers, adds and removes a service, changes a check and
//! renews the certificate, through SIGHUP, `portier reload` and `POST /api/reload` in turn,
//! while a SIP call is up between two registered phones and a third phone is registered (and
//! an extension comes and goes). Nothing may fail: no socket error, no non-2xx answer, the
//! stream unbroken, the call up until its caller hangs up, the registrations kept.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nginx::{start, L7};
use common::sip::{register_args, scenario, Call, Sipp, SippRuns, DOMAIN};
use common::*;
use portier::lab::LabSpec;

const RUN: Duration = Duration::from_secs(30);
const RELOADS: usize = 20;
/// The caller holds the call this long after the answer: past the last reload.
const CALL_HOLD_MS: u64 = 30_000;
/// Where portier's B2BUA listens: the balancer's client-side address.
const PBX: &str = "198.18.1.1:5060";
/// The phones live in the client namespace (its extra addresses): Alice calls, Bob answers,
/// Carol is registered only.
const ALICE: usize = 2;
const BOB: usize = 3;

/// The configuration of reload number `i` (0 = the start).
fn config(i: usize) -> String {
    let w = 1 + i % 3;
    let third = if i % 4 == 1 || i % 4 == 2 { ", { address = \"198.18.2.13:80\" }" } else { "" };
    let third_tls = if i % 4 == 2 { ", { address = \"198.18.2.13:443\" }" } else { "" };
    let interval = if i % 2 == 0 { "1s" } else { "700ms" };
    let dave = if i % 4 == 3 { "2004 = { name = \"Dave\", secret = \"s3cret-2004\" }" } else { "" };
    let extra = if i % 5 == 3 {
        "[services.extra]\nvip = \"198.19.0.10\"\nports = [8081]\nmode = \"http\"\npool = \"web\"\n"
    } else {
        ""
    };
    format!(
        r#"[global]
drain_timeout = "5s"

[pools.web]
balance = "roundrobin"
servers = [ {{ address = "198.18.2.11:80", weight = {w} }}, {{ address = "198.18.2.12:80" }}{third} ]
check = {{ type = "http", path = "/healthz", interval = "{interval}", timeout = "500ms" }}

[pools.webs]
servers = [ {{ address = "198.18.2.11:443" }}, {{ address = "198.18.2.12:443" }}{third_tls} ]
tls = {{ verify = false }}

[pools.stream]
servers = [ {{ address = "198.18.2.11" }} ]

[services.web]
vip = "198.19.0.10"
ports = [80]
mode = "http"
pool = "web"
access_log = "off"

[services.mail]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ {{ cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" }} ]
pool = "webs"
access_log = "off"

[services.stream]
vip = "198.19.0.10"
ports = [5201]
pool = "stream"

[sip]
listen = ["udp:198.18.1.1:5060"]
domain = "{DOMAIN}"

[sip.extensions]
2001 = {{ name = "Alice", secret = "s3cret-2001" }}
2002 = {{ name = "Bob", secret = "s3cret-2002" }}
2003 = {{ name = "Carol", secret = "s3cret-2003" }}
{dave}

[[sip.dialplan]]
match = "2XXX"
to = "extension"

{extra}"#
    )
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn load tool")
}

fn finish(name: &str, child: Child) -> String {
    let out = child.wait_with_output().expect("load tool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed:\n{text}");
    text
}

/// The first number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Registers `ext` (secret `s3cret-EXT`) from `ip:port` for an hour.
fn register(runs: &SippRuns, l: &L7, ext: &str, ip: &str, port: u16) {
    let a = register_args(PBX, ip, port, ext, &format!("s3cret-{ext}"));
    let mut s = runs.sipp(&l.lab.client, &format!("register-{ext}"), &as_strs(&a), Duration::from_secs(8));
    let code = s.wait();
    assert_eq!(code, 0, "register {ext} exited {code}\n{}", runs.reports());
}

/// Alice calls Bob and holds the call for [`CALL_HOLD_MS`]; returns (caller, callee).
fn long_call(runs: &SippRuns, l: &L7) -> (Sipp, Sipp) {
    let (alice, bob) = (c4(ALICE).to_string(), c4(BOB).to_string());
    let limit = Duration::from_secs(90);
    let uas = ["-sf", &scenario("uas.xml"), "-i", &bob, "-p", "5070", "-s", "2002", "-m", "1"];
    let callee = runs.sipp(&l.lab.client, "uas-2002", &uas, limit);
    std::thread::sleep(Duration::from_millis(300));
    let call = Call {
        scenario_file: "call.xml",
        ext: "2001",
        secret: "s3cret-2001",
        ip: &alice,
        port: 5070,
        number: "2002",
        calls: 1,
        hold_ms: CALL_HOLD_MS,
    };
    let caller = runs.sipp(&l.lab.client, "call-2001-to-2002", &as_strs(&call.args(PBX)), limit);
    (caller, callee)
}

fn metric_of(l: &L7, name: &str, filters: &[&str]) -> f64 {
    metric(&l.portier.get("/metrics").unwrap_or_default(), name, filters)
}

fn wait_metric(l: &L7, runs: &SippRuns, name: &str, want: f64, limit: Duration) {
    let t0 = Instant::now();
    while metric_of(l, name, &[]) != want {
        assert!(
            t0.elapsed() < limit,
            "{name} is {} after {limit:?}, want {want}\n{}\n{}",
            metric_of(l, name, &[]),
            l.portier.log_tail(),
            runs.reports()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn renew_certificate(l: &L7, i: usize) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["mail.example.test".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("mail.example.test renewal {i}"));
    let cert = p.self_signed(&key).unwrap();
    // Key first, certificate second, each replaced whole (rename), as an ACME client does.
    for (file, text) in [("mail.key", key.serialize_pem()), ("mail.pem", cert.pem())] {
        let tmp = l.certs.path(&format!("{file}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, l.certs.path(file)).unwrap();
    }
}

#[test]
fn twenty_reloads_under_load_drop_nothing() {
    let l = start(LabSpec { backends: 3, extra_clients: 3 }, &[], &config(0));
    let runs = SippRuns::new();
    register(&runs, &l, "2002", &c4(BOB).to_string(), 5070);
    register(&runs, &l, "2003", &c4(ALICE).to_string(), 5072);
    wait_metric(&l, &runs, "portier_sip_registrations", 2.0, Duration::from_secs(5));
    let (mut caller, mut callee) = long_call(&runs, &l);
    wait_metric(&l, &runs, "portier_sip_calls_active", 1.0, Duration::from_secs(10));

    let iperf_server: Vec<Child> = l.lab.backends[..1]
        .iter()
        .map(|ns| spawn(ns.command("iperf3").args(["-s", "-1", "-p", "5201"])))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let secs = RUN.as_secs().to_string();
    let wrk = spawn(l.lab.client.command("wrk").args([
        "-t1",
        "-c8",
        "-d",
        &format!("{secs}s"),
        "http://198.19.0.10/",
    ]));
    let h2load = spawn(l.lab.client.command("h2load").args([
        "-c",
        "4",
        "-m",
        "4",
        "-D",
        &secs,
        "--connect-to=198.19.0.10:443",
        "https://mail.example.test/",
    ]));
    let iperf = spawn(l.lab.client.command("iperf3").args([
        "-c",
        "198.19.0.10",
        "-p",
        "5201",
        "-t",
        &(RUN.as_secs() - 2).to_string(),
        "-b",
        "50M",
    ]));

    let t0 = Instant::now();
    let mut applied = 0;
    for i in 1..=RELOADS {
        std::thread::sleep(
            (t0 + RUN.mul_f64(i as f64 / (RELOADS as f64 + 2.0))).saturating_duration_since(Instant::now()),
        );
        if i == 10 {
            renew_certificate(&l, i);
        }
        l.portier.write_config(&l.certs.rewrite(&config(i))).unwrap();
        match i % 3 {
            0 => {
                let (code, out) = l.portier.reload(exe()).unwrap();
                assert_eq!(code, 0, "reload {i}: {out}");
            }
            1 => {
                let (status, body) = l.portier.post("/api/reload", None).unwrap();
                assert_eq!(status, 200, "reload {i}: {body}");
            }
            _ => {
                let before = l.portier.log().matches("configuration reloaded").count();
                l.portier.hangup().unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while l.portier.log().matches("configuration reloaded").count() == before {
                    assert!(Instant::now() < deadline, "SIGHUP {i} not applied:\n{}", l.portier.log_tail());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        applied += 1;
        // After every reload (a service added or removed, or not), the loaded table is what
        // `portier nft` prints for the new file.
        assert_loaded_table_is_printed(&l.lab, &l.portier.config_path);
        if i % 5 == 3 {
            let (_, e) = l.get(c4(1), &["http://198.19.0.10:8081/"]);
            assert!(e.backend.starts_with("cas"), "the added service answers");
        }
    }
    assert_eq!(applied, RELOADS);
    // The call and both registrations outlived every reload.
    let active = metric_of(&l, "portier_sip_calls_active", &[]);
    let registered = metric_of(&l, "portier_sip_registrations", &[]);
    assert!(
        active == 1.0 && registered == 2.0,
        "after the reloads: {active} calls up (want 1), {registered} registrations (want 2)\n{}\n{}",
        l.portier.log_tail(),
        runs.reports()
    );

    let wrk = finish("wrk", wrk);
    let h2 = finish("h2load", h2load);
    let iperf = finish("iperf3", iperf);
    for s in iperf_server {
        let _ = finish("iperf3 -s", s);
    }
    let log = l.portier.log();
    assert_eq!(log.matches("configuration reloaded").count(), RELOADS, "{}", l.portier.log_tail());
    assert!(!log.contains("reload refused"), "{}", l.portier.log_tail());

    // wrk prints these lines only when something went wrong.
    assert!(!wrk.contains("Socket errors") && !wrk.contains("Non-2xx"), "wrk saw errors:\n{wrk}");
    let wrk_requests: u64 = wrk
        .lines()
        .find_map(|l| l.trim().split_once(" requests in").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    assert!(wrk_requests > 1000, "wrk made too few requests to mean anything:\n{wrk}");
    let ok2 = number_after(&h2, "status codes:").unwrap_or(0);
    assert!(h2.contains(" 0 failed, 0 errored"), "h2load saw failures:\n{h2}");
    assert!(
        h2.contains(&format!("status codes: {ok2} 2xx, 0 3xx, 0 4xx, 0 5xx")) && ok2 > 100,
        "h2load:\n{h2}"
    );
    assert!(iperf.contains("iperf Done"), "iperf3 did not finish cleanly:\n{iperf}");

    // The call ended when its caller hung up, answered, both sides content.
    let (cc, ce) = (caller.wait(), callee.wait());
    assert!(cc == 0 && ce == 0, "caller sipp exited {cc}, callee {ce} (want 0, 0)\n{}", runs.reports());
    let answered = metric_of(&l, "portier_sip_calls_total", &["outcome=\"answered\""]);
    assert_eq!(answered, 1.0, "one answered call in the metrics\n{}", l.portier.log_tail());

    // The renewed certificate serves new handshakes.
    let out = l.curl(c4(0), &["-v", "-k", "https://mail.example.test/"]);
    assert!(out.subject().unwrap_or_default().contains("renewal 10"), "{}", out.stderr);
    eprintln!("wrk:\n{wrk}\nh2load:\n{h2}");
}
