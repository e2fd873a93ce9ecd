//! The client's network threads: one owns the TLS control connection, one the UDP data channel; they talk to the
//! UI (or the script runner) only through channels, so the UI thread never blocks on a socket.
//!
//! The protocol itself (greeting, login answers, resume tokens, transfers, keepalive, binding, pings, input
//! sequencing) is the shared sans-IO [`crate::client::session`]; these threads only move its messages over
//! blocking sockets and turn its events into [`NetEvent`]s.
//!
//! The control thread connects, greets, authenticates and binds UDP, then spawns the UDP thread for that session.
//! The UDP thread sends one `Input` per tick while the player moves or uses an ability, pings the server once a
//! second for the round-trip time, and forwards snapshots. On a `ZoneTransfer` the control thread stops the UDP
//! thread, connects to the new zone with `TransferLogin` and starts a fresh UDP thread.
//!
//! Invariant: every input the UDP thread sends is reported as [`NetEvent::InputSent`] on the same channel, before
//! any snapshot that could acknowledge it — prediction depends on that order. And the session always ends with
//! exactly one [`NetEvent::Ended`], whatever happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustls::ClientConfig;

pub use crate::client::session::Credentials;
use crate::client::session::{
    self, ControlConfig, ControlEvent, ControlSession, ControlState, DataConfig, DataSession, LoginPolicy, Received,
};
use crate::client::{ClientError, Connection, UdpLink};
use crate::net::tls::{self, ServerTrust, TlsError};
use crate::proto::{
    control_message::Body, Chat, ChatChannel, ChatMessage, CombatEvent, Input, KickReason, LoginError,
    LoginErrorReason, LootReceived, PlayerStats, Snapshot, ZoneTransfer,
};

use super::prediction::Pos;

/// How long connecting, greeting, authenticating and binding UDP may each take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the control thread looks at its command channel while no message arrives.
const CONTROL_POLL: Duration = Duration::from_millis(50);
/// A TLS ping this often keeps the control connection from being closed as idle while the player only moves.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long the server may take to confirm a Logout before the client gives up on it.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP round-trip measurements this often.
const RTT_PING: Duration = Duration::from_secs(1);
/// Tries to resume a dropped session before giving up (the server keeps it `game.resume_grace_secs`, 30 s).
const RESUME_TRIES: u32 = 10;
/// Wait between resume tries.
const RESUME_BACKOFF: Duration = Duration::from_secs(2);

/// Where a session connects and how it trusts the server.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` of the control channel.
    pub address: String,
    /// The name checked against the server certificate (the host part of `address` unless overridden).
    pub server_name: String,
    /// TLS settings.
    pub tls: Arc<ClientConfig>,
}

impl Endpoint {
    /// An endpoint for `address` (`host:port`), verifying the server as `trust` says.
    pub fn new(address: &str, trust: &ServerTrust) -> Result<Self, TlsError> {
        Ok(Self { address: address.to_owned(), server_name: host_of(address), tls: tls::client_config(trust)? })
    }

    /// The same trust settings for another zone's address (zone transfer).
    pub fn with_address(&self, address: &str) -> Self {
        Self { address: address.to_owned(), server_name: host_of(address), tls: Arc::clone(&self.tls) }
    }
}

/// The host part of `host:port` (`[::1]:7777` gives `::1`); the whole string when there is no port.
pub fn host_of(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host.to_owned();
        }
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host.to_owned(),
        _ => address.to_owned(),
    }
}

/// The player is in a zone (first login or after a transfer).
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// Account id.
    pub player_id: u64,
    /// The player's entity in snapshots.
    pub entity_id: u64,
    /// Session id (UDP).
    pub session_id: u64,
    /// Zone name.
    pub zone: String,
    /// Control-channel address of the zone.
    pub address: String,
    /// Server ticks per second; inputs go out at this rate.
    pub tick_rate_hz: u32,
    /// Where the player appeared.
    pub position: Pos,
    /// The account name.
    pub username: String,
}

/// Why a session ended; each one reads as a sentence a player understands.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The player logged out (or quit) and the server confirmed it.
    #[error("logged out")]
    LoggedOut,
    /// Login or registration was refused.
    #[error("login refused ({}): {message}{}", reason_text(*.reason), retry_text(*.retry_after_ms))]
    LoginRefused {
        /// Reason code.
        reason: LoginErrorReason,
        /// The server's explanation.
        message: String,
        /// When to retry (0 = no hint).
        retry_after_ms: u32,
    },
    /// The zone transfer could not be completed.
    #[error("zone transfer to {zone} failed: {message}")]
    TransferFailed {
        /// Target zone.
        zone: String,
        /// What went wrong.
        message: String,
    },
    /// The server closed the session with a reason.
    #[error("kicked by the server ({}): {message}", kick_text(*.reason))]
    Kicked {
        /// Reason code.
        reason: KickReason,
        /// The server's explanation.
        message: String,
    },
    /// Connecting failed (address, TLS, certificate, protocol).
    #[error("cannot connect to {address}: {message}")]
    ConnectFailed {
        /// Where.
        address: String,
        /// Why.
        message: String,
    },
    /// The connection broke while playing.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
}

impl SessionEnd {
    /// Whether this is the normal end of a session (the player asked for it).
    pub fn is_clean(&self) -> bool {
        matches!(self, SessionEnd::LoggedOut)
    }
}

fn retry_text(ms: u32) -> String {
    if ms == 0 {
        String::new()
    } else {
        format!(" (retry in {:.0} s)", (f64::from(ms) / 1000.0).ceil())
    }
}

/// A short human name for a login refusal reason.
pub fn reason_text(reason: LoginErrorReason) -> &'static str {
    match reason {
        LoginErrorReason::LoginErrorUnspecified => "unspecified",
        LoginErrorReason::LoginErrorInvalidCredentials => "invalid credentials",
        LoginErrorReason::LoginErrorUsernameTaken => "username taken",
        LoginErrorReason::LoginErrorInvalidUsername => "invalid username",
        LoginErrorReason::LoginErrorWeakPassword => "weak password",
        LoginErrorReason::LoginErrorLockedOut => "locked out",
        LoginErrorReason::LoginErrorBanned => "banned",
        LoginErrorReason::LoginErrorAlreadyOnline => "already online",
        LoginErrorReason::LoginErrorServerFull => "server full",
        LoginErrorReason::LoginErrorServerBusy => "server busy",
        LoginErrorReason::LoginErrorInvalidTransfer => "invalid transfer",
        LoginErrorReason::LoginErrorProtocolVersion => "protocol version mismatch",
        LoginErrorReason::LoginErrorRateLimited => "too many attempts from this address",
        LoginErrorReason::LoginErrorInvalidResume => "session expired: log in again",
        LoginErrorReason::LoginErrorInvalidToken => "login token invalid or expired: log in again",
    }
}

/// A short human name for a kick reason.
pub fn kick_text(reason: KickReason) -> &'static str {
    match reason {
        KickReason::Unspecified => "unspecified",
        KickReason::ProtocolError => "protocol error",
        KickReason::Flood => "too many messages",
        KickReason::SlowConsumer => "client too slow",
        KickReason::IdleTimeout => "idle for too long",
        KickReason::ServerShutdown => "server shutting down",
        KickReason::OwnershipLost => "character taken over by another zone",
        KickReason::SaveFailed => "progress could not be saved",
        KickReason::CheatDetected => "cheat detected",
        KickReason::DuplicateLogin => "logged in elsewhere",
        KickReason::Banned => "banned",
        KickReason::LoginTimeout => "not logged in in time",
        KickReason::LoginAttempts => "too many login attempts",
        KickReason::ConnectionLimit => "server full",
        KickReason::LoggedOut => "logged out",
    }
}

/// What the network threads report, in the order it happened per thread.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NetEvent {
    /// TLS is up and the server answered Hello.
    Greeted {
        /// The zone's name.
        zone: String,
        /// The server's version string.
        server_version: String,
    },
    /// Logged in (or transferred) and the UDP channel is bound.
    Joined(Joined),
    /// The UDP thread sent this input (prediction applies it).
    InputSent(Input),
    /// One tick of the world around the player.
    Snapshot(Snapshot),
    /// A chat line.
    Chat(ChatMessage),
    /// Combat news about the player.
    Combat(CombatEvent),
    /// The player's stats.
    Stats(PlayerStats),
    /// An item is the player's (already saved by the server).
    Loot(LootReceived),
    /// A request was refused but the session goes on (e.g. a closed portal).
    Notice(String),
    /// A UDP round trip: measured time and the server's tick.
    Rtt {
        /// Round-trip time.
        rtt: Duration,
        /// The server's current tick.
        server_tick: u64,
    },
    /// The server sent the player to another zone; the client is connecting there.
    Transferring {
        /// Target zone.
        zone: String,
        /// Its address.
        address: String,
    },
    /// The session is over; no event follows.
    Ended(SessionEnd),
}

enum ControlCommand {
    Chat(ChatChannel, String),
    Logout,
    /// Reset the control connection (tests of resumption).
    Drop,
}

enum UdpCommand {
    Move(Option<Pos>),
    Ability { ability: u32, target: u64 },
}

/// A running session: the handle the UI holds. Dropping it logs out (best effort) and lets the threads end.
pub struct NetSession {
    control: Sender<ControlCommand>,
    udp: Sender<UdpCommand>,
    events: Receiver<NetEvent>,
    thread: Option<JoinHandle<()>>,
}

impl NetSession {
    /// Starts connecting in the background; progress and the outcome arrive as [`NetEvent`]s.
    pub fn start(endpoint: Endpoint, credentials: Credentials, client_name: &str) -> Result<Self, std::io::Error> {
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (udp_tx, udp_rx) = crossbeam_channel::unbounded();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let client_name = client_name.to_owned();
        let thread = std::thread::Builder::new().name("realm-client-tls".into()).spawn(move || {
            let mut control = ControlThread {
                control: control_rx,
                udp: udp_rx,
                events: events_tx,
                client_name,
                epoch: Instant::now(),
            };
            let end = control.run(endpoint, credentials);
            let _ = control.events.send(NetEvent::Ended(end));
        })?;
        Ok(Self { control: control_tx, udp: udp_tx, events, thread: Some(thread) })
    }

    /// The events channel.
    pub fn events(&self) -> &Receiver<NetEvent> {
        &self.events
    }

    /// Walk in `direction` (length <= 1; longer is normalised) from the next tick on, or stop with `None`.
    pub fn set_movement(&self, direction: Option<Pos>) {
        let _ = self.udp.send(UdpCommand::Move(direction.map(Pos::clamped_direction)));
    }

    /// Use ability `ability` on `target` (0 = none/self) with the next input.
    pub fn use_ability(&self, ability: u32, target: u64) {
        let _ = self.udp.send(UdpCommand::Ability { ability, target });
    }

    /// Say something (nearby players) or shout it to the zone.
    pub fn chat(&self, channel: ChatChannel, text: &str) {
        let _ = self.control.send(ControlCommand::Chat(channel, text.to_owned()));
    }

    /// Resets the control connection the way a network failure does (scripts test resumption with it): the
    /// client reconnects and resumes its session, announcing a new [`NetEvent::Joined`].
    pub fn drop_connection(&self) {
        let _ = self.control.send(ControlCommand::Drop);
    }

    /// Ask the server to log out; [`NetEvent::Ended`] with [`SessionEnd::LoggedOut`] follows.
    pub fn logout(&self) {
        let _ = self.control.send(ControlCommand::Logout);
    }

    /// Logs out and waits up to `timeout` for the session to end; returns how it ended (`None`: no answer).
    pub fn logout_and_wait(mut self, timeout: Duration) -> Option<SessionEnd> {
        self.logout();
        let deadline = Instant::now() + timeout;
        let mut end = None;
        while let Ok(event) = self.events.recv_deadline(deadline) {
            if let NetEvent::Ended(e) = event {
                end = Some(e);
                break;
            }
        }
        if end.is_some() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        end
    }
}

impl Drop for NetSession {
    fn drop(&mut self) {
        // The control thread sees its command channel close, logs out and stops the UDP thread; it is not joined
        // here because it may be in the middle of a connect timeout.
        let _ = self.control.send(ControlCommand::Logout);
    }
}

enum ZoneOutcome {
    End(SessionEnd),
    Transfer(ZoneTransfer),
    /// The connection failed while playing (not logging out): resumable.
    Dropped(String),
}

struct ControlThread {
    control: Receiver<ControlCommand>,
    udp: Receiver<UdpCommand>,
    events: Sender<NetEvent>,
    client_name: String,
    /// `client_time_us` of pings and inputs counts from here.
    epoch: Instant,
}

struct UdpThread {
    stop: Arc<AtomicBool>,
    join: JoinHandle<()>,
}

impl UdpThread {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.join.join();
    }
}

impl ControlThread {
    fn run(&mut self, first: Endpoint, credentials: Credentials) -> SessionEnd {
        let username = credentials.username().to_owned();
        let config = ControlConfig {
            keepalive: Some(KEEPALIVE),
            logout_timeout: LOGOUT_TIMEOUT,
            // An expired token is followed by the password on the same connection.
            policy: LoginPolicy { resume_falls_back_to_login: true, ..LoginPolicy::default() },
            check_login_ok: true,
            ..ControlConfig::new(&self.client_name, self.epoch)
        };
        let mut session = ControlSession::new(config, Some(credentials));
        let mut endpoint = first;
        let mut transferring_to: Option<String> = None;
        // A dropped connection is resumed with the latest LoginOk's token: a few tries, then give up.
        let mut resume_tries = 0;
        loop {
            let (mut conn, udp) = match self.enter(&endpoint, &mut session, &username) {
                Ok(entered) => entered,
                Err(end) if session.resuming() && resume_tries < RESUME_TRIES => {
                    resume_tries += 1;
                    let _ = self.events.send(NetEvent::Notice(format!("reconnecting ({end})")));
                    std::thread::sleep(RESUME_BACKOFF);
                    continue;
                }
                Err(end) => {
                    return match (transferring_to, end) {
                        (Some(zone), end) => SessionEnd::TransferFailed { zone, message: end.to_string() },
                        (None, end) => end,
                    }
                }
            };
            resume_tries = 0;
            let outcome = self.play(&mut conn, &mut session);
            udp.stop();
            match outcome {
                ZoneOutcome::Dropped(why) => {
                    let _ = self.events.send(NetEvent::Notice(format!("connection lost ({why}): resuming")));
                    transferring_to = None;
                }
                ZoneOutcome::End(end) => {
                    conn.close();
                    return end;
                }
                ZoneOutcome::Transfer(t) => {
                    conn.close();
                    let _ =
                        self.events.send(NetEvent::Transferring { zone: t.zone.clone(), address: t.address.clone() });
                    endpoint = endpoint.with_address(&t.address);
                    transferring_to = Some(t.zone);
                }
            }
        }
    }

    /// Connects, greets, sends the session's request (password, resume or transfer) and binds UDP; on success the
    /// UDP thread runs.
    fn enter(
        &mut self,
        endpoint: &Endpoint,
        session: &mut ControlSession,
        username: &str,
    ) -> Result<(Connection, UdpThread), SessionEnd> {
        let connect_failed = |e: ClientError| {
            let message = match e {
                // Its text names the address again.
                ClientError::Connect { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            SessionEnd::ConnectFailed { address: endpoint.address.clone(), message }
        };
        let mut conn =
            Connection::connect(&endpoint.address, &endpoint.server_name, Arc::clone(&endpoint.tls), CONNECT_TIMEOUT)
                .map_err(connect_failed)?;
        session.connected(Instant::now());
        loop {
            match conn.next_event(session) {
                Ok(ControlEvent::Greeted(hello)) => {
                    let _ =
                        self.events.send(NetEvent::Greeted { zone: hello.zone, server_version: hello.server_version });
                    break;
                }
                // LOGIN_ERROR_PROTOCOL_VERSION: this client is too old or too new for the server.
                Ok(ControlEvent::LoginRefused(e)) => return Err(connect_failed(ClientError::Login(e))),
                Ok(ControlEvent::Ended(end)) => return Err(session_ended(end)),
                Ok(ControlEvent::Unexpected(_)) => {
                    return Err(connect_failed(ClientError::Unexpected("expected HelloOk")))
                }
                Ok(_) => continue,
                Err(e) => return Err(connect_failed(e)),
            }
        }
        let ok = loop {
            match conn.next_event(session) {
                Ok(ControlEvent::LoggedIn { ok, .. }) => break ok,
                Ok(ControlEvent::ResumeRefused(_)) => {
                    let _ = self.events.send(NetEvent::Notice("the session expired: logging in again".into()));
                }
                Ok(ControlEvent::LoginRefused(e)) => {
                    conn.close();
                    return Err(refused(e));
                }
                Ok(ControlEvent::Ended(end)) => return Err(session_ended(end)),
                Ok(_) => continue,
                Err(e) => return Err(ended_by(e, false)),
            }
        };
        let keys = conn.udp_keys(ok.session_id).map_err(connect_failed)?;
        // The session checked that the port fits.
        let port = u16::try_from(ok.udp_port).unwrap_or_default();
        let udp_addr = SocketAddr::new(conn.server_addr().ip(), port);
        let data_config = DataConfig { rtt_ping: Some(RTT_PING), ..DataConfig::new(self.epoch) };
        let data = DataSession::new(ok.session_id, &keys, data_config, Instant::now());
        let link = UdpLink::bind_session(udp_addr, data, CONNECT_TIMEOUT).map_err(|e| SessionEnd::ConnectFailed {
            address: udp_addr.to_string(),
            message: format!("UDP channel: {e}"),
        })?;
        conn.set_timeout(CONTROL_POLL).map_err(connect_failed)?;
        let joined = Joined {
            player_id: ok.player_id,
            entity_id: ok.entity_id,
            session_id: ok.session_id,
            zone: ok.zone,
            address: endpoint.address.clone(),
            tick_rate_hz: ok.tick_rate_hz.max(1),
            position: ok.position.map(Pos::from).unwrap_or_default(),
            username: username.to_owned(),
        };
        let tick_rate = joined.tick_rate_hz;
        // Joined goes out before the UDP thread can report an input: the UI resets prediction on Joined.
        let _ = self.events.send(NetEvent::Joined(joined));
        let stop = Arc::new(AtomicBool::new(false));
        let mut driver = UdpDriver::new(link, tick_rate, self.udp.clone(), self.events.clone(), Arc::clone(&stop));
        let join = std::thread::Builder::new()
            .name("realm-client-udp".into())
            .spawn(move || driver.run())
            .map_err(|e| SessionEnd::ConnectFailed { address: udp_addr.to_string(), message: e.to_string() })?;
        Ok((conn, UdpThread { stop, join }))
    }

    /// Relays commands and messages until the session ends or the server transfers the player.
    fn play(&mut self, conn: &mut Connection, session: &mut ControlSession) -> ZoneOutcome {
        loop {
            // Once Logout went out, commands are ignored and only the server's goodbye matters.
            while session.state() == ControlState::InGame {
                match self.control.try_recv() {
                    Ok(ControlCommand::Chat(channel, text)) => {
                        session.send(Body::Chat(Chat { channel: channel as i32, text }));
                    }
                    // Disconnected: the UI is gone; log out as if the player asked.
                    Ok(ControlCommand::Logout) | Err(TryRecvError::Disconnected) => session.logout(Instant::now()),
                    Ok(ControlCommand::Drop) => {
                        let _ = socket2::SockRef::from(conn.socket()).set_linger(Some(Duration::ZERO));
                        let _ = conn.socket().shutdown(std::net::Shutdown::Both);
                        session.connection_lost(Instant::now());
                        return ZoneOutcome::Dropped("dropped on request".into());
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let event = match conn.next_event(session) {
                Ok(ControlEvent::Message(body)) => match body {
                    Body::ChatMessage(m) => NetEvent::Chat(m),
                    Body::CombatEvent(c) => NetEvent::Combat(c),
                    Body::PlayerStats(s) => NetEvent::Stats(s),
                    Body::Loot(l) => NetEvent::Loot(l),
                    Body::Error(n) => NetEvent::Notice(n.message),
                    Body::ChatRefused(r) => NetEvent::Notice(r.message),
                    _ => continue,
                },
                Ok(ControlEvent::Transfer(t)) => return ZoneOutcome::Transfer(t),
                Ok(ControlEvent::Ended(end)) => return ZoneOutcome::End(session_ended(end)),
                Ok(_) | Err(ClientError::Timeout) => continue,
                Err(e) => {
                    let logging_out = session.state() == ControlState::LoggingOut;
                    if session.connection_lost(Instant::now()) {
                        return match ended_by(e, false) {
                            SessionEnd::ConnectionLost(why) => ZoneOutcome::Dropped(why),
                            other => ZoneOutcome::Dropped(other.to_string()),
                        };
                    }
                    return ZoneOutcome::End(ended_by(e, logging_out));
                }
            };
            // Nobody listening is fine: the closed command channel makes the next round log out.
            let _ = self.events.send(event);
        }
    }
}

/// A refused request, as the player reads it.
fn refused(e: LoginError) -> SessionEnd {
    SessionEnd::LoginRefused {
        reason: LoginErrorReason::try_from(e.reason).unwrap_or(LoginErrorReason::LoginErrorUnspecified),
        message: e.message,
        retry_after_ms: e.retry_after_ms,
    }
}

/// How the shared session's end reads to the player.
fn session_ended(end: session::SessionEnd) -> SessionEnd {
    match end {
        session::SessionEnd::LoggedOut => SessionEnd::LoggedOut,
        session::SessionEnd::Kicked { reason, message } => {
            SessionEnd::Kicked { reason: KickReason::try_from(reason).unwrap_or(KickReason::Unspecified), message }
        }
        session::SessionEnd::TimedOut(session::Stage::Logout) => {
            SessionEnd::ConnectionLost("the server did not confirm the logout".into())
        }
        session::SessionEnd::TimedOut(_) => SessionEnd::ConnectionLost(ClientError::Timeout.to_string()),
        session::SessionEnd::ConnectionLost => SessionEnd::ConnectionLost("the server closed the connection".into()),
        session::SessionEnd::Protocol(what) => SessionEnd::ConnectionLost(format!("protocol error: {what}")),
    }
}

/// Maps a control-channel failure to how the session ended. After a Logout, the server's goodbye
/// (`KICK_REASON_LOGGED_OUT`; from older servers a kick without a reason, or a plain close) is the confirmation.
fn ended_by(e: ClientError, logging_out: bool) -> SessionEnd {
    match e {
        ClientError::Kicked { reason: KickReason::LoggedOut, .. } => SessionEnd::LoggedOut,
        ClientError::Kicked { reason: KickReason::Unspecified, .. } | ClientError::Closed if logging_out => {
            SessionEnd::LoggedOut
        }
        ClientError::Kicked { reason, message } => SessionEnd::Kicked { reason, message },
        ClientError::Closed => SessionEnd::ConnectionLost("the server closed the connection".into()),
        other => SessionEnd::ConnectionLost(other.to_string()),
    }
}

struct UdpDriver {
    link: UdpLink,
    period: Duration,
    commands: Receiver<UdpCommand>,
    events: Sender<NetEvent>,
    stop: Arc<AtomicBool>,
    direction: Option<Pos>,
    ability: Option<(u32, u64)>,
    /// An input with a zero direction goes out after movement stops, so the server stops at once.
    was_moving: bool,
    /// Input frames skipped while idle: every `IDLE_ACK_EVERY`th is sent anyway (protocol v2: it carries the
    /// snapshot acknowledgement; without it the server falls back to whole snapshots).
    idle: u32,
}

impl UdpDriver {
    fn new(
        link: UdpLink,
        tick_rate: u32,
        commands: Receiver<UdpCommand>,
        events: Sender<NetEvent>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            link,
            period: Duration::from_secs(1) / tick_rate.max(1),
            commands,
            events,
            stop,
            direction: None,
            ability: None,
            was_moving: false,
            idle: 0,
        }
    }

    fn run(&mut self) {
        // Commands left over from the previous zone would act in the wrong world.
        while self.commands.try_recv().is_ok() {}
        let mut next_input = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    UdpCommand::Move(direction) => self.direction = direction,
                    UdpCommand::Ability { ability, target } => self.ability = Some((ability, target)),
                }
            }
            let now = Instant::now();
            if now >= next_input {
                if let Err(e) = self.send_input(now) {
                    return self.failed(&e);
                }
                next_input += self.period;
                if next_input < now {
                    // We fell behind (suspended terminal, loaded machine): do not burst to catch up.
                    next_input = now + self.period;
                }
            }
            // The session's timers (round-trip pings) run inside `recv_event`.
            let wake = self.link.session().poll_timeout().map_or(next_input, |t| t.min(next_input));
            let wait = wake.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.link.recv_event(wait) {
                Ok(Received::Snapshot(s)) => {
                    let _ = self.events.send(NetEvent::Snapshot(s));
                }
                Ok(Received::Pong { pong, rtt: Some(rtt) }) => {
                    let _ = self.events.send(NetEvent::Rtt { rtt, server_tick: pong.server_tick });
                }
                Ok(_) | Err(ClientError::Timeout) => {}
                Err(e) => return self.failed(&e),
            }
        }
    }

    /// An idle player's client still sends one (zero-move) input in this many frames: protocol v2's acknowledgement
    /// rides on inputs, and one 32 ticks old gets whole snapshots.
    const IDLE_ACK_EVERY: u32 = 4;

    /// The socket failed: tell the player (movement stops); the control channel decides whether the session ends.
    #[cold]
    fn failed(&self, e: &ClientError) {
        let _ = self.events.send(NetEvent::Notice(format!("UDP channel failed, movement stopped: {e}")));
    }

    fn send_input(&mut self, now: Instant) -> Result<(), ClientError> {
        let moving = self.direction.is_some();
        if !moving && self.ability.is_none() && !self.was_moving {
            self.idle += 1;
            if self.idle < Self::IDLE_ACK_EVERY {
                return Ok(());
            }
        }
        self.idle = 0;
        self.was_moving = moving;
        let (ability, target_entity) = self.ability.take().unwrap_or((0, 0));
        let direction = self.direction.unwrap_or_default().into();
        let input = self.link.session().input(direction, ability, target_entity, now);
        self.link.flush()?;
        let _ = self.events.send(NetEvent::InputSent(input));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_is_the_host_part_of_the_address() {
        assert_eq!(host_of("127.0.0.1:7777"), "127.0.0.1");
        assert_eq!(host_of("zone-2.example.org:7787"), "zone-2.example.org");
        assert_eq!(host_of("[::1]:7777"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn session_ends_read_as_sentences_with_the_servers_reason() {
        let refused = SessionEnd::LoginRefused {
            reason: LoginErrorReason::LoginErrorLockedOut,
            message: "too many attempts".into(),
            retry_after_ms: 30_000,
        };
        assert_eq!(refused.to_string(), "login refused (locked out): too many attempts (retry in 30 s)");
        let kicked = SessionEnd::Kicked { reason: KickReason::ServerShutdown, message: "maintenance".into() };
        assert_eq!(kicked.to_string(), "kicked by the server (server shutting down): maintenance");
    }

    #[test]
    fn the_goodbye_after_a_logout_is_a_clean_end_but_not_before() {
        let goodbye = ClientError::Kicked { reason: KickReason::LoggedOut, message: "logged out".into() };
        assert_eq!(ended_by(goodbye, true), SessionEnd::LoggedOut);
        let bye = || ClientError::Kicked { reason: KickReason::Unspecified, message: "logged out".into() };
        assert_eq!(ended_by(bye(), true), SessionEnd::LoggedOut);
        assert!(matches!(ended_by(bye(), false), SessionEnd::Kicked { .. }));
        assert!(matches!(ended_by(ClientError::Closed, false), SessionEnd::ConnectionLost(_)));
        let shutdown = ClientError::Kicked { reason: KickReason::ServerShutdown, message: String::new() };
        assert!(matches!(ended_by(shutdown, true), SessionEnd::Kicked { reason: KickReason::ServerShutdown, .. }));
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::Login { username: "ann".into(), password: "hunter22".into() };
        assert!(!format!("{c:?}").contains("hunter22"));
    }
}
