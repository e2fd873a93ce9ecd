//! Helpers shared by the integration tests: where the real services are, and unique names so tests never collide.
//!
//! Services come from the environment that `scripts/services.sh` prints (`REALM_TEST_PG_URL`, ...). A test that
//! needs one is `#[ignore = "needs ..."]`: a plain `cargo test` reports it ignored (a count that never lies), and
//! `scripts/test.sh` runs it with `--include-ignored`, where a missing service fails it.
#![allow(dead_code)]

pub mod process;
pub mod ws;

use std::sync::atomic::{AtomicU32, Ordering};

/// Value of a service variable; a test that asks for a service it cannot find fails, naming it.
pub fn service(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set: this test needs the real service; run it through scripts/test.sh"),
    }
}

/// PostgreSQL primary.
pub fn pg_url() -> String {
    service("REALM_TEST_PG_URL")
}

/// PostgreSQL streaming replica of the primary.
pub fn pg_replica_url() -> String {
    service("REALM_TEST_PG_REPLICA_URL")
}

/// Shard databases.
pub fn pg_shard_urls() -> Vec<String> {
    service("REALM_TEST_PG_SHARD_URLS").split(',').map(str::to_owned).collect()
}

/// Redis.
pub fn redis_url() -> String {
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
