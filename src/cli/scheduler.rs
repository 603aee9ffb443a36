//! Which tokio scheduler `portier run` uses: `global.threads`, else `TOKIO_WORKER_THREADS`,
//! else the CPUs this process may run on (its affinity mask and cgroup quota, as
//! `std::thread::available_parallelism` reads them).

use std::fmt;

/// The scheduler and where its size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduler {
    pub workers: usize,
    pub from: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Environment,
    Cpus,
}

/// One worker means the current-thread scheduler: on one CPU the multi-thread scheduler with
/// one worker pays for its atomics and cross-thread wake-ups with nothing to gain (measured
/// slower on one request per connection, docs/PERFORMANCE.md).
pub fn choose(configured: Option<usize>, environment: Option<usize>, cpus: usize) -> Scheduler {
    let (workers, from) = match (configured, environment) {
        (Some(n), _) => (n, Source::Config),
        (None, Some(n)) => (n, Source::Environment),
        (None, None) => (cpus, Source::Cpus),
    };
    Scheduler { workers: workers.max(1), from }
}

/// `TOKIO_WORKER_THREADS` as tokio reads it: a positive integer, else ignored.
pub fn environment() -> Option<usize> {
    std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0)
}

/// CPUs available to this process; 1 when the kernel will not say.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Scheduler {
    pub fn is_current_thread(&self) -> bool {
        self.workers == 1
    }

    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.is_current_thread() {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(self.workers).enable_all().build()
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.from {
            Source::Config => "global.threads",
            Source::Environment => "TOKIO_WORKER_THREADS",
            Source::Cpus if self.workers == 1 => "1 CPU available",
            Source::Cpus => "CPUs available",
        };
        if self.is_current_thread() {
            write!(f, "current-thread scheduler ({from})")
        } else {
            write!(f, "{} worker threads ({from})", self.workers)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_without_a_setting_is_the_current_thread_scheduler() {
        let s = choose(None, None, 1);
        assert!(s.is_current_thread());
        assert_eq!(s.to_string(), "current-thread scheduler (1 CPU available)");
    }

    #[test]
    fn the_setting_wins_over_the_environment_and_the_cpus() {
        assert_eq!(choose(Some(3), Some(2), 1), Scheduler { workers: 3, from: Source::Config });
        assert_eq!(choose(Some(1), None, 8).to_string(), "current-thread scheduler (global.threads)");
        assert_eq!(choose(None, Some(2), 1), Scheduler { workers: 2, from: Source::Environment });
        assert_eq!(choose(None, None, 4).to_string(), "4 worker threads (CPUs available)");
    }

    #[test]
    fn zero_is_never_a_scheduler() {
        assert_eq!(choose(None, None, 0).workers, 1);
    }
}
