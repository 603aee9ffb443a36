//! `portier lab`: the main job on the built-in default. Builds the namespace lab, runs
//! portier in it with the built-in Exchange RPC configuration, sends traffic from several
//! client addresses, and prints which backend served whom and the client address each saw.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{client_v4, client_v6, greet, EchoBackend, Lab, LabSpec, PortierProcess, VIP_V4, VIP_V6};

/// The built-in configuration: an Exchange 2010 CAS array's RPC ports (135, static RPC
/// 59532, static Address Book 59533-59534) on an IPv4 and an IPv6 VIP, one shared
/// client-ip stickiness table, transparent source.
pub const DEMO_CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9090"

[pools.cas]
balance = "leastconn"
servers = [
  { address = "198.18.2.11" }, { address = "198.18.2.12" },
  { address = "2001:db8:2::11" }, { address = "2001:db8:2::12" },
]
check = { type = "tcp", port = 135, interval = "1s", timeout = "500ms", rise = 2, fall = 3 }

[services.cas-rpc]
vip = ["198.19.0.10", "2001:db8:19::10"]
ports = [135, 59532, "59533-59534"]
pool = "cas"
source = "client"
sticky = { by = "client-ip", table = "cas", expire = "2h" }
idle_timeout = "2h"
"#;

const PORTS: [u16; 3] = [135, 59532, 59533];

pub fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    println!("portier lab: building namespaces (client, balancer, 2 backends)...");
    let lab = Lab::build(&LabSpec { backends: 2, extra_clients: 3 })?;
    let _backends: Vec<EchoBackend> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| EchoBackend::start(ns, &format!("cas0{}", i + 1), &[135, 59532, 59533, 59534]))
        .collect::<Result<_, _>>()?;
    let mut portier = PortierProcess::start(&lab.balancer, &exe, DEMO_CONFIG, "127.0.0.1:9090")?;
    println!("portier running in namespace {} (log: {})\n", lab.balancer.name(), portier.log_path.display());
    println!("{}", DEMO_CONFIG.trim());
    println!();

    let mut clients: Vec<IpAddr> = (0..4).map(|i| IpAddr::V4(client_v4(i))).collect();
    clients.push(IpAddr::V6(client_v6(0)));
    println!(
        "{:<16} {:<24} {:<8} {:<28} transparent",
        "client", "dialled", "backend", "peer seen by backend"
    );
    let mut all_transparent = true;
    for c in &clients {
        let vip: IpAddr = if c.is_ipv4() { IpAddr::V4(VIP_V4) } else { IpAddr::V6(VIP_V6) };
        for port in PORTS {
            let dst = SocketAddr::new(vip, port);
            match greet(&lab.client, Some(*c), dst, Duration::from_secs(5)) {
                Ok(g) => {
                    let ok = g.peer.ip() == *c;
                    all_transparent &= ok;
                    println!(
                        "{:<16} {:<24} {:<8} {:<28} {}",
                        c,
                        dst.to_string(),
                        g.backend,
                        g.peer.to_string(),
                        if ok { "yes" } else { "NO" }
                    );
                }
                Err(e) => {
                    all_transparent = false;
                    println!("{c:<16} {dst:<24} error: {e}");
                }
            }
        }
    }
    println!();
    println!("{}", portier.get("/status").unwrap_or_else(|e| e.to_string()));
    let doctor = lab
        .balancer
        .command(&exe.to_string_lossy())
        .args(["doctor", "--config"])
        .arg(&portier.config_path)
        .output()?;
    println!("portier doctor (inside the balancer namespace):\n{}", String::from_utf8_lossy(&doctor.stdout));

    match duration {
        Some(d) => {
            println!(
                "lab stays up for {d:?} (try: ip netns exec {} curl 127.0.0.1:9090/metrics)",
                lab.balancer.name()
            );
            std::thread::sleep(d);
        }
        None => {
            println!(
                "lab is up; Ctrl-C to stop (try: ip netns exec {} curl 127.0.0.1:9090/metrics)",
                lab.balancer.name()
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(tokio::signal::ctrl_c())?;
        }
    }
    let status = portier.stop(Duration::from_secs(40))?;
    let table_left =
        lab.balancer.sh(&["nft", "list", "tables"]).map(|t| t.contains("portier")).unwrap_or(false);
    println!("portier stopped ({status}); nftables table removed: {}", if table_left { "NO" } else { "yes" });
    drop(lab);
    if !all_transparent || table_left {
        anyhow::bail!("the lab found a problem (see above)");
    }
    Ok(())
}
