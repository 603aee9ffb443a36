//! `Engine::drain` driven by hand: what a stopping B2BUA refuses, keeps and ends, and when.

use super::*;

/// 2001 calls 2003, who answers; the caller ACKs. Returns the callee's INVITE and the caller's
/// 200.
fn answered_call(h: &mut H, call_id: &str) -> (Message, Message) {
    let (forks, _) = call(h, "2003", call_id, SDP);
    let b = forks[0].msg.clone();
    let out = h.feed(udp("198.18.0.13:5060"), &answer(&b, 200, "OK", "carol", "198.18.0.13:5060", SDP));
    let ok = status(&out, 200).expect("200 to the caller").msg.clone();
    let to = format!("<sip:2003@pbx.example.test>;tag={}", ok.to().unwrap().tag().unwrap());
    let at = addr("198.18.0.11:5060");
    h.feed(
        udp("198.18.0.11:5060"),
        &request("ACK", "sip:2003@198.18.1.1", at, "2001", &to, call_id, 2, "z9hG4bKack", "", ""),
    );
    (b, ok)
}

fn invite_from(h: &mut H, at: &str, user: &str, number: &str, call_id: &str) -> Vec<Outgoing> {
    let ruri = format!("sip:{number}@pbx.example.test");
    let b = h.branch();
    let text = request("INVITE", &ruri, addr(at), user, &format!("<{ruri}>"), call_id, 1, &b, "", SDP);
    h.feed(udp(at), &text)
}

#[test]
fn a_call_up_continues_until_the_deadline_then_both_legs_get_a_bye() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (callee_invite, _) = answered_call(&mut h, "drain@phone");
    let deadline = h.now.mono + Duration::from_secs(3);
    h.e.drain(deadline, h.now);
    h.e.take_output();
    assert!(!h.e.drained(), "a call is still up");

    // A new call is refused at once, before any challenge, with a Retry-After.
    let out = invite_from(&mut h, "198.18.0.12:5060", "2002", "2001", "new@phone");
    let refused = status(&out, 503).expect("503 to a new INVITE");
    assert_eq!(build::header(&refused.msg, "Retry-After").as_deref(), Some("3"), "{}", text(&refused.msg));
    assert!(status(&out, 407).is_none() && method(&out, "INVITE").is_none());

    // A phone's refresh still works, for a minute at most.
    let from = addr("198.18.0.11:5060");
    let to = "<sip:2001@pbx.example.test>";
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request("REGISTER", "sip:pbx.example.test", from, "2001", to, "reg-2001-again", 1, &b, "", ""),
    );
    let c = status(&out, 401).expect("challenged as usual");
    let auth =
        creds(&c.msg, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", "2001", "s3cret-2001", 1);
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request(
            "REGISTER",
            "sip:pbx.example.test",
            from,
            "2001",
            to,
            "reg-2001-again",
            2,
            &b,
            &format!("Authorization: {auth}\r\nExpires: 3600\r\n"),
            "",
        ),
    );
    let ok = status(&out, 200).expect("200 to a REGISTER while draining");
    assert!(text(&ok.msg).contains(";expires=60"), "{}", text(&ok.msg));

    // Nothing is hung up before the deadline ...
    let out = h.tick(Duration::from_millis(2900));
    assert!(method(&out, "BYE").is_none(), "no BYE before the deadline");
    assert_eq!(h.e.calls(), 1);
    // ... and at it, both legs get a BYE.
    let out = h.tick(Duration::from_millis(100));
    let byes: Vec<&Outgoing> = out.iter().filter(|o| o.msg.method() == Some("BYE")).collect();
    assert_eq!(byes.len(), 2, "{:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>());
    assert!(byes
        .iter()
        .any(|o| o.dest.addr == addr("198.18.0.11:5060") && o.msg.call_id().unwrap() == "drain@phone"));
    assert!(byes.iter().any(|o| o.dest.addr == addr("198.18.0.13:5060")
        && o.msg.call_id().unwrap() == callee_invite.call_id().unwrap()));
    assert_eq!(h.e.calls(), 0);
    assert!(h.e.drained());
    assert!(
        h.metric("portier_sip_calls_total").contains("outcome=\"answered\"} 1"),
        "{}",
        h.metric("portier_sip_calls")
    );
    assert!(h.metric("portier_sip_calls_active").contains(" 0"));
}

#[test]
fn a_call_ringing_at_the_deadline_gets_503_and_its_fork_a_cancel() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (forks, _) = call(&mut h, "2003", "ringing@phone", SDP);
    let b = forks[0].msg.clone();
    h.feed(udp("198.18.0.13:5060"), &answer(&b, 180, "Ringing", "carol", "198.18.0.13:5060", ""));
    h.e.drain(h.now.mono + Duration::from_secs(1), h.now);
    let out = h.tick(Duration::from_secs(1));
    let refused = status(&out, 503).expect("503 to the caller");
    assert_eq!(refused.dest.addr, addr("198.18.0.11:5060"));
    assert!(method(&out, "CANCEL").is_some_and(|c| c.dest.addr == addr("198.18.0.13:5060")));
    assert!(h.e.drained());
}

#[test]
fn draining_unregisters_the_trunk_and_stops_pings_and_ends_when_answered() {
    let mut h = H::fresh(CONFIG);
    let out = h.tick(Duration::ZERO);
    let reg = method(&out, "REGISTER").unwrap().msg.clone();
    let mut ok =
        crate::sip::ReplyContext::from_message(&reg).unwrap().response(200, "OK", Some("r")).unwrap();
    ok.push_header("Expires", "120").unwrap();
    h.feed(udp("198.18.3.10:5060"), &String::from_utf8(ok.to_bytes()).unwrap());

    h.e.drain(h.now.mono + Duration::from_secs(30), h.now);
    let out = h.e.take_output();
    let unreg = method(&out, "REGISTER").expect("unREGISTER at once");
    assert!(text(&unreg.msg).contains("Expires: 0\r\n"), "{}", text(&unreg.msg));
    assert_eq!(unreg.msg.call_id().unwrap(), reg.call_id().unwrap());
    assert!(!h.e.drained(), "waiting for the unREGISTER's answer");
    let ok =
        crate::sip::ReplyContext::from_message(&unreg.msg).unwrap().response(200, "OK", Some("r")).unwrap();
    h.feed(udp("198.18.3.10:5060"), &String::from_utf8(ok.to_bytes()).unwrap());
    assert!(h.e.drained(), "no call and no unregistration left");
    // No refresh, no ping afterwards.
    for _ in 0..4 {
        let out = h.tick(Duration::from_secs(30));
        assert!(method(&out, "REGISTER").is_none() && method(&out, "OPTIONS").is_none());
    }
}

#[test]
fn without_a_drain_nothing_is_drained_and_invites_are_served() {
    let mut h = H::new();
    assert!(!h.e.drained());
    let out = invite_from(&mut h, "198.18.0.12:5060", "2002", "2001", "normal@phone");
    assert!(status(&out, 407).is_some() && status(&out, 503).is_none());
}
