//! The seam between cairn and openraft: the type configuration every shard group uses, and the
//! [`GroupLogStore`] that stores one group's Raft log in the node's shared [`RaftLog`]. Nothing outside
//! this module names an openraft type.

mod apply;
mod log_store;
mod state_machine;
mod transport;

pub use apply::{APPLIED_ROW_KEY, AppliedState, ApplyError, ShardApplier};
pub use log_store::GroupLogStore;
pub use state_machine::{ShardSnapshotRef, ShardStateMachine, Verification};
pub use transport::{GroupLink, GroupNetwork, PeerChannels, RaftService};

/// A shard group's Raft node.
pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;

use serde::{Deserialize, Serialize};

/// A command a shard group replicates: an encoded engine write batch, opaque to Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command({} bytes)", self.0.len())
    }
}

/// What applying a [`Command`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult(pub Vec<u8>);

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
        AsyncRuntime = openraft::impls::TokioRuntime,
);

/// An openraft storage error from anything displayable.
fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
