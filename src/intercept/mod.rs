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

/// The installed table as `nft list table` prints it, or None when absent.
pub fn installed_table() -> Option<String> {
    run("nft", &["list", "table", ruleset::TABLE_FAMILY, ruleset::TABLE_NAME], None).ok()
}
