//! A pool of servers as the proxy sees it at run time: configuration plus live state
//! (health flag, active connections, closing) and cached metric handles, all atomics.
//!
//! A pool is rebuilt on every reload; what must outlive the rebuild (health, active counts,
//! whether the server is closing) is the server's `ServerLive`, which the new pool takes
//! over by identity (pool name + address + port), never by position.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::algorithm;
use crate::config::{Balance, PoolConfig, ServerConfig};
use crate::metrics::{BackendMetrics, Metrics};

/// The part of a server that survives a reload: the old and the new `Server` share it, so
/// a connection counted by the old one is seen by leastconn in the new one, and a server
/// that checks took down stays down.
#[derive(Debug)]
pub struct ServerLive {
    up: AtomicBool,
    active: AtomicU64,
    /// Removed from the configuration or set to `drain`: no new connections, in-flight
    /// ones finish (sozu's Closing state).
    closing: AtomicBool,
    /// Fired when a closing server's drain time is over: its connections end.
    cut: Notify,
    cut_done: AtomicBool,
    /// A checker has run for this server: a checker replacing it resumes from `up`.
    checked: AtomicBool,
}

impl Default for ServerLive {
    fn default() -> Self {
        ServerLive {
            up: AtomicBool::new(true),
            active: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            cut: Notify::new(),
            cut_done: AtomicBool::new(false),
            checked: AtomicBool::new(false),
        }
    }
}

impl ServerLive {
    pub fn set_closing(&self, closing: bool) {
        self.closing.store(closing, Ordering::Relaxed);
        if !closing {
            self.cut_done.store(false, Ordering::Relaxed);
        }
    }
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
    /// Ends the connections of a server still closing (its drain time is over).
    pub fn cut(&self) {
        if self.is_closing() {
            self.cut_done.store(true, Ordering::SeqCst);
            self.cut.notify_waiters();
        }
    }
    /// Whether `cut` was called: HTTP transfers check it at each read (a flag, no lock).
    pub fn is_cut(&self) -> bool {
        self.cut_done.load(Ordering::Relaxed)
    }

    /// Resolves when `cut` is called (at once if it already was).
    pub async fn cut_signal(&self) {
        let notified = self.cut.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.cut_done.load(Ordering::SeqCst) {
            return;
        }
        notified.await
    }
}

pub struct Server {
    pub config: ServerConfig,
    /// Name in logs and metrics: the address as configured.
    pub label: String,
    pub live: Arc<ServerLive>,
    pub metrics: BackendMetrics,
}

impl Server {
    pub fn is_up(&self) -> bool {
        self.live.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.live.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
    }

    /// Up, and neither set to drain nor removed by a reload: may take a new connection.
    pub fn is_available(&self) -> bool {
        self.is_up() && !self.config.drain && !self.live.is_closing()
    }

    /// Whether a health checker has judged this server before (see `health::driver`).
    pub fn live_checked(&self) -> bool {
        self.live.checked.load(Ordering::Relaxed)
    }

    pub fn mark_checked(&self) {
        self.live.checked.store(true, Ordering::Relaxed);
    }

    pub fn active(&self) -> u64 {
        self.live.active.load(Ordering::Relaxed)
    }

    /// The address to connect to for a client that dialled `dialled_port`.
    pub fn target(&self, dialled_port: u16) -> SocketAddr {
        SocketAddr::new(self.config.address, self.config.port.unwrap_or(dialled_port))
    }
}

/// Counts a connection against a server until dropped: for leastconn from the moment it is
/// chosen (so parallel choices see it), in the active-connections gauge once connected.
pub struct ActiveGuard {
    server: Arc<Server>,
    connected: bool,
}

impl ActiveGuard {
    pub fn new(server: Arc<Server>) -> Self {
        server.live.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { server, connected: false }
    }
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
    /// The upstream connection is established: count it as open.
    pub fn connected(&mut self) {
        if !self.connected {
            self.connected = true;
            self.server.metrics.active.inc();
            self.server.metrics.connections.inc();
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.server.live.active.fetch_sub(1, Ordering::Relaxed);
        if self.connected {
            self.server.metrics.active.dec();
        }
    }
}

pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub servers: Vec<Arc<Server>>,
    weights: Vec<u32>,
    addresses: Vec<IpAddr>,
    schedule: Vec<usize>,
    tick: AtomicUsize,
    /// Opaque per-server values for portier's stickiness cookie (no address leaks to clients).
    cookie_values: Vec<String>,
}

impl Pool {
    /// Builds the pool; `carried` gives the live state of a server the running pool of the
    /// same name already has (None: a new server, which starts up, as at a fresh start).
    pub fn new(
        config: &PoolConfig,
        metrics: &Metrics,
        carried: impl Fn(&ServerConfig) -> Option<Arc<ServerLive>>,
    ) -> Pool {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| {
                let label = s.label();
                let m = metrics.backend(&config.name, &label);
                let live = carried(s).unwrap_or_default();
                m.up.set(i64::from(live.up.load(Ordering::Relaxed)));
                Arc::new(Server { config: *s, label, live, metrics: m })
            })
            .collect();
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        Pool {
            name: config.name.clone(),
            balance: config.balance,
            schedule: algorithm::smooth_schedule(&weights),
            addresses: config.servers.iter().map(|s| s.address).collect(),
            cookie_values: config
                .servers
                .iter()
                .map(|s| {
                    format!("{:016x}", algorithm::stable_hash(&format!("{}/{}", config.name, s.label())))
                })
                .collect(),
            weights,
            servers,
            tick: AtomicUsize::new(0),
        }
    }

    /// The stickiness-cookie value that designates server `i`.
    pub fn cookie_value(&self, i: usize) -> &str {
        &self.cookie_values[i]
    }

    /// The server a stickiness-cookie value designates.
    pub fn index_of_cookie(&self, value: &str) -> Option<usize> {
        self.cookie_values.iter().position(|v| v == value)
    }

    /// Index of the first server with this IP (sticky entries store IPs, see `sticky`).
    pub fn index_of(&self, ip: IpAddr) -> Option<usize> {
        self.addresses.iter().position(|a| *a == ip)
    }

    /// Chooses a server by the pool's algorithm among those `usable` says yes to.
    pub fn pick(&self, client: IpAddr, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| self.servers[i].is_available() && usable(i);
        match self.balance {
            Balance::RoundRobin => {
                let t = self.tick.fetch_add(1, Ordering::Relaxed);
                algorithm::round_robin(&self.schedule, t, ok)
            }
            Balance::LeastConn => {
                let t = self.tick.fetch_add(1, Ordering::Relaxed);
                algorithm::least_conn(&self.weights, |i| self.servers[i].active(), t, ok)
            }
            Balance::SourceHash => algorithm::source_hash(client, &self.addresses, &self.weights, ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, weights: &[u32]) -> Pool {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| ServerConfig {
                address: format!("198.18.2.{}", 11 + i).parse().unwrap(),
                port: None,
                weight: *w,
                drain: false,
            })
            .collect();
        Pool::new(
            &PoolConfig { name: "p".into(), balance, servers, check: None, tls: None },
            &Metrics::new(),
            |_| None,
        )
    }

    #[test]
    fn down_servers_are_skipped() {
        let p = pool(Balance::RoundRobin, &[1, 1]);
        p.servers[0].set_up(false);
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        assert!((0..10).all(|_| p.pick(c, |_| true) == Some(1)));
        p.servers[1].set_up(false);
        assert_eq!(p.pick(c, |_| true), None);
    }

    #[test]
    fn leastconn_counts_active_guards() {
        let p = pool(Balance::LeastConn, &[1, 1]);
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let g = ActiveGuard::new(p.servers[p.pick(c, |_| true).unwrap()].clone());
        let other = p.pick(c, |_| true).unwrap();
        assert_ne!(&p.servers[other].label, &g.server().label);
        drop(g);
        assert_eq!(p.servers.iter().map(|s| s.active()).sum::<u64>(), 0);
    }

    #[test]
    fn weights_are_respected_by_round_robin() {
        let p = pool(Balance::RoundRobin, &[3, 1]);
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let mut n = [0; 2];
        for _ in 0..400 {
            n[p.pick(c, |_| true).unwrap()] += 1;
        }
        assert_eq!(n, [300, 100]);
    }
}
