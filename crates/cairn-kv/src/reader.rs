//! Reading a key's versions from a shard's engine: the newest one (one point read of the key's latest
//! row) or the newest at or below a timestamp (a short scan of its version rows).

use crate::error::KvError;
use crate::hlc::Timestamp;
use crate::mvcc::{self, Stored};
use crate::txn::{self, Intent, IntentMeta, TxnId, TxnRecord};
use cairn_engine::{Db, Row};

/// One stored version as the APIs return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// When it was written.
    pub timestamp: Timestamp,
}

/// A key's newest version as evaluation needs it: when, and whether it is a value or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latest {
    /// The newest version's timestamp.
    pub timestamp: Timestamp,
    /// A value (`true`) or a tombstone.
    pub live: bool,
}

/// What evaluation reads.
pub trait Reader {
    /// `key`'s newest version, a tombstone included; `None` if the key was never written.
    fn latest(&self, key: &[u8]) -> Result<Option<Latest>, KvError>;

    /// `key`'s write intent, if a transaction holds one.
    fn intent(&self, key: &[u8]) -> Result<Option<Intent>, KvError>;

    /// Transaction `id`'s record, anchored at `anchor`, if there is one.
    fn txn_record(&self, anchor: &[u8], id: TxnId) -> Result<Option<TxnRecord>, KvError>;
}

/// Reads one shard's engine.
#[derive(Clone, Copy, Debug)]
pub struct DbReader<'a> {
    /// The shard.
    pub db: &'a Db,
    /// The cluster's bucket count (a key's bucket is `xxh3(key) % total_buckets`).
    pub total_buckets: u32,
}

fn malformed(what: &str) -> KvError {
    KvError::Malformed(format!("malformed {what} in the store"))
}

impl DbReader<'_> {
    fn latest_row(&self, key: &[u8]) -> Result<Option<Row>, KvError> {
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        Ok(self.db.get(bucket, &mvcc::latest_key(key))?)
    }

    /// `key`'s newest live value; `None` if absent or deleted.
    pub fn newest(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        let Some(row) = self.latest_row(key)? else { return Ok(None) };
        let timestamp = mvcc::decode_timestamp(&row).ok_or_else(|| malformed("latest row"))?;
        Ok(match mvcc::decode_value(&row).ok_or_else(|| malformed("latest row"))? {
            Stored::Value(value) => Some(Versioned { value, timestamp }),
            Stored::Tombstone => None,
        })
    }

    /// `key`'s newest version at or below `at`, if it is a value.
    pub fn at(&self, key: &[u8], at: Timestamp) -> Result<Option<Versioned>, KvError> {
        if at == Timestamp::MAX {
            return self.newest(key);
        }
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        let start = mvcc::version_key(key, at);
        let mut end = mvcc::key_prefix(key);
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut it = self.db.scan(bucket, &start[..]..&end[..])?;
        match it.next().transpose()? {
            None => Ok(None),
            Some((_, engine_key, row)) => version_of(&engine_key, &row),
        }
    }
}

impl Reader for DbReader<'_> {
    fn latest(&self, key: &[u8]) -> Result<Option<Latest>, KvError> {
        let Some(row) = self.latest_row(key)? else { return Ok(None) };
        let timestamp = mvcc::decode_timestamp(&row).ok_or_else(|| malformed("latest row"))?;
        let live = match row.column(0).and_then(|c| c.first()) {
            Some(0) => true,
            Some(1) => false,
            _ => return Err(malformed("latest row")),
        };
        Ok(Some(Latest { timestamp, live }))
    }

    fn intent(&self, key: &[u8]) -> Result<Option<Intent>, KvError> {
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        let Some(row) = self.db.get(bucket, &txn::intent_key(key))? else { return Ok(None) };
        let value = match row.column(0).and_then(mvcc::decode_column) {
            Some(Stored::Value(v)) => Some(v),
            Some(Stored::Tombstone) => None,
            None => return Err(malformed("intent value")),
        };
        let meta = row.column(1).ok_or_else(|| malformed("intent"))?;
        let meta = IntentMeta::decode(meta).map_err(|e| KvError::Malformed(format!("{e} of key {key:?}")))?;
        Ok(Some(Intent { meta, value }))
    }

    fn txn_record(&self, anchor: &[u8], id: TxnId) -> Result<Option<TxnRecord>, KvError> {
        let bucket = mvcc::bucket_of(anchor, self.total_buckets);
        let Some(row) = self.db.get(bucket, &txn::record_key(anchor, id))? else { return Ok(None) };
        let bytes = row.column(0).ok_or_else(|| malformed("transaction record"))?;
        TxnRecord::decode(bytes).map(Some).map_err(|e| KvError::Malformed(format!("{e} of transaction {id}")))
    }
}

/// The version a version row holds: `None` for a tombstone.
pub fn version_of(engine_key: &[u8], row: &Row) -> Result<Option<Versioned>, KvError> {
    let (_, timestamp) = mvcc::decode_version_key(engine_key).ok_or_else(|| malformed("version key"))?;
    match mvcc::decode_value(row) {
        Some(Stored::Value(value)) => Ok(Some(Versioned { value, timestamp })),
        Some(Stored::Tombstone) => Ok(None),
        None => Err(malformed("version value")),
    }
}
