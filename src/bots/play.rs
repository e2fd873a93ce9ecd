//! What a bot does in the world, whatever carries its messages (TLS + UDP in [`super::bot`], a WebSocket in
//! [`super::ws`]): it follows its snapshots (its position, a target, the latency of its inputs, missed ticks) and
//! decides each tick's input and the occasional chat line with its [`Brain`].

use std::time::{Duration, Instant};

use super::behaviour::{Brain, Decision, Role, Target};
use super::bot::{Ctx, Outcome};
use crate::proto::{ChatChannel, EntityKind, Snapshot};

/// Distance from its first seen position after which a bot counts as having seen itself move.
const MOVED_METERS: f32 = 1.0;

/// A bot's player in the world.
pub(crate) struct Play {
    role: Role,
    seed: u64,
    /// The entity and the tick period of the current session.
    game: Option<(u64, Duration)>,
    brain: Option<Brain>,
    /// When the next input is due (while playing).
    pub next_input: Instant,
    last_processed: u32,
    last_tick: u64,
    first_pos: Option<(f32, f32)>,
    pos: Option<(f32, f32)>,
    target: Option<Target>,
}

impl Play {
    pub(crate) fn new(role: Role, seed: u64, start_at: Instant) -> Self {
        Self {
            role,
            seed,
            game: None,
            brain: None,
            next_input: start_at,
            last_processed: 0,
            last_tick: 0,
            first_pos: None,
            pos: None,
            target: None,
        }
    }

    /// A session entered the game (login or resume): inputs are numbered afresh.
    pub(crate) fn entered(&mut self, entity_id: u64, period: Duration) {
        self.last_processed = 0;
        self.game = Some((entity_id, period));
    }

    /// The tick period of the current session.
    pub(crate) fn period(&self) -> Option<Duration> {
        self.game.map(|(_, p)| p)
    }

    /// The data channel works: start deciding, with this bot's inputs spread over the tick.
    pub(crate) fn start(&mut self, now: Instant, now_us: u64) {
        self.brain = Some(Brain::new(self.role, self.seed, now_us));
        let period = self.period().unwrap_or(Duration::from_millis(50));
        let phase = Duration::from_nanos(self.seed % (period.as_nanos().max(1) as u64));
        self.next_input = now + phase;
    }

    /// Follows a snapshot: measurements, own position, nearest live NPC for fighters.
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>, s: &Snapshot, outcome: &mut Outcome) {
        let now_us = ctx.now_us();
        let measuring = ctx.measuring();
        outcome.snapshots += 1;
        if measuring {
            ctx.stats.snapshots += 1;
            ctx.stats.entities_shown += s.entities.len() as u64;
            ctx.stats.entities_visible += u64::from(s.total_visible);
            ctx.stats.most_entities_shown = ctx.stats.most_entities_shown.max(s.entities.len() as u64);
            if self.last_tick != 0 && s.tick > self.last_tick + 1 {
                ctx.stats.snapshot_ticks_missed += s.tick - self.last_tick - 1;
            }
            ctx.stats.note_tick_arrival(s.tick, now_us);
        }
        self.last_tick = self.last_tick.max(s.tick);
        if s.last_processed_input > self.last_processed {
            self.last_processed = s.last_processed_input;
            if measuring && s.input_client_time_us > 0 && s.input_client_time_us <= now_us {
                let latency = now_us - s.input_client_time_us;
                ctx.stats.latency.record(latency);
                ctx.stats.window.record(latency);
            }
        }
        let Some((entity_id, _)) = self.game else { return };
        let me = s.entities.iter().find(|e| e.id == entity_id).and_then(|e| e.position.as_ref());
        if let Some(p) = me.filter(|p| p.x.is_finite() && p.y.is_finite()) {
            let here = (p.x, p.y);
            let first = *self.first_pos.get_or_insert(here);
            let (dx, dy) = (here.0 - first.0, here.1 - first.1);
            if dx * dx + dy * dy >= MOVED_METERS * MOVED_METERS {
                outcome.saw_self_move = true;
            }
            self.pos = Some(here);
        }
        if self.role == Role::Fight {
            self.target = self.pos.and_then(|(mx, my)| {
                s.entities
                    .iter()
                    .filter(|e| e.kind == EntityKind::Npc as i32 && e.flags & 1 == 0)
                    .filter_map(|e| {
                        let p = e.position.as_ref()?;
                        let d = (p.x - mx) * (p.x - mx) + (p.y - my) * (p.y - my);
                        d.is_finite().then_some((d, Target { id: e.id, x: p.x, y: p.y }))
                    })
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, t)| t)
            });
        }
    }

    /// The input due now and the next one scheduled (a thread more than a tick behind skips rather than bursts:
    /// the server would drop the extra inputs); `None` before the bot started.
    pub(crate) fn input(&mut self, ctx: &mut Ctx<'_>) -> Option<Decision> {
        let period = self.period()?;
        let decision = self.brain.as_mut()?.decide(ctx.now_us(), self.pos, self.target);
        self.next_input += period;
        if self.next_input <= ctx.now {
            ctx.stats.inputs_skipped += 1;
            self.next_input = ctx.now + period;
        }
        if ctx.measuring() {
            ctx.stats.inputs += 1;
        }
        Some(decision)
    }

    /// A chat line, now and then (chatters only).
    pub(crate) fn chat(&mut self, now_us: u64, name: &str) -> Option<(ChatChannel, String)> {
        self.brain.as_mut()?.chat(now_us, name)
    }
}
