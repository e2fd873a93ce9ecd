//! The admin port of a real `realm-server` under a slowloris flood (issue 15, item 7): kubelet probes and
//! Prometheus scrapes must stay answered while more slow clients than the admin listener has slots keep
//! connections open, dribble partial heads and reconnect the moment they are closed.
//!
//! Run with `cargo test --release --test attack_admin -- --nocapture` to see the measured success rates and
//! latencies (recorded in BENCHMARKS.md, "Admin probes under slow clients").

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::process::ServerProcess;

/// Slow clients in the flood: more than twice the admin listener's connection table (64 + 16 refusal slots).
const SLOW_CLIENTS: usize = 150;
/// Threads driving them.
const FLOOD_THREADS: usize = 6;
/// How often each slow client sends its next byte (or, for a silent one, checks whether it was closed).
const DRIBBLE_EVERY: Duration = Duration::from_millis(100);
/// `/health` and `/metrics` requests issued during the flood.
const HEALTH_PROBES: usize = 100;
const METRICS_SCRAPES: usize = 50;
/// What kubelet's `timeoutSeconds: 1` allows a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A head that never ends: the request line, then one header whose value grows forever.
const PARTIAL_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nX-Slow: ";

/// One slow client: a connection (when it has one) and how far into its endless head it is.
struct SlowClient {
    stream: Option<TcpStream>,
    sent: usize,
    silent: bool,
}

impl SlowClient {
    /// Connects if it has no connection, notices when the server closed it (and reconnects next turn), otherwise
    /// sends one more byte of its head (a silent client sends nothing).
    fn turn(&mut self, addr: SocketAddr, stats: &FloodStats) {
        let Some(stream) = self.stream.as_mut() else {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_nonblocking(true);
                self.stream = Some(s);
                self.sent = 0;
                stats.connects.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let mut closed = answered_or_closed(stream);
        if !closed && !self.silent {
            let byte = PARTIAL_HEAD.get(self.sent).copied().unwrap_or(b'a');
            match stream.write(&[byte]) {
                Ok(_) => self.sent += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed = true,
            }
        }
        if closed {
            self.stream = None;
            stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the server has answered (408, 503) or closed `stream`: either way it is done with this connection,
/// and so is the client.
fn answered_or_closed(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 512];
    loop {
        match stream.read(&mut sink) {
            Ok(_) => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

#[derive(Default)]
struct FloodStats {
    connects: AtomicU64,
    closed_by_server: AtomicU64,
}

/// [`SLOW_CLIENTS`] slow clients on [`FLOOD_THREADS`] threads until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let threads = (0..FLOOD_THREADS)
            .map(|t| {
                let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
                std::thread::spawn(move || {
                    // One in three sends nothing at all; the others dribble a byte per turn.
                    let mut clients: Vec<SlowClient> = (t..SLOW_CLIENTS)
                        .step_by(FLOOD_THREADS)
                        .map(|i| SlowClient { stream: None, sent: 0, silent: i % 3 == 0 })
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        for c in &mut clients {
                            c.turn(addr, &stats);
                        }
                        std::thread::sleep(DRIBBLE_EVERY.saturating_sub(started.elapsed()));
                    }
                })
            })
            .collect();
        Flood { stop, stats, threads }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("flood thread");
        }
        (self.stats.connects.load(Ordering::Relaxed), self.stats.closed_by_server.load(Ordering::Relaxed))
    }
}

/// Success count and latencies of a probe round.
struct Round {
    ok: usize,
    total: usize,
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

impl Round {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or_default()
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<28} {:>4}/{:<4} answered 200 ({:5.1}%)  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.ok,
            self.total,
            100.0 * self.ok as f64 / self.total as f64,
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.latencies.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3,
        )
    }
}

/// [`HEALTH_PROBES`] `/health` and [`METRICS_SCRAPES`] `/metrics` requests, interleaved two to one, each with
/// [`PROBE_TIMEOUT`]; a probe counts when it is answered 200 with the right content within the timeout.
fn probe_round(server: &ServerProcess) -> Round {
    let total = HEALTH_PROBES + METRICS_SCRAPES;
    let mut round = Round { ok: 0, total, latencies: Vec::with_capacity(total), failures: Vec::new() };
    for i in 0..total {
        let path = if i % 3 == 2 { "/metrics" } else { "/health" };
        let started = Instant::now();
        let reply = server.admin_get(path, PROBE_TIMEOUT);
        let took = started.elapsed();
        round.latencies.push(took);
        let right = match &reply {
            Some((200, body)) if path == "/health" => {
                serde_json::from_str::<serde_json::Value>(body).is_ok_and(|j| j["status"] == "ok")
            }
            Some((200, body)) => body.contains("game_server_current_tick"),
            _ => false,
        };
        if right && took <= PROBE_TIMEOUT {
            round.ok += 1;
        } else {
            let what = reply.map_or("no answer".to_owned(), |(code, body)| format!("{code} {:.60}", body));
            round.failures.push(format!("{path} after {took:?}: {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    round
}

#[test]
fn health_and_metrics_stay_answered_under_150_slow_clients() {
    let server = ServerProcess::start(&[]);
    let quiet = probe_round(&server);
    assert_eq!(quiet.ok, quiet.total, "probes fail without any attack: {:?}", quiet.failures);
    let fds_before = server.open_fds();

    let flood = Flood::start(server.admin);
    // Every slow client has connected and the admin table is full before the first probe.
    std::thread::sleep(Duration::from_millis(800));
    let fds_flooded = server.open_fds();
    let attacked = probe_round(&server);
    let fds_after_probes = server.open_fds();
    let (connects, closed) = flood.stop();

    eprintln!("admin probes, {HEALTH_PROBES} /health + {METRICS_SCRAPES} /metrics, {PROBE_TIMEOUT:?} timeout each:");
    eprintln!("  {}", quiet.line("no attack"));
    eprintln!("  {}", attacked.line(&format!("{SLOW_CLIENTS} slow clients")));
    eprintln!(
        "  flood: {connects} connects, {closed} closed by the server; server fds {fds_before} quiet, \
         {fds_flooded}/{fds_after_probes} flooded"
    );

    // The attack was real: the slow clients held at least a full table of admin connections.
    assert!(
        fds_flooded >= fds_before + realm::admin::MAX_CONNECTIONS,
        "the flood did not fill the admin table ({fds_before} fds quiet, {fds_flooded} flooded)"
    );
    // At least 99%: one probe in 150 may lose a race on a two-core machine shared with the flood's threads.
    assert!(
        attacked.ok * 100 >= attacked.total * 99,
        "{} of {} probes answered under the flood; first failures: {:#?}",
        attacked.ok,
        attacked.total,
        &attacked.failures[..attacked.failures.len().min(10)]
    );
    let shed = server.metric("game_server_admin_connections_shed_total", &[("reason", "evicted")]);
    assert!(shed > 0.0, "slow clients were not evicted (game_server_admin_connections_shed_total = {shed})");

    // Once the flood stops the server answers as before.
    assert!(
        ServerProcess::wait_until(Duration::from_secs(5), || matches!(
            server.admin_get("/health", PROBE_TIMEOUT),
            Some((200, _))
        )),
        "/health not answered after the flood stopped"
    );
    let after = probe_round(&server);
    assert_eq!(after.ok, after.total, "probes fail after the flood: {:?}", after.failures);
}
