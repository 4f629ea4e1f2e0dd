//! How busy each bucket is on this node: requests served here by a local replica, counted per bucket,
//! as a rate smoothed over [`LOAD_WINDOW`] (an exponentially weighted average in time, updated whenever
//! someone reads it, so no task ticks in the background). A shard's load is the sum over its buckets
//! and over the nodes that serve it; the bucket that halves it is where a split by load cuts.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time constant of the smoothed rates.
pub const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// Per-bucket request counters and their smoothed rates.
pub(crate) struct BucketLoad {
    counts: Vec<AtomicU64>,
    // (when last folded in, the counts then, the rates then): one reader folds at a time.
    rates: Mutex<(Instant, Vec<u64>, Vec<f64>)>,
}

impl BucketLoad {
    /// Counters for `total_buckets` buckets, all idle.
    pub(crate) fn new(total_buckets: u32) -> BucketLoad {
        let n = total_buckets as usize;
        BucketLoad {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            rates: Mutex::new((Instant::now(), vec![0; n], vec![0.0; n])),
        }
    }

    /// Counts one request for `bucket`.
    pub(crate) fn record(&self, bucket: u16) {
        if let Some(c) = self.counts.get(usize::from(bucket)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The smoothed requests per second of every bucket, by bucket.
    pub(crate) fn rates(&self) -> Rates {
        self.rates_at(Instant::now())
    }

    fn rates_at(&self, now: Instant) -> Rates {
        let mut guard = self.rates.lock();
        let (at, seen, rates) = &mut *guard;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        if elapsed > 0.0 {
            // Requests since the last fold, as a rate, weighted by how much of the window they span.
            let keep = (-elapsed / LOAD_WINDOW.as_secs_f64()).exp();
            for (i, count) in self.counts.iter().enumerate() {
                let now_count = count.load(Ordering::Relaxed);
                let delta = now_count.saturating_sub(seen[i]) as f64;
                seen[i] = now_count;
                rates[i] = rates[i] * keep + (delta / elapsed) * (1.0 - keep);
            }
            *at = now;
        }
        Rates(rates.clone())
    }
}

/// Every bucket's smoothed requests per second, as read at one time.
pub(crate) struct Rates(Vec<f64>);

impl Rates {
    /// The rates of the buckets in `ranges` (bucket, rate), in bucket order.
    pub(crate) fn of(&self, ranges: &[cairn_engine::BucketRange]) -> Vec<(u16, f64)> {
        ranges
            .iter()
            .flat_map(|r| r.clone())
            .filter_map(|b| self.0.get(usize::from(b)).map(|r| (b, *r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_load_shows_at_its_rate_and_an_idle_one_fades() {
        let load = BucketLoad::new(16);
        let start = Instant::now();
        // 100 requests a second to bucket 3, 10 to bucket 9, for 60 seconds, read every second.
        for second in 1..=60u64 {
            for _ in 0..100 {
                load.record(3);
            }
            for _ in 0..10 {
                load.record(9);
            }
            load.rates_at(start + Duration::from_secs(second));
        }
        let rates = load.rates_at(start + Duration::from_secs(60)).of(&[3..=3, 9..=9]);
        assert!((rates[0].1 - 100.0).abs() < 2.0 && (rates[1].1 - 10.0).abs() < 0.5, "{rates:?}");
        // A minute without requests: almost nothing left.
        let later = load.rates_at(start + Duration::from_secs(120)).of(&[3..=3]);
        assert!(later[0].1 < 1.0, "{later:?}");
        load.record(200);
        assert!(load.rates_at(start).of(&[]).is_empty());
    }
}
