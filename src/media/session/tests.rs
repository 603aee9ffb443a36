use super::*;
use crate::media::ports::PortRange;
use std::net::{Ipv4Addr, UdpSocket};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A pool over ports nothing binds now, a different region per test (they run in parallel).
fn pool(pairs: u16) -> PortPool {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 43_000 + 1_000 * NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for first in (base..60_000).step_by(200) {
        if (first..first + 2 * pairs).all(|p| UdpSocket::bind((LOOPBACK, p)).is_ok()) {
            return PortPool::new(PortRange::new(first, first + 2 * pairs - 1).unwrap());
        }
    }
    panic!("no free loopback port range");
}

fn offer(addr: &str, port: u16, extra: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=alice 42 7 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=candidate:1 1 UDP 2130706431 {addr} {port} typ host\r\n{extra}"
    )
    .into_bytes()
}

fn parsed(b: &[u8]) -> Sdp {
    Sdp::parse(b).unwrap()
}

#[test]
fn offer_and_answer_are_rewritten_to_each_sides_ports_and_start_one_stream() {
    let mut pool = pool(4);
    let first = pool.range().first();
    let mut s = Session::new(LOOPBACK, LOOPBACK);
    let to_callee = s.carry(Side::Caller, &offer("127.0.0.11", 4000, ""), &mut pool).unwrap();
    let m = parsed(&to_callee).media();
    assert_eq!(m[0].port, first + 2, "the callee is offered the callee side's port");
    assert_eq!(m[0].address, Some(LOOPBACK));
    let text = String::from_utf8(to_callee.clone()).unwrap();
    assert!(!text.contains("candidate"), "ICE lines dropped: {text}");
    assert!(text.contains("a=rtpmap:101 telephone-event/8000"), "other attributes kept: {text}");
    assert!(text.contains("o=alice 42 7 IN IP4 127.0.0.1"), "origin: {text}");

    let orders = s.take_orders();
    let [Order::Start { stream: 0, legs, signalled, held: false, .. }] = &orders[..] else {
        panic!("{orders:?}")
    };
    assert_eq!([legs[0].port, legs[1].port], [first, first + 2]);
    assert_eq!(signalled[0].rtp, Some("127.0.0.11:4000".parse().unwrap()));
    assert_eq!(signalled[0].rtcp, Some("127.0.0.11:4001".parse().unwrap()));
    assert_eq!(signalled[1], Endpoint::default());

    let to_caller = s.carry(Side::Callee, &offer("127.0.0.13", 5000, ""), &mut pool).unwrap();
    assert_eq!(parsed(&to_caller).media()[0].port, first, "the caller is answered with its side's port");
    let orders = s.take_orders();
    let [Order::Signal { stream: 0, side: Side::Callee, endpoint }] = &orders[..] else {
        panic!("{orders:?}")
    };
    assert_eq!(endpoint.rtp, Some("127.0.0.13:5000".parse().unwrap()));
    assert_eq!(s.ports_open(), 4);
    s.arm();
    s.arm();
    assert!(matches!(&s.take_orders()[..], [Order::Arm]), "armed once");
}

#[test]
fn a_reinvite_that_changes_nothing_changes_no_latch_and_no_version() {
    let mut pool = pool(2);
    let mut s = Session::new(LOOPBACK, LOOPBACK);
    let a = s.carry(Side::Caller, &offer("127.0.0.11", 4000, ""), &mut pool).unwrap();
    s.take_orders();
    let again = s.carry(Side::Caller, &offer("127.0.0.11", 4000, ""), &mut pool).unwrap();
    assert_eq!(a, again);
    assert!(s.take_orders().is_empty());
    // Hold (sendonly), then a move to a new address: each an order, and a new version.
    let hold = s.carry(Side::Caller, &offer("127.0.0.11", 4000, "a=sendonly\r\n"), &mut pool).unwrap();
    assert_eq!(parsed(&hold).origin().unwrap().version, 8);
    assert!(matches!(&s.take_orders()[..], [Order::Held { stream: 0, held: true }]));
    s.carry(Side::Caller, &offer("127.0.0.12", 4002, ""), &mut pool).unwrap();
    let orders = s.take_orders();
    assert!(
        matches!(&orders[..], [Order::Signal { side: Side::Caller, .. }, Order::Held { held: false, .. }]),
        "{orders:?}"
    );
}

#[test]
fn an_old_style_hold_keeps_its_zero_address_and_the_latch() {
    let mut pool = pool(2);
    let mut s = Session::new(LOOPBACK, LOOPBACK);
    s.carry(Side::Caller, &offer("127.0.0.11", 4000, ""), &mut pool).unwrap();
    s.take_orders();
    let held = s.carry(Side::Caller, &offer("0.0.0.0", 4000, ""), &mut pool).unwrap();
    assert_eq!(parsed(&held).media()[0].address, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    assert!(matches!(&s.take_orders()[..], [Order::Held { held: true, .. }]), "no Signal to 0.0.0.0");
}

#[test]
fn refused_streams_take_no_ports_and_the_pool_running_out_is_an_error() {
    let mut pool = pool(2);
    let mut s = Session::new(LOOPBACK, LOOPBACK);
    let two = "v=0\r\no=- 1 1 IN IP4 127.0.0.11\r\ns=-\r\nc=IN IP4 127.0.0.11\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
    let out = s.carry(Side::Caller, two.as_bytes(), &mut pool).unwrap();
    assert_eq!(parsed(&out).media()[1].port, 0);
    assert_eq!(s.ports_open(), 4);
    assert!(s.on_silent(0), "the only relayed stream went silent: the call is over");
    let mut other = Session::new(LOOPBACK, LOOPBACK);
    let e = other.carry(Side::Caller, &offer("127.0.0.11", 4000, ""), &mut pool).unwrap_err();
    assert!(matches!(e, MediaError::Ports(PortError::Exhausted { .. })), "{e}");
    let e = other.carry(Side::Caller, b"not sdp", &mut pool).unwrap_err();
    assert!(matches!(e, MediaError::Sdp(_)), "{e}");
}

#[test]
fn streams_past_the_cap_pass_unchanged() {
    let mut pool = pool(2 * MAX_STREAMS as u16 + 2);
    let mut s = Session::new(LOOPBACK, LOOPBACK);
    let mut body = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.11\r\ns=-\r\nt=0 0\r\n");
    for i in 0..MAX_STREAMS + 2 {
        body.push_str(&format!("m=audio {} RTP/AVP 0\r\nc=IN IP4 127.0.0.11\r\n", 4000 + 2 * i));
    }
    let out = s.carry(Side::Caller, body.as_bytes(), &mut pool).unwrap();
    let m = parsed(&out).media();
    assert_eq!(s.ports_open(), 4 * MAX_STREAMS);
    assert_eq!(m[MAX_STREAMS].port, 4000 + 2 * MAX_STREAMS as u16);
    assert_eq!(m[MAX_STREAMS].address, Some("127.0.0.11".parse().unwrap()));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]=[ -~]{0,30}",
            (0u16..65535, "[0-9 ]{0,8}").prop_map(|(p, f)| format!("m=audio {p} RTP/AVP {f}")),
            "c=IN IP4 (127\\.0\\.0\\.[0-9]|0\\.0\\.0\\.0|host\\.example)",
            "a=(sendrecv|sendonly|recvonly|inactive|rtcp:[0-9]{1,5}|candidate:[ -~]{0,20})",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever both sides send, one after the other: a clean error or a body for the
        /// other side that parses, keeps its streams, and names the relay's port on that side
        /// for every stream the relay took; ports stay within what the streams need.
        #[test]
        fn any_offer_and_answer_carry_cleanly(
            offer in proptest::collection::vec(line(), 0..14),
            answer in proptest::collection::vec(line(), 0..14),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // One pool for every case: each case's ports close when its session ends.
            static POOL: std::sync::OnceLock<std::sync::Mutex<PortPool>> = std::sync::OnceLock::new();
            let mut pool = POOL.get_or_init(|| std::sync::Mutex::new(pool(2 * MAX_STREAMS as u16 + 2))).lock().unwrap();
            let pool = &mut *pool;
            let mut s = Session::new(LOOPBACK, LOOPBACK);
            let _ = s.carry(Side::Caller, &bytes, pool);
            for (from, lines) in [(Side::Caller, &offer), (Side::Callee, &answer)] {
                let body = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\n{}", lines.iter().map(|l| format!("{l}\r\n")).collect::<String>());
                let Ok(out) = s.carry(from, body.as_bytes(), pool) else { continue };
                let (before, after) = (parsed(body.as_bytes()).media(), parsed(&out).media());
                prop_assert_eq!(before.len(), after.len());
                for (i, a) in after.iter().enumerate().take(MAX_STREAMS) {
                    if let Some(ports) = s.streams.get(i).and_then(|st| st.ports) {
                        prop_assert_eq!(a.port, ports[from.other() as usize]);
                    }
                }
                prop_assert!(s.ports_open() <= 4 * MAX_STREAMS);
            }
            let _ = s.take_orders();
        }
    }
}
