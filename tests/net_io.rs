//! The io layer over real sockets on loopback: real rustls clients, the real queue, real io threads. The test
//! thread plays the simulation (it consumes `Inbound` and answers through `IoHandle`s), which is all the io layer
//! ever sees of the game.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use realm::client::{ClientError, Connection, UdpLink};
use realm::config::Config;
use realm::net::io::{self, Inbound, IoThreads, NetShared, Outbound};
use realm::net::tls::{self, ServerTrust};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, Input, KickReason, Login,
    LoginOk, Ping, Snapshot, Vec2,
};
use realm::queue::{self, Pop};

struct Harness {
    addr: SocketAddr,
    shared: Arc<NetShared>,
    io: Option<IoThreads>,
    stop: Arc<AtomicBool>,
    sim: Option<JoinHandle<()>>,
    data_received: Arc<AtomicU64>,
}

impl Harness {
    fn start(tweak: impl FnOnce(&mut Config)) -> Harness {
        let mut config = Config::default();
        config.server.host = "127.0.0.1".parse().unwrap();
        config.server.port = 0;
        config.server.io_threads = 2;
        tweak(&mut config);
        let server_tls = tls::server_config(&config.tls, &std::env::temp_dir()).unwrap();
        let (tx, mut rx) = queue::channel::<Inbound>();
        let shared = Arc::new(NetShared::new(&config));
        let io = io::spawn(&config, Arc::clone(&server_tls.config), tx, Arc::clone(&shared)).unwrap();
        let handles = io.handles.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let data_received = Arc::new(AtomicU64::new(0));
        let sim = {
            let stop = Arc::clone(&stop);
            let data_received = Arc::clone(&data_received);
            std::thread::spawn(move || {
                let mut owner: HashMap<u64, usize> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let item = match rx.pop() {
                        Pop::Item(item) => item,
                        Pop::Empty | Pop::Inconsistent => {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    };
                    match item {
                        Inbound::Connected { session, io, .. } => {
                            owner.insert(session, io);
                        }
                        Inbound::Control { session, msg } => {
                            let Some(&io) = owner.get(&session) else { continue };
                            if let Some(Body::Login(_)) = msg.body {
                                let ok = LoginOk {
                                    session_id: session,
                                    player_id: 1,
                                    tick_rate_hz: 20,
                                    ..Default::default()
                                };
                                handles[io].send(Outbound::Admit { session, msg: ok });
                                handles[io].wake();
                            }
                        }
                        Inbound::Data { session, msg } => {
                            data_received.fetch_add(1, Ordering::Relaxed);
                            let Some(&io) = owner.get(&session) else { continue };
                            if let Some(DataBody::Input(input)) = msg.body {
                                let snap =
                                    Snapshot { tick: 1, last_processed_input: input.sequence, ..Default::default() };
                                handles[io]
                                    .send(Outbound::Data { session, msg: DataMessage::new(DataBody::Snapshot(snap)) });
                                handles[io].wake();
                            }
                        }
                        Inbound::UdpBound { .. } | Inbound::Disconnected { .. } | Inbound::Authenticate { .. } => {}
                    }
                }
            })
        };
        Harness { addr: io.local_addr, shared, io: Some(io), stop, sim: Some(sim), data_received }
    }

    fn connect(&self) -> Connection {
        let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
        Connection::connect(&self.addr.to_string(), "localhost", cfg, Duration::from_secs(5)).unwrap()
    }

    fn login(&self) -> (Connection, LoginOk) {
        let mut c = self.connect();
        c.hello("test").unwrap();
        let ok = c.authenticate(Body::Login(Login { username: "u".into(), password: "p".into() })).unwrap();
        (c, ok)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            for h in &io.handles {
                h.send(Outbound::Shutdown { reason: KickReason::ServerShutdown, message: "test over".into() });
                h.wake();
            }
            for j in io.joins {
                let _ = j.join();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sim) = self.sim.take() {
            let _ = sim.join();
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn input(seq: u32) -> DataMessage {
    DataMessage::new(DataBody::Input(Input {
        sequence: seq,
        move_dir: Some(Vec2 { x: 1.0, y: 0.0 }),
        ..Default::default()
    }))
}

#[test]
fn ping_pong_over_tls_without_login() {
    let h = Harness::start(|_| {});
    let mut c = h.connect();
    let hello = c.hello("test").unwrap();
    assert_eq!(hello.protocol_version, realm::proto::PROTOCOL_VERSION);
    c.send(&ControlMessage::new(Body::Ping(Ping { nonce: 7, client_time_us: 11 }))).unwrap();
    match c.recv().unwrap().body {
        Some(Body::Pong(p)) => assert_eq!((p.nonce, p.client_time_us), (7, 11)),
        other => panic!("expected Pong, got {other:?}"),
    }
    c.close();
}

#[test]
fn udp_binds_and_carries_an_encrypted_round_trip() {
    let h = Harness::start(|_| {});
    let (c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(h.addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    link.send(&input(1)).unwrap();
    match link.recv(Duration::from_secs(5)).unwrap().body {
        Some(DataBody::Snapshot(s)) => assert_eq!(s.last_processed_input, 1),
        other => panic!("expected Snapshot, got {other:?}"),
    }
}

#[test]
fn replayed_datagram_is_dropped() {
    let h = Harness::start(|_| {});
    let (c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(h.addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    let sealed = link.seal_raw(&input(5)).unwrap();
    for _ in 0..3 {
        link.socket().send_to(&sealed, h.addr).unwrap();
    }
    wait_until("the replays to be counted", || h.shared.stats.udp_dropped_by("replayed") >= 2);
    wait_until("the original to arrive", || h.data_received.load(Ordering::Relaxed) >= 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.data_received.load(Ordering::Relaxed), 1, "the simulation saw the input exactly once");
}

#[test]
fn datagram_from_a_spoofed_second_address_is_ignored() {
    let h = Harness::start(|_| {});
    let (c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(h.addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    let sealed = link.seal_raw(&input(9)).unwrap();
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.send_to(&sealed, h.addr).unwrap();
    wait_until("the spoofed datagram to be dropped", || h.shared.stats.udp_dropped_by("wrong_address") >= 1);
    assert_eq!(h.data_received.load(Ordering::Relaxed), 0);
    // The real endpoint still works.
    link.send(&input(10)).unwrap();
    assert!(link.recv(Duration::from_secs(5)).is_ok());
}

#[test]
fn server_only_messages_from_a_client_are_dropped_as_unexpected() {
    let h = Harness::start(|_| {});
    let (c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(h.addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    // Authentic datagrams from the bound address, carrying what only the server sends.
    let snapshot = DataMessage::new(DataBody::Snapshot(Snapshot { tick: 4, ..Default::default() }));
    let delta =
        DataMessage::new(DataBody::DeltaSnapshot(realm::proto::DeltaSnapshot { tick: 4, ..Default::default() }));
    for msg in [&snapshot, &delta, &delta] {
        link.send(msg).unwrap();
    }
    wait_until("the three to be counted", || h.shared.stats.udp_dropped_by("unexpected_message") >= 3);
    assert_eq!(h.data_received.load(Ordering::Relaxed), 0, "a server-only message reached the simulation");
    // The session is unharmed: the next input goes through.
    link.send(&input(2)).unwrap();
    wait_until("the input to arrive", || h.data_received.load(Ordering::Relaxed) == 1);
}

#[test]
fn nat_rebinding_works_only_after_a_rebind_request_over_tls() {
    let h = Harness::start(|_| {});
    let (mut c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(h.addr, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    link.rebind_socket().unwrap();
    assert!(matches!(link.hello(Duration::from_millis(600)), Err(ClientError::Timeout)), "no silent takeover");
    c.send(&ControlMessage::new(Body::UdpRebind(Default::default()))).unwrap();
    link.hello(Duration::from_secs(5)).unwrap();
    link.send(&input(50)).unwrap();
    assert!(matches!(link.recv(Duration::from_secs(5)).unwrap().body, Some(DataBody::Snapshot(_))));
}

#[test]
fn hello_reply_is_never_larger_than_the_request() {
    let h = Harness::start(|_| {});
    let (c, ok) = h.login();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut channel = realm::net::udp::DataChannel::client(ok.session_id, &keys);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = channel.seal_hello(&mut buf).unwrap();
    sock.send_to(&buf[..n], h.addr).unwrap();
    let mut reply = vec![0u8; 2048];
    let (m, _) = sock.recv_from(&mut reply).unwrap();
    assert!(m < n, "reply of {m} bytes to a hello of {n} bytes");
    // A short hello gets no reply at all.
    let short = &buf[..200];
    sock.send_to(short, h.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(sock.recv_from(&mut reply).is_err());
}

/// A complete ClientHello with TLS 1.2-style negotiation (no supported_versions extension) at `version`.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-ECDSA/RSA-AES128-GCM-SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // supported_groups: x25519, secp256r1
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x17, 0x00, 0x00, // extended_master_secret
        0xff, 0x01, 0x00, 0x01, 0x00, // renegotiation_info
    ];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn first_record_header(addr: SocketAddr, hello: &[u8]) -> [u8; 5] {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(hello).unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    header
}

#[test]
fn tls_1_1_is_refused() {
    let h = Harness::start(|_| {});
    // Control: the very same hello offered at TLS 1.2 gets a ServerHello (a handshake record).
    assert_eq!(first_record_header(h.addr, &client_hello([0x03, 0x03]))[0], 0x16, "TLS 1.2 is accepted");
    // At TLS 1.1 it gets a fatal alert and nothing else.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&client_hello([0x03, 0x02])).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(reply.len(), 7, "one alert record, then the connection closes: {reply:?}");
    assert_eq!(reply[0], 0x15, "an alert record");
    assert_eq!(reply[5], 2, "fatal");
    // rustls answers a version it does not speak with handshake_failure (40); protocol_version (70) is the other
    // spelling some stacks use.
    assert!(matches!(reply[6], 40 | 70), "alert {}", reply[6]);
    wait_until("the refusal to be counted", || h.shared.stats.closed_by("tls_error") >= 1);
}

#[test]
fn silent_connection_is_closed_at_the_handshake_timeout() {
    let h = Harness::start(|c| c.net.handshake_timeout_ms = 300);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let waited = started.elapsed();
    // Nothing but (at most) the TLS close_notify alert record.
    assert!(got.is_empty() || (got.len() == 7 && got[0] == 0x15), "unexpected bytes {got:?}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "closed after {waited:?}");
    assert_eq!(h.shared.stats.closed_by("handshake_timeout"), 1);
}

#[test]
fn oversized_and_garbage_frames_close_that_connection_and_nothing_else() {
    let h = Harness::start(|_| {});
    let mut bystander = h.connect();
    bystander.hello("bystander").unwrap();

    let mut big = h.connect();
    big.hello("big").unwrap();
    big.send_raw(&(1_000_000u32).to_be_bytes()).unwrap();
    match big.recv() {
        Err(ClientError::Kicked { reason, .. }) => assert_eq!(reason, KickReason::ProtocolError),
        other => panic!("expected a protocol-error kick, got {other:?}"),
    }

    let mut garbage = h.connect();
    garbage.hello("garbage").unwrap();
    garbage.send_raw(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0xff]).unwrap();
    assert!(matches!(garbage.recv(), Err(ClientError::Kicked { reason: KickReason::ProtocolError, .. })));

    bystander.send(&ControlMessage::new(Body::Ping(Ping { nonce: 1, client_time_us: 0 }))).unwrap();
    assert!(matches!(bystander.recv().unwrap().body, Some(Body::Pong(_))), "the other session is unaffected");
    assert_eq!(h.shared.stats.closed_by("frame_error"), 2);
}

#[test]
fn at_max_connections_the_oldest_connection_not_logged_in_makes_room() {
    let h = Harness::start(|c| c.net.max_connections = 2);
    let mut a = h.connect();
    a.hello("a").unwrap();
    let mut b = h.connect();
    b.hello("b").unwrap();
    let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
    let mut third = Connection::connect(&h.addr.to_string(), "localhost", cfg, Duration::from_secs(2))
        .expect("a newcomer is not refused while a connection that has not logged in can make room");
    third.hello("c").unwrap();
    // With two io threads the one that accepted the newcomer may hold neither a nor b: then the other closes its
    // oldest at its next sweep. Either way exactly one of them goes, with the reason.
    let kicked = [&mut a, &mut b]
        .into_iter()
        .filter_map(|c| {
            c.set_timeout(Duration::from_millis(500)).unwrap();
            matches!(c.recv(), Err(ClientError::Kicked { reason: KickReason::ConnectionLimit, .. })).then_some(())
        })
        .count();
    assert_eq!(kicked, 1, "one connection not logged in made room");
    assert_eq!(h.shared.stats.closed_by("evicted"), 1);
    assert_eq!(h.shared.stats.refused_max_connections.load(Ordering::Relaxed), 0);
}

#[test]
fn per_ip_connection_rate_is_limited() {
    let h = Harness::start(|c| c.net.connect_rate_max = 3);
    let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
    let results: Vec<bool> = (0..5)
        .map(|_| {
            Connection::connect(&h.addr.to_string(), "localhost", Arc::clone(&cfg), Duration::from_secs(2)).is_ok()
        })
        .collect();
    assert_eq!(results, vec![true, true, true, false, false]);
    assert_eq!(h.shared.stats.refused_rate_limited.load(Ordering::Relaxed), 2);
}

#[test]
fn a_thousand_concurrent_tls_clients_connect_and_are_served() {
    const CLIENTS: usize = 1000;
    let h = Harness::start(|c| {
        c.net.connect_rate_max = 10_000;
        c.net.max_connections = 2 * CLIENTS;
        // All from 127.0.0.1, none logged in: lift the per-address caps (tests/attack_net.rs attacks them).
        c.net.max_connections_per_ip = 0;
        c.net.max_unauthenticated_per_ip = 0;
    });
    let addr = h.addr.to_string();
    let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = addr.clone();
            let cfg = Arc::clone(&cfg);
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for _ in 0..CLIENTS / 8 {
                    let mut c =
                        Connection::connect(&addr, "localhost", Arc::clone(&cfg), Duration::from_secs(20)).unwrap();
                    c.hello("load").unwrap();
                    conns.push(c);
                }
                // Every connection is still open and served after all have connected.
                for (i, c) in conns.iter_mut().enumerate() {
                    let nonce = (t * 1000 + i) as u64;
                    c.send(&ControlMessage::new(Body::Ping(Ping { nonce, client_time_us: 0 }))).unwrap();
                    match c.recv().unwrap().body {
                        Some(Body::Pong(p)) => assert_eq!(p.nonce, nonce),
                        other => panic!("expected Pong, got {other:?}"),
                    }
                }
                conns
            })
        })
        .collect();
    let conns: Vec<Connection> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(conns.len(), CLIENTS);
    assert_eq!(h.shared.stats.open_connections.load(Ordering::Relaxed), CLIENTS);
}

#[test]
fn io_threads_take_the_configured_nice_value() {
    // Raising a nice value needs no privilege, so this runs anywhere. Other tests' io threads (same names, nice 0)
    // may be running in this process too, so look for ours among all of them.
    let h = Harness::start(|c| c.server.io_nice = 3);
    let nices = |name: &str| -> Vec<i64> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
        tasks
            .filter_map(Result::ok)
            .map(|t| t.path())
            .filter(|d| std::fs::read_to_string(d.join("comm")).is_ok_and(|c| c.trim() == name))
            .filter_map(|d| {
                let stat = std::fs::read_to_string(d.join("stat")).ok()?;
                // Fields after the command name start at field 3 (state); nice is field 19.
                stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
            })
            .collect()
    };
    wait_until("both io threads at nice 3", || nices("realm-io-0").contains(&3) && nices("realm-io-1").contains(&3));
    drop(h);
}
