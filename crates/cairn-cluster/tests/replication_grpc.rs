//! Three replicas of one shard group on three gRPC servers (127.0.0.1, ephemeral ports), talking over
//! `RaftTransport` with one channel per peer: writes replicate, replicas verify equal by digest, and
//! when the leader's node goes down a new leader is elected and takes writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft::{
    Command, GroupLogStore, GroupNetwork, PeerChannels, RaftService, ShardRaft, ShardStateMachine,
    Verification,
};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, Raft, ServerState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Node {
    raft: ShardRaft,
    sm: ShardStateMachine,
    stop: tokio::sync::oneshot::Sender<()>,
    addr: String,
}

async fn start(fs: &Arc<MemFs>, id: u64) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dyn_fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    let log =
        Arc::new(RaftLog::open(RaftLogConfig::new(format!("/n{id}/raft"), Arc::clone(&dyn_fs))).unwrap());
    let mut template = Config::new(format!("/n{id}/shard"));
    template.fs = dyn_fs;
    template.wal = false;
    template.total_buckets = 16;
    let sm = ShardStateMachine::open(format!("/n{id}/shard").into(), template, vec![0..=15], 0).unwrap();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    let network = GroupNetwork::new(PeerChannels::default(), 1);
    let raft =
        Raft::new(id, Arc::new(config.validate().unwrap()), network, GroupLogStore::new(log, 1), sm.clone())
            .await
            .unwrap();
    let service = RaftService::default();
    service.register(1, raft.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(service.into_server()).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );
    Node { raft, sm, stop, addr }
}

fn put(key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(3, key.as_bytes(), 0, value);
    Command(b.as_bytes().to_vec())
}

/// The leader the live nodes agree on, once it has heard from a quorum.
async fn leader_of(nodes: &BTreeMap<u64, Node>) -> u64 {
    let any = nodes.values().next().unwrap();
    let m = any
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some_and(|l| nodes.contains_key(&l)), "a live leader")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    nodes[&leader]
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state == ServerState::Leader && m.last_quorum_acked.is_some(), "a quorum ack")
        .await
        .unwrap();
    leader
}

/// Writes through the leader, following a leadership change a bounded number of times.
async fn write(nodes: &BTreeMap<u64, Node>, command: Command) -> u64 {
    let mut last_error = None;
    for _ in 0..5 {
        let leader = leader_of(nodes).await;
        match nodes[&leader].raft.client_write(command.clone()).await {
            Ok(r) => return r.log_id.index,
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no leader took the write: {last_error:?}");
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
        last = write(&nodes, put(&format!("k{i}"), b"v")).await;
    }
    for node in nodes.values() {
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "replicated")
            .await
            .unwrap();
        assert!(node.sm.db().get(3, b"k19").unwrap().is_some());
    }
    let leader = leader_of(&nodes).await;
    let snap = nodes[&leader].sm.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
    for node in nodes.values() {
        assert_eq!(node.sm.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);
    }

    // The leader's node goes down (its server stops, its Raft stops).
    let old = nodes.remove(&leader).unwrap();
    let _ = old.stop.send(());
    old.raft.shutdown().await.unwrap();
    let new_leader = leader_of(&nodes).await;
    assert_ne!(new_leader, leader);
    let last = write(&nodes, put("after", b"failover")).await;
    for node in nodes.values() {
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "replicated")
            .await
            .unwrap();
        assert_eq!(node.sm.db().get(3, b"after").unwrap().unwrap().column(0), Some(&b"failover"[..]));
    }
    for node in nodes.into_values() {
        let _ = node.stop.send(());
        node.raft.shutdown().await.unwrap();
    }
}
