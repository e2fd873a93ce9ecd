//! The browser endpoint of a real `realm-server` process (issue 18), driven the way a browser drives it: HTTP
//! login for a signed token, then a WebSocket of `WsFrame`s. A browser player and a TLS+UDP player share one world;
//! and every bad input on the new surface (HTTP heads and bodies, WebSocket frames, tokens) ends that connection
//! with a clear answer and nothing else.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::process::ServerProcess;
use common::ws::{http, login_ok, next, open, post, send, token, Ws};

type Attack = Box<dyn Fn(&mut Ws)>;
use prost::Message as _;
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ws_frame, Chat, ChatChannel, ControlMessage, DataMessage,
    Input, KickReason, LoginErrorReason, Logout, Register, Snapshot, Vec2, WsFrame,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn snapshot_with(ws: &mut Ws, want: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(WsFrame { body: Some(ws_frame::Body::Data(DataMessage { body: Some(DataBody::Snapshot(s)) })) }) =
            next(ws)
        {
            if want(&s) {
                return s;
            }
        }
    }
    panic!("no such snapshot in 10 s");
}

fn input(seq: u32, x: f32) -> ws_frame::Body {
    ws_frame::Body::Data(DataMessage::new(DataBody::Input(Input {
        sequence: seq,
        move_dir: Some(Vec2 { x, y: 0.0 }),
        ..Default::default()
    })))
}

fn server() -> (ServerProcess, SocketAddr) {
    // A small zone with one spawn point: every player starts in view of every other.
    let dir = std::env::temp_dir().join(common::unique("web_zone"));
    let zone = common::starter_zone_with_portal(&dir, "127.0.0.1:1".parse().unwrap(), (5.0, 5.0));
    let zone = zone.to_string_lossy().into_owned();
    let s = ServerProcess::start(&[("REALM_SECURITY_TOKEN_TTL_SECS", "3"), ("REALM_GAME_ZONE_FILE", &zone)]);
    let web = s.web.expect("the browser endpoint is on by default and its URL is printed");
    (s, web)
}

#[test]
fn a_browser_registers_plays_and_sees_a_native_player_in_the_same_world() {
    let (s, web) = server();
    let (status, head, body) = http(web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("<canvas") || body.contains("app.js"), "the web client: {body:.200}");
    for h in
        ["Content-Security-Policy: default-src 'none'", "X-Content-Type-Options: nosniff", "frame-ancestors 'none'"]
    {
        assert!(head.contains(h), "{h}:\n{head}");
    }
    let (status, _, js) = http(web, b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status == 200 && js.len() > 1000);

    let mut browser = open(web, &format!("?token={}", token(web, "/api/register", "webby")));
    let ok = login_ok(&mut browser);
    assert_eq!(ok.zone, "starter-vale");

    // A native player (TLS + UDP) in the same world.
    let mut native = s.connect().unwrap();
    let nok = native
        .authenticate(Body::Register(Register { username: "nativey".into(), password: "password123".into() }))
        .unwrap();
    let keys = native.udp_keys(nok.session_id).unwrap();
    let mut link = realm::client::UdpLink::bind(s.game, nok.session_id, &keys, Duration::from_secs(5)).unwrap();

    // The browser sees itself and the native player; the native player sees the browser player.
    for seq in 1..=5 {
        send(&mut browser, input(seq, 0.0));
    }
    let snap = snapshot_with(&mut browser, |s| s.entities.iter().any(|e| e.id == nok.entity_id));
    assert!(snap.entities.iter().any(|e| e.id == ok.entity_id));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(s)) }) = link.recv(Duration::from_millis(500)) {
            seen = s.entities.iter().any(|e| e.id == ok.entity_id);
        }
    }
    assert!(seen, "the native player sees the browser player");

    // The browser walks: its own entity moves in its snapshots.
    let start = snap.entities.iter().find(|e| e.id == ok.entity_id).and_then(|e| e.position).unwrap();
    for seq in 6..=30 {
        send(&mut browser, input(seq, 1.0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = snapshot_with(&mut browser, |s| s.last_processed_input >= 30);
    let now = moved.entities.iter().find(|e| e.id == ok.entity_id).and_then(|e| e.position).unwrap();
    assert!(now.x > start.x + 5.0, "walked east: {start:?} -> {now:?}");

    // The browser says something; the native player hears it.
    send(
        &mut browser,
        ws_frame::Body::Control(ControlMessage::new(Body::Chat(Chat {
            channel: ChatChannel::Zone as i32,
            text: "hello from a browser".into(),
        }))),
    );
    native.set_timeout(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut heard = false;
    while !heard && Instant::now() < deadline {
        if let Ok(ControlMessage { body: Some(Body::ChatMessage(m)) }) = native.recv() {
            heard = m.text == "hello from a browser";
        }
    }
    assert!(heard, "chat crosses transports");

    // Logout ends with KICK_REASON_LOGGED_OUT and a normal close.
    send(&mut browser, ws_frame::Body::Control(ControlMessage::new(Body::Logout(Logout {}))));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut kicked = None;
    while Instant::now() < deadline {
        match next(&mut browser) {
            Ok(WsFrame { body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::Kick(k)) })) }) => {
                kicked = Some(k.reason)
            }
            Ok(_) => {}
            Err(code) => {
                assert_eq!(code, Some(CloseCode::Normal));
                break;
            }
        }
    }
    assert_eq!(kicked, Some(KickReason::LoggedOut as i32));
    s.stop();
}

#[test]
fn bad_tampered_expired_and_replayed_tokens_are_refused_and_nothing_else_is_affected() {
    let (s, web) = server();
    let good = token(web, "/api/register", "tokeny");
    let refused = |query: &str| {
        let mut ws = open(web, query);
        let frame = next(&mut ws);
        let reason = match frame {
            Ok(WsFrame { body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::LoginError(e)) })) }) => {
                e.reason
            }
            other => panic!("expected LoginError for {query:.40}, got {other:?}"),
        };
        assert_eq!(next(&mut ws).err(), Some(Some(CloseCode::Policy)), "closed with 1008");
        reason
    };
    let invalid = LoginErrorReason::LoginErrorInvalidToken as i32;
    assert_eq!(refused("?token=not-a-token"), invalid);
    // Tampered: another player id in the payload, the signature unchanged.
    let parts: Vec<&str> = good.split('.').collect();
    let payload = String::from_utf8(B64.decode(parts[1]).unwrap()).unwrap();
    let forged = payload.replacen("\"sub\":\"", "\"sub\":\"9", 1);
    assert_eq!(refused(&format!("?token={}.{}.{}", parts[0], B64.encode(forged), parts[2])), invalid);
    // The good token works once...
    let mut ws = open(web, &format!("?token={good}"));
    login_ok(&mut ws);
    send(&mut ws, ws_frame::Body::Control(ControlMessage::new(Body::Logout(Logout {}))));
    while next(&mut ws).is_ok() {}
    // ...and is refused when replayed after the logout.
    assert_eq!(refused(&format!("?token={good}")), invalid);
    // Expired (the TTL is 3 s here).
    let late = token(web, "/api/login", "tokeny");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(refused(&format!("?token={late}")), invalid);
    // A wrong password over HTTP: 401 with the proto's reason name; an unknown field set: 400.
    let (status, body) = post(web, "/api/login", r#"{"username":"tokeny","password":"wrong-password"}"#);
    assert_eq!((status, body["reason"].as_str()), (401, Some("LOGIN_ERROR_INVALID_CREDENTIALS")));
    assert_eq!(post(web, "/api/login", r#"{"user":"x"}"#).0, 400);
    // Through all of it, a fresh login still plays.
    let mut ws = open(web, &format!("?token={}", token(web, "/api/login", "tokeny")));
    login_ok(&mut ws);
    s.stop();
}

#[test]
fn oversized_malformed_and_flooding_browsers_are_closed_and_their_slots_freed() {
    let (s, web) = server();
    // HTTP: an endless head, a huge body, a foreign origin, a slow client.
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(http(web, &big).0, 431);
    assert_eq!(http(web, b"POST /api/login HTTP/1.1\r\nContent-Length: 100000\r\n\r\n").0, 413);
    let foreign = format!(
        "POST /api/login HTTP/1.1\r\nHost: {web}\r\nOrigin: https://evil.example\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert_eq!(http(web, foreign.as_bytes()).0, 403);
    assert_eq!(http(web, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").0, 400);
    // WebSocket: a message over the cap (1009), text (1003), garbage (1008), a flood (1008).
    let cases: [(&str, Attack, CloseCode); 4] = [
        (
            "too big",
            Box::new(|ws| {
                let _ = ws.send(Message::Binary(vec![0u8; 100_000].into()));
            }),
            CloseCode::Size,
        ),
        (
            "text",
            Box::new(|ws| {
                let _ = ws.send(Message::Text("hi".into()));
            }),
            CloseCode::Unsupported,
        ),
        (
            "garbage",
            Box::new(|ws| {
                let _ = ws.send(Message::Binary(vec![0xff; 64].into()));
            }),
            CloseCode::Policy,
        ),
        (
            "flood",
            Box::new(|ws| {
                for seq in 0..400 {
                    let _ = ws.send(Message::Binary(WsFrame { body: Some(input(seq, 0.0)) }.encode_to_vec().into()));
                }
            }),
            CloseCode::Policy,
        ),
    ];
    for (i, (what, attack, code)) in cases.iter().enumerate() {
        let mut ws = open(web, &format!("?token={}", token(web, "/api/register", &format!("attacker{i}"))));
        login_ok(&mut ws);
        attack(&mut ws);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut closed = None;
        while closed.is_none() && Instant::now() < deadline {
            if let Err(c) = next(&mut ws) {
                closed = Some(c);
            }
        }
        assert_eq!(closed, Some(Some(*code)), "{what}");
    }
    // A silent upgrade that never logs in... has nothing to log in with: a missing entry is a 400 before upgrade.
    assert_eq!(http(web, format!("GET /ws HTTP/1.1\r\nHost: {web}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes()).0, 400);
    // Every slot is back and a player still gets in.
    assert!(
        ServerProcess::wait_until(Duration::from_secs(10), || s.metric("game_server_connections_open", &[]) == 0.0),
        "open connections: {}",
        s.metric("game_server_connections_open", &[])
    );
    let mut ws = open(web, &format!("?token={}", token(web, "/api/register", "afterwards")));
    login_ok(&mut ws);
    s.stop();
}

#[test]
fn a_browser_whose_socket_dropped_resumes_with_its_session_token() {
    let (s, web) = server();
    let mut ws = open(web, &format!("?token={}", token(web, "/api/register", "resumer")));
    let ok = login_ok(&mut ws);
    // The network drops: no close frame.
    ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    drop(ws);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = open(web, &format!("?resume={}", B64.encode(&ok.session_token)));
    let back = login_ok(&mut again);
    assert_eq!(
        (back.player_id, back.entity_id),
        (ok.player_id, ok.entity_id),
        "the same character, still in the world"
    );
    assert_ne!(back.session_token, ok.session_token, "a new token each time");
    // The old token is used up.
    let mut third = open(web, &format!("?resume={}", B64.encode(&ok.session_token)));
    match next(&mut third) {
        Ok(WsFrame { body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::LoginError(e)) })) }) => {
            assert_eq!(e.reason, LoginErrorReason::LoginErrorInvalidResume as i32)
        }
        other => panic!("{other:?}"),
    }
    s.stop();
}

#[test]
fn with_ws_tls_the_browser_endpoint_speaks_tls_with_the_game_certificate() {
    let s = ServerProcess::start(&[("REALM_SERVER_WS_TLS", "true")]);
    let web = s.web.expect("browser endpoint");
    let tls = |addr: SocketAddr| {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(s.client_tls(), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };
    // Plain HTTP to a TLS port gets nothing useful.
    let (status, _, _) = http(web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 0, "no plaintext answer on a TLS endpoint");
    // The login API over TLS.
    let body = r#"{"username":"tlsweb","password":"password123"}"#;
    let mut stream = tls(web);
    let req = format!("POST /api/register HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    let token = json["token"].as_str().unwrap();
    // And a game session over wss.
    let (mut ws, _) = tungstenite::client::client(format!("wss://localhost:{}/ws?token={token}", web.port()), tls(web))
        .expect("wss upgrade");
    match ws.read() {
        Ok(Message::Binary(b)) => match WsFrame::decode(b.as_ref()).unwrap().body {
            Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::LoginOk(ok)) })) => {
                assert!(ok.player_id > 0)
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    s.stop();
}

#[test]
fn a_browser_that_stops_reading_gets_the_newest_snapshot_not_a_backlog() {
    // A crowd of NPCs around the spawn: every snapshot is full (~1.1 KB), as in a busy zone.
    let dir = std::env::temp_dir().join(common::unique("web_crowd"));
    let wolves = common::Npcs {
        kind: "wolf",
        count: 200,
        at: (200.0, 200.0, 20.0),
        max_hp: 30,
        damage: (1, 1),
        radii: (1.0, 25.0),
    };
    let zone = common::zone_file(&dir, "crowd.toml", &wolves.toml());
    let s = ServerProcess::start(&[("REALM_GAME_ZONE_FILE", zone.to_str().unwrap())]);
    let web = s.web.unwrap();
    let t = token(web, "/api/register", "sleepy");
    // A small receive window, so the server's socket fills while the page does not read (a stalled tab).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&web.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{web}/ws?token={t}"), stream).unwrap();
    login_ok(&mut ws);
    let first = snapshot_with(&mut ws, |_| true).tick;
    // 15 s without reading: 300 snapshots of ~1 KB each would overflow a per-socket queue (256 KiB: the client
    // would be closed as too slow); the server keeps only the newest one for a socket that has not taken the last.
    std::thread::sleep(Duration::from_secs(15));
    let (mut newest, mut received) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match next(&mut ws) {
            Ok(WsFrame { body: Some(ws_frame::Body::Data(DataMessage { body: Some(DataBody::Snapshot(s)) })) }) => {
                newest = newest.max(s.tick);
                received += 1;
            }
            Ok(_) => {}
            Err(code) => panic!("a stalled page was disconnected ({code:?}) instead of getting fewer snapshots"),
        }
    }
    // The server ticked ~300 + 100 times meanwhile; the page is current again within the 5 s of reading.
    assert!(newest >= first + 350, "caught up to the present: first {first}, newest {newest}");
    // What the sockets' buffers held was delivered late; everything beyond that was superseded, never queued.
    let ticks = newest - first + 1;
    assert!(received + 60 < ticks, "{received} snapshots for {ticks} ticks: a stalled page got a backlog");
    s.stop();
}
