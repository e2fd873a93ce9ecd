// What the client knows about the game, built only from what the server sent and the inputs the client sent: the
// player, the entities of the last snapshot, stats, the predicted position, the target, and the chat/combat log.
// A port of src/game_client/state.rs; it does no I/O, so the tests drive it directly.
//
// Invariant: the predictor and the interpolator are replaced on every join (login, resume, zone transfer), because
// input sequences restart with each session; reconciling a new session's snapshots against old inputs would
// teleport the player.

import { Interpolator } from './interpolation.js';
import type { PlannedInput } from './input.js';
import { Predictor, dist, pos, step, type Pos } from './prediction.js';
import {
  ChatChannel,
  CombatEventKind,
  EntityKind,
  num,
  type ChatMessage,
  type CombatEvent,
  type EntityState,
  type LootReceived,
  type PlayerStats,
  type Snapshot,
} from './proto.js';

/** Player speed in the zones we know (m/s). The protocol does not announce it; reconciliation corrects any error. */
export const PLAYER_SPEED = 6;
/** Side of the square zone [0, size) in the zones we know (config/zones/*.toml); not announced either. */
export const ZONE_SIZE = 2000;
/** Lines kept per log. */
export const LOG_LINES = 200;
export const FLAG_DEAD = 1;
export const FLAG_IN_COMBAT = 2;

/** The player's abilities (mirrors the server's table; the server is authoritative). */
export const ABILITIES = [
  { id: 1, name: 'strike', range: 3 },
  { id: 2, name: 'firebolt', range: 25 },
  { id: 3, name: 'heal', range: 0 },
] as const;

export type LogKind = 'say' | 'zone' | 'combat' | 'loot' | 'system' | 'error';

export interface LogLine {
  kind: LogKind;
  text: string;
  /** How many times this line arrived in a row (a notice repeated every tick shows once, with a count). */
  count: number;
}

export interface ChatLine {
  channel: 'say' | 'zone';
  fromEntity: number;
  from: string;
  text: string;
}

/** An entity of the last snapshot, as plain data. */
export interface Entity {
  id: number;
  kind: 'player' | 'npc';
  /** Where the server said it is (the newest snapshot). */
  position: Pos;
  velocity: Pos;
  hp: number;
  maxHp: number;
  level: number;
  dead: boolean;
  inCombat: boolean;
  /** Sent by servers whose EntityState carries a name; otherwise learnt from chat. */
  name?: string;
}

export interface Joined {
  entityId: number;
  playerId: number;
  zone: string;
  tickRateHz: number;
  position: Pos;
  username: string;
}

export function entityFromWire(e: EntityState): Entity {
  const flags = e.flags ?? 0;
  const wireName = (e as unknown as { name?: unknown }).name;
  return {
    id: num(e.id),
    kind: e.kind === EntityKind.ENTITY_KIND_NPC ? 'npc' : 'player',
    position: pos(e.position?.x ?? 0, e.position?.y ?? 0),
    velocity: pos(e.velocity?.x ?? 0, e.velocity?.y ?? 0),
    hp: e.hp ?? 0,
    maxHp: e.maxHp ?? 0,
    level: e.level ?? 0,
    dead: (flags & FLAG_DEAD) !== 0,
    inCombat: (flags & FLAG_IN_COMBAT) !== 0,
    name: typeof wireName === 'string' && wireName !== '' ? wireName : undefined,
  };
}

export class GameState {
  joined: Joined | null = null;
  /** Entities of the last snapshot (v1: nearest first; v2: by ascending id), the player included. */
  entities: Entity[] = [];
  totalVisible = 0;
  stats: PlayerStats | null = null;
  predictor = new Predictor(pos(0, 0), PLAYER_SPEED, 20);
  interpolator = new Interpolator(20);
  /** The newest server tick seen. */
  tick = 0;
  private snapshotTick = 0;
  snapshots = 0;
  target: number | null = null;
  log: LogLine[] = [];
  chat: ChatLine[] = [];
  combatLog: string[] = [];
  names = new Map<number, string>();
  /** The predicted position one input ago, for smoothing the own avatar between ticks. */
  previousPosition: Pos = pos(0, 0);
  lastInputAtMs = 0;

  /** A login, resume or transfer put the player in a zone. */
  join(j: Joined, nowMs: number): void {
    this.predictor = new Predictor(j.position, PLAYER_SPEED, j.tickRateHz);
    this.interpolator = new Interpolator(j.tickRateHz);
    this.previousPosition = { ...j.position };
    this.lastInputAtMs = nowMs;
    this.entities = [];
    this.target = null;
    this.snapshots = 0;
    this.snapshotTick = 0;
    this.names.set(j.entityId, j.username);
    this.joined = { ...j };
    this.note(`entered ${j.zone} as ${j.username}`);
  }

  /** An input was just sent: predict it. */
  inputSent(input: PlannedInput, nowMs: number): void {
    this.previousPosition = this.predictor.position();
    this.lastInputAtMs = nowMs;
    this.predictor.applyInput(input.sequence, input.moveDir);
  }

  snapshot(s: Snapshot, nowMs: number): void {
    const tick = num(s.tick);
    // An older snapshot would move entities back in time.
    if (this.snapshots > 0 && tick < this.snapshotTick) return;
    this.snapshotTick = tick;
    this.tick = Math.max(this.tick, tick);
    this.snapshots += 1;
    this.entities = (s.entities ?? []).map(entityFromWire);
    this.totalVisible = s.totalVisible ?? 0;
    for (const e of this.entities) if (e.name !== undefined) this.names.set(e.id, e.name);
    const me = this.ownEntity();
    if (me !== undefined) {
      const before = this.predictor.position();
      const after = this.predictor.reconcile(me.position, s.lastProcessedInput ?? 0);
      // A correction shifts the smoothing origin with it, so the avatar does not slide back through it.
      this.previousPosition = pos(
        this.previousPosition.x + (after.x - before.x),
        this.previousPosition.y + (after.y - before.y),
      );
    }
    const positions = new Map<number, Pos>();
    for (const e of this.entities) if (e.id !== this.joined?.entityId) positions.set(e.id, e.position);
    this.interpolator.push(tick, nowMs, positions);
    if (this.target !== null && !this.entities.some((e) => e.id === this.target)) this.target = null;
  }

  chatMessage(m: ChatMessage): void {
    const fromEntity = num(m.fromEntity);
    const from = m.fromName ?? '';
    if (from !== '') this.names.set(fromEntity, from);
    const zone = m.channel === ChatChannel.CHAT_CHANNEL_ZONE;
    const line: ChatLine = { channel: zone ? 'zone' : 'say', fromEntity, from, text: m.text ?? '' };
    pushBounded(this.chat, line);
    this.push(zone ? 'zone' : 'say', `${zone ? '[zone] ' : ''}${from}: ${line.text}`);
  }

  combat(c: CombatEvent): void {
    const text = this.describeCombat(c);
    pushBounded(this.combatLog, text);
    this.push('combat', text);
  }

  playerStats(s: PlayerStats): void {
    this.stats = s;
  }

  loot(l: LootReceived): void {
    const text = `you received ${l.quantity} x item kind ${l.itemKind} (item #${num(l.itemId)})`;
    pushBounded(this.combatLog, text);
    this.push('loot', text);
  }

  /** A line of the client's own (not the server's). */
  note(text: string, kind: LogKind = 'system'): void {
    this.push(kind, text);
  }

  private push(kind: LogKind, text: string): void {
    const last = this.log[this.log.length - 1];
    if (last !== undefined && last.kind === kind && last.text === text && kind !== 'combat') {
      last.count += 1;
      return;
    }
    pushBounded(this.log, { kind, text, count: 1 });
  }

  ownEntity(): Entity | undefined {
    const me = this.joined?.entityId;
    return me === undefined ? undefined : this.entities.find((e) => e.id === me);
  }

  entity(id: number): Entity | undefined {
    return this.entities.find((e) => e.id === id);
  }

  /** Where the player is, predicted. */
  position(): Pos {
    return this.predictor.position();
  }

  /**
   * The own avatar's drawn position at `nowMs`: the prediction moves one step per input (one tick), so the avatar
   * glides from the previous step to the current one over that tick instead of jumping 20 times a second.
   */
  smoothPosition(nowMs: number): Pos {
    const tickMs = 1000 / (this.joined?.tickRateHz ?? 20);
    const f = Math.min(1, Math.max(0, (nowMs - this.lastInputAtMs) / tickMs));
    const a = this.previousPosition;
    const b = this.predictor.position();
    return pos(a.x + (b.x - a.x) * f, a.y + (b.y - a.y) * f);
  }

  /** Everyone else of the last snapshot, at interpolated positions for `nowMs`. */
  others(nowMs: number): (Entity & { name: string })[] {
    const drawn = this.interpolator.sampleAll(nowMs);
    const me = this.joined?.entityId;
    return this.entities
      .filter((e) => e.id !== me)
      .map((e) => ({ ...e, position: drawn.get(e.id) ?? e.position, name: this.nameOf(e.id) }));
  }

  /** How to call an entity in the log. */
  nameOf(id: number): string {
    if (this.joined !== null && this.joined.entityId === id) return 'you';
    const known = this.names.get(id);
    if (known !== undefined) return known;
    const e = this.entity(id);
    if (e === undefined) return `#${id}`;
    return e.kind === 'npc' ? `npc#${id} (lv ${e.level})` : `player#${id}`;
  }

  /** Living NPCs of the last snapshot with their distance from the predicted position, nearest first. */
  npcsByDistance(): { id: number; distance: number }[] {
    const here = this.position();
    return this.entities
      .filter((e) => e.kind === 'npc' && !e.dead && e.hp > 0)
      .map((e) => ({ id: e.id, distance: dist(e.position, here) }))
      .sort((a, b) => a.distance - b.distance || a.id - b.id);
  }

  /** Selects the next (or previous) living NPC by distance, starting from the nearest; returns the new target. */
  cycleTarget(forward: boolean): number | null {
    const npcs = this.npcsByDistance();
    if (npcs.length === 0) {
      this.target = null;
      return null;
    }
    const current = npcs.findIndex((n) => n.id === this.target);
    const next = current < 0 ? 0 : forward ? (current + 1) % npcs.length : (current + npcs.length - 1) % npcs.length;
    this.target = npcs[next].id;
    return this.target;
  }

  /** The entity (not the player) nearest to `at` within `radius` metres, for click targeting. */
  entityNear(at: Pos, radius: number, nowMs: number): number | null {
    let best: { id: number; d: number } | null = null;
    for (const e of this.others(nowMs)) {
      const d = dist(e.position, at);
      if (d <= radius && (best === null || d < best.d)) best = { id: e.id, d };
    }
    return best?.id ?? null;
  }

  distanceTo(id: number): number | undefined {
    const e = this.entity(id);
    return e === undefined ? undefined : dist(e.position, this.position());
  }

  /** A combat event as a sentence from the player's point of view. */
  describeCombat(c: CombatEvent): string {
    const ability = ABILITIES.find((a) => a.id === c.ability)?.name ?? 'attack';
    const src = this.nameOf(num(c.sourceEntity));
    const dst = this.nameOf(num(c.targetEntity));
    switch (c.kind) {
      case CombatEventKind.COMBAT_EVENT_HIT:
        return `${src} hit ${dst} with ${ability} for ${c.amount}`;
      case CombatEventKind.COMBAT_EVENT_MISS:
        return `${src} missed ${dst} with ${ability} (out of range)`;
      case CombatEventKind.COMBAT_EVENT_KILL:
        return `${src} killed ${dst}`;
      case CombatEventKind.COMBAT_EVENT_RESPAWN:
        return `${dst} respawned`;
      // Level-up and XP events name the player who progressed as the source.
      case CombatEventKind.COMBAT_EVENT_LEVEL_UP:
        return `${src} reached level ${c.amount}`;
      case CombatEventKind.COMBAT_EVENT_XP:
        return `${src} gained ${c.amount} XP for ${dst}`;
      default:
        return `combat event ${c.kind} from ${src} to ${dst}`;
    }
  }

  /** How far one input moves the player (for click-to-move). */
  stepLength(): number {
    const p = this.predictor;
    return dist(step(pos(0, 0), pos(1, 0), p.speed, p.tickSecs), pos(0, 0));
  }
}

function pushBounded<T>(list: T[], item: T): void {
  if (list.length === LOG_LINES) list.shift();
  list.push(item);
}
