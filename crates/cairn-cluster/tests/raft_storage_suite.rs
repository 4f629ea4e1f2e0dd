//! openraft's storage conformance suite against `GroupLogStore` (the node Raft log seen by one group),
//! once with the shard's real state machine (`ShardStateMachine`: the engine, snapshots as engine shard
//! snapshots) and once with a plain in-memory one, so a failure points at the log or at the engine side.

use cairn_cluster::raft::{CommandResult, GroupLogStore, ShardStateMachine, TypeConfig};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FileSystem, MemFs};
use futures_util::StreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{OptionalSend, StorageError};
use std::io;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
struct MemState {
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
struct MemStateMachine(Arc<parking_lot::Mutex<MemState>>);

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let mut state = self.0.lock();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: state.applied,
            last_membership: state.membership.clone(),
        };
        let data = serde_json::to_vec(&(&state.applied, &state.membership)).map_err(io::Error::other)?;
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let state = self.0.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm:
            futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut state = self.0.lock();
                state.applied = Some(entry.log_id());
                if let Some(m) = entry.get_membership() {
                    state.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m);
                }
            }
            if let Some(r) = responder {
                r.send(CommandResult::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut state = self.0.lock();
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let state = self.0.lock();
        Ok(state
            .snapshot
            .clone()
            .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot }))
    }
}

/// Each test of the suite gets a fresh node log on a fresh in-memory file system.
struct Builder;

impl StoreBuilder<TypeConfig, GroupLogStore, MemStateMachine, Arc<RaftLog>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Arc<RaftLog>, GroupLogStore, MemStateMachine), StorageError<TypeConfig>> {
        let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let log = RaftLog::open(RaftLogConfig::new("/raft", fs)).map_err(|e| {
            StorageError::read(<TypeConfig as TypeConfigExt>::err_from_error(&io::Error::other(
                e.to_string(),
            )))
        })?;
        let log = Arc::new(log);
        Ok((Arc::clone(&log), GroupLogStore::new(log, 7), MemStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_log_store_passes_openrafts_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}

/// Fresh node logs and fresh shards, all on one in-memory file system, so a snapshot one shard takes can
/// be installed by another.
struct EngineBuilder {
    fs: Arc<MemFs>,
    next: std::sync::atomic::AtomicU64,
}

impl StoreBuilder<TypeConfig, GroupLogStore, ShardStateMachine, Arc<RaftLog>> for EngineBuilder {
    async fn build(
        &self,
    ) -> Result<(Arc<RaftLog>, GroupLogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let err = |e: String| {
            StorageError::read(<TypeConfig as TypeConfigExt>::err_from_error(&io::Error::other(e)))
        };
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fs: Arc<dyn FileSystem> = Arc::clone(&self.fs) as Arc<dyn FileSystem>;
        let log = RaftLog::open(RaftLogConfig::new(format!("/node-{n}/raft"), Arc::clone(&fs)))
            .map_err(|e| err(e.to_string()))?;
        let log = Arc::new(log);
        let mut template = cairn_engine::Config::new(format!("/node-{n}/shard"));
        template.fs = fs;
        template.wal = false;
        template.total_buckets = 16;
        let sm = ShardStateMachine::open(format!("/node-{n}/shard").into(), template, vec![0..=15], 0)
            .map_err(|e| err(e.to_string()))?;
        Ok((Arc::clone(&log), GroupLogStore::new(log, 7), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_log_store_and_shard_state_machine_pass_openrafts_storage_suite() {
    let builder = EngineBuilder { fs: Arc::new(MemFs::new()), next: std::sync::atomic::AtomicU64::new(0) };
    Suite::test_all(builder).await.unwrap();
}
