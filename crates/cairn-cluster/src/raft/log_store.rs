//! One group's openraft log storage over the node's shared [`RaftLog`]: entries and votes are encoded
//! (postcard-encoded; the payload is opaque to the node log) and appends acknowledge through openraft's flush
//! callback once the node log's flusher has fsynced them.

use super::{TypeConfig, io_err};
use crate::raft_log::{GroupId, LogEntry, LogPosition, RaftLog};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// A group's view of the node log; cheap to clone (it is also its own log reader).
#[derive(Clone, Debug)]
pub struct GroupLogStore {
    log: Arc<RaftLog>,
    group: GroupId,
}

impl GroupLogStore {
    /// The log of `group` in `log`.
    pub fn new(log: Arc<RaftLog>, group: GroupId) -> GroupLogStore {
        GroupLogStore { log, group }
    }
}

fn log_id(p: LogPosition) -> LogIdOf<TypeConfig> {
    LogId::new_term_index(p.term, p.index)
}

/// Decodes a stored entry. Entries written before commands were an enum (one struct of conditions, a
/// batch and a check step) cannot be told apart from today's reliably, so they are not read: a store
/// made by such a build is recreated (no release ever wrote one), and says so.
fn decode_entry(e: &LogEntry) -> io::Result<EntryOf<TypeConfig>> {
    super::decode(&e.payload).map_err(|why| {
        io_err(format!(
            "{why} (entry {}; a Raft log written by a cairn build from before 2026-12-06, whose \
             commands were not typed, cannot be replayed: recreate the store)",
            e.index
        ))
    })
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.log.entries(self.group, start..end).iter().map(decode_entry).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.log.vote(self.group).map(|v| super::decode(&v).map_err(io_err)).transpose()
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = GroupLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let (purged, last) = self.log.state(self.group);
        Ok(LogState { last_purged_log_id: purged.map(log_id), last_log_id: last.map(log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = super::encode(vote).map_err(io_err)?;
        self.log.save_vote(self.group, &bytes).map_err(io_err)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let (leader, index) = entry.log_id_parts();
            let term = leader.term;
            encoded.push(LogEntry { index, term, payload: super::encode(&entry).map_err(io_err)? });
        }
        self.log
            .append(self.group, encoded, Box::new(move |r| callback.io_completed(r.map_err(io_err))))
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.log.truncate_after(self.group, last_log_id.map(|id| id.index())).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let upto = LogPosition { term: log_id.committed_leader_id().term, index: log_id.index() };
        self.log.purge(self.group, upto).map_err(io_err)
    }
}
