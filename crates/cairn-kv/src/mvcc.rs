//! MVCC on the engine: every version of a key is its own engine row.
//!
//! ```text
//! version row  = escape(key) ++ 0x00 0x01 ++ !wall_time (8 B, big-endian) ++ !logical (4 B)
//! latest row   = escape(key) ++ 0x00 0x00                 (sorts before the key's versions)
//! escape(key)  = key with every 0x00 byte written as 0x00 0xFF
//! column 0     = 0x00 ++ value      (a put)
//!              | 0x01               (a delete: a tombstone version)
//! column 1     = wall_time (8 B) ++ logical (4 B), big-endian: in the latest row, its version's time
//! ```
//!
//! Every write updates the key's latest row in the same atomic batch as its version row, so reading the
//! newest value is one point read (bloom filters apply); reads at a timestamp scan the versions.
//!
//! Engine keys starting `00 xx` with `xx` from 02 to FE are never an escaped key's (a 0x00 byte in one is followed
//! by 0xFF, 0x00 or 0x01), so they are reserved: `00 02` for the shard's own system rows (such as a
//! replicated shard's applied Raft position), `00 03` for write intents and `00 04` for transaction
//! records (the `txn` module's rows). Reads skip every reserved row.
//!
//! The escaping keeps keys in byte order and makes the terminator sort below any continuation, so within
//! a bucket the engine holds keys in order and each key's versions newest first. The bucket of a key is
//! `xxh3(key) % total_buckets`.

use crate::hlc::{TIMESTAMP_BYTES, Timestamp};
use cairn_engine::{
    CompactionContext, CompactionFilter, CompactionFilterFactory, FilterDecision, Row, WriteBatch,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix of system rows (never an escaped key's: a 0x00 byte is followed by 0xFF, 0x00 or 0x01).
pub const SYSTEM_PREFIX: &[u8] = b"\x00\x02";
/// The prefix of write intents.
pub const INTENT_PREFIX: &[u8] = b"\x00\x03";
/// The prefix of transaction records.
pub const TXN_RECORD_PREFIX: &[u8] = b"\x00\x04";

/// Whether `engine_key` is a reserved row (system, intent or transaction record), not a key's version
/// or latest row.
pub fn is_reserved(engine_key: &[u8]) -> bool {
    matches!(engine_key, [0x00, 0x02..=0xFE, ..])
}

/// The bucket of `key` in a space of `total_buckets`.
pub fn bucket_of(key: &[u8], total_buckets: u32) -> u16 {
    cairn_proto::bucket_of(key, total_buckets)
}

/// `escape(key) ++ terminator`: the prefix every version of `key` starts with.
pub fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + TIMESTAMP_BYTES);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

/// The engine key of `key`'s version at `ts`.
pub fn version_key(key: &[u8], ts: Timestamp) -> Vec<u8> {
    let mut out = key_prefix(key);
    out.extend_from_slice(&ts.encode_descending());
    out
}

/// The engine key of `key`'s latest row.
pub fn latest_key(key: &[u8]) -> Vec<u8> {
    let mut out = key_prefix(key);
    if let Some(last) = out.last_mut() {
        *last = 0x00;
    }
    out
}

/// Parses an engine key from the front (escaping makes that unambiguous): the user key, and the
/// version's timestamp (`None` for the latest row). `None` if malformed.
pub fn parse_engine_key(engine_key: &[u8]) -> Option<(Vec<u8>, Option<Timestamp>)> {
    match split_escaped(engine_key)? {
        (key, 0x00, []) => Some((key, None)),
        (key, 0x01, rest) => Some((key, Some(Timestamp::decode_descending(rest)?))),
        _ => None,
    }
}

/// Unescapes the key at the front of `engine_key`: the key, the second byte of its terminator (0x00 or
/// 0x01), and what follows the terminator. `None` if there is no terminator or an escape is bad.
pub(crate) fn split_escaped(engine_key: &[u8]) -> Option<(Vec<u8>, u8, &[u8])> {
    let mut key = Vec::with_capacity(engine_key.len());
    let mut i = 0;
    loop {
        let b = *engine_key.get(i)?;
        if b != 0 {
            key.push(b);
            i += 1;
            continue;
        }
        match *engine_key.get(i + 1)? {
            0xFF => {
                key.push(0);
                i += 2;
            }
            end @ (0x00 | 0x01) => return Some((key, end, &engine_key[i + 2..])),
            _ => return None,
        }
    }
}

/// Splits a version row's engine key into the user key and the version's timestamp; `None` if malformed
/// or a latest row.
pub fn decode_version_key(engine_key: &[u8]) -> Option<(Vec<u8>, Timestamp)> {
    match parse_engine_key(engine_key)? {
        (key, Some(ts)) => Some((key, ts)),
        (_, None) => None,
    }
}

/// Column 1 of a latest row.
pub fn encode_timestamp(ts: Timestamp) -> [u8; TIMESTAMP_BYTES] {
    let mut out = [0u8; TIMESTAMP_BYTES];
    out[..8].copy_from_slice(&ts.wall_time.to_be_bytes());
    out[8..].copy_from_slice(&ts.logical.to_be_bytes());
    out
}

/// Decodes column 1 of a latest row.
pub fn decode_timestamp(row: &Row) -> Option<Timestamp> {
    let bytes = row.column(1)?;
    let wall: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let logical: [u8; 4] = bytes.get(8..TIMESTAMP_BYTES)?.try_into().ok()?;
    (bytes.len() == TIMESTAMP_BYTES)
        .then_some(Timestamp { wall_time: u64::from_be_bytes(wall), logical: u32::from_be_bytes(logical) })
}

/// One stored version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A value.
    Value(Vec<u8>),
    /// A delete.
    Tombstone,
}

/// Column 0's bytes for `value` (`None`: a tombstone).
pub fn encode_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(0);
            out.extend_from_slice(v);
            out
        }
        None => vec![1],
    }
}

/// Decodes column 0 of a version row; `None` if malformed.
pub fn decode_value(row: &Row) -> Option<Stored> {
    decode_column(row.column(0)?)
}

/// Decodes a value as [`encode_value`] wrote it (column 0 of a version or an intent); `None` if
/// malformed.
pub fn decode_column(column: &[u8]) -> Option<Stored> {
    match column.split_first()? {
        (0, v) => Some(Stored::Value(v.to_vec())),
        (1, []) => Some(Stored::Tombstone),
        _ => None,
    }
}

/// Adds `key`'s version at `ts` (`value`, or a tombstone for `None`) and its latest row to `batch`.
pub fn add_version(batch: &mut WriteBatch, bucket: u16, key: &[u8], ts: Timestamp, value: Option<&[u8]>) {
    let encoded = encode_value(value);
    batch.put(bucket, &version_key(key, ts), 0, &encoded);
    // A whole-row write: a read of the latest row never folds through older deltas of a hot key.
    batch.put_row(bucket, &latest_key(key), &[(0, &encoded), (1, &encode_timestamp(ts))]);
}

/// Nanoseconds since the Unix epoch, `ttl` ago.
pub fn horizon(ttl: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(now.saturating_sub(ttl.as_nanos())).unwrap_or(0)
}

/// Drops versions below the GC horizon (`now - ttl`) that no read at or above the horizon can see: for
/// each key it keeps every version at or above the horizon and the newest one below it.
#[derive(Debug)]
pub struct GcFilterFactory {
    /// How long old versions stay readable.
    pub ttl: Duration,
}

impl CompactionFilterFactory for GcFilterFactory {
    fn create(&self, _ctx: CompactionContext) -> Box<dyn CompactionFilter> {
        Box::new(GcFilter { horizon: horizon(self.ttl), current: None, kept_below: false })
    }
}

/// [`GcFilterFactory`] for a replicated shard: the horizon is the GC threshold the shard's log decided,
/// which its engine hands every compaction ([`CompactionContext::threshold`], raised by the shard's
/// applier); 0, before any was decided, keeps every version. Every replica applies the same thresholds
/// at the same log positions, so replicas that compacted at different times differ only in versions
/// that no read at or above the threshold sees, and a digest over what this filter keeps at the
/// threshold of a log position ([`cairn_engine::View::content_digest_filtered`]) is equal on all of
/// them.
#[derive(Debug, Default)]
pub struct ThresholdGcFilterFactory;

impl CompactionFilterFactory for ThresholdGcFilterFactory {
    fn create(&self, ctx: CompactionContext) -> Box<dyn CompactionFilter> {
        Box::new(GcFilter { horizon: ctx.threshold, current: None, kept_below: false })
    }
}

pub(crate) struct GcFilter {
    pub(crate) horizon: u64,
    pub(crate) current: Option<(u16, Vec<u8>)>,
    pub(crate) kept_below: bool,
}

impl CompactionFilter for GcFilter {
    fn filter(&mut self, bucket: u16, key: &[u8], _row: &Row) -> FilterDecision {
        // Latest rows always stay; only version rows age out.
        let Some((_, Some(ts))) = parse_engine_key(key) else { return FilterDecision::Keep };
        let prefix = &key[..key.len() - TIMESTAMP_BYTES];
        if self.current.as_ref().is_none_or(|(b, p)| *b != bucket || p.as_slice() != prefix) {
            self.current = Some((bucket, prefix.to_vec()));
            self.kept_below = false;
        }
        if ts.wall_time >= self.horizon {
            return FilterDecision::Keep;
        }
        if self.kept_below {
            FilterDecision::Remove
        } else {
            self.kept_below = true;
            FilterDecision::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_byte_order_and_versions_sort_newest_first() {
        let keys: Vec<&[u8]> =
            vec![b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\x00b", b"ab", b"\xff"];
        let t1 = Timestamp { wall_time: 5, logical: 0 };
        let t2 = Timestamp { wall_time: 5, logical: 1 };
        let mut encoded = Vec::new();
        for k in &keys {
            encoded.push(version_key(k, t2));
            encoded.push(version_key(k, t1));
            assert_eq!(decode_version_key(&version_key(k, t1)), Some((k.to_vec(), t1)));
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded, "engine order must be key order, then newest first");
        assert_eq!(decode_version_key(b"short"), None);
        // Latest rows sort just before their key's versions, after every shorter key's.
        for k in &keys {
            let latest = latest_key(k);
            assert_eq!(parse_engine_key(&latest), Some((k.to_vec(), None)));
            assert!(latest < version_key(k, Timestamp::MAX));
            assert_eq!(decode_version_key(&latest), None);
        }
        assert!(version_key(b"a", t1) < latest_key(b"a\x00"));
        // A version whose inverted logical ends in zero bytes is still a version.
        let odd = Timestamp { wall_time: 7, logical: u32::MAX };
        assert_eq!(parse_engine_key(&version_key(b"k", odd)), Some((b"k".to_vec(), Some(odd))));
        // No key's rows are reserved; every reserved prefix is.
        for k in &keys {
            assert!(!is_reserved(&latest_key(k)) && !is_reserved(&version_key(k, t1)), "{k:?}");
        }
        for p in [SYSTEM_PREFIX, INTENT_PREFIX, TXN_RECORD_PREFIX] {
            assert!(is_reserved(p) && parse_engine_key(p).is_none());
        }
    }

    #[test]
    fn gc_keeps_the_newest_version_below_the_horizon() {
        let mut f = GcFilter { horizon: 100, current: None, kept_below: false };
        let row = Row::from_columns([(0, vec![0, 1])]);
        let at = |w| version_key(b"k", Timestamp { wall_time: w, logical: 0 });
        let decisions: Vec<_> = [150, 120, 90, 80, 10].iter().map(|&w| f.filter(1, &at(w), &row)).collect();
        use FilterDecision::{Keep, Remove};
        assert_eq!(decisions, [Keep, Keep, Keep, Remove, Remove]);
        // A new key starts over; latest rows always stay.
        assert_eq!(f.filter(1, &version_key(b"l", Timestamp { wall_time: 50, logical: 0 }), &row), Keep);
        assert_eq!(f.filter(1, &latest_key(b"a-long-key-of-many-bytes"), &row), Keep);
    }
}
