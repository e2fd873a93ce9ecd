//! The scrape-time collector: series whose numbers live elsewhere (io threads' `NetStats`, the worker pool's
//! `WorkerStats`, totals pushed by the simulation and the data layer) are read here when `/metrics` is scraped.
//!
//! Invariant: this module only reads its sources (relaxed loads, short locks on the data layer's own maps and the
//! worker pool's timing table); it never writes to them, so a scrape cannot change what it measures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::QUERY_BUCKETS;
use crate::net::io::{NetShared, NetStats, CLOSE_LABELS};
use crate::net::udp::UdpError;
use crate::worker::WorkerStats;

/// Most distinct label values kept per data-layer family (pools, replicas, caches, statements). Names come from
/// configuration and the statement registry, so this is never reached in a correct program; it stops a bug from
/// growing memory and series without bound.
const MAX_LABEL_VALUES: usize = 256;

/// The simulation's cumulative counters, pushed with [`super::Metrics::set_sim_totals`]: the simulation's own
/// `SimStats`, so there is one definition of what is counted.
pub use crate::sim::game::SimStats as SimTotals;

/// One database pool, as last reported by the data layer. Counters are cumulative since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolSample {
    /// The last health probe succeeded.
    pub up: bool,
    /// Configured maximum connections.
    pub max_size: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Open connections idle in the pool.
    pub idle: u32,
    /// Checkouts that found no idle connection and had to wait.
    pub waits: u64,
    /// Total time callers spent waiting for a checkout, in seconds.
    pub wait_seconds: f64,
    /// Checkouts that gave up after the timeout.
    pub timeouts: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    /// Statements that failed on this pool's connections.
    pub query_errors: u64,
}

/// One read replica, as last probed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicaSample {
    /// The last probe succeeded.
    pub up: bool,
    /// Replication lag in seconds; `None` when unknown (the series is omitted).
    pub lag_seconds: Option<f64>,
}

/// One statement's cumulative latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatementSample {
    /// Upper bounds of the buckets in seconds, strictly increasing (e.g. [`QUERY_BUCKETS`]).
    pub bounds: Vec<f64>,
    /// Executions per bucket, NOT cumulative: `counts[i]` took at most `bounds[i]` (and more than the previous
    /// bound); the last entry, `counts[bounds.len()]`, counts the executions above the last bound.
    pub counts: Vec<u64>,
    /// Total execution time in seconds.
    pub sum_seconds: f64,
    /// Executions that failed.
    pub errors: u64,
}

impl StatementSample {
    fn is_valid(&self) -> bool {
        self.counts.len() == self.bounds.len() + 1
            && self.bounds.iter().all(|b| b.is_finite())
            && self.bounds.windows(2).all(|w| w[0] < w[1])
    }
}

/// One cache's cumulative counters and current size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSample {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to load.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
}

#[derive(Debug, Default)]
pub(super) struct SimCounters {
    values: [AtomicU64; 11],
}

impl SimCounters {
    pub(super) fn store(&self, t: &SimTotals) {
        let values = [
            t.inputs_applied,
            t.inputs_rejected_speed,
            t.inputs_rejected_invalid,
            t.inputs_rejected_stale,
            t.combat_hits,
            t.kills,
            t.chats,
            t.snapshots,
            t.snapshot_truncated_entities,
            t.delta_snapshots_acknowledged,
            t.delta_snapshots_whole,
        ];
        for (slot, v) in self.values.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    fn load(&self) -> SimTotals {
        let v = |i: usize| self.values[i].load(Ordering::Relaxed);
        SimTotals {
            inputs_applied: v(0),
            inputs_rejected_speed: v(1),
            inputs_rejected_invalid: v(2),
            inputs_rejected_stale: v(3),
            combat_hits: v(4),
            kills: v(5),
            chats: v(6),
            snapshots: v(7),
            snapshot_truncated_entities: v(8),
            delta_snapshots_acknowledged: v(9),
            delta_snapshots_whole: v(10),
            ..SimTotals::default()
        }
    }
}

/// Keyed samples with a bound on the number of keys.
#[derive(Debug)]
struct Samples<T>(Mutex<BTreeMap<String, T>>);

impl<T> Default for Samples<T> {
    fn default() -> Self {
        Samples(Mutex::new(BTreeMap::new()))
    }
}

impl<T: Clone> Samples<T> {
    /// Runs `f` on the entry of `key`, creating it with `make` if there is room.
    fn update(&self, key: &str, make: impl FnOnce() -> T, f: impl FnOnce(&mut T)) {
        let mut map = self.0.lock();
        if let Some(v) = map.get_mut(key) {
            f(v);
        } else if map.len() < MAX_LABEL_VALUES {
            f(map.entry(key.to_owned()).or_insert_with(make));
        } else {
            log::warn!("metrics: more than {MAX_LABEL_VALUES} label values, {key:?} not exported");
        }
    }

    fn set(&self, key: &str, sample: T) {
        self.update(key, || sample.clone(), |v| *v = sample.clone());
    }

    fn snapshot(&self) -> Vec<(String, T)> {
        self.0.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[derive(Debug, Default)]
pub(super) struct DataLayer {
    pools: Samples<PoolSample>,
    replicas: Samples<ReplicaSample>,
    statements: Samples<StatementSample>,
    caches: Samples<CacheSample>,
}

impl DataLayer {
    pub(super) fn set_pool(&self, pool: &str, sample: PoolSample) {
        self.pools.set(pool, sample);
    }

    pub(super) fn set_replica(&self, replica: &str, sample: ReplicaSample) {
        self.replicas.set(replica, sample);
    }

    pub(super) fn set_cache(&self, cache: &str, sample: CacheSample) {
        self.caches.set(cache, sample);
    }

    pub(super) fn set_statement(&self, statement: &str, sample: StatementSample) {
        if !sample.is_valid() {
            log::warn!(
                "metrics: ignoring statement {statement:?}: {} bounds (finite, increasing) need {} + 1 counts",
                sample.bounds.len(),
                sample.bounds.len()
            );
            return;
        }
        self.statements.set(statement, sample);
    }

    pub(super) fn observe_query(&self, statement: &str, seconds: f64, ok: bool) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let fresh = || StatementSample {
            bounds: QUERY_BUCKETS.to_vec(),
            counts: vec![0; QUERY_BUCKETS.len() + 1],
            ..StatementSample::default()
        };
        self.statements.update(statement, fresh, |s| {
            // A statement first fed by set_statement with other bounds is re-based on ours.
            if s.bounds.as_slice() != QUERY_BUCKETS {
                *s = fresh();
            }
            let i = QUERY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(QUERY_BUCKETS.len());
            s.counts[i] += 1;
            s.sum_seconds += seconds;
            s.errors += u64::from(!ok);
        });
    }
}

/// Everything the collector reads.
#[derive(Default)]
pub(super) struct Scraped {
    pub(super) sim: SimCounters,
    pub(super) net: OnceLock<Arc<NetShared>>,
    /// Worker pools by name (`pool` label): the job lane and the login lane.
    pub(super) workers: Mutex<Vec<(&'static str, Arc<WorkerStats>)>>,
    pub(super) data: DataLayer,
}

/// A family this collector exports: name, help, type, label names.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn spec(name: &'static str, kind: MetricType, labels: &'static [&'static str], help: &'static str) -> Spec {
    Spec { name, help, kind, labels }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM, SUMMARY};

const INPUTS_APPLIED: Spec = spec("game_server_inputs_applied_total", COUNTER, &[], "Player inputs applied.");
const INPUTS_REJECTED: Spec =
    spec("game_server_inputs_rejected_total", COUNTER, &["reason"], "Player inputs rejected, by reason.");
const COMBAT_EVENTS: Spec = spec("game_server_combat_events_total", COUNTER, &["kind"], "Combat events, by kind.");
const CHAT_MESSAGES: Spec = spec("game_server_chat_messages_total", COUNTER, &[], "Chat messages delivered.");
const SNAPSHOTS: Spec = spec("game_server_snapshots_total", COUNTER, &[], "World snapshots built.");
const SNAPSHOT_TRUNCATED: Spec = spec(
    "game_server_snapshot_truncated_entities_total",
    COUNTER,
    &[],
    "Entities left out of snapshots by the datagram size budget.",
);

const DELTA_SNAPSHOTS: Spec = spec(
    "game_server_delta_snapshots_total",
    COUNTER,
    &["baseline"],
    "Protocol-v2 snapshots, by baseline: a view the client acknowledged, or none (the whole view sent).",
);

const PACKETS: Spec = spec(
    "game_server_network_packets_total",
    COUNTER,
    &["channel", "direction"],
    "Packets (TCP control frames, UDP datagrams) received and sent.",
);
const BYTES: Spec =
    spec("game_server_network_bytes_total", COUNTER, &["channel", "direction"], "Bytes received and sent.");
const DROPS: Spec = spec(
    "game_server_network_packets_dropped_total",
    COUNTER,
    &["channel", "reason"],
    "Packets dropped, by channel and reason.",
);
const CLOSED: Spec =
    spec("game_server_sessions_closed_total", COUNTER, &["reason"], "Control sessions closed, by reason.");
const HANDSHAKES: Spec = spec(
    "game_server_tls_handshakes_total",
    COUNTER,
    &[],
    "Control sessions that completed the TLS handshake and Hello.",
);
const ACCEPTED: Spec = spec("game_server_connections_accepted_total", COUNTER, &[], "TCP connections accepted.");
const OPEN: Spec = spec("game_server_connections_open", GAUGE, &[], "TCP connections open.");
const AUTHENTICATED: Spec = spec(
    "game_server_connections_authenticated",
    GAUGE,
    &[],
    "Open TCP connections that logged in (the others may be evicted at net.max_connections).",
);
const IO_RUNNING: Spec = spec("game_server_io_threads_running", GAUGE, &[], "io event-loop threads running.");
const REFUSED: Spec =
    spec("game_server_connections_refused_total", COUNTER, &["reason"], "TCP connections refused, by reason.");
const UDP_SESSIONS: Spec = spec("game_server_udp_sessions", GAUGE, &[], "Sessions registered on the UDP data channel.");
const UDP_BOUND: Spec =
    spec("game_server_udp_endpoints_bound", GAUGE, &[], "UDP data channel sessions bound to a client endpoint.");

const JOBS_QUEUED: Spec =
    spec("game_server_worker_jobs_queued", GAUGE, &["pool"], "Worker jobs queued, not yet started, by pool.");
const JOBS_RUNNING: Spec = spec("game_server_worker_jobs_running", GAUGE, &["pool"], "Worker jobs running, by pool.");
const JOBS_REJECTED: Spec = spec(
    "game_server_worker_jobs_rejected_total",
    COUNTER,
    &["pool"],
    "Worker jobs refused because the pool's queue was full.",
);
const JOB_DURATION: Spec =
    spec("game_server_worker_job_duration_seconds", SUMMARY, &["pool", "job"], "Worker job run time, by job.");
const JOB_WAIT: Spec = spec(
    "game_server_worker_job_wait_seconds",
    SUMMARY,
    &["pool", "job"],
    "Time worker jobs waited in the queue, by job.",
);
const JOB_PANICS: Spec =
    spec("game_server_worker_job_panics_total", COUNTER, &["pool", "job"], "Worker jobs that panicked, by job.");

const POOL_UP: Spec =
    spec("game_server_db_pool_up", GAUGE, &["pool"], "1 when the pool's last health probe succeeded.");
const POOL_CONNECTIONS: Spec =
    spec("game_server_db_pool_connections", GAUGE, &["pool", "state"], "Database pool connections, by state.");
const POOL_MAX: Spec =
    spec("game_server_db_pool_max_connections", GAUGE, &["pool"], "Configured maximum connections of a pool.");
const POOL_WAITS: Spec =
    spec("game_server_db_pool_waits_total", COUNTER, &["pool"], "Checkouts that had to wait for a connection.");
const POOL_WAIT_SECONDS: Spec =
    spec("game_server_db_pool_wait_seconds_total", COUNTER, &["pool"], "Time spent waiting for checkouts.");
const POOL_TIMEOUTS: Spec = spec("game_server_db_pool_timeouts_total", COUNTER, &["pool"], "Checkouts that timed out.");
const POOL_ERRORS: Spec =
    spec("game_server_db_pool_errors_total", COUNTER, &["pool", "kind"], "Database errors on a pool, by kind.");
const QUERY_DURATION: Spec = spec(
    "game_server_db_query_duration_seconds",
    HISTOGRAM,
    &["statement"],
    "Statement execution time, by registered statement.",
);
const QUERY_ERRORS: Spec =
    spec("game_server_db_query_errors_total", COUNTER, &["statement"], "Statement executions that failed.");
const REPLICA_UP: Spec =
    spec("game_server_db_replica_up", GAUGE, &["replica"], "1 when the replica's last probe succeeded.");
const REPLICA_LAG: Spec =
    spec("game_server_db_replica_lag_seconds", GAUGE, &["replica"], "Replication lag of a read replica.");
const CACHE_HITS: Spec = spec("game_server_cache_hits_total", COUNTER, &["cache"], "Cache lookups that hit.");
const CACHE_MISSES: Spec = spec("game_server_cache_misses_total", COUNTER, &["cache"], "Cache lookups that missed.");
const CACHE_EVICTIONS: Spec = spec("game_server_cache_evictions_total", COUNTER, &["cache"], "Cache entries evicted.");
const CACHE_ENTRIES: Spec = spec("game_server_cache_entries", GAUGE, &["cache"], "Entries held by a cache.");

const SPECS: &[&Spec] = &[
    &INPUTS_APPLIED,
    &INPUTS_REJECTED,
    &COMBAT_EVENTS,
    &CHAT_MESSAGES,
    &SNAPSHOTS,
    &SNAPSHOT_TRUNCATED,
    &DELTA_SNAPSHOTS,
    &PACKETS,
    &BYTES,
    &DROPS,
    &CLOSED,
    &HANDSHAKES,
    &ACCEPTED,
    &OPEN,
    &AUTHENTICATED,
    &IO_RUNNING,
    &REFUSED,
    &UDP_SESSIONS,
    &UDP_BOUND,
    &JOBS_QUEUED,
    &JOBS_RUNNING,
    &JOBS_REJECTED,
    &JOB_DURATION,
    &JOB_WAIT,
    &JOB_PANICS,
    &POOL_UP,
    &POOL_CONNECTIONS,
    &POOL_MAX,
    &POOL_WAITS,
    &POOL_WAIT_SECONDS,
    &POOL_TIMEOUTS,
    &POOL_ERRORS,
    &QUERY_DURATION,
    &QUERY_ERRORS,
    &REPLICA_UP,
    &REPLICA_LAG,
    &CACHE_HITS,
    &CACHE_MISSES,
    &CACHE_EVICTIONS,
    &CACHE_ENTRIES,
];

/// One family being filled during a scrape.
struct Family(MetricFamily);

impl Family {
    fn new(spec: &Spec) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(spec.name.to_owned());
        mf.set_help(spec.help.to_owned());
        mf.set_field_type(spec.kind);
        Family(mf)
    }

    fn metric(&mut self, labels: &[(&str, &str)]) -> &mut proto::Metric {
        let pairs = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = proto::Metric::default();
        metric.set_label(pairs);
        self.0.mut_metric().push(metric);
        self.0.mut_metric().last_mut().expect("just pushed")
    }

    /// A counter or gauge sample, by the family's type.
    fn value(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Family {
        let kind = self.0.get_field_type();
        let metric = self.metric(labels);
        if kind == COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self
    }

    fn summary(&mut self, labels: &[(&str, &str)], count: u64, sum: f64) {
        let mut s = proto::Summary::default();
        s.set_sample_count(count);
        s.set_sample_sum(sum);
        self.metric(labels).set_summary(s);
    }

    /// `counts` non-cumulative, one more than `bounds` (the overflow bucket).
    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative = cumulative.saturating_add(*count);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let total = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        h.set_bucket(buckets);
        h.set_sample_count(total);
        h.set_sample_sum(sum);
        self.metric(labels).set_histogram(h);
    }
}

/// Collects families; a family with no sample is left out (the registry would prune it anyway).
#[derive(Default)]
struct Out(Vec<MetricFamily>);

impl Out {
    fn add(&mut self, family: Family) {
        if !family.0.get_metric().is_empty() {
            self.0.push(family.0);
        }
    }

    fn one(&mut self, spec: &Spec, value: f64) {
        let mut f = Family::new(spec);
        f.value(&[], value);
        self.add(f);
    }
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// The registered collector.
pub(super) struct ScrapeCollector {
    scraped: Arc<Scraped>,
    descs: Vec<Desc>,
}

impl ScrapeCollector {
    pub(super) fn new(scraped: Arc<Scraped>) -> ScrapeCollector {
        let descs = SPECS
            .iter()
            .map(|s| {
                let labels = s.labels.iter().map(|l| (*l).to_owned()).collect();
                Desc::new(s.name.to_owned(), s.help.to_owned(), labels, HashMap::new())
                    .unwrap_or_else(|e| panic!("invalid metric spec {}: {e}", s.name))
            })
            .collect();
        ScrapeCollector { scraped, descs }
    }

    fn sim(&self, out: &mut Out) {
        let t = self.scraped.sim.load();
        out.one(&INPUTS_APPLIED, t.inputs_applied as f64);
        let mut rejected = Family::new(&INPUTS_REJECTED);
        rejected
            .value(&[("reason", "speed")], t.inputs_rejected_speed as f64)
            .value(&[("reason", "invalid")], t.inputs_rejected_invalid as f64)
            .value(&[("reason", "stale")], t.inputs_rejected_stale as f64);
        out.add(rejected);
        let mut combat = Family::new(&COMBAT_EVENTS);
        combat.value(&[("kind", "hit")], t.combat_hits as f64).value(&[("kind", "kill")], t.kills as f64);
        out.add(combat);
        out.one(&CHAT_MESSAGES, t.chats as f64);
        out.one(&SNAPSHOTS, t.snapshots as f64);
        out.one(&SNAPSHOT_TRUNCATED, t.snapshot_truncated_entities as f64);
        let mut delta = Family::new(&DELTA_SNAPSHOTS);
        delta
            .value(&[("baseline", "acknowledged")], t.delta_snapshots_acknowledged as f64)
            .value(&[("baseline", "none")], t.delta_snapshots_whole as f64);
        out.add(delta);
    }

    fn net(&self, out: &mut Out) {
        let net = self.scraped.net.get();
        let stats = net.map(|n| &n.stats);
        let zero = AtomicU64::new(0);
        let get = |f: fn(&NetStats) -> &AtomicU64| load(stats.map_or(&zero, f));

        let mut packets = Family::new(&PACKETS);
        packets
            .value(&[("channel", "tcp"), ("direction", "in")], get(|s| &s.tcp_frames_in))
            .value(&[("channel", "tcp"), ("direction", "out")], get(|s| &s.tcp_frames_out))
            .value(&[("channel", "udp"), ("direction", "in")], get(|s| &s.udp_in))
            .value(&[("channel", "udp"), ("direction", "out")], get(|s| &s.udp_out));
        out.add(packets);

        let mut bytes = Family::new(&BYTES);
        bytes
            .value(&[("channel", "tcp"), ("direction", "in")], get(|s| &s.tcp_bytes_in))
            .value(&[("channel", "tcp"), ("direction", "out")], get(|s| &s.tcp_bytes_out))
            .value(&[("channel", "udp"), ("direction", "in")], get(|s| &s.udp_bytes_in))
            .value(&[("channel", "udp"), ("direction", "out")], get(|s| &s.udp_bytes_out));
        out.add(bytes);

        let (Some(net), Some(s)) = (net, stats) else { return };
        let mut drops = Family::new(&DROPS);
        drops.value(&[("channel", "tcp"), ("reason", "flood")], load(&s.control_dropped_flood));
        for (reason, counter) in UdpError::REASONS.iter().zip(&s.udp_dropped) {
            drops.value(&[("channel", "udp"), ("reason", reason)], load(counter));
        }
        drops.value(&[("channel", "udp"), ("reason", "send_failed")], load(&s.udp_send_dropped));
        out.add(drops);

        let mut closed = Family::new(&CLOSED);
        for (reason, counter) in CLOSE_LABELS.iter().zip(&s.closed) {
            closed.value(&[("reason", reason)], load(counter));
        }
        out.add(closed);

        out.one(&HANDSHAKES, load(&s.handshakes));
        out.one(&ACCEPTED, load(&s.accepted));
        out.one(&OPEN, s.open_connections.load(Ordering::Relaxed) as f64);
        out.one(&AUTHENTICATED, s.authenticated_connections.load(Ordering::Relaxed) as f64);
        out.one(&IO_RUNNING, s.io_threads_running.load(Ordering::Relaxed) as f64);
        let mut refused = Family::new(&REFUSED);
        refused
            .value(&[("reason", "max_connections")], load(&s.refused_max_connections))
            .value(&[("reason", "rate_limited")], load(&s.refused_rate_limited))
            .value(&[("reason", "per_ip")], load(&s.refused_per_ip))
            .value(&[("reason", "unauthenticated_per_ip")], load(&s.refused_unauthenticated_per_ip));
        out.add(refused);
        // Both take the session table's read lock for a moment (a map length); io threads only write it when a
        // session registers or binds.
        out.one(&UDP_SESSIONS, net.udp.len() as f64);
        out.one(&UDP_BOUND, net.udp.bound_endpoints() as f64);
    }

    fn workers(&self, out: &mut Out) {
        let pools = self.scraped.workers.lock().clone();
        if pools.is_empty() {
            return;
        }
        let mut queued = Family::new(&JOBS_QUEUED);
        let mut running = Family::new(&JOBS_RUNNING);
        let mut rejected = Family::new(&JOBS_REJECTED);
        let mut duration = Family::new(&JOB_DURATION);
        let mut wait = Family::new(&JOB_WAIT);
        let mut panics = Family::new(&JOB_PANICS);
        for (pool, w) in &pools {
            queued.value(&[("pool", pool)], load(&w.queued));
            running.value(&[("pool", pool)], load(&w.running));
            rejected.value(&[("pool", pool)], load(&w.rejected));
            for (job, t) in &w.timings() {
                let labels = [("pool", *pool), ("job", *job)];
                duration.summary(&labels, t.count, t.run_total.as_secs_f64());
                wait.summary(&labels, t.count, t.wait_total.as_secs_f64());
                panics.value(&labels, t.panics as f64);
            }
        }
        for f in [queued, running, rejected, duration, wait, panics] {
            out.add(f);
        }
    }

    fn data(&self, out: &mut Out) {
        let data = &self.scraped.data;
        let pools = data.pools.snapshot();
        let mut up = Family::new(&POOL_UP);
        let mut connections = Family::new(&POOL_CONNECTIONS);
        let mut max = Family::new(&POOL_MAX);
        let mut waits = Family::new(&POOL_WAITS);
        let mut wait_seconds = Family::new(&POOL_WAIT_SECONDS);
        let mut timeouts = Family::new(&POOL_TIMEOUTS);
        let mut errors = Family::new(&POOL_ERRORS);
        for (pool, p) in &pools {
            let pool = pool.as_str();
            up.value(&[("pool", pool)], f64::from(u8::from(p.up)));
            connections
                .value(&[("pool", pool), ("state", "in_use")], f64::from(p.in_use))
                .value(&[("pool", pool), ("state", "idle")], f64::from(p.idle));
            max.value(&[("pool", pool)], f64::from(p.max_size));
            waits.value(&[("pool", pool)], p.waits as f64);
            wait_seconds.value(&[("pool", pool)], p.wait_seconds);
            timeouts.value(&[("pool", pool)], p.timeouts as f64);
            errors
                .value(&[("pool", pool), ("kind", "connect")], p.connect_errors as f64)
                .value(&[("pool", pool), ("kind", "query")], p.query_errors as f64);
        }
        for f in [up, connections, max, waits, wait_seconds, timeouts, errors] {
            out.add(f);
        }

        let mut duration = Family::new(&QUERY_DURATION);
        let mut query_errors = Family::new(&QUERY_ERRORS);
        for (statement, s) in &data.statements.snapshot() {
            let labels = [("statement", statement.as_str())];
            duration.histogram(&labels, &s.bounds, &s.counts, s.sum_seconds);
            query_errors.value(&labels, s.errors as f64);
        }
        out.add(duration);
        out.add(query_errors);

        let mut replica_up = Family::new(&REPLICA_UP);
        let mut lag = Family::new(&REPLICA_LAG);
        for (replica, r) in &data.replicas.snapshot() {
            let labels = [("replica", replica.as_str())];
            replica_up.value(&labels, f64::from(u8::from(r.up)));
            if let Some(seconds) = r.lag_seconds.filter(|s| s.is_finite()) {
                lag.value(&labels, seconds);
            }
        }
        out.add(replica_up);
        out.add(lag);

        let mut hits = Family::new(&CACHE_HITS);
        let mut misses = Family::new(&CACHE_MISSES);
        let mut evictions = Family::new(&CACHE_EVICTIONS);
        let mut entries = Family::new(&CACHE_ENTRIES);
        for (cache, c) in &data.caches.snapshot() {
            let labels = [("cache", cache.as_str())];
            hits.value(&labels, c.hits as f64);
            misses.value(&labels, c.misses as f64);
            evictions.value(&labels, c.evictions as f64);
            entries.value(&labels, c.entries as f64);
        }
        for f in [hits, misses, evictions, entries] {
            out.add(f);
        }
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Out::default();
        self.sim(&mut out);
        self.net(&mut out);
        self.workers(&mut out);
        self.data(&mut out);
        out.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exported_family_is_listed_in_metric_names() {
        for s in SPECS {
            assert!(super::super::METRIC_NAMES.contains(&s.name), "{} missing from METRIC_NAMES", s.name);
        }
    }

    #[test]
    fn statement_sample_with_mismatched_counts_is_invalid() {
        let ok = StatementSample { bounds: vec![0.1, 0.2], counts: vec![1, 2, 3], ..Default::default() };
        assert!(ok.is_valid());
        let short = StatementSample { counts: vec![1, 2], ..ok.clone() };
        assert!(!short.is_valid());
        let unordered = StatementSample { bounds: vec![0.2, 0.1], ..ok };
        assert!(!unordered.is_valid());
    }
}
