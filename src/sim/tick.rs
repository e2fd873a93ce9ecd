//! Fixed-timestep pacing. The simulation runs tick `n` at `start + n * period`. A tick that starts late runs at
//! once (catch-up, measured as lateness); a sim more than [`MAX_CATCH_UP`] ticks behind re-anchors its schedule
//! and *counts* the ticks it dropped — a late tick is measured and counted, never silently skipped.

use std::time::{Duration, Instant};

/// Ticks the scheduler runs back to back to catch up before it re-anchors.
pub const MAX_CATCH_UP: u64 = 5;

/// Pacing counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickCounters {
    /// Ticks run.
    pub ticks: u64,
    /// Ticks whose work took longer than the period.
    pub overruns: u64,
    /// Ticks that started more than a millisecond after their slot.
    pub late: u64,
    /// Scheduled ticks that never ran because the sim fell too far behind (re-anchored).
    pub dropped: u64,
    /// Worst lateness seen.
    pub max_lateness: Duration,
}

/// The scheduler.
#[derive(Debug)]
pub struct TickClock {
    period: Duration,
    next: Instant,
    counters: TickCounters,
}

impl TickClock {
    /// A clock ticking `rate` times per second, first tick at `now + period`.
    pub fn new(rate: u32, now: Instant) -> Self {
        let period = Duration::from_secs(1) / rate.max(1);
        Self { period, next: now + period, counters: TickCounters::default() }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When the next tick is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Counters so far.
    pub fn counters(&self) -> TickCounters {
        self.counters
    }

    /// Call when a tick starts at `now` (at or after [`TickClock::next_due`]); returns its lateness.
    pub fn start(&mut self, now: Instant) -> Duration {
        let lateness = now.saturating_duration_since(self.next);
        if lateness > Duration::from_millis(1) {
            self.counters.late += 1;
        }
        self.counters.max_lateness = self.counters.max_lateness.max(lateness);
        self.counters.ticks += 1;
        self.next += self.period;
        // Far behind: running every missed tick back to back would only make the next ones late too.
        if now > self.next {
            // Slots already in the past: `next` itself plus every whole period after it.
            let behind = 1 + (now - self.next).as_nanos() / self.period.as_nanos().max(1);
            if behind as u64 > MAX_CATCH_UP {
                self.counters.dropped += behind as u64;
                self.next += self.period * behind as u32;
                log::warn!("simulation fell {behind} ticks behind; schedule re-anchored (counted as dropped ticks)");
            }
        }
        lateness
    }

    /// Call when the tick's work is done; returns whether it overran the period.
    pub fn finish(&mut self, took: Duration) -> bool {
        let overrun = took > self.period;
        if overrun {
            self.counters.overruns += 1;
        }
        overrun
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_time_ticks_are_neither_late_nor_overruns() {
        let t0 = Instant::now();
        let mut c = TickClock::new(20, t0);
        for n in 1..=10u32 {
            let due = c.next_due();
            assert_eq!(due, t0 + c.period() * n);
            c.start(due);
            c.finish(Duration::from_millis(5));
        }
        assert_eq!(c.counters(), TickCounters { ticks: 10, ..Default::default() });
    }

    #[test]
    fn slow_ticks_are_counted_as_overruns_and_late_followers() {
        let t0 = Instant::now();
        let mut c = TickClock::new(20, t0);
        let due = c.next_due();
        c.start(due);
        assert!(c.finish(Duration::from_millis(70)));
        // The next tick starts 20 ms after its slot: late, run at once (catch-up).
        c.start(due + Duration::from_millis(70));
        let k = c.counters();
        assert_eq!((k.overruns, k.late, k.dropped), (1, 1, 0));
        assert_eq!(k.max_lateness, Duration::from_millis(20));
    }

    #[test]
    fn falling_far_behind_reanchors_and_counts_dropped_ticks() {
        let t0 = Instant::now();
        let mut c = TickClock::new(20, t0);
        let due = c.next_due();
        c.start(due + Duration::from_millis(1000)); // a one-second stall
        let k = c.counters();
        assert!(k.dropped >= 15, "{k:?}");
        assert!(c.next_due() > due + Duration::from_millis(1000), "next slot is in the future again");
    }
}
