//! Versions: immutable snapshots of which SST files make up the tree. Readers, iterators and snapshots
//! hold an `Arc<Version>`; a file stays on disk while any version that lists it is alive.
//!
//! Levels: L0 files may overlap and are ordered newest first; in L1 and below files are sorted by key
//! and do not overlap.

use crate::bucket::{BucketRange, BucketSet};
use crate::config::NUM_LEVELS;
use crate::keys::{self, cmp_internal};
use crate::version_edit::{FileMeta, VersionEdit};
use parking_lot::Mutex;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// Collects the numbers of files that no version references any more, for deletion.
#[derive(Debug, Default)]
pub struct ObsoleteFiles {
    numbers: Mutex<Vec<u64>>,
}

impl ObsoleteFiles {
    /// Takes the numbers collected so far.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut self.numbers.lock())
    }
}

/// The file's life: when the last [`TableFile`] naming it drops (however many filters it was seen
/// through), its number goes to [`ObsoleteFiles`].
#[derive(Debug)]
struct Live {
    number: u64,
    obsolete: Arc<ObsoleteFiles>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.obsolete.numbers.lock().push(self.number);
    }
}

/// A live SST file, possibly seen through a bucket filter. When the last reference drops, its number
/// goes to [`ObsoleteFiles`]; the Db deletes it once the manifest no longer lists it (which holds, since
/// the current version references every file the manifest lists).
#[derive(Debug)]
pub struct TableFile {
    /// What the manifest says about the file.
    pub meta: FileMeta,
    /// If set, only these buckets of the file are visible: the rest was released by a shrink, or is a
    /// part of another shard's file this shard did not import. Compaction drops the hidden entries.
    pub filter: Option<Arc<BucketSet>>,
    live: Arc<Live>,
}

impl TableFile {
    /// Wraps manifest metadata.
    pub fn new(meta: FileMeta, obsolete: Arc<ObsoleteFiles>) -> TableFile {
        let live = Arc::new(Live { number: meta.number, obsolete });
        TableFile { meta, filter: None, live }
    }

    /// The same file seen through `filter` (`None`: unfiltered). Both keep the file alive.
    pub fn with_filter(&self, filter: Option<Arc<BucketSet>>) -> TableFile {
        TableFile { meta: self.meta.clone(), filter, live: Arc::clone(&self.live) }
    }

    /// True if entries of `bucket` in this file are visible.
    pub fn shows(&self, bucket: u16) -> bool {
        self.filter.as_ref().is_none_or(|f| f.contains(bucket))
    }

    /// The buckets the file's key span covers.
    pub fn bucket_span(&self) -> BucketRange {
        keys::bucket_of(self.smallest_user_key())..=keys::bucket_of(self.largest_user_key())
    }

    /// The smallest user key.
    pub fn smallest_user_key(&self) -> &[u8] {
        keys::user_key_of(&self.meta.smallest)
    }

    /// The largest user key.
    pub fn largest_user_key(&self) -> &[u8] {
        keys::user_key_of(&self.meta.largest)
    }

    /// True if the file's user-key span overlaps `[lo, hi]` (either bound may be open).
    pub fn overlaps(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
        !(lo.is_some_and(|lo| self.largest_user_key() < lo)
            || hi.is_some_and(|hi| self.smallest_user_key() > hi))
    }
}

/// The files of the tree at one point.
#[derive(Debug, Default)]
pub struct Version {
    /// Files per level. INVARIANT: L0 newest first (by max_seq, then number); L1+ sorted by smallest key
    /// and non-overlapping.
    pub levels: [Vec<Arc<TableFile>>; NUM_LEVELS],
}

impl Version {
    /// Applies an edit, producing the next version. `make` turns added metadata into live files.
    pub fn apply(&self, edit: &VersionEdit, make: impl Fn(FileMeta) -> TableFile) -> Result<Version, String> {
        let mut levels = self.levels.clone();
        // A file moved between levels keeps its one `TableFile`, so that dropping the older version does
        // not report the file obsolete while the newer one still lists it.
        let mut removed: HashMap<u64, Arc<TableFile>> = HashMap::new();
        for (level, number) in &edit.deleted {
            let files = &mut levels[*level];
            let Some(idx) = files.iter().position(|f| f.meta.number == *number) else {
                return Err(format!("edit deletes file {number} which is not in L{level}"));
            };
            removed.insert(*number, files.remove(idx));
        }
        for (level, meta) in &edit.added {
            let file = match removed.remove(&meta.number) {
                Some(moved) if moved.meta == *meta => moved,
                Some(_) => return Err(format!("file {} moved with different metadata", meta.number)),
                None => Arc::new(make(meta.clone())),
            };
            levels[*level].push(file);
        }
        for (number, ranges) in &edit.filters {
            let slot = levels
                .iter_mut()
                .flat_map(|files| files.iter_mut())
                .find(|f| f.meta.number == *number)
                .ok_or_else(|| format!("edit filters file {number} which is not in the version"))?;
            let filter = if ranges.is_empty() {
                None
            } else {
                let set = BucketSet::new(ranges, crate::bucket::MAX_TOTAL_BUCKETS)
                    .map_err(|e| format!("bad filter of file {number}: {e}"))?;
                Some(Arc::new(set))
            };
            *slot = Arc::new(slot.with_filter(filter));
        }
        levels[0].sort_by_key(|f| std::cmp::Reverse((f.meta.max_seq, f.meta.number)));
        for files in levels.iter_mut().skip(1) {
            files.sort_by(|a, b| cmp_internal(&a.meta.smallest, &b.meta.smallest));
        }
        let v = Version { levels };
        v.check_invariants()?;
        Ok(v)
    }

    /// Checks level ordering and key-range disjointness (cheap: linear in the number of files).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = HashMap::new();
        for (level, files) in self.levels.iter().enumerate() {
            for f in files {
                if let Some(prev) = seen.insert(f.meta.number, level) {
                    return Err(format!("file {} listed in L{prev} and L{level}", f.meta.number));
                }
                if cmp_internal(&f.meta.smallest, &f.meta.largest) == Ordering::Greater {
                    return Err(format!("file {} has smallest > largest", f.meta.number));
                }
            }
            if level > 0 {
                for pair in files.windows(2) {
                    if pair[0].largest_user_key() >= pair[1].smallest_user_key() {
                        return Err(format!(
                            "L{level} files {} and {} overlap",
                            pair[0].meta.number, pair[1].meta.number
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Files of level `level >= 1` that may hold `user_key` (at most one).
    pub fn file_for_key(&self, level: usize, user_key: &[u8]) -> Option<&Arc<TableFile>> {
        let files = &self.levels[level];
        let idx = files.partition_point(|f| f.largest_user_key() < user_key);
        files.get(idx).filter(|f| f.smallest_user_key() <= user_key)
    }

    /// Files of `level` whose user-key span overlaps `[lo, hi]`.
    pub fn overlapping(&self, level: usize, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Vec<Arc<TableFile>> {
        self.levels[level].iter().filter(|f| f.overlaps(lo, hi)).cloned().collect()
    }

    /// Bytes per level.
    pub fn level_bytes(&self) -> [u64; NUM_LEVELS] {
        let mut out = [0u64; NUM_LEVELS];
        for (i, files) in self.levels.iter().enumerate() {
            out[i] = files.iter().map(|f| f.meta.size).sum();
        }
        out
    }

    /// Files per level.
    pub fn level_files(&self) -> [usize; NUM_LEVELS] {
        let mut out = [0usize; NUM_LEVELS];
        for (i, files) in self.levels.iter().enumerate() {
            out[i] = files.len();
        }
        out
    }

    /// Every file, all levels.
    pub fn all_files(&self) -> impl Iterator<Item = &Arc<TableFile>> {
        self.levels.iter().flatten()
    }

    /// The edit that recreates this version from nothing (written at the top of a new manifest).
    pub fn snapshot_edit(&self) -> VersionEdit {
        let mut edit = VersionEdit::default();
        for (level, files) in self.levels.iter().enumerate() {
            for f in files {
                edit.added.push((level, f.meta.clone()));
                if let Some(filter) = &f.filter {
                    edit.filters.push((f.meta.number, filter.ranges().to_vec()));
                }
            }
        }
        edit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Kind, internal_key, user_key};

    fn meta(number: u64, lo: &[u8], hi: &[u8]) -> FileMeta {
        FileMeta {
            number,
            size: 100,
            smallest: internal_key(&user_key(0, lo), 5, Kind::Set),
            largest: internal_key(&user_key(0, hi), 1, Kind::Set),
            min_seq: 1,
            max_seq: number,
            entries: 2,
            deletions: 0,
        }
    }

    #[test]
    fn apply_rejects_overlap_and_missing_deletes_and_tracks_obsolete_files() {
        let obsolete = Arc::new(ObsoleteFiles::default());
        let make = |m| TableFile::new(m, Arc::clone(&obsolete));
        let v0 = Version::default();
        let add = VersionEdit {
            added: vec![(1, meta(1, b"a", b"c")), (1, meta(2, b"d", b"f"))],
            ..Default::default()
        };
        let v1 = v0.apply(&add, make).unwrap();
        assert_eq!(v1.file_for_key(1, &user_key(0, b"e")).map(|f| f.meta.number), Some(2));
        assert!(v1.file_for_key(1, &user_key(0, b"cc")).is_none());
        let bad = VersionEdit { added: vec![(1, meta(3, b"b", b"e"))], ..Default::default() };
        assert!(v1.apply(&bad, make).is_err());
        let missing = VersionEdit { deleted: vec![(1, 9)], ..Default::default() };
        assert!(v1.apply(&missing, make).is_err());
        let del = VersionEdit { deleted: vec![(1, 1)], ..Default::default() };
        let v2 = v1.apply(&del, make).unwrap();
        assert!(obsolete.take().contains(&3), "rejected version's new file is released");
        drop(v1);
        assert_eq!(obsolete.take(), vec![1]);
        // A trivial move keeps the file alive across versions.
        let mv = VersionEdit {
            deleted: vec![(1, 2)],
            added: vec![(2, meta(2, b"d", b"f"))],
            ..Default::default()
        };
        let v3 = v2.apply(&mv, make).unwrap();
        drop(v2);
        assert!(obsolete.take().is_empty());
        assert_eq!(v3.levels[2][0].meta.number, 2);
    }
}
