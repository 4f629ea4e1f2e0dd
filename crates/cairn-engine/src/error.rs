//! The engine's one error type. Callers tell cases apart by variant: `Corruption` is distinct from `Io`,
//! `NotOwned` and `InvalidArgument` are the caller's mistakes, `Poisoned` means the Db stopped accepting
//! writes after a failed write or sync and must be reopened.

use std::path::PathBuf;

/// Every fallible engine operation returns this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system failed an I/O call on `path`.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's bytes are not what the engine wrote: bad checksum, bad magic, impossible length, etc.
    #[error("corruption in {}: {detail}", file.display())]
    Corruption { file: PathBuf, detail: String },
    /// The bucket is outside the ranges this shard owns.
    #[error("bucket {bucket} is not owned by this shard")]
    NotOwned { bucket: u16 },
    /// The caller passed something the engine cannot accept (too large a key, a bad range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `Config::validate` rejected the configuration.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A write or sync failed earlier; the Db no longer accepts writes. Reopen to recover from the WAL.
    #[error("database is poisoned by an earlier failure ({0}); reopen it to recover")]
    Poisoned(String),
    /// The Db was closed.
    #[error("database is closed")]
    Closed,
    /// No complete shard snapshot `snapshot_id` of shard `db_id` on the volume.
    #[error("shard snapshot {db_id}/{snapshot_id} not found on volume {volume}")]
    SnapshotNotFound { db_id: String, snapshot_id: u64, volume: String },
    /// No global snapshot `id` on the coordinator's meta volume.
    #[error("global snapshot {id} not found on volume {volume}")]
    GlobalSnapshotNotFound { id: u64, volume: String },
    /// The coordinator's volumes hold no global snapshot yet.
    #[error("no global snapshot has been materialized yet")]
    NoGlobalSnapshot,
    /// A file a manifest references is missing.
    #[error("missing file {}, referenced by its manifest", path.display())]
    MissingFile { path: PathBuf },
    /// Another process (or another `Db` in this one) holds the directory lock.
    #[error("database directory {} is locked by another instance", .0.display())]
    Locked(PathBuf),
}

/// Shorthand used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an OS error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    /// A corruption report naming the file.
    pub fn corruption(file: impl Into<PathBuf>, detail: impl Into<String>) -> Error {
        Error::Corruption { file: file.into(), detail: detail.into() }
    }

    /// True for corruption reports.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
