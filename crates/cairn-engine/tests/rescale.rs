//! Online rescale: the seed's 2 → 3 example and back (3 → 2) over ~100k keys in all 1024 buckets, with
//! restarts, later writes, a global snapshot and restore afterwards; bad plans refused; crashes in the
//! middle of a shrink or an expand leave each shard wholly before or wholly after the step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::fs::{FaultFs, FaultKind, FileSystem, MemFs};
use cairn_engine::{
    BucketRange, BucketSet, Config, CoordinatorConfig, Db, DbCoordinator, Error, Volume, VolumeRole,
};
use common::{Model, Rng, apply, random_ops, seeds, small_config, to_batch};
use std::path::Path;
use std::sync::Arc;

const TOTAL: u32 = 1024;
const KEYS: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("k{i:07}").into_bytes()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    format!("v{i}-{round}").into_bytes()
}

fn bucket_of(i: u64) -> u16 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as u16
}

fn config(dir: &Path, snapvol: &str) -> Config {
    let mut c = Config::new(dir);
    c.total_buckets = TOTAL;
    c.memtable_bytes = 512 << 10;
    c.target_file_bytes = 256 << 10;
    c.level_base_bytes = 512 << 10;
    c.snapshot_volume = Some(snapvol.to_string());
    c
}

/// The shard (index into `plan`) that owns bucket `b`.
fn owner(plan: &[Vec<BucketRange>], b: u16) -> usize {
    plan.iter().position(|ranges| ranges.iter().any(|r| r.contains(&b))).unwrap()
}

/// Every key is readable from exactly its owner with the value of `round_of(i)`; every other shard
/// answers `NotOwned`.
fn verify(shards: &[&Db], plan: &[Vec<BucketRange>], round_of: impl Fn(u64) -> u64) {
    for (s, db) in shards.iter().enumerate() {
        assert_eq!(db.owned_buckets(), plan[s], "shard {s} owns the wrong ranges");
    }
    for i in 0..KEYS {
        let b = bucket_of(i);
        let o = owner(plan, b);
        for (s, db) in shards.iter().enumerate() {
            let got = db.get(b, &key(i));
            if s == o {
                let row = got.unwrap_or_else(|e| panic!("key {i} bucket {b} on shard {s}: {e}"));
                let row = row.unwrap_or_else(|| panic!("key {i} bucket {b} missing on its owner {s}"));
                assert_eq!(row.column(0), Some(&value(i, round_of(i))[..]), "key {i} on shard {s}");
            } else {
                assert!(matches!(got, Err(Error::NotOwned { bucket }) if bucket == b), "key {i} on {s}");
            }
        }
    }
}

fn write_all(shards: &[&Db], plan: &[Vec<BucketRange>], keys: impl Iterator<Item = u64>, round: u64) {
    for i in keys {
        let b = bucket_of(i);
        shards[owner(plan, b)].put(b, &key(i), 0, &value(i, round)).unwrap();
    }
}

/// The seed's example: A 0..=511, B 512..=1023 → A 0..=341, B 342..=683, C 684..=1023, then back.
#[test]
fn seed_example_two_to_three_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let cfg = |name: &str| config(&tmp.path().join(name), &snapvol);
    let before = vec![vec![0..=511], vec![512..=1023]];
    let a = Db::open(cfg("a"), before[0].clone()).unwrap();
    let b = Db::open(cfg("b"), before[1].clone()).unwrap();
    write_all(&[&a, &b], &before, 0..KEYS, 0);
    // Baseline: a global snapshot.
    let coord_cfg = CoordinatorConfig {
        volumes: vec![Volume::new(&snapvol, VolumeRole::Meta), Volume::new(&snapvol, VolumeRole::Snapshot)],
        ..CoordinatorConfig::default()
    };
    let coord = DbCoordinator::open(coord_cfg.clone()).unwrap();
    let inputs = vec![a.shard_snapshot_input(a.snapshot().unwrap()).unwrap(), {
        let id = b.snapshot().unwrap();
        b.shard_snapshot_input(id).unwrap()
    }];
    let baseline = coord.take_global_snapshot(TOTAL, inputs).unwrap();
    coord.materialize_global_snapshot(&baseline).unwrap();

    // Step 0: C starts from B's snapshot in the baseline.
    let b_in = baseline.shard_snapshots.iter().find(|s| s.db_id == b.id()).unwrap();
    let c = Db::open_from_snapshot(cfg("c"), b_in.snapshot_id, b.id()).unwrap();
    // Phase 1: shrink everyone. Phase 2: expand.
    let snap_a = a.shrink_bucket(vec![342..=511]).unwrap();
    b.shrink_bucket(vec![684..=1023]).unwrap();
    c.shrink_bucket(vec![512..=683]).unwrap();
    let stats = b.expand_bucket(&a.id(), snap_a, vec![342..=511]).unwrap();
    assert_eq!(stats.bytes_copied, 0, "one file system: links only");
    assert!(stats.files_imported > 0);
    let after = vec![vec![0..=341], vec![342..=683], vec![684..=1023]];
    verify(&[&a, &b, &c], &after, |_| 0);

    // Writes after the rescale land on the new owners and shadow imported data.
    write_all(&[&a, &b, &c], &after, (0..KEYS).step_by(7), 1);
    let round = |i: u64| u64::from(i.is_multiple_of(7));
    verify(&[&a, &b, &c], &after, round);
    // Compaction reclaims released data and keeps the rest.
    for db in [&a, &b, &c] {
        db.compact().unwrap();
    }
    for db in [&a, &b, &c] {
        assert_eq!(db.metrics().filtered_files, 0, "compaction left hidden entries");
    }
    verify(&[&a, &b, &c], &after, round);
    // The importer holds its own references: deleting A's pre-shrink snapshot loses nothing.
    std::fs::remove_dir_all(tmp.path().join("snapshots").join(a.id()).join(format!("{snap_a:010}"))).unwrap();
    verify(&[&a, &b, &c], &after, round);

    // Restart: every shard reopens with its new ranges.
    let (a_id, b_id, c_id) = (a.id(), b.id(), c.id());
    drop((a, b, c));
    let a = Db::open(cfg("a"), after[0].clone()).unwrap();
    let b = Db::open(cfg("b"), after[1].clone()).unwrap();
    let c = Db::open(cfg("c"), after[2].clone()).unwrap();
    assert_eq!((a.id(), b.id(), c.id()), (a_id, b_id, c_id));
    verify(&[&a, &b, &c], &after, round);

    // A global snapshot of the new layout covers the space once and restores.
    let inputs: Vec<_> =
        [&a, &b, &c].iter().map(|db| db.shard_snapshot_input(db.snapshot().unwrap()).unwrap()).collect();
    let global = coord.take_global_snapshot(TOTAL, inputs).unwrap();
    coord.materialize_global_snapshot(&global).unwrap();
    let restored: Vec<Db> = [&a, &b, &c]
        .iter()
        .map(|db| {
            let s = global.shard_snapshots.iter().find(|s| s.db_id == db.id()).unwrap();
            Db::open_from_snapshot(cfg(&format!("restored-{}", s.db_id)), s.snapshot_id, s.db_id.clone())
                .unwrap()
        })
        .collect();
    verify(&restored.iter().collect::<Vec<_>>(), &after, round);
    drop(restored);

    // And back, 3 → 2: B gives 342..=511 to A; C gives everything to B. B still holds hidden copies of
    // 684..=1023 in files compaction has not rewritten, if any; the import must see through that.
    let snap_b = b.shrink_bucket(vec![342..=511]).unwrap();
    let snap_c = c.shrink_bucket(vec![684..=1023]).unwrap();
    assert!(c.owned_buckets().is_empty());
    a.expand_bucket(&b.id(), snap_b, vec![342..=511]).unwrap();
    b.expand_bucket(&c.id(), snap_c, vec![684..=1023]).unwrap();
    verify(&[&a, &b], &before, round);
    write_all(&[&a, &b], &before, (0..KEYS).step_by(11), 2);
    let round = |i: u64| if i.is_multiple_of(11) { 2 } else { u64::from(i.is_multiple_of(7)) };
    verify(&[&a, &b], &before, round);
    drop((a, b, c));
    let a = Db::open(cfg("a"), before[0].clone()).unwrap();
    let b = Db::open(cfg("b"), before[1].clone()).unwrap();
    verify(&[&a, &b], &before, round);
}

/// Plans that would lose or duplicate ownership are refused, naming the bucket.
#[test]
fn bad_plans_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let cfg = |name: &str| config(&tmp.path().join(name), &snapvol);
    let a = Db::open(cfg("a"), vec![0..=511]).unwrap();
    let b = Db::open(cfg("b"), vec![512..=1023]).unwrap();
    write_all(&[&a, &b], &[vec![0..=511], vec![512..=1023]], 0..2_000, 0);
    let msg = |e: Error| e.to_string();
    // Shrinking what the shard does not own.
    assert!(msg(a.shrink_bucket(vec![500..=600]).unwrap_err()).contains("bucket 512"));
    // Expanding from a snapshot whose shard still owns the range (no shrink).
    let plain = a.snapshot().unwrap();
    let e = msg(b.expand_bucket(&a.id(), plain, vec![0..=10]).unwrap_err());
    assert!(e.contains("still owns bucket 0"), "{e}");
    let snap_a = a.shrink_bucket(vec![400..=511]).unwrap();
    // A range the source snapshot does not hold.
    let e = msg(b.expand_bucket(&a.id(), snap_a, vec![600..=700]).unwrap_err());
    assert!(e.contains("bucket 600 is not in snapshot"), "{e}");
    // A range the source did not release.
    let e = msg(b.expand_bucket(&a.id(), snap_a, vec![300..=450]).unwrap_err());
    assert!(e.contains("still owns bucket 300"), "{e}");
    // Overlapping ownership: expanding into a range the shard already owns.
    let e = msg(a.expand_bucket(&b.id(), b.snapshot().unwrap(), vec![512..=520]).unwrap_err());
    assert!(e.contains("512"), "{e}");
    // Unknown source or snapshot.
    assert!(matches!(
        b.expand_bucket("nosuchshard", 1, vec![400..=511]),
        Err(Error::SnapshotNotFound { .. })
    ));
    assert!(matches!(b.expand_bucket(&a.id(), 999, vec![400..=511]), Err(Error::SnapshotNotFound { .. })));
    // The valid step still works afterwards, once; a second import of the same range is refused.
    b.expand_bucket(&a.id(), snap_a, vec![400..=511]).unwrap();
    let e = msg(b.expand_bucket(&a.id(), snap_a, vec![400..=511]).unwrap_err());
    assert!(e.contains("already owns bucket 400"), "{e}");
    // A third shard cannot import the same released range again (two owners).
    let c = Db::open(cfg("c"), vec![]).unwrap();
    let e = msg(c.expand_bucket(&a.id(), snap_a, vec![450..=460]).unwrap_err());
    assert!(e.contains("already imported by shard"), "{e}");
    // Released buckets answer NotOwned on the source, reads and writes alike.
    assert!(matches!(a.put(450, b"x", 0, b"y"), Err(Error::NotOwned { bucket: 450 })));
    assert!(matches!(a.get(450, b"x"), Err(Error::NotOwned { bucket: 450 })));
    assert!(matches!(a.scan_buckets(0..=450), Err(Error::NotOwned { bucket: 400 })));
}

/// Ownership recorded in `dir`'s manifest: the ranges `Db::open` accepts, tried in order.
fn reopen(config: &Config, candidates: &[Vec<BucketRange>]) -> (usize, Db) {
    let mut errors = Vec::new();
    for (i, ranges) in candidates.iter().enumerate() {
        match Db::open(config.clone(), ranges.clone()) {
            Ok(db) => return (i, db),
            Err(e) => errors.push(e.to_string()),
        }
    }
    panic!("no candidate ownership reopens: {errors:?}");
}

/// A crash (power loss) at any point of a shrink, then of an expand, leaves each shard wholly before or
/// wholly after the step, and every bucket readable with its data from exactly one owner once the plan
/// is re-run.
#[test]
fn crash_during_shrink_or_expand_is_all_or_nothing() {
    let mut points = 0;
    for kind in [FaultKind::Write, FaultKind::Sync, FaultKind::Create, FaultKind::Rename, FaultKind::SyncDir]
    {
        for n in 0.. {
            if !crash_once(kind, n) {
                break;
            }
            points += 1;
        }
    }
    println!("{points} crash points");
    assert!(points > 20, "too few crash points exercised: {points}");
}

fn crash_once(kind: FaultKind, n: u64) -> bool {
    const N: u64 = 3_000;
    let mem = MemFs::new();
    let fault = FaultFs::new(Arc::new(mem.clone()));
    let ctl = fault.controller();
    let fs: Arc<dyn FileSystem> = Arc::new(fault);
    let snapvol = "file:///snapshots";
    let cfg = |dir: &str| config(Path::new(dir), snapvol).with_fs(Arc::clone(&fs));
    let before = [vec![0..=511], vec![512..=1023]];
    let after = [vec![0..=341], vec![342..=1023]];
    let a = Db::open(cfg("/a"), before[0].clone()).unwrap();
    let b = Db::open(cfg("/b"), before[1].clone()).unwrap();
    for i in 0..N {
        let bk = bucket_of(i);
        let db = if bk <= 511 { &a } else { &b };
        db.write(
            {
                let mut w = cairn_engine::WriteBatch::new();
                w.put(bk, &key(i), 0, &value(i, 0));
                w
            },
            cairn_engine::WriteOptions { sync: true },
        )
        .unwrap();
    }
    ctl.fail_after(kind, n);
    let count = ctl.count(kind);
    let result = (|| {
        let snap = a.shrink_bucket(vec![342..=511])?;
        b.expand_bucket(&a.id(), snap, vec![342..=511])?;
        Ok::<_, Error>(())
    })();
    let fired = ctl.count(kind) > count + n;
    drop((a, b));
    mem.crash();
    ctl.clear();
    let (a_state, a) = reopen(&cfg("/a"), &[before[0].clone(), after[0].clone()]);
    let (b_state, b) = reopen(&cfg("/b"), &[before[1].clone(), after[1].clone()]);
    if result.is_ok() {
        assert_eq!((a_state, b_state), (1, 1), "{kind:?} {n}: an acknowledged rescale was lost");
    }
    // Never two owners: B cannot have taken the range while A still has it.
    assert!(!(a_state == 0 && b_state == 1), "{kind:?} {n}: two owners of 342..=511");
    // Re-run the plan to completion; the data must all be there.
    let snap = a.shrink_bucket(vec![342..=511]).unwrap_or_else(|e| panic!("{kind:?} {n}: shrink retry: {e}"));
    if b_state == 0 {
        b.expand_bucket(&a.id(), snap, vec![342..=511])
            .unwrap_or_else(|e| panic!("{kind:?} {n}: expand retry: {e}"));
    }
    for i in 0..N {
        let bk = bucket_of(i);
        let db = if bk <= 341 { &a } else { &b };
        let row = db.get(bk, &key(i)).unwrap().unwrap_or_else(|| panic!("{kind:?} {n}: key {i} lost"));
        assert_eq!(row.column(0), Some(&value(i, 0)[..]));
    }
    fired
}

/// Random rescale plans against a model: three shards over 32 buckets, random writes and deletes through
/// the owners, random moves (shrink a random run of a shard's buckets, expand it into another shard),
/// compactions and restarts. After every step each shard's contents equal the model restricted to the
/// buckets it owns, the shards' ownership partitions the space, and other shards answer `NotOwned`.
#[test]
fn random_rescale_plans_match_the_model() {
    const BUCKETS: u16 = 32;
    let (mut moves, mut copies) = (0u64, 0u64);
    for seed in seeds(6) {
        println!("seed {seed} (replay with CAIRN_SEED={seed})");
        let mut rng = Rng::new(seed);
        let mem = MemFs::new();
        let fs: Arc<dyn FileSystem> = Arc::new(mem.clone());
        let cfg = |s: usize| {
            let mut c = small_config(Arc::clone(&fs), BUCKETS);
            c.dir = format!("/shard{s}").into();
            c.snapshot_volume = Some("file:///snapshots".into());
            c
        };
        let mut owned: Vec<BucketSet> = vec![
            BucketSet::new(&[0..=9], 32).unwrap(),
            BucketSet::new(&[10..=20], 32).unwrap(),
            BucketSet::new(&[21..=31], 32).unwrap(),
        ];
        let mut shards: Vec<Db> =
            (0..3).map(|s| Db::open(cfg(s), owned[s].ranges().to_vec()).unwrap()).collect();
        let mut model = Model::new();
        for step in 0..40 {
            let what = rng.range(0, 10);
            let ctx = format!("seed {seed} step {step}");
            if what < 5 {
                for _ in 0..rng.range(10, 80) {
                    let ops = random_ops(&mut rng, BUCKETS, 40, 48);
                    // Split the batch by owner: each shard commits its part.
                    for (s, db) in shards.iter().enumerate() {
                        let mine: Vec<_> =
                            ops.iter().filter(|op| owned[s].contains(op_bucket(op))).cloned().collect();
                        if !mine.is_empty() {
                            db.write(to_batch(&mine), Default::default()).unwrap();
                            apply(&mut model, &mine);
                        }
                    }
                }
            } else if what < 8 {
                let from = rng.range(0, 3) as usize;
                let Some(run) = random_run(&mut rng, &owned[from]) else { continue };
                let to = (from + rng.range(1, 3) as usize) % 3;
                let snap =
                    shards[from].shrink_bucket(vec![run.clone()]).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let stats = shards[to]
                    .expand_bucket(&shards[from].id(), snap, vec![run.clone()])
                    .unwrap_or_else(|e| panic!("{ctx}: expand {run:?} from {from} into {to}: {e}"));
                moves += 1;
                copies += u64::from(stats.bytes_copied > 0);
                let moved = BucketSet::of(run);
                owned[from] = owned[from].subtract(&moved);
                owned[to] = owned[to].union(&moved);
            } else if what < 9 {
                shards[rng.range(0, 3) as usize].compact().unwrap();
            } else {
                let s = rng.range(0, 3) as usize;
                let db = shards.remove(s);
                drop(db);
                shards.insert(s, Db::open(cfg(s), owned[s].ranges().to_vec()).unwrap());
            }
            check_shards(&ctx, &shards, &owned, &model, BUCKETS);
        }
    }
    println!("{moves} moves, {copies} of them by copy (the importer owned buckets on both sides)");
    assert!(moves >= 10, "too few moves exercised: {moves}");
}

fn op_bucket(op: &common::Op) -> u16 {
    match op {
        common::Op::Put(b, ..) | common::Op::DeleteColumn(b, ..) | common::Op::Delete(b, ..) => *b,
    }
}

/// A random run of consecutive buckets inside one of `set`'s ranges.
fn random_run(rng: &mut Rng, set: &BucketSet) -> Option<BucketRange> {
    let ranges = set.ranges();
    if ranges.is_empty() {
        return None;
    }
    let r = &ranges[rng.range(0, ranges.len() as u64) as usize];
    let (lo, hi) = (u64::from(*r.start()), u64::from(*r.end()));
    let a = rng.range(lo, hi + 1);
    let b = rng.range(a, (a + 6).min(hi) + 1);
    Some(a as u16..=b as u16)
}

fn check_shards(ctx: &str, shards: &[Db], owned: &[BucketSet], model: &Model, buckets: u16) {
    for (s, db) in shards.iter().enumerate() {
        assert_eq!(db.owned_buckets(), owned[s].ranges(), "{ctx}: shard {s} ownership");
        let want: Model = model
            .iter()
            .filter(|((b, _), _)| owned[s].contains(*b))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut got = Model::new();
        for r in owned[s].ranges() {
            for item in db.scan_buckets(r.clone()).unwrap() {
                let (b, k, row) = item.unwrap();
                got.insert((b, k), row.columns().map(|(c, v)| (c, v.to_vec())).collect());
            }
        }
        assert!(got == want, "{ctx}: shard {s} differs from the model");
        for (b, k) in want.keys().take(20) {
            assert!(db.get(*b, k).unwrap().is_some(), "{ctx}: point read on shard {s}");
        }
    }
    for b in 0..buckets {
        let owners: Vec<usize> = (0..shards.len()).filter(|&s| owned[s].contains(b)).collect();
        assert_eq!(owners.len(), 1, "{ctx}: bucket {b} owners {owners:?}");
        for (s, db) in shards.iter().enumerate() {
            if s != owners[0] {
                assert!(
                    matches!(db.get(b, b"k"), Err(Error::NotOwned { .. })),
                    "{ctx}: shard {s} bucket {b}"
                );
            }
        }
    }
}

/// A shard's ranges change with rescales, so the manifest is where a reopen finds them.
#[test]
fn a_shard_reopens_with_the_ranges_its_manifest_records() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let cfg = |name: &str| config(&tmp.path().join(name), &snapvol);
    // Nothing stored: refused, and nothing made.
    let e = Db::open_as_stored(cfg("none")).unwrap_err();
    assert!(e.to_string().contains("no shard in"), "{e}");
    assert!(!tmp.path().join("none").exists());
    let a = Db::open(cfg("a"), vec![0..=1023]).unwrap();
    write_all(&[&a], &[vec![0..=1023]], 0..500, 0);
    a.shrink_bucket(vec![512..=1023]).unwrap();
    a.close().unwrap();
    // Opening with the ranges it was made with is refused; as stored, it owns what the shrink left.
    let e = Db::open(cfg("a"), vec![0..=1023]).unwrap_err();
    assert!(e.to_string().contains("shard owns buckets"), "{e}");
    let a = Db::open_as_stored(cfg("a")).unwrap();
    assert_eq!(a.owned_buckets(), vec![0..=511]);
    for i in 0..500 {
        let b = bucket_of(i);
        match a.get(b, &key(i)) {
            Ok(row) if b < 512 => assert_eq!(row.unwrap().column(0), Some(&value(i, 0)[..]), "key {i}"),
            got => assert!(matches!(got, Err(Error::NotOwned { .. })), "key {i} in bucket {b}: {got:?}"),
        }
    }
}

/// `Db::bucket_bytes` counts each owned bucket's share of the files: about even over buckets that hold
/// about the same, nothing for buckets a shrink gave up (their entries stay in the files, hidden), and
/// the importer counts what it took in.
#[test]
fn bucket_sizes_follow_ownership_through_a_shrink_and_an_expand() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let a = Db::open(config(&tmp.path().join("a"), &snapvol), vec![0..=1023]).unwrap();
    for i in 0..20_000 {
        a.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    a.flush().unwrap();
    let sizes = a.bucket_bytes();
    let total: u64 = sizes.iter().map(|(_, b)| b).sum();
    let sst = a.metrics().sst_bytes();
    assert!(total <= sst && total * 10 >= sst * 9, "{total} of {sst}");
    let lower: u64 = sizes.iter().filter(|(b, _)| *b < 512).map(|(_, b)| b).sum();
    assert!(lower * 10 > total * 4 && lower * 10 < total * 6, "{lower} of {total}");

    let snap = a.shrink_bucket(vec![512..=1023]).unwrap();
    let kept = a.bucket_bytes();
    assert!(kept.iter().all(|(b, _)| *b < 512));
    // Compaction may reshape the files meanwhile: shares move a little.
    let near = |got: u64, want: u64| got * 100 >= want * 85 && got * 100 <= want * 115;
    let kept_total = kept.iter().map(|(_, b)| b).sum::<u64>();
    assert!(near(kept_total, lower), "{kept_total} kept of {lower}");
    let b = Db::open(config(&tmp.path().join("b"), &snapvol), Vec::new()).unwrap();
    b.expand_bucket(&a.id(), snap, vec![512..=1023]).unwrap();
    let taken: u64 = b.bucket_bytes().iter().map(|(_, b)| b).sum();
    assert!(near(taken, total - lower), "{taken} taken of {}", total - lower);
}

/// A compaction hold keeps compactions from starting (flushes go on, level 0 grows past its trigger)
/// until it drops; a shrink under the hold has no compaction to wait for, and holds nest with it.
#[test]
fn compactions_wait_while_held_and_resume_when_the_hold_drops() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let mut c = config(Path::new("/held"), "memory://held-compactions");
    c.fs = Arc::clone(&fs);
    c.l0_compaction_trigger = 2;
    let db = Db::open(c, vec![0..=1023]).unwrap();
    let hold = db.hold_compactions().unwrap().expect("level 0 has room");
    for round in 0..6u64 {
        let mut batch = cairn_engine::WriteBatch::new();
        for i in 0..200 {
            batch.put(bucket_of(i), &key(i), 0, &value(i, round));
        }
        db.write(batch, cairn_engine::WriteOptions::default()).unwrap();
        db.flush().unwrap();
    }
    let held = db.metrics().level_files.clone();
    assert!(held[0] >= 6 && held[1..].iter().all(|n| *n == 0), "no compaction while held: {held:?}");
    // A shrink meanwhile pauses compactions too, and its pause ends without ending the hold.
    db.shrink_bucket(vec![512..=1023]).unwrap();
    db.flush().unwrap();
    assert_eq!(db.metrics().level_files[1..].iter().sum::<usize>(), 0, "still held after the shrink");
    drop(hold);
    for _ in 0..1000 {
        if db.metrics().level_files[0] < 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(db.metrics().level_files[0] < 2, "compactions resumed: {:?}", db.metrics().level_files);
    for i in (0..200).filter(|i| bucket_of(*i) < 512) {
        let row = db.get(bucket_of(i), &key(i)).unwrap().unwrap();
        assert_eq!(row.column(0), Some(&value(i, 5)[..]));
    }
}

/// No hold is taken when level 0 is a few files short of stopping writes: a writer stalled there waits
/// for a compaction, which the hold would keep from running.
#[test]
fn no_compaction_hold_when_level_0_is_nearly_full() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let mut c = config(Path::new("/nearly-full"), "memory://nearly-full");
    c.fs = Arc::clone(&fs);
    c.l0_compaction_trigger = 2;
    c.l0_stop_writes_trigger = 6;
    let db = Db::open(c, vec![0..=1023]).unwrap();
    let first = db.hold_compactions().unwrap().expect("level 0 is empty");
    for round in 0..2u64 {
        let mut batch = cairn_engine::WriteBatch::new();
        batch.put(bucket_of(round), &key(round), 0, &value(round, round));
        db.write(batch, cairn_engine::WriteOptions::default()).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(db.metrics().level_files[0], 2);
    assert!(db.hold_compactions().unwrap().is_none(), "2 files + room for 4 reach the stop at 6");
    drop(first);
    drop(db);
}
