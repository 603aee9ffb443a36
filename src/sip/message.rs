//! The lossless message model: start line, ordered raw header fields, body.
//!
//! A header field is kept as the exact bytes it arrived as (`NaMe  :  value` with any folding),
//! so serialising an unchanged message gives back the received octets, and an edit touches only
//! the fields it names.

use std::borrow::Cow;

use super::error::{EditError, HeaderError};
use super::grammar::{is_wsp, unfold};
use super::headers::{
    canonical_name, check_date, is_header_name, parse_call_id, parse_expires, parse_max_forwards, same_name,
    split_list, text, CSeq, ContactList, MediaType, NameAddr, Via,
};
use super::uri::Uri;

/// One header field as received: `raw` is the whole field without its final CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    raw: Vec<u8>,
    name_end: usize,
    value_start: usize,
}

impl Header {
    /// A new field written as `name: value`. The value may not contain CR or LF, so an edit
    /// can never inject a header or end the head early.
    pub fn new(name: &str, value: &str) -> Result<Header, EditError> {
        if !is_header_name(name) {
            return Err(EditError::BadName);
        }
        if value.contains(['\r', '\n']) {
            return Err(EditError::BadValue);
        }
        let mut raw = Vec::with_capacity(name.len() + 2 + value.len());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        Ok(Header { raw, name_end: name.len(), value_start: name.len() + 2 })
    }

    /// Wraps the raw bytes of one field (folding included). `None` unless it is
    /// `token *WSP ":" ...`; CR/LF have been checked by the caller.
    pub(super) fn from_raw(raw: Vec<u8>) -> Option<Header> {
        let name_end = raw.iter().position(|&c| !super::grammar::is_token(c))?;
        if name_end == 0 {
            return None;
        }
        let mut i = name_end;
        while raw.get(i).copied().is_some_and(is_wsp) {
            i += 1;
        }
        if raw.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        // Leading LWS of the value, folding included, is not part of the value.
        loop {
            match raw.get(i..i + 3) {
                _ if raw.get(i).copied().is_some_and(is_wsp) => i += 1,
                Some([b'\r', b'\n', c]) if is_wsp(*c) => i += 3,
                _ => break,
            }
        }
        Some(Header { raw, name_end, value_start: i })
    }

    /// The name as written (`v`, `VIA`, `Via`...).
    pub fn name(&self) -> &str {
        std::str::from_utf8(self.raw.get(..self.name_end).unwrap_or_default()).unwrap_or_default()
    }

    /// The full name for lookups (`v` -> `Via`); case as written for non-compact names.
    pub fn canonical_name(&self) -> &str {
        canonical_name(self.name())
    }

    /// Whether this field is header `name` (case-insensitive, compact-aware).
    pub fn is(&self, name: &str) -> bool {
        same_name(self.name(), name)
    }

    /// The field exactly as on the wire, without the final CRLF.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The value as on the wire: after the colon and leading whitespace, folding included.
    pub fn raw_value(&self) -> &[u8] {
        self.raw.get(self.value_start..).unwrap_or_default()
    }

    /// The value with folding removed and trailing whitespace trimmed, for interpretation.
    pub fn value(&self) -> Cow<'_, [u8]> {
        unfold(self.raw_value())
    }

    /// [`Header::value`] as text; `header` names the header in the error for non-UTF-8 bytes.
    pub fn value_text(&self, header: &'static str) -> Result<Cow<'_, str>, HeaderError> {
        match self.value() {
            Cow::Borrowed(b) => text(b, header).map(Cow::Borrowed),
            Cow::Owned(v) => {
                String::from_utf8(v).map(Cow::Owned).map_err(|_| HeaderError::malformed(header, "not UTF-8"))
            }
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        /// Method, case-sensitive (`INVITE`, or any token).
        method: String,
        /// Request-URI as written; [`Message::request_uri`] parses it.
        uri: String,
        /// Version as written (`SIP/2.0`).
        version: String,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// Version as written.
        version: String,
        /// 100..=699.
        code: u16,
        /// Reason phrase bytes (UTF-8 by the grammar, may be empty).
        reason: Vec<u8>,
    },
}

/// A SIP request or response that serialises back to the octets it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(super) start_raw: Vec<u8>,
    pub(super) start: StartLine,
    pub(super) headers: Vec<Header>,
    pub(super) body: Vec<u8>,
}

impl Message {
    /// A new request `METHOD uri SIP/2.0` with no headers and no body.
    pub fn request(method: &str, uri: &str) -> Result<Message, EditError> {
        if !super::grammar::is_token_str(method) {
            return Err(EditError::BadName);
        }
        if uri.is_empty() || uri.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return Err(EditError::BadValue);
        }
        Ok(Message {
            start_raw: format!("{method} {uri} SIP/2.0").into_bytes(),
            start: StartLine::Request {
                method: method.to_owned(),
                uri: uri.to_owned(),
                version: "SIP/2.0".into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    /// A new response `SIP/2.0 code reason` with no headers and no body.
    pub fn response(code: u16, reason: &str) -> Result<Message, EditError> {
        if !(100..=699).contains(&code) || reason.contains(['\r', '\n']) {
            return Err(EditError::BadStatus);
        }
        Ok(Message {
            start_raw: format!("SIP/2.0 {code} {reason}").into_bytes(),
            start: StartLine::Response {
                version: "SIP/2.0".into(),
                code,
                reason: reason.as_bytes().to_vec(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    // ---- start line ----------------------------------------------------------------------

    /// The parsed start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The protocol version as written.
    pub fn version(&self) -> &str {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => version,
        }
    }

    /// The Request-URI parsed (it is kept raw until asked for).
    pub fn request_uri(&self) -> Result<Uri, HeaderError> {
        match &self.start {
            StartLine::Request { uri, .. } => Uri::parse(uri).map_err(|e| match e {
                HeaderError::Malformed { reason, .. } => HeaderError::malformed("Request-URI", reason),
                other => other,
            }),
            StartLine::Response { .. } => Err(HeaderError::Missing("Request-URI")),
        }
    }

    /// Replaces the Request-URI (e.g. retargeting to a registered contact).
    pub fn set_request_uri(&mut self, new_uri: &str) -> Result<(), EditError> {
        let StartLine::Request { method, uri, version } = &mut self.start else {
            return Err(EditError::WrongKind);
        };
        if new_uri.is_empty() || new_uri.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return Err(EditError::BadValue);
        }
        *uri = new_uri.to_owned();
        self.start_raw = format!("{method} {uri} {version}").into_bytes();
        Ok(())
    }

    // ---- generic header access -------------------------------------------------------------

    /// All header fields in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The first field named `name` (case-insensitive, compact forms match their full names).
    pub fn get(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    /// Every field named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.headers.iter().filter(move |h| h.is(name))
    }

    /// How many fields are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// The comma-separated values of every `name` field, in order (RFC 3261 §7.3.1 makes
    /// `Route: a, b` and two Route fields equivalent). Commas inside quotes and `<>` do not
    /// split. Empty elements are kept so typed parsers can reject them.
    pub fn values(&self, name: &'static str) -> Result<Vec<String>, HeaderError> {
        let mut out = Vec::new();
        for h in self.get_all(name) {
            let v = h.value_text(name)?;
            out.extend(split_list(&v).into_iter().map(str::to_owned));
        }
        Ok(out)
    }

    /// The one `name` field's value: missing or repeated is an error.
    fn single(&self, name: &'static str) -> Result<Cow<'_, str>, HeaderError> {
        let mut it = self.get_all(name);
        let first = it.next().ok_or(HeaderError::Missing(name))?;
        if it.next().is_some() {
            return Err(HeaderError::Repeated(name));
        }
        first.value_text(name)
    }

    /// Like [`Message::single`] but absence is `Ok(None)`.
    fn optional(&self, name: &'static str) -> Result<Option<Cow<'_, str>>, HeaderError> {
        match self.single(name) {
            Ok(v) => Ok(Some(v)),
            Err(HeaderError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    // ---- typed accessors -------------------------------------------------------------------

    /// Every Via entry, top first.
    pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
        let vias = self.values("Via")?;
        if vias.is_empty() {
            return Err(HeaderError::Missing("Via"));
        }
        vias.iter().map(|v| Via::parse(v)).collect()
    }

    /// The topmost Via entry (where responses go, and the transaction's branch).
    pub fn top_via(&self) -> Result<Via, HeaderError> {
        let first = self.get("Via").ok_or(HeaderError::Missing("Via"))?;
        let v = first.value_text("Via")?;
        let top = split_list(&v).into_iter().next().unwrap_or_default();
        Via::parse(top)
    }

    /// From (single-valued).
    pub fn from(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse(&self.single("From")?, "From")
    }

    /// To (single-valued).
    pub fn to(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse(&self.single("To")?, "To")
    }

    /// Call-ID (single-valued).
    pub fn call_id(&self) -> Result<String, HeaderError> {
        parse_call_id(&self.single("Call-ID")?).map(str::to_owned)
    }

    /// CSeq (single-valued).
    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        CSeq::parse(&self.single("CSeq")?)
    }

    /// Max-Forwards, `None` when absent (RFC 2543 peers omit it, RFC 4475 §3.4.1).
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.optional("Max-Forwards")?.map(|v| parse_max_forwards(&v)).transpose()
    }

    /// Every Contact address, or `*`.
    pub fn contacts(&self) -> Result<ContactList, HeaderError> {
        let values = self.values("Contact")?;
        if values.len() == 1 && values[0] == "*" {
            return Ok(ContactList::Star);
        }
        let addrs = values
            .iter()
            .map(|v| {
                let a = NameAddr::parse(v, "Contact")?;
                a.expires()?;
                Ok(a)
            })
            .collect::<Result<Vec<_>, HeaderError>>()?;
        Ok(ContactList::Addrs(addrs))
    }

    /// Every Route entry, in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.values("Route")?.iter().map(|v| NameAddr::parse(v, "Route")).collect()
    }

    /// Every Record-Route entry, in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.values("Record-Route")?.iter().map(|v| NameAddr::parse(v, "Record-Route")).collect()
    }

    /// Content-Length, `None` when absent.
    pub fn content_length(&self) -> Result<Option<u64>, HeaderError> {
        self.optional("Content-Length")?
            .map(|v| {
                super::headers::parse_length(v.trim_matches(|c| c == ' ' || c == '\t'))
                    .ok_or(HeaderError::malformed("Content-Length", "not a number"))
            })
            .transpose()
    }

    /// Content-Type, `None` when absent.
    pub fn content_type(&self) -> Result<Option<MediaType>, HeaderError> {
        self.optional("Content-Type")?.map(|v| MediaType::parse(&v)).transpose()
    }

    /// Expires in seconds, `None` when absent.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.optional("Expires")?.map(|v| parse_expires(&v)).transpose()
    }

    /// The Date header's text once checked to be an RFC 1123 date in GMT.
    pub fn date(&self) -> Result<Option<String>, HeaderError> {
        self.optional("Date")?.map(|v| check_date(&v).map(|()| v.trim().to_owned())).transpose()
    }

    // ---- editing ---------------------------------------------------------------------------

    /// Sets header `name` to `value`: the first such field keeps its position and its name as
    /// written (a compact `l` stays `l`), later ones are removed; appended when absent.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        match self.headers.iter().position(|h| h.is(name)) {
            Some(i) => {
                let written = self.headers[i].name().to_owned();
                let new = Header::new(&written, value)?;
                self.headers[i] = new;
                let mut idx = 0;
                self.headers.retain(|h| {
                    idx += 1;
                    idx - 1 == i || !h.is(name)
                });
            }
            None => self.headers.push(Header::new(name, value)?),
        }
        Ok(())
    }

    /// Appends a field after all others.
    pub fn push_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        self.headers.push(Header::new(name, value)?);
        Ok(())
    }

    /// Inserts a field at `index` (clamped to the end).
    pub fn insert_header(&mut self, index: usize, name: &str, value: &str) -> Result<(), EditError> {
        let h = Header::new(name, value)?;
        self.headers.insert(index.min(self.headers.len()), h);
        Ok(())
    }

    /// Removes every `name` field; returns how many were removed.
    pub fn remove_header(&mut self, name: &str) -> usize {
        let before = self.headers.len();
        self.headers.retain(|h| !h.is(name));
        before - self.headers.len()
    }

    /// Adds a Via entry on top (RFC 3261 §16.6 step 8): a new field before the first Via.
    pub fn prepend_via(&mut self, value: &str) -> Result<(), EditError> {
        let at = self.headers.iter().position(|h| h.is("Via")).unwrap_or(0);
        self.insert_header(at, "Via", value)
    }

    /// Removes the topmost Via entry (a response passing back through us). A field holding
    /// several entries is rewritten without its first one; others are untouched.
    pub fn pop_via(&mut self) -> bool {
        let Some(i) = self.headers.iter().position(|h| h.is("Via")) else {
            return false;
        };
        let rest: Option<String> = self.headers[i].value_text("Via").ok().and_then(|v| {
            let parts = split_list(&v);
            (parts.len() > 1).then(|| parts[1..].join(", "))
        });
        match rest.and_then(|r| Header::new(self.headers[i].name(), &r).ok()) {
            Some(h) => self.headers[i] = h,
            None => {
                self.headers.remove(i);
            }
        }
        true
    }

    /// Replaces the body and makes Content-Length match it (kept where it was, name as written).
    pub fn set_body(&mut self, body: Vec<u8>) {
        let len = body.len().to_string();
        self.body = body;
        // A decimal number is always a valid value and "Content-Length" a valid name.
        let _ = self.set_header("Content-Length", &len);
    }

    // ---- serialisation ---------------------------------------------------------------------

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.wire_len());
        out.extend_from_slice(&self.start_raw);
        out.extend_from_slice(b"\r\n");
        for h in &self.headers {
            out.extend_from_slice(&h.raw);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }

    /// The wire form: byte-identical to the parsed input when nothing was edited.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Length of [`Message::to_bytes`] without building it.
    pub fn wire_len(&self) -> usize {
        self.start_raw.len()
            + 4
            + self.headers.iter().map(|h| h.raw.len() + 2).sum::<usize>()
            + self.body.len()
    }
}
