//! Sans-IO HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616 algorithms, RFC 8760 for
//! SHA-256 in SIP).
//!
//! Server side ([`DigestServer`]): challenges for `WWW-Authenticate` / `Proxy-Authenticate` and
//! verification of `Authorization` / `Proxy-Authorization` values. Client side ([`respond`]):
//! answering a challenge, e.g. for a trunk REGISTER towards the ISP.
//!
//! Time is injected everywhere as `now: u64`, whole seconds of a clock that only has to be
//! consistent for the lifetime of the server key (production: seconds since the Unix epoch, so
//! nonces survive a restart if the key does; tests: any number).
//!
//! Design decisions:
//! - Nonces are self-validating: `base64url(ts || random || HMAC-SHA256(key, ts || random))`, so
//!   expiry and authenticity need no per-nonce state. The only state is a bounded replay table
//!   (nonce -> highest `nc` seen) and a bounded per-source failure table for rate limiting.
//! - `qop=auth` is always offered and required by default. The RFC 2069 form (no `qop`, no
//!   `nc`/`cnonce`) has no replay protection, so it is rejected unless
//!   [`DigestServer::set_allow_rfc2069`] turns it on for old phones.
//! - `auth-int`, `-sess` algorithms and `userhash=true` are not supported (rejected / refused).
//! - A response that is correct for an expired nonce yields [`Verdict::Stale`] (not a failure);
//!   anything incorrect for an expired nonce is rejected as usual.
//! - When the replay table is full, the oldest nonce is evicted and every nonce not newer than it
//!   that is not in the table is treated as stale from then on, so eviction never opens a replay.
//! - The digest `uri` parameter is not compared with the Request-URI here: that is the caller's
//!   check (the verified value is in [`Verdict::Ok`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use md5::Digest as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Longest header value we look at; anything longer is malformed.
const MAX_HEADER_LEN: usize = 8192;
const TS_LEN: usize = 8;
const RAND_LEN: usize = 16;
const TAG_LEN: usize = 32;
const NONCE_LEN: usize = TS_LEN + RAND_LEN + TAG_LEN;

/// Digest hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (the default when `algorithm` is absent).
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token as written in the `algorithm` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lowercase hex digest of `data`.
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex(&md5::Md5::digest(data)),
            Algorithm::Sha256 => hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref()),
        }
    }
}

/// Errors of parsing a challenge / credentials and of [`respond`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The value does not follow the `Digest name=value, ...` syntax.
    #[error("malformed digest header")]
    Malformed,
    /// The auth scheme is not `Digest`.
    #[error("auth scheme is not Digest")]
    NotDigest,
    /// A parameter occurs twice.
    #[error("duplicate parameter {0}")]
    Duplicate(String),
    /// A required parameter is absent.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// The algorithm is not MD5 or SHA-256.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The qop offered or used is not `auth`.
    #[error("unsupported qop {0}")]
    UnsupportedQop(String),
    /// A parameter value is syntactically wrong (e.g. `nc`).
    #[error("invalid parameter {0}")]
    Invalid(&'static str),
}

/// Why [`DigestServer::verify`] rejected credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The header could not be parsed, or a parameter is missing or invalid.
    Malformed(DigestError),
    /// `realm` is not ours.
    WrongRealm,
    /// The algorithm is not MD5 or SHA-256 (or `userhash=true`).
    UnsupportedAlgorithm,
    /// `qop` is not `auth`, or absent while RFC 2069 mode is off.
    UnsupportedQop,
    /// The nonce was not issued by us (bad encoding or MAC).
    BadNonce,
    /// The password lookup returned nothing.
    UnknownUser,
    /// The response does not match (wrong password, altered parameters).
    BadResponse,
    /// `nc` is not greater than the highest already accepted for this nonce.
    Replay,
}

/// Outcome of [`DigestServer::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated. `uri` is the digest `uri` parameter, for the caller to compare with the
    /// Request-URI.
    Ok {
        /// The authenticated user.
        username: String,
        /// The digest `uri` parameter as sent.
        uri: String,
    },
    /// The response is correct but the nonce expired: re-challenge with `stale=true`.
    Stale,
    /// Authentication failed: challenge again (or 403).
    Rejected(RejectReason),
    /// Too many failures from this source: answer without checking (e.g. 403 / drop).
    RateLimited,
}

/// Failed-authentication rate limit per source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Failures within `window` that trigger the cool-down.
    pub max_failures: u32,
    /// Counting window.
    pub window: Duration,
    /// How long a source is refused once the limit is hit.
    pub cooldown: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { max_failures: 10, window: Duration::from_secs(60), cooldown: Duration::from_secs(300) }
    }
}

#[derive(Clone, Copy, Debug)]
struct NonceUse {
    ts: u64,
    highest_nc: u32,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    window_start: u64,
    count: u32,
    blocked_until: u64,
}

/// Server side of digest authentication (registrar, INVITE challenges).
pub struct DigestServer {
    realm: String,
    lifetime: u64,
    key: hmac::Key,
    rng: SystemRandom,
    counter: AtomicU64,
    allow_rfc2069: bool,
    nonces: HashMap<String, NonceUse>,
    max_nonces: usize,
    /// Nonces with `ts <= floor` that are not in `nonces` are stale (see module docs).
    floor: Option<u64>,
    rate: RateLimit,
    failures: HashMap<IpAddr, Failures>,
    max_sources: usize,
}

impl DigestServer {
    /// A server for `realm` whose nonces live `nonce_lifetime` (rounded down to whole seconds,
    /// at least 1 s), authenticated with `key`.
    pub fn new(realm: impl Into<String>, nonce_lifetime: Duration, key: [u8; 32]) -> Self {
        DigestServer {
            realm: realm.into(),
            lifetime: nonce_lifetime.as_secs().max(1),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            rng: SystemRandom::new(),
            counter: AtomicU64::new(0),
            allow_rfc2069: false,
            nonces: HashMap::new(),
            max_nonces: 65_536,
            floor: None,
            rate: RateLimit::default(),
            failures: HashMap::new(),
            max_sources: 16_384,
        }
    }

    /// Accept credentials without `qop` (RFC 2069; no replay protection). Off by default.
    pub fn set_allow_rfc2069(&mut self, allow: bool) {
        self.allow_rfc2069 = allow;
    }

    /// Replace the failed-authentication rate limit.
    pub fn set_rate_limit(&mut self, rate: RateLimit) {
        self.rate = rate;
    }

    /// Bound the replay table (`max_nonces`) and the failure table (`max_sources`); at least 1.
    pub fn set_caps(&mut self, max_nonces: usize, max_sources: usize) {
        self.max_nonces = max_nonces.max(1);
        self.max_sources = max_sources.max(1);
    }

    /// A new realm (the SIP domain changed): the key and the replay table stay, so nonces
    /// already issued keep verifying; credentials computed for the old realm are refused and
    /// challenged again with the new one.
    pub fn set_realm(&mut self, realm: impl Into<String>) {
        self.realm = realm.into();
    }

    /// A new nonce lifetime (at least 1 s), applied to nonces already issued too: their
    /// timestamps are in them, the lifetime is checked when they come back.
    pub fn set_lifetime(&mut self, nonce_lifetime: Duration) {
        self.lifetime = nonce_lifetime.as_secs().max(1);
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Number of nonces in the replay table.
    pub fn tracked_nonces(&self) -> usize {
        self.nonces.len()
    }

    /// Number of sources in the failure table.
    pub fn tracked_sources(&self) -> usize {
        self.failures.len()
    }

    /// A fresh nonce for time `now`.
    pub fn nonce(&self, now: u64) -> String {
        let mut raw = [0u8; TS_LEN + RAND_LEN];
        raw[..TS_LEN].copy_from_slice(&now.to_be_bytes());
        if self.rng.fill(&mut raw[TS_LEN..]).is_err() {
            // Never expected; uniqueness (not secrecy) is what the random part is for.
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            raw[TS_LEN..TS_LEN + 8].copy_from_slice(&n.to_be_bytes());
        }
        let tag = hmac::sign(&self.key, &raw);
        let mut all = Vec::with_capacity(NONCE_LEN);
        all.extend_from_slice(&raw);
        all.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(all)
    }

    /// Challenge header values (`WWW-Authenticate` / `Proxy-Authenticate`), one per algorithm in
    /// the order given (RFC 8760 §2.4: most preferred first; clients take the first they
    /// support), duplicates dropped, all sharing one nonce.
    pub fn challenge(&self, now: u64, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
        let nonce = self.nonce(now);
        let mut seen = Vec::with_capacity(2);
        algorithms
            .iter()
            .copied()
            .filter(|a| {
                let new = !seen.contains(a);
                seen.push(*a);
                new
            })
            .map(|a| {
                let mut v = format!(
                    "Digest realm={}, nonce=\"{}\", algorithm={}, qop=\"auth\"",
                    quote(&self.realm),
                    nonce,
                    a.as_str()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Verify an `Authorization` / `Proxy-Authorization` value for a request with `method`
    /// from `source`. `password_lookup` maps a username to its plaintext password.
    pub fn verify<F, S>(
        &mut self,
        method: &str,
        authorization: &str,
        password_lookup: F,
        now: u64,
        source: IpAddr,
    ) -> Verdict
    where
        F: Fn(&str) -> Option<S>,
        S: AsRef<str>,
    {
        if self.failures.get(&source).is_some_and(|f| now < f.blocked_until) {
            return Verdict::RateLimited;
        }
        let verdict = self.check(method, authorization, password_lookup, now);
        if matches!(verdict, Verdict::Rejected(_)) {
            self.record_failure(source, now);
        }
        verdict
    }

    /// Drop expired replay entries and idle failure entries (also done lazily when full).
    pub fn purge(&mut self, now: u64) {
        let lifetime = self.lifetime;
        self.nonces.retain(|_, u| !expired(u.ts, now, lifetime));
        let window = self.rate.window.as_secs();
        self.failures.retain(|_, f| now < f.blocked_until || now.saturating_sub(f.window_start) < window);
    }

    fn check<F, S>(&mut self, method: &str, authorization: &str, lookup: F, now: u64) -> Verdict
    where
        F: Fn(&str) -> Option<S>,
        S: AsRef<str>,
    {
        let reject = |r| Verdict::Rejected(r);
        let params = match parse_digest(authorization) {
            Ok(p) => p,
            Err(e) => return reject(RejectReason::Malformed(e)),
        };
        let get = |name: &'static str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let required = |name: &'static str| get(name).ok_or(DigestError::Missing(name));
        let fields = (|| {
            Ok::<_, DigestError>((
                required("username")?,
                required("realm")?,
                required("nonce")?,
                required("uri")?,
                required("response")?,
            ))
        })();
        let (username, realm, nonce, uri, response) = match fields {
            Ok(f) => f,
            Err(e) => return reject(RejectReason::Malformed(e)),
        };
        if realm != self.realm {
            return reject(RejectReason::WrongRealm);
        }
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::from_token(a) {
                Some(a) => a,
                None => return reject(RejectReason::UnsupportedAlgorithm),
            },
        };
        if get("userhash").is_some_and(|u| u.eq_ignore_ascii_case("true")) {
            return reject(RejectReason::UnsupportedAlgorithm);
        }
        // (nc, cnonce) when qop=auth.
        let qop = match get("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc_text = match get("nc") {
                    Some(n) => n,
                    None => return reject(RejectReason::Malformed(DigestError::Missing("nc"))),
                };
                let nc = match parse_nc(nc_text) {
                    Some(n) => n,
                    None => return reject(RejectReason::Malformed(DigestError::Invalid("nc"))),
                };
                let cnonce = match get("cnonce") {
                    Some(c) => c,
                    None => return reject(RejectReason::Malformed(DigestError::Missing("cnonce"))),
                };
                Some((nc, nc_text, cnonce))
            }
            Some(_) => return reject(RejectReason::UnsupportedQop),
            None if self.allow_rfc2069 => None,
            None => return reject(RejectReason::UnsupportedQop),
        };
        let ts = match self.open_nonce(nonce) {
            Some(ts) => ts,
            None => return reject(RejectReason::BadNonce),
        };
        let password = match lookup(username) {
            Some(p) => p,
            None => return reject(RejectReason::UnknownUser),
        };
        let expected = compute_response(
            algorithm,
            username,
            realm,
            password.as_ref(),
            method,
            uri,
            nonce,
            qop.map(|(_, nc_text, cnonce)| (nc_text, cnonce)),
        );
        if !ct_eq_ignore_case(expected.as_bytes(), response.as_bytes()) {
            return reject(RejectReason::BadResponse);
        }
        if expired(ts, now, self.lifetime) {
            return Verdict::Stale;
        }
        let ok = Verdict::Ok { username: username.to_owned(), uri: uri.to_owned() };
        let Some((nc, _, _)) = qop else {
            return ok;
        };
        match self.nonces.get_mut(nonce) {
            Some(entry) if nc <= entry.highest_nc => reject(RejectReason::Replay),
            Some(entry) => {
                entry.highest_nc = nc;
                ok
            }
            None => {
                if self.floor.is_some_and(|floor| ts <= floor) {
                    return Verdict::Stale;
                }
                self.make_room(now);
                self.nonces.insert(nonce.to_owned(), NonceUse { ts, highest_nc: nc });
                ok
            }
        }
    }

    fn make_room(&mut self, now: u64) {
        if self.nonces.len() < self.max_nonces {
            return;
        }
        let lifetime = self.lifetime;
        self.nonces.retain(|_, u| !expired(u.ts, now, lifetime));
        while self.nonces.len() >= self.max_nonces {
            let Some((key, ts)) =
                self.nonces.iter().min_by_key(|(_, u)| u.ts).map(|(k, u)| (k.clone(), u.ts))
            else {
                break;
            };
            // Remove every entry as old as the evicted one so the floor rule stays exact.
            self.nonces.remove(&key);
            self.nonces.retain(|_, u| u.ts > ts);
            self.floor = Some(self.floor.map_or(ts, |f| f.max(ts)));
        }
    }

    fn open_nonce(&self, nonce: &str) -> Option<u64> {
        if nonce.len() > 2 * NONCE_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if raw.len() != NONCE_LEN {
            return None;
        }
        let (data, tag) = raw.split_at(TS_LEN + RAND_LEN);
        hmac::verify(&self.key, data, tag).ok()?;
        let mut ts = [0u8; TS_LEN];
        ts.copy_from_slice(&data[..TS_LEN]);
        Some(u64::from_be_bytes(ts))
    }

    fn record_failure(&mut self, source: IpAddr, now: u64) {
        let window = self.rate.window.as_secs();
        if !self.failures.contains_key(&source) && self.failures.len() >= self.max_sources {
            self.purge_failures(now);
        }
        let entry =
            self.failures.entry(source).or_insert(Failures { window_start: now, count: 0, blocked_until: 0 });
        if now.saturating_sub(entry.window_start) >= window {
            entry.window_start = now;
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count >= self.rate.max_failures {
            entry.blocked_until = now.saturating_add(self.rate.cooldown.as_secs());
            entry.count = 0;
            entry.window_start = now;
        }
    }

    fn purge_failures(&mut self, now: u64) {
        let window = self.rate.window.as_secs();
        self.failures.retain(|_, f| now < f.blocked_until || now.saturating_sub(f.window_start) < window);
        if self.failures.len() < self.max_sources {
            return;
        }
        // Still full: forget the unblocked source with the fewest failures, so address spraying
        // cannot lift a block; only when every source is blocked, the block ending first goes.
        let victim = self
            .failures
            .iter()
            .filter(|(_, f)| now >= f.blocked_until)
            .min_by_key(|(_, f)| f.count)
            .or_else(|| self.failures.iter().min_by_key(|(_, f)| f.blocked_until))
            .map(|(ip, _)| *ip);
        if let Some(ip) = victim {
            self.failures.remove(&ip);
        }
    }
}

fn expired(ts: u64, now: u64, lifetime: u64) -> bool {
    now.saturating_sub(ts) >= lifetime
}

/// The digest `response` (lowercase hex). `qop` is `Some((nc, cnonce))` for `qop=auth`, `None`
/// for the RFC 2069 form.
#[allow(clippy::too_many_arguments)]
pub fn compute_response(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = algorithm.hash_hex(format!("{username}:{realm}:{password}").as_bytes());
    let ha2 = algorithm.hash_hex(format!("{method}:{uri}").as_bytes());
    let kd = match qop {
        Some((nc, cnonce)) => format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
        None => format!("{ha1}:{nonce}:{ha2}"),
    };
    algorithm.hash_hex(kd.as_bytes())
}

/// Client side: the `Authorization` / `Proxy-Authorization` value answering one challenge value
/// (`WWW-Authenticate` / `Proxy-Authenticate`). Uses `qop=auth` with `cnonce` and `nc` when the
/// challenge offers it, the RFC 2069 form when it offers no qop. `opaque` is echoed.
pub fn respond(
    challenge: &str,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> Result<String, DigestError> {
    let params = parse_digest(challenge)?;
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let realm = get("realm").ok_or(DigestError::Missing("realm"))?;
    let nonce = get("nonce").ok_or(DigestError::Missing("nonce"))?;
    let algorithm = match get("algorithm") {
        None => Algorithm::Md5,
        Some(a) => Algorithm::from_token(a).ok_or_else(|| DigestError::UnsupportedAlgorithm(a.into()))?,
    };
    let use_qop = match get("qop") {
        None => false,
        Some(q) => {
            if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                true
            } else {
                return Err(DigestError::UnsupportedQop(q.into()));
            }
        }
    };
    let nc_text = format!("{nc:08x}");
    let response = compute_response(
        algorithm,
        username,
        realm,
        password,
        method,
        uri,
        nonce,
        use_qop.then_some((nc_text.as_str(), cnonce)),
    );
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{}\", algorithm={}",
        quote(username),
        quote(realm),
        quote(nonce),
        quote(uri),
        response,
        algorithm.as_str()
    );
    if use_qop {
        let _ = write!(out, ", qop=auth, nc={nc_text}, cnonce={}", quote(cnonce));
    }
    if let Some(opaque) = get("opaque") {
        let _ = write!(out, ", opaque={}", quote(opaque));
    }
    Ok(out)
}

/// Parse `Digest name=value, name="quoted", ...` into (lowercased name, unescaped value) pairs.
/// Names are case-insensitive, order is free, duplicates are an error.
pub fn parse_digest(value: &str) -> Result<Vec<(String, String)>, DigestError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(DigestError::Malformed);
    }
    let b = value.as_bytes();
    let mut i = 0;
    skip_ws(b, &mut i);
    let start = i;
    while i < b.len() && is_token(b[i]) {
        i += 1;
    }
    if !value[start..i].eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    if i < b.len() && !is_ws(b[i]) {
        return Err(DigestError::Malformed);
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        // Separators: whitespace and commas (empty list elements are allowed).
        while i < b.len() && (is_ws(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == name_start {
            return Err(DigestError::Malformed);
        }
        let name = value[name_start..i].to_ascii_lowercase();
        skip_ws(b, &mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Malformed);
        }
        i += 1;
        skip_ws(b, &mut i);
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut out = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(DigestError::Malformed),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b.get(i + 1).ok_or(DigestError::Malformed)?;
                        out.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(out).map_err(|_| DigestError::Malformed)?
        } else {
            let s = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if i == s {
                return Err(DigestError::Malformed);
            }
            value[s..i].to_owned()
        };
        skip_ws(b, &mut i);
        if i < b.len() && b[i] != b',' {
            return Err(DigestError::Malformed);
        }
        if params.iter().any(|(n, _)| *n == name) {
            return Err(DigestError::Duplicate(name));
        }
        params.push((name, val));
    }
    Ok(params)
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && is_ws(b[*i]) {
        *i += 1;
    }
}

/// RFC 7230 tchar, plus `/` so unquoted URIs and base64 nonces from lax peers still parse.
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:@".contains(&c)
}

fn parse_nc(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok().filter(|&n| n > 0)
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Constant-time (in the content) comparison of `expected` (lowercase) with `given` (any case).
fn ct_eq_ignore_case(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase())) == 0
}

#[cfg(test)]
#[path = "digest_tests.rs"]
mod tests;
