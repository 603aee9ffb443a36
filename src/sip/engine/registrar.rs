//! The registrar: REGISTER with digest authentication, several contacts per extension, expiry
//! and unREGISTER (RFC 3261 §10.3).
//!
//! A binding remembers where its REGISTER came from (transport, source address, connection)
//! and where requests for the phone go: its Contact, or that source when the extension's `nat`
//! says so or NAT is detected (`nat`): phones behind NAT register private addresses, and the
//! source is what reaches them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::metrics::SipMetrics;
use crate::sip::transaction::Key;
use crate::sip::{ContactList, Message, SipNat, Uri};

use super::auth::Challenge;
use super::{build, Dest, Engine, Now};

/// Longest registration granted; also the default when the phone names none.
const MAX_EXPIRES: u32 = 3600;

#[derive(Debug, Clone)]
pub(super) struct Binding {
    /// The Contact URI, the Request-URI of requests to this phone.
    pub uri: String,
    /// Where requests to this phone go.
    pub dest: Dest,
    /// Where its REGISTER came from.
    pub source: Dest,
    pub expires_at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Registrar {
    by_ext: HashMap<String, Vec<Binding>>,
}

impl Registrar {
    /// Live bindings of `ext`.
    pub fn contacts(&self, ext: &str, now: Instant) -> Vec<Binding> {
        self.by_ext
            .get(ext)
            .map(|v| v.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Drops every binding of `ext` (the extension left the configuration); how many.
    pub fn remove_ext(&mut self, ext: &str) -> usize {
        self.by_ext.remove(ext).map_or(0, |v| v.len())
    }

    /// Reaches `ext`'s phones as `nat` says from now on (a reload changed it).
    pub fn renat(&mut self, ext: &str, nat: SipNat) {
        for b in self.by_ext.get_mut(ext).into_iter().flatten() {
            if let Ok(u) = Uri::parse(&b.uri) {
                b.dest = super::nat::reach(&u, b.source, nat);
            }
        }
    }

    /// Whether any binding's destination satisfies `f`.
    pub fn any_dest(&self, f: impl Fn(&Dest) -> bool) -> bool {
        self.by_ext.values().flatten().any(|b| f(&b.dest))
    }

    pub fn count(&self) -> usize {
        self.by_ext.values().map(Vec::len).sum()
    }

    pub fn purge(&mut self, now: Instant, metrics: &SipMetrics) {
        for v in self.by_ext.values_mut() {
            v.retain(|b| b.expires_at > now);
        }
        self.by_ext.retain(|_, v| !v.is_empty());
        metrics.registrations.set(self.count() as i64);
    }
}

/// A phone's message-summary subscription (RFC 3842): one dialog, NOTIFYs go down it.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    pub ext: String,
    pub call_id: String,
    pub local_tag: String,
    /// The subscriber's From (with its tag): our To.
    pub remote: String,
    /// Our To as received (no tag): our From.
    pub local: String,
    pub target: String,
    pub dest: Dest,
    pub cseq: u32,
    pub expires_at: Instant,
}

impl Engine {
    pub(super) fn on_register(&mut self, key: Key, req: Message, src: Dest, now: Now) {
        let Some(ext) = req.to().ok().and_then(|t| build::uri_user(&t.uri)) else {
            self.reply(&key, &req, 400, "To Has No User", None, now);
            return;
        };
        if !self.cfg.extensions.contains_key(&ext) {
            self.reject(&key, &req, 404, "Not Found", now);
            return;
        }
        let Some(user) = self.authenticate(&key, &req, Challenge::Www, src.addr.ip(), now) else { return };
        if user != ext {
            tracing::warn!(from = %src.addr, user, ext, "SIP: REGISTER for another extension refused");
            self.reject(&key, &req, 403, "Username Does Not Match To", now);
            return;
        }
        let header_expires = req.expires().ok().flatten();
        let contacts = match req.contacts() {
            Ok(c) => c,
            Err(_) => {
                self.reply(&key, &req, 400, "Bad Contact", None, now);
                return;
            }
        };
        let nat = self.cfg.extensions.get(&ext).map(|e| e.nat).unwrap_or_default();
        let list = self.reg.by_ext.entry(ext.clone()).or_default();
        match contacts {
            ContactList::Star => {
                if header_expires != Some(0) {
                    self.reply(&key, &req, 400, "Contact * Needs Expires: 0", None, now);
                    return;
                }
                list.clear();
                tracing::info!(ext, from = %src.addr, "SIP: all contacts unregistered");
            }
            ContactList::Addrs(addrs) => {
                for a in addrs {
                    let uri = a.uri.to_string();
                    let asked = a.expires().ok().flatten().or(header_expires).unwrap_or(MAX_EXPIRES);
                    let expires = super::drain::granted_expires(asked, MAX_EXPIRES, self.draining.is_some());
                    list.retain(|b| b.uri != uri);
                    if expires == 0 {
                        tracing::info!(ext, contact = uri, "SIP: contact unregistered");
                        continue;
                    }
                    let dest = super::nat::reach(&a.uri, src, nat);
                    if dest.addr == src.addr {
                        tracing::info!(ext, contact = uri, from = %src.addr, expires, "SIP: registered");
                    } else {
                        tracing::info!(ext, contact = uri, from = %src.addr, reached = %dest.addr, expires, "SIP: registered (reached on its Contact)");
                    }
                    list.push(Binding {
                        uri,
                        dest,
                        source: src,
                        expires_at: now.mono + Duration::from_secs(u64::from(expires)),
                    });
                }
            }
        }
        let tag = self.ids.tag();
        let Some(mut r) = build::response(&req, 200, "OK", Some(&tag)) else { return };
        let at = r.headers().len() - 1;
        let mut lines = Vec::new();
        for b in self.reg.contacts(&ext, now.mono) {
            let left = b.expires_at.saturating_duration_since(now.mono).as_secs();
            lines.push(format!("<{}>;expires={left}", b.uri));
        }
        for (i, l) in lines.iter().enumerate() {
            let _ = r.insert_header(at + i, "Contact", l);
        }
        self.metrics.registrations.set(self.reg.count() as i64);
        self.respond(&key, r, now);
        // A phone that just registered learns the waiting-message state.
        if let Some((ctype, body)) = self.mwi.get(&ext).cloned() {
            self.notify_contacts(&ext, &ctype, &body, now);
        }
    }
}
