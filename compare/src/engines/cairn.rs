//! cairn-engine with its defaults: one shard owning all 1024 buckets, values in column 0.

use super::{Engine, Result, TOTAL_BUCKETS, err};
use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use std::path::Path;

pub const NOTES: &[&str] = &[
    "Config::new defaults: 128 MiB block cache, 10-bit bloom filter, lz4, 32 MiB memtable",
    "one shard owning buckets 0..=1023; every value in column 0",
];

struct Cairn {
    db: Db,
}

pub fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let mut config = Config::new(dir);
    config.total_buckets = TOTAL_BUCKETS;
    let max = (TOTAL_BUCKETS - 1) as u16;
    let db = Db::open(config, vec![0..=max]).map_err(err("cairn open"))?;
    Ok(Box::new(Cairn { db }))
}

impl Engine for Cairn {
    fn put(&self, bucket: u16, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(bucket, key, 0, value);
        self.db.write(batch, WriteOptions { sync }).map_err(err("cairn put"))
    }

    fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<usize>> {
        let row = self.db.get(bucket, key).map_err(err("cairn get"))?;
        Ok(row.and_then(|r| r.column(0).map(<[u8]>::len)))
    }

    fn scan_all(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let max = (TOTAL_BUCKETS - 1) as u16;
        let mut iter = self.db.scan_buckets(0..=max).map_err(err("cairn scan"))?;
        let mut rows = 0;
        // The borrowing cursor: like the other engines' iterators, it hands out slices without copying.
        while iter.advance().map_err(err("cairn scan"))? {
            visit(iter.key(), iter.row().column(0).unwrap_or_default());
            rows += 1;
        }
        Ok(rows)
    }

    fn flush_and_compact(&self) -> Result<()> {
        self.db.flush().map_err(err("cairn flush"))?;
        self.db.compact().map_err(err("cairn compact"))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.close().map_err(err("cairn close"))
    }
}
