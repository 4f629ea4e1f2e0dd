//! Engine configuration. Every option documents its default; [`Config::validate`] rejects nonsense with a
//! message naming the option.

use crate::compaction_filter::CompactionFilterFactory;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::sst::{Compression, TableOptions};
use std::path::PathBuf;
use std::sync::Arc;

/// Number of LSM levels, L0 through L6.
pub const NUM_LEVELS: usize = 7;
/// Hard ceiling on a single value, whatever the config says.
pub const MAX_VALUE_BYTES_LIMIT: usize = 256 << 20;

/// Options for one shard `Db`.
#[derive(Clone)]
pub struct Config {
    /// Directory holding the shard's WAL, manifest and SST files. No default: required.
    pub dir: PathBuf,
    /// The file system every I/O call goes through. Default: [`StdFs`], the local file system.
    pub fs: Arc<dyn FileSystem>,
    /// Size of the fixed bucket space: buckets are `0..total_buckets`. Default: 1024.
    pub total_buckets: u32,
    /// Write-ahead log on. Default: true. Turning it off loses unflushed writes on a crash; only for
    /// shards whose writes are replayed from elsewhere (a Raft log).
    pub wal: bool,
    /// Bytes a memtable holds before it is rotated and flushed. Default: 32 MiB.
    pub memtable_bytes: usize,
    /// Immutable memtables allowed to wait for flush before writers stall. Default: 2.
    pub max_immutable_memtables: usize,
    /// Block cache capacity in bytes (decompressed blocks). Default: 128 MiB.
    pub block_cache_bytes: u64,
    /// Open SST readers kept in the table cache. Default: 1000.
    pub table_cache_files: usize,
    /// Uncompressed data block size target. Default: 4096.
    pub block_bytes: usize,
    /// Entries between restart points in a data block. Default: 8 (a point read scans at most 8 entries
    /// after its binary search; 16 reads ~5% slower for ~1% less space).
    pub block_restart_interval: usize,
    /// Bloom filter bits per key; 0 turns filters off. Default: 10 (~1% false positives).
    pub bloom_bits_per_key: u32,
    /// Block compression. Default: lz4.
    pub compression: Compression,
    /// L0 files that trigger a compaction. Default: 4.
    pub l0_compaction_trigger: usize,
    /// L0 files at which writers stall until compaction catches up. Default: 20.
    pub l0_stop_writes_trigger: usize,
    /// Target size of the base level (the first non-empty level below L0). Default: 64 MiB.
    pub level_base_bytes: u64,
    /// Growth factor between levels. Default: 10.
    pub level_multiplier: u64,
    /// Target size of a compaction output file. Default: 32 MiB.
    pub target_file_bytes: u64,
    /// Largest value accepted in a write. Default: 16 MiB (at most 256 MiB).
    pub max_value_bytes: usize,
    /// Largest encoded write batch. Default: 64 MiB.
    pub max_batch_bytes: usize,
    /// Most bytes the group-commit leader gathers into one WAL write. Default: 4 MiB.
    pub max_group_commit_bytes: usize,
    /// Called during compaction to drop rows (e.g. MVCC versions below a GC horizon). Default: none.
    pub compaction_filter: Option<Arc<dyn CompactionFilterFactory>>,
    /// URL of the volume shard snapshots go to (`file:///abs/path` or `memory://name`); shards that
    /// restore from or import each other's snapshots share one. `file://` volumes use `fs`. Default:
    /// `file://<dir>/snapshots` (on the shard's own file system, so snapshots are hard links).
    pub snapshot_volume: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dir", &self.dir)
            .field("total_buckets", &self.total_buckets)
            .field("wal", &self.wal)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("compression", &self.compression)
            .field("snapshot_volume", &self.snapshot_volume)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for a shard stored in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            fs: Arc::new(StdFs),
            total_buckets: 1024,
            wal: true,
            memtable_bytes: 32 << 20,
            max_immutable_memtables: 2,
            block_cache_bytes: 128 << 20,
            table_cache_files: 1000,
            block_bytes: 4096,
            block_restart_interval: 8,
            bloom_bits_per_key: 10,
            compression: Compression::Lz4,
            l0_compaction_trigger: 4,
            l0_stop_writes_trigger: 20,
            level_base_bytes: 64 << 20,
            level_multiplier: 10,
            target_file_bytes: 32 << 20,
            max_value_bytes: 16 << 20,
            max_batch_bytes: 64 << 20,
            max_group_commit_bytes: 4 << 20,
            compaction_filter: None,
            snapshot_volume: None,
        }
    }

    /// The snapshot volume's URL: `snapshot_volume`, or `file://<dir>/snapshots` (made absolute).
    pub fn snapshot_volume_url(&self) -> Result<String> {
        if let Some(url) = &self.snapshot_volume {
            return Ok(url.clone());
        }
        let dir = std::path::absolute(&self.dir)
            .map_err(|e| Error::InvalidConfig(format!("cannot make {} absolute: {e}", self.dir.display())))?;
        Ok(crate::volume::Volume::file_url(&dir.join("snapshots")))
    }

    /// The snapshot volume, resolved.
    pub(crate) fn resolve_snapshot_volume(&self) -> Result<crate::volume::ResolvedVolume> {
        crate::volume::resolve(&self.snapshot_volume_url()?, &self.fs)
    }

    /// Same config over another file system.
    pub fn with_fs(mut self, fs: Arc<dyn FileSystem>) -> Config {
        self.fs = fs;
        self
    }

    /// Checks every option; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.dir.as_os_str().is_empty() {
            return bad("dir must not be empty".into());
        }
        if self.total_buckets == 0 || self.total_buckets > crate::bucket::MAX_TOTAL_BUCKETS {
            return bad(format!("total_buckets must be in 1..=65536, got {}", self.total_buckets));
        }
        if self.memtable_bytes < 64 << 10 {
            return bad(format!("memtable_bytes must be at least 64 KiB, got {}", self.memtable_bytes));
        }
        if self.max_immutable_memtables == 0 || self.max_immutable_memtables > 16 {
            return bad(format!(
                "max_immutable_memtables must be in 1..=16, got {}",
                self.max_immutable_memtables
            ));
        }
        if !(256..=(4 << 20)).contains(&self.block_bytes) {
            return bad(format!("block_bytes must be in 256..=4 MiB, got {}", self.block_bytes));
        }
        if !(1..=1024).contains(&self.block_restart_interval) {
            return bad(format!(
                "block_restart_interval must be in 1..=1024, got {}",
                self.block_restart_interval
            ));
        }
        if self.bloom_bits_per_key > 64 {
            return bad(format!("bloom_bits_per_key must be at most 64, got {}", self.bloom_bits_per_key));
        }
        if self.table_cache_files < 16 {
            return bad(format!("table_cache_files must be at least 16, got {}", self.table_cache_files));
        }
        if self.l0_compaction_trigger < 2 || self.l0_stop_writes_trigger <= self.l0_compaction_trigger {
            return bad(format!(
                "need 2 <= l0_compaction_trigger ({}) < l0_stop_writes_trigger ({})",
                self.l0_compaction_trigger, self.l0_stop_writes_trigger
            ));
        }
        if self.level_multiplier < 2 || self.level_multiplier > 100 {
            return bad(format!("level_multiplier must be in 2..=100, got {}", self.level_multiplier));
        }
        if self.level_base_bytes < 64 << 10 {
            return bad(format!("level_base_bytes must be at least 64 KiB, got {}", self.level_base_bytes));
        }
        if self.target_file_bytes < 64 << 10 {
            return bad(format!("target_file_bytes must be at least 64 KiB, got {}", self.target_file_bytes));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return bad(format!("max_value_bytes must be in 1..=256 MiB, got {}", self.max_value_bytes));
        }
        if self.max_batch_bytes < self.max_value_bytes {
            return bad(format!(
                "max_batch_bytes ({}) must be at least max_value_bytes ({})",
                self.max_batch_bytes, self.max_value_bytes
            ));
        }
        if self.max_batch_bytes > crate::log::MAX_RECORD_BYTES {
            return bad(format!(
                "max_batch_bytes must be at most {} (a WAL record's limit), got {}",
                crate::log::MAX_RECORD_BYTES,
                self.max_batch_bytes
            ));
        }
        if self.max_group_commit_bytes == 0 {
            return bad("max_group_commit_bytes must be positive".into());
        }
        if let Some(url) = &self.snapshot_volume {
            crate::volume::resolve(url, &self.fs)
                .map_err(|e| Error::InvalidConfig(format!("snapshot_volume: {e}")))?;
        }
        #[cfg(not(feature = "zstd"))]
        if matches!(self.compression, Compression::Zstd) {
            return bad("compression zstd needs the engine built with the `zstd` feature".into());
        }
        Ok(())
    }

    /// The SST writer options this config implies.
    pub fn table_options(&self) -> TableOptions {
        TableOptions {
            block_bytes: self.block_bytes,
            restart_interval: self.block_restart_interval,
            bloom_bits_per_key: self.bloom_bits_per_key,
            compression: self.compression,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_nonsense_is_named() {
        Config::new("/db").validate().unwrap();
        let mut c = Config::new("/db");
        c.total_buckets = 0;
        assert!(c.validate().unwrap_err().to_string().contains("total_buckets"));
        let mut c = Config::new("/db");
        c.l0_stop_writes_trigger = 3;
        assert!(c.validate().unwrap_err().to_string().contains("l0_compaction_trigger"));
    }
}
