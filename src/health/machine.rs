//! The rise/fall state machine of one server's health, sans-IO: it is told each probe result
//! and the time, and answers with the transition to apply. The driver owns sockets and timers.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    WentUp,
}

#[derive(Debug, Clone)]
pub struct HealthMachine {
    rise: u32,
    fall: u32,
    interval: Duration,
    up: bool,
    /// No result yet: a server starts up (so a fresh start serves at once) and the first
    /// failed check takes it down at once, as HAProxy does.
    fresh: bool,
    ok_streak: u32,
    fail_streak: u32,
    next_due: Instant,
    pub last_change: Option<Instant>,
}

impl HealthMachine {
    pub fn new(rise: u32, fall: u32, interval: Duration, now: Instant) -> Self {
        HealthMachine {
            rise: rise.max(1),
            fall: fall.max(1),
            interval,
            up: true,
            fresh: true,
            ok_streak: 0,
            fail_streak: 0,
            next_due: now,
            last_change: None,
        }
    }

    /// A machine taking over a server whose state is already known (its check changed in a
    /// reload): a DOWN server needs `rise` good checks, an UP one `fall` bad ones.
    pub fn resume(rise: u32, fall: u32, interval: Duration, now: Instant, up: bool) -> Self {
        HealthMachine { up, fresh: false, ..HealthMachine::new(rise, fall, interval, now) }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// When the next probe should start.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Records the result of the probe that started at `started`.
    pub fn record(&mut self, ok: bool, started: Instant) -> Option<Transition> {
        // Keep a fixed cadence from probe start; a probe that ran late does not queue a burst.
        self.next_due = (self.next_due + self.interval).max(started + self.interval / 2);
        let fresh = std::mem::replace(&mut self.fresh, false);
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if !self.up && self.ok_streak >= self.rise {
                self.up = true;
                self.last_change = Some(started);
                return Some(Transition::WentUp);
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.up && (fresh || self.fail_streak >= self.fall) {
                self.up = false;
                self.last_change = Some(started);
                return Some(Transition::WentDown);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut HealthMachine, results: &[bool], t0: Instant) -> Vec<Option<Transition>> {
        results
            .iter()
            .enumerate()
            .map(|(k, ok)| m.record(*ok, t0 + Duration::from_secs(2 * k as u64)))
            .collect()
    }

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_successes() {
        let t0 = Instant::now();
        let mut m = HealthMachine::new(2, 3, Duration::from_secs(2), t0);
        let r = feed(&mut m, &[true, false, false, false, true, true], t0);
        assert_eq!(r, vec![None, None, None, Some(Transition::WentDown), None, Some(Transition::WentUp)]);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t0 = Instant::now();
        let mut m = HealthMachine::new(2, 3, Duration::from_secs(2), t0);
        let r = feed(&mut m, &[true, false, false, true, false, false], t0);
        assert!(r.iter().all(Option::is_none));
        assert!(m.is_up());
    }

    #[test]
    fn a_resumed_machine_keeps_the_known_state() {
        let t0 = Instant::now();
        let mut down = HealthMachine::resume(2, 3, Duration::from_secs(2), t0, false);
        assert!(!down.is_up());
        assert_eq!(feed(&mut down, &[true, true], t0), vec![None, Some(Transition::WentUp)]);
        let mut up = HealthMachine::resume(2, 3, Duration::from_secs(2), t0, true);
        // not fresh: one failure is not enough
        assert_eq!(feed(&mut up, &[false, false, false], t0), vec![None, None, Some(Transition::WentDown)]);
    }

    #[test]
    fn first_failure_of_a_fresh_server_takes_it_down() {
        let t0 = Instant::now();
        let mut m = HealthMachine::new(2, 3, Duration::from_secs(2), t0);
        assert_eq!(m.record(false, t0), Some(Transition::WentDown));
        assert_eq!(m.last_change, Some(t0));
    }

    #[test]
    fn cadence_is_fixed_and_does_not_burst() {
        let t0 = Instant::now();
        let mut m = HealthMachine::new(1, 1, Duration::from_secs(2), t0);
        assert_eq!(m.next_due(), t0);
        m.record(true, t0);
        assert_eq!(m.next_due(), t0 + Duration::from_secs(2));
        // a probe that started 10 s late schedules the next one at least interval/2 later
        m.record(true, t0 + Duration::from_secs(12));
        assert_eq!(m.next_due(), t0 + Duration::from_secs(13));
    }
}
