//! Command line of `cairn-compare` (the parent) and of its children (the same options plus `--child`).

use crate::engines::{self, Kind};
use clap::Parser;
use std::path::PathBuf;

/// The workloads, in the default run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every key once in a shuffled order, one writer, WAL on, not synced.
    FillRandom,
    /// `num` gets of random present keys after full compaction, one reader.
    ReadRandom,
    /// One full scan in key order (ops are rows).
    ReadSeq,
    /// `--sync-num` durable (fsynced) writes by one writer.
    FillSync,
    /// `--sync-num` durable writes shared by 16 concurrent writers.
    FillSync16,
}

pub const ALL_WORKLOADS: &[Workload] = &[
    Workload::FillRandom,
    Workload::ReadRandom,
    Workload::ReadSeq,
    Workload::FillSync,
    Workload::FillSync16,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::FillRandom => "fillrandom",
            Workload::ReadRandom => "readrandom",
            Workload::ReadSeq => "readseq",
            Workload::FillSync => "fillsync",
            Workload::FillSync16 => "fillsync16",
        }
    }

    fn parse(name: &str) -> Result<Workload, String> {
        ALL_WORKLOADS.iter().copied().find(|w| w.name() == name).ok_or_else(|| {
            let known: Vec<&str> = ALL_WORKLOADS.iter().map(|w| w.name()).collect();
            format!("unknown workload {name:?}; known: {}", known.join(","))
        })
    }
}

/// Runs identical workloads against cairn-engine, RocksDB, fjall and cobble, each engine in its own child
/// process, and prints every engine's results and a cairn / other ratio table.
#[derive(Parser, Debug, Clone)]
#[command(name = "cairn-compare")]
pub struct Args {
    /// Comma-separated engines, in run order: cairn, rocksdb, rocksdb-tuned, fjall, cobble. Ratios are
    /// against cairn, so include it.
    #[arg(long, value_delimiter = ',', value_parser = Kind::parse,
          default_values_t = engines::ALL.to_vec())]
    pub engines: Vec<Kind>,
    /// Comma-separated workloads, in run order: fillrandom, readrandom, readseq, fillsync, fillsync16.
    #[arg(long, value_delimiter = ',', value_parser = Workload::parse,
          default_values_t = ALL_WORKLOADS.to_vec())]
    pub workloads: Vec<Workload>,
    /// Number of keys (fillrandom writes each once; readrandom reads this many).
    #[arg(long, default_value_t = 1_000_000)]
    pub num: u64,
    /// Durable writes done by fillsync and (in total, over its 16 writers) by fillsync16.
    #[arg(long, default_value_t = 20_000)]
    pub sync_num: u64,
    /// Key size in bytes (the key index, zero-padded decimal, as in cairn-bench).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Times to run the whole set (engines × workloads); every run is printed. The machine is noisy.
    #[arg(long, default_value_t = 2)]
    pub runs: u32,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Directory for the databases. Default: a fresh directory under the system temp dir, deleted at
    /// the end. A given directory is kept (each engine's databases are removed when it is done).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Internal: run as the child process for this engine, printing JSON lines.
    #[arg(long, hide = true, value_parser = Kind::parse)]
    pub child: Option<Kind>,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Args {
    /// Rejects impossible sizes before any child starts.
    pub fn validate(&self) -> Result<(), String> {
        cairn_bench::data::KeySpace::new(self.num, self.key_size, engines::TOTAL_BUCKETS)?;
        if self.value_size == 0 {
            return Err("--value-size must be positive".into());
        }
        if self.sync_num == 0 {
            return Err("--sync-num must be positive".into());
        }
        if self.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        if self.engines.is_empty() || self.workloads.is_empty() {
            return Err("--engines and --workloads must name at least one each".into());
        }
        Ok(())
    }

    /// The options a child for `kind` is started with: the workload options, its own directory.
    pub fn child_args(&self, kind: Kind, dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        let list = |names: Vec<&str>| names.join(",");
        let mut out: Vec<std::ffi::OsString> = vec![
            "--child".into(),
            kind.name().into(),
            "--workloads".into(),
            list(self.workloads.iter().map(|w| w.name()).collect()).into(),
            "--num".into(),
            self.num.to_string().into(),
            "--sync-num".into(),
            self.sync_num.to_string().into(),
            "--key-size".into(),
            self.key_size.to_string().into(),
            "--value-size".into(),
            self.value_size.to_string().into(),
            "--dir".into(),
        ];
        out.push(dir.as_os_str().to_owned());
        out
    }
}
