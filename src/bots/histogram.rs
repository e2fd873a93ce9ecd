//! A log-linear histogram of `u64` values (HdrHistogram's layout with 6 sub-bucket bits): exact below 64, and
//! above that 64 equal-width buckets per power of two, so any recorded value is reported within 1/64 (1.6 %) of
//! itself. Fixed size (3,776 counters), no allocation after construction, merge is element-wise addition.
//!
//! The invariant a reader must not break: **[`index`] and [`lowest_in_bucket`] are inverses on bucket starts**;
//! quantiles are read back through them, so changing one without the other silently skews every percentile.

/// Sub-bucket bits: 2^6 = 64 buckets per octave.
const SUB_BITS: u32 = 6;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Buckets needed for the whole `u64` range.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB_COUNT;

/// The bucket of `value`.
#[inline]
fn index(value: u64) -> usize {
    if value < SUB_COUNT as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) as usize & (SUB_COUNT - 1);
    ((shift as usize + 1) << SUB_BITS) | sub
}

/// The smallest value that lands in bucket `i`.
#[inline]
fn lowest_in_bucket(i: usize) -> u64 {
    if i < SUB_COUNT {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) - 1;
    ((SUB_COUNT + (i & (SUB_COUNT - 1))) as u64) << shift
}

/// The largest value that lands in bucket `i`.
#[inline]
fn highest_in_bucket(i: usize) -> u64 {
    if i < SUB_COUNT {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) - 1;
    lowest_in_bucket(i).saturating_add((1u64 << shift) - 1)
}

/// A histogram of non-negative integer samples (the bots record microseconds).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, sum: 0, min: u64::MAX, max: 0 }
    }

    /// Records one sample.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest sample (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest sample (exact; 0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value of the bucket holding the `ceil(q * count)`-th
    /// smallest sample, clamped to the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest_in_bucket(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        if self.count != 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
        }
        self.count = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_round_trip_over_the_whole_range() {
        for i in 0..BUCKETS {
            let lo = lowest_in_bucket(i);
            assert_eq!(index(lo), i, "bucket {i} starts at {lo}");
            assert_eq!(index(highest_in_bucket(i)), i, "bucket {i} ends at {}", highest_in_bucket(i));
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact_and_large_ones_within_two_percent() {
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1_000, 12_345, 999_999, 50_000_000, u64::MAX / 3] {
            let mut h = Histogram::new();
            h.record(v);
            h.record(v.saturating_add(1)); // a second bucket above, so the quantile is not clamped to max
            let reported = h.quantile(0.5);
            assert!(reported >= v, "{v} reported as {reported}");
            assert!((reported - v) as f64 <= v as f64 / 64.0, "{v} reported as {reported}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_ramp() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.02, "p50 {p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!((h.count(), h.min(), h.max()), (10_000, 1, 10_000));
        assert!((h.mean() - 5_000.5).abs() < 1e-9);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5_000u64 {
            let v = v * 37 % 90_000;
            if v % 2 == 0 { &mut a } else { &mut b }.record(v);
            all.record(v);
        }
        a.merge(&b);
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!((a.count(), a.min(), a.max()), (all.count(), all.min(), all.max()));
    }

    #[test]
    fn empty_and_cleared_histograms_report_zero() {
        let mut h = Histogram::new();
        assert_eq!((h.quantile(0.99), h.min(), h.max(), h.mean()), (0, 0, 0, 0.0));
        h.record(42);
        h.clear();
        assert_eq!((h.count(), h.quantile(0.5), h.min()), (0, 0, 0));
    }
}
