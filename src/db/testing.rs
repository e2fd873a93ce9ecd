//! Scratch schemas for integration tests and benchmarks: each test gets its own PostgreSQL schema on the primary
//! and on every shard database, selected through the connection's `search_path`, so tests running at once (and
//! other engineers' tests on the same server) never see each other's rows. Dropped (CASCADE) on drop.
//!
//! Invariant: only names made of `[a-z0-9_]` are accepted; they are interpolated into DDL.

use postgres::{Client, NoTls};

use super::error::DbError;
use crate::config::Config;

/// `url` with `search_path` set to `schema` for every connection made from it. Works for URLs
/// (`postgres://...`, as a `options=-csearch_path=...` query parameter) and key=value connection strings.
pub fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{schema}")
    } else {
        format!("{url} options='-csearch_path={schema}'")
    }
}

/// A schema created on the primary and on each shard database; dropped on drop.
#[derive(Debug)]
pub struct ScratchSchema {
    /// Schema name.
    pub name: String,
    /// Primary URL with the search_path.
    pub primary: String,
    /// Replica URLs with the search_path (the schema reaches them by replication).
    pub replicas: Vec<String>,
    /// Shard URLs with the search_path.
    pub shards: Vec<String>,
    created_on: Vec<String>,
}

impl ScratchSchema {
    /// Creates schema `name` on `primary` and each of `shards` (dropping a leftover of the same name first).
    pub fn create(name: &str, primary: &str, replicas: &[String], shards: &[String]) -> Result<ScratchSchema, DbError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(DbError::Config { key: "schema", reason: format!("{name:?} is not a plain name") });
        }
        let mut created_on = Vec::new();
        for url in std::iter::once(primary).chain(shards.iter().map(String::as_str)) {
            let mut c = connect(url)?;
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};")).map_err(
                |source| DbError::Admin { what: format!("create schema {name}"), target: "scratch".into(), source },
            )?;
            created_on.push(url.to_owned());
        }
        Ok(ScratchSchema {
            name: name.to_owned(),
            primary: with_search_path(primary, name),
            replicas: replicas.iter().map(|u| with_search_path(u, name)).collect(),
            shards: shards.iter().map(|u| with_search_path(u, name)).collect(),
            created_on,
        })
    }

    /// A configuration pointing at this schema: small pools (the test server is shared), short timeouts,
    /// migrations applied at connect.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.database.url = self.primary.clone();
        c.database.replica_urls = self.replicas.clone();
        c.database.shard_urls = self.shards.clone();
        c.database.pool_size = 4;
        c.database.min_idle = 0;
        c.database.connection_timeout_ms = 2_000;
        c.database.migrate_on_start = true;
        c
    }

    /// A new client on the primary, in this schema.
    pub fn primary_client(&self) -> Result<Client, DbError> {
        connect(&self.primary)
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        for url in &self.created_on {
            match connect(url) {
                Ok(mut c) => {
                    if let Err(e) = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
                        eprintln!("note: could not drop scratch schema {}: {e}", self.name);
                    }
                }
                Err(e) => eprintln!("note: could not drop scratch schema {}: {e}", self.name),
            }
        }
    }
}

fn connect(url: &str) -> Result<Client, DbError> {
    Client::connect(url, NoTls).map_err(|source| DbError::Admin {
        what: "connect".into(),
        target: "scratch".into(),
        source,
    })
}
