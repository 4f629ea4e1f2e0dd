//! The user-facing row iterator: walks merged internal entries, keeps only versions visible at the read
//! sequence, folds each key's deltas into a row and skips deleted or empty rows.

use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::keys::{self, Kind, bucket_of, user_key_of};
use crate::row::{Row, RowFolder};
use std::path::PathBuf;

/// Rows in key order between two user keys, as of one sequence number. Holds the memtables and version
/// it reads, so concurrent writes, flushes and compactions do not change what it returns.
pub struct DbIter {
    inner: Box<dyn InternalIterator>,
    seq: u64,
    // Exclusive upper bound on user keys; `None` for unbounded.
    end: Option<Vec<u8>>,
    start: Vec<u8>,
    started: bool,
    folder: RowFolder,
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
        DbIter { inner, seq, end, start, started: false, folder: RowFolder::default(), _pin: pin }
    }

    /// The next row as `(bucket, key, row)`, or `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<(u16, Vec<u8>, Row)>> {
        if !self.started {
            self.started = true;
            self.inner.seek(&keys::lookup_key(&self.start, self.seq))?;
        }
        loop {
            if !self.inner.valid() {
                return Ok(None);
            }
            let ukey = user_key_of(self.inner.key()).to_vec();
            if self.end.as_deref().is_some_and(|end| ukey.as_slice() >= end) {
                return Ok(None);
            }
            self.folder.clear();
            let mut done = false;
            while self.inner.valid() && user_key_of(self.inner.key()) == ukey.as_slice() {
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
            let row = self.folder.to_row();
            if !row.is_empty() {
                let bucket = bucket_of(&ukey);
                let key = ukey[keys::BUCKET_BYTES..].to_vec();
                return Ok(Some((bucket, key, row)));
            }
        }
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
