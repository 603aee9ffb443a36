//! The HTTP/1.1 fast path's parsers face every client and server byte: whatever arrives, the
//! head parser and the chunked scanner answer without panicking; a request head judged
//! usual is written back out as a head that parses to the same request line and framing; a
//! chunked body fed in two pieces ends where it ends when fed whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::proxy::http::h1::chunked::Chunked;
use portier::proxy::http::h1::head::{may_be_complete, Head, Parsed};

fuzz_target!(|data: &[u8]| {
    let mut h = Head::default();
    let _ = may_be_complete(data, data.len() / 2);
    let _ = h.parse_response(data, data.first() == Some(&b'H'));
    if h.parse_request(data) == Parsed::Done && !h.unusual {
        let mut out = Vec::new();
        h.write_request(data, &mut out, &[]);
        out.extend_from_slice(b"\r\n");
        let mut again = Head::default();
        assert_eq!(again.parse_request(&out), Parsed::Done);
        assert_eq!(&out[again.method.clone()], &data[h.method.clone()]);
        assert_eq!(&out[again.target.clone()], &data[h.target.clone()]);
        assert_eq!(again.framing, h.framing);
    }
    let whole = {
        let mut c = Chunked::default();
        c.feed(data).map(|n| (n, c.is_done()))
    };
    if let Ok((n, true)) = whole {
        let cut = data.len() / 3;
        let mut c = Chunked::default();
        let first = c.feed(&data[..cut]).expect("a prefix of a valid body is valid");
        let total = if c.is_done() { first } else { first + c.feed(&data[cut..]).expect("valid") };
        assert!(c.is_done());
        assert_eq!(total, n);
    }
});
