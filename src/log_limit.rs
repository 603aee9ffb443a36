//! Rate-limited warnings: a flood of one event logs one line a second and says how many it held back.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets one log line through per second; counts the rest so the next line can say so.
#[derive(Default)]
pub struct LogLimiter {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.last_second.swap(now, Ordering::Relaxed) == now {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_rest_counted() {
        let l = LogLimiter::default();
        assert!(l.allow());
        let held = (0..10).filter(|_| !l.allow()).count() as u64;
        // Unless the second turned meanwhile, all ten were held back.
        assert!(held >= 9, "{held}");
        assert_eq!(l.take_suppressed(), held);
        assert_eq!(l.take_suppressed(), 0);
    }
}
