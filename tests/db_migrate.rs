//! Migrations against the real PostgreSQL primary and shard databases, each test in its own schema.

mod common;

use realm::db::migrate::{self, Migration};
use realm::db::testing::ScratchSchema;
use realm::db::DbError;

fn scratch(tag: &str) -> ScratchSchema {
    let url = common::pg_url();
    ScratchSchema::create(&common::unique(tag), &url, &[], &[]).expect("create scratch schema")
}

fn relkind(schema: &ScratchSchema, table: &str) -> Option<String> {
    let mut c = schema.primary_client().unwrap();
    c.query_opt(
        "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
        &[&schema.name, &table],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn applying_twice_applies_everything_once_and_nothing_the_second_time() {
    let s = scratch("mig_twice");
    let all = migrate::embedded();
    let first = migrate::apply_url(&s.primary, &all, "primary").unwrap();
    assert_eq!(first.applied, all.iter().map(|m| m.version.clone()).collect::<Vec<_>>());
    assert!(first.already_applied.is_empty());
    let second = migrate::apply_url(&s.primary, &all, "primary").unwrap();
    assert!(second.applied.is_empty(), "second run applied {:?}", second.applied);
    assert_eq!(second.already_applied.len(), all.len());
    // The schema is there, in this schema only: plain tables, and the logs partitioned.
    for t in ["players", "sessions", "player_progress", "inventory_items", "schema_migrations"] {
        assert_eq!(relkind(&s, t).as_deref(), Some("r"), "{t}");
    }
    for t in ["combat_log", "chat_log"] {
        assert_eq!(relkind(&s, t).as_deref(), Some("p"), "{t} must be partitioned");
    }
    let mut c = s.primary_client().unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM schema_migrations", &[]).unwrap().get(0);
    assert_eq!(n as usize, all.len());
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn a_changed_applied_migration_is_refused_with_a_typed_error() {
    let s = scratch("mig_changed");
    let mut all = migrate::embedded();
    migrate::apply_url(&s.primary, &all, "primary").unwrap();
    all[1].sql.push_str("\n-- an edit after the fact\n");
    let err = migrate::apply_url(&s.primary, &all, "primary").unwrap_err();
    match err {
        DbError::MigrationChanged { version, applied, file, .. } => {
            assert_eq!(version, all[1].version);
            assert_ne!(applied, file);
        }
        other => panic!("expected MigrationChanged, got {other}"),
    }
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn a_failing_migration_is_rolled_back_and_not_recorded() {
    let s = scratch("mig_fail");
    let mut all = migrate::embedded();
    all.push(Migration::new("9999_broken", "CREATE TABLE half_done (x int); SELECT * FROM no_such_table;"));
    let err = migrate::apply_url(&s.primary, &all, "primary").unwrap_err();
    assert!(matches!(&err, DbError::Migration { version, .. } if version == "9999_broken"), "{err}");
    assert_eq!(relkind(&s, "half_done"), None, "the failed file's transaction must be rolled back");
    let mut c = s.primary_client().unwrap();
    let recorded: Vec<String> =
        c.query("SELECT version FROM schema_migrations ORDER BY 1", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(recorded.len(), all.len() - 1, "earlier files stay applied, the broken one is not recorded");
    assert!(!recorded.contains(&"9999_broken".to_owned()));
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn concurrent_migrators_apply_each_file_exactly_once() {
    let s = scratch("mig_race");
    let all = migrate::embedded();
    let reports: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (url, all) = (s.primary.clone(), all.clone());
                scope.spawn(move || migrate::apply_url(&url, &all, &format!("zone-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
    assert_eq!(applied, all.len(), "each file applied by exactly one of the racing migrators");
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn run_cli_migrates_the_primary_and_every_shard_and_reports_it() {
    let (url, shards) = (common::pg_url(), common::pg_shard_urls());
    let s = ScratchSchema::create(&common::unique("mig_cli"), &url, &[], &shards).unwrap();
    let config = s.config();
    let report = migrate::run_cli(&config).unwrap();
    let n = migrate::embedded().len();
    assert!(report.contains(&format!("primary: {n} applied")), "{report}");
    for i in 0..shards.len() {
        assert!(report.contains(&format!("shard-{i}: {n} applied")), "{report}");
    }
    let again = migrate::run_cli(&config).unwrap();
    assert!(again.contains("0 applied by this run"), "{again}");
    assert!(again.contains(&format!("primary: 0 applied, {n} already applied")), "{again}");
}
