//! Criterion micro-benchmarks of the per-message and per-connection hot spots:
//! the SIP parser and serialiser, the dial-plan matcher, digest verification, the
//! balancing choice, the HTTP/1.1 fast path's head handling and a TLS handshake. `cargo bench --bench micro` (add a filter, e.g. `-- sip/parse`).
//! Results are recorded in docs/PERFORMANCE.md ("Micro-benchmarks"), never asserted.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use portier::balance::{algorithm, Pool};
use portier::config::{Balance, PoolConfig, ServerConfig};
use portier::metrics::Metrics;
use portier::proxy::http::h1::head::{Head, Parsed};
use portier::sip::dialplan::{DialPlan, Pattern, Rule, Target};
use portier::sip::digest::{self, Algorithm, DigestServer, Verdict};
use portier::sip::parse_datagram;

/// A typical desk-phone INVITE with SDP (about 1 KB, 14 header fields incl. compact forms).
const INVITE: &str = "INVITE sip:2002@pbx.example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.18.0.11:5060;branch=z9hG4bK-524287-1---8ad5e3f1c5a1d6b7;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:2001@198.18.0.11:5060;transport=udp>\r\n\
To: <sip:2002@pbx.example.test>\r\n\
From: \"Alice\" <sip:2001@pbx.example.test>;tag=4f9e2a1b\r\n\
Call-ID: YzBmOWQ3ZGM1NzE0ZTk0MmI1ZWVmNzZkYjUxMTA0NjA\r\n\
CSeq: 2 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE, UPDATE\r\n\
Content-Type: application/sdp\r\n\
Supported: replaces, norefersub, extended-refer, timer, X-cisco-serviceuri\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Allow-Events: talk, hold, conference, refer, check-sync\r\n\
Proxy-Authorization: Digest username=\"2001\",realm=\"pbx.example.test\",nonce=\"AAAAAGsH2CXpYG07KHi8xZdwoE15XJHjbIZTOZurrMS04VJcd3WJHZLocLSC-l0ByVEskRlEk3M\",uri=\"sip:2002@pbx.example.test\",response=\"0b1c2a3bd1f0b7a61d3e5d4c2b1a0f9e\",algorithm=MD5,cnonce=\"0a4f113b\",qop=auth,nc=00000001\r\n\
Content-Length: 342\r\n\
\r\n\
v=0\r\n\
o=- 20010 20010 IN IP4 198.18.0.11\r\n\
s=SDP data\r\n\
c=IN IP4 198.18.0.11\r\n\
t=0 0\r\n\
m=audio 11780 RTP/AVP 8 0 9 18 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:11781 IN IP4 198.18.0.11\r\n\
a=x-pad:0123456789012345678901234567890123456789\r\n";

/// A REGISTER answering the registrar's challenge.
const REGISTER: &str = "REGISTER sip:pbx.example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.18.0.11:5060;branch=z9hG4bK-1833913271;rport\r\n\
From: \"Alice\" <sip:2001@pbx.example.test>;tag=1029348521\r\n\
To: \"Alice\" <sip:2001@pbx.example.test>\r\n\
Call-ID: 0_2617466733@198.18.0.11\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:2001@198.18.0.11:5060>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-805ec0a1b2c3>\"\r\n\
Authorization: Digest username=\"2001\", realm=\"pbx.example.test\", nonce=\"AAAAAGsH2CXpYG07KHi8xZdwoE15XJHjbIZTOZurrMS04VJcd3WJHZLocLSC-l0ByVEskRlEk3M\", uri=\"sip:pbx.example.test\", response=\"2c9e8d5b1a0f3e4d5c6b7a8998a7b6c5\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001\r\n\
Max-Forwards: 70\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
Content-Length: 0\r\n\
\r\n";

fn sip(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    for (name, text) in [("invite_sdp", INVITE), ("register", REGISTER)] {
        let bytes = text.as_bytes();
        parse_datagram(bytes).unwrap_or_else(|e| panic!("{name} does not parse: {e:?}"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("parse", name), bytes, |b, m| {
            b.iter(|| parse_datagram(black_box(m)))
        });
        // What the engine reads of every request: the typed views are parsed on demand.
        g.bench_with_input(BenchmarkId::new("parse+inspect", name), bytes, |b, m| {
            b.iter(|| {
                let msg = parse_datagram(black_box(m)).unwrap();
                let via = msg.top_via().unwrap();
                let cseq = msg.cseq().unwrap();
                let call_id = msg.call_id().unwrap();
                let from = msg.from().unwrap();
                let to = msg.to().unwrap();
                black_box((via, cseq, call_id, from, to, msg.request_uri().unwrap()));
            })
        });
        let msg = parse_datagram(bytes).unwrap();
        g.bench_with_input(BenchmarkId::new("to_bytes", name), &msg, |b, m| {
            b.iter(|| black_box(m).to_bytes())
        });
        // A B2BUA leg: new Request-URI, our Via on top, one header added, then the wire form.
        g.bench_with_input(BenchmarkId::new("edit+to_bytes", name), &msg, |b, m| {
            b.iter_batched(
                || m.clone(),
                |mut m| {
                    m.set_request_uri("sip:2002@198.18.0.12:5060").unwrap();
                    m.prepend_via("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK-b2b-1;rport").unwrap();
                    m.insert_header(1, "Record-Route", "<sip:198.18.1.1:5060;lr>").unwrap();
                    m.to_bytes()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Ten rules in the style of configs/pbx.toml and the README's pattern elements.
fn dial_plan() -> DialPlan {
    let rule = |p: &str, to: Target, strip: usize, prepend: &str| Rule {
        pattern: Pattern::parse(p).unwrap(),
        to,
        strip,
        prepend: prepend.to_string(),
    };
    let trunk = |t: &str| Target::Trunk(t.into());
    DialPlan {
        rules: vec![
            rule("2XXX", Target::Extension, 0, ""),
            rule("1XXX", trunk("exchange-um"), 0, ""),
            rule("*9[0-5]", trunk("features"), 0, ""),
            rule("112", trunk("isp"), 0, ""),
            rule("11[02-9]", trunk("isp"), 0, ""),
            rule("[15-7]XX", trunk("legacy"), 0, ""),
            rule("NXXNXXXXXX", trunk("us"), 0, "+1"),
            rule("00Z.", trunk("isp"), 1, ""),
            rule("0Z.", trunk("isp"), 0, ""),
            rule("9.", trunk("far"), 1, ""),
        ],
    }
}

fn dialplan(c: &mut Criterion) {
    let plan = dialplan_checked();
    let mut g = c.benchmark_group("dialplan");
    // First rule, the last rule, a long international number, and no match (all ten tried).
    for (name, number) in
        [("first", "2001"), ("last", "9123"), ("international", "00441632960123"), ("none", "#31#")]
    {
        g.bench_with_input(BenchmarkId::new("route", name), number, |b, n| {
            b.iter(|| plan.route(black_box(n)))
        });
    }
    g.finish();
}

fn dialplan_checked() -> DialPlan {
    let plan = dial_plan();
    assert_eq!(plan.route("2001").unwrap().target, Target::Extension);
    assert_eq!(plan.route("9123").unwrap().number, "123");
    assert_eq!(plan.route("00441632960123").unwrap().number, "0441632960123");
    assert!(plan.route("#31#").is_none());
    plan
}

fn digest_auth(c: &mut Criterion) {
    let now = 1_800_000_000;
    let source = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
    let lookup = |u: &str| (u == "2001").then_some("s3cret-2001");
    let mut g = c.benchmark_group("digest");
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let mut server = DigestServer::new("pbx.example.test", Duration::from_secs(300), [7; 32]);
        let challenge = server.challenge(now, false, &[alg]).remove(0);
        let answer = |nc: u32| {
            digest::respond(
                &challenge,
                "REGISTER",
                "sip:pbx.example.test",
                "2001",
                "s3cret-2001",
                "0a4f113b",
                nc,
            )
            .unwrap()
        };
        assert!(matches!(server.verify("REGISTER", &answer(1), lookup, now, source), Verdict::Ok { .. }));
        g.bench_function(BenchmarkId::new("challenge", alg.as_str()), |b| {
            b.iter(|| server.challenge(black_box(now), false, &[alg]))
        });
        // Every verification needs a fresh nonce count (a repeated one is a replay): the
        // credentials are made outside the timed part.
        let mut nc = 1;
        g.bench_function(BenchmarkId::new("verify", alg.as_str()), |b| {
            b.iter_batched(
                || {
                    nc += 1;
                    answer(nc)
                },
                |auth| {
                    let v = server.verify("REGISTER", &auth, lookup, now, source);
                    debug_assert!(matches!(v, Verdict::Ok { .. }));
                    v
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn pool(balance: Balance, n: usize) -> Pool {
    let servers = (0..n)
        .map(|i| ServerConfig {
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 2, 11 + i as u8)),
            port: None,
            weight: 1 + (i % 3) as u32,
            drain: false,
        })
        .collect();
    Pool::new(
        &PoolConfig { name: "p".into(), balance, servers, check: None, tls: None },
        &Metrics::new(),
        |_| None,
    )
}

fn balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance");
    for n in [4usize, 16] {
        for (name, b) in [
            ("roundrobin", Balance::RoundRobin),
            ("leastconn", Balance::LeastConn),
            ("sourcehash", Balance::SourceHash),
        ] {
            let p = pool(b, n);
            let mut client = 0u32;
            // Pool::pick: the choice a new connection makes, one server down.
            g.bench_function(BenchmarkId::new(format!("pick/{name}"), n), |bch| {
                bch.iter(|| {
                    client = client.wrapping_add(1);
                    let ip = IpAddr::V4(Ipv4Addr::from(0xC612_0100 + (client & 0xff)));
                    p.pick(black_box(ip), |i| i != 1)
                })
            });
        }
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 3) as u32).collect();
        g.bench_function(BenchmarkId::new("smooth_schedule", n), |b| {
            b.iter(|| algorithm::smooth_schedule(black_box(&weights)))
        });
    }
    g.finish();
}

/// A browser's GET to OWA (about 600 bytes, 12 fields) and IIS's answer head.
const OWA_GET: &[u8] = b"GET /owa/service.svc?action=GetFolder&ID=-1 HTTP/1.1\r\n\
Host: mail.example.test\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Connection: keep-alive\r\n\
Cookie: X-OWA-CANARY=abcdef0123456789abcdef0123456789; PORTIER=3; ClientId=0123456789ABCDEF\r\n\
X-Requested-With: XMLHttpRequest\r\n\
X-OWA-ActionName: GetFolderAction\r\n\
Referer: https://mail.example.test/owa/\r\n\
Content-Length: 0\r\n\r\n";
const IIS_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Type: application/json; charset=utf-8\r\n\
Server: Microsoft-IIS/7.5\r\nX-AspNet-Version: 4.0.30319\r\nX-Powered-By: ASP.NET\r\n\
Date: Thu, 26 Nov 2026 10:00:00 GMT\r\nContent-Length: 512\r\n\r\n";

/// What the fast path does with every head: parse into ranges, write back without the
/// hop-by-hop fields (`proxy::http::h1::head`).
fn http1(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1");
    let mut head = Head::default();
    let mut out = Vec::with_capacity(1024);
    g.bench_function("request/parse+write", |b| {
        b.iter(|| {
            assert_eq!(head.parse_request(black_box(OWA_GET)), Parsed::Done);
            out.clear();
            head.write_request(OWA_GET, &mut out, &[]);
            black_box(out.len())
        })
    });
    g.bench_function("response/parse+write", |b| {
        b.iter(|| {
            assert_eq!(head.parse_response(black_box(IIS_OK), false), Parsed::Done);
            out.clear();
            head.write_response(IIS_OK, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

/// A full TLS handshake in memory (no sockets), both ends: portier's server configuration,
/// which picks AES-128-GCM in its own order, against the same configuration following the
/// client's order (AES-256-GCM-SHA384 first, as OpenSSL and Windows clients list it). The
/// client's work is the same in both, so the difference is the suite's.
fn tls(c: &mut Criterion) {
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["mail.example.test".to_string()]).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write certificate");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let spec = portier::tls::CertSpec { cert: cert_path, key: key_path };
    let ours = portier::tls::TlsAcceptorHandle::load(&[spec], &[b"http/1.1"])
        .expect("server config")
        .server_config();
    let mut theirs = (*ours).clone();
    theirs.ignore_client_order = false;
    // portier's own client towards servers (no verification): ring's order, AES-256 first.
    let client = portier::tls::client_config(&portier::tls::UpstreamTls::default(), portier::tls::ALPN_HTTP1)
        .expect("client config");
    assert!(format!("{:?}", client.crypto_provider().cipher_suites[0].suite()).contains("AES_256"));
    let mut g = c.benchmark_group("tls");
    for (name, server) in
        [("handshake/aes128-server-order", ours), ("handshake/aes256-client-order", Arc::new(theirs))]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                let name = ServerName::try_from("mail.example.test").expect("name");
                let mut cl = rustls::Connection::from(
                    rustls::ClientConnection::new(client.clone(), name).expect("client"),
                );
                let mut sv =
                    rustls::Connection::from(rustls::ServerConnection::new(server.clone()).expect("server"));
                let mut buf = Vec::with_capacity(8192);
                while cl.is_handshaking() || sv.is_handshaking() {
                    pass(&mut cl, &mut sv, &mut buf);
                    pass(&mut sv, &mut cl, &mut buf);
                }
                black_box(sv.negotiated_cipher_suite())
            })
        });
    }
    g.finish();
}

/// Moves what `from` has to send into `to`.
fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("handshake");
    }
}

criterion_group! {
    name = micro;
    // Short windows: the machine is shared; the numbers are for relative comparisons.
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = sip, dialplan, digest_auth, balance, http1, tls
}
criterion_main!(micro);
