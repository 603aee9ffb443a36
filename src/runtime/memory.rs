//! Memory given back after a burst. glibc keeps what a burst of connections freed in its
//! per-thread arenas (55 MB held after 10,000 L4 connections had closed, from 9 MB); once the
//! load has fallen well below its peak, `malloc_trim` returns the free pages of every arena
//! to the kernel. Under steady load nothing is trimmed, so nothing is faulted in again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::proxy::Drain;

/// How often the load is sampled (two atomic loads and a gauge read).
const SAMPLE: Duration = Duration::from_secs(1);

/// Whether the load fell far enough from its peak since the last trim to trim now: by at
/// least half, and by at least `MIN_DROP` connections or transactions.
pub fn should_trim(peak: usize, now: usize) -> bool {
    const MIN_DROP: usize = 256;
    peak >= now + MIN_DROP && now <= peak / 2
}

/// What holds memory in bulk: client and server connections (the data path's descriptors:
/// an HTTP/2 client can hold a hundred server connections), SIP connections and transactions.
fn load(drain: &Drain, metrics: &Metrics) -> usize {
    let sip = metrics.sip();
    let gauge = |g: i64| usize::try_from(g).unwrap_or(0);
    let data_path = crate::net::DATA_PATH.in_use().max(drain.active());
    data_path + gauge(sip.connections.get()) + gauge(sip.transactions.get())
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the load until `stop`, trimming after each burst.
pub async fn trim_after_bursts(drain: Arc<Drain>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = load(&drain, &metrics);
        peak = peak.max(now);
        if should_trim(peak, now) {
            let before = rss_kb();
            // SAFETY: malloc_trim only walks glibc's own heap; it is thread-safe.
            unsafe { libc::malloc_trim(0) };
            tracing::debug!(
                peak,
                now,
                rss_before_kb = before,
                rss_after_kb = rss_kb(),
                "memory of a burst given back"
            );
            peak = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_has_mostly_gone_and_never_under_steady_load() {
        assert!(should_trim(10_000, 100));
        assert!(should_trim(600, 300));
        assert!(!should_trim(10_000, 6_000), "still more than half of the peak");
        assert!(!should_trim(200, 0), "a small burst is not worth a trim");
        assert!(!should_trim(5_000, 5_000), "steady");
    }
}
