//! Replica routing and pool recovery against the real streaming replica (127.0.0.1:5433). These tests pause,
//! stop and restart the REPLICA (never the primary, which other tests use) through `pg_ctl` as the postgres user,
//! so they run one at a time (a process-wide lock) and every disruption is undone by a guard, even on panic.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use realm::db::testing::ScratchSchema;
use realm::db::{Database, DbError, DbOptions, ReadConsistency, Role};

static SERIAL: Mutex<()> = Mutex::new(());

struct Replica {
    dir: String,
    url: String,
}

fn pg_ctl_path() -> PathBuf {
    if let Ok(dir) = std::env::var("REALM_TEST_PG_BINDIR") {
        return PathBuf::from(dir).join("pg_ctl");
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin/pg_ctl"))))
                .filter(|(_, p): &(u32, PathBuf)| p.exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| PathBuf::from("pg_ctl"))
}

impl Replica {
    fn from_env() -> Replica {
        let url = common::pg_replica_url();
        let dir = common::service("REALM_TEST_PG_REPLICA_DIR");
        Replica { dir, url }
    }

    /// Runs pg_ctl as the postgres user (directly when we are postgres).
    fn pg_ctl(&self, args: &[&str]) -> bool {
        let pg_ctl = pg_ctl_path();
        let log = format!("{}/server.log", self.dir);
        let mut full: Vec<&str> = vec!["-D", &self.dir, "-l", &log];
        full.extend_from_slice(args);
        let whoami =
            Command::new("id").arg("-un").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let output = if whoami.ok().as_deref() == Some("postgres") {
            Command::new(&pg_ctl).args(&full).output()
        } else {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&pg_ctl).args(&full).output()
        };
        output.map(|o| o.status.success()).unwrap_or(false)
    }

    fn is_running(&self) -> bool {
        self.pg_ctl(&["status"])
    }

    fn sql(&self, sql: &str) -> Result<(), postgres::Error> {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls)?;
        c.batch_execute(sql)
    }

    /// Stopped until the guard drops (which starts it again and waits until it accepts connections).
    fn stop(&self) -> RunningGuard<'_> {
        assert!(self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]), "pg_ctl stop failed");
        RunningGuard(self)
    }

    /// Replay paused until the guard drops.
    fn pause_replay(&self) -> ResumeGuard<'_> {
        self.sql("SELECT pg_wal_replay_pause()").expect("pause replay");
        ResumeGuard(self)
    }

    fn wait_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.sql("SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("replica did not come back within 60 s");
    }
}

struct RunningGuard<'a>(&'a Replica);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if !self.0.is_running() && !self.0.pg_ctl(&["-w", "-t", "60", "start"]) {
            eprintln!("WARNING: could not restart the replica; run scripts/services.sh");
        }
        let _ = self.0.sql("SELECT pg_wal_replay_resume()");
    }
}

struct ResumeGuard<'a>(&'a Replica);

impl Drop for ResumeGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.sql("SELECT pg_wal_replay_resume()") {
            eprintln!("WARNING: could not resume replay on the replica: {e}");
        }
    }
}

struct Env {
    db: Database,
    schema: ScratchSchema,
    replica: Replica,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn env(tag: &str, lag_ms: u64, monitor_interval: Duration) -> Env {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let url = common::pg_url();
    let replica = Replica::from_env();
    // A previous run that died mid-test may have left it stopped or paused.
    if !replica.is_running() {
        assert!(replica.pg_ctl(&["-w", "-t", "60", "start"]));
    }
    replica.wait_accepting();
    let _ = replica.sql("SELECT pg_wal_replay_resume()");
    let schema = ScratchSchema::create(&common::unique(tag), &url, std::slice::from_ref(&replica.url), &[]).unwrap();
    let mut config = schema.config();
    config.database.max_replica_lag_ms = lag_ms;
    config.database.connection_timeout_ms = 500;
    let options = DbOptions { monitor_interval, probe_timeout: Duration::from_millis(300), ..DbOptions::default() };
    let db = Database::connect_with(&config, options).unwrap();
    Env { db, schema, replica, _serial: serial }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting until {what}");
}

fn served_by_replica(db: &Database, consistency: ReadConsistency) -> bool {
    let mut c = db.read(consistency).unwrap();
    let in_recovery = c.is_in_recovery().unwrap();
    assert_eq!(in_recovery, matches!(c.role(), Role::Replica(_)), "role and server must agree");
    in_recovery
}

#[test]
#[ignore = "needs PostgreSQL with a streaming replica: run scripts/test.sh"]
fn a_read_routed_to_the_replica_sees_replicated_data_and_is_served_by_the_standby() {
    let e = env("rep_read", 5_000, Duration::from_millis(50));
    let db = &e.db;
    let id = db.create_account("replicated_user", "h").unwrap();
    let marker = db.write_marker().unwrap();
    // Until the monitor has seen the replica replay past our write, read-your-writes reads go to the primary.
    wait_until("the replica has replayed the write", Duration::from_secs(10), || {
        db.router().pick(ReadConsistency::AtLeast(marker)).is_some()
    });
    let mut c = db.read(ReadConsistency::AtLeast(marker)).unwrap();
    assert_eq!(c.role(), Role::Replica(0));
    assert!(c.is_in_recovery().unwrap(), "pg_is_in_recovery() on the chosen connection proves it is the standby");
    let row = c.query_opt("player_name_by_id", &[&(id as i64)]).unwrap().expect("replicated row");
    assert_eq!(row.get::<_, String>(0), "replicated_user");
    drop(c);
    assert_eq!(db.player_name(id, ReadConsistency::Eventual).unwrap().as_deref(), Some("replicated_user"));
    assert!(served_by_replica(db, ReadConsistency::Eventual));
    assert!(!served_by_replica(db, ReadConsistency::Primary), "read-your-writes goes to the primary");
    // Writes never go to a replica: a primary statement on a replica connection is refused.
    let mut r = db.read(ReadConsistency::Eventual).unwrap();
    assert!(matches!(r.execute("reset_login_failures", &[&(id as i64)]), Err(DbError::WrongTarget { .. })));
}

#[test]
#[ignore = "needs PostgreSQL with a streaming replica: run scripts/test.sh"]
fn a_replica_whose_replay_is_paused_past_the_lag_threshold_is_skipped_until_it_catches_up() {
    let e = env("rep_lag", 300, Duration::from_millis(50));
    let db = &e.db;
    wait_until("the replica is healthy", Duration::from_secs(10), || db.router().status()[0].healthy);
    {
        let _resume = e.replica.pause_replay();
        // Paused with nothing to replay is not lag (received = replayed); a write makes it fall behind.
        db.create_account("written_while_paused", "h").unwrap();
        wait_until("the monitor sees the lag", Duration::from_secs(10), || db.router().status()[0].lagging);
        let status = &db.router().status()[0];
        assert!(status.up && !status.healthy && !matches!(status.lag, Some(l) if l <= Duration::from_millis(300)));
        assert!(!served_by_replica(db, ReadConsistency::Eventual), "a lagging replica must be skipped");
        assert_eq!(db.snapshot().alerts.replicas_lagging, vec!["replica-0".to_owned()]);
        assert_eq!(
            db.player_name(db.find_account("written_while_paused").unwrap().unwrap().id, ReadConsistency::Eventual)
                .unwrap()
                .as_deref(),
            Some("written_while_paused"),
            "the fallback read sees the write the replica has not replayed"
        );
    }
    wait_until("the replica catches up", Duration::from_secs(10), || db.router().status()[0].healthy);
    assert!(served_by_replica(db, ReadConsistency::Eventual));
    assert!(db.snapshot().alerts.replicas_lagging.is_empty());
}

#[test]
#[ignore = "needs PostgreSQL with a streaming replica: run scripts/test.sh"]
fn a_stopped_replica_is_skipped_reads_fall_back_to_the_primary_and_its_pool_recovers() {
    let e = env("rep_stop", 5_000, Duration::from_millis(50));
    let db = &e.db;
    // A second process-like view whose monitor will not notice in time: the caller's checkout must fail fast.
    let mut cfg = e.schema.config();
    cfg.database.connection_timeout_ms = 500;
    let slow_monitor = Database::connect_with(
        &cfg,
        DbOptions { monitor_interval: Duration::from_secs(3600), migrate: Some(false), ..DbOptions::default() },
    )
    .unwrap();
    wait_until("the replica is healthy", Duration::from_secs(10), || db.router().status()[0].healthy);
    wait_until("the second view sees it healthy", Duration::from_secs(10), || {
        slow_monitor.refresh_health();
        slow_monitor.router().status()[0].healthy
    });
    let replica_pool = std::sync::Arc::clone(&db.pools().replicas()[0]);
    {
        let _restart = e.replica.stop();
        // Queries on the replica pool fail while it is down...
        assert!(matches!(db.pool_conn("replica-0"), Err(DbError::Checkout { .. })));
        // ...the caller that still thinks it healthy falls back to the primary within the replica checkout timeout...
        let started = Instant::now();
        assert!(!served_by_replica(&slow_monitor, ReadConsistency::Eventual));
        assert!(started.elapsed() < Duration::from_secs(3), "fallback took {:?}", started.elapsed());
        assert!(!slow_monitor.router().status()[0].up, "a failed checkout marks the replica down at once");
        // ...and the monitor marks it down for everyone.
        wait_until("the monitor marks the replica down", Duration::from_secs(10), || !db.router().status()[0].up);
        assert!(!served_by_replica(db, ReadConsistency::Eventual));
        let alerts = db.snapshot().alerts;
        assert_eq!(alerts.replicas_down, vec!["replica-0".to_owned()]);
        assert!(!alerts.primary_down);
        assert!(db.pools().replicas()[0].stats().connect_errors > 0);
    }
    // Started again by the guard: the same pool object serves queries again, no new pool, no restart.
    wait_until("the replica pool serves again", Duration::from_secs(20), || {
        db.pool_conn("replica-0").and_then(|mut c| c.is_in_recovery()).unwrap_or(false)
    });
    assert!(std::sync::Arc::ptr_eq(&replica_pool, &db.pools().replicas()[0]));
    wait_until("the router uses the replica again", Duration::from_secs(20), || db.router().status()[0].healthy);
    assert!(served_by_replica(db, ReadConsistency::Eventual));
}

#[test]
#[ignore = "needs PostgreSQL with a streaming replica: run scripts/test.sh"]
fn a_pool_survives_a_fast_restart_of_its_database_with_the_same_pool_object() {
    let e = env("rep_restart", 5_000, Duration::from_millis(50));
    let db = &e.db;
    let pool = std::sync::Arc::clone(&db.pools().replicas()[0]);
    let mut held = db.pool_conn("replica-0").unwrap();
    assert!(held.is_in_recovery().unwrap());
    let errors_before = pool.stats().query_errors;
    {
        let _ensure_running = RunningGuard(&e.replica);
        assert!(e.replica.pg_ctl(&["-m", "fast", "-w", "-t", "60", "restart"]), "pg_ctl restart failed");
    }
    // The connection that was open across the restart was terminated: its next query fails.
    let err = held.query_opt("player_name_by_id", &[&1i64]).unwrap_err();
    assert!(err.is_transient(), "a terminated connection is a transient error: {err}");
    drop(held); // broken: r2d2 discards it on check-in
    assert!(pool.stats().query_errors > errors_before);
    // New checkouts from the same pool succeed once the replica accepts connections again.
    wait_until("the restarted replica serves the same pool", Duration::from_secs(30), || {
        db.pool_conn("replica-0").and_then(|mut c| c.is_in_recovery()).unwrap_or(false)
    });
    assert!(std::sync::Arc::ptr_eq(&pool, &db.pools().replicas()[0]));
    let mut c = db.pool_conn("replica-0").unwrap();
    assert!(c.query_opt("player_name_by_id", &[&1i64]).unwrap().is_none());
}
