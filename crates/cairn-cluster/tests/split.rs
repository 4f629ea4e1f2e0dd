//! Splitting a shard through its Raft log: a `Command::Split` entry makes every replica give the
//! moved bucket ranges up at that index (the engine's shrink) and publish the split, from which each
//! node opens the new shard by reference from the pre-shrink snapshot, with no bytes copied; every
//! replica's new shard holds the same rows, exactly the moved ones as of the split. The new shard's
//! group starts on those replicas at a log index past a pristine log's, so it needs no bootstrap, and
//! a replica without the contents catches up by snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{
    Command, CommandResult, Effect, ReadLevel, Role, ShardStateMachine, prepare_split_log,
};
use cairn_engine::Error;
use cairn_engine::fs::MemFs;
use common::Net;
use common::group::{leader, state_machine, until, write};
use common::nodes::{Node, node, put, start, start_leading, template};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_moves_buckets_to_a_new_shard_on_every_replica_by_reference() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let nodes: BTreeMap<u64, Node> = (1..=3).map(|id| (id, node(&fs, &net, id))).collect();
    let mut replicas = BTreeMap::new();
    for (id, n) in &nodes {
        replicas.insert(*id, start(n, &net, *id, 1, state_machine(&fs, *id)).await);
    }
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("n{id}"))).collect();
    replicas[&1].bootstrap(members.clone()).await.unwrap();
    until(&replicas, "a leader", |r| r.values().all(|r| r.status().leader.is_some())).await;
    for i in 0..64u16 {
        write(&replicas[&1], put(i % 16, &format!("k{i}"), format!("v{i}").as_bytes())).await;
    }
    // A GC threshold decided before the split: the new shard starts with it.
    let gc =
        replicas[&1].write(Command::GcThreshold { wall_time: 12_345 }, Duration::from_secs(5)).await.unwrap();
    assert_eq!(gc.result, CommandResult::Applied);
    let mut effects: BTreeMap<u64, _> = replicas.iter().map(|(id, r)| (*id, r.effects())).collect();

    // Refused alike everywhere: the shard's first bucket (its applied position), an empty range.
    let l = leader(&replicas);
    let voters: Vec<(u64, String)> = members.clone().into_iter().collect();
    let first_leader = l.status().node;
    for ranges in [vec![(0, 3)], vec![(9, 8)], vec![]] {
        let refused = Command::Split { new_group: 7, ranges, voters: voters.clone(), first_leader };
        let refused = l.write(refused, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(refused.result, CommandResult::Rejected(_)), "{:?}", refused.result);
    }

    let split = Command::Split { new_group: 7, ranges: vec![(8, 15)], voters: voters.clone(), first_leader };
    let split = l.write(split, Duration::from_secs(5)).await;
    let split = split.unwrap();
    let CommandResult::Split { .. } = &split.result else { panic!("{:?}", split.result) };
    // A write after the split to a bucket that stayed; one to a moved bucket is refused.
    write(&replicas[&2], put(3, "after", b"x")).await;
    let moved = l.write(put(9, "late", b"x"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(moved.result, CommandResult::NotOwned { bucket: 9 }, "refused, to be routed again");

    let mut digests = Vec::new();
    let mut new_shard = BTreeMap::new();
    for (id, replica) in &replicas {
        let off = loop {
            let effect = tokio::time::timeout(Duration::from_secs(10), effects.get_mut(id).unwrap().recv());
            match effect.await.unwrap().unwrap() {
                Effect::Split(off) => break off,
                _ => continue,
            }
        };
        assert_eq!((off.index, off.new_group, off.ranges.clone()), (split.index, 7, vec![(8, 15)]));
        assert_eq!((off.first_leader, off.gc_threshold), (Some(first_leader), 12_345));
        let found = replica.state_machine().split_off(7, &[(8, 15)]).unwrap();
        assert_eq!(found.gc_threshold, 12_345, "found again as after a restart");
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
        assert_eq!((sm.gc_threshold(), new.filter_threshold()), (12_345, 12_345));
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
        assert_eq!(again.gc_threshold(), 12_345, "reopened with its threshold");
        // The new shard's group: its log starts where its state machine does, with the vote for the
        // node the split named; nobody bootstraps it.
        let voted = prepare_split_log(&nodes[id].log, 7, off.first_leader).unwrap();
        assert!(voted, "the log started now, with the vote");
        let leads = *id == first_leader;
        new_shard.insert(*id, start_leading(&nodes[id], &net, *id, 7, again, leads).await);
    }
    // A log that started before (a node restarted after making the group) is left as it is, and its
    // replica must win an election: it may have led, and lost entries its followers kept.
    assert!(!prepare_split_log(&nodes[&first_leader].log, 7, Some(first_leader)).unwrap());
    // Every replica's new shard is the same.
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    // The node the split named leads its group's first term (no election) and takes writes to the
    // moved buckets; every replica serves them.
    until(&new_shard, "a leader of the new shard", |r| r.values().any(|r| r.status().role == Role::Leader))
        .await;
    let led = new_shard.values().find(|r| r.status().role == Role::Leader).unwrap().status();
    assert_eq!((led.node, led.term), (first_leader, cairn_cluster::raft::FIRST_SPLIT_TERM), "{led:?}");
    let index = write(&new_shard[&3], put(9, "late", b"y")).await;
    assert!(index > cairn_cluster::raft::SPLIT_START_INDEX);
    assert_eq!(new_shard[&1].status().voters, (1..=3).collect());
    for r in new_shard.values() {
        // (A follower's read index comes from the leader, which may refuse it in the moments after it
        // was elected: retried, as the server does.)
        let mut point = r.read_point(ReadLevel::Strong, Duration::from_secs(5)).await;
        for _ in 0..50 {
            if !matches!(point, Err(cairn_cluster::raft::GroupError::NotLeader { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            point = r.read_point(ReadLevel::Strong, Duration::from_secs(5)).await;
        }
        point.unwrap();
        let row = r.db().get(9, b"late").unwrap().unwrap();
        assert_eq!(row.column(0), Some(&b"y"[..]));
        assert_eq!(r.db().get(9, b"k9").unwrap().unwrap().column(0), Some(&b"v9"[..]));
    }
    // A replica without the split's contents (a node that never had the shard) starts empty, behind
    // the group's first index, and catches up by snapshot.
    let fourth = node(&fs, &net, 4);
    let root = "/n4/shard-7";
    let empty = ShardStateMachine::open(root.into(), template(&fs, root), vec![8..=15], 8).unwrap();
    let learner = start(&fourth, &net, 4, 7, empty).await;
    let l7 = leader(&new_shard);
    tokio::time::timeout(Duration::from_secs(10), l7.add_learner(4, "n4".into())).await.unwrap().unwrap();
    let caught_up = BTreeMap::from([(4, learner.clone())]);
    until(&caught_up, "the learner caught up", |r| r[&4].status().applied >= Some(index)).await;
    let st = learner.status();
    assert!(st.snapshots_installed >= 1, "by snapshot: {st:?}");
    assert_eq!(learner.db().get(9, b"k9").unwrap().unwrap().column(0), Some(&b"v9"[..]));
    assert_eq!(learner.db().get(9, b"late").unwrap().unwrap().column(0), Some(&b"y"[..]));
    for replica in replicas.values().chain(new_shard.values()).chain([&learner]) {
        replica.shutdown().await.unwrap();
    }
}
