//! The players' session machine: from a connection's first `Login` to its player's last save, as a sans-IO state
//! machine on the simulation thread.
//!
//! It is fed events ([`Sessions::handle`]: io events and job answers, each with the time), the game's outputs that
//! concern sessions ([`Sessions::route`]) and the tick ([`Sessions::tick`]), and it answers with [`Effect`]s: "send
//! this item to io thread N" and "run this job". It reads no clock, opens no socket and touches no backend, so its
//! rules are unit-tested here with a real [`Simulation`] and nothing else; the runner (`super::runner`) carries
//! the effects out.
//!
//! A session's life, as the machine sees it:
//!
//! ```text
//! Connected ─Login/Register/TransferLogin─▶ Authenticating ─LoggedIn(ok)─▶ InGame ─Logout/kick/drain─▶ (final save)
//!     ▲                                          │ refused                    │ dropped ▲ Resume
//!     └──────────────────────────────────────────┘                            ▼         │
//!                                                                          Detached ────┘ (grace over: final save)
//! ```
//!
//! Invariants a reader must not break:
//! * A player is in `online` exactly while one session holds it in game (attached or detached).
//! * Every player whose final save or hand-over is in flight is in `leaving` until its answer (or its typed
//!   failure) comes back; the drain ends when `leaving` is empty, and never waits for anything else.
//! * A player whose ownership is lost (its lock taken, its save fenced off) leaves unsaved: the newer owner's data
//!   must win.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::game::{Output, PlayerRecord, PlayerSpawn, Simulation};
use super::jobs::{Job, JobFailure, LoginRequest, LootError, SaveBatch, SaveReason, SimEvent};
use super::world::Vec2;
use crate::account::backend::{HandOverError, HeldLock};
use crate::account::login::{LoginGrant, Refusal};
use crate::account::password::{new_token, sha256};
use crate::account::{Progress, SaveOutcome, SaveRow};
use crate::link::{Departure, Inbound, Outbound, SessionId};
use crate::metrics::Metrics;
use crate::proto::{
    self, control_message::Body, data_message::Body as DataBody, ChatChannel, ControlMessage, DataMessage, KickReason,
    LoginError, LoginErrorReason, LoginOk, Pong,
};

fn login_error(reason: LoginErrorReason, message: &str, retry_after_ms: u32) -> LoginError {
    LoginError { reason: reason as i32, message: message.into(), retry_after_ms }
}

/// Save attempts before the players of a failing batch are kicked rather than played on unsaved.
pub const SAVE_ATTEMPTS: u32 = 3;

/// How often the server pings each client over UDP to measure round-trip time.
const PING_EVERY_SECS: u32 = 2;

/// What the machine needs to know about the zone.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Zone name.
    pub zone: String,
    /// Ticks per second.
    pub tick_rate: u32,
    /// UDP port told to clients.
    pub udp_port: u16,
    /// Most players online.
    pub max_players: usize,
    /// Whether portals hand players to other zones (needs the shared database and Redis).
    pub transfers_enabled: bool,
    /// How long a dropped player may be resumed (zero: no resumption).
    pub resume_grace: Duration,
    /// Periodic save interval.
    pub save_interval: Duration,
    /// Ownership lock time to live; locks are renewed every third of it.
    pub lock_ttl: Duration,
}

/// What the machine asks the runner to do.
#[derive(Debug)]
pub enum Effect {
    /// Queue `item` for io thread `io`.
    Io {
        /// The io thread.
        io: usize,
        /// The item.
        item: Outbound,
    },
    /// Run a job on the worker pool of its lane.
    Job(Job),
}

/// A player this zone owns.
#[derive(Debug)]
struct Owned {
    player_id: u64,
    epoch: u64,
    lock_token: String,
    /// SHA-256 of the session token the client holds now (its latest `LoginOk`'s): what a `Resume` must present.
    resume_hash: [u8; 32],
}

#[derive(Debug)]
enum Stage {
    /// Connected; may log in.
    Connected,
    /// A login job is out.
    Authenticating,
    /// Playing; `detached_until` is set while its connection is gone and it waits to be resumed (still in the
    /// world: its lock is renewed, it is saved periodically and at the drain, like any player online).
    InGame { owned: Owned, detached_until: Option<Instant> },
}

#[derive(Debug)]
struct Session {
    io: usize,
    addr: SocketAddr,
    /// Protocol version (2: delta snapshots).
    protocol: u32,
    stage: Stage,
}

/// Sessions by stage, for `game_server_sessions{state}`.
const STAGES: [&str; 5] = ["connected", "authenticating", "in_game", "detached", "leaving"];

/// The session machine.
pub struct Sessions {
    config: SessionConfig,
    metrics: Arc<Metrics>,
    stage_gauges: [prometheus::IntGauge; STAGES.len()],
    /// Where ping nonces count from (a pong's nonce gives the round trip).
    epoch: Instant,
    sessions: HashMap<SessionId, Session>,
    /// Players in game (attached or detached) and their session.
    online: HashMap<u64, SessionId>,
    /// Detached sessions by the SHA-256 of their resume token.
    resumable: HashMap<[u8; 32], SessionId>,
    /// Detached sessions in the order they expire (one grace period for all, so detaching appends in order).
    expiries: VecDeque<(Instant, SessionId)>,
    /// Players whose final save or hand-over is in flight.
    leaving: HashSet<u64>,
    /// In-game sessions in the order this ping period pings them.
    ping_order: Vec<SessionId>,
    /// A lock renewal could not be queued: try again next tick rather than a renewal period later.
    renew_owed: bool,
    draining: bool,
    effects: Vec<Effect>,
}

impl Sessions {
    /// A machine with no sessions; `epoch` is where ping nonces count from.
    pub fn new(config: SessionConfig, metrics: Arc<Metrics>, epoch: Instant) -> Self {
        let stage_gauges = STAGES.map(|s| metrics.sessions_gauge(s));
        Self {
            config,
            metrics,
            stage_gauges,
            epoch,
            sessions: HashMap::new(),
            online: HashMap::new(),
            resumable: HashMap::new(),
            expiries: VecDeque::new(),
            leaving: HashSet::new(),
            ping_order: Vec::new(),
            renew_owed: false,
            draining: false,
            effects: Vec::new(),
        }
    }

    /// The effects produced since the last call, in order.
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// The io thread of a session (for routing snapshots, which never pass through the machine).
    #[inline]
    pub fn io_of(&self, session: SessionId) -> Option<usize> {
        self.sessions.get(&session).map(|s| s.io)
    }

    /// Players in game (attached or detached).
    pub fn online(&self) -> usize {
        self.online.len()
    }

    /// Players whose final save or hand-over is in flight.
    pub fn leaving(&self) -> usize {
        self.leaving.len()
    }

    /// True once a drain has begun and every final save has answered.
    pub fn drained(&self) -> bool {
        self.draining && self.leaving.is_empty()
    }

    // --- events ---------------------------------------------------------------------------------------------

    /// Handles one event from an io thread or a job.
    pub fn handle(&mut self, game: &mut Simulation, event: SimEvent, now: Instant) {
        match event {
            SimEvent::Net(Inbound::Connected { session, io, addr, protocol }) => {
                self.sessions.insert(session, Session { io, addr, protocol, stage: Stage::Connected });
            }
            SimEvent::Net(Inbound::Control { session, msg }) => self.on_control(game, session, msg, now),
            SimEvent::Net(Inbound::Data { session, msg }) => self.on_data(game, session, msg, now),
            SimEvent::Net(Inbound::UdpBound { session, .. }) => game.set_udp_bound(session),
            SimEvent::Net(Inbound::Authenticate { session, io, addr, register, username, password }) => {
                if self.draining {
                    let error =
                        login_error(LoginErrorReason::LoginErrorServerFull, "the zone is shutting down", 10_000);
                    self.effects.push(Effect::Io { io, item: Outbound::Token { session, result: Err(error) } });
                } else {
                    let ip = addr.ip();
                    self.effects.push(Effect::Job(Job::IssueToken { session, io, ip, register, username, password }));
                }
            }
            SimEvent::TokenIssued { session, io, result } => {
                let result = result.map(|t| (t.token, t.ttl)).map_err(|r| {
                    self.metrics.login_refused(r.reason);
                    login_error(r.reason, &r.message, r.retry_after.as_millis() as u32)
                });
                self.effects.push(Effect::Io { io, item: Outbound::Token { session, result } });
            }
            SimEvent::Net(Inbound::Disconnected { session, departure, .. }) => {
                self.disconnected(game, session, departure, now)
            }
            SimEvent::LoggedIn { session, result } => self.on_logged_in(game, session, result),
            SimEvent::Saved { reason, outcomes } => self.on_saved(game, reason, outcomes),
            SimEvent::SaveFailed(batch) => self.on_save_failed(game, batch),
            SimEvent::LocksRenewed { lost } => {
                for player_id in lost {
                    self.metrics.locks.losses.inc();
                    log::warn!("lost the ownership lock of player {player_id}: dropping the session unsaved");
                    self.ownership_lost(game, player_id);
                }
            }
            SimEvent::HandedOver { session, player_id, portal, result } => {
                self.on_handed_over(game, session, player_id, portal, result)
            }
            SimEvent::Loot { session, player_id, result } => match result {
                Ok(item) => {
                    let loot = proto::LootReceived {
                        item_id: item.item_id,
                        item_kind: item.item_kind,
                        quantity: item.quantity,
                    };
                    self.send(session, ControlMessage::new(Body::Loot(loot)));
                }
                Err(LootError::OwnershipLost) => self.ownership_lost(game, player_id),
                Err(LootError::Failed(e)) => {
                    // Lost loot is logged and counted, never granted twice: no id was handed out.
                    log::warn!("loot for player {player_id} not written: {e}");
                    self.metrics.loot_failures.inc();
                }
            },
            SimEvent::JobFailed { job, failure } => self.job_failed(game, job, failure),
        }
    }

    fn on_control(&mut self, game: &mut Simulation, session: SessionId, msg: ControlMessage, now: Instant) {
        let Some(s) = self.sessions.get(&session) else { return };
        let ip = s.addr.ip();
        match msg.body {
            Some(Body::Login(l)) => {
                self.start_login(session, ip, LoginRequest::Password { username: l.username, password: l.password })
            }
            Some(Body::Register(r)) => {
                self.start_login(session, ip, LoginRequest::Register { username: r.username, password: r.password })
            }
            Some(Body::TransferLogin(t)) if self.config.transfers_enabled => {
                let request = LoginRequest::Transfer {
                    username: t.username,
                    token: t.transfer_token,
                    zone: self.config.zone.clone(),
                };
                self.start_login(session, ip, request)
            }
            Some(Body::TokenLogin(t)) => self.start_login(session, ip, LoginRequest::Token { token: t.token }),
            Some(Body::TransferLogin(_)) => self.refuse(
                session,
                Refusal {
                    reason: LoginErrorReason::LoginErrorInvalidTransfer,
                    message: "this zone does not accept transfers (no shared database and Redis configured)".into(),
                    retry_after: Duration::ZERO,
                },
            ),
            Some(Body::Chat(c)) => {
                let channel = ChatChannel::try_from(c.channel).unwrap_or(ChatChannel::Say);
                if let Err(e) = game.queue_chat(session, channel, c.text) {
                    let notice = proto::ErrorNotice { message: e.to_string() };
                    self.send(session, ControlMessage::new(Body::Error(notice)));
                }
            }
            Some(Body::Resume(r)) => self.resume(game, session, &r.session_token, now),
            Some(Body::Logout(_)) => {
                // Queue the goodbye first: `leave` forgets the session's io thread.
                self.kick(session, KickReason::LoggedOut, "logged out");
                self.leave(game, session);
            }
            _ => {}
        }
    }

    fn on_data(&mut self, game: &mut Simulation, session: SessionId, msg: DataMessage, now: Instant) {
        match msg.body {
            Some(DataBody::Input(input)) => {
                let _ = game.queue_input(session, input);
            }
            Some(DataBody::Pong(p)) => {
                let sent = self.epoch + Duration::from_micros(p.nonce);
                // Ignore absurd values (a forged or very late pong): pings go out every few seconds.
                if let Some(rtt) = now.checked_duration_since(sent).filter(|d| *d < Duration::from_secs(10)) {
                    self.metrics.network_latency.observe(rtt.as_secs_f64());
                }
            }
            Some(DataBody::Ping(p)) => {
                let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: game.tick() };
                self.io(session, |session| Outbound::Data { session, msg: DataMessage::new(DataBody::Pong(pong)) });
            }
            _ => {}
        }
    }

    // --- logging in -----------------------------------------------------------------------------------------

    fn start_login(&mut self, session: SessionId, ip: IpAddr, request: LoginRequest) {
        if self.online.len() >= self.config.max_players || self.draining {
            let full = Refusal {
                reason: LoginErrorReason::LoginErrorServerFull,
                message: "the zone is full".into(),
                retry_after: Duration::from_secs(10),
            };
            return self.refuse(session, full);
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.stage = Stage::Authenticating;
        }
        self.effects.push(Effect::Job(Job::Login { session, ip, request }));
    }

    fn refuse(&mut self, session: SessionId, refusal: Refusal) {
        self.metrics.login_refused(refusal.reason);
        let error = LoginError {
            reason: refusal.reason as i32,
            message: refusal.message,
            retry_after_ms: refusal.retry_after.as_millis() as u32,
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            if matches!(s.stage, Stage::Authenticating) {
                s.stage = Stage::Connected;
            }
        }
        self.io(session, |session| Outbound::Refuse { session, error });
    }

    fn on_logged_in(&mut self, game: &mut Simulation, session: SessionId, result: Result<LoginGrant, Refusal>) {
        let alive = self.sessions.get(&session).is_some_and(|s| matches!(s.stage, Stage::Authenticating));
        let grant = match result {
            Err(refusal) => return self.refuse(session, refusal),
            Ok(grant) => grant,
        };
        if !alive || self.online.contains_key(&grant.player_id) {
            // The client left while we were claiming (or a duplicate slipped through): give the player back.
            self.effects.push(Effect::Job(Job::Release((grant.player_id, grant.lock_token))));
            if alive {
                let refusal = Refusal {
                    reason: LoginErrorReason::LoginErrorAlreadyOnline,
                    message: "already online".into(),
                    retry_after: Duration::ZERO,
                };
                self.refuse(session, refusal);
            }
            return;
        }
        let progress = grant.progress.as_ref();
        let spawn = PlayerSpawn {
            player_id: grant.player_id,
            name: grant.username.clone(),
            pos: progress.filter(|p| p.zone == self.config.zone).map(|p| Vec2::new(p.pos.0, p.pos.1)),
            level: progress.map_or(1, |p| p.level),
            xp: progress.map_or(0, |p| p.xp),
            hp: progress.map(|p| p.hp),
        };
        let entity = game.spawn_player(session, spawn);
        game.set_protocol(session, self.sessions.get(&session).map_or(1, |s| s.protocol));
        self.online.insert(grant.player_id, session);
        let owned = Owned {
            player_id: grant.player_id,
            epoch: grant.epoch,
            lock_token: grant.lock_token,
            resume_hash: sha256(&grant.session_token),
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.stage = Stage::InGame { owned, detached_until: None };
        }
        self.admit(game, session, grant.player_id, entity, grant.session_token);
    }

    fn admit(&mut self, game: &Simulation, session: SessionId, player_id: u64, entity: u64, token: [u8; 32]) {
        let pos = game.player_record(session).map(|r| r.pos).unwrap_or_default();
        let msg = LoginOk {
            session_id: session,
            player_id,
            zone: self.config.zone.clone(),
            tick_rate_hz: self.config.tick_rate,
            udp_port: u32::from(self.config.udp_port),
            entity_id: entity,
            session_token: token.to_vec(),
            position: Some(proto::Vec2 { x: pos.x, y: pos.y }),
        };
        self.io(session, |session| Outbound::Admit { session, msg });
    }

    // --- leaving and coming back ----------------------------------------------------------------------------

    /// The connection ended. A player in game whose connection dropped stays in the world for the resume grace
    /// period; every other ending leaves at once.
    fn disconnected(&mut self, game: &mut Simulation, session: SessionId, departure: Departure, now: Instant) {
        let grace = self.config.resume_grace;
        let draining = self.draining;
        let Some(s) = self.sessions.get_mut(&session) else { return };
        let Stage::InGame { owned, detached_until } = &mut s.stage else { return self.leave(game, session) };
        if departure != Departure::Dropped || grace.is_zero() || draining || detached_until.is_some() {
            return self.leave(game, session);
        }
        let until = now + grace;
        *detached_until = Some(until);
        self.resumable.insert(owned.resume_hash, session);
        self.expiries.push_back((until, session));
        game.detach_player(session);
        log::debug!("session {session:#x} (player {}) detached until resumed or {grace:?}", owned.player_id);
    }

    /// Detached players whose grace period is over leave the world: final save and lock release, once.
    fn expire_detached(&mut self, game: &mut Simulation, now: Instant) {
        while let Some(&(until, session)) = self.expiries.front() {
            if until > now {
                break;
            }
            self.expiries.pop_front();
            // Resumed (or gone) meanwhile: that entry is stale.
            let current = self
                .sessions
                .get(&session)
                .is_some_and(|s| matches!(&s.stage, Stage::InGame { detached_until: Some(u), .. } if *u == until));
            if current {
                self.metrics.resumes.expired.inc();
                self.leave(game, session);
            }
        }
    }

    /// `Resume { session_token }` on a new connection: re-attaches the detached session the token belongs to. No
    /// hash, no save, no claim: the character never left; the token is used up and a new one issued.
    fn resume(&mut self, game: &mut Simulation, session: SessionId, token: &[u8], _now: Instant) {
        // The token is 256 random bits and the map is keyed by its SHA-256, so a lookup's timing tells nothing
        // useful about any stored token (what a constant-time comparison protects).
        if !self.sessions.contains_key(&session) {
            return;
        }
        let refused = |message: &str| Refusal {
            reason: LoginErrorReason::LoginErrorInvalidResume,
            message: message.into(),
            retry_after: Duration::ZERO,
        };
        let Some(old) = self.resumable.remove(&sha256(token)) else {
            self.metrics.resumes.refused.inc();
            let r = refused("resume token unknown, used, expired or for another zone: log in with your password");
            return self.refuse(session, r);
        };
        // `resumable` names detached sessions in game; the entry goes with the session.
        let owned = match self.sessions.remove(&old) {
            Some(Session { stage: Stage::InGame { owned, .. }, .. }) => Some(owned),
            _ => None,
        };
        let reattached = owned.and_then(|o| game.reattach_player(old, session).map(|entity| (o, entity)));
        game.set_protocol(session, self.sessions.get(&session).map_or(1, |s| s.protocol));
        let Some((mut owned, entity)) = reattached else {
            self.metrics.resumes.refused.inc();
            return self.refuse(session, refused("this session ended while you were away: log in with your password"));
        };
        let (token, token_hash) = new_token();
        owned.resume_hash = token_hash;
        let player_id = owned.player_id;
        let Some(s) = self.sessions.get_mut(&session) else { return };
        s.stage = Stage::InGame { owned, detached_until: None };
        self.online.insert(player_id, session);
        self.metrics.resumes.resumed.inc();
        log::debug!("session {old:#x} (player {player_id}) resumed as {session:#x}");
        self.admit(game, session, player_id, entity, token);
    }

    /// The player leaves the world (logout, disconnect, expiry, shutdown): final save, then lock release.
    fn leave(&mut self, game: &mut Simulation, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else { return };
        let Stage::InGame { owned, detached_until } = s.stage else { return };
        if detached_until.is_some() {
            self.resumable.remove(&owned.resume_hash);
        }
        self.online.remove(&owned.player_id);
        if let Some(record) = game.despawn_player(session) {
            let row = SaveRow { player_id: owned.player_id, epoch: owned.epoch, progress: self.progress(&record) };
            self.leaving.insert(owned.player_id);
            self.save(SaveBatch {
                reason: SaveReason::Final,
                rows: vec![row],
                attempt: 1,
                release: vec![(owned.player_id, owned.lock_token)],
            });
        }
    }

    /// Drops a player without saving (ownership lost, saves failing): the session, its world entity and its
    /// resume entry go; the connection (if any) is for the caller to close.
    fn drop_unsaved(&mut self, game: &mut Simulation, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        let Stage::InGame { owned, detached_until } = std::mem::replace(&mut s.stage, Stage::Connected) else {
            return;
        };
        self.online.remove(&owned.player_id);
        game.despawn_player(session);
        if detached_until.is_some() {
            self.resumable.remove(&owned.resume_hash);
            // Its connection is already gone: no Disconnected will come to remove it.
            self.sessions.remove(&session);
        }
    }

    /// Another zone owns `player_id` now: drop it unsaved and tell the client.
    fn ownership_lost(&mut self, game: &mut Simulation, player_id: u64) {
        self.metrics.ownership_lost.inc();
        if let Some(&session) = self.online.get(&player_id) {
            self.drop_unsaved(game, session);
            self.kick(session, KickReason::OwnershipLost, "this character is now played in another zone");
        }
    }

    // --- saving ---------------------------------------------------------------------------------------------

    fn progress(&self, record: &PlayerRecord) -> Progress {
        Progress {
            zone: self.config.zone.clone(),
            pos: (record.pos.x, record.pos.y),
            level: record.level,
            xp: record.xp,
            hp: record.hp,
        }
    }

    fn save(&mut self, batch: SaveBatch) {
        if !batch.rows.is_empty() {
            self.effects.push(Effect::Job(Job::Save(batch)));
        }
    }

    fn save_dirty(&mut self, game: &mut Simulation) {
        let dirty = game.take_dirty();
        let mut rows = Vec::with_capacity(dirty.len());
        for (session, record) in dirty {
            if let Some(Session { stage: Stage::InGame { owned, .. }, .. }) = self.sessions.get(&session) {
                rows.push(SaveRow { player_id: owned.player_id, epoch: owned.epoch, progress: self.progress(&record) });
            }
        }
        self.save(SaveBatch { reason: SaveReason::Periodic, rows, attempt: 1, release: Vec::new() });
    }

    fn on_saved(&mut self, game: &mut Simulation, reason: SaveReason, outcomes: Vec<(u64, SaveOutcome)>) {
        for (player_id, outcome) in outcomes {
            if reason == SaveReason::Final {
                self.leaving.remove(&player_id);
            }
            match outcome {
                SaveOutcome::Saved => self.metrics.saves.inc(),
                SaveOutcome::OwnershipLost => {
                    log::warn!("save of player {player_id} fenced off: another zone owns it now; dropping the session");
                    self.ownership_lost(game, player_id);
                }
            }
        }
    }

    /// A batch failed (backend down, job panicked or not queued): retried up to [`SAVE_ATTEMPTS`] times, then its
    /// players still online are kicked with `SAVE_FAILED` rather than played on unsaved.
    fn on_save_failed(&mut self, game: &mut Simulation, batch: SaveBatch) {
        self.metrics.save_failures.inc_by(batch.rows.len() as u64);
        if batch.attempt < SAVE_ATTEMPTS {
            return self.save(SaveBatch { attempt: batch.attempt + 1, ..batch });
        }
        log::error!("giving up on saving {} players after {} attempts: kicking them", batch.rows.len(), batch.attempt);
        for row in batch.rows {
            self.leaving.remove(&row.player_id);
            if let Some(&session) = self.online.get(&row.player_id) {
                self.drop_unsaved(game, session);
                self.kick(session, KickReason::SaveFailed, "your progress could not be saved; please reconnect later");
            }
        }
        // The locks of players that left are not released: they expire after their TTL, so no other zone loads
        // the progress that could not be stored before it is too late to matter.
    }

    // --- portals --------------------------------------------------------------------------------------------

    /// Routes a game output that concerns sessions (everything but snapshots, which the runner sends directly).
    pub fn route(&mut self, game: &mut Simulation, output: Output) {
        match output {
            Output::Control { session, msg } => self.send(session, msg),
            Output::Snapshot { session, snapshot } => {
                self.io(session, |session| Outbound::Encoded { session, msg: snapshot.bytes })
            }
            Output::Loot { session, item_kind, quantity } => {
                let Some(Session { stage: Stage::InGame { owned, .. }, .. }) = self.sessions.get(&session) else {
                    return;
                };
                let (player_id, epoch) = (owned.player_id, owned.epoch);
                self.effects.push(Effect::Job(Job::GrantLoot { session, player_id, epoch, item_kind, quantity }));
            }
            Output::PortalEntered { session, portal } if self.config.transfers_enabled => {
                self.start_hand_over(game, session, portal)
            }
            Output::PortalEntered { session, portal } => {
                let name = &game.zone().portals[portal].target_zone;
                let text = format!("the road to {name} is closed: this zone runs without a shared database");
                self.send(session, ControlMessage::new(Body::Error(proto::ErrorNotice { message: text })));
                game.release_transfer(session);
            }
        }
    }

    /// Portal: the player leaves this world now; it is saved for the target zone, its lock released and a token
    /// issued by a job, and the client is told where to go when that is done (`HandedOver`).
    fn start_hand_over(&mut self, game: &mut Simulation, session: SessionId, portal: usize) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        let Stage::InGame { owned, .. } = std::mem::replace(&mut s.stage, Stage::Connected) else { return };
        self.online.remove(&owned.player_id);
        let Some(record) = game.despawn_player(session) else { return };
        let p = &game.zone().portals[portal];
        let row = SaveRow {
            player_id: owned.player_id,
            epoch: owned.epoch,
            progress: Progress {
                zone: p.target_zone.clone(),
                pos: (p.target_position[0], p.target_position[1]),
                level: record.level,
                xp: record.xp,
                hp: record.hp,
            },
        };
        self.leaving.insert(owned.player_id);
        self.effects.push(Effect::Job(Job::HandOver { session, portal, row, lock_token: owned.lock_token }));
    }

    fn on_handed_over(
        &mut self,
        game: &mut Simulation,
        session: SessionId,
        player_id: u64,
        portal: usize,
        result: Result<[u8; 32], HandOverError>,
    ) {
        // The session left the world when it entered the portal; whatever it did meanwhile (log out, drop), its
        // player is accounted for here, once.
        self.leaving.remove(&player_id);
        match result {
            Ok(token) => {
                let p = &game.zone().portals[portal];
                let msg = proto::ZoneTransfer {
                    zone: p.target_zone.clone(),
                    address: p.target_address.clone(),
                    web_address: p.target_web_address.clone(),
                    transfer_token: token.to_vec(),
                    position: Some(proto::Vec2 { x: p.target_position[0], y: p.target_position[1] }),
                };
                log::info!("session {session:#x} transfers to zone {} at {}", p.target_zone, p.target_address);
                self.send(session, ControlMessage::new(Body::ZoneTransfer(msg)));
            }
            Err(HandOverError::OwnershipLost) => {
                self.metrics.ownership_lost.inc();
                self.kick(session, KickReason::OwnershipLost, "this character is now played in another zone");
            }
            Err(HandOverError::Failed) => {
                self.kick(session, KickReason::SaveFailed, "the zone transfer could not be saved; please reconnect")
            }
        }
    }

    // --- job failures ---------------------------------------------------------------------------------------

    fn job_failed(&mut self, game: &mut Simulation, job: Job, failure: JobFailure) {
        log::warn!("job {} {}", job.name(), if failure == JobFailure::Panicked { "panicked" } else { "not queued" });
        match job {
            Job::Login { session, .. } => self.refuse(
                session,
                Refusal {
                    reason: LoginErrorReason::LoginErrorServerBusy,
                    message: "server busy: try again shortly".into(),
                    retry_after: Duration::from_secs(2),
                },
            ),
            Job::IssueToken { session, io, .. } => {
                let error = login_error(LoginErrorReason::LoginErrorServerBusy, "server busy: try again shortly", 2000);
                self.effects.push(Effect::Io { io, item: Outbound::Token { session, result: Err(error) } });
            }
            Job::Save(batch) => self.on_save_failed(game, batch),
            Job::HandOver { session, row, .. } => {
                self.leaving.remove(&row.player_id);
                self.kick(session, KickReason::SaveFailed, "the zone transfer could not be saved; please reconnect");
            }
            // Renewals are retried next tick; the lock's TTL is three renewal periods.
            Job::RenewLocks { .. } => self.renew_owed = true,
            // An unreleased lock expires by itself after its TTL.
            Job::Release(_) => {}
            Job::GrantLoot { player_id, .. } => {
                log::warn!("loot for player {player_id} not written ({failure:?})");
                self.metrics.loot_failures.inc();
            }
        }
    }

    // --- the tick -------------------------------------------------------------------------------------------

    /// Work due at tick `tick`: detached players whose grace is over leave, a slice of the players is pinged,
    /// and (unless draining) dirty players are saved and locks renewed when their period comes.
    pub fn tick(&mut self, game: &mut Simulation, tick: u64, now: Instant) {
        if !self.expiries.is_empty() {
            self.expire_detached(game, now);
        }
        let rate = u64::from(self.config.tick_rate.max(1));
        let ping_every = u64::from(PING_EVERY_SECS) * rate;
        self.ping_slice(tick % ping_every, ping_every, now);
        if !self.draining {
            let every = |d: Duration| (d.as_secs_f64() * rate as f64).max(1.0) as u64;
            if tick % every(self.config.save_interval) == 0 {
                self.save_dirty(game);
            }
            if tick % every(self.config.lock_ttl / 3) == 0 || std::mem::take(&mut self.renew_owed) {
                self.renew_locks();
            }
        }
        self.count_stages();
    }

    /// Pings slice `slice` of `slices` of the in-game sessions over UDP (each session once per `slices` ticks);
    /// the nonce is the send time, so the Pong gives the round trip. The list is taken at slice 0 (one pass over
    /// the keys); pinging everyone in one tick was a 2 ms spike every 2 s at 750 players, and walking every
    /// session every tick to find a slice cost more than that (both measured with realm-bots).
    fn ping_slice(&mut self, slice: u64, slices: u64, now: Instant) {
        if slice == 0 {
            self.ping_order.clear();
            self.ping_order.extend(self.online.values().copied());
        }
        let n = self.ping_order.len() as u64;
        let (from, to) = ((n * slice / slices) as usize, (n * (slice + 1) / slices) as usize);
        let nonce = now.saturating_duration_since(self.epoch).as_micros() as u64;
        for i in from.min(to)..to {
            let session = self.ping_order[i];
            let Some(s) = self.sessions.get(&session) else { continue };
            if matches!(s.stage, Stage::InGame { detached_until: None, .. }) {
                let msg = DataMessage::new(DataBody::Ping(proto::Ping { nonce, client_time_us: 0 }));
                self.effects.push(Effect::Io { io: s.io, item: Outbound::Data { session, msg } });
            }
        }
    }

    fn renew_locks(&mut self) {
        let held: Vec<HeldLock> = self
            .sessions
            .values()
            .filter_map(|s| match &s.stage {
                Stage::InGame { owned, .. } => Some((owned.player_id, owned.lock_token.clone())),
                _ => None,
            })
            .collect();
        if !held.is_empty() {
            self.effects.push(Effect::Job(Job::RenewLocks { held, ttl: self.config.lock_ttl }));
        }
    }

    fn count_stages(&self) {
        let mut counts = [0i64; STAGES.len()];
        for s in self.sessions.values() {
            counts[match s.stage {
                Stage::Connected => 0,
                Stage::Authenticating => 1,
                Stage::InGame { detached_until: None, .. } => 2,
                Stage::InGame { detached_until: Some(_), .. } => 3,
            }] += 1;
        }
        counts[4] = self.leaving.len() as i64;
        for (gauge, n) in self.stage_gauges.iter().zip(counts) {
            gauge.set(n);
        }
    }

    /// Stop: no new logins; every player in game (attached or detached) leaves with a final save.
    pub fn begin_drain(&mut self, game: &mut Simulation) {
        self.draining = true;
        let in_game: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| matches!(s.stage, Stage::InGame { .. })).map(|(&id, _)| id).collect();
        for session in in_game {
            self.leave(game, session);
        }
        self.count_stages();
    }

    // --- sending --------------------------------------------------------------------------------------------

    fn io(&mut self, session: SessionId, item: impl FnOnce(SessionId) -> Outbound) {
        if let Some(s) = self.sessions.get(&session) {
            self.effects.push(Effect::Io { io: s.io, item: item(session) });
        }
    }

    fn send(&mut self, session: SessionId, msg: ControlMessage) {
        self.io(session, |session| Outbound::Control { session, msg });
    }

    fn kick(&mut self, session: SessionId, reason: KickReason, message: &str) {
        self.io(session, |session| Outbound::Close { session, reason, message: message.into() });
    }
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
