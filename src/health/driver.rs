//! The async driver: one task per checked server, running probes on the machine's cadence
//! and publishing up/down into the running state that the balancer reads.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::machine::{HealthMachine, Transition};
use super::probe::probe;
use crate::balance::Server;
use crate::config::CheckConfig;
use crate::state::State;

/// Starts the checkers of every pool that has a `check`; they stop when `stop` turns true.
pub fn spawn_all(state: &State, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (pool, pcfg) in state.pools.iter().zip(&state.config.pools) {
        let Some(check) = &pcfg.check else { continue };
        for server in &pool.servers {
            tasks.push(tokio::spawn(check_loop(
                pool.name.clone(),
                server.clone(),
                check.clone(),
                stop.clone(),
            )));
        }
    }
    tasks
}

async fn check_loop(pool: String, server: Arc<Server>, check: CheckConfig, mut stop: watch::Receiver<bool>) {
    let port =
        check.port.or(server.config.port).expect("validation guarantees a check port or a server port");
    let target = std::net::SocketAddr::new(server.config.address, port);
    let mut machine = HealthMachine::new(check.rise, check.fall, check.interval, Instant::now());
    loop {
        let due = tokio::time::Instant::from_std(machine.next_due());
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let result = probe(&check.kind, target, check.timeout).await;
        server.metrics.check_duration.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            server.metrics.check_failures.inc();
        }
        match (machine.record(result.is_ok(), started), &result) {
            (Some(Transition::WentDown), Err(e)) => {
                server.set_up(false);
                tracing::warn!(pool = %pool, server = %server.label, check = check.kind.as_str(), %target, "server DOWN: {e}");
            }
            (Some(Transition::WentUp), _) => {
                server.set_up(true);
                tracing::info!(pool = %pool, server = %server.label, check = check.kind.as_str(), %target, "server UP after {} good checks", check.rise);
            }
            (None, Err(e)) => tracing::debug!(pool = %pool, server = %server.label, "check failed: {e}"),
            _ => {}
        }
    }
}
