//! Splitting a shard through its Raft log: a `Command::Split` entry makes every replica give the
//! moved bucket ranges up at that index (the engine's shrink) and publish the split, from which each
//! node opens the new shard by reference from the pre-shrink snapshot, with no bytes copied; every
//! replica's new shard holds the same rows, exactly the moved ones as of the split.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{Command, CommandResult, Effect, ShardStateMachine};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, Error, WriteBatch};
use common::Net;
use common::group::{VOLUME, group, leader, write};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A write of `value` under `key` in `bucket`.
fn put(bucket: u16, key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(bucket, key.as_bytes(), 0, value);
    Command::write(&b)
}

fn template(fs: &Arc<MemFs>, root: &str) -> Config {
    let mut template = Config::new(root);
    template.fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    template.wal = false;
    template.total_buckets = 16;
    template.snapshot_volume = Some(VOLUME.into());
    template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_moves_buckets_to_a_new_shard_on_every_replica_by_reference() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let replicas = group(&fs, &net, 3).await;
    for i in 0..64u16 {
        write(&replicas[&1], put(i % 16, &format!("k{i}"), format!("v{i}").as_bytes())).await;
    }
    let mut effects: BTreeMap<u64, _> = replicas.iter().map(|(id, r)| (*id, r.effects())).collect();

    // Refused alike everywhere: the shard's first bucket (its applied position), an empty range.
    let l = leader(&replicas);
    for ranges in [vec![(0, 3)], vec![(9, 8)], vec![]] {
        let refused = l.write(Command::Split { new_group: 7, ranges }, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(refused.result, CommandResult::Rejected(_)), "{:?}", refused.result);
    }

    let split = l.write(Command::Split { new_group: 7, ranges: vec![(8, 15)] }, Duration::from_secs(5)).await;
    let split = split.unwrap();
    let CommandResult::Split { .. } = &split.result else { panic!("{:?}", split.result) };
    // A write after the split to a bucket that stayed; one to a moved bucket is refused.
    write(&replicas[&2], put(3, "after", b"x")).await;
    let moved = l.write(put(9, "late", b"x"), Duration::from_secs(5)).await.unwrap();
    assert!(matches!(moved.result, CommandResult::Rejected(_)), "{:?}", moved.result);

    let mut digests = Vec::new();
    for (id, replica) in &replicas {
        let off = loop {
            let effect = tokio::time::timeout(Duration::from_secs(10), effects.get_mut(id).unwrap().recv());
            match effect.await.unwrap().unwrap() {
                Effect::Split(off) => break off,
                _ => continue,
            }
        };
        assert_eq!((off.index, off.new_group, off.ranges.clone()), (split.index, 7, vec![(8, 15)]));
        // The shard kept only its own buckets.
        let db = replica.db();
        assert_eq!(db.owned_buckets(), vec![0..=7]);
        assert!(matches!(db.get(9, b"k9"), Err(Error::NotOwned { bucket: 9 })));
        assert_eq!(db.get(3, b"after").unwrap().unwrap().column(0), Some(&b"x"[..]));

        // The node opens the new shard from the split: linked, not copied; again after a restart.
        let root = format!("/n{id}/shard-7");
        let (sm, stats) =
            ShardStateMachine::open_split(root.clone().into(), template(&fs, &root), &off).unwrap();
        assert!(stats.files_imported > 0 && stats.bytes_copied == 0, "{stats:?}");
        let new = sm.db();
        assert_eq!(new.owned_buckets(), vec![8..=15]);
        for i in (0..64u16).filter(|i| i % 16 >= 8) {
            let row = new.get(i % 16, format!("k{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(row.column(0), Some(format!("v{i}").as_bytes()), "key k{i} on node {id}");
        }
        assert!(new.get(9, b"late").unwrap().is_none());
        assert!(matches!(new.get(3, b"k3"), Err(Error::NotOwned { bucket: 3 })));
        digests.push(new.view().content_digest().unwrap().to_hex());
        drop(new);
        drop(sm);
        let (again, stats) =
            ShardStateMachine::open_split(root.clone().into(), template(&fs, &root), &off).unwrap();
        assert_eq!(stats, Default::default(), "reopened, not imported again");
        assert_eq!(again.owned_buckets(), vec![8..=15]);
    }
    // Every replica's new shard is the same.
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    for replica in replicas.values() {
        replica.shutdown().await.unwrap();
    }
}
