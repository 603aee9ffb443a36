//! The B2BUA engine fed arbitrary datagrams (split on a 0xff byte into several messages, from
//! a registered phone's address, a trunk's and a stranger's) with time moving between them:
//! it must never panic, and everything it sends must parse. A first byte of 0 also drains the
//! engine after the first message, so the drain paths (503s, BYEs at the deadline,
//! unREGISTER) are fuzzed too. The media relay binds its ports on loopback, so SDP in the
//! messages goes through it.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use portier::metrics::Metrics;
use portier::sip::engine::{Dest, Engine, EngineOptions, Now};
use portier::sip::parse_datagram;
use portier::sip::{SipConfig, SipTransport};

const CONFIG: &str = r#"
[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
domain = "pbx.example.test"
[sip.media]
ports = "46000-46999"
[sip.extensions]
2001 = { secret = "a", voicemail = true }
2002 = { secret = "b", ring_time = "2s", forward = { no_answer = "2001" } }
[sip.trunks.um]
kind = "peer"
address = "tcp:198.18.2.20:5060"
trusted = true
identity = "pai"
options_ping = "5s"
[sip.trunks.isp]
kind = "register"
registrar = "udp:198.18.3.10:5060"
domain = "isp.example.test"
username = "u"
secret = "s"
inbound = "2002"
identity = "rpid"
[sip.voicemail]
trunk = "um"
pilot = "1000"
mwi = true
[[sip.dialplan]]
match = "2XXX"
to = "extension"
[[sip.dialplan]]
match = "1XXX"
to = "um"
[[sip.dialplan]]
match = "0."
to = "isp"
strip = 1
"#;

fn config() -> Arc<SipConfig> {
    static CFG: OnceLock<Arc<SipConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let c = portier::config::parse(CONFIG, std::path::Path::new("fuzz.toml")).expect("fuzz config loads");
        Arc::new(c.sip.expect("[sip]"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let metrics = Metrics::new();
    let mut now = Now { mono: Instant::now(), unix: 1_000_000 };
    let opts = EngineOptions { digest_key: [3; 32], ..EngineOptions::random() };
    let mut e = Engine::new(config(), metrics.sip(), opts, now);
    let sources = [
        Dest { transport: SipTransport::Udp, addr: "198.18.0.11:5060".parse().unwrap(), conn: None },
        Dest { transport: SipTransport::Tcp, addr: "198.18.2.20:40000".parse().unwrap(), conn: Some(1) },
        Dest { transport: SipTransport::Udp, addr: "198.18.3.10:5060".parse().unwrap(), conn: None },
    ];
    let drain = data.first() == Some(&0);
    for (i, chunk) in data.split(|&b| b == 0xff).enumerate() {
        e.on_datagram(chunk, sources[i % sources.len()], now);
        if drain && i == 0 {
            e.drain(now.mono + Duration::from_secs(2), now);
        }
        now.mono += Duration::from_millis(700);
        now.unix += 1;
        e.on_timer(now);
        // Relay orders are dropped here: their sockets close, as when a call ends.
        drop(e.take_media());
        for o in e.take_output() {
            assert!(parse_datagram(&o.msg.to_bytes()).is_ok(), "engine sent an unparsable message");
        }
    }
});
