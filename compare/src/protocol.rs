//! What a child process reports to its parent: one JSON object per line on stdout.

use serde::{Deserialize, Serialize};

/// One line of a child's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Workload(Measurement),
    Facts(Facts),
}

/// The outcome of one workload on one engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub workload: String,
    /// Operations done (rows visited, for readseq).
    pub ops: u64,
    pub secs: f64,
    pub ops_per_sec: f64,
    /// Per-operation latency percentiles in microseconds (0 for readseq, which is timed as a whole).
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Reads that returned something other than what was written (an engine bug if not 0).
    pub wrong: u64,
}

/// End-of-process facts of one engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Facts {
    /// Bytes the database directory takes on disk (allocated blocks) once every key was written, the
    /// engine fully compacted and the database closed.
    pub size_after_compaction_bytes: Option<u64>,
    /// The same directory's apparent size (sum of file lengths): larger where an engine preallocates
    /// sparse files (fjall's 64 MiB journal).
    pub apparent_size_bytes: Option<u64>,
    /// The workload whose database that size was measured on (`fillrandom`, or `load` for reads alone).
    pub size_measured_after: Option<String>,
    /// Peak resident set size of the child process (`VmHWM`).
    pub peak_rss_bytes: u64,
}

impl Message {
    /// The line a child prints.
    pub fn to_line(&self) -> String {
        // Serializing these plain structs cannot fail; an empty object would be ignored by the parent.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}
