//! Three replicas of one shard group on three gRPC servers (127.0.0.1, ephemeral ports), talking over
//! `RaftTransport` with one channel per peer: writes replicate, replicas verify equal by digest, and
//! when the leader's node goes down a new leader is elected and takes writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::raft::{
    GroupNetwork, PeerChannels, RaftService, ShardRaft, ShardStateMachine, Verification,
};
use cairn_engine::fs::MemFs;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, Raft};
use std::collections::BTreeMap;
use std::sync::Arc;

struct Node {
    raft: ShardRaft,
    sm: ShardStateMachine,
    stop: tokio::sync::oneshot::Sender<()>,
    addr: String,
}

async fn start(fs: &Arc<MemFs>, id: u64) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (log, sm, config) = common::replica(fs, id);
    let network = GroupNetwork::new(PeerChannels::default(), 1);
    let raft = Raft::new(id, config, network, log, sm.clone()).await.unwrap();
    let service = RaftService::default();
    service.register(1, raft.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server(cairn_proto::DEFAULT_MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    Node { raft, sm, stop, addr }
}

/// The live replicas' Raft handles.
fn rafts(nodes: &BTreeMap<u64, Node>) -> BTreeMap<u64, ShardRaft> {
    nodes.iter().map(|(id, n)| (*id, n.raft.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_grpc_replicate_verify_and_fail_over() {
    let fs = Arc::new(MemFs::new());
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&fs, id).await);
    }
    let members: BTreeMap<u64, BasicNode> =
        nodes.iter().map(|(id, n)| (*id, BasicNode::new(&n.addr))).collect();
    nodes[&1].raft.initialize(members).await.unwrap();

    let mut last = 0;
    for i in 0..20 {
        last = common::write(&rafts(&nodes), common::put(&format!("k{i}"), b"v")).await;
    }
    for node in nodes.values() {
        common::applied(&node.raft, last).await;
        assert!(node.sm.db().get(3, b"k19").unwrap().is_some());
    }
    let leader = common::leader_of(&rafts(&nodes)).await;
    let snap = nodes[&leader].sm.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
    for node in nodes.values() {
        assert_eq!(node.sm.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);
    }

    // The leader's node goes down (its server stops, its Raft stops).
    let old = nodes.remove(&leader).unwrap();
    let _ = old.stop.send(());
    old.raft.shutdown().await.unwrap();
    let new_leader = common::leader_of(&rafts(&nodes)).await;
    assert_ne!(new_leader, leader);
    let last = common::write(&rafts(&nodes), common::put("after", b"failover")).await;
    for node in nodes.values() {
        common::applied(&node.raft, last).await;
        assert_eq!(node.sm.db().get(3, b"after").unwrap().unwrap().column(0), Some(&b"failover"[..]));
    }
    for node in nodes.into_values() {
        let _ = node.stop.send(());
        node.raft.shutdown().await.unwrap();
    }
}
