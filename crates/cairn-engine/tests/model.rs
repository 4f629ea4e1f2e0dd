//! Model-based test: random puts, column deletes, row deletes, batches, point reads, scans, views,
//! flushes, full compactions and reopens, checked step by step against a `BTreeMap`.
//! proptest shrinks a failure to a minimal operation list and prints it.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::fs::MemFs;
use cairn_engine::{Config, Db, Row, WriteBatch, WriteOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

type Model = BTreeMap<(u16, Vec<u8>), BTreeMap<u16, Vec<u8>>>;

#[derive(Clone, Debug)]
enum Op {
    Put(u16, u8, u16, u8),
    DeleteColumn(u16, u8, u16),
    Delete(u16, u8),
    Batch(Vec<(u16, u8, u16, Option<u8>)>),
    Get(u16, u8),
    Scan(u16),
    ScanBuckets(u16, u16),
    ViewCheck(Vec<(u16, u8, u16, u8)>),
    Flush,
    Compact,
    Reopen,
}

const BUCKETS: u16 = 8;

fn key(k: u8) -> Vec<u8> {
    // Keys of varying length share prefixes, which exercises prefix compression and ordering.
    let mut v = b"key".to_vec();
    v.extend(std::iter::repeat_n(b'x', (k % 5) as usize));
    v.push(k);
    v
}

fn value(v: u8, k: u8) -> Vec<u8> {
    // Some values are large so the tree grows past the level targets; bytes vary so lz4 cannot hide it.
    let len = if k.is_multiple_of(7) { 3000 } else { 1 + (k as usize % 40) };
    (0..len).map(|i| v.wrapping_add((i * 31 % 251) as u8)).collect()
}

fn op() -> impl Strategy<Value = Op> {
    let b = 0..BUCKETS;
    let k = 0u8..40;
    let c = 0u16..3;
    prop_oneof![
        8 => (b.clone(), k.clone(), c.clone(), any::<u8>()).prop_map(|(b, k, c, v)| Op::Put(b, k, c, v)),
        2 => (b.clone(), k.clone(), c.clone()).prop_map(|(b, k, c)| Op::DeleteColumn(b, k, c)),
        2 => (b.clone(), k.clone()).prop_map(|(b, k)| Op::Delete(b, k)),
        2 => prop::collection::vec((b.clone(), k.clone(), c.clone(), prop::option::of(any::<u8>())), 1..8)
            .prop_map(Op::Batch),
        4 => (b.clone(), k.clone()).prop_map(|(b, k)| Op::Get(b, k)),
        1 => b.clone().prop_map(Op::Scan),
        1 => (b.clone(), b.clone()).prop_map(|(x, y)| Op::ScanBuckets(x.min(y), x.max(y))),
        1 => prop::collection::vec((b.clone(), k.clone(), c.clone(), any::<u8>()), 1..6).prop_map(Op::ViewCheck),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn config(fs: &MemFs) -> Config {
    let mut c = common::small_config(Arc::new(fs.clone()), BUCKETS);
    c.block_bytes = 256;
    c
}

fn open(fs: &MemFs) -> Db {
    Db::open(config(fs), vec![0..=BUCKETS - 1]).unwrap()
}

fn row_of(cols: &BTreeMap<u16, Vec<u8>>) -> Option<Row> {
    if cols.is_empty() { None } else { Some(Row::from_columns(cols.clone())) }
}

fn apply(model: &mut Model, b: u16, k: u8, c: u16, v: Option<Vec<u8>>) {
    let row = model.entry((b, key(k))).or_default();
    match v {
        Some(v) => {
            row.insert(c, v);
        }
        None => {
            row.remove(&c);
        }
    }
    if row.is_empty() {
        model.remove(&(b, key(k)));
    }
}

fn model_rows(model: &Model, lo: u16, hi: u16) -> Vec<(u16, Vec<u8>, Row)> {
    model
        .range((lo, Vec::new())..)
        .take_while(|((b, _), _)| *b <= hi)
        .filter_map(|((b, k), cols)| row_of(cols).map(|r| (*b, k.clone(), r)))
        .collect()
}

fn run(ops: Vec<Op>) {
    let fs = MemFs::new();
    let mut db = open(&fs);
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put(b, k, c, v) => {
                db.put(b, &key(k), c, &value(v, k)).unwrap();
                apply(&mut model, b, k, c, Some(value(v, k)));
            }
            Op::DeleteColumn(b, k, c) => {
                db.delete_column(b, &key(k), c).unwrap();
                apply(&mut model, b, k, c, None);
            }
            Op::Delete(b, k) => {
                db.delete(b, &key(k)).unwrap();
                model.remove(&(b, key(k)));
            }
            Op::Batch(entries) => {
                let mut batch = WriteBatch::new();
                for (b, k, c, v) in entries {
                    match v {
                        Some(v) => batch.put(b, &key(k), c, &value(v, k)),
                        None => batch.delete_column(b, &key(k), c),
                    }
                    apply(&mut model, b, k, c, v.map(|v| value(v, k)));
                }
                db.write(batch, WriteOptions::default()).unwrap();
            }
            Op::Get(b, k) => {
                let want = model.get(&(b, key(k))).and_then(row_of);
                assert_eq!(db.get(b, &key(k)).unwrap(), want, "get({b}, {k})");
            }
            Op::Scan(b) => {
                let got: Vec<_> = db.scan(b, ..).unwrap().collect::<Result<_, _>>().unwrap();
                assert_eq!(got, model_rows(&model, b, b), "scan({b})");
            }
            Op::ScanBuckets(lo, hi) => {
                let mut it = db.scan_buckets(lo..=hi).unwrap();
                let got: Vec<_> = it.by_ref().collect::<Result<_, _>>().unwrap();
                assert_eq!(got, model_rows(&model, lo, hi), "scan_buckets({lo}..={hi})");
                // The same iterator, repositioned on each bucket, backwards, then on a key range.
                for b in (lo..=hi).rev() {
                    it.seek(b, &[], None);
                    let got: Vec<_> = it.by_ref().collect::<Result<_, _>>().unwrap();
                    assert_eq!(got, model_rows(&model, b, b), "seek({b})");
                    let (from, to) = (key(64), key(192));
                    it.seek(b, &from, Some(&to));
                    let got: Vec<_> = it.by_ref().collect::<Result<_, _>>().unwrap();
                    let want: Vec<_> = model_rows(&model, b, b)
                        .into_iter()
                        .filter(|(_, k, _)| *k >= from && *k < to)
                        .collect();
                    assert_eq!(got, want, "seek({b}, 64..192)");
                }
            }
            Op::ViewCheck(writes) => {
                // A view ignores writes made after it, through flushes and compactions.
                let before = model.clone();
                let view = db.view();
                for (b, k, c, v) in writes {
                    db.put(b, &key(k), c, &value(v, k)).unwrap();
                    apply(&mut model, b, k, c, Some(value(v, k)));
                }
                db.flush().unwrap();
                db.compact().unwrap();
                let got: Vec<_> =
                    view.scan_buckets(0..=BUCKETS - 1).unwrap().collect::<Result<_, _>>().unwrap();
                assert_eq!(got, model_rows(&before, 0, BUCKETS - 1), "view after later writes");
            }
            Op::Flush => db.flush().unwrap(),
            Op::Compact => db.compact().unwrap(),
            Op::Reopen => {
                db.close().unwrap();
                db = open(&fs);
            }
        }
    }
    let got: Vec<_> = db.scan_buckets(0..=BUCKETS - 1).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, model_rows(&model, 0, BUCKETS - 1), "final full scan");
    db.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_btreemap(ops in prop::collection::vec(op(), 1..400)) {
        run(ops);
    }
}

#[test]
fn deep_tree_keeps_tombstones_and_versions_until_the_bottom() {
    let fs = MemFs::new();
    let db = open(&fs);
    let mut model = Model::new();
    let k = |i: u32| format!("row-{:06}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes();
    let v = |i: u32, round: u32| format!("value-{i}-{round}-{}", "x".repeat((i % 200) as usize)).into_bytes();
    // Round 0 fills the tree and pushes it to the bottom; later rounds delete and overwrite while
    // background compactions move data through the upper levels.
    for i in 0..6000u32 {
        let b = (i % u32::from(BUCKETS)) as u16;
        db.put(b, &k(i), 0, &v(i, 0)).unwrap();
        model.entry((b, k(i))).or_default().insert(0, v(i, 0));
    }
    db.compact().unwrap();
    for round in 1..4u32 {
        for i in 0..6000u32 {
            let b = (i % u32::from(BUCKETS)) as u16;
            if i % 3 == round % 3 {
                db.delete(b, &k(i)).unwrap();
                model.remove(&(b, k(i)));
            } else if i % 5 == round {
                db.put(b, &k(i), 1, &v(i, round)).unwrap();
                model.entry((b, k(i))).or_default().insert(1, v(i, round));
            }
        }
    }
    db.flush().unwrap();
    let m = db.metrics();
    assert!(m.level_files[1..6].iter().any(|n| *n > 0), "tree should span several levels: {m:?}");
    for ((b, key), cols) in &model {
        assert_eq!(db.get(*b, key).unwrap(), row_of(cols));
    }
    for i in 0..6000u32 {
        let b = (i % u32::from(BUCKETS)) as u16;
        assert_eq!(db.get(b, &k(i)).unwrap(), model.get(&(b, k(i))).and_then(row_of), "row {i}");
    }
    db.compact().unwrap();
    let got: Vec<_> = db.scan_buckets(0..=BUCKETS - 1).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, model_rows(&model, 0, BUCKETS - 1));
    let m = db.metrics();
    assert_eq!(m.level_files[..6].iter().sum::<usize>(), 0, "full compaction leaves only the bottom level");
    assert!(m.compactions > 0);
}
