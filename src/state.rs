//! The running state: services, pools, servers and stickiness tables built from a validated
//! `Config`. Read by the proxies, health checkers and admin; it imports none of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Pool, StickyTable};
use crate::config::{Config, ServiceConfig, Source};
use crate::intercept::listener_ports;
use crate::metrics::{Metrics, ServiceMetrics};

pub struct Service {
    pub config: ServiceConfig,
    pub pool: Arc<Pool>,
    pub sticky: Option<Arc<StickyTable>>,
    pub metrics: ServiceMetrics,
    /// Loopback port of this service's transparent listeners (the tproxy target).
    pub listener_port: u16,
}

impl Service {
    /// Whether server `i` can carry a connection from `client` given where it leaves from:
    /// a transparent connection keeps the client's address family.
    fn family_ok(&self, i: usize, client: IpAddr) -> bool {
        let server = self.pool.servers[i].config.address;
        match self.config.source {
            Source::Client => server.is_ipv4() == client.is_ipv4(),
            Source::Address(ip) => server.is_ipv4() == ip.is_ipv4(),
            Source::Balancer => true,
        }
    }

    /// Picks a server for `client`, skipping `tried` (failed connects of this connection).
    /// The stickiness table is honoured while its server is usable, otherwise re-chosen.
    pub fn choose(&self, client: IpAddr, tried: &[usize], now: Instant) -> Option<usize> {
        let usable = |i: usize| self.family_ok(i, client) && !tried.contains(&i);
        if let Some(table) = &self.sticky {
            if let Some(i) = table.get(client, now).and_then(|ip| self.pool.index_of(ip)) {
                if self.pool.servers[i].is_up() && usable(i) {
                    return Some(i);
                }
            }
        }
        let i = self.pool.pick(client, usable)?;
        if let Some(table) = &self.sticky {
            table.set(client, self.pool.servers[i].config.address, now);
        }
        Some(i)
    }
}

pub struct State {
    pub config: Arc<Config>,
    pub pools: Vec<Arc<Pool>>,
    pub services: Vec<Arc<Service>>,
    pub sticky_tables: Vec<Arc<StickyTable>>,
}

impl State {
    pub fn build(config: Config, metrics: &Metrics) -> State {
        let pools: Vec<Arc<Pool>> = config.pools.iter().map(|p| Arc::new(Pool::new(p, metrics))).collect();
        let mut tables: BTreeMap<String, Arc<StickyTable>> = BTreeMap::new();
        let ports = listener_ports(&config);
        let services = config
            .services
            .iter()
            .zip(ports)
            .map(|(s, listener_port)| {
                let sticky = s.sticky.as_ref().map(|st| {
                    tables
                        .entry(st.table.clone())
                        .or_insert_with(|| Arc::new(StickyTable::new(&st.table, st.expire)))
                        .clone()
                });
                Arc::new(Service {
                    config: s.clone(),
                    pool: pools[s.pool].clone(),
                    sticky,
                    metrics: metrics.service(&s.name),
                    listener_port,
                })
            })
            .collect();
        State { config: Arc::new(config), pools, services, sticky_tables: tables.into_values().collect() }
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
            let a = rpc.pool.servers[rpc.choose(client, &[], now).unwrap()].config.address;
            let b = web.pool.servers[web.choose(client, &[], now).unwrap()].config.address;
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
        rpc.pool.servers[first].set_up(false);
        let second = rpc.choose(client, &[], now).unwrap();
        assert_ne!(first, second);
        rpc.pool.servers[first].set_up(true);
        // the client stays on its new server after the old one returns
        assert_eq!(rpc.choose(client, &[], now + Duration::from_secs(1)), Some(second));
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
