//! A call's media session fed arbitrary bodies from both sides in turn (split on a 0xff byte):
//! every body is refused cleanly or carried into one that parses with the same streams, and the
//! ports it holds stay within its streams' need. Ports are bound on loopback.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use portier::media::ports::{PortPool, PortRange};
use portier::media::sdp::Sdp;
use portier::media::session::{Session, Side, MAX_STREAMS};

static POOL: Mutex<Option<PortPool>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = POOL.lock().unwrap();
    let pool = guard.get_or_insert_with(|| PortPool::new(PortRange::new(47_000, 47_999).unwrap()));
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut s = Session::new(lo, lo);
    for (i, body) in data.split(|b| *b == 0xff).enumerate() {
        let side = if i % 2 == 0 { Side::Caller } else { Side::Callee };
        if let Ok(out) = s.carry(side, body, pool) {
            let before = Sdp::parse(body).expect("carried, so it parsed").media().len();
            assert_eq!(Sdp::parse(&out).expect("a carried body parses").media().len(), before);
        }
        assert!(s.ports_open() <= 4 * MAX_STREAMS);
        let _ = s.take_orders();
    }
});
