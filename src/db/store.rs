//! PostgreSQL behind the account module's storage traits ([`crate::account::AccountStore`],
//! [`crate::account::PlayerStore`]), so the login and save paths run unchanged on the embedded store or on the
//! real databases; the same contract (`crate::account::contract`) is checked against both (`tests/db_data.rs`).
//!
//! Invariant: a save row is reported [`SaveOutcome::Saved`] only if PostgreSQL returned its exact
//! `(player_id, owner_epoch)` from the fenced batch; everything else is `OwnershipLost` (or the whole call fails
//! as `Unavailable` when a shard could not be reached, and the caller retries the batch: re-saving under the same
//! epoch is idempotent).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ops::{NewItem, PlayerSave, Spawn};
use super::{Database, DbError};
use crate::account::password::constant_time_eq;
use crate::account::{
    AccountRecord, AccountStore, Claim, GrantOutcome, OwnedItem, PlayerStore, Progress, SaveOutcome, SaveRow,
    StoreError,
};

fn unavailable(e: DbError) -> StoreError {
    match e {
        DbError::UsernameTaken => StoreError::UsernameTaken,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Accounts and sessions on the primary.
#[derive(Debug, Clone)]
pub struct PgAccounts {
    db: Arc<Database>,
    /// "Has this player logged in from this address lately?" (the lockout's trusted-address check), by player and
    /// address. Every failed login against an existing account asks it, so a password-guessing flood against one
    /// account would otherwise cost a query per guess. A yes stays true for days; a no turns into a yes only when
    /// the player logs in from that address, which invalidates the entry here (another zone's login is seen
    /// within the TTL).
    trusted: Option<Arc<crate::cache::Cache<(u64, String), bool>>>,
}

/// Entries and lifetime of the trusted-address cache.
const TRUSTED_CACHE: crate::cache::CacheConfig =
    crate::cache::CacheConfig { capacity: 10_000, ttl: Duration::from_secs(30) };

impl PgAccounts {
    /// Over `db`.
    pub fn new(db: Arc<Database>) -> PgAccounts {
        let trusted = db.caches().cache::<(u64, String), bool>("trusted_addresses", TRUSTED_CACHE).ok();
        PgAccounts { db, trusted }
    }
}

impl AccountStore for PgAccounts {
    fn create(&self, username: &str, password_hash: &str) -> Result<u64, StoreError> {
        self.db.create_account(username, password_hash).map_err(unavailable)
    }

    fn find(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let found = self.db.find_account(username).map_err(unavailable)?;
        Ok(found.map(|a| AccountRecord {
            id: a.id,
            username: a.username,
            password_hash: a.password_hash,
            banned: a.banned,
            ban_expires: a.ban_expires,
            failed_logins: a.failed_logins,
            locked_until: a.locked_until,
        }))
    }

    fn record_failure(&self, id: u64, lock_after: u32, lock_for: Duration) -> Result<(), StoreError> {
        match self.db.record_login_failure(id, lock_after, lock_for).map_err(unavailable)? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound),
        }
    }

    fn record_success(&self, id: u64) -> Result<(), StoreError> {
        self.db.reset_login_failures(id).map_err(unavailable)
    }

    fn insert_session(
        &self,
        player_id: u64,
        token_hash: [u8; 32],
        expires: SystemTime,
        ip: &str,
    ) -> Result<(), StoreError> {
        let ttl = expires.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        self.db.insert_session(player_id, &token_hash, ttl, Some(ip), None).map_err(unavailable)?;
        if let Some(c) = &self.trusted {
            c.invalidate(&(player_id, ip.to_owned()));
        }
        Ok(())
    }

    fn logged_in_from(&self, player_id: u64, ip: &str, within: Duration) -> Result<bool, StoreError> {
        let key = (player_id, ip.to_owned());
        if let Some(known) = self.trusted.as_ref().and_then(|c| c.get(&key)) {
            return Ok(known);
        }
        let trusted = self.db.logged_in_from(player_id, ip, within).map_err(unavailable)?;
        if let Some(c) = &self.trusted {
            c.insert(key, trusted);
        }
        Ok(trusted)
    }

    fn session_valid(&self, player_id: u64, token_hash: [u8; 32]) -> Result<bool, StoreError> {
        let found = self.db.find_session(&token_hash).map_err(unavailable)?;
        Ok(found.is_some_and(|s| s.player_id == player_id && constant_time_eq(&s.token_hash, &token_hash)))
    }
}

/// Player progress on the player's shard, fenced by `owner_epoch`.
#[derive(Debug, Clone)]
pub struct PgPlayers {
    db: Arc<Database>,
    spawn_health: i32,
}

impl PgPlayers {
    /// Over `db`; a claim that creates a player's row stores `spawn_health` until the first save.
    pub fn new(db: Arc<Database>, spawn_health: i32) -> PgPlayers {
        PgPlayers { db, spawn_health }
    }
}

fn to_progress(p: &super::ops::Progress) -> Progress {
    Progress {
        zone: p.zone.clone(),
        pos: (p.pos_x.unwrap_or(0.0), p.pos_y.unwrap_or(0.0)),
        level: u32::try_from(p.level).unwrap_or(0),
        xp: u64::try_from(p.experience).unwrap_or(0),
        hp: p.health,
    }
}

impl PlayerStore for PgPlayers {
    fn grant_item(
        &self,
        player_id: u64,
        epoch: u64,
        item_kind: u32,
        quantity: u32,
    ) -> Result<GrantOutcome, StoreError> {
        let ids = self.db.allocate_item_ids(1).map_err(unavailable)?;
        let item_id = *ids.first().ok_or_else(|| StoreError::Unavailable("no item id allocated".into()))?;
        let item = NewItem {
            item_id,
            item_kind: i32::try_from(item_kind).unwrap_or(i32::MAX),
            quantity: i32::try_from(quantity).unwrap_or(i32::MAX),
        };
        match self.db.insert_item(player_id, epoch, &item) {
            Ok(()) => Ok(GrantOutcome::Granted(item_id)),
            Err(DbError::OwnershipLost { .. }) => Ok(GrantOutcome::OwnershipLost),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn inventory(&self, player_id: u64) -> Result<Vec<OwnedItem>, StoreError> {
        let items = self.db.load_inventory(player_id).map_err(unavailable)?;
        Ok(items
            .into_iter()
            .map(|i| OwnedItem {
                item_id: i.item_id,
                item_kind: i.item_kind.max(0) as u32,
                quantity: i.quantity.max(0) as u32,
            })
            .collect())
    }

    fn claim(&self, player_id: u64, zone: &str) -> Result<Claim, StoreError> {
        let spawn = Spawn { zone: zone.to_owned(), pos_x: 0.0, pos_y: 0.0, health: self.spawn_health };
        let c = self.db.claim_player(player_id, zone, &spawn).map_err(unavailable)?;
        // A row the claim just created holds placeholders, not saved progress.
        Ok(Claim { epoch: c.epoch, progress: (!c.created).then(|| to_progress(&c.progress)) })
    }

    fn save(&self, rows: &[SaveRow]) -> Result<Vec<SaveOutcome>, StoreError> {
        let saves: Vec<PlayerSave> = rows
            .iter()
            .map(|r| PlayerSave {
                player_id: r.player_id,
                owner_epoch: r.epoch,
                zone: r.progress.zone.clone(),
                pos_x: r.progress.pos.0,
                pos_y: r.progress.pos.1,
                level: i32::try_from(r.progress.level).unwrap_or(i32::MAX),
                experience: i64::try_from(r.progress.xp).unwrap_or(i64::MAX),
                health: r.progress.hp,
            })
            .collect();
        let mut outcome = self.db.save_players(&saves).map_err(unavailable)?;
        if let Some(f) = outcome.failed.pop() {
            return Err(StoreError::Unavailable(format!("shard-{}: {}", f.shard, f.error)));
        }
        let mut written = outcome.saved_rows;
        written.sort_unstable();
        Ok(rows
            .iter()
            .map(|r| {
                if written.binary_search(&(r.player_id, r.epoch)).is_ok() {
                    SaveOutcome::Saved
                } else {
                    SaveOutcome::OwnershipLost
                }
            })
            .collect())
    }

    fn epoch(&self, player_id: u64) -> Result<u64, StoreError> {
        match self.db.load_progress_uncached(player_id).map_err(unavailable)? {
            Some(p) => Ok(p.owner_epoch),
            None => Err(StoreError::NotFound),
        }
    }

    fn load(&self, player_id: u64) -> Result<Option<Progress>, StoreError> {
        Ok(self.db.load_progress_uncached(player_id).map_err(unavailable)?.map(|p| to_progress(&p)))
    }
}
