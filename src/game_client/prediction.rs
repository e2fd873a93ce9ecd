//! Client-side prediction of the player's own movement, and its reconciliation with the server.
//!
//! Every input the client sends is applied locally at once (so the player moves without waiting a round trip)
//! and kept until a snapshot says the server processed it. When a snapshot arrives, the prediction restarts from
//! the server's position and replays, in sequence order, the inputs the server has not processed yet.
//!
//! Invariant: [`step`] must move exactly as the server's input + movement systems do for one input (direction
//! normalised when longer than 1, times the zone's player speed, times one tick). If the two disagree the player
//! visibly snaps back on every snapshot.

use std::collections::VecDeque;

/// A position or direction in zone coordinates (metres; +x east, +y north).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pos {
    /// East.
    pub x: f32,
    /// North.
    pub y: f32,
}

impl Pos {
    /// A point.
    pub const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }

    /// Euclidean distance.
    pub fn dist(self, other: Pos) -> f32 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }

    /// Length of this vector.
    pub fn len(self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }

    /// This direction with length at most 1 (what the server accepts); non-finite directions become zero.
    pub fn clamped_direction(self) -> Pos {
        if !self.x.is_finite() || !self.y.is_finite() {
            return Pos::default();
        }
        let len = self.len();
        if len > 1.0 {
            Pos::new(self.x / len, self.y / len)
        } else {
            self
        }
    }
}

impl From<crate::proto::Vec2> for Pos {
    fn from(v: crate::proto::Vec2) -> Self {
        Pos::new(v.x, v.y)
    }
}

impl From<Pos> for crate::proto::Vec2 {
    fn from(p: Pos) -> Self {
        crate::proto::Vec2 { x: p.x, y: p.y }
    }
}

/// Where one input moves the player from `from`: the server's rule for one tick.
pub fn step(from: Pos, direction: Pos, speed: f32, tick_secs: f32) -> Pos {
    let d = direction.clamped_direction();
    Pos::new(from.x + d.x * speed * tick_secs, from.y + d.y * speed * tick_secs)
}

/// The prediction replays inputs this far behind the server at most; older ones are dropped (a server that stops
/// acknowledging would otherwise grow the queue without bound).
pub const MAX_UNACKNOWLEDGED: usize = 256;

/// Own-movement prediction for one session (reset on every login or zone transfer: sequences restart).
#[derive(Debug, Clone)]
pub struct Predictor {
    speed: f32,
    tick_secs: f32,
    /// Inputs sent but not yet processed by the server, oldest first: (sequence, direction).
    unacknowledged: VecDeque<(u32, Pos)>,
    server: Pos,
    acknowledged: u32,
    predicted: Pos,
    last_correction: f32,
}

impl Predictor {
    /// A predictor at `start` for a player moving at `speed` m/s in a zone ticking at `tick_rate_hz`.
    pub fn new(start: Pos, speed: f32, tick_rate_hz: u32) -> Self {
        Self {
            speed,
            tick_secs: 1.0 / tick_rate_hz.max(1) as f32,
            unacknowledged: VecDeque::new(),
            server: start,
            acknowledged: 0,
            predicted: start,
            last_correction: 0.0,
        }
    }

    /// Applies an input the client just sent; returns the new predicted position. Sequences at or below the last
    /// acknowledged one are ignored (the server ignores them too).
    pub fn apply_input(&mut self, sequence: u32, direction: Pos) -> Pos {
        if sequence <= self.acknowledged || self.unacknowledged.back().is_some_and(|&(s, _)| sequence <= s) {
            return self.predicted;
        }
        if self.unacknowledged.len() == MAX_UNACKNOWLEDGED {
            self.unacknowledged.pop_front();
        }
        self.unacknowledged.push_back((sequence, direction));
        self.predicted = step(self.predicted, direction, self.speed, self.tick_secs);
        self.predicted
    }

    /// Takes the server's authoritative position after it processed every input up to `last_processed`: drops
    /// those inputs, replays the rest on top of `server_pos`, and returns the corrected prediction. Snapshots
    /// arriving out of order (an older `last_processed`) are ignored.
    pub fn reconcile(&mut self, server_pos: Pos, last_processed: u32) -> Pos {
        if last_processed < self.acknowledged {
            return self.predicted;
        }
        self.acknowledged = last_processed;
        self.server = server_pos;
        while self.unacknowledged.front().is_some_and(|&(s, _)| s <= last_processed) {
            self.unacknowledged.pop_front();
        }
        let replayed =
            self.unacknowledged.iter().fold(server_pos, |p, &(_, dir)| step(p, dir, self.speed, self.tick_secs));
        self.last_correction = replayed.dist(self.predicted);
        self.predicted = replayed;
        replayed
    }

    /// Where the player is now, as far as the client can tell.
    pub fn position(&self) -> Pos {
        self.predicted
    }

    /// The last position the server confirmed.
    pub fn server_position(&self) -> Pos {
        self.server
    }

    /// The highest input sequence the server has processed.
    pub fn acknowledged(&self) -> u32 {
        self.acknowledged
    }

    /// Inputs sent and not yet processed.
    pub fn pending(&self) -> usize {
        self.unacknowledged.len()
    }

    /// How far the last reconciliation moved the prediction (0 when the prediction was right).
    pub fn last_correction(&self) -> f32 {
        self.last_correction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAST: Pos = Pos::new(1.0, 0.0);
    const NORTH: Pos = Pos::new(0.0, 1.0);

    fn close(a: Pos, b: Pos) -> bool {
        a.dist(b) < 1e-4
    }

    #[test]
    fn one_input_moves_one_tick_at_player_speed() {
        // 6 m/s at 20 Hz: 0.3 m per input, as the server moves.
        assert!(close(step(Pos::new(10.0, 10.0), EAST, 6.0, 0.05), Pos::new(10.3, 10.0)));
    }

    #[test]
    fn over_long_directions_are_normalised_like_the_server_does() {
        let p = step(Pos::default(), Pos::new(3.0, 4.0), 6.0, 0.05);
        assert!(close(p, Pos::new(0.18, 0.24)), "{p:?}");
        assert!(close(step(Pos::default(), Pos::new(f32::NAN, 1.0), 6.0, 0.05), Pos::default()));
        // Shorter than 1 is kept: a half-pushed stick walks at half speed.
        assert!(close(step(Pos::default(), Pos::new(0.5, 0.0), 6.0, 0.05), Pos::new(0.15, 0.0)));
    }

    #[test]
    fn inputs_move_the_prediction_before_the_server_answers() {
        let mut p = Predictor::new(Pos::new(100.0, 100.0), 6.0, 20);
        for seq in 1..=10 {
            p.apply_input(seq, EAST);
        }
        assert!(close(p.position(), Pos::new(103.0, 100.0)), "{:?}", p.position());
        assert_eq!(p.pending(), 10);
        assert!(close(p.server_position(), Pos::new(100.0, 100.0)));
    }

    #[test]
    fn a_snapshot_that_agrees_changes_nothing_and_drops_the_acknowledged_inputs() {
        let mut p = Predictor::new(Pos::new(0.0, 0.0), 6.0, 20);
        for seq in 1..=4 {
            p.apply_input(seq, EAST);
        }
        // The server processed 1 and 2: it is at 0.6 east; 3 and 4 are replayed on top.
        let now = p.reconcile(Pos::new(0.6, 0.0), 2);
        assert!(close(now, Pos::new(1.2, 0.0)), "{now:?}");
        assert_eq!((p.pending(), p.acknowledged()), (2, 2));
        assert!(p.last_correction() < 1e-4);
    }

    #[test]
    fn a_snapshot_that_disagrees_replays_the_unacknowledged_inputs_on_the_server_position() {
        let mut p = Predictor::new(Pos::new(0.0, 0.0), 6.0, 20);
        p.apply_input(1, EAST);
        p.apply_input(2, EAST);
        p.apply_input(3, NORTH);
        // The server stopped the player at a wall after input 1 (x stayed 0), then processed 2 as well.
        let now = p.reconcile(Pos::new(0.0, 0.0), 2);
        assert!(close(now, Pos::new(0.0, 0.3)), "only input 3 is replayed: {now:?}");
        assert!((p.last_correction() - Pos::new(0.6, 0.3).dist(Pos::new(0.0, 0.3))).abs() < 1e-4);
        // Inputs after the correction build on the corrected position.
        assert!(close(p.apply_input(4, NORTH), Pos::new(0.0, 0.6)));
    }

    #[test]
    fn an_out_of_order_snapshot_is_ignored() {
        let mut p = Predictor::new(Pos::default(), 6.0, 20);
        for seq in 1..=5 {
            p.apply_input(seq, EAST);
        }
        p.reconcile(Pos::new(1.2, 0.0), 4);
        let before = p.position();
        // A late datagram from before input 4 was processed must not resurrect inputs 3 and 4.
        assert_eq!(p.reconcile(Pos::new(0.6, 0.0), 2), before);
        assert_eq!((p.acknowledged(), p.pending()), (4, 1));
    }

    #[test]
    fn stale_or_repeated_sequences_do_not_move_the_prediction() {
        let mut p = Predictor::new(Pos::default(), 6.0, 20);
        p.apply_input(1, EAST);
        p.apply_input(1, EAST);
        p.reconcile(Pos::new(0.3, 0.0), 1);
        assert!(close(p.apply_input(1, EAST), Pos::new(0.3, 0.0)));
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn the_unacknowledged_queue_is_bounded() {
        let mut p = Predictor::new(Pos::default(), 6.0, 20);
        for seq in 1..=(MAX_UNACKNOWLEDGED as u32 + 50) {
            p.apply_input(seq, EAST);
        }
        assert_eq!(p.pending(), MAX_UNACKNOWLEDGED);
        // When the server catches up, only what is still queued is replayed.
        let last = MAX_UNACKNOWLEDGED as u32 + 50;
        assert!(close(p.reconcile(Pos::new(5.0, 5.0), last), Pos::new(5.0, 5.0)));
    }

    #[test]
    fn a_full_round_trip_with_a_lagging_server_converges_on_the_server_track() {
        // The server processes each input two frames after it is sent; the client sees each snapshot one frame
        // later. The prediction must stay ahead of the server by exactly the unacknowledged inputs and never jump.
        let mut p = Predictor::new(Pos::default(), 6.0, 20);
        let mut server = Pos::default();
        let mut sent = Vec::new();
        for frame in 1..=40u32 {
            let dir = if frame <= 20 { EAST } else { NORTH };
            sent.push(dir);
            p.apply_input(frame, dir);
            if frame > 2 {
                let processed = frame - 2;
                server = step(server, sent[processed as usize - 1], 6.0, 0.05);
                p.reconcile(server, processed);
                assert!(p.last_correction() < 1e-3, "frame {frame}: corrected by {}", p.last_correction());
            }
        }
        assert!(close(p.position(), Pos::new(6.0, 6.0)), "{:?}", p.position());
    }
}
