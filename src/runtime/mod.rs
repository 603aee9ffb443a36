//! The supervisor: installs the signal handlers, binds listeners, installs interception,
//! starts checkers, admin and the control socket, applies reloads, and on a stop drains
//! connections and removes what it installed. Nothing imports it.

mod limits;
mod listeners;
mod memory;
mod reload;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::health::driver::Checkers;
use crate::intercept;
use crate::metrics::Metrics;
use crate::proxy::admission::ConnectionLimit;
use crate::proxy::Drain;
use crate::state::State;
use listeners::Listeners;
pub use reload::serving_parts;

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
    #[error("{0}")]
    Control(#[from] crate::control::ControlError),
}

/// Everything that runs, with a handle each, so a reload can change parts of it.
pub(crate) struct Running {
    /// The file the configuration came from (a reload re-reads it, or is given another).
    path: std::path::PathBuf,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    /// Client connections against `global.max_connections`.
    limit: Arc<ConnectionLimit>,
    stop: watch::Receiver<bool>,
    /// The serving state; admin and the sticky purge read it, a reload swaps it.
    state: Arc<ArcSwap<State>>,
    listeners: Listeners,
    checkers: Checkers,
    /// The B2BUA, when `[sip]` is configured.
    sip: Option<crate::sip::SipHandle>,
}

/// Signals whose default action ends the process although nobody means portier to stop (a
/// stray `kill -USR1`, a timer signal from a library): each is logged and otherwise ignored,
/// so it cannot leave the nftables rules pointing at a dead socket. Handlers, not SIG_IGN:
/// the `nft` and `ip` children start with the default dispositions.
const STRAY_SIGNALS: [(libc::c_int, &str); 7] = [
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
];

fn ignore_stray_signals() -> Result<(), RuntimeError> {
    for (number, name) in STRAY_SIGNALS {
        let mut stream = signal(SignalKind::from_raw(number)).map_err(RuntimeError::Signal)?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::warn!("{name} received and ignored (SIGHUP reloads, SIGTERM stops)");
            }
        });
    }
    Ok(())
}

/// Runs portier until SIGTERM, SIGINT or SIGQUIT, then stops gracefully.
pub async fn run(config: Config) -> Result<(), RuntimeError> {
    // Signals before anything touches the system: a SIGHUP or SIGTERM arriving during the
    // start must not kill portier with its rules installed.
    let mut sigterm = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RuntimeError::Signal)?;
    let mut sigquit = signal(SignalKind::quit()).map_err(RuntimeError::Signal)?;
    ignore_stray_signals()?;

    let metrics = Arc::new(Metrics::new());
    let drain = Arc::new(Drain::default());
    limits::raise_open_file_limit();
    let limit = Arc::new(ConnectionLimit::new(metrics.limits.connections.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(State::build(config, &metrics));
    let config = state.config.clone();

    // Certificates and upstream TLS are loaded, and every socket bound, before anything is
    // installed: a bad file or a busy port stops the start with its name, nothing left behind.
    let serving = serving_parts(&state, &metrics, &drain)?;
    let mut listeners = Listeners::default();
    let bound = listeners.bind_missing(&state)?;
    let sip = match &config.sip {
        Some(s) => Some((crate::sip::service::bind(s).await?, Arc::new(s.clone()))),
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| RuntimeError::Admin { addr: config.admin.listen, source })?;
    let control_listener = crate::control::bind(&config.admin.control)?;
    if config.global.drain_timeout >= Duration::from_secs(85) {
        tracing::warn!(
            "global.drain_timeout is {:?}: the shipped systemd unit stops waiting after 90 s (TimeoutStopSec); raise it too, or portier is killed before it removes its rules",
            config.global.drain_timeout
        );
    }
    if !config.admin.listen.ip().is_loopback() {
        tracing::warn!(addr = %config.admin.listen, "admin API listens beyond loopback: /metrics and /status are reachable from the network");
    }

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
    state.commit(None);
    limits::apply(&config, &limit, &metrics);
    listeners.serve(bound, &state, &serving, &drain, &limit, &stop_rx);
    let mut checkers = Checkers::default();
    checkers.reconcile(&state);
    let shared = Arc::new(ArcSwap::new(state.clone()));

    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    let mut tasks = Vec::new();
    let sip = sip.map(|(bound, sip_cfg)| crate::sip::service::spawn(bound, sip_cfg, metrics.sip()));
    let sip_status = sip.as_ref().map_or_else(|| watch::channel(String::new()).1, |s| s.status());
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        state: shared.clone(),
        sip_status,
        reload: reload_tx.clone(),
    });
    tasks.push(tokio::spawn(admin::serve(admin_listener, admin, stop_rx.clone())));
    tasks.push(tokio::spawn(crate::control::serve(
        control_listener,
        config.admin.control.clone(),
        reload_tx,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(purge_sticky(shared.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(memory::trim_after_bursts(drain.clone(), metrics.clone(), stop_rx.clone())));

    let mut running = Running {
        path: config.path.clone(),
        metrics,
        drain: drain.clone(),
        limit,
        stop: stop_rx,
        state: shared,
        listeners,
        checkers,
        sip,
    };
    let mut reap = tokio::time::interval(listeners::CLOSING_GRACE / 2);
    let why = loop {
        tokio::select! {
            _ = reap.tick(), if running.listeners.closing() => {
                running.listeners.reap(std::time::Instant::now());
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sigquit.recv() => break "SIGQUIT",
            _ = sighup.recv() => {
                running.reload(None).await;
            }
            Some(req) = reload_rx.recv() => {
                let outcome = running.reload(req.path).await;
                let _ = req.reply.send(outcome);
            }
        }
    };
    let config = running.state.load().config.clone();
    let limit = config.global.drain_timeout;
    tracing::info!(active = drain.active(), "{why}: refusing new connections; draining for up to {limit:?}");
    if let Some(s) = &running.sip {
        s.drain(std::time::Instant::now() + limit);
    }
    let _ = stop_tx.send(true);
    running.checkers.stop_all();
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
        _ = sigquit.recv() => false,
    };
    if !drained {
        tracing::warn!(active = drain.active(), "drain limit reached: closing remaining connections");
    }
    running.listeners.abort_all();
    // Calls in progress ran until the drain deadline; the BYEs are out once it returns.
    if let Some(s) = running.sip.take() {
        s.join().await;
    }
    intercept::remove(&config.intercept);
    tracing::info!("stopped: interception rules and routes removed");
    Ok(())
}

async fn purge_sticky(state: Arc<ArcSwap<State>>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
        let now = std::time::Instant::now();
        let state = state.load();
        for t in state.sticky_tables.values() {
            t.purge(now);
        }
        for t in state.cookie_tables.values() {
            t.purge(now);
        }
    }
}
