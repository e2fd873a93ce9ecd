//! Protocol v2 on the simulation thread: each client's snapshot is encoded against the view it acknowledged,
//! without encoding any entity once per observer (the wire format is [`crate::proto::delta`]).
//!
//! What makes the encodings shareable: an entity's quantized state at a tick is the same for every observer, and a
//! client's view holds, for each entity in it, exactly that entity's state at the view's tick (an entity is in a
//! view only if its record fitted; an unchanged entity's state equals the state it had). So an update depends only
//! on (entity, baseline tick), an entry only on the entity. Per tick the server:
//!
//! 1. quantizes every entity some v2 view shows, once, records it in [`History`] (the last [`WINDOW`] ticks of
//!    each slot) and encodes its entry body once;
//! 2. for each of the few distinct baseline ticks the clients acknowledged (clients at similar round-trip times
//!    share them; at most [`SHARED_BASELINES`] are shared, others are encoded per client), encodes each entity's
//!    update body once;
//! 3. per client, merges its visible set (nearest first, within the datagram budget) with its baseline view by a
//!    per-slot mark, and writes index gaps and copies of the shared bodies.
//!
//! Per-client state ([`DeltaLink`]): the newest acknowledged tick and the entity sets sent in the last
//! [`WINDOW`] ticks.

use prost::Message as _;

use super::world::EntityId;
use crate::proto::delta::{self as wire, QState, MAX_VIEW, WINDOW};
use crate::proto::{data_message, DataMessage, DeltaSnapshot};

/// Baselines encoded once for every client that acknowledged them; a client whose baseline is not among them (a
/// rare round-trip time) has its updates encoded for it alone.
pub const SHARED_BASELINES: usize = 4;

/// Marks "no body" (no history for the entity at that baseline).
const NONE: u32 = u32::MAX;
/// Marks a body encoded for one client (in `own`, not the shared arena).
const OWN: u32 = 1 << 31;

/// One slot's recent quantized states, for baselines.
#[derive(Clone, Copy, Default)]
struct Record {
    /// The tick (0: empty).
    tick: u64,
    /// The entity id held by the slot then (slots are reused).
    id: EntityId,
    q: QState,
}

/// Every shown entity's quantized state over the last [`WINDOW`] ticks, by slot.
#[derive(Default)]
pub struct History {
    records: Vec<[Record; WINDOW as usize]>,
}

impl History {
    fn record(&mut self, slot: usize, tick: u64, id: EntityId, q: QState) {
        if slot >= self.records.len() {
            self.records.resize(slot + 1, [Record::default(); WINDOW as usize]);
        }
        self.records[slot][(tick % WINDOW) as usize] = Record { tick, id, q };
    }

    fn at(&self, slot: usize, tick: u64, id: EntityId) -> Option<&QState> {
        let r = self.records.get(slot)?.get((tick % WINDOW) as usize)?;
        (r.tick == tick && r.id == id).then_some(&r.q)
    }
}

/// What was sent to one client at one tick: its view then, by ascending id.
#[derive(Debug, Default, Clone)]
struct Sent {
    tick: u64,
    ids: Vec<EntityId>,
    slots: Vec<u32>,
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
        Self { ack: 0, sent: vec![Sent::default(); WINDOW as usize] }
    }
}

impl DeltaLink {
    /// Takes `Input.snapshot_ack`: only a newer tick that was sent to this client counts (a client acknowledging
    /// what it never got only spoils its own view: its next snapshot does not decode, and it acknowledges again).
    pub fn acknowledge(&mut self, tick: u64) {
        if tick > self.ack && self.sent[(tick % WINDOW) as usize].tick == tick {
            self.ack = tick;
        }
    }

    /// The baseline for a snapshot at `now`: the acknowledged view, unless it is too old.
    fn baseline(&self, now: u64) -> Option<&Sent> {
        if self.ack == 0 || now.saturating_sub(self.ack) >= WINDOW {
            return None;
        }
        Some(&self.sent[(self.ack % WINDOW) as usize]).filter(|s| s.tick == self.ack)
    }

    /// The ids sent at `tick`, if still held (tests compare them with what the client decoded).
    pub fn sent_ids(&self, tick: u64) -> Option<&[EntityId]> {
        let s = &self.sent[(tick % WINDOW) as usize];
        (s.tick == tick).then_some(&s.ids[..])
    }
}

/// One v2 client between the passes.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Its baseline tick (0: none).
    pub base: u64,
    /// Index into the shared baselines, if its baseline is one.
    pub shared: Option<usize>,
}

/// The tick's encodings, reused from tick to tick.
#[derive(Default)]
pub struct Encoder {
    history: History,
    /// Entry and update bodies, back to back.
    arena: Vec<u8>,
    /// Per slot: this tick's quantized state, its entry body `(start, len)`.
    current: Vec<QState>,
    entry: Vec<(u32, u32)>,
    /// The distinct baseline ticks encoded once this tick, and per baseline and slot the update body
    /// (`len` 0: unchanged; `start` [`NONE`]: no record at the baseline).
    bases: Vec<u64>,
    update: Vec<Vec<(u32, u32)>>,
    /// One bit per slot per shared baseline: some client with that baseline sees the slot.
    need: Vec<Vec<u64>>,
    /// Per slot: `(client stamp, baseline index)` while one client's snapshot is assembled.
    mark: Vec<(u32, u32)>,
    stamp: u32,
    /// Scratch: per baseline index, its body or NONE (removed); the entities entering; the entities bytes; a
    /// body encoded for one client.
    hit: Vec<(u32, u32)>,
    entering: Vec<(EntityId, u32)>,
    bytes: Vec<u8>,
    own: Vec<u8>,
    next: Sent,
}

/// What [`Encoder::assemble`] needs of the world.
pub struct Frame<'a> {
    /// The tick.
    pub tick: u64,
    /// Live entity id of a slot.
    pub id: &'a dyn Fn(usize) -> EntityId,
}

impl Encoder {
    /// Starts a tick: `slots` is the world's slot count.
    pub fn begin(&mut self, slots: usize) {
        self.arena.clear();
        self.bases.clear();
        self.current.resize(slots, QState::default());
        self.entry.resize(slots, (0, 0));
        self.mark.resize(slots, (0, 0));
        for n in &mut self.need {
            n.clear();
            n.resize(slots.div_ceil(64), 0);
        }
    }

    /// Pass 1, per client: picks its baseline and, when shared, marks the slots it sees.
    pub fn plan(&mut self, link: &DeltaLink, now: u64, visible: impl Iterator<Item = u32>) -> Client {
        let Some(base) = link.baseline(now) else { return Client { base: 0, shared: None } };
        let shared = match self.bases.iter().position(|&b| b == base.tick) {
            Some(b) => Some(b),
            None if self.bases.len() < SHARED_BASELINES => {
                self.bases.push(base.tick);
                if self.need.len() < self.bases.len() {
                    let words = self.mark.len().div_ceil(64);
                    self.need.push(vec![0; words]);
                    self.update.push(Vec::new());
                }
                Some(self.bases.len() - 1)
            }
            None => None,
        };
        if let Some(b) = shared {
            let need = &mut self.need[b];
            for s in visible {
                need[s as usize / 64] |= 1 << (s % 64);
            }
        }
        Client { base: base.tick, shared }
    }

    /// Pass 2: the state and entry body of every slot some v2 client sees (`seen`: one bit per slot), recorded
    /// for later baselines; then each shared baseline's update bodies.
    pub fn encode(&mut self, tick: u64, seen: &[u64], state: impl Fn(usize) -> (EntityId, QState)) {
        for (word_at, &word) in seen.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let s = word_at * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (id, q) = state(s);
                self.history.record(s, tick, id, q);
                self.current[s] = q;
                let start = self.arena.len() as u32;
                let len = wire::encode_entry(&q, &mut self.arena) as u32;
                self.entry[s] = (start, len);
            }
        }
        for (b, &base) in self.bases.iter().enumerate() {
            let update = &mut self.update[b];
            update.resize(self.current.len(), (NONE, 0));
            for (word_at, &word) in self.need[b].iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let s = word_at * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let id = self.history.records[s][(tick % WINDOW) as usize].id;
                    update[s] = match self.history.at(s, base, id) {
                        Some(old) => {
                            let start = self.arena.len() as u32;
                            (start, wire::encode_update(old, &self.current[s], &mut self.arena) as u32)
                        }
                        None => (NONE, 0),
                    };
                }
            }
        }
    }

    /// Pass 3, per client: its `DataMessage { delta_snapshot }` into `out`, within `budget` bytes, from its
    /// visible slots (nearest first; at most [`MAX_VIEW`]); records what was sent in `link`. Returns the ids sent
    /// (ascending), for the AOI's hysteresis.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        &mut self,
        link: &mut DeltaLink,
        client: &Client,
        frame: &Frame<'_>,
        header: DeltaSnapshot,
        visible: &[u32],
        budget: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = (0, 0));
            self.stamp = 1;
        }
        let stamp = self.stamp;
        let empty = Sent::default();
        let base = if client.base == 0 { &empty } else { &link.sent[(client.base % WINDOW) as usize] };
        debug_assert!(client.base == 0 || base.tick == client.base);
        for (i, &s) in base.slots.iter().enumerate() {
            self.mark[s as usize] = (stamp, i as u32);
        }
        self.hit.clear();
        self.hit.resize(base.ids.len(), (NONE, 0));
        self.entering.clear();
        self.own.clear();
        // Upper bounds: the envelope (key, two length bytes), the header, the entities field (key, two length
        // bytes), three one-byte counts (a view is under 128), and one byte per baseline entity as if all were
        // removed (index gaps are under 128).
        let fixed = 3 + header.encoded_len() + 3 + 3;
        let mut used = fixed + base.ids.len();
        let mut shown = 0;
        for &s in visible.iter().take(MAX_VIEW) {
            let slot = s as usize;
            let id = (frame.id)(slot);
            let (m_stamp, i) = self.mark[slot];
            let in_base = m_stamp == stamp && base.ids[i as usize] == id;
            if in_base {
                let (start, len) = match client.shared {
                    Some(b) => self.update[b][slot],
                    None => match self.history.at(slot, client.base, id) {
                        Some(old) => {
                            let start = self.own.len() as u32 | OWN;
                            (start, wire::encode_update(old, &self.current[slot], &mut self.own) as u32)
                        }
                        None => (NONE, 0),
                    },
                };
                if start != NONE {
                    // Kept: its removal byte is saved, its update (if it changed) costs a gap byte and the body.
                    let cost = if len == 0 { 0 } else { 1 + len as usize };
                    if used + cost - 1 <= budget {
                        used = used + cost - 1;
                        self.hit[i as usize] = (start, len);
                        shown += 1;
                    }
                    continue;
                }
                // No record at the baseline (cannot happen for an entity the baseline holds, but never trust
                // it): removed and entered again with its whole state.
            }
            let (_, len) = self.entry[slot];
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
        for (i, &h) in self.hit.iter().enumerate() {
            if h.0 != NONE && h.1 != 0 {
                wire::put_varint(bytes, previous.map_or(i, |p| i - p - 1) as u64);
                previous = Some(i);
                let start = (h.0 & !OWN) as usize;
                let from = if h.0 & OWN != 0 { &self.own } else { &self.arena };
                bytes.extend_from_slice(&from[start..start + h.1 as usize]);
            }
        }
        wire::put_varint(bytes, self.entering.len() as u64);
        let mut previous: Option<EntityId> = None;
        for &(id, s) in &self.entering {
            wire::put_varint(bytes, previous.map_or(id, |p| id - p - 1));
            previous = Some(id);
            let (start, len) = self.entry[s as usize];
            bytes.extend_from_slice(&self.arena[start as usize..(start + len) as usize]);
        }
        // What the client's view is now: the kept baseline entities and the entering ones, by ascending id.
        let next = &mut self.next;
        next.tick = frame.tick;
        next.ids.clear();
        next.slots.clear();
        let mut entering = self.entering.iter().peekable();
        for (i, &h) in self.hit.iter().enumerate() {
            if h.0 == NONE {
                continue;
            }
            let id = base.ids[i];
            while let Some(&&(eid, es)) = entering.peek().filter(|e| e.0 < id) {
                next.ids.push(eid);
                next.slots.push(es);
                entering.next();
            }
            next.ids.push(id);
            next.slots.push(base.slots[i]);
        }
        for &(eid, es) in entering {
            next.ids.push(eid);
            next.slots.push(es);
        }
        let message = DataMessage {
            body: Some(data_message::Body::DeltaSnapshot(DeltaSnapshot {
                entities: std::mem::take(&mut self.bytes),
                ..header
            })),
        };
        out.clear();
        message.encode(out).expect("a Vec grows");
        debug_assert!(out.len() <= budget, "{} > {budget}", out.len());
        if let Some(data_message::Body::DeltaSnapshot(d)) = message.body {
            self.bytes = d.entities;
        }
        let slot = (frame.tick % WINDOW) as usize;
        std::mem::swap(&mut link.sent[slot], &mut self.next);
        if link.ack != 0 && link.ack <= frame.tick.saturating_sub(WINDOW) {
            link.ack = 0;
        }
        shown
    }
}
