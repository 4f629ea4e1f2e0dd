//! Quiescence: a group with nothing to do stops sending anything, wakes for a write (through any
//! replica) without an election, and still elects a new leader when its leader's node is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{DownNodes, Replica, ReplicaConfig, Role};
use cairn_engine::fs::MemFs;
use common::group::{put, start_with, until, write};
use common::{CALLS, Net, replica_config};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const QUIESCE_AFTER: Duration = Duration::from_millis(300);

async fn start(fs: &Arc<MemFs>, net: &Net, id: u64, down: &DownNodes) -> Replica {
    let config =
        ReplicaConfig { quiesce_after: QUIESCE_AFTER, down_nodes: down.clone(), ..replica_config(1000) };
    start_with(fs, net, id, config).await
}

fn all_quiet(replicas: &BTreeMap<u64, Replica>) -> bool {
    replicas.values().all(Replica::is_quiet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_goes_quiet_wakes_for_writes_and_elects_when_its_leader_is_gone() {
    let fs = Arc::new(MemFs::new());
    let net = Net::default();
    let down = DownNodes::default();
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        replicas.insert(id, start(&fs, &net, id, &down).await);
    }
    replicas[&1].bootstrap((1..=3).map(|id| (id, format!("n{id}"))).collect()).await.unwrap();
    until(&replicas, "a leader", |r| r.values().all(|r| r.status().leader.is_some())).await;
    write(&replicas[&2], put("a", b"1")).await;

    // Idle: every replica goes quiet, and then nothing is sent and no election happens.
    until(&replicas, "the group goes quiet", all_quiet).await;
    let term = replicas[&1].status().term;
    let calls = CALLS.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(CALLS.load(Ordering::Relaxed), calls, "a quiet group sends nothing");
    assert!(all_quiet(&replicas));
    assert!(replicas.values().all(|r| r.status().term == term));

    // A write through a follower wakes the group, with no election; it goes quiet again after.
    let follower = replicas.values().find(|r| r.status().role != Role::Leader).unwrap().clone();
    write(&follower, put("b", b"2")).await;
    until(&replicas, "quiet again", all_quiet).await;
    assert!(replicas.values().all(|r| r.status().term == term), "no election for a write");
    let calls = CALLS.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(CALLS.load(Ordering::Relaxed), calls);

    // The leader's node goes away while the group is quiet: once the node is believed down, the
    // followers find it does not answer and elect a new leader, which takes writes.
    let leader = replicas.values().find(|r| r.status().role == Role::Leader).unwrap().clone();
    let gone = leader.status().node;
    net.0.lock().remove(&format!("n{gone}"));
    leader.shutdown().await.unwrap();
    replicas.remove(&gone);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(replicas.values().all(|r| r.status().leader == Some(gone)), "no liveness news, no election");
    down.set([gone].into());
    until(&replicas, "a new leader", |r| {
        r.values().any(|r| r.status().role == Role::Leader && r.status().term > term)
    })
    .await;
    let survivor = replicas.values().next().unwrap().clone();
    write(&survivor, put("c", b"3")).await;
    until(&replicas, "both survivors hold the write", |r| {
        let last: Vec<_> = r.values().map(|r| r.status().applied).collect();
        last.windows(2).all(|w| w[0] == w[1])
    })
    .await;
}
