//! Builds one block in the format described in [`super::block`]: prefix-compressed entries with a restart
//! point (a full key) every `restart_interval` entries, then the restart array and its length.

use super::block::RESTART_SLOT_BYTES;
use crate::coding;

/// Accumulates sorted entries into a block's bytes.
#[derive(Debug)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    // INVARIANT: entries added since the last restart point, in 1..=restart_interval once non-empty.
    since_restart: usize,
    restart_interval: usize,
    last_key: Vec<u8>,
    num_entries: usize,
}

impl BlockBuilder {
    /// A builder placing a restart point every `restart_interval` entries (at least 1).
    pub fn new(restart_interval: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::new(),
            restarts: vec![0],
            since_restart: 0,
            restart_interval: restart_interval.max(1),
            last_key: Vec::new(),
            num_entries: 0,
        }
    }

    /// Appends an entry. Keys must increase; the table builder checks that.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.since_restart < self.restart_interval {
            self.last_key.iter().zip(key).take_while(|(a, b)| a == b).count()
        } else {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        };
        coding::put_varint(&mut self.buf, shared as u64);
        coding::put_varint(&mut self.buf, (key.len() - shared) as u64);
        coding::put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.since_restart += 1;
        self.num_entries += 1;
    }

    /// Bytes the finished block will take (before compression).
    pub fn size_estimate(&self) -> usize {
        self.buf.len() + (self.restarts.len() + 1) * RESTART_SLOT_BYTES
    }

    /// Bytes an entry will add at most (header varints of up to 10 bytes each, plus a restart slot).
    pub fn entry_size_bound(key: &[u8], value: &[u8]) -> usize {
        3 * 10 + key.len() + value.len() + RESTART_SLOT_BYTES
    }

    /// True if nothing was added since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.num_entries == 0
    }

    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends the restart array and returns the block's bytes. Call [`BlockBuilder::reset`] before reuse.
    pub fn finish(&mut self) -> &[u8] {
        for r in &self.restarts {
            self.buf.extend_from_slice(&r.to_le_bytes());
        }
        self.buf.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        &self.buf
    }

    /// Clears the builder for the next block, keeping allocations.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.restarts.push(0);
        self.since_restart = 0;
        self.last_key.clear();
        self.num_entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::Block;
    use super::super::block_iter::BlockIter;
    use super::*;
    use crate::keys::{self, Kind};
    use std::sync::Arc;

    fn entries(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        // Several versions per user key, so keys share long prefixes and trailers order newest first.
        let mut out = Vec::new();
        for i in 0..n {
            let uk = keys::user_key((i / 40) as u16, format!("key{:05}", i / 3 * 7).as_bytes());
            let seq = 1000 - (i % 3) as u64;
            let kind = [Kind::Set, Kind::Delete, Kind::Merge][i % 3];
            out.push((keys::internal_key(&uk, seq, kind), format!("value-{i}").repeat(i % 4).into_bytes()));
        }
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn build(entries: &[(Vec<u8>, Vec<u8>)], interval: usize) -> Arc<Block> {
        let mut b = BlockBuilder::new(interval);
        for (k, v) in entries {
            b.add(k, v);
        }
        let estimate = b.size_estimate();
        let data = b.finish().to_vec();
        assert_eq!(data.len(), estimate);
        Arc::new(Block::new(data).unwrap())
    }

    #[test]
    fn round_trips_with_various_restart_intervals() {
        let es = entries(300);
        for interval in [1, 2, 16, 1000] {
            let block = build(&es, interval);
            let mut it = BlockIter::new(block);
            it.seek_to_first().unwrap();
            for (k, v) in &es {
                assert!(it.valid());
                assert_eq!((it.key(), it.value()), (&k[..], &v[..]));
                it.next().unwrap();
            }
            assert!(!it.valid());
        }
    }

    #[test]
    fn seeks_to_every_key_and_between_keys() {
        let es = entries(200);
        for interval in [1, 3, 16] {
            let mut it = BlockIter::new(build(&es, interval));
            for (i, (k, v)) in es.iter().enumerate() {
                it.seek(k).unwrap();
                assert_eq!((it.key(), it.value()), (&k[..], &v[..]));
                // Just after k (same user key, older trailer) lands on the next entry.
                let after = keys::internal_key(keys::user_key_of(k), keys::seq_of(k) - 1, Kind::MAX);
                it.seek(&after).unwrap();
                match es.iter().find(|(e, _)| keys::cmp_internal(e, &after).is_ge()) {
                    Some((e, _)) => assert_eq!(it.key(), &e[..], "after entry {i}"),
                    None => assert!(!it.valid()),
                }
            }
            // Before everything and after everything.
            it.seek(&keys::internal_key(&[0, 0], keys::MAX_SEQUENCE, Kind::MAX)).unwrap();
            assert_eq!(it.key(), &es[0].0[..]);
            it.seek(&keys::internal_key(&[0xff, 0xff, 0xff], 0, Kind::Delete)).unwrap();
            assert!(!it.valid());
        }
    }

    #[test]
    fn empty_block_iterates_nothing() {
        let mut it = BlockIter::new(build(&[], 16));
        it.seek_to_first().unwrap();
        assert!(!it.valid());
        it.seek(b"anything-at-all").unwrap();
        assert!(!it.valid());
    }

    #[test]
    fn restarts_store_full_keys() {
        let es = entries(40);
        let mut b = BlockBuilder::new(4);
        for (k, v) in &es {
            b.add(k, v);
        }
        let block = Block::new(b.finish().to_vec()).unwrap();
        assert_eq!(block.num_restarts(), es.len().div_ceil(4));
        for i in 0..block.num_restarts() {
            let at = block.restart(i);
            assert_eq!(block.data()[at], 0, "restart {i} has shared = 0");
        }
    }

    #[test]
    fn order_check_catches_unsorted_and_malformed_keys() {
        let es = entries(50);
        assert!(super::super::block_iter::check_block_order(build(&es, 16)).is_ok());
        let mut swapped = es.clone();
        swapped.swap(10, 11);
        assert!(super::super::block_iter::check_block_order(build(&swapped, 16)).is_err());
        let malformed = vec![(b"abc".to_vec(), b"v".to_vec())];
        assert!(super::super::block_iter::check_block_order(build(&malformed, 16)).is_err());
    }

    #[test]
    fn garbage_with_a_valid_restart_array_never_panics() {
        // A checksum protects blocks on disk; this checks decoding alone stays in bounds on any bytes.
        let es = entries(60);
        let good = build(&es, 4).data().to_vec();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let mut data = good.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % data.len() as u64) as usize;
                data[at] = (state >> 32) as u8;
            }
            let Ok(block) = Block::new(data) else { continue };
            let mut it = BlockIter::new(Arc::new(block));
            let mut steps = 0;
            if it.seek_to_first().is_ok() {
                while it.valid() && steps < 1000 && it.next().is_ok() {
                    steps += 1;
                }
            }
            for (k, _) in es.iter().step_by(7) {
                let _ = it.seek(k);
            }
        }
    }
}
