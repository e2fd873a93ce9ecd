//! Prometheus metrics: one [`Metrics`] per process, owning its own [`prometheus::Registry`] (never the global
//! default, so tests and several servers in one process do not share series), rendered as text exposition format
//! 0.0.4 by [`Metrics::render`] for the admin listener's `GET /metrics`.
//!
//! Every name starts with `game_server_` (the prefix operators' dashboards and alerts already use:
//! `game_server_players_online`, `game_server_tick_duration_seconds`, `game_server_network_latency_seconds`),
//! uses base units (seconds, bytes) and ends in `_total` when it is a counter. [`METRIC_NAMES`] lists every family.
//!
//! Two kinds of series, chosen by who owns the number:
//!
//! * **Live** — values this module owns ([`Metrics::tick`], [`Metrics::tick_phases`], gauges, lock and save
//!   counters). They are ordinary prometheus metrics, pre-resolved at construction (no label hashing on the hot
//!   path), so an update is one or a few relaxed atomic operations: `metrics.tick.observe(secs)` on the sim thread
//!   never blocks and never allocates.
//! * **Read at scrape time** — counters that already live as atomics elsewhere (the io threads'
//!   [`NetStats`](crate::net::io::NetStats), the pool's [`WorkerStats`]) and cumulative totals kept by their owner
//!   (the simulation's counters, the data layer's pool/statement/cache snapshots). One custom
//!   [`prometheus::core::Collector`] reads them when `/metrics` is scraped. We chose a collector over a
//!   `refresh_from(&NetStats)` before rendering because (1) the source atomics stay the single source of truth:
//!   nothing is counted twice on the io threads' hot path, and no copy can be stale or forgotten; (2) prometheus
//!   counters can only be incremented, so a refresh would have to keep "last seen" values and compute deltas under
//!   a lock, racing when two scrapes overlap, while a collector simply reports the source's cumulative value, which
//!   never goes backwards; (3) the render caller needs no handle on every subsystem. Attach sources once with
//!   [`Metrics::attach_net`] and [`Metrics::attach_workers`]; push owner-kept totals with
//!   [`Metrics::set_sim_totals`] and the data-layer setters.
//!
//! Invariant a reader must not break: nothing reachable from the simulation thread's calls into this module may
//! block or allocate — hot-path handles are resolved once (at construction, or by the caller caching the handle a
//! `*_gauge()` accessor returns), and anything that takes a lock (`Mutex`, label lookup) is for worker, admin or
//! monitor threads only. Label values must come from fixed sets (enums, the statement registry, configured pool
//! and cache names), never from peer input: every distinct value is a new series kept forever.

mod scrape;

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::net::io::NetShared;
use crate::worker::WorkerStats;

pub use scrape::{CacheSample, PoolSample, ReplicaSample, SimTotals, StatementSample};

/// Content type of [`Metrics::render`]'s output (Prometheus text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of `game_server_tick_duration_seconds`: 0.5 ms .. 100 ms, dense around the 50 ms budget of a 20 Hz tick.
pub const TICK_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1];

/// Buckets of `game_server_tick_phase_duration_seconds`: 10 µs .. 50 ms (a phase is a slice of one tick).
pub const PHASE_BUCKETS: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05];

/// Buckets of `game_server_network_latency_seconds` (round-trip time): 1 ms .. 2 s.
pub const RTT_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0];

/// Buckets of `game_server_lock_acquire_duration_seconds`: 100 µs .. 1 s.
pub const LOCK_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Buckets of `game_server_db_query_duration_seconds` used by [`Metrics::observe_query`]: 100 µs .. 2.5 s (the
/// same bounds as the data layer's per-statement histograms, so its snapshots import without re-bucketing).
pub const QUERY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Every metric family this module can export (the live ones always; the scrape-time ones once their source is
/// attached or has reported). Alert rules and dashboards may rely on these names.
pub const METRIC_NAMES: &[&str] = &[
    "game_server_build_info",
    "game_server_players_online",
    "game_server_current_tick",
    "game_server_tick_duration_seconds",
    "game_server_tick_phase_duration_seconds",
    "game_server_tick_overruns_total",
    "game_server_late_ticks_total",
    "game_server_zone_population",
    "game_server_network_latency_seconds",
    "game_server_queue_depth",
    "game_server_sessions",
    "game_server_lock_acquisitions_total",
    "game_server_lock_contentions_total",
    "game_server_lock_losses_total",
    "game_server_lock_acquire_duration_seconds",
    "game_server_saves_total",
    "game_server_login_refusals_total",
    "game_server_save_failures_total",
    "game_server_snapshots_dropped_total",
    "game_server_loot_failures_total",
    "game_server_ownership_lost_total",
    "game_server_resumes_total",
    // Simulation totals (set_sim_totals).
    "game_server_inputs_applied_total",
    "game_server_inputs_rejected_total",
    "game_server_combat_events_total",
    "game_server_chat_messages_total",
    "game_server_chat_refused_total",
    "game_server_snapshots_total",
    "game_server_snapshot_truncated_entities_total",
    "game_server_delta_snapshots_total",
    // Network (attach_net: every network counter lives in NetStats).
    "game_server_network_packets_total",
    "game_server_network_bytes_total",
    "game_server_network_packets_dropped_total",
    "game_server_sessions_closed_total",
    "game_server_tls_handshakes_total",
    "game_server_connections_accepted_total",
    "game_server_connections_open",
    "game_server_connections_authenticated",
    "game_server_io_threads_running",
    "game_server_connections_refused_total",
    "game_server_udp_sessions",
    "game_server_udp_endpoints_bound",
    // Worker pool (attach_workers).
    "game_server_worker_jobs_queued",
    "game_server_worker_jobs_running",
    "game_server_worker_jobs_rejected_total",
    "game_server_worker_job_duration_seconds",
    "game_server_worker_job_wait_seconds",
    "game_server_worker_job_panics_total",
    // Data layer (setters).
    "game_server_db_pool_up",
    "game_server_db_pool_connections",
    "game_server_db_pool_max_connections",
    "game_server_db_pool_waits_total",
    "game_server_db_pool_wait_seconds_total",
    "game_server_db_pool_timeouts_total",
    "game_server_db_pool_errors_total",
    "game_server_db_query_duration_seconds",
    "game_server_db_query_errors_total",
    "game_server_db_replica_up",
    "game_server_db_replica_lag_seconds",
    "game_server_cache_hits_total",
    "game_server_cache_misses_total",
    "game_server_cache_evictions_total",
    "game_server_cache_entries",
];

/// A phase of the simulation tick, the `phase` label of `game_server_tick_phase_duration_seconds`: the game's own
/// enum, so the game, the runner and the metrics name phases one way.
pub use crate::sim::phase::Phase as TickPhase;

/// `game_server_resumes_total{outcome}`.
#[derive(Clone)]
pub struct ResumeMetrics {
    /// Sessions re-attached with a resume token.
    pub resumed: IntCounter,
    /// Resumes refused (token unknown, used or expired; session ended meanwhile).
    pub refused: IntCounter,
    /// Detached players whose grace period ran out (saved and released).
    pub expired: IntCounter,
}

/// The per-phase tick histograms, one pre-resolved child per [`TickPhase`].
#[derive(Clone)]
pub struct TickPhases {
    by_phase: [Histogram; TickPhase::ALL.len()],
}

impl TickPhases {
    /// Records how long `phase` took this tick. Lock-free; for the sim thread.
    #[inline]
    pub fn observe(&self, phase: TickPhase, seconds: f64) {
        self.by_phase[phase as usize].observe(seconds);
    }

    /// The histogram of one phase.
    pub fn histogram(&self, phase: TickPhase) -> &Histogram {
        &self.by_phase[phase as usize]
    }
}

/// Entities in the zone by kind (`game_server_zone_population{kind}`).
#[derive(Clone)]
pub struct Population {
    /// `kind="player"`: player entities in the world.
    pub players: IntGauge,
    /// `kind="npc"`: NPC entities in the world.
    pub npcs: IntGauge,
}

/// Distributed player locks (`game_server_lock_*`), counted by the workers that take them.
#[derive(Clone)]
pub struct LockMetrics {
    /// A lock was acquired.
    pub acquisitions: IntCounter,
    /// An attempt found the lock held by another owner (it may succeed on retry).
    pub contentions: IntCounter,
    /// A held lock was lost (expired or taken over before renewal).
    pub losses: IntCounter,
    /// Time to acquire, including retries.
    pub acquire_duration: Histogram,
}

/// Chat lines the simulation's chat limits refused (`game_server_chat_refused_total{reason}`), counted by the
/// limiter on the sim thread as it refuses them (see `sim::chat`).
#[derive(Clone)]
pub struct ChatRefusals {
    /// `reason="sender_rate"`: the sender spent its allowance on that channel.
    pub sender_rate: IntCounter,
    /// `reason="zone_fanout"`: the zone spent its chat deliveries per second.
    pub zone_fanout: IntCounter,
}

/// Error of [`Metrics::attach_net`] / [`Metrics::attach_workers`]: that source is already attached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics source {0} is already attached")]
pub struct AlreadyAttached(pub &'static str);

/// All of the process's metrics. Build once, share as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// `game_server_players_online`: players logged in and playing. The admin state shares this gauge.
    pub players_online: IntGauge,
    /// `game_server_current_tick`: the last completed simulation tick. The admin state shares this gauge.
    pub current_tick: IntGauge,
    /// `game_server_tick_duration_seconds`: wall time of a whole tick.
    pub tick: Histogram,
    /// `game_server_tick_phase_duration_seconds{phase}`.
    pub tick_phases: TickPhases,
    /// `game_server_tick_overruns_total`: ticks that took longer than the tick interval.
    pub tick_overruns: IntCounter,
    /// `game_server_late_ticks_total`: ticks that started late (the previous one overran, or the thread was
    /// descheduled past its deadline).
    pub late_ticks: IntCounter,
    /// `game_server_zone_population{kind}`.
    pub population: Population,
    /// `game_server_network_latency_seconds`: round-trip time measured by Ping/Pong.
    pub network_latency: Histogram,
    /// `game_server_lock_*`.
    pub locks: LockMetrics,
    /// `game_server_saves_total`: player records saved.
    pub saves: IntCounter,
    /// `game_server_save_failures_total`: player records whose save failed (each retry that fails counts).
    pub save_failures: IntCounter,
    /// `game_server_chat_refused_total{reason}`.
    pub chat_refusals: ChatRefusals,
    /// `game_server_snapshots_dropped_total`: snapshots not queued for a backed-up io thread.
    pub snapshots_dropped: IntCounter,
    /// `game_server_loot_failures_total`: looted items that could not be written.
    pub loot_failures: IntCounter,
    /// `game_server_ownership_lost_total`: players dropped unsaved because another zone owns them now.
    pub ownership_lost: IntCounter,
    /// `game_server_resumes_total{outcome}`.
    pub resumes: ResumeMetrics,
    queue_depth: IntGaugeVec,
    /// `game_server_login_refusals_total{reason}`, indexed by `LoginErrorReason` number.
    login_refusals: Vec<IntCounter>,
    sessions: IntGaugeVec,
    scraped: Arc<scrape::Scraped>,
}

// Construction only runs with the constant, valid names and buckets below; a failure is a programming error
// caught by every test that builds `Metrics`, so it panics with the message rather than returning an error.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    let metric = metric.unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    registered(registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

impl Metrics {
    /// Every metric registered in a fresh registry; `zone` labels `game_server_build_info`.
    pub fn new(zone: &str) -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        let info = registered(
            r,
            IntGaugeVec::new(
                Opts::new("game_server_build_info", "Always 1; labels carry the server version and zone."),
                &["version", "zone"],
            ),
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), zone]).set(1);

        let phases = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new("game_server_tick_phase_duration_seconds", "Time spent in one phase of a tick.")
                    .buckets(PHASE_BUCKETS.to_vec()),
                &["phase"],
            ),
        );
        let tick_phases = TickPhases { by_phase: TickPhase::ALL.map(|p| phases.with_label_values(&[p.label()])) };

        let population_vec = registered(
            r,
            IntGaugeVec::new(Opts::new("game_server_zone_population", "Entities in the zone, by kind."), &["kind"]),
        );
        let population = Population {
            players: population_vec.with_label_values(&["player"]),
            npcs: population_vec.with_label_values(&["npc"]),
        };

        let sessions_vec = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "game_server_sessions",
                    "Sessions by stage in the simulation's session machine (connected, authenticating, in_game, \
                     detached, leaving).",
                ),
                &["state"],
            ),
        );

        let queue_depth = registered(
            r,
            IntGaugeVec::new(Opts::new("game_server_queue_depth", "Items waiting in an internal queue."), &["queue"]),
        );

        let locks = LockMetrics {
            acquisitions: counter(r, "game_server_lock_acquisitions_total", "Distributed player locks acquired."),
            contentions: counter(
                r,
                "game_server_lock_contentions_total",
                "Lock attempts that found the lock held by another owner.",
            ),
            losses: counter(r, "game_server_lock_losses_total", "Held locks lost before release (expired or taken)."),
            acquire_duration: histogram(
                r,
                "game_server_lock_acquire_duration_seconds",
                "Time to acquire a distributed player lock, retries included.",
                LOCK_BUCKETS,
            ),
        };

        let refusals_vec = registered(
            r,
            prometheus::IntCounterVec::new(
                Opts::new("game_server_login_refusals_total", "Register/Login/TransferLogin refused, by reason."),
                &["reason"],
            ),
        );
        let login_refusals = (0..)
            .map_while(|n| crate::proto::LoginErrorReason::try_from(n).ok())
            .map(|r| {
                let label = r.as_str_name().trim_start_matches("LOGIN_ERROR_").to_ascii_lowercase();
                refusals_vec.with_label_values(&[&label])
            })
            .collect();

        let chat_refused = registered(
            r,
            prometheus::IntCounterVec::new(
                Opts::new("game_server_chat_refused_total", "Chat lines refused by the chat limits, by reason."),
                &["reason"],
            ),
        );
        let chat_refusals = ChatRefusals {
            sender_rate: chat_refused.with_label_values(&["sender_rate"]),
            zone_fanout: chat_refused.with_label_values(&["zone_fanout"]),
        };

        let scraped = Arc::new(scrape::Scraped::default());
        let collector = scrape::ScrapeCollector::new(Arc::clone(&scraped));
        registry.register(Box::new(collector)).unwrap_or_else(|e| panic!("scrape collector conflicts: {e}"));

        Metrics {
            players_online: gauge(r, "game_server_players_online", "Players logged in and playing in this zone."),
            current_tick: gauge(r, "game_server_current_tick", "Last completed simulation tick."),
            tick: histogram(r, "game_server_tick_duration_seconds", "Wall time of one simulation tick.", TICK_BUCKETS),
            tick_phases,
            tick_overruns: counter(
                r,
                "game_server_tick_overruns_total",
                "Ticks that took longer than the tick interval.",
            ),
            late_ticks: counter(r, "game_server_late_ticks_total", "Ticks that started after their deadline."),
            population,
            network_latency: histogram(
                r,
                "game_server_network_latency_seconds",
                "Round-trip time between server and clients (Ping/Pong).",
                RTT_BUCKETS,
            ),
            locks,
            saves: counter(r, "game_server_saves_total", "Player records saved."),
            save_failures: counter(r, "game_server_save_failures_total", "Player record saves that failed."),
            chat_refusals,
            queue_depth,
            login_refusals,
            sessions: sessions_vec,
            snapshots_dropped: counter(
                r,
                "game_server_snapshots_dropped_total",
                "Snapshots not queued because their io thread was too far behind (back-pressure).",
            ),
            loot_failures: counter(r, "game_server_loot_failures_total", "Looted items that could not be written."),
            ownership_lost: counter(
                r,
                "game_server_ownership_lost_total",
                "Players dropped unsaved because another zone owns them now (lock lost or save fenced off).",
            ),
            resumes: {
                let v = registered(
                    r,
                    prometheus::IntCounterVec::new(
                        Opts::new("game_server_resumes_total", "Session resumption, by outcome."),
                        &["outcome"],
                    ),
                );
                ResumeMetrics {
                    resumed: v.with_label_values(&["resumed"]),
                    refused: v.with_label_values(&["refused"]),
                    expired: v.with_label_values(&["expired"]),
                }
            },
            scraped,
            registry,
        }
    }

    /// Counts a refused login, register or transfer login by its reason.
    pub fn login_refused(&self, reason: crate::proto::LoginErrorReason) {
        if let Some(c) = self.login_refusals.get(reason as usize) {
            c.inc();
        }
    }

    /// The registry, to register further collectors (they must use names not in [`METRIC_NAMES`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family, text exposition format 0.0.4 ([`CONTENT_TYPE`]). Reads the attached sources; for the admin
    /// thread, never the sim thread.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Reads the io threads' counters at every scrape: connections, handshakes, closes by reason, UDP datagrams
    /// and drops by reason, UDP sessions.
    pub fn attach_net(&self, net: Arc<NetShared>) -> Result<(), AlreadyAttached> {
        self.scraped.net.set(net).map_err(|_| AlreadyAttached("net"))
    }

    /// Reads a worker pool's counters at every scrape, labelled `pool="{pool}"`.
    pub fn attach_workers(&self, pool: &'static str, workers: Arc<WorkerStats>) -> Result<(), AlreadyAttached> {
        let mut pools = self.scraped.workers.lock();
        if pools.iter().any(|(p, _)| *p == pool) {
            return Err(AlreadyAttached("workers"));
        }
        pools.push((pool, workers));
        Ok(())
    }

    /// Publishes the simulation's cumulative counters (a handful of relaxed stores; call from the sim thread once
    /// per tick or less). Values are totals since start, exported as counters.
    pub fn set_sim_totals(&self, totals: &SimTotals) {
        self.scraped.sim.store(totals);
    }

    /// The gauge of one internal queue (`game_server_queue_depth{queue}`). Looks the label up (takes a lock):
    /// cache the returned handle for use on the sim thread.
    pub fn queue_depth_gauge(&self, queue: &str) -> IntGauge {
        self.queue_depth.with_label_values(&[queue])
    }

    /// Sets the depth of one internal queue. Looks the label up: not for the sim thread's hot path (use
    /// [`Metrics::queue_depth_gauge`] once and keep the handle).
    pub fn set_queue_depth(&self, queue: &str, depth: i64) {
        self.queue_depth.with_label_values(&[queue]).set(depth);
    }

    /// The gauge of sessions in stage `state` of the session machine (resolve once: takes a lock).
    pub fn sessions_gauge(&self, state: &str) -> IntGauge {
        self.sessions.with_label_values(&[state])
    }

    /// Publishes one database pool's state and cumulative counters (`game_server_db_pool_*{pool}`). For the data
    /// layer's monitor thread; takes a short lock.
    pub fn set_pool_stats(&self, pool: &str, sample: PoolSample) {
        self.scraped.data.set_pool(pool, sample);
    }

    /// Publishes one replica's reachability and lag (`game_server_db_replica_*{replica}`); `lag_seconds: None`
    /// when unknown (the lag series is then omitted rather than reported as a made-up value).
    pub fn set_replica_lag(&self, replica: &str, sample: ReplicaSample) {
        self.scraped.data.set_replica(replica, sample);
    }

    /// Records one execution of `statement` (a statement registry name, never SQL text) into
    /// `game_server_db_query_duration_seconds` with [`QUERY_BUCKETS`]. For workers; takes a short lock. A statement
    /// is fed either this way or by [`Metrics::set_statement_stats`], not both.
    pub fn observe_query(&self, statement: &str, seconds: f64, ok: bool) {
        self.scraped.data.observe_query(statement, seconds, ok);
    }

    /// Publishes a statement's cumulative histogram as kept by the data layer (replaces the previous sample).
    /// Samples whose bounds are not strictly increasing, or whose counts do not match the bounds, are ignored
    /// with a warning.
    pub fn set_statement_stats(&self, statement: &str, sample: StatementSample) {
        self.scraped.data.set_statement(statement, sample);
    }

    /// Publishes one cache's cumulative hits, misses, evictions and current size (`game_server_cache_*{cache}`).
    pub fn set_cache_stats(&self, cache: &str, sample: CacheSample) {
        self.scraped.data.set_cache(cache, sample);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
