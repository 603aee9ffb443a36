//! Header names (compact forms) and the typed header values the B2BUA reads.
//!
//! Every parser here takes the *unfolded* value of one header field (or one element of a
//! comma-separated list) and returns a value or a [`HeaderError`] naming the header, never a
//! panic. Values are parsed on demand from the raw bytes the message keeps.

use super::error::HeaderError;
use super::grammar::{is_token, is_token_str, is_wsp, Scanner};
use super::uri::{parse_hostport, Uri};

pub use super::grammar::split_list;

/// Compact forms (RFC 3261 §7.3.3 and later registrations) and their full names.
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// The full name for a compact form (`v` -> `Via`), else `name` unchanged. Lookups compare the
/// result case-insensitively, so `V`, `via` and `VIA` are all the Via header.
pub fn canonical_name(name: &str) -> &str {
    if let [c] = name.as_bytes() {
        let c = c.to_ascii_lowercase();
        if let Some((_, full)) = COMPACT.iter().find(|(k, _)| *k == c) {
            return full;
        }
    }
    name
}

/// Whether two header names denote the same header (case-insensitive, compact-aware).
pub(super) fn same_name(a: &str, b: &str) -> bool {
    canonical_name(a).eq_ignore_ascii_case(canonical_name(b))
}

/// One `;name[=value]` header parameter. The value is kept as written (a quoted string keeps
/// its quotes) so it can be written back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name as written.
    pub name: String,
    /// Value as written, `None` for a flag such as `lr` or `rport`.
    pub value: Option<String>,
}

/// Header parameters in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<Param>);

impl Params {
    /// `Some(None)` for a flag, `Some(Some(v))` for a value, `None` when absent (names are
    /// case-insensitive).
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0.iter().find(|p| p.name.eq_ignore_ascii_case(name)).map(|p| p.value.as_deref())
    }

    /// The value of `name`, ignoring flags.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    /// Whether `name` is present, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// `*( SEMI generic-param )` up to the end of the value; anything else is an error.
fn parse_params(sc: &mut Scanner<'_>, header: &'static str) -> Result<Params, HeaderError> {
    let mut out = Vec::new();
    loop {
        sc.skip_lws();
        if sc.at_end() {
            return Ok(Params(out));
        }
        if !sc.eat(b';') {
            return Err(HeaderError::malformed(header, "unexpected character before parameter"));
        }
        sc.skip_lws();
        let name = sc.token().ok_or(HeaderError::malformed(header, "empty parameter"))?;
        sc.skip_lws();
        let value = if sc.eat(b'=') {
            sc.skip_lws();
            let v = if sc.peek() == Some(b'"') {
                sc.quoted_raw().map_err(|r| HeaderError::malformed(header, r))?
            } else {
                // gen-value = token / host (IPv6 references and addresses add ':' '[' ']').
                sc.take_while(|c| is_token(c) || matches!(c, b':' | b'[' | b']'))
            };
            if v.is_empty() {
                return Err(HeaderError::malformed(header, "parameter without value"));
            }
            Some(v.to_owned())
        } else {
            None
        };
        out.push(Param { name: name.to_owned(), value });
    }
}

/// Converts an unfolded value to text; the grammars below are ASCII/UTF-8 only.
pub(super) fn text<'a>(value: &'a [u8], header: &'static str) -> Result<&'a str, HeaderError> {
    std::str::from_utf8(value).map_err(|_| HeaderError::malformed(header, "not UTF-8"))
}

/// One Via entry (RFC 3261 §20.42): `SIP/2.0/UDP host:port;branch=...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Protocol name, normally `SIP`.
    pub protocol: String,
    /// Protocol version, normally `2.0`.
    pub version: String,
    /// Transport as written (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or an unknown token).
    pub transport: String,
    /// sent-by host as written.
    pub host: String,
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// Parameters in order.
    pub params: Params,
}

impl Via {
    /// Parses one element of a Via list.
    pub fn parse(s: &str) -> Result<Via, HeaderError> {
        let mut sc = Scanner::new(s);
        let via = Self::parse_sent_by(&mut sc)?;
        let params = parse_params(&mut sc, "Via")?;
        Ok(Via { params, ..via })
    }

    /// Only `sent-protocol sent-by`, ignoring whatever follows: enough to route a 400 back
    /// for a request whose Via parameters are malformed (RFC 4475 §3.1.2.1).
    pub(super) fn parse_lenient(s: &str) -> Option<Via> {
        let mut sc = Scanner::new(s);
        let via = Self::parse_sent_by(&mut sc).ok()?;
        let params = parse_params(&mut sc, "Via").unwrap_or_default();
        Some(Via { params, ..via })
    }

    fn parse_sent_by(sc: &mut Scanner<'_>) -> Result<Via, HeaderError> {
        let bad = |r| HeaderError::malformed("Via", r);
        sc.skip_lws();
        let protocol = sc.token().ok_or(bad("missing protocol name"))?;
        let version = slash_token(sc)?;
        let transport = slash_token(sc)?;
        if !sc.skip_lws() {
            return Err(bad("no space before sent-by"));
        }
        let host = if sc.peek() == Some(b'[') {
            let h = sc.take_while(|c| c != b']');
            if !sc.eat(b']') {
                return Err(bad("unterminated IPv6 reference"));
            }
            format!("{h}]")
        } else {
            sc.take_while(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.').to_owned()
        };
        sc.skip_lws();
        let port = if sc.eat(b':') {
            sc.skip_lws();
            Some(sc.take_while(|c| c.is_ascii_digit()))
        } else {
            None
        };
        let hostport = match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let (host, port) = parse_hostport(&hostport).map_err(bad)?;
        Ok(Via {
            protocol: protocol.to_owned(),
            version: version.to_owned(),
            transport: transport.to_owned(),
            host,
            port,
            params: Params::default(),
        })
    }

    /// The `branch` parameter (the transaction id when it starts with `z9hG4bK`).
    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// `rport`: `None` absent, `Some(None)` requested (no value), `Some(Some(p))` filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&str> {
        self.params.value("received")
    }

    /// `host[:port]` as it would be written.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// `SLASH token` inside sent-protocol (SLASH = SWS "/" SWS).
fn slash_token<'a>(sc: &mut Scanner<'a>) -> Result<&'a str, HeaderError> {
    sc.skip_lws();
    if !sc.eat(b'/') {
        return Err(HeaderError::malformed("Via", "expected '/' in sent-protocol"));
    }
    sc.skip_lws();
    sc.token().ok_or(HeaderError::malformed("Via", "empty sent-protocol part"))
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route, Record-Route,
/// Reply-To, Refer-To, Diversion, P-Asserted-Identity ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted (quoted-pairs resolved) or the tokens as written.
    pub display_name: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Whether the URI was enclosed in `<>` (name-addr form).
    pub angle_brackets: bool,
    /// Header parameters after the address (`tag`, `expires`, `q`, ...).
    pub params: Params,
}

impl NameAddr {
    /// Parses one `(name-addr / addr-spec) *(SEMI param)` value; `header` names it in errors.
    pub fn parse(s: &str, header: &'static str) -> Result<NameAddr, HeaderError> {
        let bad = |r| HeaderError::malformed(header, r);
        let mut sc = Scanner::new(s);
        sc.skip_lws();
        let mut display_name = None;
        let angle = if sc.peek() == Some(b'"') {
            display_name = Some(sc.quoted_string().map_err(bad)?);
            sc.skip_lws();
            if sc.peek() != Some(b'<') {
                return Err(bad("expected '<' after display name"));
            }
            true
        } else {
            // Either `*(token LWS) <uri>` or a bare addr-spec: look for '<' after tokens.
            let start = sc.rest();
            let mut probe = Scanner::new(start);
            loop {
                probe.skip_lws();
                if probe.peek() == Some(b'<') || probe.token().is_none() {
                    break;
                }
            }
            if probe.peek() == Some(b'<') {
                let name = start[..start.len() - probe.rest().len()].trim_matches(|c| c == ' ' || c == '\t');
                if !name.is_empty() {
                    display_name = Some(name.to_owned());
                }
                sc = Scanner::new(probe.rest());
                true
            } else {
                false
            }
        };
        let uri = if angle {
            sc.eat(b'<');
            let inner = sc.take_while(|c| c != b'>');
            if !sc.eat(b'>') {
                return Err(bad("missing '>'"));
            }
            if inner.bytes().any(|c| c <= b' ') {
                return Err(bad("whitespace inside <>"));
            }
            inner
        } else {
            // addr-spec: the URI runs to the first ';' (header params) or LWS, and may not
            // contain ',', '?' or ';' (RFC 3261 §20: those require <>).
            if sc.rest().split(';').next().is_some_and(|head| head.contains('<')) {
                return Err(bad("display name with non-token characters must be quoted"));
            }
            let inner = sc.take_while(|c| c != b';' && !is_wsp(c));
            if inner.contains(['?', ',']) {
                return Err(bad("URI with '?' or ',' must be enclosed in <>"));
            }
            if inner.is_empty() {
                return Err(bad("missing URI"));
            }
            inner
        };
        let uri = Uri::parse(uri).map_err(|e| match e {
            HeaderError::Malformed { reason, .. } => bad(reason),
            other => other,
        })?;
        let params = parse_params(&mut sc, header)?;
        Ok(NameAddr { display_name, uri, angle_brackets: angle, params })
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }

    /// The Contact `expires` parameter in seconds; out-of-range values are errors (RFC 4475
    /// §3.1.2.4).
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.params
            .value("expires")
            .map(|v| parse_u32(v).ok_or(HeaderError::malformed("Contact", "expires out of range")))
            .transpose()
    }

    /// The Contact `q` parameter.
    pub fn q(&self) -> Option<f32> {
        self.params.value("q").and_then(|v| v.parse().ok())
    }
}

/// A Contact header set: `*` (remove all bindings, REGISTER only) or addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactList {
    /// `Contact: *`.
    Star,
    /// Every address of every Contact header, in order.
    Addrs(Vec<NameAddr>),
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number; values beyond 32 bits are rejected (RFC 4475 §3.1.2.4).
    pub seq: u32,
    /// Method as written (case-sensitive, RFC 3261 §7.1).
    pub method: String,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(s: &str) -> Result<CSeq, HeaderError> {
        let bad = |r| HeaderError::malformed("CSeq", r);
        let mut sc = Scanner::new(s);
        sc.skip_lws();
        let digits = sc.take_while(|c| c.is_ascii_digit());
        let seq = parse_u32(digits).ok_or(bad("sequence number missing or beyond 2^32-1"))?;
        if !sc.skip_lws() {
            return Err(bad("expected space before method"));
        }
        let method = sc.token().ok_or(bad("missing method"))?;
        sc.skip_lws();
        if !sc.at_end() {
            return Err(bad("unexpected text after method"));
        }
        Ok(CSeq { seq, method: method.to_owned() })
    }
}

/// Content-Type (RFC 3261 §20.15): `type/subtype;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// e.g. `application`.
    pub mtype: String,
    /// e.g. `sdp`.
    pub subtype: String,
    /// e.g. `boundary=...`.
    pub params: Params,
}

impl MediaType {
    /// Parses `m-type SLASH m-subtype *(SEMI m-parameter)`.
    pub fn parse(s: &str) -> Result<MediaType, HeaderError> {
        let bad = |r| HeaderError::malformed("Content-Type", r);
        let mut sc = Scanner::new(s);
        sc.skip_lws();
        let mtype = sc.token().ok_or(bad("missing type"))?;
        sc.skip_lws();
        if !sc.eat(b'/') {
            return Err(bad("expected '/'"));
        }
        sc.skip_lws();
        let subtype = sc.token().ok_or(bad("missing subtype"))?;
        let params = parse_params(&mut sc, "Content-Type")?;
        Ok(MediaType { mtype: mtype.to_owned(), subtype: subtype.to_owned(), params })
    }

    /// Whether this is `type/subtype` (case-insensitive).
    pub fn is(&self, mtype: &str, subtype: &str) -> bool {
        self.mtype.eq_ignore_ascii_case(mtype) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

/// `1*DIGIT` as u32 (leading zeros allowed, `0068` is 68), `None` if empty or too large.
pub(super) fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let t = s.trim_start_matches('0');
    if t.len() > 10 {
        return None;
    }
    if t.is_empty() {
        return Some(0);
    }
    t.parse().ok()
}

/// Like [`parse_u32`] for lengths: `None` when not a number, saturating when huge so limits
/// can be checked without overflow.
pub(super) fn parse_length(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let t = s.trim_start_matches('0');
    if t.len() > 19 {
        return Some(u64::MAX);
    }
    Some(t.parse().unwrap_or(0))
}

/// Call-ID: `word ["@" word]`.
pub(super) fn parse_call_id(s: &str) -> Result<&str, HeaderError> {
    let id = s.trim_matches(|c| c == ' ' || c == '\t');
    let ok = match id.split_once('@') {
        Some((a, b)) => {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(super::grammar::is_word)
        }
        None => !id.is_empty() && id.bytes().all(super::grammar::is_word),
    };
    if ok {
        Ok(id)
    } else {
        Err(HeaderError::malformed("Call-ID", "not word[@word]"))
    }
}

/// Max-Forwards: 0..=255.
pub(super) fn parse_max_forwards(s: &str) -> Result<u8, HeaderError> {
    parse_u32(s.trim_matches(|c| c == ' ' || c == '\t'))
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(HeaderError::malformed("Max-Forwards", "not a number in 0..=255"))
}

/// Expires: delta-seconds within 32 bits (RFC 4475 §3.1.2.4).
pub(super) fn parse_expires(s: &str) -> Result<u32, HeaderError> {
    parse_u32(s.trim_matches(|c| c == ' ' || c == '\t'))
        .ok_or(HeaderError::malformed("Expires", "not a number within 32 bits"))
}

/// Date: `rfc1123-date` = `wkday "," SP 2DIGIT SP month SP 4DIGIT SP time SP "GMT"`
/// (RFC 3261 §20.17; RFC 4475 §3.1.2.12 rejects other zones).
pub(super) fn check_date(s: &str) -> Result<(), HeaderError> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let bad = HeaderError::malformed("Date", "not an RFC 1123 date in GMT");
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    let (day, rest) = s.split_once(", ").ok_or(bad.clone())?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let num = |p: &str, len: usize, max: u32| {
        p.len() == len && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u32>().is_ok_and(|v| v <= max)
    };
    let ok = DAYS.contains(&day)
        && parts.len() == 5
        && num(parts[0], 2, 31)
        && MONTHS.contains(&parts[1])
        && num(parts[2], 4, 9999)
        && parts[4] == "GMT"
        && {
            let t: Vec<&str> = parts[3].split(':').collect();
            t.len() == 3 && num(t[0], 2, 23) && num(t[1], 2, 59) && num(t[2], 2, 60)
        };
    if ok {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Whether `name` is a header name (token).
pub(super) fn is_header_name(name: &str) -> bool {
    is_token_str(name)
}
