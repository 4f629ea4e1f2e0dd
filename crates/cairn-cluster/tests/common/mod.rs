//! Helpers shared by the replication tests: a write command, finding the leader, and writing through it
//! the way a client does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod group;
pub mod nodes;

use cairn_cluster::raft::{Command, GroupLogStore, ShardRaft, ShardStateMachine};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use openraft::ServerState;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Replica `id`'s storage under `/n<id>` on `fs`: its node Raft log seen by group 1, its shard state
/// machine (16 buckets, WAL off), and Raft timings short enough for tests.
pub fn replica(fs: &Arc<MemFs>, id: u64) -> (GroupLogStore, ShardStateMachine, Arc<openraft::Config>) {
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
    (GroupLogStore::new(log, 1), sm, Arc::new(config.validate().unwrap()))
}

/// A command writing `value` under `key` in bucket 3.
pub fn put(key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(3, key.as_bytes(), 0, value);
    Command::write(&b)
}

/// The leader the live replicas agree on, once it has heard from a quorum (its lease is valid).
pub async fn leader_of(rafts: &BTreeMap<u64, ShardRaft>) -> u64 {
    let any = rafts.values().next().unwrap();
    let m = any
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some_and(|l| rafts.contains_key(&l)), "a live leader")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    rafts[&leader]
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state == ServerState::Leader && m.last_quorum_acked.is_some(), "a quorum ack")
        .await
        .unwrap();
    leader
}

/// Writes through the leader, following a leadership change a bounded number of times (what a client
/// does with a retryable "not the leader" answer). Returns the write's log index.
pub async fn write(rafts: &BTreeMap<u64, ShardRaft>, command: Command) -> u64 {
    let mut last_error = None;
    for _ in 0..5 {
        let leader = leader_of(rafts).await;
        match rafts[&leader].client_write(command.clone()).await {
            Ok(r) => return r.log_id.index,
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no leader took the write: {last_error:?}");
}

/// Waits (up to 10 s) until `raft` has applied log index `index`.
pub async fn applied(raft: &ShardRaft, index: u64) {
    raft.wait(Some(std::time::Duration::from_secs(10)))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

/// Calls made over every [`Net`] of the test binary (each test binary runs its tests in processes of
/// their own under nextest).
pub static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An in-process network: each node's service by address; a node missing from the map is down.
#[derive(Clone, Default)]
pub struct Net(
    pub Arc<parking_lot::Mutex<std::collections::HashMap<String, cairn_cluster::raft::RaftService>>>,
);

impl cairn_cluster::raft::Wire for Net {
    async fn call(
        &self,
        _target: u64,
        addr: &str,
        call: cairn_cluster::raft::RaftCall,
        _timeout: Duration,
    ) -> Result<cairn_cluster::raft::RaftReply, cairn_cluster::raft::CallError> {
        let down = || cairn_cluster::raft::CallError::NotSent(format!("{addr} is down"));
        let service = self.0.lock().get(addr).cloned().ok_or_else(down)?;
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(service.handle(call).await)
    }
}

/// Replica settings for in-process groups: fast heartbeats and elections, a snapshot every
/// `snapshot_every` entries, no periodic consistency check.
pub fn replica_config(snapshot_every: u64) -> cairn_cluster::raft::ReplicaConfig {
    cairn_cluster::raft::ReplicaConfig {
        heartbeat: Duration::from_millis(30),
        election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
        snapshot_every,
        keep_behind_snapshot: 5,
        snapshot_timeout: Duration::from_secs(5),
        check_every: Duration::ZERO,
        promote_resynced: true,
        ..Default::default()
    }
}
