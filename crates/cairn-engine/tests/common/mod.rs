//! Helpers shared by the durability tests: a seeded RNG, a `BTreeMap` model of the rows, and readers
//! that turn a `Db` into that model.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use cairn_engine::fs::FileSystem;
use cairn_engine::{Config, Db, Result, WriteBatch};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A shard in `/db` on `fs` with tiny memtables, files and level targets, so a few hundred KB of writes
/// already flush, compact and spread over several levels.
pub fn small_config(fs: Arc<dyn FileSystem>, buckets: u16) -> Config {
    let mut c = Config::new("/db").with_fs(fs);
    c.total_buckets = u32::from(buckets);
    c.memtable_bytes = 64 << 10;
    c.l0_compaction_trigger = 2;
    c.l0_stop_writes_trigger = 8;
    c.target_file_bytes = 64 << 10;
    c.level_base_bytes = 64 << 10;
    c.level_multiplier = 2;
    c.block_bytes = 512;
    c
}

/// Rows by (bucket, key): column number to value.
pub type Model = BTreeMap<(u16, Vec<u8>), BTreeMap<u16, Vec<u8>>>;

/// splitmix64: tiny, seedable, good enough to pick operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_cafe_f00d_d00d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// The seeds a randomized test runs: `count` fixed ones, or only `$CAIRN_SEED` when it is set (to replay
/// a failure, which prints its seed).
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("CAIRN_SEED") {
        Ok(s) => vec![s.trim().parse().expect("CAIRN_SEED must be a u64")],
        Err(_) => (0..count).collect(),
    }
}

/// One operation of a write batch; `None` values delete.
#[derive(Debug, Clone)]
pub enum Op {
    Put(u16, Vec<u8>, u16, Vec<u8>),
    DeleteColumn(u16, Vec<u8>, u16),
    Delete(u16, Vec<u8>),
}

/// A random batch over `buckets` buckets and `keys` keys per bucket; values up to `max_value` bytes.
pub fn random_ops(rng: &mut Rng, buckets: u16, keys: u64, max_value: u64) -> Vec<Op> {
    let n = if rng.chance(30) { rng.range(2, 8) } else { 1 };
    (0..n)
        .map(|_| {
            let b = rng.range(0, u64::from(buckets)) as u16;
            let k = format!("key-{:04}", rng.range(0, keys)).into_bytes();
            let c = rng.range(0, 3) as u16;
            match rng.range(0, 10) {
                0 => Op::Delete(b, k),
                1 => Op::DeleteColumn(b, k, c),
                _ => {
                    let len = rng.range(1, max_value) as usize;
                    let tag = rng.next_u64();
                    let v = (0..len).map(|i| (tag >> (i % 8 * 8)) as u8 ^ i as u8).collect();
                    Op::Put(b, k, c, v)
                }
            }
        })
        .collect()
}

pub fn to_batch(ops: &[Op]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for op in ops {
        match op {
            Op::Put(b, k, c, v) => batch.put(*b, k, *c, v),
            Op::DeleteColumn(b, k, c) => batch.delete_column(*b, k, *c),
            Op::Delete(b, k) => batch.delete(*b, k),
        }
    }
    batch
}

/// Applies `ops` to `model`; returns the rows they touched.
pub fn apply(model: &mut Model, ops: &[Op]) -> Vec<(u16, Vec<u8>)> {
    let mut touched = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put(b, k, c, v) => {
                model.entry((*b, k.clone())).or_default().insert(*c, v.clone());
                touched.push((*b, k.clone()));
            }
            Op::DeleteColumn(b, k, c) => {
                if let Some(row) = model.get_mut(&(*b, k.clone())) {
                    row.remove(c);
                    if row.is_empty() {
                        model.remove(&(*b, k.clone()));
                    }
                }
                touched.push((*b, k.clone()));
            }
            Op::Delete(b, k) => {
                model.remove(&(*b, k.clone()));
                touched.push((*b, k.clone()));
            }
        }
    }
    touched
}

/// Every row of buckets `0..buckets`, read with one full scan.
pub fn scan_all(db: &Db, buckets: u16) -> Result<Model> {
    let mut out = Model::new();
    for item in db.scan_buckets(0..=buckets - 1)? {
        let (b, k, row) = item?;
        let cols: BTreeMap<u16, Vec<u8>> = row.columns().map(|(c, v)| (c, v.to_vec())).collect();
        assert!(!cols.is_empty(), "scan returned an empty row for bucket {b} key {k:?}");
        assert!(out.insert((b, k), cols).is_none(), "scan returned a row twice");
    }
    Ok(out)
}

/// Checks every row of `model` with a point read, and that a full scan matches it.
pub fn check_reads(db: &Db, buckets: u16, model: &Model) -> Result<()> {
    for ((b, k), cols) in model {
        let row = db.get(*b, k)?.unwrap_or_else(|| panic!("row ({b}, {k:?}) missing from get"));
        let got: BTreeMap<u16, Vec<u8>> = row.columns().map(|(c, v)| (c, v.to_vec())).collect();
        assert_eq!(&got, cols, "get({b}, {k:?})");
    }
    let scanned = scan_all(db, buckets)?;
    assert!(scanned == *model, "full scan differs from the model");
    Ok(())
}

/// Finds the shortest prefix `p` in `min_len..=writes.len()` of `writes`, applied on top of `base`,
/// whose model equals `recovered`. Tracks the set of mismatching rows incrementally, so it costs one
/// pass over the writes.
pub fn matching_prefix(base: &Model, writes: &[Vec<Op>], min_len: usize, recovered: &Model) -> Option<usize> {
    let mut model = base.clone();
    let mut mismatched: std::collections::BTreeSet<(u16, Vec<u8>)> = model
        .keys()
        .chain(recovered.keys())
        .filter(|k| model.get(*k) != recovered.get(*k))
        .cloned()
        .collect();
    for p in 0..=writes.len() {
        if p >= min_len && mismatched.is_empty() {
            return Some(p);
        }
        if p == writes.len() {
            break;
        }
        for key in apply(&mut model, &writes[p]) {
            if model.get(&key) == recovered.get(&key) {
                mismatched.remove(&key);
            } else {
                mismatched.insert(key);
            }
        }
    }
    None
}

/// What the snapshot tests share: a 1000-bucket space, keys, values and configs.
pub mod snapdata {
    use cairn_engine::{Config, CoordinatorConfig, Volume, VolumeRole};
    use std::path::Path;

    pub const TOTAL: u32 = 1000;

    pub fn key(i: u64) -> Vec<u8> {
        format!("key-{i:08}").into_bytes()
    }

    pub fn value(i: u64, round: u64) -> Vec<u8> {
        format!("value-{i}-{round}-{}", "x".repeat((i % 40) as usize)).into_bytes()
    }

    pub fn bucket_of(i: u64) -> u16 {
        (i * 7919 % u64::from(TOTAL)) as u16
    }

    /// A shard config in `dir` whose snapshots go to `snapvol` (a shared volume URL).
    pub fn shard_config(dir: &Path, snapvol: &str) -> Config {
        let mut c = Config::new(dir);
        c.total_buckets = TOTAL;
        c.memtable_bytes = 256 << 10;
        c.target_file_bytes = 128 << 10;
        c.level_base_bytes = 256 << 10;
        c.snapshot_volume = Some(snapvol.to_string());
        c
    }

    pub fn coordinator_config(snapvol: &str, retention: Option<usize>) -> CoordinatorConfig {
        CoordinatorConfig {
            volumes: vec![Volume::new(snapvol, VolumeRole::Meta), Volume::new(snapvol, VolumeRole::Snapshot)],
            snapshot_retention: retention,
            ..CoordinatorConfig::default()
        }
    }
}
