//! The work the simulation hands to the worker pool, as data: a [`Job`] says what must happen, the account layer's
//! [`Backend`] says how, and the answer comes back through the inbound queue as a [`SimEvent`].
//!
//! Every job has exactly one answer. What it returns when it runs, or — when it panicked on its worker or could
//! not be queued at all — [`SimEvent::JobFailed`] carrying the job itself, so the session machine handles each
//! failure by kind (a save is retried, a transfer kicks, a renewal is tried again next tick) and never waits for an
//! answer that will not come.

use std::net::IpAddr;
use std::time::Duration;

use crate::account::backend::{Backend, HandOverError, HeldLock, IssuedToken};
use crate::account::login::{LoginGrant, Refusal};
use crate::account::{GrantOutcome, OwnedItem, SaveOutcome, SaveRow};
use crate::link::{Inbound, SessionId};

/// Why a save was made (decides what happens after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveReason {
    /// Periodic save of dirty players.
    Periodic,
    /// The players left (logout, disconnect, shutdown): release their locks after saving.
    Final,
}

/// How a session asks to enter the zone.
#[derive(Debug, Clone)]
pub enum LoginRequest {
    /// Username and password.
    Password {
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// A new account.
    Register {
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// A browser login token (`TokenLogin`, `GET /ws?token=`).
    Token {
        /// The JWT.
        token: String,
    },
    /// Arrival through a portal, with the token the previous zone issued.
    Transfer {
        /// Username.
        username: String,
        /// One-time token.
        token: Vec<u8>,
        /// This zone (the token must be for it).
        zone: String,
    },
}

/// A batch of players saved together.
#[derive(Debug, Clone)]
pub struct SaveBatch {
    /// Why.
    pub reason: SaveReason,
    /// The rows.
    pub rows: Vec<SaveRow>,
    /// Tries so far, this one included.
    pub attempt: u32,
    /// Locks to release once the rows are stored (`Final` batches).
    pub release: Vec<HeldLock>,
}

/// Work for the worker pool.
#[derive(Debug, Clone)]
pub enum Job {
    /// Log in, register or enter by transfer (argon2: the login lane).
    Login {
        /// Who asked.
        session: SessionId,
        /// From where.
        ip: IpAddr,
        /// How.
        request: LoginRequest,
    },
    /// Check a password (or create an account) and answer a browser login token (the login lane).
    IssueToken {
        /// The HTTP request's connection.
        session: SessionId,
        /// Its io thread.
        io: usize,
        /// From where.
        ip: IpAddr,
        /// `POST /api/register` rather than `/api/login`.
        register: bool,
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// Save players.
    Save(SaveBatch),
    /// Hand a player to another zone through a portal.
    HandOver {
        /// The session leaving.
        session: SessionId,
        /// The portal taken.
        portal: usize,
        /// The player, saved for the target zone.
        row: SaveRow,
        /// Its lock, released once saved.
        lock_token: String,
    },
    /// Extend the ownership locks of every player online.
    RenewLocks {
        /// The locks.
        held: Vec<HeldLock>,
        /// New time to live.
        ttl: Duration,
    },
    /// Give back a lock (a login that finished for a session that had left).
    Release(HeldLock),
    /// Write a looted item.
    GrantLoot {
        /// The looter's session.
        session: SessionId,
        /// The looter.
        player_id: u64,
        /// Its ownership epoch.
        epoch: u64,
        /// Item kind.
        item_kind: u32,
        /// How many.
        quantity: u32,
    },
}

/// Why a job gave no answer of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFailure {
    /// It panicked on its worker (logged and counted there).
    Panicked,
    /// Its queue was full, or the pool is stopping: it never ran.
    NotQueued,
}

/// Everything that reaches the simulation thread.
#[derive(Debug)]
pub enum SimEvent {
    /// From an io thread.
    Net(Inbound),
    /// A login, registration or transfer login finished.
    LoggedIn {
        /// Session that asked.
        session: SessionId,
        /// Outcome.
        result: Result<LoginGrant, Refusal>,
    },
    /// A browser login (`POST /api/login|register`) was answered.
    TokenIssued {
        /// The HTTP request's connection.
        session: SessionId,
        /// Its io thread.
        io: usize,
        /// The token, or why not.
        result: Result<IssuedToken, Refusal>,
    },
    /// A save batch was written (each row saved or fenced off).
    Saved {
        /// Why it was made.
        reason: SaveReason,
        /// Per player: id and outcome.
        outcomes: Vec<(u64, SaveOutcome)>,
    },
    /// A save batch failed as a whole (backend unavailable).
    SaveFailed(SaveBatch),
    /// Lock renewal finished; these players' locks were lost.
    LocksRenewed {
        /// Players another zone owns now.
        lost: Vec<u64>,
    },
    /// A portal hand-over finished.
    HandedOver {
        /// Session leaving.
        session: SessionId,
        /// Its player.
        player_id: u64,
        /// Portal taken.
        portal: usize,
        /// The one-time token for the target zone, or why not.
        result: Result<[u8; 32], HandOverError>,
    },
    /// An item was written, or not.
    Loot {
        /// Session.
        session: SessionId,
        /// The player.
        player_id: u64,
        /// What happened.
        result: Result<OwnedItem, LootError>,
    },
    /// A job panicked or could not be queued: here it is back.
    JobFailed {
        /// The job.
        job: Job,
        /// What happened to it.
        failure: JobFailure,
    },
}

/// Why loot was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LootError {
    /// Another zone owns the player now.
    OwnershipLost,
    /// The store failed; the item was not written (and never granted twice: no id was handed out).
    Failed(String),
}

impl From<Inbound> for SimEvent {
    fn from(i: Inbound) -> Self {
        SimEvent::Net(i)
    }
}

/// Which worker pool runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Logins (argon2): their own pool, so a login storm can never delay a save or a renewal.
    Login,
    /// Everything else.
    Work,
}

impl Job {
    /// The name its timing is recorded under (`game_server_worker_job_duration_seconds{job}`).
    pub fn name(&self) -> &'static str {
        match self {
            Job::Login { .. } => "login",
            Job::IssueToken { .. } => "issue_token",
            Job::Save(_) => "save",
            Job::HandOver { .. } => "transfer",
            Job::RenewLocks { .. } => "renew_locks",
            Job::Release(_) => "release",
            Job::GrantLoot { .. } => "loot",
        }
    }

    /// The pool it runs on.
    pub fn lane(&self) -> Lane {
        match self {
            Job::Login { .. } | Job::IssueToken { .. } => Lane::Login,
            _ => Lane::Work,
        }
    }

    /// Runs the job against the backends (on a worker thread: it blocks). Every job but a lock release answers.
    pub fn run(self, b: &Backend) -> Option<SimEvent> {
        Some(match self {
            Job::Login { session, ip, request } => {
                let result = match request {
                    LoginRequest::Password { username, password } => b.login.login(&username, &password, ip),
                    LoginRequest::Register { username, password } => b.login.register(&username, &password, ip),
                    LoginRequest::Transfer { username, token, zone } => b.transfer_login(&token, &username, &zone, ip),
                    LoginRequest::Token { token } => b.token_login(&token, ip),
                };
                SimEvent::LoggedIn { session, result }
            }
            Job::IssueToken { session, io, ip, register, username, password } => {
                SimEvent::TokenIssued { session, io, result: b.issue_token(&username, &password, register, ip) }
            }
            Job::Save(batch) => match b.save(&batch.rows, &batch.release) {
                Ok(outcomes) => SimEvent::Saved {
                    reason: batch.reason,
                    outcomes: batch.rows.iter().map(|r| r.player_id).zip(outcomes).collect(),
                },
                Err(e) => {
                    log::warn!("save batch of {} failed (attempt {}): {e}", batch.rows.len(), batch.attempt);
                    SimEvent::SaveFailed(batch)
                }
            },
            Job::HandOver { session, portal, row, lock_token } => SimEvent::HandedOver {
                session,
                player_id: row.player_id,
                portal,
                result: b.hand_over(&row, &lock_token),
            },
            Job::RenewLocks { held, ttl } => SimEvent::LocksRenewed { lost: b.renew_locks(&held, ttl) },
            Job::Release((player_id, token)) => {
                b.release(player_id, &token);
                return None;
            }
            Job::GrantLoot { session, player_id, epoch, item_kind, quantity } => {
                let result = match b.grant_item(player_id, epoch, item_kind, quantity) {
                    Ok(GrantOutcome::Granted(item_id)) => Ok(OwnedItem { item_id, item_kind, quantity }),
                    Ok(GrantOutcome::OwnershipLost) => Err(LootError::OwnershipLost),
                    Err(e) => Err(LootError::Failed(e.to_string())),
                };
                SimEvent::Loot { session, player_id, result }
            }
        })
    }
}
