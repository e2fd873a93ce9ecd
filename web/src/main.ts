// The page: screens, form, keyboard and mouse, HUD, logs, the render loop, and `window.realm`, the hook the
// browser tests drive. Everything that decides something lives in session.ts / state.ts; this file only binds.

import { Camera, draw } from './render.js';
import { Session, type Phase } from './session.js';
import type { LogLine } from './state.js';

const session = new Session(location.origin);
const game = session.game;

function el<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`missing #${id}`);
  return e as T;
}

const screens: Record<Phase, HTMLElement> = {
  login: el('screen-login'),
  connecting: el('screen-connecting'),
  game: el('screen-game'),
  resuming: el('screen-game'),
  ended: el('screen-ended'),
};
const canvas = el<HTMLCanvasElement>('world');
const ctx = canvas.getContext('2d')!;
const chatInput = el<HTMLInputElement>('chat-input');
const chatChannel = el<HTMLSelectElement>('chat-channel');
let camera = new Camera({ x: 0, y: 0 }, canvas.width, canvas.height);

// ----- screens ---------------------------------------------------------------------------------------------------

function showScreen(): void {
  const active = screens[session.phase];
  for (const s of new Set(Object.values(screens))) s.hidden = s !== active;
  document.body.dataset.phase = session.phase;
  const err = session.lastError;
  const loginError = el('login-error');
  if (session.phase === 'login') {
    loginError.hidden = err === null;
    loginError.textContent = err === null ? '' : err.message + (err.detail ? ` (${err.detail})` : '');
    loginError.dataset.reason = err?.reason ?? '';
    // Logging out is not an error: same place, calmer colour.
    loginError.className = err?.reason === 'KICK_REASON_LOGGED_OUT' ? 'notice' : 'error';
  }
  if (session.phase === 'ended') {
    el('ended-title').textContent = err?.kind === 'transfer' ? 'The road is closed' : 'Disconnected';
    el('ended-reason').textContent = err?.message ?? 'The session ended.';
    el('ended-reason').dataset.reason = err?.reason ?? '';
    el('ended-detail').textContent = err?.detail ?? '';
  }
  el('connecting-text').textContent = 'Connecting...';
  el('hud-status').textContent = session.phase === 'resuming' ? 'Connection lost, reconnecting...' : '';
}

let lastPhase: Phase | null = null;
session.onChange(() => {
  if (session.phase !== lastPhase) {
    if (session.phase === 'game' && lastPhase !== 'resuming') canvas.focus();
    lastPhase = session.phase;
    showScreen();
  }
  renderLogs();
  renderHud();
});

el<HTMLFormElement>('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const submitter = (ev as SubmitEvent).submitter as HTMLButtonElement | null;
  const mode = submitter?.value === 'register' ? 'register' : 'login';
  void session.enter(mode, el<HTMLInputElement>('username').value.trim(), el<HTMLInputElement>('password').value);
});
el('btn-back').addEventListener('click', () => session.backToLogin());
el('btn-logout').addEventListener('click', () => session.logout());
for (const id of [1, 2, 3]) {
  el(`ability-${id}`).addEventListener('click', () => {
    session.useAbility(id);
    canvas.focus();
  });
}

// ----- chat and logs ---------------------------------------------------------------------------------------------

el<HTMLFormElement>('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (session.chat(chatChannel.value === 'zone' ? 'zone' : 'say', chatInput.value)) chatInput.value = '';
  canvas.focus();
});
chatInput.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') {
    chatInput.blur();
    canvas.focus();
  }
});

let renderedLog: LogLine[] = [];
let renderedCounts: number[] = [];
/** Appends new lines only (the log is long-lived; re-rendering it 20 times a second would be wasteful). */
function renderLogs(): void {
  const chatLog = el('chat-log');
  const combatLog = el('combat-log');
  const log = game.log;
  const unchanged =
    renderedLog.length === log.length &&
    log.every((l, i) => l === renderedLog[i] && l.count === renderedCounts[i]);
  if (unchanged) return;
  chatLog.replaceChildren();
  combatLog.replaceChildren();
  for (const line of log) {
    const li = document.createElement('li');
    li.className = line.kind;
    li.textContent = line.count > 1 ? `${line.text} (x${line.count})` : line.text;
    (line.kind === 'combat' || line.kind === 'loot' ? combatLog : chatLog).append(li);
  }
  chatLog.scrollTop = chatLog.scrollHeight;
  combatLog.scrollTop = combatLog.scrollHeight;
  renderedLog = [...log];
  renderedCounts = log.map((l) => l.count);
}

function renderHud(): void {
  const j = game.joined;
  el('hud-zone').textContent = j ? j.zone : '';
  const own = game.ownEntity();
  const hp = game.stats?.hp ?? own?.hp ?? 0;
  const maxHp = game.stats?.maxHp ?? own?.maxHp ?? 0;
  const hpBar = el<HTMLProgressElement>('hud-hp');
  hpBar.max = Math.max(1, maxHp);
  hpBar.value = Math.max(0, hp);
  el('hud-hp-text').textContent = maxHp > 0 ? `${hp}/${maxHp}` : '';
  el('hud-level').textContent = String(game.stats?.level ?? own?.level ?? 1);
  const xp = Number(game.stats?.xp ?? 0);
  const toNext = Number(game.stats?.xpToNext ?? 0);
  const xpBar = el<HTMLProgressElement>('hud-xp');
  xpBar.max = Math.max(1, xp + toNext);
  xpBar.value = xp;
  el('hud-xp-text').textContent = game.stats ? `${xp}/${xp + toNext}` : '';
  const t = game.target;
  const te = t === null ? undefined : game.entity(t);
  el('hud-target').textContent =
    te === undefined ? 'no target' : `target: ${game.nameOf(te.id)} ${te.hp}/${te.maxHp} (${game.distanceTo(te.id)?.toFixed(1)} m)`;
  el('hud-net').textContent =
    session.rttMs === null ? `tick ${game.tick}` : `tick ${game.tick}, rtt ${Math.round(session.rttMs)} ms`;
}

// ----- keyboard and mouse ----------------------------------------------------------------------------------------

function typing(ev: KeyboardEvent): boolean {
  const t = ev.target as HTMLElement | null;
  return t !== null && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA');
}

window.addEventListener('keydown', (ev) => {
  if (session.phase !== 'game' && session.phase !== 'resuming') return;
  if (typing(ev)) return;
  if (session.planner.keyDown(ev.code)) {
    ev.preventDefault();
    return;
  }
  if (ev.key >= '1' && ev.key <= '3') {
    session.useAbility(Number(ev.key));
  } else if (ev.key === 'Tab') {
    ev.preventDefault();
    game.cycleTarget(!ev.shiftKey);
    renderHud();
  } else if (ev.key === 'Enter') {
    ev.preventDefault();
    chatInput.focus();
  } else if (ev.key === 'Escape') {
    game.target = null;
    session.planner.moveTo(null);
  }
});
window.addEventListener('keyup', (ev) => {
  session.planner.keyUp(ev.code);
});
// Keys released while the window had no focus never send keyup: stop walking rather than walk forever.
window.addEventListener('blur', () => session.planner.releaseAll());

function canvasPoint(ev: MouseEvent): { x: number; y: number } {
  const r = canvas.getBoundingClientRect();
  return { x: ((ev.clientX - r.left) * canvas.width) / r.width, y: ((ev.clientY - r.top) * canvas.height) / r.height };
}

canvas.addEventListener('mousedown', (ev) => {
  if (session.phase !== 'game') return;
  canvas.focus();
  const world = camera.toWorld(canvasPoint(ev));
  // Within 1.5 m (12 px) of an entity is a click on it: target it; anywhere else: walk there.
  const hit = game.entityNear(world, 12 / camera.scale, performance.now());
  if (hit !== null) {
    game.target = hit;
    renderHud();
  } else {
    session.planner.moveTo(world);
  }
});
canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());

// ----- render loop -----------------------------------------------------------------------------------------------

let hudAt = 0;
function frame(now: number): void {
  if (session.phase === 'game' || session.phase === 'resuming') {
    camera = draw(ctx, game, now, session.planner.goalPosition());
    if (now - hudAt > 200) {
      hudAt = now;
      renderHud();
    }
  }
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

// ----- test hook -------------------------------------------------------------------------------------------------

/** What the browser tests read and call (`window.realm`). Plain data only: safe to return from page.evaluate. */
const hook = {
  state() {
    const now = performance.now();
    const p = game.position();
    return {
      phase: session.phase,
      connected: session.connected,
      entityId: game.joined?.entityId ?? null,
      playerId: game.joined?.playerId ?? null,
      username: game.joined?.username ?? null,
      zone: game.joined?.zone ?? null,
      tick: game.tick,
      position: { x: p.x, y: p.y },
      serverPosition: { ...game.predictor.serverPosition() },
      pendingInputs: game.predictor.pending(),
      lastInputSequence: session.planner.lastSequence(),
      acknowledgedInput: game.predictor.acknowledged(),
      lastCorrection: game.predictor.lastCorrection(),
      snapshots: game.snapshots,
      target: game.target,
      stats: game.stats
        ? {
            hp: game.stats.hp,
            maxHp: game.stats.maxHp,
            level: game.stats.level,
            xp: Number(game.stats.xp),
            xpToNext: Number(game.stats.xpToNext),
          }
        : null,
      others: game.others(now).map((e) => ({
        id: e.id,
        name: e.name,
        kind: e.kind,
        position: { ...e.position },
        hp: e.hp,
        maxHp: e.maxHp,
        level: e.level,
        dead: e.dead,
      })),
      chat: game.chat.map((c) => ({ ...c })),
      combatLog: [...game.combatLog],
      log: game.log.map((l) => ({ ...l })),
      lastError: session.lastError ? { ...session.lastError } : null,
      rttMs: session.rttMs,
      framesIn: session.framesIn,
      framesOut: session.framesOut,
      snapshotAck: Number(session.views.ack()),
      undecodable: { ...session.undecodable },
      decoded: { ...session.decoded },
    };
  },
  register: (username: string, password: string) => session.enter('register', username, password),
  login: (username: string, password: string) => session.enter('login', username, password),
  chat: (text: string, channel: 'say' | 'zone' = 'say') => session.chat(channel, text),
  target: (id: number | null) => {
    game.target = id;
  },
  targetNearest: () => {
    game.target = null;
    return game.cycleTarget(true);
  },
  useAbility: (id: number) => session.useAbility(id),
  moveTo: (x: number, y: number) => session.planner.moveTo({ x, y }),
  logout: () => session.logout(),
};

declare global {
  interface Window {
    realm: typeof hook;
  }
}
window.realm = hook;
showScreen();
