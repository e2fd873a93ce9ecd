//! The statement registry (the seeds' "query optimizer"): every SQL statement the server runs, by name, with the
//! database it must run on; and [`Conn`], the only way game code runs SQL.
//!
//! A statement is prepared once per connection, on first use, and cached on that connection (indexed by its
//! position in [`STATEMENTS`]); each execution is timed into the per-statement metrics that the
//! [`super::monitor::DbMonitor`] reports, and a slow one is logged. The integration test `db_data` prepares every
//! entry against the migrated schema, so a statement broken by a schema change fails the build, not the server.
//!
//! Invariant: game code never passes SQL text; it names a registered statement. Adding a statement means adding a
//! [`StatementDef`] to [`STATEMENTS`] (the test then prepares it too). Unregistered SQL is limited to migrations,
//! partition maintenance and health probes, which go through [`Conn::client`] and say so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use super::error::DbError;
use super::pool::{PgManager, Pool, Role};
use super::query_stats::QueryMetrics;

pub use super::role::Target;

/// One registered statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementDef {
    /// Unique name (also the metrics label).
    pub name: &'static str,
    /// Where it runs.
    pub target: Target,
    /// The SQL, with `$n` parameters.
    pub sql: &'static str,
}

const fn def(name: &'static str, target: Target, sql: &'static str) -> StatementDef {
    StatementDef { name, target, sql }
}

/// Every statement the server runs.
pub static STATEMENTS: &[StatementDef] = &[
    // ---- accounts and sessions (primary) ----
    def(
        "create_account",
        Target::Primary,
        "INSERT INTO players (username, password_hash) VALUES ($1, $2) RETURNING id",
    ),
    def(
        "find_account_by_username",
        Target::Primary,
        "SELECT id, username, password_hash, is_banned AND (ban_expires IS NULL OR ban_expires > now()) AS banned, \
         ban_reason, ban_expires, failed_logins, locked_until, \
         (locked_until IS NOT NULL AND locked_until > now()) AS locked \
         FROM players WHERE lower(username) = lower($1)",
    ),
    def(
        "record_login_failure",
        Target::Primary,
        "UPDATE players SET failed_logins = failed_logins + 1, \
         locked_until = CASE WHEN failed_logins + 1 >= $2::int THEN now() + make_interval(secs => $3::float8) \
         ELSE locked_until END \
         WHERE id = $1 RETURNING failed_logins, locked_until",
    ),
    def(
        "reset_login_failures",
        Target::Primary,
        "UPDATE players SET failed_logins = 0, locked_until = NULL, last_login = now() WHERE id = $1",
    ),
    def(
        "ban_player",
        Target::Primary,
        "UPDATE players SET is_banned = TRUE, ban_reason = $2, \
         ban_expires = CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3::float8) END \
         WHERE id = $1",
    ),
    def(
        "insert_session",
        Target::Primary,
        "INSERT INTO sessions (player_id, token_hash, expires_at, ip_address, user_agent) \
         VALUES ($1, $2, now() + make_interval(secs => $3::float8), $4, $5) RETURNING id, expires_at",
    ),
    def(
        "session_from_address",
        Target::Primary,
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE player_id = $1 AND ip_address = $2 \
         AND created_at > now() - make_interval(secs => $3::float8))",
    ),
    def(
        "find_session_by_token_hash",
        Target::Primary,
        "SELECT id, player_id, token_hash, expires_at FROM sessions WHERE token_hash = $1 AND expires_at > now()",
    ),
    def("delete_session", Target::Primary, "DELETE FROM sessions WHERE token_hash = $1"),
    def("delete_expired_sessions", Target::Primary, "DELETE FROM sessions WHERE expires_at <= now()"),
    def("allocate_item_ids", Target::Primary, "SELECT nextval('item_id_seq') FROM generate_series(1, $1::int)"),
    // ---- reads a replica may serve ----
    def(
        "ban_check",
        Target::Replica,
        "SELECT is_banned AND (ban_expires IS NULL OR ban_expires > now()) AS banned, ban_reason, ban_expires \
         FROM players WHERE id = $1",
    ),
    def("player_name_by_id", Target::Replica, "SELECT username FROM players WHERE id = $1"),
    // ---- player state (the player's shard) ----
    def(
        "claim_player",
        Target::Shard,
        "INSERT INTO player_progress AS p \
         (player_id, zone, pos_x, pos_y, level, experience, health, owner_epoch, owner_zone, updated_at) \
         VALUES ($1, $3, $4, $5, 1, 0, $6, 1, $2, now()) \
         ON CONFLICT (player_id) DO UPDATE \
         SET owner_epoch = p.owner_epoch + 1, owner_zone = EXCLUDED.owner_zone, updated_at = now() \
         RETURNING player_id, zone, pos_x, pos_y, level, experience, health, owner_epoch, owner_zone, \
         (xmax = 0) AS created",
    ),
    def(
        "load_progress",
        Target::Shard,
        "SELECT player_id, zone, pos_x, pos_y, level, experience, health, owner_epoch, owner_zone \
         FROM player_progress WHERE player_id = $1",
    ),
    def(
        "save_player",
        Target::Shard,
        "UPDATE player_progress SET zone = $3, pos_x = $4, pos_y = $5, level = $6, experience = $7, health = $8, \
         updated_at = now() WHERE player_id = $1 AND owner_epoch = $2",
    ),
    def(
        "save_players_batch",
        Target::Shard,
        "UPDATE player_progress AS p SET zone = v.zone, pos_x = v.pos_x, pos_y = v.pos_y, level = v.level, \
         experience = v.experience, health = v.health, updated_at = now() \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::real[], $5::real[], $6::int[], $7::bigint[], \
         $8::int[]) AS v(player_id, owner_epoch, zone, pos_x, pos_y, level, experience, health) \
         WHERE p.player_id = v.player_id AND p.owner_epoch = v.owner_epoch \
         RETURNING p.player_id, v.owner_epoch",
    ),
    def(
        "release_player",
        Target::Shard,
        "UPDATE player_progress SET owner_zone = NULL, updated_at = now() WHERE player_id = $1 AND owner_epoch = $2",
    ),
    def(
        "insert_item",
        Target::Shard,
        "INSERT INTO inventory_items (item_id, player_id, item_kind, quantity) \
         SELECT $1::bigint, $2::bigint, $4::int, $5::int \
         WHERE EXISTS (SELECT 1 FROM player_progress WHERE player_id = $2::bigint AND owner_epoch = $3::bigint)",
    ),
    def(
        "load_inventory",
        Target::Shard,
        "SELECT item_id, item_kind, quantity, acquired_at FROM inventory_items WHERE player_id = $1 ORDER BY item_id",
    ),
    def(
        "insert_combat_log",
        Target::Shard,
        "INSERT INTO combat_log (at, zone, actor, target, kind, amount) \
         SELECT now(), $1, u.actor, u.target, u.kind, u.amount \
         FROM unnest($2::bigint[], $3::bigint[], $4::int[], $5::int[]) AS u(actor, target, kind, amount)",
    ),
    def(
        "insert_chat_log",
        Target::Shard,
        "INSERT INTO chat_log (at, zone, actor, target, channel, text) \
         SELECT now(), $1, u.actor, u.target, u.channel, u.text \
         FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[]) AS u(actor, target, channel, text)",
    ),
];

/// Name -> statement lookup, built once at start from a static table.
#[derive(Debug)]
pub struct Registry {
    defs: &'static [StatementDef],
    by_name: HashMap<&'static str, usize>,
}

impl Registry {
    /// The server's registry ([`STATEMENTS`]).
    pub fn standard() -> Registry {
        // STATEMENTS has unique names (unit test `standard_registry_builds`), so this cannot fail; fall back to an
        // empty registry rather than panic if it ever did, and let every lookup report UnknownStatement.
        Registry::new(STATEMENTS).unwrap_or(Registry { defs: &[], by_name: HashMap::new() })
    }

    /// A registry of `defs`; names must be unique.
    pub fn new(defs: &'static [StatementDef]) -> Result<Registry, DbError> {
        let mut by_name = HashMap::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            if by_name.insert(d.name, i).is_some() {
                return Err(DbError::DuplicateStatement(d.name));
            }
        }
        Ok(Registry { defs, by_name })
    }

    /// The statement called `name` and its id (its index, used for per-connection caches and metrics).
    pub fn lookup(&self, name: &str) -> Result<(usize, &'static StatementDef), DbError> {
        let defs: &'static [StatementDef] = self.defs;
        match self.by_name.get(name) {
            Some(&i) => Ok((i, &defs[i])),
            None => Err(DbError::UnknownStatement(name.to_owned())),
        }
    }

    /// Every statement, in id order.
    pub fn all(&self) -> &'static [StatementDef] {
        self.defs
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// True when there are no statements.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }
}

/// A checked-out connection that runs registered statements. Returned to its pool on drop.
pub struct Conn<'a> {
    conn: r2d2::PooledConnection<PgManager>,
    role: Role,
    pool: &'a Pool,
    registry: &'a Registry,
    metrics: &'a QueryMetrics,
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("role", &self.role).field("pool", &self.pool.name()).finish_non_exhaustive()
    }
}

impl<'a> Conn<'a> {
    pub(crate) fn new(
        conn: r2d2::PooledConnection<PgManager>,
        role: Role,
        pool: &'a Pool,
        registry: &'a Registry,
        metrics: &'a QueryMetrics,
    ) -> Conn<'a> {
        Conn { conn, role, pool, registry, metrics }
    }

    /// What this connection is (primary, replica `i`, shard `i`).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Name of the pool it came from.
    pub fn pool_name(&self) -> &str {
        self.pool.name()
    }

    /// Prepares `name` on this connection if it is not yet (no-op otherwise). Used at start-up checks and by the
    /// registry test; a target mismatch is reported like for execution.
    pub fn prepare(&mut self, name: &str) -> Result<Statement, DbError> {
        let (id, def) = self.resolve(name)?;
        self.prepared(id, def)
    }

    /// Runs a statement that returns no rows; the number of rows affected.
    pub fn execute(&mut self, name: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        self.run(name, |client, stmt| client.execute(stmt, params))
    }

    /// Runs a statement and returns every row.
    pub fn query(&mut self, name: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        self.run(name, |client, stmt| client.query(stmt, params))
    }

    /// Runs a statement that returns at most one row.
    pub fn query_opt(&mut self, name: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        self.run(name, |client, stmt| client.query_opt(stmt, params))
    }

    /// Runs a statement that returns exactly one row.
    pub fn query_one(&mut self, name: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, DbError> {
        self.run(name, |client, stmt| client.query_one(stmt, params))
    }

    /// The raw client, for SQL that is not a game statement: migrations, partition DDL, probes, tests. Anything
    /// the game runs per player belongs in [`STATEMENTS`] instead.
    pub fn client(&mut self) -> &mut Client {
        &mut self.conn.client
    }

    /// True when the connection's server is a standby (`pg_is_in_recovery()`): proves where a read was served.
    pub fn is_in_recovery(&mut self) -> Result<bool, DbError> {
        let pool = self.pool.name().to_owned();
        self.conn
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|source| DbError::Admin { what: "pg_is_in_recovery()".into(), target: pool, source })
    }

    fn resolve(&self, name: &str) -> Result<(usize, &'static StatementDef), DbError> {
        let (id, def) = self.registry.lookup(name)?;
        if !def.target.allows(self.role) {
            return Err(DbError::WrongTarget { statement: def.name, target: def.target, role: self.role });
        }
        Ok((id, def))
    }

    fn prepared(&mut self, id: usize, def: &'static StatementDef) -> Result<Statement, DbError> {
        let conn = &mut *self.conn;
        if conn.prepared.len() < self.registry.len() {
            conn.prepared.resize(self.registry.len(), None);
        }
        if let Some(Some(stmt)) = conn.prepared.get(id) {
            return Ok(stmt.clone());
        }
        let stmt = conn.client.prepare(def.sql).map_err(|source| {
            self.pool.counters().query_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.record(id, Duration::ZERO, false);
            DbError::Query { statement: def.name, pool: self.pool.name().to_owned(), source }
        })?;
        conn.prepared[id] = Some(stmt.clone());
        Ok(stmt)
    }

    fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Client, &Statement) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let (id, def) = self.resolve(name)?;
        let stmt = self.prepared(id, def)?;
        let started = Instant::now();
        let result = f(&mut self.conn.client, &stmt);
        let took = started.elapsed();
        self.metrics.record(id, took, result.is_ok());
        if took >= self.metrics.slow_threshold() {
            log::warn!("slow query: {} took {} ms on {}", def.name, took.as_millis(), self.pool.name());
        }
        result.map_err(|source| {
            self.pool.counters().query_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The server may have dropped or invalidated the prepared statement (e.g. "cached plan must not change
            // result type" after a schema change): prepare it again next time rather than fail forever.
            if let Some(code) = source.code() {
                if *code == SqlState::FEATURE_NOT_SUPPORTED
                    || *code == SqlState::INVALID_SQL_STATEMENT_NAME
                    || *code == SqlState::UNDEFINED_TABLE
                {
                    self.conn.forget(id);
                }
            }
            DbError::Query { statement: def.name, pool: self.pool.name().to_owned(), source }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_registry_builds_with_unique_names() {
        let r = Registry::new(STATEMENTS).expect("names are unique");
        assert_eq!(r.len(), STATEMENTS.len());
        for (i, d) in STATEMENTS.iter().enumerate() {
            assert_eq!(r.lookup(d.name).unwrap().0, i);
        }
    }

    #[test]
    fn unknown_statement_is_a_typed_error() {
        let r = Registry::standard();
        assert!(matches!(r.lookup("drop_everything"), Err(DbError::UnknownStatement(n)) if n == "drop_everything"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        static DUP: &[StatementDef] = &[def("a", Target::Primary, "SELECT 1"), def("a", Target::Primary, "SELECT 2")];
        assert!(matches!(Registry::new(DUP), Err(DbError::DuplicateStatement("a"))));
    }

    #[test]
    fn targets_allow_only_matching_connections() {
        assert!(Target::Primary.allows(Role::Primary));
        assert!(!Target::Primary.allows(Role::Replica(0)));
        assert!(!Target::Primary.allows(Role::Shard(0)));
        assert!(Target::Replica.allows(Role::Replica(1)));
        assert!(Target::Replica.allows(Role::Primary));
        assert!(!Target::Replica.allows(Role::Shard(0)));
        assert!(Target::Shard.allows(Role::Shard(1)));
        assert!(!Target::Shard.allows(Role::Primary));
    }

    #[test]
    fn the_game_statements_the_design_names_are_registered() {
        let r = Registry::standard();
        for name in [
            "create_account",
            "find_account_by_username",
            "record_login_failure",
            "reset_login_failures",
            "ban_check",
            "insert_session",
            "find_session_by_token_hash",
            "session_from_address",
            "claim_player",
            "load_progress",
            "save_player",
            "save_players_batch",
            "insert_item",
            "load_inventory",
            "insert_combat_log",
            "insert_chat_log",
        ] {
            assert!(r.lookup(name).is_ok(), "{name} missing");
        }
        let (_, save) = r.lookup("save_player").unwrap();
        assert!(save.sql.contains("owner_epoch = $2"), "saves must be fenced");
        let (_, batch) = r.lookup("save_players_batch").unwrap();
        assert!(batch.sql.contains("p.owner_epoch = v.owner_epoch") && batch.sql.contains("RETURNING p.player_id"));
    }
}
