//! Applying a shard group's committed entries to the shard's engine `Db`, with the applied log id and
//! membership (postcard-encoded) written in the same engine batch as the data they cover.
//!
//! Replicated shards run the engine with its WAL off (the Raft log is the log). After a crash the
//! engine holds exactly what it flushed; because the applied position travels in the same batches as
//! the data, what it flushed is a prefix of the applied entries ending at the stored position, so Raft
//! replays only the log tail after it. A system row (key prefix `00 02`, which the server's MVCC key
//! encoding never produces) in the shard's first bucket holds that position.

use super::{Check, Command, CommandResult, Condition, FrozenShard, FrozenShards, TypeConfig};
use cairn_engine::{Db, WriteBatch, WriteOptions};
use openraft::EntryPayload;
use openraft::alias::{EntryOf, LogIdOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[path = "apply_reshape.rs"]
mod reshape;

/// The engine key of the applied-position system row.
pub const APPLIED_ROW_KEY: &[u8] = b"\x00\x02raft/applied";

/// The engine key of the GC threshold row ([`Command::GcThreshold`]): 8 bytes, big-endian nanoseconds;
/// none until a threshold is decided. Replicated like any row, so it is in every digest and snapshot.
pub const GC_ROW_KEY: &[u8] = b"\x00\x02raft/gc";

/// The engine key of the GC threshold as of the last split (as [`GC_ROW_KEY`]), local like
/// [`SPLIT_ROW_KEY`], which it goes with: the new shard starts with it.
pub const SPLIT_GC_ROW_KEY: &[u8] = b"\x00\x02local/raft/split-gc";

/// The GC threshold a row holds (0: none, or malformed, which the digest then shows).
fn gc_threshold_of(row: Option<&cairn_engine::Row>) -> u64 {
    let bytes = row.and_then(|r| r.column(0)).and_then(|c| <[u8; 8]>::try_from(c).ok());
    bytes.map_or(0, u64::from_be_bytes)
}

/// Bytes a combined batch keeps free for the position row (a membership of a few members encodes to a
/// few hundred bytes).
const POSITION_ROW_ROOM: usize = 64 << 10;

/// The last applied log id and the membership as of it.
pub type AppliedState = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

/// What can go wrong applying entries.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    /// The stored applied position does not decode.
    #[error("corrupt applied-position row: {0}")]
    Corrupt(String),
}

/// Decodes the applied-position row: postcard, or the JSON that stores written before it was binary
/// hold (a JSON array starts with `[`, which no postcard encoding of the position does: its first byte
/// is an `Option` tag, 0 or 1).
fn decode_position(bytes: &[u8]) -> Result<AppliedState, ApplyError> {
    if bytes.first() == Some(&b'[') {
        return serde_json::from_slice(bytes).map_err(|e| ApplyError::Corrupt(e.to_string()));
    }
    super::decode(bytes).map_err(ApplyError::Corrupt)
}

/// Applies entries to one shard.
#[derive(Clone, Debug)]
pub struct ShardApplier {
    db: Arc<Db>,
    meta_bucket: u16,
    // The membership as of the last applied entry, read from the engine on the first apply, so an apply
    // writes the position row without reading it first. INVARIANT: when loaded, equals the stored row's.
    membership: Arc<parking_lot::Mutex<Option<StoredMembershipOf<TypeConfig>>>>,
    checks: CheckBoard,
    // Set once the shard froze for a merge (applied or found at open): the engine owns nothing, so the
    // position of the entries after the freeze is kept here (they change nothing a replay cannot redo).
    frozen: Arc<parking_lot::Mutex<Option<Frozen>>>,
    // The node's frozen shards and this shard's group, once the node said (see `NodeLink`).
    node: NodeLink,
}

/// A frozen shard's applied position and where its contents are.
#[derive(Clone, Debug)]
struct Frozen {
    // The last applied entry's.
    position: AppliedState,
    // The freeze entry's, which the pre-shrink snapshot holds.
    freeze_position: AppliedState,
    shard: FrozenShard,
}

/// The node's registry of frozen shards and this shard's group in it; shared by every generation's
/// applier of one state machine.
pub(crate) type NodeLink = Arc<parking_lot::Mutex<Option<(FrozenShards, u64)>>>;

/// The engine key of the freeze record (a [`FrozenRecord`], postcard), written with the freeze entry's
/// position just before the shrink, so the pre-shrink snapshot holds both.
pub const FROZEN_ROW_KEY: &[u8] = b"\x00\x02raft/frozen";

/// What a freeze gave up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FrozenRecord {
    ranges: Vec<(u16, u16)>,
}

/// What applying entries did that the replica's owner acts on, beyond answering their proposers
/// (published by the state machine: [`ShardStateMachine::effects`](super::ShardStateMachine::effects)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A consistency check found this replica's contents differ from the majority's at check entry
    /// `index`: it is fenced (reads refused) until it re-syncs from scratch.
    Fenced {
        /// The check entry.
        index: u64,
    },
    /// A consistency check verified this replica's contents at check entry `index`.
    Verified {
        /// The check entry.
        index: u64,
    },
    /// A [`Command::Split`] gave buckets up: the node opens the new shard from them.
    Split(SplitOff),
    /// A [`Command::Merge`] at entry `index` took a frozen neighbour's buckets in: the replica takes a
    /// snapshot past it, so a replica that installs one never needs the frozen neighbour.
    Merged {
        /// The merge entry.
        index: u64,
    },
}

/// What a replica's node needs to open the shard a [`Command::Split`] made, by reference
/// ([`ShardStateMachine::open_split`](super::ShardStateMachine::open_split)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitOff {
    /// The split entry.
    pub index: u64,
    /// The new shard's group.
    pub new_group: u64,
    /// The bucket ranges it takes.
    pub ranges: Vec<(u16, u16)>,
    /// The engine identity of the shard that gave them up (this replica's).
    pub source: String,
    /// Its pre-shrink snapshot, which holds them.
    pub snapshot: u64,
    /// The volume that snapshot is on.
    pub volume: String,
    /// The new group's voters: node → address.
    pub voters: BTreeMap<u64, String>,
    /// The voter that leads the new group's first term, if the split named one
    /// ([`Command::Split`](super::Command::Split)'s `first_leader`).
    pub first_leader: Option<u64>,
    /// The split shard's GC threshold at the split entry: the new shard starts with it, so that its
    /// replicas, made from files their shard compacted at different times, agree on its digests.
    pub gc_threshold: u64,
}

/// The engine key of the split record: the last split this shard made (a [`SplitRecord`], postcard),
/// written with the split entry's position so a node can open the new shard after a restart. It names
/// this replica's own pre-split snapshot, so it is local ([`cairn_engine::LOCAL_KEY_PREFIX`]): left out
/// of consistency checks, as replicas number their snapshots differently (one that restarted, or
/// installed a snapshot, took more or fewer).
pub const SPLIT_ROW_KEY: &[u8] = b"\x00\x02local/raft/split";

/// Where replicas kept the split record before it was local: read if the new one is missing, and
/// deleted when a split or merge writes the shard's records again.
const LEGACY_SPLIT_ROW_KEY: &[u8] = b"\x00\x02raft/split";

/// The last split a shard made, as its replicas keep it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SplitRecord {
    pub(crate) new_group: u64,
    pub(crate) ranges: Vec<(u16, u16)>,
    pub(crate) snapshot: u64,
    pub(crate) voters: Vec<(u64, String)>,
    pub(crate) first_leader: Option<u64>,
}

impl SplitRecord {
    /// The record in `bytes`, as kept now or before splits named a first leader.
    fn decode(bytes: &[u8]) -> Result<SplitRecord, String> {
        super::decode(bytes).or_else(|e| {
            let LegacySplitRecord { new_group, ranges, snapshot, voters } =
                super::decode(bytes).map_err(|_| e)?;
            Ok(SplitRecord { new_group, ranges, snapshot, voters, first_leader: None })
        })
    }
}

/// A [`SplitRecord`] as kept before splits named their new group's first leader.
#[derive(serde::Deserialize)]
struct LegacySplitRecord {
    new_group: u64,
    ranges: Vec<(u16, u16)>,
    snapshot: u64,
    voters: Vec<(u64, String)>,
}

/// Effects kept for a subscriber that is behind (it misses the oldest; the replica's status still
/// says where it stands).
pub const EFFECTS_KEPT: usize = 16;

/// Where an applier keeps what consistency checks found; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct CheckBoard {
    checks: Arc<parking_lot::Mutex<Checks>>,
    // Hash inside apply instead of in the background (see `hash_inline`).
    inline: Arc<std::sync::atomic::AtomicBool>,
    effects: tokio::sync::broadcast::Sender<Effect>,
    // Commands applied that wrote rows, since the replica opened: the leader proposes a GC threshold
    // only after some (an idle shard has nothing new to collect and stays quiet).
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for CheckBoard {
    fn default() -> CheckBoard {
        CheckBoard {
            checks: Arc::default(),
            inline: Arc::default(),
            effects: tokio::sync::broadcast::channel(EFFECTS_KEPT).0,
            writes: Arc::default(),
        }
    }
}

impl CheckBoard {
    /// Effects from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Effect> {
        self.effects.subscribe()
    }

    /// Commands applied that wrote rows since the replica opened.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes `effect` (no subscriber: nobody to tell).
    fn publish_effect(&self, effect: Effect) {
        let _ = self.effects.send(effect);
    }

    /// Publishes what comparing at check entry `index` found (nothing if this replica had no digest).
    fn publish(&self, index: u64, matched: Option<bool>) {
        let effect = match matched {
            Some(true) => Effect::Verified { index },
            Some(false) => Effect::Fenced { index },
            None => return,
        };
        // No subscriber: nobody to tell.
        let _ = self.effects.send(effect);
    }

    /// Fences this replica at entry `index` for `why` (its contents are not the group's).
    fn fence(&self, index: u64, why: String) {
        tracing::error!(index, why = %why, "replica fenced");
        {
            let mut checks = self.checks.lock();
            checks.divergences += 1;
            checks.fenced.get_or_insert(why);
        }
        self.publish_effect(Effect::Fenced { index });
    }

    /// Hash at the check entry, inside apply, instead of in the background: a deterministic
    /// simulation must not depend on when another thread finishes.
    pub(crate) fn hash_inline(&self) {
        self.inline.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> CheckStatus {
        let c = self.checks.lock();
        CheckStatus { verified: c.verified, fenced: c.fenced.clone(), divergences: c.divergences }
    }

    /// Where this replica is with the digest of check entry `index`.
    pub(crate) fn digest(&self, index: u64) -> DigestState {
        match self.checks.lock().recorded.iter().find(|(i, _)| *i == index) {
            None => DigestState::Absent,
            Some((_, None)) => DigestState::Hashing,
            Some((_, Some(digest))) => DigestState::Done(digest.clone()),
        }
    }

    /// Records the digest computed for check entry `index` (unless the contents were replaced since),
    /// and makes the comparisons that waited for it.
    fn finish(&self, index: u64, digest: cairn_engine::Result<String>) {
        let mut checks = self.checks.lock();
        let Some(slot) = checks.recorded.iter().position(|(i, d)| *i == index && d.is_none()) else {
            return;
        };
        match digest {
            Ok(digest) => checks.recorded[slot].1 = Some(digest),
            Err(e) => {
                tracing::error!(index, error = %e, "consistency check: cannot hash the shard");
                checks.recorded.remove(slot);
                checks.awaiting.retain(|(i, _)| *i != index);
                return;
            }
        }
        let waiting: Vec<(u64, String)> =
            checks.awaiting.iter().filter(|(i, _)| *i == index).cloned().collect();
        checks.awaiting.retain(|(i, _)| *i != index);
        let found: Vec<(u64, Option<bool>)> =
            waiting.into_iter().map(|(at, majority)| (at, checks.compare(at, &majority))).collect();
        drop(checks);
        for (at, matched) in found {
            self.publish(at, matched);
        }
    }

    /// Starts recording the digest of check entry `index`, keeping at most [`KEPT_CHECKS`] (and the
    /// comparisons waiting on them); false if [`HASHES_PER_REPLICA`] earlier digests are still being
    /// computed (each holds a read view, which keeps its files).
    fn begin(&self, index: u64) -> bool {
        let mut checks = self.checks.lock();
        if checks.recorded.iter().filter(|(_, d)| d.is_none()).count() >= HASHES_PER_REPLICA {
            return false;
        }
        checks.recorded.push_back((index, None));
        while checks.recorded.len() > KEPT_CHECKS {
            if let Some((dropped, _)) = checks.recorded.pop_front() {
                checks.awaiting.retain(|(i, _)| *i != dropped);
            }
        }
        true
    }

    /// Forgets everything (the contents were replaced).
    pub(crate) fn reset(&self) {
        *self.checks.lock() = Checks::default();
    }
}

/// Where a replica is with the digest of one check entry (a peer's answer when asked for it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DigestState {
    /// None: the replica did not apply the entry, restarted or installed a snapshot since, skipped it
    /// (still hashing an earlier one), failed to hash, or no longer keeps it.
    Absent,
    /// Being computed (or waiting for a digest thread).
    Hashing,
    /// Computed.
    Done(String),
}

impl DigestState {
    /// The digest, once computed.
    pub fn done(self) -> Option<String> {
        match self {
            DigestState::Done(digest) => Some(digest),
            _ => None,
        }
    }
}

/// Digests recorded at check entries, and what comparing them found.
#[derive(Debug, Default)]
struct Checks {
    // (index, digest), newest last; at most `KEPT_CHECKS`. `None` while the digest is being computed.
    recorded: std::collections::VecDeque<(u64, Option<String>)>,
    // Comparisons applied while this replica's digest was still being computed: (index, majority's).
    awaiting: Vec<(u64, String)>,
    // The last index whose digest matched the proposer's.
    verified: Option<u64>,
    // Why this replica stopped trusting its contents, if it did.
    fenced: Option<String>,
    divergences: u64,
}

const KEPT_CHECKS: usize = 8;

/// Digests of one replica being computed or waiting for a digest thread, at most: a check that comes
/// while one hashes waits its turn.
const HASHES_PER_REPLICA: usize = 2;

/// A rate a replica hashes its shard at for a consistency check, in bytes of rows per second, counted
/// low: unloaded, the hash takes one core for ~0.8 s per GB here; a node busy with writes gives it
/// about a quarter of that.
pub const HASH_BYTES_PER_SECOND: u64 = 300_000_000;

impl Checks {
    /// Compares this replica's digest at check entry `at` with the majority's; fences on a difference.
    /// `None` if it has no digest there (yet).
    fn compare(&mut self, at: u64, majority: &str) -> Option<bool> {
        let ours = self.recorded.iter().find(|(i, _)| *i == at).and_then(|(_, d)| d.clone())?;
        if ours == majority {
            self.verified = self.verified.max(Some(at));
            return Some(true);
        }
        let why = format!("content digest {ours} at index {at} differs from the majority's {majority}");
        tracing::error!(index = at, ours = %ours, majority = %majority, "replica diverged; fencing it");
        self.divergences += 1;
        self.fenced.get_or_insert(why);
        Some(false)
    }
}

/// What consistency checks found on one replica (see [`Check`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckStatus {
    /// The last index at which this replica's digest matched the proposer's.
    pub verified: Option<u64>,
    /// Set when a digest differed: this replica's contents are not to be trusted (reads are refused)
    /// until it re-syncs from scratch as its next incarnation.
    pub fenced: Option<String>,
    /// Digest mismatches seen.
    pub divergences: u64,
}

impl ShardApplier {
    /// Applies into `db`, keeping the applied position in bucket `meta_bucket` (one the shard owns).
    pub fn new(db: Arc<Db>, meta_bucket: u16) -> ShardApplier {
        ShardApplier::with_checks(db, meta_bucket, CheckBoard::default())
    }

    /// Like [`ShardApplier::new`], recording consistency checks on `checks`.
    pub(crate) fn with_checks(db: Arc<Db>, meta_bucket: u16, checks: CheckBoard) -> ShardApplier {
        ShardApplier::linked(db, meta_bucket, checks, NodeLink::default())
    }

    /// Like [`ShardApplier::with_checks`], registering a freeze with (and finding the shards to merge
    /// in) the node `node` names.
    pub(crate) fn linked(db: Arc<Db>, meta_bucket: u16, checks: CheckBoard, node: NodeLink) -> ShardApplier {
        let applier = ShardApplier {
            db,
            meta_bucket,
            membership: Arc::default(),
            checks,
            frozen: Arc::default(),
            node,
        };
        // Compactions collect up to the stored threshold (a frozen shard's first bucket is gone, and
        // with it anything to collect).
        match applier.gc_threshold() {
            Ok(threshold) => applier.db.raise_filter_threshold(threshold),
            // The shard cannot read its own rows: its applies fail alike, and the replica stops.
            Err(e) => tracing::error!(error = %e, "cannot read the shard's GC threshold"),
        }
        applier
    }

    /// The GC threshold the engine holds (0 if none was decided, or the shard froze).
    pub fn gc_threshold(&self) -> Result<u64, ApplyError> {
        match self.db.get(self.meta_bucket, GC_ROW_KEY) {
            Ok(row) => Ok(gc_threshold_of(row.as_ref())),
            Err(cairn_engine::Error::NotOwned { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores threshold `wall_time` at entry `at` if it is above the stored one, durably (flushed),
    /// and only then lets compactions collect below it: after a crash the engine never holds a
    /// position before a threshold its files were compacted with.
    fn raise_gc_threshold(
        &self,
        wall_time: u64,
        at: LogIdOf<TypeConfig>,
        membership: &StoredMembershipOf<TypeConfig>,
    ) -> Result<(), ApplyError> {
        let mut batch = WriteBatch::new();
        let raise = wall_time > self.gc_threshold()?;
        if raise {
            batch.put_row(self.meta_bucket, GC_ROW_KEY, &[(0, &wall_time.to_be_bytes())]);
        }
        self.commit(batch, at, membership)?;
        if raise {
            self.db.flush()?;
            self.db.raise_filter_threshold(wall_time);
        }
        Ok(())
    }

    /// Makes `wall_time` the threshold of a split's new shard as it starts (see [`SplitOff::gc_threshold`]).
    pub(crate) fn start_gc_threshold(&self, wall_time: u64) -> Result<(), ApplyError> {
        if wall_time > 0 {
            let mut batch = WriteBatch::new();
            batch.put_row(self.meta_bucket, GC_ROW_KEY, &[(0, &wall_time.to_be_bytes())]);
            self.db.write(batch, WriteOptions { sync: false })?;
            self.db.raise_filter_threshold(wall_time);
        }
        Ok(())
    }

    /// Where this shard's frozen contents are, if it froze for a merge.
    pub fn frozen(&self) -> Result<Option<FrozenShard>, ApplyError> {
        self.applied()?;
        Ok(self.frozen.lock().as_ref().map(|f| f.shard.clone()))
    }

    /// The position and pre-shrink snapshot of a frozen shard, for a Raft snapshot: a replica that
    /// installs it finds the freeze record and finishes the freeze itself.
    pub(crate) fn frozen_snapshot(&self) -> Option<(AppliedState, u64)> {
        let frozen = self.frozen.lock();
        let f = frozen.as_ref()?;
        Some((f.freeze_position.clone(), f.shard.snapshot))
    }

    /// What consistency checks found.
    pub fn check_status(&self) -> CheckStatus {
        self.checks.status()
    }

    /// The digest recorded at check entry `index`, once computed.
    pub fn recorded_digest(&self, index: u64) -> Option<String> {
        self.checks.digest(index).done()
    }

    /// The applied position the engine holds (a frozen shard's: the one kept since the freeze).
    pub fn applied(&self) -> Result<AppliedState, ApplyError> {
        if let Some(f) = self.frozen.lock().as_ref() {
            return Ok(f.position.clone());
        }
        let row = match self.db.get(self.meta_bucket, APPLIED_ROW_KEY) {
            Ok(row) => row,
            // The shard gave its first bucket up: only a freeze does that.
            Err(cairn_engine::Error::NotOwned { .. }) => return self.load_frozen(),
            Err(e) => return Err(e.into()),
        };
        if let Some(record) = self.db.get(self.meta_bucket, FROZEN_ROW_KEY)? {
            // The freeze was stored but its shrink did not happen (a crash in between, or a snapshot
            // installed from a frozen replica): finish it.
            let bytes =
                record.column(0).ok_or_else(|| ApplyError::Corrupt("no freeze record column".into()))?;
            let record: FrozenRecord = super::decode(bytes).map_err(ApplyError::Corrupt)?;
            self.db.shrink_bucket(record.ranges.iter().map(|&(f, l)| f..=l).collect())?;
            return self.load_frozen();
        }
        let Some(row) = row else {
            return Ok((None, StoredMembershipOf::<TypeConfig>::default()));
        };
        let bytes = row.column(0).ok_or_else(|| ApplyError::Corrupt("no value column".into()))?;
        decode_position(bytes)
    }

    /// Reads a frozen shard's position and freeze record from its pre-shrink snapshot, and registers it
    /// with the node.
    fn load_frozen(&self) -> Result<AppliedState, ApplyError> {
        let Some((snapshot, _)) = self.db.last_release() else {
            return Err(ApplyError::Corrupt(format!(
                "the shard does not own its first bucket {} and gave nothing up",
                self.meta_bucket
            )));
        };
        let release = self.db.open_last_release()?.ok_or_else(|| ApplyError::Corrupt("no release".into()))?;
        let column = |row: Option<cairn_engine::Row>, what: &str| {
            row.and_then(|r| r.column(0).map(<[u8]>::to_vec)).ok_or_else(|| {
                ApplyError::Corrupt(format!("the shard gave its first bucket up without a freeze ({what})"))
            })
        };
        let position =
            decode_position(&column(release.get(self.meta_bucket, APPLIED_ROW_KEY)?, "position")?)?;
        let record: FrozenRecord =
            super::decode(&column(release.get(self.meta_bucket, FROZEN_ROW_KEY)?, "record")?)
                .map_err(ApplyError::Corrupt)?;
        let shard = FrozenShard {
            db_id: self.db.id(),
            snapshot,
            volume: self.db.snapshot_volume_url()?,
            ranges: record.ranges,
        };
        self.enter_frozen(Frozen { position: position.clone(), freeze_position: position.clone(), shard });
        Ok(position)
    }

    /// Records this shard as frozen, here and with its node.
    fn enter_frozen(&self, frozen: Frozen) {
        if let Some((shards, group)) = self.node.lock().as_ref() {
            shards.insert(*group, frozen.shard.clone());
        }
        *self.frozen.lock() = Some(frozen);
    }

    /// Links this applier to its node's frozen shards as group `group` (registering the freeze, if the
    /// shard is frozen).
    pub(crate) fn link(&self, shards: FrozenShards, group: u64) -> Result<(), ApplyError> {
        *self.node.lock() = Some((shards.clone(), group));
        if let Some(f) = self.frozen()? {
            shards.insert(group, f);
        }
        Ok(())
    }

    /// Applies `entries` (consecutive, after the applied position) in as few engine batches as their
    /// conditions allow: one, unless a conditional command follows writes it must see, in which case the
    /// writes so far are committed first. Every batch moves the applied position to its last entry.
    /// Returns one result per entry.
    pub fn apply(&self, entries: &[EntryOf<TypeConfig>]) -> Result<Vec<CommandResult>, ApplyError> {
        let mut cached = self.membership.lock();
        let mut membership = match cached.as_ref() {
            Some(m) => m.clone(),
            None => self.applied()?.1,
        };
        let mut results = Vec::with_capacity(entries.len());
        let mut batch = WriteBatch::new();
        // The last entry whose effect `batch` holds but which is not committed yet.
        let mut pending: Option<LogIdOf<TypeConfig>> = None;
        // Room left for the position row in a combined batch.
        let limit = self.db.max_batch_bytes().saturating_sub(POSITION_ROW_ROOM);
        for entry in entries {
            if self.frozen.lock().is_some() {
                results.push(self.apply_frozen(entry, &mut membership)?);
                *cached = Some(membership.clone());
                continue;
            }
            let mut result = CommandResult::Applied;
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Command::Check(check)) => {
                    // A digest must cover every entry up to and including this one: commit them all.
                    pending = None;
                    self.commit(std::mem::take(&mut batch), entry.log_id(), &membership)?;
                    *cached = Some(membership.clone());
                    results.push(self.run_check(entry.log_id().index, check)?);
                    continue;
                }
                EntryPayload::Normal(
                    Command::Split { new_group, ranges, voters, .. }
                    | Command::LegacySplit { new_group, ranges, voters },
                ) => {
                    // The shrink's snapshot must hold every entry before this one, and the shrink must
                    // not be lost to a crash before this entry's position is stored: commit up to the
                    // entry before, shrink (durable at once in the engine's manifest; a replay shrinks
                    // again, which the engine answers with the same snapshot), then store the position.
                    if let Some(upto) = pending.take() {
                        self.commit(std::mem::take(&mut batch), upto, &membership)?;
                        *cached = Some(membership.clone());
                    }
                    let first_leader = match &entry.payload {
                        EntryPayload::Normal(Command::Split { first_leader, .. }) => Some(*first_leader),
                        _ => None,
                    };
                    let (result, record) =
                        self.split(entry.log_id().index, *new_group, ranges, voters, first_leader)?;
                    self.commit(record, entry.log_id(), &membership)?;
                    *cached = Some(membership.clone());
                    results.push(result);
                    continue;
                }
                EntryPayload::Normal(Command::GcThreshold { wall_time }) => {
                    if let Some(upto) = pending.take() {
                        self.commit(std::mem::take(&mut batch), upto, &membership)?;
                    }
                    self.raise_gc_threshold(*wall_time, entry.log_id(), &membership)?;
                    *cached = Some(membership.clone());
                    results.push(CommandResult::Applied);
                    continue;
                }
                EntryPayload::Normal(Command::Freeze { ranges }) => {
                    // As a split: the pre-shrink snapshot holds every entry up to this one, whose position
                    // (and the freeze record) is committed before the shrink.
                    if let Some(upto) = pending.take() {
                        self.commit(std::mem::take(&mut batch), upto, &membership)?;
                    }
                    results.push(self.freeze(entry.log_id(), ranges, &membership)?);
                    *cached = Some(membership.clone());
                    continue;
                }
                EntryPayload::Normal(Command::Merge { right_group, ranges }) => {
                    // The import lands after every entry before this one, and is durable in the engine's
                    // manifest at once, while the position waits for a flush: so every entry before it
                    // is flushed first (a replay must not apply them to the new ownership), and the
                    // entry's own position right after (a replay must not start before the merge, whose
                    // frozen source may be gone by then).
                    if let Some(upto) = pending.take() {
                        self.commit(std::mem::take(&mut batch), upto, &membership)?;
                    }
                    self.db.flush()?;
                    let (result, cleanup) = self.merge(entry.log_id().index, *right_group, ranges)?;
                    self.commit(cleanup, entry.log_id(), &membership)?;
                    self.db.flush()?;
                    // The merge may have raised the threshold (to the frozen shard's): durable now.
                    self.db.raise_filter_threshold(self.gc_threshold()?);
                    *cached = Some(membership.clone());
                    results.push(result);
                    continue;
                }
                EntryPayload::Normal(command) => {
                    let appended = entry.log_id().committed_leader_id().term;
                    match command.rows(appended).map(|(bytes, conditions)| (self.checked(bytes), conditions))
                    {
                        Err(refused) => result = refused,
                        Ok((Err(cairn_engine::Error::NotOwned { bucket }), _)) => {
                            result = CommandResult::NotOwned { bucket }
                        }
                        Ok((Err(e), _)) => result = CommandResult::Rejected(e.to_string()),
                        Ok((Ok(own), conditions)) => {
                            // A condition must see the writes before it; a combined batch must stay
                            // within the engine's limit.
                            let must_commit =
                                !conditions.is_empty() || batch.encoded_len() + own.encoded_len() > limit;
                            if let (true, Some(upto)) = (must_commit, pending.take()) {
                                self.commit(std::mem::take(&mut batch), upto, &membership)?;
                                *cached = Some(membership.clone());
                            }
                            result = self.holds(conditions)?;
                            if result == CommandResult::Applied {
                                batch.extend_from_bytes(own.as_bytes())?;
                                self.checks.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                }
            }
            pending = Some(entry.log_id());
            results.push(result);
        }
        if let Some(upto) = pending {
            self.commit(batch, upto, &membership)?;
            *cached = Some(membership);
        }
        Ok(results)
    }

    /// Runs one step of a consistency check at entry `index` (everything up to it is in the engine).
    /// The digest is computed in the background on a read view taken here, so neither applies nor
    /// reads wait for a whole-shard hash.
    fn run_check(&self, index: u64, check: &Check) -> Result<CommandResult, ApplyError> {
        match check {
            Check::Record => {
                let view = self.db.view();
                // Hashed as compaction at the threshold as of this entry leaves the shard: replicas
                // that compacted at different times (at or below it) agree. The engine holds the
                // threshold this replica applied last (read here from memory: a read of the row could
                // wait on the shard's files, and applies must not).
                let threshold = self.db.filter_threshold();
                let filter =
                    move |db: &Db| (threshold > 0).then(|| db.compaction_filter_at(threshold)).flatten();
                if !self.checks.begin(index) {
                    // This check gets no digest here (it fails for want of a majority if others are
                    // busy too; the next one runs).
                    tracing::warn!(index, "consistency check: still hashing two earlier checks; skipped");
                } else if self.checks.inline.load(std::sync::atomic::Ordering::Relaxed) {
                    let digest = view.content_digest_filtered(0, || {}, filter(&self.db));
                    self.checks.finish(index, digest.map(|d| d.to_hex()));
                } else {
                    let board = self.checks.clone();
                    let filter = filter(&self.db);
                    let queued = super::digest::run(Box::new(move || {
                        // A hash that panics is a failed hash: the check entry must not stay "hashing".
                        let digest = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            view.content_digest_filtered(
                                super::digest::YIELD_EVERY_BYTES,
                                std::thread::yield_now,
                                filter,
                            )
                            .map(|d| d.to_hex())
                        }))
                        .unwrap_or_else(|_| {
                            Err(cairn_engine::Error::io(
                                "<digest>",
                                std::io::Error::other("the hash panicked"),
                            ))
                        });
                        board.finish(index, digest);
                    }));
                    if let Err(e) = queued {
                        self.checks.finish(index, Err(cairn_engine::Error::io("<digest thread>", e)));
                    }
                }
                Ok(CommandResult::Recorded)
            }
            Check::Compare { index: at, digest } => {
                let mut checks = self.checks.checks.lock();
                let result = checks.compare(*at, digest);
                if result.is_none() && checks.recorded.iter().any(|(i, d)| i == at && d.is_none()) {
                    // Still hashing: compared when the digest is ready.
                    checks.awaiting.push((*at, digest.clone()));
                }
                drop(checks);
                self.checks.publish(*at, result);
                Ok(CommandResult::Compared(result))
            }
        }
    }

    /// Writes `batch` with the applied position moved to `upto`.
    fn commit(
        &self,
        mut batch: WriteBatch,
        upto: LogIdOf<TypeConfig>,
        membership: &StoredMembershipOf<TypeConfig>,
    ) -> Result<(), ApplyError> {
        let state = (Some(upto), membership);
        let encoded = super::encode(&state).map_err(ApplyError::Corrupt)?;
        batch.put_row(self.meta_bucket, APPLIED_ROW_KEY, &[(0, &encoded)]);
        // The WAL is off for replicated shards: durability is the Raft log's job.
        self.db.write(batch, WriteOptions { sync: false })?;
        Ok(())
    }

    /// Makes the engine's contents the state of a group that starts at log position `(term 0, index)`
    /// with `members` (node → address) voting (durable once the engine flushes: the caller's start
    /// snapshot does): a split's new shard starts so on every replica that made it, while a replica
    /// without it starts with nothing and so can neither win an election against them nor serve before
    /// it has caught up.
    pub fn start_at(&self, index: u64, members: &BTreeMap<u64, String>) -> Result<(), ApplyError> {
        let voters: BTreeSet<u64> = members.keys().map(|n| super::replica_id(*n, 0)).collect();
        let nodes: BTreeMap<u64, openraft::BasicNode> = members
            .iter()
            .map(|(n, addr)| (super::replica_id(*n, 0), openraft::BasicNode::new(addr)))
            .collect();
        let membership = openraft::Membership::new(vec![voters], nodes)
            .map_err(|e| ApplyError::Corrupt(format!("a split's membership: {e}")))?;
        let at = LogIdOf::<TypeConfig>::new_term_index(0, index);
        let stored = StoredMembershipOf::<TypeConfig>::new(Some(at), membership);
        self.commit(WriteBatch::new(), at, &stored)?;
        *self.membership.lock() = Some(stored);
        Ok(())
    }

    /// `bytes` as a write batch, if they decode and the shard may apply it (owned buckets, limits).
    fn checked(&self, bytes: &[u8]) -> cairn_engine::Result<WriteBatch> {
        let mut own = WriteBatch::new();
        own.extend_from_bytes(bytes)?;
        self.db.check_batch(&own)?;
        Ok(own)
    }

    /// Whether every condition holds in the engine now: `Applied` if so (nothing is
    /// written yet), `ConditionFailed` if not, `Rejected` if a condition names a row the shard cannot
    /// hold. Storage failures are errors.
    fn holds(&self, conditions: &[Condition]) -> Result<CommandResult, ApplyError> {
        for condition in conditions {
            match self.check(condition) {
                Ok(true) => {}
                Ok(false) => return Ok(CommandResult::ConditionFailed),
                Err(e @ (cairn_engine::Error::NotOwned { .. } | cairn_engine::Error::InvalidArgument(_))) => {
                    return Ok(CommandResult::Rejected(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(CommandResult::Applied)
    }

    fn check(&self, condition: &Condition) -> cairn_engine::Result<bool> {
        match condition {
            Condition::ColumnIs { bucket, key, column, value } => {
                let row = self.db.get(*bucket, key)?;
                Ok(row.as_ref().and_then(|r| r.column(*column)) == value.as_deref())
            }
            Condition::ColumnBelow { bucket, key, column, value } => {
                let row = self.db.get(*bucket, key)?;
                Ok(row.as_ref().and_then(|r| r.column(*column)).is_some_and(|c| c < value.as_slice()))
            }
            Condition::Any(any) => {
                for c in any {
                    if self.check(c)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Condition::Not(inner) => Ok(!self.check(inner)?),
        }
    }
}

#[cfg(test)]
mod local_rows {
    /// The split record names the replica's own pre-split snapshot: it must stay out of the digests
    /// that consistency checks compare.
    #[test]
    fn the_split_record_is_local() {
        assert!(super::SPLIT_ROW_KEY.starts_with(cairn_engine::LOCAL_KEY_PREFIX));
    }

    /// A record kept before splits named a first leader still opens the new shard (whose group then
    /// elects); one kept now names it.
    #[test]
    fn split_records_of_both_shapes_decode() {
        let voters = vec![(1u64, "n1".to_string())];
        let legacy = crate::raft::encode(&(9u64, vec![(8u16, 15u16)], 4u64, voters.clone())).unwrap();
        let record = super::SplitRecord::decode(&legacy).unwrap();
        assert_eq!((record.new_group, record.snapshot, record.first_leader), (9, 4, None));
        let now = super::SplitRecord { first_leader: Some(1), ..record };
        let bytes = crate::raft::encode(&now).unwrap();
        assert_eq!(super::SplitRecord::decode(&bytes).unwrap(), now);
        assert!(super::SplitRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
