//! The SIP lab: a PBX namespace running portier, phones, an Exchange UM emulator and an ISP, all
//! on one bridge, with sipp (Debian's sip-tester) as the real peer and a small Rust UDP client for
//! what sipp cannot express (replaying a nonce with the same nc, reading both challenges).
//!
//! ```text
//!  pbx ns: bridge 198.18.1.1/15 (portier: udp+tcp 5060, admin 127.0.0.1:9090)
//!   ├─ phones ns   198.18.0.11 .12 .13 .14 (phones), 198.18.0.99 (an unknown intruder)
//!   ├─ um ns       198.18.2.20 (Exchange UM emulator, TCP 5060)
//!   └─ isp ns      198.18.3.10 (ISP registrar and call target, UDP 5060)
//! ```
//!
//! Every sipp run writes its message trace (`-trace_msg`), errors and logs to a directory of the
//! test's temporary directory; [`SipTest::fail`] panics with the portier log tail and every sipp
//! run's errors and messages, so a failure explains itself.
#![allow(dead_code)]

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portier::lab::{Netns, PortierProcess};
use portier::sip::{parse_datagram, Message};

use super::{exe, metric, ADMIN};

pub const PBX: &str = "198.18.1.1";
pub const DOMAIN: &str = "pbx.example.test";
pub const PHONE1: &str = "198.18.0.11";
pub const PHONE2: &str = "198.18.0.12";
pub const PHONE3: &str = "198.18.0.13";
pub const PHONE4: &str = "198.18.0.14";
pub const INTRUDER: &str = "198.18.0.99";
pub const UM: &str = "198.18.2.20";
pub const ISP: &str = "198.18.3.10";
pub const PHONE_ADDRS: [&str; 5] = [PHONE1, PHONE2, PHONE3, PHONE4, INTRUDER];
/// A phone at home, behind the NAT [`SipLab::nat_home`] builds (its own /24: more specific
/// than the lab's /15, so the phones namespace routes it to the home link).
pub const HOME_PHONE: &str = "198.19.8.2";
const HOME_GATEWAY: &str = "198.19.8.1";

/// Log text without ANSI colour sequences and double quotes.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '"' {
            out.push(c);
        }
    }
    out
}

/// Directory of the sipp scenarios.
pub fn scenario(name: &str) -> String {
    format!("{}/tests/data/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Starts a sipp run (label, args, timeout) in a namespace; see [`SipTest::sipp`].
pub type Spawn<'a> = dyn Fn(&Netns, &str, &[&str], Duration) -> Sipp + 'a;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The namespaces. Dropping it deletes them (the bridge and veths go with the pbx namespace).
pub struct SipLab {
    pub pbx: Netns,
    pub phones: Netns,
    pub um: Netns,
    pub isp: Netns,
}

impl SipLab {
    pub fn build() -> SipLab {
        portier::lab::reap_stale_namespaces();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `pt{pid}x{n}-` is the pattern the lab's reaper recognises for namespaces left behind by
        // a killed test process; the `s` suffixes cannot collide with `Lab`'s names.
        let prefix = format!("pt{}x{}", std::process::id(), 9000 + n);
        let names: Vec<String> =
            ["spbx", "sphones", "sum", "sisp"].iter().map(|s| format!("{prefix}-{s}")).collect();
        let mut all = Netns::create_many(&names).expect("create namespaces (needs root and iproute2)");
        let isp = all.pop().unwrap();
        let um = all.pop().unwrap();
        let phones = all.pop().unwrap();
        let pbx = all.pop().unwrap();
        let lab = SipLab { pbx, phones, um, isp };
        // Interface names: at most 15 bytes, unique only within their namespace.
        let br = "sipbr";
        let mut s = String::from("link set lo up\n");
        s += &format!("link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\n");
        for (l, ns) in [("vph", &lab.phones), ("vum", &lab.um), ("visp", &lab.isp)] {
            s += &format!("link add {l} type veth peer name {l} netns {}\n", ns.name());
            s += &format!("link set {l} master {br}\n");
            s += &format!("link set {l} up\n");
        }
        s += &format!("addr add {PBX}/15 dev {br}\n");
        s += &format!("link set {br} up\n");
        lab.pbx.ip_batch(&s).expect("pbx namespace setup");
        let mut s = String::from("link set lo up\n");
        for a in PHONE_ADDRS {
            s += &format!("addr add {a}/15 dev vph\n");
        }
        s += "link set vph up\n";
        lab.phones.ip_batch(&s).expect("phones namespace setup");
        lab.um
            .ip_batch(&format!("link set lo up\naddr add {UM}/15 dev vum\nlink set vum up\n"))
            .expect("um setup");
        lab.isp
            .ip_batch(&format!("link set lo up\naddr add {ISP}/15 dev visp\nlink set visp up\n"))
            .expect("isp setup");
        lab
    }
}

impl SipLab {
    /// A home network behind NAT: a namespace with [`HOME_PHONE`] whose traffic the phones
    /// namespace forwards to the PBX masqueraded (nftables, as an ISP box does) behind its
    /// primary address, [`PHONE1`]. Deleted when dropped.
    pub fn nat_home(&self) -> Netns {
        let home = Netns::create(&format!("{}-home", self.phones.name())).expect("home namespace");
        let s = format!(
            "link add vhome type veth peer name vhome netns {}
addr add {HOME_GATEWAY}/24 dev vhome
link set vhome up
",
            home.name()
        );
        self.phones.ip_batch(&s).expect("home link");
        home.ip_batch(&format!(
            "link set lo up
addr add {HOME_PHONE}/24 dev vhome
link set vhome up
route add default via {HOME_GATEWAY}
"
        ))
        .expect("home namespace setup");
        self.phones.set_sysctls(&[("net/ipv4/ip_forward", "1")]).expect("forwarding");
        let rules = "add table ip home; \
                     add chain ip home post { type nat hook postrouting priority srcnat; }; \
                     add rule ip home post ip saddr 198.19.8.0/24 oifname \"vph\" masquerade";
        self.phones.sh(&["nft", rules]).expect("NAT rules");
        home
    }
}

/// One sipp process (`ip netns exec NS sipp ...`). Killed on drop.
pub struct Sipp {
    pub label: String,
    pub dir: PathBuf,
    child: Option<Child>,
    started: Instant,
    wall: Duration,
    code: Option<i32>,
}

impl Sipp {
    /// Waits for the exit (at most the wall-clock bound given at spawn, then SIGKILL) and
    /// returns the exit code (-9 when killed). sipp exits 0 when every call succeeded.
    pub fn wait(&mut self) -> i32 {
        if let Some(c) = self.code {
            return c;
        }
        let mut child = self.child.take().expect("sipp child");
        let deadline = self.started + self.wall;
        let code = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st.code().unwrap_or(-1),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break -9;
                }
            }
        };
        self.code = Some(code);
        code
    }

    /// Graceful stop of a long-running emulator: SIGUSR1 (sipp's "quit"), then SIGKILL after 3 s.
    pub fn stop(&mut self) -> i32 {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill").args(["-USR1", &child.id().to_string()]).status();
            self.wall = self.started.elapsed() + Duration::from_secs(3);
        }
        self.wait()
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every message sipp sent or received so far, parsed from its `-trace_msg` file.
    pub fn messages(&self) -> Vec<Logged> {
        parse_message_log(&std::fs::read(self.dir.join("messages.log")).unwrap_or_default())
    }

    pub fn received(&self) -> Vec<Logged> {
        self.messages().into_iter().filter(|m| !m.sent).collect()
    }

    pub fn sent(&self) -> Vec<Logged> {
        self.messages().into_iter().filter(|m| m.sent).collect()
    }

    /// Errors, log, screen and the end of the message trace, for failure messages.
    pub fn report(&self) -> String {
        report_dir(&self.label, &self.dir)
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn report_dir(label: &str, dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let tail = |s: String, n: usize| {
        if s.len() > n {
            let mut cut = s.len() - n;
            while !s.is_char_boundary(cut) {
                cut += 1;
            }
            format!("[...]{}", &s[cut..])
        } else {
            s
        }
    };
    format!(
        "==== sipp {label} ({})\n-- command: {}\n-- errors:\n{}\n-- log:\n{}\n-- stdout/stderr (end):\n{}\n-- messages (end):\n{}\n",
        dir.display(),
        read("command"),
        tail(read("errors.log"), 8000),
        tail(read("log.log"), 1500),
        tail(read("out.txt"), 1500),
        tail(read("messages.log"), 6000)
    )
}

/// One message from a sipp `-trace_msg` file.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Seconds since midnight (local time of the log), for intervals within one test.
    pub at: f64,
    pub sent: bool,
    pub transport: String,
    pub raw: Vec<u8>,
    pub msg: Option<Message>,
}

impl Logged {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
    pub fn start_line(&self) -> String {
        self.text().lines().next().unwrap_or_default().to_string()
    }
    pub fn method(&self) -> Option<String> {
        let l = self.start_line();
        (!l.starts_with("SIP/2.0")).then(|| l.split(' ').next().unwrap_or_default().to_string())
    }
    pub fn status(&self) -> Option<u16> {
        let l = self.start_line();
        l.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
    }
    pub fn is(&self, method: &str) -> bool {
        self.method().as_deref() == Some(method)
    }
    pub fn request_uri(&self) -> String {
        self.start_line().split(' ').nth(1).unwrap_or_default().to_string()
    }
    /// The CSeq method (for responses: which request they answer).
    pub fn cseq_method(&self) -> String {
        self.header("CSeq").and_then(|v| v.split_whitespace().nth(1).map(str::to_string)).unwrap_or_default()
    }
    /// First value of a header (full or compact name, any case), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
    pub fn headers(&self, name: &str) -> Vec<String> {
        match &self.msg {
            Some(m) => {
                m.get_all(name).map(|h| String::from_utf8_lossy(&h.value()).trim().to_string()).collect()
            }
            None => Vec::new(),
        }
    }
    pub fn body(&self) -> Vec<u8> {
        match &self.msg {
            Some(m) => m.body().to_vec(),
            None => Vec::new(),
        }
    }
    /// The header section only (start line and headers, no body).
    pub fn head(&self) -> String {
        let t = self.text();
        t.split("\r\n\r\n").next().unwrap_or_default().to_string()
    }
    pub fn call_id(&self) -> String {
        self.header("Call-ID").unwrap_or_default()
    }
    pub fn tag_of(&self, header: &str) -> Option<String> {
        let v = self.header(header)?;
        let i = v.find(";tag=")?;
        Some(v[i + 5..].split([';', ' ', '>']).next().unwrap_or_default().to_string())
    }
}

/// Parses sipp's `-message_file`: entries start with a line of 47 dashes and a timestamp, then
/// `UDP message sent (N bytes):` or `TCP message received [N] bytes :`, an empty line and the N
/// bytes of the message.
pub fn parse_message_log(data: &[u8]) -> Vec<Logged> {
    const SEP: &[u8] = b"----------------------------------------------- ";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&data[i..], SEP) {
        let start = i + p + SEP.len();
        let Some(eol) = find(&data[start..], b"\n") else { break };
        let stamp = String::from_utf8_lossy(&data[start..start + eol]).to_string();
        let l2 = start + eol + 1;
        let Some(eol2) = find(&data[l2..], b"\n") else { break };
        let desc = String::from_utf8_lossy(&data[l2..l2 + eol2]).to_string();
        let digits: String = desc
            .split(['(', '['])
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let len: usize = digits.parse().unwrap_or(0);
        let mut body_start = l2 + eol2 + 1;
        if data.get(body_start) == Some(&b'\n') {
            body_start += 1;
        }
        let end = (body_start + len).min(data.len());
        let raw = data[body_start..end].to_vec();
        let at = stamp
            .split_whitespace()
            .nth(1)
            .map(|t| t.split(':').filter_map(|x| x.parse::<f64>().ok()).fold(0.0, |acc, x| acc * 60.0 + x))
            .unwrap_or(0.0);
        out.push(Logged {
            at,
            sent: desc.contains("sent"),
            transport: desc.split_whitespace().next().unwrap_or_default().to_string(),
            msg: parse_datagram(&raw).ok(),
            raw,
        });
        i = end.max(l2);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A portier running the PBX, the namespaces, and every sipp run of the test (for reports).
pub struct SipTest {
    pub portier: PortierProcess,
    pub lab: SipLab,
    runs: SippRuns,
}

/// The sipp runs of one test: each gets its own trace directory under one temporary directory,
/// and every run's report goes into a failure message.
pub struct SippRuns {
    logs: tempfile::TempDir,
    runs: RefCell<Vec<(String, PathBuf)>>,
}

impl SippRuns {
    pub fn new() -> SippRuns {
        let logs = tempfile::Builder::new().prefix("portier-lab-sip-").tempdir().expect("tempdir");
        SippRuns { logs, runs: RefCell::new(Vec::new()) }
    }

    /// Starts sipp in `ns` with `args` plus tracing into a fresh directory. `timeout` becomes
    /// sipp's `-timeout` (with `-timeout_error`); the wall-clock kill is 5 s later.
    pub fn sipp(&self, ns: &Netns, label: &str, args: &[&str], timeout: Duration) -> Sipp {
        spawn_sipp(self.logs.path(), &self.runs, ns, label, args, timeout)
    }

    /// Every run's errors, log and message trace end.
    pub fn reports(&self) -> String {
        self.runs.borrow().iter().map(|(l, d)| report_dir(l, d)).collect()
    }
}

impl Default for SippRuns {
    fn default() -> Self {
        Self::new()
    }
}

impl SipTest {
    /// Builds the lab and starts portier with `config` in the pbx namespace. Emulators that must
    /// be up before portier (the ISP registrar) are started with [`SipTest::start_with`].
    pub fn start(config: &str) -> SipTest {
        Self::start_with(config, |_, _| Vec::new()).0
    }

    /// Like [`SipTest::start`], but `before` runs between building the lab and starting portier
    /// (to start emulators that portier talks to at once); its sipp handles are returned.
    pub fn start_with(
        config: &str,
        before: impl FnOnce(&SipLab, &Spawn) -> Vec<Sipp>,
    ) -> (SipTest, Vec<Sipp>) {
        check_tools();
        let lab = SipLab::build();
        let runs = SippRuns::new();
        let spawn =
            |ns: &Netns, label: &str, args: &[&str], timeout: Duration| runs.sipp(ns, label, args, timeout);
        let early = before(&lab, &spawn);
        let portier = match PortierProcess::start(&lab.pbx, exe(), config, ADMIN) {
            Ok(p) => p,
            Err(e) => panic!("portier did not start: {e}\nconfig:\n{config}\n{}", runs.reports()),
        };
        (SipTest { portier, lab, runs }, early)
    }

    /// Starts sipp in `ns` with `args` plus tracing into a fresh directory. `timeout` becomes
    /// sipp's `-timeout` (with `-timeout_error`); the wall-clock kill is 5 s later.
    pub fn sipp(&self, ns: &Netns, label: &str, args: &[&str], timeout: Duration) -> Sipp {
        self.runs.sipp(ns, label, args, timeout)
    }

    /// Runs sipp to completion and fails the test unless it exits 0 (every call succeeded).
    pub fn sipp_ok(&self, ns: &Netns, label: &str, args: &[&str], timeout: Duration) -> Sipp {
        let mut s = self.sipp(ns, label, args, timeout);
        let code = s.wait();
        if code != 0 {
            self.fail(&format!("sipp {label} exited {code} (0 = every call succeeded)"));
        }
        s
    }

    /// Registers `ext` from `ip:port` with sipp's register.xml (401 then 200 with the binding).
    pub fn register(&self, ext: &str, secret: &str, ip: &str, port: u16) -> Sipp {
        let args = register_args(&format!("{PBX}:5060"), ip, port, ext, secret);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sipp_ok(&self.lab.phones, &format!("register-{ext}-{ip}-{port}"), &args, Duration::from_secs(8))
    }

    /// A phone's UAS side: `scenario_file` bound where the phone registered, for `calls` calls.
    pub fn phone_uas(
        &self,
        scenario_file: &str,
        ext: &str,
        ip: &str,
        port: u16,
        calls: u32,
        timeout: Duration,
    ) -> Sipp {
        let local = port.to_string();
        let m = calls.to_string();
        let s = self.sipp(
            &self.lab.phones,
            &format!("uas-{ext}-{ip}-{port}"),
            &["-sf", &scenario(scenario_file), "-i", ip, "-p", &local, "-s", ext, "-m", &m],
            timeout,
        );
        self.wait_bound(&self.lab.phones, "u", ip, port);
        s
    }

    /// A phone's UAC side: `scenario_file` (call*.xml) from `ext` at `ip:port` dialling `number`.
    #[allow(clippy::too_many_arguments)]
    pub fn phone_call(
        &self,
        scenario_file: &str,
        ext: &str,
        secret: &str,
        ip: &str,
        port: u16,
        number: &str,
        calls: u32,
        timeout: Duration,
    ) -> Sipp {
        let call = Call { scenario_file, ext, secret, ip, port, number, calls, hold_ms: 300 };
        let args = call.args(&format!("{PBX}:5060"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sipp(&self.lab.phones, &format!("call-{ext}-to-{number}"), &args, timeout)
    }

    /// The ISP (sipp at 198.18.3.10:5062, no credentials) calls the trunk's number 0999999999
    /// once from 0612345678.
    pub fn isp_calls_in(&self) -> Sipp {
        let target = format!("{PBX}:5060");
        self.sipp(
            &self.lab.isp,
            "isp-call-in",
            &[
                "-sf",
                &scenario("isp_call_in.xml"),
                &target,
                "-i",
                ISP,
                "-p",
                "5062",
                "-s",
                "0612345678",
                "-set",
                "domain",
                "isp.example.test",
                "-set",
                "callee",
                "0999999999",
                "-m",
                "1",
                "-d",
                "300",
            ],
            Duration::from_secs(15),
        )
    }

    /// Waits until something listens on `ip:port` in `ns` (`proto` "u" or "t" for ss).
    pub fn wait_bound(&self, ns: &Netns, proto: &str, ip: &str, port: u16) {
        let t0 = Instant::now();
        let flag = format!("-Hln{proto}");
        let filter = format!("src {ip}:{port}");
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(out) = ns.sh(&["ss", &flag, &filter]) {
                if !out.trim().is_empty() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.fail(&format!("nothing listens on {ip}:{port} ({proto}) in {} after 5 s", ns.name()));
    }

    pub fn metrics(&self) -> String {
        self.portier.get("/metrics").unwrap_or_else(|e| self.fail(&format!("GET /metrics: {e}")))
    }

    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        metric(&self.metrics(), name, filters)
    }

    /// Polls `f` every 50 ms until it is true or `limit` passes; fails with `what` otherwise.
    pub fn wait_until(&self, limit: Duration, what: &str, mut f: impl FnMut(&SipTest) -> bool) {
        let t0 = Instant::now();
        loop {
            if f(self) {
                return;
            }
            if t0.elapsed() > limit {
                self.fail(&format!("timed out after {limit:?} waiting for: {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a metric sample sum to equal `want`.
    pub fn wait_metric(&self, name: &str, filters: &[&str], want: f64, limit: Duration) {
        let mut last = f64::NAN;
        let t0 = Instant::now();
        loop {
            if let Ok(text) = self.portier.get("/metrics") {
                last = metric(&text, name, filters);
                if last == want {
                    return;
                }
            }
            if t0.elapsed() > limit {
                let text = self.portier.get("/metrics").unwrap_or_default();
                let sip: String =
                    text.lines().filter(|l| l.contains("portier_sip")).map(|l| format!("{l}\n")).collect();
                self.fail(&format!(
                    "metric {name}{filters:?} is {last}, want {want} (waited {limit:?})\nSIP metrics:\n{sip}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with `msg`, the portier log tail and every sipp run's report.
    pub fn fail(&self, msg: &str) -> ! {
        let reports = self.runs.reports();
        let log = self.portier.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        panic!("{msg}\n\n==== portier log (last 80 lines)\n{tail}\n\n{reports}\n==== FAILED: {msg}");
    }

    /// `cond` or fail with `msg`.
    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg);
        }
    }

    pub fn log(&self) -> String {
        self.portier.log()
    }
}

fn spawn_sipp(
    logs: &Path,
    runs: &RefCell<Vec<(String, PathBuf)>>,
    ns: &Netns,
    label: &str,
    args: &[&str],
    timeout: Duration,
) -> Sipp {
    let n = runs.borrow().len();
    let dir = logs.join(format!("{n:02}-{}", label.replace(['/', ' ', ':'], "_")));
    std::fs::create_dir_all(&dir).expect("sipp log dir");
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let secs = format!("{}s", timeout.as_secs().max(1));
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(
        [
            "-nostdin",
            "-timeout",
            &secs,
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            &p("messages.log"),
            "-trace_err",
            "-error_file",
            &p("errors.log"),
            "-trace_logs",
            "-log_file",
            &p("log.log"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let _ =
        std::fs::write(dir.join("command"), format!("ip netns exec {} sipp {}", ns.name(), all.join(" ")));
    let out = std::fs::File::create(dir.join("out.txt")).expect("sipp out file");
    let err = out.try_clone().expect("dup");
    let child = ns
        .command("sipp")
        .args(&all)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn sipp (Debian package sip-tester)");
    runs.borrow_mut().push((label.to_string(), dir.clone()));
    Sipp {
        label: label.to_string(),
        dir,
        child: Some(child),
        started: Instant::now(),
        wall: timeout + Duration::from_secs(5),
        code: None,
    }
}

/// sipp arguments for `ext` (with `secret`) at `ip:port` registering at `target` for an
/// hour with register.xml (401, then 200 with the binding).
pub fn register_args(target: &str, ip: &str, port: u16, ext: &str, secret: &str) -> Vec<String> {
    let port = port.to_string();
    [
        "-sf",
        &scenario("register.xml"),
        target,
        "-i",
        ip,
        "-p",
        &port,
        "-s",
        ext,
        "-au",
        ext,
        "-ap",
        secret,
        "-auth_uri",
        DOMAIN,
        "-set",
        "domain",
        DOMAIN,
        "-set",
        "expires",
        "3600",
        "-m",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A phone's call (call*.xml): `ext` at `ip:port` dialling `number` `calls` times, each held
/// `hold_ms` after the answer.
pub struct Call<'a> {
    pub scenario_file: &'a str,
    pub ext: &'a str,
    pub secret: &'a str,
    pub ip: &'a str,
    pub port: u16,
    pub number: &'a str,
    pub calls: u32,
    pub hold_ms: u64,
}

impl Call<'_> {
    /// sipp's arguments for placing the call through `target`.
    pub fn args(&self, target: &str) -> Vec<String> {
        let (port, auth_uri) = (self.port.to_string(), format!("{}@{DOMAIN}", self.number));
        let (m, d) = (self.calls.to_string(), self.hold_ms.to_string());
        [
            "-sf",
            &scenario(self.scenario_file),
            target,
            "-i",
            self.ip,
            "-p",
            &port,
            "-s",
            self.ext,
            "-au",
            self.ext,
            "-ap",
            self.secret,
            "-auth_uri",
            &auth_uri,
            "-set",
            "domain",
            DOMAIN,
            "-set",
            "callee",
            self.number,
            "-m",
            &m,
            "-l",
            "1",
            "-d",
            &d,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// The lab tests need sipp; a missing tool fails (never skips) with what to install.
pub fn check_tools() {
    let ok = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "sipp not found: install the Debian package sip-tester (scripts/deps.sh does)");
    let uid =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(
        uid.ok().as_deref(),
        Some("0"),
        "the SIP lab tests need root (network namespaces); run them with sudo"
    );
}

// ---- portier configuration ---------------------------------------------------------------

/// A PBX configuration: admin, [sip] with `sip_extra` lines, the extensions (`2001 = {...}`
/// lines), trunks (TOML tables) and dial plan rules (`(match, to, strip)`).
pub fn pbx_config(
    sip_extra: &str,
    extensions: &[&str],
    trunks: &str,
    dialplan: &[(&str, &str, u32)],
) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"{ADMIN}\"\n\n[sip]\nlisten = [\"udp:{PBX}:5060\", \"tcp:{PBX}:5060\"]\ndomain = \"{DOMAIN}\"\n{sip_extra}\n\n[sip.extensions]\n"
    );
    for e in extensions {
        s += e;
        s += "\n";
    }
    s += "\n";
    s += trunks;
    s += "\n";
    for (m, to, strip) in dialplan {
        s += &format!("[[sip.dialplan]]\nmatch = \"{m}\"\nto = \"{to}\"\n");
        if *strip > 0 {
            s += &format!("strip = {strip}\n");
        }
    }
    s
}

pub const ALICE: &str = "2001 = { name = \"Alice\", secret = \"s3cret-2001\" }";
pub const BOB: &str = "2002 = { name = \"Bob\", secret = \"s3cret-2002\" }";
pub const CAROL: &str = "2003 = { name = \"Carol\", secret = \"s3cret-2003\" }";

/// The ISP trunk as the contract has it, with `expires` scaled down.
pub fn isp_trunk(expires: &str, identity: &str) -> String {
    format!(
        "[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:{ISP}:5060\"\ndomain = \"isp.example.test\"\n\
         username = \"0999999999\"\nsecret = \"isp-secret\"\nexpires = \"{expires}\"\ninbound = \"2000\"\nidentity = \"{identity}\"\n"
    )
}

/// The Exchange UM peer trunk, pinged every `ping`.
pub fn um_trunk(ping: &str) -> String {
    format!(
        "[sip.trunks.exchange-um]\nkind = \"peer\"\naddress = \"tcp:{UM}:5060\"\ntrusted = true\nidentity = \"pai\"\noptions_ping = \"{ping}\"\n"
    )
}

/// The ISP emulator (isp.xml): registrar challenging with 401 and call target, UDP 5060.
pub fn start_isp(ns: &Netns, spawn: &Spawn, exp: u32) -> Sipp {
    let exp = exp.to_string();
    spawn(
        ns,
        "isp-emulator",
        // Refreshes reuse the Call-ID (as RFC 3261 asks): without a short -deadcall_wait sipp
        // swallows them as messages of an ended call for 33 s.
        &[
            "-sf",
            &scenario("isp.xml"),
            "-i",
            ISP,
            "-p",
            "5060",
            "-set",
            "exp",
            &exp,
            "-m",
            "1000",
            "-deadcall_wait",
            "1",
        ],
        Duration::from_secs(40),
    )
}

/// The Exchange UM emulator (um.xml) on TCP 5060.
pub fn start_um(ns: &Netns, spawn: &Spawn) -> Sipp {
    spawn(
        ns,
        "um-emulator",
        &[
            "-sf",
            &scenario("um.xml"),
            "-t",
            "t1",
            "-i",
            UM,
            "-p",
            "5060",
            "-s",
            "um",
            "-m",
            "1000",
            "-deadcall_wait",
            "1",
        ],
        Duration::from_secs(40),
    )
}

// ---- baresip -----------------------------------------------------------------------------

/// baresip in the phones namespace with a generated config directory.
pub struct Baresip {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Baresip {
    /// baresip as `ext` at `ip:port`, answering calls, sending a 440 Hz tone.
    pub fn start(t: &SipTest, ext: &str, secret: &str, ip: &str, port: u16) -> Baresip {
        Self::start_with(t, ext, secret, ip, port, "ausine,440", &[])
    }

    /// The same with `source` as its `audio_source` and `args` added to its command line.
    pub fn start_with(
        t: &SipTest,
        ext: &str,
        secret: &str,
        ip: &str,
        port: u16,
        source: &str,
        args: &[&str],
    ) -> Baresip {
        let dir = tempfile::Builder::new().prefix("portier-baresip-").tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config"),
            format!(
                "poll_method\t\tepoll\nsip_listen\t\t{ip}:{port}\n\
                 audio_player\t\tnull,nodev\naudio_source\t\t{source}\naudio_alert\t\tnull,nodev\n\
                 ausrc_srate\t\t48000\nauplay_srate\t\t48000\nausrc_channels\t\t2\n\
                 module_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\n\
                 module\t\t\tausine.so\nmodule\t\t\taufile.so\nmodule_app\t\tmenu.so\nmodule_app\t\taccount.so\n\
                 rtp_ports\t\t41000-41100\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("accounts"),
            format!(
                "<sip:{ext}@{DOMAIN};transport=udp>;auth_user={ext};auth_pass={secret};outbound=\"sip:{PBX}:5060\";regint=600;answermode=auto;audio_codecs=PCMA,PCMU\n"
            ),
        )
        .unwrap();
        std::fs::write(d.join("contacts"), "").unwrap();
        let log = std::fs::File::create(d.join("out.txt")).unwrap();
        let child = t
            .lab
            .phones
            .command("baresip")
            .args(["-f", &d.to_string_lossy(), "-n", ip])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("baresip (Debian package baresip-core)");
        Baresip { child: Some(child), dir }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.txt")).unwrap_or_default()
    }

    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.output()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- a minimal UDP client for the digest corner cases -----------------------------------

/// A REGISTER client on a UDP socket in the phones namespace.
pub struct UdpPhone {
    sock: UdpSocket,
    pub local: SocketAddr,
    pub ext: String,
    call_id: String,
    cseq: u32,
}

impl UdpPhone {
    pub fn bind(ns: &Netns, ip: &str, port: u16, ext: &str) -> UdpPhone {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let sock = ns.run(move || UdpSocket::bind(addr)).expect("netns").expect("bind udp phone");
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        UdpPhone {
            sock,
            local: addr,
            ext: ext.to_string(),
            call_id: format!(
                "rust-{}-{port}-{}@{ip}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            cseq: 0,
        }
    }

    /// Sends a REGISTER (with `authorization` as the Authorization value if given) and returns
    /// the final response, retransmitting every 500 ms for up to 4 s. None when nothing came.
    pub fn register(&mut self, authorization: Option<&str>, expires: u32) -> Option<Message> {
        self.cseq += 1;
        let branch = format!("z9hG4bK-rust-{}-{}", self.cseq, COUNTER.fetch_add(1, Ordering::Relaxed));
        let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let ext = &self.ext;
        let local = self.local;
        let req = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{ext}@{DOMAIN}>;tag=rust{}\r\nTo: <sip:{ext}@{DOMAIN}>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n\
             Contact: <sip:{ext}@{local}>\r\n{auth}Expires: {expires}\r\nUser-Agent: portier-lab-rust\r\nContent-Length: 0\r\n\r\n",
            self.local.port(),
            self.call_id,
            self.cseq
        );
        let server: SocketAddr = format!("{PBX}:5060").parse().unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; 65536];
        while t0.elapsed() < Duration::from_secs(4) {
            self.sock.send_to(req.as_bytes(), server).expect("send REGISTER");
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(500) {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else { break };
                let Ok(m) = parse_datagram(&buf[..n]) else { continue };
                let ours = m.get("CSeq").map(|h| {
                    let v = String::from_utf8_lossy(&h.value()).to_string();
                    v.split_whitespace().next() == Some(&self.cseq.to_string())
                });
                if m.status().is_some_and(|s| s >= 200) && ours == Some(true) {
                    return Some(m);
                }
            }
        }
        None
    }
}

/// All values of a header of a message, as text.
pub fn header_values(m: &Message, name: &str) -> Vec<String> {
    m.get_all(name).map(|h| String::from_utf8_lossy(&h.value()).trim().to_string()).collect()
}

/// A whole message as text (for failure messages).
pub fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.to_bytes()).into_owned()
}
