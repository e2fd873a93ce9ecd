//! Per-statement execution counters, recorded on the statement execution path (`super::statements::Conn`) and
//! read by the monitor's snapshots. Lock-free; a leaf module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds) of the statement latency histogram buckets; a last, unbounded bucket follows.
pub const LATENCY_BUCKETS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000];

#[derive(Debug, Default)]
struct StatementCounters {
    count: AtomicU64,
    errors: AtomicU64,
    total_nanos: AtomicU64,
    max_nanos: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// Per-statement execution counters; lock-free, indexed by statement id.
#[derive(Debug)]
pub struct QueryMetrics {
    names: Vec<&'static str>,
    per: Vec<StatementCounters>,
    slow: Duration,
}

/// Counts and latency of one statement (cumulative since start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementStats {
    /// Statement name.
    pub name: &'static str,
    /// Executions (successful or not).
    pub count: u64,
    /// Executions or preparations that failed.
    pub errors: u64,
    /// Total execution time.
    pub total: Duration,
    /// Slowest execution.
    pub max: Duration,
    /// Executions per latency bucket (NOT cumulative), bounds in [`LATENCY_BUCKETS_US`] plus a final +Inf bucket.
    pub buckets: Vec<u64>,
}

impl QueryMetrics {
    /// Counters for `names` (the registry's statements, in id order); executions at or over `slow` are logged.
    pub fn new(names: Vec<&'static str>, slow: Duration) -> QueryMetrics {
        let per = names.iter().map(|_| StatementCounters::default()).collect();
        QueryMetrics { names, per, slow }
    }

    /// The slow-query threshold.
    pub fn slow_threshold(&self) -> Duration {
        self.slow
    }

    /// Records one execution of statement `id`.
    pub fn record(&self, id: usize, took: Duration, ok: bool) {
        let Some(c) = self.per.get(id) else { return };
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        c.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        let micros = nanos / 1_000;
        let bucket = LATENCY_BUCKETS_US.iter().position(|&b| micros <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Stats of every statement that ran at least once.
    pub fn snapshot(&self) -> Vec<StatementStats> {
        self.names
            .iter()
            .zip(&self.per)
            .filter(|(_, c)| c.count.load(Ordering::Relaxed) > 0)
            .map(|(&name, c)| StatementStats {
                name,
                count: c.count.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                total: Duration::from_nanos(c.total_nanos.load(Ordering::Relaxed)),
                max: Duration::from_nanos(c.max_nanos.load(Ordering::Relaxed)),
                buckets: c.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            })
            .collect()
    }
}
