//! How many descriptors and client connections the data path may have, worked out from the
//! process's descriptor limit and the configuration, at start and at every reload.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::descriptors::{open_file_limit, DATA_PATH};
use crate::proxy::admission::ConnectionLimit;

/// What the data path gets of a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Kept for everything else: `global.reserved_descriptors`, one per server (its health
    /// check) and SIP's `sip.limits.connections`.
    pub reserved: usize,
    pub descriptors: usize,
    pub max_connections: usize,
}

/// The budget under descriptor limit `nofile` (None: unlimited); pure.
pub fn budget(config: &Config, nofile: Option<usize>) -> Budget {
    let servers: usize = config.pools.iter().map(|p| p.servers.len()).sum();
    let sip = config.sip.as_ref().map_or(0, |s| s.limits.connections);
    let reserved = config.global.reserved_descriptors + servers + sip;
    let descriptors = match nofile {
        None => usize::MAX,
        // A limit below the reserve still leaves the data path a quarter (warned about).
        Some(n) if n <= reserved => n / 4,
        Some(n) => n - reserved,
    };
    // Each proxied connection holds two descriptors: the client's and the server's.
    let max_connections = config.global.max_connections.unwrap_or(descriptors / 2);
    Budget { reserved, descriptors, max_connections }
}

/// Raises the soft descriptor limit to the hard one, as servers do: a shell's 1024 would
/// otherwise cap portier far below what the system allows.
pub fn raise_open_file_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::debug!("could not raise the descriptor limit to {}", r.rlim_max);
            }
        }
    }
}

/// Applies `config`'s budget under the current descriptor limit.
pub fn apply(config: &Config, limit: &ConnectionLimit, metrics: &Metrics) -> Budget {
    let nofile = open_file_limit();
    let b = budget(config, nofile);
    if let Some(n) = nofile {
        if n <= b.reserved {
            tracing::warn!(
                limit = n,
                reserved = b.reserved,
                "the descriptor limit is below what admin, health checks and SIP keep in reserve: the data path gets {} (raise LimitNOFILE, or lower sip.limits.connections / global.reserved_descriptors)",
                b.descriptors
            );
        }
    }
    if b.max_connections.saturating_mul(2) > b.descriptors {
        tracing::info!(
            max_connections = b.max_connections,
            descriptors = b.descriptors,
            "global.max_connections needs more descriptors than the data path has: connections beyond them are refused as `descriptors`"
        );
    }
    DATA_PATH.set_budget(b.descriptors);
    limit.set_limit(b.max_connections);
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.limits.descriptors_limit.set(gauge(b.descriptors));
    metrics.limits.connections_limit.set(gauge(b.max_connections));
    tracing::debug!(?b, "connection limits");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "{extra}\n[pools.web]\nservers = [{{ address = \"198.18.2.11:80\" }}, {{ address = \"198.18.2.12:80\" }}]\n\
             [services.web]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"web\"\n"
        );
        crate::config::parse(&text, Path::new("t.toml")).expect("test config")
    }

    #[test]
    fn the_data_path_gets_the_limit_less_the_reserve_and_half_of_it_in_connections() {
        let b = budget(&config(""), Some(20_000));
        // 256 by default and one per server.
        assert_eq!(b, Budget { reserved: 258, descriptors: 19_742, max_connections: 9_871 });
        let b = budget(&config("[global]\nmax_connections = 100\nreserved_descriptors = 42"), Some(1024));
        assert_eq!(b, Budget { reserved: 44, descriptors: 980, max_connections: 100 });
        // Below the reserve: a quarter, not nothing.
        assert_eq!(budget(&config(""), Some(200)).descriptors, 50);
        assert_eq!(budget(&config(""), None).descriptors, usize::MAX);
    }

    #[test]
    fn sip_connections_are_kept_in_reserve() {
        let sip = "[sip]\nlisten = [\"udp:198.18.1.1:5060\"]\ndomain = \"pbx.example.test\"\nlimits = { connections = 1000 }";
        assert_eq!(budget(&config(sip), Some(20_000)).reserved, 256 + 2 + 1000);
    }
}
