//! Proxies: one accept loop, the transparent L4 relay (tcp, TLS passthrough) and the L7 HTTP proxy.

pub mod accept;
pub mod admission;
pub mod http;
pub mod relay;
pub mod retry;
pub mod sni;
pub mod splice;
pub mod tcp;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counts live connections so a stopping portier can wait for them to finish.
#[derive(Default)]
pub struct Drain {
    active: AtomicUsize,
    idle: Notify,
}

/// Held by each connection task; dropping it may wake the drain waiter.
pub struct DrainGuard(Arc<Drain>);

impl Drain {
    pub fn enter(self: &Arc<Self>) -> DrainGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        DrainGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
