//! The SIP rows: calls per second through portier's B2BUA against Kamailio 5.6 as a stateful
//! proxy (the reference), and REGISTER with digest authentication per second (portier only).
//!
//! Same lab as the other rows: the UAC (sipp, `benches/sip/uac.xml`) in the client namespace
//! at 198.18.1.2:5060, the UAS (sipp, `benches/sip/uas.xml`) in the backend namespace at
//! 198.18.2.11:5060, portier (UDP 198.18.1.1:5060) and Kamailio (UDP 198.18.1.1:5070) both
//! running in the balancer namespace for the whole SIP part, pinned to CPU 0; every sipp
//! process is pinned to CPU 1. For portier both sipp ends are peer trunks (`load` trusted, so
//! its calls are routed by the dial plan without digest; `far` the target of `9.`), the UAC
//! dials 9123. Kamailio relays every initial INVITE with `t_relay()` to the UAS and
//! record-routes, so ACK and BYE pass it as they pass portier (`benches/sip/kamailio.cfg`).
//!
//! One measurement is a sipp run of RATE calls/s for BENCH_SIP_SECS seconds (`-m` = RATE x
//! secs), each call INVITE/100/180/200/ACK/pause/BYE/200. It is clean when every call
//! succeeded (sipp exits 0, no failed call of any cause), there were at most 5 retransmissions
//! per 100 calls (else answers took longer than T1 and a backlog built up, which a few seconds
//! absorb but a longer run would not) and sipp created calls at ≥ 90% of RATE (else the load
//! generator, not the proxy, was the limit). The value of a round is the
//! highest clean rate of the steps: round 1 climbs from BENCH_SIP_START, later rounds start at
//! the previous round's result (one step down when that fails), so a round costs about two
//! runs. Rounds alternate A B A B (portier, Kamailio). The no-proxy limit is sipp's own
//! ceiling: the UAC straight to the UAS, climbed once from twice the best proxy result.
//! Each run also records the CPU the balancer used (portier's process, or all of Kamailio's).
//!
//! Knobs: BENCH_SIP_SECS (4), BENCH_SIP_PAUSE_MS (1000, the call's talk time), BENCH_SIP_THREADS
//! (1: portier's `TOKIO_WORKER_THREADS` and Kamailio's `-n` children), BENCH_SIP_STEPS
//! (250,500,1000,1500,2000,3000,4000,5000,6000,8000,10000), BENCH_SIP_START (1000),
//! BENCH_SIP_REG_STEPS (500,1000,2000,4000,6000,8000,12000,16000), BENCH_SIP_REG_START (2000),
//! BENCH_SIP_LIMIT (1; 0 = skip the no-proxy limit), BENCH_SIP_TRACE (0; 1 = sipp's message
//! traces in the run's directory, with BENCH_KEEP=1 to keep it).

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
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(d);
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
        r.first_error = o.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.chars().take(240).collect());
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

# The capacity is measured, not the flood guard: all the load comes from one source, and each
# call leaves its BYE's server transaction absorbing retransmissions for 64*T1 = 32 s (UDP),
# so the defaults (1,000 per source, 10,000 in all) refuse one source past about 30 calls/s.
[sip.limits]
transactions = 1000000
transactions_per_source = 1000000

[sip.extensions]
{ext}
# Signalling only, as Kamailio: the media relay has its own rows (benches/media).
[sip.trunks.load]
kind = "peer"
address = "udp:{client}:{UAC_PORT}"
trusted = true
media = "direct"

[sip.trunks.far]
kind = "peer"
address = "udp:{uas}:{UAS_PORT}"
media = "direct"

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
pub(super) fn pin(pid: u32, cpu: &str) -> io::Result<()> {
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
        return Err(io::Error::other(format!("smoke registrations: {}\n{}", r.show(), portier.log_tail())));
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
            let r = calls(lab, &dir, sk, Target::Direct, &[], &format!("calls-direct-{rate}"), rate, sk.secs);
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
        let calls: Vec<&str> =
            m.lines().filter(|l| l.starts_with("portier_sip_calls_total") && !l.ends_with(" 0")).collect();
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
    let uac = uac_args("benches/sip/uac.xml", "TARGET", "198.18.1.2", UAC_PORT, "RATE", "CALLS", sk.pause_ms);
    let regs =
        uac_args("benches/sip/register.xml", "198.18.1.1:5060", "198.18.1.3", REG_PORT, "RATE", "CALLS", 0);
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
        include_str!("kamailio.cfg"),
    );
    s
}
