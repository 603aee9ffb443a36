//! The async driver: one task per checked server, running probes on the machine's cadence
//! and publishing up/down into the server's live state, which the balancer reads. The
//! checkers are keyed by server identity, so a reload restarts only those whose check
//! changed and a server keeps its health across it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use super::machine::{HealthMachine, Transition};
use super::probe::probe;
use crate::balance::Server;
use crate::config::{CheckConfig, ServerId};
use crate::state::State;

struct Checker {
    check: CheckConfig,
    task: JoinHandle<()>,
}

/// The running checkers, by (pool, server).
#[derive(Default)]
pub struct Checkers {
    running: HashMap<(String, ServerId), Checker>,
}

impl Checkers {
    /// Makes the running checkers those `state` asks for: new servers (or newly checked
    /// pools) get a checker, removed ones lose theirs, a changed check restarts from the
    /// server's current state (a DOWN server stays DOWN until `rise` good checks). A server
    /// whose pool no longer checks it is up: nothing else can say otherwise.
    pub fn reconcile(&mut self, state: &State) {
        let mut wanted = HashMap::new();
        for (pool, pcfg) in state.pools.iter().zip(&state.config.pools) {
            for server in &pool.servers {
                let key = (pool.name.clone(), server.config.id());
                match &pcfg.check {
                    Some(check) => {
                        wanted.insert(key, (server.clone(), check.clone()));
                    }
                    None => {
                        if self.running.contains_key(&key) {
                            server.set_up(true);
                        }
                    }
                }
            }
        }
        self.running.retain(|key, c| {
            let keep = wanted.get(key).is_some_and(|(_, check)| *check == c.check);
            if !keep {
                c.task.abort();
            }
            keep
        });
        for (key, (server, check)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(check_loop(key.0.clone(), server, check.clone()));
            self.running.insert(key, Checker { check, task });
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every checker (portier is stopping).
    pub fn stop_all(&mut self) {
        for (_, c) in self.running.drain() {
            c.task.abort();
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

async fn check_loop(pool: String, server: Arc<Server>, check: CheckConfig) {
    let port =
        check.port.or(server.config.port).expect("validation guarantees a check port or a server port");
    let target = std::net::SocketAddr::new(server.config.address, port);
    // A checker that starts with its server (fresh) behaves as at a fresh start; one that
    // replaces another (the check changed) continues from the known state.
    let mut machine = if server.live_checked() {
        HealthMachine::resume(check.rise, check.fall, check.interval, Instant::now(), server.is_up())
    } else {
        HealthMachine::new(check.rise, check.fall, check.interval, Instant::now())
    };
    server.mark_checked();
    loop {
        let due = tokio::time::Instant::from_std(machine.next_due());
        tokio::time::sleep_until(due).await;
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
