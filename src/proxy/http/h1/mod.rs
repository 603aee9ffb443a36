//! The HTTP/1.1 fast path: a client connection speaking HTTP/1.1 is served here, one
//! request after the other, without hyper: each head is parsed once into ranges of the read
//! buffer, written to the server with the hop-by-hop fields removed, and bodies pass through
//! as they came (lengths counted, chunked framing scanned, never re-framed). Most requests
//! then cost four system calls and no allocation.
//!
//! What this path does not do itself it hands over, between two requests, to the hyper path
//! with the bytes already read: HTTP/2 (preface or ALPN), HTTP/1.0, upgrades (WebSocket),
//! `Expect: 100-continue`, absolute-form targets, unusual framing, and any head httparse
//! refuses (hyper then answers 400 or 431 as it always did).
//!
//! This file holds the connection loop (heads, small bodies); `exchange.rs` one request;
//! `idle.rs` the server connections kept idle for the next request, the client
//! connection's own and those its service shares; `head.rs` and `chunked.rs` the sans-IO
//! parsing.

pub mod chunked;
mod exchange;
pub mod head;
pub mod idle;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use self::chunked::{ChunkError, Chunked};
use self::head::{Framing, Head, Parsed};
use self::idle::OwnIdle;
use super::upstream::{ServerIo, UpstreamKey};
use super::HttpService;
use crate::config::ServerReuse;
use crate::net::{ClientAddr, OrigDstAddr};

/// How a client connection left the fast path.
pub enum Outcome {
    Closed,
    /// Hyper takes over; these bytes were read from the client and not yet consumed, and
    /// these idle server connections are the client connection's (NTLM logins live on them).
    Handoff(BytesMut, Vec<(UpstreamKey, ServerIo)>),
}

/// Bytes asked of the kernel per read while a body streams.
const READ_SIZE: usize = 16 * 1024;
/// Available body bytes up to this size go out in the same write as their head.
const COALESCE: usize = 32 * 1024;
/// Request bodies up to this size are read whole before the request is forwarded.
const MAX_BUFFERED: usize = 64 * 1024;

/// What to do with the client connection after an exchange.
#[derive(PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

enum HeadRead {
    Ready,
    Closed,
    Handoff,
}

struct Conn<'a, IO> {
    io: &'a mut IO,
    hs: &'a Arc<HttpService>,
    client: ClientAddr,
    orig: OrigDstAddr,
    /// From the client: the head being read, then body bytes and pipelined requests.
    buf: BytesMut,
    /// From the server of the current exchange.
    sbuf: BytesMut,
    out: Vec<u8>,
    req: Head,
    /// Bytes of the current request (head and body) at the start of `buf`.
    pending: usize,
    /// The request's chunked framing was broken (answered 400).
    bad_framing: Option<ChunkError>,
    resp: Head,
    idle: OwnIdle,
}

/// Serves `io` until it closes, or until a request needs hyper.
pub async fn serve<IO>(
    io: &mut IO,
    client: ClientAddr,
    orig: OrigDstAddr,
    hs: &Arc<HttpService>,
    stop: &mut watch::Receiver<bool>,
) -> Outcome
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Conn {
        io,
        hs,
        client,
        orig,
        buf: BytesMut::with_capacity(4096),
        sbuf: BytesMut::new(),
        out: Vec::new(),
        req: Head::default(),
        pending: 0,
        bad_framing: None,
        resp: Head::default(),
        idle: OwnIdle::default(),
    };
    // The first head is due from the accept; later ones from their first byte.
    let mut due = Some(Instant::now());
    let mut last = Instant::now();
    loop {
        match c.read_head(due.take(), last, stop).await {
            HeadRead::Ready => {}
            HeadRead::Closed => {
                c.lend_idle();
                return Outcome::Closed;
            }
            HeadRead::Handoff => {
                let servers = c.idle.0.into_iter().map(|i| (i.key, i.io)).collect();
                return Outcome::Handoff(c.buf, servers);
            }
        }
        let next = c.exchange().await;
        if next == Next::Close || *stop.borrow() {
            // Before the shutdown: the next client may already be waiting for a connection.
            c.lend_idle();
            let _ = c.io.shutdown().await;
            return Outcome::Closed;
        }
        last = Instant::now();
        // Between requests a keep-alive connection holds no buffer: `read_head` takes a small
        // one for the next head, the server's answer and the copy to the client take theirs
        // again (as HAProxy allocates buffers on demand). Thousands of idle keep-alive
        // connections then cost what their sockets and tasks cost, not 20 KB each.
        if c.buf.is_empty() {
            c.buf = BytesMut::new();
        }
        c.sbuf = BytesMut::new();
        c.out = Vec::new();
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<'_, IO> {
    /// Reads until a whole request head is in `buf`: idle timeout before its first byte,
    /// header timeout from then on (or from `due`); then its body (see `read_body`).
    async fn read_head(
        &mut self,
        due: Option<Instant>,
        last: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> HeadRead {
        let cfg = &self.hs.svc.config;
        let mut since = due.or_else(|| (!self.buf.is_empty()).then(Instant::now));
        // Parsed on the first read whatever it holds (garbage is handed to hyper at once for
        // its 400), later only when a head end may have arrived.
        let mut checked = 0;
        loop {
            if !self.buf.is_empty() && (checked == 0 || head::may_be_complete(&self.buf, checked)) {
                match self.req.parse_request(&self.buf) {
                    Parsed::Done if self.req.unusual || self.req.len > super::MAX_HEAD => {
                        return HeadRead::Handoff
                    }
                    Parsed::Done => return self.read_body().await,
                    Parsed::Invalid => return HeadRead::Handoff,
                    Parsed::Partial => {}
                }
            }
            checked = self.buf.len();
            if self.buf.len() > super::MAX_HEAD || self.buf.starts_with(b"PRI * HTTP/2") {
                return HeadRead::Handoff;
            }
            let deadline = match since {
                Some(t) => t + cfg.header_timeout,
                None => last + cfg.idle_timeout,
            };
            // Small: an idle keep-alive connection holds this buffer until its next request
            // (most heads fit; a larger one grows it).
            self.buf.reserve(1024);
            tokio::select! {
                biased;
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => {
                        if !self.buf.is_empty() {
                            self.hs.metrics.connection_errors.inc();
                        }
                        return HeadRead::Closed;
                    }
                    Ok(_) => {
                        since.get_or_insert_with(Instant::now);
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if since.is_some() {
                        self.hs.metrics.connection_errors.inc();
                        tracing::debug!(service = %cfg.name, client = %self.client, "request head not complete within {:?}: closed", cfg.header_timeout);
                    } else {
                        tracing::debug!(service = %cfg.name, client = %self.client, "keep-alive idle timeout");
                    }
                    return HeadRead::Closed;
                }
                // portier stops: a connection between requests closes now.
                _ = stop.wait_for(|s| *s), if since.is_none() => return HeadRead::Closed,
                () = std::future::poll_fn(|cx| self.idle.poll_closed(cx)), if !self.idle.is_empty() => {}
            }
        }
    }

    /// Reads the request's body into `buf` when it is small (at most `MAX_BUFFERED`):
    /// the request then goes out in one write and may be sent again on a fresh connection.
    /// A larger or open-ended body (a big upload, Outlook Anywhere's RPC_IN_DATA and
    /// RPC_OUT_DATA, which stream both ways at once) is handed to hyper, which streams it.
    async fn read_body(&mut self) -> HeadRead {
        let start = self.req.len;
        let framing = self.req.framing.unwrap_or(Framing::Empty);
        let idle = self.hs.svc.config.idle_timeout;
        // Fed only what arrived since the last read.
        let mut chunked = Chunked::default();
        let mut scanned = 0;
        loop {
            let have = self.buf.len() - start;
            let body = match framing {
                Framing::Empty => Some(0),
                Framing::Length(n) if n > MAX_BUFFERED as u64 => return HeadRead::Handoff,
                Framing::Length(n) => (have as u64 >= n).then_some(n as usize),
                Framing::Chunked => match chunked.feed(&self.buf[start + scanned..]) {
                    Ok(k) => {
                        scanned += k;
                        chunked.is_done().then_some(scanned)
                    }
                    Err(e) => {
                        self.bad_framing = Some(e);
                        Some(0)
                    }
                },
                Framing::UntilClose => return HeadRead::Handoff,
            };
            if let Some(n) = body {
                self.pending = start + n;
                return HeadRead::Ready;
            }
            if have > MAX_BUFFERED {
                return HeadRead::Handoff;
            }
            self.buf.reserve(READ_SIZE);
            match tokio::time::timeout(idle, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    self.hs.metrics.connection_errors.inc();
                    return HeadRead::Closed;
                }
            }
        }
    }

    fn checkin(&mut self, key: UpstreamKey, io: ServerIo, private: bool) {
        self.idle.checkin(idle::Idle { key, io, since: Instant::now(), private });
    }

    /// The client connection ends: its idle server connections that may serve anybody go to
    /// the service's shared pool (when it shares), the private ones close.
    fn lend_idle(&mut self) {
        if self.idle.is_empty() || self.hs.svc.config.server_reuse != ServerReuse::Shared {
            return;
        }
        self.hs.shared_idle.lend(std::mem::take(&mut self.idle));
    }
}

/// Writes `data` whole and flushes: a TLS stream may otherwise keep the last record.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}
