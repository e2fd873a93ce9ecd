//! One-time zone-transfer tokens. When a player walks through a portal, zone A saves the player (fenced), releases
//! its ownership lock, then issues a token naming the player and the target zone; zone B redeems it exactly once
//! (atomically: `GETDEL` in Redis) and claims the player as on any login — no password asked again.
//!
//! Only the SHA-256 of a token is stored. Invariant: a token is redeemable once, only in the zone it was issued for,
//! and only until it expires; redeeming never bypasses the ownership lock or the epoch fence.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::password::{hex, new_token, sha256};
use super::StoreError;

/// Issues and redeems transfer tokens.
pub trait TransferTokens: Send + Sync {
    /// A fresh token for `player_id` to enter `zone` within `ttl`.
    fn issue(&self, player_id: u64, zone: &str, ttl: Duration) -> Result<[u8; 32], StoreError>;
    /// The player a token admits into `zone`; `None` when unknown, expired, used, or for another zone.
    fn redeem(&self, token: &[u8], zone: &str) -> Result<Option<u64>, StoreError>;
}

/// Tokens in process memory (a single process: tests and embedded mode, where zones cannot share them anyway).
#[derive(Default)]
pub struct MemoryTransferTokens {
    tokens: Mutex<HashMap<[u8; 32], (u64, String, Instant)>>,
}

impl TransferTokens for MemoryTransferTokens {
    fn issue(&self, player_id: u64, zone: &str, ttl: Duration) -> Result<[u8; 32], StoreError> {
        let (token, hash) = new_token();
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        tokens.retain(|_, t| t.2 > now);
        tokens.insert(hash, (player_id, zone.to_owned(), now + ttl));
        Ok(token)
    }

    fn redeem(&self, token: &[u8], zone: &str) -> Result<Option<u64>, StoreError> {
        let hash = sha256(token);
        let entry = self.tokens.lock().remove(&hash);
        Ok(entry.filter(|(_, z, exp)| z == zone && *exp > Instant::now()).map(|(p, _, _)| p))
    }
}

/// Tokens in Redis, shared by every zone: `SET {prefix}:transfer:{sha256} "{player}:{zone}" EX ttl`, redeemed
/// with `GETDEL` so two zones can never both accept one token.
pub struct RedisTransferTokens {
    pool: r2d2::Pool<redis::Client>,
    prefix: String,
}

impl RedisTransferTokens {
    /// Over a Redis at `url`.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("redis: {e}"));
        let client = redis::Client::open(url).map_err(|e| unavailable(&e))?;
        let pool = r2d2::Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(1))
            .build(client)
            .map_err(|e| unavailable(&e))?;
        Ok(Self { pool, prefix: prefix.to_owned() })
    }

    fn key(&self, hash: &[u8; 32]) -> String {
        format!("{}:transfer:{}", self.prefix, hex(hash))
    }
}

impl TransferTokens for RedisTransferTokens {
    fn issue(&self, player_id: u64, zone: &str, ttl: Duration) -> Result<[u8; 32], StoreError> {
        let (token, hash) = new_token();
        let mut conn = self.pool.get().map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let secs = ttl.as_secs().max(1);
        redis::cmd("SET")
            .arg(self.key(&hash))
            .arg(format!("{player_id}:{zone}"))
            .arg("EX")
            .arg(secs)
            .query::<()>(&mut *conn)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        Ok(token)
    }

    fn redeem(&self, token: &[u8], zone: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = self.pool.get().map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let value: Option<String> = redis::cmd("GETDEL")
            .arg(self.key(&sha256(token)))
            .query(&mut *conn)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        Ok(value.and_then(|v| {
            let (player, for_zone) = v.split_once(':')?;
            (for_zone == zone).then(|| player.parse().ok()).flatten()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract, for any implementation.
    pub(crate) fn contract(t: &dyn TransferTokens) {
        let token = t.issue(7, "dark-forest", Duration::from_secs(30)).unwrap();
        assert_eq!(t.redeem(&token, "starter-vale").unwrap(), None, "wrong zone");
        let token = t.issue(7, "dark-forest", Duration::from_secs(30)).unwrap();
        assert_eq!(t.redeem(&token, "dark-forest").unwrap(), Some(7));
        assert_eq!(t.redeem(&token, "dark-forest").unwrap(), None, "one use only");
        assert_eq!(t.redeem(b"forged", "dark-forest").unwrap(), None);
    }

    #[test]
    fn memory_tokens_are_one_time_and_zone_bound() {
        contract(&MemoryTransferTokens::default());
    }

    #[test]
    #[ignore = "needs Redis: run scripts/test.sh"]
    fn redis_tokens_are_one_time_and_zone_bound() {
        let url = std::env::var("REALM_TEST_REDIS_URL").expect("REALM_TEST_REDIS_URL: run scripts/test.sh");
        let prefix = format!("transfer-test-{}", std::process::id());
        contract(&RedisTransferTokens::connect(&url, &prefix).unwrap());
    }
}
