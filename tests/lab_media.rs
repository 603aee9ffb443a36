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

/// Alice (2001 at .11:5070) calls Carol (2003) once with `scenario_file`, pausing `hold_ms`.
fn alice_calls_carol(scenario_file: &str, hold_ms: u64) -> Call<'_> {
    Call {
        scenario_file,
        ext: "2001",
        secret: "s3cret-2001",
        ip: PHONE1,
        port: 5070,
        number: "2003",
        calls: 1,
        hold_ms,
    }
}

/// Where the caller and the callee were told to send audio: the media of the 200 the caller
/// got and of the INVITE the callee got (sipp writes its trace as messages go).
fn relay_ports(t: &SipTest, caller: &Sipp, callee: &Sipp) -> (SocketAddr, SocketAddr) {
    let mut ports = None;
    t.wait_until(S(5), "the SDP both phones received in their traces", |_| {
        let ok = caller.received().into_iter().find(|m| m.status() == Some(200) && !m.body().is_empty());
        let inv = callee.received().into_iter().find(|m| m.is("INVITE"));
        ports = ok.zip(inv).map(|(o, i)| (audio(&o.body()), audio(&i.body())));
        ports.is_some()
    });
    ports.expect("checked above")
}

/// A call from Alice (2001 at .11:5070, scenario `uac`) to Carol (2003 at .13:5070, `uas`),
/// `hold_ms` the scenario's pause. Returns the sipp runs and where each phone was told
/// to send its audio: (Alice's relay port, Carol's relay port).
fn call(t: &SipTest, hold_ms: u64, uas: &str, uac: &str) -> (Sipp, Sipp, SocketAddr, SocketAddr) {
    t.register("2003", "s3cret-2003", PHONE3, 5070);
    let callee = t.phone_uas(uas, "2003", PHONE3, 5070, 1, S(40));
    let c = alice_calls_carol(uac, hold_ms);
    let args = c.args(&format!("{PBX}:5060"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let caller = t.sipp(&t.lab.phones, "call-2001-to-2003", &args, S(40));
    t.wait_metric("portier_sip_calls_active", &[], 1.0, S(10));
    let (alice_relay, carol_relay) = relay_ports(t, &caller, &callee);
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
    // A receiver report from Carol: 26/256 (10.2 %) lost, 5 in all, jitter 160 (20 ms at 8 kHz).
    let mut report = vec![0x81u8, 201, 0, 7, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 26, 0, 0, 5, 0, 0, 0x10, 0];
    report.extend_from_slice(&[0, 0, 0, 160, 0, 0, 0, 0, 0, 0, 0, 0]);
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
    t.check(
        line.contains(
            "loss_reported_by_caller=- jitter_ms_reported_by_caller=- loss_reported_by_callee=10.2 jitter_ms_reported_by_callee=20.0",
        ),
        &format!("call log has Carol's RTCP report, none from Alice: {line}"),
    );
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

/// Carol at home behind a masquerading NAT (her SDP names her private address, which the PBX
/// cannot reach): once she speaks, the relay learns the NAT's mapping and Alice's audio reaches
/// her through it; both ways arrive complete.
#[test]
fn a_phone_behind_nat_gets_audio_both_ways_through_the_mapping() {
    let t = SipTest::start(&config(""));
    let home = t.lab.nat_home();
    let args = register_args(&format!("{PBX}:5060"), HOME_PHONE, 5072, "2003", "s3cret-2003");
    t.sipp_ok(&home, "register-2003-home", &args.iter().map(String::as_str).collect::<Vec<_>>(), S(8));
    let mut callee = t.sipp(
        &home,
        "uas-2003-home",
        &["-sf", &scenario("uas.xml"), "-i", HOME_PHONE, "-p", "5072", "-s", "2003", "-m", "1"],
        S(40),
    );
    t.wait_bound(&home, "u", HOME_PHONE, 5072);
    let alice = socket(&t.lab.phones, PHONE2, ALICE_RTP);
    let carol = socket(&home, HOME_PHONE, CAROL_RTP);
    let c = Call {
        scenario_file: "call.xml",
        ext: "2001",
        secret: "s3cret-2001",
        ip: PHONE2,
        port: 5074,
        number: "2003",
        calls: 1,
        hold_ms: 6_000,
    };
    let args = c.args(&format!("{PBX}:5060"));
    let mut caller = t.sipp(
        &t.lab.phones,
        "call-2001-to-2003",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        S(40),
    );
    t.wait_metric("portier_sip_calls_active", &[], 1.0, S(10));
    let (alice_relay, carol_relay) = relay_ports(&t, &caller, &callee);

    let voice = pcap_payloads("/usr/share/sip-tester/g711a.pcap");
    // Carol speaks first (symmetric RTP: her packets open the NAT's mapping and teach it to
    // the relay), then both talk at once.
    let mut at_alice = Vec::new();
    let mut at_carol = Vec::new();
    for chunk in voice[..100].chunks(10) {
        for p in chunk {
            carol.send_to(p, carol_relay).unwrap();
            alice.send_to(p, alice_relay).unwrap();
        }
        at_alice.extend(drain(&alice, Duration::from_millis(40)));
        at_carol.extend(drain(&carol, Duration::from_millis(40)));
    }
    at_alice.extend(drain(&alice, Duration::from_millis(300)));
    at_carol.extend(drain(&carol, Duration::from_millis(300)));
    t.check(at_alice.len() == 100, &format!("Alice got {} of Carol's 100 packets", at_alice.len()));
    // Alice's first packets may leave before Carol's first one taught the relay the mapping
    // (they go to her private address and are lost, as without a relay); after that, all.
    t.check(
        at_carol.len() >= 90,
        &format!("Carol got {} of Alice's 100 packets through the NAT", at_carol.len()),
    );
    t.check(
        at_carol.iter().all(|(_, from)| *from == carol_relay),
        "Carol hears the relay's port, through the NAT",
    );
    let want: Vec<&Vec<u8>> = voice[100 - at_carol.len()..100].iter().collect();
    let got: Vec<&Vec<u8>> = at_carol.iter().map(|(p, _)| p).collect();
    t.check(got == want, "Alice's audio reached Carol unchanged and in order");
    for (s, who) in [(&mut caller, "caller"), (&mut callee, "callee behind NAT")] {
        let code = s.wait();
        t.check(code == 0, &format!("sipp {who} exited {code}"));
    }
}

/// nftables counters in the phones namespace of what arrives from the relay: (name, match).
fn count_from_relay(t: &SipTest, counters: &[(&str, String)]) {
    let mut rules =
        String::from("add table inet media; add chain inet media in { type filter hook input priority 0; }");
    for (name, m) in counters {
        rules += &format!(
            "; add counter inet media {name}; add rule inet media in ip saddr {PBX} {m} counter name {name}"
        );
    }
    t.lab.phones.sh(&["nft", &rules]).unwrap_or_else(|e| t.fail(&format!("nft: {e}")));
}

/// Carol registered at .13:5070 answering with uas_rtp.xml (media port 42000, the RFC 2833
/// capture of digit 1 played after the ACK), `extra` added to sipp's arguments.
fn carol_plays_a_digit(t: &SipTest, extra: &[&str]) -> Sipp {
    t.register("2003", "s3cret-2003", PHONE3, 5070);
    let mut args = vec!["-sf", "", "-i", PHONE3, "-p", "5070", "-s", "2003", "-m", "1", "-mp", "42000"];
    let sc = scenario("uas_rtp.xml");
    args[1] = &sc;
    args.extend_from_slice(extra);
    let s = t.sipp(&t.lab.phones, "uas-rtp-2003", &args, S(40));
    t.wait_bound(&t.lab.phones, "u", PHONE3, 5070);
    s
}

/// A named nftables counter's packets in `ns` (`nft list counter inet media NAME`).
fn counted(t: &SipTest, ns: &Netns, name: &str) -> u64 {
    let out = ns
        .sh(&["nft", "list", "counter", "inet", "media", name])
        .unwrap_or_else(|e| t.fail(&format!("nft: {e}")));
    let n = out.split_whitespace().skip_while(|w| *w != "packets").nth(1);
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| t.fail(&format!("no packet count in: {out}")))
}

/// sipp itself talks: the caller plays g711a.pcap, the callee the RFC 2833 capture of digit 1,
/// each to the address its SDP answer or offer named (the relay's). nftables counters in the
/// phones namespace count what reaches each phone's media port from the relay: every packet,
/// both ways.
#[test]
fn sipp_plays_its_captures_through_the_relay_and_every_packet_arrives() {
    let t = SipTest::start(&config(""));
    let ns = &t.lab.phones;
    count_from_relay(
        &t,
        &[
            ("alice", format!("ip daddr {PHONE1} udp dport 41000")),
            ("carol", format!("ip daddr {PHONE3} udp dport 42000")),
        ],
    );
    let mut callee = carol_plays_a_digit(&t, &[]);
    let c = alice_calls_carol("call_rtp.xml", 8_500);
    let mut args = c.args(&format!("{PBX}:5060"));
    args.extend(["-mp".to_string(), "41000".to_string()]);
    let mut caller = t.sipp(ns, "call-rtp-2001", &args.iter().map(String::as_str).collect::<Vec<_>>(), S(40));
    for (s, who) in [(&mut caller, "caller"), (&mut callee, "callee")] {
        let code = s.wait();
        t.check(code == 0, &format!("sipp {who} exited {code}"));
    }
    let voice = pcap_payloads("/usr/share/sip-tester/g711a.pcap").len() as u64;
    let digit = pcap_payloads("/usr/share/sip-tester/dtmf_2833_1.pcap").len() as u64;
    let (at_carol, at_alice) = (counted(&t, ns, "carol"), counted(&t, ns, "alice"));
    t.check(
        at_carol == voice,
        &format!("Carol's media port got {at_carol} of the {voice} packets Alice played"),
    );
    t.check(
        at_alice == digit,
        &format!("Alice's media port got {at_alice} of the {digit} DTMF packets Carol played"),
    );
    t.check(
        t.metric("portier_media_packets_total", &[]) == (voice + digit) as f64,
        "the relay counted what it passed",
    );
}

/// A WAV file (PCM, 16 bits, 48 kHz stereo as baresip's source runs here) of `secs` of a
/// 440 Hz tone.
fn tone_wav(path: &std::path::Path, secs: u32) {
    let (rate, channels) = (48_000u32, 2u16);
    let frames = rate * secs;
    let data_len = frames * u32::from(channels) * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    w.extend_from_slice(&(channels * 2).to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let v = ((i as f64 * 440.0 * 2.0 * std::f64::consts::PI / f64::from(rate)).sin() * 8000.0) as i16;
        for _ in 0..channels {
            w.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, w).unwrap();
}

/// baresip, a real softphone, calls with a WAV file as its microphone through portier to a
/// sipp phone that echoes RTP (`-rtp_echo`) and keys a digit: the audio crosses the relay to
/// sipp and back to baresip, counted by nftables at both phones, and baresip's quit hangs up.
/// (baresip's RTP socket sends from the namespace's first address, not the one its SDP names:
/// the relay answers where the packets come from, symmetric RTP, so baresip's counter counts
/// its ports whatever the address.)
#[test]
fn baresip_talks_from_a_wav_file_to_a_sipp_phone_and_hears_it_back() {
    let carol = "2003 = { name = \"Carol\", secret = \"s3cret-2003\" }";
    // baresip 1.0 authenticates only against an MD5-only realm (see lab_sip.rs).
    let cfg = pbx_config(
        &format!("digest_algorithms = [\"MD5\"]\n\n[sip.media]\nports = \"{}-{}\"\n", RANGE.0, RANGE.1),
        &[ALICE, carol],
        "",
        &[("2XXX", "extension", 0)],
    );
    let t = SipTest::start(&cfg);
    let ns = &t.lab.phones;
    count_from_relay(
        &t,
        &[
            ("sipp", format!("ip daddr {PHONE3} udp dport 42000")),
            ("baresip", "udp dport 41000-41100".into()),
        ],
    );
    let mut callee = carol_plays_a_digit(&t, &["-rtp_echo"]);
    let wav_dir = tempfile::tempdir().unwrap();
    let wav = wav_dir.path().join("tone.wav");
    tone_wav(&wav, 10);
    let dial = format!("/dial sip:2003@{DOMAIN}");
    let source = format!("aufile,{}", wav.display());
    let mut bs =
        Baresip::start_with(&t, "2001", "s3cret-2001", PHONE2, 5090, &source, &["-e", &dial, "-t", "6"]);
    let code = callee.wait();
    let out = bs.stop();
    t.check(code == 0, &format!("the sipp phone exited {code} (0: answered, BYE received)\nbaresip:\n{out}"));
    let (at_sipp, at_baresip) = (counted(&t, ns, "sipp"), counted(&t, ns, "baresip"));
    t.check(
        at_sipp >= 100,
        &format!("sipp got {at_sipp} packets of baresip's audio (want at least 100)\nbaresip:\n{out}"),
    );
    t.check(
        at_baresip >= at_sipp,
        &format!(
            "baresip got {at_baresip} packets back (sipp echoed {at_sipp} and keyed a digit)\nrelay: {}\n{}\nbaresip:\n{out}",
            t.metrics().lines().filter(|l| l.starts_with("portier_media")).collect::<Vec<_>>().join("; "),
            plain(&t.log()).lines().filter(|l| l.contains("sip call")).collect::<Vec<_>>().join("\n")
        ),
    );
    t.wait_metric("portier_sip_calls_total", &["outcome=\"answered\""], 1.0, S(3));
}
