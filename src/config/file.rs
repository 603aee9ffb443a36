//! The file format exactly as written by administrators (stage one of two).
//!
//! Everything here is what serde can check by shape alone: field names (unknown ones are
//! refused), types and enum values. Meaning (addresses, ranges, references between sections)
//! is checked in `validate`, which keeps the spans recorded here to name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub global: Option<GlobalFile>,
    pub admin: Option<AdminFile>,
    pub intercept: Option<InterceptFile>,
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, PoolFile>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, ServiceFile>,
    pub sip: Option<super::sip::SipFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFile {
    pub drain_timeout: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub threads: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub reserved_descriptors: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
    pub control: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptFile {
    pub fwmark: Option<Spanned<u32>>,
    pub route_table: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceFile {
    Roundrobin,
    Leastconn,
    SourceHash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub balance: Option<BalanceFile>,
    pub servers: Spanned<Vec<ServerFile>>,
    pub check: Option<Spanned<CheckFile>>,
    pub tls: Option<Spanned<PoolTlsFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTlsFile {
    pub verify: Option<bool>,
    pub ca: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub drain: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CheckTypeFile {
    Tcp,
    Http,
    Https,
    Tls,
    SipOptions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    #[serde(rename = "type")]
    pub kind: CheckTypeFile,
    pub port: Option<Spanned<u16>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    /// http: request path.
    pub path: Option<Spanned<String>>,
    /// http: expected status code.
    pub expect: Option<Spanned<u16>>,
    /// http: Host header; tls: SNI name.
    pub host: Option<Spanned<String>>,
    /// tls: SNI name (alias kept apart from `host` for readability).
    pub sni: Option<Spanned<String>>,
    /// sip-options: udp, tcp or tls.
    pub transport: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModeFile {
    Tcp,
    Http,
    Https,
    Tls,
    Redirect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// One address or a list; parsed in validation so the error names the bad element.
    pub vip: Spanned<toml::Value>,
    /// Integers or "low-high" strings.
    pub ports: Spanned<toml::Value>,
    pub mode: Option<Spanned<ModeFile>>,
    pub pool: Option<Spanned<String>>,
    pub routes: Option<Spanned<Vec<RouteFile>>>,
    pub certificates: Option<Spanned<Vec<CertFile>>>,
    pub source: Option<Spanned<String>>,
    pub sticky: Option<Spanned<StickyFile>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub server_reuse: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub pool: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    pub by: Spanned<String>,
    /// Cookie name for `cookie` and `server-cookie`.
    pub name: Option<Spanned<String>>,
    pub table: Option<Spanned<String>>,
    pub expire: Option<Spanned<String>>,
}
