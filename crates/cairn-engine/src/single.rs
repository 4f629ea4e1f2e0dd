//! `SingleDb`: one process, one shard owning every bucket, plus a coordinator on the shard's snapshot
//! volume, for applications that want snapshots and resume without running shards.

use crate::config::Config;
use crate::coordinator::{CoordinatorConfig, DbCoordinator, GlobalSnapshotManifest};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::volume::{Volume, VolumeRole};

/// A single-shard database with global snapshots. Derefs to [`Db`] for reads and writes.
#[derive(Debug)]
pub struct SingleDb {
    db: Db,
    coordinator: DbCoordinator,
}

fn coordinator_config(config: &Config, retention: Option<usize>) -> Result<CoordinatorConfig> {
    let url = config.resolve_snapshot_volume()?.url;
    Ok(CoordinatorConfig {
        volumes: vec![Volume::new(url.clone(), VolumeRole::Meta), Volume::new(url, VolumeRole::Snapshot)],
        snapshot_retention: retention,
        fs: config.fs.clone(),
    })
}

fn all_buckets(config: &Config) -> Result<Vec<crate::BucketRange>> {
    let last = u16::try_from(config.total_buckets.saturating_sub(1))
        .map_err(|_| Error::InvalidConfig(format!("total_buckets {} out of range", config.total_buckets)))?;
    Ok(vec![0..=last])
}

impl SingleDb {
    /// Opens (or creates) the database in `config.dir`, keeping every global snapshot.
    pub fn open(config: Config) -> Result<SingleDb> {
        SingleDb::open_with_retention(config, None)
    }

    /// Opens (or creates) the database, keeping the newest `retention` global snapshots.
    pub fn open_with_retention(config: Config, retention: Option<usize>) -> Result<SingleDb> {
        config.validate()?;
        let coordinator = DbCoordinator::open(coordinator_config(&config, retention)?)?;
        let db = Db::open(config.clone(), all_buckets(&config)?)?;
        Ok(SingleDb { db, coordinator })
    }

    /// Takes a shard snapshot and materializes it as a new global snapshot; returns its manifest.
    pub fn snapshot(&self) -> Result<GlobalSnapshotManifest> {
        let id = self.db.snapshot()?;
        let input = self.db.shard_snapshot_input(id)?;
        let manifest =
            self.coordinator.take_global_snapshot(self.db.inner.config.total_buckets, vec![input])?;
        self.coordinator.materialize_global_snapshot(&manifest)?;
        Ok(manifest)
    }

    /// Opens `config.dir` from global snapshot `global_snapshot_id` found on `config`'s snapshot volume
    /// (which must be the volume the snapshot was taken to). The directory must not hold another shard.
    pub fn resume(config: Config, global_snapshot_id: u64) -> Result<SingleDb> {
        config.validate()?;
        let coordinator = DbCoordinator::open(coordinator_config(&config, None)?)?;
        let manifest = coordinator.load_global_snapshot(global_snapshot_id)?;
        let [shard] = manifest.shard_snapshots.as_slice() else {
            return Err(Error::InvalidArgument(format!(
                "global snapshot {global_snapshot_id} has {} shards; SingleDb resumes from exactly one",
                manifest.shard_snapshots.len()
            )));
        };
        let db = Db::open_from_snapshot(config, shard.snapshot_id, shard.db_id.clone())?;
        Ok(SingleDb { db, coordinator })
    }

    /// The coordinator (listing, loading and garbage collection of global snapshots).
    pub fn coordinator(&self) -> &DbCoordinator {
        &self.coordinator
    }

    /// Closes the shard.
    pub fn close(self) -> Result<()> {
        self.db.close()
    }
}

impl std::ops::Deref for SingleDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}
