//! Cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3) and keep-alives
//! (RFC 5626 §3.5.1).
//!
//! On a stream only Content-Length says where a message ends, so it is required, and anything
//! that makes the boundary unknowable (no or bad Content-Length, a broken header line, an
//! oversize head or body) is a [`FrameError`]: the connection must be closed, since no later
//! byte can be trusted to start a message. A frame whose boundary is known but whose start line
//! is malformed is [`Frame::Invalid`]: answerable with 400 while the connection lives on.

use thiserror::Error;

use super::error::ParseError;
use super::message::Message;
use super::parse::{content_length, find_head_end, parse_datagram_with, split_head, Limits};

/// A drained buffer larger than this is given back.
const IDLE_CAPACITY: usize = 4096;

/// What the stream delivered next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message.
    Message(Message),
    /// A correctly framed message that does not parse (e.g. a malformed Request-Line); `bytes`
    /// are its octets so a 400 can be salvaged with [`super::judge_unparsed`].
    Invalid {
        /// Why it does not parse.
        error: ParseError,
        /// The frame's octets.
        bytes: Vec<u8>,
    },
    /// CRLFCRLF between messages: an RFC 5626 keep-alive ping; answer with a single CRLF.
    Ping,
    /// A lone CRLF between messages: the pong to our ping (or stray, ignorable, CRLF).
    Pong,
}

/// The stream can no longer be cut into messages: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stream framing lost: {0}")]
pub struct FrameError(pub ParseError);

/// Incremental framer: [`StreamFramer::push`] what the socket read, then call
/// [`StreamFramer::next_frame`] until it returns `Ok(None)`. Buffering is bounded by one
/// message (`max_head + max_body`) plus whatever one `push` adds, as long as the caller drains
/// after each push.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf` (consumed bytes are compacted away lazily, so
    /// pipelined messages do not each cost a move of everything behind them).
    start: usize,
    /// How far (relative to `start`) the head-end search has already looked.
    scanned: usize,
    /// Total length of the current message once its head has been read.
    pending: Option<usize>,
    limits: Limits,
    failed: Option<FrameError>,
}

impl StreamFramer {
    /// A framer with the default limits (head 64 KiB, body 1 MiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// A framer with explicit limits.
    pub fn with_limits(limits: Limits) -> Self {
        StreamFramer { limits, ..Self::default() }
    }

    /// Appends received octets.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Octets received but not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        self.scanned = 0;
        self.pending = None;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > IDLE_CAPACITY {
                // One large message must not keep its buffer on an idle connection.
                self.buf = Vec::new();
            }
        }
        out
    }

    fn fail(&mut self, e: ParseError) -> FrameError {
        let e = FrameError(e);
        self.failed = Some(e.clone());
        e
    }

    /// The next complete frame, `Ok(None)` if more octets are needed. After an error every
    /// call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let data = &self.buf[self.start..];
        if self.pending.is_none() && data.first() == Some(&b'\r') {
            match data {
                [b'\r'] | [b'\r', b'\n', b'\r'] => return Ok(None),
                [b'\r', b'\n', b'\r', b'\n', ..] => {
                    self.consume(4);
                    return Ok(Some(Frame::Ping));
                }
                [b'\r', b'\n', ..] => {
                    self.consume(2);
                    return Ok(Some(Frame::Pong));
                }
                _ => {} // a bare CR: the head parser reports it
            }
        }
        let total = match self.pending {
            Some(t) => t,
            None => {
                let from = self.scanned.saturating_sub(3);
                let Some(head_end) = find_head_end(data, from) else {
                    if data.len() > self.limits.max_head {
                        return Err(self.fail(ParseError::HeadTooLarge(self.limits.max_head)));
                    }
                    self.scanned = data.len();
                    return Ok(None);
                };
                if head_end + 4 > self.limits.max_head {
                    return Err(self.fail(ParseError::HeadTooLarge(self.limits.max_head)));
                }
                let declared = split_head(&data[..head_end]).and_then(|(_, h)| content_length(&h));
                let body = match declared {
                    Ok(Some(n)) => n,
                    Ok(None) => return Err(self.fail(ParseError::MissingContentLength)),
                    Err(e) => return Err(self.fail(e)),
                };
                let body = match usize::try_from(body) {
                    Ok(n) if n <= self.limits.max_body => n,
                    _ => return Err(self.fail(ParseError::BodyTooLarge(self.limits.max_body))),
                };
                let total = head_end + 4 + body;
                self.pending = Some(total);
                total
            }
        };
        if self.buffered() < total {
            return Ok(None);
        }
        let bytes = self.consume(total);
        Ok(Some(match parse_datagram_with(&bytes, &self.limits) {
            Ok(msg) => Frame::Message(msg),
            Err(error) => Frame::Invalid { error, bytes },
        }))
    }
}
