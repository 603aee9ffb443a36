//! The transparent L4 proxy: accept an intercepted connection, choose a server (stickiness,
//! then the pool's algorithm), connect from the client's address or SNAT, relay until done.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::relay::relay;
use super::Drain;
use crate::balance::ActiveGuard;
use crate::config::Source;
use crate::net::{connect_upstream, ClientAddr, OrigDstAddr, UpstreamSource};
use crate::state::Service;

/// Connect attempts per client connection (the first choice plus redispatches).
const MAX_ATTEMPTS: usize = 3;

/// Accepts on one transparent listener until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = drain.enter();
                let svc = service.clone();
                tokio::spawn(async move {
                    handle(stream, ClientAddr(peer), &svc).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(service = %service.config.name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client_stream: TcpStream, client: ClientAddr, svc: &Service) {
    svc.metrics.connections.inc();
    let orig = match client_stream.local_addr() {
        Ok(a) => OrigDstAddr(a),
        Err(e) => {
            tracing::warn!(service = %svc.config.name, %client, "cannot read original destination: {e}");
            return;
        }
    };
    let _ = client_stream.set_nodelay(true);
    let source = match svc.config.source {
        Source::Client => UpstreamSource::Client(client.ip()),
        Source::Balancer => UpstreamSource::Kernel,
        Source::Address(ip) => UpstreamSource::Fixed(ip),
    };
    let started = Instant::now();
    let mut tried: Vec<usize> = Vec::with_capacity(MAX_ATTEMPTS);
    while tried.len() < MAX_ATTEMPTS {
        let Some(i) = svc.choose(client.ip(), &tried, Instant::now()) else { break };
        let server = svc.pool.servers[i].clone();
        let target = server.target(orig.port());
        let guard = ActiveGuard::new(server.clone());
        match connect_upstream(target, source, svc.config.connect_timeout).await {
            Ok(upstream) => {
                server.metrics.connections.inc();
                let (end, stats) = relay(
                    client_stream,
                    upstream,
                    svc.config.idle_timeout,
                    &server.metrics.bytes_to_server,
                    &server.metrics.bytes_to_client,
                )
                .await;
                drop(guard);
                tracing::info!(
                    service = %svc.config.name, %client, dst = %orig, pool = %svc.pool.name, server = %server.label,
                    bytes_to_server = stats.to_server, bytes_to_client = stats.to_client,
                    duration_ms = started.elapsed().as_millis() as u64, end = end.as_str(), "connection"
                );
                return;
            }
            Err(e) => {
                server.metrics.connect_errors.inc();
                tracing::warn!(service = %svc.config.name, %client, server = %server.label, %target, "connect failed, trying another server: {e}");
                tried.push(i);
            }
        }
    }
    svc.metrics.no_server.inc();
    tracing::warn!(
        service = %svc.config.name, %client, dst = %orig, pool = %svc.pool.name, tried = tried.len(),
        "no server available: connection refused"
    );
    // Reset rather than a polite FIN: the client must see a refusal, not an empty answer.
    let _ = socket2::SockRef::from(&client_stream).set_linger(Some(std::time::Duration::ZERO));
}
