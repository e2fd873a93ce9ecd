// The session's input pacing against a fake WebSocket: what goes on the wire while the player acts and while the
// player does nothing (idle inputs keep acknowledging delta snapshots, protocol v2).
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { IDLE_INPUT_TICKS } from '../src/input.js';
import { big, decodeFrame, encodeFrame, num, type WsFrameInit } from '../src/proto.js';
import { Session } from '../src/session.js';

/** Just enough of a browser WebSocket: records what the session sends, lets the test deliver frames. */
class FakeWebSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static opened: FakeWebSocket[] = [];
  readyState = FakeWebSocket.OPEN;
  binaryType = 'blob';
  readonly sent: Uint8Array[] = [];
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  constructor(readonly url: string) {
    FakeWebSocket.opened.push(this);
  }
  send(bytes: Uint8Array): void {
    this.sent.push(bytes);
  }
  close(): void {
    this.readyState = FakeWebSocket.CLOSED;
  }
  /** The server sends `frame`. */
  deliver(frame: WsFrameInit): void {
    const bytes = encodeFrame(frame);
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  /** The inputs sent so far (and forgets them). */
  takeInputs() {
    const inputs = this.sent.map((b) => decodeFrame(b).data?.input).filter((i) => i != null);
    this.sent.length = 0;
    return inputs.map((i) => ({
      sequence: i.sequence,
      move: [i.moveDir?.x ?? 0, i.moveDir?.y ?? 0],
      ability: i.ability,
      target: num(i.targetEntity),
      ack: big(i.snapshotAck),
    }));
  }
}

/** A logged-in session at `tickRateHz`, its socket, the timers mocked (the test calls `tick` itself). */
async function inGame(tickRateHz: number): Promise<{ s: Session; ws: FakeWebSocket }> {
  const g = globalThis as Record<string, unknown>;
  g.WebSocket = FakeWebSocket;
  g.location = { origin: 'http://realm.test' };
  g.fetch = async () => ({ ok: true, status: 200, text: async () => JSON.stringify({ token: 'tok' }) });
  const s = new Session('http://realm.test');
  await s.enter('login', 'ann', 'pw');
  const ws = FakeWebSocket.opened[FakeWebSocket.opened.length - 1];
  assert.match(ws.url, /protocol=2/);
  ws.deliver({ control: { loginOk: { entityId: 100, playerId: 7, zone: 'starter-vale', tickRateHz, position: { x: 10, y: 20 } } } });
  assert.equal(s.phase, 'game');
  assert.equal(s.connected, true);
  return { s, ws };
}

/** A delta snapshot of `tick` against `baseline` with the player standing at (10 m, 20 m) (an entry, or nothing). */
function standing(tick: number, baseline: number, tickRate: number): WsFrameInit {
  // Entity 100 enters: mask POS, x 640, y 1280, age 0.
  const entities = baseline === 0 ? [0x00, 0x00, 0x01, 100, 0x01, 0x80, 0x05, 0x80, 0x0a, 0x00] : [0x00, 0x00, 0x00];
  return { data: { deltaSnapshot: { tick, baselineTick: baseline, tickRate, entities: new Uint8Array(entities) } } };
}

test('an idle player sends a zero input every 4 ticks carrying the newest acknowledgement; moving sends every tick', async () => {
  mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  try {
    const { s, ws } = await inGame(20);
    const idle = (sequence: number, ack: bigint) => ({ sequence, move: [0, 0], ability: 0, target: 0, ack });
    // The first tick: nothing acknowledged yet, and the idle input goes out at once.
    s.tick(1000);
    assert.deepEqual(ws.takeInputs(), [idle(1, 0n)]);
    ws.deliver(standing(7, 0, 20));
    assert.equal(s.views.ack(), 7n);
    // Three ticks (50 ms each) of nothing, then the 4th sends the idle input acknowledging tick 7.
    for (const now of [1050, 1100, 1150]) s.tick(now);
    assert.deepEqual(ws.takeInputs(), []);
    s.tick(1200);
    assert.deepEqual(ws.takeInputs(), [idle(2, 7n)]);
    // Snapshots keep coming against tick 7; each idle input acknowledges the newest.
    for (let tick = 8; tick <= 40; tick++) {
      ws.deliver(standing(tick, 7 + 4 * Math.floor((tick - 8) / 4), 20));
      s.tick(1200 + (tick - 7) * 50);
    }
    // 33 ticks after the one at 1200 ms: at ticks 11, 15, ..., 39 (every IDLE_INPUT_TICKS = 4).
    const sent = ws.takeInputs();
    assert.equal(IDLE_INPUT_TICKS, 4);
    assert.equal(sent.length, 8);
    sent.forEach((input, k) => assert.deepEqual(input, idle(3 + k, BigInt(11 + 4 * k))));
    assert.equal(s.undecodable.malformed + s.undecodable.missingBaseline + s.undecodable.stale, 0);
    // The idle inputs move nothing: the prediction stays where the server says the player stands.
    assert.deepEqual(s.game.position(), { x: 10, y: 20 });
    // Walking: one input per tick, each with the acknowledgement; after the key is released, the next idle input
    // comes 4 ticks after the last step.
    s.planner.keyDown('KeyD');
    for (const now of [3000, 3050, 3100]) s.tick(now);
    s.planner.keyUp('KeyD');
    for (const now of [3150, 3200, 3250, 3300]) s.tick(now);
    const walk = ws.takeInputs();
    assert.deepEqual(
      walk.map((i) => [i.sequence, i.move[0], i.ack]),
      [
        [11, 1, 40n],
        [12, 1, 40n],
        [13, 1, 40n],
        [14, 0, 40n],
      ],
    );
    // Three steps east (0.3 m each at the default speed); the idle input after them adds nothing.
    assert.ok(Math.abs(s.game.position().x - 10.9) < 1e-3, JSON.stringify(s.game.position()));
  } finally {
    mock.timers.reset();
  }
});

test('idle inputs follow the LoginOk tick rate, and none goes out when not in game', async () => {
  mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  try {
    const { s, ws } = await inGame(10);
    const times: number[] = [];
    for (let now = 0; now <= 2000; now += 100) {
      s.tick(now);
      if (ws.takeInputs().length > 0) times.push(now);
    }
    // 10 ticks per second: every 400 ms.
    assert.deepEqual(times, [0, 400, 800, 1200, 1600, 2000]);
    // A dropped socket (resuming): nothing is sent.
    ws.readyState = FakeWebSocket.CLOSED;
    s.tick(5000);
    assert.deepEqual(ws.takeInputs(), []);
  } finally {
    mock.timers.reset();
  }
});
