//! The shipped configurations for Exchange 2010 and OCS 2007 R2 run as written in the lab
//! (only their certificate paths are replaced by the test's): nginx serves 80/443, echo
//! servers the other ports, real clients go through portier.

mod common;

use std::process::Command;

use common::nginx::{count, start, Certs};
use common::*;
use portier::lab::LabSpec;

fn shipped(name: &str) -> String {
    let path = format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `portier check` of a configuration text: exit status and summary.
fn check(text: &str, certs: &Certs) -> (i32, String) {
    let path = certs.path("check.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(exe()).args(["check", "--config"]).arg(&path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

const EXCHANGE_TCP: [u16; 7] = [135, 59532, 59533, 110, 143, 993, 995];

#[test]
fn exchange_2010_cas_config_https_rpc_and_mail_ports_share_a_server_per_client() {
    let text = shipped("exchange-2010-cas.toml");
    assert!(text.contains("/etc/portier/tls/mail.pem"), "the shipped file names the standard paths");
    let l = start(LabSpec { backends: 2, extra_clients: 3 }, &EXCHANGE_TCP, &text);
    let (code, summary) = check(&l.certs.rewrite(&text), &l.certs);
    assert_eq!(code, 0, "{summary}");
    let mut chosen = Vec::new();
    for i in 0..4 {
        let client = c4(i);
        // Outlook: HTTPS (Outlook Anywhere, EWS, Autodiscover) and MAPI on one CAS.
        let (out, e) = l.get(client, &["-v", "https://mail.example.test/owa/"]);
        assert_eq!(out.subject(), Some("CN=mail.example.test"), "{}", out.stderr);
        assert_eq!((e.proto.as_str(), e.peer.as_str()), ("https", client.to_string().as_str()), "{e:?}");
        for port in [135, 59532, 59533] {
            let g = l.greet(client, port);
            assert_eq!(g.backend, e.backend, "client {client}: port {port} must reach the CAS of its HTTPS");
            assert_eq!(g.peer.ip(), client, "transparent");
        }
        assert_eq!(l.backend(client, &["https://mail.example.test/ews/exchange.asmx"]), e.backend);
        chosen.push(e.backend);
        // POP3 and IMAP4 pass through, transparently.
        for port in [110, 143, 993, 995] {
            assert_eq!(l.greet(client, port).peer.ip(), client, "port {port}");
        }
    }
    assert_eq!(count(chosen).len(), 2, "leastconn spreads the clients over both CAS");
    // 80 redirects to https, keeping host and path.
    let out = l.curl(
        c4(0),
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "http://mail.example.test/owa/?ae=Item",
        ],
    );
    assert_eq!(out.stdout, "301 https://mail.example.test/owa/?ae=Item", "{out:?}");
}

#[test]
fn ocs_2007r2_pool_config_snats_and_keeps_a_client_on_one_front_end_on_every_port() {
    let text = shipped("ocs-2007r2-pool.toml");
    let ports = [5060, 5061, 135, 443, 444, 5065, 5069, 5071, 5072, 5073, 5074, 8404];
    // No nginx here: 443 is passed through to the Front Ends (echo servers on every port).
    let certs = Certs::generate();
    let (code, summary) = check(&text, &certs);
    assert_eq!(code, 0, "{summary}");
    assert!(summary.contains("ports 5060,5061 -> pool ocs-fe; source balancer (SNAT); sticky client-ip table ocs for 30m; idle 30m"), "{summary}");
    let s = setup(LabSpec { backends: 2, extra_clients: 3 }, &ports, &text);
    let mut chosen = Vec::new();
    for i in 0..4 {
        let client = c4(i);
        let sip = s.greet(client, vip4(5061));
        assert_eq!(sip.peer.ip(), BAL4, "SNAT: the Front End sees the balancer, not {client}");
        for port in ports {
            let g = s.greet(client, vip4(port));
            assert_eq!(g.backend, sip.backend, "client {client} port {port}");
            assert_eq!(g.peer.ip(), BAL4, "port {port}");
            assert_eq!(g.local.port(), port);
        }
        chosen.push(sip.backend);
    }
    assert_eq!(count(chosen).len(), 2, "clients spread over both Front Ends");
}
