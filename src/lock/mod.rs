//! Distributed ownership locks in Redis: "one player, one zone" across zone processes.
//!
//! * acquire: `SET key token NX PX ttl` — only when nobody holds it;
//! * extend: a script that runs `PEXPIRE` only if the key still holds *our* token (compare-and-pexpire);
//! * release: a script that runs `DEL` only if the key still holds our token (compare-and-delete).
//!
//! The token is unique per claim, so a server whose lock expired while it was paused can neither extend nor
//! release the lock its successor now holds. The lock is the fast path; the fencing epoch in PostgreSQL is the
//! guarantee (a lock can expire under a paused process; a save under an old epoch can never land).
//! Invariant: never `DEL`/`PEXPIRE` a lock key without comparing the token in the same atomic script.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::account::{OwnershipLocks, StoreError};

const EXTEND: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;
const RELEASE: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// Sets socket timeouts once per new connection: a Redis that stops answering must not hold a worker forever.
#[derive(Debug)]
struct Timeouts(Duration);

impl r2d2::CustomizeConnection<redis::Connection, redis::RedisError> for Timeouts {
    fn on_acquire(&self, conn: &mut redis::Connection) -> Result<(), redis::RedisError> {
        conn.set_read_timeout(Some(self.0))?;
        conn.set_write_timeout(Some(self.0))
    }
}

/// Ownership locks in Redis, through an r2d2 pool.
pub struct RedisLocks {
    pool: r2d2::Pool<redis::Client>,
    prefix: String,
    extend: redis::Script,
    release: redis::Script,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisLocks {
    /// A pool of `pool_size` connections to `url`; keys are `{prefix}:lock:player:{id}`.
    pub fn connect(url: &str, prefix: &str, pool_size: u32) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let timeout = Duration::from_millis(1_000);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(timeout)
            // No PING before every use: that would double the round trips of every lock operation. A broken
            // connection fails its command (a typed error) and r2d2 discards it (`has_broken`).
            .test_on_check_out(false)
            .connection_customizer(Box::new(Timeouts(timeout)))
            .build(client)
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            extend: redis::Script::new(EXTEND),
            release: redis::Script::new(RELEASE),
        })
    }

    fn key(&self, player_id: u64) -> String {
        format!("{}:lock:player:{player_id}", self.prefix)
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<redis::Client>, StoreError> {
        self.pool.get().map_err(unavailable)
    }

    fn counted<T>(&self, r: redis::RedisResult<T>) -> Result<T, StoreError> {
        r.map_err(unavailable)
    }

    /// Acquires, retrying with backoff while the lock is held or Redis errors, until `deadline` has passed.
    pub fn acquire_with_retry(
        &self,
        player_id: u64,
        token: &str,
        ttl: Duration,
        deadline: Duration,
    ) -> Result<bool, StoreError> {
        let until = Instant::now() + deadline;
        let mut wait = Duration::from_millis(20);
        loop {
            match self.acquire(player_id, token, ttl) {
                Ok(true) => return Ok(true),
                Ok(false) if Instant::now() >= until => return Ok(false),
                Err(e) if Instant::now() >= until => return Err(e),
                _ => {}
            }
            std::thread::sleep(wait.min(until.saturating_duration_since(Instant::now())));
            wait = (wait * 2).min(Duration::from_millis(250));
        }
    }
}

impl OwnershipLocks for RedisLocks {
    fn acquire(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let reply: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.key(player_id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query(&mut *conn);
        Ok(self.counted(reply)?.is_some())
    }

    fn extend(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let reply: redis::RedisResult<i64> =
            self.extend.key(self.key(player_id)).arg(token).arg(ttl.as_millis() as u64).invoke(&mut *conn);
        Ok(self.counted(reply)? == 1)
    }

    fn release(&self, player_id: u64, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let reply: redis::RedisResult<i64> = self.release.key(self.key(player_id)).arg(token).invoke(&mut *conn);
        Ok(self.counted(reply)? == 1)
    }
}

/// Any [`OwnershipLocks`] with the lock metrics counted where the work happens: acquisitions, contentions and the
/// acquire duration (`game_server_lock_*`). The server wraps whichever lock store it runs (Redis or the embedded
/// table), so the series are the same either way. Losses are counted by the session machine, which decides what a
/// failed extension means (a lock store that forgot a key is re-taken, not lost).
pub struct MeteredLocks {
    inner: Arc<dyn OwnershipLocks>,
    metrics: crate::metrics::LockMetrics,
}

impl MeteredLocks {
    /// Counts `inner`'s operations into `metrics`.
    pub fn new(inner: Arc<dyn OwnershipLocks>, metrics: crate::metrics::LockMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl OwnershipLocks for MeteredLocks {
    fn acquire(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.acquire(player_id, token, ttl);
        self.metrics.acquire_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(true) => self.metrics.acquisitions.inc(),
            Ok(false) => self.metrics.contentions.inc(),
            Err(_) => {}
        }
        result
    }

    fn extend(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.extend(player_id, token, ttl)
    }

    fn release(&self, player_id: u64, token: &str) -> Result<bool, StoreError> {
        self.inner.release(player_id, token)
    }
}
