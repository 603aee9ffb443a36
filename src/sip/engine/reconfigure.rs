//! Applying a new configuration to a running engine without dropping registrations or calls.
//!
//! What is compared and what happens:
//! - extensions: a new one can register at once; a changed one (secret, name, ring time,
//!   forwards, voicemail, nat) keeps its registrations and the new values apply to the next
//!   request (a new `nat` to its registered phones at once); a removed one loses its contacts and subscriptions (calls in progress go on).
//! - trunks (by [`TrunkId`]): an unchanged trunk is not touched (state, timers, Call-ID). A
//!   change of identity, inbound extension or `trusted` applies in place. A register trunk
//!   whose secret or expiry changed refreshes its binding now; one whose registrar, domain or
//!   username changed unregisters the old binding and registers the new one. A peer whose
//!   address or ping interval changed restarts its pings. A removed trunk stops; a register
//!   trunk unregisters (Expires: 0) first.
//! - dial plan, voicemail, domain, digest algorithms and nonce lifetime apply to the next
//!   request. The digest key stays, so nonces issued before remain valid.
//! - the listeners cannot change here (the sockets are the service's, bound at start): a
//!   change is reported in [`ReconfigureReport::needs_restart`] and the running ones stay.
//!
//! Calls in progress keep what they were set up with (their legs, a ring timer already
//! running); a forked call to a trunk whose credentials changed answers a later challenge with
//! the new ones.

use std::fmt;
use std::sync::Arc;

use crate::metrics::TrunkLabels;
use crate::sip::{SipConfig, TrunkId, TrunkKind};

use super::mwi::SUMMARY;
use super::trunk::TrunkState;
use super::{Engine, Now};

/// Names added, removed and changed by a reconfigure, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
    pub changed: Vec<T>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes { added: Vec::new(), removed: Vec::new(), changed: Vec::new() }
    }
}

impl<T> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What [`Engine::reconfigure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigureReport {
    /// Settings outside extensions and trunks that changed and apply from now on, by field
    /// name (`sip.dialplan`, `sip.voicemail`, `sip.domain`, `sip.tls`, ...).
    pub applied: Vec<String>,
    /// Extensions by number.
    pub extensions: Changes<String>,
    pub trunks: Changes<TrunkId>,
    /// Contacts of removed extensions that were dropped.
    pub registrations_dropped: usize,
    /// Changed fields the running B2BUA cannot take (e.g. `sip.listen`); the running values
    /// stay until a restart.
    pub needs_restart: Vec<String>,
}

impl ReconfigureReport {
    /// Nothing changed at all.
    pub fn is_unchanged(&self) -> bool {
        self.applied.is_empty()
            && self.extensions.is_empty()
            && self.trunks.is_empty()
            && self.needs_restart.is_empty()
    }
}

impl fmt::Display for ReconfigureReport {
    /// One line for the log, e.g. `extensions +2004 -2003 ~2001; trunks ~isp; applied
    /// sip.dialplan; needs a restart: sip.listen`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unchanged() {
            return f.write_str("no change");
        }
        let mut parts: Vec<String> = Vec::new();
        fn list<T: fmt::Display>(what: &str, c: &Changes<T>) -> Option<String> {
            if c.is_empty() {
                return None;
            }
            let mut s = what.to_string();
            for (sign, v) in [('+', &c.added), ('-', &c.removed), ('~', &c.changed)] {
                for x in v {
                    s.push(' ');
                    s.push(sign);
                    s.push_str(&x.to_string());
                }
            }
            Some(s)
        }
        parts.extend(list("extensions", &self.extensions));
        parts.extend(list("trunks", &self.trunks));
        if self.registrations_dropped > 0 {
            parts.push(format!("{} registration(s) dropped", self.registrations_dropped));
        }
        if !self.applied.is_empty() {
            parts.push(format!("applied {}", self.applied.join(", ")));
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!("needs a restart: {}", self.needs_restart.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

impl Engine {
    /// Applies `new` (already validated) without dropping registrations or calls in
    /// progress; see the module documentation for what each change does. Fields that cannot
    /// change live are listed in the report and keep their running values; everything else
    /// is applied.
    pub fn reconfigure(&mut self, new: Arc<SipConfig>, now: Now) -> ReconfigureReport {
        let old = self.cfg.clone();
        let mut report = ReconfigureReport::default();
        let new = if new.listen != old.listen {
            // The engine names its listeners in Via and Contact: it must keep naming the
            // sockets that really exist.
            report.needs_restart.push("sip.listen".into());
            let mut c = (*new).clone();
            c.listen = old.listen.clone();
            Arc::new(c)
        } else {
            new
        };
        let mut applied = |changed: bool, field: &str| {
            if changed {
                report.applied.push(field.to_string());
            }
        };
        applied(new.domain != old.domain, "sip.domain");
        applied(new.tls != old.tls, "sip.tls");
        applied(new.nonce_lifetime != old.nonce_lifetime, "sip.nonce_lifetime");
        applied(new.digest_algorithms != old.digest_algorithms, "sip.digest_algorithms");
        applied(new.voicemail != old.voicemail, "sip.voicemail");
        applied(new.dialplan != old.dialplan, "sip.dialplan");
        if new.domain != old.domain {
            self.digest.set_realm(new.domain.clone());
        }
        self.digest.set_lifetime(new.nonce_lifetime);

        // Extensions.
        for (num, e) in &new.extensions {
            match old.extensions.get(num) {
                None => report.extensions.added.push(num.clone()),
                Some(o) if o != e => {
                    report.extensions.changed.push(num.clone());
                    if o.nat != e.nat {
                        self.reg.renat(num, e.nat);
                    }
                }
                Some(_) => {}
            }
        }
        for num in old.extensions.keys().filter(|n| !new.extensions.contains_key(*n)) {
            report.extensions.removed.push(num.clone());
            report.registrations_dropped += self.reg.remove_ext(num);
            self.mwi.remove(num);
            // Their subscriptions end with a NOTIFY saying so (RFC 6665 "noresource").
            while let Some(i) = self.subscriptions.iter().position(|s| &s.ext == num) {
                self.notify_subscription(i, SUMMARY, "Messages-Waiting: no\r\n", Some("noresource"), now);
                self.subscriptions.remove(i);
            }
            tracing::info!(ext = %num, "SIP: extension removed; its registrations end");
        }
        self.metrics.registrations.set(self.reg.count() as i64);

        // The new configuration is in force from here (trunk starts use its domain).
        self.media.reconfigure(&new.media);
        self.cfg = new.clone();

        // Trunks.
        for (id, o) in &old.trunks {
            match new.trunks.get(id) {
                None => {
                    report.trunks.removed.push(id.clone());
                    if let Some(t) = self.trunks.remove(id) {
                        tracing::info!(trunk = %id, "SIP trunk removed");
                        self.retire_trunk(t, now);
                    }
                    let l = TrunkLabels { trunk: id.to_string() };
                    self.metrics.trunk_up.remove(&l);
                    self.metrics.trunk_registered.remove(&l);
                }
                Some(n) if n == o => {}
                Some(n) => {
                    report.trunks.changed.push(id.clone());
                    self.change_trunk(id, n.clone(), now);
                }
            }
        }
        for (id, t) in &new.trunks {
            if !old.trunks.contains_key(id) {
                report.trunks.added.push(id.clone());
                tracing::info!(trunk = %id, "SIP trunk added");
                self.trunks.insert(id.clone(), TrunkState::new(id.clone(), t.clone(), &self.metrics));
                self.trunk_start(id, now);
            }
        }
        // Restarted trunks are due now: their REGISTERs and pings leave with this call.
        self.on_timer(now);
        report
    }

    /// Trunk `id` is configured differently now: adjust it in place where its binding or pings
    /// are unaffected, else restart it (see the module documentation).
    fn change_trunk(&mut self, id: &TrunkId, new: crate::sip::SipTrunk, now: Now) {
        let Some(t) = self.trunks.get_mut(id) else { return };
        let old = std::mem::replace(&mut t.cfg, new);
        match (&old.kind, &t.cfg.kind) {
            (
                TrunkKind::Register { registrar, domain, username, secret, expires, .. },
                TrunkKind::Register {
                    registrar: r2, domain: d2, username: u2, secret: s2, expires: e2, ..
                },
            ) => {
                if (registrar, domain, username) != (r2, d2, u2) {
                    // A new binding: the old one is removed with the old credentials, and the
                    // new one starts afresh (own Call-ID).
                    tracing::info!(trunk = %id, "SIP trunk: registrar or account changed, registering anew");
                    let mut fresh = TrunkState::new(id.clone(), t.cfg.clone(), &self.metrics);
                    std::mem::swap(t, &mut fresh);
                    fresh.cfg = old;
                    self.retire_trunk(fresh, now);
                    self.trunk_start(id, now);
                } else if (secret, expires) != (s2, e2) {
                    // The same binding, refreshed now with the new secret or expiry.
                    tracing::info!(trunk = %id, "SIP trunk: credentials or expiry changed, refreshing the registration");
                    self.trunk_start(id, now);
                }
            }
            (
                TrunkKind::Peer { address, options_ping, .. },
                TrunkKind::Peer { address: a2, options_ping: p2, .. },
            ) => {
                if (address, options_ping) != (a2, p2) {
                    tracing::info!(trunk = %id, "SIP trunk: address or ping interval changed, pinging anew");
                    t.set_up(true);
                    // A new generation even when pings are now off: the old chain stops.
                    self.trunk_start(id, now);
                }
            }
            _ => {
                // Peer <-> register: a different trunk under the same name.
                tracing::info!(trunk = %id, "SIP trunk: kind changed, restarting it");
                let mut fresh = TrunkState::new(id.clone(), t.cfg.clone(), &self.metrics);
                std::mem::swap(t, &mut fresh);
                fresh.cfg = old;
                self.retire_trunk(fresh, now);
                self.trunk_start(id, now);
            }
        }
    }
}
