//! The simulation thread (`realm-sim`): the loop that paces the tick and carries things between the parts.
//!
//! Each tick: wait for its start (handling logins and resumes early if woken), drain the inbound queue into the
//! session machine ([`Sessions`]), step the game ([`Simulation`]), hand the game's outputs on (snapshots straight
//! to their io thread, the rest to the session machine), let the session machine do its periodic work, then carry
//! out the effects: items to the io threads, jobs to the worker pools. The rules live in those parts; this file
//! only moves things between them and measures the tick.
//!
//! Invariant: this thread holds no database, Redis or socket handle — only job senders and io handles — so
//! nothing it does can block; the only wait is the one until the next tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::game::{Output, Simulation};
use super::jobs::{Job, JobFailure, Lane, SimEvent};
use super::phase::Phase;
use super::sessions::{Effect, SessionConfig, Sessions};
use super::tick::{TickClock, TickCounters};
use crate::account::backend::Backend;
use crate::admin::AdminState;
use crate::link::{IoHandle, Outbound, SimWaker};
use crate::metrics::Metrics;
use crate::proto::KickReason;
use crate::queue::{Consumer, Pop};
use crate::worker::JobSender;

/// Outbound items an io thread may have pending before the simulation stops queueing snapshots for it: about two
/// ticks of snapshots for 2,000 players. Control messages are always queued (they are reliable and rare).
pub const IO_BACKLOG_LIMIT: usize = 4096;

/// Events handled per drain at most, so a flood cannot stretch one tick forever; the rest waits for the next.
const DRAIN_LIMIT: usize = 100_000;

/// Settings the runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Ticks per second.
    pub tick_rate: u32,
    /// How long the drain may take.
    pub grace: Duration,
    /// The session machine's settings.
    pub sessions: SessionConfig,
}

/// The worker pools, by lane.
pub struct Workers {
    /// Saves, lock renewals, loot, transfers.
    pub jobs: JobSender<Backend, SimEvent>,
    /// Logins (argon2), so a login storm can never delay a save or a renewal.
    pub logins: JobSender<Backend, SimEvent>,
}

/// The simulation thread's state.
pub struct SimRunner {
    sim: Simulation,
    sessions: Sessions,
    rx: Consumer<SimEvent>,
    io: Vec<IoHandle>,
    io_dirty: Vec<bool>,
    workers: Workers,
    config: RunnerConfig,
    metrics: Arc<Metrics>,
    queue_gauges: (prometheus::IntGauge, Vec<prometheus::IntGauge>),
    admin: Option<Arc<AdminState>>,
    waker: Option<Arc<SimWaker>>,
    publish_tick: Option<Box<dyn Fn(u64) + Send>>,
    stop: Arc<AtomicBool>,
    out: Vec<Output>,
    failed: Vec<SimEvent>,
    phase_totals: [Duration; Phase::ALL.len()],
}

impl SimRunner {
    /// A runner; call [`SimRunner::run`] on the sim thread.
    pub fn new(
        sim: Simulation,
        rx: Consumer<SimEvent>,
        io: Vec<IoHandle>,
        workers: Workers,
        config: RunnerConfig,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let n = io.len();
        let queue_gauges = (
            metrics.queue_depth_gauge("inbound"),
            (0..n).map(|i| metrics.queue_depth_gauge(&format!("outbound-io-{i}"))).collect(),
        );
        Self {
            sessions: Sessions::new(config.sessions.clone(), Arc::clone(&metrics), Instant::now()),
            sim,
            rx,
            io,
            io_dirty: vec![false; n],
            workers,
            config,
            metrics,
            queue_gauges,
            admin: None,
            waker: None,
            publish_tick: None,
            stop,
            out: Vec::new(),
            failed: Vec::new(),
            phase_totals: [Duration::ZERO; Phase::ALL.len()],
        }
    }

    /// Parks between ticks and is woken by `waker` for logins and resumes; publishes each tick with `publish_tick`
    /// (the io threads report it in `UdpWelcome.server_tick`).
    pub fn with_io_link(mut self, waker: Arc<SimWaker>, publish_tick: Box<dyn Fn(u64) + Send>) -> Self {
        self.waker = Some(waker);
        self.publish_tick = Some(publish_tick);
        self
    }

    /// Reports ticks, players and the drain to /health and /ready.
    pub fn with_admin(mut self, admin: Arc<AdminState>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Accumulated time per phase since start (indexed like [`Phase::ALL`]).
    pub fn phase_times(&self) -> &[Duration; Phase::ALL.len()] {
        &self.phase_totals
    }

    /// Runs until a stop is requested and the drain finishes (every final save answered, or the grace period
    /// over).
    pub fn run(mut self) -> TickCounters {
        if let Some(w) = &self.waker {
            w.register_current();
        }
        let mut clock = TickClock::new(self.config.tick_rate, Instant::now());
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.idle_until(clock.next_due());
            let started = Instant::now();
            let lateness = clock.start(started);
            let mut phases = [Duration::ZERO; Phase::ALL.len()];
            self.drain_events(started);
            let mut mark = Instant::now();
            phases[Phase::Drain.index()] = mark - started;
            self.sim.step_with(&mut self.out, &mut |p| {
                let now = Instant::now();
                phases[p.index()] = now - mark;
                mark = now;
            });
            self.route_outputs();
            let tick = self.sim.tick();
            self.sessions.tick(&mut self.sim, tick, started);
            if let Some(publish) = &self.publish_tick {
                publish(tick);
            }
            if drain_deadline.is_none() && self.stop.load(Ordering::Relaxed) {
                log::info!("draining: saving {} players", self.sessions.online());
                if let Some(a) = &self.admin {
                    a.set_phase(crate::admin::Phase::Draining);
                }
                drain_deadline = Some(started + self.config.grace);
                self.sessions.begin_drain(&mut self.sim);
            }
            self.apply_effects();
            self.wake_io();
            phases[Phase::Send.index()] = mark.elapsed();
            let took = started.elapsed();
            let overrun = clock.finish(took);
            self.report(took, overrun, lateness, &phases);
            if let Some(deadline) = drain_deadline {
                if self.sessions.drained() || Instant::now() >= deadline {
                    return self.shut_down(clock.counters());
                }
            }
        }
    }

    /// The drain is over: every io thread kicks its sessions with `SERVER_SHUTDOWN` and stops.
    fn shut_down(self, counters: TickCounters) -> TickCounters {
        if !self.sessions.drained() {
            log::error!("grace period over with {} final saves still pending", self.sessions.leaving());
        }
        for h in &self.io {
            h.send(Outbound::Shutdown { reason: KickReason::ServerShutdown, message: "server shutting down".into() });
            h.wake();
        }
        counters
    }

    /// Waits for the next tick. Woken early (a login or resume arrived: see [`SimWaker`]), it handles what is
    /// queued at once, so a player waits on its answer, not on the tick; inputs and chat handled early only
    /// queue for the tick as they would have at its start.
    fn idle_until(&mut self, due: Instant) {
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            if self.waker.is_none() {
                std::thread::sleep(due - now);
                return;
            }
            std::thread::park_timeout(due - now);
            let now = Instant::now();
            if now < due {
                self.drain_events(now);
                self.apply_effects();
                self.wake_io();
            }
        }
    }

    fn drain_events(&mut self, now: Instant) {
        for _ in 0..DRAIN_LIMIT {
            match self.rx.pop() {
                Pop::Item(event) => self.sessions.handle(&mut self.sim, event, now),
                Pop::Empty => break,
                // A producer is mid-push; its item is picked up next time rather than spinning here.
                Pop::Inconsistent => break,
            }
        }
    }

    /// Snapshots go straight to their io thread (unless it is too far behind: the next tick supersedes them);
    /// every other output is the session machine's.
    fn route_outputs(&mut self) {
        let mut outputs = std::mem::take(&mut self.out);
        for output in outputs.drain(..) {
            match output {
                Output::Snapshot { session, snapshot } => {
                    let Some(io) = self.sessions.io_of(session) else { continue };
                    if self.io[io].backlog() >= IO_BACKLOG_LIMIT {
                        self.metrics.snapshots_dropped.inc();
                        continue;
                    }
                    self.io[io].send(Outbound::Encoded { session, msg: snapshot.bytes });
                    self.io_dirty[io] = true;
                }
                other => self.sessions.route(&mut self.sim, other),
            }
        }
        self.out = outputs;
    }

    /// Carries out the session machine's effects. A job that cannot be queued comes straight back to the machine
    /// as a typed failure (which may produce effects of its own: a save retried, a refusal sent).
    fn apply_effects(&mut self) {
        loop {
            for effect in self.sessions.effects() {
                match effect {
                    Effect::Io { io, item } => {
                        self.io[io].send(item);
                        self.io_dirty[io] = true;
                    }
                    Effect::Job(job) => {
                        if let Some(failed) = submit(&self.workers, job) {
                            self.failed.push(failed);
                        }
                    }
                }
            }
            if self.failed.is_empty() {
                return;
            }
            for event in std::mem::take(&mut self.failed) {
                self.sessions.handle(&mut self.sim, event, Instant::now());
            }
        }
    }

    fn wake_io(&mut self) {
        for (i, dirty) in self.io_dirty.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                self.io[i].wake();
            }
        }
    }

    fn report(&mut self, took: Duration, overrun: bool, lateness: Duration, phases: &[Duration; Phase::ALL.len()]) {
        let m = &self.metrics;
        m.tick.observe(took.as_secs_f64());
        if overrun {
            m.tick_overruns.inc();
        }
        if lateness > Duration::from_millis(1) {
            m.late_ticks.inc();
        }
        for (phase, d) in Phase::ALL.iter().zip(phases) {
            m.tick_phases.observe(*phase, d.as_secs_f64());
        }
        for (total, d) in self.phase_totals.iter_mut().zip(phases) {
            *total += *d;
        }
        let players = self.sim.players() as i64;
        m.players_online.set(players);
        m.current_tick.set(self.sim.tick() as i64);
        m.population.players.set(players);
        m.population.npcs.set(self.sim.world.len() as i64 - players);
        self.queue_gauges.0.set(self.rx.approx_len() as i64);
        for (gauge, h) in self.queue_gauges.1.iter().zip(&self.io) {
            gauge.set(h.backlog() as i64);
        }
        m.set_sim_totals(self.sim.stats());
        if let Some(a) = &self.admin {
            a.record_tick(self.sim.tick(), players as u64);
        }
    }
}

/// Queues `job` on its lane. If it panics on its worker, the job comes back as `JobFailed { Panicked }`; if it
/// cannot be queued, the same event is returned here at once with `NotQueued`.
fn submit(workers: &Workers, job: Job) -> Option<SimEvent> {
    let lane = match job.lane() {
        Lane::Login => &workers.logins,
        Lane::Work => &workers.jobs,
    };
    let name = job.name();
    let on_panic = SimEvent::JobFailed { job: job.clone(), failure: JobFailure::Panicked };
    let (e, back) = lane.submit_or(name, move |b: &Backend| job.run(b), on_panic).err()?;
    log::warn!("job {name} not queued: {e}");
    Some(match back {
        SimEvent::JobFailed { job, .. } => SimEvent::JobFailed { job, failure: JobFailure::NotQueued },
        other => other,
    })
}
