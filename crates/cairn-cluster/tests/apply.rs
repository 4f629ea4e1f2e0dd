//! Applying replicated entries to an engine shard whose WAL is off: after a power loss the engine's
//! applied position and its data agree (a prefix of the entries, ending exactly at the stored position),
//! so Raft replays only the log tail after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft::{Command, CommandResult, Condition, ShardApplier, TypeConfig};
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
    entry(index, EntryPayload::Normal(Command::write(&b)))
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
fn a_malformed_or_unowned_command_is_rejected_alone_and_the_position_moves_past_it() {
    let fs = Arc::new(MemFs::new());
    let mut c = Config::new("/shard");
    c.fs = Arc::clone(&fs) as Arc<dyn FileSystem>;
    c.wal = false;
    c.total_buckets = BUCKETS;
    // This shard owns buckets 0..=7 only.
    let db = Arc::new(Db::open(c, vec![0..=7]).unwrap());
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let malformed = Command::Conditional { conditions: Vec::new(), batch: vec![1, 2, 3] };
    let mut unowned = WriteBatch::new();
    unowned.put(1, b"mine", 0, b"v");
    unowned.put(9, b"not-mine", 0, b"v");
    let results = applier
        .apply(&[
            command(1),
            entry(2, EntryPayload::Normal(malformed)),
            entry(3, EntryPayload::Normal(Command::write(&unowned))),
            command(4),
        ])
        .unwrap();
    assert_eq!(results[0], CommandResult::Applied);
    assert!(matches!(&results[1], CommandResult::Rejected(why) if why.contains("malformed")), "{results:?}");
    assert_eq!(results[2], CommandResult::NotOwned { bucket: 9 }, "{results:?}");
    assert_eq!(results[3], CommandResult::Applied);
    assert!(present(&db, 1) && present(&db, 4));
    assert!(db.get(1, b"mine").unwrap().is_none(), "a rejected command writes nothing");
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(4));
}

#[test]
fn a_command_evaluated_under_another_leadership_is_refused_and_writes_nothing() {
    let fs = Arc::new(MemFs::new());
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let put = |key: &[u8]| {
        let mut b = WriteBatch::new();
        b.put(2, key, 0, b"v");
        b
    };
    let at = |term: u64, index: u64, command: Command| {
        EntryOf::<TypeConfig>::new(LogId::new_term_index(term, index), EntryPayload::Normal(command))
    };
    let results = applier
        .apply(&[
            // An entry of term 2 that a later leader committed keeps its term: evaluated in it, applied.
            at(2, 1, Command::evaluated(2, &put(b"carried"))),
            // Evaluated and appended by the leader of term 3.
            at(3, 2, Command::evaluated(3, &put(b"current"))),
            // Evaluated by the leader of term 2, appended by term 3's (it lost the role in between).
            at(3, 3, Command::evaluated(2, &put(b"stale"))),
            at(4, 4, Command::evaluated(4, &put(b"next"))),
        ])
        .unwrap();
    assert_eq!(results[0], CommandResult::Applied);
    assert_eq!(results[1], CommandResult::Applied);
    assert_eq!(results[2], CommandResult::WrongTerm { evaluated: 2, appended: 3 });
    assert_eq!(results[3], CommandResult::Applied);
    assert!(db.get(2, b"current").unwrap().is_some() && db.get(2, b"next").unwrap().is_some());
    assert!(db.get(2, b"carried").unwrap().is_some());
    assert!(db.get(2, b"stale").unwrap().is_none(), "a refused command writes nothing");
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(4));
}

#[test]
fn conditions_see_every_earlier_entry_and_decide_the_write() {
    let fs = Arc::new(MemFs::new());
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let is = |value: Option<&[u8]>| Condition::ColumnIs {
        bucket: 5,
        key: b"reg".to_vec(),
        column: 0,
        value: value.map(<[u8]>::to_vec),
    };
    let set = |value: &[u8]| {
        let mut b = WriteBatch::new();
        b.put(5, b"reg", 0, value);
        b
    };
    let cas = |index: u64, expect: Option<&[u8]>, new: &[u8]| {
        entry(index, EntryPayload::Normal(Command::conditional(vec![is(expect)], &set(new))))
    };
    // In one apply: a write, then conditions that must see it (and each other's effects).
    let results = applier
        .apply(&[
            entry(1, EntryPayload::Normal(Command::write(&set(b"a")))),
            cas(2, None, b"x"),
            cas(3, Some(b"a"), b"b"),
            cas(4, Some(b"a"), b"c"),
            entry(
                5,
                EntryPayload::Normal(Command::conditional(
                    vec![Condition::Any(vec![is(Some(b"zzz")), is(Some(b"b"))])],
                    &set(b"d"),
                )),
            ),
        ])
        .unwrap();
    use CommandResult::{Applied, ConditionFailed};
    assert_eq!(results, vec![Applied, ConditionFailed, Applied, ConditionFailed, Applied]);
    assert_eq!(db.get(5, b"reg").unwrap().unwrap().column(0), Some(&b"d"[..]));
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(5));
    // Byte-wise bounds and negation: "present and below" is false for an absent column.
    let below = |value: &[u8], key: &[u8]| Condition::ColumnBelow {
        bucket: 5,
        key: key.to_vec(),
        column: 0,
        value: value.to_vec(),
    };
    let when = |index: u64, condition: Condition| {
        entry(index, EntryPayload::Normal(Command::conditional(vec![condition], &set(b"e"))))
    };
    let results = applier
        .apply(&[
            when(6, below(b"d", b"reg")),
            when(7, below(b"d\x00", b"reg")),
            when(8, below(b"zz", b"absent")),
            when(9, Condition::Not(Box::new(below(b"zz", b"absent")))),
            when(10, Condition::Not(Box::new(is(Some(b"e"))))),
        ])
        .unwrap();
    assert_eq!(results, vec![ConditionFailed, Applied, ConditionFailed, Applied, ConditionFailed]);
}

// Regression: a check entry hashed the whole shard inside apply, holding the lock every read's fencing
// check takes (~0.8 s per GB). The hash now runs in the background on a read view: with the shard's
// files unreadable (a stuck device), the check entry, later writes and reads all go through, and the
// digest arrives once the files can be read again, equal to the shard's contents at the entry.
#[test]
fn a_consistency_check_hashes_in_the_background_holding_up_neither_applies_nor_reads() {
    use cairn_cluster::raft::Check;
    use cairn_engine::fs::{FaultFs, FaultKind};
    let faults = FaultFs::new(Arc::new(MemFs::new()));
    let control = faults.controller();
    let mut c = Config::new("/shard");
    c.fs = Arc::new(faults) as Arc<dyn FileSystem>;
    c.wal = false;
    c.total_buckets = BUCKETS;
    c.block_cache_bytes = 0;
    let db = Arc::new(Db::open(c, vec![0..=(BUCKETS - 1) as u16]).unwrap());
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    applier.apply(&(1..=200).map(command).collect::<Vec<_>>()).unwrap();
    db.flush().unwrap();
    let check = entry(201, EntryPayload::Normal(Command::check(Check::Record)));
    let wait_for_digest = |applier: &ShardApplier| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(digest) = applier.recorded_digest(201) {
                return digest;
            }
            assert!(std::time::Instant::now() < deadline, "the digest never arrived");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // What another replica that applied the same entries hashes there.
    let other = ShardApplier::new(open(&Arc::new(MemFs::new())), 0);
    other.apply(&(1..=200).map(command).chain([check.clone()]).collect::<Vec<_>>()).unwrap();
    let expected = wait_for_digest(&other);

    control.hold(FaultKind::Read);
    assert_eq!(applier.apply(&[check]).unwrap(), vec![CommandResult::Recorded]);
    assert_eq!(applier.recorded_digest(201), None, "the hash waits for the files");
    // Applies, and the fencing check every read makes, go on meanwhile.
    assert_eq!(applier.apply(&[command(202)]).unwrap(), vec![CommandResult::Applied]);
    assert_eq!(applier.check_status().fenced, None);
    // A comparison applied before the digest is ready waits for it.
    let compare = Check::Compare { index: 201, digest: expected.clone() };
    let compare = entry(203, EntryPayload::Normal(Command::check(compare)));
    assert_eq!(applier.apply(&[compare]).unwrap(), vec![CommandResult::Compared(None)]);

    control.release(FaultKind::Read);
    assert_eq!(wait_for_digest(&applier), expected, "the contents at the check entry");
    let status = applier.check_status();
    assert_eq!((status.verified, status.fenced), (Some(201), None), "compared once hashed");
    assert!(present(&db, 202));
}

/// A split's shrink is durable in the engine's manifest at once, while its entry's applied position
/// waits for a flush: after a power loss the entry is applied again, and the engine answers the
/// repeated shrink with the same snapshot (no second shrink, no lost rows).
#[test]
fn a_split_replayed_after_a_power_loss_gives_the_same_snapshot() {
    let fs = Arc::new(MemFs::new());
    let config = || {
        let mut c = Config::new("/shard");
        c.fs = Arc::clone(&fs) as Arc<dyn FileSystem>;
        c.wal = false;
        c.total_buckets = BUCKETS;
        c.snapshot_volume = Some("file:///snapshots".into());
        c
    };
    let db = Arc::new(Db::open(config(), vec![0..=(BUCKETS - 1) as u16]).unwrap());
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let voters = BTreeSet::from([1u64, 2, 3]);
    applier
        .apply(&[entry(1, EntryPayload::Membership(Membership::new_with_defaults(vec![voters], [])))])
        .unwrap();
    applier.apply(&(2..=11).map(command).collect::<Vec<_>>()).unwrap();
    let split = entry(
        12,
        // As logs written before splits named a first leader hold it: it still applies.
        EntryPayload::Normal(Command::LegacySplit {
            new_group: 9,
            ranges: vec![(8, 15)],
            voters: vec![(1, "n1".into())],
        }),
    );
    let first = applier.apply(std::slice::from_ref(&split)).unwrap();
    let CommandResult::Split { source, snapshot } = first[0].clone() else { panic!("{first:?}") };

    fs.crash();
    drop(applier);
    drop(db);
    // The manifest says what the shard owns now: it reopens as stored.
    let db = Arc::new(Db::open_as_stored(config()).unwrap());
    assert_eq!(db.owned_buckets(), vec![0..=7]);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    // The shrink flushed everything before the split; the split's own position was not.
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(11));
    assert!((2..=11).filter(|i| i % u64::from(BUCKETS) < 8).all(|i| present(&db, i)));
    let again = applier.apply(std::slice::from_ref(&split)).unwrap();
    assert_eq!(again[0], CommandResult::Split { source, snapshot });
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(12));
}

/// A freeze stores its position and record, then gives every bucket up: after a power loss the shard
/// reopens frozen, at the freeze entry (read from the pre-shrink snapshot, as the engine owns nothing),
/// and the entries after it are refused alike. A merge on a replica whose node has no frozen copy of
/// the right-hand shard cannot take its ranges in: that replica fences itself.
#[test]
fn a_freeze_survives_a_power_loss_and_a_merge_without_the_frozen_shard_fences() {
    let fs = Arc::new(MemFs::new());
    let config = |dir: &str| {
        let mut c = Config::new(dir);
        c.fs = Arc::clone(&fs) as Arc<dyn FileSystem>;
        c.wal = false;
        c.total_buckets = BUCKETS;
        c.snapshot_volume = Some("file:///snapshots".into());
        c
    };
    let db = Arc::new(Db::open(config("/right"), vec![8..=15]).unwrap());
    let applier = ShardApplier::new(Arc::clone(&db), 8);
    let voters = BTreeSet::from([1u64, 2, 3]);
    applier
        .apply(&[entry(1, EntryPayload::Membership(Membership::new_with_defaults(vec![voters], [])))])
        .unwrap();
    // Entry `index` writes to the shard's buckets, 8..=15.
    let write = |index: u64| {
        let mut b = WriteBatch::new();
        b.put(8 + (index % 8) as u16, format!("k{index}").as_bytes(), 0, b"v");
        entry(index, EntryPayload::Normal(Command::write(&b)))
    };
    applier.apply(&(2..=11).map(write).collect::<Vec<_>>()).unwrap();
    // Only all of what it owns.
    let partial = entry(12, EntryPayload::Normal(Command::Freeze { ranges: vec![(8, 14)] }));
    assert!(matches!(applier.apply(&[partial]).unwrap()[0], CommandResult::Rejected(_)));
    let freeze = entry(13, EntryPayload::Normal(Command::Freeze { ranges: vec![(8, 15)] }));
    let CommandResult::Frozen { snapshot } = applier.apply(std::slice::from_ref(&freeze)).unwrap()[0] else {
        panic!("not frozen")
    };
    let after = [entry(14, EntryPayload::Blank), write(15)];
    let answered = applier.apply(&after).unwrap();
    assert_eq!(answered[1], CommandResult::NotOwned { bucket: 8 });
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(15));
    let frozen = applier.frozen().unwrap().unwrap();
    assert_eq!((frozen.snapshot, frozen.ranges.clone()), (snapshot, vec![(8, 15)]));

    fs.crash();
    drop(applier);
    drop(db);
    let db = Arc::new(Db::open_as_stored(config("/right")).unwrap());
    assert!(db.owned_buckets().is_empty());
    let release = db.open_last_release().unwrap().unwrap();
    assert!((2..=11).all(|i| release.get(8 + (i % 8) as u16, format!("k{i}").as_bytes()).unwrap().is_some()));
    let applier = ShardApplier::new(Arc::clone(&db), 8);
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(13), "the freeze's own position");
    assert_eq!(applier.frozen().unwrap(), Some(frozen.clone()));
    assert_eq!(applier.apply(&after).unwrap(), answered, "replayed alike");
    assert_eq!(applier.apply(std::slice::from_ref(&freeze)).unwrap()[0], CommandResult::Frozen { snapshot });

    // The left-hand neighbour's replica on a node without the frozen shard: fenced, nothing taken in.
    let left = Arc::new(Db::open(config("/left"), vec![0..=7]).unwrap());
    let applier = ShardApplier::new(Arc::clone(&left), 0);
    let merge = entry(2, EntryPayload::Normal(Command::Merge { right_group: 2, ranges: vec![(8, 15)] }));
    assert_eq!(applier.apply(&[merge]).unwrap(), vec![CommandResult::Merged]);
    assert!(applier.check_status().fenced.is_some());
    assert_eq!(left.owned_buckets(), vec![0..=7]);
}

/// A GC threshold entry raises the shard's threshold (stored, and handed to compactions) and never
/// lowers it; once applied it survives a power loss with the position that applied it, and the
/// reopened shard hands it to compactions again before anything replays.
#[test]
fn a_gc_threshold_only_rises_and_survives_a_power_loss() {
    let fs = Arc::new(MemFs::new());
    let db = open(&fs);
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    let voters = BTreeSet::from([1u64, 2, 3]);
    applier
        .apply(&[entry(1, EntryPayload::Membership(Membership::new_with_defaults(vec![voters], [])))])
        .unwrap();
    assert_eq!((applier.gc_threshold().unwrap(), db.filter_threshold()), (0, 0));
    let gc =
        |index: u64, wall_time: u64| entry(index, EntryPayload::Normal(Command::GcThreshold { wall_time }));
    let answered = applier.apply(&[command(2), gc(3, 1_000), command(4), gc(5, 400)]).unwrap();
    assert_eq!(answered, vec![CommandResult::Applied; 4]);
    assert_eq!((applier.gc_threshold().unwrap(), db.filter_threshold()), (1_000, 1_000), "never lowered");
    // Entries after the raise are not flushed (the lower one raised nothing): a power loss drops them,
    // not the threshold.

    fs.crash();
    drop(applier);
    drop(db);
    let db = open(&fs);
    assert_eq!(db.filter_threshold(), 0, "the engine alone does not know it");
    let applier = ShardApplier::new(Arc::clone(&db), 0);
    assert_eq!(db.filter_threshold(), 1_000, "the shard hands its stored threshold to compactions");
    assert_eq!(applier.applied().unwrap().0.map(|id| id.index), Some(3), "up to the raise");
    assert!(present(&db, 2) && !present(&db, 4));
    applier.apply(&[command(4), gc(5, 400), gc(6, 2_000)]).unwrap();
    assert_eq!((applier.gc_threshold().unwrap(), db.filter_threshold()), (2_000, 2_000));
}
