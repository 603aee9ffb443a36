//! The nftables ruleset portier owns, rendered as nft text: what `portier nft` prints is
//! exactly what `portier run` hands to `nft -f` in one atomic transaction.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, InterceptConfig, ServiceConfig};

/// The table portier creates; nothing else in the ruleset is touched.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "portier";

/// The loopback addresses each service's transparent listeners bind.
pub fn listener_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ]
}

/// One internal listener port per service: the service's lowest port when free, else the next
/// free one. Deterministic, so `portier nft` shows the ports `portier run` will use, and
/// readable (`tproxy ip to 127.0.0.1:135` for the RPC service).
pub fn listener_ports(config: &Config) -> Vec<u16> {
    let mut used: Vec<u16> = Vec::new();
    if config.admin.listen.ip().is_loopback() || config.admin.listen.ip().is_unspecified() {
        used.push(config.admin.listen.port());
    }
    config
        .services
        .iter()
        .map(|s| {
            let mut p = s.ports[0].low;
            while used.contains(&p) {
                p = p.checked_add(1).unwrap_or(1024);
            }
            used.push(p);
            p
        })
        .collect()
}

fn port_set(s: &ServiceConfig) -> String {
    let items: Vec<String> = s.ports.iter().map(|r| r.to_string()).collect();
    if items.len() == 1 && s.ports[0].low == s.ports[0].high {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

fn addr_set(addrs: &[IpAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// Renders the table body (without the replace preamble).
pub fn render_table(config: &Config, ports: &[u16]) -> String {
    let mark = config.intercept.fwmark;
    let mut t = String::new();
    let _ = writeln!(t, "table {TABLE_FAMILY} {TABLE_NAME} {{");
    let _ = writeln!(t, "\tchain prerouting {{");
    let _ = writeln!(t, "\t\ttype filter hook prerouting priority mangle; policy accept;");
    // A new connection's SYN (SYN without ACK) skips this rule on purpose: when the client
    // reuses a port whose previous connection sits in TIME_WAIT here, `socket transparent`
    // would match that TIME_WAIT socket and deliver the SYN to it; with no listener on the
    // VIP itself the kernel drops it, and the client waits a second for its SYN retry. The
    // tproxy rule below retires the TIME_WAIT socket and hands the SYN to our listener.
    let _ = writeln!(
        t,
        "\t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set {mark:#x} accept comment \"established transparent sockets\""
    );
    for (s, port) in config.services.iter().zip(ports) {
        let v4: Vec<IpAddr> = s.vips.iter().copied().filter(IpAddr::is_ipv4).collect();
        let v6: Vec<IpAddr> = s.vips.iter().copied().filter(IpAddr::is_ipv6).collect();
        if !v4.is_empty() {
            let _ = writeln!(
                t,
                "\t\tip daddr {} tcp dport {} tproxy ip to 127.0.0.1:{port} meta mark set {mark:#x} accept comment \"service {}\"",
                addr_set(&v4), port_set(s), s.name
            );
        }
        if !v6.is_empty() {
            let _ = writeln!(
                t,
                "\t\tip6 daddr {} tcp dport {} tproxy ip6 to [::1]:{port} meta mark set {mark:#x} accept comment \"service {}\"",
                addr_set(&v6), port_set(s), s.name
            );
        }
    }
    let _ = writeln!(t, "\t}}");
    let _ = writeln!(t, "}}");
    t
}

/// The text given to `nft -f`: declaring then deleting the table makes the load replace any
/// leftover (after a crash) instead of duplicating it, all in one transaction.
pub fn render_replace(config: &Config, ports: &[u16]) -> String {
    format!(
        "table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n{}",
        render_table(config, ports)
    )
}

/// Human summary of policy routing, printed with the ruleset.
pub fn render_routing(i: &InterceptConfig) -> String {
    format!(
        "# policy routing (installed with netlink via iproute2):\n\
         #   ip rule add fwmark {m:#x} lookup {t}\n#   ip route add local 0.0.0.0/0 dev lo table {t}\n\
         #   ip -6 rule add fwmark {m:#x} lookup {t}\n#   ip -6 route add local ::/0 dev lo table {t}\n",
        m = i.fwmark,
        t = i.route_table
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        crate::config::parse(
            &format!(
                "[pools.p]\nservers = [{{ address = \"198.18.2.11\" }}, {{ address = \"2001:db8:2::11\" }}]\n\
                 [services.rpc]\nvip = [\"198.19.0.10\", \"2001:db8:19::10\"]\nports = [135, 59532, \"59533-59534\"]\npool = \"p\"\n{extra}"
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn renders_one_tproxy_rule_per_family_and_service() {
        let c = cfg("[services.web]\nvip = \"198.19.0.10\"\nports = [443]\npool = \"p\"\n");
        let ports = listener_ports(&c);
        assert_eq!(ports, vec![135, 443]);
        let t = render_table(&c, &ports);
        assert!(
            t.contains("meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x1 accept"),
            "{t}"
        );
        assert!(t.contains("ip daddr 198.19.0.10 tcp dport { 135, 59532, 59533-59534 } tproxy ip to 127.0.0.1:135 meta mark set 0x1 accept"), "{t}");
        assert!(
            t.contains(
                "ip6 daddr 2001:db8:19::10 tcp dport { 135, 59532, 59533-59534 } tproxy ip6 to [::1]:135"
            ),
            "{t}"
        );
        assert!(t.contains("ip daddr 198.19.0.10 tcp dport 443 tproxy ip to 127.0.0.1:443"), "{t}");
        assert_eq!(t.matches("tproxy").count(), 3);
    }

    #[test]
    fn listener_ports_never_collide() {
        let c = cfg(
            "[admin]\nlisten = \"127.0.0.1:136\"\n[services.other]\nvip = \"198.19.0.11\"\nports = [135]\npool = \"p\"\n",
        );
        let ports = listener_ports(&c);
        // `other` sorts before `rpc`: it takes 135, rpc moves past it and the admin port.
        assert_eq!(ports, vec![135, 137]);
    }

    #[test]
    fn replace_preamble_makes_loading_idempotent() {
        let c = cfg("");
        let r = render_replace(&c, &listener_ports(&c));
        assert!(r.starts_with("table inet portier\ndelete table inet portier\ntable inet portier {"));
    }
}
