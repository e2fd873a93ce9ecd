//! What the client knows about the game, built only from [`NetEvent`]s: the player, the entities of the last
//! snapshot, stats, the predicted position, the target, and the chat/combat log. Both the terminal UI and the
//! script runner feed it; it does no I/O.
//!
//! Invariant: the predictor is replaced on every [`NetEvent::Joined`] (login or zone transfer), because input
//! sequences restart with each session; reconciling a new session's snapshots against old inputs would teleport
//! the player.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::proto::{
    ChatChannel, ChatMessage, CombatEvent, CombatEventKind, EntityKind, EntityState, PlayerStats, Snapshot,
};

use super::net::{Joined, NetEvent, SessionEnd};
use super::prediction::{Pos, Predictor};

/// Player speed in the zones we know (m/s). The protocol does not announce it; reconciliation corrects any error.
pub const PLAYER_SPEED: f32 = 6.0;
/// Log lines kept for the UI.
pub const LOG_LINES: usize = 200;
/// `EntityState.flags` bit: dead.
pub const FLAG_DEAD: u32 = 1;
/// `EntityState.flags` bit: in combat.
pub const FLAG_IN_COMBAT: u32 = 2;

/// One ability the player has (mirrors the server's table; the server is authoritative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbilityInfo {
    /// Id on the wire and the key that triggers it.
    pub id: u32,
    /// Name shown to the player.
    pub name: &'static str,
    /// Reach in metres; 0 = self.
    pub range: f32,
}

/// The player's abilities: 1 strike, 2 firebolt, 3 heal self.
pub const ABILITIES: [AbilityInfo; 3] = [
    AbilityInfo { id: 1, name: "strike", range: 3.0 },
    AbilityInfo { id: 2, name: "firebolt", range: 25.0 },
    AbilityInfo { id: 3, name: "heal", range: 0.0 },
];

/// What kind of line the log holds (the UI colours them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Say chat.
    Say,
    /// Zone chat.
    Zone,
    /// Combat.
    Combat,
    /// Notices, transfers, errors.
    System,
}

/// One line of the chat/combat log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Category.
    pub kind: LogKind,
    /// Text.
    pub text: String,
    /// How many times this line arrived in a row (a notice repeated every tick shows once, with a count).
    pub count: u32,
}

/// Everything the client shows.
#[derive(Debug)]
pub struct GameState {
    /// The current session, once joined.
    pub joined: Option<Joined>,
    /// Entities of the last snapshot (nearest first), the player included.
    pub entities: Vec<EntityState>,
    /// Entities the server could see but cut from the last snapshot for size.
    pub total_visible: u32,
    /// The player's stats (last `PlayerStats`).
    pub stats: Option<PlayerStats>,
    /// Own movement prediction.
    pub predictor: Predictor,
    /// The newest server tick seen (snapshots and pongs).
    pub tick: u64,
    /// The tick of the last snapshot applied; older snapshots are dropped.
    snapshot_tick: u64,
    /// The last measured UDP round-trip time.
    pub rtt: Option<Duration>,
    /// The selected target entity.
    pub target: Option<u64>,
    /// Chat and combat lines, oldest first.
    pub log: VecDeque<LogLine>,
    /// Names learnt from chat (snapshots carry none).
    pub names: HashMap<u64, String>,
    /// How the session ended, once it did.
    pub ended: Option<SessionEnd>,
    /// Snapshots received in this session.
    pub snapshots: u64,
    /// The zone announced by the server before login.
    pub zone: String,
}

impl Default for GameState {
    fn default() -> Self {
        Self::new()
    }
}

impl GameState {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self {
            joined: None,
            entities: Vec::new(),
            total_visible: 0,
            stats: None,
            predictor: Predictor::new(Pos::default(), PLAYER_SPEED, 20),
            tick: 0,
            snapshot_tick: 0,
            rtt: None,
            target: None,
            log: VecDeque::new(),
            names: HashMap::new(),
            ended: None,
            snapshots: 0,
            zone: String::new(),
        }
    }

    /// Applies one event from the network threads.
    pub fn apply(&mut self, event: &NetEvent) {
        match event {
            NetEvent::Greeted { zone, .. } => self.zone = zone.clone(),
            NetEvent::Joined(j) => self.join(j),
            NetEvent::InputSent(input) => {
                let dir = input.move_dir.map(Pos::from).unwrap_or_default();
                self.predictor.apply_input(input.sequence, dir);
            }
            NetEvent::Snapshot(s) => self.snapshot(s),
            NetEvent::Chat(m) => self.chat(m),
            NetEvent::Combat(c) => {
                let text = self.describe_combat(c);
                self.push(LogKind::Combat, text);
            }
            NetEvent::Stats(s) => self.stats = Some(*s),
            NetEvent::Loot(l) => self.push(
                LogKind::Combat,
                format!("you received {} x item kind {} (item #{})", l.quantity, l.item_kind, l.item_id),
            ),
            NetEvent::Notice(text) => self.push(LogKind::System, format!("server: {text}")),
            NetEvent::Rtt { rtt, server_tick } => {
                self.rtt = Some(*rtt);
                self.tick = self.tick.max(*server_tick);
            }
            NetEvent::Transferring { zone, address } => {
                self.push(LogKind::System, format!("travelling to {zone} ({address})..."))
            }
            NetEvent::Ended(end) => {
                self.push(LogKind::System, end.to_string());
                self.ended = Some(end.clone());
            }
        }
    }

    fn join(&mut self, j: &Joined) {
        self.predictor = Predictor::new(j.position, PLAYER_SPEED, j.tick_rate_hz);
        self.entities.clear();
        self.target = None;
        self.stats = None;
        self.snapshots = 0;
        self.snapshot_tick = 0;
        self.zone = j.zone.clone();
        self.names.insert(j.entity_id, j.username.clone());
        self.push(LogKind::System, format!("entered {} as {}", j.zone, j.username));
        self.joined = Some(j.clone());
    }

    fn snapshot(&mut self, s: &Snapshot) {
        // An older snapshot (reordered datagram) would move entities back in time.
        if self.snapshots > 0 && s.tick < self.snapshot_tick {
            return;
        }
        self.snapshot_tick = s.tick;
        self.tick = self.tick.max(s.tick);
        self.snapshots += 1;
        self.entities.clone_from(&s.entities);
        self.total_visible = s.total_visible;
        if let Some(me) = self.own_entity() {
            let server = me.position.map(Pos::from).unwrap_or_default();
            self.predictor.reconcile(server, s.last_processed_input);
        }
        if let Some(t) = self.target {
            if !self.entities.iter().any(|e| e.id == t) {
                self.target = None;
            }
        }
    }

    fn chat(&mut self, m: &ChatMessage) {
        self.names.insert(m.from_entity, m.from_name.clone());
        let zone = m.channel == ChatChannel::Zone as i32;
        let (kind, tag) = if zone { (LogKind::Zone, "[zone] ") } else { (LogKind::Say, "") };
        self.push(kind, format!("{tag}{}: {}", m.from_name, m.text));
    }

    /// Adds a line of the client's own (not the server's) to the log.
    pub fn note(&mut self, text: impl Into<String>) {
        self.push(LogKind::System, text.into());
    }

    fn push(&mut self, kind: LogKind, text: String) {
        if let Some(last) = self.log.back_mut() {
            if last.kind == kind && last.text == text && kind != LogKind::Combat {
                last.count = last.count.saturating_add(1);
                return;
            }
        }
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { kind, text, count: 1 });
    }

    /// The player's own entity in the last snapshot.
    pub fn own_entity(&self) -> Option<&EntityState> {
        let me = self.joined.as_ref()?.entity_id;
        self.entities.iter().find(|e| e.id == me)
    }

    /// Where the player is, predicted.
    pub fn position(&self) -> Pos {
        self.predictor.position()
    }

    /// An entity of the last snapshot.
    pub fn entity(&self, id: u64) -> Option<&EntityState> {
        self.entities.iter().find(|e| e.id == id)
    }

    /// How to call an entity in the log.
    pub fn name_of(&self, id: u64) -> String {
        if self.joined.as_ref().is_some_and(|j| j.entity_id == id) {
            return "you".into();
        }
        if let Some(name) = self.names.get(&id) {
            return name.clone();
        }
        match self.entity(id) {
            Some(e) if e.kind == EntityKind::Npc as i32 => format!("npc#{id} (lv {})", e.level),
            Some(_) => format!("player#{id}"),
            None => format!("#{id}"),
        }
    }

    /// Living NPCs of the last snapshot with their distance from the predicted position, nearest first.
    pub fn npcs_by_distance(&self) -> Vec<(u64, f32)> {
        let here = self.position();
        let mut npcs: Vec<(u64, f32)> = self
            .entities
            .iter()
            .filter(|e| e.kind == EntityKind::Npc as i32 && e.flags & FLAG_DEAD == 0 && e.hp > 0)
            .map(|e| (e.id, e.position.map(Pos::from).unwrap_or_default().dist(here)))
            .collect();
        npcs.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        npcs
    }

    /// Selects the next (or previous) living NPC by distance, starting from the nearest; returns the new target.
    pub fn cycle_target(&mut self, forward: bool) -> Option<u64> {
        let npcs = self.npcs_by_distance();
        if npcs.is_empty() {
            self.target = None;
            return None;
        }
        let current = self.target.and_then(|t| npcs.iter().position(|&(id, _)| id == t));
        let next = match (current, forward) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % npcs.len(),
            (Some(i), false) => (i + npcs.len() - 1) % npcs.len(),
        };
        self.target = Some(npcs[next].0);
        self.target
    }

    /// Distance from the predicted position to an entity of the last snapshot.
    pub fn distance_to(&self, id: u64) -> Option<f32> {
        let e = self.entity(id)?;
        Some(e.position.map(Pos::from).unwrap_or_default().dist(self.position()))
    }

    /// A combat event as a sentence from the player's point of view.
    pub fn describe_combat(&self, c: &CombatEvent) -> String {
        let ability = ABILITIES.iter().find(|a| a.id == c.ability).map_or("attack", |a| a.name);
        let (src, dst) = (self.name_of(c.source_entity), self.name_of(c.target_entity));
        match CombatEventKind::try_from(c.kind) {
            Ok(CombatEventKind::CombatEventHit) => format!("{src} hit {dst} with {ability} for {}", c.amount),
            Ok(CombatEventKind::CombatEventMiss) => format!("{src} missed {dst} with {ability} (out of range)"),
            Ok(CombatEventKind::CombatEventKill) => format!("{src} killed {dst}"),
            Ok(CombatEventKind::CombatEventRespawn) => format!("{dst} respawned"),
            // Level-up and XP events name the player who progressed as the source.
            Ok(CombatEventKind::CombatEventLevelUp) => format!("{src} reached level {}", c.amount),
            Ok(CombatEventKind::CombatEventXp) => format!("{src} gained {} XP for {dst}", c.amount),
            Err(_) => format!("combat event {} from {src} to {dst}", c.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Input, Vec2};

    fn joined() -> Joined {
        Joined {
            player_id: 7,
            entity_id: 100,
            session_id: 1,
            zone: "starter-vale".into(),
            address: "127.0.0.1:7777".into(),
            tick_rate_hz: 20,
            position: Pos::new(1000.0, 1000.0),
            username: "ann".into(),
        }
    }

    fn entity(id: u64, kind: EntityKind, x: f32, y: f32, flags: u32) -> EntityState {
        EntityState {
            id,
            kind: kind as i32,
            position: Some(Vec2 { x, y }),
            hp: if flags & FLAG_DEAD != 0 { 0 } else { 50 },
            max_hp: 60,
            level: 2,
            flags,
            ..Default::default()
        }
    }

    fn snapshot(tick: u64, last: u32, me: (f32, f32), others: Vec<EntityState>) -> NetEvent {
        let mut entities = vec![entity(100, EntityKind::Player, me.0, me.1, 0)];
        entities.extend(others);
        NetEvent::Snapshot(Snapshot { tick, last_processed_input: last, entities, ..Default::default() })
    }

    fn input(sequence: u32, x: f32, y: f32) -> NetEvent {
        NetEvent::InputSent(Input { sequence, move_dir: Some(Vec2 { x, y }), ..Default::default() })
    }

    #[test]
    fn sent_inputs_move_the_player_and_snapshots_reconcile_it() {
        let mut s = GameState::new();
        s.apply(&NetEvent::Joined(joined()));
        for seq in 1..=4 {
            s.apply(&input(seq, 1.0, 0.0));
        }
        assert!((s.position().x - 1001.2).abs() < 1e-3, "{:?}", s.position());
        // The server has processed two inputs but (say) a wall stopped it after one.
        s.apply(&snapshot(10, 2, (1000.3, 1000.0), vec![]));
        assert!((s.position().x - 1000.9).abs() < 1e-3, "{:?}", s.position());
    }

    #[test]
    fn a_zone_transfer_restarts_prediction_from_the_new_spawn() {
        let mut s = GameState::new();
        s.apply(&NetEvent::Joined(joined()));
        for seq in 1..=5 {
            s.apply(&input(seq, 1.0, 0.0));
        }
        let mut there = joined();
        there.position = Pos::new(30.0, 1000.0);
        there.zone = "dark-forest".into();
        s.apply(&NetEvent::Joined(there));
        assert_eq!(s.position(), Pos::new(30.0, 1000.0));
        assert_eq!(s.predictor.pending(), 0, "old session's inputs are not replayed");
        s.apply(&input(1, 0.0, 1.0));
        assert!((s.position().y - 1000.3).abs() < 1e-3);
    }

    #[test]
    fn tab_cycles_living_npcs_nearest_first_and_wraps() {
        let mut s = GameState::new();
        s.apply(&NetEvent::Joined(joined()));
        let npcs = vec![
            entity(3, EntityKind::Npc, 1020.0, 1000.0, 0),
            entity(1, EntityKind::Npc, 1005.0, 1000.0, 0),
            entity(2, EntityKind::Npc, 1001.0, 1000.0, FLAG_DEAD),
            entity(4, EntityKind::Player, 1002.0, 1000.0, 0),
            entity(5, EntityKind::Npc, 1000.0, 1010.0, 0),
        ];
        s.apply(&snapshot(1, 0, (1000.0, 1000.0), npcs));
        assert_eq!(s.cycle_target(true), Some(1));
        assert_eq!(s.cycle_target(true), Some(5));
        assert_eq!(s.cycle_target(true), Some(3));
        assert_eq!(s.cycle_target(true), Some(1), "wraps around");
        assert_eq!(s.cycle_target(false), Some(3), "shift-tab goes back");
        // A target that leaves the snapshot is dropped.
        s.apply(&snapshot(2, 0, (1000.0, 1000.0), vec![entity(1, EntityKind::Npc, 1005.0, 1000.0, 0)]));
        assert_eq!(s.target, None);
    }

    #[test]
    fn a_late_snapshot_does_not_rewind_the_world() {
        let mut s = GameState::new();
        s.apply(&NetEvent::Joined(joined()));
        s.apply(&snapshot(10, 0, (1000.0, 1000.0), vec![entity(1, EntityKind::Npc, 1005.0, 1000.0, 0)]));
        s.apply(&snapshot(9, 0, (1000.0, 1000.0), vec![]));
        assert_eq!(s.tick, 10);
        assert!(s.entity(1).is_some());
        // A pong carrying a newer tick must not make the next snapshot look late.
        s.apply(&NetEvent::Rtt { rtt: Duration::from_millis(3), server_tick: 12 });
        s.apply(&snapshot(11, 0, (1000.0, 1000.0), vec![]));
        assert!(s.entity(1).is_none(), "snapshot 11 applied");
        assert_eq!(s.tick, 12);
    }

    #[test]
    fn combat_and_chat_become_readable_log_lines() {
        let mut s = GameState::new();
        s.apply(&NetEvent::Joined(joined()));
        s.apply(&snapshot(1, 0, (1000.0, 1000.0), vec![entity(9, EntityKind::Npc, 1010.0, 1000.0, 0)]));
        let hit = CombatEvent {
            kind: CombatEventKind::CombatEventHit as i32,
            source_entity: 100,
            target_entity: 9,
            ability: 2,
            amount: 21,
            tick: 1,
        };
        s.apply(&NetEvent::Combat(hit));
        let xp = CombatEvent { kind: CombatEventKind::CombatEventXp as i32, ability: 0, amount: 20, ..hit };
        s.apply(&NetEvent::Combat(xp));
        let chat = ChatMessage {
            channel: ChatChannel::Zone as i32,
            from_entity: 55,
            from_name: "bob".into(),
            text: "hi".into(),
        };
        s.apply(&NetEvent::Chat(chat));
        let lines: Vec<&str> = s.log.iter().map(|l| l.text.as_str()).collect();
        assert!(lines.contains(&"you hit npc#9 (lv 2) with firebolt for 21"), "{lines:?}");
        assert!(lines.contains(&"you gained 20 XP for npc#9 (lv 2)"), "{lines:?}");
        assert!(lines.contains(&"[zone] bob: hi"), "{lines:?}");
        assert_eq!(s.name_of(55), "bob", "names are learnt from chat");
        // A notice the server repeats every tick is one line with a count.
        for _ in 0..3 {
            s.apply(&NetEvent::Notice("the road is closed".into()));
        }
        let last = s.log.back().unwrap();
        assert_eq!((last.text.as_str(), last.count), ("server: the road is closed", 3));
    }
}
