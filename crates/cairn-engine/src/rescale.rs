//! Online rescale: bucket ranges move between shards by metadata, not by copying data.
//!
//! - [`Db::shrink_bucket`] stops serving the ranges (in-flight writes finish first, later ones get
//!   `NotOwned`), takes the *pre-shrink snapshot*, then in one manifest edit gives the ranges up: files
//!   holding released buckets get a bucket filter (or drop out of the tree when nothing of theirs stays
//!   visible; the snapshot's links keep them). A `RELEASED` record next to the snapshot tells importers
//!   the ranges are free. Compaction later rewrites filtered files without the hidden entries.
//! - [`Db::expand_bucket`] imports, by reference, the files of another shard's pre-shrink snapshot that
//!   hold the ranges: each is linked into the shard under a fresh number with a filter showing only the
//!   imported buckets, and placed so that newer data stays above older (see [`place`]). One manifest edit
//!   adds the files, takes ownership and raises the sequence floor above the source's, so new writes
//!   shadow imported data.
//!
//! Order (the seed's): shrink every involved shard, then expand.

use crate::bucket::{BucketRange, BucketSet};
use crate::config::NUM_LEVELS;
use crate::db::{Db, DbInner};
use crate::error::{Error, Result};
use crate::snapshot::{load_verified_snapshot, snapshot_dir};
use crate::version::{TableFile, Version};
use crate::version_edit::{FileMeta, VersionEdit};
use crate::version_set::table_path;
use crate::volume::{self, ResolvedVolume};
use std::path::Path;
use std::sync::Arc;

/// Name of the record a shrink leaves in its pre-shrink snapshot's directory: the ranges released.
pub const RELEASE_FILE: &str = "RELEASED";

/// What an expand did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpandStats {
    /// Source files imported (linked, or copied when the snapshot volume is another file system).
    pub files_imported: u64,
    /// Bytes copied (0 when every file was linked).
    pub bytes_copied: u64,
}

/// The first bucket of `set`, for error messages.
fn first(set: &BucketSet) -> Option<u16> {
    set.ranges().first().map(|r| *r.start())
}

/// The buckets of `file` that are visible: its key span, narrowed by its filter.
fn visible(file: &TableFile) -> BucketSet {
    let span = BucketSet::of(file.bucket_span());
    match &file.filter {
        Some(filter) => filter.intersect(&span),
        None => span,
    }
}

fn write_release(
    volume: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
    ranges: &[BucketRange],
) -> Result<()> {
    let path = snapshot_dir(volume, db_id, snapshot_id).join(RELEASE_FILE);
    volume::write_atomic(volume.fs.as_ref(), &path, &volume::encode_checked_json(&ranges)?)
}

/// The ranges a shrink recorded as released after snapshot `dir`, if any.
fn read_release(volume: &ResolvedVolume, dir: &Path, total_buckets: u32) -> Result<BucketSet> {
    let path = dir.join(RELEASE_FILE);
    match crate::snapshot::file_len(volume.fs.as_ref(), &path)? {
        None => Ok(BucketSet::default()),
        Some(_) => {
            let ranges: Vec<BucketRange> = volume::decode_checked_json(&path, &volume.fs.read_all(&path)?)?;
            BucketSet::new(&ranges, total_buckets)
                .map_err(|e| Error::corruption(&path, format!("bad released ranges: {e}")))
        }
    }
}

/// Target levels for imported files, given by source level: source L0 files go to L0 (ordered there by
/// sequence, as in the source); files of deeper source levels go to strictly deeper target levels than
/// files of shallower ones (so an older version never sits above a newer one), each at a level where it
/// overlaps no file already there. `None` if no such placement exists (the shard's own files span the
/// imported key range at every candidate level).
pub(crate) fn place(v: &Version, imports: &[(usize, Arc<TableFile>)]) -> Option<Vec<usize>> {
    let mut targets = vec![0; imports.len()];
    let mut ceiling = NUM_LEVELS;
    for src_level in (1..NUM_LEVELS).rev() {
        let group: Vec<usize> = (0..imports.len()).filter(|&i| imports[i].0 == src_level).collect();
        if group.is_empty() {
            continue;
        }
        let fits = |t: usize| {
            group.iter().all(|&i| {
                let f = &imports[i].1;
                v.levels[t]
                    .iter()
                    .all(|o| !o.overlaps(Some(f.smallest_user_key()), Some(f.largest_user_key())))
            })
        };
        let t = (1..ceiling).rev().find(|&t| fits(t))?;
        for i in group {
            targets[i] = t;
        }
        ceiling = t;
    }
    Some(targets)
}

/// Holds compactions off while a rescale step edits the tree (a job planned on the old tree would write
/// released entries back unfiltered, or delete a file the step dropped).
struct CompactionPause<'a>(&'a DbInner);

impl<'a> CompactionPause<'a> {
    fn new(db: &'a DbInner) -> CompactionPause<'a> {
        let mut state = db.state.lock();
        state.rescale_pending = true;
        db.bg_cv.notify_all();
        while state.compacting && !state.closing && state.poisoned.is_none() {
            db.bg_cv.wait(&mut state);
        }
        CompactionPause(db)
    }
}

impl Drop for CompactionPause<'_> {
    fn drop(&mut self) {
        self.0.state.lock().rescale_pending = false;
        self.0.bg_cv.notify_all();
    }
}

impl Db {
    /// Gives up `ranges`: takes the pre-shrink snapshot (every write acknowledged before the call is in
    /// it) and returns its id, the source for [`Db::expand_bucket`] on the shards that take the ranges
    /// over. From the moment the call starts, reads and writes of the ranges get `NotOwned`. No data is
    /// rewritten: released entries stay in the files, hidden by bucket filters, until compaction drops
    /// them.
    ///
    /// Calling it again with ranges an interrupted call already released (the shard no longer owns them)
    /// completes that call and returns the same snapshot id.
    pub fn shrink_bucket(&self, ranges: Vec<BucketRange>) -> Result<u64> {
        let inner = &self.inner;
        let total = inner.config.total_buckets;
        let _one_at_a_time = inner.rescale_lock.lock();
        let release = BucketSet::new(&ranges, total)?;
        if release.is_empty() {
            return Err(Error::InvalidArgument("shrink_bucket needs at least one bucket range".into()));
        }
        let volume = inner.config.resolve_snapshot_volume()?;
        let owned = inner.state.lock().owned.clone();
        if let Some(bucket) = first(&release.subtract(&owned)) {
            let last = inner.versions.lock().state().last_release.clone();
            if let Some((sid, released)) = last
                && release.subtract(&BucketSet::new(&released, total)?).is_empty()
                && release.intersect(&owned).is_empty()
            {
                write_release(&volume, &inner.db_id, sid, &released)?;
                return Ok(sid);
            }
            return Err(Error::InvalidArgument(format!(
                "shrink_bucket: this shard does not own bucket {bucket}"
            )));
        }
        let remaining = owned.subtract(&release);
        // Stop serving the ranges: wait out writes past their ownership check, refuse the rest.
        {
            let _no_writes_in_flight = inner.ownership_gate.write();
            inner.state.lock().owned = remaining.clone();
        }
        let result = self.release(&volume, &release, &remaining);
        if result.is_err() {
            // Not given up durably: serve the ranges again (unless the Db is poisoned anyway).
            let durable = inner.versions.lock().state().owned.clone();
            inner.state.lock().owned = durable;
        }
        inner.bg_cv.notify_all();
        result
    }

    fn release(&self, volume: &ResolvedVolume, release: &BucketSet, remaining: &BucketSet) -> Result<u64> {
        let inner = &self.inner;
        let snapshot_id = self.snapshot()?;
        let mut edit = VersionEdit {
            owned_buckets: Some(remaining.ranges().to_vec()),
            last_release: Some((snapshot_id, release.ranges().to_vec())),
            ..VersionEdit::default()
        };
        let _paused = CompactionPause::new(inner);
        let mut versions = inner.versions.lock();
        for (level, files) in versions.current().levels.iter().enumerate() {
            for f in files {
                let shown = visible(f);
                if !shown.intersect(release).is_empty() {
                    let keep = shown.subtract(release);
                    if keep.is_empty() {
                        edit.deleted.push((level, f.meta.number));
                    } else {
                        edit.filters.push((f.meta.number, keep.ranges().to_vec()));
                    }
                }
            }
        }
        let version = match versions.log_and_apply(edit) {
            Ok(v) => v,
            Err(e) => {
                inner.poison(format!("manifest write failed: {e}"));
                return Err(e);
            }
        };
        inner.state.lock().version = version;
        drop(versions);
        inner.purge_obsolete_files();
        write_release(volume, &inner.db_id, snapshot_id, release.ranges())?;
        Ok(snapshot_id)
    }

    /// Takes over `ranges` from shard `source_db_id`'s snapshot `snapshot_id` (the id its
    /// [`Db::shrink_bucket`] returned), found on this shard's snapshot volume. The snapshot's files that
    /// hold the ranges are linked in (no bytes copied on one file system) and show only the imported
    /// buckets; new writes layer on top. Refused, with the bucket named: ranges the snapshot's shard did
    /// not own, ranges it has not released by a shrink, ranges this shard already owns, an unknown
    /// shard or snapshot.
    pub fn expand_bucket(
        &self,
        source_db_id: &str,
        snapshot_id: u64,
        ranges: Vec<BucketRange>,
    ) -> Result<ExpandStats> {
        let inner = &self.inner;
        let config = &inner.config;
        let total = config.total_buckets;
        let _one_at_a_time = inner.rescale_lock.lock();
        let want = BucketSet::new(&ranges, total)?;
        if want.is_empty() {
            return Err(Error::InvalidArgument("expand_bucket needs at least one bucket range".into()));
        }
        let volume = config.resolve_snapshot_volume()?;
        let (src_dir, loaded) = load_verified_snapshot(&volume, source_db_id, snapshot_id, total)?;
        if let Some(b) = first(&want.subtract(&loaded.state.owned)) {
            return Err(Error::InvalidArgument(format!(
                "bucket {b} is not in snapshot {source_db_id}/{snapshot_id} (it holds {:?})",
                loaded.state.owned.ranges()
            )));
        }
        if let Some(b) = first(&want.subtract(&read_release(&volume, &src_dir, total)?)) {
            return Err(Error::InvalidArgument(format!(
                "shard {source_db_id} still owns bucket {b}: shrink it first and expand from the snapshot \
                 shrink_bucket returned ({snapshot_id} released no such range)"
            )));
        }
        if let Some(b) = first(&want.intersect(&inner.state.lock().owned)) {
            return Err(Error::InvalidArgument(format!("this shard already owns bucket {b}")));
        }
        let imports: Vec<(usize, Arc<TableFile>, BucketSet)> = loaded
            .version
            .levels
            .iter()
            .enumerate()
            .flat_map(|(level, files)| files.iter().map(move |f| (level, f)))
            .filter_map(|(level, f)| {
                let shown = visible(f).intersect(&want);
                (!shown.is_empty()).then(|| (level, Arc::clone(f), shown))
            })
            .collect();
        let by_level: Vec<(usize, Arc<TableFile>)> =
            imports.iter().map(|(l, f, _)| (*l, Arc::clone(f))).collect();
        // Own files whose key span crosses the imported range only because they still hold hidden
        // (released) entries stop crossing it once compaction rewrites them: do that first if needed.
        if place(inner.versions.lock().current(), &by_level).is_none() {
            self.compact()?;
        }
        // Link the files in under fresh numbers; nothing refers to them until the edit below.
        let mut stats = ExpandStats::default();
        let mut added = Vec::with_capacity(imports.len());
        for (_, f, shown) in &imports {
            let number = inner.versions.lock().new_file_number();
            let src = table_path(&src_dir, f.meta.number);
            stats.bytes_copied +=
                volume::transfer(&volume.fs, &src, &config.fs, &table_path(&config.dir, number))?;
            stats.files_imported += 1;
            added.push((FileMeta { number, ..f.meta.clone() }, shown.clone()));
        }
        config.fs.sync_dir(&config.dir)?;
        let _paused = CompactionPause::new(inner);
        let _no_writes_in_flight = inner.ownership_gate.write();
        let mut versions = inner.versions.lock();
        let Some(levels) = place(versions.current(), &by_level) else {
            drop(versions);
            for (meta, _) in &added {
                let _ = config.fs.remove(&table_path(&config.dir, meta.number));
            }
            return Err(Error::InvalidArgument(format!(
                "cannot import {:?} without copying: this shard's own files span those buckets at every \
                 level (it owns buckets on both sides of them)",
                want.ranges()
            )));
        };
        let owned = inner.state.lock().owned.union(&want);
        let mut edit = VersionEdit {
            owned_buckets: Some(owned.ranges().to_vec()),
            last_sequence: Some(loaded.state.last_sequence.max(versions.state().last_sequence)),
            ..VersionEdit::default()
        };
        for (((meta, shown), level), (_, f)) in added.into_iter().zip(levels).zip(&by_level) {
            // A filter only where part of the file stays hidden: that part is what compaction reclaims.
            if shown != BucketSet::of(f.bucket_span()) {
                edit.filters.push((meta.number, shown.ranges().to_vec()));
            }
            edit.added.push((level, meta));
        }
        let version = match versions.log_and_apply(edit) {
            Ok(v) => v,
            Err(e) => {
                inner.poison(format!("manifest write failed: {e}"));
                return Err(e);
            }
        };
        inner.commit.raise_sequence(inner, loaded.state.last_sequence);
        {
            let mut state = inner.state.lock();
            state.version = version;
            state.owned = owned;
        }
        drop(versions);
        inner.bg_cv.notify_all();
        Ok(stats)
    }
}
