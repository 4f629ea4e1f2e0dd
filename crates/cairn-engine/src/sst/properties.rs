//! Table properties: counts and key bounds the engine reads without scanning a table (compaction picking,
//! bucket-range pruning, statistics). Encoding, version [`PROPERTIES_VERSION`]:
//!
//! ```text
//! varint version
//! varint format_version, num_entries, num_deletions, num_data_blocks, raw_key_bytes, raw_value_bytes,
//!        data_bytes, index_bytes, filter_bytes, min_seq, max_seq, min_bucket, max_bucket
//! varint len ++ smallest_key, varint len ++ largest_key
//! ```
//!
//! Nothing may follow. A table with no entries has empty smallest/largest keys and zero seq/bucket bounds.

use crate::coding;
use crate::keys;

/// Version of the properties encoding, independent of the file's format version.
pub const PROPERTIES_VERSION: u64 = 1;

/// What a table holds, computed while it is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableProperties {
    /// The SST format version the table was written in.
    pub format_version: u32,
    /// Entries of every kind.
    pub num_entries: u64,
    /// Entries of kind [`keys::Kind::Delete`].
    pub num_deletions: u64,
    /// Data blocks.
    pub num_data_blocks: u64,
    /// Sum of internal key lengths.
    pub raw_key_bytes: u64,
    /// Sum of value lengths.
    pub raw_value_bytes: u64,
    /// Bytes of data blocks on disk, trailers included.
    pub data_bytes: u64,
    /// Bytes of the index block on disk, trailer included.
    pub index_bytes: u64,
    /// Bytes of the filter block on disk, trailer included (0 without a filter).
    pub filter_bytes: u64,
    /// The first internal key (empty for an empty table).
    pub smallest_key: Vec<u8>,
    /// The last internal key (empty for an empty table).
    pub largest_key: Vec<u8>,
    /// Smallest sequence number of any entry.
    pub min_seq: u64,
    /// Largest sequence number of any entry.
    pub max_seq: u64,
    /// Bucket of the smallest key.
    pub min_bucket: u16,
    /// Bucket of the largest key.
    pub max_bucket: u16,
}

impl TableProperties {
    /// Encodes the properties block contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.smallest_key.len() + self.largest_key.len());
        coding::put_varint(&mut out, PROPERTIES_VERSION);
        for v in [
            u64::from(self.format_version),
            self.num_entries,
            self.num_deletions,
            self.num_data_blocks,
            self.raw_key_bytes,
            self.raw_value_bytes,
            self.data_bytes,
            self.index_bytes,
            self.filter_bytes,
            self.min_seq,
            self.max_seq,
            u64::from(self.min_bucket),
            u64::from(self.max_bucket),
        ] {
            coding::put_varint(&mut out, v);
        }
        coding::put_bytes(&mut out, &self.smallest_key);
        coding::put_bytes(&mut out, &self.largest_key);
        out
    }

    /// Decodes and sanity-checks a properties block; the error is a detail for a corruption report.
    pub fn decode(mut buf: &[u8]) -> Result<TableProperties, String> {
        let b = &mut buf;
        let mut varint = || coding::get_varint(b).ok_or_else(|| "truncated properties".to_string());
        let version = varint()?;
        if version != PROPERTIES_VERSION {
            return Err(format!("unsupported properties version {version}"));
        }
        let format_version = u32::try_from(varint()?).map_err(|_| "format version out of range")?;
        let [num_entries, num_deletions, num_data_blocks, raw_key_bytes, raw_value_bytes] =
            [varint()?, varint()?, varint()?, varint()?, varint()?];
        let [data_bytes, index_bytes, filter_bytes, min_seq, max_seq] =
            [varint()?, varint()?, varint()?, varint()?, varint()?];
        let min_bucket = u16::try_from(varint()?).map_err(|_| "min bucket out of range")?;
        let max_bucket = u16::try_from(varint()?).map_err(|_| "max bucket out of range")?;
        let smallest_key = coding::get_bytes(&mut buf).ok_or("truncated smallest key")?.to_vec();
        let largest_key = coding::get_bytes(&mut buf).ok_or("truncated largest key")?.to_vec();
        if !buf.is_empty() {
            return Err(format!("{} unexpected bytes after properties", buf.len()));
        }
        let props = TableProperties {
            format_version,
            num_entries,
            num_deletions,
            num_data_blocks,
            raw_key_bytes,
            raw_value_bytes,
            data_bytes,
            index_bytes,
            filter_bytes,
            smallest_key,
            largest_key,
            min_seq,
            max_seq,
            min_bucket,
            max_bucket,
        };
        props.check()?;
        Ok(props)
    }

    /// Cross-field invariants every table satisfies.
    fn check(&self) -> Result<(), String> {
        if self.num_deletions > self.num_entries || self.min_seq > self.max_seq {
            return Err("inconsistent counts or sequence bounds".into());
        }
        if self.num_entries == 0 {
            if !self.smallest_key.is_empty() || !self.largest_key.is_empty() || self.num_data_blocks != 0 {
                return Err("empty table with keys or data blocks".into());
            }
            return Ok(());
        }
        if !keys::is_valid_internal_key(&self.smallest_key) || !keys::is_valid_internal_key(&self.largest_key)
        {
            return Err("invalid smallest or largest key".into());
        }
        if keys::cmp_internal(&self.smallest_key, &self.largest_key).is_gt()
            || self.min_bucket > self.max_bucket
        {
            return Err("smallest key after largest key".into());
        }
        if self.num_data_blocks == 0 {
            return Err("entries without data blocks".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Kind, internal_key, user_key};

    fn props() -> TableProperties {
        TableProperties {
            format_version: 1,
            num_entries: 1000,
            num_deletions: 10,
            num_data_blocks: 7,
            raw_key_bytes: 20_000,
            raw_value_bytes: 300_000,
            data_bytes: 123_456,
            index_bytes: 300,
            filter_bytes: 1_300,
            smallest_key: internal_key(&user_key(3, b"a"), 5, Kind::Set),
            largest_key: internal_key(&user_key(900, b"zz"), 9, Kind::Delete),
            min_seq: 5,
            max_seq: 1 << 50,
            min_bucket: 3,
            max_bucket: 900,
        }
    }

    #[test]
    fn round_trips() {
        let p = props();
        assert_eq!(TableProperties::decode(&p.encode()), Ok(p));
        let empty = TableProperties { format_version: 1, ..Default::default() };
        assert_eq!(TableProperties::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn rejects_truncation_trailing_bytes_and_nonsense() {
        let bytes = props().encode();
        for n in 0..bytes.len() {
            assert!(TableProperties::decode(&bytes[..n]).is_err(), "accepted {n} of {} bytes", bytes.len());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(TableProperties::decode(&long).is_err());
        let swapped = TableProperties { min_bucket: 901, ..props() };
        assert!(TableProperties::decode(&swapped.encode()).is_err());
        let bad_key = TableProperties { smallest_key: b"short".to_vec(), ..props() };
        assert!(TableProperties::decode(&bad_key.encode()).is_err());
    }
}
