//! The seam between cairn and openraft: the type configuration every shard group uses, and the
//! [`GroupLogStore`] that stores one group's Raft log in the node's shared [`RaftLog`]. Nothing outside
//! this module names an openraft type.

mod apply;
mod digest;
pub use digest::{DIGEST_NICENESS, MAX_DIGEST_THREADS};
mod log_store;
mod merge;
mod replica;
mod runtime;
mod state_machine;
mod transport;

pub use apply::{
    APPLIED_ROW_KEY, AppliedState, ApplyError, CheckStatus, DigestState, EFFECTS_KEPT, Effect, GC_ROW_KEY,
    HASH_BYTES_PER_SECOND, ShardApplier, SplitOff,
};
pub use log_store::GroupLogStore;
pub use merge::{FrozenShard, FrozenShards, MERGE_WAIT};
pub use replica::{
    CheckOutcome, DownNodes, FORM_AFTER, GcFloor, GcFloorSource, GcPolicy, GroupError, GroupStatus, MoveStep,
    ReadLevel, ReadPoint, Replica, ReplicaConfig, Role, STALL_AFTER, StatusWatch, Written, retire_stored,
    wall_now,
};
pub use runtime::{CairnRuntime, with_seed};
pub use state_machine::{ShardSnapshotRef, ShardStateMachine, Verification};
pub use transport::{
    CallError, GroupLink, GroupNetwork, PeerChannels, RaftCall, RaftReply, RaftService, RequestHandler, Wire,
    decode_call,
};

/// A shard group's Raft node.
pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;

use serde::{Deserialize, Serialize};

/// A command a shard group replicates. Every replica applies it alike: what it writes and whether it
/// writes are decided by the command and the entries before it, never by the replica.
///
/// The variants leave room for the commands still to come (splits and merges, a GC threshold, intent
/// resolution): each is one more variant with its own apply step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Engine writes evaluated by the group's leader in `term`, against a state machine that had
    /// applied every entry of earlier terms, while it held latches on the keys it read until the
    /// command applied. Applied only if the entry was appended in that same term (by that leader): a
    /// command evaluated under an older leadership is refused ([`CommandResult::WrongTerm`]), never
    /// applied on a state it was not evaluated against.
    Evaluated {
        /// The leader's term at evaluation.
        term: u64,
        /// The writes, as [`cairn_engine::WriteBatch::as_bytes`] encodes them (byte strings stay byte
        /// strings in postcard: decoded in one copy, not one visitor call per byte).
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// Engine writes applied only if every condition holds as of the entries before this one, whoever
    /// proposed them (system writes, tests, and the simulation's raw commands).
    Conditional {
        /// Checked, in order.
        conditions: Vec<Condition>,
        /// The writes, encoded as in [`Command::Evaluated`].
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// A consistency-check step.
    Check(Check),
    /// A [`Command::Split`] as written before a split named its new group's first leader: the new
    /// group elects one. Kept so logs written then still apply.
    LegacySplit {
        /// The new shard's group.
        new_group: u64,
        /// The bucket ranges it takes.
        ranges: Vec<(u16, u16)>,
        /// The new group's voters (node, address).
        voters: Vec<(u64, String)>,
    },
    /// Stops this shard for a merge into its left-hand neighbour: every replica stores the entry's
    /// position, gives up `ranges` (everything the shard owns) at this entry (the engine's shrink, whose
    /// pre-shrink snapshot keeps their files) and from then on writes nothing: writes are answered
    /// [`CommandResult::NotOwned`], reads find the buckets gone. Each replica registers its frozen
    /// contents with its node ([`FrozenShards`]), from which the neighbour's replica there imports
    /// them ([`Command::Merge`]). Answered [`CommandResult::Frozen`].
    Freeze {
        /// Every range the shard owns.
        ranges: Vec<(u16, u16)>,
    },
    /// Takes in `ranges` from group `right_group`, frozen for this merge ([`Command::Freeze`]): every
    /// replica imports them from its node's frozen replica of that group, by reference (0 bytes copied
    /// on one file system). A replica whose node has no such frozen replica fences itself and re-syncs
    /// from the others. Answered [`CommandResult::Merged`] (also when the ranges were taken in before).
    Merge {
        /// The frozen right-hand shard's group.
        right_group: u64,
        /// Its ranges.
        ranges: Vec<(u16, u16)>,
    },
    /// Hands `ranges` of this shard to a new shard, group `new_group`: every replica gives them up at
    /// this entry (the engine's shrink, whose pre-shrink snapshot keeps their files) and publishes
    /// [`Effect::Split`], from which its node opens the new shard by reference
    /// ([`ShardStateMachine::open_split`]). Answered [`CommandResult::Split`].
    Split {
        /// The new shard's group.
        new_group: u64,
        /// The bucket ranges it takes (first and last bucket of each); never the shard's first bucket,
        /// which keeps its applied position.
        ranges: Vec<(u16, u16)>,
        /// The new group's voters (node, address): decided here, once, so every replica starts the
        /// group with the same membership.
        voters: Vec<(u64, String)>,
        /// The voter that leads the new group's first term (the node that proposed the split): every
        /// replica that makes the group from this entry starts with its vote for that node, committed,
        /// so that node leads at once, without a round of votes ([`prepare_split_log`]). A value that
        /// is not a voter names no one (the group elects).
        first_leader: u64,
    },
    /// Raises the shard's GC threshold to `wall_time` (nanoseconds since the Unix epoch), if it is
    /// higher: every replica stores it at this entry, makes it durable, then lets compactions drop
    /// the versions no read at or above it sees; reads below it are refused. Its leader proposes it
    /// from `now - gc_ttl`, held at or below the oldest protected timestamp ([`ReplicaConfig::gc`]).
    /// Answered [`CommandResult::Applied`].
    GcThreshold {
        /// The new threshold.
        wall_time: u64,
    },
}

/// The two log entries of a consistency check (seed 004): every replica hashes its shard at the same
/// index, then compares with the proposer's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// Every replica records the content digest of its shard as of this entry (answered
    /// [`CommandResult::Recorded`]).
    Record,
    /// Every replica compares the digest it recorded at entry `index` with `digest`; one that differs
    /// fences itself.
    Compare {
        /// The `Record` entry's index.
        index: u64,
        /// The digest a majority of voters recorded there.
        digest: String,
    },
}

impl Command {
    /// An unconditional write of `batch`.
    pub fn write(batch: &cairn_engine::WriteBatch) -> Command {
        Command::conditional(Vec::new(), batch)
    }

    /// A write of `batch` applied only if every condition holds.
    pub fn conditional(conditions: Vec<Condition>, batch: &cairn_engine::WriteBatch) -> Command {
        Command::Conditional { conditions, batch: batch.as_bytes().to_vec() }
    }

    /// A write of `batch` evaluated by the leader of `term`.
    pub fn evaluated(term: u64, batch: &cairn_engine::WriteBatch) -> Command {
        Command::Evaluated { term, batch: batch.as_bytes().to_vec() }
    }

    /// A consistency-check step.
    pub fn check(check: Check) -> Command {
        Command::Check(check)
    }

    /// The rows a write command applies and the conditions they need, as of an entry appended in
    /// term `appended`; what every replica answers instead when they are not applied (a command
    /// evaluated in another term, or one that writes nothing).
    pub(crate) fn rows(&self, appended: u64) -> Result<(&[u8], &[Condition]), CommandResult> {
        match self {
            Command::Evaluated { term, batch } if *term == appended => Ok((batch, &[])),
            Command::Evaluated { term, .. } => Err(CommandResult::WrongTerm { evaluated: *term, appended }),
            Command::Conditional { conditions, batch } => Ok((batch, conditions)),
            Command::Check(_) => Err(CommandResult::Rejected("a check step writes no rows".into())),
            Command::Split { .. } | Command::LegacySplit { .. } => {
                Err(CommandResult::Rejected("a split writes no rows".into()))
            }
            Command::Freeze { .. } | Command::Merge { .. } => {
                Err(CommandResult::Rejected("a freeze or a merge writes no rows".into()))
            }
            Command::GcThreshold { .. } => {
                Err(CommandResult::Rejected("a GC threshold writes no rows".into()))
            }
        }
    }

    /// About how many bytes the command takes encoded: never less (each field adds a little more than
    /// its bytes, counted generously), so batches bounded by it stay under a message limit.
    pub fn approx_bytes(&self) -> usize {
        fn condition(c: &Condition) -> usize {
            16 + match c {
                Condition::ColumnIs { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len),
                Condition::ColumnBelow { key, value, .. } => key.len() + value.len(),
                Condition::Any(all) => all.iter().map(condition).sum(),
                Condition::Not(c) => condition(c),
            }
        }
        16 + match self {
            Command::Evaluated { batch, .. } => 16 + batch.len(),
            Command::Conditional { conditions, batch } => {
                batch.len() + conditions.iter().map(condition).sum::<usize>()
            }
            Command::Check(Check::Compare { digest, .. }) => 16 + digest.len(),
            Command::Check(Check::Record) => 1,
            Command::Split { ranges, voters, .. } | Command::LegacySplit { ranges, voters, .. } => {
                16 + 8 * ranges.len() + voters.iter().map(|(_, a)| 16 + a.len()).sum::<usize>()
            }
            Command::Freeze { ranges } | Command::Merge { ranges, .. } => 16 + 8 * ranges.len(),
            Command::GcThreshold { .. } => 16,
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Evaluated { term, batch } => write!(f, "evaluated(term {term}, {} bytes)", batch.len()),
            Command::Conditional { conditions, batch } => {
                write!(f, "conditional({} bytes, {} conditions)", batch.len(), conditions.len())
            }
            Command::Check(check) => write!(f, "check({check:?})"),
            Command::Split { new_group, ranges, .. } | Command::LegacySplit { new_group, ranges, .. } => {
                write!(f, "split({ranges:?} to group {new_group})")
            }
            Command::Freeze { ranges } => write!(f, "freeze({ranges:?})"),
            Command::Merge { right_group, ranges } => write!(f, "merge({ranges:?} from group {right_group})"),
            Command::GcThreshold { wall_time } => write!(f, "gc_threshold({wall_time})"),
        }
    }
}

/// A check a [`Command`] makes before it writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The row's column holds exactly `value`; `None`: the row or that column is absent.
    ColumnIs {
        /// The row's bucket.
        bucket: u16,
        /// The row's key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The column.
        column: u16,
        /// The value required.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
    /// At least one of these holds.
    Any(Vec<Condition>),
    /// The row's column is present and sorts strictly below `value`, byte by byte.
    ColumnBelow {
        /// The row's bucket.
        bucket: u16,
        /// The row's key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The column.
        column: u16,
        /// The bound.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// This one does not hold.
    Not(Box<Condition>),
}

/// What applying a [`Command`] did; every replica decides the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Its conditions held and its writes were applied.
    #[default]
    Applied,
    /// A condition did not hold; nothing was written.
    ConditionFailed,
    /// A [`Check::Record`]: this replica is hashing its shard as of the entry, in the background
    /// ([`ShardStateMachine::recorded_digest`] has the digest once done).
    Recorded,
    /// A [`Check::Compare`]: whether this replica's digest matched (`None`: it had none recorded there,
    /// having restarted or installed a snapshot since, or it is still hashing: then it compares, and
    /// fences itself on a difference, once done).
    Compared(Option<bool>),
    /// A [`Command::Evaluated`] appended in another term than the one it was evaluated in (its leader
    /// lost the role in between): nothing was written. The proposer evaluates it again, as the leader
    /// it is now or at the leader there is now.
    WrongTerm {
        /// The term it was evaluated in.
        evaluated: u64,
        /// The term of the entry.
        appended: u64,
    },
    /// A [`Command::Split`]: the ranges left this shard; `snapshot` of shard `source` (the engine's
    /// pre-shrink snapshot) holds them for the new shard. Also the answer to a split of ranges the
    /// shard no longer owns whose record it keeps (a retry).
    Split {
        /// The engine identity of this replica's shard.
        source: String,
        /// The pre-shrink snapshot.
        snapshot: u64,
    },
    /// A [`Command::Freeze`]: the shard gave everything up; `snapshot` (the engine's pre-shrink
    /// snapshot) holds it for the merge. Also the answer to a freeze of a shard frozen before.
    Frozen {
        /// The pre-shrink snapshot.
        snapshot: u64,
    },
    /// A [`Command::Merge`]: the ranges are this shard's now (on a replica that fenced itself instead,
    /// the group's answer all the same: the others took them in).
    Merged,
    /// A write to a bucket the shard no longer owns (it split away, or the write was routed by an old
    /// map); nothing was written. Route it again.
    NotOwned {
        /// The bucket.
        bucket: u16,
    },
    /// It was malformed or broke a limit (an oversized key or value); nothing was written. Proposers check commands first, so this is a proposer's bug, reported rather than fatal.
    Rejected(String),
}

openraft::declare_raft_types!(
    /// The Raft types of a shard group. Standard leader ids (one leader per term) make a log id the
    /// `(term, index)` pair the node log stores.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        Entry = openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>,
        Vote = openraft::impls::Vote<Self::LeaderId>,
        AsyncRuntime = CairnRuntime,
);

/// The log index a split's new shard starts its group at on the replicas that made it (index 0 is a
/// pristine log's): their logs and state machines start past what a replica without the split's
/// contents has, so such a replica can neither win an election nor be counted caught up before it
/// has installed a snapshot.
pub const SPLIT_START_INDEX: u64 = 10;

/// Starts node log `log`'s log of group `group` (first incarnation) at [`SPLIT_START_INDEX`], unless
/// it has begun already: the log side of [`ShardStateMachine::open_split`]. Durable when it returns.
///
/// With a `first_leader` (the node the split named, [`Command::Split`]), the log also starts with a
/// committed vote for that node's replica in term 1: every replica that makes the group from the split
/// entry writes the same vote, as if that node had won term 1's election with all of them, so it leads
/// at once (openraft restores a leader from its committed vote at start) and the others follow it.
/// Only a pristine log gets it: a replica that voted or logged anything keeps what it has, and one
/// that did not make the group (a snapshot's) starts with no vote, so term 1 still has one leader.
///
/// True if the log started now, with the vote: only then may the named node's replica start as the
/// leader ([`ReplicaConfig::leads_from_start`]); one whose log started before may have led and lost
/// entries to a crash that its followers kept, and must win an election.
pub fn prepare_split_log(
    log: &crate::raft_log::RaftLog,
    group: u64,
    first_leader: Option<u64>,
) -> crate::raft_log::Result<bool> {
    let key = log_key(group, 0);
    let start = crate::raft_log::LogPosition { term: 0, index: SPLIT_START_INDEX };
    let pristine = log.state(key) == (None, None) && log.vote(key).is_none();
    if pristine {
        // The start first: a crash between the two records leaves a started log without the vote,
        // never a vote on a log that did not start.
        log.purge(key, start)?;
    }
    // A log at its start without a vote (this call's, or one a crash or an error left between the two
    // records) has granted and accepted nothing: it gets the vote. Without it, the replica could ask
    // for votes in term 1, while the named node may lead term 1 already.
    let unvoted = log.vote(key).is_none() && log.state(key) == (Some(start), Some(start));
    if unvoted && let Some(node) = first_leader {
        let vote =
            openraft::alias::VoteOf::<TypeConfig>::new_committed(FIRST_SPLIT_TERM, replica_id(node, 0));
        let bytes = encode(&vote).map_err(crate::raft_log::RaftLogError::InvalidArgument)?;
        log.save_vote(key, &bytes)?;
    }
    if pristine || unvoted {
        log.sync()?;
    }
    Ok(pristine && first_leader.is_some())
}

/// The term a split's new group starts in, led by the node the split named.
pub const FIRST_SPLIT_TERM: u64 = 1;

/// Bits of a replica id that hold the node id; the bits above hold the incarnation.
const NODE_BITS: u32 = 48;
/// Largest node id (and group id) a replica id can carry.
pub const MAX_NODE_ID: u64 = (1 << NODE_BITS) - 1;

/// The Raft member id of node `node`'s replica of a group in its `incarnation`: a replica that re-syncs
/// from scratch joins its group again as the next incarnation, so no member id is ever reused, and
/// messages meant for an earlier incarnation are refused. Incarnation 0's id is the node id itself.
pub fn replica_id(node: u64, incarnation: u16) -> u64 {
    (node & MAX_NODE_ID) | (u64::from(incarnation) << NODE_BITS)
}

/// The node a replica id belongs to.
pub fn node_of(replica: u64) -> u64 {
    replica & MAX_NODE_ID
}

/// The incarnation a replica id names.
pub fn incarnation_of(replica: u64) -> u16 {
    (replica >> NODE_BITS) as u16
}

/// The key of a group's incarnation in the node's Raft log: a new incarnation starts with an empty log
/// and no vote.
pub(crate) fn log_key(group: u64, incarnation: u16) -> u64 {
    replica_id(group, incarnation)
}

/// Encodes a Raft entry, vote or message (postcard: compact, and byte strings stay byte strings).
pub(crate) fn encode(value: &impl Serialize) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| format!("cannot encode a raft record: {e}"))
}

/// Decodes what [`encode`] wrote, all of it (trailing bytes are an error: they mean the bytes are not
/// what was encoded as this type).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("cannot decode a raft record: {} bytes left over", rest.len())),
        Err(e) => Err(format!("cannot decode a raft record: {e}")),
    }
}

/// An openraft storage error from anything displayable.
fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_log::{LogPosition, RaftLog, RaftLogConfig};
    use cairn_engine::fs::{FileSystem, MemFs};
    use openraft::alias::VoteOf;
    use std::sync::Arc;

    /// A split's log gets the vote for the node the split named: started now (that node may lead), or
    /// found at its start without it, as a crash between the two records leaves it (it gets the vote,
    /// so its replica never asks for votes in term 1, and does not lead).
    #[test]
    fn split_logs_start_with_the_named_leaders_vote() {
        let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let log = RaftLog::open(RaftLogConfig::new("/raft", fs)).unwrap();
        let voted = |group| decode::<VoteOf<TypeConfig>>(&log.vote(log_key(group, 0)).unwrap()).unwrap();
        let named = VoteOf::<TypeConfig>::new_committed(FIRST_SPLIT_TERM, replica_id(2, 0));
        assert!(prepare_split_log(&log, 10, Some(2)).unwrap(), "started now");
        assert_eq!(voted(10), named);
        assert!(!prepare_split_log(&log, 10, Some(3)).unwrap(), "started before: left as it is");
        assert_eq!(voted(10), named);
        log.purge(log_key(9, 0), LogPosition { term: 0, index: SPLIT_START_INDEX }).unwrap();
        assert!(!prepare_split_log(&log, 9, Some(2)).unwrap(), "started before: does not lead");
        assert_eq!(voted(9), named);
        // A split that named no one: the log starts, with no vote.
        assert!(!prepare_split_log(&log, 8, None).unwrap());
        assert!(log.vote(log_key(8, 0)).is_none());
    }

    #[test]
    fn commands_round_trip_through_the_entry_encoding() {
        let mut batch = cairn_engine::WriteBatch::new();
        batch.put(3, b"k", 0, &[0u8; 256]);
        let condition =
            Condition::ColumnIs { bucket: 3, key: b"k".to_vec(), column: 0, value: Some(b"v".to_vec()) };
        for command in [
            Command::write(&batch),
            Command::conditional(vec![Condition::Any(vec![condition])], &batch),
            Command::check(Check::Record),
            Command::check(Check::Compare { index: 7, digest: "ab".into() }),
            Command::evaluated(3, &batch),
            Command::Freeze { ranges: vec![(4, 7)] },
            Command::Merge { right_group: 2, ranges: vec![(4, 7), (9, 9)] },
            Command::GcThreshold { wall_time: 1_700_000_000_000_000_000 },
        ] {
            let bytes = encode(&command).unwrap();
            assert_eq!(decode::<Command>(&bytes).unwrap(), command);
        }
        // A 256-byte value costs about 256 bytes, not the ~900 a JSON number array took.
        assert!(encode(&Command::write(&batch)).unwrap().len() < 300);
    }
}
