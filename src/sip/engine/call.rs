//! Calls: every call is two (or, while forking, more) dialogs. The caller's leg ("A") is the
//! dialog the caller created with us; each fork is a dialog we create towards a phone or a
//! trunk, with its own Call-ID, tags, Via and CSeq space (topology hiding). Responses, SDP and
//! in-dialog requests are relayed between the legs; the first fork to answer wins, the others
//! are cancelled. No answer within the extension's ring time, busy and unreachable apply the
//! extension's forwarding (a number, or its mailbox with a Diversion header).
//!
//! Bodies go from leg to leg through `carry_body` (`media.rs`): an SDP on a relayed call is
//! rewritten to the relay's ports, anything else is copied unchanged.

use std::time::{Duration, Instant};

use crate::media::session::Side as MediaSide;
use crate::sip::dialplan::Target as PlanTarget;
use crate::sip::digest;
use crate::sip::transaction::Key;
use crate::sip::{ForwardTo, Identity, MediaMode, SipAddr, TrunkId, TrunkKind};
use crate::sip::{Message, NameAddr};

use super::auth::Challenge;
use super::build::{self, RequestParts};
use super::trunk::pick_challenge;
use super::{Dest, Engine, Now, OkRetx, Outgoing, Purpose, Wake};

/// Methods we take part in (Allow header).
pub(super) const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY, REFER, SUBSCRIBE, MESSAGE";
/// Forwarding steps one call may take (2000 -> 1900 -> ... ) before it is refused.
const MAX_HOPS: u8 = 6;
/// Redirects (3xx) followed per fork.
const MAX_REDIRECTS: u8 = 3;
/// Headers an in-dialog request keeps when relayed to the other leg.
const RELAYED: &[&str] = &[
    "Event",
    "Subscription-State",
    "Refer-To",
    "Referred-By",
    "Allow-Events",
    "Accept",
    "Info-Package",
    "Recv-Info",
    "Session-Expires",
    "Min-SE",
];

/// One dialog as we see it.
#[derive(Debug, Clone)]
pub(super) struct Leg {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Our address in this dialog, a name-addr without tag.
    pub local: String,
    /// The far end's address, without tag.
    pub remote: String,
    /// Remote target: the Request-URI of requests in this dialog.
    pub target: String,
    pub routes: Vec<String>,
    /// Our last CSeq in this dialog.
    pub cseq: u32,
    pub dest: Dest,
    pub via_local: SipAddr,
}

impl Leg {
    fn our_side(&self) -> String {
        format!("{};tag={}", self.local, self.local_tag)
    }

    fn their_side(&self) -> String {
        match &self.remote_tag {
            Some(t) => format!("{};tag={t}", self.remote),
            None => self.remote.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForkState {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response came: CANCEL is allowed now (§9.1).
    Proceeding,
    /// Final response received (or given up).
    Done,
}

pub(super) struct Fork {
    pub leg: Leg,
    pub invite: Message,
    pub key: Option<Key>,
    pub state: ForkState,
    /// We no longer want this fork (another answered, caller cancelled, ring time over).
    pub cancelled: bool,
    pub cancel_sent: bool,
    pub auth_tries: u8,
    pub redirects: u8,
    pub trunk: Option<TrunkId>,
    /// Extra headers of its INVITE (identity, Diversion), kept for re-sends.
    pub extra: Vec<(String, String)>,
}

/// Where a call goes next.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Extension(String),
    Trunk { trunk: TrunkId, number: String },
    Voicemail { ext: String, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Busy,
    NoAnswer,
    Unavailable,
}

impl Why {
    fn reason(self) -> &'static str {
        match self {
            Why::Busy => "user-busy",
            Why::NoAnswer => "no-answer",
            Why::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    A,
    Fork(usize),
}

pub(super) struct Call {
    pub caller: String,
    pub caller_name: Option<String>,
    /// The caller asked for privacy (Privacy: id, or RPID privacy=full).
    pub private: bool,
    pub callee: String,
    pub route: String,
    pub trunk: Option<TrunkId>,
    pub a: Leg,
    pub a_invite: Message,
    pub a_key: Key,
    pub a_final: bool,
    pub forks: Vec<Fork>,
    pub winner: Option<usize>,
    pub b_ack: Option<Message>,
    pub pending_b_ack: bool,
    pub ring_gen: u32,
    pub ringing_ext: Option<String>,
    pub hops: u8,
    pub best: Option<(u16, String)>,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub diversion: Option<String>,
    /// A transfer (REFER from the far side) is being placed: new forks are invited without
    /// SDP and their answer is offered to the caller in a re-INVITE (`transfer.rs`).
    pub transfer: Option<super::transfer::Transfer>,
    /// Why an answered call ended, for the log line: caller_bye, callee_bye, no_ack, drain;
    /// "-" otherwise.
    pub end_reason: &'static str,
    /// The caller's `media` (its extension's or trunk's).
    pub caller_media: MediaMode,
}

impl Call {
    fn live_forks(&self) -> usize {
        self.forks.iter().filter(|f| f.state != ForkState::Done && !f.cancelled).count()
    }

    pub(super) fn side(&self, call_id: &str) -> Option<Side> {
        if self.a.call_id == call_id {
            return Some(Side::A);
        }
        self.forks.iter().position(|f| f.leg.call_id == call_id).map(Side::Fork)
    }
}

/// Lower is better: the response a caller gets when every fork failed (§16.7 step 6, roughly).
fn rank(status: u16) -> u8 {
    match status {
        600..=699 => 0,
        486 => 1,
        401 | 407 => 6,
        408 | 480 => 4,
        487 => 7,
        400..=499 => 2,
        500..=599 => 5,
        _ => 3,
    }
}

fn outcome_for(status: u16) -> &'static str {
    match status {
        486 | 600 | 603 => "busy",
        408 | 480 => "no_answer",
        487 => "cancelled",
        401 | 403 | 404 | 407 | 484 | 485 | 488 => "rejected",
        _ => "failed",
    }
}

/// The caller identity a request asserts: P-Asserted-Identity, else Remote-Party-ID, else From.
fn identity_of(req: &Message) -> (Option<String>, Option<String>, bool) {
    let privacy_header = build::header(req, "Privacy").is_some_and(|p| p.to_ascii_lowercase().contains("id"));
    for name in ["P-Asserted-Identity", "Remote-Party-ID"] {
        if let Some(na) = build::header(req, name).and_then(|v| NameAddr::parse(&v, name).ok()) {
            let private = privacy_header || na.params.value("privacy").is_some_and(|p| p != "off");
            return (build::uri_user(&na.uri), na.display_name.clone(), private);
        }
    }
    match req.from() {
        Ok(f) => (build::uri_user(&f.uri), f.display_name.clone(), privacy_header),
        Err(_) => (None, None, privacy_header),
    }
}

impl Engine {
    // ---- new calls ---------------------------------------------------------------------------

    pub(super) fn on_invite(&mut self, key: Key, req: Message, src: Dest, now: Now) {
        let Ok(call_id) = req.call_id() else { return };
        if self.by_call_id.contains_key(&call_id) {
            // A retransmission whose transaction ended with our 2xx (that 2xx was lost): send
            // the 2xx again on the new transaction (RFC 6026's Accepted state, in effect).
            let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
            if let Some(ok) = self.ok_retx.get(&(call_id.clone(), cseq)).map(|o| o.msg.clone()) {
                self.respond(&key, ok, now);
                return;
            }
            // The same request reached us twice by different paths (§8.2.2.2).
            self.reject(&key, &req, 482, "Loop Detected", now);
            return;
        }
        // Before authentication: a stopping B2BUA has nothing to offer a new call.
        if self.refuse_draining(&key, &req, now) {
            return;
        }
        let dialled = req
            .request_uri()
            .ok()
            .and_then(|u| build::uri_user(&u))
            .or_else(|| req.to().ok().and_then(|t| build::uri_user(&t.uri)));
        let Some(dialled) = dialled else {
            self.reject(&key, &req, 484, "Address Incomplete", now);
            return;
        };
        let from_trunk = self.trusted_trunk(src.addr.ip());
        let trunk_caller = from_trunk.is_some();
        let trunk_media =
            self.trunks.values().find(|t| t.addr().addr.ip() == src.addr.ip()).map(|t| t.cfg.media);
        let (caller, caller_name, private, target) = match from_trunk {
            Some(kind) => {
                let (user, name, private) = identity_of(&req);
                let user = user.unwrap_or_else(|| "anonymous".into());
                let target = match kind {
                    TrunkKind::Register { inbound: Some(ext), .. } => Some(Target::Extension(ext.clone())),
                    TrunkKind::Register { inbound: None, .. } => {
                        self.cfg.extensions.contains_key(&dialled).then(|| Target::Extension(dialled.clone()))
                    }
                    TrunkKind::Peer { .. } => self.plan(&dialled),
                };
                (user, name, private, target)
            }
            None => {
                let Some(user) = self.authenticate(&key, &req, Challenge::Proxy, src.addr.ip(), now) else {
                    return;
                };
                let name = self.cfg.extensions.get(&user).map(|e| e.name.clone());
                let (_, _, private) = identity_of(&req);
                let own = dialled == user
                    && self.cfg.voicemail.as_ref().is_some_and(|v| v.own_extension_to_mailbox);
                let target = if own {
                    // Subscriber access as themselves: the pilot, no Diversion.
                    let vm = self.cfg.voicemail.as_ref().expect("checked above");
                    self.trunks
                        .contains_key(&vm.trunk)
                        .then(|| Target::Trunk { trunk: vm.trunk.clone(), number: vm.pilot.clone() })
                } else {
                    self.plan(&dialled)
                };
                (user, name, private, target)
            }
        };
        let caller_media = match trunk_media.filter(|_| trunk_caller) {
            Some(m) => m,
            None => self.party_media(None, Some(&caller)),
        };
        let Some(target) = target else {
            tracing::info!(caller, dialled, "SIP: no route for the dialled number");
            self.reject(&key, &req, 404, "No Route To Number", now);
            self.metrics.call_ended("rejected");
            return;
        };

        // The caller's leg: in-dialog requests go to the caller's Contact or its source, as
        // its extension's `nat` says; a trunk is reached where it sends from.
        let dest = match (trunk_caller, req.contacts()) {
            (false, Ok(crate::sip::ContactList::Addrs(c))) if !c.is_empty() => {
                let nat = self.cfg.extensions.get(&caller).map(|e| e.nat).unwrap_or_default();
                super::nat::reach(&c[0].uri, src, nat)
            }
            _ => src,
        };
        let from = req.from().ok();
        let a = Leg {
            call_id: call_id.clone(),
            local_tag: self.ids.tag(),
            remote_tag: from.as_ref().and_then(|f| f.tag().map(str::to_owned)),
            local: build::header(&req, "To")
                .and_then(|t| build::with_tag(&t, "To", None))
                .unwrap_or_default(),
            remote: build::header(&req, "From")
                .and_then(|f| build::with_tag(&f, "From", None))
                .unwrap_or_default(),
            target: match req.contacts() {
                Ok(crate::sip::ContactList::Addrs(c)) if !c.is_empty() => c[0].uri.to_string(),
                _ => from.map(|f| f.uri.to_string()).unwrap_or_default(),
            },
            routes: req.values("Record-Route").unwrap_or_default(),
            cseq: 0,
            dest,
            via_local: self.local_for(dest.transport, dest.addr),
        };
        let id = self.next_call;
        self.next_call += 1;
        self.by_call_id.insert(call_id, id);
        self.calls.insert(
            id,
            Call {
                caller,
                caller_name,
                private,
                callee: dialled,
                route: String::new(),
                trunk: None,
                a,
                a_invite: req.clone(),
                a_key: key.clone(),
                a_final: false,
                forks: Vec::new(),
                winner: None,
                b_ack: None,
                pending_b_ack: false,
                ring_gen: 0,
                ringing_ext: None,
                hops: 0,
                best: None,
                started: now.mono,
                answered: None,
                diversion: None,
                transfer: None,
                end_reason: "-",
                caller_media,
            },
        );
        // Stops the caller's retransmissions at once (the transaction would send it in 200 ms).
        self.reply(&key, &req, 100, "Trying", None, now);
        self.route_call(id, target, now);
    }

    /// Routes a number by the dial plan.
    pub(super) fn plan(&self, number: &str) -> Option<Target> {
        let r = self.cfg.dialplan.route(number)?;
        match r.target {
            PlanTarget::Extension => {
                self.cfg.extensions.contains_key(&r.number).then_some(Target::Extension(r.number))
            }
            PlanTarget::Trunk(trunk) => {
                self.trunks.contains_key(&trunk).then_some(Target::Trunk { trunk, number: r.number })
            }
        }
    }

    pub(super) fn route_call(&mut self, id: u64, target: Target, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.hops += 1;
        if call.hops > MAX_HOPS {
            self.final_a(id, 482, "Forwarding Loop", "failed", now);
            return;
        }
        match target {
            Target::Extension(ext) => self.ring_extension(id, ext, now),
            Target::Trunk { trunk, number } => self.call_trunk(id, trunk, number, now),
            Target::Voicemail { ext, reason } => self.divert_to_voicemail(id, &ext, reason, now),
        }
    }

    fn ring_extension(&mut self, id: u64, ext: String, now: Now) {
        let Some(e) = self.cfg.extensions.get(&ext).cloned() else {
            self.final_a(id, 404, "Not Found", "rejected", now);
            return;
        };
        if let Some(f) = e.forward.always.clone() {
            self.forward(id, &ext, f, "unconditional", now);
            return;
        }
        let contacts = self.reg.contacts(&ext, now.mono);
        if contacts.is_empty() {
            tracing::debug!(ext, "SIP: extension has no registered contact");
            self.no_party(id, &ext, Why::Unavailable, now);
            return;
        }
        let domain = self.cfg.domain.clone();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.ringing_ext = Some(ext.clone());
        call.route = format!("extension:{ext}");
        call.ring_gen += 1;
        let gen = call.ring_gen;
        let from = self.caller_from(id);
        let mut extra = Vec::new();
        if let Some(d) = self.calls.get(&id).and_then(|c| c.diversion.clone()) {
            extra.push(("Diversion".to_string(), d));
        }
        self.schedule(now.mono + e.ring_time, Wake::Ring { call: id, gen });
        for b in contacts {
            let to = format!("<sip:{ext}@{domain}>");
            self.start_fork(id, b.uri, to, b.dest, from.clone(), extra.clone(), None, now);
        }
    }

    /// From for a leg to one of our phones: the caller as the PBX knows them.
    fn caller_from(&self, id: u64) -> String {
        let Some(c) = self.calls.get(&id) else { return String::new() };
        if c.private {
            return "\"Anonymous\" <sip:anonymous@anonymous.invalid>".into();
        }
        let user = if c.caller.is_empty() { "anonymous" } else { &c.caller };
        match &c.caller_name {
            Some(n) => format!("{} <sip:{user}@{}>", build::quote_display(n), self.cfg.domain),
            None => format!("<sip:{user}@{}>", self.cfg.domain),
        }
    }

    fn call_trunk(&mut self, id: u64, trunk: TrunkId, number: String, now: Now) {
        let Some(t) = self.trunks.get(&trunk) else {
            self.final_a(id, 404, "No Route To Number", "failed", now);
            return;
        };
        let name = t.id.clone();
        if !t.up {
            tracing::warn!(
                trunk = %name,
                number,
                "SIP: call refused with 503: trunk is down (OPTIONS unanswered)"
            );
            self.final_a(id, 503, "Trunk Down", "failed", now);
            return;
        }
        let addr = t.addr();
        let host = t.uri_host();
        let plain_host = host.split(';').next().unwrap_or_default().to_string();
        let identity = t.cfg.identity;
        let kind = t.cfg.kind.clone();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.ringing_ext = None;
        call.trunk = Some(name.clone());
        call.route = format!("trunk:{name}:{number}");
        let (caller, name_disp, private, diversion) =
            (call.caller.clone(), call.caller_name.clone(), call.private, call.diversion.clone());
        let asserted = match &name_disp {
            Some(n) => format!("{} <sip:{caller}@{}>", build::quote_display(n), self.cfg.domain),
            None => format!("<sip:{caller}@{}>", self.cfg.domain),
        };
        let from = match &kind {
            // Providers want their account in From; who calls goes in the identity header.
            TrunkKind::Register { username, domain, .. } => format!("<sip:{username}@{domain}>"),
            TrunkKind::Peer { .. } if private => "\"Anonymous\" <sip:anonymous@anonymous.invalid>".into(),
            TrunkKind::Peer { .. } => asserted.clone(),
        };
        let mut extra = Vec::new();
        match identity {
            Identity::Pai => {
                extra.push(("P-Asserted-Identity".to_string(), asserted.clone()));
                if private {
                    extra.push(("Privacy".to_string(), "id".to_string()));
                }
            }
            Identity::Rpid => {
                let privacy = if private { "full" } else { "off" };
                extra.push((
                    "Remote-Party-ID".to_string(),
                    format!("{asserted};party=calling;screen=yes;privacy={privacy}"),
                ));
            }
            Identity::None => {}
        }
        if let Some(d) = diversion {
            extra.push(("Diversion".to_string(), d));
        }
        let ruri = format!("sip:{number}@{host}");
        let to = format!("<sip:{number}@{plain_host}>");
        let dest = Dest { transport: addr.transport, addr: addr.addr, conn: None };
        self.start_fork(id, ruri, to, dest, from, extra, Some(trunk), now);
    }

    fn divert_to_voicemail(&mut self, id: u64, ext: &str, reason: &'static str, now: Now) {
        let Some(vm) = self.cfg.voicemail.clone() else {
            self.final_a(id, 480, "No Voicemail", "no_answer", now);
            return;
        };
        if !self.trunks.contains_key(&vm.trunk) {
            self.final_a(id, 480, "No Voicemail", "no_answer", now);
            return;
        }
        if let Some(c) = self.calls.get_mut(&id) {
            // Exactly one Diversion, ours (DOMAIN.md §4): whatever the caller sent is dropped
            // because the fork's INVITE is built from scratch.
            c.diversion =
                Some(format!("<tel:{}{ext}>;reason={reason};screen=no;privacy=off", vm.mailbox_prefix));
        }
        self.call_trunk(id, vm.trunk, vm.pilot, now);
    }

    fn forward(&mut self, id: u64, ext: &str, to: ForwardTo, reason: &'static str, now: Now) {
        match to {
            ForwardTo::Voicemail => {
                self.route_call(id, Target::Voicemail { ext: ext.to_string(), reason }, now)
            }
            ForwardTo::Number(n) => match self.plan(&n) {
                Some(t) => {
                    tracing::debug!(ext, to = n, reason, "SIP: call forwarded");
                    self.route_call(id, t, now)
                }
                None => self.final_a(id, 404, "Forward Target Not Routable", "failed", now),
            },
        }
    }

    /// The extension cannot take the call: its forwarding, else its mailbox, else a failure.
    fn no_party(&mut self, id: u64, ext: &str, why: Why, now: Now) {
        let Some(e) = self.cfg.extensions.get(ext).cloned() else { return };
        if let Some(c) = self.calls.get_mut(&id) {
            c.ringing_ext = None;
            c.ring_gen += 1;
        }
        let f = match why {
            Why::Busy => e.forward.busy.clone(),
            Why::NoAnswer | Why::Unavailable => e.forward.no_answer.clone(),
        };
        if let Some(f) = f {
            self.forward(id, ext, f, why.reason(), now);
        } else if e.voicemail && self.cfg.voicemail.is_some() {
            self.route_call(id, Target::Voicemail { ext: ext.to_string(), reason: why.reason() }, now);
        } else {
            match why {
                Why::Busy => self.final_a(id, 486, "Busy Here", "busy", now),
                Why::NoAnswer => self.final_a(id, 480, "No Answer", "no_answer", now),
                Why::Unavailable => self.final_a(id, 480, "Temporarily Unavailable", "no_answer", now),
            }
        }
    }

    // ---- forks -------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn start_fork(
        &mut self,
        id: u64,
        ruri: String,
        to: String,
        dest: Dest,
        from: String,
        extra: Vec<(String, String)>,
        trunk: Option<TrunkId>,
        now: Now,
    ) {
        let leg = Leg {
            call_id: self.ids.call_id(&self.cfg.domain),
            local_tag: self.ids.tag(),
            remote_tag: None,
            local: from,
            remote: to,
            target: ruri,
            routes: Vec::new(),
            cseq: 1,
            dest,
            via_local: self.local_for(dest.transport, dest.addr),
        };
        let ext = self.calls.get(&id).and_then(|c| c.ringing_ext.clone()).filter(|_| trunk.is_none());
        let mode = self.party_media(trunk.as_ref(), ext.as_deref());
        if let Err(e) = self.media_for_fork(id, mode, leg.via_local) {
            let (status, reason) = Engine::media_refusal(&e);
            self.final_a(id, status, reason, "failed", now);
            return;
        }
        let Some(invite) = self.fork_invite(id, &leg, &extra, None) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fid = call.forks.len();
        self.by_call_id.insert(leg.call_id.clone(), id);
        call.forks.push(Fork {
            leg,
            invite: invite.clone(),
            key: None,
            state: ForkState::Calling,
            cancelled: false,
            cancel_sent: false,
            auth_tries: 0,
            redirects: 0,
            trunk,
            extra,
        });
        let key = self.send_request(invite, dest, Purpose::Fork { call: id, fork: fid as u32 }, now);
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) {
            f.key = key;
        }
    }

    /// The INVITE of a fork, built from the caller's: body and its headers copied, everything
    /// else ours.
    fn fork_invite(
        &mut self,
        id: u64,
        leg: &Leg,
        extra: &[(String, String)],
        auth: Option<(&str, &str)>,
    ) -> Option<Message> {
        let call = self.calls.get(&id)?;
        let max_forwards = call.a_invite.max_forwards().ok().flatten().unwrap_or(70).clamp(1, 70) - 1;
        let branch = self.ids.branch();
        let via = build::via(leg.via_local, &branch);
        let contact = build::contact(&call.caller, leg.via_local);
        let mut m = build::request(&RequestParts {
            method: "INVITE",
            ruri: &leg.target,
            via: &via,
            from: &leg.our_side(),
            to: &leg.their_side(),
            call_id: &leg.call_id,
            cseq: leg.cseq,
            max_forwards: max_forwards.max(1),
            routes: &leg.routes,
            contact: Some(&contact),
        })
        .ok()?;
        let at = m.headers().len() - 1;
        let mut add = vec![("Allow".to_string(), ALLOW.to_string())];
        add.extend(extra.iter().cloned());
        if let Some((h, v)) = auth {
            add.push((h.to_string(), v.to_string()));
        }
        for (i, (h, v)) in add.iter().enumerate() {
            m.insert_header(at + i, h, v).ok()?;
        }
        if call.transfer.is_none() {
            let offer = call.a_invite.clone();
            // Carried once already when the fork was decided (`media_for_fork`).
            let _ = self.carry_body(id, MediaSide::Caller, &offer, &mut m);
        }
        Some(m)
    }

    pub(super) fn on_fork_response(&mut self, id: u64, fid: u32, key: &Key, resp: Message, now: Now) {
        let fid = fid as usize;
        let status = resp.status().unwrap_or(500);
        let fork_trunk = self.calls.get(&id).and_then(|c| c.forks.get(fid)).and_then(|f| f.trunk.as_ref());
        let has_creds = self.trunk_credentials(fork_trunk).is_some();
        let Some(call) = self.calls.get_mut(&id) else {
            if (200..300).contains(&status) {
                self.hang_up_orphan(key, &resp, now);
            } else if status < 200 {
                // The call ended before this fork said anything: now it may be cancelled
                // (§9.1), once; later responses find the Orphan purpose.
                if let Some(c) = self.client.get_mut(key) {
                    c.purpose = Purpose::Orphan;
                    let (invite, dest) = (c.request.clone(), c.dest);
                    if let Some(cancel) = cancel_for(&invite) {
                        self.send_request(cancel, dest, Purpose::Fire, now);
                    }
                }
            }
            return;
        };
        let Some(fork) = call.forks.get_mut(fid) else { return };
        if fork.key.as_ref() != Some(key) {
            return; // an answer to an INVITE this fork has since replaced (re-auth, redirect)
        }
        if (101..300).contains(&status) {
            if let Some(tag) = resp.to().ok().and_then(|t| t.tag().map(str::to_owned)) {
                fork.leg.remote_tag = Some(tag);
            }
            if let Ok(crate::sip::ContactList::Addrs(c)) = resp.contacts() {
                if let Some(c) = c.first() {
                    fork.leg.target = c.uri.to_string();
                }
            }
            let mut rr = resp.values("Record-Route").unwrap_or_default();
            rr.reverse();
            fork.leg.routes = rr;
        }
        match status {
            100..=199 => {
                if fork.state == ForkState::Calling {
                    fork.state = ForkState::Proceeding;
                }
                if fork.cancelled {
                    self.send_cancel(id, fid, now);
                    return;
                }
                if status == 100 || call.a_final || call.winner.is_some() {
                    return;
                }
                let reason = reason_of(&resp);
                let (a_invite, a_tag, a_local, callee) =
                    (call.a_invite.clone(), call.a.local_tag.clone(), call.a.via_local, call.callee.clone());
                let a_key = call.a_key.clone();
                if let Some(mut r) = build::response(&a_invite, status, &reason, Some(&a_tag)) {
                    let _ =
                        r.insert_header(r.headers().len() - 1, "Contact", &build::contact(&callee, a_local));
                    let _ = self.carry_body(id, MediaSide::Callee, &resp, &mut r);
                    self.respond(&a_key, r, now);
                }
            }
            200..=299 => {
                fork.state = ForkState::Done;
                if call.transfer.is_some() && call.winner.is_none() && !fork.cancelled {
                    self.transfer_answered(id, fid, &resp, now);
                    return;
                }
                let late = call.winner.is_some() || call.a_final || fork.cancelled;
                let leg = fork.leg.clone();
                if late {
                    // Answered after we gave up on it: confirm and end that dialog at once.
                    let ack = self.leg_request(&leg, "ACK", leg.cseq);
                    if let Some(a) = ack {
                        self.out.push(Outgoing { dest: leg.dest, msg: a });
                    }
                    self.bye(id, Side::Fork(fid), now);
                    return;
                }
                self.answer(id, fid, &resp, now);
            }
            300..=399 if fork.trunk.is_some() && fork.redirects < MAX_REDIRECTS && !fork.cancelled => {
                self.follow_redirect(id, fid, &resp, now)
            }
            401 | 407 if fork.auth_tries == 0 && !fork.cancelled && has_creds => {
                self.reauth_fork(id, fid, status, &resp, now)
            }
            _ => {
                fork.state = ForkState::Done;
                if fork.cancelled {
                    return;
                }
                let reason = reason_of(&resp);
                if call.best.as_ref().is_none_or(|(b, _)| rank(status) < rank(*b)) {
                    call.best = Some((status, reason));
                }
                if call.live_forks() > 0 || call.winner.is_some() || call.a_final {
                    return;
                }
                self.forks_failed(id, now);
            }
        }
    }

    /// The trunk's current credentials (a reconfigure may have changed them since the fork
    /// started; the provider wants the ones it knows now).
    fn trunk_credentials(&self, trunk: Option<&TrunkId>) -> Option<(String, String)> {
        match &self.trunks.get(trunk?)?.cfg.kind {
            TrunkKind::Register { username, secret, .. } => Some((username.clone(), secret.clone())),
            TrunkKind::Peer { .. } => None,
        }
    }

    /// The provider challenged our INVITE: send it again with the trunk's credentials.
    fn reauth_fork(&mut self, id: u64, fid: usize, status: u16, resp: &Message, now: Now) {
        let Some((user, secret)) =
            self.calls.get(&id).and_then(|c| self.trunk_credentials(c.forks[fid].trunk.as_ref()))
        else {
            return;
        };
        let (hdr, cred) = if status == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let Some(challenge) = pick_challenge(resp, hdr) else { return };
        let cnonce = self.ids.cnonce();
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fid];
        fork.auth_tries += 1;
        fork.leg.cseq += 1;
        fork.leg.remote_tag = None;
        let ruri = fork.leg.target.clone();
        match digest::respond(&challenge, "INVITE", &ruri, &user, &secret, &cnonce, 1) {
            Ok(v) => self.resend_fork(id, fid, Some((cred, v)), now),
            Err(e) => tracing::warn!("SIP: cannot answer the trunk's challenge: {e}"),
        }
    }

    /// Exchange UM answers 302 with a Contact on a worker port: re-send the same INVITE there
    /// (same Diversion and identity), never caching the target.
    fn follow_redirect(&mut self, id: u64, fid: usize, resp: &Message, now: Now) {
        let contact = match resp.contacts() {
            Ok(crate::sip::ContactList::Addrs(c)) => c.into_iter().next(),
            _ => None,
        };
        let target = contact.and_then(|c| {
            let sip = c.uri.as_sip()?.clone();
            let ip: std::net::IpAddr = sip.host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
            let transport = match sip.transport().as_deref() {
                Some("tcp") => crate::sip::SipTransport::Tcp,
                Some("tls") => crate::sip::SipTransport::Tls,
                Some("udp") => crate::sip::SipTransport::Udp,
                _ => self.calls.get(&id)?.forks[fid].leg.dest.transport,
            };
            let port =
                sip.port.unwrap_or(if transport == crate::sip::SipTransport::Tls { 5061 } else { 5060 });
            Some((
                c.uri.to_string(),
                Dest { transport, addr: std::net::SocketAddr::new(ip, port), conn: None },
            ))
        });
        let Some((uri, dest)) = target else {
            tracing::warn!("SIP: redirect without a usable Contact (an IP address is needed)");
            if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) {
                f.redirects = MAX_REDIRECTS;
            }
            self.on_fork_failed_plain(id, fid, 502, "Bad Redirect", now);
            return;
        };
        tracing::debug!(to = uri, "SIP: following redirect");
        let local = self.local_for(dest.transport, dest.addr);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fid];
        fork.redirects += 1;
        fork.leg.cseq += 1;
        fork.leg.remote_tag = None;
        fork.leg.target = uri;
        fork.leg.dest = dest;
        fork.leg.via_local = local;
        fork.leg.routes.clear();
        self.resend_fork(id, fid, None, now);
    }

    fn resend_fork(&mut self, id: u64, fid: usize, auth: Option<(&str, String)>, now: Now) {
        let Some((leg, extra)) =
            self.calls.get(&id).map(|c| (c.forks[fid].leg.clone(), c.forks[fid].extra.clone()))
        else {
            return;
        };
        let Some(invite) = self.fork_invite(id, &leg, &extra, auth.as_ref().map(|(h, v)| (*h, v.as_str())))
        else {
            return;
        };
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) {
            f.invite = invite.clone();
            f.state = ForkState::Calling;
        }
        let key = self.send_request(invite, leg.dest, Purpose::Fork { call: id, fork: fid as u32 }, now);
        if let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) {
            f.key = key;
        }
    }

    fn on_fork_failed_plain(&mut self, id: u64, fid: usize, status: u16, reason: &str, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.forks[fid].state = ForkState::Done;
        if call.best.as_ref().is_none_or(|(b, _)| rank(status) < rank(*b)) {
            call.best = Some((status, reason.to_string()));
        }
        if call.live_forks() == 0 && call.winner.is_none() && !call.a_final {
            self.forks_failed(id, now);
        }
    }

    /// Every fork failed: the extension's forwarding, or the best failure to the caller.
    fn forks_failed(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let (status, reason) = call.best.clone().unwrap_or((480, "Temporarily Unavailable".into()));
        match call.ringing_ext.clone() {
            Some(ext) => {
                let why = if matches!(status, 486 | 600 | 603) { Why::Busy } else { Why::NoAnswer };
                self.no_party(id, &ext, why, now);
            }
            None => {
                // The provider refusing our credentials is our problem, not the caller's.
                let (status, reason) = match status {
                    401 | 407 => (503, "Trunk Authentication Failed".to_string()),
                    s => (s, reason),
                };
                self.final_a(id, status, &reason, outcome_for(status), now);
            }
        }
    }

    /// Fork `fid` answered first: it becomes the call's far leg.
    fn answer(&mut self, id: u64, fid: usize, resp: &Message, now: Now) {
        let t1 = self.opts.timers.t1;
        let give_up = now.mono + self.opts.timers.t1x64();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.winner = Some(fid);
        call.answered = Some(now.mono);
        call.ring_gen += 1;
        let leg = call.forks[fid].leg.clone();
        let late_offer = call.a_invite.body().is_empty();
        let (a_invite, a_tag, a_key, a_local, a_dest, callee) = (
            call.a_invite.clone(),
            call.a.local_tag.clone(),
            call.a_key.clone(),
            call.a.via_local,
            call.a.dest,
            call.callee.clone(),
        );
        self.metrics.calls_active.inc();
        if late_offer {
            // The caller's ACK carries the answer SDP: the far leg is ACKed when it comes.
            call.pending_b_ack = true;
        } else if let Some(ack) = self.leg_request(&leg, "ACK", leg.cseq) {
            self.out.push(Outgoing { dest: leg.dest, msg: ack.clone() });
            if let Some(c) = self.calls.get_mut(&id) {
                c.b_ack = Some(ack);
            }
        }
        let others: Vec<usize> =
            (0..self.calls.get(&id).map_or(0, |c| c.forks.len())).filter(|&f| f != fid).collect();
        for f in others {
            self.cancel_fork(id, f, now);
        }
        let reason = reason_of(resp);
        let Some(mut r) = build::response(&a_invite, resp.status().unwrap_or(200), &reason, Some(&a_tag))
        else {
            return;
        };
        let _ = r.insert_header(r.headers().len() - 1, "Contact", &build::contact(&callee, a_local));
        let _ = r.insert_header(r.headers().len() - 1, "Allow", ALLOW);
        let _ = self.carry_body(id, MediaSide::Callee, resp, &mut r);
        self.media_answered(id);
        if let Some(c) = self.calls.get_mut(&id) {
            c.a_final = true;
        }
        self.respond(&a_key, r.clone(), now);
        // The transaction is gone after a 2xx: we re-send it until the ACK (§13.3.1.4). Over
        // TCP/TLS once is enough, but the ACK still has to come, so the give-up timer stays.
        let cseq = a_invite.cseq().map(|c| c.seq).unwrap_or(0);
        let call_id = self.calls.get(&id).map(|c| c.a.call_id.clone()).unwrap_or_default();
        let reliable = a_dest.transport != crate::sip::SipTransport::Udp;
        self.ok_retx.insert(
            (call_id.clone(), cseq),
            OkRetx {
                msg: r,
                dest: a_dest,
                interval: if reliable { Duration::MAX } else { t1 },
                give_up,
                call: Some(id),
            },
        );
        self.schedule(if reliable { give_up } else { now.mono + t1 }, Wake::OkRetx { call_id, cseq });
    }

    pub(super) fn cancel_fork(&mut self, id: u64, fid: usize, now: Now) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) else { return };
        if f.state == ForkState::Done || f.cancelled {
            return;
        }
        f.cancelled = true;
        if f.state == ForkState::Proceeding {
            self.send_cancel(id, fid, now);
        }
        // Still Calling: the CANCEL goes when its first provisional arrives (§9.1).
    }

    fn send_cancel(&mut self, id: u64, fid: usize, now: Now) {
        let Some(f) = self.calls.get_mut(&id).and_then(|c| c.forks.get_mut(fid)) else { return };
        if f.cancel_sent {
            return;
        }
        f.cancel_sent = true;
        let (invite, dest) = (f.invite.clone(), f.leg.dest);
        if let Some(c) = cancel_for(&invite) {
            self.send_request(c, dest, Purpose::Fire, now);
        }
    }

    /// Ends the call with a final response to the caller (when none was sent yet).
    pub(super) fn final_a(&mut self, id: u64, status: u16, reason: &str, outcome: &'static str, now: Now) {
        if self.calls.get(&id).is_some_and(|c| c.transfer.is_some()) {
            self.transfer_failed(id, status, reason, now);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if !call.a_final {
            call.a_final = true;
            let (key, req, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a.local_tag.clone());
            self.reply(&key, &req, status, reason, Some(&tag), now);
        }
        let forks = self.calls.get(&id).map_or(0, |c| c.forks.len());
        for f in 0..forks {
            self.cancel_fork(id, f, now);
        }
        self.end_call(id, outcome, now);
    }

    pub(super) fn ring_timeout(&mut self, id: u64, gen: u32, now: Now) {
        let Some(call) = self.calls.get(&id) else { return };
        if call.ring_gen != gen || call.winner.is_some() || call.a_final {
            return;
        }
        let Some(ext) = call.ringing_ext.clone() else { return };
        tracing::debug!(ext, "SIP: ring time over");
        for f in 0..call.forks.len() {
            self.cancel_fork(id, f, now);
        }
        self.no_party(id, &ext, Why::NoAnswer, now);
    }

    // ---- caller cancels, in-dialog requests --------------------------------------------------

    pub(super) fn on_cancel(&mut self, key: Key, req: Message, now: Now) {
        let invite_key = key.cancelled_invite();
        let id = req
            .call_id()
            .ok()
            .and_then(|c| self.by_call_id.get(&c).copied())
            .filter(|id| self.calls.get(id).is_some_and(|c| Some(&c.a_key) == invite_key.as_ref()));
        let Some(id) = id else {
            self.reply(&key, &req, 481, "Call/Transaction Does Not Exist", None, now);
            return;
        };
        let tag = self.calls.get(&id).map(|c| c.a.local_tag.clone());
        self.reply(&key, &req, 200, "OK", tag.as_deref(), now);
        if self.calls.get(&id).is_some_and(|c| !c.a_final) {
            self.final_a(id, 487, "Request Terminated", "cancelled", now);
        }
    }

    pub(super) fn on_in_dialog(&mut self, key: Key, req: Message, now: Now) {
        let method = req.method().unwrap_or_default().to_owned();
        let call_id = req.call_id().unwrap_or_default();
        let found = self
            .by_call_id
            .get(&call_id)
            .copied()
            .and_then(|id| Some((id, self.calls.get(&id)?.side(&call_id)?)));
        let Some((id, side)) = found else {
            self.reply(&key, &req, 481, "Call/Transaction Does Not Exist", None, now);
            return;
        };
        // A later request in the dialog proves our 2xx arrived even if its ACK was lost.
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        self.ok_retx.retain(|(c, n), _| c != &call_id || *n >= cseq);
        let Some(call) = self.calls.get_mut(&id) else { return };
        // A target refresh moves where this side is reached.
        if method == "INVITE" || method == "UPDATE" {
            if let Ok(crate::sip::ContactList::Addrs(c)) = req.contacts() {
                if let Some(c) = c.first() {
                    match side {
                        Side::A => call.a.target = c.uri.to_string(),
                        Side::Fork(f) => call.forks[f].leg.target = c.uri.to_string(),
                    }
                }
            }
        }
        let other = match side {
            Side::A => call.winner.map(Side::Fork).or_else(|| {
                call.forks
                    .iter()
                    .position(|f| {
                        f.state == ForkState::Proceeding && f.leg.remote_tag.is_some() && !f.cancelled
                    })
                    .map(Side::Fork)
            }),
            Side::Fork(f)
                if call.winner == Some(f) || (call.winner.is_none() && !call.forks[f].cancelled) =>
            {
                Some(Side::A)
            }
            Side::Fork(_) => None,
        };
        if method == "REFER" && matches!(side, Side::Fork(f) if call.winner == Some(f)) {
            let Side::Fork(f) = side else { return };
            self.on_refer(id, f, key, req, now);
            return;
        }
        if method == "BYE"
            && matches!(side, Side::Fork(f) if call.transfer.as_ref().is_some_and(|t| t.referrer == f))
        {
            // The referrer leaves after handing the caller over: only its leg ends.
            self.reply(&key, &req, 200, "OK", None, now);
            return;
        }
        if method == "BYE" {
            let answered = call.winner.is_some();
            self.reply(&key, &req, 200, "OK", None, now);
            match (side, other) {
                (_, Some(o)) if answered => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.end_reason = if side == Side::A { "caller_bye" } else { "callee_bye" };
                    }
                    self.bye(id, o, now);
                    self.end_call(id, "answered", now);
                }
                (Side::A, _) => self.final_a(id, 487, "Request Terminated", "cancelled", now),
                (Side::Fork(f), _) => {
                    if !answered {
                        self.on_fork_failed_plain(id, f, 480, "Temporarily Unavailable", now)
                    }
                }
            }
            return;
        }
        let Some(other) = other else {
            self.reply(&key, &req, 481, "Call/Transaction Does Not Exist", None, now);
            return;
        };
        let leg = match other {
            Side::A => &mut call.a,
            Side::Fork(f) => &mut call.forks[f].leg,
        };
        leg.cseq += 1;
        let leg = leg.clone();
        let Some(mut out) = self.leg_request(&leg, &method, leg.cseq) else { return };
        let at = out.headers().len() - 1;
        let mut i = 0;
        for name in RELAYED {
            for h in req.get_all(name) {
                if out.insert_header(at + i, h.name(), &String::from_utf8_lossy(&h.value())).is_ok() {
                    i += 1;
                }
            }
        }
        let from = if side == Side::A { MediaSide::Caller } else { MediaSide::Callee };
        if let Err(e) = self.carry_body(id, from, &req, &mut out) {
            // A re-INVITE or UPDATE whose new SDP the relay cannot take: the session stays as
            // it was (RFC 3261 §14.2).
            let (status, reason) = Engine::media_refusal(&e);
            self.reply(&key, &req, status, reason, None, now);
            return;
        }
        self.send_request(
            out,
            leg.dest,
            Purpose::Relay { call: id, server: key, origin: Box::new(req) },
            now,
        );
    }

    pub(super) fn on_relay_response(
        &mut self,
        id: u64,
        server: Key,
        origin: Message,
        resp: Message,
        now: Now,
    ) {
        let status = resp.status().unwrap_or(500);
        if status < 200 {
            return;
        }
        let method = origin.method().unwrap_or_default().to_owned();
        let Some(mut r) = build::response(&origin, status, &reason_of(&resp), None) else { return };
        let call_id = resp.call_id().unwrap_or_default();
        let from = match self.calls.get(&id).and_then(|c| c.side(&call_id)) {
            Some(Side::A) => MediaSide::Caller,
            _ => MediaSide::Callee,
        };
        let _ = self.carry_body(id, from, &resp, &mut r);
        let origin_dest = self.server_dest.get(&server).copied();
        if (200..300).contains(&status) && (method == "INVITE" || method == "UPDATE") {
            let side_local = self.calls.get(&id).map(|c| {
                let oc = origin.call_id().unwrap_or_default();
                if c.a.call_id == oc {
                    c.a.via_local
                } else {
                    c.forks.iter().find(|f| f.leg.call_id == oc).map_or(c.a.via_local, |f| f.leg.via_local)
                }
            });
            if let Some(l) = side_local {
                let _ = r.insert_header(r.headers().len() - 1, "Contact", &build::contact("portier", l));
            }
        }
        self.respond(&server, r.clone(), now);
        if method == "INVITE" && (200..300).contains(&status) {
            // ACK the leg we re-INVITEd, and re-send our 2xx to the origin until its ACK.
            let leg = self.calls.get(&id).and_then(|c| match c.side(&call_id)? {
                Side::A => Some(c.a.clone()),
                Side::Fork(f) => Some(c.forks[f].leg.clone()),
            });
            if let Some(mut leg) = leg {
                if let Some(tag) = resp.to().ok().and_then(|t| t.tag().map(str::to_owned)) {
                    leg.remote_tag = Some(tag);
                }
                let cseq = resp.cseq().map(|c| c.seq).unwrap_or(leg.cseq);
                if let Some(ack) = self.leg_request(&leg, "ACK", cseq) {
                    self.out.push(Outgoing { dest: leg.dest, msg: ack });
                }
            }
            if let Some(dest) = origin_dest.filter(|d| d.transport == crate::sip::SipTransport::Udp) {
                let (oc, cseq) =
                    (origin.call_id().unwrap_or_default(), origin.cseq().map(|c| c.seq).unwrap_or(0));
                let t1 = self.opts.timers.t1;
                self.ok_retx.insert(
                    (oc.clone(), cseq),
                    OkRetx {
                        msg: r,
                        dest,
                        interval: t1,
                        give_up: now.mono + self.opts.timers.t1x64(),
                        call: None,
                    },
                );
                self.schedule(now.mono + t1, Wake::OkRetx { call_id: oc, cseq });
            }
        }
    }

    /// An ACK outside any transaction: for one of our 2xx.
    pub(super) fn on_ack(&mut self, ack: Message, now: Now) {
        let call_id = ack.call_id().unwrap_or_default();
        let cseq = ack.cseq().map(|c| c.seq).unwrap_or(0);
        self.ok_retx.remove(&(call_id.clone(), cseq));
        let Some(id) = self.by_call_id.get(&call_id).copied() else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.a.call_id != call_id || !call.pending_b_ack {
            return;
        }
        call.pending_b_ack = false;
        let Some(w) = call.winner else { return };
        let leg = call.forks[w].leg.clone();
        if let Some(mut a) = self.leg_request(&leg, "ACK", leg.cseq) {
            let _ = self.carry_body(id, MediaSide::Caller, &ack, &mut a);
            self.out.push(Outgoing { dest: leg.dest, msg: a.clone() });
            if let Some(c) = self.calls.get_mut(&id) {
                c.b_ack = Some(a);
            }
        }
        let _ = now;
    }

    /// A 2xx retransmission after the INVITE transaction ended: ACK it again.
    pub(super) fn on_stray_response(&mut self, resp: Message, _now: Now) {
        let Ok(cseq) = resp.cseq() else { return };
        if cseq.method != "INVITE" || !(200..300).contains(&resp.status().unwrap_or(0)) {
            return;
        }
        let call_id = resp.call_id().unwrap_or_default();
        let Some(call) = self.by_call_id.get(&call_id).and_then(|id| self.calls.get(id)) else { return };
        if let (Some(w), Some(ack)) = (call.winner, &call.b_ack) {
            if call.forks[w].leg.call_id == call_id && call.forks[w].leg.cseq == cseq.seq {
                self.out.push(Outgoing { dest: call.forks[w].leg.dest, msg: ack.clone() });
            }
        }
    }

    pub(super) fn ok_retransmit(&mut self, call_id: String, cseq: u32, now: Now) {
        let k = (call_id, cseq);
        let Some(o) = self.ok_retx.get_mut(&k) else { return };
        if now.mono >= o.give_up {
            let call = o.call;
            self.ok_retx.remove(&k);
            if let Some(id) = call {
                tracing::warn!(call_id = k.0, "SIP: no ACK for our 2xx within 64*T1: hanging up both legs");
                if let Some(c) = self.calls.get_mut(&id) {
                    c.end_reason = "no_ack";
                }
                self.bye(id, Side::A, now);
                if let Some(w) = self.calls.get(&id).and_then(|c| c.winner) {
                    self.bye(id, Side::Fork(w), now);
                }
                self.end_call(id, "failed", now);
            }
            return;
        }
        self.out.push(Outgoing { dest: o.dest, msg: o.msg.clone() });
        o.interval = (o.interval * 2).min(self.opts.timers.t2);
        let next = (now.mono + o.interval).min(o.give_up);
        self.schedule(next, Wake::OkRetx { call_id: k.0, cseq: k.1 });
    }

    /// Sends BYE on one side of a call.
    pub(super) fn bye(&mut self, id: u64, side: Side, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let leg = match side {
            Side::A => &mut call.a,
            Side::Fork(f) => &mut call.forks[f].leg,
        };
        leg.cseq += 1;
        let leg = leg.clone();
        if let Some(b) = self.leg_request(&leg, "BYE", leg.cseq) {
            self.send_request(b, leg.dest, Purpose::Fire, now);
        }
    }

    /// A 2xx for a fork whose call is gone: ACK it and say BYE, so no phone keeps a dialog
    /// nobody will end.
    pub(super) fn hang_up_orphan(&mut self, key: &Key, resp: &Message, now: Now) {
        let Some((invite, dest)) = self.client.get(key).map(|c| (c.request.clone(), c.dest)) else { return };
        let Ok(cseq) = invite.cseq() else { return };
        let local = self.local_for(dest.transport, dest.addr);
        let from = build::header(&invite, "From").unwrap_or_default();
        let leg = Leg {
            call_id: invite.call_id().unwrap_or_default(),
            local_tag: NameAddr::parse(&from, "From")
                .ok()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default(),
            remote_tag: resp.to().ok().and_then(|t| t.tag().map(str::to_owned)),
            local: build::with_tag(&from, "From", None).unwrap_or_default(),
            remote: build::header(resp, "To")
                .and_then(|t| build::with_tag(&t, "To", None))
                .unwrap_or_default(),
            target: match resp.contacts() {
                Ok(crate::sip::ContactList::Addrs(c)) if !c.is_empty() => c[0].uri.to_string(),
                _ => invite.request_uri().map(|u| u.to_string()).unwrap_or_default(),
            },
            routes: Vec::new(),
            cseq: cseq.seq,
            dest,
            via_local: local,
        };
        if let Some(a) = self.leg_request(&leg, "ACK", cseq.seq) {
            self.out.push(Outgoing { dest, msg: a });
        }
        if let Some(b) = self.leg_request(&leg, "BYE", cseq.seq + 1) {
            self.send_request(b, dest, Purpose::Fire, now);
        }
    }

    /// A request inside dialog `leg` (ACK, BYE, relayed methods).
    pub(super) fn leg_request(&mut self, leg: &Leg, method: &str, cseq: u32) -> Option<Message> {
        let branch = self.ids.branch();
        let via = build::via(leg.via_local, &branch);
        let contact = build::contact("portier", leg.via_local);
        let with_contact = matches!(method, "INVITE" | "UPDATE" | "SUBSCRIBE" | "NOTIFY" | "REFER");
        build::request(&RequestParts {
            method,
            ruri: &leg.target,
            via: &via,
            from: &leg.our_side(),
            to: &leg.their_side(),
            call_id: &leg.call_id,
            cseq,
            max_forwards: 70,
            routes: &leg.routes,
            contact: with_contact.then_some(contact.as_str()),
        })
        .ok()
    }

    /// Forgets a call: one log line, metrics.
    pub(super) fn end_call(&mut self, id: u64, outcome: &'static str, now: Now) {
        let Some(call) = self.calls.remove(&id) else { return };
        self.by_call_id.remove(&call.a.call_id);
        for f in &call.forks {
            self.by_call_id.remove(&f.leg.call_id);
        }
        if call.answered.is_some() {
            self.metrics.calls_active.dec();
        }
        // Our 2xx to the caller may still await its ACK (a caller hanging up at once): keep
        // that retransmission, it ends by itself; drop only the teardown it would trigger.
        for o in self.ok_retx.values_mut() {
            if o.call == Some(id) {
                o.call = None;
            }
        }
        self.metrics.call_ended(outcome);
        let media = self.media_end(id);
        let relayed = media.is_some();
        let (m, reported) = media.unwrap_or_default();
        let loss = |r: Option<crate::media::session::Reported>| {
            r.map_or("-".to_string(), |r| format!("{:.1}", r.loss_percent))
        };
        let jitter = |r: Option<crate::media::session::Reported>| {
            r.and_then(|r| r.jitter_ms).map_or("-".to_string(), |j| format!("{j:.1}"))
        };
        let setup_ms =
            call.answered.unwrap_or(now.mono).saturating_duration_since(call.started).as_millis() as u64;
        let talk_ms = call.answered.map_or(0, |a| now.mono.saturating_duration_since(a).as_millis() as u64);
        tracing::info!(
            target: "portier::sip::call",
            caller = %call.caller,
            callee = %call.callee,
            route = %call.route,
            trunk = %call.trunk.as_ref().map_or("-", TrunkId::as_str),
            %outcome,
            end_reason = call.end_reason,
            setup_ms,
            talk_ms,
            media = if relayed { "relay" } else { "direct" },
            packets_from_caller = m.packets[0],
            packets_from_callee = m.packets[1],
            bytes_from_caller = m.bytes[0],
            bytes_from_callee = m.bytes[1],
            foreign_dropped = m.foreign[0] + m.foreign[1],
            loss_reported_by_caller = %loss(reported[0]),
            jitter_ms_reported_by_caller = %jitter(reported[0]),
            loss_reported_by_callee = %loss(reported[1]),
            jitter_ms_reported_by_callee = %jitter(reported[1]),
            "sip call"
        );
    }
}

fn reason_of(resp: &Message) -> String {
    match resp.start_line() {
        crate::sip::StartLine::Response { reason, .. } => String::from_utf8_lossy(reason).into_owned(),
        _ => String::new(),
    }
}

/// The CANCEL for an INVITE we sent (§9.1): same Request-URI, Call-ID, From, To, top Via and
/// Route, CSeq number with method CANCEL.
fn cancel_for(invite: &Message) -> Option<Message> {
    let crate::sip::StartLine::Request { uri, .. } = invite.start_line() else { return None };
    let via = invite.values("Via").ok()?.into_iter().next()?;
    let cseq = invite.cseq().ok()?;
    let mut c = Message::request("CANCEL", uri).ok()?;
    c.push_header("Via", &via).ok()?;
    c.push_header("Max-Forwards", "70").ok()?;
    for r in invite.values("Route").unwrap_or_default() {
        c.push_header("Route", &r).ok()?;
    }
    for name in ["From", "To", "Call-ID"] {
        c.push_header(name, &build::header(invite, name)?).ok()?;
    }
    c.push_header("CSeq", &format!("{} CANCEL", cseq.seq)).ok()?;
    c.push_header("Content-Length", "0").ok()?;
    Some(c)
}
