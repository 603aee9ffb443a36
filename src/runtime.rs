//! The supervisor: binds listeners, installs interception, starts checkers and admin, waits
//! for a stop signal, drains connections and removes what it installed. Nothing imports it.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::config::Mode;
use crate::intercept;
use crate::metrics::Metrics;
use crate::net::transparent_listener;
use crate::proxy::{http, tcp, Drain};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("service {service}: cannot open transparent listener {addr}: {source}")]
    Listener { service: String, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("admin listener {addr}: {source}")]
    Admin { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("installing interception rules: {0}")]
    Intercept(#[from] intercept::InterceptError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Http(#[from] crate::proxy::http::HttpSetupError),
    #[error("{0}")]
    Sip(#[from] crate::sip::service::SipError),
}

/// Runs portier until SIGTERM or SIGINT, then stops gracefully.
pub async fn run(config: Config) -> Result<(), RuntimeError> {
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(State::build(config, &metrics));
    let config = state.config.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = Arc::new(Drain::default());

    // Certificates and upstream TLS are loaded before anything is installed: a bad file stops
    // the start with its name, and nothing is left behind.
    let mut http_services = std::collections::HashMap::new();
    for svc in state.services.iter().filter(|s| s.config.mode.is_http() || s.config.mode == Mode::Redirect) {
        let hs = http::HttpService::build(svc.clone(), &config, &metrics, drain.clone())?;
        http_services.insert(svc.config.name.clone(), Arc::new(hs));
    }

    // Listeners first, rules second: a rule with no listener behind it drops SYNs.
    let mut listeners = Vec::new();
    for svc in &state.services {
        for addr in intercept::listener_addrs(svc.listener_port) {
            if !svc.config.vips.iter().any(|v| v.is_ipv6() == addr.is_ipv6()) {
                continue;
            }
            let l = transparent_listener(addr).map_err(|source| RuntimeError::Listener {
                service: svc.config.name.clone(),
                addr,
                source,
            })?;
            listeners.push((l, svc.clone()));
        }
    }
    // SIP sockets are bound before anything is installed, like the listeners above.
    let sip = match &config.sip {
        Some(s) => Some((crate::sip::service::bind(s).await?, Arc::new(s.clone()))),
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| RuntimeError::Admin { addr: config.admin.listen, source })?;
    if config.global.drain_timeout >= Duration::from_secs(85) {
        tracing::warn!(
            "global.drain_timeout is {:?}: the shipped systemd unit stops waiting after 90 s (TimeoutStopSec); raise it too, or portier is killed before it removes its rules",
            config.global.drain_timeout
        );
    }
    if !config.admin.listen.ip().is_loopback() {
        tracing::warn!(addr = %config.admin.listen, "admin API listens beyond loopback: /metrics and /status are reachable from the network");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?;

    let ports: Vec<u16> = state.services.iter().map(|s| s.listener_port).collect();
    intercept::install(&config, &ports)?;
    tracing::info!(
        services = state.services.len(),
        pools = state.pools.len(),
        admin = %config.admin.listen,
        "portier running: nftables table inet portier and fwmark {:#x} -> table {} installed",
        config.intercept.fwmark,
        config.intercept.route_table
    );

    let mut accepting = Vec::new();
    for (l, svc) in listeners {
        let task = match svc.config.mode {
            Mode::Tcp | Mode::Tls => tokio::spawn(tcp::accept_loop(l, svc, drain.clone(), stop_rx.clone())),
            Mode::Http | Mode::Https | Mode::Redirect => {
                let hs = http_services.get(&svc.config.name).expect("built for every L7 service").clone();
                tokio::spawn(http::accept_loop(l, hs, drain.clone(), stop_rx.clone()))
            }
        };
        accepting.push(task);
    }
    let mut tasks = Vec::new();
    tasks.extend(crate::health::driver::spawn_all(&state, stop_rx.clone()));
    let sip = sip.map(|(bound, sip_cfg)| crate::sip::service::spawn(bound, sip_cfg, metrics.sip()));
    let sip_status = sip.as_ref().map_or_else(|| watch::channel(String::new()).1, |s| s.status());
    let admin = Arc::new(Admin { metrics: metrics.clone(), state: state.clone(), sip_status });
    tasks.push(tokio::spawn(admin::serve(admin_listener, admin, stop_rx.clone())));
    tasks.push(tokio::spawn(purge_sticky(state.clone(), stop_rx.clone())));

    let mut sighup = signal(SignalKind::hangup()).map_err(RuntimeError::Signal)?;
    let why = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            // SIGHUP re-reads the certificates; reloading the rest of the configuration is not
            // there yet (and SIGHUP's default action would kill portier, leaving its rules).
            _ = sighup.recv() => {
                for hs in http_services.values().filter(|h| h.acceptor.is_some()) {
                    match hs.reload_certificates() {
                        Ok(()) => tracing::info!(service = %hs.svc.config.name, "SIGHUP: certificates reloaded"),
                        Err(e) => tracing::error!(service = %hs.svc.config.name, "SIGHUP: certificates NOT reloaded, the running ones stay: {e}"),
                    }
                }
                tracing::info!("SIGHUP: other configuration changes need a restart (SIGTERM drains first)");
            }
        }
    };
    let limit = config.global.drain_timeout;
    tracing::info!(active = drain.active(), "{why}: refusing new connections; draining for up to {limit:?}");
    if let Some(s) = &sip {
        s.drain(std::time::Instant::now() + limit);
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // The rules stay during the drain: established transparent flows need the socket rule
    // and the local route until they end.
    let drained = tokio::select! {
        _ = drain.wait_idle() => true,
        _ = tokio::time::sleep(limit) => false,
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
    };
    if !drained {
        tracing::warn!(active = drain.active(), "drain limit reached: closing remaining connections");
    }
    for t in accepting {
        t.abort();
    }
    if let Some(s) = sip {
        s.join().await;
    }
    intercept::remove(&config.intercept);
    tracing::info!("stopped: interception rules and routes removed");
    Ok(())
}

async fn purge_sticky(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
        let now = std::time::Instant::now();
        for t in &state.sticky_tables {
            t.purge(now);
        }
        for t in &state.cookie_tables {
            t.purge(now);
        }
    }
}
