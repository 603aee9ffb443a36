//! One request: route, choose a server (cookie, server cookie or client IP stickiness), get
//! an upstream connection (pooled or new, retried on another server while nothing was sent),
//! forward head and streamed body, stream the response back, then finish the exchange.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::body::{BodySent, Finish, RequestBody, ResponseBody};
use super::log::{format, AccessRecord};
use super::route::{cookie, route, set_cookie_value};
use super::upstream::{connect, UpstreamKey};
use super::{ConnState, HttpService, InFlight};
use crate::balance::{ActiveGuard, Pool, Server};
use crate::config::{AccessLog, Mode, Source};
use crate::net::{ClientAddr, OrigDstAddr};
use crate::proxy::retry::MAX_ATTEMPTS;
use crate::state::Sticky;

/// Request facts kept for the access log.
struct Facts {
    started: Instant,
    client: ClientAddr,
    /// Host, method and path, copied only when the access log is on.
    logged: Option<Box<Logged>>,
    h2: bool,
}

struct Logged {
    host: String,
    method: String,
    path: String,
}

struct Exchange {
    hs: Arc<HttpService>,
    facts: Facts,
    status: u16,
    server: Option<Arc<Server>>,
    /// What the client uploaded (None: nothing was forwarded).
    sent: Option<Arc<BodySent>>,
    reuse: Option<(UpstreamKey, SendRequest<RequestBody>)>,
    _active: Option<ActiveGuard>,
    _in_flight: InFlight,
}

impl Finish for Exchange {
    fn finish(self: Box<Self>, bytes_out: u64, complete: bool) {
        let this = *self;
        if let (true, Some((key, sender))) = (complete, this.reuse) {
            // Back to this client connection's own pool: a server connection is never lent to
            // another client connection (IIS ties NTLM/Negotiate logins to the connection).
            this._in_flight.0.upstream.checkin(key, sender);
        }
        let duration = this.facts.started.elapsed();
        this.hs.metrics.duration.observe(duration.as_secs_f64());
        if this.facts.h2 {
            this.hs.metrics.h2_streams.dec();
        }
        let Some(logged) = &this.facts.logged else { return };
        let rec = AccessRecord {
            service: &this.hs.svc.config.name,
            client: this.facts.client.0,
            host: &logged.host,
            method: &logged.method,
            path: &logged.path,
            status: this.status,
            bytes_in: this.sent.as_ref().map_or(0, |s| s.seen.load(std::sync::atomic::Ordering::Relaxed)),
            bytes_out,
            server: this.server.as_ref().map(|s| s.label.as_str()).unwrap_or("-"),
            duration,
            complete,
        };
        if let Some(line) = format(&rec, this.hs.svc.config.access_log) {
            tracing::info!(target: "portier::access", "{line}");
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (None, _) => {}
        (Some(v), None) => {
            // The usual single `Connection:` line: a clone of its value shares the bytes, and
            // names given as &str are looked up without allocating.
            let v = v.clone();
            let tokens = v.to_str().ok().into_iter().flat_map(|v| v.split(','));
            for t in tokens.map(str::trim) {
                if !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")) {
                    headers.remove(t);
                }
            }
        }
        (Some(_), Some(_)) => {
            let listed: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE))
                .collect();
            for n in listed {
                headers.remove(n);
            }
        }
    }
    for n in [KEEP_ALIVE, PROXY_CONNECTION, header::TE, header::TRAILER] {
        headers.remove(n);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// HTTP/2 clients may send each cookie as its own field (RFC 9113 8.2.3); towards an
/// HTTP/1.1 server they must be one `Cookie:` line joined with "; " (IIS would join repeated
/// lines with ", " and corrupt them).
fn join_cookies(headers: &mut HeaderMap) {
    let crumbs: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if crumbs.len() > 1 {
        if let Ok(v) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
            headers.insert(header::COOKIE, v);
        }
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().map(|s| s.to_ascii_lowercase().contains("upgrade")).unwrap_or(false))
}

fn plain(
    hs: &Arc<HttpService>,
    facts: Facts,
    in_flight: InFlight,
    status: StatusCode,
    text: String,
) -> Response<ResponseBody> {
    hs.metrics.generated(status.as_u16());
    let finish = Exchange {
        hs: hs.clone(),
        facts,
        status: status.as_u16(),
        server: None,
        sent: None,
        reuse: None,
        _active: None,
        _in_flight: in_flight,
    };
    let mut r = Response::new(ResponseBody::full(text, Some(Box::new(finish))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The server (index in `pool`) a cookie designates, for cookie and server-cookie stickiness.
pub(super) fn preferred<'a, I: Iterator<Item = &'a [u8]>>(
    hs: &HttpService,
    pool: &Pool,
    cookies: impl Fn() -> I,
    now: Instant,
) -> Option<usize> {
    match hs.svc.sticky.as_ref()? {
        Sticky::Cookie { name, .. } => {
            let v = cookie(cookies(), name)?;
            pool.index_of_cookie(v).or_else(|| {
                // Set by another pool of this service (the one cookie has Path=/ for every
                // route): the same host in this pool, as client-IP tables do.
                let svc = &hs.svc;
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

/// The request's host (authority, else Host header), None when empty.
fn req_host(req: &Request<Incoming>) -> Option<&str> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))?;
    (!host.is_empty()).then_some(host)
}

fn req_path(req: &Request<Incoming>) -> String {
    req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string()
}

pub async fn handle(
    mut req: Request<Incoming>,
    client: ClientAddr,
    orig: OrigDstAddr,
    hs: Arc<HttpService>,
    conn: Arc<ConnState>,
) -> Response<ResponseBody> {
    let in_flight = InFlight::new(conn);
    let h2 = req.version() == Version::HTTP_2;
    if h2 {
        hs.metrics.h2_streams.inc();
    }
    let started = Instant::now();
    let svc = &hs.svc;
    let logged = (svc.config.access_log != AccessLog::Off).then(|| {
        Box::new(Logged {
            host: req_host(&req).unwrap_or_default().to_string(),
            method: req.method().to_string(),
            path: req_path(&req),
        })
    });
    let facts = Facts { started, client, logged, h2 };

    if svc.config.mode == Mode::Redirect {
        let host = req_host(&req).unwrap_or_default();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return plain(&hs, facts, in_flight, StatusCode::BAD_REQUEST, "no usable Host header\n".into());
        }
        let host = super::route::bare_host(host).to_string();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let location = format!("https://{host}{}", req_path(&req));
        let mut r =
            plain(&hs, facts, in_flight, StatusCode::MOVED_PERMANENTLY, format!("moved to {location}\n"));
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }

    let routed =
        if svc.routes.is_empty() { None } else { route(&svc.routes, req_host(&req), req.uri().path()) };
    let pool = routed.unwrap_or_else(|| svc.default_pool()).clone();
    let tls = if hs.upstream_tls.is_empty() { None } else { hs.upstream_tls.get(&pool.name) };
    let source = svc.upstream_source(client);
    let now = started;
    let cookies = || req.headers().get_all(header::COOKIE).into_iter().map(HeaderValue::as_bytes);
    let hint = preferred(&hs, &pool, cookies, now);

    // Choose and connect; nothing has been sent yet, so a failure may try another server.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut last_error = String::new();
    let (i, server, key, mut sender, mut guard) = loop {
        if attempts >= MAX_ATTEMPTS {
            let text = format!(
                "502 bad gateway: no server of pool {} accepted the connection ({last_error})\n",
                pool.name
            );
            return plain(&hs, facts, in_flight, StatusCode::BAD_GATEWAY, text);
        }
        let Some(i) = svc.choose_in(&pool, client.ip(), hint, &tried[..attempts], now) else {
            svc.metrics.no_server.inc();
            if attempts == 0 {
                if svc.no_server_log.allow() {
                    tracing::warn!(service = %svc.config.name, pool = %pool.name, %client, "no server available: 503");
                }
                let text = format!("503 service unavailable: no server of pool {} is up\n", pool.name);
                return plain(&hs, facts, in_flight, StatusCode::SERVICE_UNAVAILABLE, text);
            }
            let text = format!(
                "502 bad gateway: no server of pool {} accepted the connection ({last_error})\n",
                pool.name
            );
            return plain(&hs, facts, in_flight, StatusCode::BAD_GATEWAY, text);
        };
        let server = pool.servers[i].clone();
        let key = UpstreamKey { server: server.target(orig.port()), source, tls: tls.map_or(0, |t| t.id()) };
        let guard = ActiveGuard::new(server.clone());
        // A pooled connection the server closed meanwhile is not the server's fault: open a
        // fresh one to the same server before counting a failure.
        let pooled = match in_flight.0.upstream.checkout(&key) {
            Some(mut s) => s.ready().await.ok().map(|()| s),
            None => None,
        };
        let sender = match pooled {
            Some(s) => Ok(s),
            None => connect(&key, tls, svc.config.connect_timeout, &in_flight.0.driver).await,
        };
        match sender {
            Ok(mut s) => match s.ready().await {
                Ok(()) => break (i, server, key, s, guard),
                Err(e) => last_error = format!("{}: {e}", server.label),
            },
            Err(e) => {
                server.metrics.connect_errors.inc();
                tracing::warn!(service = %svc.config.name, %client, server = %server.label, "upstream failed, trying another server: {e}");
                last_error = e.to_string();
            }
        }
        tried[attempts] = i;
        attempts += 1;
    };
    guard.connected();

    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    if facts.h2 {
        join_cookies(&mut parts.headers);
    }
    if !parts.headers.contains_key(header::HOST) {
        // Then the host can only come from the request's authority (HTTP/2, absolute form).
        if let Some(a) = parts.uri.authority().filter(|a| !a.as_str().is_empty()) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if svc.config.source != Source::Client {
        // The server cannot see the client: tell it, in the old and the standard header.
        let ip = client.ip();
        let _ = HeaderValue::from_str(&ip.to_string()).map(|v| parts.headers.append("x-forwarded-for", v));
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static(hs.scheme));
        let for_ = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
        let fwd = format!("for={for_};proto={}", hs.scheme);
        let _ = HeaderValue::from_str(&fwd).map(|v| parts.headers.append("forwarded", v));
    }
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // Origin form (what HTTP/1.1 clients send) is forwarded as parsed.
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = path.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
    }
    let body_sent = Arc::new(BodySent::default());
    let up_req = Request::from_parts(
        parts,
        RequestBody::new(body, server.metrics.bytes_to_server.clone(), body_sent.clone()),
    );

    // The response timeout runs once the request body is sent whole, not during the upload.
    let timeout = svc.config.response_timeout;
    let exchange = sender.send_request(up_req);
    tokio::pin!(exchange);
    let answered = tokio::select! {
        r = &mut exchange => Ok(r),
        _ = body_sent.wait() => tokio::time::timeout(timeout, &mut exchange).await,
    };
    let resp = match answered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(service = %svc.config.name, %client, server = %server.label, "server response failed: {e}");
            let text = format!("502 bad gateway: server {} failed: {e}\n", server.label);
            return plain(&hs, facts, in_flight, StatusCode::BAD_GATEWAY, text);
        }
        Err(_) => {
            tracing::warn!(service = %svc.config.name, %client, server = %server.label, "no response within {timeout:?}");
            let text =
                format!("504 gateway timeout: server {} did not answer within {timeout:?}\n", server.label);
            return plain(&hs, facts, in_flight, StatusCode::GATEWAY_TIMEOUT, text);
        }
    };
    let mut resp = resp;
    let status = resp.status();
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
    let mut active = Some(guard);
    if upgraded {
        // The tunnel outlives this request: it keeps the server's connection count, its bytes
        // are counted, and a stopping portier waits for it like for any connection.
        let server_upgrade = hyper::upgrade::on(&mut resp);
        let cu = client_upgrade.expect("checked above");
        let (srv, tunnel_guard, drain_guard) = (server.clone(), active.take(), hs.drain.enter());
        tokio::spawn(async move {
            match tokio::try_join!(cu, server_upgrade) {
                Ok((c, s)) => {
                    let r = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(s)).await;
                    if let Ok((up, down)) = r {
                        srv.metrics.bytes_to_server.inc_by(up);
                        srv.metrics.bytes_to_client.inc_by(down);
                    }
                }
                Err(e) => tracing::debug!(server = %srv.label, "upgrade failed: {e}"),
            }
            drop((tunnel_guard, drain_guard));
        });
    }
    if let Some(Sticky::ServerCookie { name, table }) = &svc.sticky {
        for v in resp.headers().get_all(header::SET_COOKIE) {
            if let Some(value) = set_cookie_value(v.as_bytes(), name) {
                table.set(value.to_string(), server.config.address, Instant::now());
            }
        }
    }
    let (mut rparts, rbody) = resp.into_parts();
    if !upgraded {
        hop_by_hop(&mut rparts.headers, false);
    }
    if let Some(Sticky::Cookie { name, expire }) = &svc.sticky {
        // Set on every response, which also refreshes Max-Age: the cookie expires `expire`
        // after the client's last request, like the client-IP tables.
        let value = pool.cookie_value(i);
        {
            let secure = if hs.scheme == "https" { "; Secure" } else { "" };
            let c = format!("{name}={value}; Path=/; Max-Age={}; HttpOnly{secure}", expire.as_secs());
            if let Ok(v) = HeaderValue::from_str(&c) {
                rparts.headers.append(header::SET_COOKIE, v);
            }
        }
    }
    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
    if let Some(c) = hs.request_counters.get(&(Arc::as_ptr(&pool) as usize, i)) {
        c[class].inc();
    }
    let finish = Exchange {
        hs: hs.clone(),
        facts,
        status: status.as_u16(),
        server: Some(server.clone()),
        sent: Some(body_sent),
        reuse: (!upgraded).then_some((key, sender)),
        _active: active,
        _in_flight: in_flight,
    };
    Response::from_parts(
        rparts,
        ResponseBody::stream(rbody, server.metrics.bytes_to_client.clone(), Box::new(finish)),
    )
}
