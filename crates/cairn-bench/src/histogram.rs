//! Latency histogram with log-linear buckets: values (nanoseconds) are grouped by their highest set bit
//! and then by the next `SUB_BITS` bits, so every bucket is within 1/16 (6.25%) of its values. Recording
//! is an index computation and an increment; threads keep their own and merge at the end.

/// Bits of mantissa below the leading one that pick the sub-bucket.
const SUB_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Values below this are recorded exactly (one bucket each).
const LINEAR_LIMIT: u64 = SUB_BUCKETS as u64 * 2;
/// The linear range, then 16 sub-buckets for each leading-bit position from `SUB_BITS + 1` to 63.
const BUCKETS: usize = LINEAR_LIMIT as usize + (63 - SUB_BITS as usize) * SUB_BUCKETS;

/// Counts of latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR_LIMIT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    // msb >= SUB_BITS + 1 here; magnitudes below that are the linear range.
    (msb - SUB_BITS) as usize * SUB_BUCKETS + SUB_BUCKETS + sub
}

/// Smallest value that falls into `bucket`.
fn bucket_low(bucket: usize) -> u64 {
    if bucket < LINEAR_LIMIT as usize {
        return bucket as u64;
    }
    let magnitude = (bucket - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (bucket % SUB_BUCKETS) as u64;
    let msb = magnitude as u32 + SUB_BITS;
    (1u64 << msb) | (sub << (msb - SUB_BITS))
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, nanos: u64) {
        self.counts[bucket_of(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0..=1) in nanoseconds: the midpoint of the bucket holding it, capped at the
    /// largest value seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let low = bucket_low(bucket);
                let high = if bucket + 1 < BUCKETS { bucket_low(bucket + 1) } else { u64::MAX };
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= prev && b < BUCKETS, "v={v} b={b}");
            prev = b;
            assert!(bucket_low(b) <= v, "v={v} low={}", bucket_low(b));
            if b + 1 < BUCKETS {
                assert!(bucket_low(b + 1) > v);
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [(0.5, 5_000_000f64), (0.99, 9_900_000.0), (0.999, 9_990_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.07, "q={q} got={got}");
        }
        let mut other = Histogram::default();
        other.record(7);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
    }
}
