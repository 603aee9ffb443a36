//! The request policy of the L7 proxy, one for both paths (the HTTP/1.1 fast path in `h1`
//! and hyper's in `forward`): route a request to a pool, read the stickiness hint, choose
//! and connect with retries, the answers portier makes itself, the cookies it learns and
//! sets, the request counters and the finish step. The paths keep only their own I/O: byte
//! ranges of a read buffer on one side, hyper's types and body streaming on the other.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::log::{format, AccessRecord};
use super::route::{cookie, route_at, set_cookie_value};
use super::upstream::{UpstreamError, UpstreamKey, UpstreamTlsConfig};
use super::HttpService;
use crate::balance::{ActiveGuard, Pool, Server};
use crate::config::{AccessLog, Source};
use crate::net::{ClientAddr, OrigDstAddr};
use crate::proxy::retry::{report_refused, Attempts};
use crate::state::Sticky;

mod answer;
mod fields;
pub use answer::Answer;
pub use fields::{ClientFields, StickyCookie};

/// What one route position of a service leads to, resolved once when the service is built:
/// position 0 is the default pool, 1.. the routes in their order.
pub struct RouteTarget {
    /// Re-encryption towards this pool's servers.
    pub tls: Option<UpstreamTlsConfig>,
    /// Requests by status class, per server of the pool (by its index).
    pub counters: Vec<[Counter; 5]>,
}

/// Where one request goes.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub pool: &'a Arc<Pool>,
    /// Position in the service: 0 the default pool, n the nth route.
    pub route: usize,
    pub tls: Option<&'a UpstreamTlsConfig>,
}

/// How a path gets a connection to a server: the fast path opens raw `ServerIo`, the hyper
/// path a `SendRequest`; either may hand out one of the client connection's idle ones.
pub trait Connect {
    type Conn;
    fn connect(
        &mut self,
        key: &UpstreamKey,
    ) -> impl Future<Output = Result<Self::Conn, UpstreamError>> + Send;
}

/// A server that accepted, and the connection to it.
pub struct Connected<C> {
    /// The server's index in the target's pool.
    pub index: usize,
    pub server: Arc<Server>,
    pub key: UpstreamKey,
    pub conn: C,
    /// Counts the connection on the server (leastconn, active gauge) until dropped.
    pub guard: ActiveGuard,
}

/// Host, method and path of a request, copied only when the access log is on.
pub struct Logged {
    pub host: String,
    pub method: String,
    pub path: String,
}

/// What the finish step needs to know of a request from its start.
pub struct Facts {
    pub started: Instant,
    pub client: ClientAddr,
    pub logged: Option<Box<Logged>>,
}

/// How a request ended, for the finish step.
pub struct End<'a> {
    /// 0 when no response was sent (the client went away).
    pub status: u16,
    pub server: Option<&'a Server>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whether the whole response went through.
    pub complete: bool,
}

impl HttpService {
    /// The pool for a request's host and path: the first matching route, else the default.
    pub fn target(&self, host: Option<&str>, path: &str) -> Target<'_> {
        let svc = &self.svc;
        let (pool, route) = match route_at(&svc.routes, host, path) {
            Some(k) => (&svc.routes[k].1, k + 1),
            None => (svc.default_pool(), 0),
        };
        let tls = self.targets.get(route).and_then(|t| t.tls.as_ref());
        Target { pool, route, tls }
    }

    /// The server (index in the target's pool) the request's cookies designate, for cookie
    /// and server-cookie stickiness; client-IP stickiness decides in `Service::choose_in`.
    /// `cookies` gives the `Cookie` field values and is called only when a cookie matters.
    pub fn hint<'c, I: Iterator<Item = &'c [u8]>>(
        &self,
        target: &Target<'_>,
        cookies: impl FnOnce() -> I,
        now: Instant,
    ) -> Option<usize> {
        let pool = target.pool;
        match self.svc.sticky.as_ref()? {
            Sticky::Cookie { name, .. } => {
                let v = cookie(cookies(), name)?;
                pool.index_of_cookie(v).or_else(|| {
                    // Set by another pool of this service (the one cookie has Path=/ for every
                    // route): the same host in this pool, as client-IP tables do.
                    let svc = &self.svc;
                    svc.pool
                        .iter()
                        .chain(svc.routes.iter().map(|(_, p)| p))
                        .find_map(|p| p.index_of_cookie(v).map(|i| p.servers[i].config.address))
                        .and_then(|ip| pool.index_of(ip))
                })
            }
            Sticky::ServerCookie { name, table } => {
                cookie(cookies(), name).and_then(|v| table.get(v, now)).and_then(|ip| pool.index_of(ip))
            }
            Sticky::ClientIp(_) => None,
        }
    }

    /// Chooses a server of the target's pool and gets a connection to it through `how`;
    /// while nothing was sent a failed connect tries another server (up to `MAX_ATTEMPTS`),
    /// counted on the server. A refusal is counted once, logged (rate-limited) and says
    /// which answer the client gets: 503 when no server was usable, 502 when all failed.
    pub async fn connect<C: Connect>(
        &self,
        target: &Target<'_>,
        client: ClientAddr,
        orig: OrigDstAddr,
        hint: Option<usize>,
        now: Instant,
        how: &mut C,
    ) -> Result<Connected<C::Conn>, Answer> {
        let svc = &self.svc;
        let source = svc.upstream_source(client);
        let tls = target.tls.map_or(0, |t| t.id());
        let mut attempts = Attempts::default();
        loop {
            let i = match attempts.next(|tried| svc.choose_in(target.pool, client.ip(), hint, tried, now)) {
                Ok(i) => i,
                Err(r) => {
                    let answer = Answer::from(r);
                    report_refused(svc, client, orig, target.pool, &attempts, answer.outcome());
                    return Err(answer);
                }
            };
            let server = &target.pool.servers[i];
            let key = UpstreamKey { server: server.target(orig.port()), source, tls };
            let mut guard = ActiveGuard::new(server.clone());
            match how.connect(&key).await {
                Ok(conn) => {
                    guard.connected();
                    return Ok(Connected { index: i, server: server.clone(), key, conn, guard });
                }
                Err(e) => {
                    server.metrics.connect_errors.inc();
                    if svc.connect_error_log.allow() {
                        let held_back = svc.connect_error_log.take_suppressed();
                        tracing::warn!(service = %svc.config.name, %client, server = %server.label, held_back, "upstream failed, trying another server: {e}");
                    }
                    attempts.failed(i);
                }
            }
        }
    }

    /// Learns server-cookie stickiness from a response's `Set-Cookie` field values.
    pub fn learn_cookies<'c, I: Iterator<Item = &'c [u8]>>(
        &self,
        set_cookies: impl FnOnce() -> I,
        server: &Server,
    ) {
        let Some(Sticky::ServerCookie { name, table }) = &self.svc.sticky else { return };
        for v in set_cookies() {
            if let Some(value) = set_cookie_value(v, name) {
                table.set(value.to_string(), server.config.address, Instant::now());
            }
        }
    }

    /// The `Set-Cookie` value of cookie stickiness for server `i` of the target's pool. Set on
    /// every response, which also refreshes Max-Age: the cookie expires `expire` after the
    /// client's last request, like the client-IP tables.
    pub fn sticky_cookie<'s>(&'s self, target: &Target<'s>, i: usize) -> Option<StickyCookie<'s>> {
        let Some(Sticky::Cookie { name, expire }) = &self.svc.sticky else { return None };
        Some(StickyCookie {
            name,
            value: target.pool.cookie_value(i),
            max_age: expire.as_secs(),
            secure: self.scheme == "https",
        })
    }

    /// What to tell a server about the client; None when it sees the client itself
    /// (transparent). A client's own claims in these fields are not passed on as portier's.
    pub fn client_fields(&self, client: ClientAddr) -> Option<ClientFields> {
        (self.svc.config.source != Source::Client)
            .then_some(ClientFields { ip: client.ip(), proto: self.scheme })
    }

    /// Logs why a server's response failed (details for the log, not the client) and gives
    /// the answer for it.
    pub fn response_failed(&self, client: ClientAddr, server: &Server, why: &dyn fmt::Display) -> Answer {
        tracing::warn!(service = %self.svc.config.name, %client, server = %server.label, "server response failed: {why}");
        Answer::ServerFailed
    }

    /// Logs a server that did not answer within the response timeout and gives the answer.
    pub fn response_timed_out(&self, client: ClientAddr, server: &Server) -> Answer {
        let timeout = self.svc.config.response_timeout;
        tracing::warn!(service = %self.svc.config.name, %client, server = %server.label, "no response within {timeout:?}");
        Answer::Timeout
    }

    /// Counts a server's response by status class.
    pub fn count(&self, target: &Target<'_>, server: usize, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        if let Some(c) = self.targets.get(target.route).and_then(|t| t.counters.get(server)) {
            c[class].inc();
        }
    }

    /// A request's facts at its start; `what` (host, method, path) is called only when the
    /// access log is on, so otherwise nothing is copied.
    pub fn facts<'r>(
        &self,
        started: Instant,
        client: ClientAddr,
        what: impl FnOnce() -> (Option<&'r str>, &'r [u8], &'r str),
    ) -> Facts {
        let logged = (self.svc.config.access_log != AccessLog::Off).then(|| {
            let (host, method, path) = what();
            Box::new(Logged {
                host: host.unwrap_or_default().to_string(),
                method: String::from_utf8_lossy(method).into_owned(),
                path: path.to_string(),
            })
        });
        Facts { started, client, logged }
    }

    /// The finish step of every request, answered by a server or by portier: the duration
    /// histogram and the access-log line.
    pub fn finish(&self, facts: &Facts, end: End<'_>) {
        let duration = facts.started.elapsed();
        self.metrics.duration.observe(duration.as_secs_f64());
        let Some(logged) = &facts.logged else { return };
        let rec = AccessRecord {
            service: &self.svc.config.name,
            client: facts.client.0,
            host: &logged.host,
            method: &logged.method,
            path: &logged.path,
            status: end.status,
            bytes_in: end.bytes_in,
            bytes_out: end.bytes_out,
            server: end.server.map(|s| s.label.as_str()).unwrap_or("-"),
            duration,
            complete: end.complete,
        };
        if let Some(line) = format(&rec, self.svc.config.access_log) {
            tracing::info!(target: "portier::access", "{line}");
        }
    }
}

#[cfg(test)]
mod tests;
