//! Whatever a checked server answers (HTTP status lines, SIP responses over UDP or streams),
//! the health probes must reject it cleanly, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portier::health::probe::fuzz_server_bytes(data);
});
