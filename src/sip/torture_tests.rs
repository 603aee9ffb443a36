//! RFC 4475: every torture message with the verdict the RFC asks for (see
//! tests/data/rfc4475/README.md), byte-identical round trips, and stream framing.

use super::*;

/// What a message must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Accept,
    /// Answered with this status; the reason must mention the text.
    Reply(u16, &'static str),
    Drop,
    /// Not referenced by the RFC: anything but a panic.
    Any,
}

use Expect::*;

macro_rules! corpus {
    ($($name:literal => $expect:expr,)*) => {
        pub(super) const CORPUS: &[(&str, &[u8], Expect)] = &[$(
            ($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475/", $name, ".dat")), $expect),
        )*];
    };
}

corpus! {
    // 3.1.1 valid messages
    "wsinv" => Accept,
    "intmeth" => Accept,
    "esc01" => Accept,
    "escnull" => Accept,
    "esc02" => Accept,
    "lwsdisp" => Accept,
    "longreq" => Accept,
    "dblreq" => Accept,
    "semiuri" => Accept,
    "transports" => Accept,
    "mpart01" => Accept,
    "unreason" => Accept,
    "noreason" => Accept,
    // 3.1.2 invalid messages
    "badinv01" => Reply(400, "Via"),
    "clerr" => Reply(400, "Content-Length exceeds"),
    "ncl" => Reply(400, "Content-Length is not a decimal"),
    "scalar02" => Reply(400, "CSeq"),
    "scalarlg" => Drop,
    "quotbal" => Reply(400, "To"),
    "ltgtruri" => Reply(400, "start line"),
    "lwsruri" => Reply(400, "start line"),
    "lwsstart" => Reply(400, "start line"),
    "trws" => Reply(400, "start line"),
    "escruri" => Reply(400, "Request-URI must not contain headers"),
    "baddate" => Reply(400, "Date"),
    "regbadct" => Reply(400, "Contact"),
    "badaspec" => Reply(400, "To"),
    "baddn" => Reply(400, "not terminated"),
    "badvers" => Reply(505, "Version"),
    "mismatch01" => Reply(400, "CSeq method"),
    "mismatch02" => Reply(400, "CSeq method"),
    "bigcode" => Drop,
    // 3.2 transaction layer
    "badbranch" => Accept,
    // 3.3 application layer
    "insuf" => Drop,
    "unkscm" => Accept,
    "novelsc" => Accept,
    "unksm2" => Accept,
    "bext01" => Accept,
    "invut" => Accept,
    "regaut01" => Accept,
    "multi01" => Reply(400, "more than once"),
    "mcl01" => Reply(400, "Content-Length appears more than once"),
    "bcast" => Accept,
    "zeromf" => Accept,
    "cparam01" => Accept,
    "cparam02" => Accept,
    "regescrt" => Accept,
    "sdp01" => Accept,
    // 3.4 backward compatibility
    "inv2543" => Accept,
    // in the archive, not referenced by the RFC
    "test" => Any,
}

fn data(name: &str) -> &'static [u8] {
    CORPUS.iter().find(|(n, _, _)| *n == name).map(|(_, d, _)| *d).unwrap_or_else(|| panic!("no {name}"))
}

fn verdict(data: &[u8]) -> Verdict {
    match parse_datagram(data) {
        Ok(msg) => judge(&msg),
        Err(e) => judge_unparsed(data, &e),
    }
}

#[test]
fn corpus_is_complete() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");
    let on_disk = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("dat".as_ref()));
    assert_eq!(on_disk.count(), CORPUS.len());
    assert_eq!(CORPUS.len(), 50);
}

#[test]
fn every_message_gets_the_rfc_verdict() {
    let mut wrong = Vec::new();
    for (name, bytes, expect) in CORPUS {
        let got = verdict(bytes);
        let ok = match (expect, &got) {
            (Accept, Verdict::Accept) | (Drop, Verdict::Drop { .. }) | (Any, _) => true,
            (Reply(s, text), Verdict::Reply { status, reason }) => s == status && reason.contains(text),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn valid_messages_round_trip_byte_identically() {
    for (name, bytes, expect) in CORPUS {
        if *expect != Accept {
            continue;
        }
        let msg = parse_datagram(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = msg.to_bytes();
        assert_eq!(out.len(), msg.wire_len(), "{name}");
        if *name == "dblreq" {
            // RFC 4475 §3.1.1.8: the octets after the first message are not part of it.
            assert_eq!(out, &bytes[..300], "{name}");
        } else {
            assert_eq!(out, *bytes, "{name}");
        }
        // and parsing the output gives the same message
        assert_eq!(parse_datagram(&out).unwrap(), msg, "{name}");
    }
}

#[test]
fn invalid_messages_that_parse_still_round_trip() {
    // A proxy-like element may have to forward what it cannot interpret: lossless either way.
    for (name, bytes, _) in CORPUS {
        if let Ok(msg) = parse_datagram(bytes) {
            assert!(bytes.starts_with(&msg.to_bytes()), "{name}");
        }
    }
}

#[test]
fn replies_can_be_built_for_every_reply_verdict() {
    for (name, bytes, expect) in CORPUS {
        let Reply(status, _) = expect else { continue };
        let ctx = match parse_datagram(bytes) {
            Ok(m) => ReplyContext::from_message(&m),
            Err(_) => ReplyContext::from_datagram(bytes),
        }
        .unwrap_or_else(|| panic!("{name}: no reply context"));
        let resp = ctx.response(*status, "Bad Request", Some("b2b1")).unwrap();
        let back = parse_datagram(&resp.to_bytes()).unwrap();
        assert_eq!(back.status(), Some(*status), "{name}");
        assert_eq!(
            back.count("Via"),
            parse_datagram(bytes).map(|m| m.count("Via")).unwrap_or(back.count("Via"))
        );
        assert_eq!(back.content_length().unwrap(), Some(0));
        assert!(back.get("Call-ID").is_some() && back.get("CSeq").is_some(), "{name}");
    }
    let resp = ReplyContext::from_message(&parse_datagram(data("mismatch01")).unwrap())
        .unwrap()
        .response(400, "Bad Request", Some("b2b1"))
        .unwrap();
    assert_eq!(resp.to().unwrap().tag(), Some("b2b1"));
    assert_eq!(resp.cseq().unwrap().method, "INVITE");
    assert_eq!(
        String::from_utf8(resp.to_bytes()).unwrap(),
        "SIP/2.0 400 Bad Request\r\n\
         Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n\
         From: sip:caller@example.net;tag=34525\r\n\
         To: sip:j.user@example.com;tag=b2b1\r\n\
         Call-ID: mismatch01.dj0234sxdfl3\r\n\
         CSeq: 8 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

#[test]
fn wsinv_accessors() {
    let m = parse_datagram(data("wsinv")).unwrap();
    assert_eq!(m.method(), Some("INVITE"));
    let Uri::Sip(ruri) = m.request_uri().unwrap() else { panic!() };
    assert_eq!((ruri.user.as_deref(), ruri.host.as_str()), (Some("vivekg"), "chair-dnrc.example.com"));
    assert_eq!(ruri.param("unknownparam"), Some(None));
    let to = m.to().unwrap();
    assert_eq!(to.tag(), Some("1918181833n"));
    assert!(!to.angle_brackets);
    let from = m.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards().unwrap(), Some(68));
    assert_eq!(m.call_id().unwrap(), "wsinv.ndaksdj@192.0.2.1");
    assert_eq!(m.content_length().unwrap(), Some(150));
    assert_eq!(m.cseq().unwrap(), CSeq { seq: 9, method: "INVITE".into() });
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport.as_str(), vias[0].host.as_str(), vias[0].branch()),
        ("UDP", "192.0.2.2", Some("390skdjuw"))
    );
    assert_eq!(
        (vias[1].transport.as_str(), vias[1].host.as_str(), vias[1].branch()),
        ("TCP", "spindle.example.com", Some("z9hG4bK9ikj8"))
    );
    assert_eq!((vias[2].host.as_str(), vias[2].branch()), ("192.168.255.111", Some("z9hG4bK30239")));
    assert_eq!(m.top_via().unwrap(), vias[0]);
    // the empty Subject (compact `s`), folded unknown header, unusual unknown value
    assert_eq!(m.get("Subject").unwrap().name(), "s");
    assert_eq!(&*m.get("subject").unwrap().value(), b"");
    assert_eq!(&*m.get("NewFangledHeader").unwrap().value(), b"newfangled value continued newfangled value");
    assert_eq!(
        m.get("NewFangledHeader").unwrap().raw_value(),
        b"newfangled value\r\n continued newfangled value"
    );
    assert_eq!(&*m.get("UnknownHeaderWithUnusualValue").unwrap().value(), b";;,,;;,;");
    assert!(m.content_type().unwrap().unwrap().is("application", "sdp"));
    let ContactList::Addrs(contacts) = m.contacts().unwrap() else { panic!() };
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].display_name.as_deref(), Some("Quoted string \"\""));
    assert_eq!(contacts[0].params.value("newparam"), Some("newvalue"));
    assert!(contacts[0].params.has("secondparam"));
    assert_eq!(contacts[0].q(), Some(0.33));
    let routes = m.routes().unwrap();
    assert_eq!(routes[0].uri.as_sip().unwrap().param("unknownwith"), Some(Some("value")));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn intmeth_unusual_characters() {
    let m = parse_datagram(data("intmeth")).unwrap();
    assert_eq!(m.method(), Some("!interesting-Method0123456789_*+`.%indeed'~"));
    let Uri::Sip(ruri) = m.request_uri().unwrap() else { panic!() };
    assert_eq!(ruri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
    assert_eq!(ruri.password.as_deref(), Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
    assert_eq!(ruri.host, "example.com");
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
    assert_eq!(m.to().unwrap().display_name.as_deref(), Some("BEL:\x07 NUL:\0 DEL:\x7f"));
    let from = m.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(from.params.value("fromParam''~+*_!.-%"), Some("\"работающий\""));
    assert_eq!(m.call_id().unwrap(), "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
    assert_eq!(m.cseq().unwrap().method, "!interesting-Method0123456789_*+`.%indeed'~");
    assert_eq!(m.max_forwards().unwrap(), Some(255));
    assert_eq!(m.get("extensionHeader-!.%*+_`'~").unwrap().value_text("x").unwrap(), "\u{feff}大停電");
}

#[test]
fn escapes_are_kept_and_decodable() {
    let m = parse_datagram(data("esc01")).unwrap();
    let Uri::Sip(ruri) = m.request_uri().unwrap() else { panic!() };
    assert_eq!(ruri.user.as_deref(), Some("sips%3Auser%40example.com"));
    assert_eq!(ruri.user_decoded().unwrap(), b"sips:user@example.com");
    assert_eq!(m.from().unwrap().uri.as_sip().unwrap().user_decoded().unwrap(), b"I have spaces");
    assert_eq!(m.get("c").unwrap().name(), "C");
    assert!(m.content_type().unwrap().unwrap().is("application", "sdp"));
    let ContactList::Addrs(c) = m.contacts().unwrap() else { panic!() };
    assert_eq!(c[0].uri.as_sip().unwrap().params[0], ("%6C%72".to_owned(), None));

    let m = parse_datagram(data("escnull")).unwrap();
    assert_eq!(m.to().unwrap().uri.as_sip().unwrap().user_decoded().unwrap(), b"null-\0-null");
    assert_eq!(m.content_length().unwrap(), Some(0));
    assert_eq!(m.get("Content-Length").unwrap().name(), "L");

    // esc02: % is no escape in a method; C%6Fntact is an unknown header, not a Contact.
    let m = parse_datagram(data("esc02")).unwrap();
    assert_eq!(m.method(), Some("RE%47IST%45R"));
    assert_eq!(m.count("Contact"), 2);
    assert_eq!(m.to().unwrap().display_name.as_deref(), Some("%Z%45"));
}

#[test]
fn longreq_multi_value_and_compact_via() {
    let m = parse_datagram(data("longreq")).unwrap();
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 34);
    assert_eq!(vias[0].host, "sip33.example.com");
    assert_eq!(vias[33].received(), Some("192.0.2.5"));
    assert_eq!(m.count("v"), 34);
    assert_eq!(m.to().unwrap().uri.as_sip().unwrap().port, Some(6000));
    assert_eq!(m.content_length().unwrap(), Some(150));
}

#[test]
fn other_valid_messages() {
    let m = parse_datagram(data("lwsdisp")).unwrap();
    assert_eq!(m.from().unwrap().display_name.as_deref(), Some("caller"));
    let m = parse_datagram(data("semiuri")).unwrap();
    assert_eq!(m.request_uri().unwrap().as_sip().unwrap().user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(m.values("Accept").unwrap().len(), 6);
    let m = parse_datagram(data("transports")).unwrap();
    let t: Vec<String> = m.vias().unwrap().into_iter().map(|v| v.transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    let m = parse_datagram(data("mpart01")).unwrap();
    let ct = m.content_type().unwrap().unwrap();
    assert!(ct.is("multipart", "mixed"));
    assert_eq!(ct.params.value("boundary"), Some("7a9cbec02ceef655"));
    assert_eq!(m.top_via().unwrap().rport(), Some(None));
    assert!(m.date().unwrap().is_some());
    let m = parse_datagram(data("unreason")).unwrap();
    assert_eq!(m.status(), Some(200));
    let StartLine::Response { reason, .. } = m.start_line() else { panic!() };
    assert!(String::from_utf8(reason.clone()).unwrap().starts_with("= 2**3 * 5**2 но"));
    let m = parse_datagram(data("noreason")).unwrap();
    assert_eq!(m.start_line(), &StartLine::Response { version: "SIP/2.0".into(), code: 100, reason: vec![] });
    let m = parse_datagram(data("inv2543")).unwrap();
    assert_eq!(m.max_forwards().unwrap(), None);
    assert_eq!(m.content_length().unwrap(), None);
    assert!(m.body().starts_with(b"v=0\r\n") && m.body().ends_with(b"RTP/AVP 0\r\n"));
    assert_eq!(m.to().unwrap().params.value("user"), Some("phone"));
    let m = parse_datagram(data("unksm2")).unwrap();
    assert_eq!(m.to().unwrap().uri, Uri::Other { scheme: "isbn".into(), rest: "2983792873".into() });
    let m = parse_datagram(data("unkscm")).unwrap();
    assert!(matches!(m.request_uri().unwrap(), Uri::Other { .. }));
    let m = parse_datagram(data("regescrt")).unwrap();
    let ContactList::Addrs(c) = m.contacts().unwrap() else { panic!() };
    assert_eq!(
        c[0].uri.as_sip().unwrap().headers,
        [("Route".to_owned(), "%3Csip:sip.example.com%3E".to_owned())]
    );
    let m = parse_datagram(data("cparam01")).unwrap();
    let ContactList::Addrs(c) = m.contacts().unwrap() else { panic!() };
    assert!(c[0].params.has("unknownparam") && c[0].uri.as_sip().unwrap().params.is_empty());
    let m = parse_datagram(data("zeromf")).unwrap();
    assert_eq!(m.max_forwards().unwrap(), Some(0));
}

#[test]
fn specific_faults() {
    let m = parse_datagram(data("scalar02")).unwrap();
    assert!(m.cseq().is_err());
    assert!(m.max_forwards().is_err());
    assert!(m.expires().is_err());
    assert!(m.contacts().is_err());
    let m = parse_datagram(data("scalarlg")).unwrap();
    assert!(m.cseq().is_err());
    assert_eq!(
        parse_datagram(data("bigcode")),
        Err(ParseError::StartLine("status code is not three digits"))
    );
    assert_eq!(parse_datagram(data("clerr")), Err(ParseError::Truncated));
    assert_eq!(parse_datagram(data("ncl")), Err(ParseError::InvalidContentLength));
    assert_eq!(parse_datagram(data("mcl01")), Err(ParseError::RepeatedContentLength));
    assert_eq!(parse_datagram(data("baddn")), Err(ParseError::Unterminated));
    let m = parse_datagram(data("badvers")).unwrap();
    assert_eq!(m.version(), "SIP/7.0");
    assert_eq!(m.top_via().unwrap().version, "7.0");
    assert!(ReplyContext::from_datagram(data("insuf")).is_none());
}

#[test]
fn stream_framing_of_every_message() {
    for (name, bytes, _) in CORPUS {
        let Ok(msg) = parse_datagram(bytes) else { continue };
        if msg.content_length().ok().flatten().is_none() || msg.get("Content-Length").is_none() {
            // RFC 3261 §18.3: Content-Length is required on streams (inv2543 has none).
            let mut f = StreamFramer::new();
            f.push(bytes);
            assert_eq!(f.next_frame(), Err(FrameError(ParseError::MissingContentLength)), "{name}");
            continue;
        }
        if *name == "dblreq" {
            continue; // a datagram test: on a stream its leftover octets are garbage (below)
        }
        let expected = frames_of(bytes, &[bytes.len()]);
        assert_eq!(expected, [Frame::Message(msg)], "{name}");
        for cut in 0..=bytes.len() {
            assert_eq!(frames_of(bytes, &[cut, bytes.len()]), expected, "{name} cut at {cut}");
        }
    }
}

#[test]
fn dblreq_on_a_stream() {
    // Two requests, a stray CRLF between them, then octets beyond the second one's declared
    // body: on a stream those cannot be framed, and the connection must go.
    let bytes = data("dblreq");
    let mut f = StreamFramer::new();
    f.push(bytes);
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(m))) if m.method() == Some("REGISTER")));
    assert_eq!(f.next_frame(), Ok(Some(Frame::Pong)));
    assert!(
        matches!(f.next_frame(), Ok(Some(Frame::Message(m))) if m.method() == Some("INVITE") && m.body().len() == 150)
    );
    assert!(f.next_frame().is_err());
}

/// Feeds `bytes` in pieces ending at each of `cuts`, draining after every push.
pub(super) fn frames_of(bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut f = StreamFramer::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts {
        f.push(&bytes[from..cut]);
        from = cut;
        while let Some(frame) = f.next_frame().unwrap_or_else(|e| panic!("{e} at {cut} of {cuts:?}")) {
            out.push(frame);
        }
    }
    assert_eq!(f.buffered(), 0);
    out
}

#[test]
fn stream_invalid_but_framed_messages_do_not_kill_the_connection() {
    let mut stream = data("lwsstart").to_vec();
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend_from_slice(data("mismatch01"));
    let frames = frames_of(&stream, &[stream.len()]);
    assert!(
        matches!(&frames[0], Frame::Invalid { error: ParseError::StartLine(_), bytes } if bytes.len() == data("lwsstart").len())
    );
    assert_eq!(frames[1], Frame::Ping);
    let Frame::Message(m) = &frames[2] else { panic!("{frames:?}") };
    assert_eq!(m.to_bytes(), data("mismatch01"));
    let Frame::Invalid { error, bytes } = &frames[0] else { panic!() };
    assert!(matches!(judge_unparsed(bytes, error), Verdict::Reply { status: 400, .. }));
}

#[test]
fn stream_framing_errors_are_fatal() {
    for (name, err) in
        [("ncl", ParseError::InvalidContentLength), ("mcl01", ParseError::RepeatedContentLength)]
    {
        let mut f = StreamFramer::new();
        f.push(data(name));
        assert_eq!(f.next_frame(), Err(FrameError(err.clone())), "{name}");
        f.push(data("zeromf"));
        assert_eq!(f.next_frame(), Err(FrameError(err)), "{name}: errors are sticky");
    }
    // clerr on a stream: wait for the rest of the body
    let mut f = StreamFramer::new();
    f.push(data("clerr"));
    assert_eq!(f.next_frame(), Ok(None));
}
