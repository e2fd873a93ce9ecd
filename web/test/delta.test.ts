// Protocol v2's delta snapshots: the TypeScript port of DeltaDecoder (src/proto/delta.rs) against byte vectors
// written by hand from the format (delta.ts's header, README "Delta snapshots"), the cases of the Rust module's
// tests, and random bytes. The encoder helpers below are test-only ports of `encode_entry` / `encode_update` and of
// the Rust tests' `encode` (the server's layout of removals, updates and entries).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import Long from 'long';
import {
  DeltaDecoder,
  DeltaError,
  FLAGS,
  HP,
  LEVEL,
  MAX_HP,
  MalformedDelta,
  MissingBaseline,
  NPC,
  POS,
  StaleSnapshot,
  VEL,
  WINDOW,
  positionAt,
  toEntity,
  type QState,
  type View,
} from '../src/delta.js';
import { EntityKind, big, longOf, num, pb, type DeltaSnapshot } from '../src/proto.js';
import { GameState } from '../src/state.js';

// ----- test-only encoder (a port of the Rust side) -------------------------------------------------------------

function varint(out: number[], v: bigint | number): void {
  let x = BigInt.asUintN(64, BigInt(v));
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
}

const zigzag = (v: number | bigint): bigint => {
  const x = BigInt.asIntN(64, BigInt(v));
  return BigInt.asUintN(64, (x << 1n) ^ (x >> 63n));
};

/** A state; its anchor tick `t` is 0 unless given (entries and updates encode it as an age against their tick). */
const q = (over: Partial<QState> = {}): QState => ({
  npc: false,
  t: 0n,
  x: 0,
  y: 0,
  vx: 0,
  vy: 0,
  hp: 0,
  maxHp: 0,
  level: 0,
  flags: 0,
  ...over,
});

function fields(out: number[], mask: number, s: QState): void {
  if (mask & VEL) {
    varint(out, zigzag(s.vx));
    varint(out, zigzag(s.vy));
  }
  if (mask & HP) varint(out, zigzag(s.hp));
  if (mask & MAX_HP) varint(out, zigzag(s.maxHp));
  if (mask & LEVEL) varint(out, s.level);
  if (mask & FLAGS) varint(out, s.flags);
}

/** `encode_entry` in the snapshot of `tick`: the fields that are not zero (POS also when not anchored at `tick`). */
function entry(s: QState, tick: bigint | number): number[] {
  const at = BigInt(tick);
  let mask = s.npc ? NPC : 0;
  if (s.x !== 0 || s.y !== 0 || s.t !== at) mask |= POS;
  if (s.vx !== 0 || s.vy !== 0) mask |= VEL;
  if (s.hp !== 0) mask |= HP;
  if (s.maxHp !== 0) mask |= MAX_HP;
  if (s.level !== 0) mask |= LEVEL;
  if (s.flags !== 0) mask |= FLAGS;
  const out = [mask];
  if (mask & POS) {
    varint(out, s.x);
    varint(out, s.y);
    varint(out, at - s.t); // the age (Rust saturates; tests never anchor after the tick)
  }
  fields(out, mask, s);
  return out;
}

/** `encode_update` in the snapshot of `tick`: the fields that changed; empty when nothing did. */
function update(base: QState, s: QState, tick: bigint | number): number[] {
  let mask = 0;
  if (s.x !== base.x || s.y !== base.y || s.t !== base.t) mask |= POS;
  if (s.vx !== base.vx || s.vy !== base.vy) mask |= VEL;
  if (s.hp !== base.hp) mask |= HP;
  if (s.maxHp !== base.maxHp) mask |= MAX_HP;
  if (s.level !== base.level) mask |= LEVEL;
  if (s.flags !== base.flags) mask |= FLAGS;
  if (mask === 0) return [];
  const out = [mask];
  if (mask & POS) {
    varint(out, BigInt(tick) - s.t);
    varint(out, zigzag(s.x - base.x));
    varint(out, zigzag(s.y - base.y));
  }
  fields(out, mask, s);
  return out;
}

/** The Rust tests' `encode`: removed indexes, (index, update body), (id, entry body), each with gaps. */
function encode(removed: number[], updates: [number, number[]][], entries: [bigint | number, number[]][]): Uint8Array {
  const out: number[] = [];
  const gaps = (items: [bigint, number[] | null][]): void => {
    varint(out, items.length);
    let previous: bigint | null = null;
    for (const [i, body] of items) {
      varint(out, previous === null ? i : i - previous - 1n);
      previous = i;
      if (body !== null) out.push(...body);
    }
  };
  gaps(removed.map((i) => [BigInt(i), null]));
  gaps(updates.map(([i, b]) => [BigInt(i), b]));
  gaps(entries.map(([id, b]) => [BigInt(id), b]));
  return new Uint8Array(out);
}

const snap = (tick: number | bigint, baselineTick: number | bigint, entities: Uint8Array | number[], tickRate = 20): DeltaSnapshot => ({
  tick: longOf(BigInt(tick)),
  baselineTick: longOf(BigInt(baselineTick)),
  entities: entities instanceof Uint8Array ? entities : new Uint8Array(entities),
  tickRate,
});

const ids = (v: View): bigint[] => v.entities.map((e) => e.id);

/** A deep copy of what the decoder holds for `tick` (views are immutable, but the test must not trust that). */
const held = (d: DeltaDecoder, tick: bigint): unknown => structuredClone(d.view(tick)?.entities.map((e) => [e.id, e.q]) ?? null);

function assertMalformed(f: () => unknown, what?: string): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof MalformedDelta, `a MalformedDelta, not ${String(e)}`);
    assert.ok(e instanceof DeltaError);
    assert.equal(e.kind, 'malformed');
    if (what !== undefined) assert.equal(e.what, what);
    return true;
  });
}

// ----- hand-written vectors ------------------------------------------------------------------------------------

// Entity 77 enters as an NPC at (1000 m, 960 m) as of 2 ticks ago, moving west at 2 m/s, 30/30 hp, level 1:
//   00                removed_count 0
//   00                update_count 0
//   01                entry_count 1
//   4d                id_gap 77 (the first id is the gap itself)
//   9f                mask NPC|LEVEL|MAX_HP|HP|VEL|POS = 128+16+8+4+2+1
//   80 f4 03          x = 64000 (1000 m x 64): 64000 = 0b11_1110100_0000000 -> 0x80, 0x74|0x80, 0x03
//   80 e0 03          y = 61440 (960 m x 64) = 0b11_1100000_0000000
//   02                age 2: the trajectory is anchored at the snapshot's tick - 2
//   ff 01 00          vx = -128 (-2 m/s x 64): zigzag 255; vy = 0: zigzag 0 (VEL carries both)
//   3c 3c             hp 30, max_hp 30: zigzag 60
//   01                level 1 (flags 0: not sent)
// The Rust encoder writes exactly these bytes for that state in the snapshot of tick 5 (checked with
// `encode_entry` of src/proto/delta.rs compiled on its own; so are the bodies of the next tests).
const ENTER_77 = [0x00, 0x00, 0x01, 0x4d, 0x9f, 0x80, 0xf4, 0x03, 0x80, 0xe0, 0x03, 0x02, 0xff, 0x01, 0x00, 0x3c, 0x3c, 0x01];
const STATE_77 = q({ npc: true, t: 3n, x: 64000, y: 61440, vx: -128, hp: 30, maxHp: 30, level: 1 });

test('a hand-written entry decodes to its quantized state, and the test encoder writes the same bytes', () => {
  assert.deepEqual([...encode([], [], [[77, entry(STATE_77, 5)]])], ENTER_77);
  const d = new DeltaDecoder();
  const view = d.decodeView(snap(5, 0, ENTER_77));
  assert.deepEqual(ids(view), [77n]);
  assert.deepEqual(view.entities[0].q, STATE_77, 'anchored at tick 5 - 2');
  assert.equal(d.ack(), 5n);
});

test('a decoded snapshot is the Snapshot a v1 server would have sent: Long ids, metres, kinds, echoes', () => {
  const d = new DeltaDecoder();
  const s = d.decode({ ...snap(5, 0, ENTER_77), lastProcessedInput: 9, inputClientTimeUs: longOf(123456789n), totalVisible: 3 });
  assert.equal(num(s.tick), 5);
  assert.equal(s.lastProcessedInput, 9);
  assert.equal(num(s.inputClientTimeUs), 123456789);
  assert.equal(s.totalVisible, 3);
  assert.equal(s.entities!.length, 1);
  const e = s.entities![0];
  assert.ok(Long.isLong(e.id), 'ids are Longs, as protobufjs decodes uint64');
  assert.equal((e.id as Long).unsigned, true);
  assert.equal(num(e.id), 77);
  assert.equal(e.kind, EntityKind.ENTITY_KIND_NPC);
  // Anchored 2 ticks (0.1 s at 20 ticks/s) before the snapshot at x 1000 m, moving west at 2 m/s: 0.2 m further
  // west now (as an f32, as Rust's `to_entity` rounds it).
  assert.deepEqual(e.position, { x: Math.fround(999.8), y: 960 });
  assert.deepEqual(e.velocity, { x: -2, y: 0 });
  assert.deepEqual([e.hp, e.maxHp, e.level, e.flags], [30, 30, 1, 0]);
  // The same entity through a real v1 Snapshot's encode/decode gives the same message fields.
  const v1 = pb.Snapshot.decode(pb.Snapshot.encode({ tick: 5, entities: [e] }).finish()).entities[0];
  assert.equal(num(v1.id), num(e.id));
  assert.deepEqual([v1.position!.x, v1.position!.y, v1.velocity!.x, v1.velocity!.y], [Math.fround(999.8), 960, -2, 0]);
  // And GameState takes it like any snapshot.
  const game = new GameState();
  game.join({ entityId: 100, playerId: 1, zone: 'z', tickRateHz: 20, position: { x: 0, y: 0 }, username: 'ann' }, 0);
  game.snapshot(s, 0);
  assert.equal(game.entity(77)?.kind, 'npc');
  assert.deepEqual(game.entity(77)?.position, { x: Math.fround(999.8), y: 960 });
});

test('updates move by negative deltas and re-anchor, removals and entries merge by id (hand-written bytes)', () => {
  const d = new DeltaDecoder();
  // Tick 1 against nothing: players 10 (x 1, hp 10) and 20 (x 2, hp 10) anchored now (age 0), an NPC 30 at
  // (300, 300) anchored at tick 0 (age 1).
  //   00 00 03 | 0a 05 01 00 00 14 | 09 05 02 00 00 14 | 09 81 ac 02 ac 02 01
  d.decodeView(snap(1, 0, [0x00, 0x00, 0x03, 0x0a, 0x05, 0x01, 0x00, 0x00, 0x14, 0x09, 0x05, 0x02, 0x00, 0x00, 0x14, 0x09, 0x81, 0xac, 0x02, 0xac, 0x02, 0x01]));
  assert.deepEqual(ids(d.view(1n)!), [10n, 20n, 30n]);
  assert.deepEqual(d.view(1n)!.entities.map((e) => e.q.t), [1n, 1n, 0n]);
  // Tick 2 against tick 1: remove index 0 (id 10); update index 2 (id 30): re-anchored now (age 0), dx = -300
  // (zigzag 599 = d7 04), dy = +1 (zigzag 2), hp 7 (zigzag 14) -> mask POS|HP = 05; enter 25 with flags 2
  // (mask 20: no POS, so at 0, 0 anchored now) and 40 at x 64 as of tick 1 (age 1).
  //   01 00 | 01 02 05 00 d7 04 02 0e | 02 19 20 0e 01 40 00 01
  const bytes = [0x01, 0x00, 0x01, 0x02, 0x05, 0x00, 0xd7, 0x04, 0x02, 0x0e, 0x02, 0x19, 0x20, 0x02, 0x0e, 0x01, 0x40, 0x00, 0x01];
  const v = d.decodeView(snap(2, 1, bytes));
  assert.deepEqual(ids(v), [20n, 25n, 30n, 40n]);
  assert.deepEqual(v.entities[0].q, q({ t: 1n, x: 2, hp: 10 }), 'unchanged');
  assert.deepEqual(v.entities[1].q, q({ t: 2n, flags: 2 }), 'an entry without POS is at 0, 0 anchored at its tick');
  assert.deepEqual(v.entities[2].q, q({ npc: true, t: 2n, x: 0, y: 301, hp: 7 }), 'moved back to x 0, kind kept');
  assert.deepEqual(v.entities[3].q, q({ t: 1n, x: 64 }));
  assert.equal(v.entities[0], d.view(1n)!.entities[1], 'an unchanged entity is shared, not copied');
  // The view of tick 1 is still there, untouched.
  assert.deepEqual(ids(d.view(1n)!), [10n, 20n, 30n]);
  assert.deepEqual([d.view(1n)!.entities[2].q.x, d.view(1n)!.entities[2].q.t], [300, 0n]);
  // The test encoder agrees with the hand-written bytes.
  assert.deepEqual(
    [
      ...encode(
        [0],
        [[2, update(q({ npc: true, t: 0n, x: 300, y: 300 }), q({ npc: true, t: 2n, x: 0, y: 301, hp: 7 }), 2)]],
        [[25, entry(q({ t: 2n, flags: 2 }), 2)], [40, entry(q({ t: 1n, x: 64 }), 2)]],
      ),
    ],
    bytes,
  );
  // Tick 3 against tick 2: index 0 (id 20) is re-anchored at tick 3 where it was (only the anchor moves: POS, age 0,
  // zero deltas: 01 00 00 00); index 2 (id 30, gap 1) is anchored at tick 1 (age 2) one unit east (dx zigzag 2).
  //   00 | 02 00 01 00 00 00 01 01 02 02 00 | 00
  const w = d.decodeView(snap(3, 2, [0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x02, 0x00, 0x00]));
  assert.deepEqual(
    w.entities.map((e) => [e.id, e.q.t, e.q.x]),
    [
      [20n, 3n, 2],
      [25n, 2n, 0],
      [30n, 1n, 1],
      [40n, 1n, 64],
    ],
  );
  assert.deepEqual(update(q({ t: 1n, x: 2, hp: 10 }), q({ t: 3n, x: 2, hp: 10 }), 3), [0x01, 0x00, 0x00, 0x00]);
  assert.deepEqual(update(w.entities[2].q, { ...w.entities[2].q, t: 2n }, 3), [0x01, 0x01, 0x00, 0x00]);
  assert.deepEqual(update(v.entities[2].q, w.entities[2].q, 3), [0x01, 0x02, 0x02, 0x00]);
});

test('trajectories: positions come out extrapolated to the snapshot tick, and a straight walk costs no bytes', () => {
  const d = new DeltaDecoder();
  // Player 5 at (10 m, 20 m) as of 20 ticks ago (1 s at 20 ticks/s), walking north at 2 m/s (vy 128): 2 m
  // further north now. 05 = id gap 5; 03 = POS|VEL; 80 05 = x 640; 80 0a = y 1280; 14 = age 20; 00 = vx 0;
  // 80 02 = vy zigzag 256.
  const bytes = [0x00, 0x00, 0x01, 0x05, 0x03, 0x80, 0x05, 0x80, 0x0a, 0x14, 0x00, 0x80, 0x02];
  assert.deepEqual(bytes.slice(3), [0x05, ...entry(q({ t: 80n, x: 640, y: 1280, vy: 128 }), 100)]);
  let s = d.decode(snap(100, 0, bytes, 20));
  assert.deepEqual(d.view(100n)!.entities[0].q, q({ t: 80n, x: 640, y: 1280, vy: 128 }));
  assert.deepEqual(s.entities![0].position, { x: 10, y: 22 });
  assert.deepEqual(s.entities![0].velocity, { x: 0, y: 2 });
  // Ten ticks later, against that view and unchanged (an empty body): half a second on, 1 m further.
  s = d.decode(snap(110, 100, [0x00, 0x00, 0x00], 20));
  assert.deepEqual(s.entities![0].position, { x: 10, y: 23 });
  // At 10 ticks per second the 50 ticks since the anchor are 5 s: 10 m.
  s = d.decode(snap(130, 110, [0x00, 0x00, 0x00], 10));
  assert.deepEqual(s.entities![0].position, { x: 10, y: 30 });
  // A server that sends no tick rate (0) is read as 1 tick per second, as Rust's `tick_rate.max(1)`.
  s = d.decode({ ...snap(131, 130, [0x00, 0x00, 0x00]), tickRate: undefined });
  assert.deepEqual(s.entities![0].position, { x: 10, y: 20 + 2 * 51 });
  // Westwards and south, below zero: positions are f32 of the f64 extrapolation, never clamped.
  const e = d.decode(snap(140, 0, encode([], [], [[6, entry(q({ t: 120n, x: 64, y: 32, vx: -96, vy: -1 }), 140)]]), 20));
  assert.deepEqual(e.entities![0].position, { x: Math.fround((64 - 96) / 64), y: Math.fround((32 - 1) / 64) });
  // positionAt, the exported formula (1/64 m), in the Rust order.
  const p = positionAt(q({ t: 7n, x: 100, y: 5, vx: 3, vy: -7 }), 10n, 20);
  assert.deepEqual(p, { x: 100 + 3 * (3 / 20), y: 5 + -7 * (3 / 20) });
  assert.deepEqual(positionAt(q({ t: 10n, x: 1, vx: 64 }), 9n, 20), { x: 1, y: 0 }, 'before the anchor: the anchor');
  // toEntity, with ticks past 2^53 (exact bigint arithmetic before the conversion).
  const far = 2n ** 60n;
  const te = toEntity({ id: 1n, wireId: longOf(1n), q: q({ t: far - 40n, x: 0, y: 64, vx: 32 }) }, far, 20);
  assert.deepEqual(te.position, { x: 1, y: 1 });
});

test('removals, updates and entries apply in id order (the Rust test)', () => {
  const base = (x: number) => q({ t: 1n, x, hp: 10, maxHp: 10, level: 1 });
  const d = new DeltaDecoder();
  d.decodeView(snap(1, 0, encode([], [], [[10, entry(base(1), 1)], [20, entry(base(2), 1)], [30, entry(base(3), 1)], [40, entry(base(4), 1)]])));
  // Remove 20, move 30, add 5 and 35.
  const v = d.decodeView(
    snap(2, 1, encode([1], [[2, update(base(3), { ...base(300), t: 2n }, 2)]], [[5, entry(base(5), 2)], [35, entry({ ...base(35), npc: true }, 2)]])),
  );
  assert.deepEqual(ids(v), [5n, 10n, 30n, 35n, 40n]);
  assert.deepEqual([v.entities[2].q.x, v.entities[2].q.t], [300, 2n]);
  assert.equal(v.entities[0].q.t, 1n, 'an entry keeps its anchor');
  assert.ok(v.entities[3].q.npc);
  assert.equal(d.ack(), 2n);
  // Older than the newest: stale, and the views stay.
  assert.throws(() => d.decodeView(snap(2, 1, [0, 0, 0])), (e: unknown) => e instanceof StaleSnapshot && e.kind === 'stale' && e.tick === 2n && e.newest === 2n);
  assert.throws(() => d.decodeView(snap(1, 0, [0, 0, 0])), StaleSnapshot);
  // Against a view never decoded: refused.
  assert.throws(() => d.decodeView(snap(9, 7, [0, 0, 0])), (e: unknown) => e instanceof MissingBaseline && e.kind === 'missing-baseline' && e.baseline === 7n);
  assert.equal(d.ack(), 2n);
  // Against tick 1 again (its acknowledgement was the newest the server had heard): fine.
  assert.equal(d.decodeView(snap(3, 1, [0, 0, 0])).entities.length, 4);
  // A baseline a whole window back shares a slot with a newer view: missing, not misread.
  d.decodeView(snap(1 + WINDOW, 1, [0, 0, 0]));
  assert.throws(() => d.decodeView(snap(2 + 2 * WINDOW, 2 + WINDOW, [0, 0, 0])), MissingBaseline);
  assert.equal(d.view(1n), null, 'tick 1 was overwritten by tick 33');
  assert.equal(d.view(1n + BigInt(WINDOW))!.tick, 33n);
});

test('an entering entity already in the view, or one both removed and updated, is malformed; re-entry is legal', () => {
  const d = new DeltaDecoder();
  const e = entry(q({ t: 1n, x: 1 }), 1);
  d.decodeView(snap(1, 0, encode([], [], [[7, e]])));
  assertMalformed(() => d.decodeView(snap(2, 1, encode([], [], [[7, e]]))), 'an entering entity is already in the view');
  const u = update(q(), q({ hp: 3 }), 2);
  assertMalformed(() => d.decodeView(snap(2, 1, encode([0], [[0, u]], []))), 'an entity both removed and updated');
  // Removed then entered again in one snapshot: a re-entry with a full state (an NPC now, elsewhere).
  const v = d.decodeView(snap(2, 1, encode([0], [], [[7, entry(q({ npc: true, t: 2n, y: 9 }), 2)]])));
  assert.deepEqual(v.entities.map((x) => [x.id, x.q]), [[7n, q({ npc: true, t: 2n, y: 9 })]]);
});

test('malformed inputs are refused with the Rust messages and change nothing', () => {
  const d = new DeltaDecoder();
  d.decodeView(snap(1, 0, encode([], [], [[3, entry(q({ t: 1n, x: 3 }), 1)], [9, entry(q({ t: 1n, x: 9 }), 1)]])));
  const before = held(d, 1n);
  const tenBytes = [...Array(9).fill(0xff), 0x01]; // 2^64 - 1
  const cases: [string, DeltaSnapshot][] = [
    ['tick 0', snap(0, 0, [0, 0, 0])],
    ['baseline not older than the snapshot', snap(4, 4, [0, 0, 0])],
    ['truncated', snap(2, 1, [])],
    ['truncated', snap(2, 1, [0x00, 0x00, 0x01, 0x80])], // an id gap whose varint never ends
    ['truncated', snap(2, 1, [0x00, 0x00, 0x01, 0x0a])], // an entry without its mask
    ['truncated', snap(2, 1, [0x00, 0x00, 0x01, 0x0a, 0x01, 0x05])], // POS with x but no y
    ['truncated', snap(2, 1, [0x00, 0x00, 0x01, 0x0a, 0x01, 0x05, 0x00])], // POS with x, y but no age
    ['truncated', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x00, 0x00])], // an update's POS: age, dx, no dy
    ['truncated', snap(2, 1, [0x00, 0x01, 0x00, 0x01])], // an update's POS without its age
    ['varint longer than 10 bytes', snap(2, 1, [0x00, 0x00, 0x01, ...Array(10).fill(0xff), 0x01])],
    ['count larger than the view', snap(2, 1, [0x03])], // 3 removals from a view of 2
    ['count larger than the view', snap(2, 1, [0x00, 0x03])],
    ['count larger than the view', snap(2, 1, [0x00, 0x00, 0xff, 0x01])], // 255 entries > 2 x 84
    ['count larger than the view', snap(2, 1, [0x00, 0x00, 0xa9, 0x01])], // 169 entries > 2 x 84
    ['truncated', snap(2, 1, [0x00, 0x00, 0xa8, 0x01])], // 168 entries: a count in range, then nothing
    ['removed index past the baseline', snap(2, 1, [0x01, 0x02, 0x00, 0x00])],
    ['removed index past the baseline', snap(2, 1, [0x02, 0x00, 0x01, 0x00, 0x00])], // 0, then 0 + 1 + 1 = 2
    ['updated index past the baseline', snap(2, 1, [0x00, 0x01, 0x05, 0x04, 0x02, 0x00])],
    ['an entity both removed and updated', snap(2, 1, [0x01, 0x01, 0x01, 0x01, 0x04, 0x02, 0x00])],
    ['NPC bit in an update', snap(2, 1, [0x00, 0x01, 0x00, 0x80, 0x00])],
    ['reserved mask bit set', snap(2, 1, [0x00, 0x01, 0x00, 0x40, 0x00])],
    ['reserved mask bit set', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x40])],
    ['position out of range', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00])], // x 3 - 4 < 0
    ['position out of range', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x00, 0x00])],
    // Both deltas are read before either is checked: a truncated dy wins over a bad dx.
    ['truncated', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x00, 0x07])],
    // An age past the snapshot's tick (2): in an entry (after x and y), in an update (before the deltas).
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x01, 0x00, 0x00, 0x03])],
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x03, 0x00, 0x00, 0x00])],
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x01, 0x00, 0x00, ...tenBytes, 0x00])],
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x01, 0x00, 0x01, ...tenBytes, 0x00, 0x00, 0x00])],
    // Checked at once, before what follows is read: the update's deltas, the entry's velocity.
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x01, 0x00, 0x01, 0x03])],
    ['trajectory anchored before tick 0', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x03, 0x00, 0x00, 0x03])],
    // An entry's x and y come first: a bad x wins over a bad age.
    ['value out of range', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x01, 0x80, 0x80, 0x80, 0x80, 0x10, 0x00, 0x03])],
    ['varint longer than 10 bytes', snap(2, 1, [0x00, 0x01, 0x00, 0x01, ...Array(10).fill(0x80), 0x00, 0x00, 0x00, 0x00])],
    ['value out of range', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x01, 0x80, 0x80, 0x80, 0x80, 0x10, 0x00])], // x = 2^32
    ['value out of range', snap(2, 1, [0x00, 0x00, 0x01, 0x05, 0x04, 0x80, 0x80, 0x80, 0x80, 0x10])], // hp zigzag 2^32
    ['an entering entity is already in the view', snap(2, 1, [0x00, 0x00, 0x01, 0x09, 0x00])],
    ['id overflows', snap(2, 1, [0x00, 0x00, 0x02, ...Array(9).fill(0xff), 0x01, 0x00, 0x00, 0x00])],
    ['trailing bytes', snap(2, 1, [0x00, 0x00, 0x00, 0x00])],
    ['trailing bytes', snap(2, 0, [...ENTER_77, 0x00])],
  ];
  for (const [what, s] of cases) {
    assertMalformed(() => d.decodeView(s), what);
    assert.equal(d.ack(), 1n, what);
    assert.deepEqual(held(d, 1n), before, what);
    assert.equal(d.view(2n), null, what);
  }
  // After all of that the next good one decodes; an age equal to the tick (anchored at tick 0) is fine.
  const v = d.decodeView(snap(2, 1, [0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00]));
  assert.deepEqual(v.entities.map((e) => [e.id, e.q]), [[9n, q({ t: 0n, x: 9 })]]);
});

test('varints are read as Rust reads them: ten bytes at most, bits past 64 dropped, exact above 2^53', () => {
  const d = new DeltaDecoder();
  // A ten-byte zero (padding): fine. The tenth byte keeps only its lowest bit (Rust's u64 << 63).
  const padded = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7e];
  assert.deepEqual(ids(d.decodeView(snap(1, 0, [0x00, 0x00, 0x01, ...padded, 0x00]))), [0n]);
  // Id 2^64 - 1 (ten bytes) enters; its Long is unsigned and exact.
  const max = [...Array(9).fill(0xff), 0x01];
  const s = d.decode(snap(2, 0, [0x00, 0x00, 0x01, ...max, 0x00]));
  assert.equal(Long.fromValue(s.entities![0].id!).toString(), '18446744073709551615');
  // An id of 2^53 + 1 (not a safe JS number) is kept exactly.
  const out: number[] = [0x00, 0x00, 0x01];
  varint(out, 2n ** 53n + 1n);
  out.push(0x00);
  assert.deepEqual(ids(d.decodeView(snap(3, 0, out))), [2n ** 53n + 1n]);
  // Then an entry at id gap 0 after it: 2^53 + 2.
  const two: number[] = [0x00, 0x00, 0x02];
  varint(two, 2n ** 53n + 1n);
  two.push(0x00, 0x00, 0x00);
  assert.deepEqual(ids(d.decodeView(snap(4, 0, two))), [2n ** 53n + 1n, 2n ** 53n + 2n]);
  // Extremes of every field round-trip.
  const extreme = q({ t: 0n, x: 0xffffffff, y: 1, vx: -(2 ** 31), vy: 2 ** 31 - 1, hp: -1, maxHp: 2 ** 31 - 1, level: 0xffffffff, flags: 3 });
  assert.deepEqual(d.decodeView(snap(5, 0, encode([], [], [[1, entry(extreme, 5)]]))).entities[0].q, extreme);
  const back = q({ t: 6n, x: 0, y: 0xffffffff, vx: 1, vy: -1, hp: -(2 ** 31), maxHp: 0, level: 0, flags: 0 });
  assert.deepEqual(d.decodeView(snap(6, 5, encode([], [[0, update(extreme, back, 6)]], []))).entities[0].q, back);
  // A ten-byte age (padded zero) is an age of 0.
  const v = d.decodeView(snap(7, 6, [0x00, 0x01, 0x00, 0x01, ...padded, 0x02, 0x00, 0x00]));
  assert.deepEqual([v.entities[0].q.t, v.entities[0].q.x], [7n, 1]);
});

test('ticks and acknowledgements are exact u64s; reset forgets every view', () => {
  const d = new DeltaDecoder();
  assert.equal(d.ack(), 0n);
  const far = 2n ** 60n + 7n;
  d.decodeView(snap(far, 0, ENTER_77));
  assert.equal(d.ack(), far);
  assert.equal(big(longOf(d.ack())), far, 'the Long sent in Input.snapshot_ack is the exact tick');
  assert.throws(() => d.decodeView(snap(far - 1n, 0, ENTER_77)), StaleSnapshot);
  assert.equal(d.decodeView(snap(far + 1n, far, [0, 0, 0])).entities.length, 1);
  d.reset();
  assert.equal(d.ack(), 0n);
  assert.equal(d.view(far), null);
  assert.throws(() => d.decodeView(snap(5, far, [0, 0, 0])), MalformedDelta, 'baseline newer than the snapshot');
  assert.throws(() => d.decodeView(snap(far + 2n, far, [0, 0, 0])), MissingBaseline);
  // A new session's ticks may be lower than the old one's: after a reset they decode.
  assert.equal(d.decodeView(snap(3, 0, ENTER_77)).tick, 3n);
  assert.equal(d.ack(), 3n);
  // Ages past 2^53 are exact: anchored at tick 0 in the snapshot of 2^60 + 7 (age = the tick); one more is
  // malformed.
  const old = q({ t: 0n, x: 5 });
  assert.deepEqual(d.decodeView(snap(far, 3, encode([], [], [[8, entry(old, far)]]))).entities[0].q, old);
  const tooOld = [0x00, 0x00, 0x01, 0x09, 0x01, 0x05, 0x00]; // entity 9 enters at x 5 ...
  varint(tooOld, far + 2n); // ... as of tick -1
  assertMalformed(() => d.decodeView(snap(far + 1n, far, tooOld)), 'trajectory anchored before tick 0');
  assert.equal(d.ack(), far);
});

test('an Input carries snapshot_ack as field 6 (the u64 the server reads), a DeltaSnapshot tick_rate as field 7', () => {
  const bytes = pb.Input.encode({ sequence: 1, snapshotAck: longOf(300n) }).finish();
  // 08 01 = sequence 1; 30 ac 02 = field 6 varint 300.
  assert.deepEqual([...bytes], [0x08, 0x01, 0x30, 0xac, 0x02]);
  // And a DeltaSnapshot from the server (field 9 of DataMessage) decodes into what the decoder takes.
  const frame = pb.WsFrame.encode({ data: { deltaSnapshot: { tick: 5, baselineTick: 0, lastProcessedInput: 2, totalVisible: 1, entities: new Uint8Array(ENTER_77), tickRate: 10 } } }).finish();
  const m = pb.WsFrame.decode(frame).data!;
  assert.equal(m.body, 'deltaSnapshot');
  assert.equal(m.deltaSnapshot!.tickRate, 10);
  const s = new DeltaDecoder().decode(m.deltaSnapshot!);
  assert.equal(num(s.entities![0].id), 77);
  assert.equal(s.lastProcessedInput, 2);
  // Two ticks at 10 ticks per second: 0.2 s at 2 m/s west.
  assert.deepEqual(s.entities![0].position, { x: Math.fround((64000 - 128 * (2 / 10)) / 64), y: 960 });
  // tick_rate is field 7 (38 = 7 << 3 | varint).
  const only = pb.DeltaSnapshot.encode({ tickRate: 20 }).finish();
  assert.deepEqual([...only], [0x38, 0x14]);
});

// ----- random -------------------------------------------------------------------------------------------------

/** mulberry32: a seeded generator, so a failure names a reproducible seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What a decoder holds for the last `WINDOW` ticks up to `newest`, by identity (views are replaced, never edited). */
const slots = (d: DeltaDecoder, newest: bigint): (View | null)[] =>
  Array.from({ length: WINDOW }, (_, k) => (newest - BigInt(k) > 0n ? d.view(newest - BigInt(k)) : null));

/** A view's content as text (ids and quantized states), to prove it was not edited in place. */
const fingerprint = (v: View | null): string =>
  v === null ? 'none' : `${v.tick}:${v.entities.map((e) => `${e.id}=${JSON.stringify({ ...e.q, t: String(e.q.t) })}`).join(';')}`;

/** A random anchor tick for the snapshot of `tick`: now, or up to 40 ticks back (never before tick 0). */
const anchorFor = (r: () => number, tick: bigint): bigint => {
  const back = BigInt(Math.floor(r() * 41));
  return r() < 0.3 || back > tick ? tick : tick - back;
};

/** A random valid `entities` for the snapshot of `tick` against `base`: some removed, some updated, a few entering. */
function valid(r: () => number, base: View, tick: bigint): Uint8Array {
  const removed: number[] = [];
  const updates: [number, number[]][] = [];
  base.entities.forEach((e, i) => {
    const roll = r();
    if (roll < 0.2) removed.push(i);
    else if (roll < 0.5) {
      const t = r() < 0.5 ? e.q.t : anchorFor(r, tick);
      updates.push([i, update(e.q, { ...e.q, t, x: Math.floor(r() * 1000), hp: e.q.hp - 1 }, tick)]);
    }
  });
  const entering: [bigint, number[]][] = [];
  for (let id = 0n; id < 12n; id++) {
    if (r() < 0.15 && !base.entities.some((e) => e.id === id && !removed.includes(base.entities.indexOf(e)))) {
      const s = q({ npc: r() < 0.5, t: anchorFor(r, tick), x: Math.floor(r() * 5000), vy: Math.floor(r() * 9) - 4, level: 1 });
      entering.push([id, entry(s, tick)]);
    }
  }
  return encode(removed, updates, entering);
}

test('random bytes never throw anything but a DeltaError, and a failure changes no view', () => {
  const r = rng(20);
  const start = encode([], [], [3, 9, 40].map((id) => [id, entry(q({ t: 2n, x: id }), 2)] as [number, number[]]));
  // One long-lived decoder takes every input at rising ticks (some decode: it moves on); each failure must leave
  // every held view and the acknowledgement exactly as they were.
  const d = new DeltaDecoder();
  d.decodeView(snap(2, 0, start));
  let tick = 2n;
  const outcomes = { decoded: 0, stale: 0, 'missing-baseline': 0, malformed: 0 };
  for (let n = 0; n < 20_000; n++) {
    const ack = d.ack();
    const at = r() < 0.05 ? ack : tick + 1n;
    let bytes: number[];
    if (n % 3 === 0) {
      // A valid snapshot against the newest view, usually with one byte changed, inserted or dropped.
      bytes = [...valid(r, d.view(ack)!, at)];
      const m = r();
      const i = Math.floor(r() * bytes.length);
      if (m < 0.3) bytes[i] = Math.floor(r() * 256);
      else if (m < 0.5) bytes.splice(i, 0, Math.floor(r() * 256));
      else if (m < 0.7) bytes.splice(i, 1);
    } else {
      // Small bytes are likelier, so that counts and gaps are often in range and decoding gets deep.
      const len = Math.floor(r() * (n % 10 === 1 ? 300 : 24));
      bytes = Array.from({ length: len }, () => (r() < 0.5 ? Math.floor(r() * 4) : Math.floor(r() * 256)));
    }
    // Mostly against the newest view (as a server would), sometimes none, an older or a missing one, or stale.
    const roll = r();
    const base = roll < 0.6 ? ack : roll < 0.75 ? 0n : roll < 0.9 ? ack - BigInt(Math.floor(r() * 40)) : ack + 1n;
    const before = slots(d, ack);
    const prints = before.map(fingerprint);
    try {
      d.decodeView(snap(at, base < 0n ? 0n : base, bytes));
      outcomes.decoded += 1;
      tick = at;
      assert.equal(d.ack(), at);
    } catch (e) {
      if (!(e instanceof DeltaError)) throw new Error(`case ${n} [${bytes.join(',')}] threw ${String(e)}`);
      outcomes[e.kind] += 1;
      assert.equal(d.ack(), ack, `case ${n}`);
      const after = slots(d, ack);
      after.forEach((v, k) => assert.equal(v, before[k], `case ${n}: slot ${k}`));
      assert.deepEqual(after.map(fingerprint), prints, `case ${n}`);
      tick = at > tick ? at : tick; // a failed tick is not retried: the next input is newer
    }
  }
  // The property is only worth something if every path ran.
  for (const [k, v] of Object.entries(outcomes)) assert.ok(v > 20, `${k}: ${v} of 20000 (${JSON.stringify(outcomes)})`);
});

test('random valid snapshots round-trip: every body, every mix of removals, updates and entries', () => {
  const r = rng(7);
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const rq = (tick: number): QState => {
    const pick = (f: () => number) => (r() < 0.3 ? 0 : f());
    return q({
      npc: r() < 0.5,
      t: BigInt(r() < 0.3 ? tick : tick - int(0, Math.min(tick, 40))),
      x: pick(() => int(0, 0xffffffff)),
      y: pick(() => int(0, 128_000)),
      vx: pick(() => int(-(2 ** 31), 2 ** 31 - 1)),
      vy: pick(() => int(-400, 400)),
      hp: pick(() => int(-5, 2 ** 31 - 1)),
      maxHp: pick(() => int(0, 500)),
      level: pick(() => int(0, 0xffffffff)),
      flags: pick(() => int(0, 3)),
    });
  };
  const d = new DeltaDecoder();
  // The model: what the views must be, by tick.
  const model = new Map<number, Map<bigint, QState>>();
  model.set(0, new Map());
  let tick = 0;
  for (let round = 0; round < 400; round++) {
    tick += int(1, 3);
    // A baseline the decoder holds (or none), as the server picks from acknowledgements.
    const usable = [...model.keys()].filter((t) => t === 0 || (t > tick - WINDOW && d.view(BigInt(t)) !== null));
    const baseTick = usable[int(0, usable.length - 1)];
    const base = [...model.get(baseTick)!.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const removed: number[] = [];
    const updates: [number, number[]][] = [];
    const next = new Map<bigint, QState>();
    base.forEach(([id, s], i) => {
      const roll = r();
      if (roll < 0.15) removed.push(i);
      else if (roll < 0.6) {
        const changed = { ...rq(tick), npc: s.npc };
        if (r() < 0.3) changed.t = s.t; // a trajectory kept (hp changed, say)
        const body = update(s, changed, tick);
        if (body.length > 0) updates.push([i, body]);
        next.set(id, changed);
      } else next.set(id, s);
    });
    const entering: [bigint, number[]][] = [];
    const count = int(0, 6);
    for (let k = 0; k < count; k++) {
      // Mostly small ids (collisions with the view are skipped), sometimes a re-entry of a removed one.
      const id = r() < 0.2 && removed.length > 0 ? base[removed[0]][0] : BigInt(int(0, 60));
      if (next.has(id) || entering.some((e) => e[0] === id)) continue;
      const s = rq(tick);
      next.set(id, s);
      entering.push([id, entry(s, tick)]);
    }
    entering.sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const rate = int(0, 3) === 0 ? int(0, 60) : 20;
    const snapshot = d.decode(snap(tick, baseTick, encode(removed, updates, entering), rate));
    const v = d.view(BigInt(tick))!;
    const want = [...next.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    assert.deepEqual(
      v.entities.map((e) => [e.id, e.q]),
      want,
      `round ${round}: tick ${tick} against ${baseTick}`,
    );
    // The Snapshot: every position extrapolated from its anchor to this tick, rounded once to f32.
    const at = (x: number, vx: number, t: bigint) => Math.fround((x + vx * (Number(BigInt(tick) - t) / Math.max(1, rate))) / 64);
    assert.deepEqual(
      snapshot.entities!.map((e) => [num(e.id), e.position!.x, e.position!.y, e.velocity!.x, e.velocity!.y]),
      want.map(([id, s]) => [Number(id), at(s.x, s.vx, s.t), at(s.y, s.vy, s.t), Math.fround(s.vx) / 64, s.vy / 64]),
      `round ${round}`,
    );
    model.set(tick, next);
    assert.equal(d.ack(), BigInt(tick));
  }
});
