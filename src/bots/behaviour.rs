//! What a bot does with its controls: the decisions only, fed the bot's view of the world (its own position and the
//! nearest living NPC from the latest snapshot) and a clock, returning the next `Input` fields or chat line. No I/O.
//!
//! The invariant a reader must not break: **every direction returned has length <= 1 and is finite**, because the
//! server refuses anything else as an invalid input (and a load test that sends invalid inputs measures nothing).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proto::ChatChannel;

/// Which behaviour the bots run (`--behaviour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// Walk, changing to a random direction every 1-3 s.
    Walk,
    /// Walk towards the nearest NPC in the snapshot and use abilities 1 (strike) and 2 (firebolt) on it.
    Fight,
    /// Walk, and send a chat line every ~10 s (three say lines for every zone line).
    Chat,
    /// A third of the bots each: walk, fight, chat (by bot index).
    Mixed,
}

/// The behaviour of one bot (`Mixed` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Walk,
    Fight,
    Chat,
}

impl Behaviour {
    /// The role of bot number `index`.
    pub(crate) fn role(self, index: usize) -> Role {
        match self {
            Behaviour::Walk => Role::Walk,
            Behaviour::Fight => Role::Fight,
            Behaviour::Chat => Role::Chat,
            Behaviour::Mixed => [Role::Walk, Role::Fight, Role::Chat][index % 3],
        }
    }
}

/// Strike: melee ability id and reach (mirrors `sim::game::ABILITIES`; the server is the judge, these only keep
/// the bot from spamming abilities it knows are out of range or cooling down).
const STRIKE: (u32, f32, u64) = (1, 3.0, 800_000);
/// Firebolt: ranged ability id, reach and cooldown in microseconds.
const FIREBOLT: (u32, f32, u64) = (2, 25.0, 2_500_000);
/// Fighters walk freely this long after login, so every bot moves even when an NPC stands on its spawn point.
const FIGHT_WARMUP_US: u64 = 1_500_000;
/// Average gap between chat lines.
const CHAT_EVERY_US: u64 = 10_000_000;

/// One input's worth of decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    pub move_dir: (f32, f32),
    pub ability: u32,
    pub target: u64,
}

/// The nearest living NPC the bot can see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Target {
    pub id: u64,
    pub x: f32,
    pub y: f32,
}

/// A bot's decision state.
#[derive(Debug)]
pub(crate) struct Brain {
    role: Role,
    rng: StdRng,
    dir: (f32, f32),
    next_turn_us: u64,
    started_us: u64,
    strike_ready_us: u64,
    bolt_ready_us: u64,
    next_chat_us: u64,
    chats: u64,
}

impl Brain {
    /// A brain for `role`, deterministic for a given `seed`, starting to play at `now_us`.
    pub(crate) fn new(role: Role, seed: u64, now_us: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let next_chat_us = now_us + rng.gen_range(CHAT_EVERY_US / 2..CHAT_EVERY_US * 3 / 2);
        Self {
            role,
            rng,
            dir: (1.0, 0.0),
            next_turn_us: 0,
            started_us: now_us,
            strike_ready_us: 0,
            bolt_ready_us: 0,
            next_chat_us,
            chats: 0,
        }
    }

    /// The next input, given where the bot is and the nearest living NPC it sees.
    pub(crate) fn decide(&mut self, now_us: u64, me: Option<(f32, f32)>, target: Option<Target>) -> Decision {
        let fighting = self.role == Role::Fight && now_us >= self.started_us + FIGHT_WARMUP_US;
        if let (true, Some((mx, my)), Some(t)) = (fighting, me, target) {
            let (dx, dy) = (t.x - mx, t.y - my);
            let dist = (dx * dx + dy * dy).sqrt();
            let move_dir = if dist > STRIKE.1 * 0.8 && dist.is_finite() { (dx / dist, dy / dist) } else { (0.0, 0.0) };
            let mut ability = 0;
            if dist <= STRIKE.1 && now_us >= self.strike_ready_us {
                ability = STRIKE.0;
                self.strike_ready_us = now_us + STRIKE.2;
            } else if dist <= FIREBOLT.1 && now_us >= self.bolt_ready_us {
                ability = FIREBOLT.0;
                self.bolt_ready_us = now_us + FIREBOLT.2;
            }
            let target = if ability == 0 { 0 } else { t.id };
            return Decision { move_dir: clamp_unit(move_dir), ability, target };
        }
        if now_us >= self.next_turn_us {
            let angle = self.rng.gen_range(0.0..std::f32::consts::TAU);
            self.dir = (angle.cos(), angle.sin());
            self.next_turn_us = now_us + self.rng.gen_range(1_000_000..3_000_000);
        }
        Decision { move_dir: clamp_unit(self.dir), ability: 0, target: 0 }
    }

    /// A chat line when one is due (chat role only): three say lines for every zone line.
    pub(crate) fn chat(&mut self, now_us: u64, name: &str) -> Option<(ChatChannel, String)> {
        if self.role != Role::Chat || now_us < self.next_chat_us {
            return None;
        }
        self.next_chat_us = now_us + self.rng.gen_range(CHAT_EVERY_US * 4 / 5..CHAT_EVERY_US * 6 / 5);
        self.chats += 1;
        let channel = if self.chats % 4 == 0 { ChatChannel::Zone } else { ChatChannel::Say };
        Some((channel, format!("{name} says hello #{}", self.chats)))
    }
}

/// `v` scaled down to length 1 if longer; zero if not finite.
fn clamp_unit((x, y): (f32, f32)) -> (f32, f32) {
    if !x.is_finite() || !y.is_finite() {
        return (0.0, 0.0);
    }
    let len = (x * x + y * y).sqrt();
    if len > 1.0 {
        // A hair under 1 so float rounding on the server's side never sees 1.0001.
        let s = 0.9999 / len;
        (x * s, y * s)
    } else {
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(d: (f32, f32)) -> bool {
        d.0.is_finite() && d.1.is_finite() && d.0 * d.0 + d.1 * d.1 <= 1.0001
    }

    #[test]
    fn walkers_always_send_valid_directions_and_turn() {
        let mut b = Brain::new(Role::Walk, 7, 0);
        let mut dirs = std::collections::BTreeSet::new();
        for t in 0..200u64 {
            let d = b.decide(t * 50_000, Some((0.0, 0.0)), None);
            assert!(unit(d.move_dir), "{:?}", d.move_dir);
            assert_eq!(d.ability, 0);
            dirs.insert((d.move_dir.0 * 1000.0) as i32);
        }
        assert!(dirs.len() > 2, "10 s of walking changes direction");
    }

    #[test]
    fn fighters_approach_then_strike_within_cooldowns() {
        let mut b = Brain::new(Role::Fight, 1, 0);
        let npc = Target { id: 99, x: 10.0, y: 0.0 };
        let d = b.decide(2_000_000, Some((0.0, 0.0)), Some(npc));
        assert!(d.move_dir.0 > 0.9 && unit(d.move_dir), "walks towards the NPC: {:?}", d.move_dir);
        assert_eq!((d.ability, d.target), (2, 99), "firebolt in range");
        let d = b.decide(2_050_000, Some((0.0, 0.0)), Some(npc));
        assert_eq!(d.ability, 0, "firebolt is cooling down and strike is out of reach");
        let d = b.decide(2_100_000, Some((8.0, 0.0)), Some(npc));
        assert_eq!((d.ability, d.target, d.move_dir), (1, 99, (0.0, 0.0)), "in melee range: stop and strike");
    }

    #[test]
    fn fighters_walk_during_warmup_even_next_to_an_npc() {
        let mut b = Brain::new(Role::Fight, 3, 0);
        let d = b.decide(100_000, Some((0.0, 0.0)), Some(Target { id: 5, x: 0.5, y: 0.0 }));
        assert_eq!(d.ability, 0);
        assert!(d.move_dir != (0.0, 0.0));
    }

    #[test]
    fn only_chatters_chat_about_every_ten_seconds() {
        let mut walker = Brain::new(Role::Walk, 1, 0);
        assert_eq!(walker.chat(60_000_000, "w"), None);
        let mut chatter = Brain::new(Role::Chat, 1, 0);
        let lines: Vec<_> = (0..1200u64).filter_map(|t| chatter.chat(t * 50_000, "c")).collect();
        assert!((5..=8).contains(&lines.len()), "60 s gave {} lines", lines.len());
        assert!(lines.iter().any(|(c, _)| *c == ChatChannel::Zone));
        assert!(lines.iter().all(|(_, t)| !t.is_empty() && t.len() <= 256));
    }

    #[test]
    fn mixed_assigns_roles_round_robin() {
        let roles: Vec<_> = (0..6).map(|i| Behaviour::Mixed.role(i)).collect();
        assert_eq!(roles, [Role::Walk, Role::Fight, Role::Chat, Role::Walk, Role::Fight, Role::Chat]);
    }

    #[test]
    fn directions_are_clamped_and_sanitised() {
        assert!(unit(clamp_unit((3.0, 4.0))));
        assert_eq!(clamp_unit((f32::NAN, 0.0)), (0.0, 0.0));
        assert_eq!(clamp_unit((0.5, 0.0)), (0.5, 0.0));
    }
}
