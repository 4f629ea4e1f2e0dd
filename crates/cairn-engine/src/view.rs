//! Read views: a pinned point in time. A view holds its memtables and version, and registers its
//! sequence number so compaction keeps every version it can see.

use crate::bucket::{BucketRange, BucketSet};
use crate::db::{DbInner, SuperVersion, bucket_key_bounds, check_key};
use crate::db_iter::DbIter;
use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::keys;
use crate::level_iter::LevelIter;
use crate::merging_iter::MergingIter;
use crate::row::Row;
use crate::snapshot::{ContentDigest, digest_rows};
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A consistent read-only view of a Db at one sequence number.
pub struct View {
    db: Arc<DbInner>,
    sv: Arc<SuperVersion>,
    seq: u64,
    /// The buckets owned when the view was taken: a rescale after that does not change what it reads.
    owned: Arc<BucketSet>,
}

impl View {
    pub(crate) fn new(db: Arc<DbInner>) -> View {
        let mut state = db.state.lock();
        let seq = db.visible_seq.load(Ordering::Acquire);
        *state.pinned.entry(seq).or_insert(0) += 1;
        let sv = Arc::new(SuperVersion::of(&state));
        let owned = Arc::clone(&state.owned);
        drop(state);
        View { db, sv, seq, owned }
    }

    /// The sequence number this view reads at.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    fn check_owned(&self, bucket: u16) -> Result<()> {
        if self.owned.contains(bucket) { Ok(()) } else { Err(Error::NotOwned { bucket }) }
    }

    /// The row `key` in `bucket` as of the view.
    pub fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<Row>> {
        check_key(key)?;
        self.check_owned(bucket)?;
        crate::read::get(&self.db, &self.sv, self.seq, &keys::user_key(bucket, key))
    }

    /// Rows of `bucket` with keys in `range`, as of the view.
    pub fn scan<'a>(&self, bucket: u16, range: impl RangeBounds<&'a [u8]>) -> Result<DbIter> {
        self.check_owned(bucket)?;
        let (start, end) = bucket_key_bounds(bucket, range);
        Ok(self.iter(start, end, true))
    }

    /// Hashes every live row of every owned bucket as of the view: equal to the digest of a shard
    /// snapshot taken at the same point (see [`ContentDigest`]), without taking one.
    pub fn content_digest(&self) -> Result<ContentDigest> {
        self.content_digest_pausing(0, || {})
    }

    /// [`View::content_digest`], calling `pause` each time it has hashed another `every_bytes` of keys
    /// and rows (never if 0): a background hash gives the CPU up there (a thread woken for a request
    /// then waits for a few rows, not for the hash's time slice).
    pub fn content_digest_pausing(&self, every_bytes: u64, pause: impl FnMut()) -> Result<ContentDigest> {
        self.content_digest_filtered(every_bytes, pause, None)
    }

    /// [`View::content_digest_pausing`] over the rows `filter` keeps (offered every row, in order, as a
    /// compaction would): with a filter from [`crate::Db::compaction_filter_at`], the digest of what
    /// the shard holds once compaction applied that threshold, however much of it already has.
    pub fn content_digest_filtered(
        &self,
        every_bytes: u64,
        mut pause: impl FnMut(),
        mut filter: Option<Box<dyn crate::CompactionFilter>>,
    ) -> Result<ContentDigest> {
        let mut ranges = self.owned.ranges().to_vec().into_iter();
        let mut iter: Option<DbIter> = None;
        let mut since_pause = 0u64;
        digest_rows(|emit| {
            loop {
                if let Some(it) = iter.as_mut()
                    && it.advance()?
                {
                    if it.key().starts_with(crate::snapshot::LOCAL_KEY_PREFIX) {
                        continue;
                    }
                    if let Some(f) = filter.as_mut()
                        && f.filter(it.bucket(), it.key(), &it.row().to_row())
                            == crate::FilterDecision::Remove
                    {
                        continue;
                    }
                    emit(it.bucket(), it.key(), it.row());
                    since_pause += (it.key().len() + it.row().encoded_len()) as u64;
                    if every_bytes > 0 && since_pause >= every_bytes {
                        since_pause = 0;
                        pause();
                    }
                    return Ok(true);
                }
                // Past the block cache: one pass over every block must not evict what reads use.
                match ranges.next() {
                    Some(r) => iter = Some(self.buckets_iter(r, false)?),
                    None => return Ok(false),
                }
            }
        })
    }

    /// All rows of the buckets in `buckets`, as of the view. Every bucket must be owned.
    pub fn scan_buckets(&self, buckets: BucketRange) -> Result<DbIter> {
        self.buckets_iter(buckets, true)
    }

    /// [`View::scan_buckets`], keeping the blocks it reads in the block cache if `fill_cache`.
    fn buckets_iter(&self, buckets: BucketRange, fill_cache: bool) -> Result<DbIter> {
        if buckets.start() > buckets.end() {
            return Err(Error::InvalidArgument(format!(
                "empty bucket range {}..={}",
                buckets.start(),
                buckets.end()
            )));
        }
        if !self.owned.contains_range(&buckets) {
            let bucket = (*buckets.start()..=*buckets.end()).find(|b| !self.owned.contains(*b)).unwrap_or(0);
            return Err(Error::NotOwned { bucket });
        }
        let start = buckets.start().to_be_bytes().to_vec();
        let end = buckets.end().checked_add(1).map(|b| b.to_be_bytes().to_vec());
        Ok(self.iter(start, end, fill_cache))
    }

    fn iter(&self, start: Vec<u8>, end: Option<Vec<u8>>, fill_cache: bool) -> DbIter {
        let level_iter = |files| {
            let cache = Arc::clone(&self.db.table_cache);
            Box::new(if fill_cache {
                LevelIter::new(cache, files)
            } else {
                LevelIter::new_no_fill(cache, files)
            })
        };
        let mut children: Vec<Box<dyn InternalIterator>> = vec![Box::new(self.sv.mem.iter())];
        for m in self.sv.imm.iter().rev() {
            children.push(Box::new(m.iter()));
        }
        let lo = Some(start.as_slice());
        let hi = end.as_deref();
        for file in &self.sv.version.levels[0] {
            if file.overlaps(lo, None) && hi.is_none_or(|h| file.smallest_user_key() < h) {
                children.push(level_iter(vec![Arc::clone(file)]));
            }
        }
        for level in 1..self.sv.version.levels.len() {
            let files: Vec<_> = self.sv.version.levels[level]
                .iter()
                .filter(|f| f.overlaps(lo, None) && hi.is_none_or(|h| f.smallest_user_key() < h))
                .cloned()
                .collect();
            if !files.is_empty() {
                children.push(level_iter(files));
            }
        }
        let pin = Box::new(ViewPin { db: Arc::clone(&self.db), seq: self.seq, _sv: Arc::clone(&self.sv) });
        self.pin_again();
        DbIter::new(Box::new(MergingIter::new(children)), self.seq, start, end, pin)
    }

    fn pin_again(&self) {
        *self.db.state.lock().pinned.entry(self.seq).or_insert(0) += 1;
    }
}

impl Drop for View {
    fn drop(&mut self) {
        unpin(&self.db, self.seq);
    }
}

/// Keeps an iterator's sources and sequence pinned after its view is gone.
struct ViewPin {
    db: Arc<DbInner>,
    seq: u64,
    _sv: Arc<SuperVersion>,
}

impl Drop for ViewPin {
    fn drop(&mut self) {
        unpin(&self.db, self.seq);
    }
}

fn unpin(db: &DbInner, seq: u64) {
    let mut state = db.state.lock();
    if let Some(n) = state.pinned.get_mut(&seq) {
        *n -= 1;
        if *n == 0 {
            state.pinned.remove(&seq);
        }
    }
}
