//! Policy routing for TPROXY: packets carrying portier's mark are delivered locally.

use super::command::{run, InterceptError};
use crate::config::{Config, InterceptConfig};

/// The two address families and the prefix that covers each.
const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

/// The `ip` family flags of the VIPs in use: an IPv4-only configuration must start on a host
/// whose kernel has IPv6 disabled, so IPv6 routing is only installed when a VIP needs it.
pub fn families_in_use(config: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let vips = || config.services.iter().flat_map(|s| s.vips.iter());
    if vips().any(|v| v.is_ipv4()) {
        out.push("-4");
    }
    if vips().any(|v| v.is_ipv6()) {
        out.push("-6");
    }
    out
}

/// Installs `fwmark M lookup T` and `local default dev lo table T` for the given families.
/// Existing copies are removed first, so a restart after a crash never duplicates them.
pub fn install(i: &InterceptConfig, families: &[&str]) -> Result<(), InterceptError> {
    remove_rules(i);
    add(i, families)
}

/// Adds the rule and route of families a reload brings in (the first IPv6 VIP), leaving
/// those in place untouched: removing and re-adding them would blackhole marked packets.
pub fn add(i: &InterceptConfig, families: &[&str]) -> Result<(), InterceptError> {
    let mark = format!("{:#x}", i.fwmark);
    let table = i.route_table.to_string();
    for (fam, prefix) in FAMILIES.iter().copied().filter(|(f, _)| families.contains(f)) {
        run("ip", &[fam, "rule", "add", "fwmark", &mark, "lookup", &table], None)?;
        run("ip", &[fam, "route", "replace", "local", prefix, "dev", "lo", "table", &table], None)?;
    }
    Ok(())
}

/// Removes every copy of the rules and the local routes; missing ones are not an error.
pub fn remove(i: &InterceptConfig) {
    remove_rules(i);
    let table = i.route_table.to_string();
    for (fam, prefix) in FAMILIES {
        let _ = run("ip", &[fam, "route", "del", "local", prefix, "dev", "lo", "table", &table], None);
    }
}

fn remove_rules(i: &InterceptConfig) {
    let mark = format!("{:#x}", i.fwmark);
    let table = i.route_table.to_string();
    for (fam, _) in FAMILIES {
        // `ip rule del` removes one match per call; bounded so a surprise cannot spin forever.
        for _ in 0..64 {
            if run("ip", &[fam, "rule", "del", "fwmark", &mark, "lookup", &table], None).is_err() {
                break;
            }
        }
    }
}

/// How many `fwmark M lookup T` rules exist for a family ("-4" or "-6").
pub fn count_rules(fam: &str, i: &InterceptConfig) -> Result<usize, InterceptError> {
    let out = run("ip", &[fam, "rule", "show"], None)?;
    Ok(count_rules_in(&out, i))
}

pub fn count_rules_in(ip_rule_show: &str, i: &InterceptConfig) -> usize {
    let want_mark = format!("fwmark {:#x}", i.fwmark);
    let want_table = format!("lookup {}", i.route_table);
    ip_rule_show
        .lines()
        .filter(|l| {
            // "32765:\tfrom all fwmark 0x1 lookup 100" (a mask may follow the mark: "0x1/0xff")
            let mark_ok = l.contains(&format!("{want_mark} ")) || l.contains(&format!("{want_mark}/"));
            mark_ok && l.trim_end().ends_with(&want_table)
        })
        .count()
}

/// Whether the local default route exists in the table for a family.
pub fn has_local_route(fam: &str, i: &InterceptConfig) -> Result<bool, InterceptError> {
    let out = run("ip", &[fam, "route", "show", "table", &i.route_table.to_string()], None)?;
    Ok(out.lines().any(|l| l.starts_with("local default") && l.contains("dev lo")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_matching_rules_only() {
        let i = InterceptConfig { fwmark: 1, route_table: 100 };
        let out = "0:\tfrom all lookup local\n32764:\tfrom all fwmark 0x1 lookup 100\n\
                   32763:\tfrom all fwmark 0x1 lookup 100\n32762:\tfrom all fwmark 0x10 lookup 100\n\
                   32761:\tfrom all fwmark 0x1 lookup 1000\n32766:\tfrom all lookup main\n";
        assert_eq!(count_rules_in(out, &i), 2);
    }
}
