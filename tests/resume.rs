//! Session resumption against a real `realm-server` process (issue 16): a player whose control connection drops
//! comes back on a new connection with the token of its last `LoginOk`, without a password, a hash, a save or a
//! re-claim, and finds its character where it left it.

mod common;

use std::time::{Duration, Instant};

use common::process::ServerProcess;
use realm::client::{ClientError, Connection, UdpLink};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, Input, Login, LoginErrorReason,
    LoginOk, Register, Snapshot, Vec2,
};

const PASSWORD: &str = "password123";

fn register(c: &mut Connection, name: &str) -> LoginOk {
    c.authenticate(Body::Register(Register { username: name.into(), password: PASSWORD.into() })).unwrap()
}

fn login(c: &mut Connection, name: &str) -> Result<LoginOk, ClientError> {
    c.authenticate(Body::Login(Login { username: name.into(), password: PASSWORD.into() }))
}

fn refusal(r: Result<LoginOk, ClientError>) -> i32 {
    match r {
        Err(ClientError::Login(e)) => e.reason,
        other => panic!("expected a LoginError, got {other:?}"),
    }
}

/// Drops the connection the way a phone losing its network does: no Logout, no close_notify, a reset.
fn drop_connection(c: Connection) {
    let _ = socket2::SockRef::from(c.socket()).set_linger(Some(Duration::ZERO));
    drop(c);
}

fn bind(s: &ServerProcess, c: &Connection, ok: &LoginOk) -> UdpLink {
    let keys = c.udp_keys(ok.session_id).unwrap();
    UdpLink::bind(s.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap()
}

/// Walks east for `ticks` inputs (sequences from `first`) and returns where the player is seen last.
fn walk(link: &mut UdpLink, entity: u64, first: u32, ticks: u32) -> Vec2 {
    for seq in first..first + ticks {
        let input = Input { sequence: seq, move_dir: Some(Vec2 { x: 1.0, y: 0.0 }), ..Default::default() };
        link.send(&DataMessage::new(DataBody::Input(input))).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(snap)) }) = link.recv(Duration::from_millis(200)) {
            let snap: Snapshot = snap;
            if let Some(p) = snap.entities.iter().find(|e| e.id == entity).and_then(|e| e.position) {
                last = Some(p);
                if snap.last_processed_input >= first + ticks - 1 {
                    break;
                }
            }
        }
    }
    last.expect("snapshots of the walking player")
}

fn close(a: Vec2, b: Vec2) -> bool {
    (a.x - b.x).abs() < 0.01 && (a.y - b.y).abs() < 0.01
}

#[test]
fn a_dropped_connection_resumes_with_its_token_keeping_entity_position_and_ownership_without_a_save() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "mobile");
    let mut link = bind(&s, &c, &ok);
    let walked = walk(&mut link, ok.entity_id, 1, 10);
    let saves = s.metric("game_server_saves_total", &[]);
    drop_connection(c);
    drop(link);
    std::thread::sleep(Duration::from_millis(300));
    // While detached the character is still owned: a password login elsewhere is refused as already online.
    let mut other = s.connect().unwrap();
    assert_eq!(refusal(login(&mut other, "mobile")), LoginErrorReason::LoginErrorAlreadyOnline as i32);

    let mut back = s.connect().unwrap();
    let resumed = back.resume(&ok.session_token).expect("resume within the grace period");
    assert_eq!((resumed.player_id, resumed.entity_id), (ok.player_id, ok.entity_id), "same player, same entity");
    assert_ne!(resumed.session_id, ok.session_id, "a new session");
    assert_ne!(resumed.session_token, ok.session_token, "a new token for the next resume");
    let here = resumed.position.unwrap();
    assert!(close(here, walked), "the character stood where it was: {here:?}, walked to {walked:?}");
    assert_eq!(s.metric("game_server_saves_total", &[]), saves, "a resume saves nothing");
    // Fresh UDP keys from the new TLS session: the game goes on, inputs starting over at 1.
    let mut link = bind(&s, &back, &resumed);
    let further = walk(&mut link, resumed.entity_id, 1, 10);
    assert!(further.x > here.x + 2.0, "it walks on after the resume: {here:?} -> {further:?}");
}

#[test]
fn a_resume_token_works_once_and_a_logout_is_not_resumable() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "once");
    drop_connection(c);
    std::thread::sleep(Duration::from_millis(300));
    let mut first = s.connect().unwrap();
    let resumed = first.resume(&ok.session_token).unwrap();
    drop_connection(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut replay = s.connect().unwrap();
    assert_eq!(refusal(replay.resume(&ok.session_token)), LoginErrorReason::LoginErrorInvalidResume as i32);
    let mut second = s.connect().unwrap();
    let again = second.resume(&resumed.session_token).expect("the newest token works");
    // A Logout ends the session for good: its token resumes nothing.
    second.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut after = s.connect().unwrap();
    assert_eq!(refusal(after.resume(&again.session_token)), LoginErrorReason::LoginErrorInvalidResume as i32);
    assert!(s.metric("game_server_login_refusals_total", &[("reason", "invalid_resume")]) >= 2.0);
}

#[test]
fn after_the_grace_period_the_player_is_saved_and_released_exactly_once() {
    let s = ServerProcess::start(&[("REALM_GAME_RESUME_GRACE_SECS", "2")]);
    let mut c = s.connect().unwrap();
    let ok = register(&mut c, "gone");
    let mut link = bind(&s, &c, &ok);
    let walked = walk(&mut link, ok.entity_id, 1, 10);
    let saves = s.metric("game_server_saves_total", &[]);
    drop_connection(c);
    assert!(
        ServerProcess::wait_until(Duration::from_secs(6), || s.metric("game_server_saves_total", &[]) > saves),
        "the grace period ran out without a final save"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.metric("game_server_saves_total", &[]), saves + 1.0, "saved exactly once");
    let mut late = s.connect().unwrap();
    assert_eq!(refusal(late.resume(&ok.session_token)), LoginErrorReason::LoginErrorInvalidResume as i32);
    // Released: the password logs in, and the character is where it was saved.
    let mut again = s.connect().unwrap();
    let back = login(&mut again, "gone").expect("the lock was released");
    assert!(close(back.position.unwrap(), walked), "{:?} vs {walked:?}", back.position);
}

#[test]
fn resumes_racing_periodic_saves_lose_nothing() {
    let s = ServerProcess::start(&[("REALM_GAME_SAVE_INTERVAL_SECS", "1")]);
    let mut c = s.connect().unwrap();
    let mut ok = register(&mut c, "racer");
    let mut last = Vec2::default();
    for _ in 0..4 {
        let mut link = bind(&s, &c, &ok);
        last = walk(&mut link, ok.entity_id, 1, 12);
        drop_connection(c);
        drop(link);
        std::thread::sleep(Duration::from_millis(150));
        c = s.connect().unwrap();
        ok = c.resume(&ok.session_token).expect("resume");
        assert!(close(ok.position.unwrap(), last), "resumed at {:?}, left at {last:?}", ok.position);
    }
    c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut again = s.connect().unwrap();
    let back = login(&mut again, "racer").unwrap();
    assert!(close(back.position.unwrap(), last), "saved at {:?}, left at {last:?}", back.position);
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Resume latency against a full login's, printed for BENCHMARKS.md (`--nocapture`). Both from a new connection's
/// Hello to its LoginOk; both answered on a tick.
#[test]
fn resume_costs_no_hash_and_answers_faster_than_a_login() {
    let s = ServerProcess::start(&[]);
    let mut c = s.connect().unwrap();
    register(&mut c, "timer");
    c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (mut logins, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let mut c = s.connect().unwrap();
        let started = Instant::now();
        let mut ok = login(&mut c, "timer").expect("login");
        logins.push(started.elapsed());
        for _ in 0..2 {
            drop_connection(c);
            std::thread::sleep(Duration::from_millis(60));
            c = s.connect().unwrap();
            let started = Instant::now();
            ok = c.resume(&ok.session_token).expect("resume");
            resumes.push(started.elapsed());
        }
        c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
        let _ = c.set_timeout(Duration::from_secs(2));
        while c.recv().is_ok() {}
    }
    let (l50, l99) = (percentile(&mut logins, 0.5), percentile(&mut logins, 0.99));
    let (r50, r99) = (percentile(&mut resumes, 0.5), percentile(&mut resumes, 0.99));
    eprintln!(
        "| login (argon2id, OWASP) | {:.1} | {:.1} |\n| resume | {:.1} | {:.1} |\nresume p99 / login p99 = {:.2}",
        l50.as_secs_f64() * 1e3,
        l99.as_secs_f64() * 1e3,
        r50.as_secs_f64() * 1e3,
        r99.as_secs_f64() * 1e3,
        r99.as_secs_f64() / l99.as_secs_f64()
    );
    assert!(r99 < l99, "a resume (p99 {r99:?}) must be cheaper than a login (p99 {l99:?})");
}

#[test]
fn bots_that_drop_their_connections_at_random_resume_every_time() {
    let s = ServerProcess::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realm-bots"))
        .args(["--server", &s.game.to_string(), "--ca", &s.cert.to_string_lossy()])
        .args(["--bots", "10", "--ramp", "2", "--settle", "2", "--duration", "6", "--drop-rate", "0.5"])
        .args(["--json", "--quiet"])
        .output()
        .expect("run realm-bots");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "{report:#}");
    let (drops, resumes) = (report["drops"].as_u64().unwrap(), report["resumes"].as_u64().unwrap());
    assert!(drops >= 10, "10 bots at 0.5 drops a second for 6 s dropped only {drops} times: {report:#}");
    assert_eq!(resumes, drops, "every drop resumed: {report:#}");
    assert_eq!(report["resume_failures"], 0, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["saw_self_move"], 10, "{report:#}");
}
