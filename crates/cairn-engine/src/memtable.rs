//! The memtable: a concurrent skiplist of internal entries. One writer (the group-commit leader) inserts
//! while any number of readers look up and iterate. Size is tracked approximately so the Db can rotate a
//! full memtable into the immutable list and flush it in the background.

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::keys::{self, Kind, cmp_internal};
use crossbeam_skiplist::SkipMap;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

/// Per-entry bookkeeping bytes counted on top of key and value (skiplist node, tower, allocations).
const ENTRY_OVERHEAD_BYTES: usize = 80;
/// Entries copied out of the skiplist per refill of an iterator's buffer.
const ITER_CHUNK: usize = 64;

/// An internal key ordered by [`cmp_internal`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct MemKey(Box<[u8]>);

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_internal(&self.0, &other.0)
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One memtable. Shared by `Arc` between the Db, readers and the flusher.
pub struct Memtable {
    map: SkipMap<MemKey, Box<[u8]>>,
    approx_bytes: AtomicUsize,
    // INVARIANT: every entry's sequence number is <= max_seq.
    max_seq: AtomicU64,
    /// The WAL file holding this memtable's writes (0 when the WAL is off).
    log_number: u64,
}

impl Memtable {
    /// An empty memtable whose writes go to WAL `log_number`.
    pub fn new(log_number: u64) -> Memtable {
        Memtable {
            map: SkipMap::new(),
            approx_bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            log_number,
        }
    }

    /// Inserts one entry. Only the commit leader or recovery calls this.
    pub fn insert(&self, user_key: &[u8], seq: u64, kind: Kind, value: &[u8]) {
        let ikey = keys::internal_key(user_key, seq, kind);
        self.approx_bytes.fetch_add(ikey.len() + value.len() + ENTRY_OVERHEAD_BYTES, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::Relaxed);
        self.map.insert(MemKey(ikey.into_boxed_slice()), value.into());
    }

    /// Approximate memory used.
    pub fn approximate_bytes(&self) -> usize {
        self.approx_bytes.load(AtomicOrdering::Relaxed)
    }

    /// True if nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The WAL file holding this memtable's writes.
    pub fn log_number(&self) -> u64 {
        self.log_number
    }

    /// Largest sequence number inserted.
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Relaxed)
    }

    /// Visits the versions of `user_key` visible at `seq`, newest first, until `visit` returns false.
    /// Returns whether any version was visited.
    pub fn for_each_version(
        &self,
        user_key: &[u8],
        seq: u64,
        mut visit: impl FnMut(Kind, &[u8]) -> bool,
    ) -> bool {
        let start = MemKey(keys::lookup_key(user_key, seq).into_boxed_slice());
        let mut found = false;
        let mut entry = self.map.lower_bound(Bound::Included(&start));
        while let Some(e) = entry {
            let ikey = &e.key().0;
            if keys::user_key_of(ikey) != user_key {
                break;
            }
            found = true;
            // Kinds come from our own inserts; an unknown one cannot occur, treat it as a stop.
            let Some(kind) = keys::kind_of(ikey) else { break };
            if !visit(kind, e.value()) {
                break;
            }
            entry = e.next();
        }
        found
    }

    /// An iterator over all entries.
    pub fn iter(self: &Arc<Self>) -> MemtableIter {
        MemtableIter { mem: Arc::clone(self), buf: Vec::new(), pos: 0, exhausted: true }
    }
}

/// An entry copied out of the skiplist: internal key and value.
type OwnedEntry = (Box<[u8]>, Box<[u8]>);

/// Iterates a memtable by copying small chunks of entries out of the skiplist, so the iterator owns
/// what it exposes and needs no borrow of the map.
pub struct MemtableIter {
    mem: Arc<Memtable>,
    buf: Vec<OwnedEntry>,
    pos: usize,
    // True once the skiplist has no entries past the end of `buf`.
    exhausted: bool,
}

impl MemtableIter {
    fn fill_from(&mut self, bound: Bound<&MemKey>) {
        self.buf.clear();
        self.pos = 0;
        let mut entry = self.mem.map.lower_bound(bound);
        while let Some(e) = entry {
            if self.buf.len() == ITER_CHUNK {
                self.exhausted = false;
                return;
            }
            self.buf.push((e.key().0.clone(), e.value().clone()));
            entry = e.next();
        }
        self.exhausted = true;
    }
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.pos < self.buf.len()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.fill_from(Bound::Unbounded);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let key = MemKey(target.into());
        self.fill_from(Bound::Included(&key));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        if self.pos >= self.buf.len()
            && !self.exhausted
            && let Some((last, _)) = self.buf.last()
        {
            let key = MemKey(last.clone());
            self.fill_from(Bound::Excluded(&key));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        &self.buf[self.pos].0
    }

    fn value(&self) -> &[u8] {
        &self.buf[self.pos].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::user_key;

    #[test]
    fn versions_are_visited_newest_first_up_to_the_read_sequence() {
        let m = Memtable::new(1);
        let uk = user_key(1, b"k");
        m.insert(&uk, 1, Kind::Set, b"v1");
        m.insert(&uk, 2, Kind::Merge, b"v2");
        m.insert(&uk, 3, Kind::Delete, b"");
        m.insert(&user_key(1, b"k2"), 4, Kind::Set, b"other");
        let mut seen = Vec::new();
        m.for_each_version(&uk, 2, |k, v| {
            seen.push((k, v.to_vec()));
            true
        });
        assert_eq!(seen, vec![(Kind::Merge, b"v2".to_vec()), (Kind::Set, b"v1".to_vec())]);
    }

    #[test]
    fn iterator_crosses_chunk_boundaries_in_order() {
        let m = Arc::new(Memtable::new(1));
        for i in 0..500u32 {
            m.insert(&user_key(0, &i.to_be_bytes()), u64::from(i) + 1, Kind::Set, b"v");
        }
        let mut it = m.iter();
        it.seek_to_first().unwrap();
        let mut n = 0u32;
        while it.valid() {
            assert_eq!(keys::user_key_of(it.key()), &user_key(0, &n.to_be_bytes())[..]);
            n += 1;
            it.next().unwrap();
        }
        assert_eq!(n, 500);
        it.seek(&keys::lookup_key(&user_key(0, &250u32.to_be_bytes()), u64::MAX >> 8)).unwrap();
        assert_eq!(keys::seq_of(it.key()), 251);
    }
}
