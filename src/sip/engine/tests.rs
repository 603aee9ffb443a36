//! The engine driven by hand: messages in, messages out, time injected.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::metrics::Metrics;
use crate::sip::digest;

const CONFIG: &str = r#"
[sip]
listen = ["udp:198.18.1.1:5060", "tcp:198.18.1.1:5060"]
domain = "pbx.example.test"
nonce_lifetime = "60s"

[sip.extensions]
2000 = { secret = "s2000", forward = { always = "2002" } }
2001 = { name = "Alice", secret = "s3cret-2001" }
2002 = { name = "Bob", secret = "s3cret-2002", ring_time = "5s", forward = { no_answer = "2003", busy = "2003" } }
2003 = { name = "Carol", secret = "s2003", voicemail = true }

[sip.trunks.exchange-um]
kind = "peer"
address = "tcp:198.18.2.20:5060"
trusted = true
identity = "pai"
options_ping = "30s"

[sip.trunks.isp]
kind = "register"
registrar = "udp:198.18.3.10:5060"
domain = "isp.example.test"
username = "0999999999"
secret = "isp-secret"
expires = "600s"
inbound = "2000"
identity = "rpid"

[sip.voicemail]
trunk = "exchange-um"
pilot = "1000"
mailbox_prefix = "5"
mwi = true

[[sip.dialplan]]
match = "2XXX"
to = "extension"
[[sip.dialplan]]
match = "1XXX"
to = "exchange-um"
[[sip.dialplan]]
match = "0."
to = "isp"
strip = 1
"#;

const SDP: &str = "v=0\r\no=alice 1 1 IN IP4 198.18.0.11\r\ns=-\r\nc=IN IP4 198.18.0.11\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// `[sip]` of `text`. A configuration that does not mention media has every party's
/// `media = "direct"`: those tests follow the signalling, and their SDP passes unchanged (the
/// relay's tests, `tests/media.rs`, configure it).
fn sip_config(text: &str) -> SipConfig {
    let mut cfg =
        crate::config::parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}")).sip.unwrap();
    if !text.contains("media") {
        cfg.extensions.values_mut().for_each(|e| e.media = crate::sip::MediaMode::Direct);
        cfg.trunks.values_mut().for_each(|t| t.media = crate::sip::MediaMode::Direct);
    }
    cfg
}

struct H {
    e: Engine,
    now: Now,
    metrics: Metrics,
    n: u32,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(a: &str) -> Dest {
    Dest { transport: SipTransport::Udp, addr: addr(a), conn: None }
}

impl H {
    /// An engine on `config` whose start-up output (the trunk's first REGISTER, pings) is
    /// still to be read.
    fn fresh(config: &str) -> H {
        let cfg = sip_config(config);
        let metrics = Metrics::new();
        let opts = EngineOptions {
            timers: Timers::default(),
            digest_key: [7; 32],
            register_backoff: Duration::from_secs(5),
        };
        let now = Now { mono: Instant::now(), unix: 1_000_000 };
        let e = Engine::new(Arc::new(cfg), metrics.sip(), opts, now);
        H { e, now, metrics, n: 0 }
    }

    /// The test configuration, its start-up output read and dropped.
    fn new() -> H {
        let mut h = H::fresh(CONFIG);
        h.tick(Duration::ZERO);
        h.e.take_output();
        h
    }

    fn tick(&mut self, d: Duration) -> Vec<Outgoing> {
        self.now.mono += d;
        self.now.unix += d.as_secs();
        self.e.on_timer(self.now);
        self.e.take_output()
    }

    fn feed(&mut self, from: Dest, text: &str) -> Vec<Outgoing> {
        self.e.on_datagram(text.as_bytes(), from, self.now);
        self.e.take_output()
    }

    fn feed_bytes(&mut self, from: Dest, data: &[u8]) -> Vec<Outgoing> {
        self.e.on_datagram(data, from, self.now);
        self.e.take_output()
    }

    fn branch(&mut self) -> String {
        self.n += 1;
        format!("z9hG4bKtest{}", self.n)
    }

    fn metric(&self, name: &str) -> String {
        self.metrics.encode().lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
    }
}

/// A request from a phone at `from`.
#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    ruri: &str,
    from: SocketAddr,
    from_user: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    branch: &str,
    extra: &str,
    body: &str,
) -> String {
    let ctype = if body.is_empty() { String::new() } else { "Content-Type: application/sdp\r\n".into() };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{from_user}@pbx.example.test>;tag=t{from_user}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:{from_user}@{from}>\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response to `req` (as received by a phone), with `to_tag`.
fn answer(req: &Message, status: u16, reason: &str, to_tag: &str, contact: &str, body: &str) -> String {
    let mut r =
        crate::sip::ReplyContext::from_message(req).unwrap().response(status, reason, Some(to_tag)).unwrap();
    r.push_header("Contact", &format!("<sip:x@{contact}>")).unwrap();
    if !body.is_empty() {
        r.push_header("Content-Type", "application/sdp").unwrap();
        r.set_body(body.as_bytes().to_vec());
    }
    String::from_utf8(r.to_bytes()).unwrap()
}

fn find(out: &[Outgoing], pred: impl Fn(&Message) -> bool) -> Option<&Outgoing> {
    out.iter().find(|o| pred(&o.msg))
}

fn status(out: &[Outgoing], code: u16) -> Option<&Outgoing> {
    find(out, |m| m.status() == Some(code))
}

fn method<'a>(out: &'a [Outgoing], m: &str) -> Option<&'a Outgoing> {
    find(out, |x| x.method() == Some(m))
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.to_bytes()).into_owned()
}

/// Answers a challenge in `resp` for `method`/`uri` as `user`.
fn creds(
    resp: &Message,
    header: &'static str,
    method: &str,
    uri: &str,
    user: &str,
    pw: &str,
    nc: u32,
) -> String {
    let ch = resp.get(header).unwrap().value_text(header).unwrap().into_owned();
    digest::respond(&ch, method, uri, user, pw, "abcdef", nc).unwrap()
}

/// Registers `user` from `at`.
fn register(h: &mut H, user: &str, pw: &str, at: &str) {
    register_naming(h, user, pw, at, at);
}

/// `user` registers sending from `at` with `contact` (IP:port) as its Contact (and Via).
fn register_naming(h: &mut H, user: &str, pw: &str, at: &str, contact: &str) {
    let from = addr(contact);
    let to = format!("<sip:{user}@pbx.example.test>");
    let b = h.branch();
    let call_id = format!("reg-{user}-{at}");
    let out = h.feed(
        udp(at),
        &request("REGISTER", "sip:pbx.example.test", from, user, &to, &call_id, 1, &b, "", ""),
    );
    let c = status(&out, 401).expect("401 challenge");
    assert_eq!(c.msg.count("WWW-Authenticate"), 2, "SHA-256 and MD5 challenges");
    let via = c.msg.top_via().unwrap();
    assert_eq!(via.rport(), Some(Some(addr(at).port())), "RFC 3581 rport filled in");
    assert_eq!(via.received(), Some(addr(at).ip().to_string().as_str()), "received filled in");
    let auth = creds(&c.msg, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", user, pw, 1);
    let b = h.branch();
    let out = h.feed(
        udp(at),
        &request(
            "REGISTER",
            "sip:pbx.example.test",
            from,
            user,
            &to,
            &call_id,
            2,
            &b,
            &format!("Authorization: {auth}\r\n"),
            "",
        ),
    );
    let ok = status(&out, 200).unwrap_or_else(|| {
        panic!("200 for REGISTER: {:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>())
    });
    assert!(text(&ok.msg).contains(&format!("<sip:{user}@{contact}>;expires=")), "{}", text(&ok.msg));
}

/// 2001 at .11 calls `number`: returns the fork INVITEs that left and the caller's INVITE.
fn call(h: &mut H, number: &str, call_id: &str, body: &str) -> (Vec<Outgoing>, Message) {
    let (out, invite) = call_out(h, number, call_id, body);
    assert!(status(&out, 100).is_some(), "100 Trying at once");
    let forks = out.into_iter().filter(|o| o.msg.method() == Some("INVITE")).collect();
    (forks, invite)
}

/// Alice (2001 at .11) INVITEs `number`, is challenged and sends it again with credentials:
/// everything the engine sent after that, and the authenticated INVITE.
fn call_out(h: &mut H, number: &str, call_id: &str, body: &str) -> (Vec<Outgoing>, Message) {
    let at = addr("198.18.0.11:5060");
    let ruri = format!("sip:{number}@pbx.example.test");
    let to = format!("<{ruri}>");
    let b = h.branch();
    let out =
        h.feed(udp("198.18.0.11:5060"), &request("INVITE", &ruri, at, "2001", &to, call_id, 1, &b, "", body));
    let c = status(&out, 407).expect("407 first");
    let auth = creds(&c.msg, "Proxy-Authenticate", "INVITE", &ruri, "2001", "s3cret-2001", 1);
    let b = h.branch();
    let invite = request(
        "INVITE",
        &ruri,
        at,
        "2001",
        &to,
        call_id,
        2,
        &b,
        &format!("Proxy-Authorization: {auth}\r\n"),
        body,
    );
    let out = h.feed(udp("198.18.0.11:5060"), &invite);
    (out, crate::sip::parse_datagram(invite.as_bytes()).unwrap())
}

/// 2002 at .12 sends REGISTER number `cseq` with `auth`.
fn register_2002(h: &mut H, cseq: u32, auth: &str) -> Vec<Outgoing> {
    let from = addr("198.18.0.12:5060");
    let b = h.branch();
    let to = "<sip:2002@pbx.example.test>";
    let extra = format!("Authorization: {auth}\r\n");
    h.feed(
        udp("198.18.0.12:5060"),
        &request("REGISTER", "sip:pbx.example.test", from, "2002", to, "r2", cseq, &b, &extra, ""),
    )
}

#[test]
fn a_phone_registers_with_digest_and_a_wrong_password_is_refused() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    assert!(
        h.metric("portier_sip_registrations").contains(" 1"),
        "{}",
        h.metric("portier_sip_registrations")
    );
    // Wrong password: challenged again.
    let from = addr("198.18.0.12:5060");
    let b = h.branch();
    let to = "<sip:2002@pbx.example.test>";
    let out = h.feed(
        udp("198.18.0.12:5060"),
        &request("REGISTER", "sip:pbx.example.test", from, "2002", to, "r2", 1, &b, "", ""),
    );
    let c = status(&out, 401).unwrap();
    let auth = creds(&c.msg, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", "2002", "wrong", 1);
    let out = register_2002(&mut h, 2, &auth);
    assert!(status(&out, 401).is_some() && status(&out, 200).is_none());
    // A stale nonce (older than nonce_lifetime) with the right password: stale=true.
    let auth =
        creds(&c.msg, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", "2002", "s3cret-2002", 1);
    h.tick(Duration::from_secs(61));
    let out = register_2002(&mut h, 3, &auth);
    let s = status(&out, 401).expect("stale challenge");
    assert!(text(&s.msg).contains("stale=true"), "{}", text(&s.msg));
}

#[test]
fn extension_to_extension_call_is_two_dialogs_with_sdp_passed_through() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (forks, a_invite) = call(&mut h, "2003", "call-a@phone", SDP);
    assert_eq!(forks.len(), 1);
    let b = &forks[0];
    assert_eq!(b.dest.addr, addr("198.18.0.13:5060"));
    assert_ne!(b.msg.call_id().unwrap(), "call-a@phone", "topology hiding: own Call-ID");
    assert_eq!(b.msg.body(), SDP.as_bytes(), "SDP unchanged");
    assert!(text(&b.msg).contains("\"Alice\" <sip:2001@pbx.example.test>"), "{}", text(&b.msg));
    let head = text(&b.msg);
    let head = head.split("\r\n\r\n").next().unwrap();
    assert!(!head.contains("198.18.0.11"), "caller address leaked: {head}");

    let out =
        h.feed(udp("198.18.0.13:5060"), &answer(&b.msg, 180, "Ringing", "callee", "198.18.0.13:5060", ""));
    let ringing = status(&out, 180).expect("180 relayed");
    assert_eq!(ringing.dest.addr, addr("198.18.0.11:5060"));
    assert_eq!(ringing.msg.call_id().unwrap(), "call-a@phone");

    let answer_sdp = SDP.replace("alice", "carol");
    let out = h
        .feed(udp("198.18.0.13:5060"), &answer(&b.msg, 200, "OK", "callee", "198.18.0.13:5060", &answer_sdp));
    let ack = method(&out, "ACK").expect("ACK to callee");
    assert_eq!(ack.dest.addr, addr("198.18.0.13:5060"));
    let ok = status(&out, 200).expect("200 to caller");
    assert_eq!(ok.msg.body(), answer_sdp.as_bytes());
    assert!(h.metric("portier_sip_calls_active").contains(" 1"));

    // Without an ACK the 200 is re-sent after T1.
    let out = h.tick(Duration::from_millis(600));
    assert!(status(&out, 200).is_some(), "2xx retransmitted until ACK");
    let a_tag = ok.msg.to().unwrap().tag().unwrap().to_string();
    let to = format!("<sip:2003@pbx.example.test>;tag={a_tag}");
    let b1 = h.branch();
    let at = addr("198.18.0.11:5060");
    h.feed(
        udp("198.18.0.11:5060"),
        &request("ACK", "sip:2003@198.18.1.1", at, "2001", &to, "call-a@phone", 2, &b1, "", ""),
    );
    let out = h.tick(Duration::from_secs(2));
    assert!(status(&out, 200).is_none(), "no retransmission after the ACK");

    // Caller hangs up: 200 to the caller, BYE on the far leg.
    let b2 = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request("BYE", "sip:2003@198.18.1.1", at, "2001", &to, "call-a@phone", 3, &b2, "", ""),
    );
    assert!(status(&out, 200).is_some());
    let bye = method(&out, "BYE").expect("BYE to callee");
    assert_eq!(bye.msg.call_id().unwrap(), b.msg.call_id().unwrap());
    assert!(
        h.metric("portier_sip_calls_total").contains("outcome=\"answered\"} 1"),
        "{}",
        h.metric("portier_sip_calls")
    );
    let _ = a_invite;
}

#[test]
fn hold_re_invite_and_update_from_the_callee_are_relayed_to_the_caller() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (forks, _) = call(&mut h, "2003", "hold@phone", SDP);
    let b = forks[0].msg.clone();
    let out = h.feed(udp("198.18.0.13:5060"), &answer(&b, 200, "OK", "carol", "198.18.0.13:5060", SDP));
    let ok = status(&out, 200).unwrap().msg.clone();
    let a_tag = ok.to().unwrap().tag().unwrap().to_string();
    // The callee puts the call on hold: a re-INVITE in its dialog with a=sendonly.
    let hold_sdp = SDP.replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n");
    let b_from = b.get("From").unwrap().value_text("From").unwrap().into_owned();
    let reinvite = format!(
        "INVITE sip:2001@198.18.1.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.13:5060;branch=z9hG4bKhold1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@198.18.0.13>;tag=carol\r\nTo: {b_from}\r\nCall-ID: {}\r\nCSeq: 7 INVITE\r\n\
         Contact: <sip:x@198.18.0.13:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold_sdp}",
        b.call_id().unwrap(),
        hold_sdp.len()
    );
    let out = h.feed(udp("198.18.0.13:5060"), &reinvite);
    let to_a = method(&out, "INVITE").expect("re-INVITE relayed to the caller");
    assert_eq!(to_a.dest.addr, addr("198.18.0.11:5060"));
    assert_eq!(to_a.msg.call_id().unwrap(), "hold@phone");
    assert_eq!(to_a.msg.body(), hold_sdp.as_bytes());
    assert!(
        text(&to_a.msg).contains(&format!("From: <sip:2003@pbx.example.test>;tag={a_tag}")),
        "{}",
        text(&to_a.msg)
    );
    // The caller accepts with a=recvonly: 200 back to the callee, and the caller is ACKed.
    let held = SDP.replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n");
    let out =
        h.feed(udp("198.18.0.11:5060"), &answer(&to_a.msg, 200, "OK", "t2001", "198.18.0.11:5060", &held));
    let ack = method(&out, "ACK").expect("ACK to the caller's 200");
    assert_eq!(ack.msg.call_id().unwrap(), "hold@phone");
    let to_b =
        find(&out, |m| m.status() == Some(200) && m.cseq().unwrap().seq == 7).expect("200 to the callee");
    assert_eq!(to_b.dest.addr, addr("198.18.0.13:5060"));
    assert_eq!(to_b.msg.body(), held.as_bytes());
    // UPDATE goes the same way.
    let update = reinvite
        .replace("INVITE sip:2001", "UPDATE sip:2001")
        .replace("7 INVITE", "8 UPDATE")
        .replace("hold1", "upd1");
    let out = h.feed(udp("198.18.0.13:5060"), &update);
    assert!(method(&out, "UPDATE").is_some_and(|u| u.dest.addr == addr("198.18.0.11:5060")));
}

#[test]
fn busy_forwards_and_no_answer_goes_to_voicemail_with_one_diversion() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    // 2003 is not registered: 2002 busy -> forward busy=2003 -> unavailable -> voicemail.
    let (forks, _) = call(&mut h, "2002", "busy@phone", SDP);
    let b = &forks[0];
    let out =
        h.feed(udp("198.18.0.12:5060"), &answer(&b.msg, 486, "Busy Here", "bob", "198.18.0.12:5060", ""));
    let vm = method(&out, "INVITE").expect("INVITE to voicemail");
    assert_eq!(vm.dest.transport, SipTransport::Tcp);
    assert_eq!(vm.dest.addr, addr("198.18.2.20:5060"));
    let t = text(&vm.msg);
    assert!(t.starts_with("INVITE sip:1000@198.18.2.20:5060;transport=tcp SIP/2.0"), "{t}");
    assert_eq!(vm.msg.count("Diversion"), 1, "{t}");
    assert!(t.contains("Diversion: <tel:52003>;reason=unavailable;screen=no;privacy=off"), "{t}");
    assert!(t.contains("P-Asserted-Identity: \"Alice\" <sip:2001@pbx.example.test>"), "{t}");
}

#[test]
fn ring_time_cancels_and_forwards_and_caller_cancel_reaches_the_callee() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (forks, a_invite) = call(&mut h, "2002", "ring@phone", SDP);
    let a_branch = a_invite.top_via().unwrap().branch().unwrap().to_string();
    let b = &forks[0];
    h.feed(udp("198.18.0.12:5060"), &answer(&b.msg, 180, "Ringing", "bob", "198.18.0.12:5060", ""));
    let out = h.tick(Duration::from_secs(5));
    let cancel = method(&out, "CANCEL").expect("CANCEL after ring_time");
    assert_eq!(cancel.dest.addr, addr("198.18.0.12:5060"));
    let fwd = method(&out, "INVITE").expect("forwarded to 2003");
    assert_eq!(fwd.dest.addr, addr("198.18.0.13:5060"));

    // The caller gives up: 200 to CANCEL, 487 to the INVITE, CANCEL to 2003.
    h.feed(udp("198.18.0.13:5060"), &answer(&fwd.msg, 180, "Ringing", "carol", "198.18.0.13:5060", ""));
    let at = addr("198.18.0.11:5060");
    let mut cancel_text = request(
        "CANCEL",
        "sip:2002@pbx.example.test",
        at,
        "2001",
        "<sip:2002@pbx.example.test>",
        "ring@phone",
        2,
        &a_branch,
        "",
        "",
    );
    cancel_text = cancel_text.replace("Contact: <sip:2001@198.18.0.11:5060>\r\n", "");
    let out = h.feed(udp("198.18.0.11:5060"), &cancel_text);
    assert!(
        find(&out, |m| m.status() == Some(200) && m.cseq().unwrap().method == "CANCEL").is_some(),
        "{out:?}"
    );
    assert!(status(&out, 487).is_some(), "487 to the INVITE");
    let c2 = method(&out, "CANCEL").expect("CANCEL to 2003");
    assert_eq!(c2.dest.addr, addr("198.18.0.13:5060"));
    assert!(
        h.metric("portier_sip_calls_total").contains("outcome=\"cancelled\"} 1"),
        "{}",
        h.metric("portier_sip_calls")
    );
}

#[test]
fn unauthenticated_invite_to_an_outside_number_is_challenged_never_relayed() {
    let mut h = H::new();
    let intruder = |h: &mut H, cseq: u32, extra: &str| {
        let b = h.branch();
        let (ruri, to) = ("sip:00112345678@pbx.example.test", "<sip:00112345678@pbx.example.test>");
        let text = request("INVITE", ruri, addr("198.18.0.99:5060"), "evil", to, "x", cseq, &b, extra, SDP);
        h.feed(udp("198.18.0.99:5060"), &text)
    };
    let out = intruder(&mut h, 1, "");
    assert!(status(&out, 407).is_some());
    assert!(method(&out, "INVITE").is_none());
    // Made-up credentials for a real extension are refused too.
    let fake = "Digest username=\"2001\", realm=\"pbx.example.test\", nonce=\"abc\", uri=\"sip:00112345678@pbx.example.test\", response=\"0123\"";
    let out = intruder(&mut h, 2, &format!("Proxy-Authorization: {fake}\r\n"));
    assert!(status(&out, 407).is_some() && method(&out, "INVITE").is_none());
}

#[test]
fn outside_call_strips_and_uses_rpid_and_answers_the_providers_challenge() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let (forks, _) = call(&mut h, "00112345678", "out@phone", SDP);
    let isp = &forks[0];
    assert_eq!(isp.dest.addr, addr("198.18.3.10:5060"));
    let t = text(&isp.msg);
    assert!(t.starts_with("INVITE sip:0112345678@isp.example.test SIP/2.0"), "{t}");
    assert!(t.contains("From: <sip:0999999999@isp.example.test>;tag="), "{t}");
    assert!(
        t.contains(
            "Remote-Party-ID: \"Alice\" <sip:2001@pbx.example.test>;party=calling;screen=yes;privacy=off"
        ),
        "{t}"
    );
    // The provider challenges: the INVITE comes again with our trunk credentials.
    let mut ch =
        crate::sip::ReplyContext::from_message(&isp.msg).unwrap().response(407, "Auth", Some("isp")).unwrap();
    ch.push_header(
        "Proxy-Authenticate",
        "Digest realm=\"isp.example.test\", nonce=\"n1\", qop=\"auth\", algorithm=MD5",
    )
    .unwrap();
    let out = h.feed(udp("198.18.3.10:5060"), &String::from_utf8(ch.to_bytes()).unwrap());
    assert!(method(&out, "ACK").is_some(), "ACK for the 407");
    let again = method(&out, "INVITE").expect("INVITE with credentials");
    let t2 = text(&again.msg);
    assert!(t2.contains("Proxy-Authorization: Digest username=\"0999999999\""), "{t2}");
    assert_eq!(again.msg.call_id().unwrap(), isp.msg.call_id().unwrap());
    assert_eq!(again.msg.cseq().unwrap().seq, 2);
}

#[test]
fn inbound_trunk_call_rings_its_extension_and_follows_forward_always() {
    let mut h = H::new();
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    let from = addr("198.18.3.10:5060");
    let b = h.branch();
    let mut inv = request(
        "INVITE",
        "sip:0999999999@198.18.1.1",
        from,
        "0611223344",
        "<sip:0999999999@isp.example.test>",
        "in@isp",
        1,
        &b,
        "",
        SDP,
    );
    inv = inv.replace("@pbx.example.test>;tag=t0611223344", "@isp.example.test>;tag=isp1");
    let out = h.feed(udp("198.18.3.10:5060"), &inv);
    assert!(status(&out, 407).is_none(), "the provider is not challenged");
    let fwd = method(&out, "INVITE").expect("2000 forwards always to 2002");
    assert_eq!(fwd.dest.addr, addr("198.18.0.12:5060"));
    assert!(text(&fwd.msg).contains("<sip:0611223344@pbx.example.test>"), "{}", text(&fwd.msg));
}

#[test]
fn trunk_registers_with_digest_and_refreshes_before_expiry() {
    let mut h = H::fresh(CONFIG);
    let out = h.tick(Duration::ZERO);
    let reg = method(&out, "REGISTER").expect("trunk REGISTER");
    assert_eq!(reg.dest.addr, addr("198.18.3.10:5060"));
    let mut ch = crate::sip::ReplyContext::from_message(&reg.msg)
        .unwrap()
        .response(401, "Unauthorized", Some("r"))
        .unwrap();
    ch.push_header("WWW-Authenticate", "Digest realm=\"isp.example.test\", nonce=\"n9\", qop=\"auth\"")
        .unwrap();
    let out = h.feed(udp("198.18.3.10:5060"), &String::from_utf8(ch.to_bytes()).unwrap());
    let reg2 = method(&out, "REGISTER").expect("REGISTER with credentials");
    let t = text(&reg2.msg);
    assert!(
        t.contains("Authorization: Digest username=\"0999999999\", realm=\"isp.example.test\", nonce=\"n9\""),
        "{t}"
    );
    let mut ok =
        crate::sip::ReplyContext::from_message(&reg2.msg).unwrap().response(200, "OK", Some("r")).unwrap();
    ok.push_header("Expires", "120").unwrap();
    h.feed(udp("198.18.3.10:5060"), &String::from_utf8(ok.to_bytes()).unwrap());
    assert!(
        h.metric("portier_sip_trunk_registered").contains("trunk=\"isp\"} 1"),
        "{}",
        h.metric("portier_sip_trunk")
    );
    assert!(method(&h.tick(Duration::from_secs(80)), "REGISTER").is_none(), "not before 90 s");
    assert!(method(&h.tick(Duration::from_secs(11)), "REGISTER").is_some(), "refresh 30 s before expiry");
}

#[test]
fn invite_is_retransmitted_over_udp_and_a_silent_phone_times_out() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (forks, _) = call(&mut h, "2003", "silent@phone", SDP);
    let first = forks[0].msg.to_bytes();
    let out = h.tick(Duration::from_millis(500));
    let again = method(&out, "INVITE").expect("retransmitted after T1");
    assert_eq!(again.msg.to_bytes(), first);
}

#[test]
fn mwi_from_voicemail_reaches_contacts_and_elsewhere_is_refused() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let body =
        "Messages-Waiting: yes\r\nMessage-Account: sip:52001@pbx.example.test\r\nVoice-Message: 1/0\r\n";
    let notify = |from: &str, b: &str| {
        format!(
            "NOTIFY sip:52001@198.18.1.1 SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch={b}\r\nMax-Forwards: 70\r\n\
             From: <sip:um@um>;tag=u1\r\nTo: <sip:52001@pbx>\r\nCall-ID: mwi-{b}\r\nCSeq: 1 NOTIFY\r\n\
             Event: message-summary\r\nContent-Type: application/simple-message-summary\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let um = Dest { transport: SipTransport::Tcp, addr: addr("198.18.2.20:40000"), conn: Some(1) };
    let out = h.feed(um, &notify("198.18.2.20:40000", "z9hG4bKm1"));
    assert!(status(&out, 200).is_some(), "{:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>());
    let n = method(&out, "NOTIFY").expect("NOTIFY to the phone");
    assert_eq!(n.dest.addr, addr("198.18.0.11:5060"));
    assert_eq!(n.msg.body(), body.as_bytes());
    let out = h.feed(udp("198.18.0.99:5060"), &notify("198.18.0.99:5060", "z9hG4bKm2").replace("TCP", "UDP"));
    assert!(status(&out, 403).is_some() && method(&out, "NOTIFY").is_none());
}

#[test]
fn max_forwards_zero_and_loops_are_refused() {
    let mut h = H::new();
    let from = addr("198.18.0.11:5060");
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request(
            "OPTIONS",
            "sip:pbx.example.test",
            from,
            "2001",
            "<sip:pbx.example.test>",
            "o",
            1,
            "z9hG4bKo1",
            "",
            "",
        )
        .replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert!(status(&out, 483).is_some());
    let looped = request(
        "OPTIONS",
        "sip:pbx.example.test",
        from,
        "2001",
        "<sip:pbx.example.test>",
        "o2",
        1,
        "z9hG4bKo2",
        "",
        "",
    )
    .replace(
        "Max-Forwards: 70\r\n",
        "Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK-pt-abc\r\nMax-Forwards: 70\r\n",
    );
    let out = h.feed(udp("198.18.0.11:5060"), &looped);
    assert!(status(&out, 482).is_some());
}

/// UM (answered as umtag) REFERs the call it got as `fork` to 2002; `pbx` is portier's host.
fn um_refers_to_2002(fork: &Message, pbx: &str) -> String {
    let fork_from = fork.get("From").unwrap().value_text("From").unwrap().into_owned();
    format!(
        "REFER sip:2001@{pbx}:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.2.20:5060;branch=z9hG4bKref1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1900@198.18.2.20>;tag=umtag\r\nTo: {fork_from}\r\nCall-ID: {}\r\nCSeq: 5 REFER\r\n\
         Contact: <sip:um@198.18.2.20:5060;transport=tcp>\r\nRefer-To: <sip:2002@pbx.example.test>\r\nContent-Length: 0\r\n\r\n",
        fork.call_id().unwrap()
    )
}

#[test]
fn refer_from_voicemail_transfers_the_caller_with_third_party_sdp() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    let (forks, _) = call(&mut h, "1900", "aa@phone", SDP);
    let um_inv = &forks[0];
    assert_eq!(um_inv.dest.addr, addr("198.18.2.20:5060"));
    let um = Dest { transport: SipTransport::Tcp, addr: addr("198.18.2.20:5060"), conn: Some(9) };
    let um_sdp = SDP.replace("alice", "um");
    let out = h.feed(um, &answer(&um_inv.msg, 200, "OK", "umtag", "198.18.2.20:5060", &um_sdp));
    let ok = status(&out, 200).expect("answered");
    let a_tag = ok.msg.to().unwrap().tag().unwrap().to_string();
    let at = addr("198.18.0.11:5060");
    let to = format!("<sip:1900@pbx.example.test>;tag={a_tag}");
    h.feed(
        udp("198.18.0.11:5060"),
        &request("ACK", "sip:1900@198.18.1.1", at, "2001", &to, "aa@phone", 2, "z9hG4bKack1", "", ""),
    );

    let out = h.feed(um, &um_refers_to_2002(&um_inv.msg, "198.18.1.1"));
    assert!(status(&out, 202).is_some(), "{:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>());
    let n = method(&out, "NOTIFY").expect("sipfrag NOTIFY to UM");
    assert!(text(&n.msg).contains("SIP/2.0 100 Trying"));
    let inv = method(&out, "INVITE").expect("INVITE to the transfer target");
    assert_eq!(inv.dest.addr, addr("198.18.0.12:5060"));
    assert!(inv.msg.body().is_empty(), "target invited without SDP");

    let bob_sdp = SDP.replace("alice", "bob");
    let out =
        h.feed(udp("198.18.0.12:5060"), &answer(&inv.msg, 200, "OK", "bobtag", "198.18.0.12:5060", &bob_sdp));
    let reinv = find(&out, |m| m.method() == Some("INVITE") && m.call_id().unwrap() == "aa@phone")
        .expect("re-INVITE to caller");
    assert_eq!(reinv.msg.body(), bob_sdp.as_bytes());
    assert!(find(&out, |m| m.method() == Some("NOTIFY") && text(m).contains("SIP/2.0 200 OK")).is_some());
    assert!(find(&out, |m| m.method() == Some("BYE")
        && m.call_id().unwrap() == um_inv.msg.call_id().unwrap())
    .is_some());

    let alice_answer = SDP.replace("o=alice 1 1", "o=alice 1 2");
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &answer(&reinv.msg, 200, "OK", "t2001", "198.18.0.11:5060", &alice_answer),
    );
    let ack_a =
        find(&out, |m| m.method() == Some("ACK") && m.call_id().unwrap() == "aa@phone").expect("ACK caller");
    assert!(ack_a.msg.body().is_empty());
    let ack_b =
        find(&out, |m| m.method() == Some("ACK") && m.call_id().unwrap() == inv.msg.call_id().unwrap())
            .expect("ACK target");
    assert_eq!(ack_b.msg.body(), alice_answer.as_bytes());
}

#[test]
fn a_subscribed_phone_gets_the_initial_state_and_updates() {
    let mut h = H::new();
    let at = addr("198.18.0.11:5060");
    let sub = |h: &mut H, cseq: u32, extra: &str| {
        let b = h.branch();
        let to = "<sip:2001@pbx.example.test>";
        let extra = format!("Event: message-summary\r\nExpires: 600\r\n{extra}");
        h.feed(
            udp("198.18.0.11:5060"),
            &request("SUBSCRIBE", "sip:2001@pbx.example.test", at, "2001", to, "sub1", cseq, &b, &extra, ""),
        )
    };
    let out = sub(&mut h, 1, "");
    let c = status(&out, 407).expect("SUBSCRIBE is authenticated");
    let auth = creds(
        &c.msg,
        "Proxy-Authenticate",
        "SUBSCRIBE",
        "sip:2001@pbx.example.test",
        "2001",
        "s3cret-2001",
        1,
    );
    let out = sub(&mut h, 2, &format!("Proxy-Authorization: {auth}\r\n"));
    assert!(status(&out, 200).is_some());
    let n = method(&out, "NOTIFY").expect("initial NOTIFY");
    assert_eq!(n.msg.call_id().unwrap(), "sub1", "in the subscription's dialog");
    assert!(text(&n.msg).contains("Messages-Waiting: no"), "{}", text(&n.msg));
    let body = "Messages-Waiting: yes\r\nMessage-Account: sip:52001@pbx.example.test\r\n";
    let um = Dest { transport: SipTransport::Tcp, addr: addr("198.18.2.20:40000"), conn: Some(1) };
    let notify = format!(
        "NOTIFY sip:52001@198.18.1.1 SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.2.20:40000;branch=z9hG4bKm9\r\nMax-Forwards: 70\r\n\
         From: <sip:um@um>;tag=u1\r\nTo: <sip:52001@pbx>\r\nCall-ID: mwi9\r\nCSeq: 1 NOTIFY\r\n\
         Event: message-summary\r\nContent-Type: application/simple-message-summary\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = h.feed(um, &notify);
    let update = find(&out, |m| m.method() == Some("NOTIFY") && m.call_id().unwrap() == "sub1")
        .expect("update NOTIFY");
    assert_eq!(update.msg.body(), body.as_bytes());
    assert!(h.metric("portier_sip_mwi_delivered").contains(" 2"), "{}", h.metric("portier_sip_mwi"));
}

#[test]
fn credentials_with_an_algorithm_not_offered_are_refused() {
    let cfg = CONFIG
        .replace("nonce_lifetime = \"60s\"", "nonce_lifetime = \"60s\"\ndigest_algorithms = [\"SHA-256\"]");
    let mut h = H::fresh(&cfg);
    let out = register_2002(&mut h, 1, "");
    let c = status(&out, 401).unwrap();
    assert_eq!(c.msg.count("WWW-Authenticate"), 1);
    let ch = c.msg.get("WWW-Authenticate").unwrap().value_text("x").unwrap().into_owned();
    assert!(ch.contains("algorithm=SHA-256"), "{ch}");
    let ok =
        digest::respond(&ch, "REGISTER", "sip:pbx.example.test", "2002", "s3cret-2002", "c1", 1).unwrap();
    assert!(status(&register_2002(&mut h, 2, &ok), 200).is_some(), "SHA-256 accepted");
    let md5 = ch.replace("algorithm=SHA-256", "algorithm=MD5");
    let bad =
        digest::respond(&md5, "REGISTER", "sip:pbx.example.test", "2002", "s3cret-2002", "c2", 1).unwrap();
    let out = register_2002(&mut h, 3, &bad);
    assert!(status(&out, 401).is_some() && status(&out, 200).is_none(), "MD5 not offered, refused");
}

mod drain;
mod limits;
mod media;
mod reconfigure;

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<String> {
        let at = addr("198.18.0.11:5060");
        vec![
            request("REGISTER", "sip:pbx.example.test", at, "2001", "<sip:2001@pbx.example.test>", "r", 1, "z9hG4bKa", "", ""),
            request("INVITE", "sip:2002@pbx.example.test", at, "2001", "<sip:2002@pbx.example.test>", "i", 1, "z9hG4bKb", "Proxy-Authorization: Digest username=\"2001\", realm=\"pbx.example.test\", nonce=\"x\", uri=\"sip:2002@pbx.example.test\", response=\"0\", qop=auth, nc=00000001, cnonce=\"c\"\r\n", SDP),
            request("BYE", "sip:2002@pbx.example.test", at, "2001", "<sip:2002@pbx.example.test>;tag=z", "i", 2, "z9hG4bKc", "", ""),
            request("NOTIFY", "sip:2001@pbx.example.test", at, "2001", "<sip:2001@pbx.example.test>", "n", 1, "z9hG4bKd", "Event: message-summary\r\n", "Messages-Waiting: yes\r\n"),
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK-pt-0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: q\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_string(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the engine; whatever it answers is well-formed.
        #[test]
        fn arbitrary_datagrams_are_refused_cleanly(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut h = H::new();
            let out = h.feed_bytes(udp("198.18.0.99:5060"), &data);
            for o in out {
                prop_assert!(crate::sip::parse_datagram(&o.msg.to_bytes()).is_ok());
            }
        }

        /// A draining engine (a call up, the deadline passing) fed arbitrary bytes never
        /// panics and sends only well-formed messages.
        #[test]
        fn a_draining_engine_refuses_arbitrary_datagrams_cleanly(
            data in proptest::collection::vec(any::<u8>(), 0..1500),
            which in 0usize..5,
        ) {
            let mut h = H::new();
            register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
            h.e.drain(h.now.mono + Duration::from_secs(1), h.now);
            let mut out = h.e.take_output();
            out.extend(h.feed_bytes(udp("198.18.0.99:5060"), &data));
            out.extend(h.feed_bytes(udp("198.18.0.11:5060"), samples()[which].as_bytes()));
            out.extend(h.tick(Duration::from_secs(2)));
            prop_assert!(h.e.drained());
            for o in out {
                prop_assert!(crate::sip::parse_datagram(&o.msg.to_bytes()).is_ok(), "{}", text(&o.msg));
            }
        }

        /// Valid messages with bytes overwritten, fed after a registration, never panic and
        /// never produce an unparsable message.
        #[test]
        fn mutated_messages_are_refused_cleanly(
            which in 0usize..5,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut h = H::new();
            register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
            let mut bytes = samples()[which].clone().into_bytes();
            for (i, b) in edits {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            let out = h.feed_bytes(udp("198.18.0.11:5060"), &bytes);
            let out2 = h.tick(Duration::from_secs(40));
            for o in out.into_iter().chain(out2) {
                prop_assert!(crate::sip::parse_datagram(&o.msg.to_bytes()).is_ok(), "{}", text(&o.msg));
            }
        }
    }
}
