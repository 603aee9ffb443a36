//! Whatever arrives on a SIP socket (UDP datagram or TCP/TLS stream) must parse or be refused,
//! be judged, serialise and frame without panicking; a parsed message serialises to a prefix of
//! its input, re-parses to itself, and stays parseable after the B2BUA's edits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::sip::{
    judge, judge_unparsed, parse_datagram, parse_message, Frame, Message, ReplyContext, StreamFramer,
};

fn accessors(msg: &Message) {
    let _ = (msg.request_uri(), msg.vias(), msg.top_via(), msg.from(), msg.to(), msg.call_id());
    let _ = (msg.cseq(), msg.max_forwards(), msg.contacts(), msg.routes(), msg.record_routes());
    let _ = (msg.content_length(), msg.content_type(), msg.expires(), msg.date(), msg.values("Via"));
    for h in msg.headers() {
        let _ = (h.canonical_name(), h.value(), h.value_text("x"));
    }
}

fn reparses(msg: &Message) {
    let bytes = msg.to_bytes();
    let back = parse_datagram(&bytes).expect("an edited message must parse");
    assert_eq!(back.to_bytes(), bytes);
}

fn drain(f: &mut StreamFramer) {
    while let Ok(Some(frame)) = f.next_frame() {
        match frame {
            Frame::Message(m) => assert_eq!(parse_message(&m.to_bytes()).as_ref(), Ok(&m)),
            Frame::Invalid { error, bytes } => {
                let _ = judge_unparsed(&bytes, &error);
            }
            Frame::Ping | Frame::Pong => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_datagram(data) {
        Ok(msg) => {
            let out = msg.to_bytes();
            assert!(data.starts_with(&out), "serialisation must be the received octets");
            assert_eq!(parse_datagram(&out).as_ref(), Ok(&msg));
            let _ = judge(&msg);
            accessors(&msg);
            if let Some(ctx) = ReplyContext::from_message(&msg) {
                reparses(&ctx.response(400, "Bad Request", Some("fuzz")).expect("valid status"));
            }
            let mut m = msg.clone();
            m.prepend_via("SIP/2.0/TCP b2bua.invalid;branch=z9hG4bKfuzz").expect("valid header");
            reparses(&m);
            m.pop_via();
            m.pop_via();
            reparses(&m);
            m.set_body(b"v=0\r\n".to_vec());
            reparses(&m);
        }
        Err(e) => {
            let _ = judge_unparsed(data, &e);
            if let Some(ctx) = ReplyContext::from_datagram(data) {
                reparses(&ctx.response(400, "Bad Request", Some("fuzz")).expect("valid status"));
            }
        }
    }
    // The same octets as a stream, arriving in two pieces.
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut f = StreamFramer::new();
    f.push(&data[..cut]);
    drain(&mut f);
    f.push(&data[cut..]);
    drain(&mut f);
});
