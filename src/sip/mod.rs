//! The SIP message layer the B2BUA is built on: parse, inspect, edit and serialise SIP messages
//! without losing a byte.
//!
//! Why our own (see `EVALUATION.md` beside this file): of the two crates evaluated against
//! RFC 4475, `ezk-sip-types` is not lossless and gets 13 verdicts wrong, and `sipx-sip` cannot be
//! added at portier's declared rust-version (1.80; it needs 1.88).
//!
//! The model is "raw bytes first, meaning on demand": a [`Message`] keeps its start line, every
//! header field exactly as received (name spelling, compact form, spacing, folding, order) and
//! the body, so an unchanged message serialises byte-identically and a proxy-like B2BUA forwards
//! what it does not understand untouched. Typed views ([`Via`], [`NameAddr`], [`CSeq`], [`Uri`],
//! ...) are parsed from those bytes when asked for and never cached, so they cannot drift from
//! what is sent.
//!
//! Network input never panics: structural faults are [`ParseError`]s, faults inside one header
//! are [`HeaderError`]s, and [`judge`] / [`judge_unparsed`] turn either into what RFC 3261 and
//! RFC 4475 ask for: accept, answer (400/505) or drop.

mod connection;
pub mod dialplan;
pub mod digest;
pub mod engine;
mod error;
mod framer;
mod grammar;
mod headers;
mod media_tasks;
mod message;
pub mod model;
mod parse;
pub mod service;
pub mod transaction;
mod uri;
mod validate;

#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod torture_tests;

pub use engine::{Changes, ReconfigureReport};
pub use error::{EditError, HeaderError, ParseError};
pub use framer::{Frame, FrameError, StreamFramer};
pub use headers::{canonical_name, split_list, CSeq, ContactList, MediaType, NameAddr, Param, Params, Via};
pub use message::{Header, Message, StartLine};
pub use model::{
    Forward, ForwardTo, Identity, MediaMode, SipAddr, SipConfig, SipExtension, SipLimits, SipMedia, SipNat,
    SipTransport, SipTrunk, SipVoicemail, TrunkId, TrunkKind,
};
pub use parse::{parse_datagram, parse_datagram_with, parse_message, Limits};
pub use service::{SipError, SipHandle};
pub use uri::{SipUri, TelUri, Uri};
pub use validate::{judge, judge_unparsed, ReplyContext, Verdict};
