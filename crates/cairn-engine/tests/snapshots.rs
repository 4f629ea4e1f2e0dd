//! Shard snapshots, global snapshots and restore: the seed's walkthrough end to end on real files,
//! digests that ignore layout, read-only readers beside a live writer, `SingleDb`, bad input, and
//! crashes during snapshot and materialize on `MemFs` with injected faults.
//!
//! Randomised tests print their seed; set `CAIRN_SEED=<n>` to replay one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::fs::{FaultFs, FaultKind, FileSystem, MemFs};
use cairn_engine::{
    Config, CoordinatorConfig, Db, DbCoordinator, Error, ReadOnlyDb, Reader, SingleDb, Volume, VolumeRole,
    WriteBatch, WriteOptions,
};
use common::snapdata::{TOTAL, bucket_of, coordinator_config, key, shard_config, value};
use common::{Model, Rng};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn owner(i: u64) -> usize {
    usize::from(bucket_of(i) >= 500)
}

/// The seed's walkthrough: two shards on 0..=499 and 500..=999, writes, a global snapshot, more writes,
/// restore both shards from the global snapshot into fresh directories, verify every key; the restored
/// shards take new writes without changing the snapshot.
#[test]
fn seed_walkthrough_global_snapshot_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let db1 = Db::open(shard_config(&tmp.path().join("db1"), &snapvol), vec![0..=499]).unwrap();
    let db2 = Db::open(shard_config(&tmp.path().join("db2"), &snapvol), vec![500..=999]).unwrap();
    let dbs = [&db1, &db2];
    let n = 20_000u64;
    for i in 0..n {
        dbs[owner(i)].put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
        if i % 3 == 0 {
            dbs[owner(i)].put(bucket_of(i), &key(i), 1, b"second column").unwrap();
        }
    }
    // Writing a bucket the shard does not own is refused.
    assert!(matches!(db1.put(700, b"k", 0, b"v"), Err(Error::NotOwned { bucket: 700 })));

    let coord = DbCoordinator::open(coordinator_config(&snapvol, Some(5))).unwrap();
    let snap1 = db1.snapshot().unwrap();
    let snap2 = db2.snapshot().unwrap();
    let input1 = db1.shard_snapshot_input(snap1).unwrap();
    let input2 = db2.shard_snapshot_input(snap2).unwrap();
    assert_eq!(input1.rows + input2.rows, n);
    let manifest = coord.take_global_snapshot(TOTAL, vec![input1.clone(), input2.clone()]).unwrap();
    let stats = coord.materialize_global_snapshot(&manifest).unwrap();
    assert_eq!(stats.bytes_copied, 0, "same volume: nothing copied");

    // Writes after the snapshot are not in it.
    for i in 0..n / 2 {
        dbs[owner(i)].put(bucket_of(i), &key(i), 0, &value(i, 1)).unwrap();
    }
    db1.compact().unwrap();

    // Restore: coordinator first, then each shard.
    let coord_id = manifest.id;
    drop(coord);
    let coord = DbCoordinator::open(coordinator_config(&snapvol, Some(5))).unwrap();
    let loaded = coord.load_global_snapshot(coord_id).unwrap();
    assert_eq!(loaded.shard_snapshots.len(), 2);
    let restored: Vec<Db> = loaded
        .shard_snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dir = tmp.path().join(format!("restored{i}"));
            Db::open_from_snapshot(shard_config(&dir, &snapvol), s.snapshot_id, s.db_id.clone()).unwrap()
        })
        .collect();
    assert_ne!(restored[0].id(), db1.id(), "a restored shard gets its own identity");
    for i in 0..n {
        let row = restored[owner(i)].get(bucket_of(i), &key(i)).unwrap().expect("restored row");
        assert_eq!(row.column(0), Some(&value(i, 0)[..]), "key {i}");
        assert_eq!(row.column(1).is_some(), i % 3 == 0);
        assert!(matches!(restored[1 - owner(i)].get(bucket_of(i), &key(i)), Err(Error::NotOwned { .. })));
    }

    // New writes on the restored shards leave the snapshot as it was.
    for i in 0..2000 {
        restored[owner(i)].put(bucket_of(i), &key(i), 0, b"after restore").unwrap();
    }
    restored[0].compact().unwrap();
    restored[1].compact().unwrap();
    let digest_before = input1.digest.clone();
    let ro = ReadOnlyDb::open(&shard_config(&tmp.path().join("ro"), &snapvol), &input1.db_id, snap1).unwrap();
    assert_eq!(ro.content_digest().unwrap().to_hex(), digest_before);

    // Reopening a restored directory with the same snapshot reopens it (idempotent restart).
    let s0 = &loaded.shard_snapshots[0];
    let dir0 = tmp.path().join("restored0");
    let id0 = restored[0].id();
    drop(restored);
    let again =
        Db::open_from_snapshot(shard_config(&dir0, &snapvol), s0.snapshot_id, s0.db_id.clone()).unwrap();
    assert_eq!(again.id(), id0);
    let i = (0..n).find(|&i| owner(i) == 0 && i < 2000).unwrap();
    assert_eq!(again.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&b"after restore"[..]));
    // ... but a directory holding another shard is refused.
    let other = &loaded.shard_snapshots[1];
    drop(again);
    let err = Db::open_from_snapshot(shard_config(&dir0, &snapvol), other.snapshot_id, other.db_id.clone())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

/// Writes `rows` in the given order with the given batching and flush points; returns the shard's
/// snapshot digest.
fn digest_of(
    rows: &[(u16, Vec<u8>, u16, Vec<u8>)],
    dir: &Path,
    batch: usize,
    flush_every: usize,
    compact: bool,
) -> String {
    let snapvol = Volume::file_url(&dir.join("snap"));
    let db = Db::open(shard_config(&dir.join("db"), &snapvol), vec![0..=999]).unwrap();
    for (n, chunk) in rows.chunks(batch).enumerate() {
        let mut b = WriteBatch::new();
        for (bucket, k, c, v) in chunk {
            b.put(*bucket, k, *c, v);
        }
        db.write(b, WriteOptions::default()).unwrap();
        if flush_every > 0 && n % flush_every == flush_every - 1 {
            db.flush().unwrap();
        }
    }
    if compact {
        db.compact().unwrap();
    }
    let id = db.snapshot().unwrap();
    db.shard_snapshot_input(id).unwrap().digest
}

/// The digest depends on the rows only: the same final data written in different orders, batched and
/// flushed differently, compacted or not, has one digest; one changed value changes it.
#[test]
fn digest_ignores_write_order_and_tree_shape() {
    let seed = common::seeds(1)[0];
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    // Final state: key i has columns 0 and (sometimes) 1; earlier versions are overwritten.
    let mut rows = Vec::new();
    for i in 0..6000u64 {
        rows.push((bucket_of(i), key(i), 0, value(i, 9)));
        if i % 4 == 0 {
            rows.push((bucket_of(i), key(i), 1, b"c1".to_vec()));
        }
    }
    let mut shuffled = rows.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    // A version with stale values written first, then the final ones.
    let mut overwritten: Vec<_> =
        rows.iter().map(|(b, k, c, _)| (*b, k.clone(), *c, b"stale".to_vec())).collect();
    overwritten.extend(shuffled.iter().cloned());

    let tmp = tempfile::tempdir().unwrap();
    let a = digest_of(&rows, &tmp.path().join("a"), 1, 0, false);
    let b = digest_of(&shuffled, &tmp.path().join("b"), 100, 3, false);
    let c = digest_of(&overwritten, &tmp.path().join("c"), 7, 50, true);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let mut changed = rows.clone();
    changed[1234].3 = b"different".to_vec();
    assert_ne!(a, digest_of(&changed, &tmp.path().join("d"), 10, 0, false));
}

/// A `ReadOnlyDb` serves a snapshot while the writer goes on (and compacts away the files it had); a
/// `Reader` follows the newest global snapshot with `refresh`.
#[test]
fn readers_follow_snapshots_while_the_writer_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let config = shard_config(&tmp.path().join("db"), &snapvol);
    let db = Db::open(config.clone(), vec![0..=999]).unwrap();
    let coord = DbCoordinator::open(coordinator_config(&snapvol, None)).unwrap();
    let global = |db: &Db| {
        let id = db.snapshot().unwrap();
        let m = coord.take_global_snapshot(TOTAL, vec![db.shard_snapshot_input(id).unwrap()]).unwrap();
        coord.materialize_global_snapshot(&m).unwrap();
        (id, m.id)
    };
    for i in 0..3000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    let (snap, _) = global(&db);
    let ro = ReadOnlyDb::open(&config, &db.id(), snap).unwrap();
    let mut reader = Reader::open(config.clone(), coordinator_config(&snapvol, None)).unwrap();
    for i in 0..3000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 1)).unwrap();
    }
    db.delete(bucket_of(5), &key(5)).unwrap();
    db.compact().unwrap();
    for i in (0..3000).step_by(7) {
        assert_eq!(ro.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&value(i, 0)[..]));
        assert_eq!(reader.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&value(i, 0)[..]));
    }
    assert_eq!(ro.scan_buckets(0..=999).unwrap().count(), 3000);
    assert!(!reader.refresh().unwrap(), "no newer global snapshot yet");
    let (_, gid) = global(&db);
    assert!(reader.refresh().unwrap());
    assert_eq!(reader.global_snapshot().id, gid);
    assert_eq!(reader.get(bucket_of(9), &key(9)).unwrap().unwrap().column(0), Some(&value(9, 1)[..]));
    assert!(reader.get(bucket_of(5), &key(5)).unwrap().is_none());
}

/// `SingleDb`: snapshot, keep writing, resume into a fresh directory from the snapshot.
#[test]
fn single_db_snapshot_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let db = SingleDb::open(shard_config(&tmp.path().join("a"), &snapvol)).unwrap();
    for i in 0..2000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    let m = db.snapshot().unwrap();
    assert_eq!(m.shard_snapshots.len(), 1);
    db.put(bucket_of(1), &key(1), 0, b"later").unwrap();
    db.close().unwrap();
    let resumed = SingleDb::resume(shard_config(&tmp.path().join("b"), &snapvol), m.id).unwrap();
    for i in 0..2000 {
        assert_eq!(resumed.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&value(i, 0)[..]));
    }
    assert_eq!(resumed.coordinator().list_global_snapshots().unwrap(), vec![m.id]);
    drop(resumed);
    let err = SingleDb::resume(shard_config(&tmp.path().join("c"), &snapvol), m.id + 10).unwrap_err();
    assert!(matches!(err, Error::GlobalSnapshotNotFound { .. }), "{err}");
}

/// Each kind of bad input gets its own typed error naming what is wrong.
#[test]
fn bad_input_gets_typed_errors() {
    let fs = MemFs::new();
    let snapvol = "memory://bad-input-test";
    let mut config = Config::new("/db").with_fs(Arc::new(fs.clone()));
    config.total_buckets = TOTAL;
    config.snapshot_volume = Some(snapvol.into());
    let db = Db::open(config.clone(), vec![0..=999]).unwrap();
    db.put(3, b"k", 0, b"v").unwrap();
    let id = db.snapshot().unwrap();

    let mut restore_cfg = config.clone();
    restore_cfg.dir = "/restored".into();
    // Unknown snapshot id, unknown shard.
    let err = Db::open_from_snapshot(restore_cfg.clone(), id + 1, db.id()).unwrap_err();
    assert!(matches!(&err, Error::SnapshotNotFound { snapshot_id, .. } if *snapshot_id == id + 1), "{err}");
    let err = Db::open_from_snapshot(restore_cfg.clone(), id, "0123abcd".into()).unwrap_err();
    assert!(err.to_string().contains("0123abcd"), "{err}");
    let err = Db::open_from_snapshot(restore_cfg.clone(), id, "../escape".into()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // Mismatched total_buckets.
    let mut wrong = restore_cfg.clone();
    wrong.total_buckets = 2048;
    let err = Db::open_from_snapshot(wrong, id, db.id()).unwrap_err();
    assert!(err.to_string().contains("total_buckets 1000"), "{err}");
    // Coverage checked by the coordinator.
    let coord = DbCoordinator::open(CoordinatorConfig {
        volumes: vec![Volume::new(snapvol, VolumeRole::Meta)],
        ..CoordinatorConfig::default()
    })
    .unwrap();
    let input = db.shard_snapshot_input(id).unwrap();
    let err = coord.take_global_snapshot(2000, vec![input.clone()]).unwrap_err();
    assert!(err.to_string().contains("total_buckets"), "{err}");
    let err = coord.take_global_snapshot(TOTAL, vec![input.clone(), input.clone()]).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert!(matches!(coord.load_global_snapshot(77), Err(Error::GlobalSnapshotNotFound { id: 77, .. })));

    // A missing referenced file, then a corrupt snapshot manifest.
    let memvol = volume_of(&config);
    let snap_dir = memvol.root.join(db.id()).join(format!("{id:010}"));
    let names = memvol.fs.list(&snap_dir).unwrap();
    let sst = names.iter().find(|n| n.ends_with(".sst")).unwrap();
    let sst_bytes = memvol.fs.read_all(&snap_dir.join(sst)).unwrap();
    memvol.fs.remove(&snap_dir.join(sst)).unwrap();
    let err = Db::open_from_snapshot(restore_cfg.clone(), id, db.id()).unwrap_err();
    assert!(matches!(&err, Error::MissingFile { path } if path.ends_with(sst)), "{err}");
    let mut f = memvol.fs.create(&snap_dir.join(sst)).unwrap();
    f.append(&sst_bytes).unwrap();
    drop(f);
    let manifest = names.iter().find(|n| n.starts_with("MANIFEST-")).unwrap();
    let mut bytes = memvol.fs.read_all(&snap_dir.join(manifest)).unwrap();
    bytes[10] ^= 0x10;
    let mut f = memvol.fs.create(&snap_dir.join(manifest)).unwrap();
    f.append(&bytes).unwrap();
    drop(f);
    let err = Db::open_from_snapshot(restore_cfg, id, db.id()).unwrap_err();
    assert!(matches!(&err, Error::Corruption { file, .. } if file.ends_with(manifest)), "{err}");
    // Bad volume URLs are config errors.
    let mut bad = config.clone();
    bad.snapshot_volume = Some("ftp://nowhere".into());
    assert!(matches!(bad.validate(), Err(Error::InvalidConfig(_))));
}

fn volume_of(config: &Config) -> cairn_engine::ResolvedVolume {
    cairn_engine::resolve_volume(&config.snapshot_volume_url().unwrap(), &config.fs).unwrap()
}

/// What a global snapshot must hold, by id.
type Expected = BTreeMap<u64, Model>;

fn model_of(db: &Db) -> Model {
    common::scan_all(db, 8).unwrap()
}

/// A crash (power loss) at any point of `snapshot` + `materialize`: afterwards the coordinator's newest
/// global snapshot is the previous one or the new one, complete, and restores to exactly its data.
#[test]
fn crash_during_snapshot_or_materialize_keeps_the_previous_global_snapshot() {
    let kinds = [
        FaultKind::Create,
        FaultKind::Write,
        FaultKind::Sync,
        FaultKind::SyncDir,
        FaultKind::Rename,
        FaultKind::Remove,
    ];
    let mut cases = 0;
    for kind in kinds {
        for n in 0.. {
            let fired = crash_case(kind, n);
            cases += 1;
            if !fired {
                break;
            }
        }
    }
    println!("{cases} crash points");
    assert!(cases > 20);
}

/// Runs one crash case: the `n`-th call of `kind` during the second snapshot + materialize fails, then
/// the machine loses power. Returns false if the fault never fired (the sequence has fewer calls).
fn crash_case(kind: FaultKind, n: u64) -> bool {
    let mem = MemFs::new();
    let fault = FaultFs::new(Arc::new(mem.clone()));
    let ctl = fault.controller();
    let fs: Arc<dyn FileSystem> = Arc::new(fault);
    let snapvol = "file:///snap";
    let mut config = common::small_config(Arc::clone(&fs), 8);
    config.snapshot_volume = Some(snapvol.into());
    let coord_cfg = CoordinatorConfig {
        volumes: vec![Volume::new(snapvol, VolumeRole::Meta)],
        snapshot_retention: Some(1),
        fs: Arc::clone(&fs),
    };
    let mut expected = Expected::new();
    let db = Db::open(config.clone(), vec![0..=7]).unwrap();
    let coord = DbCoordinator::open(coord_cfg.clone()).unwrap();
    let mut rng = Rng::new(n * 31 + kind as u64);
    let mut write_round = |db: &Db, round: u64| {
        for i in 0..300u64 {
            let k = rng.range(0, 400);
            db.put((k % 8) as u16, &key(k), 0, &value(i, round)).unwrap();
        }
    };
    write_round(&db, 0);
    let id = db.snapshot().unwrap();
    let m = coord.take_global_snapshot(8, vec![db.shard_snapshot_input(id).unwrap()]).unwrap();
    coord.materialize_global_snapshot(&m).unwrap();
    expected.insert(m.id, model_of(&db));
    write_round(&db, 1);
    let model = model_of(&db);
    ctl.fail_after(kind, n);
    let before = ctl.count(kind);
    let result = (|| {
        let id = db.snapshot()?;
        let m = coord.take_global_snapshot(8, vec![db.shard_snapshot_input(id)?])?;
        coord.materialize_global_snapshot(&m)?;
        Ok::<_, Error>(m.id)
    })();
    let fired = ctl.count(kind) > before + n;
    if let Ok(id) = result {
        expected.insert(id, model);
    }
    drop(coord);
    drop(db);
    mem.crash();
    ctl.clear();

    let coord = DbCoordinator::open(coord_cfg).unwrap();
    let current = coord.current_global_snapshot().unwrap().expect("a global snapshot survives");
    let want = expected
        .get(&current.id)
        .unwrap_or_else(|| panic!("{kind:?} {n}: unexpected global snapshot {}", current.id));
    if result.is_ok() {
        assert_eq!(
            current.id,
            *expected.keys().last().unwrap(),
            "{kind:?} {n}: acknowledged materialize lost"
        );
    }
    let s = &current.shard_snapshots[0];
    let mut restore_cfg = config.clone();
    restore_cfg.dir = "/restored".into();
    let restored = Db::open_from_snapshot(restore_cfg, s.snapshot_id, s.db_id.clone())
        .unwrap_or_else(|e| panic!("{kind:?} {n}: restore failed: {e}"));
    assert!(model_of(&restored) == *want, "{kind:?} {n}: restored data differs");
    // The live shard also recovers.
    drop(restored);
    // The live shard reopens and reads cleanly too (its unsynced writes may be gone: a power loss).
    let db = Db::open(config, vec![0..=7]).unwrap();
    model_of(&db);
    fired
}

/// Retention plus garbage collection never delete what a retained global snapshot or a live shard still
/// needs: random writes, compactions, shard snapshots that never join a global one, and global
/// snapshots with a random retention; after every step each retained global snapshot opens with every
/// file present and its recorded digest, and each live shard reads back its model.
#[test]
fn retention_and_gc_keep_everything_still_referenced() {
    let mut removed = 0;
    for seed in common::seeds(4) {
        println!("seed {seed}");
        removed += gc_case(seed);
    }
    assert!(removed > 0, "garbage collection never ran");
}

/// Returns the shard snapshots garbage collection deleted.
fn gc_case(seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let snapvol = "file:///snap";
    let shard = |dir: &str| {
        let mut c = common::small_config(Arc::clone(&fs), 8);
        c.dir = dir.into();
        c.snapshot_volume = Some(snapvol.into());
        c
    };
    let dbs = [Db::open(shard("/a"), vec![0..=3]).unwrap(), Db::open(shard("/b"), vec![4..=7]).unwrap()];
    let mut models = [Model::new(), Model::new()];
    let retention = rng.range(1, 4) as usize;
    let coord = DbCoordinator::open(CoordinatorConfig {
        volumes: vec![Volume::new(snapvol, VolumeRole::Meta)],
        snapshot_retention: Some(retention),
        fs: Arc::clone(&fs),
    })
    .unwrap();
    let mut pending = Vec::new();
    let mut removed = 0;
    for step in 0..40 {
        match rng.range(0, 10) {
            0..=4 => {
                for _ in 0..rng.range(1, 200) {
                    let k = rng.range(0, 300);
                    let bucket = (k % 8) as u16;
                    let s = usize::from(bucket >= 4);
                    let v = value(k, step);
                    dbs[s].put(bucket, &key(k), 0, &v).unwrap();
                    models[s].insert((bucket, key(k)), BTreeMap::from([(0, v)]));
                }
            }
            5 => dbs[rng.range(0, 2) as usize].compact().unwrap(),
            6 => {
                let s = rng.range(0, 2) as usize;
                pending.push((s, dbs[s].snapshot().unwrap()));
            }
            _ => {
                let inputs: Vec<_> =
                    dbs.iter().map(|d| d.shard_snapshot_input(d.snapshot().unwrap()).unwrap()).collect();
                let m = coord.take_global_snapshot(8, inputs).unwrap();
                let stats = coord.materialize_global_snapshot(&m).unwrap();
                assert_eq!(stats.gc_error, None);
                removed += stats.shard_snapshots_removed;
            }
        }
        let ids = coord.list_global_snapshots().unwrap();
        assert!(ids.len() <= retention, "seed {seed}: {} globals kept, retention {retention}", ids.len());
        let oldest = ids.first().map(|&id| coord.load_global_snapshot(id).unwrap().created_at_ms);
        for id in ids {
            for s in coord.load_global_snapshot(id).unwrap().shard_snapshots {
                let ro = ReadOnlyDb::open(&shard("/ro"), &s.db_id, s.snapshot_id).unwrap_or_else(|e| {
                    panic!("seed {seed} step {step}: global {id} lost {}: {e}", s.snapshot_id)
                });
                assert_eq!(ro.content_digest().unwrap().to_hex(), s.digest, "seed {seed} step {step}");
            }
        }
        // Shard snapshots taken since the oldest retained global one are kept (they may join the next);
        // older ones may be gone.
        for (s, id) in &pending {
            match dbs[*s].shard_snapshot_input(*id) {
                Ok(_) => {}
                Err(Error::SnapshotNotFound { .. }) => {
                    assert!(oldest.is_some(), "seed {seed}: snapshot {id} collected with no global snapshot")
                }
                Err(e) => panic!("seed {seed}: snapshot {id}: {e}"),
            }
        }
        for (s, (db, model)) in dbs.iter().zip(&models).enumerate() {
            let range = if s == 0 { 0..=3 } else { 4..=7 };
            let mut got = Model::new();
            for item in db.scan_buckets(range).unwrap() {
                let (b, k, row) = item.unwrap();
                got.insert((b, k), row.columns().map(|(c, v)| (c, v.to_vec())).collect());
            }
            assert!(got == *model, "seed {seed} step {step}: live shard {s} differs from its model");
        }
    }
    removed
}

const READER_ENV: &str = "CAIRN_SNAPSHOT_READER_CHILD";

/// The child of `read_only_db_in_another_process`: a no-op unless `CAIRN_SNAPSHOT_READER_CHILD` holds
/// `volume_url db_id snapshot_id`. Opens the snapshot read-only, prints its digest and row count.
#[test]
fn reader_child() {
    let Ok(arg) = std::env::var(READER_ENV) else { return };
    let parts: Vec<&str> = arg.split(' ').collect();
    let [url, db_id, snap] = parts[..] else { panic!("bad {READER_ENV}: {arg}") };
    let mut config = Config::new("/unused");
    config.total_buckets = TOTAL;
    let ro = ReadOnlyDb::open_at(&config, url, db_id, snap.parse().unwrap()).unwrap();
    let d = ro.content_digest().unwrap();
    println!("digest {} rows {}", d.to_hex(), d.rows);
}

/// A `ReadOnlyDb` in another process reads a snapshot while the writer keeps writing and compacting.
#[test]
fn read_only_db_in_another_process() {
    if std::env::var(READER_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let db = Db::open(shard_config(&tmp.path().join("db"), &snapvol), vec![0..=999]).unwrap();
    for i in 0..20_000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    let id = db.snapshot().unwrap();
    let input = db.shard_snapshot_input(id).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reader_child", "--nocapture", "--test-threads=1"])
        .env(READER_ENV, format!("{snapvol} {} {id}", db.id()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Keep writing, deleting and compacting while the child reads.
    for round in 1..4 {
        for i in 0..20_000 {
            if i % 5 == 0 {
                db.delete(bucket_of(i), &key(i)).unwrap();
            } else {
                db.put(bucket_of(i), &key(i), 0, &value(i, round)).unwrap();
            }
        }
        db.compact().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The test harness prints its own text before ours on the same line.
    let at = text.find("digest ").unwrap_or_else(|| panic!("child said {text}"));
    let line = text[at..].lines().next().unwrap_or_default();
    assert_eq!(line, format!("digest {} rows {}", input.digest, input.rows));
    assert_eq!(input.rows, 20_000);
}

/// Materializing onto a separate volume copies a shard snapshot's files once; the next snapshot after a
/// small change copies only its new files, and restore from that volume copies them back.
#[test]
fn incremental_materialize_to_a_separate_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::new(tmp.path().join("db"));
    config.total_buckets = TOTAL;
    let db = Db::open(config.clone(), vec![0..=999]).unwrap();
    let remote = "memory://incremental-materialize";
    let coord =
        DbCoordinator::open(CoordinatorConfig::new(vec![Volume::new(remote, VolumeRole::Meta)])).unwrap();
    let global = |db: &Db| {
        let id = db.snapshot().unwrap();
        let input = db.shard_snapshot_input(id).unwrap();
        let m = coord.take_global_snapshot(TOTAL, vec![input.clone()]).unwrap();
        (input, m.id, coord.materialize_global_snapshot(&m).unwrap().bytes_copied)
    };
    for i in 0..50_000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    db.compact().unwrap();
    let (first, _, copied) = global(&db);
    // Whole, plus the small DIGEST file.
    assert!(
        (first.size_bytes..first.size_bytes + 100).contains(&copied),
        "first copy {copied} of {}",
        first.size_bytes
    );
    for i in (0..50_000).step_by(100) {
        db.put(bucket_of(i), &key(i), 0, &value(i, 1)).unwrap();
    }
    let (second, gid, copied) = global(&db);
    println!("incremental: {copied} of {} bytes", second.size_bytes);
    assert!(copied > 0 && copied * 20 < second.size_bytes, "copied {copied} of {}", second.size_bytes);

    // Restore from the separate volume into a fresh directory.
    let m = coord.load_global_snapshot(gid).unwrap();
    assert_eq!(m.shard_snapshots[0].volume, remote);
    let mut restore = config.clone();
    restore.dir = tmp.path().join("restored");
    restore.snapshot_volume = Some(remote.into());
    let restored = Db::open_from_snapshot(restore, second.snapshot_id, second.db_id.clone()).unwrap();
    for i in (0..50_000).step_by(77) {
        let want = value(i, u64::from(i % 100 == 0));
        assert_eq!(restored.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&want[..]));
    }
}

/// A background hash that pauses every so many bytes hashes the same rows to the same digest.
#[test]
fn a_pausing_digest_matches_and_pauses_by_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let db = Db::open(shard_config(&tmp.path().join("db"), &snapvol), vec![0..=999]).unwrap();
    let mut bytes = 0;
    for i in 0..3_000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
        bytes += key(i).len() + value(i, 0).len();
    }
    db.flush().unwrap();
    let view = db.view();
    let whole = view.content_digest().unwrap();
    let mut pauses = 0usize;
    let paused = view.content_digest_pausing(4096, || pauses += 1).unwrap();
    assert_eq!((paused.to_hex(), paused.rows), (whole.to_hex(), whole.rows));
    // Each row's encoding adds a few bytes to its key and value: at least one pause per 4 KiB of them.
    assert!(pauses >= bytes / 4096 && pauses <= 2 * bytes / 4096 + 1, "{pauses} pauses for {bytes} bytes");
    let mut never = 0;
    view.content_digest_pausing(0, || never += 1).unwrap();
    assert_eq!(never, 0);
}

/// Rows under `LOCAL_KEY_PREFIX` (a replica's own bookkeeping) do not enter content digests, of a view
/// or of a snapshot: two shards with the same shared rows but different local ones hash alike, and a
/// local row alone changes nothing.
#[test]
fn local_rows_stay_out_of_content_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let snapvol = Volume::file_url(&tmp.path().join("snapshots"));
    let a = Db::open(shard_config(&tmp.path().join("a"), &snapvol), vec![0..=499]).unwrap();
    let b = Db::open(shard_config(&tmp.path().join("b"), &snapvol), vec![0..=499]).unwrap();
    for i in (0..200).filter(|i| owner(*i) == 0) {
        a.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
        b.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    let before = a.view().content_digest().unwrap();
    let local = |name: &str| [cairn_engine::LOCAL_KEY_PREFIX, name.as_bytes()].concat();
    a.put(0, &local("split"), 0, b"snapshot 3").unwrap();
    b.put(0, &local("split"), 0, b"snapshot 7").unwrap();
    let (da, db) = (a.view().content_digest().unwrap(), b.view().content_digest().unwrap());
    assert_eq!(da, before);
    assert_eq!(da, db);
    let (sa, sb) = (a.snapshot().unwrap(), b.snapshot().unwrap());
    assert_eq!(a.shard_snapshot_input(sa).unwrap().digest, b.shard_snapshot_input(sb).unwrap().digest);
    // A shared row still counts.
    b.put(0, b"shared", 0, b"x").unwrap();
    assert_ne!(b.view().content_digest().unwrap(), da);
}
