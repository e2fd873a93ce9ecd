//! Writes the seed corpus under `fuzz/corpus/<target>/seed-*`: small valid inputs in each target's input format,
//! so the fuzzer starts past the first checks (a Hello frame, a real TLS ClientHello, a sealed datagram, a GET,
//! the shipped configuration and zone files).
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_corpus` (from the repository root). The seeds are
//! deterministic except the ClientHello (TLS randoms); rerun it only when an input format changes, and commit
//! the result. Files named `regression-*` are inputs that once crashed a target; this tool never touches them.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use realm::net::framing::encode_frame;
use realm::net::udp::{DataChannel, DataKeys, MAX_DATAGRAM_BYTES};
use realm::proto::{
    control_message::Body, data_message, Chat, ControlMessage, DataMessage, Hello, Input, Login, Logout, Ping,
    Register, UdpRebind, Vec2, PROTOCOL_VERSION,
};
use realm_fuzz::{client_tls_config, put_chunk, seal_client_datagram, KEYING_MATERIAL, SESSION_ID};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().expect("fuzz/ is inside the repository");
    let corpus = root.join("corpus");

    // control_frame: [mode][max_frame u16][chunk seed][stream]
    let hello = frames(&[hello_msg()]);
    let session = frames(&[hello_msg(), login_msg(), chat_msg("hi"), ping_msg(), rebind_msg(), logout_msg()]);
    let dir = target(&corpus, "control_frame");
    write(&dir, "seed-hello-whole", &[&[0, 0x04, 0x00, 0], &hello[..]].concat());
    write(&dir, "seed-session-bytewise", &[&[0, 0x04, 0x00, 1], &session[..]].concat());
    write(&dir, "seed-session-chunks", &[&[2, 0x00, 0x40, 7], &session[..]].concat());
    write(&dir, "seed-oversized-prefix", &[0, 0x00, 0x40, 0, 0x00, 0x00, 0x10, 0x00, 0x08]);
    write(&dir, "seed-tls-client-hello", &[&[1, 0, 0, 0], &client_hello()[..]].concat());
    write(&dir, "seed-tls-client-hello-chunks", &[&[1, 0, 0, 13], &client_hello()[..]].concat());

    // control_session_plaintext: [chunk seed][responder][clock step][plaintext]
    let dir = target(&corpus, "control_session_plaintext");
    write(&dir, "seed-hello", &[&[0, 0, 1], &hello[..]].concat());
    write(&dir, "seed-login-ok-and-play", &[&[0, 0b111, 1], &session[..]].concat());
    write(&dir, "seed-login-error-bytewise", &[&[1, 0, 1], &session[..]].concat());
    let register = frames(&[hello_msg(), register_msg(), register_msg(), login_msg(), login_msg()]);
    write(&dir, "seed-register-repeated", &[&[0, 0, 25], &register[..]].concat());
    let flood: Vec<ControlMessage> = std::iter::once(hello_msg()).chain((0..40).map(|_| ping_msg())).collect();
    write(&dir, "seed-ping-flood", &[&[9, 0, 0], &frames(&flood)[..]].concat());
    write(&dir, "seed-idle", &[&[0, 0, 255], &hello[..]].concat());
    let old_version = ControlMessage::new(Body::Hello(Hello { protocol_version: 99, client_name: "fuzz/0.1".into() }));
    write(&dir, "seed-hello-wrong-version", &[&[0, 0, 1], &frames(&[old_version])[..]].concat());

    // udp_datagram: [mode][ops]
    let dir = target(&corpus, "udp_datagram");
    let keys = DataKeys::from_keying_material(&KEYING_MATERIAL);
    let mut client = DataChannel::client(SESSION_ID, &keys);
    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
    let n = client.seal(&input_msg(), &mut buf).expect("seal");
    let mut raw = vec![0, 0, 0];
    put_chunk(&mut raw, &buf[..n]);
    write(&dir, "seed-raw-sealed-input", &raw);
    let mut bind = vec![0];
    bind.extend_from_slice(&[2, 0, 0]); // hello from address 0
    bind.extend_from_slice(&[8, 0, 0]); // answer the challenge from address 0
    bind.extend_from_slice(&[1, 0, 0]); // an input from address 0
    put_chunk(&mut bind, &input_msg().encode_to_vec());
    bind.extend_from_slice(&[6, 0, 0]); // the server sends a ping
    bind.extend_from_slice(&[3, 2, 1]); // the input again, from address 1
    bind.extend_from_slice(&[4, 0, 2, 0, 1, 8, 0, 1]); // rebind to address 1
    bind.extend_from_slice(&[7, 60, 6, 0, 1]); // 6 s later (challenge expired, endpoint silent)
    bind.extend_from_slice(&[5, 0, 2, 0, 3]); // re-register; hello from the v6 address
    write(&dir, "seed-bind-and-play", &bind);
    let mut garbage = vec![0, 1, 0, 0];
    put_chunk(&mut garbage, &[0xff; 40]);
    write(&dir, "seed-sealed-garbage", &garbage);
    let sealed = seal_client_datagram(&KEYING_MATERIAL, SESSION_ID, 1 << 40, &input_msg().encode_to_vec());
    let mut far = vec![0, 0, 2];
    put_chunk(&mut far, &sealed);
    write(&dir, "seed-raw-far-sequence", &far);
    // ReplayWindow: op byte (low 2 bits: check/commit/check_and_commit; bit 2: absolute u64), then the value.
    let mut window = vec![1];
    for (op, value) in [(6u8, 1000u64), (2, 0), (2, (-255i16) as u16 as u64), (0, (-256i16) as u16 as u64)] {
        window.push(op);
        if op & 4 != 0 {
            window.extend_from_slice(&value.to_be_bytes());
        } else {
            window.extend_from_slice(&(value as u16).to_be_bytes());
        }
    }
    window.extend_from_slice(&[6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 1, 0, 1, 2, 0, 1]);
    write(&dir, "seed-replay-window", &window);

    // admin_http: [flags][request]
    let dir = target(&corpus, "admin_http");
    write(&dir, "seed-get-metrics", b"\x00GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    write(&dir, "seed-head-ready", b"\x01HEAD /ready HTTP/1.1\r\n\r\n");
    write(&dir, "seed-get-health-split", b"\x0bGET /health?verbose=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    write(&dir, "seed-post-body", b"\x00POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    write(&dir, "seed-chunked", b"\x00GET /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    write(&dir, "seed-incomplete", b"\x00GET /metrics HTTP/1.1\r\nHost: x\r\n");

    // config_zone: [mode][text]
    let dir = target(&corpus, "config_zone");
    let zone = std::fs::read(repo.join("config/zones/starter-vale.toml")).expect("zone file");
    write(&dir, "seed-zone-starter-vale", &[&[0], &zone[..]].concat());
    let zone = std::fs::read(repo.join("config/zones/dark-forest.toml")).expect("zone file");
    write(&dir, "seed-zone-dark-forest", &[&[0], &zone[..]].concat());
    let config = std::fs::read(repo.join("config/realm.toml")).expect("config file");
    write(&dir, "seed-config-realm", &[&[1], &config[..]].concat());
    let env = "SERVER_PORT=7000\nDB_HOST=db\nDB_PASSWORD=it's\\secret\nREALM_GAME_TICK_RATE=30\n\
               REALM_SERVER_IO_CORES=0,1\nREALM_DATABASE_REPLICA_URLS=postgres://a:b@r1, postgres://r2\n\
               DB_SSL=yes\nREDIS_URL=redis://:pw@cache:6379\nLOG_LEVEL=debug\n";
    write(&dir, "seed-env", &[&[2], env.as_bytes()].concat());
}

fn target(corpus: &Path, name: &str) -> PathBuf {
    let dir = corpus.join(name);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

fn frames(msgs: &[ControlMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_frame(m, 1024, &mut out).expect("frame fits");
    }
    out
}

fn hello_msg() -> ControlMessage {
    ControlMessage::new(Body::Hello(Hello { protocol_version: PROTOCOL_VERSION, client_name: "fuzz/0.1".into() }))
}

fn login_msg() -> ControlMessage {
    ControlMessage::new(Body::Login(Login { username: "alice".into(), password: "correct horse".into() }))
}

fn register_msg() -> ControlMessage {
    ControlMessage::new(Body::Register(Register { username: "bob_2".into(), password: "battery staple".into() }))
}

fn chat_msg(text: &str) -> ControlMessage {
    ControlMessage::new(Body::Chat(Chat { channel: 1, text: text.into() }))
}

fn ping_msg() -> ControlMessage {
    ControlMessage::new(Body::Ping(Ping { nonce: 42, client_time_us: 1_000 }))
}

fn rebind_msg() -> ControlMessage {
    ControlMessage::new(Body::UdpRebind(UdpRebind {}))
}

fn logout_msg() -> ControlMessage {
    ControlMessage::new(Body::Logout(Logout {}))
}

fn input_msg() -> DataMessage {
    DataMessage::new(data_message::Body::Input(Input {
        sequence: 3,
        move_dir: Some(Vec2 { x: 1.0, y: -0.5 }),
        ability: 2,
        target_entity: 77,
        client_time_us: 123_456,
    }))
}

/// The first flight of a real rustls client with the client's configuration.
fn client_hello() -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(client_tls_config(), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write to a Vec");
    }
    out.flush().expect("flush");
    out
}
