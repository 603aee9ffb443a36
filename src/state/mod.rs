//! The running state: services, pools, servers and stickiness tables built from a validated
//! `Config`. Read by the proxies, health checkers and admin; it imports none of them.
//!
//! A state is immutable once built. A reload builds a new one from the new file, taking over
//! by identity what must survive (`carry`), and `plan` says what changed between two files.

mod carry;
pub mod plan;

pub use carry::Carry;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Pool, Server, StickyTable};
use crate::config::{Config, RouteConfig, ServiceConfig, Source, StickyBy};
use crate::intercept::listener_ports;
use crate::metrics::{Metrics, ServiceMetrics};
use crate::net::{ClientAddr, UpstreamSource};

/// How a service keeps a client on one server.
pub enum Sticky {
    /// A shared client-IP table.
    ClientIp(Arc<StickyTable>),
    /// portier's own cookie, whose value names the server (see `Pool::cookie_value`).
    Cookie { name: String, expire: std::time::Duration },
    /// The server's cookie: value -> server learnt from Set-Cookie.
    ServerCookie { name: String, table: Arc<StickyTable<String>> },
}

pub use crate::log_limit::LogLimiter;

pub struct Service {
    pub config: ServiceConfig,
    /// The default pool; None only for redirect services.
    pub pool: Option<Arc<Pool>>,
    /// Routing rules in order, each with its pool.
    pub routes: Vec<(RouteConfig, Arc<Pool>)>,
    pub sticky: Option<Sticky>,
    pub metrics: ServiceMetrics,
    /// Loopback port of this service's transparent listeners (the tproxy target).
    pub listener_port: u16,
    /// At most one "no server available" line per second, with a count of those skipped.
    pub no_server_log: LogLimiter,
    /// The same for failed server connects (a dead server, or no descriptor left: per
    /// connection otherwise); `portier_backend_connect_errors_total` counts every one.
    pub connect_error_log: LogLimiter,
}

impl Service {
    /// The default pool of a service that has one (all modes but redirect).
    pub fn default_pool(&self) -> &Arc<Pool> {
        self.pool.as_ref().expect("validation gives every non-redirect service a pool")
    }

    /// Whether server `i` of `pool` can carry a connection from `client` given where it
    /// leaves from: a transparent connection keeps the client's address family.
    fn family_ok(&self, pool: &Pool, i: usize, client: IpAddr) -> bool {
        let server = pool.servers[i].config.address;
        match self.config.source {
            Source::Client => server.is_ipv4() == client.is_ipv4(),
            Source::Address(ip) => server.is_ipv4() == ip.is_ipv4(),
            Source::Balancer => true,
        }
    }

    /// Picks a server of the default pool for `client` (layer 4).
    pub fn choose(&self, client: IpAddr, tried: &[usize], now: Instant) -> Option<usize> {
        self.choose_in(self.default_pool(), client, None, tried, now)
    }

    /// Picks a server of `pool` for `client`, skipping `tried` (failed connects of this
    /// request or connection). A `preferred` server index (from a cookie) or the client-IP
    /// table's entry is honoured while usable, otherwise the pool's algorithm chooses again,
    /// and a client-IP table is updated with the choice.
    pub fn choose_in(
        &self,
        pool: &Pool,
        client: IpAddr,
        preferred: Option<usize>,
        tried: &[usize],
        now: Instant,
    ) -> Option<usize> {
        let usable = |i: usize| self.family_ok(pool, i, client) && !tried.contains(&i);
        let ok = |i: usize| pool.servers[i].is_available() && usable(i);
        let pick = || match preferred {
            Some(i) if ok(i) => Some(i),
            _ => pool.pick(client, usable),
        };
        let Some(Sticky::ClientIp(table)) = &self.sticky else { return pick() };
        // Lookup, choice and record under one lock: a client's parallel first connections
        // (Outlook opens several) all land on the server the first one chose.
        table.with_entry(client, now, |servers| {
            if let Some(i) = servers.iter().filter_map(|ip| pool.index_of(*ip)).find(|&i| ok(i)) {
                return Some(i);
            }
            let i = pick()?;
            // Replace this pool's stale choice; keep choices made in other pools of the table.
            servers.retain(|ip| pool.index_of(*ip).is_none());
            servers.push(pool.servers[i].config.address);
            Some(i)
        })
    }

    /// Where this service's connections to servers leave from for `client`: one mapping for
    /// the L4 and both L7 paths.
    pub fn upstream_source(&self, client: ClientAddr) -> UpstreamSource {
        match self.config.source {
            Source::Client => UpstreamSource::Client(client.ip()),
            Source::Balancer => UpstreamSource::Kernel,
            Source::Address(ip) => UpstreamSource::Fixed(ip),
        }
    }

    /// Keeps the client's stickiness alive while one of its connections is open.
    pub fn touch_sticky(&self, client: IpAddr) {
        if let Some(Sticky::ClientIp(table)) = &self.sticky {
            table.touch(&client, Instant::now());
        }
    }
}

pub struct State {
    pub config: Arc<Config>,
    /// In the configuration's order (pools by name).
    pub pools: Vec<Arc<Pool>>,
    pub services: Vec<Arc<Service>>,
    /// Client-IP tables by name.
    pub sticky_tables: BTreeMap<String, Arc<StickyTable>>,
    /// Server-cookie tables by (service, cookie name).
    pub cookie_tables: BTreeMap<(String, String), Arc<StickyTable<String>>>,
}

impl State {
    /// A state for a fresh start: every server up, empty tables.
    pub fn build(config: Config, metrics: &Metrics) -> State {
        State::rebuild(config, metrics, &Carry::default())
    }

    /// A state for `config` that takes over from `carry` (the running state's live parts)
    /// whatever has the same identity. Nothing running is changed: `commit` does that once
    /// the new state is the one serving.
    pub fn rebuild(config: Config, metrics: &Metrics, carry: &Carry) -> State {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::new(p, metrics, |s| carry.server(&p.name, s.id()))))
            .collect();
        let by_name: BTreeMap<&str, &Arc<Pool>> = pools.iter().map(|p| (p.name.as_str(), p)).collect();
        let pool = |name: &str| -> Arc<Pool> {
            Arc::clone(by_name.get(name).expect("validation resolves every pool name"))
        };
        let mut tables: BTreeMap<String, Arc<StickyTable>> = BTreeMap::new();
        let mut cookie_tables = BTreeMap::new();
        let ports = listener_ports(&config);
        let services = config
            .services
            .iter()
            .zip(ports)
            .map(|(s, listener_port)| {
                let sticky = s.sticky.as_ref().map(|st| match &st.by {
                    StickyBy::ClientIp { table } => Sticky::ClientIp(
                        tables
                            .entry(table.clone())
                            .or_insert_with(|| {
                                carry
                                    .sticky_table(table)
                                    .unwrap_or_else(|| Arc::new(StickyTable::new(table, st.expire)))
                            })
                            .clone(),
                    ),
                    StickyBy::Cookie { name } => Sticky::Cookie { name: name.clone(), expire: st.expire },
                    StickyBy::ServerCookie { name } => {
                        let key = (s.name.clone(), name.clone());
                        let table = carry.cookie_table(&key).unwrap_or_else(|| {
                            Arc::new(StickyTable::new(&format!("{}/{name}", s.name), st.expire))
                        });
                        cookie_tables.insert(key, table.clone());
                        Sticky::ServerCookie { name: name.clone(), table }
                    }
                });
                let service_metrics = metrics.service(&s.name);
                service_metrics.set_limit(s.max_connections);
                Arc::new(Service {
                    config: s.clone(),
                    pool: s.pool.as_deref().map(pool),
                    routes: s.routes.iter().map(|r| (r.clone(), pool(&r.pool))).collect(),
                    sticky,
                    metrics: service_metrics,
                    listener_port,
                    no_server_log: LogLimiter::default(),
                    connect_error_log: LogLimiter::default(),
                })
            })
            .collect();
        State { config: Arc::new(config), pools, services, sticky_tables: tables, cookie_tables }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.config.name == name)
    }

    /// Makes this state the serving one for what it shares with `old`: servers removed or
    /// set to drain close (no new connections, in-flight ones go on), servers back from a
    /// drain open again, tables take their new expiry and forget removed servers. Returns
    /// the servers now closing that were not before (the runtime cuts them after the drain
    /// time).
    pub fn commit(&self, old: Option<&State>) -> Vec<Arc<Server>> {
        let mut newly_closing = Vec::new();
        for pool in &self.pools {
            for s in &pool.servers {
                if s.config.drain != s.live.is_closing() {
                    s.live.set_closing(s.config.drain);
                    if s.config.drain {
                        newly_closing.push(s.clone());
                    }
                }
            }
        }
        if let Some(old) = old {
            for pool in &old.pools {
                for s in &pool.servers {
                    let kept = self
                        .pool(&pool.name)
                        .is_some_and(|p| p.servers.iter().any(|n| n.config.id() == s.config.id()));
                    if !kept && !s.live.is_closing() {
                        s.live.set_closing(true);
                        newly_closing.push(s.clone());
                    }
                }
            }
        }
        let addresses: std::collections::HashSet<IpAddr> =
            self.pools.iter().flat_map(|p| p.servers.iter().map(|s| s.config.address)).collect();
        for (name, t) in &self.sticky_tables {
            if let Some(expire) = self.sticky_expire(name) {
                t.set_expire(expire);
            }
            t.retain_servers(|ip| addresses.contains(&ip));
        }
        for ((service, _), t) in &self.cookie_tables {
            if let Some(st) = self.service(service).and_then(|s| s.config.sticky.as_ref()) {
                t.set_expire(st.expire);
            }
            t.retain_servers(|ip| addresses.contains(&ip));
        }
        newly_closing
    }

    /// The expiry of a client-IP table: the longest any of its services asks for.
    fn sticky_expire(&self, table: &str) -> Option<std::time::Duration> {
        self.config
            .services
            .iter()
            .filter_map(|s| s.sticky.as_ref())
            .filter(|st| st.table() == Some(table))
            .map(|st| st.expire)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn state() -> State {
        let c = crate::config::parse(
            "[pools.rpc]\nservers = [{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\" }]\n\
             [pools.web]\nbalance = \"roundrobin\"\nservers = [{ address = \"198.18.2.12:443\" }, { address = \"198.18.2.11:443\" }]\n\
             [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"rpc\"\nsticky = { by = \"client-ip\", table = \"cas\" }\n\
             [services.web]\nvip = \"198.19.0.10\"\nports = [443]\npool = \"web\"\nsticky = { by = \"client-ip\", table = \"cas\" }\n",
            Path::new("t.toml"),
        )
        .unwrap();
        State::build(c, &Metrics::new())
    }

    #[test]
    fn a_shared_table_sends_one_client_to_one_host_across_pools() {
        let s = state();
        assert_eq!(s.sticky_tables.len(), 1);
        let now = Instant::now();
        for c in 2..50u8 {
            let client: IpAddr = format!("198.18.1.{c}").parse().unwrap();
            let rpc = &s.services[0];
            let web = &s.services[1];
            let a = rpc.default_pool().servers[rpc.choose(client, &[], now).unwrap()].config.address;
            let b = web.default_pool().servers[web.choose(client, &[], now).unwrap()].config.address;
            assert_eq!(a, b, "client {client}");
        }
    }

    #[test]
    fn sticky_server_down_is_rechosen_and_table_updated() {
        let s = state();
        let rpc = &s.services[0];
        let client: IpAddr = "198.18.1.2".parse().unwrap();
        let now = Instant::now();
        let first = rpc.choose(client, &[], now).unwrap();
        rpc.default_pool().servers[first].set_up(false);
        let second = rpc.choose(client, &[], now).unwrap();
        assert_ne!(first, second);
        rpc.default_pool().servers[first].set_up(true);
        // the client stays on its new server after the old one returns
        assert_eq!(rpc.choose(client, &[], now + Duration::from_secs(1)), Some(second));
    }

    #[test]
    fn parallel_first_connections_of_one_client_agree() {
        for _ in 0..20 {
            let s = Arc::new(state());
            let client: IpAddr = "198.18.1.9".parse().unwrap();
            let picks: Vec<IpAddr> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..8)
                    .map(|k| {
                        let s = s.clone();
                        sc.spawn(move || {
                            let svc = &s.services[k % 2];
                            let i = svc.choose(client, &[], Instant::now()).unwrap();
                            svc.default_pool().servers[i].config.address
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(picks.iter().all(|p| *p == picks[0]), "{picks:?}");
        }
    }

    #[test]
    fn a_shared_table_keeps_one_choice_per_pool_when_hosts_differ() {
        let c = crate::config::parse(
            "[pools.rpc]\nservers = [{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\" }]\n\
             [pools.web]\nservers = [{ address = \"198.18.2.21\" }, { address = \"198.18.2.22\" }]\n\
             [services.a]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"rpc\"\nsticky = { by = \"client-ip\", table = \"t\" }\n\
             [services.b]\nvip = \"198.19.0.10\"\nports = [443]\npool = \"web\"\nsticky = { by = \"client-ip\", table = \"t\" }\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let s = State::build(c, &Metrics::new());
        let client: IpAddr = "198.18.1.2".parse().unwrap();
        let now = Instant::now();
        let a1 = s.services[0].choose(client, &[], now).unwrap();
        for _ in 0..5 {
            s.services[1].choose(client, &[], now).unwrap();
            assert_eq!(
                s.services[0].choose(client, &[], now),
                Some(a1),
                "the web pool must not overwrite the rpc choice"
            );
        }
    }

    fn rebuilt(old: &State, text: &str) -> State {
        let c = crate::config::parse(text, Path::new("t.toml")).unwrap();
        let new = State::rebuild(c, &Metrics::new(), &Carry::from_state(old));
        new.commit(Some(old));
        new
    }

    const TWO: &str = "[pools.rpc]\nservers = [{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\" }]\n\
        [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"rpc\"\nsticky = { by = \"client-ip\", table = \"cas\" }\n";

    #[test]
    fn a_server_down_before_a_rebuild_is_down_after_it_and_sticky_clients_stay() {
        let old = State::build(crate::config::parse(TWO, Path::new("t.toml")).unwrap(), &Metrics::new());
        let client: IpAddr = "198.18.1.7".parse().unwrap();
        let now = Instant::now();
        let svc = &old.services[0];
        let chosen = svc.default_pool().servers[svc.choose(client, &[], now).unwrap()].config.address;
        let other = old.pools[0].servers.iter().find(|s| s.config.address != chosen).unwrap();
        other.set_up(false);
        let guard = crate::balance::ActiveGuard::new(old.pools[0].servers[0].clone());

        // Same servers, listed the other way round, one weight changed: matched by address.
        let new = rebuilt(
            &old,
            &TWO.replace(
                "[{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\" }]",
                "[{ address = \"198.18.2.12\", weight = 3 }, { address = \"198.18.2.11\" }]",
            ),
        );
        let by_addr =
            |ip: IpAddr| new.pools[0].servers.iter().find(|s| s.config.address == ip).unwrap().clone();
        assert!(!by_addr(other.config.address).is_up(), "DOWN stays DOWN until its checks say otherwise");
        assert!(by_addr(chosen).is_up());
        assert_eq!(by_addr(old.pools[0].servers[0].config.address).active(), 1, "active counts carried");
        drop(guard);
        assert_eq!(by_addr(old.pools[0].servers[0].config.address).active(), 0);
        let svc = &new.services[0];
        let again = svc.default_pool().servers[svc.choose(client, &[], now).unwrap()].config.address;
        assert_eq!(again, chosen, "the sticky client keeps its server");
        assert!(Arc::ptr_eq(&old.sticky_tables["cas"], &new.sticky_tables["cas"]));
    }

    #[test]
    fn removed_and_drained_servers_close_and_forget_their_sticky_clients() {
        let old = State::build(crate::config::parse(TWO, Path::new("t.toml")).unwrap(), &Metrics::new());
        old.commit(None);
        let now = Instant::now();
        let svc = &old.services[0];
        let client: IpAddr = "198.18.1.7".parse().unwrap();
        let i = svc.choose(client, &[], now).unwrap();
        let server = old.pools[0].servers[i].clone();
        let keep = old.pools[0].servers[1 - i].config.address;
        // the chosen server is removed, the other set to drain
        let text = TWO.replace(
            "[{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\" }]",
            &format!("[{{ address = \"{keep}\", drain = true }}, {{ address = \"198.18.2.13\" }}]"),
        );
        let new = rebuilt(&old, &text);
        assert!(server.live.is_closing(), "the old snapshot no longer sends to a removed server");
        assert!(!server.is_available());
        // A connection still holding the old snapshot finds neither: one removed, one draining.
        assert_eq!(old.services[0].choose(client, &[], now), None);
        assert!(
            new.sticky_tables["cas"].get(&client, now).is_none(),
            "the removed server's entry is dropped"
        );
        let svc = &new.services[0];
        let j = svc.choose(client, &[], now).unwrap();
        assert_eq!(svc.default_pool().servers[j].config.address.to_string(), "198.18.2.13");
        // back from the drain: it opens again
        let back = rebuilt(&new, &text.replace(", drain = true", ""));
        assert!(back.pools[0].servers.iter().all(|s| s.is_available()));
    }

    #[test]
    fn tried_servers_are_excluded() {
        let s = state();
        let rpc = &s.services[0];
        let client: IpAddr = "198.18.1.2".parse().unwrap();
        let first = rpc.choose(client, &[], Instant::now()).unwrap();
        let next = rpc.choose(client, &[first], Instant::now()).unwrap();
        assert_ne!(first, next);
        assert_eq!(rpc.choose(client, &[0, 1], Instant::now()), None);
    }
}
