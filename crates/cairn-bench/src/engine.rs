//! `cairn-bench engine`: db_bench-style workloads against one in-process shard.
//!
//! State carried between workloads: the current Db and whether it holds every key `0..num` (`loaded`)
//! and has been fully compacted since its last write (`compacted`). Fills start a fresh Db; read
//! workloads load (untimed, sequentially) and compact first when the current Db does not qualify, so
//! each can also run alone. Every op is timed (as db_bench does); `Instant::now` costs ~25 ns.

use crate::engine_args::{CompressionArg, EngineArgs};
use cairn_bench::data::{KeySpace, ValueSource};
use cairn_bench::histogram::Histogram;
use cairn_bench::report::{Printer, WorkloadResult, dir_bytes, peak_rss_bytes};
use cairn_bench::rng::Rng;
use cairn_engine::{Compression, Config, Db, MetricsSnapshot, WriteBatch, WriteOptions};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

/// Buckets in the shard's bucket space; the Db owns all of them.
const TOTAL_BUCKETS: u32 = 1024;
/// Seed of the key orders (fillrandom's permutation, per-thread random keys).
const KEY_SEED: u64 = 0x00C0_FFEE;
/// Rows per batch when loading a Db untimed for read workloads.
const LOAD_BATCH_ROWS: u64 = 1000;

/// Runs the selected workloads and prints their results and a final summary.
pub fn run(args: &EngineArgs) -> Result<(), String> {
    args.validate()?;
    let keys = KeySpace::new(args.num, args.key_size, TOTAL_BUCKETS)?;
    let (root, temp) = cairn_bench::run::work_root(args.dir.as_deref(), "cairn-bench-")?;
    let mut bench = Bench {
        args,
        keys,
        values: ValueSource::new(args.value_size),
        root,
        db: None,
        db_dir: PathBuf::new(),
        db_count: 0,
        db_origin: String::new(),
        loaded: false,
        compacted: false,
        printer: Printer::new(args.json),
    };
    bench.printer.header();
    for name in &args.benchmarks {
        let result = bench.run_workload(name);
        bench.printer.workload(&result);
    }
    bench.summary();
    // A --dir given by the user keeps the last Db for inspection; a temp root goes entirely.
    bench.close_db(args.dir.is_none());
    drop(temp);
    Ok(())
}

pub(crate) struct Bench<'a> {
    pub(crate) args: &'a EngineArgs,
    pub(crate) keys: KeySpace,
    pub(crate) values: ValueSource,
    pub(crate) root: PathBuf,
    pub(crate) db: Option<Db>,
    pub(crate) db_dir: PathBuf,
    pub(crate) db_count: u32,
    /// The workload that created the current Db.
    pub(crate) db_origin: String,
    pub(crate) loaded: bool,
    pub(crate) compacted: bool,
    pub(crate) printer: Printer,
}

/// Aborts the benchmark on an engine error: results after one would be meaningless.
pub(crate) fn ok<T>(r: cairn_engine::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("engine error during {what}: {e}"))
}

/// Splits `total` ops over `threads` workers, runs `op_range` on each, and returns the merged latency
/// histogram and the wall time.
pub(crate) fn parallel<F>(threads: usize, total: u64, op_range: F) -> (Histogram, f64)
where
    F: Fn(usize, Range<u64>, &mut Histogram) + Sync,
{
    let (merged, secs) = cairn_bench::run::parallel(threads, total, |t, ops, h| {
        op_range(t, ops, h);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    assert_eq!(merged.count(), total, "every op records one latency");
    (merged, secs)
}

/// Write amplification of the writes between two snapshots.
fn write_amp_between(before: &MetricsSnapshot, after: &MetricsSnapshot) -> f64 {
    let user = after.user_bytes_written - before.user_bytes_written;
    let written = (after.wal_bytes - before.wal_bytes)
        + (after.flush_bytes - before.flush_bytes)
        + (after.compaction_bytes_written - before.compaction_bytes_written);
    if user == 0 { 0.0 } else { written as f64 / user as f64 }
}

impl Bench<'_> {
    fn run_workload(&mut self, name: &str) -> WorkloadResult {
        match name {
            "fillseq" => self.fill(name, FillOrder::Sequential, 1, false),
            "fillrandom" => self.fill(name, FillOrder::Permutation, self.args.threads, false),
            "overwrite" => self.overwrite(),
            "readrandom" => self.read_random(false),
            "readmissing" => self.read_random(true),
            "readseq" => self.read_seq(),
            "seekrandom" => self.seek_random(),
            "readwhilewriting" => self.read_while_writing(),
            "fillsync" => self.fill(name, FillOrder::Permutation, self.args.threads, true),
            "fillsync16" => self.fill(name, FillOrder::Permutation, 16, true),
            other => unreachable!("validated workload {other}"),
        }
    }

    pub(crate) fn db(&self) -> &Db {
        self.db.as_ref().expect("a Db is open")
    }

    fn config(&self, dir: PathBuf) -> Config {
        let mut c = Config::new(dir);
        c.total_buckets = TOTAL_BUCKETS;
        c.block_cache_bytes = self.args.cache_mb << 20;
        c.bloom_bits_per_key = self.args.bloom_bits;
        c.block_restart_interval = self.args.restart_interval;
        c.compression = match self.args.compression {
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::None => Compression::None,
        };
        c
    }

    fn close_db(&mut self, remove: bool) {
        if let Some(db) = self.db.take() {
            ok(db.close(), "close");
            if remove {
                // Leftover files only cost disk space; a temp root is removed at the end anyway.
                let _ = std::fs::remove_dir_all(&self.db_dir);
            }
        }
    }

    fn fresh_db(&mut self, origin: &str) {
        self.close_db(true);
        self.db_count += 1;
        self.db_dir = self.root.join(format!("db-{}", self.db_count));
        let config = self.config(self.db_dir.clone());
        let max = (TOTAL_BUCKETS - 1) as u16;
        self.db = Some(ok(Db::open(config, vec![0..=max]), "open"));
        self.db_origin = origin.to_string();
        self.loaded = false;
        self.compacted = false;
    }

    /// Makes the current Db hold every key, loading a fresh one untimed if needed.
    fn ensure_loaded(&mut self) {
        if self.loaded {
            return;
        }
        self.fresh_db("load");
        let db = self.db();
        let mut key = Vec::with_capacity(self.keys.key_size);
        let mut batch = WriteBatch::new();
        for i in 0..self.keys.num {
            self.keys.key(i, &mut key);
            batch.put(self.keys.bucket(i), &key, 0, self.values.value(i));
            if (i + 1) % LOAD_BATCH_ROWS == 0 || i + 1 == self.keys.num {
                ok(db.write(std::mem::take(&mut batch), WriteOptions::default()), "load");
            }
        }
        self.loaded = true;
    }

    pub(crate) fn ensure_compacted(&mut self) {
        self.ensure_loaded();
        if !self.compacted {
            ok(self.db().compact(), "compact");
            self.compacted = true;
        }
    }

    pub(crate) fn result(
        &self,
        name: &str,
        ops: u64,
        secs: f64,
        op_bytes: u64,
        latency: Histogram,
    ) -> WorkloadResult {
        WorkloadResult { name: name.into(), ops, secs, bytes: ops * op_bytes, latency, extra: Vec::new() }
    }

    pub(crate) fn record_bytes(&self) -> u64 {
        (self.keys.key_size + self.args.value_size) as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FillOrder {
    Sequential,
    /// Every key once, in a shuffled order (so the Db ends up holding the whole key set).
    Permutation,
}

impl Bench<'_> {
    fn fill(&mut self, name: &str, order: FillOrder, threads: usize, sync: bool) -> WorkloadResult {
        self.fresh_db(name);
        let ops = if sync { self.args.sync_num } else { self.keys.num };
        let mut indexes: Vec<u64> = (0..self.keys.num).collect();
        if order == FillOrder::Permutation {
            Rng::new(KEY_SEED).shuffle(&mut indexes);
        }
        let db = self.db();
        let before = db.metrics();
        let (keys, values) = (&self.keys, &self.values);
        let (latency, secs) = parallel(threads, ops, |_, range, h| {
            let mut key = Vec::with_capacity(keys.key_size);
            for n in range {
                let i = indexes[(n % keys.num) as usize];
                keys.key(i, &mut key);
                let mut batch = WriteBatch::new();
                batch.put(keys.bucket(i), &key, 0, values.value(n));
                let t = Instant::now();
                ok(db.write(batch, WriteOptions { sync }), name);
                h.record(t.elapsed().as_nanos() as u64);
            }
        });
        // Count the flush of what the workload wrote, not the untimed full compaction that follows.
        ok(db.flush(), "flush");
        let after = db.metrics();
        let mut r = self.result(name, ops, secs, self.record_bytes(), latency);
        r.extra.push(("write_amp", write_amp_between(&before, &after)));
        r.extra.push(("stalls", (after.stalls - before.stalls) as f64));
        if sync {
            r.extra.push(("wal_syncs", (after.wal_syncs - before.wal_syncs) as f64));
        }
        self.loaded = ops >= self.keys.num;
        self.space_after_compaction(&mut r);
        r
    }

    fn overwrite(&mut self) -> WorkloadResult {
        self.ensure_loaded();
        let db = self.db();
        let before = db.metrics();
        let (keys, values) = (&self.keys, &self.values);
        let (latency, secs) = parallel(self.args.threads, keys.num, |t, range, h| {
            let mut rng = Rng::new(KEY_SEED ^ ((t as u64 + 1) << 32));
            let mut key = Vec::with_capacity(keys.key_size);
            for n in range {
                let i = rng.below(keys.num);
                keys.key(i, &mut key);
                let t = Instant::now();
                ok(db.put(keys.bucket(i), &key, 0, values.value(n.wrapping_add(keys.num))), "overwrite");
                h.record(t.elapsed().as_nanos() as u64);
            }
        });
        ok(db.flush(), "flush");
        let after = db.metrics();
        let mut r = self.result("overwrite", keys.num, secs, self.record_bytes(), latency);
        r.extra.push(("write_amp", write_amp_between(&before, &after)));
        r.extra.push(("stalls", (after.stalls - before.stalls) as f64));
        self.compacted = false;
        self.space_after_compaction(&mut r);
        r
    }

    /// Compacts (untimed) and adds the on-disk size and peak RSS to a write workload's result.
    fn space_after_compaction(&mut self, r: &mut WorkloadResult) {
        ok(self.db().compact(), "compact");
        self.compacted = true;
        r.extra.push(("sst_bytes", self.db().metrics().sst_bytes() as f64));
        r.extra.push(("dir_bytes", dir_bytes(&self.db_dir) as f64));
        r.extra.push(("peak_rss_bytes", peak_rss_bytes() as f64));
    }
}

impl Bench<'_> {
    /// End of run: fully compacts the current Db and prints its cumulative write amplification, its
    /// on-disk size (as the engine counts it and as the directory holds it) and the peak RSS.
    fn summary(&mut self) {
        let Some(db) = self.db.as_ref() else {
            self.printer.facts("end", &[("peak_rss_bytes", peak_rss_bytes() as f64)]);
            return;
        };
        ok(db.compact(), "compact");
        let m = db.metrics();
        let name = format!("end (Db from {})", self.db_origin);
        self.printer.facts(
            &name,
            &[
                ("write_amp", m.write_amplification()),
                ("user_bytes_written", m.user_bytes_written as f64),
                ("sst_bytes", m.sst_bytes() as f64),
                ("dir_bytes", dir_bytes(&self.db_dir) as f64),
                ("sst_files", m.level_files.iter().sum::<usize>() as f64),
                ("compactions", m.compactions as f64),
                ("stalls", m.stalls as f64),
                ("stall_micros", m.stall_micros as f64),
                ("block_cache_hit_ratio", m.block_cache_hit_ratio()),
                ("peak_rss_bytes", peak_rss_bytes() as f64),
            ],
        );
    }
}
