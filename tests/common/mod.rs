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

/// Writes `<dir>/<file>`: the 400 m `starter-vale` test map (view radius 40 m, 6 m/s) with one spawn point at
/// (200, 200), followed by `more` (NPC spawns, portals: TOML tables). Returns the file's path.
pub fn zone_file(dir: &std::path::Path, file: &str, more: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(file);
    let text = format!(
        "name = \"starter-vale\"\nsize = 400.0\nview_radius = 40.0\nplayer_speed = 6.0\nspawn_points = [[200.0, 200.0]]\n{more}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// An `[[npc_spawns]]` table for [`zone_file`]: level 1, speed 1 m/s, respawning after 2 s.
pub struct Npcs {
    /// Display kind.
    pub kind: &'static str,
    /// How many.
    pub count: u32,
    /// Centre and radius of the spawn area.
    pub at: (f32, f32, f32),
    /// Hit points.
    pub max_hp: u32,
    /// Damage range of a hit.
    pub damage: (u32, u32),
    /// Aggro and leash radius.
    pub radii: (f32, f32),
}

impl Npcs {
    /// The TOML table.
    pub fn toml(&self) -> String {
        let Npcs { kind, count, at: (x, y, r), max_hp, damage: (d0, d1), radii: (aggro, leash) } = self;
        format!(
            "[[npc_spawns]]\nkind = \"{kind}\"\ncount = {count}\ncenter = [{x:.1}, {y:.1}]\nradius = {r:.1}\nlevel = 1\n\
             max_hp = {max_hp}\ndamage = [{d0}, {d1}]\naggro_radius = {aggro:.1}\nleash_radius = {leash:.1}\nspeed = 1.0\n\
             respawn_secs = 2\n"
        )
    }
}

/// [`zone_file`] `starter-vale.toml` with a portal 5 m east of the spawn into `dark-forest` at `target` (arriving
/// at `arrive`).
pub fn starter_zone_with_portal(
    dir: &std::path::Path,
    target: std::net::SocketAddr,
    arrive: (f32, f32),
) -> std::path::PathBuf {
    let (x, y) = arrive;
    zone_file(
        dir,
        "starter-vale.toml",
        &format!(
            "[[portals]]\nname = \"east-gate\"\nmin = [205.0, 150.0]\nmax = [215.0, 250.0]\ntarget_zone = \"dark-forest\"\n\
             target_address = \"{target}\"\ntarget_position = [{x:.1}, {y:.1}]\n"
        ),
    )
}
