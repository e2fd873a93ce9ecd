//! The data layer's error type.
//!
//! Invariant: [`DbError::OwnershipLost`] is only ever produced by a fenced write that matched 0 rows, and it is
//! never folded into another variant: the caller drops the player's session and must not retry.

use std::time::Duration;

use postgres::error::SqlState;

use super::role::{Role, Target};

/// Everything the data layer can fail with. Messages never contain connection strings (they may hold passwords).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// No PostgreSQL is configured (`database.url` and `database.host` are empty): the embedded store applies.
    #[error("no PostgreSQL configured (database.url and database.host are empty)")]
    NotConfigured,
    /// A data-layer setting is unusable.
    #[error("invalid database setting {key}: {reason}")]
    Config {
        /// The key or option.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No connection could be checked out of a pool in time (database down, or pool exhausted).
    #[error("pool {pool}: no connection within {waited:?}: {message}")]
    Checkout {
        /// Pool name (`primary`, `replica-0`, `shard-1`).
        pool: String,
        /// How long the caller waited.
        waited: Duration,
        /// r2d2's description, with the last connection error when there was one.
        message: String,
    },
    /// A registered statement failed (or could not be prepared).
    #[error("statement {statement} on {pool}: {source}")]
    Query {
        /// Registered statement name.
        statement: &'static str,
        /// Pool name.
        pool: String,
        /// The driver error.
        #[source]
        source: postgres::Error,
    },
    /// Unregistered SQL (migrations, partition maintenance, probes) failed.
    #[error("{what} on {target}: {source}")]
    Admin {
        /// What was being done.
        what: String,
        /// Pool or database label.
        target: String,
        /// The driver error.
        #[source]
        source: postgres::Error,
    },
    /// A statement name that is not in the registry.
    #[error("unknown statement {0:?}: every statement must be registered in db::statements::STATEMENTS")]
    UnknownStatement(String),
    /// Two registry entries share a name.
    #[error("statement {0:?} is registered twice")]
    DuplicateStatement(&'static str),
    /// A statement was run on a connection of the wrong kind (e.g. a shard statement on the primary pool).
    #[error("statement {statement} targets {target:?} but ran on a {role} connection")]
    WrongTarget {
        /// Statement name.
        statement: &'static str,
        /// Where it must run.
        target: Target,
        /// The connection it was given.
        role: Role,
    },
    /// A fenced write matched 0 rows: another server claimed the player (bumped `owner_epoch`) after us. Drop the
    /// session; never retry.
    #[error("player {player_id}: ownership lost (owner_epoch is no longer {epoch}); drop the session, do not retry")]
    OwnershipLost {
        /// The player.
        player_id: u64,
        /// The epoch this server held.
        epoch: u64,
    },
    /// `create_account` with a username that exists (case-insensitively).
    #[error("username is already taken")]
    UsernameTaken,
    /// An item id that already exists: a duplication attempt or an id reused by a bug.
    #[error("item {item_id} already exists")]
    DuplicateItem {
        /// The item.
        item_id: u64,
    },
    /// A protocol id does not fit PostgreSQL's BIGINT.
    #[error("id {0} does not fit a BIGINT")]
    IdOutOfRange(u64),
    /// A migration file changed after it was applied. Write a new migration instead of editing an applied one.
    #[error(
        "migration {version} on {target} was changed after it was applied (applied checksum {applied}, file \
         checksum {file}): add a new migration instead of editing an applied one"
    )]
    MigrationChanged {
        /// Migration version (file stem).
        version: String,
        /// Database label.
        target: String,
        /// Checksum recorded when it was applied.
        applied: String,
        /// Checksum of the file now.
        file: String,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error("migration {version} on {target} failed (rolled back): {source}")]
    Migration {
        /// Migration version.
        version: String,
        /// Database label.
        target: String,
        /// The driver error.
        #[source]
        source: postgres::Error,
    },
    /// The migrations directory could not be read.
    #[error("cannot read migrations from {path}: {source}")]
    MigrationFiles {
        /// Directory or file.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A background thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

impl DbError {
    /// True when retrying the same operation later may succeed: the database or connection went away, the pool
    /// timed out, or PostgreSQL asked us to retry (serialization failure, deadlock, shutting down). False for
    /// [`DbError::OwnershipLost`] and every logic error.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Checkout { .. } => true,
            DbError::Query { source, .. } | DbError::Admin { source, .. } => is_transient_pg(source),
            _ => false,
        }
    }

    /// The SQLSTATE of the underlying database error, if any.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            DbError::Query { source, .. } | DbError::Admin { source, .. } | DbError::Migration { source, .. } => {
                source.code()
            }
            _ => None,
        }
    }
}

/// Connection-level failures and the SQLSTATEs PostgreSQL documents as "try again".
pub(crate) fn is_transient_pg(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O or protocol error on the socket (connection reset, refused).
        None => e.as_db_error().is_none(),
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::CONNECTION_FAILURE
                || *code == SqlState::QUERY_CANCELED
        }
    }
}

/// Converts a protocol id (uint64) to PostgreSQL's BIGINT.
pub(crate) fn to_db_id(id: u64) -> Result<i64, DbError> {
    i64::try_from(id).map_err(|_| DbError::IdOutOfRange(id))
}

/// Converts a BIGINT read from the database back to a protocol id. Ids are generated positive; a negative value
/// can only come from manual edits and is clamped to 0 rather than wrapping.
pub(crate) fn from_db_id(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}
