//! Message waiting (RFC 3842): unsolicited `NOTIFY message-summary` from the trusted voicemail
//! trunk (Exchange UM) is delivered to every registered contact of the mailbox's extension and
//! to every phone subscribed to it; phones that SUBSCRIBE get a dialog, the last known state at
//! once, and later updates.

use std::time::Duration;

use crate::sip::transaction::Key;
use crate::sip::{Message, NameAddr};

use super::auth::Challenge;
use super::build::{self, RequestParts};
use super::registrar::Subscription;
use super::{Dest, Engine, Now, Purpose};

pub(super) const SUMMARY: &str = "application/simple-message-summary";
const MAX_SUBSCRIPTION: u32 = 3600;

fn event_of(req: &Message) -> String {
    build::header(req, "Event")
        .map(|e| e.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

impl Engine {
    pub(super) fn on_notify(&mut self, key: Key, req: Message, src: Dest, now: Now) {
        let vm_trunk = self.cfg.voicemail.as_ref().filter(|v| v.mwi).map(|v| &v.trunk);
        let trusted = vm_trunk.is_some_and(|t| self.trunks.contains_key(t))
            && self.trunk_from(src.addr.ip()).as_ref() == vm_trunk;
        if !trusted {
            tracing::warn!(from = %src.addr, "SIP: NOTIFY refused with 403: not from the voicemail trunk");
            self.reject(&key, &req, 403, "Forbidden", now);
            return;
        }
        if event_of(&req) != "message-summary" {
            self.reject(&key, &req, 489, "Bad Event", now);
            return;
        }
        self.metrics.mwi_received.inc();
        // The mailbox: Message-Account in the body, else the Request-URI user.
        let body = String::from_utf8_lossy(req.body()).into_owned();
        let account = body.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("Message-Account").then(|| value.trim().to_string())
        });
        let user = account
            .and_then(|a| crate::sip::Uri::parse(&a).ok())
            .and_then(|u| build::uri_user(&u))
            .or_else(|| req.request_uri().ok().and_then(|u| build::uri_user(&u)));
        let prefix = self.cfg.voicemail.as_ref().map(|v| v.mailbox_prefix.clone()).unwrap_or_default();
        let ext = user.map(|u| match u.strip_prefix(prefix.as_str()) {
            Some(rest) if !prefix.is_empty() && self.cfg.extensions.contains_key(rest) => rest.to_string(),
            _ => u,
        });
        let Some(ext) = ext.filter(|e| self.cfg.extensions.contains_key(e)) else {
            self.reject(&key, &req, 404, "No Such Mailbox", now);
            return;
        };
        self.reject(&key, &req, 200, "OK", now);
        let ctype = build::header(&req, "Content-Type").unwrap_or_else(|| SUMMARY.into());
        tracing::info!(ext, "SIP: message-waiting state received from voicemail");
        self.mwi.insert(ext.clone(), (ctype.clone(), body.clone()));
        self.notify_contacts(&ext, &ctype, &body, now);
    }

    /// Sends the state to every registered contact (unsolicited) and every subscription.
    pub(super) fn notify_contacts(&mut self, ext: &str, ctype: &str, body: &str, now: Now) {
        for b in self.reg.contacts(ext, now.mono) {
            let local = self.local_for(b.dest.transport, b.dest.addr);
            let branch = self.ids.branch();
            let tag = self.ids.tag();
            let call_id = self.ids.call_id(&self.cfg.domain);
            let from = format!("<sip:{ext}@{}>;tag={tag}", self.cfg.domain);
            let to = format!("<sip:{ext}@{}>", self.cfg.domain);
            let via = build::via(local, &branch);
            let Ok(mut n) = build::request(&RequestParts {
                method: "NOTIFY",
                ruri: &b.uri,
                via: &via,
                from: &from,
                to: &to,
                call_id: &call_id,
                cseq: 1,
                max_forwards: 70,
                routes: &[],
                contact: Some(&build::contact(ext, local)),
            }) else {
                continue;
            };
            let at = n.headers().len() - 1;
            let _ = n.insert_header(at, "Event", "message-summary");
            let _ = n.insert_header(at + 1, "Subscription-State", "active");
            let _ = n.insert_header(at + 2, "Content-Type", ctype);
            n.set_body(body.as_bytes().to_vec());
            self.metrics.mwi_delivered.inc();
            self.send_request(n, b.dest, Purpose::Notify, now);
        }
        let subs: Vec<usize> =
            (0..self.subscriptions.len()).filter(|&i| self.subscriptions[i].ext == ext).collect();
        for i in subs {
            self.notify_subscription(i, ctype, body, None, now);
        }
    }

    /// Sends the state down subscription `i`; `terminated` ends it with that reason (RFC 6665
    /// §4.1.3: timeout, noresource, ...).
    pub(super) fn notify_subscription(
        &mut self,
        i: usize,
        ctype: &str,
        body: &str,
        terminated: Option<&str>,
        now: Now,
    ) {
        let branch = self.ids.branch();
        let s = &mut self.subscriptions[i];
        s.cseq += 1;
        let s = s.clone();
        let local = self.local_for(s.dest.transport, s.dest.addr);
        let via = build::via(local, &branch);
        let from = format!("{};tag={}", s.local, s.local_tag);
        let Ok(mut n) = build::request(&RequestParts {
            method: "NOTIFY",
            ruri: &s.target,
            via: &via,
            from: &from,
            to: &s.remote,
            call_id: &s.call_id,
            cseq: s.cseq,
            max_forwards: 70,
            routes: &[],
            contact: Some(&build::contact(&s.ext, local)),
        }) else {
            return;
        };
        let left = s.expires_at.saturating_duration_since(now.mono).as_secs();
        let state = match terminated {
            Some(reason) => format!("terminated;reason={reason}"),
            None => format!("active;expires={left}"),
        };
        let at = n.headers().len() - 1;
        let _ = n.insert_header(at, "Event", "message-summary");
        let _ = n.insert_header(at + 1, "Subscription-State", &state);
        let _ = n.insert_header(at + 2, "Content-Type", ctype);
        n.set_body(body.as_bytes().to_vec());
        self.metrics.mwi_delivered.inc();
        self.send_request(n, s.dest, Purpose::Notify, now);
    }

    pub(super) fn on_subscribe(&mut self, key: Key, req: Message, src: Dest, now: Now) {
        if event_of(&req) != "message-summary" {
            self.reject(&key, &req, 489, "Bad Event", now);
            return;
        }
        let Some(user) = self.authenticate(&key, &req, Challenge::Proxy, src.addr.ip(), now) else { return };
        let expires = req.expires().ok().flatten().unwrap_or(MAX_SUBSCRIPTION).min(MAX_SUBSCRIPTION);
        let call_id = req.call_id().unwrap_or_default();
        self.subscriptions.retain(|s| s.expires_at > now.mono);
        let to_tag = req.to().ok().and_then(|t| t.tag().map(str::to_owned));
        let existing = self
            .subscriptions
            .iter()
            .position(|s| s.call_id == call_id && Some(&s.local_tag) == to_tag.as_ref());
        let i = match (existing, to_tag) {
            (Some(i), _) => {
                self.subscriptions[i].expires_at = now.mono + Duration::from_secs(u64::from(expires));
                i
            }
            (None, Some(_)) => {
                self.reply(&key, &req, 481, "Subscription Does Not Exist", None, now);
                return;
            }
            (None, None) => {
                let ext = req.request_uri().ok().and_then(|u| build::uri_user(&u)).unwrap_or_default();
                if ext != user {
                    self.reject(&key, &req, 403, "Only Your Own Mailbox", now);
                    return;
                }
                let (target, dest) = match req.contacts() {
                    Ok(crate::sip::ContactList::Addrs(c)) if !c.is_empty() => {
                        let nat = self.cfg.extensions.get(&ext).map(|e| e.nat).unwrap_or_default();
                        (c[0].uri.to_string(), super::nat::reach(&c[0].uri, src, nat))
                    }
                    _ => {
                        self.reply(&key, &req, 400, "Contact Required", None, now);
                        return;
                    }
                };
                let from = build::header(&req, "From").unwrap_or_default();
                if NameAddr::parse(&from, "From").ok().and_then(|f| f.tag().map(str::to_owned)).is_none() {
                    self.reply(&key, &req, 400, "From Tag Required", None, now);
                    return;
                }
                self.subscriptions.push(Subscription {
                    ext,
                    call_id,
                    local_tag: self.ids.tag(),
                    remote: from,
                    local: build::header(&req, "To")
                        .and_then(|t| build::with_tag(&t, "To", None))
                        .unwrap_or_default(),
                    target,
                    dest,
                    cseq: 0,
                    expires_at: now.mono + Duration::from_secs(u64::from(expires)),
                });
                self.subscriptions.len() - 1
            }
        };
        let tag = self.subscriptions[i].local_tag.clone();
        let local = self.local_for(src.transport, src.addr);
        let Some(mut r) = build::response(&req, 200, "OK", Some(&tag)) else { return };
        let at = r.headers().len() - 1;
        let _ = r.insert_header(at, "Expires", &expires.to_string());
        let _ = r.insert_header(at + 1, "Contact", &build::contact(&user, local));
        self.respond(&key, r, now);
        let ext = self.subscriptions[i].ext.clone();
        let (ctype, body) = self
            .mwi
            .get(&ext)
            .cloned()
            .unwrap_or_else(|| (SUMMARY.to_string(), "Messages-Waiting: no\r\n".to_string()));
        self.notify_subscription(i, &ctype, &body, (expires == 0).then_some("timeout"), now);
        if expires == 0 {
            self.subscriptions.remove(i);
        }
    }
}
