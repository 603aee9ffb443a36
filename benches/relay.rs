//! Relay benchmark: our copy loop vs tokio::io::copy_bidirectional vs splice(2).
//!
//! `cargo bench --bench relay`
//!
//! Throughput: source -> proxy -> sink on 127.0.0.1, all in this process on one tokio
//! multi-thread runtime (same worker count for every variant). The source writes a
//! preallocated buffer as fast as it can, the sink reads into a large buffer and discards;
//! bytes are counted at the sink after a warm-up. Variants alternate (A B C D A B C D ...)
//! and the median over rounds is reported.
//!
//! Idle cost: for each variant a fresh child process (this binary, `--idle-child`) opens
//! N proxied connections and reports the VmRSS and open-fd delta per connection, first with
//! no traffic at all, then right after a 64 KiB exchange each way, then after a quiet spell.
//!
//! Interactive cost: ping-pong of 1 KiB messages over 1 and 32 proxied connections, round
//! trips per second and process CPU microseconds per round trip.
//!
//! Knobs (environment): BENCH_SECS (3), BENCH_WARMUP_MS (400), BENCH_ROUNDS (3),
//! BENCH_WORKERS (2), BENCH_IDLE_CONNS (1000), BENCH_PP_MS (600).
//!
//! Other modes (`cargo bench --bench relay -- MODE`):
//! `--experiments` pipe size / linger variants (~1.5 min); `--pingpong VARIANT CONNS` one run,
//! for profiling; `--pingpong-rounds CONNS ROUNDS` alternating ping-pong only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portier::proxy::relay::relay;
use portier::proxy::splice::{relay_splice, relay_splice_with, SpliceConfig};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SRC_BUF: usize = 256 * 1024;
const SINK_BUF: usize = 256 * 1024;
const IDLE: Duration = Duration::from_secs(600);
const EXCHANGE: usize = 64 * 1024;
/// Splice from the first byte (no copy path), 64 KiB pipe, 1 s linger.
const PURE: SpliceConfig =
    SpliceConfig { pipe_size: None, pipe_linger: Duration::from_secs(1), copy_below: 0 };
/// Request/response size for the interactive (ping-pong) test.
const MSG: usize = 1024;
const PINGPONG: [Variant; 4] = [Variant::Relay, Variant::CopyBidi, Variant::Splice, Variant::Hybrid];
const PP_CONNS: [usize; 2] = [1, 32];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// portier::proxy::relay::relay (userspace copy loop, 16 KiB lazy buffers).
    Relay,
    /// tokio::io::copy_bidirectional (8 KiB buffers allocated up front).
    CopyBidi,
    /// relay_splice_with, pure splice (copy_below = 0), default 64 KiB pipe.
    Splice,
    /// relay_splice (default config, hybrid): copy loop for reads under 16 KiB, splice for bulk.
    Hybrid,
    /// relay_splice with F_SETPIPE_SZ = 1 MiB.
    Splice1M,
    /// relay_splice, pipe kept for the connection's life (no linger timer).
    SpliceKeep,
    /// relay_splice, pipe closed whenever the source is drained.
    SpliceLinger0,
    /// relay_splice with an 8 KiB (2-page) pipe: what an unprivileged user gets from pipe2
    /// once over fs.pipe-user-pages-soft.
    Splice8K,
    /// No relay: the proxy only holds both sockets (idle-cost baseline).
    Hold,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Relay => "relay (ours)",
            Variant::CopyBidi => "copy_bidirectional",
            Variant::Splice => "splice 64K pipe",
            Variant::Hybrid => "hybrid copy<16K+splice",
            Variant::Splice1M => "splice 1M pipe",
            Variant::SpliceKeep => "splice keep pipe",
            Variant::SpliceLinger0 => "splice linger 0",
            Variant::Splice8K => "splice 8K pipe",
            Variant::Hold => "hold only (no relay)",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Variant::Relay => "relay",
            Variant::CopyBidi => "copy",
            Variant::Splice => "splice",
            Variant::Hybrid => "hybrid",
            Variant::Splice1M => "splice1m",
            Variant::SpliceKeep => "splicekeep",
            Variant::SpliceLinger0 => "splice0",
            Variant::Splice8K => "splice8k",
            Variant::Hold => "hold",
        }
    }

    fn from_arg(s: &str) -> Option<Variant> {
        [
            Variant::Relay,
            Variant::CopyBidi,
            Variant::Splice,
            Variant::Hybrid,
            Variant::Splice1M,
            Variant::SpliceKeep,
            Variant::SpliceLinger0,
            Variant::Splice8K,
            Variant::Hold,
        ]
        .into_iter()
        .find(|v| v.arg() == s)
    }
}

const MEASURED: [Variant; 4] = [Variant::Relay, Variant::CopyBidi, Variant::Splice, Variant::Hybrid];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

/// Size of the last spawned per-connection relay future (the task's own allocation).
static FUTURE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Spawns the relay task for one proxied connection. Each variant gets its own future type,
/// so none pays for another's state. Counters are shared across connections, as they are
/// per server in portier.
fn spawn_one<F, Fut>(c: TcpStream, upstream: SocketAddr, up: Counter, down: Counter, f: F) -> JoinHandle<()>
where
    F: FnOnce(TcpStream, TcpStream, Counter, Counter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let fut = async move {
        let s = TcpStream::connect(upstream).await.unwrap();
        let _ = c.set_nodelay(true);
        let _ = s.set_nodelay(true);
        f(c, s, up, down).await;
    };
    FUTURE_BYTES.store(std::mem::size_of_val(&fut) as u64, Ordering::Relaxed);
    tokio::spawn(fut)
}

fn spawn_variant(
    v: Variant,
    c: TcpStream,
    upstream: SocketAddr,
    up: Counter,
    down: Counter,
) -> JoinHandle<()> {
    match v {
        Variant::Relay => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            relay(c, s, IDLE, &up, &down).await;
        }),
        Variant::CopyBidi => spawn_one(c, upstream, up, down, |mut c, mut s, _, _| async move {
            let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
        }),
        Variant::Splice => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            relay_splice_with(c, s, IDLE, &up, &down, PURE).await;
        }),
        Variant::Splice1M => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            let cfg = SpliceConfig { pipe_size: Some(1 << 20), ..PURE };
            relay_splice_with(c, s, IDLE, &up, &down, cfg).await;
        }),
        // The default configuration: what `relay_splice` does.
        Variant::Hybrid => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            relay_splice(c, s, IDLE, &up, &down).await;
        }),
        Variant::SpliceKeep => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            let cfg = SpliceConfig { pipe_linger: Duration::MAX, ..PURE };
            relay_splice_with(c, s, IDLE, &up, &down, cfg).await;
        }),
        Variant::SpliceLinger0 => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            let cfg = SpliceConfig { pipe_linger: Duration::ZERO, ..PURE };
            relay_splice_with(c, s, IDLE, &up, &down, cfg).await;
        }),
        Variant::Splice8K => spawn_one(c, upstream, up, down, |c, s, up, down| async move {
            let cfg = SpliceConfig { pipe_size: Some(8192), ..PURE };
            relay_splice_with(c, s, IDLE, &up, &down, cfg).await;
        }),
        // Holds both sockets until the client sends or goes away, touching no data.
        Variant::Hold => spawn_one(c, upstream, up, down, |c, s, _, _| async move {
            let _ = c.peek(&mut [0u8; 1]).await;
            drop(s);
        }),
    }
}

/// Accepts `n` connections and relays each to `upstream`; returns the relay tasks.
fn spawn_proxy(
    v: Variant,
    listener: TcpListener,
    upstream: SocketAddr,
    n: usize,
) -> JoinHandle<Vec<JoinHandle<()>>> {
    tokio::spawn(async move {
        let (up, down) = (Counter::default(), Counter::default());
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, _) = listener.accept().await.unwrap();
            relays.push(spawn_variant(v, c, upstream, up.clone(), down.clone()));
        }
        relays
    })
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed rusage struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Sample {
    gbps: f64,
    /// Process CPU seconds (source + proxy + sink) per GB delivered.
    cpu_per_gb: f64,
}

async fn throughput(v: Variant, streams: usize, warmup: Duration, window: Duration) -> Sample {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let sinks = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut readers = Vec::with_capacity(streams);
            for _ in 0..streams {
                let (mut s, _) = sink.accept().await.unwrap();
                let received = received.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; SINK_BUF];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            readers
        })
    };
    let proxy = spawn_proxy(v, front, sink_addr, streams);
    let mut sources = Vec::with_capacity(streams);
    for _ in 0..streams {
        let stop = stop.clone();
        sources.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(front_addr).await.unwrap();
            let _ = s.set_nodelay(true);
            let buf = vec![0xa5u8; SRC_BUF];
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = s.shutdown().await;
        }));
    }

    tokio::time::sleep(warmup).await;
    let (b0, c0, t0) = (received.load(Ordering::Relaxed), cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let (b1, c1, el) = (received.load(Ordering::Relaxed), cpu_seconds(), t0.elapsed());
    stop.store(true, Ordering::Relaxed);

    for s in sources {
        s.await.unwrap();
    }
    for r in proxy.await.unwrap() {
        r.await.unwrap();
    }
    for r in sinks.await.unwrap() {
        r.await.unwrap();
    }
    let bytes = (b1 - b0) as f64;
    Sample { gbps: bytes * 8.0 / el.as_secs_f64() / 1e9, cpu_per_gb: (c1 - c0) / (bytes / 1e9) }
}

/// Request/response over the proxy: each connection sends MSG bytes, waits for the echo, repeats.
/// Returns round trips per second over all connections and process CPU microseconds per trip.
async fn pingpong(v: Variant, conns: usize, warmup: Duration, window: Duration) -> (f64, f64) {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let trips = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = tokio::spawn(async move {
        let mut echoes = Vec::with_capacity(conns);
        for _ in 0..conns {
            let (mut s, _) = sink.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            echoes.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MSG];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            }));
        }
        echoes
    });
    let proxy = spawn_proxy(v, front, sink_addr, conns);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (trips, stop) = (trips.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(front_addr).await.unwrap();
            let _ = s.set_nodelay(true);
            let msg = vec![0x3cu8; MSG];
            let mut back = vec![0u8; MSG];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&msg).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
                trips.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let (n0, c0, t0) = (trips.load(Ordering::Relaxed), cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let (n1, c1, el) = (trips.load(Ordering::Relaxed), cpu_seconds(), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for r in proxy.await.unwrap() {
        r.await.unwrap();
    }
    for e in echoes.await.unwrap() {
        e.await.unwrap();
    }
    let n = (n1 - n0) as f64;
    (n / el.as_secs_f64(), (c1 - c0) * 1e6 / n)
}

/// (connections, variant, (round trips/s, CPU-us per trip) per round)
type PingPongRuns = (usize, Variant, Vec<(f64, f64)>);

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn pipe_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Child process: N idle proxied connections with one variant; prints one line of numbers.
fn idle_child(v: Variant, n: usize, workers: usize) {
    let rt = runtime(workers);
    rt.block_on(async move {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let sinks = {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut echoes = Vec::with_capacity(n);
                for _ in 0..n {
                    let (mut s, _) = sink.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::Relaxed);
                    echoes.push(tokio::spawn(async move {
                        // Echo one EXCHANGE-sized message, then wait for EOF. The buffer
                        // exists only during the echo, so idle sinks hold no memory.
                        if s.peek(&mut [0u8; 1]).await.unwrap_or(0) > 0 {
                            let mut buf = vec![0u8; EXCHANGE];
                            if s.read_exact(&mut buf).await.is_ok() {
                                let _ = s.write_all(&buf).await;
                            }
                        }
                        let _ = s.read(&mut [0u8; 1]).await;
                    }));
                }
                echoes
            })
        };
        let pipes0 = pipe_fds();
        let (rss0, fds0) = (status_kib("VmRSS:"), open_fds());

        let proxy = spawn_proxy(v, front, sink_addr, n);
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(TcpStream::connect(front_addr).await.unwrap());
        }
        while accepted.load(Ordering::Relaxed) < n as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rss1, fds1, pipes1) = (status_kib("VmRSS:"), open_fds(), pipe_fds());

        // Every connection moves EXCHANGE bytes each way, then goes quiet.
        let msg = vec![0x5au8; EXCHANGE];
        let mut back = vec![0u8; EXCHANGE];
        let t = Instant::now();
        // The hold-only baseline cannot move data; its "after traffic" columns repeat idle.
        for c in clients.iter_mut().filter(|_| v != Variant::Hold) {
            c.write_all(&msg).await.unwrap();
            c.read_exact(&mut back).await.unwrap();
        }
        let exchange_ms = t.elapsed().as_millis();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (rss2, fds2, pipes2) = (status_kib("VmRSS:"), open_fds(), pipe_fds());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (rss3, fds3, pipes3) = (status_kib("VmRSS:"), open_fds(), pipe_fds());

        let per = |a: u64, b: u64| (b as f64 - a as f64) * 1024.0 / n as f64;
        let perf = |a: usize, b: usize| (b as f64 - a as f64) / n as f64;
        println!(
            "IDLE {} {:.0} {:.0} {:.0} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {} {}",
            v.arg(),
            per(rss0, rss1),
            per(rss0, rss2),
            per(rss0, rss3),
            perf(fds0, fds1),
            perf(fds0, fds2),
            perf(fds0, fds3),
            perf(pipes0, pipes1),
            perf(pipes0, pipes2),
            perf(pipes0, pipes3),
            exchange_ms,
            FUTURE_BYTES.load(Ordering::Relaxed)
        );
        drop(clients);
        for r in proxy.await.unwrap() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        drop(sinks);
    });
}

struct IdleRow {
    v: Variant,
    bytes: [f64; 3],
    fds: [f64; 3],
    pipes: [f64; 3],
    exchange_ms: String,
    future_bytes: String,
}

fn idle_run(v: Variant, n: usize) -> IdleRow {
    let exe = std::env::current_exe().unwrap();
    let out =
        std::process::Command::new(exe).args(["--idle-child", v.arg(), &n.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("IDLE "))
        .unwrap_or_else(|| panic!("idle child failed: {}", String::from_utf8_lossy(&out.stderr)));
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| f[i].parse::<f64>().unwrap();
    IdleRow {
        v,
        bytes: [num(2), num(3), num(4)],
        fds: [num(5), num(6), num(7)],
        pipes: [num(8), num(9), num(10)],
        exchange_ms: f[11].to_string(),
        future_bytes: f[12].to_string(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let workers: usize = env_or("BENCH_WORKERS", 2);
    if let Some(i) = args.iter().position(|a| a == "--idle-child") {
        let v = Variant::from_arg(&args[i + 1]).expect("variant");
        idle_child(v, args[i + 2].parse().expect("count"), workers);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--pingpong") {
        // Single ping-pong run, for profiling: --pingpong VARIANT CONNS
        let v = Variant::from_arg(&args[i + 1]).expect("variant");
        let conns: usize = args[i + 2].parse().expect("conns");
        let rt = runtime(workers);
        let (rate, cpu) = rt.block_on(pingpong(v, conns, Duration::from_millis(200), Duration::from_secs(2)));
        println!("{} {conns} conns: {rate:.0} round trips/s, {cpu:.1} CPU-us/trip", v.name());
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--pingpong-rounds") {
        // Alternating ping-pong only: --pingpong-rounds CONNS ROUNDS
        let conns: usize = args[i + 1].parse().expect("conns");
        let rounds: usize = args[i + 2].parse().expect("rounds");
        let rt = runtime(workers);
        let mut all: Vec<PingPongRuns> = PINGPONG.iter().map(|&v| (conns, v, Vec::new())).collect();
        for _ in 0..rounds {
            for run in all.iter_mut() {
                let x = rt.block_on(pingpong(
                    run.1,
                    conns,
                    Duration::from_millis(150),
                    Duration::from_millis(600),
                ));
                run.2.push(x);
            }
        }
        for (_, v, xs) in &all {
            let rate: Vec<f64> = xs.iter().map(|x| x.0).collect();
            let cpu: Vec<f64> = xs.iter().map(|x| x.1).collect();
            let cpus: Vec<String> = cpu.iter().map(|c| format!("{c:.0}")).collect();
            println!(
                "{:<22} {conns} conns: median {:>6.0} trips/s {:>5.1} CPU-us/trip  [{}]",
                v.name(),
                median(&rate),
                median(&cpu),
                cpus.join(" ")
            );
        }
        return;
    }
    if args.iter().any(|a| a == "--experiments") {
        experiments(workers);
        return;
    }
    let secs: f64 = env_or("BENCH_SECS", 3.0);
    let warmup = Duration::from_millis(env_or("BENCH_WARMUP_MS", 400));
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let idle_n: usize = env_or("BENCH_IDLE_CONNS", 1000);
    let window = Duration::from_secs_f64(secs);
    let started = Instant::now();

    println!("relay bench: tokio multi-thread runtime, {workers} workers, loopback 127.0.0.1");
    println!(
        "  source writes {} KiB buffers, sink reads into {} KiB; warm-up {} ms excluded, window {secs} s, {rounds} rounds",
        SRC_BUF / 1024,
        SINK_BUF / 1024,
        warmup.as_millis()
    );
    println!("  host: {} cpus, load average {}", num_cpus(), loadavg());

    // Idle cost first, each variant in a fresh child process so allocator state is clean.
    println!("\n== idle cost: {idle_n} proxied connections, delta per connection vs before connecting ==");
    println!(
        "{:<22} {:>10} {:>10} {:>10} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6}",
        "variant", "RSS idle", "RSS +64K", "RSS quiet", "fd", "fd+64K", "fd qt", "pipe", "p+64K", "p qt"
    );
    let mut idle_rows = Vec::new();
    for v in [Variant::Hold, Variant::Relay, Variant::CopyBidi, Variant::Splice, Variant::Hybrid] {
        let r = idle_run(v, idle_n);
        println!(
            "{:<22} {:>8.0} B {:>8.0} B {:>8.0} B | {:>6.2} {:>6.2} {:>6.2} | {:>6.2} {:>6.2} {:>6.2}   (task future {} B, exchange {} ms)",
            r.v.name(),
            r.bytes[0],
            r.bytes[1],
            r.bytes[2],
            r.fds[0],
            r.fds[1],
            r.fds[2],
            r.pipes[0],
            r.pipes[1],
            r.pipes[2],
            r.future_bytes,
            r.exchange_ms
        );
        idle_rows.push(r);
    }
    println!("  RSS idle  = connected, no byte moved yet");
    println!("  RSS +64K  = 100 ms after every connection moved 64 KiB each way");
    println!("  RSS quiet = 1.6 s after the exchange (splice pipes linger 1 s)");
    println!("  fd/pipe columns count the whole process: source + proxy + sink sockets (hold = 4/conn)");
    println!("  kernel memory (socket and pipe buffers) is not in VmRSS");

    let rt = runtime(workers);
    let mut results: Vec<(usize, Variant, Vec<Sample>)> = Vec::new();
    for streams in [1usize, 8] {
        for v in MEASURED {
            results.push((streams, v, Vec::new()));
        }
    }
    let pp_window = Duration::from_millis(env_or("BENCH_PP_MS", 600));
    let pp_warmup = Duration::from_millis(150);
    let mut pp: Vec<PingPongRuns> = Vec::new();
    for conns in PP_CONNS {
        for v in PINGPONG {
            pp.push((conns, v, Vec::new()));
        }
    }
    println!("\n== throughput (and ping-pong, {} ms windows) ==", pp_window.as_millis());
    for round in 1..=rounds {
        for streams in [1usize, 8] {
            for v in MEASURED {
                let s = rt.block_on(throughput(v, streams, warmup, window));
                println!(
                    "  round {round} streams {streams} {:<20} {:>6.2} Gbit/s  {:>5.3} CPU-s/GB",
                    v.name(),
                    s.gbps,
                    s.cpu_per_gb
                );
                results.iter_mut().find(|r| r.0 == streams && r.1 == v).unwrap().2.push(s);
            }
        }
        for conns in PP_CONNS {
            for v in PINGPONG {
                let (rate, cpu) = rt.block_on(pingpong(v, conns, pp_warmup, pp_window));
                println!(
                    "  round {round} ping-pong {conns:>2} conns x {MSG} B {:<22} {:>8.0} round trips/s  {:>5.1} CPU-us/trip",
                    v.name(),
                    rate,
                    cpu
                );
                pp.iter_mut().find(|r| r.0 == conns && r.1 == v).unwrap().2.push((rate, cpu));
            }
        }
    }

    println!("\n== summary: median of {rounds} rounds ({secs} s each), ratio to copy_bidirectional ==");
    println!(
        "{:<8} {:<22} {:>10} {:>8} {:>12} {:>8}   all rounds (Gbit/s)",
        "streams", "variant", "Gbit/s", "ratio", "CPU-s/GB", "ratio"
    );
    for streams in [1usize, 8] {
        let med = |v: Variant| {
            let r = results.iter().find(|r| r.0 == streams && r.1 == v).unwrap();
            let g: Vec<f64> = r.2.iter().map(|s| s.gbps).collect();
            let c: Vec<f64> = r.2.iter().map(|s| s.cpu_per_gb).collect();
            (median(&g), median(&c), g)
        };
        let (base_g, base_c, _) = med(Variant::CopyBidi);
        for v in MEASURED {
            let (g, c, all) = med(v);
            let all: Vec<String> = all.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "{:<8} {:<22} {:>10.2} {:>8.2} {:>12.3} {:>8.2}   [{}]",
                streams,
                v.name(),
                g,
                g / base_g,
                c,
                c / base_c,
                all.join(", ")
            );
        }
    }
    println!(
        "\n== ping-pong: {MSG} B request/response, median round trips/s, ratio to copy_bidirectional =="
    );
    println!(
        "{:<8} {:<22} {:>10} {:>8} {:>12} {:>8} {:>12}",
        "conns", "variant", "trips/s", "ratio", "CPU-us/trip", "ratio", "mean RTT"
    );
    for conns in PP_CONNS {
        let med = |v: Variant| {
            let xs = &pp.iter().find(|r| r.0 == conns && r.1 == v).unwrap().2;
            let rate: Vec<f64> = xs.iter().map(|x| x.0).collect();
            let cpu: Vec<f64> = xs.iter().map(|x| x.1).collect();
            (median(&rate), median(&cpu))
        };
        let (base, base_cpu) = med(Variant::CopyBidi);
        for v in PINGPONG {
            let (m, c) = med(v);
            println!(
                "{:<8} {:<22} {:>10.0} {:>8.2} {:>12.1} {:>8.2} {:>9.1} us",
                conns,
                v.name(),
                m,
                m / base,
                c,
                c / base_cpu,
                conns as f64 * 1e6 / m
            );
        }
    }
    println!("\nidle cost summary (bytes of RSS per proxied connection, above the hold-only baseline):");
    let base = &idle_rows[0];
    for r in &idle_rows[1..] {
        println!(
            "  {:<22} idle {:>7.0} B   after 64 KiB {:>7.0} B   quiet {:>7.0} B   extra fds after traffic {:.2} (quiet {:.2})",
            r.v.name(),
            r.bytes[0] - base.bytes[0],
            r.bytes[1] - base.bytes[1],
            r.bytes[2] - base.bytes[2],
            r.fds[1] - base.fds[1],
            r.fds[2] - base.fds[2]
        );
    }
    println!("\ntotal bench time {:.1} s", started.elapsed().as_secs_f64());
}

/// `cargo bench --bench relay -- --experiments`: what the pipe linger policy and a degraded
/// (2-page) pipe cost, against our copy loop. Shorter windows than the main run (~1.5 min).
fn experiments(workers: usize) {
    let rt = runtime(workers);
    let variants = [
        Variant::Relay,
        Variant::Splice,
        Variant::Hybrid,
        Variant::Splice1M,
        Variant::SpliceKeep,
        Variant::SpliceLinger0,
        Variant::Splice8K,
    ];
    let (warm, win) = (Duration::from_millis(150), Duration::from_millis(600));
    let mut pp: Vec<PingPongRuns> = Vec::new();
    let mut tp: Vec<(usize, Variant, Vec<f64>)> = Vec::new();
    for streams in [1usize, 8] {
        for v in variants {
            tp.push((streams, v, Vec::new()));
        }
    }
    for conns in PP_CONNS {
        for v in variants {
            pp.push((conns, v, Vec::new()));
        }
    }
    for _ in 0..3 {
        for streams in [1usize, 8] {
            for v in variants {
                let g = rt
                    .block_on(throughput(v, streams, Duration::from_millis(300), Duration::from_millis(800)))
                    .gbps;
                tp.iter_mut().find(|r| r.0 == streams && r.1 == v).unwrap().2.push(g);
            }
        }
        for conns in PP_CONNS {
            for v in variants {
                let x = rt.block_on(pingpong(v, conns, warm, win));
                pp.iter_mut().find(|r| r.0 == conns && r.1 == v).unwrap().2.push(x);
            }
        }
    }
    println!(
        "experiments: medians of 3 rounds (0.8 s / 0.6 s windows), {workers} workers, load {}",
        loadavg()
    );
    for (streams, v, g) in &tp {
        println!("  {streams} stream(s)      {:<20} {:>8.2} Gbit/s", v.name(), median(g));
    }
    for (conns, v, x) in &pp {
        let rate: Vec<f64> = x.iter().map(|x| x.0).collect();
        let cpu: Vec<f64> = x.iter().map(|x| x.1).collect();
        println!(
            "  ping-pong {conns:>2} conns {:<22} {:>8.0} round trips/s {:>6.1} CPU-us/trip",
            v.name(),
            median(&rate),
            median(&cpu)
        );
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
