//! A replicated group of in-process replicas over an in-memory network, driven through [`Replica`]:
//! start, bootstrap, write through any replica, wait for a condition.

use super::{Net, replica_config};
use cairn_cluster::raft::{Command, RaftService, Replica, Role, ShardStateMachine};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The snapshot volume every replica's shard uses: a directory of the file system all the test's
/// replicas share, so installs read the leader's snapshot directly and splits link files.
pub const VOLUME: &str = "file:///snapshots";

pub fn state_machine(fs: &Arc<MemFs>, id: u64) -> ShardStateMachine {
    let mut template = Config::new(format!("/n{id}/shard"));
    template.fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    template.wal = false;
    template.total_buckets = 16;
    // One volume the whole process reads: installs read the leader's snapshot directly.
    template.snapshot_volume = Some(VOLUME.into());
    ShardStateMachine::open(format!("/n{id}/shard").into(), template, vec![0..=15], 0).unwrap()
}

pub async fn start(fs: &Arc<MemFs>, net: &Net, id: u64) -> Replica {
    start_with(fs, net, id, replica_config(20)).await
}

/// [`start`] with `config`.
pub async fn start_with(
    fs: &Arc<MemFs>,
    net: &Net,
    id: u64,
    config: cairn_cluster::raft::ReplicaConfig,
) -> Replica {
    let dyn_fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    let log = Arc::new(RaftLog::open(RaftLogConfig::new(format!("/n{id}/raft"), dyn_fs)).unwrap());
    let replica = Replica::start(id, 1, log, state_machine(fs, id), net.clone(), config).await.unwrap();
    let service = RaftService::default();
    service.register_replica_sharing_volume(&replica);
    net.0.lock().insert(format!("n{id}"), service);
    let tended = replica.clone();
    tokio::spawn(async move { tended.tend().await });
    replica
}

pub fn put(key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(3, key.as_bytes(), 0, value);
    Command::write(&b)
}

/// Waits (up to 20 s) until `done` holds for the replicas' statuses.
pub async fn until(
    replicas: &BTreeMap<u64, Replica>,
    what: &str,
    done: impl Fn(&BTreeMap<u64, Replica>) -> bool,
) {
    for _ in 0..400 {
        if done(replicas) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses: Vec<_> = replicas.values().map(Replica::status).collect();
    panic!("{what}: not reached in 20 s: {statuses:#?}");
}

pub async fn group(fs: &Arc<MemFs>, net: &Net, n: u64) -> BTreeMap<u64, Replica> {
    let mut replicas = BTreeMap::new();
    for id in 1..=n {
        replicas.insert(id, start(fs, net, id).await);
    }
    replicas[&1].bootstrap((1..=n).map(|id| (id, format!("n{id}"))).collect()).await.unwrap();
    until(&replicas, "a leader", |r| r.values().all(|r| r.status().leader.is_some())).await;
    replicas
}

/// Writes through any replica (followers forward), retrying while leadership settles.
pub async fn write(replica: &Replica, command: Command) -> u64 {
    for _ in 0..50 {
        match replica.write(command.clone(), Duration::from_secs(2)).await {
            Ok(w) => return w.index,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("no write went through");
}

pub fn leader(replicas: &BTreeMap<u64, Replica>) -> Replica {
    replicas.values().find(|r| r.status().role == Role::Leader).cloned().expect("a leader")
}
