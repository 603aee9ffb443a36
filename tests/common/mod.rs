//! Shared helpers for the lab tests: a lab with echo backends and a real portier process.
#![allow(dead_code)]

pub mod httpd;
pub mod nginx;
pub mod sip;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use portier::lab::{self, EchoBackend, Greeting, Lab, LabSpec, PortierProcess};

pub const ADMIN: &str = "127.0.0.1:9090";
pub const T: Duration = Duration::from_secs(5);

pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portier"))
}

pub struct Setup {
    pub portier: PortierProcess,
    pub backends: Vec<EchoBackend>,
    pub lab: Lab,
}

/// Builds a lab, starts an echo backend named cas01, cas02, ... on `ports` in each backend
/// namespace, and starts portier with `config` in the balancer namespace.
pub fn setup(spec: LabSpec, ports: &[u16], config: &str) -> Setup {
    let lab = Lab::build(&spec).expect("lab build (needs root, iproute2, nftables)");
    let backends = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| EchoBackend::start(ns, &format!("cas0{}", i + 1), ports).expect("echo backend"))
        .collect();
    let portier = PortierProcess::start(&lab.balancer, exe(), config, ADMIN).expect("portier start");
    Setup { portier, backends, lab }
}

/// The standard pool: both backends by IPv4 and IPv6 address.
pub fn pool(balance: &str, check: &str) -> String {
    format!(
        "[pools.cas]\nbalance = \"{balance}\"\nservers = [\n  {{ address = \"198.18.2.11\" }}, {{ address = \"198.18.2.12\" }},\n  \
         {{ address = \"2001:db8:2::11\" }}, {{ address = \"2001:db8:2::12\" }},\n]\n{check}\n"
    )
}

/// The RPC service on both VIPs; `extra` adds service fields.
pub fn rpc_service(extra: &str) -> String {
    format!(
        "[services.rpc]\nvip = [\"198.19.0.10\", \"2001:db8:19::10\"]\nports = [135, 59532, \"59533-59534\"]\npool = \"cas\"\n{extra}\n"
    )
}

pub fn vip4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::VIP_V4), port)
}

pub fn vip6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::VIP_V6), port)
}

pub fn c4(i: usize) -> IpAddr {
    IpAddr::V4(lab::client_v4(i))
}

pub fn c6(i: usize) -> IpAddr {
    IpAddr::V6(lab::client_v6(i))
}

pub const BAL4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
pub const BAL6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));

impl Setup {
    pub fn greet(&self, src: IpAddr, dst: SocketAddr) -> Greeting {
        lab::greet(&self.lab.client, Some(src), dst, T).unwrap_or_else(|e| {
            panic!("greet {dst} from {src}: {e}\nportier log:\n{}", self.portier.log_tail())
        })
    }

    pub fn connect(&self, src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
        lab::connect(&self.lab.client, Some(src), dst, T)
    }

    pub fn metrics(&self) -> String {
        self.portier.get("/metrics").expect("GET /metrics")
    }

    /// Polls `f` every 20 ms until it returns Some or `limit` passes.
    pub fn wait_for<R>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&Setup) -> Option<R>,
    ) -> Option<(R, Duration)> {
        let t0 = Instant::now();
        loop {
            if let Some(r) = f(self) {
                return Some((r, t0.elapsed()));
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads the greeting from a held connection.
pub fn read_greeting(stream: &TcpStream) -> Greeting {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    Greeting::parse(line.trim_end()).unwrap_or_else(|| panic!("bad greeting {line:?}"))
}

/// Sends `payload`, reads back exactly its echo.
pub fn echo(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}

/// Sum of a metric's samples whose label text contains every `filter` fragment.
pub fn metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && filters.iter().all(|f| labels.contains(f))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Runs `promtool check metrics` on an exposition; panics with promtool's complaints.
pub fn promtool_check(text: &str) {
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that the table loaded in the balancer is exactly what `portier nft --config FILE`
/// prints: the printed text is loaded into a scratch namespace and both are listed by nft.
pub fn assert_loaded_table_is_printed(lab: &Lab, config: &Path) {
    use std::process::{Command, Stdio};
    let out = Command::new(exe()).args(["nft", "--config"]).arg(config).output().unwrap();
    assert!(out.status.success(), "portier nft: {}", String::from_utf8_lossy(&out.stderr));
    let scratch =
        portier::lab::Netns::create(&format!("{}-nft", lab.name_prefix())).expect("scratch namespace");
    let mut load = scratch
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let res = load.wait_with_output().unwrap();
    assert!(res.status.success(), "nft -f: {}", String::from_utf8_lossy(&res.stderr));
    let list =
        |ns: &portier::lab::Netns| ns.sh(&["nft", "list", "table", "inet", "portier"]).expect("nft list");
    assert_eq!(list(&lab.balancer), list(&scratch), "the loaded table differs from `portier nft`");
}
