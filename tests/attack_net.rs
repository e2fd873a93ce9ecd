//! Attacks on a real `realm-server` process from outside, the way an outsider would make them: abortive closes at
//! scale, slot hogging with silent and half-open connections, a lockout used as a password oracle, UDP reflection
//! towards an address that never asked, and hashing floods. Each test asserts what a player or an operator would
//! notice: a legitimate player still gets in and plays, slots and descriptors come back, the refusals are counted.
//!
//! Several source addresses are used (any 127.0.0.0/8 address is the loopback interface on Linux), so "per
//! address" limits are attacked the way a botnet would. The tests run one at a time (they load both cores).
//!
//! Timings printed with `--nocapture` feed BENCHMARKS.md's "Under attack" table; the assertions only check what
//! fails outright on an undefended server (a refused login, a login that takes seconds), never tight timings.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use realm::client::{ClientError, Connection, UdpLink};
use realm::net::udp::DataChannel;
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, Input, KickReason, Login,
    LoginErrorReason, LoginOk, Ping, Register, Vec2,
};

const PASSWORD: &str = "password123";

/// The attacks load both cores; run them one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// 127.0.0.`n`: a distinct source address on the loopback interface.
fn source(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A TCP connection to the game port `game` from `from`.
fn tcp_from(game: SocketAddr, from: Ipv4Addr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&game.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// TLS + Hello from `from`.
fn greeted_from(game: SocketAddr, from: Ipv4Addr, tls: &Arc<rustls::ClientConfig>) -> Result<Connection, ClientError> {
    let tcp = tcp_from(game, from)?;
    let mut c = Connection::over(tcp, "localhost", Arc::clone(tls), Duration::from_secs(10))?;
    c.hello("attacker")?;
    Ok(c)
}

fn register(c: &mut Connection, name: &str) -> Result<LoginOk, ClientError> {
    c.authenticate(Body::Register(Register { username: name.into(), password: PASSWORD.into() }))
}

fn login(c: &mut Connection, name: &str, password: &str) -> Result<LoginOk, ClientError> {
    c.authenticate(Body::Login(Login { username: name.into(), password: password.into() }))
}

fn refusal(r: Result<LoginOk, ClientError>) -> (i32, String) {
    match r {
        Err(ClientError::Login(e)) => (e.reason, e.message),
        other => panic!("expected a LoginError, got {other:?}"),
    }
}

/// A legitimate player: connects from 127.0.0.1, logs in to an existing account, and binds UDP and sees itself
/// in a snapshot. Returns the time from connect to LoginOk.
fn legitimate_login(s: &ServerProcess, name: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut c = s.connect().map_err(|e| format!("connect: {e}"))?;
    let ok = login(&mut c, name, PASSWORD).map_err(|e| format!("login: {e}"))?;
    let took = started.elapsed();
    let keys = c.udp_keys(ok.session_id).map_err(|e| e.to_string())?;
    let mut link =
        UdpLink::bind(s.game, ok.session_id, &keys, Duration::from_secs(10)).map_err(|e| format!("udp bind: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Instant::now() > deadline {
            return Err("no snapshot showing the player".into());
        }
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(snap)) }) = link.recv(Duration::from_secs(1)) {
            if snap.entities.iter().any(|e| e.id == ok.entity_id) {
                break;
            }
        }
    }
    let _ = c.send(&ControlMessage::new(Body::Logout(Default::default())));
    Ok(took)
}

/// Registers `name` (from 127.0.0.1) and logs it out, so later logins find it offline.
fn create_account(s: &ServerProcess, name: &str) {
    let mut c = s.connect().unwrap();
    register(&mut c, name).unwrap();
    c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    // Wait until the server has let the player go (its lock released), so a login right after succeeds.
    let _ = c.set_timeout(Duration::from_secs(5));
    while c.recv().is_ok() {}
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or_default()
}

/// `realm-bots` playing against the server for a while: what a crowd of players sees during a test phase.
struct Bots {
    child: std::process::Child,
    bots: usize,
}

impl Bots {
    fn start(s: &ServerProcess, bots: usize, seconds: u32) -> Bots {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_realm-bots"))
            .args(["--server", &s.game.to_string(), "--ca", &s.cert.to_string_lossy()])
            .args(["--bots", &bots.to_string(), "--ramp", "1", "--duration", &seconds.to_string()])
            .args(["--prefix", "crowd", "--json", "--quiet", "--allow-failures", "--login-timeout", "20"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run realm-bots");
        Bots { child, bots }
    }

    /// Snapshots per bot per second over the run, and the bots that failed.
    fn finish(self) -> (f64, u64) {
        let out = self.child.wait_with_output().expect("realm-bots ends");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let rate = report["snapshots_per_sec"].as_f64().unwrap_or(0.0) / self.bots as f64;
        let failed = report["failed"].as_u64().unwrap_or(self.bots as u64);
        if failed > 0 {
            eprintln!("realm-bots: {failed} failed: {}", report["errors"]);
        }
        (rate, failed)
    }
}

/// What a phase of an attack test measured.
struct Phase {
    login_p50: Duration,
    login_p99: Duration,
    failures: Vec<String>,
    snapshots_per_bot: f64,
    bots_failed: u64,
}

/// Ten legitimate logins one after another, with ten bots playing meanwhile.
fn measure(s: &ServerProcess, name: &str) -> Phase {
    let bots = Bots::start(s, 10, 8);
    let (login_p50, login_p99, failures) = timed_logins(s, name, 10);
    let (snapshots_per_bot, bots_failed) = bots.finish();
    Phase { login_p50, login_p99, failures, snapshots_per_bot, bots_failed }
}

fn report(attack: &str, quiet: &Phase, flood: &Phase) {
    eprintln!(
        "| {attack} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.1} / {:.1} | {} |",
        quiet.login_p50.as_secs_f64() * 1e3,
        quiet.login_p99.as_secs_f64() * 1e3,
        flood.login_p50.as_secs_f64() * 1e3,
        flood.login_p99.as_secs_f64() * 1e3,
        quiet.snapshots_per_bot,
        flood.snapshots_per_bot,
        flood.failures.len() as u64 + flood.bots_failed,
    );
}

/// `n` legitimate logins one after another: (p50, p99) and the failures.
fn timed_logins(s: &ServerProcess, name: &str, n: usize) -> (Duration, Duration, Vec<String>) {
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..n {
        match legitimate_login(s, name) {
            Ok(t) => samples.push(t),
            Err(e) => failures.push(e),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99), failures)
}

/// Runs `attack(address, stop)` on one thread per source address until the returned guard is dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(
        addresses: impl IntoIterator<Item = u8>,
        attack: impl Fn(Ipv4Addr, &AtomicBool) + Send + Sync + 'static,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let attack = Arc::new(attack);
        let threads = addresses
            .into_iter()
            .map(|n| {
                let (stop, attack) = (Arc::clone(&stop), Arc::clone(&attack));
                std::thread::spawn(move || attack(source(n), &stop))
            })
            .collect();
        Flood { stop, threads }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn resets_at_scale_free_every_slot_and_descriptor_and_a_player_still_gets_in() {
    let _serial = serial();
    let s = ServerProcess::start(&[("REALM_NET_MAX_CONNECTIONS", "300")]);
    create_account(&s, "rst_victim");
    let quiet = measure(&s, "rst_victim");
    let (baseline_fds, baseline_rss) = (s.open_fds(), s.rss_kib());
    // 1,500 closes by reset from 30 addresses, five times max_connections: each completes TLS and Hello, then
    // closes with SO_LINGER 0 (what a client closing with unread data does too). Players log in meanwhile.
    let done = Arc::new(AtomicU64::new(0));
    let during = {
        let (tls, game) = (s.client_tls(), s.game);
        let threads: Vec<_> = (0..3u8)
            .map(|t| {
                let (tls, done) = (Arc::clone(&tls), Arc::clone(&done));
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let from = source(10 + t * 10 + (i % 10) as u8);
                        if let Ok(c) = greeted_from(game, from, &tls) {
                            let _ = socket2::SockRef::from(c.socket()).set_linger(Some(Duration::ZERO));
                            drop(c);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let during = measure(&s, "rst_victim");
        for t in threads {
            t.join().unwrap();
        }
        during
    };
    report("1,500 resets after TLS + Hello", &quiet, &during);
    assert!(during.failures.is_empty(), "legitimate logins failed during the reset flood: {:?}", during.failures);
    let completed = done.load(Ordering::Relaxed);
    let back =
        ServerProcess::wait_until(Duration::from_secs(10), || s.metric("game_server_connections_open", &[]) == 0.0);
    let open = s.metric("game_server_connections_open", &[]);
    let (fds, rss) = (s.open_fds(), s.rss_kib());
    eprintln!(
        "reset flood: {completed}/1500 completed TLS + Hello, open afterwards {open}, fds {baseline_fds} -> {fds}, \
         RSS {baseline_rss} -> {rss} KiB"
    );
    assert!(completed >= 1400, "the flood itself was refused: only {completed} of 1500 got through (slots leaked?)");
    assert!(back, "game_server_connections_open stayed at {open} after every peer reset its connection");
    assert!(fds <= baseline_fds + 5, "file descriptors leaked: {baseline_fds} before, {fds} after");
    // A leaked session (TLS state, buffers) costs tens of KiB: 1,500 of them would be tens of MiB.
    assert!(rss < baseline_rss + 16 * 1024, "memory did not return to baseline: {baseline_rss} -> {rss} KiB");
    assert_eq!(s.admin_get("/ready", Duration::from_secs(2)).map(|r| r.0), Some(200));
    legitimate_login(&s, "rst_victim").expect("a player logs in and plays after the flood");
}

#[test]
fn a_locked_account_answers_the_same_whatever_the_password_and_its_owner_still_gets_in() {
    let _serial = serial();
    let s = ServerProcess::start(&[]);
    create_account(&s, "oracle_victim"); // from 127.0.0.1: the owner's address
    let tls = s.client_tls();
    // Five wrong guesses from an attacker's address lock the account.
    let mut guesses = 0;
    while guesses < 5 {
        let mut c = greeted_from(s.game, source(50), &tls).unwrap();
        for _ in 0..3 {
            if guesses == 5 {
                break;
            }
            let (reason, _) = refusal(login(&mut c, "oracle_victim", &format!("guess-{guesses}")));
            assert_eq!(reason, LoginErrorReason::LoginErrorInvalidCredentials as i32);
            guesses += 1;
        }
    }
    // The right and a wrong password now get the same answer: the lockout tells the attacker nothing.
    let mut c = greeted_from(s.game, source(51), &tls).unwrap();
    let right = refusal(login(&mut c, "oracle_victim", PASSWORD));
    let wrong = refusal(login(&mut c, "oracle_victim", "guess-wrong"));
    assert_eq!(right.0, LoginErrorReason::LoginErrorLockedOut as i32, "{right:?}");
    assert_eq!(right, wrong, "a locked account must answer the same whatever the password");
    // Login attempts per connection are bounded: the fourth closes the connection.
    let _ = login(&mut c, "oracle_victim", "guess-3");
    match login(&mut c, "oracle_victim", "guess-4") {
        Err(ClientError::Kicked { reason: KickReason::LoginAttempts, .. }) => {}
        other => panic!("a fourth attempt on one connection must be refused with a kick, got {other:?}"),
    }
    // The owner, from the address the account logged in from before, is not locked out by strangers.
    legitimate_login(&s, "oracle_victim").expect("the owner's usual address gets through the lockout");
    assert!(s.metric("game_server_login_refusals_total", &[("reason", "locked_out")]) >= 3.0);
    assert!(s.metric("game_server_sessions_closed_total", &[("reason", "login_attempts")]) >= 1.0);
}

/// Counts the bytes arriving at `socket` during `window`.
fn bytes_arriving(socket: &UdpSocket, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut total = 0;
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            total += n;
        }
    }
    total
}

#[test]
fn a_hello_from_an_address_that_never_answers_gets_less_than_it_sent_and_silent_addresses_stop_receiving() {
    let _serial = serial();
    let s = ServerProcess::start(&[("REALM_NET_UDP_SILENCE_TIMEOUT_MS", "2000")]);
    // The attacker holds an account and its session's keys...
    let mut attacker = s.connect().unwrap();
    let ok = register(&mut attacker, "reflector").unwrap();
    let keys = attacker.udp_keys(ok.session_id).unwrap();
    // ...and sends one valid hello whose source is the victim's address. (On loopback the victim's own socket
    // sends it; the victim then never sends anything again, exactly as a spoofed source would.)
    let victim = UdpSocket::bind("127.0.0.77:0").unwrap();
    let mut channel = DataChannel::client(ok.session_id, &keys);
    let mut hello = vec![0u8; 1500];
    let n = channel.seal_hello(&mut hello).unwrap();
    victim.send_to(&hello[..n], s.game).unwrap();
    let received = bytes_arriving(&victim, Duration::from_secs(3));
    eprintln!("reflection: {n} bytes sent from the victim's address, {received} bytes received there in 3 s");
    assert!(received < n, "the server sent {received} bytes to an address that sent {n} and never answered");
    assert!(s.metric("game_server_udp_endpoints_bound", &[]) == 0.0, "nothing is bound without the challenge");

    // A real client answers the challenge and gets its stream...
    let mut player = s.connect().unwrap();
    let ok = register(&mut player, "listener").unwrap();
    let keys = player.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(s.game, ok.session_id, &keys, Duration::from_secs(5)).expect("challenge answered");
    let socket = link.socket().try_clone().unwrap();
    let live = bytes_arriving(&socket, Duration::from_secs(1));
    assert!(live > 0, "a bound client receives snapshots");
    // ...until it falls silent (no input, no pong): after the silence timeout nothing more is sent to it. (What
    // arrived before is drained first: the socket buffered it while nobody read.)
    std::thread::sleep(Duration::from_millis(2500));
    bytes_arriving(&socket, Duration::from_millis(100));
    let silent = bytes_arriving(&socket, Duration::from_secs(2));
    eprintln!(
        "silence: {live} bytes in the first second, {silent} bytes 2.5-4.5 s into the silence (dropped as silent: {})",
        s.metric("game_server_network_packets_dropped_total", &[("channel", "udp"), ("reason", "silent")])
    );
    assert_eq!(silent, 0, "the server kept streaming to an address it has not heard from");
    assert!(s.metric("game_server_network_packets_dropped_total", &[("channel", "udp"), ("reason", "silent")]) > 0.0);
    // The TLS session is still up; any datagram revives the stream.
    let input = Input { sequence: 1, move_dir: Some(Vec2 { x: 0.0, y: 0.0 }), ..Default::default() };
    link.send(&DataMessage::new(DataBody::Input(input))).unwrap();
    assert!(bytes_arriving(&socket, Duration::from_secs(1)) > 0, "heard again: the stream resumes");
    player.send(&ControlMessage::new(Body::Ping(Ping { nonce: 1, client_time_us: 0 }))).expect("TLS still up");
}

/// Holds connections from `from` that complete TLS + Hello and then only ping, reconnecting whenever the server
/// closes one, until `stop`.
fn hog(game: SocketAddr, from: Ipv4Addr, per_address: usize, stop: &AtomicBool, tls: &Arc<rustls::ClientConfig>) {
    let mut held: Vec<Connection> = Vec::new();
    let ping = ControlMessage::new(Body::Ping(Ping { nonce: 7, client_time_us: 0 }));
    while !stop.load(Ordering::Relaxed) {
        while held.len() < per_address && !stop.load(Ordering::Relaxed) {
            match greeted_from(game, from, tls) {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        held.retain_mut(|c| c.send(&ping).is_ok());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn silent_and_pinging_connections_at_max_connections_do_not_lock_players_out() {
    let _serial = serial();
    let s = ServerProcess::start(&[("REALM_NET_MAX_CONNECTIONS", "200"), ("REALM_NET_LOGIN_TIMEOUT_MS", "5000")]);
    create_account(&s, "hog_victim");
    let quiet = measure(&s, "hog_victim");
    assert!(quiet.failures.is_empty(), "{:?}", quiet.failures);
    // 20 addresses each try to hold 40 connections (800 > max_connections = 200), pinging now and then.
    let flood = {
        let (game, tls) = (s.game, s.client_tls());
        Flood::start(100..120, move |from, stop| hog(game, from, 40, stop, &tls))
    };
    std::thread::sleep(Duration::from_secs(4));
    let open = s.metric("game_server_connections_open", &[]);
    let during = measure(&s, "hog_victim");
    drop(flood);
    eprintln!("slot hogging: {open} connections open during the flood");
    report("silent + pinging connections at max_connections", &quiet, &during);
    assert!(open >= 150.0, "the flood did not fill the server ({open} open): the test attacks nothing");
    assert!(during.failures.is_empty(), "legitimate logins failed during the flood: {:?}", during.failures);
    assert!(
        during.login_p99 < Duration::from_secs(3),
        "a legitimate login took {:?} during the flood",
        during.login_p99
    );
    assert_eq!(during.bots_failed, 0, "players already in game were dropped during the flood");
    let evicted = s.metric("game_server_sessions_closed_total", &[("reason", "evicted")])
        + s.metric("game_server_sessions_closed_total", &[("reason", "login_timeout")]);
    assert!(evicted > 0.0, "no hogging connection was evicted or timed out");
    assert!(
        ServerProcess::wait_until(Duration::from_secs(10), || s.metric("game_server_connections_open", &[]) == 0.0),
        "slots did not come back after the flood"
    );
    // One address alone gets net.max_unauthenticated_per_ip (32) connections that have not logged in, no more.
    let tls = s.client_tls();
    let one: Vec<_> = (0..40).filter_map(|_| greeted_from(s.game, source(99), &tls).ok()).collect();
    assert_eq!(one.len(), 32, "per-address cap of connections not logged in");
    let per_ip = s.metric("game_server_connections_refused_total", &[("reason", "unauthenticated_per_ip")]);
    assert!(per_ip >= 8.0, "the refusals by the per-address cap are not counted ({per_ip})");
}

/// Sends Register or Login requests for names that do not exist from `from`, as fast as the server answers,
/// reconnecting when a connection is used up.
fn hash_flood(game: SocketAddr, from: Ipv4Addr, stop: &AtomicBool, tls: &Arc<rustls::ClientConfig>, register: bool) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = greeted_from(game, from, tls) else {
            // Refused (over the address's connection rate): try again soon, as a flooder would.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for _ in 0..3 {
            n += 1;
            let name = format!("x{}{n}", u32::from(from));
            let body = if register {
                Body::Register(Register { username: name, password: PASSWORD.into() })
            } else {
                Body::Login(Login { username: name, password: PASSWORD.into() })
            };
            if c.authenticate(body).is_err_and(|e| !matches!(e, ClientError::Login(_))) {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

fn login_under_hash_flood(register: bool) {
    // The default per-address connection rate (100 a minute) is part of the defence: the flood comes from 40
    // addresses, as a botnet's would, at up to 200 requests a second.
    let s = ServerProcess::start(&[]);
    create_account(&s, "flood_victim");
    let quiet = measure(&s, "flood_victim");
    assert!(quiet.failures.is_empty(), "{:?}", quiet.failures);
    let flood = {
        let (game, tls) = (s.game, s.client_tls());
        Flood::start(130..170, move |from, stop| hash_flood(game, from, stop, &tls, register))
    };
    std::thread::sleep(Duration::from_secs(2));
    let during = measure(&s, "flood_victim");
    drop(flood);
    let what = if register { "registration" } else { "failed-login" };
    report(&format!("{what} flood from 40 addresses"), &quiet, &during);
    assert!(during.failures.is_empty(), "legitimate logins failed during the {what} flood: {:?}", during.failures);
    // The design's target is "p99 during the flood <= 2x quiet"; the slack keeps a loaded CI machine from failing
    // it while an undefended server (3-4x here, seconds under a bigger flood) still does.
    let (p99, bound) = (during.login_p99, quiet.login_p99 * 2 + Duration::from_millis(150));
    assert!(p99 <= bound, "a legitimate login took {p99:?} (p99) during the {what} flood, over {bound:?}");
    assert_eq!(during.bots_failed, 0, "players were dropped or could not log in during the {what} flood");
    let busy = s.metric("game_server_login_refusals_total", &[("reason", "server_busy")]);
    let limited = s.metric("game_server_login_refusals_total", &[("reason", "rate_limited")])
        + s.metric("game_server_login_refusals_total", &[("reason", "locked_out")]);
    assert!(busy + limited > 0.0, "the flood was never refused");
}

#[test]
fn a_failed_login_flood_with_unknown_names_leaves_hashing_for_real_accounts() {
    let _serial = serial();
    login_under_hash_flood(false);
}

#[test]
fn a_registration_flood_from_many_addresses_leaves_hashing_for_real_accounts() {
    let _serial = serial();
    login_under_hash_flood(true);
}

#[test]
fn a_zone_full_of_players_says_so_on_ready_and_health_and_recovers_when_one_leaves() {
    let _serial = serial();
    let s = ServerProcess::start(&[("REALM_NET_MAX_CONNECTIONS", "3")]);
    let ready = || s.admin_get("/ready", Duration::from_secs(2)).map(|r| r.0);
    let health = || s.admin_get("/health", Duration::from_secs(2)).map(|r| r.1).unwrap_or_default();
    assert_eq!(ready(), Some(200));
    let mut players: Vec<Connection> = (0..3)
        .map(|n| {
            let mut c = s.connect().unwrap();
            register(&mut c, &format!("full{n}")).unwrap();
            c
        })
        .collect();
    // Nothing left to evict: a fourth connection is refused, and the probes say why.
    assert!(s.connect().is_err(), "a fourth connection got in past max_connections = 3");
    let (open, authenticated) =
        (s.metric("game_server_connections_open", &[]), s.metric("game_server_connections_authenticated", &[]));
    assert_eq!(
        ready(),
        Some(503),
        "/ready must not send players to a zone that cannot take them ({open} open, {authenticated} logged in)"
    );
    assert!(health().contains("\"status\":\"full\""), "{}", health());
    players.pop().unwrap().send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    assert!(ServerProcess::wait_until(Duration::from_secs(5), || ready() == Some(200)), "a slot came back");
    assert!(health().contains("\"status\":\"ok\""), "{}", health());
}
