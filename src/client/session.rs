//! The client's sans-IO session: the protocol logic every Realm client shares (the library [`super::Connection`],
//! the interactive `realm-client` and the `realm-bots` load generator), with no sockets, no clocks and no sleeps.
//! Drivers feed it decoded control messages, received datagrams and the current `Instant`; it answers with control
//! messages to send ([`ControlSession::poll_transmit`]), sealed datagrams ([`DataSession::poll_transmit`]), events
//! for the application and the next instant it wants [`ControlSession::handle_timeout`] called.
//!
//! Two machines, because a client may run its two channels on different threads (`realm-client` does):
//!
//! ```text
//! ControlSession (TLS, one per player across connections):
//!   Idle --connected--> Greeting --HelloOk--> Greeted --request--> AwaitLogin --LoginOk--> InGame
//!   AwaitLogin --LoginError busy (policy)--> Backoff --retry_after--> AwaitLogin
//!   AwaitLogin --UsernameTaken after Register / InvalidResume (policy)--> AwaitLogin (Login with the password)
//!   AwaitLogin --other LoginError--> Greeted (LoginRefused)
//!   InGame --connection lost--> Idle (next connection resumes with the latest token)
//!   InGame --ZoneTransfer--> Idle (next connection sends TransferLogin)
//!   InGame --logout--> LoggingOut --Kick(LoggedOut) / close / timeout--> Ended
//!   (any) --Kick, deadline--> Ended
//!
//! DataSession (UDP, one per LoginOk):
//!   Binding: UdpHello now and every `hello_resend`, UdpChallenge answered --UdpWelcome or Snapshot--> Bound
//!   Bound: server Pings answered with Pongs, own Pings (optional) measure the round trip, inputs sequenced
//! ```
//!
//! The invariant a reader must not break: **nothing the server sends can panic a client.** Every number and
//! reason code from the server is checked and becomes an event ([`ControlEvent::Unexpected`], [`SessionEnd`]),
//! never an `unwrap`. Both machines only queue: a driver that forgets to drain `poll_transmit` sends nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::net::udp::{DataChannel, DataKeys, UdpError};
use crate::proto::delta::{DeltaDecoder, DeltaError};
use crate::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, Hello, HelloOk, Input, Kick,
    KickReason, Login, LoginError, LoginErrorReason, LoginOk, Logout, Ping, Pong, Register, Resume, Snapshot,
    TransferLogin, UdpWelcome, Vec2, ZoneTransfer, PROTOCOL_VERSION,
};

/// The control frame size until `HelloOk` announces the server's (README: 4096 by default).
pub const DEFAULT_MAX_FRAME: usize = 4096;
/// UdpHello resend interval (README: "resending every ~200 ms").
pub const HELLO_RESEND: Duration = Duration::from_millis(200);
/// Largest tick rate a client believes (a server announcing more is broken).
const MAX_TICK_RATE_HZ: u32 = 1000;

/// How to enter the game with a password.
#[derive(Clone)]
pub enum Credentials {
    /// Log in to an existing account.
    Login {
        /// Account name.
        username: String,
        /// Password.
        password: String,
    },
    /// Create the account, then log in.
    Register {
        /// Account name.
        username: String,
        /// Password.
        password: String,
    },
}

impl Credentials {
    /// The account name.
    pub fn username(&self) -> &str {
        match self {
            Credentials::Login { username, .. } | Credentials::Register { username, .. } => username,
        }
    }

    /// The same account, logging in (after a `Register` found the name taken, or a resume was refused).
    fn as_login(&self) -> Credentials {
        match self.clone() {
            Credentials::Login { username, password } | Credentials::Register { username, password } => {
                Credentials::Login { username, password }
            }
        }
    }

    /// The request this sends.
    pub fn request(&self) -> Body {
        match self.clone() {
            Credentials::Login { username, password } => Body::Login(Login { username, password }),
            Credentials::Register { username, password } => Body::Register(Register { username, password }),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        match self {
            Credentials::Login { username, .. } => write!(f, "Login({username})"),
            Credentials::Register { username, .. } => write!(f, "Register({username})"),
        }
    }
}

/// What a client does on its own about refusals; everything else it reports.
#[derive(Debug, Clone, Default)]
pub struct LoginPolicy {
    /// A `Register` answered `LOGIN_ERROR_USERNAME_TAKEN` is followed by a `Login` with the same password.
    pub register_falls_back_to_login: bool,
    /// A `Resume` refused (the token expired, say) is followed by a `Login` with the password, on the same
    /// connection.
    pub resume_falls_back_to_login: bool,
    /// `LOGIN_ERROR_SERVER_BUSY` is retried after its `retry_after_ms`, kept within these bounds; `None` reports it.
    pub busy_retry: Option<(Duration, Duration)>,
}

/// A control session's settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `Hello.client_name`.
    pub client_name: String,
    /// From [`ControlSession::connected`] to `HelloOk` (TLS handshake included); `None`: no deadline.
    pub hello_timeout: Option<Duration>,
    /// From a login request to its answer (busy retries do not restart it); `None`: no deadline.
    pub login_timeout: Option<Duration>,
    /// A TLS `Ping` this often while in game (keeps the connection from idling out, measures its RTT).
    pub keepalive: Option<Duration>,
    /// How long the server may take to confirm a `Logout`.
    pub logout_timeout: Duration,
    /// Refusals handled without the application.
    pub policy: LoginPolicy,
    /// `LoginOk` numbers no server can mean (tick rate 0 or over 1000, entity 0, a port over 65535) end the
    /// session as [`SessionEnd::Protocol`]. Players' clients and bots check; the library client passes every
    /// answer to its caller (tests talk to scripted servers through it).
    pub check_login_ok: bool,
    /// `client_time_us` counts microseconds from here.
    pub epoch: Instant,
    /// `Hello.protocol_version`: [`PROTOCOL_VERSION`] (2, delta snapshots) unless a tool asks for 1 (full
    /// snapshots; the load benchmark measures both side by side).
    pub protocol_version: u32,
}

impl ControlConfig {
    /// No deadlines, no keepalive, no retries: every answer goes to the application (the library client).
    pub fn new(client_name: &str, epoch: Instant) -> Self {
        Self {
            client_name: client_name.to_owned(),
            hello_timeout: None,
            login_timeout: None,
            keepalive: None,
            logout_timeout: Duration::from_secs(5),
            policy: LoginPolicy::default(),
            check_login_ok: false,
            epoch,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `HelloOk` (connect + TLS + Hello).
    Hello,
    /// The answer to a login request.
    Login,
    /// The server's goodbye after `Logout`.
    Logout,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The player logged out and the server confirmed it (`KICK_REASON_LOGGED_OUT`; from older servers a kick
    /// without a reason, or a plain close).
    LoggedOut,
    /// The server closed the session with this reason (the raw code: unknown numbers are kept).
    Kicked {
        /// `KickReason` number.
        reason: i32,
        /// The server's text.
        message: String,
    },
    /// A deadline passed.
    TimedOut(Stage),
    /// The connection broke and cannot be resumed (no token, or not in game).
    ConnectionLost,
    /// The server sent something impossible; a short stable name (`bad_tick_rate`, ...).
    Protocol(&'static str),
}

/// What the control session reports, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ControlEvent {
    /// The server answered `Hello`.
    Greeted(HelloOk),
    /// In game: the driver derives the UDP keys for `ok.session_id` from its TLS session and starts a
    /// [`DataSession`]. `resumed` when a `Resume` was answered (same entity, new token already kept).
    LoggedIn {
        /// The server's answer.
        ok: LoginOk,
        /// Whether this resumed a dropped session.
        resumed: bool,
    },
    /// A request was refused and the session does nothing more about it (the driver may request again).
    LoginRefused(LoginError),
    /// The server was busy; the same request goes out again at `retry_at`.
    LoginRetry {
        /// The server's answer.
        error: LoginError,
        /// When it is sent again.
        retry_at: Instant,
    },
    /// The resume token was refused; the password login follows on this connection.
    ResumeRefused(LoginError),
    /// An in-game message for the application: `ChatMessage`, `ChatRefused`, `CombatEvent`, `PlayerStats`,
    /// `Loot`, `ErrorNotice`.
    Message(Body),
    /// The server sends the player to another zone: close this connection, connect to `address`, call
    /// [`ControlSession::connected`]; the session sends the `TransferLogin`.
    Transfer(ZoneTransfer),
    /// A TLS `Pong`; `rtt_us` when it answers one of this session's pings.
    Pong {
        /// The server's answer.
        pong: Pong,
        /// Round trip, when measurable.
        rtt_us: Option<u64>,
    },
    /// A message that has no place in the current state (its kind); the session carries on.
    Unexpected(&'static str),
    /// The session is over; nothing follows.
    Ended(SessionEnd),
}

/// Where the control session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    /// No connection (before the first, between a drop or transfer and the next).
    Idle,
    /// `Hello` sent, waiting for `HelloOk`.
    Greeting,
    /// Greeted; no request pending.
    Greeted,
    /// A login request is with the server.
    AwaitLogin,
    /// Waiting to send a request again (the server was busy).
    Backoff {
        /// When.
        retry_at: Instant,
    },
    /// Logged in.
    InGame,
    /// `Logout` sent; waiting for the goodbye.
    LoggingOut,
    /// Over.
    Ended,
}

/// The control channel's protocol state for one player, across connections (resumes, transfers).
#[derive(Debug)]
pub struct ControlSession {
    config: ControlConfig,
    state: ControlState,
    credentials: Option<Credentials>,
    /// The request sent (or to send) after `HelloOk`, and again on a busy retry.
    request: Option<Body>,
    /// The latest `LoginOk.session_token`: what the next connection presents after a drop.
    resume_token: Vec<u8>,
    entity_id: u64,
    max_frame: usize,
    deadline: Option<Instant>,
    next_ping: Option<Instant>,
    ping_nonce: u64,
    transmit: VecDeque<ControlMessage>,
    events: VecDeque<ControlEvent>,
}

impl ControlSession {
    /// A session that will log in with `credentials` (`None`: the driver sends its own requests).
    pub fn new(config: ControlConfig, credentials: Option<Credentials>) -> Self {
        let request = credentials.as_ref().map(Credentials::request);
        Self {
            config,
            state: ControlState::Idle,
            credentials,
            request,
            resume_token: Vec::new(),
            entity_id: 0,
            max_frame: DEFAULT_MAX_FRAME,
            deadline: None,
            next_ping: None,
            ping_nonce: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Where the session stands.
    pub fn state(&self) -> ControlState {
        self.state
    }

    /// The largest frame the server accepts (from `HelloOk`).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The token the next `Resume` presents (empty before the first `LoginOk`).
    pub fn resume_token(&self) -> &[u8] {
        &self.resume_token
    }

    /// Whether the next connection resumes (rather than logs in or transfers).
    pub fn resuming(&self) -> bool {
        matches!(self.request, Some(Body::Resume(_)))
    }

    /// A new control connection is being opened (TLS may still be handshaking: the `Hello` waits in rustls):
    /// greets, then sends the pending request (password, resume or transfer) once `HelloOk` arrives.
    pub fn connected(&mut self, now: Instant) {
        self.max_frame = DEFAULT_MAX_FRAME;
        self.state = ControlState::Greeting;
        self.deadline = self.config.hello_timeout.map(|t| now + t);
        self.next_ping = None;
        self.transmit.push_back(ControlMessage::new(Body::Hello(Hello {
            protocol_version: self.config.protocol_version,
            client_name: self.config.client_name.clone(),
        })));
    }

    /// Sends a `Login`, `Register`, `TransferLogin` or `Resume` now (the library client's explicit requests); the
    /// answer comes as [`ControlEvent::LoggedIn`] or [`ControlEvent::LoginRefused`].
    pub fn request(&mut self, body: Body, now: Instant) {
        self.request = Some(body);
        self.send_request(now, true);
    }

    /// Queues an in-game message (`Chat`, `UdpRebind`, ...).
    pub fn send(&mut self, body: Body) {
        self.transmit.push_back(ControlMessage::new(body));
    }

    /// Asks the server to log out; [`SessionEnd::LoggedOut`] follows its goodbye. Outside the game there is
    /// nothing to log out of: the session just ends.
    pub fn logout(&mut self, now: Instant) {
        match self.state {
            ControlState::InGame => {
                self.transmit.push_back(ControlMessage::new(Body::Logout(Logout {})));
                self.state = ControlState::LoggingOut;
                self.deadline = Some(now + self.config.logout_timeout);
                self.next_ping = None;
            }
            ControlState::LoggingOut | ControlState::Ended => {}
            _ => self.end(SessionEnd::LoggedOut),
        }
    }

    /// The control connection is gone (reset, EOF, I/O error). In game with a token, the next connection
    /// resumes: returns `true`, and the driver reconnects and calls [`ControlSession::connected`]. Otherwise the
    /// session ends (while logging out, that is the goodbye).
    pub fn connection_lost(&mut self, _now: Instant) -> bool {
        match self.state {
            ControlState::InGame if !self.resume_token.is_empty() => {
                self.request = Some(Body::Resume(Resume { session_token: self.resume_token.clone() }));
                self.state = ControlState::Idle;
                self.deadline = None;
                self.next_ping = None;
                self.transmit.clear();
                true
            }
            ControlState::LoggingOut => {
                self.end(SessionEnd::LoggedOut);
                false
            }
            ControlState::Ended => false,
            _ => {
                self.end(SessionEnd::ConnectionLost);
                false
            }
        }
    }

    /// When [`ControlSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = match self.state {
            ControlState::Backoff { retry_at } => Some(retry_at),
            _ => None,
        };
        [self.deadline, self.next_ping, retry].into_iter().flatten().min()
    }

    /// Deadlines, busy retries and keepalive pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            let stage = match self.state {
                ControlState::Greeting => Some(Stage::Hello),
                ControlState::AwaitLogin | ControlState::Backoff { .. } => Some(Stage::Login),
                ControlState::LoggingOut => Some(Stage::Logout),
                _ => None,
            };
            self.deadline = None;
            if let Some(stage) = stage {
                return self.end(SessionEnd::TimedOut(stage));
            }
        }
        if let ControlState::Backoff { retry_at } = self.state {
            if now >= retry_at {
                self.send_request(now, false);
            }
        }
        if self.state == ControlState::InGame && self.next_ping.is_some_and(|at| now >= at) {
            self.ping_nonce += 1;
            let client_time_us = micros_since(self.config.epoch, now);
            self.send(Body::Ping(Ping { nonce: self.ping_nonce, client_time_us }));
            self.next_ping = self.config.keepalive.map(|k| now + k);
        }
    }

    /// One message from the server.
    pub fn handle(&mut self, msg: ControlMessage, now: Instant) {
        let Some(body) = msg.body else { return self.events.push_back(ControlEvent::Unexpected("empty")) };
        match (self.state, body) {
            (ControlState::Ended, _) => {}
            (_, Body::Kick(k)) => self.on_kick(k),
            (_, Body::Pong(pong)) => {
                let now_us = micros_since(self.config.epoch, now);
                let ours = pong.nonce != 0 && pong.nonce <= self.ping_nonce && pong.client_time_us <= now_us;
                let rtt_us = ours.then(|| now_us - pong.client_time_us);
                self.events.push_back(ControlEvent::Pong { pong, rtt_us });
            }
            (ControlState::Greeting, Body::HelloOk(ok)) => {
                self.max_frame = (ok.max_frame_bytes as usize).clamp(64, 1 << 20);
                self.state = ControlState::Greeted;
                self.deadline = None;
                self.events.push_back(ControlEvent::Greeted(ok));
                if self.request.is_some() {
                    self.send_request(now, true);
                }
            }
            // LOGIN_ERROR_PROTOCOL_VERSION answers Hello: this client is too old or too new for the server.
            (ControlState::Greeting, Body::LoginError(e)) => {
                self.state = ControlState::Greeted;
                self.deadline = None;
                self.events.push_back(ControlEvent::LoginRefused(e));
            }
            (ControlState::AwaitLogin, Body::LoginError(e)) => self.on_login_error(e, now),
            (ControlState::AwaitLogin, Body::LoginOk(ok)) => self.on_login_ok(ok, now),
            (ControlState::InGame | ControlState::LoggingOut, body) => match body {
                Body::ChatMessage(_)
                | Body::ChatRefused(_)
                | Body::CombatEvent(_)
                | Body::PlayerStats(_)
                | Body::Loot(_)
                | Body::Error(_) => self.events.push_back(ControlEvent::Message(body)),
                // Leaving anyway: the player asked to.
                Body::ZoneTransfer(_) if self.state == ControlState::LoggingOut => {}
                Body::ZoneTransfer(t) => {
                    let username = self.credentials.as_ref().map(|c| c.username().to_owned()).unwrap_or_default();
                    self.request =
                        Some(Body::TransferLogin(TransferLogin { transfer_token: t.transfer_token.clone(), username }));
                    self.state = ControlState::Idle;
                    self.next_ping = None;
                    self.events.push_back(ControlEvent::Transfer(t));
                }
                // Anything else the server may add later is not for this client.
                _ => {}
            },
            (_, other) => self.events.push_back(ControlEvent::Unexpected(ControlMessage::new(other).kind())),
        }
    }

    /// The next message to send, in order.
    pub fn poll_transmit(&mut self) -> Option<ControlMessage> {
        self.transmit.pop_front()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.events.pop_front()
    }

    fn send_request(&mut self, now: Instant, restart_deadline: bool) {
        let Some(body) = self.request.clone() else { return };
        self.transmit.push_back(ControlMessage::new(body));
        if restart_deadline {
            self.deadline = self.config.login_timeout.map(|t| now + t);
        }
        self.state = ControlState::AwaitLogin;
    }

    fn on_login_error(&mut self, e: LoginError, now: Instant) {
        let policy = &self.config.policy;
        let resuming = self.resuming();
        let taken = e.reason == LoginErrorReason::LoginErrorUsernameTaken as i32;
        let busy = e.reason == LoginErrorReason::LoginErrorServerBusy as i32;
        let registering = matches!(self.request, Some(Body::Register(_)));
        if resuming && policy.resume_falls_back_to_login && self.credentials.is_some() {
            self.credentials = self.credentials.as_ref().map(Credentials::as_login);
            self.request = self.credentials.as_ref().map(Credentials::request);
            self.events.push_back(ControlEvent::ResumeRefused(e));
            return self.send_request(now, true);
        }
        if taken && registering && policy.register_falls_back_to_login {
            self.credentials = self.credentials.as_ref().map(Credentials::as_login);
            self.request = match self.request.take() {
                Some(Body::Register(Register { username, password })) => {
                    Some(Body::Login(Login { username, password }))
                }
                other => other,
            };
            return self.send_request(now, true);
        }
        if let (true, Some((min, max))) = (busy, policy.busy_retry) {
            let retry_at = now + Duration::from_millis(u64::from(e.retry_after_ms)).clamp(min, max);
            self.state = ControlState::Backoff { retry_at };
            return self.events.push_back(ControlEvent::LoginRetry { error: e, retry_at });
        }
        if resuming {
            // The token is spent either way: the next connection logs in with the password.
            self.request = self.credentials.as_ref().map(Credentials::request);
        }
        self.state = ControlState::Greeted;
        self.deadline = None;
        self.events.push_back(ControlEvent::LoginRefused(e));
    }

    fn on_login_ok(&mut self, ok: LoginOk, now: Instant) {
        let resumed = self.resuming();
        if resumed && self.entity_id != 0 && self.entity_id != ok.entity_id {
            return self.end(SessionEnd::Protocol("resumed_another_entity"));
        }
        if self.config.check_login_ok {
            if ok.tick_rate_hz == 0 || ok.tick_rate_hz > MAX_TICK_RATE_HZ {
                return self.end(SessionEnd::Protocol("bad_tick_rate"));
            }
            if ok.entity_id == 0 {
                return self.end(SessionEnd::Protocol("no_entity_id"));
            }
            if u16::try_from(ok.udp_port).is_err() {
                return self.end(SessionEnd::Protocol("bad_udp_port"));
            }
        }
        self.entity_id = ok.entity_id;
        self.resume_token.clone_from(&ok.session_token);
        // A later connection (after a transfer) logs in with its own request; a drop resumes.
        self.request = None;
        self.state = ControlState::InGame;
        self.deadline = None;
        self.next_ping = self.config.keepalive.map(|k| now + k);
        self.events.push_back(ControlEvent::LoggedIn { ok, resumed });
    }

    fn on_kick(&mut self, k: Kick) {
        let goodbye = k.reason == KickReason::LoggedOut as i32
            || (self.state == ControlState::LoggingOut && k.reason == KickReason::Unspecified as i32);
        self.end(if goodbye {
            SessionEnd::LoggedOut
        } else {
            SessionEnd::Kicked { reason: k.reason, message: k.message }
        });
    }

    fn end(&mut self, end: SessionEnd) {
        self.state = ControlState::Ended;
        self.deadline = None;
        self.next_ping = None;
        self.events.push_back(ControlEvent::Ended(end));
    }
}

/// A data session's settings.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// UdpHello resend interval.
    pub hello_resend: Duration,
    /// From the start of binding to `UdpWelcome`; `None`: no deadline (the driver has its own).
    pub bind_timeout: Option<Duration>,
    /// Own UDP `Ping`s this often once bound, for the round-trip time; `None`: none.
    pub rtt_ping: Option<Duration>,
    /// `client_time_us` counts microseconds from here.
    pub epoch: Instant,
}

impl DataConfig {
    /// The protocol's resend interval, no deadline, no own pings.
    pub fn new(epoch: Instant) -> Self {
        Self { hello_resend: HELLO_RESEND, bind_timeout: None, rtt_ping: None, epoch }
    }
}

/// What one received datagram meant.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// Handled inside (a challenge answered, a server ping answered).
    Nothing,
    /// The server bound this address (`UdpWelcome`; again for a hello resent after binding); snapshots follow.
    Welcome(UdpWelcome),
    /// One tick of the world (protocol v2's `DeltaSnapshot`s arrive decoded into one). The first one while binding
    /// also binds (it may overtake the welcome).
    Snapshot(Snapshot),
    /// A `DeltaSnapshot` that could not be decoded: reordered behind a newer one, against a view this session does
    /// not hold (lost), or malformed. Nothing to do: the next one decodes (it is against what
    /// [`DataSession::input`] acknowledged).
    Undecodable(DeltaError),
    /// A `Pong`; `rtt` when it answers one of this session's pings.
    Pong {
        /// The server's answer.
        pong: Pong,
        /// Round trip, when measurable.
        rtt: Option<Duration>,
    },
    /// Any other authentic message.
    Other(DataMessage),
    /// Forged, replayed, for another session or undecodable: dropped.
    Rejected(UdpError),
}

/// The binding deadline passed without a welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server did not welcome the UDP channel in time")]
pub struct BindTimedOut;

/// A welcome for another session: the server is confused or someone injects datagrams it could seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("UdpWelcome for another session")]
pub struct WrongSession;

#[derive(Debug)]
enum Pending {
    Hello,
    ChallengeResponse(crate::proto::UdpChallenge),
    Message(DataMessage),
}

/// The UDP channel's protocol state for one `LoginOk`: binding, pings, input sequencing, sealing.
#[derive(Debug)]
pub struct DataSession {
    channel: DataChannel,
    config: DataConfig,
    bound: bool,
    deadline: Option<Instant>,
    next_hello: Option<Instant>,
    next_ping: Option<Instant>,
    sequence: u32,
    transmit: VecDeque<Pending>,
    /// Protocol v2: the views decoded, the newest acknowledged in every input.
    views: DeltaDecoder,
}

impl DataSession {
    /// A session for `session_id` with the keys the TLS exporter gave; starts binding at once (the first
    /// `UdpHello` is queued).
    pub fn new(session_id: u64, keys: &DataKeys, config: DataConfig, now: Instant) -> Self {
        let mut session = Self {
            channel: DataChannel::client(session_id, keys),
            config,
            bound: false,
            deadline: None,
            next_hello: None,
            next_ping: None,
            sequence: 0,
            transmit: VecDeque::new(),
            views: DeltaDecoder::new(),
        };
        session.bind(now);
        session
    }

    /// (Re)starts binding: after a NAT rebind (with `UdpRebind` sent over TLS) the new address must be proved.
    pub fn bind(&mut self, now: Instant) {
        self.bound = false;
        self.deadline = self.config.bind_timeout.map(|t| now + t);
        self.next_ping = None;
        self.send_hello(now);
    }

    /// Whether the server welcomed this session's address.
    pub fn is_bound(&self) -> bool {
        self.bound
    }

    /// The session id.
    pub fn session_id(&self) -> u64 {
        self.channel.session_id()
    }

    /// When [`DataSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.deadline, self.next_hello, self.next_ping].into_iter().flatten().min()
    }

    /// Hello resends, the binding deadline, own pings.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), BindTimedOut> {
        if !self.bound {
            if self.deadline.is_some_and(|d| now >= d) {
                return Err(BindTimedOut);
            }
            if self.next_hello.is_some_and(|at| now >= at) {
                self.send_hello(now);
            }
        } else if self.next_ping.is_some_and(|at| now >= at) {
            let ping = Ping { nonce: 0, client_time_us: micros_since(self.config.epoch, now) };
            self.transmit.push_back(Pending::Message(DataMessage::new(DataBody::Ping(ping))));
            self.next_ping = self.config.rtt_ping.map(|p| now + p);
        }
        Ok(())
    }

    /// Opens one datagram from the server (in place) and handles what is protocol.
    pub fn handle_datagram(&mut self, datagram: &mut [u8], now: Instant) -> Result<Received, WrongSession> {
        let msg = match self.channel.open(datagram) {
            Ok(msg) => msg,
            Err(e) => return Ok(Received::Rejected(e)),
        };
        Ok(match msg.body {
            // The server proves our address before binding it: echo the challenge from this socket.
            Some(DataBody::UdpChallenge(c)) if !self.bound => {
                self.transmit.push_back(Pending::ChallengeResponse(c));
                Received::Nothing
            }
            Some(DataBody::UdpWelcome(w)) if !self.bound => {
                if w.session_id != self.channel.session_id() {
                    return Err(WrongSession);
                }
                self.on_bound(now);
                Received::Welcome(w)
            }
            // A hello from the bound address is welcomed again (after a resend that crossed the first welcome).
            Some(DataBody::UdpWelcome(w)) => Received::Welcome(w),
            Some(DataBody::Snapshot(s)) => {
                if !self.bound {
                    self.on_bound(now);
                }
                Received::Snapshot(s)
            }
            Some(DataBody::DeltaSnapshot(d)) => {
                if !self.bound {
                    self.on_bound(now);
                }
                match self.views.decode(&d) {
                    Ok(s) => Received::Snapshot(s),
                    Err(e) => Received::Undecodable(e),
                }
            }
            // The server measures round-trip time with pings; answering is part of the protocol.
            Some(DataBody::Ping(p)) => {
                let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: 0 };
                self.transmit.push_back(Pending::Message(DataMessage::new(DataBody::Pong(pong))));
                Received::Nothing
            }
            Some(DataBody::Pong(pong)) => {
                let now_us = micros_since(self.config.epoch, now);
                let ours = self.config.rtt_ping.is_some() && pong.nonce == 0 && pong.client_time_us <= now_us;
                let rtt = ours.then(|| Duration::from_micros(now_us - pong.client_time_us));
                Received::Pong { pong, rtt }
            }
            _ => Received::Other(msg),
        })
    }

    /// Queues the next `Input` (sequences start at 1 for each session and rise by one) and returns it.
    pub fn input(&mut self, move_dir: Vec2, ability: u32, target_entity: u64, now: Instant) -> Input {
        self.sequence = self.sequence.wrapping_add(1).max(1);
        let input = Input {
            sequence: self.sequence,
            move_dir: Some(move_dir),
            ability,
            target_entity,
            client_time_us: micros_since(self.config.epoch, now),
            snapshot_ack: self.views.ack(),
        };
        self.transmit.push_back(Pending::Message(DataMessage::new(DataBody::Input(input))));
        input
    }

    /// Protocol v2: the tick of the newest delta snapshot decoded, acknowledged in every input (0: none).
    pub fn snapshot_ack(&self) -> u64 {
        self.views.ack()
    }

    /// Queues any message (tests, tools).
    pub fn send(&mut self, msg: DataMessage) {
        self.transmit.push_back(Pending::Message(msg));
    }

    /// Seals the next queued datagram into `out`; `None` when nothing is queued. A message that cannot be sealed
    /// (too large) is dropped with its error.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Result<usize, UdpError>> {
        let pending = self.transmit.pop_front()?;
        Some(match pending {
            Pending::Hello => self.channel.seal_hello(out),
            Pending::ChallengeResponse(c) => self.channel.seal_challenge_response(&c, out),
            Pending::Message(msg) => self.channel.seal(&msg, out),
        })
    }

    /// Seals `msg` at once, outside the queue (tests: replays, spoofing).
    pub fn seal(&mut self, msg: &DataMessage, out: &mut [u8]) -> Result<usize, UdpError> {
        self.channel.seal(msg, out)
    }

    fn send_hello(&mut self, now: Instant) {
        self.transmit.push_back(Pending::Hello);
        self.next_hello = Some(now + self.config.hello_resend);
    }

    fn on_bound(&mut self, now: Instant) {
        self.bound = true;
        self.deadline = None;
        self.next_hello = None;
        self.next_ping = self.config.rtt_ping.map(|_| now);
    }
}

/// Microseconds from `epoch` to `now`, for `client_time_us` (only differences matter).
pub fn micros_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ChatMessage, UdpChallenge};

    const T0_MS: u64 = 0;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn bot_config(t0: Instant) -> ControlConfig {
        ControlConfig {
            protocol_version: PROTOCOL_VERSION,
            client_name: "test".into(),
            hello_timeout: Some(Duration::from_secs(5)),
            login_timeout: Some(Duration::from_secs(10)),
            keepalive: Some(Duration::from_secs(10)),
            logout_timeout: Duration::from_secs(1),
            policy: LoginPolicy {
                register_falls_back_to_login: true,
                resume_falls_back_to_login: true,
                busy_retry: Some((Duration::from_millis(200), Duration::from_secs(10))),
            },
            check_login_ok: true,
            epoch: t0,
        }
    }

    fn ann() -> Credentials {
        Credentials::Register { username: "ann".into(), password: "hunter22".into() }
    }

    fn sent(s: &mut ControlSession) -> Vec<Body> {
        std::iter::from_fn(|| s.poll_transmit()).filter_map(|m| m.body).collect()
    }

    fn events(s: &mut ControlSession) -> Vec<ControlEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn msg(body: Body) -> ControlMessage {
        ControlMessage::new(body)
    }

    fn hello_ok() -> Body {
        Body::HelloOk(HelloOk { max_frame_bytes: 4096, ..Default::default() })
    }

    fn login_ok(entity_id: u64, token: &[u8]) -> Body {
        Body::LoginOk(LoginOk {
            session_id: 42,
            player_id: 7,
            zone: "starter-vale".into(),
            tick_rate_hz: 20,
            udp_port: 7777,
            entity_id,
            session_token: token.to_vec(),
            ..Default::default()
        })
    }

    fn refusal(reason: LoginErrorReason, retry_after_ms: u32) -> Body {
        Body::LoginError(LoginError { reason: reason as i32, message: "no".into(), retry_after_ms })
    }

    /// A bot-like session that sent its Hello and request, the Hello answered; what it sent is drained.
    fn greeted(t0: Instant) -> ControlSession {
        let mut s = ControlSession::new(bot_config(t0), Some(ann()));
        s.connected(t0);
        s.handle(msg(hello_ok()), t0);
        sent(&mut s);
        s
    }

    /// A session greeted and logged in with token `t1`.
    fn in_game(t0: Instant) -> ControlSession {
        let mut s = greeted(t0);
        s.handle(msg(login_ok(9, b"t1")), t0);
        sent(&mut s);
        events(&mut s);
        assert_eq!(s.state(), ControlState::InGame);
        s
    }

    #[test]
    fn hello_then_the_request_then_login_ok_enters_the_game() {
        let t0 = Instant::now();
        let mut s = ControlSession::new(bot_config(t0), Some(ann()));
        s.connected(t0);
        let out = sent(&mut s);
        assert!(
            matches!(&out[..], [Body::Hello(h)] if h.protocol_version == PROTOCOL_VERSION && h.client_name == "test")
        );
        s.handle(msg(Body::HelloOk(HelloOk { max_frame_bytes: 8192, ..Default::default() })), at(t0, 5));
        assert_eq!(s.max_frame(), 8192);
        assert!(matches!(&sent(&mut s)[..], [Body::Register(r)] if r.username == "ann" && r.password == "hunter22"));
        s.handle(msg(login_ok(9, b"t1")), at(t0, 10));
        let ev = events(&mut s);
        assert!(matches!(&ev[0], ControlEvent::Greeted(_)));
        assert!(matches!(&ev[1], ControlEvent::LoggedIn { ok, resumed: false } if ok.entity_id == 9));
        assert_eq!(s.resume_token(), b"t1");
        assert_eq!(s.state(), ControlState::InGame);
    }

    #[test]
    fn each_refusal_is_reported_and_the_session_stays_greeted() {
        for reason in [
            LoginErrorReason::LoginErrorInvalidCredentials,
            LoginErrorReason::LoginErrorLockedOut,
            LoginErrorReason::LoginErrorRateLimited,
            LoginErrorReason::LoginErrorBanned,
            LoginErrorReason::LoginErrorAlreadyOnline,
            LoginErrorReason::LoginErrorServerBusy,
            LoginErrorReason::LoginErrorInvalidTransfer,
        ] {
            let t0 = Instant::now();
            // The library client's settings: every answer goes to the application.
            let mut s = ControlSession::new(ControlConfig::new("lib", t0), None);
            s.connected(t0);
            s.handle(msg(hello_ok()), t0);
            s.request(Body::Login(Login { username: "ann".into(), password: "x".into() }), t0);
            assert!(matches!(&sent(&mut s)[..], [Body::Hello(_), Body::Login(_)]));
            s.handle(msg(refusal(reason, 0)), t0);
            let ev = events(&mut s);
            assert!(
                matches!(&ev[..], [ControlEvent::Greeted(_), ControlEvent::LoginRefused(e)] if e.reason == reason as i32),
                "{reason:?}: {ev:?}"
            );
            assert_eq!(s.state(), ControlState::Greeted);
            assert!(sent(&mut s).is_empty(), "{reason:?}: nothing is retried without a policy");
        }
    }

    #[test]
    fn a_protocol_version_refusal_answers_the_hello() {
        let t0 = Instant::now();
        let mut s = ControlSession::new(bot_config(t0), Some(ann()));
        s.connected(t0);
        s.handle(msg(refusal(LoginErrorReason::LoginErrorProtocolVersion, 0)), t0);
        assert!(matches!(&events(&mut s)[..], [ControlEvent::LoginRefused(_)]));
        assert!(matches!(&sent(&mut s)[..], [Body::Hello(_)]), "no login after a version refusal");
    }

    #[test]
    fn a_taken_name_falls_back_to_login_with_the_same_password() {
        let t0 = Instant::now();
        let mut s = greeted(t0);
        s.handle(msg(refusal(LoginErrorReason::LoginErrorUsernameTaken, 0)), at(t0, 100));
        assert!(matches!(&sent(&mut s)[..], [Body::Login(l)] if l.username == "ann" && l.password == "hunter22"));
        // A second refusal is final.
        s.handle(msg(refusal(LoginErrorReason::LoginErrorInvalidCredentials, 0)), at(t0, 200));
        assert!(matches!(events(&mut s).last(), Some(ControlEvent::LoginRefused(_))));
    }

    #[test]
    fn a_busy_server_is_retried_after_its_retry_after_and_the_login_deadline_holds() {
        let t0 = Instant::now();
        let mut s = greeted(t0);
        s.handle(msg(refusal(LoginErrorReason::LoginErrorServerBusy, 1500)), at(t0, 100));
        let retry_at = at(t0, 1600);
        assert!(matches!(events(&mut s).last(), Some(ControlEvent::LoginRetry { retry_at: r, .. }) if *r == retry_at));
        assert_eq!(s.poll_timeout(), Some(retry_at));
        s.handle_timeout(at(t0, 1599));
        assert!(sent(&mut s).is_empty(), "not before retry_after");
        s.handle_timeout(retry_at);
        assert!(matches!(&sent(&mut s)[..], [Body::Register(_)]));
        // A tiny hint is raised to the minimum wait; the deadline counts from the first request.
        s.handle(msg(refusal(LoginErrorReason::LoginErrorServerBusy, 1)), at(t0, 1700));
        assert_eq!(s.poll_timeout(), Some(at(t0, 1900)));
        s.handle_timeout(at(t0, 1900));
        sent(&mut s);
        s.handle_timeout(at(t0, 10_000));
        assert_eq!(events(&mut s).last(), Some(&ControlEvent::Ended(SessionEnd::TimedOut(Stage::Login))));
    }

    #[test]
    fn no_hello_ok_in_time_ends_the_session() {
        let t0 = Instant::now();
        let mut s = ControlSession::new(bot_config(t0), Some(ann()));
        s.connected(t0);
        assert_eq!(s.poll_timeout(), Some(at(t0, 5000)));
        s.handle_timeout(at(t0, 5000));
        assert_eq!(events(&mut s), vec![ControlEvent::Ended(SessionEnd::TimedOut(Stage::Hello))]);
    }

    #[test]
    fn a_dropped_connection_resumes_with_the_latest_token_and_keeps_the_new_one() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        assert!(s.connection_lost(at(t0, 1000)));
        assert_eq!(s.state(), ControlState::Idle);
        s.connected(at(t0, 1000));
        s.handle(msg(hello_ok()), at(t0, 1010));
        let out = sent(&mut s);
        assert!(matches!(&out[..], [Body::Hello(_), Body::Resume(r)] if r.session_token == b"t1"));
        s.handle(msg(login_ok(9, b"t2")), at(t0, 1020));
        assert!(matches!(events(&mut s).last(), Some(ControlEvent::LoggedIn { resumed: true, .. })));
        assert_eq!(s.resume_token(), b"t2", "each token works once: the next resume presents the new one");
        assert!(s.connection_lost(at(t0, 2000)));
        s.connected(at(t0, 2000));
        s.handle(msg(hello_ok()), at(t0, 2010));
        assert!(matches!(&sent(&mut s)[..], [Body::Hello(_), Body::Resume(r)] if r.session_token == b"t2"));
    }

    #[test]
    fn a_refused_resume_logs_in_with_the_password() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        s.connection_lost(t0);
        s.connected(t0);
        s.handle(msg(hello_ok()), t0);
        sent(&mut s);
        s.handle(msg(refusal(LoginErrorReason::LoginErrorInvalidResume, 0)), t0);
        assert!(matches!(&events(&mut s)[..], [ControlEvent::Greeted(_), ControlEvent::ResumeRefused(_)]));
        assert!(matches!(&sent(&mut s)[..], [Body::Login(l)] if l.username == "ann"), "login, not register");
        s.handle(msg(login_ok(9, b"t3")), t0);
        assert!(matches!(events(&mut s).last(), Some(ControlEvent::LoggedIn { resumed: false, .. })));
    }

    #[test]
    fn a_resume_into_another_entity_is_a_protocol_error() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        s.connection_lost(t0);
        s.connected(t0);
        s.handle(msg(hello_ok()), t0);
        s.handle(msg(login_ok(10, b"t2")), t0);
        assert_eq!(events(&mut s).last(), Some(&ControlEvent::Ended(SessionEnd::Protocol("resumed_another_entity"))));
    }

    #[test]
    fn impossible_login_ok_numbers_end_the_session_without_panicking() {
        let t0 = Instant::now();
        for (ok, name) in [
            (LoginOk { tick_rate_hz: 0, entity_id: 1, ..Default::default() }, "bad_tick_rate"),
            (LoginOk { tick_rate_hz: 20, entity_id: 0, ..Default::default() }, "no_entity_id"),
            (LoginOk { tick_rate_hz: 20, entity_id: 1, udp_port: 70_000, ..Default::default() }, "bad_udp_port"),
        ] {
            let mut s = ControlSession::new(bot_config(t0), Some(ann()));
            s.connected(t0);
            s.handle(msg(hello_ok()), t0);
            s.handle(msg(Body::LoginOk(ok)), t0);
            assert_eq!(events(&mut s).last(), Some(&ControlEvent::Ended(SessionEnd::Protocol(name))));
        }
    }

    #[test]
    fn a_kick_ends_the_session_with_its_reason() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        s.handle(msg(Body::Kick(Kick { reason: KickReason::Flood as i32, message: "slow down".into() })), t0);
        assert_eq!(
            events(&mut s),
            vec![ControlEvent::Ended(SessionEnd::Kicked {
                reason: KickReason::Flood as i32,
                message: "slow down".into()
            })]
        );
        assert!(!s.connection_lost(t0), "a kick is not resumable");
        assert!(events(&mut s).is_empty(), "nothing after the end");
    }

    #[test]
    fn logout_ends_on_the_goodbye_or_the_close_or_the_deadline() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        s.logout(t0);
        assert!(matches!(&sent(&mut s)[..], [Body::Logout(_)]));
        s.handle(msg(Body::Kick(Kick { reason: KickReason::LoggedOut as i32, message: String::new() })), t0);
        assert_eq!(events(&mut s), vec![ControlEvent::Ended(SessionEnd::LoggedOut)]);

        let mut s = in_game(t0);
        s.logout(t0);
        assert!(!s.connection_lost(t0));
        assert_eq!(events(&mut s), vec![ControlEvent::Ended(SessionEnd::LoggedOut)]);

        let mut s = in_game(t0);
        s.logout(t0);
        s.handle_timeout(at(t0, 1000));
        assert_eq!(events(&mut s), vec![ControlEvent::Ended(SessionEnd::TimedOut(Stage::Logout))]);
    }

    #[test]
    fn a_zone_transfer_makes_the_next_connection_send_the_transfer_token() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        let transfer = ZoneTransfer {
            zone: "east".into(),
            address: "127.0.0.1:7787".into(),
            transfer_token: b"tt".to_vec(),
            ..Default::default()
        };
        s.handle(msg(Body::ZoneTransfer(transfer.clone())), t0);
        assert_eq!(events(&mut s), vec![ControlEvent::Transfer(transfer)]);
        assert_eq!(s.state(), ControlState::Idle);
        s.connected(at(t0, 100));
        s.handle(msg(hello_ok()), at(t0, 110));
        let out = sent(&mut s);
        assert!(
            matches!(&out[..], [Body::Hello(_), Body::TransferLogin(t)] if t.transfer_token == b"tt" && t.username == "ann"),
            "{out:?}"
        );
        s.handle(msg(login_ok(9, b"t9")), at(t0, 120));
        assert!(matches!(events(&mut s).last(), Some(ControlEvent::LoggedIn { resumed: false, .. })));
    }

    #[test]
    fn in_game_messages_reach_the_application_and_keepalive_pings_measure_the_rtt() {
        let t0 = Instant::now();
        let mut s = in_game(t0);
        s.handle(msg(Body::ChatMessage(ChatMessage { text: "hi".into(), ..Default::default() })), t0);
        assert!(matches!(&events(&mut s)[..], [ControlEvent::Message(Body::ChatMessage(_))]));
        assert_eq!(s.poll_timeout(), Some(at(t0, 10_000)));
        s.handle_timeout(at(t0, 10_000));
        let out = sent(&mut s);
        let [Body::Ping(ping)] = &out[..] else { panic!("{out:?}") };
        assert_eq!((ping.nonce, ping.client_time_us), (1, 10_000_000));
        s.handle(
            msg(Body::Pong(Pong { nonce: 1, client_time_us: ping.client_time_us, server_tick: 5 })),
            at(t0, 10_030),
        );
        assert!(matches!(&events(&mut s)[..], [ControlEvent::Pong { rtt_us: Some(30_000), .. }]));
    }

    #[test]
    fn a_message_out_of_place_is_reported_not_fatal() {
        let t0 = Instant::now();
        let mut s = ControlSession::new(bot_config(t0), Some(ann()));
        s.connected(t0);
        s.handle(msg(Body::ChatMessage(ChatMessage::default())), t0);
        assert_eq!(events(&mut s), vec![ControlEvent::Unexpected("chat_message")]);
        assert_eq!(s.state(), ControlState::Greeting);
    }

    // ----- data channel ------------------------------------------------------------------------------------------

    fn keys() -> DataKeys {
        DataKeys::from_keying_material(&[7u8; 64])
    }

    /// The server's end of the channel, to seal what it sends and open what the client sends.
    struct Server {
        channel: DataChannel,
        buf: Vec<u8>,
    }

    impl Server {
        fn new(session_id: u64) -> Self {
            Self { channel: DataChannel::server(session_id, &keys()), buf: vec![0u8; 1500] }
        }

        fn seal_for_client(&mut self, body: DataBody) -> Vec<u8> {
            let n = self.channel.seal(&DataMessage::new(body), &mut self.buf).unwrap();
            self.buf[..n].to_vec()
        }

        /// What the client has queued, opened on the server side.
        fn open_from_client(&mut self, client: &mut DataSession) -> Vec<(usize, DataBody)> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1500];
            while let Some(sealed) = client.poll_transmit(&mut buf) {
                let n = sealed.unwrap();
                let msg = self.channel.open(&mut buf[..n]).unwrap();
                out.push((n, msg.body.unwrap()));
            }
            out
        }
    }

    fn data_config(t0: Instant) -> DataConfig {
        DataConfig { bind_timeout: Some(Duration::from_secs(5)), ..DataConfig::new(t0) }
    }

    #[test]
    fn binding_answers_the_challenge_and_the_welcome_binds() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let mut c = DataSession::new(42, &keys(), data_config(t0), t0);
        let out = server.open_from_client(&mut c);
        assert!(matches!(&out[..], [(1200, DataBody::UdpHello(h))] if h.session_id == 42), "a full-size hello");
        let mut d =
            server.seal_for_client(DataBody::UdpChallenge(UdpChallenge { session_id: 42, challenge: vec![3; 16] }));
        assert_eq!(c.handle_datagram(&mut d, at(t0, 10)), Ok(Received::Nothing));
        let out = server.open_from_client(&mut c);
        assert!(matches!(&out[..], [(_, DataBody::UdpChallengeResponse(r))] if r.challenge == vec![3; 16]));
        let mut d = server.seal_for_client(DataBody::UdpWelcome(UdpWelcome { session_id: 42, server_tick: 100 }));
        assert!(matches!(c.handle_datagram(&mut d, at(t0, 20)), Ok(Received::Welcome(_))));
        assert!(c.is_bound());
        assert_eq!(c.poll_timeout(), None, "no resends, no deadline once bound");
    }

    #[test]
    fn a_lost_hello_is_sent_again_every_200_ms_until_the_deadline() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let mut c = DataSession::new(42, &keys(), data_config(t0), t0);
        assert_eq!(server.open_from_client(&mut c).len(), 1);
        // The first hello is lost: nothing comes back.
        assert_eq!(c.poll_timeout(), Some(at(t0, 200)));
        c.handle_timeout(at(t0, 199)).unwrap();
        assert!(server.open_from_client(&mut c).is_empty());
        c.handle_timeout(at(t0, 200)).unwrap();
        assert!(matches!(&server.open_from_client(&mut c)[..], [(1200, DataBody::UdpHello(_))]));
        assert_eq!(c.poll_timeout(), Some(at(t0, 400)));
        assert_eq!(c.handle_timeout(at(t0, 5000)), Err(BindTimedOut));
    }

    #[test]
    fn a_snapshot_that_overtakes_the_welcome_binds_too() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let mut c = DataSession::new(42, &keys(), data_config(t0), t0);
        let mut d = server.seal_for_client(DataBody::Snapshot(Snapshot { tick: 5, ..Default::default() }));
        assert!(matches!(c.handle_datagram(&mut d, t0), Ok(Received::Snapshot(s)) if s.tick == 5));
        assert!(c.is_bound());
    }

    #[test]
    fn a_welcome_for_another_session_is_refused_and_forgeries_are_dropped() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let mut c = DataSession::new(42, &keys(), data_config(t0), t0);
        let mut d = server.seal_for_client(DataBody::UdpWelcome(UdpWelcome { session_id: 43, server_tick: 0 }));
        assert_eq!(c.handle_datagram(&mut d, t0), Err(WrongSession));
        let mut forged = server.seal_for_client(DataBody::UdpWelcome(UdpWelcome { session_id: 42, server_tick: 0 }));
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(c.handle_datagram(&mut forged, t0), Ok(Received::Rejected(_))));
        assert!(!c.is_bound());
    }

    #[test]
    fn server_pings_are_answered_and_own_pings_measure_the_rtt() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let config = DataConfig { rtt_ping: Some(Duration::from_secs(1)), ..data_config(t0) };
        let mut c = DataSession::new(42, &keys(), config, t0);
        server.open_from_client(&mut c);
        let mut d = server.seal_for_client(DataBody::UdpWelcome(UdpWelcome { session_id: 42, server_tick: 0 }));
        c.handle_datagram(&mut d, at(t0, 100)).unwrap();
        let mut d = server.seal_for_client(DataBody::Ping(Ping { nonce: 77, client_time_us: 5 }));
        assert_eq!(c.handle_datagram(&mut d, at(t0, 150)), Ok(Received::Nothing));
        assert!(
            matches!(&server.open_from_client(&mut c)[..], [(_, DataBody::Pong(p))] if p.nonce == 77 && p.client_time_us == 5)
        );
        assert_eq!(c.poll_timeout(), Some(at(t0, 100)));
        c.handle_timeout(at(t0, 200)).unwrap();
        let out = server.open_from_client(&mut c);
        let [(_, DataBody::Ping(p))] = &out[..] else { panic!("{out:?}") };
        assert_eq!(p.client_time_us, 200_000);
        assert_eq!(c.poll_timeout(), Some(at(t0, 1200)));
        let mut d = server.seal_for_client(DataBody::Pong(Pong { nonce: 0, client_time_us: 200_000, server_tick: 9 }));
        let got = c.handle_datagram(&mut d, at(t0, 212)).unwrap();
        assert!(matches!(got, Received::Pong { rtt: Some(rtt), .. } if rtt == Duration::from_millis(12)));
    }

    #[test]
    fn inputs_are_sequenced_from_one() {
        let t0 = Instant::now();
        let mut server = Server::new(42);
        let mut c = DataSession::new(42, &keys(), data_config(at(t0, T0_MS)), t0);
        server.open_from_client(&mut c);
        let first = c.input(Vec2 { x: 1.0, y: 0.0 }, 0, 0, at(t0, 50));
        let second = c.input(Vec2 { x: 0.0, y: 1.0 }, 2, 99, at(t0, 100));
        assert_eq!((first.sequence, second.sequence), (1, 2));
        assert_eq!(second.client_time_us, 100_000);
        let out = server.open_from_client(&mut c);
        assert!(matches!(&out[..], [(_, DataBody::Input(a)), (_, DataBody::Input(b))] if *a == first && *b == second));
    }
}
