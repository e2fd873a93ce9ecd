//! `DbMonitor`: the `realm-db-monitor` background thread. Every `monitor_interval` it probes each pool (one round
//! trip, latency and errors), probes each replica's lag and feeds the [`super::router::ReplicaRouter`]. It only
//! reads: partition maintenance (DDL) has its own thread ([`super::partition`]). Per-statement query counts and latency histograms are
//! recorded by [`QueryMetrics`] on the statement execution path ([`super::statements::Conn`]); slow statements
//! are logged there. [`DbSnapshot`] gathers all of it, with the alert conditions as plain values for the metrics
//! module to export.
//!
//! Invariant: the monitor is the only writer of pool health and replica routing state (plus the router's
//! fail-fast `mark_down` on a failed replica checkout); callers only read it, so no probe ever runs on a caller's
//! path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::error::DbError;
use super::pool::{PoolStats, Role};
use super::router::{ReplicaProbe, ReplicaStatus, REPLICA_PROBE_SQL};
use super::Inner;

pub use super::query_stats::{QueryMetrics, StatementStats, LATENCY_BUCKETS_US};

/// Health of one pool as last probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolHealth {
    /// Pool name.
    pub name: String,
    /// Pool role.
    pub role: Role,
    /// Last probe succeeded (`false` before the first probe).
    pub up: bool,
    /// Round trip of the last successful probe.
    pub latency: Option<Duration>,
    /// Probes run.
    pub checks: u64,
    /// Probes failed.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Every connection in use at the last check, or checkouts timed out since the previous check.
    pub exhausted: bool,
    /// Last failure.
    pub last_error: Option<String>,
    /// Pool counters at the last check.
    pub stats: PoolStats,
}

/// Alert conditions, as values (the metrics module exports them as gauges; alert rules fire on them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbAlerts {
    /// The primary's last probe failed.
    pub primary_down: bool,
    /// Dedicated shards whose last probe failed.
    pub shards_down: Vec<String>,
    /// Replicas that are down.
    pub replicas_down: Vec<String>,
    /// Replicas lagging more than `database.max_replica_lag_ms`.
    pub replicas_lagging: Vec<String>,
    /// Pools with every connection in use (or checkout timeouts) at the last check.
    pub pools_exhausted: Vec<String>,
    /// The last partition maintenance failed.
    pub partition_maintenance_failed: bool,
}

impl DbAlerts {
    /// True when any condition holds.
    pub fn any(&self) -> bool {
        self.primary_down
            || !self.shards_down.is_empty()
            || !self.replicas_down.is_empty()
            || !self.replicas_lagging.is_empty()
            || !self.pools_exhausted.is_empty()
            || self.partition_maintenance_failed
    }
}

pub use super::partition::PartitionStatus;

/// Everything the monitor knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSnapshot {
    /// Per-pool health and counters.
    pub pools: Vec<PoolHealth>,
    /// Per-replica routing status (lag).
    pub replicas: Vec<ReplicaStatus>,
    /// Per-statement counts and latency.
    pub statements: Vec<StatementStats>,
    /// Partition maintenance.
    pub partitions: PartitionStatus,
    /// Alert conditions.
    pub alerts: DbAlerts,
    /// Monitor cycles completed.
    pub cycles: u64,
}

/// State written by the monitor, read by snapshots.
#[derive(Debug, Default)]
pub(crate) struct HealthBoard {
    pools: Mutex<Vec<(PoolHealth, u64)>>,
    cycles: AtomicU64,
}

/// Runs one probe cycle over every pool (and replica lag). Called by the monitor thread, and once at start.
pub(crate) fn check_once(inner: &Inner) {
    let probe_timeout = inner.options.probe_timeout;
    let mut results = Vec::new();
    for pool in inner.pools.all() {
        let stats = pool.stats();
        let mut health = PoolHealth {
            name: pool.name().to_owned(),
            role: pool.role(),
            up: false,
            latency: None,
            checks: 0,
            failures: 0,
            consecutive_failures: 0,
            exhausted: false,
            last_error: None,
            stats: stats.clone(),
        };
        let exhausted_now = pool.is_exhausted();
        let probe: Result<(Duration, Option<ReplicaProbe>), DbError> = if exhausted_now {
            // Every connection is busy: the pool is up (it is serving) but exhausted; do not queue behind the game.
            Err(DbError::Checkout { pool: pool.name().to_owned(), waited: Duration::ZERO, message: "exhausted".into() })
        } else {
            probe_pool(pool, probe_timeout)
        };
        match (&probe, pool.role()) {
            (Ok((latency, replica)), role) => {
                health.up = true;
                health.latency = Some(*latency);
                if let (Role::Replica(i), Some(r)) = (role, replica) {
                    inner.router.record_probe(i, *r);
                }
            }
            (Err(e), role) => {
                health.up = exhausted_now;
                health.last_error = Some(e.to_string());
                if let Role::Replica(i) = role {
                    if !exhausted_now {
                        inner.router.mark_down(i, &e.to_string());
                    }
                }
            }
        }
        health.exhausted = exhausted_now;
        results.push((health, stats.timeouts));
    }
    let mut board = inner.health.pools.lock();
    for (mut health, timeouts) in results {
        if let Some((prev, prev_timeouts)) = board.iter().find(|(h, _)| h.name == health.name) {
            health.checks = prev.checks + 1;
            health.failures = prev.failures + u64::from(!health.up);
            health.consecutive_failures = if health.up { 0 } else { prev.consecutive_failures.saturating_add(1) };
            health.exhausted |= timeouts > *prev_timeouts;
        } else {
            health.checks = 1;
            health.failures = u64::from(!health.up);
            health.consecutive_failures = u32::from(!health.up);
        }
        if !health.up && health.consecutive_failures == 1 {
            log::warn!("database pool {} is down: {}", health.name, health.last_error.as_deref().unwrap_or("?"));
        }
        match board.iter_mut().find(|(h, _)| h.name == health.name) {
            Some(slot) => *slot = (health, timeouts),
            None => board.push((health, timeouts)),
        }
    }
    drop(board);
    inner.health.cycles.fetch_add(1, Ordering::Relaxed);
}

fn probe_pool(pool: &super::pool::Pool, timeout: Duration) -> Result<(Duration, Option<ReplicaProbe>), DbError> {
    let mut conn = pool.checkout_timeout(timeout)?;
    let started = Instant::now();
    let admin = |source| DbError::Admin { what: "health probe".into(), target: pool.name().to_owned(), source };
    if let Role::Replica(_) = pool.role() {
        let row = conn.client.query_one(REPLICA_PROBE_SQL, &[]).map_err(admin)?;
        let latency = started.elapsed();
        let in_recovery: bool = row.try_get(0).map_err(admin)?;
        let caught_up: bool = row.try_get(1).map_err(admin)?;
        let lag_ms: Option<f64> = row.try_get(2).map_err(admin)?;
        let lsn: Option<postgres::types::PgLsn> = row.try_get(3).map_err(admin)?;
        let lag = lag_ms.filter(|ms| ms.is_finite()).map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        Ok((latency, Some(ReplicaProbe { in_recovery, caught_up, lag, replay_lsn: lsn.map(u64::from) })))
    } else {
        conn.client.simple_query("SELECT 1").map_err(admin)?;
        Ok((started.elapsed(), None))
    }
}

/// Builds a snapshot from the shared state.
pub(crate) fn snapshot(inner: &Inner) -> DbSnapshot {
    let mut pools: Vec<PoolHealth> = inner.health.pools.lock().iter().map(|(h, _)| h.clone()).collect();
    // Counters move between probes; report them as of now.
    for h in &mut pools {
        if let Some(p) = inner.pools.get(&h.name) {
            h.stats = p.stats();
        }
    }
    let replicas = inner.router.status();
    let partitions = inner.partition_status.lock().clone();
    let alerts = DbAlerts {
        primary_down: pools.iter().any(|h| h.role == Role::Primary && !h.up),
        shards_down: pools
            .iter()
            .filter(|h| matches!(h.role, Role::Shard(_)) && !h.up)
            .map(|h| h.name.clone())
            .collect(),
        replicas_down: replicas.iter().filter(|r| !r.up).map(|r| format!("replica-{}", r.index)).collect(),
        replicas_lagging: replicas.iter().filter(|r| r.lagging).map(|r| format!("replica-{}", r.index)).collect(),
        pools_exhausted: pools.iter().filter(|h| h.exhausted).map(|h| h.name.clone()).collect(),
        partition_maintenance_failed: partitions.last_error.is_some(),
    };
    DbSnapshot {
        pools,
        replicas,
        statements: inner.metrics.snapshot(),
        partitions,
        alerts,
        cycles: inner.health.cycles.load(Ordering::Relaxed),
    }
}

/// The background thread. Stopped (and joined) on drop.
pub struct DbMonitor {
    inner: Arc<Inner>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DbMonitor {
    /// Starts `realm-db-monitor` over `inner`.
    pub(crate) fn start(inner: Arc<Inner>) -> Result<DbMonitor, DbError> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let for_thread = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("realm-db-monitor".into())
            .spawn(move || monitor_loop(&for_thread, &stopped))
            .map_err(|source| DbError::Thread { name: "realm-db-monitor", source })?;
        Ok(DbMonitor { inner, stop: Some(stop), thread: Some(thread) })
    }

    /// Pool health, replica lag, statement stats, partition status and alert conditions, as of now.
    pub fn snapshot(&self) -> DbSnapshot {
        snapshot(&self.inner)
    }
}

impl std::fmt::Debug for DbMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbMonitor").field("running", &self.thread.is_some()).finish_non_exhaustive()
    }
}

impl Drop for DbMonitor {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread (Disconnected) at once, even mid-sleep.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn monitor_loop(inner: &Inner, stopped: &Receiver<()>) {
    loop {
        match stopped.recv_timeout(inner.options.monitor_interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        check_once(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_right_histogram_bucket() {
        let m = QueryMetrics::new(vec!["a", "b"], Duration::from_millis(100));
        m.record(0, Duration::from_micros(80), true);
        m.record(0, Duration::from_micros(700), true);
        m.record(0, Duration::from_secs(10), false);
        let s = m.snapshot();
        assert_eq!(s.len(), 1, "statements never run are left out");
        let a = &s[0];
        assert_eq!((a.name, a.count, a.errors), ("a", 3, 1));
        assert_eq!(a.buckets[0], 1);
        assert_eq!(a.buckets[3], 1, "700 us is in the <= 1 ms bucket");
        assert_eq!(*a.buckets.last().unwrap(), 1);
        assert_eq!(a.max, Duration::from_secs(10));
        m.record(99, Duration::ZERO, true); // unknown id: ignored, no panic
    }

    #[test]
    fn alerts_report_any_condition() {
        let mut a = DbAlerts::default();
        assert!(!a.any());
        a.replicas_lagging.push("replica-0".into());
        assert!(a.any());
    }
}
