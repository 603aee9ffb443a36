//! Applying a new configuration to the running process: read and validate the file, plan the
//! change (`state::plan`), build the new state taking over live parts by identity, bind what
//! is missing, replace the nftables table in one transaction, swap the state, close what
//! left, reconcile the checkers. Any failure before the swap changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::{limits, Running, RuntimeError};
use crate::config::{self, Config, Mode};
use crate::control::ReloadOutcome;
use crate::intercept;
use crate::metrics::Metrics;
use crate::proxy::accept::Serving;
use crate::proxy::http::HttpService;
use crate::proxy::Drain;
use crate::state::plan::{plan, Plan, Step};
use crate::state::{Carry, State};

/// What each service's listeners hand connections to, built (certificates read, upstream TLS
/// set up) before anything is changed.
pub fn serving_parts(
    state: &State,
    metrics: &Metrics,
    drain: &Arc<Drain>,
) -> Result<BTreeMap<String, Arc<Serving>>, RuntimeError> {
    let mut out = BTreeMap::new();
    for svc in &state.services {
        let part = match svc.config.mode {
            Mode::Tcp | Mode::Tls => Serving::Tcp(svc.clone()),
            Mode::Http | Mode::Https | Mode::Redirect => Serving::Http(Arc::new(HttpService::build(
                svc.clone(),
                &state.config,
                metrics,
                drain.clone(),
            )?)),
        };
        out.insert(svc.config.name.clone(), Arc::new(part));
    }
    Ok(out)
}

/// The new configuration as it can run in this process: what only a restart can change
/// keeps its running value (the plan names it), everything else is the new file's.
fn effective(old: &Config, mut new: Config) -> Config {
    new.global.threads = old.global.threads;
    new.global.log_level = old.global.log_level.clone();
    new.admin.listen = old.admin.listen;
    new.admin.control = old.admin.control.clone();
    new.intercept = old.intercept;
    if old.sip.is_none() != new.sip.is_none() {
        new.sip = old.sip.clone();
    }
    new
}

fn report(plan: &Plan) -> String {
    let mut s = String::new();
    if plan.steps.is_empty() {
        s.push_str("no change\n");
    }
    for step in &plan.steps {
        let _ = writeln!(s, "{step}");
    }
    if let Some(sip) = &plan.sip {
        let _ = writeln!(s, "sip: {sip}");
    }
    for f in &plan.needs_restart {
        let _ = writeln!(s, "{f}: changed, needs a restart (the running value stays)");
    }
    s
}

impl Running {
    /// Reloads from `path` (None: the running file). On any error the running state stays
    /// and the outcome says why; the log and the metrics say the same.
    pub(crate) async fn reload(&mut self, path: Option<PathBuf>) -> ReloadOutcome {
        let path = path.unwrap_or_else(|| self.path.clone());
        let started = std::time::Instant::now();
        match self.apply(&path).await {
            Ok(plan) => {
                self.path = path.clone();
                self.metrics.reload.succeeded();
                let mut text = report(&plan);
                let https: Vec<String> = self
                    .state
                    .load()
                    .services
                    .iter()
                    .filter(|s| s.config.mode == Mode::Https)
                    .map(|s| s.config.name.clone())
                    .collect();
                if !https.is_empty() {
                    let _ = writeln!(text, "certificates re-read: {}", https.join(", "));
                }
                tracing::info!(
                    file = %path.display(),
                    elapsed_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
                    "configuration reloaded: {}",
                    text.trim_end().replace('\n', "; ")
                );
                for f in &plan.needs_restart {
                    tracing::warn!("reload: {f} changed and needs a restart; the running value stays");
                }
                ReloadOutcome { applied: true, report: text }
            }
            Err(e) => {
                self.metrics.reload.failed();
                tracing::error!(file = %path.display(), "reload refused, the running configuration stays:\n{e}");
                ReloadOutcome { applied: false, report: format!("{e}\n") }
            }
        }
    }

    async fn apply(&mut self, path: &std::path::Path) -> Result<Plan, String> {
        let new = config::load(path).map_err(|e| e.to_string())?;
        let old = self.state.load_full();
        let plan = plan(&old.config, &new);
        let new = effective(&old.config, new);
        let state = Arc::new(State::rebuild(new, &self.metrics, &Carry::from_state(&old)));
        let serving = serving_parts(&state, &self.metrics, &self.drain).map_err(|e| e.to_string())?;
        if let (Some(sip), true) = (&state.config.sip, plan.has(&Step::Sip)) {
            crate::sip::service::check_certificates(sip).map_err(|e| e.to_string())?;
        }
        let bound = self.listeners.bind_missing(&state).map_err(|e| e.to_string())?;
        if plan.rules_changed() {
            let ports: Vec<u16> = state.services.iter().map(|s| s.listener_port).collect();
            // The new listeners are bound: the rules may point at them now. On failure nft
            // applied nothing (one transaction) and the new sockets close with `bound`.
            intercept::reload(&old.config, &state.config, &ports).map_err(|e| e.to_string())?;
        }
        // From here on nothing can fail: the new state serves.
        limits::apply(&state.config, &self.limit, &self.metrics);
        self.listeners.serve(bound, &state, &serving, &self.drain, &self.limit, &self.stop);
        self.state.store(state.clone());
        let closing = state.commit(Some(&old));
        if !closing.is_empty() || !Removed::between(&old, &state).is_empty() {
            let limit = state.config.global.drain_timeout;
            let (current, metrics) = (self.state.clone(), self.metrics.clone());
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                for s in closing {
                    if s.live.is_closing() && s.active() > 0 {
                        tracing::info!(server = %s.label, active = s.active(), "drain time over: closing the remaining connections of a removed or draining server");
                    }
                    s.live.cut();
                }
                // Against the state running now: something added back meanwhile keeps its series.
                forget_removed(&metrics, &old, &current.load());
            });
        }
        self.checkers.reconcile(&state);
        let mut plan = plan;
        if let (Some(handle), Some(sip), true) = (&self.sip, &state.config.sip, plan.has(&Step::Sip)) {
            match handle.reconfigure(Arc::new(sip.clone())).await {
                Ok(report) => {
                    tracing::info!("sip reconfigured: {report}");
                    plan.sip = Some(report.to_string());
                    plan.needs_restart.extend(report.needs_restart.iter().cloned());
                }
                // The certificates were checked above; only files changed in between (or a
                // stopped B2BUA) get here: the rest is applied, SIP keeps its configuration.
                Err(e) => {
                    tracing::error!("sip not reconfigured, it keeps its running configuration: {e}");
                    plan.sip = Some(format!("NOT reconfigured: {e}"));
                }
            }
        }
        Ok(plan)
    }
}

/// What `old` had that `new` has not, as metric label values.
#[derive(Debug, Default, PartialEq)]
struct Removed {
    services: Vec<String>,
    /// (pool name, server label).
    servers: Vec<(String, String)>,
}

impl Removed {
    fn between(old: &State, new: &State) -> Removed {
        let services = old
            .services
            .iter()
            .filter(|s| new.service(&s.config.name).is_none())
            .map(|s| s.config.name.clone());
        let servers = old
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(move |s| (p, s)))
            .filter(|(p, s)| {
                new.pool(&p.name).is_none_or(|np| np.servers.iter().all(|n| n.config.id() != s.config.id()))
            })
            .map(|(p, s)| (p.name.clone(), s.label.clone()));
        Removed { services: services.collect(), servers: servers.collect() }
    }

    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.servers.is_empty()
    }
}

/// Drops the metric series of services and servers that `old` had and `current` has not.
fn forget_removed(metrics: &Metrics, old: &State, current: &State) {
    let removed = Removed::between(old, current);
    let service_names: Vec<&str> = old.services.iter().map(|s| s.config.name.as_str()).collect();
    let all_servers: Vec<(&str, &str)> = old
        .pools
        .iter()
        .flat_map(|p| p.servers.iter().map(move |s| (p.name.as_str(), s.label.as_str())))
        .collect();
    for service in &removed.services {
        metrics.forget_service(service, &all_servers);
    }
    for (pool, server) in &removed.servers {
        metrics.forget_backend(pool, server, &service_names);
    }
    if !removed.is_empty() {
        tracing::debug!(?removed, "metric series of removed services and servers dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(servers: &str, extra_service: bool, metrics: &Metrics) -> State {
        let mut text = format!(
            "[pools.cas]\nservers = [{servers}]\n[services.rpc]\nvip = \"198.19.0.10\"\nports = [135]\npool = \"cas\"\n"
        );
        if extra_service {
            text += "[services.owa]\nvip = \"198.19.0.10\"\nports = [80]\nmode = \"http\"\npool = \"cas\"\n";
        }
        State::build(config::parse(&text, std::path::Path::new("t.toml")).unwrap(), metrics)
    }

    #[test]
    fn removed_parts_are_found_by_identity_and_their_series_dropped() {
        let m = Metrics::new();
        let both = r#"{ address = "198.18.2.11" }, { address = "198.18.2.12" }"#;
        let old = state(both, true, &m);
        // Reordered and re-weighted: nothing removed.
        let moved =
            state(r#"{ address = "198.18.2.12", weight = 3 }, { address = "198.18.2.11" }"#, true, &m);
        assert_eq!(Removed::between(&old, &moved), Removed::default());
        let new = state(r#"{ address = "198.18.2.11" }"#, false, &m);
        let removed = Removed::between(&old, &new);
        assert_eq!(removed.services, vec!["owa".to_string()]);
        assert_eq!(removed.servers, vec![("cas".to_string(), "198.18.2.12".to_string())]);

        forget_removed(&m, &old, &new);
        let t = m.encode();
        assert!(!t.contains("198.18.2.12") && !t.contains("service=\"owa\""), "{t}");
        assert!(t.contains("portier_backend_up{pool=\"cas\",server=\"198.18.2.11\"}"), "{t}");
        assert!(t.contains("portier_service_connections_total{service=\"rpc\"}"), "{t}");
    }
}
