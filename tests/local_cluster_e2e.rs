//! The compose topology as local processes (`scripts/local-cluster.sh`): PostgreSQL primary + replica, Redis, two
//! zones, Prometheus and nginx. A client enters through nginx (TCP/TLS passthrough), plays in zone A, walks through
//! the portal into zone B, and Prometheus scrapes both zones. Uses fixed ports (7700, 7777, 7787, 9090, 9101,
//! 9102) like the compose file, so it runs alone in its own test binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use realm::client::{ClientError, Connection, UdpLink};
use realm::net::tls::{self, ServerTrust};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, DataMessage, Input, Register, TransferLogin, Vec2,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-cluster.sh");

struct Cluster {
    state: std::path::PathBuf,
}

impl Cluster {
    fn run(&self, args: &[&str], zone_a: &str) -> std::process::Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("REALM_LOCAL_STATE", &self.state)
            .env("REALM_LOCAL_ZONE_A_FILE", zone_a)
            .env("REALM_SERVER_BIN", env!("CARGO_BIN_EXE_realm-server"))
            .output()
            .expect("run local-cluster.sh")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("down").env("REALM_LOCAL_STATE", &self.state).output();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
#[ignore = "needs PostgreSQL, Redis and the local cluster tools: run scripts/test.sh"]
fn a_client_enters_through_nginx_plays_in_zone_a_walks_into_zone_b_and_prometheus_scrapes_both() {
    // The whole topology needs the real services (the test is ignored without them).
    let (_, _) = (common::pg_url(), common::redis_url());
    let dir = std::env::temp_dir().join(common::unique("local_cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let zone_a = common::starter_zone_with_portal(&dir, "127.0.0.1:7787".parse().unwrap(), (30.0, 1000.0));
    let zone_a = zone_a.display().to_string();
    let cluster = Cluster { state: dir.join("state") };
    let up = cluster.run(&["up"], &zone_a);
    assert!(
        up.status.success(),
        "local-cluster up failed:\n{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    // Enter through nginx (TLS is end to end with zone A: the UDP keys come from that TLS session).
    let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
    let mut c = Connection::connect("127.0.0.1:7700", "localhost", cfg.clone(), Duration::from_secs(10)).unwrap();
    assert_eq!(c.hello("local-cluster-e2e").unwrap().zone, "starter-vale");
    let name = common::unique("pilgrim");
    let ok =
        c.authenticate(Body::Register(Register { username: name.clone(), password: "password123".into() })).unwrap();
    // UDP goes straight to the zone's port (LoginOk.udp_port); nginx carries only the TLS stream.
    let udp: SocketAddr = format!("127.0.0.1:{}", ok.udp_port).parse().unwrap();
    let mut link =
        UdpLink::bind(udp, ok.session_id, &c.udp_keys(ok.session_id).unwrap(), Duration::from_secs(5)).unwrap();
    let mut transfer = None;
    let started = Instant::now();
    let mut seq = 0;
    c.set_timeout(Duration::from_millis(20)).unwrap();
    while transfer.is_none() && started.elapsed() < Duration::from_secs(10) {
        seq += 1;
        let input = Input { sequence: seq, move_dir: Some(Vec2 { x: 1.0, y: 0.0 }), ..Default::default() };
        link.send(&DataMessage::new(DataBody::Input(input))).unwrap();
        let _ = link.recv(Duration::from_millis(30));
        match c.recv() {
            Ok(m) => {
                if let Some(Body::ZoneTransfer(t)) = m.body {
                    transfer = Some(t);
                }
            }
            Err(ClientError::Timeout) => {}
            Err(e) => panic!("zone A dropped us: {e}"),
        }
    }
    let transfer = transfer.expect("walked into the portal");
    assert_eq!((transfer.zone.as_str(), transfer.address.as_str()), ("dark-forest", "127.0.0.1:7787"));

    let mut b = Connection::connect(&transfer.address, "localhost", cfg, Duration::from_secs(10)).unwrap();
    b.hello("local-cluster-e2e").unwrap();
    let ok_b = b
        .authenticate(Body::TransferLogin(TransferLogin { transfer_token: transfer.transfer_token, username: name }))
        .unwrap();
    assert_eq!(ok_b.zone, "dark-forest");
    assert_eq!(ok_b.player_id, ok.player_id);

    // Prometheus scrapes both zones (5 s interval): both targets up and zone B reports the player online.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let targets = http_get("127.0.0.1:9090", "/api/v1/targets?state=active");
        let zone_b =
            http_get("127.0.0.1:9090", "/api/v1/query?query=game_server_players_online%7Bzone%3D%22dark-forest%22%7D");
        let up = targets.matches("\"health\":\"up\"").count();
        if up >= 2 && targets.contains("9101") && targets.contains("9102") && zone_b.contains("\"1\"]") {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw both zones:\n{targets}\n{zone_b}");
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(b);
    let down = cluster.run(&["down"], &zone_a);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}
