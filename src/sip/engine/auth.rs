//! Digest challenges for REGISTER (401) and for calls from phones (407).

use crate::sip::digest::Verdict;
use crate::sip::transaction::Key;
use crate::sip::Message;

use super::{build, Dest, Engine, Now, Outgoing};

/// The two challenge flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    /// REGISTER: 401, WWW-Authenticate / Authorization.
    Www,
    /// INVITE and other requests: 407, Proxy-Authenticate / Proxy-Authorization.
    Proxy,
}

impl Challenge {
    fn credentials(self) -> &'static str {
        match self {
            Challenge::Www => "Authorization",
            Challenge::Proxy => "Proxy-Authorization",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Challenge::Www => "WWW-Authenticate",
            Challenge::Proxy => "Proxy-Authenticate",
        }
    }

    fn status(self) -> (u16, &'static str) {
        match self {
            Challenge::Www => (401, "Unauthorized"),
            Challenge::Proxy => (407, "Proxy Authentication Required"),
        }
    }
}

impl Engine {
    /// The authenticated extension, or `None` after answering the request (challenge, 403).
    pub(super) fn authenticate(
        &mut self,
        key: &Key,
        req: &Message,
        kind: Challenge,
        source: std::net::IpAddr,
        now: Now,
    ) -> Option<String> {
        let method = req.method().unwrap_or_default().to_owned();
        // Several credentials may be present (one per realm); ours is the one for our realm.
        let realm = format!("realm=\"{}\"", self.cfg.domain);
        let creds: Vec<String> = req
            .get_all(kind.credentials())
            .filter_map(|h| h.value_text("Authorization").ok().map(|v| v.into_owned()))
            .collect();
        let cred = creds.iter().find(|c| c.contains(&realm)).or(creds.first());
        let Some(cred) = cred else {
            self.challenge(key, req, kind, false, now);
            return None;
        };
        // An algorithm the administrator did not offer is refused like a wrong password.
        let alg = crate::sip::digest::parse_digest(cred)
            .ok()
            .and_then(|p| p.into_iter().find(|(n, _)| n == "algorithm").map(|(_, v)| v))
            .map_or(Some(crate::sip::digest::Algorithm::Md5), |a| {
                crate::sip::digest::Algorithm::from_token(&a)
            });
        if !alg.is_some_and(|a| self.cfg.digest_algorithms.contains(&a)) {
            self.metrics.auth_failures.inc();
            tracing::warn!(from = %source, method, "SIP: credentials use a digest algorithm not offered");
            self.challenge(key, req, kind, false, now);
            return None;
        }
        let cfg = self.cfg.clone();
        let verdict = self.digest.verify(
            &method,
            cred,
            |u| cfg.extensions.get(u).map(|e| e.secret.clone()),
            now.unix,
            source,
        );
        match verdict {
            Verdict::Ok { username, .. } => Some(username),
            Verdict::Stale => {
                self.challenge(key, req, kind, true, now);
                None
            }
            Verdict::Rejected(why) => {
                self.metrics.auth_failures.inc();
                tracing::warn!(from = %source, method, "SIP: authentication refused: {why:?}");
                self.challenge(key, req, kind, false, now);
                None
            }
            Verdict::RateLimited => {
                self.metrics.auth_failures.inc();
                tracing::warn!(from = %source, method, "SIP: too many failed authentications, refused with 403");
                self.reject(key, req, 403, "Too Many Failed Authentications", now);
                None
            }
        }
    }

    /// Challenges a new REGISTER for a known extension, or an out-of-dialog INVITE from a
    /// caller that must authenticate, that carries no credentials, without a transaction:
    /// the nonce validates itself and nothing is kept, so a flood of them costs no memory and
    /// draws one 401/407 per request instead of a retransmitted series (Kamailio answers its
    /// challenges statelessly too). Returns whether the request was answered.
    pub(super) fn challenge_statelessly(&mut self, req: &Message, src: Dest, now: Now) -> bool {
        let kind = match req.method() {
            Some("INVITE") => Challenge::Proxy,
            Some("REGISTER") => Challenge::Www,
            _ => return false,
        };
        let to = req.to().ok();
        if to.as_ref().is_none_or(|t| t.tag().is_some()) || req.get_all(kind.credentials()).next().is_some() {
            return false;
        }
        match kind {
            Challenge::Proxy => {
                // A trusted trunk needs no credentials; a stopping B2BUA answers 503, and a
                // retransmission of an accepted INVITE gets its 2xx again: all stateful.
                let known_call = req.call_id().is_ok_and(|c| self.by_call_id.contains_key(&c));
                if self.draining.is_some() || known_call || self.trusted_trunk(src.addr.ip()).is_some() {
                    return false;
                }
            }
            Challenge::Www => {
                let ext = to.as_ref().and_then(|t| build::uri_user(&t.uri));
                if !ext.is_some_and(|e| self.cfg.extensions.contains_key(&e)) {
                    return false;
                }
            }
        }
        let call_id = req.call_id().unwrap_or_default();
        let from_tag = req.from().ok().and_then(|f| f.tag().map(str::to_owned)).unwrap_or_default();
        let branch = req.top_via().ok().and_then(|v| v.branch().map(str::to_owned)).unwrap_or_default();
        let tag = self.ids.stateless_tag(&[&call_id, &from_tag, &branch]);
        let (status, reason) = kind.status();
        let Some(mut r) = build::response(req, status, reason, Some(&tag)) else { return false };
        for v in self.digest.challenge(now.unix, false, &self.cfg.digest_algorithms) {
            let _ = r.insert_header(r.headers().len() - 1, kind.header(), &v);
        }
        self.metrics.stateless_challenges.inc();
        self.out.push(Outgoing { dest: src, msg: r });
        true
    }

    fn challenge(&mut self, key: &Key, req: &Message, kind: Challenge, stale: bool, now: Now) {
        let (status, reason) = kind.status();
        let tag = self.ids.tag();
        let Some(mut r) = build::response(req, status, reason, Some(&tag)) else { return };
        for v in self.digest.challenge(now.unix, stale, &self.cfg.digest_algorithms) {
            let _ = r.insert_header(r.headers().len() - 1, kind.header(), &v);
        }
        self.respond(key, r, now);
    }
}
