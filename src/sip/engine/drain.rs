//! Stopping gracefully: after [`Engine::drain`] new calls are refused with 503 and a
//! Retry-After, calls in progress run until the deadline and are then hung up (BYE on both
//! legs; ringing ones get 503 and their forks a CANCEL), and register trunks unregister.
//!
//! REGISTER keeps working during a drain: a phone whose refresh failed would show itself
//! offline (some stop placing calls or hang up on a call in progress), yet it must come back
//! to the next process soon because bindings live in memory only. So refreshes are answered,
//! with the granted time cut to [`DRAIN_EXPIRES`]: phones return within a minute to whatever
//! answers next. SUBSCRIBE, OPTIONS, in-dialog requests and MWI also go on as before.

use std::time::Instant;

use crate::sip::transaction::Key;
use crate::sip::{Message, TrunkId, TrunkKind};

use super::build;
use super::call::Side;
use super::trunk::TrunkState;
use super::{Engine, Now, Wake};

/// Longest registration granted while draining.
pub(super) const DRAIN_EXPIRES: u32 = 60;

impl Engine {
    /// Starts draining until `deadline` (see the module documentation). A second call can
    /// only bring the deadline forward.
    pub fn drain(&mut self, deadline: Instant, now: Now) {
        let deadline = self.draining.map_or(deadline, |d| d.min(deadline));
        let first = self.draining.is_none();
        self.draining = Some(deadline);
        self.schedule(deadline, Wake::Drain);
        if first {
            tracing::info!(
                calls = self.calls.len(),
                "SIP: draining: new calls get 503, calls in progress may go on for {:?}",
                deadline.saturating_duration_since(now.mono)
            );
            let ids: Vec<TrunkId> = self.trunks.keys().cloned().collect();
            for id in ids {
                self.stop_trunk(&id, now);
            }
        }
        self.on_timer(now);
    }

    /// Whether a drain is under way and nothing is left: no call, no unregistration waiting
    /// for its answer. The caller may stop once this is true (after letting the last
    /// messages go out).
    pub fn drained(&self) -> bool {
        self.draining.is_some() && self.calls.is_empty() && self.retiring.is_empty()
    }

    /// Ends trunk `id`'s timer chain; a register trunk unregisters. The trunk stays known
    /// (calls in progress may still need its credentials, and its address identifies it).
    fn stop_trunk(&mut self, id: &TrunkId, now: Now) {
        self.trunk_gen = self.trunk_gen.wrapping_add(1);
        let gen = self.trunk_gen;
        let Some(t) = self.trunks.get_mut(id) else { return };
        t.gen = gen;
        if matches!(t.cfg.kind, TrunkKind::Register { .. }) {
            let mut shell = TrunkState::new(id.clone(), t.cfg.clone(), &self.metrics);
            shell.gen = gen;
            let old = std::mem::replace(t, shell);
            self.retire_trunk(old, now);
        }
    }

    /// Refuses a new INVITE during a drain: 503 with a Retry-After of the time left, after
    /// which this process is gone and the next one can take the call.
    pub(super) fn refuse_draining(&mut self, key: &Key, req: &Message, now: Now) -> bool {
        let Some(deadline) = self.draining else { return false };
        let left = deadline.saturating_duration_since(now.mono).as_secs().max(1);
        let tag = self.ids.tag();
        if let Some(mut r) = build::response(req, 503, "Service Unavailable", Some(&tag)) {
            let _ = r.insert_header(r.headers().len() - 1, "Retry-After", &left.to_string());
            self.respond(key, r, now);
        }
        self.metrics.call_ended("rejected");
        true
    }

    /// The drain deadline: every call still there is hung up, unanswered
    /// unregistrations are given up.
    pub(super) fn drain_deadline(&mut self, now: Now) {
        if self.draining.is_none_or(|d| d > now.mono) {
            return; // a stale wake of a deadline that was moved
        }
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        if !ids.is_empty() {
            tracing::info!(calls = ids.len(), "SIP: drain deadline: hanging up the calls left");
        }
        for id in ids {
            self.hang_up_for_drain(id, now);
        }
        self.retiring.clear();
    }

    fn hang_up_for_drain(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.end_reason = "drain";
        let forks = call.forks.len();
        let (winner, a_final) = (call.winner, call.a_final);
        let transferred = call.transfer.as_ref().and_then(|t| t.answered);
        match winner {
            Some(w) => {
                self.bye(id, Side::A, now);
                self.bye(id, Side::Fork(w), now);
                if let Some(t) = transferred.filter(|&t| t != w) {
                    self.bye(id, Side::Fork(t), now);
                }
                for f in (0..forks).filter(|&f| Some(f) != transferred) {
                    self.cancel_fork(id, f, now);
                }
                self.end_call(id, "answered", now);
            }
            None => {
                if !a_final {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.a_final = true;
                        let (key, req, tag) = (c.a_key.clone(), c.a_invite.clone(), c.a.local_tag.clone());
                        self.reply(&key, &req, 503, "Service Unavailable", Some(&tag), now);
                    }
                }
                for f in 0..forks {
                    self.cancel_fork(id, f, now);
                }
                self.end_call(id, "failed", now);
            }
        }
    }
}

/// How long registrations are granted: as asked (at most `max`), cut short while draining.
pub(super) fn granted_expires(asked: u32, max: u32, draining: bool) -> u32 {
    if draining && asked > 0 {
        asked.min(max).min(DRAIN_EXPIRES)
    } else {
        asked.min(max)
    }
}
