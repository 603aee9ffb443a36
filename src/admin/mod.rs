//! The admin HTTP listener: /metrics (Prometheus text format) and /status (plain text).
//! Bound to loopback by default; a non-loopback address must be configured explicitly.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{self, ReloadSender};
use crate::metrics::Metrics;
use crate::state::State;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub state: Arc<arc_swap::ArcSwap<State>>,
    /// The SIP B2BUA's state as text, refreshed by its task every second (empty without SIP).
    pub sip_status: watch::Receiver<String>,
    /// Where `POST /api/reload` goes (the runtime answers).
    pub reload: ReloadSender,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

impl Admin {
    /// Gauges read from counters kept outside the registry (the data path's descriptors
    /// change with every connection: counted in one atomic, read here when scraped).
    fn refresh_gauges(&self) {
        let in_use = crate::net::DATA_PATH.in_use();
        self.metrics.limits.descriptors.set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }
}

fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().map(|s| s.contains("application/openmetrics-text")).unwrap_or(false))
}

impl Admin {
    fn status(&self) -> String {
        let mut s = String::new();
        for pool in &self.state.load().pools {
            let _ = writeln!(s, "pool {} ({})", pool.name, pool.balance.as_str());
            for sv in &pool.servers {
                let _ = writeln!(
                    s,
                    "  {:<28} {:<4} active={} weight={}",
                    sv.label,
                    match (sv.is_up(), sv.is_available()) {
                        (false, _) => "DOWN",
                        (true, false) => "DRAIN",
                        (true, true) => "UP",
                    },
                    sv.active(),
                    sv.config.weight
                );
            }
        }
        for t in self.state.load().sticky_tables.values() {
            let _ = writeln!(s, "sticky table {}: {} entries", t.name, t.len());
        }
        s.push_str(&self.sip_status.borrow());
        s
    }

    /// Who may change things: with `admin.token` set, requests carrying it; without one,
    /// local clients only (the listener is on loopback unless configured otherwise).
    fn authorised(&self, req: &Request<Incoming>, peer: std::net::SocketAddr) -> Result<(), &'static str> {
        let state = self.state.load();
        match &state.config.admin.token {
            None if peer.ip().is_loopback() => Ok(()),
            None => Err("set admin.token to use the API from beyond loopback\n"),
            Some(token) => {
                let given = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err("missing or wrong bearer token (admin.token)\n")
                }
            }
        }
    }

    async fn respond(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
        if req.uri().path().starts_with("/api/") {
            return self.api(req, peer).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
        }
        if req.uri().path() == "/metrics" {
            self.refresh_gauges();
        }
        match req.uri().path() {
            "/metrics" if wants_openmetrics(&req) => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode_openmetrics(),
            ),
            "/metrics" => {
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.encode())
            }
            "/" | "/status" => text(StatusCode::OK, "text/plain; charset=utf-8", self.status()),
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /status\n".into()),
        }
    }

    async fn api(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
        if req.uri().path() != "/api/reload" {
            return text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: the API has POST /api/reload\n".into(),
            );
        }
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n".into());
        }
        if let Err(why) = self.authorised(&req, peer) {
            return text(StatusCode::FORBIDDEN, "text/plain", why.into());
        }
        // The running file is re-read: which file portier runs is not the API's to change.
        let outcome = control::reload(&self.reload, None).await;
        let status = if outcome.applied { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
        text(status, "text/plain; charset=utf-8", outcome.report)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves until `stop` turns true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}
