//! A handle per transparent listener, keyed by its loopback address: its accept task, the
//! slot holding what it serves (swapped by a reload) and its own close signal. A reload binds
//! the listeners it needs before the rules point at them and closes those no rule points at
//! any more; a listener whose address stays keeps its socket (and its queue).
//!
//! A listener no rule points at any more still takes, for `CLOSING_GRACE`, the connections
//! that were queued on it before the nftables swap; wanted again meanwhile (a service removed
//! and added back, a port passed to another service) it simply serves again, so no bind can
//! race its closing socket. Closing happens on the runtime's own loop (`reap`), never in the
//! accept task, so a reload and a close never cross.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RuntimeError;
use crate::intercept::listener_addrs;
use crate::net::transparent_listener;
use crate::proxy::accept::{accept_loop, Serving};
use crate::proxy::admission::ConnectionLimit;
use crate::proxy::Drain;
use crate::state::State;

/// How long a listener no rule points at any more keeps accepting what is queued on it.
pub const CLOSING_GRACE: Duration = Duration::from_millis(500);

struct Handle {
    slot: Arc<ArcSwap<Serving>>,
    close: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Since when no service wants it.
    closing_since: Option<Instant>,
}

/// Listeners bound for a new state but not serving yet.
pub struct Bound(Vec<(SocketAddr, TcpListener)>);

#[derive(Default)]
pub struct Listeners {
    running: BTreeMap<SocketAddr, Handle>,
}

/// The loopback addresses `state`'s services listen on, with the service's name.
fn wanted(state: &State) -> BTreeMap<SocketAddr, String> {
    let mut out = BTreeMap::new();
    for svc in &state.services {
        for addr in listener_addrs(svc.listener_port) {
            if svc.config.vips.iter().any(|v| v.is_ipv6() == addr.is_ipv6()) {
                out.insert(addr, svc.config.name.clone());
            }
        }
    }
    out
}

impl Listeners {
    /// Binds what `state` needs and is not running yet. Nothing running is touched, so a
    /// failure (a port taken by another program) leaves the old state serving.
    pub fn bind_missing(&self, state: &State) -> Result<Bound, RuntimeError> {
        let mut bound = Vec::new();
        for (addr, service) in wanted(state) {
            if self.running.contains_key(&addr) {
                continue;
            }
            let l = transparent_listener(addr).map_err(|source| RuntimeError::Listener {
                service,
                addr,
                source,
            })?;
            bound.push((addr, l));
        }
        Ok(Bound(bound))
    }

    /// Makes `state` the one served: listeners that stay get their service's new state, new
    /// ones start, and those `state` no longer needs are told to close (after their queue).
    pub fn serve(
        &mut self,
        bound: Bound,
        state: &State,
        serving: &BTreeMap<String, Arc<Serving>>,
        drain: &Arc<Drain>,
        limit: &Arc<ConnectionLimit>,
        stop: &watch::Receiver<bool>,
    ) {
        let wanted = wanted(state);
        let slot_of =
            |name: &str| serving.get(name).expect("a serving part is built for every service").clone();
        for (addr, handle) in &mut self.running {
            match wanted.get(addr) {
                Some(name) => {
                    handle.slot.store(slot_of(name));
                    handle.closing_since = None;
                }
                None if handle.closing_since.is_none() => {
                    tracing::info!(listener = %addr, "listener closing: no service uses it any more");
                    handle.closing_since = Some(Instant::now());
                }
                None => {}
            }
        }
        for (addr, listener) in bound.0 {
            let slot = Arc::new(ArcSwap::new(slot_of(&wanted[&addr])));
            let (close, close_rx) = watch::channel(false);
            let task = tokio::spawn(accept_loop(
                listener,
                slot.clone(),
                drain.clone(),
                limit.clone(),
                stop.clone(),
                close_rx,
            ));
            self.running.insert(addr, Handle { slot, close, task, closing_since: None });
        }
    }

    /// Closes the listeners no service has wanted for `CLOSING_GRACE`.
    pub fn reap(&mut self, now: Instant) {
        self.running.retain(|addr, h| {
            let done = h.closing_since.is_some_and(|t| now.saturating_duration_since(t) >= CLOSING_GRACE);
            if done {
                tracing::debug!(listener = %addr, "listener closed");
                let _ = h.close.send(true);
            }
            !done
        });
    }

    /// Whether a listener is waiting for `reap`.
    pub fn closing(&self) -> bool {
        self.running.values().any(|h| h.closing_since.is_some())
    }

    /// Ends every accept task (after the drain).
    pub fn abort_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.running) {
            h.task.abort();
        }
    }
}
