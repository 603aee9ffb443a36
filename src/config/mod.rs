//! Configuration: TOML file -> shape-checked `file` structs -> validated, typed `model`.

mod duration;
mod error;
mod file;
mod model;
mod service;
mod sip;
mod validate;

use std::path::Path;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use sip::{parse_sip_addr, summary as sip_summary};
// The SIP model is `sip`'s; re-exported so configuration readers find it here too.
pub use crate::sip::{
    Forward, ForwardTo, Identity, SipAddr, SipConfig, SipExtension, SipTransport, SipTrunk, SipVoicemail,
    TrunkKind,
};
pub use validate::{parse_port_spec, parse_server_address};

/// Default location used by `portier run` and `portier check`.
pub const DEFAULT_PATH: &str = "/etc/portier/portier.toml";

/// Parses and validates configuration text; `path` is only used to name the file in errors.
pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let loc = error::Locator::new(path, src);
    let file: file::FileConfig = toml::from_str(src).map_err(|e| ConfigErrors(vec![loc.toml_error(&e)]))?;
    validate::validate(&file, path, src)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&src, path)
}

#[cfg(test)]
mod tests;
