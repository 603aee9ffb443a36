//! The Prometheus registry and metric families. Per-backend handles are created once when the
//! running state is built and cached in each server, so the hot path only bumps atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub pool: String,
    pub server: String,
    /// `to_server` (client -> server) or `to_client` (server -> client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub pool: String,
    pub server: String,
    /// Status class: 1xx .. 5xx.
    pub code: &'static str,
}

type HistogramFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;
type ServiceHistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 1 ms .. ~1 h: answers from cache to ActiveSync long-polls.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn check_histogram() -> Histogram {
    // 0.5 ms .. ~4 s: a local check answers in under a millisecond, a sick one near its timeout.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    pub registry: Registry,
    service_connections: Family<ServiceLabels, Counter>,
    service_no_server: Family<ServiceLabels, Counter>,
    backend_connections: Family<BackendLabels, Counter>,
    backend_active: Family<BackendLabels, Gauge>,
    backend_bytes: Family<BytesLabels, Counter>,
    backend_up: Family<BackendLabels, Gauge>,
    backend_connect_errors: Family<BackendLabels, Counter>,
    backend_check_duration: HistogramFamily,
    backend_check_failures: Family<BackendLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_request_duration: ServiceHistogramFamily,
    http_generated: Family<GeneratedLabels, Counter>,
    http_connection_errors: Family<ServiceLabels, Counter>,
    http2_active_streams: Family<ServiceLabels, Gauge>,
    tls_handshakes: Family<ServiceLabels, Counter>,
    tls_handshake_failures: Family<ServiceLabels, Counter>,
    service_active: Family<ServiceLabels, Gauge>,
    service_limit: Family<ServiceLabels, Gauge>,
    service_refused: Family<RefusedLabels, Counter>,
    sip: SipMetrics,
    pub reload: ReloadMetrics,
    pub limits: LimitMetrics,
}

/// Client connections and descriptors against their limits, process-wide.
#[derive(Clone, Default)]
pub struct LimitMetrics {
    /// Client connections open, all services together.
    pub connections: Gauge,
    /// `global.max_connections` (or its default).
    pub connections_limit: Gauge,
    /// Descriptors the data path holds (set when scraped) and may hold.
    pub descriptors: Gauge,
    pub descriptors_limit: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub service: String,
    /// max_connections (global), service_max_connections, descriptors
    pub reason: &'static str,
}

/// The outcome of configuration reloads (Prometheus' own naming for these).
#[derive(Clone, Default)]
pub struct ReloadMetrics {
    pub failures: Counter,
    pub last_successful: Gauge,
    pub last_success_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ReloadMetrics {
    pub fn succeeded(&self) {
        self.last_successful.set(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_success_timestamp.set(now.as_secs_f64());
    }
    pub fn failed(&self) {
        self.failures.inc();
        self.last_successful.set(0);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// answered, busy, no_answer, cancelled, failed, rejected
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabels {
    pub trunk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Handles for the SIP B2BUA (one engine per process).
#[derive(Clone, Default)]
pub struct SipMetrics {
    pub registrations: Gauge,
    pub calls_active: Gauge,
    pub calls: Family<OutcomeLabels, Counter>,
    pub transactions: Gauge,
    pub trunk_registered: Family<TrunkLabels, Gauge>,
    pub trunk_up: Family<TrunkLabels, Gauge>,
    pub requests: Family<MethodLabels, Counter>,
    pub auth_failures: Counter,
    pub mwi_received: Counter,
    pub mwi_delivered: Counter,
    /// 401/407 challenges sent without a transaction (requests without credentials).
    pub stateless_challenges: Counter,
    /// Requests answered 503 and connections closed at a `[sip.limits]` bound, by reason.
    pub refused: Family<ReasonLabels, Counter>,
    /// Connections open on the SIP TCP/TLS listeners.
    pub connections: Gauge,
    /// Connections closed for a message left incomplete or for idleness.
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub media: MediaMetrics,
}

/// The media relay (`portier_media_*`).
#[derive(Clone, Default)]
pub struct MediaMetrics {
    /// Calls whose media goes through the relay now.
    pub sessions: Gauge,
    /// Relay UDP ports open (RTP and RTCP, both sides).
    pub ports: Gauge,
    /// Datagrams (RTP, RTCP) relayed, and their bytes.
    pub packets: Counter,
    pub bytes: Counter,
    /// Datagrams dropped: foreign (not from the latched source), unroutable (the other
    /// endpoint unknown yet).
    pub dropped: Family<ReasonLabels, Counter>,
    /// Calls ended because their media stopped.
    pub timeouts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl SipMetrics {
    /// Counts one finished call.
    pub fn call_ended(&self, outcome: &str) {
        self.calls.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GeneratedLabels {
    pub service: String,
    /// 502, 503, 504, 301 (redirect), 400 ...
    pub status: u16,
}

/// Handles for one HTTP service, cached in the running state.
#[derive(Clone)]
pub struct HttpServiceMetrics {
    pub duration: Histogram,
    pub connection_errors: Counter,
    pub h2_streams: Gauge,
    pub tls_handshakes: Counter,
    pub tls_failures: Counter,
    service: String,
    generated: Family<GeneratedLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl HttpServiceMetrics {
    /// Per-server request counters by status class, created once per (pool, server).
    pub fn server_requests(&self, pool: &str, server: &str) -> [Counter; 5] {
        CODE_CLASSES.map(|code| {
            let l = RequestLabels {
                service: self.service.clone(),
                pool: pool.into(),
                server: server.into(),
                code,
            };
            self.requests.get_or_create(&l).clone()
        })
    }

    /// Counts a response portier produced itself (no server involved).
    pub fn generated(&self, status: u16) {
        self.generated.get_or_create(&GeneratedLabels { service: self.service.clone(), status }).inc();
    }
}

/// Handles for one service, cached in the running state.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub connections: Counter,
    pub no_server: Counter,
    /// Client connections open on the service (its `max_connections` counts on this).
    pub active: Gauge,
    refused: Family<RefusedLabels, Counter>,
    limit: Family<ServiceLabels, Gauge>,
    service: String,
}

impl ServiceMetrics {
    /// Counts a connection refused at a limit.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { service: self.service.clone(), reason }).inc();
    }

    /// Publishes the service's `max_connections` (none: no series).
    pub fn set_limit(&self, limit: Option<usize>) {
        let l = ServiceLabels { service: self.service.clone() };
        match limit {
            Some(n) => {
                self.limit.get_or_create(&l).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => {
                self.limit.remove(&l);
            }
        }
    }
}

/// Handles for one server of one pool, cached in the running state.
#[derive(Clone)]
pub struct BackendMetrics {
    pub connections: Counter,
    pub active: Gauge,
    pub bytes_to_server: Counter,
    pub bytes_to_client: Counter,
    pub up: Gauge,
    pub connect_errors: Counter,
    pub check_duration: Histogram,
    pub check_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portier");
        let m = Metrics {
            service_connections: Family::default(),
            service_no_server: Family::default(),
            backend_connections: Family::default(),
            backend_active: Family::default(),
            backend_bytes: Family::default(),
            backend_up: Family::default(),
            backend_connect_errors: Family::default(),
            backend_check_duration: Family::new_with_constructor(check_histogram),
            backend_check_failures: Family::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(request_histogram),
            http_generated: Family::default(),
            http_connection_errors: Family::default(),
            http2_active_streams: Family::default(),
            tls_handshakes: Family::default(),
            tls_handshake_failures: Family::default(),
            service_active: Family::default(),
            service_limit: Family::default(),
            service_refused: Family::default(),
            limits: LimitMetrics::default(),
            sip: SipMetrics::default(),
            reload: ReloadMetrics::default(),
            registry: Registry::default(),
        };
        // The start counts as the first successful load.
        m.reload.succeeded();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stayed)",
            m.reload.failures.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration load or reload was applied",
            m.reload.last_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last applied, in seconds since the epoch",
            m.reload.last_success_timestamp.clone(),
        );
        let sip = &m.sip;
        registry.register(
            "sip_registrations",
            "Registered contacts of extensions",
            sip.registrations.clone(),
        );
        registry.register("sip_calls_active", "Calls answered and not yet ended", sip.calls_active.clone());
        registry.register("sip_calls", "Calls ended, by outcome", sip.calls.clone());
        registry.register("sip_transactions", "Live SIP transactions", sip.transactions.clone());
        registry.register(
            "sip_trunk_registered",
            "1 while a register trunk holds a valid registration",
            sip.trunk_registered.clone(),
        );
        registry.register("sip_trunk_up", "1 while a trunk is considered reachable", sip.trunk_up.clone());
        registry.register("sip_requests", "SIP requests received, by method", sip.requests.clone());
        registry.register(
            "sip_auth_failures",
            "Digest authentications refused (wrong password, replay, rate limit)",
            sip.auth_failures.clone(),
        );
        registry.register(
            "sip_mwi_received",
            "Message-waiting NOTIFYs received from voicemail",
            sip.mwi_received.clone(),
        );
        registry.register(
            "sip_mwi_delivered",
            "Message-waiting NOTIFYs sent to phones",
            sip.mwi_delivered.clone(),
        );
        registry.register(
            "sip_stateless_challenges",
            "401/407 challenges answered without keeping a transaction",
            sip.stateless_challenges.clone(),
        );
        registry.register(
            "sip_refused",
            "SIP requests (503) and connections refused at a configured limit, by reason",
            sip.refused.clone(),
        );
        registry.register(
            "sip_connections",
            "Open connections on the SIP TCP/TLS listeners",
            sip.connections.clone(),
        );
        registry.register(
            "sip_connections_closed",
            "SIP connections closed by portier, by reason (message_timeout, idle_timeout)",
            sip.connections_closed.clone(),
        );
        let media = &sip.media;
        registry.register("media_sessions", "Calls whose media is relayed now", media.sessions.clone());
        registry.register("media_ports", "Relay UDP ports open (RTP and RTCP)", media.ports.clone());
        registry.register("media_packets", "RTP and RTCP datagrams relayed", media.packets.clone());
        registry.register("media_bytes", "Bytes of the datagrams relayed", media.bytes.clone());
        registry.register(
            "media_dropped",
            "Datagrams the relay dropped, by reason (foreign, unroutable)",
            media.dropped.clone(),
        );
        registry.register(
            "media_timeouts",
            "Calls ended with BYE because their media stopped for sip.media.timeout",
            media.timeouts.clone(),
        );
        registry.register(
            "service_connections",
            "Connections accepted by a service",
            m.service_connections.clone(),
        );
        registry.register(
            "service_connections_active",
            "Client connections open on a service",
            m.service_active.clone(),
        );
        registry.register(
            "service_connections_limit",
            "A service's max_connections (only for services that set one)",
            m.service_limit.clone(),
        );
        registry.register(
            "service_connections_refused",
            "Client connections closed at once at a limit, by reason (max_connections, service_max_connections, descriptors)",
            m.service_refused.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open, all services together",
            m.limits.connections.clone(),
        );
        registry.register(
            "connections_limit",
            "global.max_connections (or its default)",
            m.limits.connections_limit.clone(),
        );
        registry.register(
            "data_path_descriptors",
            "File descriptors held by client and server connections",
            m.limits.descriptors.clone(),
        );
        registry.register(
            "data_path_descriptors_limit",
            "File descriptors the data path may hold: the process limit less what is kept for admin, checks and SIP",
            m.limits.descriptors_limit.clone(),
        );
        registry.register(
            "service_no_server",
            "Connections refused because no server was available",
            m.service_no_server.clone(),
        );
        registry.register(
            "backend_connections",
            "Connections established to a server",
            m.backend_connections.clone(),
        );
        registry.register(
            "backend_active_connections",
            "Connections currently open to a server",
            m.backend_active.clone(),
        );
        registry.register("backend_bytes", "Bytes relayed per server and direction", m.backend_bytes.clone());
        registry.register("backend_up", "1 when health checks consider the server up", m.backend_up.clone());
        registry.register(
            "backend_connect_errors",
            "Failed connection attempts to a server",
            m.backend_connect_errors.clone(),
        );
        registry.register(
            "backend_check_duration_seconds",
            "Duration of health checks",
            m.backend_check_duration.clone(),
        );
        registry.register("backend_check_failures", "Failed health checks", m.backend_check_failures.clone());
        registry.register(
            "http_requests",
            "HTTP requests answered by a server, by status class",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration, request start to response end",
            m.http_request_duration.clone(),
        );
        registry.register(
            "http_responses_generated",
            "Responses portier produced itself (errors, redirects)",
            m.http_generated.clone(),
        );
        registry.register(
            "http_connection_errors",
            "Client connections that ended in a protocol error (malformed HTTP, oversized headers, timeouts)",
            m.http_connection_errors.clone(),
        );
        registry.register(
            "http2_active_streams",
            "HTTP/2 requests in flight",
            m.http2_active_streams.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed with clients",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes with clients that failed",
            m.tls_handshake_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The SIP B2BUA's handles.
    pub fn sip(&self) -> SipMetrics {
        self.sip.clone()
    }

    pub fn http_service(&self, service: &str) -> HttpServiceMetrics {
        let l = ServiceLabels { service: service.to_string() };
        let duration = self.http_request_duration.get_or_create(&l).clone();
        let connection_errors = self.http_connection_errors.get_or_create(&l).clone();
        let h2_streams = self.http2_active_streams.get_or_create(&l).clone();
        let tls_handshakes = self.tls_handshakes.get_or_create(&l).clone();
        let tls_failures = self.tls_handshake_failures.get_or_create(&l).clone();
        HttpServiceMetrics {
            duration,
            connection_errors,
            h2_streams,
            tls_handshakes,
            tls_failures,
            service: service.to_string(),
            generated: self.http_generated.clone(),
            requests: self.http_requests.clone(),
        }
    }

    pub fn service(&self, service: &str) -> ServiceMetrics {
        let l = ServiceLabels { service: service.to_string() };
        let connections = self.service_connections.get_or_create(&l).clone();
        let no_server = self.service_no_server.get_or_create(&l).clone();
        let active = self.service_active.get_or_create(&l).clone();
        ServiceMetrics {
            connections,
            no_server,
            active,
            refused: self.service_refused.clone(),
            limit: self.service_limit.clone(),
            service: service.to_string(),
        }
    }

    pub fn backend(&self, pool: &str, server: &str) -> BackendMetrics {
        let l = BackendLabels { pool: pool.to_string(), server: server.to_string() };
        let bytes = |direction| BytesLabels { pool: pool.to_string(), server: server.to_string(), direction };
        // One statement per handle: `get_or_create` returns a read guard, and a second insert
        // into the same family while it is alive would deadlock.
        let connections = self.backend_connections.get_or_create(&l).clone();
        let active = self.backend_active.get_or_create(&l).clone();
        let bytes_to_server = self.backend_bytes.get_or_create(&bytes("to_server")).clone();
        let bytes_to_client = self.backend_bytes.get_or_create(&bytes("to_client")).clone();
        let up = self.backend_up.get_or_create(&l).clone();
        let connect_errors = self.backend_connect_errors.get_or_create(&l).clone();
        let check_duration = self.backend_check_duration.get_or_create(&l).clone();
        let check_failures = self.backend_check_failures.get_or_create(&l).clone();
        BackendMetrics {
            connections,
            active,
            bytes_to_server,
            bytes_to_client,
            up,
            connect_errors,
            check_duration,
            check_failures,
        }
    }

    /// Drops every series of server `server` of pool `pool` (and its request counters under
    /// each of `services`), once a reload has removed it and its drain time is over: /metrics
    /// then shows what runs, not a removed server's last `up` value for ever.
    pub fn forget_backend(&self, pool: &str, server: &str, services: &[&str]) {
        let l = BackendLabels { pool: pool.to_string(), server: server.to_string() };
        self.backend_connections.remove(&l);
        self.backend_active.remove(&l);
        self.backend_up.remove(&l);
        self.backend_connect_errors.remove(&l);
        self.backend_check_duration.remove(&l);
        self.backend_check_failures.remove(&l);
        for direction in ["to_server", "to_client"] {
            self.backend_bytes.remove(&BytesLabels { pool: pool.into(), server: server.into(), direction });
        }
        for service in services {
            self.forget_requests(service, pool, server);
        }
    }

    /// Drops every series of a service a reload removed: its own, its responses generated by
    /// portier, and its request counters for each (pool, server) in `servers`.
    pub fn forget_service(&self, service: &str, servers: &[(&str, &str)]) {
        let l = ServiceLabels { service: service.to_string() };
        self.service_connections.remove(&l);
        self.service_no_server.remove(&l);
        self.service_active.remove(&l);
        self.service_limit.remove(&l);
        for reason in ["max_connections", "service_max_connections", "descriptors"] {
            self.service_refused.remove(&RefusedLabels { service: service.to_string(), reason });
        }
        self.http_request_duration.remove(&l);
        self.http_connection_errors.remove(&l);
        self.http2_active_streams.remove(&l);
        self.tls_handshakes.remove(&l);
        self.tls_handshake_failures.remove(&l);
        // The family cannot be listed by label: try every status code portier could generate.
        for status in 100..600 {
            self.http_generated.remove(&GeneratedLabels { service: service.to_string(), status });
        }
        for (pool, server) in servers {
            self.forget_requests(service, pool, server);
        }
    }

    fn forget_requests(&self, service: &str, pool: &str, server: &str) {
        for code in CODE_CLASSES {
            self.http_requests.remove(&RequestLabels {
                service: service.into(),
                pool: pool.into(),
                server: server.into(),
                code,
            });
        }
    }

    /// OpenMetrics 1.0 text, as prometheus-client writes it (served when the scraper asks).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format 0.0.4, which `promtool check metrics` and older
    /// scrapers read. OpenMetrics names a counter family `x` and its sample `x_total`; the
    /// classic format wants the family named `x_total` too, and has no `# EOF`.
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

pub fn openmetrics_to_prometheus(om: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name);
            }
        }
    }
    let mut out = String::with_capacity(om.len() + counters.len() * 16);
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = l
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| l.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(&name) {
                    out.push_str(&format!("{tag}{name}_total {tail}\n"));
                } else {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_servers_and_services_leave_no_series_and_others_stay() {
        let m = Metrics::new();
        for server in ["198.18.2.11", "198.18.2.12"] {
            let b = m.backend("cas", server);
            b.up.set(1);
            b.connections.inc();
            b.bytes_to_client.inc();
            m.http_service("owa").server_requests("cas", server)[1].inc();
        }
        let owa = m.http_service("owa");
        owa.generated(503);
        owa.tls_handshakes.inc();
        m.service("owa").connections.inc();
        m.service("rpc").connections.inc();

        m.forget_backend("cas", "198.18.2.12", &["owa", "rpc"]);
        m.forget_service("owa", &[("cas", "198.18.2.11")]);
        let t = m.encode();
        assert!(!t.contains("198.18.2.12"), "{t}");
        assert!(!t.contains("service=\"owa\""), "{t}");
        assert!(t.contains("portier_backend_up{pool=\"cas\",server=\"198.18.2.11\"} 1"), "{t}");
        assert!(t.contains("portier_service_connections_total{service=\"rpc\"} 1"), "{t}");
        // Asked again (a handle taken anew), a series starts from zero.
        m.backend("cas", "198.18.2.12");
        assert!(m
            .encode()
            .contains("portier_backend_connections_total{pool=\"cas\",server=\"198.18.2.12\"} 0"));
    }

    #[test]
    fn handles_share_the_registered_series() {
        let m = Metrics::new();
        let b = m.backend("cas", "198.18.2.11");
        b.connections.inc();
        b.bytes_to_server.inc_by(10);
        b.up.set(1);
        m.service("rpc").connections.inc();
        let t = m.encode();
        assert!(
            t.contains("portier_backend_connections_total{pool=\"cas\",server=\"198.18.2.11\"} 1"),
            "{t}"
        );
        assert!(
            t.contains(
                "portier_backend_bytes_total{pool=\"cas\",server=\"198.18.2.11\",direction=\"to_server\"} 10"
            ),
            "{t}"
        );
        assert!(t.contains("portier_backend_up{pool=\"cas\",server=\"198.18.2.11\"} 1"), "{t}");
        assert!(t.contains("portier_service_connections_total{service=\"rpc\"} 1"), "{t}");
        assert!(t.contains("portier_backend_check_duration_seconds_bucket"), "{t}");
        assert!(t.contains("# TYPE portier_backend_connections_total counter\n"), "{t}");
        assert!(t.contains("# HELP portier_backend_connections_total Connections established"), "{t}");
        assert!(!t.contains("# EOF"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }
}
