//! Lab tests of the L7 (mode "http"/"https") proxy with a programmable HTTP backend
//! (`common::httpd`): streaming without buffering, Outlook Anywhere's paired long requests,
//! slowloris and keep-alive timeouts, long-polls, error answers, hostile input, upgrades and
//! the access log. Every service is on VIP 198.19.0.10 with transparent source unless said
//! otherwise; timeouts are scaled down from their defaults (header_timeout 10s, idle_timeout
//! 2m for the http modes, response_timeout 1h), each test says which.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use common::httpd::{pattern_check, pattern_fill, Checksum, HttpBackend};
use common::{c4, exe, metric, vip4, ADMIN};
use portier::lab::{Lab, LabSpec, PortierProcess};

/// The 512 MiB test takes this for writing, every other test for reading: its CPU load on
/// a small machine must not skew the others' timings.
static HEAVY: RwLock<()> = RwLock::new(());

fn light() -> std::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().unwrap_or_else(|p| p.into_inner())
}

/// Field order is drop order: portier, then the backends, then the namespaces.
struct Lab7 {
    portier: PortierProcess,
    backends: Vec<HttpBackend>,
    lab: Lab,
}

/// A lab whose backends b0, b1, ... (198.18.2.11, .12, ...) run `HttpBackend`s named cas01,
/// cas02, ... on port 80, and portier with `config`.
fn start(spec: LabSpec, config: &str) -> Lab7 {
    let lab = Lab::build(&spec).expect("lab build (needs root, iproute2, nftables)");
    let backends = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| HttpBackend::start(ns, &format!("cas0{}", i + 1), 80).expect("http backend"))
        .collect();
    let portier = PortierProcess::start(&lab.balancer, exe(), config, ADMIN).expect("portier start");
    Lab7 { portier, backends, lab }
}

/// Both backends on port 80.
const WEB_POOL: &str =
    "[pools.web]\nservers = [{ address = \"198.18.2.11:80\" }, { address = \"198.18.2.12:80\" }]\n";

fn http_service(name: &str, port: u16, pool: &str, extra: &str) -> String {
    format!(
        "[services.{name}]\nvip = \"198.19.0.10\"\nports = [{port}]\nmode = \"http\"\npool = \"{pool}\"\n{extra}\n"
    )
}

impl Lab7 {
    fn client(&self, src: IpAddr, port: u16) -> Client {
        let s = portier::lab::connect(&self.lab.client, Some(src), vip4(port), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {port}: {e}\n{}", self.portier.log_tail()));
        Client::new(s)
    }

    fn metrics(&self) -> String {
        self.portier.get("/metrics").expect("GET /metrics")
    }

    /// Polls /metrics until `f` holds (or panics after `limit`, showing the metrics).
    fn wait_metrics(&self, limit: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let m = self.metrics();
            if f(&m) {
                return m;
            }
            if t0.elapsed() > limit {
                panic!("{what}: not reached within {limit:?}\n{m}\nlog:\n{}", self.portier.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The access-log lines (the message part, from `service=` or `{"service"`).
    fn access_lines(&self) -> Vec<String> {
        self.portier
            .log()
            .lines()
            .filter(|l| l.contains("portier::access"))
            .filter_map(|l| {
                let i = l.find("{\"service\"").or_else(|| l.find("service="))?;
                Some(l[i..].to_string())
            })
            .collect()
    }

    fn assert_no_panic(&self) {
        let log = self.portier.log();
        assert!(!log.contains("panicked"), "portier panicked:\n{log}");
    }
}

/// A raw HTTP/1.1 client over one connection: exact control of what is sent and when.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    /// Decoded bytes of a chunked body not consumed yet.
    pending: Vec<u8>,
    chunked_done: bool,
}

#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn content_length(&self) -> Option<u64> {
        self.get("content-length").map(|v| v.parse().expect("content-length"))
    }
    fn chunked(&self) -> bool {
        self.get("transfer-encoding").map(|v| v.eq_ignore_ascii_case("chunked")).unwrap_or(false)
    }
}

#[derive(Debug)]
struct Resp {
    head: Head,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn new(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let w = s.try_clone().unwrap();
        Client { r: BufReader::with_capacity(256 * 1024, s), w, pending: Vec::new(), chunked_done: false }
    }

    fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).expect("send");
    }

    /// Reads a response head; Err on EOF or a read error before a complete head.
    fn try_head(&mut self) -> std::io::Result<Head> {
        let mut line = String::new();
        let mut status = None;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            match status {
                None => {
                    let code = l.split(' ').nth(1).and_then(|c| c.parse().ok());
                    assert!(l.starts_with("HTTP/1.1 ") && code.is_some(), "bad status line {l:?}");
                    status = code;
                    continue;
                }
                Some(status) if l.is_empty() => {
                    self.pending.clear();
                    self.chunked_done = false;
                    return Ok(Head { status, headers });
                }
                Some(_) => {}
            }
            {
                let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}"));
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }

    fn head(&mut self) -> Head {
        self.try_head().expect("response head")
    }

    /// The next decoded chunk of a chunked body; None at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.chunked_done {
            return None;
        }
        let mut line = String::new();
        self.r.read_line(&mut line).expect("chunk size");
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        let mut data = vec![0u8; size];
        self.r.read_exact(&mut data).expect("chunk data");
        let mut crlf = [0u8; 2];
        self.r.read_exact(&mut crlf).expect("chunk end");
        if size == 0 {
            self.chunked_done = true;
            return None;
        }
        Some(data)
    }

    /// The next line of a chunked body (without its newline).
    fn body_line(&mut self) -> String {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            let c = self.chunk().expect("body ended before a full line");
            self.pending.extend_from_slice(&c);
        }
    }

    fn body(&mut self, head: &Head) -> Vec<u8> {
        if let Some(n) = head.content_length() {
            let mut b = vec![0u8; n as usize];
            self.r.read_exact(&mut b).expect("body");
            b
        } else if head.chunked() {
            let mut b = std::mem::take(&mut self.pending);
            while let Some(c) = self.chunk() {
                b.extend_from_slice(&c);
            }
            b
        } else if head.status == 101 || head.status == 204 || head.status == 304 {
            Vec::new()
        } else {
            let mut b = Vec::new();
            self.r.read_to_end(&mut b).expect("body to close");
            b
        }
    }

    fn response(&mut self) -> Resp {
        let head = self.head();
        let body = self.body(&head);
        Resp { head, body }
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: 198.19.0.10\r\n\r\n").as_bytes());
        self.response()
    }

    /// Waits for the server to close: Ok(elapsed) on EOF or reset, Err after `limit`.
    fn wait_closed(&mut self, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let left = limit.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
            self.r.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.r.read(&mut buf) {
                Ok(0) => return Ok(t0.elapsed()),
                Ok(n) => {
                    if t0.elapsed() > limit {
                        return Err(format!("still receiving after {limit:?}"));
                    }
                    let _ = n;
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Err(format!("still open after {:?}", t0.elapsed()))
                }
                Err(_) => return Ok(t0.elapsed()),
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("portier status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Samples the RSS of `pid` every 50 ms until stopped; returns the peak.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid))
        });
        RssSampler { stop, thread }
    }
    fn peak(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn half_gib_upload_and_download_stream_through_with_flat_memory() {
    let _heavy = HEAVY.write().unwrap_or_else(|p| p.into_inner());
    let h = start(LabSpec::default(), &format!("{WEB_POOL}{}", http_service("web", 80, "web", "")));
    let mut c = h.client(c4(0), 80);
    let r = c.get("/hello");
    assert_eq!(r.head.status, 200, "{r:?}");
    let pid = h.portier.pid().expect("portier pid");
    let base = rss_kib(pid);
    let sampler = RssSampler::start(pid);
    const N: u64 = 512 << 20;
    let t0 = Instant::now();

    // Upload: 512 MiB announced with Content-Length, generated while it is sent.
    c.send(format!("POST /upload HTTP/1.1\r\nHost: 198.19.0.10\r\nContent-Length: {N}\r\n\r\n").as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    let (mut off, mut sum) = (0u64, Checksum::default());
    while off < N {
        let n = (N - off).min(buf.len() as u64) as usize;
        pattern_fill(off, &mut buf[..n]);
        sum.update(&buf[..n]);
        c.send(&buf[..n]);
        off += n as u64;
    }
    let r = c.response();
    let up = t0.elapsed();
    assert_eq!(r.head.status, 200, "{r:?}");
    assert_eq!(r.text(), format!("bytes={N} hash={}\n", sum.hex()), "the backend got other bytes");
    let rss_after_upload = rss_kib(pid);

    // Download on the same keep-alive connection, checked against the pattern as it arrives.
    let t1 = Instant::now();
    c.send(format!("GET /download?bytes={N} HTTP/1.1\r\nHost: 198.19.0.10\r\n\r\n").as_bytes());
    let head = c.head();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(N), "{head:?}");
    let mut off = 0u64;
    while off < N {
        let want = (N - off).min(buf.len() as u64) as usize;
        let n = c.r.read(&mut buf[..want]).expect("download read");
        assert!(n > 0, "download ended at {off} of {N}");
        assert!(pattern_check(off, &buf[..n]), "download differs from the pattern at offset {off}");
        off += n as u64;
    }
    let down = t1.elapsed();
    let peak = sampler.peak();
    let after = rss_kib(pid);
    let msg = format!(
        "portier VmRSS: before {base} KiB, after upload {rss_after_upload} KiB, peak {peak} KiB, after {after} KiB \
         (growth {} KiB); upload {up:?}, download {down:?}",
        peak.saturating_sub(base)
    );
    println!("{msg}");
    eprintln!("{msg}");
    assert!(peak.saturating_sub(base) < 32 * 1024, "portier buffered the bodies: {msg}");

    // Both exchanges logged with their sizes.
    let wait = Instant::now();
    loop {
        let lines = h.access_lines();
        let up_ok = lines.iter().any(|l| l.contains("path=/upload") && l.contains(&format!("bytes_in={N} ")));
        let down_ok =
            lines.iter().any(|l| l.contains("path=/download") && l.contains(&format!("bytes_out={N} ")));
        if up_ok && down_ok {
            break;
        }
        assert!(wait.elapsed() < Duration::from_secs(5), "access log lacks the transfers:\n{lines:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = h.metrics();
    assert!(metric(&m, "portier_backend_bytes_total", &["direction=\"to_server\""]) >= N as f64, "{m}");
    assert!(metric(&m, "portier_backend_bytes_total", &["direction=\"to_client\""]) >= N as f64, "{m}");
    h.assert_no_panic();
}

// 2 ------------------------------------------------------------------------------------------

/// Opens RPC_IN_DATA and RPC_OUT_DATA from `src` at the same moment (each announcing 1 GiB
/// and sending a few bytes), checks both stream, and returns the backend of each plus the
/// open connections.
fn rpc_pair(h: &Lab7, src: IpAddr) -> (String, String, Vec<Client>) {
    let barrier = Barrier::new(2);
    let (mut cin, mut cout) = (h.client(src, 80), h.client(src, 80));
    let (rin, rout) = std::thread::scope(|s| {
        let tin = s.spawn(|| {
            barrier.wait();
            cin.send(
                b"RPC_IN_DATA /rpc/rpcproxy.dll?cas01.example.test:6001 HTTP/1.1\r\nHost: mail.example.test\r\n\
                  Content-Length: 1073741824\r\n\r\n",
            );
            cin.send(&[0x05; 100]);
            let head = cin.head();
            assert_eq!(head.status, 200, "RPC_IN_DATA {head:?}");
            let hello = cin.body_line();
            let got = cin.body_line();
            assert!(got.starts_with("got="), "{got}");
            // More client-to-server bytes keep flowing on the same request.
            cin.send(&[0x06; 50]);
            let t0 = Instant::now();
            loop {
                let l = cin.body_line();
                if l == "got=150" {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "no got=150, last {l}");
            }
            hello
        });
        let tout = s.spawn(|| {
            barrier.wait();
            cout.send(
                b"RPC_OUT_DATA /rpc/rpcproxy.dll?cas01.example.test:6001 HTTP/1.1\r\nHost: mail.example.test\r\n\
                  Content-Length: 1073741824\r\n\r\n",
            );
            cout.send(&[0x05; 76]);
            let head = cout.head();
            assert_eq!(head.status, 200, "RPC_OUT_DATA {head:?}");
            let hello = cout.body_line();
            for i in 0..3 {
                assert_eq!(cout.body_line(), format!("tick={i}"));
            }
            hello
        });
        (tin.join().unwrap(), tout.join().unwrap())
    });
    let parse = |l: &str| -> (String, String) {
        let mut f = l.split(' ');
        let b = f.next().and_then(|x| x.strip_prefix("backend=")).unwrap_or_else(|| panic!("{l}"));
        let p = f.next().and_then(|x| x.strip_prefix("peer=")).unwrap_or_else(|| panic!("{l}"));
        (b.to_string(), p.to_string())
    };
    let ((bin, pin), (bout, pout)) = (parse(&rin), parse(&rout));
    assert_eq!(pin, src.to_string(), "transparent: the backend sees the client");
    assert_eq!(pout, src.to_string());
    (bin, bout, vec![cin, cout])
}

#[test]
fn outlook_anywhere_in_and_out_channels_of_one_client_reach_one_server() {
    let _l = light();
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "sticky = { by = \"client-ip\", expire = \"30m\" }")
    );
    let h = start(LabSpec { backends: 2, extra_clients: 5 }, &cfg);
    let mut used = HashSet::new();
    let mut held = Vec::new();
    for i in 0..6 {
        let (bin, bout, conns) = rpc_pair(&h, c4(i));
        assert_eq!(bin, bout, "client {} got its RPC_IN_DATA on {bin} and RPC_OUT_DATA on {bout}", c4(i));
        used.insert(bin);
        held.extend(conns);
    }
    assert_eq!(used.len(), 2, "six clients must spread over both servers: {used:?}");
    let m = h.metrics();
    assert_eq!(metric(&m, "portier_backend_active_connections", &[]), 12.0, "{m}");

    // Clients going away mid-body: the server connections close and nothing stays counted.
    for c in &held {
        let _ = c.w.shutdown(Shutdown::Both);
    }
    drop(held);
    h.wait_metrics(Duration::from_secs(5), "active connections back to 0", |m| {
        metric(m, "portier_backend_active_connections", &[]) == 0.0
    });
    let t0 = Instant::now();
    while h.backends.iter().map(|b| b.open_connections()).sum::<usize>() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "server connections still open after the clients left: {:?}",
            h.backends.iter().map(|b| b.open_connections()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    h.assert_no_panic();
}

// 3 ------------------------------------------------------------------------------------------

/// Sends `head` one byte per `every` on `c`; returns when the connection was closed, with
/// the time since the first byte and how many bytes had been sent.
fn dribble_on(c: Client, head: &'static [u8], every: Duration, limit: Duration) -> (Duration, usize) {
    let mut w = c.w.try_clone().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let writer = std::thread::spawn(move || {
        for b in head {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) || w.write_all(&[*b]).is_err() {
                return;
            }
            sent2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(every);
        }
    });
    let mut c = c;
    let r = c.wait_closed(limit);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let n = sent.load(std::sync::atomic::Ordering::Relaxed);
    match r {
        Ok(t) => (t, n),
        Err(e) => panic!("slowloris connection not cut: {e} ({n} of {} bytes sent)", head.len()),
    }
}

/// Sends `head` one byte per second on a new connection (see `dribble_on`).
fn dribble(h: &Lab7, head: &'static [u8], limit: Duration) -> (Duration, usize) {
    dribble_on(h.client(c4(0), 80), head, Duration::from_secs(1), limit)
}

#[test]
fn slowloris_is_cut_at_the_header_timeout() {
    let _l = light();
    // header_timeout: default 10s, 2s here.
    let cfg = format!("{WEB_POOL}{}", http_service("web", 80, "web", "header_timeout = \"2s\""));
    let h = start(LabSpec::default(), &cfg);
    const HEAD: &[u8] =
        b"GET /hello HTTP/1.1\r\nHost: 198.19.0.10\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (t, n) = dribble(&h, HEAD, Duration::from_secs(8));
    assert!(t >= Duration::from_millis(1500) && t < Duration::from_secs(4), "cut after {t:?}");
    assert!(n < HEAD.len() / 4, "{n} of {} bytes were sent", HEAD.len());
    h.wait_metrics(Duration::from_secs(3), "slowloris counted", |m| {
        metric(m, "portier_http_connection_errors_total", &["service=\"web\""]) >= 1.0
    });
    // portier still serves.
    assert_eq!(h.client(c4(0), 80).get("/hello").head.status, 200);
    h.assert_no_panic();
}

#[test]
fn slowloris_on_a_kept_alive_connection_is_cut_at_the_header_timeout_too() {
    let _l = light();
    // header_timeout 1s and idle_timeout 8s (defaults 10s and 2m: the idle timeout is the
    // longer one). The second head trickles in after a first request; it must be cut at the
    // header timeout, not when the idle timeout would have fired.
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "header_timeout = \"1s\"\nidle_timeout = \"8s\"")
    );
    let h = start(LabSpec::default(), &cfg);
    const HEAD: &[u8] =
        b"GET /hello HTTP/1.1\r\nHost: 198.19.0.10\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut c = h.client(c4(0), 80);
    assert_eq!(c.get("/hello").head.status, 200);
    // Past the first head's deadline (1 s after the accept), so only the next head's own
    // deadline can cut it.
    std::thread::sleep(Duration::from_millis(1500));
    let (t, n) = dribble_on(c, HEAD, Duration::from_millis(300), Duration::from_secs(12));
    assert!(
        t >= Duration::from_millis(700) && t < Duration::from_millis(2500),
        "second head cut after {t:?} ({n} bytes)"
    );
    h.wait_metrics(Duration::from_secs(3), "slowloris counted", |m| {
        metric(m, "portier_http_connection_errors_total", &["service=\"web\""]) >= 1.0
    });
    h.assert_no_panic();
}

/// CPU time (user + system) portier has used.
fn cpu_time(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("portier stat");
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &s[s.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn a_silent_connection_with_idle_shorter_than_header_timeout_costs_no_cpu() {
    let _l = light();
    // idle_timeout 1s, header_timeout 4s (defaults 2m and 10s): a legal configuration where
    // the idle timeout is the shorter one. A connection that sends nothing must simply wait
    // for the header timeout, not spin.
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "idle_timeout = \"1s\"\nheader_timeout = \"4s\"")
    );
    let h = start(LabSpec::default(), &cfg);
    let pid = h.portier.pid().unwrap();
    let mut c = h.client(c4(0), 80);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    let cpu0 = cpu_time(pid);
    std::thread::sleep(Duration::from_millis(2000));
    let used = cpu_time(pid) - cpu0;
    assert!(
        used < Duration::from_millis(400),
        "portier used {used:?} of CPU in 2 s for one silent connection"
    );
    let t = c.wait_closed(Duration::from_secs(5)).map(|t| t + t0.elapsed());
    let t = t.unwrap_or_else(|e| panic!("silent connection: {e}"));
    assert!(t < Duration::from_secs(6), "silent connection closed after {t:?}");
    assert_eq!(h.client(c4(0), 80).get("/hello").head.status, 200);
    h.assert_no_panic();
}

/// A minimal HTTP/2 (h2c, prior knowledge) client speaking raw frames.
struct H2(Client);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS (END_STREAM | END_HEADERS) for `GET path` with literal, unindexed HPACK fields.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 11]);
    block.extend_from_slice(b"198.19.0.10");
    h2_frame(0x1, 0x5, stream, &block)
}

impl H2 {
    /// The body of the response on `stream` (SETTINGS acknowledged on the way).
    fn response(&mut self, stream: u32) -> String {
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; 9];
            self.0.r.read_exact(&mut head).expect("h2 frame");
            let n = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0u8; n];
            self.0.r.read_exact(&mut payload).expect("h2 payload");
            match kind {
                0x4 if flags & 1 == 0 => self.0.send(&h2_frame(0x4, 0x1, 0, &[])),
                0x7 => panic!("GOAWAY: {payload:?}"),
                0x0 if id == stream => {
                    body.extend_from_slice(&payload);
                    if flags & 1 == 1 {
                        return String::from_utf8_lossy(&body).into_owned();
                    }
                }
                0x1 if id == stream && flags & 1 == 1 => return String::new(),
                _ => {}
            }
        }
    }
}

#[test]
fn an_h2_connection_must_send_its_first_request_within_the_header_timeout() {
    let _l = light();
    // header_timeout 2s (default 10s), idle_timeout 30s (default 2m).
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "header_timeout = \"2s\"\nidle_timeout = \"30s\"")
    );
    let h = start(LabSpec::default(), &cfg);

    // A well-behaved h2c client: requests answered, and a pause longer than the header
    // timeout between two requests is fine (only the idle timeout applies between requests).
    let mut ok = H2(h.client(c4(0), 80));
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_get(1, "/hello"));
    ok.0.send(&hello);
    let body = ok.response(1);
    assert!(body.starts_with("backend=cas0"), "{body:?}");
    std::thread::sleep(Duration::from_millis(3000));
    ok.0.send(&h2_get(3, "/hello"));
    let body = ok.response(3);
    assert!(body.starts_with("backend=cas0"), "second h2 request after a pause: {body:?}");

    // Slowloris over h2: the preface at once, then the first HEADERS frame byte by byte.
    let slow = h.client(c4(0), 80);
    let mut first = H2_PREFACE.to_vec();
    first.extend(h2_frame(0x4, 0, 0, &[]));
    let mut s2 = slow.w.try_clone().unwrap();
    s2.write_all(&first).unwrap();
    let frame: &'static [u8] = h2_get(5, "/hello").leak();
    let (t, n) = dribble_on(slow, frame, Duration::from_millis(300), Duration::from_secs(10));
    assert!(
        t < Duration::from_millis(3500),
        "h2 connection without a complete request lived {t:?} ({n} bytes)"
    );
    h.wait_metrics(Duration::from_secs(3), "h2 slowloris counted", |m| {
        metric(m, "portier_http_connection_errors_total", &["service=\"web\""]) >= 1.0
    });
    h.assert_no_panic();
}

#[test]
fn an_h2_connection_whose_preface_came_in_pieces_is_still_treated_as_h2() {
    let _l = light();
    // header_timeout 2s (default 10s), idle_timeout 30s (default 2m). The client's first
    // segment holds only part of the preface; once requests flow over HTTP/2, PINGs between
    // them are not the start of a request head to be timed.
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "header_timeout = \"2s\"\nidle_timeout = \"30s\"")
    );
    let h = start(LabSpec::default(), &cfg);
    let mut c = H2(h.client(c4(0), 80));
    c.0.send(&H2_PREFACE[..8]);
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = H2_PREFACE[8..].to_vec();
    rest.extend(h2_frame(0x4, 0, 0, &[]));
    rest.extend(h2_get(1, "/hello"));
    c.0.send(&rest);
    assert!(c.response(1).starts_with("backend=cas0"));
    for i in 0..10u64 {
        std::thread::sleep(Duration::from_millis(300));
        if c.0.w.write_all(&h2_frame(0x6, 0, 0, &i.to_be_bytes())).is_err() {
            break;
        }
    }
    c.0.send(&h2_get(3, "/hello"));
    let body = c.response(3);
    assert!(body.starts_with("backend=cas0"), "{body:?}");
    h.assert_no_panic();
}

// 4 ------------------------------------------------------------------------------------------

#[test]
fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let _l = light();
    // idle_timeout: default 2m for http, 1s here.
    let cfg = format!("{WEB_POOL}{}", http_service("web", 80, "web", "idle_timeout = \"1s\""));
    let h = start(LabSpec::default(), &cfg);
    let mut c = h.client(c4(0), 80);
    // Two requests: the connection is kept alive between them.
    assert_eq!(c.get("/hello").head.status, 200);
    assert_eq!(c.get("/hello").head.status, 200);
    let t = c.wait_closed(Duration::from_secs(4)).unwrap_or_else(|e| panic!("idle connection: {e}"));
    assert!(t >= Duration::from_millis(800) && t < Duration::from_millis(2000), "closed after {t:?}");
    h.assert_no_panic();
}

// 5 ------------------------------------------------------------------------------------------

#[test]
fn a_long_poll_outlives_the_idle_timeout_within_its_response_timeout() {
    let _l = light();
    // idle_timeout 1s (default 2m), response_timeout 10s (default 1h): a 3 s long-poll.
    let cfg = format!(
        "{WEB_POOL}{}",
        http_service("web", 80, "web", "idle_timeout = \"1s\"\nresponse_timeout = \"10s\"")
    );
    let h = start(LabSpec::default(), &cfg);
    let mut c = h.client(c4(0), 80);
    let t0 = Instant::now();
    let r = c.get("/slow?ms=3000");
    assert_eq!(r.head.status, 200, "{r:?}");
    assert!(r.text().contains("slept=3000"), "{}", r.text());
    assert!(t0.elapsed() >= Duration::from_millis(2900));
    // The connection is still usable right after.
    assert_eq!(c.get("/hello").head.status, 200);
    h.assert_no_panic();
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_lets_requests_in_flight_finish() {
    let _l = light();
    // drain_timeout 10s (default 30s); idle_timeout stays at its 2m default, so only the stop
    // can close the idle keep-alive connection before the drain limit.
    let cfg = format!("[global]\ndrain_timeout = \"10s\"\n{WEB_POOL}{}", http_service("web", 80, "web", ""));
    let mut h = start(LabSpec::default(), &cfg);
    let mut idle = h.client(c4(0), 80);
    assert_eq!(idle.get("/hello").head.status, 200);
    let mut busy = h.client(c4(0), 80);
    let poll = std::thread::spawn(move || {
        let r = busy.get("/slow?ms=2000");
        (r.head.status, r.text())
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let status = h.portier.stop(Duration::from_secs(20)).expect("portier stop");
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    let (code, text) = poll.join().unwrap();
    assert_eq!(code, 200, "the request in flight must finish during the drain: {text}");
    assert!(
        took < Duration::from_secs(5),
        "stop took {took:?}: the drain waited for an idle keep-alive connection"
    );
    assert!(idle.wait_closed(Duration::from_secs(1)).is_ok(), "idle keep-alive connection left open");
}

// 6 ------------------------------------------------------------------------------------------

#[test]
fn timeouts_and_dead_servers_give_504_503_502_and_connect_failures_retry() {
    let _l = light();
    // Nothing listens on port 81 of the backends: connections there are refused.
    let cfg = format!(
        "{WEB_POOL}\
         [pools.dead]\nservers = [{{ address = \"198.18.2.11:81\" }}, {{ address = \"198.18.2.12:81\" }}]\n\
         check = {{ type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", rise = 1, fall = 1 }}\n\
         [pools.refused]\nservers = [{{ address = \"198.18.2.11:81\" }}, {{ address = \"198.18.2.12:81\" }}]\n\
         [pools.mixed]\nservers = [{{ address = \"198.18.2.11:81\" }}, {{ address = \"198.18.2.12:80\" }}]\n\
         {}{}{}{}",
        // response_timeout: default 1h, 1s here.
        http_service("slow", 80, "web", "response_timeout = \"1s\""),
        http_service("down", 81, "dead", ""),
        http_service("refused", 82, "refused", ""),
        http_service("retry", 83, "mixed", ""),
    );
    let h = start(LabSpec::default(), &cfg);

    // 504: the server answers after 3 s, the response timeout is 1 s.
    let mut c = h.client(c4(0), 80);
    let t0 = Instant::now();
    let r = c.get("/slow?ms=3000");
    assert_eq!(r.head.status, 504, "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(2500), "504 after {:?}", t0.elapsed());
    assert_eq!(r.text(), "504 gateway timeout: the server of pool web did not answer in time\n");
    assert!(r.head.get("content-type").unwrap_or("").starts_with("text/plain"), "{r:?}");
    // portier is the origin of this answer: it dates it (RFC 9110 6.6.1).
    assert!(r.head.get("date").is_some_and(|d| d.ends_with(" GMT")), "{r:?}");

    // 503: every server of the pool is down by its health check.
    h.wait_metrics(Duration::from_secs(5), "pool dead down", |m| {
        metric(m, "portier_backend_up", &["pool=\"dead\""]) == 0.0
    });
    // Twice on one keep-alive connection, the second with a body: each request is answered
    // once and leaves the connection ready for the next (no stale answer, no replay).
    let mut down = h.client(c4(0), 81);
    let r = down.get("/hello");
    assert_eq!(r.head.status, 503, "{r:?}");
    assert_eq!(r.text(), "503 service unavailable: no server of pool dead is up\n");
    down.send(b"POST /upload HTTP/1.1\r\nHost: 198.19.0.10\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(down.response().head.status, 503);

    // 502: no check, both servers refuse.
    let mut refused = h.client(c4(0), 82);
    let r = refused.get("/hello");
    assert_eq!(r.head.status, 502, "{r:?}");
    // A plain text for the client; why each server failed is in the log only.
    assert_eq!(r.text(), "502 bad gateway: no server of pool refused accepted the connection\n");
    assert_eq!(refused.get("/hello").head.status, 502);
    let log = h.portier.log();
    assert!(
        log.lines()
            // One line a second for the service: for whichever server failed first.
            .any(|l| l.contains("upstream failed") && l.contains(":81") && l.contains("refused")),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let m = h.metrics();
    let generated = |svc: &str, code: &str| {
        metric(
            &m,
            "portier_http_responses_generated_total",
            &[&format!("service=\"{svc}\""), &format!("status=\"{code}\"")],
        )
    };
    assert_eq!((generated("down", "503"), generated("refused", "502")), (2.0, 2.0), "{m}");

    // One server refuses, the other answers: every request succeeds.
    for _ in 0..4 {
        let r = h.client(c4(0), 83).get("/hello");
        assert_eq!(r.head.status, 200, "{r:?}");
        assert!(r.text().starts_with("backend=cas02 "), "{}", r.text());
    }
    let m = h.metrics();
    assert!(
        metric(&m, "portier_backend_connect_errors_total", &["pool=\"mixed\"", "server=\"198.18.2.11:81\""])
            >= 1.0,
        "{m}"
    );
    h.assert_no_panic();
}

#[test]
fn a_slow_upload_longer_than_the_response_timeout_is_not_cut() {
    let _l = light();
    // response_timeout 2s (default 1h): "the server's response head must arrive within this
    // after the request". An upload that takes 4 s while the server reads it steadily (as an
    // RPC_IN_DATA channel does for hours) is not a server failing to answer.
    let cfg = format!("{WEB_POOL}{}", http_service("web", 80, "web", "response_timeout = \"2s\""));
    let h = start(LabSpec::default(), &cfg);
    let mut c = h.client(c4(0), 80);
    c.send(b"POST /upload HTTP/1.1\r\nHost: 198.19.0.10\r\nContent-Length: 4000\r\n\r\n");
    let mut sum = Checksum::default();
    for i in 0..4u8 {
        std::thread::sleep(Duration::from_secs(1));
        let chunk = [b'a' + i; 1000];
        sum.update(&chunk);
        if c.w.write_all(&chunk).is_err() {
            break;
        }
    }
    let r = c.response();
    assert_eq!(r.head.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("bytes=4000 hash={}\n", sum.hex()));
}

// 7 ------------------------------------------------------------------------------------------

fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect()
}

/// Sends `data` (ignoring write errors: the server may close first) and returns what came
/// back before the close, which must come within 5 s.
fn send_bad(h: &Lab7, port: u16, data: &[u8]) -> Vec<u8> {
    let mut c = h.client(c4(0), port);
    let _ = c.w.write_all(data);
    let _ = c.w.shutdown(Shutdown::Write);
    c.r.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    loop {
        match c.r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("connection not closed after {:?} of garbage; got {out:?}", t0.elapsed())
            }
            Err(_) => break,
        }
    }
    out
}

fn write_cert(dir: &std::path::Path) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["mail.example.test".to_string()]).expect("rcgen");
    let (cert, key) = (dir.join("mail.pem"), dir.join("mail.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

fn curl_https(h: &Lab7, path: &str) -> (bool, String) {
    let out = h
        .lab
        .client
        .command("curl")
        .args(["-sk", "--max-time", "5", "--resolve", "mail.example.test:443:198.19.0.10"])
        .arg(format!("https://mail.example.test{path}"))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn hostile_input_gets_a_clean_error_or_close_and_is_counted() {
    let _l = light();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let cfg = format!(
        "{WEB_POOL}{}[services.secure]\nvip = \"198.19.0.10\"\nports = [443]\nmode = \"https\"\npool = \"web\"\n\
         certificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n",
        http_service("web", 80, "web", "")
    );
    let h = start(LabSpec::default(), &cfg);
    let errors = |m: &str| metric(m, "portier_http_connection_errors_total", &["service=\"web\""]);
    let ok = |h: &Lab7| {
        let r = h.client(c4(0), 80).get("/hello");
        assert_eq!(r.head.status, 200, "portier no longer serves: {r:?}\n{}", h.portier.log_tail());
    };
    ok(&h);

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("random bytes", random_bytes(4096, 0x1234_5678_9abc_def1), &["HTTP/1.1 400"]),
        ("bad request line", b"GARBAGE\x01 / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("bad header", b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        (
            "headers over 64 KiB",
            {
                let mut v = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
                v.extend(std::iter::repeat_n(b'a', 70 * 1024));
                v.extend_from_slice(b"\r\n\r\n");
                v
            },
            &["HTTP/1.1 431", "HTTP/1.1 400"],
        ),
    ];
    for (i, (what, data, answers)) in cases.iter().enumerate() {
        let out = send_bad(&h, 80, data);
        let text = String::from_utf8_lossy(&out);
        eprintln!("{what}: {:?}", text.lines().next().unwrap_or("(closed without an answer)"));
        assert!(
            out.is_empty() || answers.iter().any(|a| text.starts_with(a)),
            "{what}: unexpected answer {text:?}"
        );
        assert!(!text.contains("backend="), "{what} reached a server: {text:?}");
        h.wait_metrics(Duration::from_secs(3), what, |m| errors(m) >= (i + 1) as f64);
        ok(&h);
    }

    // TLS: garbage instead of a ClientHello, then a real request.
    let (good, body) = curl_https(&h, "/hello");
    assert!(good && body.starts_with("backend="), "https before: {good} {body:?}");
    let out = send_bad(&h, 443, &random_bytes(2048, 42));
    assert!(!String::from_utf8_lossy(&out).contains("backend="));
    h.wait_metrics(Duration::from_secs(3), "TLS garbage counted", |m| {
        metric(m, "portier_tls_handshake_failures_total", &["service=\"secure\""]) >= 1.0
    });
    let (good, body) = curl_https(&h, "/hello");
    assert!(good && body.starts_with("backend="), "https after garbage: {good} {body:?}");
    ok(&h);
    h.assert_no_panic();
}

// 8 ------------------------------------------------------------------------------------------

#[test]
fn upgrade_passes_the_101_and_bytes_both_ways() {
    let _l = light();
    let h = start(LabSpec::default(), &format!("{WEB_POOL}{}", http_service("web", 80, "web", "")));
    let mut c = h.client(c4(0), 80);
    c.send(b"GET /tunnel HTTP/1.1\r\nHost: 198.19.0.10\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n");
    let head = c.head();
    assert_eq!(head.status, 101, "{head:?}");
    assert!(head.get("upgrade").map(|u| u.eq_ignore_ascii_case("test")).unwrap_or(false), "{head:?}");
    for i in 0..20 {
        let msg = format!("message {i} {}\n", "x".repeat(i * 100));
        c.send(msg.as_bytes());
        let mut back = vec![0u8; msg.len()];
        c.r.read_exact(&mut back).expect("echo through the upgraded connection");
        assert_eq!(back, msg.as_bytes());
    }
    // 1 MiB both ways at once.
    let data = random_bytes(1 << 20, 7);
    let mut w = c.w.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let mut back = vec![0u8; data.len()];
    c.r.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "upgraded bytes differ");
    h.assert_no_panic();
}

// Connection-based authentication -------------------------------------------------------------

#[test]
fn a_server_connection_authenticated_by_one_client_connection_is_not_lent_to_another() {
    let _l = light();
    // IIS authenticates NTLM/Negotiate per TCP connection: after the handshake, every request
    // on that connection runs as the user. Two client connections from one address (users of
    // one terminal server, or behind one NAT) must therefore never share a server connection.
    let cfg = format!(
        "[pools.one]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n{}",
        http_service("web", 80, "one", "")
    );
    let h = start(LabSpec::default(), &cfg);
    let whoami = |c: &mut Client, auth: &str| {
        c.send(format!("GET /whoami HTTP/1.1\r\nHost: mail.example.test\r\n{auth}\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.head.status, 200, "{r:?}");
        r.text()
    };
    let mut alice = h.client(c4(0), 80);
    let a = whoami(&mut alice, "Authorization: NTLM alice\r\n");
    assert!(a.starts_with("user=alice "), "{a}");
    // Another user's connection from the same address, sending no credentials.
    let mut bob = h.client(c4(0), 80);
    let b = whoami(&mut bob, "");
    assert!(
        b.starts_with("user=anonymous "),
        "bob's request ran on alice's authenticated server connection: {b}"
    );
    // Alice's own connection stays authenticated.
    let a2 = whoami(&mut alice, "");
    assert!(a2.starts_with("user=alice "), "alice lost her authenticated server connection: {a2}");
}

/// One request to the backend's `/whoami` on a connection of its own that then closes
/// (`Connection: close`, waited for, so portier has put its server connection back before
/// the next client comes): (status, user, the backend's number for its connection).
fn whoami_once(h: &Lab7, src: IpAddr, request: &str) -> (u16, String, u64) {
    let mut c = h.client(src, 80);
    c.send(format!("{request}Host: mail.example.test\r\nConnection: close\r\n\r\n").as_bytes());
    let r = c.response();
    let text = r.text();
    c.wait_closed(Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", h.portier.log_tail()));
    let field = |k: &str| -> String {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {text:?}"))
            .into()
    };
    (r.head.status, field("user="), field("conn=").parse().expect("conn number"))
}

const GET_WHOAMI: &str = "GET /whoami HTTP/1.1\r\n";

#[test]
fn idle_server_connections_serve_the_next_client_of_the_same_address_but_never_an_authenticated_one() {
    let _l = light();
    // Transparent: a server connection leaves from its client's address, so only a client
    // from that address may take it over. IIS ties NTLM/Negotiate logins to the connection:
    // one that carried either never serves anybody else.
    let cfg = format!(
        "[pools.one]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n{}",
        http_service("web", 80, "one", "")
    );
    let h = start(LabSpec { backends: 1, extra_clients: 1 }, &cfg);
    let (_, _, first) = whoami_once(&h, c4(0), GET_WHOAMI);
    let (_, _, again) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert_eq!(again, first, "a second client of the same address did not get the idle server connection");
    let (_, _, other) = whoami_once(&h, c4(1), GET_WHOAMI);
    assert_ne!(other, first, "a client of another address got a connection leaving from the first client's");

    // Alice logs in (NTLM in her request) on the shared connection and leaves.
    let (_, user, alice) = whoami_once(&h, c4(0), &format!("{GET_WHOAMI}Authorization: NTLM alice\r\n"));
    assert_eq!((user.as_str(), alice), ("alice", first), "alice should have taken the idle connection");
    let (_, user, bob) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert_eq!(user, "anonymous", "bob's request ran on alice's NTLM connection");
    assert_ne!(bob, alice);
    // Kerberos (Negotiate) likewise.
    let (_, user, carol) = whoami_once(&h, c4(0), &format!("{GET_WHOAMI}Authorization: Negotiate carol\r\n"));
    assert_eq!((user.as_str(), carol), ("carol", bob));
    let (_, user, dave) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert_eq!(user, "anonymous", "dave's request ran on carol's Negotiate connection");
    assert_ne!(dave, carol);
    // A server challenge (401 with WWW-Authenticate: Negotiate / NTLM) starts a handshake
    // whose next leg must come on that connection: it is kept private from then on.
    let (status, _, erin) = whoami_once(&h, c4(0), "GET /whoami?challenge HTTP/1.1\r\n");
    assert_eq!((status, erin), (401, dave));
    let (_, _, frank) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert_ne!(frank, erin, "a connection challenged for NTLM was lent to another client");
    // A request portier could not send again (POST) never takes a shared connection: one
    // the server closes at that moment would cost it a 502. The idle one stays for a GET.
    let (_, _, post) = whoami_once(&h, c4(0), "POST /whoami HTTP/1.1\r\nContent-Length: 0\r\n");
    assert_ne!(post, frank, "a POST took an idle shared connection");
    let (_, _, gina) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert!(
        gina == frank || gina == post,
        "gina got a new connection ({gina}) while {frank} and {post} were idle"
    );
    h.assert_no_panic();
}

#[test]
fn behind_snat_any_client_takes_an_idle_server_connection_unless_reuse_is_private() {
    let _l = light();
    let cfg = format!(
        "[pools.one]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n{}{}",
        http_service("web", 80, "one", "source = \"balancer\""),
        "[services.own]\nvip = \"198.19.0.10\"\nports = [81]\nmode = \"http\"\npool = \"one\"\n\
         source = \"balancer\"\nserver_reuse = \"private\"\n"
    );
    let h = start(LabSpec { backends: 1, extra_clients: 1 }, &cfg);
    let (_, _, first) = whoami_once(&h, c4(0), GET_WHOAMI);
    let (_, _, other) = whoami_once(&h, c4(1), GET_WHOAMI);
    assert_eq!(other, first, "behind SNAT the server sees the balancer: any client may take the connection");
    let (_, user, alice) = whoami_once(&h, c4(1), &format!("{GET_WHOAMI}Authorization: NTLM alice\r\n"));
    assert_eq!((user.as_str(), alice), ("alice", first));
    let (_, user, bob) = whoami_once(&h, c4(0), GET_WHOAMI);
    assert_eq!(user, "anonymous", "bob's request ran on alice's NTLM connection");
    assert_ne!(bob, alice);

    // server_reuse = "private": each client connection opens its own.
    let private_once = |src| {
        let mut c = h.client(src, 81);
        c.send(b"GET /whoami HTTP/1.1\r\nHost: mail.example.test\r\nConnection: close\r\n\r\n");
        let text = c.response().text();
        c.wait_closed(Duration::from_secs(5)).unwrap();
        text.split_whitespace().find_map(|w| w.strip_prefix("conn=")).unwrap().to_string()
    };
    let (a, b) = (private_once(c4(0)), private_once(c4(0)));
    assert_ne!(a, b, "with server_reuse = \"private\" a server connection served a second client connection");
    h.assert_no_panic();
}

#[test]
fn curl_upload_with_expect_100_continue_does_not_stall() {
    let _l = light();
    let h = start(LabSpec::default(), &format!("{WEB_POOL}{}", http_service("web", 80, "web", "")));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let mut data = vec![0u8; 3 << 20];
    pattern_fill(0, &mut data);
    std::fs::write(&file, &data).unwrap();
    let mut sum = Checksum::default();
    sum.update(&data);
    // curl sends `Expect: 100-continue` for bodies over 1 MiB and waits up to 1 s for the 100.
    let out = h
        .lab
        .client
        .command("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{time_total} %{http_code}", "-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://198.19.0.10/upload")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        text.starts_with(&format!("bytes={} hash={}\n", data.len(), sum.hex())),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (time, code) = text.lines().last().unwrap().split_once(' ').unwrap();
    assert_eq!(code, "200");
    let time: f64 = time.parse().unwrap();
    assert!(time < 0.9, "the upload stalled {time} s: no 100 Continue came back");
}

#[test]
fn a_login_made_on_the_fast_path_survives_the_hand_over_to_hyper() {
    let _l = light();
    // Small requests take the HTTP/1.1 fast path; a body over 64 KiB hands the connection to
    // hyper. The server connection the user logged in on (NTLM) must come along.
    let cfg = format!(
        "[pools.one]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n{}",
        http_service("web", 80, "one", "")
    );
    let h = start(LabSpec::default(), &cfg);
    let mut alice = h.client(c4(0), 80);
    alice.send(b"GET /whoami HTTP/1.1\r\nHost: mail.example.test\r\nAuthorization: NTLM alice\r\n\r\n");
    let first = alice.response();
    let first = first.text();
    assert!(first.starts_with("user=alice "), "{first}");
    let big = vec![b'x'; 100 * 1024];
    alice.send(
        format!("POST /whoami HTTP/1.1\r\nHost: mail.example.test\r\nContent-Length: {}\r\n\r\n", big.len())
            .as_bytes(),
    );
    alice.send(&big);
    let second = alice.response();
    assert_eq!(
        second.text(),
        first,
        "the handed-over request ran on another server connection\n{}",
        h.portier.log_tail()
    );
    let third = alice.get("/whoami");
    assert_eq!(third.text(), first);
}

#[test]
fn pipelined_requests_small_chunked_uploads_and_connection_close_on_the_fast_path() {
    let _l = light();
    let h = start(LabSpec::default(), &format!("{WEB_POOL}{}", http_service("web", 80, "web", "")));
    let mut c = h.client(c4(0), 80);
    // Three requests in one write: the second with a chunked body and a trailer, the third
    // asking to close.
    c.send(
        b"GET /hello HTTP/1.1\r\nHost: mail.example.test\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: mail.example.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Sum: 1\r\n\r\n\
          GET /download?bytes=100000 HTTP/1.1\r\nHost: mail.example.test\r\nConnection: close\r\n\r\n",
    );
    let one = c.response();
    assert_eq!(one.head.status, 200);
    assert!(one.text().starts_with("backend="), "{}", one.text());
    assert_eq!(one.head.get("connection"), None, "{:?}", one.head);
    let two = c.response();
    assert!(two.text().starts_with("bytes=12 "), "{}", two.text());
    let three = c.response();
    assert_eq!(three.body.len(), 100_000);
    let mut expected = vec![0u8; 100_000];
    pattern_fill(0, &mut expected);
    assert!(three.body == expected, "the download was altered");
    assert_eq!(three.head.get("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"));
    c.wait_closed(Duration::from_secs(3)).expect("closed after Connection: close");
    // `Connection: content-length` must not strip the length of a body still forwarded (the
    // server would run the body as a second request, unrouted).
    let mut c = h.client(c4(0), 80);
    let smuggled = "GET /hello HTTP/1.1\r\nHost: mail.example.test\r\n\r\n";
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    );
    let r = c.response();
    assert!(r.text().starts_with(&format!("bytes={} ", smuggled.len())), "{}", r.text());
    let next = c.get("/download?bytes=10");
    assert_eq!(next.body.len(), 10, "a second, smuggled answer came back: {next:?}");
    // A broken chunked body: 400 and the connection closes.
    let mut bad = h.client(c4(0), 80);
    bad.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n");
    let r = bad.response();
    assert_eq!(r.head.status, 400, "{r:?}");
    bad.wait_closed(Duration::from_secs(3)).expect("closed after a broken body");
    h.assert_no_panic();
}

#[test]
fn a_server_closing_an_idle_connection_leaves_no_close_wait_behind() {
    let _l = light();
    let cfg = format!(
        "[pools.one]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n{}",
        http_service("web", 80, "one", "")
    );
    let mut h = start(LabSpec::default(), &cfg);
    let mut c = h.client(c4(0), 80);
    assert_eq!(c.get("/hello").head.status, 200);
    let close_wait = |h: &Lab7| {
        let out = h.lab.balancer.command("ss").args(["-Htn", "state", "close-wait"]).output().expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("198.18.2.11:80")).count()
    };
    // The backend ends: its side of the idle server connection closes while the client's
    // connection stays open and quiet.
    drop(h.backends.remove(0));
    let t0 = Instant::now();
    let mut left = close_wait(&h);
    while left > 0 && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        left = close_wait(&h);
    }
    assert_eq!(left, 0, "portier kept the closed server connection (CLOSE_WAIT) for an idle client");
    // The client's connection is still served (nothing listens now: 502).
    assert_eq!(c.get("/hello").head.status, 502);
}

// 9 ------------------------------------------------------------------------------------------

/// A flat JSON object of strings, numbers and booleans -> its members; None if it is not one.
fn parse_flat_json(s: &str) -> Option<Vec<(String, String)>> {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1
        }
    };
    let string = |i: &mut usize| -> Option<String> {
        if b.get(*i) != Some(&b'"') {
            return None;
        }
        *i += 1;
        let mut out = String::new();
        while *i < b.len() {
            match b[*i] {
                b'"' => {
                    *i += 1;
                    return Some(out);
                }
                b'\\' => {
                    let e = *b.get(*i + 1)?;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e as char),
                        b'n' => out.push('\n'),
                        b'u' => {
                            let hex = std::str::from_utf8(b.get(*i + 2..*i + 6)?).ok()?;
                            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                            *i += 4;
                        }
                        _ => return None,
                    }
                    *i += 2;
                }
                c if c < 0x20 => return None,
                _ => {
                    let ch = s[*i..].chars().next()?;
                    out.push(ch);
                    *i += ch.len_utf8();
                }
            }
        }
        None
    };
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut members = Vec::new();
    loop {
        ws(&mut i);
        let k = string(&mut i)?;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        ws(&mut i);
        let v = if b.get(i) == Some(&b'"') {
            string(&mut i)?
        } else {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'-') {
                i += 1;
            }
            let v = &s[start..i];
            if !(v == "true" || v == "false" || v.parse::<f64>().is_ok()) {
                return None;
            }
            v.to_string()
        };
        members.push((k, v));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                i += 1;
                ws(&mut i);
                return (i == b.len()).then_some(members);
            }
            _ => return None,
        }
    }
}

#[test]
fn access_log_has_one_line_per_request_as_text_and_json() {
    let _l = light();
    let cfg = format!(
        "{WEB_POOL}{}{}",
        http_service("web", 80, "web", ""),
        http_service("webjson", 8080, "web", "access_log = \"json\"")
    );
    let h = start(LabSpec { backends: 2, extra_clients: 1 }, &cfg);
    let upload = |c: &mut Client| {
        c.send(b"POST /upload?x=1 HTTP/1.1\r\nHost: mail.example.test\r\nContent-Length: 1000\r\n\r\n");
        c.send(&[b'u'; 1000]);
        c.response()
    };
    // Text: three requests on one connection from 198.18.1.3.
    let mut c = h.client(c4(1), 80);
    let local = c.w.local_addr().unwrap();
    let sizes = [c.get("/hello"), upload(&mut c), c.get("/download?bytes=5000")].map(|r| {
        assert_eq!(r.head.status, 200, "{r:?}");
        r.body.len()
    });
    assert_eq!(sizes[2], 5000);
    // JSON: the same on the other service.
    let mut j = h.client(c4(0), 8080);
    assert_eq!(j.get("/hello").head.status, 200);
    assert_eq!(upload(&mut j).head.status, 200);
    assert_eq!(j.get("/download?bytes=5000").body.len(), 5000);

    let t0 = Instant::now();
    let lines = loop {
        let l = h.access_lines();
        if l.len() >= 6 || t0.elapsed() > Duration::from_secs(5) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 6, "one line per request:\n{lines:#?}");
    let text: Vec<&String> = lines.iter().filter(|l| l.starts_with("service=web ")).collect();
    assert_eq!(text.len(), 3, "{lines:#?}");
    let client = format!("client={local} ");
    for (i, (l, (method, path, bytes_in))) in text
        .iter()
        .zip([("GET", "/hello", 0), ("POST", "/upload?x=1", 1000), ("GET", "/download?bytes=5000", 0)])
        .enumerate()
    {
        for want in [
            client.as_str(),
            &format!("method={method} "),
            &format!("path={path} "),
            "status=200 ",
            &format!("bytes_in={bytes_in} "),
            &format!("bytes_out={} ", sizes[i]),
            "duration_ms=",
        ] {
            assert!(l.contains(want), "{want:?} missing in {l}");
        }
        assert!(l.contains("server=198.18.2.11:80 ") || l.contains("server=198.18.2.12:80 "), "{l}");
    }
    assert!(text[0].contains("host=198.19.0.10 "), "{}", text[0]);
    assert!(text[2].contains("bytes_out=5000 "), "{}", text[2]);
    assert!(text[1].contains("host=mail.example.test "), "{}", text[1]);

    let json: Vec<Vec<(String, String)>> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| parse_flat_json(l).unwrap_or_else(|| panic!("not one JSON object: {l}")))
        .collect();
    assert_eq!(json.len(), 3, "{lines:#?}");
    let get = |o: &Vec<(String, String)>, k: &str| {
        o.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("no {k} in {o:?}"))
    };
    for (o, (method, path, bytes_in, bytes_out)) in json.iter().zip([
        ("GET", "/hello", "0", None),
        ("POST", "/upload?x=1", "1000", None),
        ("GET", "/download?bytes=5000", "0", Some("5000")),
    ]) {
        assert_eq!(get(o, "service"), "webjson");
        let cl: SocketAddr = get(o, "client").parse().unwrap();
        assert_eq!(cl.ip(), c4(0));
        assert_eq!(get(o, "method"), method);
        assert_eq!(get(o, "path"), path);
        assert_eq!(get(o, "status"), "200");
        assert_eq!(get(o, "bytes_in"), bytes_in);
        if let Some(b) = bytes_out {
            assert_eq!(get(o, "bytes_out"), b);
        }
        assert!(get(o, "server").ends_with(":80"), "{o:?}");
        assert!(get(o, "duration_ms").parse::<u64>().is_ok(), "{o:?}");
        assert!(!get(o, "host").is_empty());
    }
    h.assert_no_panic();
}
