//! Loopback tests of the command line: `check` accepts the documented example and refuses
//! malformed files with the file, line and field named and exit status 2; `nft` prints
//! the ruleset without needing privileges.

use std::path::Path;
use std::process::Command;

fn portier(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portier")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_example_checks_ok_with_a_summary() {
    let (code, out, err) = portier(&["check", "--config", "configs/portier.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configs/portier.toml: OK"), "{out}");
    assert!(
        out.contains("pool cas: leastconn over 2 server(s); tcp check every 2s (timeout 1s, rise 2, fall 3)"),
        "{out}"
    );
    assert!(out.contains("service cas-rpc: tcp 198.19.0.10 ports 135,59532,59533-59534 -> pool cas; source client (transparent); sticky client-ip table cas for 2h; idle 2h"), "{out}");
}

/// A self-signed certificate for `names` and its key, written as `dir/stem.pem` and
/// `dir/stem.key` (the key private to its owner).
fn certificate(dir: &Path, stem: &str, names: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn every_shipped_config_checks_ok() {
    // `check` loads the certificates the files name: made for the test, under their names.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("configs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().map(|e| e == "toml").unwrap_or(false) {
            let text = std::fs::read_to_string(&path).unwrap();
            for stem in ["mail", "lync", "pbx"] {
                certificate(dir.path(), stem, &[&format!("{stem}.example.test")]);
            }
            let copy = dir.path().join(path.file_name().unwrap());
            std::fs::write(&copy, text.replace("/etc/portier/tls/", &format!("{}/", dir.path().display())))
                .unwrap();
            let (code, _, err) = portier(&["check", "--config", copy.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {err}", path.display());
            assert!(!err.contains("warning"), "{}: {err}", path.display());
        }
    }
}

#[test]
fn check_loads_every_certificate_key_and_ca_and_warns_of_a_key_anyone_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificate(d, "mail", &["mail.example.test"]);
    certificate(d, "other", &["other.example.test"]);
    std::fs::create_dir(d.join("a-directory")).unwrap();
    let https = |cert: &str, key: &str, pool_tls: &str| {
        let text = format!(
            "[pools.p]\nservers = [{{ address = \"198.18.2.11\" }}]\n{pool_tls}\n[services.s]\nvip = \"198.19.0.10\"\nports = [443]\nmode = \"https\"\npool = \"p\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            d.join(cert).display(),
            d.join(key).display()
        );
        let path = d.join("check.toml");
        std::fs::write(&path, text).unwrap();
        portier(&["check", "--config", path.to_str().unwrap()])
    };
    let (code, out, err) = https("mail.pem", "mail.key", "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK") && !err.contains("warning"), "{out}{err}");

    for (what, cert, key, tls, want) in [
        ("a missing key", "mail.pem", "gone.key", "", "gone.key"),
        ("a directory as the certificate", "a-directory", "mail.key", "", "a-directory"),
        ("a key of another certificate", "mail.pem", "other.key", "", "does not match"),
        (
            "a missing CA",
            "mail.pem",
            "mail.key",
            "tls = { verify = true, ca = \"/nonexistent/ca.pem\" }",
            "/nonexistent/ca.pem",
        ),
    ] {
        let (code, out, err) = https(cert, key, tls);
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(err.contains(want) && err.contains("do not load"), "{what}: {err}");
        assert!(!out.contains(": OK"), "{what}: {out}");
    }

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("mail.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = https("mail.pem", "mail.key", "");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: private key") && err.contains("readable by every user (mode 644)"),
        "{err}"
    );
}

#[test]
fn check_loads_a_sip_trunks_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificate(d, "um", &["um.example.test"]);
    let run = |ca: &str| {
        let text = format!(
            "[sip]\nlisten = [\"udp:198.18.1.1:5060\"]\ndomain = \"pbx.example.test\"\n\
             [sip.trunks.um]\nkind = \"peer\"\naddress = \"tls:198.18.2.20:5061\"\n\
             tls = {{ ca = \"{ca}\", sni = \"um.example.test\" }}\n"
        );
        let path = d.join("sip.toml");
        std::fs::write(&path, text).unwrap();
        portier(&["check", "--config", path.to_str().unwrap()])
    };
    let (code, out, err) = run(&d.join("um.pem").display().to_string());
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run("/nonexistent/um-ca.pem");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("/nonexistent/um-ca.pem"), "{err}");
}

/// Needs root (CI runs as root): the check is run again as `nobody`.
#[test]
fn check_as_user_finds_a_key_the_service_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // nobody may enter the directory and read the config and the certificate, not the key.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    certificate(d, "mail", &["mail.example.test"]);
    let text = format!(
        "[pools.p]\nservers = [{{ address = \"198.18.2.11\" }}]\n[services.s]\nvip = \"198.19.0.10\"\nports = [443]\nmode = \"https\"\npool = \"p\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        d.join("mail.pem").display(),
        d.join("mail.key").display()
    );
    let config = d.join("check.toml");
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let (code, _, err) = portier(&["check", "--config", config]);
    assert_eq!(code, 0, "root reads the 0600 key: {err}");
    let (code, out, err) = portier(&["check", "--config", config, "--as-user", "nobody"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("mail.key") && err.contains("ermission denied"), "{err}");
    assert!(err.contains("fails as user nobody"), "{err}");
    // Readable by the group nobody is in (nogroup): passes.
    std::os::unix::fs::chown(d.join("mail.key"), None, Some(65534)).unwrap();
    std::fs::set_permissions(d.join("mail.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out, err) = portier(&["check", "--config", config, "--as-user", "nobody"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": OK") && out.contains("checked as user nobody (uid 65534"), "{out}");
    let (code, _, err) = portier(&["check", "--config", config, "--as-user", "no-such-user-here"]);
    assert_eq!(code, 2);
    assert!(err.contains("no user named `no-such-user-here`"), "{err}");
}

const POOL: &str = "[pools.p]\nservers = [{ address = \"198.18.2.11\" }]\n";

fn svc(extra: &str) -> String {
    format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"p\"\n{extra}")
}

/// (what, config text, fragments the error must contain)
fn malformed() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("unknown field", svc("idle_timout = \"2h\"\n"), vec![":7:", "unknown field", "idle_timout"]),
        (
            "dangling pool",
            format!("{POOL}[services.s]\nvip = \"198.19.0.10\"\nports = [80]\npool = \"cas\"\n"),
            vec![":6:", "services.s.pool", "no pool named `cas`"],
        ),
        (
            "overlapping claim",
            format!("{}[services.t]\nvip = \"198.19.0.10\"\nports = [\"70-90\"]\npool = \"p\"\n", svc("")),
            vec![":9:", "services.t.ports", "already claimed by service `s`"],
        ),
        (
            "bad vip",
            svc("").replace("198.19.0.10", "198.19.0"),
            vec![":4:", "services.s.vip", "not an IP address"],
        ),
        (
            "bad server",
            "[pools.p]\nservers = [{ address = \"cas01\" }]\n".into(),
            vec![":2:", "pools.p.servers.address"],
        ),
        (
            "port out of range",
            svc("").replace("[80]", "[65536]"),
            vec![":5:", "services.s.ports", "not a port"],
        ),
        ("backwards range", svc("").replace("[80]", "[\"90-80\"]"), vec!["runs backwards"]),
        ("bad duration", svc("idle_timeout = \"forever\"\n"), vec![":7:", "services.s.idle_timeout"]),
        (
            "bad balance",
            "[pools.p]\nbalance = \"random\"\nservers = [{ address = \"198.18.2.11\" }]\n".into(),
            vec![":2:", "random"],
        ),
        (
            "missing vip",
            format!("{POOL}[services.s]\nports = [80]\npool = \"p\"\n"),
            vec!["missing field `vip`"],
        ),
        ("bad source", svc("source = \"nat\"\n"), vec!["services.s.source", "`nat`"]),
        ("empty pool", "[pools.p]\nservers = []\n".into(), vec!["pools.p.servers", "at least one server"]),
        ("bad check type", format!("{POOL}check = {{ type = \"icmp\" }}\n"), vec![":3:", "icmp"]),
        ("bad admin", format!("[admin]\nlisten = \"localhost\"\n{POOL}"), vec![":2:", "admin.listen"]),
        ("toml syntax", "[pools.p\n".into(), vec![":1:"]),
        (
            "family mismatch",
            svc("").replace("198.19.0.10", "2001:db8:19::10"),
            vec!["services.s.vip", "IPv6 servers"],
        ),
    ]
}

#[test]
fn malformed_configs_are_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (what, text, fragments) in malformed() {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = portier(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{what}: exit {code}\n{out}{err}");
        assert!(err.contains(path.to_str().unwrap()), "{what}: error must name the file:\n{err}");
        for f in fragments {
            assert!(err.contains(f), "{what}: error lacks {f:?}:\n{err}");
        }
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    assert!(malformed().len() >= 10);
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, err) = portier(&["check", "--config", "/nonexistent/portier.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/portier.toml: cannot read"), "{err}");
}

#[test]
fn nft_prints_the_ruleset_and_routing() {
    assert!(Path::new("configs/portier.toml").exists());
    let (code, out, err) = portier(&["nft", "--config", "configs/portier.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ip rule add fwmark 0x1 lookup 100"), "{out}");
    assert!(out.contains("table inet portier {"), "{out}");
    assert!(out.contains(
        "ip daddr 198.19.0.10 tcp dport { 135, 59532, 59533-59534 } tproxy ip to 127.0.0.1:135 meta mark set 0x1 accept"
    ), "{out}");
}
