//! `ShardManager`: which database holds a player's data (player_progress, inventory_items, event logs).
//!
//! # Scheme: fixed virtual buckets, placed by jump consistent hash
//!
//! `player_id -> bucket -> shard`:
//! 1. `bucket = mix64(player_id) % 1024` ([`BUCKETS`]; `mix64` is the SplitMix64 finalizer, so sequential ids
//!    spread evenly). The bucket of a player never changes.
//! 2. `shard = jump_consistent_hash(bucket, shard_count)` (Lamping & Veach, 2014).
//!
//! Jump hash has the minimal-movement property: going from `n` to `n + 1` shards moves a bucket only from an old
//! shard to the NEW one, and moves about `1 / (n + 1)` of the buckets (2 -> 3 shards: about a third), whereas the
//! seeds' `id % n` moved about `n / (n + 1)` of all keys. Buckets make that movement a unit you can copy: a
//! resharding tool moves whole buckets, never individual keys.
//!
//! # How to reshard (add a shard)
//!
//! Shards are only ever appended at the end of `database.shard_urls` (jump hash has no way to remove one from the
//! middle; to retire a shard, migrate its buckets away and keep its slot pointing at a database that has them).
//! 1. Create the new database and run `realm-server migrate` with the new URL appended to `database.shard_urls`.
//! 2. [`moved_buckets`]`(n, n + 1)` lists the buckets that change shard; all of them move to shard `n`.
//! 3. Stop the zones (or drain the players of those buckets: nothing of theirs may be online), then for each moved
//!    bucket copy its rows (`player_progress`, `inventory_items`; event logs may stay behind, they are history)
//!    from the old shard to shard `n`, selecting rows whose [`bucket_of`]`(player_id)` is the bucket, and delete
//!    them from the old shard in the same maintenance window.
//! 4. Deploy every zone with the new `database.shard_urls` at once. Because every save is fenced by
//!    `owner_epoch`, a straggler still writing to the old shard writes to rows that no longer exist (0 rows:
//!    OwnershipLost) instead of silently forking a player.
//!
//! Invariant: [`mix64`], [`BUCKETS`] and [`jump_consistent_hash`] must never change for a deployed world;
//! changing any of them silently moves players to shards that do not hold their data.

use std::sync::Arc;

use super::pool::Pool;

/// Number of virtual buckets. Fixed for the lifetime of a world.
pub const BUCKETS: u32 = 1024;

/// SplitMix64's finalizer: a bijective 64-bit mix, so sequential player ids land in unrelated buckets.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The bucket of a player.
pub fn bucket_of(player_id: u64) -> u32 {
    // The remainder is < BUCKETS (1024): it fits u32.
    (mix64(player_id) % u64::from(BUCKETS)) as u32
}

/// Jump consistent hash: the bucket in `0..buckets` of `key`. `buckets` must be at least 1 (0 is treated as 1).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let n = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (b + 1) * 2^31 / ((key >> 33) + 1), computed in floating point as in the paper.
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    // 0 <= b < n <= u32::MAX.
    b as u32
}

/// The shard (index) of a player when there are `shards` shards.
pub fn shard_for(player_id: u64, shards: usize) -> usize {
    let n = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    jump_consistent_hash(u64::from(bucket_of(player_id)), n) as usize
}

/// Buckets whose shard differs between `old` and `new` shard counts (what a reshard must copy).
pub fn moved_buckets(old: usize, new: usize) -> Vec<u32> {
    let (o, n) = (u32::try_from(old.max(1)).unwrap_or(u32::MAX), u32::try_from(new.max(1)).unwrap_or(u32::MAX));
    (0..BUCKETS).filter(|&b| jump_consistent_hash(u64::from(b), o) != jump_consistent_hash(u64::from(b), n)).collect()
}

/// Maps players to shard pools. With no shards configured, the primary is the only shard.
#[derive(Debug)]
pub struct ShardManager {
    shards: Vec<Arc<Pool>>,
}

impl ShardManager {
    /// Over `shards` (at least one: [`super::pool::PoolManager::shards`] guarantees it).
    pub fn new(shards: Vec<Arc<Pool>>) -> ShardManager {
        ShardManager { shards }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// True when there are no shards (never, for a manager built by the facade).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Shard index of `player_id`.
    pub fn shard_of(&self, player_id: u64) -> usize {
        shard_for(player_id, self.shards.len())
    }

    /// The pool holding `player_id`'s data.
    pub fn pool_for(&self, player_id: u64) -> Option<&Arc<Pool>> {
        self.shards.get(self.shard_of(player_id))
    }

    /// Shard pool `i`.
    pub fn pool(&self, i: usize) -> Option<&Arc<Pool>> {
        self.shards.get(i)
    }

    /// Every shard pool.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn jump_hash_stays_in_range() {
        // Every key maps to 0 with one bucket, and always into range.
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 1), 0);
        for key in 0..1000u64 {
            assert!(jump_consistent_hash(key, 7) < 7);
        }
    }

    #[test]
    fn mapping_is_stable_for_a_deployed_world() {
        // Pinned values: if this fails, the mapping changed and players would be looked up on the wrong shard.
        let buckets: Vec<u32> = (1..=8).map(bucket_of).collect();
        assert_eq!(buckets, vec![485, 138, 240, 276, 476, 876, 788, 488]);
        let shards: Vec<u32> = (0..10).map(|k| jump_consistent_hash(k, 10)).collect();
        assert_eq!(shards, vec![0, 6, 6, 8, 1, 4, 9, 0, 4, 7]);
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn buckets_spread_evenly_over_two_shards() {
        let mut per = [0usize; 2];
        for id in 1..=20_000u64 {
            per[shard_for(id, 2)] += 1;
        }
        for n in per {
            assert!((9_000..=11_000).contains(&n), "{per:?}");
        }
    }

    #[test]
    fn growing_two_to_three_shards_moves_a_third_of_the_buckets_all_to_the_new_shard() {
        let moved = moved_buckets(2, 3);
        let frac = moved.len() as f64 / f64::from(BUCKETS);
        assert!((0.28..=0.39).contains(&frac), "moved {frac}");
        for b in moved {
            assert_eq!(jump_consistent_hash(u64::from(b), 3), 2);
        }
    }

    proptest! {
        #[test]
        fn adding_a_shard_moves_about_one_over_n_plus_one_of_the_keys(
            ids in proptest::collection::vec(any::<u64>(), 3000),
            n in 1usize..12,
        ) {
            let mut moved = 0usize;
            for &id in &ids {
                let (before, after) = (shard_for(id, n), shard_for(id, n + 1));
                if before != after {
                    prop_assert_eq!(after, n, "a key may only move to the new shard");
                    moved += 1;
                }
            }
            let frac = moved as f64 / ids.len() as f64;
            let expected = 1.0 / (n as f64 + 1.0);
            prop_assert!((frac - expected).abs() < 0.06, "n={} moved {} expected {}", n, frac, expected);
        }
    }
}
