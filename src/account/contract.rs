//! The contract every backend honours; run against the embedded backends here and against PostgreSQL/Redis in
//! the integration tests (`tests/db_data.rs`, `tests/lock_redis.rs`).

use std::time::Duration;

use super::{AccountStore, GrantOutcome, OwnershipLocks, PlayerStore, Progress, SaveOutcome, SaveRow, StoreError};

fn progress(level: u32) -> Progress {
    Progress { zone: "z".into(), pos: (1.0, 2.0), level, xp: 10, hp: 50 }
}

/// Accounts: create, case-insensitive uniqueness, lookups, failures, sessions.
pub fn accounts(store: &dyn AccountStore, name: &str) -> Result<(), String> {
    let id = store.create(name, "$argon2id$hash").map_err(|e| e.to_string())?;
    match store.create(&name.to_uppercase(), "x") {
        Err(StoreError::UsernameTaken) => {}
        other => return Err(format!("duplicate (case-insensitive) username accepted: {other:?}")),
    }
    let found = store.find(&name.to_uppercase()).map_err(|e| e.to_string())?.ok_or("account not found")?;
    if found.id != id || found.password_hash != "$argon2id$hash" {
        return Err(format!("found the wrong account: {found:?}"));
    }
    if store.find(&format!("{name}-nobody")).map_err(|e| e.to_string())?.is_some() {
        return Err("found an account that does not exist".into());
    }
    for _ in 0..3 {
        store.record_failure(id, 3, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    }
    let locked = store.find(name).map_err(|e| e.to_string())?.ok_or("gone")?;
    if locked.locked_until.is_none() {
        return Err("3 failures with lock_after = 3 did not lock".into());
    }
    store.record_success(id).map_err(|e| e.to_string())?;
    if store.find(name).map_err(|e| e.to_string())?.ok_or("gone")?.locked_until.is_some() {
        return Err("success did not clear the lock".into());
    }
    let (_, hash) = super::password::new_token();
    store
        .insert_session(id, hash, std::time::SystemTime::now() + Duration::from_secs(60), "127.0.0.1")
        .map_err(|e| e.to_string())?;
    if !store.session_valid(id, hash).map_err(|e| e.to_string())? {
        return Err("stored session not found".into());
    }
    let day = Duration::from_secs(86_400);
    if !store.logged_in_from(id, "127.0.0.1", day).map_err(|e| e.to_string())? {
        return Err("the address of a stored session is not known".into());
    }
    if store.logged_in_from(id, "192.0.2.9", day).map_err(|e| e.to_string())? {
        return Err("an address never logged in from is known".into());
    }
    let mut other = hash;
    other[0] ^= 1;
    if store.session_valid(id, other).map_err(|e| e.to_string())? {
        return Err("a different token hash matched".into());
    }
    Ok(())
}

/// Progress: claims bump the epoch; saves under an old epoch change nothing and report ownership lost.
pub fn players(store: &dyn PlayerStore, player_id: u64) -> Result<(), String> {
    let first = store.claim(player_id, "zone-a").map_err(|e| e.to_string())?;
    if first.progress.is_some() {
        return Err("a new player has saved progress".into());
    }
    let saved =
        store.save(&[SaveRow { player_id, epoch: first.epoch, progress: progress(2) }]).map_err(|e| e.to_string())?;
    if saved != vec![SaveOutcome::Saved] {
        return Err(format!("owner's save refused: {saved:?}"));
    }
    let second = store.claim(player_id, "zone-b").map_err(|e| e.to_string())?;
    if second.epoch <= first.epoch || second.progress != Some(progress(2)) {
        return Err(format!("claim did not bump the epoch or lost data: {first:?} -> {second:?}"));
    }
    // The old owner wakes up and saves: fenced off, nothing written.
    let stale = store
        .save(&[
            SaveRow { player_id, epoch: first.epoch, progress: progress(99) },
            SaveRow { player_id, epoch: second.epoch, progress: progress(3) },
        ])
        .map_err(|e| e.to_string())?;
    if stale != vec![SaveOutcome::OwnershipLost, SaveOutcome::Saved] {
        return Err(format!("fencing failed: {stale:?}"));
    }
    if store.load(player_id).map_err(|e| e.to_string())? != Some(progress(3)) {
        return Err("the stale save overwrote the new owner's data".into());
    }
    if store.epoch(player_id).map_err(|e| e.to_string())? != second.epoch {
        return Err("epoch changed by a save".into());
    }
    // Items: granted at once under the current epoch, refused under an old one, ids unique.
    let a = store.grant_item(player_id, second.epoch, 3, 1).map_err(|e| e.to_string())?;
    let b = store.grant_item(player_id, second.epoch, 3, 2).map_err(|e| e.to_string())?;
    let stale = store.grant_item(player_id, first.epoch, 9, 1).map_err(|e| e.to_string())?;
    let (GrantOutcome::Granted(ia), GrantOutcome::Granted(ib)) = (a, b) else {
        return Err(format!("owner's item grants refused: {a:?} {b:?}"));
    };
    if ia == ib || stale != GrantOutcome::OwnershipLost {
        return Err(format!("item ids {ia} {ib}, stale grant {stale:?}"));
    }
    let inventory = store.inventory(player_id).map_err(|e| e.to_string())?;
    if inventory.len() != 2 || !inventory.iter().any(|i| i.item_id == ia && i.quantity == 1) {
        return Err(format!("inventory wrong: {inventory:?}"));
    }
    Ok(())
}

/// Locks: exclusive, owner-only extend/release, expiry.
pub fn locks(locks: &dyn OwnershipLocks, player_id: u64) -> Result<(), String> {
    let ttl = Duration::from_millis(300);
    let e = |e: StoreError| e.to_string();
    if !locks.acquire(player_id, "a", ttl).map_err(e)? {
        return Err("free lock not acquired".into());
    }
    if locks.acquire(player_id, "b", ttl).map_err(e)? {
        return Err("held lock acquired by another".into());
    }
    if locks.extend(player_id, "b", ttl).map_err(e)? || locks.release(player_id, "b").map_err(e)? {
        return Err("non-owner extended or released".into());
    }
    if !locks.extend(player_id, "a", ttl).map_err(e)? {
        return Err("owner could not extend".into());
    }
    std::thread::sleep(ttl + Duration::from_millis(150));
    if !locks.acquire(player_id, "b", ttl).map_err(e)? {
        return Err("expired lock not acquirable".into());
    }
    if locks.extend(player_id, "a", ttl).map_err(e)? {
        return Err("old owner extended a lock it lost".into());
    }
    if !locks.release(player_id, "b").map_err(e)? || !locks.acquire(player_id, "c", ttl).map_err(e)? {
        return Err("release did not free the lock".into());
    }
    locks.release(player_id, "c").map_err(e)?;
    Ok(())
}
