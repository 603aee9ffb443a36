//! One request on the fast path: route, choose a server (stickiness, retries on another
//! server while nothing was sent), send head and body in one write, read the response head
//! (1xx passed on), write it with portier's own fields and pass the body through; or answer
//! 502/503/504/400 itself.

use std::io::Write;
use std::sync::Arc;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::chunked::{ChunkError, Chunked};
use super::head::{self, Framing, Parsed};
use super::{send, Conn, Next, COALESCE, READ_SIZE};
use crate::balance::{ActiveGuard, Server};
use crate::config::{AccessLog, Source};
use crate::proxy::http::log::{format, AccessRecord};
use crate::proxy::http::route::{route, set_cookie_value};
use crate::proxy::http::upstream::{open, ServerIo, UpstreamKey};
use crate::proxy::retry::MAX_ATTEMPTS;
use crate::state::Sticky;

/// Why a response head did not arrive.
enum RespError {
    /// The server closed before sending a byte (a reused connection may be retried).
    Eof,
    Timeout,
    Io(std::io::Error),
    Invalid,
    /// The client went away while 1xx responses were relayed.
    Client,
}

/// A message body being forwarded: how much of it is still to come.
enum Body {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl Body {
    fn new(f: Framing) -> Body {
        match f {
            Framing::Empty | Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Chunked::default()),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    /// How many bytes at the start of `data` belong to the body.
    fn take(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let n = match self {
            Body::Done => 0,
            Body::UntilClose => data.len(),
            Body::Length(left) => {
                let n = (data.len() as u64).min(*left);
                *left -= n;
                if *left == 0 {
                    *self = Body::Done;
                }
                n as usize
            }
            Body::Chunked(c) => {
                let n = c.feed(data)?;
                if c.is_done() {
                    *self = Body::Done;
                }
                n
            }
        };
        Ok(n)
    }

    fn is_done(&self) -> bool {
        matches!(self, Body::Done)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<'_, IO> {
    /// Writes a response portier makes itself; with a request body left unread the
    /// connection cannot carry another request, so it closes.
    async fn reply(&mut self, facts: &Facts, status: u16, reason: &str, text: &str, close: bool) -> Next {
        self.hs.metrics.generated(status);
        // The request is answered: it leaves the buffer whole (its body was read whole).
        self.buf.advance(self.pending);
        self.pending = 0;
        self.out.clear();
        let conn = if close { "Connection: close\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\n{conn}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
            text.len()
        );
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(text.as_bytes());
        let ok = send(&mut *self.io, &self.out).await.is_ok();
        self.finish(facts, status, None, (0, text.len() as u64), ok);
        if close || !ok {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// One request, its head in `buf`.
    pub(super) async fn exchange(&mut self) -> Next {
        let hs = self.hs;
        let svc = &hs.svc;
        let started = std::time::Instant::now();
        let client_close = self.req.close;
        let host = self
            .req
            .host
            .clone()
            .and_then(|r| std::str::from_utf8(&self.buf[r]).ok())
            .filter(|h| !h.is_empty());
        // httparse hands out the target as text.
        let target = std::str::from_utf8(&self.buf[self.req.target.clone()]).unwrap_or("/");
        let logged = (svc.config.access_log != AccessLog::Off).then(|| {
            Box::new(Logged {
                host: host.unwrap_or_default().to_string(),
                method: String::from_utf8_lossy(&self.buf[self.req.method.clone()]).into_owned(),
                path: target.to_string(),
            })
        });
        let facts = Facts { started, logged };
        if let Some(e) = self.bad_framing.take() {
            return self.bad_body(&facts, e).await;
        }
        let method = &self.buf[self.req.method.clone()];
        let head_request = method == b"HEAD";
        let idempotent = matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE");
        let path = target.split('?').next().unwrap_or(target);
        let routed = if svc.routes.is_empty() { None } else { route(&svc.routes, host, path) };
        let pool = routed.unwrap_or_else(|| svc.default_pool()).clone();
        let tls = if hs.upstream_tls.is_empty() { None } else { hs.upstream_tls.get(&pool.name) };
        let source = svc.upstream_source(self.client);
        let now = started;
        let hint = crate::proxy::http::forward::preferred(
            hs,
            &pool,
            || self.req.fields_named(&self.buf, b"cookie"),
            now,
        );

        // Choose and connect; nothing has been sent yet, so a failure may try another server.
        let mut tried = [0usize; MAX_ATTEMPTS];
        let mut attempts = 0;
        let mut last_error = String::new();
        let (i, server, key, mut up, reused, mut guard) = loop {
            let chosen = if attempts < MAX_ATTEMPTS {
                let c = svc.choose_in(&pool, self.client.ip(), hint, &tried[..attempts], now);
                if c.is_none() {
                    svc.metrics.no_server.inc();
                }
                c
            } else {
                None
            };
            let Some(i) = chosen else {
                if attempts == 0 {
                    if svc.no_server_log.allow() {
                        tracing::warn!(service = %svc.config.name, pool = %pool.name, client = %self.client, "no server available: 503");
                    }
                    let text = format!("503 service unavailable: no server of pool {} is up\n", pool.name);
                    return self.reply(&facts, 503, "Service Unavailable", &text, false).await;
                }
                let text = format!(
                    "502 bad gateway: no server of pool {} accepted the connection ({last_error})\n",
                    pool.name
                );
                return self.reply(&facts, 502, "Bad Gateway", &text, false).await;
            };
            let server = pool.servers[i].clone();
            let key = UpstreamKey {
                server: server.target(self.orig.port()),
                source,
                tls: tls.map_or(0, |t| t.id()),
            };
            let guard = ActiveGuard::new(server.clone());
            if let Some(io) = self.checkout(&key) {
                break (i, server, key, io, true, guard);
            }
            match open(&key, tls, svc.config.connect_timeout).await {
                Ok(io) => break (i, server, key, io, false, guard),
                Err(e) => {
                    server.metrics.connect_errors.inc();
                    tracing::warn!(service = %svc.config.name, client = %self.client, server = %server.label, "upstream failed, trying another server: {e}");
                    last_error = e.to_string();
                }
            }
            tried[attempts] = i;
            attempts += 1;
        };
        guard.connected();

        // The head and the body (read whole by `read_body`) in one write.
        self.out.clear();
        let snat = svc.config.source != Source::Client;
        // Behind SNAT portier says which scheme the client used; a client's own claim goes.
        let own: &[&[u8]] = if snat { &[b"x-forwarded-proto"] } else { &[] };
        self.req.write_request(&self.buf, &mut self.out, own);
        if snat {
            // The server cannot see the client: tell it, in the old and the standard field.
            // Written in place (io::Write on the Vec): no string per request.
            let (ip, scheme) = (self.client.ip(), hs.scheme);
            let _ =
                write!(self.out, "X-Forwarded-For: {ip}\r\nX-Forwarded-Proto: {scheme}\r\nForwarded: for=");
            let _ = if ip.is_ipv6() { write!(self.out, "\"[{ip}]\"") } else { write!(self.out, "{ip}") };
            let _ = write!(self.out, ";proto={scheme}\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&self.buf[self.req.len..self.pending]);
        let bytes_in = (self.pending - self.req.len) as u64;
        self.buf.advance(self.pending);
        self.pending = 0;

        // Sent whole in one write: if a reused connection had been closed by the server in
        // the meantime (so it never saw the request), an idempotent request goes again on a
        // fresh one (RFC 9110 9.2.2); any other gets 502, as it may have run.
        let mut may_retry = reused && idempotent;
        let timeout = svc.config.response_timeout;
        let answer = loop {
            let r = match send(&mut up, &self.out).await {
                Err(e) => Err(RespError::Io(e)),
                Ok(()) => self.read_response(&mut up, Instant::now() + timeout, head_request).await,
            };
            match r {
                Err(RespError::Eof | RespError::Io(_)) if may_retry => {
                    may_retry = false;
                    match open(&key, tls, svc.config.connect_timeout).await {
                        Ok(io) => up = io,
                        Err(e) => {
                            server.metrics.connect_errors.inc();
                            break Err(RespError::Io(std::io::Error::other(e.to_string())));
                        }
                    }
                }
                r => break r,
            }
        };
        server.metrics.bytes_to_server.inc_by(bytes_in);
        match answer {
            Ok(()) => {}
            Err(RespError::Client) => {
                self.finish(&facts, 0, Some(&server), (bytes_in, 0), false);
                return Next::Close;
            }
            Err(RespError::Timeout) => {
                tracing::warn!(service = %svc.config.name, client = %self.client, server = %server.label, "no response within {timeout:?}");
                let text = format!(
                    "504 gateway timeout: server {} did not answer within {timeout:?}\n",
                    server.label
                );
                return self.reply(&facts, 504, "Gateway Timeout", &text, true).await;
            }
            Err(e) => {
                let why = match e {
                    RespError::Eof => "connection closed before a response".to_string(),
                    RespError::Io(e) => e.to_string(),
                    _ => "invalid response head".to_string(),
                };
                tracing::warn!(service = %svc.config.name, client = %self.client, server = %server.label, "server response failed: {why}");
                let text = format!("502 bad gateway: server {} failed: {why}\n", server.label);
                return self.reply(&facts, 502, "Bad Gateway", &text, true).await;
            }
        }

        // The response head, with portier's own fields.
        let status = self.resp.status;
        if let Some(Sticky::ServerCookie { name, table }) = &svc.sticky {
            for v in self.resp.fields_named(&self.sbuf, b"set-cookie") {
                if let Some(value) = set_cookie_value(v, name) {
                    table.set(value.to_string(), server.config.address, std::time::Instant::now());
                }
            }
        }
        let rframing = self.resp.framing.unwrap_or(Framing::UntilClose);
        let close = client_close || rframing == Framing::UntilClose;
        self.out.clear();
        self.resp.write_response(&self.sbuf, &mut self.out);
        if let Some(Sticky::Cookie { name, expire }) = &svc.sticky {
            // On every response, which also refreshes Max-Age (see forward.rs).
            let secure = if hs.scheme == "https" { "; Secure" } else { "" };
            let _ = write!(
                self.out,
                "Set-Cookie: {name}={}; Path=/; Max-Age={}; HttpOnly{secure}\r\n",
                pool.cookie_value(i),
                expire.as_secs()
            );
        }
        if close {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.sbuf.advance(self.resp.len);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        if let Some(c) = hs.request_counters.get(&(Arc::as_ptr(&pool) as usize, i)) {
            c[class].inc();
        }

        let mut rbody = Body::new(rframing);
        let (bytes_out, complete) = self.download(&mut up, &mut rbody).await;
        server.metrics.bytes_to_client.inc_by(bytes_out);
        let reusable = complete && self.resp.reusable() && self.sbuf.is_empty();
        drop(guard);
        if reusable {
            // This client connection's own: a server connection is never lent to another
            // client connection (IIS ties NTLM/Negotiate logins to the connection).
            self.checkin(key, up);
        }
        self.finish(&facts, status, Some(&server), (bytes_in, bytes_out), complete);
        if !complete || close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Reads a response head into `sbuf`; 1xx responses are passed to the client on the way.
    async fn read_response(
        &mut self,
        up: &mut ServerIo,
        deadline: Instant,
        head_request: bool,
    ) -> Result<(), RespError> {
        self.sbuf.clear();
        let mut checked = 0;
        loop {
            if !self.sbuf.is_empty() && head::may_be_complete(&self.sbuf, checked) {
                match self.resp.parse_response(&self.sbuf, head_request) {
                    Parsed::Done if (100..200).contains(&self.resp.status) => {
                        if self.resp.status == 101 {
                            return Err(RespError::Invalid);
                        }
                        let mut interim = Vec::new();
                        self.resp.write_response(&self.sbuf, &mut interim);
                        interim.extend_from_slice(b"\r\n");
                        self.sbuf.advance(self.resp.len);
                        if send(&mut *self.io, &interim).await.is_err() {
                            return Err(RespError::Client);
                        }
                        checked = 0;
                        continue;
                    }
                    Parsed::Done => return Ok(()),
                    Parsed::Invalid => return Err(RespError::Invalid),
                    Parsed::Partial => {}
                }
            }
            checked = self.sbuf.len();
            if self.sbuf.len() > crate::proxy::http::MAX_HEAD {
                return Err(RespError::Invalid);
            }
            self.sbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, up.read_buf(&mut self.sbuf)).await {
                Err(_) => return Err(RespError::Timeout),
                Ok(Ok(0)) if self.sbuf.is_empty() => return Err(RespError::Eof),
                Ok(Ok(0)) => return Err(RespError::Invalid),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(RespError::Io(e)),
            }
        }
    }

    /// Sends the response head in `out` and its body to the client; (body bytes, whether
    /// the whole response went through).
    async fn download(&mut self, up: &mut ServerIo, body: &mut Body) -> (u64, bool) {
        let mut sent = 0u64;
        let n = match body.take(&self.sbuf[..self.sbuf.len().min(COALESCE)]) {
            Ok(n) => n,
            Err(_) => return (0, false),
        };
        self.out.extend_from_slice(&self.sbuf[..n]);
        self.sbuf.advance(n);
        sent += n as u64;
        if send(&mut *self.io, &self.out).await.is_err() {
            return (sent, false);
        }
        while !body.is_done() {
            if self.sbuf.is_empty() {
                self.sbuf.reserve(READ_SIZE);
                match up.read_buf(&mut self.sbuf).await {
                    Ok(0) if matches!(body, Body::UntilClose) => {
                        *body = Body::Done;
                        break;
                    }
                    Ok(0) | Err(_) => return (sent, false),
                    Ok(_) => {}
                }
            }
            let Ok(n) = body.take(&self.sbuf) else { return (sent, false) };
            if send(&mut *self.io, &self.sbuf[..n]).await.is_err() {
                return (sent, false);
            }
            self.sbuf.advance(n);
            sent += n as u64;
        }
        (sent, true)
    }

    /// The client's body framing is broken: nothing sensible can follow on this connection.
    async fn bad_body(&mut self, facts: &Facts, e: ChunkError) -> Next {
        self.hs.metrics.connection_errors.inc();
        tracing::debug!(service = %self.hs.svc.config.name, client = %self.client, "bad request body: {e}");
        self.reply(facts, 400, "Bad Request", &format!("400 bad request: {e}\n"), true).await
    }

    /// Metrics and the access log line of one exchange.
    fn finish(
        &self,
        facts: &Facts,
        status: u16,
        server: Option<&Arc<Server>>,
        bytes: (u64, u64),
        complete: bool,
    ) {
        let duration = facts.started.elapsed();
        self.hs.metrics.duration.observe(duration.as_secs_f64());
        let Some(logged) = &facts.logged else { return };
        let rec = AccessRecord {
            service: &self.hs.svc.config.name,
            client: self.client.0,
            host: &logged.host,
            method: &logged.method,
            path: &logged.path,
            status,
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            server: server.map(|s| s.label.as_str()).unwrap_or("-"),
            duration,
            complete,
        };
        if let Some(line) = format(&rec, self.hs.svc.config.access_log) {
            tracing::info!(target: "portier::access", "{line}");
        }
    }
}

struct Facts {
    started: std::time::Instant,
    /// Host, method and path, copied only when the access log is on.
    logged: Option<Box<Logged>>,
}

struct Logged {
    host: String,
    method: String,
    path: String,
}
