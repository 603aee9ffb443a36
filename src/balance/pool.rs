//! A pool of servers as the proxy sees it at run time: configuration plus live state
//! (health flag, active connections) and cached metric handles, all atomics.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::algorithm;
use crate::config::{Balance, PoolConfig, ServerConfig};
use crate::metrics::{BackendMetrics, Metrics};

pub struct Server {
    pub config: ServerConfig,
    /// Name in logs and metrics: the address as configured.
    pub label: String,
    up: AtomicBool,
    active: AtomicU64,
    pub metrics: BackendMetrics,
}

impl Server {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
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
        server.active.fetch_add(1, Ordering::Relaxed);
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
        self.server.active.fetch_sub(1, Ordering::Relaxed);
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
    pub fn new(config: &PoolConfig, metrics: &Metrics) -> Pool {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| {
                let label = s.label();
                let m = metrics.backend(&config.name, &label);
                m.up.set(1);
                Arc::new(Server {
                    config: *s,
                    label,
                    up: AtomicBool::new(true),
                    active: AtomicU64::new(0),
                    metrics: m,
                })
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
        let ok = |i: usize| self.servers[i].is_up() && usable(i);
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
            })
            .collect();
        Pool::new(&PoolConfig { name: "p".into(), balance, servers, check: None, tls: None }, &Metrics::new())
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
