//! The sans-IO control session: one TLS connection's protocol state, fed ciphertext and `Instant`s, yielding
//! ciphertext, events for the simulation and deadlines. No sockets here (rustls' `tlsserver-mio` split): the io
//! thread moves bytes in with [`ControlSession::read_tls`], out with [`ControlSession::write_tls`], and calls
//! [`ControlSession::handle_timeout`] at [`ControlSession::next_deadline`].
//!
//! What it decides on its own (transport, not gameplay): the TLS handshake, `Hello` version negotiation,
//! `Ping`/`Pong`, which messages each state allows, per-tick inbound credits with flood escalation, the
//! handshake and idle timeouts, the outbound buffer cap. Everything else becomes a [`SessionEvent::Message`].
//!
//! Invariant: once [`ControlSession::is_closing`] is true no further event is produced; the io layer flushes what
//! is left (the `Kick` and TLS close_notify) and then drops the socket.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use crate::net::framing::{encode_frame, FrameDecoder, FrameError};
use crate::proto::{
    control_message::Body, ControlMessage, HelloOk, Kick, KickReason, LoginError, LoginOk, Pong, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};

/// Where a session stands in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// TLS handshake in progress.
    Handshaking,
    /// TLS done, waiting for `Hello`.
    AwaitHello,
    /// Version agreed; may register, log in or enter by transfer.
    Greeted,
    /// A login request is with the simulation/workers; only Ping is allowed until it answers.
    Authenticating,
    /// Logged in and playing.
    InGame,
    /// Closing: flushing the last frames and close_notify.
    Closing,
}

/// Limits applied by the session; from `[net]` and `[game]`.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest control frame.
    pub max_frame: usize,
    /// TLS + Hello must complete within this.
    pub handshake_timeout: Duration,
    /// Silence longer than this closes the session.
    pub idle_timeout: Duration,
    /// Cap of buffered outbound bytes (plaintext + ciphertext inside rustls).
    pub write_buffer_cap: usize,
    /// Messages accepted per credit window; the excess is dropped.
    pub credits_per_window: u32,
    /// Length of the credit window (one tick).
    pub credit_window: Duration,
    /// Consecutive flooded windows before the session is kicked.
    pub flood_kick_windows: u32,
    /// A connection must be logged in (or entered by transfer) within this of being accepted; time spent
    /// waiting for the server's own answer (state `Authenticating`) does not count against the client.
    pub login_timeout: Duration,
    /// Register/Login/TransferLogin requests one connection may make; the next one closes it.
    pub max_login_attempts: u32,
    /// After the session decides to close, the Kick and close_notify may take this long to flush; then the
    /// socket is dropped whatever is left (a peer that never reads cannot hold its slot).
    pub close_linger: Duration,
    /// Zone name reported in `HelloOk`.
    pub zone: String,
}

impl SessionLimits {
    /// Limits from the configuration.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max_frame: c.net.max_frame_bytes,
            handshake_timeout: Duration::from_millis(c.net.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(c.net.idle_timeout_ms),
            write_buffer_cap: c.net.write_buffer_cap_bytes,
            credits_per_window: c.net.inbound_credits_per_tick,
            credit_window: Duration::from_secs(1) / c.game.tick_rate.max(1),
            flood_kick_windows: c.net.flood_kick_ticks,
            login_timeout: Duration::from_millis(c.net.login_timeout_ms),
            max_login_attempts: c.net.max_login_attempts,
            close_linger: Duration::from_millis(c.net.close_linger_ms),
            zone: c.server.zone.clone(),
        }
    }
}

/// Why a session ended; also the label of the `closed by reason` metric.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed (close_notify or EOF).
    PeerClosed,
    /// TLS failed (bad handshake, refused version, corrupt record).
    Tls(String),
    /// Framing error (oversized, garbage, truncated).
    Frame(String),
    /// A message not allowed in the current state, or a bad Hello.
    Protocol(String),
    /// Handshake not completed in time.
    HandshakeTimeout,
    /// Silent for too long.
    IdleTimeout,
    /// Too many messages for too long.
    Flood,
    /// Outbound buffer full: the client does not read.
    SlowConsumer,
    /// Closed by the server (simulation or shutdown) with this kick reason.
    Kicked(KickReason),
    /// The socket failed.
    Io(io::ErrorKind),
    /// Not logged in within `net.login_timeout_ms` of being accepted.
    LoginTimeout,
    /// More login attempts on one connection than `net.max_login_attempts`.
    LoginAttempts,
    /// Closed to make room: the server was at `net.max_connections` and this was its oldest connection that had
    /// not logged in.
    Evicted,
}

impl CloseReason {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Tls(_) => "tls_error",
            CloseReason::Frame(_) => "frame_error",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Flood => "flood",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Kicked(_) => "kicked",
            CloseReason::Io(_) => "io_error",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::LoginAttempts => "login_attempts",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// What the session reports to the io layer.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The TLS handshake and Hello are done.
    Greeted {
        /// The protocol version agreed (the client's).
        protocol: u32,
    },
    /// A message for the simulation.
    Message(ControlMessage),
    /// An inbound message was dropped because the session ran out of credits this window.
    Dropped,
    /// The session is closing; no more events follow.
    Closed(CloseReason),
}

/// Failure to queue an outbound message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closing or not yet through the TLS handshake.
    #[error("session is not open")]
    NotOpen,
    /// The message is larger than the maximum frame.
    #[error("message too large for one frame")]
    TooLarge,
    /// The outbound buffer is full; the session is now closing as a slow consumer.
    #[error("outbound buffer full")]
    SlowConsumer,
}

/// Frames and bytes moved since the last [`ControlSession::take_traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Control frames decoded.
    pub frames_in: u64,
    /// Control frames queued for sending.
    pub frames_out: u64,
    /// Ciphertext bytes read from the socket.
    pub bytes_in: u64,
    /// Ciphertext bytes written to the socket.
    pub bytes_out: u64,
}

/// One client's control channel.
pub struct ControlSession {
    traffic: Traffic,
    tls: ServerConnection,
    decoder: FrameDecoder,
    state: SessionState,
    limits: SessionLimits,
    handshake_deadline: Instant,
    login_deadline: Instant,
    /// Set on entering `Closing`: past it the socket is dropped even with ciphertext left to send.
    close_deadline: Option<Instant>,
    /// The socket failed (reset, broken pipe) or the close linger expired: nothing more can be sent.
    abandoned: bool,
    /// The latest `now` this session was given (closing has no `now` of its own).
    clock: Instant,
    login_attempts: u32,
    last_activity: Instant,
    window_start: Instant,
    window_used: u32,
    flooded_windows: u32,
    events: VecDeque<SessionEvent>,
    scratch: Vec<u8>,
}

impl ControlSession {
    /// A new session for a connection accepted at `now`.
    pub fn new(config: Arc<ServerConfig>, limits: SessionLimits, now: Instant) -> Result<Self, rustls::Error> {
        let mut tls = ServerConnection::new(config)?;
        // rustls refuses to buffer past this; a short write means the client is not reading (see `send`).
        tls.set_buffer_limit(Some(limits.write_buffer_cap));
        Ok(Self {
            traffic: Traffic::default(),
            tls,
            decoder: FrameDecoder::new(limits.max_frame),
            state: SessionState::Handshaking,
            handshake_deadline: now + limits.handshake_timeout,
            login_deadline: now + limits.login_timeout,
            close_deadline: None,
            abandoned: false,
            clock: now,
            login_attempts: 0,
            last_activity: now,
            window_start: now,
            window_used: 0,
            flooded_windows: 0,
            events: VecDeque::new(),
            scratch: Vec::with_capacity(256),
            limits,
        })
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// True once the session decided to close; flush with `write_tls`, then drop the socket.
    pub fn is_closing(&self) -> bool {
        self.state == SessionState::Closing
    }

    /// True when there is ciphertext to send (and a socket that can still take it).
    pub fn wants_write(&self) -> bool {
        !self.abandoned && self.tls.wants_write()
    }

    /// True once the socket can be dropped: the session is closing and its last bytes are flushed, or the socket
    /// failed, or the close linger expired. Every way a connection ends reaches this within
    /// `close_linger` of the decision to close, so no ending can hold a slot or a file descriptor.
    pub fn is_finished(&self) -> bool {
        self.is_closing() && !self.wants_write()
    }

    /// True once the client has logged in (or entered by transfer).
    pub fn is_authenticated(&self) -> bool {
        self.state == SessionState::InGame
    }

    /// Traffic since the last call (the io thread adds it to its counters).
    pub fn take_traffic(&mut self) -> Traffic {
        std::mem::take(&mut self.traffic)
    }

    /// Next event for the io layer.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Reads ciphertext from `rd` until it would block, then processes it. Returns `Ok(true)` when the peer sent
    /// EOF. Socket errors other than `WouldBlock`/`Interrupted` close the session.
    pub fn read_tls(&mut self, rd: &mut dyn Read, now: Instant) -> bool {
        self.clock = now;
        let mut eof = false;
        loop {
            if self.is_closing() {
                return eof;
            }
            match self.tls.read_tls(rd) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.traffic.bytes_in += n as u64;
                    self.last_activity = now;
                    self.process(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // rustls reports a full plaintext buffer as "other" when the peer sends faster than we decode:
                    // that only happens to a flooding peer, because we decode everything after each read. A
                    // socket error (a reset above all) means nothing more can be sent either.
                    self.close_without_kick(CloseReason::Io(e.kind()));
                    if e.kind() != io::ErrorKind::Other {
                        self.abandoned = true;
                    }
                    return eof;
                }
            }
        }
        if eof && !self.is_closing() {
            let reason = match self.decoder.finish() {
                Ok(()) => CloseReason::PeerClosed,
                Err(e) => CloseReason::Frame(e.to_string()),
            };
            self.close_without_kick(reason);
        }
        eof
    }

    /// Writes pending ciphertext to `wr` until done or it would block.
    ///
    /// A write error (EPIPE, ECONNRESET) closes the session and abandons what is left: the socket will never take
    /// it, so [`ControlSession::is_finished`] becomes true at once.
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<()> {
        while self.wants_write() {
            match self.tls.write_tls(wr) {
                Ok(0) => {
                    self.close_without_kick(CloseReason::Io(io::ErrorKind::WriteZero));
                    self.abandoned = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => self.traffic.bytes_out += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close_without_kick(CloseReason::Io(e.kind()));
                    self.abandoned = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The earliest instant at which [`ControlSession::handle_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.last_activity + self.limits.idle_timeout;
        match self.state {
            SessionState::Handshaking | SessionState::AwaitHello => Some(self.handshake_deadline),
            SessionState::Closing => self.close_deadline.filter(|_| !self.abandoned),
            SessionState::Greeted => Some(idle.min(self.login_deadline)),
            SessionState::Authenticating | SessionState::InGame => Some(idle),
        }
    }

    /// Counts authenticated traffic on the session's other channel (UDP inputs, pongs) as activity at `at`: a
    /// player who plays over UDP and says nothing over TLS is not idle. Only once logged in.
    pub fn note_activity(&mut self, at: Instant) {
        if self.state == SessionState::InGame && at > self.last_activity {
            self.last_activity = at;
        }
    }

    /// Applies the handshake and idle timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        match self.state {
            SessionState::Handshaking if now >= self.handshake_deadline => {
                self.close_without_kick(CloseReason::HandshakeTimeout)
            }
            SessionState::AwaitHello if now >= self.handshake_deadline => {
                self.close(KickReason::IdleTimeout, "no Hello in time", CloseReason::HandshakeTimeout)
            }
            SessionState::Greeted if now >= self.login_deadline => {
                self.close(KickReason::LoginTimeout, "not logged in in time", CloseReason::LoginTimeout)
            }
            SessionState::Greeted | SessionState::Authenticating | SessionState::InGame
                if now >= self.last_activity + self.limits.idle_timeout =>
            {
                self.close(KickReason::IdleTimeout, "idle for too long", CloseReason::IdleTimeout)
            }
            SessionState::Closing if self.close_deadline.is_some_and(|d| now >= d) => {
                // The peer does not take our last bytes: give up on them, not on the slot.
                self.abandoned = true;
            }
            _ => {}
        }
    }

    /// Queues `msg` for the client; a `Kick` closes. Logging in and failing to are not messages but decisions:
    /// [`ControlSession::admit`] and [`ControlSession::refuse`].
    pub fn send(&mut self, msg: &ControlMessage) -> Result<(), SendError> {
        if matches!(self.state, SessionState::Handshaking | SessionState::Closing) {
            return Err(SendError::NotOpen);
        }
        if let Some(Body::Kick(k)) = &msg.body {
            let reason = KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified);
            self.close(reason, &k.message.clone(), CloseReason::Kicked(reason));
            return Ok(());
        }
        self.write_frame(msg)
    }

    /// The simulation admitted the session (a login, registration, transfer or resume succeeded): sends `ok` and
    /// enters the game.
    pub fn admit(&mut self, ok: &LoginOk) -> Result<(), SendError> {
        if matches!(self.state, SessionState::Handshaking | SessionState::Closing) {
            return Err(SendError::NotOpen);
        }
        self.write_frame(&ControlMessage::new(Body::LoginOk(ok.clone())))?;
        self.state = SessionState::InGame;
        Ok(())
    }

    /// The simulation refused a login: sends `error`; the session may try again within its attempt limit.
    pub fn refuse(&mut self, error: &LoginError) -> Result<(), SendError> {
        if matches!(self.state, SessionState::Handshaking | SessionState::Closing) {
            return Err(SendError::NotOpen);
        }
        self.write_frame(&ControlMessage::new(Body::LoginError(error.clone())))?;
        if self.state == SessionState::Authenticating {
            // The server's own time answering does not count against the client's login deadline. "Busy,
            // retry" tested no password and "already online" a right one: neither uses up an attempt (the
            // limit bounds password guesses per connection).
            self.login_deadline = self.login_deadline.max(self.clock + self.limits.login_timeout / 2);
            use crate::proto::LoginErrorReason::{LoginErrorAlreadyOnline, LoginErrorServerBusy};
            if error.reason == LoginErrorServerBusy as i32 || error.reason == LoginErrorAlreadyOnline as i32 {
                self.login_attempts = self.login_attempts.saturating_sub(1);
            }
            self.state = SessionState::Greeted
        }
        Ok(())
    }

    /// Closes with a `Kick` (when TLS is up) and close_notify.
    pub fn close(&mut self, kick: KickReason, message: &str, reason: CloseReason) {
        if self.is_closing() {
            return;
        }
        if self.state != SessionState::Handshaking {
            // Best effort: a client whose buffer is full does not get the reason.
            let _ = self.write_frame(&ControlMessage::new(Body::Kick(Kick::new(kick, message))));
        }
        self.close_without_kick(reason);
    }

    /// RFC 5705 keying material for the UDP data channel, bound to `context` (the session id).
    pub fn export_keying_material(&self, label: &[u8], context: &[u8]) -> Result<[u8; 64], rustls::Error> {
        self.tls.export_keying_material([0u8; 64], label, Some(context))
    }

    /// The negotiated TLS version, once the handshake is done.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    fn close_without_kick(&mut self, reason: CloseReason) {
        if self.is_closing() {
            return;
        }
        self.state = SessionState::Closing;
        self.close_deadline = Some(self.clock + self.limits.close_linger);
        self.tls.send_close_notify();
        self.events.push_back(SessionEvent::Closed(reason));
    }

    fn write_frame(&mut self, msg: &ControlMessage) -> Result<(), SendError> {
        self.scratch.clear();
        encode_frame(msg, self.limits.max_frame, &mut self.scratch).map_err(|_| SendError::TooLarge)?;
        match self.tls.writer().write(&self.scratch) {
            Ok(n) if n == self.scratch.len() => {
                self.traffic.frames_out += 1;
                Ok(())
            }
            _ => {
                // A partial frame may be in the buffer now; the stream is unusable, so the session ends.
                self.close_without_kick(CloseReason::SlowConsumer);
                Err(SendError::SlowConsumer)
            }
        }
    }

    fn process(&mut self, now: Instant) {
        if let Err(e) = self.tls.process_new_packets() {
            // rustls has queued the matching alert; write_tls sends it.
            self.close_without_kick(CloseReason::Tls(e.to_string()));
            return;
        }
        if self.state == SessionState::Handshaking && !self.tls.is_handshaking() {
            self.state = SessionState::AwaitHello;
        }
        loop {
            let spare = self.decoder.spare();
            if spare.is_empty() {
                // A whole frame is buffered: decode before reading more.
                if !self.decode_frames(now) {
                    return;
                }
                continue;
            }
            match self.tls.reader().read(spare) {
                Ok(0) => break, // close_notify received; EOF follows on the socket
                Ok(n) => {
                    self.decoder.filled(n);
                    if !self.decode_frames(now) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.close_without_kick(CloseReason::Tls(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Decodes every complete frame; false once the session is closing.
    fn decode_frames(&mut self, now: Instant) -> bool {
        loop {
            if self.is_closing() {
                return false;
            }
            match self.decoder.decode() {
                Ok(Some(msg)) => self.on_message(msg, now),
                Ok(None) => return true,
                Err(e) => {
                    let reason = CloseReason::Frame(e.to_string());
                    self.close(FrameError::kick_reason(&e), &e.to_string(), reason);
                    return false;
                }
            }
        }
    }

    fn on_message(&mut self, msg: ControlMessage, now: Instant) {
        self.traffic.frames_in += 1;
        if !self.take_credit(now) {
            return;
        }
        let Some(body) = &msg.body else { return };
        let allowed = match (self.state, body) {
            (SessionState::Closing | SessionState::Handshaking, _) => false,
            (_, Body::Ping(_)) => true,
            (SessionState::AwaitHello, Body::Hello(_)) => true,
            (
                SessionState::Greeted,
                Body::Register(_)
                | Body::Login(_)
                | Body::TransferLogin(_)
                | Body::TokenLogin(_)
                | Body::Resume(_)
                | Body::Logout(_),
            ) => true,
            (SessionState::InGame, Body::Chat(_) | Body::Logout(_) | Body::UdpRebind(_)) => true,
            _ => false,
        };
        if !allowed {
            let text = format!("{} is not allowed in state {:?}", msg.kind(), self.state);
            self.close(KickReason::ProtocolError, &text, CloseReason::Protocol(text.clone()));
            return;
        }
        match body {
            Body::Ping(p) => {
                let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: 0 };
                let _ = self.write_frame(&ControlMessage::new(Body::Pong(pong)));
            }
            Body::Hello(h) => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) {
                    // "Upgrade me", not "you sent garbage": a LoginError a client can act on, then the close
                    // (without a Kick: the LoginError is the reason).
                    let text = format!(
                        "protocol version {} is not supported (server speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})",
                        h.protocol_version
                    );
                    let refusal = crate::proto::LoginError {
                        reason: crate::proto::LoginErrorReason::LoginErrorProtocolVersion as i32,
                        message: text.clone(),
                        retry_after_ms: 0,
                    };
                    let _ = self.write_frame(&ControlMessage::new(Body::LoginError(refusal)));
                    self.close_without_kick(CloseReason::Protocol(text));
                    return;
                }
                let ok = HelloOk {
                    protocol_version: h.protocol_version,
                    server_version: env!("CARGO_PKG_VERSION").into(),
                    max_frame_bytes: self.limits.max_frame as u32,
                    zone: self.limits.zone.clone(),
                };
                if self.write_frame(&ControlMessage::new(Body::HelloOk(ok))).is_ok() {
                    self.state = SessionState::Greeted;
                    self.events.push_back(SessionEvent::Greeted { protocol: h.protocol_version });
                }
            }
            Body::Register(_) | Body::Login(_) | Body::TransferLogin(_) | Body::TokenLogin(_) | Body::Resume(_) => {
                self.login_attempts += 1;
                if self.login_attempts > self.limits.max_login_attempts {
                    let text = format!("more than {} login attempts on one connection", self.limits.max_login_attempts);
                    self.close(KickReason::LoginAttempts, &text, CloseReason::LoginAttempts);
                    return;
                }
                self.state = SessionState::Authenticating;
                self.events.push_back(SessionEvent::Message(msg));
            }
            _ => self.events.push_back(SessionEvent::Message(msg)),
        }
    }

    /// Per-window inbound credits. Over budget: drop and count; flooding for `flood_kick_windows` windows in a
    /// row: kick.
    fn take_credit(&mut self, now: Instant) -> bool {
        if now >= self.window_start + self.limits.credit_window {
            let flooded = self.window_used > self.limits.credits_per_window;
            self.flooded_windows = if flooded { self.flooded_windows + 1 } else { 0 };
            self.window_start = now;
            self.window_used = 0;
            if self.flooded_windows >= self.limits.flood_kick_windows {
                self.close(KickReason::Flood, "too many messages", CloseReason::Flood);
                return false;
            }
        }
        self.window_used = self.window_used.saturating_add(1);
        if self.window_used > self.limits.credits_per_window {
            self.events.push_back(SessionEvent::Dropped);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! A real rustls client driven against the session in memory with a virtual clock (quinn's `Pair` idea).
    use super::*;
    use crate::net::tls::{client_config, generate_dev_cert, ServerTrust};
    use crate::proto::{Chat, Hello, Login, Ping};
    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;

    struct Pair {
        server: ControlSession,
        client: ClientConnection,
        now: Instant,
        client_decoder: FrameDecoder,
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            max_frame: 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            write_buffer_cap: 64 * 1024,
            credits_per_window: 8,
            credit_window: Duration::from_millis(50),
            flood_kick_windows: 3,
            login_timeout: Duration::from_secs(20),
            max_login_attempts: 3,
            close_linger: Duration::from_secs(2),
            zone: "test-zone".into(),
        }
    }

    impl Pair {
        fn new(limits: SessionLimits) -> Self {
            let (certs, key, _) = generate_dev_cert().unwrap();
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_protocol_versions(crate::net::tls::VERSIONS)
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap();
            let now = Instant::now();
            let server = ControlSession::new(Arc::new(config), limits, now).unwrap();
            let cc = client_config(&ServerTrust::InsecureAcceptAny).unwrap();
            let client = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
            Pair { server, client, now, client_decoder: FrameDecoder::new(1 << 16) }
        }

        /// Moves bytes both ways until quiet.
        fn drive(&mut self) {
            for _ in 0..20 {
                let mut c2s = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut c2s).unwrap();
                }
                if !c2s.is_empty() {
                    self.server.read_tls(&mut Socket(&c2s), self.now);
                }
                let mut s2c = Vec::new();
                self.server.write_tls(&mut s2c).unwrap();
                if !s2c.is_empty() {
                    let mut rd = &s2c[..];
                    while !rd.is_empty() {
                        self.client.read_tls(&mut rd).unwrap();
                    }
                    let _ = self.client.process_new_packets();
                }
                if c2s.is_empty() && s2c.is_empty() {
                    break;
                }
            }
        }

        fn client_send(&mut self, msg: ControlMessage) {
            let mut buf = Vec::new();
            encode_frame(&msg, 1 << 16, &mut buf).unwrap();
            self.client.writer().write_all(&buf).unwrap();
            self.drive();
        }

        fn client_raw(&mut self, bytes: &[u8]) {
            self.client.writer().write_all(bytes).unwrap();
            self.drive();
        }

        fn client_received(&mut self) -> Vec<ControlMessage> {
            let mut buf = [0u8; 4096];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.client_decoder.feed(&buf[..n]);
                    }
                    Err(_) => break,
                }
            }
            let mut out = Vec::new();
            while let Ok(Some(m)) = self.client_decoder.decode() {
                out.push(m);
            }
            out
        }

        fn events(&mut self) -> Vec<SessionEvent> {
            std::iter::from_fn(|| self.server.poll_event()).collect()
        }

        fn greet(&mut self) {
            self.drive();
            assert_eq!(self.server.state(), SessionState::AwaitHello, "{:?}", self.server.events);
            self.client_send(hello(PROTOCOL_VERSION));
            assert_eq!(self.server.state(), SessionState::Greeted);
            let got = self.client_received();
            assert!(matches!(got[0].body, Some(Body::HelloOk(_))), "{got:?}");
            assert_eq!(self.events(), vec![SessionEvent::Greeted { protocol: PROTOCOL_VERSION }]);
        }
    }

    /// A non-blocking socket's read side: `WouldBlock` when drained (a slice reader would report EOF).
    struct Socket<'a>(&'a [u8]);

    impl Read for Socket<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.0.read(buf)
        }
    }

    #[test]
    fn peer_eof_closes_the_session() {
        let mut p = Pair::new(limits());
        p.greet();
        assert!(p.server.read_tls(&mut &[][..], p.now));
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::PeerClosed)]);
    }

    fn hello(v: u32) -> ControlMessage {
        ControlMessage::new(Body::Hello(Hello { protocol_version: v, client_name: "test".into() }))
    }

    fn kick_reason(msgs: &[ControlMessage]) -> Option<KickReason> {
        msgs.iter().find_map(|m| match &m.body {
            Some(Body::Kick(k)) => KickReason::try_from(k.reason).ok(),
            _ => None,
        })
    }

    #[test]
    fn ping_is_answered_before_login() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_send(ControlMessage::new(Body::Ping(Ping { nonce: 42, client_time_us: 9 })));
        let got = p.client_received();
        assert!(matches!(&got[0].body, Some(Body::Pong(Pong { nonce: 42, client_time_us: 9, .. }))), "{got:?}");
    }

    #[test]
    fn login_is_forwarded_and_login_ok_enters_the_game() {
        let mut p = Pair::new(limits());
        p.greet();
        let login = ControlMessage::new(Body::Login(Login { username: "a".into(), password: "b".into() }));
        p.client_send(login.clone());
        assert_eq!(p.events(), vec![SessionEvent::Message(login)]);
        assert_eq!(p.server.state(), SessionState::Authenticating);
        p.server.admit(&LoginOk::default()).unwrap();
        assert_eq!(p.server.state(), SessionState::InGame);
        let chat = ControlMessage::new(Body::Chat(Chat { channel: 0, text: "hi".into() }));
        p.client_send(chat.clone());
        assert_eq!(p.events(), vec![SessionEvent::Message(chat)]);
    }

    #[test]
    fn chat_before_login_is_a_protocol_error_with_a_kick() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_send(ControlMessage::new(Body::Chat(Chat { channel: 0, text: "hi".into() })));
        assert!(p.server.is_closing());
        assert!(matches!(p.events()[..], [SessionEvent::Closed(CloseReason::Protocol(_))]));
        assert_eq!(kick_reason(&p.client_received()), Some(KickReason::ProtocolError));
    }

    #[test]
    fn wrong_protocol_version_is_answered_login_error_protocol_version_not_a_protocol_error() {
        let mut p = Pair::new(limits());
        p.drive();
        p.client_send(hello(99));
        assert!(p.server.is_closing());
        let got = p.client_received();
        assert!(
            matches!(&got[..], [ControlMessage { body: Some(Body::LoginError(e)) }]
                if e.reason == crate::proto::LoginErrorReason::LoginErrorProtocolVersion as i32
                    && e.message.contains("server speaks 1")),
            "{got:?}"
        );
        assert_eq!(kick_reason(&got), None, "an upgrade notice, not a kick");
    }

    #[test]
    fn oversized_frame_closes_with_protocol_error() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_raw(&(5000u32).to_be_bytes());
        assert!(matches!(p.events()[..], [SessionEvent::Closed(CloseReason::Frame(_))]));
        assert_eq!(kick_reason(&p.client_received()), Some(KickReason::ProtocolError));
    }

    #[test]
    fn garbage_frame_closes_with_protocol_error() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_raw(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(p.events()[..], [SessionEvent::Closed(CloseReason::Frame(_))]));
    }

    #[test]
    fn silent_connection_is_closed_at_the_handshake_timeout() {
        let mut p = Pair::new(limits());
        let deadline = p.server.next_deadline().unwrap();
        p.server.handle_timeout(deadline - Duration::from_millis(1));
        assert!(!p.server.is_closing());
        p.server.handle_timeout(deadline);
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::HandshakeTimeout)]);
    }

    #[test]
    fn idle_session_is_kicked() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_send(ControlMessage::new(Body::Login(Login { username: "a".into(), password: "b".into() })));
        p.server.admit(&LoginOk::default()).unwrap();
        p.events();
        let deadline = p.server.next_deadline().unwrap();
        p.server.handle_timeout(deadline);
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::IdleTimeout)]);
        p.drive();
        assert_eq!(kick_reason(&p.client_received()), Some(KickReason::IdleTimeout));
    }

    #[test]
    fn udp_activity_keeps_a_logged_in_session_from_the_idle_timeout() {
        let mut p = Pair::new(limits());
        p.greet();
        p.client_send(ControlMessage::new(Body::Login(Login { username: "a".into(), password: "b".into() })));
        p.server.admit(&LoginOk::default()).unwrap();
        p.events();
        let first = p.server.next_deadline().unwrap();
        p.server.note_activity(first - Duration::from_secs(1));
        let later = p.server.next_deadline().unwrap();
        assert_eq!(later, first + limits().idle_timeout - Duration::from_secs(1));
        p.server.handle_timeout(first);
        assert!(!p.server.is_closing(), "heard over UDP a second ago: not idle");
        p.server.handle_timeout(later);
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::IdleTimeout)]);
    }

    #[test]
    fn flood_drops_then_kicks() {
        let mut p = Pair::new(limits());
        p.greet();
        let ping = ControlMessage::new(Body::Ping(Ping { nonce: 1, client_time_us: 0 }));
        let mut dropped = 0;
        for window in 0..4 {
            for _ in 0..12 {
                p.client_send(ping.clone());
            }
            dropped += p.events().iter().filter(|e| **e == SessionEvent::Dropped).count();
            if p.server.is_closing() {
                assert!(window >= 2, "kicked too early, at window {window}");
                break;
            }
            p.now += Duration::from_millis(50);
        }
        assert!(dropped >= 4 * 2, "excess messages are dropped, got {dropped}");
        assert!(p.server.is_closing(), "sustained flood is kicked");
        p.drive();
        assert_eq!(kick_reason(&p.client_received()), Some(KickReason::Flood));
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_as_slow_consumer() {
        let mut l = limits();
        l.write_buffer_cap = 4096;
        let mut p = Pair::new(l);
        p.greet();
        let chat = ControlMessage::new(Body::ChatMessage(crate::proto::ChatMessage {
            text: "x".repeat(500),
            ..Default::default()
        }));
        let mut result = Ok(());
        for _ in 0..20 {
            result = p.server.send(&chat);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SendError::SlowConsumer));
        assert!(matches!(p.events()[..], [SessionEvent::Closed(CloseReason::SlowConsumer)]));
    }

    /// A socket whose every read and write fails as a reset one does.
    struct Reset;

    impl Read for Reset {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }

    impl Write for Reset {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A socket that takes nothing (the peer never reads and its window is full).
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reset_after_the_handshake_finishes_the_session_at_once() {
        let mut p = Pair::new(limits());
        p.greet();
        p.server.read_tls(&mut Reset, p.now);
        assert!(matches!(p.events()[..], [SessionEvent::Closed(CloseReason::Io(io::ErrorKind::ConnectionReset))]));
        assert!(p.server.is_finished(), "nothing can be sent on a reset socket: the slot is free at once");
        assert!(p.server.write_tls(&mut Reset).is_ok(), "no write is attempted");
    }

    #[test]
    fn a_write_error_while_closing_finishes_the_session() {
        let mut p = Pair::new(limits());
        p.greet();
        p.server.close(KickReason::Flood, "bye", CloseReason::Flood);
        assert!(p.server.is_closing() && !p.server.is_finished(), "the Kick and close_notify are queued");
        assert!(p.server.write_tls(&mut Reset).is_err());
        assert!(p.server.is_finished(), "EPIPE while flushing the close frees the slot");
    }

    #[test]
    fn a_peer_that_never_reads_is_dropped_after_the_close_linger() {
        let mut p = Pair::new(limits());
        p.greet();
        p.server.close(KickReason::IdleTimeout, "bye", CloseReason::IdleTimeout);
        p.server.write_tls(&mut Full).unwrap();
        assert!(!p.server.is_finished());
        let deadline = p.server.next_deadline().expect("closing has a deadline");
        assert!(deadline <= p.now + limits().close_linger);
        p.server.handle_timeout(deadline);
        assert!(p.server.is_finished(), "the slot is not held by a peer that does not read");
        assert_eq!(p.server.next_deadline(), None);
    }

    #[test]
    fn a_greeted_connection_that_does_not_log_in_is_closed_at_the_login_deadline() {
        let mut l = limits();
        l.login_timeout = Duration::from_secs(10);
        let mut p = Pair::new(l);
        p.greet();
        let deadline = p.server.next_deadline().unwrap();
        assert_eq!(deadline, p.now + Duration::from_secs(10), "shorter than the idle timeout");
        // A ping now and then does not keep an unauthenticated connection alive.
        p.now += Duration::from_secs(5);
        p.client_send(ControlMessage::new(Body::Ping(Ping { nonce: 1, client_time_us: 0 })));
        assert_eq!(p.server.next_deadline(), Some(deadline));
        p.server.handle_timeout(deadline);
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::LoginTimeout)]);
        p.drive();
        assert_eq!(kick_reason(&p.client_received()), Some(KickReason::LoginTimeout));
    }

    #[test]
    fn the_fourth_login_attempt_on_one_connection_closes_it() {
        let mut p = Pair::new(limits());
        p.greet();
        let login = ControlMessage::new(Body::Login(Login { username: "a".into(), password: "b".into() }));
        let refused = LoginError {
            reason: crate::proto::LoginErrorReason::LoginErrorInvalidCredentials as i32,
            ..Default::default()
        };
        let busy =
            LoginError { reason: crate::proto::LoginErrorReason::LoginErrorServerBusy as i32, ..Default::default() };
        for attempt in 0..4 {
            p.client_send(login.clone());
            assert_eq!(p.events(), vec![SessionEvent::Message(login.clone())], "attempt {attempt}");
            // A busy answer tested no password and does not count.
            p.server.refuse(if attempt == 0 { &busy } else { &refused }).unwrap();
        }
        p.client_send(login.clone());
        assert_eq!(p.events(), vec![SessionEvent::Closed(CloseReason::LoginAttempts)]);
        p.drive();
        assert!(p
            .client_received()
            .iter()
            .any(|m| matches!(&m.body, Some(Body::Kick(k)) if k.reason == KickReason::LoginAttempts as i32)));
    }

    #[test]
    fn both_ends_export_the_same_udp_keying_material() {
        let mut p = Pair::new(limits());
        p.greet();
        let s = p.server.export_keying_material(b"EXPORTER-test", b"ctx").unwrap();
        let c = p.client.export_keying_material([0u8; 64], b"EXPORTER-test", Some(b"ctx")).unwrap();
        assert_eq!(s, c);
        let other = p.server.export_keying_material(b"EXPORTER-test", b"ctx2").unwrap();
        assert_ne!(s, other, "material is bound to the context");
    }
}
