//! What the bots measure and how it is reported: per-thread counters and histograms ([`ThreadStats`], merged at the
//! end), the once-a-second live view ([`Live`]) and the final [`Report`] (text or one JSON object).
//!
//! The invariant a reader must not break: **rates and latencies count only the measurement window** (after the
//! ramp), so a run's numbers describe the steady load, not the logins; outcomes (connected, failed, saw itself
//! move) and errors count the whole run.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::behaviour::Behaviour;
use super::bot::Outcome;
use super::histogram::Histogram;

/// One thread's measurements.
#[derive(Debug, Default)]
pub(crate) struct ThreadStats {
    /// Inputs sent in the window.
    pub inputs: u64,
    /// Inputs skipped because the thread fell a whole tick behind.
    pub inputs_skipped: u64,
    /// Snapshots received in the window.
    pub snapshots: u64,
    /// Entities in them (summed).
    pub entities_shown: u64,
    /// Entities the server would have shown without the datagram budget (summed).
    pub entities_visible: u64,
    /// The most in one.
    pub most_entities_shown: u64,
    /// Ticks for which a bot got no snapshot (gaps in its snapshot tick numbers), in the window.
    pub snapshot_ticks_missed: u64,
    /// Datagrams that did not open (forged, replayed, undecodable).
    pub udp_rejected: u64,
    /// Delta snapshots not decoded (reordered behind a newer one, or their baseline was lost).
    pub snapshots_undecodable: u64,
    /// Datagrams not sent because the socket buffer was full.
    pub udp_send_dropped: u64,
    /// Logins the server called busy and the bot retried.
    pub login_retries: u64,
    /// Connections the bots dropped on purpose (`--drop-rate`).
    pub drops: u64,
    /// Sessions resumed with their token after a drop.
    pub resumes: u64,
    /// Resumes refused (the bot then logged in with its password).
    pub resume_failures: u64,
    /// Drop -> LoginOk of the resume, microseconds (reconnect, TLS and Hello included).
    pub resume_time: Histogram,
    /// Chat lines sent.
    pub chats_sent: u64,
    /// Chat lines received.
    pub chats_received: u64,
    /// Combat events received.
    pub combat_events: u64,
    /// Input -> snapshot latency, microseconds, in the window.
    pub latency: Histogram,
    /// The same since the last live publication.
    pub window: Histogram,
    /// Connect -> LoginOk, microseconds (whole run).
    pub login_time: Histogram,
    /// TLS Ping -> Pong, microseconds.
    pub control_rtt: Histogram,
    /// Tick -> (first, last) arrival of its snapshots at this thread, microseconds since the epoch.
    pub tick_arrivals: HashMap<u64, (u64, u64)>,
    /// The server's tick period as announced in LoginOk, microseconds.
    pub tick_period_us: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Bytes received from the server (TLS records and UDP datagrams, or WebSocket messages), in the window.
    pub bytes_in: u64,
    /// Of which the data channel's (UDP datagrams, WebSocket data frames): snapshots above all.
    pub data_bytes_in: u64,
    /// Bytes sent to the server, in the window.
    pub bytes_out: u64,
}

impl ThreadStats {
    /// Notes that a snapshot of `tick` arrived at `now_us`.
    #[inline]
    pub(crate) fn note_tick_arrival(&mut self, tick: u64, now_us: u64) {
        let e = self.tick_arrivals.entry(tick).or_insert((now_us, now_us));
        e.0 = e.0.min(now_us);
        e.1 = e.1.max(now_us);
    }

    /// Adds `other` into `self`.
    pub(crate) fn merge(&mut self, other: ThreadStats) {
        self.inputs += other.inputs;
        self.bytes_in += other.bytes_in;
        self.data_bytes_in += other.data_bytes_in;
        self.bytes_out += other.bytes_out;
        self.inputs_skipped += other.inputs_skipped;
        self.snapshots += other.snapshots;
        self.entities_shown += other.entities_shown;
        self.entities_visible += other.entities_visible;
        self.most_entities_shown = self.most_entities_shown.max(other.most_entities_shown);
        self.snapshot_ticks_missed += other.snapshot_ticks_missed;
        self.udp_rejected += other.udp_rejected;
        self.snapshots_undecodable += other.snapshots_undecodable;
        self.udp_send_dropped += other.udp_send_dropped;
        self.login_retries += other.login_retries;
        self.drops += other.drops;
        self.resumes += other.resumes;
        self.resume_failures += other.resume_failures;
        self.resume_time.merge(&other.resume_time);
        self.chats_sent += other.chats_sent;
        self.chats_received += other.chats_received;
        self.combat_events += other.combat_events;
        self.latency.merge(&other.latency);
        self.login_time.merge(&other.login_time);
        self.control_rtt.merge(&other.control_rtt);
        for (tick, (first, last)) in other.tick_arrivals {
            let e = self.tick_arrivals.entry(tick).or_insert((first, last));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
        }
        self.tick_period_us = self.tick_period_us.max(other.tick_period_us);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// Client-side view of the server's tick timing, from when each tick's snapshots arrived.
    ///
    /// Tick `n` is scheduled at `anchor + n * period`, and its snapshots leave when its work is done, so
    /// `first_arrival(n) - n * period` is `anchor + work(n) + delivery`. Its minimum over the run is the fastest
    /// tick; the excess over that minimum ([`TickTiming::delay`]) estimates how much longer tick `n` took (plus any
    /// scheduling noise of the bots themselves, so it is an upper bound). `last - first` is the fan-out time.
    pub(crate) fn tick_timing(&self) -> TickTiming {
        let mut timing = TickTiming::default();
        let period = self.tick_period_us;
        if period == 0 || self.tick_arrivals.is_empty() {
            return timing;
        }
        let offset = |tick: u64, first: u64| i128::from(first) - i128::from(tick) * i128::from(period);
        let Some(min) = self.tick_arrivals.iter().map(|(&t, &(f, _))| offset(t, f)).min() else { return timing };
        for (&tick, &(first, last)) in &self.tick_arrivals {
            timing.delay.record(u64::try_from(offset(tick, first) - min).unwrap_or(u64::MAX));
            timing.fan_out.record(last - first);
        }
        timing
    }
}

/// See [`ThreadStats::tick_timing`].
#[derive(Debug, Default)]
pub(crate) struct TickTiming {
    /// Per tick: how much later than the fastest tick its first snapshot arrived, microseconds.
    pub delay: Histogram,
    /// Per tick: first to last snapshot arrival, microseconds.
    pub fan_out: Histogram,
}

/// One thread's live counters, published once a second.
#[derive(Debug, Default)]
pub(crate) struct ThreadLive {
    pub connecting: AtomicU64,
    pub logging_in: AtomicU64,
    pub playing: AtomicU64,
    pub failed: AtomicU64,
    pub inputs: AtomicU64,
    pub snapshots: AtomicU64,
}

/// What the progress line reads while the threads run.
#[derive(Debug)]
pub(crate) struct Live {
    pub threads: Vec<ThreadLive>,
    /// Latency samples since the progress line last looked.
    pub window: Mutex<Histogram>,
}

impl Live {
    pub(crate) fn new(threads: usize) -> Self {
        Self { threads: (0..threads).map(|_| ThreadLive::default()).collect(), window: Mutex::new(Histogram::new()) }
    }

    fn sum(&self, f: impl Fn(&ThreadLive) -> &AtomicU64) -> u64 {
        self.threads.iter().map(|t| f(t).load(Ordering::Relaxed)).sum()
    }

    /// The progress line; `last` holds the previous (inputs, snapshots) totals for the per-second rates.
    pub(crate) fn progress(&self, elapsed_secs: f64, dt_secs: f64, last: &mut (u64, u64)) -> String {
        let (inputs, snapshots) = (self.sum(|t| &t.inputs), self.sum(|t| &t.snapshots));
        let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / dt_secs.max(1e-3);
        let (input_rate, snapshot_rate) = (rate(inputs, last.0), rate(snapshots, last.1));
        *last = (inputs, snapshots);
        let p99 = match self.window.lock() {
            Ok(mut h) => {
                let p = h.quantile(0.99);
                let n = h.count();
                h.clear();
                if n == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.1} ms", p as f64 / 1000.0)
                }
            }
            Err(_) => "-".to_owned(),
        };
        format!(
            "[{elapsed_secs:6.1}s] connecting {} logging-in {} playing {} failed {} | inputs/s {input_rate:.0} \
             snapshots/s {snapshot_rate:.0} | input->snapshot p99 {p99}",
            self.sum(|t| &t.connecting),
            self.sum(|t| &t.logging_in),
            self.sum(|t| &t.playing),
            self.sum(|t| &t.failed),
        )
    }
}

/// Percentiles of one measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Quantiles {
    /// The histogram's percentiles divided by `unit` (1000.0 turns microseconds into milliseconds).
    pub fn from_histogram(h: &Histogram, unit: f64) -> Self {
        let q = |v: u64| v as f64 / unit;
        Self {
            count: h.count(),
            mean: h.mean() / unit,
            p50: q(h.quantile(0.5)),
            p90: q(h.quantile(0.9)),
            p99: q(h.quantile(0.99)),
            p999: q(h.quantile(0.999)),
            max: q(h.max()),
        }
    }
}

/// The result of a run (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target address.
    pub server: String,
    /// Bots asked for.
    pub bots: usize,
    /// Driver threads.
    pub threads: usize,
    /// Behaviour.
    pub behaviour: Behaviour,
    /// Protocol version spoken (2: delta snapshots, 1: full).
    pub protocol: u32,
    /// Ramp length, seconds.
    pub ramp_secs: f64,
    /// Seconds between the ramp and the measured window.
    pub settle_secs: f64,
    /// Measurement window (after the ramp), seconds.
    pub duration_secs: f64,
    /// The server's tick rate (from LoginOk; 0 if no bot logged in).
    pub tick_rate_hz: f64,
    /// Bots that got LoginOk.
    pub connected: usize,
    /// Bots whose UDP endpoint was bound (UdpWelcome).
    pub udp_bound: usize,
    /// Bots that received at least one snapshot.
    pub received_snapshots: usize,
    /// Bots that saw their own entity move at least 1 m in the snapshots.
    pub saw_self_move: usize,
    /// Bots that failed (did not get in, were dropped, or never saw themselves move).
    pub failed: usize,
    /// Inputs sent in the window.
    pub inputs_sent: u64,
    /// Inputs per second over the window.
    pub inputs_per_sec: f64,
    /// Bytes from the server per connected player per second over the window.
    pub bytes_in_per_player_per_sec: f64,
    /// Of which the data channel's (UDP datagrams, WebSocket data frames: snapshots above all).
    pub data_bytes_in_per_player_per_sec: f64,
    /// Bytes to the server per connected player per second over the window.
    pub bytes_out_per_player_per_sec: f64,
    /// Snapshots received in the window.
    pub snapshots_received: u64,
    /// Snapshots per second over the window.
    pub snapshots_per_sec: f64,
    /// Entities per snapshot (mean).
    pub entities_per_snapshot: f64,
    /// Entities in view per snapshot without the datagram budget or the view's cap (mean).
    pub visible_per_snapshot: f64,
    /// The most entities one snapshot showed.
    pub most_entities_per_snapshot: u64,
    /// Ticks some bot got no snapshot for (lost or never sent), in the window.
    pub snapshot_ticks_missed: u64,
    /// Input sent -> first snapshot reflecting it, milliseconds.
    pub latency_ms: Quantiles,
    /// The same in server ticks.
    pub latency_ticks: Quantiles,
    /// Client-side tick timing estimate: how much later than the fastest tick each tick's first snapshot
    /// arrived, milliseconds (an upper bound on the tick time's excess over its minimum).
    pub tick_delay_ms: Quantiles,
    /// First to last snapshot of a tick, milliseconds (the server's fan-out time).
    pub snapshot_fan_out_ms: Quantiles,
    /// TCP connect -> LoginOk, milliseconds (argon2 queueing included).
    pub login_ms: Quantiles,
    /// TLS Ping -> Pong, milliseconds.
    pub control_rtt_ms: Quantiles,
    /// Logins retried after SERVER_BUSY.
    pub login_retries: u64,
    /// Connections dropped on purpose (`--drop-rate`).
    pub drops: u64,
    /// Of those, sessions resumed with their token.
    pub resumes: u64,
    /// Resumes refused (the bot fell back to its password).
    pub resume_failures: u64,
    /// Drop -> LoginOk of the resume, milliseconds (reconnect, TLS and Hello included).
    pub resume_ms: Quantiles,
    /// Inputs skipped because a bot thread fell a tick behind (the load generator itself was overloaded).
    pub inputs_skipped: u64,
    /// Datagrams from the server that did not authenticate or decode.
    pub udp_rejected: u64,
    /// Protocol v2: delta snapshots that could not be decoded (reordered, or against a lost baseline).
    pub snapshots_undecodable: u64,
    /// Datagrams the bots could not send (socket buffer full).
    pub udp_send_dropped: u64,
    /// Chat lines sent.
    pub chats_sent: u64,
    /// Chat lines received.
    pub chats_received: u64,
    /// Combat events received.
    pub combat_events: u64,
    /// Failures and other errors by kind (`connect:*`, `tls:*`, `login_refused:<reason>`, `kicked:<reason>`,
    /// `udp_bind_timeout`, `timeout:*`, `closed_by_server`, `protocol:*`, `no_snapshots`, `no_self_movement`, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// Builds the report from the merged measurements and every bot's outcome.
    pub(crate) fn build(header: ReportHeader, mut stats: ThreadStats, outcomes: &[Outcome]) -> Report {
        let mut failed = 0;
        for o in outcomes {
            let kind = match (&o.failure, o.logged_in) {
                (Some(_), _) => None, // already counted when it happened
                (None, true) if o.snapshots == 0 => Some("no_snapshots"),
                (None, true) if !o.saw_self_move => Some("no_self_movement"),
                (None, true) => None,
                (None, false) => Some("never_logged_in"),
            };
            if let Some(kind) = kind {
                *stats.errors.entry(kind.into()).or_default() += 1;
            }
            if o.failure.is_some() || kind.is_some() {
                failed += 1;
            }
        }
        let secs = header.duration_secs.max(1e-9);
        let period_us = stats.tick_period_us;
        let timing = stats.tick_timing();
        let ms = |h: &Histogram| Quantiles::from_histogram(h, 1000.0);
        Report {
            server: header.server,
            bots: header.bots,
            threads: header.threads,
            behaviour: header.behaviour,
            protocol: header.protocol,
            ramp_secs: header.ramp_secs,
            settle_secs: header.settle_secs,
            duration_secs: header.duration_secs,
            tick_rate_hz: if period_us == 0 { 0.0 } else { 1e6 / period_us as f64 },
            connected: outcomes.iter().filter(|o| o.logged_in).count(),
            udp_bound: outcomes.iter().filter(|o| o.udp_bound).count(),
            received_snapshots: outcomes.iter().filter(|o| o.snapshots > 0).count(),
            saw_self_move: outcomes.iter().filter(|o| o.saw_self_move).count(),
            failed,
            inputs_sent: stats.inputs,
            inputs_per_sec: stats.inputs as f64 / secs,
            bytes_in_per_player_per_sec: stats.bytes_in as f64
                / secs
                / outcomes.iter().filter(|o| o.logged_in).count().max(1) as f64,
            data_bytes_in_per_player_per_sec: stats.data_bytes_in as f64
                / secs
                / outcomes.iter().filter(|o| o.logged_in).count().max(1) as f64,
            bytes_out_per_player_per_sec: stats.bytes_out as f64
                / secs
                / outcomes.iter().filter(|o| o.logged_in).count().max(1) as f64,
            snapshots_received: stats.snapshots,
            snapshots_per_sec: stats.snapshots as f64 / secs,
            entities_per_snapshot: stats.entities_shown as f64 / stats.snapshots.max(1) as f64,
            visible_per_snapshot: stats.entities_visible as f64 / stats.snapshots.max(1) as f64,
            most_entities_per_snapshot: stats.most_entities_shown,
            snapshot_ticks_missed: stats.snapshot_ticks_missed,
            latency_ms: ms(&stats.latency),
            latency_ticks: Quantiles::from_histogram(&stats.latency, period_us.max(1) as f64),
            tick_delay_ms: ms(&timing.delay),
            snapshot_fan_out_ms: ms(&timing.fan_out),
            login_ms: ms(&stats.login_time),
            control_rtt_ms: ms(&stats.control_rtt),
            login_retries: stats.login_retries,
            drops: stats.drops,
            resumes: stats.resumes,
            resume_failures: stats.resume_failures,
            resume_ms: ms(&stats.resume_time),
            inputs_skipped: stats.inputs_skipped,
            udp_rejected: stats.udp_rejected,
            snapshots_undecodable: stats.snapshots_undecodable,
            udp_send_dropped: stats.udp_send_dropped,
            chats_sent: stats.chats_sent,
            chats_received: stats.chats_received,
            combat_events: stats.combat_events,
            errors: stats.errors,
        }
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let q = |q: &Quantiles, unit: &str| {
            format!(
                "p50 {:.2} {unit}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
                q.p50, q.p90, q.p99, q.p999, q.max, q.count
            )
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "realm-bots: {} bots ({:?}) on {} threads against {}; ramp {:.0} s, settle {:.0} s, measured {:.0} s at {:.0} Hz",
            self.bots,
            self.behaviour,
            self.threads,
            self.server,
            self.ramp_secs,
            self.settle_secs,
            self.duration_secs,
            self.tick_rate_hz
        );
        let _ = writeln!(
            s,
            "  bots:       {} connected, {} udp bound, {} got snapshots, {} saw themselves move, {} FAILED",
            self.connected, self.udp_bound, self.received_snapshots, self.saw_self_move, self.failed
        );
        let _ = writeln!(
            s,
            "  traffic:    {:.0} inputs/s, {:.0} snapshots/s, {} snapshot ticks missed, {} inputs skipped",
            self.inputs_per_sec, self.snapshots_per_sec, self.snapshot_ticks_missed, self.inputs_skipped
        );
        let _ = writeln!(
            s,
            "  views:      protocol v{}: {:.1} entities per snapshot (most {}) of {:.1} in view",
            self.protocol, self.entities_per_snapshot, self.most_entities_per_snapshot, self.visible_per_snapshot
        );
        let _ = writeln!(
            s,
            "  bandwidth:  {:.0} B/s in ({:.0} on the data channel), {:.0} B/s out per player",
            self.bytes_in_per_player_per_sec, self.data_bytes_in_per_player_per_sec, self.bytes_out_per_player_per_sec
        );
        let _ = writeln!(s, "  input->snapshot: {}", q(&self.latency_ms, "ms"));
        let _ = writeln!(s, "                   {}", q(&self.latency_ticks, "ticks"));
        let _ = writeln!(s, "  tick delay (client-side estimate): {}", q(&self.tick_delay_ms, "ms"));
        let _ = writeln!(s, "  snapshot fan-out: {}", q(&self.snapshot_fan_out_ms, "ms"));
        let _ = writeln!(s, "  login:      {}  ({} busy retries)", q(&self.login_ms, "ms"), self.login_retries);
        if self.drops > 0 {
            let _ = writeln!(
                s,
                "  resume:     {}  ({} drops, {} resumed, {} refused)",
                q(&self.resume_ms, "ms"),
                self.drops,
                self.resumes,
                self.resume_failures
            );
        }
        let _ = writeln!(s, "  TLS rtt:    {}", q(&self.control_rtt_ms, "ms"));
        let _ = writeln!(
            s,
            "  other:      {} chat sent, {} chat received, {} combat events, {} datagrams rejected, {} not sent, \
             {} delta snapshots undecodable",
            self.chats_sent,
            self.chats_received,
            self.combat_events,
            self.udp_rejected,
            self.udp_send_dropped,
            self.snapshots_undecodable
        );
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors:     none");
        } else {
            let _ = writeln!(s, "  errors:");
            for (kind, n) in &self.errors {
                let _ = writeln!(s, "    {kind}: {n}");
            }
        }
        s
    }
}

/// The run parameters the report repeats.
#[derive(Debug, Clone)]
pub(crate) struct ReportHeader {
    pub server: String,
    pub bots: usize,
    pub threads: usize,
    pub behaviour: Behaviour,
    pub ramp_secs: f64,
    pub settle_secs: f64,
    pub duration_secs: f64,
    pub protocol: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ReportHeader {
        ReportHeader {
            server: "127.0.0.1:7777".into(),
            bots: 4,
            threads: 1,
            behaviour: Behaviour::Walk,
            ramp_secs: 0.0,
            settle_secs: 0.0,
            duration_secs: 10.0,
            protocol: 2,
        }
    }

    #[test]
    fn bots_that_got_in_but_never_moved_or_saw_nothing_count_as_failed() {
        let ok = Outcome { logged_in: true, udp_bound: true, snapshots: 5, saw_self_move: true, failure: None };
        let still = Outcome { saw_self_move: false, ..ok.clone() };
        let blind = Outcome { snapshots: 0, saw_self_move: false, ..ok.clone() };
        let refused = Outcome { failure: Some("login_refused:server_full".into()), ..Outcome::default() };
        let mut stats = ThreadStats::default();
        stats.errors.insert("login_refused:server_full".into(), 1);
        let r = Report::build(header(), stats, &[ok, still, blind, refused]);
        assert_eq!((r.connected, r.udp_bound, r.received_snapshots, r.saw_self_move, r.failed), (3, 3, 2, 1, 3));
        assert_eq!(r.errors.get("no_self_movement"), Some(&1));
        assert_eq!(r.errors.get("no_snapshots"), Some(&1));
        assert_eq!(r.errors.get("login_refused:server_full"), Some(&1));
    }

    #[test]
    fn latency_is_reported_in_milliseconds_and_ticks() {
        let mut stats = ThreadStats { tick_period_us: 50_000, inputs: 200, snapshots: 100, ..Default::default() };
        for _ in 0..100 {
            stats.latency.record(25_000);
        }
        let r = Report::build(header(), stats, &[]);
        assert_eq!(r.tick_rate_hz, 20.0);
        assert!((r.latency_ms.p99 - 25.0).abs() < 0.5, "{:?}", r.latency_ms);
        assert!((r.latency_ticks.p99 - 0.5).abs() < 0.01, "{:?}", r.latency_ticks);
        assert_eq!((r.inputs_per_sec, r.snapshots_per_sec), (20.0, 10.0));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency_ms"]["count"], 100);
        assert!(r.to_text().contains("input->snapshot: p50 25"));
    }

    #[test]
    fn tick_delay_is_measured_from_the_fastest_tick() {
        let mut stats = ThreadStats { tick_period_us: 50_000, ..Default::default() };
        // Ticks 10..20 arrive 3 ms after their slot, tick 15 arrives 12 ms after it.
        for tick in 10..20u64 {
            let extra = if tick == 15 { 12_000 } else { 3_000 };
            stats.note_tick_arrival(tick, tick * 50_000 + extra);
            stats.note_tick_arrival(tick, tick * 50_000 + extra + 1_000);
        }
        let t = stats.tick_timing();
        assert_eq!(t.delay.count(), 10);
        assert_eq!(t.delay.quantile(0.5), 0);
        assert!((8_900..=9_100).contains(&t.delay.max()), "{}", t.delay.max());
        assert_eq!(t.fan_out.quantile(0.5), 1_000);
    }
}
