//! A whole-file bloom filter over user keys. Layout: `bit array ++ k (1 byte)`.
//!
//! Each key is hashed once with xxh3-64; the `k` probe positions come from double hashing
//! (`h, h + delta, h + 2*delta, ...` with `delta` a rotation of `h`), each mapped onto the bit array by a
//! multiply-shift range reduction rather than a division.

use xxhash_rust::xxh3::xxh3_64;

/// Most probes a filter may use; a larger stored `k` means the filter is corrupt.
pub const MAX_PROBES: u32 = 30;

/// The hash a filter is built from.
pub fn bloom_hash(user_key: &[u8]) -> u64 {
    xxh3_64(user_key)
}

/// Number of probes for `bits_per_key`: round(bits_per_key * ln 2), clamped to 1..=[`MAX_PROBES`].
pub fn probes_for(bits_per_key: u32) -> u32 {
    ((f64::from(bits_per_key) * std::f64::consts::LN_2).round() as u32).clamp(1, MAX_PROBES)
}

/// Calls `f` with each of the `k` bit positions for `hash` in a filter of `num_bits` bits.
#[inline]
pub fn for_each_probe(hash: u64, k: u32, num_bits: u64, mut f: impl FnMut(u64) -> bool) -> bool {
    let delta = hash.rotate_right(33) | 1;
    let mut h = hash;
    for _ in 0..k {
        let bit = ((u128::from(h) * u128::from(num_bits)) >> 64) as u64;
        if !f(bit) {
            return false;
        }
        h = h.wrapping_add(delta);
    }
    true
}

/// A decoded filter, kept in memory for the table's lifetime.
#[derive(Debug)]
pub struct BloomFilter {
    // INVARIANT: bits.len() >= 1 and the last byte (k) is in 1..=MAX_PROBES.
    bits: Vec<u8>,
    num_bits: u64,
    k: u32,
}

impl BloomFilter {
    /// Checks and wraps filter block contents.
    pub fn new(bits: Vec<u8>) -> Result<BloomFilter, &'static str> {
        let (&k, array) = bits.split_last().ok_or("empty filter block")?;
        if array.is_empty() {
            return Err("filter has no bits");
        }
        let k = u32::from(k);
        if !(1..=MAX_PROBES).contains(&k) {
            return Err("filter probe count out of range");
        }
        let num_bits = array.len() as u64 * 8;
        Ok(BloomFilter { bits, num_bits, k })
    }

    /// False only if `user_key` was certainly not added.
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.may_contain_hash(bloom_hash(user_key))
    }

    /// [`BloomFilter::may_contain`] for a precomputed [`bloom_hash`].
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        for_each_probe(hash, self.k, self.num_bits, |bit| {
            self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
        })
    }

    /// Bytes of memory the filter pins.
    pub fn size_bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::bloom_builder::BloomBuilder;
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        crate::keys::user_key((i % 1024) as u16, format!("user-{i}").as_bytes())
    }

    #[test]
    fn probe_counts_follow_bits_per_key() {
        assert_eq!(probes_for(10), 7);
        assert_eq!(probes_for(1), 1);
        assert_eq!(probes_for(0), 1);
        assert_eq!(probes_for(100), MAX_PROBES);
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let mut b = BloomBuilder::new(10);
        for i in 0..10_000 {
            b.add_key(&key(i));
        }
        let f = BloomFilter::new(b.finish()).unwrap();
        assert!((0..10_000).all(|i| f.may_contain(&key(i))));
        let fp = (10_000..110_000).filter(|&i| f.may_contain(&key(i))).count();
        let rate = fp as f64 / 100_000.0;
        assert!(rate < 0.02, "false positive rate {rate}");
        assert!(rate > 0.002, "suspiciously low false positive rate {rate}");
    }

    #[test]
    fn small_filters_work() {
        let mut b = BloomBuilder::new(10);
        b.add_key(b"only");
        let f = BloomFilter::new(b.finish()).unwrap();
        assert!(f.may_contain(b"only"));
        let empty = BloomFilter::new(BloomBuilder::new(10).finish()).unwrap();
        assert!(!empty.may_contain(b"x"));
    }

    #[test]
    fn rejects_malformed_filters() {
        assert!(BloomFilter::new(vec![]).is_err());
        assert!(BloomFilter::new(vec![7]).is_err());
        assert!(BloomFilter::new(vec![0, 0]).is_err());
        assert!(BloomFilter::new(vec![0, 31]).is_err());
        assert!(BloomFilter::new(vec![0, 30]).is_ok());
    }
}
