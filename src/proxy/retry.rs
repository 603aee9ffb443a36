//! Choosing again after a failed connect, for the L4 and both L7 paths: how many servers one
//! request or connection may try, when to give up and why, and the one rate-limited log
//! line of a refusal. Sans-IO except for that line.

use crate::balance::Pool;
use crate::net::{ClientAddr, OrigDstAddr};
use crate::state::Service;

/// Connect attempts per request or connection (the first choice plus redispatches).
pub const MAX_ATTEMPTS: usize = 3;

/// Why no server took a request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No server was usable from the start (all down, or of the wrong family).
    NoServer,
    /// Servers were tried and none accepted the connection.
    NoneAccepted,
}

/// The servers one request tried so far; a fixed array, so retrying allocates nothing.
#[derive(Debug, Default)]
pub struct Attempts {
    tried: [usize; MAX_ATTEMPTS],
    n: usize,
}

impl Attempts {
    /// Indexes of the servers that failed, to be skipped by the next choice.
    pub fn tried(&self) -> &[usize] {
        &self.tried[..self.n]
    }

    /// The next server `choose` picks (given the tried ones), or why there is none: nothing
    /// usable before any attempt is `NoServer`; attempts spent or nothing left after a
    /// failure is `NoneAccepted`.
    pub fn next(&self, choose: impl FnOnce(&[usize]) -> Option<usize>) -> Result<usize, Refusal> {
        if self.n >= MAX_ATTEMPTS {
            return Err(Refusal::NoneAccepted);
        }
        choose(self.tried()).ok_or(if self.n == 0 { Refusal::NoServer } else { Refusal::NoneAccepted })
    }

    /// Server `i` did not accept the connection.
    pub fn failed(&mut self, i: usize) {
        if self.n < MAX_ATTEMPTS {
            self.tried[self.n] = i;
            self.n += 1;
        }
    }
}

/// Counts a refused request or connection once and says so in the log, at most once a
/// second per service, with how many such lines were skipped since the last one.
pub fn report_refused(
    svc: &Service,
    client: ClientAddr,
    orig: OrigDstAddr,
    pool: &Pool,
    attempts: &Attempts,
    outcome: &str,
) {
    svc.metrics.no_server.inc();
    if svc.no_server_log.allow() {
        tracing::warn!(
            service = %svc.config.name, %client, dst = %orig, pool = %pool.name,
            tried = attempts.tried().len(), suppressed = svc.no_server_log.take_suppressed(),
            "no server available: {outcome}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_usable_at_first_is_no_server() {
        let a = Attempts::default();
        assert_eq!(a.next(|_| None), Err(Refusal::NoServer));
    }

    #[test]
    fn nothing_left_after_a_failure_is_none_accepted() {
        let mut a = Attempts::default();
        assert_eq!(a.next(|t| (t.is_empty()).then_some(0)), Ok(0));
        a.failed(0);
        assert_eq!(a.next(|t| (!t.contains(&1)).then_some(1)), Ok(1));
        a.failed(1);
        assert_eq!(a.tried(), &[0, 1]);
        assert_eq!(a.next(|_| None), Err(Refusal::NoneAccepted));
    }

    #[test]
    fn at_most_max_attempts_servers_are_tried() {
        let mut a = Attempts::default();
        let mut tried = 0;
        while let Ok(i) = a.next(|t| Some(t.len())) {
            tried += 1;
            a.failed(i);
        }
        assert_eq!(tried, MAX_ATTEMPTS);
        assert_eq!(
            a.next(|_| Some(99)),
            Err(Refusal::NoneAccepted),
            "a server is left, the attempts are not"
        );
        a.failed(7);
        assert_eq!(a.tried().len(), MAX_ATTEMPTS);
    }
}
