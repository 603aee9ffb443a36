//! Error types. Every message is short, ASCII and free of CR/LF, so it can go straight into a
//! 400 reason phrase (RFC 3261 §21.4.1 lets the phrase explain the fault).

use thiserror::Error;

/// The bytes cannot be turned into a message: the start line, a header line or the framing is
/// broken. Faults inside a header value are [`HeaderError`]s instead, found when that header is
/// read, because a message that frames can still be answered or forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Only CRLFs (a keep-alive, RFC 5626 §4.4.1) or nothing at all.
    #[error("keep-alive or empty datagram")]
    KeepAlive,
    /// The request or status line does not follow RFC 3261 §7.1/§7.2.
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// A header line is not `token *WSP ":" value` or contains a bare CR or LF.
    #[error("malformed header line {line}: {reason}")]
    HeaderLine {
        /// 1-based line number within the message (the start line is line 1).
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No empty line ends the header section.
    #[error("header section not terminated by an empty line")]
    Unterminated,
    /// The header section is larger than [`super::Limits::max_head`].
    #[error("header section larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The declared body is larger than [`super::Limits::max_body`].
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Content-Length is not a decimal number (negative, empty, garbage).
    #[error("Content-Length is not a decimal number")]
    InvalidContentLength,
    /// Content-Length appears more than once (RFC 4475 §3.3.9): the body's extent is unknown.
    #[error("Content-Length appears more than once")]
    RepeatedContentLength,
    /// A stream message without Content-Length (RFC 3261 §18.3 requires it there).
    #[error("Content-Length is required on a stream")]
    MissingContentLength,
    /// Content-Length promises more octets than the datagram or frame holds.
    #[error("Content-Length exceeds the octets received")]
    Truncated,
    /// A complete frame holds octets after the body its Content-Length declares.
    #[error("octets after the declared body")]
    TrailingOctets,
}

/// One header's value does not follow its grammar, or a required header is missing or repeated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// A header the operation needs is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header allowed once appears more than once (RFC 4475 §3.3.8).
    #[error("{0} header appears more than once")]
    Repeated(&'static str),
    /// The value does not parse.
    #[error("malformed {header}: {reason}")]
    Malformed {
        /// Canonical header name, or "Request-URI".
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl HeaderError {
    pub(super) fn malformed(header: &'static str, reason: &'static str) -> Self {
        HeaderError::Malformed { header, reason }
    }
}

/// An edit would produce a message that is not valid on the wire (header injection, bad name).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EditError {
    /// A header name must be a non-empty token.
    #[error("header name is not a token")]
    BadName,
    /// A value may not contain CR or LF: it would end the header early (header injection).
    #[error("header value contains CR or LF")]
    BadValue,
    /// A reason phrase may not contain CR or LF, and a status code has three digits 100..=699.
    #[error("invalid status line")]
    BadStatus,
    /// The operation only applies to a request (or a response).
    #[error("wrong kind of message for this operation")]
    WrongKind,
}
