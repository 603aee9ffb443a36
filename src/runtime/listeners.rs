//! A handle per transparent listener, keyed by its loopback address: its accept task, the
//! slot holding what it serves (swapped by a reload) and its own close signal. A reload binds
//! the listeners it needs before the rules point at them and closes those no rule points at
//! any more; a listener whose address stays keeps its socket (and its queue).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RuntimeError;
use crate::intercept::listener_addrs;
use crate::net::transparent_listener;
use crate::proxy::accept::{accept_loop, Serving};
use crate::proxy::Drain;
use crate::state::State;

struct Handle {
    slot: Arc<ArcSwap<Serving>>,
    close: watch::Sender<bool>,
    task: JoinHandle<()>,
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
        stop: &watch::Receiver<bool>,
    ) {
        let wanted = wanted(state);
        let slot_of =
            |name: &str| serving.get(name).expect("a serving part is built for every service").clone();
        for (addr, handle) in &self.running {
            if let Some(name) = wanted.get(addr) {
                handle.slot.store(slot_of(name));
            }
        }
        for (addr, listener) in bound.0 {
            let slot = Arc::new(ArcSwap::new(slot_of(&wanted[&addr])));
            let (close, close_rx) = watch::channel(false);
            let task =
                tokio::spawn(accept_loop(listener, slot.clone(), drain.clone(), stop.clone(), close_rx));
            self.running.insert(addr, Handle { slot, close, task });
        }
        self.running.retain(|addr, h| {
            let keep = wanted.contains_key(addr);
            if !keep {
                tracing::info!(listener = %addr, "listener closed: no service uses it any more");
                let _ = h.close.send(true);
            }
            keep
        });
    }

    /// Ends every accept task (after the drain).
    pub fn abort_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.running) {
            h.task.abort();
        }
    }
}
