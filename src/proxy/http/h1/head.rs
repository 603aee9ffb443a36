//! HTTP/1.1 heads for the fast path, sans-IO: parsed once (httparse) into ranges of the read
//! buffer, judged (what the fast path forwards itself, what it leaves to hyper), and written
//! back out without the hop-by-hop fields. Nothing here allocates once the field list has
//! grown to the connection's usual head.

use std::ops::Range;

/// More fields than this: hyper's limit too, so the hand-off answers 431 the same way.
pub const MAX_FIELDS: usize = 100;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (GET without length, HEAD's response, 204, 304, 1xx).
    Empty,
    Length(u64),
    Chunked,
    /// A response without length: its body ends when the server closes.
    UntilClose,
}

/// One parsed head. The ranges index the buffer it was parsed from.
#[derive(Default, Debug)]
pub struct Head {
    /// Bytes of the head, the blank line included.
    pub len: usize,
    /// Request: method and target; response: reason phrase in `target`.
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Vec<(Range<usize>, Range<usize>)>,
    /// Field names listed in `Connection:` (removed when forwarding).
    pub listed: Vec<Range<usize>>,
    pub framing: Option<Framing>,
    pub close: bool,
    pub keep_alive: bool,
    pub host: Option<Range<usize>>,
    /// Something the fast path leaves to hyper: Upgrade, Expect, an unusual framing.
    pub unusual: bool,
    /// A `Transfer-Encoding: chunked` field was there (written back even where the message
    /// has no body: a HEAD response describes the GET's).
    te_chunked: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    Done,
    /// Not HTTP/1.x as httparse reads it.
    Invalid,
}

fn range(buf: &[u8], part: &[u8]) -> Range<usize> {
    // An empty part (a missing reason phrase) may be a static "" outside the buffer.
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    if part.is_empty() || start > buf.len() {
        return 0..0;
    }
    start..start + part.len()
}

/// Whether a head can have ended in `buf`, looking only at bytes from `from` on (minus the
/// three before): a head trickling in one byte per read is then not re-parsed each time.
pub fn may_be_complete(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

/// Fields a `Connection:` listing cannot remove.
const FRAMING: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];

const HOP_BY_HOP: [&[u8]; 7] =
    [b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"transfer-encoding"];

impl Head {
    fn reset(&mut self) {
        self.len = 0;
        self.method = 0..0;
        self.target = 0..0;
        self.status = 0;
        self.minor = 0;
        self.fields.clear();
        self.listed.clear();
        self.framing = None;
        self.close = false;
        self.keep_alive = false;
        self.host = None;
        self.unusual = false;
        self.te_chunked = false;
    }

    /// Parses a request head at the start of `buf`.
    pub fn parse_request(&mut self, buf: &[u8]) -> Parsed {
        self.reset();
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Parsed::Invalid;
        };
        self.len = len;
        self.method = range(buf, method.as_bytes());
        self.target = range(buf, path.as_bytes());
        self.minor = minor;
        for f in req.headers.iter() {
            self.fields.push((range(buf, f.name.as_bytes()), range(buf, f.value)));
        }
        self.digest(buf, true);
        // Origin form only: absolute form, `*` and CONNECT are left to hyper, and so is an
        // HTTP/1.1 request without Host, which hyper's path answers 400.
        if !path.starts_with('/') || method == "CONNECT" || minor != 1 || self.host.is_none() {
            self.unusual = true;
        }
        Parsed::Done
    }

    /// Parses a response head at the start of `buf`; `head_request` and the status decide
    /// whether a body follows.
    pub fn parse_response(&mut self, buf: &[u8], head_request: bool) -> Parsed {
        self.reset();
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        };
        let (Some(code), Some(minor)) = (resp.code, resp.version) else { return Parsed::Invalid };
        self.len = len;
        self.status = code;
        self.minor = minor;
        self.target = resp.reason.map(|r| range(buf, r.as_bytes())).unwrap_or(0..0);
        for f in resp.headers.iter() {
            self.fields.push((range(buf, f.name.as_bytes()), range(buf, f.value)));
        }
        self.digest(buf, false);
        if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
            self.framing = Some(Framing::Empty);
        } else if self.framing.is_none() {
            self.framing = Some(Framing::UntilClose);
        }
        if self.unusual {
            // Conflicting lengths, a coding other than chunked, an upgrade nobody asked for:
            // nothing a client could be handed as it is.
            return Parsed::Invalid;
        }
        Parsed::Done
    }

    /// Reads framing and connection options from the fields.
    fn digest(&mut self, buf: &[u8], request: bool) {
        let mut length: Option<u64> = None;
        let mut codings = 0;
        for (name, value) in &self.fields {
            let (n, v) = (&buf[name.clone()], &buf[value.clone()]);
            if n.eq_ignore_ascii_case(b"content-length") {
                match parse_length(v) {
                    Some(l) if length.is_none() || length == Some(l) => length = Some(l),
                    _ => self.unusual = true,
                }
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                codings += 1;
                if v.eq_ignore_ascii_case(b"chunked") {
                    self.te_chunked = true;
                } else {
                    self.unusual = true;
                }
            } else if n.eq_ignore_ascii_case(b"connection") {
                for token in v.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        self.unusual = true;
                    } else if !t.is_empty() && !FRAMING.iter().any(|f| t.eq_ignore_ascii_case(f)) {
                        // Never the framing or the host: `Connection: content-length` must
                        // not strip the length of a body that is still forwarded.
                        self.listed.push(range(buf, t));
                    }
                }
            } else if n.eq_ignore_ascii_case(b"host") {
                if self.host.is_some() {
                    self.unusual = true;
                }
                self.host = Some(value.clone());
            } else if request && (n.eq_ignore_ascii_case(b"upgrade") || n.eq_ignore_ascii_case(b"expect")) {
                self.unusual = true;
            }
        }
        if codings > 1 || (codings == 1 && length.is_some()) {
            // Request smuggling territory (RFC 9112 6.1): hyper judges these.
            self.unusual = true;
        }
        self.framing = match (codings, length) {
            (0, Some(l)) => Some(Framing::Length(l)),
            (0, None) if request => Some(Framing::Empty),
            (0, None) => None,
            _ => Some(Framing::Chunked),
        };
    }

    /// Whether the server connection stays usable after this response.
    pub fn reusable(&self) -> bool {
        !self.close && (self.minor == 1 || self.keep_alive) && self.framing != Some(Framing::UntilClose)
    }

    /// Every value of field `name`.
    pub fn fields_named<'b, 'h>(
        &'h self,
        buf: &'b [u8],
        name: &'h [u8],
    ) -> impl Iterator<Item = &'b [u8]> + Clone + 'h
    where
        'b: 'h,
    {
        self.fields
            .iter()
            .filter(move |(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
            .map(move |(_, v)| &buf[v.clone()])
    }

    fn hop_by_hop(&self, buf: &[u8], name: &[u8]) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.listed.iter().any(|l| buf[l.clone()].eq_ignore_ascii_case(name))
    }

    /// Appends the request line (always HTTP/1.1) and every end-to-end field to `out`;
    /// `Transfer-Encoding: chunked` is written back as the body passes through as it came.
    /// The caller adds its own fields and the blank line.
    /// `drop` names more fields to leave out (the ones portier sets itself).
    pub fn write_request(&self, buf: &[u8], out: &mut Vec<u8>, drop: &[&[u8]]) {
        out.extend_from_slice(&buf[self.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(&buf[self.target.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        self.write_fields(buf, out, drop);
    }

    /// Appends the status line (HTTP/1.1) and the end-to-end fields of a response.
    pub fn write_response(&self, buf: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&itoa3(self.status));
        out.push(b' ');
        out.extend_from_slice(&buf[self.target.clone()]);
        out.extend_from_slice(b"\r\n");
        self.write_fields(buf, out, &[]);
    }

    fn write_fields(&self, buf: &[u8], out: &mut Vec<u8>, drop: &[&[u8]]) {
        // Equal Content-Length fields were accepted as one length (`digest`): one goes out,
        // as servers and clients may refuse a repeated field (RFC 9110 8.6).
        let mut length_written = false;
        for (name, value) in &self.fields {
            let n = &buf[name.clone()];
            if self.hop_by_hop(buf, n) || drop.iter().any(|d| n.eq_ignore_ascii_case(d)) {
                continue;
            }
            if n.len() == 14 && n.eq_ignore_ascii_case(b"content-length") {
                if length_written {
                    continue;
                }
                length_written = true;
            }
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if self.te_chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
    }
}

/// A status code as its three digits (httparse accepts only three-digit codes).
fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]
}

/// Content-Length: digits only, at most 18 of them (no sign, no list, no overflow).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> (Head, Vec<u8>) {
        let mut h = Head::default();
        assert_eq!(h.parse_request(text.as_bytes()), Parsed::Done, "{text}");
        (h, text.as_bytes().to_vec())
    }

    #[test]
    fn a_plain_get_is_forwarded_without_hop_by_hop_fields() {
        let (h, b) = req("GET /owa/?a=1 HTTP/1.1\r\nHost: mail.example.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nAccept: */*\r\n\r\n");
        assert!(!h.unusual);
        assert_eq!(h.framing, Some(Framing::Empty));
        assert_eq!(&b[h.host.clone().unwrap()], b"mail.example.test");
        let mut out = Vec::new();
        h.write_request(&b, &mut out, &[]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /owa/?a=1 HTTP/1.1\r\nHost: mail.example.test\r\nAccept: */*\r\n"
        );
    }

    #[test]
    fn framing_of_requests() {
        assert_eq!(req("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").0.framing, Some(Framing::Length(12)));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Some(Framing::Chunked));
        assert!(!h.unusual);
        let mut out = Vec::new();
        h.write_request(&b, &mut out, &[]);
        assert!(String::from_utf8(out).unwrap().ends_with("\r\nTransfer-Encoding: chunked\r\n"));
        // Left to hyper: smuggling shapes, upgrades, Expect, HTTP/1.0, absolute form.
        for unusual in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "CONNECT mail.example.test:443 HTTP/1.1\r\nHost: mail.example.test:443\r\n\r\n",
        ] {
            assert!(req(unusual).0.unusual, "{unusual}");
        }
        // The same length twice is one length.
        let (h, b) = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.framing, h.unusual), (Some(Framing::Length(3)), false));
        // ... and is forwarded once.
        let mut out = Vec::new();
        h.write_request(&b, &mut out, &[]);
        assert_eq!(String::from_utf8(out).unwrap(), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n");
    }

    #[test]
    fn connection_cannot_list_away_the_framing() {
        let (h, b) = req("POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, transfer-encoding\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(h.framing, Some(Framing::Length(3)));
        let mut out = Vec::new();
        h.write_request(&b, &mut out, &[b"x-forwarded-proto"]);
        assert_eq!(String::from_utf8(out).unwrap(), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n");
        let (h, b) = req("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n");
        let mut out = Vec::new();
        h.write_request(&b, &mut out, &[b"x-forwarded-proto"]);
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\nHost: a\r\n");
        // A HEAD response keeps the GET's chunked field although it has no body.
        let mut r = Head::default();
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(r.parse_response(text, true), Parsed::Done);
        assert_eq!(r.framing, Some(Framing::Empty));
        let mut out = Vec::new();
        r.write_response(text, &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
    }

    #[test]
    fn partial_and_invalid_heads() {
        let mut h = Head::default();
        assert_eq!(h.parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial);
        assert_eq!(h.parse_request(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n"), Parsed::Invalid);
        assert_eq!(h.parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parsed::Invalid);
        assert!(!may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n", 20));
        assert!(may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 26));
        assert!(may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27));
    }

    #[test]
    fn responses() {
        let mut h = Head::default();
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        assert_eq!(h.parse_response(b, false), Parsed::Done);
        assert_eq!(
            (h.framing, h.close, h.reusable(), h.len),
            (Some(Framing::Length(5)), true, false, b.len() - 5)
        );
        let mut out = Vec::new();
        h.write_response(b, &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        // HEAD, 204, 304, 1xx have no body whatever their fields say.
        assert_eq!(h.parse_response(b, true), Parsed::Done);
        assert_eq!(h.framing, Some(Framing::Empty));
        for s in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\n\r\n",
        ] {
            assert_eq!(h.parse_response(s.as_bytes(), false), Parsed::Done);
            assert_eq!(h.framing, Some(Framing::Empty), "{s}");
        }
        assert_eq!(h.parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false), Parsed::Done);
        assert_eq!((h.framing, h.reusable()), (Some(Framing::UntilClose), false));
        assert_eq!(
            h.parse_response(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false
            ),
            Parsed::Done
        );
        assert!(h.reusable());
        assert_eq!(
            h.parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Parsed::Invalid
        );
        assert_eq!(
            h.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false),
            Parsed::Invalid
        );
        assert_eq!(h.parse_response(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false), Parsed::Done);
        out.clear();
        h.write_response(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", &mut out);
        assert_eq!(out, b"HTTP/1.1 200 \r\nContent-Length: 0\r\n");
    }

    proptest::proptest! {
        /// Whatever arrives: no panic, and a head judged usual is written back out as a head
        /// that parses to the same method, target and framing.
        #[test]
        fn any_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut h = Head::default();
            let _ = may_be_complete(&data, data.len() / 2);
            let _ = h.parse_response(&data, false);
            if h.parse_request(&data) == Parsed::Done && !h.unusual {
                let mut out = Vec::new();
                h.write_request(&data, &mut out, &[]);
                out.extend_from_slice(b"\r\n");
                let mut again = Head::default();
                proptest::prop_assert_eq!(again.parse_request(&out), Parsed::Done);
                proptest::prop_assert_eq!(&out[again.method.clone()], &data[h.method.clone()]);
                proptest::prop_assert_eq!(&out[again.target.clone()], &data[h.target.clone()]);
                proptest::prop_assert_eq!(again.framing, h.framing);
            }
        }

        #[test]
        fn generated_requests_round_trip(
            path in "/[a-zA-Z0-9/?=&%._-]{0,40}",
            names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,12}", 0..8),
            len in proptest::option::of(0u64..1_000_000),
        ) {
            let mut text = format!("POST {path} HTTP/1.1\r\nHost: h\r\n");
            for n in &names {
                text.push_str(&format!("X-{n}: v\r\n"));
            }
            if let Some(l) = len {
                text.push_str(&format!("Content-Length: {l}\r\n"));
            }
            text.push_str("\r\n");
            let mut h = Head::default();
            proptest::prop_assert_eq!(h.parse_request(text.as_bytes()), Parsed::Done);
            proptest::prop_assert_eq!(h.len, text.len());
            proptest::prop_assert_eq!(h.framing, Some(len.map_or(Framing::Empty, Framing::Length)));
            let mut out = Vec::new();
            h.write_request(text.as_bytes(), &mut out, &[]);
            out.extend_from_slice(b"\r\n");
            proptest::prop_assert_eq!(out, text.as_bytes());
        }
    }
}
