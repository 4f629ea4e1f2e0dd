//! A shard's contents as of a timestamp: what a restore of a backup taken at `T` holds. A shard
//! snapshot taken after `T` may hold versions above it (writes that came in meanwhile); restoring
//! drops them and points each key's latest row at its newest version at or below `T` (or drops the
//! latest row of a key written only after `T`), so every read of the restored shard answers as a read
//! at `T` of the original did.

use crate::error::KvError;
use crate::hlc::Timestamp;
use crate::mvcc::{self, encode_timestamp, latest_key, parse_engine_key};
use cairn_engine::{Db, Row, WriteBatch, WriteOptions};

/// Bytes of rewrites gathered before they are written (bounds memory on a shard of any size).
const BATCH_BYTES: usize = 1 << 20;

/// What [`truncate_to`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Versions above the timestamp dropped.
    pub versions_dropped: u64,
    /// Latest rows rewritten to an older version.
    pub latest_rewritten: u64,
    /// Latest rows dropped (keys with no version at or below the timestamp).
    pub latest_dropped: u64,
}

/// One key's rows as the scan meets them: its latest row first, then its versions, newest first.
struct KeyRows {
    bucket: u16,
    key: Vec<u8>,
    // The latest row's timestamp, if the key has one.
    latest: Option<Timestamp>,
    // Whether a version at or below the timestamp was met (the latest row now points at it).
    settled: bool,
}

/// Rewrites `db` to hold exactly what a read at `at` sees: versions above `at` dropped, latest rows
/// pointing at the newest version at or below it. Reserved rows (system rows, intents, records) are
/// left alone. Writes in batches of about [`BATCH_BYTES`]; the caller flushes. `at` must be at or
/// above the GC threshold the shard's files were compacted with (a backup at `at` protects it): below
/// it, the versions a read at `at` sees may be gone.
pub fn truncate_to(db: &Db, at: Timestamp) -> Result<Truncated, KvError> {
    let mut done = Truncated::default();
    let mut batch = WriteBatch::new();
    let view = db.view();
    for range in db.owned_buckets() {
        let mut current: Option<KeyRows> = None;
        for row in view.scan_buckets(range)? {
            let (bucket, engine_key, row) = row?;
            if mvcc::is_reserved(&engine_key) {
                continue;
            }
            let (key, ts) = parse_engine_key(&engine_key)
                .ok_or_else(|| KvError::Malformed(format!("malformed key {engine_key:?} in the store")))?;
            if current.as_ref().is_none_or(|c| c.bucket != bucket || c.key != key) {
                if let Some(done_key) = current.take() {
                    settle(done_key, &mut batch, &mut done);
                }
                current = Some(KeyRows { bucket, key, latest: None, settled: false });
            }
            let Some(c) = current.as_mut() else { continue };
            match ts {
                None => {
                    c.latest = Some(mvcc::decode_timestamp(&row).ok_or_else(|| {
                        KvError::Malformed(format!("malformed latest row of key {:?} in the store", c.key))
                    })?);
                }
                Some(ts) if ts > at => {
                    batch.delete(bucket, &engine_key);
                    done.versions_dropped += 1;
                }
                Some(ts) if !c.settled => {
                    c.settled = true;
                    if c.latest != Some(ts) {
                        point_latest_at(&mut batch, c, ts, &row)?;
                        done.latest_rewritten += 1;
                    }
                }
                Some(_) => {}
            }
            if batch.encoded_len() >= BATCH_BYTES {
                db.write(std::mem::take(&mut batch), WriteOptions::default())?;
            }
        }
        if let Some(last) = current.take() {
            settle(last, &mut batch, &mut done);
        }
    }
    if !batch.is_empty() {
        db.write(batch, WriteOptions::default())?;
    }
    Ok(done)
}

/// Points `c`'s latest row at its version at `ts`, whose row is `version`.
fn point_latest_at(batch: &mut WriteBatch, c: &KeyRows, ts: Timestamp, version: &Row) -> Result<(), KvError> {
    let value = version.column(0).ok_or_else(|| {
        KvError::Malformed(format!("a version of key {:?} without a value in the store", c.key))
    })?;
    batch.put_row(c.bucket, &latest_key(&c.key), &[(0, value), (1, &encode_timestamp(ts))]);
    Ok(())
}

/// A key's rows are all seen: with no version at or below the timestamp, its latest row goes.
fn settle(c: KeyRows, batch: &mut WriteBatch, done: &mut Truncated) {
    if !c.settled && c.latest.is_some() {
        batch.delete(c.bucket, &latest_key(&c.key));
        done.latest_dropped += 1;
    }
}
