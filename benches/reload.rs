//! How long a reload takes, from `portier reload` being run to its answer (the new state
//! serving), in the namespace lab with a real portier and real nftables. As root:
//! `cargo bench --bench reload` (release build).
//!
//! Configurations: 100 services x 10 servers (each service on its own port and pool; the
//! servers need not exist, nothing is checked or dialled), and the shipped configs
//! (`configs/portier.toml`, `configs/exchange-2010-cas.toml`, `configs/ocs-2007r2-pool.toml`,
//! with generated certificates). For each, BENCH_RELOADS (15) reloads of each kind, alternating:
//! - `same file`: nothing changed (the file is still read, validated, planned, rebuilt and the
//!   certificates re-read);
//! - `weights`: every server's weight changes (no nftables change);
//! - `service +/-`: one service added, then removed again (a listener bound or closed and the
//!   nftables table replaced).
//!
//! Two figures per row, medians: the client's wall time (`portier reload` process start to
//! exit, which includes its own start-up) and portier's own `elapsed_ms` from its log line.
//! Printed as a markdown table; nothing is asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portier::lab::{Lab, LabSpec, PortierProcess};

const ADMIN: &str = "127.0.0.1:9090";

fn big(services: usize, servers: usize, weight: u32, extra: bool) -> String {
    let mut s = String::from("[global]\ndrain_timeout = \"5s\"\n\n");
    let n = services + usize::from(extra);
    for i in 0..n {
        let list: Vec<String> = (0..servers)
            .map(|j| {
                let k = i * servers + j;
                format!("{{ address = \"198.18.{}.{}\", weight = {weight} }}", 10 + k / 250, 1 + k % 250)
            })
            .collect();
        s.push_str(&format!("[pools.p{i:03}]\nbalance = \"leastconn\"\nservers = [{}]\n\n", list.join(", ")));
        s.push_str(&format!(
            "[services.s{i:03}]\nvip = \"198.19.0.10\"\nports = [{}]\npool = \"p{i:03}\"\n\n",
            20000 + i
        ));
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Certificates the shipped HTTPS configs name, made for the run.
fn certificates(dir: &Path) {
    let key = rcgen::KeyPair::generate().expect("key");
    let names = vec!["mail.example.test".to_string(), "lync.example.test".to_string()];
    let cert = rcgen::CertificateParams::new(names).expect("params").self_signed(&key).expect("cert");
    for stem in ["mail", "lync", "cas-ca", "lync-ca"] {
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
    }
}

/// A configuration by (weight, with the extra service).
type MakeConfig = Box<dyn Fn(u32, bool) -> String>;

struct Row {
    config: String,
    kind: &'static str,
    wall_ms: f64,
    inside_ms: f64,
}

fn measure(p: &PortierProcess, exe: &Path, text: &str, rounds: usize) -> (f64, f64) {
    p.write_config(text).expect("write config");
    let mut wall = Vec::new();
    let mut inside = Vec::new();
    for _ in 0..rounds {
        let before = p.log();
        let t0 = Instant::now();
        let (code, out) = p.reload(exe).expect("portier reload");
        wall.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code, 0, "reload refused: {out}");
        let log = p.log();
        let ms = log[before.len()..]
            .lines()
            .filter(|l| l.contains("configuration reloaded"))
            .find_map(|l| l.split("elapsed_ms=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
            .expect("elapsed_ms in the log");
        inside.push(ms);
    }
    (median(wall), median(inside))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_RELOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_portier"));
    let lab = Lab::build(&LabSpec { backends: 1, extra_clients: 0 }).expect("lab (needs root)");
    let tls = tempfile::tempdir().expect("tempdir");
    certificates(tls.path());
    let mut rows = Vec::new();

    let mut configs: Vec<(String, MakeConfig)> =
        vec![("100 services x 10 servers".into(), Box::new(|w, extra| big(100, 10, w, extra)))];
    for f in ["configs/portier.toml", "configs/exchange-2010-cas.toml", "configs/ocs-2007r2-pool.toml"] {
        let text = std::fs::read_to_string(f)
            .expect("run from the repository root")
            .replace("/etc/portier/tls/", &format!("{}/", tls.path().display()));
        configs.push((
            f.to_string(),
            Box::new(move |w, extra| {
                let mut t = text.replace("{ address = \"198.18.2.12\" }", &format!("{{ address = \"198.18.2.12\", weight = {w} }}"));
                if extra {
                    t.push_str("\n[pools.bench-extra]\nservers = [{ address = \"198.18.2.13\" }]\n[services.bench-extra]\nvip = \"198.19.0.10\"\nports = [30000]\npool = \"bench-extra\"\n");
                }
                t
            }),
        ));
    }
    for (name, make) in &configs {
        let p = PortierProcess::start(&lab.balancer, &exe, &make(1, false), ADMIN).expect("portier start");
        let same = measure(&p, &exe, &make(1, false), rounds);
        let mut weights = (Vec::new(), Vec::new());
        let mut plus_minus = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (w, i) = measure(&p, &exe, &make(2 + (r % 2) as u32, false), 1);
            weights.0.push(w);
            weights.1.push(i);
            let (w, i) = measure(&p, &exe, &make(1, r % 2 == 0), 1);
            plus_minus.0.push(w);
            plus_minus.1.push(i);
        }
        rows.push(Row { config: name.clone(), kind: "same file", wall_ms: same.0, inside_ms: same.1 });
        rows.push(Row {
            config: name.clone(),
            kind: "weights",
            wall_ms: median(weights.0),
            inside_ms: median(weights.1),
        });
        rows.push(Row {
            config: name.clone(),
            kind: "service +/-",
            wall_ms: median(plus_minus.0),
            inside_ms: median(plus_minus.1),
        });
        drop(p);
        std::thread::sleep(Duration::from_millis(200));
    }

    println!(
        "| configuration | change | `portier reload` wall time (median) | applied inside portier (median) |"
    );
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        println!("| {} | {} | {:.1} ms | {:.2} ms |", r.config, r.kind, r.wall_ms, r.inside_ms);
    }
    println!("\n{rounds} reloads of each kind; `cargo bench --bench reload` as root.");
}
