//! RocksDB through the `rocksdb` crate, two ways: its defaults ("rocksdb"), and its defaults given the
//! block-cache size and bloom filter cairn has by default ("rocksdb-tuned"), so that read ratios can be
//! told apart from configuration.

use super::{Engine, Result, err};
use ::rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteOptions};
use std::path::Path;

/// cairn's default block cache (`Config::block_cache_bytes`), given to rocksdb-tuned.
const TUNED_BLOCK_CACHE_BYTES: usize = 128 << 20;
/// cairn's default bloom filter bits per key, given to rocksdb-tuned.
const TUNED_BLOOM_BITS: f64 = 10.0;

pub const NOTES_DEFAULTS: &[&str] = &[
    "Options::default() + create_if_missing: RocksDB's built-in 32 MiB block cache, no bloom filter, snappy",
    "WAL on; sync writes set WriteOptions::sync (fsync per write group)",
    "full compaction: flush + compact_range(None, None)",
];

pub const NOTES_TUNED: &[&str] =
    &["as rocksdb, plus a 128 MiB LRU block cache and a 10-bit full bloom filter (cairn's defaults)"];

struct Rocks {
    db: DB,
    plain: WriteOptions,
    synced: WriteOptions,
}

pub fn open(dir: &Path, tuned: bool) -> Result<Box<dyn Engine>> {
    let mut options = Options::default();
    options.create_if_missing(true);
    if tuned {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(TUNED_BLOCK_CACHE_BYTES));
        // A full (whole-file) filter, RocksDB's recommended format, not the legacy per-block one.
        table.set_bloom_filter(TUNED_BLOOM_BITS, false);
        options.set_block_based_table_factory(&table);
    }
    let db = DB::open(&options, dir).map_err(err("rocksdb open"))?;
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    Ok(Box::new(Rocks { db, plain: WriteOptions::default(), synced }))
}

impl Engine for Rocks {
    fn put(&self, _bucket: u16, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let options = if sync { &self.synced } else { &self.plain };
        self.db.put_opt(key, value, options).map_err(err("rocksdb put"))
    }

    fn get(&self, _bucket: u16, key: &[u8]) -> Result<Option<usize>> {
        let value = self.db.get_pinned(key).map_err(err("rocksdb get"))?;
        Ok(value.map(|v| v.len()))
    }

    fn scan_all(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        // The raw iterator borrows each key and value instead of boxing them: RocksDB's fast path.
        let mut iter = self.db.raw_iterator();
        iter.seek_to_first();
        let mut rows = 0;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            visit(key, value);
            rows += 1;
            iter.next();
        }
        iter.status().map_err(err("rocksdb scan"))?;
        Ok(rows)
    }

    fn flush_and_compact(&self) -> Result<()> {
        self.db.flush().map_err(err("rocksdb flush"))?;
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        // Dropping the DB closes it; flush the WAL first so a --dir left behind reopens cleanly.
        self.db.flush_wal(true).map_err(err("rocksdb flush_wal"))?;
        drop(self);
        Ok(())
    }
}
