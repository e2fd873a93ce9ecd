// What the player asks for, turned into one `Input` per tick.
//
// Sequences start at 1 for every session (login, resume, zone transfer) and rise by exactly one per input sent.
// While the player stands still and uses no ability, an input goes out only every `IDLE_INPUT_TICKS` ticks' worth
// of time, with a zero move and no ability: it carries the `snapshot_ack` that keeps the server's delta baseline
// recent (protocol v2), and the server takes a zero move as "stand still", exactly what it does for a player who
// sends nothing (src/sim/game.rs, `apply_inputs`: no input and a zero move both set the velocity to zero). The
// prediction applies exactly the inputs that were sent (a zero move is a step of zero).

import { clampedDirection, pos, type Pos } from './prediction.js';

/** Movement keys, by `KeyboardEvent.code`. */
export const MOVE_KEYS: Record<string, Pos> = {
  KeyW: pos(0, 1),
  ArrowUp: pos(0, 1),
  KeyS: pos(0, -1),
  ArrowDown: pos(0, -1),
  KeyA: pos(-1, 0),
  ArrowLeft: pos(-1, 0),
  KeyD: pos(1, 0),
  ArrowRight: pos(1, 0),
};

/** One input to send: the fields of `realm.v1.Input` the client fills. */
export interface PlannedInput {
  sequence: number;
  moveDir: Pos;
  ability: number;
  targetEntity: number;
}

/** The movement of the held keys as a unit vector (+y north), or zero. Opposite keys cancel. */
export function keyDirection(held: Iterable<string>): Pos {
  let x = 0;
  let y = 0;
  const seen = new Set<string>();
  for (const code of held) {
    const d = MOVE_KEYS[code];
    // W and ArrowUp together are one "up", not a double one.
    const axisKey = d ? `${d.x},${d.y}` : '';
    if (d === undefined || seen.has(axisKey)) continue;
    seen.add(axisKey);
    x += d.x;
    y += d.y;
  }
  const len = Math.hypot(x, y);
  return len > 0 ? pos(x / len, y / len) : pos(0, 0);
}

/**
 * Click-to-move: the direction towards `goal`, a unit vector, shortened on the last step so that the player stops
 * on the goal instead of overshooting it (the server keeps directions shorter than 1 as a slower step).
 */
export function directionTowards(from: Pos, goal: Pos, stepLength: number): Pos | null {
  const dx = goal.x - from.x;
  const dy = goal.y - from.y;
  const d = Math.hypot(dx, dy);
  if (d < 0.05) return null;
  if (d <= stepLength) return pos(dx / stepLength, dy / stepLength);
  return pos(dx / d, dy / d);
}

/**
 * While the player does nothing, an input (zero move, no ability) still goes out once this many ticks' worth of
 * time have passed since the previous input. The server encodes each snapshot against the newest view the client
 * acknowledged and falls back to full snapshots once that acknowledgement is 32 ticks (`WINDOW`) old; an idle
 * client acknowledging every 4 ticks keeps getting small deltas. Tick rate 20: one input per 200 ms.
 */
export const IDLE_INPUT_TICKS = 4;

export class InputPlanner {
  private sequence = 0;
  /** When the last input was planned (-Infinity: none in this session, so an idle one is due at once). */
  private lastPlannedMs = -Infinity;
  private held = new Set<string>();
  private goal: Pos | null = null;
  private ability: { id: number; target: number } | null = null;

  /** Forgets everything: a new session starts its sequences at 1 again. */
  reset(): void {
    this.sequence = 0;
    this.lastPlannedMs = -Infinity;
    this.held.clear();
    this.goal = null;
    this.ability = null;
  }

  keyDown(code: string): boolean {
    if (!(code in MOVE_KEYS)) return false;
    this.held.add(code);
    this.goal = null; // keys take over from click-to-move
    return true;
  }

  keyUp(code: string): boolean {
    return this.held.delete(code);
  }

  releaseAll(): void {
    this.held.clear();
  }

  moveTo(goal: Pos | null): void {
    this.goal = goal;
  }

  /** Queues one use of ability `id` (1..3) on `target` (0 = none) for the next input. */
  useAbility(id: number, target: number): void {
    this.ability = { id, target };
  }

  /** The last sequence sent (0 before the first input). */
  lastSequence(): number {
    return this.sequence;
  }

  goalPosition(): Pos | null {
    return this.goal;
  }

  /**
   * The input for this tick, or null when there is nothing to send. `here` is the predicted position and
   * `stepLength` how far one input moves the player (click-to-move stops on the goal); `nowMs` is the time and
   * `tickMs` the server's tick period: a player doing nothing still gets an idle input (zero move, no ability)
   * once `IDLE_INPUT_TICKS` tick periods have passed since the previous input.
   */
  next(here: Pos, stepLength: number, nowMs: number, tickMs: number): PlannedInput | null {
    let dir = keyDirection(this.held);
    if (dir.x === 0 && dir.y === 0 && this.goal !== null) {
      const towards = directionTowards(here, this.goal, stepLength);
      if (towards === null) this.goal = null;
      else dir = towards;
    }
    const moving = dir.x !== 0 || dir.y !== 0;
    // The caller asks once per tick period, give or take the timer's jitter: half a period of slack makes the idle
    // input the 4th call after the last input, never the 5th because the 4th came a little early.
    if (!moving && this.ability === null && nowMs - this.lastPlannedMs < (IDLE_INPUT_TICKS - 0.5) * tickMs) return null;
    this.sequence += 1;
    this.lastPlannedMs = nowMs;
    const planned: PlannedInput = {
      sequence: this.sequence,
      moveDir: clampedDirection(dir),
      ability: this.ability?.id ?? 0,
      targetEntity: this.ability?.target ?? 0,
    };
    this.ability = null;
    return planned;
  }
}
