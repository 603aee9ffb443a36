//! Calls through the media relay: the SDP each leg gets names the relay's ports on its side,
//! the orders for the relay tasks follow the offer/answer, and a silent stream hangs up.

use super::*;
use crate::media::session::{Order, Side as MediaSide};
use crate::sip::engine::MediaEvent;

/// Ports nothing binds now, a different region per test (they run in parallel).
fn free_range() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    // Ten regions of 50000-59999; 60000 and up is the property test's.
    let base = 50_000 + 1_000 * (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10);
    for first in (base..base + 1_000).step_by(100) {
        if (first..first + 20).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (first, first + 19);
        }
    }
    panic!("no free loopback port range");
}

/// Two phones and a direct trunk; SIP (and so the relay) on loopback.
fn relayed(alice_media: &str) -> (H, u16) {
    let (first, last) = free_range();
    relayed_in(first, last, alice_media)
}

fn relayed_in(first: u16, last: u16, alice_media: &str) -> (H, u16) {
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\ndomain = \"pbx.example.test\"\n\
         [sip.media]\nports = \"{first}-{last}\"\ntimeout = \"30s\"\n\
         [sip.extensions]\n2001 = {{ name = \"Alice\", secret = \"s3cret-2001\", media = \"{alice_media}\" }}\n\
         2003 = {{ name = \"Carol\", secret = \"s2003\", media = \"{alice_media}\" }}\n\
         [[sip.dialplan]]\nmatch = \"2XXX\"\nto = \"extension\"\n"
    );
    let mut h = H::fresh(&config);
    h.tick(Duration::ZERO);
    h.e.take_output();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    (h, first)
}

fn audio(m: &Message) -> (Option<std::net::IpAddr>, u16) {
    let sdp = crate::media::sdp::Sdp::parse(m.body()).expect("an SDP body");
    let a = &sdp.media()[0];
    (a.address, a.port)
}

/// Carol's re-INVITE (CSeq 7, branch `branch`) in the dialog of the fork INVITE `b`.
fn carol_reinvites(b: &Message, branch: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:2001@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.13:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@198.18.0.13>;tag=carol\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 7 INVITE\r\n\
         Contact: <sip:x@198.18.0.13:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        b.get("From").unwrap().value_text("From").unwrap(),
        b.call_id().unwrap(),
        sdp.len()
    )
}

const LOOPBACK: Option<std::net::IpAddr> = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

/// Alice calls Carol, Carol answers: (the fork's INVITE, the 200 to Alice, media events).
fn answered(h: &mut H, call_id: &str) -> (Message, Message, Vec<MediaEvent>) {
    let (forks, _) = call(h, "2003", call_id, SDP);
    let b = forks[0].msg.clone();
    let mut events = h.e.take_media();
    let carol = SDP.replace("198.18.0.11", "198.18.0.13").replace("4000", "5000");
    let out = h.feed(udp("198.18.0.13:5060"), &answer(&b, 200, "OK", "carol", "198.18.0.13:5060", &carol));
    let ok = status(&out, 200).expect("200 to the caller").msg.clone();
    events.extend(h.e.take_media());
    (b, ok, events)
}

#[test]
fn each_leg_is_offered_the_relay_port_of_its_side_and_the_relay_follows_the_answer() {
    let (mut h, first) = relayed("relay");
    let (b, ok, events) = answered(&mut h, "relay@phone");
    // Carol is offered the relay's callee-side port, Alice answered with the caller-side one.
    assert_eq!(audio(&b), (LOOPBACK, first + 2), "{}", text(&b));
    assert_eq!(audio(&ok), (LOOPBACK, first), "{}", text(&ok));
    assert!(text(&b).contains("a=rtcp:") || !text(&b).contains("198.18.0.11"), "{}", text(&b));
    assert!(!String::from_utf8_lossy(b.body()).contains("198.18.0.11"), "the caller's address is hidden");

    let [MediaEvent::Order { order: Order::Start { stream: 0, legs, signalled, .. }, .. }, MediaEvent::Order { order: Order::Signal { side: MediaSide::Callee, endpoint, .. }, .. }, MediaEvent::Order { order: Order::Arm, .. }] =
        &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!([legs[0].port, legs[1].port], [first, first + 2]);
    assert_eq!(signalled[0].rtp, Some(addr("198.18.0.11:4000")));
    assert_eq!(endpoint.rtp, Some(addr("198.18.0.13:5000")));
    assert!(h.metric("portier_media_sessions").contains(" 1"), "{}", h.metric("portier_media"));
    assert!(h.metric("portier_media_ports").contains(" 4"), "{}", h.metric("portier_media"));
    let status = h.e.status_text(h.now);
    assert!(
        status.contains(&format!("media relayed calls 1, ports open 4 of sip.media.ports {first}-")),
        "{status}"
    );

    // Carol hangs up: the relay is closed with the call.
    let carol_bye = format!(
        "BYE sip:2001@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.13:5060;branch=z9hG4bKbye1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@198.18.0.13>;tag=carol\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 9 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        b.get("From").unwrap().value_text("From").unwrap(),
        b.call_id().unwrap()
    );
    let out = h.feed(udp("198.18.0.13:5060"), &carol_bye);
    assert!(method(&out, "BYE").is_some(), "BYE to the caller");
    assert!(matches!(&h.e.take_media()[..], [MediaEvent::Close { .. }]));
    assert!(h.metric("portier_media_sessions").contains(" 0"));
    assert!(h.metric("portier_media_ports").contains(" 0"));
}

#[test]
fn a_hold_re_invite_reaches_the_relay_and_the_caller_sees_the_relay_port() {
    let (mut h, first) = relayed("relay");
    let (b, _ok, _) = answered(&mut h, "hold@phone");
    let hold_sdp = SDP
        .replace("198.18.0.11", "198.18.0.13")
        .replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 5000 RTP/AVP 0\r\na=sendonly\r\n");
    let reinvite = carol_reinvites(&b, "z9hG4bKhold1", &hold_sdp);
    let out = h.feed(udp("198.18.0.13:5060"), &reinvite);
    let to_a = method(&out, "INVITE").expect("re-INVITE to the caller");
    assert_eq!(audio(&to_a.msg), (LOOPBACK, first));
    assert!(text(&to_a.msg).contains("a=sendonly"), "the hold is kept: {}", text(&to_a.msg));
    let events = h.e.take_media();
    assert!(
        matches!(&events[..], [MediaEvent::Order { order: Order::Held { stream: 0, held: true }, .. }]),
        "{events:?}"
    );
    // Alice's answer goes back to Carol on the callee-side port.
    let held = SDP.replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n");
    let out =
        h.feed(udp("198.18.0.11:5060"), &answer(&to_a.msg, 200, "OK", "t2001", "198.18.0.11:5060", &held));
    let to_b = find(&out, |m| m.status() == Some(200) && m.cseq().unwrap().seq == 7).expect("200 to Carol");
    assert_eq!(audio(&to_b.msg), (LOOPBACK, first + 2));
}

#[test]
fn a_silent_call_is_hung_up_both_ways_and_counted() {
    let (mut h, _) = relayed("relay");
    let (b, _ok, _) = answered(&mut h, "silent@phone");
    h.e.on_media_silent(1, 0, h.now);
    let out = h.e.take_output();
    let byes: Vec<_> = out.iter().filter(|o| o.msg.method() == Some("BYE")).collect();
    assert_eq!(byes.len(), 2, "BYE to both legs");
    assert!(byes.iter().any(|o| o.dest.addr == addr("198.18.0.11:5060")));
    assert!(byes.iter().any(|o| o.msg.call_id().unwrap() == b.call_id().unwrap()));
    assert_eq!(h.e.calls(), 0);
    assert!(h.metric("portier_media_timeouts_total").contains(" 1"));
    // A late report for a call already gone changes nothing.
    h.e.on_media_silent(1, 0, h.now);
    assert!(h.e.take_output().is_empty());
}

#[test]
fn direct_parties_get_the_sdp_unchanged_and_no_relay() {
    let (mut h, _) = relayed("direct");
    let (b, ok, events) = answered(&mut h, "direct@phone");
    assert_eq!(b.body(), SDP.as_bytes());
    assert_eq!(audio(&ok), (Some("198.18.0.13".parse().unwrap()), 5000));
    assert!(events.is_empty(), "{events:?}");
}

/// The voicemail transfer (RFC 3725 flow I) of `refer_from_voicemail_...` through the relay:
/// the target's offer reaches the caller on the caller-side port, the caller's answer reaches
/// the target on the callee-side port, and the callee side of the relay learns the target.
#[test]
fn a_transfer_moves_the_callee_side_of_the_relay_to_the_target() {
    let (first, last) = free_range();
    let config =
        format!("{}\n[sip.media]\nports = \"{first}-{last}\"\n", CONFIG.replace("198.18.1.1", "127.0.0.1"));
    let mut h = H::fresh(&config);
    h.tick(Duration::ZERO);
    h.e.take_output();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    let (forks, _) = call(&mut h, "1900", "xfer@phone", SDP);
    let um_inv = &forks[0];
    assert_eq!(audio(&um_inv.msg), (LOOPBACK, first + 2), "UM is offered the callee-side port");
    let um = Dest { transport: SipTransport::Tcp, addr: addr("198.18.2.20:5060"), conn: Some(9) };
    let um_sdp = SDP.replace("198.18.0.11", "198.18.2.20").replace("4000", "6000");
    let out = h.feed(um, &answer(&um_inv.msg, 200, "OK", "umtag", "198.18.2.20:5060", &um_sdp));
    let ok = status(&out, 200).expect("answered");
    assert_eq!(audio(&ok.msg), (LOOPBACK, first));
    let a_tag = ok.msg.to().unwrap().tag().unwrap().to_string();
    let to = format!("<sip:1900@pbx.example.test>;tag={a_tag}");
    let at = addr("198.18.0.11:5060");
    h.feed(
        udp("198.18.0.11:5060"),
        &request("ACK", "sip:1900@127.0.0.1", at, "2001", &to, "xfer@phone", 2, "z9hG4bKack1", "", ""),
    );
    h.e.take_media();

    let out = h.feed(um, &um_refers_to_2002(&um_inv.msg, "127.0.0.1"));
    let inv = method(&out, "INVITE").expect("INVITE to the transfer target");
    assert!(inv.msg.body().is_empty(), "target invited without SDP");
    let bob_sdp = SDP.replace("198.18.0.11", "198.18.0.12").replace("4000", "5000");
    let out =
        h.feed(udp("198.18.0.12:5060"), &answer(&inv.msg, 200, "OK", "bobtag", "198.18.0.12:5060", &bob_sdp));
    let reinv = find(&out, |m| m.method() == Some("INVITE") && m.call_id().unwrap() == "xfer@phone")
        .expect("re-INVITE to caller");
    assert_eq!(audio(&reinv.msg), (LOOPBACK, first), "the caller keeps its relay port");
    let events = h.e.take_media();
    let [MediaEvent::Order { order: Order::Signal { side: MediaSide::Callee, endpoint, .. }, .. }] =
        &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(endpoint.rtp, Some(addr("198.18.0.12:5000")), "the relay now expects the target");

    let out = h.feed(
        udp("198.18.0.11:5060"),
        &answer(
            &reinv.msg,
            200,
            "OK",
            "t2001",
            "198.18.0.11:5060",
            &SDP.replace("o=alice 1 1", "o=alice 1 2"),
        ),
    );
    let ack_b =
        find(&out, |m| m.method() == Some("ACK") && m.call_id().unwrap() == inv.msg.call_id().unwrap())
            .expect("ACK to the target with the caller's answer");
    assert_eq!(audio(&ack_b.msg), (LOOPBACK, first + 2));
}

#[test]
fn early_media_and_a_late_offer_go_through_the_relay() {
    let (mut h, first) = relayed("relay");
    // Early media: the 183's SDP reaches the caller on the caller-side port.
    let (forks, _) = call(&mut h, "2003", "early@phone", SDP);
    let b = forks[0].msg.clone();
    let carol = SDP.replace("198.18.0.11", "198.18.0.13").replace("4000", "5000");
    let out = h.feed(
        udp("198.18.0.13:5060"),
        &answer(&b, 183, "Session Progress", "carol", "198.18.0.13:5060", &carol),
    );
    let progress = status(&out, 183).expect("183 relayed");
    assert_eq!(audio(&progress.msg), (LOOPBACK, first));
    let events = h.e.take_media();
    assert!(
        events.iter().any(|e| matches!(
            e,
            MediaEvent::Order { order: Order::Signal { side: MediaSide::Callee, .. }, .. }
        )),
        "the callee side learns the early media's address: {events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, MediaEvent::Order { order: Order::Arm, .. })),
        "not armed before the answer"
    );

    // A late offer: no SDP in the INVITE, the callee's 200 offers, the caller's ACK answers.
    let (forks, _) = call(&mut h, "2003", "late@phone", "");
    let b = forks[0].msg.clone();
    assert!(b.body().is_empty(), "the callee is invited without SDP");
    let out = h.feed(udp("198.18.0.13:5060"), &answer(&b, 200, "OK", "carol2", "198.18.0.13:5060", &carol));
    let ok = status(&out, 200).expect("200 to the caller").msg.clone();
    let (_, caller_port) = audio(&ok);
    assert!((first..first + 20).contains(&caller_port), "offer names a relay port: {caller_port}");
    let a_tag = ok.to().unwrap().tag().unwrap().to_string();
    let to = format!("<sip:2003@pbx.example.test>;tag={a_tag}");
    let ack = request(
        "ACK",
        "sip:2003@127.0.0.1",
        addr("198.18.0.11:5060"),
        "2001",
        &to,
        "late@phone",
        2,
        "z9hG4bKlateack",
        "",
        SDP,
    );
    let out = h.feed(udp("198.18.0.11:5060"), &ack);
    let b_ack = method(&out, "ACK").expect("ACK to the callee with the caller's answer");
    let (addr_b, port_b) = audio(&b_ack.msg);
    assert_eq!(addr_b, LOOPBACK);
    assert!((first..first + 20).contains(&port_b) && port_b != caller_port, "the callee-side port: {port_b}");
}

#[test]
fn a_reload_with_new_ports_applies_to_new_calls_and_running_ones_keep_theirs() {
    let (mut h, first) = relayed("relay");
    let (_, ok, _) = answered(&mut h, "before@phone");
    assert_eq!(audio(&ok), (LOOPBACK, first));
    let (new_first, new_last) = free_range();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\ndomain = \"pbx.example.test\"\n\
         [sip.media]\nports = \"{new_first}-{new_last}\"\n\
         [sip.extensions]\n2001 = {{ name = \"Alice\", secret = \"s3cret-2001\" }}\n\
         2003 = {{ name = \"Carol\", secret = \"s2003\" }}\n\
         [[sip.dialplan]]\nmatch = \"2XXX\"\nto = \"extension\"\n"
    );
    h.e.reconfigure(Arc::new(sip_config(&config)), h.now);
    let (b, ok, _) = answered(&mut h, "after@phone");
    assert_eq!(audio(&ok), (LOOPBACK, new_first), "the new call takes the new range");
    assert_eq!(audio(&b), (LOOPBACK, new_first + 2));
    assert!(
        h.e.status_text(h.now).contains("relayed calls 2, ports open 8"),
        "the first call kept its ports"
    );
}

#[test]
fn an_offer_the_relay_cannot_take_refuses_the_call_and_a_bad_reinvite_changes_nothing() {
    // One call's worth of ports (two pairs): the second call finds none.
    let (first, _) = free_range();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\ndomain = \"pbx.example.test\"\n\
         [sip.media]\nports = \"{first}-{}\"\n\
         [sip.extensions]\n2001 = {{ name = \"Alice\", secret = \"s3cret-2001\" }}\n\
         2003 = {{ name = \"Carol\", secret = \"s2003\" }}\n\
         [[sip.dialplan]]\nmatch = \"2XXX\"\nto = \"extension\"\n",
        first + 3
    );
    let mut h = H::fresh(&config);
    h.tick(Duration::ZERO);
    h.e.take_output();
    register(&mut h, "2001", "s3cret-2001", "198.18.0.11:5060");
    register(&mut h, "2003", "s2003", "198.18.0.13:5060");
    // The orders hold the first call's sockets (the relay tasks would): keep them open.
    let (b, _, _held) = answered(&mut h, "one@phone");

    // The second call: no ports left, refused with 503 before Carol's phone rings.
    let (out, _) = call_out(&mut h, "2003", "two@phone", SDP);
    let refused = status(&out, 503).expect("503 when the relay has no ports");
    assert!(text(&refused.msg).contains("Media Relay Unavailable"), "{}", text(&refused.msg));
    assert!(method(&out, "INVITE").is_none(), "Carol is not rung");

    // Unparsable SDP from the caller: 488.
    let bad = "v=0\r\nthis is not sdp\r\n";
    let (out, _) = call_out(&mut h, "2003", "bad@phone", bad);
    assert!(status(&out, 488).is_some(), "488 for an SDP that does not parse");
    assert!(method(&out, "INVITE").is_none());

    // In the first call, Carol re-INVITEs with garbage: 488 to her, nothing to Alice.
    let reinvite = carol_reinvites(&b, "z9hG4bKre1", bad);
    let out = h.feed(udp("198.18.0.13:5060"), &reinvite);
    assert!(status(&out, 488).is_some_and(|r| r.dest.addr == addr("198.18.0.13:5060")), "488 back to Carol");
    assert!(method(&out, "INVITE").is_none(), "nothing relayed to Alice");
    assert_eq!(h.e.calls(), 1, "the first call goes on");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]=[ -~]{0,30}",
            (0u16..65535, "[0-9 ]{0,6}").prop_map(|(p, f)| format!("m=audio {p} RTP/AVP {f}")),
            "c=IN IP4 (198\\.18\\.0\\.[0-9]|0\\.0\\.0\\.0)",
            "a=(sendrecv|sendonly|inactive|rtcp:[0-9]{1,5})",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// In a relayed call, whatever SDP the callee re-INVITEs with: no panic, every message
        /// sent parses, and the re-INVITE is either relayed to the caller naming the relay or
        /// refused back to the callee.
        #[test]
        fn any_reinvite_sdp_is_relayed_or_refused(lines in proptest::collection::vec(line(), 0..12)) {
            // Its own ports (each case's close when it ends), apart from the other tests'.
            let (mut h, _) = relayed_in(60_000, 60_019, "relay");
            let (b, _ok, _held) = answered(&mut h, "prop@phone");
            let body = format!("v=0\r\no=x 1 2 IN IP4 198.18.0.13\r\ns=-\r\n{}", lines.iter().map(|l| format!("{l}\r\n")).collect::<String>());
            let reinvite = carol_reinvites(&b, "z9hG4bKp1", &body);
            let out = h.feed(udp("198.18.0.13:5060"), &reinvite);
            for o in &out {
                prop_assert!(crate::sip::parse_datagram(&o.msg.to_bytes()).is_ok(), "{}", text(&o.msg));
            }
            let relayed = method(&out, "INVITE");
            let refused = find(&out, |m| matches!(m.status(), Some(488 | 503)));
            prop_assert!(relayed.is_some() != refused.is_some(), "{:?}", out.iter().map(|o| text(&o.msg)).collect::<Vec<_>>());
            if let Some(r) = relayed {
                let sdp = crate::media::sdp::Sdp::parse(r.msg.body()).expect("a relayed SDP parses");
                for m in sdp.media().iter().filter(|m| m.port != 0).take(crate::media::session::MAX_STREAMS) {
                    prop_assert!(m.address.is_none_or(|a| a == LOOPBACK.unwrap() || a.is_unspecified()), "{m:?}");
                }
            }
            drop(h.e.take_media());
        }
    }
}
