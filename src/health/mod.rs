//! Health checking: a sans-IO rise/fall state machine, the probes that feed it, and the
//! driver tasks that run them and publish up/down into the running state.

pub mod driver;
pub mod machine;
pub mod probe;
