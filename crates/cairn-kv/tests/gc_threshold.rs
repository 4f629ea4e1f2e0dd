//! A replicated shard's garbage collection by the threshold its log decides: compactions drop the
//! versions no read at or above the engine's filter threshold sees (the newest version below it stays),
//! nothing before a threshold is set, and a digest filtered at a threshold is the same whether the
//! replica compacted with it already, with a lower one, or not at all; and (a property test against a
//! model of the whole history) reads at or above the threshold answer as if nothing was collected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use cairn_kv::hlc::Timestamp;
use cairn_kv::mvcc::{ThresholdGcFilterFactory, version_key};
use std::sync::Arc;

const BUCKET: u16 = 3;

fn open(dir: &std::path::Path) -> Db {
    let mut c = Config::new(dir);
    c.total_buckets = 16;
    c.compaction_filter = Some(Arc::new(ThresholdGcFilterFactory));
    Db::open(c, vec![0..=15]).unwrap()
}

/// Versions of keys `k0`..`k9` at wall times 10, 20, ..., 50 (one batch each, flushed between).
fn write_versions(db: &Db) {
    for t in 1..=5u64 {
        let mut b = WriteBatch::new();
        for k in 0..10 {
            let key = version_key(format!("k{k}").as_bytes(), Timestamp { wall_time: t * 10, logical: 0 });
            b.put_row(BUCKET, &key, &[(0, &[0, t as u8])]);
        }
        db.write(b, WriteOptions::default()).unwrap();
        db.flush().unwrap();
    }
}

fn stored(db: &Db) -> usize {
    db.view().scan(BUCKET, ..).unwrap().count()
}

#[test]
fn compactions_collect_below_the_threshold_and_digests_at_it_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (open(&tmp.path().join("a")), open(&tmp.path().join("b")), open(&tmp.path().join("c")));
    let none = open(&tmp.path().join("none"));
    for db in [&a, &b, &c, &none] {
        write_versions(db);
    }
    // No threshold yet: a full compaction keeps every version.
    none.compact().unwrap();
    assert_eq!(stored(&none), 50);
    // At 35: versions at 40 and 50 stay, and the newest below (30); 10 and 20 go.
    a.raise_filter_threshold(35);
    a.raise_filter_threshold(5); // never lowered
    assert_eq!(a.filter_threshold(), 35);
    a.compact().unwrap();
    assert_eq!(stored(&a), 30);
    // Replica b compacted at a lower threshold, c not at all: their raw contents differ from a's, their
    // digests filtered at 35 do not.
    b.raise_filter_threshold(25);
    b.compact().unwrap();
    assert_eq!(stored(&b), 40);
    assert_eq!(stored(&c), 50);
    let digest = |db: &Db, threshold: u64| {
        db.view().content_digest_filtered(0, || {}, db.compaction_filter_at(threshold)).unwrap()
    };
    let unfiltered: Vec<_> = [&a, &b, &c].iter().map(|db| db.view().content_digest().unwrap()).collect();
    assert!(unfiltered[0] != unfiltered[1] && unfiltered[1] != unfiltered[2]);
    assert_eq!(digest(&a, 35), digest(&b, 35));
    assert_eq!(digest(&b, 35), digest(&c, 35));
    // At threshold 0 the filter keeps everything: the plain digest.
    assert_eq!(digest(&c, 0), unfiltered[2]);
}

mod model {
    //! Property: with puts and deletes at rising timestamps, thresholds raised at random, and flushes
    //! and compactions in between, every read at or above the threshold (and of the newest value)
    //! answers what a model holding the whole history answers; and a digest filtered at the threshold
    //! is the same as a never-compacted copy's.
    use super::*;
    use cairn_kv::evaluate::add_version;
    use cairn_kv::reader::{DbReader, Versioned};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TOTAL_BUCKETS: u32 = 16;
    const KEYS: u8 = 5;

    #[derive(Clone, Debug)]
    enum Op {
        /// Key, value (`None`: a delete), wall-time step.
        Write(u8, Option<u8>, u64),
        /// Raise the threshold by this much (never past the newest write).
        Raise(u64),
        Flush,
        Compact,
        /// Key, and where in [threshold, now] to read (per mille).
        Read(u8, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..KEYS, proptest::option::of(any::<u8>()), 0..4u64).prop_map(|(k, v, s)| Op::Write(k, v, s)),
            2 => (0..30u64).prop_map(Op::Raise),
            1 => Just(Op::Flush),
            1 => Just(Op::Compact),
            4 => (0..KEYS, 0..=1000u16).prop_map(|(k, p)| Op::Read(k, p)),
        ]
    }

    fn open_at(dir: &std::path::Path) -> Db {
        let mut c = Config::new(dir);
        c.total_buckets = TOTAL_BUCKETS;
        c.compaction_filter = Some(Arc::new(ThresholdGcFilterFactory));
        Db::open(c, vec![0..=(TOTAL_BUCKETS - 1) as u16]).unwrap()
    }

    /// The model's answer: `key`'s newest version at or below `at`, if a value.
    fn model_at(
        history: &BTreeMap<u8, Vec<(Timestamp, Option<u8>)>>,
        key: u8,
        at: Timestamp,
    ) -> Option<Versioned> {
        let (ts, value) = history.get(&key)?.iter().rev().find(|(ts, _)| *ts <= at)?;
        value.map(|v| Versioned { value: vec![v], timestamp: *ts })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn reads_at_or_above_the_threshold_match_the_whole_history(ops in proptest::collection::vec(op(), 1..120)) {
            let tmp = tempfile::tempdir().unwrap();
            let db = open_at(&tmp.path().join("gc"));
            let plain = open_at(&tmp.path().join("plain")); // never compacted
            let reader = DbReader { db: &db, total_buckets: TOTAL_BUCKETS };
            let mut history: BTreeMap<u8, Vec<(Timestamp, Option<u8>)>> = BTreeMap::new();
            let mut now = Timestamp { wall_time: 100, logical: 0 };
            let mut threshold = 0u64;
            for op in ops {
                match op {
                    Op::Write(k, v, step) => {
                        now = if step == 0 { now.next() } else { Timestamp { wall_time: now.wall_time + step, logical: 0 } };
                        let key = format!("k{k}");
                        for d in [&db, &plain] {
                            let mut b = WriteBatch::new();
                            add_version(&mut b, cairn_kv::mvcc::bucket_of(key.as_bytes(), TOTAL_BUCKETS), key.as_bytes(), now, v.map(|v| [v]).as_ref().map(|v| &v[..]));
                            d.write(b, WriteOptions::default()).unwrap();
                        }
                        history.entry(k).or_default().push((now, v));
                    }
                    Op::Raise(by) => {
                        threshold = (threshold + by).min(now.wall_time);
                        db.raise_filter_threshold(threshold);
                    }
                    Op::Flush => db.flush().unwrap(),
                    Op::Compact => db.compact().unwrap(),
                    Op::Read(k, per_mille) => {
                        let span = now.wall_time.saturating_sub(threshold) + 1;
                        let at = Timestamp { wall_time: threshold + span * u64::from(per_mille) / 1001, logical: u32::from(per_mille) % 3 };
                        let key = format!("k{k}");
                        prop_assert_eq!(reader.at(key.as_bytes(), at).unwrap(), model_at(&history, k, at), "at {}", at);
                        prop_assert_eq!(reader.newest(key.as_bytes()).unwrap(), model_at(&history, k, Timestamp::MAX));
                    }
                }
            }
            db.compact().unwrap();
            for k in 0..KEYS {
                let at = Timestamp { wall_time: threshold, logical: 0 };
                prop_assert_eq!(reader.at(format!("k{k}").as_bytes(), at).unwrap(), model_at(&history, k, at));
            }
            let digest = |d: &Db| d.view().content_digest_filtered(0, || {}, d.compaction_filter_at(threshold)).unwrap();
            prop_assert_eq!(digest(&db), digest(&plain));
        }
    }
}
