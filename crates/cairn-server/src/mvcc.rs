//! MVCC on the engine: every version of a key is its own engine row.
//!
//! ```text
//! engine key   = escape(key) ++ 0x00 0x01 ++ !wall_time (8 B, big-endian) ++ !logical (4 B)
//! escape(key)  = key with every 0x00 byte written as 0x00 0xFF
//! column 0     = 0x00 ++ value      (a put)
//!              | 0x01               (a delete: a tombstone version)
//! ```
//!
//! The escaping keeps keys in byte order and makes the terminator sort below any continuation, so within
//! a bucket the engine holds keys in order and each key's versions newest first. The bucket of a key is
//! `xxh3(key) % total_buckets`.

use crate::hlc::{TIMESTAMP_BYTES, Timestamp};
use cairn_engine::{CompactionContext, CompactionFilter, CompactionFilterFactory, FilterDecision, Row};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The bucket of `key` in a space of `total_buckets`.
pub fn bucket_of(key: &[u8], total_buckets: u32) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(total_buckets.max(1))) as u16
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

/// Splits an engine key into the user key and the version's timestamp; `None` if malformed.
pub fn decode_version_key(engine_key: &[u8]) -> Option<(Vec<u8>, Timestamp)> {
    let split = engine_key.len().checked_sub(TIMESTAMP_BYTES)?;
    let (prefix, ts) = engine_key.split_at(split);
    let ts = Timestamp::decode_descending(ts)?;
    let body = prefix.strip_suffix(&[0x00, 0x01])?;
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        key.push(body[i]);
        if body[i] == 0 {
            if body.get(i + 1) != Some(&0xFF) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some((key, ts))
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
    match row.column(0)?.split_first()? {
        (0, v) => Some(Stored::Value(v.to_vec())),
        (1, []) => Some(Stored::Tombstone),
        _ => None,
    }
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

struct GcFilter {
    horizon: u64,
    current: Option<(u16, Vec<u8>)>,
    kept_below: bool,
}

impl CompactionFilter for GcFilter {
    fn filter(&mut self, bucket: u16, key: &[u8], _row: &Row) -> FilterDecision {
        let Some(split) = key.len().checked_sub(TIMESTAMP_BYTES) else { return FilterDecision::Keep };
        let Some(ts) = Timestamp::decode_descending(&key[split..]) else { return FilterDecision::Keep };
        let prefix = &key[..split];
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
    }

    #[test]
    fn gc_keeps_the_newest_version_below_the_horizon() {
        let mut f = GcFilter { horizon: 100, current: None, kept_below: false };
        let row = Row::from_columns([(0, vec![0, 1])]);
        let at = |w| version_key(b"k", Timestamp { wall_time: w, logical: 0 });
        let decisions: Vec<_> = [150, 120, 90, 80, 10].iter().map(|&w| f.filter(1, &at(w), &row)).collect();
        use FilterDecision::{Keep, Remove};
        assert_eq!(decisions, [Keep, Keep, Keep, Remove, Remove]);
        // A new key starts over.
        assert_eq!(f.filter(1, &version_key(b"l", Timestamp { wall_time: 50, logical: 0 }), &row), Keep);
    }
}
