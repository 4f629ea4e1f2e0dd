//! Iterates one sorted level (L1 and below) as a single sequence, opening each file's reader only when
//! the cursor reaches it. Entries a file's bucket filter hides are skipped (by seeking past them), so
//! every reader and compaction sees only the visible part of a filtered file.

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::keys::{self, cmp_internal, user_key_of};
use crate::sst::TableIter;
use crate::table_cache::TableCache;
use crate::version::TableFile;
use std::cmp::Ordering;
use std::sync::Arc;

/// A cursor over the files of one non-overlapping level.
pub struct LevelIter {
    cache: Arc<TableCache>,
    // INVARIANT: sorted by key and non-overlapping.
    files: Vec<Arc<TableFile>>,
    idx: usize,
    current: Option<TableIter>,
    // Whether blocks read are added to the block cache (false for compaction inputs).
    fill_cache: bool,
}

impl LevelIter {
    /// Iterates `files`, which must be one level's files in order.
    pub fn new(cache: Arc<TableCache>, files: Vec<Arc<TableFile>>) -> LevelIter {
        let idx = files.len();
        LevelIter { cache, files, idx, current: None, fill_cache: true }
    }

    /// Like [`LevelIter::new`], but blocks read from files are not added to the block cache.
    pub fn new_no_fill(cache: Arc<TableCache>, files: Vec<Arc<TableFile>>) -> LevelIter {
        LevelIter { fill_cache: false, ..LevelIter::new(cache, files) }
    }

    fn open(&mut self, idx: usize) -> Result<()> {
        self.idx = idx;
        self.current = None;
        if let Some(f) = self.files.get(idx) {
            let table = self.cache.get(f.meta.number, f.meta.size)?;
            self.current = Some(if self.fill_cache { table.iter() } else { table.iter_no_fill() });
        }
        Ok(())
    }

    // Moves to following files while the current one is exhausted, and past entries the current file's
    // filter hides.
    fn skip_empty(&mut self) -> Result<()> {
        loop {
            while self.current.as_ref().is_some_and(|c| !c.valid()) {
                self.open(self.idx + 1)?;
                if let Some(c) = self.current.as_mut() {
                    c.seek_to_first()?;
                }
            }
            let (Some(c), Some(file)) = (self.current.as_mut(), self.files.get(self.idx)) else {
                return Ok(());
            };
            let Some(filter) = &file.filter else { return Ok(()) };
            let bucket = keys::bucket_of(user_key_of(c.key()));
            if filter.contains(bucket) {
                return Ok(());
            }
            match filter.first_at_or_after(bucket) {
                Some(next) => c.seek(&keys::lookup_key(&next.to_be_bytes(), keys::MAX_SEQUENCE))?,
                None => {
                    self.open(self.idx + 1)?;
                    if let Some(c) = self.current.as_mut() {
                        c.seek_to_first()?;
                    }
                }
            }
        }
    }
}

impl InternalIterator for LevelIter {
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.valid())
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.open(0)?;
        if let Some(c) = self.current.as_mut() {
            c.seek_to_first()?;
        }
        self.skip_empty()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let ukey = user_key_of(target);
        let idx = self.files.partition_point(|f| {
            f.largest_user_key() < ukey || cmp_internal(&f.meta.largest, target) == Ordering::Less
        });
        self.open(idx)?;
        if let Some(c) = self.current.as_mut() {
            c.seek(target)?;
        }
        self.skip_empty()
    }

    fn next(&mut self) -> Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.next()?;
        }
        self.skip_empty()
    }

    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |c| c.key())
    }

    fn value(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |c| c.value())
    }
}
