// Entity interpolation for everything but the player's own entity (which is predicted, see prediction.ts).
//
// Snapshots arrive once per server tick with network jitter. Drawing each at arrival makes others stutter, so the
// client draws the world a little in the past (`delayTicks`, 2 ticks = 100 ms at 20 Hz) and blends between the two
// snapshots around that moment: one late snapshot then costs nothing visible.
//
// The render clock maps local time to server ticks: tick ~= nowMs / tickMs + offset. The offset follows the
// arrivals slowly (so jitter does not shake it) and jumps when it is more than `RESYNC_TICKS` off (a stall, a
// resume, a tab that was in the background).
//
// Invariant: what is drawn is always a position the server sent or a blend of two consecutive ones for the same
// entity; an entity absent from the newest snapshot is not drawn (it left the area of interest or died and left).

import type { Pos } from './prediction.js';

export const DEFAULT_DELAY_TICKS = 2;
/** Snapshots kept; more than the delay needs, so a burst after a stall still interpolates. */
export const BUFFER = 16;
/** The render clock jumps instead of drifting when it is this many ticks off the arrivals. */
export const RESYNC_TICKS = 6;
/** How much of the error one arrival corrects. */
const CLOCK_GAIN = 0.05;

interface Frame {
  tick: number;
  positions: Map<number, Pos>;
}

export class Interpolator {
  readonly tickMs: number;
  readonly delayTicks: number;
  private frames: Frame[] = [];
  private offset: number | null = null;

  constructor(tickRateHz: number, delayTicks = DEFAULT_DELAY_TICKS) {
    this.tickMs = 1000 / Math.max(1, tickRateHz);
    this.delayTicks = delayTicks;
  }

  /** Adds a snapshot received at `atMs` (local monotonic clock). Older or repeated ticks are ignored. */
  push(tick: number, atMs: number, positions: Map<number, Pos>): void {
    const newest = this.frames[this.frames.length - 1];
    if (newest !== undefined && tick <= newest.tick) return;
    this.frames.push({ tick, positions });
    if (this.frames.length > BUFFER) this.frames.shift();
    const observed = tick - atMs / this.tickMs;
    if (this.offset === null || Math.abs(observed - this.offset) > RESYNC_TICKS) {
      this.offset = observed;
    } else {
      this.offset += (observed - this.offset) * CLOCK_GAIN;
    }
  }

  /** The (fractional) server tick drawn at `nowMs`. */
  renderTick(nowMs: number): number {
    if (this.offset === null) return 0;
    return nowMs / this.tickMs + this.offset - this.delayTicks;
  }

  /** Every entity of the newest snapshot at its interpolated position for `nowMs`. */
  sampleAll(nowMs: number): Map<number, Pos> {
    const out = new Map<number, Pos>();
    const newest = this.frames[this.frames.length - 1];
    if (newest === undefined) return out;
    const t = this.renderTick(nowMs);
    // The last frame at or before t, and the one after it.
    let i = this.frames.length - 1;
    while (i > 0 && this.frames[i].tick > t) i--;
    const a = this.frames[i];
    const b = this.frames[Math.min(i + 1, this.frames.length - 1)];
    const span = b.tick - a.tick;
    const f = span > 0 ? Math.min(1, Math.max(0, (t - a.tick) / span)) : 0;
    for (const [id] of newest.positions) {
      const pa = a.positions.get(id);
      const pb = b.positions.get(id);
      if (pa !== undefined && pb !== undefined) {
        out.set(id, { x: pa.x + (pb.x - pa.x) * f, y: pa.y + (pb.y - pa.y) * f });
      } else {
        // Entered view between a and b (or later): its first known position, never an invented one.
        const first = pb ?? pa ?? this.firstSeen(id, i);
        if (first !== undefined) out.set(id, first);
      }
    }
    return out;
  }

  /** Snapshots in the buffer. */
  size(): number {
    return this.frames.length;
  }

  private firstSeen(id: number, from: number): Pos | undefined {
    for (let k = from; k < this.frames.length; k++) {
      const p = this.frames[k].positions.get(id);
      if (p !== undefined) return p;
    }
    return undefined;
  }
}
