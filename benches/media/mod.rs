//! The media rows: concurrent relayed G.711 calls through portier's media relay against
//! Debian's rtpengine (its userspace relay), on one CPU, with the load generator on the other.
//!
//! Same lab as the other rows. The relay runs in the balancer namespace pinned to CPU 0:
//! portier (`portier run`, its B2BUA on udp 198.18.1.1:5080 with two peer trunks, media at the
//! defaults: `[sip.media]` not written) or rtpengine (`/etc/rtpengine/rtpengine.conf` as the
//! package ships it, with `--interface=198.18.1.1` as an administrator sets it, in the
//! foreground; without its kernel module it relays in user space).
//! The harness, pinned to CPU 1, places N calls and then sends the audio of all of them:
//! - portier: a minimal UAC in the client namespace (198.18.1.2:5060, the trusted trunk `gen`)
//!   sends each INVITE with an SDP naming one of its sockets, a minimal UAS in the backend
//!   namespace (198.18.2.11:5060, the trunk `far`) answers 200 naming one of its sockets; the
//!   relay ports come from the SDP each side receives.
//! - rtpengine: the same SDPs through its ng control protocol (`offer`, `answer`), the way a
//!   SIP proxy (Kamailio's rtpengine module) drives it.
//! - no relay: each caller socket sends straight to its callee socket through the balancer's
//!   routing: the generator's own ceiling.
//!
//! Each call then carries 50 packets/s each way (RTP header + 160 bytes of A-law, every 20 ms),
//! for a warm-up of 2 s and a measured BENCH_MEDIA_SECS (5) s. A step is clean when fewer than
//! 0.1 % of the packets sent in the measured window were lost and the generator sent at least
//! 95 % of what it should (a saturated relay holds it back). The value of a round is the
//! highest clean step of BENCH_MEDIA_STEPS (500,1000,1500,2000,2500 calls: 2,500 is what
//! both relays' default port ranges hold, 4 ports a call); rounds run A B A B (portier,
//! rtpengine), BENCH_ROUNDS of them. "CPU per 1,000 packets" is the relay's CPU time in the
//! measured window of the 1,000-call step per 1,000 packets it delivered.

use super::*;

use std::net::UdpSocket;

const BAL: Ipv4Addr = lab::BALANCER_CLIENT_SIDE_V4;
const SIP_PORT: u16 = 5080;
const UAC_PORT: u16 = 5060;
const UAS_PORT: u16 = 5060;
const NG: &str = "127.0.0.1:2223";
const RELAY_CPU: &str = "0";
const GEN_CPU: usize = 1;
const WARM: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(20);
const MAX_LOSS: f64 = 0.001;
/// Below this share of the packets a step should send, the relay held the generator back.
const MIN_OFFERED: f64 = 0.95;
/// The step whose CPU figure is compared (every target reaches it, so like is compared).
const CPU_STEP: u32 = 1000;

pub struct Knobs {
    secs: u64,
    steps: Vec<u32>,
    /// BENCH_MEDIA_PORTS="20000-59999": both relays given this port range instead of their
    /// defaults (rows beyond the 2,500 calls the defaults hold).
    ports: Option<(u16, u16)>,
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let secs = std::env::var("BENCH_MEDIA_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5u64).max(1);
        let mut steps: Vec<u32> = std::env::var("BENCH_MEDIA_STEPS")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).filter(|x| *x > 0).collect())
            .filter(|v: &Vec<u32>| !v.is_empty())
            .unwrap_or_else(|| vec![500, 1000, 1500, 2000, 2500]);
        steps.sort_unstable();
        let ports = std::env::var("BENCH_MEDIA_PORTS").ok().and_then(|v| {
            let (a, b) = v.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        });
        Knobs { secs, steps, ports }
    }
}

/// One call's two generator sockets and where each sends.
struct Pair {
    caller: UdpSocket,
    callee: UdpSocket,
    /// Where the caller's packets go (the relay's caller-side port, or the callee itself).
    to_from_caller: SocketAddr,
    to_from_callee: SocketAddr,
}

/// What one measured window gave.
#[derive(Default, Debug, Clone)]
struct Window {
    /// Packets the step should send in the measured window.
    nominal: u64,
    sent: u64,
    received: u64,
    cpu: Option<f64>,
    error: Option<String>,
}

impl Window {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }

    fn clean(&self) -> bool {
        self.error.is_none()
            && self.sent > 0
            && self.loss() < MAX_LOSS
            && self.sent as f64 >= MIN_OFFERED * self.nominal as f64
    }

    fn show(&self) -> String {
        match &self.error {
            Some(e) => format!("failed: {e}"),
            None => format!(
                "sent {} of {} received {} loss {:.3} %{}",
                self.sent,
                self.nominal,
                self.received,
                self.loss() * 100.0,
                self.cpu.map(|c| format!(" relay CPU {c:.2} s")).unwrap_or_default()
            ),
        }
    }
}

fn bind_in(ns: &Netns, addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = ns.run(move || UdpSocket::bind(addr))??;
    Ok(s)
}

fn sdp(ip: Ipv4Addr, port: u16, id: usize) -> String {
    format!(
        "v=0\r\no=bench {id} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 101\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// The audio address of an SDP body.
fn audio_of(body: &[u8]) -> Option<SocketAddr> {
    let s = portier::media::sdp::Sdp::parse(body).ok()?;
    let m = s.media().into_iter().next()?;
    Some(SocketAddr::new(m.address?, m.port))
}

/// Generator sockets for `n` calls: callers in the client namespace, callees in the backend's.
fn sockets(lab: &Lab, n: usize) -> io::Result<Vec<(UdpSocket, UdpSocket)>> {
    let any = |ip: Ipv4Addr| SocketAddr::from((ip, 0));
    (0..n)
        .map(|_| {
            let a = bind_in(&lab.client, any(lab::CLIENT_V4))?;
            let b = bind_in(&lab.backends[0], any(lab::backend_v4(0)))?;
            Ok((a, b))
        })
        .collect()
}

// ---- portier: calls placed over SIP ------------------------------------------------------

fn portier_config(ports: Option<(u16, u16)>) -> String {
    let (client, uas) = (lab::CLIENT_V4, lab::backend_v4(0));
    let media = ports.map(|(a, b)| format!("\n[sip.media]\nports = \"{a}-{b}\"\n")).unwrap_or_default();
    format!(
        r#"[global]
drain_timeout = "1s"
log_level = "warn"

[admin]
listen = "{ADMIN}"

[sip]
listen = ["udp:{BAL}:{SIP_PORT}"]
domain = "bench.example.test"
{media}
[sip.trunks.gen]
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

fn recv_msg(
    s: &UdpSocket,
    want: impl Fn(&portier::sip::Message) -> bool,
) -> io::Result<portier::sip::Message> {
    let mut buf = [0u8; 8192];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let Ok((n, _)) = s.recv_from(&mut buf) else { continue };
        if let Ok(m) = portier::sip::parse_datagram(&buf[..n]) {
            if want(&m) {
                return Ok(m);
            }
        }
    }
    Err(io::Error::other("no answer within 3 s"))
}

/// One call through portier: INVITE from the UAC, answered by the UAS, ACKed. Returns where
/// each side must send (the relay's port for it).
fn place_call(
    uac: &UdpSocket,
    uas: &UdpSocket,
    i: usize,
    a: u16,
    b: u16,
) -> io::Result<(SocketAddr, SocketAddr)> {
    let (client, far) = (lab::CLIENT_V4, lab::backend_v4(0));
    let offer = sdp(client, a, i);
    let call_id = format!("bench-{i}@{client}");
    let invite = format!(
        "INVITE sip:9{i}@{BAL}:{SIP_PORT} SIP/2.0\r\nVia: SIP/2.0/UDP {client}:{UAC_PORT};branch=z9hG4bK-b{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:gen@{client}>;tag=g{i}\r\nTo: <sip:9{i}@{BAL}>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:gen@{client}:{UAC_PORT}>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    uac.send_to(invite.as_bytes(), (BAL, SIP_PORT))?;
    // Ours by the SDP's session id (portier keeps the offer's origin): a retransmitted INVITE
    // of an earlier call is not taken for this one.
    let mine = format!("o=bench {i} ");
    let inv =
        recv_msg(uas, |m| m.method() == Some("INVITE") && String::from_utf8_lossy(m.body()).contains(&mine))?;
    let to_callee_side = audio_of(inv.body()).ok_or_else(|| io::Error::other("INVITE without SDP"))?;
    let answer = sdp(far, b, i);
    let mut ok = portier::sip::ReplyContext::from_message(&inv)
        .and_then(|c| c.response(200, "OK", Some(&format!("f{i}"))).ok())
        .ok_or_else(|| io::Error::other("cannot answer the INVITE"))?;
    let add = |m: &mut portier::sip::Message, h: &str, v: &str| {
        m.push_header(h, v).map_err(|e| io::Error::other(e.to_string()))
    };
    add(&mut ok, "Contact", &format!("<sip:far@{far}:{UAS_PORT}>"))?;
    add(&mut ok, "Content-Type", "application/sdp")?;
    ok.set_body(answer.into_bytes());
    uas.send_to(&ok.to_bytes(), (BAL, SIP_PORT))?;
    let ok = recv_msg(uac, |m| m.status() == Some(200) && m.call_id().is_ok_and(|c| c == call_id))?;
    let to_caller_side = audio_of(ok.body()).ok_or_else(|| io::Error::other("200 without SDP"))?;
    let to = ok.get("To").and_then(|h| h.value_text("To").ok().map(|v| v.into_owned())).unwrap_or_default();
    let contact = match ok.contacts() {
        Ok(portier::sip::ContactList::Addrs(c)) if !c.is_empty() => c[0].uri.to_string(),
        _ => format!("sip:{BAL}:{SIP_PORT}"),
    };
    let ack = format!(
        "ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {client}:{UAC_PORT};branch=z9hG4bK-a{i}\r\nMax-Forwards: 70\r\n\
         From: <sip:gen@{client}>;tag=g{i}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    uac.send_to(ack.as_bytes(), (BAL, SIP_PORT))?;
    relayed(to_caller_side, to_callee_side)
}

/// Both sides were given the relay's address (portier passes an SDP on unrelayed when it has
/// no ports left, which would measure the generator alone).
fn relayed(a: SocketAddr, b: SocketAddr) -> io::Result<(SocketAddr, SocketAddr)> {
    if a.ip() == IpAddr::V4(BAL) && b.ip() == IpAddr::V4(BAL) {
        Ok((a, b))
    } else {
        Err(io::Error::other(format!("SDP not relayed: {a}, {b} (relay ports exhausted?)")))
    }
}

// ---- rtpengine: the ng protocol ------------------------------------------------------------

/// A bencoded dictionary of strings (what ng commands are).
fn bencode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut sorted = pairs.to_vec();
    sorted.sort();
    let mut out = b"d".to_vec();
    for (k, v) in sorted {
        out.extend(format!("{}:{k}{}:", k.len(), v.len()).into_bytes());
        out.extend(v.as_bytes());
    }
    out.push(b'e');
    out
}

/// The end of the bencoded value starting at `i` (strings, integers, lists, dictionaries).
fn bskip(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'i' => Some(b[i..].iter().position(|c| *c == b'e')? + i + 1),
        b'l' | b'd' => {
            let mut j = i + 1;
            while *b.get(j)? != b'e' {
                j = bskip(b, j)?;
            }
            Some(j + 1)
        }
        c if c.is_ascii_digit() => {
            let colon = b[i..].iter().position(|c| *c == b':')? + i;
            let len: usize = std::str::from_utf8(&b[i..colon]).ok()?.parse().ok()?;
            (colon + 1 + len <= b.len()).then_some(colon + 1 + len)
        }
        _ => None,
    }
}

/// The string value of `key` in a bencoded dictionary reply.
fn bdecode_get(reply: &[u8], key: &str) -> Option<Vec<u8>> {
    let mut i = reply.iter().position(|b| *b == b'd')? + 1;
    while *reply.get(i)? != b'e' {
        let k_end = bskip(reply, i)?;
        let colon = reply[i..].iter().position(|c| *c == b':')? + i;
        let k = &reply[colon + 1..k_end];
        let v_end = bskip(reply, k_end)?;
        if k == key.as_bytes() && reply[k_end].is_ascii_digit() {
            let colon = reply[k_end..].iter().position(|c| *c == b':')? + k_end;
            return Some(reply[colon + 1..v_end].to_vec());
        }
        i = v_end;
    }
    None
}

fn ng(sock: &UdpSocket, cookie: usize, pairs: &[(&str, &str)]) -> io::Result<Vec<u8>> {
    let mut msg = format!("c{cookie} ").into_bytes();
    msg.extend(bencode(pairs));
    sock.send_to(&msg, NG)?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = sock.recv_from(&mut buf)?;
    let reply = &buf[..n];
    let body = reply.splitn(2, |b| *b == b' ').nth(1).unwrap_or_default();
    match bdecode_get(body, "result").as_deref() {
        Some(b"ok") | Some(b"pong") => Ok(body.to_vec()),
        _ => Err(io::Error::other(format!("rtpengine: {}", String::from_utf8_lossy(body)))),
    }
}

fn rtpengine_call(ng_sock: &UdpSocket, i: usize, a: u16, b: u16) -> io::Result<(SocketAddr, SocketAddr)> {
    let (call_id, from, to) = (format!("bench-{i}"), format!("g{i}"), format!("f{i}"));
    let offer = sdp(lab::CLIENT_V4, a, i);
    let r = ng(
        ng_sock,
        2 * i,
        &[("command", "offer"), ("call-id", &call_id), ("from-tag", &from), ("sdp", &offer)],
    )?;
    let to_callee_side = bdecode_get(&r, "sdp")
        .and_then(|s| audio_of(&s))
        .ok_or_else(|| io::Error::other("offer without SDP"))?;
    let answer = sdp(lab::backend_v4(0), b, i);
    let r = ng(
        ng_sock,
        2 * i + 1,
        &[
            ("command", "answer"),
            ("call-id", &call_id),
            ("from-tag", &from),
            ("to-tag", &to),
            ("sdp", &answer),
        ],
    )?;
    let to_caller_side = bdecode_get(&r, "sdp")
        .and_then(|s| audio_of(&s))
        .ok_or_else(|| io::Error::other("answer without SDP"))?;
    relayed(to_caller_side, to_callee_side)
}

// ---- the generator -------------------------------------------------------------------------

fn pin_self(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Sends every call's audio both ways for WARM + `secs`; counts what arrives in the measured
/// window (and in a short tail after it).
fn talk(pairs: &[Pair], secs: u64, relay: &[u32]) -> Window {
    let mut packet = vec![0u8; 12 + 160];
    packet[0] = 0x80;
    packet[1] = 8;
    packet[12..].fill(0xd5);
    for p in pairs {
        for s in [&p.caller, &p.callee] {
            let _ = s.set_nonblocking(true);
        }
    }
    let mut buf = [0u8; 2048];
    let ticks = Duration::from_secs(secs).as_millis() as u64 / TICK.as_millis() as u64;
    let mut w = Window { nominal: 2 * pairs.len() as u64 * ticks, ..Window::default() };
    let start = Instant::now();
    let measure_from = start + WARM;
    let end = measure_from + Duration::from_secs(secs);
    let mut cpu0 = None;
    let mut seq: u16 = 0;
    let mut next = start;
    while Instant::now() < end {
        let measuring = Instant::now() >= measure_from;
        if measuring && cpu0.is_none() {
            cpu0 = Some(cpu_secs(relay));
        }
        seq = seq.wrapping_add(1);
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        for p in pairs {
            if p.caller.send_to(&packet, p.to_from_caller).is_ok() && measuring {
                w.sent += 1;
            }
            if p.callee.send_to(&packet, p.to_from_callee).is_ok() && measuring {
                w.sent += 1;
            }
        }
        next += TICK;
        // Read what came back until the next tick is due.
        loop {
            let mut any = false;
            for p in pairs {
                for s in [&p.caller, &p.callee] {
                    while s.recv_from(&mut buf).is_ok() {
                        any = true;
                        if measuring {
                            w.received += 1;
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            if !any {
                std::thread::sleep((next - now).min(Duration::from_millis(2)));
            }
        }
    }
    if let Some(c0) = cpu0 {
        w.cpu = Some(cpu_secs(relay) - c0);
    }
    // The last tick's packets still in flight.
    let tail = Instant::now() + Duration::from_millis(200);
    while Instant::now() < tail {
        for p in pairs {
            for s in [&p.caller, &p.callee] {
                while s.recv_from(&mut buf).is_ok() {
                    w.received += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    w.received = w.received.min(w.sent);
    w
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Relay {
    Portier,
    Rtpengine,
    Direct,
}

impl Relay {
    fn target(self) -> Target {
        match self {
            Relay::Portier => Target::Portier,
            Relay::Rtpengine => Target::Rtpengine,
            Relay::Direct => Target::Direct,
        }
    }
}

/// One step: a fresh relay process, `n` calls set up, their audio measured.
fn step(lab: &Lab, dir: &Path, exe: &Path, relay: Relay, n: u32, mk: &Knobs) -> Window {
    let secs = mk.secs;
    let fail = |e: io::Error| Window { error: Some(e.to_string()), ..Window::default() };
    let socks = match sockets(lab, n as usize) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let addr = |s: &UdpSocket| s.local_addr().expect("bound");
    let mut _portier = None;
    let mut _rtpengine = None;
    let mut pids = Vec::new();
    let mut pairs = Vec::with_capacity(socks.len());
    let setup = (|| -> io::Result<()> {
        match relay {
            Relay::Direct => {
                for (a, b) in socks {
                    let (aa, ba) = (addr(&a), addr(&b));
                    pairs.push(Pair { caller: a, callee: b, to_from_caller: ba, to_from_callee: aa });
                }
            }
            Relay::Portier => {
                let p = PortierProcess::start(&lab.balancer, exe, &portier_config(mk.ports), ADMIN)?;
                let pid = p.pid().unwrap_or(0);
                sip::pin(pid, RELAY_CPU)?;
                pids.push(pid);
                _portier = Some(p);
                let uac = bind_in(&lab.client, SocketAddr::from((lab::CLIENT_V4, UAC_PORT)))?;
                let uas = bind_in(&lab.backends[0], SocketAddr::from((lab::backend_v4(0), UAS_PORT)))?;
                for s in [&uac, &uas] {
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                }
                for (i, (a, b)) in socks.into_iter().enumerate() {
                    let (ta, tb) = place_call(&uac, &uas, i, addr(&a).port(), addr(&b).port())
                        .map_err(|e| io::Error::other(format!("call {i}: {e}")))?;
                    pairs.push(Pair { caller: a, callee: b, to_from_caller: ta, to_from_callee: tb });
                }
            }
            Relay::Rtpengine => {
                let p = Proc::spawn(
                    "rtpengine",
                    lab.balancer
                        .command("taskset")
                        .args(["-c", RELAY_CPU, "rtpengine", "--config-file=/etc/rtpengine/rtpengine.conf"])
                        .arg(format!("--interface={BAL}"))
                        .args(
                            mk.ports
                                .map(|(a, b)| vec![format!("--port-min={a}"), format!("--port-max={b}")])
                                .unwrap_or_default(),
                        )
                        .args([
                            "--foreground",
                            "--log-stderr",
                            "--pidfile",
                            &dir.join("rtpengine.pid").display().to_string(),
                        ]),
                    &dir.join(format!("rtpengine-{n}.log")),
                )?
                .quiet();
                pids.push(p.pid());
                _rtpengine = Some(p);
                let ctl = bind_in(&lab.balancer, "127.0.0.1:0".parse().expect("an address"))?;
                ctl.set_read_timeout(Some(Duration::from_secs(2)))?;
                wait_until(Duration::from_secs(5), "rtpengine's ng port", || {
                    ng(&ctl, 0, &[("command", "ping")]).is_ok()
                })?;
                for (i, (a, b)) in socks.into_iter().enumerate() {
                    let (ta, tb) = rtpengine_call(&ctl, i + 1, addr(&a).port(), addr(&b).port())
                        .map_err(|e| io::Error::other(format!("call {i}: {e}")))?;
                    pairs.push(Pair { caller: a, callee: b, to_from_caller: ta, to_from_callee: tb });
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = setup {
        return fail(e);
    }
    talk(&pairs, secs, &pids)
}

pub fn run(k: &super::Knobs, lab: &Lab, tmp: &Path, exe: &Path, res: &mut Results) -> io::Result<()> {
    let dir = tmp.join("media");
    std::fs::create_dir_all(&dir)?;
    eprintln!("compare: media (logs in {})", dir.display());
    let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    pin_self(GEN_CPU);
    let r = climb(k, lab, &dir, exe, res);
    if let Some(a) = affinity {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &a);
    }
    r
}

fn climb(k: &super::Knobs, lab: &Lab, dir: &Path, exe: &Path, res: &mut Results) -> io::Result<()> {
    let mk = &k.media;
    for round in 0..k.rounds {
        for relay in [Relay::Portier, Relay::Rtpengine] {
            let mut top = None;
            for &n in &mk.steps {
                let w = step(lab, dir, exe, relay, n, mk);
                eprintln!("  media round {}/{} {:?} {n} calls: {}", round + 1, k.rounds, relay, w.show());
                res.sip_log.push(format!("media round {} {:?} {n} calls: {}", round + 1, relay, w.show()));
                if n == CPU_STEP {
                    if let Some(c) = w.cpu.filter(|_| w.clean()) {
                        res.push(0, "media.cpu", relay.target(), c * 1e3 / (w.received as f64 / 1e3));
                    }
                }
                if !w.clean() {
                    break;
                }
                top = Some(n);
                std::thread::sleep(Duration::from_millis(500));
            }
            let top = top.unwrap_or(0);
            res.push(0, "media.calls", relay.target(), f64::from(top));
        }
    }
    let mut top = 0;
    for &n in mk.steps.iter() {
        let w = step(lab, dir, exe, Relay::Direct, n, mk);
        eprintln!("  media limit (no relay) {n} calls: {}", w.show());
        res.sip_log.push(format!("media no relay {n} calls: {}", w.show()));
        if !w.clean() {
            break;
        }
        top = n;
    }
    res.push(0, "media.calls", Target::Direct, f64::from(top));
    Ok(())
}

/// The media rows of the report.
pub fn render(k: &super::Knobs, res: &Results) -> String {
    let mk = &k.media;
    let mut s = String::from("### Media rows\n\n");
    let steps: Vec<String> = mk.steps.iter().map(u32::to_string).collect();
    let calls = |t| fmt_val(res.median(0, "media.calls", t));
    let cpu = |t| fmt_val(res.median(0, "media.cpu", t));
    let _ = writeln!(
        s,
        "Concurrent G.711 calls (50 packets/s each way, RTP header + 160 bytes) relayed on one CPU \
         (CPU {RELAY_CPU}; the generator on CPU {GEN_CPU}) with under {loss} % loss over {secs} s and the generator not held back (≥ 95 % of the \
         packets sent), highest of the steps {steps}, median of {rounds} rounds run A B A B (portier, rtpengine); portier at its \
         defaults (calls placed over SIP through two peer trunks), {rtpengine} with the package's \
         /etc/rtpengine/rtpengine.conf (no kernel module: its userspace relay), driven by its ng \
         protocol (offer/answer){ports}. CPU per 1,000 packets: the relay's CPU time during the measured \
         window of the {CPU_STEP}-call step over the packets it delivered.\n",
        loss = MAX_LOSS * 100.0,
        secs = mk.secs,
        rounds = k.rounds,
        steps = steps.join(", "),
        rtpengine = sh_out("rtpengine", &["--version"]).trim(),
        ports = mk
            .ports
            .map(|(a, b)| format!("; both given the ports {a}-{b} (BENCH_MEDIA_PORTS) instead of their defaults"))
            .unwrap_or_default(),
    );
    let _ = writeln!(s, "| relay | calls (loss < 0.1 %) | CPU ms per 1,000 packets |\n| --- | ---: | ---: |");
    for (name, t) in [("portier", Target::Portier), ("rtpengine (userspace)", Target::Rtpengine)] {
        let _ = writeln!(s, "| {name} | {} | {} |", calls(t), cpu(t));
    }
    let _ = writeln!(s, "| no relay (generator to generator) | {} | - |\n", calls(Target::Direct));
    let r = match (
        res.median(0, "media.calls", Target::Portier),
        res.median(0, "media.calls", Target::Rtpengine),
    ) {
        (Some(p), Some(r)) if r > 0.0 => Some(p / r),
        _ => None,
    };
    let _ = writeln!(s, "portier / rtpengine: {}x calls.\n", fmt_val(r));
    s
}
