//! Protocol v2 on the simulation thread: each client's snapshot is encoded against the view it acknowledged,
//! without encoding any entity once per observer (the wire format is [`crate::proto::delta`]).
//!
//! What makes the encodings shareable: an entity's published state at a tick is the same for every observer, and
//! a client's view holds, for each entity in it, exactly that entity's published state at the view's tick (an
//! entity is in a view only if its record fitted; an unchanged entity's state equals the state it had). So an
//! update depends only on (entity, baseline tick), an entry only on the entity. Per tick the server:
//!
//! 1. quantizes every entity some v2 view wants that may have changed, once, and re-anchors its published
//!    trajectory only if the old one strays more than [`TOLERANCE`] from where it is (or another field changed):
//!    entities walking straight lines or standing do not change at all. "May have changed": the world touched it
//!    since the last tick (every write to what a state holds marks its slot, `World::touch`), or its trajectory
//!    is due a check (`due`: the drift of a quantized velocity and float rounding, bounded); the rest, most of
//!    them, are not looked at (a test checks every one skipped against the world). A replaced state goes to one
//!    log for all slots (`Encoder::log`): the state at a baseline is the newest change at or before it;
//! 2. per client, merges the view it wants with its baseline view, both by ascending id. The view it wants is the
//!    answer of an area-of-interest query made every `game.view_refresh_ms` (twice a second by default; at once
//!    when new or after a jump) and kept in between ([`DeltaLink::set_view`]); usually it is the very view the
//!    client acknowledged, and the merge is one branch-free pass over it: per entity one bit of the bitmap of
//!    slots changed since that baseline (one per baseline and tick, in L1: `Encoder::changed_after`), the few
//!    that changed visited after through their slot records ([`Hot`]). The bodies of
//!    the few that changed or enter are encoded on first use and memoised for the tick in a dense table
//!    ([`Memo`]), so clients sharing a baseline (clients at similar round-trip times) share them. A view that does
//!    not fit the datagram (a whole view entering at once) is cut nearest first ([`Encoder::assemble`]).
//!
//! Per-client state ([`DeltaLink`], one allocation): the newest acknowledged tick, the view it wants, and the
//! views sent in the last [`KEPT`] ticks (at most the [`VIEWS`] newest), each stored once however many ticks it was
//! sent for.
//!
//! Measured on the way (the tick benchmark, v1 and v2 taking turns tick by tick; BENCHMARKS.md): a fresh
//! nearest-84 query per client per tick was a third of the phase, the per-client pointer chases (player, link,
//! its vectors) and the slot records' cache misses most of the rest. What is left is per client and mostly
//! memory: the link's lines (laid out in the order they are read), the view queries, the message.

use prost::Message as _;

use super::world::{EntityId, Vec2};
use crate::proto::delta::{self as wire, QState, MAX_VIEW_LIMIT, TOLERANCE, WINDOW};

/// Ticks whose view is remembered per client: an acknowledgement up to this many ticks old (1.6 s at 20 ticks per
/// second) is a baseline if its view is still kept ([`VIEWS`]); older ones get a snapshot against an empty view.
/// The [`WINDOW`] a client keeps (the README promises it): a client whose acknowledgements are delayed by an
/// overloaded server or network keeps getting deltas, where whole views would add to the overload.
pub const KEPT: u64 = WINDOW;

/// Views kept per client: each is a client's whole view (up to 84 ids), and 2,000 clients' views should stay in the
/// cache (8 of 84 ids: 11 MB). A new view is made when the set of entities changes (a query that finds another
/// set, an entity that dies, a view cut to fit), at most once a tick and usually every [`crate::sim::game`] view
/// refresh period (10 ticks by default): 8 cover any acknowledgement delay unless the view changed more often
/// than every fourth tick within it. Measured (the tick benchmark): 16 views instead of 8 cost the snapshot phase
/// 2% (their 21 MB evicted the rest), 4 instead of 8 saved 2% more.
pub const VIEWS: u64 = 8;
const _: () = assert!(VIEWS <= KEPT);
use crate::proto::DeltaSnapshot;

/// A player that moved further than this (metres) since its view's last query gets a new one at once.
pub const JUMP: f32 = 8.0;

/// Baselines whose update bodies are memoised per entity and tick.
const MEMO: usize = 4;

/// The slot of an entity id (`crate::sim::world::World::id`: generation << 32 | slot).
fn slot_of(id: EntityId) -> usize {
    (id & 0xffff_ffff) as usize
}

/// Marks "no body" (the entity's state at that baseline is not known).
const NONE: u32 = u32::MAX;

/// A view's ids held in place (in the client's one allocation with the rest of its [`DeltaLink`]: read every tick,
/// one allocation fewer to miss in the cache).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Ids {
    len: u8,
    ids: [EntityId; MAX_VIEW_LIMIT],
}

impl Default for Ids {
    fn default() -> Self {
        Self { ids: [0; MAX_VIEW_LIMIT], len: 0 }
    }
}

impl Ids {
    fn as_slice(&self) -> &[EntityId] {
        &self.ids[..usize::from(self.len)]
    }

    /// Holds `ids` (at most [`MAX_VIEW_LIMIT`]; the rest is dropped).
    fn set(&mut self, ids: &[EntityId]) {
        let n = ids.len().min(MAX_VIEW_LIMIT);
        self.ids[..n].copy_from_slice(&ids[..n]);
        self.len = n as u8;
    }

    /// Keeps the ids `keep` says to; whether any was dropped.
    fn retain(&mut self, keep: impl Fn(EntityId) -> bool) -> bool {
        let mut n = 0;
        for k in 0..usize::from(self.len) {
            let id = self.ids[k];
            if keep(id) {
                self.ids[n] = id;
                n += 1;
            }
        }
        let dropped = n != usize::from(self.len);
        self.len = n as u8;
        dropped
    }
}

/// Acknowledgements waiting for their link ([`crate::sim::world::PlayerData::acks`]): the newest few, oldest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Acks {
    ticks: [u64; 4],
    len: u8,
}

impl Acks {
    /// Keeps `tick` (dropping the oldest kept when full: only the newest can matter).
    pub fn push(&mut self, tick: u64) {
        let len = usize::from(self.len);
        if len == self.ticks.len() {
            self.ticks.copy_within(1.., 0);
            self.ticks[len - 1] = tick;
        } else {
            self.ticks[len] = tick;
            self.len += 1;
        }
    }

    /// Gives them to `link` in order ([`DeltaLink::acknowledge`]) and forgets them.
    pub fn apply(&mut self, link: &mut DeltaLink) {
        for &tick in &self.ticks[..usize::from(self.len)] {
            link.acknowledge(tick);
        }
        self.len = 0;
    }
}

/// One v2 client's side of the protocol on the server. Laid out in the order a snapshot reads it (`repr(C)`):
/// what every snapshot reads first and together (the scalars, then the wanted ids) in as few cache lines as they
/// take, the per-tick entries after, the ring of views (read only when the view changed) last.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct DeltaLink {
    /// The newest tick it acknowledged that was sent to it (0: none).
    ack: u64,
    /// The newest view's version (0: none yet).
    version: u64,
    /// When and where that query was made (`None`: never).
    queried: Option<(u64, Vec2)>,
    /// How many entities that query found in range (the view holds at most `view_entities` of them).
    total: u32,
    /// Whether `want` is the newest view (nothing was queried anew, dropped or cut since it was sent).
    want_sent: bool,
    /// The entities its view should hold, by ascending id: the last area-of-interest query's answer (entities
    /// that died since are dropped as they are met).
    want: Ids,
    /// Per tick of the last [`KEPT`] (at `tick % KEPT`): `(tick, version of the view sent then)`.
    sent: [(u64, u64); KEPT as usize],
    /// The [`VIEWS`] newest views sent, by ascending id, each once however many ticks it was sent for: version `v`
    /// at `views[v % VIEWS]`.
    views: [Vec<EntityId>; VIEWS as usize],
}

impl Default for DeltaLink {
    fn default() -> Self {
        Self {
            ack: 0,
            sent: [(0, 0); KEPT as usize],
            // Each the size of a default view from the start: the first rounds of views would otherwise grow them
            // (measured in the tick benchmark: a tenth of the phase while the rings first filled, page faults
            // included).
            views: std::array::from_fn(|_| Vec::with_capacity(wire::MAX_VIEW)),
            version: 0,
            want: Ids::default(),
            want_sent: false,
            total: 0,
            queried: None,
        }
    }
}

impl DeltaLink {
    /// Takes `Input.snapshot_ack`: only a newer tick that was sent to this client counts (a client acknowledging
    /// what it never got only spoils its own view: its next snapshot does not decode, and it acknowledges again).
    pub fn acknowledge(&mut self, tick: u64) {
        if tick > self.ack && self.sent[(tick % KEPT) as usize].0 == tick {
            self.ack = tick;
        }
    }

    /// Whether its view needs an area-of-interest query before this tick's snapshot: it never had one, or the
    /// player jumped (a respawn, a teleport) more than [`JUMP`] metres since.
    pub fn query_urgent(&self, pos: Vec2) -> bool {
        self.queried.is_none_or(|(_, from)| from.dist2(pos) > JUMP * JUMP)
    }

    /// Whether its view is due its periodic query at `tick` (made after the snapshot, for the next ticks): every
    /// `period` ticks, on the ticks of its phase (`phase`, `0..period`). A phase that changes between ticks (the
    /// caller phases clients by their place in an order that moves) brings a query sooner or later than its old
    /// phase would, but never more than `period` ticks after the last.
    pub fn query_due(&self, tick: u64, period: u64, phase: u64) -> bool {
        self.queried.is_none_or(|(at, _)| tick.saturating_sub(at) >= period || (tick + phase) % period == 0)
    }

    /// Takes a query's answer: `ids` (ascending) of the `total` in range.
    pub fn set_view(&mut self, tick: u64, pos: Vec2, total: usize, ids: &[EntityId]) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        if self.want.as_slice() != ids {
            self.want.set(ids);
            self.want_sent = false;
        }
        self.total = total as u32;
        self.queried = Some((tick, pos));
    }

    /// The entities its view should hold, by ascending id (some may have died since the query).
    pub fn want(&self) -> &[EntityId] {
        self.want.as_slice()
    }

    /// How many entities the last query found in range.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Drops the wanted entities `alive` says are gone.
    pub fn retain_wanted(&mut self, alive: impl Fn(EntityId) -> bool) {
        self.want_sent &= !self.want.retain(alive);
    }

    /// Pass 1, per client: its baseline for a snapshot at `now`, the acknowledged view unless it is too old.
    pub fn plan(&self, now: u64) -> Client {
        let (tick, version) = self.sent[(self.ack % KEPT) as usize];
        if self.ack == 0 || now.saturating_sub(self.ack) >= KEPT || tick != self.ack || !self.holds(version) {
            return Client { base: 0, version: 0 };
        }
        Client { base: tick, version }
    }

    /// Whether the view of `version` (0: none) is still kept.
    fn holds(&self, version: u64) -> bool {
        version != 0 && self.version - version < VIEWS
    }

    /// Starts loading the cache lines a snapshot at `now` reads of this link first, without waiting for them: its
    /// header (with the first wanted ids), the entries its waiting `acks` check and the entry the snapshot writes;
    /// [`DeltaLink::prefetch_views`] follows once the header is in. Called a few clients ahead of their
    /// snapshots: the links of 2,000 clients do not stay in the cache from tick to tick, and a snapshot waiting for
    /// each of its lines in turn was most of pass 3's per-client cost. Prefetch instructions, not loads: loads that
    /// missed held the CPU's reorder window, so it kept only a few clients' misses in flight (they were a fifth of
    /// the phase in the server's profile under 2,000 bots).
    pub fn prefetch(&self, now: u64, acks: &Acks) {
        crate::hint::prefetch(self);
        for &tick in &acks.ticks[..usize::from(acks.len)] {
            crate::hint::prefetch(&self.sent[(tick % KEPT) as usize]);
        }
        crate::hint::prefetch(&self.sent[(now % KEPT) as usize]);
    }

    /// Starts loading the views a snapshot at `now` reads: the wanted ids and, if it reads one, the baseline view
    /// (not the usual case, the client acknowledged the view it still wants, but after each view change until the
    /// client acknowledges it). Reads the link's first line: called once [`DeltaLink::prefetch`] brought it in.
    pub fn prefetch_views(&self, now: u64) {
        crate::hint::prefetch_slice(self.want.as_slice());
        let client = self.plan(now);
        if client.base == 0 || !self.want_sent || client.version != self.version {
            crate::hint::prefetch_slice(self.view(client.version));
        }
    }

    /// The view of version `version` (empty for 0).
    fn view(&self, version: u64) -> &[EntityId] {
        if version == 0 {
            return &[];
        }
        &self.views[(version % VIEWS) as usize]
    }

    /// Records that the newest view was sent again at `tick`.
    fn resent(&mut self, tick: u64) {
        self.sent[(tick % KEPT) as usize] = (tick, self.version);
    }

    /// Records a new view sent at `tick`.
    fn sent_new(&mut self, tick: u64, ids: &[EntityId]) {
        self.version += 1;
        store_view(&mut self.views, self.version, ids);
        self.resent(tick);
        self.want_sent = false;
    }

    /// Records that the view it wants was sent at `tick` (a new version unless it already was the newest).
    fn sent_want(&mut self, tick: u64) {
        if !self.want_sent {
            self.version += 1;
            store_view(&mut self.views, self.version, self.want.as_slice());
            self.want_sent = true;
        }
        self.resent(tick);
    }

    /// The ids sent at `tick`, if still held (tests compare them with what the client decoded).
    pub fn sent_ids(&self, tick: u64) -> Option<&[EntityId]> {
        let (at, version) = self.sent[(tick % KEPT) as usize];
        (at == tick && self.holds(version)).then(|| self.view(version))
    }
}

/// Stores the view of `version` in its place of the ring (the one [`VIEWS`] versions older).
fn store_view(views: &mut [Vec<EntityId>; VIEWS as usize], version: u64, ids: &[EntityId]) {
    let view = &mut views[(version % VIEWS) as usize];
    view.clear();
    view.extend_from_slice(ids);
}

/// Past published states kept per slot of the world, on average ([`Encoder::log`]): enough for any baseline in
/// the window unless entities change more than this often within it (then an old baseline sends some whole).
const OLDER: usize = 3;

/// A published state replaced by a newer one, in [`Encoder::log`].
#[derive(Clone, Copy, Default)]
struct Past {
    /// The entity.
    id: EntityId,
    /// Its state was this since this tick ...
    since: u64,
    /// ... and the one before is at this sequence number in the log (0: none).
    prev: u64,
    q: QState,
}

/// What every view's every entity needs of its slot, packed in 8 bytes: read for each entity of each view each
/// tick (2,000 views of 84: 168,000 reads at random slots), so the whole array (176 KB at 22,000 slots) must stay
/// in the L2 cache where [`Published`] would not.
#[derive(Clone, Copy, Default)]
struct Hot {
    /// The entity's generation, its id's high 32 bits (0: none; slots are reused).
    generation: u32,
    /// The low 32 bits of the tick since which its published state is the same. Re-stamped before it is 2^30
    /// ticks old (620 days at 20 ticks per second), so that a wrapping comparison with a baseline (at most
    /// [`KEPT`] ticks old) is exact.
    since: u32,
}

impl Hot {
    fn holds(self, id: EntityId) -> bool {
        (self.generation != 0) & (self.generation == (id >> 32) as u32)
    }

    /// Whether its published state changed after `base` (a tick at most 2^30 before now).
    fn changed_after(self, base: u64) -> bool {
        (self.since.wrapping_sub(base as u32) as i32) > 0
    }
}

/// The state to publish for an entity whose published state is `p` and whose state now is `now` (anchored at
/// `tick`): `p`'s trajectory kept, unless it strays more than [`TOLERANCE`] from where the entity is, with the
/// other fields as now.
fn next_state(p: &QState, now: &QState, tick: u64, tick_rate: u32) -> QState {
    let (px, py) = p.position_at(tick, tick_rate);
    let near = |p: f64, q: u32| (p - f64::from(q)).abs() <= f64::from(TOLERANCE);
    if near(px, now.x) && near(py, now.y) {
        QState { t: p.t, x: p.x, y: p.y, vx: p.vx, vy: p.vy, ..*now }
    } else {
        *now
    }
}

/// Older than this (ticks), an unchanged state is stamped anew ([`Hot::since`]).
const RESTAMP: u64 = 1 << 30;

/// One slot's published state.
#[derive(Clone, Copy, Default)]
struct Published {
    /// The entity (0: none).
    id: EntityId,
    /// Its published state has been the same since this tick.
    since: u64,
    /// The state it replaced is at this sequence number in [`Encoder::log`] (0: none).
    prev: u64,
    q: QState,
}

/// One slot's bodies this tick in the arena: its entry (`NONE`: not yet) and its update against each of the first
/// [`MEMO`] baselines asked (clients acknowledge the last few ticks). Kept densely for the few slots some
/// snapshot needed a body of: most requests find one another client already made (a crowd's clients see the
/// same entities change), and this table stays in the cache where [`Published`] would not.
#[derive(Clone, Copy)]
struct Memo {
    entry: (u32, u32),
    updates: [(u64, u32, u32); MEMO],
}

/// A slot's entity as the world has it now, for publishing.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The entity.
    pub id: EntityId,
    /// Its state, quantized and anchored now.
    pub q: QState,
    /// How far it moves per tick while nothing writes to it (1/64 m per axis: its velocity times the tick, as the
    /// world integrates it) ...
    pub step: [f32; 2],
    /// ... and the most the world's float arithmetic can stray from that per tick (1/64 m).
    pub slop: f32,
    /// The tick at which a flag changes by itself (its combat ends; `u64::MAX`: none).
    pub until: u64,
}

/// The first tick after `tick` at which the state `q` published for `now` may stray from the world's by more than
/// [`TOLERANCE`] without the world writing to the slot: where the trajectory drifts from the world's integration
/// (the velocity's quantization and the float arithmetic's rounding), or a flag changes by itself. Conservative:
/// until then (ticks `tick + 1 .. due`), `|prediction - quantized position| <= e + 1 + k * r <= TOLERANCE` where
/// `e` is the error now, `r` the drift per tick, `k` the ticks since, and the 1 the two quantizations' halves.
fn due(q: &QState, now: &Now, tick: u64, tick_rate: u32) -> u64 {
    let (px, py) = q.position_at(tick, tick_rate);
    let e = (px - f64::from(now.q.x)).abs().max((py - f64::from(now.q.y)).abs());
    let rate = f64::from(tick_rate.max(1));
    let drift = |qv: i32, step: f32| (f64::from(qv) / rate - f64::from(step)).abs();
    let r = drift(q.vx, now.step[0]).max(drift(q.vy, now.step[1])) + f64::from(now.slop);
    let slack = f64::from(TOLERANCE) - 1.0 - e;
    let ticks = if slack < r { 0 } else { (slack / r).min(MAX_DUE as f64) as u64 };
    let flag = if now.until > tick { now.until } else { u64::MAX };
    tick.saturating_add(ticks + 1).min(flag)
}

/// The most ticks a trajectory goes unchecked ([`due`]; 12.8 s at 20 ticks per second): bounds how far an
/// entity can move in between, which [`Now::slop`] needs.
pub const MAX_DUE: u64 = 256;

/// One v2 client between the passes.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Its baseline tick (0: none) ...
    pub base: u64,
    /// ... and the version of the view sent then.
    version: u64,
}

/// The published states and this tick's encodings, reused from tick to tick.
#[derive(Default)]
pub struct Encoder {
    /// Per slot: the entity and since when its state is unchanged ...
    hot: Vec<Hot>,
    /// ... the marks of [`Encoder::assemble`] (index in the client's baseline) and of the view merge of
    /// [`crate::sim::game::Simulation`]'s queries ([`Encoder::slot_marks`]) ...
    marks: SlotMarks,
    /// ... the newest published state ...
    published: Vec<Published>,
    /// ... and the states it replaced ([`Encoder::log`]) ...
    log: Vec<Past>,
    /// The next sequence number of the log (from 1; entry `n` at `log[n % log.len()]`).
    logged: u64,
    /// ... and until which tick some view wants it (only those are published: [`Encoder::want`]; apart from the
    /// rest, 8 bytes a slot: every query writes it for each slot it finds, at random slots), ...
    wanted: Vec<u64>,
    /// ... and the tick before which its published state stays the world's unless the world touches the slot
    /// ([`due`]; 0: look at it next tick, it was not published every tick since). Nothing is written for a slot
    /// skipped (a "checked at" tick written per wanted slot per tick was a fifth of the snapshot function's own
    /// samples in a profile of the server under 2,000 bots; the tick benchmark shows no difference).
    due: Vec<u64>,
    /// The last tick [`Encoder::encode`] ran.
    encoded: u64,
    /// Whether every slot skipped as unchanged is checked against the world ([`Encoder::check_skips`]).
    check_skips: bool,
    /// Wanted slots looked at and skipped by [`Encoder::encode`], all time.
    looked_at: u64,
    skipped: u64,
    /// This tick's bodies, back to back; per slot its [`Memo`] this tick (`NONE`: none), the memos, the slots
    /// that have one.
    arena: Vec<u8>,
    memo_at: Vec<u32>,
    memos: Vec<Memo>,
    memo_slots: Vec<u32>,
    /// Scratch: per baseline index, its body (`NONE`: removed); the removed baseline indices, the updates
    /// `(baseline index, body)`, the entities entering; the entities bytes; a view's slot records.
    hit: Vec<(u32, u32)>,
    removed: Vec<u32>,
    updates: Vec<(u32, u32, u32)>,
    gathered: Vec<Hot>,
    entering: Vec<(EntityId, u32)>,
    bytes: Vec<u8>,
    next: Vec<EntityId>,
    /// Per tick of the last [`KEPT`] (row `tick % KEPT`, `words` words each): the slots whose [`Hot`] record was
    /// written at that tick (published anew, emptied, re-stamped), and which tick each row holds.
    changes: Vec<u64>,
    change_tick: [u64; KEPT as usize],
    words: usize,
    /// This tick's union of those rows after each of up to [`AFTER`] baselines: `(baseline, slots changed since)`
    /// ([`Encoder::changed_after`]; the first `after_len` are this tick's).
    after: Vec<(u64, Vec<u64>)>,
    after_len: usize,
}

/// Per-slot marks, each use under a fresh stamp: a slot is marked for a use when its mark carries that use's
/// stamp, so nothing is cleared between uses (the world's slots, 22,000 in the benchmark's zone, against the
/// 100-odd a use marks). One array serves every use of a tick, one after another.
#[derive(Default)]
pub struct SlotMarks {
    stamp: u32,
    marks: Vec<(u32, u32)>,
}

impl SlotMarks {
    /// A stamp no slot below `slots` is marked with yet.
    pub fn fresh(&mut self, slots: usize) -> u32 {
        if self.marks.len() < slots {
            self.marks.resize(slots, (0, 0));
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| m.0 = 0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// Marks `slot` for `stamp` with `value`.
    #[inline]
    pub fn mark(&mut self, slot: usize, stamp: u32, value: u32) {
        self.marks[slot] = (stamp, value);
    }

    /// `slot`'s value if it is marked for `stamp`.
    #[inline]
    pub fn get(&self, slot: usize, stamp: u32) -> Option<u32> {
        let (at, value) = self.marks[slot];
        (at == stamp).then_some(value)
    }
}

/// Appends the body `arena[start..start + len]` to `out`. Bodies are a few bytes: when the arena holds
/// [`BODY_CHUNK`] bytes from `start` (all but the newest bodies), that many are copied, a fixed-size copy the
/// compiler inlines, and the excess dropped; a copy of `len` bytes was a call to `memcpy` per body.
#[inline]
fn put_body(out: &mut Vec<u8>, arena: &[u8], start: u32, len: u32) {
    let (start, len) = (start as usize, len as usize);
    match arena.get(start..start + BODY_CHUNK) {
        Some(chunk) if len <= BODY_CHUNK => {
            let at = out.len();
            let chunk: &[u8; BODY_CHUNK] = chunk.try_into().expect("a chunk of BODY_CHUNK bytes");
            out.extend_from_slice(chunk);
            out.truncate(at + len);
        }
        _ => out.extend_from_slice(&arena[start..start + len]),
    }
}

/// See [`put_body`].
const BODY_CHUNK: usize = 32;

/// Baselines per tick whose "changed since" bitmap is made (clients acknowledge the last few ticks; a client with
/// another baseline reads the slot records instead).
const AFTER: usize = 8;

/// What [`Encoder::assemble`] needs of the world.
pub struct Frame {
    /// The tick.
    pub tick: u64,
    /// The client's baseline ([`Encoder::plan`]).
    pub client: Client,
}

impl Encoder {
    /// Per-slot marks for a caller's own use between the encoder's steps (the view merge of a query in pass 3;
    /// [`Encoder::assemble`] takes a fresh stamp of the same marks).
    pub fn slot_marks(&mut self) -> &mut SlotMarks {
        &mut self.marks
    }

    /// The state the server published for `id` (in `slot`) at `tick`, if still known.
    pub fn published_at(&self, slot: usize, tick: u64, id: EntityId) -> Option<QState> {
        let p = self.published.get(slot)?;
        if p.id != id || id == 0 {
            return None;
        }
        if p.since <= tick {
            return Some(p.q);
        }
        // Back through the states it replaced, while they are still in the log.
        let mut at = p.prev;
        while at != 0 && self.logged - at <= self.log.len() as u64 {
            let past = &self.log[(at % self.log.len() as u64) as usize];
            if past.id != id {
                return None;
            }
            if past.since <= tick {
                return Some(past.q);
            }
            at = past.prev;
        }
        None
    }

    /// The log of replaced states: one ring for all slots, written in sequence (one cache line a change, where
    /// a few states per slot kept beside it cost three lines of a cold array; measured: those writes were a third
    /// of publishing), read back only for updates against a baseline older than an entity's newest change (most
    /// of them a tick or two old, still in the cache). Holds [`OLDER`] states per slot on average: a change a few
    /// ticks old is there however the changes are spread over the entities.
    fn log(&mut self, past: Past) -> u64 {
        let at = self.logged;
        let len = self.log.len() as u64;
        self.log[(at % len) as usize] = past;
        self.logged += 1;
        at
    }

    /// Starts tick `tick`: `slots` is the world's slot count.
    pub fn begin(&mut self, slots: usize, tick: u64) {
        self.arena.clear();
        let words = slots.div_ceil(64);
        if words > self.words {
            // Room to grow (the world's slots grow as players join); the rows so far are forgotten (baselines
            // before now read the slot records until the rows cover them again).
            self.words = words.next_power_of_two().max(64);
            self.changes = vec![0; self.words * KEPT as usize];
            self.change_tick = [0; KEPT as usize];
        }
        let row = (tick % KEPT) as usize;
        self.changes[row * self.words..(row + 1) * self.words].fill(0);
        self.change_tick[row] = tick;
        self.after_len = 0;
        self.memo_at.resize(slots, NONE);
        for &s in &self.memo_slots {
            self.memo_at[s as usize] = NONE;
        }
        self.memo_slots.clear();
        self.memos.clear();
        self.hot.resize(slots, Hot::default());
        self.due.resize(slots, 0);
        self.wanted.resize(slots, 0);
        self.published.resize(slots, Published::default());
        let log = (slots * OLDER).next_power_of_two().max(1024);
        if self.log.len() < log {
            // A larger ring: the states logged so far are forgotten (an update against them is sent whole).
            self.log = vec![Past::default(); log];
            self.published.iter_mut().for_each(|p| p.prev = 0);
            self.logged = 1;
        }
    }

    /// After a snapshot at `now`: a view's query answered `slots`; that view is queried again by tick `until` (so
    /// every slot in some view is published every tick). A slot no view wanted at `now` is looked at next tick
    /// (what touched it while unwanted was not kept).
    pub fn want(&mut self, slots: impl Iterator<Item = usize>, until: u64, now: u64) {
        for s in slots {
            if self.wanted[s] < now {
                self.due[s] = 0;
            }
            self.wanted[s] = self.wanted[s].max(until);
        }
    }

    /// Pass 2: the published state of every slot some view wants (`state` gives its entity now, `None` if it holds
    /// none), re-anchored only when it strays. Only slots that may have changed are looked at: the world touched
    /// them since the last tick (`touched`, one bit per slot: every write to what a state holds sets it), no view
    /// wanted them at some tick since they were last looked at ([`Encoder::want`]), or their trajectory may have
    /// drifted ([`due`]). Measured: looking at every
    /// wanted slot (18,000 of 22,000 in the benchmark's zone, 96% unchanged) was most of the pass.
    pub fn encode(&mut self, tick: u64, tick_rate: u32, touched: &[u64], state: impl Fn(usize) -> Option<Now>) {
        // A tick without this pass (no v2 client had a snapshot built) lost what touched the slots then: every
        // wanted slot is looked at once after one.
        let continuous = self.encoded + 1 == tick;
        self.encoded = tick;
        for s in 0..self.due.len() {
            if self.wanted[s] < tick {
                continue;
            }
            let untouched = touched.get(s / 64).is_none_or(|w| w >> (s % 64) & 1 == 0);
            if continuous && untouched && self.due[s] > tick {
                self.skipped += 1;
                if self.check_skips {
                    self.check_skip(s, tick, tick_rate, state(s));
                }
                continue;
            }
            self.looked_at += 1;
            self.publish(s, tick, tick_rate, state(s));
        }
    }

    /// Wanted slots [`Encoder::encode`] looked at and skipped as unchanged, all time.
    pub fn publish_counts(&self) -> (u64, u64) {
        (self.looked_at, self.skipped)
    }

    /// Tests: every slot [`Encoder::encode`] skips is checked to be as publishing it would leave it (a write to the
    /// world that does not touch the slot, or a wrong [`due`], panics there).
    pub fn check_skips(&mut self) {
        self.check_skips = true;
    }

    fn check_skip(&self, s: usize, tick: u64, tick_rate: u32, now: Option<Now>) {
        let p = &self.published[s];
        match now {
            None => assert_eq!(p.id, 0, "slot {s} skipped at tick {tick}: its entity is gone"),
            Some(now) => {
                assert_eq!(p.id, now.id, "slot {s} skipped at tick {tick}: it holds another entity");
                let q = next_state(&p.q, &now.q, tick, tick_rate);
                assert!(q == p.q, "slot {s} skipped at tick {tick}: published {:?}, the world has {:?}", p.q, now.q);
            }
        }
    }

    /// As [`Encoder::want`], for a view used at once, after pass 2: the slots it adds are published first.
    pub fn want_now(
        &mut self,
        slots: impl Iterator<Item = usize>,
        until: u64,
        tick: u64,
        tick_rate: u32,
        state: impl Fn(usize) -> Option<Now>,
    ) {
        for s in slots {
            if self.wanted[s] < tick {
                self.publish(s, tick, tick_rate, state(s));
            }
            self.wanted[s] = self.wanted[s].max(until);
        }
    }

    /// Publishes slot `s` at `tick`: `now` is its entity (`None`: it holds none).
    fn publish(&mut self, s: usize, tick: u64, tick_rate: u32, now: Option<Now>) {
        let Some(now) = now else {
            self.hot[s] = Hot::default();
            self.mark(s, tick);
            self.published[s].id = 0;
            self.due[s] = u64::MAX;
            return;
        };
        let p = &mut self.published[s];
        if p.id != now.id {
            *p = Published { id: now.id, since: tick, prev: 0, q: now.q };
            self.hot[s] = Hot { generation: (now.id >> 32) as u32, since: tick as u32 };
            self.mark(s, tick);
            self.due[s] = due(&now.q, &now, tick, tick_rate);
            return;
        }
        let q = next_state(&p.q, &now.q, tick, tick_rate);
        self.due[s] = due(&q, &now, tick, tick_rate).min(p.since.saturating_add(RESTAMP));
        if q != p.q {
            let past = Past { id: p.id, since: p.since, prev: p.prev, q: p.q };
            let at = self.log(past);
            let p = &mut self.published[s];
            p.prev = at;
            p.since = tick;
            p.q = q;
            self.hot[s].since = tick as u32;
            self.mark(s, tick);
        } else if tick - p.since >= RESTAMP {
            // Unchanged for long: stamped as changed now (the update is empty) to keep `Hot::since` exact.
            p.since = tick;
            self.hot[s].since = tick as u32;
            self.mark(s, tick);
        }
    }

    /// Records that slot `s`'s [`Hot`] record was written at `tick` (this tick), in its row and in this tick's
    /// "changed since" bitmaps already made (a view queried in pass 3 publishes slots after some were made).
    fn mark(&mut self, s: usize, tick: u64) {
        let (word, bit) = (s / 64, 1u64 << (s % 64));
        debug_assert_eq!(self.change_tick[(tick % KEPT) as usize], tick);
        self.changes[(tick % KEPT) as usize * self.words + word] |= bit;
        for (_, bits) in &mut self.after[..self.after_len] {
            bits[word] |= bit;
        }
    }

    /// This tick's bitmap of the slots whose [`Hot`] record was written after `base` (so every slot whose
    /// `changed_after(base)` holds, and every slot whose entity is not the one it held then): its index in
    /// `after`, made on first use from the rows of ticks `base + 1 ..= tick`; `None` when a row is missing (a
    /// tick without a snapshot phase, slots grown since) or [`AFTER`] baselines have one already. One bitmap of
    /// the world's slots (2.75 KB at 22,000 slots) stays in the L1 cache where the slot records do not.
    fn changed_after(&mut self, base: u64, tick: u64) -> Option<usize> {
        if let Some(i) = self.after[..self.after_len].iter().position(|a| a.0 == base) {
            return Some(i);
        }
        if self.after_len == AFTER || base >= tick || tick - base >= KEPT {
            return None;
        }
        if !(base + 1..=tick).all(|t| self.change_tick[(t % KEPT) as usize] == t) {
            return None;
        }
        if self.after.len() == self.after_len {
            self.after.push((0, Vec::new()));
        }
        let (words, i) = (self.words, self.after_len);
        let (changes, after) = (&self.changes, &mut self.after[i]);
        after.0 = base;
        after.1.clear();
        after.1.resize(words, 0);
        for t in base + 1..=tick {
            let row = &changes[(t % KEPT) as usize * words..][..words];
            after.1.iter_mut().zip(row).for_each(|(a, r)| *a |= r);
        }
        self.after_len += 1;
        Some(i)
    }

    /// `slot`'s memo this tick (made on first use).
    fn memo(&mut self, slot: usize) -> usize {
        let m = self.memo_at[slot];
        if m != NONE {
            return m as usize;
        }
        self.memo_at[slot] = self.memos.len() as u32;
        self.memo_slots.push(slot as u32);
        self.memos.push(Memo { entry: (NONE, 0), updates: [(0, 0, 0); MEMO] });
        self.memos.len() - 1
    }

    /// The entry body of `slot` (encoded on first use this tick).
    fn entry(&mut self, slot: usize, tick: u64) -> (u32, u32) {
        let m = self.memo(slot);
        if self.memos[m].entry.0 == NONE {
            let start = self.arena.len() as u32;
            let len = wire::encode_entry(&self.published[slot].q, tick, &mut self.arena) as u32;
            self.memos[m].entry = (start, len);
        }
        self.memos[m].entry
    }

    /// The update body of `slot` against `base` (`len` 0: unchanged; `NONE`: its state then is not known),
    /// memoised for the tick per baseline (the first [`MEMO`] baselines asked).
    fn update(&mut self, slot: usize, id: EntityId, base: u64, tick: u64) -> (u32, u32) {
        let m = self.memo(slot);
        if let Some(&(_, start, len)) = self.memos[m].updates.iter().find(|u| u.0 == base) {
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
        if let Some(free) = self.memos[m].updates.iter_mut().find(|u| u.0 == 0) {
            *free = (base, body.0, body.1);
        }
        body
    }

    /// The entities bytes of `removed` (baseline indices, ascending), `updates` (`(baseline index, body)`,
    /// ascending) and `entering` (by ascending id), into `bytes`.
    fn write_entities(&mut self) {
        let bytes = &mut self.bytes;
        bytes.clear();
        wire::put_varint(bytes, self.removed.len() as u64);
        let mut previous: Option<u32> = None;
        for &i in &self.removed {
            wire::put_varint(bytes, u64::from(previous.map_or(i, |p| i - p - 1)));
            previous = Some(i);
        }
        wire::put_varint(bytes, self.updates.len() as u64);
        let mut previous: Option<u32> = None;
        for &(i, start, len) in &self.updates {
            wire::put_varint(bytes, u64::from(previous.map_or(i, |p| i - p - 1)));
            previous = Some(i);
            put_body(bytes, &self.arena, start, len);
        }
        wire::put_varint(bytes, self.entering.len() as u64);
        let mut previous: Option<EntityId> = None;
        for &(id, s) in &self.entering {
            wire::put_varint(bytes, previous.map_or(id, |p| id - p - 1));
            previous = Some(id);
            let (start, len) = self.memos[self.memo_at[s as usize] as usize].entry;
            put_body(bytes, &self.arena, start, len);
        }
    }

    /// `DataMessage { delta_snapshot }` of `header` and `bytes` at the end of `out` if it fits `budget` (else
    /// nothing is written); whether it fits.
    fn message(&mut self, header: &DeltaSnapshot, budget: usize, out: &mut Vec<u8>) -> bool {
        crate::proto::encode_delta_snapshot(header, &self.bytes, budget, out) <= budget
    }

    /// One wanted entity of a snapshot against `base_tick`: `h` is its slot record, `in_base` its index in the
    /// baseline view if it is there. Records what it costs (nothing when unchanged); whether it is gone since the
    /// view's query (its slot, published this tick, holds another entity or none).
    fn visit(&mut self, id: EntityId, h: Hot, in_base: Option<u32>, base_tick: u64, tick: u64) -> bool {
        if !h.holds(id) {
            self.removed.extend(in_base);
            return true;
        }
        let slot = slot_of(id);
        if let Some(i) = in_base {
            if !h.changed_after(base_tick) {
                return false;
            }
            let (start, len) = self.update(slot, id, base_tick, tick);
            if start != NONE {
                if len != 0 {
                    self.updates.push((i, start, len));
                }
                return false;
            }
            // Its state at the baseline is no longer known: removed, and entered again whole.
            self.removed.push(i);
        }
        self.entry(slot, tick);
        self.entering.push((id, slot as u32));
        false
    }

    /// Pass 3, per client, the usual way: its snapshot at the end of `out` against its baseline, holding every entity of
    /// the view `link` wants (the last query's, [`DeltaLink::set_view`]), by one merge of the two id-sorted lists;
    /// records what was sent. An entity of both costs a comparison of two ticks unless it changed. `None` (nothing
    /// sent, nothing recorded) when that view does not fit `budget`: [`Encoder::assemble`] then chooses nearest
    /// first.
    pub fn assemble_wanted(
        &mut self,
        link: &mut DeltaLink,
        frame: &Frame,
        header: &DeltaSnapshot,
        budget: usize,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        let (tick, base_tick) = (frame.tick, frame.client.base);
        self.removed.clear();
        self.updates.clear();
        self.entering.clear();
        let mut gone = false;
        // The usual case: the client acknowledged the view it is still to get, so nothing enters or leaves unless
        // it died, and the baseline need not be read. One pass without branches flags the entities that need more
        // than a comparison of two ticks (changed since the baseline, or gone); only those are visited (measured:
        // a branch per entity here mispredicted on every few changed ones).
        if base_tick != 0 && link.want_sent && frame.client.version == link.version {
            let after = self.changed_after(base_tick, tick);
            for (word, ids) in link.want.as_slice().chunks(64).enumerate() {
                let mut bits = 0u64;
                if let Some(a) = after {
                    // The slots changed since the baseline, one bit each (in the L1 cache). The flags are shifted
                    // in (first id highest) and reversed after: no shift by a variable count per id.
                    let changed: &[u64] = &self.after[a].1;
                    for &id in ids {
                        let s = slot_of(id);
                        bits = bits << 1 | (changed[s / 64] >> (s % 64) & 1);
                    }
                    bits = bits.reverse_bits() >> (64 - ids.len());
                } else {
                    let hot = &self.hot;
                    for (j, &id) in ids.iter().enumerate() {
                        let h = hot[slot_of(id)];
                        bits |= u64::from(!h.holds(id) | h.changed_after(base_tick)) << j;
                    }
                }
                while bits != 0 {
                    let j = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let k = (word * 64 + j) as u32;
                    gone |= self.visit(ids[j], self.hot[slot_of(ids[j])], Some(k), base_tick, tick);
                }
            }
        } else {
            // The wanted entities' slot records first, in a loop of independent loads the CPU overlaps (the merge
            // below branches on each one: there every miss would stall it).
            let hot = &self.hot;
            self.gathered.clear();
            self.gathered.extend(link.want.as_slice().iter().map(|&id| hot[slot_of(id)]));
            let b = link.view(frame.client.version);
            let mut i = 0;
            for (k, &id) in link.want.as_slice().iter().enumerate() {
                // Baseline entities before it are not wanted: removed.
                while i < b.len() && b[i] < id {
                    self.removed.push(i as u32);
                    i += 1;
                }
                let in_base = (i < b.len() && b[i] == id).then_some(i as u32);
                i += usize::from(in_base.is_some());
                gone |= self.visit(id, self.gathered[k], in_base, base_tick, tick);
            }
            self.removed.extend(i as u32..b.len() as u32);
        }
        self.write_entities();
        if !self.message(header, budget, out) {
            return None;
        }
        if gone {
            let hot = &self.hot;
            link.want.retain(|id| hot[slot_of(id)].holds(id));
            link.want_sent = false;
        }
        // The view now: every wanted entity.
        link.sent_want(tick);
        Some(link.want.as_slice().len())
    }

    /// Pass 3, per client: its `DataMessage { delta_snapshot }` at the end of `out`, within `budget` bytes, from its
    /// visible slots (nearest first; at most [`MAX_VIEW_LIMIT`]); records what was sent in `link`. Returns how many
    /// entities the view holds.
    pub fn assemble(
        &mut self,
        link: &mut DeltaLink,
        frame: &Frame,
        header: &DeltaSnapshot,
        visible: &[u32],
        budget: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        let stamp = self.marks.fresh(self.hot.len());
        let (tick, client) = (frame.tick, frame.client);
        let base = link.view(client.version);
        // Marked only where the slot still holds that entity (sequential reads of the baseline here, none in the
        // loop below).
        for (i, &id) in base.iter().enumerate() {
            if self.hot[slot_of(id)].holds(id) {
                self.marks.mark(slot_of(id), stamp, i as u32);
            }
        }
        self.hit.clear();
        self.hit.resize(base.len(), (NONE, 0));
        self.entering.clear();
        // Upper bounds: the envelope (key, two length bytes), the header, the entities field (key, two length
        // bytes), three one-byte counts (a view is under 128), and one byte per baseline entity as if all were
        // removed (index gaps are under 128).
        let fixed = 3 + header.encoded_len() + 3 + 3;
        let mut used = fixed + base.len();
        let mut shown = 0;
        for &s in visible.iter().take(MAX_VIEW_LIMIT) {
            let slot = s as usize;
            // Published this tick for every slot a view shows: the slot's entity now.
            let (h, mark) = (self.hot[slot], self.marks.get(slot, stamp));
            let id = self.published[slot].id;
            if let Some(i) = mark {
                let changed = h.changed_after(client.base);
                let (start, len) = if changed { self.update(slot, id, client.base, tick) } else { (0, 0) };
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
                // Its state at the baseline is no longer known (its change then left the log):
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
        self.removed.clear();
        self.updates.clear();
        for (i, &(start, len)) in self.hit.iter().enumerate() {
            if start == NONE {
                self.removed.push(i as u32);
            } else if len != 0 {
                self.updates.push((i as u32, start, len));
            }
        }
        self.write_entities();
        // What the client's view is now: the kept baseline entities and the entering ones, by ascending id.
        let next = &mut self.next;
        next.clear();
        let mut entering = self.entering.iter().peekable();
        for (&h, &id) in self.hit.iter().zip(base) {
            if h.0 == NONE {
                continue;
            }
            while let Some(&&(eid, _)) = entering.peek().filter(|e| e.0 < id) {
                next.push(eid);
                entering.next();
            }
            next.push(id);
        }
        next.extend(entering.map(|e| e.0));
        let fits = self.message(header, budget, out);
        debug_assert!(fits, "a cut view exceeds {budget} bytes");
        link.sent_new(tick, &self.next);
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_queries_stay_at_most_a_period_apart_whatever_the_phase_does() {
        let period = 10;
        let mut rng = crate::sim::rng::Pcg32::new(7, 1);
        for moving in [false, true] {
            let mut link = DeltaLink::default();
            let mut phase = 3;
            let mut last = None;
            let mut queries = 0;
            for tick in 1..2_000u64 {
                if moving && rng.next_u32() % 3 == 0 {
                    // Its place in the order moves by one run now and then, either way.
                    phase = (phase + if rng.next_u32() % 2 == 0 { 1 } else { period - 1 }) % period;
                }
                if link.query_due(tick, period, phase) {
                    if let Some(last) = last {
                        assert!(tick - last <= period, "{} ticks between queries", tick - last);
                    }
                    last = Some(tick);
                    queries += 1;
                    link.set_view(tick, Vec2::new(0.0, 0.0), 0, &[]);
                }
            }
            // A fixed phase: the first (never queried) and then exactly one a period.
            if !moving {
                assert_eq!(queries, 1 + 200);
            }
        }
    }

    #[test]
    fn slot_marks_hold_for_their_stamp_only_and_survive_the_stamp_wrapping() {
        let mut marks = SlotMarks::default();
        let a = marks.fresh(10);
        marks.mark(3, a, 7);
        assert_eq!(marks.get(3, a), Some(7));
        assert_eq!(marks.get(4, a), None);
        let b = marks.fresh(20);
        assert_ne!(a, b);
        assert_eq!(marks.get(3, b), None, "a new stamp sees no old mark");
        assert_eq!(marks.get(19, b), None);
        marks.mark(19, b, 1);
        // Wrapping: every mark is cleared, so an old mark cannot carry the stamp that comes round again.
        marks.stamp = u32::MAX;
        marks.mark(5, u32::MAX, 2);
        let c = marks.fresh(20);
        assert_eq!(c, 1);
        assert!((0..20).all(|s| marks.get(s, c).is_none()));
    }

    #[test]
    fn waiting_acknowledgements_keep_the_newest_four_and_apply_in_order() {
        let mut link = DeltaLink::default();
        for tick in 1..=6 {
            link.sent_new(tick, &[]);
        }
        let mut acks = Acks::default();
        // 9 was never sent: it does not count, and the 6 before it still does.
        for tick in [1, 2, 3, 6, 9] {
            acks.push(tick);
        }
        assert_eq!(acks.ticks, [2, 3, 6, 9], "the oldest dropped when full");
        acks.apply(&mut link);
        assert_eq!((link.ack, acks.len), (6, 0));
        // Applied acknowledgements only move forward.
        acks.push(4);
        acks.apply(&mut link);
        assert_eq!(link.ack, 6);
    }
}
