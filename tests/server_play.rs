//! The whole server in-process (io threads, sim thread, workers, embedded backend) played through real TLS and
//! UDP sockets by the same client library `realm-client` uses.

use std::time::{Duration, Instant};

use realm::client::{ClientError, Connection, UdpLink};
use realm::config::Config;
use realm::net::tls::{self, ServerTrust};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, Chat, ControlMessage, DataMessage, Input, KickReason,
    LoginErrorReason, LoginOk, Register, Vec2,
};
use realm::server::{self, RunningServer};

fn start() -> RunningServer {
    let mut c = Config::default();
    c.server.host = "127.0.0.1".parse().unwrap();
    c.server.port = 0;
    c.admin.host = "127.0.0.1".parse().unwrap();
    c.admin.port = 0;
    c.server.io_threads = 1;
    c.game.tick_rate = 20;
    // Cheap hashing is not configurable on purpose; OWASP parameters cost ~50 ms per login here.
    server::start(c).unwrap()
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

fn connect(s: &RunningServer) -> Connection {
    let cfg = tls::client_config(&ServerTrust::CaFile(s.dev_cert_path.clone().unwrap())).unwrap();
    let mut c = Connection::connect(&s.game_addr.to_string(), "localhost", cfg, Duration::from_secs(10)).unwrap();
    c.hello("server-play-test").unwrap();
    c
}

fn register(c: &mut Connection, name: &str) -> Result<LoginOk, ClientError> {
    c.authenticate(Body::Register(Register { username: name.into(), password: "password123".into() }))
}

fn next_snapshot(link: &mut UdpLink) -> realm::proto::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no snapshot");
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(s)) }) = link.recv(Duration::from_secs(1)) {
            return s;
        }
    }
}

#[test]
fn a_player_registers_binds_udp_moves_and_sees_itself_move() {
    let s = start();
    let mut c = connect(&s);
    let ok = register(&mut c, "walker").unwrap();
    assert_eq!(ok.tick_rate_hz, 20);
    assert_ne!(ok.entity_id, 0);
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(s.game_addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    let me =
        |snap: &realm::proto::Snapshot| snap.entities.iter().find(|e| e.id == ok.entity_id).and_then(|e| e.position);
    let start_pos = me(&next_snapshot(&mut link)).expect("the player sees itself");
    for seq in 1..=20u32 {
        let input = Input { sequence: seq, move_dir: Some(Vec2 { x: 1.0, y: 0.0 }), ..Default::default() };
        link.send(&DataMessage::new(DataBody::Input(input))).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut snap = next_snapshot(&mut link);
    while snap.last_processed_input < 20 {
        snap = next_snapshot(&mut link);
    }
    let end_pos = me(&snap).unwrap();
    let moved = end_pos.x - start_pos.x;
    assert!(moved > 3.0 && moved < 6.5, "20 inputs at 6 m/s, 50 ms each: moved {moved} m");
    assert!(snap.entities.len() > 1, "sees NPCs around the spawn too");

    // Zone chat comes back over TLS.
    c.send(&ControlMessage::new(Body::Chat(Chat { channel: 1, text: "hello realm".into() }))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "chat never came back");
        if let Body::ChatMessage(m) = c.recv().unwrap().body.unwrap() {
            assert_eq!((m.text.as_str(), m.from_name.as_str()), ("hello realm", "walker"));
            break;
        }
    }
    // Operators see the player and the ticks.
    let health = http_get(s.admin_addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"players_online\":1"), "{health}");
    assert!(http_get(s.admin_addr, "/ready").starts_with("HTTP/1.1 200"));
    let metrics = http_get(s.admin_addr, "/metrics");
    assert!(metrics.contains("game_server_players_online 1"), "players gauge");
    let ticks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("game_server_tick_duration_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(ticks > 10.0, "tick histogram moves: {ticks}");
    assert!(metrics.contains("game_server_network_packets_total{channel=\"udp\",direction=\"in\"}"));

    s.request_stop();
    // Graceful stop: the client is told why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.recv() {
            Err(ClientError::Kicked { reason, .. }) => {
                assert_eq!(reason, KickReason::ServerShutdown);
                break;
            }
            Err(ClientError::Timeout) => assert!(Instant::now() < deadline, "no shutdown kick"),
            Err(e) => panic!("unexpected: {e}"),
            Ok(_) => {}
        }
    }
    let counters = s.join().unwrap();
    assert!(counters.ticks > 20);
}

#[test]
fn the_same_account_cannot_be_online_twice_and_bad_credentials_are_refused() {
    let s = start();
    let mut first = connect(&s);
    register(&mut first, "twice").unwrap();
    let mut second = connect(&s);
    let err = second
        .authenticate(Body::Login(realm::proto::Login { username: "twice".into(), password: "password123".into() }));
    match err {
        Err(ClientError::Login(e)) => assert_eq!(e.reason, LoginErrorReason::LoginErrorAlreadyOnline as i32),
        other => panic!("expected AlreadyOnline, got {other:?}"),
    }
    let wrong = second
        .authenticate(Body::Login(realm::proto::Login { username: "twice".into(), password: "nope-nope".into() }));
    let unknown = second
        .authenticate(Body::Login(realm::proto::Login { username: "nobody".into(), password: "nope-nope".into() }));
    match (wrong, unknown) {
        (Err(ClientError::Login(a)), Err(ClientError::Login(b))) => {
            assert_eq!(a.reason, LoginErrorReason::LoginErrorInvalidCredentials as i32);
            assert_eq!((a.reason, a.message), (b.reason, b.message), "unknown user looks like a wrong password");
        }
        other => panic!("expected refusals, got {other:?}"),
    }
    // After logging out, the account can log in again (its lock was released after the final save).
    first.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A fresh connection per try: one connection allows net.max_login_attempts (3) requests.
        second = connect(&s);
        let again = second.authenticate(Body::Login(realm::proto::Login {
            username: "twice".into(),
            password: "password123".into(),
        }));
        match again {
            Ok(_) => break,
            Err(ClientError::Login(e)) if e.reason == LoginErrorReason::LoginErrorAlreadyOnline as i32 => {
                assert!(Instant::now() < deadline, "lock never released after logout");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    s.request_stop();
    s.join().unwrap();
}
