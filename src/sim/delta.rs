//! Protocol v2 on the simulation thread: each client's snapshot is encoded against the view it acknowledged,
//! without encoding any entity once per observer (the wire format is [`crate::proto::delta`]).
//!
//! What makes the encodings shareable: an entity's published state at a tick is the same for every observer, and
//! a client's view holds, for each entity in it, exactly that entity's published state at the view's tick (an
//! entity is in a view only if its record fitted; an unchanged entity's state equals the state it had). So an
//! update depends only on (entity, baseline tick), an entry only on the entity. Per tick the server:
//!
//! 1. quantizes every entity some v2 view shows, once, and re-anchors its published trajectory only if the old
//!    one strays more than [`TOLERANCE`] from where it is (or another field changed): entities walking straight
//!    lines or standing do not change at all. A change is logged with its tick ([`Published`]): the state at a
//!    baseline is the newest logged change at or before it;
//! 2. per client, merges its visible set (nearest first, within the datagram budget) with its baseline view by a
//!    per-slot mark: an entity unchanged since the baseline costs a comparison of two ticks; the bodies of the few
//!    that changed or enter are encoded on first use and memoised for the tick, so clients sharing a baseline
//!    (clients at similar round-trip times) share them.
//!
//! Per-client state ([`DeltaLink`]): the newest acknowledged tick and the entity sets sent in the last
//! [`KEPT`] ticks.

use prost::Message as _;

use super::world::EntityId;
use crate::proto::delta::{self as wire, QState, MAX_VIEW_LIMIT, TOLERANCE, WINDOW};

/// Views kept per client as possible baselines: acknowledgements up to this many ticks old (800 ms at 20 ticks
/// per second: a round trip up to about 700 ms) are used, older ones get a snapshot against an empty view. Fewer
/// than the [`WINDOW`] a client keeps: each is a client's whole view, written each tick into the buffer of the
/// view `KEPT` ticks older, and 2,000 clients' views should stay in the cache (16 of 84 ids: 21 MB).
pub const KEPT: u64 = 16;
const _: () = assert!(KEPT <= WINDOW);
use crate::proto::{data_message, DataMessage, DeltaSnapshot};

/// Baselines whose update bodies are memoised per entity and tick.
const MEMO: usize = 4;

/// The slot of an entity id (`crate::sim::world::World::id`: generation << 32 | slot).
fn slot_of(id: EntityId) -> usize {
    (id & 0xffff_ffff) as usize
}

/// Marks "no body" (the entity's state at that baseline is not known).
const NONE: u32 = u32::MAX;

/// What was sent to one client at one tick: its view then, by ascending id.
#[derive(Debug, Default, Clone)]
struct Sent {
    tick: u64,
    /// By ascending id (an id's low 32 bits are its slot).
    ids: Vec<EntityId>,
}

/// One v2 client's side of the protocol on the server.
#[derive(Debug, Clone)]
pub struct DeltaLink {
    /// The newest tick it acknowledged that was sent to it (0: none).
    ack: u64,
    sent: Vec<Sent>,
}

impl Default for DeltaLink {
    fn default() -> Self {
        Self { ack: 0, sent: vec![Sent::default(); KEPT as usize] }
    }
}

impl DeltaLink {
    /// Takes `Input.snapshot_ack`: only a newer tick that was sent to this client counts (a client acknowledging
    /// what it never got only spoils its own view: its next snapshot does not decode, and it acknowledges again).
    pub fn acknowledge(&mut self, tick: u64) {
        if tick > self.ack && self.sent[(tick % KEPT) as usize].tick == tick {
            self.ack = tick;
        }
    }

    /// The baseline for a snapshot at `now`: the acknowledged view, unless it is too old.
    fn baseline(&self, now: u64) -> Option<&Sent> {
        if self.ack == 0 || now.saturating_sub(self.ack) >= KEPT {
            return None;
        }
        Some(&self.sent[(self.ack % KEPT) as usize]).filter(|s| s.tick == self.ack)
    }

    /// The ids sent at `tick`, if still held (tests compare them with what the client decoded).
    pub fn sent_ids(&self, tick: u64) -> Option<&[EntityId]> {
        let s = &self.sent[(tick % KEPT) as usize];
        (s.tick == tick).then_some(&s.ids[..])
    }
}

/// Changes of one slot's published state kept besides the newest: enough for any baseline in the window unless
/// an entity changes more than this often within it (then an old baseline sends it whole).
const OLDER: usize = 3;

/// What every view's every entity needs of its slot, packed in 24 bytes (read for each entity of each view;
/// the whole array stays in the L2 cache where [`Published`] would not).
#[derive(Clone, Copy, Default)]
struct Hot {
    /// The entity (0: none yet; slots are reused).
    id: EntityId,
    /// Its published state has been the same since this tick.
    since: u64,
    /// Set while one client's snapshot is assembled: `(client stamp, index in its baseline)`.
    stamp: u32,
    index: u32,
}

/// One slot's published state, the tick's memoised bodies.
#[derive(Clone, Copy, Default)]
struct Published {
    q: QState,
    /// This tick's memo: the tick it is for, and per baseline (clients acknowledge the last few ticks) the update
    /// body in the arena.
    memo_tick: u64,
    memo: [(u64, u32, u32); MEMO],
    /// The entry body in the arena, for `entry_tick`.
    entry_tick: u64,
    entry: (u32, u32),
}

/// One v2 client between the passes.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Its baseline tick (0: none).
    pub base: u64,
}

/// The published states and this tick's encodings, reused from tick to tick.
#[derive(Default)]
pub struct Encoder {
    /// Per slot: the entity, since when its state is unchanged, the client marks ...
    hot: Vec<Hot>,
    /// ... the newest published state ...
    published: Vec<Published>,
    /// ... and the changes before it, newest first (cold: read only for baselines older than the newest).
    older: Vec<[(u64, QState); OLDER]>,
    /// This tick's bodies, back to back.
    arena: Vec<u8>,
    stamp: u32,
    /// Scratch: per baseline index, its body (`NONE`: removed); the entities entering; the entities bytes.
    hit: Vec<(u32, u32)>,
    entering: Vec<(EntityId, u32)>,
    bytes: Vec<u8>,
    next: Sent,
}

/// What [`Encoder::assemble`] needs of the world.
pub struct Frame {
    /// The tick.
    pub tick: u64,
    /// The client's baseline ([`Encoder::plan`]).
    pub client: Client,
}

impl Encoder {
    /// The state the server published for `id` (in `slot`) at `tick`, if still known.
    pub fn published_at(&self, slot: usize, tick: u64, id: EntityId) -> Option<QState> {
        let h = self.hot.get(slot)?;
        if h.id != id || h.id == 0 {
            return None;
        }
        if h.since <= tick {
            return Some(self.published[slot].q);
        }
        self.older[slot].iter().find(|(since, _)| *since != 0 && *since <= tick).map(|(_, q)| *q)
    }

    /// Starts a tick: `slots` is the world's slot count.
    pub fn begin(&mut self, slots: usize) {
        self.arena.clear();
        self.hot.resize(slots, Hot::default());
        self.published.resize(slots, Published::default());
        self.older.resize(slots, [(0, QState::default()); OLDER]);
    }

    /// Pass 1, per client: its baseline.
    pub fn plan(&mut self, link: &DeltaLink, now: u64) -> Client {
        Client { base: link.baseline(now).map_or(0, |b| b.tick) }
    }

    /// Pass 2: the published state of every slot some v2 client sees (`seen`: one bit per slot; `state` gives
    /// its id and quantized state anchored at `tick`), re-anchored only when it strays.
    pub fn encode(&mut self, tick: u64, tick_rate: u32, seen: &[u64], state: impl Fn(usize) -> (EntityId, QState)) {
        for (word_at, &word) in seen.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let s = word_at * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (id, now) = state(s);
                let h = &mut self.hot[s];
                let p = &mut self.published[s];
                if h.id != id {
                    (h.id, h.since) = (id, tick);
                    *p = Published { q: now, ..Published::default() };
                    self.older[s] = [(0, QState::default()); OLDER];
                    continue;
                }
                let (px, py) = p.q.position_at(tick, tick_rate);
                let near = |p: f64, q: u32| (p - f64::from(q)).abs() <= f64::from(TOLERANCE);
                let q = if near(px, now.x) && near(py, now.y) {
                    QState { t: p.q.t, x: p.q.x, y: p.q.y, vx: p.q.vx, vy: p.q.vy, ..now }
                } else {
                    now
                };
                if q != p.q {
                    let older = &mut self.older[s];
                    older.copy_within(0..OLDER - 1, 1);
                    older[0] = (h.since, p.q);
                    h.since = tick;
                    p.q = q;
                }
            }
        }
    }

    /// The entry body of `slot` (encoded on first use this tick).
    fn entry(&mut self, slot: usize, tick: u64) -> (u32, u32) {
        let p = &mut self.published[slot];
        if p.entry_tick != tick {
            let start = self.arena.len() as u32;
            p.entry = (start, wire::encode_entry(&p.q, tick, &mut self.arena) as u32);
            p.entry_tick = tick;
        }
        p.entry
    }

    /// The update body of `slot` against `base` (`len` 0: unchanged; `NONE`: its state then is not known),
    /// memoised for the tick per baseline (the first [`MEMO`] baselines asked).
    fn update(&mut self, slot: usize, id: EntityId, base: u64, tick: u64) -> (u32, u32) {
        let p = &mut self.published[slot];
        if p.memo_tick != tick {
            p.memo_tick = tick;
            p.memo = [(0, 0, 0); MEMO];
        }
        if let Some(&(_, start, len)) = p.memo.iter().find(|m| m.0 == base) {
            return (start, len);
        }
        let body = match self.published_at(slot, base, id) {
            Some(old) => {
                let start = self.arena.len() as u32;
                let q = self.published[slot].q;
                (start, wire::encode_update(&old, &q, tick, &mut self.arena) as u32)
            }
            None => (NONE, 0),
        };
        if let Some(free) = self.published[slot].memo.iter_mut().find(|m| m.0 == 0) {
            *free = (base, body.0, body.1);
        }
        body
    }

    /// Pass 3, per client: its `DataMessage { delta_snapshot }` into `out`, within `budget` bytes, from its
    /// visible slots (nearest first; at most [`MAX_VIEW_LIMIT`]); records what was sent in `link`. Returns how many
    /// entities the view holds.
    pub fn assemble(
        &mut self,
        link: &mut DeltaLink,
        frame: &Frame,
        header: DeltaSnapshot,
        visible: &[u32],
        budget: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.hot.iter_mut().for_each(|h| h.stamp = 0);
            self.stamp = 1;
        }
        let stamp = self.stamp;
        let (tick, client) = (frame.tick, frame.client);
        let empty = Sent::default();
        let base = if client.base == 0 { &empty } else { &link.sent[(client.base % KEPT) as usize] };
        debug_assert!(client.base == 0 || base.tick == client.base);
        // Marked only where the slot still holds that entity (sequential reads of the baseline here, none in the
        // loop below).
        for (i, &id) in base.ids.iter().enumerate() {
            let h = &mut self.hot[slot_of(id)];
            if h.id == id {
                (h.stamp, h.index) = (stamp, i as u32);
            }
        }
        self.hit.clear();
        self.hit.resize(base.ids.len(), (NONE, 0));
        self.entering.clear();
        // Upper bounds: the envelope (key, two length bytes), the header, the entities field (key, two length
        // bytes), three one-byte counts (a view is under 128), and one byte per baseline entity as if all were
        // removed (index gaps are under 128).
        let fixed = 3 + header.encoded_len() + 3 + 3;
        let mut used = fixed + base.ids.len();
        let mut shown = 0;
        for &s in visible.iter().take(MAX_VIEW_LIMIT) {
            let slot = s as usize;
            // Published this tick for every slot a view shows: the slot's entity now.
            let Hot { id, since, stamp: m_stamp, index: i } = self.hot[slot];
            if m_stamp == stamp {
                let (start, len) = if since <= client.base { (0, 0) } else { self.update(slot, id, client.base, tick) };
                if start != NONE {
                    // Kept: its removal byte is saved, its update (if it changed) costs a gap byte and the body.
                    let cost = if len == 0 { 0 } else { 1 + len as usize };
                    if used + cost <= budget + 1 {
                        used = used + cost - 1;
                        self.hit[i as usize] = (start, len);
                        shown += 1;
                    }
                    continue;
                }
                // Its state at the baseline is no longer known (it changed more than OLDER times since):
                // removed, and entered again whole.
            }
            let (_, len) = self.entry(slot, tick);
            let cost = wire::varint_len(id) + len as usize;
            if used + cost <= budget {
                used += cost;
                self.entering.push((id, s));
                shown += 1;
            }
        }
        self.entering.sort_unstable();
        // The entities bytes.
        let bytes = &mut self.bytes;
        bytes.clear();
        let removed = self.hit.iter().filter(|h| h.0 == NONE).count();
        wire::put_varint(bytes, removed as u64);
        let mut previous: Option<usize> = None;
        for (i, h) in self.hit.iter().enumerate() {
            if h.0 == NONE {
                wire::put_varint(bytes, previous.map_or(i, |p| i - p - 1) as u64);
                previous = Some(i);
            }
        }
        let updates = self.hit.iter().filter(|h| h.0 != NONE && h.1 != 0).count();
        wire::put_varint(bytes, updates as u64);
        let mut previous: Option<usize> = None;
        for (i, &(start, len)) in self.hit.iter().enumerate() {
            if start != NONE && len != 0 {
                wire::put_varint(bytes, previous.map_or(i, |p| i - p - 1) as u64);
                previous = Some(i);
                bytes.extend_from_slice(&self.arena[start as usize..(start + len) as usize]);
            }
        }
        wire::put_varint(bytes, self.entering.len() as u64);
        let mut previous: Option<EntityId> = None;
        for &(id, s) in &self.entering {
            wire::put_varint(bytes, previous.map_or(id, |p| id - p - 1));
            previous = Some(id);
            let (start, len) = self.published[s as usize].entry;
            bytes.extend_from_slice(&self.arena[start as usize..(start + len) as usize]);
        }
        // What the client's view is now: the kept baseline entities and the entering ones, by ascending id.
        let next = &mut self.next;
        next.tick = tick;
        next.ids.clear();
        let mut entering = self.entering.iter().peekable();
        for (&h, &id) in self.hit.iter().zip(&base.ids) {
            if h.0 == NONE {
                continue;
            }
            while let Some(&&(eid, _)) = entering.peek().filter(|e| e.0 < id) {
                next.ids.push(eid);
                entering.next();
            }
            next.ids.push(id);
        }
        next.ids.extend(entering.map(|e| e.0));
        let message = DataMessage {
            body: Some(data_message::Body::DeltaSnapshot(DeltaSnapshot {
                entities: std::mem::take(&mut self.bytes),
                ..header
            })),
        };
        out.clear();
        out.reserve(message.encoded_len());
        message.encode(out).expect("a Vec grows");
        debug_assert!(out.len() <= budget, "{} > {budget}", out.len());
        if let Some(data_message::Body::DeltaSnapshot(d)) = message.body {
            self.bytes = d.entities;
        }
        std::mem::swap(&mut link.sent[(tick % KEPT) as usize], &mut self.next);
        shown
    }
}
