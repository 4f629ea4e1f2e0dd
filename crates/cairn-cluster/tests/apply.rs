//! Applying replicated entries to an engine shard whose WAL is off: after a power loss the engine's
//! applied position and its data agree (a prefix of the entries, ending exactly at the stored position),
//! so Raft replays only the log tail after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft::{Command, ShardApplier, TypeConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, Db, WriteBatch};
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::{EntryPayload, LogId, Membership};
use std::collections::BTreeSet;
use std::sync::Arc;

const BUCKETS: u32 = 16;

fn open(fs: &Arc<MemFs>) -> Arc<Db> {
    let mut c = Config::new("/shard");
    c.fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    c.wal = false;
    c.total_buckets = BUCKETS;
    Arc::new(Db::open(c, vec![0..=(BUCKETS - 1) as u16]).unwrap())
}

fn entry(index: u64, payload: EntryPayload<Command, u64, openraft::impls::BasicNode>) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig>::new(LogId::new_term_index(1, index), payload)
}

/// Entry `index` writes key `k<index>`.
fn command(index: u64) -> EntryOf<TypeConfig> {
    let mut b = WriteBatch::new();
    b.put((index % u64::from(BUCKETS)) as u16, format!("k{index}").as_bytes(), 0, &index.to_be_bytes());
    entry(index, EntryPayload::Normal(Command(b.as_bytes().to_vec())))
}

fn present(db: &Db, index: u64) -> bool {
    db.get((index % u64::from(BUCKETS)) as u16, format!("k{index}").as_bytes()).unwrap().is_some()
}

#[test]
fn the_applied_position_and_the_data_survive_a_power_loss_together() {
    let fs = Arc::new(MemFs::new());
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    assert_eq!(applier.applied().unwrap().0, None);
    let voters = BTreeSet::from([1u64, 2, 3]);
    let head = [
        entry(0, EntryPayload::Blank),
        entry(1, EntryPayload::Membership(Membership::new_with_defaults(vec![voters], []))),
    ];
    applier.apply(&head).unwrap();
    let batches: Vec<Vec<EntryOf<TypeConfig>>> =
        (0..20u64).map(|b| (2 + b * 5..2 + (b + 1) * 5).map(command).collect()).collect();
    for (i, batch) in batches.iter().enumerate() {
        assert_eq!(applier.apply(batch).unwrap().len(), 5);
        if i == 9 {
            // What is flushed survives; the rest lived only in the memtable (no WAL).
            db.flush().unwrap();
        }
    }
    let (applied, membership) = applier.applied().unwrap();
    assert_eq!(applied.map(|id| id.index), Some(101));
    assert_eq!(membership.log_id().map(|id| id.index), Some(1));
    assert!((2..=101).all(|i| present(&db, i)));

    fs.crash();
    drop(applier);
    drop(db);
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let (applied, membership) = applier.applied().unwrap();
    // The flush after the tenth batch: entries up to 2 + 10 * 5 - 1 = 51.
    assert_eq!(applied.map(|id| id.index), Some(51));
    assert_eq!(membership.log_id().map(|id| id.index), Some(1));
    assert!((2..=51).all(|i| present(&db, i)), "everything up to the applied position is there");
    assert!((52..=101).all(|i| !present(&db, i)), "nothing after it is");
    // Replaying the tail brings the shard back.
    for batch in &batches[10..] {
        applier.apply(batch).unwrap();
    }
    assert!((2..=101).all(|i| present(&db, i)));
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(101));
}

#[test]
fn a_malformed_command_is_an_error_and_moves_nothing() {
    let fs = Arc::new(MemFs::new());
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    applier.apply(&[command(0)]).unwrap();
    let bad = entry(1, EntryPayload::Normal(Command(vec![1, 2, 3])));
    assert!(applier.apply(&[command(1), bad]).is_err());
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(0));
    assert!(!present(&db, 1));
}
