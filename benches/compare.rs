//! portier against Debian's HAProxy 2.6, both fully transparent, in the namespace lab.
//!
//! `sudo ./scripts/bench.sh` (release build, then `cargo bench --bench compare`).
//!
//! One lab (client, balancer, one backend `b0`), built once. In the backend: nginx (2 workers,
//! a 16-byte body `peer=<client ip>` on :80, the same over TLS on :443), `iperf3 -s` on :5201
//! and a hold server on :7000 that accepts connections and keeps them. In the balancer, at the
//! same time: portier (`portier run`, TPROXY table `inet portier`, fwmark 1 / table 100) on the
//! VIP ports 5201 (tcp), 80 (http), 443 (https), 7000 (tcp), and HAProxy on the VIP ports 15201,
//! 8080, 8443, 17000, each `bind 127.0.0.1:PORT transparent` behind an equivalent table
//! `inet haproxy` (fwmark 2 / table 101) and with `source 0.0.0.0 usesrc clientip`. Both send
//! every connection to the same backend, which sees the real client address from both
//! (checked before measuring). Neither logs per request. Only the one being measured has load.
//!
//! Worker threads N = 1, then 2: portier through `TOKIO_WORKER_THREADS=N` (the environment
//! form of `[global] threads`), HAProxy through `nbthread N`. For each N, every scenario runs A B A B...
//! (portier, HAProxy) for BENCH_ROUNDS rounds; the table shows medians. The no-proxy limit
//! (the client straight to 198.18.2.11 through the balancer's kernel routing) is measured
//! first, before any proxy ran (see `run`), BENCH_DIRECT_ROUNDS times. Results are recorded, never asserted. The table is printed and written to
//! docs/PERFORMANCE.md between the `compare:begin`/`compare:end` markers (the rest of the file
//! is kept).
//!
//! Knobs (environment): BENCH_ROUNDS (3), BENCH_DIRECT_ROUNDS (1), BENCH_SECS (4),
//! BENCH_THREADS ("1,2"),
//! BENCH_HOLD (5000), BENCH_DOC (1; 0 = do not write docs/PERFORMANCE.md),
//! BENCH_SCENARIOS (all; comma list of l4,http,close,https,handshake,memory,sip).
//! BENCH_PORTIER_EXE (this build; another portier binary for before/after figures).
//! BENCH_PINNED (0; 1 = both proxies started on CPUs 0..N only, portier with no thread
//! setting, so its default scheduler for N CPUs is what is measured).
//!
//! The SIP rows (`sip`, module [`sip`] at the end) run after the others in the same lab, with
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
/// The backend's own ports (what the no-proxy runs dial).
const BACKEND_PORTS: Ports = Ports { tcp: 5201, http: 80, https: 443, hold: 7000 };

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Portier,
    Haproxy,
    Direct,
    /// The reference of the SIP rows.
    Kamailio,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Portier => "portier",
            Target::Haproxy => "haproxy",
            Target::Direct => "no-proxy",
            Target::Kamailio => "kamailio",
        }
    }

    fn addr(self, pick: impl Fn(Ports) -> u16) -> SocketAddr {
        let (ip, ports) = match self {
            Target::Portier => (VIP_V4, PORTIER_PORTS),
            Target::Haproxy => (VIP_V4, HAPROXY_PORTS),
            Target::Direct => (lab::backend_v4(0), BACKEND_PORTS),
            Target::Kamailio => unreachable!("Kamailio serves only the SIP rows"),
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

const ROWS: [Row; 19] = [
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
    Row { id: "rss.hold", label: "RSS with HOLD idle conns, MiB", higher_better: false, reference: H },
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
        }
    }

    /// Whether the scenario group `name` was asked for (all are, without BENCH_SCENARIOS).
    fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == name))
    }

    /// Whether any of the HAProxy scenarios (everything but `sip`) was asked for.
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
        let sock = tmp.join(format!("haproxy-{n}.sock"));
        let cfg = write_haproxy_cfg(tmp, &certs, n, &sock)?;
        // Both proxies started on N CPUs (`pinned`) or on all of them with portier told N.
        let (mut portier, haproxy) = on_cpus(k.pinned.then_some(n), || -> io::Result<_> {
            if !k.pinned {
                std::env::set_var("TOKIO_WORKER_THREADS", n.to_string());
            }
            let portier = PortierProcess::start(&lab.balancer, exe, &portier_config(&certs), ADMIN);
            std::env::remove_var("TOKIO_WORKER_THREADS");
            let haproxy = Proc::spawn(
                "haproxy",
                lab.balancer.command("haproxy").args(["-db", "-f"]).arg(&cfg),
                &tmp.join(format!("haproxy-{n}.log")),
            )?;
            Ok((portier?, haproxy))
        })?;
        for t in [Target::Portier, Target::Haproxy] {
            for tls in [false, true] {
                let c = &lab.client;
                wait_until(Duration::from_secs(10), &format!("{} (tls {tls}) answering", t.name()), || {
                    peer_check(c, t, tls).is_ok()
                })?;
                // Must be the real client address: fully transparent on both.
                peer_check(c, t, tls).map_err(io::Error::other)?;
            }
        }
        let threads = thread_count(portier.pid().unwrap_or(0));
        res.notes.push(format!(
            "N={n}: portier process has {threads} threads (tokio workers + main + blocking pool), \
             haproxy {}",
            thread_count(haproxy.pid())
        ));

        if k.wants("memory") {
            std::thread::sleep(Duration::from_millis(500));
            for (t, pid) in [(Target::Portier, portier.pid().unwrap_or(0)), (Target::Haproxy, haproxy.pid())]
            {
                if let Some(kb) = rss_kib(pid) {
                    res.push(n, "rss.idle", t, kb as f64 / 1024.0);
                }
            }
            for (t, pid) in [(Target::Portier, portier.pid().unwrap_or(0)), (Target::Haproxy, haproxy.pid())]
            {
                match hold_connections(lab, &holder, t, k.hold) {
                    Ok(conns) => {
                        std::thread::sleep(Duration::from_secs(1));
                        let kb = rss_kib(pid).unwrap_or(0);
                        eprintln!("  hold {} x{}: {:.1} MiB", t.name(), k.hold, kb as f64 / 1024.0);
                        res.push(n, "rss.hold", t, kb as f64 / 1024.0);
                        drop(conns);
                        holder.clear();
                        std::thread::sleep(Duration::from_secs(2));
                    }
                    Err(e) => {
                        holder.clear();
                        res.failures.push(format!("N={n} hold {}: {e}", t.name()));
                        eprintln!("  hold {}: {e}", t.name());
                    }
                }
            }
        }

        for s in SCENARIOS.iter().copied().filter(|s| s.enabled(&k.only)) {
            for round in 0..k.rounds {
                for t in [Target::Portier, Target::Haproxy] {
                    let pid = match t {
                        Target::Portier => portier.pid(),
                        _ => Some(haproxy.pid()),
                    };
                    run_one(&lab.client, res, k, n, round, s, t, pid);
                }
            }
            if s == (Scenario::Http { tls: true, close: true }) || s == Scenario::NewTls {
                res.notes.push(format!(
                    "N={n}: HAProxy after the {} runs: {}",
                    s.key(),
                    haproxy_ssl_info(&sock)
                ));
            }
        }
        let _ = portier.stop(Duration::from_secs(10));
        drop(haproxy);
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

fn haproxy_cfg(certs: &Certs, n: usize, sock: &Path) -> String {
    let b = lab::backend_v4(0);
    let p = HAPROXY_PORTS;
    format!(
        r#"global
    nbthread {n}
    maxconn 8000
    # Splicing takes pipes (two descriptors each, default maxconn/4 of them): within the
    # 20,000 descriptors a process may hold here.
    maxpipes 1000
    ssl-server-verify none
    stats socket {sock} mode 600 level user

defaults
    maxconn 8000
    timeout connect 5s
    timeout client 2m
    timeout server 1h

frontend tcp
    mode tcp
    # Like portier's relay: splice(2) where it pays (HAProxy's default is not to).
    option splice-auto
    bind 127.0.0.1:{tcp} transparent
    default_backend iperf
backend iperf
    mode tcp
    option splice-auto
    source 0.0.0.0 usesrc clientip
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
    # Like portier: a server connection serves only the client connection that opened it.
    http-reuse never
    source 0.0.0.0 usesrc clientip
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

fn write_haproxy_cfg(dir: &Path, certs: &Certs, n: usize, sock: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("haproxy-{n}.cfg"));
    std::fs::write(&path, haproxy_cfg(certs, n, sock))?;
    Ok(path)
}

/// HAProxy's TPROXY plumbing: the same rules `portier nft` prints for portier, in its own
/// table and with its own fwmark and routing table, so both can run side by side.
fn haproxy_ruleset() -> String {
    let p = HAPROXY_PORTS;
    let mut s = String::from(
        "table inet haproxy\ndelete table inet haproxy\ntable inet haproxy {\n\tchain prerouting {\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x2 accept\n",
    );
    for port in [p.tcp, p.hold, p.http, p.https] {
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

/// One line per target of the issue, per N: met or not, with the numbers.
fn targets(k: &Knobs, res: &Results) -> String {
    let mut s = String::new();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for &n in &k.threads {
        let _ = writeln!(s, "N = {n}:");
        let mut line = |what: &str, r: Option<bool>, detail: String| {
            let v = r.map_or("not measured", verdict);
            let _ = writeln!(s, "- {what}: **{v}** ({detail})");
        };
        for (id, streams) in [("l4-1", 1), ("l4-8", 8)] {
            let r = ratio(res, n, id);
            let lim = res.median(0, id, Target::Direct);
            let p = res.median(n, id, Target::Portier);
            let half = p.zip(lim).map(|(p, l)| p / l);
            line(
                &format!("L4 {streams} stream(s) ≥ 1.0x HAProxy and ≥ 0.5 of the no-proxy limit"),
                r.zip(half).map(|(r, h)| r >= 1.0 && h >= 0.5),
                format!("{}x HAProxy, {} of the limit", fmt_val(r), fmt_val(half)),
            );
        }
        let r = ratio(res, n, "http.rps");
        let p99 = ratio(res, n, "http.p99");
        line(
            "HTTP keep-alive req/s ≥ 1.0x with p99 ≤ 1.1x",
            r.zip(p99).map(|(r, p)| r >= 1.0 && p <= 1.1),
            format!("{}x req/s, p99 {}x", fmt_val(r), fmt_val(p99)),
        );
        for (id, what, min) in [
            ("close.rps", "one request per connection ≥ 1.0x", 1.0),
            ("https.rps", "HTTPS keep-alive ≥ 1.0x", 1.0),
            ("handshake", "new TLS handshakes/s ≥ 1.5x", 1.5),
        ] {
            let r = ratio(res, n, id);
            line(what, r.map(|r| r >= min), format!("{}x", fmt_val(r)));
        }
        let r = ratio(res, n, "rss.hold");
        line(
            &format!("RSS with {} idle connections ≤ HAProxy's", k.hold),
            r.map(|r| r <= 1.0),
            format!("{}x", fmt_val(r)),
        );
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
         rounds run A B A B (portier, HAProxy). The no-proxy limit (client straight to \
         198.18.2.11 through the balancer's kernel routing; the median of {} round(s)) is measured first, before any proxy \
         ran, so no leftover transparent TIME_WAIT socket of a proxy can capture its SYNs. \
         Ratio = portier / HAProxy (higher is better for rates, lower for latency and memory). \
         All processes (client tools, both proxies, nginx with {NGINX_WORKERS} workers) share the \
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
    let _ = writeln!(s, "| scenario | N | portier | HAProxy (SIP: Kamailio) | ratio | no-proxy limit |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
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
            let r = ratio_to(res, n, row.id, row.reference);
            let arrow = if row.higher_better { "↑" } else { "↓" };
            let _ = writeln!(
                s,
                "| {} {arrow} | {n} | {} | {} | {} | {} |",
                row.label.replace("HOLD", &k.hold.to_string()),
                fmt_val(p),
                fmt_val(h),
                r.map_or("–".into(), |r| format!("{r:.2}x")),
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
    s += "TARGET is 198.19.0.10:80/443 (portier), 198.19.0.10:8080/8443 (HAProxy) or \
          198.18.2.11:80/443 (no proxy: nginx itself terminates TLS); iperf3 targets 198.19.0.10:5201, \
          198.19.0.10:15201 or 198.18.2.11:5201. Idle connections: a Rust client opens them one by one \
          from 198.18.1.3-.10 to 198.19.0.10:7000 (portier) or :17000 (HAProxy), waits until the \
          backend accepted all of them, waits 1 s, reads VmRSS from /proc/PID/status.\n\n```\n";
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
         portier run --config F`):\n\n```toml\n{}```\n\nHAProxy (`haproxy -db -f F`):\n\n```\n{}```\n\n\
         HAProxy's TPROXY plumbing (portier installs its own, `inet portier` with mark 0x1 and \
         table 100):\n\n```\n{}{}\n```\n\n</details>",
        portier_config(&dummy),
        haproxy_cfg(&dummy, 1, Path::new("SOCK")).replace("nbthread 1", "nbthread N"),
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

/// The SIP rows: calls per second through portier's B2BUA against Kamailio 5.6 as a stateful
/// proxy (the reference), and REGISTER with digest authentication per second (portier only).
///
/// Same lab as the other rows: the UAC (sipp, `benches/sip/uac.xml`) in the client namespace
/// at 198.18.1.2:5060, the UAS (sipp, `benches/sip/uas.xml`) in the backend namespace at
/// 198.18.2.11:5060, portier (UDP 198.18.1.1:5060) and Kamailio (UDP 198.18.1.1:5070) both
/// running in the balancer namespace for the whole SIP part, pinned to CPU 0; every sipp
/// process is pinned to CPU 1. For portier both sipp ends are peer trunks (`load` trusted, so
/// its calls are routed by the dial plan without digest; `far` the target of `9.`), the UAC
/// dials 9123. Kamailio relays every initial INVITE with `t_relay()` to the UAS and
/// record-routes, so ACK and BYE pass it as they pass portier (`benches/sip/kamailio.cfg`).
///
/// One measurement is a sipp run of RATE calls/s for BENCH_SIP_SECS seconds (`-m` = RATE x
/// secs), each call INVITE/100/180/200/ACK/pause/BYE/200. It is clean when every call
/// succeeded (sipp exits 0, no failed call of any cause), there were at most 5 retransmissions
/// per 100 calls (else answers took longer than T1 and a backlog built up, which a few seconds
/// absorb but a longer run would not) and sipp created calls at ≥ 90% of RATE (else the load
/// generator, not the proxy, was the limit). The value of a round is the
/// highest clean rate of the steps: round 1 climbs from BENCH_SIP_START, later rounds start at
/// the previous round's result (one step down when that fails), so a round costs about two
/// runs. Rounds alternate A B A B (portier, Kamailio). The no-proxy limit is sipp's own
/// ceiling: the UAC straight to the UAS, climbed once from twice the best proxy result.
/// Each run also records the CPU the balancer used (portier's process, or all of Kamailio's).
///
/// Knobs: BENCH_SIP_SECS (4), BENCH_SIP_PAUSE_MS (1000, the call's talk time), BENCH_SIP_THREADS
/// (1: portier's `TOKIO_WORKER_THREADS` and Kamailio's `-n` children), BENCH_SIP_STEPS
/// (250,500,1000,1500,2000,3000,4000,5000,6000,8000,10000), BENCH_SIP_START (1000),
/// BENCH_SIP_REG_STEPS (500,1000,2000,4000,6000,8000,12000,16000), BENCH_SIP_REG_START (2000),
/// BENCH_SIP_LIMIT (1; 0 = skip the no-proxy limit), BENCH_SIP_TRACE (0; 1 = sipp's message
/// traces in the run's directory, with BENCH_KEEP=1 to keep it).
mod sip {
    use super::*;

    /// Where the balancer-side processes listen.
    const BAL: Ipv4Addr = lab::BALANCER_CLIENT_SIDE_V4;
    const PORTIER_PORT: u16 = 5060;
    const KAMAILIO_PORT: u16 = 5070;
    /// The UAC: portier's trusted peer trunk `load`.
    const UAC_PORT: u16 = 5060;
    /// The UAS: portier's peer trunk `far`.
    const UAS_PORT: u16 = 5060;
    /// Registering phones, from the client's second address (not the trusted trunk's).
    const REG_PORT: u16 = 5062;
    const DOMAIN: &str = "bench.example.test";
    /// Extensions 3000 ... 3099, registered in turn (sipp injection file).
    const FIRST_EXT: usize = 3000;
    const EXTENSIONS: usize = 100;
    const DIALLED: &str = "9123";
    const BALANCER_CPU: &str = "0";
    const SIPP_CPU: &str = "1";
    /// A call waits at most this long for any answer (`-recv_timeout`), so a saturated step
    /// ends soon after its last call instead of after sipp's full retransmission schedule.
    const RECV_TIMEOUT_MS: u64 = 4000;
    /// A created-calls rate below this share of the asked rate means sipp was the limit.
    const MIN_CREATED_SHARE: f64 = 0.9;
    /// At most this many retransmissions per call: more means answers took longer than T1
    /// (500 ms), a backlog that a run of a few seconds absorbs but a longer one would not.
    const MAX_RETRANS_PER_CALL: f64 = 0.05;

    pub struct Knobs {
        secs: u64,
        pause_ms: u64,
        threads: usize,
        steps: Vec<u32>,
        start: u32,
        reg_steps: Vec<u32>,
        reg_start: u32,
        limit: bool,
    }

    impl Knobs {
        pub fn from_env() -> Knobs {
            let num =
                |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(d);
            let list = |k: &str, d: &[u32]| {
                let mut v: Vec<u32> = std::env::var(k)
                    .ok()
                    .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).filter(|x| *x > 0).collect())
                    .filter(|v: &Vec<u32>| !v.is_empty())
                    .unwrap_or_else(|| d.to_vec());
                v.sort_unstable();
                v.dedup();
                v
            };
            Knobs {
                secs: num("BENCH_SIP_SECS", 4).max(2),
                pause_ms: num("BENCH_SIP_PAUSE_MS", 1000),
                threads: num("BENCH_SIP_THREADS", 1).max(1) as usize,
                steps: list(
                    "BENCH_SIP_STEPS",
                    &[250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000],
                ),
                start: num("BENCH_SIP_START", 1000) as u32,
                reg_steps: list("BENCH_SIP_REG_STEPS", &[500, 1000, 2000, 4000, 6000, 8000, 12000, 16000]),
                reg_start: num("BENCH_SIP_REG_START", 2000) as u32,
                limit: num("BENCH_SIP_LIMIT", 1) != 0,
            }
        }
    }

    /// Index of the highest step not above `rate` (0 when all are above).
    fn step_index(steps: &[u32], rate: u32) -> usize {
        steps.iter().rposition(|s| *s <= rate).unwrap_or(0)
    }

    /// What one sipp UAC run did.
    #[derive(Default, Debug)]
    struct SipRun {
        rate: u32,
        calls: u64,
        ok: u64,
        failed: u64,
        /// Failure causes with a non-zero count (sipp's `Failed...(C)` columns).
        causes: Vec<(String, u64)>,
        retrans: u64,
        /// Calls created per second while creating (from sipp's 1 s statistics).
        created_rate: Option<f64>,
        code: i32,
        first_error: Option<String>,
        /// CPU seconds the balancer (portier, or all Kamailio processes) used during the run.
        cpu: Option<f64>,
    }

    impl SipRun {
        fn clean(&self) -> bool {
            self.code == 0
                && self.ok == self.calls
                && self.failed == 0
                && self.retrans as f64 <= MAX_RETRANS_PER_CALL * self.calls as f64
                && self.created_rate.is_none_or(|r| r >= MIN_CREATED_SHARE * f64::from(self.rate))
        }

        fn show(&self) -> String {
            let mut s = format!("{}/s: {} of {} calls ok", self.rate, self.ok, self.calls);
            if self.failed > 0 {
                let pct = 100.0 * self.failed as f64 / self.calls.max(1) as f64;
                let causes: Vec<String> = self.causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
                let _ = write!(s, ", {} failed ({pct:.1}%: {})", self.failed, causes.join(", "));
            }
            if let Some(r) = self.created_rate {
                let _ = write!(s, ", created {r:.0}/s");
            }
            if self.retrans > 0 {
                let _ = write!(s, ", {} retransmissions", self.retrans);
            }
            if let Some(c) = self.cpu {
                let per = 1e6 * c / self.calls.max(1) as f64;
                let _ = write!(s, ", balancer CPU {c:.2} s = {per:.0} µs per call");
            }
            if self.code != 0 {
                let _ = write!(s, ", sipp exit {}", self.code);
            }
            if !self.clean() {
                let mut why = Vec::new();
                if self.failed > 0 || self.ok < self.calls || self.code != 0 {
                    why.push("failed calls");
                }
                if self.retrans as f64 > MAX_RETRANS_PER_CALL * self.calls as f64 {
                    why.push("too many retransmissions");
                }
                if self.created_rate.is_some_and(|r| r < MIN_CREATED_SHARE * f64::from(self.rate)) {
                    why.push("sipp fell short of the rate");
                }
                let _ = write!(s, " [not clean: {}]", why.join(", "));
                if let Some(e) = &self.first_error {
                    let _ = write!(s, "; sipp errors: {e}");
                }
            }
            s
        }
    }

    /// One sipp UAC process: scenario, where it sends, where it binds, extra arguments.
    struct Uac<'a> {
        ns: &'a Netns,
        scenario: &'static str,
        to: SocketAddr,
        local: Ipv4Addr,
        port: u16,
        extra: Vec<String>,
    }

    fn scenario_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sip").join(name)
    }

    /// The UAC's arguments after `sipp` (shown in the report with placeholders).
    fn uac_args(
        scenario: &str,
        to: &str,
        local: &str,
        port: u16,
        rate: &str,
        calls: &str,
        pause_ms: u64,
    ) -> Vec<String> {
        [
            "-sf",
            scenario,
            to,
            "-i",
            local,
            "-p",
            &port.to_string(),
            "-r",
            rate,
            "-m",
            calls,
            "-d",
            &pause_ms.to_string(),
            "-recv_timeout",
            &RECV_TIMEOUT_MS.to_string(),
            "-buff_size",
            "1048576",
            "-nostdin",
            "-nd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn run_uac(u: &Uac, dir: &Path, label: &str, rate: u32, secs: u64, pause_ms: u64) -> SipRun {
        let calls = u64::from(rate) * secs;
        let stat = dir.join(format!("{label}.csv"));
        let err = dir.join(format!("{label}.errors"));
        let wall = 3 * secs + pause_ms / 1000 + RECV_TIMEOUT_MS / 1000 + 30;
        let mut cmd = u.ns.command("timeout");
        cmd.args(["-k", "5", &wall.to_string(), "taskset", "-c", SIPP_CPU, "sipp"])
            .args(uac_args(
                &scenario_path(u.scenario).display().to_string(),
                &u.to.to_string(),
                &u.local.to_string(),
                u.port,
                &rate.to_string(),
                &calls.to_string(),
                pause_ms,
            ))
            .args(&u.extra)
            .args(["-trace_stat", "-stf"])
            .arg(&stat)
            .args(["-fd", "1", "-trace_err", "-error_file"])
            .arg(&err)
            .current_dir(dir)
            .stdin(Stdio::null());
        // BENCH_SIP_TRACE=1: every message sipp sent and received, for debugging the lab.
        if std::env::var("BENCH_SIP_TRACE").is_ok_and(|v| v == "1") {
            cmd.args(["-trace_msg", "-message_file"]).arg(dir.join(format!("{label}.messages")));
        }
        cmd.stdin(Stdio::null());
        let out = std::fs::File::create(dir.join(format!("{label}.out")));
        match out.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => {
                cmd.stdout(a).stderr(b);
            }
            Err(_) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let code = match cmd.status() {
            Ok(st) => st.code().unwrap_or(-1),
            Err(e) => {
                return SipRun {
                    rate,
                    calls,
                    code: -1,
                    first_error: Some(format!("sipp: {e}")),
                    ..SipRun::default()
                }
            }
        };
        let mut r = parse_stat(&std::fs::read_to_string(&stat).unwrap_or_default(), calls);
        r.rate = rate;
        r.calls = calls;
        r.code = code;
        r.first_error = error_summary(&std::fs::read_to_string(&err).unwrap_or_default());
        if r.first_error.is_none() && code != 0 {
            let o = std::fs::read_to_string(dir.join(format!("{label}.out"))).unwrap_or_default();
            r.first_error =
                o.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.chars().take(240).collect());
        }
        r
    }

    /// The kinds of errors in a sipp error file, counted: "172 x receive timeout on message
    /// bench-uac:2" (the index is the scenario step), else its first line.
    fn error_summary(text: &str) -> Option<String> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (pat, with_token) in [("receive timeout on message ", true), ("unexpected message", false)] {
            for (at, _) in text.match_indices(pat) {
                let what = if with_token {
                    let rest = &text[at + pat.len()..];
                    let tok: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != ',').collect();
                    format!("{pat}{tok}")
                } else {
                    pat.to_string()
                };
                *counts.entry(what).or_default() += 1;
            }
        }
        if counts.is_empty() {
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("The following events occurred"))?;
            // "DATE<TAB>TIME<TAB>EPOCH: message"
            let msg = line.split_once(": ").map_or(line, |(_, m)| m);
            return Some(msg.chars().take(200).collect());
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Some(v.iter().map(|(w, n)| format!("{n} x {w}")).collect::<Vec<_>>().join(", "))
    }

    /// sipp's `-trace_stat` file: `;`-separated, a header line, one line per second and a last
    /// one at the end. Totals come from the last line, the creation rate from the lines written
    /// while calls were still being created.
    fn parse_stat(text: &str, calls: u64) -> SipRun {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else { return SipRun::default() };
        let names: Vec<&str> = head.split(';').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(';').collect()).collect();
        let col = |name: &str| names.iter().position(|n| *n == name);
        let num = |row: &[&str], i: Option<usize>| -> u64 {
            i.and_then(|i| row.get(i)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        let mut r = SipRun::default();
        let Some(last) = rows.last() else { return r };
        r.ok = num(last, col("SuccessfulCall(C)"));
        r.failed = num(last, col("FailedCall(C)"));
        r.retrans = num(last, col("Retransmissions(C)"));
        for (i, n) in names.iter().enumerate() {
            if let Some(cause) = n.strip_prefix("Failed").and_then(|c| c.strip_suffix("(C)")) {
                let v = num(last, Some(i));
                if cause != "Call" && v > 0 {
                    r.causes.push((cause.to_string(), v));
                }
            }
        }
        // CurrentTime is "date<TAB>time<TAB>epoch"; the epoch seconds are its last token.
        let (created, now) = (col("TotalCallCreated"), col("CurrentTime"));
        let during: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|row| {
                let c = num(row, created);
                let t: f64 = now.and_then(|i| row.get(i))?.split_whitespace().last()?.parse().ok()?;
                (c > 0 && c < calls).then_some((t, c as f64))
            })
            .collect();
        if let (Some(a), Some(b)) = (during.first(), during.last()) {
            if b.0 - a.0 >= 0.9 {
                r.created_rate = Some((b.1 - a.1) / (b.0 - a.0));
            }
        }
        r
    }

    /// The rate search of one round: from `start`, up while clean, or down until clean.
    struct Climb {
        top: Option<u32>,
        runs: Vec<SipRun>,
    }

    impl Climb {
        /// Balancer CPU µs per call of the run at the highest clean rate.
        fn cpu_per_call(&self) -> Option<f64> {
            let r = self.runs.iter().find(|r| Some(r.rate) == self.top && r.clean())?;
            Some(1e6 * r.cpu? / r.calls.max(1) as f64)
        }
    }

    impl Climb {
        fn run(steps: &[u32], start: u32, mut measure: impl FnMut(u32) -> SipRun) -> Climb {
            let mut i = step_index(steps, start);
            let mut runs = Vec::new();
            let mut top = None;
            let first = measure(steps[i]);
            let up = first.clean();
            runs.push(first);
            if up {
                top = Some(steps[i]);
                while i + 1 < steps.len() {
                    i += 1;
                    let r = measure(steps[i]);
                    let ok = r.clean();
                    runs.push(r);
                    if !ok {
                        break;
                    }
                    top = Some(steps[i]);
                }
            } else {
                while i > 0 {
                    i -= 1;
                    let r = measure(steps[i]);
                    let ok = r.clean();
                    runs.push(r);
                    if ok {
                        top = Some(steps[i]);
                        break;
                    }
                }
            }
            Climb { top, runs }
        }

        /// "highest clean rate X; failed at Y: ..." for the report.
        fn summary(&self) -> String {
            let top = self.top.map_or("none clean".to_string(), |t| format!("highest clean {t}/s"));
            let steps: Vec<String> = self
                .runs
                .iter()
                .map(|r| format!("{} {}", r.rate, if r.clean() { "ok" } else { "FAIL" }))
                .collect();
            let mut s = format!("{top} (steps: {})", steps.join(", "));
            // The first failing run above the result: what happens past the limit.
            let above = self.runs.iter().find(|r| !r.clean() && self.top.is_none_or(|t| r.rate > t));
            if let Some(r) = above {
                let _ = write!(s, "; at {}", r.show());
            }
            s
        }
    }

    /// New WARN / ERROR lines of portier's log since `from` (a byte offset, moved on), counted
    /// by message: "12 x WARN portier::sip::engine::call: SIP: no ACK ..." (the timestamp and
    /// the fields after the message, such as `call_id=...`, left out).
    fn portier_log_news(p: &PortierProcess, from: &mut usize) -> Option<String> {
        let log = p.log();
        let new = log.get(*from..).unwrap_or("").to_string();
        *from = log.len();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for l in new.lines() {
            let Some(at) = l.find(" WARN ").or_else(|| l.find(" ERROR ")) else { continue };
            let msg = l[at..].trim();
            // Cut before the first ` key=` field.
            let cut = msg
                .match_indices(' ')
                .map(|(i, _)| i)
                .find(|&i| {
                    let rest = &msg[i + 1..];
                    let key: String =
                        rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    !key.is_empty() && rest[key.len()..].starts_with('=')
                })
                .unwrap_or(msg.len());
            *counts.entry(msg[..cut].to_string()).or_default() += 1;
        }
        if counts.is_empty() {
            return None;
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Some(v.iter().map(|(m, n)| format!("{n} x `{m}`")).collect::<Vec<_>>().join(", "))
    }

    fn portier_config(all_extensions: bool) -> String {
        let client = lab::CLIENT_V4;
        let uas = lab::backend_v4(0);
        let mut ext = String::new();
        for i in 0..EXTENSIONS {
            if all_extensions || i < 2 {
                let _ = writeln!(ext, "{} = {{ secret = \"s3cret-{}\" }}", FIRST_EXT + i, FIRST_EXT + i);
            } else if i == 2 {
                let _ = writeln!(ext, "# ... and so on up to {}", FIRST_EXT + EXTENSIONS - 1);
            }
        }
        format!(
            r#"[global]
drain_timeout = "1s"
log_level = "warn"

[admin]
listen = "{ADMIN}"

[sip]
listen = ["udp:{BAL}:{PORTIER_PORT}"]
domain = "{DOMAIN}"

[sip.extensions]
{ext}
[sip.trunks.load]
kind = "peer"
address = "udp:{client}:{UAC_PORT}"
trusted = true

[sip.trunks.far]
kind = "peer"
address = "udp:{uas}:{UAS_PORT}"

[[sip.dialplan]]
match = "9."
to = "far"
"#
        )
    }

    fn kamailio_args(threads: usize) -> Vec<String> {
        let cfg = scenario_path("kamailio.cfg").display().to_string();
        let uas = lab::backend_v4(0);
        [
            "-DD",
            "-E",
            "-f",
            &cfg,
            "-l",
            &format!("udp:{BAL}:{KAMAILIO_PORT}"),
            "-n",
            &threads.to_string(),
            "-m",
            "256",
            "-M",
            "16",
            "-A",
            &format!("UAS=\"sip:{uas}:{UAS_PORT}\""),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Pins every thread of `pid` to `cpu` (threads created later inherit it).
    fn pin(pid: u32, cpu: &str) -> io::Result<()> {
        let out = Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("taskset {pid}: {}", String::from_utf8_lossy(&out.stderr).trim())))
        }
    }

    /// The UAS for one measurement (killed on drop).
    fn start_uas(lab: &Lab, dir: &Path, label: &str) -> io::Result<Proc> {
        let uas = lab::backend_v4(0).to_string();
        let p = Proc::spawn(
            "sipp uas",
            lab.backends[0]
                .command("taskset")
                .args(["-c", SIPP_CPU, "sipp", "-sf"])
                .arg(scenario_path("uas.xml"))
                .args(["-i", &uas, "-p", &UAS_PORT.to_string(), "-buff_size", "1048576", "-nostdin"])
                .args(["-trace_err", "-error_file"])
                .arg(dir.join(format!("{label}.uas-errors")))
                .current_dir(dir),
            &dir.join(format!("{label}.uas-out")),
        )?;
        Ok(p.quiet())
    }

    fn call_target(t: Target) -> SocketAddr {
        match t {
            Target::Portier => SocketAddr::from((BAL, PORTIER_PORT)),
            Target::Kamailio => SocketAddr::from((BAL, KAMAILIO_PORT)),
            _ => SocketAddr::from((lab::backend_v4(0), UAS_PORT)),
        }
    }

    /// One calls measurement through `t` at `rate` (UAS started and stopped around it).
    /// `run_uac` with the CPU the processes `pids` used meanwhile.
    fn with_cpu(pids: &[u32], run: impl FnOnce() -> SipRun) -> SipRun {
        let c0 = cpu_secs(pids);
        let mut r = run();
        if !pids.is_empty() {
            r.cpu = Some(cpu_secs(pids) - c0);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn calls(
        lab: &Lab,
        dir: &Path,
        sk: &Knobs,
        t: Target,
        pids: &[u32],
        label: &str,
        rate: u32,
        secs: u64,
    ) -> SipRun {
        let uas = match start_uas(lab, dir, label) {
            Ok(u) => u,
            Err(e) => {
                return SipRun { rate, code: -1, first_error: Some(format!("UAS: {e}")), ..SipRun::default() }
            }
        };
        let uac = Uac {
            ns: &lab.client,
            scenario: "uac.xml",
            to: call_target(t),
            local: lab::CLIENT_V4,
            port: UAC_PORT,
            extra: vec!["-s".into(), DIALLED.into()],
        };
        let r = with_cpu(pids, || run_uac(&uac, dir, label, rate, secs, sk.pause_ms));
        drop(uas);
        r
    }

    fn registers(lab: &Lab, dir: &Path, pids: &[u32], label: &str, rate: u32, secs: u64) -> SipRun {
        let uac = Uac {
            ns: &lab.client,
            scenario: "register.xml",
            to: SocketAddr::from((BAL, PORTIER_PORT)),
            local: lab::client_v4(1),
            port: REG_PORT,
            extra: vec!["-inf".into(), dir.join("users.csv").display().to_string()],
        };
        with_cpu(pids, || run_uac(&uac, dir, label, rate, secs, 0))
    }

    pub fn run(k: &super::Knobs, lab: &Lab, tmp: &Path, exe: &Path, res: &mut Results) -> io::Result<()> {
        let sk = &k.sip;
        let started = Instant::now();
        let dir = tmp.join("sip");
        std::fs::create_dir_all(&dir)?;
        eprintln!("compare: SIP (logs and sipp statistics in {})", dir.display());
        let mut users = String::from("SEQUENTIAL\n");
        for i in 0..EXTENSIONS {
            let e = FIRST_EXT + i;
            let _ = writeln!(users, "{e};[authentication username={e} password=s3cret-{e}]");
        }
        std::fs::write(dir.join("users.csv"), users)?;

        let kamailio = Proc::spawn(
            "kamailio",
            lab.balancer
                .command("taskset")
                .args(["-c", BALANCER_CPU, "kamailio"])
                .args(kamailio_args(sk.threads)),
            &dir.join("kamailio.log"),
        )?;
        std::env::set_var("TOKIO_WORKER_THREADS", sk.threads.to_string());
        let started_portier = PortierProcess::start(&lab.balancer, exe, &portier_config(true), ADMIN);
        std::env::remove_var("TOKIO_WORKER_THREADS");
        let mut portier = started_portier?;
        let ppid = portier.pid().unwrap_or(0);
        pin(ppid, BALANCER_CPU)?;
        let portier_pids = [ppid];
        let kamailio_pids = kamailio_processes(kamailio.pid());
        res.notes.push(format!(
            "SIP: portier process has {} threads (TOKIO_WORKER_THREADS={}), Kamailio {} processes (-n {}), \
             both pinned to CPU {BALANCER_CPU}, every sipp to CPU {SIPP_CPU}",
            thread_count(ppid),
            sk.threads,
            kamailio_pids.len(),
            sk.threads
        ));
        let mut log_at = 0;

        // Both must complete a few calls (and portier a few registrations) before measuring.
        std::thread::sleep(Duration::from_millis(500));
        for t in [Target::Portier, Target::Kamailio] {
            let r = calls(lab, &dir, sk, t, &[], &format!("smoke-{}", t.name()), 5, 2);
            if !r.clean() {
                let log = if t == Target::Portier {
                    portier.log_tail()
                } else {
                    std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default()
                };
                return Err(io::Error::other(format!("{} smoke calls: {}\n{log}", t.name(), r.show())));
            }
        }
        let r = registers(lab, &dir, &[], "smoke-register", 5, 2);
        if !r.clean() {
            return Err(io::Error::other(format!(
                "smoke registrations: {}\n{}",
                r.show(),
                portier.log_tail()
            )));
        }
        if let Some(l) = portier_log_news(&portier, &mut log_at) {
            res.sip_log.push(format!("portier log during the smoke runs: {l}"));
        }

        let n = sk.threads;
        let mut next = [sk.start; 2];
        let mut best = 0;
        for round in 0..k.rounds {
            for (ti, t) in [Target::Portier, Target::Kamailio].into_iter().enumerate() {
                let c = Climb::run(&sk.steps, next[ti], |rate| {
                    let label = format!("calls-{}-r{}-{rate}", t.name(), round + 1);
                    let pids = if t == Target::Portier { &portier_pids[..] } else { &kamailio_pids[..] };
                    let r = calls(lab, &dir, sk, t, pids, &label, rate, sk.secs);
                    eprintln!("  SIP round {}/{} {} {}", round + 1, k.rounds, t.name(), r.show());
                    std::thread::sleep(Duration::from_secs(1));
                    r
                });
                let top = c.top.unwrap_or(0);
                res.push(n, "sip.calls", t, f64::from(top));
                if let Some(us) = c.cpu_per_call() {
                    res.push(n, "sip.cpu", t, us);
                }
                best = best.max(top);
                next[ti] = if top > 0 { top } else { sk.steps[0] };
                res.sip_log.push(format!("calls round {} {}: {}", round + 1, t.name(), c.summary()));
                if t == Target::Portier {
                    if let Some(l) = portier_log_news(&portier, &mut log_at) {
                        res.sip_log
                            .push(format!("portier log (WARN/ERROR) during calls round {}: {l}", round + 1));
                    }
                }
            }
        }
        if sk.limit {
            // sipp alone should manage twice what the proxies did; start there.
            let c = Climb::run(&sk.steps, (2 * best).max(sk.start), |rate| {
                let r =
                    calls(lab, &dir, sk, Target::Direct, &[], &format!("calls-direct-{rate}"), rate, sk.secs);
                eprintln!("  SIP limit (UAC -> UAS) {}", r.show());
                std::thread::sleep(Duration::from_secs(1));
                r
            });
            if let Some(top) = c.top {
                res.push(0, "sip.calls", Target::Direct, f64::from(top));
            }
            res.sip_log.push(format!("calls, no proxy (sipp's own ceiling): {}", c.summary()));
        }
        let mut next = sk.reg_start;
        for round in 0..k.rounds {
            let c = Climb::run(&sk.reg_steps, next, |rate| {
                let r = registers(
                    lab,
                    &dir,
                    &portier_pids,
                    &format!("register-r{}-{rate}", round + 1),
                    rate,
                    sk.secs,
                );
                eprintln!("  SIP round {}/{} register portier {}", round + 1, k.rounds, r.show());
                std::thread::sleep(Duration::from_secs(1));
                r
            });
            let top = c.top.unwrap_or(0);
            res.push(n, "sip.register", Target::Portier, f64::from(top));
            if let Some(us) = c.cpu_per_call() {
                res.push(n, "sip.regcpu", Target::Portier, us);
            }
            next = if top > 0 { top } else { sk.reg_steps[0] };
            res.sip_log.push(format!("REGISTER round {} portier: {}", round + 1, c.summary()));
            if let Some(l) = portier_log_news(&portier, &mut log_at) {
                res.sip_log.push(format!(
                    "portier log (WARN/ERROR) during REGISTER round {} (calls given up by sipp end \
                     32 s later with `no ACK for our 2xx`): {l}",
                    round + 1
                ));
            }
        }
        if let Ok(m) = portier.get("/metrics") {
            let calls: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("portier_sip_calls_total") && !l.ends_with(" 0"))
                .collect();
            res.notes.push(format!("SIP: portier's call counters at the end: {}", calls.join(", ")));
        }
        if portier.stop(Duration::from_secs(10)).is_err() {
            res.notes.push("SIP: portier did not stop within 10 s of SIGTERM".into());
        }
        let _ = std::fs::copy(&portier.log_path, dir.join("portier.log"));
        drop(kamailio);
        eprintln!("compare: SIP part took {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Kamailio's main process and its children (`ip netns exec` and `taskset` exec, so the
    /// spawned pid is kamailio itself).
    fn kamailio_processes(pid: u32) -> Vec<u32> {
        let parent = |p: u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok())
        };
        let mut v = vec![pid];
        if let Ok(d) = std::fs::read_dir("/proc") {
            v.extend(
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|p| parent(*p) == Some(pid)),
            );
        }
        v
    }

    /// The issue's SIP target, from the medians.
    pub fn targets(k: &super::Knobs, res: &Results) -> String {
        let n = k.sip.threads;
        let p = res.median(n, "sip.calls", Target::Portier);
        let r = ratio_to(res, n, "sip.calls", Target::Kamailio);
        let kam = res.median(n, "sip.calls", Target::Kamailio);
        let v = match p {
            None => "not measured",
            Some(p) if p >= 1000.0 => "met",
            Some(_) => "NOT met",
        };
        format!(
            "SIP (balancer on CPU {BALANCER_CPU}, sipp on CPU {SIPP_CPU}, N = {n}):\n\
             - SIP B2BUA ≥ 1,000 calls/s with zero failures: **{v}** (portier {} calls/s, Kamailio {}, \
             {}x Kamailio)\n",
            fmt_val(p),
            fmt_val(kam),
            fmt_val(r)
        )
    }

    /// The "SIP rows" part of the report: how, the searches, the commands, the configurations.
    pub fn render(k: &super::Knobs, res: &Results) -> String {
        let sk = &k.sip;
        let mut s = String::from("### SIP rows\n\n");
        let steps: Vec<String> = sk.steps.iter().map(u32::to_string).collect();
        let reg: Vec<String> = sk.reg_steps.iter().map(u32::to_string).collect();
        let _ = writeln!(
            s,
            "The reference for the SIP rows is Kamailio 5.6 as a stateful proxy (`t_relay()` to the \
             UAS, record-routed so ACK and BYE pass it too; no auth, no database), not HAProxy. \
             portier and Kamailio run side by side in the balancer namespace, both pinned to CPU \
             {BALANCER_CPU} (`taskset`), with N = {n} worker thread(s) (portier \
             `TOKIO_WORKER_THREADS={n}`, Kamailio `-n {n}`); every sipp process is pinned to CPU \
             {SIPP_CPU}. Calls: sipp UAC in the client namespace (198.18.1.2:{UAC_PORT}, a trusted \
             peer trunk for portier, no registration) dials {DIALLED}, sipp UAS in the backend \
             namespace ({uas}:{UAS_PORT}) answers; INVITE/100/180/200/ACK, {pause} ms pause, \
             BYE/200, UDP. A value is the highest rate (calls/s, run for {secs} s) of the steps \
             {steps} at which every call succeeded and sipp created calls at ≥ {share:.0}% of the \
             rate with at most {retrans:.0} retransmissions per 100 calls (more means answers \
             later than T1 = 500 ms: a backlog); a call waits at most {recv} ms for each answer (`-recv_timeout`). Median of \
             {rounds} rounds run A B A B (portier, Kamailio); round 1 climbs from {start}/s, \
             later rounds start at the previous result. The no-proxy limit is the UAC straight to \
             the UAS: what sipp itself manages on its one CPU. REGISTER (portier only): from \
             198.18.1.3:{REG_PORT}, extensions {FIRST_EXT}-{last} in turn, REGISTER/401/REGISTER \
             with MD5 digest (qop=auth)/200, steps {reg}, from {reg_start}/s. \
             \"balancer CPU\" is the CPU time portier (or all Kamailio processes together) used \
             during the run, and that per call (or per registration) of the run.\n",
            recv = RECV_TIMEOUT_MS,
            retrans = MAX_RETRANS_PER_CALL * 100.0,
            reg_start = sk.reg_start,
            n = sk.threads,
            uas = lab::backend_v4(0),
            pause = sk.pause_ms,
            secs = sk.secs,
            steps = steps.join(", "),
            share = MIN_CREATED_SHARE * 100.0,
            rounds = k.rounds,
            start = sk.start,
            last = FIRST_EXT + EXTENSIONS - 1,
            reg = reg.join(", "),
        );
        let _ = writeln!(s, "Rate searches (a failing step shows its failed calls by sipp's cause):\n");
        for l in &res.sip_log {
            let _ = writeln!(s, "- {l}");
        }
        let uac =
            uac_args("benches/sip/uac.xml", "TARGET", "198.18.1.2", UAC_PORT, "RATE", "CALLS", sk.pause_ms);
        let regs = uac_args(
            "benches/sip/register.xml",
            "198.18.1.1:5060",
            "198.18.1.3",
            REG_PORT,
            "RATE",
            "CALLS",
            0,
        );
        let _ = writeln!(
            s,
            "\nCommands (CALLS = RATE x {secs}; TARGET = 198.18.1.1:{PORTIER_PORT} portier, \
             198.18.1.1:{KAMAILIO_PORT} Kamailio, {uas}:{UAS_PORT} no proxy):\n\n```\n\
             UAS (backend)   taskset -c {SIPP_CPU} sipp -sf benches/sip/uas.xml -i {uas} -p {UAS_PORT} -buff_size 1048576 -nostdin\n\
             UAC (client)    taskset -c {SIPP_CPU} sipp {} -s {DIALLED} -trace_stat -fd 1\n\
             REGISTER        taskset -c {SIPP_CPU} sipp {} -inf users.csv -trace_stat -fd 1\n\
             Kamailio        taskset -c {BALANCER_CPU} kamailio {}\n\
             portier         TOKIO_WORKER_THREADS={n} portier run --config F; taskset -a -p -c {BALANCER_CPU} PID\n```\n",
            uac.join(" "),
            regs.join(" "),
            kamailio_args(sk.threads).join(" ").replace(&scenario_path("kamailio.cfg").display().to_string(), "benches/sip/kamailio.cfg"),
            secs = sk.secs,
            uas = lab::backend_v4(0),
            n = sk.threads,
        );
        let _ = writeln!(
            s,
            "<details><summary>SIP configurations</summary>\n\nportier:\n\n```toml\n{}```\n\n\
             Kamailio (benches/sip/kamailio.cfg):\n\n```\n{}```\n\n</details>\n",
            portier_config(false),
            include_str!("sip/kamailio.cfg"),
        );
        s
    }
}
