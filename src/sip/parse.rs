//! Framing and structural parsing: start line, header lines, Content-Length.
//!
//! Lines end in CRLF only (RFC 3261 §7): a bare CR or LF is a fault rather than a guess,
//! since guessing is how two parsers come to disagree about where a message ends.

use super::error::ParseError;
use super::headers::{parse_length, same_name};
use super::message::{Header, Message, StartLine};

/// Size bounds, checked before anything is buffered or allocated for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line plus header fields plus the empty line.
    pub max_head: usize,
    /// Body, as declared by Content-Length or present in a datagram.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 64 * 1024, max_body: 1024 * 1024 }
    }
}

/// Parses one message from a datagram (RFC 3261 §18.3): without Content-Length the body runs to
/// the end; octets after a declared body are ignored (RFC 4475 §3.1.1.8); a body shorter than
/// declared is an error. A datagram of only CRLFs is [`ParseError::KeepAlive`].
pub fn parse_datagram(data: &[u8]) -> Result<Message, ParseError> {
    parse_datagram_with(data, &Limits::default())
}

/// [`parse_datagram`] with explicit limits.
pub fn parse_datagram_with(data: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if data.iter().all(|&c| c == b'\r' || c == b'\n') {
        return Err(ParseError::KeepAlive);
    }
    let head_end = find_head_end(data, 0).ok_or(if data.len() > limits.max_head {
        ParseError::HeadTooLarge(limits.max_head)
    } else {
        ParseError::Unterminated
    })?;
    if head_end + 4 > limits.max_head {
        return Err(ParseError::HeadTooLarge(limits.max_head));
    }
    let (start_raw, headers) = split_head(&data[..head_end])?;
    let start = parse_start(start_raw)?;
    let rest = &data[head_end + 4..];
    let body = match content_length(&headers)? {
        Some(n) => {
            let n = check_body(n, limits)?;
            rest.get(..n).ok_or(ParseError::Truncated)?
        }
        None => {
            check_body(rest.len() as u64, limits)?;
            rest
        }
    };
    Ok(Message { start_raw: start_raw.to_vec(), start, headers, body: body.to_vec() })
}

/// Parses `data` as exactly one message (a frame cut by [`super::StreamFramer`] or a
/// WebSocket message): Content-Length, when present, must account for every octet.
pub fn parse_message(data: &[u8]) -> Result<Message, ParseError> {
    let limits = Limits::default();
    let msg = parse_datagram_with(data, &limits)?;
    if msg.wire_len() != data.len() {
        return Err(ParseError::TrailingOctets);
    }
    Ok(msg)
}

fn check_body(n: u64, limits: &Limits) -> Result<usize, ParseError> {
    match usize::try_from(n) {
        Ok(n) if n <= limits.max_body => Ok(n),
        _ => Err(ParseError::BodyTooLarge(limits.max_body)),
    }
}

/// Offset of the CRLFCRLF that ends the head, searching from `from`.
pub(super) fn find_head_end(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + from)
}

/// Splits a head (without its final CRLFCRLF) into the start line and header fields, joining
/// folded continuation lines to their field.
pub(super) fn split_head(head: &[u8]) -> Result<(&[u8], Vec<Header>), ParseError> {
    // Every CR must start a CRLF and every LF end one.
    for (i, &c) in head.iter().enumerate() {
        let bad = match c {
            b'\r' => head.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || head[i - 1] != b'\r',
            _ => false,
        };
        if bad {
            let line = 1 + head[..i].iter().filter(|&&c| c == b'\n').count();
            return Err(ParseError::HeaderLine { line, reason: "bare CR or LF" });
        }
    }
    let mut lines = LineIter { rest: head };
    let start = lines.next().unwrap_or_default();
    let mut headers: Vec<Header> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut line_no = 1;
    let mut field_line = 1;
    for line in lines {
        line_no += 1;
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            match current.as_mut() {
                Some(field) => {
                    field.extend_from_slice(b"\r\n");
                    field.extend_from_slice(line);
                }
                None => {
                    return Err(ParseError::HeaderLine {
                        line: line_no,
                        reason: "continuation line without a header",
                    })
                }
            }
            continue;
        }
        if let Some(field) = current.take() {
            headers.push(finish_field(field, field_line)?);
        }
        current = Some(line.to_vec());
        field_line = line_no;
    }
    if let Some(field) = current.take() {
        headers.push(finish_field(field, field_line)?);
    }
    Ok((start, headers))
}

fn finish_field(raw: Vec<u8>, line: usize) -> Result<Header, ParseError> {
    Header::from_raw(raw).ok_or(ParseError::HeaderLine { line, reason: "expected token and ':'" })
}

struct LineIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for LineIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        match self.rest.windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                let line = &self.rest[..p];
                self.rest = &self.rest[p + 2..];
                Some(line)
            }
            None => {
                let line = self.rest;
                self.rest = &[];
                Some(line)
            }
        }
    }
}

/// The declared body length: `None` when absent; more than one field is an error because the
/// body's extent would be ambiguous (RFC 4475 §3.3.9).
pub(super) fn content_length(headers: &[Header]) -> Result<Option<u64>, ParseError> {
    let mut found = None;
    for h in headers.iter().filter(|h| same_name(h.name(), "Content-Length")) {
        if found.is_some() {
            return Err(ParseError::RepeatedContentLength);
        }
        let v = h.value();
        let s = std::str::from_utf8(&v).map_err(|_| ParseError::InvalidContentLength)?;
        found = Some(
            parse_length(s.trim_matches(|c| c == ' ' || c == '\t'))
                .ok_or(ParseError::InvalidContentLength)?,
        );
    }
    Ok(found)
}

fn is_version(v: &[u8]) -> bool {
    let Some(rest) = v.get(..4).filter(|p| p.eq_ignore_ascii_case(b"SIP/")).and_then(|_| v.get(4..)) else {
        return false;
    };
    let mut parts = rest.split(|&c| c == b'.');
    let digits = |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Parses the start line (RFC 3261 §7.1, §7.2). Single SPs only: extra or trailing spaces and
/// spaces inside the Request-URI are faults (RFC 4475 §3.1.2.7-10).
pub(super) fn parse_start(line: &[u8]) -> Result<StartLine, ParseError> {
    let err = ParseError::StartLine;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if line.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
        let (version, rest) = split_sp(line).ok_or(err("status line without status code"))?;
        if !is_version(version) {
            return Err(err("invalid SIP version"));
        }
        let (code, reason) = split_sp(rest).unwrap_or((rest, &[][..]));
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(err("status code is not three digits"));
        }
        let code: u16 =
            std::str::from_utf8(code).ok().and_then(|c| c.parse().ok()).ok_or(err("bad status code"))?;
        if !(100..=699).contains(&code) {
            return Err(err("status code out of range"));
        }
        return Ok(StartLine::Response { version: text(version), code, reason: reason.to_vec() });
    }
    let mut parts = line.split(|&c| c == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err("request line is not Method SP Request-URI SP SIP-Version"));
    };
    if method.is_empty() || !method.iter().all(|&c| super::grammar::is_token(c)) {
        return Err(err("method is not a token"));
    }
    if uri.is_empty() || uri.iter().any(|&c| c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"')) {
        return Err(err("invalid character in Request-URI"));
    }
    if !uri.contains(&b':') {
        return Err(err("Request-URI has no scheme"));
    }
    if !is_version(version) {
        return Err(err("invalid SIP version"));
    }
    Ok(StartLine::Request { method: text(method), uri: text(uri), version: text(version) })
}

fn split_sp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let p = b.iter().position(|&c| c == b' ')?;
    Some((&b[..p], &b[p + 1..]))
}
