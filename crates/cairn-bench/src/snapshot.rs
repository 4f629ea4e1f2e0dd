//! `cairn-bench snapshot`: the cost of shard snapshots, global snapshots and restore.
//!
//! For each data size (`--mb`, e.g. `100,1000`) it loads one shard with random keys and compacts it
//! (untimed) and measures, on the same volume as the shard: `snapshot()` (flush + links), `shard_snapshot_input`
//! (computes the content digest once by reading the whole snapshot), take + materialize of a global
//! snapshot, and `open_from_snapshot` into a fresh directory. Then, on a separate volume (an in-memory
//! one, so every byte it receives is a copy): a full first materialize, 1% of the keys overwritten, and
//! the bytes the incremental materialize copies.

use cairn_bench::data::{KeySpace, ValueSource};
use cairn_bench::rng::Rng;
use cairn_engine::{
    Config, CoordinatorConfig, Db, DbCoordinator, Volume, VolumeRole, WriteBatch, WriteOptions,
};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

const TOTAL_BUCKETS: u32 = 1024;

#[derive(Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// Data sizes to measure, in MB of user data (keys + values), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100u64, 1000])]
    pub mb: Vec<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Fraction of keys overwritten before the incremental snapshot, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// Work directory (default: a fresh temp dir, deleted at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The separate volume for the incremental-copy and remote-restore figures (default: an in-memory
    /// volume). An `s3://bucket/prefix?endpoint=...` URL needs a build with `--features s3` and
    /// credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`; each size uses its own sub-prefix.
    #[arg(long)]
    pub remote: Option<String>,
}

/// `url` with `name` appended to its path (before any `?options`).
fn sub_volume(url: &str, name: &str) -> String {
    let (location, options) = url.split_once('?').map_or((url, None), |(l, o)| (l, Some(o)));
    let mut out = format!("{}/{name}", location.trim_end_matches('/'));
    if let Some(options) = options {
        out.push('?');
        out.push_str(options);
    }
    out
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs every size and prints one block of facts per size.
pub fn run(args: &SnapshotArgs) -> Result<(), String> {
    if args.value_size == 0 || args.mb.is_empty() || !(0.0..=100.0).contains(&args.change_percent) {
        return Err("need --value-size > 0, at least one --mb, --change-percent in 0..=100".into());
    }
    let (root, _temp) = cairn_bench::run::work_root(args.dir.as_deref(), "cairn-bench-snapshot-")?;
    for (n, &mb) in args.mb.iter().enumerate() {
        run_size(args, &root.join(format!("size-{n}")), mb).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run_size(args: &SnapshotArgs, root: &std::path::Path, mb: u64) -> Result<(), cairn_engine::Error> {
    let key_size = 16;
    let num = (mb << 20) / (args.value_size + key_size) as u64;
    let keys = KeySpace::new(num, key_size, TOTAL_BUCKETS).map_err(cairn_engine::Error::InvalidArgument)?;
    let values = ValueSource::new(args.value_size);
    let mut config = Config::new(root.join("db"));
    config.total_buckets = TOTAL_BUCKETS;
    let db = Db::open(config.clone(), vec![0..=(TOTAL_BUCKETS - 1) as u16])?;
    let mut order: Vec<u64> = (0..num).collect();
    Rng::new(7).shuffle(&mut order);
    let load = Instant::now();
    let mut key = Vec::new();
    for (chunk_no, chunk) in order.chunks(1000).enumerate() {
        let mut batch = WriteBatch::new();
        for (i, &k) in chunk.iter().enumerate() {
            keys.key(k, &mut key);
            batch.put(keys.bucket(k), &key, 0, values.value((chunk_no * 1000 + i) as u64));
        }
        db.write(batch, WriteOptions::default())?;
    }
    // Settle the tree (a steady state, not a load still compacting): otherwise the incremental copy
    // measures whatever background compaction rewrote between the two snapshots.
    db.compact()?;
    let load_secs = load.elapsed().as_secs_f64();

    // Same volume: the shard's default snapshot volume, shared with the coordinator.
    let local = config.snapshot_volume_url()?;
    let coord =
        DbCoordinator::open(CoordinatorConfig::new(vec![Volume::new(local.clone(), VolumeRole::Meta)]))?;
    let t = Instant::now();
    let snap = db.snapshot()?;
    let snapshot_ms = ms(t);
    let t = Instant::now();
    let input = db.shard_snapshot_input(snap)?;
    let digest_ms = ms(t);
    let t = Instant::now();
    let global = coord.take_global_snapshot(TOTAL_BUCKETS, vec![input.clone()])?;
    let stats = coord.materialize_global_snapshot(&global)?;
    let materialize_ms = ms(t);
    let t = Instant::now();
    let mut restore_config = config.clone();
    restore_config.dir = root.join("restored");
    restore_config.snapshot_volume = Some(local);
    let restored = Db::open_from_snapshot(restore_config, snap, db.id())?;
    let restore_ms = ms(t);
    drop(restored);

    // A separate volume: the first materialize copies everything, the next only what changed.
    let run_name = format!("cairn-bench-{}-{mb}", std::process::id());
    let remote = match &args.remote {
        Some(url) => sub_volume(url, &run_name),
        None => format!("memory://{run_name}"),
    };
    let rcoord =
        DbCoordinator::open(CoordinatorConfig::new(vec![Volume::new(remote.clone(), VolumeRole::Meta)]))?;
    let t = Instant::now();
    let full = rcoord
        .materialize_global_snapshot(&rcoord.take_global_snapshot(TOTAL_BUCKETS, vec![input.clone()])?)?;
    let full_ms = ms(t);
    let changed = ((num as f64) * args.change_percent / 100.0) as u64;
    let mut rng = Rng::new(11);
    for chunk in 0..changed.div_ceil(1000) {
        let mut batch = WriteBatch::new();
        for i in 0..1000.min(changed - chunk * 1000) {
            let k = rng.below(num);
            keys.key(k, &mut key);
            batch.put(keys.bucket(k), &key, 0, values.value(i + 7));
        }
        db.write(batch, WriteOptions::default())?;
    }
    let memtable_bytes = db.metrics().memtable_bytes;
    let t = Instant::now();
    let snap2 = db.snapshot()?;
    let snapshot2_ms = ms(t);
    let input2 = db.shard_snapshot_input(snap2)?;
    let t = Instant::now();
    let incr = rcoord
        .materialize_global_snapshot(&rcoord.take_global_snapshot(TOTAL_BUCKETS, vec![input2.clone()])?)?;
    let incr_ms = ms(t);
    // Restore from the separate volume: every file comes back over the wire.
    let mut remote_config = config.clone();
    remote_config.dir = root.join("restored-remote");
    remote_config.snapshot_volume = Some(rcoord.snapshot_volume().url.clone());
    let t = Instant::now();
    let fetched = Db::restore_from_snapshot(&remote_config, snap2, &db.id())?;
    let remote_restore_ms = ms(t);

    println!(
        "snapshot, {mb} MB of user data ({num} keys x {} B values, loaded and compacted in {load_secs:.1} s)",
        args.value_size
    );
    println!("  on-disk size                     {:>12} B in {} files", input.size_bytes, input.files);
    println!("  snapshot()                       {snapshot_ms:>12.2} ms");
    println!(
        "  take + materialize (same volume) {materialize_ms:>12.2} ms   bytes copied {}",
        stats.bytes_copied
    );
    println!("  snapshot() + materialize         {:>12.2} ms", snapshot_ms + materialize_ms);
    println!("  shard_snapshot_input (digest)    {digest_ms:>12.2} ms   ({} rows)", input.rows);
    println!("  open_from_snapshot               {restore_ms:>12.2} ms");
    println!("  snapshot() flushing {memtable_bytes} B of memtable: {snapshot2_ms:.2} ms");
    println!("  separate volume                  {}", rcoord.snapshot_volume().url);
    println!("  separate volume, first copy      {:>12} B in {full_ms:.1} ms", full.bytes_copied);
    println!(
        "  separate volume, after {:.1}% changed: {} B copied of {} B ({:.2}%) in {incr_ms:.1} ms",
        args.change_percent,
        incr.bytes_copied,
        input2.size_bytes,
        100.0 * incr.bytes_copied as f64 / input2.size_bytes.max(1) as f64
    );
    println!(
        "  restore from separate volume     {remote_restore_ms:>12.1} ms   {} B fetched in {} files",
        fetched.bytes_copied, fetched.files
    );
    db.close()?;
    Ok(())
}
