//! What the worker pool offers the simulation: the account layer's operations as whole business steps.
//!
//! Each method is one job's work (see `crate::sim::jobs::Job`): the simulation thread decides *that* a player
//! is saved, handed to another zone or re-checked, and these methods decide *how*: which stores are written in
//! which order, what a lost lock means, which token a transfer login must present. They block (PostgreSQL,
//! Redis, argon2) and run on worker threads only.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::login::{LoginGrant, LoginService, Refusal};
use super::transfer::TransferTokens;
use super::{GrantOutcome, SaveOutcome, SaveRow, StoreError};
use crate::proto::LoginErrorReason;

/// How long a transfer token is valid: the client connects to the target zone at once.
pub const TRANSFER_TOKEN_TTL: Duration = Duration::from_secs(60);

/// The worker-side context of the simulation's jobs.
pub struct Backend {
    /// Accounts, ownership and persistence.
    pub login: LoginService,
    /// Zone-transfer tokens (shared by every zone when Redis is configured).
    pub transfers: Arc<dyn TransferTokens>,
    /// Browser login tokens (JWT).
    pub tokens: Arc<super::token::TokenSigner>,
}

/// A browser login's answer: a signed token and how long it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Its lifetime.
    pub ttl: Duration,
}

/// Why a hand-over to another zone failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOverError {
    /// Another zone owns the player now: never retry, never save.
    OwnershipLost,
    /// A backend failed; the player was not handed over (its progress may be saved for the target zone already,
    /// which is harmless: the next login spawns it there or at a spawn point).
    Failed,
}

/// One held ownership lock: player and lock token.
pub type HeldLock = (u64, String);

impl Backend {
    /// Enters by transfer: the token must be one this zone's portal peer issued for `username`'s player and this
    /// zone, unused and unexpired; then the player is claimed as by a password login.
    pub fn transfer_login(&self, token: &[u8], username: &str, zone: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        let refused = || Refusal {
            reason: LoginErrorReason::LoginErrorInvalidTransfer,
            message: "transfer token unknown, used, expired or for another zone".into(),
            retry_after: Duration::ZERO,
        };
        let player_id = match self.transfers.redeem(token, zone) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(refused()),
            Err(e) => {
                log::warn!("transfer redeem failed: {e}");
                return Err(Refusal {
                    reason: LoginErrorReason::LoginErrorServerBusy,
                    message: "try again shortly".into(),
                    retry_after: Duration::from_secs(2),
                });
            }
        };
        match self.login.accounts.find(username) {
            Ok(Some(a)) if a.id == player_id => self.login.claim(player_id, &a.username, ip),
            _ => Err(refused()),
        }
    }

    /// `POST /api/login` and `/api/register`: the password checked (or the account created) under the rules of
    /// the TLS login, and a single-use token answered; the player is claimed when the token opens `/ws`.
    pub fn issue_token(
        &self,
        username: &str,
        password: &str,
        register: bool,
        ip: IpAddr,
    ) -> Result<IssuedToken, Refusal> {
        let (id, name) = if register {
            (self.login.create_account(username, password, ip)?, username.to_owned())
        } else {
            self.login.authenticate(username, password, ip)?
        };
        let token = self.tokens.issue(id, &name, std::time::SystemTime::now());
        Ok(IssuedToken { token, ttl: self.tokens.ttl() })
    }

    /// `GET /ws?token=`: the token checked and used up, then the player claimed as by a password login. Any bad
    /// token (malformed, tampered, expired, for another zone, used already) answers the same refusal.
    pub fn token_login(&self, token: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        let claims = self.tokens.redeem(token, std::time::SystemTime::now()).map_err(|e| {
            log::info!("browser login token from {ip} refused: {e}");
            Refusal {
                reason: LoginErrorReason::LoginErrorInvalidToken,
                message: "login token invalid, expired or used: log in again".into(),
                retry_after: Duration::ZERO,
            }
        })?;
        let player_id = claims.player_id().unwrap_or_default();
        self.login.claim(player_id, &claims.name, ip)
    }

    /// Saves a batch (each row fenced by its epoch), then releases `release`'s locks: the players that left.
    /// A lock is released only after its player's data is stored, so no other zone can load stale progress.
    pub fn save(&self, rows: &[SaveRow], release: &[HeldLock]) -> Result<Vec<SaveOutcome>, StoreError> {
        let outcomes = self.login.players.save(rows)?;
        for (player_id, token) in release {
            self.release(*player_id, token);
        }
        Ok(outcomes)
    }

    /// Hands a player to another zone: saves it there (fenced), releases this zone's lock, issues a one-time
    /// token the target zone accepts.
    pub fn hand_over(&self, row: &SaveRow, lock_token: &str) -> Result<[u8; 32], HandOverError> {
        match self.login.players.save(std::slice::from_ref(row)) {
            Ok(o) if o.first() == Some(&SaveOutcome::Saved) => {}
            Ok(_) => return Err(HandOverError::OwnershipLost),
            Err(e) => {
                log::warn!("transfer save of player {} failed: {e}", row.player_id);
                return Err(HandOverError::Failed);
            }
        }
        self.release(row.player_id, lock_token);
        self.transfers.issue(row.player_id, &row.progress.zone, TRANSFER_TOKEN_TTL).map_err(|e| {
            log::warn!("transfer token for player {} not issued: {e}", row.player_id);
            HandOverError::Failed
        })
    }

    /// Extends every held lock by `ttl`; returns the players whose lock another zone holds now.
    ///
    /// A lock whose key is gone with nobody else holding it (the lock store restarted and forgot everything) is
    /// taken again. Either way the epoch fence keeps ownership single: a zone that re-took a lock after another
    /// claimed the player is still fenced off at its next save. With the backend down, play goes on: the fence
    /// still protects the data, and the next renewal tries again.
    pub fn renew_locks(&self, held: &[HeldLock], ttl: Duration) -> Vec<u64> {
        let locks = &self.login.locks;
        let mut lost = Vec::new();
        for (player_id, token) in held {
            match locks.extend(*player_id, token, ttl) {
                Ok(true) => {}
                Ok(false) => match locks.acquire(*player_id, token, ttl) {
                    Ok(true) => log::info!("re-acquired the ownership lock of player {player_id} (lock store lost it)"),
                    Ok(false) => lost.push(*player_id),
                    Err(e) => log::warn!("lock re-acquire failed: {e}"),
                },
                Err(e) => log::warn!("lock renewal failed: {e}"),
            }
        }
        lost
    }

    /// Gives a lock back (best effort: an unreleased lock expires after its TTL).
    pub fn release(&self, player_id: u64, token: &str) {
        if let Err(e) = self.login.locks.release(player_id, token) {
            log::warn!("lock release of player {player_id} failed (it expires by itself): {e}");
        }
    }

    /// Writes a looted item, fenced by the owner's epoch.
    pub fn grant_item(
        &self,
        player_id: u64,
        epoch: u64,
        item_kind: u32,
        quantity: u32,
    ) -> Result<GrantOutcome, StoreError> {
        self.login.players.grant_item(player_id, epoch, item_kind, quantity)
    }
}
