//! Lab test: `mode = "tls"` passes TLS through untouched and routes by the ClientHello's SNI.

mod common;

use common::nginx::start;
use common::*;
use portier::lab::LabSpec;

const CFG: &str = r#"
[pools.mail]
servers = [ { address = "198.18.2.11:443" } ]
[pools.lync]
servers = [ { address = "198.18.2.12:443" } ]

[services.passthrough]
vip = "198.19.0.10"
ports = [443]
mode = "tls"
pool = "mail"
routes = [ { host = "lync.example.test", pool = "lync" } ]
"#;

#[test]
fn tls_passthrough_routes_by_sni_without_terminating() {
    let l = start(LabSpec { backends: 2, extra_clients: 0 }, &[], CFG);
    for _ in 0..3 {
        // -k: the certificate is the backend's own (cas.example.test), which proves that
        // portier did not terminate TLS; curl still checks it is the one the backend serves.
        let out = l.curl(c4(0), &["-v", "-k", "https://lync.example.test/"]);
        assert!(out.ok, "{}\n{}", out.stderr, l.portier.log_tail());
        assert_eq!(out.echo().backend, "cas02", "SNI lync.example.test goes to the lync pool");
        assert_eq!(out.echo().peer, "198.18.1.2", "transparent: the backend sees the client");
        assert!(out.subject().unwrap_or_default().contains("cas.example.test"), "{}", out.stderr);

        let out = l.curl(c4(0), &["-v", "-k", "https://mail.example.test/"]);
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(out.echo().backend, "cas01", "any other name goes to the default pool");
    }
    // Not TLS at all: reset, and the next real client is unaffected.
    let stream = l.greet_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(stream.is_err() || stream.as_ref().map(|b| b.is_empty()).unwrap_or(false), "{stream:?}");
    let out = l.curl(c4(0), &["-k", "https://lync.example.test/"]);
    assert!(out.ok, "{}", out.stderr);
}
