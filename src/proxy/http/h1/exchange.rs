//! One request on the fast path: route, choose a server (stickiness, retries on another
//! server while nothing was sent), send head and body in one write, read the response head
//! (1xx passed on), write it with portier's own fields and pass the body through; or answer
//! 502/503/504/400 itself.

use std::io::Write;
use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::chunked::{ChunkError, Chunked};
use super::head::{self, Framing, Parsed};
use super::idle::{connection_auth, OwnIdle, SharedIdle};
use super::{send, Conn, Next, COALESCE, READ_SIZE};
use crate::balance::ServerLive;
use crate::config::ServerReuse;
use crate::proxy::http::policy::{Answer, Connect, Connected, End, Facts};
use crate::proxy::http::upstream::{open, ServerIo, UpstreamError, UpstreamKey, UpstreamTlsConfig};

/// The fast path's way to a server: one of the client connection's idle connections, else
/// one from the service's shared pool (when given), else a new one.
struct H1Connect<'c> {
    idle: &'c mut OwnIdle,
    /// Only for requests portier may send again: a shared connection the server has just
    /// closed is then retried on a fresh one, never answered 502.
    shared: Option<&'c SharedIdle>,
    tls: Option<&'c UpstreamTlsConfig>,
    timeout: Duration,
}

/// A connection to a server for one request.
struct Up {
    io: ServerIo,
    /// Idle before: it may have been closed by the server meanwhile.
    reused: bool,
    /// It carried NTLM or Negotiate authentication (see `idle`).
    private: bool,
}

impl Connect for H1Connect<'_> {
    type Conn = Up;

    async fn connect(&mut self, key: &UpstreamKey) -> Result<Self::Conn, UpstreamError> {
        if let Some((io, private)) = self.idle.checkout(key) {
            return Ok(Up { io, reused: true, private });
        }
        if let Some(io) = self.shared.and_then(|s| s.take(key)) {
            return Ok(Up { io, reused: true, private: false });
        }
        // Boxed, as below: opening a connection (TCP, then maybe TLS) is the largest state of
        // an exchange, and laid out inline every idle keep-alive connection would reserve it.
        Box::pin(open(key, self.tls, self.timeout)).await.map(|io| Up { io, reused: false, private: false })
    }
}

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
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {reason}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\n{}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
            text.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        self.out.extend_from_slice(text.as_bytes());
        let ok = send(&mut *self.io, &self.out).await.is_ok();
        let end = End { status, server: None, bytes_in: 0, bytes_out: text.len() as u64, complete: ok };
        self.hs.finish(facts, end);
        if close || !ok {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// One of the policy's answers for a request to `pool`.
    async fn answer(&mut self, facts: &Facts, a: Answer, pool: &str, close: bool) -> Next {
        self.reply(facts, a.status(), a.reason(), &a.text(pool), close).await
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
        let uri = std::str::from_utf8(&self.buf[self.req.target.clone()]).unwrap_or("/");
        let facts = hs.facts(started, self.client, || (host, &self.buf[self.req.method.clone()], uri));
        if let Some(e) = self.bad_framing.take() {
            return self.bad_body(&facts, e).await;
        }
        let method = &self.buf[self.req.method.clone()];
        let head_request = method == b"HEAD";
        let idempotent = matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE");
        let path = uri.split('?').next().unwrap_or(uri);
        let target = hs.target(host, path);
        let now = started;
        let hint = hs.hint(&target, || self.req.fields_named(&self.buf, b"cookie"), now);
        let timeout = svc.config.connect_timeout;
        let sharing = idempotent && svc.config.server_reuse == ServerReuse::Shared;
        let shared = sharing.then_some(&*hs.shared_idle);
        let mut how = H1Connect { idle: &mut self.idle, shared, tls: target.tls, timeout };
        let chosen = hs.connect(&target, self.client, self.orig, hint, now, &mut how).await;
        let Connected { index: i, server, key, conn, guard } = match chosen {
            Ok(c) => c,
            Err(a) => return self.answer(&facts, a, &target.pool.name, false).await,
        };
        let Up { io: mut up, reused, mut private } = conn;
        private |= self.req.fields_named(&self.buf, b"authorization").any(connection_auth);

        // The head and the body (read whole by `read_body`) in one write.
        self.out.clear();
        let told = hs.client_fields(self.client);
        // Behind SNAT portier says which scheme the client used; a client's own claim goes.
        let own: &[&[u8]] = if told.is_some() { &[b"x-forwarded-proto"] } else { &[] };
        self.req.write_request(&self.buf, &mut self.out, own);
        if let Some(f) = told {
            // Written in place (io::Write on the Vec): no string per request.
            let _ = write!(
                self.out,
                "X-Forwarded-For: {}\r\nX-Forwarded-Proto: {}\r\nForwarded: {}\r\n",
                f.ip,
                f.proto,
                f.forwarded()
            );
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
                    match Box::pin(open(&key, target.tls, svc.config.connect_timeout)).await {
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
                let end = End { status: 0, server: Some(&server), bytes_in, bytes_out: 0, complete: false };
                hs.finish(&facts, end);
                return Next::Close;
            }
            Err(RespError::Timeout) => {
                let a = hs.response_timed_out(self.client, &server);
                return self.answer(&facts, a, &target.pool.name, true).await;
            }
            Err(e) => {
                let why: &dyn std::fmt::Display = match &e {
                    RespError::Eof => &"connection closed before a response",
                    RespError::Io(e) => e,
                    _ => &"invalid response head",
                };
                let a = hs.response_failed(self.client, &server, why);
                return self.answer(&facts, a, &target.pool.name, true).await;
            }
        }

        // The response head, with portier's own fields.
        let status = self.resp.status;
        hs.learn_cookies(|| self.resp.fields_named(&self.sbuf, b"set-cookie"), &server);
        // An NTLM or Negotiate challenge: the handshake's next leg must come on this
        // connection, and the login then lives on it.
        private |= self.resp.fields_named(&self.sbuf, b"www-authenticate").any(connection_auth);
        let rframing = self.resp.framing.unwrap_or(Framing::UntilClose);
        let close = client_close || rframing == Framing::UntilClose;
        self.out.clear();
        self.resp.write_response(&self.sbuf, &mut self.out);
        if let Some(c) = hs.sticky_cookie(&target, i) {
            // Written in place (io::Write on the Vec): no string per request.
            let _ = write!(self.out, "Set-Cookie: {c}\r\n");
        }
        if close {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.sbuf.advance(self.resp.len);
        hs.count(&target, i, status);

        let mut rbody = Body::new(rframing);
        let (bytes_out, complete) = self.download(&mut up, &mut rbody, &server.live).await;
        server.metrics.bytes_to_client.inc_by(bytes_out);
        let reusable = complete && self.resp.reusable() && self.sbuf.is_empty();
        drop(guard);
        if reusable {
            // The client connection's own until it ends; then lent to others unless private.
            self.checkin(key, up, private);
        }
        hs.finish(&facts, End { status, server: Some(&server), bytes_in, bytes_out, complete });
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
    async fn download(&mut self, up: &mut ServerIo, body: &mut Body, live: &ServerLive) -> (u64, bool) {
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
                if live.is_cut() {
                    // The server left the configuration and its drain time is over.
                    return (sent, false);
                }
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
}
