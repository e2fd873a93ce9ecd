//! Zone data: the map a process hosts (size, spawn points, NPC spawns, portals), read from a TOML file in
//! `config/zones/`. The built-in default is `config/zones/starter-vale.toml`, compiled in so a bare `cargo run`
//! needs no files. Validation names the field and the value, like the main configuration.

use std::path::Path;

use serde::Deserialize;

/// The built-in zone.
pub const DEFAULT_ZONE: &str = include_str!("../../config/zones/starter-vale.toml");

/// Why a zone file is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// The file could not be read.
    #[error("cannot read zone file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Not valid TOML or unknown fields.
    #[error("zone file {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// Parser message.
        message: String,
    },
    /// A value out of range.
    #[error("zone {zone}: {field} = {value}: {reason}")]
    Invalid {
        /// Zone name.
        zone: String,
        /// Field.
        field: String,
        /// Value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
}

/// One zone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Zone name (must match `server.zone` when both are set).
    pub name: String,
    /// Side of the square map.
    pub size: f32,
    /// Area-of-interest radius.
    pub view_radius: f32,
    /// Player movement speed, metres per second.
    pub player_speed: f32,
    /// Where players appear (chosen by player id).
    pub spawn_points: Vec<[f32; 2]>,
    /// NPC populations.
    #[serde(default)]
    pub npc_spawns: Vec<NpcSpawn>,
    /// Exits to other zones.
    #[serde(default)]
    pub portals: Vec<Portal>,
}

/// A population of NPCs placed around a centre.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpcSpawn {
    /// Display kind.
    pub kind: String,
    /// How many.
    pub count: u32,
    /// Centre of the spawn area.
    pub center: [f32; 2],
    /// Radius of the spawn area.
    pub radius: f32,
    /// Level (XP reward scales with it).
    pub level: u32,
    /// Hit points.
    pub max_hp: i32,
    /// Damage range of its attack.
    pub damage: [i32; 2],
    /// Players closer than this are attacked.
    pub aggro_radius: f32,
    /// Farther than this from its spawn point, it gives up and returns.
    pub leash_radius: f32,
    /// Movement speed.
    pub speed: f32,
    /// Seconds dead before it respawns.
    pub respawn_secs: u32,
}

/// An area that moves a player to another zone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// Name for logs.
    pub name: String,
    /// Lower corner.
    pub min: [f32; 2],
    /// Upper corner.
    pub max: [f32; 2],
    /// Zone on the other side.
    pub target_zone: String,
    /// Control-channel address of that zone's server.
    pub target_address: String,
    /// Browser endpoint of that zone's server (`http(s)://host:port`), told to browser players; "" if none.
    #[serde(default)]
    pub target_web_address: String,
    /// Where the player appears there.
    pub target_position: [f32; 2],
}

impl Portal {
    /// True when `(x, y)` is inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.min[0] && x <= self.max[0] && y >= self.min[1] && y <= self.max[1]
    }
}

impl Zone {
    /// The built-in default zone.
    pub fn builtin() -> Zone {
        Self::parse(DEFAULT_ZONE, "<built-in>").expect("the built-in zone is valid (tested)")
    }

    /// Loads `path`, or the built-in zone when `path` is empty.
    pub fn load(path: &str) -> Result<Zone, ZoneError> {
        if path.is_empty() {
            return Self::parse(DEFAULT_ZONE, "<built-in>");
        }
        let text =
            std::fs::read_to_string(Path::new(path)).map_err(|source| ZoneError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates zone TOML.
    pub fn parse(text: &str, origin: &str) -> Result<Zone, ZoneError> {
        let zone: Zone =
            toml::from_str(text).map_err(|e| ZoneError::Parse { path: origin.into(), message: e.message().into() })?;
        zone.validate()?;
        Ok(zone)
    }

    fn validate(&self) -> Result<(), ZoneError> {
        let bad = |field: &str, value: String, reason| {
            Err(ZoneError::Invalid { zone: self.name.clone(), field: field.into(), value, reason })
        };
        if !(64.0..=100_000.0).contains(&self.size) {
            return bad("size", self.size.to_string(), "must be 64..=100000");
        }
        if !(5.0..=self.size / 2.0).contains(&self.view_radius) {
            return bad("view_radius", self.view_radius.to_string(), "must be 5..=size/2");
        }
        // The area-of-interest grid has (size / view_radius)^2 cells at least: bound it (the shipped zones are
        // at 33-67 per side) so a zone that validates cannot make the server allocate without bound.
        if self.size / self.view_radius > MAX_GRID_SIDE {
            return bad(
                "view_radius",
                self.view_radius.to_string(),
                "size / view_radius must be at most 1000 (the area-of-interest grid)",
            );
        }
        let npcs: u64 = self.npc_spawns.iter().map(|s| u64::from(s.count)).sum();
        if npcs > MAX_NPCS {
            return bad("npc_spawns", npcs.to_string(), "at most 200000 NPCs in a zone");
        }
        if !(0.5..=50.0).contains(&self.player_speed) {
            return bad("player_speed", self.player_speed.to_string(), "must be 0.5..=50");
        }
        if self.spawn_points.is_empty() {
            return bad("spawn_points", "[]".into(), "needs at least one spawn point");
        }
        let inside = |p: &[f32; 2]| (0.0..self.size).contains(&p[0]) && (0.0..self.size).contains(&p[1]);
        for (i, p) in self.spawn_points.iter().enumerate() {
            if !inside(p) {
                return bad(&format!("spawn_points[{i}]"), format!("{p:?}"), "must be inside the zone");
            }
        }
        for (i, s) in self.npc_spawns.iter().enumerate() {
            if !inside(&s.center) {
                return bad(&format!("npc_spawns[{i}].center"), format!("{:?}", s.center), "must be inside the zone");
            }
            if s.max_hp <= 0 || s.damage[0] < 0 || s.damage[1] < s.damage[0] {
                return bad(
                    &format!("npc_spawns[{i}]"),
                    format!("hp {} damage {:?}", s.max_hp, s.damage),
                    "hp > 0, 0 <= min <= max damage",
                );
            }
            let finite = [s.radius, s.aggro_radius, s.leash_radius, s.speed].iter().all(|v| v.is_finite());
            if !finite || s.radius < 0.0 {
                return bad(
                    &format!("npc_spawns[{i}]"),
                    format!("radius {} aggro {} leash {} speed {}", s.radius, s.aggro_radius, s.leash_radius, s.speed),
                    "radii and speed must be finite numbers, the radius >= 0",
                );
            }
            if s.speed <= 0.0 || s.leash_radius < s.aggro_radius {
                return bad(
                    &format!("npc_spawns[{i}]"),
                    format!("speed {} leash {}", s.speed, s.leash_radius),
                    "speed > 0 and leash_radius >= aggro_radius",
                );
            }
        }
        for (i, p) in self.portals.iter().enumerate() {
            let corners = [p.min[0], p.min[1], p.max[0], p.max[1], p.target_position[0], p.target_position[1]];
            if !corners.iter().all(|v| v.is_finite()) {
                return bad(&format!("portals[{i}]"), format!("{:?}..{:?}", p.min, p.max), "must be finite numbers");
            }
            if p.min[0] > p.max[0] || p.min[1] > p.max[1] {
                return bad(&format!("portals[{i}]"), format!("{:?}..{:?}", p.min, p.max), "min must be <= max");
            }
        }
        Ok(())
    }
}

/// Most area-of-interest cells along one side a zone may need (`size / view_radius`).
const MAX_GRID_SIDE: f32 = 1000.0;
/// Most NPCs a zone may spawn (the perf zone has 20,000).
const MAX_NPCS: u64 = 200_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_the_fuzzer_found_are_refused_before_the_simulation_sees_them() {
        for (name, file) in [
            ("grid", include_str!("../../fuzz/corpus/config_zone/regression-zone-grid-overflow")),
            ("npcs", include_str!("../../fuzz/corpus/config_zone/regression-zone-npc-count")),
        ] {
            // The fuzz input's first byte picks the target's mode (0: a zone file); the rest is the file.
            let zone = file.strip_prefix('\0').unwrap_or(file);
            let err = Zone::parse(zone, name).expect_err("a zone that would exhaust memory validates").to_string();
            assert!(err.contains("view_radius") || err.contains("npc_spawns"), "{name}: refused for {err}");
        }
    }

    #[test]
    fn every_shipped_zone_file_is_valid() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config/zones")).unwrap() {
            let path = entry.unwrap().path();
            Zone::load(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        assert_eq!(Zone::builtin().name, "starter-vale");
    }

    #[test]
    fn invalid_zone_names_field_and_value() {
        let text = DEFAULT_ZONE.replace("view_radius = 60.0", "view_radius = 0.5");
        let err = Zone::parse(&text, "x").unwrap_err().to_string();
        assert!(err.contains("view_radius") && err.contains("0.5"), "{err}");
        let err = Zone::parse("name = 1", "x").unwrap_err().to_string();
        assert!(err.contains("x"), "{err}");
    }
}
