//! Chat flood against a real `realm-server` process (issue 15, item 8): three players send zone chat as fast as
//! their message credits allow while twenty others listen and one more chats like a person. What every listener
//! receives must stay within the configured chat limits, the flooders must be told their lines were refused, the
//! refusals must show on `/metrics`, and the person's line must still get through.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use realm::client::{ClientError, Connection};
use realm::proto::{
    control_message::Body, Chat, ChatChannel, ChatRefusedReason, ControlMessage, LoginErrorReason, Register,
};

const LISTENERS: usize = 20;
const ATTACKERS: usize = 3;
/// Everyone in the zone: a zone line reaches all of them (its sender included).
const PLAYERS: usize = LISTENERS + ATTACKERS + 1;
const FLOOD: Duration = Duration::from_secs(5);
/// After the flood, how long the listeners keep reading what was already on its way.
const DRAIN: Duration = Duration::from_millis(1500);
/// The flooders send 6 lines every 50 ms tick: just under the default 8 message credits per tick, so the io layer
/// neither drops nor kicks them and every line reaches the chat system (one line at a time every 8 ms comes out
/// slower: socket read timeouts are only as fine as the kernel's timer tick).
const FLOOD_BURST: u64 = 6;
const FLOOD_EVERY: Duration = Duration::from_millis(50);
/// The limits the server runs with (set explicitly so the bounds below do not drift with the defaults).
const ZONE_BURST: u64 = 5;
const ZONE_REFILL_MS: u64 = 1000;
/// Low enough that the flooders' opening bursts (3 x 5 lines x 24 recipients) overrun it, high enough that the
/// steady state after the per-sender limits (about 3.5 lines/s x 24) fits.
const DELIVERIES_PER_SEC: u64 = 200;

fn start() -> ServerProcess {
    ServerProcess::start(&[
        ("REALM_CHAT_ZONE_BURST", &ZONE_BURST.to_string()),
        ("REALM_CHAT_ZONE_REFILL_MS", &ZONE_REFILL_MS.to_string()),
        ("REALM_CHAT_DELIVERIES_PER_SEC", &DELIVERIES_PER_SEC.to_string()),
        // All 24 players register from loopback, more than `security.register_rate_max` lets one address.
        ("REALM_SECURITY_REGISTER_RATE_MAX", "100"),
    ])
}

/// Connects and registers `name`, coming back when the server says it is busy hashing.
fn register(server: &ServerProcess, name: &str) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = server.connect().expect("connect");
        let register = Register { username: name.into(), password: "password123".into() };
        match c.authenticate(Body::Register(register)) {
            Ok(_) => return c,
            Err(ClientError::Login(e))
                if e.reason == LoginErrorReason::LoginErrorServerBusy as i32 && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(u64::from(e.retry_after_ms).max(100)));
            }
            Err(e) => panic!("register {name}: {e}"),
        }
    }
}

/// Registers every name, three at a time (each registration costs the server an argon2 hash).
fn register_all(server: &ServerProcess, names: &[String]) -> Vec<Connection> {
    std::thread::scope(|s| {
        let joins: Vec<_> = names
            .chunks(names.len().div_ceil(3))
            .map(|chunk| s.spawn(move || chunk.iter().map(|name| register(server, name)).collect::<Vec<_>>()))
            .collect();
        joins.into_iter().flat_map(|j| j.join().unwrap()).collect()
    })
}

fn zone_line(text: String) -> ControlMessage {
    ControlMessage::new(Body::Chat(Chat { channel: ChatChannel::Zone as i32, text }))
}

/// What one connection heard.
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    /// Lines from the flooders.
    flood_lines: u64,
    /// Lines from the well-behaved player.
    legit_lines: u64,
    /// Lines from this connection's own player (zone chat comes back to its sender).
    own_lines: u64,
    /// `ChatRefused` answers, by reason.
    refused_sender_rate: u64,
    refused_zone_fanout: u64,
    /// Lines sent.
    sent: u64,
}

impl Heard {
    fn take(&mut self, msg: ControlMessage, me: &str, legit: &str) {
        match msg.body {
            Some(Body::ChatMessage(m)) if m.from_name == me => self.own_lines += 1,
            Some(Body::ChatMessage(m)) if m.from_name == legit => self.legit_lines += 1,
            Some(Body::ChatMessage(_)) => self.flood_lines += 1,
            Some(Body::ChatRefused(r)) if r.reason == ChatRefusedReason::ChatRefusedSenderRate as i32 => {
                self.refused_sender_rate += 1
            }
            Some(Body::ChatRefused(r)) if r.reason == ChatRefusedReason::ChatRefusedZoneFanout as i32 => {
                self.refused_zone_fanout += 1
            }
            _ => {}
        }
    }

    fn answered(&self) -> u64 {
        self.own_lines + self.refused_sender_rate + self.refused_zone_fanout
    }
}

/// Reads until `stop` is set and nothing arrived for a read timeout.
fn listen(mut c: Connection, me: &str, legit: &str, stop: &AtomicBool) -> Heard {
    c.set_timeout(Duration::from_millis(100)).unwrap();
    let mut heard = Heard::default();
    loop {
        match c.recv() {
            Ok(msg) => heard.take(msg, me, legit),
            Err(ClientError::Timeout) if stop.load(Ordering::Relaxed) => return heard,
            Err(ClientError::Timeout) => {}
            Err(e) => panic!("listener {me} lost its connection: {e}"),
        }
    }
}

/// Sends `burst` zone lines every `every` (the first after `delay`) until `until`, reading answers in between,
/// then reads for `DRAIN` more.
fn chat(
    mut c: Connection,
    me: &str,
    legit: &str,
    delay: Duration,
    (burst, every): (u64, Duration),
    until: Instant,
) -> Heard {
    let mut heard = Heard::default();
    let mut next = Instant::now() + delay;
    loop {
        let now = Instant::now();
        if now >= until + DRAIN {
            return heard;
        }
        if now < until && now >= next {
            for _ in 0..burst {
                heard.sent += 1;
                let line = zone_line(format!("{me} line {}", heard.sent));
                c.send(&line).unwrap_or_else(|e| panic!("{me} send: {e}"));
            }
            // No catching up after a stall: a burst would overrun the message credits, not test the chat limits.
            next = now + every;
            continue;
        }
        let wait = if now < until { next.min(until) } else { until + DRAIN };
        c.set_timeout(wait.saturating_duration_since(now).max(Duration::from_millis(1))).unwrap();
        match c.recv() {
            Ok(msg) => heard.take(msg, me, legit),
            Err(ClientError::Timeout) => {}
            Err(e) => panic!("{me} lost its connection: {e}"),
        }
    }
}

#[test]
fn chat_flood_from_three_senders_is_bounded_per_listener_and_a_normal_message_still_arrives() {
    let server = start();
    let listener_names: Vec<String> = (0..LISTENERS).map(|_| common::unique("listen")).collect();
    let attacker_names: Vec<String> = (0..ATTACKERS).map(|_| common::unique("flood")).collect();
    let legit_name = common::unique("legit");
    let all: Vec<String> =
        listener_names.iter().chain(&attacker_names).chain(std::iter::once(&legit_name)).cloned().collect();
    let mut conns = register_all(&server, &all);
    let legit_conn = conns.pop().unwrap();
    let attacker_conns = conns.split_off(LISTENERS);
    let listener_conns = conns;

    let stop = AtomicBool::new(false);
    let go = Barrier::new(ATTACKERS + 2);
    let legit = legit_name.as_str();
    let (listeners, attackers, person, flood_secs) = std::thread::scope(|s| {
        let stop = &stop;
        let go = &go;
        let listeners: Vec<_> = listener_conns
            .into_iter()
            .zip(&listener_names)
            .map(|(c, name)| s.spawn(move || listen(c, name, legit, stop)))
            .collect();
        let attackers: Vec<_> = attacker_conns
            .into_iter()
            .zip(&attacker_names)
            .map(|(c, name)| {
                s.spawn(move || {
                    go.wait();
                    chat(c, name, legit, Duration::ZERO, (FLOOD_BURST, FLOOD_EVERY), Instant::now() + FLOOD)
                })
            })
            .collect();
        // The person speaks once every two seconds, starting a second into the flood.
        let person = s.spawn(move || {
            go.wait();
            let pace = (1, Duration::from_secs(2));
            chat(legit_conn, legit, legit, Duration::from_secs(1), pace, Instant::now() + FLOOD)
        });
        go.wait();
        let started = Instant::now();
        let attackers: Vec<Heard> = attackers.into_iter().map(|j| j.join().unwrap()).collect();
        let person = person.join().unwrap();
        let flood_secs = started.elapsed().saturating_sub(DRAIN).as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let listeners: Vec<Heard> = listeners.into_iter().map(|j| j.join().unwrap()).collect();
        (listeners, attackers, person, flood_secs)
    });

    let per_listener: Vec<u64> = listeners.iter().map(|h| h.flood_lines).collect();
    let worst = *per_listener.iter().max().unwrap();
    let sent: u64 = attackers.iter().map(|a| a.sent).sum();
    eprintln!(
        "flood: {sent} zone lines sent by {ATTACKERS} senders in {flood_secs:.1} s; flood lines per listener: max \
         {worst} ({:.1}/s), all {per_listener:?}; flooders heard {attackers:?}; the person heard {person:?}",
        worst as f64 / flood_secs
    );

    // Per sender: a burst, then one line per refill interval (plus one for the edges of the window).
    let per_sender = ZONE_BURST + (flood_secs * 1000.0 / ZONE_REFILL_MS as f64).ceil() as u64 + 1;
    let sender_bound = ATTACKERS as u64 * per_sender;
    assert!(
        worst <= sender_bound,
        "a listener received {worst} flood lines in {flood_secs:.1} s ({:.0}/s); the per-sender limits allow at most \
         {sender_bound}",
        worst as f64 / flood_secs
    );
    // Zone-wide: every line reaches all the players, so a listener hears at most the budget's share (one second's
    // budget up front, then the rate, plus the one line that may overdraw it).
    let fanout_bound = (DELIVERIES_PER_SEC as f64 * (1.0 + flood_secs) / PLAYERS as f64).ceil() as u64 + 1;
    for h in &listeners {
        assert!(
            h.flood_lines + h.legit_lines <= fanout_bound,
            "a listener heard {} lines; the zone's fan-out budget allows {fanout_bound}",
            h.flood_lines + h.legit_lines
        );
    }
    // The flooders are told, line by line, that they were refused: for the sender rate each of them, and the
    // zone's budget at least once (their opening bursts together overrun it).
    for a in &attackers {
        assert!(a.refused_sender_rate > 0, "a flooder was never told it is sending too fast: {a:?}");
        // (Nearly all: a few lines may arrive bunched with the next tick's and fall to the io layer's message
        // credits, which drop them before the simulation sees them.)
        assert!(a.answered() * 10 >= a.sent * 9, "lines went unanswered (neither delivered back nor refused): {a:?}");
    }
    assert!(attackers.iter().any(|a| a.refused_zone_fanout > 0), "the zone budget never refused: {attackers:?}");
    let by_reason = |reason| server.metric("game_server_chat_refused_total", &[("reason", reason)]);
    let (sender_rate, zone_fanout) = (by_reason("sender_rate"), by_reason("zone_fanout"));
    assert!(sender_rate > 0.0 && zone_fanout > 0.0, "refusals on /metrics: {sender_rate} {zone_fanout}");
    // The person, well within the limits, is heard by everyone during the flood and never told to slow down.
    assert!(person.sent >= 2 && person.refused_sender_rate == 0, "{person:?}");
    for (h, name) in listeners.iter().zip(&listener_names) {
        assert!(h.legit_lines >= 1, "{name} never heard the person during the flood: {h:?}");
    }
}
