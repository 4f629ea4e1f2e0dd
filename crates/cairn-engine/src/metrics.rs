//! Engine counters. Updated with relaxed atomics on the hot path; [`Metrics::snapshot`] reads them for
//! the layers above (Prometheus export lives in the server).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one Db.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) writes: AtomicU64,
    pub(crate) write_groups: AtomicU64,
    pub(crate) wal_bytes: AtomicU64,
    pub(crate) wal_syncs: AtomicU64,
    pub(crate) user_bytes_written: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_bytes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) trivial_moves: AtomicU64,
    pub(crate) compaction_bytes_read: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) stall_micros: AtomicU64,
}

/// A point-in-time copy of the counters plus gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Write operations committed.
    pub writes: u64,
    /// Commit groups (one WAL append each); `writes / write_groups` is the group-commit batching factor.
    pub write_groups: u64,
    /// Bytes appended to the WAL.
    pub wal_bytes: u64,
    /// WAL fsyncs.
    pub wal_syncs: u64,
    /// Encoded bytes of user writes (the denominator of write amplification).
    pub user_bytes_written: u64,
    /// Memtable flushes.
    pub flushes: u64,
    /// Bytes written by flushes.
    pub flush_bytes: u64,
    /// Compactions that rewrote data.
    pub compactions: u64,
    /// Compactions that only moved a file to another level.
    pub trivial_moves: u64,
    /// Bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Times a writer had to wait for flush or compaction.
    pub stalls: u64,
    /// Microseconds writers spent stalled.
    pub stall_micros: u64,
    /// Bytes in the active and immutable memtables.
    pub memtable_bytes: u64,
    /// Immutable memtables waiting for flush.
    pub immutable_memtables: u64,
    /// Files per level.
    pub level_files: Vec<usize>,
    /// Bytes per level.
    pub level_bytes: Vec<u64>,
    /// Files seen through a bucket filter (holding entries a shrink released or an import left out);
    /// compaction rewrites them when nothing else needs doing, so this falls to 0 after a rescale.
    pub filtered_files: u64,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses.
    pub block_cache_misses: u64,
}

impl MetricsSnapshot {
    /// (WAL + flush + compaction bytes written) / user bytes written.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes_written == 0 {
            return 0.0;
        }
        (self.wal_bytes + self.flush_bytes + self.compaction_bytes_written) as f64
            / self.user_bytes_written as f64
    }

    /// Total bytes in SST files.
    pub fn sst_bytes(&self) -> u64 {
        self.level_bytes.iter().sum()
    }

    /// Block cache hit ratio in [0, 1].
    pub fn block_cache_hit_ratio(&self) -> f64 {
        let total = self.block_cache_hits + self.block_cache_misses;
        if total == 0 { 0.0 } else { self.block_cache_hits as f64 / total as f64 }
    }
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            writes: g(&self.writes),
            write_groups: g(&self.write_groups),
            wal_bytes: g(&self.wal_bytes),
            wal_syncs: g(&self.wal_syncs),
            user_bytes_written: g(&self.user_bytes_written),
            flushes: g(&self.flushes),
            flush_bytes: g(&self.flush_bytes),
            compactions: g(&self.compactions),
            trivial_moves: g(&self.trivial_moves),
            compaction_bytes_read: g(&self.compaction_bytes_read),
            compaction_bytes_written: g(&self.compaction_bytes_written),
            stalls: g(&self.stalls),
            stall_micros: g(&self.stall_micros),
            ..MetricsSnapshot::default()
        }
    }
}
