//! The admin HTTP listener (`GET /metrics`, `/health`, `/ready`) and the lifecycle state it reports.
//!
//! [`AdminState`] is written by the lifecycle code and the simulation (phase, tick, players, backend states) and
//! read by the listener; it is all atomics, so writers never wait for a scrape. [`spawn`] starts the listener on
//! its own thread, `realm-admin`: one mio event loop with non-blocking sockets, a bounded number of connections,
//! a deadline per connection (a client that sends nothing or dribbles its head is answered 408 and closed), the
//! oldest unanswered connection evicted when the table is full (so a flood of slow clients cannot keep probes and
//! scrapes out; `server.rs` says why this and not a per-address cap) and one response per connection
//! (`Connection: close`). The same loop runs the freeze watchdog: when the tick has not advanced for
//! `admin.freeze_after_ms`, `/health` says `frozen` (503), `/ready` is 503, and one warning is logged per freeze
//! episode. Once the io threads are attached ([`AdminState::attach_net`]), `/health` and `/ready` also say whether
//! a player could connect: an io thread that stopped is `io_stopped` (503: restarting helps), every slot held by a
//! logged-in player is `full` (200 — restarting would drop them all — but not `ok`, and `/ready` is 503).
//!
//! The listener binds `admin.host`, loopback by default: whatever probes or scrapes it from outside the process's
//! network namespace (kubelet, Prometheus, a published container port) needs `admin.host = "0.0.0.0"`
//! (`REALM_ADMIN_HOST=0.0.0.0`), which k8s/ and docker-compose.yml set.
//!
//! Invariant a reader must not break: the admin thread never blocks on a peer and nothing it does can block the
//! game — every socket is non-blocking, every connection has a deadline, and the only shared state it touches is
//! atomics plus the short locks the metrics collector takes on its sources. A slow or hostile admin client costs
//! one connection slot until its deadline or until a newer connection needs the slot, never another client's
//! answer or a tick.

mod http;
mod server;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::config::Config;
use crate::metrics::Metrics;

pub use http::{MAX_HEADERS, MAX_HEAD_BYTES};
pub use server::{HEAD_TIMEOUT, MAX_CONNECTIONS};

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Loading, connecting, not yet accepting players. `/ready` is 503.
    Starting = 0,
    /// Serving players. `/ready` is 200 unless frozen.
    Ready = 1,
    /// Shutting down: no new players, saving everyone. `/ready` is 503.
    Draining = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }

    /// Lower-case name.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// State of a backing service (PostgreSQL, Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Not configured: the in-process embedded implementation is used. Never down.
    Embedded = 0,
    /// Configured and reachable.
    Up = 1,
    /// Configured and unreachable: `/health` answers 503 `degraded`.
    Down = 2,
}

impl BackendState {
    fn from_u8(v: u8) -> BackendState {
        match v {
            1 => BackendState::Up,
            2 => BackendState::Down,
            _ => BackendState::Embedded,
        }
    }

    /// Lower-case name, as in `/health`.
    pub fn label(self) -> &'static str {
        match self {
            BackendState::Embedded => "embedded",
            BackendState::Up => "up",
            BackendState::Down => "down",
        }
    }
}

/// The `status` of `/health`, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// The tick has not advanced for `admin.freeze_after_ms`. HTTP 503.
    Frozen,
    /// An io thread stopped: it accepts nothing and its players are gone. HTTP 503.
    IoStopped,
    /// A configured backend is down. HTTP 503.
    Degraded,
    /// Every connection slot holds a logged-in player: no one else can connect. HTTP 200 (restarting would
    /// drop them all), but `/ready` is 503.
    Full,
    /// Shutting down. HTTP 200.
    Draining,
    /// Not ready yet. HTTP 200.
    Starting,
    /// Serving. HTTP 200.
    Ok,
}

impl HealthStatus {
    /// Lower-case name, as in `/health`.
    pub fn label(self) -> &'static str {
        match self {
            HealthStatus::Frozen => "frozen",
            HealthStatus::IoStopped => "io_stopped",
            HealthStatus::Full => "full",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Draining => "draining",
            HealthStatus::Starting => "starting",
            HealthStatus::Ok => "ok",
        }
    }

    /// Whether `/health` answers 200.
    pub fn is_healthy(self) -> bool {
        !matches!(self, HealthStatus::Frozen | HealthStatus::IoStopped | HealthStatus::Degraded)
    }
}

/// A consistent-enough reading of [`AdminState`] at one instant (each field is read atomically on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Overall status.
    pub status: HealthStatus,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Server version.
    pub version: String,
    /// Zone name.
    pub zone: String,
    /// Players online.
    pub players_online: u64,
    /// Last completed tick.
    pub server_tick: u64,
    /// Milliseconds since the last tick; `None` before the first.
    pub tick_age_ms: Option<u64>,
    /// PostgreSQL.
    pub database: BackendState,
    /// Redis.
    pub redis: BackendState,
}

impl HealthReport {
    /// The `/health` body.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "status": self.status.label(),
            "phase": self.phase.label(),
            "version": self.version,
            "zone": self.zone,
            "players_online": self.players_online,
            "server_tick": self.server_tick,
            "tick_age_ms": self.tick_age_ms,
            "database": self.database.label(),
            "redis": self.redis.label(),
        })
        .to_string()
    }
}

/// "Never" in the millisecond stamps below (a real stamp is at least 1).
const NEVER: u64 = 0;

/// Lifecycle and liveness state shared by the lifecycle code, the simulation and the admin listener. All
/// atomics: every setter is a few relaxed stores and never waits.
#[derive(Debug)]
pub struct AdminState {
    zone: String,
    version: String,
    freeze_after_ms: u64,
    epoch: Instant,
    phase: AtomicU8,
    database: AtomicU8,
    redis: AtomicU8,
    /// Shared with [`Metrics::players_online`]: one number, two views.
    players_online: IntGauge,
    /// Shared with [`Metrics::current_tick`].
    current_tick: IntGauge,
    /// Milliseconds since `epoch` + 1 of the last tick; `NEVER` before the first.
    last_tick_ms: AtomicU64,
    /// Same clock, when the phase last became Ready; `NEVER` before.
    ready_since_ms: AtomicU64,
    /// The watchdog has logged the current freeze episode.
    freeze_reported: AtomicBool,
    /// The io threads' shared state, once attached: whether a player could connect now.
    net: std::sync::OnceLock<Arc<crate::net::io::NetShared>>,
}

impl AdminState {
    /// State for `zone` at `version`, in phase Starting with both backends embedded, reporting frozen after
    /// `freeze_after` without a tick. Players online and the current tick are the gauges of `metrics`.
    pub fn new(zone: &str, version: &str, freeze_after: Duration, metrics: &Metrics) -> AdminState {
        AdminState {
            zone: zone.to_owned(),
            version: version.to_owned(),
            freeze_after_ms: u64::try_from(freeze_after.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Starting as u8),
            database: AtomicU8::new(BackendState::Embedded as u8),
            redis: AtomicU8::new(BackendState::Embedded as u8),
            players_online: metrics.players_online.clone(),
            current_tick: metrics.current_tick.clone(),
            last_tick_ms: AtomicU64::new(NEVER),
            ready_since_ms: AtomicU64::new(NEVER),
            freeze_reported: AtomicBool::new(false),
            net: std::sync::OnceLock::new(),
        }
    }

    /// Lets `/health` and `/ready` report whether the io threads can take a new player (see the module doc).
    pub fn attach_net(&self, net: Arc<crate::net::io::NetShared>) {
        let _ = self.net.set(net);
    }

    fn accepting(&self) -> crate::net::io::Accepting {
        self.net.get().map_or(crate::net::io::Accepting::Yes, |n| n.accepting())
    }

    /// Whether a new player could connect now (always true until the io threads are attached).
    pub fn accepts_players(&self) -> bool {
        self.accepting() == crate::net::io::Accepting::Yes
    }

    /// State from the configuration: zone `server.zone`, this crate's version, `admin.freeze_after_ms`; a
    /// configured database or Redis starts `Down` until the data layer reports it `Up` (so `/health` does not
    /// claim a backend it has not reached), an unconfigured one is `Embedded`.
    pub fn from_config(config: &Config, metrics: &Metrics) -> AdminState {
        let state = AdminState::new(
            &config.server.zone,
            env!("CARGO_PKG_VERSION"),
            Duration::from_millis(config.admin.freeze_after_ms),
            metrics,
        );
        if !config.uses_embedded_store() {
            state.set_database(BackendState::Down);
        }
        if !config.redis.url.is_empty() {
            state.set_redis(BackendState::Down);
        }
        state
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Moves to `phase`. Entering Ready starts the freeze clock even if no tick has been recorded yet.
    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Ready {
            self.ready_since_ms.store(self.now_ms(Instant::now()), Ordering::Relaxed);
        }
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Records a completed tick (sim thread, once per tick): the tick number, players online, and "now" for the
    /// freeze watchdog.
    pub fn record_tick(&self, tick: u64, players_online: u64) {
        self.record_tick_at(tick, players_online, Instant::now());
    }

    /// [`AdminState::record_tick`] with an explicit instant.
    pub fn record_tick_at(&self, tick: u64, players_online: u64, now: Instant) {
        self.current_tick.set(i64::try_from(tick).unwrap_or(i64::MAX));
        self.players_online.set(i64::try_from(players_online).unwrap_or(i64::MAX));
        self.last_tick_ms.store(self.now_ms(now), Ordering::Relaxed);
    }

    /// Sets players online without recording a tick.
    pub fn set_players_online(&self, players: u64) {
        self.players_online.set(i64::try_from(players).unwrap_or(i64::MAX));
    }

    /// Sets the database state.
    pub fn set_database(&self, state: BackendState) {
        self.database.store(state as u8, Ordering::Relaxed);
    }

    /// Sets the Redis state.
    pub fn set_redis(&self, state: BackendState) {
        self.redis.store(state as u8, Ordering::Relaxed);
    }

    /// The configured freeze threshold.
    pub fn freeze_after(&self) -> Duration {
        Duration::from_millis(self.freeze_after_ms)
    }

    /// How long the tick has been stalled at `now`: since the last tick or since entering Ready, whichever is
    /// later; `None` while there is nothing to watch (starting, no tick yet).
    fn stalled_ms(&self, now: Instant) -> Option<u64> {
        let since = self.last_tick_ms.load(Ordering::Relaxed).max(self.ready_since_ms.load(Ordering::Relaxed));
        (since != NEVER).then(|| self.now_ms(now).saturating_sub(since))
    }

    /// Whether the tick has not advanced for the freeze threshold at `now`.
    pub fn is_frozen(&self, now: Instant) -> bool {
        self.stalled_ms(now).is_some_and(|ms| ms >= self.freeze_after_ms)
    }

    /// `/ready`: Ready, not frozen, and a player could connect.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.phase() == Phase::Ready && !self.is_frozen(now) && self.accepts_players()
    }

    /// The `/health` reading at `now`.
    pub fn health(&self, now: Instant) -> HealthReport {
        let phase = self.phase();
        let database = BackendState::from_u8(self.database.load(Ordering::Relaxed));
        let redis = BackendState::from_u8(self.redis.load(Ordering::Relaxed));
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let accepting = self.accepting();
        let status = if self.is_frozen(now) {
            HealthStatus::Frozen
        } else if accepting == crate::net::io::Accepting::IoStopped {
            HealthStatus::IoStopped
        } else if database == BackendState::Down || redis == BackendState::Down {
            HealthStatus::Degraded
        } else if accepting == crate::net::io::Accepting::Full && phase == Phase::Ready {
            HealthStatus::Full
        } else {
            match phase {
                Phase::Draining => HealthStatus::Draining,
                Phase::Starting => HealthStatus::Starting,
                Phase::Ready => HealthStatus::Ok,
            }
        };
        HealthReport {
            status,
            phase,
            version: self.version.clone(),
            zone: self.zone.clone(),
            players_online: u64::try_from(self.players_online.get()).unwrap_or(0),
            server_tick: u64::try_from(self.current_tick.get()).unwrap_or(0),
            tick_age_ms: (last != NEVER).then(|| self.now_ms(now).saturating_sub(last)),
            database,
            redis,
        }
    }

    /// The freeze watchdog: logs a warning when a freeze episode starts and a note when the tick moves again,
    /// once each per episode. Returns whether frozen at `now`. Called by the admin loop periodically and on
    /// every `/health` and `/ready`.
    pub fn check_freeze(&self, now: Instant) -> bool {
        let frozen = self.is_frozen(now);
        if frozen {
            if !self.freeze_reported.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "simulation frozen: tick {} has not advanced for {} ms (admin.freeze_after_ms = {}); /ready is 503",
                    self.current_tick.get(),
                    self.stalled_ms(now).unwrap_or(0),
                    self.freeze_after_ms
                );
            }
        } else if self.freeze_reported.swap(false, Ordering::Relaxed) {
            log::info!("simulation tick advancing again (tick {})", self.current_tick.get());
        }
        frozen
    }
}

/// The running admin listener. Dropping it stops and joins the thread too.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// The bound address (the real port when configured as 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drops open admin connections and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the admin thread: {e}");
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("admin thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `admin.host:admin.port` (port 0 picks a free port) and starts the `realm-admin` thread. The bind error,
/// if any, is returned here rather than logged from the thread.
pub fn spawn(config: &Config, state: Arc<AdminState>, metrics: Arc<Metrics>) -> io::Result<AdminServer> {
    let addr = SocketAddr::new(config.admin.host, config.admin.port);
    let listener = mio::net::TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let poll = mio::Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), server::WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut event_loop = server::AdminLoop::new(poll, listener, state, metrics, Arc::clone(&stop))?;
    let thread = std::thread::Builder::new().name("realm-admin".into()).spawn(move || event_loop.run())?;
    log::info!("admin listener on http://{local_addr} (/metrics /health /ready)");
    Ok(AdminServer { local_addr, stop, waker, thread: Some(thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(freeze_ms: u64) -> (AdminState, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new("test-zone"));
        (AdminState::new("test-zone", "1.2.3", Duration::from_millis(freeze_ms), &metrics), metrics)
    }

    #[test]
    fn starting_is_healthy_but_not_ready_and_nothing_is_frozen_before_the_first_tick() {
        let (s, _) = state(100);
        let later = Instant::now() + Duration::from_secs(60);
        let h = s.health(later);
        assert_eq!(h.status, HealthStatus::Starting);
        assert!(h.status.is_healthy());
        assert_eq!(h.tick_age_ms, None);
        assert!(!s.is_ready(later));
    }

    #[test]
    fn ready_then_draining() {
        let (s, _) = state(1_000);
        s.set_phase(Phase::Ready);
        let now = Instant::now();
        s.record_tick_at(7, 3, now);
        assert!(s.is_ready(now));
        let h = s.health(now);
        assert_eq!((h.status, h.server_tick, h.players_online, h.tick_age_ms), (HealthStatus::Ok, 7, 3, Some(0)));
        s.set_phase(Phase::Draining);
        assert!(!s.is_ready(now));
        assert_eq!(s.health(now).status, HealthStatus::Draining);
    }

    #[test]
    fn a_stalled_tick_is_frozen_and_recovers_when_it_moves() {
        let (s, metrics) = state(200);
        s.set_phase(Phase::Ready);
        let t0 = Instant::now();
        s.record_tick_at(1, 0, t0);
        assert!(!s.check_freeze(t0 + Duration::from_millis(150)));
        let late = t0 + Duration::from_millis(250);
        assert!(s.check_freeze(late));
        assert!(!s.is_ready(late));
        assert_eq!(s.health(late).status, HealthStatus::Frozen);
        s.record_tick_at(2, 0, late);
        assert!(!s.check_freeze(late));
        assert!(s.is_ready(late));
        assert_eq!(metrics.current_tick.get(), 2);
    }

    #[test]
    fn entering_ready_without_any_tick_starts_the_freeze_clock() {
        let (s, _) = state(100);
        s.set_phase(Phase::Ready);
        assert!(s.is_frozen(Instant::now() + Duration::from_millis(150)));
    }

    #[test]
    fn a_configured_backend_down_is_degraded_but_embedded_never_is() {
        let (s, _) = state(1_000);
        s.set_phase(Phase::Ready);
        s.set_database(BackendState::Up);
        assert_eq!(s.health(Instant::now()).status, HealthStatus::Ok);
        s.set_redis(BackendState::Down);
        let h = s.health(Instant::now());
        assert_eq!(h.status, HealthStatus::Degraded);
        assert!(!h.status.is_healthy());
        let json: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        assert_eq!(json["redis"], "down");
        assert_eq!(json["database"], "up");
        assert_eq!(json["status"], "degraded");
    }

    #[test]
    fn the_default_config_binds_the_admin_port_to_loopback_only() {
        let host = Config::default().admin.host;
        assert!(host.is_loopback(), "admin.host defaults to {host}: /metrics and /health would face every network");
        // Exposing it is one variable away, as the deployments do it.
        let env = [("REALM_ADMIN_HOST".to_owned(), "0.0.0.0".to_owned())];
        let exposed = Config::load_with_env(None, env).expect("REALM_ADMIN_HOST=0.0.0.0 is valid");
        assert!(exposed.admin.host.is_unspecified());
    }

    #[test]
    fn from_config_marks_configured_backends_down_until_reported() {
        let metrics = Metrics::new("z");
        let mut config = Config::default();
        let s = AdminState::from_config(&config, &metrics);
        assert_eq!(
            (s.health(Instant::now()).database, s.health(Instant::now()).redis),
            (BackendState::Embedded, BackendState::Embedded)
        );
        config.redis.url = "redis://127.0.0.1:6379/0".into();
        let s = AdminState::from_config(&config, &metrics);
        assert_eq!(s.health(Instant::now()).redis, BackendState::Down);
    }
}
