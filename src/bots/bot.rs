//! One bot: a real game client as a non-blocking state machine, driven by its thread's mio `Poll` (see
//! [`super::driver`]). The protocol (Hello, `Register` falling back to `Login` when the name exists, busy retries,
//! resume tokens, `UdpHello` until `UdpWelcome`, keepalive pings, input sequencing) is the shared sans-IO
//! [`crate::client::session`]; a bot owns its sockets (TLS with rustls over a mio `TcpStream`, length-prefixed
//! frames, its own UDP socket), its behaviour and its measurements, and turns session events into report entries.
//!
//! ```text
//! Waiting --start_at--> Connecting --TCP up--> Online (the session greets, logs in, binds UDP, plays)
//!    Online --run over--> Closing --server closes / 1 s--> Done
//!    Online --drop (--drop-rate)--> Connecting (the session resumes with its token; refused: Login)
//!    (any) --error, kick, timeout--> Done(failed: kind)
//! ```
//!
//! The invariant a reader must not break: **nothing the server sends can panic a bot.** Every frame, datagram,
//! reason code and number from the server is checked; a misbehaving server becomes a failure kind in the report
//! (`protocol:*`, `kicked:*`, `login_refused:*`, ...), never an `unwrap`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::behaviour::Role;
use super::play::Play;
use super::stats::ThreadStats;
use crate::client::session::{
    ControlConfig, ControlEvent, ControlSession, ControlState, Credentials, DataConfig, DataSession, LoginPolicy,
    Received, SessionEnd, Stage,
};
use crate::net::framing::{encode_frame, FrameDecoder, FrameError};
use crate::net::udp::{DataKeys, EXPORTER_LABEL};
use crate::proto::{control_message::Body, Chat, KickReason, LoginErrorReason, Snapshot, Vec2};

/// What every bot of a run shares (read-only).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The server's game address (TLS on TCP; UDP goes to the same host on `LoginOk.udp_port`).
    pub server: SocketAddr,
    /// Name checked against the server's certificate.
    pub server_name: ServerName<'static>,
    /// TLS client configuration.
    pub tls: Arc<ClientConfig>,
    /// The process start: `client_time_us` counts microseconds from here.
    pub epoch: Instant,
    /// Samples (latency, rates) are recorded from here on: the end of the ramp.
    pub measure_from: Instant,
    /// Password of every bot account.
    pub password: String,
    /// TCP connect + TLS handshake + HelloOk must finish within this.
    pub handshake_timeout: Duration,
    /// Register/Login must be answered within this (argon2 queueing included).
    pub login_timeout: Duration,
    /// UdpHello must be welcomed within this.
    pub udp_timeout: Duration,
    /// Probability per second that a playing bot drops its connection and resumes (`--drop-rate`).
    pub drop_rate: f64,
    /// `Hello.protocol_version` (the `&protocol=` of a WebSocket bot's upgrade).
    pub protocol: u32,
}

/// Everything a bot may touch while handling an event.
pub(crate) struct Ctx<'a> {
    pub registry: &'a Registry,
    pub shared: &'a Shared,
    pub stats: &'a mut ThreadStats,
    /// Datagram buffer shared by the thread's bots (one event is handled at a time).
    pub buf: &'a mut [u8],
    pub now: Instant,
}

impl Ctx<'_> {
    pub(crate) fn now_us(&self) -> u64 {
        micros(self.now.saturating_duration_since(self.shared.epoch))
    }

    pub(crate) fn measuring(&self) -> bool {
        self.now >= self.shared.measure_from
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// TLS Ping interval: keeps the control channel under the server's idle timeout and measures its RTT.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping bot waits for the server to close after Logout.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Smallest wait before retrying a login the server called busy.
const MIN_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// TCP connect in progress (the Hello already waits in rustls).
    Connecting,
    /// TCP up: the session greets, logs in, binds and plays.
    Online,
    Closing,
    Done,
}

/// How one bot's run ended (the report counts these).
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub logged_in: bool,
    pub udp_bound: bool,
    pub snapshots: u64,
    pub saw_self_move: bool,
    /// The error kind that ended the bot early, if any.
    pub failure: Option<String>,
}

/// A control-channel failure, already reduced to its report kind.
struct Fail(String);

impl Fail {
    fn new(kind: impl Into<String>) -> Self {
        Fail(kind.into())
    }

    fn io(e: &io::Error) -> Self {
        Fail(format!("io:{:?}", e.kind()).to_lowercase())
    }

    fn frame(e: &FrameError) -> Self {
        Fail::new(match e {
            FrameError::Oversized { .. } => "protocol:oversized_frame",
            FrameError::ZeroLength => "protocol:zero_length_frame",
            FrameError::InvalidProtobuf(_) => "protocol:invalid_protobuf",
            FrameError::UnknownMessage => "protocol:unknown_message",
            _ => "protocol:bad_frame",
        })
    }
}

/// `LOGIN_ERROR_SERVER_BUSY` -> `server_busy`; unknown numbers keep their value.
pub(crate) fn login_reason_name(code: i32) -> String {
    match LoginErrorReason::try_from(code) {
        Ok(r) => r.as_str_name().trim_start_matches("LOGIN_ERROR_").to_lowercase(),
        Err(_) => format!("unknown_{code}"),
    }
}

/// `KICK_REASON_FLOOD` -> `flood`; unknown numbers keep their value.
pub(crate) fn kick_reason_name(code: i32) -> String {
    match KickReason::try_from(code) {
        Ok(r) => r.as_str_name().trim_start_matches("KICK_REASON_").to_lowercase(),
        Err(_) => format!("unknown_{code}"),
    }
}

/// One simulated player.
pub(crate) struct Bot {
    /// Account name.
    name: String,
    tcp_token: Token,
    udp_token: Token,
    start_at: Instant,
    state: State,
    /// The Closing state's deadline.
    deadline: Instant,
    tcp: Option<TcpStream>,
    tls: Option<ClientConnection>,
    tcp_interest: Interest,
    decoder: FrameDecoder,
    frame: Vec<u8>,
    connect_started: Instant,
    udp: Option<UdpSocket>,
    /// The protocol across connections (created at the first connect, from the run's settings).
    control: Option<ControlSession>,
    /// The UDP channel of the latest LoginOk.
    data: Option<DataSession>,
    play: Play,
    stopping: bool,
    /// Set from a deliberate drop until the resume is answered.
    resuming: Option<Instant>,
    /// xorshift state for the drop decisions (seeded per bot: runs repeat).
    rng: u64,
    /// The wake-up time currently in the driver's timer heap (the driver owns this field).
    pub scheduled: Option<Instant>,
    /// How the bot is doing.
    pub outcome: Outcome,
}

impl Bot {
    /// A bot that will start connecting at `start_at`. `slot` is its index in its thread (mio tokens derive from it).
    pub(crate) fn new(name: String, role: Role, seed: u64, slot: usize, start_at: Instant) -> Self {
        Self {
            name,
            tcp_token: Token(slot * 2),
            udp_token: Token(slot * 2 + 1),
            start_at,
            state: State::Waiting,
            deadline: start_at,
            tcp: None,
            tls: None,
            tcp_interest: Interest::READABLE,
            decoder: FrameDecoder::new(4096),
            frame: Vec::with_capacity(256),
            connect_started: start_at,
            udp: None,
            control: None,
            data: None,
            play: Play::new(role, seed, start_at),
            stopping: false,
            resuming: None,
            rng: seed | 1,
            scheduled: None,
            outcome: Outcome::default(),
        }
    }

    fn control_state(&self) -> ControlState {
        self.control.as_ref().map_or(ControlState::Idle, ControlSession::state)
    }

    /// Bound and in game: inputs flow.
    fn playing(&self) -> bool {
        self.state == State::Online && self.data.as_ref().is_some_and(DataSession::is_bound)
    }

    /// Coarse phase for the live progress line: 0 waiting, 1 connecting, 2 logging in, 3 playing, 4 done.
    pub(crate) fn phase(&self) -> u8 {
        match self.state {
            State::Waiting => 0,
            State::Connecting => 1,
            State::Online => match self.control_state() {
                ControlState::Idle | ControlState::Greeting => 1,
                ControlState::InGame | ControlState::LoggingOut if self.playing() => 3,
                ControlState::Ended => 4,
                _ => 2,
            },
            State::Closing => 3,
            State::Done => 4,
        }
    }

    /// Whether the bot has finished (failed, or closed after the run).
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// When the bot next needs [`Bot::on_timer`], if ever.
    pub(crate) fn wake(&self) -> Option<Instant> {
        match self.state {
            State::Waiting => Some(self.start_at),
            State::Closing => Some(self.deadline),
            State::Done => None,
            State::Connecting | State::Online => {
                let control = self.control.as_ref().and_then(ControlSession::poll_timeout);
                let data = self.data.as_ref().and_then(DataSession::poll_timeout);
                // Chat lines are checked on every input (20 Hz is plenty for a line every ~10 s).
                let input = self.playing().then_some(self.play.next_input);
                [control, data, input].into_iter().flatten().min()
            }
        }
    }

    /// Timers: start, the session's deadlines, resends and pings, inputs, chat.
    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let result = match self.state {
            State::Waiting if now >= self.start_at => self.connect(ctx),
            State::Closing if now >= self.deadline => {
                self.close(ctx);
                Ok(())
            }
            State::Connecting | State::Online => self.session_timers(ctx),
            _ => Ok(()),
        };
        self.settle(ctx, result);
    }

    fn session_timers(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        if let Some(control) = self.control.as_mut() {
            control.handle_timeout(ctx.now);
        }
        if let Some(data) = self.data.as_mut() {
            data.handle_timeout(ctx.now).map_err(|_| Fail::new("udp_bind_timeout"))?;
        }
        if self.playing() && ctx.now >= self.play.next_input {
            if let Some(period) = self.play.period() {
                if self.should_drop(ctx, period) {
                    return self.drop_and_resume(ctx);
                }
            }
            self.play(ctx)?;
        }
        self.pump(ctx)
    }

    /// The control socket is ready.
    pub(crate) fn on_tcp(&mut self, ctx: &mut Ctx<'_>) {
        let result = self.drive_tcp(ctx);
        self.settle(ctx, result);
    }

    /// The data socket is readable.
    pub(crate) fn on_udp(&mut self, ctx: &mut Ctx<'_>) {
        let result = self.drive_udp(ctx);
        self.settle(ctx, result);
    }

    /// The run is over: log out politely (in game), or give up (still logging in).
    pub(crate) fn stop(&mut self, ctx: &mut Ctx<'_>) {
        match self.state {
            State::Done | State::Closing => {}
            State::Waiting => self.fail(ctx, Fail::new("not_started")),
            State::Online if self.control_state() == ControlState::InGame => {
                self.stopping = true;
                if let Some(control) = self.control.as_mut() {
                    control.logout(ctx.now);
                }
                let result = self.send_control().and_then(|_| {
                    if let Some(tls) = self.tls.as_mut() {
                        tls.send_close_notify();
                    }
                    self.flush(ctx)
                });
                self.state = State::Closing;
                self.deadline = ctx.now + CLOSE_WAIT;
                if result.is_err() {
                    self.close(ctx);
                }
            }
            _ => self.fail(ctx, Fail::new("login_unfinished_at_end")),
        }
    }

    fn settle(&mut self, ctx: &mut Ctx<'_>, result: Result<(), Fail>) {
        if let Err(fail) = result {
            if self.stopping {
                self.close(ctx);
            } else {
                self.fail(ctx, fail);
            }
        }
    }

    #[cold]
    fn fail(&mut self, ctx: &mut Ctx<'_>, fail: Fail) {
        *ctx.stats.errors.entry(fail.0.clone()).or_default() += 1;
        self.outcome.failure = Some(fail.0);
        self.close(ctx);
    }

    /// `--drop-rate`: whether to drop the connection this input period (probability `drop_rate` per second).
    fn should_drop(&mut self, ctx: &Ctx<'_>, period: Duration) -> bool {
        let no_token = self.control.as_ref().is_none_or(|c| c.resume_token().is_empty());
        if ctx.shared.drop_rate <= 0.0 || self.stopping || no_token {
            return false;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let p = ctx.shared.drop_rate * period.as_secs_f64();
        (self.rng >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Drops the connection the way a phone losing its network does (a reset, no Logout) and reconnects at once
    /// to resume the session with its token.
    fn drop_and_resume(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        ctx.stats.drops += 1;
        if let Some(mut tcp) = self.tcp.take() {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            let _ = ctx.registry.deregister(&mut tcp);
        }
        if let Some(mut udp) = self.udp.take() {
            let _ = ctx.registry.deregister(&mut udp);
        }
        self.tls = None;
        self.data = None;
        self.decoder = FrameDecoder::new(4096);
        self.resuming = Some(ctx.now);
        if let Some(control) = self.control.as_mut() {
            control.connection_lost(ctx.now);
        }
        self.connect(ctx)
    }

    fn close(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(mut tcp) = self.tcp.take() {
            let _ = ctx.registry.deregister(&mut tcp);
        }
        if let Some(mut udp) = self.udp.take() {
            let _ = ctx.registry.deregister(&mut udp);
        }
        self.tls = None;
        self.data = None;
        self.state = State::Done;
    }

    // ----- control channel ---------------------------------------------------------------------------------------

    fn connect(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        self.connect_started = ctx.now;
        let mut tcp = TcpStream::connect(ctx.shared.server)
            .map_err(|e| Fail(format!("connect:{:?}", e.kind()).to_lowercase()))?;
        self.tcp_interest = Interest::READABLE | Interest::WRITABLE;
        ctx.registry.register(&mut tcp, self.tcp_token, self.tcp_interest).map_err(|e| Fail::io(&e))?;
        self.tcp = Some(tcp);
        let tls = ClientConnection::new(Arc::clone(&ctx.shared.tls), ctx.shared.server_name.clone())
            .map_err(|e| Fail(format!("tls:{e}")))?;
        self.tls = Some(tls);
        let (name, shared) = (&self.name, ctx.shared);
        let control = self.control.get_or_insert_with(|| {
            let config = ControlConfig {
                client_name: concat!("realm-bots/", env!("CARGO_PKG_VERSION")).into(),
                // Connect + TLS + HelloOk.
                hello_timeout: Some(shared.handshake_timeout),
                login_timeout: Some(shared.login_timeout),
                keepalive: Some(PING_EVERY),
                logout_timeout: CLOSE_WAIT,
                policy: LoginPolicy {
                    register_falls_back_to_login: true,
                    resume_falls_back_to_login: true,
                    busy_retry: Some((MIN_RETRY, Duration::from_secs(10))),
                },
                check_login_ok: true,
                epoch: shared.epoch,
                protocol_version: shared.protocol,
            };
            let credentials = Credentials::Register { username: name.clone(), password: shared.password.clone() };
            ControlSession::new(config, Some(credentials))
        });
        control.connected(ctx.now);
        // rustls buffers plaintext written before the handshake finishes and sends it right after.
        self.send_control()?;
        self.state = State::Connecting;
        Ok(())
    }

    fn drive_tcp(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        if self.state == State::Connecting {
            let Some(tcp) = self.tcp.as_ref() else { return Ok(()) };
            if let Ok(Some(e)) | Err(e) = tcp.take_error() {
                return Err(Fail(format!("connect:{:?}", e.kind()).to_lowercase()));
            }
            match tcp.peer_addr() {
                Ok(_) => {
                    let _ = tcp.set_nodelay(true);
                    self.state = State::Online;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Fail(format!("connect:{:?}", e.kind()).to_lowercase())),
            }
        }
        let eof = self.read_tls(ctx)?;
        self.flush(ctx)?;
        if eof {
            if self.stopping {
                self.close(ctx);
                return Ok(());
            }
            return Err(Fail::new("closed_by_server"));
        }
        Ok(())
    }

    /// Reads everything available, handling each complete frame. Returns whether the server closed the stream.
    fn read_tls(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Fail> {
        let mut eof = false;
        let mut messages = Vec::new();
        {
            let (Some(tcp), Some(tls)) = (self.tcp.as_mut(), self.tls.as_mut()) else { return Ok(true) };
            loop {
                match tls.read_tls(tcp) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        if ctx.measuring() {
                            ctx.stats.bytes_in += n as u64;
                        }
                        tls.process_new_packets().map_err(|e| Fail(format!("tls:{e}")))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset && self.stopping => {
                        eof = true;
                        break;
                    }
                    Err(e) => return Err(Fail::io(&e)),
                }
            }
            loop {
                while let Some(msg) = self.decoder.decode().map_err(|e| Fail::frame(&e))? {
                    messages.push(msg);
                }
                match tls.reader().read(self.decoder.spare()) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => self.decoder.filled(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        eof = true;
                        break;
                    }
                    Err(e) => return Err(Fail::io(&e)),
                }
            }
        }
        for msg in messages {
            if let Some(control) = self.control.as_mut() {
                control.handle(msg, ctx.now);
            }
            self.pump(ctx)?;
            if self.state == State::Done {
                return Ok(false);
            }
        }
        Ok(eof)
    }

    /// Handles what the session reported, then sends what it queued on both channels.
    fn pump(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        while let Some(event) = self.control.as_mut().and_then(ControlSession::poll_event) {
            self.on_event(ctx, event)?;
            if self.state == State::Done {
                return Ok(());
            }
        }
        if self.send_control()? {
            self.flush(ctx)?;
        }
        self.flush_udp(ctx)
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, event: ControlEvent) -> Result<(), Fail> {
        match event {
            ControlEvent::Greeted(_) => Ok(()),
            ControlEvent::LoggedIn { ok, .. } => self.on_login_ok(ctx, &ok),
            ControlEvent::LoginRetry { .. } => {
                ctx.stats.login_retries += 1;
                Ok(())
            }
            ControlEvent::ResumeRefused(e) => {
                // The token was refused (expired, say): the session logs in with the password.
                ctx.stats.resume_failures += 1;
                *ctx.stats.errors.entry(format!("resume_refused:{}", login_reason_name(e.reason))).or_default() += 1;
                self.resuming = None;
                Ok(())
            }
            ControlEvent::LoginRefused(e) => Err(Fail(format!("login_refused:{}", login_reason_name(e.reason)))),
            ControlEvent::Message(body) => {
                match body {
                    Body::ChatMessage(_) => ctx.stats.chats_received += 1,
                    Body::CombatEvent(_) => ctx.stats.combat_events += 1,
                    Body::Error(_) => *ctx.stats.errors.entry("error_notice".into()).or_default() += 1,
                    _ => {}
                }
                Ok(())
            }
            // A portal: the bot cannot follow (the target zone is another process) and leaves the run.
            ControlEvent::Transfer(_) => Err(Fail::new("zone_transfer")),
            ControlEvent::Pong { rtt_us, .. } => {
                if let Some(rtt) = rtt_us {
                    ctx.stats.control_rtt.record(rtt);
                }
                Ok(())
            }
            ControlEvent::Unexpected(kind) => Err(Fail(format!("protocol:unexpected_{kind}"))),
            ControlEvent::Ended(_) if self.stopping => {
                self.close(ctx);
                Ok(())
            }
            ControlEvent::Ended(end) => Err(match end {
                SessionEnd::Kicked { reason, .. } => Fail(format!("kicked:{}", kick_reason_name(reason))),
                SessionEnd::LoggedOut => Fail(format!("kicked:{}", kick_reason_name(KickReason::LoggedOut as i32))),
                SessionEnd::TimedOut(Stage::Hello) if self.state == State::Connecting => Fail::new("timeout:connect"),
                SessionEnd::TimedOut(Stage::Hello) => Fail::new("timeout:handshake"),
                SessionEnd::TimedOut(_) => Fail::new("timeout:login"),
                SessionEnd::Protocol(what) => Fail(format!("protocol:{what}")),
                _ => Fail::new("closed_by_server"),
            }),
        }
    }

    fn on_login_ok(&mut self, ctx: &mut Ctx<'_>, ok: &crate::proto::LoginOk) -> Result<(), Fail> {
        self.outcome.logged_in = true;
        if let Some(dropped) = self.resuming.take() {
            ctx.stats.resumes += 1;
            ctx.stats.resume_time.record(micros(ctx.now.saturating_duration_since(dropped)));
        } else {
            ctx.stats.login_time.record(micros(ctx.now.saturating_duration_since(self.connect_started)));
        }
        // The session checked the numbers (tick rate, entity, port).
        let period = Duration::from_secs(1) / ok.tick_rate_hz.max(1);
        ctx.stats.tick_period_us = micros(period);
        let Some(tls) = self.tls.as_ref() else { return Err(Fail::new("closed_by_server")) };
        let material = tls
            .export_keying_material([0u8; 64], EXPORTER_LABEL, Some(&ok.session_id.to_be_bytes()))
            .map_err(|e| Fail(format!("tls:exporter:{e}")))?;
        let keys = DataKeys::from_keying_material(&material);
        let port = u16::try_from(ok.udp_port).map_err(|_| Fail::new("protocol:bad_udp_port"))?;
        let port = if port == 0 { ctx.shared.server.port() } else { port };
        let target = SocketAddr::new(ctx.shared.server.ip(), port);
        let local: SocketAddr =
            if target.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
        let mut udp = UdpSocket::bind(local).map_err(|e| Fail(format!("udp_bind:{:?}", e.kind()).to_lowercase()))?;
        udp.connect(target).map_err(|e| Fail(format!("udp_bind:{:?}", e.kind()).to_lowercase()))?;
        ctx.registry.register(&mut udp, self.udp_token, Interest::READABLE).map_err(|e| Fail::io(&e))?;
        self.udp = Some(udp);
        let config = DataConfig { bind_timeout: Some(ctx.shared.udp_timeout), ..DataConfig::new(ctx.shared.epoch) };
        // Input sequences start over with each session.
        self.data = Some(DataSession::new(ok.session_id, &keys, config, ctx.now));
        self.play.entered(ok.entity_id, period);
        Ok(())
    }

    /// Moves the session's queued control messages into TLS (written by the next [`Bot::flush`]); whether any.
    fn send_control(&mut self) -> Result<bool, Fail> {
        let (Some(control), Some(tls)) = (self.control.as_mut(), self.tls.as_mut()) else {
            return Err(Fail::new("closed_by_server"));
        };
        let mut any = false;
        while let Some(msg) = control.poll_transmit() {
            self.frame.clear();
            encode_frame(&msg, control.max_frame(), &mut self.frame)
                .map_err(|_| Fail::new("client:frame_too_large"))?;
            tls.writer().write_all(&self.frame).map_err(|e| Fail::io(&e))?;
            any = true;
        }
        Ok(any)
    }

    /// Writes what rustls has pending and asks for WRITABLE only while something is left.
    fn flush(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        let (Some(tcp), Some(tls)) = (self.tcp.as_mut(), self.tls.as_mut()) else { return Ok(()) };
        if self.state != State::Connecting {
            while tls.wants_write() {
                match tls.write_tls(tcp) {
                    Ok(n) => {
                        if ctx.measuring() {
                            ctx.stats.bytes_out += n as u64;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fail::io(&e)),
                }
            }
        }
        let wanted = if tls.wants_write() || self.state == State::Connecting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if wanted != self.tcp_interest {
            ctx.registry.reregister(tcp, self.tcp_token, wanted).map_err(|e| Fail::io(&e))?;
            self.tcp_interest = wanted;
        }
        Ok(())
    }

    // ----- data channel ------------------------------------------------------------------------------------------

    /// Sends the datagrams the data session queued (hellos, challenge responses, pongs, inputs).
    fn flush_udp(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        let (Some(udp), Some(data)) = (self.udp.as_ref(), self.data.as_mut()) else { return Ok(()) };
        while let Some(sealed) = data.poll_transmit(ctx.buf) {
            let n = sealed.map_err(|e| Fail(format!("client:seal:{e}")))?;
            send_datagram(udp, &ctx.buf[..n], ctx.stats)?;
        }
        Ok(())
    }

    fn drive_udp(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        loop {
            let (Some(udp), Some(data)) = (self.udp.as_ref(), self.data.as_mut()) else { return Ok(()) };
            let n = match udp.recv(ctx.buf) {
                Ok(n) => {
                    if ctx.measuring() {
                        ctx.stats.bytes_in += n as u64;
                        ctx.stats.data_bytes_in += n as u64;
                    }
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP port unreachable surfacing on a connected socket: the server is gone.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return if self.stopping { Ok(()) } else { Err(Fail::new("udp:connection_refused")) };
                }
                Err(e) => return Err(Fail::io(&e)),
            };
            let was_bound = data.is_bound();
            let received = data
                .handle_datagram(&mut ctx.buf[..n], ctx.now)
                .map_err(|_| Fail::new("protocol:welcome_for_another_session"))?;
            // A snapshot may overtake the welcome; the welcome is what binds, so start playing on either.
            if !was_bound && data.is_bound() && self.state == State::Online {
                self.on_welcome(ctx);
            }
            match received {
                Received::Snapshot(s) if matches!(self.state, State::Online | State::Closing) => {
                    self.on_snapshot(ctx, &s);
                }
                Received::Rejected(_) => ctx.stats.udp_rejected += 1,
                Received::Undecodable(_) => ctx.stats.snapshots_undecodable += 1,
                _ => {}
            }
            self.flush_udp(ctx)?;
        }
    }

    fn on_welcome(&mut self, ctx: &mut Ctx<'_>) {
        self.outcome.udp_bound = true;
        let now_us = ctx.now_us();
        self.play.start(ctx.now, now_us);
    }

    fn on_snapshot(&mut self, ctx: &mut Ctx<'_>, s: &Snapshot) {
        self.play.observe(ctx, s, &mut self.outcome);
    }

    /// Playing: send the input and chat line that are due (the session queues its own pings).
    fn play(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        if let (Some(decision), Some(data)) = (self.play.input(ctx), self.data.as_mut()) {
            let move_dir = Vec2 { x: decision.move_dir.0, y: decision.move_dir.1 };
            data.input(move_dir, decision.ability, decision.target, ctx.now);
            self.flush_udp(ctx)?;
        }
        if let (Some((channel, text)), Some(control)) =
            (self.play.chat(ctx.now_us(), &self.name), self.control.as_mut())
        {
            control.send(Body::Chat(Chat { channel: channel as i32, text }));
            ctx.stats.chats_sent += 1;
        }
        Ok(())
    }
}

/// Sends one datagram; a full socket buffer drops it (UDP semantics) and is counted.
fn send_datagram(udp: &UdpSocket, datagram: &[u8], stats: &mut ThreadStats) -> Result<(), Fail> {
    match udp.send(datagram) {
        Ok(n) => {
            stats.bytes_out += n as u64;
            Ok(())
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            stats.udp_send_dropped += 1;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(Fail::new("udp:connection_refused")),
        Err(e) => Err(Fail::io(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_become_short_stable_names() {
        assert_eq!(login_reason_name(LoginErrorReason::LoginErrorServerBusy as i32), "server_busy");
        assert_eq!(login_reason_name(LoginErrorReason::LoginErrorAlreadyOnline as i32), "already_online");
        assert_eq!(login_reason_name(9999), "unknown_9999");
        assert_eq!(kick_reason_name(KickReason::SlowConsumer as i32), "slow_consumer");
        assert_eq!(kick_reason_name(-1), "unknown_-1");
    }
}
