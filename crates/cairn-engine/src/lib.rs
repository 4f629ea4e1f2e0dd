//! cairn-engine: an embeddable LSM storage engine whose shards own ranges of a fixed bucket space.
//!
//! A [`Db`] is one shard. It owns some ranges of a fixed bucket space (`0..total_buckets`, buckets are
//! `u16`) and stores rows: a row is addressed by `(bucket, key)` and maps column numbers to values.
//! Writes go through a write-ahead log with group commit and are durable against a process crash when
//! acknowledged (against power loss with [`WriteOptions::sync`]).
//!
//! ```
//! use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
//! # let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(Config::new(dir.path()), vec![0..=1023])?;
//! db.put(7, b"user:1", 0, b"ada")?;
//! let mut batch = WriteBatch::new();
//! batch.put(7, b"user:2", 0, b"grace");
//! batch.put(900, b"user:3", 0, b"barbara");
//! db.write(batch, WriteOptions { sync: true })?;
//! assert_eq!(db.get(7, b"user:1")?.unwrap().column(0), Some(&b"ada"[..]));
//! let rows: Vec<_> = db.scan(7, ..)?.collect::<Result<_, _>>()?;
//! assert_eq!(rows.len(), 2);
//! db.close()?;
//! # Ok::<(), cairn_engine::Error>(())
//! ```

mod batch;
mod block_cache;
mod bucket;
pub mod bulk;
pub mod coding;
mod commit;
mod compaction;
mod compaction_filter;
pub mod compaction_picker;
mod config;
mod coordinator;
mod db;
mod db_iter;
mod error;
mod flush;
pub mod fs;
mod iter;
mod keys;
mod level_iter;
pub mod log;
mod memtable;
mod merging_iter;
mod metrics;
mod read;
mod read_only;
mod recovery;
mod rescale;
mod row;
mod single;
mod snapshot;
pub mod sst;
mod table_cache;
mod version;
mod version_edit;
mod version_set;
mod view;
mod volume;

pub use batch::WriteBatch;
pub use bucket::{BucketRange, BucketSet, MAX_TOTAL_BUCKETS};
pub use compaction_filter::{CompactionContext, CompactionFilter, CompactionFilterFactory, FilterDecision};
pub use config::{Config, NUM_LEVELS};
pub use coordinator::{
    CoordinatorConfig, DbCoordinator, GlobalSnapshotManifest, MaterializeStats, VerifyReport,
};
pub use db::{Db, WriteOptions};
pub use db_iter::DbIter;
pub use error::{Error, Result};
pub use keys::MAX_KEY_BYTES;
pub use metrics::MetricsSnapshot;
pub use read_only::{ReadOnlyDb, Reader};
pub use rescale::{CLAIM_PREFIX, CompactionHold, ExpandStats, RELEASE_FILE};
pub use row::{Row, RowRef};
pub use single::SingleDb;
pub use snapshot::{
    ContentDigest, LOCAL_KEY_PREFIX, RESTORE_MARKER, RestoreStats, ShardSnapshotInput, new_db_id,
    snapshot_dir,
};
pub use sst::Compression;
pub use view::View;
pub use volume::{ResolvedVolume, Volume, VolumeRole, forget_memory_volumes, resolve as resolve_volume};
