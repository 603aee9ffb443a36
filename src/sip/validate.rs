//! What to do with a message: accept it, answer it with an error, or drop it.
//!
//! RFC 3261 §8.2 and RFC 4475 decide the verdicts. A request is answered only if a response can
//! reach its sender and match its transaction, which takes the top Via (where to send) and the
//! From, To, Call-ID and CSeq fields a response copies (RFC 3261 §8.2.6.2); without them the
//! only safe answer is silence. Responses are never answered: a broken one is dropped.

use super::error::{EditError, HeaderError, ParseError};
use super::headers::{split_list, NameAddr, Via};
use super::message::{Header, Message};
use super::parse::{find_head_end, split_head, Limits};
use super::uri::Uri;

/// The verdict on one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Well-formed as far as the message layer can tell; higher layers may still refuse it
    /// (416, 420, 483, ...).
    Accept,
    /// Answer statelessly with `status` (400, 413 or 505); `reason` says why and is safe to
    /// use as the reason phrase. Build it with [`ReplyContext`].
    Reply {
        /// 400, 413 or 505.
        status: u16,
        /// ASCII, no CR/LF.
        reason: String,
    },
    /// Discard silently (a response, a keep-alive, or a request that cannot be answered).
    Drop {
        /// For the log.
        reason: String,
    },
}

/// Judges a parsed message.
pub fn judge(msg: &Message) -> Verdict {
    if !msg.is_request() {
        return match check_response(msg) {
            Ok(()) => Verdict::Accept,
            Err(e) => Verdict::Drop { reason: e.to_string() },
        };
    }
    match check_request(msg) {
        Ok(()) => Verdict::Accept,
        Err((status, reason)) => match ReplyContext::from_message(msg) {
            Some(_) => Verdict::Reply { status, reason },
            None => Verdict::Drop { reason },
        },
    }
}

/// Judges octets that did not parse: a request whose fields a response needs can still be
/// salvaged can be answered with 400 (RFC 4475 §3.1.2.2, .7-.10, .15, §3.3.9); everything else
/// is dropped.
pub fn judge_unparsed(data: &[u8], err: &ParseError) -> Verdict {
    let status = match err {
        ParseError::KeepAlive | ParseError::HeadTooLarge(_) => {
            return Verdict::Drop { reason: err.to_string() };
        }
        ParseError::BodyTooLarge(_) => 413,
        _ => 400,
    };
    match ReplyContext::from_datagram(data) {
        Some(_) => Verdict::Reply { status, reason: err.to_string() },
        None => Verdict::Drop { reason: err.to_string() },
    }
}

/// Headers that may appear at most once (RFC 3261 §20; RFC 4475 §3.3.8).
const SINGLE: &[&str] = &["From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type", "Expires", "Date"];

fn check_common(msg: &Message) -> Result<(), HeaderError> {
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if msg.get(name).is_none() {
            return Err(HeaderError::Missing(name));
        }
    }
    for name in SINGLE {
        if msg.count(name) > 1 {
            return Err(HeaderError::Repeated(name));
        }
    }
    msg.vias()?;
    msg.from()?;
    msg.to()?;
    msg.call_id()?;
    msg.cseq()?;
    Ok(())
}

fn check_request(msg: &Message) -> Result<(), (u16, String)> {
    let bad = |e: HeaderError| (400, e.to_string());
    if !msg.version().eq_ignore_ascii_case("SIP/2.0") {
        return Err((505, "Version Not Supported".into()));
    }
    check_common(msg).map_err(bad)?;
    let cseq = msg.cseq().map_err(bad)?;
    if Some(cseq.method.as_str()) != msg.method() {
        return Err((400, "CSeq method does not match the request method".into()));
    }
    msg.max_forwards().map_err(bad)?;
    msg.contacts().map_err(bad)?;
    msg.expires().map_err(bad)?;
    msg.content_type().map_err(bad)?;
    msg.date().map_err(bad)?;
    msg.routes().map_err(bad)?;
    msg.record_routes().map_err(bad)?;
    if let Uri::Sip(uri) = msg.request_uri().map_err(bad)? {
        // RFC 3261 §19.1.1: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        if !uri.headers.is_empty() {
            return Err((400, "Request-URI must not contain headers".into()));
        }
    }
    Ok(())
}

fn check_response(msg: &Message) -> Result<(), HeaderError> {
    if !msg.version().eq_ignore_ascii_case("SIP/2.0") {
        return Err(HeaderError::malformed("Status-Line", "unsupported SIP version"));
    }
    check_common(msg)?;
    msg.content_type()?;
    Ok(())
}

/// What a stateless response copies from its request (RFC 3261 §8.2.6.2), kept raw: every Via
/// in order, From, To, Call-ID, CSeq. Only the top Via's sent-by has to parse, so requests with
/// malformed headers (even a malformed Via parameter) can still be told why they failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyContext {
    copied: Vec<Header>,
    top_via: Via,
}

impl ReplyContext {
    /// From a parsed request; `None` for responses or when the needed fields are missing.
    pub fn from_message(msg: &Message) -> Option<ReplyContext> {
        msg.is_request().then(|| Self::from_headers(msg.headers())).flatten()
    }

    /// From octets that failed to parse, reading the header fields even when the start line is
    /// malformed or the head has no terminating empty line. `None` for responses, oversize or
    /// garbled heads, and requests missing a needed field.
    pub fn from_datagram(data: &[u8]) -> Option<ReplyContext> {
        if data.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
            return None;
        }
        let mut head = match find_head_end(data, 0) {
            Some(end) => &data[..end],
            None => data,
        };
        while let [rest @ .., b'\r' | b'\n'] = head {
            head = rest;
        }
        if head.len() > Limits::default().max_head {
            return None;
        }
        let (_, headers) = split_head(head).ok()?;
        Self::from_headers(&headers)
    }

    fn from_headers(headers: &[Header]) -> Option<ReplyContext> {
        let first = |name: &str| headers.iter().find(|h| h.is(name)).cloned();
        let via_text = first("Via")?.value_text("Via").ok()?.into_owned();
        let top_via = Via::parse_lenient(split_list(&via_text).first()?)?;
        let mut copied: Vec<Header> = headers.iter().filter(|h| h.is("Via")).cloned().collect();
        for name in ["From", "To", "Call-ID", "CSeq"] {
            copied.push(first(name)?);
        }
        Some(ReplyContext { copied, top_via })
    }

    /// The top Via: where the response goes (sent-by, `received`, `rport`, RFC 3261 §18.2.2).
    pub fn top_via(&self) -> &Via {
        &self.top_via
    }

    /// Builds the response: status line, the copied fields (with `to_tag` added to To unless
    /// it already has a tag or does not parse) and `Content-Length: 0`.
    pub fn response(&self, status: u16, reason: &str, to_tag: Option<&str>) -> Result<Message, EditError> {
        let mut msg = Message::response(status, reason)?;
        for h in &self.copied {
            let tagged = match to_tag {
                Some(tag) if h.is("To") => h
                    .value_text("To")
                    .ok()
                    .filter(|v| NameAddr::parse(v, "To").is_ok_and(|a| a.tag().is_none()))
                    .map(|v| format!("{v};tag={tag}")),
                _ => None,
            };
            match tagged {
                Some(v) => msg.push_header(h.name(), &v)?,
                None => msg.headers.push(h.clone()),
            }
        }
        msg.push_header("Content-Length", "0")?;
        Ok(msg)
    }
}
