//! Replicas of one shard group, each with its own node Raft log and engine state machine, joined by an
//! in-process network: writes replicate to every replica, replicas' contents verify equal by digest,
//! after the leader stops a new one is elected and writes resume, and a new replica that joins after the
//! log was purged catches up from a snapshot and replaces an old one (learner, then membership change).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{ShardSnapshotRef, ShardStateMachine, TypeConfig, Verification};
use cairn_engine::fs::MemFs;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, Raft};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

type ShardRaft = Raft<TypeConfig, ShardStateMachine>;

/// Delivers RPCs by calling the target's `Raft` directly; a node missing from the map is unreachable.
#[derive(Clone, Default)]
struct Router(Arc<parking_lot::Mutex<HashMap<u64, ShardRaft>>>);

impl Router {
    fn get(&self, id: u64) -> Result<ShardRaft, Unreachable<TypeConfig>> {
        self.0
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {id} is down"))))
    }
}

struct Link {
    router: Router,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Link;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Link {
        Link { router: self.clone(), target }
    }
}

impl RaftNetworkV2<TypeConfig> for Link {
    type SnapshotData = ShardSnapshotRef;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, ShardSnapshotRef>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

struct Node {
    raft: ShardRaft,
    sm: ShardStateMachine,
}

async fn start(fs: &Arc<MemFs>, router: &Router, id: u64) -> Node {
    let (log, sm, config) = common::replica(fs, id);
    let raft = Raft::new(id, config, router.clone(), log, sm.clone()).await.unwrap();
    router.0.lock().insert(id, raft.clone());
    Node { raft, sm }
}

/// Three replicas (ids 1-3), initialized as one group.
async fn three_replicas(fs: &Arc<MemFs>, router: &Router) -> BTreeMap<u64, Node> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(fs, router, id).await);
    }
    let voters: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    nodes[&1].raft.initialize(voters).await.unwrap();
    nodes
}

/// The live replicas' Raft handles.
fn rafts(nodes: &BTreeMap<u64, Node>) -> BTreeMap<u64, ShardRaft> {
    nodes.iter().map(|(id, n)| (*id, n.raft.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_replicas_verify_equal_and_a_new_leader_takes_over() {
    let fs = Arc::new(MemFs::new());
    let router = Router::default();
    let mut nodes = three_replicas(&fs, &router).await;

    let mut last = 0;
    for i in 0..20 {
        last = common::write(&rafts(&nodes), common::put(&format!("k{i}"), b"v")).await;
    }
    let leader = common::leader_of(&rafts(&nodes)).await;
    for node in nodes.values() {
        common::applied(&node.raft, last).await;
        assert!(node.sm.db().get(3, b"k19").unwrap().is_some());
    }
    // Every replica at the leader's snapshot position holds the same contents.
    let snap = nodes[&leader].sm.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
    for node in nodes.values() {
        assert_eq!(node.sm.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);
    }

    // The leader stops: the others elect a new one and take writes.
    router.0.lock().remove(&leader);
    let old = nodes.remove(&leader).unwrap();
    old.raft.shutdown().await.unwrap();
    let new_leader = common::leader_of(&rafts(&nodes)).await;
    assert_ne!(new_leader, leader);
    let last = common::write(&rafts(&nodes), common::put("after", b"failover")).await;
    for node in nodes.values() {
        common::applied(&node.raft, last).await;
        assert_eq!(node.sm.db().get(3, b"after").unwrap().unwrap().column(0), Some(&b"failover"[..]));
        assert!(node.sm.db().get(3, b"k19").unwrap().is_some());
    }
    for node in nodes.values() {
        node.raft.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_by_snapshot_and_replaces_an_old_one() {
    let fs = Arc::new(MemFs::new());
    let router = Router::default();
    let mut nodes = three_replicas(&fs, &router).await;
    let mut last = 0;
    for i in 0..30 {
        last = common::write(&rafts(&nodes), common::put(&format!("k{i}"), b"v")).await;
    }
    // The leader snapshots and drops its log: a newcomer can only catch up from the snapshot.
    let leader = common::leader_of(&rafts(&nodes)).await;
    let l = &nodes[&leader].raft;
    l.trigger().snapshot().await.unwrap();
    l.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot taken")
        .await
        .unwrap();
    l.trigger().purge_log(last).await.unwrap();
    l.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .unwrap();

    // Node 4 joins as a learner (blocking until it caught up), then replaces node 3.
    nodes.insert(4, start(&fs, &router, 4).await);
    let leader = common::leader_of(&rafts(&nodes)).await;
    nodes[&leader].raft.add_learner(4, BasicNode::default(), true).await.unwrap();
    common::applied(&nodes[&4].raft, last).await;
    assert!(nodes[&4].sm.db().get(3, b"k29").unwrap().is_some(), "the learner has the data");
    assert!(
        nodes[&4].raft.metrics().borrow_watched().snapshot.is_some(),
        "it caught up by installing a snapshot, not by replaying the purged log"
    );
    let members = std::collections::BTreeSet::from([1u64, 2, 4]);
    nodes[&leader].raft.change_membership(members, false).await.unwrap();
    let removed = nodes.remove(&3).unwrap();
    router.0.lock().remove(&3);
    removed.raft.shutdown().await.unwrap();

    let last = common::write(&rafts(&nodes), common::put("after", b"membership")).await;
    for node in nodes.values() {
        common::applied(&node.raft, last).await;
        assert!(node.sm.db().get(3, b"after").unwrap().is_some());
    }
    let snap = nodes[&4].sm.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
    for node in nodes.values() {
        assert_eq!(node.sm.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);
    }
    for node in nodes.values() {
        node.raft.shutdown().await.unwrap();
    }
}
