//! `Engine::reconfigure` driven by hand: registrations, calls and trunk timers across a change
//! of configuration.

use super::*;

impl H {
    /// Applies configuration text `config`; returns the report and what was sent.
    fn reconfigure(&mut self, config: &str) -> (ReconfigureReport, Vec<Outgoing>) {
        let r = self.e.reconfigure(Arc::new(sip_config(config)), self.now);
        (r, self.e.take_output())
    }
}

fn respond_to(req: &Message, status: u16, extra: &[(&str, &str)]) -> String {
    let mut r =
        crate::sip::ReplyContext::from_message(req).unwrap().response(status, "X", Some("r")).unwrap();
    for (h, v) in extra {
        r.push_header(h, v).unwrap();
    }
    String::from_utf8(r.to_bytes()).unwrap()
}

const ISP: &str = "198.18.3.10:5060";

/// Starts on `config` and brings trunk `isp` to registered (401, credentials, 200 for 120 s).
/// Returns the REGISTER that was accepted.
fn with_isp_registered(config: &str) -> (H, Message) {
    let mut h = H::fresh(config);
    let out = h.tick(Duration::ZERO);
    let reg = method(&out, "REGISTER").expect("trunk REGISTER").msg.clone();
    let ch = "Digest realm=\"isp.example.test\", nonce=\"n9\", qop=\"auth\"";
    let out = h.feed(udp(ISP), &respond_to(&reg, 401, &[("WWW-Authenticate", ch)]));
    let reg2 = method(&out, "REGISTER").expect("REGISTER with credentials").msg.clone();
    h.feed(udp(ISP), &respond_to(&reg2, 200, &[("Expires", "120")]));
    assert!(h.metric("portier_sip_trunk_registered").contains("trunk=\"isp\"} 1"));
    (h, reg2)
}

/// 2001 calls 2003, who answers; the caller's ACK arrives. Returns (callee's INVITE, To for
/// the caller's in-dialog requests).
fn answered_call(h: &mut H, call_id: &str) -> (Message, String) {
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
    (b, to)
}

/// The caller hangs up: the BYE must reach the callee on its leg.
fn caller_hangs_up(h: &mut H, call_id: &str, to: &str, callee_invite: &Message) {
    let at = addr("198.18.0.11:5060");
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request("BYE", "sip:2003@198.18.1.1", at, "2001", to, call_id, 3, &b, "", ""),
    );
    assert!(status(&out, 200).is_some(), "200 to the caller's BYE");
    let bye = method(&out, "BYE").expect("BYE relayed to the callee");
    assert_eq!(bye.msg.call_id().unwrap(), callee_invite.call_id().unwrap());
}

#[test]
fn the_same_configuration_changes_nothing_and_touches_no_timer() {
    let (mut h, accepted) = with_isp_registered(CONFIG);
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (b, to) = answered_call(&mut h, "same@phone");
    h.tick(Duration::from_secs(40));
    let (r, out) = h.reconfigure(CONFIG);
    assert!(r.is_unchanged(), "{r:?}");
    assert_eq!(r.to_string(), "no change");
    assert!(out.is_empty(), "nothing sent: {:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>());
    // The refresh stays where it was: 90 s after the 200, not earlier and not again at once.
    assert!(method(&h.tick(Duration::from_secs(40)), "REGISTER").is_none(), "not before 90 s");
    let refresh = h.tick(Duration::from_secs(11));
    let reg = method(&refresh, "REGISTER").expect("refresh at 90 s");
    assert_eq!(reg.msg.call_id().unwrap(), accepted.call_id().unwrap(), "same binding");
    assert_eq!(reg.msg.cseq().unwrap().seq, accepted.cseq().unwrap().seq + 1);
    assert!(
        h.metric("portier_sip_registrations").contains(" 2"),
        "{}",
        h.metric("portier_sip_registrations")
    );
    caller_hangs_up(&mut h, "same@phone", &to, &b);
}

#[test]
fn a_removed_extension_loses_its_contacts_while_calls_go_on() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    let (b, to) = answered_call(&mut h, "removed@phone");
    // 2003 leaves the configuration (and with it the only user of voicemail = true).
    let cfg = CONFIG
        .replace("2003 = { name = \"Carol\", secret = \"s2003\", voicemail = true }\n", "")
        .replace("forward = { no_answer = \"2003\", busy = \"2003\" }", "forward = { no_answer = \"2001\" }");
    let (r, _) = h.reconfigure(&cfg);
    assert_eq!(r.extensions.removed, ["2003"]);
    assert_eq!(r.extensions.changed, ["2002"]);
    assert_eq!(r.registrations_dropped, 1);
    assert!(r.trunks.is_empty() && r.needs_restart.is_empty(), "{r:?}");
    assert!(
        h.metric("portier_sip_registrations").contains(" 1"),
        "{}",
        h.metric("portier_sip_registrations")
    );
    assert!(!h.e.status_text(h.now).contains("extension 2003"));
    // The call in progress with 2003 continues: the caller's BYE still reaches it.
    caller_hangs_up(&mut h, "removed@phone", &to, &b);
    // 2003 can no longer register.
    let from = addr("198.18.0.13:5060");
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.13:5060"),
        &request(
            "REGISTER",
            "sip:pbx.example.test",
            from,
            "2003",
            "<sip:2003@pbx.example.test>",
            "r3",
            9,
            &b,
            "",
            "",
        ),
    );
    assert!(status(&out, 404).is_some(), "REGISTER of a removed extension is 404");
}

#[test]
fn new_extensions_and_secrets_apply_and_earlier_nonces_stay_valid() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    // A challenge issued before the reconfigure ...
    let from = addr("198.18.0.12:5060");
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.12:5060"),
        &request(
            "REGISTER",
            "sip:pbx.example.test",
            from,
            "2002",
            "<sip:2002@pbx.example.test>",
            "r2",
            1,
            &b,
            "",
            "",
        ),
    );
    let challenge = status(&out, 401).unwrap().msg.clone();
    let cfg = CONFIG.replace("secret = \"s3cret-2002\"", "secret = \"new-2002\"").replace(
        "2003 = { name = \"Carol\"",
        "2004 = { name = \"Dave\", secret = \"s2004\" }\n2003 = { name = \"Carol\"",
    );
    let (r, out) = h.reconfigure(&cfg);
    assert!(out.is_empty());
    assert_eq!(r.extensions.added, ["2004"]);
    assert_eq!(r.extensions.changed, ["2002"]);
    assert!(r.extensions.removed.is_empty() && r.registrations_dropped == 0);
    // ... is answered after it with the new secret: the nonce is still ours, 200.
    let auth =
        creds(&challenge, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", "2002", "new-2002", 1);
    assert!(status(&register_2002(&mut h, 2, &auth), 200).is_some(), "old nonce, new secret: accepted");
    // The old secret is refused now.
    let auth =
        creds(&challenge, "WWW-Authenticate", "REGISTER", "sip:pbx.example.test", "2002", "s3cret-2002", 2);
    let out = register_2002(&mut h, 3, &auth);
    assert!(status(&out, 401).is_some() && status(&out, 200).is_none(), "old secret refused");
    // The new extension registers; 2001's registration survived.
    register(&mut h, "2004", "s2004", "198.18.0.14:5060");
    assert!(h.e.status_text(h.now).contains("extension 2001     contacts=1"), "{}", h.e.status_text(h.now));
}

#[test]
fn a_removed_register_trunk_unregisters_and_stops_refreshing() {
    let (mut h, accepted) = with_isp_registered(CONFIG);
    let cfg = CONFIG
        .replace("inbound = \"2000\"\n", "")
        .replace("[[sip.dialplan]]\nmatch = \"0.\"\nto = \"isp\"\nstrip = 1\n", "");
    let cfg = cfg[..cfg.find("[sip.trunks.isp]").unwrap()].to_string()
        + &cfg[cfg.find("[sip.voicemail]").unwrap()..];
    let (r, out) = h.reconfigure(&cfg);
    assert_eq!(r.trunks.removed, [TrunkId::new("isp")]);
    assert!(r.applied.contains(&"sip.dialplan".to_string()), "{r:?}");
    let unreg = method(&out, "REGISTER").expect("unREGISTER");
    let t = text(&unreg.msg);
    assert_eq!(unreg.dest.addr, addr(ISP));
    assert!(t.contains("Expires: 0\r\n"), "{t}");
    assert_eq!(unreg.msg.call_id().unwrap(), accepted.call_id().unwrap(), "the binding we made");
    assert_eq!(unreg.msg.cseq().unwrap().seq, accepted.cseq().unwrap().seq + 1);
    // The provider challenges the unREGISTER too: answered once with the old credentials.
    let ch = "Digest realm=\"isp.example.test\", nonce=\"n10\", qop=\"auth\"";
    let out = h.feed(udp(ISP), &respond_to(&unreg.msg, 401, &[("WWW-Authenticate", ch)]));
    let again = method(&out, "REGISTER").expect("unREGISTER with credentials");
    let t = text(&again.msg);
    assert!(
        t.contains("Expires: 0\r\n") && t.contains("Authorization: Digest username=\"0999999999\""),
        "{t}"
    );
    assert!(h.feed(udp(ISP), &respond_to(&again.msg, 200, &[])).is_empty());
    assert!(!h.metric("portier_sip_trunk").contains("isp"), "series gone: {}", h.metric("portier_sip_trunk"));
    assert!(method(&h.tick(Duration::from_secs(200)), "REGISTER").is_none(), "no refresh after removal");
    // Dialling out now finds no route.
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let at = addr("198.18.0.11:5060");
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request(
            "INVITE",
            "sip:00112345678@pbx.example.test",
            at,
            "2001",
            "<sip:00112345678@pbx.example.test>",
            "o1",
            1,
            &b,
            "",
            SDP,
        ),
    );
    let c = status(&out, 407).unwrap();
    let auth = creds(
        &c.msg,
        "Proxy-Authenticate",
        "INVITE",
        "sip:00112345678@pbx.example.test",
        "2001",
        "s3cret-2001",
        1,
    );
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.11:5060"),
        &request(
            "INVITE",
            "sip:00112345678@pbx.example.test",
            at,
            "2001",
            "<sip:00112345678@pbx.example.test>",
            "o1",
            2,
            &b,
            &format!("Proxy-Authorization: {auth}\r\n"),
            SDP,
        ),
    );
    assert!(status(&out, 404).is_some() && method(&out, "INVITE").is_none());
}

#[test]
fn a_removed_peer_stops_pinging() {
    let mut h = H::new();
    assert!(method(&h.tick(Duration::from_secs(30)), "OPTIONS").is_some(), "pings every 30 s");
    let mut cfg = CONFIG
        .replace(", voicemail = true", "")
        .replace("[[sip.dialplan]]\nmatch = \"1XXX\"\nto = \"exchange-um\"\n", "");
    let a = cfg.find("[sip.trunks.exchange-um]").unwrap();
    let b = cfg.find("[sip.trunks.isp]").unwrap();
    cfg.replace_range(a..b, "");
    let a = cfg.find("[sip.voicemail]").unwrap();
    let b = cfg.find("[[sip.dialplan]]").unwrap();
    cfg.replace_range(a..b, "");
    let (r, out) = h.reconfigure(&cfg);
    assert_eq!(r.trunks.removed, [TrunkId::new("exchange-um")]);
    assert!(r.applied.contains(&"sip.voicemail".to_string()), "{r:?}");
    assert!(out.is_empty(), "a peer has nothing to unregister");
    for _ in 0..4 {
        assert!(method(&h.tick(Duration::from_secs(30)), "OPTIONS").is_none(), "no more pings");
    }
}

#[test]
fn a_new_secret_refreshes_the_binding_and_a_new_registrar_moves_it() {
    let (mut h, accepted) = with_isp_registered(CONFIG);
    // Secret changed: the same binding is refreshed at once, nothing unregistered.
    let cfg = CONFIG.replace("secret = \"isp-secret\"", "secret = \"isp-secret-2\"");
    let (r, out) = h.reconfigure(&cfg);
    assert_eq!(r.trunks.changed, [TrunkId::new("isp")]);
    let regs: Vec<&Outgoing> = out.iter().filter(|o| o.msg.method() == Some("REGISTER")).collect();
    assert_eq!(regs.len(), 1, "one REGISTER");
    let t = text(&regs[0].msg);
    assert!(t.contains("Expires: 600\r\n"), "{t}");
    assert_eq!(regs[0].msg.call_id().unwrap(), accepted.call_id().unwrap(), "same binding");
    // The challenge is answered with the new secret.
    let ch = "Digest realm=\"isp.example.test\", nonce=\"n11\", qop=\"auth\"";
    let out = h.feed(udp(ISP), &respond_to(&regs[0].msg, 401, &[("WWW-Authenticate", ch)]));
    let with = method(&out, "REGISTER").unwrap().msg.clone();
    let value = with.get("Authorization").unwrap().value_text("Authorization").unwrap().into_owned();
    let field = |v: &str, name: &str| {
        v.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().to_string()
    };
    let cnonce = field(&value, "cnonce");
    let want =
        digest::respond(ch, "REGISTER", "sip:isp.example.test", "0999999999", "isp-secret-2", &cnonce, 1)
            .unwrap();
    assert_eq!(field(&value, "response"), field(&want, "response"), "answered with the new secret");
    h.feed(udp(ISP), &respond_to(&with, 200, &[("Expires", "120")]));

    // Registrar changed: Expires: 0 to the old one, a new binding at the new one.
    let cfg = cfg.replace("registrar = \"udp:198.18.3.10:5060\"", "registrar = \"udp:198.18.3.11:5060\"");
    let (r, out) = h.reconfigure(&cfg);
    assert_eq!(r.trunks.changed, [TrunkId::new("isp")]);
    let old = find(&out, |m| m.method() == Some("REGISTER") && text(m).contains("Expires: 0\r\n"))
        .expect("unREGISTER");
    assert_eq!(old.dest.addr, addr(ISP));
    assert_eq!(old.msg.call_id().unwrap(), accepted.call_id().unwrap());
    let new = find(&out, |m| m.method() == Some("REGISTER") && !text(m).contains("Expires: 0\r\n"))
        .expect("REGISTER");
    assert_eq!(new.dest.addr, addr("198.18.3.11:5060"));
    assert_ne!(new.msg.call_id().unwrap(), accepted.call_id().unwrap(), "a new binding");
    assert!(
        h.metric("portier_sip_trunk_registered").contains("trunk=\"isp\"} 0"),
        "{}",
        h.metric("portier_sip_trunk")
    );
    // The old chain's refresh (due 90 s after its 200) never fires.
    let later = h.tick(Duration::from_secs(91));
    assert!(
        find(&later, |m| m.method() == Some("REGISTER")
            && m.call_id().unwrap() == accepted.call_id().unwrap())
        .is_none(),
        "old binding not refreshed"
    );
}

#[test]
fn identity_changes_apply_in_place_without_touching_the_registration() {
    let (mut h, _) = with_isp_registered(CONFIG);
    let cfg = CONFIG.replace("identity = \"rpid\"", "identity = \"pai\"");
    let (r, out) = h.reconfigure(&cfg);
    assert_eq!(r.trunks.changed, [TrunkId::new("isp")]);
    assert!(out.is_empty(), "no REGISTER for an identity change");
    assert!(h.metric("portier_sip_trunk_registered").contains("trunk=\"isp\"} 1"));
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let (forks, _) = call(&mut h, "00112345678", "pai@phone", SDP);
    let t = text(&forks[0].msg);
    assert!(
        t.contains("P-Asserted-Identity: \"Alice\" <sip:2001@pbx.example.test>")
            && !t.contains("Remote-Party-ID"),
        "{t}"
    );
}

#[test]
fn listeners_need_a_restart_and_the_rest_still_applies() {
    let mut h = H::new();
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    let cfg = CONFIG
        .replace("\"tcp:198.18.1.1:5060\"]", "\"tcp:198.18.1.2:5060\"]")
        .replace("ring_time = \"5s\"", "ring_time = \"9s\"")
        .replace("match = \"2XXX\"", "match = \"20XX\"");
    let (r, _) = h.reconfigure(&cfg);
    assert_eq!(r.needs_restart, ["sip.listen"]);
    assert_eq!(r.applied, ["sip.dialplan"]);
    assert_eq!(r.extensions.changed, ["2002"]);
    assert_eq!(r.to_string(), "extensions ~2002; applied sip.dialplan; needs a restart: sip.listen");
    // The engine still names the listener it really has.
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let (forks, _) = call(&mut h, "2002", "ring9@phone", SDP);
    assert!(text(&forks[0].msg).contains("Via: SIP/2.0/UDP 198.18.1.1:5060;"), "{}", text(&forks[0].msg));
    // The new ring time is used: no CANCEL at 5 s, one at 9 s.
    let b = forks[0].msg.clone();
    h.feed(udp("198.18.0.12:5060"), &answer(&b, 180, "Ringing", "bob", "198.18.0.12:5060", ""));
    assert!(method(&h.tick(Duration::from_secs(5)), "CANCEL").is_none(), "old ring time not used");
    assert!(method(&h.tick(Duration::from_secs(4)), "CANCEL").is_some(), "new ring time used");
}

#[test]
fn a_new_domain_becomes_the_realm_and_registrations_stay() {
    let mut h = H::new();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    let (r, _) =
        h.reconfigure(&CONFIG.replace("domain = \"pbx.example.test\"", "domain = \"pbx2.example.test\""));
    assert_eq!(r.applied, ["sip.domain"]);
    let from = addr("198.18.0.12:5060");
    let b = h.branch();
    let out = h.feed(
        udp("198.18.0.12:5060"),
        &request(
            "REGISTER",
            "sip:pbx.example.test",
            from,
            "2002",
            "<sip:2002@pbx.example.test>",
            "r2",
            1,
            &b,
            "",
            "",
        ),
    );
    let c = status(&out, 401).expect("challenge");
    assert!(text(&c.msg).contains("realm=\"pbx2.example.test\""), "{}", text(&c.msg));
    assert!(h.e.status_text(h.now).contains("extension 2001     contacts=1"));
}

#[test]
fn a_removed_extensions_subscription_is_terminated() {
    let mut h = H::new();
    let at = addr("198.18.0.11:5060");
    let sub = |h: &mut H, cseq: u32, extra: &str| {
        let b = h.branch();
        let extra = format!("Event: message-summary\r\nExpires: 600\r\n{extra}");
        let to = "<sip:2001@pbx.example.test>";
        h.feed(
            udp("198.18.0.11:5060"),
            &request("SUBSCRIBE", "sip:2001@pbx.example.test", at, "2001", to, "sub9", cseq, &b, &extra, ""),
        )
    };
    let out = sub(&mut h, 1, "");
    let c = status(&out, 407).unwrap();
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
    assert!(method(&out, "NOTIFY").is_some(), "initial NOTIFY");
    let (r, out) =
        h.reconfigure(&CONFIG.replace("2001 = { name = \"Alice\", secret = \"s3cret-2001\" }\n", ""));
    assert_eq!(r.extensions.removed, ["2001"]);
    let n = method(&out, "NOTIFY").expect("a last NOTIFY down the subscription");
    assert_eq!(n.msg.call_id().unwrap(), "sub9");
    assert!(text(&n.msg).contains("Subscription-State: terminated;reason=noresource"), "{}", text(&n.msg));
    // A later MWI for 2001 reaches nobody.
    let body = "Messages-Waiting: yes\r\nMessage-Account: sip:52001@pbx.example.test\r\n";
    let um = Dest { transport: SipTransport::Tcp, addr: addr("198.18.2.20:40000"), conn: Some(1) };
    let notify = format!(
        "NOTIFY sip:52001@198.18.1.1 SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.2.20:40000;branch=z9hG4bKm7\r\nMax-Forwards: 70\r\n\
         From: <sip:um@um>;tag=u1\r\nTo: <sip:52001@pbx>\r\nCall-ID: mwi7\r\nCSeq: 1 NOTIFY\r\n\
         Event: message-summary\r\nContent-Type: application/simple-message-summary\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = h.feed(um, &notify);
    assert!(status(&out, 404).is_some() && method(&out, "NOTIFY").is_none());
}

/// `nat = "auto"`: a phone sending from another port than its Contact names (same host, so no
/// NAT) is called on the Contact; a reload setting `nat = "force"` moves it to the source at
/// once, without a new REGISTER.
#[test]
fn nat_auto_calls_the_contact_and_a_reload_to_force_moves_registered_phones_at_once() {
    let mut h = H::new();
    register_naming(&mut h, "2002", "s3cret-2002", "198.18.0.12:5070", "198.18.0.12:5080");
    let (forks, _) = call(&mut h, "2002", "nat-1", SDP);
    assert_eq!(forks.len(), 1);
    assert_eq!(forks[0].dest.addr, addr("198.18.0.12:5080"), "auto: the Contact");
    let forced = CONFIG.replace(
        "2002 = { name = \"Bob\", secret = \"s3cret-2002\",",
        "2002 = { name = \"Bob\", secret = \"s3cret-2002\", nat = \"force\",",
    );
    assert_ne!(forced, CONFIG);
    let (report, _) = h.reconfigure(&forced);
    assert_eq!(report.extensions.changed, ["2002"]);
    let (forks, _) = call(&mut h, "2002", "nat-2", SDP);
    assert_eq!(forks[0].dest.addr, addr("198.18.0.12:5070"), "force: where the REGISTER came from");
}
