//! RFC 3261 §25 character classes and a small cursor for the header grammars.
//!
//! Header values are scanned after unfolding (CRLF removed, the continuation's whitespace kept),
//! so "LWS" here is simply a run of SP/HTAB.

/// `token` characters (RFC 3261 §25.1).
pub(super) fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// `word` characters, used by Call-ID: token plus the separators that carry no meaning there.
pub(super) fn is_word(c: u8) -> bool {
    is_token(c)
        || matches!(
            c,
            b'(' | b')' | b'<' | b'>' | b':' | b'\\' | b'"' | b'/' | b'[' | b']' | b'?' | b'{' | b'}'
        )
}

/// `unreserved` = alphanum / mark.
pub(super) fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')')
}

pub(super) fn is_wsp(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

pub(super) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// Checks `s` against `allowed` plus `escaped` (`%` HEXDIG HEXDIG).
pub(super) fn is_escaped_str(s: &str, allowed: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(|c| c.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if allowed(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes `%XX` escapes; other octets pass through. Used to compare URI parts (RFC 3261 §19.1.4).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Removes line folding: each CRLF that is followed by whitespace is dropped and the whitespace
/// kept, which RFC 3261 §7.3.1 makes equivalent to a single SP. Trailing whitespace is trimmed.
pub(super) fn unfold(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let trimmed = trim_end(raw);
    if !trimmed.contains(&b'\r') {
        return std::borrow::Cow::Borrowed(trimmed);
    }
    let mut out = Vec::with_capacity(trimmed.len());
    let mut i = 0;
    while i < trimmed.len() {
        if trimmed[i] == b'\r' && trimmed.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        out.push(trimmed[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn trim_end(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        end -= 1;
    }
    &b[..end]
}

/// A cursor over an unfolded header value. All positions are byte offsets on ASCII
/// delimiters, so slicing never splits a UTF-8 sequence.
pub(super) struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(super) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    /// Skips LWS and reports whether there was any.
    pub(super) fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_wsp) {
            self.pos += 1;
        }
        self.pos > start
    }

    pub(super) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes the longest run of bytes matching `f` (possibly empty).
    pub(super) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    pub(super) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A `quoted-string` starting at the cursor; returns its content with quoted-pairs resolved.
    /// The cursor must be on the opening DQUOTE.
    pub(super) fn quoted_string(&mut self) -> Result<String, &'static str> {
        if !self.eat(b'"') {
            return Err("expected a quoted string");
        }
        let mut out = Vec::new();
        let b = self.s.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            self.pos += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => match b.get(self.pos) {
                    // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    Some(&q) if q <= 0x7f && q != b'\r' && q != b'\n' => {
                        out.push(q);
                        self.pos += 1;
                    }
                    _ => return Err("bad escape in quoted string"),
                },
                b'\r' | b'\n' => return Err("line break in quoted string"),
                _ => out.push(c),
            }
        }
        Err("unterminated quoted string")
    }

    /// The raw text of a quoted string including its quotes, for parameter values.
    pub(super) fn quoted_raw(&mut self) -> Result<&'a str, &'static str> {
        let start = self.pos;
        self.quoted_string()?;
        Ok(self.s.get(start..self.pos).unwrap_or(""))
    }
}

/// Splits a comma-separated header value (RFC 3261 §7.3.1) on commas outside quoted strings and
/// angle brackets, trimming LWS around each element. Empty elements are kept (as "") so callers
/// can reject them: `Via: a,,b` is malformed.
pub fn split_list(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    let (mut in_quotes, mut in_angle) = (false, false);
    while i < b.len() {
        match b[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                out.push(value.get(start..i).unwrap_or("").trim_matches(|c| c == ' ' || c == '\t'));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(value.get(start..).unwrap_or("").trim_matches(|c| c == ' ' || c == '\t'));
    out
}
