//! What floods cost in memory: portier's RSS before, at the peak and 15 s after each flood has
//! drained, in the namespace lab with a real portier (release build). As root:
//! `cargo bench --bench floods`; `BENCH_PORTIER_EXE=/path/to/portier` measures another build
//! (an older commit) the same way. Prints a markdown table; nothing is asserted.
//!
//! Floods, one after the other on one portier:
//! - 9,000 L4 connections opened at once through the transparent path, held, then closed
//!   (a sink backend accepts and holds them; two descriptors each stays under the 20,000
//!   descriptor limit of this machine);
//! - 60,000 INVITEs without credentials at 3,000 a second from one address, never ACKed;
//! - 16,000 SIP/TCP connections from 160 addresses that send nothing, at the default
//!   `[sip.limits]` (4,000 in all, 100 per source), then with the limits raised so all are held;
//! - HTTP/2 many streams at once: h2load, 100 connections with 100 concurrent streams each,
//!   200,000 requests over TLS to an nginx backend.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portier::lab::{client_v4, Lab, LabSpec, Netns, PortierProcess, BALANCER_CLIENT_SIDE_V4, VIP_V4};

const ADMIN: &str = "127.0.0.1:9090";
const SETTLE: Duration = Duration::from_secs(15);

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Samples RSS every 100 ms until dropped; the highest seen.
struct Peak {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn watch(pid: u32) -> Peak {
        let (max, stop) = (Arc::new(AtomicU64::new(rss_kib(pid))), Arc::new(AtomicBool::new(false)));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Peak { max, stop, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

struct Row {
    flood: String,
    before: u64,
    peak: u64,
    after: u64,
    note: String,
}

/// A backend that accepts and holds every connection (no thread per connection).
fn sink(ns: &Netns, addr: SocketAddr) -> Arc<Mutex<Vec<TcpStream>>> {
    let l = ns.run(move || TcpListener::bind(addr)).expect("netns").expect("bind sink");
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    held
}

/// Opens `n` connections from the client namespace, `per` from each client address.
fn open(ns: &Netns, to: SocketAddr, n: usize, per: usize) -> Vec<TcpStream> {
    ns.run(move || {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(client_v4(i / per).into(), 0).into()).unwrap();
            match s.connect_timeout(&to.into(), Duration::from_secs(5)) {
                Ok(()) => out.push(TcpStream::from(s)),
                Err(e) => eprintln!("connection {i}: {e}"),
            }
        }
        out
    })
    .expect("netns")
}

fn config(sip_limits: &str, tls: &std::path::Path) -> String {
    format!(
        "[pools.sink]\nservers = [{{ address = \"198.18.2.11\" }}]\n\
         [services.rpc]\nvip = \"{VIP_V4}\"\nports = [135]\npool = \"sink\"\n\
         [pools.web]\nservers = [{{ address = \"198.18.2.11:80\" }}]\n\
         [services.web]\nvip = \"{VIP_V4}\"\nports = [443]\nmode = \"https\"\npool = \"web\"\naccess_log = \"off\"\n\
         certificates = [{{ cert = \"{d}/web.pem\", key = \"{d}/web.key\" }}]\n\
         [sip]\nlisten = [\"udp:{b}:5060\", \"tcp:{b}:5060\"]\ndomain = \"pbx.example.test\"\n{sip_limits}\n\
         [sip.extensions]\n2001 = {{ secret = \"s3cret-2001\" }}\n2002 = {{ secret = \"s3cret-2002\" }}\n",
        b = BALANCER_CLIENT_SIDE_V4,
        d = tls.display()
    )
}

/// A self-signed certificate for the HTTPS service, and nginx on :80 in the backend.
fn web(ns: &Netns, dir: &std::path::Path) -> std::process::Child {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["web.example.test".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("web.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("web.key"), key.serialize_pem()).expect("key");
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  server {{ listen 80; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    ns.command("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"])
        .spawn()
        .expect("nginx (Debian package nginx)")
}

fn h2(lab: &Lab, pid: u32) -> Row {
    let before = rss_kib(pid);
    let peak = Peak::watch(pid);
    let out = lab
        .client
        .command("h2load")
        .args(["-n", "200000", "-c", "100", "-m", "100", &format!("https://{VIP_V4}/")])
        .output()
        .expect("h2load (Debian package nghttp2-client)");
    let peak = peak.finish();
    let text = String::from_utf8_lossy(&out.stdout);
    let done = text.lines().find(|l| l.starts_with("requests:")).unwrap_or("requests: ?").trim().to_string();
    Row {
        flood: "HTTP/2: 100 connections x 100 streams, 200,000 requests".into(),
        before,
        peak,
        after: settle(pid),
        note: done,
    }
}

fn settle(pid: u32) -> u64 {
    std::thread::sleep(SETTLE);
    rss_kib(pid)
}

fn l4(lab: &Lab, held: &Arc<Mutex<Vec<TcpStream>>>, pid: u32) -> Row {
    let before = rss_kib(pid);
    let peak = Peak::watch(pid);
    let conns = open(&lab.client, SocketAddr::new(VIP_V4.into(), 135), 9_000, 100);
    let opened = conns.len();
    std::thread::sleep(Duration::from_secs(2));
    drop(conns);
    std::thread::sleep(Duration::from_secs(1));
    held.lock().unwrap().clear();
    let peak = peak.finish();
    Row {
        flood: "9,000 L4 connections".into(),
        before,
        peak,
        after: settle(pid),
        note: format!("{opened} opened"),
    }
}

fn invites(lab: &Lab, pid: u32) -> Row {
    let before = rss_kib(pid);
    let peak = Peak::watch(pid);
    let (sent, answered) = lab
        .client
        .run(move || {
            let sock = UdpSocket::bind(SocketAddr::new(client_v4(0).into(), 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let local = sock.local_addr().unwrap();
            let rx = sock.try_clone().unwrap();
            let reader = std::thread::spawn(move || {
                let mut n = 0u64;
                let mut quiet = Instant::now();
                let mut buf = [0u8; 4096];
                while quiet.elapsed() < Duration::from_secs(3) {
                    if rx.recv(&mut buf).is_ok() {
                        quiet = Instant::now();
                        n += 1;
                    }
                }
                n
            });
            let start = Instant::now();
            let b = BALANCER_CLIENT_SIDE_V4;
            for i in 0..60_000u64 {
                let msg = format!(
                    "INVITE sip:2002@pbx.example.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-f{i};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:2001@pbx.example.test>;tag=f{i}\r\nTo: <sip:2002@pbx.example.test>\r\n\
                     Call-ID: f{i}@bench\r\nCSeq: 1 INVITE\r\nContact: <sip:2001@{local}>\r\nContent-Type: application/sdp\r\n\
                     Content-Length: 0\r\n\r\n"
                );
                let _ = sock.send_to(msg.as_bytes(), (b, 5060));
                if let Some(w) = (start + Duration::from_micros(333 * i)).checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
            (60_000u64, reader.join().unwrap())
        })
        .expect("netns");
    let peak = peak.finish();
    Row {
        flood: "60,000 SIP INVITEs without credentials, 3,000/s".into(),
        before,
        peak,
        after: settle(pid),
        note: format!("{answered} answers to {sent} INVITEs"),
    }
}

fn sip_tcp(lab: &Lab, pid: u32, what: &str) -> Row {
    let before = rss_kib(pid);
    let peak = Peak::watch(pid);
    let conns = open(&lab.client, SocketAddr::new(BALANCER_CLIENT_SIDE_V4.into(), 5060), 16_000, 100);
    std::thread::sleep(Duration::from_secs(2));
    // Refused ones were closed by portier at once: a peek sees their end, open ones block.
    let open_now = conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).is_ok()
                && matches!(c.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(conns);
    let peak = peak.finish();
    Row {
        flood: format!("16,000 idle SIP/TCP connections, {what}"),
        before,
        peak,
        after: settle(pid),
        note: format!("{open_now} connected"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let exe = std::env::var_os("BENCH_PORTIER_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portier")));
    let lab = Lab::build(&LabSpec { backends: 1, extra_clients: 160 }).expect("lab (needs root)");
    let held = sink(&lab.backends[0], "198.18.2.11:135".parse().unwrap());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nginx = web(&lab.backends[0], dir.path());
    let mut rows = Vec::new();

    let p =
        PortierProcess::start(&lab.balancer, &exe, &config("", dir.path()), ADMIN).expect("portier start");
    std::thread::sleep(Duration::from_secs(2));
    let pid = p.pid().expect("pid");
    // BENCH_FLOODS=l4,invites,sip-tcp,h2 (default: all) picks the rows.
    let only = std::env::var("BENCH_FLOODS").unwrap_or_default();
    let want = |r: &str| only.is_empty() || only.split(',').any(|o| o == r);
    if want("l4") {
        rows.push(l4(&lab, &held, pid));
    }
    if want("invites") {
        rows.push(invites(&lab, pid));
    }
    if want("sip-tcp") {
        rows.push(sip_tcp(&lab, pid, "default limits"));
    }
    if want("h2") {
        rows.push(h2(&lab, pid));
    }
    drop(p);
    std::thread::sleep(Duration::from_secs(1));

    // A build from before `[sip.limits]` refuses the field: the row is left out then.
    let raised = "limits = { connections = 17000, connections_per_source = 200 }";
    match Some(())
        .filter(|_| want("sip-tcp"))
        .map(|_| PortierProcess::start(&lab.balancer, &exe, &config(raised, dir.path()), ADMIN))
    {
        None => {}
        Some(Ok(p)) => {
            std::thread::sleep(Duration::from_secs(2));
            let pid = p.pid().expect("pid");
            rows.push(sip_tcp(&lab, pid, "limits raised to hold them"));
            drop(p);
        }
        Some(Err(e)) => eprintln!("no [sip.limits] in this build: {e}"),
    }

    // SIGTERM to the master stops its worker too (SIGKILL would leave the worker behind).
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe { libc::kill(nginx.id() as libc::pid_t, libc::SIGTERM) };
    let _ = nginx.wait();
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!("| flood | RSS before | peak | {} s after | peak growth | after - before | |", SETTLE.as_secs());
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} MiB | {} |",
            r.flood,
            mib(r.before),
            mib(r.peak),
            mib(r.after),
            mib(r.peak.saturating_sub(r.before)),
            mib(r.after) - mib(r.before),
            r.note
        );
    }
    println!("\n`cargo bench --bench floods` as root ({}).", exe.display());
}
