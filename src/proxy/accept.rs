//! The one accept loop of every transparent listener, whatever the service's mode. What a
//! listener serves is read per accepted connection from a swappable slot, so a reload hands
//! a listener its service's new state without closing the socket; the connection keeps the
//! state it started with until it ends.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::admission::{admit, ConnectionLimit};
use super::http::{self, HttpService};
use super::{tcp, Drain};
use crate::net::ClientAddr;
use crate::state::{LogLimiter, Service};

/// What a listener hands its connections to.
pub enum Serving {
    /// tcp and tls (passthrough) services.
    Tcp(Arc<Service>),
    /// http, https and redirect services.
    Http(Arc<HttpService>),
}

impl Serving {
    pub fn service(&self) -> &Arc<Service> {
        match self {
            Serving::Tcp(s) => s,
            Serving::Http(h) => &h.svc,
        }
    }
}

/// Accepts until `close` turns true (the listener left the configuration and has taken
/// what was queued on it: the runtime decides when). Once `stop` turns true (portier is
/// stopping) it keeps accepting but resets every new connection, so clients get a fast
/// refusal instead of SYNs that the still-installed tproxy rule diverts to nobody.
pub async fn accept_loop(
    listener: TcpListener,
    serving: Arc<ArcSwap<Serving>>,
    drain: Arc<Drain>,
    limit: Arc<ConnectionLimit>,
    stop: watch::Receiver<bool>,
    mut close: watch::Receiver<bool>,
) {
    // Out of descriptors the same error repeats every back-off: one line a second says it.
    let accept_log = LogLimiter::default();
    let refused_log = LogLimiter::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut close) => return,
        };
        match accepted {
            Ok((stream, peer)) if *stop.borrow() => refuse(&stream, peer, "stopping: connection reset"),
            // Only TPROXY diverts here; a local process dialling the internal port directly
            // would make us "transparently" bind 127.0.0.1 towards the servers.
            Ok((stream, peer)) if peer.ip().is_loopback() => {
                refuse(&stream, peer, "direct loopback connection refused")
            }
            Ok((stream, peer)) => {
                let serving = serving.load_full();
                let admitted = match admit(&limit, serving.service()) {
                    Ok(a) => a,
                    Err(reason) => {
                        let svc = serving.service();
                        svc.metrics.refused(reason);
                        if refused_log.allow() {
                            tracing::warn!(
                                service = %svc.config.name, client = %peer, limit = reason,
                                held_back = refused_log.take_suppressed(),
                                "connection reset at a limit (see portier_service_connections_refused_total)"
                            );
                        }
                        refuse(&stream, peer, "over a connection limit");
                        continue;
                    }
                };
                let guard = drain.enter();
                // One task shape per kind: each task is sized for its own state machine only
                // (an L4 relay about 4 KiB, a plain HTTP connection about 2 KiB).
                match &*serving {
                    Serving::Tcp(svc) => {
                        let svc = svc.clone();
                        tokio::spawn(async move {
                            tcp::handle(stream, ClientAddr(peer), &svc).await;
                            drop((admitted, guard));
                        });
                    }
                    Serving::Http(hs) => {
                        let (hs, stop) = (hs.clone(), stop.clone());
                        tokio::spawn(async move {
                            http::connection(stream, ClientAddr(peer), hs, stop).await;
                            drop((admitted, guard));
                        });
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if accept_log.allow() {
                    tracing::warn!(
                        service = %serving.load().service().config.name,
                        suppressed = accept_log.take_suppressed(),
                        "accept failed: {e}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn refuse(stream: &TcpStream, peer: std::net::SocketAddr, why: &str) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    tracing::debug!(client = %peer, "{why}");
}

/// Resolves once the flag is true (or its sender is gone); the borrow ends inside, so the
/// future stays `Send`.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
