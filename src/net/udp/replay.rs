//! The 256-entry sliding replay window of one receiving direction.
//!
//! The window remembers the highest authenticated sequence number and which of the 255 below it have been seen.
//! A sequence above the highest is new; one inside the window is new once; one 256 or more below the highest is
//! too old to tell and is dropped.
//!
//! The invariant a reader must not break: **[`ReplayWindow::check`] runs before decryption and
//! [`ReplayWindow::commit`] only after the AEAD tag verified.** Committing an unauthenticated sequence would let
//! anyone who can send a datagram advance the window and make the real peer's packets look too old.

use super::UdpError;

/// Number of sequence numbers the window tracks (the highest and the 255 below it).
pub const REPLAY_WINDOW: u64 = 256;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Sliding replay window over 64-bit sequence numbers, bit-exact over [`REPLAY_WINDOW`] entries.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest committed sequence; meaningless while `bits` is all zero and `started` is false.
    highest: u64,
    started: bool,
    /// Bit `i` (word `i / 64`, bit `i % 64`) set = sequence `highest - i` was committed. Bit 0 is `highest`.
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window: every sequence is acceptable once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest committed sequence, `None` before the first commit.
    pub fn highest(&self) -> Option<u64> {
        self.started.then_some(self.highest)
    }

    /// Whether `seq` would be accepted now. Does not change the window.
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), UdpError> {
        if !self.started || seq > self.highest {
            return Ok(());
        }
        let age = self.highest - seq;
        if age >= REPLAY_WINDOW {
            return Err(UdpError::TooOld);
        }
        if self.bit(age as usize) {
            return Err(UdpError::Replayed);
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after [`ReplayWindow::check`] passed and the datagram authenticated;
    /// committing a sequence that `check` rejects is a no-op.
    #[inline]
    pub fn commit(&mut self, seq: u64) {
        if !self.started {
            self.started = true;
            self.highest = seq;
            self.bits = [0; WORDS];
            self.bits[0] = 1;
            return;
        }
        if seq > self.highest {
            self.shift(seq - self.highest);
            self.highest = seq;
            self.bits[0] |= 1;
        } else {
            let age = self.highest - seq;
            if age < REPLAY_WINDOW {
                self.bits[(age / 64) as usize] |= 1 << (age % 64);
            }
        }
    }

    /// Checks and commits in one step (for callers that authenticated by other means, and tests).
    pub fn check_and_commit(&mut self, seq: u64) -> Result<(), UdpError> {
        self.check(seq)?;
        self.commit(seq);
        Ok(())
    }

    fn bit(&self, age: usize) -> bool {
        self.bits[age / 64] & (1 << (age % 64)) != 0
    }

    /// Ages every entry by `by`: the 256-bit value moves towards higher ages, entries older than the window fall
    /// off the top.
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let mut word = 0;
            if i >= words {
                let src = i - words;
                word = self.bits[src] << bits;
                if bits > 0 && src > 0 {
                    word |= self.bits[src - 1] >> (64 - bits);
                }
            }
            self.bits[i] = word;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn first_sequence_of_any_value_is_accepted() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        assert!(w.check_and_commit(1_000_000).is_ok());
        assert_eq!(w.highest(), Some(1_000_000));
    }

    #[test]
    fn duplicate_sequence_is_replayed() {
        let mut w = ReplayWindow::new();
        w.check_and_commit(5).unwrap();
        assert_eq!(w.check(5), Err(UdpError::Replayed));
    }

    #[test]
    fn sequence_255_below_highest_is_accepted_once_and_256_below_is_too_old() {
        let mut w = ReplayWindow::new();
        w.check_and_commit(1000).unwrap();
        assert_eq!(w.check(1000 - 256), Err(UdpError::TooOld));
        assert!(w.check_and_commit(1000 - 255).is_ok());
        assert_eq!(w.check(1000 - 255), Err(UdpError::Replayed));
    }

    #[test]
    fn out_of_order_sequences_within_the_window_are_each_accepted_once() {
        let mut w = ReplayWindow::new();
        for seq in [10, 7, 200, 8, 9, 150, 11, 64, 65, 63, 128] {
            assert!(w.check_and_commit(seq).is_ok(), "first sight of {seq}");
        }
        for seq in [10, 7, 200, 8, 9, 150, 11, 64, 65, 63, 128] {
            assert_eq!(w.check(seq), Err(UdpError::Replayed), "second sight of {seq}");
        }
        assert!(w.check(12).is_ok());
    }

    #[test]
    fn a_jump_larger_than_the_window_forgets_everything_below() {
        let mut w = ReplayWindow::new();
        w.check_and_commit(1).unwrap();
        w.check_and_commit(1 + 300).unwrap();
        assert_eq!(w.check(1), Err(UdpError::TooOld));
        assert!(w.check(300).is_ok(), "never seen, inside the new window");
    }

    #[test]
    fn check_alone_does_not_change_the_window() {
        let mut w = ReplayWindow::new();
        w.check_and_commit(3).unwrap();
        w.check(4).unwrap();
        w.check(4).unwrap();
        assert_eq!(w.highest(), Some(3));
        assert!(w.check_and_commit(4).is_ok());
    }

    proptest! {
        /// The bitmap agrees with a model that remembers every sequence ever accepted.
        #[test]
        fn window_matches_a_set_model(seqs in proptest::collection::vec(0u64..2_000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let expected = match highest {
                    Some(h) if seq + REPLAY_WINDOW <= h => Err(UdpError::TooOld),
                    _ if seen.contains(&seq) => Err(UdpError::Replayed),
                    _ => Ok(()),
                };
                let accepted = expected.is_ok();
                prop_assert_eq!(w.check_and_commit(seq), expected, "seq {}", seq);
                if accepted {
                    seen.insert(seq);
                    highest = Some(highest.map_or(seq, |h| h.max(seq)));
                }
            }
        }
    }
}
