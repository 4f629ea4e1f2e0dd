//! A shard rewritten as of a timestamp answers every read as a read at `T` of the original, and so does
//! an empty shard that took the key histories at or below `T` as restore writes (what `cairn restore`
//! does with a backup's shard snapshots): property tests against a model of the whole history, with
//! flushes between writes so that versions and latest rows sit in different files, and transactions'
//! intent and record rows beside them, which none of it may take for versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use cairn_kv::as_of::{histories, truncate_to};
use cairn_kv::evaluate::{Outcome, Write, add_version, evaluate};
use cairn_kv::hlc::Timestamp;
use cairn_kv::mvcc::{bucket_of, version_key};
use cairn_kv::reader::{DbReader, Versioned};
use proptest::prelude::*;
use std::collections::BTreeMap;

const TOTAL_BUCKETS: u32 = 8;
const KEYS: u8 = 6;

type History = BTreeMap<u8, Vec<(Timestamp, Option<u8>)>>;

/// The model: `key`'s newest version at or below `at`, if a value.
fn model_at(history: &History, key: u8, at: Timestamp) -> Option<Versioned> {
    let (ts, value) = history.get(&key)?.iter().rev().find(|(ts, _)| *ts <= at)?;
    value.map(|v| Versioned { value: vec![v], timestamp: *ts })
}

/// The key's name: some with zero bytes, which the engine keys escape.
fn name(k: u8) -> Vec<u8> {
    if k.is_multiple_of(2) { vec![b'k', k] } else { vec![b'k', 0, k] }
}

/// A shard over every bucket, with `writes` (key, value or delete, wall-time step, flush after) applied
/// from wall time 1000 on: the shard, the history and the last timestamp.
fn shard_with(dir: &std::path::Path, writes: &[(u8, Option<u8>, u64, bool)]) -> (Db, History, Timestamp) {
    let mut c = Config::new(dir);
    c.total_buckets = TOTAL_BUCKETS;
    let db = Db::open(c, vec![0..=(TOTAL_BUCKETS - 1) as u16]).unwrap();
    let mut history = History::new();
    let mut now = Timestamp { wall_time: 1000, logical: 0 };
    for &(k, value, step, flush) in writes {
        now = if step == 0 { now.next() } else { Timestamp { wall_time: now.wall_time + step, logical: 0 } };
        let mut b = WriteBatch::new();
        add_version(
            &mut b,
            bucket_of(&name(k), TOTAL_BUCKETS),
            &name(k),
            now,
            value.as_ref().map(std::slice::from_ref),
        );
        if flush {
            add_txn_rows(&mut b, &name(k), now);
        }
        db.write(b, WriteOptions::default()).unwrap();
        history.entry(k).or_default().push((now, value));
        if flush {
            db.flush().unwrap();
        }
    }
    (db, history, now)
}

/// Adds a write intent on `key` and a transaction record anchored at it, at `ts` (rows no read, history
/// or rewrite as of a timestamp may take for versions).
fn add_txn_rows(batch: &mut WriteBatch, key: &[u8], ts: Timestamp) {
    use cairn_kv::txn::{IntentMeta, Isolation, TxnId, TxnMeta, TxnRecord, TxnStatus};
    let meta = TxnMeta {
        id: TxnId::new(1, ts),
        anchor: key.to_vec(),
        epoch: 0,
        write_ts: ts,
        min_ts: ts,
        priority: 1,
        isolation: Isolation::Serializable,
    };
    let bucket = bucket_of(key, TOTAL_BUCKETS);
    let intent = IntentMeta { txn: meta.clone(), seq: 1, history: Vec::new() };
    let value = cairn_kv::mvcc::encode_value(Some(b"uncommitted"));
    batch.put_row(bucket, &cairn_kv::txn::intent_key(key), &[(0, &value), (1, &intent.encode().unwrap())]);
    let record = TxnRecord {
        meta,
        status: TxnStatus::Pending,
        read_ts: ts,
        last_heartbeat: ts,
        lock_keys: Vec::new(),
        in_flight: Vec::new(),
    };
    batch.put(bucket, &record.key(), 0, &record.encode().unwrap());
}

/// Evaluates `write` against `db` at `ts` and writes its rows.
fn apply(db: &Db, write: &Write, ts: Timestamp) -> Result<Outcome, cairn_kv::KvError> {
    let mut batch = WriteBatch::new();
    let reader = DbReader { db, total_buckets: TOTAL_BUCKETS };
    let evaluated = evaluate(write, &reader, ts, Timestamp::MAX, TOTAL_BUCKETS, &mut batch)?;
    db.write(batch, WriteOptions::default()).unwrap();
    Ok(evaluated.outcome)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn a_shard_restored_from_the_histories_at_t_reads_as_the_original_at_t(
        writes in proptest::collection::vec((0..KEYS, proptest::option::of(any::<u8>()), 0..3u64, any::<bool>()), 1..80),
        cut in 0..=100u32,
        chunk in 1..200usize,
    ) {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (db, history, now) = shard_with(from.path(), &writes);
        let span = now.wall_time - 1000 + 2;
        let at = Timestamp { wall_time: 999 + span * u64::from(cut) / 100, logical: cut % 2 };
        let (restored, _, _) = shard_with(to.path(), &[]);
        let later = Timestamp { wall_time: now.wall_time + 10, logical: 0 };
        let view = db.view();
        // Chunks of `chunk` bytes: keys whose history does not fit keep their newest versions.
        let mut writes_made = Vec::new();
        let read = histories::<cairn_kv::KvError>(view.scan_buckets(0..=(TOTAL_BUCKETS - 1) as u16).unwrap(), at, chunk, |_, keys| {
            let write = Write::Restore { keys, overwrite: false };
            apply(&restored, &write, later)?;
            writes_made.push(write);
            Ok(())
        }).unwrap();
        let seen: u64 = history.values().flatten().filter(|(ts, _)| *ts <= at).count() as u64;
        prop_assert_eq!(read.versions + read.versions_trimmed, seen);
        let reader = DbReader { db: &restored, total_buckets: TOTAL_BUCKETS };
        for k in 0..KEYS {
            prop_assert_eq!(reader.newest(&name(k)).unwrap(), model_at(&history, k, at), "newest of k{} at {}", k, at);
            if read.versions_trimmed == 0 {
                for (ts, _) in history.get(&k).into_iter().flatten().filter(|(ts, _)| *ts <= at) {
                    prop_assert_eq!(reader.at(&name(k), *ts).unwrap(), model_at(&history, k, *ts));
                }
            }
        }
        // Run again (a restore resumed after a crash), it recognises what it wrote.
        for write in &writes_made {
            prop_assert_eq!(apply(&restored, write, later).unwrap(), Outcome::Unchanged);
        }
        // Over a key with a live value it writes nothing unless asked to overwrite.
        if let Some(Write::Restore { keys, .. }) = writes_made.first() {
            let live = keys.iter().find(|k| k.versions.last().is_some_and(|v| v.value.is_some()));
            if let Some(k) = live {
                let mut changed = k.clone();
                if let Some(v) = changed.versions.last_mut() { v.timestamp = v.timestamp.next(); }
                let refused = apply(&restored, &Write::Restore { keys: vec![changed.clone()], overwrite: false }, later);
                prop_assert!(matches!(refused, Err(cairn_kv::KvError::ConditionFailed(_))), "{:?}", refused);
                let over = apply(&restored, &Write::Restore { keys: vec![changed], overwrite: true }, later).unwrap();
                prop_assert_eq!(over, Outcome::Written(later));
            }
        }
    }

    #[test]
    fn a_shard_truncated_to_t_reads_as_the_original_at_t(
        writes in proptest::collection::vec((0..KEYS, proptest::option::of(any::<u8>()), 0..3u64, any::<bool>()), 1..80),
        cut in 0..=100u32,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (db, history, now) = shard_with(tmp.path(), &writes);
        // A cut anywhere from before the first write to after the last (logical parts included).
        let span = now.wall_time - 1000 + 2;
        let at = Timestamp { wall_time: 999 + span * u64::from(cut) / 100, logical: cut % 2 };
        let done = truncate_to(&db, at).unwrap();
        let above: u64 = history.values().flatten().filter(|(ts, _)| *ts > at).count() as u64;
        prop_assert_eq!(done.versions_dropped, above);
        db.compact().unwrap();
        let reader = DbReader { db: &db, total_buckets: TOTAL_BUCKETS };
        for k in 0..KEYS {
            prop_assert_eq!(reader.newest(&name(k)).unwrap(), model_at(&history, k, at), "newest of k{} at {}", k, at);
            for (ts, _) in history.get(&k).into_iter().flatten().filter(|(ts, _)| *ts <= at) {
                prop_assert_eq!(reader.at(&name(k), *ts).unwrap(), model_at(&history, k, *ts));
            }
            // No version above the cut is left.
            let bucket = bucket_of(&name(k), TOTAL_BUCKETS);
            let newest = version_key(&name(k), Timestamp::MAX);
            let mut left = db.view().scan(bucket, &newest[..]..).unwrap();
            if let Some(row) = left.next() {
                let (_, key, _) = row.unwrap();
                if let Some((user, Some(ts))) = cairn_kv::mvcc::parse_engine_key(&key) && user == name(k) {
                    prop_assert!(ts <= at, "k{} keeps a version at {} above {}", k, ts, at);
                }
            }
        }
        // Again: nothing more to do.
        prop_assert_eq!(truncate_to(&db, at).unwrap(), Default::default());
    }
}
