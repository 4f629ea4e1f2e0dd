//! Keys, buckets and values, identical across runs and across engines being compared.
//!
//! Keys are the key index in zero-padded decimal, `key_size` bytes wide. A key's bucket is its share of
//! the index space (`index * total_buckets / num`), so keys in index order are also in the engine's
//! (bucket, key) order: `fillseq` is truly sequential and `readseq` returns keys in index order. Every
//! workload uses this one mapping. Missing keys (`readmissing`) are a present key with a `.` appended,
//! as in db_bench, so they land in the same bucket and key neighbourhood.

use crate::rng::Rng;

/// Seed of the value buffer (db_bench's `RandomGenerator` seed).
const VALUE_SEED: u64 = 301;
/// Size of the shared value buffer (at least `MIN_PIECES` values); values are slices of it.
const VALUE_BUFFER_BYTES: usize = 1 << 20;
/// Bytes of each value that are random; the rest repeats them, so values compress to ~50%.
const RANDOM_FRACTION: f64 = 0.5;
/// Distinct values at least, whatever the value size.
const MIN_PIECES: usize = 16;

/// Maps key indexes to (bucket, key bytes).
#[derive(Clone, Copy, Debug)]
pub struct KeySpace {
    pub num: u64,
    pub key_size: usize,
    pub total_buckets: u32,
}

impl KeySpace {
    /// Checks that `num` keys fit in `key_size` decimal digits.
    pub fn new(num: u64, key_size: usize, total_buckets: u32) -> Result<KeySpace, String> {
        let digits = num.saturating_sub(1).max(1).ilog10() as usize + 1;
        if key_size < digits {
            return Err(format!("--key-size {key_size} cannot hold {num} keys ({digits} digits)"));
        }
        if num == 0 {
            return Err("--num must be positive".into());
        }
        Ok(KeySpace { num, key_size, total_buckets })
    }

    /// The bucket of key `index`.
    pub fn bucket(&self, index: u64) -> u16 {
        (u128::from(index) * u128::from(self.total_buckets) / u128::from(self.num)) as u16
    }

    /// Writes key `index` into `out` (cleared first).
    pub fn key(&self, index: u64, out: &mut Vec<u8>) {
        // Zero-padded decimal, written right to left (no formatting allocation on the hot path).
        out.clear();
        out.resize(self.key_size, b'0');
        let mut rest = index;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
    }

    /// A key next to `index` that is never written.
    pub fn missing_key(&self, index: u64, out: &mut Vec<u8>) {
        self.key(index, out);
        out.push(b'.');
    }
}

/// db_bench-style compressible values from a fixed-seed buffer. The buffer is cut into pieces of
/// `value_size` bytes, each half random printable bytes and half a repeat of them, and value `n` is piece
/// `n mod pieces`: every value compresses to ~50% on its own. (db_bench slices one buffer at running
/// offsets, so its values straddle pieces and compress less evenly.)
#[derive(Debug)]
pub struct ValueSource {
    buffer: Vec<u8>,
    value_size: usize,
    pieces: u64,
}

impl ValueSource {
    /// The buffer for values of `value_size` (> 0) bytes.
    pub fn new(value_size: usize) -> ValueSource {
        assert!(value_size > 0, "value_size must be positive");
        let mut rng = Rng::new(VALUE_SEED);
        let pieces = (VALUE_BUFFER_BYTES / value_size).max(MIN_PIECES);
        let random_len = ((value_size as f64 * RANDOM_FRACTION) as usize).max(1);
        let mut buffer = Vec::with_capacity(pieces * value_size);
        for _ in 0..pieces {
            let random: Vec<u8> = (0..random_len).map(|_| b' ' + rng.below(95) as u8).collect();
            buffer.extend((0..value_size).map(|i| random[i % random_len]));
        }
        ValueSource { buffer, value_size, pieces: pieces as u64 }
    }

    /// The value for the `n`-th write of some writer (any `n`; it wraps around the buffer).
    pub fn value(&self, n: u64) -> &[u8] {
        let start = (n % self.pieces) as usize * self.value_size;
        &self.buffer[start..start + self.value_size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_and_buckets_follow_key_order() {
        let ks = KeySpace::new(1000, 16, 1024).unwrap();
        let mut k = Vec::new();
        ks.key(42, &mut k);
        assert_eq!(k, b"0000000000000042");
        for i in [0u64, 9, 10, 999, 123_456_789] {
            KeySpace::new(1_000_000_000, 16, 1024).unwrap().key(i, &mut k);
            assert_eq!(k, format!("{i:016}").as_bytes());
        }
        let buckets: Vec<u16> = (0..1000).map(|i| ks.bucket(i)).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        assert!(*buckets.last().unwrap() < 1024);
        assert!(KeySpace::new(1000, 2, 1024).is_err());
    }

    #[test]
    fn values_have_the_asked_size() {
        let v = ValueSource::new(100);
        for n in [0, 1, 1 << 20, u64::MAX] {
            let value = v.value(n);
            assert_eq!(value.len(), 100);
            assert_eq!(value[..50], value[50..]);
        }
        assert_ne!(v.value(0), v.value(1));
    }
}
