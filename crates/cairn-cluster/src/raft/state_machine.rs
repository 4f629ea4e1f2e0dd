//! A shard group's openraft state machine: the shard's engine `Db`, fed by [`ShardApplier`].
//!
//! A Raft snapshot is an engine shard snapshot (its files linked, not copied, on the shard's snapshot
//! volume) taken at the applied position, described by [`ShardSnapshotRef`]: where it lives and its
//! content digest. Installing one opens the shard from that snapshot in a fresh directory (the engine
//! restores by linking on one file system, or copies from another volume, fetching only what is missing)
//! and swaps it in. A replica registered with the node's `RaftService` first copies the snapshot's files
//! from the leader into its own staging volume (`Replica::stage_snapshot`), so the install reads local
//! files; otherwise (the simulation) the volume must be reachable by both sides. The replaced
//! generation's directory is left in place (its snapshots may still be read by others); removing old
//! generations is the next step, together with snapshot retention.

use super::apply::{ApplyError, CheckBoard, NodeLink, ShardApplier};
use super::{TypeConfig, io_err};
use cairn_engine::{Config, Db};
use futures_util::StreamExt;
use openraft::OptionalSend;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a Raft snapshot's engine snapshot lives, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSnapshotRef {
    /// The snapshot volume's URL.
    pub volume: String,
    /// The shard that took it.
    pub db_id: String,
    /// Its id within that shard.
    pub snapshot_id: u64,
    /// Content digest (32 hex digits): equal for replicas that applied the same entries. Empty for the
    /// first snapshot of a split's new shard (see `ShardStateMachine::open_split`).
    pub digest: String,
}

/// The shard's incarnation record (`INCARNATION`, JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IncarnationRecord {
    incarnation: u16,
    // The first generation of this incarnation (it started empty).
    generation: u64,
    // Where the group's other nodes were when this incarnation began (node id → address), so a
    // restarted replica that has not joined its group yet knows whom to ask.
    peers: std::collections::BTreeMap<u64, String>,
}

const INCARNATION_FILE: &str = "INCARNATION";

/// The file in a shard replica's directory that names the bucket its applied position (and its split,
/// freeze and check records) live in: the shard's first bucket, which never changes for a group (a
/// split moves the upper buckets away, a merge adds the right-hand shard's after it). Written when the
/// replica is first opened, so a node can reopen the replica of a shard the map no longer names (one
/// frozen for a merge while the node was down) without knowing its buckets.
const META_BUCKET_FILE: &str = "META_BUCKET";

/// The meta bucket stored in `root` (see [`META_BUCKET_FILE`]), storing `given` if none is.
fn stored_meta_bucket(
    fs: &dyn cairn_engine::fs::FileSystem,
    root: &std::path::Path,
    given: u16,
) -> cairn_engine::Result<u16> {
    let path = root.join(META_BUCKET_FILE);
    if fs.exists(&path)? {
        let bytes = fs.read_all(&path)?;
        return std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| cairn_engine::Error::corruption(path.clone(), "bad meta bucket"));
    }
    let tmp = root.join(format!("{META_BUCKET_FILE}.tmp"));
    let mut file = fs.create(&tmp)?;
    file.append(format!("{given}\n").as_bytes())?;
    file.sync()?;
    drop(file);
    fs.rename(&tmp, &path)?;
    fs.sync_dir(root)?;
    Ok(given)
}

fn read_incarnation(
    fs: &dyn cairn_engine::fs::FileSystem,
    root: &std::path::Path,
) -> cairn_engine::Result<IncarnationRecord> {
    let path = root.join(INCARNATION_FILE);
    if !fs.exists(&path)? {
        return Ok(IncarnationRecord::default());
    }
    let bytes = fs.read_all(&path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| cairn_engine::Error::corruption(path.clone(), format!("bad incarnation record: {e}")))
}

/// Replaces `INCARNATION` atomically and durably.
fn write_incarnation(
    fs: &dyn cairn_engine::fs::FileSystem,
    root: &std::path::Path,
    record: &IncarnationRecord,
) -> cairn_engine::Result<()> {
    let bytes =
        serde_json::to_vec(record).map_err(|e| cairn_engine::Error::InvalidArgument(e.to_string()))?;
    let tmp = root.join(format!("{INCARNATION_FILE}.tmp"));
    let mut file = fs.create(&tmp)?;
    file.append(&bytes)?;
    file.sync()?;
    drop(file);
    fs.rename(&tmp, &root.join(INCARNATION_FILE))?;
    fs.sync_dir(root)
}

/// Deletes `dir` and everything under it.
fn remove_tree(fs: &dyn cairn_engine::fs::FileSystem, dir: &std::path::Path) -> cairn_engine::Result<()> {
    for name in fs.list(dir)? {
        let path = dir.join(&name);
        if fs.remove(&path).is_err() {
            remove_tree(fs, &path)?;
        }
    }
    fs.remove_dir(dir)
}

/// An apply error as the engine's (what opening a shard returns).
fn engine_error(e: ApplyError) -> cairn_engine::Error {
    match e {
        ApplyError::Engine(e) => e,
        ApplyError::Corrupt(why) => cairn_engine::Error::corruption("<applied position>", why),
    }
}

/// Opens generation `generation` under `root` as a new, empty shard (removing what an interrupted
/// attempt left there).
fn open_empty_generation(
    template: &Config,
    root: &std::path::Path,
    generation: u64,
    buckets: &[cairn_engine::BucketRange],
) -> cairn_engine::Result<Db> {
    let fs = &template.fs;
    let dir = root.join(format!("gen-{generation}"));
    if fs.exists(&dir)? {
        for name in fs.list(&dir)? {
            fs.remove(&dir.join(name))?;
        }
    }
    let mut config = template.clone();
    config.dir = dir;
    Db::open(config, buckets.to_vec())
}

struct Inner {
    applier: ShardApplier,
    db: Arc<Db>,
    // Shard directories live under `root` as `gen-<n>`; installing a snapshot opens the next generation.
    root: PathBuf,
    generation: u64,
    // INVARIANT: above every generation directory under `root`.
    next_generation: u64,
    // The settings every generation is opened with (its `dir` is replaced).
    template: Config,
    meta_bucket: u16,
    buckets: Vec<cairn_engine::BucketRange>,
    incarnation: IncarnationRecord,
    current: Option<(SnapshotMetaOf<TypeConfig>, ShardSnapshotRef)>,
    // Snapshots installed from another replica since open.
    installed: u64,
}

/// The state machine of one shard group. Cloning shares it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct ShardStateMachine {
    inner: Arc<parking_lot::Mutex<Inner>>,
    // Shared with every generation's applier; read without `inner`'s lock, so a read's fencing check
    // never waits behind an apply or a snapshot build.
    checks: CheckBoard,
    // The engine readers use, outside `inner`'s lock for the same reason. INVARIANT: `inner.db`.
    db: Arc<parking_lot::RwLock<Arc<Db>>>,
    // The node's frozen shards, shared with every generation's applier.
    node: NodeLink,
    // The incarnation whose Raft node this handle serves (`None`: any). Once a re-sync began a later
    // incarnation, the earlier one's Raft node (its workers may still be finishing an apply or a
    // snapshot install after its shutdown) is refused, so it cannot write into the new contents.
    bound: Option<u16>,
}

impl std::fmt::Debug for ShardStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStateMachine").field("root", &self.inner.lock().root).finish_non_exhaustive()
    }
}

impl ShardStateMachine {
    /// Opens (or creates) the shard under `root` with `template`'s settings (its WAL should be off: the
    /// Raft log is the log); a new replica owns `buckets`, an existing one what its engine's manifest
    /// says ([`ShardStateMachine::owned_buckets`]); the applied position lives in `meta_bucket` (a
    /// replica opened before keeps the one it was first opened with).
    pub fn open(
        root: PathBuf,
        template: Config,
        buckets: Vec<cairn_engine::BucketRange>,
        meta_bucket: u16,
    ) -> cairn_engine::Result<ShardStateMachine> {
        ShardStateMachine::open_with(root, template, buckets, meta_bucket, None)
    }

    /// [`ShardStateMachine::open`], with the engine of generation 0 already open (`preopened`: a
    /// split's new shard, just made), used if that is the generation to open, closed otherwise.
    fn open_with(
        root: PathBuf,
        template: Config,
        buckets: Vec<cairn_engine::BucketRange>,
        meta_bucket: u16,
        preopened: Option<Db>,
    ) -> cairn_engine::Result<ShardStateMachine> {
        let fs = Arc::clone(&template.fs);
        fs.create_dir_all(&root)?;
        // A replica opened before keeps the meta bucket it started with.
        let meta_bucket = stored_meta_bucket(fs.as_ref(), &root, meta_bucket)?;
        // The newest generation an install completed (the engine writes `CURRENT` last); a later one
        // without it is an install a crash interrupted, and is never reused.
        let generations: Vec<u64> = fs
            .list(&root)?
            .iter()
            .filter_map(|n| n.strip_prefix("gen-").and_then(|g| g.parse::<u64>().ok()))
            .collect();
        let mut generation = 0;
        for &g in &generations {
            if g > generation && fs.exists(&root.join(format!("gen-{g}")).join("CURRENT"))? {
                generation = g;
            }
        }
        let incarnation = read_incarnation(fs.as_ref(), &root)?;
        let mut next_generation = generations.iter().max().map_or(1, |g| g + 1).max(generation + 1);
        let preopened = match preopened {
            Some(db) if generation == 0 && incarnation.generation == 0 => Some(db),
            other => {
                if let Some(db) = other {
                    db.close()?;
                }
                None
            }
        };
        let db = if let Some(db) = preopened {
            db
        } else if generation < incarnation.generation {
            // A new incarnation whose empty first generation a crash kept from being made.
            generation = incarnation.generation;
            next_generation = next_generation.max(generation + 1);
            open_empty_generation(&template, &root, generation, &buckets)?
        } else {
            let mut config = template.clone();
            config.dir = root.join(format!("gen-{generation}"));
            if fs.exists(&config.dir.join("CURRENT"))? {
                // The engine's manifest records what the replica owns (a rescale changes it there):
                // it wins over `buckets`, which only says what a new replica starts with.
                Db::open_as_stored(config)?
            } else {
                Db::open(config, buckets.clone())?
            }
        };
        let owned = db.owned_buckets();
        if owned != buckets {
            tracing::info!(root = %root.display(), ?owned, planned = ?buckets, "the replica owns what its engine's manifest says");
        }
        let buckets = owned;
        let db = Arc::new(db);
        let checks = CheckBoard::default();
        let node = NodeLink::default();
        let applier = ShardApplier::linked(Arc::clone(&db), meta_bucket, checks.clone(), Arc::clone(&node));
        let shared = Arc::new(parking_lot::RwLock::new(Arc::clone(&db)));
        let inner = Inner {
            applier,
            db,
            root,
            generation,
            next_generation,
            template,
            meta_bucket,
            buckets,
            incarnation,
            current: None,
            installed: 0,
        };
        Ok(ShardStateMachine {
            inner: Arc::new(parking_lot::Mutex::new(inner)),
            checks,
            db: shared,
            node,
            bound: None,
        })
    }

    /// Reopens the replica under `root` as it was stored, its buckets and meta bucket its own: one the
    /// map no longer names (frozen for a merge while its node was down, say). `None` if no replica was
    /// opened there since replicas kept their meta bucket (see [`META_BUCKET_FILE`]).
    pub fn open_stored(root: PathBuf, template: Config) -> cairn_engine::Result<Option<ShardStateMachine>> {
        let fs = Arc::clone(&template.fs);
        if !fs.exists(&root.join(META_BUCKET_FILE))? {
            return Ok(None);
        }
        let meta_bucket = stored_meta_bucket(fs.as_ref(), &root, 0)?;
        ShardStateMachine::open(root, template, Vec::new(), meta_bucket).map(Some)
    }

    /// Makes this replica, of group `group`, one of the node whose frozen shards `shards` holds: a
    /// freeze registers there, and a merge finds the right-hand shard's frozen replica there.
    pub fn link(&self, shards: &super::FrozenShards, group: u64) -> io::Result<()> {
        self.inner.lock().applier.link(shards.clone(), group).map_err(io_err)
    }

    /// Where this replica's frozen contents are, if its shard froze for a merge.
    pub fn frozen(&self) -> Option<super::FrozenShard> {
        self.inner.lock().applier.frozen().ok().flatten()
    }

    /// This replica's incarnation (0 until it first re-syncs from scratch).
    pub fn incarnation(&self) -> u16 {
        self.inner.lock().incarnation.incarnation
    }

    /// This state machine as incarnation `incarnation`'s Raft node uses it: refused once a later
    /// incarnation began.
    pub(crate) fn bound_to(&self, incarnation: u16) -> ShardStateMachine {
        ShardStateMachine { bound: Some(incarnation), ..self.clone() }
    }

    /// Refuses a call from an earlier incarnation's Raft node.
    fn check_bound(&self, inner: &Inner) -> io::Result<()> {
        match self.bound {
            Some(b) if b != inner.incarnation.incarnation => Err(io_err(format!(
                "incarnation {b} ended (incarnation {} runs now)",
                inner.incarnation.incarnation
            ))),
            _ => Ok(()),
        }
    }

    /// Where the group's other nodes were when this incarnation began (empty for incarnation 0).
    pub fn incarnation_peers(&self) -> std::collections::BTreeMap<u64, String> {
        self.inner.lock().incarnation.peers.clone()
    }

    /// Starts the next incarnation: records it durably, then replaces the shard's contents with an
    /// empty generation (the group fills it again, from the log or a snapshot). `peers` (node id →
    /// address) is kept for finding the group again after a restart. Only while no Raft node of an
    /// earlier incarnation runs on this state machine.
    pub fn begin_incarnation(&self, peers: std::collections::BTreeMap<u64, String>) -> io::Result<u16> {
        let mut inner = self.inner.lock();
        let incarnation = inner
            .incarnation
            .incarnation
            .checked_add(1)
            .ok_or_else(|| io_err("this replica has used every incarnation"))?;
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let record = IncarnationRecord { incarnation, generation, peers };
        write_incarnation(inner.template.fs.as_ref(), &inner.root, &record).map_err(io_err)?;
        let db = open_empty_generation(&inner.template, &inner.root, generation, &inner.buckets)
            .map_err(io_err)?;
        self.swap_in(&mut inner, db, generation);
        inner.incarnation = record;
        inner.current = None;
        Ok(incarnation)
    }

    /// Deletes the files of every generation but the current one (contents a snapshot install or a new
    /// incarnation replaced). Only while nothing reads the replaced contents any more.
    pub fn drop_old_generations(&self) -> io::Result<()> {
        let inner = self.inner.lock();
        let fs = Arc::clone(&inner.template.fs);
        for name in fs.list(&inner.root).map_err(io_err)? {
            let old = name.strip_prefix("gen-").and_then(|g| g.parse::<u64>().ok());
            if old.is_some_and(|g| g != inner.generation) {
                remove_tree(fs.as_ref(), &inner.root.join(&name)).map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Makes `db`, opened as generation `generation`, the shard's contents. What checks found about the
    /// replaced contents no longer holds.
    fn swap_in(&self, inner: &mut Inner, db: Db, generation: u64) {
        let db = Arc::new(db);
        self.checks.reset();
        inner.applier = ShardApplier::linked(
            Arc::clone(&db),
            inner.meta_bucket,
            self.checks.clone(),
            Arc::clone(&self.node),
        );
        *self.db.write() = Arc::clone(&db);
        inner.db = db;
        inner.generation = generation;
    }

    /// The shard's engine (without waiting for an apply in progress).
    pub fn db(&self) -> Arc<Db> {
        Arc::clone(&self.db.read())
    }

    /// Opens (or, the first time, makes) under `root` this node's replica of the shard `split` made:
    /// an engine owning nothing that imports the split's ranges from the pre-shrink snapshot on the
    /// shared snapshot volume, by reference (0 bytes copied on one file system). Every replica that
    /// applied the split makes the same contents, as of the split entry. Safe to redo after a crash.
    /// Returns the state machine and what the import copied (nothing when reopened).
    ///
    /// The new shard's group starts at log position `(0, SPLIT_START_INDEX)` with the split's voters
    /// ([`ShardApplier::start_at`]); its node's Raft log for the group starts there too
    /// ([`prepare_split_log`](super::prepare_split_log)). No replica bootstraps it.
    pub fn open_split(
        root: PathBuf,
        template: Config,
        split: &super::SplitOff,
    ) -> cairn_engine::Result<(ShardStateMachine, cairn_engine::ExpandStats)> {
        let ranges: Vec<cairn_engine::BucketRange> = split.ranges.iter().map(|&(f, l)| f..=l).collect();
        let Some(meta_bucket) = ranges.first().map(|r| *r.start()) else {
            return Err(cairn_engine::Error::InvalidArgument("a split of no buckets".into()));
        };
        let fs = Arc::clone(&template.fs);
        let mut config = template.clone();
        config.dir = root.join("gen-0");
        let mut stats = cairn_engine::ExpandStats::default();
        // An engine already here is this function's, interrupted or done: an empty replica of a split
        // shard is started (and kept, or retired with its files) by the ordinary path, never here. So
        // one that owns the ranges imported them: importing again would be refused (the snapshot's
        // ranges are claimed), and starting it is what is left.
        let made = fs.exists(&config.dir.join("CURRENT"))?;
        let began = std::time::Instant::now();
        let ms = |since: std::time::Instant| since.elapsed().as_millis() as u64;
        let db = if made { Db::open_as_stored(config)? } else { Db::open(config, Vec::new())? };
        // The imported files start compactions (rewrites dropping what their filters hide): they run
        // once the shard is open for good, not while its moved buckets wait for it.
        let held = db.hold_compactions()?;
        let engine_ms = ms(began);
        let step = std::time::Instant::now();
        if db.owned_buckets() != ranges {
            // The import reads the splitting shard's snapshot where it is, and links its files here.
            stats = db.expand_bucket_from(&split.volume, &split.source, split.snapshot, ranges.clone())?;
        }
        // The engine stays open: closing it and opening it again cost fsyncs and a manifest read.
        let import_ms = ms(step);
        let step = std::time::Instant::now();
        let sm = ShardStateMachine::open_with(root, template, ranges, meta_bucket, Some(db))?;
        let unstarted = sm.inner.lock().applier.applied().map_err(engine_error)?.0.is_none();
        if unstarted {
            // The threshold first: a shard found started (after a flush between the two) has it too.
            let inner = sm.inner.lock();
            inner.applier.start_gc_threshold(split.gc_threshold).map_err(engine_error)?;
            inner.applier.start_at(super::SPLIT_START_INDEX, &split.voters).map_err(engine_error)?;
        }
        let start_ms = ms(step);
        let step = std::time::Instant::now();
        sm.take_start_snapshot().map_err(engine_error)?;
        drop(held);
        tracing::info!(
            engine_ms,
            import_ms,
            start_ms,
            snapshot_ms = ms(step),
            "opened a split's new shard's engine"
        );
        Ok((sm, stats))
    }

    /// Makes a snapshot of the new shard as it starts (at its start position) the replica's current
    /// one, without a content digest (`""`: computing one reads every row). openraft needs a current
    /// snapshot of a group whose log starts purged, and would otherwise build one as the group starts,
    /// hashing the whole shard while its moved buckets wait. The digest is informational (consistency
    /// checks compare digests of their own; the group's next snapshot has one). The engine snapshot
    /// flushes the memtable, so the start position is durable when this returns.
    fn take_start_snapshot(&self) -> Result<(), ApplyError> {
        let mut inner = self.inner.lock();
        if inner.current.is_some() {
            return Ok(());
        }
        let (last_log_id, last_membership) = inner.applier.applied()?;
        let snapshot_id = inner.db.snapshot()?;
        let volume = cairn_engine::resolve_volume(&inner.db.snapshot_volume_url()?, &inner.template.fs)?.url;
        let snapshot = ShardSnapshotRef { volume, db_id: inner.db.id(), snapshot_id, digest: String::new() };
        inner.current = Some((SnapshotMetaOf::<TypeConfig> { last_log_id, last_membership }, snapshot));
        Ok(())
    }

    /// The split that gave `ranges` to group `new_group`, if it is the last split this replica
    /// applied: what [`ShardStateMachine::open_split`] needs, found again after a restart (its `index`
    /// is 0: the record does not keep it).
    pub fn split_off(&self, new_group: u64, ranges: &[(u16, u16)]) -> Option<super::SplitOff> {
        let (record, gc_threshold) = {
            let inner = self.inner.lock();
            (inner.applier.split_record().ok()??, inner.applier.split_gc_threshold().ok()?)
        };
        if record.new_group != new_group || record.ranges != ranges {
            return None;
        }
        let db = self.db();
        let volume = db.snapshot_volume_url().ok()?;
        Some(super::SplitOff {
            index: 0,
            new_group,
            ranges: record.ranges,
            source: db.id(),
            snapshot: record.snapshot,
            volume,
            voters: record.voters.into_iter().collect(),
            first_leader: record.first_leader,
            gc_threshold,
        })
    }

    /// The bucket ranges this replica owns, as its engine's manifest records them.
    pub fn owned_buckets(&self) -> Vec<cairn_engine::BucketRange> {
        self.db().owned_buckets()
    }

    /// Makes consistency checks hash inside apply rather than in the background (for a deterministic
    /// simulation, whose outcome must not depend on when another thread finishes).
    pub fn hash_checks_inline(&self) {
        self.checks.hash_inline();
    }

    /// Commands that wrote rows this replica applied since it opened.
    pub fn writes_applied(&self) -> u64 {
        self.checks.writes()
    }

    /// The GC threshold this replica applied (nanoseconds since the Unix epoch; 0: none yet). Reads
    /// below it must be refused: compactions may have dropped versions they would see.
    pub fn gc_threshold(&self) -> u64 {
        self.db().filter_threshold()
    }

    /// What consistency checks found since this replica last opened or installed a snapshot.
    pub fn check_status(&self) -> super::CheckStatus {
        self.checks.status()
    }

    /// The digest this replica recorded at consistency-check entry `index`, if it has it.
    pub fn recorded_digest(&self, index: u64) -> Option<String> {
        self.checks.digest(index).done()
    }

    /// What applying entries does from now on that the replica's owner acts on ([`super::Effect`]).
    pub fn effects(&self) -> tokio::sync::broadcast::Receiver<super::Effect> {
        self.checks.subscribe()
    }

    /// Where this replica is with the digest of consistency-check entry `index`.
    pub fn digest_state(&self, index: u64) -> super::DigestState {
        self.checks.digest(index)
    }

    /// Where snapshots fetched from another node are staged before they are installed (a snapshot
    /// volume of this node's own).
    pub fn staging_dir(&self) -> PathBuf {
        self.inner.lock().root.join("incoming")
    }

    /// The file system the shard lives on.
    pub fn fs(&self) -> Arc<dyn cairn_engine::fs::FileSystem> {
        Arc::clone(&self.inner.lock().template.fs)
    }

    /// The file system and directory of snapshot `snapshot_id` of shard `db_id`, if it is this
    /// replica's current snapshot (the only one it serves to others).
    pub(crate) fn current_snapshot_dir(
        &self,
        db_id: &str,
        snapshot_id: u64,
    ) -> Result<(Arc<dyn cairn_engine::fs::FileSystem>, PathBuf), String> {
        let inner = self.inner.lock();
        match &inner.current {
            Some((_, current)) if current.db_id == db_id && current.snapshot_id == snapshot_id => {
                let volume = cairn_engine::resolve_volume(&current.volume, &inner.template.fs)
                    .map_err(|e| e.to_string())?;
                let dir = cairn_engine::snapshot_dir(&volume, db_id, snapshot_id);
                Ok((volume.fs, dir))
            }
            _ => Err(format!("snapshot {db_id}/{snapshot_id} is not this replica's current snapshot")),
        }
    }

    /// Snapshots installed from another replica since this state machine was opened.
    pub fn snapshots_installed(&self) -> u64 {
        self.inner.lock().installed
    }

    /// The last applied index and the content digest of the shard as of it (equal on replicas that
    /// applied the same entries, and to the digest of a snapshot taken there).
    pub fn digest(&self) -> Result<(Option<u64>, String), io::Error> {
        // The position and a read view at it under the lock; the hash, which reads the whole shard,
        // after it is released (applies wait for the lock).
        let (applied, view) = {
            let inner = self.inner.lock();
            (inner.applier.applied().map_err(io_err)?, inner.db.view())
        };
        let digest = view.content_digest().map_err(io_err)?;
        Ok((applied.0.map(|id| id.index), digest.to_hex()))
    }

    /// Checks this replica against a snapshot another replica took (seed 004): if this one has applied
    /// exactly up to the snapshot's position, it hashes its own contents there and compares content
    /// digests. Equal digests mean this replica may drop its log up to that position without
    /// downloading anything; different ones mean it diverged and must install the other's snapshot.
    pub fn verify(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        theirs: &ShardSnapshotRef,
    ) -> Result<Verification, io::Error> {
        let view = {
            let inner = self.inner.lock();
            let applied = inner.applier.applied().map_err(io_err)?;
            if applied.0 != meta.last_log_id {
                return Ok(Verification::NotAtPosition { applied: applied.0.map(|id| id.index) });
            }
            inner.db.view()
        };
        if theirs.digest.is_empty() {
            return Err(io_err("the snapshot has no content digest to verify against"));
        }
        let ours = view.content_digest().map_err(io_err)?.to_hex();
        Ok(if ours == theirs.digest {
            Verification::Match
        } else {
            Verification::Diverged { ours, theirs: theirs.digest.clone() }
        })
    }
}

impl ShardStateMachine {
    /// Before `entries` apply: for each merge among them whose ranges this replica does not hold yet,
    /// waits (up to [`MERGE_WAIT`](super::MERGE_WAIT)) for the node's replica of the right-hand shard
    /// to freeze (one that lags is catching up; one that restarted is reopening).
    async fn await_frozen_neighbours(&self, entries: &[openraft::alias::EntryOf<TypeConfig>]) {
        let Some((shards, _)) = self.node.lock().clone() else { return };
        for entry in entries {
            if let openraft::EntryPayload::Normal(super::Command::Merge { right_group, ranges }) =
                &entry.payload
            {
                let owned = self.owned_buckets();
                let held =
                    ranges.iter().all(|&(f, l)| owned.iter().any(|o| *o.start() <= f && l <= *o.end()));
                if !held && shards.wait(*right_group, super::MERGE_WAIT).await.is_none() {
                    tracing::warn!(right_group, "the merged shard's replica here did not freeze in time");
                }
            }
        }
    }
}

/// What [`ShardStateMachine::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Same position, same contents.
    Match,
    /// Same position, different contents: this replica diverged.
    Diverged {
        /// This replica's digest.
        ours: String,
        /// The snapshot's digest.
        theirs: String,
    },
    /// This replica is not at the snapshot's position (it has applied up to `applied`).
    NotAtPosition {
        /// Index of the last entry this replica applied.
        applied: Option<u64>,
    },
}

/// The reference of `db`'s snapshot `snapshot_id`, with its content digest (read from the snapshot's
/// files, which never change: no lock needed).
fn describe(db: &Db, snapshot_id: u64) -> Result<ShardSnapshotRef, io::Error> {
    let input = db.shard_snapshot_input(snapshot_id).map_err(io_err)?;
    Ok(ShardSnapshotRef { volume: input.volume, db_id: input.db_id, snapshot_id, digest: input.digest })
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = ShardSnapshotRef;

    /// Applies wait while the engine snapshot is taken (it must hold exactly the applied position), so
    /// that part is kept short: the memtable is flushed before the lock is taken (the snapshot then
    /// flushes only what was applied meanwhile), and the digest, which reads the whole snapshot, is
    /// computed after it is released.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, ShardSnapshotRef>, io::Error> {
        self.db().flush().map_err(io_err)?;
        let (meta, db, snapshot_id, generation) = {
            let inner = self.inner.lock();
            // Every applied entry is in the engine (applies are synchronous and hold the lock), so the
            // snapshot taken now is exactly the applied position read alongside it.
            let (last_log_id, last_membership, snapshot_id) = match inner.applier.frozen_snapshot() {
                // A frozen shard's snapshot is its pre-shrink one, at the freeze: what a replica
                // installs to freeze itself alike (the entries since change nothing).
                Some(((last_log_id, last_membership), snapshot_id)) => {
                    (last_log_id, last_membership, snapshot_id)
                }
                None => {
                    let (last_log_id, last_membership) = inner.applier.applied().map_err(io_err)?;
                    (last_log_id, last_membership, inner.db.snapshot().map_err(io_err)?)
                }
            };
            let meta = SnapshotMetaOf::<TypeConfig> { last_log_id, last_membership };
            (meta, Arc::clone(&inner.db), snapshot_id, inner.generation)
        };
        let data = describe(&db, snapshot_id)?;
        let mut inner = self.inner.lock();
        self.check_bound(&inner)?;
        if inner.generation != generation
            && let Some((meta, snapshot)) = inner.current.clone()
        {
            // A snapshot from the leader was installed meanwhile: it is newer than this one.
            return Ok(SnapshotOf::<TypeConfig, ShardSnapshotRef> { meta, snapshot });
        }
        inner.current = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, ShardSnapshotRef> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = ShardSnapshotRef;
    type SnapshotBuilder = ShardStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.inner.lock();
        self.check_bound(&inner)?;
        inner.applier.applied().map_err(io_err)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm:
            futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        self.await_frozen_neighbours(&batch).await;
        let results = {
            let inner = self.inner.lock();
            self.check_bound(&inner)?;
            inner.applier.apply(&batch).map_err(io_err)?
        };
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: ShardSnapshotRef,
    ) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        self.check_bound(&inner)?;
        let next = inner.next_generation;
        inner.next_generation += 1;
        let mut config = inner.template.clone();
        config.dir = inner.root.join(format!("gen-{next}"));
        // Restored from wherever the snapshot is (the leader's volume, or this node's staged copy),
        // the shard then runs on this replica's own volume: its later snapshots go there, never into
        // a staging area that is cleared after the install.
        let mut source = config.clone();
        source.snapshot_volume = Some(snapshot.volume.clone());
        Db::restore_from_snapshot(&source, snapshot.snapshot_id, &snapshot.db_id).map_err(io_err)?;
        let db =
            Db::open_from_snapshot(config, snapshot.snapshot_id, snapshot.db_id.clone()).map_err(io_err)?;
        let db = Arc::new(db);
        // A frozen shard's snapshot holds the freeze record: the freeze is finished before the contents
        // serve anything (the shrink), so they never show the buckets as owned.
        let fresh = ShardApplier::linked(
            Arc::clone(&db),
            inner.meta_bucket,
            CheckBoard::default(),
            NodeLink::default(),
        );
        fresh.applied().map_err(io_err)?;
        drop(fresh);
        let db = Arc::into_inner(db).ok_or_else(|| io_err("the installed shard is still in use"))?;
        self.swap_in(&mut inner, db, next);
        inner.installed += 1;
        // The snapshot this replica serves from now on is its own copy of what it installed (the same
        // position and contents), not the one it came from.
        let own = describe(&inner.db, inner.db.snapshot().map_err(io_err)?)?;
        inner.current = Some((meta.clone(), own));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, ShardSnapshotRef>>, io::Error> {
        let inner = self.inner.lock();
        self.check_bound(&inner)?;
        Ok(inner
            .current
            .clone()
            .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, ShardSnapshotRef> { meta, snapshot }))
    }
}
