// A render fixture for the smoke check (tools/screenshot.mjs), not part of the bundle: feeds GameState a made-up
// scene through the same calls the session makes and draws one frame, so the canvas view can be looked at without
// a server. Nothing here talks to a network.
import { pb } from '../src/proto.js';
import { draw } from '../src/render.js';
import { GameState } from '../src/state.js';

const game = new GameState();
game.join({ entityId: 100, playerId: 1, zone: 'starter-vale', tickRateHz: 20, position: { x: 1978, y: 1985 }, username: 'ann' }, 0);
const npc = pb.EntityKind.ENTITY_KIND_NPC;
const player = pb.EntityKind.ENTITY_KIND_PLAYER;
const snapshot = pb.Snapshot.decode(
  pb.Snapshot.encode({
    tick: 10,
    lastProcessedInput: 0,
    entities: [
      { id: 100, kind: player, position: { x: 1978, y: 1985 }, hp: 80, maxHp: 100, level: 3 },
      { id: 101, kind: player, position: { x: 1968, y: 1990 }, hp: 40, maxHp: 100, level: 4 },
      { id: 5, kind: npc, position: { x: 1990, y: 1980 }, hp: 30, maxHp: 30, level: 1 },
      { id: 6, kind: npc, position: { x: 1985, y: 1972 }, hp: 10, maxHp: 45, level: 3, flags: 2 },
      { id: 7, kind: npc, position: { x: 1960, y: 1975 }, hp: 90, maxHp: 90, level: 6 },
      { id: 8, kind: npc, position: { x: 1995, y: 1995 }, hp: 0, maxHp: 30, level: 2, flags: 1 },
    ],
  }).finish(),
);
game.snapshot(snapshot, 0);
game.chatMessage({ channel: pb.ChatChannel.CHAT_CHANNEL_SAY, fromEntity: 101, fromName: 'bob', text: 'hi' });
game.playerStats({ hp: 80, maxHp: 100, level: 3, xp: 120, xpToNext: 200 });
game.target = 6;
const canvas = document.getElementById('world') as HTMLCanvasElement;
draw(canvas.getContext('2d')!, game, 1000, { x: 1982, y: 1990 });
document.body.dataset.drawn = 'yes';
