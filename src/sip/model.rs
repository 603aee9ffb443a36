//! The B2BUA's configuration as typed, validated values: what the engine and the service run
//! on. `config` builds these from the file (shapes, defaults, errors with file:line:field);
//! nothing here knows about files, so `sip` never imports `config`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::media::ports::PortRange;
use crate::sip::dialplan::DialPlan;
use crate::sip::digest::Algorithm;
use crate::tls::{CertSpec, UpstreamTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

impl SipTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }
}

/// A trunk's configured name (`[sip.trunks.NAME]`): what trunk state, timers, transactions and
/// forks are keyed by, so a reconfigure that adds or removes other trunks cannot shift them.
/// Cheap to clone (shared text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrunkId(Arc<str>);

impl TrunkId {
    pub fn new(name: &str) -> TrunkId {
        TrunkId(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TrunkId {
    fn from(name: &str) -> TrunkId {
        TrunkId::new(name)
    }
}

impl Borrow<str> for TrunkId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    pub listen: Vec<SipAddr>,
    pub domain: String,
    /// Certificate and key for `tls:` listeners (and mutual TLS towards peers).
    pub tls: Option<CertSpec>,
    /// How long a digest nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Digest algorithms offered in challenges, most preferred first; credentials using
    /// another are refused.
    pub digest_algorithms: Vec<Algorithm>,
    /// By extension number.
    pub extensions: BTreeMap<String, SipExtension>,
    /// By trunk name.
    pub trunks: BTreeMap<TrunkId, SipTrunk>,
    pub voicemail: Option<SipVoicemail>,
    pub dialplan: DialPlan,
    pub limits: SipLimits,
    pub media: SipMedia,
}

/// `[sip.media]`: the relay every call whose caller or callee has `media = "relay"` (the
/// default) goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipMedia {
    /// RTP on even ports, RTCP on the next.
    pub ports: PortRange,
    /// Where relay ports are bound and what SDP names, for legs of its family; None (and for
    /// the other family): the address of the SIP listener the leg uses.
    pub address: Option<IpAddr>,
    /// A sendrecv stream silent this long ends its call (BYE both ways).
    pub timeout: Duration,
    /// The same for a stream on hold.
    pub hold_timeout: Duration,
}

impl Default for SipMedia {
    fn default() -> Self {
        SipMedia {
            ports: PortRange::new(30_000, 39_999).expect("a range of whole pairs"),
            address: None,
            timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
        }
    }
}

/// Whether a party's audio goes through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaMode {
    /// Through the relay (a call is relayed when either party says so).
    #[default]
    Relay,
    /// Straight between the parties when both say so (SDP passed unchanged).
    Direct,
}

impl MediaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaMode::Relay => "relay",
            MediaMode::Direct => "direct",
        }
    }
}

/// Bounds on the state peers can make the B2BUA hold (`[sip.limits]`). Requests beyond the
/// transaction limits get a stateless 503, connections beyond the connection limits are
/// closed at once; both are counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipLimits {
    /// Live transactions in all.
    pub transactions: usize,
    /// Live server transactions of requests from one IP address.
    pub transactions_per_source: usize,
    /// Accepted TCP/TLS connections in all.
    pub connections: usize,
    /// Accepted TCP/TLS connections from one IP address.
    pub connections_per_source: usize,
    /// A message whose first bytes arrived must be complete within this.
    pub message_timeout: Duration,
    /// An accepted connection with no registration, call or transaction on it is closed
    /// after this long without a message.
    pub idle_timeout: Duration,
}

impl Default for SipLimits {
    fn default() -> Self {
        // About 4 KB per transaction and 5 KB per idle connection: tens of MB at most.
        SipLimits {
            transactions: 10_000,
            transactions_per_source: 1_000,
            connections: 4_000,
            connections_per_source: 100,
            message_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// `transport:IP:port`, e.g. `tcp:198.18.2.20:5060` or `tls:[2001:db8::1]:5061`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddr {
    pub transport: SipTransport,
    pub addr: SocketAddr,
}

impl fmt::Display for SipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipExtension {
    /// Display name; the extension number when not given.
    pub name: String,
    pub secret: String,
    pub voicemail: bool,
    /// How long the extension rings before `forward.no_answer` (or the caller gives up).
    pub ring_time: Duration,
    pub forward: Forward,
    /// Where requests to the phone go (`engine::nat`).
    pub nat: SipNat,
    pub media: MediaMode,
}

/// How an extension's phone is reached: its Contact, or the address its messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SipNat {
    /// The Contact, unless the Contact's address shows NAT on the way.
    #[default]
    Auto,
    /// Always the source address (and connection) of the phone's messages.
    Force,
    /// Always the Contact.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    pub always: Option<ForwardTo>,
    pub busy: Option<ForwardTo>,
    pub no_answer: Option<ForwardTo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    /// An extension or a number the dial plan routes.
    Number(String),
    /// The extension's own mailbox (needs `voicemail = true` and `[sip.voicemail]`).
    Voicemail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// P-Asserted-Identity (what Exchange UM expects).
    Pai,
    /// Remote-Party-ID (what many ISPs expect).
    Rpid,
    None,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Pai => "pai",
            Identity::Rpid => "rpid",
            Identity::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTrunk {
    pub kind: TrunkKind,
    /// How the caller identity is sent on calls out of this trunk.
    pub identity: Identity,
    /// Certificate checks of connections portier opens to a `tls:` trunk; None: not verified
    /// (warned at start).
    pub tls: Option<UpstreamTls>,
    pub media: MediaMode,
}

impl SipTrunk {
    /// Where the trunk is reached: the peer's address or the registrar.
    pub fn address(&self) -> SipAddr {
        match &self.kind {
            TrunkKind::Peer { address, .. } => *address,
            TrunkKind::Register { registrar, .. } => *registrar,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkKind {
    /// Addressed (and, if trusted, authenticated) by IP; never registers.
    Peer {
        address: SipAddr,
        /// Accept INVITE / NOTIFY from this address without digest authentication.
        trusted: bool,
        /// OPTIONS every this long; down after 3 unanswered. None: no pings.
        options_ping: Option<Duration>,
    },
    /// We REGISTER to it with digest authentication, refreshed before expiry.
    Register {
        registrar: SipAddr,
        domain: String,
        username: String,
        secret: String,
        expires: Duration,
        /// The extension calls arriving on this trunk ring; None: the called number is
        /// looked up among the extensions.
        inbound: Option<String>,
    },
}

impl TrunkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TrunkKind::Peer { .. } => "peer",
            TrunkKind::Register { .. } => "register",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipVoicemail {
    /// The trunk towards the voicemail system (Exchange UM).
    pub trunk: TrunkId,
    /// The pilot number calls to a mailbox are sent to.
    pub pilot: String,
    /// Put in front of the extension to make the mailbox number (Asterisk's UMOUTDIALPREFIX).
    pub mailbox_prefix: String,
    /// An extension dialling its own number reaches its mailbox.
    pub own_extension_to_mailbox: bool,
    /// Accept unsolicited message-waiting NOTIFYs from the voicemail trunk.
    pub mwi: bool,
}
