//! nginx backends for the L7 lab tests, the certificates they and portier use (a test CA,
//! `mail.example.test` and `lync.example.test` for portier, one for the backends; all made
//! with rcgen at test time), and curl run from the lab's client namespace.
//!
//! Every nginx answers on 80 and 443 (TLS) with one line naming itself and what it saw:
//! `backend=NAME peer=ADDR host=HOST proto=SCHEME xff=X-Forwarded-For xfp=X-Forwarded-Proto
//! cookie=COOKIE`.
//! `/healthz` answers `ok`, `/wsman` sets a server cookie `MS-WSMAN=NAME-<msec>; Path=/`
//! (what Lync's web services do), `/redirect-me` answers a 302 to `/landed` and `/upload`
//! reads the whole request body, then answers `backend=NAME uploaded=CONTENT-LENGTH`.

use std::io;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portier::lab::{EchoBackend, Lab, LabSpec, Netns, PortierProcess, VIP_V4};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Where the shipped configurations expect certificates; tests replace it with their own
/// directory (`Certs::rewrite`).
pub const SHIPPED_TLS_DIR: &str = "/etc/portier/tls/";

/// A test CA and the certificates it signed, as PEM files in a temporary directory:
/// `ca.pem`, `mail.pem`/`mail.key`, `lync.pem`/`lync.key`, `backend.pem`/`backend.key`.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::Builder::new().prefix("portier-tls-").tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "portier test CA");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (file, names) in [
            ("mail", vec!["mail.example.test".to_string()]),
            ("lync", vec!["lync.example.test".to_string()]),
            ("backend", vec!["cas.example.test".to_string(), "198.18.2.11".into(), "198.18.2.12".into()]),
        ] {
            let mut p = CertificateParams::new(names.clone()).unwrap();
            p.distinguished_name.push(DnType::CommonName, names[0].clone());
            p.use_authority_key_identifier_extension = true;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        }
        Certs { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `text` with every `/etc/portier/tls/` replaced by this directory.
    pub fn rewrite(&self, text: &str) -> String {
        text.replace(SHIPPED_TLS_DIR, &format!("{}/", self.dir.path().display()))
    }
}

/// nginx (master + one worker) in a backend namespace, killed on drop.
/// Size of every backend's `/slow` body (starts with `backend=NAME\n`), sent at 10 kB/s.
pub const SLOW_BYTES: usize = 300_000;

pub struct Nginx {
    child: Option<Child>,
    pub name: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx named `name` in `ns` with the backend certificate of `certs`, and waits
    /// until it answers on 80 and 443.
    pub fn start(ns: &Netns, name: &str, certs: &Certs) -> io::Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("portier-nginx-").tempdir()?;
        let d = dir.path().display().to_string();
        let cert = certs.path("backend.pem").display().to_string();
        let key = certs.path("backend.key").display().to_string();
        let conf = format!(
            r#"worker_processes 1;
user root;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_timeout 65s;
    client_max_body_size 0;
    server {{
        listen 80;
        listen [::]:80;
        listen 443 ssl;
        listen [::]:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            return 200 "backend={name} peer=$remote_addr host=$host proto=$scheme xff=$http_x_forwarded_for xfp=$http_x_forwarded_proto cookie=$http_cookie\n";
        }}
        location = /healthz {{ return 200 "ok\n"; }}
        # Compressed on the fly: a chunked response without Content-Length.
        location = /gz {{
            gzip on;
            gzip_types text/plain;
            gzip_min_length 1;
            return 200 "backend={name} peer=$remote_addr host=$host proto=$scheme xff= xfp= cookie=\n";
        }}
        location /wsman {{
            add_header Set-Cookie "MS-WSMAN={name}-$msec; Path=/";
            return 200 "backend={name} wsman\n";
        }}
        location = /redirect-me {{ return 302 /landed; }}
        # What arrived of the hop-by-hop TE field (portier must not forward it).
        location = /te {{ return 200 "backend={name} te=[$http_te]\n"; }}
        # Reads the whole request body (proxy request buffering) before answering.
        location = /upload {{
            proxy_pass http://127.0.0.1:80/uploaded;
            proxy_set_header X-Length $content_length;
        }}
        location = /uploaded {{ return 200 "backend={name} uploaded=$http_x_length\n"; }}
        # A long download: SLOW_BYTES at 10 kB/s, about 30 s.
        location = /slow {{
            alias {d}/slow.bin;
            limit_rate 10k;
        }}
    }}
}}
"#
        );
        let mut slow = format!("backend={name}\n").into_bytes();
        slow.resize(SLOW_BYTES, b'.');
        std::fs::write(dir.path().join("slow.bin"), slow)?;
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        // `ip netns exec` execs nginx, so the child is nginx's master; its own process group
        // lets Drop kill master and worker together.
        let child = ns
            .command("nginx")
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()?;
        let mut n = Nginx { child: Some(child), name: name.to_string(), dir };
        n.wait_ready(ns, Duration::from_secs(10))?;
        Ok(n)
    }

    fn wait_ready(&mut self, ns: &Netns, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        let answers = |url: &str| {
            ns.command("curl")
                .args(["-sfk", "--max-time", "1", url])
                .output()
                .map(|o| o.status.success() && o.stdout == b"ok\n")
                .unwrap_or(false)
        };
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                return Err(io::Error::other(format!(
                    "nginx {} exited during start ({status:?}):\n{}",
                    self.name,
                    self.log()
                )));
            }
            if answers("http://127.0.0.1/healthz") && answers("https://127.0.0.1/healthz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "nginx {} not ready after {limit:?}:\n{}",
                    self.name,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// nginx's error output, for failure messages.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// The access log: one line per request nginx served.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The master is not reaped yet, so its process group still exists and is ours.
            let _ = kill(Pid::from_raw(-(c.id() as i32)), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// One nginx answer line, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Echo {
    pub backend: String,
    pub peer: String,
    pub host: String,
    pub proto: String,
    pub xff: String,
    /// X-Forwarded-Proto as nginx reads it (the first field when there are several).
    pub xfp: String,
    pub cookie: String,
}

impl Echo {
    pub fn parse(line: &str) -> Option<Echo> {
        let line = line.trim_end();
        let (head, cookie) = line.split_once(" cookie=")?;
        let mut e = Echo { cookie: cookie.to_string(), ..Echo::default() };
        for field in head.split(' ') {
            let (k, v) = field.split_once('=')?;
            let slot = match k {
                "backend" => &mut e.backend,
                "peer" => &mut e.peer,
                "host" => &mut e.host,
                "proto" => &mut e.proto,
                "xff" => &mut e.xff,
                "xfp" => &mut e.xfp,
                _ => return None,
            };
            *slot = v.to_string();
        }
        (!e.backend.is_empty()).then_some(e)
    }
}

/// What a curl run printed.
#[derive(Debug)]
pub struct CurlOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CurlOut {
    /// The nginx echo line of the body; panics with curl's output when there is none.
    pub fn echo(&self) -> Echo {
        self.stdout
            .lines()
            .find_map(Echo::parse)
            .unwrap_or_else(|| panic!("no backend echo in curl output:\n{}\n{}", self.stdout, self.stderr))
    }

    /// The certificate subject curl printed with -v (`*  subject: CN=...`).
    pub fn subject(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.trim_start_matches('*').trim().strip_prefix("subject:"))
            .map(str::trim)
    }

    /// Response header lines curl printed with -v (`< name: value`), lower-cased names.
    pub fn response_headers(&self, name: &str) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("< "))
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// The names tests use, resolved to the VIP on 80 and 443 (`--resolve`).
pub const NAMES: [&str; 2] = ["mail.example.test", "lync.example.test"];

/// `curl` in the client namespace from address `src`, trusting only the test CA, with the
/// test names resolved to the VIP; `args` follow (URL included). Bounded to 10 s.
pub fn curl(client: &Netns, certs: &Certs, src: IpAddr, args: &[&str]) -> CurlOut {
    let mut cmd = curl_command(client, certs, src);
    cmd.args(args);
    let out = cmd.output().expect("run curl");
    CurlOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn curl_command(client: &Netns, certs: &Certs, src: IpAddr) -> Command {
    let mut cmd = client.command("curl");
    cmd.args(["-sS", "--max-time", "10", "--interface", &src.to_string(), "--cacert"]).arg(certs.ca());
    for n in NAMES {
        for port in [80, 443] {
            cmd.args(["--resolve", &format!("{n}:{port}:{VIP_V4}")]);
        }
    }
    cmd
}

/// A lab with nginx cas01, cas02, ... in the backends (plus echo servers of the same names on
/// `echo_ports`), certificates, and portier running a configuration.
pub struct L7 {
    pub portier: PortierProcess,
    pub nginx: Vec<Nginx>,
    pub echo: Vec<EchoBackend>,
    pub lab: Lab,
    pub certs: Certs,
}

/// Builds an [`L7`]; `config`'s `/etc/portier/tls/` paths are rewritten to the test's own.
pub fn start(spec: LabSpec, echo_ports: &[u16], config: &str) -> L7 {
    let certs = Certs::generate();
    let lab = Lab::build(&spec).expect("lab build (needs root, iproute2, nftables)");
    let name = |i: usize| format!("cas{:02}", i + 1);
    let nginx = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Nginx::start(ns, &name(i), &certs).expect("nginx"))
        .collect();
    let echo = if echo_ports.is_empty() {
        Vec::new()
    } else {
        lab.backends
            .iter()
            .enumerate()
            .map(|(i, ns)| EchoBackend::start(ns, &name(i), echo_ports).expect("echo backend"))
            .collect()
    };
    let portier = PortierProcess::start(&lab.balancer, super::exe(), &certs.rewrite(config), super::ADMIN)
        .expect("portier start");
    L7 { portier, nginx, echo, lab, certs }
}

impl L7 {
    pub fn curl(&self, src: IpAddr, args: &[&str]) -> CurlOut {
        curl(&self.lab.client, &self.certs, src, args)
    }

    /// A request that must succeed and be answered by a backend.
    pub fn get(&self, src: IpAddr, args: &[&str]) -> (CurlOut, Echo) {
        let out = self.curl(src, args);
        assert!(out.ok, "curl {args:?} failed:\n{}\nportier log:\n{}", out.stderr, self.portier.log_tail());
        let e = out.echo();
        (out, e)
    }

    /// The backend that answered a request that must succeed.
    pub fn backend(&self, src: IpAddr, args: &[&str]) -> String {
        self.get(src, args).1.backend
    }

    /// Sends `bytes` to VIP:443 from the first client address and returns what came back
    /// before the connection ended (an error when it was reset).
    pub fn greet_raw(&self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = portier::lab::connect(&self.lab.client, Some(super::c4(0)), super::vip4(443), super::T)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(bytes)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Connects from `src` to VIP:`port` and reads an echo backend's greeting.
    pub fn greet(&self, src: IpAddr, port: u16) -> portier::lab::Greeting {
        portier::lab::greet(&self.lab.client, Some(src), super::vip4(port), super::T)
            .unwrap_or_else(|e| panic!("greet VIP:{port} from {src}: {e}\n{}", self.portier.log_tail()))
    }
}

/// How many times each backend name occurs.
pub fn count(backends: impl IntoIterator<Item = String>) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for b in backends {
        *m.entry(b).or_insert(0) += 1;
    }
    m
}

/// A raw HTTP/1.1 server in a backend namespace that answers every request with the request
/// head exactly as received (one response per connection), for checks nginx cannot make
/// (e.g. how many `Cookie:` lines arrived). Stopped on drop.
pub struct HeadEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeadEcho {
    pub fn start(ns: &Netns, port: u16) -> HeadEcho {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = ns
            .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
            .expect("enter namespace")
            .expect("bind head echo");
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = c.write_all(reply.as_bytes()).and_then(|_| c.write_all(&head));
            }
        });
        HeadEcho { stop, thread: Some(thread) }
    }
}

impl Drop for HeadEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
