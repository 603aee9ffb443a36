//! Lab tests of the SIP B2BUA (issue 4, "Must be shown by tests") with real peers: sipp
//! (Debian's sip-tester) as phones, the ISP and the Exchange UM emulator, baresip as a real
//! softphone, and a small Rust UDP client for digest corner cases sipp cannot express.
//!
//! Topology and helpers: tests/common/sip.rs. Scenarios: tests/data/sipp/*.xml (the
//! `sipp_scenarios_agree_with_each_other` test runs them against each other without portier).

mod common;

use std::time::Duration;

use common::sip::*;
use portier::sip::digest::{parse_digest, respond};

const S: fn(u64) -> Duration = Duration::from_secs;

fn calls(outcome: &str) -> String {
    format!("outcome=\"{outcome}\"")
}

/// sipp arguments for 2001 (at `phone`:5070, with its credentials) calling 2002 through
/// `target` with scenario `sc`, then `extra`.
fn alice_calls_bob(sc: &str, target: &str, phone: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-sf",
        &scenario(sc),
        target,
        "-i",
        phone,
        "-p",
        "5070",
        "-s",
        "2001",
        "-au",
        "2001",
        "-ap",
        "s3cret-2001",
        "-auth_uri",
        "2002@pbx.example.test",
        "-set",
        "domain",
        DOMAIN,
        "-set",
        "callee",
        "2002",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// The basic office: 2001 and 2002 dialling each other.
fn office(sip_extra: &str, extensions: &[&str]) -> SipTest {
    SipTest::start(&pbx_config(sip_extra, extensions, "", &[("2XXX", "extension", 0)]))
}

/// Sanity check of the harness itself: every scenario against its counterpart in sipp, without
/// portier, so a failure of the tests below is portier's and not the XML's.
#[test]
fn sipp_scenarios_agree_with_each_other() {
    check_tools();
    let lab = SipLab::build();
    let logs = tempfile::tempdir().unwrap();
    let runs = std::cell::RefCell::new(Vec::new());
    let dir = logs.path().to_path_buf();
    let run = |label: &str, args: &[&str]| {
        let n = runs.borrow().len();
        let d = dir.join(format!("{n}-{label}"));
        std::fs::create_dir_all(&d).unwrap();
        let p = |f: &str| d.join(f).to_string_lossy().into_owned();
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for x in [
            "-nostdin",
            "-timeout",
            "10s",
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            &p("messages.log"),
            "-trace_err",
            "-error_file",
            &p("errors.log"),
        ] {
            a.push(x.to_string());
        }
        let child = lab
            .phones
            .command("sipp")
            .args(&a)
            .current_dir(&d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sipp (sip-tester)");
        runs.borrow_mut().push((label.to_string(), d));
        child
    };
    let finish = |mut c: std::process::Child, label: &str| {
        let t0 = std::time::Instant::now();
        let code = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            if t0.elapsed() > S(15) {
                let _ = c.kill();
                let _ = c.wait();
                break -9;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if code != 0 {
            let all: String = runs
                .borrow()
                .iter()
                .map(|(l, d)| {
                    format!(
                        "== {l}\n{}\n{}\n",
                        std::fs::read_to_string(d.join("errors.log")).unwrap_or_default(),
                        std::fs::read_to_string(d.join("messages.log")).unwrap_or_default()
                    )
                })
                .collect();
            panic!("sipp {label} exited {code}\n{all}");
        }
    };
    let wait_bound = |ip: &str, port: &str, proto: &str| {
        for _ in 0..250 {
            let out = lab.phones.sh(&["ss", &format!("-Hln{proto}"), &format!("src {ip}:{port}")]).unwrap();
            if !out.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sipp did not bind {ip}:{port}");
    };
    let (fake_pbx, phone, callee) = (PHONE3, PHONE1, PHONE2);
    let target = format!("{fake_pbx}:5060");
    // Callers (call*.xml) against a fake PBX that challenges and then answers as `mode` says.
    for (sc, mode) in [
        ("call.xml", "answer"),
        ("call_busy.xml", "busy"),
        ("call_unanswered.xml", "unanswered"),
        ("call_cancel.xml", "cancel"),
    ] {
        let pbx = run(
            &format!("fake-pbx-{mode}"),
            &[
                "-sf",
                &scenario("selftest_pbx.xml"),
                "-i",
                fake_pbx,
                "-p",
                "5060",
                "-set",
                "mode",
                mode,
                "-m",
                "2",
            ],
        );
        wait_bound(fake_pbx, "5060", "u");
        let args = alice_calls_bob(sc, &target, phone, &["-m", "2", "-l", "1", "-d", "100"]);
        let c = run(sc, &args.iter().map(String::as_str).collect::<Vec<_>>());
        finish(c, sc);
        finish(pbx, &format!("fake-pbx-{mode}"));
    }
    // Callees (uas*.xml) against a caller without credentials standing in for portier's far leg.
    let ctarget = format!("{callee}:5070");
    for (sc, mode) in [("uas.xml", "answer"), ("uas_busy.xml", "busy"), ("uas_ring.xml", "cancel")] {
        let uas = run(sc, &["-sf", &scenario(sc), "-i", callee, "-p", "5070", "-s", "2002", "-m", "2"]);
        wait_bound(callee, "5070", "u");
        let c = run(
            &format!("far-leg-{mode}"),
            &[
                "-sf",
                &scenario("selftest_caller.xml"),
                &ctarget,
                "-i",
                fake_pbx,
                "-p",
                "5061",
                "-s",
                "2001",
                "-set",
                "domain",
                DOMAIN,
                "-set",
                "callee",
                "2002",
                "-set",
                "mode",
                mode,
                "-m",
                "2",
                "-l",
                "1",
            ],
        );
        finish(c, &format!("far-leg-{mode}"));
        finish(uas, sc);
    }
    // The ISP emulator: register.xml registers (401, verified digest, 200), a caller with
    // credentials gets through its 401 on INVITE, the inbound-call UAC reaches a callee.
    let isp = run(
        "isp",
        &["-sf", &scenario("isp.xml"), "-i", fake_pbx, "-p", "5060", "-set", "exp", "4", "-m", "2"],
    );
    wait_bound(fake_pbx, "5060", "u");
    let r = run(
        "register-at-isp",
        &[
            "-sf",
            &scenario("register.xml"),
            &target,
            "-i",
            phone,
            "-p",
            "5071",
            "-s",
            "0999999999",
            "-au",
            "0999999999",
            "-ap",
            "isp-secret",
            "-auth_uri",
            "isp.example.test",
            "-set",
            "domain",
            "isp.example.test",
            "-set",
            "expires",
            "600",
            "-m",
            "1",
        ],
    );
    finish(r, "register-at-isp");
    let refused = run(
        "register-refused-at-isp",
        &[
            "-sf",
            &scenario("register_refused.xml"),
            &target,
            "-i",
            phone,
            "-p",
            "5072",
            "-s",
            "0999999999",
            "-au",
            "0999999999",
            "-ap",
            "wrong",
            "-auth_uri",
            "isp.example.test",
            "-set",
            "domain",
            "isp.example.test",
            "-set",
            "expires",
            "600",
            "-m",
            "1",
        ],
    );
    finish(refused, "register-refused-at-isp");
    finish(isp, "isp");
    let uas = run(
        "uas-for-inbound",
        &["-sf", &scenario("uas.xml"), "-i", callee, "-p", "5070", "-s", "2000", "-m", "1"],
    );
    wait_bound(callee, "5070", "u");
    let c = run(
        "isp-call-in",
        &[
            "-sf",
            &scenario("isp_call_in.xml"),
            &ctarget,
            "-i",
            fake_pbx,
            "-p",
            "5062",
            "-s",
            "0612345678",
            "-set",
            "domain",
            "isp.example.test",
            "-set",
            "callee",
            "0999999999",
            "-m",
            "1",
            "-d",
            "100",
        ],
    );
    finish(c, "isp-call-in");
    finish(uas, "uas-for-inbound");
    // The UM emulator over TCP: a far-leg INVITE to 1900.
    let um = run(
        "um",
        &["-sf", &scenario("um.xml"), "-t", "t1", "-i", callee, "-p", "5060", "-s", "um", "-m", "1"],
    );
    wait_bound(callee, "5060", "t");
    let c = run(
        "far-leg-to-um",
        &[
            "-sf",
            &scenario("selftest_caller.xml"),
            "-t",
            "t1",
            &format!("{callee}:5060"),
            "-i",
            fake_pbx,
            "-p",
            "5063",
            "-s",
            "2000",
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            "1900",
            "-set",
            "mode",
            "answer",
            "-m",
            "1",
        ],
    );
    finish(c, "far-leg-to-um");
    // Over TCP sipp counts a call as failed when the peer closes the connection right after the
    // last message (here: the caller exiting), so the UM side is judged by what it sent.
    let mut um = um;
    for _ in 0..100 {
        if um.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = um.kill();
    let _ = um.wait();
    let um_dir = runs.borrow().iter().find(|(l, _)| l == "um").unwrap().1.clone();
    let trace = parse_message_log(&std::fs::read(um_dir.join("messages.log")).unwrap_or_default());
    assert!(
        trace.iter().any(|m| m.sent && m.status() == Some(200) && m.cseq_method() == "BYE"),
        "um.xml over TCP did not complete the call:\n{}",
        std::fs::read_to_string(um_dir.join("messages.log")).unwrap_or_default()
    );
    drop(lab);
}

/// A phone registers with digest auth: 401 (SHA-256 and MD5 offered) then 200; a wrong password,
/// an expired nonce (stale=true) and a replayed nonce+nc are refused; repeated failures from one
/// address end in 403.
#[test]
fn phone_registers_with_digest_and_bad_credentials_are_refused() {
    let t = office("nonce_lifetime = \"2s\"", &[ALICE, BOB]);

    // sipp, a real peer: 401 then 200 listing the binding with its expiry.
    let reg = t.register("2001", "s3cret-2001", PHONE1, 5070);
    let got: Vec<_> = reg.received().iter().filter_map(|m| m.status()).collect();
    t.check(got == vec![401, 200], &format!("sipp register saw {got:?}, want [401, 200]"));
    t.wait_metric("portier_sip_registrations", &[], 1.0, S(3));

    // The challenge, read by a Rust client: both algorithms, realm, qop=auth.
    let mut p = UdpPhone::bind(&t.lab.phones, PHONE2, 5080, "2002");
    let r = p.register(None, 3600).unwrap_or_else(|| t.fail("no answer to an unauthenticated REGISTER"));
    t.check(r.status() == Some(401), &format!("want 401, got:\n{}", text(&r)));
    let challenges = header_values(&r, "WWW-Authenticate");
    let alg = |c: &str| -> Option<String> {
        parse_digest(c).ok()?.into_iter().find(|(n, _)| n == "algorithm").map(|(_, v)| v.to_ascii_uppercase())
    };
    let algs: Vec<Option<String>> = challenges.iter().map(|c| alg(c)).collect();
    t.check(
        algs.contains(&Some("SHA-256".into())) && algs.contains(&Some("MD5".into())),
        &format!("want a SHA-256 and an MD5 challenge, got {challenges:?}"),
    );
    for c in &challenges {
        let params = parse_digest(c).unwrap_or_default();
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        t.check(get("realm").as_deref() == Some(DOMAIN), &format!("realm must be {DOMAIN}: {c}"));
        t.check(
            get("qop").is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")),
            &format!("qop=auth expected: {c}"),
        );
    }
    // SHA-256 works too (sipp 3.6 only speaks MD5).
    let sha = challenges.iter().find(|c| alg(c).as_deref() == Some("SHA-256")).unwrap().clone();
    let md5 = challenges.iter().find(|c| alg(c).as_deref() == Some("MD5")).unwrap().clone();
    let uri = format!("sip:{DOMAIN}");
    let a = respond(&sha, "REGISTER", &uri, "2002", "s3cret-2002", "c0ffee01", 1).unwrap();
    let r = p.register(Some(&a), 3600).unwrap_or_else(|| t.fail("no answer to REGISTER with SHA-256 digest"));
    t.check(r.status() == Some(200), &format!("SHA-256 credentials: want 200, got:\n{}", text(&r)));
    let contacts = header_values(&r, "Contact").join(", ");
    t.check(
        contacts.contains(&format!("{PHONE2}:5080")) && contacts.contains("expires="),
        &format!("200 must list the binding with expires: {contacts:?}"),
    );
    t.wait_metric("portier_sip_registrations", &[], 2.0, S(3));

    // Replay: the same nonce with the same nc in a new transaction is refused.
    let r = p.register(Some(&a), 3600).unwrap_or_else(|| t.fail("no answer to the replayed REGISTER"));
    t.check(r.status() == Some(401), &format!("replayed nonce+nc: want 401, got:\n{}", text(&r)));

    // MD5 from the Rust client: a fresh challenge, nc=1 then nc=2 on the same nonce both accepted,
    // nc=2 again refused.
    let r = p.register(None, 3600).unwrap();
    let md5_fresh = header_values(&r, "WWW-Authenticate")
        .into_iter()
        .find(|c| alg(c).as_deref() == Some("MD5"))
        .unwrap_or_else(|| t.fail("no MD5 challenge"));
    let a1 = respond(&md5_fresh, "REGISTER", &uri, "2002", "s3cret-2002", "c0ffee02", 1).unwrap();
    let r = p.register(Some(&a1), 3600).unwrap();
    t.check(r.status() == Some(200), &format!("MD5 nc=1: want 200, got:\n{}", text(&r)));
    let a2 = respond(&md5_fresh, "REGISTER", &uri, "2002", "s3cret-2002", "c0ffee02", 2).unwrap();
    let r = p.register(Some(&a2), 3600).unwrap();
    t.check(r.status() == Some(200), &format!("MD5 nc=2 (next count): want 200, got:\n{}", text(&r)));
    let r = p.register(Some(&a2), 3600).unwrap();
    t.check(r.status() == Some(401), &format!("MD5 nc=2 replayed: want 401, got:\n{}", text(&r)));
    let _ = md5;

    // Wrong password, by sipp: 401 (or 403) again.
    t.sipp_ok(
        &t.lab.phones,
        "register-wrong-password",
        &[
            "-sf",
            &scenario("register_refused.xml"),
            &format!("{PBX}:5060"),
            "-i",
            PHONE3,
            "-p",
            "5070",
            "-s",
            "2001",
            "-au",
            "2001",
            "-ap",
            "not-the-secret",
            "-auth_uri",
            DOMAIN,
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "expires",
            "3600",
            "-m",
            "1",
        ],
        S(8),
    );

    // Expired nonce: nonce_lifetime is 2 s; a correct answer to a 3 s old nonce gets 401 stale=true.
    let mut q = UdpPhone::bind(&t.lab.phones, PHONE4, 5080, "2001");
    let r = q.register(None, 3600).unwrap();
    let old = header_values(&r, "WWW-Authenticate")
        .into_iter()
        .find(|c| alg(c).as_deref() == Some("MD5"))
        .unwrap_or_else(|| t.fail("no MD5 challenge"));
    std::thread::sleep(S(3));
    let a = respond(&old, "REGISTER", &uri, "2001", "s3cret-2001", "c0ffee03", 1).unwrap();
    let r = q.register(Some(&a), 3600).unwrap_or_else(|| t.fail("no answer with an expired nonce"));
    let stale = header_values(&r, "WWW-Authenticate").iter().any(|c| {
        parse_digest(c)
            .unwrap_or_default()
            .iter()
            .any(|(n, v)| n == "stale" && v.eq_ignore_ascii_case("true"))
    });
    t.check(
        r.status() == Some(401) && stale,
        &format!("expired nonce: want 401 with stale=true, got:\n{}", text(&r)),
    );

    // Failure rate limit: wrong passwords from one address end in 403 (after 10 within 60 s).
    let mut x = UdpPhone::bind(&t.lab.phones, INTRUDER, 5080, "2001");
    let mut codes = Vec::new();
    for i in 0..12u32 {
        let r = x.register(None, 3600).unwrap_or_else(|| t.fail("no answer to the intruder"));
        if r.status() == Some(403) {
            codes.push(403);
            break;
        }
        let ch = header_values(&r, "WWW-Authenticate")
            .into_iter()
            .find(|c| alg(c).as_deref() == Some("MD5"))
            .unwrap_or_else(|| t.fail(&format!("no MD5 challenge:\n{}", text(&r))));
        let a = respond(&ch, "REGISTER", &uri, "2001", "guess", &format!("bad{i}"), 1).unwrap();
        let r = x.register(Some(&a), 3600).unwrap_or_else(|| t.fail("no answer to the intruder"));
        codes.push(r.status().unwrap_or(0));
        if r.status() == Some(403) {
            break;
        }
    }
    t.check(
        codes.last() == Some(&403) && codes.len() >= 10 && codes[..codes.len() - 1].iter().all(|c| *c == 401),
        &format!("wrong passwords from one address: want 401 x10 then 403, got {codes:?}"),
    );
    // ... while the good phone still registers.
    t.register("2001", "s3cret-2001", PHONE1, 5071);
}

/// 2001 calls 2002: INVITE/180/200/ACK/BYE on both legs, SDP bodies passed through unchanged,
/// a new dialog on the far leg (Call-ID, tags, Via), the caller's identity from the config.
#[test]
fn extension_calls_extension_with_both_legs_and_sdp_passed_through() {
    // Both parties direct: no relay, the SDP goes through as it is (tests/lab_media.rs relays).
    let direct = |e: &str| e.replace(" }", ", media = \"direct\" }");
    let t = office("", &[&direct(ALICE), &direct(BOB)]);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (cc, ce) = (caller.wait(), callee.wait());
    t.check(cc == 0 && ce == 0, &format!("caller sipp exited {cc}, callee sipp exited {ce} (want 0, 0)"));

    let a_sent = caller.sent();
    let a_recv = caller.received();
    let b_recv = callee.received();
    let b_sent = callee.sent();
    let invites: Vec<_> = a_sent.iter().filter(|m| m.is("INVITE")).collect();
    t.check(invites.len() == 2, "the caller sends an INVITE, gets 407, sends it with credentials");
    t.check(
        a_recv.iter().any(|m| m.status() == Some(407) && m.header("Proxy-Authenticate").is_some()),
        "the first INVITE is challenged with 407 and Proxy-Authenticate",
    );
    let a_inv = invites[1];
    let b_inv = b_recv.iter().find(|m| m.is("INVITE")).unwrap_or_else(|| t.fail("the callee got no INVITE"));
    let b_methods: Vec<String> = b_recv.iter().filter_map(|m| m.method()).collect();
    t.check(
        b_methods.iter().filter(|m| *m == "INVITE").count() >= 1
            && b_methods.contains(&"ACK".to_string())
            && b_methods.contains(&"BYE".to_string()),
        &format!("callee leg must see INVITE, ACK, BYE; saw {b_methods:?}"),
    );
    let a_codes: Vec<u16> = a_recv.iter().filter_map(|m| m.status()).collect();
    t.check(a_codes.contains(&180), &format!("180 relayed to the caller: {a_codes:?}"));
    t.check(
        a_recv.iter().any(|m| m.status() == Some(200) && m.cseq_method() == "INVITE"),
        "200 to the INVITE relayed",
    );
    t.check(
        a_recv.iter().any(|m| m.status() == Some(200) && m.cseq_method() == "BYE"),
        "200 to the caller's BYE",
    );
    // SDP passed through unchanged, both ways (the parties are `direct`).
    t.check(
        !a_inv.body().is_empty() && a_inv.body() == b_inv.body(),
        "offer SDP must reach the callee byte for byte",
    );
    let b_ok = b_sent.iter().find(|m| m.status() == Some(200) && m.cseq_method() == "INVITE").unwrap();
    let a_ok = a_recv.iter().find(|m| m.status() == Some(200) && m.cseq_method() == "INVITE").unwrap();
    t.check(
        !b_ok.body().is_empty() && a_ok.body() == b_ok.body(),
        "answer SDP must reach the caller byte for byte",
    );
    // A new dialog on the far leg: topology hiding.
    t.check(
        a_inv.call_id() != b_inv.call_id(),
        &format!("Call-ID must differ between legs: {}", a_inv.call_id()),
    );
    t.check(a_inv.tag_of("From") != b_inv.tag_of("From"), "From tag must differ between legs");
    t.check(
        !b_inv.head().contains(PHONE1),
        &format!("the far leg's headers must not reveal the caller's address:\n{}", b_inv.head()),
    );
    let vias = b_inv.headers("Via").join(" | ");
    t.check(vias.contains(PBX), &format!("the far leg's Via is portier's: {vias}"));
    t.check(
        b_inv.request_uri().starts_with(&format!("sip:2002@{PHONE2}:5070")),
        &format!("far leg Request-URI = the registered Contact, got {}", b_inv.request_uri()),
    );
    let from = b_inv.header("From").unwrap_or_default();
    t.check(
        from.contains("\"Alice\"") && from.contains("sip:2001@pbx.example.test"),
        &format!("far leg From must be \"Alice\" <sip:2001@pbx.example.test>: {from}"),
    );
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
    t.wait_metric("portier_sip_calls_active", &[], 0.0, S(3));
    // Loose: ANSI colours and quoting of values stripped.
    let log = plain(&t.log());
    t.check(
        log.lines().any(|l| {
            l.contains("sip call")
                && l.contains("outcome=answered")
                && l.contains("caller=2001")
                && l.contains("callee=2002")
        }),
        "one log line per call: `sip call ... caller=2001 callee=2002 ... outcome=answered`",
    );
}

/// CANCEL before answer: the caller gets 200 to its CANCEL and 487, the callee a CANCEL.
#[test]
fn caller_cancels_before_answer() {
    let t = office("", &[ALICE, BOB]);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut callee = t.phone_uas("uas_ring.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut caller = t.phone_call("call_cancel.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (cc, ce) = (caller.wait(), callee.wait());
    t.check(cc == 0 && ce == 0, &format!("caller sipp exited {cc}, callee sipp exited {ce} (want 0, 0)"));
    t.check(caller.received().iter().any(|m| m.status() == Some(487)), "caller gets 487");
    t.check(callee.received().iter().any(|m| m.is("CANCEL")), "callee gets CANCEL");
    t.wait_metric("portier_sip_calls_total", &[&calls("cancelled")], 1.0, S(3));
    t.wait_metric("portier_sip_calls_active", &[], 0.0, S(3));
}

/// Busy: the callee's 486 reaches the caller as 486.
#[test]
fn busy_is_relayed() {
    let t = office("", &[ALICE, BOB]);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut callee = t.phone_uas("uas_busy.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut caller = t.phone_call("call_busy.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (cc, ce) = (caller.wait(), callee.wait());
    t.check(cc == 0 && ce == 0, &format!("caller sipp exited {cc}, callee sipp exited {ce} (want 0, 0)"));
    t.check(caller.received().iter().any(|m| m.status() == Some(486)), "caller gets 486");
    t.wait_metric("portier_sip_calls_total", &[&calls("busy")], 1.0, S(3));
}

/// No answer within ring_time: 2001's forward.no_answer = 2002 rings 2002 after 2001 is
/// cancelled; without a forward (2003) the caller gets 480.
#[test]
fn no_answer_after_ring_time_forwards_or_fails_480() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", ring_time = \"2s\", forward = { no_answer = \"2002\" } }";
    let carol = "2003 = { name = \"Carol\", secret = \"s3cret-2003\", ring_time = \"2s\" }";
    let t = office("", &[alice, BOB, carol]);
    t.register("2001", "s3cret-2001", PHONE1, 5070);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    t.register("2003", "s3cret-2003", PHONE3, 5070);

    // 2003 calls 2001: 2001 rings 2 s, is cancelled, 2002 answers.
    let mut first = t.phone_uas("uas_ring.xml", "2001", PHONE1, 5070, 1, S(15));
    let mut second = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut caller = t.phone_call("call.xml", "2003", "s3cret-2003", PHONE3, 5071, "2001", 1, S(15));
    let (c, f, s) = (caller.wait(), first.wait(), second.wait());
    t.check(
        c == 0 && f == 0 && s == 0,
        &format!("sipp exits: caller {c}, 2001 {f}, 2002 {s} (want 0, 0, 0)"),
    );
    let fr = first.received();
    let inv = fr.iter().find(|m| m.is("INVITE")).unwrap().at;
    let cancel = fr.iter().find(|m| m.is("CANCEL")).unwrap_or_else(|| t.fail("2001 never got CANCEL")).at;
    t.check(
        (1.7..4.0).contains(&(cancel - inv)),
        &format!("2001 must ring for ring_time (2 s) before the CANCEL, rang {:.2} s", cancel - inv),
    );
    let forwarded = second.received().iter().find(|m| m.is("INVITE")).unwrap().at;
    t.check(forwarded >= cancel - 0.05, "2002 rings after 2001 was cancelled");

    // 2002 calls 2003, who has no forward: 480 after 2 s.
    let mut ringing = t.phone_uas("uas_ring.xml", "2003", PHONE3, 5070, 1, S(15));
    let mut caller =
        t.phone_call("call_unanswered.xml", "2002", "s3cret-2002", PHONE2, 5071, "2003", 1, S(15));
    let (c, r) = (caller.wait(), ringing.wait());
    t.check(c == 0 && r == 0, &format!("sipp exits: caller {c}, 2003 {r} (want 0, 0)"));
    t.check(caller.received().iter().any(|m| m.status() == Some(480)), "caller gets 480");
    t.wait_metric("portier_sip_calls_total", &[&calls("no_answer")], 1.0, S(3));
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
}

/// Forking: 2002 registered from two addresses, both ring, the first to answer wins and the
/// other gets CANCEL.
#[test]
fn forking_rings_every_contact_and_first_answer_wins() {
    let t = office("", &[ALICE, BOB]);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    t.register("2002", "s3cret-2002", PHONE4, 5070);
    t.wait_metric("portier_sip_registrations", &[], 2.0, S(3));
    let mut desk = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut mobile = t.phone_uas("uas_ring.xml", "2002", PHONE4, 5070, 1, S(15));
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (c, d, m) = (caller.wait(), desk.wait(), mobile.wait());
    t.check(
        c == 0 && d == 0 && m == 0,
        &format!("sipp exits: caller {c}, answering {d}, other {m} (want 0, 0, 0)"),
    );
    t.check(mobile.received().iter().any(|m| m.is("INVITE")), "both contacts ring");
    t.check(mobile.received().iter().any(|m| m.is("CANCEL")), "the contact that did not answer gets CANCEL");
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
}

/// The ISP trunk registers against a sipp registrar that challenges (401) and refreshes at
/// about half the granted expiry.
#[test]
fn isp_trunk_registers_with_digest_and_refreshes_in_time() {
    let cfg = pbx_config(
        "",
        &[ALICE, BOB, "2000 = { name = \"Main number\", secret = \"x-2000\" }"],
        &isp_trunk("4s", "rpid"),
        &[("2XXX", "extension", 0), ("0.", "isp", 1)],
    );
    let (t, mut early) = SipTest::start_with(&cfg, |lab, spawn| vec![start_isp(&lab.isp, spawn, 4)]);
    let isp = &mut early[0];
    t.wait_metric("portier_sip_trunk_registered", &["trunk=\"isp\""], 1.0, S(5));
    std::thread::sleep(Duration::from_millis(5500));
    t.check(isp.running(), "the ISP emulator must still run");
    let msgs = isp.messages();
    let regs: Vec<_> = msgs.iter().filter(|m| !m.sent && m.is("REGISTER")).collect();
    let oks: Vec<f64> = msgs
        .iter()
        .filter(|m| m.sent && m.status() == Some(200) && m.cseq_method() == "REGISTER")
        .map(|m| m.at)
        .collect();
    t.check(
        !msgs.iter().any(|m| m.sent && m.status() == Some(403)),
        "the ISP refused portier's credentials (403: digest did not verify for 0999999999/isp-secret)",
    );
    t.check(
        oks.len() >= 3,
        &format!("want the first registration and >= 2 refreshes within ~6 s, got {} 200s", oks.len()),
    );
    for w in oks.windows(2) {
        let gap = w[1] - w[0];
        t.check(
            (1.0..3.9).contains(&gap),
            &format!("refreshes must come before expiry (4 s), at about half: gap {gap:.2} s"),
        );
    }
    let first = regs[0];
    t.check(
        first.request_uri() == "sip:isp.example.test",
        &format!("REGISTER Request-URI: {}", first.request_uri()),
    );
    for h in ["From", "To"] {
        let v = first.header(h).unwrap_or_default();
        t.check(v.contains("sip:0999999999@isp.example.test"), &format!("{h}: {v}"));
    }
    let authed = regs
        .iter()
        .find(|m| m.header("Authorization").is_some())
        .unwrap_or_else(|| t.fail("no REGISTER with Authorization"));
    let auth = authed.header("Authorization").unwrap();
    t.check(auth.contains("username=\"0999999999\""), &format!("Authorization username: {auth}"));
    t.check(t.metric("portier_sip_trunk_registered", &["trunk=\"isp\""]) == 1.0, "trunk still registered");
    isp.stop();
}

/// An inbound call on the ISP trunk rings 2000, whose forward.always = 1900 sends it to the
/// Exchange UM trunk: the UM emulator (TCP) receives INVITE sip:1900@198.18.2.20.
#[test]
fn inbound_trunk_call_rings_2000_and_is_forwarded_to_um_1900() {
    let main = "2000 = { name = \"Main number\", secret = \"x-2000\", forward = { always = \"1900\" } }";
    let trunks = format!("{}\n{}", isp_trunk("600s", "rpid"), um_trunk("1s"));
    let cfg = pbx_config(
        "",
        &[main, ALICE],
        &trunks,
        &[("2XXX", "extension", 0), ("1XXX", "exchange-um", 0), ("0.", "isp", 1)],
    );
    let (t, mut early) = SipTest::start_with(&cfg, |lab, spawn| {
        vec![start_isp(&lab.isp, spawn, 600), start_um(&lab.um, spawn)]
    });
    t.wait_metric("portier_sip_trunk_up", &["trunk=\"exchange-um\""], 1.0, S(5));
    let mut call = t.isp_calls_in();
    let code = call.wait();
    t.check(code == 0, &format!("the inbound call (sipp from {ISP}) exited {code}, want 0"));
    let um = &mut early[1];
    let got = um.received();
    let inv = got.iter().find(|m| m.is("INVITE")).unwrap_or_else(|| t.fail("the UM emulator got no INVITE"));
    t.check(inv.transport == "TCP", "UM is reached over TCP");
    t.check(
        inv.request_uri().starts_with(&format!("sip:1900@{UM}")),
        &format!("INVITE for 1900 at the UM: {}", inv.request_uri()),
    );
    t.check(got.iter().any(|m| m.is("OPTIONS")), "UM is pinged with OPTIONS");
    t.check(got.iter().any(|m| m.is("BYE")), "the ISP caller's BYE reaches UM");
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
    um.stop();
    early[0].stop();
}

/// 2001 dials 00112345678: the ISP receives INVITE sip:0112345678@isp.example.test from the
/// trunk account with the caller in Remote-Party-ID, and portier answers the ISP's 401.
#[test]
fn outbound_call_reaches_isp_with_prefix_stripped_and_rpid() {
    let cfg = pbx_config(
        "",
        &[ALICE, BOB, "2000 = { name = \"Main number\", secret = \"x-2000\" }"],
        &isp_trunk("600s", "rpid"),
        &[("2XXX", "extension", 0), ("0.", "isp", 1)],
    );
    let (t, mut early) = SipTest::start_with(&cfg, |lab, spawn| vec![start_isp(&lab.isp, spawn, 600)]);
    t.wait_metric("portier_sip_trunk_registered", &["trunk=\"isp\""], 1.0, S(5));
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "00112345678", 1, S(15));
    let code = caller.wait();
    t.check(code == 0, &format!("caller sipp exited {code}, want 0"));
    let isp = &mut early[0];
    let invs: Vec<_> = isp.received().into_iter().filter(|m| m.is("INVITE")).collect();
    t.check(!invs.is_empty(), "the ISP got no INVITE");
    for inv in &invs {
        t.check(
            inv.request_uri() == "sip:0112345678@isp.example.test",
            &format!("Request-URI: {}", inv.request_uri()),
        );
        let from = inv.header("From").unwrap_or_default();
        t.check(from.contains("sip:0999999999@isp.example.test"), &format!("From: {from}"));
        let rpid = inv.header("Remote-Party-ID").unwrap_or_default();
        t.check(
            rpid.contains("\"Alice\"")
                && rpid.contains("sip:2001@pbx.example.test")
                && rpid.contains("party=calling"),
            &format!("Remote-Party-ID: {rpid:?}"),
        );
    }
    t.check(
        invs.iter().any(|m| m.header("Authorization").is_some_and(|a| a.contains("username=\"0999999999\""))),
        "portier answers the ISP's 401 with Authorization for 0999999999",
    );
    t.check(
        !isp.sent().iter().any(|m| m.status() == Some(403)),
        "the ISP refused portier's INVITE credentials (403)",
    );
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
    isp.stop();
}

/// An unauthenticated INVITE to an outside number from an unknown address gets 407 and never
/// reaches the ISP: portier is not an open relay.
#[test]
fn unauthenticated_invite_to_outside_number_never_reaches_the_trunk() {
    let cfg = pbx_config(
        "",
        &[ALICE, BOB, "2000 = { name = \"Main number\", secret = \"x-2000\" }"],
        &isp_trunk("600s", "rpid"),
        &[("2XXX", "extension", 0), ("0.", "isp", 1)],
    );
    let (t, mut early) = SipTest::start_with(&cfg, |lab, spawn| vec![start_isp(&lab.isp, spawn, 600)]);
    t.wait_metric("portier_sip_trunk_registered", &["trunk=\"isp\""], 1.0, S(5));
    let target = format!("{PBX}:5060");
    for (label, from) in [("intruder-anonymous", "anonymous"), ("intruder-as-2001", "2001")] {
        t.sipp_ok(
            &t.lab.phones,
            label,
            &[
                "-sf",
                &scenario("invite_noauth.xml"),
                &target,
                "-i",
                INTRUDER,
                "-p",
                "5070",
                "-s",
                from,
                "-set",
                "domain",
                DOMAIN,
                "-set",
                "callee",
                "00112345678",
                "-m",
                "1",
            ],
            S(8),
        );
    }
    std::thread::sleep(S(1));
    let isp = &mut early[0];
    let invites: Vec<String> = isp.received().iter().filter(|m| m.is("INVITE")).map(|m| m.text()).collect();
    t.check(
        invites.is_empty(),
        &format!("the ISP must never see these INVITEs, got:\n{}", invites.join("\n")),
    );
    t.check(t.metric("portier_sip_calls_total", &[&calls("answered")]) == 0.0, "no answered call");
    isp.stop();
}

/// With 10% of UDP SIP packets dropped both ways at the PBX, 20 calls 2001 -> 2002 all complete
/// through retransmissions.
#[test]
fn calls_complete_with_ten_percent_udp_loss() {
    let t = office("", &[ALICE, BOB]);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let rules = "table inet loss {\n\
                 chain in { type filter hook input priority -300; udp dport 5060 numgen random mod 10 == 0 drop; }\n\
                 chain out { type filter hook output priority -300; udp sport 5060 numgen random mod 10 == 0 drop; }\n}\n";
    let path = std::env::temp_dir().join(format!("{}-loss.nft", t.lab.pbx.name()));
    std::fs::write(&path, rules).unwrap();
    let path_s = path.to_string_lossy().into_owned();
    if let Err(e) = t.lab.pbx.sh(&["nft", "-f", &path_s]) {
        t.fail(&format!("loading the loss rules: {e}"));
    }
    let _ = std::fs::remove_file(&path);
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 20, S(90));
    let target = format!("{PBX}:5060");
    // Talk for 1.2 s: a 200 re-sent because the ACK was lost (after 0.5 s) then arrives while
    // sipp still knows it as its last message and ACKs it again.
    let args =
        alice_calls_bob("call.xml", &target, PHONE1, &["-m", "20", "-l", "5", "-r", "20", "-d", "1200"]);
    let mut caller = t.sipp(
        &t.lab.phones,
        "20-calls-with-loss",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        S(90),
    );
    let (c, e) = (caller.wait(), callee.wait());
    let dropped = t.lab.pbx.sh(&["nft", "list", "table", "inet", "loss"]).unwrap_or_default();
    t.check(
        c == 0 && e == 0,
        &format!("with loss: caller sipp exited {c}, callee {e} (want 0, 0)\n{dropped}"),
    );
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 20.0, S(5));
}

/// Registers `ext` from `ip:port` in `ns` naming `contact` (HOST:PORT) as its Contact.
fn register_naming(
    t: &SipTest,
    ns: &portier::lab::Netns,
    ext: &str,
    secret: &str,
    ip: &str,
    port: u16,
    contact: &str,
) {
    let mut args = register_args(&format!("{PBX}:5060"), ip, port, ext, secret);
    args[1] = scenario("register-contact.xml");
    args.extend(["-set".to_string(), "contact".to_string(), contact.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.sipp_ok(ns, &format!("register-{ext}-{ip}-{port}-as-{contact}"), &args, S(8));
}

/// RFC 3261 sends requests to the Contact: a phone that is not behind NAT but sends from
/// another port than the one its Contact names (`nat = "auto"`, the default) is called there.
#[test]
fn a_phone_registering_from_another_port_than_its_contact_is_reached_on_its_contact() {
    let t = office("", &[ALICE, BOB]);
    register_naming(&t, &t.lab.phones, "2002", "s3cret-2002", PHONE2, 5070, &format!("{PHONE2}:5080"));
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5080, 1, S(15));
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (c, e) = (caller.wait(), callee.wait());
    t.check(
        c == 0 && e == 0,
        &format!("caller sipp exited {c}, callee on the Contact's port {e} (want 0, 0)"),
    );
}

/// `nat = "force"`: the phone is reached where its REGISTER came from, whatever it names.
#[test]
fn nat_force_reaches_the_phone_where_it_registered_from() {
    let bob = BOB.replace(" }", ", nat = \"force\" }");
    let t = office("", &[ALICE, &bob]);
    register_naming(&t, &t.lab.phones, "2002", "s3cret-2002", PHONE2, 5070, &format!("{PHONE2}:5080"));
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let (c, e) = (caller.wait(), callee.wait());
    t.check(c == 0 && e == 0, &format!("caller sipp exited {c}, callee on the source port {e} (want 0, 0)"));
}

/// A phone at home behind a masquerading NAT registers its private address; NAT is detected
/// (the Contact names another host than the source) and it is called through the NAT's
/// mapping. Both its calls (in and out) complete, BYE included.
#[test]
fn a_phone_behind_nat_registers_and_is_called_through_the_mapping() {
    let t = office("", &[ALICE, BOB]);
    let home = t.lab.nat_home();
    let args = register_args(&format!("{PBX}:5060"), HOME_PHONE, 5072, "2002", "s3cret-2002");
    t.sipp_ok(&home, "register-2002-home", &args.iter().map(String::as_str).collect::<Vec<_>>(), S(8));
    let log = t.log();
    t.check(
        log.contains(&format!("contact=\"sip:2002@{HOME_PHONE}:5072\" from={PHONE1}:")),
        &format!("the REGISTER should arrive from the NAT's address {PHONE1}:\n{log}"),
    );
    let mut callee = t.sipp(
        &home,
        "uas-2002-home",
        &["-sf", &scenario("uas.xml"), "-i", HOME_PHONE, "-p", "5072", "-s", "2002", "-m", "1"],
        S(15),
    );
    t.wait_bound(&home, "u", HOME_PHONE, 5072);
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE2, 5074, "2002", 1, S(15));
    let (c, e) = (caller.wait(), callee.wait());
    t.check(c == 0 && e == 0, &format!("caller sipp exited {c}, callee behind NAT {e} (want 0, 0)"));
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
}

/// A real softphone: baresip registers as 2002 and auto-answers; sipp as 2001 calls it.
#[test]
fn baresip_registers_and_answers_a_call() {
    // baresip 1.0 (libre 1.1) refuses to authenticate when any challenge offers an algorithm
    // other than MD5, whatever the order: such phones need an MD5-only realm.
    let t = office("digest_algorithms = [\"MD5\"]", &[ALICE, BOB]);
    let mut bs = Baresip::start(&t, "2002", "s3cret-2002", PHONE2, 5090);
    if t.metric("portier_sip_registrations", &[]) != 1.0 {
        std::thread::sleep(S(5));
    }
    if t.metric("portier_sip_registrations", &[]) != 1.0 {
        let out = bs.stop();
        t.fail(&format!(
            "baresip did not register within 5 s. baresip 1.0 (libre 1.1) gives up (\"Register: Function not \
             implemented\") when ANY WWW-Authenticate offers an algorithm other than MD5, whatever the order.\n\
             baresip output:\n{out}"
        ));
    }
    let mut caller = t.phone_call("call.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let code = caller.wait();
    let out = bs.stop();
    t.check(code == 0, &format!("caller sipp exited {code}, want 0\nbaresip output:\n{out}"));
    t.check(
        caller.received().iter().any(|m| m.status() == Some(200) && m.cseq_method() == "INVITE"),
        "baresip answered",
    );
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
}

/// A TLS phone: 2002 registers over TLS from a Rust client (digest computed here), gets its
/// CRLF keep-alive answered, and the INVITE for it arrives on that same TLS connection when
/// 2001 (sipp over UDP) calls; its 486 reaches the caller and portier ACKs it over TLS too.
#[test]
fn tls_phone_registers_and_is_called_on_its_own_connection() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    let certs = common::nginx::Certs::generate();
    let tls_listen = format!(
        "\"tcp:{PBX}:5060\", \"tls:{PBX}:5061\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}",
        certs.path("mail.pem").display(),
        certs.path("mail.key").display()
    );
    let cfg = pbx_config("", &[ALICE, BOB], "", &[("2XXX", "extension", 0)])
        .replace(&format!("\"tcp:{PBX}:5060\"]"), &tls_listen);
    let t = SipTest::start(&cfg);
    t.wait_bound(&t.lab.pbx, "t", PBX, 5061);

    let tcp = t
        .lab
        .phones
        .run(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&std::net::SocketAddr::new(PHONE2.parse().unwrap(), 0).into())?;
            s.connect_timeout(&std::net::SocketAddr::new(PBX.parse().unwrap(), 5061).into(), S(3))?;
            Ok::<std::net::TcpStream, std::io::Error>(s.into())
        })
        .unwrap()
        .unwrap_or_else(|e| t.fail(&format!("TCP connect to the TLS listener: {e}")));
    tcp.set_read_timeout(Some(S(10))).unwrap();
    let local = tcp.local_addr().unwrap();
    // The phone offers HTTP's ALPN values: a SIP listener must not pick one.
    let config = portier::tls::client_config(&Default::default(), portier::tls::ALPN_HTTP_SERVER).unwrap();
    let server = rustls::pki_types::ServerName::IpAddress(PBX.parse::<std::net::IpAddr>().unwrap().into());
    let conn = rustls::ClientConnection::new(Arc::clone(&config), server).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut framer = portier::sip::StreamFramer::new();
    let mut next = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| loop {
        if let Ok(Some(f)) = framer.next_frame() {
            return f;
        }
        let mut buf = [0u8; 4096];
        let n =
            tls.read(&mut buf).unwrap_or_else(|e| t.fail(&format!("reading from the TLS connection: {e}")));
        t.check(n > 0, "portier closed the TLS connection");
        framer.push(&buf[..n]);
    };
    let expect_msg = |f: portier::sip::Frame| match f {
        portier::sip::Frame::Message(m) => m,
        other => t.fail(&format!("expected a SIP message, got {other:?}")),
    };

    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:2002@{DOMAIN}>;tag=tlsphone\r\nTo: <sip:2002@{DOMAIN}>\r\nCall-ID: tls-reg@{PHONE2}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:2002@{local};transport=tls>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    tls.write_all(register(1, "").as_bytes()).unwrap();
    t.check(tls.conn.alpn_protocol().is_none(), "the SIP TLS listener negotiated an ALPN protocol");
    let challenge = expect_msg(next(&mut tls));
    t.check(challenge.status() == Some(401), &format!("401 over TLS, got {:?}", challenge.status()));
    let www = challenge.get("WWW-Authenticate").unwrap().value_text("x").unwrap().into_owned();
    let auth = respond(&www, "REGISTER", &format!("sip:{DOMAIN}"), "2002", "s3cret-2002", "tlsc", 1).unwrap();
    tls.write_all(register(2, &format!("Authorization: {auth}\r\n")).as_bytes()).unwrap();
    let ok = expect_msg(next(&mut tls));
    t.check(ok.status() == Some(200), &format!("200 for the TLS REGISTER, got {:?}", ok.status()));

    // RFC 5626 keep-alive: CRLFCRLF is answered with CRLF.
    tls.write_all(b"\r\n\r\n").unwrap();
    t.check(matches!(next(&mut tls), portier::sip::Frame::Pong), "CRLF keep-alive answered");

    // 2001 calls 2002: the INVITE comes down this connection; 2002 is busy.
    let mut caller = t.phone_call("call_busy.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(15));
    let invite = expect_msg(next(&mut tls));
    t.check(invite.method() == Some("INVITE"), &format!("INVITE over TLS, got {:?}", invite.start_line()));
    let via = invite.top_via().unwrap();
    t.check(via.transport == "TLS", &format!("portier's Via names TLS: {via:?}"));
    let busy = portier::sip::ReplyContext::from_message(&invite)
        .unwrap()
        .response(486, "Busy Here", Some("b2002"))
        .unwrap();
    tls.write_all(&busy.to_bytes()).unwrap();
    let ack = expect_msg(next(&mut tls));
    t.check(ack.method() == Some("ACK"), &format!("ACK for the 486 over TLS, got {:?}", ack.start_line()));
    let code = caller.wait();
    t.check(code == 0, &format!("caller sipp (expects 486) exited {code}"));
    t.wait_metric("portier_sip_calls_total", &[&calls("busy")], 1.0, S(3));
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// SIGTERM drains the B2BUA: a call that is up goes on until `global.drain_timeout` (3 s
/// here), then portier sends BYE to both phones; during the drain a new INVITE gets 503 with
/// Retry-After (before any challenge) while a REGISTER still succeeds; the process then
/// exits by itself and logs the call as answered, ended by the drain.
#[test]
fn sigterm_lets_a_call_run_until_the_drain_timeout_then_hangs_up_both_legs() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::time::Instant;

    let cfg = format!(
        "[global]\ndrain_timeout = \"3s\"\n\n{}",
        pbx_config("", &[ALICE, BOB, CAROL], "", &[("2XXX", "extension", 0)])
    );
    let mut t = SipTest::start(&cfg);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(20));
    let mut caller =
        t.phone_call("call_until_bye.xml", "2001", "s3cret-2001", PHONE1, 5070, "2002", 1, S(20));
    t.wait_metric("portier_sip_calls_active", &[], 1.0, S(10));

    let pid = t.portier.pid().unwrap_or_else(|| t.fail("portier is not running"));
    let signalled = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap_or_else(|e| t.fail(&format!("SIGTERM: {e}")));

    let target = format!("{PBX}:5060");
    let refused = t.sipp_ok(
        &t.lab.phones,
        "invite-during-drain",
        &[
            "-sf",
            &scenario("invite_503.xml"),
            &target,
            "-i",
            PHONE3,
            "-p",
            "5070",
            "-s",
            "2003",
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            "2001",
            "-m",
            "1",
        ],
        S(5),
    );
    let r503 = refused.received().into_iter().find(|m| m.status() == Some(503));
    let retry = r503.as_ref().and_then(|m| m.header("Retry-After"));
    t.check(retry.is_some(), &format!("the 503 during the drain carries Retry-After: {retry:?}"));
    t.check(signalled.elapsed() < S(3), "the new INVITE was refused while the call was still up");

    let reg = t.register("2003", "s3cret-2003", PHONE3, 5072);
    let contacts: Vec<String> = reg
        .received()
        .iter()
        .filter(|m| m.status() == Some(200))
        .flat_map(|m| m.headers("Contact"))
        .collect();
    t.check(
        contacts.iter().any(|c| c.contains("expires=60")),
        &format!("a REGISTER during the drain is granted at most 60 s: {contacts:?}"),
    );

    let (cc, ce) = (caller.wait(), callee.wait());
    let took = signalled.elapsed();
    t.check(cc == 0 && ce == 0, &format!("caller sipp exited {cc}, callee sipp exited {ce} (want 0, 0)"));
    t.check(caller.received().iter().any(|m| m.is("BYE")), "the caller gets portier's BYE");
    t.check(callee.received().iter().any(|m| m.is("BYE")), "the callee gets portier's BYE");
    t.check(
        took >= Duration::from_millis(2800),
        &format!("the call was hung up after {took:?}, before the 3 s drain timeout"),
    );

    let t0 = Instant::now();
    while !exited(pid) && t0.elapsed() < S(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    t.check(exited(pid), &format!("portier still runs {:?} after the drain timeout", signalled.elapsed()));
    let status = t.portier.stop(S(5)).unwrap_or_else(|e| t.fail(&format!("portier exit: {e}")));
    t.check(status.success(), &format!("portier exited with {status}"));
    let log = plain(&t.log());
    t.check(
        log.lines().any(|l| {
            l.contains("sip call") && l.contains("outcome=answered") && l.contains("end_reason=drain")
        }),
        "the call's log line: `sip call ... outcome=answered end_reason=drain`",
    );
}

#[test]
fn a_reload_changes_extensions_without_dropping_the_call_or_other_registrations() {
    let dave = "2004 = { name = \"Dave\", secret = \"s3cret-2004\" }";
    let plan = [("2XXX", "extension", 0)];
    let t = SipTest::start(&pbx_config("", &[ALICE, BOB, CAROL], "", &plan));
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    t.register("2003", "s3cret-2003", PHONE3, 5070);
    t.wait_metric("portier_sip_registrations", &[], 2.0, S(5));
    let mut callee = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(30));
    // call.xml holds the call for hold_ms before the caller's BYE.
    let call = Call {
        scenario_file: "call.xml",
        ext: "2001",
        secret: "s3cret-2001",
        ip: PHONE1,
        port: 5070,
        number: "2002",
        calls: 1,
        hold_ms: 6000,
    };
    let args = call.args(&format!("{PBX}:5060"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut caller = t.sipp(&t.lab.phones, "long-call-2001-to-2002", &args, S(30));
    t.wait_metric("portier_sip_calls_active", &[], 1.0, S(10));

    // Carol leaves, Dave arrives, Alice gets a new secret: one reload while the call is up.
    let alice = ALICE.replace("s3cret-2001", "n3w-2001-secret");
    t.portier.write_config(&pbx_config("", &[&alice, BOB, dave], "", &plan)).unwrap();
    let (code, out) =
        t.portier.reload(common::exe()).unwrap_or_else(|e| t.fail(&format!("portier reload: {e}")));
    t.check(code == 0, &format!("reload exit {code}: {out}"));
    t.check(
        out.contains("sip:") && out.contains("+2004") && out.contains("-2003") && out.contains("~2001"),
        &format!("the reload names the extensions: {out}"),
    );
    t.wait_metric("portier_sip_registrations", &[], 1.0, S(5));
    t.check(t.metrics().contains("portier_sip_calls_active 1"), "the call is still up after the reload");

    // The call ends as its phones want it to, across the reload.
    let (cc, ce) = (caller.wait(), callee.wait());
    t.check(cc == 0 && ce == 0, &format!("caller sipp exited {cc}, callee sipp exited {ce} (want 0, 0)"));
    t.wait_metric("portier_sip_calls_total", &["outcome=\"answered\""], 1.0, S(5));
    // The new extension registers with its secret; Bob's binding was never touched.
    t.register("2004", "s3cret-2004", PHONE3, 5072);
    t.wait_metric("portier_sip_registrations", &[], 2.0, S(5));
    t.check(t.portier.get("/status").unwrap_or_default().contains("2002"), "Bob is still registered");
}
