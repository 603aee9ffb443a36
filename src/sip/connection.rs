//! SIP over TCP and TLS, one connection at a time: accepted within `[sip.limits]` (in all and
//! per source address), read into frames with a deadline for a message left incomplete and an
//! idle timeout (the engine says whether anything still needs the connection), written from
//! the queue the engine task fills.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::service::{Inbound, CONNECT_TIMEOUT, CONN_QUEUE};
use crate::log_limit::LogLimiter;
use crate::metrics::{ReasonLabels, SipMetrics};
use crate::sip::engine::Dest;
use crate::sip::{Frame, SipLimits, SipTransport, StreamFramer};

/// Bytes read per call: SIP messages are mostly below 2 KB, and an idle connection keeps only
/// this (the framer gives its buffer back between messages).
const READ_CHUNK: usize = 4096;

struct Counts {
    limits: SipLimits,
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// The accepted connections, counted against the limits; shared by every accept loop and
/// updated on reconfigure. Locked once per accepted and per closed connection only.
#[derive(Clone)]
pub(super) struct ConnLimits {
    counts: Arc<Mutex<Counts>>,
    metrics: SipMetrics,
    log: Arc<LogLimiter>,
}

/// An accepted connection's place in the counts, given back when dropped.
pub(super) struct Slot {
    limits: ConnLimits,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.total = c.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut e) = c.per_source.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        self.limits.metrics.connections.dec();
    }
}

/// How long a connection may wait: for the rest of a message it started, and (accepted ones
/// only) for a message at all before the engine is asked whether it still needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub message: Duration,
    pub idle: Option<Duration>,
}

impl ConnLimits {
    pub fn new(limits: SipLimits, metrics: SipMetrics) -> ConnLimits {
        let counts = Counts { limits, total: 0, per_source: HashMap::new() };
        ConnLimits { counts: Arc::new(Mutex::new(counts)), metrics, log: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: each update is one step.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New limits for connections accepted from now on.
    pub fn set(&self, limits: SipLimits) {
        self.lock().limits = limits;
    }

    pub fn limits(&self) -> SipLimits {
        self.lock().limits
    }

    /// A place for a connection from `ip`, or the limit it would pass (counted, logged).
    pub fn admit(&self, peer: SocketAddr) -> Result<(Slot, SipLimits), &'static str> {
        let ip = peer.ip();
        let (refused, limits) = {
            let mut c = self.lock();
            let from_ip = c.per_source.get(&ip).copied().unwrap_or(0);
            let refused = if c.total >= c.limits.connections {
                Some("connections")
            } else if from_ip >= c.limits.connections_per_source {
                Some("connections_per_source")
            } else {
                c.total += 1;
                *c.per_source.entry(ip).or_default() += 1;
                None
            };
            (refused, c.limits)
        };
        match refused {
            None => {
                self.metrics.connections.inc();
                Ok((Slot { limits: self.clone(), ip }, limits))
            }
            Some(reason) => {
                self.metrics.refused.get_or_create(&ReasonLabels { reason }).inc();
                if self.log.allow() {
                    let held = self.log.take_suppressed();
                    tracing::warn!(%peer, limit = reason, held_back = held, "SIP: connection closed at sip.limits.{reason}");
                }
                Err(reason)
            }
        }
    }
}

pub(super) async fn accept_loop(
    l: TcpListener,
    transport: SipTransport,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Inbound>,
    ids: Arc<std::sync::atomic::AtomicU64>,
    limits: ConnLimits,
) {
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("SIP: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a limit the socket is dropped here: closed before anything is read or kept.
        let Ok((slot, l)) = limits.admit(peer) else { continue };
        let timeouts = Timeouts { message: l.message_timeout, idle: Some(l.idle_timeout) };
        let _ = s.set_nodelay(true);
        let id = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (w, r) = mpsc::channel(CONN_QUEUE);
        let tx = tx.clone();
        let acceptor = acceptor.clone();
        let metrics = limits.metrics.clone();
        let opened = Inbound::Opened { id, transport, peer, writer: w.clone() };
        let conn = Connection { id, transport, peer, writer: w, queue: r, tx, timeouts, metrics };
        // One task shape per transport: a TCP connection's task is not sized for TLS's.
        match (transport, acceptor) {
            (SipTransport::Tls, Some(a)) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if conn.tx.send(opened).await.is_err() {
                        return;
                    }
                    match tokio::time::timeout(CONNECT_TIMEOUT, a.accept(s)).await {
                        Ok(Ok(s)) => conn.serve(s).await,
                        _ => {
                            tracing::info!(%peer, "SIP: TLS handshake from a client failed");
                            let _ = conn.tx.send(Inbound::Closed(id)).await;
                        }
                    }
                });
            }
            _ => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if conn.tx.send(opened).await.is_ok() {
                        conn.serve(s).await;
                    }
                });
            }
        }
    }
}

/// One TCP/TLS connection's reader and writer.
pub(super) struct Connection {
    pub id: u64,
    pub transport: SipTransport,
    pub peer: SocketAddr,
    pub writer: mpsc::Sender<Vec<u8>>,
    pub queue: mpsc::Receiver<Vec<u8>>,
    pub tx: mpsc::Sender<Inbound>,
    pub timeouts: Timeouts,
    pub metrics: SipMetrics,
}

/// Why reading stopped.
enum End {
    /// The peer closed, the stream failed or its framing was lost.
    Peer,
    Engine,
    Timeout(&'static str),
}

impl Connection {
    /// Reads frames and writes what the queue holds, until either side ends or a timeout
    /// closes the connection.
    pub async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Connection { id, transport, peer, writer, mut queue, tx, timeouts, metrics } = self;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let write = tokio::spawn(async move {
            while let Some(b) = queue.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let src = Dest { transport, addr: peer, conn: Some(id) };
        // Since when the current message has been incomplete, and when the last one came.
        let mut partial_since: Option<Instant> = None;
        let mut last_message = Instant::now();
        let end = 'read: loop {
            let deadline = match (partial_since, timeouts.idle) {
                (Some(p), _) => Some(p + timeouts.message),
                (None, Some(idle)) => Some(last_message + idle),
                (None, None) => None,
            };
            let read = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = sleep_until(deadline) => {
                    if partial_since.is_some() {
                        break 'read End::Timeout("message_timeout");
                    }
                    let (reply, answer) = oneshot::channel();
                    if tx.send(Inbound::Idle { id, reply }).await.is_err() {
                        break 'read End::Engine;
                    }
                    match answer.await {
                        Ok(true) => {
                            last_message = Instant::now();
                            continue 'read;
                        }
                        Ok(false) => break 'read End::Timeout("idle_timeout"),
                        Err(_) => break 'read End::Engine,
                    }
                }
            };
            let n = match read {
                Ok(0) | Err(_) => break End::Peer,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            let mut delivered = false;
            loop {
                match framer.next_frame() {
                    Ok(Some(Frame::Ping)) => {
                        // RFC 5626 keep-alive: CRLFCRLF is answered with CRLF.
                        let _ = writer.try_send(b"\r\n".to_vec());
                    }
                    Ok(Some(Frame::Pong)) => {}
                    Ok(Some(f)) => {
                        delivered = true;
                        if tx.send(Inbound::Frame(f, src)).await.is_err() {
                            break 'read End::Engine;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(%peer, "SIP: closing connection: {e}");
                        break 'read End::Peer;
                    }
                }
            }
            let now = Instant::now();
            if delivered {
                last_message = now;
            }
            // The clock of a message starts with its first byte: a message that completes
            // restarts it for the next one, trickling bytes do not.
            partial_since = match (framer.buffered(), partial_since) {
                (0, _) => None,
                (_, Some(p)) if !delivered => Some(p),
                _ => Some(now),
            };
        };
        if let End::Timeout(reason) = end {
            metrics.connections_closed.get_or_create(&ReasonLabels { reason }).inc();
            let waited = if reason == "message_timeout" {
                timeouts.message
            } else {
                timeouts.idle.unwrap_or_default()
            };
            tracing::info!(%peer, after = ?waited, "SIP: connection closed at sip.limits.{reason}");
        }
        drop(writer);
        write.abort();
        let _ = tx.send(Inbound::Closed(id)).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
