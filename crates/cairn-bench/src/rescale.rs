//! `cairn-bench rescale`: the cost of moving a bucket range between two shards.
//!
//! For each data size (`--mb`, the user data per shard) it loads shard A (buckets 0..=511) and shard B
//! (512..=1023) with random keys and compacts both (untimed), then moves 342..=511 from A to B the
//! seed's way: `A.shrink_bucket` (pre-shrink snapshot, ownership change) then `B.expand_bucket` (import
//! by link). It reports:
//! - the handoff pause: from the start of the shrink (the moved buckets stop being served by A) to the
//!   end of the expand (B serves them): the time they serve neither side;
//! - the bytes copied during the handoff (0 on one volume: every file is linked);
//! - the time until background compaction has rewritten every file that still holds released (hidden)
//!   entries, and A's and B's on-disk sizes before and after.

use cairn_bench::data::{KeySpace, ValueSource};
use cairn_bench::rng::Rng;
use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOTAL_BUCKETS: u32 = 1024;
/// How long to wait for compaction to reclaim released data before giving up (reported, not an error).
const RECLAIM_LIMIT: Duration = Duration::from_secs(600);

#[derive(Args, Debug, Clone)]
pub struct RescaleArgs {
    /// Shard sizes to measure, in MB of user data (keys + values) per shard, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100u64, 1000])]
    pub mb: Vec<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Work directory (default: a fresh temp dir, deleted at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &RescaleArgs) -> Result<(), String> {
    if args.value_size == 0 || args.mb.is_empty() {
        return Err("need --value-size > 0 and at least one --mb".into());
    }
    let (root, _temp) = cairn_bench::run::work_root(args.dir.as_deref(), "cairn-bench-rescale-")?;
    for (n, &mb) in args.mb.iter().enumerate() {
        run_size(args, &root.join(format!("size-{n}")), mb).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn size(db: &Db) -> u64 {
    db.metrics().level_bytes.iter().sum()
}

/// Loads `db` with `num` random keys of its buckets and compacts it.
fn load(
    db: &Db,
    keys: &KeySpace,
    values: &ValueSource,
    num: u64,
    seed: u64,
) -> Result<(), cairn_engine::Error> {
    let owned = db.owned_buckets();
    let mut order: Vec<u64> = (0..num * 2).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut key = Vec::new();
    let mut batch = WriteBatch::new();
    let mut written = 0u64;
    for &k in &order {
        let bucket = keys.bucket(k);
        if !owned.iter().any(|r| r.contains(&bucket)) {
            continue;
        }
        keys.key(k, &mut key);
        batch.put(bucket, &key, 0, values.value(k));
        written += 1;
        if batch.len() >= 1000 {
            db.write(std::mem::take(&mut batch), WriteOptions::default())?;
        }
        if written == num {
            break;
        }
    }
    db.write(batch, WriteOptions::default())?;
    db.compact()
}

fn run_size(args: &RescaleArgs, root: &Path, mb: u64) -> Result<(), cairn_engine::Error> {
    let key_size = 16;
    let num = (mb << 20) / (args.value_size + key_size) as u64;
    // Keys of both shards come from one key space twice as large; each shard keeps its own buckets.
    let keys =
        KeySpace::new(num * 2, key_size, TOTAL_BUCKETS).map_err(cairn_engine::Error::InvalidArgument)?;
    let values = ValueSource::new(args.value_size);
    let config = |name: &str| {
        let mut c = Config::new(root.join(name));
        c.total_buckets = TOTAL_BUCKETS;
        c.snapshot_volume = Some(format!("file://{}", root.join("snapshots").display()));
        c
    };
    let a = Db::open(config("a"), vec![0..=511])?;
    let b = Db::open(config("b"), vec![512..=1023])?;
    let t = Instant::now();
    load(&a, &keys, &values, num, 7)?;
    load(&b, &keys, &values, num, 8)?;
    let load_secs = t.elapsed().as_secs_f64();
    let (a_before, b_before) = (size(&a), size(&b));
    let files_before = a.metrics().level_files.iter().sum::<usize>();

    let start = Instant::now();
    let snap = a.shrink_bucket(vec![342..=511])?;
    let shrunk = start.elapsed();
    let stats = b.expand_bucket(&a.id(), snap, vec![342..=511])?;
    let pause = start.elapsed();

    // Reclamation: background compaction rewrites the filtered files of both shards.
    let t = Instant::now();
    let mut reclaimed = None;
    while t.elapsed() < RECLAIM_LIMIT {
        if a.metrics().filtered_files == 0 && b.metrics().filtered_files == 0 {
            reclaimed = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (a_after, b_after) = (size(&a), size(&b));

    println!(
        "rescale, {mb} MB of user data per shard ({num} keys x {} B values each, loaded and compacted in \
         {load_secs:.1} s)",
        args.value_size
    );
    println!("  A on disk                        {a_before:>12} B in {files_before} files");
    println!("  shrink_bucket (A gives 342..=511) {:>11.2} ms", ms(shrunk));
    println!("  expand_bucket (B takes them)     {:>12.2} ms", ms(pause - shrunk));
    println!("  handoff pause (shrink + expand)  {:>12.2} ms", ms(pause));
    println!(
        "  bytes copied during the handoff  {:>12} B   ({} files imported by link)",
        stats.bytes_copied, stats.files_imported
    );
    match reclaimed {
        Some(d) => println!("  released data reclaimed after    {:>12.1} ms (background compaction)", ms(d)),
        None => println!("  released data not reclaimed within {} s", RECLAIM_LIMIT.as_secs()),
    }
    println!("  A on disk: {a_before} B -> {a_after} B;  B on disk: {b_before} B -> {b_after} B");
    a.close()?;
    b.close()?;
    Ok(())
}
