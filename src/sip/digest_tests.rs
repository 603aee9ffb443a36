use super::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const KEY: [u8; 32] = [7; 32];
const T0: u64 = 1_700_000_000;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
}

fn server() -> DigestServer {
    DigestServer::new("pbx.example", Duration::from_secs(30), KEY)
}

fn lookup(user: &str) -> Option<&'static str> {
    match user {
        "2001" => Some("s3cret"),
        "Mufasa" => Some("Circle of Life"),
        _ => None,
    }
}

fn param(value: &str, name: &str) -> String {
    parse_digest(value).unwrap().into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap()
}

fn answer(s: &DigestServer, now: u64, alg: Algorithm, pw: &str, nc: u32) -> String {
    let ch = s.challenge(now, false, &[alg]).remove(0);
    respond(&ch, "REGISTER", "sip:pbx.example", "2001", pw, "abc123", nc).unwrap()
}

fn is_ok(v: &Verdict) -> bool {
    matches!(v, Verdict::Ok { username, .. } if username == "2001")
}

// RFC 7616 §3.9.1.
const RFC_SHA256: &str = "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
    algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
    opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
const RFC_MD5: &str = "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
    algorithm=MD5, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
    opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

#[test]
fn rfc7616_vectors() {
    let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    let q = Some(("00000001", RFC_CNONCE));
    let args = ("Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html");
    assert_eq!(
        compute_response(Algorithm::Sha256, args.0, args.1, args.2, args.3, args.4, nonce, q),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
    assert_eq!(
        compute_response(Algorithm::Md5, args.0, args.1, args.2, args.3, args.4, nonce, q),
        "8ca523f5e9506fed4657c9700eebdbec"
    );
    for (ch, want, alg) in [
        (RFC_SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", "SHA-256"),
        (RFC_MD5, "8ca523f5e9506fed4657c9700eebdbec", "MD5"),
    ] {
        let auth = respond(ch, "GET", "/dir/index.html", "Mufasa", "Circle of Life", RFC_CNONCE, 1).unwrap();
        assert_eq!(param(&auth, "response"), want);
        assert_eq!(param(&auth, "algorithm"), alg);
        assert_eq!(param(&auth, "qop"), "auth");
        assert_eq!(param(&auth, "nc"), "00000001");
        assert_eq!(param(&auth, "cnonce"), RFC_CNONCE);
        assert_eq!(param(&auth, "opaque"), "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS");
        assert_eq!(param(&auth, "uri"), "/dir/index.html");
    }
}

#[test]
fn challenge_shape() {
    let s = server();
    let ch = s.challenge(T0, false, &[Algorithm::Sha256, Algorithm::Md5, Algorithm::Sha256]);
    assert_eq!(ch.len(), 2);
    assert_eq!(param(&ch[0], "algorithm"), "SHA-256");
    assert_eq!(param(&ch[1], "algorithm"), "MD5");
    let md5_first = s.challenge(T0, false, &[Algorithm::Md5, Algorithm::Sha256]);
    assert_eq!(param(&md5_first[0], "algorithm"), "MD5", "order as configured");
    assert_eq!(param(&ch[0], "nonce"), param(&ch[1], "nonce"));
    assert_eq!(param(&ch[0], "qop"), "auth");
    assert_eq!(param(&ch[0], "realm"), "pbx.example");
    assert!(!ch[0].contains("stale"));
    let stale = s.challenge(T0, true, &[Algorithm::Sha256]);
    assert_eq!(stale.len(), 1);
    assert_eq!(param(&stale[0], "stale"), "true");
    assert_ne!(s.nonce(T0), s.nonce(T0));
}

#[test]
fn round_trip_both_algorithms() {
    let mut s = server();
    for alg in [Algorithm::Sha256, Algorithm::Md5] {
        let auth = answer(&s, T0, alg, "s3cret", 1);
        let v = s.verify("REGISTER", &auth, lookup, T0 + 1, ip(1));
        assert_eq!(v, Verdict::Ok { username: "2001".into(), uri: "sip:pbx.example".into() });
    }
}

#[test]
fn wrong_password_and_unknown_user() {
    let mut s = server();
    let auth = answer(&s, T0, Algorithm::Sha256, "wrong", 1);
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::BadResponse));
    let ch = s.challenge(T0, false, &[Algorithm::Md5]).remove(0);
    let auth = respond(&ch, "REGISTER", "sip:pbx.example", "9999", "x", "c", 1).unwrap();
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::UnknownUser));
    // Wrong method changes HA2.
    let auth = answer(&s, T0, Algorithm::Md5, "s3cret", 1);
    assert_eq!(s.verify("INVITE", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::BadResponse));
}

#[test]
fn stale_only_when_otherwise_correct() {
    let mut s = server();
    let good = answer(&s, T0, Algorithm::Sha256, "s3cret", 1);
    let bad = answer(&s, T0, Algorithm::Sha256, "nope", 1);
    assert_eq!(
        s.verify("REGISTER", &bad, lookup, T0 + 30, ip(1)),
        Verdict::Rejected(RejectReason::BadResponse)
    );
    assert_eq!(s.verify("REGISTER", &good, lookup, T0 + 30, ip(1)), Verdict::Stale);
    assert!(is_ok(&s.verify("REGISTER", &good, lookup, T0 + 29, ip(1))));
}

#[test]
fn replay_protection() {
    let mut s = server();
    let ch = s.challenge(T0, false, &[Algorithm::Sha256]).remove(0);
    let mk = |nc| respond(&ch, "REGISTER", "sip:pbx.example", "2001", "s3cret", "cn", nc).unwrap();
    assert!(is_ok(&s.verify("REGISTER", &mk(1), lookup, T0, ip(1))));
    assert_eq!(s.verify("REGISTER", &mk(1), lookup, T0, ip(1)), Verdict::Rejected(RejectReason::Replay));
    assert!(is_ok(&s.verify("REGISTER", &mk(2), lookup, T0, ip(1))));
    assert!(is_ok(&s.verify("REGISTER", &mk(5), lookup, T0, ip(1))));
    assert_eq!(s.verify("REGISTER", &mk(3), lookup, T0, ip(1)), Verdict::Rejected(RejectReason::Replay));
    assert_eq!(s.tracked_nonces(), 1);
    s.purge(T0 + 30);
    assert_eq!(s.tracked_nonces(), 0);
}

#[test]
fn replay_table_eviction_never_reopens_replay() {
    let mut s = server();
    s.set_caps(2, 16);
    let a = answer(&s, T0, Algorithm::Md5, "s3cret", 1);
    let b = answer(&s, T0 + 1, Algorithm::Md5, "s3cret", 1);
    let c = answer(&s, T0 + 2, Algorithm::Md5, "s3cret", 1);
    assert!(is_ok(&s.verify("REGISTER", &a, lookup, T0 + 2, ip(1))));
    assert!(is_ok(&s.verify("REGISTER", &b, lookup, T0 + 2, ip(1))));
    assert!(is_ok(&s.verify("REGISTER", &c, lookup, T0 + 2, ip(1))));
    assert!(s.tracked_nonces() <= 2);
    // `a` was evicted: its replay is answered Stale, not Ok.
    assert_eq!(s.verify("REGISTER", &a, lookup, T0 + 2, ip(1)), Verdict::Stale);
    assert_eq!(s.verify("REGISTER", &c, lookup, T0 + 2, ip(1)), Verdict::Rejected(RejectReason::Replay));
}

#[test]
fn forged_and_foreign_nonces() {
    let mut s = server();
    let auth = answer(&s, T0, Algorithm::Sha256, "s3cret", 1);
    let nonce = param(&auth, "nonce");
    // Flip one character of the nonce and recompute a correct response for it.
    let mut forged: Vec<u8> = nonce.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let ch = format!("Digest realm=\"pbx.example\", nonce=\"{forged}\", algorithm=SHA-256, qop=\"auth\"");
    let auth = respond(&ch, "REGISTER", "sip:pbx.example", "2001", "s3cret", "c", 1).unwrap();
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::BadNonce));
    // A nonce minted under another key.
    let other = DigestServer::new("pbx.example", Duration::from_secs(30), [8; 32]);
    let auth = answer(&other, T0, Algorithm::Sha256, "s3cret", 1);
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::BadNonce));
    // RFC example nonce (not ours).
    let auth = respond(RFC_SHA256, "REGISTER", "sip:x", "2001", "s3cret", "c", 1).unwrap();
    let auth = auth.replace("http-auth@example.org", "pbx.example");
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0, ip(1)), Verdict::Rejected(RejectReason::BadNonce));
}

#[test]
fn field_checks() {
    let mut s = server();
    s.set_rate_limit(RateLimit { max_failures: 100, ..RateLimit::default() });
    let nonce = s.nonce(T0);
    let base = |extra: &str| {
        format!("Digest username=\"2001\", realm=\"pbx.example\", nonce=\"{nonce}\", uri=\"sip:pbx.example\", response=\"00\"{extra}")
    };
    let rej = |s: &mut DigestServer, h: &str| s.verify("REGISTER", h, lookup, T0, ip(9));
    assert_eq!(
        rej(&mut s, &base(", algorithm=SHA-512, qop=auth, nc=00000001, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::UnsupportedAlgorithm)
    );
    assert_eq!(
        rej(&mut s, &base(", algorithm=MD5-sess, qop=auth, nc=00000001, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::UnsupportedAlgorithm)
    );
    assert_eq!(
        rej(&mut s, &base(", qop=auth-int, nc=00000001, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::UnsupportedQop)
    );
    assert_eq!(rej(&mut s, &base("")), Verdict::Rejected(RejectReason::UnsupportedQop));
    assert_eq!(
        rej(&mut s, &base(", qop=auth, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::Malformed(DigestError::Missing("nc")))
    );
    assert_eq!(
        rej(&mut s, &base(", qop=auth, nc=00000001")),
        Verdict::Rejected(RejectReason::Malformed(DigestError::Missing("cnonce")))
    );
    assert_eq!(
        rej(&mut s, &base(", qop=auth, nc=1, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::Malformed(DigestError::Invalid("nc")))
    );
    assert_eq!(
        rej(&mut s, &base(", qop=auth, nc=00000000, cnonce=\"x\"")),
        Verdict::Rejected(RejectReason::Malformed(DigestError::Invalid("nc")))
    );
    let wrong_realm =
        base(", qop=auth, nc=00000001, cnonce=\"x\"").replace("pbx.example\", nonce", "evil\", nonce");
    assert_eq!(rej(&mut s, &wrong_realm), Verdict::Rejected(RejectReason::WrongRealm));
    assert_eq!(
        rej(&mut s, "Digest realm=\"pbx.example\""),
        Verdict::Rejected(RejectReason::Malformed(DigestError::Missing("username")))
    );
    assert_eq!(
        rej(&mut s, "Basic Zm9vOmJhcg=="),
        Verdict::Rejected(RejectReason::Malformed(DigestError::NotDigest))
    );
}

#[test]
fn lenient_syntax_is_accepted() {
    let mut s = server();
    let nonce = s.nonce(T0);
    let resp = compute_response(
        Algorithm::Md5,
        "20\"01",
        "pbx.example",
        "pw",
        "REGISTER",
        "sip:pbx.example",
        &nonce,
        Some(("0000000a", "c n")),
    )
    .to_uppercase();
    // Any order, odd case, escapes, unquoted tokens, extra whitespace and empty elements.
    let h = format!(
        "  digest CNONCE=\"c n\" ,, NC=0000000a,QOP=auth , Response = \"{resp}\", uri=sip:pbx.example,\
         nonce=\"{nonce}\", Realm=\"pbx\\.example\", USERNAME=\"20\\\"01\", Algorithm=md5, foo=bar"
    );
    let v = s.verify("REGISTER", &h, |u: &str| (u == "20\"01").then_some("pw"), T0, ip(1));
    assert_eq!(v, Verdict::Ok { username: "20\"01".into(), uri: "sip:pbx.example".into() });
}

#[test]
fn rfc2069_form_is_opt_in() {
    let mut s = server();
    let ch = format!("Digest realm=\"pbx.example\", nonce=\"{}\"", s.nonce(T0));
    let auth = respond(&ch, "REGISTER", "sip:pbx.example", "2001", "s3cret", "c", 1).unwrap();
    assert!(!auth.contains("qop"));
    assert_eq!(param(&auth, "algorithm"), "MD5");
    assert_eq!(
        s.verify("REGISTER", &auth, lookup, T0, ip(1)),
        Verdict::Rejected(RejectReason::UnsupportedQop)
    );
    s.set_allow_rfc2069(true);
    assert!(is_ok(&s.verify("REGISTER", &auth, lookup, T0, ip(1))));
    assert_eq!(s.verify("REGISTER", &auth, lookup, T0 + 30, ip(1)), Verdict::Stale);
}

#[test]
fn client_errors() {
    let r = |ch: &str| respond(ch, "REGISTER", "sip:x", "u", "p", "c", 1);
    assert_eq!(r("Basic realm=\"x\""), Err(DigestError::NotDigest));
    assert_eq!(r("Digest nonce=\"n\""), Err(DigestError::Missing("realm")));
    assert_eq!(r("Digest realm=\"r\""), Err(DigestError::Missing("nonce")));
    assert_eq!(
        r("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256"),
        Err(DigestError::UnsupportedAlgorithm("SHA-512-256".into()))
    );
    assert_eq!(
        r("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\""),
        Err(DigestError::UnsupportedQop("auth-int".into()))
    );
    assert_eq!(
        r("Digest realm=\"r\", realm=\"s\", nonce=\"n\""),
        Err(DigestError::Duplicate("realm".into()))
    );
    assert_eq!(r("Digest realm=\"r, nonce=\"n\""), Err(DigestError::Malformed));
    assert_eq!(r("Digest realm"), Err(DigestError::Malformed));
}

#[test]
fn rate_limit_and_cooldown() {
    let mut s = server();
    s.set_rate_limit(RateLimit {
        max_failures: 3,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(120),
    });
    let bad = answer(&s, T0, Algorithm::Md5, "nope", 1);
    for _ in 0..3 {
        assert_eq!(
            s.verify("REGISTER", &bad, lookup, T0, ip(1)),
            Verdict::Rejected(RejectReason::BadResponse)
        );
    }
    // Blocked, even with correct credentials; other sources are unaffected.
    let good = answer(&s, T0, Algorithm::Md5, "s3cret", 1);
    assert_eq!(s.verify("REGISTER", &good, lookup, T0 + 1, ip(1)), Verdict::RateLimited);
    assert!(is_ok(&s.verify("REGISTER", &good, lookup, T0 + 1, ip(2))));
    assert_eq!(s.verify("REGISTER", &good, lookup, T0 + 119, ip(1)), Verdict::RateLimited);
    // Cool-down over.
    let good = answer(&s, T0 + 120, Algorithm::Md5, "s3cret", 1);
    assert!(is_ok(&s.verify("REGISTER", &good, lookup, T0 + 120, ip(1))));
}

#[test]
fn failures_outside_window_do_not_accumulate() {
    let mut s = server();
    s.set_rate_limit(RateLimit {
        max_failures: 3,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(120),
    });
    for k in 0..10 {
        let t = T0 + k * 31;
        let bad = answer(&s, t, Algorithm::Md5, "nope", 1);
        assert_eq!(
            s.verify("REGISTER", &bad, lookup, t, ip(1)),
            Verdict::Rejected(RejectReason::BadResponse),
            "k={k}"
        );
    }
}

#[test]
fn failure_table_is_bounded_and_keeps_blocks() {
    let mut s = server();
    s.set_caps(16, 4);
    s.set_rate_limit(RateLimit {
        max_failures: 2,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(600),
    });
    let bad = answer(&s, T0, Algorithm::Md5, "nope", 1);
    s.verify("REGISTER", &bad, lookup, T0, ip(1));
    s.verify("REGISTER", &bad, lookup, T0, ip(1));
    for n in 10..200 {
        s.verify("REGISTER", &bad, lookup, T0, ip(n));
        assert!(s.tracked_sources() <= 4);
    }
    assert_eq!(s.verify("REGISTER", &bad, lookup, T0 + 1, ip(1)), Verdict::RateLimited);
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(h in ".{0,300}", m in "[A-Z]{0,8}") {
        let mut s = server();
        let _ = s.verify(&m, &h, lookup, T0, ip(1));
        let _ = respond(&h, &m, "sip:x", "u", "p", "c", 1);
        let _ = parse_digest(&h);
    }

    #[test]
    fn digest_shaped_input_never_panics(
        parts in proptest::collection::vec(
            ("[a-zA-Z]{1,10}", prop_oneof![
                "\"([^\"\\\\]|\\\\.){0,20}\"",
                "[a-zA-Z0-9/:@.=-]{0,20}",
                "\"[^\"]{0,20}",
                ".{0,5}",
            ]),
            0..10,
        ),
        sep in prop_oneof![Just(", "), Just(","), Just(" "), Just(",,")],
    ) {
        let body: Vec<String> = parts.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let h = format!("Digest {}", body.join(sep));
        let mut s = server();
        let _ = s.verify("REGISTER", &h, lookup, T0, ip(1));
        let _ = respond(&h, "REGISTER", "sip:x", "u", "p", "c", 1);
    }

    #[test]
    fn tampered_valid_credentials_never_ok(pos in 0usize..400, byte in 0x20u8..0x7f) {
        let mut s = server();
        let auth = answer(&s, T0, Algorithm::Sha256, "s3cret", 1);
        let mut b = auth.clone().into_bytes();
        let pos = pos % b.len();
        prop_assume!(b[pos] != byte);
        b[pos] = byte;
        let tampered = String::from_utf8(b).unwrap();
        let v = s.verify("REGISTER", &tampered, lookup, T0, ip(1));
        // Only changes that keep the meaning (case of names/hex, whitespace, ...) may pass.
        if let Verdict::Ok { .. } = v {
            let a = parse_digest(&auth).unwrap();
            let t = parse_digest(&tampered).unwrap();
            for name in ["username", "realm", "nonce", "uri", "nc", "cnonce"] {
                let get = |p: &Vec<(String, String)>| p.iter().find(|(n, _)| n == name).cloned();
                prop_assert_eq!(get(&a), get(&t));
            }
        }
    }
}
