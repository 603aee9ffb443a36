//! The validated, typed configuration (stage two). Nothing here can be malformed: every value
//! was checked against the rest of the file by `validate`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::sip::{SipConfig, SipTransport};
pub use crate::tls::{CertSpec, UpstreamTls};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub global: GlobalConfig,
    pub admin: AdminConfig,
    pub intercept: InterceptConfig,
    pub pools: Vec<PoolConfig>,
    pub services: Vec<ServiceConfig>,
    /// The SIP B2BUA (validated; not run yet).
    pub sip: Option<SipConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    /// How long a stopping portier waits for established connections to finish.
    pub drain_timeout: Duration,
    /// Default tracing filter, overridden by RUST_LOG.
    pub log_level: String,
    /// Worker threads; None: `TOKIO_WORKER_THREADS`, else one per CPU available (cli::scheduler).
    pub threads: Option<usize>,
    /// Client connections at once, all services together; None: half the data path's
    /// descriptors (each proxied connection holds a client and a server socket).
    pub max_connections: Option<usize>,
    /// Descriptors the data path never takes, kept for admin, the control socket, nft and
    /// logs; health checks (one per server) and SIP (`sip.limits.connections`) come on top.
    pub reserved_descriptors: usize,
}

pub const DEFAULT_RESERVED_DESCRIPTORS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The control socket `portier reload` talks to (owner-only permissions).
    pub control: PathBuf,
    /// Bearer token that `POST /api/...` requests must carry; required beyond loopback.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterceptConfig {
    pub fwmark: u32,
    pub route_table: u32,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/portier/control.sock";
pub const DEFAULT_FWMARK: u32 = 1;
pub const DEFAULT_ROUTE_TABLE: u32 = 100;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_STICKY_EXPIRE: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// ActiveSync long-polls for up to an hour; a shorter default would cut them.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_COOKIE_NAME: &str = "PORTIER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    SourceHash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::SourceHash => "source-hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub servers: Vec<ServerConfig>,
    pub check: Option<CheckConfig>,
    /// Re-encrypt to the servers (HTTPS services): TLS towards every server of the pool.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: IpAddr,
    /// None: connect to the port the client dialled.
    pub port: Option<u16>,
    pub weight: u32,
    /// Takes no new connections; those in flight finish (maintenance).
    pub drain: bool,
}

/// A server's identity within its pool: what stays the same when weights or flags change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    pub address: IpAddr,
    pub port: Option<u16>,
}

impl ServerConfig {
    pub fn id(&self) -> ServerId {
        ServerId { address: self.address, port: self.port }
    }

    /// The name used in metrics and logs: the address as written.
    pub fn label(&self) -> String {
        match self.port {
            Some(p) => SocketAddr::new(self.address, p).to_string(),
            None => self.address.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        expect: u16,
        host: Option<String>,
    },
    /// HTTP over TLS; the certificate is not verified (a check asks "is it alive?").
    Https {
        path: String,
        expect: u16,
        host: Option<String>,
        sni: Option<String>,
    },
    Tls {
        sni: Option<String>,
    },
    SipOptions {
        transport: SipTransport,
    },
}

impl CheckKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Https { .. } => "https",
            CheckKind::Tls { .. } => "tls",
            CheckKind::SipOptions { .. } => "sip-options",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    /// Port to check; None uses each server's own port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Layer 4: bytes relayed as they are.
    Tcp,
    /// Plain HTTP/1.1 proxied per request.
    Http,
    /// TLS terminated here (certificates by SNI), then HTTP per request.
    Https,
    /// TLS passed through untouched, routed by the ClientHello's SNI.
    Tls,
    /// Answers every request with a 301 to https:// on the same host and path.
    Redirect,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
            Mode::Https => "https",
            Mode::Tls => "tls",
            Mode::Redirect => "redirect",
        }
    }
    /// Modes that parse HTTP requests.
    pub fn is_http(self) -> bool {
        matches!(self, Mode::Http | Mode::Https)
    }
}

/// A routing rule inside a service: first match wins, else the service's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Exact host (case-insensitive, port ignored), or `*.domain` for one label.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments (`/owa` matches `/owa` and `/owa/x`, not `/owax`).
    pub path: Option<String>,
    /// The pool's name (a key of `Config::pools`).
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

/// Whether an HTTP service's idle server connections serve other client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerReuse {
    /// Lent to any client connection whose requests would leave from the same address,
    /// unless they carried NTLM or Negotiate authentication (the default).
    Shared,
    /// Each server connection serves only the client connection that opened it.
    Private,
}

/// Which address upstream connections leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Transparent: the client's own address (TPROXY, IP_TRANSPARENT).
    Client,
    /// SNAT from the balancer's address chosen by the kernel's routing.
    Balancer,
    /// SNAT from this address.
    Address(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyBy {
    /// Client IP -> server, in a named table that services share.
    ClientIp { table: String },
    /// portier inserts its own cookie naming the server, and honours it.
    Cookie { name: String },
    /// The server's own cookie (e.g. Lync's MS-WSMAN) is learnt and routed by, never rewritten.
    ServerCookie { name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    pub by: StickyBy,
    pub expire: Duration,
}

impl StickyConfig {
    /// The shared client-IP table name, for client-ip stickiness.
    pub fn table(&self) -> Option<&str> {
        match &self.by {
            StickyBy::ClientIp { table } => Some(table),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortRange>,
    pub mode: Mode,
    /// The default pool's name; None only for redirect services.
    pub pool: Option<String>,
    pub routes: Vec<RouteConfig>,
    pub certificates: Vec<CertSpec>,
    pub source: Source,
    pub sticky: Option<StickyConfig>,
    /// tcp/tls: no byte either way for this long closes the connection. http/https: a
    /// keep-alive connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// http/https: the whole request head must arrive within this (slowloris defence).
    pub header_timeout: Duration,
    /// http/https: the server's response head must arrive within this after the request.
    pub response_timeout: Duration,
    pub access_log: AccessLog,
    /// http/https: whether idle server connections serve other client connections.
    pub server_reuse: ServerReuse,
    /// Client connections of this service at once (none: only the global limit).
    pub max_connections: Option<usize>,
}

impl Config {
    /// The service's default pool (every mode but redirect has one).
    pub fn pool(&self, service: &ServiceConfig) -> Option<&PoolConfig> {
        service.pool.as_ref().and_then(|name| self.pool_named(name))
    }

    pub fn pool_named(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
