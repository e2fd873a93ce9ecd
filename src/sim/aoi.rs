//! Area of interest: a uniform grid of square cells (the game uses a quarter of the view radius), with hysteresis
//! so an entity on the edge of view does not flicker in and out: it becomes visible within `enter` radius and stays
//! visible until beyond `leave` radius.
//!
//! Storage is one contiguous array of `(slot, position)` entries sorted by cell (then slot), with a start offset
//! per cell, rebuilt by a counting sort when positions have changed since the last query. A query then scans one
//! contiguous run per row of cells its circle crosses instead of chasing separately allocated lists, and moving an
//! entity is two stores instead of a removal and an insertion in two heap lists. Measured in
//! `benches/aoi.rs` (100,000 entities, 10% changing cell per tick): the rebuild of all entities costs less than
//! re-filing the movers one by one did, and the queries got faster (BENCHMARKS.md, "Area of interest").
//!
//! Invariant: every inserted slot has its last position (from [`Grid::insert`]/[`Grid::update`]) and the cell of
//! that position in `pos`/`cell`; whenever `stale` is false, `entries` lists exactly the inserted slots, grouped by
//! cell in cell order, with those positions, and `start[c]..start[c + 1]` is cell `c`'s run.

use super::world::Vec2;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    pos: Vec2,
}

/// The grid, over slot numbers; it keeps the last position it was given for each slot.
#[derive(Debug, Clone)]
pub struct Grid {
    side: f32,
    inv_cell: f32,
    cols: i32,
    rows: i32,
    /// Per slot: last position and its cell (`NONE` when not in the grid).
    pos: Vec<Vec2>,
    cell: Vec<u32>,
    /// Per cell: how many slots are in it (kept up to date by every move, so a rebuild needs no counting pass).
    count: Vec<u32>,
    /// Per cell: offset of its run in `entries`; one extra element at the end.
    start: Vec<u32>,
    entries: Vec<Entry>,
    /// Scratch for the rebuild (next free index per cell).
    cursor: Vec<u32>,
    /// Scratch for queries: packed `(distance², slot)` sort keys, and those of the hysteresis ring.
    keys: Vec<u64>,
    ring: Vec<u64>,
    /// Scratch: the runs of `entries` the current query scans ([`Grid::plan`]).
    plan: Vec<std::ops::Range<u32>>,
    /// Whether `pos`/`cell` changed since `entries` was built.
    stale: bool,
}

impl Grid {
    /// A grid over `[0, size)²` with square cells of side `cell`.
    pub fn new(size: f32, cell: f32) -> Self {
        let cell = cell.max(1.0);
        // Zone validation bounds size / cell (1000 per side); the clamp keeps the multiplication in range whatever
        // a caller passes.
        let n = ((size / cell).ceil() as i32).clamp(1, 4096);
        let cells = (n as usize) * (n as usize);
        Self {
            side: cell,
            inv_cell: 1.0 / cell,
            cols: n,
            rows: n,
            pos: Vec::new(),
            cell: Vec::new(),
            count: vec![0; cells],
            start: vec![0; cells + 1],
            entries: Vec::new(),
            cursor: Vec::new(),
            keys: Vec::new(),
            ring: Vec::new(),
            plan: Vec::new(),
            stale: false,
        }
    }

    fn cell_xy(&self, p: Vec2) -> (i32, i32) {
        let cx = ((p.x * self.inv_cell) as i32).clamp(0, self.cols - 1);
        let cy = ((p.y * self.inv_cell) as i32).clamp(0, self.rows - 1);
        (cx, cy)
    }

    fn cell_of(&self, p: Vec2) -> u32 {
        let (cx, cy) = self.cell_xy(p);
        (cy * self.cols + cx) as u32
    }

    /// Adds `slot` at `p`.
    pub fn insert(&mut self, slot: u32, p: Vec2) {
        if self.cell.len() <= slot as usize {
            self.cell.resize(slot as usize + 1, NONE);
            self.pos.resize(slot as usize + 1, Vec2::default());
        }
        debug_assert_eq!(self.cell[slot as usize], NONE, "slot {slot} inserted twice");
        self.set(slot, p);
    }

    fn set(&mut self, slot: u32, p: Vec2) {
        let c = self.cell_of(p);
        let old = std::mem::replace(&mut self.cell[slot as usize], c);
        if old != c {
            if old != NONE {
                self.count[old as usize] -= 1;
            }
            self.count[c as usize] += 1;
        }
        self.pos[slot as usize] = p;
        self.stale = true;
    }

    /// Removes `slot` (no-op when absent).
    pub fn remove(&mut self, slot: u32) {
        if let Some(c) = self.cell.get_mut(slot as usize) {
            if *c != NONE {
                self.count[*c as usize] -= 1;
                *c = NONE;
                self.stale = true;
            }
        }
    }

    /// Moves `slot` to `p` (inserting it when absent); returns whether it changed cell.
    pub fn update(&mut self, slot: u32, p: Vec2) -> bool {
        match self.cell.get(slot as usize) {
            Some(&old) if old != NONE => {
                self.set(slot, p);
                self.cell[slot as usize] != old
            }
            _ => {
                self.insert(slot, p);
                true
            }
        }
    }

    /// Cell index of `slot`, if inserted.
    pub fn cell_of_slot(&self, slot: u32) -> Option<u32> {
        self.cell.get(slot as usize).copied().filter(|&c| c != NONE)
    }

    /// Rebuilds the cell-ordered entries if anything moved since the last build (a counting sort over slots,
    /// with the counts kept by every move, so each cell's run is in slot order). Queries call this first; it is
    /// public so a caller can pay it at a moment of its choosing.
    pub fn refresh(&mut self) {
        if !self.stale {
            return;
        }
        self.stale = false;
        self.start[0] = 0;
        for (c, &n) in self.count.iter().enumerate() {
            self.start[c + 1] = self.start[c] + n;
        }
        let total = self.start[self.start.len() - 1] as usize;
        self.cursor.clear();
        self.cursor.extend_from_slice(&self.start[..self.start.len() - 1]);
        // Every index below `total` is written exactly once by the scatter, so only growth needs a fill.
        self.entries.resize(total, Entry { slot: NONE, pos: Vec2::default() });
        for (slot, (&c, &pos)) in self.cell.iter().zip(&self.pos).enumerate() {
            if c != NONE {
                let i = &mut self.cursor[c as usize];
                self.entries[*i as usize] = Entry { slot: slot as u32, pos };
                *i += 1;
            }
        }
    }

    /// Plans a query: the runs of `entries` covering the cells a circle of `radius` around `center` overlaps,
    /// one per row (within a row those cells are adjacent), into `self.plan`; returns how many entries that is.
    /// Each row covers the circle's chord at the row's edge nearest the centre, so with small cells a query
    /// scans about its circle, not its bounding square. Refreshes first.
    fn plan(&mut self, center: Vec2, radius: f32) -> usize {
        self.refresh();
        let (_, y0) = self.cell_xy(Vec2::new(center.x, center.y - radius));
        let (_, y1) = self.cell_xy(Vec2::new(center.x, center.y + radius));
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        let mut total = 0;
        for cy in y0..=y1 {
            let top = cy as f32 * self.side;
            let dy = (top - center.y).max(center.y - (top + self.side)).max(0.0);
            let half = (radius * radius - dy * dy).max(0.0).sqrt();
            let (x0, _) = self.cell_xy(Vec2::new(center.x - half, center.y));
            let (x1, _) = self.cell_xy(Vec2::new(center.x + half, center.y));
            let row = (cy * self.cols) as usize;
            let run = self.start[row + x0 as usize]..self.start[row + x1 as usize + 1];
            total += run.len();
            if !run.is_empty() {
                plan.push(run);
            }
        }
        self.plan = plan;
        total
    }

    /// The entries of the planned query.
    #[inline]
    fn planned(&self) -> impl Iterator<Item = &Entry> {
        self.plan.iter().flat_map(|run| &self.entries[run.start as usize..run.end as usize])
    }

    /// Calls `f(slot, distance²)` for every slot in the cells overlapping the circle of `radius` around
    /// `center` (a superset of the slots within `radius`).
    #[inline]
    pub fn for_each_candidate(&mut self, center: Vec2, radius: f32, mut f: impl FnMut(u32, f32)) {
        self.plan(center, radius);
        for e in self.planned() {
            f(e.slot, e.pos.dist2(center));
        }
    }

    /// Slots within `radius` of `center`, as `(distance², slot)`, nearest first.
    pub fn within(&mut self, center: Vec2, radius: f32, out: &mut Vec<(f32, u32)>) {
        let candidates = self.plan(center, radius);
        let mut keys = std::mem::take(&mut self.keys);
        self.collect_keys(center, radius * radius, candidates, &mut keys);
        keys.sort_unstable();
        out.clear();
        out.extend(keys.iter().map(|&k| unpack(k)));
        self.keys = keys;
    }

    /// The visible set of an observer with hysteresis: slots within `enter` radius, plus the slots of `prev`
    /// (what it saw last time) still within `leave` radius. Nearest first, ties by slot (deterministic).
    pub fn visible(&mut self, center: Vec2, enter: f32, leave: f32, prev: &[u32], out: &mut Vec<(f32, u32)>) {
        self.visible_nearest(center, enter, leave, prev, usize::MAX, out);
    }

    /// As [`Grid::visible`], but `out` gets only the `limit` nearest of the visible set, sorted; returns the size
    /// of the whole visible set. Snapshots only ever send the nearest few dozen.
    ///
    /// In a crowd (hundreds within view, as at a spawn point) the cost would otherwise grow with the crowd for
    /// every observer: here the visible set is only counted (a pass with no stores), and keys are gathered
    /// within a smaller radius estimated from that count to hold the `limit` nearest, widened until it does.
    /// The result is the same as sorting the whole set: when at least `limit` slots lie within `enter`, the
    /// `limit` nearest of the set are the `limit` nearest slots, and none of them needs hysteresis.
    pub fn visible_nearest(
        &mut self,
        center: Vec2,
        enter: f32,
        leave: f32,
        prev: &[u32],
        limit: usize,
        out: &mut Vec<(f32, u32)>,
    ) -> usize {
        self.nearest(center, (enter, leave), prev, limit, true, out)
    }

    /// As [`Grid::visible_nearest`], `out` in no particular order (a caller that orders them otherwise saves
    /// sorting them by distance).
    pub fn visible_nearest_set(
        &mut self,
        center: Vec2,
        enter: f32,
        leave: f32,
        prev: &[u32],
        limit: usize,
        out: &mut Vec<(f32, u32)>,
    ) -> usize {
        self.nearest(center, (enter, leave), prev, limit, false, out)
    }

    fn nearest(
        &mut self,
        center: Vec2,
        (enter, leave): (f32, f32),
        prev: &[u32],
        limit: usize,
        sorted: bool,
        out: &mut Vec<(f32, u32)>,
    ) -> usize {
        let (e2, l2) = (enter * enter, leave * leave);
        let candidates = self.plan(center, enter);
        let mut keys = std::mem::take(&mut self.keys);
        // Hysteresis: last time's slots between the two radii (at most a snapshot's worth: checked directly).
        let mut ring = std::mem::take(&mut self.ring);
        ring.clear();
        for &slot in prev {
            if self.cell.get(slot as usize).is_some_and(|&c| c != NONE) {
                let d2 = self.pos[slot as usize].dist2(center);
                if d2 > e2 && d2 <= l2 {
                    ring.push(nearest_key(d2, slot));
                }
            }
        }
        ring.sort_unstable();
        ring.dedup();
        let crowd = candidates > limit.saturating_mul(CROWD_FACTOR);
        let inside = if crowd { self.count_within(center, e2) } else { 0 };
        let total = if crowd && inside >= limit {
            // Widen from the radius expected to hold 1.5 x limit, until it holds limit (at `enter` it holds
            // `inside`). The density is the higher of the view circle's and the observer's own 3x3 cells' (a crowd
            // is densest at its centre, where the circle's average would overestimate the radius and gather too
            // many keys).
            let view_density = inside as f32 / (std::f32::consts::PI * e2);
            let density = view_density.max(self.block_density(center));
            let mut r = (1.5 * limit as f32 / (std::f32::consts::PI * density)).sqrt();
            loop {
                r = r.min(enter);
                let candidates = self.plan(center, r);
                self.collect_keys(center, r * r, candidates, &mut keys);
                if keys.len() >= limit || r >= enter {
                    break;
                }
                r *= 1.4;
            }
            inside + ring.len()
        } else {
            self.collect_keys(center, e2, candidates, &mut keys);
            let total = keys.len() + ring.len();
            keys.extend_from_slice(&ring);
            total
        };
        let n = if sorted { select_sorted(&mut keys, limit) } else { select(&mut keys, limit) };
        out.clear();
        out.extend(keys[..n].iter().map(|&k| unpack(k)));
        self.keys = keys;
        self.ring = ring;
        total
    }

    /// Slots per square unit in the 3x3 cells around `center`'s cell (fewer at the map's edge), from the cell
    /// offsets alone: three subtractions, no entries read.
    fn block_density(&self, center: Vec2) -> f32 {
        let (cx, cy) = self.cell_xy(center);
        let (x0, x1) = ((cx - 1).max(0), (cx + 1).min(self.cols - 1));
        let (y0, y1) = ((cy - 1).max(0), (cy + 1).min(self.rows - 1));
        let mut n = 0;
        for y in y0..=y1 {
            let row = (y * self.cols) as usize;
            n += self.start[row + x1 as usize + 1] - self.start[row + x0 as usize];
        }
        let cells = ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
        n as f32 / (cells * self.side * self.side)
    }

    /// Packed sort keys of the planned query's `candidates` within `sqrt(r2)` of `center`, into `keys`
    /// (replacing its contents).
    ///
    /// The hot loop of every query: each candidate's key is written into a buffer sized for all of them and the
    /// write position advances by `distance² <= r2` as 0 or 1, with no branch to mispredict and nothing to call
    /// (measured: a data-dependent branch or call per candidate here doubled the query cost).
    fn collect_keys(&self, center: Vec2, r2: f32, candidates: usize, keys: &mut Vec<u64>) {
        keys.clear();
        keys.resize(candidates, 0);
        let mut n = 0;
        for run in &self.plan {
            for e in &self.entries[run.start as usize..run.end as usize] {
                let d2 = e.pos.dist2(center);
                keys[n] = nearest_key(d2, e.slot);
                n += usize::from(d2 <= r2);
            }
        }
        keys.truncate(n);
    }

    /// How many of the planned query's candidates are within `sqrt(r2)` of `center` (no stores: the cheap
    /// pass over a crowd).
    fn count_within(&self, center: Vec2, r2: f32) -> usize {
        self.planned().map(|e| usize::from(e.pos.dist2(center) <= r2)).sum()
    }

    /// Checks the invariant (tests): each inserted slot is listed once, in the cell of its position, with that
    /// position.
    pub fn check(&self, positions: &[Vec2]) -> Result<(), String> {
        let mut grid = self.clone();
        grid.refresh();
        let mut seen = vec![false; grid.cell.len()];
        for c in 0..grid.start.len() - 1 {
            let run = &grid.entries[grid.start[c] as usize..grid.start[c + 1] as usize];
            if run.len() != grid.count[c] as usize {
                return Err(format!("cell {c} counts {} slots but lists {}", grid.count[c], run.len()));
            }
            for e in run {
                let slot = e.slot as usize;
                if e.pos != positions[slot] || grid.pos[slot] != positions[slot] {
                    return Err(format!("slot {slot} has a stale position in the grid"));
                }
                if std::mem::replace(&mut seen[slot], true) {
                    return Err(format!("slot {slot} in two cells"));
                }
                if grid.cell[slot] != c as u32 || grid.cell_of(positions[slot]) != c as u32 {
                    return Err(format!("slot {slot} is in the wrong cell"));
                }
            }
            if run.windows(2).any(|w| w[0].slot >= w[1].slot) {
                return Err(format!("cell {c} is not in slot order"));
            }
        }
        if let Some(slot) = (0..grid.cell.len()).find(|&s| grid.cell[s] != NONE && !seen[s]) {
            return Err(format!("slot {slot} is missing from its cell"));
        }
        Ok(())
    }
}

/// Every observer's visible set, as of the previous tick and as being built this tick, each stored back to back
/// in one buffer in the order the observers were processed (double-buffered).
///
/// Observers are visited in AOI-cell order every tick and that order barely changes between ticks, so reading the
/// previous sets (for hysteresis) and writing the new ones both walk their buffers almost sequentially; a `Vec`
/// per observer put two cache misses on every observer instead (measured in `benches/aoi.rs`). Sets are kept in
/// the order given (nearest first) and passed to [`Grid::visible`] as the previous set.
#[derive(Debug, Clone, Default)]
pub struct VisibleSets {
    prev: Vec<u32>,
    prev_at: Vec<(u32, u32)>,
    next: Vec<u32>,
    next_at: Vec<(u32, u32)>,
}

impl VisibleSets {
    /// Sets for observers `0..observers` (more are added on demand), all empty.
    pub fn new(observers: usize) -> Self {
        Self { prev_at: vec![(0, 0); observers], next_at: vec![(0, 0); observers], ..Self::default() }
    }

    /// Starts a tick: the sets written last tick become the previous ones, and every observer's new set is
    /// empty until [`VisibleSets::set`] gives it one (an observer not visited this tick has seen nothing).
    pub fn start_tick(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.next);
        std::mem::swap(&mut self.prev_at, &mut self.next_at);
        self.next.clear();
        self.next_at.fill((0, 0));
    }

    /// What `observer` saw last tick.
    pub fn previous(&self, observer: usize) -> &[u32] {
        match self.prev_at.get(observer) {
            Some(&(at, len)) => &self.prev[at as usize..(at + len) as usize],
            None => &[],
        }
    }

    /// Records what `observer` sees this tick (replacing anything recorded for it earlier in the tick).
    pub fn set(&mut self, observer: usize, slots: impl IntoIterator<Item = u32>) {
        if self.next_at.len() <= observer {
            self.next_at.resize(observer + 1, (0, 0));
            self.prev_at.resize(observer + 1, (0, 0));
        }
        let at = self.next.len();
        self.next.extend(slots);
        self.next_at[observer] = (at as u32, (self.next.len() - at) as u32);
    }
}

/// Sort key for `(distance², slot)`: nearest first, ties by slot. A distance² is never negative, and the bit
/// patterns of non-negative floats order like the floats, so one integer comparison does the work of two.
#[inline]
fn nearest_key(d2: f32, slot: u32) -> u64 {
    debug_assert!(d2 >= 0.0, "a squared distance is not negative");
    (u64::from(d2.to_bits()) << 32) | u64::from(slot)
}

/// A query with more candidates than this many times its limit takes the crowd path of
/// [`Grid::visible_nearest`].
const CROWD_FACTOR: usize = 4;

/// Puts the `limit` smallest keys first, in no particular order; returns how many that is.
fn select(keys: &mut [u64], limit: usize) -> usize {
    if keys.len() > limit {
        keys.select_nth_unstable(limit);
        limit
    } else {
        keys.len()
    }
}

/// Puts the `limit` smallest keys first, sorted; returns how many that is (`limit` or all of them).
fn select_sorted(keys: &mut [u64], limit: usize) -> usize {
    if keys.len() > limit {
        keys.select_nth_unstable(limit);
        keys[..limit].sort_unstable();
        limit
    } else {
        keys.sort_unstable();
        keys.len()
    }
}

#[inline]
fn unpack(key: u64) -> (f32, u32) {
    (f32::from_bits((key >> 32) as u32), key as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::Pcg32;

    #[test]
    fn within_matches_brute_force() {
        let mut rng = Pcg32::new(1, 1);
        let pos: Vec<Vec2> = (0..2000).map(|_| Vec2::new(rng.range(0.0, 500.0), rng.range(0.0, 500.0))).collect();
        let mut g = Grid::new(500.0, 33.0);
        for (i, p) in pos.iter().enumerate() {
            g.insert(i as u32, *p);
        }
        let mut out = Vec::new();
        for _ in 0..50 {
            let c = Vec2::new(rng.range(0.0, 500.0), rng.range(0.0, 500.0));
            g.within(c, 30.0, &mut out);
            let mut brute: Vec<u32> = (0..pos.len() as u32).filter(|&i| pos[i as usize].dist2(c) <= 900.0).collect();
            let mut got: Vec<u32> = out.iter().map(|x| x.1).collect();
            assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "nearest first");
            got.sort();
            brute.sort();
            assert_eq!(got, brute);
        }
    }

    #[test]
    fn queries_after_moves_and_removals_see_the_latest_positions() {
        let mut rng = Pcg32::new(9, 2);
        let mut pos: Vec<Option<Vec2>> =
            (0..1500).map(|_| Some(Vec2::new(rng.range(0.0, 400.0), rng.range(0.0, 400.0)))).collect();
        let mut g = Grid::new(400.0, 33.0);
        for (i, p) in pos.iter().enumerate() {
            g.insert(i as u32, p.unwrap());
        }
        let mut out = Vec::new();
        for round in 0..40 {
            for _ in 0..200 {
                let i = rng.below(1500) as usize;
                match (pos[i], rng.below(10)) {
                    (Some(_), 0) => {
                        g.remove(i as u32);
                        pos[i] = None;
                    }
                    _ => {
                        let p = Vec2::new(rng.range(0.0, 400.0), rng.range(0.0, 400.0));
                        g.update(i as u32, p);
                        pos[i] = Some(p);
                    }
                }
            }
            let c = Vec2::new(rng.range(0.0, 400.0), rng.range(0.0, 400.0));
            g.within(c, 30.0, &mut out);
            let mut brute: Vec<(f32, u32)> = pos
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|p| (p.dist2(c), i as u32)))
                .filter(|&(d2, _)| d2 <= 900.0)
                .collect();
            brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            assert_eq!(out, brute, "round {round}");
        }
        let live: Vec<Vec2> = pos.iter().map(|p| p.unwrap_or_default()).collect();
        g.check(&live).unwrap();
    }

    #[test]
    fn hysteresis_keeps_edge_entities_until_they_leave_the_outer_radius() {
        let mut pos = [Vec2::new(50.0, 50.0), Vec2::new(59.0, 50.0)];
        let mut g = Grid::new(200.0, 11.0);
        g.insert(0, pos[0]);
        g.insert(1, pos[1]);
        let mut out = Vec::new();
        // Enters at 9 <= 10.
        g.visible(pos[0], 10.0, 11.0, &[], &mut out);
        assert!(out.iter().any(|x| x.1 == 1));
        // At 10.5: not visible for a newcomer, still visible for one who saw it.
        pos[1] = Vec2::new(60.5, 50.0);
        g.update(1, pos[1]);
        g.visible(pos[0], 10.0, 11.0, &[], &mut out);
        assert!(!out.iter().any(|x| x.1 == 1));
        g.visible(pos[0], 10.0, 11.0, &[1], &mut out);
        assert!(out.iter().any(|x| x.1 == 1));
        // Beyond 11: gone.
        pos[1] = Vec2::new(61.5, 50.0);
        g.update(1, pos[1]);
        g.visible(pos[0], 10.0, 11.0, &[1], &mut out);
        assert!(!out.iter().any(|x| x.1 == 1));
    }

    #[test]
    fn random_moves_keep_every_slot_in_exactly_one_correct_cell() {
        let mut rng = Pcg32::new(3, 3);
        let mut pos: Vec<Vec2> = (0..500).map(|_| Vec2::new(rng.range(0.0, 300.0), rng.range(0.0, 300.0))).collect();
        let mut g = Grid::new(300.0, 20.0);
        for (i, p) in pos.iter().enumerate() {
            g.insert(i as u32, *p);
        }
        for round in 0..200 {
            let i = rng.below(500) as usize;
            if round % 17 == 0 {
                g.remove(i as u32);
                g.insert(i as u32, pos[i]);
            }
            pos[i] = Vec2::new(rng.range(0.0, 300.0), rng.range(0.0, 300.0));
            g.update(i as u32, pos[i]);
        }
        g.check(&pos).unwrap();
    }
}

#[cfg(test)]
mod visible_sets_tests {
    use super::*;

    #[test]
    fn previous_is_what_was_set_last_tick_and_unvisited_observers_see_nothing() {
        let mut sets = VisibleSets::new(2);
        sets.start_tick();
        sets.set(1, [7, 3]);
        sets.set(0, [5]);
        sets.set(4, [9, 9, 1]); // beyond the initial size: grows
        assert!(sets.previous(0).is_empty(), "nothing before the first tick");
        sets.start_tick();
        assert_eq!(sets.previous(0), &[5]);
        assert_eq!(sets.previous(1), &[7, 3], "order kept (nearest first)");
        assert_eq!(sets.previous(4), &[9, 9, 1]);
        assert!(sets.previous(99).is_empty());
        sets.set(1, [2]);
        sets.set(1, [6, 8]); // set twice in a tick: the last wins
        sets.start_tick();
        assert_eq!(sets.previous(1), &[6, 8]);
        assert!(sets.previous(0).is_empty(), "not visited last tick");
        assert!(sets.previous(4).is_empty());
    }
}

#[cfg(test)]
mod nearest_tests {
    use super::*;
    use crate::sim::rng::Pcg32;

    #[test]
    fn limited_query_keeps_exactly_the_nearest_first_in_order() {
        let mut rng = Pcg32::new(5, 5);
        let mut g = Grid::new(300.0, 33.0);
        let pos: Vec<Vec2> = (0..3000).map(|_| Vec2::new(rng.range(0.0, 300.0), rng.range(0.0, 300.0))).collect();
        for (i, p) in pos.iter().enumerate() {
            g.insert(i as u32, *p);
        }
        let (mut full, mut limited) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let c = Vec2::new(rng.range(0.0, 300.0), rng.range(0.0, 300.0));
            g.visible(c, 30.0, 33.0, &[], &mut full);
            let total = g.visible_nearest(c, 30.0, 33.0, &[], 16, &mut limited);
            assert_eq!(full.len(), total, "same set");
            let n = full.len().min(16);
            assert_eq!(&full[..n], &limited[..], "same nearest prefix, same order");
        }
    }

    #[test]
    fn nearest_with_hysteresis_matches_brute_force_sparse_and_crowded() {
        let mut rng = Pcg32::new(8, 8);
        // The last layout puts everything, observers included, on a 2.5 m lattice: on cell edges and at exact
        // view distances, where float rounding at the radius must not change the count.
        for (count, cell, lattice) in
            [(300usize, 33.0f32, 0.0f32), (4000, 8.0, 0.0), (4000, 33.0, 0.0), (6000, 10.0, 2.5)]
        {
            let point = |rng: &mut Pcg32| {
                let p = Vec2::new(rng.range(0.0, 300.0), rng.range(0.0, 300.0));
                if lattice > 0.0 {
                    Vec2::new((p.x / lattice).floor() * lattice, (p.y / lattice).floor() * lattice)
                } else {
                    p
                }
            };
            let pos: Vec<Vec2> = (0..count).map(|_| point(&mut rng)).collect();
            let mut g = Grid::new(300.0, cell);
            for (i, p) in pos.iter().enumerate() {
                g.insert(i as u32, *p);
            }
            let mut out = Vec::new();
            for _ in 0..30 {
                let c = point(&mut rng);
                // Last time's set: some slots anywhere (only those in the ring may count), with a duplicate.
                let mut prev: Vec<u32> = (0..40).map(|_| rng.below(count as u32)).collect();
                prev.push(prev[0]);
                let mut brute: Vec<(f32, u32)> = (0..count as u32)
                    .map(|s| (pos[s as usize].dist2(c), s))
                    .filter(|&(d2, s)| d2 <= 900.0 || (d2 <= 33.0 * 33.0 && prev.contains(&s)))
                    .collect();
                brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let total = g.visible_nearest(c, 30.0, 33.0, &prev, 12, &mut out);
                assert_eq!(total, brute.len(), "{count} entities, cell {cell}");
                assert_eq!(out, brute[..brute.len().min(12)], "{count} entities, cell {cell}");
                // The same set unordered.
                let mut set = Vec::new();
                assert_eq!(g.visible_nearest_set(c, 30.0, 33.0, &prev, 12, &mut set), total);
                set.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                assert_eq!(set, out, "{count} entities, cell {cell}");
            }
        }
    }
}
