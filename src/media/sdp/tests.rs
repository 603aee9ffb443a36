use super::*;
use proptest::prelude::*;

/// A desk phone's offer: session-level c=, audio with RTCP and DTMF, ICE, an unknown attribute.
const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 198.18.0.11\r\n\
s=-\r\n\
c=IN IP4 198.18.0.11\r\n\
t=0 0\r\n\
a=ice-ufrag:8hhY\r\n\
m=audio 40000 RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:40001 IN IP4 198.18.0.11\r\n\
a=candidate:1 1 UDP 2130706431 198.18.0.11 40000 typ host\r\n\
a=x-vendor-thing:keep me\r\n\
a=sendrecv\r\n";

fn relay_at(port: u16) -> RelayPort {
    RelayPort { address: "198.18.1.1".parse().unwrap(), port }
}

#[test]
fn parses_the_views_and_writes_back_what_came() {
    let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
    assert_eq!(sdp.to_string(), OFFER);
    let o = sdp.origin().unwrap();
    assert_eq!((o.username.as_str(), o.version, o.address.as_str()), ("alice", 2890844526, "198.18.0.11"));
    let m = &sdp.media()[0];
    assert_eq!((m.kind.as_str(), m.port, m.proto.as_str()), ("audio", 40000, "RTP/AVP"));
    assert_eq!(m.formats, ["8", "0", "101"]);
    assert_eq!(m.address, Some("198.18.0.11".parse().unwrap()));
    assert_eq!((m.direction, m.rtcp_port), (Direction::SendRecv, Some(40001)));
    assert!(!m.is_held());
    // LF line ends are read too, and written back as CRLF.
    assert_eq!(Sdp::parse(OFFER.replace("\r\n", "\n").as_bytes()).unwrap().to_string(), OFFER);
}

#[test]
fn relaying_rewrites_address_ports_and_rtcp_drops_ice_and_keeps_the_rest() {
    let mut sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
    sdp.relay(&[Some(relay_at(30000))]);
    let out = sdp.to_string();
    assert!(out.contains("\r\nc=IN IP4 198.18.1.1\r\n"), "{out}");
    assert!(out.contains("\r\nm=audio 30000 RTP/AVP 8 0 101\r\n"), "{out}");
    assert!(out.contains("\r\na=rtcp:30001 IN IP4 198.18.1.1\r\n"), "{out}");
    assert!(!out.contains("candidate") && !out.contains("ice-ufrag"), "{out}");
    for kept in
        ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=x-vendor-thing:keep me", "a=sendrecv"]
    {
        assert!(out.contains(kept), "{kept} lost: {out}");
    }
    assert!(!out.contains("198.18.0.11\r\nm="), "the phone's address must not stay as the session's: {out}");
    let m = &sdp.media()[0];
    assert_eq!((m.port, m.address), (30000, Some("198.18.1.1".parse().unwrap())));
}

#[test]
fn a_stream_not_relayed_keeps_its_address_when_the_session_c_changes() {
    let two = format!("{OFFER}m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
    let mut sdp = Sdp::parse(two.as_bytes()).unwrap();
    sdp.relay(&[Some(relay_at(30000)), None]);
    let media = sdp.media();
    assert_eq!(media[0].address, Some("198.18.1.1".parse().unwrap()));
    assert_eq!((media[1].port, media[1].address), (40002, Some("198.18.0.11".parse().unwrap())));
    // Its own c= comes right after its m= line.
    assert!(sdp.to_string().contains("m=video 40002 RTP/AVP 96\r\nc=IN IP4 198.18.0.11\r\n"), "{sdp}");
}

#[test]
fn hold_stays_a_hold_and_refused_streams_stay_refused() {
    let held = OFFER.replace("c=IN IP4 198.18.0.11", "c=IN IP4 0.0.0.0");
    let mut sdp = Sdp::parse(held.as_bytes()).unwrap();
    assert!(sdp.media()[0].is_held());
    sdp.relay(&[Some(relay_at(30000))]);
    let m = &sdp.media()[0];
    assert!(m.is_held(), "{sdp}");
    assert_eq!(m.port, 30000);
    let inactive = OFFER.replace("a=sendrecv", "a=inactive");
    assert!(Sdp::parse(inactive.as_bytes()).unwrap().media()[0].is_held());
    let refused = OFFER.replace("m=audio 40000", "m=audio 0");
    let mut sdp = Sdp::parse(refused.as_bytes()).unwrap();
    sdp.relay(&[Some(relay_at(30000))]);
    assert_eq!(sdp.media()[0].port, 0, "a refused stream must stay refused");
}

#[test]
fn the_origin_version_moves_only_when_the_body_changes() {
    let relay: IpAddr = "198.18.1.1".parse().unwrap();
    let mut stamp = OriginStamp::default();
    let sent = |stamp: &mut OriginStamp, body: &str| {
        let mut sdp = Sdp::parse(body.as_bytes()).unwrap();
        sdp.relay(&[Some(relay_at(30000))]);
        stamp.stamp(&mut sdp, relay);
        sdp.origin().unwrap()
    };
    let first = sent(&mut stamp, OFFER);
    assert_eq!((first.username.as_str(), first.address.as_str()), ("alice", "198.18.1.1"));
    // The same offer again (a session refresh), even with the phone's own version bumped.
    let again = sent(&mut stamp, &OFFER.replace("2890844526 IN", "2890844527 IN"));
    assert_eq!(again, first);
    // Hold: the body changes, the version moves by one; session id and username stay.
    let hold = sent(&mut stamp, &OFFER.replace("a=sendrecv", "a=sendonly"));
    assert_eq!(hold.version, first.version + 1);
    assert_eq!((hold.session_id, hold.username), (first.session_id, first.username));
}

#[test]
fn clock_rates_come_from_rtpmap_or_the_static_table() {
    let body = "v=0\r\no=- 1 1 IN IP4 198.18.0.11\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\n\
                m=audio 4002 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\nm=video 4004 RTP/AVP 97\r\n";
    let sdp = Sdp::parse(body.as_bytes()).unwrap();
    assert_eq!(sdp.clock_rate(0), Some(8_000), "PCMA, static");
    assert_eq!(sdp.clock_rate(1), Some(48_000), "opus from its rtpmap");
    assert_eq!(sdp.clock_rate(2), None, "a dynamic type without rtpmap");
    assert_eq!(sdp.clock_rate(3), None, "no such stream");
}

#[test]
fn bad_bodies_name_their_line() {
    for (body, line) in [
        ("", 1),
        ("o=x 1 1 IN IP4 1.2.3.4\r\n", 1),
        ("v=0\r\nbad line\r\n", 2),
        ("v=0\r\ns=-\r\nm=audio\r\n", 3),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", 2),
        ("v=0\r\nM=audio 1 RTP/AVP 0\r\n", 2),
    ] {
        let e = Sdp::parse(body.as_bytes()).unwrap_err();
        assert_eq!(e.line, line, "{body:?}: {e}");
    }
    assert_eq!(Sdp::parse(&[0xff, 0xfe]).unwrap_err().line, 0);
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]=[ -~]{0,40}",
        (1u16..65535, "[0-9 ]{0,10}").prop_map(|(p, f)| format!("m=audio {p} RTP/AVP {f}")),
        "c=IN IP4 (198\\.18\\.[0-9]\\.[0-9]|0\\.0\\.0\\.0)",
        "a=(sendrecv|sendonly|recvonly|inactive|rtcp:[0-9]{1,5}|candidate:[ -~]{0,20}|ice-pwd:[a-z]{4})",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Whatever arrives: a clean error or a body that writes back as its lines.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(mut sdp) = Sdp::parse(&data) {
            let again = Sdp::parse(&sdp.to_bytes()).expect("what was written parses");
            prop_assert_eq!(&again, &sdp);
            let _ = (sdp.origin(), sdp.media());
            sdp.relay(&[Some(relay_at(30000)), None, Some(relay_at(30002))]);
            prop_assert!(Sdp::parse(&sdp.to_bytes()).is_ok());
        }
    }

    /// Relaying keeps the number of streams, refuses none, and leaves every stream it was
    /// given on the relay's address and port (or held), every other attribute kept.
    #[test]
    fn relayed_bodies_keep_their_streams(lines in proptest::collection::vec(line(), 0..20)) {
        let body = format!("v=0\r\no=- 1 1 IN IP4 198.18.0.11\r\n{}", lines.iter().map(|l| format!("{l}\r\n")).collect::<String>());
        let Ok(mut sdp) = Sdp::parse(body.as_bytes()) else { return Ok(()) };
        let before = sdp.media();
        let ports: Vec<Option<RelayPort>> = (0..before.len()).map(|i| Some(relay_at(30000 + 2 * i as u16))).collect();
        let kept: Vec<String> = sdp.lines().iter()
            .filter(|l| l.kind == b'a' && !is_ice(&l.value) && !l.value.starts_with("rtcp:"))
            .map(|l| l.value.clone()).collect();
        sdp.relay(&ports);
        let after = sdp.media();
        prop_assert_eq!(after.len(), before.len());
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if b.port == 0 {
                prop_assert_eq!(a.port, 0);
                continue;
            }
            prop_assert_eq!(a.port, 30000 + 2 * i as u16);
            let held = b.address.is_some_and(|x| x.is_unspecified());
            if held {
                prop_assert!(a.address.is_some_and(|x| x.is_unspecified()));
            } else if b.address.is_some() {
                prop_assert_eq!(a.address, Some("198.18.1.1".parse().unwrap()));
            }
            prop_assert_eq!(a.direction, b.direction);
        }
        let now: Vec<String> = sdp.lines().iter().filter(|l| l.kind == b'a').map(|l| l.value.clone()).collect();
        for k in kept {
            prop_assert!(now.contains(&k), "attribute {} lost", k);
        }
        prop_assert!(!sdp.lines().iter().any(|l| l.kind == b'a' && is_ice(&l.value)) || before.is_empty());
    }
}
