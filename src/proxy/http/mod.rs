//! The L7 proxy: HTTP/1.1 and HTTP/2 from clients (hyper), plain or TLS-terminated, to
//! servers over HTTP/1.1, plain or re-encrypted; plus the 301-to-https redirect service.

mod body;
mod forward;
pub mod h1;
mod log;
pub mod policy;
pub mod route;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::Drain;
use crate::config::{Config, Mode};
use crate::metrics::{HttpServiceMetrics, Metrics};
use crate::net::{ClientAddr, OrigDstAddr};
use crate::state::Service;
use crate::tls::{self, TlsAcceptorHandle};
pub use upstream::{UpstreamPool, UpstreamTlsConfig};

/// Everything the L7 path of one service needs, built once at start.
pub struct HttpService {
    pub svc: Arc<Service>,
    /// Upgraded tunnels (WebSocket) outlive their client connection's task: they enter here.
    pub drain: Arc<Drain>,
    pub metrics: HttpServiceMetrics,
    /// Per route position (0: the default pool, n: the nth route): re-encryption settings
    /// and request counters, so a request finds them by index, without hashing a name.
    pub targets: Vec<policy::RouteTarget>,
    /// "http" or "https", for X-Forwarded-Proto and cookies' Secure flag.
    pub scheme: &'static str,
    /// The certificates of an https service.
    pub acceptor: Option<TlsAcceptorHandle>,
    /// Idle server connections any of this service's client connections may take (`h1::idle`).
    pub shared_idle: Arc<h1::idle::SharedIdle>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("service {service}: certificates: {source}")]
    Certificates { service: String, source: tls::TlsError },
    #[error("pool {pool}: tls: {source}")]
    UpstreamTls { pool: String, source: tls::TlsError },
}

impl HttpService {
    pub fn build(
        svc: Arc<Service>,
        config: &Config,
        metrics: &Metrics,
        drain: Arc<Drain>,
    ) -> Result<HttpService, HttpSetupError> {
        let m = metrics.http_service(&svc.config.name);
        // One TLS client config per pool: routes to the same pool share its idle connections.
        let mut upstream_tls: HashMap<&str, UpstreamTlsConfig> = HashMap::new();
        let mut targets = Vec::with_capacity(1 + svc.routes.len());
        // Position 0 exists even without a default pool (redirect), so route n stays at n.
        let positions = std::iter::once(svc.pool.as_ref()).chain(svc.routes.iter().map(|(_, p)| Some(p)));
        for pool in positions {
            let Some(pool) = pool else {
                targets.push(policy::RouteTarget { tls: None, counters: Vec::new() });
                continue;
            };
            let pc = config.pools.iter().find(|p| p.name == pool.name).expect("state pools come from config");
            let tls = match (&pc.tls, upstream_tls.get(pool.name.as_str())) {
                (None, _) => None,
                (Some(_), Some(t)) => Some(t.clone()),
                (Some(t), None) => {
                    let cfg = tls::client_config(t, tls::ALPN_HTTP1)
                        .map_err(|source| HttpSetupError::UpstreamTls { pool: pool.name.clone(), source })?;
                    if !t.verify {
                        tracing::warn!(pool = %pool.name, "tls verify = false: servers' certificates are not checked");
                    }
                    let sni =
                        t.sni.as_ref().and_then(|n| rustls::pki_types::ServerName::try_from(n.clone()).ok());
                    let t = UpstreamTlsConfig::new(cfg, sni);
                    upstream_tls.insert(&pool.name, t.clone());
                    Some(t)
                }
            };
            let counters = pool.servers.iter().map(|s| m.server_requests(&pool.name, &s.label)).collect();
            targets.push(policy::RouteTarget { tls, counters });
        }
        let acceptor = if svc.config.mode == Mode::Https {
            Some(TlsAcceptorHandle::load(&svc.config.certificates, tls::ALPN_HTTP_SERVER).map_err(
                |source| HttpSetupError::Certificates { service: svc.config.name.clone(), source },
            )?)
        } else {
            None
        };
        let scheme = if svc.config.mode == Mode::Https { "https" } else { "http" };
        let shared_idle = Arc::default();
        Ok(HttpService { svc, drain, metrics: m, targets, scheme, acceptor, shared_idle })
    }

    /// Re-reads the certificates (SIGHUP); established connections keep theirs.
    pub fn reload_certificates(&self) -> Result<(), tls::TlsError> {
        match &self.acceptor {
            None => Ok(()),
            Some(a) => a.reload(&self.svc.config.certificates),
        }
    }
}

/// Per client connection: when bytes last moved, how many requests are in flight, and since
/// when a request head has been arriving. The idle timeout closes quiet keep-alive
/// connections but never a long-poll awaiting its answer; the header timeout cuts a head that
/// trickles in (slowloris) without also cutting idle keep-alive connections, which is what
/// hyper's own header_read_timeout would do (its timer runs while waiting for the next head).
pub struct ConnState {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the pending head started; NO_HEAD when none.
    head_since_ms: AtomicU64,
    /// HTTP/2 (prior knowledge or ALPN): heads are frames on a shared connection, not timed
    /// here once the first request arrived (until then the accept's deadline holds).
    h2: std::sync::atomic::AtomicBool,
    seen_bytes: std::sync::atomic::AtomicBool,
    /// Wakes the watchdog when a head starts, so its own deadline applies at once.
    head_started: tokio::sync::Notify,
    /// This client connection's own idle server connections (see `upstream`).
    upstream: UpstreamPool,
    /// Where new server connections' I/O futures go: this client connection's task.
    driver: tokio::sync::mpsc::UnboundedSender<upstream::ConnFuture>,
}

const NO_HEAD: u64 = u64::MAX;

impl ConnState {
    fn new(driver: tokio::sync::mpsc::UnboundedSender<upstream::ConnFuture>) -> Self {
        // The first head is due from the moment the connection is accepted.
        ConnState {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(0),
            h2: std::sync::atomic::AtomicBool::new(false),
            seen_bytes: std::sync::atomic::AtomicBool::new(false),
            head_started: tokio::sync::Notify::new(),
            upstream: UpstreamPool::default(),
            driver,
        }
    }
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    fn head_since(&self) -> Option<Instant> {
        match self.head_since_ms.load(Ordering::Relaxed) {
            NO_HEAD => None,
            ms => Some(self.epoch + Duration::from_millis(ms)),
        }
    }
    /// Bytes arrived from the client.
    fn on_read(&self, first_bytes: &[u8]) {
        self.touch();
        if !self.seen_bytes.swap(true, Ordering::Relaxed) && first_bytes.starts_with(b"PRI * HTTP/2.0") {
            // The first request's deadline (from the accept) still holds: a client that
            // sends the preface and then trickles its HEADERS is a slowloris too.
            self.h2.store(true, Ordering::Relaxed);
        }
        if !self.h2.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) == 0 {
            let started = self.head_since_ms.compare_exchange(
                NO_HEAD,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if started.is_ok() {
                self.head_started.notify_one();
            }
        }
    }
}

/// Held by a request until its response ends.
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(c: Arc<ConnState>) -> Self {
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: hyper handed us the request.
        c.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wraps the client's stream to note activity; `pre` holds what the HTTP/1.1 fast path read
/// before it handed the connection over, served first.
struct Tracked<IO> {
    io: IO,
    pre: bytes::BytesMut,
    state: Arc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = if self.pre.is_empty() {
            Pin::new(&mut self.io).poll_read(cx, buf)
        } else {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre.split_to(n));
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() > before {
            self.state.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.state.touch();
            }
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.state.touch();
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Largest request head accepted (Kerberos tickets make Exchange's headers big); a larger
/// one gets 431 from hyper and is counted as a connection error.
const MAX_HEAD: usize = 64 * 1024;

async fn serve<IO>(
    io: IO,
    pre: bytes::BytesMut,
    servers: Vec<(upstream::UpstreamKey, upstream::ServerIo)>,
    client: ClientAddr,
    orig: OrigDstAddr,
    hs: Arc<HttpService>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut driver, driver_tx) = upstream::Driver::new();
    let state = Arc::new(ConnState::new(driver_tx));
    for (key, io) in servers {
        // The fast path's server connections carry on under hyper (no I/O happens here).
        if let Ok(sender) = upstream::adopt(io, &state.driver).await {
            state.upstream.checkin(key, sender);
        }
    }
    let io = Tracked { io, pre, state: state.clone() };
    let (hs2, st2) = (hs.clone(), state.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (hs, st) = (hs2.clone(), st2.clone());
        if req.version() == hyper::Version::HTTP_2 {
            // Sure now, even if the first read held only part of the preface: frames between
            // streams (PING, WINDOW_UPDATE) must not start a head timer.
            st.h2.store(true, Ordering::Relaxed);
        }
        async move { Ok::<_, Infallible>(forward::handle(req, client, orig, hs, st).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(MAX_HEAD.max(8192));
    // 100 streams at once per connection, as HAProxy (tune.h2.max-concurrent-streams) and
    // nginx (http2_max_concurrent_streams) allow: each in-flight stream holds a server
    // connection of its own (about 33 KiB), so this bounds what one client can make us hold.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(H2_MAX_STREAMS);
    // Boxed (not pinned on the stack) so it can be dropped before the driver is handed off.
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let idle = hs.svc.config.idle_timeout;
    let header = hs.svc.config.header_timeout;
    let mut closing = false;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    hs.metrics.connection_errors.inc();
                    tracing::debug!(service = %hs.svc.config.name, %client, "client connection error: {e}");
                }
                break;
            }
            // Server connections' I/O; never ends while this connection's state lives.
            _ = driver.run() => {}
            end = watchdog(&state, idle, header), if !closing => match end {
                Watch::Idle => {
                    tracing::debug!(service = %hs.svc.config.name, %client, "keep-alive idle timeout");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Watch::HeaderTimeout => {
                    hs.metrics.connection_errors.inc();
                    tracing::debug!(service = %hs.svc.config.name, %client, "request head not complete within {header:?}: closed");
                    break;
                }
            },
            // portier stops: an idle keep-alive connection closes now, a busy one once its
            // response is sent (h2: GOAWAY), instead of holding the drain until its limit.
            // The watchdog stays on, so a trickling head is still cut at the header timeout.
            _ = stop.wait_for(|s| *s), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
    // Server connections may still be finishing (an upgrade handing its socket to a tunnel,
    // an HTTP/2 stream task still streaming): they end once the last state handle is gone.
    drop(conn);
    drop(state);
    if !driver.is_idle() {
        tokio::spawn(async move { driver.run().await });
    }
}

enum Watch {
    Idle,
    HeaderTimeout,
}

async fn watchdog(state: &ConnState, idle: Duration, header: Duration) -> Watch {
    loop {
        // While a head arrives only the header timeout governs it (the idle deadline may be
        // past: sleeping until it would spin); between requests, the idle timeout.
        let deadline = match state.head_since() {
            Some(h) => h + header,
            None => state.last() + idle,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            // A head started during a (longer) idle sleep: recompute with its deadline.
            _ = state.head_started.notified() => continue,
        }
        if let Some(h) = state.head_since() {
            if h.elapsed() >= header {
                return Watch::HeaderTimeout;
            }
            continue;
        }
        if state.in_flight.load(Ordering::Relaxed) > 0 {
            // A request is waiting for its response: its own timeout governs, check later.
            state.touch();
        } else if state.last().elapsed() >= idle {
            return Watch::Idle;
        }
    }
}

/// HTTP/1.1 clients go through the fast path (`h1`) first; HTTP/2, the redirect service
/// and whatever the fast path hands over are served by hyper.
async fn serve_any<IO>(
    mut io: IO,
    fast: bool,
    client: ClientAddr,
    orig: OrigDstAddr,
    hs: Arc<HttpService>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut pre = bytes::BytesMut::new();
    let mut servers = Vec::new();
    if fast && hs.svc.config.mode != Mode::Redirect {
        match h1::serve(&mut io, client, orig, &hs, &mut stop).await {
            h1::Outcome::Closed => return,
            h1::Outcome::Handoff(read, idle) => (pre, servers) = (read, idle),
        }
    }
    // Boxed: hyper's state machine is most of the task's size, and only HTTP/2 and the
    // connections the fast path hands over need it.
    Box::pin(serve(io, pre, servers, client, orig, hs, stop)).await
}

/// One client connection of an http, https or redirect service.
/// Concurrent streams per HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 100;

pub(crate) async fn connection(
    stream: TcpStream,
    client: ClientAddr,
    hs: Arc<HttpService>,
    stop: watch::Receiver<bool>,
) {
    hs.svc.metrics.connections.inc();
    let Ok(orig) = stream.local_addr().map(OrigDstAddr) else { return };
    let _ = stream.set_nodelay(true);
    if hs.acceptor.is_none() {
        serve_any(stream, true, client, orig, hs, stop).await
    } else {
        // Boxed: a TLS connection's state (rustls' session, the handshake) would otherwise
        // size every plain HTTP connection's task too.
        Box::pin(tls_connection(stream, client, orig, hs, stop)).await
    }
}

async fn tls_connection(
    stream: TcpStream,
    client: ClientAddr,
    orig: OrigDstAddr,
    hs: Arc<HttpService>,
    stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = &hs.acceptor else { return };
    let handshake =
        tokio::time::timeout(hs.svc.config.header_timeout, acceptor.acceptor().accept(stream)).await;
    match handshake {
        Ok(Ok(tls)) => {
            hs.metrics.tls_handshakes.inc();
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_any(tls, !h2, client, orig, hs, stop).await
        }
        Ok(Err(e)) => {
            hs.metrics.tls_failures.inc();
            tracing::debug!(service = %hs.svc.config.name, %client, "TLS handshake failed: {e}");
        }
        Err(_) => {
            hs.metrics.tls_failures.inc();
            tracing::debug!(service = %hs.svc.config.name, %client, "TLS handshake timed out");
        }
    }
}

#[cfg(test)]
mod size_budget {
    fn future_size<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn future_size5<A, B, C, D, E, F: std::future::Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle keep-alive connection costs its task, and a task is sized for the largest
    /// state any of its paths reaches: what only some connections need (hyper's state, TLS,
    /// opening a server connection) is boxed, so that 5,000 idle plain HTTP connections do
    /// not each reserve 8.5 KB (docs/PERFORMANCE.md, the idle keep-alive memory row).
    #[test]
    fn connection_futures_stay_small() {
        let plain = future_size(super::connection);
        assert!(plain <= 2560, "HTTP connection future: {plain} bytes");
        let tls = future_size5(super::tls_connection);
        // rustls' session is most of this one; it is boxed away from the plain connections.
        assert!(tls <= 7168, "HTTPS connection future: {tls} bytes");
    }
}
