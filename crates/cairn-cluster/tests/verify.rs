//! Verified log compaction's check (seed 004): a replica at the position of another's snapshot compares
//! content digests; equal contents match, a diverged replica is caught, installing the snapshot repairs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft::{Command, ShardStateMachine, TypeConfig, Verification};
use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, LogId};
use std::sync::Arc;

fn machine(fs: &Arc<MemFs>, name: &str) -> ShardStateMachine {
    let mut template = Config::new(format!("/{name}/shard"));
    template.fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    template.wal = false;
    template.total_buckets = 16;
    ShardStateMachine::open(format!("/{name}/shard").into(), template, vec![0..=15], 0).unwrap()
}

fn command(index: u64) -> EntryOf<TypeConfig> {
    let mut b = WriteBatch::new();
    b.put((index % 16) as u16, format!("k{index}").as_bytes(), 0, &index.to_be_bytes());
    EntryOf::<TypeConfig>::new(LogId::new_term_index(1, index), EntryPayload::Normal(Command::write(&b)))
}

async fn apply(sm: &mut ShardStateMachine, range: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = range.map(|i| Ok((command(i), None))).collect();
    sm.apply(futures_util::stream::iter(entries)).await.unwrap();
}

#[tokio::test]
async fn equal_replicas_match_a_diverged_one_is_caught_and_repaired_by_the_snapshot() {
    let fs = Arc::new(MemFs::new());
    let (mut leader, mut follower) = (machine(&fs, "a"), machine(&fs, "b"));
    apply(&mut leader, 1..=50).await;
    apply(&mut follower, 1..=50).await;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|id| id.index), Some(50));
    assert_eq!(follower.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);

    // A write that did not come through the log: the follower's contents differ at the same position.
    follower.db().put(3, b"stray", 0, b"x").unwrap();
    match follower.verify(&snap.meta, &snap.snapshot).unwrap() {
        Verification::Diverged { ours, theirs } => assert_ne!(ours, theirs),
        other => panic!("divergence not caught: {other:?}"),
    }
    // Re-syncing from the leader's snapshot repairs it.
    follower.install_snapshot(&snap.meta, snap.snapshot.clone()).await.unwrap();
    assert_eq!(follower.verify(&snap.meta, &snap.snapshot).unwrap(), Verification::Match);
    assert!(follower.db().get(3, b"stray").unwrap().is_none());
    assert!(follower.db().get(50 % 16, b"k50").unwrap().is_some());

    // A replica behind the snapshot's position cannot check yet.
    apply(&mut leader, 51..=51).await;
    let later = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(
        follower.verify(&later.meta, &later.snapshot).unwrap(),
        Verification::NotAtPosition { applied: Some(50) }
    );
}
