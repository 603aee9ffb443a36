//! The validated, typed configuration (stage two). Nothing here can be malformed: every value
//! was checked against the rest of the file by `validate`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub global: GlobalConfig,
    pub admin: AdminConfig,
    pub intercept: InterceptConfig,
    pub pools: Vec<PoolConfig>,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    /// How long a stopping portier waits for established connections to finish.
    pub drain_timeout: Duration,
    /// Default tracing filter, overridden by RUST_LOG.
    pub log_level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterceptConfig {
    pub fwmark: u32,
    pub route_table: u32,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_FWMARK: u32 = 1;
pub const DEFAULT_ROUTE_TABLE: u32 = 100;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_STICKY_EXPIRE: Duration = Duration::from_secs(30 * 60);

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: IpAddr,
    /// None: connect to the port the client dialled.
    pub port: Option<u16>,
    pub weight: u32,
}

impl ServerConfig {
    /// The name used in metrics and logs: the address as written.
    pub fn label(&self) -> String {
        match self.port {
            Some(p) => SocketAddr::new(self.address, p).to_string(),
            None => self.address.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Tcp,
    Http { path: String, expect: u16, host: Option<String> },
    Tls { sni: Option<String> },
    SipOptions { transport: SipTransport },
}

impl CheckKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
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
    Tcp,
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

#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    pub table: String,
    pub expire: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortRange>,
    pub mode: Mode,
    /// Index into `Config::pools`.
    pub pool: usize,
    pub source: Source,
    pub sticky: Option<StickyConfig>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Config {
    pub fn pool(&self, service: &ServiceConfig) -> &PoolConfig {
        &self.pools[service.pool]
    }
}
