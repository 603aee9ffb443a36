//! Address newtypes and the sockets portier needs for transparency.

mod addr;
mod socket;

pub use addr::{ClientAddr, OrigDstAddr};
pub use socket::{connect_upstream, transparent_listener, UpstreamSource};
