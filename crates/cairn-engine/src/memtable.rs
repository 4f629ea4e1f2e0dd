//! The memtable: a B-tree of internal entries, ordered as [`keys::cmp_internal`] orders them, behind a
//! reader-writer lock. One writer (the group-commit leader) inserts while any number of readers look up
//! and iterate; every critical section is short (one insert, one lookup, one iterator chunk). Size is
//! tracked approximately so the Db can rotate a full memtable into the immutable list and flush it in
//! the background.
//!
//! Entries' bytes live in chunks of [`CHUNK_BYTES`] shared by many entries (`bytes::Bytes` handles into
//! one buffer), not in an allocation each: inserting costs a copy and a reference count, and dropping
//! a flushed memtable, usually on another thread than the writer's, frees a few chunks instead of one
//! allocation per entry (per-entry frees across threads contended on the allocator's locks: ~20% of a
//! one-writer `fillrandom` went to the allocator).

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::keys::{self, Kind};
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

/// Per-entry bookkeeping bytes counted on top of key and value (B-tree slot with the inline key head, node
/// slack, allocator slack).
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// Most entries copied out of the tree per refill of an iterator's buffer.
const ITER_CHUNK: usize = 64;
/// Entries copied by the first refill after a seek; each later refill copies twice as many (up to
/// [`ITER_CHUNK`]), so a seek that reads a row or two (a scan visiting many buckets) copies little.
const FIRST_CHUNK: usize = 4;
/// Bytes of the user key kept inline in each entry, so that most comparisons during a search read
/// only the node itself and never chase the pointer to the key's bytes.
const HEAD_BYTES: usize = 24;
/// Size of the chunks entries' bytes are copied into (an entry larger than this gets a chunk of its own).
const CHUNK_BYTES: usize = 256 << 10;

/// A memtable entry: its internal key, ordered by [`keys::cmp_internal`], and its value.
///
/// The user key's first [`HEAD_BYTES`] bytes are also kept as three big-endian words, zero-padded.
/// Comparing heads agrees with comparing user keys whenever the heads differ (a key shorter than the
/// head pads with zeros, which sort first, exactly as a prefix sorts before its extensions); equal heads
/// fall back to the bytes.
#[derive(Debug, PartialEq, Eq)]
struct MemKey {
    head: [u64; HEAD_BYTES / 8],
    // INVARIANT: data = user key ++ value, and key_len is the user key's length.
    data: Bytes,
    key_len: u32,
    trailer: u64,
}

impl MemKey {
    /// An entry for `user_key` with `trailer`, holding `value`, its bytes copied into `chunk` (which
    /// is replaced by a fresh one when too full).
    fn stored(chunk: &mut BytesMut, user_key: &[u8], trailer: u64, value: &[u8]) -> MemKey {
        let len = user_key.len() + value.len();
        if chunk.capacity() < len {
            *chunk = BytesMut::with_capacity(CHUNK_BYTES.max(len));
        }
        chunk.extend_from_slice(user_key);
        chunk.extend_from_slice(value);
        MemKey::with_data(chunk.split().freeze(), user_key.len(), trailer)
    }

    /// A search key for `user_key` with `trailer` (no value).
    fn search(user_key: &[u8], trailer: u64) -> MemKey {
        MemKey::with_data(Bytes::copy_from_slice(user_key), user_key.len(), trailer)
    }

    /// A search key from an internal key.
    fn from_internal(ikey: &[u8]) -> MemKey {
        MemKey::search(keys::user_key_of(ikey), keys::trailer_of(ikey))
    }

    fn with_data(data: Bytes, key_len: usize, trailer: u64) -> MemKey {
        MemKey { head: head_of(&data[..key_len]), data, key_len: key_len as u32, trailer }
    }

    fn user_key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }
}

/// The first [`HEAD_BYTES`] of `user_key` as big-endian words, zero-padded.
fn head_of(user_key: &[u8]) -> [u64; HEAD_BYTES / 8] {
    std::array::from_fn(|i| keys::head_word(user_key, i))
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.user_key().cmp(other.user_key()))
            // Newest first: a larger trailer sorts earlier.
            .then_with(|| other.trailer.cmp(&self.trailer))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The tree and the chunk new entries' bytes go to, under one lock (only inserts touch the chunk).
struct Entries {
    set: BTreeSet<MemKey>,
    chunk: BytesMut,
}

/// One memtable. Shared by `Arc` between the Db, readers and the flusher.
pub struct Memtable {
    // A B-tree under a reader-writer lock: one writer, short critical sections (one insert, one lookup,
    // one chunk copied out), and far fewer cache misses per search than a skiplist.
    map: RwLock<Entries>,
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
            map: RwLock::new(Entries { set: BTreeSet::new(), chunk: BytesMut::new() }),
            approx_bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            log_number,
        }
    }

    /// Inserts one entry. Only the commit leader or recovery calls this.
    pub fn insert(&self, user_key: &[u8], seq: u64, kind: Kind, value: &[u8]) {
        self.approx_bytes.fetch_add(
            user_key.len() + keys::TRAILER_BYTES + value.len() + ENTRY_OVERHEAD_BYTES,
            AtomicOrdering::Relaxed,
        );
        self.max_seq.fetch_max(seq, AtomicOrdering::Relaxed);
        let mut map = self.map.write();
        let entry = MemKey::stored(&mut map.chunk, user_key, keys::pack_trailer(seq, kind), value);
        map.set.insert(entry);
    }

    /// Approximate memory used.
    pub fn approximate_bytes(&self) -> usize {
        self.approx_bytes.load(AtomicOrdering::Relaxed)
    }

    /// True if nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.map.read().set.is_empty()
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
        let map = self.map.read();
        if map.set.is_empty() {
            return false;
        }
        let start = MemKey::search(user_key, keys::pack_trailer(seq, Kind::MAX));
        let mut found = false;
        for k in map.set.range((Bound::Included(&start), Bound::Unbounded)) {
            if k.user_key() != user_key {
                break;
            }
            found = true;
            // Kinds come from our own inserts; an unknown one cannot occur, treat it as a stop.
            let Some(kind) = Kind::from_u8((k.trailer & 0xff) as u8) else { break };
            if !visit(kind, k.value()) {
                break;
            }
        }
        found
    }

    /// An iterator over all entries.
    pub fn iter(self: &Arc<Self>) -> MemtableIter {
        MemtableIter {
            mem: Arc::clone(self),
            arena: Vec::new(),
            spans: Vec::new(),
            pos: 0,
            exhausted: true,
            chunk: FIRST_CHUNK,
        }
    }
}

/// One entry of a [`MemtableIter`]'s chunk: its internal key at `start..key_end` in the arena, and its
/// value, a handle on the memtable's own bytes (a reference count, not a copy: values can be large).
#[derive(Clone, Debug)]
struct Span {
    start: usize,
    key_end: usize,
    value: Bytes,
}

/// Iterates a memtable by copying small chunks of entries' keys out of the tree into one reused buffer
/// (values are shared, not copied), so the iterator owns what it exposes, needs no borrow of the map,
/// and allocates only while its buffer grows.
pub struct MemtableIter {
    mem: Arc<Memtable>,
    arena: Vec<u8>,
    spans: Vec<Span>,
    pos: usize,
    // True once the tree has no entries past the end of `spans`.
    exhausted: bool,
    // Entries the next refill copies.
    chunk: usize,
}

impl MemtableIter {
    fn fill_from(&mut self, bound: Bound<&MemKey>) {
        self.arena.clear();
        self.spans.clear();
        self.pos = 0;
        let map = self.mem.map.read();
        for k in map.set.range((bound, Bound::Unbounded)) {
            if self.spans.len() == self.chunk {
                self.exhausted = false;
                return;
            }
            let start = self.arena.len();
            self.arena.extend_from_slice(k.user_key());
            self.arena.extend_from_slice(&k.trailer.to_le_bytes());
            let key_end = self.arena.len();
            let value = k.data.slice(k.key_len as usize..);
            self.spans.push(Span { start, key_end, value });
        }
        self.exhausted = true;
    }

    /// Refills from `bound` after a seek: a small chunk first.
    fn seek_from(&mut self, bound: Bound<&MemKey>) {
        self.chunk = FIRST_CHUNK;
        self.fill_from(bound);
    }
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.pos < self.spans.len()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.seek_from(Bound::Unbounded);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let key = MemKey::from_internal(target);
        self.seek_from(Bound::Included(&key));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        if self.pos >= self.spans.len()
            && !self.exhausted
            && let Some(last) = self.spans.last()
        {
            let key = MemKey::from_internal(&self.arena[last.start..last.key_end]);
            self.chunk = (self.chunk * 2).min(ITER_CHUNK);
            self.fill_from(Bound::Excluded(&key));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        let s = &self.spans[self.pos];
        &self.arena[s.start..s.key_end]
    }

    fn value(&self) -> &[u8] {
        &self.spans[self.pos].value
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
    fn entry_order_matches_internal_key_order() {
        // Keys around the inline head's edge: shorter than it, as long, longer, with zero bytes that the
        // padding could confuse, sharing the whole head and differing after it.
        let mut user_keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![1], vec![1, 0], vec![255]];
        for len in [HEAD_BYTES - 1, HEAD_BYTES, HEAD_BYTES + 1, HEAD_BYTES + 9] {
            for last in [0u8, 1, 255] {
                let mut k = vec![7u8; len];
                k[len - 1] = last;
                user_keys.push(k);
            }
        }
        let mut ikeys = Vec::new();
        for uk in &user_keys {
            for (seq, kind) in [(1, Kind::Set), (9, Kind::Delete), (9, Kind::Merge)] {
                ikeys.push(keys::internal_key(uk, seq, kind));
            }
        }
        for a in &ikeys {
            for b in &ikeys {
                let (ma, mb) = (MemKey::from_internal(a), MemKey::from_internal(b));
                assert_eq!(ma.cmp(&mb), keys::cmp_internal(a, b), "{a:?} vs {b:?}");
            }
        }
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
