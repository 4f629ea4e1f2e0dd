//! `Db`: one shard. Owns a set of bucket ranges and stores rows keyed by (bucket, key) in an LSM tree.
//!
//! Threads: callers write through the group-commit queue (`commit.rs`) and read lock-free from a
//! pinned [`SuperVersion`]; one background thread flushes immutable memtables (`flush.rs`), another
//! compacts (`compaction.rs`).

use crate::batch::WriteBatch;
use crate::bucket::{BucketRange, BucketSet};
use crate::config::Config;
use crate::db_iter::DbIter;
use crate::error::{Error, Result};
use crate::fs::FileLock;
use crate::keys::{self, MAX_KEY_BYTES};
use crate::memtable::Memtable;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::row::Row;
use crate::table_cache::TableCache;
use crate::version::{ObsoleteFiles, Version};
use crate::version_set::VersionSet;
use crate::view::View;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Per-write options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Fsync the WAL before acknowledging: the write then survives power loss, not just a process crash.
    /// Default: false (the WAL is still written to the OS before the write is acknowledged).
    pub sync: bool,
}

/// The sources a read consults, pinned together.
pub(crate) struct SuperVersion {
    pub(crate) mem: Arc<Memtable>,
    /// Oldest first.
    pub(crate) imm: Vec<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
}

/// State guarded by `DbInner::state`.
pub(crate) struct State {
    pub(crate) mem: Arc<Memtable>,
    /// Immutable memtables waiting for flush, oldest first.
    pub(crate) imm: VecDeque<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
    /// Shared with the views taken while it was current (a rescale replaces it, never edits it).
    pub(crate) owned: Arc<BucketSet>,
    /// Read sequence numbers pinned by live views, with counts.
    pub(crate) pinned: BTreeMap<u64, usize>,
    /// Set when a write, sync or background job failed: writes are refused from then on.
    pub(crate) poisoned: Option<String>,
    pub(crate) closing: bool,
    /// A caller asked for a full compaction; the compactor serves it and clears it.
    pub(crate) manual_compaction: bool,
    /// Bumped after every flush or compaction, so waiters can tell that progress happened.
    pub(crate) bg_generation: u64,
    pub(crate) compacting: bool,
    /// Rescale steps about to edit the tree, and callers holding compactions ahead of one: while any
    /// is, the compactor finishes its job and starts no other.
    pub(crate) compaction_holds: u32,
}

pub(crate) struct DbInner {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    /// Signalled on flush/compaction progress, new immutable memtables, and close.
    pub(crate) bg_cv: Condvar,
    pub(crate) commit: crate::commit::CommitQueue,
    pub(crate) versions: Mutex<VersionSet>,
    /// Largest sequence number visible to readers. INVARIANT: every entry with seq <= visible_seq is in a
    /// memtable or SST file reachable from the current state.
    pub(crate) visible_seq: AtomicU64,
    /// What compaction filters get as [`crate::CompactionContext::threshold`]; only ever raised.
    pub(crate) filter_threshold: AtomicU64,
    pub(crate) table_cache: Arc<TableCache>,
    pub(crate) obsolete: Arc<ObsoleteFiles>,
    pub(crate) metrics: Metrics,
    /// The shard's identity (fixed at creation).
    pub(crate) db_id: String,
    /// Serializes `Db::snapshot` calls.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Serializes rescale steps (`shrink_bucket`, `expand_bucket`).
    pub(crate) rescale_lock: Mutex<()>,
    /// Writers hold it shared from their ownership check until their batch is committed; a rescale
    /// step takes it exclusively to change ownership, so no write to a moving bucket is in flight.
    pub(crate) ownership_gate: parking_lot::RwLock<()>,
    /// The directory lock; `None` for read-only snapshots, which nothing modifies.
    pub(crate) _lock: Option<Box<dyn FileLock>>,
}

/// One shard's database. Cheap to share across threads by reference (`Db: Sync`).
pub struct Db {
    pub(crate) inner: Arc<DbInner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.config.dir).finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (or creates) the shard in `config.dir`, owning `bucket_ranges` of `0..config.total_buckets`.
    /// An existing shard must be reopened with the ranges it owns.
    pub fn open(config: Config, bucket_ranges: Vec<BucketRange>) -> Result<Db> {
        config.validate()?;
        let owned = BucketSet::new(&bucket_ranges, config.total_buckets)?;
        Db::start(crate::recovery::open_inner(config, Some(owned))?)
    }

    /// Opens the existing shard in `config.dir` with the buckets its manifest says it owns (a shard's
    /// ranges change with rescales: the manifest is where they are recorded). Refused if there is none.
    pub fn open_as_stored(config: Config) -> Result<Db> {
        config.validate()?;
        Db::start(crate::recovery::open_inner(config, None)?)
    }

    fn start(inner: DbInner) -> Result<Db> {
        let inner = Arc::new(inner);
        let threads =
            vec![crate::flush::spawn(Arc::clone(&inner))?, crate::compaction::spawn(Arc::clone(&inner))?];
        Ok(Db { inner, threads: Mutex::new(threads) })
    }

    /// The last ranges this shard gave up ([`Db::shrink_bucket`]) and the pre-shrink snapshot that
    /// holds them.
    pub fn last_release(&self) -> Option<(u64, Vec<BucketRange>)> {
        self.inner.versions.lock().state().last_release.clone()
    }

    /// The URL of the volume this shard's snapshots go to.
    pub fn snapshot_volume_url(&self) -> Result<String> {
        self.inner.config.snapshot_volume_url()
    }

    /// Sets `column` of row `key` in `bucket`.
    pub fn put(&self, bucket: u16, key: &[u8], column: u16, value: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put(bucket, key, column, value);
        self.write(b, WriteOptions::default())
    }

    /// Deletes the whole row `key` in `bucket`.
    pub fn delete(&self, bucket: u16, key: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(bucket, key);
        self.write(b, WriteOptions::default())
    }

    /// Deletes one column of row `key` in `bucket`.
    pub fn delete_column(&self, bucket: u16, key: &[u8], column: u16) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete_column(bucket, key, column);
        self.write(b, WriteOptions::default())
    }

    /// Applies `batch` atomically: readers see all of it or none of it, and after a crash it is either
    /// wholly recovered or wholly absent.
    pub fn write(&self, batch: WriteBatch, options: WriteOptions) -> Result<()> {
        self.write_batch(batch, options)
    }

    /// Same as [`Db::write`] (the seed's name).
    pub fn write_batch(&self, batch: WriteBatch, options: WriteOptions) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_limits(self.inner.config.max_value_bytes, self.inner.config.max_batch_bytes)?;
        let _owned_until_committed = self.inner.ownership_gate.read();
        self.check_owned(&batch)?;
        crate::commit::write(&self.inner, batch, options)
    }

    /// Checks what [`Db::write`] checks before committing (sizes within the limits, every bucket
    /// owned) without writing: `Ok` means `write` would not reject the batch as given.
    pub fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        batch.check_limits(self.inner.config.max_value_bytes, self.inner.config.max_batch_bytes)?;
        self.check_owned(batch)
    }

    fn check_owned(&self, batch: &WriteBatch) -> Result<()> {
        let state = self.inner.state.lock();
        match batch.buckets().find(|b| !state.owned.contains(*b)) {
            Some(bucket) => Err(Error::NotOwned { bucket }),
            None => Ok(()),
        }
    }

    /// The largest encoded batch [`Db::write`] accepts (`Config::max_batch_bytes`).
    pub fn max_batch_bytes(&self) -> usize {
        self.inner.config.max_batch_bytes
    }

    /// The row `key` in `bucket`, or `None` if it has no live column.
    pub fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<Row>> {
        check_key(key)?;
        let (sv, seq) = self.inner.read_point(bucket)?;
        crate::read::get(&self.inner, &sv, seq, &keys::user_key(bucket, key))
    }

    /// Several rows at one point in time; results are in the order of `keys`.
    pub fn multi_get(&self, keys: &[(u16, &[u8])]) -> Result<Vec<Option<Row>>> {
        let view = self.view();
        keys.iter().map(|(b, k)| view.get(*b, k)).collect()
    }

    /// Rows of `bucket` whose keys fall in `range`, in key order.
    pub fn scan<'a>(&self, bucket: u16, range: impl RangeBounds<&'a [u8]>) -> Result<DbIter> {
        self.view().scan(bucket, range)
    }

    /// Every row of the buckets in `buckets`, in (bucket, key) order. Every bucket must be owned.
    pub fn scan_buckets(&self, buckets: BucketRange) -> Result<DbIter> {
        self.view().scan_buckets(buckets)
    }

    /// Raises the threshold compaction filters are created with ([`crate::CompactionContext::threshold`]) to
    /// `threshold`, if it is higher; compactions that start from now on see it. Not stored: the owner
    /// sets it again after an open.
    pub fn raise_filter_threshold(&self, threshold: u64) {
        self.inner.filter_threshold.fetch_max(threshold, Ordering::AcqRel);
    }

    /// The threshold compaction filters are created with now (0 until set).
    pub fn filter_threshold(&self) -> u64 {
        self.inner.filter_threshold.load(Ordering::Acquire)
    }

    /// A compaction filter as one running now at the bottom level would get it, but with `threshold`
    /// (`None` without a filter factory): what the shard's rows look like once compaction has applied
    /// that threshold everywhere, for digests that must not depend on when each replica compacted.
    pub fn compaction_filter_at(&self, threshold: u64) -> Option<Box<dyn crate::CompactionFilter>> {
        let factory = self.inner.config.compaction_filter.as_ref()?;
        Some(factory.create(crate::CompactionContext {
            output_level: crate::compaction_picker::LAST_LEVEL,
            bottommost: true,
            threshold,
        }))
    }

    /// A read view pinned at the current point: its reads ignore later writes, and the data it sees is
    /// kept by compaction until the view is dropped.
    pub fn view(&self) -> View {
        View::new(Arc::clone(&self.inner))
    }

    /// Flushes the memtable to an SST file and waits until it is durable in the tree.
    pub fn flush(&self) -> Result<()> {
        crate::flush::flush_and_wait(&self.inner)
    }

    /// Flushes, then compacts until the whole tree sits in the bottom level (tombstones and shadowed
    /// versions dropped where no view needs them). Blocks until done.
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        crate::compaction::compact_all_and_wait(&self.inner)
    }

    /// The bucket ranges this shard owns.
    pub fn owned_buckets(&self) -> Vec<BucketRange> {
        self.inner.state.lock().owned.ranges().to_vec()
    }

    /// About how many bytes each owned bucket holds, in bucket order (buckets holding none left out):
    /// each table file's size spread evenly over the buckets its keys span, counted for the buckets this
    /// shard owns and the file shows (so a shrink's hidden entries count for nobody), and the memtables'
    /// bytes spread evenly over the owned buckets. Old versions and tombstones count until compaction
    /// drops them.
    pub fn bucket_bytes(&self) -> Vec<(u16, u64)> {
        let (version, owned, memtable) = {
            let state = self.inner.state.lock();
            let memtable = state.mem.approximate_bytes()
                + state.imm.iter().map(|i| i.approximate_bytes()).sum::<usize>();
            (Arc::clone(&state.version), Arc::clone(&state.owned), memtable as u64)
        };
        let mut bytes: BTreeMap<u16, u64> = BTreeMap::new();
        for file in version.all_files() {
            let span = file.bucket_span();
            let width = u64::from(*span.end() - *span.start()) + 1;
            let share = file.meta.size / width;
            for bucket in span.filter(|b| owned.contains(*b) && file.shows(*b)) {
                *bytes.entry(bucket).or_default() += share;
            }
        }
        let owned_count: u64 = owned.ranges().iter().map(|r| u64::from(*r.end() - *r.start()) + 1).sum();
        if memtable > 0 && owned_count > 0 {
            let share = memtable / owned_count;
            for bucket in owned.ranges().iter().flat_map(|r| r.clone()) {
                *bytes.entry(bucket).or_default() += share;
            }
        }
        bytes.into_iter().filter(|(_, b)| *b > 0).collect()
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics_snapshot()
    }

    /// Stops background work and releases the directory. Writes acknowledged before are in the WAL (or,
    /// with the WAL off, flushed here). Dropping a `Db` does the same.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let mut result = Ok(());
        if !self.inner.config.wal && !self.inner.state.lock().closing {
            result = self.flush();
        }
        {
            let mut state = self.inner.state.lock();
            state.closing = true;
        }
        self.inner.bg_cv.notify_all();
        for t in self.threads.lock().drain(..) {
            // A panicked background thread already recorded nothing useful; keep closing.
            let _ = t.join();
        }
        result
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `close` returns them.
        let _ = self.shutdown();
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

/// Turns a key range within one bucket into user-key bounds `[start, end)`.
pub(crate) fn bucket_key_bounds<'a>(
    bucket: u16,
    range: impl RangeBounds<&'a [u8]>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = match range.start_bound() {
        Bound::Included(k) => keys::user_key(bucket, k),
        Bound::Excluded(k) => {
            let mut s = keys::user_key(bucket, k);
            s.push(0);
            s
        }
        Bound::Unbounded => keys::user_key(bucket, &[]),
    };
    let end = match range.end_bound() {
        Bound::Included(k) => {
            let mut e = keys::user_key(bucket, k);
            e.push(0);
            Some(e)
        }
        Bound::Excluded(k) => Some(keys::user_key(bucket, k)),
        Bound::Unbounded => bucket.checked_add(1).map(|b| b.to_be_bytes().to_vec()),
    };
    (start, end)
}

impl DbInner {
    /// Checks ownership of `bucket` and pins the sources for a read at the visible sequence.
    pub(crate) fn read_point(&self, bucket: u16) -> Result<(SuperVersion, u64)> {
        let state = self.state.lock();
        if !state.owned.contains(bucket) {
            return Err(Error::NotOwned { bucket });
        }
        let seq = self.visible_seq.load(Ordering::Acquire);
        Ok((SuperVersion::of(&state), seq))
    }

    pub(crate) fn poison(&self, why: String) {
        let mut state = self.state.lock();
        if state.poisoned.is_none() {
            state.poisoned = Some(why);
        }
        drop(state);
        self.bg_cv.notify_all();
    }

    pub(crate) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut m = self.metrics.counters();
        let state = self.state.lock();
        m.memtable_bytes = (state.mem.approximate_bytes()
            + state.imm.iter().map(|i| i.approximate_bytes()).sum::<usize>())
            as u64;
        m.immutable_memtables = state.imm.len() as u64;
        m.level_files = state.version.level_files().to_vec();
        m.level_bytes = state.version.level_bytes().to_vec();
        m.filtered_files = state.version.all_files().filter(|f| f.filter.is_some()).count() as u64;
        drop(state);
        m.block_cache_hits = self.table_cache.block_cache().hits();
        m.block_cache_misses = self.table_cache.block_cache().misses();
        m
    }

    /// Deletes files that no version references any more.
    pub(crate) fn purge_obsolete_files(&self) {
        if self.state.lock().closing {
            return;
        }
        for number in self.obsolete.take() {
            self.table_cache.evict(number);
            let path = crate::version_set::table_path(&self.config.dir, number);
            // A failed delete leaves garbage that the next open sweeps; it loses no data.
            let _ = self.config.fs.remove(&path);
        }
    }
}

impl SuperVersion {
    pub(crate) fn of(state: &State) -> SuperVersion {
        SuperVersion {
            mem: Arc::clone(&state.mem),
            imm: state.imm.iter().cloned().collect(),
            version: Arc::clone(&state.version),
        }
    }
}
