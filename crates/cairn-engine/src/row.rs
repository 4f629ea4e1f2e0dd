//! Rows and row deltas. A row maps column numbers (`u16`) to values. Entries store a row *delta*: some
//! columns set, some deleted. Reads fold deltas newest to oldest until they meet a complete row
//! ([`Kind::Set`](crate::keys::Kind)) or a row tombstone.
//!
//! Encoding of a delta: `varint count`, then per column in ascending column order
//! `varint column, u8 tag (0 = value, 1 = deleted), [varint len, bytes]`.

use crate::coding::{get_bytes, get_varint, put_bytes, put_varint, varint_len};

/// One row as returned by reads: its live columns in ascending column order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    columns: Vec<(u16, Vec<u8>)>,
}

impl Row {
    /// The value of `column`, if set.
    pub fn column(&self, column: u16) -> Option<&[u8]> {
        self.columns.binary_search_by_key(&column, |(c, _)| *c).ok().map(|i| self.columns[i].1.as_slice())
    }

    /// Live columns in ascending order.
    pub fn columns(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.columns.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    /// Number of live columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True if no column is set.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
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
        Row { columns }
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
pub fn decode_delta(mut buf: &[u8]) -> Option<Delta<'_>> {
    let count = get_varint(&mut buf)?;
    // Each column takes at least two bytes, which bounds the allocation by the input size.
    if count > buf.len() as u64 / 2 + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut prev: Option<u16> = None;
    for _ in 0..count {
        let column = u16::try_from(get_varint(&mut buf)?).ok()?;
        if prev.is_some_and(|p| p >= column) {
            return None;
        }
        prev = Some(column);
        let (&tag, rest) = buf.split_first()?;
        buf = rest;
        let value = match tag {
            0 => Some(get_bytes(&mut buf)?),
            1 => None,
            _ => return None,
        };
        out.push((column, value));
    }
    if !buf.is_empty() {
        return None;
    }
    Some(out)
}

/// Accumulates deltas from newest to oldest into a row. A column already decided by a newer delta is
/// left alone.
#[derive(Debug, Default)]
pub struct RowFolder {
    // INVARIANT: sorted by column; `None` records a column deleted by a newer delta.
    columns: Vec<(u16, Option<Vec<u8>>)>,
}

impl RowFolder {
    /// Folds in an older delta. Returns `false` if the bytes are malformed.
    pub fn add_older(&mut self, encoded: &[u8]) -> bool {
        let Some(delta) = decode_delta(encoded) else { return false };
        if self.columns.is_empty() {
            self.columns = delta.into_iter().map(|(c, v)| (c, v.map(<[u8]>::to_vec))).collect();
            return true;
        }
        let mut merged = Vec::with_capacity(self.columns.len() + delta.len());
        let mut newer = std::mem::take(&mut self.columns).into_iter().peekable();
        let mut older = delta.into_iter().peekable();
        loop {
            match (newer.peek(), older.peek()) {
                (Some(n), Some(o)) if n.0 < o.0 => merged.extend(newer.next()),
                (Some(n), Some(o)) if n.0 > o.0 => {
                    merged.extend(older.next().map(|(c, v)| (c, v.map(<[u8]>::to_vec))))
                }
                (Some(_), Some(_)) => {
                    merged.extend(newer.next());
                    older.next();
                }
                (Some(_), None) => merged.extend(newer.next()),
                (None, Some(_)) => merged.extend(older.next().map(|(c, v)| (c, v.map(<[u8]>::to_vec)))),
                (None, None) => break,
            }
        }
        self.columns = merged;
        true
    }

    /// True if nothing was folded in yet.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The row so far, column tombstones dropped (what a read returns once the fold is complete).
    pub fn to_row(&self) -> Row {
        Row {
            columns: self.columns.iter().filter_map(|(c, v)| v.as_ref().map(|v| (*c, v.clone()))).collect(),
        }
    }

    /// Consumes the folder into a row.
    pub fn into_row(self) -> Row {
        Row { columns: self.columns.into_iter().filter_map(|(c, v)| v.map(|v| (c, v))).collect() }
    }

    /// Encodes the fold as a delta: with tombstones kept (`complete == false`, a merge that still layers on
    /// older data) or dropped (`complete == true`, a full row).
    pub fn encode(&self, out: &mut Vec<u8>, complete: bool) {
        let cols: Vec<(u16, Option<&[u8]>)> = self
            .columns
            .iter()
            .filter(|(_, v)| !complete || v.is_some())
            .map(|(c, v)| (*c, v.as_deref()))
            .collect();
        encode_delta(out, &cols);
    }

    /// Forgets everything folded so far.
    pub fn clear(&mut self) {
        self.columns.clear();
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
