//! Reading a key's versions from a shard's engine: the newest one (one point read of the key's latest
//! row) or the newest at or below a timestamp (a short scan of its version rows); and a read that
//! takes transactions' write intents into account ([`DbReader::read`]).

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

/// A read that minds transactions: at `ts`, uncertain up to `limit`, for transaction `txn` if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAt {
    /// The read timestamp ([`Timestamp::MAX`]: the newest).
    pub ts: Timestamp,
    /// The uncertainty limit (at least `ts`): a version in `(ts, limit]` may have been written before
    /// the read began, by a clock ahead of the reader's. For the newest read: the reader's clock, which
    /// bounds the intents in its way.
    pub limit: Timestamp,
    /// The reading transaction and its epoch: its own intents of that epoch are what it reads.
    pub txn: Option<(TxnId, u32)>,
}

impl ReadAt {
    /// A read at `ts` outside any transaction, without uncertainty.
    pub fn at(ts: Timestamp) -> ReadAt {
        ReadAt { ts, limit: ts, txn: None }
    }

    /// The newest read outside any transaction by a reader whose clock reads `now`.
    pub fn newest(now: Timestamp) -> ReadAt {
        ReadAt { ts: Timestamp::MAX, limit: now, txn: None }
    }

    /// The highest intent that stands in this read's way.
    fn in_the_way(&self) -> Timestamp {
        if self.ts == Timestamp::MAX { self.limit } else { self.limit.max(self.ts) }
    }
}

/// What a read that minds transactions finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The version the read sees: the reading transaction's own write, or the newest committed version
    /// at or below the read timestamp (`None`: absent or deleted).
    Version(Option<Versioned>),
    /// Another transaction's intent at or below the uncertainty limit: it may commit below the read, so
    /// the reader pushes it (or waits) and reads again.
    Locked(Box<Intent>),
    /// A committed version (value or delete) in the uncertainty interval, at this timestamp: the reader
    /// moves its read timestamp above it.
    Uncertain(Timestamp),
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
        match self.version_row_at(key, at)? {
            None => Ok(None),
            Some((engine_key, row)) => version_of(&engine_key, &row),
        }
    }

    /// `key`'s newest version row at or below `at`: its engine key and the row.
    fn version_row_at(&self, key: &[u8], at: Timestamp) -> Result<Option<(Vec<u8>, Row)>, KvError> {
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        let start = mvcc::version_key(key, at);
        let mut end = mvcc::key_prefix(key);
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut it = self.db.scan(bucket, &start[..]..&end[..])?;
        Ok(it.next().transpose()?.map(|(_, engine_key, row)| (engine_key, row)))
    }

    /// `key` as a read that minds transactions sees it (see [`Found`]): the reader's own intent,
    /// another's intent in the way, a version in the uncertainty interval, or the version at the read
    /// timestamp. An intent of an earlier epoch of the reader's transaction is a leftover of that
    /// attempt: read past it.
    pub fn read(&self, key: &[u8], read: &ReadAt) -> Result<Found, KvError> {
        if let Some(intent) = self.intent(key)? {
            let holder = &intent.meta.txn;
            match read.txn {
                Some((id, epoch)) if id == holder.id && epoch == holder.epoch => {
                    let timestamp = holder.write_ts;
                    return Ok(Found::Version(intent.value.map(|value| Versioned { value, timestamp })));
                }
                Some((id, _)) if id == holder.id => {}
                _ if holder.write_ts <= read.in_the_way() => {
                    return Ok(Found::Locked(Box::new(intent)));
                }
                _ => {}
            }
        }
        if read.ts != Timestamp::MAX
            && read.limit > read.ts
            && let Some(newest) = self.latest(key)?.map(|l| l.timestamp)
            && newest > read.ts
        {
            // The newest version is past the read; the newest at or below the limit decides.
            let within =
                if newest <= read.limit { Some(newest) } else { self.version_ts_at(key, read.limit)? };
            if let Some(ts) = within.filter(|ts| *ts > read.ts) {
                return Ok(Found::Uncertain(ts));
            }
        }
        Ok(Found::Version(self.at(key, read.ts)?))
    }

    /// The timestamp of `key`'s newest version (a value or a delete) at or below `at`.
    pub fn version_ts_at(&self, key: &[u8], at: Timestamp) -> Result<Option<Timestamp>, KvError> {
        let Some((engine_key, _)) = self.version_row_at(key, at)? else { return Ok(None) };
        let (_, ts) = mvcc::decode_version_key(&engine_key).ok_or_else(|| malformed("version key"))?;
        Ok(Some(ts))
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
        decode_intent(key, &row).map(Some)
    }

    fn txn_record(&self, anchor: &[u8], id: TxnId) -> Result<Option<TxnRecord>, KvError> {
        let bucket = mvcc::bucket_of(anchor, self.total_buckets);
        let Some(row) = self.db.get(bucket, &txn::record_key(anchor, id))? else { return Ok(None) };
        let bytes = row.column(0).ok_or_else(|| malformed("transaction record"))?;
        TxnRecord::decode(bytes).map(Some).map_err(|e| KvError::Malformed(format!("{e} of transaction {id}")))
    }
}

/// The intent an intent row of `key` holds.
fn decode_intent(key: &[u8], row: &Row) -> Result<Intent, KvError> {
    let value = match row.column(0).and_then(mvcc::decode_column) {
        Some(Stored::Value(v)) => Some(v),
        Some(Stored::Tombstone) => None,
        None => return Err(malformed("intent value")),
    };
    let meta = row.column(1).ok_or_else(|| malformed("intent"))?;
    let meta = IntentMeta::decode(meta).map_err(|e| KvError::Malformed(format!("{e} of key {key:?}")))?;
    Ok(Intent { meta, value })
}

/// The key and intent an intent row holds (`engine_key` is [`txn::intent_key`]'s).
pub fn intent_of(engine_key: &[u8], row: &Row) -> Result<(Vec<u8>, Intent), KvError> {
    let key = txn::parse_intent_key(engine_key).ok_or_else(|| malformed("intent key"))?;
    let intent = decode_intent(&key, row)?;
    Ok((key, intent))
}

/// The engine-key bounds of the intents of keys in `[start, end)` (`end` `None`: to the last key)
/// within a bucket.
pub fn intent_bounds(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let escaped = |k: &[u8]| {
        let mut out = mvcc::INTENT_PREFIX.to_vec();
        let prefix = mvcc::key_prefix(k);
        // Without the terminator: every key that starts with `k` sorts at or after it.
        out.extend_from_slice(&prefix[..prefix.len() - 2]);
        out
    };
    let hi = end.map_or_else(|| mvcc::TXN_RECORD_PREFIX.to_vec(), escaped);
    (escaped(start), hi)
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
