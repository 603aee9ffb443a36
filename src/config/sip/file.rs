//! Stage one of `[sip]`: the section exactly as written. `deny_unknown_fields` names a
//! misspelt field with its line; `Spanned` values let validation name the line of a bad value.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::config::file::CertFile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipFile {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub domain: Spanned<String>,
    pub tls: Option<CertFile>,
    pub nonce_lifetime: Option<Spanned<String>>,
    pub digest_algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub extensions: BTreeMap<Spanned<String>, ExtensionFile>,
    #[serde(default)]
    pub trunks: BTreeMap<Spanned<String>, TrunkFile>,
    pub voicemail: Option<VoicemailFile>,
    #[serde(default)]
    pub dialplan: Vec<DialRuleFile>,
    pub limits: Option<LimitsFile>,
    pub media: Option<MediaFile>,
}

/// `[sip.media]`: the relay's ports, address and timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    pub ports: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub hold_timeout: Option<Spanned<String>>,
}

/// `[sip.limits]`: what one peer, or all of them, may hold of the B2BUA's state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub transactions: Option<Spanned<i64>>,
    pub transactions_per_source: Option<Spanned<i64>>,
    pub connections: Option<Spanned<i64>>,
    pub connections_per_source: Option<Spanned<i64>>,
    pub message_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionFile {
    pub name: Option<Spanned<String>>,
    pub secret: Spanned<String>,
    pub voicemail: Option<Spanned<bool>>,
    pub ring_time: Option<Spanned<String>>,
    pub forward: Option<ForwardFile>,
    pub nat: Option<Spanned<String>>,
    pub media: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    pub always: Option<Spanned<String>>,
    pub busy: Option<Spanned<String>>,
    pub no_answer: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TrunkKindFile {
    Peer,
    Register,
}

/// One flat shape for both kinds, so a field of the other kind is named precisely.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkFile {
    pub kind: Spanned<TrunkKindFile>,
    pub identity: Option<Spanned<String>>,
    // peer
    pub address: Option<Spanned<String>>,
    pub trusted: Option<Spanned<bool>>,
    pub options_ping: Option<Spanned<String>>,
    // register
    pub registrar: Option<Spanned<String>>,
    pub domain: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub expires: Option<Spanned<String>>,
    pub inbound: Option<Spanned<String>>,
    /// Both kinds, `tls:` addresses only.
    pub tls: Option<Spanned<crate::config::file::PoolTlsFile>>,
    pub media: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailFile {
    pub trunk: Spanned<String>,
    pub pilot: Spanned<String>,
    pub mailbox_prefix: Option<Spanned<String>>,
    pub own_extension_to_mailbox: Option<bool>,
    pub mwi: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRuleFile {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub to: Spanned<String>,
    pub strip: Option<Spanned<u32>>,
    pub prepend: Option<Spanned<String>>,
}
