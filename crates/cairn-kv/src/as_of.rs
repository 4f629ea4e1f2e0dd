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

/// What [`histories`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histories {
    /// Keys with a version at or below the timestamp.
    pub keys: u64,
    /// Versions at or below the timestamp handed on.
    pub versions: u64,
    /// Older versions left out because a key's history did not fit in one chunk.
    pub versions_trimmed: u64,
}

/// The key histories a read at or below `at` can see, from `rows` (a shard's rows in (bucket, engine
/// key) order, as a snapshot scan yields them): handed to `emit` in chunks of about `max_bytes`, each
/// within one bucket, each key's versions oldest first. Versions above `at`, latest rows and reserved
/// rows are skipped. A key whose history alone is over `max_bytes` keeps its newest versions that fit
/// (its newest at least), so what a read at `at` sees is always there.
pub fn histories<E: From<KvError>>(
    rows: impl Iterator<Item = cairn_engine::Result<(u16, Vec<u8>, Row)>>,
    at: Timestamp,
    max_bytes: usize,
    mut emit: impl FnMut(u16, Vec<crate::Restored>) -> Result<(), E>,
) -> Result<Histories, E> {
    let mut stats = Histories::default();
    let mut chunk: Vec<crate::Restored> = Vec::new();
    let (mut chunk_bucket, mut chunk_bytes) = (0u16, 0usize);
    // The key being read: bucket, key, versions newest first, their bytes.
    let mut current: Option<(u16, Vec<u8>, Vec<crate::RestoredVersion>, usize)> = None;
    let mut finish = |key: Option<(u16, Vec<u8>, Vec<crate::RestoredVersion>, usize)>,
                      chunk: &mut Vec<crate::Restored>,
                      chunk_bucket: &mut u16,
                      chunk_bytes: &mut usize,
                      stats: &mut Histories|
     -> Result<(), E> {
        let Some((bucket, key, mut versions, mut bytes)) = key else { return Ok(()) };
        if versions.is_empty() {
            return Ok(());
        }
        while bytes + key.len() > max_bytes && versions.len() > 1 {
            let dropped = versions.pop().map_or(0, |v| 12 + v.value.map_or(0, |v| v.len()));
            bytes -= dropped;
            stats.versions_trimmed += 1;
        }
        if !chunk.is_empty() && (*chunk_bucket != bucket || *chunk_bytes + bytes + key.len() > max_bytes) {
            emit(*chunk_bucket, std::mem::take(chunk))?;
            *chunk_bytes = 0;
        }
        stats.keys += 1;
        stats.versions += versions.len() as u64;
        versions.reverse();
        *chunk_bucket = bucket;
        *chunk_bytes += bytes + key.len();
        chunk.push(crate::Restored { key, versions });
        Ok(())
    };
    for row in rows {
        let (bucket, engine_key, row) = row.map_err(|e| E::from(KvError::from(e)))?;
        if mvcc::is_reserved(&engine_key) {
            continue;
        }
        let Some((key, ts)) = parse_engine_key(&engine_key) else {
            return Err(KvError::Malformed(format!("malformed key {engine_key:?} in the snapshot")).into());
        };
        if current.as_ref().is_none_or(|c| c.0 != bucket || c.1 != key) {
            finish(current.take(), &mut chunk, &mut chunk_bucket, &mut chunk_bytes, &mut stats)?;
            current = Some((bucket, key, Vec::new(), 0));
        }
        let (Some(ts), Some(c)) = (ts, current.as_mut()) else { continue };
        if ts > at {
            continue;
        }
        let value = match mvcc::decode_value(&row) {
            Some(mvcc::Stored::Value(v)) => Some(v),
            Some(mvcc::Stored::Tombstone) => None,
            None => return Err(KvError::Malformed(format!("malformed version of key {:?}", c.1)).into()),
        };
        let bytes = 12 + value.as_ref().map_or(0, Vec::len);
        // Newest first: once the budget is spent, older versions are counted, not kept.
        if !c.2.is_empty() && c.3 + bytes + c.1.len() > max_bytes {
            stats.versions_trimmed += 1;
            continue;
        }
        c.3 += bytes;
        c.2.push(crate::RestoredVersion { timestamp: ts, value });
    }
    finish(current.take(), &mut chunk, &mut chunk_bucket, &mut chunk_bytes, &mut stats)?;
    if !chunk.is_empty() {
        emit(chunk_bucket, chunk)?;
    }
    Ok(stats)
}
