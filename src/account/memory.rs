//! Embedded backends: accounts, player progress and ownership locks in process memory, behind the same traits
//! and contract tests as PostgreSQL and Redis. Used when no database is configured; nothing survives a restart
//! and nothing is shared between processes (so zone transfers need the real backends).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::{
    AccountRecord, AccountStore, Claim, GrantOutcome, OwnedItem, OwnershipLocks, PlayerStore, Progress, SaveOutcome,
    SaveRow, StoreError,
};

/// Accounts and sessions in memory.
#[derive(Default)]
pub struct MemoryAccounts {
    inner: Mutex<AccountsInner>,
}

#[derive(Default)]
struct AccountsInner {
    by_name: HashMap<String, u64>,
    accounts: HashMap<u64, AccountRecord>,
    sessions: Vec<(u64, [u8; 32], SystemTime)>,
    /// (player, address, when) of every successful login.
    logins: Vec<(u64, String, SystemTime)>,
    next_id: u64,
}

impl MemoryAccounts {
    /// Bans an account (tests, admin tooling).
    pub fn ban(&self, id: u64, until: Option<SystemTime>) {
        if let Some(a) = self.inner.lock().accounts.get_mut(&id) {
            a.banned = true;
            a.ban_expires = until;
        }
    }
}

impl AccountStore for MemoryAccounts {
    fn create(&self, username: &str, password_hash: &str) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock();
        let key = username.to_lowercase();
        if inner.by_name.contains_key(&key) {
            return Err(StoreError::UsernameTaken);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_name.insert(key, id);
        inner.accounts.insert(
            id,
            AccountRecord {
                id,
                username: username.to_owned(),
                password_hash: password_hash.to_owned(),
                banned: false,
                ban_expires: None,
                failed_logins: 0,
                locked_until: None,
            },
        );
        Ok(id)
    }

    fn find(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner.by_name.get(&username.to_lowercase()).and_then(|id| inner.accounts.get(id)).cloned())
    }

    fn record_failure(&self, id: u64, lock_after: u32, lock_for: Duration) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let a = inner.accounts.get_mut(&id).ok_or(StoreError::NotFound)?;
        a.failed_logins += 1;
        if a.failed_logins >= lock_after {
            a.locked_until = Some(SystemTime::now() + lock_for);
            a.failed_logins = 0;
        }
        Ok(())
    }

    fn record_success(&self, id: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let a = inner.accounts.get_mut(&id).ok_or(StoreError::NotFound)?;
        a.failed_logins = 0;
        a.locked_until = None;
        Ok(())
    }

    fn insert_session(
        &self,
        player_id: u64,
        token_hash: [u8; 32],
        expires: SystemTime,
        ip: &str,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let now = SystemTime::now();
        inner.sessions.retain(|s| s.2 > now);
        inner.sessions.push((player_id, token_hash, expires));
        match inner.logins.iter().position(|(p, a, _)| *p == player_id && a == ip) {
            Some(i) => inner.logins[i].2 = now,
            None => inner.logins.push((player_id, ip.to_owned(), now)),
        }
        Ok(())
    }

    fn logged_in_from(&self, player_id: u64, ip: &str, within: Duration) -> Result<bool, StoreError> {
        let since = SystemTime::now() - within;
        Ok(self.inner.lock().logins.iter().any(|(p, a, at)| *p == player_id && a == ip && *at >= since))
    }

    fn session_valid(&self, player_id: u64, token_hash: [u8; 32]) -> Result<bool, StoreError> {
        let inner = self.inner.lock();
        let now = SystemTime::now();
        Ok(inner
            .sessions
            .iter()
            .any(|(p, h, exp)| *p == player_id && *exp > now && super::password::constant_time_eq(h, &token_hash)))
    }
}

/// Player progress in memory, with the same epoch fencing as PostgreSQL.
#[derive(Default)]
pub struct MemoryPlayers {
    rows: Mutex<HashMap<u64, (u64, Option<Progress>)>>,
    items: Mutex<(u64, Vec<(u64, OwnedItem)>)>,
}

impl PlayerStore for MemoryPlayers {
    fn grant_item(
        &self,
        player_id: u64,
        epoch: u64,
        item_kind: u32,
        quantity: u32,
    ) -> Result<GrantOutcome, StoreError> {
        // Lock order: rows, then items (the only place both are held).
        let rows = self.rows.lock();
        if rows.get(&player_id).map(|r| r.0) != Some(epoch) {
            return Ok(GrantOutcome::OwnershipLost);
        }
        let mut items = self.items.lock();
        items.0 += 1;
        let item_id = items.0;
        items.1.push((player_id, OwnedItem { item_id, item_kind, quantity }));
        Ok(GrantOutcome::Granted(item_id))
    }

    fn inventory(&self, player_id: u64) -> Result<Vec<OwnedItem>, StoreError> {
        Ok(self.items.lock().1.iter().filter(|(p, _)| *p == player_id).map(|(_, i)| *i).collect())
    }

    fn claim(&self, player_id: u64, _zone: &str) -> Result<Claim, StoreError> {
        let mut rows = self.rows.lock();
        let row = rows.entry(player_id).or_insert((0, None));
        row.0 += 1;
        Ok(Claim { epoch: row.0, progress: row.1.clone() })
    }

    fn save(&self, batch: &[SaveRow]) -> Result<Vec<SaveOutcome>, StoreError> {
        let mut rows = self.rows.lock();
        Ok(batch
            .iter()
            .map(|r| match rows.get_mut(&r.player_id) {
                Some(row) if row.0 == r.epoch => {
                    row.1 = Some(r.progress.clone());
                    SaveOutcome::Saved
                }
                _ => SaveOutcome::OwnershipLost,
            })
            .collect())
    }

    fn epoch(&self, player_id: u64) -> Result<u64, StoreError> {
        Ok(self.rows.lock().get(&player_id).map_or(0, |r| r.0))
    }

    fn load(&self, player_id: u64) -> Result<Option<Progress>, StoreError> {
        Ok(self.rows.lock().get(&player_id).and_then(|r| r.1.clone()))
    }
}

/// Ownership locks for a single process.
#[derive(Default)]
pub struct LocalLocks {
    held: Mutex<HashMap<u64, (String, Instant)>>,
}

impl OwnershipLocks for LocalLocks {
    fn acquire(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut held = self.held.lock();
        let now = Instant::now();
        match held.get(&player_id) {
            Some((_, expires)) if *expires > now => Ok(false),
            _ => {
                held.insert(player_id, (token.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    fn extend(&self, player_id: u64, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut held = self.held.lock();
        let now = Instant::now();
        match held.get_mut(&player_id) {
            Some((t, expires)) if t == token && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release(&self, player_id: u64, token: &str) -> Result<bool, StoreError> {
        let mut held = self.held.lock();
        match held.get(&player_id) {
            Some((t, _)) if t == token => {
                held.remove(&player_id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
