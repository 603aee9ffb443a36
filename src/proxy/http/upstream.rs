//! Connections to servers for the HTTP proxy: HTTP/1.1, plain or re-encrypted with TLS,
//! leaving from the client's address (transparent) or SNAT, and pooled per
//! (server, source, tls): a transparent connection is only ever reused for the same client
//! address, since the server sees that address as the peer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::body::RequestBody;
use crate::net::{connect_upstream, FdSlot, UpstreamSource};

/// An idle pooled connection older than this is closed rather than reused: servers (IIS:
/// 120 s) close idle keep-alive connections, and a request on a just-closed one would fail.
const MAX_IDLE: Duration = Duration::from_secs(60);
const MAX_IDLE_PER_KEY: usize = 16;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UpstreamKey {
    pub server: SocketAddr,
    pub source: UpstreamSource,
    /// Identity of the pool's TLS settings (0: plain): a connection opened without
    /// verification, or for another SNI, must never serve a pool that verifies.
    pub tls: usize,
}

/// TLS towards one pool's servers.
#[derive(Clone)]
pub struct UpstreamTlsConfig {
    pub config: Arc<rustls::ClientConfig>,
    /// None: the server's IP.
    pub sni: Option<ServerName<'static>>,
    /// Never 0 (plain) and never given twice, unlike an address a later config could reuse.
    id: usize,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A client connection reaches few distinct (server, source, tls) keys, usually one: a short
/// list searched in order is cheaper per request than hashing the key.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<Vec<(UpstreamKey, Vec<Idle>)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP/1.1 handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl UpstreamTlsConfig {
    pub fn new(config: Arc<rustls::ClientConfig>, sni: Option<ServerName<'static>>) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        UpstreamTlsConfig { config, sni, id }
    }

    /// Distinct for every pool's TLS settings; clones share it.
    pub fn id(&self) -> usize {
        self.id
    }
}

impl UpstreamPool {
    /// A ready idle connection for `key`, if any; stale and closed ones are dropped.
    pub fn checkout(&self, key: &UpstreamKey) -> Option<SendRequest<RequestBody>> {
        let mut map = self.idle.lock().expect("upstream pool poisoned");
        let (_, list) = map.iter_mut().find(|(k, _)| k == key)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < MAX_IDLE && idle.sender.is_ready() && !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed.
    pub fn checkin(&self, key: UpstreamKey, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut map = self.idle.lock().expect("upstream pool poisoned");
        let at = match map.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                map.push((key, Vec::new()));
                map.len() - 1
            }
        };
        let list = &mut map[at].1;
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle { sender, since: Instant::now() });
        }
    }
}

/// A server connection's I/O future, handed to the task of the client connection that owns
/// it (see [`Driver`]).
pub type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs server connections inside their client connection's task instead of a task each:
/// a request and its response then cross no task boundary (no wake-up of another task, no
/// scheduler hand-off), which is most of the per-request overhead of a keep-alive proxy.
#[derive(Default)]
pub struct Driver {
    incoming: Option<tokio::sync::mpsc::UnboundedReceiver<ConnFuture>>,
    running: Vec<ConnFuture>,
}

impl Driver {
    /// A driver and the sender [`connect`] hands connection futures to.
    pub fn new() -> (Driver, tokio::sync::mpsc::UnboundedSender<ConnFuture>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Driver { incoming: Some(rx), running: Vec::new() }, tx)
    }

    /// Whether nothing runs and nothing more can come.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.incoming.as_ref().is_none_or(|rx| rx.is_closed() && rx.is_empty())
    }

    /// Polls every connection; ready when the sender is gone and every connection ended.
    pub async fn run(&mut self) {
        std::future::poll_fn(|cx| {
            if let Some(rx) = self.incoming.as_mut() {
                loop {
                    match rx.poll_recv(cx) {
                        std::task::Poll::Ready(Some(f)) => self.running.push(f),
                        std::task::Poll::Ready(None) => {
                            self.incoming = None;
                            break;
                        }
                        std::task::Poll::Pending => break,
                    }
                }
            }
            self.running.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            if self.incoming.is_none() && self.running.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Hands `f` to the client connection's driver, or to its own task when there is none.
fn drive(driver: &tokio::sync::mpsc::UnboundedSender<ConnFuture>, f: ConnFuture) {
    if let Err(e) = driver.send(f) {
        tokio::spawn(e.0);
    }
}

/// A connection to a server, plain or re-encrypted, with its descriptor's slot in the data
/// path's budget.
pub enum ServerIo {
    Plain(tokio::net::TcpStream, FdSlot),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, FdSlot),
}

impl tokio::io::AsyncRead for ServerIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => std::pin::Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ServerIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => std::pin::Pin::new(s).poll_write(cx, b),
            ServerIo::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s, _) => s.is_write_vectored(),
            ServerIo::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => std::pin::Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => std::pin::Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a connection to `key.server`, TCP then TLS when the pool re-encrypts, each within
/// `timeout`.
pub async fn open(
    key: &UpstreamKey,
    tls: Option<&UpstreamTlsConfig>,
    timeout: Duration,
) -> Result<ServerIo, UpstreamError> {
    let (tcp, slot) = connect_upstream(key.server, key.source, timeout)
        .await
        .map_err(|e| UpstreamError::Connect(key.server, e))?;
    let Some(t) = tls else { return Ok(ServerIo::Plain(tcp, slot)) };
    let name = t.sni.clone().unwrap_or_else(|| ServerName::IpAddress(key.server.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(t.config.clone());
    let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            UpstreamError::Tls(key.server, std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
        })?
        .map_err(|e| UpstreamError::Tls(key.server, e))?;
    Ok(ServerIo::Tls(Box::new(stream), slot))
}

/// Opens a new HTTP/1.1 connection to `key.server` for hyper's client, within `timeout` for
/// TCP and TLS; its I/O runs on `driver`.
pub async fn connect(
    key: &UpstreamKey,
    tls: Option<&UpstreamTlsConfig>,
    timeout: Duration,
    driver: &tokio::sync::mpsc::UnboundedSender<ConnFuture>,
) -> Result<SendRequest<RequestBody>, UpstreamError> {
    let io = open(key, tls, timeout).await?;
    adopt(io, driver).await.map_err(|e| UpstreamError::Handshake(key.server, e))
}

/// Makes an open server connection hyper's; its I/O runs on `driver`.
pub async fn adopt(
    io: ServerIo,
    driver: &tokio::sync::mpsc::UnboundedSender<ConnFuture>,
) -> Result<SendRequest<RequestBody>, hyper::Error> {
    let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    let mut conn: ConnFuture = Box::pin(async move {
        let _ = conn.with_upgrades().await;
    });
    // Polled here until the sender is ready (no I/O is waited for: the dispatcher only
    // registers its interest), so a pooled connection reads as ready to `checkout`.
    let mut ended = false;
    std::future::poll_fn(|cx| {
        if !ended && conn.as_mut().poll(cx).is_ready() {
            ended = true;
        }
        sender.poll_ready(cx)
    })
    .await?;
    if !ended {
        drive(driver, conn);
    }
    Ok(sender)
}
