//! The admin listener over real sockets on 127.0.0.1: what Prometheus, kubelet probes and operators see, and that
//! hostile or broken admin clients cannot starve a scrape.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use realm::admin::{self, AdminServer, AdminState, BackendState, Phase};
use realm::config::Config;
use realm::metrics::{CacheSample, Metrics, PoolSample, ReplicaSample, SimTotals, TickPhase};
use realm::net::io::NetShared;
use realm::net::udp::UdpError;

struct Admin {
    server: AdminServer,
    state: Arc<AdminState>,
    metrics: Arc<Metrics>,
    net: Arc<NetShared>,
}

fn start(freeze_after_ms: u64) -> Admin {
    let mut config = Config::default();
    config.admin.host = [127, 0, 0, 1].into();
    config.admin.port = 0;
    config.admin.freeze_after_ms = freeze_after_ms;
    config.server.zone = "test-vale".into();
    let metrics = Arc::new(Metrics::new(&config.server.zone));
    let net = Arc::new(NetShared::new(&config));
    metrics.attach_net(Arc::clone(&net)).expect("first attach");
    let state = Arc::new(AdminState::from_config(&config, &metrics));
    let server = admin::spawn(&config, Arc::clone(&state), Arc::clone(&metrics)).expect("admin listener starts");
    Admin { server, state, metrics, net }
}

impl Admin {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn get(&self, path: &str) -> Reply {
        request(self.addr(), format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
    }
}

/// A simulated sim thread: records a tick every 20 ms until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(state: &Arc<AdminState>, players: u64) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&stop), Arc::clone(state));
        let tick = AtomicU64::new(1);
        let join = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                st.record_tick(tick.fetch_add(1, Ordering::Relaxed), players);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // The first tick is recorded before the caller looks.
        while state.health(Instant::now()).tick_age_ms.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ticker { stop, join: Some(join) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            j.join().expect("ticker thread");
        }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes, reads until the server closes, splits status, head and body.
fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("send request");
    read_reply(&mut s)
}

fn read_reply(s: &mut TcpStream) -> Reply {
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("server answers and closes");
    let text = String::from_utf8(bytes).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status: {head}"));
    Reply { status, head: head.to_owned(), body: body.to_owned() }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {:?}", reply.body))
}

/// Whether the server has closed `s` (EOF or reset) rather than still holding it open.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 256];
    let closed = loop {
        match s.read(&mut b) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn answer_waiting(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let waiting = matches!(s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
    s.set_nonblocking(false).unwrap();
    waiting
}

#[test]
fn metrics_endpoint_serves_operator_names_in_text_format() {
    let a = start(2_000);
    let r = a.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(realm::metrics::CONTENT_TYPE));
    assert_eq!(r.header("connection"), Some("close"));
    for name in [
        "game_server_players_online",
        "game_server_tick_duration_seconds_bucket",
        "game_server_network_latency_seconds_bucket",
        "game_server_network_packets_dropped_total",
        "game_server_sessions_closed_total",
        "game_server_tick_phase_duration_seconds_bucket",
        "game_server_build_info",
    ] {
        assert!(r.body.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(r.header("content-length").and_then(|v| v.parse().ok()), Some(r.body.len()));
}

#[test]
fn scraped_counters_move_when_the_state_they_read_moves() {
    let a = start(2_000);
    let replayed = "game_server_network_packets_dropped_total{channel=\"udp\",reason=\"replayed\"}";
    let before = a.get("/metrics").body;
    assert_eq!(sample(&before, "game_server_players_online"), Some(0.0));
    assert_eq!(sample(&before, replayed), Some(0.0));

    a.state.record_tick(41, 17);
    let i = UdpError::REASONS.iter().position(|r| *r == "replayed").expect("replayed is a drop reason");
    a.net.stats.udp_dropped[i].fetch_add(5, Ordering::Relaxed);
    a.metrics.tick.observe(0.012);
    a.metrics.network_latency.observe(0.040);

    let after = a.get("/metrics").body;
    assert_eq!(sample(&after, "game_server_players_online"), Some(17.0));
    assert_eq!(sample(&after, "game_server_current_tick"), Some(41.0));
    assert_eq!(sample(&after, replayed), Some(5.0));
    assert_eq!(sample(&after, "game_server_tick_duration_seconds_count"), Some(1.0));
    assert_eq!(sample(&after, "game_server_network_latency_seconds_bucket{le=\"0.05\"}"), Some(1.0));
}

#[test]
#[ignore = "needs promtool: run scripts/test.sh (scripts/tools.sh installs it)"]
fn scraped_metrics_pass_promtool_lint() {
    let promtool = find_on_path("promtool").expect("promtool not on PATH: run scripts/tools.sh");
    let a = start(2_000);
    // Every family populated, so the lint sees all of them.
    a.state.record_tick(3, 2);
    a.metrics.tick.observe(0.01);
    a.metrics.tick_phases.observe(TickPhase::Snapshots, 0.001);
    a.metrics.locks.acquire_duration.observe(0.002);
    a.metrics.set_sim_totals(&SimTotals { inputs_applied: 5, ..SimTotals::default() });
    a.metrics.set_queue_depth("inbound", 4);
    a.metrics.set_pool_stats("primary", PoolSample { up: true, max_size: 16, ..PoolSample::default() });
    a.metrics.set_replica_lag("replica-0", ReplicaSample { up: true, lag_seconds: Some(0.1) });
    a.metrics.set_cache_stats("player", CacheSample { hits: 1, ..CacheSample::default() });
    a.metrics.observe_query("load_player", 0.002, true);
    let (tx, _rx) = realm::queue::channel::<()>();
    let (pool, jobs) = realm::worker::WorkerPool::start(1, 4, Arc::new(()), tx).expect("worker pool");
    a.metrics.attach_workers("jobs", Arc::clone(pool.stats())).expect("first attach");
    jobs.submit("save_batch", |_: &()| None).expect("queue has room");
    drop(jobs);
    pool.join();

    let text = a.get("/metrics").body;
    assert!(text.contains("game_server_worker_job_duration_seconds_count{pool=\"jobs\",job=\"save_batch\"} 1"));
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

fn find_on_path(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(tool)).find(|p| p.is_file())
}

#[test]
fn health_and_ready_follow_starting_ready_draining() {
    let a = start(2_000);
    let ready = a.get("/ready");
    assert_eq!((ready.status, ready.body.as_str()), (503, "starting\n"));
    let health = a.get("/health");
    assert_eq!(health.status, 200, "starting is alive");
    assert_eq!(health.header("content-type"), Some("application/json"));
    let h = json(&health);
    assert_eq!(h["status"], "starting");
    assert_eq!(h["zone"], "test-vale");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["database"], "embedded");
    assert_eq!(h["redis"], "embedded");
    assert!(h["tick_age_ms"].is_null());

    let _ticker = Ticker::start(&a.state, 9);
    a.state.set_phase(Phase::Ready);
    let ready = a.get("/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let h = json(&a.get("/health"));
    assert_eq!(h["status"], "ok");
    assert_eq!(h["players_online"], 9);
    assert!(h["server_tick"].as_u64().is_some_and(|t| t >= 1));
    assert!(h["tick_age_ms"].as_u64().is_some());

    a.state.set_phase(Phase::Draining);
    let ready = a.get("/ready");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    let health = a.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(json(&health)["status"], "draining");
}

#[test]
fn a_stalled_tick_reports_frozen_until_it_moves_again() {
    let a = start(200);
    let ticker = Ticker::start(&a.state, 1);
    a.state.set_phase(Phase::Ready);
    assert_eq!(a.get("/ready").status, 200);
    drop(ticker);
    std::thread::sleep(Duration::from_millis(400));

    let health = a.get("/health");
    assert_eq!(health.status, 503);
    let h = json(&health);
    assert_eq!(h["status"], "frozen");
    assert!(h["tick_age_ms"].as_u64().is_some_and(|ms| ms >= 200), "{h}");
    let ready = a.get("/ready");
    assert_eq!((ready.status, ready.body.as_str()), (503, "frozen\n"));

    let _ticker = Ticker::start(&a.state, 1);
    // The ticker thread needs to be scheduled once before the tick moves again (slow on a loaded CI machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.get("/ready").status != 200 {
        assert!(std::time::Instant::now() < deadline, "never recovered from frozen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(json(&a.get("/health"))["status"], "ok");
}

#[test]
fn a_configured_backend_that_is_down_makes_health_503_degraded() {
    let a = start(2_000);
    let _ticker = Ticker::start(&a.state, 0);
    a.state.set_phase(Phase::Ready);
    a.state.set_database(BackendState::Down);
    let health = a.get("/health");
    assert_eq!(health.status, 503);
    let h = json(&health);
    assert_eq!((h["status"].as_str(), h["database"].as_str()), (Some("degraded"), Some("down")));
    a.state.set_database(BackendState::Up);
    assert_eq!(a.get("/health").status, 200);
}

#[test]
fn unknown_path_is_404_post_is_405_and_head_has_no_body() {
    let a = start(2_000);
    assert_eq!(a.get("/nope").status, 404);
    let post = request(a.addr(), b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nboom");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(a.addr(), b"HEAD /ready HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.status, 503);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("9"), "announces the GET body length (\"starting\\n\")");
}

#[test]
fn malformed_request_is_answered_400() {
    let a = start(2_000);
    assert_eq!(request(a.addr(), b"GET /metrics HTTP/7\r\n\r\n").status, 400);
    assert_eq!(request(a.addr(), b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n").status, 400);
    assert_eq!(request(a.addr(), b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").status, 400);
}

#[test]
fn oversized_or_too_many_headers_are_answered_431() {
    let a = start(2_000);
    let big = format!("GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "p".repeat(admin::MAX_HEAD_BYTES));
    assert_eq!(request(a.addr(), big.as_bytes()).status, 431);
    let many: String = (0..=admin::MAX_HEADERS).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(request(a.addr(), format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes()).status, 431);
}

#[test]
fn silent_dribbling_and_garbage_clients_do_not_delay_a_concurrent_scrape() {
    let a = start(2_000);
    let mut silent = TcpStream::connect(a.addr()).unwrap();
    let mut garbage = TcpStream::connect(a.addr()).unwrap();
    garbage.write_all(&[0xff; 4000]).unwrap();
    let addr = a.addr();
    let dribbler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        // One byte every 100 ms never completes a head; the deadline is for the whole head, not per byte.
        // It stops as soon as an answer is waiting, like a client that reads while it writes.
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle().take(60) {
            if answer_waiting(&s) || s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (read_reply(&mut s), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));

    let scrape = a.get("/metrics");
    assert_eq!(scrape.status, 200);
    assert!(scrape.body.contains("game_server_players_online"));
    // Answered while the silent client is still held open: the scrape did not wait for anyone's timeout.
    assert!(!closed_by_server(&mut silent), "the silent client was closed before the scrape was answered");
    assert_eq!(read_reply(&mut garbage).status, 400);

    let (reply, took) = dribbler.join().unwrap();
    assert_eq!(reply.status, 408);
    assert!(took < Duration::from_secs(5), "dribbler held its slot for {took:?}");
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_reply(&mut silent).status, 408, "a silent client is closed after the head timeout");
}

#[test]
fn a_full_table_evicts_its_oldest_unanswered_connection_for_a_new_scrape() {
    let a = start(2_000);
    let mut held: Vec<TcpStream> = (0..admin::MAX_CONNECTIONS).map(|_| TcpStream::connect(a.addr()).unwrap()).collect();
    let started = Instant::now();
    let scrape = a.get("/metrics");
    assert_eq!(scrape.status, 200, "a scrape against a full table of silent connections");
    assert!(started.elapsed() < Duration::from_secs(1), "the scrape waited for a slot: {:?}", started.elapsed());
    // The oldest silent connection made room (told why), the newest still holds its slot.
    held[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_reply(&mut held[0]).status, 408, "the oldest silent connection is evicted with a 408");
    assert!(!closed_by_server(held.last_mut().unwrap()), "the newest silent connection was evicted");
    let evicted = sample(&a.metrics.render(), r#"game_server_admin_connections_shed_total{reason="evicted"}"#);
    assert_eq!(evicted, Some(1.0));
}

#[test]
fn shutdown_stops_the_listener() {
    let a = start(2_000);
    let addr = a.addr();
    assert_eq!(a.get("/ready").status, 503);
    a.server.shutdown();
    assert!(TcpStream::connect(addr).is_err(), "listener still accepting after shutdown");
}
