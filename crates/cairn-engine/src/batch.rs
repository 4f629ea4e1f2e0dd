//! Write batches: a list of row operations applied atomically with consecutive sequence numbers.
//!
//! Encoding (also the WAL record payload): `u64 LE first sequence | u32 LE count | count × entry`, entry =
//! `u8 kind | varint len, user key | varint len, value`. The first sequence is filled in at commit time.

use crate::coding::{MAX_VARINT_BYTES, get_bytes, get_u32, get_u64, put_varint};
use crate::keys::{BUCKET_BYTES, Kind, MAX_KEY_BYTES};
use crate::row;

/// Bytes before the first entry.
pub const BATCH_HEADER_BYTES: usize = 12;
/// Capacity a new batch starts with: room for one typical small write, so it does not reallocate.
const INITIAL_CAPACITY: usize = 256;

/// An atomic group of writes to any buckets the shard owns.
#[derive(Clone, Debug)]
pub struct WriteBatch {
    // INVARIANT: rep[..12] is the header; `count` entries follow, each well-formed.
    rep: Vec<u8>,
    count: u32,
    // Distinct buckets touched, in first-touch order: `first` then `others` (usually empty, so a batch
    // for one bucket allocates nothing for them).
    first_bucket: Option<u16>,
    other_buckets: Vec<u16>,
    max_key_len: usize,
}

impl Default for WriteBatch {
    fn default() -> Self {
        WriteBatch::new()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        let mut rep = Vec::with_capacity(INITIAL_CAPACITY);
        rep.resize(BATCH_HEADER_BYTES, 0);
        WriteBatch { rep, count: 0, first_bucket: None, other_buckets: Vec::new(), max_key_len: 0 }
    }

    /// Appends one entry whose value, `value_len` bytes long, `write_value` appends.
    fn push(
        &mut self,
        kind: Kind,
        bucket: u16,
        key: &[u8],
        value_len: usize,
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let user_key_len = BUCKET_BYTES + key.len();
        self.rep.reserve(1 + 2 * MAX_VARINT_BYTES + user_key_len + value_len);
        self.rep.push(kind as u8);
        put_varint(&mut self.rep, user_key_len as u64);
        self.rep.extend_from_slice(&bucket.to_be_bytes());
        self.rep.extend_from_slice(key);
        put_varint(&mut self.rep, value_len as u64);
        let before = self.rep.len();
        write_value(&mut self.rep);
        debug_assert_eq!(self.rep.len() - before, value_len);
        self.count += 1;
        match self.first_bucket {
            None => self.first_bucket = Some(bucket),
            Some(b) if b == bucket => {}
            // Only neighbours are deduplicated, keeping a push O(1); the check in `Db::write` tolerates
            // repeats.
            Some(_) if self.other_buckets.last() == Some(&bucket) => {}
            Some(_) => self.other_buckets.push(bucket),
        }
        self.max_key_len = self.max_key_len.max(key.len());
        self.rep[8..12].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Sets `column` of row `key` in `bucket`.
    pub fn put(&mut self, bucket: u16, key: &[u8], column: u16, value: &[u8]) {
        let len = row::single_len(column, Some(value));
        self.push(Kind::Merge, bucket, key, len, |out| row::encode_single(out, column, Some(value)));
    }

    /// Replaces the whole row `key` with `columns` (ascending, distinct column numbers): older versions of
    /// the row are shadowed at once, so a read never folds past it. Out-of-order or repeated columns are
    /// sorted, the last value of a repeated column winning.
    pub fn put_row(&mut self, bucket: u16, key: &[u8], columns: &[(u16, &[u8])]) {
        let mut sorted: Vec<(u16, Option<&[u8]>)> = Vec::with_capacity(columns.len());
        for &(c, v) in columns {
            match sorted.iter_mut().find(|(sc, _)| *sc == c) {
                Some(slot) => slot.1 = Some(v),
                None => sorted.push((c, Some(v))),
            }
        }
        sorted.sort_by_key(|(c, _)| *c);
        let mut value = Vec::new();
        row::encode_delta(&mut value, &sorted);
        self.push(Kind::Set, bucket, key, value.len(), |out| out.extend_from_slice(&value));
    }

    /// Deletes `column` of row `key`; other columns stay.
    pub fn delete_column(&mut self, bucket: u16, key: &[u8], column: u16) {
        let len = row::single_len(column, None);
        self.push(Kind::Merge, bucket, key, len, |out| row::encode_single(out, column, None));
    }

    /// Deletes the whole row `key`.
    pub fn delete(&mut self, bucket: u16, key: &[u8]) {
        self.push(Kind::Delete, bucket, key, 0, |_| {});
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.rep.len()
    }

    /// The buckets the batch touches (each at least once, possibly more than once).
    pub fn buckets(&self) -> impl Iterator<Item = u16> + '_ {
        self.first_bucket.into_iter().chain(self.other_buckets.iter().copied())
    }

    /// Longest key in the batch.
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    /// Clears the batch for reuse.
    pub fn clear(&mut self) {
        self.rep.clear();
        self.rep.resize(BATCH_HEADER_BYTES, 0);
        self.count = 0;
        self.first_bucket = None;
        self.other_buckets.clear();
        self.max_key_len = 0;
    }

    /// The batch's encoding (the format in the module doc; its sequence field is meaningless until
    /// commit). What replication ships; [`WriteBatch::extend_from_bytes`] reads it back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.rep
    }

    /// Appends every entry of an encoded batch (from [`WriteBatch::as_bytes`]), checking its structure
    /// first: on error nothing is appended.
    pub fn extend_from_bytes(&mut self, encoded: &[u8]) -> crate::Result<()> {
        let bad = |e: &str| crate::Error::InvalidArgument(format!("malformed write batch: {e}"));
        let mut entries = Vec::new();
        for entry in BatchIter::new(encoded).map_err(bad)? {
            let (kind, user_key, value) = entry.map_err(bad)?;
            let [hi, lo, key @ ..] = user_key else {
                return Err(bad("entry key shorter than its bucket"));
            };
            entries.push((kind, u16::from_be_bytes([*hi, *lo]), key, value));
        }
        for (kind, bucket, key, value) in entries {
            self.push(kind, bucket, key, value.len(), |out| out.extend_from_slice(value));
        }
        Ok(())
    }

    pub(crate) fn set_sequence(&mut self, seq: u64) {
        self.rep[..8].copy_from_slice(&seq.to_le_bytes());
    }

    pub(crate) fn encoded(&self) -> &[u8] {
        &self.rep
    }

    /// Checks the batch against the limits before it is committed.
    pub(crate) fn check_limits(&self, max_value_bytes: usize, max_batch_bytes: usize) -> crate::Result<()> {
        if self.max_key_len > MAX_KEY_BYTES {
            return Err(crate::Error::InvalidArgument(format!(
                "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
                self.max_key_len
            )));
        }
        if self.rep.len() > max_batch_bytes {
            return Err(crate::Error::InvalidArgument(format!(
                "batch of {} bytes exceeds max_batch_bytes {max_batch_bytes}",
                self.rep.len()
            )));
        }
        for entry in BatchIter::new(&self.rep).map_err(|e| crate::Error::InvalidArgument(e.into()))? {
            let (_, _, value) = entry.map_err(|e| crate::Error::InvalidArgument(e.into()))?;
            if value.len() > max_value_bytes + 16 {
                return Err(crate::Error::InvalidArgument(format!(
                    "value of {} bytes exceeds max_value_bytes {max_value_bytes}",
                    value.len()
                )));
            }
        }
        Ok(())
    }
}

/// Iterates the entries of an encoded batch, checking its structure. Errors are static descriptions that
/// the caller wraps with the file or context.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    remaining: u32,
    /// Sequence number of the first entry.
    pub first_seq: u64,
}

impl<'a> BatchIter<'a> {
    /// Parses the header.
    pub fn new(mut rep: &'a [u8]) -> Result<BatchIter<'a>, &'static str> {
        let first_seq = get_u64(&mut rep).ok_or("batch header truncated")?;
        let count = get_u32(&mut rep).ok_or("batch header truncated")?;
        Ok(BatchIter { rest: rep, remaining: count, first_seq })
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(Kind, &'a [u8], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return if self.rest.is_empty() { None } else { Some(Err("trailing bytes after batch entries")) };
        }
        self.remaining -= 1;
        let parsed = (|| {
            let (&kind, rest) = self.rest.split_first().ok_or("batch entry truncated")?;
            self.rest = rest;
            let kind = Kind::from_u8(kind).ok_or("unknown entry kind in batch")?;
            let key = get_bytes(&mut self.rest).ok_or("batch key truncated")?;
            if key.len() < 2 || key.len() > MAX_KEY_BYTES + 2 {
                return Err("batch key has an impossible length");
            }
            let value = get_bytes(&mut self.rest).ok_or("batch value truncated")?;
            Ok((kind, key, value))
        })();
        if parsed.is_err() {
            self.remaining = 0;
            self.rest = &[];
        }
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_batches_extend_others_and_bad_bytes_are_refused() {
        let mut a = WriteBatch::new();
        a.put(3, b"a", 0, b"v");
        a.delete(9, b"b");
        let mut b = WriteBatch::new();
        b.put_row(4, b"r", &[(0, b"x")]);
        b.extend_from_bytes(a.as_bytes()).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.buckets().collect::<Vec<_>>(), [4, 3, 9]);
        let mut copy = WriteBatch::new();
        copy.extend_from_bytes(b.as_bytes()).unwrap();
        assert_eq!(copy.as_bytes(), b.as_bytes());
        for bad in [&a.as_bytes()[..5], &a.as_bytes()[..a.as_bytes().len() - 1], &[0u8; 12][..]] {
            let mut target = WriteBatch::new();
            let outcome = target.extend_from_bytes(bad);
            assert!(outcome.is_err() || bad.len() == 12, "{bad:?}");
            assert!(target.is_empty());
        }
        let mut trailing = a.as_bytes().to_vec();
        trailing.push(0);
        assert!(WriteBatch::new().extend_from_bytes(&trailing).is_err());
    }

    #[test]
    fn batch_round_trips() {
        let mut b = WriteBatch::new();
        b.put(3, b"a", 0, b"v");
        b.delete_column(3, b"a", 1);
        b.delete(9, b"b");
        b.put_row(4, b"r", &[(2, b"y"), (0, b"x"), (2, b"z")]);
        b.set_sequence(42);
        let it = BatchIter::new(b.encoded()).unwrap();
        assert_eq!(it.first_seq, 42);
        let entries: Vec<_> = it.collect::<Result<_, _>>().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, Kind::Merge);
        assert_eq!(entries[0].1, &crate::keys::user_key(3, b"a")[..]);
        assert_eq!(entries[2].0, Kind::Delete);
        assert_eq!(entries[3].0, Kind::Set);
        let row = row::decode_delta(entries[3].2).unwrap();
        assert_eq!(row, vec![(0, Some(&b"x"[..])), (2, Some(&b"z"[..]))]);
        assert_eq!(b.buckets().collect::<Vec<_>>(), [3, 9, 4]);
    }

    #[test]
    fn truncated_batches_are_errors_not_panics() {
        let mut b = WriteBatch::new();
        b.put(1, b"key", 0, b"value");
        let enc = b.encoded().to_vec();
        for cut in 0..enc.len() {
            let res: Result<Vec<_>, _> = match BatchIter::new(&enc[..cut]) {
                Ok(it) => it.collect(),
                Err(e) => Err(e),
            };
            assert!(res.is_err(), "cut at {cut} parsed");
        }
    }
}
