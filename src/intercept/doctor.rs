//! `portier doctor`: checks the plumbing transparency depends on and explains what is missing.
//! Most transparency failures are an unexplained missing rule or return route; each finding
//! here says what is wrong and the command that fixes it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::command::run;
use super::{routing, ruleset};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "[{tag}] {}", self.text)
    }
}

#[derive(Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, level: Level, text: impl Into<String>) {
        self.findings.push(Finding { level, text: text.into() });
    }
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }
}

/// Whether the process has CAP_NET_ADMIN in its effective set.
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .map(|caps| caps & (1 << 12) != 0)
        .unwrap_or(false)
}

/// Whether a TCP listener is bound to `addr` in this network namespace.
pub fn is_listening(addr: SocketAddr) -> bool {
    let (file, want_ip) = match addr.ip() {
        IpAddr::V4(v4) => ("/proc/net/tcp", format!("{:08X}", u32::from_le_bytes(v4.octets()))),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            ("/proc/net/tcp6", words)
        }
    };
    let want = format!("{want_ip}:{:04X}", addr.port());
    std::fs::read_to_string(file)
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1] == want && cols[3] == "0A"
            })
        })
        .unwrap_or(false)
}

pub fn diagnose(config: Option<&Config>) -> Report {
    let mut r = Report::default();

    if has_net_admin() {
        r.add(Level::Ok, "CAP_NET_ADMIN is effective");
    } else {
        r.add(Level::Fail, "CAP_NET_ADMIN is missing: run as root or grant it (the systemd unit does: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)");
    }

    let families = config.map(routing::families_in_use).unwrap_or_else(|| vec!["-4"]);
    let mut probe = String::from(
        "table inet portier_doctor {\n chain p {\n  type filter hook prerouting priority mangle;\n  \
         meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x1 accept\n  \
         ip daddr 192.0.2.1 tcp dport 9 tproxy ip to 127.0.0.1:9 accept\n",
    );
    if families.contains(&"-6") {
        probe.push_str("  ip6 daddr 2001:db8::1 tcp dport 9 tproxy ip6 to [::1]:9 accept\n");
    }
    probe.push_str(" }\n}\n");
    let probe = probe.as_str();
    match run("nft", &["-c", "-f", "-"], Some(probe)) {
        Ok(_) => r.add(Level::Ok, "kernel accepts nftables socket and tproxy expressions (nft_socket, nft_tproxy)"),
        Err(e) => r.add(Level::Fail, format!("kernel or nft cannot load TPROXY rules: {e}. Load the modules: modprobe nft_socket nft_tproxy nf_tproxy_ipv4 nf_tproxy_ipv6")),
    }

    let Some(config) = config else {
        r.add(Level::Info, "no configuration given: rules, routes and listeners not checked (use --config)");
        return r;
    };
    let i = &config.intercept;
    let ports = ruleset::listener_ports(config);

    match super::installed_table() {
        None => r.add(Level::Fail, "nftables table `inet portier` is missing: portier is not running, or was stopped; `portier nft --config F` shows what it installs"),
        Some(table) => {
            if table.contains("socket transparent 1") {
                r.add(Level::Ok, "table inet portier has the `socket transparent` rule (replies to transparent upstream sockets)");
            } else {
                r.add(Level::Fail, "table inet portier lacks the `socket transparent 1` rule: servers' replies to transparent connections will be forwarded instead of delivered to portier");
            }
            for (s, port) in config.services.iter().zip(&ports) {
                let comment = format!("comment \"service {}\"", s.name);
                for (v6, fam, to) in [(false, "ip", format!("127.0.0.1:{port}")), (true, "ip6", format!("[::1]:{port}"))] {
                    if !s.vips.iter().any(|v| v.is_ipv6() == v6) {
                        continue;
                    }
                    let found = table.lines().any(|l| l.contains(&comment) && l.contains(&format!("tproxy {fam} to {to}")));
                    if found {
                        r.add(Level::Ok, format!("service {}: {fam} tproxy rule to {to} present", s.name));
                    } else {
                        r.add(Level::Fail, format!("service {}: no {fam} tproxy rule to {to}; the running portier has another configuration, or the table was edited", s.name));
                    }
                }
            }
        }
    }

    for (fam, name) in [("-4", "IPv4"), ("-6", "IPv6")].into_iter().filter(|(f, _)| families.contains(f)) {
        match routing::count_rules(fam, i) {
            Ok(1) => r.add(Level::Ok, format!("{name} rule fwmark {:#x} lookup {} present", i.fwmark, i.route_table)),
            Ok(0) => r.add(Level::Fail, format!("{name} rule missing: marked packets are routed, not delivered locally. Fix: ip {fam} rule add fwmark {:#x} lookup {}", i.fwmark, i.route_table)),
            Ok(n) => r.add(Level::Warn, format!("{name} rule fwmark {:#x} lookup {} present {n} times (harmless, but someone added copies)", i.fwmark, i.route_table)),
            Err(e) => r.add(Level::Fail, format!("cannot read {name} rules: {e}")),
        }
        let prefix = if fam == "-4" { "0.0.0.0/0" } else { "::/0" };
        match routing::has_local_route(fam, i) {
            Ok(true) => r.add(Level::Ok, format!("{name} local default route in table {} present", i.route_table)),
            Ok(false) => r.add(Level::Fail, format!("{name} local route missing in table {t}. Fix: ip {fam} route add local {prefix} dev lo table {t}", t = i.route_table)),
            Err(e) => r.add(Level::Fail, format!("cannot read table {}: {e}", i.route_table)),
        }
    }

    for (s, port) in config.services.iter().zip(&ports) {
        for addr in ruleset::listener_addrs(*port) {
            if !s.vips.iter().any(|v| v.is_ipv6() == addr.is_ipv6()) {
                continue;
            }
            if is_listening(addr) {
                r.add(Level::Ok, format!("service {}: listener {addr} is up", s.name));
            } else {
                r.add(Level::Fail, format!("service {}: nothing listens on {addr}: intercepted connections will be dropped (is portier running in this network namespace?)", s.name));
            }
        }
    }

    // Transparent connections to a server all come from the clients' addresses: closed by
    // portier first, they leave TIME_WAITs here, and one busy client address (a NAT) runs out
    // of source ports towards a server within seconds unless TIME_WAIT may be reused.
    if config.services.iter().any(|s| s.source == crate::config::Source::Client) {
        match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse").map(|v| v.trim().to_string()) {
            Ok(v) if v == "1" => r.add(Level::Ok, "net.ipv4.tcp_tw_reuse = 1: transparent server connections may reuse TIME_WAIT ports"),
            Ok(v) => r.add(Level::Warn, format!("net.ipv4.tcp_tw_reuse = {v}: a client address making many short connections (a NAT, an ActiveSync gateway) exhausts the source ports towards a server and new connections stall. Fix: sysctl -w net.ipv4.tcp_tw_reuse=1 (the Debian package ships /usr/lib/sysctl.d/60-portier.conf)")),
            Err(e) => r.add(Level::Info, format!("cannot read net.ipv4.tcp_tw_reuse: {e}")),
        }
    }

    // The return path cannot be seen from here; say exactly what it must be for each server.
    for pool in &config.pools {
        for sv in &pool.servers {
            match run("ip", &["route", "get", &sv.address.to_string()], None) {
                Ok(out) => {
                    let word_after = |w: &str| {
                        let t: Vec<&str> = out.split_whitespace().collect();
                        t.iter().position(|x| *x == w).and_then(|p| t.get(p + 1)).map(|s| s.to_string())
                    };
                    let dev = word_after("dev").unwrap_or_default();
                    match (word_after("via"), word_after("src")) {
                        (Some(gw), _) => r.add(Level::Warn, format!(
                            "pool {}: server {} is reached through router {gw} (dev {dev}); transparent mode needs its replies to clients to come back through this balancer: route the client networks on that path to it, or use source = \"balancer\"",
                            pool.name, sv.address)),
                        (None, Some(src)) => r.add(Level::Info, format!(
                            "pool {}: server {} is on-link (dev {dev}); for transparent services its route to clients must be via {src} (usually its default gateway)",
                            pool.name, sv.address)),
                        _ => r.add(Level::Warn, format!("pool {}: unusual route to {}: {}", pool.name, sv.address, out.trim())),
                    }
                }
                Err(e) => {
                    r.add(Level::Fail, format!("pool {}: no route to server {}: {e}", pool.name, sv.address))
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_loopback_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert!(is_listening(a));
        drop(l);
        assert!(!is_listening(a));
    }

    #[test]
    fn finds_an_ipv6_loopback_listener() {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        assert!(is_listening(l.local_addr().unwrap()));
    }
}
