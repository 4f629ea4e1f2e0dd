//! Options of `cairn-bench engine`.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Every workload, in the default run order. Fills that need a fresh Db get one; reads load and
/// compact one first if the current Db does not hold every key.
pub const ALL_WORKLOADS: &[&str] = &[
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom",
    "readmissing",
    "readseq",
    "seekrandom",
    "readwhilewriting",
    "fillsync",
    "fillsync16",
];

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Number of keys.
    #[arg(long, default_value_t = 1_000_000)]
    pub num: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key size in bytes (the key index, zero-padded decimal).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Worker threads of fillrandom, overwrite, readrandom, readmissing, seekrandom and fillsync (the
    /// readers of readwhilewriting, beside its one writer). fillseq and readseq are single-threaded;
    /// fillsync16 always uses 16.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Comma-separated workloads to run, in order.
    #[arg(long, value_delimiter = ',', default_values_t = ALL_WORKLOADS.iter().map(|s| s.to_string()))]
    pub benchmarks: Vec<String>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Writes done by fillsync/fillsync16 (each is an fsync; this bounds their time).
    #[arg(long, default_value_t = 10_000)]
    pub sync_num: u64,
    /// Block cache size in MiB.
    #[arg(long, default_value_t = 128)]
    pub cache_mb: u64,
    /// Bloom filter bits per key (0 disables filters).
    #[arg(long, default_value_t = 10)]
    pub bloom_bits: u32,
    /// Entries between restart points in data blocks (the engine's default is 8).
    #[arg(long, default_value_t = 8)]
    pub restart_interval: usize,
    /// Block compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Lz4)]
    pub compression: CompressionArg,
    /// Directory for the databases (one `db-N` per fresh Db; the last one is kept). Default: a fresh
    /// directory under the system temp dir, deleted at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    Lz4,
    None,
}

impl EngineArgs {
    /// Rejects unknown workload names and impossible sizes before any work starts.
    pub fn validate(&self) -> Result<(), String> {
        for b in &self.benchmarks {
            if !ALL_WORKLOADS.contains(&b.as_str()) {
                return Err(format!("unknown benchmark {b:?}; known: {}", ALL_WORKLOADS.join(",")));
            }
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.value_size == 0 {
            return Err("--value-size must be positive".into());
        }
        if self.sync_num == 0 {
            return Err("--sync-num must be positive".into());
        }
        Ok(())
    }
}
