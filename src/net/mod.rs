//! Address newtypes and the sockets portier needs for transparency.

mod addr;
pub mod descriptors;
mod socket;

pub use addr::{ClientAddr, OrigDstAddr};
pub use descriptors::{FdSlot, DATA_PATH};
pub use socket::{connect_upstream, transparent_listener, UpstreamSource};
