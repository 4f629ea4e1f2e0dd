//! The README's first command: opens a shard on a default data directory (`./cairn-data/quickstart`, or
//! `$CAIRN_DATA`), writes, reads, scans, reopens to show the writes survived, and prints engine counters.
//!
//! Run: `cargo run --release -p cairn-engine --example quickstart`

use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use std::path::PathBuf;

fn main() -> Result<(), cairn_engine::Error> {
    let dir =
        std::env::var_os("CAIRN_DATA").map_or_else(|| PathBuf::from("cairn-data/quickstart"), PathBuf::from);
    let config = Config::new(&dir);
    let buckets = vec![0..=1023];
    println!("cairn-engine quickstart: shard in {}", dir.display());

    let db = Db::open(config.clone(), buckets.clone())?;
    let run = db.get(0, b"meta:runs")?.and_then(|r| r.column(0).map(parse_u64)).unwrap_or(0) + 1;
    db.put(0, b"meta:runs", 0, run.to_string().as_bytes())?;

    // 10,000 rows across all 1024 buckets in atomic batches of 100, the last one synced to disk.
    let start = std::time::Instant::now();
    for chunk in 0..100u32 {
        let mut batch = WriteBatch::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            let bucket = (i % 1024) as u16;
            batch.put(bucket, format!("user:{i:05}").as_bytes(), 0, format!("name-{i}").as_bytes());
            batch.put(bucket, format!("user:{i:05}").as_bytes(), 1, format!("run-{run}").as_bytes());
        }
        db.write(batch, WriteOptions { sync: chunk == 99 })?;
    }
    println!("wrote 10000 rows (2 columns each) in {:?}", start.elapsed());

    let row = db.get(42, b"user:00042")?.ok_or_else(|| missing("user:00042"))?;
    println!(
        "get(bucket 42, user:00042) -> col0={:?} col1={:?}",
        String::from_utf8_lossy(row.column(0).unwrap_or_default()),
        String::from_utf8_lossy(row.column(1).unwrap_or_default())
    );
    db.delete_column(42, b"user:00042", 1)?;
    let in_bucket_7 = db.scan(7, ..)?.count();
    println!("scan(bucket 7) -> {in_bucket_7} rows");
    db.flush()?;
    db.close()?;

    // Reopen: everything acknowledged is still there.
    let db = Db::open(config, buckets)?;
    let rows = db.scan_buckets(0..=1023)?.collect::<Result<Vec<_>, _>>()?;
    println!("after reopen: {} rows in buckets 0..=1023 (run #{run})", rows.len());
    let m = db.metrics();
    println!(
        "files per level {:?}, {} bytes in SSTs, {} flushes, {} compactions",
        m.level_files,
        m.sst_bytes(),
        m.flushes,
        m.compactions
    );
    db.close()
}

fn parse_u64(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn missing(key: &str) -> cairn_engine::Error {
    cairn_engine::Error::InvalidArgument(format!("{key} should exist"))
}
