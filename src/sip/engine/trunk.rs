//! Trunks: `register` trunks keep a registration at their provider (digest auth, refresh before
//! expiry, back-off after failure); `peer` trunks are pinged with OPTIONS and marked down after
//! three pings in a row go unanswered.
//!
//! Each trunk's timer chain (refresh or ping) carries a generation: a reconfigure that restarts
//! a trunk starts a new chain, and wakes or responses of the old one are ignored. A register
//! trunk that is removed, changes its binding, or stops with the process is "retired": it sends
//! REGISTER with Expires: 0 (answering one challenge) and is forgotten on the final answer.

use std::net::IpAddr;
use std::time::Duration;

use crate::metrics::{SipMetrics, TrunkLabels};
use crate::sip::digest;
use crate::sip::Message;
use crate::sip::{SipAddr, SipTrunk, TrunkId, TrunkKind};

use super::build::{self, RequestParts};
use super::{Dest, Engine, Now, Purpose, Wake};
use crate::sip::SipTransport;

/// Pings in a row without an answer before a peer is down.
const MAX_MISSED: u32 = 3;
/// Longest pause between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RegState {
    Unregistered,
    Registering,
    Registered,
    Failed,
}

impl RegState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegState::Unregistered => "unregistered",
            RegState::Registering => "registering",
            RegState::Registered => "registered",
            RegState::Failed => "failed",
        }
    }
}

pub(super) struct TrunkState {
    pub id: TrunkId,
    pub cfg: SipTrunk,
    /// The current timer chain; wakes and responses of another are stale.
    pub gen: u32,
    pub up: bool,
    pub missed: u32,
    pub ping_outstanding: bool,
    pub reg: RegState,
    pub call_id: String,
    pub from_tag: String,
    pub cseq: u32,
    /// Whether the REGISTER in flight already carried credentials for this challenge round.
    pub authed: bool,
    pub backoff: Duration,
    up_gauge: prometheus_client::metrics::gauge::Gauge,
    reg_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl TrunkState {
    pub fn new(id: TrunkId, cfg: SipTrunk, metrics: &SipMetrics) -> TrunkState {
        let l = TrunkLabels { trunk: id.to_string() };
        let up_gauge = metrics.trunk_up.get_or_create(&l).clone();
        up_gauge.set(1);
        let reg_gauge = metrics.trunk_registered.get_or_create(&l).clone();
        reg_gauge.set(0);
        TrunkState {
            id,
            cfg,
            gen: 0,
            up: true,
            missed: 0,
            ping_outstanding: false,
            reg: RegState::Unregistered,
            call_id: String::new(),
            from_tag: String::new(),
            cseq: 0,
            authed: false,
            backoff: Duration::ZERO,
            up_gauge,
            reg_gauge,
        }
    }

    /// Where calls and requests for this trunk go.
    pub fn addr(&self) -> SipAddr {
        match &self.cfg.kind {
            TrunkKind::Peer { address, .. } => *address,
            TrunkKind::Register { registrar, .. } => *registrar,
        }
    }

    /// The host part of Request-URIs towards the trunk.
    pub fn uri_host(&self) -> String {
        match &self.cfg.kind {
            TrunkKind::Peer { address, .. } => {
                format!("{}{}", build::host_port(address.addr), build::uri_transport(address.transport))
            }
            TrunkKind::Register { domain, registrar, .. } => {
                format!("{domain}{}", build::uri_transport(registrar.transport))
            }
        }
    }

    /// Shown to be registered, or asking to be: worth an unREGISTER when it goes.
    pub fn may_be_bound(&self) -> bool {
        matches!(self.reg, RegState::Registered | RegState::Registering)
    }

    /// Publishes "not registered" (the trunk is being retired or is gone).
    pub fn clear_gauges(&self) {
        self.reg_gauge.set(0);
    }

    pub(super) fn set_up(&mut self, up: bool) {
        if self.up != up {
            if up {
                tracing::info!(trunk = %self.id, "SIP trunk up: OPTIONS answered");
            } else {
                tracing::warn!(trunk = %self.id, "SIP trunk DOWN: {MAX_MISSED} OPTIONS pings unanswered");
            }
        }
        self.up = up;
        self.up_gauge.set(i64::from(up));
    }
}

impl Engine {
    /// The trunk a request from `ip` arrived on, if any (the first by name when several
    /// trunks share an address).
    pub(super) fn trunk_from(&self, ip: IpAddr) -> Option<TrunkId> {
        self.trunks.values().find(|t| t.addr().addr.ip() == ip).map(|t| t.id.clone())
    }

    /// The kind of the trunk at `ip` when its calls need no credentials (every trunk but an
    /// untrusted peer, whose callers authenticate like phones).
    pub(super) fn trusted_trunk(&self, ip: IpAddr) -> Option<&TrunkKind> {
        self.trunks
            .values()
            .find(|t| t.addr().addr.ip() == ip)
            .map(|t| &t.cfg.kind)
            .filter(|k| !matches!(k, TrunkKind::Peer { trusted: false, .. }))
    }

    /// Starts (or restarts) trunk `id`'s timer chain: a REGISTER or a ping now. Nothing while
    /// draining: a stopping B2BUA takes no new registrations.
    pub(super) fn trunk_start(&mut self, id: &TrunkId, now: Now) {
        if self.draining.is_some() {
            return;
        }
        self.trunk_gen = self.trunk_gen.wrapping_add(1);
        let gen = self.trunk_gen;
        let Some(t) = self.trunks.get_mut(id) else { return };
        t.gen = gen;
        match t.cfg.kind {
            TrunkKind::Register { .. } => {
                if t.call_id.is_empty() {
                    t.call_id = self.ids.call_id(&self.cfg.domain);
                    t.from_tag = self.ids.tag();
                }
                t.authed = false;
                t.backoff = Duration::ZERO;
                self.schedule(now.mono, Wake::Register { trunk: id.clone(), gen });
            }
            TrunkKind::Peer { options_ping: Some(_), .. } => {
                t.missed = 0;
                t.ping_outstanding = false;
                self.schedule(now.mono, Wake::Ping { trunk: id.clone(), gen });
            }
            TrunkKind::Peer { .. } => {}
        }
    }

    /// The REGISTER timer of chain `gen` of trunk `id` fired.
    pub(super) fn trunk_register(&mut self, id: &TrunkId, gen: u32, now: Now) {
        if self.trunks.get(id).is_some_and(|t| t.gen == gen) {
            self.send_trunk_register(id, None, now);
        }
    }

    /// Sends a REGISTER for trunk `id`, with credentials answering `challenge` if given.
    fn send_trunk_register(&mut self, id: &TrunkId, challenge: Option<(&'static str, String)>, now: Now) {
        let Some((transport, addr)) = self.trunks.get(id).and_then(register_dest) else { return };
        let local = self.local_for(transport, addr);
        let Some(t) = self.trunks.get_mut(id) else { return };
        if t.reg != RegState::Registered {
            t.reg = RegState::Registering;
        }
        let gen = t.gen;
        match register_request(&mut self.ids, local, t, challenge, None) {
            Ok(req) => {
                let dest = Dest { transport, addr, conn: None };
                self.send_request(req, dest, Purpose::TrunkRegister { trunk: id.clone(), gen }, now);
            }
            Err(e) => {
                tracing::warn!(trunk = %id, "SIP trunk: cannot answer the challenge: {e}");
                self.trunk_register_failed(id, now);
            }
        }
    }

    pub(super) fn on_trunk_register_response(&mut self, id: &TrunkId, gen: u32, resp: Message, now: Now) {
        let status = resp.status().unwrap_or(500);
        // A response for a trunk the configuration no longer has, or for a chain a
        // reconfigure replaced, changes nothing.
        let Some(authed) = self.trunks.get(id).filter(|t| t.gen == gen).map(|t| t.authed) else { return };
        match status {
            100..=199 => {}
            200..=299 => {
                let requested = match self.trunks.get(id).map(|t| &t.cfg.kind) {
                    Some(TrunkKind::Register { expires, .. }) => expires.as_secs() as u32,
                    _ => return,
                };
                // The granted time: our Contact's expires param, else Expires, else what we asked.
                let granted = match resp.contacts() {
                    Ok(crate::sip::ContactList::Addrs(a)) => {
                        a.iter().find_map(|c| c.expires().ok().flatten())
                    }
                    _ => None,
                }
                .or(resp.expires().ok().flatten())
                .unwrap_or(requested)
                .max(1);
                let Some(t) = self.trunks.get_mut(id) else { return };
                if t.reg != RegState::Registered {
                    tracing::info!(trunk = %id, expires = granted, "SIP trunk registered");
                }
                t.reg = RegState::Registered;
                t.backoff = Duration::ZERO;
                t.reg_gauge.set(1);
                // Refresh with a margin: half the time for short registrations, 30 s for long ones.
                let g = Duration::from_secs(u64::from(granted));
                let refresh = g - (g / 2).min(Duration::from_secs(30));
                self.schedule(now.mono + refresh, Wake::Register { trunk: id.clone(), gen });
            }
            401 | 407 if !authed || is_stale(&resp, status) => {
                let header = if status == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
                let challenge = pick_challenge(&resp, header);
                match challenge {
                    Some(c) => {
                        let cred = if status == 401 { "Authorization" } else { "Proxy-Authorization" };
                        self.send_trunk_register(id, Some((cred, c)), now);
                    }
                    None => {
                        tracing::warn!(trunk = %id, "SIP trunk: {status} without a usable Digest challenge");
                        self.trunk_register_failed(id, now);
                    }
                }
            }
            _ => {
                let reason = if status == 401 || status == 407 { " (credentials refused)" } else { "" };
                tracing::warn!(trunk = %id, status, "SIP trunk registration failed{reason}");
                self.trunk_register_failed(id, now);
            }
        }
    }

    fn trunk_register_failed(&mut self, id: &TrunkId, now: Now) {
        let first = self.opts.register_backoff;
        let Some(t) = self.trunks.get_mut(id) else { return };
        t.reg = RegState::Failed;
        t.reg_gauge.set(0);
        t.backoff = if t.backoff.is_zero() { first } else { (t.backoff * 2).min(MAX_BACKOFF) };
        let wait = t.backoff;
        let gen = t.gen;
        tracing::info!(trunk = %id, "SIP trunk: next registration attempt in {wait:?}");
        self.schedule(now.mono + wait, Wake::Register { trunk: id.clone(), gen });
    }

    /// Retires a register trunk's state: unREGISTERs its binding when it may have one, else
    /// forgets it at once. Its timer chain is already stale (the state left `trunks`).
    pub(super) fn retire_trunk(&mut self, mut t: TrunkState, now: Now) {
        t.clear_gauges();
        let Some((transport, addr)) = register_dest(&t) else { return };
        if !t.may_be_bound() {
            return;
        }
        let local = self.local_for(transport, addr);
        t.authed = false;
        let req = match register_request(&mut self.ids, local, &mut t, None, Some(0)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(trunk = %t.id, "SIP trunk: cannot unregister: {e}");
                return;
            }
        };
        tracing::info!(trunk = %t.id, "SIP trunk: unregistering (Expires: 0)");
        self.next_retiring += 1;
        let rid = self.next_retiring;
        self.retiring.insert(rid, t);
        let dest = Dest { transport, addr, conn: None };
        if self.send_request(req, dest, Purpose::TrunkUnregister(rid), now).is_none() {
            self.retiring.remove(&rid);
        }
    }

    pub(super) fn on_trunk_unregister_response(&mut self, rid: u64, resp: Message, now: Now) {
        let status = resp.status().unwrap_or(500);
        if status < 200 {
            return;
        }
        let Some(mut t) = self.retiring.remove(&rid) else { return };
        if matches!(status, 401 | 407) && !t.authed {
            let header = if status == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
            let cred = if status == 401 { "Authorization" } else { "Proxy-Authorization" };
            if let (Some(c), Some((transport, addr))) = (pick_challenge(&resp, header), register_dest(&t)) {
                let local = self.local_for(transport, addr);
                if let Ok(req) = register_request(&mut self.ids, local, &mut t, Some((cred, c)), Some(0)) {
                    self.retiring.insert(rid, t);
                    let dest = Dest { transport, addr, conn: None };
                    if self.send_request(req, dest, Purpose::TrunkUnregister(rid), now).is_none() {
                        self.retiring.remove(&rid);
                    }
                    return;
                }
            }
        }
        if (200..300).contains(&status) {
            tracing::info!(trunk = %t.id, "SIP trunk unregistered");
        } else {
            tracing::warn!(trunk = %t.id, status, "SIP trunk: unregistration refused; the binding expires by itself");
        }
    }

    /// The ping timer of chain `gen` of trunk `id` fired.
    pub(super) fn trunk_ping(&mut self, id: &TrunkId, gen: u32, now: Now) {
        let Some(t) = self.trunks.get_mut(id).filter(|t| t.gen == gen) else { return };
        let TrunkKind::Peer { address, options_ping: Some(every), .. } = t.cfg.kind else {
            return;
        };
        if t.ping_outstanding {
            t.missed += 1;
            if t.missed >= MAX_MISSED {
                t.set_up(false);
            }
        }
        let host = t.uri_host();
        let local = self.local_for(address.transport, address.addr);
        let branch = self.ids.branch();
        let tag = self.ids.tag();
        let call_id = self.ids.call_id(&self.cfg.domain);
        let ruri = format!("sip:{host}");
        let from = format!("<sip:portier@{}>;tag={tag}", self.cfg.domain);
        let via = build::via(local, &branch);
        let Ok(req) = build::request(&RequestParts {
            method: "OPTIONS",
            ruri: &ruri,
            via: &via,
            from: &from,
            to: &format!("<{ruri}>"),
            call_id: &call_id,
            cseq: 1,
            max_forwards: 70,
            routes: &[],
            contact: None,
        }) else {
            return;
        };
        if let Some(t) = self.trunks.get_mut(id) {
            t.ping_outstanding = true;
        }
        let dest = Dest { transport: address.transport, addr: address.addr, conn: None };
        self.send_request(req, dest, Purpose::TrunkPing { trunk: id.clone(), gen }, now);
        self.schedule(now.mono + every, Wake::Ping { trunk: id.clone(), gen });
    }

    pub(super) fn on_trunk_ping_response(&mut self, id: &TrunkId, gen: u32, resp: &Message, synthetic: bool) {
        let status = resp.status().unwrap_or(500);
        if status < 200 {
            return;
        }
        let Some(t) = self.trunks.get_mut(id).filter(|t| t.gen == gen) else { return };
        t.ping_outstanding = false;
        // Any real answer (even 404/405) proves the peer is alive; our own synthetic 408/503
        // (timeout, connection refused) does not.
        if synthetic {
            t.missed += 1;
            if t.missed >= MAX_MISSED {
                t.set_up(false);
            }
        } else {
            t.missed = 0;
            t.set_up(true);
        }
    }

    /// State of every trunk for /status: (name, kind, registration, up).
    pub fn trunk_states(&self) -> Vec<(String, &'static str, &'static str, bool)> {
        self.trunks.values().map(|t| (t.id.to_string(), t.cfg.kind.as_str(), t.reg.as_str(), t.up)).collect()
    }
}

/// Where a register trunk's REGISTERs go.
fn register_dest(t: &TrunkState) -> Option<(SipTransport, std::net::SocketAddr)> {
    match &t.cfg.kind {
        TrunkKind::Register { registrar, .. } => Some((registrar.transport, registrar.addr)),
        TrunkKind::Peer { .. } => None,
    }
}

/// The next REGISTER of trunk `t` (its Call-ID, From tag and next CSeq), sent from `local`:
/// Expires as configured or `expires` (0 to unregister), with credentials answering
/// `challenge` (header name, challenge) if given.
fn register_request(
    ids: &mut build::Ids,
    local: SipAddr,
    t: &mut TrunkState,
    challenge: Option<(&'static str, String)>,
    expires: Option<u64>,
) -> Result<Message, String> {
    let TrunkKind::Register { registrar, domain, username, secret, expires: configured, .. } = &t.cfg.kind
    else {
        return Err("not a register trunk".into());
    };
    let branch = ids.branch();
    t.cseq += 1;
    let aor = format!("<sip:{username}@{domain}>");
    let ruri = format!("sip:{domain}{}", build::uri_transport(registrar.transport));
    let via = build::via(local, &branch);
    let contact = build::contact(username, local);
    let from = format!("{aor};tag={}", t.from_tag);
    let mut req = build::request(&RequestParts {
        method: "REGISTER",
        ruri: &ruri,
        via: &via,
        from: &from,
        to: &aor,
        call_id: &t.call_id,
        cseq: t.cseq,
        max_forwards: 70,
        routes: &[],
        contact: Some(&contact),
    })
    .map_err(|e| e.to_string())?;
    let secs = expires.unwrap_or(configured.as_secs());
    let _ = req.insert_header(req.headers().len() - 1, "Expires", &secs.to_string());
    t.authed = challenge.is_some();
    if let Some((header, value)) = challenge {
        let cnonce = ids.cnonce();
        let auth = digest::respond(&value, "REGISTER", &ruri, username, secret, &cnonce, 1)
            .map_err(|e| e.to_string())?;
        let _ = req.insert_header(req.headers().len() - 1, header, &auth);
    }
    Ok(req)
}

/// The SHA-256 challenge when offered (RFC 8760), else the first Digest one.
pub(super) fn pick_challenge(resp: &Message, header: &'static str) -> Option<String> {
    let all: Vec<String> =
        resp.get_all(header).filter_map(|h| h.value_text(header).ok().map(|v| v.into_owned())).collect();
    all.iter()
        .find(|c| c.to_ascii_lowercase().contains("sha-256") && digest::parse_digest(c).is_ok())
        .or_else(|| all.iter().find(|c| digest::parse_digest(c).is_ok()))
        .cloned()
}

fn is_stale(resp: &Message, status: u16) -> bool {
    let header = if status == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
    pick_challenge(resp, header)
        .is_some_and(|c| c.to_ascii_lowercase().replace(' ', "").contains("stale=true"))
}
