//! Transaction tests with injected time: no sockets, no sleeps.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::sip::{parse_datagram, ReplyContext};

const MS: Duration = Duration::from_millis(1);

fn request(method: &str, transport: &str) -> Message {
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/{transport} 192.0.2.1:5060;branch=z9hG4bKtx1\r\n\
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdown\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: call1@192.0.2.1\r\n\
CSeq: 7 {method}\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Length: 0\r\n\r\n"
    );
    parse_datagram(text.as_bytes()).unwrap()
}

fn reply(req: &Message, code: u16) -> Message {
    let tag = (code > 100).then_some("b2");
    ReplyContext::from_message(req).unwrap().response(code, "Reason", tag).unwrap()
}

fn ack_to(req: &Message) -> Message {
    let mut ack = req.clone();
    ack.set_request_uri("sip:bob@example.com").unwrap();
    let text =
        String::from_utf8(ack.to_bytes()).unwrap().replacen("INVITE", "ACK", 1).replace("7 INVITE", "7 ACK");
    parse_datagram(text.as_bytes()).unwrap()
}

fn transmits(actions: &[Action]) -> Vec<&Message> {
    actions.iter().filter_map(|a| if let Action::Transmit(m) = a { Some(m) } else { None }).collect()
}

// ---- INVITE client ----------------------------------------------------------------------------

#[test]
fn invite_client_udp_retransmits_until_timer_b() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, a) = InviteClient::new(inv.clone(), Timers::default(), false, t0);
    assert_eq!(a, vec![Action::Transmit(inv.clone())]);
    // A: 500, 1000, 2000, 4000, 8000, 16000 ms intervals → sends at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    let mut at = t0;
    let mut interval = 500 * MS;
    let mut sends = Vec::new();
    while at + interval < t0 + 32_000 * MS {
        at += interval;
        assert_eq!(tx.next_deadline(), Some(at));
        assert_eq!(tx.handle(Event::Timer, at - MS), vec![], "not before its deadline");
        assert_eq!(tx.handle(Event::Timer, at), vec![Action::Transmit(inv.clone())]);
        sends.push((at - t0).as_millis());
        interval *= 2;
    }
    assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
    // The next A would be at 63.5 s, after B at 32 s.
    assert_eq!(tx.next_deadline(), Some(t0 + 32_000 * MS));
    assert_eq!(tx.handle(Event::Timer, t0 + 32_000 * MS), vec![Action::Timeout, Action::Terminated]);
    assert_eq!(tx.state(), InviteClientState::Terminated);
    assert_eq!(tx.next_deadline(), None);
    assert_eq!(tx.handle(Event::Received(reply(&inv, 200)), t0 + 33_000 * MS), vec![]);
}

#[test]
fn invite_client_provisional_stops_retransmission() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteClient::new(inv.clone(), Timers::default(), false, t0);
    let ringing = reply(&inv, 180);
    assert_eq!(tx.handle(Event::Received(ringing.clone()), t0 + 100 * MS), vec![Action::Deliver(ringing)]);
    assert_eq!(tx.state(), InviteClientState::Proceeding);
    assert_eq!(tx.next_deadline(), None);
    assert_eq!(tx.handle(Event::Timer, t0 + 600 * MS), vec![]);
    assert_eq!(tx.handle(Event::Timer, t0 + 40_000 * MS), vec![], "no timer B in Proceeding");
}

#[test]
fn invite_client_failure_is_acked_and_absorbed() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteClient::new(inv.clone(), Timers::default(), false, t0);
    tx.handle(Event::Received(reply(&inv, 180)), t0 + 100 * MS);
    let busy = reply(&inv, 486);
    let a = tx.handle(Event::Received(busy.clone()), t0 + 200 * MS);
    assert_eq!(a.len(), 2);
    let Action::Transmit(ack) = &a[0] else { panic!("ACK first: {a:?}") };
    assert_eq!(a[1], Action::Deliver(busy.clone()));
    assert_eq!(tx.state(), InviteClientState::Completed);

    // RFC 3261 §17.1.1.3.
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.request_uri().unwrap(), inv.request_uri().unwrap());
    assert_eq!(ack.call_id().unwrap(), "call1@192.0.2.1");
    assert_eq!(ack.from().unwrap(), inv.from().unwrap());
    assert_eq!(ack.to().unwrap().tag(), Some("b2"));
    assert_eq!(ack.to().unwrap(), busy.to().unwrap());
    let cseq = ack.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method.as_str()), (7, "ACK"));
    let vias = ack.vias().unwrap();
    assert_eq!(vias.len(), 1, "only the top Via");
    assert_eq!(vias[0], inv.top_via().unwrap());
    assert_eq!(ack.routes().unwrap(), inv.routes().unwrap());
    assert_eq!(ack.routes().unwrap().len(), 2);
    assert_eq!(ack.get("Contact"), None);
    assert_eq!(ack.body(), b"");
    assert_eq!(tx.ack(), Some(ack));

    // Retransmitted 486: the same ACK again, not delivered.
    let again = tx.handle(Event::Received(busy.clone()), t0 + 700 * MS);
    assert_eq!(again, vec![Action::Transmit(ack.clone())]);
    assert_eq!(transmits(&again)[0].to_bytes(), ack.to_bytes());
    // Provisionals are ignored in Completed.
    assert_eq!(tx.handle(Event::Received(reply(&inv, 180)), t0 + 800 * MS), vec![]);

    // Timer D: 32 s after the 486.
    assert_eq!(tx.next_deadline(), Some(t0 + 32_200 * MS));
    assert_eq!(tx.handle(Event::Timer, t0 + 32_199 * MS), vec![]);
    assert_eq!(tx.handle(Event::Timer, t0 + 32_200 * MS), vec![Action::Terminated]);
    assert_eq!(tx.handle(Event::Received(busy), t0 + 33_000 * MS), vec![]);
}

#[test]
fn invite_client_2xx_terminates_without_ack() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteClient::new(inv.clone(), Timers::default(), false, t0);
    let ok = reply(&inv, 200);
    assert_eq!(
        tx.handle(Event::Received(ok.clone()), t0 + 300 * MS),
        vec![Action::Deliver(ok), Action::Terminated]
    );
    assert!(tx.is_terminated());
    assert_eq!(tx.ack(), None);
}

#[test]
fn invite_client_reliable() {
    let t0 = Instant::now();
    let inv = request("INVITE", "TCP");
    let (mut tx, _) = InviteClient::new(inv.clone(), Timers::default(), true, t0);
    assert_eq!(tx.next_deadline(), Some(t0 + 32_000 * MS), "no timer A, only B");
    let busy = reply(&inv, 486);
    let a = tx.handle(Event::Received(busy.clone()), t0 + 10 * MS);
    assert!(matches!(a.as_slice(), [Action::Transmit(_), Action::Deliver(_), Action::Terminated]), "{a:?}");
}

#[test]
fn invite_client_transport_error_and_configurable_t1() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let timers = Timers { t1: 100 * MS, ..Timers::default() };
    let (mut tx, _) = InviteClient::new(inv.clone(), timers, false, t0);
    assert_eq!(tx.next_deadline(), Some(t0 + 100 * MS));
    assert_eq!(tx.handle(Event::Timer, t0 + 6_400 * MS), vec![Action::Timeout, Action::Terminated]);
    let (mut tx, _) = InviteClient::new(inv, timers, false, t0);
    assert_eq!(tx.handle(Event::TransportError, t0), vec![Action::TransportError, Action::Terminated]);
}

// ---- non-INVITE client ------------------------------------------------------------------------

#[test]
fn non_invite_client_e_doubles_to_t2_then_f() {
    let t0 = Instant::now();
    let req = request("OPTIONS", "UDP");
    let (mut tx, a) = NonInviteClient::new(req.clone(), Timers::default(), false, t0);
    assert_eq!(a, vec![Action::Transmit(req.clone())]);
    let mut sends = Vec::new();
    while let Some(at) = tx.next_deadline() {
        let a = tx.handle(Event::Timer, at);
        if a == vec![Action::Transmit(req.clone())] {
            sends.push((at - t0).as_millis());
        } else {
            assert_eq!(a, vec![Action::Timeout, Action::Terminated]);
            assert_eq!(at, t0 + 32_000 * MS);
        }
    }
    // Intervals 0.5, 1, 2, 4, 4, 4 ... s.
    assert_eq!(&sends[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
    assert_eq!(*sends.last().unwrap(), 31500);
    assert!(tx.is_terminated());
}

#[test]
fn non_invite_client_proceeding_uses_t2_and_k() {
    let t0 = Instant::now();
    let req = request("REGISTER", "UDP");
    let (mut tx, _) = NonInviteClient::new(req.clone(), Timers::default(), false, t0);
    tx.handle(Event::Timer, t0 + 500 * MS); // next E at 1.5 s
    let trying = reply(&req, 100);
    assert_eq!(tx.handle(Event::Received(trying.clone()), t0 + 600 * MS), vec![Action::Deliver(trying)]);
    assert_eq!(tx.state(), NonInviteClientState::Proceeding);
    assert_eq!(tx.handle(Event::Timer, t0 + 1_500 * MS), vec![Action::Transmit(req.clone())]);
    assert_eq!(tx.next_deadline(), Some(t0 + 5_500 * MS), "T2 in Proceeding");
    let ok = reply(&req, 200);
    assert_eq!(tx.handle(Event::Received(ok.clone()), t0 + 2_000 * MS), vec![Action::Deliver(ok.clone())]);
    assert_eq!(tx.state(), NonInviteClientState::Completed);
    assert_eq!(tx.handle(Event::Received(ok), t0 + 2_100 * MS), vec![], "absorbed");
    assert_eq!(tx.next_deadline(), Some(t0 + 7_000 * MS), "K = T4");
    assert_eq!(tx.handle(Event::Timer, t0 + 7_000 * MS), vec![Action::Terminated]);
}

#[test]
fn non_invite_client_reliable() {
    let t0 = Instant::now();
    let req = request("OPTIONS", "TLS");
    let (mut tx, _) = NonInviteClient::new(req.clone(), Timers::default(), true, t0);
    assert_eq!(tx.next_deadline(), Some(t0 + 32_000 * MS), "no E, only F");
    let ok = reply(&req, 200);
    assert_eq!(tx.handle(Event::Received(ok.clone()), t0), vec![Action::Deliver(ok), Action::Terminated]);
}

// ---- INVITE server ----------------------------------------------------------------------------

#[test]
fn invite_server_provisional_and_failure_until_ack() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, a) = InviteServer::new(inv.clone(), Timers::default(), false, t0);
    assert_eq!(a, vec![Action::Deliver(inv.clone())]);
    // Retransmission before any provisional: nothing to re-send.
    assert_eq!(tx.handle(Event::Received(inv.clone()), t0 + 50 * MS), vec![]);
    let ringing = reply(&inv, 180);
    assert_eq!(
        tx.handle(Event::Send(ringing.clone()), t0 + 100 * MS),
        vec![Action::Transmit(ringing.clone())]
    );
    assert_eq!(tx.next_deadline(), None, "no automatic 100 after the TU's 180");
    assert_eq!(tx.handle(Event::Received(inv.clone()), t0 + 500 * MS), vec![Action::Transmit(ringing)]);

    let busy = reply(&inv, 486);
    let t1 = t0 + 1_000 * MS;
    assert_eq!(tx.handle(Event::Send(busy.clone()), t1), vec![Action::Transmit(busy.clone())]);
    assert_eq!(tx.state(), InviteServerState::Completed);
    assert_eq!(tx.handle(Event::Received(inv.clone()), t1 + 10 * MS), vec![Action::Transmit(busy.clone())]);
    // G: 0.5, 1, 2, 4, 4 s.
    let mut sends = Vec::new();
    for _ in 0..5 {
        let at = tx.next_deadline().unwrap();
        assert_eq!(tx.handle(Event::Timer, at), vec![Action::Transmit(busy.clone())]);
        sends.push((at - t1).as_millis());
    }
    assert_eq!(sends, vec![500, 1500, 3500, 7500, 11500]);
    assert_eq!(
        tx.handle(Event::Send(reply(&inv, 200)), t1 + 12_000 * MS),
        vec![],
        "TU can't change its mind"
    );

    assert_eq!(tx.handle(Event::Received(ack_to(&inv)), t1 + 12_000 * MS), vec![]);
    assert_eq!(tx.state(), InviteServerState::Confirmed);
    assert_eq!(tx.handle(Event::Received(ack_to(&inv)), t1 + 12_100 * MS), vec![], "ACK absorbed");
    assert_eq!(tx.handle(Event::Received(inv), t1 + 12_200 * MS), vec![], "nothing re-sent in Confirmed");
    assert_eq!(tx.next_deadline(), Some(t1 + 17_000 * MS), "I = T4");
    assert_eq!(tx.handle(Event::Timer, t1 + 17_000 * MS), vec![Action::Terminated]);
}

#[test]
fn invite_server_automatic_trying() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteServer::new(inv.clone(), Timers::default(), false, t0);
    assert_eq!(tx.next_deadline(), Some(t0 + 200 * MS));
    assert_eq!(tx.handle(Event::Timer, t0 + 199 * MS), vec![]);
    let a = tx.handle(Event::Timer, t0 + 200 * MS);
    let sent = transmits(&a);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status(), Some(100));
    assert_eq!(sent[0].vias().unwrap(), inv.vias().unwrap());
    assert_eq!(sent[0].to().unwrap().tag(), None);
    assert_eq!(sent[0].cseq().unwrap(), inv.cseq().unwrap());
    assert_eq!(
        tx.handle(Event::Received(inv.clone()), t0 + 500 * MS),
        vec![Action::Transmit(sent[0].clone())]
    );
    assert_eq!(tx.next_deadline(), None);
}

#[test]
fn invite_server_timer_h() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteServer::new(inv.clone(), Timers::default(), false, t0);
    tx.handle(Event::Send(reply(&inv, 603)), t0);
    let mut count = 0;
    loop {
        let at = tx.next_deadline().unwrap();
        let a = tx.handle(Event::Timer, at);
        if a == vec![Action::Timeout, Action::Terminated] {
            assert_eq!(at, t0 + 32_000 * MS);
            break;
        }
        count += 1;
    }
    assert_eq!(count, 10, "G at 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5 s");
    assert_eq!(tx.handle(Event::Received(ack_to(&inv)), t0 + 33_000 * MS), vec![]);
}

#[test]
fn invite_server_2xx_terminates_at_once() {
    let t0 = Instant::now();
    let inv = request("INVITE", "UDP");
    let (mut tx, _) = InviteServer::new(inv.clone(), Timers::default(), false, t0);
    let ok = reply(&inv, 200);
    assert_eq!(tx.handle(Event::Send(ok.clone()), t0), vec![Action::Transmit(ok), Action::Terminated]);
    assert_eq!(tx.next_deadline(), None);
    assert_eq!(tx.handle(Event::Received(inv), t0 + 500 * MS), vec![]);
}

#[test]
fn invite_server_reliable() {
    let t0 = Instant::now();
    let inv = request("INVITE", "TCP");
    let (mut tx, _) = InviteServer::new(inv.clone(), Timers::default(), true, t0);
    let busy = reply(&inv, 486);
    tx.handle(Event::Send(busy), t0);
    assert_eq!(tx.next_deadline(), Some(t0 + 32_000 * MS), "no G, only H");
    assert_eq!(tx.handle(Event::Received(ack_to(&inv)), t0 + 10 * MS), vec![Action::Terminated], "I = 0");
}

// ---- non-INVITE server ------------------------------------------------------------------------

#[test]
fn non_invite_server_retransmissions_and_j() {
    let t0 = Instant::now();
    let req = request("BYE", "UDP");
    let (mut tx, a) = NonInviteServer::new(req.clone(), Timers::default(), false, t0);
    assert_eq!(a, vec![Action::Deliver(req.clone())]);
    assert_eq!(tx.handle(Event::Received(req.clone()), t0 + 100 * MS), vec![], "absorbed in Trying");
    let trying = reply(&req, 100);
    assert_eq!(tx.handle(Event::Send(trying.clone()), t0 + 150 * MS), vec![Action::Transmit(trying.clone())]);
    assert_eq!(tx.handle(Event::Received(req.clone()), t0 + 200 * MS), vec![Action::Transmit(trying)]);
    let ok = reply(&req, 200);
    assert_eq!(tx.handle(Event::Send(ok.clone()), t0 + 300 * MS), vec![Action::Transmit(ok.clone())]);
    assert_eq!(tx.state(), NonInviteServerState::Completed);
    assert_eq!(tx.handle(Event::Received(req.clone()), t0 + 400 * MS), vec![Action::Transmit(ok)]);
    assert_eq!(tx.handle(Event::Send(reply(&req, 500)), t0 + 500 * MS), vec![], "one final response");
    assert_eq!(tx.next_deadline(), Some(t0 + 32_300 * MS), "J = 64*T1");
    assert_eq!(tx.handle(Event::Timer, t0 + 32_300 * MS), vec![Action::Terminated]);
    assert_eq!(tx.handle(Event::Received(req), t0 + 33_000 * MS), vec![]);
}

#[test]
fn non_invite_server_reliable() {
    let t0 = Instant::now();
    let req = request("BYE", "TCP");
    let (mut tx, _) = NonInviteServer::new(req.clone(), Timers::default(), true, t0);
    let ok = reply(&req, 200);
    assert_eq!(tx.handle(Event::Send(ok.clone()), t0), vec![Action::Transmit(ok), Action::Terminated]);
}

// ---- keys and table ---------------------------------------------------------------------------

#[test]
fn keys() {
    let inv = request("INVITE", "UDP");
    let sk = server_key(&inv).unwrap();
    assert_eq!(
        (sk.branch.as_str(), sk.method.as_str(), sk.sent_by.as_str()),
        ("z9hG4bKtx1", "INVITE", "192.0.2.1:5060")
    );
    assert_eq!(server_key(&ack_to(&inv)), Some(sk.clone()), "ACK maps to the INVITE");
    let cancel = request("CANCEL", "UDP");
    let ck = server_key(&cancel).unwrap();
    assert_ne!(ck, sk, "CANCEL is its own transaction");
    assert_eq!(ck.cancelled_invite(), Some(sk));
    let rfc2543 =
        parse_datagram(String::from_utf8(inv.to_bytes()).unwrap().replace("z9hG4bKtx1", "old1").as_bytes())
            .unwrap();
    assert_eq!(server_key(&rfc2543), None);

    let ck = client_key(&inv).unwrap();
    assert_eq!(client_key(&reply(&inv, 180)), Some(ck.clone()));
    assert_ne!(client_key(&reply(&cancel, 200)), Some(ck));
    assert_eq!(client_key(&ack_to(&inv)), None);
    assert_eq!(server_key(&reply(&inv, 180)), None);
}

#[test]
fn table_routes_and_purges() {
    let t0 = Instant::now();
    let mut table = TransactionTable::new(Timers::default());
    let inv = request("INVITE", "UDP");
    let (key, a) = table.send_request(inv.clone(), t0).unwrap();
    assert_eq!(a, vec![Action::Transmit(inv.clone())]);
    assert_eq!(table.send_request(inv.clone(), t0), Err(TableError::Duplicate));
    assert_eq!(table.send_request(ack_to(&inv), t0), Err(TableError::NotARequest));
    assert_eq!(table.next_deadline(), Some(t0 + 500 * MS));
    assert_eq!(table.on_timer(t0 + 500 * MS), vec![(key.clone(), Action::Transmit(inv.clone()))]);

    let busy = reply(&inv, 486);
    let d = table.on_received(busy.clone(), t0 + 600 * MS);
    assert_eq!(d.key, Some(key.clone()));
    assert_eq!(d.actions.len(), 2);
    let d = table.on_received(busy, t0 + 700 * MS);
    assert!(matches!(d.actions.as_slice(), [Action::Transmit(m)] if m.method() == Some("ACK")));
    let fired = table.on_timer(t0 + 32_600 * MS);
    assert_eq!(fired, vec![(key, Action::Terminated)]);
    assert!(table.is_empty());

    // A stray 2xx retransmission goes to the TU.
    let ok = reply(&inv, 200);
    assert_eq!(table.on_received(ok.clone(), t0), Dispatch { key: None, actions: vec![Action::Deliver(ok)] });

    // Server side: new request, retransmission, response, stray ACK for a 2xx.
    let d = table.on_received(inv.clone(), t0);
    let skey = d.key.clone().unwrap();
    assert_eq!(d.actions, vec![Action::Deliver(inv.clone())]);
    assert_eq!(table.on_received(inv.clone(), t0 + 10 * MS).actions, vec![]);
    let ok = reply(&inv, 200);
    assert_eq!(
        table.send_response(&skey, ok.clone(), t0 + 20 * MS),
        vec![Action::Transmit(ok), Action::Terminated]
    );
    assert!(table.is_empty());
    let ack = ack_to(&inv);
    assert_eq!(
        table.on_received(ack.clone(), t0 + 30 * MS),
        Dispatch { key: None, actions: vec![Action::Deliver(ack)] }
    );
}

// ---- properties -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Send(u16),
    RecvResponse(u16),
    RecvRequest,
    RecvAck,
    Advance(u64),
    TimerAtDeadline,
    TransportError,
}

fn step() -> impl Strategy<Value = Step> {
    let code = prop_oneof![Just(100u16), Just(180), Just(200), Just(202), Just(302), Just(486), Just(603)];
    prop_oneof![
        code.clone().prop_map(Step::Send),
        code.prop_map(Step::RecvResponse),
        Just(Step::RecvRequest),
        Just(Step::RecvAck),
        (0u64..40_000).prop_map(Step::Advance),
        Just(Step::TimerAtDeadline),
        Just(Step::TimerAtDeadline),
        Just(Step::TransportError),
    ]
}

fn machine(kind: u8, reliable: bool, now: Instant) -> (Transaction, Message) {
    let transport = if reliable { "TCP" } else { "UDP" };
    let inv = request("INVITE", transport);
    let opt = request("OPTIONS", transport);
    let timers = Timers::default();
    let (tx, _) = match kind {
        0 => Transaction::client(inv.clone(), timers, now).unwrap(),
        1 => Transaction::client(opt.clone(), timers, now).unwrap(),
        2 => Transaction::server(inv.clone(), timers, now).unwrap(),
        _ => Transaction::server(opt.clone(), timers, now).unwrap(),
    };
    (tx, if kind % 2 == 0 { inv } else { opt })
}

proptest! {
    #[test]
    fn random_events_never_transmit_after_terminated(
        kind in 0u8..4,
        reliable in any::<bool>(),
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let t0 = Instant::now();
        let (mut tx, req) = machine(kind, reliable, t0);
        let mut now = t0;
        let mut terminated = false;
        for s in steps {
            let event = match s {
                Step::Send(c) => Event::Send(reply(&req, c)),
                Step::RecvResponse(c) => Event::Received(reply(&req, c)),
                Step::RecvRequest => Event::Received(req.clone()),
                Step::RecvAck => Event::Received(ack_to(&req)),
                Step::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    Event::Timer
                }
                Step::TimerAtDeadline => {
                    if let Some(d) = tx.next_deadline() {
                        now = now.max(d);
                    }
                    Event::Timer
                }
                Step::TransportError => Event::TransportError,
            };
            let actions = tx.handle(event, now);
            if terminated {
                prop_assert!(actions.is_empty(), "actions after Terminated: {:?}", actions);
            }
            if let Some(i) = actions.iter().position(|a| *a == Action::Terminated) {
                prop_assert_eq!(i, actions.len() - 1, "Terminated is last");
                terminated = true;
            }
            prop_assert_eq!(terminated, tx.is_terminated());
            if terminated {
                prop_assert_eq!(tx.next_deadline(), None);
            }
            if let Some(d) = tx.next_deadline() {
                prop_assert!(d > now, "deadline not in the past after handling");
            }
        }
    }
}
