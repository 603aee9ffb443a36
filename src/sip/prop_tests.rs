//! Property tests: hostile bytes never panic, generated messages round-trip byte-identically,
//! edits keep messages parseable, and stream framing is independent of how bytes arrive.

use proptest::prelude::*;

use super::torture_tests::{frames_of, CORPUS};
use super::*;

/// Runs everything a transport and the B2BUA would run on received bytes.
fn exercise(data: &[u8]) {
    match parse_datagram(data) {
        Ok(msg) => {
            let out = msg.to_bytes();
            assert!(data.starts_with(&out), "serialisation is not a prefix of the input");
            assert_eq!(out.len(), msg.wire_len());
            assert_eq!(parse_datagram(&out).as_ref(), Ok(&msg), "re-parse differs");
            let _ = judge(&msg);
            let _ = ReplyContext::from_message(&msg).map(|c| c.response(400, "Bad Request", Some("x")));
            let _ = (msg.request_uri(), msg.vias(), msg.top_via(), msg.from(), msg.to(), msg.call_id());
            let _ = (msg.cseq(), msg.max_forwards(), msg.contacts(), msg.routes(), msg.record_routes());
            let _ = (msg.content_length(), msg.content_type(), msg.expires(), msg.date());
            for h in msg.headers() {
                let _ = (h.canonical_name(), h.value(), h.value_text("x"), msg.values("Via"));
            }
            edit_and_reparse(&msg);
        }
        Err(e) => {
            let _ = judge_unparsed(data, &e);
            let _ = ReplyContext::from_datagram(data).map(|c| c.response(400, &e.to_string(), Some("x")));
        }
    }
    let mut f = StreamFramer::new();
    f.push(data);
    for _ in 0..data.len() + 1 {
        match f.next_frame() {
            Ok(Some(Frame::Message(m))) => assert_eq!(parse_message(&m.to_bytes()), Ok(m)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

/// Every edit leaves a message that parses back to itself.
fn edit_and_reparse(msg: &Message) {
    let check = |m: &Message| {
        let bytes = m.to_bytes();
        let back = parse_datagram(&bytes).unwrap_or_else(|e| panic!("edited message does not parse: {e}"));
        assert_eq!(back.to_bytes(), bytes);
    };
    let mut m = msg.clone();
    m.prepend_via("SIP/2.0/TCP b2bua.invalid;branch=z9hG4bKprop").unwrap();
    check(&m);
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKprop"));
    m.pop_via();
    check(&m);
    m.set_header("Max-Forwards", "70").unwrap();
    check(&m);
    m.set_body(b"v=0\r\n".to_vec());
    check(&m);
    assert_eq!(m.content_length(), Ok(Some(5)));
    assert_eq!(parse_datagram(&m.to_bytes()).unwrap().body(), b"v=0\r\n");
}

fn mutate(mut data: Vec<u8>, ops: &[(usize, u8, u8)]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\r\n \t:;,\"<>%@[]\\\0";
    for &(pos, op, byte) in ops {
        if data.is_empty() {
            data.push(byte);
            continue;
        }
        let i = pos % data.len();
        match op % 6 {
            0 => data[i] = byte,
            1 => data.truncate(i),
            2 => data.insert(i, INTERESTING[byte as usize % INTERESTING.len()]),
            3 => {
                data.remove(i);
            }
            4 => {
                let b = data[(i + byte as usize) % data.len()];
                data.insert(i, b);
            }
            _ => {
                let end = (i + 1 + byte as usize % 16).min(data.len());
                let chunk = data[i..end].to_vec();
                data.splice(i..i, chunk);
            }
        }
    }
    data
}

fn cased(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
            .collect()
    })
}

/// One header field as raw text: any name (compact forms, odd case), odd spacing, folding.
fn header_field() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        cased("Via"),
        cased("v"),
        cased("From"),
        cased("f"),
        cased("To"),
        cased("t"),
        cased("Call-ID"),
        cased("i"),
        cased("CSeq"),
        cased("Contact"),
        cased("m"),
        cased("Route"),
        cased("Max-Forwards"),
        cased("Subject"),
        cased("s"),
        "[A-Za-z][A-Za-z0-9!%*_+`'~.-]{0,20}".prop_filter("not Content-Length", |n| {
            !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("l")
        }),
    ];
    let value = "[ -~]{0,40}";
    let folds = proptest::collection::vec(("[ \t]{1,3}", "[!-~][ -~]{0,20}"), 0..3);
    (name, "[ \t]{0,2}", "[ \t]{0,2}", value, folds).prop_map(|(n, before, after, v, folds)| {
        let mut s = format!("{n}{before}:{after}{v}");
        for (ws, text) in folds {
            s.push_str(&format!("\r\n{ws}{text}"));
        }
        s
    })
}

/// A complete message with Content-Length, and its header fields as generated.
fn message() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
    let start = prop_oneof![
        ("[A-Z]{3,10}", "[a-z0-9]{1,8}", "[a-z0-9.-]{1,20}")
            .prop_map(|(m, u, h)| format!("{m} sip:{u}@{h} SIP/2.0")),
        (100u16..700, "[ -~]{0,20}").prop_map(|(c, r)| format!("SIP/2.0 {c} {r}")),
    ];
    let cl_name = prop_oneof![Just("Content-Length"), Just("l"), Just("CONTENT-length"), Just("L")];
    (
        start,
        proptest::collection::vec(header_field(), 0..12),
        cl_name,
        0usize..4,
        proptest::collection::vec(any::<u8>(), 0..200),
        0usize..13,
    )
        .prop_map(|(start, mut fields, cl, zeros, body, at)| {
            fields.insert(at.min(fields.len()), format!("{cl}: {}{}", "0".repeat(zeros), body.len()));
            let mut bytes = format!("{start}\r\n").into_bytes();
            for f in &fields {
                bytes.extend_from_slice(f.as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(&body);
            (bytes, fields)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&data);
    }

    #[test]
    fn sip_like_text_never_panics(data in "[A-Za-z0-9 :;,=<>@/.\"\\\\%\\[\\]\r\n\t-]{0,300}") {
        exercise(data.as_bytes());
        let mut with_head = b"INVITE sip:a@b SIP/2.0\r\nVia: ".to_vec();
        with_head.extend_from_slice(data.as_bytes());
        exercise(&with_head);
    }

    #[test]
    fn mutated_torture_messages_never_panic(
        which in 0..CORPUS.len(),
        ops in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        exercise(&mutate(CORPUS[which].1.to_vec(), &ops));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_round_trip((bytes, fields) in message()) {
        let msg = parse_datagram(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        prop_assert_eq!(msg.to_bytes(), bytes.clone());
        prop_assert_eq!(msg.headers().len(), fields.len());
        for (h, f) in msg.headers().iter().zip(&fields) {
            prop_assert_eq!(h.raw(), f.as_bytes());
            prop_assert!(msg.get(h.name()).is_some());
            prop_assert!(msg.get(h.canonical_name()).is_some());
        }
        prop_assert_eq!(parse_message(&bytes), Ok(msg.clone()));
        edit_and_reparse(&msg);
        exercise(&bytes);
    }

    #[test]
    fn framing_does_not_depend_on_how_bytes_arrive(
        msgs in proptest::collection::vec((message(), any::<bool>()), 1..4),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for ((bytes, _), ping) in &msgs {
            if *ping {
                stream.extend_from_slice(b"\r\n\r\n");
                expected.push(Frame::Ping);
            }
            stream.extend_from_slice(bytes);
            expected.push(match parse_message(bytes) {
                Ok(m) => Frame::Message(m),
                Err(error) => Frame::Invalid { error, bytes: bytes.clone() },
            });
        }
        prop_assert_eq!(frames_of(&stream, &[stream.len()]), expected.clone());
        // cut anywhere except inside a ping (a split ping reads as two pongs, by design)
        let pings: Vec<usize> = stream.windows(4).enumerate().filter(|(_, w)| *w == b"\r\n\r\n").map(|(i, _)| i + 2).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).filter(|p| !pings.contains(p)).collect();
        points.sort_unstable();
        points.push(stream.len());
        prop_assert_eq!(frames_of(&stream, &points), expected);
    }
}
