//! A bot over the browser transport (`--transport ws`): the HTTP login a page makes (`POST /api/register`, falling
//! back to `/api/login` when the name exists), then one WebSocket of `WsFrame`s for everything, as a non-blocking
//! state machine on its thread's mio `Poll` (tungstenite framing over the mio socket). What it does in the world is
//! the same [`Play`] as a TLS+UDP bot, so the two transports are measured doing the same thing.
//!
//! ```text
//! Waiting --start_at--> Http (POST; 409 -> POST /api/login; 503 -> Waiting retry_after)
//!    Http --200 token--> Upgrading (GET /ws?token=) --101--> Playing --run over: Logout--> Closing --> Done
//!    (any) --error, kick, timeout--> Done(failed: kind)
//! ```

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mio::net::TcpStream;
use mio::{Interest, Token};
use prost::Message as _;
use tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::behaviour::Role;
use super::bot::{kick_reason_name, login_reason_name, Ctx, Outcome};
use super::play::Play;
use crate::proto::delta::DeltaDecoder;
use crate::proto::{
    control_message::Body, data_message::Body as DataBody, ws_frame, Chat, ControlMessage, DataMessage, Input, Logout,
    Pong, Vec2, WsFrame,
};

/// How long a stopping bot waits for the server to close after Logout.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

enum Stage {
    Waiting,
    /// An HTTP request on its own connection; the response ends with the connection.
    Http {
        stream: TcpStream,
        out: Vec<u8>,
        written: usize,
        got: Vec<u8>,
        login: bool,
    },
    /// `GET /ws` sent; waiting for the 101.
    Upgrading {
        stream: TcpStream,
        out: Vec<u8>,
        written: usize,
        got: Vec<u8>,
    },
    Playing(Box<WebSocket<TcpStream>>),
    Closing(Box<WebSocket<TcpStream>>),
    Done,
}

/// One simulated browser player.
pub(crate) struct WsBot {
    name: String,
    token: Token,
    start_at: Instant,
    stage: Stage,
    /// Login deadline, then the closing deadline.
    deadline: Instant,
    started: Instant,
    play: Play,
    sequence: u32,
    in_game: bool,
    /// Protocol v2: the views decoded, the newest acknowledged in every input.
    views: DeltaDecoder,
    /// The wake-up time currently in the driver's timer heap (the driver owns this field).
    pub scheduled: Option<Instant>,
    /// How the bot is doing.
    pub outcome: Outcome,
}

fn request(ctx: &Ctx<'_>, method_path: &str, body: &str) -> Vec<u8> {
    let host = ctx.shared.server;
    format!(
        "{method_path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn frame(body: ws_frame::Body) -> Message {
    Message::Binary(WsFrame { body: Some(body) }.encode_to_vec().into())
}

impl WsBot {
    pub(crate) fn new(name: String, role: Role, seed: u64, slot: usize, start_at: Instant) -> Self {
        Self {
            name,
            token: Token(slot * 2),
            start_at,
            stage: Stage::Waiting,
            deadline: start_at,
            started: start_at,
            play: Play::new(role, seed, start_at),
            sequence: 0,
            in_game: false,
            views: DeltaDecoder::new(),
            scheduled: None,
            outcome: Outcome::default(),
        }
    }

    pub(crate) fn phase(&self) -> u8 {
        match &self.stage {
            Stage::Waiting => 0,
            Stage::Http { .. } | Stage::Upgrading { .. } => 2,
            Stage::Playing(_) if self.in_game => 3,
            Stage::Playing(_) => 2,
            Stage::Closing(_) => 3,
            Stage::Done => 4,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    pub(crate) fn wake(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Waiting => Some(self.start_at),
            Stage::Http { .. } | Stage::Upgrading { .. } | Stage::Closing(_) => Some(self.deadline),
            Stage::Playing(_) if self.in_game => Some(self.play.next_input),
            Stage::Playing(_) => Some(self.deadline),
            Stage::Done => None,
        }
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, kind: impl Into<String>) {
        let kind = kind.into();
        *ctx.stats.errors.entry(kind.clone()).or_default() += 1;
        self.outcome.failure.get_or_insert(kind);
        self.stage = Stage::Done;
    }

    fn post(&mut self, ctx: &mut Ctx<'_>, login: bool) {
        let path = if login { "POST /api/login" } else { "POST /api/register" };
        let body = serde_json::json!({"username": self.name, "password": ctx.shared.password}).to_string();
        match connect(ctx, self.token) {
            Ok(stream) => {
                self.stage = Stage::Http { stream, out: request(ctx, path, &body), written: 0, got: Vec::new(), login }
            }
            Err(kind) => self.fail(ctx, kind),
        }
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        match &self.stage {
            Stage::Waiting if now >= self.start_at => {
                if self.started == self.start_at {
                    self.started = now;
                }
                self.deadline = now + ctx.shared.login_timeout;
                self.post(ctx, false);
            }
            Stage::Http { .. } | Stage::Upgrading { .. } if now >= self.deadline => self.fail(ctx, "login_timeout"),
            Stage::Playing(_) if !self.in_game && now >= self.deadline => self.fail(ctx, "login_timeout"),
            Stage::Closing(_) if now >= self.deadline => self.stage = Stage::Done,
            Stage::Playing(_) if self.in_game && now >= self.play.next_input => self.send_input(ctx),
            _ => {}
        }
    }

    fn send_input(&mut self, ctx: &mut Ctx<'_>) {
        let Some(decision) = self.play.input(ctx) else { return };
        self.sequence += 1;
        let input = Input {
            sequence: self.sequence,
            move_dir: Some(Vec2 { x: decision.move_dir.0, y: decision.move_dir.1 }),
            ability: decision.ability,
            target_entity: decision.target,
            client_time_us: ctx.now_us(),
            snapshot_ack: self.views.ack(),
        };
        let mut out = vec![frame(ws_frame::Body::Data(DataMessage::new(DataBody::Input(input))))];
        if let Some((channel, text)) = self.play.chat(ctx.now_us(), &self.name) {
            out.push(frame(ws_frame::Body::Control(ControlMessage::new(Body::Chat(Chat {
                channel: channel as i32,
                text,
            })))));
            ctx.stats.chats_sent += 1;
        }
        if let Stage::Playing(ws) = &mut self.stage {
            for m in out {
                if ctx.measuring() {
                    ctx.stats.bytes_out += m.len() as u64;
                }
                let _ = ws.write(m);
            }
            if let Err(e) = flush(ws) {
                self.fail(ctx, e);
            }
        }
    }

    pub(crate) fn on_udp(&mut self, _ctx: &mut Ctx<'_>) {}

    pub(crate) fn on_tcp(&mut self, ctx: &mut Ctx<'_>) {
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        self.stage = match stage {
            Stage::Http { mut stream, out, mut written, mut got, login } => {
                match exchange(&mut stream, &out, &mut written, &mut got) {
                    Ok(false) => Stage::Http { stream, out, written, got, login },
                    Ok(true) => return self.on_response(ctx, &got, login),
                    Err(kind) => return self.fail(ctx, kind),
                }
            }
            Stage::Upgrading { mut stream, out, mut written, mut got } => {
                match exchange(&mut stream, &out, &mut written, &mut got) {
                    Err(kind) => return self.fail(ctx, kind),
                    Ok(_) => match got.windows(4).position(|w| w == b"\r\n\r\n") {
                        None => Stage::Upgrading { stream, out, written, got },
                        Some(end) if got.starts_with(b"HTTP/1.1 101") => {
                            let rest = got[end + 4..].to_vec();
                            let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
                            let ws = WebSocket::from_partially_read(stream, rest, WsRole::Client, Some(config));
                            self.stage = Stage::Playing(Box::new(ws));
                            return self.read_socket(ctx);
                        }
                        Some(_) => {
                            let status = String::from_utf8_lossy(&got[..got.len().min(12)]).into_owned();
                            return self.fail(ctx, format!("ws_upgrade_refused:{}", status.trim()));
                        }
                    },
                }
            }
            other => {
                self.stage = other;
                return self.read_socket(ctx);
            }
        };
    }

    fn on_response(&mut self, ctx: &mut Ctx<'_>, got: &[u8], login: bool) {
        let text = String::from_utf8_lossy(got);
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body: serde_json::Value =
            text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default();
        match status {
            200 => {
                let Some(token) = body["token"].as_str() else { return self.fail(ctx, "protocol:no_token") };
                let mut key = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
                let req = format!(
                    "GET /ws?token={token}&protocol={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
                    ctx.shared.protocol,
                    ctx.shared.server,
                    B64.encode(key)
                );
                match connect(ctx, self.token) {
                    Ok(stream) => {
                        self.stage = Stage::Upgrading { stream, out: req.into_bytes(), written: 0, got: Vec::new() };
                    }
                    Err(kind) => self.fail(ctx, kind),
                }
            }
            409 if !login => self.post(ctx, true),
            503 => {
                ctx.stats.login_retries += 1;
                let wait = body["retry_after_ms"].as_u64().unwrap_or(500).max(200);
                self.start_at = ctx.now + Duration::from_millis(wait);
                self.stage = Stage::Waiting;
            }
            _ => {
                let reason =
                    body["reason"].as_str().unwrap_or("unknown").trim_start_matches("LOGIN_ERROR_").to_lowercase();
                self.fail(ctx, format!("login_refused:{reason}"));
            }
        }
    }

    /// Reads every message the socket has.
    fn read_socket(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let (Stage::Playing(ws) | Stage::Closing(ws)) = &mut self.stage else { return };
            match ws.read() {
                Ok(Message::Binary(bytes)) => {
                    if ctx.measuring() {
                        ctx.stats.bytes_in += bytes.len() as u64;
                        // Field 2 of WsFrame (`data`): the data channel's messages, snapshots above all.
                        if bytes.first() == Some(&0x12) {
                            ctx.stats.data_bytes_in += bytes.len() as u64;
                        }
                    }
                    match WsFrame::decode(bytes.as_ref()) {
                        Ok(f) => self.on_frame(ctx, f),
                        Err(_) => return self.fail(ctx, "protocol:invalid_protobuf"),
                    }
                }
                Ok(Message::Close(_))
                | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    if matches!(self.stage, Stage::Closing(_)) {
                        self.stage = Stage::Done;
                    } else if !matches!(self.stage, Stage::Done) {
                        self.fail(ctx, "closed_by_server");
                    }
                    return;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Stage::Playing(ws) | Stage::Closing(ws) = &mut self.stage {
                        if let Err(e) = flush(ws) {
                            self.fail(ctx, e);
                        }
                    }
                    return;
                }
                Err(e) => return self.fail(ctx, format!("ws:{e}").chars().take(40).collect::<String>()),
            }
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, frame_in: WsFrame) {
        match frame_in.body {
            Some(ws_frame::Body::Control(ControlMessage { body: Some(body) })) => match body {
                Body::LoginOk(ok) => {
                    self.outcome.logged_in = true;
                    self.outcome.udp_bound = true;
                    self.in_game = true;
                    ctx.stats.login_time.record(ctx.now.saturating_duration_since(self.started).as_micros() as u64);
                    let period = Duration::from_secs(1) / ok.tick_rate_hz.max(1);
                    ctx.stats.tick_period_us = period.as_micros() as u64;
                    self.play.entered(ok.entity_id, period);
                    self.play.start(ctx.now, ctx.now_us());
                }
                Body::LoginError(e) => self.fail(ctx, format!("login_refused:{}", login_reason_name(e.reason))),
                Body::Kick(k) if !matches!(self.stage, Stage::Closing(_)) => {
                    self.fail(ctx, format!("kicked:{}", kick_reason_name(k.reason)))
                }
                Body::ChatMessage(_) => ctx.stats.chats_received += 1,
                Body::CombatEvent(_) => ctx.stats.combat_events += 1,
                _ => {}
            },
            Some(ws_frame::Body::Data(DataMessage { body: Some(body) })) => match body {
                DataBody::Snapshot(s) => self.play.observe(ctx, &s, &mut self.outcome),
                DataBody::DeltaSnapshot(d) => match self.views.decode(&d) {
                    Ok(s) => self.play.observe(ctx, &s, &mut self.outcome),
                    Err(_) => ctx.stats.snapshots_undecodable += 1,
                },
                DataBody::Ping(p) => {
                    let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: 0 };
                    if let Stage::Playing(ws) = &mut self.stage {
                        let m = frame(ws_frame::Body::Data(DataMessage::new(DataBody::Pong(pong))));
                        if ctx.measuring() {
                            ctx.stats.bytes_out += m.len() as u64;
                        }
                        let _ = ws.write(m);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    pub(crate) fn stop(&mut self, ctx: &mut Ctx<'_>) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Playing(mut ws) => {
                let _ = ws.write(frame(ws_frame::Body::Control(ControlMessage::new(Body::Logout(Logout {})))));
                let _ = flush(&mut ws);
                self.deadline = ctx.now + CLOSE_WAIT;
                self.stage = Stage::Closing(ws);
            }
            Stage::Waiting => {}
            _ if self.outcome.failure.is_none() && !self.outcome.logged_in => self.fail(ctx, "not_logged_in_at_end"),
            _ => {}
        }
    }
}

fn connect(ctx: &Ctx<'_>, token: Token) -> Result<TcpStream, String> {
    let mut stream =
        TcpStream::connect(ctx.shared.server).map_err(|e| format!("connect:{:?}", e.kind()).to_lowercase())?;
    ctx.registry
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("io:{:?}", e.kind()).to_lowercase())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes what is left of `out`, reads what arrived; true once the peer closed (an HTTP response is complete).
fn exchange(stream: &mut TcpStream, out: &[u8], written: &mut usize, got: &mut Vec<u8>) -> Result<bool, String> {
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(n) => {
                *written += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => {
                return Ok(false)
            }
            Err(e) => return Err(format!("io:{:?}", e.kind()).to_lowercase()),
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > 64 * 1024 {
                    return Err("protocol:oversized_http".into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => {
                return Ok(false)
            }
            Err(e) => return Err(format!("io:{:?}", e.kind()).to_lowercase()),
        }
    }
}

fn flush(ws: &mut WebSocket<TcpStream>) -> Result<(), String> {
    match ws.flush() {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(format!("ws:{e}").chars().take(40).collect()),
    }
}
