//! `DbCoordinator`: assembles shard snapshots into global snapshots, makes them durable, loads them back,
//! and garbage-collects what no retained global snapshot needs.
//!
//! Layout on the meta volume: `global/NNNNNNNNNNNNNNNNNNNN.json`, one checksummed JSON manifest per
//! global snapshot, written to a temporary name, synced and renamed, so a crash leaves the previous
//! global snapshots intact and never a partial one. The newest complete manifest is the current global
//! snapshot. Shard snapshots live on the snapshot volume as `<db_id>/<snapshot_id>/` (see `snapshot.rs`).
//!
//! Stronger than the seed's coordinator: `take_global_snapshot` checks that the shard snapshots cover
//! `0..total_buckets` exactly once, and materializing first makes every shard snapshot complete on the
//! snapshot volume (copying only files it lacks) before the global manifest names it.

use crate::bucket::MAX_TOTAL_BUCKETS;
use crate::error::{Error, Result};
use crate::fs::{FileLock, FileSystem, StdFs};
use crate::snapshot::{
    ShardSnapshotInput, check_db_id, copy_snapshot, load_snapshot, load_verified_snapshot, now_ms,
};
use crate::version_set::CURRENT;
use crate::volume::{self, ResolvedVolume, Volume, VolumeRole, resolve};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Directory of global snapshot manifests on the meta volume.
const GLOBAL_DIR: &str = "global";
/// Shard snapshots (db id, snapshot id) that global snapshots reference.
type Referenced = HashSet<(String, u64)>;

/// The file in [`GLOBAL_DIR`] a running coordinator's heartbeats rewrite.
const HEARTBEAT: &str = "HEARTBEAT";
/// The suffix of the marker a deleted global snapshot leaves in [`GLOBAL_DIR`].
const DELETED: &str = ".deleted";
/// The file at a volume's root naming what it holds ([`DbCoordinator::claim`]).
const PURPOSE: &str = "PURPOSE";

/// How a coordinator finds its volumes and how many global snapshots it keeps.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// A `Meta` volume for global manifests and a `Snapshot` volume for shard snapshots; one volume may
    /// serve both (give it twice, or only one: a lone volume plays both roles).
    pub volumes: Vec<Volume>,
    /// Keep the newest N global snapshots (and what they reference); `None` keeps all.
    pub snapshot_retention: Option<usize>,
    /// File system for `file://` volumes. Default: the real one.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for CoordinatorConfig {
    fn default() -> CoordinatorConfig {
        CoordinatorConfig { volumes: Vec::new(), snapshot_retention: None, fs: Arc::new(StdFs) }
    }
}

impl CoordinatorConfig {
    /// A config over `volumes`, keeping every global snapshot.
    pub fn new(volumes: Vec<Volume>) -> CoordinatorConfig {
        CoordinatorConfig { volumes, ..CoordinatorConfig::default() }
    }

    fn volume(&self, role: VolumeRole) -> Result<ResolvedVolume> {
        let pick = self.volumes.iter().find(|v| v.role == role).or_else(|| {
            self.volumes.iter().find(|v| matches!(v.role, VolumeRole::Meta | VolumeRole::Snapshot))
        });
        let v = pick.ok_or_else(|| {
            Error::InvalidConfig("the coordinator needs a meta or snapshot volume".to_string())
        })?;
        resolve(&v.url, &self.fs)
    }

    /// The volume holding global manifests.
    pub fn meta_volume(&self) -> Result<ResolvedVolume> {
        self.volume(VolumeRole::Meta)
    }

    /// The volume holding shard snapshots.
    pub fn snapshot_volume(&self) -> Result<ResolvedVolume> {
        self.volume(VolumeRole::Snapshot)
    }

    fn validate(&self) -> Result<()> {
        if self.snapshot_retention == Some(0) {
            return Err(Error::InvalidConfig("snapshot_retention must keep at least 1".into()));
        }
        if let Some(v) = self.volumes.iter().find(|v| v.role == VolumeRole::Data) {
            return Err(Error::InvalidConfig(format!("a coordinator has no data volume (got {})", v.url)));
        }
        Ok(())
    }
}

/// A global snapshot: shard snapshots that together cover the bucket space exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalSnapshotManifest {
    /// Increasing, never reused by one coordinator.
    pub id: u64,
    /// Size of the bucket space.
    pub total_buckets: u32,
    /// When it was assembled, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// One per shard, sorted by first bucket.
    pub shard_snapshots: Vec<ShardSnapshotInput>,
    /// What the caller records with it (a backup's timestamp, the cluster it came from); set between
    /// [`DbCoordinator::take_global_snapshot`] and materializing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What [`DbCoordinator::verify_global_snapshot_at`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Shard snapshots checked.
    pub shards: u64,
    /// Files found with their recorded sizes.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Rows read back, whose digests all matched the manifest's.
    pub rows: u64,
}

/// What materializing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaterializeStats {
    /// Bytes copied onto the snapshot volume (0 when the shard snapshots already live there).
    pub bytes_copied: u64,
    /// Global snapshots deleted by retention.
    pub global_snapshots_removed: u64,
    /// Shard snapshots deleted by garbage collection.
    pub shard_snapshots_removed: u64,
    /// Set if retention or garbage collection failed after the global snapshot became durable. The
    /// snapshot is materialized all the same; the leftovers are collected by the next run.
    pub gc_error: Option<String>,
}

/// The coordinator. One per meta volume at a time (it holds a lock there).
///
/// ```
/// use cairn_engine::{Config, CoordinatorConfig, Db, DbCoordinator, Volume, VolumeRole};
/// # let tmp = tempfile::tempdir().unwrap();
/// let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
/// let shard = |name: &str| {
///     let mut c = Config::new(tmp.path().join(name));
///     c.snapshot_volume = Some(snapvol.clone());
///     c
/// };
/// let db1 = Db::open(shard("db1"), vec![0..=499])?;
/// let db2 = Db::open(shard("db2"), vec![500..=1023])?;
/// db1.put(100, b"key-a", 0, b"value-a")?;
/// db2.put(700, b"key-b", 0, b"value-b")?;
///
/// let coord = DbCoordinator::open(CoordinatorConfig::new(vec![Volume::new(&snapvol, VolumeRole::Meta)]))?;
/// let inputs = vec![db1.shard_snapshot_input(db1.snapshot()?)?, db2.shard_snapshot_input(db2.snapshot()?)?];
/// let global = coord.take_global_snapshot(1024, inputs)?;
/// coord.materialize_global_snapshot(&global)?;
///
/// // Restore: coordinator first, then each shard.
/// let s1 = &coord.load_global_snapshot(global.id)?.shard_snapshots[0];
/// let restored = Db::open_from_snapshot(shard("restored1"), s1.snapshot_id, s1.db_id.clone())?;
/// assert_eq!(restored.get(100, b"key-a")?.unwrap().column(0), Some(&b"value-a"[..]));
/// # Ok::<(), cairn_engine::Error>(())
/// ```
pub struct DbCoordinator {
    config: CoordinatorConfig,
    meta: ResolvedVolume,
    snapshots: ResolvedVolume,
    next_id: Mutex<u64>,
    _lock: Box<dyn FileLock>,
}

impl std::fmt::Debug for DbCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCoordinator")
            .field("meta", &self.meta.url)
            .field("snapshots", &self.snapshots.url)
            .finish_non_exhaustive()
    }
}

fn global_dir(meta: &ResolvedVolume) -> PathBuf {
    meta.root.join(GLOBAL_DIR)
}

fn global_path(meta: &ResolvedVolume, id: u64) -> PathBuf {
    global_dir(meta).join(format!("{id:020}.json"))
}

/// The id the next global snapshot on `meta` gets: past every manifest's, and every deleted one's (a
/// deletion leaves `NNN.deleted`), so ids are never reused.
fn next_id(meta: &ResolvedVolume) -> Result<u64> {
    let dir = global_dir(meta);
    let last = meta
        .fs
        .list(&dir)?
        .iter()
        .filter_map(|n| {
            n.strip_suffix(".json").or_else(|| n.strip_suffix(DELETED)).and_then(|id| id.parse::<u64>().ok())
        })
        .max();
    Ok(last.map_or(1, |id| id + 1))
}

/// Ids of the complete global manifests on `meta`, ascending.
fn list_ids(meta: &ResolvedVolume) -> Result<Vec<u64>> {
    let dir = global_dir(meta);
    if !meta.fs.exists(&dir)? {
        return Ok(Vec::new());
    }
    let mut ids: Vec<u64> = meta
        .fs
        .list(&dir)?
        .iter()
        .filter_map(|n| n.strip_suffix(".json").and_then(|id| id.parse().ok()))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn current(meta: &ResolvedVolume) -> Result<Option<GlobalSnapshotManifest>> {
    match list_ids(meta)?.last() {
        Some(&id) => load(meta, id).map(Some),
        None => Ok(None),
    }
}

fn load(meta: &ResolvedVolume, id: u64) -> Result<GlobalSnapshotManifest> {
    let path = global_path(meta, id);
    if !meta.fs.exists(&path)? {
        return Err(Error::GlobalSnapshotNotFound { id, volume: meta.url.clone() });
    }
    let manifest: GlobalSnapshotManifest = volume::decode_checked_json(&path, &meta.fs.read_all(&path)?)?;
    if manifest.id != id {
        return Err(Error::corruption(&path, format!("file holds global snapshot {}", manifest.id)));
    }
    Ok(manifest)
}

/// Checks that `inputs` cover `0..total_buckets` exactly once and agree on `total_buckets`.
fn check_coverage(total_buckets: u32, inputs: &[ShardSnapshotInput]) -> Result<()> {
    if total_buckets == 0 || total_buckets > MAX_TOTAL_BUCKETS {
        return Err(Error::InvalidArgument(format!("total_buckets must be in 1..={MAX_TOTAL_BUCKETS}")));
    }
    let mut owner: Vec<Option<usize>> = vec![None; total_buckets as usize];
    let mut ids = HashSet::new();
    for (i, input) in inputs.iter().enumerate() {
        check_db_id(&input.db_id)?;
        if !ids.insert(input.db_id.as_str()) {
            return Err(Error::InvalidArgument(format!("shard {} appears twice", input.db_id)));
        }
        if input.total_buckets != total_buckets {
            return Err(Error::InvalidArgument(format!(
                "shard {} snapshot {} has total_buckets {}, the global snapshot {total_buckets}",
                input.db_id, input.snapshot_id, input.total_buckets
            )));
        }
        for r in &input.bucket_ranges {
            for b in *r.start()..=*r.end() {
                let slot = owner.get_mut(usize::from(b)).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "shard {} owns bucket {b}, outside 0..{total_buckets}",
                        input.db_id
                    ))
                })?;
                if let Some(other) = slot {
                    return Err(Error::InvalidArgument(format!(
                        "bucket {b} is covered twice: by shard {} and by shard {}",
                        inputs[*other].db_id, input.db_id
                    )));
                }
                *slot = Some(i);
            }
        }
    }
    if let Some(b) = owner.iter().position(Option::is_none) {
        return Err(Error::InvalidArgument(format!("bucket {b} is covered by no shard snapshot")));
    }
    Ok(())
}

impl DbCoordinator {
    /// Opens the coordinator over its volumes, creating the layout if needed.
    pub fn open(config: CoordinatorConfig) -> Result<DbCoordinator> {
        config.validate()?;
        let meta = config.meta_volume()?;
        let snapshots = config.snapshot_volume()?;
        let dir = global_dir(&meta);
        meta.fs.create_dir_all(&dir)?;
        snapshots.fs.create_dir_all(&snapshots.root)?;
        let lock = meta.fs.lock(&dir.join("LOCK"))?;
        // A crash during materialize can leave a temporary manifest: it was never visible; drop it.
        volume::remove_tmp_files(meta.fs.as_ref(), &dir)?;
        let next = next_id(&meta)?;
        Ok(DbCoordinator { config, meta, snapshots, next_id: Mutex::new(next), _lock: lock })
    }

    /// Assembles a global snapshot from shard snapshot inputs. Rejects inputs that do not cover
    /// `0..total_buckets` exactly once or disagree on `total_buckets`. Nothing is durable until
    /// [`DbCoordinator::materialize_global_snapshot`].
    pub fn take_global_snapshot(
        &self,
        total_buckets: u32,
        mut inputs: Vec<ShardSnapshotInput>,
    ) -> Result<GlobalSnapshotManifest> {
        check_coverage(total_buckets, &inputs)?;
        inputs.sort_by_key(|i| i.bucket_ranges.iter().map(|r| *r.start()).min());
        let mut next = self.next_id.lock();
        let id = *next;
        *next += 1;
        Ok(GlobalSnapshotManifest {
            id,
            total_buckets,
            created_at_ms: now_ms(),
            shard_snapshots: inputs,
            labels: BTreeMap::new(),
        })
    }

    /// Makes `manifest` durable: every shard snapshot is made complete on the snapshot volume (copying
    /// only files it lacks), then the manifest is written atomically. A crash at any point leaves the
    /// previous global snapshots as they were and this one absent. Then applies retention and collects
    /// garbage.
    pub fn materialize_global_snapshot(&self, manifest: &GlobalSnapshotManifest) -> Result<MaterializeStats> {
        check_coverage(manifest.total_buckets, &manifest.shard_snapshots)?;
        let path = global_path(&self.meta, manifest.id);
        if self.meta.fs.exists(&path)? {
            return Err(Error::InvalidArgument(format!("global snapshot {} already exists", manifest.id)));
        }
        let mut stats = MaterializeStats::default();
        let mut stored = manifest.clone();
        for input in &mut stored.shard_snapshots {
            let from = resolve(&input.volume, &self.config.fs)?;
            if !from.same_as(&self.snapshots) {
                stats.bytes_copied += copy_snapshot(
                    &from,
                    &self.snapshots,
                    &input.db_id,
                    input.snapshot_id,
                    &crate::bulk::UNPACED,
                )?;
                input.volume = self.snapshots.url.clone();
            }
            load_verified_snapshot(&self.snapshots, &input.db_id, input.snapshot_id, manifest.total_buckets)?;
        }
        volume::write_atomic(self.meta.fs.as_ref(), &path, &volume::encode_checked_json(&stored)?)?;
        // From here on the global snapshot exists: a failure to clean up is reported, not returned.
        if let Err(e) = self.apply_retention(&mut stats) {
            stats.gc_error = Some(e.to_string());
        }
        Ok(stats)
    }

    fn apply_retention(&self, stats: &mut MaterializeStats) -> Result<()> {
        if let Some(keep) = self.config.snapshot_retention {
            let ids = list_ids(&self.meta)?;
            for &old in ids.iter().take(ids.len().saturating_sub(keep)) {
                self.meta.fs.remove(&global_path(&self.meta, old))?;
                stats.global_snapshots_removed += 1;
            }
            self.meta.fs.sync_dir(&global_dir(&self.meta))?;
        }
        stats.shard_snapshots_removed = self.collect_garbage()?;
        Ok(())
    }

    /// Loads global snapshot `id`.
    pub fn load_global_snapshot(&self, id: u64) -> Result<GlobalSnapshotManifest> {
        load(&self.meta, id)
    }

    /// Ids of the durable global snapshots, oldest first.
    pub fn list_global_snapshots(&self) -> Result<Vec<u64>> {
        list_ids(&self.meta)
    }

    /// The newest durable global snapshot, if any.
    pub fn current_global_snapshot(&self) -> Result<Option<GlobalSnapshotManifest>> {
        current(&self.meta)
    }

    /// Same as [`DbCoordinator::current_global_snapshot`] without holding the coordinator lock (readers).
    pub fn current_global_snapshot_at(config: &CoordinatorConfig) -> Result<Option<GlobalSnapshotManifest>> {
        current(&config.meta_volume()?)
    }

    /// Ids of the durable global snapshots on `config`'s meta volume, oldest first, without the lock
    /// (a reader beside a running coordinator: a manifest is either complete or absent).
    pub fn list_global_snapshots_at(config: &CoordinatorConfig) -> Result<Vec<u64>> {
        list_ids(&config.meta_volume()?)
    }

    /// Global snapshot `id` on `config`'s meta volume, without the lock.
    pub fn load_global_snapshot_at(config: &CoordinatorConfig, id: u64) -> Result<GlobalSnapshotManifest> {
        load(&config.meta_volume()?, id)
    }

    /// Claims the volume for `purpose` (such as `cairn backups`): a volume that says so already, or
    /// holds nothing but this coordinator's own layout, is marked and accepted; one that holds other
    /// files (a shard's data or snapshots, another tool's) is refused, so that
    /// [`DbCoordinator::collect_unreferenced`] never deletes what is not its own.
    pub fn claim(&self, purpose: &str) -> Result<()> {
        let fs = self.meta.fs.as_ref();
        let marker = self.meta.root.join(PURPOSE);
        if fs.exists(&marker)? {
            let held = fs.read_all(&marker)?;
            if held == purpose.as_bytes() {
                return Ok(());
            }
            return Err(Error::InvalidArgument(format!(
                "{} holds {}, not {purpose}",
                self.meta.url,
                String::from_utf8_lossy(&held)
            )));
        }
        let mut others = fs.list(&self.meta.root)?;
        others.retain(|n| n != GLOBAL_DIR);
        if let Some(other) = others.first() {
            return Err(Error::InvalidArgument(format!(
                "{} holds files that are not {purpose} (such as {other:?}): use an empty directory or prefix",
                self.meta.url
            )));
        }
        volume::write_atomic(fs, &marker, purpose.as_bytes())
    }

    /// Records that this coordinator is alive (`global/HEARTBEAT` on the meta volume holds the time):
    /// a long run calls it now and then, so that [`DbCoordinator::lock_idle_ms`] tells its lock from
    /// one a crashed coordinator left.
    pub fn heartbeat(&self) -> Result<()> {
        let path = global_dir(&self.meta).join(HEARTBEAT);
        volume::write_atomic(self.meta.fs.as_ref(), &path, now_ms().to_string().as_bytes())
    }

    /// How long ago the holder of the lock on `config`'s meta volume last showed it was alive (its
    /// newest [`DbCoordinator::heartbeat`], or the time the lock records it was taken); `None` if
    /// there is no lock or neither tells.
    pub fn lock_idle_ms(config: &CoordinatorConfig) -> Result<Option<u64>> {
        let meta = config.meta_volume()?;
        let dir = global_dir(&meta);
        if !meta.fs.exists(&dir.join("LOCK"))? {
            return Ok(None);
        }
        let read_ms = |name: &str, parse: fn(&str) -> Option<u64>| -> Result<Option<u64>> {
            let path = dir.join(name);
            if !meta.fs.exists(&path)? {
                return Ok(None);
            }
            Ok(parse(&String::from_utf8_lossy(&meta.fs.read_all(&path)?)))
        };
        let beat = read_ms(HEARTBEAT, |t| t.trim().parse().ok())?;
        // Object-storage locks read "pid N at MS ms since the epoch".
        let taken = read_ms("LOCK", |t| t.split(" at ").nth(1)?.split(' ').next()?.parse().ok())?;
        Ok(beat.max(taken).map(|at| now_ms().saturating_sub(at)))
    }

    /// Removes the lock a coordinator that is gone left on `config`'s meta volume (object storage keeps
    /// a lock object after its holder crashed; a file lock dies with its process). Only for a caller
    /// that knows no coordinator of that volume is running.
    pub fn break_lock(config: &CoordinatorConfig) -> Result<()> {
        let meta = config.meta_volume()?;
        let lock = global_dir(&meta).join("LOCK");
        if meta.fs.exists(&lock)? {
            meta.fs.remove(&lock)?;
        }
        Ok(())
    }

    /// Reads global snapshot `id` back, without the lock: every shard snapshot complete, every file
    /// present with its recorded size, and every shard's rows hashing to the digest the manifest
    /// records. A mismatch is a [`Error::Corruption`].
    pub fn verify_global_snapshot_at(config: &CoordinatorConfig, id: u64) -> Result<VerifyReport> {
        let meta = config.meta_volume()?;
        let manifest = load(&meta, id)?;
        check_coverage(manifest.total_buckets, &manifest.shard_snapshots)?;
        let mut report = VerifyReport::default();
        // Durable shard snapshots live on the snapshot volume (materializing put them there), whatever
        // URL reached it when they were taken.
        let volume = config.snapshot_volume()?;
        for s in &manifest.shard_snapshots {
            let (dir, loaded) =
                load_verified_snapshot(&volume, &s.db_id, s.snapshot_id, manifest.total_buckets)?;
            let files: Vec<_> = loaded.version.all_files().collect();
            let mut shard_config = crate::Config::new(dir.clone());
            shard_config.total_buckets = manifest.total_buckets;
            shard_config.fs = Arc::clone(&config.fs);
            let digest = crate::ReadOnlyDb::open_dir(&shard_config, &volume, &dir)?.content_digest()?;
            if !s.digest.is_empty() && (digest.to_hex() != s.digest || digest.rows != s.rows) {
                return Err(Error::corruption(
                    dir,
                    format!(
                        "shard snapshot {}/{} hashes to {} over {} rows, the manifest says {} over {}",
                        s.db_id,
                        s.snapshot_id,
                        digest.to_hex(),
                        digest.rows,
                        s.digest,
                        s.rows
                    ),
                ));
            }
            report.shards += 1;
            report.files += files.len() as u64;
            report.bytes += files.iter().map(|f| f.meta.size).sum::<u64>();
            report.rows += digest.rows;
        }
        Ok(report)
    }

    /// Deletes global snapshot `id`, then every shard snapshot no remaining one references (see
    /// [`DbCoordinator::collect_unreferenced`]). Returns how many shard snapshots went with it.
    pub fn delete_global_snapshot(&self, id: u64) -> Result<u64> {
        let path = global_path(&self.meta, id);
        if !self.meta.fs.exists(&path)? {
            return Err(Error::GlobalSnapshotNotFound { id, volume: self.meta.url.clone() });
        }
        // The newest id stays taken (see `next_id`); older markers are not needed.
        volume::write_atomic(
            self.meta.fs.as_ref(),
            &global_dir(&self.meta).join(format!("{id:020}{DELETED}")),
            b"",
        )?;
        self.meta.fs.remove(&path)?;
        self.meta.fs.sync_dir(&global_dir(&self.meta))?;
        self.collect_unreferenced()
    }

    /// Deletes every shard snapshot on the snapshot volume, complete or not, that no durable global
    /// snapshot references: what runs that never finished left (a crash, a failed upload). Unlike
    /// [`DbCoordinator::collect_garbage`] it spares nothing in flight, so it is only for a volume whose
    /// shard snapshots are all put there by this coordinator while it holds the lock (a backup
    /// destination), called before it adds any. Live shards' directories are never touched. Returns
    /// how many were deleted.
    pub fn collect_unreferenced(&self) -> Result<u64> {
        let (referenced, _) = self.referenced()?;
        self.sweep(&referenced, |_, _, _| Ok(true))
    }

    /// The shard snapshots the durable global snapshots reference, and when the oldest of those global
    /// snapshots was made (`None` if there is none).
    fn referenced(&self) -> Result<(Referenced, Option<u64>)> {
        let mut referenced = HashSet::new();
        let mut oldest = None;
        for id in list_ids(&self.meta)? {
            let m = load(&self.meta, id)?;
            oldest = Some(oldest.unwrap_or(u64::MAX).min(m.created_at_ms));
            for s in m.shard_snapshots {
                referenced.insert((s.db_id, s.snapshot_id));
            }
        }
        Ok((referenced, oldest))
    }

    /// Deletes each shard snapshot directory on the snapshot volume that `referenced` does not name and
    /// `doomed(dir, db_id, snapshot_id)` picks. Live shards' directories (a `CURRENT` of their own) and
    /// files that are not shard directories are left alone. Returns how many were deleted.
    fn sweep(
        &self,
        referenced: &Referenced,
        mut doomed: impl FnMut(&Path, &str, u64) -> Result<bool>,
    ) -> Result<u64> {
        let fs = self.snapshots.fs.as_ref();
        if !fs.exists(&self.snapshots.root)? {
            return Ok(0);
        }
        let mut removed = 0;
        for db_id in fs.list(&self.snapshots.root)? {
            let db_dir = self.snapshots.root.join(&db_id);
            if db_id == GLOBAL_DIR
                || db_id == PURPOSE
                || check_db_id(&db_id).is_err()
                || fs.exists(&db_dir.join(CURRENT))?
            {
                continue;
            }
            let Ok(names) = fs.list(&db_dir) else { continue };
            for name in names {
                let Ok(snapshot_id) = name.parse::<u64>() else { continue };
                let dir = db_dir.join(&name);
                if !referenced.contains(&(db_id.clone(), snapshot_id)) && doomed(&dir, &db_id, snapshot_id)? {
                    remove_snapshot_dir(fs, &dir)?;
                    removed += 1;
                }
            }
            fs.sync_dir(&db_dir)?;
        }
        Ok(removed)
    }

    /// The volume shard snapshots are kept on.
    pub fn snapshot_volume(&self) -> &ResolvedVolume {
        &self.snapshots
    }

    /// Deletes shard snapshots on the snapshot volume that no retained global snapshot references and
    /// that are older than the oldest retained global snapshot (newer ones may be about to join one: a
    /// shard snapshot in flight, or the pre-shrink snapshot of a rescale). Their files go with them
    /// unless something else links them: a live shard keeps its own links, so its data is never
    /// touched. Does nothing while no global snapshot exists. Returns how many were deleted.
    pub fn collect_garbage(&self) -> Result<u64> {
        let (referenced, oldest) = self.referenced()?;
        let Some(oldest) = oldest else { return Ok(0) };
        let fs = self.snapshots.fs.as_ref();
        self.sweep(&referenced, |dir, db_id, snapshot_id| {
            if !crate::snapshot::is_complete(fs, dir)? {
                return Ok(false);
            }
            let (_, loaded) = load_snapshot(&self.snapshots, db_id, snapshot_id)?;
            Ok(loaded.state.snapshot.map_or(u64::MAX, |(_, at)| at) < oldest)
        })
    }
}

/// Deletes a snapshot directory: `CURRENT` first (so a crash part way leaves an incomplete directory,
/// never a complete one missing files), then the rest.
pub(crate) fn remove_snapshot_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    if fs.exists(&dir.join(CURRENT))? {
        fs.remove(&dir.join(CURRENT))?;
    }
    fs.sync_dir(dir)?;
    volume::remove_dir_all(fs, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(db: &str, ranges: Vec<std::ops::RangeInclusive<u16>>) -> ShardSnapshotInput {
        ShardSnapshotInput {
            db_id: db.into(),
            snapshot_id: 1,
            total_buckets: 1000,
            bucket_ranges: ranges,
            volume: "memory://x".into(),
            manifest_path: String::new(),
            sequence: 0,
            files: 0,
            size_bytes: 0,
            rows: 0,
            digest: String::new(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn coverage_must_be_exactly_once() {
        let ok = [input("a", vec![0..=499]), input("b", vec![500..=999])];
        check_coverage(1000, &ok).unwrap();
        let gap = [input("a", vec![0..=498]), input("b", vec![500..=999])];
        assert!(check_coverage(1000, &gap).unwrap_err().to_string().contains("bucket 499 is covered by no"));
        let twice = [input("a", vec![0..=500]), input("b", vec![500..=999])];
        assert!(
            check_coverage(1000, &twice).unwrap_err().to_string().contains("bucket 500 is covered twice")
        );
        let outside = [input("a", vec![0..=1000])];
        assert!(check_coverage(1000, &outside).unwrap_err().to_string().contains("outside"));
        let dup = [input("a", vec![0..=499]), input("a", vec![500..=999])];
        assert!(check_coverage(1000, &dup).unwrap_err().to_string().contains("twice"));
        let mut other = input("b", vec![500..=999]);
        other.total_buckets = 2000;
        assert!(check_coverage(1000, &[input("a", vec![0..=499]), other]).is_err());
        assert!(check_coverage(0, &[]).is_err());
    }
}
