//! The session machine driven event by event: a real [`Simulation`] of a small zone, no sockets, no backends, no
//! sleeps. Jobs are answered by hand, the way a worker (or a failing one) would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::account::login::LoginGrant;
use crate::proto::{Input, Login, Logout, Resume, Vec2 as PVec2};

struct Harness {
    sessions: Sessions,
    game: Simulation,
    metrics: Arc<Metrics>,
    now: Instant,
}

fn config() -> SessionConfig {
    SessionConfig {
        zone: "test".into(),
        tick_rate: 20,
        udp_port: 7777,
        max_players: 10,
        transfers_enabled: true,
        resume_grace: Duration::from_secs(30),
        save_interval: Duration::from_secs(1),
        lock_ttl: Duration::from_secs(30),
    }
}

fn grant(player_id: u64) -> LoginGrant {
    LoginGrant {
        player_id,
        username: format!("p{player_id}"),
        epoch: 7,
        progress: None,
        lock_token: format!("lock-{player_id}"),
        session_token: [player_id as u8; 32],
    }
}

fn control(session: SessionId, body: Body) -> SimEvent {
    SimEvent::Net(Inbound::Control { session, msg: ControlMessage::new(body) })
}

impl Harness {
    fn new(config: SessionConfig) -> Self {
        let metrics = Arc::new(Metrics::new("test"));
        let now = Instant::now();
        Self {
            sessions: Sessions::new(config, Arc::clone(&metrics), now),
            game: Simulation::new(crate::sim::tests::zone(""), 20, 1),
            metrics,
            now,
        }
    }

    fn handle(&mut self, event: SimEvent) -> Vec<Effect> {
        self.sessions.handle(&mut self.game, event, self.now);
        self.sessions.effects().collect()
    }

    fn connect(&mut self, session: SessionId) {
        let addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert!(self.handle(SimEvent::Net(Inbound::Connected { session, io: 0, addr, protocol: 2 })).is_empty());
    }

    /// Connects `session`, logs `player` in and returns the `LoginOk`.
    fn log_in(&mut self, session: SessionId, player: u64) -> LoginOk {
        self.connect(session);
        let fx = self.handle(control(session, Body::Login(Login { username: "u".into(), password: "p".into() })));
        assert!(matches!(&fx[..], [Effect::Job(Job::Login { session: s, .. })] if *s == session), "{fx:?}");
        let fx = self.handle(SimEvent::LoggedIn { session, result: Ok(grant(player)) });
        match &fx[..] {
            [Effect::Io { io: 0, item: Outbound::Admit { session: s, msg } }] if *s == session => msg.clone(),
            other => panic!("expected Admit, got {other:?}"),
        }
    }

    fn tick(&mut self, tick: u64) -> Vec<Effect> {
        self.sessions.tick(&mut self.game, tick, self.now);
        self.sessions.effects().collect()
    }

    fn gauge(&self, state: &str) -> i64 {
        self.metrics.sessions_gauge(state).get()
    }
}

fn saves(fx: &[Effect]) -> Vec<&SaveBatch> {
    fx.iter().filter_map(|e| if let Effect::Job(Job::Save(b)) = e { Some(b) } else { None }).collect()
}

fn kicks(fx: &[Effect]) -> Vec<(SessionId, KickReason)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Io { item: Outbound::Close { session, reason, .. }, .. } => Some((*session, *reason)),
            _ => None,
        })
        .collect()
}

fn refusal(fx: &[Effect]) -> Option<LoginErrorReason> {
    fx.iter().find_map(|e| match e {
        Effect::Io { item: Outbound::Refuse { error, .. }, .. } => LoginErrorReason::try_from(error.reason).ok(),
        _ => None,
    })
}

#[test]
fn a_login_spawns_the_player_and_admits_the_session() {
    let mut h = Harness::new(config());
    let ok = h.log_in(1, 42);
    assert_eq!((ok.session_id, ok.player_id, ok.zone.as_str(), ok.udp_port), (1, 42, "test", 7777));
    assert_eq!(ok.session_token, vec![42u8; 32]);
    assert_eq!(h.game.players(), 1);
    assert_eq!(h.sessions.online(), 1);
    h.tick(1);
    assert_eq!(h.gauge("in_game"), 1);
}

#[test]
fn a_refused_login_answers_refuse_and_the_session_may_try_again() {
    let mut h = Harness::new(config());
    h.connect(1);
    h.handle(control(1, Body::Login(Login::default())));
    let refused = Refusal {
        reason: LoginErrorReason::LoginErrorInvalidCredentials,
        message: "no".into(),
        retry_after: Duration::ZERO,
    };
    let fx = h.handle(SimEvent::LoggedIn { session: 1, result: Err(refused) });
    assert_eq!(refusal(&fx), Some(LoginErrorReason::LoginErrorInvalidCredentials));
    let label = "game_server_login_refusals_total{reason=\"invalid_credentials\"} 1";
    assert!(h.metrics.render().contains(label));
    let fx = h.handle(control(1, Body::Login(Login::default())));
    assert!(matches!(&fx[..], [Effect::Job(Job::Login { .. })]));
}

#[test]
fn three_failed_saves_kick_with_save_failed() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    // Walk, so the player is dirty and the periodic save (every 20 ticks) takes it.
    let input = Input { sequence: 1, move_dir: Some(PVec2 { x: 1.0, y: 0.0 }), ..Default::default() };
    h.game.queue_input(1, input).unwrap();
    h.game.step(&mut Vec::new());
    let fx = h.tick(20);
    let batch = saves(&fx)[0].clone();
    assert_eq!((batch.reason, batch.attempt, batch.rows.len()), (SaveReason::Periodic, 1, 1));
    let fx = h.handle(SimEvent::SaveFailed(batch));
    let batch = saves(&fx)[0].clone();
    assert_eq!(batch.attempt, 2, "retried");
    // The second failure is a panicked job: it counts the same.
    let fx = h.handle(SimEvent::JobFailed { job: Job::Save(batch), failure: JobFailure::Panicked });
    let batch = saves(&fx)[0].clone();
    assert_eq!(batch.attempt, 3);
    let fx = h.handle(SimEvent::SaveFailed(batch));
    assert_eq!(kicks(&fx), vec![(1, KickReason::SaveFailed)]);
    assert!(saves(&fx).is_empty(), "no fourth attempt");
    assert_eq!(h.game.players(), 0, "not played on unsaved");
    assert_eq!(h.sessions.online(), 0);
    assert_eq!(h.metrics.save_failures.get(), 3);
    // The connection closes; nothing is saved (there is nothing that could be).
    let fx =
        h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Ended, reason: "kicked" }));
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn a_lost_lock_kicks_without_a_save() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    h.log_in(2, 43);
    let fx = h.tick(200);
    let held =
        fx.iter().find_map(|e| if let Effect::Job(Job::RenewLocks { held, .. }) = e { Some(held) } else { None });
    let mut held = held.expect("locks renewed every ttl/3 = 10 s = 200 ticks").clone();
    held.sort();
    assert_eq!(held, vec![(42, "lock-42".to_string()), (43, "lock-43".to_string())]);
    let fx = h.handle(SimEvent::LocksRenewed { lost: vec![42] });
    assert_eq!(kicks(&fx), vec![(1, KickReason::OwnershipLost)]);
    assert!(saves(&fx).is_empty());
    assert_eq!(h.metrics.locks.losses.get(), 1);
    assert_eq!(h.metrics.ownership_lost.get(), 1);
    let fx =
        h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Ended, reason: "kicked" }));
    assert!(saves(&fx).is_empty(), "a player whose lock is lost is never saved");
    // The other player plays on; its logout saves it.
    let fx = h.handle(control(2, Body::Logout(Logout::default())));
    assert_eq!(saves(&fx).len(), 1);
    assert_eq!(saves(&fx)[0].release, vec![(43, "lock-43".to_string())]);
}

#[test]
fn the_drain_waits_exactly_for_the_final_saves_in_flight() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    h.log_in(2, 43);
    h.log_in(3, 44);
    // Player 44 drops and is detached: it is saved at the drain too.
    h.handle(SimEvent::Net(Inbound::Disconnected { session: 3, departure: Departure::Dropped, reason: "peer_closed" }));
    assert!(!h.sessions.drained(), "not draining yet");
    h.sessions.begin_drain(&mut h.game);
    let fx: Vec<Effect> = h.sessions.effects().collect();
    let mut finals: Vec<u64> =
        saves(&fx).iter().inspect(|b| assert_eq!(b.reason, SaveReason::Final)).map(|b| b.rows[0].player_id).collect();
    finals.sort();
    assert_eq!(finals, vec![42, 43, 44]);
    assert_eq!(h.sessions.leaving(), 3);
    // Logins are refused while draining.
    h.connect(9);
    let fx = h.handle(control(9, Body::Login(Login::default())));
    assert_eq!(refusal(&fx), Some(LoginErrorReason::LoginErrorServerFull));
    // A periodic save's answer is not a final one.
    h.handle(SimEvent::Saved { reason: SaveReason::Periodic, outcomes: vec![(42, SaveOutcome::Saved)] });
    assert_eq!(h.sessions.leaving(), 3);
    h.handle(SimEvent::Saved { reason: SaveReason::Final, outcomes: vec![(42, SaveOutcome::Saved)] });
    h.handle(SimEvent::Saved { reason: SaveReason::Final, outcomes: vec![(43, SaveOutcome::Saved)] });
    assert!(!h.sessions.drained());
    // The last one's job panics three times: the drain ends when it is given up, not at the grace period.
    let batch = SaveBatch {
        reason: SaveReason::Final,
        rows: vec![SaveRow {
            player_id: 44,
            epoch: 7,
            progress: Progress { zone: "test".into(), pos: (1.0, 1.0), level: 1, xp: 0, hp: 10 },
        }],
        attempt: 1,
        release: vec![(44, "lock-44".into())],
    };
    let fx = h.handle(SimEvent::JobFailed { job: Job::Save(batch), failure: JobFailure::Panicked });
    let retry = saves(&fx)[0].clone();
    assert!(!h.sessions.drained());
    let fx = h.handle(SimEvent::JobFailed { job: Job::Save(retry), failure: JobFailure::NotQueued });
    let retry = saves(&fx)[0].clone();
    h.handle(SimEvent::JobFailed { job: Job::Save(retry), failure: JobFailure::Panicked });
    assert!(h.sessions.drained());
    assert_eq!(h.sessions.leaving(), 0);
    assert_eq!(h.metrics.saves.get(), 3, "two final saves and the periodic one");
}

#[test]
fn a_transfer_racing_a_logout_is_accounted_for_once() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    h.sessions.route(&mut h.game, Output::PortalEntered { session: 1, portal: 0 });
    let fx: Vec<Effect> = h.sessions.effects().collect();
    let hand_over = match &fx[..] {
        [Effect::Job(job @ Job::HandOver { row, lock_token, .. })] => {
            assert_eq!((row.player_id, row.progress.zone.as_str(), lock_token.as_str()), (42, "other", "lock-42"));
            assert_eq!(row.progress.pos, (5.0, 5.0));
            job.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(h.game.players(), 0, "the player left this world at the portal");
    // The client logs out before the hand-over answers: it is kicked LOGGED_OUT and nothing else is saved.
    let fx = h.handle(control(1, Body::Logout(Logout::default())));
    assert_eq!(kicks(&fx), vec![(1, KickReason::LoggedOut)]);
    assert!(saves(&fx).is_empty(), "saved once, by the hand-over, for the target zone");
    h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Ended, reason: "kicked" }));
    h.sessions.begin_drain(&mut h.game);
    assert!(!h.sessions.drained(), "the hand-over is still in flight");
    let fx = h.handle(SimEvent::HandedOver { session: 1, player_id: 42, portal: 0, result: Ok([1; 32]) });
    assert!(fx.is_empty(), "the session is gone: no ZoneTransfer to send: {fx:?}");
    assert!(h.sessions.drained());
    // The same race with the job panicking instead: still accounted for once.
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    h.sessions.route(&mut h.game, Output::PortalEntered { session: 1, portal: 0 });
    let _ = h.sessions.effects().count();
    let fx = h.handle(SimEvent::JobFailed { job: hand_over, failure: JobFailure::Panicked });
    assert_eq!(kicks(&fx), vec![(1, KickReason::SaveFailed)]);
    assert_eq!(h.sessions.leaving(), 0);
}

#[test]
fn a_transfer_that_succeeds_tells_the_client_where_to_go() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    h.sessions.route(&mut h.game, Output::PortalEntered { session: 1, portal: 0 });
    let _ = h.sessions.effects().count();
    let fx = h.handle(SimEvent::HandedOver { session: 1, player_id: 42, portal: 0, result: Ok([9; 32]) });
    match &fx[..] {
        [Effect::Io { item: Outbound::Control { msg, .. }, .. }] => match &msg.body {
            Some(Body::ZoneTransfer(t)) => {
                assert_eq!((t.zone.as_str(), t.address.as_str()), ("other", "127.0.0.1:1"));
                assert_eq!(t.transfer_token, vec![9u8; 32]);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let fx = h.handle(SimEvent::HandedOver {
        session: 1,
        player_id: 42,
        portal: 0,
        result: Err(HandOverError::OwnershipLost),
    });
    assert_eq!(kicks(&fx), vec![(1, KickReason::OwnershipLost)]);
}

#[test]
fn jobs_that_fail_come_back_typed() {
    let mut h = Harness::new(config());
    h.connect(1);
    let fx = h.handle(control(1, Body::Login(Login::default())));
    let Effect::Job(login) = fx.into_iter().next().unwrap() else { panic!() };
    let fx = h.handle(SimEvent::JobFailed { job: login, failure: JobFailure::Panicked });
    assert_eq!(refusal(&fx), Some(LoginErrorReason::LoginErrorServerBusy), "a panicked login is answered");
    // A renewal that could not be queued is tried again at the next tick, not a renewal period later.
    h.log_in(2, 43);
    let renew = Job::RenewLocks { held: vec![(43, "lock-43".into())], ttl: Duration::from_secs(30) };
    h.handle(SimEvent::JobFailed { job: renew, failure: JobFailure::NotQueued });
    let fx = h.tick(7);
    assert!(fx.iter().any(|e| matches!(e, Effect::Job(Job::RenewLocks { .. }))), "{fx:?}");
    let fx = h.tick(8);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Job(Job::RenewLocks { .. }))), "once");
    // Loot that could not be written is counted, never granted.
    let loot = Job::GrantLoot { session: 2, player_id: 43, epoch: 7, item_kind: 1, quantity: 1 };
    let fx = h.handle(SimEvent::JobFailed { job: loot, failure: JobFailure::Panicked });
    assert!(fx.is_empty());
    assert_eq!(h.metrics.loot_failures.get(), 1);
}

#[test]
fn a_login_that_finishes_after_its_session_left_gives_the_lock_back() {
    let mut h = Harness::new(config());
    h.connect(1);
    h.handle(control(1, Body::Login(Login::default())));
    h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Dropped, reason: "peer_closed" }));
    let fx = h.handle(SimEvent::LoggedIn { session: 1, result: Ok(grant(42)) });
    assert!(matches!(&fx[..], [Effect::Job(Job::Release((42, t)))] if t == "lock-42"), "{fx:?}");
    assert_eq!(h.game.players(), 0);
}

#[test]
fn a_dropped_player_waits_to_be_resumed_with_a_single_use_token() {
    let mut h = Harness::new(config());
    let ok = h.log_in(1, 42);
    h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Dropped, reason: "peer_closed" }));
    assert_eq!(h.game.players(), 1, "still in the world");
    h.tick(1);
    assert_eq!((h.gauge("in_game"), h.gauge("detached")), (0, 1));
    h.connect(2);
    let fx = h.handle(control(2, Body::Resume(Resume { session_token: ok.session_token.clone() })));
    let new_token = match &fx[..] {
        [Effect::Io { item: Outbound::Admit { session: 2, msg }, .. }] => {
            assert_eq!(msg.player_id, 42);
            msg.session_token.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(new_token, ok.session_token, "a new token each time");
    assert_eq!(h.metrics.resumes.resumed.get(), 1);
    // The old token is used up.
    h.connect(3);
    let fx = h.handle(control(3, Body::Resume(Resume { session_token: ok.session_token })));
    assert_eq!(refusal(&fx), Some(LoginErrorReason::LoginErrorInvalidResume));
    // Dropped again, and not resumed in time: it leaves with a final save.
    h.handle(SimEvent::Net(Inbound::Disconnected { session: 2, departure: Departure::Dropped, reason: "io_error" }));
    h.now += Duration::from_secs(31);
    let fx = h.tick(2);
    let finals = saves(&fx);
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].reason, finals[0].rows[0].player_id), (SaveReason::Final, 42));
    assert_eq!(h.metrics.resumes.expired.get(), 1);
    assert_eq!(h.game.players(), 0);
}

#[test]
fn an_ended_session_leaves_at_once() {
    let mut h = Harness::new(config());
    h.log_in(1, 42);
    let fx =
        h.handle(SimEvent::Net(Inbound::Disconnected { session: 1, departure: Departure::Ended, reason: "kicked" }));
    assert_eq!(saves(&fx).len(), 1);
    assert_eq!(h.game.players(), 0);
}
