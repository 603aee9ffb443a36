//! Idle server connections of the fast path: each client connection keeps its own between
//! requests, and hands the ones that may serve anybody to its service's shared pool when it
//! ends, where the next client connection with the same key (server, source address, TLS)
//! takes them instead of opening a new one.
//!
//! Which connections may be shared: never one that carried NTLM or Negotiate authentication
//! (IIS ties the login to the TCP connection, so a lent one would run another user's
//! requests as the user who logged in). The key holds the source: in transparent mode a
//! connection leaves from the client's address, so only clients from that same address can
//! take it; behind SNAT any client can.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::time::Instant;

use crate::proxy::http::upstream::{ServerIo, UpstreamKey};

/// Idle server connections kept per client connection (usually one is in use).
const MAX_IDLE_SERVERS: usize = 4;
/// Older idle server connections are closed rather than reused (IIS closes at 120 s).
pub const SERVER_MAX_IDLE: Duration = Duration::from_secs(60);
/// Idle connections a service's shared pool keeps, per shard; the oldest go first.
const MAX_SHARED_PER_SHARD: usize = 512;
/// Shards of a shared pool: a worker thread uses its own, so two threads do not wait on one
/// lock per request (the sweep takes each briefly once per `SWEEP_EVERY`).
const SHARDS: usize = 8;
/// How often a shared pool drops its expired and closed connections, so an idle service does
/// not hold server sockets (or their CLOSE_WAIT) once traffic stops.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// An idle connection to a server.
pub struct Idle {
    pub key: UpstreamKey,
    pub io: ServerIo,
    pub since: Instant,
    /// It carried connection-based authentication: it belongs to its client connection.
    pub private: bool,
}

/// One client connection's idle server connections, newest last.
#[derive(Default)]
pub struct OwnIdle(pub Vec<Idle>);

impl OwnIdle {
    pub fn checkin(&mut self, idle: Idle) {
        if self.0.len() >= MAX_IDLE_SERVERS {
            self.0.remove(0);
        }
        self.0.push(idle);
    }

    /// An idle connection to `key`'s server that is still open, with whether it is private.
    pub fn checkout(&mut self, key: &UpstreamKey) -> Option<(ServerIo, bool)> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while let Some(at) = self.0.iter().rposition(|i| i.key == *key) {
            let mut i = self.0.swap_remove(at);
            if i.since.elapsed() < SERVER_MAX_IDLE && quiet(&mut i.io, &mut cx) {
                return Some((i.io, i.private));
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ready once an idle server connection closed (or spoke unasked), which is then
    /// dropped: its socket does not wait in CLOSE_WAIT for the client's next request.
    pub fn poll_closed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let before = self.0.len();
        self.0.retain_mut(|i| quiet(&mut i.io, cx));
        if self.0.len() < before {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// A service's idle server connections that any client connection with the same key may
/// take (see the module's text for which ones those are).
pub struct SharedIdle {
    shards: [Mutex<Vec<Idle>>; SHARDS],
    sweeper: AtomicBool,
}

impl Default for SharedIdle {
    fn default() -> Self {
        SharedIdle {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            sweeper: AtomicBool::new(false),
        }
    }
}

thread_local! {
    /// This thread's shard of every shared pool, given out in turn as threads first use one.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

impl SharedIdle {
    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.shards[SHARD.with(|s| *s)]
    }

    /// Takes the newest idle connection for `key` that is still open, from this thread's
    /// shard first, then from the others (a client connection's task may run on another
    /// worker than the one that lent it); expired and closed ones met on the way are dropped.
    /// Newest first: the oldest then age out when fewer are used.
    pub fn take(&self, key: &UpstreamKey) -> Option<ServerIo> {
        let own = SHARD.with(|s| *s);
        (0..SHARDS).find_map(|k| take_from(&self.shards[(own + k) % SHARDS], key))
    }

    /// Lends the public ones of a client connection's idle connections to the pool (the
    /// private ones close with their client connection). The first lend starts the sweep.
    pub fn lend(self: &Arc<Self>, own: OwnIdle) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut lent = false;
        {
            let mut list = self.shard().lock().expect("shared idle pool poisoned");
            for mut i in own.0 {
                // Polled with a no-op waker: the ended task's waker would otherwise stay
                // registered on the socket and keep that task's memory alive.
                if i.private || i.since.elapsed() >= SERVER_MAX_IDLE || !quiet(&mut i.io, &mut cx) {
                    continue;
                }
                if list.len() >= MAX_SHARED_PER_SHARD {
                    list.remove(0);
                }
                list.push(i);
                lent = true;
            }
        }
        if lent && !self.sweeper.swap(true, Ordering::Relaxed) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(sweep(Arc::downgrade(self)));
            }
        }
    }

    /// Idle connections held, all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|l| l.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the expired and closed connections; ends with the pool (its service rebuilt
    /// by a reload, or portier stopping).
    fn sweep_once(&self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for s in &self.shards {
            let mut list = s.lock().expect("shared idle pool poisoned");
            list.retain_mut(|i| i.since.elapsed() < SERVER_MAX_IDLE && quiet(&mut i.io, &mut cx));
        }
    }
}

fn take_from(shard: &Mutex<Vec<Idle>>, key: &UpstreamKey) -> Option<ServerIo> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut list = shard.lock().expect("shared idle pool poisoned");
    while let Some(at) = list.iter().rposition(|i| i.key == *key) {
        let mut i = list.remove(at);
        if i.since.elapsed() < SERVER_MAX_IDLE && quiet(&mut i.io, &mut cx) {
            return Some(i.io);
        }
    }
    None
}

async fn sweep(pool: Weak<SharedIdle>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(p) = pool.upgrade() else { return };
        p.sweep_once();
    }
}

/// Whether an idle server connection has nothing to say (no close, no stray bytes): Pending
/// means quiet. On a plain socket whose readiness tokio already cleared this costs no system
/// call; polled with the task's context it also wakes the task when the server closes.
pub fn quiet(io: &mut ServerIo, cx: &mut std::task::Context<'_>) -> bool {
    let mut byte = [0u8; 1];
    let mut rb = tokio::io::ReadBuf::new(&mut byte);
    std::pin::Pin::new(io).poll_read(cx, &mut rb).is_pending()
}

/// Whether a request's `Authorization` or a response's `WWW-Authenticate` value names NTLM
/// or Negotiate (Kerberos or NTLM inside SPNEGO), authentication IIS ties to the connection.
/// Each comma-separated element counts, as HAProxy reads them: a comma inside a quoted realm
/// may mark a connection private for nothing, never the other way round.
pub fn connection_auth(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|element| {
        let element = element.trim_ascii_start();
        let scheme = element.split(|&b| b == b' ').next().unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"NTLM") || scheme.eq_ignore_ascii_case(b"Negotiate")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{UpstreamSource, DATA_PATH};
    use std::net::SocketAddr;

    fn key(port: u16) -> UpstreamKey {
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        UpstreamKey { server, source: UpstreamSource::Kernel, tls: 0 }
    }

    /// A loopback connection to `l`: portier's end as an idle entry, and the server's end.
    async fn idle(l: &tokio::net::TcpListener, private: bool) -> (Idle, tokio::net::TcpStream) {
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let io = ServerIo::Plain(c.unwrap(), DATA_PATH.take().unwrap());
        (Idle { key: key(addr.port()), io, since: Instant::now(), private }, s.unwrap().0)
    }

    #[tokio::test(start_paused = true)]
    async fn only_public_open_and_fresh_connections_are_shared() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let k = key(l.local_addr().unwrap().port());
        let pool = Arc::new(SharedIdle::default());
        let (a, _sa) = idle(&l, false).await;
        let (ntlm, _sn) = idle(&l, true).await;
        let (closed, sc) = idle(&l, false).await;
        drop(sc);
        // Let the close reach the client socket's readiness.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut own = OwnIdle::default();
        own.checkin(a);
        own.checkin(ntlm);
        own.checkin(closed);
        pool.lend(own);
        assert_eq!(pool.len(), 1, "the private and the closed connection must not be lent");
        assert!(pool.take(&key(1)).is_none(), "another server's key took the connection");
        assert!(pool.take(&k).is_some());
        assert!(pool.take(&k).is_none(), "one connection was taken twice");

        // An idle connection past SERVER_MAX_IDLE is closed, never handed out.
        let (b, _sb) = idle(&l, false).await;
        pool.lend(OwnIdle(vec![b]));
        assert_eq!(pool.len(), 1);
        tokio::time::advance(SERVER_MAX_IDLE + Duration::from_secs(1)).await;
        assert!(pool.take(&k).is_none(), "an expired connection was handed out");
        assert!(pool.is_empty());

        // The sweep drops expired ones without anyone asking for them.
        let (c, _sc2) = idle(&l, false).await;
        pool.lend(OwnIdle(vec![c]));
        tokio::time::sleep(SERVER_MAX_IDLE + SWEEP_EVERY * 2).await;
        assert!(pool.is_empty(), "the sweep left an expired connection");
    }

    #[tokio::test]
    async fn a_connection_lent_on_one_thread_is_taken_on_another() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let k = key(l.local_addr().unwrap().port());
        let pool = Arc::new(SharedIdle::default());
        let (a, _sa) = idle(&l, false).await;
        let p2 = pool.clone();
        // Threads get their shard in turn: the spawned one lends into another shard than this
        // thread takes from first (unless exactly SHARDS threads started in between).
        std::thread::spawn(move || p2.lend(OwnIdle(vec![a]))).join().unwrap();
        assert_eq!(pool.len(), 1);
        assert!(pool.take(&k).is_some(), "the connection in another thread's shard was not found");
    }

    #[test]
    fn connection_auth_names_ntlm_and_negotiate_only() {
        let cases: [(&[u8], bool); 12] = [
            (b"NTLM TlRMTVNTUAABAAAAB4IIog==", true),
            (b"ntlm", true),
            (b"Negotiate YIIF", true),
            (b"NEGOTIATE", true),
            (b"NTLM, Basic", true),
            (b"Basic realm=\"x\", NTLM", true),
            (b"Basic YWxpY2U6eA==", false),
            (b"Digest realm=\"x\"", false),
            (b"Bearer NTLM", false),
            (b"NTLMx", false),
            (b"", false),
            (b"Basic realm=\"NTLM\"", false),
        ];
        for (v, private) in cases {
            assert_eq!(connection_auth(v), private, "{}", String::from_utf8_lossy(v));
        }
    }
}
