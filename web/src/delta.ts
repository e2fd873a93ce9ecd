// Protocol v2's snapshots in the browser: a port of `DeltaDecoder` (src/proto/delta.rs), the decoder the Rust
// client, realm-client and realm-bots use. A `DeltaSnapshot` encodes the client's view as changes against a view the
// client acknowledged (`Input.snapshot_ack`); this module keeps the views of the last `WINDOW` ticks, decodes each
// new one against the view it names and hands the rest of the client the `Snapshot` it already consumes (entities
// by ascending id, positions extrapolated to the snapshot's tick and dequantized from 1/64 m, velocities from
// 1/64 m/s). It does no I/O.
//
// `DeltaSnapshot.entities`, byte for byte (all integers LEB128 varints, signed ones zigzag-encoded first):
//
//   removed_count, removed_count x index_gap              baseline entries that left the view
//   update_count,  update_count  x (index_gap, update)    baseline entries that changed
//   entry_count,   entry_count   x (id_gap, entry)        entities entering the view
//
// Index gaps address the baseline view sorted by entity id (the first is the index, each next one
// `index - previous - 1`); id gaps likewise (`id - previous - 1`). A baseline entity neither removed nor updated is
// unchanged. Bodies start with a mask byte; the fields follow in bit order:
//
//   bit 0 POS     entry: x, y as varints of round(64 m), then age as a varint
//                 update: age as a varint, then dx, dy zigzag of the change against the baseline's x, y
//   bit 1 VEL     vx, vy zigzag of round(64 m/s) (absolute in both)
//   bit 2 HP      zigzag            bit 3 MAX_HP  zigzag
//   bit 4 LEVEL   varint            bit 5 FLAGS   varint
//   bit 6         reserved: malformed when set
//   bit 7 NPC     entries: the entity is an NPC (else a player); updates: malformed when set
//
// An entry carries the fields that are not zero (an entry without POS is at x = y = 0 anchored at the snapshot's
// tick); an update carries the fields that changed.
//
// Motion is a trajectory: x, y is where the entity was at its anchor tick t = snapshot tick - age (an age past the
// snapshot's tick is malformed), and vx, vy its velocity; its position at tick T is x + vx * (T - t) / tick_rate
// (likewise y), with `DeltaSnapshot.tick_rate` ticks per second. The server re-anchors an entity only when that
// prediction strays more than 1/16 m from it, so one walking a straight line costs nothing until it turns or
// stops. The decoded `Snapshot` carries every position extrapolated to the snapshot's own tick
// (`QState::to_entity(id, tick, tick_rate)` in Rust).
//
// Exactness: ids and ticks (anchor ticks too) are u64, so they are `bigint` here (ids go out as unsigned `Long`s, as
// protobufjs decodes a v1 snapshot's ids); every other field is a u32 or an i32 and fits a JS number. The
// extrapolation is computed in f64 in the Rust order and rounded to f32 once, as Rust does, so both give the same
// bits. Every value is range-checked exactly as the Rust decoder does (the same inputs fail, with the same
// messages).
//
// Invariant: a snapshot that fails to decode (stale, missing baseline, malformed) changes nothing: the views held
// and the tick to acknowledge stay as they were, and the next snapshot decodes.

import { EntityKind, big, longOf, type DeltaSnapshot, type EntityState, type Long64, type Snapshot } from './proto.js';

/** Position units per metre. */
export const POS_SCALE = 64;
/** Velocity units per metre per second. */
export const VEL_SCALE = 64;
/** Ticks of views kept (the server never uses an older baseline). */
export const WINDOW = 32;
/** Most entities in one client's view as the server sends it (entry counts are bounded by twice this or the view). */
export const MAX_VIEW = 84;

/** Mask bits. */
export const POS = 1;
export const VEL = 2;
export const HP = 4;
export const MAX_HP = 8;
export const LEVEL = 16;
export const FLAGS = 32;
/** Never set: malformed. */
export const RESERVED = 64;
/** Entries only: the entity is an NPC. */
export const NPC = 128;

const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffff;
const BIG_WINDOW = BigInt(WINDOW);

/**
 * An entity as protocol v2 carries it: quantized (positions u32, velocities, hp, max_hp i32, level, flags u32), its
 * position `x`, `y` being where its trajectory was at the anchor tick `t`.
 */
export interface QState {
  npc: boolean;
  /** The trajectory's anchor tick (u64). */
  t: bigint;
  x: number;
  y: number;
  vx: number;
  vy: number;
  hp: number;
  maxHp: number;
  level: number;
  flags: number;
}

/** One entity of a view. Never mutated once in a view (views share unchanged entities). */
export interface ViewEntity {
  id: bigint;
  /** `id` as the unsigned `Long` the rest of the client gets (made once, when the entity enters). */
  wireId: Long64;
  q: QState;
}

/** One decoded view: the client's entities at a tick, by ascending id. */
export interface View {
  tick: bigint;
  entities: readonly ViewEntity[];
}

export type DeltaErrorKind = 'stale' | 'missing-baseline' | 'malformed';

/** Why a `DeltaSnapshot` was not decoded. None of them changes the decoder. */
export abstract class DeltaError extends Error {
  abstract readonly kind: DeltaErrorKind;
}

/** Not newer than the newest view (a duplicated or reordered snapshot). */
export class StaleSnapshot extends DeltaError {
  readonly kind = 'stale' as const;
  constructor(
    readonly tick: bigint,
    readonly newest: bigint,
  ) {
    super(`snapshot ${tick} is not newer than ${newest}`);
    this.name = 'StaleSnapshot';
  }
}

/** Against a view this client does not hold (never decoded, or `WINDOW` or more ticks old). */
export class MissingBaseline extends DeltaError {
  readonly kind = 'missing-baseline' as const;
  constructor(readonly baseline: bigint) {
    super(`baseline ${baseline} is not held`);
    this.name = 'MissingBaseline';
  }
}

/** Not a valid encoding; `what` is the Rust decoder's message for the same input. */
export class MalformedDelta extends DeltaError {
  readonly kind = 'malformed' as const;
  constructor(readonly what: string) {
    super(`malformed delta snapshot: ${what}`);
    this.name = 'MalformedDelta';
  }
}

/** A varint's value: a number when below 2^53 (exact), else the exact `bigint`. */
type Varint = number | bigint;

class Reader {
  at = 0;
  constructor(readonly b: Uint8Array) {}

  /** LEB128, at most 10 bytes; bits past 64 are dropped (as Rust's `u64 << 63` does). */
  varint(): Varint {
    const b = this.b;
    let v = 0;
    // Seven bytes (49 bits) add up exactly in a double.
    for (let shift = 0; shift < 49; shift += 7) {
      if (this.at >= b.length) throw new MalformedDelta('truncated');
      const byte = b[this.at++];
      v += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return v;
    }
    let w = BigInt(v);
    for (let shift = 49n; shift < 64n; shift += 7n) {
      if (this.at >= b.length) throw new MalformedDelta('truncated');
      const byte = b[this.at++];
      w = (w | (BigInt(byte & 0x7f) << shift)) & U64_MAX;
      if ((byte & 0x80) === 0) return w < 2n ** 53n ? Number(w) : w;
    }
    throw new MalformedDelta('varint longer than 10 bytes');
  }

  u32(): number {
    const v = this.varint();
    if (typeof v === 'bigint' || v > U32_MAX) throw new MalformedDelta('value out of range');
    return v;
  }

  /** A zigzag i32: exactly the varints below 2^32. */
  i32(): number {
    const v = this.varint();
    if (typeof v === 'bigint' || v > U32_MAX) throw new MalformedDelta('value out of range');
    return (v >>> 1) ^ -(v & 1);
  }

  count(most: number): number {
    const n = this.varint();
    if (typeof n === 'bigint' || n > most) throw new MalformedDelta('count larger than the view');
    return n;
  }

  mask(): number {
    if (this.at >= this.b.length) throw new MalformedDelta('truncated');
    const m = this.b[this.at++];
    if ((m & RESERVED) !== 0) throw new MalformedDelta('reserved mask bit set');
    return m;
  }

  /** The fields after position, shared by entries and updates. */
  fields(mask: number, q: QState): void {
    if ((mask & VEL) !== 0) {
      q.vx = this.i32();
      q.vy = this.i32();
    }
    if ((mask & HP) !== 0) q.hp = this.i32();
    if ((mask & MAX_HP) !== 0) q.maxHp = this.i32();
    if ((mask & LEVEL) !== 0) q.level = this.u32();
    if ((mask & FLAGS) !== 0) q.flags = this.u32();
  }
}

/** The next baseline index from a gap (`previous` -1: the first). Past the baseline when the gap is huge. */
function nextIndex(previous: number, gap: Varint): number {
  if (typeof gap === 'bigint') {
    if (previous >= 0 && BigInt(previous) + 1n + gap > U64_MAX) throw new MalformedDelta('id overflows');
    return Infinity;
  }
  return previous < 0 ? gap : previous + 1 + gap;
}

/** The next entity id from a gap: `previous + 1 + gap` (the first: `gap`), within u64. */
function nextId(previous: bigint | null, gap: Varint): bigint {
  const g = typeof gap === 'bigint' ? gap : BigInt(gap);
  if (previous === null) return g;
  const id = previous + 1n + g;
  if (id > U64_MAX) throw new MalformedDelta('id overflows');
  return id;
}

/** The anchor tick of a trajectory `age` ticks old in the snapshot of `tick`. */
function anchor(tick: bigint, age: Varint): bigint {
  const a = BigInt(age);
  if (a > tick) throw new MalformedDelta('trajectory anchored before tick 0');
  return tick - a;
}

/** A u32 coordinate moved by a zigzag delta; the result must stay a u32. */
function moved(x: number, zigzag: Varint): number {
  // Zigzag values of 2^53 and more are deltas of at least 2^52: out of range from any u32.
  if (typeof zigzag === 'bigint') throw new MalformedDelta('position out of range');
  const d = zigzag % 2 === 0 ? zigzag / 2 : -(zigzag + 1) / 2;
  const r = x + d;
  if (r < 0 || r > U32_MAX) throw new MalformedDelta('position out of range');
  return r;
}

/**
 * The trajectory's position at `tick`, in 1/64 m (`QState::position_at`): `x + vx * (tick - t) / tickRate`, in f64
 * and in the Rust order (a tick before the anchor counts as the anchor; a tick rate of 0 as 1).
 */
export function positionAt(q: QState, tick: bigint, tickRate: number): { x: number; y: number } {
  // Rust: `tick.saturating_sub(t) as f64` (u64 to f64 rounds to nearest, as Number(bigint) does).
  const dt = (tick > q.t ? Number(tick - q.t) : 0) / Math.max(1, tickRate);
  return { x: q.x + q.vx * dt, y: q.y + q.vy * dt };
}

/**
 * Back to the message the rest of the client works with (what a v1 snapshot would decode to), the position
 * extrapolated to `tick` at `tickRate` ticks per second (`QState::to_entity`).
 */
export function toEntity(e: ViewEntity, tick: bigint, tickRate: number): EntityState {
  const q = e.q;
  const p = positionAt(q, tick, tickRate);
  // Rust: `(x / 64.0) as f32` from the f64 position; velocities `vx as f32 / 64.0` (dividing by a power of two is
  // exact in both precisions).
  return {
    id: e.wireId,
    kind: q.npc ? EntityKind.ENTITY_KIND_NPC : EntityKind.ENTITY_KIND_PLAYER,
    position: { x: Math.fround(p.x / POS_SCALE), y: Math.fround(p.y / POS_SCALE) },
    velocity: { x: Math.fround(q.vx) / VEL_SCALE, y: Math.fround(q.vy) / VEL_SCALE },
    hp: q.hp,
    maxHp: q.maxHp,
    level: q.level,
    flags: q.flags,
  };
}

/**
 * The client's half of protocol v2: the views of the last `WINDOW` ticks (slot `tick % WINDOW`), and the newest
 * one's tick to acknowledge in every `Input.snapshot_ack`. One per WebSocket session (`reset` on each new one).
 */
export class DeltaDecoder {
  private views: (View | null)[] = new Array<View | null>(WINDOW).fill(null);
  private newest = 0n;

  /** The tick to acknowledge: the newest view decoded (0 = none). */
  ack(): bigint {
    return this.newest;
  }

  /** Forgets every view (a new session: its snapshots start from an empty view). */
  reset(): void {
    this.views.fill(null);
    this.newest = 0n;
  }

  /** The view decoded for `tick`, if still held. */
  view(tick: bigint): View | null {
    if (tick === 0n) return null;
    const v = this.views[Number(tick % BIG_WINDOW)];
    return v !== null && v.tick === tick ? v : null;
  }

  /**
   * Decodes `s` against the view it names, keeps the result as the newest view and returns it as the `Snapshot`
   * the rest of the client works with (entities by ascending id). Throws a `DeltaError` (and changes nothing)
   * when it cannot.
   */
  decode(s: DeltaSnapshot): Snapshot {
    const view = this.decodeView(s);
    const tickRate = s.tickRate ?? 0;
    return {
      tick: s.tick ?? 0,
      lastProcessedInput: s.lastProcessedInput ?? 0,
      inputClientTimeUs: s.inputClientTimeUs ?? 0,
      entities: view.entities.map((e) => toEntity(e, view.tick, tickRate)),
      totalVisible: s.totalVisible ?? 0,
    };
  }

  /** As `decode`, returning the quantized view (tests compare it with what was encoded). */
  decodeView(s: DeltaSnapshot): View {
    const tick = big(s.tick);
    if (tick === 0n) throw new MalformedDelta('tick 0');
    if (tick <= this.newest) throw new StaleSnapshot(tick, this.newest);
    const view: View = { tick, entities: this.decodeEntities(s, tick) };
    this.views[Number(tick % BIG_WINDOW)] = view;
    this.newest = tick;
    return view;
  }

  private decodeEntities(s: DeltaSnapshot, tick: bigint): ViewEntity[] {
    const baselineTick = big(s.baselineTick);
    let base: readonly ViewEntity[];
    if (baselineTick === 0n) {
      base = [];
    } else if (baselineTick >= tick) {
      throw new MalformedDelta('baseline not older than the snapshot');
    } else {
      // A baseline WINDOW or more ticks back shares a slot with a newer view: the tick check tells them apart.
      const v = this.view(baselineTick);
      if (v === null) throw new MissingBaseline(baselineTick);
      base = v.entities;
    }
    const n = base.length;
    const r = new Reader(s.entities ?? new Uint8Array(0));
    // 0 kept, 1 removed, 2 updated (its new state is in `updated`, in index order).
    const marks = new Uint8Array(n);

    const removed = r.count(n);
    let previous = -1;
    for (let k = 0; k < removed; k++) {
      const i = nextIndex(previous, r.varint());
      if (i >= n) throw new MalformedDelta('removed index past the baseline');
      marks[i] = 1;
      previous = i;
    }

    const updates = r.count(n);
    const updated: QState[] = [];
    previous = -1;
    for (let k = 0; k < updates; k++) {
      const i = nextIndex(previous, r.varint());
      if (i >= n) throw new MalformedDelta('updated index past the baseline');
      if (marks[i] !== 0) throw new MalformedDelta('an entity both removed and updated');
      previous = i;
      const mask = r.mask();
      if ((mask & NPC) !== 0) throw new MalformedDelta('NPC bit in an update');
      const q: QState = { ...base[i].q };
      if ((mask & POS) !== 0) {
        // The age first, checked at once; then both deltas are read before either is checked (the Rust order: a
        // truncated dy wins over a bad dx).
        q.t = anchor(tick, r.varint());
        const dx = r.varint();
        const dy = r.varint();
        q.x = moved(q.x, dx);
        q.y = moved(q.y, dy);
      }
      r.fields(mask, q);
      marks[i] = 2;
      updated.push(q);
    }

    const entries = r.count(Math.max(MAX_VIEW, n) * 2);
    const out: ViewEntity[] = [];
    // The kept baseline entities (not removed; updated ones with their new state), merged with the entries by id.
    let j = 0;
    let u = 0;
    const skipRemoved = (): void => {
      while (j < n && marks[j] === 1) j++;
    };
    const takeKept = (): void => {
      const e = base[j];
      out.push(marks[j] === 2 ? { id: e.id, wireId: e.wireId, q: updated[u++] } : e);
      j++;
      skipRemoved();
    };
    skipRemoved();
    let previousId: bigint | null = null;
    for (let k = 0; k < entries; k++) {
      const id = nextId(previousId, r.varint());
      previousId = id;
      const mask = r.mask();
      const q: QState = { npc: (mask & NPC) !== 0, t: tick, x: 0, y: 0, vx: 0, vy: 0, hp: 0, maxHp: 0, level: 0, flags: 0 };
      if ((mask & POS) !== 0) {
        q.x = r.u32();
        q.y = r.u32();
        q.t = anchor(tick, r.varint());
      }
      r.fields(mask, q);
      while (j < n && base[j].id < id) takeKept();
      if (j < n && base[j].id === id) throw new MalformedDelta('an entering entity is already in the view');
      out.push({ id, wireId: longOf(id), q });
    }
    while (j < n) takeKept();
    if (r.at !== r.b.length) throw new MalformedDelta('trailing bytes');
    return out;
  }
}
