//! Balancing: pools of servers, the choice algorithms and the stickiness tables.

pub mod algorithm;
mod pool;
mod sticky;

pub use pool::{ActiveGuard, Pool, Server, ServerLive};
pub use sticky::StickyTable;
