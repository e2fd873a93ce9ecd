//! Redis restarted mid-run (it keeps nothing on disk, so every lock vanishes): the zone keeps its players, re-takes
//! their locks, and ownership stays single — another zone still cannot log the same player in. Its own test binary,
//! because restarting the shared Redis would disturb tests running beside it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use realm::client::{ClientError, Connection};
use realm::config::Config;
use realm::net::tls::{self, ServerTrust};
use realm::proto::{control_message::Body, Login, LoginErrorReason, Register};

fn server(redis: &str, pg: &str, prefix: &str, zone: &str) -> realm::server::RunningServer {
    let mut c = Config::default();
    c.server.host = "127.0.0.1".parse().unwrap();
    c.server.port = 0;
    c.server.zone = zone.into();
    c.admin.host = "127.0.0.1".parse().unwrap();
    c.admin.port = 0;
    c.database.url = pg.into();
    c.redis.url = redis.into();
    c.redis.key_prefix = prefix.into();
    c.redis.lock_ttl_ms = 1500;
    realm::server::start(c).unwrap()
}

fn connect(s: &realm::server::RunningServer) -> Connection {
    let cfg = tls::client_config(&ServerTrust::CaFile(s.dev_cert_path.clone().unwrap())).unwrap();
    let mut c = Connection::connect(&s.game_addr.to_string(), "localhost", cfg, Duration::from_secs(10)).unwrap();
    c.hello("redis-restart").unwrap();
    c
}

fn restart_redis(url: &str) {
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    let _ = Command::new("redis-cli").args(["-h", host, "-p", port, "shutdown", "nosave"]).status();
    // scripts/services.sh starts Redis again exactly as the suite does (and is a no-op for what is already up).
    let ok = Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh")).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn a_redis_restart_keeps_players_in_game_and_ownership_single() {
    let (redis, pg) = (common::redis_url(), common::pg_url());
    let prefix = common::unique("redis_restart");
    let a = server(&redis, &pg, &prefix, "starter-vale");
    let b = server(&redis, &pg, &prefix, "dark-forest");
    let name = common::unique("survivor");
    let mut in_a = connect(&a);
    in_a.authenticate(Body::Register(Register { username: name.clone(), password: "password123".into() })).unwrap();

    restart_redis(&redis);
    // Several renewal rounds (every TTL/3 = 0.5 s) after Redis is back.
    std::thread::sleep(Duration::from_secs(3));

    // Still in game in zone A: pings are answered and no kick arrived.
    in_a.set_timeout(Duration::from_millis(300)).unwrap();
    loop {
        match in_a.recv() {
            Ok(_) => continue,
            Err(ClientError::Timeout) => break,
            Err(e) => panic!("zone A dropped the player after the Redis restart: {e}"),
        }
    }
    // And zone B still cannot take the player: the lock was re-taken by zone A.
    let mut in_b = connect(&b);
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match in_b.authenticate(Body::Login(Login { username: name.clone(), password: "password123".into() })) {
            Err(ClientError::Login(e)) if e.reason == LoginErrorReason::LoginErrorServerBusy as i32 => {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(200));
            }
            other => break other,
        }
    };
    match refused {
        Err(ClientError::Login(e)) => assert_eq!(e.reason, LoginErrorReason::LoginErrorAlreadyOnline as i32),
        other => panic!("zone B must refuse the player: {other:?}"),
    }
    a.request_stop();
    b.request_stop();
    a.join().unwrap();
    b.join().unwrap();
}
