//! Interception plumbing owned by portier: the `inet portier` nftables table (TPROXY rules)
//! and the fwmark policy routing, installed at start, removed at stop, checked by `doctor`.

mod command;
pub mod doctor;
pub mod routing;
pub mod ruleset;

pub use command::InterceptError;
pub use ruleset::{listener_addrs, listener_ports, render_replace, render_routing, render_table};

use crate::config::{Config, InterceptConfig};
use command::run;

/// Installs the nftables table (replacing any leftover atomically) and the policy routing.
pub fn install(config: &Config, ports: &[u16]) -> Result<(), InterceptError> {
    run("nft", &["-f", "-"], Some(&render_replace(config, ports)))?;
    if let Err(e) = routing::install(&config.intercept, &routing::families_in_use(config)) {
        remove(&config.intercept);
        return Err(e);
    }
    Ok(())
}

/// A reload: replaces the table in one transaction (new rules take effect for new
/// connections at once; established ones match the socket rule, which is in both), and adds
/// the policy routing of an address family `old` did not use.
pub fn reload(old: &Config, new: &Config, ports: &[u16]) -> Result<(), InterceptError> {
    run("nft", &["-f", "-"], Some(&render_replace(new, ports)))?;
    let had = routing::families_in_use(old);
    let added: Vec<&str> = routing::families_in_use(new).into_iter().filter(|f| !had.contains(f)).collect();
    routing::add(&new.intercept, &added)
}

/// Removes everything `install` created. Missing pieces are fine: removal must always finish.
pub fn remove(i: &InterceptConfig) {
    let _ = run("nft", &["delete", "table", ruleset::TABLE_FAMILY, ruleset::TABLE_NAME], None);
    routing::remove(i);
}

/// `portier cleanup`: removes what `install` creates, whatever process left it (a crash, a
/// SIGKILL), and says what it found. Nothing found is fine: it is idempotent. Fails only when
/// something is still there after the removal (e.g. no CAP_NET_ADMIN).
pub fn cleanup(i: &InterceptConfig) -> Result<Vec<String>, String> {
    let found = |i: &InterceptConfig| {
        let mut found = Vec::new();
        if installed_table().is_some() {
            found.push(format!("nftables table {} {}", ruleset::TABLE_FAMILY, ruleset::TABLE_NAME));
        }
        for fam in ["-4", "-6"] {
            let n = routing::count_rules(fam, i).unwrap_or(0);
            if n > 0 {
                found.push(format!("{n} ip {fam} rule(s) fwmark {:#x} lookup {}", i.fwmark, i.route_table));
            }
            if routing::has_local_route(fam, i).unwrap_or(false) {
                found.push(format!("ip {fam} local route in table {}", i.route_table));
            }
        }
        found
    };
    let before = found(i);
    remove(i);
    let left = found(i);
    if left.is_empty() {
        Ok(before)
    } else {
        Err(format!("could not remove: {} (needs root or CAP_NET_ADMIN)", left.join(", ")))
    }
}

/// The installed table as `nft list table` prints it, or None when absent.
pub fn installed_table() -> Option<String> {
    run("nft", &["list", "table", ruleset::TABLE_FAMILY, ruleset::TABLE_NAME], None).ok()
}
