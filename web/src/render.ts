// The top-down view on a canvas: ground grid, zone bounds, entities, the player centred. Pure drawing from
// GameState; no input handling (main.ts maps clicks back to world positions with `Camera`).

import type { Pos } from './prediction.js';
import { ZONE_SIZE, type Entity, type GameState } from './state.js';

/** Pixels per metre. The view radius (60 m) fits the canvas width at 8 px/m. */
export const SCALE = 8;

/** World <-> canvas mapping: the camera sits on the player, +y (north) is up on screen. */
export class Camera {
  constructor(
    public centre: Pos,
    public width: number,
    public height: number,
    public scale = SCALE,
  ) {}

  toScreen(p: Pos): Pos {
    return { x: this.width / 2 + (p.x - this.centre.x) * this.scale, y: this.height / 2 - (p.y - this.centre.y) * this.scale };
  }

  toWorld(s: Pos): Pos {
    return { x: this.centre.x + (s.x - this.width / 2) / this.scale, y: this.centre.y - (s.y - this.height / 2) / this.scale };
  }
}

/**
 * NPC colour by level difference ("con" colours): grey far below, green below, yellow even, orange above, red far
 * above. NPCs carry no kind name on the wire, so threat is what tells them apart.
 */
export function npcColour(npcLevel: number, myLevel: number): string {
  const d = npcLevel - myLevel;
  if (d <= -5) return '#8a8f98';
  if (d <= -2) return '#5fd35f';
  if (d <= 1) return '#f2de4b';
  if (d <= 3) return '#ff9a3c';
  return '#ff4b4b';
}

export function draw(ctx: CanvasRenderingContext2D, game: GameState, nowMs: number, goal: Pos | null): Camera {
  const { width, height } = ctx.canvas;
  const me = game.smoothPosition(nowMs);
  const cam = new Camera(me, width, height);
  ctx.fillStyle = '#0c0d10';
  ctx.fillRect(0, 0, width, height);
  drawGround(ctx, cam);

  if (goal !== null) {
    const g = cam.toScreen(goal);
    ctx.strokeStyle = 'rgba(232,182,76,0.7)';
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(g.x, g.y, 6, 0, Math.PI * 2);
    ctx.stroke();
  }

  const myLevel = game.stats?.level ?? game.ownEntity()?.level ?? 1;
  const others = game.others(nowMs);
  // Dead first, so the living draw over corpses.
  others.sort((a, b) => Number(b.dead) - Number(a.dead));
  for (const e of others) drawEntity(ctx, cam, e, e.name, myLevel, e.id === game.target);

  const own = game.ownEntity();
  drawSelf(ctx, cam, me, own, game.joined?.username ?? '');
  return cam;
}

function drawGround(ctx: CanvasRenderingContext2D, cam: Camera): void {
  const { width, height } = ctx.canvas;
  const tl = cam.toWorld({ x: 0, y: 0 });
  const br = cam.toWorld({ x: width, y: height });
  // Outside the zone: hatched dark.
  const z0 = cam.toScreen({ x: 0, y: ZONE_SIZE });
  const z1 = cam.toScreen({ x: ZONE_SIZE, y: 0 });
  ctx.fillStyle = '#1a2a1c';
  ctx.fillRect(z0.x, z0.y, z1.x - z0.x, z1.y - z0.y);
  for (const [every, colour] of [
    [5, 'rgba(255,255,255,0.05)'],
    [50, 'rgba(255,255,255,0.14)'],
  ] as const) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let x = Math.ceil(tl.x / every) * every; x <= br.x; x += every) {
      const s = cam.toScreen({ x, y: 0 });
      ctx.moveTo(Math.round(s.x) + 0.5, 0);
      ctx.lineTo(Math.round(s.x) + 0.5, height);
    }
    for (let y = Math.ceil(br.y / every) * every; y <= tl.y; y += every) {
      const s = cam.toScreen({ x: 0, y });
      ctx.moveTo(0, Math.round(s.y) + 0.5);
      ctx.lineTo(width, Math.round(s.y) + 0.5);
    }
    ctx.stroke();
  }
  // The zone's edge.
  ctx.strokeStyle = '#e8b64c';
  ctx.lineWidth = 3;
  ctx.strokeRect(z0.x, z0.y, z1.x - z0.x, z1.y - z0.y);
  // Coordinates, to orient oneself.
  ctx.fillStyle = 'rgba(255,255,255,0.45)';
  ctx.font = '12px system-ui, sans-serif';
  ctx.textAlign = 'left';
  ctx.fillText(`${cam.centre.x.toFixed(1)}, ${cam.centre.y.toFixed(1)}`, 8, height - 8);
}

function hpBar(ctx: CanvasRenderingContext2D, x: number, y: number, hp: number, maxHp: number): void {
  if (maxHp <= 0) return;
  const w = 30;
  const f = Math.max(0, Math.min(1, hp / maxHp));
  ctx.fillStyle = 'rgba(0,0,0,0.7)';
  ctx.fillRect(x - w / 2 - 1, y - 1, w + 2, 6);
  ctx.fillStyle = f > 0.5 ? '#4cd964' : f > 0.25 ? '#ffcc00' : '#ff3b30';
  ctx.fillRect(x - w / 2, y, w * f, 4);
}

function label(ctx: CanvasRenderingContext2D, text: string, x: number, y: number, colour: string): void {
  ctx.font = '12px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.fillStyle = 'rgba(0,0,0,0.8)';
  ctx.fillText(text, x + 1, y + 1);
  ctx.fillStyle = colour;
  ctx.fillText(text, x, y);
}

function drawEntity(
  ctx: CanvasRenderingContext2D,
  cam: Camera,
  e: Entity,
  name: string,
  myLevel: number,
  targeted: boolean,
): void {
  const s = cam.toScreen(e.position);
  const r = 7;
  if (targeted) {
    ctx.strokeStyle = '#ff4b4b';
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(s.x, s.y, r + 6, 0, Math.PI * 2);
    ctx.stroke();
  }
  if (e.dead) {
    ctx.strokeStyle = '#666b75';
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.moveTo(s.x - r, s.y - r);
    ctx.lineTo(s.x + r, s.y + r);
    ctx.moveTo(s.x + r, s.y - r);
    ctx.lineTo(s.x - r, s.y + r);
    ctx.stroke();
    return;
  }
  if (e.kind === 'npc') {
    // NPCs are diamonds coloured by threat; in combat they get a dark outline.
    ctx.fillStyle = npcColour(e.level, myLevel);
    ctx.beginPath();
    ctx.moveTo(s.x, s.y - r - 2);
    ctx.lineTo(s.x + r + 2, s.y);
    ctx.lineTo(s.x, s.y + r + 2);
    ctx.lineTo(s.x - r - 2, s.y);
    ctx.closePath();
    ctx.fill();
    if (e.inCombat) {
      ctx.strokeStyle = '#000';
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    label(ctx, `${name}`, s.x, s.y - r - 14, '#d8d8d8');
  } else {
    // Other players are blue circles with their name.
    ctx.fillStyle = '#4aa3ff';
    ctx.beginPath();
    ctx.arc(s.x, s.y, r, 0, Math.PI * 2);
    ctx.fill();
    label(ctx, `${name} (${e.level})`, s.x, s.y - r - 14, '#9fd0ff');
  }
  hpBar(ctx, s.x, s.y - r - 10, e.hp, e.maxHp);
}

function drawSelf(ctx: CanvasRenderingContext2D, cam: Camera, me: Pos, own: Entity | undefined, name: string): void {
  const s = cam.toScreen(me);
  ctx.fillStyle = own?.dead ? '#666b75' : '#e8b64c';
  ctx.strokeStyle = '#fff';
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.arc(s.x, s.y, 8, 0, Math.PI * 2);
  ctx.fill();
  ctx.stroke();
  label(ctx, name, s.x, s.y - 22, '#ffe6a8');
  if (own !== undefined) hpBar(ctx, s.x, s.y - 18, own.hp, own.maxHp);
}
