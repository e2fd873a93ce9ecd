//! Area of interest: our uniform grid (incremental updates + hysteresis queries) against an rstar R-tree rebuilt
//! every tick, on the same data in the same run.
//!
//! Workload (DESIGN.md section 11): 100,000 entities on an 8 km square, view radius 60 m, 10% of the entities
//! change cell every tick, 4,000 observers each asking "what do I see, nearest first" every tick.
//! Run: `cargo bench --bench aoi`. Targets: grid <= 4 ms per tick and >= 3x faster than the R-tree.

use std::time::{Duration, Instant};

use realm::sim::aoi::Grid;
use realm::sim::rng::Pcg32;
use realm::sim::world::Vec2;
use rstar::primitives::GeomWithData;
use rstar::RTree;

const ENTITIES: usize = 100_000;
const OBSERVERS: usize = 4_000;
const SIZE: f32 = 8_000.0;
const VIEW: f32 = 60.0;
const LEAVE: f32 = VIEW * 1.1;
const TICKS: usize = 40;

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

fn main() {
    let mut rng = Pcg32::new(2026, 11);
    let mut pos: Vec<Vec2> = (0..ENTITIES).map(|_| Vec2::new(rng.range(0.0, SIZE), rng.range(0.0, SIZE))).collect();
    let observers: Vec<u32> = (0..OBSERVERS as u32).map(|i| i * (ENTITIES / OBSERVERS) as u32).collect();
    let mut visible: Vec<Vec<u32>> = vec![Vec::new(); OBSERVERS];

    let mut grid = Grid::new(SIZE, LEAVE);
    for (i, p) in pos.iter().enumerate() {
        grid.insert(i as u32, *p);
    }
    let mut moved = Vec::new();
    let mut out = Vec::new();
    let (mut grid_times, mut tree_times) = (Vec::new(), Vec::new());
    let (mut grid_seen, mut tree_seen) = (0usize, 0usize);
    for _ in 0..TICKS {
        churn(&mut rng, &mut pos, &mut moved);

        // Grid: re-file the movers, then every observer's visible set with hysteresis, nearest first.
        let t = Instant::now();
        for &i in &moved {
            grid.update(i, pos[i as usize]);
        }
        // Observers in cell order: consecutive queries share most of their 3x3 cells, which stay in cache.
        let mut order: Vec<(u32, usize)> =
            observers.iter().enumerate().map(|(o, &s)| (grid.cell_of_slot(s).unwrap_or(0), o)).collect();
        order.sort_unstable();
        for &(_, o) in &order {
            let obs = observers[o];
            let prev = &visible[o];
            grid.visible(pos[obs as usize], VIEW, LEAVE, |s| prev.binary_search(&s).is_ok(), &mut out);
            let v = &mut visible[o];
            v.clear();
            v.extend(out.iter().map(|x| x.1));
            v.sort_unstable();
            grid_seen += out.len();
        }
        grid_times.push(t.elapsed());

        // R-tree: rebuilt from scratch (bulk load), then the same queries, nearest first.
        let t = Instant::now();
        let tree = RTree::bulk_load(
            pos.iter().enumerate().map(|(i, p)| GeomWithData::new([p.x, p.y], i as u32)).collect::<Vec<_>>(),
        );
        for &obs in &observers {
            let c = pos[obs as usize];
            out.clear();
            for e in tree.locate_within_distance([c.x, c.y], VIEW * VIEW) {
                let d2 = Vec2::new(e.geom()[0], e.geom()[1]).dist2(c);
                out.push((d2, e.data));
            }
            out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            tree_seen += out.len();
        }
        tree_times.push(t.elapsed());
    }
    grid.check(&pos).expect("grid invariant");
    let (g, r) = (median(grid_times.clone()), median(tree_times.clone()));
    let ratio = r.as_secs_f64() / g.as_secs_f64();
    println!("AOI: {ENTITIES} entities, {OBSERVERS} observers, 10% change cell per tick, {TICKS} ticks");
    println!("| structure | median ms/tick | p99 ms/tick | entities seen/tick |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| uniform grid + hysteresis | {:.3} | {:.3} | {} |",
        g.as_secs_f64() * 1e3,
        p99(grid_times).as_secs_f64() * 1e3,
        grid_seen / TICKS
    );
    println!(
        "| rstar R-tree rebuilt per tick | {:.3} | {:.3} | {} |",
        r.as_secs_f64() * 1e3,
        p99(tree_times).as_secs_f64() * 1e3,
        tree_seen / TICKS
    );
    println!("grid is {ratio:.2}x faster (target >= 3x); grid {:.3} ms (target <= 4 ms)", g.as_secs_f64() * 1e3);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({"grid_median_ms": g.as_secs_f64() * 1e3, "rtree_median_ms": r.as_secs_f64() * 1e3, "ratio": ratio});
    let _ = std::fs::write(dir.join("aoi.json"), json.to_string());
}
