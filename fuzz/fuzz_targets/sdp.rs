//! Whatever SDP a peer sends must parse or be refused without panicking; a parsed body writes
//! back as itself, and the relay's rewrite and origin stamp leave a body that parses again
//! with the same number of streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::media::sdp::{OriginStamp, RelayPort, Sdp};

fuzz_target!(|data: &[u8]| {
    let Ok(mut sdp) = Sdp::parse(data) else { return };
    assert_eq!(Sdp::parse(&sdp.to_bytes()).as_ref(), Ok(&sdp));
    let streams = sdp.media().len();
    let _ = sdp.origin();
    let relay = RelayPort { address: "198.18.1.1".parse().unwrap(), port: 30000 };
    let ports: Vec<Option<RelayPort>> = (0..streams).map(|i| (i % 2 == 0).then_some(relay)).collect();
    sdp.relay(&ports);
    OriginStamp::default().stamp(&mut sdp, relay.address);
    let back = Sdp::parse(&sdp.to_bytes()).expect("a rewritten body parses");
    assert_eq!(back.media().len(), streams);
});
