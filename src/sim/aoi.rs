//! Area of interest: a uniform grid whose cell is the (hysteresis-widened) view radius, so any observer's
//! neighbourhood is at most 3x3 cells, with hysteresis so an entity on the edge of view does not flicker in and
//! out: it becomes visible within `enter` radius and stays visible until beyond `leave` radius.
//!
//! Storage is one contiguous array of `(slot, position)` entries sorted by cell (then slot), with a start offset
//! per cell, rebuilt by a counting sort when positions have changed since the last query. A query then scans three
//! contiguous runs (one per row of its 3x3 neighbourhood) instead of chasing nine separately allocated lists, and
//! moving an entity is two stores instead of a removal and an insertion in two heap lists. Measured in
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
    /// Scratch for queries: packed `(distance², slot)` sort keys.
    keys: Vec<u64>,
    /// Whether `pos`/`cell` changed since `entries` was built.
    stale: bool,
}

impl Grid {
    /// A grid over `[0, size)²` with square cells of side `cell`.
    pub fn new(size: f32, cell: f32) -> Self {
        let cell = cell.max(1.0);
        let n = ((size / cell).ceil() as i32).max(1);
        let cells = (n * n) as usize;
        Self {
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
    /// with the counts kept by every move, so each cell's run is in slot order). Queries call this first; it is public so a caller can pay it at a
    /// moment of its choosing.
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

    /// The rows of cells overlapping the square of half-side `radius` around `center`. Within a row the
    /// overlapping cells are adjacent, so each row is one contiguous run of `entries` ([`Grid::run`]).
    /// Refreshes first.
    fn runs(&mut self, center: Vec2, radius: f32) -> Runs {
        self.refresh();
        let (x0, y0) = self.cell_xy(Vec2::new(center.x - radius, center.y - radius));
        let (x1, y1) = self.cell_xy(Vec2::new(center.x + radius, center.y + radius));
        Runs { x0: x0 as usize, x1: x1 as usize, rows: y0 as usize..y1 as usize + 1 }
    }

    #[inline]
    fn run(&self, q: &Runs, cy: usize) -> std::ops::Range<usize> {
        let row = cy * self.cols as usize;
        self.start[row + q.x0] as usize..self.start[row + q.x1 + 1] as usize
    }

    /// Calls `f(slot, distance²)` for every slot in the cells overlapping the square of half-side `radius`
    /// around `center` (a superset of the slots within `radius`).
    #[inline]
    pub fn for_each_candidate(&mut self, center: Vec2, radius: f32, mut f: impl FnMut(u32, f32)) {
        let runs = self.runs(center, radius);
        for cy in runs.rows.clone() {
            for e in &self.entries[self.run(&runs, cy)] {
                f(e.slot, e.pos.dist2(center));
            }
        }
    }

    /// Slots within `radius` of `center`, as `(distance², slot)`, nearest first.
    pub fn within(&mut self, center: Vec2, radius: f32, out: &mut Vec<(f32, u32)>) {
        self.nearest(center, radius, radius * radius, usize::MAX, out, |_, _| true);
    }

    /// The visible set of an observer with hysteresis: slots within `enter` radius, plus slots within `leave`
    /// radius that `was_visible` says were visible before. Nearest first (ties by slot, for determinism).
    pub fn visible(
        &mut self,
        center: Vec2,
        enter: f32,
        leave: f32,
        was_visible: impl Fn(u32) -> bool,
        out: &mut Vec<(f32, u32)>,
    ) {
        self.visible_nearest(center, enter, leave, was_visible, usize::MAX, out);
    }

    /// As [`Grid::visible`], but only the `limit` nearest are sorted (and kept first); the rest follow unsorted.
    /// Snapshots only ever send the nearest few dozen, so sorting every candidate is wasted work at scale
    /// (profiled: it was a fifth of the tick with 500 players).
    pub fn visible_nearest(
        &mut self,
        center: Vec2,
        enter: f32,
        leave: f32,
        was_visible: impl Fn(u32) -> bool,
        limit: usize,
        out: &mut Vec<(f32, u32)>,
    ) {
        let (e2, l2) = (enter * enter, leave * leave);
        self.nearest(center, leave, l2, limit, out, |d2, slot| d2 <= e2 || was_visible(slot));
    }

    /// The candidates within `sqrt(r2)` of `center` that `keep(distance², slot)` accepts, as
    /// `(distance², slot)` with the `limit` nearest first and sorted.
    ///
    /// Two passes, because the first is the hot one: it writes every candidate's packed sort key into a buffer
    /// sized for all of them and advances the write position by `distance² <= r2` as 0 or 1, with no branch to
    /// mispredict and nothing to call (measured: a data-dependent branch or call per candidate in this loop
    /// doubled the query cost). The second pass runs `keep` over the few survivors.
    fn nearest(
        &mut self,
        center: Vec2,
        radius: f32,
        r2: f32,
        limit: usize,
        out: &mut Vec<(f32, u32)>,
        keep: impl Fn(f32, u32) -> bool,
    ) {
        let runs = self.runs(center, radius);
        let total = runs.rows.clone().map(|cy| self.run(&runs, cy).len()).sum();
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.resize(total, 0);
        let mut n = 0;
        for cy in runs.rows.clone() {
            for e in &self.entries[self.run(&runs, cy)] {
                let d2 = e.pos.dist2(center);
                keys[n] = nearest_key(d2, e.slot);
                n += usize::from(d2 <= r2);
            }
        }
        // In-place filter (`Vec::retain` was a tenth of the query time: not inlined, and it guards against a
        // panicking predicate that cannot happen here).
        let mut kept = 0;
        for i in 0..n {
            let k = keys[i];
            keys[kept] = k;
            kept += usize::from(keep(f32::from_bits((k >> 32) as u32), k as u32));
        }
        keys.truncate(kept);
        let n = kept;
        if n > limit {
            keys.select_nth_unstable(limit);
            keys[..limit].sort_unstable();
        } else {
            keys.sort_unstable();
        }
        out.clear();
        out.extend(keys.iter().map(|&k| (f32::from_bits((k >> 32) as u32), k as u32)));
        self.keys = keys;
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
/// the order given (nearest first): they are short (what fits a snapshot), so membership is a linear scan.
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

/// A query's cells: columns `x0..=x1` of each row in `rows`.
struct Runs {
    x0: usize,
    x1: usize,
    rows: std::ops::Range<usize>,
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
        g.visible(pos[0], 10.0, 11.0, |_| false, &mut out);
        assert!(out.iter().any(|x| x.1 == 1));
        // At 10.5: not visible for a newcomer, still visible for one who saw it.
        pos[1] = Vec2::new(60.5, 50.0);
        g.update(1, pos[1]);
        g.visible(pos[0], 10.0, 11.0, |_| false, &mut out);
        assert!(!out.iter().any(|x| x.1 == 1));
        g.visible(pos[0], 10.0, 11.0, |s| s == 1, &mut out);
        assert!(out.iter().any(|x| x.1 == 1));
        // Beyond 11: gone.
        pos[1] = Vec2::new(61.5, 50.0);
        g.update(1, pos[1]);
        g.visible(pos[0], 10.0, 11.0, |s| s == 1, &mut out);
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
            g.visible(c, 30.0, 33.0, |_| false, &mut full);
            g.visible_nearest(c, 30.0, 33.0, |_| false, 16, &mut limited);
            assert_eq!(full.len(), limited.len(), "same set");
            let n = full.len().min(16);
            assert_eq!(&full[..n], &limited[..n], "same nearest prefix, same order");
        }
    }
}
