//! The simulation proper: a pure state machine. Commands go in between ticks ([`Simulation::spawn_player`],
//! [`Simulation::queue_input`], [`Simulation::queue_chat`], ...), [`Simulation::step`] advances one tick running the
//! systems in a fixed order, and everything the outside world must hear comes out as [`Output`]s. No I/O, no
//! clocks, no threads: the same seed and the same commands at the same ticks give the same world, bit for bit
//! ([`Simulation::world_hash`]).
//!
//! System order (never reorder without updating the replay tests): respawns, inputs, NPC AI, movement, combat,
//! chat, portals, AOI + snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::aoi::Grid;
use super::chat::{ChatLimiter, Refusal};
use super::delta::{DeltaLink, Encoder, Frame, Now, SlotMarks, MAX_DUE};
use super::phase::Phase;
use super::rng::Pcg32;
use super::world::{EntityId, Health, Kind, NpcData, NpcState, PlayerData, Vec2, World};
use super::zone::Zone;
use crate::link::{SessionId, Shared};
use crate::proto::delta::{quantize_pos, quantize_vel, QState, MAX_VIEW, POS_SCALE};
use crate::proto::{
    self, control_message::Body, ChatChannel, CombatEvent, CombatEventKind, ControlMessage, DeltaSnapshot, EntityKind,
    EntityState, Input, PlayerStats, Snapshot,
};

/// Inputs applied per player per tick; more would let a client move faster than its speed.
pub const MAX_INPUTS_PER_TICK: usize = 2;
/// Inputs a player may have queued; beyond this the oldest are discarded (counted as speed violations).
pub const MAX_PENDING_INPUTS: usize = 6;
/// Bytes available for the encoded `DataMessage` in one datagram (1200 minus header and AEAD tag).
pub const SNAPSHOT_BUDGET: usize = proto::MAX_DATAGRAM_BYTES - 17 - 16;
/// Most entities one snapshot can hold (each encodes to at least ~28 bytes of the datagram budget); only this many
/// nearest candidates are sorted.
pub const MAX_SNAPSHOT_ENTITIES: usize = SNAPSHOT_BUDGET / 28;
/// Say-chat radius.
pub const SAY_RADIUS: f32 = 30.0;
/// Longest chat text, in bytes.
pub const MAX_CHAT_BYTES: usize = 256;
/// AOI grid cells per view radius. Small cells let a query scan about its circle rather than a 3x3 block of
/// view-sized cells, and let the nearest-first query of a crowd look only near the observer (`benches/tick.rs`,
/// players crowded at the spawn points).
const AOI_CELLS_PER_VIEW: f32 = 4.0;
/// AOI hysteresis: entities stay visible until 10% beyond the view radius.
pub const HYSTERESIS: f32 = 1.1;
/// How often a protocol-v2 view's entities are chosen anew by default, in ms (`game.view_refresh_ms`; the view is
/// kept in between, see [`Simulation::snapshots`]): every 10th tick at 20 ticks per second, so an entity coming into
/// range shows within 500 ms (MMO servers commonly refresh visibility once a second; TrinityCore's
/// `Visibility.Notify.Period.OnContinents` defaults to 1,000 ms). Measured (`cargo bench --bench tick`, crowd): from
/// 200 ms to 500 took the v2 snapshot phase from 1.09 to 0.80 of v1's; 1,000 ms took it only to 0.71, for twice the
/// delay.
pub const VIEW_REFRESH_MS: u32 = 500;

/// One player ability.
#[derive(Debug, Clone, Copy)]
pub struct Ability {
    /// Id on the wire (`Input.ability`).
    pub id: u32,
    /// Reach; 0 = self.
    pub range: f32,
    /// Seconds until usable again.
    pub cooldown_secs: f32,
    /// Damage (or healing, for range 0) range.
    pub amount: [i32; 2],
}

/// The abilities every player has.
pub const ABILITIES: [Ability; 3] = [
    Ability { id: 1, range: 3.0, cooldown_secs: 0.8, amount: [8, 14] }, // strike
    Ability { id: 2, range: 25.0, cooldown_secs: 2.5, amount: [18, 28] }, // firebolt
    Ability { id: 3, range: 0.0, cooldown_secs: 8.0, amount: [25, 25] }, // heal self
];

const NPC_ATTACK_RANGE: f32 = 2.5;
/// An NPC keeps a heading within 25% of its speed of the one it should have for up to this many ticks (see
/// `npc_ai`).
const REAIM_TICKS: u64 = 4;
/// Chance that a kill drops an item.
pub const LOOT_CHANCE_PERCENT: u32 = 35;
const NPC_ATTACK_SECS: f32 = 1.5;
const PLAYER_RESPAWN_SECS: u32 = 5;

/// Something the outside world must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A reliable message for one session.
    Control {
        /// Recipient.
        session: SessionId,
        /// Message.
        msg: ControlMessage,
    },
    /// This tick's snapshot for one session, encoded.
    Snapshot {
        /// Recipient.
        session: SessionId,
        /// Snapshot (fits one datagram).
        snapshot: EncodedSnapshot,
    },
    /// The player looted an item; it must be written at once (valuable events are never batched).
    Loot {
        /// Looter.
        session: SessionId,
        /// Item type (the NPC population's index + 1).
        item_kind: u32,
        /// Stack size.
        quantity: u32,
    },
    /// The player walked into a portal; movement is frozen until it is transferred or released.
    PortalEntered {
        /// Session.
        session: SessionId,
        /// Index into the zone's portals.
        portal: usize,
    },
}

/// Why an input or chat was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// No player for this session.
    #[error("no player for this session")]
    UnknownSession,
    /// Sequence not newer than one already received.
    #[error("stale input sequence")]
    Stale,
    /// Direction not finite or longer than 1.
    #[error("invalid movement")]
    InvalidMove,
    /// Chat text empty, too long or with control characters.
    #[error("invalid chat text")]
    InvalidChat,
}

/// Counters (exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Inputs applied.
    pub inputs_applied: u64,
    /// Inputs discarded because too many arrived (speed check).
    pub inputs_rejected_speed: u64,
    /// Inputs with an invalid direction.
    pub inputs_rejected_invalid: u64,
    /// Inputs older than the last one.
    pub inputs_rejected_stale: u64,
    /// Hits landed.
    pub combat_hits: u64,
    /// Kills.
    pub kills: u64,
    /// Chat messages delivered (per sender).
    pub chats: u64,
    /// Snapshots built.
    pub snapshots: u64,
    /// Entities cut from snapshots by the datagram budget.
    pub snapshot_truncated_entities: u64,
    /// Entities the snapshots carried (summed over snapshots).
    pub snapshots_shown: u64,
    /// Protocol-v2 snapshots encoded against a view the client acknowledged ...
    pub delta_snapshots_acknowledged: u64,
    /// ... and against an empty view (none acknowledged yet, or too old, or no longer kept: the whole view is sent).
    pub delta_snapshots_whole: u64,
}

/// Player state to persist (on logout, transfer, save).
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerRecord {
    /// Account id.
    pub player_id: u64,
    /// Position.
    pub pos: Vec2,
    /// Level.
    pub level: u32,
    /// Experience.
    pub xp: u64,
    /// Hit points.
    pub hp: i32,
}

/// What is needed to put a player in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerSpawn {
    /// Account id.
    pub player_id: u64,
    /// Display name.
    pub name: String,
    /// Saved position; `None` = a spawn point.
    pub pos: Option<Vec2>,
    /// Level.
    pub level: u32,
    /// Experience.
    pub xp: u64,
    /// Hit points; `None` = full.
    pub hp: Option<i32>,
}

struct AbilityUse {
    slot: usize,
    ability: u32,
    target: EntityId,
}

/// The world of one zone and its rules.
pub struct Simulation {
    /// Entities and components.
    pub world: World,
    grid: Grid,
    zone: Zone,
    rng: Pcg32,
    tick: u64,
    tick_rate: u32,
    dt: f32,
    enter_r: f32,
    leave_r: f32,
    sessions: BTreeMap<SessionId, EntityId>,
    ability_uses: Vec<AbilityUse>,
    chats: Vec<(usize, ChatChannel, String)>,
    chat_limiter: ChatLimiter,
    chat_recipients: Vec<SessionId>,
    stats_changed: Vec<usize>,
    stats: SimStats,
    scratch: Vec<(f32, u32)>,
    scratch_ids: Vec<EntityId>,
    scratch_order: Vec<(u32, SessionId, usize)>,
    view_new: Vec<EntityId>,
    view_old: Vec<EntityId>,
    snapshot_cache: SnapshotCache,
    /// The last tick's snapshot buffer ([`Shared`]): reused once the io threads let go of it.
    snapshot_buf: Arc<Vec<u8>>,
    view_entities: usize,
    /// Ticks between a v2 view's area-of-interest queries (`game.view_refresh_ms`).
    view_period: u64,
}

/// A snapshot as it goes on the wire: an encoded `DataMessage { snapshot }` (see [`proto::encode_snapshot`]),
/// built from entity encodings made once per tick; the io thread only encrypts it.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSnapshot {
    /// The encoded `DataMessage`, at most [`SNAPSHOT_BUDGET`] bytes, in the buffer of its tick's snapshots.
    pub bytes: Shared,
}

impl EncodedSnapshot {
    /// The snapshot inside (tests, benchmarks and tools; the server never decodes its own output).
    pub fn decode(&self) -> Result<Snapshot, prost::DecodeError> {
        match <proto::DataMessage as prost::Message>::decode(&self.bytes[..])?.body {
            Some(proto::data_message::Body::Snapshot(snapshot)) => Ok(snapshot),
            _ => Err(prost::DecodeError::new("not a snapshot")),
        }
    }
}

/// Per-tick memo of the snapshot phase: in a crowd every entity is in hundreds of snapshots, so it is encoded
/// once per tick, not once per snapshot (profiled at 2,000 bots: encoding snapshot entities was a third of the io
/// thread).
#[derive(Default)]
struct SnapshotCache {
    /// This tick's entity encodings ([`proto::encode_entity_field`]), back to back.
    arena: Vec<u8>,
    /// Per slot: `(entity id, start in arena, length)`, valid this tick for the slots marked in `need`.
    encoded: Vec<(EntityId, u32, u32)>,
    /// One bit per slot: shown in some snapshot this tick.
    need: Vec<u64>,
    /// Every player's visible slots (nearest first), back to back, and where each player's are.
    lists: Vec<u32>,
    views: Vec<View>,
    /// Scratch: the slots of a player's previous snapshot; the `(start, length)` in `arena` of each entity of the
    /// snapshot being built.
    prev: Vec<u32>,
    parts: Vec<(u32, u32)>,
    /// Protocol v2: the shared encodings.
    delta: Encoder,
    /// The tick's snapshots, back to back: `(session, start, end)` in the tick's buffer.
    sent: Vec<(SessionId, u32, u32)>,
}

/// One player's snapshot between the passes of [`Simulation::snapshots`].
#[derive(Debug, Clone, Copy)]
struct View {
    session: SessionId,
    slot: usize,
    /// Its visible slots: `lists[start..start + len]`.
    start: u32,
    len: u32,
    /// The size of its whole visible set (the snapshot carries at most `len` of them).
    total: u32,
    /// Protocol v2 (its view is the client's [`super::delta::DeltaLink`]).
    v2: bool,
}

/// How many clients ahead of its snapshot pass 3 prefetches each level of what a v2 snapshot reads
/// ([`Simulation::prefetch_ahead`]).
const PREFETCH_AHEAD: usize = 4;

/// Ticks in `ms`, rounded to the nearest, at least one.
fn view_period(ms: u32, tick_rate: u32) -> u64 {
    ((u64::from(ms) * u64::from(tick_rate) + 500) / 1000).max(1)
}

fn secs_to_ticks(secs: f32, rate: u32) -> u64 {
    (secs * rate as f32).ceil().max(1.0) as u64
}

/// Experience needed to go from `level` to the next.
pub fn xp_to_next(level: u32) -> u64 {
    100 * u64::from(level) * u64::from(level)
}

fn player_max_hp(level: u32) -> i32 {
    100 + 10 * (level.max(1) as i32 - 1)
}

impl Simulation {
    /// A world for `zone`, populated with its NPCs, deterministic for `seed`.
    pub fn new(zone: Zone, tick_rate: u32, seed: u64) -> Self {
        let enter_r = zone.view_radius;
        let leave_r = zone.view_radius * HYSTERESIS;
        let mut sim = Self {
            world: World::default(),
            grid: Grid::new(zone.size, leave_r / AOI_CELLS_PER_VIEW),
            rng: Pcg32::new(seed, 0x5151),
            tick: 0,
            tick_rate: tick_rate.max(1),
            dt: 1.0 / tick_rate.max(1) as f32,
            enter_r,
            leave_r,
            sessions: BTreeMap::new(),
            ability_uses: Vec::new(),
            chats: Vec::new(),
            chat_limiter: ChatLimiter::new(&crate::config::ChatConfig::default(), tick_rate),
            chat_recipients: Vec::new(),
            stats_changed: Vec::new(),
            stats: SimStats::default(),
            scratch: Vec::new(),
            scratch_ids: Vec::new(),
            scratch_order: Vec::new(),
            view_new: Vec::new(),
            view_old: Vec::new(),
            snapshot_cache: SnapshotCache::default(),
            snapshot_buf: Arc::default(),
            view_entities: MAX_VIEW,
            view_period: view_period(VIEW_REFRESH_MS, tick_rate),
            zone,
        };
        for (spawn_index, spawn) in sim.zone.npc_spawns.clone().iter().enumerate() {
            for _ in 0..spawn.count {
                let angle = sim.rng.range(0.0, std::f32::consts::TAU);
                let dist = spawn.radius * sim.rng.unit().sqrt();
                let home =
                    sim.clamp(Vec2::new(spawn.center[0] + dist * angle.cos(), spawn.center[1] + dist * angle.sin()));
                let id = sim.world.spawn(Kind::Npc, home, spawn.max_hp, spawn.level);
                let slot = sim.world.slot(id).expect("just spawned");
                let next_think = u64::from(sim.rng.below(sim.tick_rate));
                sim.world.npc[slot] = Some(NpcData {
                    spawn_index,
                    home,
                    state: NpcState::Idle,
                    next_think,
                    attack_ready: 0,
                    aimed_at: 0,
                });
                sim.grid.insert(slot as u32, home);
            }
        }
        sim
    }

    /// Most entities in one protocol-v2 snapshot (`game.view_entities`, clamped to 1..=127).
    pub fn with_view_entities(mut self, n: usize) -> Self {
        self.view_entities = n.clamp(1, crate::proto::delta::MAX_VIEW_LIMIT);
        self
    }

    /// A v2 view's entities chosen anew every `ms` (`game.view_refresh_ms`; at least every tick).
    pub fn with_view_refresh_ms(mut self, ms: u32) -> Self {
        self.view_period = view_period(ms, self.tick_rate);
        self
    }

    /// Chat under `limits` (the default is `ChatConfig::default()`), refusals counted in `metrics`.
    pub fn with_chat_limits(
        mut self,
        limits: &crate::config::ChatConfig,
        metrics: Option<crate::metrics::ChatRefusals>,
    ) -> Self {
        let limiter = ChatLimiter::new(limits, self.tick_rate);
        self.chat_limiter = match metrics {
            Some(m) => limiter.with_metrics(m),
            None => limiter,
        };
        self
    }

    /// The current tick.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The zone.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Players in the world.
    pub fn players(&self) -> usize {
        self.sessions.len()
    }

    /// The entity of a session's player.
    pub fn player_entity(&self, session: SessionId) -> Option<EntityId> {
        self.sessions.get(&session).copied()
    }

    fn clamp(&self, p: Vec2) -> Vec2 {
        let max = self.zone.size - 0.01;
        Vec2::new(p.x.clamp(0.0, max), p.y.clamp(0.0, max))
    }

    /// Puts a player in the world for `session`; replaces an existing player of that session.
    pub fn spawn_player(&mut self, session: SessionId, spawn: PlayerSpawn) -> EntityId {
        self.despawn_player(session);
        let pos = match spawn.pos {
            Some(p) if p.x.is_finite() && p.y.is_finite() => self.clamp(p),
            _ => {
                let sp = self.zone.spawn_points[(spawn.player_id % self.zone.spawn_points.len() as u64) as usize];
                Vec2::new(sp[0], sp[1])
            }
        };
        let level = spawn.level.max(1);
        let max_hp = player_max_hp(level);
        let id = self.world.spawn(Kind::Player, pos, max_hp, level);
        let slot = self.world.slot(id).expect("just spawned");
        self.world.xp[slot] = spawn.xp;
        self.world.health[slot].hp = spawn.hp.map_or(max_hp, |hp| hp.clamp(1, max_hp));
        self.world.touch(slot);
        self.world.player[slot] = Some(PlayerData {
            session,
            player_id: spawn.player_id,
            name: spawn.name,
            pending: Default::default(),
            last_input: 0,
            last_input_time_us: 0,
            cooldown_until: [0; 4],
            visible: Vec::new(),
            delta: None,
            acks: Default::default(),
            dirty: false,
            transferring: false,
            udp_bound: false,
            detached: false,
            // Appearing on a portal (a saved position, a transfer target) must not bounce the player on: a portal
            // fires when walked into.
            in_portal: self.zone.portals.iter().any(|pt| pt.contains(pos.x, pos.y)),
        });
        self.grid.insert(slot as u32, pos);
        self.sessions.insert(session, id);
        self.stats_changed.push(slot);
        id
    }

    /// Removes a session's player and returns what must be saved.
    pub fn despawn_player(&mut self, session: SessionId) -> Option<PlayerRecord> {
        let id = self.sessions.remove(&session)?;
        let slot = self.world.slot(id)?;
        let record = self.record(slot);
        self.grid.remove(slot as u32);
        self.world.despawn(id);
        record
    }

    fn record(&self, slot: usize) -> Option<PlayerRecord> {
        let p = self.world.player[slot].as_ref()?;
        Some(PlayerRecord {
            player_id: p.player_id,
            pos: self.world.pos[slot],
            level: self.world.level[slot],
            xp: self.world.xp[slot],
            hp: self.world.health[slot].hp.max(1),
        })
    }

    /// A session's current state, for saving.
    pub fn player_record(&self, session: SessionId) -> Option<PlayerRecord> {
        self.record(self.world.slot(*self.sessions.get(&session)?)?)
    }

    /// Records of players changed since the last call, clearing their dirty flag (periodic saves).
    pub fn take_dirty(&mut self) -> Vec<(SessionId, PlayerRecord)> {
        let mut out = Vec::new();
        for (&session, &id) in &self.sessions {
            let Some(slot) = self.world.slot(id) else { continue };
            if self.world.player[slot].as_ref().is_some_and(|p| p.dirty) {
                if let Some(r) = self.record(slot) {
                    out.push((session, r));
                }
                if let Some(p) = self.world.player[slot].as_mut() {
                    p.dirty = false;
                }
            }
        }
        out
    }

    /// The player's UDP endpoint is bound: snapshots are built for it from the next tick on.
    pub fn set_udp_bound(&mut self, session: SessionId) {
        if let Some(slot) = self.sessions.get(&session).and_then(|&id| self.world.slot(id)) {
            if let Some(p) = self.world.player[slot].as_mut() {
                p.udp_bound = true;
            }
        }
    }

    /// The player's connection dropped: it stays in the world, standing, untargetable, without snapshots, until
    /// [`Simulation::reattach_player`] or [`Simulation::despawn_player`].
    pub fn detach_player(&mut self, session: SessionId) {
        if let Some(slot) = self.sessions.get(&session).and_then(|&id| self.world.slot(id)) {
            if let Some(p) = self.world.player[slot].as_mut() {
                p.detached = true;
                p.udp_bound = false;
                p.pending.clear();
            }
            self.world.set_vel(slot, Vec2::default());
        }
    }

    /// A detached player resumes under a new session id; returns its entity (unchanged). Its inputs start over
    /// (the new connection's first input may carry any sequence above 0).
    pub fn reattach_player(&mut self, old: SessionId, new: SessionId) -> Option<EntityId> {
        let id = self.sessions.remove(&old)?;
        self.sessions.insert(new, id);
        let slot = self.world.slot(id)?;
        if let Some(p) = self.world.player[slot].as_mut() {
            p.session = new;
            p.detached = false;
            p.udp_bound = false;
            p.last_input = 0;
        }
        Some(id)
    }

    /// The protocol version the session's client speaks: 2 gets delta snapshots, from an empty view (called at
    /// spawn and at every resume: a new connection's client holds no view).
    pub fn set_protocol(&mut self, session: SessionId, version: u32) {
        if let Some(slot) = self.sessions.get(&session).and_then(|&id| self.world.slot(id)) {
            if let Some(p) = self.world.player[slot].as_mut() {
                p.delta = (version >= 2).then(Box::default);
                p.acks = Default::default();
            }
        }
    }

    /// Protocol v2: the entity ids the session's snapshot of `tick` held (tests compare them with what a client
    /// decoded; `None` for v1 sessions and ticks no longer held).
    pub fn delta_view(&self, session: SessionId, tick: u64) -> Option<&[EntityId]> {
        let slot = self.sessions.get(&session).and_then(|&id| self.world.slot(id))?;
        self.world.player[slot].as_ref()?.delta.as_ref()?.sent_ids(tick)
    }

    /// Protocol v2: the state published for entity `id` at `tick` (what every view holding it then has), if
    /// still held (the last 32 ticks).
    pub fn delta_state(&self, id: EntityId, tick: u64) -> Option<QState> {
        self.snapshot_cache.delta.published_at((id & 0xffff_ffff) as usize, tick, id)
    }

    /// Lets a player who entered a portal move again (the transfer was refused).
    pub fn release_transfer(&mut self, session: SessionId) {
        if let Some(slot) = self.sessions.get(&session).and_then(|&id| self.world.slot(id)) {
            if let Some(p) = self.world.player[slot].as_mut() {
                p.transferring = false;
            }
        }
    }

    /// Queues an input for the next tick. Older or repeated sequence numbers are refused.
    pub fn queue_input(&mut self, session: SessionId, input: Input) -> Result<(), Rejected> {
        let slot = self.sessions.get(&session).and_then(|&id| self.world.slot(id)).ok_or(Rejected::UnknownSession)?;
        let player = self.world.player[slot].as_mut().ok_or(Rejected::UnknownSession)?;
        if player.delta.is_some() {
            // Acknowledgements count even on a stale input (they only ever move forward), given to the link
            // before the next snapshot.
            player.acks.push(input.snapshot_ack);
        }
        let newest = player.pending.back().map_or(player.last_input, |i| i.sequence);
        if input.sequence <= newest {
            self.stats.inputs_rejected_stale += 1;
            return Err(Rejected::Stale);
        }
        let mut input = input;
        let dir = input.move_dir.unwrap_or_default();
        if !dir.x.is_finite() || !dir.y.is_finite() {
            self.stats.inputs_rejected_invalid += 1;
            return Err(Rejected::InvalidMove);
        }
        // Longer than 1 (a keyboard diagonal (1, 1), say) is normalised, as the protocol says: the direction is
        // what the client chooses, the speed is the server's.
        let length_sq = dir.x * dir.x + dir.y * dir.y;
        if length_sq > 1.0 {
            let length = length_sq.sqrt();
            input.move_dir = Some(proto::Vec2 { x: dir.x / length, y: dir.y / length });
        }
        if player.pending.len() >= MAX_PENDING_INPUTS {
            player.pending.pop_front();
            self.stats.inputs_rejected_speed += 1;
        }
        player.pending.push_back(input);
        Ok(())
    }

    /// Queues a chat line for this tick's chat system (which applies the chat limits, see [`super::chat`]).
    pub fn queue_chat(&mut self, session: SessionId, channel: ChatChannel, text: String) -> Result<(), Rejected> {
        let slot = self.sessions.get(&session).and_then(|&id| self.world.slot(id)).ok_or(Rejected::UnknownSession)?;
        let text = text.trim().to_owned();
        if text.is_empty() || text.len() > MAX_CHAT_BYTES || text.chars().any(char::is_control) {
            return Err(Rejected::InvalidChat);
        }
        self.chats.push((slot, channel, text));
        Ok(())
    }

    /// Advances one tick.
    pub fn step(&mut self, out: &mut Vec<Output>) {
        self.step_with(out, &mut |_| {});
    }

    /// Advances one tick, calling `done(phase)` as each system finishes (the runner times the phases with it; the
    /// game itself reads no clock).
    pub fn step_with(&mut self, out: &mut Vec<Output>, done: &mut impl FnMut(Phase)) {
        self.tick += 1;
        self.respawns();
        done(Phase::Respawns);
        self.apply_inputs();
        done(Phase::Inputs);
        self.npc_ai();
        done(Phase::NpcAi);
        self.movement();
        done(Phase::Movement);
        self.combat(out);
        done(Phase::Combat);
        self.chat(out);
        done(Phase::Chat);
        self.portals(out);
        done(Phase::Portals);
        self.snapshots(out);
        done(Phase::Snapshots);
    }

    fn respawns(&mut self) {
        for slot in 0..self.world.slots() {
            if !self.world.alive[slot] || self.world.health[slot].respawn_at == 0 {
                continue;
            }
            if self.tick < self.world.health[slot].respawn_at {
                continue;
            }
            let max_hp = self.world.health[slot].max_hp;
            self.world.health[slot] = Health { hp: max_hp, max_hp, respawn_at: 0 };
            let pos = match (&self.world.player[slot], &mut self.world.npc[slot]) {
                (Some(p), _) => {
                    let sp = self.zone.spawn_points[(p.player_id % self.zone.spawn_points.len() as u64) as usize];
                    Vec2::new(sp[0], sp[1])
                }
                (None, Some(n)) => {
                    n.state = NpcState::Idle;
                    n.home
                }
                _ => self.world.pos[slot],
            };
            self.world.pos[slot] = pos;
            self.world.touch(slot);
            self.grid.update(slot as u32, pos);
            if self.world.player[slot].is_some() {
                self.stats_changed.push(slot);
            }
        }
    }

    fn apply_inputs(&mut self) {
        let speed = self.zone.player_speed;
        for slot in 0..self.world.slots() {
            // `kind` first: it is one byte per slot, while the (mostly empty) player column is large, and reading
            // it for every NPC was a visible share of the tick at 20,000 NPCs.
            if !self.world.alive[slot] || self.world.kind[slot] != Kind::Player {
                continue;
            }
            let dead = self.world.health[slot].is_dead();
            let Some(p) = self.world.player[slot].as_mut() else { continue };
            let mut moved = false;
            let mut dir = Vec2::default();
            for _ in 0..MAX_INPUTS_PER_TICK {
                let Some(input) = p.pending.pop_front() else { break };
                p.last_input = input.sequence;
                p.last_input_time_us = input.client_time_us;
                self.stats.inputs_applied += 1;
                if dead || p.transferring {
                    continue;
                }
                let d = input.move_dir.unwrap_or_default();
                dir = Vec2::new(d.x, d.y);
                moved = true;
                if input.ability != 0 {
                    self.ability_uses.push(AbilityUse { slot, ability: input.ability, target: input.target_entity });
                }
            }
            if dead || p.transferring {
                self.world.set_vel(slot, Vec2::default());
            } else if moved {
                self.world.set_vel(slot, dir.scale(speed));
            } else if p.pending.is_empty() {
                // No input this tick: keep the last velocity for one tick of jitter tolerance is a client
                // concern; the server stops the player so a disconnected client does not drift.
                self.world.set_vel(slot, Vec2::default());
            }
        }
    }

    fn npc_ai(&mut self) {
        let think_every = u64::from((self.tick_rate / 2).max(1));
        for slot in 0..self.world.slots() {
            if !self.world.alive[slot] || self.world.health[slot].is_dead() {
                continue;
            }
            let Some(npc) = self.world.npc[slot].as_ref() else { continue };
            let spawn = &self.zone.npc_spawns[npc.spawn_index];
            let (speed, aggro, leash) = (spawn.speed, spawn.aggro_radius, spawn.leash_radius);
            let pos = self.world.pos[slot];
            let home = npc.home;
            let mut state = npc.state;
            if self.tick >= npc.next_think {
                state = match state {
                    NpcState::Idle | NpcState::Wander(_) => match self.nearest_player(pos, aggro) {
                        Some(target) => NpcState::Chase(target),
                        None if matches!(state, NpcState::Idle) && self.rng.below(5) == 0 => {
                            let p = Vec2::new(home.x + self.rng.range(-8.0, 8.0), home.y + self.rng.range(-8.0, 8.0));
                            NpcState::Wander(self.clamp(p))
                        }
                        None => state,
                    },
                    other => other,
                };
            }
            // Chase validity is checked every tick: a dead or vanished target, or the leash, ends it.
            if let NpcState::Chase(t) = state {
                let valid = self.world.slot(t).is_some_and(|ts| {
                    !self.world.health[ts].is_dead() && self.world.player[ts].as_ref().is_some_and(|p| p.targetable())
                });
                if !valid || pos.dist2(home) > leash * leash {
                    state = NpcState::Return;
                }
            }
            let vel = match state {
                NpcState::Idle => Vec2::default(),
                NpcState::Wander(to) => {
                    if pos.dist2(to) < 0.25 {
                        state = NpcState::Idle;
                        Vec2::default()
                    } else {
                        to.minus(pos).normalized().scale(speed * 0.5)
                    }
                }
                NpcState::Chase(t) => {
                    let tp = self.world.slot(t).map_or(pos, |ts| self.world.pos[ts]);
                    if pos.dist2(tp) <= (NPC_ATTACK_RANGE * 0.8).powi(2) {
                        Vec2::default()
                    } else {
                        tp.minus(pos).normalized().scale(speed)
                    }
                }
                NpcState::Return => {
                    if pos.dist2(home) < 1.0 {
                        state = NpcState::Idle;
                        let max = self.world.health[slot].max_hp;
                        self.world.health[slot].hp = max;
                        self.world.touch(slot);
                        Vec2::default()
                    } else {
                        home.minus(pos).normalized().scale(speed * 1.5)
                    }
                }
            };
            // Steering: a heading recomputed every tick differs from the last by float noise alone (an NPC
            // walking straight to a point) or by a little (one chasing a walking player). Each change makes
            // protocol v2 look at the entity again ([`World::touch`]) and send it to every observer, so a heading
            // within 5% of the speed (3 degrees) is kept, and one within 25% for up to `REAIM_TICKS` ticks (a
            // chaser re-aims five times a second unless its target turns sharply). Stopping is always at once.
            // Measured (tick benchmark, players spread): wandering and chasing NPCs were 2,000 of the 2,500
            // entities looked at a tick, chasers re-aiming 830 of them.
            let off = self.world.vel[slot].minus(vel).len();
            let aimed = self.world.npc[slot].as_ref().map_or(0, |n| n.aimed_at);
            if vel == Vec2::default() || off > 0.25 * speed || (off > 0.05 * speed && self.tick >= aimed + REAIM_TICKS)
            {
                if self.world.vel[slot] != vel {
                    if let Some(npc) = self.world.npc[slot].as_mut() {
                        npc.aimed_at = self.tick;
                    }
                }
                self.world.set_vel(slot, vel);
            }
            if let Some(npc) = self.world.npc[slot].as_mut() {
                if self.tick >= npc.next_think {
                    npc.next_think = self.tick + think_every;
                }
                npc.state = state;
            }
        }
    }

    fn nearest_player(&mut self, pos: Vec2, radius: f32) -> Option<EntityId> {
        let mut best: Option<(f32, usize)> = None;
        let r2 = radius * radius;
        let world = &self.world;
        self.grid.for_each_candidate(pos, radius, |s, d2| {
            let s = s as usize;
            // Distance, then the one-byte kind, before the large player column.
            if d2 > r2 || world.kind[s] != Kind::Player {
                return;
            }
            if let Some(p) = world.player[s].as_ref() {
                if !p.targetable() || world.health[s].is_dead() {
                    return;
                }
                if best.is_none_or(|(bd, bs)| d2 < bd || (d2 == bd && s < bs)) {
                    best = Some((d2, s));
                }
            }
        });
        best.map(|(_, s)| self.world.id(s))
    }

    fn movement(&mut self) {
        let max = self.zone.size - 0.01;
        for slot in 0..self.world.slots() {
            if !self.world.alive[slot] {
                continue;
            }
            let v = self.world.vel[slot];
            if v.x == 0.0 && v.y == 0.0 {
                continue;
            }
            let moved = self.world.pos[slot].plus(v.scale(self.dt));
            let p = Vec2::new(moved.x.clamp(0.0, max), moved.y.clamp(0.0, max));
            self.world.pos[slot] = p;
            if p != moved {
                // Stopped by the zone's edge: off its trajectory.
                self.world.touch(slot);
            }
            self.grid.update(slot as u32, p);
            if self.world.kind[slot] == Kind::Player {
                if let Some(pd) = self.world.player[slot].as_mut() {
                    pd.dirty = true;
                }
            }
        }
    }

    fn roll(&mut self, range: [i32; 2]) -> i32 {
        range[0] + self.rng.below((range[1] - range[0] + 1).max(1) as u32) as i32
    }

    fn combat(&mut self, out: &mut Vec<Output>) {
        // Player abilities, in the order the inputs were applied (slot order): deterministic.
        let uses = std::mem::take(&mut self.ability_uses);
        for u in &uses {
            let Some(ability) = ABILITIES.iter().find(|a| a.id == u.ability).copied() else { continue };
            let idx = ability.id as usize;
            let ready = self.world.player[u.slot].as_ref().is_some_and(|p| p.cooldown_until[idx] <= self.tick);
            if !ready || self.world.health[u.slot].is_dead() {
                continue;
            }
            if ability.range == 0.0 {
                let amount = self.roll(ability.amount);
                let h = &mut self.world.health[u.slot];
                h.hp = (h.hp + amount).min(h.max_hp);
                self.world.touch(u.slot);
                self.set_cooldown(u.slot, ability);
                self.stats_changed.push(u.slot);
                continue;
            }
            let Some(ts) = self.world.slot(u.target) else { continue };
            if ts == u.slot || self.world.health[ts].is_dead() || self.world.kind[ts] != Kind::Npc {
                continue; // no player-versus-player in this zone
            }
            if self.world.pos[u.slot].dist2(self.world.pos[ts]) > ability.range * ability.range {
                self.event(out, u.slot, CombatEventKind::CombatEventMiss, u.slot, ts, ability.id, 0);
                continue;
            }
            self.set_cooldown(u.slot, ability);
            let damage = self.roll(ability.amount);
            self.hit(out, u.slot, ts, ability.id, damage);
        }
        self.ability_uses = uses;
        self.ability_uses.clear();

        // NPC attacks.
        let attack_ticks = secs_to_ticks(NPC_ATTACK_SECS, self.tick_rate);
        for slot in 0..self.world.slots() {
            if !self.world.alive[slot] || self.world.health[slot].is_dead() {
                continue;
            }
            let Some(npc) = self.world.npc[slot].as_ref() else { continue };
            let NpcState::Chase(target) = npc.state else { continue };
            if npc.attack_ready > self.tick {
                continue;
            }
            let Some(ts) = self.world.slot(target) else { continue };
            if self.world.pos[slot].dist2(self.world.pos[ts]) > NPC_ATTACK_RANGE * NPC_ATTACK_RANGE {
                continue;
            }
            let range = self.zone.npc_spawns[npc.spawn_index].damage;
            if let Some(n) = self.world.npc[slot].as_mut() {
                n.attack_ready = self.tick + attack_ticks;
            }
            let damage = self.roll(range);
            self.hit(out, slot, ts, 0, damage);
        }

        for slot in std::mem::take(&mut self.stats_changed) {
            self.send_stats(out, slot);
        }
    }

    fn set_cooldown(&mut self, slot: usize, ability: Ability) {
        let until = self.tick + secs_to_ticks(ability.cooldown_secs, self.tick_rate);
        if let Some(p) = self.world.player[slot].as_mut() {
            p.cooldown_until[ability.id as usize] = until;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        out: &mut Vec<Output>,
        to: usize,
        kind: CombatEventKind,
        src: usize,
        dst: usize,
        ability: u32,
        amount: i32,
    ) {
        if let Some(p) = self.world.player[to].as_ref() {
            let ev = CombatEvent {
                kind: kind as i32,
                source_entity: self.world.id(src),
                target_entity: self.world.id(dst),
                ability,
                amount,
                tick: self.tick,
            };
            out.push(Output::Control { session: p.session, msg: ControlMessage::new(Body::CombatEvent(ev)) });
        }
    }

    fn hit(&mut self, out: &mut Vec<Output>, src: usize, dst: usize, ability: u32, damage: i32) {
        self.stats.combat_hits += 1;
        let combat_until = self.tick + secs_to_ticks(5.0, self.tick_rate);
        self.world.in_combat_until[src] = combat_until;
        self.world.in_combat_until[dst] = combat_until;
        self.world.touch(src);
        self.world.touch(dst);
        let h = &mut self.world.health[dst];
        h.hp = (h.hp - damage).max(0);
        let killed = h.hp == 0;
        self.event(out, src, CombatEventKind::CombatEventHit, src, dst, ability, damage);
        self.event(out, dst, CombatEventKind::CombatEventHit, src, dst, ability, damage);
        if self.world.player[dst].is_some() {
            self.stats_changed.push(dst);
            if let Some(p) = self.world.player[dst].as_mut() {
                p.dirty = true;
            }
        }
        if !killed {
            // A player hitting an idle NPC pulls it into the fight.
            let attacker = self.world.player[src].is_some().then(|| self.world.id(src));
            if let (Some(n), Some(attacker)) = (self.world.npc[dst].as_mut(), attacker) {
                if matches!(n.state, NpcState::Idle | NpcState::Wander(_)) {
                    n.state = NpcState::Chase(attacker);
                }
            }
            return;
        }
        self.stats.kills += 1;
        let respawn_secs = match &self.world.npc[dst] {
            Some(n) => self.zone.npc_spawns[n.spawn_index].respawn_secs,
            None => PLAYER_RESPAWN_SECS,
        };
        self.world.health[dst].respawn_at = self.tick + secs_to_ticks(respawn_secs as f32, self.tick_rate);
        self.world.set_vel(dst, Vec2::default());
        self.event(out, src, CombatEventKind::CombatEventKill, src, dst, ability, 0);
        self.event(out, dst, CombatEventKind::CombatEventKill, src, dst, ability, 0);
        if self.world.player[src].is_some() && self.world.npc[dst].is_some() {
            if self.rng.below(100) < LOOT_CHANCE_PERCENT {
                let kind = self.world.npc[dst].as_ref().map_or(0, |n| n.spawn_index as u32 + 1);
                if let Some(p) = self.world.player[src].as_ref() {
                    out.push(Output::Loot { session: p.session, item_kind: kind, quantity: 1 });
                }
            }
            let gained = 10 * u64::from(self.world.level[dst]);
            self.world.xp[src] += gained;
            self.event(out, src, CombatEventKind::CombatEventXp, src, dst, 0, gained as i32);
            while self.world.xp[src] >= xp_to_next(self.world.level[src]) {
                self.world.xp[src] -= xp_to_next(self.world.level[src]);
                self.world.level[src] += 1;
                let max_hp = player_max_hp(self.world.level[src]);
                self.world.health[src] = Health { hp: max_hp, max_hp, respawn_at: 0 };
                self.world.touch(src);
                let level = self.world.level[src] as i32;
                self.event(out, src, CombatEventKind::CombatEventLevelUp, src, src, 0, level);
            }
            if let Some(p) = self.world.player[src].as_mut() {
                p.dirty = true;
            }
            self.stats_changed.push(src);
        }
    }

    fn send_stats(&self, out: &mut Vec<Output>, slot: usize) {
        let Some(p) = self.world.player.get(slot).and_then(Option::as_ref) else { return };
        if !self.world.alive[slot] {
            return;
        }
        let h = self.world.health[slot];
        let stats = PlayerStats {
            hp: h.hp,
            max_hp: h.max_hp,
            level: self.world.level[slot],
            xp: self.world.xp[slot],
            xp_to_next: xp_to_next(self.world.level[slot]),
        };
        out.push(Output::Control { session: p.session, msg: ControlMessage::new(Body::PlayerStats(stats)) });
    }

    /// Delivers this tick's lines, in the order they came, each to its recipients or, over a chat limit, as one
    /// `ChatRefused` to its sender alone.
    fn chat(&mut self, out: &mut Vec<Output>) {
        let chats = std::mem::take(&mut self.chats);
        self.chat_limiter.start_tick(self.tick);
        let mut recipients = std::mem::take(&mut self.chat_recipients);
        for (slot, channel, text) in chats {
            let Some(sender) = self.world.player.get(slot).and_then(Option::as_ref) else { continue };
            let refuse = |refusal: Refusal| {
                let refused = ControlMessage::new(Body::ChatRefused(refusal.to_proto(channel)));
                Output::Control { session: sender.session, msg: refused }
            };
            // The sender's allowance first: a flood is refused before its recipients are looked for.
            let allowed = match self.chat_limiter.check_sender(sender.player_id, channel) {
                Ok(allowed) => allowed,
                Err(refusal) => {
                    out.push(refuse(refusal));
                    continue;
                }
            };
            recipients.clear();
            match channel {
                ChatChannel::Zone => recipients.extend(self.sessions.keys().copied()),
                ChatChannel::Say => {
                    let mut near = std::mem::take(&mut self.scratch);
                    self.grid.within(self.world.pos[slot], SAY_RADIUS, &mut near);
                    let players = near.iter().filter_map(|&(_, s)| self.world.player[s as usize].as_ref());
                    recipients.extend(players.map(|p| p.session));
                    self.scratch = near;
                }
            }
            if let Err(refusal) = self.chat_limiter.admit(allowed, recipients.len()) {
                out.push(refuse(refusal));
                continue;
            }
            let msg = crate::proto::ChatMessage {
                channel: channel as i32,
                from_entity: self.world.id(slot),
                from_name: sender.name.clone(),
                text,
            };
            self.stats.chats += 1;
            for &session in &recipients {
                out.push(Output::Control { session, msg: ControlMessage::new(Body::ChatMessage(msg.clone())) });
            }
        }
        self.chat_recipients = recipients;
    }

    fn portals(&mut self, out: &mut Vec<Output>) {
        if self.zone.portals.is_empty() {
            return;
        }
        for (&session, &id) in &self.sessions {
            let Some(slot) = self.world.slot(id) else { continue };
            let Some(p) = self.world.player[slot].as_mut() else { continue };
            if p.transferring || self.world.health[slot].is_dead() {
                continue;
            }
            let pos = self.world.pos[slot];
            let inside = self.zone.portals.iter().position(|pt| pt.contains(pos.x, pos.y));
            let entered = inside.is_some() && !p.in_portal;
            p.in_portal = inside.is_some();
            if let (Some(portal), true) = (inside, entered) {
                p.transferring = true;
                p.dirty = true;
                out.push(Output::PortalEntered { session, portal });
            }
        }
    }

    /// Builds every in-game player's snapshot, in three passes so that no pass both chases random slots and does
    /// much work per slot (measured: the encoding cache's lookups by slot, interleaved with encoding on first
    /// use, were the largest single cost of the tick in a crowd):
    /// 1. each v1 player's visible set (AOI query), appended to one flat list, and every slot seen marked in a
    ///    bitmap of the world's slots (small enough to stay in L1);
    /// 2. every marked entity encoded once, in slot order (sequential reads of the world's columns), and every
    ///    entity a v2 view wants published ([`Encoder::encode`]);
    /// 3. each snapshot assembled from those encodings (a short loop per entity: lookups overlap in the CPU); a v2
    ///    client's view is queried here, in the same visit, for the next ticks ([`super::delta`]).
    fn snapshots(&mut self, out: &mut Vec<Output>) {
        let mut visible = std::mem::take(&mut self.scratch);
        let mut ids = std::mem::take(&mut self.scratch_ids);
        let mut cache = std::mem::take(&mut self.snapshot_cache);
        let slots = self.world.slots();
        cache.need.clear();
        cache.need.resize(slots.div_ceil(64), 0);
        cache.delta.begin(slots, self.tick);
        cache.encoded.resize(slots, (0, 0, 0));
        cache.arena.clear();
        cache.lists.clear();
        cache.views.clear();
        cache.sent.clear();
        let mut buf = Shared::reclaim(std::mem::take(&mut self.snapshot_buf));
        // Players in AOI-cell order: consecutive queries share most of their cells, which stay in cache
        // (measured: the dominant cost of AOI at scale is cache misses). Ties by session keep it deterministic.
        let mut order = std::mem::take(&mut self.scratch_order);
        order.clear();
        for (&session, &id) in &self.sessions {
            // No snapshot is built for a player whose UDP endpoint is not bound yet: it could not be delivered.
            if let Some(slot) =
                self.world.slot(id).filter(|&s| self.world.player[s].as_ref().is_some_and(|p| p.udp_bound))
            {
                order.push((self.grid.cell_of_slot(slot as u32).unwrap_or(0), session, slot));
            }
        }
        order.sort_unstable();
        // Pass 1: visible sets (v1; a v2 client's view is kept from tick to tick, see pass 3).
        let requery = self.view_period;
        let mut any_v2 = false;
        for &(_, session, slot) in &order {
            let Some(player) = self.world.player[slot].as_ref() else { continue };
            let pos = self.world.pos[slot];
            if player.delta.is_some() {
                any_v2 = true;
                cache.views.push(View { session, slot, start: 0, len: 0, total: 0, v2: true });
                continue;
            }
            let world = &self.world;
            cache.prev.clear();
            cache.prev.extend(player.visible.iter().filter_map(|&id| world.slot(id)).map(|s| s as u32));
            let total = self.grid.visible_nearest(
                pos,
                self.enter_r,
                self.leave_r,
                &cache.prev,
                MAX_SNAPSHOT_ENTITIES,
                &mut visible,
            );
            let start = cache.lists.len() as u32;
            for &(_, s) in &visible {
                cache.need[s as usize / 64] |= 1 << (s % 64);
                cache.lists.push(s);
            }
            cache.views.push(View { session, slot, start, len: visible.len() as u32, total: total as u32, v2: false });
        }
        // Pass 2: each entity any snapshot shows, encoded once.
        for (word_at, &word) in cache.need.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let s = word_at * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let state = self.entity_state(s);
                let start = cache.arena.len();
                proto::encode_entity_field(&state, &mut cache.arena);
                cache.encoded[s] = (state.id, start as u32, (cache.arena.len() - start) as u32);
            }
        }
        // Every live entity's v2 state is published (in slot order: sequential reads of the world's columns,
        // measured cheaper than marking each view's entities as pass 1 met them).
        if any_v2 {
            cache.delta.encode(self.tick, self.tick_rate, self.world.touched(), |s| self.published_state(s));
        }
        // Pass 3: the snapshots, what each reads of the v2 players' records and links prefetched a few clients
        // ahead ([`Simulation::prefetch_ahead`]).
        for (k, view) in cache.views.iter().enumerate() {
            self.prefetch_ahead(&cache.views, k);
            // The acknowledgements received since the last tick go to its link.
            if let Some(p) = self.world.player[view.slot].as_mut() {
                if let Some(link) = p.delta.as_deref_mut() {
                    p.acks.apply(link);
                }
            }
            let Some(player) = self.world.player[view.slot].as_ref() else { continue };
            if view.v2 {
                let Some(mut link) = self.world.player[view.slot].as_mut().and_then(|p| p.delta.take()) else {
                    continue;
                };
                let Some(player) = self.world.player[view.slot].as_ref() else { continue };
                let pos = self.world.pos[view.slot];
                // A view never queried (the client's first snapshot) or left behind by a jump is queried before
                // this snapshot; the slots it adds are published now (pass 2 has run).
                let (last_input, last_input_time_us) = (player.last_input, player.last_input_time_us);
                let urgent = link.query_urgent(pos);
                if urgent {
                    self.query_view(&mut link, pos, &mut visible, &mut ids, &mut cache.prev, cache.delta.slot_marks());
                    let slots = visible.iter().map(|&(_, s)| s as usize);
                    let (tick, rate) = (self.tick, self.tick_rate);
                    cache.delta.want_now(slots, tick + requery, tick, rate, |s| self.published_state(s));
                }
                let client = link.plan(self.tick);
                if client.base == 0 {
                    self.stats.delta_snapshots_whole += 1;
                } else {
                    self.stats.delta_snapshots_acknowledged += 1;
                }
                let header = DeltaSnapshot {
                    tick: self.tick,
                    baseline_tick: client.base,
                    last_processed_input: last_input,
                    input_client_time_us: last_input_time_us,
                    total_visible: link.total(),
                    entities: Vec::new(),
                    tick_rate: self.tick_rate,
                };
                let frame = Frame { tick: self.tick, client };
                let start = buf.len() as u32;
                let shown = match cache.delta.assemble_wanted(&mut link, &frame, &header, SNAPSHOT_BUDGET, &mut buf) {
                    Some(shown) => shown,
                    None => {
                        // Too much for one datagram (a view entered whole, or many changes at once): nearest first.
                        let world = &self.world;
                        link.retain_wanted(|id| world.slot(id).is_some());
                        visible.clear();
                        visible.extend(link.want().iter().map(|&id| {
                            let s = (id & 0xffff_ffff) as u32;
                            (world.pos[s as usize].dist2(pos), s)
                        }));
                        visible.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                        cache.prev.clear();
                        cache.prev.extend(visible.iter().map(|v| v.1));
                        cache.delta.assemble(&mut link, &frame, &header, &cache.prev, SNAPSHOT_BUDGET, &mut buf)
                    }
                };
                self.stats.snapshot_truncated_entities += u64::from(link.total()).saturating_sub(shown as u64);
                self.stats.snapshots_shown += shown as u64;
                // The view for the next ticks: an area-of-interest query every `requery` ticks, made here while
                // this client's data is in cache and kept in between (entities entering range show at most that
                // much later; datagrams stay at the tick rate). Its entities are published until the next one.
                // The phase is the client's place in this pass's order: each tick queries the clients of one
                // `1 / requery` run of it, neighbours in AOI-cell order whose queries share cells in the cache, and
                // as many clients every tick (phased by slot they were scattered; phased by cell block, the
                // clients of a crowd came due on the same tick: the crowd's tick p99 went from 4.5 to 6.3 ms in the
                // tick benchmark). A client whose place moves keeps at most `requery` ticks between its queries
                // ([`DeltaLink::query_due`]). Measured (tick benchmark, four runs): 3% of the phase in both layouts.
                if !urgent && link.query_due(self.tick, requery, k as u64 * requery / cache.views.len() as u64) {
                    self.query_view(&mut link, pos, &mut visible, &mut ids, &mut cache.prev, cache.delta.slot_marks());
                    cache.delta.want(visible.iter().map(|&(_, s)| s as usize), self.tick + requery, self.tick);
                }
                if let Some(p) = self.world.player[view.slot].as_mut() {
                    p.delta = Some(link);
                }
                self.stats.snapshots += 1;
                cache.sent.push((view.session, start, buf.len() as u32));
                continue;
            }
            let header = Snapshot {
                tick: self.tick,
                last_processed_input: player.last_input,
                input_client_time_us: player.last_input_time_us,
                entities: Vec::new(),
                total_visible: view.total,
            };
            // Budget: the snapshot inside its DataMessage envelope must fit one datagram. Entities are added
            // nearest first (the player itself is at distance 0) until the next one would not fit. The envelope
            // is one key byte and at most two length bytes (the whole is under 16 KiB).
            let mut used = 3 + prost::Message::encoded_len(&header);
            ids.clear();
            cache.parts.clear();
            for &s in &cache.lists[view.start as usize..(view.start + view.len) as usize] {
                let (id, start, len) = cache.encoded[s as usize];
                if used + len as usize > SNAPSHOT_BUDGET {
                    break;
                }
                used += len as usize;
                ids.push(id);
                cache.parts.push((start, len));
            }
            self.stats.snapshot_truncated_entities += u64::from(view.total) - ids.len() as u64;
            self.stats.snapshots_shown += ids.len() as u64;
            let start = buf.len() as u32;
            let arena = &cache.arena;
            let parts = cache.parts.iter().map(|&(start, len)| &arena[start as usize..(start + len) as usize]);
            proto::encode_snapshot(&header, parts, &mut buf);
            debug_assert!(buf.len() - start as usize <= SNAPSHOT_BUDGET);
            if let Some(p) = self.world.player[view.slot].as_mut() {
                std::mem::swap(&mut p.visible, &mut ids);
            }
            self.stats.snapshots += 1;
            cache.sent.push((view.session, start, buf.len() as u32));
        }
        let buf = Arc::new(buf);
        for &(session, start, end) in &cache.sent {
            let bytes = Shared::new(&buf, start as usize..end as usize);
            out.push(Output::Snapshot { session, snapshot: EncodedSnapshot { bytes } });
        }
        self.snapshot_buf = buf;
        self.world.clear_touched();
        self.scratch = visible;
        self.scratch_ids = ids;
        self.scratch_order = order;
        self.snapshot_cache = cache;
    }

    /// Before pass 3's snapshot of `views[k]`: prefetches the v2 player record [`PREFETCH_AHEAD`] x 3 views ahead,
    /// the link's first line and acknowledgement entries of the one 2 x ahead (reading its record, prefetched
    /// then) and the views the one [`PREFETCH_AHEAD`] ahead will read (reading its link's first line, prefetched
    /// then): each level's address comes from lines already brought in, nothing waits for memory but the first
    /// few snapshots, and the misses in flight stay a steady few (issued for 16 clients at a time, the
    /// prefetches themselves waited for free fill buffers). Measured (the tick benchmark, four runs each): 4% of
    /// the phase in both layouts against loading each batch's link lines two batches ahead, 1% more per client
    /// than per batch; 8 clients ahead measured as 4.
    fn prefetch_ahead(&self, views: &[View], k: usize) {
        const D: usize = PREFETCH_AHEAD;
        let world = &self.world;
        let v2 = |i: usize| views.get(i).filter(|v| v.v2);
        let link = |i: usize| {
            v2(i).and_then(|v| world.player[v.slot].as_ref()).and_then(|p| Some((p.delta.as_deref()?, &p.acks)))
        };
        let record = |i: usize| {
            if let Some(v) = v2(i) {
                crate::hint::prefetch_slice(std::slice::from_ref(&world.player[v.slot]));
            }
        };
        let header = |i: usize| {
            if let Some((link, acks)) = link(i) {
                link.prefetch(self.tick, acks);
            }
        };
        let lists = |i: usize| {
            if let Some((link, _)) = link(i) {
                link.prefetch_views(self.tick);
            }
        };
        if k == 0 {
            (0..3 * D).for_each(record);
            (0..2 * D).for_each(header);
            (0..D).for_each(lists);
        }
        record(k + 3 * D);
        header(k + 2 * D);
        lists(k + D);
    }

    /// A protocol-v2 view's area-of-interest query: the nearest `view_entities` around `pos` (hysteresis against
    /// the view it replaces) into `link`, and into `visible` as `(distance², slot)`.
    fn query_view(
        &mut self,
        link: &mut DeltaLink,
        pos: Vec2,
        visible: &mut Vec<(f32, u32)>,
        ids: &mut Vec<EntityId>,
        prev: &mut Vec<u32>,
        marks: &mut SlotMarks,
    ) {
        let world = &self.world;
        // The entities of the view it replaces still alive, by ascending id, and their slots.
        let old = &mut self.view_old;
        old.clear();
        old.extend(link.want().iter().copied().filter(|&id| world.slot(id).is_some()));
        prev.clear();
        prev.extend(old.iter().map(|&id| (id & 0xffff_ffff) as u32));
        // In no particular order: the view is kept by ascending id.
        let total = self.grid.visible_nearest_set(pos, self.enter_r, self.leave_r, prev, self.view_entities, visible);
        // By ascending id: the entities it keeps in the order they had, merged with the few new ones sorted
        // (measured: sorting the whole view was a quarter of the query).
        const WAS: u32 = 0;
        const KEPT: u32 = 1;
        let stamp = marks.fresh(world.slots());
        for &s in prev.iter() {
            marks.mark(s as usize, stamp, WAS);
        }
        let new = &mut self.view_new;
        new.clear();
        for &(_, s) in visible.iter() {
            if marks.get(s as usize, stamp) == Some(WAS) {
                marks.mark(s as usize, stamp, KEPT);
            } else {
                new.push(world.id(s as usize));
            }
        }
        new.sort_unstable();
        let mut new_ids = new.iter().copied().peekable();
        ids.clear();
        for &id in self.view_old.iter() {
            if marks.get((id & 0xffff_ffff) as usize, stamp) != Some(KEPT) {
                continue;
            }
            while let Some(n) = new_ids.next_if(|&n| n < id) {
                ids.push(n);
            }
            ids.push(id);
        }
        ids.extend(new_ids);
        link.set_view(self.tick, pos, total, ids);
    }

    /// What protocol v2 publishes for slot `s` this tick: its entity's id and quantized state and how it moves
    /// on untouched, `None` if it holds no live entity.
    fn published_state(&self, s: usize) -> Option<Now> {
        if !self.world.alive[s] {
            return None;
        }
        let (p, v) = (self.world.pos[s], self.world.vel[s]);
        // Each tick adds `v * dt` (in f32, as `movement` does) to the coordinates: the sum is rounded by at most
        // half a unit in its last place, at most 2^-24 of it. Bounded by the largest coordinate the entity can
        // reach before its next check (at most `MAX_DUE` ticks at this velocity) or the zone's edge.
        let travel = (v.x.abs() + v.y.abs()) * self.dt * MAX_DUE as f32;
        let reach = (p.x.abs().max(p.y.abs()) + travel).min(self.zone.size);
        let slop = reach * POS_SCALE / 16_777_216.0;
        let until = self.world.in_combat_until[s];
        Some(Now {
            id: self.world.id(s),
            q: self.qstate(s),
            step: [v.x * self.dt * POS_SCALE, v.y * self.dt * POS_SCALE],
            slop,
            until: if until > self.tick { until } else { u64::MAX },
        })
    }

    /// Tests: every entity the v2 publishing pass skips as unchanged is checked against the world, and a mismatch
    /// panics (a write to the world that does not [`World::touch`] its slot).
    pub fn check_published(&mut self) {
        self.snapshot_cache.delta.check_skips();
    }

    /// Protocol v2: wanted entities the publishing pass looked at and skipped as unchanged, since the start.
    pub fn publish_counts(&self) -> (u64, u64) {
        self.snapshot_cache.delta.publish_counts()
    }

    /// An entity as protocol v2 carries it (the same numbers as [`Simulation::entity_state`], quantized), its
    /// trajectory anchored now.
    pub(crate) fn qstate(&self, slot: usize) -> QState {
        let w = &self.world;
        let h = w.health[slot];
        QState {
            npc: w.kind[slot] == Kind::Npc,
            t: self.tick,
            x: quantize_pos(w.pos[slot].x),
            y: quantize_pos(w.pos[slot].y),
            vx: quantize_vel(w.vel[slot].x),
            vy: quantize_vel(w.vel[slot].y),
            hp: h.hp,
            max_hp: h.max_hp,
            level: w.level[slot],
            flags: u32::from(h.is_dead()) | u32::from(w.in_combat_until[slot] > self.tick) << 1,
        }
    }

    fn entity_state(&self, slot: usize) -> EntityState {
        let w = &self.world;
        let h = w.health[slot];
        let mut flags = 0;
        if h.is_dead() {
            flags |= 1;
        }
        if w.in_combat_until[slot] > self.tick {
            flags |= 2;
        }
        EntityState {
            id: w.id(slot),
            kind: match w.kind[slot] {
                Kind::Player => EntityKind::Player as i32,
                Kind::Npc => EntityKind::Npc as i32,
            },
            position: Some(proto::Vec2 { x: w.pos[slot].x, y: w.pos[slot].y }),
            velocity: Some(proto::Vec2 { x: w.vel[slot].x, y: w.vel[slot].y }),
            hp: h.hp,
            max_hp: h.max_hp,
            level: w.level[slot],
            flags,
        }
    }

    /// Re-files a slot in the AOI grid after a test moved it by hand.
    #[cfg(test)]
    pub(crate) fn grid_update_for_tests(&mut self, slot: usize) {
        self.grid.update(slot as u32, self.world.pos[slot]);
    }

    /// A hash of the whole world state (FNV-1a over every live entity in slot order). Equal hashes after the same
    /// commands are the determinism guarantee the replay tests check.
    pub fn world_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |v: u64| {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        mix(self.tick);
        let w = &self.world;
        for slot in 0..w.slots() {
            if !w.alive[slot] {
                continue;
            }
            mix(w.id(slot));
            mix(u64::from(w.pos[slot].x.to_bits()) << 32 | u64::from(w.pos[slot].y.to_bits()));
            mix(w.health[slot].hp as u64 ^ (w.health[slot].respawn_at << 20));
            mix(u64::from(w.level[slot]) << 40 ^ w.xp[slot]);
            if let Some(n) = &w.npc[slot] {
                mix(match n.state {
                    NpcState::Idle => 1,
                    NpcState::Wander(_) => 2,
                    NpcState::Chase(t) => 3 ^ (t << 2),
                    NpcState::Return => 4,
                });
            }
        }
        h
    }

    /// Checks invariants (tests, debug tooling): every live entity is in the right AOI cell exactly once, no hit
    /// points below zero or above the maximum, everything inside the zone.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.grid.check(&self.world.pos)?;
        for slot in 0..self.world.slots() {
            if !self.world.alive[slot] {
                if self.grid.cell_of_slot(slot as u32).is_some() {
                    return Err(format!("dead slot {slot} still in the grid"));
                }
                continue;
            }
            if self.grid.cell_of_slot(slot as u32).is_none() {
                return Err(format!("live slot {slot} missing from the grid"));
            }
            let h = self.world.health[slot];
            if h.hp < 0 || h.hp > h.max_hp {
                return Err(format!("slot {slot} has hp {} of {}", h.hp, h.max_hp));
            }
            let p = self.world.pos[slot];
            if !(0.0..self.zone.size).contains(&p.x) || !(0.0..self.zone.size).contains(&p.y) {
                return Err(format!("slot {slot} outside the zone at {p:?}"));
            }
        }
        Ok(())
    }
}
