// The browser session: HTTP login, then one WebSocket carrying `WsFrame`s both ways, with resumption after a drop
// and zone transfers. It owns the timers (one input per tick while the player moves or acts, one every 4 ticks
// while idle; a control ping every 5 s) and feeds `GameState`.
//
// Lifecycle (`phase`):
//   login --POST /api/login|register--> connecting --loginOk--> game --drop without Kick--> resuming --loginOk--> game
//     ^                                     |                   |  \--zoneTransfer(web_address)--> connecting
//     +------ loginError / 1008 / INVALID_RESUME / logged out --+---\--Kick or no way back--> ended
//
// Invariants: a socket that is no longer `this.ws` never changes anything (its late events are ignored: a
// transfer or resume replaces the socket while the old one is still closing); every session (login, resume,
// transfer) restarts input sequences at 1 and gets a fresh predictor, exactly as the server expects.
//
// Protocol version 2 (delta snapshots): every `/ws?` URL this opens asks for it (`&protocol=2`), so snapshots
// arrive as `DeltaSnapshot`s against a view the client acknowledged; `delta.ts` decodes them into the `Snapshot`s
// `GameState` takes, and every `Input` acknowledges the newest view decoded (`snapshot_ack`), as the Rust client
// does. An idle player still sends an input (zero move, no ability) every `IDLE_INPUT_TICKS` ticks, so that the
// acknowledgement never gets old enough (32 ticks) for the server to fall back to full snapshots. Each socket is a
// new server session whose views start empty, so the decoder is reset with each. A server that answers with v1
// `Snapshot`s is still understood.

import { DeltaDecoder, DeltaError } from './delta.js';
import { InputPlanner } from './input.js';
import {
  ChatChannel,
  KickReason,
  LoginErrorReason,
  base64url,
  decodeFrame,
  encodeFrame,
  loginErrorName,
  loginErrorValue,
  longOf,
  num,
  u64,
  type ControlMessage,
  type DataMessage,
  type Snapshot,
  type WsFrameInit,
} from './proto.js';
import { GameState } from './state.js';
import { chatRefusedText, closeText, kickText, loginErrorText, reasonForHttpStatus } from './texts.js';

/** Times a login or registration answered SERVER_BUSY is asked again before the player is told. */
const BUSY_RETRIES = 4;

export type Phase = 'login' | 'connecting' | 'game' | 'resuming' | 'ended';

/** Why the last attempt or session failed, for the screens and the test hook. */
export interface SessionError {
  kind: 'login' | 'kick' | 'close' | 'transfer' | 'network' | 'chat' | 'notice';
  /** The proto enum name (LOGIN_ERROR_..., KICK_REASON_...), or `WS_CLOSE_<code>`, `HTTP_<status>`, ... */
  reason: string;
  /** Human text. */
  message: string;
  /** What the server said itself, when it said something. */
  detail?: string;
}

/** The server keeps a dropped session this long (game.resume_grace_secs). */
export const RESUME_WINDOW_MS = 30_000;
export const RESUME_BACKOFF_MS = 1_000;
export const CONTROL_PING_MS = 5_000;
export const LOGOUT_TIMEOUT_MS = 5_000;
/** Chat text limit of the protocol, in UTF-8 bytes. */
export const CHAT_MAX_BYTES = 256;
/** The protocol version the client speaks: 2, delta snapshots (the `/ws` upgrade's `protocol` parameter). */
export const PROTOCOL_VERSION = 2;

/**
 * The `/ws` URL on `base` (an http(s):// or ws(s):// origin, or a page location's origin) with a query, and
 * `protocol=2` (a v1 server ignores it and sends full snapshots, which the client still reads).
 */
export function wsUrl(base: string, query: Record<string, string>): string {
  const u = new URL(base);
  u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
  u.pathname = '/ws';
  u.search = '';
  u.hash = '';
  for (const [k, v] of Object.entries(query)) u.searchParams.set(k, v);
  u.searchParams.set('protocol', String(PROTOCOL_VERSION));
  return u.toString();
}

/** Delta snapshots that could not be decoded in this page's life, by `DeltaError.kind` (for the test hook). */
export interface UndecodableCounts {
  stale: number;
  missingBaseline: number;
  malformed: number;
}

/** Delta snapshots decoded in this page's life (for the test hook). */
export interface DecodedCounts {
  /** All of them. */
  decoded: number;
  /**
   * Those against an empty view (`baseline_tick` 0): each session's first, and any after the server stopped
   * hearing acknowledgements (32 ticks without an input).
   */
  againstEmptyView: number;
  /** Ticks between the last one and its baseline (0: against an empty view). */
  lastBaselineAge: number;
}

/** Parses an /api error response into a SessionError (tolerates a body that is not the contract's JSON). */
export function apiError(status: number, body: string): SessionError & { retryAfterMs: number } {
  let reason = reasonForHttpStatus(status);
  let detail: string | undefined;
  let retryAfterMs = 0;
  try {
    const json = JSON.parse(body) as { reason?: unknown; message?: unknown; retry_after_ms?: unknown };
    if (typeof json.reason === 'string' && loginErrorValue(json.reason) !== undefined) reason = json.reason;
    if (typeof json.message === 'string' && json.message !== '') detail = json.message;
    if (typeof json.retry_after_ms === 'number') retryAfterMs = json.retry_after_ms;
  } catch {
    // Not JSON (a proxy's error page): the status decides.
  }
  if (reason === 'LOGIN_ERROR_UNSPECIFIED') {
    // A status outside the contract (404 from a server without the gateway, 500, 502 from a proxy) or a 400.
    const message =
      status === 400 ? 'The server could not read the request.' : `The server cannot log you in (HTTP ${status}).`;
    return { kind: 'login', reason: `HTTP_${status}`, message, detail, retryAfterMs };
  }
  return { kind: 'login', reason, message: loginErrorText(reason, retryAfterMs), detail, retryAfterMs };
}

/** UTF-8 length, for the chat limit. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

function nowUs(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

/** What a closed socket means (see `afterClose`). */
export type CloseOutcome = 'logged-out' | 'explained' | 'token-refused' | 'resume' | 'back-to-login' | 'ended';

/**
 * The decision taken when the game socket closes, as a pure function of what was known at that moment:
 * - the player asked to leave, or the server's last word was Kick LOGGED_OUT: back to the login screen;
 * - any other Kick or a LoginError came before the close: it already said why; no resume (kicks are final);
 * - 1008: the token (login, transfer or resume) was refused; only a new login helps;
 * - any other close while in game or resuming, with a resume token: resume (even 1000: the contract sends
 *   1000 only after a kick or logout, so a bare 1000 is a proxy or a restart, and the server decides);
 * - lost before any LoginOk (the gateway unreachable): back to the login screen; otherwise the ended screen.
 */
export function afterClose(c: {
  phase: Phase;
  code: number;
  leaving: boolean;
  explained: boolean;
  loggedOut: boolean;
  hasResumeToken: boolean;
}): CloseOutcome {
  if (c.leaving || (c.explained && c.loggedOut)) return 'logged-out';
  if (c.explained) return 'explained';
  if (c.code === 1008) return 'token-refused';
  if (c.hasResumeToken && (c.phase === 'game' || c.phase === 'resuming')) return 'resume';
  if (c.phase === 'connecting') return 'back-to-login';
  return 'ended';
}

export class Session {
  phase: Phase = 'login';
  readonly game = new GameState();
  readonly planner = new InputPlanner();
  lastError: SessionError | null = null;
  username = '';
  rttMs: number | null = null;
  /** Frames received and sent (for the test hook and the HUD). */
  framesIn = 0;
  framesOut = 0;
  /** Delta snapshots dropped undecoded (each is harmless: the next one decodes against what was acknowledged). */
  readonly undecodable: UndecodableCounts = { stale: 0, missingBaseline: 0, malformed: 0 };
  /** Delta snapshots decoded, and how old their baselines were. */
  readonly decoded: DecodedCounts = { decoded: 0, againstEmptyView: 0, lastBaselineAge: 0 };
  /** Protocol v2: the views decoded in this socket's session; its newest tick is acknowledged in every input. */
  readonly views = new DeltaDecoder();

  private ws: WebSocket | null = null;
  /** The http(s) origin of the zone we are in (changes with zone transfers). */
  private zoneOrigin: string;
  private sessionToken: Uint8Array | null = null;
  private kicked = false;
  private leaving = false;
  private resumeDeadline = 0;
  private inputTimer: ReturnType<typeof setInterval> | null = null;
  /** The server's tick period (LoginOk's tick rate), which paces inputs, idle ones included. */
  private tickMs = 50;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingNonce = 0;
  /** The newest input sequence a snapshot acknowledged in this session (sequences restart at 1 with each). */
  private rttAcked = 0;
  private readonly listeners: (() => void)[] = [];

  constructor(origin: string) {
    this.zoneOrigin = origin;
  }

  onChange(f: () => void): void {
    this.listeners.push(f);
  }

  private changed(): void {
    for (const f of this.listeners) f();
  }

  get connected(): boolean {
    return this.phase === 'game' && this.ws?.readyState === WebSocket.OPEN;
  }

  // ----- entering the game -----------------------------------------------------------------------------------

  /** POST /api/login or /api/register, then open the game socket with the token. */
  async enter(mode: 'login' | 'register', username: string, password: string): Promise<void> {
    if (this.phase === 'connecting' || this.phase === 'game') return;
    this.username = username;
    this.lastError = null;
    this.setPhase('connecting');
    let res: Response;
    let body = '';
    // A busy server (its password-hashing slots taken) says when to come back: the page waits and asks again by
    // itself a few times before it shows the player anything.
    for (let attempt = 1; ; attempt++) {
      try {
        res = await fetch(`/api/${mode}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ username, password }),
          credentials: 'same-origin',
        });
      } catch (e) {
        this.fail('login', { kind: 'network', reason: 'NETWORK', message: 'Could not reach the server.', detail: String(e) });
        return;
      }
      body = await res.text().catch(() => '');
      if (res.ok) break;
      const error = apiError(res.status, body);
      if (error.reason === 'LOGIN_ERROR_SERVER_BUSY' && attempt < BUSY_RETRIES) {
        await new Promise((done) => setTimeout(done, Math.min(Math.max(error.retryAfterMs, 500), 5000)));
        continue;
      }
      this.fail('login', error);
      return;
    }
    let token = '';
    try {
      const json = JSON.parse(body) as { token?: unknown };
      if (typeof json.token === 'string') token = json.token;
    } catch {
      // handled below
    }
    if (token === '') {
      this.fail('login', { kind: 'login', reason: 'BAD_RESPONSE', message: 'The server sent an unreadable answer.' });
      return;
    }
    this.zoneOrigin = location.origin;
    this.open(wsUrl(this.zoneOrigin, { token }));
  }

  private open(url: string): void {
    this.closeSocket();
    this.kicked = false;
    // A new server session: its first snapshot is against an empty view, and acknowledging a tick of the old
    // session would name a view this one never sent (only spoiling our own next snapshot).
    this.views.reset();
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      if (!(ev.data instanceof ArrayBuffer)) return; // the gateway sends binary only
      let frame;
      try {
        frame = decodeFrame(ev.data);
      } catch (e) {
        this.game.note(`undecodable frame from the server: ${String(e)}`, 'error');
        return;
      }
      this.framesIn += 1;
      if (frame.control) this.control(frame.control);
      else if (frame.data) this.data(frame.data);
      this.changed();
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closed(ev.code, ev.reason);
    };
  }

  private send(frame: WsFrameInit): boolean {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encodeFrame(frame));
    this.framesOut += 1;
    return true;
  }

  // ----- what the server sends -------------------------------------------------------------------------------

  private control(m: ControlMessage): void {
    switch (m.body) {
      case 'loginOk': {
        const ok = m.loginOk!;
        this.sessionToken = ok.sessionToken && ok.sessionToken.length > 0 ? ok.sessionToken : null;
        this.planner.reset();
        this.rttAcked = 0;
        this.game.join(
          {
            entityId: num(ok.entityId),
            playerId: num(ok.playerId),
            zone: ok.zone ?? '',
            tickRateHz: ok.tickRateHz || 20,
            position: { x: ok.position?.x ?? 0, y: ok.position?.y ?? 0 },
            username: this.username,
          },
          performance.now(),
        );
        this.lastError = null;
        this.setPhase('game');
        this.startTimers(ok.tickRateHz || 20);
        break;
      }
      case 'loginError': {
        const e = m.loginError!;
        const reason = loginErrorName(e.reason ?? 0);
        const err: SessionError = {
          kind: 'login',
          reason,
          message: loginErrorText(e.reason ?? 0, e.retryAfterMs ?? 0),
          detail: e.message || undefined,
        };
        this.sessionToken = null;
        // The server closes next; that close must not look like a drop to resume.
        this.kicked = true;
        this.fail('login', err);
        break;
      }
      case 'kick': {
        const k = m.kick!;
        this.kicked = true;
        const reason = k.reason ?? 0;
        this.lastError = {
          kind: 'kick',
          reason: (KickReason as unknown as Record<number, string>)[reason] ?? String(reason),
          message: kickText(reason),
          detail: k.message || undefined,
        };
        this.game.note(this.lastError.message, reason === KickReason.KICK_REASON_LOGGED_OUT ? 'system' : 'error');
        break;
      }
      case 'chatMessage':
        this.game.chatMessage(m.chatMessage!);
        break;
      case 'chatRefused': {
        const r = m.chatRefused!;
        const text = chatRefusedText(r.reason ?? 0, r.retryAfterMs ?? 0);
        this.lastError = { kind: 'chat', reason: String(r.reason ?? 0), message: text, detail: r.message || undefined };
        this.game.note(text, 'error');
        break;
      }
      case 'combatEvent':
        this.game.combat(m.combatEvent!);
        break;
      case 'playerStats':
        this.game.playerStats(m.playerStats!);
        break;
      case 'loot':
        this.game.loot(m.loot!);
        break;
      case 'error': {
        const text = m.error!.message ?? '';
        this.lastError = { kind: 'notice', reason: 'ERROR_NOTICE', message: text };
        this.game.note(`server: ${text}`, 'error');
        break;
      }
      case 'zoneTransfer':
        this.transfer(m);
        break;
      case 'ping':
        this.send({ control: { pong: { nonce: m.ping!.nonce, clientTimeUs: m.ping!.clientTimeUs } } });
        break;
      case 'pong': {
        const sent = num(m.pong!.clientTimeUs);
        if (sent > 0) this.rttMs = (nowUs() - sent) / 1000;
        this.game.tick = Math.max(this.game.tick, num(m.pong!.serverTick));
        break;
      }
      default:
        // helloOk and anything newer than this client: nothing to do (proto3 clients skip what they do not know).
        break;
    }
  }

  private data(m: DataMessage): void {
    switch (m.body) {
      case 'snapshot':
        this.snapshot(m.snapshot!);
        break;
      case 'deltaSnapshot': {
        let s: Snapshot;
        try {
          s = this.views.decode(m.deltaSnapshot!);
        } catch (e) {
          if (!(e instanceof DeltaError)) throw e;
          // Nothing to do but count it: the views are unchanged and the next snapshot is against a view we hold.
          if (e.kind === 'stale') this.undecodable.stale += 1;
          else if (e.kind === 'missing-baseline') this.undecodable.missingBaseline += 1;
          else {
            this.undecodable.malformed += 1;
            this.game.note(e.message, 'error');
          }
          break;
        }
        const baseline = num(m.deltaSnapshot!.baselineTick);
        this.decoded.decoded += 1;
        if (baseline === 0) this.decoded.againstEmptyView += 1;
        this.decoded.lastBaselineAge = baseline === 0 ? 0 : num(s.tick) - baseline;
        this.snapshot(s);
        break;
      }
      case 'ping':
        this.send({ data: { pong: { nonce: m.ping!.nonce, clientTimeUs: m.ping!.clientTimeUs } } });
        break;
      case 'pong':
        this.game.tick = Math.max(this.game.tick, num(m.pong!.serverTick));
        break;
      default:
        break;
    }
  }

  /** A v1 snapshot, or a v2 one decoded. */
  private snapshot(s: Snapshot): void {
    this.game.snapshot(s, performance.now());
    // The echo is the send time of the newest input the server processed, repeated in every snapshot until the
    // next input: it measures a round trip only in the first snapshot that acknowledges a new input (otherwise
    // the "rtt" of a player standing still would grow with the time since the last key press).
    const acked = s.lastProcessedInput ?? 0;
    const echoed = num(s.inputClientTimeUs);
    if (echoed > 0 && acked > this.rttAcked) this.rttMs = (nowUs() - echoed) / 1000;
    this.rttAcked = Math.max(this.rttAcked, acked);
  }

  private transfer(m: ControlMessage): void {
    const t = m.zoneTransfer!;
    const zone = t.zone ?? '?';
    this.sessionToken = null; // this zone's resume token dies with the transfer
    if (!t.webAddress) {
      this.kicked = true;
      this.stopTimers();
      this.lastError = {
        kind: 'transfer',
        reason: 'NO_WEB_ADDRESS',
        message: `The road to ${zone} is closed for browsers: that zone has no web endpoint. Your character was moved there; log in with the desktop client to continue.`,
      };
      this.game.note(this.lastError.message, 'error');
      this.closeSocket();
      this.setPhase('ended');
      return;
    }
    this.game.note(`travelling to ${zone}...`);
    this.stopTimers();
    this.zoneOrigin = t.webAddress;
    const token = base64url(t.transferToken ?? new Uint8Array());
    this.setPhase('connecting');
    this.open(wsUrl(this.zoneOrigin, { transfer: token, username: this.username }));
  }

  private closed(code: number, reason: string): void {
    this.stopTimers();
    const wasPhase = this.phase;
    const outcome = afterClose({
      phase: wasPhase,
      code,
      leaving: this.leaving,
      explained: this.kicked,
      loggedOut: this.lastError?.reason === 'KICK_REASON_LOGGED_OUT',
      hasResumeToken: this.sessionToken !== null,
    });
    this.leaving = false;
    if (outcome !== 'resume') this.sessionToken = null;
    switch (outcome) {
      case 'logged-out':
        this.lastError = { kind: 'kick', reason: 'KICK_REASON_LOGGED_OUT', message: kickText(KickReason.KICK_REASON_LOGGED_OUT) };
        this.setPhase('login');
        return;
      case 'explained':
        // A Kick or a LoginError came first and said why; login errors already moved to the login screen.
        if (this.phase !== 'login') this.setPhase('ended');
        else this.changed();
        return;
      case 'token-refused':
        this.fail('login', { kind: 'close', reason: 'WS_CLOSE_1008', message: closeText(code, reason) });
        return;
      case 'resume':
        if (wasPhase === 'game') {
          this.resumeDeadline = performance.now() + RESUME_WINDOW_MS;
          this.game.note('connection lost; resuming...', 'error');
          this.planner.releaseAll();
        }
        this.lastError = { kind: 'close', reason: `WS_CLOSE_${code}`, message: closeText(code, reason) };
        this.setPhase('resuming');
        this.scheduleResume(wasPhase === 'game' ? 0 : RESUME_BACKOFF_MS);
        return;
      case 'back-to-login':
      case 'ended':
        this.lastError = { kind: 'close', reason: `WS_CLOSE_${code}`, message: closeText(code, reason) };
        this.setPhase(outcome === 'ended' ? 'ended' : 'login');
        return;
    }
  }

  private scheduleResume(delayMs: number): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      const token = this.sessionToken;
      if (this.phase !== 'resuming' || token === null) return;
      if (performance.now() > this.resumeDeadline) {
        this.sessionToken = null;
        this.lastError = {
          kind: 'close',
          reason: 'RESUME_EXPIRED',
          message: 'The connection was lost and could not be restored within 30 s. Log in again.',
        };
        this.setPhase('ended');
        return;
      }
      this.open(wsUrl(this.zoneOrigin, { resume: base64url(token) }));
    }, delayMs);
  }

  // ----- what the player does --------------------------------------------------------------------------------

  private startTimers(tickRateHz: number): void {
    this.stopTimers();
    this.tickMs = 1000 / Math.max(1, tickRateHz);
    this.inputTimer = setInterval(() => this.tick(), this.tickMs);
    this.pingTimer = setInterval(() => {
      this.pingNonce += 1;
      this.send({ control: { ping: { nonce: u64(this.pingNonce), clientTimeUs: u64(nowUs()) } } });
    }, CONTROL_PING_MS);
  }

  private stopTimers(): void {
    if (this.inputTimer !== null) clearInterval(this.inputTimer);
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.inputTimer = null;
    this.pingTimer = null;
  }

  /**
   * One client frame: send this tick's input if there is one, and predict it. A player doing nothing still sends
   * an idle input (zero move, no ability) every `IDLE_INPUT_TICKS` ticks: its `snapshot_ack` keeps the server's
   * delta baseline recent (see input.ts).
   */
  tick(nowMs: number = performance.now()): void {
    if (!this.connected) return;
    const planned = this.planner.next(this.game.position(), this.game.stepLength(), nowMs, this.tickMs);
    if (planned === null) return;
    const sent = this.send({
      data: {
        input: {
          sequence: planned.sequence,
          moveDir: planned.moveDir,
          ability: planned.ability,
          targetEntity: u64(planned.targetEntity),
          clientTimeUs: u64(nowUs()),
          // v2: the newest view decoded, the baseline the server may encode the next snapshots against (0 before
          // the first, and always 0 with a v1 server, which ignores the field).
          snapshotAck: longOf(this.views.ack()),
        },
      },
    });
    if (sent) this.game.inputSent(planned, nowMs);
  }

  /** Uses ability 1..3 on the current target (heal needs none). */
  useAbility(id: number): void {
    if (this.phase !== 'game') return;
    const target = id === 3 ? 0 : (this.game.target ?? 0);
    if (id !== 3 && target === 0) {
      this.game.note('no target: click an enemy or press Tab', 'error');
    }
    this.planner.useAbility(id, target);
  }

  chat(channel: 'say' | 'zone', text: string): boolean {
    const trimmed = text.trim();
    if (trimmed === '') return false;
    if (utf8Length(trimmed) > CHAT_MAX_BYTES) {
      this.game.note(`chat lines are at most ${CHAT_MAX_BYTES} bytes`, 'error');
      return false;
    }
    const ch = channel === 'zone' ? ChatChannel.CHAT_CHANNEL_ZONE : ChatChannel.CHAT_CHANNEL_SAY;
    return this.send({ control: { chat: { channel: ch, text: trimmed } } });
  }

  /** Leaves the game: the server saves, kicks with LOGGED_OUT and closes. */
  logout(): void {
    if (this.phase === 'resuming') {
      this.sessionToken = null;
      if (this.retryTimer !== null) clearTimeout(this.retryTimer);
      this.setPhase('login');
      return;
    }
    if (!this.send({ control: { logout: {} } })) return;
    this.leaving = true;
    const ws = this.ws;
    setTimeout(() => {
      // The server did not confirm in time: close ourselves (not resumable: we asked to leave).
      if (this.ws === ws && ws !== null) {
        this.ws = null;
        ws.close(1000, 'logout');
        this.closed(1000, 'logout');
      }
    }, LOGOUT_TIMEOUT_MS);
  }

  /** Back to the login screen from the ended screen. */
  backToLogin(): void {
    this.closeSocket();
    this.stopTimers();
    this.setPhase('login');
  }

  private closeSocket(): void {
    const ws = this.ws;
    this.ws = null;
    if (ws !== null && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  private fail(phase: Phase, err: SessionError): void {
    this.lastError = err;
    this.game.note(err.message, 'error');
    this.setPhase(phase);
  }

  private setPhase(p: Phase): void {
    this.phase = p;
    this.changed();
  }
}

/** Reason names a LoginError can carry, for the UI's error screen ids. */
export const LOGIN_ERRORS = Object.keys(LoginErrorReason).filter((k) => k.startsWith('LOGIN_ERROR_'));
