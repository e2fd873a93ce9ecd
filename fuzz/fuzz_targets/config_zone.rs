//! The configuration loader and the zone-file loader, fed arbitrary text. Not reachable by a network peer, but
//! both parse files an operator (or a deployment pipeline) hands the server, and a panic there is a crash at
//! start instead of an error naming the key.
//!
//! Input: `[mode] [text...]`.
//!
//! * mode % 3 == 0: `realm::sim::zone::Zone::parse(text)`.
//! * mode % 3 == 1: `text` written to a file and loaded with `Config::load_with_env(Some(path), [])` (the loader
//!   only takes a path).
//! * mode % 3 == 2: `text` as environment lines `NAME=value` over the defaults
//!   (`Config::load_with_env(None, env)`).
//!
//! Whatever loads must then validate again, and everything the server derives from it at start must not panic:
//! the warnings, the redacted dump, the connection string, the session limits, the admin state.
//!
//! Every zone that validates is also used as the server uses it at start: `Simulation::new(zone, 20, 1)` (the
//! zone validation bounds the grid and the NPC count since `corpus/config_zone/regression-zone-*` crashed it;
//! `REALM_FUZZ_ZONE_SIM=0` skips the simulation).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use realm::config::Config;
use realm::net::session::SessionLimits;
use realm::sim::zone::Zone;
use realm_fuzz::Input;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("realm-fuzz-config-{}.toml", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte() % 3;
    let text = input.rest();
    match mode {
        0 => zone(&String::from_utf8_lossy(text)),
        1 => {
            let path = config_path();
            std::fs::write(path, text).expect("write the temporary config file");
            let loaded = Config::load_with_env(Some(path), Vec::new());
            if let Ok(config) = loaded {
                derive(&config);
            }
        }
        _ => {
            let env: Vec<(String, String)> = String::from_utf8_lossy(text)
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            if let Ok(config) = Config::load_with_env(None, env) {
                derive(&config);
            }
        }
    }
});

fn zone(text: &str) {
    let Ok(zone) = Zone::parse(text, "fuzz") else { return };
    assert!(!zone.spawn_points.is_empty(), "a valid zone has a spawn point");
    for p in &zone.spawn_points {
        assert!(p[0] >= 0.0 && p[0] < zone.size && p[1] >= 0.0 && p[1] < zone.size, "spawn point {p:?} outside");
    }
    if simulate_zones() {
        drop(realm::sim::Simulation::new(zone, 20, 1));
    }
}

fn simulate_zones() -> bool {
    static SIM: OnceLock<bool> = OnceLock::new();
    *SIM.get_or_init(|| std::env::var("REALM_FUZZ_ZONE_SIM").as_deref() != Ok("0"))
}

fn derive(config: &Config) {
    config.validate().expect("a loaded config validates");
    let _ = config.warnings();
    let _ = config.redacted_toml();
    let _ = config.primary_url();
    let _ = SessionLimits::from_config(config);
    let metrics = realm::metrics::Metrics::new(&config.server.zone);
    let _ = realm::admin::AdminState::from_config(config, &metrics);
}
