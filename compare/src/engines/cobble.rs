//! cobble with its defaults, except the write-ahead log: one `Db` owning all 1024 buckets, values in
//! column 0.
//!
//! Three things differ from the other engines and are printed with the results:
//! - cobble's WAL is off by default. Every workload here is "WAL on", so the adapter turns it on (the
//!   single volume also takes the WAL). Its WAL is group-committed: a background publisher writes the
//!   buffered entries as a new segment file, fsyncs and renames it, at the latest every
//!   `wal_flush_interval_ms` (5 ms). Non-sync writes do not await that (`await_durable = false`, like a
//!   write that reached the OS but not the disk); sync writes do (`await_durable = true`, the default),
//!   so one synced writer waits up to one flush interval per write.
//! - cobble has no call to flush or compact on demand. `snapshot()` flushes the memtable; the adapter
//!   then waits for background compaction to go quiet (no file in the directory changes for a while).
//! - cobble scans one bucket at a time, so the full scan visits buckets 0..1024 in turn.

use super::{Engine, Result, TOTAL_BUCKETS, err};
use ::cobble::{Config, Db, VolumeDescriptor, VolumeUsageKind, WriteOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const NOTES: &[&str] = &[
    "Config::default (64 MiB block cache, no bloom filter, lz4 only from L2) + WAL on (off by default)",
    "non-sync writes don't await the WAL (await_durable=false; published+fsynced within 5 ms); sync writes await it",
    "no on-demand flush/compaction: snapshot() flushes, then background compaction is awaited until quiet",
    "full scan = one scan per bucket, buckets 0..1024 in order",
];

/// How often the directory is listed while waiting for background compaction.
const QUIET_POLL: Duration = Duration::from_millis(500);
/// How long the directory must stay unchanged to count as quiet.
const QUIET_FOR: Duration = Duration::from_secs(3);
/// Give up waiting (and measure anyway) after this long.
const QUIET_MAX: Duration = Duration::from_secs(300);

struct Cobble {
    db: Db,
    dir: PathBuf,
    plain: WriteOptions,
    durable: WriteOptions,
}

pub fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let path = dir.to_str().ok_or_else(|| format!("cobble needs a UTF-8 path, got {}", dir.display()))?;
    let mut volume = VolumeDescriptor::new(
        format!("file://{path}"),
        vec![VolumeUsageKind::PrimaryDataPriorityHigh, VolumeUsageKind::Meta],
    );
    volume.set_usage(VolumeUsageKind::Wal);
    let config = Config {
        total_buckets: TOTAL_BUCKETS,
        volumes: vec![volume],
        wal_enabled: true,
        ..Config::default()
    };
    let max = (TOTAL_BUCKETS - 1) as u16;
    let db = Db::open(config, vec![0..=max]).map_err(err("cobble open"))?;
    let mut plain = WriteOptions::default();
    plain.await_durable = false;
    let mut durable = WriteOptions::default();
    durable.await_durable = true;
    Ok(Box::new(Cobble { db, dir: dir.to_path_buf(), plain, durable }))
}

/// Every file under `dir` with its size, sorted: two equal listings mean nothing was written.
fn listing(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => listing(&entry.path(), out),
            Ok(m) => out.push((entry.path(), m.len())),
            Err(_) => {}
        }
    }
}

fn sorted_listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    listing(dir, &mut files);
    files.sort();
    files
}

impl Engine for Cobble {
    fn put(&self, bucket: u16, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let options = if sync { &self.durable } else { &self.plain };
        self.db.put_with_options(bucket, key, 0, value, options).map_err(err("cobble put"))
    }

    fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<usize>> {
        let row = self.db.get(bucket, key).map_err(err("cobble get"))?;
        Ok(row.and_then(|columns| columns.into_iter().next().flatten().map(|v| v.len())))
    }

    fn scan_all(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut rows = 0;
        for bucket in 0..TOTAL_BUCKETS {
            let iter = self.db.scan_bounds(bucket as u16, None, None).map_err(err("cobble scan"))?;
            for item in iter {
                let (key, columns) = item.map_err(err("cobble scan"))?;
                let value = columns.first().and_then(Option::as_ref).map_or(&[][..], |v| &v[..]);
                visit(&key, value);
                rows += 1;
            }
        }
        Ok(rows)
    }

    fn flush_and_compact(&self) -> Result<()> {
        self.db.snapshot().map_err(err("cobble snapshot"))?;
        let start = Instant::now();
        let mut last = sorted_listing(&self.dir);
        let mut quiet_since = Instant::now();
        while start.elapsed() < QUIET_MAX {
            std::thread::sleep(QUIET_POLL);
            let now = sorted_listing(&self.dir);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= QUIET_FOR {
                return Ok(());
            }
        }
        eprintln!("cobble: background work still writing after {QUIET_MAX:?}; measuring anyway");
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.close().map_err(err("cobble close"))
    }
}
