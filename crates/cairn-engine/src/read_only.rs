//! Read-only access to snapshots: [`ReadOnlyDb`] serves one shard snapshot (from any process, while the
//! shard's writer goes on: snapshot files are immutable links), and [`Reader`] serves the newest global
//! snapshot of a coordinator, routing each bucket to the shard snapshot that owns it.

use crate::bucket::BucketRange;
use crate::config::Config;
use crate::coordinator::{CoordinatorConfig, DbCoordinator, GlobalSnapshotManifest};
use crate::db::DbInner;
use crate::db_iter::DbIter;
use crate::error::{Error, Result};
use crate::row::Row;
use crate::snapshot::{ContentDigest, load_verified_snapshot};
use crate::view::View;
use crate::volume::{ResolvedVolume, resolve};
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

/// One shard snapshot opened read-only.
pub struct ReadOnlyDb {
    inner: Arc<DbInner>,
    view: View,
    db_id: String,
    snapshot_id: u64,
}

impl std::fmt::Debug for ReadOnlyDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyDb")
            .field("db_id", &self.db_id)
            .field("snapshot_id", &self.snapshot_id)
            .finish_non_exhaustive()
    }
}

impl ReadOnlyDb {
    /// Opens snapshot `snapshot_id` of shard `db_id` on `config`'s snapshot volume. `config` supplies the
    /// file system, the caches and `total_buckets` (which must match the snapshot's).
    pub fn open(config: &Config, db_id: &str, snapshot_id: u64) -> Result<ReadOnlyDb> {
        let volume = config.resolve_snapshot_volume()?;
        ReadOnlyDb::open_on(config, &volume, db_id, snapshot_id)
    }

    /// Opens snapshot `snapshot_id` of shard `db_id` on the volume at `volume_url`.
    pub fn open_at(config: &Config, volume_url: &str, db_id: &str, snapshot_id: u64) -> Result<ReadOnlyDb> {
        let volume = resolve(volume_url, &config.fs)?;
        ReadOnlyDb::open_on(config, &volume, db_id, snapshot_id)
    }

    pub(crate) fn open_on(
        config: &Config,
        volume: &ResolvedVolume,
        db_id: &str,
        snapshot_id: u64,
    ) -> Result<ReadOnlyDb> {
        let (dir, _) = load_verified_snapshot(volume, db_id, snapshot_id, config.total_buckets)?;
        ReadOnlyDb::open_dir(config, volume, &dir)
    }

    /// Opens the complete snapshot directory `dir` on `volume`.
    pub(crate) fn open_dir(config: &Config, volume: &ResolvedVolume, dir: &Path) -> Result<ReadOnlyDb> {
        let mut ro_config = config.clone();
        ro_config.dir = dir.to_path_buf();
        ro_config.fs = Arc::clone(&volume.fs);
        let inner = Arc::new(crate::recovery::open_read_only_inner(ro_config)?);
        let view = View::new(Arc::clone(&inner));
        let state = inner.versions.lock().state().clone();
        let snapshot_id = state.snapshot.map_or(0, |(id, _)| id);
        Ok(ReadOnlyDb { view, inner, db_id: state.db_id, snapshot_id })
    }

    /// The shard the snapshot belongs to.
    pub fn db_id(&self) -> &str {
        &self.db_id
    }

    /// The snapshot's id.
    pub fn snapshot_id(&self) -> u64 {
        self.snapshot_id
    }

    /// The snapshot's sequence number.
    pub fn sequence(&self) -> u64 {
        self.view.sequence()
    }

    /// The buckets the shard owned at the snapshot.
    pub fn owned_buckets(&self) -> Vec<BucketRange> {
        self.inner.state.lock().owned.ranges().to_vec()
    }

    /// The row `key` in `bucket`.
    pub fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<Row>> {
        self.view.get(bucket, key)
    }

    /// Several rows; results in the order of `keys`.
    pub fn multi_get(&self, keys: &[(u16, &[u8])]) -> Result<Vec<Option<Row>>> {
        keys.iter().map(|(b, k)| self.view.get(*b, k)).collect()
    }

    /// Rows of `bucket` with keys in `range`, in key order.
    pub fn scan<'a>(&self, bucket: u16, range: impl RangeBounds<&'a [u8]>) -> Result<DbIter> {
        self.view.scan(bucket, range)
    }

    /// Every row of `buckets`, in (bucket, key) order.
    pub fn scan_buckets(&self, buckets: BucketRange) -> Result<DbIter> {
        self.view.scan_buckets(buckets)
    }

    /// Hashes every live row (see [`ContentDigest`]).
    pub fn content_digest(&self) -> Result<ContentDigest> {
        self.view.content_digest()
    }
}

/// Follows the newest global snapshot of a coordinator: reads go to the shard snapshot owning the
/// bucket, and [`Reader::refresh`] moves to a newer global snapshot when one was materialized.
pub struct Reader {
    config: Config,
    coordinator: CoordinatorConfig,
    manifest: GlobalSnapshotManifest,
    /// One per shard snapshot, sorted by first bucket.
    shards: Vec<(Vec<BucketRange>, ReadOnlyDb)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("global_snapshot", &self.manifest.id).finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens the newest global snapshot the coordinator's volumes hold. `config` supplies caches and the
    /// file system for `file://` volumes.
    pub fn open(config: Config, coordinator: CoordinatorConfig) -> Result<Reader> {
        let manifest =
            DbCoordinator::current_global_snapshot_at(&coordinator)?.ok_or(Error::NoGlobalSnapshot)?;
        let shards = Reader::open_shards(&config, &coordinator, &manifest)?;
        Ok(Reader { config, coordinator, manifest, shards })
    }

    fn open_shards(
        config: &Config,
        coordinator: &CoordinatorConfig,
        manifest: &GlobalSnapshotManifest,
    ) -> Result<Vec<(Vec<BucketRange>, ReadOnlyDb)>> {
        let volume = coordinator.snapshot_volume()?;
        let mut shards = Vec::with_capacity(manifest.shard_snapshots.len());
        for s in &manifest.shard_snapshots {
            let mut cfg = config.clone();
            cfg.total_buckets = manifest.total_buckets;
            let ro = ReadOnlyDb::open_on(&cfg, &volume, &s.db_id, s.snapshot_id)?;
            shards.push((s.bucket_ranges.clone(), ro));
        }
        Ok(shards)
    }

    /// The global snapshot being served.
    pub fn global_snapshot(&self) -> &GlobalSnapshotManifest {
        &self.manifest
    }

    /// Moves to the newest global snapshot if it is newer than the one served; true if it moved.
    pub fn refresh(&mut self) -> Result<bool> {
        let Some(newest) = DbCoordinator::current_global_snapshot_at(&self.coordinator)? else {
            return Ok(false);
        };
        if newest.id <= self.manifest.id {
            return Ok(false);
        }
        self.shards = Reader::open_shards(&self.config, &self.coordinator, &newest)?;
        self.manifest = newest;
        Ok(true)
    }

    fn shard(&self, bucket: u16) -> Result<&ReadOnlyDb> {
        self.shards
            .iter()
            .find(|(ranges, _)| ranges.iter().any(|r| r.contains(&bucket)))
            .map(|(_, ro)| ro)
            .ok_or(Error::NotOwned { bucket })
    }

    /// The row `key` in `bucket`, as of the global snapshot.
    pub fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<Row>> {
        self.shard(bucket)?.get(bucket, key)
    }

    /// Rows of `bucket` with keys in `range`, as of the global snapshot.
    pub fn scan<'a>(&self, bucket: u16, range: impl RangeBounds<&'a [u8]>) -> Result<DbIter> {
        self.shard(bucket)?.scan(bucket, range)
    }
}
