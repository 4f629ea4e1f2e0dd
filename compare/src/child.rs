//! The child process: runs the selected workloads against one engine and prints one JSON line per
//! result (see [`crate::protocol`]).
//!
//! The workloads mean what they mean in `cairn-bench engine`, with the same keys, values, seeds and
//! order of keys: fills start a fresh database; read workloads need one holding every key `0..num`,
//! fully compacted, and load one (untimed, one key at a time, not synced) when the current database does
//! not qualify, so each can also run alone. Every operation is timed on its own, as db_bench does.

use crate::cli::{Args, Workload};
use crate::engines::{Engine, Kind, Result};
use crate::protocol::{Facts, Measurement, Message};
use cairn_bench::data::{KeySpace, ValueSource};
use cairn_bench::histogram::Histogram;
use cairn_bench::report::{dir_bytes, peak_rss_bytes};
use cairn_bench::rng::Rng;
use cairn_bench::run::parallel;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Seed of the fills' key permutation: cairn-bench's `KEY_SEED`, so cairn sees the same order here.
const KEY_SEED: u64 = 0x00C0_FFEE;
/// Seed of the readers' key streams: cairn-bench's `READ_SEED`.
const READ_SEED: u64 = 0x005E_ED0F_4EAD;

/// Runs `args.workloads` on `kind` in databases under `args.dir` and prints the results.
pub fn run(kind: Kind, args: &Args) -> Result<()> {
    let root = args.dir.clone().ok_or("--child needs --dir")?;
    let mut child = Child {
        kind,
        args,
        keys: KeySpace::new(args.num, args.key_size, crate::engines::TOTAL_BUCKETS)?,
        values: ValueSource::new(args.value_size),
        root,
        db: None,
        db_dir: PathBuf::new(),
        db_count: 0,
        db_origin: "",
        loaded: false,
        compacted: false,
        facts: Facts::default(),
    };
    for &workload in &args.workloads {
        let m = child.run_workload(workload)?;
        println!("{}", Message::Workload(m).to_line());
    }
    child.close_db()?;
    child.facts.peak_rss_bytes = peak_rss_bytes();
    println!("{}", Message::Facts(child.facts.clone()).to_line());
    Ok(())
}

struct Child<'a> {
    kind: Kind,
    args: &'a Args,
    keys: KeySpace,
    values: ValueSource,
    root: PathBuf,
    db: Option<Box<dyn Engine>>,
    db_dir: PathBuf,
    db_count: u32,
    /// The workload that created the current database.
    db_origin: &'static str,
    /// The current database holds every key `0..num`.
    loaded: bool,
    /// ...and has been fully compacted since its last write.
    compacted: bool,
    facts: Facts,
}

fn measurement(workload: Workload, ops: u64, secs: f64, latency: &Histogram, wrong: u64) -> Measurement {
    let micros = |q| latency.quantile(q) as f64 / 1000.0;
    Measurement {
        workload: workload.name().into(),
        ops,
        secs,
        ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
        p50_us: micros(0.5),
        p99_us: micros(0.99),
        p999_us: micros(0.999),
        wrong,
    }
}

impl Child<'_> {
    fn run_workload(&mut self, workload: Workload) -> Result<Measurement> {
        match workload {
            Workload::FillRandom => self.fill(workload, 1, false),
            Workload::ReadRandom => self.read_random(),
            Workload::ReadSeq => self.read_seq(),
            Workload::FillSync => self.fill(workload, 1, true),
            Workload::FillSync16 => self.fill(workload, 16, true),
        }
    }

    fn db(&self) -> Result<&dyn Engine> {
        self.db.as_deref().ok_or_else(|| "no database is open".into())
    }

    /// Closes the current database. If it is the first one to hold every key fully compacted, its size
    /// is measured once closed: closing is when fjall deletes the tables its compaction replaced (it
    /// keeps them while older versions of its tree may be read), and it costs the others nothing.
    fn close_db(&mut self) -> Result<()> {
        if let Some(db) = self.db.take() {
            db.close()?;
            if self.loaded && self.compacted && self.facts.size_after_compaction_bytes.is_none() {
                self.facts.size_after_compaction_bytes = Some(allocated_bytes(&self.db_dir));
                self.facts.apparent_size_bytes = Some(dir_bytes(&self.db_dir));
                self.facts.size_measured_after = Some(self.db_origin.into());
            }
            // Leftovers only cost disk space; the parent removes its temp root at the end anyway.
            let _ = std::fs::remove_dir_all(&self.db_dir);
        }
        Ok(())
    }

    fn fresh_db(&mut self, origin: &'static str) -> Result<()> {
        self.close_db()?;
        self.db_count += 1;
        self.db_dir = self.root.join(format!("db-{}", self.db_count));
        self.db = Some(self.kind.open(&self.db_dir)?);
        self.db_origin = origin;
        self.loaded = false;
        self.compacted = false;
        Ok(())
    }

    /// Makes the current database hold every key, loading a fresh one (untimed) if needed.
    fn ensure_loaded(&mut self) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        eprintln!("cairn-compare: {}: loading {} keys (untimed)", self.kind.name(), self.keys.num);
        self.fresh_db("load")?;
        let db = self.db()?;
        let mut key = Vec::with_capacity(self.keys.key_size);
        for i in 0..self.keys.num {
            self.keys.key(i, &mut key);
            db.put(self.keys.bucket(i), &key, self.values.value(i), false)?;
        }
        self.loaded = true;
        Ok(())
    }

    /// Fully compacts a fully loaded database (untimed); its size is measured when it is closed.
    fn ensure_compacted(&mut self) -> Result<()> {
        self.ensure_loaded()?;
        if !self.compacted {
            self.db()?.flush_and_compact()?;
            self.compacted = true;
        }
        Ok(())
    }

    /// fillrandom (every key once in a shuffled order) or fillsync (`--sync-num` writes in that order,
    /// each durable before the next) on a fresh database, by `threads` writers.
    fn fill(&mut self, workload: Workload, threads: usize, sync: bool) -> Result<Measurement> {
        self.fresh_db(workload.name())?;
        let ops = if sync { self.args.sync_num } else { self.keys.num };
        let mut indexes: Vec<u64> = (0..self.keys.num).collect();
        Rng::new(KEY_SEED).shuffle(&mut indexes);
        let db = self.db()?;
        let (keys, values) = (&self.keys, &self.values);
        let (latency, secs) = parallel(threads, ops, |_, range, h| {
            let mut key = Vec::with_capacity(keys.key_size);
            for n in range {
                let i = indexes[(n % keys.num) as usize];
                keys.key(i, &mut key);
                let t = Instant::now();
                db.put(keys.bucket(i), &key, values.value(n), sync)?;
                h.record(t.elapsed().as_nanos() as u64);
            }
            Result::Ok(())
        })?;
        self.loaded = ops >= self.keys.num;
        if self.loaded {
            // Untimed: the database whose closed size is the on-disk size of the whole key set.
            self.ensure_compacted()?;
        }
        Ok(measurement(workload, ops, secs, &latency, 0))
    }

    /// `num` gets of uniformly random present keys, one thread.
    fn read_random(&mut self) -> Result<Measurement> {
        self.ensure_compacted()?;
        let db = self.db()?;
        let (keys, value_size) = (&self.keys, self.args.value_size);
        // Thread 0's stream in cairn-bench's readrandom.
        let mut rng = Rng::new(READ_SEED ^ (1 << 32));
        let mut key = Vec::with_capacity(keys.key_size);
        let mut latency = Histogram::default();
        let mut wrong = 0u64;
        let start = Instant::now();
        for _ in 0..keys.num {
            let i = rng.below(keys.num);
            keys.key(i, &mut key);
            let t = Instant::now();
            let found = db.get(keys.bucket(i), &key)?;
            latency.record(t.elapsed().as_nanos() as u64);
            wrong += u64::from(found != Some(value_size));
        }
        let secs = start.elapsed().as_secs_f64();
        report_wrong(self.kind, Workload::ReadRandom, wrong);
        Ok(measurement(Workload::ReadRandom, keys.num, secs, &latency, wrong))
    }

    /// One full scan in key order; ops are rows. Checks that row n is key n with a full-size value.
    fn read_seq(&mut self) -> Result<Measurement> {
        self.ensure_compacted()?;
        let db = self.db()?;
        let (keys, value_size) = (&self.keys, self.args.value_size);
        let mut expected = Vec::with_capacity(keys.key_size);
        let (mut seen, mut wrong) = (0u64, 0u64);
        let start = Instant::now();
        let rows = db.scan_all(&mut |key, value| {
            keys.key(seen, &mut expected);
            wrong += u64::from(seen >= keys.num || key != expected.as_slice() || value.len() != value_size);
            seen += 1;
        })?;
        let secs = start.elapsed().as_secs_f64();
        wrong += keys.num.abs_diff(rows);
        report_wrong(self.kind, Workload::ReadSeq, wrong);
        Ok(measurement(Workload::ReadSeq, rows, secs, &Histogram::default(), wrong))
    }
}

/// Bytes the files under `dir` occupy on disk (allocated 512-byte blocks), so that sparse preallocated
/// files count for what they use rather than their length.
fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn report_wrong(kind: Kind, workload: Workload, wrong: u64) {
    if wrong > 0 {
        eprintln!("cairn-compare: {}: {}: {wrong} wrong results (engine bug?)", kind.name(), workload.name());
    }
}
