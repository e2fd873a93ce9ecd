//! A blocking game client: the TLS control channel and the UDP data channel, as `realm-client`, the tests and
//! simple tools use them. (The load generator drives many of these from a few threads.)
//!
//! It speaks exactly what README's protocol section documents; nothing here is privileged. The protocol logic
//! (greeting, login answers, resume tokens, UDP binding, pings, input sequencing) is the sans-IO [`session`]
//! every client shares; this module only moves its messages over blocking sockets.

pub mod session;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::net::framing::{encode_frame, FrameDecoder, FrameError};
use crate::net::udp::{DataKeys, EXPORTER_LABEL};
use crate::proto::{
    control_message::Body, data_message::Body as DataBody, ControlMessage, DataMessage, HelloOk, Kick, KickReason,
    LoginError, LoginOk, MAX_DATAGRAM_BYTES,
};

use self::session::{ControlConfig, ControlEvent, ControlSession, DataConfig, DataSession, Received, SessionEnd};

/// What went wrong on the client side; every variant is something a player can be told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Name resolution or TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Target.
        addr: String,
        /// OS error.
        source: io::Error,
    },
    /// TLS failed (certificate not trusted, version refused, ...).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The socket failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The server sent something that is not a valid frame.
    #[error("bad frame from server: {0}")]
    Frame(#[from] FrameError),
    /// The server closed the connection with a reason.
    #[error("kicked by server: {reason:?}: {message}")]
    Kicked {
        /// Reason code.
        reason: KickReason,
        /// Server's text.
        message: String,
    },
    /// The server closed the connection without a reason.
    #[error("server closed the connection")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// Login or registration refused.
    #[error("login refused: {}", .0.message)]
    Login(LoginError),
    /// The server answered something unexpected.
    #[error("unexpected reply: {0}")]
    Unexpected(&'static str),
}

impl ClientError {
    fn from_kick(k: Kick) -> Self {
        ClientError::Kicked {
            reason: KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified),
            message: k.message,
        }
    }

    /// A session that ended while a reply was awaited.
    fn from_end(end: SessionEnd) -> Self {
        match end {
            SessionEnd::Kicked { reason, message } => ClientError::from_kick(Kick { reason, message }),
            SessionEnd::LoggedOut => {
                ClientError::Kicked { reason: KickReason::LoggedOut, message: "logged out".into() }
            }
            SessionEnd::ConnectionLost => ClientError::Closed,
            SessionEnd::TimedOut(_) => ClientError::Timeout,
            SessionEnd::Protocol(what) => ClientError::Unexpected(what),
        }
    }
}

/// The control channel: TLS over TCP with length-prefixed frames.
pub struct Connection {
    tls: StreamOwned<ClientConnection, TcpStream>,
    decoder: FrameDecoder,
    max_frame: usize,
    server: SocketAddr,
    scratch: Vec<u8>,
    /// The protocol state behind [`Connection::hello`] and [`Connection::authenticate`] (created by `hello`).
    session: Option<ControlSession>,
}

impl Connection {
    /// Connects and completes the TLS handshake. `server_name` is checked against the certificate.
    pub fn connect(
        addr: &str,
        server_name: &str,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect { addr: addr.to_owned(), source };
        let target = addr
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
        let tcp = TcpStream::connect_timeout(&target, timeout).map_err(connect_err)?;
        Self::over(tcp, server_name, tls, timeout)
    }

    /// Completes the TLS handshake over a TCP stream the caller connected (from a chosen local address, say).
    pub fn over(
        tcp: TcpStream,
        server_name: &str,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let target = tcp.peer_addr()?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        let name =
            ServerName::try_from(server_name.to_owned()).map_err(|_| ClientError::Unexpected("invalid server name"))?;
        let conn = ClientConnection::new(tls, name)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
                _ => ClientError::Io(e),
            })?;
        }
        Ok(Self {
            tls,
            decoder: FrameDecoder::new(64 * 1024),
            max_frame: session::DEFAULT_MAX_FRAME,
            server: target,
            scratch: Vec::new(),
            session: None,
        })
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The TCP socket underneath (socket options, local address).
    pub fn socket(&self) -> &TcpStream {
        &self.tls.sock
    }

    /// Sends Hello (protocol [`crate::proto::PROTOCOL_VERSION`]) and waits for HelloOk.
    pub fn hello(&mut self, client_name: &str) -> Result<HelloOk, ClientError> {
        self.hello_version(client_name, crate::proto::PROTOCOL_VERSION)
    }

    /// Sends Hello for protocol `version` (1: full snapshots, 2: delta snapshots) and waits for HelloOk.
    pub fn hello_version(&mut self, client_name: &str, version: u32) -> Result<HelloOk, ClientError> {
        let config = ControlConfig { protocol_version: version, ..ControlConfig::new(client_name, Instant::now()) };
        let mut session = ControlSession::new(config, None);
        session.connected(Instant::now());
        let result = loop {
            match self.next_event(&mut session) {
                Ok(ControlEvent::Greeted(ok)) => break Ok(ok),
                // LOGIN_ERROR_PROTOCOL_VERSION: this client is too old or too new for the server.
                Ok(ControlEvent::LoginRefused(e)) => break Err(ClientError::Login(e)),
                Ok(ControlEvent::Ended(end)) => break Err(ClientError::from_end(end)),
                Ok(ControlEvent::Pong { .. }) => continue,
                Ok(_) => break Err(ClientError::Unexpected("expected HelloOk")),
                Err(e) => break Err(e),
            }
        };
        self.session = Some(session);
        result
    }

    /// Sends a login-like request (Login, Register, TransferLogin or Resume) and waits for LoginOk/LoginError,
    /// skipping anything else that arrives in between.
    pub fn authenticate(&mut self, request: Body) -> Result<LoginOk, ClientError> {
        let mut session =
            self.session.take().unwrap_or_else(|| ControlSession::new(ControlConfig::new("", Instant::now()), None));
        session.request(request, Instant::now());
        let result = loop {
            match self.next_event(&mut session) {
                Ok(ControlEvent::LoggedIn { ok, .. }) => break Ok(ok),
                Ok(ControlEvent::LoginRefused(e)) => break Err(ClientError::Login(e)),
                Ok(ControlEvent::Ended(end)) => break Err(ClientError::from_end(end)),
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        self.session = Some(session);
        result
    }

    /// Drives `session` over this connection: sends what it has queued, then feeds it the server's messages until
    /// it reports an event, which is returned. [`ClientError::Timeout`] when nothing came within the read timeout
    /// (the session's own deadlines have been run by then); [`ClientError::Closed`] when the server closed.
    pub fn next_event(&mut self, session: &mut ControlSession) -> Result<ControlEvent, ClientError> {
        loop {
            while let Some(msg) = session.poll_transmit() {
                self.send(&msg)?;
            }
            if let Some(event) = session.poll_event() {
                return Ok(event);
            }
            match self.recv_message() {
                Ok(msg) => {
                    session.handle(msg, Instant::now());
                    self.max_frame = session.max_frame();
                }
                Err(ClientError::Timeout) => {
                    session.handle_timeout(Instant::now());
                    while let Some(msg) = session.poll_transmit() {
                        self.send(&msg)?;
                    }
                    return session.poll_event().ok_or(ClientError::Timeout);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-attaches a session whose connection dropped, with the `session_token` of its latest `LoginOk` (send it
    /// on a new connection, after [`Connection::hello`]). A refusal (`LOGIN_ERROR_INVALID_RESUME`) means: log in
    /// with the password. The new `LoginOk` carries the token for the next resume.
    pub fn resume(&mut self, session_token: &[u8]) -> Result<LoginOk, ClientError> {
        self.authenticate(Body::Resume(crate::proto::Resume { session_token: session_token.to_vec() }))
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &ControlMessage) -> Result<(), ClientError> {
        self.scratch.clear();
        encode_frame(msg, self.max_frame.max(64), &mut self.scratch)?;
        self.tls.write_all(&self.scratch)?;
        self.tls.flush()?;
        Ok(())
    }

    /// Sends raw bytes inside TLS (tests of the server's framing).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.tls.write_all(bytes)?;
        self.tls.flush()?;
        Ok(())
    }

    /// Waits for the next message (up to the read timeout). A `Kick` becomes [`ClientError::Kicked`].
    pub fn recv(&mut self) -> Result<ControlMessage, ClientError> {
        match self.recv_message()? {
            ControlMessage { body: Some(Body::Kick(k)) } => Err(ClientError::from_kick(k)),
            msg => Ok(msg),
        }
    }

    /// Waits for the next message (up to the read timeout), kicks included.
    fn recv_message(&mut self) -> Result<ControlMessage, ClientError> {
        loop {
            if let Some(msg) = self.decoder.decode()? {
                return Ok(msg);
            }
            let spare = self.decoder.spare();
            match self.tls.read(spare) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.decoder.filled(n),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ClientError::Closed),
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }

    /// Changes how long [`Connection::recv`] waits.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.tls.sock.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// The UDP keys of this TLS session for `session_id` (RFC 5705 exporter; never sent on the wire).
    pub fn udp_keys(&self, session_id: u64) -> Result<DataKeys, ClientError> {
        let material =
            self.tls.conn.export_keying_material([0u8; 64], EXPORTER_LABEL, Some(&session_id.to_be_bytes()))?;
        Ok(DataKeys::from_keying_material(&material))
    }

    /// Sends TLS close_notify and closes.
    pub fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.conn.complete_io(&mut self.tls.sock);
    }
}

/// The data channel: one UDP socket, sealed datagrams, driven by a [`DataSession`].
pub struct UdpLink {
    socket: UdpSocket,
    session: DataSession,
    server: SocketAddr,
    buf: Vec<u8>,
    /// The session's first hello is queued but not yet sent (the next [`UdpLink::hello`] sends it).
    fresh: bool,
}

impl UdpLink {
    /// Binds a local socket and completes the UdpHello/UdpWelcome exchange (resending the hello until `timeout`).
    pub fn bind(server: SocketAddr, session_id: u64, keys: &DataKeys, timeout: Duration) -> Result<Self, ClientError> {
        let session = DataSession::new(session_id, keys, DataConfig::new(Instant::now()), Instant::now());
        Self::bind_session(server, session, timeout)
    }

    /// Like [`UdpLink::bind`] for a session the caller configured (own pings, say).
    pub fn bind_session(server: SocketAddr, session: DataSession, timeout: Duration) -> Result<Self, ClientError> {
        let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(|_| ClientError::Unexpected("addr"))?;
        let socket = UdpSocket::bind(local)?;
        let mut link = Self { socket, session, server, buf: vec![0u8; MAX_DATAGRAM_BYTES + 64], fresh: true };
        link.hello(timeout)?;
        Ok(link)
    }

    /// (Re)sends UdpHello until UdpWelcome arrives, answering the server's UdpChallenge on the way; used again after
    /// a NAT rebind.
    pub fn hello(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        if !std::mem::take(&mut self.fresh) {
            self.session.bind(Instant::now());
        }
        loop {
            self.flush()?;
            if self.session.is_bound() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let wake = self.session.poll_timeout().map_or(deadline, |t| t.min(deadline));
            match self.recv_event(wake.saturating_duration_since(now).max(Duration::from_millis(1))) {
                Ok(_) | Err(ClientError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The protocol state (inputs go through it).
    pub fn session(&mut self) -> &mut DataSession {
        &mut self.session
    }

    /// Sends what the session has queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(sealed) = self.session.poll_transmit(&mut self.buf) {
            let n = sealed.map_err(|_| ClientError::Unexpected("seal"))?;
            self.socket.send_to(&self.buf[..n], self.server)?;
        }
        Ok(())
    }

    /// Seals and sends one message.
    pub fn send(&mut self, msg: &DataMessage) -> Result<(), ClientError> {
        self.flush()?;
        let n = self.session.seal(msg, &mut self.buf).map_err(|_| ClientError::Unexpected("message too large"))?;
        self.socket.send_to(&self.buf[..n], self.server)?;
        Ok(())
    }

    /// Waits for the next authentic datagram from the server; forged or replayed ones are skipped, the server's
    /// pings answered.
    pub fn recv(&mut self, timeout: Duration) -> Result<DataMessage, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            let body = match self.recv_event(left)? {
                Received::Welcome(w) => DataBody::UdpWelcome(w),
                Received::Snapshot(s) => DataBody::Snapshot(s),
                Received::Pong { pong, .. } => DataBody::Pong(pong),
                Received::Other(msg) => return Ok(msg),
                _ => continue,
            };
            return Ok(DataMessage::new(body));
        }
    }

    /// Waits up to `timeout` for one datagram from the server and lets the session handle it (and its timers);
    /// sends whatever that queued (answers to pings and challenges, hello resends, own pings).
    pub fn recv_event(&mut self, timeout: Duration) -> Result<Received, ClientError> {
        let result = self.recv_datagram(timeout);
        if self.session.handle_timeout(Instant::now()).is_err() {
            return Err(ClientError::Timeout);
        }
        self.flush()?;
        result
    }

    fn recv_datagram(&mut self, timeout: Duration) -> Result<Received, ClientError> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) if from == self.server => {
                    return self
                        .session
                        .handle_datagram(&mut self.buf[..n], Instant::now())
                        .map_err(|_| ClientError::Unexpected("UdpWelcome for another session"));
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout)
                }
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }

    /// The local socket (tests send raw datagrams through it).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Seals a message without sending it (tests: replay, spoofing).
    pub fn seal_raw(&mut self, msg: &DataMessage) -> Result<Vec<u8>, ClientError> {
        let n = self.session.seal(msg, &mut self.buf).map_err(|_| ClientError::Unexpected("message too large"))?;
        Ok(self.buf[..n].to_vec())
    }

    /// Moves the link to a fresh local socket (simulates a NAT rebinding); call [`UdpLink::hello`] afterwards.
    pub fn rebind_socket(&mut self) -> Result<(), ClientError> {
        self.socket = UdpSocket::bind("0.0.0.0:0")?;
        Ok(())
    }
}
