//! nginx backends for the L7 lab tests, the certificates they and portier use (a test CA,
//! `mail.example.test` and `lync.example.test` for portier, one for the backends; all made
//! with rcgen at test time), and curl run from the lab's client namespace.
//!
//! Every nginx answers on 80 and 443 (TLS) with one line naming itself and what it saw:
//! `backend=NAME peer=ADDR host=HOST proto=SCHEME xff=X-Forwarded-For cookie=COOKIE`.
//! `/healthz` answers `ok`, `/wsman` sets a server cookie `MS-WSMAN=NAME-<msec>; Path=/`
//! (what Lync's web services do) and `/redirect-me` answers a 302 to `/landed`.

use std::io;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portier::lab::{Netns, VIP_V4};
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
    server {{
        listen 80;
        listen 443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            return 200 "backend={name} peer=$remote_addr host=$host proto=$scheme xff=$http_x_forwarded_for cookie=$http_cookie\n";
        }}
        location = /healthz {{ return 200 "ok\n"; }}
        location /wsman {{
            add_header Set-Cookie "MS-WSMAN={name}-$msec; Path=/";
            return 200 "backend={name} wsman\n";
        }}
        location = /redirect-me {{ return 302 /landed; }}
    }}
}}
"#
        );
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

/// Path of a file inside the test's temporary directory as a string (for command lines).
pub fn s(p: &Path) -> String {
    p.display().to_string()
}
