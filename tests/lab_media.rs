//! Lab tests of the media relay (the media issue's "Must be shown by tests"): sipp phones place
//! and answer the calls through portier; the audio is Debian sipp's own captures (g711a.pcap,
//! the RFC 2833/4733 DTMF pcaps), sent and received by the test on UDP sockets inside the
//! phones namespace at the addresses the phones' SDP names, so every datagram can be compared
//! byte for byte. A stranger on the lab (198.18.0.99) plays the RTP Bleed attacker.
//!
//! Topology: tests/common/sip.rs (phones 198.18.0.11 and .13, portier 198.18.1.1).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::sip::*;
use portier::lab::Netns;
use portier::media::sdp::Sdp;

const S: fn(u64) -> Duration = Duration::from_secs;
/// The relay's ports in these tests.
const RANGE: (u16, u16) = (31_000, 31_099);
/// Where call.xml's caller and uas.xml's callee say they receive RTP (RTCP on the next port).
const ALICE_RTP: u16 = 40_000;
const CAROL_RTP: u16 = 40_002;

/// The UDP payloads of a pcap file (libpcap format, Ethernet, IPv4), in order.
fn pcap_payloads(path: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (Debian package sip-tester)"));
    assert_eq!(&data[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "{path}: a little-endian libpcap file");
    assert_eq!(u32::from_le_bytes(data[20..24].try_into().unwrap()), 1, "{path}: Ethernet frames");
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[i + 8..i + 12].try_into().unwrap()) as usize;
        let frame = &data[i + 16..(i + 16 + caplen).min(data.len())];
        i += 16 + caplen;
        // Ethernet II, IPv4 (header length from IHL), UDP.
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = &frame[14 + ihl..];
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        out.push(udp[8..len.min(udp.len())].to_vec());
    }
    out
}

/// A media endpoint of a phone: a UDP socket in the phones namespace.
fn socket(ns: &Netns, ip: &str, port: u16) -> UdpSocket {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let s =
        ns.run(move || UdpSocket::bind(addr)).expect("netns").unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s
}

/// Everything `s` receives until `quiet` passes without a datagram.
fn drain(s: &UdpSocket, quiet: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            out.push((buf[..n].to_vec(), from));
            last = Instant::now();
        }
    }
    out
}

/// The audio address and port of an SDP body.
fn audio(body: &[u8]) -> SocketAddr {
    let sdp = Sdp::parse(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    let m = &sdp.media()[0];
    SocketAddr::new(m.address.expect("an IP address in c="), m.port)
}

fn config(media: &str) -> String {
    let carol = "2003 = { name = \"Carol\", secret = \"s3cret-2003\" }";
    pbx_config(
        &format!("\n[sip.media]\nports = \"{}-{}\"\n{media}", RANGE.0, RANGE.1),
        &[ALICE, carol],
        "",
        &[("2XXX", "extension", 0)],
    )
}

/// A call from Alice (2001 at .11:5070, scenario `uac`) to Carol (2003 at .13:5070, `uas`),
/// `hold_ms` the scenario's pause. Returns the sipp runs and where each phone was told
/// to send its audio: (Alice's relay port, Carol's relay port).
fn call(t: &SipTest, hold_ms: u64, uas: &str, uac: &str) -> (Sipp, Sipp, SocketAddr, SocketAddr) {
    t.register("2003", "s3cret-2003", PHONE3, 5070);
    let callee = t.phone_uas(uas, "2003", PHONE3, 5070, 1, S(40));
    let scenario_file = uac;
    let c = Call {
        scenario_file,
        ext: "2001",
        secret: "s3cret-2001",
        ip: PHONE1,
        port: 5070,
        number: "2003",
        calls: 1,
        hold_ms,
    };
    let args = c.args(&format!("{PBX}:5060"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let caller = t.sipp(&t.lab.phones, "call-2001-to-2003", &args, S(40));
    t.wait_metric("portier_sip_calls_active", &[], 1.0, S(10));
    // sipp writes its trace as messages go: the SDP each phone got names its relay port.
    let mut ports = None;
    t.wait_until(S(5), "the SDP both phones received in their traces", |_| {
        let ok = caller.received().into_iter().find(|m| m.status() == Some(200) && !m.body().is_empty());
        let inv = callee.received().into_iter().find(|m| m.is("INVITE"));
        ports = ok.zip(inv).map(|(o, i)| (audio(&o.body()), audio(&i.body())));
        ports.is_some()
    });
    let (alice_relay, carol_relay) = ports.expect("checked above");
    (caller, callee, alice_relay, carol_relay)
}

#[test]
fn audio_rtcp_and_dtmf_cross_the_relay_byte_for_byte_and_a_forged_source_is_dropped() {
    let t = SipTest::start(&config(""));
    let ns = &t.lab.phones;
    let (alice, alice_rtcp) = (socket(ns, PHONE1, ALICE_RTP), socket(ns, PHONE1, ALICE_RTP + 1));
    let (carol, carol_rtcp) = (socket(ns, PHONE3, CAROL_RTP), socket(ns, PHONE3, CAROL_RTP + 1));
    let stranger = socket(ns, INTRUDER, 40_000);
    let (mut caller, mut callee, alice_relay, carol_relay) = call(&t, 8_000, "uas.xml", "call.xml");

    // Each phone is told the relay's address, a port of the range, never the other phone.
    for (who, a) in [("Alice", alice_relay), ("Carol", carol_relay)] {
        t.check(a.ip().to_string() == PBX, &format!("{who} sends audio to {a}, not to the relay"));
        t.check(
            (RANGE.0..=RANGE.1).contains(&a.port()),
            &format!("{who}'s relay port {a} is outside the range"),
        );
    }
    t.check(alice_relay != carol_relay, "one port per side");
    let rtcp = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + 1);

    let voice = pcap_payloads("/usr/share/sip-tester/g711a.pcap");
    let digits: Vec<Vec<u8>> = ["1", "5", "pound"]
        .iter()
        .flat_map(|d| pcap_payloads(&format!("/usr/share/sip-tester/dtmf_2833_{d}.pcap")))
        .collect();
    t.check(voice.len() > 100 && !digits.is_empty(), "the sipp captures hold RTP");
    // Alice talks (G.711 A-law at its pace, 20 packets a burst); Carol keys digits back.
    let mut heard = Vec::new();
    for chunk in voice.chunks(20) {
        for p in chunk {
            alice.send_to(p, alice_relay).unwrap();
        }
        heard.extend(drain(&carol, Duration::from_millis(60)));
    }
    heard.extend(drain(&carol, Duration::from_millis(300)));
    let got: Vec<&Vec<u8>> = heard.iter().map(|(p, _)| p).collect();
    t.check(got.len() == voice.len(), &format!("Carol got {} of {} packets", got.len(), voice.len()));
    t.check(got.iter().zip(&voice).all(|(a, b)| *a == b), "Alice's audio arrived changed or out of order");
    t.check(
        heard.iter().all(|(_, from)| *from == carol_relay),
        "Carol hears the relay's port, the one in her SDP",
    );
    for p in &digits {
        carol.send_to(p, carol_relay).unwrap();
    }
    let keyed = drain(&alice, Duration::from_millis(500));
    let keyed: Vec<Vec<u8>> = keyed.into_iter().map(|(p, _)| p).collect();
    t.check(
        keyed == digits,
        &format!("DTMF: Alice got {} of {} telephone-events unchanged", keyed.len(), digits.len()),
    );
    // RTCP rides the next ports.
    let report = [
        0x81u8, 201, 0, 7, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
    ];
    carol_rtcp.send_to(&report, rtcp(carol_relay)).unwrap();
    let r = drain(&alice_rtcp, Duration::from_millis(300));
    t.check(r.len() == 1 && r[0].0 == report, "Carol's RTCP report reached Alice's RTCP port");

    // RTP Bleed: a stranger sends to Alice's relay port; nothing of it reaches Carol, and the
    // audio goes on.
    for p in voice.iter().take(50) {
        stranger.send_to(p, alice_relay).unwrap();
    }
    let leaked = drain(&carol, Duration::from_millis(300));
    t.check(leaked.is_empty(), &format!("{} forged packets reached Carol", leaked.len()));
    alice.send_to(&voice[0], alice_relay).unwrap();
    let after = drain(&carol, Duration::from_millis(300));
    t.check(after.len() == 1 && after[0].0 == voice[0], "the call's audio goes on after the attack");
    t.wait_metric("portier_media_dropped_total", &["reason=\"foreign\""], 50.0, S(2));
    t.check(t.metric("portier_media_sessions", &[]) == 1.0, "one relayed call");
    t.check(t.metric("portier_media_ports", &[]) == 4.0, "four ports (RTP, RTCP per side)");

    for (s, who) in [(&mut caller, "caller"), (&mut callee, "callee")] {
        let code = s.wait();
        t.check(code == 0, &format!("sipp {who} exited {code}"));
    }
    t.wait_metric("portier_media_sessions", &[], 0.0, S(3));
    t.check(t.metric("portier_media_ports", &[]) == 0.0, "the ports are closed with the call");
    let log = plain(&t.log());
    let line = log.lines().rfind(|l| l.contains("sip call")).unwrap_or_default().to_string();
    t.check(line.contains("media=relay"), &format!("call log: {line}"));
    let (from_alice, from_carol) = (voice.len() + 1, digits.len() + 1);
    t.check(
        line.contains(&format!("packets_from_caller={from_alice} packets_from_callee={from_carol}")),
        &format!("the call log counts {from_alice} packets from Alice and {from_carol} from Carol: {line}"),
    );
    t.check(line.contains("foreign_dropped=50"), &format!("call log counts the forged packets: {line}"));
}

#[test]
fn a_stream_abandoned_for_the_timeout_ends_the_call_with_bye_both_ways() {
    let t = SipTest::start(&config("timeout = \"2s\"\n"));
    let ns = &t.lab.phones;
    let (alice, carol) = (socket(ns, PHONE1, ALICE_RTP), socket(ns, PHONE3, CAROL_RTP));
    let started = Instant::now();
    // Alice waits for a BYE; Carol's uas.xml too.
    let (mut caller, mut callee, alice_relay, _) = call(&t, 0, "uas.xml", "call_until_bye.xml");
    let voice = pcap_payloads("/usr/share/sip-tester/g711a.pcap");
    for p in voice.iter().take(10) {
        alice.send_to(p, alice_relay).unwrap();
    }
    t.check(drain(&carol, Duration::from_millis(300)).len() == 10, "audio flowed before it stopped");
    // Then silence: after 2 s both legs get a BYE, the phones answer and exit 0.
    for (s, who) in [(&mut caller, "caller"), (&mut callee, "callee")] {
        let code = s.wait();
        t.check(code == 0, &format!("sipp {who} (waiting for portier's BYE) exited {code}"));
    }
    t.check(started.elapsed() < S(20), "the call ended by the media timeout, not sipp's");
    t.check(t.metric("portier_media_timeouts_total", &[]) == 1.0, "the timeout is counted");
    let log = plain(&t.log());
    t.check(log.contains("no media for the call's timeout"), "the timeout is logged");
    t.check(log.contains("media_timeout"), "the call log names why the call ended");
}

#[test]
fn a_call_on_hold_longer_than_the_timeout_survives() {
    let t = SipTest::start(&config("timeout = \"2s\"\n"));
    // Alice holds the call (re-INVITE with a=sendonly, Carol answers a=recvonly) for 5 s,
    // more than twice the timeout, then hangs up: that BYE only succeeds if the call is up.
    let (mut caller, mut callee, _, _) = call(&t, 5_000, "uas_held.xml", "call_hold.xml");
    for (s, who) in [(&mut caller, "caller"), (&mut callee, "callee")] {
        let code = s.wait();
        t.check(code == 0, &format!("sipp {who} exited {code}"));
    }
    t.check(t.metric("portier_media_timeouts_total", &[]) == 0.0, "no media timeout while held");
    let log = plain(&t.log());
    let line = log.lines().rfind(|l| l.contains("sip call")).unwrap_or_default().to_string();
    t.check(line.contains("end_reason=caller_bye"), &format!("the caller ended the held call: {line}"));
}
