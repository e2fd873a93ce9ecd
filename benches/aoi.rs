//! Area of interest: our uniform grid (cell index rebuilt per tick + hysteresis queries) against an rstar R-tree rebuilt
//! every tick, on the same data in the same run.
//!
//! Workload (DESIGN.md section 11): 100,000 entities on an 8 km square, view radius 60 m, 10% of the entities
//! change cell every tick, 4,000 observers each asking "what do I see, nearest first" every tick.
//! Run: `cargo bench --bench aoi`. Targets: grid <= 4 ms per tick and >= 3x faster than the R-tree.

use std::time::{Duration, Instant};

use realm::sim::aoi::{Grid, VisibleSets};
use realm::sim::rng::Pcg32;
use realm::sim::world::Vec2;
use rstar::primitives::GeomWithData;
use rstar::RTree;

const ENTITIES: usize = 100_000;
const OBSERVERS: usize = 4_000;
const SIZE: f32 = 8_000.0;
const VIEW: f32 = 60.0;
const LEAVE: f32 = VIEW * 1.1;
const TICKS: usize = 100;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Moves 10% of the entities by one cell in a random direction (each of them changes cell).
fn churn(rng: &mut Pcg32, pos: &mut [Vec2], moved: &mut Vec<u32>) {
    moved.clear();
    for _ in 0..ENTITIES / 10 {
        let i = rng.below(ENTITIES as u32);
        let p = &mut pos[i as usize];
        let step = LEAVE * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        if rng.below(2) == 0 {
            p.x = (p.x + step).rem_euclid(SIZE - 1.0);
        } else {
            p.y = (p.y + step).rem_euclid(SIZE - 1.0);
        }
        moved.push(i);
    }
}

/// The workload, replayable: the same seed gives the same start positions and the same movers every tick.
struct Workload {
    rng: Pcg32,
    pos: Vec<Vec2>,
    moved: Vec<u32>,
    observers: Vec<u32>,
}

impl Workload {
    fn new() -> Self {
        let mut rng = Pcg32::new(2026, 11);
        let pos = (0..ENTITIES).map(|_| Vec2::new(rng.range(0.0, SIZE), rng.range(0.0, SIZE))).collect();
        let observers = (0..OBSERVERS as u32).map(|i| i * (ENTITIES / OBSERVERS) as u32).collect();
        Self { rng, pos, moved: Vec::new(), observers }
    }

    fn tick(&mut self) {
        churn(&mut self.rng, &mut self.pos, &mut self.moved);
    }
}

struct Phase {
    total: Vec<Duration>,
    update: Vec<Duration>,
    seen: usize,
}

/// Our grid: re-file the movers and rebuild the cell index, then every observer's visible set with hysteresis,
/// nearest first, observers in cell order (consecutive queries share most of their cells, which stay in cache).
fn run_grid() -> Phase {
    let mut w = Workload::new();
    let mut grid = Grid::new(SIZE, LEAVE);
    for (i, p) in w.pos.iter().enumerate() {
        grid.insert(i as u32, *p);
    }
    let mut visible = VisibleSets::new(OBSERVERS);
    let (mut out, mut order) = (Vec::new(), Vec::new());
    let mut phase = Phase { total: Vec::new(), update: Vec::new(), seen: 0 };
    for _ in 0..TICKS {
        w.tick();
        let t = Instant::now();
        for &i in &w.moved {
            grid.update(i, w.pos[i as usize]);
        }
        grid.refresh();
        phase.update.push(t.elapsed());
        visible.start_tick();
        order.clear();
        order.extend(w.observers.iter().enumerate().map(|(o, &s)| (grid.cell_of_slot(s).unwrap_or(0), o)));
        order.sort_unstable();
        for &(_, o) in &order {
            let prev = visible.previous(o);
            grid.visible(w.pos[w.observers[o] as usize], VIEW, LEAVE, prev, &mut out);
            visible.set(o, out.iter().map(|x| x.1));
            phase.seen += out.len();
        }
        phase.total.push(t.elapsed());
    }
    grid.check(&w.pos).expect("grid invariant");
    phase
}

/// The R-tree: rebuilt from scratch (bulk load) every tick, then the same queries, nearest first.
fn run_rtree() -> Phase {
    let mut w = Workload::new();
    let mut out = Vec::new();
    let mut phase = Phase { total: Vec::new(), update: Vec::new(), seen: 0 };
    for _ in 0..TICKS {
        w.tick();
        let t = Instant::now();
        let tree = RTree::bulk_load(
            w.pos.iter().enumerate().map(|(i, p)| GeomWithData::new([p.x, p.y], i as u32)).collect::<Vec<_>>(),
        );
        phase.update.push(t.elapsed());
        for &obs in &w.observers {
            let c = w.pos[obs as usize];
            out.clear();
            for e in tree.locate_within_distance([c.x, c.y], VIEW * VIEW) {
                let d2 = Vec2::new(e.geom()[0], e.geom()[1]).dist2(c);
                out.push((d2, e.data));
            }
            out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            phase.seen += out.len();
        }
        phase.total.push(t.elapsed());
    }
    phase
}

fn main() {
    // REALM_AOI_GRID_ONLY=1 skips the R-tree (for profiling the grid alone under perf). Each structure runs its
    // own phase over the identical tick sequence, so neither runs on caches the other just evicted.
    let grid_only = std::env::var_os("REALM_AOI_GRID_ONLY").is_some();
    let grid = run_grid();
    let tree = if grid_only { None } else { Some(run_rtree()) };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |name: &str, phase: &Phase| {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {} |",
            ms(median(phase.total.clone())),
            ms(p99(phase.total.clone())),
            ms(median(phase.update.clone())),
            phase.seen / TICKS
        );
    };
    let g = median(grid.total.clone());
    println!("AOI: {ENTITIES} entities, {OBSERVERS} observers, 10% change cell per tick, {TICKS} ticks");
    println!("| structure | median ms/tick | p99 ms/tick | of which index update | entities seen/tick |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    row("uniform grid + hysteresis", &grid);
    let mut json = serde_json::json!({"grid_median_ms": ms(g)});
    if let Some(tree) = tree {
        let r = median(tree.total.clone());
        let ratio = r.as_secs_f64() / g.as_secs_f64();
        row("rstar R-tree rebuilt per tick", &tree);
        println!("grid is {ratio:.2}x faster (target >= 3x)");
        json["rtree_median_ms"] = ms(r).into();
        json["ratio"] = ratio.into();
    }
    println!("grid {:.3} ms per tick (target <= 4 ms)", ms(g));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("aoi.json"), json.to_string());
}
