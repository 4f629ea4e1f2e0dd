//! Read workloads of `cairn-bench engine`. Each checks what it reads (present keys found with a value of
//! the right size, missing keys absent, scans in key order) and reports mismatches as `wrong` rather than
//! hiding them: a mismatch is an engine bug.

use crate::engine::{Bench, ok, parallel};
use cairn_bench::histogram::Histogram;
use cairn_bench::report::WorkloadResult;
use cairn_bench::rng::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Seed of the reader key streams (distinct from the writers').
const READ_SEED: u64 = 0x005E_ED0F_4EAD;

fn report_wrong(r: &mut WorkloadResult, wrong: u64) {
    r.extra.push(("wrong", wrong as f64));
    if wrong > 0 {
        eprintln!("cairn-bench: {}: {wrong} reads returned a wrong result (engine bug?)", r.name);
    }
}

/// Runs `total` operations spread over `threads` threads, each thread drawing uniformly random key
/// indexes below `num` from its own stream derived from `seed`. Per operation: `key` builds the key
/// (untimed), `op` runs the read (timed), `right` checks the result (untimed). Returns the latencies, the
/// elapsed seconds and how many results were wrong.
fn random_reads<R>(
    threads: usize,
    total: u64,
    num: u64,
    seed: u64,
    key: impl Fn(u64, &mut Vec<u8>) + Sync,
    op: impl Fn(u64, &[u8]) -> R + Sync,
    right: impl Fn(&[u8], R) -> bool + Sync,
) -> (Histogram, f64, u64) {
    let wrong = AtomicU64::new(0);
    let (latency, secs) = parallel(threads, total, |t, range, h| {
        let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 32));
        let mut buf = Vec::new();
        let mut bad = 0;
        for _ in range {
            let i = rng.below(num);
            key(i, &mut buf);
            let t = Instant::now();
            let result = op(i, &buf);
            h.record(t.elapsed().as_nanos() as u64);
            bad += u64::from(!right(&buf, result));
        }
        wrong.fetch_add(bad, Ordering::Relaxed);
    });
    (latency, secs, wrong.into_inner())
}

impl Bench<'_> {
    /// `readrandom` (uniform over the loaded keys) or `readmissing` (keys never written).
    pub(crate) fn read_random(&mut self, missing: bool) -> WorkloadResult {
        self.ensure_compacted();
        let name = if missing { "readmissing" } else { "readrandom" };
        let db = self.db();
        let (keys, value_size) = (&self.keys, self.args.value_size);
        let hits_before = db.metrics();
        let (latency, secs, wrong) = random_reads(
            self.args.threads,
            keys.num,
            keys.num,
            READ_SEED,
            |i, key| if missing { keys.missing_key(i, key) } else { keys.key(i, key) },
            |i, key| ok(db.get(keys.bucket(i), key), name),
            |_, row| match (&row, missing) {
                (None, true) => true,
                (Some(row), false) => row.column(0).is_some_and(|v| v.len() == value_size),
                _ => false,
            },
        );
        let op_bytes = if missing { keys.key_size as u64 } else { self.record_bytes() };
        let mut r = self.result(name, keys.num, secs, op_bytes, latency);
        let after = db.metrics();
        let (hits, misses) = (
            after.block_cache_hits - hits_before.block_cache_hits,
            after.block_cache_misses - hits_before.block_cache_misses,
        );
        r.extra.push((
            "cache_hit_ratio",
            if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
        ));
        report_wrong(&mut r, wrong);
        r
    }

    /// A full scan of every bucket; ops are rows.
    pub(crate) fn read_seq(&mut self) -> WorkloadResult {
        self.ensure_compacted();
        let db = self.db();
        let keys = &self.keys;
        let max = (keys.total_buckets - 1) as u16;
        let mut latency = Histogram::default();
        let mut expected = Vec::with_capacity(keys.key_size);
        let (mut rows, mut wrong) = (0u64, 0u64);
        let start = Instant::now();
        let mut iter = ok(db.scan_buckets(0..=max), "readseq");
        loop {
            let t = Instant::now();
            let more = ok(iter.advance(), "readseq");
            latency.record(t.elapsed().as_nanos() as u64);
            if !more {
                break;
            }
            // Bucket mapping preserves index order, so row n must be key n.
            keys.key(rows, &mut expected);
            let (bucket, key) = (iter.bucket(), iter.key());
            wrong += u64::from(rows >= keys.num || key != expected || bucket != keys.bucket(rows));
            rows += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        wrong += keys.num.abs_diff(rows);
        let mut r = self.result("readseq", rows, secs, self.record_bytes(), latency);
        report_wrong(&mut r, wrong);
        r
    }

    /// Opens a scan at a random present key and reads one row.
    pub(crate) fn seek_random(&mut self) -> WorkloadResult {
        self.ensure_compacted();
        let db = self.db();
        let keys = &self.keys;
        let (latency, secs, wrong) = random_reads(
            self.args.threads,
            keys.num,
            keys.num,
            READ_SEED ^ 0xABCD,
            |i, key| keys.key(i, key),
            |i, key| ok(ok(db.scan(keys.bucket(i), key..), "seekrandom").next_row(), "seekrandom"),
            |key, first| first.is_some_and(|(_, k, _)| k == key),
        );
        let mut r = self.result("seekrandom", keys.num, secs, self.record_bytes(), latency);
        report_wrong(&mut r, wrong);
        r
    }

    /// `--threads` readers doing readrandom while one writer overwrites random keys flat out; ops/s and
    /// latencies are the readers'.
    pub(crate) fn read_while_writing(&mut self) -> WorkloadResult {
        self.ensure_compacted();
        let db = self.db();
        let (keys, values) = (&self.keys, &self.values);
        let stop = AtomicBool::new(false);
        let writes = AtomicU64::new(0);
        let before = db.metrics();
        let (latency, secs, wrong) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = Rng::new(READ_SEED ^ 0x1234);
                let mut key = Vec::with_capacity(keys.key_size);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(keys.num);
                    keys.key(i, &mut key);
                    ok(db.put(keys.bucket(i), &key, 0, values.value(n)), "readwhilewriting writer");
                    n += 1;
                }
                writes.store(n, Ordering::Relaxed);
            });
            let out = random_reads(
                self.args.threads,
                keys.num,
                keys.num,
                READ_SEED,
                |i, key| keys.key(i, key),
                |i, key| ok(db.get(keys.bucket(i), key), "readwhilewriting"),
                |_, row| row.is_some(),
            );
            stop.store(true, Ordering::Relaxed);
            out
        });
        let mut r = self.result("readwhilewriting", keys.num, secs, self.record_bytes(), latency);
        let writes = writes.into_inner();
        r.extra.push(("writer_ops_per_sec", if secs > 0.0 { (writes as f64 / secs).round() } else { 0.0 }));
        let after = db.metrics();
        r.extra.push(("flushes", (after.flushes - before.flushes) as f64));
        r.extra.push(("compactions", (after.compactions - before.compactions) as f64));
        r.extra.push(("stall_ms", ((after.stall_micros - before.stall_micros) / 1000) as f64));
        r.extra.push(("l0_files_at_end", after.level_files.first().copied().unwrap_or(0) as f64));
        report_wrong(&mut r, wrong);
        self.compacted = false;
        r
    }
}
