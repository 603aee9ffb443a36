//! Transfers requested by the far side of a call (RFC 3515 REFER), as Exchange UM's auto
//! attendant does: "connect this caller to 2002". portier places the new call itself (the
//! caller may be a provider trunk that would never follow a REFER) and reports progress to
//! the referrer with NOTIFY `message/sipfrag`.
//!
//! Media is re-negotiated third-party style (RFC 3725 flow I): the target is invited without
//! SDP, its answer's offer goes to the caller in a re-INVITE, and the caller's answer goes to
//! the target in the ACK.

use crate::sip::transaction::Key;
use crate::sip::{Message, NameAddr};

use super::build;
use super::call::Side;
use super::{Engine, Now, Outgoing, Purpose};

#[derive(Debug, Clone)]
pub(super) struct Transfer {
    /// The fork (leg) that sent the REFER.
    pub referrer: usize,
    /// The fork that answered, waiting for the caller's SDP answer.
    pub answered: Option<usize>,
}

impl Engine {
    pub(super) fn on_refer(&mut self, id: u64, referrer: usize, key: Key, req: Message, now: Now) {
        let target = build::header(&req, "Refer-To")
            .and_then(|v| NameAddr::parse(&v, "Refer-To").ok())
            .and_then(|na| build::uri_user(&na.uri));
        let Some(number) = target else {
            self.reply(&key, &req, 400, "Bad Refer-To", None, now);
            return;
        };
        let Some(route) = self.plan(&number) else {
            tracing::info!(number, "SIP: REFER to a number the dial plan does not route");
            self.reply(&key, &req, 403, "Transfer Target Not Routable", None, now);
            return;
        };
        if self.calls.get(&id).is_some_and(|c| c.transfer.is_some()) {
            self.reply(&key, &req, 491, "Request Pending", None, now);
            return;
        }
        self.reply(&key, &req, 202, "Accepted", None, now);
        tracing::info!(to = number, "SIP: transfer requested by the far side");
        self.sipfrag(id, referrer, "SIP/2.0 100 Trying", false, now);
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.transfer = Some(Transfer { referrer, answered: None });
        call.winner = None;
        call.callee = number;
        call.hops = 0;
        call.diversion = None;
        self.route_call(id, route, now);
    }

    /// NOTIFY `Event: refer` with a sipfrag status line to the referrer.
    fn sipfrag(&mut self, id: u64, referrer: usize, status_line: &str, last: bool, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let leg = &mut call.forks[referrer].leg;
        leg.cseq += 1;
        let leg = leg.clone();
        let Some(mut n) = self.leg_request(&leg, "NOTIFY", leg.cseq) else { return };
        let state = if last { "terminated;reason=noresource" } else { "active;expires=60" };
        let at = n.headers().len() - 1;
        let _ = n.insert_header(at, "Event", "refer");
        let _ = n.insert_header(at + 1, "Subscription-State", state);
        let _ = n.insert_header(at + 2, "Content-Type", "message/sipfrag;version=2.0");
        n.set_body(format!("{status_line}\r\n").into_bytes());
        self.send_request(n, leg.dest, Purpose::Fire, now);
    }

    /// The transfer target answered (its 200 carries an SDP offer): offer it to the caller.
    pub(super) fn transfer_answered(&mut self, id: u64, fid: usize, resp: &Message, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.winner = Some(fid);
        call.ring_gen += 1;
        if let Some(t) = call.transfer.as_mut() {
            t.answered = Some(fid);
        }
        call.a.cseq += 1;
        let a = call.a.clone();
        let referrer = call.transfer.as_ref().map(|t| t.referrer);
        let others: Vec<usize> = (0..call.forks.len()).filter(|&f| f != fid && Some(f) != referrer).collect();
        for f in others {
            self.cancel_fork(id, f, now);
        }
        if let Some(mut inv) = self.leg_request(&a, "INVITE", a.cseq) {
            let _ = self.carry_body(id, crate::media::session::Side::Callee, resp, &mut inv);
            self.send_request(inv, a.dest, Purpose::Reoffer { call: id }, now);
        }
        if let Some(r) = referrer {
            self.sipfrag(id, r, "SIP/2.0 200 OK", true, now);
            self.bye(id, Side::Fork(r), now);
        }
    }

    /// The caller answered our re-INVITE: ACK it, and ACK the target with the caller's SDP.
    pub(super) fn on_reoffer_response(&mut self, id: u64, resp: Message, now: Now) {
        let status = resp.status().unwrap_or(500);
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(fid) = call.transfer.as_ref().and_then(|t| t.answered) else { return };
        call.transfer = None;
        let mut a = call.a.clone();
        let target = call.forks[fid].leg.clone();
        if (200..300).contains(&status) {
            if let Some(tag) = resp.to().ok().and_then(|t| t.tag().map(str::to_owned)) {
                a.remote_tag = Some(tag);
            }
            if let Some(ack) = self.leg_request(&a, "ACK", a.cseq) {
                self.out.push(Outgoing { dest: a.dest, msg: ack });
            }
            if let Some(mut ack) = self.leg_request(&target, "ACK", target.cseq) {
                let _ = self.carry_body(id, crate::media::session::Side::Caller, &resp, &mut ack);
                self.out.push(Outgoing { dest: target.dest, msg: ack.clone() });
                if let Some(c) = self.calls.get_mut(&id) {
                    c.b_ack = Some(ack);
                }
            }
            tracing::info!("SIP: transfer completed");
        } else {
            // The caller refused the new media: nobody can talk, end both.
            tracing::warn!(status, "SIP: caller refused the transfer's re-INVITE");
            if let Some(ack) = self.leg_request(&target, "ACK", target.cseq) {
                self.out.push(Outgoing { dest: target.dest, msg: ack });
            }
            self.bye(id, Side::Fork(fid), now);
            self.bye(id, Side::A, now);
            self.end_call(id, "failed", now);
        }
    }

    /// Nobody took the transferred call: tell the referrer, hang up the caller.
    pub(super) fn transfer_failed(&mut self, id: u64, status: u16, reason: &str, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let referrer = call.transfer.take().map(|t| t.referrer);
        tracing::info!(status, reason, "SIP: transfer failed");
        if let Some(r) = referrer {
            self.sipfrag(id, r, &format!("SIP/2.0 {status} {reason}"), true, now);
            self.bye(id, Side::Fork(r), now);
        }
        self.bye(id, Side::A, now);
        self.end_call(id, "failed", now);
    }
}
