//! openraft's storage conformance suite against `GroupLogStore` (the node Raft log seen by one group).
//! The suite also exercises a state machine; this one is a plain in-memory map of applied log ids and
//! membership, enough for the suite's checks: the engine-backed state machine has its own tests.

use cairn_cluster::raft::{CommandResult, GroupLogStore, TypeConfig};
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
