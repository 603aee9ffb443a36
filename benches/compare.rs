//! portier against Debian's HAProxy 2.6, both fully transparent, in the namespace lab.
//!
//! `sudo ./scripts/bench.sh` (release build, then `cargo bench --bench compare`).
//!
//! One lab (client, balancer, one backend `b0`), built once. In the backend: nginx (2 workers,
//! a 16-byte body `peer=<client ip>` on :80, the same over TLS on :443), `iperf3 -s` on :5201
//! and a hold server on :7000 that accepts connections and keeps them. In the balancer, at the
//! same time: portier (`portier run`, TPROXY table `inet portier`, fwmark 1 / table 100) on the
//! VIP ports 5201 (tcp), 80 (http), 443 (https), 7000 (tcp); HAProxy at its defaults (the
//! primary peer: what its manual has an administrator write for transparent mode) on 15201,
//! 8080, 8443, 17000; HAProxy tuned like portier (splice, `http-reuse never`) on 25201, 18080,
//! 18443, 27000. Each HAProxy port is `bind 127.0.0.1:PORT transparent` behind an equivalent
//! table `inet haproxy` (fwmark 2 / table 101) and `source 0.0.0.0 usesrc clientip`. All send
//! every connection to the same backend, which sees the real client address from each
//! (checked before measuring). None logs per request. Only the one being measured has load.
//!
//! Worker threads N = 1, then 2: portier through `TOKIO_WORKER_THREADS=N` (the environment
//! form of `[global] threads`) or, with BENCH_PINNED=1, at its defaults on N CPUs; HAProxy
//! through `nbthread N`. For each N, every scenario runs A B C A B C... (portier, HAProxy at
//! defaults, HAProxy tuned) for BENCH_ROUNDS rounds; the table shows medians and both ratios.
//! The no-proxy limit (the client straight to 198.18.2.11 through the balancer's kernel
//! routing) is measured first, before any proxy ran (see `run`), BENCH_DIRECT_ROUNDS times.
//! Results are recorded, never asserted. The table is printed and written to
//! docs/PERFORMANCE.md between the `compare:begin`/`compare:end` markers (the rest of the file
//! is kept).
//!
//! Knobs (environment): BENCH_ROUNDS (3), BENCH_DIRECT_ROUNDS (1), BENCH_SECS (4),
//! BENCH_THREADS ("1,2"),
//! BENCH_HOLD (5000), BENCH_DOC (1; 0 = do not write docs/PERFORMANCE.md),
//! BENCH_SCENARIOS (all; comma list of l4,http,close,https,handshake,memory,sip,media).
//! BENCH_PORTIER_EXE (this build; another portier binary for before/after figures).
//! BENCH_PINNED (0; 1 = both proxies started on CPUs 0..N only, portier with no thread
//! setting, so its default scheduler for N CPUs is what is measured).
//!
//! The SIP rows (`sip`, module [`sip`] in benches/sip/mod.rs) run after the others in the same lab, with
//! their own processes: portier's B2BUA against Kamailio 5.6 as a stateful proxy, sipp at both
//! ends, the balancer pinned to CPU 0 and sipp to CPU 1. Their knobs are BENCH_SIP_*; see there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portier::lab::{self, Lab, LabSpec, Netns, PortierProcess, VIP_V4};
use socket2::{Domain, Socket, Type};

const ADMIN: &str = "127.0.0.1:9090";
/// Client addresses the idle connections are spread over (198.18.1.3 ...).
const EXTRA_CLIENTS: usize = 8;
const WRK_THREADS: u32 = 2;
const WRK_CONNS: u32 = 64;
const NGINX_WORKERS: u32 = 2;

/// VIP ports of one proxy: L4 (iperf3), HTTP, HTTPS, L4 hold.
#[derive(Clone, Copy)]
struct Ports {
    tcp: u16,
    http: u16,
    https: u16,
    hold: u16,
}

const PORTIER_PORTS: Ports = Ports { tcp: 5201, http: 80, https: 443, hold: 7000 };
const HAPROXY_PORTS: Ports = Ports { tcp: 15201, http: 8080, https: 8443, hold: 17000 };
const HAPROXY_TUNED_PORTS: Ports = Ports { tcp: 25201, http: 18080, https: 18443, hold: 27000 };
/// The backend's own ports (what the no-proxy runs dial).
const BACKEND_PORTS: Ports = Ports { tcp: 5201, http: 80, https: 443, hold: 7000 };

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Portier,
    /// HAProxy as its manual has an administrator configure transparent mode: its defaults.
    Haproxy,
    /// HAProxy tuned like portier: splice, and no server connection shared between clients.
    HaproxyTuned,
    Direct,
    /// The reference of the SIP rows.
    Kamailio,
    /// The reference of the media rows.
    Rtpengine,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Portier => "portier",
            Target::Haproxy => "haproxy",
            Target::HaproxyTuned => "haproxy-tuned",
            Target::Direct => "no-proxy",
            Target::Kamailio => "kamailio",
            Target::Rtpengine => "rtpengine",
        }
    }

    fn addr(self, pick: impl Fn(Ports) -> u16) -> SocketAddr {
        let (ip, ports) = match self {
            Target::Portier => (VIP_V4, PORTIER_PORTS),
            Target::Haproxy => (VIP_V4, HAPROXY_PORTS),
            Target::HaproxyTuned => (VIP_V4, HAPROXY_TUNED_PORTS),
            Target::Direct => (lab::backend_v4(0), BACKEND_PORTS),
            Target::Kamailio | Target::Rtpengine => {
                unreachable!("Kamailio and rtpengine serve only the SIP and media rows")
            }
        };
        SocketAddr::new(IpAddr::V4(ip), pick(ports))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    L4(u32),
    Http {
        tls: bool,
        close: bool,
    },
    /// Full TLS handshakes (no resumption): parallel `openssl s_time -new`.
    NewTls,
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::L4(1) => "l4-1",
            Scenario::L4(_) => "l4-8",
            Scenario::Http { tls: false, close: false } => "http",
            Scenario::Http { tls: false, close: true } => "close",
            Scenario::Http { tls: true, close: false } => "https",
            Scenario::Http { tls: true, close: true } => "tlsclose",
            Scenario::NewTls => "handshake",
        }
    }

    fn enabled(self, only: &Option<Vec<String>>) -> bool {
        let group = match self {
            Scenario::L4(_) => "l4",
            Scenario::Http { tls: true, close: true } => "handshake",
            s => s.key(),
        };
        only.as_ref().is_none_or(|l| l.iter().any(|x| x == group))
    }
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::L4(1),
    Scenario::L4(8),
    Scenario::Http { tls: false, close: false },
    Scenario::Http { tls: false, close: true },
    Scenario::Http { tls: true, close: false },
    Scenario::Http { tls: true, close: true },
    Scenario::NewTls,
];

/// One table row: which measurement, its label, whether higher is better, and what portier is
/// compared with (HAProxy, or Kamailio for the SIP rows; `Direct` for portier-only rows).
struct Row {
    id: &'static str,
    label: &'static str,
    higher_better: bool,
    reference: Target,
}

const H: Target = Target::Haproxy;
/// The HAProxy processes of the web rows: the primary peer (defaults), then the tuned one.
const PEERS: [Target; 2] = [Target::Haproxy, Target::HaproxyTuned];
/// Run in this order in every round (A B C A B C ...).
const TARGETS: [Target; 3] = [Target::Portier, Target::Haproxy, Target::HaproxyTuned];

const ROWS: [Row; 20] = [
    Row { id: "l4-1", label: "L4 TCP 1 stream, Gbit/s", higher_better: true, reference: H },
    Row { id: "l4-8", label: "L4 TCP 8 streams, Gbit/s", higher_better: true, reference: H },
    Row { id: "http.rps", label: "HTTP keep-alive, req/s", higher_better: true, reference: H },
    Row { id: "http.p50", label: "HTTP keep-alive p50, ms", higher_better: false, reference: H },
    Row { id: "http.p99", label: "HTTP keep-alive p99, ms", higher_better: false, reference: H },
    Row {
        id: "http.cpu",
        label: "HTTP keep-alive proxy CPU per request, µs",
        higher_better: false,
        reference: H,
    },
    Row { id: "close.rps", label: "HTTP 1 req/conn, req/s", higher_better: true, reference: H },
    Row {
        id: "close.cpu",
        label: "HTTP 1 req/conn proxy CPU per request, µs",
        higher_better: false,
        reference: H,
    },
    Row { id: "https.rps", label: "HTTPS keep-alive, req/s", higher_better: true, reference: H },
    Row { id: "https.p99", label: "HTTPS keep-alive p99, ms", higher_better: false, reference: H },
    Row {
        id: "tlsclose.rps",
        label: "HTTPS 1 req/conn (wrk, resumed), req/s",
        higher_better: true,
        reference: H,
    },
    Row { id: "handshake", label: "new TLS handshakes/s (s_time -new)", higher_better: true, reference: H },
    Row {
        id: "handshake.cpu",
        label: "proxy CPU per new TLS handshake, µs",
        higher_better: false,
        reference: H,
    },
    Row { id: "rss.idle", label: "RSS idle, MiB", higher_better: false, reference: H },
    Row { id: "rss.hold", label: "RSS with HOLD idle L4 conns, MiB", higher_better: false, reference: H },
    Row {
        id: "rss.holdhttp",
        label: "RSS with HOLD idle HTTP keep-alive conns, MiB",
        higher_better: false,
        reference: H,
    },
    Row {
        id: "sip.calls",
        label: "SIP calls/s, highest clean rate (reference: Kamailio 5.6)",
        higher_better: true,
        reference: Target::Kamailio,
    },
    Row {
        id: "sip.cpu",
        label: "SIP balancer CPU per call at that rate, µs (reference: Kamailio 5.6)",
        higher_better: false,
        reference: Target::Kamailio,
    },
    Row {
        id: "sip.register",
        label: "SIP REGISTER+digest/s, highest clean rate (portier only)",
        higher_better: true,
        reference: Target::Kamailio,
    },
    Row {
        id: "sip.regcpu",
        label: "SIP balancer CPU per REGISTER+digest at that rate, µs (portier only)",
        higher_better: false,
        reference: Target::Kamailio,
    },
];

struct Knobs {
    rounds: usize,
    direct_rounds: usize,
    secs: u64,
    threads: Vec<usize>,
    /// BENCH_PINNED=1: both proxies on CPUs 0..N, portier at its defaults (no thread setting).
    pinned: bool,
    hold: usize,
    doc: bool,
    only: Option<Vec<String>>,
    sip: sip::Knobs,
    media: media::Knobs,
}

impl Knobs {
    fn from_env() -> Knobs {
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let threads = std::env::var("BENCH_THREADS")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect::<Vec<usize>>())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![1, 2]);
        let only = std::env::var("BENCH_SCENARIOS")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
        Knobs {
            rounds: num("BENCH_ROUNDS", 3).max(1) as usize,
            direct_rounds: num("BENCH_DIRECT_ROUNDS", 1).max(1) as usize,
            secs: num("BENCH_SECS", 4).max(1),
            threads,
            pinned: num("BENCH_PINNED", 0) != 0,
            hold: num("BENCH_HOLD", 5000) as usize,
            doc: num("BENCH_DOC", 1) != 0,
            only,
            sip: sip::Knobs::from_env(),
            media: media::Knobs::from_env(),
        }
    }

    /// Whether the scenario group `name` was asked for (all are, without BENCH_SCENARIOS).
    fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == name))
    }

    /// Whether any of the HAProxy scenarios (everything but `sip` and `media`) was asked for.
    fn web(&self) -> bool {
        SCENARIOS.iter().any(|s| s.enabled(&self.only)) || self.wants("memory")
    }
}

/// Measurements: (N, row id, target) -> one value per round. N = 0 for the no-proxy limit and
/// other N-independent values.
#[derive(Default)]
struct Results {
    values: BTreeMap<(usize, String, Target), Vec<f64>>,
    /// (N, scenario, target) -> wrk socket errors + non-2xx responses, summed over rounds.
    errors: BTreeMap<(usize, &'static str, Target), u64>,
    failures: Vec<String>,
    notes: Vec<String>,
    /// The SIP rate searches, one line per round and target.
    sip_log: Vec<String>,
}

impl Results {
    fn push(&mut self, n: usize, id: &str, t: Target, v: f64) {
        self.values.entry((n, id.to_string(), t)).or_default().push(v);
    }

    fn median(&self, n: usize, id: &str, t: Target) -> Option<f64> {
        let mut v = self.values.get(&(n, id.to_string(), t))?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful either.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("compare: needs root (network namespaces, nftables); run sudo ./scripts/bench.sh");
        std::process::exit(1);
    }
    let knobs = Knobs::from_env();
    let mut tools = vec!["ip", "timeout"];
    if knobs.web() {
        tools.extend(["haproxy", "wrk", "iperf3", "nginx", "curl", "nft"]);
    }
    if knobs.wants("sip") {
        tools.extend(["sipp", "kamailio", "taskset", "curl"]);
    }
    if knobs.wants("media") {
        tools.extend(["rtpengine", "taskset"]);
    }
    for tool in tools {
        if which(tool).is_none() {
            eprintln!("compare: {tool} not found (scripts/bench.sh installs what is missing)");
            std::process::exit(1);
        }
    }
    let started = Instant::now();
    let date = sh_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    match run(&knobs) {
        Ok(res) => {
            let took = started.elapsed();
            let report = render(&knobs, &res, &date, took);
            println!("{report}");
            if knobs.doc {
                match write_doc(&report) {
                    Ok(p) => eprintln!("compare: wrote {}", p.display()),
                    Err(e) => eprintln!("compare: could not write docs/PERFORMANCE.md: {e}"),
                }
            }
            eprintln!("compare: whole run took {:.0} s", took.as_secs_f64());
        }
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(1);
        }
    }
}

fn run(k: &Knobs) -> io::Result<Results> {
    let mut tmp = tempfile::Builder::new().prefix("portier-compare-").tempdir()?;
    // BENCH_KEEP=1 keeps the logs, configurations and sipp statistics for a look afterwards.
    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        tmp.disable_cleanup(true);
        eprintln!("compare: keeping {}", tmp.path().display());
    }
    let lab = Lab::build(&LabSpec { backends: 1, extra_clients: EXTRA_CLIENTS })?;
    // The portier and HAProxy processes inherit this (RUST_LOG for portier).
    std::env::set_var("PORTIER_LAB_LOG", "warn");
    // BENCH_PORTIER_EXE: another build (e.g. an older commit's) for before/after figures.
    let exe = std::env::var_os("BENCH_PORTIER_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portier")));
    let mut res = Results::default();
    if k.web() {
        run_web(k, &lab, tmp.path(), &exe, &mut res)?;
    }
    if k.wants("sip") {
        if let Err(e) = sip::run(k, &lab, tmp.path(), &exe, &mut res) {
            eprintln!("compare: SIP part failed: {e}");
            res.failures.push(format!("SIP: {e}"));
        }
    }
    if k.wants("media") {
        if let Err(e) = media::run(k, &lab, tmp.path(), &exe, &mut res) {
            eprintln!("compare: media part failed: {e}");
            res.failures.push(format!("media: {e}"));
        }
    }
    Ok(res)
}

/// The L4, HTTP, HTTPS and memory scenarios: portier against HAProxy, N = 1 then 2.
fn run_web(k: &Knobs, lab: &Lab, tmp: &Path, exe: &Path, res: &mut Results) -> io::Result<()> {
    let certs = Certs::generate(tmp)?;
    // The one-request-per-connection runs open tens of thousands of connections from one
    // client address; give the client the whole port range and TIME_WAIT reuse.
    lab.client
        .set_sysctls(&[("net/ipv4/ip_local_port_range", "1024 65000"), ("net/ipv4/tcp_tw_reuse", "1")])?;
    // The balancer too: both proxies connect to nginx from that one client address
    // (transparent), and closing those server connections first leaves the TIME_WAITs here.
    // Without reuse the (client address, nginx:80) pairs run out of source ports within
    // seconds and every connect waits (README, "Running it for real").
    lab.balancer
        .set_sysctls(&[("net/ipv4/ip_local_port_range", "1024 65000"), ("net/ipv4/tcp_tw_reuse", "1")])?;
    install_haproxy_plumbing(&lab.balancer)?;
    let b0 = &lab.backends[0];
    let _nginx = Proc::spawn(
        "nginx",
        b0.command("nginx")
            .args(["-e", &tmp.join("nginx-error.log").display().to_string(), "-c"])
            .arg(write_nginx_conf(tmp, &certs)?)
            .args(["-g", "daemon off;"]),
        &tmp.join("nginx.stderr"),
    )?;
    let _iperf =
        Proc::spawn("iperf3", b0.command("iperf3").args(["-s", "-p", "5201"]), &tmp.join("iperf3.log"))?;
    let holder = Holder::start(b0, BACKEND_PORTS.hold)?;
    wait_until(Duration::from_secs(10), "nginx on the backend", || {
        peer_check(&lab.client, Target::Direct, false).is_ok()
            && peer_check(&lab.client, Target::Direct, true).is_ok()
    })?;

    // The no-proxy limit first, before any proxy ran: a proxy's upstream connections leave
    // transparent TIME_WAIT sockets (client address:port -> backend:80) in the balancer. The
    // `socket transparent 1` rule no longer takes a new connection's SYN (portier's ruleset
    // excludes SYN-without-ACK), but measuring first keeps the limit clean of any doubt.
    // One round each by default: the limit is a reference, not a ratio (BENCH_DIRECT_ROUNDS).
    for s in SCENARIOS.iter().copied().filter(|s| s.enabled(&k.only)) {
        for round in 0..k.direct_rounds {
            run_one(&lab.client, res, k, 0, round, s, Target::Direct, None);
        }
    }
    for &n in &k.threads {
        eprintln!("compare: N = {n} worker thread(s)");
        // Both HAProxy processes (at defaults and tuned) started on N CPUs (`pinned`) with
        // portier, or on all of them with portier told N.
        let (mut portier, haproxies) = on_cpus(k.pinned.then_some(n), || -> io::Result<_> {
            if !k.pinned {
                std::env::set_var("TOKIO_WORKER_THREADS", n.to_string());
            }
            let portier = PortierProcess::start(&lab.balancer, exe, &portier_config(&certs), ADMIN);
            std::env::remove_var("TOKIO_WORKER_THREADS");
            let mut haproxies = Vec::new();
            for t in PEERS {
                let sock = tmp.join(format!("{}-{n}.sock", t.name()));
                let cfg = write_haproxy_cfg(tmp, t, &certs, n, &sock)?;
                let p = Proc::spawn(
                    "haproxy",
                    lab.balancer.command("haproxy").args(["-db", "-f"]).arg(&cfg),
                    &tmp.join(format!("{}-{n}.log", t.name())),
                )?;
                haproxies.push((t, p, sock));
            }
            Ok((portier?, haproxies))
        })?;
        let pid_of = |t: Target| -> Option<u32> {
            match t {
                Target::Portier => portier.pid(),
                _ => haproxies.iter().find(|(h, _, _)| *h == t).map(|(_, p, _)| p.pid()),
            }
        };
        for t in TARGETS {
            for tls in [false, true] {
                let c = &lab.client;
                wait_until(Duration::from_secs(10), &format!("{} (tls {tls}) answering", t.name()), || {
                    peer_check(c, t, tls).is_ok()
                })?;
                // Must be the real client address: fully transparent on all.
                peer_check(c, t, tls).map_err(io::Error::other)?;
            }
        }
        res.notes.push(format!(
            "N={n}: portier process has {} threads (tokio workers + main + blocking pool), haproxy {}",
            thread_count(pid_of(Target::Portier).unwrap_or(0)),
            thread_count(pid_of(Target::Haproxy).unwrap_or(0)),
        ));

        if k.wants("memory") {
            std::thread::sleep(Duration::from_millis(500));
            for t in TARGETS {
                if let Some(kb) = rss_kib(pid_of(t).unwrap_or(0)) {
                    res.push(n, "rss.idle", t, kb as f64 / 1024.0);
                }
            }
            for (id, http) in [("rss.hold", false), ("rss.holdhttp", true)] {
                for t in TARGETS {
                    let pid = pid_of(t).unwrap_or(0);
                    let held = if http {
                        hold_http_connections(lab, t, k.hold)
                    } else {
                        hold_connections(lab, &holder, t, k.hold)
                    };
                    match held {
                        Ok(conns) => {
                            std::thread::sleep(Duration::from_secs(1));
                            let kb = rss_kib(pid).unwrap_or(0);
                            eprintln!("  {id} {} x{}: {:.1} MiB", t.name(), k.hold, kb as f64 / 1024.0);
                            res.push(n, id, t, kb as f64 / 1024.0);
                            drop(conns);
                        }
                        Err(e) => {
                            res.failures.push(format!("N={n} {id} {}: {e}", t.name()));
                            eprintln!("  {id} {}: {e}", t.name());
                        }
                    }
                    holder.clear();
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }

        for s in SCENARIOS.iter().copied().filter(|s| s.enabled(&k.only)) {
            for round in 0..k.rounds {
                for t in TARGETS {
                    run_one(&lab.client, res, k, n, round, s, t, pid_of(t));
                }
            }
            if s == (Scenario::Http { tls: true, close: true }) || s == Scenario::NewTls {
                for (t, _, sock) in &haproxies {
                    res.notes.push(format!(
                        "N={n}: {} after the {} runs: {}",
                        t.name(),
                        s.key(),
                        haproxy_ssl_info(sock)
                    ));
                }
            }
        }
        let _ = portier.stop(Duration::from_secs(10));
        drop(haproxies);
    }
    Ok(())
}

/// One measurement; with the proxy's `pid`, also its CPU time per request or handshake (the
/// client tools share the CPUs, so a rate alone understates a proxy that needs less).
#[allow(clippy::too_many_arguments)]
fn run_one(
    client: &Netns,
    res: &mut Results,
    k: &Knobs,
    n: usize,
    round: usize,
    s: Scenario,
    t: Target,
    pid: Option<u32>,
) {
    let label = if t == Target::Direct { String::new() } else { format!("N={n} ") };
    let cpu0 = pid.map(|p| cpu_secs(&[p]));
    match measure(client, s, t, k.secs) {
        Ok(m) => {
            let cpu = cpu0.zip(pid).map(|(c0, p)| cpu_secs(&[p]) - c0);
            let per = match (&m, cpu, s) {
                (Measure::Wrk(w), Some(c), Scenario::Http { tls: false, close }) if w.rps > 0.0 => {
                    Some((if close { "close.cpu" } else { "http.cpu" }, c / (w.rps * k.secs as f64) * 1e6))
                }
                (Measure::Rate(r), Some(c), Scenario::NewTls) if *r > 0.0 => {
                    Some(("handshake.cpu", c / (r * k.secs as f64) * 1e6))
                }
                _ => None,
            };
            let shown = per.map(|(_, us)| format!(", proxy CPU {us:.1} µs each")).unwrap_or_default();
            eprintln!(
                "  {label}round {}/{} {} {}: {}{shown}",
                round + 1,
                k.rounds,
                s.key(),
                t.name(),
                m.show()
            );
            m.record(res, n, s, t);
            if let Some((id, us)) = per {
                res.push(n, id, t, us);
            }
        }
        Err(e) => {
            eprintln!("  {label}round {} {} {}: FAILED {e}", round + 1, s.key(), t.name());
            res.failures.push(format!("{label}round {} {} {}: {e}", round + 1, s.key(), t.name()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// TLS counters from HAProxy's stats socket: shows whether wrk resumed sessions.
fn haproxy_ssl_info(sock: &Path) -> String {
    use std::io::Read;
    let r = (|| -> io::Result<String> {
        let mut c = std::os::unix::net::UnixStream::connect(sock)?;
        c.write_all(b"show info\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })();
    match r {
        Ok(out) => out
            .lines()
            .filter(|l| {
                ["CumSslConns:", "SslFrontendSessionReuse_pct:", "SslCacheLookups:", "SslCacheMisses:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("stats socket: {e}"),
    }
}

/// What one run measured.
enum Measure {
    Gbps(f64),
    Rate(f64),
    Wrk(Wrk),
}

impl Measure {
    fn show(&self) -> String {
        match self {
            Measure::Gbps(g) => format!("{g:.2} Gbit/s"),
            Measure::Rate(r) => format!("{r:.0} handshakes/s"),
            Measure::Wrk(w) => format!(
                "{:.0} req/s p50 {:.3} ms p99 {:.3} ms errors {}",
                w.rps, w.p50_ms, w.p99_ms, w.errors
            ),
        }
    }

    fn record(&self, res: &mut Results, n: usize, s: Scenario, t: Target) {
        match self {
            Measure::Gbps(g) | Measure::Rate(g) => res.push(n, s.key(), t, *g),
            Measure::Wrk(w) => {
                let k = s.key();
                res.push(n, &format!("{k}.rps"), t, w.rps);
                res.push(n, &format!("{k}.p50"), t, w.p50_ms);
                res.push(n, &format!("{k}.p99"), t, w.p99_ms);
                *res.errors.entry((n, k, t)).or_default() += w.errors;
            }
        }
    }
}

fn measure(client: &Netns, s: Scenario, t: Target, secs: u64) -> Result<Measure, String> {
    match s {
        Scenario::L4(streams) => iperf3(client, t.addr(|p| p.tcp), streams, secs).map(Measure::Gbps),
        Scenario::Http { tls, close } => {
            let url = url(t, tls);
            wrk(client, &url, close, secs).map(Measure::Wrk)
        }
        Scenario::NewTls => s_time(client, t.addr(|p| p.https), secs).map(Measure::Rate),
    }
}

fn url(t: Target, tls: bool) -> String {
    if tls {
        format!("https://{}/", t.addr(|p| p.https))
    } else {
        format!("http://{}/", t.addr(|p| p.http))
    }
}

/// The command lines the scenarios run (TARGET = VIP:port of the proxy or the backend).
fn command_lines(secs: u64) -> Vec<(&'static str, String)> {
    let w = format!("wrk -t {WRK_THREADS} -c {WRK_CONNS} -d {secs}s --latency");
    vec![
        ("L4 1 stream", format!("iperf3 -c IP -p PORT -t {secs} -P 1 -J")),
        ("L4 8 streams", format!("iperf3 -c IP -p PORT -t {secs} -P 8 -J")),
        ("HTTP keep-alive", format!("{w} http://TARGET/")),
        ("HTTP 1 req/conn", format!("{w} -H 'Connection: close' http://TARGET/")),
        ("HTTPS keep-alive", format!("{w} https://TARGET/")),
        ("HTTPS 1 req/conn", format!("{w} -H 'Connection: close' https://TARGET/")),
        (
            "new TLS handshakes",
            format!("{S_TIME_PROCS} x in parallel: openssl s_time -connect TARGET -new -www / -time {secs}"),
        ),
    ]
}

/// Parallel `openssl s_time -new` processes: each does one full handshake (no session reuse)
/// plus `GET /` per connection, one connection at a time.
const S_TIME_PROCS: usize = 16;

fn s_time(client: &Netns, to: SocketAddr, secs: u64) -> Result<f64, String> {
    let mut kids = Vec::new();
    for _ in 0..S_TIME_PROCS {
        let c = client
            .command("timeout")
            .args(["-k", "5", &(secs + 30).to_string(), "openssl", "s_time", "-connect", &to.to_string()])
            .args(["-new", "-www", "/", "-time", &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("openssl s_time: {e}"))?;
        kids.push(c);
    }
    let mut total = 0u64;
    for k in kids {
        let out = k.wait_with_output().map_err(|e| format!("openssl s_time: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "1234 connections in 5 real seconds, 17 bytes read per connection"
        let n = text
            .lines()
            .filter(|l| l.contains("real seconds"))
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let i = f.iter().position(|w| *w == "connections")?;
                f.get(i.checked_sub(1)?)?.parse::<u64>().ok()
            })
            .ok_or_else(|| format!("cannot parse s_time output: {text}"))?;
        total += n;
    }
    Ok(total as f64 / secs as f64)
}

fn iperf3(client: &Netns, to: SocketAddr, streams: u32, secs: u64) -> Result<f64, String> {
    let out = client
        .command("timeout")
        .args(["-k", "5", &(secs + 30).to_string(), "iperf3", "-c", &to.ip().to_string(), "-p"])
        .arg(to.port().to_string())
        .args(["-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        .output()
        .map_err(|e| format!("iperf3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let end = text.find("\"sum_received\"").ok_or_else(|| {
        format!("iperf3 gave no result ({}): {}", out.status, text.chars().take(400).collect::<String>())
    })?;
    let rest = &text[end..];
    let at = rest.find("\"bits_per_second\":").ok_or("iperf3: no bits_per_second")? + 18;
    let num: String =
        rest[at..].trim_start().chars().take_while(|c| c.is_ascii_digit() || ".eE+-".contains(*c)).collect();
    num.parse::<f64>().map(|b| b / 1e9).map_err(|e| format!("iperf3: {e} in {num:?}"))
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(client: &Netns, url: &str, close: bool, secs: u64) -> Result<Wrk, String> {
    let mut cmd = client.command("timeout");
    cmd.args(["-k", "5", &(secs + 30).to_string(), "wrk", "-t", &WRK_THREADS.to_string()]);
    cmd.args(["-c", &WRK_CONNS.to_string(), "-d", &format!("{secs}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("wrk {}: {text}{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot parse wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if f.len() == 2 && f[0] == "50%" {
            p50 = duration_ms(f[1]);
        } else if f.len() == 2 && f[0] == "99%" {
            p99 = duration_ms(f[1]);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors +=
                v.split(',').filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some(Wrk { rps: rps?, p50_ms: p50?, p99_ms: p99?, errors })
}

/// wrk's "543.00us", "2.10ms", "1.02s", "1.50m" in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let v: f64 = s[..split].parse().ok()?;
    Some(match &s[split..] {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// curl from the client to `t` (HTTP or HTTPS); Ok when nginx saw the client's own address.
fn peer_check(client: &Netns, t: Target, tls: bool) -> Result<(), String> {
    let out = client
        .command("curl")
        .args(["-sSk", "--max-time", "2", &url(t, tls)])
        .output()
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&out.stdout);
    let want = format!("peer={}", lab::CLIENT_V4);
    if body.trim() == want {
        Ok(())
    } else {
        Err(format!(
            "{} {}: expected {want:?} (transparent), got {body:?} {}",
            t.name(),
            url(t, tls),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Opens `n` connections from the client (spread over its extra addresses) through `t` to
/// the hold server, and waits until the backend has accepted all of them.
fn hold_connections(lab: &Lab, holder: &Holder, t: Target, n: usize) -> io::Result<Vec<TcpStream>> {
    let to = t.addr(|p| p.hold);
    let conns = lab.client.run(move || -> io::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let src = SocketAddr::new(IpAddr::V4(lab::client_v4(1 + i % EXTRA_CLIENTS)), 0);
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(&src.into())?;
            s.connect_timeout(&to.into(), Duration::from_secs(10))
                .map_err(|e| io::Error::new(e.kind(), format!("connection {i} from {src}: {e}")))?;
            v.push(s.into());
        }
        Ok(v)
    })??;
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder.count() < n {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("backend accepted only {} of {n}", holder.count())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(conns)
}

/// Opens `n` HTTP keep-alive connections from the client (spread over its extra addresses)
/// through `t`, each after one `GET /` answered in full, and keeps them idle.
fn hold_http_connections(lab: &Lab, t: Target, n: usize) -> io::Result<Vec<TcpStream>> {
    use std::io::Read;
    let to = t.addr(|p| p.http);
    lab.client.run(move || -> io::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        let mut buf = vec![0u8; 4096];
        for i in 0..n {
            let src = SocketAddr::new(IpAddr::V4(lab::client_v4(1 + i % EXTRA_CLIENTS)), 0);
            let err = |e: io::Error| io::Error::new(e.kind(), format!("HTTP connection {i} from {src}: {e}"));
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(&src.into())?;
            s.connect_timeout(&to.into(), Duration::from_secs(10)).map_err(err)?;
            let mut c: TcpStream = s.into();
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(err)?;
            // nginx's answer: a head with Content-Length, then the `peer=...` body.
            let mut got = 0;
            loop {
                let r = c.read(&mut buf[got..]).map_err(err)?;
                if r == 0 {
                    return Err(err(io::Error::other("closed before the whole answer")));
                }
                got += r;
                if let Some(end) = complete_response(&buf[..got]) {
                    if end != got {
                        return Err(err(io::Error::other("more than one answer")));
                    }
                    break;
                }
                if got == buf.len() {
                    return Err(err(io::Error::other("answer larger than 4 KiB")));
                }
            }
            v.push(c);
        }
        Ok(v)
    })?
}

/// The length of one complete HTTP/1.1 response with a Content-Length at the start of `b`.
fn complete_response(b: &[u8]) -> Option<usize> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&b[..head]).ok()?;
    let len: usize = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })?;
    (b.len() >= head + len).then_some(head + len)
}

/// Accepts connections in a backend namespace and keeps them open until `clear`.
struct Holder {
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Holder {
    fn start(ns: &Netns, port: u16) -> io::Result<Holder> {
        let listener = ns.run(move || -> io::Result<TcpListener> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            s.listen(4096)?;
            Ok(s.into())
        })??;
        listener.set_nonblocking(true)?;
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (conns.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => c2.lock().unwrap().push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Holder { conns, stop, thread: Some(thread) })
    }

    fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn clear(&self) {
        self.conns.lock().unwrap().clear();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A helper process in its own process group, killed (with its children) on drop.
/// Runs `f` on a thread allowed only CPUs 0..n (when given): every process it starts inherits
/// that affinity, as under `taskset -c 0-(n-1)`.
fn on_cpus<T: Send>(n: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(n) = n {
                    let mut set = nix::sched::CpuSet::new();
                    for cpu in 0..n {
                        set.set(cpu).expect("CPU index within CpuSet");
                    }
                    if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), &set) {
                        eprintln!("compare: cannot pin to {n} CPU(s): {e}");
                    }
                }
                f()
            })
            .join()
            .expect("the spawning thread does not panic")
    })
}

struct Proc {
    child: Option<Child>,
    name: &'static str,
    quiet: bool,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> io::Result<Proc> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {name}: {e}")))?;
        let mut p = Proc { child: Some(child), name, quiet: false };
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            return Err(io::Error::other(format!("{name} exited at start ({status})")));
        }
        Ok(p)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stopped without a message (helpers started once per measurement).
    fn quiet(mut self) -> Proc {
        self.quiet = true;
        self
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(-(c.id() as i32)), Signal::SIGKILL);
            let _ = c.wait();
            if !self.quiet {
                eprintln!("compare: stopped {}", self.name);
            }
        }
    }
}

/// utime + stime of these processes (all their threads), in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|pid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<&str> = st.rsplit(')').next()?.split_whitespace().collect();
            // After "pid (comm)": state is field 0, utime 11, stime 12.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum::<u64>() as f64
        / tck
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn thread_count(pid: u32) -> String {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The ECDSA P-256 certificate both proxies (and nginx for the no-proxy runs) present.
struct Certs {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate then key, the form HAProxy's `crt` wants.
    combined: PathBuf,
}

impl Certs {
    fn generate(dir: &Path) -> io::Result<Certs> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(io::Error::other)?;
        let mut p = rcgen::CertificateParams::new(vec!["bench.example.test".to_string()])
            .map_err(io::Error::other)?;
        p.distinguished_name.push(rcgen::DnType::CommonName, "bench.example.test");
        let cert = p.self_signed(&key).map_err(io::Error::other)?;
        let c = Certs {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            combined: dir.join("combined.pem"),
        };
        std::fs::write(&c.cert, cert.pem())?;
        std::fs::write(&c.key, key.serialize_pem())?;
        std::fs::write(&c.combined, format!("{}{}", cert.pem(), key.serialize_pem()))?;
        Ok(c)
    }
}

fn write_nginx_conf(dir: &Path, certs: &Certs) -> io::Result<PathBuf> {
    let d = dir.display();
    let conf = format!(
        r#"worker_processes {NGINX_WORKERS};
user root;
pid {d}/nginx.pid;
worker_rlimit_nofile 20000;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    error_log {d}/nginx-error.log warn;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    server {{
        listen 80 backlog=4096;
        listen 443 ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "peer=$remote_addr\n"; }}
    }}
}}
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn portier_config(certs: &Certs) -> String {
    let b = lab::backend_v4(0);
    let p = PORTIER_PORTS;
    format!(
        r#"[global]
drain_timeout = "2s"
log_level = "warn"

[admin]
listen = "{ADMIN}"

[pools.iperf]
servers = [{{ address = "{b}:5201" }}]
[pools.hold]
servers = [{{ address = "{b}:7000" }}]
[pools.web]
servers = [{{ address = "{b}:80" }}]

[services.tcp]
vip = "{VIP_V4}"
ports = [{tcp}]
mode = "tcp"
pool = "iperf"

[services.hold]
vip = "{VIP_V4}"
ports = [{hold}]
mode = "tcp"
pool = "hold"

[services.http]
vip = "{VIP_V4}"
ports = [{http}]
mode = "http"
pool = "web"
access_log = "off"

[services.https]
vip = "{VIP_V4}"
ports = [{https}]
mode = "https"
pool = "web"
access_log = "off"
certificates = [{{ cert = "{cert}", key = "{key}" }}]
"#,
        tcp = p.tcp,
        hold = p.hold,
        http = p.http,
        https = p.https,
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

/// HAProxy's configuration for `t`.
///
/// At its defaults (`Target::Haproxy`): what its manual has an administrator write for a
/// transparent balancer (`bind ... transparent`, `source 0.0.0.0 usesrc clientip`, the
/// manual's example timeouts, a maxconn for the connections expected), nothing tuned: no
/// splicing, `http-reuse` left at `safe`. Tuned (`Target::HaproxyTuned`): made like portier,
/// splice where it pays and a server connection serving only the client connection that
/// opened it (`http-reuse never`). The hold service's long timeouts are the benchmark's own.
fn haproxy_cfg(t: Target, certs: &Certs, n: usize, sock: &Path) -> String {
    let b = lab::backend_v4(0);
    let tuned = t == Target::HaproxyTuned;
    let p = if tuned { HAPROXY_TUNED_PORTS } else { HAPROXY_PORTS };
    let (global, defaults, splice, reuse) = if tuned {
        (
            "    maxconn 8000\n    # Splicing takes pipes (two descriptors each, default maxconn/4 of them): within the\n    \
             # 20,000 descriptors a process may hold here.\n    maxpipes 1000\n",
            "    maxconn 8000\n    timeout connect 5s\n    timeout client 2m\n    timeout server 1h\n",
            "    # Like portier's relay: splice(2) where it pays (HAProxy's default is not to).\n    option splice-auto\n",
            "    # Like portier: a server connection serves only the client connection that opened it.\n    http-reuse never\n",
        )
    } else {
        (
            "",
            "    # Sized for the 5,000 idle connections of the memory rows, as the manual has one do.\n    \
             maxconn 8000\n    timeout connect 5s\n    timeout client 50s\n    timeout server 50s\n",
            "",
            "",
        )
    };
    format!(
        r#"global
    nbthread {n}
{global}    stats socket {sock} mode 600 level user

defaults
{defaults}
frontend tcp
    mode tcp
{splice}    bind 127.0.0.1:{tcp} transparent
    default_backend iperf
backend iperf
    mode tcp
{splice}    source 0.0.0.0 usesrc clientip
    server b0 {b}:5201

frontend hold
    mode tcp
    timeout client 30m
    bind 127.0.0.1:{hold} transparent
    default_backend hold
backend hold
    mode tcp
    timeout server 30m
    source 0.0.0.0 usesrc clientip
    server b0 {b}:7000

frontend web
    mode http
    bind 127.0.0.1:{http} transparent
    bind 127.0.0.1:{https} transparent ssl crt {crt} alpn h2,http/1.1
    default_backend web
backend web
    mode http
{reuse}    source 0.0.0.0 usesrc clientip
    server b0 {b}:80
"#,
        tcp = p.tcp,
        hold = p.hold,
        http = p.http,
        https = p.https,
        crt = certs.combined.display(),
        sock = sock.display(),
    )
}

fn write_haproxy_cfg(dir: &Path, t: Target, certs: &Certs, n: usize, sock: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("{}-{n}.cfg", t.name()));
    std::fs::write(&path, haproxy_cfg(t, certs, n, sock))?;
    Ok(path)
}

/// HAProxy's TPROXY plumbing (for both HAProxy processes): the same rules `portier nft` prints
/// for portier, in its own table and with its own fwmark and routing table, so all can run side
/// by side.
fn haproxy_ruleset() -> String {
    let mut s = String::from(
        "table inet haproxy\ndelete table inet haproxy\ntable inet haproxy {\n\tchain prerouting {\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x2 accept\n",
    );
    let ports =
        [HAPROXY_PORTS, HAPROXY_TUNED_PORTS].into_iter().flat_map(|p| [p.tcp, p.hold, p.http, p.https]);
    for port in ports {
        let _ = writeln!(
            s,
            "\t\tip daddr {VIP_V4} tcp dport {port} tproxy ip to 127.0.0.1:{port} meta mark set 0x2 accept"
        );
    }
    s += "\t}\n}\n";
    s
}

const HAPROXY_ROUTING: [&str; 2] =
    ["ip rule add fwmark 0x2 lookup 101", "ip route add local 0.0.0.0/0 dev lo table 101"];

fn install_haproxy_plumbing(balancer: &Netns) -> io::Result<()> {
    let mut nft =
        balancer.command("nft").args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    nft.stdin.take().expect("piped").write_all(haproxy_ruleset().as_bytes())?;
    let out = nft.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("nft -f: {}", String::from_utf8_lossy(&out.stderr))));
    }
    for cmd in HAPROXY_ROUTING {
        let args: Vec<&str> = cmd.split(' ').collect();
        balancer.sh(&args)?;
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.exists())
}

/// First non-empty line of a command's stdout and stderr (version strings go to either).
fn sh_out(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t += &String::from_utf8_lossy(&o.stderr);
            t.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string()
        }
        Err(e) => format!("{cmd}: {e}"),
    }
}

fn fmt_val(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x >= 1000.0 => format!("{x:.0}"),
        Some(x) if x >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(res: &Results, n: usize, id: &str) -> Option<f64> {
    ratio_to(res, n, id, Target::Haproxy)
}

/// portier / `reference` (medians).
fn ratio_to(res: &Results, n: usize, id: &str, reference: Target) -> Option<f64> {
    let a = res.median(n, id, Target::Portier)?;
    let b = res.median(n, id, reference)?;
    (b > 0.0).then(|| a / b)
}

/// One line per target of the issue, per N: met or not, with the numbers. The reference is
/// HAProxy at its defaults.
fn targets(k: &Knobs, res: &Results) -> String {
    let mut s = String::new();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for &n in &k.threads {
        let _ = writeln!(s, "N = {n}:");
        let mut line = |what: &str, r: Option<bool>, detail: String| {
            let v = r.map_or("not measured", verdict);
            let _ = writeln!(s, "- {what}: **{v}** ({detail})");
        };
        let r = ratio(res, n, "http.rps");
        let p99 = ratio(res, n, "http.p99");
        let lim = res.median(n, "http.rps", Target::Portier).zip(res.median(0, "http.rps", Target::Direct));
        let of_limit = lim.map(|(p, l)| p / l);
        line(
            "HTTP keep-alive ≥ 1.5x HAProxy with p99 ≤ 1.0x, and ≥ 0.7 of the no-proxy limit",
            r.zip(p99).zip(of_limit).map(|((r, p), l)| r >= 1.5 && p <= 1.0 && l >= 0.7),
            format!("{}x req/s, p99 {}x, {} of the limit", fmt_val(r), fmt_val(p99), fmt_val(of_limit)),
        );
        for (id, what, min) in [
            ("close.rps", "one request per connection ≥ 1.3x", 1.3),
            ("https.rps", "HTTPS keep-alive ≥ 2x", 2.0),
            ("handshake", "new TLS handshakes/s ≥ 1.5x", 1.5),
            ("l4-1", "L4 (1 stream) ≥ 1.3x", 1.3),
        ] {
            let r = ratio(res, n, id);
            line(what, r.map(|r| r >= min), format!("{}x", fmt_val(r)));
        }
        for (id, what) in [("rss.hold", "L4"), ("rss.holdhttp", "HTTP keep-alive")] {
            let r = ratio(res, n, id);
            line(
                &format!("RSS with {} idle {what} connections ≤ HAProxy's", k.hold),
                r.map(|r| r <= 1.0),
                format!("{}x", fmt_val(r)),
            );
        }
    }
    s
}

fn render(k: &Knobs, res: &Results, date: &str, took: Duration) -> String {
    let mut s = String::new();
    let sip = k.wants("sip");
    let title = if sip { ", and Kamailio 5.6 for SIP" } else { "" };
    let _ = writeln!(s, "## portier vs HAProxy 2.6, fully transparent{title} (benches/compare.rs)\n");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        s,
        "Run {date}, took {:.0} s. Machine: {nproc} CPUs ({cpu}), kernel {}, {}.\n",
        took.as_secs_f64(),
        sh_out("uname", &["-r"]),
        sh_out("sh", &["-c", "grep MemTotal /proc/meminfo | tr -s ' '"])
    );
    let git = sh_out("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]);
    let _ = writeln!(
        s,
        "Versions: portier {} ({git}, release profile), {}, {}, {}, {}, {}.\n",
        env!("CARGO_PKG_VERSION"),
        sh_out("haproxy", &["-v"]).split(" - ").next().unwrap_or(""),
        sh_out("nginx", &["-v"]),
        sh_out("wrk", &["-v"]).split(" [").next().unwrap_or(""),
        sh_out("iperf3", &["-v"]),
        sh_out("rustc", &["-V"]),
    );
    if sip {
        let _ = writeln!(
            s,
            "SIP: {}, {}.\n",
            sh_out("kamailio", &["-v"]).split(" (").next().unwrap_or(""),
            sh_out("sipp", &["-v"]).split('-').next().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "Command: `sudo ./scripts/bench.sh` (= `cargo build --release && cargo bench --bench compare`), \
         BENCH_ROUNDS={} BENCH_DIRECT_ROUNDS={} BENCH_SECS={} BENCH_THREADS={} BENCH_HOLD={}{}. N = {}. Each value is the median of {} \
         rounds run A B C A B C (portier, HAProxy at its defaults, HAProxy tuned). HAProxy at its \
         defaults is the configuration its manual has an administrator write for transparent mode \
         (no splicing, `http-reuse safe`); tuned is HAProxy made like portier (`option \
         splice-auto`, `http-reuse never`). The no-proxy limit (client straight to \
         198.18.2.11 through the balancer's kernel routing; the median of {} round(s)) is measured first, before any proxy \
         ran, so no leftover transparent TIME_WAIT socket of a proxy can capture its SYNs. \
         Ratio = portier / that HAProxy (higher is better for rates, lower for latency and memory). \
         All processes (client tools, the proxies, nginx with {NGINX_WORKERS} workers) share the \
         same {nproc} CPUs (the SIP rows, when run, are set up differently: see \"SIP rows\" below).\n",
        k.rounds,
        k.direct_rounds,
        k.secs,
        k.threads.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        k.hold,
        if k.pinned { " BENCH_PINNED=1" } else { "" },
        if k.pinned {
            "CPUs both proxies may run on (0..N, set as taskset does): portier with no thread \
             setting (its default for N CPUs), HAProxy `nbthread N`"
        } else {
            "worker threads: portier `TOKIO_WORKER_THREADS=N`, HAProxy `nbthread N`"
        },
        k.rounds,
        k.direct_rounds,
    );
    let _ = writeln!(
        s,
        "| scenario | N | portier | HAProxy at defaults (SIP: Kamailio) | ratio | HAProxy tuned | ratio | no-proxy limit |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in ROWS.iter() {
        // The N values this row has results for (the SIP rows run with their own N).
        let ns: std::collections::BTreeSet<usize> =
            res.values.keys().filter(|(n, id, _)| *n > 0 && id == row.id).map(|(n, _, _)| *n).collect();
        for n in ns {
            let p = res.median(n, row.id, Target::Portier);
            let h = res.median(n, row.id, row.reference);
            if p.is_none() && h.is_none() {
                continue;
            }
            let show = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}x"));
            let arrow = if row.higher_better { "↑" } else { "↓" };
            let tuned = (row.reference == H).then(|| res.median(n, row.id, Target::HaproxyTuned)).flatten();
            let _ = writeln!(
                s,
                "| {} {arrow} | {n} | {} | {} | {} | {} | {} | {} |",
                row.label.replace("HOLD", &k.hold.to_string()),
                fmt_val(p),
                fmt_val(h),
                show(ratio_to(res, n, row.id, row.reference)),
                fmt_val(tuned),
                show(tuned.and(ratio_to(res, n, row.id, Target::HaproxyTuned))),
                fmt_val(res.median(0, row.id, Target::Direct)),
            );
        }
    }
    let errs: Vec<String> = res
        .errors
        .iter()
        .filter(|(_, &e)| e > 0)
        .map(|((n, sc, t), e)| format!("{sc} {} N={n}: {e}", t.name()))
        .collect();
    let _ = writeln!(
        s,
        "\nwrk socket errors + non-2xx responses (sum over rounds): {}.\n",
        if errs.is_empty() { "none".to_string() } else { errs.join("; ") }
    );
    if !res.failures.is_empty() {
        let _ = writeln!(s, "Failed runs (left out of the medians):\n");
        for f in &res.failures {
            let _ = writeln!(s, "- {f}");
        }
        s += "\n";
    }
    let _ = writeln!(s, "### Targets from the issue (computed from the table above)\n");
    if k.web() {
        s += &targets(k, res);
    }
    if sip {
        s += &sip::targets(k, res);
    }
    if sip {
        s += "\n";
        s += &sip::render(k, res);
    }
    if k.wants("media") {
        s += "\n";
        s += &media::render(k, res);
    }
    if !k.web() {
        let _ = writeln!(s, "Per-round values:\n\n```");
        for ((n, id, t), v) in &res.values {
            let v: Vec<String> = v.iter().map(|x| fmt_val(Some(*x))).collect();
            let _ = writeln!(s, "N={n} {id:14} {:8} {}", t.name(), v.join(" "));
        }
        s += "```\n";
        return s;
    }
    let _ = writeln!(s, "\n### Exact commands (run in the client namespace)\n");
    s += "TARGET is 198.19.0.10:80/443 (portier), 198.19.0.10:8080/8443 (HAProxy at its defaults), \
          198.19.0.10:18080/18443 (HAProxy tuned) or 198.18.2.11:80/443 (no proxy: nginx itself \
          terminates TLS); iperf3 targets 198.19.0.10:5201, :15201, :25201 or 198.18.2.11:5201. Idle \
          connections: a Rust client opens them one by one from 198.18.1.3-.10, L4 ones to \
          198.19.0.10:7000 (portier), :17000 or :27000 (HAProxy) and waits until the backend \
          accepted all of them, HTTP keep-alive ones to the HTTP port with one `GET /` answered on \
          each; then it waits 1 s and reads VmRSS from /proc/PID/status.\n\n```\n";
    for (what, cmd) in command_lines(k.secs) {
        let _ = writeln!(s, "{what:24} {cmd}");
    }
    s += "```\n\n";
    let _ = writeln!(s, "Notes: {}\n", res.notes.join("; "));
    let _ = writeln!(s, "Per-round values:\n\n```");
    for ((n, id, t), v) in &res.values {
        let v: Vec<String> = v.iter().map(|x| fmt_val(Some(*x))).collect();
        let _ = writeln!(s, "N={n} {id:14} {:8} {}", t.name(), v.join(" "));
    }
    s += "```\n\n";
    let dummy = Certs { cert: "CERT.pem".into(), key: "KEY.pem".into(), combined: "CERT+KEY.pem".into() };
    let _ = writeln!(
        s,
        "<details><summary>Configurations</summary>\n\nportier (`TOKIO_WORKER_THREADS=N RUST_LOG=warn \
         portier run --config F`):\n\n```toml\n{}```\n\nHAProxy at its defaults (`haproxy -db -f \
         F`):\n\n```\n{}```\n\nHAProxy tuned:\n\n```\n{}```\n\n\
         The HAProxy TPROXY plumbing (portier installs its own, `inet portier` with mark 0x1 and \
         table 100):\n\n```\n{}{}\n```\n\n</details>",
        portier_config(&dummy),
        haproxy_cfg(Target::Haproxy, &dummy, 1, Path::new("SOCK")).replace("nbthread 1", "nbthread N"),
        haproxy_cfg(Target::HaproxyTuned, &dummy, 1, Path::new("SOCK")).replace("nbthread 1", "nbthread N"),
        haproxy_ruleset(),
        HAPROXY_ROUTING.map(|c| format!("# {c}")).join("\n"),
    );
    s
}

const BEGIN: &str =
    "<!-- compare:begin (written by `cargo bench --bench compare`; edits in between are replaced) -->";
const END: &str = "<!-- compare:end -->";

/// Replaces this bench's section of docs/PERFORMANCE.md (or appends it), keeping the rest.
fn write_doc(report: &str) -> io::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PERFORMANCE.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Performance\n".to_string());
    let section = format!("{BEGIN}\n{report}\n{END}");
    let new = match (old.find("<!-- compare:begin"), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(path)
}

/// The SIP rows (portier's B2BUA against Kamailio 5.6), beside their sipp scenarios.
#[path = "sip/mod.rs"]
mod sip;

#[path = "media/mod.rs"]
mod media;
