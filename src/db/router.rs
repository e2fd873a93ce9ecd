//! `ReplicaRouter`: picks where a read runs. Reads go round-robin over healthy replicas; a replica that is down,
//! not in recovery (promoted), or lagging more than `database.max_replica_lag_ms` is skipped; with none healthy
//! the primary serves the read. Writes, and reads that must see this process's own writes, go to the primary.
//!
//! Health is written only by the [`super::monitor::DbMonitor`] (background, every `monitor_interval`) and read
//! here with relaxed atomics, so routing costs the caller no query. The one exception is a replica that fails its
//! checkout: the caller falls back to the primary at once and marks the replica down until the next probe.
//!
//! Lag: a replica whose received WAL equals its replayed WAL (`pg_last_wal_receive_lsn() =
//! pg_last_wal_replay_lsn()`) is caught up, lag 0, however long ago the last transaction was (an idle primary
//! produces no WAL, so `now() - pg_last_xact_replay_timestamp()` alone would call an idle replica "lagging").
//! Otherwise lag is `now() - pg_last_xact_replay_timestamp()`, which can overstate the lag right after a long
//! idle period; that errs on the safe side (reads briefly go to the primary).
//!
//! Read-your-writes: [`ReadConsistency::Primary`] always reads the primary; [`ReadConsistency::AtLeast`] takes the
//! primary WAL position after a write (see [`super::Database::write_marker`]) and only uses a replica whose
//! replayed position, as last probed, is at or past it. Probed positions only grow, so this never routes a read
//! to a replica that has not replayed the write.
//!
//! Invariant: nothing on the caller's path blocks on a health probe; the router never returns a replica whose last
//! probe failed or found it lagging.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::types::PgLsn;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Any healthy replica (within `database.max_replica_lag_ms`), else the primary.
    Eventual,
    /// Only a replica that has replayed at least this primary WAL position (read-your-writes), else the primary.
    AtLeast(WriteMarker),
    /// The primary (read-your-writes without a marker, or reads that feed a write).
    Primary,
}

/// A primary WAL position taken after a write: reads with [`ReadConsistency::AtLeast`] see that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteMarker(pub u64);

impl From<PgLsn> for WriteMarker {
    fn from(lsn: PgLsn) -> Self {
        WriteMarker(u64::from(lsn))
    }
}

/// What one probe of a replica found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProbe {
    /// `pg_is_in_recovery()`: false means the server was promoted and is no longer a replica.
    pub in_recovery: bool,
    /// Received WAL = replayed WAL.
    pub caught_up: bool,
    /// Replay lag; `None` = unknown (nothing replayed since start while WAL is pending): treated as too much.
    pub lag: Option<Duration>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<u64>,
}

/// The SQL of a replica probe; one round trip. Columns: in_recovery, caught_up, lag_ms (NULL = unknown),
/// replay_lsn.
pub const REPLICA_PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     COALESCE(pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), FALSE), \
     CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
          ELSE (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::float8 END, \
     pg_last_wal_replay_lsn()";

const UNKNOWN: u64 = u64::MAX;

/// The router's view of one replica.
#[derive(Debug)]
struct ReplicaState {
    up: AtomicBool,
    in_recovery: AtomicBool,
    lag_ms: AtomicU64,
    replay_lsn: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for ReplicaState {
    fn default() -> Self {
        // Unknown until the first probe: not routable.
        ReplicaState {
            up: AtomicBool::new(false),
            in_recovery: AtomicBool::new(false),
            lag_ms: AtomicU64::new(UNKNOWN),
            replay_lsn: AtomicU64::new(0),
            last_error: Mutex::new(Some("not probed yet".into())),
        }
    }
}

/// A replica's routing status, for snapshots and alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Replica index (pool `replica-i`).
    pub index: usize,
    /// Last probe succeeded.
    pub up: bool,
    /// Last probe found it in recovery (a real replica).
    pub in_recovery: bool,
    /// Last measured lag; `None` = unknown.
    pub lag: Option<Duration>,
    /// Lag over `database.max_replica_lag_ms` (or unknown while WAL is pending).
    pub lagging: bool,
    /// Routable now.
    pub healthy: bool,
    /// Last replayed WAL position seen.
    pub replay_lsn: u64,
    /// Why it is down, when it is.
    pub last_error: Option<String>,
}

/// Chooses a replica (or the primary) for each read.
#[derive(Debug)]
pub struct ReplicaRouter {
    replicas: Vec<ReplicaState>,
    next: AtomicUsize,
    max_lag: Duration,
}

impl ReplicaRouter {
    /// A router over `replicas` replicas, none routable until probed.
    pub fn new(replicas: usize, max_lag: Duration) -> ReplicaRouter {
        ReplicaRouter {
            replicas: (0..replicas).map(|_| ReplicaState::default()).collect(),
            next: AtomicUsize::new(0),
            max_lag,
        }
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// True when no replicas are configured.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The lag threshold.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// The replica to read from, round-robin over routable ones; `None` = read from the primary.
    pub fn pick(&self, consistency: ReadConsistency) -> Option<usize> {
        let min_lsn = match consistency {
            ReadConsistency::Primary => return None,
            ReadConsistency::Eventual => 0,
            ReadConsistency::AtLeast(WriteMarker(lsn)) => lsn,
        };
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| {
            let r = &self.replicas[i];
            self.routable(r) && r.replay_lsn.load(Ordering::Relaxed) >= min_lsn
        })
    }

    fn routable(&self, r: &ReplicaState) -> bool {
        let lag = r.lag_ms.load(Ordering::Relaxed);
        r.up.load(Ordering::Relaxed)
            && r.in_recovery.load(Ordering::Relaxed)
            && lag != UNKNOWN
            && u128::from(lag) <= self.max_lag.as_millis()
    }

    /// Records a successful probe of replica `i`.
    pub fn record_probe(&self, i: usize, probe: ReplicaProbe) {
        let Some(r) = self.replicas.get(i) else { return };
        let lag_ms = match (probe.caught_up, probe.lag) {
            (true, _) => 0,
            (false, Some(lag)) => u64::try_from(lag.as_millis()).unwrap_or(UNKNOWN - 1),
            (false, None) => UNKNOWN,
        };
        r.lag_ms.store(lag_ms, Ordering::Relaxed);
        if let Some(lsn) = probe.replay_lsn {
            // Positions only move forward; a restarted replica replays from its last checkpoint, never behind what
            // it had replayed, so keeping the max is safe.
            r.replay_lsn.fetch_max(lsn, Ordering::Relaxed);
        }
        r.in_recovery.store(probe.in_recovery, Ordering::Relaxed);
        *r.last_error.lock() = if probe.in_recovery { None } else { Some("not in recovery (promoted?)".into()) };
        r.up.store(true, Ordering::Relaxed);
    }

    /// Marks replica `i` down (failed probe or failed checkout) until the next successful probe.
    pub fn mark_down(&self, i: usize, why: &str) {
        let Some(r) = self.replicas.get(i) else { return };
        if r.up.swap(false, Ordering::Relaxed) {
            log::warn!("replica-{i} is down, reads go elsewhere: {why}");
        }
        *r.last_error.lock() = Some(why.to_owned());
    }

    /// Status of every replica.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let lag_ms = r.lag_ms.load(Ordering::Relaxed);
                let lag = (lag_ms != UNKNOWN).then(|| Duration::from_millis(lag_ms));
                let up = r.up.load(Ordering::Relaxed);
                ReplicaStatus {
                    index,
                    up,
                    in_recovery: r.in_recovery.load(Ordering::Relaxed),
                    lag,
                    lagging: up && !matches!(lag, Some(l) if l <= self.max_lag),
                    healthy: self.routable(r),
                    replay_lsn: r.replay_lsn.load(Ordering::Relaxed),
                    last_error: r.last_error.lock().clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(lag_ms: u64, lsn: u64) -> ReplicaProbe {
        ReplicaProbe {
            in_recovery: true,
            caught_up: lag_ms == 0,
            lag: Some(Duration::from_millis(lag_ms)),
            replay_lsn: Some(lsn),
        }
    }

    #[test]
    fn unprobed_replicas_are_not_routable() {
        let r = ReplicaRouter::new(2, Duration::from_secs(1));
        assert_eq!(r.pick(ReadConsistency::Eventual), None);
    }

    #[test]
    fn reads_round_robin_over_healthy_replicas() {
        let r = ReplicaRouter::new(3, Duration::from_secs(1));
        for i in 0..3 {
            r.record_probe(i, healthy(0, 10));
        }
        let picks: Vec<_> = (0..6).filter_map(|_| r.pick(ReadConsistency::Eventual)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn lagging_down_and_promoted_replicas_are_skipped() {
        let r = ReplicaRouter::new(3, Duration::from_millis(500));
        r.record_probe(0, healthy(900, 10));
        r.record_probe(1, healthy(0, 10));
        r.mark_down(1, "connection refused");
        r.record_probe(2, ReplicaProbe { in_recovery: false, ..healthy(0, 10) });
        assert_eq!(r.pick(ReadConsistency::Eventual), None);
        r.record_probe(0, healthy(100, 10));
        assert_eq!(r.pick(ReadConsistency::Eventual), Some(0));
        let s = r.status();
        assert!(s[0].healthy && !s[1].up && !s[2].healthy);
    }

    #[test]
    fn unknown_lag_with_pending_wal_counts_as_lagging() {
        let r = ReplicaRouter::new(1, Duration::from_secs(10));
        r.record_probe(0, ReplicaProbe { in_recovery: true, caught_up: false, lag: None, replay_lsn: None });
        assert_eq!(r.pick(ReadConsistency::Eventual), None);
        assert!(r.status()[0].lagging);
    }

    #[test]
    fn read_your_writes_goes_to_primary_or_to_a_replica_past_the_marker() {
        let r = ReplicaRouter::new(2, Duration::from_secs(1));
        r.record_probe(0, healthy(0, 100));
        r.record_probe(1, healthy(0, 200));
        assert_eq!(r.pick(ReadConsistency::Primary), None);
        for _ in 0..4 {
            assert_eq!(r.pick(ReadConsistency::AtLeast(WriteMarker(150))), Some(1));
        }
        assert_eq!(r.pick(ReadConsistency::AtLeast(WriteMarker(201))), None);
    }
}
