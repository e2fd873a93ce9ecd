//! Zone transfer as the client sees it. Today's servers refuse transfers, so two small scripted zones stand in
//! for real ones: they speak the documented protocol (TLS frames, RFC 5705 UDP keys, sealed datagrams) with the
//! project's own framing and data-channel code. Zone A logs the player in and sends `ZoneTransfer`; the client
//! must connect to zone B on its own, present the token with `TransferLogin`, bind UDP there and carry on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use realm::config::TlsConfig;
use realm::game_client::{script, Endpoint};
use realm::net::framing::{encode_frame, FrameDecoder};
use realm::net::tls::{self, ServerTrust};
use realm::net::udp::{DataChannel, DataKeys, EXPORTER_LABEL};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, ChatMessage, ControlMessage, DataMessage, EntityState,
    HelloOk, Kick, KickReason, LoginOk, Snapshot, UdpWelcome, Vec2, ZoneTransfer, MAX_DATAGRAM_BYTES,
};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// One scripted zone: a TLS listener and a UDP socket on the same loopback port.
struct FakeZone {
    listener: TcpListener,
    udp: UdpSocket,
    tls: Arc<ServerConfig>,
}

impl FakeZone {
    fn bind(tls: Arc<ServerConfig>) -> Self {
        loop {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            if let Ok(udp) = UdpSocket::bind(listener.local_addr().unwrap()) {
                return Self { listener, udp, tls };
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}

fn send(tls: &mut Tls, body: Body) {
    let mut frame = Vec::new();
    encode_frame(&ControlMessage::new(body), 4096, &mut frame).unwrap();
    tls.write_all(&frame).unwrap();
    tls.flush().unwrap();
}

fn recv(tls: &mut Tls, decoder: &mut FrameDecoder) -> Body {
    loop {
        if let Some(msg) = decoder.decode().unwrap() {
            return msg.body.expect("a message with a body");
        }
        let n = tls.read(decoder.spare()).expect("the client keeps the connection");
        assert!(n > 0, "the client closed the connection early");
        decoder.filled(n);
    }
}

/// Accepts one client, greets it, expects `expect_login` to hold for its login request, logs it in as
/// `entity` at `position`, binds its UDP endpoint, then runs `play`.
fn serve(
    zone: FakeZone,
    name: &'static str,
    entity: u64,
    position: (f32, f32),
    expect_login: impl FnOnce(&Body),
    play: impl FnOnce(&mut Tls, &mut FrameDecoder, &UdpSocket, &mut DataChannel, SocketAddr),
) {
    let (tcp, _) = zone.listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = StreamOwned::new(ServerConnection::new(Arc::clone(&zone.tls)).unwrap(), tcp);
    let mut decoder = FrameDecoder::new(4096);
    assert!(matches!(recv(&mut tls, &mut decoder), Body::Hello(_)));
    send(
        &mut tls,
        Body::HelloOk(HelloOk { protocol_version: 1, max_frame_bytes: 4096, zone: name.into(), ..Default::default() }),
    );
    expect_login(&recv(&mut tls, &mut decoder));
    let session_id = entity * 100;
    let material = tls.conn.export_keying_material([0u8; 64], EXPORTER_LABEL, Some(&session_id.to_be_bytes())).unwrap();
    let mut channel = DataChannel::server(session_id, &DataKeys::from_keying_material(&material));
    let ok = LoginOk {
        session_id,
        player_id: 7,
        zone: name.into(),
        tick_rate_hz: 20,
        udp_port: u32::from(zone.addr().port()),
        entity_id: entity,
        session_token: vec![1; 16],
        position: Some(Vec2 { x: position.0, y: position.1 }),
    };
    send(&mut tls, Body::LoginOk(ok));
    // UDP binding: the first authentic hello gets a welcome.
    zone.udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 64];
    let client = loop {
        let (n, from) = zone.udp.recv_from(&mut buf).unwrap();
        if let Ok(DataMessage { body: Some(DataBody::UdpHello(_)) }) = channel.open(&mut buf[..n]) {
            break from;
        }
    };
    let welcome = DataMessage::new(DataBody::UdpWelcome(UdpWelcome { session_id, server_tick: 1 }));
    let n = channel.seal(&welcome, &mut buf).unwrap();
    zone.udp.send_to(&buf[..n], client).unwrap();
    play(&mut tls, &mut decoder, &zone.udp, &mut channel, client);
}

#[test]
fn a_zone_transfer_is_followed_to_the_new_zone_with_the_token() {
    let server_tls = tls::server_config(&TlsConfig::default(), &std::env::temp_dir()).unwrap();
    let cert = server_tls.dev_cert_path.clone().unwrap();
    let (a, b) = (FakeZone::bind(Arc::clone(&server_tls.config)), FakeZone::bind(Arc::clone(&server_tls.config)));
    let (a_addr, b_addr) = (a.addr(), b.addr());

    let zone_a = std::thread::spawn(move || {
        serve(
            a,
            "starter-vale",
            10,
            (1985.0, 1000.0),
            |login| assert!(matches!(login, Body::Login(l) if l.username == "traveller")),
            |tls, _, _, _, _| {
                let transfer = ZoneTransfer {
                    zone: "dark-forest".into(),
                    address: b_addr.to_string(),
                    transfer_token: b"one-time-token".to_vec(),
                    position: Some(Vec2 { x: 30.0, y: 1000.0 }),
                    web_address: String::new(),
                };
                send(tls, Body::ZoneTransfer(transfer));
                // The client leaves this zone: it closes TLS (or just the socket) after the transfer.
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest);
            },
        )
    });
    let zone_b = std::thread::spawn(move || {
        serve(
            b,
            "dark-forest",
            20,
            (30.0, 1000.0),
            |login| match login {
                Body::TransferLogin(t) => {
                    assert_eq!(
                        (t.transfer_token.as_slice(), t.username.as_str()),
                        (&b"one-time-token"[..], "traveller")
                    )
                }
                other => panic!("expected TransferLogin, got {other:?}"),
            },
            |tls, decoder, udp, channel, client| {
                let me = EntityState {
                    id: 20,
                    position: Some(Vec2 { x: 30.0, y: 1000.0 }),
                    hp: 100,
                    max_hp: 100,
                    level: 1,
                    ..Default::default()
                };
                let snapshot = Snapshot { tick: 5, entities: vec![me], total_visible: 1, ..Default::default() };
                let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 64];
                // A few snapshots: the first datagrams may race the client's socket setup.
                for _ in 0..5 {
                    let n = channel.seal(&DataMessage::new(DataBody::Snapshot(snapshot.clone())), &mut buf).unwrap();
                    udp.send_to(&buf[..n], client).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                let chat = ChatMessage {
                    from_entity: 99,
                    from_name: "warden".into(),
                    text: "welcome to the forest".into(),
                    ..Default::default()
                };
                send(tls, Body::ChatMessage(chat));
                loop {
                    if let Body::Logout(_) = recv(tls, decoder) {
                        send(tls, Body::Kick(Kick::new(KickReason::Unspecified, "logged out")));
                        break;
                    }
                }
            },
        )
    });

    let endpoint = Endpoint::new(&a_addr.to_string(), &ServerTrust::CaFile(cert.clone())).unwrap();
    let mut out = Vec::new();
    let result = script::run("login traveller password123\nexpect-chat welcome\nlogout\n", endpoint, &mut out);
    let transcript = String::from_utf8_lossy(&out).into_owned();
    assert!(result.is_ok(), "{result:?}\n{transcript}");
    let lines: Vec<&str> = transcript.lines().collect();
    let at = |needle: &str| {
        lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {transcript}"))
    };
    let first = at("logged-in player=7 entity=10 zone=starter-vale");
    let transfer = at(&format!("transfer zone=dark-forest address={b_addr}"));
    let second = at("logged-in player=7 entity=20 zone=dark-forest pos=(30.0,1000.0)");
    assert!(first < transfer && transfer < second, "{transcript}");
    assert!(at("chat from=warden channel=say text=welcome to the forest") > second);
    assert_eq!(lines.last().copied(), Some("logged-out"), "{transcript}");
    zone_a.join().expect("zone A saw a login and handed the player over");
    zone_b.join().expect("zone B saw the token and the logout");
    let _ = std::fs::remove_file(cert);
}
