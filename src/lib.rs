//! portier: a transparent layer-4 load balancer (TPROXY) for Microsoft UC estates.
//! See docs/ARCHITECTURE.md for the map of modules and how a connection flows through them.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub mod health;
pub mod intercept;
pub mod lab;
pub mod log_limit;
pub mod media;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod sip;
pub mod state;
pub mod tls;
