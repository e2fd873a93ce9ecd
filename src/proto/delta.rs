//! Protocol version 2's snapshots: each one encodes the client's view as changes against a view the client
//! acknowledged (`Input.snapshot_ack`), with quantized positions and velocities. This module is the encoding both
//! ends share: [`QState`] (an entity as the wire carries it), the entry and update bodies the server encodes once
//! per entity and baseline (never once per observer: `sim/delta.rs`), and [`DeltaDecoder`], the client's side,
//! used by the library, `realm-client` and `realm-bots` (the web client has a TypeScript port, `web/src/delta.ts`).
//!
//! `DeltaSnapshot.entities`, byte for byte (README "Protocol", "Delta snapshots"; all integers LEB128 varints,
//! signed ones zigzag-encoded first):
//!
//! ```text
//! removed_count, removed_count x index_gap              baseline entries that left the view
//! update_count,  update_count  x (index_gap, update)    baseline entries that changed
//! entry_count,   entry_count   x (id_gap, entry)        entities entering the view
//! ```
//!
//! Index gaps address the baseline view sorted by entity id (the first is the index, each next one
//! `index - previous - 1`, strictly ascending); id gaps likewise (`id - previous - 1`). An entity in the baseline
//! that is neither removed nor updated is unchanged. Bodies start with a mask byte; the fields follow in bit order:
//!
//! | bit | field     | entry (absolute)          | update (against the baseline)      |
//! |-----|-----------|---------------------------|------------------------------------|
//! | 0   | position  | x, y: varint of q = round(64 m); age: varint | age; dx, dy: zigzag of the q change |
//! | 1   | velocity  | vx, vy: zigzag of round(64 m/s) | the same, absolute               |
//! | 2   | hp        | zigzag                    | zigzag, absolute                   |
//! | 3   | max_hp    | zigzag                    | zigzag, absolute                   |
//! | 4   | level     | varint                    | varint, absolute                   |
//! | 5   | flags     | varint                    | varint, absolute                   |
//! | 7   | NPC       | set: kind NPC, else player | must be 0                         |
//!
//! An entry carries the fields that are not zero; an update carries the fields that changed.
//!
//! Motion is a trajectory (as Quake 3's entities): the position is where the entity was at its anchor tick
//! (`snapshot tick - age`), and its position at tick T is `position + velocity * (T - anchor) / tick_rate`. The
//! server re-anchors an entity only when that prediction strays more than [`TOLERANCE`] from where it is, so one
//! walking a straight line costs nothing until it turns or stops.

use super::{DeltaSnapshot, EntityKind, EntityState, Snapshot, Vec2};

/// Position units per metre (precision: half of 1/64 m, 7.8 mm).
pub const POS_SCALE: f32 = 64.0;
/// Velocity units per metre per second.
pub const VEL_SCALE: f32 = 64.0;
/// Ticks of views a client keeps and the server may use as a baseline: an acknowledgement older than this gets a
/// snapshot against an empty view (1.6 s at 20 ticks per second).
pub const WINDOW: u64 = 32;
/// The server re-anchors a trajectory when its prediction is further than this from the entity, in 1/64 m
/// (so a client's positions are within 1/16 m of the server's).
pub const TOLERANCE: u32 = 4;
/// Most entities in one client's view by default (`game.view_entities`; v1 fits about 41 into a datagram,
/// unchanged entities cost nothing here).
pub const MAX_VIEW: usize = 84;
/// The largest view a server may be configured for: below 128, so every index gap is one byte.
pub const MAX_VIEW_LIMIT: usize = 127;

/// Mask bits.
pub const POS: u8 = 1;
/// Velocity changed / not zero.
pub const VEL: u8 = 2;
/// Hit points.
pub const HP: u8 = 4;
/// Maximum hit points.
pub const MAX_HP: u8 = 8;
/// Level.
pub const LEVEL: u8 = 16;
/// Flags (bit 0 dead, bit 1 in combat).
pub const FLAGS: u8 = 32;
/// Entries only: the entity is an NPC.
pub const NPC: u8 = 128;

/// The longest entry or update body: mask, two 5-byte position varints and a 10-byte age, two 5-byte velocity
/// varints, hp and max_hp (5 each), level and flags (5 each).
pub const MAX_BODY: usize = 1 + 20 + 10 + 10 + 10;

/// An entity as protocol v2 carries it: quantized, and so equal at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QState {
    /// An NPC (else a player).
    pub npc: bool,
    /// The trajectory's anchor tick: `x`, `y` is where the entity was then.
    pub t: u64,
    /// Position, 1/64 m (zones are at most 100 km across: fits).
    pub x: u32,
    /// Position, 1/64 m.
    pub y: u32,
    /// Velocity, 1/64 m/s.
    pub vx: i32,
    /// Velocity, 1/64 m/s.
    pub vy: i32,
    /// Hit points.
    pub hp: i32,
    /// Maximum hit points.
    pub max_hp: i32,
    /// Level.
    pub level: u32,
    /// Flags (bit 0 dead, bit 1 in combat).
    pub flags: u32,
}

/// Quantizes a position coordinate (negative, NaN: 0; too large: saturates).
pub fn quantize_pos(v: f32) -> u32 {
    round(v * POS_SCALE) as u32
}

/// Quantizes a velocity component (NaN: 0; saturates).
pub fn quantize_vel(v: f32) -> i32 {
    round(v * VEL_SCALE) as i32
}

/// `y.round()` (half away from zero) without a call into libm: `round` is not an instruction on baseline x86-64,
/// and the simulation quantizes every entity every tick. Below 2^23 the fraction `y - trunc(y)` is exact; from
/// there on every `f32` is a whole number (NaN and infinities pass through).
fn round(y: f32) -> f32 {
    if y.is_nan() || y.abs() >= 8_388_608.0 {
        return y;
    }
    let t = y as i32 as f32;
    let f = y - t;
    // Without branches: the fraction is as good as random, and a branch on it mispredicted half the time (measured:
    // the largest cost of publishing an entity's state).
    t + f32::from(u8::from(f >= 0.5)) - f32::from(u8::from(f <= -0.5))
}

impl QState {
    /// The trajectory's position at `tick`, in 1/64 m (as the server predicts it: it re-anchors when this strays
    /// more than [`TOLERANCE`]).
    pub fn position_at(&self, tick: u64, tick_rate: u32) -> (f64, f64) {
        let dt = tick.saturating_sub(self.t) as f64 / f64::from(tick_rate.max(1));
        (f64::from(self.x) + f64::from(self.vx) * dt, f64::from(self.y) + f64::from(self.vy) * dt)
    }

    /// Back to the message the rest of a client works with, the position extrapolated to `tick`.
    pub fn to_entity(&self, id: u64, tick: u64, tick_rate: u32) -> EntityState {
        let (x, y) = self.position_at(tick, tick_rate);
        EntityState {
            id,
            kind: if self.npc { EntityKind::Npc as i32 } else { EntityKind::Player as i32 },
            position: Some(Vec2 { x: (x / f64::from(POS_SCALE)) as f32, y: (y / f64::from(POS_SCALE)) as f32 }),
            velocity: Some(Vec2 { x: self.vx as f32 / VEL_SCALE, y: self.vy as f32 / VEL_SCALE }),
            hp: self.hp,
            max_hp: self.max_hp,
            level: self.level,
            flags: self.flags,
        }
    }
}

/// Zigzag: small magnitudes of either sign become small unsigned numbers.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bytes `v` takes as a varint.
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A fixed buffer the bodies are built in (one `extend_from_slice` per body).
struct Buf {
    b: [u8; MAX_BODY],
    at: usize,
}

impl Buf {
    #[inline]
    fn new(mask: u8) -> Self {
        let mut b = [0; MAX_BODY];
        b[0] = mask;
        Self { b, at: 1 }
    }
    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.b[self.at] = v as u8 | 0x80;
            v >>= 7;
            self.at += 1;
        }
        self.b[self.at] = v as u8;
        self.at += 1;
    }
    #[inline]
    fn signed(&mut self, v: i64) {
        self.varint(zigzag(v));
    }
}

/// Appends `v` as a varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the entry body of `q` (an entity entering a view in the snapshot of `tick`); returns its length.
pub fn encode_entry(q: &QState, tick: u64, out: &mut Vec<u8>) -> usize {
    let mut mask = 0;
    if q.npc {
        mask |= NPC;
    }
    if q.x != 0 || q.y != 0 || q.t != tick {
        mask |= POS;
    }
    if q.vx != 0 || q.vy != 0 {
        mask |= VEL;
    }
    if q.hp != 0 {
        mask |= HP;
    }
    if q.max_hp != 0 {
        mask |= MAX_HP;
    }
    if q.level != 0 {
        mask |= LEVEL;
    }
    if q.flags != 0 {
        mask |= FLAGS;
    }
    let mut b = Buf::new(mask);
    if mask & POS != 0 {
        b.varint(u64::from(q.x));
        b.varint(u64::from(q.y));
        b.varint(tick.saturating_sub(q.t));
    }
    fields(&mut b, mask, q);
    out.extend_from_slice(&b.b[..b.at]);
    b.at
}

/// The fields after position, shared by entries and updates.
#[inline]
fn fields(b: &mut Buf, mask: u8, q: &QState) {
    if mask & VEL != 0 {
        b.signed(i64::from(q.vx));
        b.signed(i64::from(q.vy));
    }
    if mask & HP != 0 {
        b.signed(i64::from(q.hp));
    }
    if mask & MAX_HP != 0 {
        b.signed(i64::from(q.max_hp));
    }
    if mask & LEVEL != 0 {
        b.varint(u64::from(q.level));
    }
    if mask & FLAGS != 0 {
        b.varint(u64::from(q.flags));
    }
}

/// Appends the update body taking `base` to `q` in the snapshot of `tick`; appends nothing and returns 0 when they
/// are equal (an unchanged entity is not sent).
pub fn encode_update(base: &QState, q: &QState, tick: u64, out: &mut Vec<u8>) -> usize {
    let mut mask = 0;
    if q.x != base.x || q.y != base.y || q.t != base.t {
        mask |= POS;
    }
    if q.vx != base.vx || q.vy != base.vy {
        mask |= VEL;
    }
    if q.hp != base.hp {
        mask |= HP;
    }
    if q.max_hp != base.max_hp {
        mask |= MAX_HP;
    }
    if q.level != base.level {
        mask |= LEVEL;
    }
    if q.flags != base.flags {
        mask |= FLAGS;
    }
    if mask == 0 {
        return 0;
    }
    let mut b = Buf::new(mask);
    if mask & POS != 0 {
        b.varint(tick.saturating_sub(q.t));
        b.signed(i64::from(q.x) - i64::from(base.x));
        b.signed(i64::from(q.y) - i64::from(base.y));
    }
    fields(&mut b, mask, q);
    out.extend_from_slice(&b.b[..b.at]);
    b.at
}

/// Why a `DeltaSnapshot` was not decoded. None of them corrupts the decoder: the views it holds are unchanged,
/// and the next snapshot decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaError {
    /// Not newer than the newest view (a reordered or duplicated datagram).
    Stale {
        /// Its tick.
        tick: u64,
        /// The newest view's.
        newest: u64,
    },
    /// Against a view this client does not have (lost, or older than [`WINDOW`]).
    MissingBaseline {
        /// The view it needs.
        baseline: u64,
    },
    /// Not a valid encoding.
    Malformed(&'static str),
}

impl std::fmt::Display for DeltaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stale { tick, newest } => write!(f, "snapshot {tick} is not newer than {newest}"),
            Self::MissingBaseline { baseline } => write!(f, "baseline {baseline} is not held"),
            Self::Malformed(what) => write!(f, "malformed delta snapshot: {what}"),
        }
    }
}

impl std::error::Error for DeltaError {}

/// One decoded view: the client's entities at a tick, sorted by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Its tick.
    pub tick: u64,
    /// Entities by ascending id.
    pub entities: Vec<(u64, QState)>,
}

/// The client's half of protocol v2: the views of the last [`WINDOW`] ticks, and the newest one's tick to
/// acknowledge in every `Input.snapshot_ack`.
#[derive(Debug, Default)]
pub struct DeltaDecoder {
    views: Vec<View>,
    newest: u64,
    scratch: View,
    marks: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or(DeltaError::Malformed("truncated"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DeltaError::Malformed("varint longer than 10 bytes"))
    }
    fn u32(&mut self) -> Result<u32, DeltaError> {
        u32::try_from(self.varint()?).map_err(|_| DeltaError::Malformed("value out of range"))
    }
    fn i32(&mut self) -> Result<i32, DeltaError> {
        i32::try_from(unzigzag(self.varint()?)).map_err(|_| DeltaError::Malformed("value out of range"))
    }
    fn count(&mut self, most: usize) -> Result<usize, DeltaError> {
        let n = self.varint()?;
        if n > most as u64 {
            return Err(DeltaError::Malformed("count larger than the view"));
        }
        Ok(n as usize)
    }
    fn mask(&mut self) -> Result<u8, DeltaError> {
        let m = *self.b.get(self.at).ok_or(DeltaError::Malformed("truncated"))?;
        self.at += 1;
        if m & 0x40 != 0 {
            return Err(DeltaError::Malformed("reserved mask bit set"));
        }
        Ok(m)
    }
    fn fields(&mut self, mask: u8, q: &mut QState) -> Result<(), DeltaError> {
        if mask & VEL != 0 {
            q.vx = self.i32()?;
            q.vy = self.i32()?;
        }
        if mask & HP != 0 {
            q.hp = self.i32()?;
        }
        if mask & MAX_HP != 0 {
            q.max_hp = self.i32()?;
        }
        if mask & LEVEL != 0 {
            q.level = self.u32()?;
        }
        if mask & FLAGS != 0 {
            q.flags = self.u32()?;
        }
        Ok(())
    }
}

/// The anchor tick of a trajectory `age` ticks old in the snapshot of `tick`.
fn anchor(tick: u64, age: u64) -> Result<u64, DeltaError> {
    tick.checked_sub(age).ok_or(DeltaError::Malformed("trajectory anchored before tick 0"))
}

/// Next index or id from a gap: `previous + 1 + gap` (the first: `gap`), checked.
fn next_after(previous: Option<u64>, gap: u64) -> Result<u64, DeltaError> {
    match previous {
        None => Ok(gap),
        Some(p) => p.checked_add(1).and_then(|n| n.checked_add(gap)).ok_or(DeltaError::Malformed("id overflows")),
    }
}

impl DeltaDecoder {
    /// A decoder holding no view.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tick to acknowledge: the newest view decoded (0 = none).
    pub fn ack(&self) -> u64 {
        self.newest
    }

    /// Forgets every view (a new session: its snapshots start from an empty view).
    pub fn reset(&mut self) {
        self.views.clear();
        self.newest = 0;
    }

    /// The view decoded for `tick`, if still held.
    pub fn view(&self, tick: u64) -> Option<&View> {
        if tick == 0 || self.views.is_empty() {
            return None;
        }
        self.views.get((tick % WINDOW) as usize).filter(|v| v.tick == tick)
    }

    /// Decodes `s` against the view it names, keeps the result as the newest view and returns it as the `Snapshot`
    /// the rest of a client works with (entities by ascending id).
    pub fn decode(&mut self, s: &DeltaSnapshot) -> Result<Snapshot, DeltaError> {
        let view = self.decode_view(s)?;
        Ok(Snapshot {
            tick: s.tick,
            last_processed_input: s.last_processed_input,
            input_client_time_us: s.input_client_time_us,
            entities: view.entities.iter().map(|(id, q)| q.to_entity(*id, s.tick, s.tick_rate)).collect(),
            total_visible: s.total_visible,
        })
    }

    /// As [`DeltaDecoder::decode`], returning the quantized view (tests compare it with the server's).
    pub fn decode_view(&mut self, s: &DeltaSnapshot) -> Result<&View, DeltaError> {
        if s.tick == 0 {
            return Err(DeltaError::Malformed("tick 0"));
        }
        if s.tick <= self.newest {
            return Err(DeltaError::Stale { tick: s.tick, newest: self.newest });
        }
        if self.views.is_empty() {
            self.views.resize(WINDOW as usize, View::default());
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.tick = s.tick;
        out.entities.clear();
        let result = self.decode_into(s, &mut out);
        if let Err(e) = result {
            self.scratch = out;
            return Err(e);
        }
        let at = (s.tick % WINDOW) as usize;
        self.scratch = std::mem::replace(&mut self.views[at], out);
        self.newest = s.tick;
        Ok(&self.views[at])
    }

    fn decode_into(&mut self, s: &DeltaSnapshot, out: &mut View) -> Result<(), DeltaError> {
        let empty = View::default();
        let base = if s.baseline_tick == 0 {
            &empty
        } else if s.baseline_tick >= s.tick {
            return Err(DeltaError::Malformed("baseline not older than the snapshot"));
        } else {
            // `view` checks the tick: a baseline WINDOW or more ticks back shares a slot with a newer view.
            self.views
                .get((s.baseline_tick % WINDOW) as usize)
                .filter(|v| v.tick == s.baseline_tick)
                .ok_or(DeltaError::MissingBaseline { baseline: s.baseline_tick })?
        };
        let n = base.entities.len();
        let mut r = Reader { b: &s.entities, at: 0 };
        // marks: 0 kept, 1 removed, 2 updated (its new state is in `updated`, in index order).
        self.marks.clear();
        self.marks.resize(n, 0);
        let removed = r.count(n)?;
        let mut previous = None;
        for _ in 0..removed {
            let i = next_after(previous, r.varint()?)?;
            if i >= n as u64 {
                return Err(DeltaError::Malformed("removed index past the baseline"));
            }
            self.marks[i as usize] = 1;
            previous = Some(i);
        }
        let updates = r.count(n)?;
        let mut updated: Vec<QState> = Vec::with_capacity(updates);
        let mut previous = None;
        for _ in 0..updates {
            let i = next_after(previous, r.varint()?)?;
            if i >= n as u64 {
                return Err(DeltaError::Malformed("updated index past the baseline"));
            }
            if self.marks[i as usize] != 0 {
                return Err(DeltaError::Malformed("an entity both removed and updated"));
            }
            previous = Some(i);
            let mask = r.mask()?;
            if mask & NPC != 0 {
                return Err(DeltaError::Malformed("NPC bit in an update"));
            }
            let mut q = base.entities[i as usize].1;
            if mask & POS != 0 {
                q.t = anchor(s.tick, r.varint()?)?;
                let dx = unzigzag(r.varint()?);
                let dy = unzigzag(r.varint()?);
                q.x = u32::try_from(i64::from(q.x) + dx).map_err(|_| DeltaError::Malformed("position out of range"))?;
                q.y = u32::try_from(i64::from(q.y) + dy).map_err(|_| DeltaError::Malformed("position out of range"))?;
            }
            r.fields(mask, &mut q)?;
            self.marks[i as usize] = 2;
            updated.push(q);
        }
        let entries = r.count(MAX_VIEW.max(n) * 2)?;
        let mut kept = base
            .entities
            .iter()
            .zip(&self.marks)
            .filter(|(_, &m)| m != 1)
            .scan(0usize, |u, ((id, q), &m)| {
                Some(if m == 2 {
                    *u += 1;
                    (*id, updated[*u - 1])
                } else {
                    (*id, *q)
                })
            })
            .peekable();
        let mut previous = None;
        for _ in 0..entries {
            let id = next_after(previous, r.varint()?)?;
            previous = Some(id);
            let mask = r.mask()?;
            let mut q = QState { npc: mask & NPC != 0, ..QState::default() };
            if mask & POS != 0 {
                q.x = r.u32()?;
                q.y = r.u32()?;
                q.t = anchor(s.tick, r.varint()?)?;
            } else {
                q.t = s.tick;
            }
            r.fields(mask, &mut q)?;
            while let Some(k) = kept.next_if(|k| k.0 < id) {
                out.entities.push(k);
            }
            if kept.peek().is_some_and(|k| k.0 == id) {
                return Err(DeltaError::Malformed("an entering entity is already in the view"));
            }
            out.entities.push((id, q));
        }
        out.entities.extend(kept);
        if r.at != s.entities.len() {
            return Err(DeltaError::Malformed("trailing bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qstate() -> impl Strategy<Value = QState> {
        (any::<bool>(), any::<u32>(), any::<u32>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>())
            .prop_flat_map(|(npc, x, y, vx, vy, hp, max_hp)| {
                (any::<u32>(), 0..4u32, 0..=5u64).prop_map(move |(level, flags, t)| QState {
                    npc,
                    t,
                    x,
                    y,
                    vx,
                    vy,
                    hp,
                    max_hp,
                    level,
                    flags,
                })
            })
    }

    /// Writes `entities` the way the server does, for tests.
    fn encode(removed: &[usize], updates: &[(usize, Vec<u8>)], entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let gaps = |idx: &mut dyn Iterator<Item = u64>, out: &mut Vec<u8>, bodies: &mut dyn Iterator<Item = &[u8]>| {
            let mut previous: Option<u64> = None;
            for i in idx {
                put_varint(out, previous.map_or(i, |p| i - p - 1));
                previous = Some(i);
                if let Some(b) = bodies.next() {
                    out.extend_from_slice(b);
                }
            }
        };
        put_varint(&mut out, removed.len() as u64);
        gaps(&mut removed.iter().map(|&i| i as u64), &mut out, &mut std::iter::empty());
        put_varint(&mut out, updates.len() as u64);
        gaps(&mut updates.iter().map(|u| u.0 as u64), &mut out, &mut updates.iter().map(|u| &u.1[..]));
        put_varint(&mut out, entries.len() as u64);
        gaps(&mut entries.iter().map(|e| e.0), &mut out, &mut entries.iter().map(|e| &e.1[..]));
        out
    }

    fn snap(tick: u64, baseline_tick: u64, entities: Vec<u8>) -> DeltaSnapshot {
        DeltaSnapshot { tick, baseline_tick, entities, ..Default::default() }
    }

    proptest! {
        #[test]
        fn entry_and_update_bodies_round_trip(a in qstate(), b in qstate()) {
            let mut entry = Vec::new();
            let len = encode_entry(&b, 5, &mut entry);
            prop_assert_eq!(len, entry.len());
            prop_assert!(len <= MAX_BODY);
            let mut dec = DeltaDecoder::new();
            let view = dec.decode_view(&snap(5, 0, encode(&[], &[], &[(77, entry)]))).unwrap().clone();
            prop_assert_eq!(&view.entities, &vec![(77, b)]);
            let mut update = Vec::new();
            let b2 = QState { npc: b.npc, ..a };
            let len = encode_update(&b, &b2, 6, &mut update);
            prop_assert_eq!(len == 0, b == b2);
            prop_assert!(len <= MAX_BODY);
            let updates = if len == 0 { vec![] } else { vec![(0, update)] };
            let view = dec.decode_view(&snap(6, 5, encode(&[], &updates, &[]))).unwrap();
            prop_assert_eq!(&view.entities, &vec![(77, b2)]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_change_the_views(bytes in proptest::collection::vec(any::<u8>(), 0..300), base in 0..3u64) {
            let mut dec = DeltaDecoder::new();
            let mut entries = Vec::new();
            for id in [3u64, 9, 40] {
                let mut body = Vec::new();
                encode_entry(&QState { x: id as u32, t: 2, ..Default::default() }, 2, &mut body);
                entries.push((id, body));
            }
            dec.decode_view(&snap(2, 0, encode(&[], &[], &entries))).unwrap();
            let before = dec.view(2).cloned();
            if dec.decode_view(&snap(3, base, bytes)).is_err() {
                prop_assert_eq!(dec.ack(), 2);
                prop_assert_eq!(dec.view(2).cloned(), before);
            }
        }
    }

    #[test]
    fn removals_updates_and_entries_apply_in_id_order() {
        let q = |x| QState { x, t: 1, hp: 10, max_hp: 10, level: 1, ..Default::default() };
        let mut dec = DeltaDecoder::new();
        let entries: Vec<_> = [(10u64, 1), (20, 2), (30, 3), (40, 4)]
            .iter()
            .map(|&(id, x)| {
                let mut b = Vec::new();
                encode_entry(&q(x), 1, &mut b);
                (id, b)
            })
            .collect();
        dec.decode_view(&snap(1, 0, encode(&[], &[], &entries))).unwrap();
        // Remove 20, move 30, add 5 and 35.
        let mut moved = Vec::new();
        encode_update(&q(3), &QState { t: 2, ..q(300) }, 2, &mut moved);
        let mut e5 = Vec::new();
        encode_entry(&q(5), 2, &mut e5);
        let mut e35 = Vec::new();
        encode_entry(&QState { npc: true, ..q(35) }, 2, &mut e35);
        let view = dec.decode_view(&snap(2, 1, encode(&[1], &[(2, moved)], &[(5, e5), (35, e35)]))).unwrap();
        let ids: Vec<u64> = view.entities.iter().map(|e| e.0).collect();
        assert_eq!(ids, [5, 10, 30, 35, 40]);
        assert_eq!((view.entities[2].1.x, view.entities[2].1.t), (300, 2));
        assert_eq!(view.entities[0].1.t, 1, "an entry keeps its anchor");
        assert!(view.entities[3].1.npc);
        assert_eq!(dec.ack(), 2);
        // Older than the newest: stale, and the views stay.
        assert_eq!(dec.decode_view(&snap(2, 1, vec![0, 0, 0])).unwrap_err(), DeltaError::Stale { tick: 2, newest: 2 });
        // Against a view never decoded: refused.
        assert_eq!(
            dec.decode_view(&snap(9, 7, vec![0, 0, 0])).unwrap_err(),
            DeltaError::MissingBaseline { baseline: 7 }
        );
        // Against tick 1 again (its acknowledgement was the newest the server had heard): fine.
        assert_eq!(dec.decode_view(&snap(3, 1, vec![0, 0, 0])).unwrap().entities.len(), 4);
        // A baseline a whole window back shares a slot with a newer view: missing, not misread.
        assert!(dec.decode_view(&snap(1 + WINDOW, 1, vec![0, 0, 0])).is_ok());
        assert_eq!(
            dec.decode_view(&snap(2 + 2 * WINDOW, 2 + WINDOW, vec![0, 0, 0])).unwrap_err(),
            DeltaError::MissingBaseline { baseline: 2 + WINDOW }
        );
    }

    #[test]
    fn an_entry_already_in_the_view_or_a_double_mark_is_malformed() {
        let mut dec = DeltaDecoder::new();
        let mut e = Vec::new();
        encode_entry(&QState { x: 1, t: 1, ..Default::default() }, 1, &mut e);
        dec.decode_view(&snap(1, 0, encode(&[], &[], &[(7, e.clone())]))).unwrap();
        assert!(matches!(
            dec.decode_view(&snap(2, 1, encode(&[], &[], &[(7, e.clone())]))),
            Err(DeltaError::Malformed(_))
        ));
        let mut u = Vec::new();
        encode_update(&QState::default(), &QState { hp: 3, ..Default::default() }, 2, &mut u);
        assert!(matches!(dec.decode_view(&snap(2, 1, encode(&[0], &[(0, u)], &[]))), Err(DeltaError::Malformed(_))));
        // Removed then entered again in one snapshot: legal (a re-entry with a full state).
        assert_eq!(dec.decode_view(&snap(2, 1, encode(&[0], &[], &[(7, e)]))).unwrap().entities.len(), 1);
    }

    #[test]
    fn trajectories_extrapolate_and_quantize_at_the_stated_precision() {
        let q = QState {
            npc: true,
            t: 10,
            x: quantize_pos(123.456),
            y: quantize_pos(0.004),
            vx: quantize_vel(-3.3),
            vy: quantize_vel(2.0),
            hp: 5,
            max_hp: 9,
            level: 2,
            flags: 3,
        };
        let now = q.to_entity(1, 10, 20);
        let (p, v) = (now.position.unwrap(), now.velocity.unwrap());
        assert!((p.x - 123.456).abs() <= 0.5 / POS_SCALE && (p.y - 0.004).abs() <= 0.5 / POS_SCALE);
        assert!((v.x + 3.3).abs() <= 0.5 / VEL_SCALE && v.y == 2.0);
        assert_eq!((now.kind, now.hp, now.max_hp, now.level, now.flags), (EntityKind::Npc as i32, 5, 9, 2, 3));
        // One second (20 ticks) later: two metres on along y.
        let later = q.to_entity(1, 30, 20).position.unwrap();
        assert!((later.y - 2.004).abs() < 0.02 && (later.x - (123.456 - 3.3)).abs() < 0.02, "{later:?}");
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn the_quantizers_round_exactly_as_f32_round_does() {
        let mut edges = vec![0.0f32, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        edges.extend([0.5f32, 1.5, 8_388_607.5, 8_388_608.0, 4.0e9, -4.0e9, 3.0e10].map(|v| v / POS_SCALE));
        edges.extend([0.5f32, 1.5].map(|v| f32::from_bits(v.to_bits() - 1) / POS_SCALE));
        let mut rng = crate::sim::rng::Pcg32::new(5, 5);
        edges.extend((0..200_000).map(|_| rng.range(-70_000.0, 70_000.0)));
        for v in edges {
            assert_eq!(quantize_pos(v), (v * POS_SCALE).round() as u32, "{v}");
            assert_eq!(quantize_vel(v), (v * VEL_SCALE).round() as i32, "{v}");
        }
    }
}
