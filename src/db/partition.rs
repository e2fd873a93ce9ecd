//! `PartitionManager`: daily range partitions (UTC days) of the append-heavy event logs (`combat_log`,
//! `chat_log`, declared `PARTITION BY RANGE (at)` in migrations/0003).
//!
//! Each maintenance run, per database and table: creates the partitions of yesterday, today and
//! `days_ahead` days ahead (`CREATE TABLE IF NOT EXISTS <table>_pYYYYMMDD PARTITION OF <table> FOR VALUES FROM
//! (day) TO (day + 1)`), then detaches and drops partitions whose day is more than `retention_days` before
//! today. It is idempotent, runs at start and periodically from the DbMonitor thread, and takes a transaction-level
//! advisory lock so two zones maintaining the same database do not race.
//!
//! Invariant: only tables named `<table>_pYYYYMMDD` are managed (recognised and dropped); any other child of a
//! log table is left alone. Rows whose day has no partition are refused by PostgreSQL (there is deliberately no
//! DEFAULT partition), so `days_ahead` must cover the longest the monitor can be stopped.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, GenericClient};

use super::error::DbError;

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// Today in UTC.
    pub fn today() -> Day {
        Day::from_system_time(SystemTime::now())
    }

    /// The UTC day of `t`.
    pub fn from_system_time(t: SystemTime) -> Day {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Day(i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX)),
            Err(e) => Day(-(i64::try_from(e.duration().as_secs().div_ceil(86_400)).unwrap_or(i64::MAX))),
        }
    }

    /// The day of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Day {
        let y = if month <= 2 { year - 1 } else { year };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day(era * 146_097 + doe - 719_468)
    }

    /// (year, month, day) of this day (`civil_from_days`).
    pub fn ymd(self) -> (i64, u32, u32) {
        let z = self.0 + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// `days` later (earlier when negative).
    pub fn plus(self, days: i64) -> Day {
        Day(self.0 + days)
    }

    /// `YYYYMMDD`, the partition name suffix.
    pub fn compact(self) -> String {
        let (y, m, d) = self.ymd();
        format!("{y:04}{m:02}{d:02}")
    }

    /// Parses `YYYYMMDD`.
    pub fn parse_compact(s: &str) -> Option<Day> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (y, m, d) = (s[0..4].parse().ok()?, s[4..6].parse().ok()?, s[6..8].parse().ok()?);
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        let day = Day::from_ymd(y, m, d);
        (day.ymd() == (y, m, d)).then_some(day)
    }
}

impl fmt::Display for Day {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPolicy {
    /// Partitioned parents (`combat_log`, `chat_log`).
    pub tables: Vec<String>,
    /// Days created ahead of today.
    pub days_ahead: u32,
    /// Days kept before today; older partitions are detached and dropped.
    pub retention_days: u32,
}

impl Default for PartitionPolicy {
    fn default() -> Self {
        PartitionPolicy { tables: vec!["combat_log".into(), "chat_log".into()], days_ahead: 7, retention_days: 30 }
    }
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Partitions created (`table_pYYYYMMDD`).
    pub created: Vec<String>,
    /// Partitions detached and dropped.
    pub dropped: Vec<String>,
}

/// A managed partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Table name.
    pub name: String,
    /// The day it holds.
    pub day: Day,
}

/// Creates and retires the daily log partitions.
#[derive(Debug, Clone)]
pub struct PartitionManager {
    policy: PartitionPolicy,
}

/// Advisory lock key of partition maintenance ("realmprt").
const PARTITION_LOCK_KEY: i64 = 0x7265_616c_6d70_7274;

impl PartitionManager {
    /// A manager applying `policy`.
    pub fn new(policy: PartitionPolicy) -> Result<PartitionManager, DbError> {
        for t in &policy.tables {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(DbError::Config { key: "partition table", reason: format!("{t:?} is not a plain name") });
            }
        }
        Ok(PartitionManager { policy })
    }

    /// The policy.
    pub fn policy(&self) -> &PartitionPolicy {
        &self.policy
    }

    /// Name of `table`'s partition for `day`.
    pub fn partition_name(table: &str, day: Day) -> String {
        format!("{table}_p{}", day.compact())
    }

    /// Managed partitions of `table` (in the schema `table` resolves to), oldest first.
    pub fn list(&self, client: &mut impl GenericClient, table: &str, target: &str) -> Result<Vec<Partition>, DbError> {
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = $1::text::regclass",
                &[&table],
            )
            .map_err(|source| admin(format!("list partitions of {table}"), target, source))?;
        let prefix = format!("{table}_p");
        let mut out: Vec<Partition> = rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|name| {
                let day = Day::parse_compact(name.strip_prefix(&prefix)?)?;
                Some(Partition { name, day })
            })
            .collect();
        out.sort_by_key(|p| p.day);
        Ok(out)
    }

    /// One maintenance run on one database, as of `today`. Idempotent.
    pub fn maintain(&self, client: &mut Client, today: Day, target: &str) -> Result<PartitionReport, DbError> {
        let mut report = PartitionReport::default();
        let mut tx = client.transaction().map_err(|source| admin("begin".into(), target, source))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK_KEY])
            .map_err(|source| admin("partition lock".into(), target, source))?;
        for table in &self.policy.tables {
            let existing = self.list(&mut tx, table, target)?;
            for offset in -1..=i64::from(self.policy.days_ahead) {
                let day = today.plus(offset);
                let name = Self::partition_name(table, day);
                if existing.iter().any(|p| p.name == name) {
                    continue;
                }
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} \
                     FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                    next = day.plus(1)
                );
                tx.batch_execute(&sql).map_err(|source| admin(format!("create {name}"), target, source))?;
                report.created.push(name);
            }
            let oldest_kept = today.plus(-i64::from(self.policy.retention_days));
            for p in existing.iter().filter(|p| p.day < oldest_kept) {
                let sql = format!("ALTER TABLE {table} DETACH PARTITION {name}; DROP TABLE {name};", name = p.name);
                tx.batch_execute(&sql).map_err(|source| admin(format!("drop {}", p.name), target, source))?;
                report.dropped.push(p.name.clone());
            }
        }
        tx.commit().map_err(|source| admin("commit".into(), target, source))?;
        if !report.created.is_empty() || !report.dropped.is_empty() {
            log::info!("partitions on {target}: created {:?}, dropped {:?}", report.created, report.dropped);
        }
        Ok(report)
    }
}

fn admin(what: String, target: &str, source: postgres::Error) -> DbError {
    DbError::Admin { what, target: target.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_through_calendar_dates() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Day(0));
        assert_eq!(Day::from_ymd(2000, 3, 1).ymd(), (2000, 3, 1));
        assert_eq!(Day::from_ymd(2024, 2, 29).plus(1).ymd(), (2024, 3, 1));
        assert_eq!(Day::from_ymd(2023, 12, 31).plus(1).to_string(), "2024-01-01");
        for d in -1000..40_000 {
            let (y, m, dd) = Day(d).ymd();
            assert_eq!(Day::from_ymd(y, m, dd), Day(d));
        }
    }

    #[test]
    fn partition_suffixes_parse_back_and_reject_garbage() {
        let day = Day::from_ymd(2025, 7, 4);
        assert_eq!(PartitionManager::partition_name("chat_log", day), "chat_log_p20250704");
        assert_eq!(Day::parse_compact("20250704"), Some(day));
        for bad in ["2025074", "2025-07-04", "20251304", "20250230", "abcdefgh"] {
            assert_eq!(Day::parse_compact(bad), None, "{bad}");
        }
    }

    #[test]
    fn table_names_that_are_not_plain_identifiers_are_refused() {
        let policy = PartitionPolicy { tables: vec!["chat_log; drop table x".into()], ..PartitionPolicy::default() };
        assert!(matches!(PartitionManager::new(policy), Err(DbError::Config { .. })));
    }
}

/// Last partition maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// When it last ran.
    pub last_run: Option<SystemTime>,
    /// Partitions created / dropped by the last run, over every database.
    pub last_report: PartitionReport,
    /// Error of the last run, if it failed on some database.
    pub last_error: Option<String>,
}

/// Runs partition maintenance on the primary and every dedicated shard (the logs live on shards; the primary
/// carries the same schema), recording the outcome for snapshots.
pub(crate) fn maintain_all(inner: &super::Inner, today: Day) -> Result<PartitionReport, DbError> {
    let mut total = PartitionReport::default();
    let mut first_error = None;
    let pools: Vec<_> = std::iter::once(inner.pools.primary())
        .chain(inner.pools.shards().iter().filter(|_| inner.pools.has_dedicated_shards()))
        .collect();
    for pool in pools {
        let result =
            pool.checkout().and_then(|mut conn| inner.partitions.maintain(&mut conn.client, today, pool.name()));
        match result {
            Ok(report) => {
                total.created.extend(report.created.into_iter().map(|n| format!("{}:{n}", pool.name())));
                total.dropped.extend(report.dropped.into_iter().map(|n| format!("{}:{n}", pool.name())));
            }
            Err(e) => {
                log::warn!("partition maintenance on {} failed: {e}", pool.name());
                first_error.get_or_insert(e);
            }
        }
    }
    let mut status = inner.partition_status.lock();
    status.last_run = Some(SystemTime::now());
    status.last_report = total.clone();
    status.last_error = first_error.as_ref().map(ToString::to_string);
    drop(status);
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// The `realm-db-partitions` thread: partition maintenance every `partition_interval` (DDL on the primary and the
/// shards, apart from the monitor's health probes so a slow `CREATE TABLE` never delays them). Stopped and joined
/// on drop.
pub(crate) struct Maintainer {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maintainer {
    pub(crate) fn start(inner: std::sync::Arc<super::Inner>) -> Result<Maintainer, DbError> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("realm-db-partitions".into())
            .spawn(move || loop {
                match stopped.recv_timeout(inner.options.partition_interval) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        // Failures are logged and recorded for snapshots (the partition alert).
                        let _ = maintain_all(&inner, Day::today());
                    }
                    Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|source| DbError::Thread { name: "realm-db-partitions", source })?;
        Ok(Maintainer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
