//! What a reload changes: a pure function of the running and the new configuration, so it can
//! be tested without sockets and printed before (or instead of) being applied. Things are
//! matched by name (services, pools, trunks) and by address (servers), never by position.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Config, PoolConfig, ServerConfig, ServiceConfig};
use crate::intercept::{listener_ports, render_table};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    ServiceAdded(String),
    ServiceRemoved(String),
    /// Fields of the service that differ (`vip`, `ports`, `pool`, ...).
    ServiceChanged {
        service: String,
        fields: Vec<&'static str>,
    },
    PoolAdded(String),
    PoolRemoved(String),
    PoolChanged {
        pool: String,
        fields: Vec<&'static str>,
    },
    ServerAdded {
        pool: String,
        server: String,
    },
    /// Takes no new connections; in-flight ones finish within `global.drain_timeout`.
    ServerRemoved {
        pool: String,
        server: String,
    },
    ServerDrain {
        pool: String,
        server: String,
        drain: bool,
    },
    ServerWeight {
        pool: String,
        server: String,
        from: u32,
        to: u32,
    },
    /// The nftables table differs: it is replaced in one transaction.
    Rules,
    /// The `[sip]` section differs: handed to the B2BUA, which keeps calls and registrations.
    Sip,
    /// `global.drain_timeout` (used by the next stop and by closing servers).
    DrainTimeout,
    /// `admin.token`.
    AdminToken,
    /// `global.max_connections` or `global.reserved_descriptors`.
    ConnectionLimits,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ServiceAdded(s) => write!(f, "service {s} added"),
            Step::ServiceRemoved(s) => write!(f, "service {s} removed"),
            Step::ServiceChanged { service, fields } => {
                write!(f, "service {service}: {} changed", fields.join(", "))
            }
            Step::PoolAdded(p) => write!(f, "pool {p} added"),
            Step::PoolRemoved(p) => write!(f, "pool {p} removed"),
            Step::PoolChanged { pool, fields } => write!(f, "pool {pool}: {} changed", fields.join(", ")),
            Step::ServerAdded { pool, server } => write!(f, "pool {pool}: server {server} added"),
            Step::ServerRemoved { pool, server } => {
                write!(f, "pool {pool}: server {server} removed (draining)")
            }
            Step::ServerDrain { pool, server, drain: true } => {
                write!(f, "pool {pool}: server {server} draining")
            }
            Step::ServerDrain { pool, server, drain: false } => {
                write!(f, "pool {pool}: server {server} back in service")
            }
            Step::ServerWeight { pool, server, from, to } => {
                write!(f, "pool {pool}: server {server} weight {from} -> {to}")
            }
            Step::Rules => write!(f, "nftables table replaced"),
            Step::Sip => write!(f, "sip reconfigured"),
            Step::DrainTimeout => write!(f, "global.drain_timeout changed"),
            Step::AdminToken => write!(f, "admin.token changed"),
            Step::ConnectionLimits => write!(f, "connection limits changed"),
        }
    }
}

/// The difference between two valid configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Fields that differ but cannot change in a running process; everything else applies.
    pub needs_restart: Vec<String>,
    /// What the B2BUA reported once it applied its part (filled in by the runtime).
    pub sip: Option<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.needs_restart.is_empty()
    }
    pub fn has(&self, step: &Step) -> bool {
        self.steps.contains(step)
    }
    pub fn rules_changed(&self) -> bool {
        self.has(&Step::Rules)
    }
    /// Names of pools whose servers or checks changed (their checkers are reconciled).
    pub fn touches_pool(&self, name: &str) -> bool {
        self.steps.iter().any(|s| match s {
            Step::PoolAdded(p) | Step::PoolRemoved(p) => p == name,
            Step::PoolChanged { pool, .. }
            | Step::ServerAdded { pool, .. }
            | Step::ServerRemoved { pool, .. }
            | Step::ServerDrain { pool, .. }
            | Step::ServerWeight { pool, .. } => pool == name,
            _ => false,
        })
    }
}

/// Computes what turns `old` into `new`.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    let restart = |p: &mut Plan, changed: bool, field: &'static str| {
        if changed {
            p.needs_restart.push(field.to_string());
        }
    };
    restart(&mut p, old.global.threads != new.global.threads, "global.threads");
    restart(&mut p, old.global.log_level != new.global.log_level, "global.log_level");
    restart(&mut p, old.admin.listen != new.admin.listen, "admin.listen");
    restart(&mut p, old.admin.control != new.admin.control, "admin.control");
    restart(&mut p, old.intercept.fwmark != new.intercept.fwmark, "intercept.fwmark");
    restart(&mut p, old.intercept.route_table != new.intercept.route_table, "intercept.route_table");
    restart(&mut p, old.sip.is_some() != new.sip.is_some(), "sip");
    if old.global.drain_timeout != new.global.drain_timeout {
        p.steps.push(Step::DrainTimeout);
    }
    if old.admin.token != new.admin.token {
        p.steps.push(Step::AdminToken);
    }
    let limits = |g: &crate::config::GlobalConfig| (g.max_connections, g.reserved_descriptors);
    if limits(&old.global) != limits(&new.global) {
        p.steps.push(Step::ConnectionLimits);
    }

    let old_pools: BTreeMap<&str, &PoolConfig> = old.pools.iter().map(|x| (x.name.as_str(), x)).collect();
    let new_pools: BTreeMap<&str, &PoolConfig> = new.pools.iter().map(|x| (x.name.as_str(), x)).collect();
    for (name, np) in &new_pools {
        match old_pools.get(name) {
            None => p.steps.push(Step::PoolAdded(name.to_string())),
            Some(op) => pool_steps(&mut p, op, np),
        }
    }
    for name in old_pools.keys().filter(|n| !new_pools.contains_key(*n)) {
        p.steps.push(Step::PoolRemoved(name.to_string()));
    }

    let old_svcs: BTreeMap<&str, &ServiceConfig> =
        old.services.iter().map(|x| (x.name.as_str(), x)).collect();
    let new_svcs: BTreeMap<&str, &ServiceConfig> =
        new.services.iter().map(|x| (x.name.as_str(), x)).collect();
    for (name, ns) in &new_svcs {
        match old_svcs.get(name) {
            None => p.steps.push(Step::ServiceAdded(name.to_string())),
            Some(os) => {
                let fields = service_fields(os, ns);
                if !fields.is_empty() {
                    p.steps.push(Step::ServiceChanged { service: name.to_string(), fields });
                }
            }
        }
    }
    for name in old_svcs.keys().filter(|n| !new_svcs.contains_key(*n)) {
        p.steps.push(Step::ServiceRemoved(name.to_string()));
    }

    if render_table(old, &listener_ports(old)) != render_table(new, &listener_ports(new)) {
        p.steps.push(Step::Rules);
    }
    if old.sip.is_some() && new.sip.is_some() && old.sip != new.sip {
        p.steps.push(Step::Sip);
    }
    p
}

fn pool_steps(p: &mut Plan, old: &PoolConfig, new: &PoolConfig) {
    let mut fields = Vec::new();
    if old.balance != new.balance {
        fields.push("balance");
    }
    if old.check != new.check {
        fields.push("check");
    }
    if old.tls != new.tls {
        fields.push("tls");
    }
    let order = |s: &[ServerConfig]| s.iter().map(ServerConfig::id).collect::<Vec<_>>();
    if !fields.is_empty() {
        p.steps.push(Step::PoolChanged { pool: new.name.clone(), fields });
    }
    let pool = || new.name.clone();
    for ns in &new.servers {
        match old.servers.iter().find(|o| o.id() == ns.id()) {
            None => p.steps.push(Step::ServerAdded { pool: pool(), server: ns.label() }),
            Some(os) => {
                if os.weight != ns.weight {
                    p.steps.push(Step::ServerWeight {
                        pool: pool(),
                        server: ns.label(),
                        from: os.weight,
                        to: ns.weight,
                    });
                }
                if os.drain != ns.drain {
                    p.steps.push(Step::ServerDrain { pool: pool(), server: ns.label(), drain: ns.drain });
                }
            }
        }
    }
    for os in old.servers.iter().filter(|o| !new.servers.iter().any(|n| n.id() == o.id())) {
        p.steps.push(Step::ServerRemoved { pool: pool(), server: os.label() });
    }
    // A reordered list changes roundrobin's schedule and the hash's tie-breaks only.
    if order(&old.servers) != order(&new.servers)
        && !p.steps.iter().any(|s| matches!(s, Step::ServerAdded { pool, .. } | Step::ServerRemoved { pool, .. } if *pool == new.name))
    {
        p.steps.push(Step::PoolChanged { pool: new.name.clone(), fields: vec!["servers (order)"] });
    }
}

fn service_fields(old: &ServiceConfig, new: &ServiceConfig) -> Vec<&'static str> {
    let mut f = Vec::new();
    let mut cmp = |changed: bool, name: &'static str| {
        if changed {
            f.push(name);
        }
    };
    cmp(old.vips != new.vips, "vip");
    cmp(old.ports != new.ports, "ports");
    cmp(old.mode != new.mode, "mode");
    cmp(old.pool != new.pool, "pool");
    cmp(old.routes != new.routes, "routes");
    cmp(old.certificates != new.certificates, "certificates");
    cmp(old.source != new.source, "source");
    cmp(old.sticky != new.sticky, "sticky");
    cmp(old.idle_timeout != new.idle_timeout, "idle_timeout");
    cmp(old.connect_timeout != new.connect_timeout, "connect_timeout");
    cmp(old.header_timeout != new.header_timeout, "header_timeout");
    cmp(old.response_timeout != new.response_timeout, "response_timeout");
    cmp(old.access_log != new.access_log, "access_log");
    cmp(old.server_reuse != new.server_reuse, "server_reuse");
    cmp(old.max_connections != new.max_connections, "max_connections");
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "[pools.cas]\nbalance = \"leastconn\"\n\
        servers = [{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\", weight = 2 }]\n\
        check = { type = \"tcp\", port = 135, interval = \"2s\" }\n\
        [pools.web]\nservers = [{ address = \"198.18.2.21:443\" }]\n\
        [services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\n\
        [services.web]\nvip = \"198.19.0.10\"\nports = [443]\npool = \"web\"\n";

    fn cfg(text: &str) -> Config {
        crate::config::parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_same_file_is_an_empty_plan() {
        assert!(plan(&cfg(BASE), &cfg(BASE)).is_empty());
    }

    #[test]
    fn servers_are_matched_by_address_not_position() {
        let swapped = BASE.replace(
            "servers = [{ address = \"198.18.2.11\" }, { address = \"198.18.2.12\", weight = 2 }]",
            "servers = [{ address = \"198.18.2.12\", weight = 3 }, { address = \"198.18.2.13\" }, { address = \"198.18.2.11\", drain = true }]",
        );
        let p = plan(&cfg(BASE), &cfg(&swapped));
        let server = |s: &str| s.to_string();
        assert_eq!(
            p.steps,
            vec![
                Step::ServerWeight { pool: "cas".into(), server: server("198.18.2.12"), from: 2, to: 3 },
                Step::ServerAdded { pool: "cas".into(), server: server("198.18.2.13") },
                Step::ServerDrain { pool: "cas".into(), server: server("198.18.2.11"), drain: true },
            ]
        );
        assert!(p.needs_restart.is_empty());
        assert!(!p.rules_changed(), "servers are not in the nftables table");
    }

    #[test]
    fn a_removed_server_and_a_changed_check_are_steps() {
        let new = BASE
            .replace(", { address = \"198.18.2.12\", weight = 2 }", "")
            .replace("interval = \"2s\"", "interval = \"5s\"");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert!(p.has(&Step::PoolChanged { pool: "cas".into(), fields: vec!["check"] }), "{p:?}");
        assert!(p.has(&Step::ServerRemoved { pool: "cas".into(), server: "198.18.2.12".into() }), "{p:?}");
        assert!(p.touches_pool("cas") && !p.touches_pool("web"));
    }

    #[test]
    fn services_added_removed_and_changed_change_the_rules() {
        let new =
            BASE.replace("[services.web]", "[services.owa]").replace("ports = [135]", "ports = [135, 593]");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(
            p.steps,
            vec![
                Step::ServiceAdded("owa".into()),
                Step::ServiceChanged { service: "rpc".into(), fields: vec!["ports"] },
                Step::ServiceRemoved("web".into()),
                Step::Rules,
            ]
        );
    }

    #[test]
    fn a_pool_added_before_another_shifts_nothing() {
        let new = format!("[pools.aaa]\nservers = [{{ address = \"198.18.2.31\" }}]\n{BASE}");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.steps, vec![Step::PoolAdded("aaa".into())]);
    }

    #[test]
    fn what_cannot_change_live_is_named_and_the_rest_still_planned() {
        let new = format!(
            "[global]\nthreads = 2\ndrain_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:9191\"\n[intercept]\nfwmark = 7\n{}",
            BASE.replace("weight = 2", "weight = 4")
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.needs_restart, vec!["global.threads", "admin.listen", "intercept.fwmark"]);
        assert!(p.has(&Step::DrainTimeout));
        assert!(p.has(&Step::ServerWeight {
            pool: "cas".into(),
            server: "198.18.2.12".into(),
            from: 2,
            to: 4
        }));
        // the fwmark is part of the rules: they differ, but only a restart applies them
        assert!(p.rules_changed());
    }

    #[test]
    fn steps_read_as_sentences() {
        let s = Step::ServerWeight { pool: "cas".into(), server: "198.18.2.12".into(), from: 1, to: 3 };
        assert_eq!(s.to_string(), "pool cas: server 198.18.2.12 weight 1 -> 3");
    }
}
