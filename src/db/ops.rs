//! The typed game operations of [`Database`]: accounts and sessions (primary), ownership claim and fenced saves
//! (the player's shard), items and event logs. Each runs one registered statement (see
//! [`super::statements::STATEMENTS`]) on the right database.
//!
//! Invariant: every write to a player's rows on a shard carries the writer's `owner_epoch`, and 0 rows matched is
//! [`DbError::OwnershipLost`] (for a batch: the player is listed in [`SaveOutcome::lost`]). Never retry those.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use postgres::types::FromSql;
use postgres::Row;

use super::error::{from_db_id, to_db_id, DbError};
use super::statements::Conn;
use super::{Database, ReadConsistency};

/// Most rows per batched save statement (bounds the time row locks are held and the statement size).
pub const SAVE_BATCH_MAX: usize = 5_000;

fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize, statement: &'static str, pool: &str) -> Result<T, DbError> {
    row.try_get(i).map_err(|source| DbError::Query { statement, pool: pool.to_owned(), source })
}

fn unique_violation(e: &DbError) -> bool {
    e.sql_state() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// An account row, as login needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Player id.
    pub id: u64,
    /// Username as registered (case preserved).
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Banned now (a ban whose expiry passed is not).
    pub banned: bool,
    /// Why.
    pub ban_reason: Option<String>,
    /// Until when (`None` with `banned` = permanent).
    pub ban_expires: Option<SystemTime>,
    /// Failed logins since the last success.
    pub failed_logins: u32,
    /// Locked out until.
    pub locked_until: Option<SystemTime>,
    /// Locked out now (by the database clock).
    pub locked: bool,
}

/// After a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    /// Failures in a row now.
    pub failed_logins: u32,
    /// Lockout end, when this failure (or an earlier one) locked the account.
    pub locked_until: Option<SystemTime>,
}

/// Ban state of a player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanStatus {
    /// Banned now.
    pub banned: bool,
    /// Why.
    pub reason: Option<String>,
    /// Until when.
    pub expires: Option<SystemTime>,
}

/// A login session (the token itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: u64,
    /// Player.
    pub player_id: u64,
    /// SHA-256 of the token (compare in constant time).
    pub token_hash: Vec<u8>,
    /// Expiry.
    pub expires_at: SystemTime,
}

/// Where a brand-new player starts (used when a claim creates the progress row).
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    /// Zone name.
    pub zone: String,
    /// Position.
    pub pos_x: f32,
    /// Position.
    pub pos_y: f32,
    /// Starting health.
    pub health: i32,
}

/// A player's saved state (`player_progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Player.
    pub player_id: u64,
    /// Zone the player is in.
    pub zone: String,
    /// Position (`None` = spawn point).
    pub pos_x: Option<f32>,
    /// Position.
    pub pos_y: Option<f32>,
    /// Level.
    pub level: i32,
    /// Experience.
    pub experience: i64,
    /// Health.
    pub health: i32,
    /// Fencing epoch of the current owner.
    pub owner_epoch: u64,
    /// Zone that owns the player now (`None` = released).
    pub owner_zone: Option<String>,
}

/// A successful claim: this server now owns the player with `epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The new fencing epoch; pass it to every save.
    pub epoch: u64,
    /// The player's state as of the claim.
    pub progress: Progress,
    /// The progress row did not exist and was created from the spawn.
    pub created: bool,
}

/// One dirty player to save, with the epoch this server holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerSave {
    /// Player.
    pub player_id: u64,
    /// Epoch from [`Claim::epoch`].
    pub owner_epoch: u64,
    /// Zone.
    pub zone: String,
    /// Position.
    pub pos_x: f32,
    /// Position.
    pub pos_y: f32,
    /// Level.
    pub level: i32,
    /// Experience.
    pub experience: i64,
    /// Health.
    pub health: i32,
}

/// A shard whose batch failed (retry those players later; after repeated failure, kick them).
#[derive(Debug)]
pub struct ShardFailure {
    /// Shard index.
    pub shard: usize,
    /// Players not saved.
    pub players: Vec<u64>,
    /// Why.
    pub error: DbError,
}

/// Result of a batched save.
#[derive(Debug, Default)]
pub struct SaveOutcome {
    /// Players saved.
    pub saved: Vec<u64>,
    /// The `(player_id, owner_epoch)` pairs written: a row of the batch was written iff its pair is here.
    pub saved_rows: Vec<(u64, u64)>,
    /// Players with a row fenced out: another server owns them now. Drop their sessions; never retry.
    pub lost: Vec<u64>,
    /// Not saved because their shard failed (transient or not: see `error.is_transient()`).
    pub failed: Vec<ShardFailure>,
}

/// An item to add to a player's inventory; `item_id` comes from [`Database::allocate_item_ids`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewItem {
    /// Globally unique id.
    pub item_id: u64,
    /// Item type.
    pub item_kind: i32,
    /// Stack size (> 0).
    pub quantity: i32,
}

/// An inventory row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryItem {
    /// Id.
    pub item_id: u64,
    /// Type.
    pub item_kind: i32,
    /// Stack size.
    pub quantity: i32,
    /// When it was acquired.
    pub acquired_at: SystemTime,
}

/// One combat log row (stored on the actor's shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CombatEvent {
    /// Who acted.
    pub actor: u64,
    /// On whom.
    pub target: Option<u64>,
    /// Ability / event kind.
    pub kind: i32,
    /// Damage or healing.
    pub amount: i32,
}

/// One chat log row (stored on the sender's shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// Sender.
    pub actor: u64,
    /// Whisper target.
    pub target: Option<u64>,
    /// Channel (`say`, `zone`, `whisper`, ...).
    pub channel: String,
    /// Text.
    pub text: String,
}

fn progress_from_row(row: &Row, statement: &'static str, pool: &str) -> Result<Progress, DbError> {
    Ok(Progress {
        player_id: from_db_id(col(row, 0, statement, pool)?),
        zone: col(row, 1, statement, pool)?,
        pos_x: col(row, 2, statement, pool)?,
        pos_y: col(row, 3, statement, pool)?,
        level: col(row, 4, statement, pool)?,
        experience: col(row, 5, statement, pool)?,
        health: col(row, 6, statement, pool)?,
        owner_epoch: from_db_id(col(row, 7, statement, pool)?),
        owner_zone: col(row, 8, statement, pool)?,
    })
}

/// Fenced save of one player on `conn` (its shard). 0 rows = [`DbError::OwnershipLost`].
pub fn save_one(conn: &mut Conn<'_>, s: &PlayerSave) -> Result<(), DbError> {
    let (id, epoch) = (to_db_id(s.player_id)?, to_db_id(s.owner_epoch)?);
    let n =
        conn.execute("save_player", &[&id, &epoch, &s.zone, &s.pos_x, &s.pos_y, &s.level, &s.experience, &s.health])?;
    if n == 0 {
        return Err(DbError::OwnershipLost { player_id: s.player_id, epoch: s.owner_epoch });
    }
    Ok(())
}

/// Fenced save of many players on `conn` (one shard), one statement per [`SAVE_BATCH_MAX`] rows. Returns the
/// `(player_id, owner_epoch)` pairs written; a row whose pair is missing was fenced out. Rows are written in
/// player id order (a stable lock order, so concurrent batches cannot deadlock); a `(player, epoch)` listed twice
/// is written once, with its last entry. Rows of one player under different epochs are independent: at most one
/// epoch is current, so at most one of them is written.
pub fn save_batch(conn: &mut Conn<'_>, saves: &[PlayerSave]) -> Result<Vec<(u64, u64)>, DbError> {
    let mut last: HashMap<(u64, u64), usize> = HashMap::with_capacity(saves.len());
    for (i, s) in saves.iter().enumerate() {
        last.insert((s.player_id, s.owner_epoch), i);
    }
    let mut unique: Vec<&PlayerSave> = saves
        .iter()
        .enumerate()
        .filter(|(i, s)| last.get(&(s.player_id, s.owner_epoch)) == Some(i))
        .map(|(_, s)| s)
        .collect();
    unique.sort_by_key(|s| (s.player_id, s.owner_epoch));
    let mut saved = Vec::with_capacity(unique.len());
    for chunk in unique.chunks(SAVE_BATCH_MAX) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut epochs = Vec::with_capacity(chunk.len());
        for s in chunk {
            ids.push(to_db_id(s.player_id)?);
            epochs.push(to_db_id(s.owner_epoch)?);
        }
        let zones: Vec<&str> = chunk.iter().map(|s| s.zone.as_str()).collect();
        let xs: Vec<f32> = chunk.iter().map(|s| s.pos_x).collect();
        let ys: Vec<f32> = chunk.iter().map(|s| s.pos_y).collect();
        let levels: Vec<i32> = chunk.iter().map(|s| s.level).collect();
        let exp: Vec<i64> = chunk.iter().map(|s| s.experience).collect();
        let health: Vec<i32> = chunk.iter().map(|s| s.health).collect();
        let rows = conn.query("save_players_batch", &[&ids, &epochs, &zones, &xs, &ys, &levels, &exp, &health])?;
        let pool = conn.pool_name().to_owned();
        for row in &rows {
            let player: i64 = col(row, 0, "save_players_batch", &pool)?;
            let epoch: i64 = col(row, 1, "save_players_batch", &pool)?;
            saved.push((from_db_id(player), from_db_id(epoch)));
        }
    }
    Ok(saved)
}

impl Database {
    /// Registers an account; [`DbError::UsernameTaken`] when the name exists in any letter case.
    pub fn create_account(&self, username: &str, password_hash: &str) -> Result<u64, DbError> {
        let mut c = self.primary()?;
        match c.query_one("create_account", &[&username, &password_hash]) {
            Ok(row) => Ok(from_db_id(col(&row, 0, "create_account", c.pool_name())?)),
            Err(e) if unique_violation(&e) => Err(DbError::UsernameTaken),
            Err(e) => Err(e),
        }
    }

    /// The account called `username` (case-insensitive), from the primary.
    pub fn find_account(&self, username: &str) -> Result<Option<Account>, DbError> {
        const S: &str = "find_account_by_username";
        let mut c = self.primary()?;
        let Some(row) = c.query_opt(S, &[&username])? else { return Ok(None) };
        let pool = c.pool_name();
        let failed: i32 = col(&row, 6, S, pool)?;
        Ok(Some(Account {
            id: from_db_id(col(&row, 0, S, pool)?),
            username: col(&row, 1, S, pool)?,
            password_hash: col(&row, 2, S, pool)?,
            banned: col(&row, 3, S, pool)?,
            ban_reason: col(&row, 4, S, pool)?,
            ban_expires: col(&row, 5, S, pool)?,
            failed_logins: u32::try_from(failed).unwrap_or(0),
            locked_until: col(&row, 7, S, pool)?,
            locked: col(&row, 8, S, pool)?,
        }))
    }

    /// Counts a failed login; the `lockout_after`-th failure in a row locks the account for `lockout`.
    pub fn record_login_failure(
        &self,
        player_id: u64,
        lockout_after: u32,
        lockout: Duration,
    ) -> Result<Option<LoginFailure>, DbError> {
        const S: &str = "record_login_failure";
        let id = to_db_id(player_id)?;
        let after = i32::try_from(lockout_after).unwrap_or(i32::MAX);
        let mut c = self.primary()?;
        let Some(row) = c.query_opt(S, &[&id, &after, &lockout.as_secs_f64()])? else { return Ok(None) };
        let failed: i32 = col(&row, 0, S, c.pool_name())?;
        Ok(Some(LoginFailure {
            failed_logins: u32::try_from(failed).unwrap_or(0),
            locked_until: col(&row, 1, S, c.pool_name())?,
        }))
    }

    /// After a successful login: clears failures and the lockout, stamps `last_login`.
    pub fn reset_login_failures(&self, player_id: u64) -> Result<(), DbError> {
        self.primary()?.execute("reset_login_failures", &[&to_db_id(player_id)?])?;
        Ok(())
    }

    /// Bans a player (`None` = permanently). False when there is no such player.
    pub fn ban_player(&self, player_id: u64, reason: &str, duration: Option<Duration>) -> Result<bool, DbError> {
        let secs = duration.map(|d| d.as_secs_f64());
        Ok(self.primary()?.execute("ban_player", &[&to_db_id(player_id)?, &reason, &secs])? == 1)
    }

    /// Ban state of a player, from a replica when `consistency` allows (periodic re-checks of online players).
    pub fn ban_status(&self, player_id: u64, consistency: ReadConsistency) -> Result<Option<BanStatus>, DbError> {
        const S: &str = "ban_check";
        let mut c = self.read(consistency)?;
        let Some(row) = c.query_opt(S, &[&to_db_id(player_id)?])? else { return Ok(None) };
        let pool = c.pool_name();
        Ok(Some(BanStatus {
            banned: col(&row, 0, S, pool)?,
            reason: col(&row, 1, S, pool)?,
            expires: col(&row, 2, S, pool)?,
        }))
    }

    /// A player's username, from a replica when `consistency` allows (chat, inspection).
    pub fn player_name(&self, player_id: u64, consistency: ReadConsistency) -> Result<Option<String>, DbError> {
        let mut c = self.read(consistency)?;
        let Some(row) = c.query_opt("player_name_by_id", &[&to_db_id(player_id)?])? else { return Ok(None) };
        Ok(Some(col(&row, 0, "player_name_by_id", c.pool_name())?))
    }

    /// Stores a new session: only the SHA-256 of its token.
    pub fn insert_session(
        &self,
        player_id: u64,
        token_hash: &[u8; 32],
        ttl: Duration,
        ip_address: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<SessionRecord, DbError> {
        const S: &str = "insert_session";
        let mut c = self.primary()?;
        let hash: &[u8] = token_hash;
        let row = c.query_one(S, &[&to_db_id(player_id)?, &hash, &ttl.as_secs_f64(), &ip_address, &user_agent])?;
        Ok(SessionRecord {
            id: from_db_id(col(&row, 0, S, c.pool_name())?),
            player_id,
            token_hash: token_hash.to_vec(),
            expires_at: col(&row, 1, S, c.pool_name())?,
        })
    }

    /// Whether `player_id` logged in from `ip` within the last `within` (a session row was created from there).
    pub fn logged_in_from(&self, player_id: u64, ip: &str, within: Duration) -> Result<bool, DbError> {
        const S: &str = "session_from_address";
        let mut c = self.primary()?;
        let row = c.query_one(S, &[&to_db_id(player_id)?, &ip, &within.as_secs_f64()])?;
        col(&row, 0, S, c.pool_name())
    }

    /// The unexpired session whose token hashes to `token_hash`.
    pub fn find_session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, DbError> {
        const S: &str = "find_session_by_token_hash";
        let mut c = self.primary()?;
        let hash: &[u8] = token_hash;
        let Some(row) = c.query_opt(S, &[&hash])? else { return Ok(None) };
        let pool = c.pool_name();
        Ok(Some(SessionRecord {
            id: from_db_id(col(&row, 0, S, pool)?),
            player_id: from_db_id(col(&row, 1, S, pool)?),
            token_hash: col(&row, 2, S, pool)?,
            expires_at: col(&row, 3, S, pool)?,
        }))
    }

    /// Deletes a session (logout). True when it existed.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, DbError> {
        let hash: &[u8] = token_hash;
        Ok(self.primary()?.execute("delete_session", &[&hash])? > 0)
    }

    /// Deletes expired sessions; how many.
    pub fn delete_expired_sessions(&self) -> Result<u64, DbError> {
        self.primary()?.execute("delete_expired_sessions", &[])
    }

    /// Takes ownership of a player for `owner_zone`: bumps `owner_epoch` (creating the row from `spawn` if the
    /// player has none) and returns the new epoch with the player's state. Any save by a previous owner fails
    /// from now on.
    pub fn claim_player(&self, player_id: u64, owner_zone: &str, spawn: &Spawn) -> Result<Claim, DbError> {
        const S: &str = "claim_player";
        let mut c = self.shard_for(player_id)?;
        let row = c.query_one(
            S,
            &[&to_db_id(player_id)?, &owner_zone, &spawn.zone, &spawn.pos_x, &spawn.pos_y, &spawn.health],
        )?;
        let progress = progress_from_row(&row, S, c.pool_name())?;
        let created: bool = col(&row, 9, S, c.pool_name())?;
        self.progress_cache().invalidate(&player_id);
        Ok(Claim { epoch: progress.owner_epoch, progress, created })
    }

    /// A player's saved state (read-through cache; invalidated by claims and saves in this process, other
    /// processes' writes are bounded by the cache TTL). Use [`Database::claim_player`]'s result for authority.
    pub fn load_progress(&self, player_id: u64) -> Result<Option<Progress>, DbError> {
        if let Some(p) = self.progress_cache().get(&player_id) {
            return Ok(Some(p));
        }
        let p = self.load_progress_uncached(player_id)?;
        if let Some(p) = &p {
            self.progress_cache().insert(player_id, p.clone());
        }
        Ok(p)
    }

    /// A player's saved state straight from its shard (no cache).
    pub fn load_progress_uncached(&self, player_id: u64) -> Result<Option<Progress>, DbError> {
        let mut c = self.shard_for(player_id)?;
        let Some(row) = c.query_opt("load_progress", &[&to_db_id(player_id)?])? else { return Ok(None) };
        Ok(Some(progress_from_row(&row, "load_progress", c.pool_name())?))
    }

    /// Fenced save of one player (logout, zone transfer). [`DbError::OwnershipLost`] when fenced out.
    pub fn save_player(&self, save: &PlayerSave) -> Result<(), DbError> {
        let mut c = self.shard_for(save.player_id)?;
        let result = save_one(&mut c, save);
        self.progress_cache().invalidate(&save.player_id);
        result
    }

    /// Fenced save of many players: one batched statement per shard. Fenced-out players are in
    /// [`SaveOutcome::lost`]; a shard failure is reported per shard and does not stop the other shards.
    pub fn save_players(&self, saves: &[PlayerSave]) -> Result<SaveOutcome, DbError> {
        let mut by_shard: HashMap<usize, Vec<PlayerSave>> = HashMap::new();
        for s in saves {
            by_shard.entry(self.shards().shard_of(s.player_id)).or_default().push(s.clone());
        }
        let mut outcome = SaveOutcome::default();
        for (shard, group) in by_shard {
            let result = self.shard(shard).and_then(|mut c| save_batch(&mut c, &group));
            for s in &group {
                self.progress_cache().invalidate(&s.player_id);
            }
            match result {
                Ok(mut written) => {
                    written.sort_unstable();
                    let mut lost: Vec<u64> = group
                        .iter()
                        .filter(|s| written.binary_search(&(s.player_id, s.owner_epoch)).is_err())
                        .map(|s| s.player_id)
                        .collect();
                    lost.sort_unstable();
                    lost.dedup();
                    outcome.lost.extend(lost);
                    outcome.saved.extend(written.iter().map(|&(p, _)| p));
                    outcome.saved_rows.extend(written);
                }
                Err(error) => outcome.failed.push(ShardFailure {
                    shard,
                    players: group.iter().map(|s| s.player_id).collect(),
                    error,
                }),
            }
        }
        Ok(outcome)
    }

    /// Gives up ownership (logout): `owner_zone` is cleared if we still hold `epoch`.
    pub fn release_player(&self, player_id: u64, epoch: u64) -> Result<(), DbError> {
        let n = self.shard_for(player_id)?.execute("release_player", &[&to_db_id(player_id)?, &to_db_id(epoch)?])?;
        self.progress_cache().invalidate(&player_id);
        if n == 0 {
            return Err(DbError::OwnershipLost { player_id, epoch });
        }
        Ok(())
    }

    /// `n` fresh, globally unique item ids (from the primary's sequence).
    pub fn allocate_item_ids(&self, n: u32) -> Result<Vec<u64>, DbError> {
        let count = i32::try_from(n).unwrap_or(i32::MAX);
        let mut c = self.primary()?;
        let rows = c.query("allocate_item_ids", &[&count])?;
        rows.iter().map(|r| col::<i64>(r, 0, "allocate_item_ids", c.pool_name()).map(from_db_id)).collect()
    }

    /// Adds an item at once (loot, trades), fenced by the owner's epoch: [`DbError::OwnershipLost`] when fenced
    /// out, [`DbError::DuplicateItem`] when the id exists.
    pub fn insert_item(&self, player_id: u64, epoch: u64, item: &NewItem) -> Result<(), DbError> {
        let mut c = self.shard_for(player_id)?;
        let params = (to_db_id(item.item_id)?, to_db_id(player_id)?, to_db_id(epoch)?);
        match c.execute("insert_item", &[&params.0, &params.1, &params.2, &item.item_kind, &item.quantity]) {
            Ok(0) => Err(DbError::OwnershipLost { player_id, epoch }),
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(DbError::DuplicateItem { item_id: item.item_id }),
            Err(e) => Err(e),
        }
    }

    /// A player's inventory, by item id.
    pub fn load_inventory(&self, player_id: u64) -> Result<Vec<InventoryItem>, DbError> {
        const S: &str = "load_inventory";
        let mut c = self.shard_for(player_id)?;
        let rows = c.query(S, &[&to_db_id(player_id)?])?;
        let pool = c.pool_name();
        rows.iter()
            .map(|r| {
                Ok(InventoryItem {
                    item_id: from_db_id(col(r, 0, S, pool)?),
                    item_kind: col(r, 1, S, pool)?,
                    quantity: col(r, 2, S, pool)?,
                    acquired_at: col(r, 3, S, pool)?,
                })
            })
            .collect()
    }

    /// Appends combat log rows (each on its actor's shard); rows written.
    pub fn log_combat(&self, zone: &str, events: &[CombatEvent]) -> Result<u64, DbError> {
        let mut by_shard: HashMap<usize, Vec<&CombatEvent>> = HashMap::new();
        for e in events {
            by_shard.entry(self.shards().shard_of(e.actor)).or_default().push(e);
        }
        let mut n = 0;
        for (shard, group) in by_shard {
            let actors = group.iter().map(|e| to_db_id(e.actor)).collect::<Result<Vec<_>, _>>()?;
            let targets = group.iter().map(|e| e.target.map(to_db_id).transpose()).collect::<Result<Vec<_>, _>>()?;
            let kinds: Vec<i32> = group.iter().map(|e| e.kind).collect();
            let amounts: Vec<i32> = group.iter().map(|e| e.amount).collect();
            n += self.shard(shard)?.execute("insert_combat_log", &[&zone, &actors, &targets, &kinds, &amounts])?;
        }
        Ok(n)
    }

    /// Appends chat log rows (each on its sender's shard); rows written.
    pub fn log_chat(&self, zone: &str, lines: &[ChatLine]) -> Result<u64, DbError> {
        let mut by_shard: HashMap<usize, Vec<&ChatLine>> = HashMap::new();
        for l in lines {
            by_shard.entry(self.shards().shard_of(l.actor)).or_default().push(l);
        }
        let mut n = 0;
        for (shard, group) in by_shard {
            let actors = group.iter().map(|l| to_db_id(l.actor)).collect::<Result<Vec<_>, _>>()?;
            let targets = group.iter().map(|l| l.target.map(to_db_id).transpose()).collect::<Result<Vec<_>, _>>()?;
            let channels: Vec<&str> = group.iter().map(|l| l.channel.as_str()).collect();
            let texts: Vec<&str> = group.iter().map(|l| l.text.as_str()).collect();
            n += self.shard(shard)?.execute("insert_chat_log", &[&zone, &actors, &targets, &channels, &texts])?;
        }
        Ok(n)
    }
}
