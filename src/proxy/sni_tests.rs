//! Tests for the ClientHello parser (real rustls hellos, hand-built ones, every truncation and
//! fragmentation, hostile input) and for peeking it off a loopback TCP socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

// ---------------------------------------------------------------------------------------------
// Building hellos

/// The bytes a rustls client writes first: its ClientHello, in TLS records.
fn rustls_hello_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    name: &str,
    alpn: &[&str],
) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn rustls_hello(name: &str, alpn: &[&str]) -> Vec<u8> {
    rustls_hello_with(rustls::DEFAULT_VERSIONS, name, alpn)
}

/// The handshake message carried by well-formed `records`.
fn unwrap_records(mut wire: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    while !wire.is_empty() {
        assert_eq!(wire[0], 22);
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        msg.extend_from_slice(&wire[5..5 + len]);
        wire = &wire[5 + len..];
    }
    msg
}

/// `msg` in handshake records, the record lengths taken from `sizes` (the last one repeats).
fn records(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = msg;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i.min(sizes.len() - 1)].min(rest.len());
        i += 1;
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

fn extension(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut out = ty.to_be_bytes().to_vec();
    out.extend_from_slice(&u16be(data.len()));
    out.extend_from_slice(data);
    out
}

fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in names {
        list.push(*ty);
        list.extend_from_slice(&u16be(name.len()));
        list.extend_from_slice(name);
    }
    let mut data = u16be(list.len()).to_vec();
    data.extend_from_slice(&list);
    extension(0, &data)
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut data = u16be(list.len()).to_vec();
    data.extend_from_slice(&list);
    extension(16, &data)
}

/// A ClientHello handshake message (header included) with the given extensions, or with no
/// extensions block at all when `exts` is `None`.
fn hello_msg(exts: Option<&[Vec<u8>]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0xab; 32]); // random
    body.push(32);
    body.extend_from_slice(&[0xcd; 32]); // session_id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // cipher_suites
    body.extend_from_slice(&[1, 0]); // compression_methods: null
    if let Some(exts) = exts {
        let all: Vec<u8> = exts.concat();
        body.extend_from_slice(&u16be(all.len()));
        body.extend_from_slice(&all);
    }
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut msg = vec![1, len[1], len[2], len[3]];
    msg.extend_from_slice(&body);
    msg
}

/// A hello for `name` with ALPN h2 and a large key share, as post-quantum hybrids make them.
fn big_hello(name: &str, key_share_len: usize) -> Vec<u8> {
    let mut exts = vec![sni_ext(&[(0, name.as_bytes())]), alpn_ext(&[b"h2"])];
    let mut left = key_share_len;
    for ty in 51.. {
        let n = left.min(usize::from(u16::MAX));
        exts.push(extension(ty, &vec![0x42; n]));
        left -= n;
        if left == 0 {
            break;
        }
    }
    hello_msg(Some(&exts))
}

fn info(name: Option<&str>, alpn: &[&str]) -> ClientHelloInfo {
    ClientHelloInfo {
        server_name: name.map(str::to_owned),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
        legacy_version: 0x0303,
    }
}

/// Every strict prefix of `wire` is `Incomplete`, asking for more than it has and no more
/// than `wire` holds (so a reader that reads exactly `need_at_least` never over-reads).
fn assert_prefixes_incomplete(wire: &[u8], step: usize) {
    let mut cuts: Vec<usize> = (0..wire.len()).step_by(step).collect();
    cuts.extend(wire.len().saturating_sub(8)..wire.len());
    for cut in cuts {
        match parse_client_hello(&wire[..cut]) {
            Err(HelloError::Incomplete { need_at_least }) => assert!(
                cut < need_at_least && need_at_least <= wire.len(),
                "prefix {cut}/{}: need_at_least {need_at_least}",
                wire.len()
            ),
            other => panic!("prefix {cut}/{}: {other:?}", wire.len()),
        }
    }
}

/// What every answer must satisfy, whatever the input.
fn check_invariants(buf: &[u8], result: &Result<ClientHelloInfo, HelloError>) {
    match result {
        Err(HelloError::Incomplete { need_at_least }) => {
            assert!(*need_at_least > buf.len(), "need {need_at_least} with {} bytes", buf.len());
            assert!(*need_at_least <= MAX_CLIENT_HELLO_LEN);
        }
        Ok(info) => {
            if let Some(name) = &info.server_name {
                assert!(!name.is_empty() && name.len() <= 255);
                assert!(name.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()));
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
            }
            assert!(info.alpn.iter().all(|p| !p.is_empty()));
            assert_eq!(info.legacy_version >> 8, 3);
        }
        Err(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Real hellos

#[test]
fn rustls_hello_with_sni_and_alpn() {
    let wire = rustls_hello("Mail.Example.com", &["h2", "http/1.1"]);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("mail.example.com"), &["h2", "http/1.1"])));
}

#[test]
fn rustls_hello_without_alpn() {
    let wire = rustls_hello("lync.example.org", &[]);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("lync.example.org"), &[])));
}

#[test]
fn rustls_hello_to_an_ip_address_has_no_sni() {
    for ip in ["198.18.2.11", "2001:db8::11"] {
        let wire = rustls_hello(ip, &["h2", "http/1.1"]);
        assert_eq!(parse_client_hello(&wire), Ok(info(None, &["h2", "http/1.1"])), "{ip}");
    }
}

#[test]
fn rustls_tls12_only_hello() {
    let wire = rustls_hello_with(&[&rustls::version::TLS12], "owa.example.com", &["http/1.1"]);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("owa.example.com"), &["http/1.1"])));
}

#[test]
fn every_prefix_of_a_real_hello_is_incomplete() {
    let wire = rustls_hello("mail.example.com", &["h2", "http/1.1"]);
    assert_prefixes_incomplete(&wire, 1);
}

#[test]
fn real_hello_split_across_two_records_at_every_point() {
    let wire = rustls_hello("mail.example.com", &["h2", "http/1.1"]);
    let msg = unwrap_records(&wire);
    let want = info(Some("mail.example.com"), &["h2", "http/1.1"]);
    for split in 1..msg.len() {
        let two = records(&msg, &[split, msg.len()]);
        assert_eq!(parse_client_hello(&two), Ok(want.clone()), "split at {split}");
        // The prefixes around the record boundary must not be mistaken for a whole hello.
        for cut in [5 + split - 1, 5 + split, 5 + split + 1, 5 + split + 5, two.len() - 1] {
            assert!(
                matches!(parse_client_hello(&two[..cut]), Err(HelloError::Incomplete { .. })),
                "split at {split}, cut at {cut}"
            );
        }
    }
}

#[test]
fn hello_in_one_byte_records() {
    let msg = unwrap_records(&rustls_hello("a.example", &["h2"]));
    let wire = records(&msg, &[1]);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("a.example"), &["h2"])));
    assert_prefixes_incomplete(&wire, 7);
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let mut wire = rustls_hello("mail.example.com", &[]);
    wire.extend_from_slice(&[20, 3, 3, 0, 1, 1]); // ChangeCipherSpec
    wire.extend_from_slice(&[23, 3, 3, 0, 3, 9, 9, 9]); // early data
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("mail.example.com"), &[])));
    // Trailing bytes inside the last record, too.
    let mut msg = unwrap_records(&rustls_hello("mail.example.com", &[]));
    msg.extend_from_slice(&[1, 0, 0, 0]);
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(Some("mail.example.com"), &[])));
}

// ---------------------------------------------------------------------------------------------
// Large hellos and the cap

#[test]
fn hello_larger_than_one_record_is_reassembled() {
    let msg = big_hello("pq.example.com", 40_000);
    let wire = records(&msg, &[16384]);
    assert_eq!(wire.len(), msg.len() + 3 * 5);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("pq.example.com"), &["h2"])));
    assert_prefixes_incomplete(&wire, 997);
    // A reader following need_at_least from nothing gets there in a few steps.
    let (mut have, mut steps) = (0, 0);
    loop {
        match parse_client_hello(&wire[..have]) {
            Ok(_) => break,
            Err(HelloError::Incomplete { need_at_least }) => have = need_at_least,
            Err(e) => panic!("{e}"),
        }
        steps += 1;
    }
    assert!(steps <= 6, "{steps} steps");
}

#[test]
fn hello_of_exactly_the_cap_is_accepted() {
    // 64 KiB on the wire: the message plus four record headers.
    let overhead = big_hello("x.example", 0).len() + 4 * 5;
    let msg = big_hello("x.example", MAX_CLIENT_HELLO_LEN - overhead);
    let wire = records(&msg, &[16384]);
    assert_eq!(wire.len(), MAX_CLIENT_HELLO_LEN);
    assert_eq!(parse_client_hello(&wire), Ok(info(Some("x.example"), &["h2"])));
}

#[test]
fn hello_over_the_cap_is_too_large_as_soon_as_its_length_is_known() {
    // (No well-formed hello gets there: the extensions block has a 16-bit length.)
    let mut msg = vec![1];
    msg.extend_from_slice(&70_000u32.to_be_bytes()[1..]);
    msg.resize(4 + 70_000, 0);
    let wire = records(&msg, &[16384]);
    // Record header plus the handshake header: already known too large.
    assert_eq!(parse_client_hello(&wire[..9]), Err(HelloError::TooLarge));
    assert_eq!(parse_client_hello(&wire), Err(HelloError::TooLarge));
    // A message under the cap, cut into records so small that the headers push it over.
    let msg = big_hello("x.example", 20_000);
    let wire = records(&msg, &[2]);
    assert_eq!(parse_client_hello(&wire), Err(HelloError::TooLarge));
    for cut in [0, 9, 100, 1000] {
        assert!(matches!(parse_client_hello(&wire[..cut]), Err(HelloError::Incomplete { .. })), "{cut}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-built hellos: the grammar

#[test]
fn host_name_is_lowercased() {
    let msg = hello_msg(Some(&[sni_ext(&[(0, b"SIP.Example.COM")])]));
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(Some("sip.example.com"), &[])));
}

#[test]
fn hello_without_extensions() {
    let msg = hello_msg(None);
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(None, &[])));
    let msg = hello_msg(Some(&[]));
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(None, &[])));
}

#[test]
fn other_name_types_are_skipped() {
    let msg = hello_msg(Some(&[sni_ext(&[(7, b"\xff\x00whatever"), (0, b"a.example")])]));
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(Some("a.example"), &[])));
    let msg = hello_msg(Some(&[sni_ext(&[(7, b"x")])]));
    assert_eq!(parse_client_hello(&records(&msg, &[16384])), Ok(info(None, &[])));
}

#[test]
fn bad_host_names_are_malformed() {
    let long = vec![b'a'; 256];
    let cases: [(&[u8], &str); 6] = [
        (b"", "empty host_name"),
        (&long, "host_name longer than 255 bytes"),
        (b"b\xc3\xa4r.example", "host_name is not ASCII"),
        (b"evil.example\0.good.example", "host_name contains a control character"),
        (b"a.example\r\nfake log line", "host_name contains a control character"),
        (b"\x7f", "host_name contains a control character"),
    ];
    for (name, why) in cases {
        let msg = hello_msg(Some(&[sni_ext(&[(0, name)])]));
        assert_eq!(parse_client_hello(&records(&msg, &[16384])), Err(HelloError::Malformed(why)), "{name:?}");
    }
    let ok = vec![b'a'; 255];
    let msg = hello_msg(Some(&[sni_ext(&[(0, &ok)])]));
    assert_eq!(parse_client_hello(&records(&msg, &[16384])).unwrap().server_name.unwrap().len(), 255);
}

#[test]
fn ambiguous_sni_or_alpn_is_malformed() {
    let cases: [(Vec<Vec<u8>>, &str); 6] = [
        (
            vec![sni_ext(&[(0, b"a.example")]), sni_ext(&[(0, b"b.example")])],
            "duplicate server_name extension",
        ),
        (vec![sni_ext(&[(0, b"a.example"), (0, b"b.example")])], "more than one host_name"),
        (vec![alpn_ext(&[b"h2"]), alpn_ext(&[b"http/1.1"])], "duplicate ALPN extension"),
        (vec![extension(0, &[0, 0])], "empty server_name list"),
        (vec![extension(0, &[])], "truncated server_name list"),
        (vec![extension(16, &[0, 0])], "empty ALPN list"),
    ];
    for (exts, why) in cases {
        let msg = hello_msg(Some(&exts));
        assert_eq!(parse_client_hello(&records(&msg, &[16384])), Err(HelloError::Malformed(why)), "{why}");
    }
}

#[test]
fn broken_alpn_is_malformed() {
    let cases: [(Vec<u8>, &str); 4] = [
        (alpn_ext(&[b"h2", b""]), "empty ALPN protocol name"),
        (alpn_ext(&[b"\xff\xfe"]), "ALPN protocol name is not UTF-8"),
        (extension(16, &[0, 3, 5, b'h', b'2']), "truncated ALPN protocol name"),
        (extension(16, &[0, 3, 2, b'h', b'2', 0]), "bytes after the ALPN list"),
    ];
    for (ext, why) in cases {
        let msg = hello_msg(Some(&[ext]));
        assert_eq!(parse_client_hello(&records(&msg, &[16384])), Err(HelloError::Malformed(why)), "{why}");
    }
}

#[test]
fn broken_body_fields_are_malformed() {
    let good = hello_msg(None);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut msg = good.clone();
        f(&mut msg);
        let body_len = u32::try_from(msg.len() - 4).unwrap().to_be_bytes();
        msg[1..4].copy_from_slice(&body_len[1..]);
        parse_client_hello(&records(&msg, &[16384]))
    };
    use HelloError::Malformed;
    // Offsets into the message: 4 header, 2 version, 32 random, 1+32 session_id, 2+4 suites,
    // 1+1 compression.
    assert_eq!(with(&|m| m[4] = 2), Err(Malformed("legacy_version is not 3.x")));
    assert_eq!(with(&|m| m.truncate(4 + 20)), Err(Malformed("truncated random")));
    assert_eq!(with(&|m| m.truncate(4 + 34 + 1 + 5)), Err(Malformed("truncated session_id")));
    assert_eq!(with(&|m| m[38] = 33), Err(Malformed("session_id longer than 32 bytes")));
    assert_eq!(with(&|m| m[72] = 3), Err(Malformed("cipher_suites empty or of odd length")));
    assert_eq!(with(&|m| m[72] = 0), Err(Malformed("cipher_suites empty or of odd length")));
    assert_eq!(with(&|m| m[77] = 0), Err(Malformed("no compression method")));
    assert_eq!(with(&|m| m.extend_from_slice(&[0, 0, 7])), Err(Malformed("bytes after the extensions")));
    assert_eq!(with(&|m| m.extend_from_slice(&[0, 9, 0, 0])), Err(Malformed("truncated extensions")));
    assert_eq!(with(&|m| m.extend_from_slice(&[0, 3, 0, 0, 1])), Err(Malformed("truncated extension")));
    assert_eq!(with(&|m| m.truncate(4)), Err(Malformed("truncated legacy_version")));
}

// ---------------------------------------------------------------------------------------------
// Not TLS, broken records

#[test]
fn http_is_not_tls_from_the_first_byte() {
    let req = b"GET /owa/ HTTP/1.1\r\nHost: mail.example.com\r\n\r\n";
    for cut in 1..=req.len() {
        assert_eq!(
            parse_client_hello(&req[..cut]),
            Err(HelloError::NotTls("first record is not a handshake record"))
        );
    }
}

#[test]
fn sslv2_hello_is_not_tls() {
    // SSLv2-compatible CLIENT-HELLO: 2-byte header with the high bit set, msg type 1,
    // version 3.1, then spec/session/challenge lengths.
    let mut v2 = vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
    v2.extend_from_slice(&[0; 0x15 + 0x10]);
    assert_eq!(parse_client_hello(&v2), Err(HelloError::NotTls("SSLv2-style ClientHello")));
}

#[test]
fn not_tls_record_headers() {
    use HelloError::NotTls;
    assert_eq!(
        parse_client_hello(&[23, 3, 3, 0, 1, 0]),
        Err(NotTls("first record is not a handshake record"))
    );
    assert_eq!(parse_client_hello(&[22, 2]), Err(NotTls("record version is not TLS 1.x")));
    assert_eq!(parse_client_hello(&[22, 3, 0]), Err(NotTls("record version is not TLS 1.0 to 1.3")));
    assert_eq!(parse_client_hello(&[22, 3, 5]), Err(NotTls("record version is not TLS 1.0 to 1.3")));
    assert_eq!(parse_client_hello(&[]), Err(HelloError::Incomplete { need_at_least: 9 }));
    assert_eq!(parse_client_hello(&[22, 3, 4, 0]), Err(HelloError::Incomplete { need_at_least: 9 }));
}

#[test]
fn broken_records_are_malformed() {
    use HelloError::Malformed;
    let msg = unwrap_records(&rustls_hello("a.example", &[]));
    assert_eq!(parse_client_hello(&[22, 3, 1, 0, 0]), Err(Malformed("empty handshake record")));
    assert_eq!(parse_client_hello(&[22, 3, 1, 0x40, 1]), Err(Malformed("record longer than 16 KiB")));
    // A Finished message where the hello belongs: refused from its first byte.
    assert_eq!(
        parse_client_hello(&[22, 3, 3, 0, 40, 20]),
        Err(Malformed("first handshake message is not a ClientHello"))
    );
    // An alert between the two fragments of a hello.
    let mut wire = records(&msg[..10], &[10]);
    wire.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert_eq!(parse_client_hello(&wire), Err(Malformed("non-handshake record inside the ClientHello")));
    // A second fragment with a bogus record version.
    let mut wire = records(&msg[..10], &[10]);
    wire.extend_from_slice(&[22, 1, 1]);
    assert_eq!(parse_client_hello(&wire), Err(Malformed("record version is not TLS 1.x")));
}

#[test]
fn garbage_never_parses() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let len = (state % 600) as usize;
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.push(state as u8);
        }
        let result = parse_client_hello(&buf);
        check_invariants(&buf, &result);
        assert!(result.is_err(), "{buf:?}");
    }
}

#[test]
fn errors_read_well() {
    assert_eq!(
        HelloError::Incomplete { need_at_least: 517 }.to_string(),
        "incomplete TLS ClientHello: need at least 517 bytes"
    );
    assert_eq!(
        HelloError::NotTls("SSLv2-style ClientHello").to_string(),
        "not a TLS handshake: SSLv2-style ClientHello"
    );
    assert_eq!(
        HelloError::Malformed("empty host_name").to_string(),
        "malformed TLS ClientHello: empty host_name"
    );
    assert_eq!(HelloError::TooLarge.to_string(), "TLS ClientHello larger than 65536 bytes");
    assert_eq!(PeekError::Hello(HelloError::TooLarge).to_string(), "TLS ClientHello larger than 65536 bytes");
    assert_eq!(
        PeekError::Timeout { received: 0 }.to_string(),
        "no complete TLS ClientHello within the timeout (0 bytes received)"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties

fn host_name_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9-]{1,63}(\\.[a-zA-Z0-9-]{1,63}){0,3}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let result = parse_client_hello(&buf);
        check_invariants(&buf, &result);
    }

    #[test]
    fn arbitrary_bytes_behind_a_hello_header_never_panic(
        version in 1u8..=4,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        extra in 0usize..64,
    ) {
        // Plausible record and handshake headers, so the body grammar is what gets exercised.
        let mut msg = vec![1];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut wire = records(&msg, &[16384]);
        wire[2] = version;
        wire.extend(std::iter::repeat_n(0x16, extra));
        let result = parse_client_hello(&wire);
        check_invariants(&wire, &result);
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
        alpn in any::<bool>(),
    ) {
        let mut wire = rustls_hello("mail.example.com", if alpn { &["h2", "http/1.1"] } else { &[] });
        for (at, byte, op) in edits {
            let i = at.index(wire.len());
            match op {
                0 => wire[i] = byte,
                1 => wire.insert(i, byte),
                _ => { wire.remove(i); }
            }
        }
        let result = parse_client_hello(&wire);
        check_invariants(&wire, &result);
        let cut = cut.index(wire.len() + 1);
        let result = parse_client_hello(&wire[..cut]);
        check_invariants(&wire[..cut], &result);
    }

    #[test]
    fn built_hellos_round_trip_in_any_fragmentation(
        name in host_name_strategy(),
        alpn in proptest::collection::vec("[a-z0-9/.]{1,16}", 0..4),
        key_share in 0usize..20_000,
        sizes in proptest::collection::vec(1usize..=16384, 1..6),
    ) {
        let mut exts = vec![sni_ext(&[(0, name.as_bytes())])];
        let protocols: Vec<&[u8]> = alpn.iter().map(|p| p.as_bytes()).collect();
        if !protocols.is_empty() {
            exts.push(alpn_ext(&protocols));
        }
        exts.push(extension(51, &vec![7; key_share]));
        let msg = hello_msg(Some(&exts));
        let sizes: Vec<usize> = sizes.into_iter().map(|s| s.max(msg.len() / 200)).collect();
        let wire = records(&msg, &sizes);
        let want = ClientHelloInfo {
            server_name: Some(name.to_ascii_lowercase()),
            alpn: alpn.clone(),
            legacy_version: 0x0303,
        };
        prop_assert_eq!(parse_client_hello(&wire), Ok(want));
        for cut in [0, wire.len() / 3, wire.len() / 2, wire.len() - 1] {
            match parse_client_hello(&wire[..cut]) {
                Err(HelloError::Incomplete { need_at_least }) => {
                    prop_assert!(cut < need_at_least && need_at_least <= wire.len());
                }
                other => prop_assert!(false, "prefix {}: {:?}", cut, other),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peeking over loopback TCP

/// A connected loopback pair: (client, server side).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

/// Writes `pieces` with `gap` between them, then keeps the connection open for a while.
fn send_in_pieces(mut client: TcpStream, pieces: Vec<Vec<u8>>, gap: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for piece in pieces {
            client.write_all(&piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(gap).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
}

#[tokio::test]
async fn peeks_a_hello_arriving_in_three_pieces_and_leaves_it_in_the_socket() {
    let msg = unwrap_records(&rustls_hello("mail.example.com", &["h2", "http/1.1"]));
    let wire = records(&msg, &[100, 16384]); // two records, so a piece ends mid-record
    let pieces = vec![wire[..3].to_vec(), wire[3..150].to_vec(), wire[150..].to_vec()];
    let (client, server) = pair().await;
    let writer = send_in_pieces(client, pieces, Duration::from_millis(60));
    let started = Instant::now();
    let got = peek_client_hello(&server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got, info(Some("mail.example.com"), &["h2", "http/1.1"]));
    assert!(started.elapsed() >= Duration::from_millis(100), "answered before the last piece");
    // Everything is still there for the relay.
    let mut server = server;
    let mut again = vec![0u8; wire.len()];
    server.read_exact(&mut again).await.unwrap();
    assert_eq!(again, wire);
    writer.abort();
}

#[tokio::test]
async fn peeks_a_hello_larger_than_the_first_peek() {
    let wire = records(&big_hello("pq.example.com", 40_000), &[16384]);
    let (client, server) = pair().await;
    let writer =
        send_in_pieces(client, vec![wire[..20_000].to_vec(), wire[20_000..].to_vec()], Duration::ZERO);
    let got = peek_client_hello(&server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got, info(Some("pq.example.com"), &["h2"]));
    writer.abort();
}

#[tokio::test]
async fn silent_client_times_out() {
    let (_client, server) = pair().await;
    let started = Instant::now();
    let err = peek_client_hello(&server, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout { received: 0 }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// CPU time this thread has used (the current-thread test runtime runs everything on it).
fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::test]
async fn client_stalling_mid_hello_times_out_with_what_it_sent_without_spinning() {
    let wire = rustls_hello("mail.example.com", &[]);
    let (client, server) = pair().await;
    let writer = send_in_pieces(client, vec![wire[..40].to_vec()], Duration::ZERO);
    let cpu = thread_cpu_time();
    let err = peek_client_hello(&server, Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout { received: 40 }), "{err:?}");
    // The 40 bytes keep the socket readable all along; without the backoff this would burn
    // the whole 500 ms.
    let used = thread_cpu_time() - cpu;
    assert!(used < Duration::from_millis(100), "{used:?} of CPU while waiting");
    writer.abort();
}

#[tokio::test]
async fn plain_http_is_refused_at_once() {
    let (mut client, server) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let err = peek_client_hello(&server, Duration::from_secs(10)).await.unwrap_err();
    assert!(
        matches!(err, PeekError::Hello(HelloError::NotTls("first record is not a handshake record"))),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn client_closing_mid_hello_is_refused_at_once() {
    let wire = rustls_hello("mail.example.com", &[]);
    let (mut client, server) = pair().await;
    client.write_all(&wire[..60]).await.unwrap();
    client.shutdown().await.unwrap();
    let started = Instant::now();
    let err = peek_client_hello(&server, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, PeekError::Closed { received: 60 }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let (client, server) = pair().await;
    drop(client);
    let err = peek_client_hello(&server, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, PeekError::Closed { received: 0 }), "{err:?}");
}
