//! The command line: run | check | nft | reload | doctor | lab.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, format_duration, Config, Source, StickyBy};
use crate::intercept;

mod as_user;
mod scheduler;

#[derive(Parser, Debug)]
#[command(name = "portier", version, about = "Transparent L4 load balancer for Microsoft UC estates")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the balancer (installs its nftables table and routes; removes them on SIGTERM).
    Run {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file and every file it names, and print a summary.
    Check {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Check again as this user (the service's), so a key it cannot read is found now.
        /// Needs root.
        #[arg(long, value_name = "USER")]
        as_user: Option<String>,
    },
    /// Print the nftables ruleset and policy routing `run` would install.
    Nft {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Ask the running portier to load a configuration file (default: the one it runs) and
    /// print what changed, or every error of a refused file.
    Reload {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The control socket; default: `admin.control` of the file, else /run/portier/control.sock.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Remove the nftables table and policy routing `run` installs, e.g. after a crash (the
    /// unit's ExecStopPost). Idempotent; refuses while a portier answers on the control socket.
    Cleanup {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Remove even though a running portier answers (its traffic stops being intercepted).
        #[arg(long)]
        force: bool,
    },
    /// Check kernel support, capabilities, rules, routes and listeners; explain what is missing.
    Doctor {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Build a namespace lab, run portier in it with a built-in config and show who served whom.
    Lab {
        /// Stop after this long (e.g. "30s"); without it, wait for Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
    },
}

/// Exit status of a command that failed on its own terms (invalid config, doctor findings).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| anyhow::Error::new(Refused(e.to_string())))
}

/// `portier cleanup`: the file names the fwmark, route table and control socket; a file that
/// no longer loads (edited since the start) still lets the defaults be cleaned up.
fn cleanup(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let (intercept, control) = match config::load(path) {
        Ok(c) => (c.intercept, c.admin.control.clone()),
        Err(e) => {
            eprintln!("warning: {e}\nwarning: cleaning up with the default [intercept] and control socket");
            let defaults = config::InterceptConfig {
                fwmark: config::DEFAULT_FWMARK,
                route_table: config::DEFAULT_ROUTE_TABLE,
            };
            (defaults, PathBuf::from(config::DEFAULT_CONTROL_SOCKET))
        }
    };
    if std::os::unix::net::UnixStream::connect(&control).is_ok() {
        if !force {
            return Err(anyhow::Error::new(Refused(format!(
                "a portier is running (it answers on {}): stop it first, or use --force",
                control.display()
            ))));
        }
    } else if std::fs::remove_file(&control).is_ok() {
        println!("removed: stale control socket {}", control.display());
    }
    let removed = intercept::cleanup(&intercept).map_err(|e| anyhow::Error::new(Refused(e)))?;
    if removed.is_empty() {
        println!("nothing to remove");
    }
    for r in removed {
        println!("removed: {r}");
    }
    Ok(())
}

/// What `check` found loading the files a configuration names.
#[derive(Debug, Default)]
pub struct FileCheck {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Loads every certificate, key and CA file the configuration names, as `run` will: each
/// chain parsed and matched with its key, each CA file parsed. A key that every user may read
/// is a warning (it still loads).
pub fn check_files(c: &Config) -> FileCheck {
    let mut out = FileCheck::default();
    let mut keys = Vec::new();
    for svc in c.services.iter().filter(|s| s.mode == config::Mode::Https) {
        if let Err(e) = crate::tls::CertStore::load(&svc.certificates) {
            out.errors.push(format!("service {}: certificates: {e}", svc.name));
        }
        keys.extend(svc.certificates.iter().map(|s| s.key.clone()));
    }
    for pool in &c.pools {
        if let Some(t) = &pool.tls {
            if let Err(e) = crate::tls::client_config(t, crate::tls::ALPN_HTTP1) {
                out.errors.push(format!("pool {}: tls: {e}", pool.name));
            }
        }
    }
    if let Some(sip) = &c.sip {
        if let Err(e) = crate::sip::service::check_certificates(sip) {
            out.errors.push(format!("sip.tls: {e}"));
        }
        keys.extend(sip.tls.iter().map(|s| s.key.clone()));
    }
    keys.sort();
    keys.dedup();
    for key in keys {
        if let Some(mode) = crate::tls::world_readable_key(&key) {
            out.warnings.push(format!(
                "private key {} is readable by every user (mode {mode:o}): chmod 600 it, or 640 with the service's group",
                key.display()
            ));
        }
    }
    out
}

pub fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", c.path.display());
    let _ = writeln!(
        s,
        "admin: {}   intercept: fwmark {:#x}, route table {}",
        c.admin.listen, c.intercept.fwmark, c.intercept.route_table
    );
    for p in &c.pools {
        let check = p.check.as_ref().map(|ch| {
            format!(
                "{} check every {} (timeout {}, rise {}, fall {})",
                ch.kind.as_str(),
                format_duration(ch.interval),
                format_duration(ch.timeout),
                ch.rise,
                ch.fall
            )
        });
        let _ = writeln!(
            s,
            "pool {}: {} over {} server(s); {}",
            p.name,
            p.balance.as_str(),
            p.servers.len(),
            check.unwrap_or_else(|| "no check (always up)".into())
        );
        for sv in &p.servers {
            let _ = writeln!(s, "  server {} weight {}", sv.label(), sv.weight);
        }
    }
    for sv in &c.services {
        let vips: Vec<String> = sv.vips.iter().map(|v| v.to_string()).collect();
        let ports: Vec<String> = sv.ports.iter().map(|p| p.to_string()).collect();
        let source = match sv.source {
            Source::Client => "client (transparent)".to_string(),
            Source::Balancer => "balancer (SNAT)".to_string(),
            Source::Address(ip) => format!("{ip} (SNAT)"),
        };
        let sticky = match sv.sticky.as_ref().map(|st| (&st.by, st.expire)) {
            None => "none".to_string(),
            Some((StickyBy::ClientIp { table }, e)) => {
                format!("client-ip table {table} for {}", format_duration(e))
            }
            Some((StickyBy::Cookie { name }, e)) => format!("cookie {name} for {}", format_duration(e)),
            Some((StickyBy::ServerCookie { name }, e)) => {
                format!("server cookie {name} for {}", format_duration(e))
            }
        };
        let target = match c.pool(sv) {
            Some(p) => format!("pool {}", p.name),
            None => "redirect to https".to_string(),
        };
        let routes: String = sv
            .routes
            .iter()
            .map(|r| {
                let host = r.host.as_deref().unwrap_or("*");
                let path = r.path.as_deref().unwrap_or("");
                format!("; route {host}{path} -> pool {}", r.pool)
            })
            .collect();
        let _ = writeln!(
            s,
            "service {}: {} {} ports {} -> {target}{routes}; source {}; sticky {}; idle {}",
            sv.name,
            sv.mode.as_str(),
            vips.join(","),
            ports.join(","),
            source,
            sticky,
            format_duration(sv.idle_timeout)
        );
    }
    if let Some(sip) = &c.sip {
        s.push_str(&config::sip_summary(sip));
    }
    s
}

pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// The control socket a file names, read leniently: a file too broken to validate must
/// still reach portier, which reports its errors in the log and the metrics too.
fn control_socket_of(path: &std::path::Path) -> PathBuf {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("admin")?.get("control")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONTROL_SOCKET))
}

pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config, as_user: Some(name) } => {
            let user = as_user::lookup(&name).map_err(|e| anyhow::Error::new(Refused(e.to_string())))?;
            let status =
                as_user::check_as(&user, &config).map_err(|e| anyhow::Error::new(Refused(e.to_string())))?;
            if !status.success() {
                return Err(anyhow::Error::new(Refused(format!(
                    "the check fails as user {} (uid {}): the service could not load what is named above",
                    user.name, user.uid
                ))));
            }
            println!("checked as user {} (uid {}, gid {})", user.name, user.uid, user.gid);
            Ok(())
        }
        Command::Check { config, as_user: None } => {
            let c = load(&config)?;
            let files = check_files(&c);
            for w in &files.warnings {
                eprintln!("warning: {w}");
            }
            if !files.errors.is_empty() {
                return Err(anyhow::Error::new(Refused(format!(
                    "{}: the configuration parses, but its files do not load:\n{}",
                    c.path.display(),
                    files.errors.join("\n")
                ))));
            }
            print!("{}", summary(&c));
            Ok(())
        }
        Command::Nft { config } => {
            let c = load(&config)?;
            let ports = intercept::listener_ports(&c);
            print!("{}", intercept::render_routing(&c.intercept));
            print!("{}", intercept::render_replace(&c, &ports));
            Ok(())
        }
        Command::Doctor { config } => {
            let c = config.as_deref().map(load).transpose()?;
            let report = intercept::doctor::diagnose(c.as_ref());
            for f in &report.findings {
                println!("{f}");
            }
            if report.failed() {
                Err(anyhow::Error::new(Refused("doctor found problems (FAIL lines above)".into())))
            } else {
                Ok(())
            }
        }
        Command::Run { config } => {
            let c = load(&config)?;
            init_logging(&c.global.log_level);
            for w in check_files(&c).warnings {
                tracing::warn!("{w}");
            }
            let sched =
                scheduler::choose(c.global.threads, scheduler::environment(), scheduler::available_cpus());
            tracing::info!("runtime: {sched}");
            let rt = sched.build()?;
            rt.block_on(crate::runtime::run(c))?;
            Ok(())
        }
        Command::Reload { config, control } => {
            let socket = control.unwrap_or_else(|| control_socket_of(&config));
            // Absolute: the running portier resolves it, from its own working directory.
            let file = std::path::absolute(&config).unwrap_or(config);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let outcome = rt.block_on(crate::control::request_reload(&socket, Some(&file)))?;
            print!("{}", outcome.report);
            if outcome.applied {
                Ok(())
            } else {
                Err(anyhow::Error::new(Refused(format!(
                    "{}: reload refused; portier runs on unchanged",
                    file.display()
                ))))
            }
        }
        Command::Cleanup { config, force } => cleanup(&config, force),
        Command::Lab { duration } => {
            init_logging("info");
            let d = duration
                .as_deref()
                .map(config::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
            crate::lab::demo::run(d)
        }
    }
}
