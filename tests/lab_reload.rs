//! Lab tests: SIGHUP re-reads the HTTPS certificates without dropping established connections;
//! a bad file keeps the running ones; the L7 metrics pass `promtool check metrics`. A server
//! drained (HTTP/1.1, fast path) or removed (HTTP/2, hyper path) by a reload finishes a 30 s
//! download and gets no new requests.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::nginx::{curl_command, start, L7, SLOW_BYTES};
use common::*;
use portier::lab::LabSpec;

const CFG: &str = r#"
[pools.web]
servers = [ { address = "198.18.2.11:443" } ]
tls = { verify = false }

[services.web]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ { cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" } ]
pool = "web"
"#;

fn subject(l: &L7) -> String {
    // -k: after the reload the certificate is self-signed; what matters is which one is served.
    let out = l.curl(c4(0), &["-v", "-k", "https://mail.example.test/"]);
    assert!(out.ok, "{}", out.stderr);
    out.subject().unwrap_or_default().to_string()
}

fn sighup(l: &L7) {
    let pid = l.portier.pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
}

fn wait_log(l: &L7, needle: &str, times: usize) {
    let ok = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        l.portier.log().matches(needle).count() >= times
    });
    assert!(ok, "log never said {needle:?} ({times}x):\n{}", l.portier.log_tail());
}

#[test]
fn sighup_reloads_certificates_and_keeps_established_connections() {
    let l = start(LabSpec { backends: 1, extra_clients: 0 }, &[], CFG);
    assert!(subject(&l).contains("mail.example.test"));

    // An established TLS connection: one request now, one after the reload.
    let mut s_client = l
        .lab
        .client
        .command("openssl")
        .args(["s_client", "-quiet", "-connect", "198.19.0.10:443", "-servername", "mail.example.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut to_server = s_client.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = s_client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let request = b"GET / HTTP/1.1\r\nHost: mail.example.test\r\n\r\n";
    let answered = |rx: &mpsc::Receiver<String>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("backend=") => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    to_server.write_all(request).unwrap();
    assert!(answered(&rx), "first request on the held connection");

    // New certificate for the same name, self-signed and recognisable by its CN.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["mail.example.test".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "mail.example.test second edition");
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(l.certs.path("mail.pem"), cert.pem()).unwrap();
    std::fs::write(l.certs.path("mail.key"), key.serialize_pem()).unwrap();
    sighup(&l);
    wait_log(&l, "configuration reloaded", 1);
    assert!(subject(&l).contains("second edition"), "new handshakes must get the new certificate");

    // The connection made before the reload still works.
    to_server.write_all(request).unwrap();
    assert!(answered(&rx), "the established connection must survive the reload");

    // A broken file: the reload is refused and the running certificate stays.
    std::fs::write(l.certs.path("mail.pem"), "not a certificate").unwrap();
    sighup(&l);
    wait_log(&l, "reload refused", 1);
    assert!(
        l.portier.log().contains("service web: certificates"),
        "the refusal names the service:\n{}",
        l.portier.log_tail()
    );
    assert!(subject(&l).contains("second edition"));
    let _ = s_client.kill();
    let _ = s_client.wait();

    // The L7 metric families are valid for Prometheus.
    let text = l.portier.get("/metrics").unwrap();
    assert!(metric(&text, "portier_tls_handshakes_total", &["service=\"web\""]) >= 4.0, "{text}");
    assert!(metric(&text, "portier_http_requests_total", &["code=\"2xx\""]) >= 5.0, "{text}");
    assert!(text.contains("portier_http_request_duration_seconds_bucket"), "{text}");
    promtool_check(&text);
}

fn drain_config(http_servers: &str, https_servers: &str) -> String {
    format!(
        r#"[global]
drain_timeout = "60s"

[pools.web]
servers = [ {http_servers} ]

[pools.webs]
servers = [ {https_servers} ]
tls = {{ verify = false }}

[services.web]
vip = "198.19.0.10"
ports = [80]
mode = "http"
pool = "web"

[services.mail]
vip = "198.19.0.10"
ports = [443]
mode = "https"
certificates = [ {{ cert = "/etc/portier/tls/mail.pem", key = "/etc/portier/tls/mail.key" }} ]
pool = "webs"
"#
    )
}

/// A `/slow` download in the background (its body on stdout), bounded to 60 s.
fn download(l: &L7, args: &[&str]) -> Child {
    curl_command(&l.lab.client, &l.certs, c4(0))
        .args(["--max-time", "60"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl")
}

/// The download's backend (its first line) and size; fails unless curl succeeded.
fn downloaded(name: &str, child: Child) -> (String, usize) {
    let out = child.wait_with_output().expect("curl");
    assert!(out.status.success(), "{name} download failed: {}", String::from_utf8_lossy(&out.stderr));
    let first = out.stdout.split(|b| *b == b'\n').next().unwrap_or_default();
    (String::from_utf8_lossy(first).into_owned(), out.stdout.len())
}

#[test]
fn a_drained_or_removed_server_finishes_a_long_download_and_gets_no_new_requests() {
    let cas01 = r#"{ address = "198.18.2.11:80" }"#;
    let cas01s = r#"{ address = "198.18.2.11:443" }"#;
    let l = start(LabSpec { backends: 2, extra_clients: 0 }, &[], &drain_config(cas01, cas01s));

    // Both downloads start on cas01, the only server: HTTP/1.1 on the fast path, HTTP/2 from
    // the client on the hyper path.
    let t0 = Instant::now();
    let h1 = download(&l, &["http://198.19.0.10/slow"]);
    let h2 = download(&l, &["--http2", "https://mail.example.test/slow"]);
    std::thread::sleep(Duration::from_secs(2));

    // cas01 drains in the HTTP pool and leaves the HTTPS pool; cas02 joins both.
    let drained = r#"{ address = "198.18.2.11:80", drain = true }, { address = "198.18.2.12:80" }"#;
    l.portier
        .write_config(&l.certs.rewrite(&drain_config(drained, r#"{ address = "198.18.2.12:443" }"#)))
        .unwrap();
    let (code, out) = l.portier.reload(exe()).unwrap();
    assert_eq!(code, 0, "reload: {out}");

    // New requests, on new connections, all go to cas02 while the downloads run.
    for i in 0..10 {
        for url in ["http://198.19.0.10/", "https://mail.example.test/"] {
            let (out, e) = l.get(c4(0), &[url]);
            assert!(out.ok, "{url}: {}", out.stderr);
            assert_eq!(e.backend, "cas02", "request {i} to {url} after the reload");
        }
    }

    let (h1_from, h1_len) = downloaded("HTTP/1.1", h1);
    let (h2_from, h2_len) = downloaded("HTTP/2", h2);
    let took = t0.elapsed();
    assert_eq!((h1_from.as_str(), h1_len), ("backend=cas01", SLOW_BYTES), "the drained server's download");
    assert_eq!((h2_from.as_str(), h2_len), ("backend=cas01", SLOW_BYTES), "the removed server's download");
    // nginx's limit_rate made them last; a download cut short would have failed above.
    assert!(took > Duration::from_secs(20), "the downloads took {took:?}: the test proves nothing");
    let log = l.portier.log();
    assert!(!log.contains("drain time over"), "{}", l.portier.log_tail());
}
