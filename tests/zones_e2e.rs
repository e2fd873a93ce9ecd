//! Two real zone processes (`realm-server`) on the real PostgreSQL primary and Redis: single ownership across
//! zones, portal transfers, fencing of a paused server, and crash recovery. Clients use the same library as
//! `realm-client`. Each test has its own accounts and Redis key prefix.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use realm::client::{ClientError, Connection, UdpLink};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, DataMessage, Input, KickReason, Login, LoginErrorReason,
    LoginOk, Register, TransferLogin, Vec2, ZoneTransfer,
};

const PASSWORD: &str = "password123";

/// A zone process: the shared test server process, on a zone file.
type Zone = ServerProcess;

fn start_zone(zone: &str, zone_file: &str, env: &[(&str, String)]) -> Zone {
    let mut vars: Vec<(&str, &str)> = vec![("REALM_SERVER_ZONE", zone), ("REALM_GAME_ZONE_FILE", zone_file)];
    vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    ServerProcess::start(&vars)
}

/// Backends for both zones: the test database (no shards, so checks can read one table) and a private key prefix.
fn backend_env(prefix: &str, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let (pg, redis) = (common::pg_url(), common::redis_url());
    let mut env = vec![
        ("REALM_DATABASE_URL", pg),
        ("REALM_REDIS_URL", redis),
        ("REALM_REDIS_KEY_PREFIX", prefix.to_owned()),
        ("REALM_SECURITY_TOKEN_SECRET", "zones-e2e-secret".to_owned()),
        ("REALM_SECURITY_MAX_CONCURRENT_HASHES", "2".to_owned()),
    ];
    for (k, v) in extra {
        env.push((leak(k), v.to_string()));
    }
    env
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Zone files for the test: a small starter zone with a portal 5 m east of the spawn, into `target`.
fn zone_files(target: SocketAddr) -> (String, String) {
    let dir = std::env::temp_dir().join(common::unique("zones"));
    std::fs::create_dir_all(&dir).unwrap();
    let a = common::starter_zone_with_portal(&dir, target, (50.0, 60.0));
    let b = dir.join("b.toml");
    std::fs::write(
        &b,
        r#"name = "dark-forest"
size = 400.0
view_radius = 40.0
player_speed = 6.0
spawn_points = [[300.0, 300.0]]
"#,
    )
    .unwrap();
    (a.display().to_string(), b.display().to_string())
}

fn login(c: &mut Connection, name: &str) -> Result<LoginOk, ClientError> {
    c.authenticate(Body::Login(Login { username: name.into(), password: PASSWORD.into() }))
}

fn refusal(r: Result<LoginOk, ClientError>) -> i32 {
    match r {
        Err(ClientError::Login(e)) => e.reason,
        other => panic!("expected a login refusal, got {other:?}"),
    }
}

/// Walks east until the server answers with something other than snapshots on TLS (or `until` passes).
fn walk(link: &mut UdpLink, seconds: f32, dx: f32) -> Option<realm::proto::Vec2> {
    let mut last = None;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed().as_secs_f32() < seconds {
        seq += 1;
        let input = Input { sequence: seq, move_dir: Some(Vec2 { x: dx, y: 0.0 }), ..Default::default() };
        let _ = link.send(&DataMessage::new(DataBody::Input(input)));
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(s)) }) = link.recv(Duration::from_millis(50)) {
            last = s.entities.first().and_then(|e| e.position);
        }
    }
    last
}

fn await_transfer(c: &mut Connection) -> ZoneTransfer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no ZoneTransfer");
        match c.recv() {
            Ok(m) => {
                if let Some(Body::ZoneTransfer(t)) = m.body {
                    return t;
                }
            }
            Err(ClientError::Timeout) => {}
            Err(e) => panic!("connection ended before the transfer: {e}"),
        }
    }
}

fn progress(player_id: u64) -> (String, f32, f32, i64) {
    let mut pg = postgres::Client::connect(&common::pg_url(), postgres::NoTls).unwrap();
    let row = pg
        .query_one(
            "select zone, pos_x, pos_y, owner_epoch from player_progress where player_id = $1",
            &[&(player_id as i64)],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn one_player_one_zone_and_a_portal_transfer_keeps_position_without_a_password() {
    let prefix = common::unique("zones_transfer");
    let env = backend_env(&prefix, &[]);
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (_, b_file) = zone_files(placeholder);
    let b = start_zone("dark-forest", &b_file, &env);
    let (a_file, _) = zone_files(b.game);
    let a = start_zone("starter-vale", &a_file, &env);
    let name = common::unique("traveller");

    let mut in_a = a.connect().unwrap();
    let ok = in_a.authenticate(Body::Register(Register { username: name.clone(), password: PASSWORD.into() })).unwrap();
    // The same account cannot enter zone B while zone A owns it.
    let mut probe = b.connect().unwrap();
    assert_eq!(refusal(login(&mut probe, &name)), LoginErrorReason::LoginErrorAlreadyOnline as i32);

    // The player owns an item (as loot would have written it, under zone A's epoch).
    let mut pg = postgres::Client::connect(&common::pg_url(), postgres::NoTls).unwrap();
    let item: i64 = pg
        .query_one(
            "insert into inventory_items (item_id, player_id, item_kind, quantity, acquired_at) \
             values (nextval('item_id_seq'), $1, 7, 3, now()) returning item_id",
            &[&(ok.player_id as i64)],
        )
        .unwrap()
        .get(0);

    // Walk east into the portal.
    let keys = in_a.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(a.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    walk(&mut link, 2.5, 1.0);
    let transfer = await_transfer(&mut in_a);
    assert_eq!(transfer.zone, "dark-forest");
    assert_eq!(transfer.address, b.game.to_string());
    // The connection to A drops during the transfer: the player left A for B, so A's resume token resumes
    // nothing, neither in A (no second copy of the player) nor in B (another zone's token).
    let _ = socket2::SockRef::from(in_a.socket()).set_linger(Some(Duration::ZERO));
    drop(in_a);
    std::thread::sleep(Duration::from_millis(200));
    for zone in [&a, &b] {
        let mut c = zone.connect().unwrap();
        assert_eq!(refusal(c.resume(&ok.session_token)), LoginErrorReason::LoginErrorInvalidResume as i32);
    }

    // Zone B admits the player with the token alone, at the portal's target position.
    let mut in_b = b.connect().unwrap();
    let request = TransferLogin { transfer_token: transfer.transfer_token.clone(), username: name.clone() };
    let ok_b = in_b.authenticate(Body::TransferLogin(request.clone())).unwrap();
    assert_eq!(ok_b.player_id, ok.player_id);
    let pos = ok_b.position.unwrap();
    assert!((pos.x - 50.0).abs() < 0.01 && (pos.y - 60.0).abs() < 0.01, "arrived at {pos:?}");
    // The token was single-use, and zone A now refuses the player: zone B owns it.
    let mut again = b.connect().unwrap();
    assert_eq!(
        refusal(again.authenticate(Body::TransferLogin(request))),
        LoginErrorReason::LoginErrorInvalidTransfer as i32
    );
    let mut back_in_a = a.connect().unwrap();
    assert_eq!(refusal(login(&mut back_in_a, &name)), LoginErrorReason::LoginErrorAlreadyOnline as i32);
    let (zone, _, _, _) = progress(ok.player_id);
    assert_eq!(zone, "dark-forest");
    // The inventory came along: the same item, still the player's, exactly once.
    let rows = pg
        .query(
            "select item_id, item_kind, quantity from inventory_items where player_id = $1",
            &[&(ok.player_id as i64)],
        )
        .unwrap();
    let items: Vec<(i64, i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(items, vec![(item, 7, 3)]);
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn a_paused_zone_cannot_overwrite_the_new_owners_save() {
    let prefix = common::unique("zones_fence");
    let fast = [("REALM_REDIS_LOCK_TTL_MS", "1000"), ("REALM_GAME_SAVE_INTERVAL_SECS", "1")];
    let env = backend_env(&prefix, &fast);
    let (a_file, b_file) = zone_files("127.0.0.1:1".parse().unwrap());
    let a = start_zone("starter-vale", &a_file, &env);
    let b = start_zone("dark-forest", &b_file, &env);
    let name = common::unique("paused");

    let mut in_a = a.connect().unwrap();
    let ok = in_a.authenticate(Body::Register(Register { username: name.clone(), password: PASSWORD.into() })).unwrap();
    let keys = in_a.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(a.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    walk(&mut link, 0.5, -1.0); // west, away from the portal
    std::thread::sleep(Duration::from_millis(1500)); // at least one periodic save in zone A
    let (_, _, _, epoch_a) = progress(ok.player_id);

    // Zone A freezes past its lock's TTL; zone B takes the player over.
    a.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1600));
    let mut in_b = b.connect().unwrap();
    let ok_b = login(&mut in_b, &name).expect("zone B claims the player after zone A's lock expired");
    let (_, _, _, epoch_b) = progress(ok_b.player_id);
    assert!(epoch_b > epoch_a, "the claim bumped the fencing epoch");
    let keys_b = in_b.udp_keys(ok_b.session_id).unwrap();
    let mut link_b = UdpLink::bind(b.game, ok_b.session_id, &keys_b, Duration::from_secs(5)).unwrap();
    walk(&mut link_b, 1.0, 1.0);
    std::thread::sleep(Duration::from_millis(1500)); // zone B saves
    let saved_by_b = progress(ok.player_id);
    assert_eq!(saved_by_b.0, "dark-forest");

    // Zone A wakes up and tries to save and renew: fenced off, its session dropped with OWNERSHIP_LOST.
    a.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let kicked = loop {
        match in_a.recv() {
            Err(ClientError::Kicked { reason, .. }) => break reason,
            Err(ClientError::Timeout) | Ok(_) => assert!(Instant::now() < deadline, "zone A never dropped the session"),
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    assert_eq!(kicked, KickReason::OwnershipLost);
    std::thread::sleep(Duration::from_millis(1500));
    let after = progress(ok.player_id);
    assert_eq!(after.0, "dark-forest", "zone A's stale save did not land");
    assert_eq!(after.3, epoch_b, "epoch unchanged by the fenced save");
    assert!(a.log.lock().unwrap().iter().any(|l| l.contains("fenced off") || l.contains("lost the ownership lock")));
    drop(in_b);
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn kill_9_during_play_loses_at_most_one_save_interval() {
    let prefix = common::unique("zones_crash");
    let fast = [("REALM_REDIS_LOCK_TTL_MS", "1000"), ("REALM_GAME_SAVE_INTERVAL_SECS", "1")];
    let env = backend_env(&prefix, &fast);
    let (a_file, _) = zone_files("127.0.0.1:1".parse().unwrap());
    let mut a = start_zone("starter-vale", &a_file, &env);
    let name = common::unique("crash");
    let mut c = a.connect().unwrap();
    let ok = c.authenticate(Body::Register(Register { username: name.clone(), password: PASSWORD.into() })).unwrap();
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(a.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    let last_seen = walk(&mut link, 3.0, -1.0).expect("snapshots while walking");
    a.child.kill().unwrap(); // SIGKILL: no drain, no final save
    a.child.wait().unwrap();
    drop(a);

    let a2 = start_zone("starter-vale", &a_file, &env);
    let mut c2 = a2.connect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok2 = loop {
        match login(&mut c2, &name) {
            Ok(ok) => break ok,
            // The dead process's lock expires after its TTL.
            Err(ClientError::Login(e)) if e.reason == LoginErrorReason::LoginErrorAlreadyOnline as i32 => {
                assert!(Instant::now() < deadline, "lock never expired");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let pos = ok2.position.unwrap();
    let lost = ((pos.x - last_seen.x).powi(2) + (pos.y - last_seen.y).powi(2)).sqrt();
    // One save interval (1 s) at 6 m/s, plus one tick of slack.
    assert!(lost <= 6.0 * 1.0 + 0.5, "lost {lost} m of progress: saved {pos:?}, last seen {last_seen:?}");
    assert!(pos.x < 199.0, "progress was saved at all: {pos:?}");
    assert_eq!(a2.stop(), 0);
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn sigterm_saves_every_player_releases_every_lock_and_exits_0_within_the_grace_period() {
    let prefix = common::unique("zones_sigterm");
    let fast = [("REALM_GAME_SAVE_INTERVAL_SECS", "300")]; // no periodic save: only the shutdown can save
    let env = backend_env(&prefix, &fast);
    let (a_file, _) = zone_files("127.0.0.1:1".parse().unwrap());
    let a = start_zone("starter-vale", &a_file, &env);
    let mut players = Vec::new();
    for i in 0..3 {
        let name = common::unique(&format!("leaver{i}"));
        let mut c = a.connect().unwrap();
        let ok = c.authenticate(Body::Register(Register { username: name, password: PASSWORD.into() })).unwrap();
        let keys = c.udp_keys(ok.session_id).unwrap();
        let mut link = UdpLink::bind(a.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
        let seen = walk(&mut link, 1.0, -1.0).expect("moved");
        players.push((ok.player_id, seen, c));
    }
    let mut redis = redis::Client::open(common::redis_url()).unwrap().get_connection().unwrap();
    let locks = |r: &mut redis::Connection| -> Vec<String> {
        redis::cmd("KEYS").arg(format!("{prefix}:lock:*")).query(r).unwrap()
    };
    assert_eq!(locks(&mut redis).len(), 3, "one ownership lock per player while online");

    let started = Instant::now();
    let code = a.stop();
    let took = started.elapsed();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "stopped within the 5 s grace period configured for the test: {took:?}");
    for (player_id, seen, mut c) in players {
        let (zone, x, y, _) = progress(player_id);
        assert_eq!(zone, "starter-vale");
        assert!((x - seen.x).abs() < 1.0 && (y - seen.y).abs() < 1.0, "saved ({x}, {y}), last seen {seen:?}");
        // The client was told why before the connection closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.recv() {
                Err(ClientError::Kicked { reason, .. }) => {
                    assert_eq!(reason, KickReason::ServerShutdown);
                    break;
                }
                Err(ClientError::Timeout) | Ok(_) => assert!(Instant::now() < deadline, "no shutdown kick"),
                Err(e) => panic!("closed without a reason: {e}"),
            }
        }
    }
    assert!(locks(&mut redis).is_empty(), "every lock released: {:?}", locks(&mut redis));
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn a_browser_player_takes_a_portal_to_the_other_zones_browser_endpoint() {
    use base64::Engine;
    use common::ws::{login_ok, next, open, send, token};
    use realm::proto::{ws_frame, ControlMessage, WsFrame};
    let prefix = common::unique("zones_web");
    let env = backend_env(&prefix, &[]);
    let dir = std::env::temp_dir().join(common::unique("zones_web"));
    std::fs::create_dir_all(&dir).unwrap();
    let b_file = dir.join("b.toml");
    std::fs::write(
        &b_file,
        "name = \"dark-forest\"\nsize = 400.0\nview_radius = 40.0\nplayer_speed = 6.0\nspawn_points = [[300.0, 300.0]]\n",
    )
    .unwrap();
    let b = start_zone("dark-forest", &b_file.display().to_string(), &env);
    let b_web = b.web.expect("zone b's browser endpoint");
    // Zone a: a portal 5 m east of the spawn into zone b, naming b's game and browser endpoints.
    let a_file = dir.join("a.toml");
    std::fs::write(
        &a_file,
        format!(
            "name = \"starter-vale\"\nsize = 400.0\nview_radius = 40.0\nplayer_speed = 6.0\n\
             spawn_points = [[200.0, 200.0]]\n[[portals]]\nname = \"east\"\nmin = [205.0, 0.0]\nmax = [215.0, 400.0]\n\
             target_zone = \"dark-forest\"\ntarget_address = \"{}\"\ntarget_web_address = \"http://{b_web}\"\n\
             target_position = [50.0, 60.0]\n",
            b.game
        ),
    )
    .unwrap();
    let a = start_zone("starter-vale", &a_file.display().to_string(), &env);
    let a_web = a.web.expect("zone a's browser endpoint");
    let name = common::unique("webtraveller");
    let mut ws = open(a_web, &format!("?token={}", token(a_web, "/api/register", &name)));
    let ok = login_ok(&mut ws);
    assert_eq!(ok.zone, "starter-vale");
    // Walk east over the WebSocket until zone a hands the player over.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 0;
    let transfer = loop {
        assert!(Instant::now() < deadline, "no ZoneTransfer");
        seq += 1;
        let input = Input { sequence: seq, move_dir: Some(Vec2 { x: 1.0, y: 0.0 }), ..Default::default() };
        send(&mut ws, ws_frame::Body::Data(DataMessage::new(DataBody::Input(input))));
        match next(&mut ws) {
            Ok(WsFrame {
                body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::ZoneTransfer(t)) })),
            }) => break t,
            Ok(_) => {}
            Err(code) => panic!("socket closed before the transfer: {code:?}"),
        }
    };
    assert_eq!(transfer.zone, "dark-forest");
    assert_eq!(transfer.web_address, format!("http://{b_web}"), "the browser is told where zone b's page is");
    // The browser follows it: zone b admits the player with the token, no password.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&transfer.transfer_token);
    let mut there = open(b_web, &format!("?transfer={b64}&username={name}"));
    let arrived = login_ok(&mut there);
    assert_eq!((arrived.zone.as_str(), arrived.player_id), ("dark-forest", ok.player_id));
    let pos = arrived.position.expect("position");
    assert!((pos.x - 50.0).abs() < 1.0 && (pos.y - 60.0).abs() < 1.0, "arrives at the portal's target: {pos:?}");
    // The token is single-use.
    let mut again = open(b_web, &format!("?transfer={b64}&username={name}"));
    match next(&mut again) {
        Ok(WsFrame { body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::LoginError(e)) })) }) => {
            assert_eq!(e.reason, LoginErrorReason::LoginErrorInvalidTransfer as i32)
        }
        other => panic!("{other:?}"),
    }
}
