//! The data path's share of the process's file descriptors. Client connections and server
//! connections each take a slot before their socket is kept; the rest of the descriptor limit
//! stays in reserve for what must keep working when the data path is full: health checks,
//! the admin listener, the control socket, SIP, nft and log files. So at the limit a client
//! gets a refusal, not the admin listener an EMFILE.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the descriptors of the data path against a budget. One per process: descriptors
/// are a process-wide resource, and the count outlives every rebuilt state.
#[derive(Debug)]
pub struct DescriptorBudget {
    in_use: AtomicUsize,
    budget: AtomicUsize,
}

/// The process's data path.
pub static DATA_PATH: DescriptorBudget = DescriptorBudget::unlimited();

/// One descriptor of the data path, given back when dropped (with the socket it stands for).
#[must_use = "the slot counts a descriptor only while it is held"]
#[derive(Debug)]
pub struct FdSlot(&'static DescriptorBudget);

impl Drop for FdSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DescriptorBudget {
    pub const fn unlimited() -> DescriptorBudget {
        DescriptorBudget { in_use: AtomicUsize::new(0), budget: AtomicUsize::new(usize::MAX) }
    }

    /// A slot, or None when the budget is used up.
    pub fn take(&'static self) -> Option<FdSlot> {
        let before = self.in_use.fetch_add(1, Ordering::Relaxed);
        if before >= self.budget.load(Ordering::Relaxed) {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(FdSlot(self))
    }

    pub fn set_budget(&self, n: usize) {
        self.budget.store(n, Ordering::Relaxed);
    }

    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// The process's soft limit on open descriptors (RLIMIT_NOFILE), None if unknown or infinite.
pub fn open_file_limit() -> Option<usize> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given; nothing else is touched.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then(|| usize::try_from(r.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_at_the_budget_and_given_back_when_dropped() {
        static B: DescriptorBudget = DescriptorBudget::unlimited();
        B.set_budget(2);
        let a = B.take().expect("first");
        let b = B.take().expect("second");
        assert!(B.take().is_none(), "the third is over the budget");
        assert_eq!(B.in_use(), 2, "a refusal leaves the count as it was");
        drop(a);
        let c = B.take().expect("a slot given back is there again");
        drop((b, c));
        assert_eq!(B.in_use(), 0);
    }

    #[test]
    fn the_limit_is_read() {
        assert!(open_file_limit().is_some_and(|n| n >= 3));
    }
}
