//! Helpers shared by the replication tests: a write command, finding the leader, and writing through it
//! the way a client does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft::{Command, ShardRaft};
use cairn_engine::WriteBatch;
use openraft::ServerState;
use std::collections::BTreeMap;
use std::time::Duration;

/// A command writing `value` under `key` in bucket 3.
pub fn put(key: &str, value: &[u8]) -> Command {
    let mut b = WriteBatch::new();
    b.put(3, key.as_bytes(), 0, value);
    Command(b.as_bytes().to_vec())
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
