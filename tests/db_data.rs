//! The data layer against the real PostgreSQL primary and the two shard databases: statement registry, accounts,
//! ownership claims and fenced saves, sharding, partitions, cache invalidation, pool stats and the monitor. Each
//! test runs in its own schema (on the primary and on both shards).

mod common;

use std::time::{Duration, Instant};

use realm::db::partition::{Day, PartitionManager};
use realm::db::testing::ScratchSchema;
use realm::db::{
    ChatLine, CombatEvent, Database, DbError, DbOptions, NewItem, PlayerSave, ReadConsistency, Role, Spawn,
};

struct Env {
    // Field order: the database (its pools) goes before the schema is dropped.
    db: Database,
    schema: ScratchSchema,
}

fn options() -> DbOptions {
    DbOptions { monitor_interval: Duration::from_millis(50), ..DbOptions::default() }
}

/// A migrated scratch schema on the primary and on both shards, and a Database over it.
fn env(tag: &str) -> Env {
    let url = common::pg_url();
    let shards = common::pg_shard_urls();
    let schema = ScratchSchema::create(&common::unique(tag), &url, &[], &shards).expect("scratch schema");
    let db = Database::connect_with(&schema.config(), options()).expect("connect");
    Env { db, schema }
}

fn spawn() -> Spawn {
    Spawn { zone: "starter-vale".into(), pos_x: 10.0, pos_y: 20.0, health: 100 }
}

fn save(player_id: u64, epoch: u64, level: i32) -> PlayerSave {
    PlayerSave {
        player_id,
        owner_epoch: epoch,
        zone: "starter-vale".into(),
        pos_x: 1.5,
        pos_y: 2.5,
        level,
        experience: i64::from(level) * 100,
        health: 90,
    }
}

fn count_rows(url: &str, table: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0)
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn every_registered_statement_prepares_against_the_migrated_schema() {
    let e = env("stmt_all");
    let n = e.db.prepare_all().expect("every statement must prepare against the migrated schema");
    let defs = e.db.registry().all();
    let shard_defs = defs.iter().filter(|d| d.target == realm::db::statements::Target::Shard).count();
    assert_eq!(n, defs.len() - shard_defs + shard_defs * e.db.shards().len());
    // Prepared once per connection, then served from that connection's cache.
    let mut c = e.db.primary().unwrap();
    let (_, def) = e.db.registry().lookup("ban_player").unwrap();
    let count_sql = format!("SELECT count(*) FROM pg_prepared_statements WHERE statement = $q${}$q$", def.sql);
    let server_copies = |c: &mut realm::db::statements::Conn<'_>| -> i64 {
        let msgs = c.client().simple_query(&count_sql).unwrap();
        msgs.iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap()
    };
    c.prepare("ban_player").unwrap();
    c.prepare("ban_player").unwrap();
    c.execute("ban_player", &[&-1i64, &"x", &None::<f64>]).unwrap();
    c.execute("ban_player", &[&-2i64, &"x", &None::<f64>]).unwrap();
    assert_eq!(server_copies(&mut c), 1, "one server-side statement per connection and name");
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn unknown_names_and_wrong_targets_are_typed_errors() {
    let e = env("stmt_errs");
    let mut primary = e.db.primary().unwrap();
    assert!(
        matches!(primary.execute("drop_all_tables", &[]), Err(DbError::UnknownStatement(n)) if n == "drop_all_tables")
    );
    let err = primary.query_opt("load_progress", &[&1i64]).unwrap_err();
    assert!(
        matches!(err, DbError::WrongTarget { statement: "load_progress", role: Role::Primary, .. }),
        "a shard statement on the primary pool is a routing bug: {err}"
    );
    let mut shard = e.db.shard(0).unwrap();
    assert!(matches!(shard.execute("reset_login_failures", &[&1i64]), Err(DbError::WrongTarget { .. })));
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn a_claim_bumps_the_epoch_and_fences_out_the_previous_owner() {
    let e = env("claim");
    let db = &e.db;
    let a = db.claim_player(42, "zone-a", &spawn()).unwrap();
    assert!(a.created);
    assert_eq!(a.epoch, 1);
    assert_eq!((a.progress.zone.as_str(), a.progress.health, a.progress.level), ("starter-vale", 100, 1));
    db.save_player(&save(42, a.epoch, 5)).unwrap();

    let b = db.claim_player(42, "zone-b", &spawn()).unwrap();
    assert!(!b.created);
    assert_eq!(b.epoch, 2);
    assert_eq!(b.progress.level, 5, "the claim returns the last saved state");
    assert_eq!(b.progress.owner_zone.as_deref(), Some("zone-b"));

    // Zone A is paused, wakes up and tries to save: fenced out, distinct error, nothing written.
    let err = db.save_player(&save(42, a.epoch, 99)).unwrap_err();
    assert!(matches!(err, DbError::OwnershipLost { player_id: 42, epoch: 1 }), "{err}");
    assert!(!err.is_transient(), "ownership loss must never be retried");
    assert!(matches!(db.release_player(42, a.epoch), Err(DbError::OwnershipLost { .. })));
    db.save_player(&save(42, b.epoch, 6)).unwrap();
    let p = db.load_progress(42).unwrap().unwrap();
    assert_eq!((p.level, p.owner_epoch), (6, 2));
    db.release_player(42, b.epoch).unwrap();
    db.progress_cache().invalidate(&42);
    assert_eq!(db.load_progress(42).unwrap().unwrap().owner_zone, None);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn a_batched_save_saves_owned_players_and_lists_fenced_out_ones_as_lost() {
    let e = env("batch");
    let db = &e.db;
    let ids: Vec<u64> = (1000..1060).collect();
    let epochs: Vec<u64> = ids.iter().map(|&id| db.claim_player(id, "zone-a", &spawn()).unwrap().epoch).collect();
    // Another zone took five of them.
    let taken: Vec<u64> = ids.iter().copied().step_by(12).collect();
    for &id in &taken {
        db.claim_player(id, "zone-b", &spawn()).unwrap();
    }
    let saves: Vec<PlayerSave> = ids.iter().zip(&epochs).map(|(&id, &ep)| save(id, ep, 7)).collect();
    let out = db.save_players(&saves).unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    let mut lost = out.lost.clone();
    lost.sort_unstable();
    assert_eq!(lost, taken);
    assert_eq!(out.saved.len(), ids.len() - taken.len());
    for &id in &ids {
        let p = db.load_progress(id).unwrap().unwrap();
        let expect = if taken.contains(&id) { 1 } else { 7 };
        assert_eq!(p.level, expect, "player {id}");
    }
    // Both shards took part (60 players spread over 2 shards).
    assert_eq!(db.shards().len(), 2);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn players_spread_across_both_shard_databases_and_each_row_is_where_the_manager_says() {
    let e = env("spread");
    let db = &e.db;
    let ids: Vec<u64> = (1..=300).collect();
    for &id in &ids {
        db.claim_player(id, "zone-a", &spawn()).unwrap();
    }
    let per_shard: Vec<i64> = e.schema.shards.iter().map(|u| count_rows(u, "player_progress")).collect();
    assert_eq!(per_shard.iter().sum::<i64>(), 300);
    for n in &per_shard {
        assert!(*n >= 100, "keys must spread over both shard databases: {per_shard:?}");
    }
    assert_eq!(count_rows(&e.schema.primary, "player_progress"), 0, "player data lives on shards, not the primary");
    for (i, url) in e.schema.shards.iter().enumerate() {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        for r in c.query("SELECT player_id FROM player_progress", &[]).unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(db.shards().shard_of(id as u64), i, "player {id} is on shard {i}");
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn accounts_sessions_lockouts_and_bans_round_trip() {
    let e = env("accounts");
    let db = &e.db;
    let id = db.create_account("Alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").unwrap();
    assert!(matches!(db.create_account("aLiCe", "x"), Err(DbError::UsernameTaken)));
    let acc = db.find_account("ALICE").unwrap().unwrap();
    assert_eq!((acc.id, acc.username.as_str(), acc.banned, acc.locked), (id, "Alice", false, false));
    assert_eq!(db.find_account("bob").unwrap(), None);

    for k in 1..=2 {
        let f = db.record_login_failure(id, 3, Duration::from_secs(300)).unwrap().unwrap();
        assert_eq!((f.failed_logins, f.locked_until), (k, None));
    }
    let f = db.record_login_failure(id, 3, Duration::from_secs(300)).unwrap().unwrap();
    assert!(f.locked_until.is_some(), "third failure locks");
    assert!(db.find_account("alice").unwrap().unwrap().locked);
    db.reset_login_failures(id).unwrap();
    let acc = db.find_account("alice").unwrap().unwrap();
    assert_eq!((acc.failed_logins, acc.locked), (0, false));

    let token_hash = [7u8; 32];
    let s = db.insert_session(id, &token_hash, Duration::from_secs(3600), Some("127.0.0.1"), Some("test")).unwrap();
    let found = db.find_session(&token_hash).unwrap().unwrap();
    assert_eq!((found.id, found.player_id, found.token_hash.as_slice()), (s.id, id, &token_hash[..]));
    assert_eq!(db.find_session(&[8u8; 32]).unwrap(), None);
    let expired = [9u8; 32];
    db.insert_session(id, &expired, Duration::ZERO, None, None).unwrap();
    assert_eq!(db.find_session(&expired).unwrap(), None, "expired sessions are not found");
    assert_eq!(db.delete_expired_sessions().unwrap(), 1);
    assert!(db.delete_session(&token_hash).unwrap());
    assert_eq!(db.find_session(&token_hash).unwrap(), None);

    assert!(db.ban_player(id, "botting", Some(Duration::from_secs(3600))).unwrap());
    let ban = db.ban_status(id, ReadConsistency::Primary).unwrap().unwrap();
    assert!(ban.banned && ban.reason.as_deref() == Some("botting") && ban.expires.is_some());
    assert!(db.find_account("alice").unwrap().unwrap().banned);
    assert_eq!(db.player_name(id, ReadConsistency::Eventual).unwrap().as_deref(), Some("Alice"));
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn items_get_unique_ids_are_fenced_and_duplicates_are_detected() {
    let e = env("items");
    let db = &e.db;
    let ids = db.allocate_item_ids(3).unwrap();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "ids are distinct: {ids:?}");
    let claim = db.claim_player(5, "zone-a", &spawn()).unwrap();
    let sword = NewItem { item_id: ids[0], item_kind: 17, quantity: 1 };
    db.insert_item(5, claim.epoch, &sword).unwrap();
    assert!(
        matches!(db.insert_item(5, claim.epoch, &sword), Err(DbError::DuplicateItem { item_id }) if item_id == ids[0])
    );
    let newer = db.claim_player(5, "zone-b", &spawn()).unwrap();
    let potion = NewItem { item_id: ids[1], item_kind: 3, quantity: 5 };
    assert!(matches!(db.insert_item(5, claim.epoch, &potion), Err(DbError::OwnershipLost { .. })));
    db.insert_item(5, newer.epoch, &potion).unwrap();
    let inv = db.load_inventory(5).unwrap();
    assert_eq!(
        inv.iter().map(|i| (i.item_id, i.item_kind, i.quantity)).collect::<Vec<_>>(),
        vec![(ids[0], 17, 1), (ids[1], 3, 5)]
    );
    let bad = NewItem { item_id: ids[2], item_kind: 1, quantity: 0 };
    assert!(matches!(db.insert_item(5, newer.epoch, &bad), Err(DbError::Query { statement: "insert_item", .. })));
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn saves_and_claims_invalidate_the_progress_cache() {
    let e = env("cache");
    let db = &e.db;
    let c = db.claim_player(77, "zone-a", &spawn()).unwrap();
    assert_eq!(db.load_progress(77).unwrap().unwrap().level, 1);
    assert_eq!(db.load_progress(77).unwrap().unwrap().level, 1);
    let stats = db.progress_cache().stats();
    assert_eq!((stats.hits, stats.misses, stats.len), (1, 1, 1), "second load is served from the cache");
    db.save_player(&save(77, c.epoch, 9)).unwrap();
    assert_eq!(db.progress_cache().stats().invalidations, 1);
    assert_eq!(db.load_progress(77).unwrap().unwrap().level, 9, "a save must not leave a stale cached row");
    db.save_players(&[save(77, c.epoch, 10)]).unwrap();
    assert_eq!(db.load_progress(77).unwrap().unwrap().level, 10);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn partitions_are_created_ahead_and_expired_ones_are_dropped() {
    let e = env("parts");
    let db = &e.db;
    let today = Day::today();
    let policy = db.partitions().policy().clone();
    // Connect already ran maintenance on the primary and both shards.
    for url in std::iter::once(&e.schema.primary).chain(&e.schema.shards) {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        for table in &policy.tables {
            let parts = db.partitions().list(&mut c, table, "test").unwrap();
            let days: Vec<Day> = parts.iter().map(|p| p.day).collect();
            let expected: Vec<Day> = (-1..=i64::from(policy.days_ahead)).map(|d| today.plus(d)).collect();
            assert_eq!(days, expected, "{table}");
        }
    }
    // Log rows land in today's partition.
    let events: Vec<CombatEvent> =
        (1..=20).map(|a| CombatEvent { actor: a, target: Some(a + 1), kind: 1, amount: 10 }).collect();
    assert_eq!(db.log_combat("starter-vale", &events).unwrap(), 20);
    let chat = vec![ChatLine { actor: 3, target: None, channel: "zone".into(), text: "hello".into() }];
    assert_eq!(db.log_chat("starter-vale", &chat).unwrap(), 1);
    let today_part = PartitionManager::partition_name("combat_log", today);
    let in_today: i64 = e.schema.shards.iter().map(|u| count_rows(u, &today_part)).sum();
    assert_eq!(in_today, 20);

    // An expired partition (older than retention) is detached and dropped; a recent one stays.
    let old = today.plus(-i64::from(policy.retention_days) - 5);
    let old_name = PartitionManager::partition_name("chat_log", old);
    let mut shard0 = postgres::Client::connect(&e.schema.shards[0], postgres::NoTls).unwrap();
    shard0
        .batch_execute(&format!(
            "CREATE TABLE {old_name} PARTITION OF chat_log FOR VALUES FROM ('{old} 00:00:00+00') TO ('{} 00:00:00+00')",
            old.plus(1)
        ))
        .unwrap();
    let report = db.maintain_partitions(today).unwrap();
    assert_eq!(report.dropped, vec![format!("shard-0:{old_name}")]);
    assert!(report.created.is_empty(), "{:?}", report.created);
    let exists: bool = shard0.query_one("SELECT to_regclass($1) IS NOT NULL", &[&old_name]).unwrap().get(0);
    assert!(!exists, "the expired partition must be dropped");
    let again = db.maintain_partitions(today).unwrap();
    assert!(again.created.is_empty() && again.dropped.is_empty(), "maintenance is idempotent");
    // A day later, one more partition is created ahead.
    let next = db.maintain_partitions(today.plus(1)).unwrap();
    assert_eq!(next.created.len(), 3 * policy.tables.len(), "{:?}", next.created);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn the_monitor_reports_pools_statement_latency_and_no_alerts_when_healthy() {
    let e = env("monitor");
    let db = &e.db;
    for id in 1..=10 {
        db.claim_player(id, "zone-a", &spawn()).unwrap();
    }
    let _ = db.primary().unwrap().execute("create_account", &[&"dup", &"h"]);
    let _ = db.primary().unwrap().execute("create_account", &[&"dup", &"h"]);
    let cycles = db.snapshot().cycles;
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.snapshot().cycles < cycles + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let snap = db.snapshot();
    assert!(snap.cycles >= cycles + 2, "the realm-db-monitor thread runs in the background");
    let names: Vec<&str> = snap.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["primary", "shard-0", "shard-1"]);
    assert!(snap.pools.iter().all(|p| p.up && p.latency.is_some()), "{:?}", snap.pools);
    let claim = snap.statements.iter().find(|s| s.name == "claim_player").unwrap();
    assert_eq!(claim.count, 10);
    assert_eq!(claim.buckets.iter().sum::<u64>(), 10);
    let create = snap.statements.iter().find(|s| s.name == "create_account").unwrap();
    assert_eq!((create.count, create.errors), (2, 1), "the duplicate insert is counted as an error");
    assert!(!snap.alerts.any(), "{:?}", snap.alerts);
    assert!(snap.partitions.last_run.is_some());
    // The background threads carry their stable names (top -H, perf).
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok()).collect())
        .unwrap_or_default();
    for expected in ["realm-db-monitor", "realm-cache-evic", "realm-db-pool-0"] {
        // comm is truncated to 15 bytes.
        assert!(names.iter().any(|n| n.trim() == &expected[..expected.len().min(15)]), "{expected} not in {names:?}");
    }
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn an_exhausted_pool_times_out_counts_it_and_raises_the_alert() {
    let url = common::pg_url();
    let schema = ScratchSchema::create(&common::unique("exhaust"), &url, &[], &[]).unwrap();
    let mut config = schema.config();
    config.database.pool_size = 2;
    config.database.connection_timeout_ms = 200;
    let db = Database::connect_with(&config, DbOptions { monitor_interval: Duration::from_secs(3600), ..options() })
        .unwrap();
    let held = (db.primary().unwrap(), db.primary().unwrap());
    let started = Instant::now();
    let err = db.primary().unwrap_err();
    assert!(matches!(err, DbError::Checkout { ref pool, .. } if pool == "primary"), "{err}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(2), "the wait is bounded by connection_timeout_ms");
    let stats = db.pools().primary().stats();
    assert_eq!((stats.in_use, stats.max_size), (2, 2));
    assert!(stats.timeouts >= 1 && stats.waits >= 1, "{stats:?}");
    db.refresh_health();
    assert_eq!(db.snapshot().alerts.pools_exhausted, vec!["primary".to_owned()]);
    drop(held);
    db.refresh_health();
    db.refresh_health();
    assert!(db.snapshot().alerts.pools_exhausted.is_empty());
    drop(db);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn the_database_is_the_worker_context_and_jobs_get_typed_results_back() {
    use realm::queue::{self, Pop};
    use realm::worker::WorkerPool;
    use std::sync::Arc;

    let e = env("worker");
    let Env { db, schema } = e;
    let (tx, mut rx) = queue::channel::<Result<u64, String>>();
    let (pool, jobs) = WorkerPool::start(2, 16, Arc::new(db), tx).unwrap();
    // What the simulation does on login: claim on a worker, get the epoch back as an event.
    for id in [11u64, 12, 13] {
        jobs.submit("claim", move |db: &Database| {
            Some(db.claim_player(id, "zone-a", &spawn()).map(|c| c.epoch).map_err(|e| e.to_string()))
        })
        .unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 && Instant::now() < deadline {
        match rx.pop() {
            Pop::Item(r) => got.push(r),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    assert_eq!(got, vec![Ok(1), Ok(1), Ok(1)]);
    drop(jobs);
    pool.join();
    drop(schema);
}

#[test]
#[ignore = "needs PostgreSQL (primary and shards): run scripts/test.sh"]
fn postgres_backends_honour_the_account_and_player_store_contract() {
    use realm::db::store::{PgAccounts, PgPlayers};
    use std::sync::Arc;

    let e = env("contract");
    let Env { db, schema } = e;
    let db = Arc::new(db);
    realm::account::contract::accounts(&PgAccounts::new(Arc::clone(&db)), "carol").unwrap();
    realm::account::contract::players(&PgPlayers::new(Arc::clone(&db), 100), 7).unwrap();
    realm::account::contract::players(&PgPlayers::new(Arc::clone(&db), 100), 8).unwrap();
    drop(db);
    drop(schema);
}
