//! Replica incarnations and membership through [`Replica`]: a replica whose contents a consistency check
//! found diverged re-syncs from scratch as its next incarnation and is taken back into its group; calls
//! for an earlier incarnation are refused; membership changes go one at a time through the leader;
//! the log is dropped only up to positions a check verified; an interrupted incarnation switch is
//! completed on reopen; a new group whose first member never starts is made by the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{Effect, Role};
use cairn_cluster::raft::{GroupError, RaftCall, ReadLevel, replica_id};
use cairn_engine::fs::{FileSystem, MemFs};
use common::group::{group, leader, put, start, state_machine, until, write};
use common::{Net, replica_config};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_replica_resyncs_as_its_next_incarnation_and_rejoins() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let replicas = group(&fs, &net, 3).await;
    for i in 0..30 {
        write(&replicas[&1], put(&format!("k{i}"), b"v")).await;
    }
    let l = leader(&replicas);
    let victim = replicas.values().find(|r| r.status().role == Role::Follower).unwrap().clone();
    let node = victim.status().node;
    let old_id = victim.id();
    assert_eq!(old_id, replica_id(node, 0));
    // A write that did not come through the log.
    victim.db().put(3, b"stray", 0, b"x").unwrap();
    l.check_consistency(Duration::from_secs(5)).await.unwrap();

    // The victim fences itself, re-syncs as incarnation 1, asks the leader to take it in, catches up as
    // a learner and is promoted; nothing of the stray write survives.
    until(&replicas, "the re-synced replica back as a voter", |r| {
        let l = leader(r).status();
        victim.incarnation() == 1
            && victim.status().role == Role::Follower
            && l.voters.contains(&node)
            && l.learners.is_empty()
    })
    .await;
    let status = victim.status();
    // (The automatic check after a snapshot may have caught it too, before it re-synced.)
    assert!(status.resyncs == 1 && status.checks.divergences >= 1, "{status:?}");
    let last = write(&replicas[&node], put("after", b"resync")).await;
    let point = victim.read_point(ReadLevel::AtLeast(last), Duration::from_secs(5)).await.unwrap();
    assert!(point.applied >= last);
    assert!(victim.db().get(3, b"stray").unwrap().is_none());
    assert!(victim.db().get(3, b"k29").unwrap().is_some());
    let outcome = l.check_consistency(Duration::from_secs(5)).await.unwrap();
    until(&replicas, "every replica verified", |r| {
        r.values()
            .all(|r| r.status().checks.verified >= Some(outcome.index) && r.status().checks.fenced.is_none())
    })
    .await;
    let digests: BTreeSet<String> =
        replicas.values().map(|r| r.state_machine().digest().unwrap().1).collect();
    assert_eq!(digests.len(), 1);

    // A message for the old incarnation is refused by the node.
    let service = net.0.lock()[&format!("n{node}")].clone();
    let reply = service.handle(RaftCall { group: 1, kind: 2, payload: vec![], target: old_id }).await;
    assert!(reply.error.contains("incarnation 1, not 0"), "{}", reply.error);

    for r in replicas.values() {
        r.shutdown().await.unwrap();
    }
}

/// The effect of the check at entry `index` (a periodic check may come before it).
async fn effect_at(effects: &mut tokio::sync::broadcast::Receiver<Effect>, index: u64) -> Effect {
    loop {
        let effect = tokio::time::timeout(Duration::from_secs(5), effects.recv()).await.unwrap().unwrap();
        if matches!(effect, Effect::Fenced { index: i } | Effect::Verified { index: i } if i == index) {
            return effect;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_leader_is_outvoted_steps_down_and_resyncs() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let replicas = group(&fs, &net, 3).await;
    for i in 0..30 {
        write(&replicas[&1], put(&format!("k{i}"), b"v")).await;
    }
    let l = leader(&replicas);
    let node = l.status().node;
    l.db().put(3, b"stray", 0, b"x").unwrap();
    let follower = replicas.values().find(|r| r.status().node != node).unwrap();
    let (mut fenced, mut verified) = (l.effects(), follower.effects());
    // The check compares with the digest a majority recorded: the leader's is the odd one out.
    let outcome = l.check_consistency(Duration::from_secs(5)).await.unwrap();
    assert_eq!(outcome.digest, follower.state_machine().recorded_digest(outcome.index).unwrap());
    // Each replica's owner learns what the check found as an effect of applying it.
    assert_eq!(effect_at(&mut fenced, outcome.index).await, Effect::Fenced { index: outcome.index });
    assert_eq!(effect_at(&mut verified, outcome.index).await, Effect::Verified { index: outcome.index });
    until(&replicas, "the old leader re-synced and back as a voter", |r| {
        let me = r[&node].status();
        me.incarnation == 1
            && me.role == Role::Follower
            && me.leader.is_some_and(|x| x != node)
            && r.values().any(|o| o.status().role == Role::Leader && o.status().voters.contains(&node))
    })
    .await;
    assert!(replicas[&node].db().get(3, b"stray").unwrap().is_none());
    for r in replicas.values().filter(|r| r.status().node != node) {
        assert_eq!((r.incarnation(), r.status().checks.divergences), (0, 0), "{:?}", r.status());
    }
    for r in replicas.values() {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_go_through_the_leader_one_at_a_time() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let mut replicas = group(&fs, &net, 3).await;
    for i in 0..10 {
        write(&replicas[&1], put(&format!("k{i}"), b"v")).await;
    }
    let l = leader(&replicas);
    let follower = replicas.values().find(|r| r.status().role == Role::Follower).unwrap().clone();
    assert!(matches!(
        follower.change_voters(BTreeSet::from([1, 2])).await,
        Err(GroupError::NotLeader { leader: Some(_) })
    ));
    let err = l.change_voters(BTreeSet::from([1, 2, 9])).await.unwrap_err();
    assert!(err.to_string().contains("node 9 has no replica"), "{err}");

    // Add node 4 as a learner (returns once it caught up), then make it a voter in place of a follower.
    replicas.insert(4, start(&fs, &net, 4).await);
    l.add_learner(4, "n4".into()).await.unwrap();
    let out = follower.status().node;
    let voters: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != out).collect();
    l.change_voters(voters.clone()).await.unwrap();
    let status = l.status();
    assert_eq!(status.voters, voters);
    // The replaced follower stays a learner (only re-synced replicas are promoted on their own) until
    // it is removed; a voter cannot be removed without being demoted first.
    assert_eq!(status.learners, BTreeSet::from([out]));
    let err = l.remove_learners(BTreeSet::from([4])).await.unwrap_err();
    assert!(err.to_string().contains("demote it first"), "{err}");
    l.remove_learners(BTreeSet::from([out])).await.unwrap();
    let status = l.status();
    assert!(status.learners.is_empty() && status.voters == voters, "{status:?}");
    let last = write(&replicas[&4], put("after", b"membership")).await;
    replicas[&4].read_point(ReadLevel::AtLeast(last), Duration::from_secs(5)).await.unwrap();
    assert!(replicas[&4].db().get(3, b"after").unwrap().is_some());
    for r in replicas.values() {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_dropped_only_up_to_verified_positions() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let replicas = group(&fs, &net, 3).await;
    let mut purged_any = false;
    for i in 0..200 {
        write(&replicas[&1], put(&format!("k{i}"), b"v")).await;
        for r in replicas.values() {
            let s = r.status();
            // (A replica that installed a snapshot starts its checks afresh from it.)
            if let Some(purged) = s.purged.filter(|_| s.snapshots_installed == 0) {
                purged_any = true;
                let verified = s.checks.verified.unwrap_or(0);
                assert!(
                    purged + replica_config(20).keep_behind_snapshot <= verified,
                    "node {}: {s:?}",
                    s.node
                );
            }
        }
    }
    assert!(purged_any, "snapshots every 20 entries, checks after each: some log must have gone");
    for r in replicas.values() {
        r.shutdown().await.unwrap();
    }
}

#[test]
fn an_interrupted_incarnation_switch_is_completed_on_reopen() {
    let fs = Arc::new(MemFs::new());
    let sm = state_machine(&fs, 1);
    sm.db().put(3, b"old", 0, b"x").unwrap();
    sm.db().flush().unwrap();
    let peers = BTreeMap::from([(1, "n1".to_string()), (2, "n2".to_string())]);
    assert_eq!(sm.begin_incarnation(peers.clone()).unwrap(), 1);
    assert!(sm.db().get(3, b"old").unwrap().is_none(), "a new incarnation starts empty");
    drop(sm);
    let reopened = state_machine(&fs, 1);
    assert_eq!((reopened.incarnation(), reopened.incarnation_peers()), (1, peers.clone()));
    assert!(reopened.db().get(3, b"old").unwrap().is_none());
    drop(reopened);

    // A crash after the record was written but before the new generation was made: its directory
    // has no CURRENT. Reopening makes it (empty), never reviving the old contents.
    let root = std::path::Path::new("/n1/shard");
    let newest = fs
        .list(root)
        .unwrap()
        .into_iter()
        .filter_map(|n| n.strip_prefix("gen-").and_then(|g| g.parse::<u64>().ok()))
        .max()
        .unwrap();
    fs.remove(&root.join(format!("gen-{newest}")).join("CURRENT")).unwrap();
    let reopened = state_machine(&fs, 1);
    assert_eq!(reopened.incarnation(), 1);
    assert!(reopened.db().get(3, b"old").unwrap().is_none());
}

/// The member that makes a new group stops before anything reaches the others (its node died right
/// after the shards were placed): the others make the same group themselves after
/// [`cairn_cluster::raft::FORM_AFTER`], elect a leader among them and take writes; nothing happens
/// before that time (the first member would have made it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_whose_first_member_never_starts_is_made_by_the_others() {
    let fs = Arc::new(MemFs::new());
    let net = Net::default();
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("n{id}"))).collect();
    let mut replicas = BTreeMap::new();
    for id in 2..=3 {
        let replica = start(&fs, &net, id).await;
        replica.form(members.clone(), false).await.unwrap();
        replicas.insert(id, replica);
    }
    tokio::time::sleep(cairn_cluster::raft::FORM_AFTER / 2).await;
    assert!(
        replicas.values().all(cairn_cluster::raft::Replica::is_new),
        "the first member is given time to make it"
    );
    until(&replicas, "a leader among the two", |r| r.values().all(|r| r.status().leader.is_some())).await;
    write(&replicas[&2], put("a", b"1")).await;
    until(&replicas, "both hold the write", |r| {
        let applied: Vec<_> = r.values().map(|r| r.status().applied).collect();
        applied.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    // The first member starts late: made already, it joins the group it finds.
    let late = start(&fs, &net, 1).await;
    late.form(members, true).await.unwrap();
    replicas.insert(1, late);
    until(&replicas, "the late member holds the write too", |r| {
        let applied: Vec<_> = r.values().map(|r| r.status().applied).collect();
        applied.windows(2).all(|w| w[0] == w[1])
    })
    .await;
}
