//! The `[sip]` section (the B2BUA side): `file.rs` holds the shapes as written, `validate.rs`
//! turns them into `sip`'s typed [`SipConfig`](crate::sip::SipConfig) (with `dialplan.rs` and
//! `extensions.rs` for the two parts that refer to the rest), `summary.rs` prints it for
//! `portier check`. Errors go through the shared `Checker`, all reported together.

mod dialplan;
mod extensions;
mod file;
mod media;
mod summary;
mod validate;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use file::SipFile;
pub use summary::summary;
pub use validate::parse_sip_addr;
pub(in crate::config) use validate::validate_sip;

pub const DEFAULT_RING_TIME: Duration = Duration::from_secs(20);
pub const DEFAULT_REGISTER_EXPIRES: Duration = Duration::from_secs(3600);
/// How long a digest nonce is accepted (then `stale=true` asks for a fresh one).
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);
