//! A replicated shard's garbage collection by the threshold its log decides: compactions drop the
//! versions no read at or above the engine's filter threshold sees (the newest version below it stays),
//! nothing before a threshold is set, and a digest filtered at a threshold is the same whether the
//! replica compacted with it already, with a lower one, or not at all.

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
