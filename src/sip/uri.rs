//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), and any other absolute URI kept opaque.
//!
//! Parts are kept as written (escapes included) so a URI that is re-serialised is the URI that
//! was received; [`super::grammar::percent_decode`] is there for comparisons.

use std::fmt;

use super::error::HeaderError;
use super::grammar::{is_escaped_str, is_unreserved};

/// Any URI a SIP message may carry. Unknown schemes are valid syntax (RFC 4475 §3.3.2/§3.3.4):
/// what to do with them is the application's decision (416).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:`.
    Tel(TelUri),
    /// Any other scheme, kept whole (e.g. `http://...`, `isbn:...`).
    Other {
        /// The scheme as written.
        scheme: String,
        /// Everything after the colon.
        rest: String,
    },
}

/// A `sip:`/`sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// User part as written (may contain escapes and, for telephone-subscribers, `;` params).
    pub user: Option<String>,
    /// Password as written (deprecated but legal).
    pub password: Option<String>,
    /// Host name, IPv4 address or bracketed IPv6 reference, as written.
    pub host: String,
    /// Explicit port.
    pub port: Option<u16>,
    /// `;name[=value]` URI parameters, in order, as written.
    pub params: Vec<(String, Option<String>)>,
    /// `?name=value&...` headers, in order, as written.
    pub headers: Vec<(String, String)>,
}

/// A `tel:` URI: the number and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    /// Global (`+...`) or local number, with visual separators as written.
    pub number: String,
    /// `;name[=value]` parameters, in order.
    pub params: Vec<(String, Option<String>)>,
}

const URI: &str = "URI";

fn bad(reason: &'static str) -> HeaderError {
    HeaderError::malformed(URI, reason)
}

impl Uri {
    /// Parses an absolute URI (`scheme:rest`).
    pub fn parse(s: &str) -> Result<Uri, HeaderError> {
        let colon = s.find(':').ok_or(bad("no scheme"))?;
        let (scheme, rest) = (&s[..colon], &s[colon + 1..]);
        let valid_scheme = scheme.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && scheme.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(bad("invalid scheme"));
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_after_scheme(scheme.eq_ignore_ascii_case("sips"), rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_after_scheme(rest).map(Uri::Tel)
        } else {
            // absoluteURI: any printable non-space characters other than the delimiters of
            // the surrounding grammar.
            let ok = !rest.is_empty()
                && rest.bytes().all(|c| c > 0x20 && c < 0x7f && !matches!(c, b'<' | b'>' | b'"'));
            if !ok {
                return Err(bad("invalid characters"));
            }
            Ok(Uri::Other { scheme: scheme.to_owned(), rest: rest.to_owned() })
        }
    }

    /// The SIP/SIPS URI, if it is one.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Tel(t) => t.fmt(f),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

fn is_user_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn is_password_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'&' | b'=' | b'+' | b'$' | b',')
}

fn is_param_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

fn is_header_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$')
}

fn is_hostname_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.'
}

/// Splits `;a=b;c` into parameters, checking each part against `allowed` (+ escapes).
fn parse_params(s: &str, allowed: fn(u8) -> bool) -> Result<Vec<(String, Option<String>)>, HeaderError> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for p in s.split(';') {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if name.is_empty() || !is_escaped_str(name, allowed) {
            return Err(bad("invalid parameter name"));
        }
        if let Some(v) = value {
            if v.is_empty() || !is_escaped_str(v, allowed) {
                return Err(bad("invalid parameter value"));
            }
        }
        out.push((name.to_owned(), value.map(str::to_owned)));
    }
    Ok(out)
}

/// `host [":" port]`, the host being a name, IPv4 address or `[IPv6]`.
pub(super) fn parse_hostport(s: &str) -> Result<(String, Option<u16>), &'static str> {
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let close = inner.find(']').ok_or("unterminated IPv6 reference")?;
        let addr = &inner[..close];
        if addr.is_empty() || !addr.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return Err("invalid IPv6 reference");
        }
        let after = &inner[close + 1..];
        let port = if after.is_empty() { None } else { Some(after.strip_prefix(':').ok_or("invalid port")?) };
        (&s[..close + 2], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || (!host.starts_with('[') && !host.bytes().all(is_hostname_char)) {
        return Err("invalid host");
    }
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err("invalid port");
            }
            Some(p.parse::<u16>().map_err(|_| "port out of range")?)
        }
    };
    Ok((host.to_owned(), port))
}

impl SipUri {
    /// Parses a complete `sip:`/`sips:` URI.
    pub fn parse(s: &str) -> Result<SipUri, HeaderError> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            _ => Err(bad("not a sip or sips URI")),
        }
    }

    fn parse_after_scheme(secure: bool, rest: &str) -> Result<SipUri, HeaderError> {
        // The user part may contain ';' and '?' but never a raw '@', and nothing after the
        // host may contain one either, so the first '@' ends the userinfo.
        let (userinfo, after) = match rest.find('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                if u.is_empty() || !is_escaped_str(u, is_user_char) {
                    return Err(bad("invalid user part"));
                }
                if let Some(p) = p {
                    if !is_escaped_str(p, is_password_char) {
                        return Err(bad("invalid password"));
                    }
                }
                (Some(u.to_owned()), p.map(str::to_owned))
            }
        };
        let (before_headers, headers) = match after.split_once('?') {
            Some((a, h)) => (a, Some(h)),
            None => (after, None),
        };
        let (hostport, params) = match before_headers.split_once(';') {
            Some((h, p)) => (h, p),
            None => (before_headers, ""),
        };
        let (host, port) = parse_hostport(hostport).map_err(bad)?;
        let params = parse_params(params, is_param_char)?;
        let mut hdrs = Vec::new();
        if let Some(h) = headers {
            for pair in h.split('&') {
                let (n, v) = pair.split_once('=').ok_or(bad("URI header without '='"))?;
                if n.is_empty() || !is_escaped_str(n, is_header_char) || !is_escaped_str(v, is_header_char) {
                    return Err(bad("invalid URI header"));
                }
                hdrs.push((n.to_owned(), v.to_owned()));
            }
        }
        Ok(SipUri { secure, user, password, host, port, params, headers: hdrs })
    }

    /// The value of URI parameter `name` (case-insensitive): `Some(None)` for a flag like `lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }

    /// The `transport` parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.param("transport").flatten().map(str::to_ascii_lowercase)
    }

    /// The user part with escapes decoded (RFC 3261 §19.1.4 compares it this way).
    pub fn user_decoded(&self) -> Option<Vec<u8>> {
        self.user.as_deref().map(super::grammar::percent_decode)
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            write!(f, ";{n}")?;
            if let Some(v) = v {
                write!(f, "={v}")?;
            }
        }
        for (i, (n, v)) in self.headers.iter().enumerate() {
            write!(f, "{}{n}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl TelUri {
    fn parse_after_scheme(rest: &str) -> Result<TelUri, HeaderError> {
        let (number, params) = match rest.split_once(';') {
            Some((n, p)) => (n, p),
            None => (rest, ""),
        };
        // global-number-digits / local-number-digits with visual separators (RFC 3966 §3).
        let digits = number.strip_prefix('+').unwrap_or(number);
        let ok = !digits.is_empty()
            && digits.bytes().any(|c| c.is_ascii_hexdigit() || c == b'*' || c == b'#')
            && digits
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, b'*' | b'#' | b'-' | b'.' | b'(' | b')'));
        if !ok {
            return Err(bad("invalid telephone number"));
        }
        let params = parse_params(params, is_param_char)?;
        Ok(TelUri { number: number.to_owned(), params })
    }

    /// The digits without visual separators (`+1-201-555` becomes `+1201555`).
    pub fn digits(&self) -> String {
        self.number.chars().filter(|c| !matches!(c, '-' | '.' | '(' | ')')).collect()
    }
}

impl fmt::Display for TelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tel:{}", self.number)?;
        for (n, v) in &self.params {
            write!(f, ";{n}")?;
            if let Some(v) = v {
                write!(f, "={v}")?;
            }
        }
        Ok(())
    }
}
