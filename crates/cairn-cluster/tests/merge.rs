//! Merging two neighbouring shards whose replicas sit on the same nodes: a `Command::Freeze` entry
//! makes every replica of the right-hand shard give all its buckets up at that index (its pre-shrink
//! snapshot keeps them) and refuse writes from then on; a `Command::Merge` entry in the left-hand
//! shard's log makes every replica import them from its node's frozen replica, by reference. Every
//! replica ends with the same rows; a replica that restarts finds itself frozen or merged again; one
//! that joins later catches up by snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{
    APPLIED_ROW_KEY, Command, CommandResult, GC_ROW_KEY, ReadLevel, Replica, ShardStateMachine,
};
use cairn_engine::Error;
use cairn_engine::fs::MemFs;
use common::Net;
use common::group::{leader, until, write};
use common::nodes::{Node, node, put, start, template};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Node `id`'s state machine of group `group`, owning `ranges` when new.
fn shard(fs: &Arc<MemFs>, id: u64, group: u64, ranges: std::ops::RangeInclusive<u16>) -> ShardStateMachine {
    let root = format!("/n{id}/shard-{group}");
    let meta = *ranges.start();
    ShardStateMachine::open(root.clone().into(), template(fs, &root), vec![ranges], meta).unwrap()
}

/// [`shard`], once the engine's previous holder (a stopped replica's tasks) has let it go.
async fn reopen(
    fs: &Arc<MemFs>,
    id: u64,
    group: u64,
    ranges: std::ops::RangeInclusive<u16>,
) -> ShardStateMachine {
    let root = format!("/n{id}/shard-{group}");
    for _ in 0..200 {
        let meta = *ranges.start();
        match ShardStateMachine::open(root.clone().into(), template(fs, &root), vec![ranges.clone()], meta) {
            Err(Error::Locked(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            opened => return opened.unwrap(),
        }
    }
    panic!("{root} still locked after 10 s");
}

/// Starts group `group` over `ranges` on nodes 1..=3 and waits for its leader.
async fn group(
    fs: &Arc<MemFs>,
    net: &Net,
    nodes: &BTreeMap<u64, Node>,
    group: u64,
    ranges: std::ops::RangeInclusive<u16>,
) -> BTreeMap<u64, Replica> {
    let mut replicas = BTreeMap::new();
    for (id, n) in nodes {
        replicas.insert(*id, start(n, net, *id, group, shard(fs, *id, group, ranges.clone())).await);
    }
    replicas[&1].bootstrap((1..=3).map(|id| (id, format!("n{id}"))).collect()).await.unwrap();
    until(&replicas, "a leader", |r| r.values().all(|r| r.status().leader.is_some())).await;
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_neighbour_is_merged_in_on_every_replica_by_reference() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let nodes: BTreeMap<u64, Node> = (1..=3).map(|id| (id, node(&fs, &net, id))).collect();
    let left = group(&fs, &net, &nodes, 1, 0..=7).await;
    let mut right = group(&fs, &net, &nodes, 2, 8..=15).await;
    for i in 0..64u16 {
        let (replicas, bucket) = if i % 16 < 8 { (&left, i % 16) } else { (&right, i % 16) };
        write(&replicas[&1], put(bucket, &format!("k{i}"), format!("v{i}").as_bytes())).await;
    }

    // GC thresholds that differ: the merged shard keeps the higher, the right-hand one's.
    let gc = |wall_time| Command::GcThreshold { wall_time };
    assert_eq!(
        leader(&left).write(gc(500), Duration::from_secs(5)).await.unwrap().result,
        CommandResult::Applied
    );
    assert_eq!(
        leader(&right).write(gc(900), Duration::from_secs(5)).await.unwrap().result,
        CommandResult::Applied
    );

    // The freeze gives up everything the shard owns, or nothing.
    let r = leader(&right);
    let partial = r.write(Command::Freeze { ranges: vec![(8, 14)] }, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(partial.result, CommandResult::Rejected(_)), "{:?}", partial.result);
    let frozen = r.write(Command::Freeze { ranges: vec![(8, 15)] }, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(frozen.result, CommandResult::Frozen { .. }), "{:?}", frozen.result);
    // From then on it writes nothing, and its buckets are gone from every replica.
    let late = r.write(put(9, "late", b"x"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(late.result, CommandResult::NotOwned { bucket: 8 }, "refused, to be routed again");
    until(&right, "every replica froze", |_| nodes.values().all(|n| n.frozen.get(2).is_some())).await;
    for replica in right.values() {
        assert!(matches!(replica.db().get(9, b"k9"), Err(Error::NotOwned { bucket: 9 })));
    }

    // The merge: the left-hand shard takes the ranges in on every replica, by reference.
    let l = leader(&left);
    let merge = Command::Merge { right_group: 2, ranges: vec![(8, 15)] };
    let merged = l.write(merge.clone(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(merged.result, CommandResult::Merged);
    write(&left[&2], put(9, "late", b"y")).await;
    for (id, replica) in &left {
        replica.read_point(ReadLevel::Strong, Duration::from_secs(5)).await.unwrap();
        let db = replica.db();
        assert_eq!(db.owned_buckets(), vec![0..=15], "node {id}");
        for i in 0..64u16 {
            let row = db.get(i % 16, format!("k{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(row.column(0), Some(format!("v{i}").as_bytes()), "key k{i} on node {id}");
        }
        assert_eq!(db.get(9, b"late").unwrap().unwrap().column(0), Some(&b"y"[..]));
        assert!(db.get(8, APPLIED_ROW_KEY).unwrap().is_none(), "the frozen shard's position row is gone");
        assert!(db.get(8, GC_ROW_KEY).unwrap().is_none(), "so is its GC threshold row");
        assert_eq!((replica.state_machine().gc_threshold(), db.filter_threshold()), (900, 900), "node {id}");
        assert!(replica.status().checks.fenced.is_none());
    }
    // Every replica hashes the same contents at one index.
    let check = leader(&left).check_consistency(Duration::from_secs(10)).await.unwrap();
    until(&left, "every replica verified", |r| {
        r.values()
            .all(|r| r.status().checks.verified >= Some(check.index) && r.status().checks.fenced.is_none())
    })
    .await;
    // Again: nothing changes.
    assert_eq!(l.write(merge, Duration::from_secs(5)).await.unwrap().result, CommandResult::Merged);

    // Node 3 restarts its replica of the frozen shard: frozen still, at the same snapshot.
    let before = nodes[&3].frozen.get(2).unwrap();
    let third = right.remove(&3).unwrap();
    third.shutdown().await.unwrap();
    drop(third);
    nodes[&3].service.unregister(2);
    nodes[&3].frozen.remove(2);
    // Its tending task lets the engine go once it sees the replica stopped.
    let reopened = reopen(&fs, 3, 2, 8..=15).await;
    assert!(reopened.owned_buckets().is_empty());
    assert_eq!(reopened.frozen(), Some(before.clone()));
    right.insert(3, start(&nodes[&3], &net, 3, 2, reopened).await);
    assert_eq!(nodes[&3].frozen.get(2), Some(before));

    // A replica of the merged shard on a node that never had the frozen one catches up by snapshot.
    let fourth = node(&fs, &net, 4);
    let learner = start(&fourth, &net, 4, 1, shard(&fs, 4, 1, 0..=7)).await;
    let index = write(&left[&1], put(10, "last", b"z")).await;
    tokio::time::timeout(Duration::from_secs(10), leader(&left).add_learner(4, "n4".into()))
        .await
        .unwrap()
        .unwrap();
    let caught_up = BTreeMap::from([(4, learner.clone())]);
    until(&caught_up, "the learner caught up", |r| r[&4].status().applied >= Some(index)).await;
    assert!(learner.status().snapshots_installed >= 1);
    assert_eq!(learner.db().get(9, b"k9").unwrap().unwrap().column(0), Some(&b"v9"[..]));
    assert_eq!(learner.db().get(10, b"last").unwrap().unwrap().column(0), Some(&b"z"[..]));
    for replica in left.values().chain(right.values()).chain([&learner]) {
        replica.shutdown().await.unwrap();
    }
}
