//! `PoolManager`: one named r2d2 pool per database (the primary, each read replica, each shard), typed pool
//! settings, and per-pool counters.
//!
//! A pooled connection is a [`PgConnection`]: the `postgres::Client` plus that connection's cache of prepared
//! statements (see [`super::statements`]). Pools are built without waiting for a first connection, so a database
//! that is down at start (a replica) does not stop the server; r2d2 keeps retrying in the background and a pool
//! recovers by itself when its database comes back: broken connections are dropped on check-in
//! (`has_broken`) and, with `test_on_checkout`, before being handed out.
//!
//! Invariant: connection strings never appear in errors, logs or stats (they may hold passwords); pools are
//! named (`primary`, `replica-0`, `shard-1`) and only the names are shown.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use r2d2::event::{CheckoutEvent, TimeoutEvent};
use r2d2::{HandleError, HandleEvent, ManageConnection};
use r2d2_postgres::PostgresConnectionManager;
use scheduled_thread_pool::ScheduledThreadPool;

use super::error::DbError;
use super::DbOptions;
use crate::config::Config;

pub use super::role::Role;

/// Typed settings of one pool. Built from `[database]` by [`PoolConfig::from_config`]; the settings the config
/// file does not carry (idle timeout, lifetime, test on checkout, statement timeout) come from [`DbOptions`].
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections (`database.pool_size`).
    pub max_size: u32,
    /// Idle connections kept open (`database.min_idle`).
    pub min_idle: u32,
    /// Longest wait for a connection (`database.connection_timeout_ms`).
    pub connection_timeout: Duration,
    /// Idle connections above `min_idle` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long (spreads reconnects after a failover, bounds server-side bloat).
    pub max_lifetime: Option<Duration>,
    /// Validate a connection (one empty query round trip) before handing it out. Costs a round trip per checkout
    /// but means a restarted database costs callers no failed query.
    pub test_on_checkout: bool,
    /// `statement_timeout` set on every new connection; `None` = the server default.
    pub statement_timeout: Option<Duration>,
}

impl PoolConfig {
    /// The settings for every pool of `config`.
    pub fn from_config(config: &Config, options: &DbOptions) -> PoolConfig {
        let d = &config.database;
        PoolConfig {
            max_size: d.pool_size.max(1),
            min_idle: d.min_idle.min(d.pool_size.max(1)),
            connection_timeout: Duration::from_millis(d.connection_timeout_ms.max(1)),
            idle_timeout: options.idle_timeout,
            max_lifetime: options.max_lifetime,
            test_on_checkout: options.test_on_checkout,
            statement_timeout: options.statement_timeout,
        }
    }
}

/// A pooled PostgreSQL connection and the statements prepared on it.
pub struct PgConnection {
    pub(crate) client: Client,
    /// Indexed by statement id (position in the registry); filled lazily, once per connection.
    pub(crate) prepared: Vec<Option<Statement>>,
}

/// r2d2 manager: `r2d2_postgres` for connecting and validating, plus our per-connection state.
#[derive(Debug)]
pub struct PgManager {
    inner: PostgresConnectionManager<NoTls>,
    statement_timeout: Option<Duration>,
}

impl ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        let mut client = self.inner.connect()?;
        if let Some(t) = self.statement_timeout {
            client.batch_execute(&format!("SET statement_timeout = {}", t.as_millis().max(1)))?;
        }
        Ok(PgConnection { client, prepared: Vec::new() })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed()
    }
}

/// Counters of one pool, shared with r2d2's handlers.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub(crate) checkouts: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) wait_nanos: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) query_errors: AtomicU64,
}

#[derive(Debug)]
struct Handler {
    name: String,
    counters: Arc<PoolCounters>,
}

impl HandleError<postgres::Error> for Handler {
    fn handle_error(&self, error: postgres::Error) {
        self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
        // r2d2 retries with back-off while the database is down; one line per failure is what an operator needs.
        log::warn!("pool {}: connection failed: {error}", self.name);
    }
}

impl HandleEvent for Handler {
    fn handle_checkout(&self, event: CheckoutEvent) {
        self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(event.duration().as_nanos()).unwrap_or(u64::MAX);
        self.counters.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn handle_timeout(&self, _event: TimeoutEvent) {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one pool's state and counters (cumulative since start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// Configured maximum.
    pub max_size: u32,
    /// Open connections.
    pub connections: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Open connections idle in the pool.
    pub idle: u32,
    /// Successful checkouts.
    pub checkouts: u64,
    /// Checkouts that found no idle connection (had to connect or wait for a check-in).
    pub waits: u64,
    /// Total time callers spent in checkout.
    pub wait_time: Duration,
    /// Checkouts that gave up after the timeout.
    pub timeouts: u64,
    /// Failed connection attempts (database down, refused, auth).
    pub connect_errors: u64,
    /// Statements that returned an error on this pool's connections.
    pub query_errors: u64,
}

/// One named pool.
pub struct Pool {
    name: String,
    role: Role,
    pool: r2d2::Pool<PgManager>,
    counters: Arc<PoolCounters>,
    config: PoolConfig,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds a pool for `url` without connecting (r2d2 opens `min_idle` connections in the background).
    pub fn new(
        name: impl Into<String>,
        role: Role,
        url: &str,
        config: &PoolConfig,
        threads: Arc<ScheduledThreadPool>,
    ) -> Result<Pool, DbError> {
        let name = name.into();
        let pg_config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| DbError::Config { key: "database url", reason: format!("{name}: {e}") })?;
        let mut pg_config = pg_config;
        if pg_config.get_connect_timeout().is_none() {
            // A database host that black-holes packets must not hold a pool thread for the TCP default (minutes).
            pg_config.connect_timeout(config.connection_timeout.max(Duration::from_secs(1)));
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("realm");
        }
        let manager = PgManager {
            inner: PostgresConnectionManager::new(pg_config, NoTls),
            statement_timeout: config.statement_timeout,
        };
        let counters = Arc::new(PoolCounters::default());
        let pool = r2d2::Pool::builder()
            .max_size(config.max_size)
            .min_idle(Some(config.min_idle))
            .connection_timeout(config.connection_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_on_check_out(config.test_on_checkout)
            .thread_pool(threads)
            .error_handler(Box::new(Handler { name: name.clone(), counters: Arc::clone(&counters) }))
            .event_handler(Box::new(Handler { name: name.clone(), counters: Arc::clone(&counters) }))
            .build_unchecked(manager);
        Ok(Pool { name, role, pool, counters, config: config.clone() })
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the pool is for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The settings it was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Checks out a connection, waiting at most the configured connection timeout.
    pub(crate) fn checkout(&self) -> Result<r2d2::PooledConnection<PgManager>, DbError> {
        self.checkout_timeout(self.config.connection_timeout)
    }

    /// Checks out a connection, waiting at most `timeout`.
    pub(crate) fn checkout_timeout(&self, timeout: Duration) -> Result<r2d2::PooledConnection<PgManager>, DbError> {
        if self.pool.state().idle_connections == 0 {
            self.counters.waits.fetch_add(1, Ordering::Relaxed);
        }
        let started = Instant::now();
        self.pool.get_timeout(timeout).map_err(|e| DbError::Checkout {
            pool: self.name.clone(),
            waited: started.elapsed(),
            message: e.to_string(),
        })
    }

    /// True when every connection is checked out and the pool is at its maximum.
    pub fn is_exhausted(&self) -> bool {
        let s = self.pool.state();
        s.idle_connections == 0 && s.connections >= self.config.max_size
    }

    pub(crate) fn counters(&self) -> &PoolCounters {
        &self.counters
    }

    /// Current state and counters.
    pub fn stats(&self) -> PoolStats {
        let s = self.pool.state();
        let c = &self.counters;
        PoolStats {
            name: self.name.clone(),
            max_size: self.config.max_size,
            connections: s.connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
            idle: s.idle_connections,
            checkouts: c.checkouts.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(c.wait_nanos.load(Ordering::Relaxed)),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            connect_errors: c.connect_errors.load(Ordering::Relaxed),
            query_errors: c.query_errors.load(Ordering::Relaxed),
        }
    }
}

/// All pools of one process. Without shards configured, shard 0 is the primary pool (the same object).
pub struct PoolManager {
    primary: Arc<Pool>,
    replicas: Vec<Arc<Pool>>,
    shards: Vec<Arc<Pool>>,
}

impl fmt::Debug for PoolManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolManager")
            .field("replicas", &self.replicas.len())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl PoolManager {
    /// Builds the primary, replica and shard pools named in `config` (none connects yet).
    pub fn new(config: &Config, options: &DbOptions) -> Result<PoolManager, DbError> {
        let primary_url = config.primary_url().ok_or(DbError::NotConfigured)?;
        let pool_config = PoolConfig::from_config(config, options);
        // One small pool of connector threads for every r2d2 pool (r2d2 would start 3 per pool otherwise), named
        // for `top -H`. One per database up to 4, so a database that black-holes connects (each attempt holds a
        // thread for the connect timeout) cannot starve the others' reconnects.
        let databases = 1 + config.database.replica_urls.len() + config.database.shard_urls.len();
        let threads = Arc::new(
            ScheduledThreadPool::builder()
                .num_threads(databases.clamp(2, 4))
                .thread_name_pattern("realm-db-pool-{}")
                .build(),
        );
        let primary = Arc::new(Pool::new("primary", Role::Primary, &primary_url, &pool_config, Arc::clone(&threads))?);
        let mut replicas = Vec::new();
        for (i, url) in config.database.replica_urls.iter().enumerate() {
            let role = Role::Replica(i);
            replicas.push(Arc::new(Pool::new(role.to_string(), role, url, &pool_config, Arc::clone(&threads))?));
        }
        let mut shards = Vec::new();
        for (i, url) in config.database.shard_urls.iter().enumerate() {
            let role = Role::Shard(i);
            shards.push(Arc::new(Pool::new(role.to_string(), role, url, &pool_config, Arc::clone(&threads))?));
        }
        if shards.is_empty() {
            shards.push(Arc::clone(&primary));
        }
        Ok(PoolManager { primary, replicas, shards })
    }

    /// The primary pool.
    pub fn primary(&self) -> &Arc<Pool> {
        &self.primary
    }

    /// Replica pools, in `database.replica_urls` order.
    pub fn replicas(&self) -> &[Arc<Pool>] {
        &self.replicas
    }

    /// Shard pools, in `database.shard_urls` order (just the primary when none are configured).
    pub fn shards(&self) -> &[Arc<Pool>] {
        &self.shards
    }

    /// True when the shards are separate databases (not the primary).
    pub fn has_dedicated_shards(&self) -> bool {
        !self.shards.iter().any(|s| Arc::ptr_eq(s, &self.primary))
    }

    /// A pool by name (`primary`, `replica-0`, `shard-1`).
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.all().find(|p| p.name() == name)
    }

    /// Every distinct pool: the primary, the replicas, then the dedicated shards.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let dedicated = self.has_dedicated_shards();
        std::iter::once(&self.primary).chain(self.replicas.iter()).chain(self.shards.iter().filter(move |_| dedicated))
    }

    /// Stats of every distinct pool.
    pub fn stats(&self) -> Vec<PoolStats> {
        self.all().map(|p| p.stats()).collect()
    }
}

impl PgConnection {
    /// Forgets the prepared statement `id` (it is prepared again on next use).
    pub(crate) fn forget(&mut self, id: usize) {
        if let Some(slot) = self.prepared.get_mut(id) {
            *slot = None;
        }
    }
}
