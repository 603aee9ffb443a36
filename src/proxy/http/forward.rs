//! One request: route, choose a server (cookie, server cookie or client IP stickiness), get
//! an upstream connection (pooled or new, retried on another server while nothing was sent),
//! forward head and streamed body, stream the response back, then finish the exchange.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::body::{BodySent, Finish, RequestBody, ResponseBody};
use super::policy::{Answer, Connect, Connected, End, Facts};
use super::upstream::{connect, ConnFuture, UpstreamError, UpstreamKey, UpstreamPool, UpstreamTlsConfig};
use super::{ConnState, HttpService, InFlight};
use crate::balance::{ActiveGuard, Server};
use crate::config::Mode;
use crate::net::{ClientAddr, OrigDstAddr};

struct Exchange {
    hs: Arc<HttpService>,
    facts: Facts,
    h2: bool,
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
        if this.h2 {
            this.hs.metrics.h2_streams.dec();
        }
        let bytes_in = this.sent.as_ref().map_or(0, |s| s.seen.load(std::sync::atomic::Ordering::Relaxed));
        let end = End { status: this.status, server: this.server.as_deref(), bytes_in, bytes_out, complete };
        this.hs.finish(&this.facts, end);
    }
}

/// hyper's way to a server: a pooled `SendRequest` of this client connection, else a new
/// connection whose I/O runs on the connection's driver.
struct HyperConnect<'c> {
    upstream: &'c UpstreamPool,
    driver: &'c tokio::sync::mpsc::UnboundedSender<ConnFuture>,
    tls: Option<&'c UpstreamTlsConfig>,
    timeout: Duration,
}

impl Connect for HyperConnect<'_> {
    type Conn = SendRequest<RequestBody>;

    async fn connect(&mut self, key: &UpstreamKey) -> Result<Self::Conn, UpstreamError> {
        // A pooled connection the server closed meanwhile is not the server's fault: open a
        // fresh one to the same server before counting a failure.
        if let Some(mut s) = self.upstream.checkout(key) {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let mut s = connect(key, self.tls, self.timeout, self.driver).await?;
        s.ready().await.map_err(|e| UpstreamError::Handshake(key.server, e))?;
        Ok(s)
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
    h2: bool,
    in_flight: InFlight,
    status: StatusCode,
    text: String,
) -> Response<ResponseBody> {
    hs.metrics.generated(status.as_u16());
    let finish = Exchange {
        hs: hs.clone(),
        facts,
        h2,
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

/// One of the policy's answers (no server, server failed, timeout) for a request to `pool`.
fn answer(
    hs: &Arc<HttpService>,
    facts: Facts,
    h2: bool,
    in_flight: InFlight,
    a: Answer,
    pool: &str,
) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(a.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    plain(hs, facts, h2, in_flight, status, a.text(pool))
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

/// Equal Content-Length fields (hyper accepts them as one length) go out as one.
fn one_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (values.next().cloned(), values.next()) {
        headers.insert(header::CONTENT_LENGTH, first);
    }
}

/// Refuses a request with more than one Host field, or whose Host names another host than
/// its target's authority (absolute form, HTTP/2 `:authority`); when both are present and
/// agree, the authority replaces Host, so the server sees the name the request was routed by.
fn one_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let Some(authority) = req.uri().authority().map(|a| a.as_str()).filter(|a| !a.is_empty()) else {
        return Ok(());
    };
    if let Some(host) = host {
        let named = host.to_str().map(super::route::bare_host).unwrap_or_default();
        if !named.eq_ignore_ascii_case(super::route::bare_host(authority)) {
            return Err("the Host header names another host than the request target");
        }
        let v = HeaderValue::from_str(authority)
            .map_err(|_| "the request target's authority is not a valid Host")?;
        req.headers_mut().insert(header::HOST, v);
    }
    Ok(())
}

/// `orig` as a Host value: the port left out when it is HTTP's or HTTPS's own.
fn host_of(orig: OrigDstAddr) -> String {
    let ip = match orig.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    match orig.port() {
        80 | 443 => ip,
        p => format!("{ip}:{p}"),
    }
}

/// Requests portier answers itself instead of forwarding: CONNECT (a reverse proxy opens no
/// tunnels to where a client asks) and an HTTP/1.1 request without Host (RFC 9112 3.2).
fn refused<B>(req: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if req.method() == hyper::Method::CONNECT {
        return Some((StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported here\n"));
    }
    let no_host = !req.headers().contains_key(header::HOST) && req.uri().authority().is_none();
    (req.version() == Version::HTTP_11 && no_host)
        .then_some((StatusCode::BAD_REQUEST, "an HTTP/1.1 request needs a Host header\n"))
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
    let facts = hs.facts(started, client, || {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        (req_host(&req), req.method().as_str().as_bytes(), path)
    });

    // One name for routing and for the server (RFC 9112 3.2, RFC 9113 8.3.1): the fast path
    // hands over every head with two Hosts or an absolute-form target, so this is the one check.
    if let Err(why) = one_host(&mut req) {
        return plain(&hs, facts, h2, in_flight, StatusCode::BAD_REQUEST, format!("{why}\n"));
    }
    if let Some((status, why)) = refused(&req) {
        return plain(&hs, facts, h2, in_flight, status, why.into());
    }

    if svc.config.mode == Mode::Redirect {
        let host = req_host(&req).unwrap_or_default();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return plain(
                &hs,
                facts,
                h2,
                in_flight,
                StatusCode::BAD_REQUEST,
                "no usable Host header\n".into(),
            );
        }
        let host = super::route::bare_host(host).to_string();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let location = format!("https://{host}{}", req_path(&req));
        let mut r =
            plain(&hs, facts, h2, in_flight, StatusCode::MOVED_PERMANENTLY, format!("moved to {location}\n"));
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }

    let target = hs.target(req_host(&req), req.uri().path());
    let now = started;
    let hint = hs.hint(
        &target,
        || req.headers().get_all(header::COOKIE).into_iter().map(HeaderValue::as_bytes),
        now,
    );
    let mut how = HyperConnect {
        upstream: &in_flight.0.upstream,
        driver: &in_flight.0.driver,
        tls: target.tls,
        timeout: svc.config.connect_timeout,
    };
    let chosen = hs.connect(&target, client, orig, hint, now, &mut how).await;
    let Connected { index: i, server, key, conn: mut sender, guard } = match chosen {
        Ok(c) => c,
        Err(a) => return answer(&hs, facts, h2, in_flight, a, &target.pool.name),
    };

    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    one_length(&mut parts.headers);
    if h2 {
        join_cookies(&mut parts.headers);
    }
    if !parts.headers.contains_key(header::HOST) {
        // Then the host can only come from the request's authority (HTTP/2, absolute form);
        // an HTTP/1.0 request without either goes out as HTTP/1.1, which needs a Host: the
        // address the client connected to.
        let host = match parts.uri.authority().filter(|a| !a.as_str().is_empty()) {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => HeaderValue::try_from(host_of(orig)).ok(),
        };
        if let Some(v) = host {
            parts.headers.insert(header::HOST, v);
        }
    }
    if let Some(f) = hs.client_fields(client) {
        // The server cannot see the client: tell it, in the old and the standard header.
        let _ = HeaderValue::try_from(f.ip.to_string()).map(|v| parts.headers.append("x-forwarded-for", v));
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static(f.proto));
        let _ =
            HeaderValue::try_from(f.forwarded().to_string()).map(|v| parts.headers.append("forwarded", v));
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
            let a = hs.response_failed(client, &server, &e);
            return answer(&hs, facts, h2, in_flight, a, &target.pool.name);
        }
        Err(_) => {
            let a = hs.response_timed_out(client, &server);
            return answer(&hs, facts, h2, in_flight, a, &target.pool.name);
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
    hs.learn_cookies(
        || resp.headers().get_all(header::SET_COOKIE).into_iter().map(HeaderValue::as_bytes),
        &server,
    );
    let (mut rparts, rbody) = resp.into_parts();
    if !upgraded {
        hop_by_hop(&mut rparts.headers, false);
    }
    if let Some(c) = hs.sticky_cookie(&target, i) {
        if let Ok(v) = HeaderValue::try_from(c.to_string()) {
            rparts.headers.append(header::SET_COOKIE, v);
        }
    }
    hs.count(&target, i, status.as_u16());
    let finish = Exchange {
        hs: hs.clone(),
        facts,
        h2,
        status: status.as_u16(),
        server: Some(server.clone()),
        sent: Some(body_sent),
        reuse: (!upgraded).then_some((key, sender)),
        _active: active,
        _in_flight: in_flight,
    };
    Response::from_parts(
        rparts,
        ResponseBody::stream(
            rbody,
            server.live.clone(),
            server.metrics.bytes_to_client.clone(),
            Box::new(finish),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn one_host_refuses_two_hosts_and_a_host_that_disagrees_with_the_target() {
        assert!(one_host(&mut req("/", &["mail.example.test", "lync.example.test"])).is_err());
        assert!(one_host(&mut req("/", &["mail.example.test", "mail.example.test"])).is_err());
        assert!(one_host(&mut req("http://mail.example.test/", &["lync.example.test"])).is_err());
        for ok in [req("/", &["mail.example.test"]), req("/", &[]), req("http://mail.example.test/", &[])] {
            let mut r = ok;
            let before = r.headers().clone();
            assert_eq!(one_host(&mut r), Ok(()));
            assert_eq!(r.headers(), &before, "nothing to replace");
        }
        // Agreeing (case and port aside): the target's authority is what the server sees.
        let mut r = req("http://mail.example.test:80/owa", &["MAIL.example.test"]);
        assert_eq!(one_host(&mut r), Ok(()));
        assert_eq!(r.headers().get(header::HOST).unwrap(), "mail.example.test:80");
    }

    #[test]
    fn the_host_of_a_request_without_one_is_the_address_it_reached() {
        let at = |s: &str| OrigDstAddr(s.parse().unwrap());
        assert_eq!(host_of(at("198.19.0.10:80")), "198.19.0.10");
        assert_eq!(host_of(at("[2001:db8::10]:443")), "[2001:db8::10]");
        assert_eq!(host_of(at("198.19.0.10:8080")), "198.19.0.10:8080");
    }

    #[test]
    fn connect_and_a_missing_host_are_answered_by_portier() {
        let connect = Request::builder().method("CONNECT").uri("mail.example.test:443").body(()).unwrap();
        assert_eq!(refused(&connect).map(|r| r.0), Some(StatusCode::NOT_IMPLEMENTED));
        let mut no_host = req("/", &[]);
        *no_host.version_mut() = Version::HTTP_11;
        assert_eq!(refused(&no_host).map(|r| r.0), Some(StatusCode::BAD_REQUEST));
        // HTTP/1.0 may omit Host; an absolute target or HTTP/2's :authority names the host.
        *no_host.version_mut() = Version::HTTP_10;
        assert_eq!(refused(&no_host), None);
        assert_eq!(refused(&req("http://mail.example.test/", &[])), None);
        assert_eq!(refused(&req("/", &["mail.example.test"])), None);
    }

    #[test]
    fn equal_lengths_go_out_as_one() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        one_length(&mut h);
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h.get(header::CONTENT_LENGTH).unwrap(), "3");
    }
}
