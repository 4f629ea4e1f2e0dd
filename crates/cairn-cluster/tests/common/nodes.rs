//! In-process nodes that each hold replicas of several groups: one Raft log, one Raft service and one
//! registry of frozen shards per node, over an in-memory network.

use super::group::VOLUME;
use super::{Net, replica_config};
use cairn_cluster::raft::{Command, FrozenShards, RaftService, Replica, ReplicaConfig, ShardStateMachine};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use std::sync::Arc;

/// One node: its Raft log, Raft service and frozen shards, shared by every group it holds a replica of.
pub struct Node {
    pub log: Arc<RaftLog>,
    pub service: RaftService,
    pub frozen: FrozenShards,
}

pub fn node(fs: &Arc<MemFs>, net: &Net, id: u64) -> Node {
    let dyn_fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    let log = Arc::new(RaftLog::open(RaftLogConfig::new(format!("/n{id}/raft"), dyn_fs)).unwrap());
    let service = RaftService::default();
    net.0.lock().insert(format!("n{id}"), service.clone());
    Node { log, service, frozen: FrozenShards::default() }
}

/// Starts node `id`'s replica of `group` over `sm`, linked to the node's frozen shards, and tends it.
pub async fn start(node: &Node, net: &Net, id: u64, group: u64, sm: ShardStateMachine) -> Replica {
    start_leading(node, net, id, group, sm, false).await
}

/// [`start`], as the leader its log's committed vote names if `leads` (a split's new shard, see
/// `prepare_split_log`).
pub async fn start_leading(
    node: &Node,
    net: &Net,
    id: u64,
    group: u64,
    sm: ShardStateMachine,
    leads: bool,
) -> Replica {
    sm.link(&node.frozen, group).unwrap();
    let config = ReplicaConfig { leads_from_start: leads, ..replica_config(20) };
    let replica = Replica::start(id, group, Arc::clone(&node.log), sm, net.clone(), config).await.unwrap();
    node.service.register_replica_sharing_volume(&replica);
    let tended = replica.clone();
    tokio::spawn(async move { tended.tend().await });
    replica
}

/// A write of `value` under `key` in `bucket`.
pub fn put(bucket: u16, key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(bucket, key.as_bytes(), 0, value);
    Command::write(&b)
}

/// The settings of a shard under `root` (16 buckets, WAL off, the shared snapshot volume).
pub fn template(fs: &Arc<MemFs>, root: &str) -> Config {
    let mut template = Config::new(root);
    template.fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    template.wal = false;
    template.total_buckets = 16;
    template.snapshot_volume = Some(VOLUME.into());
    template
}
