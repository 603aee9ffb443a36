//! Lab tests of the Exchange UM integration (issue 5, "Must be shown by tests"): sipp scenarios
//! that behave as Exchange UM 2010 does (TCP only, a 302 from the front process to a worker
//! port, no answers to digest challenges, REFER from the auto attendant, unsolicited MWI
//! NOTIFY) against portier in the SIP lab of tests/common/sip.rs.
//!
//! UM is emulated by two sipp processes in the um namespace (198.18.2.20): the front on TCP
//! 5060 (tests/data/sipp/um_redirect.xml) answers every INVITE with
//! `302 Contact: <sip:PILOT@198.18.2.20:5065;transport=tcp>`, the worker on TCP 5065
//! (um_worker.xml) answers the redirected INVITE after checking its Diversion: the worker's
//! sipp call FAILS (606, exit 1) when Diversion is missing, duplicated or not the expected value
//! (`um_worker_scenario_fails_on_wrong_diversion` proves that it can fail).
//!
//! Run: `cargo test --test lab_um -- --test-threads 4` (root, sipp).

mod common;

use std::time::Duration;

use common::sip::*;

const S: fn(u64) -> Duration = Duration::from_secs;

const UM_FRONT: u16 = 5060;
const UM_WORKER: u16 = 5065;

fn calls(outcome: &str) -> String {
    format!("outcome=\"{outcome}\"")
}

/// The Exchange UM peer trunk at `address` (e.g. `tcp:198.18.2.20:5060`), optionally pinged.
fn um_peer(address: &str, ping: Option<&str>) -> String {
    let mut s = format!(
        "[sip.trunks.exchange-um]\nkind = \"peer\"\naddress = \"{address}\"\ntrusted = true\nidentity = \"pai\"\n"
    );
    if let Some(p) = ping {
        s += &format!("options_ping = \"{p}\"\n");
    }
    s
}

/// `[sip.voicemail]` towards the exchange-um trunk, pilot 1000.
fn voicemail(prefix: &str) -> String {
    format!(
        "[sip.voicemail]\ntrunk = \"exchange-um\"\npilot = \"1000\"\nmailbox_prefix = \"{prefix}\"\nmwi = true\n"
    )
}

/// The office of the article: extensions, UM peer trunk (no pings unless `ping`), voicemail
/// with `prefix`, dial plan 2XXX -> extensions, 1XXX -> exchange-um.
fn um_office(extensions: &[&str], prefix: &str, ping: Option<&str>) -> SipTest {
    let trunks = format!("{}\n{}", um_peer(&format!("tcp:{UM}:{UM_FRONT}"), ping), voicemail(prefix));
    SipTest::start(&pbx_config(
        "",
        extensions,
        &trunks,
        &[("2XXX", "extension", 0), ("1XXX", "exchange-um", 0)],
    ))
}

/// How UM is reached: sipp's transport flag, the front and worker ports, extra sipp arguments
/// (the TLS certificate).
struct UmNet {
    /// `transport=` of the URIs (tcp or tls).
    uri_transport: &'static str,
    /// The ports portier is given (trunk address, 302 Contact).
    front: u16,
    worker: u16,
    /// Where the sipp processes listen (TCP; for TLS a socat in front of them).
    sipp_front: u16,
    sipp_worker: u16,
}

fn um_tcp() -> UmNet {
    UmNet {
        uri_transport: "tcp",
        front: UM_FRONT,
        worker: UM_WORKER,
        sipp_front: UM_FRONT,
        sipp_worker: UM_WORKER,
    }
}

/// UM's front process (TCP 5060): 302 to the worker port, for `calls` INVITEs.
fn start_front(t: &SipTest, calls: u32) -> Sipp {
    start_front_on(t, &um_tcp(), calls)
}

fn start_front_on(t: &SipTest, net: &UmNet, calls: u32) -> Sipp {
    let m = calls.to_string();
    let wport = net.worker.to_string();
    let port = net.sipp_front.to_string();
    let sf = scenario("um_redirect.xml");
    let args: Vec<&str> = vec![
        "-sf",
        &sf,
        "-t",
        "t1",
        "-i",
        UM,
        "-p",
        &port,
        "-s",
        "um",
        "-set",
        "wport",
        &wport,
        "-set",
        "wtransport",
        net.uri_transport,
        "-m",
        &m,
    ];
    let s = t.sipp(&t.lab.um, "um-front-302", &args, S(25));
    t.wait_bound(&t.lab.um, "t", UM, net.sipp_front);
    s
}

/// UM's worker process (TCP 5065): checks Diversion against `want_div` ("none", "any" or the
/// exact value), answers, waits for the BYE; `calls` calls.
fn start_worker(t: &SipTest, want_div: &str, calls: u32) -> Sipp {
    start_worker_on(t, &um_tcp(), want_div, calls)
}

fn start_worker_on(t: &SipTest, net: &UmNet, want_div: &str, calls: u32) -> Sipp {
    let m = calls.to_string();
    let port = net.sipp_worker.to_string();
    let sf = scenario("um_worker.xml");
    let args: Vec<&str> = vec![
        "-sf", &sf, "-t", "t1", "-i", UM, "-p", &port, "-s", "um", "-set", "want_div", want_div, "-m", &m,
    ];
    let s = t.sipp(&t.lab.um, "um-worker", &args, S(25));
    t.wait_bound(&t.lab.um, "t", UM, net.sipp_worker);
    s
}

/// Waits for an emulator that may be counted failed by sipp because portier kept or closed the
/// TCP connection at the end; the tests judge it by its trace, so only a kill is reported.
fn finish(t: &SipTest, s: &mut Sipp) -> i32 {
    let code = s.wait();
    if code == -9 {
        t.fail(&format!("sipp {} had to be killed (did not finish in time)", s.label));
    }
    code
}

/// The INVITEs a sipp UAS received (retransmissions removed by CSeq).
fn invites(s: &Sipp) -> Vec<Logged> {
    let mut out: Vec<Logged> = Vec::new();
    for m in s.received().into_iter().filter(|m| m.is("INVITE")) {
        if !out.iter().any(|o| o.call_id() == m.call_id() && o.header("CSeq") == m.header("CSeq")) {
            out.push(m);
        }
    }
    out
}

fn cseq_num(m: &Logged) -> u32 {
    m.header("CSeq").and_then(|c| c.split_whitespace().next().and_then(|n| n.parse().ok())).unwrap_or(0)
}

/// The diverted call as UM sees it: the front got INVITE sip:1000@UM:5060;transport=tcp with
/// exactly one Diversion `want_div` and the caller's PAI, answered 302 and got the ACK; the
/// worker got the same call (Call-ID, CSeq+1) at sip:1000@UM:5065 with the same Diversion and
/// PAI. Returns the worker's INVITE.
fn check_redirected(
    t: &SipTest,
    net: &UmNet,
    front: &Sipp,
    worker: &Sipp,
    pilot: &str,
    want_div: Option<&str>,
    pai: &str,
) {
    let (fp, wp, tr) = (net.front, net.worker, net.uri_transport);
    let f_inv = invites(front);
    let w_inv = invites(worker);
    let f = f_inv.first().unwrap_or_else(|| t.fail("the UM front (TCP 5060) got no INVITE"));
    let w = w_inv
        .first()
        .unwrap_or_else(|| t.fail("the UM worker (TCP 5065) got no INVITE: portier did not follow the 302"));
    // sipp itself always speaks TCP (for TLS, socat terminates it); portier's Via tells.
    let want_via = format!("SIP/2.0/{}", tr.to_ascii_uppercase());
    for (who, m) in [("front", f), ("worker", w)] {
        let via = m.header("Via").unwrap_or_default();
        t.check(
            m.transport == "TCP" && via.to_ascii_uppercase().starts_with(&want_via),
            &format!("{who}: UM must be reached over {tr}: Via {via:?}"),
        );
    }
    t.check(
        f.request_uri() == format!("sip:{pilot}@{UM}:{fp};transport={tr}"),
        &format!("front INVITE Request-URI: {}, want sip:{pilot}@{UM}:{fp};transport={tr}", f.request_uri()),
    );
    t.check(
        w.request_uri().starts_with(&format!("sip:{pilot}@{UM}:{wp}")),
        &format!("redirected INVITE Request-URI: {}, want the 302's Contact", w.request_uri()),
    );
    t.check(
        front.sent().iter().any(|m| m.status() == Some(302)) && front.received().iter().any(|m| m.is("ACK")),
        "the front answered 302 and portier ACKed it",
    );
    t.check(
        f.call_id() == w.call_id(),
        &format!("redirected INVITE keeps the Call-ID: {} vs {}", f.call_id(), w.call_id()),
    );
    t.check(
        cseq_num(w) == cseq_num(f) + 1,
        &format!(
            "redirected INVITE CSeq is the front's + 1: {:?} then {:?}",
            f.header("CSeq"),
            w.header("CSeq")
        ),
    );
    for (who, m) in [("front", f), ("worker", w)] {
        let divs = m.headers("Diversion");
        match want_div {
            Some(d) => t.check(
                divs == vec![d.to_string()],
                &format!("{who} INVITE: want exactly one Diversion {d:?}, got {divs:?}\n{}", m.head()),
            ),
            None => t.check(divs.is_empty(), &format!("{who} INVITE: want no Diversion, got {divs:?}")),
        }
        let pais = m.headers("P-Asserted-Identity");
        t.check(
            pais == vec![pai.to_string()],
            &format!("{who} INVITE: want P-Asserted-Identity {pai:?}, got {pais:?}"),
        );
    }
}

/// One voicemail diversion: Bob (2002) calls 2001 whose phone behaves as `uas` (None: not
/// registered); the call must reach the UM worker through the 302 with `want_div`.
fn diversion_case(alice: &str, prefix: &str, uas: Option<&str>, want_div: &str) {
    let t = um_office(&[alice, BOB], prefix, None);
    diversion_on(&t, &um_tcp(), uas, want_div);
}

fn diversion_on(t: &SipTest, net: &UmNet, uas: Option<&str>, want_div: &str) {
    let mut phone = uas.map(|sc| {
        t.register("2001", "s3cret-2001", PHONE1, 5070);
        t.phone_uas(sc, "2001", PHONE1, 5070, 1, S(20))
    });
    let mut front = start_front_on(t, net, 1);
    let mut worker = start_worker_on(t, net, want_div, 1);
    let mut caller = t.phone_call("call.xml", "2002", "s3cret-2002", PHONE2, 5070, "2001", 1, S(20));
    let c = caller.wait();
    let w = finish(t, &mut worker);
    finish(t, &mut front);
    if let Some(p) = phone.as_mut() {
        let code = p.wait();
        t.check(code == 0, &format!("2001's phone sipp exited {code}, want 0"));
    }
    t.check(
        w == 0,
        &format!(
            "the UM worker's sipp call failed (exit {w}): its Diversion check (want exactly one \
             Diversion {want_div:?}) or PAI check did not pass; see its log/errors below"
        ),
    );
    t.check(c == 0, &format!("the caller (2002) sipp exited {c}, want 0 (connected to voicemail)"));
    check_redirected(t, net, &front, &worker, "1000", Some(want_div), "\"Bob\" <sip:2002@pbx.example.test>");
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
}

/// Harness check, no portier involved: the UM worker scenario fails (exit != 0) when the
/// Diversion is missing, wrong or duplicated, and passes when it is right; "none" fails on any
/// Diversion.
#[test]
fn um_worker_scenario_fails_on_wrong_diversion() {
    let t = SipTest::start(&pbx_config("", &[ALICE], "", &[]));
    let d = "<tel:2001>;reason=no-answer;screen=no;privacy=off";
    let good = format!("Diversion: {d}");
    let busy = "Diversion: <tel:2001>;reason=user-busy;screen=no;privacy=off";
    let cases: [(&str, &str, &str, &str, bool); 6] = [
        ("right", d, &good, "X-Lab: 1", true),
        ("missing", d, "X-Lab: 1", "X-Lab-2: 1", false),
        ("wrong-reason", d, busy, "X-Lab: 1", false),
        ("duplicated", d, &good, &good, false),
        ("none-and-none", "none", "X-Lab: 1", "X-Lab-2: 1", true),
        ("none-but-one", "none", &good, "X-Lab: 1", false),
    ];
    for (label, want, h1, h2, ok) in cases {
        let mut worker = start_worker(&t, want, 1);
        let mut caller = t.sipp(
            &t.lab.um,
            &format!("selftest-{label}"),
            &[
                "-sf",
                &scenario("um_originate.xml"),
                "-t",
                "t1",
                &format!("{UM}:{UM_WORKER}"),
                "-i",
                UM,
                "-p",
                "5090",
                "-s",
                "2001",
                "-set",
                "domain",
                DOMAIN,
                "-set",
                "callee",
                "1000",
                "-set",
                "hdr1",
                h1,
                "-set",
                "hdr2",
                h2,
                "-m",
                "1",
                "-d",
                "100",
            ],
            S(8),
        );
        caller.wait();
        let w = finish(&t, &mut worker);
        t.check(
            (w == 0) == ok,
            &format!("self-test {label}: the worker exited {w}, want {}", if ok { "0" } else { "non-zero" }),
        );
    }
}

/// 2001 does not answer within ring_time (2 s): the call goes to the pilot through UM's 302 with
/// `Diversion: <tel:2001>;reason=no-answer;screen=no;privacy=off`.
#[test]
fn no_answer_diverts_to_um_through_302() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true, ring_time = \"2s\" }";
    diversion_case(alice, "", Some("uas_ring.xml"), "<tel:2001>;reason=no-answer;screen=no;privacy=off");
}

/// 2001 is busy (486): reason=user-busy.
#[test]
fn busy_diverts_to_um_through_302() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true, ring_time = \"2s\" }";
    diversion_case(alice, "", Some("uas_busy.xml"), "<tel:2001>;reason=user-busy;screen=no;privacy=off");
}

/// 2001 has no registered contact: reason=unavailable.
#[test]
fn unregistered_diverts_to_um_through_302() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true, ring_time = \"2s\" }";
    diversion_case(alice, "", None, "<tel:2001>;reason=unavailable;screen=no;privacy=off");
}

/// mailbox_prefix "5" (Asterisk's UMOUTDIALPREFIX): mailbox 52001.
#[test]
fn mailbox_prefix_gives_tel_52001() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true, ring_time = \"2s\" }";
    diversion_case(alice, "5", None, "<tel:52001>;reason=unavailable;screen=no;privacy=off");
}

/// forward.always = "voicemail": reason=unconditional, 2001's phone never rings.
#[test]
fn forward_always_voicemail_is_unconditional() {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true, forward = { always = \"voicemail\" } }";
    diversion_case(alice, "", None, "<tel:2001>;reason=unconditional;screen=no;privacy=off");
}

/// 2002 dials the pilots 1000 (subscriber access) and 1900 (auto attendant): connected through
/// the 302, PAI present, no Diversion.
#[test]
fn pilots_1000_and_1900_are_connected_through_302_with_pai() {
    let t = um_office(&[ALICE, BOB], "", None);
    let mut front = start_front(&t, 2);
    let mut worker = start_worker(&t, "none", 2);
    let mut pilots = Vec::new();
    for (i, pilot) in ["1000", "1900"].into_iter().enumerate() {
        let mut caller =
            t.phone_call("call.xml", "2002", "s3cret-2002", PHONE2, 5070 + i as u16, pilot, 1, S(15));
        let c = caller.wait();
        t.check(c == 0, &format!("2002 calling {pilot}: caller sipp exited {c}, want 0"));
        pilots.push(pilot);
    }
    let w = finish(&t, &mut worker);
    finish(&t, &mut front);
    t.check(w == 0, &format!("the UM worker's sipp failed (exit {w}): a Diversion on a pilot call?"));
    let f_inv = invites(&front);
    let w_inv = invites(&worker);
    t.check(f_inv.len() == 2 && w_inv.len() == 2, "two calls at the front and two at the worker");
    for (i, pilot) in pilots.iter().enumerate() {
        let (f, w) = (&f_inv[i], &w_inv[i]);
        t.check(
            f.request_uri() == format!("sip:{pilot}@{UM}:{UM_FRONT};transport=tcp")
                && w.request_uri().starts_with(&format!("sip:{pilot}@{UM}:{UM_WORKER}")),
            &format!("call {pilot}: front {} worker {}", f.request_uri(), w.request_uri()),
        );
        for m in [f, w] {
            t.check(
                m.headers("Diversion").is_empty(),
                &format!("no Diversion on a pilot call:\n{}", m.head()),
            );
            let pai = m.headers("P-Asserted-Identity");
            t.check(
                pai == vec!["\"Bob\" <sip:2002@pbx.example.test>".to_string()],
                &format!("call {pilot}: P-Asserted-Identity {pai:?}"),
            );
        }
        t.check(f.call_id() == w.call_id() && cseq_num(w) == cseq_num(f) + 1, "same Call-ID, CSeq + 1");
    }
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 2.0, S(3));
}

/// The ISP's inbound call rings 2000, forwarded unconditionally to 1900, which UM answers
/// through its 302.
#[test]
fn isp_inbound_call_is_forwarded_to_1900_through_302() {
    let main = "2000 = { name = \"Main number\", secret = \"x-2000\", forward = { always = \"1900\" } }";
    let trunks = format!(
        "{}\n{}\n{}",
        isp_trunk("600s", "rpid"),
        um_peer(&format!("tcp:{UM}:{UM_FRONT}"), None),
        voicemail("")
    );
    let cfg = pbx_config(
        "",
        &[main, ALICE],
        &trunks,
        &[("2XXX", "extension", 0), ("1XXX", "exchange-um", 0), ("0.", "isp", 1)],
    );
    let (t, mut early) = SipTest::start_with(&cfg, |lab, spawn| vec![start_isp(&lab.isp, spawn, 600)]);
    t.wait_metric("portier_sip_trunk_registered", &["trunk=\"isp\""], 1.0, S(5));
    let mut front = start_front(&t, 1);
    let mut worker = start_worker(&t, "any", 1);
    let mut call = t.isp_calls_in();
    let code = call.wait();
    let w = finish(&t, &mut worker);
    finish(&t, &mut front);
    t.check(code == 0, &format!("the inbound call (sipp from {ISP}) exited {code}, want 0"));
    t.check(w == 0, &format!("the UM worker's sipp failed (exit {w})"));
    let f = invites(&front);
    let wi = invites(&worker);
    t.check(
        f.first().is_some_and(|m| m.request_uri() == format!("sip:1900@{UM}:{UM_FRONT};transport=tcp")),
        "the front got INVITE sip:1900@UM:5060;transport=tcp",
    );
    let wm = wi.first().unwrap_or_else(|| t.fail("the worker got no INVITE: the 302 was not followed"));
    t.check(wm.request_uri().starts_with(&format!("sip:1900@{UM}:{UM_WORKER}")), "worker Request-URI");
    let pai = wm.header("P-Asserted-Identity").unwrap_or_default();
    t.check(pai.contains("0612345678"), &format!("PAI names the outside caller: {pai:?}"));
    t.check(wm.call_id() == f[0].call_id(), "same Call-ID on the redirected INVITE");
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
    early[0].stop();
}

fn um_originate(t: &SipTest, from_ip: &str, label: &str) -> Sipp {
    let ns = if from_ip == UM { &t.lab.um } else { &t.lab.phones };
    t.sipp(
        ns,
        label,
        &[
            "-sf",
            &scenario("um_originate.xml"),
            "-t",
            "t1",
            &format!("{PBX}:5060"),
            "-i",
            from_ip,
            "-p",
            "5090",
            "-s",
            "2001",
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            "2002",
            "-set",
            "hdr1",
            "X-Lab: play-on-phone",
            "-set",
            "hdr2",
            "X-Lab-2: 1",
            "-m",
            "1",
            "-d",
            "300",
        ],
        S(12),
    )
}

/// Play-on-Phone: UM (198.18.2.20, TCP, From 2001, no credentials) calls 2002, which rings and
/// answers; the same INVITE from 198.18.0.99 gets 407 and 2002 never rings.
#[test]
fn play_on_phone_from_um_rings_2002_and_elsewhere_gets_407() {
    let t = um_office(&[ALICE, BOB], "", None);
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut bob = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(15));
    let mut um = um_originate(&t, UM, "um-play-on-phone");
    let code = um.wait();
    let b = bob.wait();
    let got: Vec<u16> = um.received().iter().filter_map(|m| m.status()).collect();
    t.check(
        !got.contains(&407) && !got.contains(&401),
        &format!("UM's INVITE (trusted address) must not be challenged, got {got:?}"),
    );
    t.check(
        um.received().iter().any(|m| m.status() == Some(200) && m.cseq_method() == "INVITE"),
        &format!("UM's Play-on-Phone call must be answered (200), got {got:?}"),
    );
    t.check(code == 0 && b == 0, &format!("sipp exits: UM {code}, 2002 {b} (want 0, 0)"));
    let inv = invites(&bob);
    let from = inv.first().and_then(|m| m.header("From")).unwrap_or_default();
    t.check(from.contains("sip:2001@pbx.example.test"), &format!("2002 rings with From 2001: {from:?}"));
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));

    // The same INVITE from an unknown address: 407, and 2002 never rings.
    let mut bob2 = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(4));
    let mut intruder = um_originate(&t, INTRUDER, "intruder-play-on-phone");
    intruder.wait();
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<u16> = intruder.received().iter().filter_map(|m| m.status()).collect();
    t.check(got.contains(&407), &format!("the INVITE from {INTRUDER} must get 407, got {got:?}"));
    t.check(!got.contains(&200), "the intruder must not be connected");
    t.check(invites(&bob2).is_empty(), "2002 must not ring for the intruder's INVITE");
    bob2.stop();
    t.check(t.metric("portier_sip_calls_total", &[&calls("answered")]) == 1.0, "still one answered call");
}

/// The auto attendant (UM answered 2001's call to 1900) REFERs the caller to 2002: 202, NOTIFY
/// sipfrag 100 then 200 (terminated) and a BYE to UM; 2002 is invited without SDP, its SDP
/// offer reaches 2001 in a re-INVITE, 2001's answer reaches 2002 in the ACK; 2001 and 2002 then
/// talk and 2001's BYE ends the call (answered).
#[test]
fn refer_from_um_transfers_caller_to_2002() {
    // Every party `direct`: the SDP of RFC 3725's flow is checked byte for byte (the relayed
    // transfer is the engine test `tests/media.rs`).
    let direct = |e: &str| e.replace(" }", ", media = \"direct\" }");
    let trunks =
        format!("{}media = \"direct\"\n\n{}", um_peer(&format!("tcp:{UM}:{UM_FRONT}"), None), voicemail(""));
    let t = SipTest::start(&pbx_config(
        "",
        &[&direct(ALICE), &direct(BOB)],
        &trunks,
        &[("2XXX", "extension", 0), ("1XXX", "exchange-um", 0)],
    ));
    t.register("2002", "s3cret-2002", PHONE2, 5070);
    let mut bob = t.phone_uas("uas.xml", "2002", PHONE2, 5070, 1, S(20));
    let port = UM_FRONT.to_string();
    let mut um = t.sipp(
        &t.lab.um,
        "um-auto-attendant-refer",
        &[
            "-sf",
            &scenario("um_refer.xml"),
            "-t",
            "t1",
            "-i",
            UM,
            "-p",
            &port,
            "-s",
            "1900",
            "-set",
            "target",
            "2002",
            "-m",
            "1",
        ],
        S(20),
    );
    t.wait_bound(&t.lab.um, "t", UM, UM_FRONT);
    let target = format!("{PBX}:5060");
    let mut caller = t.sipp(
        &t.lab.phones,
        "call-2001-to-1900-transferred",
        &[
            "-sf",
            &scenario("um_refer_caller.xml"),
            &target,
            "-i",
            PHONE1,
            "-p",
            "5070",
            "-s",
            "2001",
            "-au",
            "2001",
            "-ap",
            "s3cret-2001",
            "-auth_uri",
            "1900@pbx.example.test",
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            "1900",
            "-m",
            "1",
            "-l",
            "1",
            "-d",
            "500",
        ],
        S(20),
    );
    let c = caller.wait();
    let b = bob.wait();
    let u = finish(&t, &mut um);

    // UM's side: 202, NOTIFY 100 Trying, NOTIFY 200 OK terminated, BYE.
    let um_got = um.received();
    t.check(
        um_got.iter().any(|m| m.status() == Some(202) && m.cseq_method() == "REFER"),
        "UM's REFER must be answered 202",
    );
    let notifies: Vec<&Logged> = um_got.iter().filter(|m| m.is("NOTIFY")).collect();
    let frags: Vec<String> =
        notifies.iter().map(|m| String::from_utf8_lossy(&m.body()).trim().to_string()).collect();
    t.check(
        frags.first().is_some_and(|f| f.starts_with("SIP/2.0 100"))
            && frags.iter().any(|f| f.starts_with("SIP/2.0 200")),
        &format!("UM gets NOTIFY sipfrag 100 Trying then 200 OK, got {frags:?}"),
    );
    for n in &notifies {
        let ev = n.header("Event").unwrap_or_default();
        let ct = n.header("Content-Type").unwrap_or_default();
        t.check(
            ev.starts_with("refer") && ct.starts_with("message/sipfrag"),
            &format!("NOTIFY Event {ev:?} Content-Type {ct:?}"),
        );
    }
    if let Some(last) =
        notifies.iter().find(|m| String::from_utf8_lossy(&m.body()).starts_with("SIP/2.0 200"))
    {
        let ss = last.header("Subscription-State").unwrap_or_default();
        t.check(ss.starts_with("terminated"), &format!("final NOTIFY Subscription-State: {ss:?}"));
    }
    t.check(um_got.iter().any(|m| m.is("BYE")), "UM's leg ends with a BYE from portier");
    t.check(u == 0, &format!("the UM auto-attendant sipp exited {u}, want 0"));

    // 2002: INVITE without SDP, 200 with SDP, ACK with the caller's SDP.
    let b_inv = invites(&bob);
    let b_first = b_inv.first().unwrap_or_else(|| t.fail("2002 was never invited"));
    t.check(
        b_first.body().is_empty(),
        &format!(
            "2002 must be invited WITHOUT SDP (3pcc), got body:\n{}",
            String::from_utf8_lossy(&b_first.body())
        ),
    );
    let b_ok = bob
        .sent()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.cseq_method() == "INVITE")
        .unwrap_or_else(|| t.fail("2002 never answered"));
    let b_ack = bob.received().into_iter().find(|m| m.is("ACK"));

    // 2001: a re-INVITE carrying 2002's SDP, answered; BYE reaches 2002.
    let a_got = caller.received();
    let a_invs: Vec<&Logged> = a_got.iter().filter(|m| m.is("INVITE")).collect();
    let reinv = a_invs.first().unwrap_or_else(|| t.fail("the caller 2001 never got a re-INVITE"));
    t.check(
        reinv.body() == b_ok.body(),
        &format!(
            "the re-INVITE to 2001 must carry 2002's SDP offer byte for byte\nre-INVITE body:\n{}\n2002's 200 body:\n{}",
            String::from_utf8_lossy(&reinv.body()),
            String::from_utf8_lossy(&b_ok.body())
        ),
    );
    let a_ok = caller
        .sent()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.cseq_method() == "INVITE")
        .unwrap_or_else(|| t.fail("the caller never answered the re-INVITE"));
    let ack_body = b_ack.as_ref().map(|m| m.body()).unwrap_or_default();
    t.check(
        ack_body == a_ok.body(),
        &format!(
            "2002's ACK must carry 2001's SDP answer\nACK body:\n{}\n2001's 200 body:\n{}",
            String::from_utf8_lossy(&ack_body),
            String::from_utf8_lossy(&a_ok.body())
        ),
    );
    t.check(a_got.iter().any(|m| m.is("ACK")), "portier ACKs the caller's 200 to the re-INVITE");
    t.check(bob.received().iter().any(|m| m.is("BYE")), "2001's BYE reaches 2002");
    t.check(c == 0 && b == 0, &format!("sipp exits: caller {c}, 2002 {b} (want 0, 0)"));
    t.wait_metric("portier_sip_calls_total", &[&calls("answered")], 1.0, S(3));
    t.wait_metric("portier_sip_calls_active", &[], 0.0, S(3));
}

fn um_notify(t: &SipTest, from_ip: &str, mailbox: &str, voice: &str, label: &str) -> Sipp {
    let ns = if from_ip == UM { &t.lab.um } else { &t.lab.phones };
    t.sipp_ok(
        ns,
        label,
        &[
            "-sf",
            &scenario("um_notify.xml"),
            "-t",
            "t1",
            &format!("{PBX}:5060"),
            "-i",
            from_ip,
            "-p",
            "5091",
            "-s",
            mailbox,
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "waiting",
            "yes",
            "-set",
            "voice",
            voice,
            "-m",
            "1",
        ],
        S(8),
    )
}

fn final_status(s: &Sipp) -> Option<u16> {
    s.received().iter().filter_map(|m| m.status()).find(|c| *c >= 200)
}

/// MWI: UM's unsolicited NOTIFY for 2001 is answered 200 and reaches both of 2001's registered
/// contacts with the same body; the same NOTIFY from 198.18.0.99 is refused with 403.
#[test]
fn mwi_notify_from_um_reaches_every_contact_and_elsewhere_gets_403() {
    let t = um_office(&[ALICE, BOB], "", None);
    t.register("2001", "s3cret-2001", PHONE1, 5070);
    t.register("2001", "s3cret-2001", PHONE4, 5072);
    t.wait_metric("portier_sip_registrations", &[], 2.0, S(3));
    let mut desk = t.sipp(
        &t.lab.phones,
        "mwi-2001-desk",
        &["-sf", &scenario("um_mwi_phone.xml"), "-i", PHONE1, "-p", "5070", "-s", "2001", "-m", "1"],
        S(10),
    );
    t.wait_bound(&t.lab.phones, "u", PHONE1, 5070);
    let mut mobile = t.sipp(
        &t.lab.phones,
        "mwi-2001-mobile",
        &["-sf", &scenario("um_mwi_phone.xml"), "-i", PHONE4, "-p", "5072", "-s", "2001", "-m", "1"],
        S(10),
    );
    t.wait_bound(&t.lab.phones, "u", PHONE4, 5072);
    let um = um_notify(&t, UM, "2001", "2/0", "um-mwi-notify");
    let st = final_status(&um);
    t.check(st == Some(200), &format!("UM's NOTIFY must be answered 200, got {st:?}"));
    let (d, m) = (desk.wait(), mobile.wait());
    t.check(d == 0 && m == 0, &format!("both contacts must get the NOTIFY: sipp exits desk {d}, mobile {m}"));
    let sent = um.sent().into_iter().find(|m| m.is("NOTIFY")).unwrap();
    for p in [&desk, &mobile] {
        let n = p
            .received()
            .into_iter()
            .find(|m| m.is("NOTIFY"))
            .unwrap_or_else(|| t.fail(&format!("{} got no NOTIFY", p.label)));
        t.check(
            n.body() == sent.body(),
            &format!(
                "{}: the NOTIFY body must be UM's\ngot:\n{}\nUM sent:\n{}",
                p.label,
                String::from_utf8_lossy(&n.body()),
                String::from_utf8_lossy(&sent.body())
            ),
        );
        t.check(
            n.header("Event").is_some_and(|e| e.starts_with("message-summary"))
                && n.header("Content-Type")
                    .is_some_and(|c| c.starts_with("application/simple-message-summary")),
            &format!("{}: Event/Content-Type of the NOTIFY:\n{}", p.label, n.head()),
        );
    }
    t.wait_metric("portier_sip_mwi_received_total", &[], 1.0, S(3));
    t.wait_metric("portier_sip_mwi_delivered_total", &[], 2.0, S(3));

    let intruder = um_notify(&t, INTRUDER, "2001", "9/9", "intruder-mwi-notify");
    let st = final_status(&intruder);
    t.check(st == Some(403), &format!("a NOTIFY from {INTRUDER} must get 403, got {st:?}"));
    std::thread::sleep(Duration::from_millis(300));
    t.check(
        t.metric("portier_sip_mwi_received_total", &[]) == 1.0,
        "the refused NOTIFY is not counted as received",
    );
    t.check(t.metric("portier_sip_mwi_delivered_total", &[]) == 2.0, "the refused NOTIFY is not delivered");
}

/// MWI with mailbox_prefix "5": UM's NOTIFY for 52001 is 2001's; a phone that SUBSCRIBEs
/// (407, then credentials) gets 200, an immediate NOTIFY with that state, and the update when
/// UM sends the next one.
#[test]
fn mwi_subscription_gets_last_state_and_update_with_prefix() {
    let t = um_office(&[ALICE, BOB], "5", None);
    let first = um_notify(&t, UM, "52001", "1/0", "um-mwi-first");
    let st = final_status(&first);
    t.check(
        st == Some(200),
        &format!("UM's NOTIFY for 52001 must be answered 200 (mailbox 2001), got {st:?}"),
    );
    t.wait_metric("portier_sip_mwi_received_total", &[], 1.0, S(3));
    let target = format!("{PBX}:5060");
    let mut sub = t.sipp(
        &t.lab.phones,
        "subscribe-2001",
        &[
            "-sf",
            &scenario("um_subscribe.xml"),
            &target,
            "-i",
            PHONE3,
            "-p",
            "5075",
            "-s",
            "2001",
            "-au",
            "2001",
            "-ap",
            "s3cret-2001",
            "-auth_uri",
            "2001@pbx.example.test",
            "-set",
            "domain",
            DOMAIN,
            "-m",
            "1",
        ],
        S(15),
    );
    t.wait_until(S(5), "the subscriber's initial NOTIFY", |_| sub.received().iter().any(|m| m.is("NOTIFY")));
    let second = um_notify(&t, UM, "52001", "3/0", "um-mwi-update");
    t.check(final_status(&second) == Some(200), "UM's second NOTIFY answered 200");
    let code = sub.wait();
    let got = sub.received();
    let codes: Vec<u16> = got.iter().filter_map(|m| m.status()).collect();
    t.check(codes.contains(&407), &format!("SUBSCRIBE is challenged with 407: {codes:?}"));
    t.check(codes.contains(&200), &format!("SUBSCRIBE with credentials gets 200: {codes:?}"));
    let bodies: Vec<String> = got
        .iter()
        .filter(|m| m.is("NOTIFY"))
        .map(|m| String::from_utf8_lossy(&m.body()).into_owned())
        .collect();
    t.check(
        bodies.len() >= 2
            && bodies[0].contains("Voice-Message: 1/0")
            && bodies[0].contains("Messages-Waiting: yes")
            && bodies.last().unwrap().contains("Voice-Message: 3/0"),
        &format!("the subscriber gets the last state (1/0) then the update (3/0), got {bodies:?}"),
    );
    t.check(code == 0, &format!("subscriber sipp exited {code}, want 0"));
    t.wait_metric("portier_sip_mwi_received_total", &[], 2.0, S(3));
    t.wait_metric("portier_sip_mwi_delivered_total", &[], 2.0, S(3));
}

/// UM down: pinged every second and not listening, the trunk is down after 3 unanswered pings;
/// a call to 1000 then fails at once with 503 and a log line "trunk is down"; when UM comes
/// back, the trunk is up again.
#[test]
fn um_down_calls_fail_fast_with_503() {
    let t = um_office(&[ALICE, BOB], "", Some("1s"));
    t.wait_metric("portier_sip_trunk_up", &["trunk=\"exchange-um\""], 0.0, S(8));
    let target = format!("{PBX}:5060");
    let mut caller = t.sipp(
        &t.lab.phones,
        "call-1000-um-down",
        &[
            "-sf",
            &scenario("um_call_503.xml"),
            &target,
            "-i",
            PHONE2,
            "-p",
            "5070",
            "-s",
            "2002",
            "-au",
            "2002",
            "-ap",
            "s3cret-2002",
            "-auth_uri",
            "1000@pbx.example.test",
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            "1000",
            "-m",
            "1",
            "-l",
            "1",
        ],
        S(10),
    );
    let c = caller.wait();
    t.check(c == 0, &format!("the call to 1000 with UM down must end in 503: caller sipp exited {c}"));
    let msgs = caller.messages();
    let inv_at = msgs.iter().filter(|m| m.sent && m.is("INVITE")).map(|m| m.at).next_back().unwrap_or(0.0);
    let r503 = msgs.iter().find(|m| !m.sent && m.status() == Some(503)).map(|m| m.at).unwrap_or(f64::MAX);
    t.check(
        r503 - inv_at < 1.0,
        &format!("503 must come fast: {:.3} s after the authenticated INVITE", r503 - inv_at),
    );
    t.wait_until(S(2), "a log line saying `trunk is down`", |t| t.log().contains("trunk is down"));
    t.wait_metric("portier_sip_calls_total", &[&calls("failed")], 1.0, S(3));
    let mut um = start_um(&t.lab.um, &|ns, label, args, timeout| t.sipp(ns, label, args, timeout));
    t.wait_metric("portier_sip_trunk_up", &["trunk=\"exchange-um\""], 1.0, S(5));
    um.stop();
}

/// A self-signed certificate for UM (its own CA) in `dir`: (certificate, key) paths.
fn um_certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![UM.to_string(), "um.example.test".to_string()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// The office with UM reached over TLS at 5061, the trunk's `tls` table being `tls`.
fn office_with_um_over_tls(tls: &str) -> SipTest {
    let alice = "2001 = { name = \"Alice\", secret = \"s3cret-2001\", voicemail = true }";
    let trunks = format!("{}{tls}\n{}", um_peer(&format!("tls:{UM}:5061"), None), voicemail(""));
    SipTest::start(&pbx_config(
        "",
        &[alice, BOB],
        &trunks,
        &[("2XXX", "extension", 0), ("1XXX", "exchange-um", 0)],
    ))
}

/// 2002 calls 2001 (not registered) and is diverted to UM over TLS: the front on 5061, its
/// 302 to the worker on 5066, each behind socat with `cert` and `key`.
fn diversion_over_tls(t: &SipTest, cert: &std::path::Path, key: &std::path::Path) {
    // Debian's sipp 3.6.1 has no TLS: socat terminates TLS in front of the TCP emulators, one
    // connection each (the front's INVITE and ACK, the worker's call).
    let net = UmNet { uri_transport: "tls", front: 5061, worker: 5066, sipp_front: 5060, sipp_worker: 5065 };
    let _tls: Vec<Socat> = [(5061, 5060), (5066, 5065)]
        .into_iter()
        .map(|(tls, tcp)| Socat::tls_to_tcp(t, tls, tcp, cert, key))
        .collect();
    diversion_on(t, &net, None, "<tel:2001>;reason=unavailable;screen=no;privacy=off");
}

/// The same diversion over TLS (`address = "tls:198.18.2.20:5061"`): UM's front on TLS 5061
/// answers 302 to a TLS worker on 5066 (`transport=tls`); portier does not verify UM's
/// (self-signed) certificate, and says so at start.
#[test]
fn unregistered_diverts_to_um_over_tls() {
    let t = office_with_um_over_tls("");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = um_certificate(dir.path(), "um");
    diversion_over_tls(&t, &cert, &key);
    t.check(
        t.log().contains("SIP trunk over TLS without certificate verification"),
        "an unverified TLS trunk should be warned about at start",
    );
}

/// The trunk verifies UM's certificate (`tls = { ca, sni }`): the front and the worker it
/// redirects to (another port of the same host) are both checked, and the call reaches
/// voicemail.
#[test]
fn um_over_tls_with_its_certificate_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = um_certificate(dir.path(), "um");
    let t = office_with_um_over_tls(&format!(
        "tls = {{ ca = \"{}\", sni = \"um.example.test\" }}\n",
        cert.display()
    ));
    diversion_over_tls(&t, &cert, &key);
    t.check(!t.log().contains("without certificate verification"), "a verified trunk was warned about");
}

/// UM presents a certificate the trunk's CA did not sign: portier refuses the connection and
/// logs why; the call does not reach it.
#[test]
fn um_over_tls_with_a_wrong_certificate_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = um_certificate(dir.path(), "um");
    let (other_ca, _) = um_certificate(dir.path(), "other");
    let t = office_with_um_over_tls(&format!(
        "tls = {{ ca = \"{}\", sni = \"um.example.test\" }}\n",
        other_ca.display()
    ));
    let _front = Socat::tls_to_tcp(&t, 5061, 5060, &cert, &key);
    let mut caller = t.phone_call("call.xml", "2002", "s3cret-2002", PHONE2, 5070, "1000", 1, S(15));
    let code = caller.wait();
    t.check(code != 0, "the call reached a UM whose certificate does not verify");
    let log = t.log();
    t.check(
        log.contains("SIP: TLS handshake failed") && log.contains("certificate"),
        &format!("the refusal should be logged with its reason:\n{log}"),
    );
}

/// `socat OPENSSL-LISTEN:UM:tls -> TCP:UM:tcp` in the um namespace for one connection.
struct Socat(std::process::Child);

impl Socat {
    fn tls_to_tcp(t: &SipTest, tls: u16, tcp: u16, cert: &std::path::Path, key: &std::path::Path) -> Socat {
        let listen = format!(
            "OPENSSL-LISTEN:{tls},bind={UM},reuseaddr,cert={},key={},verify=0",
            cert.display(),
            key.display()
        );
        let child = t
            .lab
            .um
            .command("socat")
            .args([listen, format!("TCP:{UM}:{tcp}")])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("socat (Debian package socat)");
        t.wait_bound(&t.lab.um, "t", UM, tls);
        Socat(child)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
