//! Collects user-key hashes while a table is written and lays out the filter at the end (the bit array's
//! size depends on the number of distinct keys). Format: see [`super::bloom`].

use super::bloom::{bloom_hash, for_each_probe, probes_for};
use super::format::MAX_BLOCK_BYTES;

/// Smallest bit array, so that tiny tables still get a useful filter.
const MIN_FILTER_BITS: u64 = 64;

/// Builds a [`super::bloom::BloomFilter`].
#[derive(Debug)]
pub struct BloomBuilder {
    bits_per_key: u32,
    // One hash per distinct user key (consecutive duplicates are dropped: versions of one key are
    // adjacent in a table).
    hashes: Vec<u64>,
}

impl BloomBuilder {
    /// A builder spending about `bits_per_key` bits per distinct key (at least 1).
    pub fn new(bits_per_key: u32) -> BloomBuilder {
        BloomBuilder { bits_per_key: bits_per_key.max(1), hashes: Vec::new() }
    }

    /// Adds a user key; a repeat of the previous key is free.
    pub fn add_key(&mut self, user_key: &[u8]) {
        let h = bloom_hash(user_key);
        // Two different keys with one 64-bit hash set the same bits, so deduplicating by hash is exact.
        if self.hashes.last() != Some(&h) {
            self.hashes.push(h);
        }
    }

    /// Bytes the filter will take.
    pub fn estimated_bytes(&self) -> u64 {
        self.num_bits() / 8 + 1
    }

    /// The bit array size: `keys * bits_per_key` rounded up to whole bytes, at least [`MIN_FILTER_BITS`],
    /// at most what fits in a block (more keys then only raise the false-positive rate).
    fn num_bits(&self) -> u64 {
        let wanted = (self.hashes.len() as u64).saturating_mul(u64::from(self.bits_per_key));
        let max_bits = (MAX_BLOCK_BYTES as u64 - 1) * 8;
        wanted.clamp(MIN_FILTER_BITS, max_bits).div_ceil(8) * 8
    }

    /// Lays out the filter bytes and clears the collected keys.
    pub fn finish(&mut self) -> Vec<u8> {
        let num_bits = self.num_bits();
        let k = probes_for(self.bits_per_key);
        let mut bits = vec![0u8; (num_bits / 8) as usize + 1];
        for &h in &self.hashes {
            for_each_probe(h, k, num_bits, |bit| {
                bits[(bit / 8) as usize] |= 1 << (bit % 8);
                true
            });
        }
        if let Some(last) = bits.last_mut() {
            *last = k as u8;
        }
        self.hashes.clear();
        bits
    }
}
