//! A shard leader's timestamp cache: the highest timestamp each key (and each key span) was read at by
//! a transaction, so that a transaction's write below an earlier read moves up above it instead of
//! changing what the read saw (`docs/plans/transactions.md` §4).
//!
//! Entries carry the reading transaction's id: a transaction's own read never pushes its own write.
//! When two transactions read a key at the same timestamp, the id is dropped (either one's write there
//! must move up).
//!
//! The cache is bounded: it keeps two generations of entries, and when the current one fills, the
//! previous one is dropped and the *low water* rises to the highest timestamp it held. Every lookup
//! answers at least the low water, so forgetting an entry only ever pushes writes higher, never lets
//! one land below a read. A new leader starts with a low water above anything an earlier leader can
//! have served ([`TsCache::new`]).

use crate::hlc::Timestamp;
use crate::txn::TxnId;
use std::collections::HashMap;

/// The highest read of a key: when, and by which transaction (`None`: several, or not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark {
    /// The read timestamp.
    pub ts: Timestamp,
    /// The one transaction that read at `ts`.
    pub txn: Option<TxnId>,
}

impl ReadMark {
    /// The later of two marks; at an equal timestamp, the transaction only if both name it.
    fn max(self, other: ReadMark) -> ReadMark {
        match self.ts.cmp(&other.ts) {
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Equal if self.txn == other.txn => self,
            std::cmp::Ordering::Equal => ReadMark { ts: self.ts, txn: None },
        }
    }
}

/// One generation of entries.
#[derive(Debug, Default)]
struct Generation {
    points: HashMap<Vec<u8>, ReadMark>,
    // Key spans [start, end) (`end` empty: to the end of the key space), searched in full: spans
    // come from transactions' scans, far fewer than points.
    spans: Vec<(Vec<u8>, Vec<u8>, ReadMark)>,
    // The highest timestamp in this generation.
    high: Option<Timestamp>,
}

impl Generation {
    fn len(&self) -> usize {
        self.points.len() + self.spans.len()
    }

    fn note(&mut self, ts: Timestamp) {
        self.high = self.high.max(Some(ts));
    }

    fn lookup(&self, key: &[u8]) -> Option<ReadMark> {
        let point = self.points.get(key).copied();
        let spans = self
            .spans
            .iter()
            .filter(|(start, end, _)| key >= start.as_slice() && (end.is_empty() || key < end.as_slice()))
            .map(|(_, _, mark)| *mark);
        point.into_iter().chain(spans).reduce(ReadMark::max)
    }
}

/// A shard leader's timestamp cache (see the module's description).
#[derive(Debug)]
pub struct TsCache {
    current: Generation,
    previous: Generation,
    low_water: Timestamp,
    // Entries per generation before it rotates.
    capacity: usize,
}

/// Entries a leader's cache keeps per generation, by default (two generations are kept).
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

impl TsCache {
    /// An empty cache whose every lookup answers at least `low_water`, rotating every `capacity`
    /// entries. A new leader passes a timestamp above any read an earlier leader can have served: its
    /// clock's physical time plus twice the maximum clock offset (the earlier leader accepted reads at
    /// most one offset ahead of its clock, which is at most one offset ahead of this one's).
    pub fn new(low_water: Timestamp, capacity: usize) -> TsCache {
        TsCache {
            current: Generation::default(),
            previous: Generation::default(),
            low_water,
            capacity: capacity.max(1),
        }
    }

    /// The low water: every lookup answers at least this.
    pub fn low_water(&self) -> Timestamp {
        self.low_water
    }

    /// Records a read of `key` at `ts` by `txn`.
    pub fn add(&mut self, key: &[u8], ts: Timestamp, txn: Option<TxnId>) {
        if ts <= self.low_water {
            return;
        }
        let mark = ReadMark { ts, txn };
        let entry = self.current.points.entry(key.to_vec()).or_insert(mark);
        *entry = entry.max(mark);
        self.current.note(ts);
        self.rotate_if_full();
    }

    /// Records a read of the keys in `[start, end)` (`end` empty: to the end) at `ts` by `txn`.
    pub fn add_span(&mut self, start: &[u8], end: &[u8], ts: Timestamp, txn: Option<TxnId>) {
        if ts <= self.low_water {
            return;
        }
        self.current.spans.push((start.to_vec(), end.to_vec(), ReadMark { ts, txn }));
        self.current.note(ts);
        self.rotate_if_full();
    }

    /// The highest read of `key`: at least the low water (by no known transaction).
    pub fn lookup(&self, key: &[u8]) -> ReadMark {
        let floor = ReadMark { ts: self.low_water, txn: None };
        [self.current.lookup(key), self.previous.lookup(key)].into_iter().flatten().fold(floor, ReadMark::max)
    }

    /// Raises the low water to `ts` (a leader that learns of reads it has no entries for).
    pub fn raise_low_water(&mut self, ts: Timestamp) {
        self.low_water = self.low_water.max(ts);
    }

    fn rotate_if_full(&mut self) {
        if self.current.len() < self.capacity {
            return;
        }
        let dropped = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
        if let Some(high) = dropped.high {
            self.low_water = self.low_water.max(high);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall: u64) -> Timestamp {
        Timestamp { wall_time: wall, logical: 0 }
    }

    fn id(n: u64) -> TxnId {
        TxnId::new(n, ts(n))
    }

    #[test]
    fn a_lookup_answers_the_highest_read_of_the_key_with_its_reader_and_never_below_the_low_water() {
        let mut c = TsCache::new(ts(10), 100);
        assert_eq!(c.lookup(b"k"), ReadMark { ts: ts(10), txn: None });
        c.add(b"k", ts(5), Some(id(1)));
        assert_eq!(c.lookup(b"k").ts, ts(10), "below the low water: nothing to keep");
        c.add(b"k", ts(20), Some(id(1)));
        c.add(b"k", ts(15), Some(id(2)));
        assert_eq!(c.lookup(b"k"), ReadMark { ts: ts(20), txn: Some(id(1)) });
        // Two readers at one timestamp: neither one's write there may stay.
        c.add(b"k", ts(20), Some(id(2)));
        assert_eq!(c.lookup(b"k"), ReadMark { ts: ts(20), txn: None });
        c.add(b"k", ts(20), Some(id(1)));
        assert_eq!(c.lookup(b"k").txn, None);
        assert_eq!(c.lookup(b"other"), ReadMark { ts: ts(10), txn: None });
    }

    #[test]
    fn spans_cover_their_keys_from_start_up_to_end() {
        let mut c = TsCache::new(ts(0), 100);
        c.add_span(b"b", b"d", ts(30), Some(id(1)));
        c.add_span(b"x", b"", ts(40), None);
        c.add(b"c", ts(35), Some(id(2)));
        assert_eq!(c.lookup(b"a").ts, ts(0));
        assert_eq!(c.lookup(b"b"), ReadMark { ts: ts(30), txn: Some(id(1)) });
        assert_eq!(c.lookup(b"c"), ReadMark { ts: ts(35), txn: Some(id(2)) });
        assert_eq!(c.lookup(b"d").ts, ts(0), "the end is not in the span");
        assert_eq!(c.lookup(b"zzz").ts, ts(40));
    }

    #[test]
    fn a_full_cache_forgets_its_oldest_generation_by_raising_the_low_water_to_its_highest_read() {
        let mut c = TsCache::new(ts(0), 2);
        c.add(b"a", ts(50), Some(id(1)));
        c.add(b"b", ts(20), Some(id(1)));
        // Rotated: a and b are in the previous generation, still answered exactly.
        assert_eq!(c.lookup(b"a"), ReadMark { ts: ts(50), txn: Some(id(1)) });
        assert_eq!(c.low_water(), ts(0));
        c.add(b"c", ts(30), None);
        c.add(b"d", ts(31), None);
        // a and b dropped: the low water is their highest read, so no lookup answers less than it.
        assert_eq!(c.low_water(), ts(50));
        for key in [b"a", b"b", b"c", b"d"] {
            assert!(c.lookup(key).ts >= ts(50), "{key:?}");
        }
        assert_eq!(c.lookup(b"b"), ReadMark { ts: ts(50), txn: None });
        c.raise_low_water(ts(60));
        assert_eq!(c.lookup(b"a").ts, ts(60));
    }
}
