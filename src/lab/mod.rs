//! The network-namespace test lab: a client, a balancer and N backends wired
//! together with veths and a bridge, used by integration tests, benchmarks and
//! the `portier lab` demo.
//!
//! Why namespaces: transparent proxying (TPROXY) only works when the backends
//! route their replies back through the balancer, which needs real routing
//! between distinct hosts. Namespaces give us those hosts on one machine,
//! without touching the host's own network (everything lives in
//! 198.18.0.0/15 and 2001:db8::/32 inside namespaces the lab creates, and is
//! removed on drop, including when a test panics).
//!
//! ```text
//!  client ns                 balancer ns                      backend ns bI
//!  198.18.1.2/24  ──veth──  198.18.1.1/24
//!  (+ .3, .4 …)             br 198.18.2.1/24  ──veth──  198.18.2.(11+I)/24
//!  2001:db8:1::2/64         2001:db8:1::1/64
//!                           br 2001:db8:2::1/64           2001:db8:2::(11+I)/64
//! ```
//!
//! The VIPs ([`VIP_V4`], [`VIP_V6`]) are deliberately assigned nowhere: the
//! client reaches them through its default route to the balancer, where the
//! proxy's TPROXY rules pick them up.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod backend;
pub mod client;
pub mod demo;
pub mod netns;
pub mod portier;

#[cfg(test)]
mod tests;

pub use backend::EchoBackend;
pub use client::{connect, greet, Greeting};
pub use netns::Netns;
pub use portier::PortierProcess;

/// IPv4 virtual IP the client targets (assigned nowhere; routed to the balancer).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// IPv6 virtual IP the client targets (assigned nowhere; routed to the balancer).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x10);
/// The client's primary IPv4 address (`client_v4(0)`).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The client's primary IPv6 address (`client_v6(0)`).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Balancer address on the client link; the client's IPv4 default gateway.
pub const BALANCER_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Balancer address on the client link; the client's IPv6 default gateway.
pub const BALANCER_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Balancer address on the backend bridge; the backends' IPv4 default gateway.
pub const BALANCER_BACKEND_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Balancer address on the backend bridge; the backends' IPv6 default gateway.
pub const BALANCER_BACKEND_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Most backends a lab can have (198.18.2.11 ..= 198.18.2.254).
pub const MAX_BACKENDS: usize = 244;
/// Most extra client addresses a lab can have (198.18.1.3 ..= 198.18.1.254).
pub const MAX_EXTRA_CLIENTS: usize = 252;

/// IPv4 address of backend `i` (i = 0 is 198.18.2.11).
///
/// Panics if `i >= MAX_BACKENDS` (the address would leave the /24).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv4Addr::new(198, 18, 2, (11 + i) as u8)
}

/// IPv6 address of backend `i`: 2001:db8:2::11 for i = 0. The last group is
/// written with the same decimal digits as the IPv4 host part, so the two
/// addresses of a host are easy to match by eye.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, decimal_digits_as_hex(11 + i))
}

/// IPv4 address `i` of the client (i = 0 is 198.18.1.2, the primary).
pub fn client_v4(i: usize) -> Ipv4Addr {
    assert!(i <= MAX_EXTRA_CLIENTS, "client index {i} out of range");
    Ipv4Addr::new(198, 18, 1, (2 + i) as u8)
}

/// IPv6 address `i` of the client (i = 0 is 2001:db8:1::2; same decimal
/// digits as the IPv4 host part).
pub fn client_v6(i: usize) -> Ipv6Addr {
    assert!(i <= MAX_EXTRA_CLIENTS, "client index {i} out of range");
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, decimal_digits_as_hex(2 + i))
}

/// 11 -> 0x11, so 198.18.2.11 pairs with 2001:db8:2::11.
fn decimal_digits_as_hex(n: usize) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).expect("at most 3 decimal digits")
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Number of backend namespaces (b0, b1, ...).
    pub backends: usize,
    /// Additional client addresses (198.18.1.3, ...) beyond the primary one,
    /// for tests of source-address dependent behaviour (affinity, ACLs).
    pub extra_clients: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { backends: 2, extra_clients: 0 }
    }
}

/// Process-wide counter making lab names unique among labs of this process;
/// the pid makes them unique among processes.
static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A built lab. Dropping it deletes all its namespaces (and with them every
/// interface, address and route it created).
#[derive(Debug)]
pub struct Lab {
    /// The client host.
    pub client: Netns,
    /// The host where portier runs (forwarding router with TPROXY-ready routing).
    pub balancer: Netns,
    /// Backend hosts b0..bN.
    pub backends: Vec<Netns>,
    prefix: String,
    short: String,
    spec: LabSpec,
}

impl Lab {
    /// Builds the topology described in the module docs. If anything fails
    /// half way, everything created so far is removed before returning.
    pub fn build(spec: &LabSpec) -> io::Result<Lab> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        Self::build_with_id(spec, n, None)
    }

    /// `n` must come from `LAB_COUNTER`. `inject_failure` appends a command
    /// to the balancer's script; only tests use it, to exercise the
    /// cleanup-on-failure path.
    fn build_with_id(spec: &LabSpec, n: u64, inject_failure: Option<&str>) -> io::Result<Lab> {
        if spec.backends > MAX_BACKENDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lab supports at most {MAX_BACKENDS} backends, asked for {}", spec.backends),
            ));
        }
        if spec.extra_clients > MAX_EXTRA_CLIENTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "lab supports at most {MAX_EXTRA_CLIENTS} extra clients, asked for {}",
                    spec.extra_clients
                ),
            ));
        }
        reap_stale_namespaces();

        let prefix = format!("pt{}x{n}", std::process::id());
        let short = short_prefix(&prefix);

        let mut names = vec![format!("{prefix}-client"), format!("{prefix}-bal")];
        names.extend((0..spec.backends).map(|i| format!("{prefix}-b{i}")));
        let mut all = Netns::create_many(&names)?;
        let backends = all.split_off(2);
        let balancer = all.pop().expect("two namespaces");
        let client = all.pop().expect("one namespace");

        // From here on, an early return drops `lab`, which deletes everything.
        let lab = Lab { client, balancer, backends, prefix, short, spec: spec.clone() };
        lab.configure(inject_failure)?;
        Ok(lab)
    }

    fn configure(&self, inject_failure: Option<&str>) -> io::Result<()> {
        // Sysctls first, so interfaces created afterwards inherit the
        // `default` values. DAD off everywhere: addresses (also link-local
        // ones used by neighbour discovery) must be usable at once.
        let no_dad = [("net/ipv6/conf/all/accept_dad", "0"), ("net/ipv6/conf/default/accept_dad", "0")];
        self.balancer.set_sysctls(&[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            // Replies from backends to client addresses arrive on the bridge
            // although the balancer does not own those addresses; strict
            // reverse-path filtering would drop intercepted traffic.
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            // As the package's sysctl.d file sets it (README, "Running it for real").
            ("net/ipv4/tcp_tw_reuse", "1"),
            no_dad[0],
            no_dad[1],
        ])?;
        self.client.set_sysctls(&no_dad)?;
        for b in &self.backends {
            b.set_sysctls(&no_dad)?;
        }

        // The balancer creates every veth pair, placing each peer directly in
        // its namespace, so nothing ever appears in the host namespace.
        let c = self.client_link();
        let br = self.bridge();
        let mut s = String::new();
        s += "link set lo up\n";
        s += &format!("link add {c} type veth peer name {c} netns {}\n", self.client.name());
        // No STP and no forwarding delay: ports forward immediately. No
        // multicast snooping: neighbour solicitations are always flooded.
        s += &format!("link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\n");
        for (i, ns) in self.backends.iter().enumerate() {
            let l = self.backend_link(i);
            s += &format!("link add {l} type veth peer name {l} netns {}\n", ns.name());
            s += &format!("link set {l} master {br}\n");
            s += &format!("link set {l} up\n");
        }
        s += &format!("addr add {BALANCER_CLIENT_SIDE_V4}/24 dev {c}\n");
        s += &format!("addr add {BALANCER_CLIENT_SIDE_V6}/64 dev {c} nodad\n");
        s += &format!("addr add {BALANCER_BACKEND_SIDE_V4}/24 dev {br}\n");
        s += &format!("addr add {BALANCER_BACKEND_SIDE_V6}/64 dev {br} nodad\n");
        s += &format!("link set {c} up\n");
        s += &format!("link set {br} up\n");
        if let Some(cmd) = inject_failure {
            s += cmd;
            s += "\n";
        }
        self.balancer.ip_batch(&s)?;

        // The other namespaces are independent of each other: configure them
        // concurrently, one `ip -batch` process each.
        let mut pending = Vec::with_capacity(1 + self.backends.len());
        let mut s = String::from("link set lo up\n");
        // The default source address must be the primary one (index 0). IPv4
        // picks the first address of a subnet (the others become secondary),
        // IPv6 breaks ties in favour of the most recently added address: so
        // v4 goes in ascending order, v6 in descending order.
        for i in 0..=self.spec.extra_clients {
            s += &format!("addr add {}/24 dev {c}\n", client_v4(i));
        }
        for i in (0..=self.spec.extra_clients).rev() {
            s += &format!("addr add {}/64 dev {c} nodad\n", client_v6(i));
        }
        s += &format!("link set {c} up\n");
        s += &format!("route add default via {BALANCER_CLIENT_SIDE_V4} dev {c}\n");
        s += &format!("route add ::/0 via {BALANCER_CLIENT_SIDE_V6} dev {c}\n");
        pending.push(netns::spawn_ip_batch(Some(self.client.name()), &s));
        for (i, ns) in self.backends.iter().enumerate() {
            let l = self.backend_link(i);
            let mut s = String::from("link set lo up\n");
            s += &format!("addr add {}/24 dev {l}\n", backend_v4(i));
            s += &format!("addr add {}/64 dev {l} nodad\n", backend_v6(i));
            s += &format!("link set {l} up\n");
            // Default route via the balancer: replies to (spoofed) client
            // addresses must go back through it for TPROXY to work.
            s += &format!("route add default via {BALANCER_BACKEND_SIDE_V4} dev {l}\n");
            s += &format!("route add ::/0 via {BALANCER_BACKEND_SIDE_V6} dev {l}\n");
            pending.push(netns::spawn_ip_batch(Some(ns.name()), &s));
        }
        // Wait for every process even if one failed, so none outlives us.
        let mut first_err = None;
        for p in pending {
            let r = p.and_then(|p| netns::finish(p).map(drop));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The unique prefix of this lab's namespace names (`pt{pid}x{n}`).
    pub fn name_prefix(&self) -> &str {
        &self.prefix
    }

    /// The spec this lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Name of the client link. The veth has this name at both ends: in the
    /// client namespace and in the balancer namespace.
    pub fn client_link(&self) -> String {
        format!("{}c", self.short)
    }

    /// Name of the bridge in the balancer namespace that the backends hang off.
    pub fn bridge(&self) -> String {
        format!("{}br", self.short)
    }

    /// Name of backend `i`'s link: the veth has this name both in the backend
    /// namespace and (enslaved to [`Lab::bridge`]) in the balancer namespace.
    pub fn backend_link(&self, i: usize) -> String {
        format!("{}b{i}", self.short)
    }

    /// All namespaces of the lab: client, balancer, backends.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.balancer].into_iter().chain(self.backends.iter())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // One `ip -batch` process instead of one per namespace; anything it
        // could not delete is retried (and logged) by `Netns::drop`.
        let script: String = self.namespaces().map(|ns| format!("netns del {}\n", ns.name())).collect();
        if let Err(e) = netns::ip_batch_force(&script) {
            tracing::debug!(error = %e, "batched namespace deletion failed; deleting one by one");
        }
        let all = std::iter::once(&mut self.client)
            .chain(std::iter::once(&mut self.balancer))
            .chain(self.backends.iter_mut());
        for ns in all {
            if !ns.path().exists() {
                ns.forget_deleted();
            }
        }
    }
}

/// Interface-name prefix: Linux limits interface names to 15 bytes, too short
/// for the pid-based namespace prefix. Interfaces only ever exist inside the
/// lab's own namespaces, so they cannot collide with other labs anyway; the
/// hash just makes them recognisable per lab (e.g. in tcpdump or nft output).
/// "p" + 6 hex digits, leaving 8 bytes for suffixes like "b243".
fn short_prefix(prefix: &str) -> String {
    let mut h = DefaultHasher::new();
    prefix.hash(&mut h);
    format!("p{:06x}", h.finish() & 0xff_ffff)
}

/// Deletes namespaces left behind by lab processes that died without running
/// their destructors (SIGKILL, abort), recognised by the `pt{pid}x{n}-` name
/// pattern with a pid that no longer exists. Best effort, errors are ignored.
pub fn reap_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir(netns::NETNS_DIR) else {
        return;
    };
    let stale: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| match lab_pid(name) {
            Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    tracing::info!(count = stale.len(), "deleting stale lab namespaces");
    let script: String = stale.iter().map(|n| format!("netns del {n}\n")).collect();
    if let Err(e) = netns::ip_batch_force(&script) {
        tracing::warn!(error = %e, "failed to delete some stale lab namespaces");
    }
}

/// `pt{pid}x{n}-...` -> pid.
fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("pt")?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}
