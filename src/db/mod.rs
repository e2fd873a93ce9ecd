//! The blocking data layer: PostgreSQL through r2d2 pools, run only on worker threads (`realm-worker-K`).
//!
//! [`Database`] is the facade the worker context holds. It owns:
//! - [`pool::PoolManager`]: named pools (primary, replicas, shards) with typed settings and stats;
//! - [`statements::Registry`]: every SQL statement by name, prepared once per connection ([`statements::Conn`]);
//! - [`router::ReplicaRouter`]: reads to healthy, non-lagging replicas, else the primary;
//! - [`shard::ShardManager`]: player id -> shard (virtual buckets + jump consistent hash);
//! - [`partition::PartitionManager`]: daily partitions of the event logs;
//! - [`monitor::DbMonitor`]: the `realm-db-monitor` thread (health, lag, partition upkeep) and [`DbSnapshot`];
//! - a [`crate::cache::CacheManager`] (read-through cache of player progress, invalidated by every save).
//!
//! The typed game operations (accounts, sessions, claim, fenced saves, items, logs) are methods of [`Database`],
//! in [`ops`]; [`store`] puts them behind the account module's `AccountStore` / `PlayerStore` traits.
//!
//! Invariant a reader must not break: every write to a player's state is fenced by `owner_epoch`
//! (`... WHERE player_id = $1 AND owner_epoch = $mine`); a fenced write that matches 0 rows is
//! [`DbError::OwnershipLost`], which the caller answers by dropping the session and never by retrying. Nothing in
//! this module may run on the simulation thread: every call blocks.

pub mod error;
pub mod migrate;
pub mod monitor;
pub mod ops;
pub mod partition;
pub mod pool;
pub mod query_stats;
pub mod role;
pub mod router;
pub mod shard;
pub mod statements;
pub mod store;
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

pub use error::DbError;
pub use monitor::{DbAlerts, DbSnapshot};
pub use ops::{
    Account, BanStatus, ChatLine, Claim, CombatEvent, InventoryItem, LoginFailure, NewItem, PlayerSave, Progress,
    SaveOutcome, SessionRecord, ShardFailure, Spawn,
};
pub use pool::Role;
pub use router::{ReadConsistency, WriteMarker};

use crate::cache::{Cache, CacheConfig, CacheManager};
use crate::config::Config;
use monitor::HealthBoard;
use partition::{Day, PartitionManager, PartitionPolicy, PartitionReport};
use pool::{Pool, PoolManager};
use query_stats::QueryMetrics;
use router::ReplicaRouter;
use shard::ShardManager;
use statements::{Conn, Registry};

/// Data-layer settings that `[database]` does not carry, with production defaults. Tests shorten the intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct DbOptions {
    /// Idle connections above `min_idle` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long.
    pub max_lifetime: Option<Duration>,
    /// Validate connections on checkout (one round trip; hides database restarts from callers).
    pub test_on_checkout: bool,
    /// `statement_timeout` of every connection (the seeds' `query_timeout = 5`).
    pub statement_timeout: Option<Duration>,
    /// Statements at or over this are logged as slow.
    pub slow_query: Duration,
    /// How often the monitor probes pools and replica lag.
    pub monitor_interval: Duration,
    /// Longest a probe waits for a connection.
    pub probe_timeout: Duration,
    /// Longest a read waits for a replica connection before falling back to the primary.
    pub replica_checkout_timeout: Duration,
    /// How often partition maintenance runs (it also runs at start).
    pub partition_interval: Duration,
    /// Partitions kept ahead of and behind today.
    pub partitions: PartitionPolicy,
    /// Capacity and TTL of the player-progress cache.
    pub progress_cache: CacheConfig,
    /// How often the cache evictor runs.
    pub cache_evict_interval: Duration,
    /// Apply migrations in [`Database::connect`] (defaults to `database.migrate_on_start`).
    pub migrate: Option<bool>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            idle_timeout: Some(Duration::from_secs(300)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_on_checkout: true,
            statement_timeout: Some(Duration::from_secs(5)),
            slow_query: Duration::from_millis(100),
            monitor_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            replica_checkout_timeout: Duration::from_millis(200),
            partition_interval: Duration::from_secs(3600),
            partitions: PartitionPolicy::default(),
            progress_cache: CacheConfig { capacity: 10_000, ttl: Duration::from_secs(30) },
            cache_evict_interval: Duration::from_secs(5),
            migrate: None,
        }
    }
}

/// Shared by the facade and the monitor thread.
pub(crate) struct Inner {
    pub(crate) options: DbOptions,
    pub(crate) pools: PoolManager,
    pub(crate) registry: Registry,
    pub(crate) metrics: QueryMetrics,
    pub(crate) router: ReplicaRouter,
    pub(crate) shards: ShardManager,
    pub(crate) partitions: PartitionManager,
    pub(crate) health: HealthBoard,
    pub(crate) partition_status: parking_lot::Mutex<partition::PartitionStatus>,
    pub(crate) progress_cache: Arc<Cache<u64, Progress>>,
}

/// The data layer of one process. `Send + Sync`: share it (in the worker context) by reference or `Arc`.
pub struct Database {
    // Field order matters for drop: stop the monitor before the state it reads goes away.
    monitor: monitor::DbMonitor,
    /// Held for its drop: stops and joins `realm-db-partitions`.
    _partitions: partition::Maintainer,
    caches: CacheManager,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("pools", &self.inner.pools).finish_non_exhaustive()
    }
}

impl Database {
    /// Builds the data layer from `config` with default [`DbOptions`]: applies migrations when
    /// `database.migrate_on_start`, builds the pools, checks the primary and every shard answer, probes replicas
    /// once, creates today's partitions, and starts the monitor. Blocking; call it from `main` or a worker.
    pub fn connect(config: &Config) -> Result<Database, DbError> {
        Database::connect_with(config, DbOptions::default())
    }

    /// As [`Database::connect`], with explicit options.
    pub fn connect_with(config: &Config, options: DbOptions) -> Result<Database, DbError> {
        if config.uses_embedded_store() {
            return Err(DbError::NotConfigured);
        }
        if options.migrate.unwrap_or(config.database.migrate_on_start) {
            migrate::migrate_all(config)?;
        }
        let pools = PoolManager::new(config, &options)?;
        let registry = Registry::standard();
        let metrics = QueryMetrics::new(registry.all().iter().map(|d| d.name).collect(), options.slow_query);
        let router =
            ReplicaRouter::new(pools.replicas().len(), Duration::from_millis(config.database.max_replica_lag_ms));
        let shards = ShardManager::new(pools.shards().to_vec());
        let partitions = PartitionManager::new(options.partitions.clone())?;
        let caches = CacheManager::new(options.cache_evict_interval)
            .map_err(|e| DbError::Config { key: "cache", reason: e.to_string() })?;
        let progress_cache = caches
            .cache::<u64, Progress>("player_progress", options.progress_cache)
            .map_err(|e| DbError::Config { key: "cache", reason: e.to_string() })?;
        let inner = Arc::new(Inner {
            options,
            pools,
            registry,
            metrics,
            router,
            shards,
            partitions,
            health: HealthBoard::default(),
            partition_status: Default::default(),
            progress_cache,
        });
        // Fail fast when the primary or a shard is unreachable; a replica may be down (reads fall back).
        drop(inner.pools.primary().checkout()?);
        for shard in inner.shards.pools() {
            drop(shard.checkout()?);
        }
        monitor::check_once(&inner);
        if let Err(e) = partition::maintain_all(&inner, Day::today()) {
            // Without the schema (migrations not applied yet) there is nothing to partition; the monitor retries.
            log::warn!("initial partition maintenance failed: {e}");
        }
        let monitor = monitor::DbMonitor::start(Arc::clone(&inner))?;
        let partitions = partition::Maintainer::start(Arc::clone(&inner))?;
        Ok(Database { monitor, _partitions: partitions, caches, inner })
    }

    /// A primary connection.
    pub fn primary(&self) -> Result<Conn<'_>, DbError> {
        let pool = self.inner.pools.primary();
        Ok(self.conn(pool.checkout()?, pool, pool.role()))
    }

    /// A connection for reads: a healthy replica chosen by the router, else the primary. A replica that cannot
    /// hand out a connection within `replica_checkout_timeout` is marked down and the primary serves the read.
    pub fn read(&self, consistency: ReadConsistency) -> Result<Conn<'_>, DbError> {
        if let Some(i) = self.inner.router.pick(consistency) {
            if let Some(pool) = self.inner.pools.replicas().get(i) {
                match pool.checkout_timeout(self.inner.options.replica_checkout_timeout) {
                    Ok(c) => return Ok(self.conn(c, pool, pool.role())),
                    Err(e) => self.inner.router.mark_down(i, &e.to_string()),
                }
            }
        }
        self.primary()
    }

    /// A connection to the shard holding `player_id`'s data.
    pub fn shard_for(&self, player_id: u64) -> Result<Conn<'_>, DbError> {
        let i = self.inner.shards.shard_of(player_id);
        self.shard(i)
    }

    /// A connection to shard `i`.
    pub fn shard(&self, i: usize) -> Result<Conn<'_>, DbError> {
        let pool = self.inner.shards.pool(i).ok_or(DbError::Config {
            key: "database.shard_urls",
            reason: format!("no shard {i} (there are {})", self.inner.shards.len()),
        })?;
        Ok(self.conn(pool.checkout()?, pool, Role::Shard(i)))
    }

    /// A connection from the pool called `name` (`primary`, `replica-0`, `shard-1`), bypassing routing (admin
    /// tools and tests; replicas may be down).
    pub fn pool_conn(&self, name: &str) -> Result<Conn<'_>, DbError> {
        let pool = self
            .inner
            .pools
            .get(name)
            .ok_or(DbError::Config { key: "pool", reason: format!("no pool named {name:?}") })?;
        Ok(self.conn(pool.checkout()?, pool, pool.role()))
    }

    fn conn<'a>(&'a self, c: r2d2::PooledConnection<pool::PgManager>, pool: &'a Pool, role: Role) -> Conn<'a> {
        Conn::new(c, role, pool, &self.inner.registry, &self.inner.metrics)
    }

    /// The primary's current WAL position: taken after a write, reads with [`ReadConsistency::AtLeast`] see it.
    pub fn write_marker(&self) -> Result<WriteMarker, DbError> {
        let mut c = self.primary()?;
        let row = c
            .client()
            .query_one("SELECT pg_current_wal_lsn()", &[])
            .and_then(|r| r.try_get::<_, postgres::types::PgLsn>(0))
            .map_err(|source| DbError::Admin {
                what: "pg_current_wal_lsn()".into(),
                target: "primary".into(),
                source,
            })?;
        Ok(WriteMarker::from(row))
    }

    /// Prepares every registered statement on the database kind it targets (primary for primary and replica
    /// statements, every shard for shard statements). Run at start or in CI: a statement broken by a schema change
    /// fails here instead of at its first use.
    pub fn prepare_all(&self) -> Result<usize, DbError> {
        let mut n = 0;
        let mut primary = self.primary()?;
        for d in self.inner.registry.all() {
            match d.target {
                statements::Target::Primary | statements::Target::Replica => {
                    primary.prepare(d.name)?;
                    n += 1;
                }
                statements::Target::Shard => {
                    for i in 0..self.inner.shards.len() {
                        self.shard(i)?.prepare(d.name)?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// The pools.
    pub fn pools(&self) -> &PoolManager {
        &self.inner.pools
    }

    /// The statement registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The replica router (status, lag threshold).
    pub fn router(&self) -> &ReplicaRouter {
        &self.inner.router
    }

    /// The shard map.
    pub fn shards(&self) -> &ShardManager {
        &self.inner.shards
    }

    /// The partition policy and helpers.
    pub fn partitions(&self) -> &PartitionManager {
        &self.inner.partitions
    }

    /// The caches (the progress cache is `player_progress`).
    pub fn caches(&self) -> &CacheManager {
        &self.caches
    }

    /// The player-progress cache.
    pub fn progress_cache(&self) -> &Cache<u64, Progress> {
        &self.inner.progress_cache
    }

    /// Runs one monitor cycle now (the monitor thread does this every `monitor_interval`).
    pub fn refresh_health(&self) {
        monitor::check_once(&self.inner);
    }

    /// Runs partition maintenance now as of `today` on the primary and every shard.
    pub fn maintain_partitions(&self, today: Day) -> Result<PartitionReport, DbError> {
        partition::maintain_all(&self.inner, today)
    }

    /// Pool health, replica lag, statement stats, partition status and alert conditions.
    pub fn snapshot(&self) -> DbSnapshot {
        self.monitor.snapshot()
    }

    /// The monitor.
    pub fn monitor(&self) -> &monitor::DbMonitor {
        &self.monitor
    }
}
