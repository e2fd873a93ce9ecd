// What the player asks for, turned into one `Input` per tick.
//
// Sequences start at 1 for every session (login, resume, zone transfer) and rise by exactly one per input sent.
// Nothing is sent while the player stands still and uses no ability: the server stops a player that sends no
// input, and the prediction applies exactly the inputs that were sent (same rule as the terminal client).

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

export class InputPlanner {
  private sequence = 0;
  private held = new Set<string>();
  private goal: Pos | null = null;
  private ability: { id: number; target: number } | null = null;

  /** Forgets everything: a new session starts its sequences at 1 again. */
  reset(): void {
    this.sequence = 0;
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
   * `stepLength` how far one input moves the player (click-to-move stops on the goal).
   */
  next(here: Pos, stepLength: number): PlannedInput | null {
    let dir = keyDirection(this.held);
    if (dir.x === 0 && dir.y === 0 && this.goal !== null) {
      const towards = directionTowards(here, this.goal, stepLength);
      if (towards === null) this.goal = null;
      else dir = towards;
    }
    const moving = dir.x !== 0 || dir.y !== 0;
    if (!moving && this.ability === null) return null;
    this.sequence += 1;
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
