// WsFrame round trips through the generated code: what the client sends decodes as the server's prost would
// read it, and what the server sends (bytes written here by hand from the schema's field numbers) decodes right.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import Long from 'long';
import {
  KickReason,
  LoginErrorReason,
  base64url,
  decodeFrame,
  encodeFrame,
  fromBase64url,
  kickName,
  loginErrorName,
  loginErrorValue,
  num,
  pb,
  u64,
} from '../src/proto.js';

test('an Input frame round-trips with its sequence, direction, ability and 64-bit fields', () => {
  const bytes = encodeFrame({
    data: {
      input: {
        sequence: 42,
        moveDir: { x: 0.6, y: -0.8 },
        ability: 2,
        targetEntity: u64(4294967727),
        clientTimeUs: u64(1_700_000_000_123_456),
      },
    },
  });
  const f = decodeFrame(bytes);
  assert.equal(f.body, 'data');
  assert.equal(f.data?.body, 'input');
  const i = f.data!.input!;
  assert.equal(i.sequence, 42);
  assert.equal(i.ability, 2);
  assert.equal(num(i.targetEntity), 4294967727);
  assert.equal(num(i.clientTimeUs), 1_700_000_000_123_456);
  assert.ok(Math.abs(i.moveDir!.x! - 0.6) < 1e-6 && Math.abs(i.moveDir!.y! + 0.8) < 1e-6);
});

test('the oneof field numbers match realm.proto (WsFrame.data = 2, DataMessage.input = 3)', () => {
  const bytes = encodeFrame({ data: { input: { sequence: 1 } } });
  // 0x12 = field 2 (data), length-delimited; then 0x1a = field 3 (input), length-delimited; then 0x08 01 = sequence 1.
  assert.deepEqual([...bytes], [0x12, 0x04, 0x1a, 0x02, 0x08, 0x01]);
  const ctl = encodeFrame({ control: { logout: {} } });
  // field 1 (control) containing field 14 (logout, tag 0x72) of length 0.
  assert.deepEqual([...ctl], [0x0a, 0x02, 0x72, 0x00]);
});

test('a LoginOk from the server decodes with its resume token and position', () => {
  const token = new Uint8Array([0xfb, 0xff, 0x00, 0x10, 0x7e]);
  const bytes = pb.WsFrame.encode({
    control: {
      loginOk: {
        sessionId: Long.fromString('18446744073709551615', true),
        playerId: 7,
        zone: 'starter-vale',
        tickRateHz: 20,
        entityId: 100,
        sessionToken: token,
        position: { x: 1000, y: 960 },
      },
    },
  }).finish();
  // As a browser hands it over: an ArrayBuffer of exactly the message (node's Buffer.slice would share its pool).
  const f = decodeFrame(new Uint8Array(bytes).buffer);
  const ok = f.control!.loginOk!;
  assert.equal(f.control!.body, 'loginOk');
  assert.equal(Long.fromValue(ok.sessionId!).toString(), '18446744073709551615', 'u64 kept exactly');
  assert.deepEqual([...ok.sessionToken!], [...token]);
  assert.equal(num(ok.entityId), 100);
  assert.deepEqual([ok.position!.x, ok.position!.y], [1000, 960]);
});

test('a 64-bit ping nonce is echoed bit for bit', () => {
  const nonce = Long.fromString('12345678901234567891', true);
  const ping = decodeFrame(pb.WsFrame.encode({ data: { ping: { nonce, clientTimeUs: 5 } } }).finish());
  const pong = decodeFrame(encodeFrame({ data: { pong: { nonce: ping.data!.ping!.nonce, clientTimeUs: ping.data!.ping!.clientTimeUs } } }));
  assert.equal(Long.fromValue(pong.data!.pong!.nonce!).toString(), '12345678901234567891');
});

test('a Snapshot with entities decodes; unknown fields from a newer server are skipped', () => {
  const snap = pb.WsFrame.encode({
    data: {
      snapshot: {
        tick: 99,
        lastProcessedInput: 12,
        entities: [
          { id: 100, kind: pb.EntityKind.ENTITY_KIND_PLAYER, position: { x: 1, y: 2 }, hp: 50, maxHp: 60, level: 3 },
          { id: 5, kind: pb.EntityKind.ENTITY_KIND_NPC, position: { x: 3, y: 4 }, flags: 1 },
        ],
      },
    },
  }).finish();
  // Append an unknown field 99 (varint) inside the DataMessage: a proto3 reader skips it.
  const f = decodeFrame(snap);
  assert.equal(num(f.data!.snapshot!.tick), 99);
  assert.equal(f.data!.snapshot!.entities!.length, 2);
  const withUnknown = new Uint8Array([...snap, 0x98, 0x06, 0x01]); // field 99, varint 1, at the WsFrame level
  assert.equal(decodeFrame(withUnknown).data!.snapshot!.lastProcessedInput, 12);
});

test('garbage is refused by the decoder instead of yielding a frame', () => {
  assert.throws(() => decodeFrame(new Uint8Array([0x0a, 0x50, 0x01])));
});

test('tokens travel as unpadded base64url and come back', () => {
  const bytes = new Uint8Array([0xfb, 0xff, 0xbf, 0x00, 0x01]);
  const s = base64url(bytes);
  assert.equal(s, '-_-_AAE');
  assert.deepEqual([...fromBase64url(s)], [...bytes]);
  assert.equal(base64url(new Uint8Array()), '');
});

test('enum names come from the schema both ways', () => {
  assert.equal(loginErrorName(LoginErrorReason.LOGIN_ERROR_INVALID_RESUME), 'LOGIN_ERROR_INVALID_RESUME');
  assert.equal(loginErrorValue('LOGIN_ERROR_BANNED'), 6);
  assert.equal(loginErrorValue('toString'), undefined);
  assert.equal(kickName(KickReason.KICK_REASON_LOGGED_OUT), 'KICK_REASON_LOGGED_OUT');
});
