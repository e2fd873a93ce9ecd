//! World storage, ECS style: an entity is a slot index plus a generation; each component is a dense array indexed
//! by slot (struct of arrays), so systems stream through memory instead of chasing pointers.
//!
//! Invariant: a slot's components are meaningful only while `alive[slot]`; an [`EntityId`] from before a despawn
//! never resolves again (the generation changed), so stale ids held by AI targets or sessions are harmless.

use std::collections::VecDeque;

use crate::link::SessionId;
use crate::proto::Input;

/// An entity: `generation << 32 | slot`. Never 0 (0 means "none" on the wire).
pub type EntityId = u64;

/// A 2-D vector.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Vec2 {
    /// X.
    pub x: f32,
    /// Y.
    pub y: f32,
}

impl Vec2 {
    /// A vector.
    pub const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }
    /// Squared distance.
    pub fn dist2(self, o: Vec2) -> f32 {
        let (dx, dy) = (self.x - o.x, self.y - o.y);
        dx * dx + dy * dy
    }
    /// Length.
    pub fn len(self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }
    /// `self * k`.
    pub fn scale(self, k: f32) -> Vec2 {
        Vec2::new(self.x * k, self.y * k)
    }
    /// `self + o`.
    pub fn plus(self, o: Vec2) -> Vec2 {
        Vec2::new(self.x + o.x, self.y + o.y)
    }
    /// `self - o`.
    pub fn minus(self, o: Vec2) -> Vec2 {
        Vec2::new(self.x - o.x, self.y - o.y)
    }
    /// Unit vector in this direction (zero stays zero).
    pub fn normalized(self) -> Vec2 {
        let l = self.len();
        if l > 1e-6 {
            self.scale(1.0 / l)
        } else {
            Vec2::default()
        }
    }
}

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Controlled by a client.
    Player,
    /// Controlled by the AI system.
    Npc,
}

/// Hit points and death.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Current hit points (never negative).
    pub hp: i32,
    /// Maximum.
    pub max_hp: i32,
    /// While dead: the tick at which the entity respawns; 0 when alive.
    pub respawn_at: u64,
}

impl Health {
    /// True while dead.
    pub fn is_dead(&self) -> bool {
        self.respawn_at != 0
    }
}

/// Per-player data.
#[derive(Debug, Clone)]
pub struct PlayerData {
    /// The session driving this player.
    pub session: SessionId,
    /// Account id.
    pub player_id: u64,
    /// Display name.
    pub name: String,
    /// Inputs received and not yet applied, in sequence order.
    pub pending: VecDeque<Input>,
    /// Highest input sequence applied (acknowledged in snapshots).
    pub last_input: u32,
    /// `client_time_us` of that input, echoed for latency measurement.
    pub last_input_time_us: u64,
    /// Tick at which each ability is ready again (index = ability id).
    pub cooldown_until: [u64; 4],
    /// Entities sent in the last snapshot (AOI hysteresis).
    pub visible: Vec<EntityId>,
    /// Protocol v2 (delta snapshots): what was sent, what the client acknowledged. `None`: v1, full snapshots.
    pub delta: Option<Box<super::delta::DeltaLink>>,
    /// Protocol v2: the newest acknowledgements received since the last snapshot (`Input.snapshot_ack`, oldest
    /// first), given to the link when the snapshot phase loads it anyway (applied as each input arrived, they
    /// cost the queue drain a cache miss or two in a link it does not otherwise touch).
    pub acks: super::delta::Acks,
    /// Changed since the last save.
    pub dirty: bool,
    /// Set once the player walked into a portal; movement stops until the transfer completes.
    pub transferring: bool,
    /// Inside a portal's area: a portal fires when a player walks in, not on every tick spent inside.
    pub in_portal: bool,
    /// The player's UDP endpoint is bound (snapshots are built only then).
    pub udp_bound: bool,
    /// The player's connection dropped and it waits to be resumed: it stands still, NPCs ignore it (so it cannot
    /// be killed while away) and no snapshot is built for it.
    pub detached: bool,
}

impl PlayerData {
    /// Whether NPCs may chase and hit this player.
    pub fn targetable(&self) -> bool {
        !self.transferring && !self.detached
    }
}

/// What an NPC is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NpcState {
    /// Standing; wanders at `next_think`.
    Idle,
    /// Walking to a point near its spawn.
    Wander(Vec2),
    /// Chasing and attacking a player.
    Chase(EntityId),
    /// Leashed: walking back to spawn, ignoring players, healing on arrival.
    Return,
}

/// Per-NPC data.
#[derive(Debug, Clone)]
pub struct NpcData {
    /// Index into the zone's `npc_spawns`.
    pub spawn_index: usize,
    /// Home position.
    pub home: Vec2,
    /// Behaviour.
    pub state: NpcState,
    /// Next tick at which the NPC re-evaluates (staggered to spread the AI cost).
    pub next_think: u64,
    /// Tick at which its attack is ready.
    pub attack_ready: u64,
    /// Tick at which it last changed its velocity.
    pub aimed_at: u64,
}

/// All entities and their components.
#[derive(Debug, Default)]
pub struct World {
    generation: Vec<u32>,
    /// Whether a slot holds a live entity.
    pub alive: Vec<bool>,
    free: Vec<u32>,
    live: usize,
    /// Kind per slot.
    pub kind: Vec<Kind>,
    /// Position per slot.
    pub pos: Vec<Vec2>,
    /// Velocity per slot (metres per second, last tick).
    pub vel: Vec<Vec2>,
    /// Health per slot.
    pub health: Vec<Health>,
    /// Level per slot.
    pub level: Vec<u32>,
    /// Experience per slot (players).
    pub xp: Vec<u64>,
    /// Tick until which the entity counts as in combat.
    pub in_combat_until: Vec<u64>,
    /// Player component.
    pub player: Vec<Option<PlayerData>>,
    /// NPC component.
    pub npc: Vec<Option<NpcData>>,
    /// One bit per slot: something protocol v2 publishes of it (its entity, kind, position other than by its
    /// velocity, velocity, health, level, combat) was written since [`World::clear_touched`]. Every such write
    /// calls [`World::touch`] (or [`World::set_vel`]): the publishing pass looks only at touched slots and
    /// trajectories due a check (`crate::sim::delta::Encoder::encode`; a test checks every skipped slot).
    touched: Vec<u64>,
}

impl World {
    /// Slot of an id, if it is still alive.
    pub fn slot(&self, id: EntityId) -> Option<usize> {
        let slot = (id & 0xffff_ffff) as usize;
        let generation = (id >> 32) as u32;
        (self.alive.get(slot) == Some(&true) && self.generation[slot] == generation).then_some(slot)
    }

    /// Id of a live slot.
    pub fn id(&self, slot: usize) -> EntityId {
        (u64::from(self.generation[slot]) << 32) | slot as u64
    }

    /// Number of slots (live or free); systems iterate `0..slots()` and skip dead slots.
    pub fn slots(&self) -> usize {
        self.alive.len()
    }

    /// Live entities.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no entity is alive.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Marks that something published of `slot` was written ([`World::touched`]).
    pub fn touch(&mut self, slot: usize) {
        if let Some(word) = self.touched.get_mut(slot / 64) {
            *word |= 1 << (slot % 64);
        }
    }

    /// Sets `slot`'s velocity, touching the slot if it changes.
    pub fn set_vel(&mut self, slot: usize, vel: Vec2) {
        if self.vel[slot] != vel {
            self.vel[slot] = vel;
            self.touch(slot);
        }
    }

    /// One bit per slot (bit `s % 64` of word `s / 64`): touched since the last [`World::clear_touched`].
    pub fn touched(&self) -> &[u64] {
        &self.touched
    }

    /// Forgets the touches (after the snapshot phase).
    pub fn clear_touched(&mut self) {
        self.touched.fill(0);
    }

    /// Creates an entity; components start at neutral values.
    pub fn spawn(&mut self, kind: Kind, pos: Vec2, max_hp: i32, level: u32) -> EntityId {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.generation.push(0);
                self.alive.push(false);
                self.kind.push(kind);
                self.pos.push(pos);
                self.vel.push(Vec2::default());
                self.health.push(Health::default());
                self.level.push(level);
                self.xp.push(0);
                self.in_combat_until.push(0);
                self.player.push(None);
                self.npc.push(None);
                self.touched.resize(self.alive.len().div_ceil(64), 0);
                self.alive.len() - 1
            }
        };
        self.touch(slot);
        self.generation[slot] = self.generation[slot].wrapping_add(1).max(1);
        self.alive[slot] = true;
        self.kind[slot] = kind;
        self.pos[slot] = pos;
        self.vel[slot] = Vec2::default();
        self.health[slot] = Health { hp: max_hp, max_hp, respawn_at: 0 };
        self.level[slot] = level;
        self.xp[slot] = 0;
        self.in_combat_until[slot] = 0;
        self.player[slot] = None;
        self.npc[slot] = None;
        self.live += 1;
        self.id(slot)
    }

    /// Removes an entity; its id never resolves again.
    pub fn despawn(&mut self, id: EntityId) -> bool {
        let Some(slot) = self.slot(id) else { return false };
        self.touch(slot);
        self.alive[slot] = false;
        self.player[slot] = None;
        self.npc[slot] = None;
        self.free.push(slot as u32);
        self.live -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_never_resolve_after_slot_reuse() {
        let mut w = World::default();
        let a = w.spawn(Kind::Npc, Vec2::new(1.0, 1.0), 10, 1);
        assert_ne!(a, 0);
        assert!(w.despawn(a));
        let b = w.spawn(Kind::Npc, Vec2::new(2.0, 2.0), 10, 1);
        assert_eq!(w.slot(b), Some(0), "slot reused");
        assert_eq!(w.slot(a), None, "old id is stale");
        assert!(!w.despawn(a));
        assert_eq!(w.len(), 1);
    }
}
