//! What a flood costs the engine: stateless challenges, and the `[sip.limits]` bounds on
//! transactions, in total and per source.

use super::*;

fn invite_without_credentials(h: &mut H, from: &str, call_id: &str, branch: &str) -> Vec<Outgoing> {
    let (ruri, to) = ("sip:2002@pbx.example.test", "<sip:2002@pbx.example.test>");
    let text = request("INVITE", ruri, addr(from), "2001", to, call_id, 1, branch, "", SDP);
    h.feed(udp(from), &text)
}

#[test]
fn an_invite_without_credentials_is_challenged_without_a_transaction() {
    let mut h = H::new();
    let trunks = h.e.tx.len();
    let out = invite_without_credentials(&mut h, "198.18.0.99:5060", "flood-1", "z9hG4bKflood1");
    assert_eq!(out.len(), 1, "one 407 and nothing else (no 100 Trying)");
    let first = status(&out, 407).expect("407").msg.clone();
    assert_eq!(first.count("Proxy-Authenticate"), 2, "SHA-256 and MD5");
    assert_eq!(h.e.tx.len(), trunks, "no transaction kept (the trunks' own are there)");
    // The retransmission is answered again, with the same To tag (RFC 3261 8.2.7).
    let out = invite_without_credentials(&mut h, "198.18.0.99:5060", "flood-1", "z9hG4bKflood1");
    let again = status(&out, 407).expect("407 again").msg.clone();
    assert_eq!(again.to().unwrap().tag(), first.to().unwrap().tag());
    // Nothing is retransmitted by timers: the series of 407s of a stateful answer is gone.
    for d in [1, 4] {
        let out = h.tick(Duration::from_secs(d));
        assert!(
            out.iter().all(|o| o.dest.addr != addr("198.18.0.99:5060")),
            "only the trunks' own retransmissions"
        );
    }
    // Another request gets another tag.
    let out = invite_without_credentials(&mut h, "198.18.0.99:5060", "flood-2", "z9hG4bKflood2");
    assert_ne!(status(&out, 407).unwrap().msg.to().unwrap().tag(), first.to().unwrap().tag());
    // The ACK for it finds nothing and sends nothing.
    let to = format!("<sip:2002@pbx.example.test>;tag={}", first.to().unwrap().tag().unwrap());
    let ack = request(
        "ACK",
        "sip:2002@pbx.example.test",
        addr("198.18.0.99:5060"),
        "2001",
        &to,
        "flood-1",
        1,
        "z9hG4bKflood1",
        "",
        "",
    );
    assert!(h.feed(udp("198.18.0.99:5060"), &ack).is_empty());
    assert!(
        h.metric("portier_sip_stateless_challenges_total").ends_with(" 3"),
        "{}",
        h.metric("portier_sip_stateless_challenges")
    );
    // The challenge is a real one: answering it makes a call (`call` does the same dance).
    register(&mut h, "2002", "s3cret-2002", "198.18.0.12:5060");
    let (forks, _) = call(&mut h, "2002", "real-call", SDP);
    assert_eq!(forks.len(), 1);
}

#[test]
fn ten_thousand_unauthenticated_invites_leave_no_state() {
    let mut h = H::new();
    let trunks = h.e.tx.len();
    for i in 0..10_000 {
        let from = format!("198.18.0.{}:5060", 100 + i % 50);
        let out = invite_without_credentials(&mut h, &from, &format!("f{i}"), &format!("z9hG4bKf{i}"));
        assert!(status(&out, 407).is_some());
    }
    assert_eq!((h.e.tx.len(), h.e.server_dest.len(), h.e.per_source.len()), (trunks, 0, 0));
    // A REGISTER without credentials for a known extension: the same.
    let b = h.branch();
    let reg = request(
        "REGISTER",
        "sip:pbx.example.test",
        addr("198.18.0.12:5060"),
        "2002",
        "<sip:2002@pbx.example.test>",
        "r",
        1,
        &b,
        "",
        "",
    );
    assert!(status(&h.feed(udp("198.18.0.12:5060"), &reg), 401).is_some());
    assert_eq!(h.e.tx.len(), trunks);
}

fn options(h: &mut H, from: &str) -> Vec<Outgoing> {
    let b = h.branch();
    let text = request(
        "OPTIONS",
        "sip:pbx.example.test",
        addr(from),
        "x",
        "<sip:pbx.example.test>",
        &b,
        1,
        &b,
        "",
        "",
    );
    h.feed(udp(from), &text)
}

#[test]
fn transactions_beyond_the_limits_get_a_stateless_503_and_are_counted() {
    let config = format!("{CONFIG}\n[sip.limits]\ntransactions = 6\ntransactions_per_source = 3\n");
    let mut h = H::fresh(&config);
    h.tick(Duration::ZERO);
    h.e.take_output();
    // OPTIONS over UDP: each transaction lingers (Timer J) after its 200.
    for _ in 0..3 {
        assert!(status(&options(&mut h, "198.18.0.11:5060"), 200).is_some());
    }
    let out = options(&mut h, "198.18.0.11:5060");
    let refused = status(&out, 503).expect("503 beyond the per-source limit");
    assert_eq!(
        refused.msg.get("Retry-After").map(|v| v.value_text("Retry-After").unwrap().into_owned()).as_deref(),
        Some("5")
    );
    let live = h.e.tx.len();
    assert!(status(&options(&mut h, "198.18.0.12:5060"), 200).is_some(), "another source is served");
    assert_eq!(h.e.tx.len(), live + 1);
    // The table is full (the trunks' transactions count too): everyone gets 503 now.
    while h.e.tx.len() < 6 {
        assert!(status(&options(&mut h, "198.18.0.13:5060"), 200).is_some());
    }
    assert!(status(&options(&mut h, "198.18.0.14:5060"), 503).is_some());
    let m = h.metric("portier_sip_refused_total");
    assert!(m.contains("reason=\"transactions_per_source\"} 1"), "{m}");
    assert!(m.contains("reason=\"transactions\"} 1"), "{m}");
    // Once Timer J (64*T1) has passed, the lingering transactions are gone and requests pass.
    h.tick(Duration::from_secs(33));
    assert!(status(&options(&mut h, "198.18.0.11:5060"), 200).is_some());
    assert_eq!(h.e.per_source.get(&"198.18.0.11".parse().unwrap()), Some(&1));
}
