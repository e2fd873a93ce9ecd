// Client-side prediction of the player's own movement and its reconciliation with the server: a port of
// src/game_client/prediction.rs (the terminal client), keep the two in step.
//
// Every input the client sends is applied locally at once and kept until a snapshot says the server processed it.
// When a snapshot arrives, the prediction restarts from the server's position and replays, in sequence order, the
// inputs the server has not processed yet.
//
// Invariant: `step` must move exactly as the server's input + movement systems do for one input (direction
// normalised when longer than 1, times the zone's player speed, times one tick). If the two disagree the player
// visibly snaps back on every snapshot.
//
// Positions are f32 on the wire and in the server; JS numbers are f64. `Math.fround` after each step keeps the
// replay within f32 rounding of the server's track, so a correct prediction reconciles to a correction of ~0.

export interface Pos {
  x: number;
  y: number;
}

export const pos = (x: number, y: number): Pos => ({ x, y });

export function dist(a: Pos, b: Pos): number {
  return Math.hypot(a.x - b.x, a.y - b.y);
}

/** This direction with length at most 1 (what the server accepts); non-finite directions become zero. */
export function clampedDirection(d: Pos): Pos {
  if (!Number.isFinite(d.x) || !Number.isFinite(d.y)) return pos(0, 0);
  const len = Math.hypot(d.x, d.y);
  return len > 1 ? pos(d.x / len, d.y / len) : pos(d.x, d.y);
}

/** Where one input moves the player from `from`: the server's rule for one tick. */
export function step(from: Pos, direction: Pos, speed: number, tickSecs: number): Pos {
  const d = clampedDirection(direction);
  return pos(Math.fround(from.x + d.x * speed * tickSecs), Math.fround(from.y + d.y * speed * tickSecs));
}

/**
 * The prediction replays inputs this far behind the server at most; older ones are dropped (a server that stops
 * acknowledging would otherwise grow the queue without bound).
 */
export const MAX_UNACKNOWLEDGED = 256;

/** Own-movement prediction for one session (replaced on every login, resume or zone transfer: sequences restart). */
export class Predictor {
  readonly speed: number;
  readonly tickSecs: number;
  /** Inputs sent but not yet processed by the server, oldest first. */
  private unacknowledged: { seq: number; dir: Pos }[] = [];
  private server: Pos;
  private acked = 0;
  private predicted: Pos;
  private correction = 0;

  constructor(start: Pos, speed: number, tickRateHz: number) {
    this.speed = speed;
    this.tickSecs = 1 / Math.max(1, tickRateHz);
    this.server = { ...start };
    this.predicted = { ...start };
  }

  /**
   * Applies an input the client just sent; returns the new predicted position. Sequences at or below the last
   * acknowledged one, or not above the last sent one, are ignored (the server ignores them too).
   */
  applyInput(sequence: number, direction: Pos): Pos {
    const last = this.unacknowledged[this.unacknowledged.length - 1];
    if (sequence <= this.acked || (last !== undefined && sequence <= last.seq)) return this.predicted;
    if (this.unacknowledged.length === MAX_UNACKNOWLEDGED) this.unacknowledged.shift();
    this.unacknowledged.push({ seq: sequence, dir: direction });
    this.predicted = step(this.predicted, direction, this.speed, this.tickSecs);
    return this.predicted;
  }

  /**
   * Takes the server's authoritative position after it processed every input up to `lastProcessed`: drops those
   * inputs, replays the rest on top of `serverPos`, and returns the corrected prediction. Snapshots arriving out
   * of order (an older `lastProcessed`) are ignored.
   */
  reconcile(serverPos: Pos, lastProcessed: number): Pos {
    if (lastProcessed < this.acked) return this.predicted;
    this.acked = lastProcessed;
    this.server = { ...serverPos };
    while (this.unacknowledged.length > 0 && this.unacknowledged[0].seq <= lastProcessed) {
      this.unacknowledged.shift();
    }
    const replayed = this.unacknowledged.reduce((p, i) => step(p, i.dir, this.speed, this.tickSecs), serverPos);
    this.correction = dist(replayed, this.predicted);
    this.predicted = replayed;
    return replayed;
  }

  /** Where the player is now, as far as the client can tell. */
  position(): Pos {
    return this.predicted;
  }

  /** The last position the server confirmed. */
  serverPosition(): Pos {
    return this.server;
  }

  /** The highest input sequence the server has processed. */
  acknowledged(): number {
    return this.acked;
  }

  /** Inputs sent and not yet processed. */
  pending(): number {
    return this.unacknowledged.length;
  }

  /** How far the last reconciliation moved the prediction (0 when the prediction was right). */
  lastCorrection(): number {
    return this.correction;
  }
}
