//! Whatever arrives on a relay's RTCP port is read for a reception report without panicking,
//! and a report read back has a fraction lost that is a percentage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::media::rtcp::first_report;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = first_report(data) {
        assert!((0.0..100.0).contains(&r.loss_percent()));
    }
});
