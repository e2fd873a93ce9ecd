// The same cases as src/game_client/prediction.rs: the browser and the terminal client must predict alike.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_UNACKNOWLEDGED, Predictor, dist, pos, step, type Pos } from '../src/prediction.js';

const EAST = pos(1, 0);
const NORTH = pos(0, 1);
const close = (a: Pos, b: Pos, eps = 1e-4) => assert.ok(dist(a, b) < eps, `${JSON.stringify(a)} != ${JSON.stringify(b)}`);

test('one input moves one tick at player speed', () => {
  close(step(pos(10, 10), EAST, 6, 0.05), pos(10.3, 10));
});

test('over-long directions are normalised like the server does, NaN stands still, short ones walk slower', () => {
  close(step(pos(0, 0), pos(3, 4), 6, 0.05), pos(0.18, 0.24));
  close(step(pos(0, 0), pos(NaN, 1), 6, 0.05), pos(0, 0));
  close(step(pos(0, 0), pos(0.5, 0), 6, 0.05), pos(0.15, 0));
});

test('inputs move the prediction before the server answers', () => {
  const p = new Predictor(pos(100, 100), 6, 20);
  for (let s = 1; s <= 10; s++) p.applyInput(s, EAST);
  close(p.position(), pos(103, 100));
  assert.equal(p.pending(), 10);
  close(p.serverPosition(), pos(100, 100));
});

test('a snapshot that agrees changes nothing and drops the acknowledged inputs', () => {
  const p = new Predictor(pos(0, 0), 6, 20);
  for (let s = 1; s <= 4; s++) p.applyInput(s, EAST);
  close(p.reconcile(pos(0.6, 0), 2), pos(1.2, 0));
  assert.deepEqual([p.pending(), p.acknowledged()], [2, 2]);
  assert.ok(p.lastCorrection() < 1e-4);
});

test('a snapshot that disagrees replays the unacknowledged inputs on the server position', () => {
  const p = new Predictor(pos(0, 0), 6, 20);
  p.applyInput(1, EAST);
  p.applyInput(2, EAST);
  p.applyInput(3, NORTH);
  close(p.reconcile(pos(0, 0), 2), pos(0, 0.3));
  assert.ok(Math.abs(p.lastCorrection() - dist(pos(0.6, 0.3), pos(0, 0.3))) < 1e-4);
  close(p.applyInput(4, NORTH), pos(0, 0.6));
});

test('an out-of-order snapshot is ignored', () => {
  const p = new Predictor(pos(0, 0), 6, 20);
  for (let s = 1; s <= 5; s++) p.applyInput(s, EAST);
  p.reconcile(pos(1.2, 0), 4);
  const before = p.position();
  assert.deepEqual(p.reconcile(pos(0.6, 0), 2), before);
  assert.deepEqual([p.acknowledged(), p.pending()], [4, 1]);
});

test('stale or repeated sequences do not move the prediction', () => {
  const p = new Predictor(pos(0, 0), 6, 20);
  p.applyInput(1, EAST);
  p.applyInput(1, EAST);
  p.reconcile(pos(0.3, 0), 1);
  close(p.applyInput(1, EAST), pos(0.3, 0));
  assert.equal(p.pending(), 0);
});

test('the unacknowledged queue is bounded', () => {
  const p = new Predictor(pos(0, 0), 6, 20);
  const last = MAX_UNACKNOWLEDGED + 50;
  for (let s = 1; s <= last; s++) p.applyInput(s, EAST);
  assert.equal(p.pending(), MAX_UNACKNOWLEDGED);
  close(p.reconcile(pos(5, 5), last), pos(5, 5));
});

test('a full round trip with a lagging server converges on the server track without corrections', () => {
  // The server (modelled in f32 like the real one) processes each input two frames after it is sent.
  const p = new Predictor(pos(0, 0), 6, 20);
  let server = pos(0, 0);
  const sent: Pos[] = [];
  for (let frame = 1; frame <= 40; frame++) {
    const dir = frame <= 20 ? EAST : NORTH;
    sent.push(dir);
    p.applyInput(frame, dir);
    if (frame > 2) {
      const processed = frame - 2;
      server = step(server, sent[processed - 1], 6, 0.05);
      p.reconcile(server, processed);
      assert.ok(p.lastCorrection() < 1e-3, `frame ${frame}: corrected by ${p.lastCorrection()}`);
    }
  }
  close(p.position(), pos(6, 6), 1e-3);
});
