//! Shard snapshots exported to another volume (what a cluster backup does, each shard from its own
//! node): incremental exports, a coordinator assembling them there, verification that finds damage,
//! deletion, and cleanup of what unfinished runs left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::{CoordinatorConfig, Db, DbCoordinator, Error, Volume, VolumeRole};
use common::snapdata::{TOTAL, bucket_of, key, shard_config, value};

/// Rewrites keys `from..to` that belong to `db`.
fn fill(db: &Db, from: u64, to: u64, round: u64) {
    let owned = db.owned_buckets();
    for i in (from..to).filter(|i| owned.iter().any(|r| r.contains(&bucket_of(*i)))) {
        db.put(bucket_of(i), &key(i), 0, &value(i, round)).unwrap();
    }
}

fn destination(url: &str, keep: Option<usize>) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(vec![Volume::new(url, VolumeRole::Meta)]);
    c.snapshot_retention = keep;
    c
}

#[test]
fn exports_are_incremental_verified_deleted_and_unfinished_ones_are_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Volume::file_url(&tmp.path().join("local-snapshots"));
    let left = Db::open(shard_config(&tmp.path().join("left"), &local), vec![0..=499]).unwrap();
    let right = Db::open(shard_config(&tmp.path().join("right"), &local), vec![500..=999]).unwrap();
    let all = |i: u64| bucket_of(i) < 500;
    for i in 0..4000 {
        let db = if all(i) { &left } else { &right };
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    // Another file system: every byte of the first export moves, then only what changed.
    let url = "memory://export-test-backups";
    let export = |db: &Db| {
        let id = db.snapshot().unwrap();
        let (input, copied) = db.export_snapshot(id, url, &cairn_engine::bulk::UNPACED).unwrap();
        db.remove_snapshot(id).unwrap();
        (input, copied)
    };
    // Claimed first, as a backup does: the URL then holds nothing else.
    let coordinator = DbCoordinator::open(destination(url, Some(2))).unwrap();
    coordinator.claim("test backups").unwrap();
    coordinator.claim("test backups").unwrap();
    assert!(coordinator.claim("something else").is_err());
    let (l1, lc1) = export(&left);
    let (r1, rc1) = export(&right);
    assert!(lc1 >= l1.size_bytes && rc1 >= r1.size_bytes, "{lc1} {rc1}");
    let g1 = coordinator.take_global_snapshot(TOTAL, vec![l1, r1]).unwrap();
    coordinator.materialize_global_snapshot(&g1).unwrap();
    fill(&left, 0, 40, 1);
    let (l2, lc2) = export(&left);
    let (r2, rc2) = export(&right);
    assert!(
        lc2 < l2.size_bytes / 10 && rc2 < r2.size_bytes / 10,
        "{lc2} of {} and {rc2} of {}",
        l2.size_bytes,
        r2.size_bytes
    );
    let mut g2 = coordinator.take_global_snapshot(TOTAL, vec![l2, r2]).unwrap();
    g2.labels.insert("as_of".into(), "7.0".into());
    coordinator.materialize_global_snapshot(&g2).unwrap();
    drop(coordinator);

    // Readers need no lock; verification reads every row back against the digests.
    let config = destination(url, None);
    assert_eq!(DbCoordinator::list_global_snapshots_at(&config).unwrap(), vec![g1.id, g2.id]);
    let loaded = DbCoordinator::load_global_snapshot_at(&config, g2.id).unwrap();
    assert_eq!(loaded.labels.get("as_of").map(String::as_str), Some("7.0"));
    let report = DbCoordinator::verify_global_snapshot_at(&config, g2.id).unwrap();
    assert_eq!((report.shards, report.rows), (2, 4000));

    // An unfinished run's shard snapshot is collected; deleting a global snapshot takes the shard
    // snapshots only it used.
    let (_orphan, _) = export(&left);
    let coordinator = DbCoordinator::open(destination(url, Some(2))).unwrap();
    assert_eq!(coordinator.collect_unreferenced().unwrap(), 1);
    assert!(coordinator.heartbeat().is_ok());
    assert!(DbCoordinator::lock_idle_ms(&config).unwrap().is_some_and(|ms| ms < 60_000));
    assert_eq!(coordinator.delete_global_snapshot(g1.id).unwrap(), 2);
    assert!(matches!(coordinator.delete_global_snapshot(g1.id), Err(Error::GlobalSnapshotNotFound { .. })));
    drop(coordinator);
    assert_eq!(DbCoordinator::list_global_snapshots_at(&config).unwrap(), vec![g2.id]);
    DbCoordinator::verify_global_snapshot_at(&config, g2.id).unwrap();
    // Ids are never reused, even the newest one's after it was deleted.
    let coordinator = DbCoordinator::open(destination(url, None)).unwrap();
    coordinator.delete_global_snapshot(g2.id).unwrap();
    drop(coordinator);
    let coordinator = DbCoordinator::open(destination(url, None)).unwrap();
    let (l3, _) = export(&left);
    let (r3, _) = export(&right);
    assert_eq!(coordinator.take_global_snapshot(TOTAL, vec![l3, r3]).unwrap().id, g2.id + 1);
    drop(coordinator);

    // A volume holding other files is not claimed (a shard's own snapshot volume here).
    let theirs = DbCoordinator::open(destination(&local, None)).unwrap();
    assert!(theirs.claim("test backups").is_err());
    drop(theirs);

    // Damage is found: a table cut short on a file volume.
    let dir = tmp.path().join("file-backups");
    let file_url = Volume::file_url(&dir);
    let id = left.snapshot().unwrap();
    let (input, _) = left.export_snapshot(id, &file_url, &cairn_engine::bulk::UNPACED).unwrap();
    let (rin, _) = export_to(&right, &file_url);
    let coordinator = DbCoordinator::open(destination(&file_url, None)).unwrap();
    let g = coordinator.take_global_snapshot(TOTAL, vec![input, rin]).unwrap();
    coordinator.materialize_global_snapshot(&g).unwrap();
    drop(coordinator);
    let table = std::fs::read_dir(dir.join(left.id()).join(format!("{id:010}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap();
    let bytes = std::fs::read(&table).unwrap();
    std::fs::remove_file(&table).unwrap();
    std::fs::write(&table, &bytes[..bytes.len() / 2]).unwrap();
    let damaged = DbCoordinator::verify_global_snapshot_at(&destination(&file_url, None), g.id);
    assert!(matches!(damaged, Err(Error::Corruption { .. } | Error::MissingFile { .. })), "{damaged:?}");
}

fn export_to(db: &Db, url: &str) -> (cairn_engine::ShardSnapshotInput, u64) {
    let id = db.snapshot().unwrap();
    db.export_snapshot(id, url, &cairn_engine::bulk::UNPACED).unwrap()
}
