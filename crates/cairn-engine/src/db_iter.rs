//! The user-facing row iterator: walks merged internal entries, keeps only versions visible at the read
//! sequence, folds each key's deltas into a row and skips deleted or empty rows.

use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::keys::{self, Kind, bucket_of, user_key_of};
use crate::row::{Row, RowFolder, RowRef};
use std::path::PathBuf;

/// Rows in key order between two user keys, as of one sequence number. Holds the memtables and version
/// it reads, so concurrent writes, flushes and compactions do not change what it returns.
///
/// Two ways to walk it: as an [`Iterator`] of owned `(bucket, key, row)` items, or, allocation-free, with
/// [`DbIter::advance`] and the borrowing accessors [`DbIter::bucket`], [`DbIter::key`], [`DbIter::row`].
pub struct DbIter {
    inner: Box<dyn InternalIterator>,
    seq: u64,
    // Exclusive upper bound on user keys; `None` for unbounded.
    end: Option<Vec<u8>>,
    start: Vec<u8>,
    // The range the iterator was created for (its sources cover it): seeks stay within it.
    bounds: (Vec<u8>, Option<Vec<u8>>),
    started: bool,
    folder: RowFolder,
    // INVARIANT: when `positioned`, the current row's user key and its encoded live columns.
    user_key: Vec<u8>,
    row: Vec<u8>,
    positioned: bool,
    // Keeps readers' sources alive; never read.
    _pin: Box<dyn Send + Sync>,
}

impl DbIter {
    pub(crate) fn new(
        inner: Box<dyn InternalIterator>,
        seq: u64,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        pin: Box<dyn Send + Sync>,
    ) -> DbIter {
        DbIter {
            inner,
            seq,
            bounds: (start.clone(), end.clone()),
            end,
            start,
            started: false,
            folder: RowFolder::default(),
            user_key: Vec::new(),
            row: Vec::new(),
            positioned: false,
            _pin: pin,
        }
    }

    /// Repositions the iterator on `bucket`'s rows with keys in `from..to` (`to`: `None` for the rest of
    /// the bucket), clamped to the range it was created for; the next [`DbIter::advance`] returns the
    /// first of them. Reuses the iterator's sources, so visiting many buckets one after another costs
    /// one seek each instead of one new iterator each.
    pub fn seek(&mut self, bucket: u16, from: &[u8], to: Option<&[u8]>) {
        let start = keys::user_key(bucket, from);
        let end = match to {
            Some(to) => Some(keys::user_key(bucket, to)),
            None => bucket.checked_add(1).map(|next| next.to_be_bytes().to_vec()),
        };
        self.start = start.max(self.bounds.0.clone());
        self.end = match (end, &self.bounds.1) {
            (Some(e), Some(b)) => Some(e.min(b.clone())),
            (e, None) => e,
            (None, b) => b.clone(),
        };
        self.started = false;
        self.positioned = false;
    }

    /// The next row as `(bucket, key, row)`, or `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<(u16, Vec<u8>, Row)>> {
        Ok(self.advance()?.then(|| (self.bucket(), self.key().to_vec(), self.row().to_row())))
    }

    /// Moves to the next row; false at the end. The row stays readable through [`DbIter::bucket`],
    /// [`DbIter::key`] and [`DbIter::row`] until the next call. Reuses the iterator's buffers, so walking
    /// rows allocates nothing once they have grown (beyond reading uncached blocks).
    pub fn advance(&mut self) -> Result<bool> {
        self.positioned = false;
        if !self.started {
            self.started = true;
            self.inner.seek(&keys::lookup_key(&self.start, self.seq))?;
        }
        loop {
            if !self.inner.valid() {
                return Ok(false);
            }
            self.user_key.clear();
            self.user_key.extend_from_slice(user_key_of(self.inner.key()));
            if self.end.as_deref().is_some_and(|end| self.user_key.as_slice() >= end) {
                return Ok(false);
            }
            self.folder.clear();
            let mut done = false;
            while self.inner.valid() && user_key_of(self.inner.key()) == self.user_key.as_slice() {
                let ikey = self.inner.key();
                if !done && keys::seq_of(ikey) <= self.seq {
                    let kind = keys::kind_of(ikey).ok_or_else(|| corrupt("unknown entry kind"))?;
                    match kind {
                        Kind::Delete => done = true,
                        Kind::Set | Kind::Merge => {
                            if !self.folder.add_older(self.inner.value()) {
                                return Err(corrupt("malformed row"));
                            }
                            done = kind == Kind::Set;
                        }
                    }
                }
                self.inner.next()?;
            }
            self.folder.write_row(&mut self.row);
            if !self.row.is_empty() {
                self.positioned = true;
                return Ok(true);
            }
        }
    }

    /// The current row's bucket (after [`DbIter::advance`] returned true).
    pub fn bucket(&self) -> u16 {
        if self.positioned { bucket_of(&self.user_key) } else { 0 }
    }

    /// The current row's key (after [`DbIter::advance`] returned true; empty otherwise).
    pub fn key(&self) -> &[u8] {
        if self.positioned { &self.user_key[keys::BUCKET_BYTES..] } else { &[] }
    }

    /// The current row (after [`DbIter::advance`] returned true; empty otherwise).
    pub fn row(&self) -> RowRef<'_> {
        RowRef::new(if self.positioned { &self.row } else { &[] })
    }
}

fn corrupt(detail: &str) -> Error {
    Error::corruption(PathBuf::from("<iterator>"), detail)
}

impl Iterator for DbIter {
    type Item = Result<(u16, Vec<u8>, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}
