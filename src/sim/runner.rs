//! The simulation thread (`realm-sim`): paces [`Simulation`] at the tick rate, turns io events into commands,
//! routes outputs back to the io threads, and hands everything that blocks (logins, saves, lock renewals) to the
//! worker pool as jobs whose results come back through the same inbound queue.
//!
//! Invariant: this thread holds no database, Redis or socket handle — only a [`JobSender`] and [`IoHandle`]s — so
//! nothing it does can block; the only wait is the sleep until the next tick.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::game::{Output, PlayerRecord, PlayerSpawn, Simulation, PHASES};
use super::tick::{TickClock, TickCounters};
use super::world::Vec2;
use crate::account::login::{LoginGrant, LoginService, Refusal};
use crate::account::{GrantOutcome, Progress, SaveOutcome, SaveRow, StoreError};
use crate::admin::AdminState;
use crate::metrics::{Metrics, TickPhase};
use crate::net::io::{Inbound, IoHandle, Outbound, SessionId};
use crate::proto::{
    self, control_message::Body, data_message::Body as DataBody, ChatChannel, ControlMessage, DataMessage, KickReason,
    LoginError, LoginErrorReason, LoginOk, Pong,
};
use crate::queue::{Consumer, Pop};
use crate::worker::{JobSender, WorkerError};

/// What the worker side offers the simulation (the worker context).
pub struct Backend {
    /// Accounts, ownership and persistence.
    pub login: LoginService,
    /// Zone-transfer tokens (shared by every zone when Redis is configured).
    pub transfers: Arc<dyn crate::account::transfer::TransferTokens>,
}

/// Why a save was made (decides what happens after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveReason {
    /// Periodic save of dirty players.
    Periodic,
    /// The player left (logout, disconnect, shutdown): release the lock after saving.
    Final,
}

/// Everything that reaches the simulation thread.
#[derive(Debug)]
pub enum SimEvent {
    /// From an io thread.
    Net(Inbound),
    /// A login or registration finished.
    Login {
        /// Session that asked.
        session: SessionId,
        /// Outcome.
        result: Result<LoginGrant, Refusal>,
    },
    /// A save batch finished.
    Saved {
        /// Why it was made.
        reason: SaveReason,
        /// Per player: id and outcome.
        outcomes: Vec<(u64, SaveOutcome)>,
    },
    /// A save batch failed as a whole (backend unavailable).
    SaveFailed {
        /// Why it was made.
        reason: SaveReason,
        /// The rows, to retry.
        rows: Vec<SaveRow>,
        /// Tries so far.
        attempt: u32,
        /// Lock tokens of `Final` rows, released after a successful retry.
        locks: Vec<(u64, String)>,
    },
    /// Lock renewal finished; these players' locks were lost.
    LocksLost(Vec<u64>),
    /// A portal transfer is ready: the player was saved for the target zone, its lock released, a token issued.
    TransferReady {
        /// Session leaving.
        session: SessionId,
        /// Portal taken.
        portal: usize,
        /// One-time token for the target zone.
        token: [u8; 32],
    },
    /// An item was written for a player.
    LootGranted {
        /// Session.
        session: SessionId,
        /// The item.
        item: crate::account::OwnedItem,
    },
    /// A portal transfer failed (save fenced off or backend down).
    TransferFailed {
        /// Session.
        session: SessionId,
        /// Whether the failure was a lost ownership (never retry, never save).
        ownership_lost: bool,
    },
}

impl From<Inbound> for SimEvent {
    fn from(i: Inbound) -> Self {
        SimEvent::Net(i)
    }
}

/// Save attempts before the players of a failing batch are kicked rather than played on unsaved.
pub const SAVE_ATTEMPTS: u32 = 3;

/// Live status for health checks and metrics (atomics: read from any thread, never blocks the tick).
#[derive(Debug, Default)]
pub struct SimStatus {
    /// Current tick.
    pub tick: AtomicU64,
    /// Players in the world.
    pub players_online: AtomicU64,
    /// Duration of the last tick, nanoseconds.
    pub last_tick_nanos: AtomicU64,
    /// Ticks that overran the period.
    pub overruns: AtomicU64,
    /// Ticks started late.
    pub late: AtomicU64,
    /// Ticks dropped when re-anchoring.
    pub dropped: AtomicU64,
    /// Saves written.
    pub saves: AtomicU64,
    /// Save batches that failed.
    pub save_failures: AtomicU64,
    /// Sessions dropped because another zone owns the player now.
    pub ownership_lost: AtomicU64,
    /// Inbound events handled.
    pub events: AtomicU64,
    /// Logins that succeeded.
    pub logins: AtomicU64,
    /// Logins refused.
    pub login_refusals: AtomicU64,
    /// Sessions resumed with a token.
    pub resumes: AtomicU64,
    /// Resumes refused (token unknown, used or expired).
    pub resume_refused: AtomicU64,
    /// Detached players whose grace period ran out (saved and released).
    pub resume_expired: AtomicU64,
    /// Snapshots not queued because their io thread was too far behind (back-pressure).
    pub snapshots_dropped: AtomicU64,
    /// Set when the drain after a stop request completed.
    pub drained: AtomicBool,
}

/// Outbound items an io thread may have pending before the simulation stops queueing snapshots for it: about two
/// ticks of snapshots for 2,000 players. Control messages are always queued (they are reliable and rare).
pub const IO_BACKLOG_LIMIT: usize = 4096;

enum SessionState {
    Greeted,
    Authenticating,
    InGame(Owned),
    Closed,
}

struct Owned {
    player_id: u64,
    epoch: u64,
    lock_token: String,
    /// SHA-256 of the session token the client holds now (its latest LoginOk's): what a Resume must present.
    resume_hash: [u8; 32],
}

struct SessionCtx {
    io: usize,
    addr: SocketAddr,
    state: SessionState,
    /// Set while the control connection is gone and the player waits to be resumed (still `InGame`: its lock is
    /// renewed, it is saved periodically and at the drain, like any player online).
    detached_until: Option<Instant>,
}

/// Settings the runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Ticks per second.
    pub tick_rate: u32,
    /// Zone name.
    pub zone: String,
    /// UDP port told to clients.
    pub udp_port: u16,
    /// Periodic save interval.
    pub save_interval: Duration,
    /// Lock renewal interval (a third of the TTL).
    pub renew_interval: Duration,
    /// Most players online.
    pub max_players: usize,
    /// How long the drain may take.
    pub grace: Duration,
    /// Whether portals hand players to other zones (needs the shared database and Redis).
    pub transfers_enabled: bool,
    /// How long a dropped player may be resumed (zero: no resumption).
    pub resume_grace: Duration,
}

/// Where the sim thread reports: Prometheus metrics and the admin state behind /health and /ready.
pub struct Telemetry {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health and readiness.
    pub admin: Arc<AdminState>,
}

/// Queue-depth gauges resolved once (a label lookup takes a lock: not something to do every tick).
struct QueueGauges {
    inbound: prometheus::IntGauge,
    outbound: Vec<prometheus::IntGauge>,
}

/// How often (in ticks) the server pings each client over UDP to measure round-trip time.
const PING_EVERY_SECS: u32 = 2;

/// The simulation thread's state.
pub struct SimRunner {
    telemetry: Option<Telemetry>,
    gauges: Option<QueueGauges>,
    epoch: Instant,
    sim: Simulation,
    /// Where the tick is published for `UdpWelcome` (absent in tests without io threads).
    net: Option<Arc<crate::net::io::NetShared>>,
    rx: Consumer<SimEvent>,
    io: Vec<IoHandle>,
    io_dirty: Vec<bool>,
    jobs: JobSender<Backend, SimEvent>,
    login_jobs: JobSender<Backend, SimEvent>,
    config: RunnerConfig,
    sessions: HashMap<SessionId, SessionCtx>,
    online: HashMap<u64, SessionId>,
    /// In-game sessions in the order this ping period pings them ([`SimRunner::ping_slice`]).
    ping_order: Vec<SessionId>,
    status: Arc<SimStatus>,
    stop: Arc<AtomicBool>,
    out: Vec<Output>,
    phase_times: [Duration; PHASES.len()],
    /// Final saves still in flight during a drain.
    pending_final: usize,
    /// Detached sessions by the SHA-256 of their resume token.
    resumable: HashMap<[u8; 32], SessionId>,
    /// Detached sessions in the order they expire (one grace period for all, so detaching appends in order).
    expiries: std::collections::VecDeque<(Instant, SessionId)>,
}

impl SimRunner {
    /// A runner; call [`SimRunner::run`] on the sim thread. `jobs` runs saves, lock renewals, loot and transfers;
    /// `login_jobs` runs logins (argon2), so a login storm can never delay a save or a renewal.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sim: Simulation,
        rx: Consumer<SimEvent>,
        io: Vec<IoHandle>,
        jobs: JobSender<Backend, SimEvent>,
        login_jobs: JobSender<Backend, SimEvent>,
        config: RunnerConfig,
        status: Arc<SimStatus>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let n = io.len();
        Self {
            net: None,
            telemetry: None,
            gauges: None,
            epoch: Instant::now(),
            sim,
            rx,
            io,
            io_dirty: vec![false; n],
            jobs,
            login_jobs,
            config,
            sessions: HashMap::new(),
            online: HashMap::new(),
            ping_order: Vec::new(),
            status,
            stop,
            out: Vec::new(),
            phase_times: [Duration::ZERO; PHASES.len()],
            pending_final: 0,
            resumable: HashMap::new(),
            expiries: std::collections::VecDeque::new(),
        }
    }

    /// Publishes each tick to the io threads' UDP table, which reports it in `UdpWelcome.server_tick`.
    pub fn with_net(mut self, net: Arc<crate::net::io::NetShared>) -> Self {
        self.net = Some(net);
        self
    }

    /// Reports ticks, phases and counters to `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        let m = &telemetry.metrics;
        self.gauges = Some(QueueGauges {
            inbound: m.queue_depth_gauge("inbound"),
            outbound: (0..self.io.len()).map(|i| m.queue_depth_gauge(&format!("outbound-io-{i}"))).collect(),
        });
        self.telemetry = Some(telemetry);
        self
    }

    /// Accumulated time per phase since start (indexed like [`PHASES`]).
    pub fn phase_times(&self) -> &[Duration; PHASES.len()] {
        &self.phase_times
    }

    /// Runs until a stop is requested and the drain finishes (every player saved, or the grace period over).
    pub fn run(mut self) -> TickCounters {
        if let Some(net) = &self.net {
            net.sim_waker.register_current();
        }
        let mut clock = TickClock::new(self.config.tick_rate, Instant::now());
        let save_every = (self.config.save_interval.as_secs_f64() * f64::from(self.config.tick_rate)).max(1.0) as u64;
        let renew_every = (self.config.renew_interval.as_secs_f64() * f64::from(self.config.tick_rate)).max(1.0) as u64;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.idle_until(clock.next_due());
            let started = Instant::now();
            let lateness = clock.start(started);
            self.drain_events();
            let drained = Instant::now();
            let mut phases = [Duration::ZERO; PHASES.len()];
            self.sim.step_timed(&mut self.out, Some(&mut phases));
            let stepped = Instant::now();
            self.route_outputs();
            let tick = self.sim.tick();
            if !self.expiries.is_empty() {
                self.expire_detached(started);
            }
            if let Some(net) = &self.net {
                net.udp.publish_server_tick(tick);
            }
            let ping_every = u64::from(PING_EVERY_SECS * self.config.tick_rate);
            self.ping_slice(tick % ping_every, ping_every);
            if drain_deadline.is_none() {
                if tick % save_every == 0 {
                    self.save_dirty();
                }
                if tick % renew_every == 0 {
                    self.renew_locks();
                }
            }
            if drain_deadline.is_none() && self.stop.load(Ordering::Relaxed) {
                log::info!("draining: saving {} players", self.online.len());
                if let Some(t) = &self.telemetry {
                    t.admin.set_phase(crate::admin::Phase::Draining);
                }
                drain_deadline = Some(started + self.config.grace);
                self.begin_drain();
            }
            self.wake_io();
            let took = started.elapsed();
            let overrun = clock.finish(took);
            self.publish_status(&clock, took);
            for (total, p) in self.phase_times.iter_mut().zip(phases) {
                *total += p;
            }
            self.report(took, overrun, lateness, drained - started, &phases, Instant::now() - stepped);
            if let Some(deadline) = drain_deadline {
                if self.pending_final == 0 || Instant::now() >= deadline {
                    if self.pending_final > 0 {
                        log::error!("grace period over with {} saves still pending", self.pending_final);
                    }
                    for h in &self.io {
                        h.send(Outbound::Shutdown {
                            reason: KickReason::ServerShutdown,
                            message: "server shutting down".into(),
                        });
                        h.wake();
                    }
                    self.status.drained.store(true, Ordering::Release);
                    return clock.counters();
                }
            }
        }
    }

    fn report(
        &self,
        took: Duration,
        overrun: bool,
        lateness: Duration,
        drain: Duration,
        phases: &[Duration; PHASES.len()],
        send: Duration,
    ) {
        let Some(t) = &self.telemetry else { return };
        let m = &t.metrics;
        m.tick.observe(took.as_secs_f64());
        if overrun {
            m.tick_overruns.inc();
        }
        if lateness > Duration::from_millis(1) {
            m.late_ticks.inc();
        }
        m.tick_phases.observe(TickPhase::Drain, drain.as_secs_f64());
        m.tick_phases.observe(TickPhase::Send, send.as_secs_f64());
        // PHASES: respawns, inputs, npc_ai, movement, combat, chat, portals, snapshots. Respawns count as combat.
        let map = [
            TickPhase::Combat,
            TickPhase::Inputs,
            TickPhase::NpcAi,
            TickPhase::Movement,
            TickPhase::Combat,
            TickPhase::Chat,
            TickPhase::Portals,
            TickPhase::Snapshots,
        ];
        for (phase, d) in map.iter().zip(phases) {
            m.tick_phases.observe(*phase, d.as_secs_f64());
        }
        let players = self.sim.players() as i64;
        m.population.players.set(players);
        m.population.npcs.set(self.sim.world.len() as i64 - players);
        if let Some(g) = &self.gauges {
            g.inbound.set(self.rx.approx_len() as i64);
            for (gauge, h) in g.outbound.iter().zip(&self.io) {
                gauge.set(h.backlog() as i64);
            }
        }
        m.set_sim_totals(self.sim.stats());
        t.admin.record_tick(self.sim.tick(), players as u64);
    }

    /// Pings slice `slice` of `slices` of the in-game sessions over UDP (each session once per `slices` ticks);
    /// the nonce is the send time, so the Pong gives the round trip. The list of sessions is taken at slice 0
    /// (one pass over the keys); pinging everyone in one tick was a 2 ms spike every 2 s at 750 players, and
    /// walking every session every tick to find a slice cost more than that (both measured with realm-bots).
    fn ping_slice(&mut self, slice: u64, slices: u64) {
        if slice == 0 {
            self.ping_order.clear();
            self.ping_order.extend(self.online.values().copied());
        }
        let n = self.ping_order.len() as u64;
        let (from, to) = ((n * slice / slices) as usize, (n * (slice + 1) / slices) as usize);
        let nonce = self.epoch.elapsed().as_micros() as u64;
        for &session in &self.ping_order[from.min(to)..to] {
            let Some(ctx) = self.sessions.get(&session) else { continue };
            if matches!(ctx.state, SessionState::InGame(_)) {
                let ping = proto::Ping { nonce, client_time_us: 0 };
                self.io[ctx.io].send(Outbound::Data { session, msg: DataMessage::new(DataBody::Ping(ping)) });
                self.io_dirty[ctx.io] = true;
            }
        }
    }

    fn publish_status(&self, clock: &TickClock, took: Duration) {
        let c = clock.counters();
        let s = &self.status;
        s.tick.store(self.sim.tick(), Ordering::Relaxed);
        s.players_online.store(self.sim.players() as u64, Ordering::Relaxed);
        s.last_tick_nanos.store(took.as_nanos() as u64, Ordering::Relaxed);
        s.overruns.store(c.overruns, Ordering::Relaxed);
        s.late.store(c.late, Ordering::Relaxed);
        s.dropped.store(c.dropped, Ordering::Relaxed);
    }

    /// Waits for the next tick. Woken early (a login or resume arrived: see `SimWaker`), it handles what is
    /// queued at once, so a player waits on its answer, not on the tick; inputs and chat handled early only
    /// queue for the tick as they would have at its start.
    fn idle_until(&mut self, due: Instant) {
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            if self.net.is_none() {
                std::thread::sleep(due - now);
                return;
            }
            std::thread::park_timeout(due - now);
            if Instant::now() < due {
                self.drain_events();
                self.wake_io();
            }
        }
    }

    fn drain_events(&mut self) {
        // Bounded so a flood cannot stretch one tick forever; what is left waits for the next tick.
        for _ in 0..100_000 {
            match self.rx.pop() {
                Pop::Item(event) => {
                    self.status.events.fetch_add(1, Ordering::Relaxed);
                    self.handle(event);
                }
                Pop::Empty => break,
                // A producer is mid-push; its item is picked up next tick rather than spinning here.
                Pop::Inconsistent => break,
            }
        }
    }

    fn send_control(&mut self, session: SessionId, msg: ControlMessage) {
        if let Some(ctx) = self.sessions.get(&session) {
            self.io[ctx.io].send(Outbound::Control { session, msg });
            self.io_dirty[ctx.io] = true;
        }
    }

    fn kick(&mut self, session: SessionId, reason: KickReason, message: &str) {
        if let Some(ctx) = self.sessions.get(&session) {
            self.io[ctx.io].send(Outbound::Close { session, reason, message: message.into() });
            self.io_dirty[ctx.io] = true;
        }
    }

    fn wake_io(&mut self) {
        for (i, dirty) in self.io_dirty.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                self.io[i].wake();
            }
        }
    }

    fn login_error(&mut self, session: SessionId, reason: LoginErrorReason, message: &str, retry_after: Duration) {
        if let Some(t) = &self.telemetry {
            t.metrics.login_refused(reason);
        }
        let e = LoginError {
            reason: reason as i32,
            message: message.into(),
            retry_after_ms: retry_after.as_millis() as u32,
        };
        self.send_control(session, ControlMessage::new(Body::LoginError(e)));
        if let Some(ctx) = self.sessions.get_mut(&session) {
            if matches!(ctx.state, SessionState::Authenticating) {
                ctx.state = SessionState::Greeted;
            }
        }
    }

    fn handle(&mut self, event: SimEvent) {
        match event {
            SimEvent::Net(Inbound::Connected { session, io, addr }) => {
                self.sessions
                    .insert(session, SessionCtx { io, addr, state: SessionState::Greeted, detached_until: None });
            }
            SimEvent::Net(Inbound::Control { session, msg }) => self.on_control(session, msg),
            SimEvent::Net(Inbound::Data { session, msg }) => self.on_data(session, msg),
            SimEvent::Net(Inbound::UdpBound { session, .. }) => self.sim.set_udp_bound(session),
            SimEvent::Net(Inbound::Disconnected { session, reason }) => self.disconnected(session, &reason),
            SimEvent::Login { session, result } => self.on_login(session, result),
            SimEvent::Saved { reason, outcomes } => self.on_saved(reason, outcomes),
            SimEvent::SaveFailed { reason, rows, attempt, locks } => self.on_save_failed(reason, rows, attempt, locks),
            SimEvent::TransferReady { session, portal, token } => {
                self.pending_final = self.pending_final.saturating_sub(1);
                let p = &self.sim.zone().portals[portal];
                let msg = proto::ZoneTransfer {
                    zone: p.target_zone.clone(),
                    address: p.target_address.clone(),
                    transfer_token: token.to_vec(),
                    position: Some(proto::Vec2 { x: p.target_position[0], y: p.target_position[1] }),
                };
                log::info!("session {session:#x} transfers to zone {} at {}", p.target_zone, p.target_address);
                self.send_control(session, ControlMessage::new(Body::ZoneTransfer(msg)));
            }
            SimEvent::LootGranted { session, item } => {
                let loot =
                    proto::LootReceived { item_id: item.item_id, item_kind: item.item_kind, quantity: item.quantity };
                self.send_control(session, ControlMessage::new(Body::Loot(loot)));
            }
            SimEvent::TransferFailed { session, ownership_lost } => {
                self.pending_final = self.pending_final.saturating_sub(1);
                if ownership_lost {
                    self.status.ownership_lost.fetch_add(1, Ordering::Relaxed);
                    self.kick(session, KickReason::OwnershipLost, "this character is now played in another zone");
                } else {
                    self.kick(
                        session,
                        KickReason::SaveFailed,
                        "the zone transfer could not be saved; please reconnect",
                    );
                }
            }
            SimEvent::LocksLost(players) => {
                for player_id in players {
                    if let Some(t) = &self.telemetry {
                        t.metrics.locks.losses.inc();
                    }
                    if let Some(&session) = self.online.get(&player_id) {
                        log::warn!("lost the ownership lock of player {player_id}: dropping the session unsaved");
                        self.status.ownership_lost.fetch_add(1, Ordering::Relaxed);
                        self.drop_unsaved(session);
                        self.kick(session, KickReason::OwnershipLost, "this character is now played in another zone");
                    }
                }
            }
        }
    }

    fn on_control(&mut self, session: SessionId, msg: ControlMessage) {
        let Some(ctx) = self.sessions.get(&session) else { return };
        let ip = ctx.addr.ip();
        match msg.body {
            Some(Body::Login(l)) => self.start_login(session, ip, move |b| b.login.login(&l.username, &l.password, ip)),
            Some(Body::Register(r)) => {
                self.start_login(session, ip, move |b| b.login.register(&r.username, &r.password, ip))
            }
            Some(Body::TransferLogin(t)) if self.config.transfers_enabled => {
                let zone = self.config.zone.clone();
                self.start_login(session, ip, move |b| {
                    let refused = || Refusal {
                        reason: LoginErrorReason::LoginErrorInvalidTransfer,
                        message: "transfer token unknown, used, expired or for another zone".into(),
                        retry_after: Duration::ZERO,
                    };
                    let player_id = match b.transfers.redeem(&t.transfer_token, &zone) {
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
                    match b.login.accounts.find(&t.username) {
                        Ok(Some(a)) if a.id == player_id => b.login.claim(player_id, &a.username, ip),
                        _ => Err(refused()),
                    }
                })
            }
            Some(Body::TransferLogin(_)) => self.login_error(
                session,
                LoginErrorReason::LoginErrorInvalidTransfer,
                "this zone does not accept transfers (no shared database and Redis configured)",
                Duration::ZERO,
            ),
            Some(Body::Chat(c)) => {
                let channel = ChatChannel::try_from(c.channel).unwrap_or(ChatChannel::Say);
                if let Err(e) = self.sim.queue_chat(session, channel, c.text) {
                    self.send_control(
                        session,
                        ControlMessage::new(Body::Error(proto::ErrorNotice { message: e.to_string() })),
                    );
                }
            }
            Some(Body::Resume(r)) => self.resume(session, &r.session_token),
            Some(Body::Logout(_)) => {
                // Queue the goodbye first: `leave` forgets the session's io thread.
                self.kick(session, KickReason::LoggedOut, "logged out");
                self.leave(session);
            }
            _ => {}
        }
    }

    fn start_login(
        &mut self,
        session: SessionId,
        _ip: IpAddr,
        job: impl FnOnce(&Backend) -> Result<LoginGrant, Refusal> + Send + 'static,
    ) {
        if self.online.len() >= self.config.max_players || self.stop.load(Ordering::Relaxed) {
            self.login_error(
                session,
                LoginErrorReason::LoginErrorServerFull,
                "the zone is full",
                Duration::from_secs(10),
            );
            return;
        }
        if let Some(ctx) = self.sessions.get_mut(&session) {
            ctx.state = SessionState::Authenticating;
        }
        let failed = SimEvent::Login {
            session,
            result: Err(Refusal {
                reason: LoginErrorReason::LoginErrorServerBusy,
                message: "try again shortly".into(),
                retry_after: Duration::from_secs(2),
            }),
        };
        let submitted = self.login_jobs.submit_or(
            "login",
            move |b: &Backend| Some(SimEvent::Login { session, result: job(b) }),
            failed,
        );
        if let Err(WorkerError::QueueFull(_) | WorkerError::Stopped) = submitted {
            self.login_error(session, LoginErrorReason::LoginErrorServerBusy, "server busy", Duration::from_secs(2));
        }
    }

    fn on_login(&mut self, session: SessionId, result: Result<LoginGrant, Refusal>) {
        let alive = self.sessions.get(&session).is_some_and(|c| matches!(c.state, SessionState::Authenticating));
        let grant = match result {
            Err(refusal) => {
                self.status.login_refusals.fetch_add(1, Ordering::Relaxed);
                self.login_error(session, refusal.reason, &refusal.message, refusal.retry_after);
                return;
            }
            Ok(grant) => grant,
        };
        if !alive || self.online.contains_key(&grant.player_id) {
            // The client left while we were claiming (or a duplicate slipped through): give the player back.
            let (player_id, token) = (grant.player_id, grant.lock_token);
            let _ = self.jobs.submit("release", move |b: &Backend| {
                let _ = b.login.locks.release(player_id, &token);
                None
            });
            if alive {
                self.login_error(session, LoginErrorReason::LoginErrorAlreadyOnline, "already online", Duration::ZERO);
            }
            return;
        }
        self.status.logins.fetch_add(1, Ordering::Relaxed);
        let spawn = PlayerSpawn {
            player_id: grant.player_id,
            name: grant.username.clone(),
            pos: grant.progress.as_ref().filter(|p| p.zone == self.config.zone).map(|p| Vec2::new(p.pos.0, p.pos.1)),
            level: grant.progress.as_ref().map_or(1, |p| p.level),
            xp: grant.progress.as_ref().map_or(0, |p| p.xp),
            hp: grant.progress.as_ref().map(|p| p.hp),
        };
        let entity = self.sim.spawn_player(session, spawn);
        let pos = self.sim.player_record(session).map(|r| r.pos).unwrap_or_default();
        self.online.insert(grant.player_id, session);
        if let Some(ctx) = self.sessions.get_mut(&session) {
            ctx.state = SessionState::InGame(Owned {
                player_id: grant.player_id,
                epoch: grant.epoch,
                lock_token: grant.lock_token,
                resume_hash: crate::account::password::sha256(&grant.session_token),
            });
        }
        let ok = LoginOk {
            session_id: session,
            player_id: grant.player_id,
            zone: self.config.zone.clone(),
            tick_rate_hz: self.config.tick_rate,
            udp_port: u32::from(self.config.udp_port),
            entity_id: entity,
            session_token: grant.session_token.to_vec(),
            position: Some(proto::Vec2 { x: pos.x, y: pos.y }),
        };
        self.send_control(session, ControlMessage::new(Body::LoginOk(ok)));
    }

    fn on_data(&mut self, session: SessionId, msg: DataMessage) {
        match msg.body {
            Some(DataBody::Input(input)) => {
                let _ = self.sim.queue_input(session, input);
            }
            Some(DataBody::Pong(p)) => {
                let now = self.epoch.elapsed().as_micros() as u64;
                if let (Some(t), Some(rtt)) = (&self.telemetry, now.checked_sub(p.nonce)) {
                    // Ignore absurd values (a forged or very late pong): pings go out every few seconds.
                    if rtt < 10_000_000 {
                        t.metrics.network_latency.observe(rtt as f64 / 1e6);
                    }
                }
            }
            Some(DataBody::Ping(p)) => {
                if let Some(ctx) = self.sessions.get(&session) {
                    let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: self.sim.tick() };
                    self.io[ctx.io].send(Outbound::Data { session, msg: DataMessage::new(DataBody::Pong(pong)) });
                    self.io_dirty[ctx.io] = true;
                }
            }
            _ => {}
        }
    }

    fn route_outputs(&mut self) {
        let mut outputs = std::mem::take(&mut self.out);
        for output in outputs.drain(..) {
            match output {
                Output::Control { session, msg } => self.send_control(session, msg),
                Output::Snapshot { session, snapshot } => {
                    let Some(ctx) = self.sessions.get(&session) else { continue };
                    if self.io[ctx.io].backlog() >= IO_BACKLOG_LIMIT {
                        self.status.snapshots_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.io[ctx.io].send(Outbound::Encoded { session, msg: snapshot.bytes });
                    self.io_dirty[ctx.io] = true;
                }
                Output::Loot { session, item_kind, quantity } => self.grant_loot(session, item_kind, quantity),
                Output::PortalEntered { session, portal } if self.config.transfers_enabled => {
                    self.start_transfer(session, portal);
                }
                Output::PortalEntered { session, portal } => {
                    let name = self.sim.zone().portals[portal].target_zone.clone();
                    let text = format!("the road to {name} is closed: this zone runs without a shared database");
                    self.send_control(session, ControlMessage::new(Body::Error(proto::ErrorNotice { message: text })));
                    self.sim.release_transfer(session);
                }
            }
        }
        self.out = outputs;
    }

    fn progress(&self, record: &PlayerRecord) -> Progress {
        Progress {
            zone: self.config.zone.clone(),
            pos: (record.pos.x, record.pos.y),
            level: record.level,
            xp: record.xp,
            hp: record.hp,
        }
    }

    /// The control connection ended. A player in game whose connection dropped (the peer closed it, or the
    /// network failed) stays in the world for the resume grace period; every other ending leaves at once.
    fn disconnected(&mut self, session: SessionId, reason: &crate::net::session::CloseReason) {
        use crate::net::session::CloseReason;
        let dropped = matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_) | CloseReason::Tls(_));
        let grace = self.config.resume_grace;
        let draining = self.stop.load(Ordering::Relaxed);
        let Some(ctx) = self.sessions.get_mut(&session) else { return };
        let SessionState::InGame(owned) = &ctx.state else { return self.leave(session) };
        if !dropped || grace.is_zero() || draining || ctx.detached_until.is_some() {
            return self.leave(session);
        }
        let until = Instant::now() + grace;
        ctx.detached_until = Some(until);
        self.resumable.insert(owned.resume_hash, session);
        self.expiries.push_back((until, session));
        self.sim.detach_player(session);
        log::debug!("session {session:#x} (player {}) detached until resumed or {grace:?}", owned.player_id);
    }

    /// Detached players whose grace period is over leave the world: final save and lock release, once.
    fn expire_detached(&mut self, now: Instant) {
        while let Some(&(until, session)) = self.expiries.front() {
            if until > now {
                break;
            }
            self.expiries.pop_front();
            // Resumed (or gone) meanwhile: that entry is stale.
            let Some(ctx) = self.sessions.get(&session) else { continue };
            if ctx.detached_until != Some(until) {
                continue;
            }
            if let SessionState::InGame(owned) = &ctx.state {
                self.resumable.remove(&owned.resume_hash);
            }
            self.status.resume_expired.fetch_add(1, Ordering::Relaxed);
            self.leave(session);
        }
    }

    /// `Resume { session_token }` on a new connection: re-attaches the detached session the token belongs to. No
    /// hash, no save, no claim: the character never left; the token is used up and a new one issued.
    fn resume(&mut self, session: SessionId, token: &[u8]) {
        // The token is 256 random bits and the map is keyed by its SHA-256, so a lookup's timing tells nothing
        // useful about any stored token (what a constant-time comparison protects).
        let hash = crate::account::password::sha256(token);
        if !self.sessions.contains_key(&session) {
            return;
        }
        let Some(old) = self.resumable.remove(&hash) else {
            self.status.resume_refused.fetch_add(1, Ordering::Relaxed);
            self.login_error(
                session,
                LoginErrorReason::LoginErrorInvalidResume,
                "resume token unknown, used, expired or for another zone: log in with your password",
                Duration::ZERO,
            );
            return;
        };
        // `resumable` names detached sessions in game; one that stopped being in game meanwhile (its lock was
        // lost, say) is gone for good: the client logs in again.
        let owned = match self.sessions.remove(&old) {
            Some(SessionCtx { state: SessionState::InGame(owned), .. }) => Some(owned),
            Some(other) => {
                self.sessions.insert(old, other);
                None
            }
            None => None,
        };
        let reattached = owned.and_then(|o| self.sim.reattach_player(old, session).map(|entity| (o, entity)));
        let Some((mut owned, entity)) = reattached else {
            self.status.resume_refused.fetch_add(1, Ordering::Relaxed);
            self.login_error(
                session,
                LoginErrorReason::LoginErrorInvalidResume,
                "this session ended while you were away: log in with your password",
                Duration::ZERO,
            );
            return;
        };
        let Some(new_ctx) = self.sessions.get_mut(&session) else { return };
        let (token, token_hash) = crate::account::password::new_token();
        owned.resume_hash = token_hash;
        let player_id = owned.player_id;
        new_ctx.state = SessionState::InGame(owned);
        self.online.insert(player_id, session);
        self.status.resumes.fetch_add(1, Ordering::Relaxed);
        let pos = self.sim.player_record(session).map(|r| r.pos).unwrap_or_default();
        log::debug!("session {old:#x} (player {player_id}) resumed as {session:#x}");
        let ok = LoginOk {
            session_id: session,
            player_id,
            zone: self.config.zone.clone(),
            tick_rate_hz: self.config.tick_rate,
            udp_port: u32::from(self.config.udp_port),
            entity_id: entity,
            session_token: token.to_vec(),
            position: Some(proto::Vec2 { x: pos.x, y: pos.y }),
        };
        self.send_control(session, ControlMessage::new(Body::LoginOk(ok)));
    }

    /// The player leaves the world (logout, disconnect, shutdown): final save, then lock release.
    fn leave(&mut self, session: SessionId) {
        let Some(ctx) = self.sessions.get_mut(&session) else { return };
        if ctx.detached_until.take().is_some() {
            if let SessionState::InGame(owned) = &ctx.state {
                self.resumable.remove(&owned.resume_hash);
            }
        }
        let state = std::mem::replace(&mut ctx.state, SessionState::Closed);
        if let SessionState::InGame(owned) = state {
            self.online.remove(&owned.player_id);
            if let Some(record) = self.sim.despawn_player(session) {
                let row = SaveRow { player_id: owned.player_id, epoch: owned.epoch, progress: self.progress(&record) };
                self.submit_save(SaveReason::Final, vec![row], 1, vec![(owned.player_id, owned.lock_token)]);
            }
        }
        self.sessions.remove(&session);
    }

    /// Writes a looted item at once, fenced by the owner's epoch; the client hears of it only once it is stored.
    fn grant_loot(&mut self, session: SessionId, item_kind: u32, quantity: u32) {
        let Some(SessionCtx { state: SessionState::InGame(owned), .. }) = self.sessions.get(&session) else { return };
        let (player_id, epoch) = (owned.player_id, owned.epoch);
        let submitted = self.jobs.submit("loot", move |b: &Backend| {
            match b.login.players.grant_item(player_id, epoch, item_kind, quantity) {
                Ok(GrantOutcome::Granted(item_id)) => Some(SimEvent::LootGranted {
                    session,
                    item: crate::account::OwnedItem { item_id, item_kind, quantity },
                }),
                Ok(GrantOutcome::OwnershipLost) => Some(SimEvent::LocksLost(vec![player_id])),
                Err(e) => {
                    // Lost loot is logged and counted, never granted twice: the id was not handed out.
                    log::warn!("loot for player {player_id} not written: {e}");
                    None
                }
            }
        });
        if let Err(e) = submitted {
            log::warn!("loot for player {player_id} dropped: {e}");
        }
    }

    /// Portal: save the player for the target zone (fenced), release the lock, issue a one-time token; the
    /// client gets a `ZoneTransfer` when that is done (`SimEvent::TransferReady`).
    fn start_transfer(&mut self, session: SessionId, portal: usize) {
        let Some(ctx) = self.sessions.get_mut(&session) else { return };
        let SessionState::InGame(owned) = std::mem::replace(&mut ctx.state, SessionState::Closed) else { return };
        self.online.remove(&owned.player_id);
        let Some(record) = self.sim.despawn_player(session) else { return };
        let p = &self.sim.zone().portals[portal];
        let (target_zone, target_pos) = (p.target_zone.clone(), p.target_position);
        let row = SaveRow {
            player_id: owned.player_id,
            epoch: owned.epoch,
            progress: Progress {
                zone: target_zone.clone(),
                pos: (target_pos[0], target_pos[1]),
                level: record.level,
                xp: record.xp,
                hp: record.hp,
            },
        };
        self.pending_final += 1;
        let panicked = SimEvent::TransferFailed { session, ownership_lost: false };
        let submitted = self.jobs.submit_or(
            "transfer",
            move |b: &Backend| {
                let failed = |ownership_lost| Some(SimEvent::TransferFailed { session, ownership_lost });
                match b.login.players.save(std::slice::from_ref(&row)) {
                    Ok(o) if o.first() == Some(&SaveOutcome::Saved) => {}
                    Ok(_) => return failed(true),
                    Err(e) => {
                        log::warn!("transfer save of player {} failed: {e}", row.player_id);
                        return failed(false);
                    }
                }
                let _ = b.login.locks.release(row.player_id, &owned.lock_token);
                match b.transfers.issue(row.player_id, &target_zone, Duration::from_secs(60)) {
                    Ok(token) => Some(SimEvent::TransferReady { session, portal, token }),
                    Err(e) => {
                        log::warn!("transfer token for player {} not issued: {e}", row.player_id);
                        failed(false)
                    }
                }
            },
            panicked,
        );
        if submitted.is_err() {
            self.pending_final -= 1;
            self.kick(session, KickReason::SaveFailed, "server busy; please reconnect");
        }
    }

    /// Drops a player without saving (ownership lost: the newer owner's data must win).
    fn drop_unsaved(&mut self, session: SessionId) {
        let Some(ctx) = self.sessions.get_mut(&session) else { return };
        let detached = ctx.detached_until.take().is_some();
        if let SessionState::InGame(owned) = std::mem::replace(&mut ctx.state, SessionState::Closed) {
            if detached {
                self.resumable.remove(&owned.resume_hash);
            }
            self.online.remove(&owned.player_id);
            self.sim.despawn_player(session);
        }
        if detached {
            // Its connection is already gone: no Disconnected will come to remove it.
            self.sessions.remove(&session);
        }
    }

    fn save_dirty(&mut self) {
        let dirty = self.sim.take_dirty();
        if dirty.is_empty() {
            return;
        }
        let mut rows = Vec::with_capacity(dirty.len());
        for (session, record) in dirty {
            if let Some(SessionCtx { state: SessionState::InGame(owned), .. }) = self.sessions.get(&session) {
                rows.push(SaveRow { player_id: owned.player_id, epoch: owned.epoch, progress: self.progress(&record) });
            }
        }
        self.submit_save(SaveReason::Periodic, rows, 1, Vec::new());
    }

    fn submit_save(&mut self, reason: SaveReason, rows: Vec<SaveRow>, attempt: u32, locks: Vec<(u64, String)>) {
        if rows.is_empty() {
            return;
        }
        if reason == SaveReason::Final {
            self.pending_final += 1;
        }
        // A save job that panics comes back as a failed attempt (retried, then kicked, like any other failure).
        let batch = rows.len() as u64;
        let panicked = SimEvent::SaveFailed { reason, rows: rows.clone(), attempt, locks: locks.clone() };
        let result = self.jobs.submit_or(
            "save",
            move |b: &Backend| {
                Some(match b.login.players.save(&rows) {
                    Ok(outcomes) => {
                        for (player_id, token) in &locks {
                            let _ = b.login.locks.release(*player_id, token);
                        }
                        SimEvent::Saved { reason, outcomes: rows.iter().map(|r| r.player_id).zip(outcomes).collect() }
                    }
                    Err(e) => {
                        log::warn!("save batch of {} failed (attempt {attempt}): {e}", rows.len());
                        SimEvent::SaveFailed { reason, rows, attempt, locks }
                    }
                })
            },
            panicked,
        );
        if let Err(e) = result {
            // The queue is full: count it as a failed attempt; the rows stay dirty for the next periodic save.
            log::warn!("save not submitted: {e}");
            self.status.save_failures.fetch_add(1, Ordering::Relaxed);
            // The alert on save failures must see the overload case too.
            if let Some(t) = &self.telemetry {
                t.metrics.save_failures.inc_by(batch);
            }
            if reason == SaveReason::Final {
                self.pending_final -= 1;
            }
        }
    }

    fn on_saved(&mut self, reason: SaveReason, outcomes: Vec<(u64, SaveOutcome)>) {
        if reason == SaveReason::Final {
            self.pending_final = self.pending_final.saturating_sub(1);
        }
        for (player_id, outcome) in outcomes {
            match outcome {
                SaveOutcome::Saved => {
                    self.status.saves.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = &self.telemetry {
                        t.metrics.saves.inc();
                    }
                }
                SaveOutcome::OwnershipLost => {
                    self.status.ownership_lost.fetch_add(1, Ordering::Relaxed);
                    log::warn!("save of player {player_id} fenced off: another zone owns it now; dropping the session");
                    if let Some(&session) = self.online.get(&player_id) {
                        self.drop_unsaved(session);
                        self.kick(session, KickReason::OwnershipLost, "this character is now played in another zone");
                    }
                }
            }
        }
    }

    fn on_save_failed(&mut self, reason: SaveReason, rows: Vec<SaveRow>, attempt: u32, locks: Vec<(u64, String)>) {
        self.status.save_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.telemetry {
            t.metrics.save_failures.inc();
        }
        if reason == SaveReason::Final {
            self.pending_final = self.pending_final.saturating_sub(1);
        }
        if attempt < SAVE_ATTEMPTS {
            self.submit_save(reason, rows, attempt + 1, locks);
            return;
        }
        log::error!("giving up on saving {} players after {attempt} attempts: kicking them", rows.len());
        for row in rows {
            if let Some(&session) = self.online.get(&row.player_id) {
                self.leave_without_save(session);
                self.kick(session, KickReason::SaveFailed, "your progress could not be saved; please reconnect later");
            }
        }
    }

    fn leave_without_save(&mut self, session: SessionId) {
        self.drop_unsaved(session);
    }

    fn renew_locks(&mut self) {
        let held: Vec<(u64, String)> = self
            .sessions
            .values()
            .filter_map(|c| match &c.state {
                SessionState::InGame(o) => Some((o.player_id, o.lock_token.clone())),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let ttl = self.config.renew_interval * 3;
        let _ = self.jobs.submit("renew_locks", move |b: &Backend| {
            let mut lost = Vec::new();
            for (player_id, token) in held {
                match b.login.locks.extend(player_id, &token, ttl) {
                    Ok(true) => {}
                    // Our key is gone. If nobody else holds it (the lock store restarted and forgot everything), take
                    // it again; if another zone holds it, we lost. Either way the epoch fence keeps ownership single:
                    // a zone that re-took a lock after another claimed the player is still fenced off at its next save.
                    Ok(false) => match b.login.locks.acquire(player_id, &token, ttl) {
                        Ok(true) => {
                            log::info!("re-acquired the ownership lock of player {player_id} (lock store lost it)")
                        }
                        Ok(false) => lost.push(player_id),
                        Err(e) => log::warn!("lock re-acquire failed: {e}"),
                    },
                    // Backend down: keep playing; the epoch fence still protects the data.
                    Err(StoreError::Unavailable(e)) => log::warn!("lock renewal failed: {e}"),
                    Err(e) => log::warn!("lock renewal failed: {e}"),
                }
            }
            (!lost.is_empty()).then_some(SimEvent::LocksLost(lost))
        });
    }

    fn begin_drain(&mut self) {
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for session in sessions {
            let in_game = matches!(self.sessions.get(&session).map(|c| &c.state), Some(SessionState::InGame(_)));
            if in_game {
                self.leave(session);
            }
        }
    }
}

/// Everything a status reader needs, as plain numbers (health endpoint, logs).
pub fn status_line(s: &SimStatus) -> String {
    format!(
        "tick {} players {} overruns {} saves {} save_failures {}",
        s.tick.load(Ordering::Relaxed),
        s.players_online.load(Ordering::Relaxed),
        s.overruns.load(Ordering::Relaxed),
        s.saves.load(Ordering::Relaxed),
        s.save_failures.load(Ordering::Relaxed)
    )
}
