//! `realm-client --script`: a tiny line language that plays the game without a terminal UI, for scripts, smoke
//! tests and CI. One command per line; `#` starts a comment.
//!
//! ```text
//! register NAME PASS      create an account and enter the game
//! login NAME PASS         log in and enter the game
//! move DX DY SECONDS      walk in direction (DX, DY) for SECONDS, then stop and wait for the server to agree
//! attack-nearest          walk into firebolt range of the nearest living NPC and cast firebolt at it
//! say TEXT                chat to nearby players
//! zone TEXT               chat to the whole zone
//! wait SECONDS            keep playing (and printing events) for SECONDS
//! expect-moved            fail unless the server has the player away from where it logged in
//! expect-chat TEXT        fail unless a chat line containing TEXT arrives within 5 s (or already did)
//! logout                  log out and wait for the server to confirm
//! ```
//!
//! Every event prints one line on the output (`logged-in player=.. entity=..`, `moved from (x,y) to (x,y)`,
//! `chat from=NAME channel=say text=..`, `combat ..`, `stats ..`, `loot ..`, `notice ..`, `logged-out`, `error ..`). The whole
//! script is parsed before anything connects, so a typo costs no login.
//!
//! Invariant: a failing command prints an `error ...` line before [`run`] returns the failure, and every event the
//! network threads report is printed in arrival order — scripts and tests read the output as a transcript.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::proto::{ChatChannel, CombatEventKind};

use super::net::{Credentials, Endpoint, NetEvent, NetSession, SessionEnd};
use super::prediction::Pos;
use super::state::GameState;

/// How long entering the game may take (connect, login, UDP bind, first snapshot).
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to process the last input of a `move`.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `expect-chat` waits.
const CHAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `logout` waits for the server's goodbye.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// `attack-nearest` walks until the target is this close (firebolt reaches 25 m; the margin covers NPC wandering).
const ATTACK_DISTANCE: f32 = 20.0;
/// How long `attack-nearest` may walk.
const APPROACH_TIMEOUT: Duration = Duration::from_secs(15);
/// `expect-moved` needs at least this displacement.
const MIN_MOVED: f32 = 0.5;

/// One command of the script language.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// `register NAME PASS`.
    Register {
        /// Account name.
        username: String,
        /// Password.
        password: String,
    },
    /// `login NAME PASS`.
    Login {
        /// Account name.
        username: String,
        /// Password.
        password: String,
    },
    /// `move DX DY SECONDS`.
    Move {
        /// Direction (normalised when longer than 1).
        direction: Pos,
        /// How long to walk.
        duration: Duration,
    },
    /// `attack-nearest`.
    AttackNearest,
    /// `say TEXT` or `zone TEXT`.
    Chat {
        /// Say or zone.
        channel: ChatChannel,
        /// The line.
        text: String,
    },
    /// `wait SECONDS`.
    Wait(Duration),
    /// `expect-moved`.
    ExpectMoved,
    /// `expect-chat TEXT`.
    ExpectChat(String),
    /// `drop-connection`: reset the control connection as a network failure would (the client then resumes).
    DropConnection,
    /// `logout`.
    Logout,
}

/// A command and the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based line number.
    pub line: usize,
    /// The command.
    pub command: Command,
}

/// Why a script did not run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// The script is not valid; nothing was run.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A command failed.
    #[error("line {line}: {message}")]
    Failed {
        /// 1-based line number.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// Writing the transcript failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl ScriptError {
    /// The process exit code: 2 for an invalid script, 1 for a failure while playing.
    pub fn exit_code(&self) -> u8 {
        match self {
            ScriptError::Parse { .. } => 2,
            ScriptError::Failed { .. } | ScriptError::Output(_) => 1,
        }
    }
}

fn seconds(word: &str, line: usize) -> Result<Duration, ScriptError> {
    match word.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(ScriptError::Parse { line, message: format!("'{word}' is not a number of seconds (0..=3600)") }),
    }
}

fn number(word: &str, line: usize) -> Result<f32, ScriptError> {
    match word.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ScriptError::Parse { line, message: format!("'{word}' is not a number") }),
    }
}

/// Parses a whole script; the first invalid line is the error.
pub fn parse(source: &str) -> Result<Vec<Step>, ScriptError> {
    let mut steps = Vec::new();
    for (index, raw) in source.lines().enumerate() {
        let line = index + 1;
        let text = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if text.is_empty() {
            continue;
        }
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let rest = rest.trim();
        let args: Vec<&str> = rest.split_whitespace().collect();
        let arity = |n: usize, usage: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(ScriptError::Parse { line, message: format!("usage: {usage}") })
            }
        };
        let text_arg = |usage: &str| {
            if rest.is_empty() {
                Err(ScriptError::Parse { line, message: format!("usage: {usage}") })
            } else {
                Ok(rest.to_owned())
            }
        };
        let command = match word {
            "register" | "login" => {
                arity(2, &format!("{word} NAME PASS"))?;
                let (username, password) = (args[0].to_owned(), args[1].to_owned());
                if word == "register" {
                    Command::Register { username, password }
                } else {
                    Command::Login { username, password }
                }
            }
            "move" => {
                arity(3, "move DX DY SECONDS")?;
                let direction = Pos::new(number(args[0], line)?, number(args[1], line)?);
                Command::Move { direction, duration: seconds(args[2], line)? }
            }
            "attack-nearest" => {
                arity(0, "attack-nearest")?;
                Command::AttackNearest
            }
            "say" => Command::Chat { channel: ChatChannel::Say, text: text_arg("say TEXT")? },
            "zone" => Command::Chat { channel: ChatChannel::Zone, text: text_arg("zone TEXT")? },
            "wait" => {
                arity(1, "wait SECONDS")?;
                Command::Wait(seconds(args[0], line)?)
            }
            "expect-moved" => {
                arity(0, "expect-moved")?;
                Command::ExpectMoved
            }
            "expect-chat" => Command::ExpectChat(text_arg("expect-chat TEXT")?),
            "drop-connection" => {
                arity(0, "drop-connection")?;
                Command::DropConnection
            }
            "logout" => {
                arity(0, "logout")?;
                Command::Logout
            }
            other => return Err(ScriptError::Parse { line, message: format!("unknown command '{other}'") }),
        };
        steps.push(Step { line, command });
    }
    Ok(steps)
}

/// Parses and runs `source` against `endpoint`, writing the transcript to `out`.
pub fn run(source: &str, endpoint: Endpoint, out: &mut dyn Write) -> Result<(), ScriptError> {
    let steps = match parse(source) {
        Ok(steps) => steps,
        Err(e) => {
            writeln!(out, "error {e}")?;
            return Err(e);
        }
    };
    let mut runner = Runner::new(endpoint, out);
    let result = runner.run(&steps);
    if let Err(e) = &result {
        writeln!(runner.out, "error {e}")?;
    }
    runner.out.flush()?;
    result
}

fn fmt_pos(p: Pos) -> String {
    format!("({:.1},{:.1})", p.x, p.y)
}

/// The transcript line for an event, if it gets one (snapshots, inputs and pings do not).
pub fn event_line(state: &GameState, event: &NetEvent) -> Option<String> {
    Some(match event {
        NetEvent::Greeted { zone, server_version } => format!("connected zone={zone} server={server_version}"),
        NetEvent::Joined(j) => format!(
            "logged-in player={} entity={} zone={} pos={}",
            j.player_id,
            j.entity_id,
            j.zone,
            fmt_pos(j.position)
        ),
        NetEvent::Chat(m) => {
            let channel = if m.channel == ChatChannel::Zone as i32 { "zone" } else { "say" };
            format!("chat from={} channel={channel} text={}", m.from_name, m.text)
        }
        NetEvent::Combat(c) => format!("combat {}", state.describe_combat(c)),
        NetEvent::Stats(s) => {
            format!("stats hp={}/{} level={} xp={}/{}", s.hp, s.max_hp, s.level, s.xp, s.xp_to_next)
        }
        NetEvent::Loot(l) => format!("loot item={} kind={} quantity={}", l.item_id, l.item_kind, l.quantity),
        NetEvent::Notice(text) => format!("notice {text}"),
        NetEvent::Transferring { zone, address } => format!("transfer zone={zone} address={address}"),
        NetEvent::Ended(SessionEnd::LoggedOut) => "logged-out".to_owned(),
        NetEvent::Ended(end) => format!("error {end}"),
        NetEvent::InputSent(_) | NetEvent::Snapshot(_) | NetEvent::Rtt { .. } => return None,
    })
}

struct Runner<'a> {
    endpoint: Endpoint,
    out: &'a mut dyn Write,
    session: Option<NetSession>,
    state: GameState,
    /// Where the server first placed the player in this session.
    login_position: Option<Pos>,
    /// Chat texts received, for `expect-chat`.
    chats: Vec<String>,
    /// The player's hits and misses reported so far, for `attack-nearest`.
    attacks_resolved: u64,
    line: usize,
}

/// What a pump stopped on.
enum Pumped {
    /// The condition held.
    Done,
    /// The deadline passed first.
    TimedOut,
}

impl<'a> Runner<'a> {
    fn new(endpoint: Endpoint, out: &'a mut dyn Write) -> Self {
        Self {
            endpoint,
            out,
            session: None,
            state: GameState::new(),
            login_position: None,
            chats: Vec::new(),
            attacks_resolved: 0,
            line: 0,
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ScriptError> {
        Err(ScriptError::Failed { line: self.line, message: message.into() })
    }

    fn run(&mut self, steps: &[Step]) -> Result<(), ScriptError> {
        for step in steps {
            self.line = step.line;
            self.execute(&step.command)?;
        }
        if self.session.is_some() {
            // Leave cleanly even when the script forgot to.
            self.logout()?;
        }
        Ok(())
    }

    fn session(&self) -> Result<&NetSession, ScriptError> {
        match &self.session {
            Some(s) => Ok(s),
            None => self.fail("not logged in (use register or login first)"),
        }
    }

    fn execute(&mut self, command: &Command) -> Result<(), ScriptError> {
        match command {
            Command::Register { username, password } => {
                self.enter(Credentials::Register { username: username.clone(), password: password.clone() })
            }
            Command::Login { username, password } => {
                self.enter(Credentials::Login { username: username.clone(), password: password.clone() })
            }
            Command::Move { direction, duration } => self.walk(*direction, *duration),
            Command::AttackNearest => self.attack_nearest(),
            Command::Chat { channel, text } => {
                self.session()?.chat(*channel, text);
                Ok(())
            }
            Command::Wait(d) => {
                self.session()?;
                self.pump(Instant::now() + *d, |_| false).map(|_| ())
            }
            Command::ExpectMoved => self.expect_moved(),
            Command::ExpectChat(text) => self.expect_chat(text),
            Command::Logout => {
                self.session()?;
                self.logout()
            }
            Command::DropConnection => {
                self.session()?.drop_connection();
                Ok(())
            }
        }
    }

    /// Receives events until `done` holds or `deadline` passes, applying and printing each. The session ending
    /// is a failure (its `error` line is already printed); `logout` does not use this.
    fn pump(&mut self, deadline: Instant, mut done: impl FnMut(&Runner<'_>) -> bool) -> Result<Pumped, ScriptError> {
        loop {
            if done(self) {
                return Ok(Pumped::Done);
            }
            let Some(session) = &self.session else { return self.fail("not logged in") };
            let event = match session.events().recv_deadline(deadline) {
                Ok(e) => e,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Ok(Pumped::TimedOut),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.session = None;
                    return self.fail("the network thread stopped");
                }
            };
            self.record(&event)?;
            if let NetEvent::Ended(end) = event {
                self.session = None;
                return self.fail(format!("session ended: {end}"));
            }
        }
    }

    fn record(&mut self, event: &NetEvent) -> Result<(), ScriptError> {
        self.state.apply(event);
        match event {
            NetEvent::Chat(m) => self.chats.push(m.text.clone()),
            NetEvent::Combat(c) => {
                let me = self.state.joined.as_ref().map(|j| j.entity_id);
                let attack = matches!(
                    CombatEventKind::try_from(c.kind),
                    Ok(CombatEventKind::CombatEventHit | CombatEventKind::CombatEventMiss)
                );
                if attack && me == Some(c.source_entity) {
                    self.attacks_resolved += 1;
                }
            }
            _ => {}
        }
        if let Some(line) = event_line(&self.state, event) {
            writeln!(self.out, "{line}")?;
            self.out.flush()?;
        }
        Ok(())
    }

    fn enter(&mut self, credentials: Credentials) -> Result<(), ScriptError> {
        if self.session.is_some() {
            return self.fail("already logged in (logout first)");
        }
        let client_name = concat!("realm-client/", env!("CARGO_PKG_VERSION"), " (script)");
        let session = match NetSession::start(self.endpoint.clone(), credentials, client_name) {
            Ok(s) => s,
            Err(e) => return self.fail(format!("cannot start the network thread: {e}")),
        };
        self.session = Some(session);
        self.state = GameState::new();
        self.chats.clear();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        // In the game once joined and the first snapshot shows the player where the server has it.
        match self.pump(deadline, |r| r.state.joined.is_some() && r.state.own_entity().is_some())? {
            Pumped::Done => {
                self.login_position = Some(self.state.predictor.server_position());
                Ok(())
            }
            Pumped::TimedOut => self.fail("timed out entering the game"),
        }
    }

    fn walk(&mut self, direction: Pos, duration: Duration) -> Result<(), ScriptError> {
        let from = self.state.predictor.server_position();
        self.session()?.set_movement(Some(direction));
        self.pump(Instant::now() + duration, |_| false)?;
        self.settle()?;
        let to = self.state.predictor.server_position();
        writeln!(self.out, "moved from {} to {}", fmt_pos(from), fmt_pos(to))?;
        Ok(())
    }

    /// Stops moving and waits until the server has processed every input sent.
    fn settle(&mut self) -> Result<(), ScriptError> {
        self.session()?.set_movement(None);
        let tick = Duration::from_secs(1) / self.state.joined.as_ref().map_or(20, |j| j.tick_rate_hz.max(1));
        // Two ticks for the UDP thread to send its final (stopping) input.
        self.pump(Instant::now() + 2 * tick, |_| false)?;
        match self.pump(Instant::now() + SETTLE_TIMEOUT, |r| r.state.predictor.pending() == 0)? {
            Pumped::Done => Ok(()),
            Pumped::TimedOut => self.fail("the server did not process our inputs"),
        }
    }

    fn attack_nearest(&mut self) -> Result<(), ScriptError> {
        self.session()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        self.pump(deadline, |r| !r.state.npcs_by_distance().is_empty())?;
        let Some(&(target, _)) = self.state.npcs_by_distance().first() else {
            return self.fail("attack-nearest: no living NPC in sight");
        };
        let approach_deadline = Instant::now() + APPROACH_TIMEOUT;
        loop {
            let Some(target_entity) = self.state.entity(target).copied() else {
                self.settle()?;
                return self.fail(format!("attack-nearest: npc#{target} went out of sight"));
            };
            let there = target_entity.position.map(Pos::from).unwrap_or_default();
            let here = self.state.position();
            if here.dist(there) <= ATTACK_DISTANCE {
                break;
            }
            if Instant::now() >= approach_deadline {
                self.settle()?;
                return self.fail(format!("attack-nearest: could not get within {ATTACK_DISTANCE} m of npc#{target}"));
            }
            // Farther than ATTACK_DISTANCE, so this is a unit vector.
            let toward = Pos::new(there.x - here.x, there.y - here.y).clamped_direction();
            self.session()?.set_movement(Some(toward));
            self.pump(Instant::now() + Duration::from_millis(50), |_| false)?;
        }
        self.settle()?;
        let distance = self.state.distance_to(target).unwrap_or(f32::NAN);
        writeln!(self.out, "attack target=npc#{target} ability=firebolt distance={distance:.1}")?;
        let before = self.attacks_resolved;
        self.session()?.use_ability(2, target);
        match self.pump(Instant::now() + Duration::from_secs(3), |r| r.attacks_resolved > before)? {
            Pumped::Done => Ok(()),
            Pumped::TimedOut => {
                self.fail(format!("attack-nearest: the server never resolved the attack on npc#{target}"))
            }
        }
    }

    fn expect_moved(&mut self) -> Result<(), ScriptError> {
        self.session()?;
        let Some(start) = self.login_position else { return self.fail("expect-moved: not in the game") };
        let now = self.state.predictor.server_position();
        let distance = start.dist(now);
        if distance < MIN_MOVED {
            return self.fail(format!(
                "expect-moved: the server still has the player at {} (moved {distance:.2} m since login at {})",
                fmt_pos(now),
                fmt_pos(start)
            ));
        }
        writeln!(self.out, "ok expect-moved distance={distance:.1} from {} to {}", fmt_pos(start), fmt_pos(now))?;
        Ok(())
    }

    fn expect_chat(&mut self, text: &str) -> Result<(), ScriptError> {
        self.session()?;
        let seen = |r: &Runner<'_>| r.chats.iter().any(|c| c.contains(text));
        match self.pump(Instant::now() + CHAT_TIMEOUT, seen)? {
            Pumped::Done => {
                writeln!(self.out, "ok expect-chat {text}")?;
                Ok(())
            }
            Pumped::TimedOut => self.fail(format!("expect-chat: no chat line containing '{text}' within 5 s")),
        }
    }

    fn logout(&mut self) -> Result<(), ScriptError> {
        let Some(session) = self.session.take() else { return self.fail("not logged in") };
        session.set_movement(None);
        session.logout();
        let deadline = Instant::now() + LOGOUT_TIMEOUT;
        loop {
            match session.events().recv_deadline(deadline) {
                Ok(event) => {
                    self.record(&event)?;
                    if let NetEvent::Ended(end) = event {
                        return if end.is_clean() { Ok(()) } else { self.fail(format!("logout: {end}")) };
                    }
                }
                Err(_) => return self.fail("logout: the server did not confirm within 5 s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_parses_into_commands_with_their_lines() {
        let src = "# a walk\nregister ann password123\n\nmove 1 0 1.5  # east\nsay hello there\nzone hi all\n\
                   wait 0.5\nattack-nearest\nexpect-moved\nexpect-chat hello\nlogout\n";
        let steps = parse(src).unwrap();
        assert_eq!(steps.len(), 9);
        assert_eq!(
            steps[0],
            Step { line: 2, command: Command::Register { username: "ann".into(), password: "password123".into() } }
        );
        assert_eq!(
            steps[1].command,
            Command::Move { direction: Pos::new(1.0, 0.0), duration: Duration::from_millis(1500) }
        );
        assert_eq!(steps[2].command, Command::Chat { channel: ChatChannel::Say, text: "hello there".into() });
        assert_eq!(steps[3].command, Command::Chat { channel: ChatChannel::Zone, text: "hi all".into() });
        assert_eq!(steps[8], Step { line: 11, command: Command::Logout });
    }

    #[test]
    fn invalid_lines_are_rejected_with_their_line_number_and_exit_code_2() {
        for (src, needle) in [
            ("login ann\n", "usage: login NAME PASS"),
            ("dance\n", "unknown command 'dance'"),
            ("move 1 x 2\n", "'x' is not a number"),
            ("wait -1\n", "not a number of seconds"),
            ("move 1 0 inf\n", "not a number of seconds"),
            ("say\n", "usage: say TEXT"),
        ] {
            let err = parse(&format!("# header\n{src}")).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.starts_with("line 2: ") && text.contains(needle), "{src:?}: {text}");
        }
    }
}
