//! One full simulation tick at load: the perf zone (20,000 NPCs) with 2,000 players sending an input every tick
//! (10% of them also using an ability on an NPC), all systems, snapshots for every player; once with the players
//! spread over the map and once crowded around the spawn points, where real clients stand.
//! Run: `cargo bench --bench tick` (`-- v1`, `-- v2`, `-- spread`, `-- crowd`: one protocol, one layout, to profile).
//! Target (DESIGN.md section 11): tick p99 <= 10 ms on this 2-core machine.
//! This measures the simulation thread's work alone; `realm-bots` measures the whole server under real clients.

use std::time::{Duration, Instant};

use realm::proto::{Input, Vec2 as PVec2};
use realm::sim::rng::Pcg32;
use realm::sim::world::Vec2;
use realm::sim::zone::Zone;
use realm::sim::Phase;
use realm::sim::{Output, PlayerSpawn, Simulation};

const PLAYERS: u64 = 2_000;
const TICKS: usize = 400;

/// Where the players stand.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Spread evenly over the map.
    Uniform,
    /// Around the zone's five spawn points, as real clients are: every player enters at a spawn point and the
    /// bots of `realm-bots --behaviour walk` drift ~60-100 m from it in the first minutes (2,000 bots = 400
    /// players within about 100 m of each other, all in each other's 3x3 AOI cells). Each player walks in one
    /// direction for 1-3 s, as the bots do.
    SpawnCrowd,
}

struct Run {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    max: Duration,
    snapshot_bytes: usize,
    truncated: u64,
    snapshot_ms: f64,
    shown: f64,
}

/// One simulation under the bench's load, stepped a tick at a time (so that v1 and v2 can take turns: this
/// machine's speed drifts by a third within minutes, and runs one after the other compared the drift).
struct Side {
    layout: Layout,
    protocol: u32,
    sim: Simulation,
    npcs: Vec<u64>,
    rng: Pcg32,
    /// Per player: current walking direction and the tick it changes.
    walk: Vec<(f32, usize)>,
    out: Vec<Output>,
    times: Vec<Duration>,
    snapshot_bytes: usize,
    phase_sums: [Duration; Phase::GAME.len()],
    truncated_before: u64,
    shown_before: u64,
    snapshots_before: u64,
}

impl Side {
    fn new(layout: Layout, protocol: u32) -> Self {
        let zone = Zone::load(concat!(env!("CARGO_MANIFEST_DIR"), "/config/zones/perf-20k.toml")).expect("perf zone");
        let size = zone.size;
        let spawns = zone.spawn_points.clone();
        let mut sim = Simulation::new(zone, 20, 7);
        let npcs: Vec<u64> = (0..sim.world.slots()).map(|s| sim.world.id(s)).collect();
        let mut rng = Pcg32::new(99, 1);
        for p in 1..=PLAYERS {
            let pos = match layout {
                Layout::Uniform => Vec2::new(rng.range(100.0, size - 100.0), rng.range(100.0, size - 100.0)),
                Layout::SpawnCrowd => {
                    let sp = spawns[(p % spawns.len() as u64) as usize];
                    let (r, a) = (rng.range(0.0, 80.0), rng.range(0.0, std::f32::consts::TAU));
                    Vec2::new(sp[0] + r * a.cos(), sp[1] + r * a.sin())
                }
            };
            sim.spawn_player(
                p,
                PlayerSpawn { player_id: p, name: format!("bot{p}"), pos: Some(pos), level: 1, xp: 0, hp: None },
            );
            sim.set_udp_bound(p);
            sim.set_protocol(p, protocol);
        }
        let walk = (0..PLAYERS).map(|_| (rng.range(0.0, std::f32::consts::TAU), 0)).collect();
        let truncated_before = sim.stats().snapshot_truncated_entities;
        let (shown_before, snapshots_before) = (sim.stats().snapshots_shown, sim.stats().snapshots);
        Self {
            layout,
            protocol,
            sim,
            npcs,
            rng,
            walk,
            out: Vec::new(),
            times: Vec::with_capacity(TICKS),
            snapshot_bytes: 0,
            phase_sums: [Duration::ZERO; Phase::GAME.len()],
            truncated_before,
            shown_before,
            snapshots_before,
        }
    }

    fn step(&mut self, tick: usize) {
        let (sim, rng) = (&mut self.sim, &mut self.rng);
        let seq = tick as u32 + 1;
        for p in 1..=PLAYERS {
            let w = &mut self.walk[(p - 1) as usize];
            if tick >= w.1 {
                *w = (rng.range(0.0, std::f32::consts::TAU), tick + 20 + rng.below(40) as usize);
            }
            let mut input = Input {
                sequence: seq,
                move_dir: Some(PVec2 { x: w.0.cos() * 0.9, y: w.0.sin() * 0.9 }),
                // v2: the previous tick's snapshot, or one or two before it (clients at different distances).
                snapshot_ack: sim.tick().saturating_sub(p % 3),
                ..Default::default()
            };
            if rng.below(10) == 0 {
                input.ability = 1 + rng.below(2);
                input.target_entity = self.npcs[rng.below(self.npcs.len() as u32) as usize];
            }
            let _ = sim.queue_input(p, input);
        }
        self.out.clear();
        let mut phases = [Duration::ZERO; Phase::GAME.len()];
        let t = Instant::now();
        let mut mark = t;
        sim.step_with(&mut self.out, &mut |p| {
            let now = Instant::now();
            phases[p.index()] += now - mark;
            mark = now;
        });
        self.times.push(t.elapsed());
        if tick >= TICKS / 10 {
            for (sum, d) in self.phase_sums.iter_mut().zip(phases) {
                *sum += d;
            }
        }
        // Snapshot sizes (the encoded DataMessage, before sealing), from the last tick.
        if tick + 1 == TICKS {
            for o in &self.out {
                if let Output::Snapshot { snapshot, .. } = o {
                    self.snapshot_bytes += snapshot.bytes.len();
                }
            }
        }
    }

    fn finish(self) -> Run {
        let (layout, protocol) = (self.layout, self.protocol);
        let warm = &mut self.times[TICKS / 10..].to_vec();
        warm.sort_unstable();
        let pct = |q: f64| warm[((warm.len() as f64 - 1.0) * q) as usize];
        let s = self.sim.stats();
        println!(
            "  {} v{protocol}: hits {} kills {} inputs applied {} rejected(speed) {}",
            if layout == Layout::Uniform { "uniform" } else { "spawn crowd" },
            s.combat_hits,
            s.kills,
            s.inputs_applied,
            s.inputs_rejected_speed
        );
        let measured = (TICKS - TICKS / 10) as f64;
        let phases: Vec<String> = Phase::GAME
            .iter()
            .zip(self.phase_sums)
            .map(|(p, d)| format!("{} {:.3}", p.label(), d.as_secs_f64() * 1e3 / measured))
            .collect();
        println!("    mean ms per phase: {}", phases.join(", "));
        if protocol == 2 {
            let (looked_at, skipped) = self.sim.publish_counts();
            let per_tick = |n: u64| n as f64 / TICKS as f64;
            println!(
                "    v2 publishing, per tick: {:.0} entities looked at, {:.0} skipped as unchanged",
                per_tick(looked_at),
                per_tick(skipped)
            );
        }
        Run {
            name: match (layout, protocol) {
                (Layout::Uniform, 1) => "players spread over the map, v1",
                (Layout::Uniform, _) => "players spread over the map, v2",
                (_, 1) => "players crowded at the spawn points, v1",
                _ => "players crowded at the spawn points, v2",
            },
            snapshot_ms: self.phase_sums[Phase::Snapshots.index()].as_secs_f64() * 1e3 / measured,
            shown: (s.snapshots_shown - self.shown_before) as f64 / (s.snapshots - self.snapshots_before).max(1) as f64,
            p50: pct(0.5),
            p99: pct(0.99),
            max: *warm.last().unwrap_or(&Duration::ZERO),
            snapshot_bytes: self.snapshot_bytes / PLAYERS as usize,
            truncated: (s.snapshot_truncated_entities - self.truncated_before) / (TICKS as u64 * PLAYERS),
        }
    }
}

fn main() {
    println!(
        "tick: {PLAYERS} players + 20,000 NPCs, {TICKS} ticks per layout (first 10% discarded as warm-up); v1 and v2 \
         take turns tick by tick"
    );
    let only = std::env::args().skip(1).find(|a| a == "v1" || a == "v2");
    let protocols: Vec<u32> = match only.as_deref() {
        Some("v1") => vec![1],
        Some(_) => vec![2],
        None => vec![1, 2],
    };
    // `spread` or `crowd` runs that layout alone (to profile one).
    let layouts: Vec<Layout> = match std::env::args().skip(1).find(|a| a == "spread" || a == "crowd").as_deref() {
        Some("spread") => vec![Layout::Uniform],
        Some(_) => vec![Layout::SpawnCrowd],
        None => vec![Layout::Uniform, Layout::SpawnCrowd],
    };
    let mut runs = Vec::new();
    for layout in layouts {
        // The protocols take turns tick by tick, on the same inputs.
        let mut sides: Vec<Side> = protocols.iter().map(|&p| Side::new(layout, p)).collect();
        for tick in 0..TICKS {
            for side in &mut sides {
                side.step(tick);
            }
        }
        runs.extend(sides.into_iter().map(Side::finish));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| layout | p50 ms | p99 ms | max ms | snapshot phase mean ms | mean snapshot bytes | entities per snapshot \
         | entities cut per snapshot |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {} |",
            r.name,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.snapshot_ms,
            r.snapshot_bytes,
            r.shown,
            r.truncated
        );
    }
    let worst = runs.iter().map(|r| r.p99).max().unwrap_or_default();
    println!(
        "target: p99 <= 10 ms in both layouts -> {}",
        if worst <= Duration::from_millis(10) { "PASS" } else { "FAIL" }
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({
        "players": PLAYERS,
        "runs": runs.iter().map(|r| serde_json::json!({"name": r.name, "p50_ms": ms(r.p50), "p99_ms": ms(r.p99),
            "snapshot_phase_ms": r.snapshot_ms, "snapshot_bytes": r.snapshot_bytes, "entities": r.shown})).collect::<Vec<_>>(),
    });
    let _ = std::fs::write(dir.join("tick.json"), json.to_string());
}
