//! A byte-bounded cache of decoded data blocks shared by all tables of a Db. Blocks enter it only after
//! their checksum was verified and they were decompressed, so a hit costs one hash lookup and an `Arc`
//! clone. Keys are `(file number, block offset)`; file numbers are never reused, so blocks of deleted
//! tables simply age out.

use crate::sst::Block;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes charged per cached block on top of its data: the `Block` struct, the `Arc` and the cache slot.
const ENTRY_OVERHEAD_BYTES: u64 = 96;
/// Block size assumed when sizing the cache's hash tables.
const TYPICAL_BLOCK_BYTES: u64 = 4096;

/// `(file number, block offset)`.
type BlockKey = (u64, u64);

/// Charges each block its size in bytes, so capacity is in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct BlockWeighter;

impl Weighter<BlockKey, Arc<Block>> for BlockWeighter {
    fn weight(&self, _key: &BlockKey, block: &Arc<Block>) -> u64 {
        block.size_bytes() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// A shared cache of decoded blocks, with hit and miss counters.
pub struct BlockCache {
    cache: Cache<BlockKey, Arc<Block>, BlockWeighter>,
    capacity_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("usage_bytes", &self.usage_bytes())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding up to about `capacity_bytes` of blocks.
    pub fn new(capacity_bytes: u64) -> BlockCache {
        let estimated_items = (capacity_bytes / TYPICAL_BLOCK_BYTES).clamp(16, 1 << 22) as usize;
        BlockCache {
            cache: Cache::with_weighter(estimated_items, capacity_bytes, BlockWeighter),
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The block at `block_offset` of table `file_number`, if cached.
    pub fn get(&self, file_number: u64, block_offset: u64) -> Option<Arc<Block>> {
        let found = self.cache.get(&(file_number, block_offset));
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a decoded, verified block (evicting others if over capacity).
    pub fn insert(&self, file_number: u64, block_offset: u64, block: Arc<Block>) {
        self.cache.insert((file_number, block_offset), block);
    }

    /// Lookups that found their block.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that did not.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes currently charged to cached blocks.
    pub fn usage_bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// The configured capacity.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Number of cached blocks.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True if no block is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(bytes: usize) -> Arc<Block> {
        let mut data = vec![0u8; bytes];
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        // Entry bytes are not decoded here; only the restart array must be well formed.
        Arc::new(Block::new(data).unwrap())
    }

    #[test]
    fn counts_hits_and_misses() {
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get(1, 0).is_none());
        cache.insert(1, 0, block(100));
        assert_eq!(cache.get(1, 0).unwrap().size_bytes(), 108);
        assert!(cache.get(2, 0).is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
        assert_eq!(cache.usage_bytes(), 108 + ENTRY_OVERHEAD_BYTES);
    }

    #[test]
    fn stays_within_its_byte_capacity() {
        let cache = BlockCache::new(256 * 1024);
        for i in 0..1000 {
            cache.insert(7, i * 4096, block(4000));
        }
        assert!(cache.usage_bytes() <= 256 * 1024, "usage {}", cache.usage_bytes());
        assert!(cache.len() > 10);
    }
}
