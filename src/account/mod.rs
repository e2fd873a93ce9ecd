//! Accounts, player ownership and persistence, as the worker pool sees them.
//!
//! Three traits hide where data lives: [`AccountStore`] (accounts, sessions, lockouts), [`PlayerStore`] (player
//! progress, claimed and saved under a fencing epoch) and [`OwnershipLocks`] (one zone per player: Redis in
//! production, a local table when embedded). The embedded implementations in [`memory`] back a bare
//! `cargo run`; the same contract tests run against every implementation.
//!
//! The invariant a reader must not break: **a save is only ever applied under the epoch its owner claimed**. A
//! claim bumps `owner_epoch`; a save carrying an older epoch changes nothing and reports
//! [`SaveOutcome::OwnershipLost`], and the caller must drop that session without retrying — a paused or
//! partitioned server can then never overwrite a newer owner's data.

pub mod backend;
pub mod login;
pub mod memory;
pub mod password;
pub mod token;
pub mod transfer;

use std::fmt;
use std::time::{Duration, SystemTime};

/// Why an account or persistence operation failed (the backend's own failure, not a refusal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend is unreachable or returned an error; the operation may be retried later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The username exists already.
    #[error("username taken")]
    UsernameTaken,
    /// No such player.
    #[error("no such player")]
    NotFound,
}

/// An account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Player id.
    pub id: u64,
    /// Username as registered.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Banned (until `ban_expires`, or forever when `None`).
    pub banned: bool,
    /// End of a temporary ban.
    pub ban_expires: Option<SystemTime>,
    /// Consecutive failed logins.
    pub failed_logins: u32,
    /// Locked out until then.
    pub locked_until: Option<SystemTime>,
}

impl fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("banned", &self.banned)
            .field("failed_logins", &self.failed_logins)
            .finish_non_exhaustive()
    }
}

impl AccountRecord {
    /// Whether a ban is in force at `now`.
    pub fn is_banned(&self, now: SystemTime) -> bool {
        self.banned && self.ban_expires.is_none_or(|until| until > now)
    }
}

/// Accounts and login sessions.
pub trait AccountStore: Send + Sync {
    /// Creates an account; [`StoreError::UsernameTaken`] when the (case-insensitive) name exists.
    fn create(&self, username: &str, password_hash: &str) -> Result<u64, StoreError>;
    /// Finds an account by case-insensitive username.
    fn find(&self, username: &str) -> Result<Option<AccountRecord>, StoreError>;
    /// Counts a failed login; locks the account for `lock_for` once `lock_after` failures are reached.
    fn record_failure(&self, id: u64, lock_after: u32, lock_for: Duration) -> Result<(), StoreError>;
    /// Clears failures after a successful login.
    fn record_success(&self, id: u64) -> Result<(), StoreError>;
    /// Stores a login session: only the SHA-256 of its token.
    fn insert_session(
        &self,
        player_id: u64,
        token_hash: [u8; 32],
        expires: SystemTime,
        ip: &str,
    ) -> Result<(), StoreError>;
    /// Whether a session with this token hash exists and has not expired (compared in constant time).
    fn session_valid(&self, player_id: u64, token_hash: [u8; 32]) -> Result<bool, StoreError>;
    /// Whether the account logged in successfully from `ip` within the last `within` (its owner's usual
    /// addresses: an account lockout triggered by strangers does not apply to them).
    fn logged_in_from(&self, player_id: u64, ip: &str, within: Duration) -> Result<bool, StoreError>;
}

/// A player's persistent game state.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Zone the player was last in.
    pub zone: String,
    /// Position there.
    pub pos: (f32, f32),
    /// Level.
    pub level: u32,
    /// Experience.
    pub xp: u64,
    /// Hit points.
    pub hp: i32,
}

/// What claiming a player gives its new owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The new fencing epoch; every save must carry it.
    pub epoch: u64,
    /// Saved state, `None` for a new player.
    pub progress: Option<Progress>,
}

/// One player in a save batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveRow {
    /// Player.
    pub player_id: u64,
    /// Epoch the saver claimed.
    pub epoch: u64,
    /// State to write.
    pub progress: Progress,
}

/// What happened to one row of a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Written.
    Saved,
    /// Another owner claimed the player since: nothing was written; drop the session, never retry.
    OwnershipLost,
}

/// An item a player owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedItem {
    /// Globally unique id (a duplicated item would show as two rows with one id: impossible by construction).
    pub item_id: u64,
    /// Item type.
    pub item_kind: u32,
    /// Stack size.
    pub quantity: u32,
}

/// What happened to an item grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Written, with this id.
    Granted(u64),
    /// Another owner claimed the player since: nothing written.
    OwnershipLost,
}

/// Player progress with fencing.
pub trait PlayerStore: Send + Sync {
    /// Gives an item at once (loot, trades: valuable events are never batched), fenced by `epoch`.
    fn grant_item(&self, player_id: u64, epoch: u64, item_kind: u32, quantity: u32)
        -> Result<GrantOutcome, StoreError>;
    /// Everything the player owns.
    fn inventory(&self, player_id: u64) -> Result<Vec<OwnedItem>, StoreError>;
    /// Claims `player_id` for `zone`: bumps the epoch and returns it with the saved state.
    fn claim(&self, player_id: u64, zone: &str) -> Result<Claim, StoreError>;
    /// Saves every row whose epoch is still current, in one batch; one outcome per row, in order.
    fn save(&self, rows: &[SaveRow]) -> Result<Vec<SaveOutcome>, StoreError>;
    /// Current epoch (tests and diagnostics).
    fn epoch(&self, player_id: u64) -> Result<u64, StoreError>;
    /// Saved state without claiming (tests and diagnostics).
    fn load(&self, player_id: u64) -> Result<Option<Progress>, StoreError>;
}

/// "One player, one zone": fast exclusion in front of the epoch fence.
pub trait OwnershipLocks: Send + Sync {
    /// Takes the lock for `player_id` with `token` for `ttl`; false when someone else holds it.
    fn acquire(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Extends a lock we hold; false when we no longer hold it (expired and taken, or released).
    fn extend(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Releases a lock we hold; false when we did not hold it.
    fn release(&self, player_id: u64, token: &str) -> Result<bool, StoreError>;
}

pub mod contract;

#[cfg(test)]
mod tests {
    use super::memory::*;

    #[test]
    fn embedded_backends_honour_the_contract() {
        super::contract::accounts(&MemoryAccounts::default(), "alice").unwrap();
        super::contract::players(&MemoryPlayers::default(), 7).unwrap();
        super::contract::locks(&LocalLocks::default(), 7).unwrap();
    }
}
