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
//!   shadow imported data. If no placement exists (the shard owns buckets on both sides of the range,
//!   so its files span it at every level), the rows are copied, folded, into new L0 files instead.
//!
//! Order (the seed's): shrink every involved shard, then expand.

use crate::bucket::{BucketRange, BucketSet};
use crate::config::NUM_LEVELS;
use crate::db::{Db, DbInner};
use crate::error::{Error, Result};
use crate::keys::{self, Kind};
use crate::read_only::ReadOnlyDb;
use crate::row;
use crate::snapshot::{load_verified_snapshot, snapshot_dir};
use crate::sst::TableBuilder;
use crate::version::{TableFile, Version};
use crate::version_edit::{FileMeta, VersionEdit};
use crate::version_set::table_path;
use crate::volume::{self, ResolvedVolume};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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

/// Prefix of the claim files an expand leaves in the source snapshot's directory, one per imported range:
/// `CLAIM-<start>-<end>` holding the importer's id. A released range is imported once.
pub const CLAIM_PREFIX: &str = "CLAIM-";

/// Checks no other shard claimed any of `want` from snapshot `dir`, then claims it for `importer`.
fn claim(volume: &ResolvedVolume, dir: &Path, want: &BucketSet, importer: &str, total: u32) -> Result<()> {
    for name in volume.fs.list(dir)? {
        let Some(range) = name.strip_prefix(CLAIM_PREFIX) else { continue };
        let path = dir.join(&name);
        let bounds =
            range.split_once('-').and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)));
        let Some((start, end)) = bounds.filter(|(a, b)| a <= b) else {
            return Err(Error::corruption(&path, "bad claim file name"));
        };
        let holder: String = volume::decode_checked_json(&path, &volume.fs.read_all(&path)?)?;
        let taken = BucketSet::new(&[start..=end], total)?.intersect(want);
        if let Some(b) = first(&taken)
            && holder != importer
        {
            return Err(Error::InvalidArgument(format!(
                "bucket {b} of this snapshot was already imported by shard {holder}"
            )));
        }
    }
    for r in want.ranges() {
        let path = dir.join(format!("{CLAIM_PREFIX}{}-{}", r.start(), r.end()));
        volume::write_atomic(volume.fs.as_ref(), &path, &volume::encode_checked_json(&importer)?)?;
    }
    Ok(())
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
/// released entries back unfiltered, or delete a file the step dropped), or while a caller holds them
/// ahead of one ([`CompactionHold`]). Pauses nest: compactions resume when the last one ends.
struct CompactionPause<'a>(&'a DbInner);

impl<'a> CompactionPause<'a> {
    fn new(db: &'a DbInner) -> Result<CompactionPause<'a>> {
        begin_pause(db)?;
        Ok(CompactionPause(db))
    }
}

impl Drop for CompactionPause<'_> {
    fn drop(&mut self) {
        end_pause(self.0);
    }
}

/// Starts a pause of compactions: returns once none runs (a running one finishes first). On an error
/// the pause has ended already.
fn begin_pause(db: &DbInner) -> Result<()> {
    let mut state = db.state.lock();
    state.compaction_holds += 1;
    db.bg_cv.notify_all();
    while state.compacting && !state.closing && state.poisoned.is_none() {
        db.bg_cv.wait(&mut state);
    }
    // A job may still be running (it would commit outputs planned on the old tree): give up.
    let failed = match (&state.poisoned, state.closing) {
        (Some(why), _) => Some(Error::Poisoned(why.clone())),
        (None, true) => Some(Error::Closed),
        (None, false) => None,
    };
    drop(state);
    match failed {
        Some(e) => {
            end_pause(db);
            Err(e)
        }
        None => Ok(()),
    }
}

fn end_pause(db: &DbInner) {
    let mut state = db.state.lock();
    state.compaction_holds = state.compaction_holds.saturating_sub(1);
    drop(state);
    db.bg_cv.notify_all();
}

/// Level-0 files a [`Db::hold_compactions`] leaves below the count that stops writes: room for the
/// flushes while it holds.
const HOLD_ROOM: usize = 4;

/// Compactions held off until this drops ([`Db::hold_compactions`]). It does not keep the shard open:
/// once the shard is closed and gone, dropping it does nothing.
pub struct CompactionHold {
    db: std::sync::Weak<DbInner>,
}

impl Drop for CompactionHold {
    fn drop(&mut self) {
        if let Some(db) = self.db.upgrade() {
            end_pause(&db);
        }
    }
}

impl std::fmt::Debug for CompactionHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompactionHold")
    }
}

impl Db {
    /// Holds compactions off until the returned hold drops: waits for a running one to finish, and
    /// none starts meanwhile (flushes go on). For a caller about to rescale the shard: the step then
    /// has no compaction to wait for. `None` (nothing held) if level 0 is within a few files of the
    /// count that stops writes: a writer stalled there waits for a compaction (holding the commit
    /// path, so a flush would wait too). Level 0 grows while held, so hold it briefly.
    pub fn hold_compactions(&self) -> Result<Option<CompactionHold>> {
        let level0 = self.inner.state.lock().version.level_files()[0];
        if level0 + HOLD_ROOM >= self.inner.config.l0_stop_writes_trigger {
            return Ok(None);
        }
        begin_pause(&self.inner)?;
        Ok(Some(CompactionHold { db: Arc::downgrade(&self.inner) }))
    }

    /// Gives up `ranges`: takes the pre-shrink snapshot (every write acknowledged before the call is in
    /// it) and returns its id, the source for [`Db::expand_bucket`] on the shards that take the ranges
    /// over. From the moment the call starts, reads and writes of the ranges get `NotOwned`. No data is
    /// rewritten: released entries stay in the files, hidden by bucket filters, until compaction drops
    /// them.
    ///
    /// Calling it again with ranges an interrupted call already released (the shard no longer owns them)
    /// completes that call and returns the same snapshot id.
    ///
    /// The seed's example, 2 shards → 3 (see docs/rescale.md):
    ///
    /// ```
    /// use cairn_engine::{Config, Db, Error, Volume};
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    /// let shard = |name: &str| {
    ///     let mut c = Config::new(tmp.path().join(name));
    ///     c.snapshot_volume = Some(snapvol.clone()); // shards that trade buckets share one
    ///     c
    /// };
    /// let a = Db::open(shard("a"), vec![0..=511])?;
    /// let b = Db::open(shard("b"), vec![512..=1023])?;
    /// a.put(400, b"moves-to-b", 0, b"1")?;
    /// b.put(900, b"moves-to-c", 0, b"2")?;
    ///
    /// // Step 0: C starts from B's snapshot (in a cluster: B's part of the latest global snapshot).
    /// let c = Db::open_from_snapshot(shard("c"), b.snapshot()?, b.id())?;
    /// // Phase 1: every involved shard shrinks.
    /// let snap_a = a.shrink_bucket(vec![342..=511])?;
    /// b.shrink_bucket(vec![684..=1023])?;
    /// c.shrink_bucket(vec![512..=683])?;
    /// // Phase 2: expand. B imports 342..=511 from A's pre-shrink snapshot, by reference.
    /// let stats = b.expand_bucket(&a.id(), snap_a, vec![342..=511])?;
    /// assert_eq!(stats.bytes_copied, 0);
    ///
    /// assert_eq!(b.get(400, b"moves-to-b")?.unwrap().column(0), Some(&b"1"[..]));
    /// assert_eq!(c.get(900, b"moves-to-c")?.unwrap().column(0), Some(&b"2"[..]));
    /// assert!(matches!(a.get(400, b"moves-to-b"), Err(Error::NotOwned { bucket: 400 })));
    /// assert!(matches!(b.get(900, b"moves-to-c"), Err(Error::NotOwned { bucket: 900 })));
    /// # Ok::<(), cairn_engine::Error>(())
    /// ```
    pub fn shrink_bucket(&self, ranges: Vec<BucketRange>) -> Result<u64> {
        let inner = &self.inner;
        let total = inner.config.total_buckets;
        let _one_at_a_time = inner.rescale_lock.lock();
        let release = BucketSet::new(&ranges, total)?;
        if release.is_empty() {
            return Err(Error::InvalidArgument("shrink_bucket needs at least one bucket range".into()));
        }
        let volume = inner.config.resolve_snapshot_volume()?;
        let owned = Arc::clone(&inner.state.lock().owned);
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
            inner.state.lock().owned = Arc::new(remaining.clone());
        }
        let result = self.release(&volume, &release, &remaining);
        if result.is_err() {
            // Not given up durably: serve the ranges again (unless the Db is poisoned anyway).
            let durable = inner.versions.lock().state().owned.clone();
            inner.state.lock().owned = Arc::new(durable);
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
        let _paused = CompactionPause::new(inner)?;
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
    /// buckets; new writes layer on top. Only when this shard's own files span the imported key range at
    /// every level (it owns buckets on both sides of it) are the rows copied instead, into new L0 files.
    /// Refused, with the bucket named: ranges the snapshot's shard did
    /// not own, ranges it has not released by a shrink, ranges this shard already owns, an unknown
    /// shard or snapshot.
    pub fn expand_bucket(
        &self,
        source_db_id: &str,
        snapshot_id: u64,
        ranges: Vec<BucketRange>,
    ) -> Result<ExpandStats> {
        self.expand(None, source_db_id, snapshot_id, ranges, true)
    }

    /// [`Db::expand_bucket`] from a snapshot on the volume at `volume_url` instead of this shard's own
    /// (another shard's volume; on the same file system the files are still linked, not copied).
    pub fn expand_bucket_from(
        &self,
        volume_url: &str,
        source_db_id: &str,
        snapshot_id: u64,
        ranges: Vec<BucketRange>,
    ) -> Result<ExpandStats> {
        self.expand(Some(volume_url), source_db_id, snapshot_id, ranges, true)
    }

    /// The pre-shrink snapshot of the last ranges this shard gave up ([`Db::last_release`]), opened
    /// read-only; `None` if it never gave any up.
    pub fn open_last_release(&self) -> Result<Option<ReadOnlyDb>> {
        let Some((snapshot, _)) = self.last_release() else { return Ok(None) };
        ReadOnlyDb::open(&self.inner.config, &self.inner.db_id, snapshot).map(Some)
    }

    /// [`Db::expand_bucket`]; `link_if_possible == false` forces the copy (tests).
    fn expand(
        &self,
        volume_url: Option<&str>,
        source_db_id: &str,
        snapshot_id: u64,
        ranges: Vec<BucketRange>,
        link_if_possible: bool,
    ) -> Result<ExpandStats> {
        let inner = &self.inner;
        let config = &inner.config;
        let total = config.total_buckets;
        let _one_at_a_time = inner.rescale_lock.lock();
        let want = BucketSet::new(&ranges, total)?;
        if want.is_empty() {
            return Err(Error::InvalidArgument("expand_bucket needs at least one bucket range".into()));
        }
        let volume = match volume_url {
            Some(url) => volume::resolve(url, &config.fs)?,
            None => config.resolve_snapshot_volume()?,
        };
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
        claim(&volume, &src_dir, &want, &inner.db_id, total)?;
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
        let mut by_reference =
            link_if_possible && place(inner.versions.lock().current(), &by_level).is_some();
        loop {
            let mut stats = ExpandStats::default();
            // Files go in under fresh numbers; nothing refers to them until the edit below.
            let (added, seq_floor) = if by_reference {
                let mut added = Vec::with_capacity(imports.len());
                for ((_, f, shown), (level, _)) in imports.iter().zip(&by_level) {
                    let number = inner.versions.lock().new_file_number();
                    let src = table_path(&src_dir, f.meta.number);
                    let dst = table_path(&config.dir, number);
                    stats.bytes_copied += volume::transfer(&volume.fs, &src, &config.fs, &dst)?;
                    stats.files_imported += 1;
                    // A filter only where part of the file stays hidden: compaction reclaims that part.
                    let filter = (*shown != BucketSet::of(f.bucket_span())).then(|| shown.clone());
                    added.push((*level, FileMeta { number, ..f.meta.clone() }, filter));
                }
                (added, loaded.state.last_sequence)
            } else {
                // The shard's own files span the imported key range at every level (it owns buckets on
                // both sides of it): the rows are copied, folded, into new L0 files above everything.
                let seq = loaded.state.last_sequence.max(inner.visible_seq.load(Ordering::Acquire)) + 1;
                let written = self.copy_rows(&volume, &src_dir, &want, seq)?;
                stats.files_imported = written.len() as u64;
                stats.bytes_copied = written.iter().map(|m| m.size).sum();
                (written.into_iter().map(|m| (0, m, None)).collect(), seq)
            };
            config.fs.sync_dir(&config.dir)?;
            // Gate first: a writer stalled on a full L0 needs compaction to finish, so compactions are
            // paused only once no write is in flight.
            let _no_writes_in_flight = inner.ownership_gate.write();
            let _paused = CompactionPause::new(inner)?;
            let mut versions = inner.versions.lock();
            let levels = if by_reference {
                match place(versions.current(), &by_level) {
                    Some(levels) => levels,
                    None => {
                        // Compaction reshaped the tree meanwhile: copy instead.
                        drop(versions);
                        for (_, meta, _) in &added {
                            let _ = config.fs.remove(&table_path(&config.dir, meta.number));
                        }
                        by_reference = false;
                        continue;
                    }
                }
            } else {
                vec![0; added.len()]
            };
            let owned = inner.state.lock().owned.union(&want);
            let mut edit = VersionEdit {
                owned_buckets: Some(owned.ranges().to_vec()),
                last_sequence: Some(seq_floor.max(versions.state().last_sequence)),
                ..VersionEdit::default()
            };
            for ((_, meta, filter), level) in added.into_iter().zip(levels) {
                if let Some(filter) = filter {
                    edit.filters.push((meta.number, filter.ranges().to_vec()));
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
            {
                let mut state = inner.state.lock();
                state.version = version;
                state.owned = Arc::new(owned);
            }
            drop(versions);
            // After the version set is released (flushes take the commit leader, then the version set);
            // the ownership gate still holds writers off, so none can take a sequence below the floor.
            inner.commit.raise_sequence(inner, seq_floor);
            inner.bg_cv.notify_all();
            return Ok(stats);
        }
    }

    /// Writes the live rows of `want` in snapshot `src_dir` into new SST files of this shard, every
    /// entry a complete row at sequence `seq`. Returns their metadata, in key order.
    fn copy_rows(
        &self,
        volume: &ResolvedVolume,
        src_dir: &Path,
        want: &BucketSet,
        seq: u64,
    ) -> Result<Vec<FileMeta>> {
        let config = &self.inner.config;
        let source = ReadOnlyDb::open_dir(config, volume, src_dir)?;
        let mut written = Vec::new();
        let mut current: Option<(TableBuilder, u64)> = None;
        let (mut ikey, mut value) = (Vec::new(), Vec::new());
        for range in want.ranges() {
            for item in source.scan_buckets(range.clone())? {
                let (bucket, key, row) = item?;
                if current.is_none() {
                    let number = self.inner.versions.lock().new_file_number();
                    let path = table_path(&config.dir, number);
                    let file = config.fs.create(&path)?;
                    current = Some((TableBuilder::new(file, path, config.table_options()), number));
                }
                let Some((builder, number)) = current.as_mut() else { continue };
                ikey.clear();
                keys::append_internal_key(&mut ikey, &keys::user_key(bucket, &key), seq, Kind::Set);
                value.clear();
                let columns: Vec<(u16, Option<&[u8]>)> = row.columns().map(|(c, v)| (c, Some(v))).collect();
                row::encode_delta(&mut value, &columns);
                builder.add(&ikey, &value)?;
                if builder.estimated_file_bytes() >= config.target_file_bytes {
                    let number = *number;
                    if let Some((builder, _)) = current.take() {
                        let (props, size) = builder.finish()?;
                        written.push(FileMeta::of_table(number, size, props));
                    }
                }
            }
        }
        if let Some((builder, number)) = current.take() {
            let (props, size) = builder.finish()?;
            written.push(FileMeta::of_table(number, size, props));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fs::{FileSystem, MemFs};

    /// The copy fallback: rows land in new L0 files above the importer's own data, new writes shadow
    /// them, and they survive a reopen and a full compaction.
    #[test]
    fn expand_by_copy_keeps_rows_and_sequence_order() {
        let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let cfg = |dir: &str| {
            let mut c = Config::new(dir).with_fs(Arc::clone(&fs));
            c.total_buckets = 16;
            c.snapshot_volume = Some("file:///snapshots".into());
            c
        };
        let a = Db::open(cfg("/a"), vec![0..=7]).unwrap();
        let b = Db::open(cfg("/b"), vec![8..=15]).unwrap();
        // B's sequence runs far ahead of A's, so a wrong floor would hide new writes.
        for i in 0..2_000u32 {
            b.put(8 + (i % 8) as u16, format!("b{i}").as_bytes(), 0, b"old").unwrap();
        }
        for i in 0..300u32 {
            a.put((i % 8) as u16, format!("k{i}").as_bytes(), 1, format!("a{i}").as_bytes()).unwrap();
        }
        a.flush().unwrap();
        let snap = a.shrink_bucket(vec![4..=7]).unwrap();
        let stats = b.expand(None, &a.id(), snap, vec![4..=7], false).unwrap();
        assert!(stats.bytes_copied > 0 && stats.files_imported > 0, "{stats:?}");
        let check = |db: &Db| {
            for i in 0..300u32 {
                let bucket = (i % 8) as u16;
                if bucket < 4 {
                    continue;
                }
                let row = db.get(bucket, format!("k{i}").as_bytes()).unwrap().unwrap();
                assert_eq!(row.column(1), Some(format!("a{i}").as_bytes()), "key {i}");
            }
        };
        check(&b);
        for i in (0..300u32).step_by(3) {
            let bucket = (i % 8) as u16;
            if bucket >= 4 {
                b.put(bucket, format!("k{i}").as_bytes(), 1, b"new").unwrap();
            }
        }
        let check_new = |db: &Db| {
            for i in 0..300u32 {
                let bucket = (i % 8) as u16;
                if bucket < 4 {
                    continue;
                }
                let row = db.get(bucket, format!("k{i}").as_bytes()).unwrap().unwrap();
                let want = if i.is_multiple_of(3) { "new".to_string() } else { format!("a{i}") };
                assert_eq!(row.column(1), Some(want.as_bytes()), "key {i}");
            }
        };
        check_new(&b);
        drop(b);
        let b = Db::open(cfg("/b"), vec![4..=15]).unwrap();
        check_new(&b);
        b.compact().unwrap();
        check_new(&b);
    }
}
