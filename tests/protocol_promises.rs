//! What `proto/realm.proto` and the README's Protocol section promise, checked against a real `realm-server`
//! process by a client written from those documents (issue 16): each test is one promise a client author relies on.

mod common;

use std::time::{Duration, Instant};

use common::process::ServerProcess;
use realm::client::{ClientError, Connection, UdpLink};
use realm::net::udp::DataChannel;
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, Hello, Input, KickReason,
    LoginErrorReason, LoginOk, Ping, Register, Snapshot, Vec2,
};

fn register(c: &mut Connection, name: &str) -> LoginOk {
    c.authenticate(Body::Register(Register { username: name.into(), password: "password123".into() })).unwrap()
}

fn snapshot(link: &mut UdpLink) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no snapshot");
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(s)) }) = link.recv(Duration::from_secs(1)) {
            return s;
        }
    }
}

fn bind(s: &ServerProcess, c: &Connection, ok: &LoginOk) -> UdpLink {
    let keys = c.udp_keys(ok.session_id).unwrap();
    UdpLink::bind(s.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap()
}

fn input(sequence: u32, x: f32, y: f32) -> DataMessage {
    DataMessage::new(DataBody::Input(Input { sequence, move_dir: Some(Vec2 { x, y }), ..Default::default() }))
}

#[test]
fn a_player_who_plays_over_udp_and_says_nothing_over_tls_is_not_kicked_as_idle() {
    let s = ServerProcess::start(&[("REALM_NET_HANDSHAKE_TIMEOUT_MS", "1000"), ("REALM_NET_IDLE_TIMEOUT_MS", "2000")]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "udp_only");
    let mut link = bind(&s, &c, &ok);
    // Four idle timeouts of inputs at 20 Hz and nothing at all over TLS.
    for seq in 1..=160u32 {
        link.send(&input(seq, 0.0, 0.0)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    c.send(&ControlMessage::new(Body::Ping(Ping { nonce: 5, client_time_us: 0 }))).expect("TLS still open");
    let _ = c.set_timeout(Duration::from_secs(2));
    loop {
        match c.recv() {
            Ok(ControlMessage { body: Some(Body::Pong(p)) }) if p.nonce == 5 => break,
            Ok(_) => continue,
            Err(e) => panic!("a player sending inputs was disconnected as idle: {e}"),
        }
    }
    // And the promise's other half: silence on both channels does end the session.
    std::thread::sleep(Duration::from_millis(3000));
    match c.recv() {
        Err(ClientError::Kicked { reason: KickReason::IdleTimeout, .. }) => {}
        other => panic!("a session silent on both channels must be kicked as idle, got {other:?}"),
    }
}

#[test]
fn a_keyboard_diagonal_longer_than_one_moves_the_player_at_full_speed() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "diagonal");
    let mut link = bind(&s, &c, &ok);
    let me = |snap: &Snapshot| snap.entities.iter().find(|e| e.id == ok.entity_id).and_then(|e| e.position);
    let start = me(&snapshot(&mut link)).expect("the player sees itself");
    for seq in 1..=20u32 {
        link.send(&input(seq, 1.0, 1.0)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut snap = snapshot(&mut link);
    while snap.last_processed_input < 20 {
        snap = snapshot(&mut link);
    }
    let end = me(&snap).unwrap();
    let (dx, dy) = (end.x - start.x, end.y - start.y);
    let moved = (dx * dx + dy * dy).sqrt();
    assert!(moved > 4.0, "a (1, 1) direction moved the player {moved} m in a second (speed 6 m/s)");
    assert!((dx - dy).abs() < 0.5, "along the diagonal: dx {dx}, dy {dy}");
}

#[test]
fn udp_welcome_carries_the_current_server_tick() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "welcome_tick");
    std::thread::sleep(Duration::from_millis(500));
    let keys = c.udp_keys(ok.session_id).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut channel = DataChannel::client(ok.session_id, &keys);
    let mut buf = vec![0u8; 1500];
    let n = channel.seal_hello(&mut buf).unwrap();
    socket.send_to(&buf[..n], s.game).unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let challenge = match channel.open(&mut buf[..n]).unwrap().body {
        Some(DataBody::UdpChallenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let n = channel.seal_challenge_response(&challenge, &mut buf).unwrap();
    socket.send_to(&buf[..n], s.game).unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    match channel.open(&mut buf[..n]).unwrap().body {
        Some(DataBody::UdpWelcome(w)) => assert!(w.server_tick >= 5, "server_tick {} half a second in", w.server_tick),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[test]
fn a_wrong_protocol_version_is_answered_login_error_protocol_version() {
    let s = ServerProcess::start(&[]);
    let mut c = Connection::connect(&s.game.to_string(), "localhost", s.client_tls(), Duration::from_secs(5)).unwrap();
    c.send(&ControlMessage::new(Body::Hello(Hello { protocol_version: 3, client_name: "future".into() }))).unwrap();
    match c.recv() {
        Ok(ControlMessage { body: Some(Body::LoginError(e)) }) => {
            assert_eq!(e.reason, LoginErrorReason::LoginErrorProtocolVersion as i32, "{e:?}");
            assert!(e.message.contains("server speaks 1..=2"), "{e:?}");
        }
        other => panic!("a client must be able to tell 'upgrade me' from a protocol error, got {other:?}"),
    }
    assert!(matches!(c.recv(), Err(ClientError::Closed | ClientError::Io(_))), "then the server closes");
}

#[test]
fn logout_ends_with_kick_logged_out_not_an_unspecified_kick() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    register(&mut c, "leaver");
    c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    loop {
        match c.recv() {
            Ok(_) => continue,
            Err(ClientError::Kicked { reason, message }) => {
                assert_eq!(reason, KickReason::LoggedOut, "{message}");
                break;
            }
            Err(e) => panic!("logout must end with a LOGGED_OUT kick, got {e}"),
        }
    }
}

#[test]
fn no_snapshot_is_built_or_counted_as_dropped_for_a_player_who_has_not_bound_udp() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    register(&mut c, "unbound");
    std::thread::sleep(Duration::from_secs(2));
    let not_bound =
        s.metric("game_server_network_packets_dropped_total", &[("channel", "udp"), ("reason", "not_bound")]);
    let snapshots = s.metric("game_server_snapshots_total", &[]);
    assert_eq!(not_bound, 0.0, "20 snapshots a second were built for a player that cannot receive them");
    assert_eq!(snapshots, 0.0);
}

/// Protocol v2 is negotiated, and a client written against v1 keeps working next to it: one world, a v1 player
/// getting full snapshots and a v2 player getting delta snapshots (decoded against the views it acknowledged in
/// its inputs), each seeing the other move.
#[test]
fn a_version_1_and_a_version_2_client_play_in_one_world() {
    // One spawn point in a crowd of wandering NPCs: the two players stand in each other's view.
    let dir = std::env::temp_dir().join(common::unique("protocol_versions"));
    let wolves = common::Npcs {
        kind: "wolf",
        count: 150,
        at: (200.0, 200.0, 30.0),
        max_hp: 30,
        damage: (1, 1),
        radii: (1.0, 25.0),
    };
    let zone = common::zone_file(&dir, "versions.toml", &wolves.toml());
    let s = ServerProcess::start(&[("REALM_GAME_ZONE_FILE", zone.to_str().unwrap())]);
    let open = |name: &str, version: u32| {
        let mut c =
            Connection::connect(&s.game.to_string(), "localhost", s.client_tls(), Duration::from_secs(5)).unwrap();
        let hello = c.hello_version(name, version).unwrap();
        assert_eq!(hello.protocol_version, version, "the server speaks the client's version");
        let ok = register(&mut c, name);
        let link = bind(&s, &c, &ok);
        (c, ok, link)
    };
    let (_c1, old, mut v1) = open("old_client", 1);
    let (_c2, new, mut v2) = open("new_client", 2);
    // Both walk east; each must see the other moving, in its own protocol.
    let mut seen = [(None::<f32>, None::<f32>); 2];
    let mut most = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sequence = 0;
    while Instant::now() < deadline
        && seen.iter().any(|(first, last)| last.zip(*first).is_none_or(|(l, f)| l - f < 1.0))
    {
        sequence += 1;
        v1.send(&input(sequence, 1.0, 0.0)).unwrap();
        // The v2 session's input carries its acknowledgement.
        v2.session().input(Vec2 { x: 1.0, y: 0.0 }, 0, 0, Instant::now());
        v2.flush().unwrap();
        for (i, (link, other)) in [(&mut v1, new.entity_id), (&mut v2, old.entity_id)].into_iter().enumerate() {
            if let Ok(DataMessage { body: Some(DataBody::Snapshot(snap)) }) = link.recv(Duration::from_millis(60)) {
                most[i] = most[i].max(snap.entities.len());
                if let Some(p) = snap.entities.iter().find(|e| e.id == other).and_then(|e| e.position) {
                    seen[i].0.get_or_insert(p.x);
                    seen[i].1 = Some(p.x);
                }
            }
        }
    }
    for (who, (first, last)) in ["the v1 client", "the v2 client"].iter().zip(seen) {
        let (first, last) = (first.expect(who), last.unwrap());
        assert!(last - first >= 1.0, "{who} saw the other walk only {} m", last - first);
    }
    assert_eq!(v1.session().snapshot_ack(), 0, "a v1 client never gets a delta snapshot");
    assert!(v2.session().snapshot_ack() > 0, "the v2 client decoded delta snapshots");
    // In the crowd a v1 snapshot is cut at the datagram (about 41 entities); v2's unchanged entities cost nothing.
    assert!(most[0] <= 45 && most[1] > 60, "entities in one snapshot: v1 {}, v2 {}", most[0], most[1]);
    s.stop();
}

/// `Input.snapshot_ack` is the client's word and is checked: acknowledging a tick never sent (the future, the far
/// past, garbage) changes nothing but that client's own baseline. Its snapshots stay decodable (whole ones, against
/// an empty view, until it acknowledges something real) and the server goes on serving everyone.
#[test]
fn bogus_snapshot_acknowledgements_cost_the_liar_its_deltas_and_nothing_else() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "liar");
    let mut link = bind(&s, &c, &ok);
    let mut honest = s.connect().unwrap();
    let honest_ok = register(&mut honest, "honest");
    let mut honest_link = bind(&s, &honest, &honest_ok);
    let (mut decoded, mut sequence) = (0, 0);
    for (i, ack) in [u64::MAX, 1 << 40, 3, 0, u64::MAX - 1, 7].iter().cycle().take(60).enumerate() {
        sequence += 1;
        let lie = Input { sequence, move_dir: Some(Vec2 { x: 0.0, y: 1.0 }), snapshot_ack: *ack, ..Default::default() };
        link.send(&DataMessage::new(DataBody::Input(lie))).unwrap();
        honest_link.session().input(Vec2 { x: 1.0, y: 0.0 }, 0, 0, Instant::now());
        honest_link.flush().unwrap();
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(snap)) }) = link.recv(Duration::from_millis(60)) {
            assert!(snap.entities.iter().any(|e| e.id == ok.entity_id), "snapshot {i}: the liar still sees itself");
            decoded += 1;
        }
        let _ = honest_link.recv(Duration::from_millis(5));
    }
    assert!(decoded >= 30, "the liar's snapshots decode: {decoded} of 60");
    assert!(honest_link.session().snapshot_ack() > 0, "the honest client gets deltas meanwhile");
    // An operator sees it: the liar's snapshots are whole views, the honest client's deltas (the simulation's
    // totals reach the metrics a little later: waited for).
    let counted = |baseline: &str| s.metric("game_server_delta_snapshots_total", &[("baseline", baseline)]);
    let seen = ServerProcess::wait_until(Duration::from_secs(5), || counted("none") >= 30.0);
    assert!(seen, "{} whole-view snapshots counted, the liar decoded {decoded}", counted("none"));
    let seen = ServerProcess::wait_until(Duration::from_secs(5), || counted("acknowledged") >= 10.0);
    assert!(seen, "{} snapshots against an acknowledged view counted", counted("acknowledged"));
    assert_eq!(s.admin_get("/health", Duration::from_secs(5)).map(|r| r.0), Some(200), "the server is up");
    s.stop();
}
