//! Whatever a client sends first on a TLS passthrough service, the ClientHello peek must answer
//! (a hello, "need more", or an error) without panicking, and never ask for more than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::proxy::sni::{parse_client_hello, HelloError, MAX_CLIENT_HELLO_LEN};

fuzz_target!(|data: &[u8]| {
    if let Err(HelloError::Incomplete { need_at_least }) = parse_client_hello(data) {
        assert!(need_at_least > data.len() && need_at_least <= MAX_CLIENT_HELLO_LEN);
    }
});
