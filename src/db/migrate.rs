//! Schema migrations: the ordered SQL files of `migrations/` (embedded in the binary at build time), applied to the
//! primary and to every shard (one schema everywhere; accounts are authoritative on the primary, player data on
//! the shards).
//!
//! Applying: take a session advisory lock (two zones starting at once wait for each other instead of racing),
//! create `schema_migrations` if needed, then for each file in order: if it is recorded, compare its SHA-256 with
//! the recorded one and refuse ([`DbError::MigrationChanged`]) when it differs; otherwise run the file and record
//! it in ONE transaction, so a failing file leaves nothing behind. Running twice applies nothing the second time.
//!
//! Invariant: an applied migration is never edited; schema changes are new files with a higher number. (Files must
//! therefore also be transactional: no `CREATE INDEX CONCURRENTLY`.) Line endings are normalised before hashing,
//! so a CRLF checkout does not look like an edit.

use std::fmt::Write as _;
use std::path::Path;

use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

use super::error::DbError;
use crate::config::Config;

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// File stem, e.g. `0001_accounts`; applied in lexical order.
    pub version: String,
    /// The SQL.
    pub sql: String,
}

impl Migration {
    /// A migration from its version and SQL.
    pub fn new(version: impl Into<String>, sql: impl Into<String>) -> Migration {
        Migration { version: version.into(), sql: sql.into() }
    }

    /// Hex SHA-256 of the SQL with line endings normalised to `\n`.
    pub fn checksum(&self) -> String {
        let normalised = self.sql.replace("\r\n", "\n");
        let digest = Sha256::digest(normalised.as_bytes());
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// The files of `migrations/`, embedded at build time. A unit test checks this list against the directory, so a
/// new file that is not added here fails the build.
const EMBEDDED: &[(&str, &str)] = &[
    ("0001_accounts", include_str!("../../migrations/0001_accounts.sql")),
    ("0002_player_state", include_str!("../../migrations/0002_player_state.sql")),
    ("0003_event_logs", include_str!("../../migrations/0003_event_logs.sql")),
];

/// The server's migrations, in order.
pub fn embedded() -> Vec<Migration> {
    EMBEDDED.iter().map(|(v, sql)| Migration::new(*v, *sql)).collect()
}

/// Reads every `*.sql` file of `dir`, ordered by name.
pub fn from_dir(dir: &Path) -> Result<Vec<Migration>, DbError> {
    let io = |source| DbError::MigrationFiles { path: dir.display().to_string(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let Some(version) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let sql = std::fs::read_to_string(&path)
            .map_err(|source| DbError::MigrationFiles { path: path.display().to_string(), source })?;
        out.push(Migration { version, sql });
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

/// What applying did to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Database label (`primary`, `shard-0`).
    pub target: String,
    /// Versions applied by this run.
    pub applied: Vec<String>,
    /// Versions that were already applied (and unchanged).
    pub already_applied: Vec<String>,
}

/// Advisory lock key of migrations ("realmmig").
const MIGRATION_LOCK_KEY: i64 = 0x7265_616c_6d6d_6967;

/// Applies `migrations` on `client` (in whatever schema its `search_path` selects). Safe to run concurrently and
/// repeatedly.
pub fn apply(client: &mut Client, migrations: &[Migration], target: &str) -> Result<MigrationReport, DbError> {
    let admin = |what: &str, source: postgres::Error| DbError::Admin {
        what: what.to_owned(),
        target: target.to_owned(),
        source,
    };
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).map_err(|e| admin("migration lock", e))?;
    let result = apply_locked(client, migrations, target);
    // Released explicitly (the lock is per session and the client may live on); an unlock failure means the
    // session is gone, which releases it too.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]);
    result
}

fn apply_locked(client: &mut Client, migrations: &[Migration], target: &str) -> Result<MigrationReport, DbError> {
    let admin = |what: &str, source: postgres::Error| DbError::Admin {
        what: what.to_owned(),
        target: target.to_owned(),
        source,
    };
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    TEXT PRIMARY KEY,
                 checksum   TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .map_err(|e| admin("create schema_migrations", e))?;
    let rows = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .map_err(|e| admin("read schema_migrations", e))?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in rows {
        let version: String = row.try_get(0).map_err(|e| admin("read schema_migrations", e))?;
        let checksum: String = row.try_get(1).map_err(|e| admin("read schema_migrations", e))?;
        recorded.push((version, checksum));
    }
    let mut report = MigrationReport { target: target.to_owned(), applied: Vec::new(), already_applied: Vec::new() };
    for m in migrations {
        let checksum = m.checksum();
        if let Some((_, applied)) = recorded.iter().find(|(v, _)| *v == m.version) {
            if *applied != checksum {
                return Err(DbError::MigrationChanged {
                    version: m.version.clone(),
                    target: target.to_owned(),
                    applied: applied.clone(),
                    file: checksum,
                });
            }
            report.already_applied.push(m.version.clone());
            continue;
        }
        let failed = |source| DbError::Migration { version: m.version.clone(), target: target.to_owned(), source };
        let mut tx = client.transaction().map_err(failed)?;
        tx.batch_execute(&m.sql).map_err(failed)?;
        tx.execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", &[&m.version, &checksum])
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        log::info!("migration {} applied on {target}", m.version);
        report.applied.push(m.version.clone());
    }
    Ok(report)
}

/// Connects to `url` and applies `migrations`.
pub fn apply_url(url: &str, migrations: &[Migration], target: &str) -> Result<MigrationReport, DbError> {
    let mut client = Client::connect(url, NoTls).map_err(|source| DbError::Admin {
        what: "connect".into(),
        target: target.to_owned(),
        source,
    })?;
    apply(&mut client, migrations, target)
}

/// Applies the embedded migrations to the primary and every shard of `config`. The entry point for
/// `database.migrate_on_start` (the facade calls it from [`super::Database::connect`]).
pub fn migrate_all(config: &Config) -> Result<Vec<MigrationReport>, DbError> {
    let primary = config.primary_url().ok_or(DbError::NotConfigured)?;
    let migrations = embedded();
    let mut reports = vec![apply_url(&primary, &migrations, "primary")?];
    for (i, url) in config.database.shard_urls.iter().enumerate() {
        reports.push(apply_url(url, &migrations, &format!("shard-{i}"))?);
    }
    Ok(reports)
}

/// `realm-server migrate`: applies everything and returns a human report.
pub fn run_cli(config: &Config) -> Result<String, DbError> {
    let reports = migrate_all(config)?;
    let mut out = String::new();
    for r in &reports {
        let _ = writeln!(
            out,
            "{}: {} applied{}, {} already applied",
            r.target,
            r.applied.len(),
            if r.applied.is_empty() { String::new() } else { format!(" ({})", r.applied.join(", ")) },
            r.already_applied.len()
        );
    }
    let total: usize = reports.iter().map(|r| r.applied.len()).sum();
    let _ = write!(out, "migrations up to date on {} database(s); {total} applied by this run", reports.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_migrations_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let on_disk = from_dir(&dir).expect("migrations/ is readable");
        assert_eq!(embedded(), on_disk, "add every migrations/*.sql file to EMBEDDED, in order");
    }

    #[test]
    fn versions_are_strictly_ordered() {
        let m = embedded();
        assert!(m.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn checksum_ignores_line_endings_but_not_content() {
        let a = Migration::new("1", "CREATE TABLE t (x int);\nSELECT 1;\n");
        let b = Migration::new("1", "CREATE TABLE t (x int);\r\nSELECT 1;\r\n");
        let c = Migration::new("1", "CREATE TABLE t (x bigint);\nSELECT 1;\n");
        assert_eq!(a.checksum(), b.checksum());
        assert_ne!(a.checksum(), c.checksum());
        assert_eq!(a.checksum().len(), 64);
    }

    #[test]
    fn no_database_configured_is_a_typed_error() {
        assert!(matches!(run_cli(&Config::default()), Err(DbError::NotConfigured)));
    }
}
