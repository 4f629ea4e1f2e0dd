//! Rows and row deltas. A row maps column numbers (`u16`) to values. Entries store a row *delta*: some
//! columns set, some deleted. Reads fold deltas newest to oldest until they meet a complete row
//! ([`Kind::Set`](crate::keys::Kind)) or a row tombstone.
//!
//! Encoding of a delta: `varint count`, then per column in ascending column order
//! `varint column, u8 tag (0 = value, 1 = deleted), [varint len, bytes]`.

use crate::coding::{get_bytes, get_varint, put_bytes, put_varint, varint_len};

/// One row as returned by reads: its live columns in ascending column order.
///
/// Held as one buffer in the delta encoding (columns ascending, no tombstones, minimal varints), so a row
/// costs one allocation however many columns it has, and equal rows have equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    // INVARIANT: a well-formed delta with only set columns, canonically encoded.
    data: Vec<u8>,
}

impl Row {
    /// The value of `column`, if set.
    pub fn column(&self, column: u16) -> Option<&[u8]> {
        self.as_ref().column(column)
    }

    /// Live columns in ascending order.
    pub fn columns(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.as_ref().columns()
    }

    /// Number of live columns.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// True if no column is set.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A borrowed view of the row.
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef { data: &self.data }
    }

    /// Builds a row from (column, value) pairs; a later pair for the same column wins.
    pub fn from_columns(pairs: impl IntoIterator<Item = (u16, Vec<u8>)>) -> Row {
        let mut columns: Vec<(u16, Vec<u8>)> = Vec::new();
        for (c, v) in pairs {
            match columns.binary_search_by_key(&c, |(k, _)| *k) {
                Ok(i) => columns[i].1 = v,
                Err(i) => columns.insert(i, (c, v)),
            }
        }
        let mut data = Vec::new();
        if !columns.is_empty() {
            put_varint(&mut data, columns.len() as u64);
            for (c, v) in &columns {
                put_column(&mut data, *c, Some(v));
            }
        }
        Row { data }
    }
}

/// A row borrowed from a buffer (see [`crate::DbIter::advance`]); the same accessors as [`Row`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowRef<'a> {
    // INVARIANT: as `Row::data`.
    data: &'a [u8],
}

impl<'a> RowRef<'a> {
    /// A view of bytes that hold a row's encoding (see the `Row` invariant).
    pub(crate) fn new(data: &'a [u8]) -> RowRef<'a> {
        RowRef { data }
    }

    /// Bytes of the row's encoding.
    pub(crate) fn encoded_len(&self) -> usize {
        self.data.len()
    }

    /// The value of `column`, if set.
    pub fn column(&self, column: u16) -> Option<&'a [u8]> {
        self.columns().take_while(|(c, _)| *c <= column).find(|(c, _)| *c == column).map(|(_, v)| v)
    }

    /// Live columns in ascending order.
    pub fn columns(&self) -> impl Iterator<Item = (u16, &'a [u8])> + use<'a> {
        // Rows are well-formed by construction, so decoding cannot fail; a failure would end the walk.
        DeltaIter::new(self.data).map_while(|c| c.ok()).filter_map(|(c, v)| v.map(|v| (c, v)))
    }

    /// Number of live columns.
    pub fn len(&self) -> usize {
        let mut buf = self.data;
        get_varint(&mut buf).unwrap_or(0) as usize
    }

    /// True if no column is set.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// An owned copy.
    pub fn to_row(&self) -> Row {
        Row { data: self.data.to_vec() }
    }
}

/// Walks an encoded delta column by column without allocating, checking it as it goes: `Err` for
/// malformed bytes (then the walk ends).
struct DeltaIter<'a> {
    buf: &'a [u8],
    remaining: u64,
    prev: Option<u16>,
    failed: bool,
}

impl<'a> DeltaIter<'a> {
    fn new(mut buf: &'a [u8]) -> DeltaIter<'a> {
        match get_varint(&mut buf) {
            Some(remaining) => DeltaIter { buf, remaining, prev: None, failed: false },
            None => DeltaIter { buf, remaining: 0, prev: None, failed: true },
        }
    }

    fn column(&mut self) -> Option<(u16, Option<&'a [u8]>)> {
        let column = u16::try_from(get_varint(&mut self.buf)?).ok()?;
        if self.prev.is_some_and(|p| p >= column) {
            return None;
        }
        self.prev = Some(column);
        let (&tag, rest) = self.buf.split_first()?;
        self.buf = rest;
        let value = match tag {
            0 => Some(get_bytes(&mut self.buf)?),
            1 => None,
            _ => return None,
        };
        Some((column, value))
    }
}

impl<'a> Iterator for DeltaIter<'a> {
    type Item = Result<(u16, Option<&'a [u8]>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            self.failed = false;
            self.remaining = 0;
            return Some(Err(()));
        }
        if self.remaining == 0 {
            // Trailing bytes after the last column are malformed too.
            return if self.buf.is_empty() {
                None
            } else {
                self.buf = &[];
                Some(Err(()))
            };
        }
        self.remaining -= 1;
        match self.column() {
            Some(c) => Some(Ok(c)),
            None => {
                self.remaining = 0;
                self.buf = &[];
                Some(Err(()))
            }
        }
    }
}

/// A decoded delta: columns in ascending order, `None` meaning "deleted".
pub type Delta<'a> = Vec<(u16, Option<&'a [u8]>)>;

/// Encodes a single-column delta (the common write).
pub fn encode_single(out: &mut Vec<u8>, column: u16, value: Option<&[u8]>) {
    put_varint(out, 1);
    put_column(out, column, value);
}

/// Bytes [`encode_single`] appends for the same arguments.
pub fn single_len(column: u16, value: Option<&[u8]>) -> usize {
    let column_bytes = varint_len(u64::from(column)) + 1;
    let value_bytes = value.map_or(0, |v| varint_len(v.len() as u64) + v.len());
    varint_len(1) + column_bytes + value_bytes
}

fn put_column(out: &mut Vec<u8>, column: u16, value: Option<&[u8]>) {
    put_varint(out, u64::from(column));
    match value {
        Some(v) => {
            out.push(0);
            put_bytes(out, v);
        }
        None => out.push(1),
    }
}

/// Encodes a delta whose columns are in ascending order.
pub fn encode_delta(out: &mut Vec<u8>, columns: &[(u16, Option<&[u8]>)]) {
    debug_assert!(columns.windows(2).all(|w| w[0].0 < w[1].0));
    put_varint(out, columns.len() as u64);
    for (c, v) in columns {
        put_column(out, *c, *v);
    }
}

/// Decodes a delta; `None` if the bytes are malformed (the caller reports corruption).
pub fn decode_delta(buf: &[u8]) -> Option<Delta<'_>> {
    // Each column takes at least two bytes, which bounds the allocation by the input size.
    let mut out = Vec::with_capacity(buf.len() / 2 + 1);
    for column in DeltaIter::new(buf) {
        out.push(column.ok()?);
    }
    Some(out)
}

/// Checks that `buf` is a well-formed delta.
fn is_valid_delta(buf: &[u8]) -> bool {
    DeltaIter::new(buf).all(|c| c.is_ok())
}

/// Accumulates deltas from newest to oldest into a row. A column already decided by a newer delta is
/// left alone. Works on encoded deltas in reused buffers: folding allocates nothing once they have grown.
#[derive(Debug, Default)]
pub struct RowFolder {
    // INVARIANT: when `folded`, a well-formed delta (tombstones kept) holding the fold so far.
    acc: Vec<u8>,
    scratch: Vec<u8>,
    folded: bool,
}

impl RowFolder {
    /// Folds in an older delta. Returns `false` if the bytes are malformed.
    pub fn add_older(&mut self, encoded: &[u8]) -> bool {
        if !self.folded {
            if !is_valid_delta(encoded) {
                return false;
            }
            self.acc.clear();
            self.acc.extend_from_slice(encoded);
            self.folded = true;
            return true;
        }
        // Merge two ascending column lists; the newer side wins ties.
        let mut merged: Vec<(u16, Option<&[u8]>)> = Vec::new();
        let mut newer = DeltaIter::new(&self.acc).map_while(|c| c.ok()).peekable();
        let mut older = DeltaIter::new(encoded).peekable();
        loop {
            let take_newer = match (newer.peek(), older.peek()) {
                (_, Some(Err(()))) => return false,
                (Some(n), Some(Ok(o))) if n.0 == o.0 => {
                    older.next();
                    true
                }
                (Some(n), Some(Ok(o))) => n.0 < o.0,
                (Some(_), None) => true,
                (None, Some(Ok(_))) => false,
                (None, None) => break,
            };
            let next = if take_newer { newer.next() } else { older.next().and_then(|c| c.ok()) };
            merged.extend(next);
        }
        self.scratch.clear();
        encode_delta(&mut self.scratch, &merged);
        drop(merged);
        std::mem::swap(&mut self.acc, &mut self.scratch);
        true
    }

    /// True if nothing was folded in yet.
    pub fn is_empty(&self) -> bool {
        !self.folded
    }

    /// Writes the row so far, column tombstones dropped (what a read returns once the fold is complete),
    /// into `out` (cleared first; left empty for a row with no live column).
    pub fn write_row(&self, out: &mut Vec<u8>) {
        out.clear();
        let live = DeltaIter::new(&self.acc).map_while(|c| c.ok()).any(|(_, v)| v.is_some());
        if self.folded && live {
            self.encode(out, true);
        }
    }

    /// The row so far, column tombstones dropped.
    pub fn to_row(&self) -> Row {
        let mut data = Vec::new();
        self.write_row(&mut data);
        Row { data }
    }

    /// Consumes the folder into a row; when no column is a tombstone (the common case) the folded bytes
    /// already are the row and are moved, not copied.
    pub fn into_row(self) -> Row {
        if self.folded && self.is_canonical_row() {
            return Row { data: self.acc };
        }
        self.to_row()
    }

    /// True if the fold is already a row as [`Row`] holds it: at least one column, no tombstone, minimal
    /// varints (a longer encoding of the same columns would be longer than the canonical one).
    fn is_canonical_row(&self) -> bool {
        let mut count = 0u64;
        let mut canonical_len = 0usize;
        for column in DeltaIter::new(&self.acc) {
            let Ok((c, Some(v))) = column else { return false };
            count += 1;
            canonical_len += varint_len(u64::from(c)) + 1 + varint_len(v.len() as u64) + v.len();
        }
        count > 0 && canonical_len + varint_len(count) == self.acc.len()
    }

    /// Encodes the fold as a delta: with tombstones kept (`complete == false`, a merge that still layers on
    /// older data) or dropped (`complete == true`, a full row).
    pub fn encode(&self, out: &mut Vec<u8>, complete: bool) {
        let columns = || DeltaIter::new(&self.acc).map_while(|c| c.ok());
        let count = columns().filter(|(_, v)| !complete || v.is_some()).count();
        put_varint(out, count as u64);
        for (c, v) in columns().filter(|(_, v)| !complete || v.is_some()) {
            put_column(out, c, v);
        }
    }

    /// Forgets everything folded so far.
    pub fn clear(&mut self) {
        self.acc.clear();
        self.folded = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_len_matches_the_encoding() {
        let long = vec![9u8; 300];
        for column in [0u16, 127, 128, u16::MAX] {
            for value in [None, Some(&b""[..]), Some(&b"v"[..]), Some(&long[..])] {
                let mut out = Vec::new();
                encode_single(&mut out, column, value);
                assert_eq!(single_len(column, value), out.len());
            }
        }
    }

    fn enc(cols: &[(u16, Option<&[u8]>)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_delta(&mut out, cols);
        out
    }

    #[test]
    fn newer_columns_win_and_tombstones_hide_older_values() {
        let mut f = RowFolder::default();
        assert!(f.add_older(&enc(&[(1, Some(b"new1")), (3, None)])));
        assert!(f.add_older(&enc(&[(0, Some(b"old0")), (1, Some(b"old1")), (3, Some(b"old3"))])));
        let row = f.into_row();
        assert_eq!(row.column(0), Some(&b"old0"[..]));
        assert_eq!(row.column(1), Some(&b"new1"[..]));
        assert_eq!(row.column(3), None);
        assert_eq!(row.len(), 2);
    }

    #[test]
    fn rows_are_canonical_and_borrowable() {
        let row = Row::from_columns([(7, b"b".to_vec()), (2, b"a".to_vec()), (7, b"c".to_vec())]);
        assert_eq!(row.columns().collect::<Vec<_>>(), [(2, &b"a"[..]), (7, &b"c"[..])]);
        assert_eq!((row.len(), row.column(2), row.column(3)), (2, Some(&b"a"[..]), None));
        assert_eq!(row.as_ref().to_row(), row);
        // The same columns folded from deltas give an equal row.
        let mut f = RowFolder::default();
        assert!(f.add_older(&enc(&[(7, Some(b"c")), (9, None)])));
        assert!(f.add_older(&enc(&[(2, Some(b"a")), (9, Some(b"gone"))])));
        assert_eq!(f.to_row(), row);
        // A fold whose every column is deleted is an empty row.
        let mut f = RowFolder::default();
        assert!(f.add_older(&enc(&[(1, None)])));
        assert!(f.add_older(&enc(&[(1, Some(b"old"))])));
        assert!(f.to_row().is_empty());
        assert!(Row::from_columns([]).is_empty());
    }

    #[test]
    fn malformed_deltas_are_rejected() {
        assert!(decode_delta(&[]).is_none());
        assert!(decode_delta(&[1, 0, 7]).is_none()); // bad tag
        assert!(decode_delta(&[2, 5, 1, 3, 1]).is_none()); // columns not ascending
        assert!(decode_delta(&[200, 1]).is_none()); // count larger than the bytes allow
        let mut good = enc(&[(0, Some(b"x"))]);
        good.push(0);
        assert!(decode_delta(&good).is_none()); // trailing bytes
    }
}
