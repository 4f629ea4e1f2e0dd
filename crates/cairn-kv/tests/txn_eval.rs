//! Transactions' writes evaluated against a real shard, with each evaluation's rows applied before the
//! next: intents and records as readers see them, replays, epochs, write-too-old under each isolation
//! level, conditions over a transaction's own writes, commit, abort and resolution, pushes and
//! heartbeats; reads that mind intents and uncertainty; and one-phase commits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use cairn_kv::KvError;
use cairn_kv::evaluate::{
    CommitOnePhase, CommitWrite, Condition, EndTxn, Evaluated, HeartbeatTxn, Outcome, PushKind, PushTxn,
    Refresh, ResolveIntents, Restored, RestoredVersion, TxnBounds, TxnGet, TxnPut, Write, evaluate,
    evaluate_txn,
};
use cairn_kv::hlc::Timestamp;
use cairn_kv::reader::{DbReader, Found, ReadAt, Reader, Versioned};
use cairn_kv::tscache::TsCache;
use cairn_kv::txn::{EXPIRY, Isolation, NORMAL_PRIORITY, TxnId, TxnMeta, TxnReply, TxnStatus};
use serde_bytes::ByteBuf;
use std::cell::{Cell, RefCell};

const TOTAL_BUCKETS: u32 = 8;
const LIMIT: Timestamp = Timestamp { wall_time: 10_000, logical: 0 };

struct Shard {
    db: Db,
    reads: RefCell<TsCache>,
    closed: Cell<Timestamp>,
    _dir: tempfile::TempDir,
}

fn ts(wall: u64) -> Timestamp {
    Timestamp { wall_time: wall, logical: 0 }
}

impl Shard {
    fn new() -> Shard {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        c.total_buckets = TOTAL_BUCKETS;
        let db = Db::open(c, vec![0..=(TOTAL_BUCKETS - 1) as u16]).unwrap();
        Shard { db, reads: RefCell::new(TsCache::new(ts(0), 1024)), closed: Cell::new(ts(0)), _dir: dir }
    }

    fn reader(&self) -> DbReader<'_> {
        DbReader { db: &self.db, total_buckets: TOTAL_BUCKETS }
    }

    /// Evaluates `write` at `now` as a leader does and applies its rows; a refused write must leave no
    /// rows. The outcome and how many rows it wrote.
    fn apply(&self, write: &Write, now: Timestamp) -> Result<(Evaluated, usize), KvError> {
        let mut batch = WriteBatch::new();
        let mut reads = self.reads.borrow_mut();
        let clock = cairn_kv::hlc::Clock::with_physical(
            std::time::Duration::from_millis(500),
            std::sync::Arc::new(|| 0),
        );
        let mut bounds =
            TxnBounds { now, limit: LIMIT, closed: self.closed.get(), reads: &mut reads, clock: &clock };
        let result = evaluate_txn(write, &self.reader(), &mut bounds, TOTAL_BUCKETS, &mut batch);
        let rows = batch.len();
        match result {
            Ok(e) => {
                if rows > 0 {
                    self.db.write(batch, WriteOptions::default()).unwrap();
                }
                Ok((e, rows))
            }
            Err(e) => {
                assert_eq!(rows, 0, "{write:?} failed ({e}) but left rows");
                Err(e)
            }
        }
    }

    fn eval(&self, write: &Write, now: Timestamp) -> Result<Evaluated, KvError> {
        self.apply(write, now).map(|(e, _)| e)
    }

    /// [`Shard::apply`] of a transactional request: its reply and how many rows it wrote.
    fn txn(&self, write: &Write, now: Timestamp) -> Result<(TxnReply, usize), KvError> {
        match self.apply(write, now)? {
            (Evaluated { outcome: Outcome::Txn(reply), .. }, rows) => Ok((*reply, rows)),
            (other, _) => panic!("{write:?}: {other:?}"),
        }
    }

    fn commit_plain(&self, key: &str, value: &str, at: Timestamp) {
        let put = Write::Put { key: key.into(), value: value.into(), condition: Condition::None };
        assert_eq!(self.eval(&put, at).unwrap().outcome, Outcome::Written(at));
    }

    fn newest(&self, key: &str) -> Option<Versioned> {
        self.reader().newest(key.as_bytes()).unwrap()
    }
}

fn txn(node: u64, anchor: &str, at: Timestamp, isolation: Isolation) -> TxnMeta {
    TxnMeta {
        id: TxnId::new(node, at),
        anchor: anchor.into(),
        epoch: 0,
        write_ts: at,
        min_ts: at,
        priority: NORMAL_PRIORITY,
        isolation,
    }
}

fn put(t: &TxnMeta, seq: u32, key: &str, value: Option<&str>) -> TxnPut {
    TxnPut {
        txn: t.clone(),
        read_ts: t.write_ts,
        seq,
        key: key.into(),
        value: value.map(Into::into),
        condition: Condition::None,
        create_record: seq == 1 && key.as_bytes() == t.anchor,
    }
}

fn end(t: &TxnMeta, commit: bool, keys: &[&str]) -> Write {
    Write::EndTxn(EndTxn {
        txn: t.clone(),
        read_ts: t.write_ts,
        commit,
        lock_keys: keys.iter().map(|k| ByteBuf::from(k.as_bytes().to_vec())).collect(),
    })
}

fn resolve(t: &TxnMeta, status: TxnStatus, keys: &[&str]) -> Write {
    Write::ResolveIntents(ResolveIntents {
        txn: t.clone(),
        status,
        keys: keys.iter().map(|k| ByteBuf::from(k.as_bytes().to_vec())).collect(),
        forget: false,
    })
}

/// [`resolve`], also deleting the record if it is finished.
fn resolve_and_forget(t: &TxnMeta, status: TxnStatus, keys: &[&str]) -> Write {
    let mut r = resolve(t, status, keys);
    if let Write::ResolveIntents(r) = &mut r {
        r.forget = true;
    }
    r
}

#[test]
fn a_put_leaves_an_intent_and_the_first_one_a_pending_record_that_readers_do_not_show() {
    let s = Shard::new();
    s.commit_plain("a", "old", ts(5));
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    let (reply, rows) = s.txn(&Write::TxnPut(put(&t, 1, "a", Some("new"))), ts(11)).unwrap();
    assert_eq!((reply.ts, reply.write_too_old, rows), (Some(ts(10)), false, 2));
    let intent = s.reader().intent(b"a").unwrap().unwrap();
    assert_eq!((intent.meta.txn.id, intent.meta.seq, intent.value), (t.id, 1, Some(b"new".to_vec())));
    let record = s.reader().txn_record(b"a", t.id).unwrap().unwrap();
    assert_eq!((record.status, record.read_ts, record.last_heartbeat), (TxnStatus::Pending, ts(10), ts(11)));
    // The committed state is unchanged for every reader.
    assert_eq!(s.newest("a"), Some(Versioned { value: b"old".to_vec(), timestamp: ts(5) }));
    assert_eq!(s.reader().at(b"a", ts(20)).unwrap().unwrap().value, b"old");
    // A second key: an intent only.
    let (reply, rows) = s.txn(&Write::TxnPut(put(&t, 2, "b", None)), ts(12)).unwrap();
    assert_eq!((reply.ts, rows), (Some(ts(10)), 1));
    assert_eq!(s.reader().intent(b"b").unwrap().unwrap().value, None);
    assert_eq!(s.newest("b"), None);
}

#[test]
fn another_transactions_intent_blocks_every_write_of_the_key() {
    let s = Shard::new();
    let holder = txn(1, "k", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&holder, 1, "k", Some("v"))), ts(10)).unwrap();
    let other = txn(2, "k", ts(12), Isolation::Serializable);
    let blocked = [
        Write::TxnPut(put(&other, 1, "k", Some("w"))),
        Write::Put { key: b"k".to_vec(), value: b"w".to_vec(), condition: Condition::None },
        Write::Put { key: b"k".to_vec(), value: b"w".to_vec(), condition: Condition::IfAbsent },
        Write::Delete { key: b"k".to_vec() },
        Write::Batch { ops: vec![(b"free".to_vec(), None), (b"k".to_vec(), Some(b"w".to_vec()))] },
        Write::Restore {
            keys: vec![Restored {
                key: b"k".to_vec(),
                versions: vec![RestoredVersion { timestamp: ts(1), value: Some(b"r".to_vec()) }],
            }],
            overwrite: true,
        },
    ];
    for write in &blocked {
        match s.eval(write, ts(20)) {
            Err(KvError::LockConflict { key, holder: h }) => {
                assert_eq!((key.as_slice(), h.id), (&b"k"[..], holder.id), "{write:?}");
            }
            other => panic!("{write:?}: {other:?}"),
        }
    }
    // Keys without an intent are written as ever.
    s.commit_plain("free", "x", ts(21));
}

#[test]
fn a_replayed_put_writes_nothing_and_a_later_one_keeps_the_earlier_value_in_its_history() {
    let s = Shard::new();
    let t = txn(1, "k", ts(10), Isolation::Serializable);
    let first = Write::TxnPut(put(&t, 1, "k", Some("v1")));
    s.txn(&first, ts(10)).unwrap();
    assert_eq!(s.txn(&first, ts(11)).unwrap(), (TxnReply { ts: Some(ts(10)), ..TxnReply::default() }, 0));
    s.txn(&Write::TxnPut(put(&t, 2, "k", Some("v2"))), ts(12)).unwrap();
    let intent = s.reader().intent(b"k").unwrap().unwrap();
    assert_eq!(intent.value, Some(b"v2".to_vec()));
    assert_eq!(intent.meta.history, vec![(1, Some(ByteBuf::from(b"v1".to_vec())))]);
    // Both are replays now, the first against the history.
    assert_eq!(s.txn(&first, ts(13)).unwrap().1, 0);
    assert_eq!(s.txn(&Write::TxnPut(put(&t, 2, "k", Some("v2"))), ts(13)).unwrap().1, 0);
    // The same write with another value is refused.
    let changed = Write::TxnPut(put(&t, 1, "k", Some("other")));
    assert!(matches!(s.txn(&changed, ts(14)), Err(KvError::Invalid(_))));
}

#[test]
fn a_new_epoch_replaces_an_older_ones_intent_and_an_older_epoch_cannot_write_over_a_newer_one() {
    let s = Shard::new();
    let t0 = txn(1, "k", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&t0, 1, "k", Some("e0"))), ts(10)).unwrap();
    s.txn(&Write::TxnPut(put(&t0, 2, "k", Some("e0b"))), ts(10)).unwrap();
    let t1 = TxnMeta { epoch: 1, write_ts: ts(15), ..t0.clone() };
    let restarted = TxnPut { create_record: false, ..put(&t1, 1, "k", Some("e1")) };
    assert_eq!(s.txn(&Write::TxnPut(restarted), ts(16)).unwrap().0.ts, Some(ts(15)));
    let intent = s.reader().intent(b"k").unwrap().unwrap();
    assert_eq!((intent.meta.txn.epoch, intent.meta.seq), (1, 1));
    assert!(intent.meta.history.is_empty(), "an older epoch's writes are not this attempt's history");
    let stale = TxnPut { create_record: false, ..put(&t0, 3, "k", Some("late")) };
    assert!(matches!(s.txn(&Write::TxnPut(stale), ts(17)), Err(KvError::TxnRetry(_))));
}

#[test]
fn a_version_newer_than_the_read_timestamp_is_written_above_when_serializable_and_refused_otherwise() {
    let s = Shard::new();
    s.commit_plain("k", "committed", ts(50));
    let at40 = |iso| TxnMeta { write_ts: ts(40), ..txn(1, "k", ts(40), iso) };
    // Serializable, blind: above the version, told to refresh.
    let t = at40(Isolation::Serializable);
    let (reply, _) = s.txn(&Write::TxnPut(put(&t, 1, "k", Some("v"))), ts(60)).unwrap();
    assert_eq!((reply.ts, reply.write_too_old), (Some(ts(50).next()), true));
    assert_eq!(s.reader().intent(b"k").unwrap().unwrap().meta.txn.write_ts, ts(50).next());
    s.txn(&resolve(&t, TxnStatus::Aborted, &["k"]), ts(61)).unwrap();
    // Snapshot isolation: first committer wins.
    let t = txn(2, "k", ts(40), Isolation::Snapshot);
    assert!(matches!(s.txn(&Write::TxnPut(put(&t, 1, "k", Some("v"))), ts(62)), Err(KvError::TxnRetry(_))));
    // A conditional put under serializable: its condition would be judged on a version it did not read.
    let t = txn(3, "k", ts(40), Isolation::Serializable);
    let cond = TxnPut { condition: Condition::IfTimestamp(ts(50)), ..put(&t, 1, "k", Some("v")) };
    assert!(matches!(s.txn(&Write::TxnPut(cond), ts(63)), Err(KvError::TxnRetry(_))));
    // A version at the read timestamp was read: no write-too-old, but the intent lands above it.
    let t = txn(4, "k", ts(50), Isolation::Snapshot);
    let cond = TxnPut { condition: Condition::IfTimestamp(ts(50)), ..put(&t, 1, "k", Some("v")) };
    let (reply, _) = s.txn(&Write::TxnPut(cond), ts(64)).unwrap();
    assert_eq!((reply.ts, reply.write_too_old), (Some(ts(50).next()), false));
}

#[test]
fn conditions_see_the_transactions_own_earlier_write() {
    let s = Shard::new();
    s.commit_plain("k", "committed", ts(5));
    let t = txn(1, "k", ts(10), Isolation::Serializable);
    let with = |seq, value: Option<&str>, condition| TxnPut { condition, ..put(&t, seq, "k", value) };
    // Against the committed version first.
    assert!(matches!(
        s.txn(&Write::TxnPut(with(1, Some("x"), Condition::IfAbsent)), ts(11)),
        Err(KvError::ConditionFailed(_))
    ));
    s.txn(&Write::TxnPut(with(1, None, Condition::IfTimestamp(ts(5)))), ts(11)).unwrap();
    // The transaction deleted the key: absent for its next write; a version timestamp never matches.
    assert!(matches!(
        s.txn(&Write::TxnPut(with(2, Some("y"), Condition::IfTimestamp(ts(5)))), ts(12)),
        Err(KvError::ConditionFailed(_))
    ));
    s.txn(&Write::TxnPut(with(2, Some("y"), Condition::IfAbsent)), ts(12)).unwrap();
    assert!(matches!(
        s.txn(&Write::TxnPut(with(3, Some("z"), Condition::IfAbsent)), ts(13)),
        Err(KvError::ConditionFailed(_))
    ));
}

#[test]
fn a_commit_then_resolution_turns_intents_into_versions_at_the_commit_timestamp() {
    let s = Shard::new();
    s.commit_plain("b", "old-b", ts(3));
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&t, 1, "a", Some("A"))), ts(10)).unwrap();
    s.txn(&Write::TxnPut(put(&t, 2, "b", None)), ts(10)).unwrap();
    let (reply, rows) = s.txn(&end(&t, true, &["a", "b"]), ts(12)).unwrap();
    let record = reply.record.clone().unwrap();
    assert_eq!((reply.ts, record.status, rows), (Some(ts(10)), TxnStatus::Committed, 1));
    assert_eq!(record.lock_keys.len(), 2);
    // A repeated commit answers the same, writing nothing; a rollback now is refused.
    assert_eq!(s.txn(&end(&t, true, &["a", "b"]), ts(13)).unwrap(), (reply, 0));
    assert!(matches!(s.txn(&end(&t, false, &[]), ts(13)), Err(KvError::Invalid(_))));
    // Still invisible until resolved (readers learn to look at intents later).
    assert_eq!(s.newest("a"), None);
    let (reply, _) =
        s.txn(&resolve(&record.meta, TxnStatus::Committed, &["a", "b", "a", "nothing"]), ts(14)).unwrap();
    assert_eq!(reply.resolved, 2);
    assert_eq!(s.newest("a"), Some(Versioned { value: b"A".to_vec(), timestamp: ts(10) }));
    assert_eq!(s.newest("b"), None, "the transaction deleted b");
    assert_eq!(s.reader().at(b"b", ts(9)).unwrap().unwrap().value, b"old-b");
    assert!(s.reader().intent(b"a").unwrap().is_none() && s.reader().intent(b"b").unwrap().is_none());
    // Idempotent; and the keys take plain writes again.
    assert_eq!(s.txn(&resolve(&record.meta, TxnStatus::Committed, &["a", "b"]), ts(15)).unwrap().1, 0);
    s.commit_plain("a", "after", ts(16));
}

#[test]
fn an_abort_removes_intents_and_a_transaction_aborted_first_cannot_start_or_commit() {
    let s = Shard::new();
    let t = txn(1, "a", ts(10), Isolation::Snapshot);
    s.txn(&Write::TxnPut(put(&t, 1, "a", Some("A"))), ts(10)).unwrap();
    let (reply, _) = s.txn(&end(&t, false, &["a"]), ts(11)).unwrap();
    assert_eq!((reply.ts, reply.record.unwrap().status), (None, TxnStatus::Aborted));
    assert!(matches!(s.txn(&end(&t, true, &["a"]), ts(12)), Err(KvError::TxnAborted(_))));
    s.txn(&resolve(&t, TxnStatus::Aborted, &["a"]), ts(12)).unwrap();
    assert!(s.reader().intent(b"a").unwrap().is_none());
    assert_eq!(s.newest("a"), None);

    // Rolled back before its first write applied: that write cannot begin the record afterwards.
    let late = txn(2, "z", ts(20), Isolation::Serializable);
    assert_eq!(s.txn(&end(&late, false, &[]), ts(20)).unwrap().0.record.unwrap().status, TxnStatus::Aborted);
    assert!(matches!(
        s.txn(&Write::TxnPut(put(&late, 1, "z", Some("v"))), ts(21)),
        Err(KvError::TxnAborted(_))
    ));
    // A commit without a record: it was aborted, or never wrote.
    let never = txn(3, "y", ts(22), Isolation::Serializable);
    assert!(matches!(s.txn(&end(&never, true, &[]), ts(22)), Err(KvError::TxnAborted(_))));
}

#[test]
fn serializable_commits_only_at_its_read_timestamp_and_snapshot_isolation_at_its_write_timestamp() {
    let s = Shard::new();
    for (node, isolation, commits) in [(1, Isolation::Serializable, false), (2, Isolation::Snapshot, true)] {
        let anchor = format!("k{node}");
        let t = txn(node, &anchor, ts(10), isolation);
        s.txn(&Write::TxnPut(put(&t, 1, &anchor, Some("v"))), ts(10)).unwrap();
        // Its write timestamp was pushed to 20; it read at 10.
        let pushed = TxnMeta { write_ts: ts(20), ..t.clone() };
        let ending =
            Write::EndTxn(EndTxn { txn: pushed, read_ts: ts(10), commit: true, lock_keys: Vec::new() });
        let (reply, rows) = s.txn(&ending, ts(21)).unwrap();
        let status = reply.record.unwrap().status;
        assert_eq!(reply.ts, Some(ts(20)), "{isolation:?}");
        if commits {
            assert_eq!((status, rows), (TxnStatus::Committed, 1));
        } else {
            // Left pending: refresh the reads to 20, then commit again.
            assert_eq!((status, rows), (TxnStatus::Pending, 0));
        }
    }
}

#[test]
fn resolving_a_running_transaction_moves_its_intents_up_and_an_old_epochs_intent_is_dropped_at_commit() {
    let s = Shard::new();
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&t, 1, "a", Some("A"))), ts(10)).unwrap();
    s.txn(&Write::TxnPut(put(&t, 2, "old", Some("O"))), ts(10)).unwrap();
    let pushed = TxnMeta { write_ts: ts(30), ..t.clone() };
    assert_eq!(s.txn(&resolve(&pushed, TxnStatus::Pending, &["a"]), ts(31)).unwrap().0.resolved, 1);
    assert_eq!(s.reader().intent(b"a").unwrap().unwrap().meta.txn.write_ts, ts(30));
    // Moving down does nothing.
    assert_eq!(s.txn(&resolve(&t, TxnStatus::Pending, &["a"]), ts(32)).unwrap().1, 0);
    // Restarted at epoch 1, it wrote "a" again but not "old", then committed.
    let t1 = TxnMeta { epoch: 1, write_ts: ts(40), ..t.clone() };
    s.txn(&Write::TxnPut(TxnPut { create_record: false, ..put(&t1, 1, "a", Some("A1")) }), ts(40)).unwrap();
    let committed = TxnMeta { write_ts: ts(40), ..t1 };
    s.txn(&resolve(&committed, TxnStatus::Committed, &["a", "old"]), ts(41)).unwrap();
    assert_eq!(s.newest("a"), Some(Versioned { value: b"A1".to_vec(), timestamp: ts(40) }));
    assert_eq!(s.newest("old"), None);
    assert!(s.reader().intent(b"old").unwrap().is_none());
}

#[test]
fn timestamps_beyond_the_clocks_bound_and_contradictory_writes_are_refused() {
    let s = Shard::new();
    let ahead =
        txn(1, "k", Timestamp { wall_time: LIMIT.wall_time + 1, logical: 0 }, Isolation::Serializable);
    assert!(matches!(
        s.txn(&Write::TxnPut(put(&ahead, 1, "k", Some("v"))), ts(10)),
        Err(KvError::TooFarAhead { .. })
    ));
    let t = txn(2, "k", ts(10), Isolation::Serializable);
    let below = TxnPut { read_ts: ts(11), ..put(&t, 1, "k", Some("v")) };
    assert!(matches!(s.txn(&Write::TxnPut(below), ts(10)), Err(KvError::Invalid(_))));
    let elsewhere = TxnPut { create_record: true, ..put(&t, 1, "not-the-anchor", Some("v")) };
    assert!(matches!(s.txn(&Write::TxnPut(elsewhere), ts(10)), Err(KvError::Invalid(_))));
}

#[test]
fn transactional_writes_round_trip_through_postcard_and_latch_their_record() {
    let t = txn(7, "a", ts(10), Isolation::Snapshot);
    let writes = [
        Write::TxnPut(put(&t, 1, "a", Some("v"))),
        Write::TxnPut(put(&t, 2, "b", None)),
        end(&t, true, &["a", "b"]),
        resolve(&t, TxnStatus::Committed, &["a", "b"]),
        push_of(&t, 3, PushKind::Timestamp(ts(20))),
        Write::HeartbeatTxn(HeartbeatTxn { txn: t.clone() }),
        get(&t, "c"),
        one_phase(&t, &[("a", Some("v")), ("b", None)], Some(&["c"])),
    ];
    for write in &writes {
        let bytes = postcard::to_stdvec(write).unwrap();
        assert_eq!(&postcard::from_bytes::<Write>(&bytes).unwrap(), write);
        let one_phase = matches!(write, Write::CommitOnePhase(_));
        assert!(write.is_transactional() && write.witness().is_none() != one_phase);
    }
    let record = cairn_kv::txn::record_key(b"a", t.id);
    assert_eq!(writes[0].keys(), vec![b"a".to_vec(), record.clone()]);
    assert_eq!(writes[1].keys(), vec![b"b".to_vec()]);
    assert_eq!(writes[2].keys(), vec![record]);
    assert_eq!(writes[3].keys(), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(writes[4].keys(), writes[5].keys());
    assert_eq!(writes[4].keys(), writes[2].keys());
    assert_eq!(writes[6].keys(), vec![b"c".to_vec()]);
    let one_phase_latches = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), writes[2].keys()[0].clone()];
    assert_eq!(writes[7].keys(), one_phase_latches);
}

fn push_of(pushee: &TxnMeta, priority: u32, kind: PushKind) -> Write {
    Write::PushTxn(PushTxn { pushee: pushee.clone(), priority, kind, force: false })
}

/// A wall time `EXPIRY` and a bit after `wall`.
fn expired_after(wall: u64) -> Timestamp {
    ts(wall + EXPIRY.as_nanos() as u64 + 1)
}

#[test]
fn a_push_wins_by_priority_expiry_force_or_against_snapshot_isolation_and_otherwise_waits() {
    let s = Shard::new();
    let start = ts(1_000);
    let mut node = 0;
    let mut running = |isolation| {
        node += 1;
        let t = txn(node, &format!("k{node}"), start, isolation);
        s.txn(&Write::TxnPut(put(&t, 1, &format!("k{node}"), Some("v"))), start).unwrap();
        t
    };
    let to = ts(2_000);
    let now = ts(2_000);
    // Equal priorities: the pusher loses, and nothing is written.
    let t = running(Isolation::Serializable);
    for kind in [PushKind::Timestamp(to), PushKind::Abort] {
        let (reply, rows) = s.txn(&push_of(&t, NORMAL_PRIORITY, kind), now).unwrap();
        assert_eq!((reply.pushed, rows, reply.record.unwrap().status), (false, 0, TxnStatus::Pending));
    }
    // A higher priority wins: a timestamp push moves the record up, an abort aborts it.
    let (reply, _) = s.txn(&push_of(&t, NORMAL_PRIORITY + 1, PushKind::Timestamp(to)), now).unwrap();
    assert!(reply.pushed);
    assert_eq!(s.reader().txn_record(&t.anchor, t.id).unwrap().unwrap().meta.write_ts, to);
    // Already at or above: nothing to do.
    assert_eq!(s.txn(&push_of(&t, 0, PushKind::Timestamp(to)), now).unwrap(), {
        let record = s.reader().txn_record(&t.anchor, t.id).unwrap();
        (TxnReply { record, pushed: true, ..TxnReply::default() }, 0)
    });
    s.txn(&push_of(&t, NORMAL_PRIORITY + 1, PushKind::Abort), now).unwrap();
    assert_eq!(s.reader().txn_record(&t.anchor, t.id).unwrap().unwrap().status, TxnStatus::Aborted);
    // A final record answers as it is, and the transaction cannot commit.
    assert!(s.txn(&push_of(&t, 0, PushKind::Abort), now).unwrap().0.pushed);
    assert!(matches!(s.txn(&end(&t, true, &[]), now), Err(KvError::TxnAborted(_))));

    // Snapshot isolation takes any timestamp push (it commits where its writes land), not an abort.
    let si = running(Isolation::Snapshot);
    assert!(s.txn(&push_of(&si, 0, PushKind::Timestamp(to)), now).unwrap().0.pushed);
    assert!(!s.txn(&push_of(&si, 0, PushKind::Abort), now).unwrap().0.pushed);
    let (reply, _) = s.txn(&end(&si, true, &[]), now).unwrap();
    assert_eq!(reply.ts, Some(to), "committed at the pushed timestamp");

    // Forced (a deadlock's victim).
    let victim = running(Isolation::Serializable);
    let forced =
        Write::PushTxn(PushTxn { pushee: victim.clone(), priority: 0, kind: PushKind::Abort, force: true });
    assert!(s.txn(&forced, now).unwrap().0.pushed);
    assert_eq!(s.reader().txn_record(&victim.anchor, victim.id).unwrap().unwrap().status, TxnStatus::Aborted);

    // Abandoned: any push aborts it; a heartbeat before that keeps it alive.
    let alive = running(Isolation::Serializable);
    let later = expired_after(start.wall_time);
    let beat = Write::HeartbeatTxn(HeartbeatTxn { txn: alive.clone() });
    let (reply, rows) = s.txn(&beat, ts(start.wall_time + 10)).unwrap();
    assert_eq!((reply.record.unwrap().last_heartbeat, rows), (ts(start.wall_time + 10), 1));
    assert!(!s.txn(&push_of(&alive, 0, PushKind::Abort), later).unwrap().0.pushed, "heard from since");
    let (reply, _) =
        s.txn(&push_of(&alive, 0, PushKind::Timestamp(to)), expired_after(start.wall_time + 10)).unwrap();
    assert_eq!((reply.pushed, reply.record.unwrap().status), (true, TxnStatus::Aborted));
    // A heartbeat of a final record changes nothing, and tells the coordinator.
    let (reply, rows) = s.txn(&beat, later).unwrap();
    assert_eq!((reply.record.unwrap().status, rows), (TxnStatus::Aborted, 0));
}

#[test]
fn a_push_of_a_transaction_without_a_record_leaves_one_that_its_first_write_respects() {
    let s = Shard::new();
    let start = ts(1_000);
    // Pushed up before its first write applied: the write begins nothing new, the commit moves up.
    let t = txn(1, "a", start, Isolation::Snapshot);
    let (reply, rows) = s.txn(&push_of(&t, 0, PushKind::Timestamp(ts(1_500))), ts(1_100)).unwrap();
    assert_eq!((reply.pushed, rows), (true, 1));
    s.txn(&Write::TxnPut(put(&t, 1, "a", Some("v"))), ts(1_200)).unwrap();
    assert_eq!(s.txn(&end(&t, true, &["a"]), ts(1_600)).unwrap().0.ts, Some(ts(1_500)));
    // Abandoned before its first write applied: aborted, and that write cannot begin it.
    let gone = txn(2, "b", start, Isolation::Serializable);
    s.txn(&push_of(&gone, 0, PushKind::Abort), expired_after(start.wall_time)).unwrap();
    assert!(matches!(
        s.txn(&Write::TxnPut(put(&gone, 1, "b", Some("v"))), ts(1_200)),
        Err(KvError::TxnAborted(_))
    ));
    // A heartbeat of a transaction without a record: none (it was aborted, or never wrote).
    let none = txn(3, "c", start, Isolation::Serializable);
    let (reply, rows) = s.txn(&Write::HeartbeatTxn(HeartbeatTxn { txn: none }), ts(1_200)).unwrap();
    assert_eq!((reply.record, rows), (None, 0));
}

fn found(value: &str, at: Timestamp) -> Found {
    Found::Version(Some(Versioned { value: value.into(), timestamp: at }))
}

#[test]
fn a_read_sees_its_own_intent_is_stopped_by_anothers_below_its_limit_and_reads_past_one_above() {
    let s = Shard::new();
    s.commit_plain("k", "committed", ts(5));
    let t = txn(1, "k", ts(20), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&t, 1, "k", Some("mine"))), ts(20)).unwrap();
    let read = |read: ReadAt| s.reader().read(b"k", &read).unwrap();
    // Its own transaction, this epoch: its write.
    assert_eq!(read(ReadAt { ts: ts(20), limit: ts(20), txn: Some((t.id, 0)) }), found("mine", ts(20)));
    // A later epoch of it reads past the leftover intent.
    assert_eq!(read(ReadAt { ts: ts(20), limit: ts(20), txn: Some((t.id, 1)) }), found("committed", ts(5)));
    // Others: below the intent, not in the way; at or above it, or with it inside the uncertainty
    // interval, locked; the newest read always.
    assert_eq!(read(ReadAt::at(ts(19))), found("committed", ts(5)));
    for r in [
        ReadAt::at(ts(20)),
        ReadAt::newest(ts(20)),
        ReadAt { ts: ts(15), limit: ts(25), txn: Some((TxnId::new(2, ts(15)), 0)) },
    ] {
        match read(r) {
            Found::Locked(intent) => assert_eq!(intent.meta.txn.id, t.id, "{r:?}"),
            other => panic!("{r:?}: {other:?}"),
        }
    }
    // The newest read of a reader whose clock is behind the intent: not in its way.
    assert_eq!(read(ReadAt::newest(ts(19))), found("committed", ts(5)));
    // Unaffected keys read as ever.
    assert_eq!(s.reader().read(b"other", &ReadAt::at(ts(30))).unwrap(), Found::Version(None));
}

#[test]
fn a_committed_version_inside_the_uncertainty_interval_makes_the_read_uncertain() {
    let s = Shard::new();
    s.commit_plain("k", "v10", ts(10));
    s.commit_plain("k", "v20", ts(20));
    let del = Write::Delete { key: b"k".to_vec() };
    assert_eq!(s.eval(&del, ts(30)).unwrap().outcome, Outcome::Written(ts(30)));
    let read =
        |at, limit| s.reader().read(b"k", &ReadAt { ts: ts(at), limit: ts(limit), txn: None }).unwrap();
    // Nothing in (15, 18]: the version at 10.
    assert_eq!(read(15, 18), found("v10", ts(10)));
    // The version at 20 is in (15, 25], and the delete at 30 in (25, 35]: both uncertain.
    assert_eq!(read(15, 25), Found::Uncertain(ts(20)));
    assert_eq!(read(15, 40), Found::Uncertain(ts(30)));
    assert_eq!(read(25, 35), Found::Uncertain(ts(30)));
    // At or past the newest: certain.
    assert_eq!(read(30, 40), Found::Version(None));
    assert_eq!(read(20, 29), found("v20", ts(20)));
}

fn get(t: &TxnMeta, key: &str) -> Write {
    Write::TxnGet(TxnGet { txn: t.clone(), read_ts: t.write_ts, limit: t.write_ts, key: key.into() })
}

#[test]
fn a_write_below_another_transactions_read_moves_above_it_and_above_the_closed_timestamp() {
    let s = Shard::new();
    s.commit_plain("k", "v", ts(5));
    let reader = txn(1, "r", ts(30), Isolation::Serializable);
    let (reply, rows) = s.txn(&get(&reader, "k"), ts(31)).unwrap();
    assert_eq!((reply.value, rows), (Some((ByteBuf::from(b"v".to_vec()), ts(5))), 0));
    // A writer at 20 lands above the read at 30, and is told so by the timestamp it lands at.
    let writer = txn(2, "k", ts(20), Isolation::Serializable);
    let (reply, _) = s.txn(&Write::TxnPut(put(&writer, 1, "k", Some("w"))), ts(32)).unwrap();
    assert_eq!((reply.ts, reply.write_too_old), (Some(ts(30).next()), false));
    // The reader's own read does not move its own write.
    let s = Shard::new();
    let both = txn(3, "k", ts(30), Isolation::Serializable);
    s.txn(&get(&both, "k"), ts(31)).unwrap();
    assert_eq!(s.txn(&Write::TxnPut(put(&both, 1, "k", Some("w"))), ts(32)).unwrap().0.ts, Some(ts(30)));
    // The closed timestamp: no intent below it.
    s.closed.set(ts(100));
    let old = txn(4, "j", ts(40), Isolation::Snapshot);
    assert_eq!(s.txn(&Write::TxnPut(put(&old, 1, "j", Some("w"))), ts(600)).unwrap().0.ts, Some(ts(100)));
    // A read far ahead of the clock is refused, and recorded nowhere.
    let ahead = txn(5, "a", LIMIT.next(), Isolation::Serializable);
    assert!(matches!(s.txn(&get(&ahead, "k"), ts(600)), Err(KvError::TooFarAhead { .. })));
    // A transaction's request outside a leader's evaluation is refused.
    let outside =
        evaluate(&get(&both, "k"), &s.reader(), ts(600), LIMIT, TOTAL_BUCKETS, &mut WriteBatch::new());
    assert!(matches!(outside, Err(KvError::Invalid(_))));
}

#[test]
fn a_transactional_read_reports_intents_in_the_way_and_versions_in_its_uncertainty_interval() {
    let s = Shard::new();
    s.commit_plain("u", "later", ts(50));
    let holder = txn(1, "k", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&holder, 1, "k", Some("x"))), ts(10)).unwrap();
    let reader = txn(2, "r", ts(40), Isolation::Serializable);
    assert!(matches!(s.txn(&get(&reader, "k"), ts(41)), Err(KvError::LockConflict { .. })));
    let uncertain =
        Write::TxnGet(TxnGet { txn: reader.clone(), read_ts: ts(40), limit: ts(60), key: b"u".to_vec() });
    assert!(matches!(s.txn(&uncertain, ts(41)), Err(KvError::Uncertain { ts: t, .. }) if t == ts(50)));
    // Neither was recorded as a read: a write at 45 stays there.
    let writer = txn(3, "u", ts(55), Isolation::Serializable);
    assert_eq!(s.reads.borrow().lookup(b"u").ts, ts(0));
    assert_eq!(s.txn(&Write::TxnPut(put(&writer, 1, "u", Some("y"))), ts(56)).unwrap().0.ts, Some(ts(55)));
    // The holder reads its own write.
    let (reply, _) = s.txn(&get(&holder, "k"), ts(42)).unwrap();
    assert_eq!(reply.value, Some((ByteBuf::from(b"x".to_vec()), ts(10))));
}

fn refresh(t: &TxnMeta, keys: &[&str], from: Timestamp, to: Timestamp) -> Write {
    let keys = keys.iter().map(|k| ByteBuf::from(k.as_bytes().to_vec())).collect();
    Write::Refresh(Refresh { txn: t.clone(), keys, from, to })
}

#[test]
fn a_refresh_moves_reads_up_unless_a_key_read_was_written_or_locked_in_between() {
    let s = Shard::new();
    s.commit_plain("a", "1", ts(5));
    s.commit_plain("b", "1", ts(5));
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    // Nothing written in (10, 20]: the reads move, and are recorded at 20.
    let (reply, rows) = s.txn(&refresh(&t, &["a", "b"], ts(10), ts(20)), ts(21)).unwrap();
    assert_eq!((reply.ts, rows), (Some(ts(20)), 0));
    assert_eq!(s.reads.borrow().lookup(b"a").ts, ts(20));
    // A version in (20, 30]: refused.
    s.commit_plain("b", "2", ts(25));
    assert!(matches!(s.txn(&refresh(&t, &["a", "b"], ts(20), ts(30)), ts(31)), Err(KvError::TxnRetry(_))));
    // Not past a version at or below the old read timestamp, nor past one above the new.
    assert!(s.txn(&refresh(&t, &["b"], ts(25), ts(24).next().max(ts(26))), ts(31)).is_ok());
    // Another transaction's intent at or below the new timestamp: refused; its own intent: fine.
    let other = txn(2, "c", ts(40), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&other, 1, "c", Some("x"))), ts(40)).unwrap();
    assert!(matches!(s.txn(&refresh(&t, &["c"], ts(30), ts(45)), ts(46)), Err(KvError::TxnRetry(_))));
    assert!(s.txn(&refresh(&t, &["c"], ts(30), ts(39)), ts(46)).is_ok(), "the intent is above 39");
    assert!(s.txn(&refresh(&other, &["c"], ts(30), ts(45)), ts(46)).is_ok());
}

fn one_phase(t: &TxnMeta, writes: &[(&str, Option<&str>)], reads: Option<&[&str]>) -> Write {
    Write::CommitOnePhase(CommitOnePhase {
        txn: t.clone(),
        read_ts: t.write_ts,
        writes: writes
            .iter()
            .map(|(k, v)| CommitWrite {
                key: k.as_bytes().to_vec(),
                value: v.map(|v| v.as_bytes().to_vec()),
                condition: Condition::None,
            })
            .collect(),
        reads: reads.map(|keys| keys.iter().map(|k| ByteBuf::from(k.as_bytes().to_vec())).collect()),
    })
}

#[test]
fn a_one_phase_commit_writes_versions_at_one_timestamp_and_nothing_else() {
    let s = Shard::new();
    s.commit_plain("b", "old", ts(5));
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    let commit = one_phase(&t, &[("a", Some("1")), ("b", None)], Some(&[]));
    let (reply, rows) = s.txn(&commit, ts(11)).unwrap();
    assert_eq!((reply.ts, reply.committed), (Some(ts(10)), true));
    // Two versions (each a version row and the key's newest-version row); no intent, no record.
    assert_eq!(rows, 4);
    assert_eq!(s.newest("a"), Some(Versioned { value: b"1".to_vec(), timestamp: ts(10) }));
    assert_eq!(s.newest("b"), None);
    assert!(s.reader().intent(b"a").unwrap().is_none());
    assert!(s.reader().txn_record(b"a", t.id).unwrap().is_none());
    // Its first write witnesses whether it applied, as a batch's does.
    assert_eq!(commit.witness(), Some((&b"a"[..], cairn_kv::mvcc::encode_value(Some(b"1")))));
    // Malformed: a key twice, or the anchor not the first write.
    let twice = one_phase(&txn(2, "x", ts(20), Isolation::Serializable), &[("x", None), ("x", None)], None);
    assert!(matches!(s.txn(&twice, ts(21)), Err(KvError::Invalid(_))));
    let unanchored = one_phase(&txn(3, "y", ts(20), Isolation::Serializable), &[("x", None)], None);
    assert!(matches!(s.txn(&unanchored, ts(21)), Err(KvError::Invalid(_))));
}

#[test]
fn a_one_phase_commit_moves_up_refreshing_reads_it_carries_or_asks_the_coordinator_to() {
    let s = Shard::new();
    s.commit_plain("r", "1", ts(5));
    // Another transaction read "w" at 30: a serializable commit at 20 must move above it.
    s.txn(&get(&txn(9, "z", ts(30), Isolation::Serializable), "w"), ts(31)).unwrap();
    let t = txn(1, "w", ts(20), Isolation::Serializable);
    // Without its reads the leader cannot move it: nothing written, the answer names where to refresh to.
    let (reply, rows) = s.txn(&one_phase(&t, &[("w", Some("x"))], None), ts(32)).unwrap();
    assert_eq!((reply.ts, reply.committed, rows), (Some(ts(30).next()), false, 0));
    // With its reads, unchanged since 20: committed above the read, the reads recorded there.
    let (reply, rows) = s.txn(&one_phase(&t, &[("w", Some("x"))], Some(&["r"])), ts(32)).unwrap();
    assert_eq!((reply.ts, reply.committed, rows), (Some(ts(30).next()), true, 2));
    assert_eq!(s.reads.borrow().lookup(b"r").ts, ts(30).next());
    // A key it read changed in between: it must run again.
    s.txn(&get(&txn(8, "z", ts(50), Isolation::Serializable), "v"), ts(51)).unwrap();
    s.commit_plain("r", "2", ts(45));
    let late = txn(2, "v", ts(40), Isolation::Serializable);
    assert!(matches!(
        s.txn(&one_phase(&late, &[("v", Some("x"))], Some(&["r"])), ts(52)),
        Err(KvError::TxnRetry(_))
    ));
    // Snapshot isolation commits wherever its writes land, without a refresh.
    let si = txn(3, "v", ts(40), Isolation::Snapshot);
    assert_eq!(s.txn(&one_phase(&si, &[("v", Some("y"))], None), ts(53)).unwrap().0.ts, Some(ts(50).next()));
}

#[test]
fn a_one_phase_commit_is_refused_over_a_lock_or_a_newer_version_under_snapshot_isolation() {
    let s = Shard::new();
    let holder = txn(1, "k", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&holder, 1, "k", Some("x"))), ts(10)).unwrap();
    let t = txn(2, "j", ts(20), Isolation::Serializable);
    let locked = one_phase(&t, &[("j", Some("1")), ("k", Some("1"))], None);
    assert!(matches!(s.txn(&locked, ts(21)), Err(KvError::LockConflict { .. })));
    // Its own intents: it commits at its record instead.
    assert!(matches!(s.txn(&one_phase(&holder, &[("k", None)], None), ts(21)), Err(KvError::Invalid(_))));
    // A version newer than the read timestamp: snapshot isolation must run again; serializable moves
    // above it (a blind write), told so.
    s.commit_plain("n", "1", ts(30));
    let si = txn(3, "n", ts(25), Isolation::Snapshot);
    assert!(matches!(s.txn(&one_phase(&si, &[("n", None)], None), ts(31)), Err(KvError::TxnRetry(_))));
    let blind = txn(4, "n", ts(25), Isolation::Serializable);
    let (reply, _) = s.txn(&one_phase(&blind, &[("n", Some("2"))], Some(&[])), ts(31)).unwrap();
    assert_eq!((reply.ts, reply.write_too_old), (Some(ts(30).next()), true));
    // Conditions on the committed versions: checked; one on a version newer than the read timestamp
    // must run again (it was checked against a version the transaction did not read).
    let cond = |t: &TxnMeta, key: &str, condition| {
        let mut c = one_phase(t, &[(key, Some("c"))], Some(&[]));
        if let Write::CommitOnePhase(c) = &mut c {
            c.writes[0].condition = condition;
        }
        c
    };
    let late = txn(6, "n", ts(40), Isolation::Serializable);
    let failed = s.txn(&cond(&late, "n", Condition::IfAbsent), ts(41));
    assert!(matches!(failed, Err(KvError::ConditionFailed(_))), "{failed:?}");
    let newest = s.newest("n").unwrap().timestamp;
    assert_eq!(s.txn(&cond(&late, "n", Condition::IfTimestamp(newest)), ts(41)).unwrap().0.ts, Some(ts(40)));
    let early = txn(7, "n", ts(35), Isolation::Serializable);
    let stale = s.txn(&cond(&early, "n", Condition::IfTimestamp(ts(40))), ts(42));
    assert!(matches!(stale, Err(KvError::TxnRetry(_))), "{stale:?}");
}

#[test]
fn the_last_resolve_deletes_a_finished_record_and_leaves_a_running_ones() {
    let s = Shard::new();
    let t = txn(1, "a", ts(10), Isolation::Serializable);
    s.txn(&Write::TxnPut(put(&t, 1, "a", Some("1"))), ts(10)).unwrap();
    // Running: the record stays.
    s.txn(&resolve_and_forget(&t, TxnStatus::Pending, &["a"]), ts(11)).unwrap();
    assert_eq!(s.reader().txn_record(b"a", t.id).unwrap().unwrap().status, TxnStatus::Pending);
    s.txn(&end(&t, true, &["a"]), ts(12)).unwrap();
    // Its latches include the record's.
    let forget = resolve_and_forget(&t, TxnStatus::Committed, &["a"]);
    assert!(forget.keys().contains(&cairn_kv::txn::record_key(b"a", t.id)));
    let (reply, _) = s.txn(&forget, ts(13)).unwrap();
    assert_eq!(reply.resolved, 1);
    assert!(s.reader().txn_record(b"a", t.id).unwrap().is_none());
    assert_eq!(s.newest("a").unwrap().timestamp, ts(10));
    // With no key of its own on the record's shard, it is routed by the anchor, and idempotent.
    let again = resolve_and_forget(&t, TxnStatus::Committed, &[]);
    assert_eq!(again.route_key(), b"a");
    assert_eq!(s.txn(&again, ts(14)).unwrap().1, 0);
}

/// One step of [`intents_are_never_visible_outside_their_transaction`].
#[derive(Clone, Debug)]
enum Step {
    /// Transaction `txn` writes `value` (`None`: deletes) to key `key` as an intent.
    Put { txn: usize, key: usize, value: Option<u8> },
    /// It commits (and its intents are resolved), or aborts.
    End { txn: usize, commit: bool },
    /// A plain write outside transactions.
    Plain { key: usize, value: u8 },
    /// A transaction that writes the keys of `keys` (a bit set) in one command.
    OnePhase { keys: u8, value: u8 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..3usize, 0..3usize, proptest::option::of(any::<u8>()))
            .prop_map(|(txn, key, value)| Step::Put { txn, key, value }),
        2 => (0..3usize, any::<bool>()).prop_map(|(txn, commit)| Step::End { txn, commit }),
        2 => (0..3usize, any::<u8>()).prop_map(|(key, value)| Step::Plain { key, value }),
        1 => (1..8u8, any::<u8>()).prop_map(|(keys, value)| Step::OnePhase { keys, value }),
    ]
}

const VIS_KEYS: [&str; 3] = ["a", "b", "c"];

/// What the model knows of a running transaction: its metadata, next sequence number and intents.
struct Running {
    meta: TxnMeta,
    seq: u32,
    intents: std::collections::BTreeMap<usize, Option<Vec<u8>>>,
}

/// The committed history: per key, its versions (timestamp, value) in order.
type History = std::collections::BTreeMap<usize, Vec<(Timestamp, Option<Vec<u8>>)>>;

fn committed_at(history: &History, key: usize, at: Timestamp) -> Option<Vec<u8>> {
    history.get(&key)?.iter().rev().find(|(ts, _)| *ts <= at).and_then(|(_, v)| v.clone())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 64, failure_persistence: None, ..Default::default() })]
    /// Random interleavings of transactions' intents, commits, aborts, one-phase commits and plain
    /// writes on one shard: after every step, a read outside a transaction (as every consistency
    /// level reads a replica: newest, or at a timestamp) sees exactly the committed versions, or is
    /// told an intent is in its way, and never sees an intent's value; the engine's version reads
    /// (what exports and GC see) hold committed versions only; a transaction reads its own intents.
    #[test]
    fn intents_are_never_visible_outside_their_transaction(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        use proptest::prelude::*;
        let s = Shard::new();
        let mut now = 10u64;
        let mut running: Vec<Option<Running>> = vec![None, None, None];
        let mut history = History::new();
        let mut stamps = vec![ts(0)];
        let mut next_id = 100;
        for step in &steps {
            now += 10;
            let clock = ts(now);
            match step.clone() {
                Step::Put { txn: t, key, value } => {
                    let r = running[t].get_or_insert_with(|| {
                        next_id += 1;
                        Running {
                            meta: txn(next_id, VIS_KEYS[key], clock, Isolation::Snapshot),
                            seq: 0,
                            intents: Default::default(),
                        }
                    });
                    r.seq += 1;
                    let mut p = put(&r.meta, r.seq, VIS_KEYS[key], None);
                    p.value = value.map(|v| vec![v]);
                    p.create_record = r.seq == 1;
                    if p.create_record {
                        p.txn.anchor = VIS_KEYS[key].into();
                        r.meta.anchor = VIS_KEYS[key].into();
                    }
                    match s.txn(&Write::TxnPut(p), clock) {
                        Ok((reply, _)) => {
                            r.meta.write_ts = r.meta.write_ts.max(reply.ts.unwrap());
                            r.intents.insert(key, value.map(|v| vec![v]));
                        }
                        // Another's intent, or a newer version (write-too-old): nothing written.
                        Err(KvError::LockConflict { .. } | KvError::TxnRetry(_)) => {
                            if r.seq == 1 {
                                running[t] = None;
                            }
                        }
                        Err(e) => prop_assert!(false, "put: {e}"),
                    }
                }
                Step::End { txn: t, commit } => {
                    let Some(r) = running[t].take() else { continue };
                    let keys: Vec<&str> = r.intents.keys().map(|k| VIS_KEYS[*k]).collect();
                    let (reply, _) = s.txn(&end(&r.meta, commit, &keys), clock).unwrap();
                    let record = reply.record.unwrap();
                    s.txn(&resolve_and_forget(&record.meta, record.status, &keys), clock).unwrap();
                    if commit {
                        let at = record.meta.write_ts;
                        stamps.push(at);
                        for (key, value) in r.intents {
                            history.entry(key).or_default().push((at, value));
                        }
                    }
                }
                Step::Plain { key, value } => {
                    let put = Write::Put { key: VIS_KEYS[key].into(), value: vec![value], condition: Condition::None };
                    match s.eval(&put, clock) {
                        Ok(Evaluated { outcome: Outcome::Written(at), .. }) => {
                            stamps.push(at);
                            history.entry(key).or_default().push((at, Some(vec![value])));
                        }
                        Err(KvError::LockConflict { .. }) => {}
                        other => prop_assert!(false, "plain put: {other:?}"),
                    }
                }
                Step::OnePhase { keys, value } => {
                    next_id += 1;
                    let chosen: Vec<usize> = (0..3).filter(|k| keys & (1 << k) != 0).collect();
                    let t = txn(next_id, VIS_KEYS[chosen[0]], clock, Isolation::Snapshot);
                    let v = [value];
                    let writes: Vec<(&str, Option<&str>)> = chosen.iter().map(|k| (VIS_KEYS[*k], None)).collect();
                    let mut c = one_phase(&t, &writes, None);
                    if let Write::CommitOnePhase(c) = &mut c {
                        for w in &mut c.writes {
                            w.value = Some(v.to_vec());
                        }
                    }
                    match s.txn(&c, clock) {
                        Ok((reply, _)) => {
                            let at = reply.ts.unwrap();
                            stamps.push(at);
                            for k in chosen {
                                history.entry(k).or_default().push((at, Some(v.to_vec())));
                            }
                        }
                        Err(KvError::LockConflict { .. }) => {}
                        Err(e) => prop_assert!(false, "one-phase commit: {e}"),
                    }
                }
            }
            // Every read, after every step.
            let reader = s.reader();
            let locked: std::collections::BTreeMap<usize, Timestamp> = running
                .iter()
                .flatten()
                .flat_map(|r| r.intents.keys().map(move |k| (*k, r.meta.write_ts)))
                .collect();
            for (key, name) in VIS_KEYS.iter().enumerate() {
                let name = name.as_bytes();
                for at in stamps.iter().copied().chain([Timestamp::MAX]) {
                    let committed = committed_at(&history, key, at);
                    let read = if at == Timestamp::MAX { ReadAt::newest(clock) } else { ReadAt::at(at) };
                    match (reader.read(name, &read).unwrap(), locked.get(&key)) {
                        (Found::Locked(_), Some(_)) => {}
                        (Found::Version(v), _) => prop_assert_eq!(v.map(|v| v.value), committed.clone(), "key {} at {}", key, at),
                        (other, _) => prop_assert!(false, "key {key} at {at}: {other:?}"),
                    }
                    prop_assert_eq!(reader.at(name, at).unwrap().map(|v| v.value), committed, "engine read of key {} at {}", key, at);
                }
            }
            for r in running.iter().flatten() {
                for (key, value) in &r.intents {
                    let own = ReadAt { ts: r.meta.write_ts, limit: r.meta.write_ts, txn: Some((r.meta.id, r.meta.epoch)) };
                    match reader.read(VIS_KEYS[*key].as_bytes(), &own).unwrap() {
                        Found::Version(v) => prop_assert_eq!(v.map(|v| v.value), value.clone()),
                        other => prop_assert!(false, "own read of key {key}: {other:?}"),
                    }
                }
            }
        }
    }
}
