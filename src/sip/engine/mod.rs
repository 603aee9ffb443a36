//! The B2BUA engine: registrar, calls, trunks and their timers, sans-IO.
//!
//! The engine owns every piece of SIP state of the process and nothing else: messages come in
//! through [`Engine::on_datagram`] / [`Engine::on_frame`] with where they came from, time comes
//! in as [`Now`], and what must be sent accumulates as [`Outgoing`] values the caller drains
//! with [`Engine::take_output`]. `service.rs` is the only place with sockets. One engine runs in
//! one task, so nothing here locks.
//!
//! Layers: the RFC 3261 transaction table (retransmissions, matching) sits under the TU parts in
//! this folder: `registrar.rs` (REGISTER, bindings), `call.rs` (two dialogs per call, forking,
//! forwarding, relaying in-dialog requests), `trunk.rs` (registrations to providers, OPTIONS
//! pings), `auth.rs` (digest challenges for REGISTER and INVITE).

mod auth;
mod build;
mod call;
mod drain;
mod media;
mod mwi;
mod nat;
mod reconfigure;
mod registrar;
mod transfer;
mod trunk;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log_limit::LogLimiter;
use crate::metrics::{MethodLabels, ReasonLabels, SipMetrics};
use crate::sip::digest::DigestServer;
use crate::sip::transaction::{server_key, Action, Key, Role, Timers, TransactionTable};
use crate::sip::SipAddr;
use crate::sip::{judge, judge_unparsed, parse_datagram, Frame, Message, ReplyContext, Verdict};
use crate::sip::{SipConfig, SipTransport, TrunkId};

pub use build::BRANCH_PREFIX;
pub use media::MediaEvent;
pub use reconfigure::{Changes, ReconfigureReport};

/// The current time, monotonic for timers and wall-clock seconds for digest nonces.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix: u64,
}

impl Now {
    /// The system clocks.
    pub fn system() -> Now {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Now { mono: Instant::now(), unix }
    }
}

/// Where a message came from, or where one goes: the transport, the far address, and for
/// TCP/TLS the connection it arrived on (replies reuse it; RFC 3261 §18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dest {
    pub transport: SipTransport,
    pub addr: SocketAddr,
    pub conn: Option<u64>,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub dest: Dest,
    pub msg: Message,
}

/// Knobs the configuration file does not carry (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub timers: Timers,
    /// Key of the nonces' MAC; random per process.
    pub digest_key: [u8; 32],
    /// First retry after a failed trunk registration (doubles up to 5 minutes).
    pub register_backoff: Duration,
}

impl EngineOptions {
    /// Default timers and a random digest key.
    pub fn random() -> EngineOptions {
        use ring::rand::SecureRandom;
        let mut key = [0u8; 32];
        // A zero key would still give unique (if forgeable) nonces; never expected.
        let _ = ring::rand::SystemRandom::new().fill(&mut key);
        EngineOptions { timers: Timers::default(), digest_key: key, register_backoff: Duration::from_secs(5) }
    }
}

/// Engine-level timers (the transaction table keeps its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    /// A call's ring time is over; `gen` tells whether it is still the current ringing.
    Ring { call: u64, gen: u32 },
    /// Re-send a 2xx to INVITE until its ACK arrives (§13.3.1.4).
    OkRetx { call_id: String, cseq: u32 },
    /// Register (or refresh) a trunk; `gen` tells whether it is still the trunk's chain.
    Register { trunk: TrunkId, gen: u32 },
    /// Ping a trunk.
    Ping { trunk: TrunkId, gen: u32 },
    /// Forget expired bindings and nonces.
    Purge,
    /// The drain deadline: hang up what is left.
    Drain,
}

/// What a client transaction was started for, so its response reaches the right handler.
#[derive(Debug, Clone)]
enum Purpose {
    /// An INVITE towards one fork of a call.
    Fork { call: u64, fork: u32 },
    /// A request whose answer changes nothing (CANCEL, BYE to a leg already gone).
    Fire,
    /// An in-dialog request relayed from the other leg; its final response goes back to
    /// server transaction `server`, answering `origin`.
    Relay { call: u64, server: Key, origin: Box<Message> },
    /// A REGISTER of a trunk, sent by its timer chain `gen`.
    TrunkRegister { trunk: TrunkId, gen: u32 },
    /// An OPTIONS ping of a trunk.
    TrunkPing { trunk: TrunkId, gen: u32 },
    /// The unREGISTER (Expires: 0) of retired trunk state `n`.
    TrunkUnregister(u64),
    /// A NOTIFY to a phone (message waiting).
    Notify,
    /// A fork INVITE whose call is gone and which was cancelled: a 2xx still gets ACK + BYE.
    Orphan,
    /// Our re-INVITE offering a transfer target's SDP to the caller.
    Reoffer { call: u64 },
}

struct ClientTx {
    dest: Dest,
    purpose: Purpose,
    request: Message,
}

struct OkRetx {
    msg: Message,
    dest: Dest,
    interval: Duration,
    give_up: Instant,
    /// The call to tear down when no ACK ever comes (initial INVITE only).
    call: Option<u64>,
}

/// Methods counted by name in `portier_sip_requests_total`; the last is everything else.
const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
    "other",
];

/// The B2BUA. See the module docs.
pub struct Engine {
    cfg: Arc<SipConfig>,
    opts: EngineOptions,
    tx: TransactionTable,
    digest: DigestServer,
    ids: build::Ids,
    out: Vec<Outgoing>,
    server_dest: HashMap<Key, Dest>,
    /// Live server transactions by source address (`sip.limits.transactions_per_source`).
    per_source: HashMap<IpAddr, usize>,
    limit_log: LogLimiter,
    client: HashMap<Key, ClientTx>,
    reg: registrar::Registrar,
    calls: HashMap<u64, call::Call>,
    by_call_id: HashMap<String, u64>,
    next_call: u64,
    trunks: BTreeMap<TrunkId, trunk::TrunkState>,
    /// Register trunks unregistering after a reconfigure or during a drain, by a counter.
    retiring: HashMap<u64, trunk::TrunkState>,
    next_retiring: u64,
    /// Last trunk timer chain generation handed out (one counter for all trunks, so a trunk
    /// removed and added again never meets its old chain's wakes).
    trunk_gen: u32,
    /// Set by [`Engine::drain`]: new calls are refused, and at this instant the rest end.
    draining: Option<Instant>,
    ok_retx: HashMap<(String, u32), OkRetx>,
    wake: BinaryHeap<Reverse<(Instant, Wake)>>,
    metrics: SipMetrics,
    mwi: HashMap<String, (String, String)>,
    subscriptions: Vec<registrar::Subscription>,
    request_counters: [Option<prometheus_client::metrics::counter::Counter>; METHODS.len()],
    media: media::MediaState,
}

impl Engine {
    /// A new engine; trunk registrations and pings start at the first [`Engine::on_timer`].
    pub fn new(cfg: Arc<SipConfig>, metrics: SipMetrics, opts: EngineOptions, now: Now) -> Engine {
        let mut digest = DigestServer::new(cfg.domain.clone(), cfg.nonce_lifetime, opts.digest_key);
        digest.set_caps(65_536, 16_384);
        let media = media::MediaState::new(&cfg.media);
        let mut e = Engine {
            trunks: cfg
                .trunks
                .iter()
                .map(|(id, t)| (id.clone(), trunk::TrunkState::new(id.clone(), t.clone(), &metrics)))
                .collect(),
            cfg,
            opts,
            tx: TransactionTable::new(opts.timers),
            digest,
            ids: build::Ids::default(),
            out: Vec::new(),
            server_dest: HashMap::new(),
            per_source: HashMap::new(),
            limit_log: LogLimiter::default(),
            client: HashMap::new(),
            reg: registrar::Registrar::default(),
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            next_call: 1,
            retiring: HashMap::new(),
            next_retiring: 0,
            trunk_gen: 0,
            draining: None,
            ok_retx: HashMap::new(),
            wake: BinaryHeap::new(),
            metrics,
            mwi: HashMap::new(),
            subscriptions: Vec::new(),
            request_counters: Default::default(),
            media,
        };
        let ids: Vec<TrunkId> = e.trunks.keys().cloned().collect();
        for id in &ids {
            e.trunk_start(id, now);
        }
        e.schedule(now.mono + Duration::from_secs(10), Wake::Purge);
        e
    }

    /// What must be sent, in order.
    pub fn take_output(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// The earliest time [`Engine::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let own = self.wake.peek().map(|Reverse((at, _))| *at);
        match (own, self.tx.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The B2BUA's state for /status: registrations, trunks, calls.
    pub fn status_text(&self, now: Now) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "sip domain {}", self.cfg.domain);
        for ext in self.cfg.extensions.keys() {
            let c = self.reg.contacts(ext, now.mono);
            let where_: Vec<String> =
                c.iter().map(|b| format!("{:?}:{}", b.dest.transport, b.dest.addr)).collect();
            let _ = writeln!(s, "  extension {ext:<8} contacts={} {}", c.len(), where_.join(" "));
        }
        for (name, kind, reg, up) in self.trunk_states() {
            let reg = if kind == "register" { format!(" registration={reg}") } else { String::new() };
            let _ = writeln!(s, "  trunk {name:<12} {kind:<8} {}{reg}", if up { "UP" } else { "DOWN" });
        }
        let _ = writeln!(
            s,
            "  calls {} (answered {}), transactions {}",
            self.calls.len(),
            self.calls.values().filter(|c| c.answered.is_some()).count(),
            self.tx.len()
        );
        let _ = writeln!(s, "  media {}", self.media_status());
        s
    }

    /// Number of live calls (answered or ringing).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// A UDP datagram.
    pub fn on_datagram(&mut self, data: &[u8], src: Dest, now: Now) {
        match parse_datagram(data) {
            Ok(msg) => self.on_message(msg, src, now),
            Err(e) => self.refuse_unparsed(data, &e, src),
        }
    }

    /// A frame from a TCP/TLS connection (keep-alives are answered by the transport).
    pub fn on_frame(&mut self, frame: Frame, src: Dest, now: Now) {
        match frame {
            Frame::Message(m) => self.on_message(m, src, now),
            Frame::Invalid { error, bytes } => self.refuse_unparsed(&bytes, &error, src),
            Frame::Ping | Frame::Pong => {}
        }
    }

    fn refuse_unparsed(&mut self, data: &[u8], e: &crate::sip::ParseError, src: Dest) {
        match judge_unparsed(data, e) {
            Verdict::Reply { status, reason } => {
                tracing::debug!(from = %src.addr, "SIP: unparsable request answered {status}: {reason}");
                if let Some(r) =
                    ReplyContext::from_datagram(data).and_then(|c| c.response(status, &reason, None).ok())
                {
                    self.out.push(Outgoing { dest: src, msg: r });
                }
            }
            Verdict::Drop { reason } => tracing::debug!(from = %src.addr, "SIP: dropped: {reason}"),
            Verdict::Accept => {}
        }
    }

    /// A parsed message.
    pub fn on_message(&mut self, mut msg: Message, src: Dest, now: Now) {
        match judge(&msg) {
            Verdict::Accept => {}
            Verdict::Reply { status, reason } => {
                tracing::debug!(from = %src.addr, "SIP: request answered {status}: {reason}");
                self.stateless(&msg, status, &reason, src);
                return;
            }
            Verdict::Drop { reason } => {
                tracing::debug!(from = %src.addr, "SIP: dropped: {reason}");
                return;
            }
        }
        if !msg.is_request() {
            // Responses are for requests we sent: the top Via must be ours.
            let ours = msg.top_via().ok().and_then(|v| v.branch().map(build::is_our_branch)).unwrap_or(false);
            if ours {
                let d = self.tx.on_received(msg, now.mono);
                self.run(d.key, d.actions, now);
            }
            self.after_event();
            return;
        }
        let is_ack = msg.method() == Some("ACK");
        self.count_request(msg.method().unwrap_or_default());
        if !is_ack {
            if msg.max_forwards().ok().flatten() == Some(0) {
                self.stateless(&msg, 483, "Too Many Hops", src);
                return;
            }
            if self.is_loop(&msg) {
                self.stateless(&msg, 482, "Loop Detected", src);
                return;
            }
        }
        mark_received(&mut msg, src.addr);
        let mut opened = None;
        if !is_ack {
            let Some(k) = server_key(&msg) else {
                // An RFC 2543 branch: no transaction can be matched reliably.
                self.stateless(&msg, 400, "Via Branch Without Magic Cookie Not Supported", src);
                return;
            };
            if self.tx.get(&k).is_none() {
                // A new request: challenged without state, or refused at a limit, before a
                // transaction is made for it.
                if self.challenge_statelessly(&msg, src, now) {
                    return;
                }
                if let Some(reason) = self.over_limit(src.addr.ip()) {
                    self.refuse_at_limit(&msg, src, reason);
                    return;
                }
                self.track_server(k.clone(), src);
                opened = Some(k);
            }
        }
        let d = self.tx.on_received(msg, now.mono);
        self.run(d.key, d.actions, now);
        if let Some(k) = opened.filter(|k| self.tx.get(k).is_none()) {
            // No transaction lives for it (it was answered and ended at once, or never made).
            self.untrack_server(&k);
        }
        self.after_event();
    }

    /// Which `[sip.limits]` bound a new server transaction from `ip` would pass.
    fn over_limit(&self, ip: IpAddr) -> Option<&'static str> {
        let l = &self.cfg.limits;
        if self.tx.len() >= l.transactions {
            return Some("transactions");
        }
        if self.per_source.get(&ip).is_some_and(|n| *n >= l.transactions_per_source) {
            return Some("transactions_per_source");
        }
        None
    }

    /// A stateless 503 for a request beyond a limit, counted, logged once a second.
    fn refuse_at_limit(&mut self, req: &Message, src: Dest, reason: &'static str) {
        self.metrics.refused.get_or_create(&ReasonLabels { reason }).inc();
        if self.limit_log.allow() {
            let held = self.limit_log.take_suppressed();
            tracing::warn!(from = %src.addr, limit = reason, held_back = held, "SIP: request refused with 503 at sip.limits.{reason}");
        }
        if let Some(mut r) = build::response(req, 503, "Service Unavailable", None) {
            let _ = r.insert_header(r.headers().len() - 1, "Retry-After", "5");
            self.out.push(Outgoing { dest: src, msg: r });
        }
    }

    fn track_server(&mut self, k: Key, src: Dest) {
        if self.server_dest.insert(k, src).is_none() {
            *self.per_source.entry(src.addr.ip()).or_default() += 1;
        }
    }

    fn untrack_server(&mut self, k: &Key) {
        let Some(d) = self.server_dest.remove(k) else { return };
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.per_source.entry(d.addr.ip()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Whether anything still needs TCP/TLS connection `id`: a registration, a call leg, a
    /// subscription or a transaction on it. An idle connection that nothing needs is closed
    /// (`sip.limits.idle_timeout`). Called once per idle period of a connection, not per message.
    pub fn uses_connection(&self, id: u64) -> bool {
        let on = |d: &Dest| d.conn == Some(id);
        self.reg.any_dest(on)
            || self.calls.values().any(|c| on(&c.a.dest) || c.forks.iter().any(|f| on(&f.leg.dest)))
            || self.subscriptions.iter().any(|s| on(&s.dest))
            || self.server_dest.values().any(on)
            || self.client.values().any(|c| on(&c.dest))
    }

    /// Time passed: fire the transaction and engine timers that are due.
    pub fn on_timer(&mut self, now: Now) {
        let fired = self.tx.on_timer(now.mono);
        for (key, action) in fired {
            self.run(Some(key), vec![action], now);
        }
        while let Some(Reverse((at, _))) = self.wake.peek() {
            if *at > now.mono {
                break;
            }
            let Some(Reverse((_, w))) = self.wake.pop() else { break };
            match w {
                Wake::Ring { call, gen } => self.ring_timeout(call, gen, now),
                Wake::OkRetx { call_id, cseq } => self.ok_retransmit(call_id, cseq, now),
                Wake::Register { trunk, gen } => self.trunk_register(&trunk, gen, now),
                Wake::Ping { trunk, gen } => self.trunk_ping(&trunk, gen, now),
                Wake::Drain => self.drain_deadline(now),
                Wake::Purge => {
                    self.reg.purge(now.mono, &self.metrics);
                    self.digest.purge(now.unix);
                    self.schedule(now.mono + Duration::from_secs(10), Wake::Purge);
                }
            }
        }
        self.after_event();
    }

    /// A TCP/TLS connection to `addr` could not be opened or broke: transactions waiting on it
    /// fail now instead of at their timeout (§17.1.4).
    pub fn on_transport_error(&mut self, transport: SipTransport, addr: SocketAddr, now: Now) {
        let keys: Vec<Key> = self
            .client
            .iter()
            .filter(|(_, c)| c.dest.transport == transport && c.dest.addr == addr)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let actions = self.tx.transport_error(&k, now.mono);
            self.run(Some(k), actions, now);
        }
        self.after_event();
    }

    /// Counts a request by method through handles cached per method (no label allocation or
    /// family lock per message); methods outside RFC 3261 and its extensions count as "other".
    fn count_request(&mut self, method: &str) {
        let i = METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1);
        let requests = &self.metrics.requests;
        self.request_counters[i]
            .get_or_insert_with(|| {
                requests.get_or_create(&MethodLabels { method: METHODS[i].to_string() }).clone()
            })
            .inc();
    }

    fn after_event(&mut self) {
        self.metrics.transactions.set(self.tx.len() as i64);
    }

    fn schedule(&mut self, at: Instant, w: Wake) {
        self.wake.push(Reverse((at, w)));
    }

    fn stateless(&mut self, req: &Message, status: u16, reason: &str, dest: Dest) {
        if !req.is_request() || req.method() == Some("ACK") {
            return;
        }
        if let Some(r) = build::response(req, status, reason, None) {
            self.out.push(Outgoing { dest, msg: r });
        }
    }

    /// A request that carries our own branch in a Via sent by one of our listeners came back.
    fn is_loop(&self, msg: &Message) -> bool {
        let Ok(vias) = msg.vias() else { return false };
        vias.iter().any(|v| {
            v.branch().is_some_and(build::is_our_branch)
                && self.cfg.listen.iter().any(|l| v.sent_by().eq_ignore_ascii_case(&build::host_port(l.addr)))
        })
    }

    /// The listener a leg towards `to` leaves from: same transport and family if there is one,
    /// else any listener of the family (its address still names us in Via and Contact).
    fn local_for(&self, transport: SipTransport, to: SocketAddr) -> SipAddr {
        let fam = |l: &&SipAddr| l.addr.is_ipv4() == to.is_ipv4();
        self.cfg
            .listen
            .iter()
            .filter(fam)
            .find(|l| l.transport == transport)
            .or_else(|| self.cfg.listen.iter().find(fam))
            .or_else(|| self.cfg.listen.first())
            .map(|l| SipAddr { transport, addr: l.addr })
            .expect("validation requires at least one SIP listener")
    }

    // ---- transactions ------------------------------------------------------------------------

    /// Starts a client transaction; `None` when the request is unusable (a bug of ours).
    fn send_request(&mut self, req: Message, dest: Dest, purpose: Purpose, now: Now) -> Option<Key> {
        match self.tx.send_request(req.clone(), now.mono) {
            Ok((key, actions)) => {
                self.client.insert(key.clone(), ClientTx { dest, purpose, request: req });
                self.run(Some(key.clone()), actions, now);
                Some(key)
            }
            Err(e) => {
                tracing::error!("SIP: could not start a transaction: {e}");
                None
            }
        }
    }

    /// Sends `resp` on server transaction `key`.
    fn respond(&mut self, key: &Key, resp: Message, now: Now) {
        let actions = self.tx.send_response(key, resp, now.mono);
        self.run(Some(key.clone()), actions, now);
    }

    /// Answers the request of server transaction `key` with a plain response.
    fn reply(&mut self, key: &Key, req: &Message, status: u16, reason: &str, to_tag: Option<&str>, now: Now) {
        if let Some(r) = build::response(req, status, reason, to_tag) {
            self.respond(key, r, now);
        }
    }

    /// Answers with a final response carrying a fresh To tag (a refusal outside any dialog).
    fn reject(&mut self, key: &Key, req: &Message, status: u16, reason: &str, now: Now) {
        let tag = self.ids.tag();
        self.reply(key, req, status, reason, Some(&tag), now);
    }

    /// Carries out transaction actions.
    fn run(&mut self, key: Option<Key>, actions: Vec<Action>, now: Now) {
        for a in actions {
            match a {
                Action::Transmit(msg) => {
                    let dest = match &key {
                        Some(k) if k.role == Role::Client => self.client.get(k).map(|c| c.dest),
                        Some(k) => self.server_dest.get(k).copied(),
                        None => None,
                    };
                    if let Some(dest) = dest {
                        self.out.push(Outgoing { dest, msg });
                    }
                }
                Action::Deliver(msg) => match &key {
                    None if msg.is_request() => self.on_stray_request(msg, now),
                    None => self.on_stray_response(msg, now),
                    Some(k) if k.role == Role::Server => {
                        let src = self.server_dest.get(k).copied();
                        if let Some(src) = src {
                            self.on_request(k.clone(), msg, src, now);
                        }
                    }
                    Some(k) => self.on_response(k.clone(), msg, false, now),
                },
                Action::Timeout | Action::TransportError => {
                    let status = if matches!(a, Action::Timeout) { 408 } else { 503 };
                    if let Some(k) = key.as_ref().filter(|k| k.role == Role::Client) {
                        let synthetic = self
                            .client
                            .get(k)
                            .and_then(|c| build::response(&c.request, status, "Synthetic (no answer)", None));
                        if let Some(r) = synthetic {
                            self.on_response(k.clone(), r, true, now);
                        }
                    }
                }
                Action::Terminated => {
                    if let Some(k) = &key {
                        match k.role {
                            Role::Client => self.client.remove(k),
                            Role::Server => {
                                self.untrack_server(k);
                                None
                            }
                        };
                    }
                }
            }
        }
    }

    // ---- TU dispatch -------------------------------------------------------------------------

    fn on_request(&mut self, key: Key, req: Message, src: Dest, now: Now) {
        let method = req.method().unwrap_or_default().to_owned();
        let in_dialog = req.to().ok().and_then(|t| t.tag().map(str::to_owned)).is_some();
        match (method.as_str(), in_dialog) {
            ("REGISTER", _) => self.on_register(key, req, src, now),
            ("CANCEL", _) => self.on_cancel(key, req, now),
            ("INVITE", false) => self.on_invite(key, req, src, now),
            ("OPTIONS", false) => {
                if let Some(mut r) = build::response(&req, 200, "OK", Some(&self.ids.tag())) {
                    let _ = r.insert_header(r.headers().len() - 1, "Allow", call::ALLOW);
                    let _ = r.insert_header(r.headers().len() - 1, "Accept", "application/sdp");
                    self.respond(&key, r, now);
                }
            }
            ("NOTIFY", false) => self.on_notify(key, req, src, now),
            ("SUBSCRIBE", _) => self.on_subscribe(key, req, src, now),
            (_, true) => self.on_in_dialog(key, req, now),
            _ => {
                if let Some(mut r) = build::response(&req, 405, "Method Not Allowed", Some(&self.ids.tag())) {
                    let _ = r.insert_header(r.headers().len() - 1, "Allow", call::ALLOW);
                    self.respond(&key, r, now);
                }
            }
        }
    }

    /// A response for client transaction `key`; `synthetic` when we made it up from a timeout
    /// or a transport error.
    fn on_response(&mut self, key: Key, resp: Message, synthetic: bool, now: Now) {
        let Some(purpose) = self.client.get(&key).map(|c| c.purpose.clone()) else { return };
        match purpose {
            Purpose::Fork { call, fork } => self.on_fork_response(call, fork, &key, resp, now),
            Purpose::Relay { call, server, origin } => {
                self.on_relay_response(call, server, *origin, resp, now)
            }
            Purpose::TrunkRegister { trunk, gen } => self.on_trunk_register_response(&trunk, gen, resp, now),
            Purpose::TrunkPing { trunk, gen } => self.on_trunk_ping_response(&trunk, gen, &resp, synthetic),
            Purpose::TrunkUnregister(n) => self.on_trunk_unregister_response(n, resp, now),
            Purpose::Reoffer { call } => self.on_reoffer_response(call, resp, now),
            Purpose::Orphan => {
                if (200..300).contains(&resp.status().unwrap_or(0)) {
                    self.hang_up_orphan(&key, &resp, now);
                }
            }
            Purpose::Fire | Purpose::Notify => {}
        }
    }

    fn on_stray_request(&mut self, msg: Message, now: Now) {
        if msg.method() == Some("ACK") {
            self.on_ack(msg, now);
        }
    }
}

/// RFC 3581: a request whose top Via asks for `rport` gets `received` and `rport` filled in,
/// and RFC 3261 §18.2.1 `received` when the sent-by host is not the source address.
fn mark_received(msg: &mut Message, src: SocketAddr) {
    let Ok(via) = msg.top_via() else { return };
    let wants_rport = matches!(via.rport(), Some(None));
    let host_differs = via.host.trim_start_matches('[').trim_end_matches(']') != src.ip().to_string();
    if !wants_rport && !host_differs {
        return;
    }
    let Some(text) = msg.values("Via").ok().and_then(|v| v.into_iter().next()) else { return };
    let mut parts: Vec<String> = text
        .split(';')
        .map(str::trim)
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default().trim();
            !(name.eq_ignore_ascii_case("received") || wants_rport && name.eq_ignore_ascii_case("rport"))
        })
        .map(str::to_owned)
        .collect();
    parts.push(format!("received={}", src.ip()));
    if wants_rport {
        parts.push(format!("rport={}", src.port()));
    }
    let new = parts.join(";");
    if msg.pop_via() {
        let _ = msg.prepend_via(&new);
    }
}
