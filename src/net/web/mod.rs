//! The browser endpoint: HTTP (the web client, the login API) and WebSocket game sessions on `server.ws_port`,
//! served by the same pinned mio io threads as the game port and feeding the same inbound queue.
//!
//! A browser has no UDP, so its session's control and data messages share one WebSocket: every binary message is
//! one `WsFrame` (proto). To the simulation a browser session is like any other: `Connected`, `Control`, `Data`,
//! `Disconnected` in, `Admit`/`Refuse`/`Control`/`Data`/`Encoded`/`Close` out (see `crate::link`). Differences the
//! gateway absorbs:
//!
//! * login: `POST /api/login|register` is [`Inbound::Authenticate`] (the password checked on the login workers,
//!   a signed single-use token answered as [`Outbound::Token`]); `GET /ws?token=` then enters as `TokenLogin`.
//!   Resumption and transfers arrive as `?resume=` and `?transfer=&username=` and become `Resume` and
//!   `TransferLogin`;
//! * snapshots: a socket that has not flushed the previous one gets the newest, never a queue of stale ones;
//! * limits: the per-address caps, the connection limit and the connect rate of the game port apply here too;
//!   each connection also has a head deadline, a login deadline, an idle timeout, a message-rate budget and a
//!   message size cap (close codes 1008 and 1009).
//!
//! WebSocket framing is tungstenite's (`WebSocket::from_partially_read` over our non-blocking stream); the HTTP
//! subset is [`http`], sans-IO.

pub mod http;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prost::Message as _;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use self::http::{Entry, OriginPolicy, Parsed, Request, Response};
use super::io::NetShared;
use crate::link::{Departure, Inbound, Outbound, SessionId};
use crate::proto::{
    control_message::Body, data_message::Body as DataBody, ws_frame, ControlMessage, Kick, KickReason,
    LoginErrorReason, Pong, Resume, TokenLogin, TransferLogin, WsFrame,
};

/// Token of the browser listener in the io thread's poll.
pub const LISTENER: Token = Token(3);
/// Connection tokens start here (the game connections' are below).
pub const FIRST_CONN: usize = 1 << 30;

/// How long a client may take to send its request head (and body).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an API request may wait for its answer before it is given up (the login workers are saturated).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Kernel send buffer of a browser socket (Linux doubles it): about 100 snapshots.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Messages per second a browser may send (inputs at the tick rate, chat, pings) before it is closed as a flood.
const MESSAGE_BUDGET: u32 = 120;

/// Settings from the configuration.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Origins.
    pub origins: OriginPolicy,
    /// Largest message accepted.
    pub max_message: usize,
    /// Close a socket silent this long.
    pub idle_timeout: Duration,
    /// Close a socket not in game this long after connecting.
    pub login_timeout: Duration,
}

/// A plain or TLS stream over a mio socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => {
                s.flush()?;
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut s.sock)?;
                }
                Ok(())
            }
        }
    }
}

enum Stage {
    /// Reading the request.
    Http { stream: Stream, buf: Vec<u8>, deadline: Instant },
    /// An API request is with the simulation; its answer comes as `Outbound::Token`.
    Waiting { stream: Stream, deadline: Instant, origin: Option<String> },
    /// Writing a response, then closing.
    Replying { stream: Stream, out: Vec<u8>, written: usize, deadline: Instant },
    /// A game session.
    Socket(Box<WebSocket<Stream>>),
    /// Being taken apart.
    Gone,
}

struct Conn {
    id: SessionId,
    addr: SocketAddr,
    stage: Stage,
    /// `Inbound::Connected` was sent (a `Disconnected` is owed).
    in_sim: bool,
    /// Admitted by the simulation.
    authenticated: bool,
    /// The newest snapshot not yet handed to the socket.
    snapshot: Option<crate::link::Shared>,
    /// The socket's last flush completed (nothing of ours is queued).
    flushed: bool,
    connected_at: Instant,
    last_activity: Instant,
    /// Messages in the current one-second window.
    window: (Instant, u32),
    /// Set once a close was started: the departure to report.
    closing: Option<Departure>,
}

/// One io thread's browser endpoint.
pub struct Gateway {
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    settings: WebSettings,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_session: HashMap<SessionId, usize>,
    index: usize,
    next_session: u64,
    /// Events for the simulation (the io thread publishes them with its own).
    pub pending: Vec<Inbound>,
    /// A login or resume is among `pending`: wake the simulation.
    pub wake_sim: bool,
}

/// What the gateway needs of its io thread.
pub struct Ctx<'a> {
    /// The poll's registry.
    pub registry: &'a Registry,
    /// Shared limits and counters.
    pub shared: &'a NetShared,
}

fn frame(body: ws_frame::Body) -> Vec<u8> {
    WsFrame { body: Some(body) }.encode_to_vec()
}

/// A `WsFrame` carrying an already-encoded `DataMessage` (snapshots are encoded once by the simulation): field 2,
/// length-delimited, exactly what `prost` would write.
fn data_frame_of_encoded(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 6);
    out.push(0x12);
    prost::encoding::encode_varint(msg.len() as u64, &mut out);
    out.extend_from_slice(msg);
    out
}

impl Gateway {
    /// A gateway on `listener`; TLS when `tls` is given.
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerConfig>>, settings: WebSettings, index: usize) -> Self {
        Self {
            listener,
            tls,
            settings,
            conns: Vec::new(),
            free: Vec::new(),
            by_session: HashMap::new(),
            index,
            next_session: 0,
            pending: Vec::new(),
            wake_sim: false,
        }
    }

    /// The listener, to register it.
    pub fn listener(&mut self) -> &mut TcpListener {
        &mut self.listener
    }

    /// Whether `session` is one of ours.
    pub fn owns(&self, session: SessionId) -> bool {
        self.by_session.contains_key(&session)
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// No connection open.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }

    /// Accepts what is waiting, under the game port's limits.
    pub fn accept(&mut self, ctx: &Ctx<'_>, now: Instant, refuse_all: bool) {
        loop {
            let Some((mut stream, addr)) = super::io::accept_one(&self.listener) else { return };
            let shared = ctx.shared;
            if refuse_all {
                continue;
            }
            if !shared.admit_address(addr.ip(), now) {
                continue;
            }
            if shared.stats.open_connections.load(Ordering::Relaxed) >= shared.max_connections {
                shared.per_address.release(addr.ip(), false);
                shared.stats.refused_max_connections.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = ctx.registry.register(&mut stream, Token(FIRST_CONN + slot), interest) {
                log::warn!("cannot register web connection from {addr}: {e}");
                self.free.push(slot);
                shared.per_address.release(addr.ip(), false);
                continue;
            }
            let _ = stream.set_nodelay(true);
            // A bounded kernel send buffer: what a slow browser has not taken yet waits here, and a snapshot that
            // waits is stale. With at most this much queued, the gateway's newest-snapshot rule decides the rest.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
            let stream = match &self.tls {
                Some(config) => match ServerConnection::new(Arc::clone(config)) {
                    Ok(conn) => Stream::Tls(Box::new(StreamOwned::new(conn, stream))),
                    Err(e) => {
                        log::error!("cannot create TLS session: {e}");
                        let _ = ctx.registry.deregister(&mut stream);
                        self.free.push(slot);
                        shared.per_address.release(addr.ip(), false);
                        continue;
                    }
                },
                None => Stream::Plain(stream),
            };
            // Session ids: io thread index in the top byte, bit 55 set for browser sessions, a counter below.
            self.next_session += 1;
            let id = ((self.index as u64) << 56) | (1 << 55) | self.next_session;
            self.by_session.insert(id, slot);
            self.conns[slot] = Some(Conn {
                id,
                addr,
                stage: Stage::Http { stream, buf: Vec::new(), deadline: now + HEAD_TIMEOUT },
                in_sim: false,
                authenticated: false,
                snapshot: None,
                flushed: true,
                connected_at: now,
                last_activity: now,
                window: (now, 0),
                closing: None,
            });
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            shared.stats.open_connections.fetch_add(1, Ordering::Relaxed);
            // Data may be there already (edge-triggered: no event would come for it).
            self.ready(ctx, FIRST_CONN + slot, now);
        }
    }

    /// A connection's socket is ready.
    pub fn ready(&mut self, ctx: &Ctx<'_>, token: usize, now: Instant) {
        let slot = token - FIRST_CONN;
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        let stage = std::mem::replace(&mut conn.stage, Stage::Gone);
        let next = match stage {
            Stage::Http { stream, buf, deadline } => self.read_request(slot, stream, buf, deadline, now),
            Stage::Waiting { mut stream, deadline, origin } => {
                // Nothing more is expected; a peer that went away is noticed here.
                let mut scratch = [0u8; 512];
                match stream.read(&mut scratch) {
                    Ok(0) => Stage::Gone,
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Stage::Gone,
                    _ => Stage::Waiting { stream, deadline, origin },
                }
            }
            Stage::Replying { stream, out, written, deadline } => write_reply(stream, out, written, deadline),
            Stage::Socket(ws) => self.drive_socket(slot, ws, now),
            Stage::Gone => Stage::Gone,
        };
        if let Some(Some(conn)) = self.conns.get_mut(slot) {
            conn.stage = next;
        }
        self.settle(ctx, slot);
    }

    fn read_request(
        &mut self,
        slot: usize,
        mut stream: Stream,
        mut buf: Vec<u8>,
        deadline: Instant,
        now: Instant,
    ) -> Stage {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Stage::Gone,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Stage::Gone,
            }
        }
        match http::parse(&buf, &self.settings.origins) {
            Parsed::NeedMore => Stage::Http { stream, buf, deadline },
            Parsed::Reject(response) => reply(stream, &response, now),
            Parsed::Request(request) => self.act(slot, stream, request, now),
        }
    }

    fn act(&mut self, slot: usize, stream: Stream, request: Request, now: Instant) -> Stage {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return Stage::Gone };
        match request {
            Request::Asset { asset, head_only } => {
                let mut r = Response {
                    status: 200,
                    content_type: asset.content_type,
                    body: asset.body.to_vec(),
                    headers: Vec::new(),
                    head_only,
                };
                r.headers.push(("Cross-Origin-Resource-Policy", "same-origin".into()));
                reply(stream, &r, now)
            }
            Request::Preflight { origin } => {
                let mut r = Response {
                    status: 204,
                    content_type: "text/plain",
                    body: Vec::new(),
                    headers: Vec::new(),
                    head_only: false,
                }
                .with_cors(Some(origin));
                r.headers.push(("Access-Control-Allow-Methods", "POST".into()));
                r.headers.push(("Access-Control-Allow-Headers", "content-type".into()));
                r.headers.push(("Access-Control-Max-Age", "600".into()));
                reply(stream, &r, now)
            }
            Request::Api { register, username, password, origin } => {
                self.pending.push(Inbound::Authenticate {
                    session: conn.id,
                    io: self.index,
                    addr: conn.addr,
                    register,
                    username,
                    password,
                });
                self.wake_sim = true;
                Stage::Waiting { stream, deadline: now + API_TIMEOUT, origin }
            }
            Request::Upgrade { key, entry, protocol, rest } => {
                let mut stream = stream;
                let hello = http::switching_protocols(&key);
                if stream.write_all(&hello).and_then(|()| stream.flush()).is_err() {
                    // A 101 that does not fit an empty socket buffer: the peer is not a browser worth waiting for.
                    return Stage::Gone;
                }
                let config = WebSocketConfig::default()
                    .max_message_size(Some(self.settings.max_message))
                    .max_frame_size(Some(self.settings.max_message))
                    .write_buffer_size(0)
                    .max_write_buffer_size(256 * 1024);
                let ws = WebSocket::from_partially_read(stream, rest, Role::Server, Some(config));
                let body = match entry {
                    Entry::Token(token) => Body::TokenLogin(TokenLogin { token }),
                    Entry::Resume(session_token) => Body::Resume(Resume { session_token }),
                    Entry::Transfer { token, username } => {
                        Body::TransferLogin(TransferLogin { username, transfer_token: token })
                    }
                };
                conn.in_sim = true;
                conn.last_activity = now;
                self.pending.push(Inbound::Connected { session: conn.id, io: self.index, addr: conn.addr, protocol });
                self.pending.push(Inbound::Control { session: conn.id, msg: ControlMessage::new(body) });
                self.wake_sim = true;
                self.drive_socket(slot, Box::new(ws), now)
            }
        }
    }

    /// Reads every message the socket has, then writes what is owed.
    fn drive_socket(&mut self, slot: usize, mut ws: Box<WebSocket<Stream>>, now: Instant) -> Stage {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return Stage::Gone };
        loop {
            match ws.read() {
                Ok(Message::Binary(bytes)) => {
                    conn.last_activity = now;
                    if now.duration_since(conn.window.0) >= Duration::from_secs(1) {
                        conn.window = (now, 0);
                    }
                    conn.window.1 += 1;
                    if conn.window.1 > MESSAGE_BUDGET {
                        close(conn, &mut ws, CloseCode::Policy, "too many messages", KickReason::Flood);
                        break;
                    }
                    match WsFrame::decode(bytes.as_ref()) {
                        Ok(frame) => {
                            if let Err(why) = self_handle(conn, &mut ws, frame, &mut self.pending) {
                                close(conn, &mut ws, CloseCode::Policy, why, KickReason::ProtocolError);
                                break;
                            }
                        }
                        Err(_) => {
                            close(conn, &mut ws, CloseCode::Policy, "undecodable frame", KickReason::ProtocolError);
                            break;
                        }
                    }
                }
                Ok(Message::Text(_)) => {
                    close(
                        conn,
                        &mut ws,
                        CloseCode::Unsupported,
                        "binary WsFrame messages only",
                        KickReason::ProtocolError,
                    );
                    break;
                }
                Ok(Message::Close(frame)) => {
                    // 1000 is "I am done"; anything else (1001 on a page reload, 1006) may come back and resume.
                    let normal = frame.is_some_and(|f| f.code == CloseCode::Normal);
                    conn.closing.get_or_insert(if normal { Departure::Ended } else { Departure::Dropped });
                }
                Ok(_) => conn.last_activity = now,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Capacity(_)) => {
                    close(conn, &mut ws, CloseCode::Size, "message too big", KickReason::ProtocolError);
                    break;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Stage::Gone,
                Err(_) => {
                    conn.closing.get_or_insert(Departure::Dropped);
                    return Stage::Gone;
                }
            }
        }
        flush_socket(conn, ws)
    }

    /// Carries an item from the simulation; false if the session is not ours.
    pub fn outbound(&mut self, ctx: &Ctx<'_>, item: Outbound) -> bool {
        let Some(session) = item.session() else { return false };
        let Some(&slot) = self.by_session.get(&session) else { return false };
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return true };
        let stage = std::mem::replace(&mut conn.stage, Stage::Gone);
        conn.stage = match (stage, item) {
            (Stage::Waiting { stream, origin, .. }, Outbound::Token { result, .. }) => {
                let response = match result {
                    Ok((token, ttl)) => Response::json(
                        200,
                        &serde_json::json!({"token": token, "expires_in_ms": ttl.as_millis() as u64}),
                    ),
                    Err(e) => {
                        let reason =
                            LoginErrorReason::try_from(e.reason).unwrap_or(LoginErrorReason::LoginErrorUnspecified);
                        let mut r = Response::json(
                            api_status(reason),
                            &serde_json::json!({
                                "reason": reason.as_str_name(),
                                "message": e.message,
                                "retry_after_ms": e.retry_after_ms,
                            }),
                        );
                        if e.retry_after_ms > 0 {
                            r.headers.push(("Retry-After", e.retry_after_ms.div_ceil(1000).to_string()));
                        }
                        r
                    }
                };
                reply(stream, &response.with_cors(origin), Instant::now())
            }
            (Stage::Socket(mut ws), item) => {
                match item {
                    Outbound::Admit { msg, .. } => {
                        if !conn.authenticated {
                            conn.authenticated = true;
                            ctx.shared.per_address.authenticated(conn.addr.ip());
                            ctx.shared.stats.authenticated_connections.fetch_add(1, Ordering::Relaxed);
                        }
                        // The data channel is this socket: ready now (snapshots start next tick).
                        self.pending.push(Inbound::UdpBound { session, addr: conn.addr });
                        queue(conn, &mut ws, frame(ws_frame::Body::Control(ControlMessage::new(Body::LoginOk(msg)))));
                    }
                    Outbound::Refuse { error, .. } => {
                        let msg = ControlMessage::new(Body::LoginError(error));
                        queue(conn, &mut ws, frame(ws_frame::Body::Control(msg)));
                        let _ = ws.close(Some(CloseFrame { code: CloseCode::Policy, reason: "login refused".into() }));
                        conn.closing.get_or_insert(Departure::Ended);
                    }
                    Outbound::Control { msg, .. } => {
                        if let Some(Body::Kick(k)) = &msg.body {
                            let reason = KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified);
                            close(conn, &mut ws, CloseCode::Normal, &k.message.clone(), reason);
                        } else {
                            queue(conn, &mut ws, frame(ws_frame::Body::Control(msg)));
                        }
                    }
                    Outbound::Data { msg, .. } if conn.authenticated => {
                        queue(conn, &mut ws, frame(ws_frame::Body::Data(msg)));
                    }
                    Outbound::Encoded { msg, .. } if conn.authenticated => conn.snapshot = Some(msg),
                    Outbound::Close { reason, message, .. } => {
                        close(conn, &mut ws, CloseCode::Normal, &message, reason);
                    }
                    _ => {}
                }
                flush_socket(conn, ws)
            }
            (stage, _) => stage,
        };
        self.settle(ctx, slot);
        true
    }

    /// Kicks every session with `reason` (the drain is over).
    pub fn shutdown(&mut self, ctx: &Ctx<'_>, reason: KickReason, message: &str) {
        for slot in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
            let stage = std::mem::replace(&mut conn.stage, Stage::Gone);
            conn.stage = match stage {
                Stage::Socket(mut ws) => {
                    close(conn, &mut ws, CloseCode::Away, message, reason);
                    flush_socket(conn, ws)
                }
                Stage::Replying { stream, out, written, deadline } => {
                    Stage::Replying { stream, out, written, deadline }
                }
                _ => Stage::Gone,
            };
            self.settle(ctx, slot);
        }
    }

    /// Deadlines: the request head, API answers, replies, login and idleness.
    pub fn sweep(&mut self, ctx: &Ctx<'_>, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
            let stage = std::mem::replace(&mut conn.stage, Stage::Gone);
            conn.stage = match stage {
                Stage::Http { deadline, stream, .. } if now >= deadline => {
                    reply(stream, &Response::error(408, "TIMEOUT", "request not received in time"), now)
                }
                Stage::Waiting { deadline, stream, origin } if now >= deadline => {
                    let r = Response::error(503, "LOGIN_ERROR_SERVER_BUSY", "try again shortly").with_cors(origin);
                    reply(stream, &r, now)
                }
                Stage::Replying { deadline, .. } if now >= deadline => Stage::Gone,
                Stage::Socket(mut ws) => {
                    if conn.closing.is_some() && now >= conn.last_activity + Duration::from_secs(2) {
                        // A peer that does not answer our close frame.
                        Stage::Gone
                    } else {
                        if !conn.authenticated
                            && conn.closing.is_none()
                            && now >= conn.connected_at + self.settings.login_timeout
                        {
                            close(conn, &mut ws, CloseCode::Policy, "not logged in in time", KickReason::LoginTimeout);
                            conn.last_activity = now;
                        } else if conn.closing.is_none() && now >= conn.last_activity + self.settings.idle_timeout {
                            close(conn, &mut ws, CloseCode::Policy, "idle for too long", KickReason::IdleTimeout);
                            conn.last_activity = now;
                        }
                        flush_socket(conn, ws)
                    }
                }
                other => other,
            };
            self.settle(ctx, slot);
        }
    }

    /// Removes a connection that is gone: its slot, its counters, and the simulation told once.
    fn settle(&mut self, ctx: &Ctx<'_>, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        if !matches!(conn.stage, Stage::Gone) {
            return;
        }
        let conn = self.conns[slot].take().expect("checked above");
        if conn.in_sim {
            let departure = conn.closing.unwrap_or(Departure::Dropped);
            let reason = if departure == Departure::Dropped { "peer_closed" } else { "kicked" };
            self.pending.push(Inbound::Disconnected { session: conn.id, departure, reason });
        }
        let shared = ctx.shared;
        shared.per_address.release(conn.addr.ip(), conn.authenticated);
        if conn.authenticated {
            shared.stats.authenticated_connections.fetch_sub(1, Ordering::Relaxed);
        }
        shared.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.by_session.remove(&conn.id);
        self.free.push(slot);
        // The stream was dropped with the stage: closing it deregisters it from the poll.
    }
}

/// The control messages a browser may send after entering (its entry came in the URL) and the data messages.
fn self_handle(
    conn: &mut Conn,
    ws: &mut WebSocket<Stream>,
    frame: WsFrame,
    pending: &mut Vec<Inbound>,
) -> Result<(), &'static str> {
    let session = conn.id;
    match frame.body {
        Some(ws_frame::Body::Control(msg)) => match &msg.body {
            Some(Body::Ping(p)) => {
                let pong = Pong { nonce: p.nonce, client_time_us: p.client_time_us, server_tick: 0 };
                queue(conn, ws, self::frame(ws_frame::Body::Control(ControlMessage::new(Body::Pong(pong)))));
                Ok(())
            }
            Some(Body::Chat(_) | Body::Logout(_)) if conn.authenticated => {
                pending.push(Inbound::Control { session, msg });
                Ok(())
            }
            _ => Err("control message not allowed here"),
        },
        Some(ws_frame::Body::Data(msg)) => match &msg.body {
            Some(DataBody::Input(_) | DataBody::Pong(_) | DataBody::Ping(_)) if conn.authenticated => {
                pending.push(Inbound::Data { session, msg });
                Ok(())
            }
            // A late input after a resume or before admission is harmless: dropped.
            Some(DataBody::Input(_) | DataBody::Pong(_)) => Ok(()),
            _ => Err("data message not allowed here"),
        },
        None => Err("empty frame"),
    }
}

/// Queues a frame on the socket (tungstenite buffers it; [`flush_socket`] writes it).
fn queue(conn: &mut Conn, ws: &mut WebSocket<Stream>, bytes: Vec<u8>) {
    match ws.write(Message::Binary(bytes.into())) {
        Ok(()) => conn.flushed = false,
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => conn.flushed = false,
        Err(tungstenite::Error::WriteBufferFull(_)) => {
            // A reliable message that cannot be queued: the client is too slow to play.
            let _ = ws.close(Some(CloseFrame { code: CloseCode::Again, reason: "client too slow".into() }));
            conn.closing.get_or_insert(Departure::Dropped);
        }
        Err(_) => {
            conn.closing.get_or_insert(Departure::Dropped);
        }
    }
}

/// Sends a `Kick` and starts the close handshake.
fn close(conn: &mut Conn, ws: &mut WebSocket<Stream>, code: CloseCode, message: &str, reason: KickReason) {
    if conn.closing.is_some() {
        return;
    }
    let kick = ControlMessage::new(Body::Kick(Kick { reason: reason as i32, message: message.to_owned() }));
    queue(conn, ws, frame(ws_frame::Body::Control(kick)));
    let reason_text: String = message.chars().take(100).collect();
    let _ = ws.close(Some(CloseFrame { code, reason: reason_text.into() }));
    conn.closing = Some(Departure::Ended);
}

/// Hands the newest snapshot to the socket if everything before it left, then flushes.
fn flush_socket(conn: &mut Conn, mut ws: Box<WebSocket<Stream>>) -> Stage {
    if conn.flushed && conn.closing.is_none() {
        if let Some(snapshot) = conn.snapshot.take() {
            queue(conn, &mut ws, data_frame_of_encoded(&snapshot));
        }
    }
    match ws.flush() {
        Ok(()) => {
            conn.flushed = true;
            Stage::Socket(ws)
        }
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            conn.flushed = false;
            Stage::Socket(ws)
        }
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => Stage::Gone,
        Err(_) => {
            conn.closing.get_or_insert(Departure::Dropped);
            Stage::Gone
        }
    }
}

fn reply(stream: Stream, response: &Response, now: Instant) -> Stage {
    write_reply(stream, response.to_bytes(), 0, now + Duration::from_secs(10))
}

fn write_reply(mut stream: Stream, out: Vec<u8>, mut written: usize, deadline: Instant) -> Stage {
    while written < out.len() {
        match stream.write(&out[written..]) {
            Ok(0) => return Stage::Gone,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Stage::Replying { stream, out, written, deadline };
            }
            Err(_) => return Stage::Gone,
        }
    }
    match stream.flush() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Stage::Replying { stream, out, written, deadline },
        _ => {
            if let Stream::Tls(s) = &mut stream {
                s.conn.send_close_notify();
                let _ = s.conn.write_tls(&mut s.sock);
            }
            let _ = stream.tcp().shutdown(std::net::Shutdown::Write);
            Stage::Gone
        }
    }
}

/// The HTTP status of a refused browser login.
fn api_status(reason: LoginErrorReason) -> u16 {
    use LoginErrorReason::*;
    match reason {
        LoginErrorInvalidCredentials | LoginErrorInvalidToken => 401,
        LoginErrorBanned | LoginErrorLockedOut => 403,
        LoginErrorUsernameTaken | LoginErrorAlreadyOnline => 409,
        LoginErrorInvalidUsername | LoginErrorWeakPassword => 400,
        LoginErrorRateLimited => 429,
        _ => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DataMessage, Snapshot};

    #[test]
    fn a_pre_encoded_snapshot_is_wrapped_exactly_as_prost_would() {
        let msg = DataMessage::new(DataBody::Snapshot(Snapshot { tick: 77, ..Default::default() }));
        let encoded = msg.encode_to_vec();
        assert_eq!(data_frame_of_encoded(&encoded), frame(ws_frame::Body::Data(msg)));
        let big = vec![0u8; 300];
        let decoded = WsFrame::decode(data_frame_of_encoded(&big).as_slice());
        assert!(decoded.is_err() || decoded.is_ok(), "wrapping arbitrary bytes never panics");
    }

    #[test]
    fn refusals_map_to_http_statuses() {
        assert_eq!(api_status(LoginErrorReason::LoginErrorInvalidCredentials), 401);
        assert_eq!(api_status(LoginErrorReason::LoginErrorUsernameTaken), 409);
        assert_eq!(api_status(LoginErrorReason::LoginErrorRateLimited), 429);
        assert_eq!(api_status(LoginErrorReason::LoginErrorServerBusy), 503);
        assert_eq!(api_status(LoginErrorReason::LoginErrorLockedOut), 403);
    }
}
