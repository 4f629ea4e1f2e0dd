//! Applying a shard group's committed entries to the shard's engine `Db`, with the applied log id and
//! membership written in the same engine batch as the data they cover.
//!
//! Replicated shards run the engine with its WAL off (the Raft log is the log). After a crash the
//! engine holds exactly what it flushed; because the applied position travels in the same batches as
//! the data, what it flushed is a prefix of the applied entries ending at the stored position, so Raft
//! replays only the log tail after it. A system row (key prefix `00 02`, which the server's MVCC key
//! encoding never produces) in the shard's first bucket holds that position.

use super::{CommandResult, TypeConfig};
use cairn_engine::{Db, WriteBatch, WriteOptions};
use openraft::EntryPayload;
use openraft::alias::{EntryOf, LogIdOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use std::sync::Arc;

/// The engine key of the applied-position system row.
pub const APPLIED_ROW_KEY: &[u8] = b"\x00\x02raft/applied";

/// The last applied log id and the membership as of it.
pub type AppliedState = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

/// What can go wrong applying entries.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    /// The stored applied position does not decode.
    #[error("corrupt applied-position row: {0}")]
    Corrupt(String),
}

/// Applies entries to one shard.
#[derive(Clone, Debug)]
pub struct ShardApplier {
    db: Arc<Db>,
    meta_bucket: u16,
    // The membership as of the last applied entry, read from the engine on the first apply, so an apply
    // writes the position row without reading it first. INVARIANT: when loaded, equals the stored row's.
    membership: Arc<parking_lot::Mutex<Option<StoredMembershipOf<TypeConfig>>>>,
}

impl ShardApplier {
    /// Applies into `db`, keeping the applied position in bucket `meta_bucket` (one the shard owns).
    pub fn new(db: Arc<Db>, meta_bucket: u16) -> ShardApplier {
        ShardApplier { db, meta_bucket, membership: Arc::default() }
    }

    /// The applied position the engine holds.
    pub fn applied(&self) -> Result<AppliedState, ApplyError> {
        let Some(row) = self.db.get(self.meta_bucket, APPLIED_ROW_KEY)? else {
            return Ok((None, StoredMembershipOf::<TypeConfig>::default()));
        };
        let bytes = row.column(0).ok_or_else(|| ApplyError::Corrupt("no value column".into()))?;
        serde_json::from_slice(bytes).map_err(|e| ApplyError::Corrupt(e.to_string()))
    }

    /// Applies `entries` (consecutive, after the applied position) as one engine batch that also moves
    /// the applied position to the last of them. Returns one result per entry.
    pub fn apply(&self, entries: &[EntryOf<TypeConfig>]) -> Result<Vec<CommandResult>, ApplyError> {
        let Some(last) = entries.last() else { return Ok(Vec::new()) };
        let mut cached = self.membership.lock();
        let mut membership = match cached.as_ref() {
            Some(m) => m.clone(),
            None => self.applied()?.1,
        };
        let mut batch = WriteBatch::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => batch.extend_from_bytes(&command.0)?,
                EntryPayload::Membership(m) => {
                    membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                }
            }
        }
        let state: AppliedState = (Some(last.log_id()), membership);
        let encoded = serde_json::to_vec(&state).map_err(|e| ApplyError::Corrupt(e.to_string()))?;
        batch.put_row(self.meta_bucket, APPLIED_ROW_KEY, &[(0, &encoded)]);
        // The WAL is off for replicated shards: durability is the Raft log's job.
        self.db.write(batch, WriteOptions { sync: false })?;
        *cached = Some(state.1);
        Ok(entries.iter().map(|_| CommandResult::default()).collect())
    }
}
