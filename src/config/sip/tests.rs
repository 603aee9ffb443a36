//! The `[sip]` section: what loads, and how malformed sections are refused.

use crate::tls::CertSpec;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{parse, Config, ConfigErrors};
use crate::sip::dialplan::Target;
use crate::sip::{
    Forward, ForwardTo, Identity, MediaMode, SipAddr, SipConfig, SipExtension, SipMedia, SipNat,
    SipTransport, SipTrunk, SipVoicemail, TrunkKind,
};

const PBX: &str = include_str!("../../../configs/pbx.toml");

fn parse_str(s: &str) -> Result<Config, ConfigErrors> {
    parse(s, Path::new("test.toml"))
}

fn sip(s: &str) -> SipConfig {
    parse_str(s).unwrap_or_else(|e| panic!("{e}")).sip.expect("[sip] present")
}

/// Lines 1-3; every case appends below.
const BASE: &str = "[sip]\nlisten = [\"udp:198.18.1.1:5060\"]\ndomain = \"pbx.example.test\"\n";

#[test]
fn the_contract_loads_exactly_as_written() {
    let s = sip(PBX);
    let addr = |t, a: &str| SipAddr { transport: t, addr: a.parse().unwrap() };
    assert_eq!(
        s.listen,
        vec![
            addr(SipTransport::Udp, "198.18.1.1:5060"),
            addr(SipTransport::Tcp, "198.18.1.1:5060"),
            addr(SipTransport::Tls, "198.18.1.1:5061"),
        ]
    );
    assert_eq!(s.domain, "pbx.example.test");
    assert_eq!(
        s.tls,
        Some(CertSpec { cert: "/etc/portier/tls/pbx.pem".into(), key: "/etc/portier/tls/pbx.key".into() })
    );
    assert_eq!(s.extensions.keys().collect::<Vec<_>>(), ["2000", "2001", "2002"]);
    assert_eq!(
        s.extensions["2000"],
        SipExtension {
            name: "Main number".into(),
            secret: "change-me".into(),
            voicemail: false,
            ring_time: DEFAULT_RING_TIME,
            forward: Forward { always: Some(ForwardTo::Number("1900".into())), busy: None, no_answer: None },
            nat: SipNat::Auto,
            media: MediaMode::Relay,
        }
    );
    assert!(s.extensions["2001"].voicemail && s.extensions["2001"].name == "Alice");
    assert_eq!(s.extensions["2002"].ring_time, Duration::from_secs(20));
    assert_eq!(
        s.trunks["exchange-um"],
        SipTrunk {
            kind: TrunkKind::Peer {
                address: addr(SipTransport::Tcp, "198.18.2.20:5060"),
                trusted: true,
                options_ping: Some(Duration::from_secs(30)),
            },
            identity: Identity::Pai,
            tls: None,
            media: MediaMode::Relay,
        }
    );
    assert_eq!(
        s.trunks["isp"],
        SipTrunk {
            kind: TrunkKind::Register {
                registrar: addr(SipTransport::Udp, "198.18.3.10:5060"),
                domain: "isp.example.test".into(),
                username: "0999999999".into(),
                secret: "isp-secret".into(),
                expires: Duration::from_secs(600),
                inbound: Some("2000".into()),
            },
            identity: Identity::Rpid,
            tls: None,
            media: MediaMode::Relay,
        }
    );
    assert_eq!(
        s.voicemail,
        Some(SipVoicemail {
            trunk: "exchange-um".into(),
            pilot: "1000".into(),
            mailbox_prefix: String::new(),
            own_extension_to_mailbox: false,
            mwi: true,
        })
    );
    let rules: Vec<String> = s.dialplan.rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["2XXX -> extension", "1XXX -> trunk exchange-um", "0. -> trunk isp strip 1"]);
    assert_eq!(s.dialplan.route("00112345678").unwrap().number, "0112345678");
    assert_eq!(s.dialplan.route("1900").unwrap().target, Target::Trunk("exchange-um".into()));
}

#[test]
fn defaults_apply() {
    let s = sip(&format!("{BASE}[sip.extensions]\n2001 = {{ secret = \"x\" }}\n"));
    let e = &s.extensions["2001"];
    assert_eq!((e.name.as_str(), e.voicemail, e.ring_time), ("2001", false, DEFAULT_RING_TIME));
    assert_eq!(e.forward, Forward::default());
    assert_eq!(e.nat, SipNat::Auto);
    for (v, want) in [("auto", SipNat::Auto), ("force", SipNat::Force), ("off", SipNat::Off)] {
        let s = sip(&format!("{BASE}[sip.extensions]\n2001 = {{ secret = \"x\", nat = \"{v}\" }}\n"));
        assert_eq!(s.extensions["2001"].nat, want);
    }
    assert!(s.tls.is_none() && s.voicemail.is_none() && s.trunks.is_empty() && s.dialplan.rules.is_empty());
    assert!(parse_str(BASE).unwrap().sip.is_some());
    assert_eq!(e.media, MediaMode::Relay);
    assert_eq!(s.media, SipMedia::default());
    assert_eq!(s.media.ports.to_string(), "30000-39999");
    assert_eq!((s.media.timeout, s.media.hold_timeout), (Duration::from_secs(60), Duration::from_secs(3600)));
}

#[test]
fn media_settings_are_read() {
    let s = sip(&format!(
        "{BASE}[sip.media]\nports = \"40000-40099\"\naddress = \"198.18.1.2\"\ntimeout = \"30s\"\nhold_timeout = \"2h\"\n\
         [sip.extensions]\n2001 = {{ secret = \"x\", media = \"direct\" }}\n{TRUNK_UM}media = \"direct\"\n"
    ));
    assert_eq!(s.media.ports.to_string(), "40000-40099");
    assert_eq!(s.media.ports.pairs(), 50);
    assert_eq!(s.media.address, Some("198.18.1.2".parse().unwrap()));
    assert_eq!((s.media.timeout, s.media.hold_timeout), (Duration::from_secs(30), Duration::from_secs(7200)));
    assert_eq!(s.extensions["2001"].media, MediaMode::Direct);
    assert_eq!(s.trunks["um"].media, MediaMode::Direct);
    // A wildcard listener is fine when nothing is relayed, or when the address is given.
    let wild = BASE.replace("udp:198.18.1.1:5060", "udp:0.0.0.0:5060");
    sip(&format!("{wild}[sip.extensions]\n2001 = {{ secret = \"x\", media = \"direct\" }}\n"));
    sip(&format!("{wild}[sip.media]\naddress = \"198.18.1.2\"\n"));
}

#[test]
fn sip_addresses() {
    assert_eq!(parse_sip_addr("tls:[2001:db8::1]:5061").unwrap().to_string(), "tls:[2001:db8::1]:5061");
    assert!(parse_sip_addr("198.18.1.1:5060").unwrap_err().contains("not a transport"));
    assert!(parse_sip_addr("udp:198.18.1.1:0").unwrap_err().contains("port 0"));
    assert!(parse_sip_addr("udp").unwrap_err().contains("no transport"));
}

const TRUNK_UM: &str =
    "[sip.trunks.um]\nkind = \"peer\"\naddress = \"tcp:198.18.2.20:5060\"\ntrusted = true\n";

/// (what, config, line, field, message fragment)
fn malformed() -> Vec<(&'static str, String, usize, &'static str, &'static str)> {
    let ext = |body: &str| format!("{BASE}[sip.extensions]\n{body}");
    vec![
        (
            "listen without port",
            BASE.replace("udp:198.18.1.1:5060", "udp:198.18.1.1"),
            2,
            "sip.listen",
            "is not IP:port",
        ),
        (
            "listen with unknown transport",
            BASE.replace("udp:", "sctp:"),
            2,
            "sip.listen",
            "`sctp` is not a transport (udp, tcp or tls)",
        ),
        (
            "tls listener without certificates",
            BASE.replace("udp:198.18.1.1:5060", "tls:198.18.1.1:5061"),
            2,
            "sip.listen",
            "TLS listener: set sip.tls",
        ),
        ("extension key not digits", ext("20a1 = { secret = \"x\" }\n"), 5, "sip.extensions.20a1", "must be 1-15 digits"),
        ("empty extension secret", ext("2001 = { secret = \"\" }\n"), 5, "sip.extensions.2001.secret", "must not be empty"),
        (
            "forward to an unknown number",
            ext("2001 = { secret = \"x\", forward = { busy = \"3000\" } }\n"),
            5,
            "sip.extensions.2001.forward.busy",
            "`3000` is not an extension and no dial plan rule routes it",
        ),
        (
            "forward routed to a missing extension",
            ext("2001 = { secret = \"x\", forward = { always = \"2999\" } }\n[[sip.dialplan]]\nmatch = \"2XXX\"\nto = \"extension\"\n"),
            5,
            "sip.extensions.2001.forward.always",
            "routes to extension 2999, which does not exist",
        ),
        (
            "forward to voicemail without voicemail",
            ext("2001 = { secret = \"x\", forward = { no_answer = \"voicemail\" } }\n"),
            5,
            "sip.extensions.2001.forward.no_answer",
            "has no voicemail",
        ),
        (
            "voicemail without [sip.voicemail]",
            ext("2001 = { secret = \"x\", voicemail = true }\n"),
            5,
            "sip.extensions.2001.voicemail",
            "needs a [sip.voicemail] section",
        ),
        (
            "dial plan to an unknown trunk",
            format!("{BASE}{TRUNK_UM}[[sip.dialplan]]\nmatch = \"0.\"\nto = \"isp\"\n"),
            10,
            "sip.dialplan[0].to",
            "no trunk named `isp` (defined: um)",
        ),
        (
            "bad pattern",
            format!("{BASE}[[sip.dialplan]]\nmatch = \"2[1\"\nto = \"extension\"\n"),
            5,
            "sip.dialplan[0].match",
            "`2[1`: unclosed [",
        ),
        (
            "strip removes everything",
            format!("{BASE}{TRUNK_UM}[[sip.dialplan]]\nmatch = \"1X\"\nto = \"um\"\nstrip = 2\n"),
            11,
            "sip.dialplan[0].strip",
            "removes all of `1X`'s shortest match",
        ),
        (
            "voicemail on an unknown trunk",
            format!("{BASE}[sip.voicemail]\ntrunk = \"exchange\"\npilot = \"1000\"\n"),
            5,
            "sip.voicemail.trunk",
            "no trunk named `exchange`",
        ),
        (
            "mwi from an untrusted trunk",
            format!("{BASE}{}[sip.voicemail]\ntrunk = \"um\"\npilot = \"1000\"\nmwi = true\n", TRUNK_UM.replace("true", "false")),
            9,
            "sip.voicemail.trunk",
            "needs `um` to be a peer with trusted = true",
        ),
        (
            "inbound to an unknown extension",
            format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"s\"\ninbound = \"2000\"\n"),
            9,
            "sip.trunks.isp.inbound",
            "no extension 2000 (defined: none)",
        ),
        (
            "identity not pai|rpid|none",
            format!("{BASE}{TRUNK_UM}identity = \"pani\"\n"),
            8,
            "sip.trunks.um.identity",
            "`pani` is not pai, rpid or none",
        ),
        (
            "register field on a peer",
            format!("{BASE}{TRUNK_UM}expires = \"600s\"\n"),
            8,
            "sip.trunks.um.expires",
            "`expires` does not apply to peer trunks",
        ),
        (
            "peer field on a register trunk",
            format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"s\"\ntrusted = true\n"),
            9,
            "sip.trunks.isp.trusted",
            "`trusted` does not apply to register trunks",
        ),
        (
            "empty trunk secret",
            format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nregistrar = \"udp:198.18.3.10:5060\"\nusername = \"099\"\nsecret = \"\"\n"),
            8,
            "sip.trunks.isp.secret",
            "must not be empty",
        ),
        (
            "register trunk without registrar",
            format!("{BASE}[sip.trunks.isp]\nkind = \"register\"\nusername = \"099\"\nsecret = \"s\"\n"),
            4,
            "sip.trunks.isp.registrar",
            "a register trunk needs `registrar`",
        ),
        (
            "bad peer address",
            format!("{BASE}{}", TRUNK_UM.replace("tcp:198.18.2.20:5060", "tcp:um.example.test:5060")),
            6,
            "sip.trunks.um.address",
            "is not IP:port",
        ),
        (
            "bad ring time",
            ext("2001 = { secret = \"x\", ring_time = \"20\" }\n"),
            5,
            "sip.extensions.2001.ring_time",
            "has no unit",
        ),
        (
            "tls on a tcp trunk",
            format!("{BASE}{TRUNK_UM}tls = {{ verify = false }}\n"),
            8,
            "sip.trunks.um.tls",
            "`tls` needs a tls: address",
        ),
        (
            "trunk tls verify without ca",
            format!("{BASE}{}tls = {{ sni = \"um.example.test\" }}\n", TRUNK_UM.replace("tcp:198.18.2.20:5060", "tls:198.18.2.20:5061")),
            8,
            "sip.trunks.um.tls.ca",
            "verify = true needs `ca`",
        ),
        (
            "bad nat",
            ext("2001 = { secret = \"x\", nat = \"yes\" }\n"),
            5,
            "sip.extensions.2001.nat",
            "`yes` is not auto, force or off",
        ),
        (
            "bad extension media",
            ext("2001 = { secret = \"x\", media = \"proxy\" }\n"),
            5,
            "sip.extensions.2001.media",
            "`proxy` is not relay or direct",
        ),
        (
            "bad trunk media",
            format!("{BASE}{TRUNK_UM}media = \"none\"\n"),
            8,
            "sip.trunks.um.media",
            "`none` is not relay or direct",
        ),
        (
            "media ports with an odd first port",
            format!("{BASE}[sip.media]\nports = \"30001-39999\"\n"),
            5,
            "sip.media.ports",
            "the first port must be even",
        ),
        (
            "media ports not a range",
            format!("{BASE}[sip.media]\nports = \"30000\"\n"),
            5,
            "sip.media.ports",
            "is not a range",
        ),
        (
            "media ports among system ports",
            format!("{BASE}[sip.media]\nports = \"100-2000\"\n"),
            5,
            "sip.media.ports",
            "below 1024",
        ),
        (
            "media address a wildcard",
            format!("{BASE}[sip.media]\naddress = \"0.0.0.0\"\n"),
            5,
            "sip.media.address",
            "cannot be named in SDP",
        ),
        (
            "media timeout too short",
            format!("{BASE}[sip.media]\ntimeout = \"500ms\"\n"),
            5,
            "sip.media.timeout",
            "at least 1s",
        ),
        (
            "wildcard listener without a media address",
            BASE.replace("udp:198.18.1.1:5060", "udp:0.0.0.0:5060"),
            2,
            "sip.media.address",
            "wildcard address",
        ),
    ]
}

#[test]
fn malformed_sip_sections_name_line_and_field() {
    let cases = malformed();
    assert!(cases.len() >= 10);
    for (what, src, line, field, msg) in cases {
        let e = match parse_str(&src) {
            Ok(_) => panic!("{what}: unexpectedly valid:\n{src}"),
            Err(e) => e,
        };
        assert!(
            e.0.iter().any(|x| x.line == line && x.field == field && x.message.contains(msg)),
            "{what}: want line {line}, field {field}, message containing {msg:?}; got:\n{e}\nin:\n{src}"
        );
    }
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let e = parse_str(&format!("{BASE}[sip.voicemail]\ntrunk = \"um\"\npilott = \"1000\"\n")).unwrap_err();
    assert!(e.to_string().contains("test.toml:6:") && e.to_string().contains("pilott"), "{e}");
    let e = parse_str(&format!("{BASE}{TRUNK_UM}kind2 = 1\n")).unwrap_err();
    assert!(e.to_string().contains("test.toml:8:") && e.to_string().contains("unknown field"), "{e}");
    let e = parse_str(&format!("{BASE}{TRUNK_UM}").replace("\"peer\"", "\"friend\"")).unwrap_err();
    assert!(e.to_string().contains("test.toml:5:"), "{e}");
}

#[test]
fn all_errors_are_reported_together() {
    let src = format!(
        "{}[sip.extensions]\n2001 = {{ secret = \"\" }}\n[[sip.dialplan]]\nmatch = \"X.X\"\nto = \"nowhere\"\n",
        BASE.replace("udp:", "sctp:")
    );
    let e = parse_str(&src).unwrap_err();
    let fields: Vec<&str> = e.0.iter().map(|x| x.field.as_str()).collect();
    for f in ["sip.listen", "sip.extensions.2001.secret", "sip.dialplan[0].match", "sip.dialplan[0].to"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn summary_names_listeners_extensions_trunks_and_rules() {
    let s = summary(&sip(PBX));
    assert!(s.contains("sip: domain pbx.example.test; listen udp:198.18.1.1:5060, tcp:198.18.1.1:5060, tls:198.18.1.1:5061; 3 extension(s), 2 trunk(s), 3 dial plan rule(s)"), "{s}");
    assert!(s.contains("trunk exchange-um: peer tcp:198.18.2.20:5060 trusted"), "{s}");
    assert!(s.contains("trunk isp: register 0999999999@isp.example.test at udp:198.18.3.10:5060"), "{s}");
    assert!(s.contains("dialplan 0. -> trunk isp strip 1"), "{s}");
    assert!(
        s.contains("media relay: ports 30000-39999; address of each leg's listener; timeout 1m, on hold 1h"),
        "{s}"
    );
    assert!(!s.contains("media direct"), "{s}");
    let direct =
        summary(&sip(&format!("{BASE}[sip.extensions]\n2001 = {{ secret = \"x\", media = \"direct\" }}\n")));
    assert!(direct.contains("media direct for: 2001"), "{direct}");
}

#[test]
fn limits_have_defaults_and_bad_values_are_named() {
    assert_eq!(sip(BASE).limits, crate::sip::SipLimits::default());
    let s =
        sip(&format!("{BASE}[sip.limits]\ntransactions = 500\nconnections = 20\nidle_timeout = \"30s\"\n"));
    assert_eq!(
        (s.limits.transactions, s.limits.connections, s.limits.connections_per_source),
        (500, 20, 20),
        "a per-source default above the total is the total"
    );
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(30));
    let e =
        parse_str(&format!("{BASE}[sip.limits]\ntransactions = 0\nmessage_timeout = \"0s\"\n")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("test.toml:5:") && text.contains("sip.limits.transactions"), "{text}");
    assert!(text.contains("test.toml:6:") && text.contains("sip.limits.message_timeout"), "{text}");
    let e = parse_str(&format!("{BASE}[sip.limits]\nconections = 5\n")).unwrap_err();
    assert!(e.to_string().contains("test.toml:5:") && e.to_string().contains("conections"), "{e}");
}
