// GameState fed the way the session feeds it: the cases of src/game_client/state.rs plus interpolation and input
// sequencing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InputPlanner, directionTowards, keyDirection } from '../src/input.js';
import { Interpolator } from '../src/interpolation.js';
import { pos, type Pos } from '../src/prediction.js';
import { ChatChannel, CombatEventKind, EntityKind, pb, type EntityState, type Snapshot } from '../src/proto.js';
import { FLAG_DEAD, GameState, type Joined } from '../src/state.js';

const joined = (over: Partial<Joined> = {}): Joined => ({
  entityId: 100,
  playerId: 7,
  zone: 'starter-vale',
  tickRateHz: 20,
  position: pos(1000, 1000),
  username: 'ann',
  ...over,
});

const entity = (id: number, kind: number, x: number, y: number, flags = 0): EntityState => ({
  id,
  kind,
  position: { x, y },
  hp: flags & FLAG_DEAD ? 0 : 50,
  maxHp: 60,
  level: 2,
  flags,
});

/** A snapshot as it comes out of the decoder (encoded and decoded, so Long ids and defaults are real). */
function snapshot(tick: number, last: number, me: [number, number], others: EntityState[] = []): Snapshot {
  const s = { tick, lastProcessedInput: last, entities: [entity(100, EntityKind.ENTITY_KIND_PLAYER, me[0], me[1]), ...others] };
  return pb.Snapshot.decode(pb.Snapshot.encode(s).finish());
}

const input = (sequence: number, x: number, y: number) => ({ sequence, moveDir: pos(x, y), ability: 0, targetEntity: 0 });

test('sent inputs move the player and snapshots reconcile it', () => {
  const s = new GameState();
  s.join(joined(), 0);
  for (let q = 1; q <= 4; q++) s.inputSent(input(q, 1, 0), q * 50);
  assert.ok(Math.abs(s.position().x - 1001.2) < 1e-3, JSON.stringify(s.position()));
  // The server processed two inputs, but a wall stopped it after one.
  s.snapshot(snapshot(10, 2, [1000.3, 1000]), 250);
  assert.ok(Math.abs(s.position().x - 1000.9) < 1e-3, JSON.stringify(s.position()));
});

test('a zone transfer (a new join) restarts prediction from the new spawn', () => {
  const s = new GameState();
  s.join(joined(), 0);
  for (let q = 1; q <= 5; q++) s.inputSent(input(q, 1, 0), 0);
  s.join(joined({ position: pos(30, 1000), zone: 'dark-forest' }), 0);
  assert.deepEqual(s.position(), pos(30, 1000));
  assert.equal(s.predictor.pending(), 0, "the old session's inputs are not replayed");
  s.inputSent(input(1, 0, 1), 0);
  assert.ok(Math.abs(s.position().y - 1000.3) < 1e-3);
});

test('tab cycles living NPCs nearest first and wraps; a target that leaves is dropped', () => {
  const s = new GameState();
  s.join(joined(), 0);
  const npc = EntityKind.ENTITY_KIND_NPC;
  s.snapshot(
    snapshot(1, 0, [1000, 1000], [
      entity(3, npc, 1020, 1000),
      entity(1, npc, 1005, 1000),
      entity(2, npc, 1001, 1000, FLAG_DEAD),
      entity(4, EntityKind.ENTITY_KIND_PLAYER, 1002, 1000),
      entity(5, npc, 1000, 1010),
    ]),
    0,
  );
  assert.deepEqual([1, 2, 3, 4].map(() => s.cycleTarget(true)), [1, 5, 3, 1]);
  assert.equal(s.cycleTarget(false), 3);
  s.snapshot(snapshot(2, 0, [1000, 1000], [entity(1, npc, 1005, 1000)]), 50);
  assert.equal(s.target, null);
});

test('a late snapshot does not rewind the world', () => {
  const s = new GameState();
  s.join(joined(), 0);
  s.snapshot(snapshot(10, 0, [1000, 1000], [entity(1, EntityKind.ENTITY_KIND_NPC, 1005, 1000)]), 0);
  s.snapshot(snapshot(9, 0, [1000, 1000]), 10);
  assert.equal(s.tick, 10);
  assert.ok(s.entity(1) !== undefined);
});

test('combat, loot and chat become readable lines; names are learnt from chat; repeats collapse', () => {
  const s = new GameState();
  s.join(joined(), 0);
  s.snapshot(snapshot(1, 0, [1000, 1000], [entity(9, EntityKind.ENTITY_KIND_NPC, 1010, 1000)]), 0);
  const hit = { kind: CombatEventKind.COMBAT_EVENT_HIT, sourceEntity: 100, targetEntity: 9, ability: 2, amount: 21, tick: 1 };
  s.combat(pb.CombatEvent.decode(pb.CombatEvent.encode(hit).finish()));
  s.combat({ ...hit, kind: CombatEventKind.COMBAT_EVENT_XP, ability: 0, amount: 20 });
  s.loot({ itemId: 77, itemKind: 3, quantity: 2 });
  s.chatMessage({ channel: ChatChannel.CHAT_CHANNEL_ZONE, fromEntity: 55, fromName: 'bob', text: 'hi' });
  assert.deepEqual(s.combatLog, [
    'you hit npc#9 (lv 2) with firebolt for 21',
    'you gained 20 XP for npc#9 (lv 2)',
    'you received 2 x item kind 3 (item #77)',
  ]);
  assert.deepEqual(s.chat, [{ channel: 'zone', fromEntity: 55, from: 'bob', text: 'hi' }]);
  assert.ok(s.log.some((l) => l.kind === 'zone' && l.text === '[zone] bob: hi'));
  assert.equal(s.nameOf(55), 'bob');
  for (let i = 0; i < 3; i++) s.note('server: the road is closed');
  const last = s.log[s.log.length - 1];
  assert.deepEqual([last.text, last.count], ['server: the road is closed', 3]);
});

test('others are interpolated between snapshots, drawn two ticks in the past', () => {
  const s = new GameState();
  s.join(joined(), 0);
  const npc = EntityKind.ENTITY_KIND_NPC;
  // Ticks 10..13 arrive exactly every 50 ms; the NPC walks 1 m east per tick.
  for (let k = 0; k < 4; k++) s.snapshot(snapshot(10 + k, 0, [1000, 1000], [entity(9, npc, 1000 + k, 1000)]), 1000 + k * 50);
  // At t = 1150 ms the newest is tick 13; drawn is tick 11; at +25 ms, tick 11.5.
  const at = (ms: number) => s.others(ms).find((e) => e.id === 9)!.position.x;
  assert.ok(Math.abs(at(1150) - 1001) < 1e-6, String(at(1150)));
  assert.ok(Math.abs(at(1175) - 1001.5) < 1e-6, String(at(1175)));
  // Past the newest snapshot (a stall), others stop at the last known position instead of running off.
  assert.ok(Math.abs(at(5000) - 1003) < 1e-6);
  // The player's own entity is never among the interpolated others.
  assert.ok(!s.others(1150).some((e) => e.id === 100));
});

test('the interpolation clock ignores jitter and resynchronises after a stall', () => {
  const i = new Interpolator(20);
  const jitter = [0, 30, -20, 10, 25, -15, 0, 5];
  jitter.forEach((j, k) => i.push(k, k * 50 + j + 100, new Map<number, Pos>([[1, pos(k, 0)]])));
  // Despite +-30 ms of jitter, the render tick at the last arrival is ~2 ticks behind the newest.
  const lag = 7 - i.renderTick(7 * 50 + 100);
  assert.ok(lag > 1.5 && lag < 2.6, `lag ${lag}`);
  // The stream stalls for 2 s (a paused tab, a server hiccup), then tick 8 arrives: the clock jumps to it instead
  // of drawing the last position for 40 ticks and then racing through the buffer.
  i.push(8, 2450 + 100, new Map([[1, pos(8, 0)]]));
  const after = 8 - i.renderTick(2450 + 100);
  assert.ok(Math.abs(after - 2) < 1e-9, `after ${after}`);
});

test('input sequences start at 1, rise by one; standing still sends only the idle input every 4 ticks', () => {
  const p = new InputPlanner();
  const here = pos(0, 0);
  const TICK = 50;
  // Ticks of the input timer: t(k) is the k-th at 50 ms each.
  const t = (k: number) => 1000 + k * TICK;
  // A new session's first tick sends an idle input at once (acknowledging what it has), then none for 3 ticks.
  assert.deepEqual(p.next(here, 0.3, t(0), TICK), { sequence: 1, moveDir: pos(0, 0), ability: 0, targetEntity: 0 });
  assert.equal(p.next(here, 0.3, t(1), TICK), null);
  p.keyDown('KeyW');
  p.keyDown('KeyD');
  const a = p.next(here, 0.3, t(2), TICK)!;
  assert.equal(a.sequence, 2);
  assert.ok(Math.abs(Math.hypot(a.moveDir.x, a.moveDir.y) - 1) < 1e-9, 'a diagonal is a unit vector');
  assert.equal(p.next(here, 0.3, t(3), TICK)!.sequence, 3, 'moving: one input every tick');
  p.keyUp('KeyW');
  p.keyUp('KeyD');
  assert.equal(p.next(here, 0.3, t(4), TICK), null);
  p.useAbility(1, 9);
  const b = p.next(here, 0.3, t(5), TICK)!;
  assert.deepEqual([b.sequence, b.ability, b.targetEntity, b.moveDir.x, b.moveDir.y], [4, 1, 9, 0, 0]);
  assert.equal(p.next(here, 0.3, t(6), TICK), null, 'an ability is used once');
  assert.equal(p.next(here, 0.3, t(7), TICK), null);
  assert.equal(p.next(here, 0.3, t(8), TICK), null);
  // Four ticks after the last input: an idle one (zero move, no ability, no target), whatever came before.
  assert.deepEqual(p.next(here, 0.3, t(9), TICK), { sequence: 5, moveDir: pos(0, 0), ability: 0, targetEntity: 0 });
  p.reset();
  p.keyDown('ArrowLeft');
  assert.equal(p.next(here, 0.3, t(10), TICK)!.sequence, 1, 'a new session starts again at 1');
});

test('idle inputs keep coming every 4 ticks of the tick rate, with a jittery timer too', () => {
  for (const hz of [20, 30, 10]) {
    const tick = 1000 / hz;
    const p = new InputPlanner();
    const r = (() => {
      let a = hz;
      return () => ((a = (a * 1103515245 + 12345) >>> 0) / 2 ** 32);
    })();
    const sent: number[] = [];
    // Two minutes of a timer that fires once per tick period, each firing up to 30% of a period late (setInterval
    // keeps its schedule: a late firing does not delay the next).
    for (let k = 0; k < 120 * hz; k++) {
      const now = 5000 + k * tick + r() * 0.3 * tick;
      const planned = p.next(pos(0, 0), 0.3, now, tick);
      if (planned !== null) {
        assert.deepEqual([planned.moveDir, planned.ability, planned.targetEntity], [pos(0, 0), 0, 0]);
        assert.equal(planned.sequence, sent.length + 1);
        sent.push(now);
      }
    }
    const gaps = sent.slice(1).map((s, i) => (s - sent[i]) / tick);
    // Every 4th firing: 4 periods give or take the lateness, never the 5th (the acknowledgement the server holds
    // is at most about 4 + the round trip in ticks old, far within its 32-tick window).
    assert.ok(Math.max(...gaps) <= 4.3 + 1e-9 && Math.min(...gaps) >= 3.7 - 1e-9, `${hz} Hz: gaps ${Math.min(...gaps)}..${Math.max(...gaps)}`);
    assert.equal(sent.length, 30 * hz, `${hz} Hz: idle inputs in 2 min`);
  }
});

test('keys: opposite directions cancel, W and ArrowUp are one up; click-to-move stops on the goal', () => {
  assert.deepEqual(keyDirection(['KeyA', 'KeyD']), pos(0, 0));
  assert.deepEqual(keyDirection(['KeyW', 'ArrowUp']), pos(0, 1));
  assert.deepEqual(directionTowards(pos(0, 0), pos(10, 0), 0.3), pos(1, 0));
  const last = directionTowards(pos(0, 0), pos(0.15, 0), 0.3)!;
  assert.ok(Math.abs(last.x - 0.5) < 1e-9, 'the last step is shortened to land on the goal');
  assert.equal(directionTowards(pos(0, 0), pos(0.01, 0), 0.3), null);
  const p = new InputPlanner();
  p.moveTo(pos(0.6, 0));
  assert.deepEqual(p.next(pos(0, 0), 0.3, 1000, 50)!.moveDir, pos(1, 0));
  assert.equal(p.next(pos(0.6, 0), 0.3, 1050, 50), null, 'arrived: stop sending');
  assert.equal(p.goalPosition(), null);
});
