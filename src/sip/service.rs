//! The SIP transports (UDP, TCP, TLS) and the task that drives the engine.
//!
//! [`spawn`] starts the task on sockets [`bind`] opened and returns a [`SipHandle`], the only
//! way in from outside: reconfigure (over a control channel, answered by the engine), status
//! text (a watch channel the task refreshes every second), drain and join.
//!
//! One task owns the [`Engine`] and the table of connections; socket tasks only move bytes:
//! UDP readers hand datagrams over, each TCP/TLS connection has a reader (framing with
//! [`StreamFramer`], answering CRLF keep-alive pings itself) and a writer fed by a channel.
//! Connections are reused both ways: a reply goes back on the connection its request came in
//! on, and a request to an address we already have a connection with (a phone registered over
//! TCP, a trunk) goes on that connection; otherwise one is opened.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::connection::{accept_loop, ConnLimits, Connection, Timeouts};
use super::media_tasks::MediaTasks;
use crate::metrics::SipMetrics;
use crate::sip::engine::{Dest, Engine, EngineOptions, Now, Outgoing, ReconfigureReport};
use crate::sip::Frame;
use crate::sip::{SipConfig, SipTransport};
use crate::tls::{client_config, CertSpec, CertStore, TlsAcceptorHandle, UpstreamTls, NO_ALPN};

/// After the engine has drained (or hung up at the deadline), the task keeps running this long
/// so the last BYEs and unREGISTERs leave and their first answers or retransmissions happen.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Connecting to a peer (TCP handshake plus TLS) may take this long.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued outbound messages per connection before new ones are dropped (UDP-like loss;
/// transactions retransmit or time out).
pub(super) const CONN_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("SIP listener {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("SIP TLS certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the SIP B2BUA has stopped")]
    Stopped,
}

/// Sockets bound before anything else starts, so a busy port stops the start with its name.
pub struct Bound {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<(SipTransport, TcpListener)>,
    acceptor: Option<Arc<TlsAcceptorHandle>>,
    /// Read with the rest, so a missing trunk CA file stops the start with its name.
    tls: TlsClients,
}

/// Loads the certificates and trunk CAs `cfg` names without using them: a reload checks them
/// before it changes anything.
pub fn check_certificates(cfg: &SipConfig) -> Result<(), SipError> {
    if cfg.tls.is_some() {
        drop(CertStore::load(&cert_specs(cfg))?);
    }
    drop(TlsClients::build(cfg)?);
    Ok(())
}

/// How portier's own TLS connections (to `tls:` trunks, and to the hosts they redirect to)
/// check their peer: per trunk by its IP, so a 3xx to another port of the same host (Exchange
/// UM's worker ports) is checked like the trunk; anything else is not verified.
#[derive(Clone)]
struct TlsClients {
    unverified: Arc<rustls::ClientConfig>,
    by_ip: HashMap<std::net::IpAddr, (Arc<rustls::ClientConfig>, UpstreamTls)>,
}

impl TlsClients {
    fn build(cfg: &SipConfig) -> Result<TlsClients, SipError> {
        let unverified = client_config(&UpstreamTls::default(), NO_ALPN)?;
        let mut by_ip = HashMap::new();
        for t in cfg.trunks.values() {
            if let Some(u) = &t.tls {
                by_ip.insert(t.address().addr.ip(), (client_config(u, NO_ALPN)?, u.clone()));
            }
        }
        Ok(TlsClients { unverified, by_ip })
    }

    /// The configuration and name (the trunk's `sni`, else the IP) for a connection to `peer`.
    fn for_peer(
        &self,
        peer: SocketAddr,
    ) -> (Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>) {
        match self.by_ip.get(&peer.ip()) {
            Some((c, u)) => (c.clone(), crate::tls::server_name(u, peer.ip())),
            None => (self.unverified.clone(), rustls::pki_types::ServerName::IpAddress(peer.ip().into())),
        }
    }

    /// Warns once per trunk reached over TLS whose certificate nobody checks.
    fn warn_unverified(cfg: &SipConfig) {
        for (id, t) in &cfg.trunks {
            let a = t.address();
            let unchecked = t.tls.as_ref().is_none_or(|u| !u.verify);
            if a.transport == SipTransport::Tls && unchecked {
                tracing::warn!(trunk = %id, address = %a, "SIP trunk over TLS without certificate verification: set tls = {{ ca = \"...\" }} to check it");
            }
        }
    }
}

fn cert_specs(cfg: &SipConfig) -> Vec<CertSpec> {
    cfg.tls.iter().cloned().collect()
}

/// Binds every `[sip] listen` address and loads the TLS certificate.
pub async fn bind(cfg: &SipConfig) -> Result<Bound, SipError> {
    let mut b = Bound { udp: Vec::new(), tcp: Vec::new(), acceptor: None, tls: TlsClients::build(cfg)? };
    if cfg.listen.iter().any(|l| l.transport == SipTransport::Tls) {
        b.acceptor = Some(Arc::new(TlsAcceptorHandle::load(&cert_specs(cfg), NO_ALPN)?));
    }
    for l in &cfg.listen {
        let err = |source| SipError::Bind { addr: l.to_string(), source };
        match l.transport {
            SipTransport::Udp => b.udp.push(Arc::new(UdpSocket::bind(l.addr).await.map_err(err)?)),
            t => b.tcp.push((t, TcpListener::bind(l.addr).await.map_err(err)?)),
        }
    }
    Ok(b)
}

/// What the socket tasks tell the engine task.
pub(super) enum Inbound {
    Datagram(Vec<u8>, Dest),
    Frame(Frame, Dest),
    Opened {
        id: u64,
        transport: SipTransport,
        peer: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Failed {
        id: u64,
        transport: SipTransport,
        peer: SocketAddr,
    },
    Closed(u64),
    /// Connection `id` has been idle for `sip.limits.idle_timeout`: may it stay open?
    Idle {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
    /// A relayed stream of call `call` was silent for its timeout.
    MediaSilent {
        call: u64,
        stream: usize,
    },
}

struct Conn {
    transport: SipTransport,
    peer: SocketAddr,
    writer: mpsc::Sender<Vec<u8>>,
}

struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    conns: HashMap<u64, Conn>,
    by_peer: HashMap<(SipTransport, SocketAddr), u64>,
    next_id: u64,
    inbound: mpsc::Sender<Inbound>,
    tls: TlsClients,
    limits: ConnLimits,
    metrics: SipMetrics,
    media: MediaTasks,
}

/// A request from the handle to the engine task.
enum Control {
    Reconfigure { cfg: Arc<SipConfig>, reply: oneshot::Sender<ReconfigureReport> },
}

/// The running B2BUA, seen from outside (the runtime, admin).
pub struct SipHandle {
    control: mpsc::Sender<Control>,
    drain: watch::Sender<Option<std::time::Instant>>,
    status: watch::Receiver<String>,
    acceptor: Option<Arc<TlsAcceptorHandle>>,
    task: JoinHandle<()>,
}

impl SipHandle {
    /// Applies a new (validated) `[sip]` configuration; see [`Engine::reconfigure`]. The TLS
    /// certificate files are read again first: if they cannot be loaded, nothing changes and
    /// the error names the file.
    pub async fn reconfigure(&self, cfg: Arc<SipConfig>) -> Result<ReconfigureReport, SipError> {
        if cfg.tls.is_some() {
            let specs = cert_specs(&cfg);
            match &self.acceptor {
                // Loaded and checked completely before the swap (on error the running
                // certificates stay).
                Some(a) => a.reload(&specs)?,
                // No TLS listener runs (one appearing needs a restart): still refuse files
                // that would not load, rather than accept them silently.
                None => drop(CertStore::load(&specs)?),
            }
        }
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Reconfigure { cfg, reply }).await.map_err(|_| SipError::Stopped)?;
        answer.await.map_err(|_| SipError::Stopped)
    }

    /// The B2BUA's state as text for /status, refreshed every second.
    pub fn status(&self) -> watch::Receiver<String> {
        self.status.clone()
    }

    /// Stops the B2BUA by `deadline`: new calls get 503, registrations still refresh (for at
    /// most a minute), calls in progress go on until the deadline and then get a BYE on both
    /// legs, register trunks unregister. The task ends once nothing is left, or shortly after
    /// the deadline (see `engine::drain`).
    pub fn drain(&self, deadline: std::time::Instant) {
        self.drain.send_replace(Some(deadline));
    }

    /// Waits for the task to end (after [`SipHandle::drain`]).
    pub async fn join(self) {
        let SipHandle { control, drain, status, acceptor, task } = self;
        if let Err(e) = task.await {
            tracing::error!("SIP task ended abnormally: {e}");
        }
        drop((control, drain, status, acceptor));
    }
}

/// Starts the B2BUA on `bound` sockets.
pub fn spawn(bound: Bound, cfg: Arc<SipConfig>, metrics: SipMetrics) -> SipHandle {
    let (control, control_rx) = mpsc::channel(8);
    let (drain, drain_rx) = watch::channel(None);
    let (status_tx, status) = watch::channel(String::new());
    let acceptor = bound.acceptor.clone();
    let task = tokio::spawn(run(bound, cfg, metrics, status_tx, control_rx, drain_rx));
    SipHandle { control, drain, status, acceptor, task }
}

/// The engine task: until it has drained after the handle asked (or the handle is gone).
async fn run(
    bound: Bound,
    cfg: Arc<SipConfig>,
    metrics: SipMetrics,
    status: watch::Sender<String>,
    mut control: mpsc::Receiver<Control>,
    mut drain: watch::Receiver<Option<std::time::Instant>>,
) {
    let (tx, mut rx) = mpsc::channel::<Inbound>(8192);
    TlsClients::warn_unverified(&cfg);
    let mut tasks = Vec::new();
    for sock in &bound.udp {
        tasks.push(tokio::spawn(udp_reader(sock.clone(), tx.clone())));
    }
    let first_id = Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
    let limits = ConnLimits::new(cfg.limits, metrics.clone());
    for (transport, l) in bound.tcp {
        let acceptor = bound.acceptor.as_ref().map(|a| a.acceptor());
        let ids = first_id.clone();
        tasks.push(tokio::spawn(accept_loop(l, transport, acceptor, tx.clone(), ids, limits.clone())));
    }
    let mut t = Transports {
        udp: bound.udp,
        conns: HashMap::new(),
        by_peer: HashMap::new(),
        next_id: 1,
        inbound: tx.clone(),
        tls: bound.tls,
        limits,
        media: MediaTasks::new(cfg.media, &metrics.media, tx.clone()),
        metrics: metrics.clone(),
    };
    let mut engine = Engine::new(cfg.clone(), metrics, EngineOptions::random(), Now::system());
    tracing::info!(
        listen = %cfg.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "),
        extensions = cfg.extensions.len(),
        trunks = cfg.trunks.len(),
        "SIP B2BUA running"
    );
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    let (mut control_open, mut drain_open) = (true, true);
    let mut finish: Option<tokio::time::Instant> = None;
    loop {
        t.flush(&mut engine);
        if finish.is_none() && engine.drained() {
            finish = Some(tokio::time::Instant::now() + DRAIN_GRACE);
        }
        let grace = async {
            match finish {
                Some(f) => tokio::time::sleep_until(f).await,
                None => std::future::pending().await,
            }
        };
        let deadline = engine.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                t.handle(&mut engine, msg);
                // Drain what is already queued before flushing, bounded to stay responsive.
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(m) => t.handle(&mut engine, m),
                        Err(_) => break,
                    }
                }
            }
            _ = sleep => engine.on_timer(Now::system()),
            _ = publish.tick() => {
                status.send_replace(engine.status_text(Now::system()));
            }
            c = control.recv(), if control_open => match c {
                Some(Control::Reconfigure { cfg, reply }) => {
                    t.limits.set(cfg.limits);
                    t.media.set_config(cfg.media);
                    // Checked before the reload went ahead (`check_certificates`).
                    match TlsClients::build(&cfg) {
                        Ok(c) => {
                            t.tls = c;
                            TlsClients::warn_unverified(&cfg);
                        }
                        Err(e) => tracing::error!("SIP: trunk TLS settings not applied, the running ones stay: {e}"),
                    }
                    let report = engine.reconfigure(cfg, Now::system());
                    tracing::info!("SIP reconfigured: {report}");
                    let _ = reply.send(report);
                    status.send_replace(engine.status_text(Now::system()));
                }
                // The handle is gone: nobody could ask later, so stop now (BYEs included).
                None => {
                    control_open = false;
                    engine.drain(std::time::Instant::now(), Now::system());
                }
            },
            changed = drain.changed(), if drain_open => {
                let deadline = match changed {
                    Ok(()) => *drain.borrow_and_update(),
                    Err(_) => {
                        drain_open = false;
                        Some(std::time::Instant::now())
                    }
                };
                if let Some(d) = deadline {
                    engine.drain(d, Now::system());
                }
            }
            _ = grace => break,
        }
    }
    for task in tasks {
        task.abort();
    }
    tracing::info!(calls = engine.calls(), "SIP B2BUA stopped");
}

impl Transports {
    fn handle(&mut self, engine: &mut Engine, msg: Inbound) {
        match msg {
            Inbound::Datagram(data, src) => engine.on_datagram(&data, src, Now::system()),
            Inbound::Frame(frame, src) => engine.on_frame(frame, src, Now::system()),
            Inbound::Opened { id, transport, peer, writer } => {
                self.by_peer.insert((transport, peer), id);
                self.conns.insert(id, Conn { transport, peer, writer });
            }
            Inbound::Failed { id, transport, peer } => {
                self.forget(id);
                engine.on_transport_error(transport, peer, Now::system());
            }
            Inbound::Closed(id) => self.forget(id),
            Inbound::Idle { id, reply } => {
                let _ = reply.send(engine.uses_connection(id));
            }
            Inbound::MediaSilent { call, stream } => engine.on_media_silent(call, stream, Now::system()),
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            if self.by_peer.get(&(c.transport, c.peer)) == Some(&id) {
                self.by_peer.remove(&(c.transport, c.peer));
            }
        }
    }

    fn flush(&mut self, engine: &mut Engine) {
        // Media first: the relay listens before the SDP naming its ports leaves.
        for event in engine.take_media() {
            self.media.apply(event);
        }
        for Outgoing { dest, msg } in engine.take_output() {
            let bytes = msg.to_bytes();
            match dest.transport {
                SipTransport::Udp => self.send_udp(dest.addr, &bytes),
                t => self.send_stream(t, dest, bytes),
            }
        }
    }

    fn send_udp(&self, to: SocketAddr, bytes: &[u8]) {
        let sock = self
            .udp
            .iter()
            .find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == to.is_ipv4()))
            .or(self.udp.first());
        match sock {
            // Never blocks the engine: a full socket buffer is packet loss, which SIP over
            // UDP recovers from by retransmission.
            Some(s) => {
                if let Err(e) = s.try_send_to(bytes, to) {
                    tracing::debug!(%to, "SIP: UDP send failed: {e}");
                }
            }
            None => tracing::warn!(%to, "SIP: no UDP listener to send from"),
        }
    }

    fn send_stream(&mut self, transport: SipTransport, dest: Dest, bytes: Vec<u8>) {
        let id = dest
            .conn
            .filter(|id| self.conns.contains_key(id))
            .or_else(|| self.by_peer.get(&(transport, dest.addr)).copied());
        if let Some(c) = id.and_then(|id| self.conns.get(&id)) {
            if c.writer.try_send(bytes).is_err() {
                tracing::debug!(to = %dest.addr, "SIP: connection queue full or closed, message dropped");
            }
            return;
        }
        // No connection: open one; the message waits in its queue meanwhile.
        let id = self.next_id;
        self.next_id += 1;
        let (w, r) = mpsc::channel(CONN_QUEUE);
        let _ = w.try_send(bytes);
        self.conns.insert(id, Conn { transport, peer: dest.addr, writer: w.clone() });
        self.by_peer.insert((transport, dest.addr), id);
        let inbound = self.inbound.clone();
        let (tls, name) = self.tls.for_peer(dest.addr);
        // Ours to a trunk or a phone's contact: no idle cut (the engine reaches out on it).
        let timeouts = Timeouts { message: self.limits.limits().message_timeout, idle: None };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let peer = dest.addr;
            let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, "SIP: cannot connect: {e}");
                    let _ = inbound.send(Inbound::Failed { id, transport, peer }).await;
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "SIP: connect timed out");
                    let _ = inbound.send(Inbound::Failed { id, transport, peer }).await;
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = |tx| Connection { id, transport, peer, writer: w, queue: r, tx, timeouts, metrics };
            if transport == SipTransport::Tls {
                let connector = tokio_rustls::TlsConnector::from(tls);
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
                    Ok(Ok(s)) => conn(inbound).serve(s).await,
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(%peer, "SIP: TLS handshake failed: {why}");
                        let _ = inbound.send(Inbound::Failed { id, transport, peer }).await;
                    }
                }
            } else {
                conn(inbound).serve(tcp).await;
            }
        });
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let src = Dest { transport: SipTransport::Udp, addr: from, conn: None };
                if tx.send(Inbound::Datagram(buf[..n].to_vec(), src)).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface here on Linux; they concern one peer, not the socket.
            Err(e) => tracing::debug!("SIP: UDP receive: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{SipAddr, SipExtension};
    use crate::tls::CertSpec;

    fn config() -> SipConfig {
        let text = "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\ndomain = \"pbx.example.test\"\n\
                    [sip.extensions]\n2001 = { secret = \"s\" }\n";
        let mut c = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap().sip.unwrap();
        // Any free port: the handle is what is tested here, not the listener.
        c.listen = vec![SipAddr { transport: SipTransport::Udp, addr: "127.0.0.1:0".parse().unwrap() }];
        c
    }

    fn with_extension(mut c: SipConfig, n: &str) -> SipConfig {
        let e = c.extensions["2001"].clone();
        c.extensions.insert(n.to_string(), SipExtension { name: n.to_string(), ..e });
        c
    }

    /// The runtime and admin may keep the handle in shared state and hand it across tasks.
    #[test]
    fn the_handle_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<SipHandle>();
        shareable::<ReconfigureReport>();
    }

    #[tokio::test]
    async fn the_handle_reconfigures_reports_status_and_drains() {
        let cfg = config();
        let bound = bind(&cfg).await.unwrap();
        let h = spawn(bound, Arc::new(cfg.clone()), SipMetrics::default());
        let mut status = h.status();
        tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.contains("extension 2001")))
            .await
            .expect("status published")
            .unwrap();

        // Unreadable certificate files refuse the whole reconfigure: 2010 is not added.
        let mut bad = with_extension(cfg.clone(), "2010");
        bad.tls = Some(CertSpec { cert: "/nonexistent/sip.pem".into(), key: "/nonexistent/sip.key".into() });
        let e = h.reconfigure(Arc::new(bad)).await.unwrap_err();
        assert!(matches!(e, SipError::Tls(_)) && e.to_string().contains("/nonexistent/sip.pem"), "{e}");

        let r = h.reconfigure(Arc::new(with_extension(cfg.clone(), "2010"))).await.unwrap();
        assert_eq!(r.extensions.added, ["2010"], "the refused reconfigure changed nothing");
        assert!(status.borrow_and_update().contains("extension 2010"), "status refreshed at once");

        h.drain(std::time::Instant::now());
        tokio::time::timeout(Duration::from_secs(5), h.join()).await.expect("the task ends after drain");
    }
}
