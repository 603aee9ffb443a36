//! A small programmable HTTP/1.1 backend for the L7 lab tests (hyper 1 server on a tokio
//! runtime of its own, in a background thread), listening inside a backend namespace.
//!
//! Endpoints (any method unless said otherwise):
//! - `/hello`: `backend=NAME peer=IP\n`
//! - `/download?bytes=N`: N bytes of [`pattern`] generated on the fly (Content-Length N)
//! - `/upload`: consumes the request body as it streams, answers `bytes=N hash=H\n` where H
//!   is [`Checksum`] of the body
//! - `/slow?ms=N`: answers `backend=NAME slept=N\n` after N ms (a long-poll)
//! - `/rpc_in` or method `RPC_IN_DATA`: Outlook Anywhere's client-to-server channel. Reads the
//!   first body chunk, answers 200 at once (chunked) with `backend=NAME peer=IP\n`, then one
//!   `got=TOTAL\n` line per body chunk received, for as long as the client sends
//! - `/rpc_out` or method `RPC_OUT_DATA`: the server-to-client channel: 200 with
//!   `backend=NAME peer=IP\n`, then `tick=I\n` every 100 ms, never ending
//! - `/whoami`: connection-based authentication as IIS does it for NTLM/Negotiate: a request
//!   with `Authorization: NTLM USER` (or `Negotiate USER`) authenticates its connection as USER, and later requests
//!   on that connection are USER without sending credentials again. Answers
//!   `user=USER conn=N\n` (`anonymous` before any), N numbering the backend's connections.
//!   `/whoami?challenge` on a connection not authenticated yet answers 401 with
//!   `WWW-Authenticate: Negotiate` and `WWW-Authenticate: NTLM`, as IIS starts the handshake
//! - any path with `Upgrade: test`: 101, then the connection echoes every byte
//! - anything else: 404
//!
//! The listening socket is created inside the namespace (`Netns::run`; a socket keeps the
//! namespace it was created in) and served from a thread outside it. Dropping the backend
//! stops it and closes every connection.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::Hasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use portier::lab::Netns;

/// Length of the repeating test pattern: a prime, so that data shifted by any chunk size
/// (powers of two) never matches.
pub const PATTERN_LEN: usize = 65521;

/// The test pattern (pseudo-random bytes, period [`PATTERN_LEN`]).
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..PATTERN_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Fills `buf` with the pattern as it reads from stream offset `offset` (memcpy-fast, so
/// debug builds can generate hundreds of MiB).
pub fn pattern_fill(offset: u64, buf: &mut [u8]) {
    let p = pattern();
    let mut pos = (offset % PATTERN_LEN as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (PATTERN_LEN - pos).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&p[pos..pos + n]);
        done += n;
        pos = 0;
    }
}

/// Whether `buf` is the pattern at stream offset `offset`.
pub fn pattern_check(offset: u64, buf: &[u8]) -> bool {
    let p = pattern();
    let mut pos = (offset % PATTERN_LEN as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (PATTERN_LEN - pos).min(buf.len() - done);
        if buf[done..done + n] != p[pos..pos + n] {
            return false;
        }
        done += n;
        pos = 0;
    }
    true
}

/// A streaming checksum (SipHash from the optimised standard library: fast in debug builds,
/// and independent of how the stream is cut into chunks).
pub struct Checksum(DefaultHasher);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(DefaultHasher::new())
    }
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        self.0.write(data);
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0.finish())
    }
}

type RespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> RespBody {
    http_body_util::Full::new(text.into()).boxed()
}

/// `N` bytes of the pattern, generated as they are polled (never buffered whole).
struct PatternBody {
    offset: u64,
    remaining: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024) as usize;
        let mut buf = vec![0u8; n];
        pattern_fill(self.offset, &mut buf);
        self.offset += n as u64;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body fed by a task through a channel; ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Requests received.
    pub requests: AtomicU64,
}

/// The backend; stops on drop.
pub struct HttpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Serves on `0.0.0.0:port` inside `ns`.
    pub fn start(ns: &Netns, name: &str, port: u16) -> io::Result<HttpBackend> {
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let listener = ns.run(move || -> io::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(bind)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })??;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (name2, stats2) = (name.to_string(), stats.clone());
        let thread = std::thread::Builder::new().name(format!("httpd-{name}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, Arc::from(name2.as_str()), stats2) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime cancels every connection task: their sockets close.
            drop(rt);
        })?;
        Ok(HttpBackend { name: name.to_string(), addr, stats, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn open_connections(&self) -> usize {
        self.stats.open.load(Ordering::Relaxed)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct OpenGuard(Arc<Stats>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, name: Arc<str>, stats: Arc<Stats>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        stats.open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(stats.clone());
        let (name, stats) = (name.clone(), stats.clone());
        let user: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        tokio::spawn(async move {
            let _guard = guard;
            let svc = hyper::service::service_fn(move |req| {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let (name, user) = (name.clone(), user.clone());
                async move {
                    if req.uri().path() == "/whoami" {
                        let r = whoami(&req, &user, id);
                        // Read the body first: answering before it would make hyper close.
                        let _ = req.into_body().collect().await;
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(handle(req, &name, peer).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn whoami(req: &Request<Incoming>, user: &std::sync::Mutex<Option<String>>, id: u64) -> Response<RespBody> {
    let mut user = user.lock().unwrap();
    let creds = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(u) = creds.and_then(|c| c.strip_prefix("NTLM ").or_else(|| c.strip_prefix("Negotiate "))) {
        *user = Some(u.to_string());
    }
    let who = user.as_deref().unwrap_or("anonymous");
    if user.is_none() && req.uri().query() == Some("challenge") {
        // IIS with Windows authentication and no anonymous access: the handshake starts.
        let mut r = status(StatusCode::UNAUTHORIZED, full(format!("user=anonymous conn={id}\n")));
        let h = r.headers_mut();
        h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
        h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
        return r;
    }
    status(StatusCode::OK, full(format!("user={who} conn={id}\n")))
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn status(code: StatusCode, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r
}

async fn handle(mut req: Request<Incoming>, name: &str, peer: SocketAddr) -> Response<RespBody> {
    let hello = format!("backend={name} peer={}\n", peer.ip());
    let is_test_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .map(|v| v.as_bytes().eq_ignore_ascii_case(b"test"))
        .unwrap_or(false);
    if is_test_upgrade {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            }
        });
        let mut r = status(StatusCode::SWITCHING_PROTOCOLS, full(""));
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("test"));
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return r;
    }
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    match (method.as_str(), path.as_str()) {
        (_, "/hello") => status(StatusCode::OK, full(hello)),
        (_, "/download") => {
            let n = query(&req, "bytes").unwrap_or(0);
            status(StatusCode::OK, PatternBody { offset: 0, remaining: n }.boxed())
        }
        (_, "/upload") => {
            let mut body = req.into_body();
            let (mut n, mut sum) = (0u64, Checksum::default());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return status(StatusCode::BAD_REQUEST, full("body error\n"));
                };
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    sum.update(d);
                }
            }
            status(StatusCode::OK, full(format!("bytes={n} hash={}\n", sum.hex())))
        }
        (_, "/slow") => {
            let ms = query(&req, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            status(StatusCode::OK, full(format!("backend={name} slept={ms}\n")))
        }
        ("RPC_IN_DATA", _) | (_, "/rpc_in") => {
            let mut body = req.into_body();
            let (tx, rx) = mpsc::channel(16);
            let mut total = 0u64;
            // The first chunk, so the answer proves that body bytes flow before the
            // announced length is reached.
            if let Some(Ok(f)) = body.frame().await {
                total += f.data_ref().map(|d| d.len() as u64).unwrap_or(0);
            }
            let _ = tx.send(Bytes::from(format!("{hello}got={total}\n"))).await;
            tokio::spawn(async move {
                while let Some(Ok(f)) = body.frame().await {
                    if let Some(d) = f.data_ref() {
                        total += d.len() as u64;
                        if tx.send(Bytes::from(format!("got={total}\n"))).await.is_err() {
                            break;
                        }
                    }
                }
            });
            status(StatusCode::OK, ChannelBody(rx).boxed())
        }
        ("RPC_OUT_DATA", _) | (_, "/rpc_out") => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                // Hold the request body (Outlook sends a few bytes and keeps the rest).
                let _body = req.into_body();
                if tx.send(Bytes::from(hello)).await.is_err() {
                    return;
                }
                for i in 0u64.. {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Bytes::from(format!("tick={i}\n"))).await.is_err() {
                        return;
                    }
                }
            });
            status(StatusCode::OK, ChannelBody(rx).boxed())
        }
        _ => status(StatusCode::NOT_FOUND, full("not found\n")),
    }
}
