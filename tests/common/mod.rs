//! Helpers shared by the integration tests: where the real services are, and unique names so tests never collide.
//!
//! Services come from the environment that `scripts/services.sh` prints (`REALM_TEST_PG_URL`, ...). Under
//! `scripts/test.sh` (`REALM_TEST_REQUIRE_SERVICES=1`) a missing service fails the test; in a plain `cargo test`
//! on a machine without them the test says so on stderr and returns.
#![allow(dead_code)]

pub mod process;

use std::sync::atomic::{AtomicU32, Ordering};

/// Value of a service variable, `None` (with a note) when absent and not required.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("REALM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set but REALM_TEST_REQUIRE_SERVICES=1: run the suite through scripts/test.sh")
        }
        _ => {
            eprintln!("note: {var} not set; this test needs the real service (run scripts/test.sh)");
            None
        }
    }
}

/// PostgreSQL primary.
pub fn pg_url() -> Option<String> {
    service("REALM_TEST_PG_URL")
}

/// PostgreSQL streaming replica of the primary.
pub fn pg_replica_url() -> Option<String> {
    service("REALM_TEST_PG_REPLICA_URL")
}

/// Shard databases.
pub fn pg_shard_urls() -> Option<Vec<String>> {
    service("REALM_TEST_PG_SHARD_URLS").map(|s| s.split(',').map(str::to_owned).collect())
}

/// Redis.
pub fn redis_url() -> Option<String> {
    service("REALM_TEST_REDIS_URL")
}

/// A name unique to this process and call: schema names, key prefixes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Writes a zone file into `dir`: the 400 m `starter-vale` test map with its spawn at (200, 200) and a portal 5 m
/// east of it into `dark-forest` at `target` (arriving at `arrive`). Returns the file's path.
pub fn starter_zone_with_portal(
    dir: &std::path::Path,
    target: std::net::SocketAddr,
    arrive: (f32, f32),
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("starter-vale.toml");
    let (x, y) = arrive;
    std::fs::write(
        &path,
        format!(
            r#"name = "starter-vale"
size = 400.0
view_radius = 40.0
player_speed = 6.0
spawn_points = [[200.0, 200.0]]
[[portals]]
name = "east-gate"
min = [205.0, 150.0]
max = [215.0, 250.0]
target_zone = "dark-forest"
target_address = "{target}"
target_position = [{x:.1}, {y:.1}]
"#
        ),
    )
    .unwrap();
    path
}
