//! The transparent L4 proxy (and TLS passthrough routed by SNI): accept an intercepted connection, choose a server (stickiness,
//! then the pool's algorithm), connect from the client's address or SNAT, relay until done.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::http::route::route;
use super::retry::{report_refused, Attempts};
use super::sni::peek_client_hello;
use super::splice::relay_splice;
use crate::balance::ActiveGuard;
use crate::config::Mode;
use crate::net::{connect_upstream, ClientAddr, OrigDstAddr};
use crate::state::Service;

/// One intercepted connection of a tcp or tls service, from accept to close.
pub(crate) async fn handle(client_stream: TcpStream, client: ClientAddr, svc: &Service) {
    svc.metrics.connections.inc();
    let orig = match client_stream.local_addr() {
        Ok(a) => OrigDstAddr(a),
        Err(e) => {
            tracing::warn!(service = %svc.config.name, %client, "cannot read original destination: {e}");
            return;
        }
    };
    let _ = client_stream.set_nodelay(true);
    let pool = if svc.config.mode == Mode::Tls {
        // Passthrough: route by the ClientHello's SNI, which stays in the socket for the server.
        match peek_client_hello(&client_stream, svc.config.connect_timeout.max(Duration::from_secs(5))).await
        {
            Ok(hello) => {
                let host = hello.server_name.as_deref();
                route(&svc.routes, host, "/").unwrap_or_else(|| svc.default_pool()).clone()
            }
            Err(e) => {
                tracing::debug!(service = %svc.config.name, %client, "no usable TLS ClientHello: {e}");
                let _ = socket2::SockRef::from(&client_stream).set_linger(Some(Duration::ZERO));
                return;
            }
        }
    } else {
        svc.default_pool().clone()
    };
    let source = svc.upstream_source(client);
    let started = Instant::now();
    let mut attempts = Attempts::default();
    loop {
        let next = attempts.next(|tried| svc.choose_in(&pool, client.ip(), None, tried, Instant::now()));
        let Ok(i) = next else { break };
        let server = pool.servers[i].clone();
        let target = server.target(orig.port());
        let mut guard = ActiveGuard::new(server.clone());
        match connect_upstream(target, source, svc.config.connect_timeout).await {
            Ok((upstream, _descriptor)) => {
                guard.connected();
                let relaying = relay_splice(
                    client_stream,
                    upstream,
                    svc.config.idle_timeout,
                    &server.metrics.bytes_to_server,
                    &server.metrics.bytes_to_client,
                );
                // Pinned here and lent: passed by value, the relay's state machine (about 3 KB)
                // was laid out twice more inside this task's future, for every connection.
                tokio::pin!(relaying);
                let relayed = tokio::select! {
                    r = keep_sticky_alive(svc, client, relaying) => Some(r),
                    // Removed by a reload (or set to drain) and its drain time is over.
                    _ = server.live.cut_signal() => None,
                };
                let Some((end, stats)) = relayed else {
                    drop(guard);
                    tracing::info!(
                        service = %svc.config.name, %client, dst = %orig, pool = %pool.name, server = %server.label,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "connection closed: its server left the configuration and the drain time is over"
                    );
                    return;
                };
                svc.touch_sticky(client.ip());
                drop(guard);
                tracing::info!(
                    service = %svc.config.name, %client, dst = %orig, pool = %pool.name, server = %server.label,
                    bytes_to_server = stats.to_server, bytes_to_client = stats.to_client,
                    duration_ms = started.elapsed().as_millis() as u64, end = end.as_str(), "connection"
                );
                return;
            }
            Err(e) => {
                server.metrics.connect_errors.inc();
                if svc.connect_error_log.allow() {
                    let held_back = svc.connect_error_log.take_suppressed();
                    tracing::warn!(service = %svc.config.name, %client, server = %server.label, %target, held_back, "connect failed, trying another server: {e}");
                }
                attempts.failed(i);
            }
        }
    }
    report_refused(svc, client, orig, &pool, &attempts, "connection refused");
    // Reset rather than a polite FIN: the client must see a refusal, not an empty answer.
    let _ = socket2::SockRef::from(&client_stream).set_linger(Some(Duration::ZERO));
}

/// Runs `fut` while refreshing the client's stickiness entry, so an Outlook session open for
/// longer than `expire` keeps its later connections on the same server.
async fn keep_sticky_alive<F: std::future::Future>(
    svc: &Service,
    client: ClientAddr,
    mut fut: std::pin::Pin<&mut F>,
) -> F::Output {
    let Some(expire) = svc.config.sticky.as_ref().filter(|s| s.table().is_some()).map(|s| s.expire) else {
        return fut.await;
    };
    let mut every = tokio::time::interval(expire / 2);
    every.tick().await;
    loop {
        tokio::select! {
            r = fut.as_mut() => return r,
            _ = every.tick() => svc.touch_sticky(client.ip()),
        }
    }
}
