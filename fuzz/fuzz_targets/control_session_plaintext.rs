//! The control session above TLS: what an authenticated-transport peer (any client that completes a handshake)
//! can make the frame decoder and the session state machine do.
//!
//! Input: `[chunk seed] [responder] [clock step] [plaintext...]`.
//!
//! Each run completes a real TLS handshake between a fresh `ControlSession` (with the server's production TLS
//! configuration) and an in-memory rustls client, then writes `plaintext` as the client's application data, in
//! the chunks the seed picks. Between chunks, bytes move both ways, the session's events are drained and answered
//! as the simulation would (`responder` bit 0: a login is answered `LoginOk` rather than `LoginError`; bit 1: a
//! `Logout` is answered with a `Kick`; bit 2: a `Chat` is echoed as a `ChatMessage`), the virtual clock advances
//! by `2 * step` ms and `handle_timeout` runs. Finally the client closes (close_notify, then EOF).
//!
//! Checked: the session's event invariant (at most one `Closed`, nothing after it); the server only ever sends
//! well-formed frames no larger than its `max_frame`; nothing follows its last word (a `Kick`, or the
//! `LoginError { PROTOCOL_VERSION }` that refuses a Hello); a session closed for a protocol error, flood, idle
//! timeout or by the server tells the client why (that last word, with the matching reason); EOF closes the
//! session.
#![no_main]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use realm::net::framing::FrameDecoder;
use realm::net::session::{CloseReason, ControlSession, SessionEvent, SessionState};
use realm::proto::{
    control_message::Body, ChatMessage, ControlMessage, Kick, KickReason, LoginError, LoginErrorReason, LoginOk,
};
use realm_fuzz::{
    client_tls_config, server_tls_config, session_limits, Chunker, EventChecker, Input, WouldBlockReader,
};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

struct Pair {
    server: ControlSession,
    client: ClientConnection,
    now: Instant,
    checker: EventChecker,
    /// The client's view of the server's frames.
    received: FrameDecoder,
    /// The server's last word, once it said it.
    told: Option<Told>,
    responder: u8,
}

/// How the server tells a client why it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// A `Kick` with this reason.
    Kick(KickReason),
    /// `LoginError { PROTOCOL_VERSION }`: the answer to a Hello with another protocol version.
    VersionRefused,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let seed = input.byte();
    let responder = input.byte();
    let step = Duration::from_millis(2 * u64::from(input.byte()));
    let plaintext = input.rest();

    let mut p = Pair::new(responder);
    p.drive();
    assert_eq!(p.server.state(), SessionState::AwaitHello, "in-memory handshake failed: {:?}", p.checker.closed);
    for chunk in Chunker::new(seed).split(plaintext) {
        if p.server.is_closing() {
            break;
        }
        p.client.writer().write_all(chunk).expect("client buffers the chunk");
        p.drive();
        p.now += step;
        p.server.handle_timeout(p.now);
        p.drive();
    }
    // The client goes away: close_notify, then EOF on the socket. (Only a close the server decided before this
    // owes the client a reason.)
    let closed_by_server = p.checker.closed.clone();
    p.client.send_close_notify();
    p.drive();
    let _ = p.server.read_tls(&mut &[][..], p.now);
    p.drain();
    assert!(p.server.is_closing(), "EOF must close the session");
    p.drive();
    p.check_told_why(closed_by_server);
});

impl Pair {
    fn new(responder: u8) -> Self {
        let now = Instant::now();
        let server = ControlSession::new(server_tls_config(), session_limits(), now).expect("new session");
        let name = ServerName::try_from("localhost").expect("server name");
        let client = ClientConnection::new(client_tls_config(), name).expect("new client");
        let received = FrameDecoder::new(session_limits().max_frame);
        Pair { server, client, now, checker: EventChecker::default(), received, told: None, responder }
    }

    /// Moves bytes both ways until quiet, draining (and answering) the session's events.
    fn drive(&mut self) {
        for _ in 0..64 {
            let mut c2s = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut c2s).expect("write to a Vec");
            }
            if !c2s.is_empty() {
                self.server.read_tls(&mut WouldBlockReader(&c2s), self.now);
            }
            self.drain();
            let mut s2c = Vec::new();
            let _ = self.server.write_tls(&mut s2c);
            realm_fuzz::trace!(
                "c2s {} bytes, s2c {} bytes, state {:?}, closed {:?}",
                c2s.len(),
                s2c.len(),
                self.server.state(),
                self.checker.closed
            );
            if !s2c.is_empty() {
                let mut rd = &s2c[..];
                while !rd.is_empty() {
                    if self.client.read_tls(&mut rd).is_err() {
                        break;
                    }
                    if self.client.process_new_packets().is_err() {
                        break;
                    }
                    self.read_client_plaintext();
                }
            }
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
        }
        panic!("the pair did not go quiet in 64 rounds");
    }

    fn drain(&mut self) {
        let mut answers = Vec::new();
        let responder = self.responder;
        self.checker.drain(&mut self.server, |event| {
            if let SessionEvent::Message(msg) = event {
                if let Some(answer) = answer(responder, msg) {
                    answers.push(answer);
                }
            }
        });
        for answer in answers {
            // The session may have closed or moved on since the event (a later frame in the same read); a refusal
            // is fine, a panic is not.
            let _ = self.server.send(&answer);
        }
        self.checker.drain(&mut self.server, |_| {});
    }

    fn read_client_plaintext(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        let taken = self.received.feed(rest);
                        rest = &rest[taken..];
                        self.decode_received();
                    }
                }
            }
        }
    }

    fn decode_received(&mut self) {
        loop {
            match self.received.decode() {
                Ok(Some(msg)) => {
                    realm_fuzz::trace!("client received {msg:?}");
                    assert!(self.told.is_none(), "frame {msg:?} after the server's last word {:?}", self.told);
                    match &msg.body {
                        Some(Body::Kick(k)) => {
                            self.told =
                                Some(Told::Kick(KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified)))
                        }
                        Some(Body::LoginError(e)) if e.reason == LoginErrorReason::LoginErrorProtocolVersion as i32 => {
                            self.told = Some(Told::VersionRefused)
                        }
                        _ => {}
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // A partial frame is allowed only when the session gave up as a slow consumer.
                    assert_eq!(
                        self.checker.closed,
                        Some(CloseReason::SlowConsumer),
                        "the server sent a malformed or oversized frame: {e}"
                    );
                    return;
                }
            }
        }
    }

    /// A session that closes for a reason the client caused or can act on says which: the exact reason for the
    /// reasons this target knows, some last word for reasons added since. Only a close the client started
    /// (close_notify, EOF), a TLS or socket failure, or a full outbound buffer goes without.
    fn check_told_why(&self, closed: Option<CloseReason>) {
        let expected = match &closed {
            None
            | Some(CloseReason::PeerClosed | CloseReason::Tls(_) | CloseReason::Io(_) | CloseReason::SlowConsumer) => {
                return
            }
            // A refused protocol version is a protocol error the client can act on: either answer is fine.
            Some(CloseReason::Protocol(_)) if self.told == Some(Told::VersionRefused) => None,
            Some(CloseReason::Protocol(_) | CloseReason::Frame(_)) => Some(KickReason::ProtocolError),
            Some(CloseReason::Flood) => Some(KickReason::Flood),
            Some(CloseReason::IdleTimeout | CloseReason::HandshakeTimeout) => Some(KickReason::IdleTimeout),
            Some(CloseReason::Kicked(reason)) => Some(*reason),
            Some(_) => None,
        };
        assert!(self.told.is_some(), "closed with {closed:?} without telling the client why");
        if let Some(expected) = expected {
            assert_eq!(self.told, Some(Told::Kick(expected)), "closed with {closed:?}");
        }
    }
}

/// What the simulation would send back for `msg` (the parts of it this target plays).
fn answer(responder: u8, msg: &ControlMessage) -> Option<ControlMessage> {
    match &msg.body {
        Some(Body::Login(_) | Body::Register(_) | Body::TransferLogin(_)) if responder & 1 != 0 => {
            Some(ControlMessage::new(Body::LoginOk(LoginOk { session_id: 7, player_id: 9, ..Default::default() })))
        }
        Some(Body::Login(_) | Body::Register(_) | Body::TransferLogin(_)) => {
            Some(ControlMessage::new(Body::LoginError(LoginError {
                reason: 1,
                message: "invalid credentials".into(),
                retry_after_ms: 0,
            })))
        }
        Some(Body::Logout(_)) if responder & 2 != 0 => {
            Some(ControlMessage::new(Body::Kick(Kick::new(KickReason::ServerShutdown, "bye"))))
        }
        Some(Body::Chat(chat)) if responder & 4 != 0 => Some(ControlMessage::new(Body::ChatMessage(ChatMessage {
            channel: chat.channel,
            from_entity: 1,
            from_name: "fuzz".into(),
            text: chat.text.clone(),
        }))),
        _ => None,
    }
}
