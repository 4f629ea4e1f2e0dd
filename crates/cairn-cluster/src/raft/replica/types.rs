//! A replica's public types: its configuration, what its operations fail with, read levels and
//! points, a write's outcome, its status and a consistency check's outcome.

use super::{DownNodes, GcPolicy, Role};
use crate::raft::{CheckStatus, CommandResult};
use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Raft timings and log retention of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Leader heartbeat period. Default 50 ms.
    pub heartbeat: Duration,
    /// Election timeouts are drawn from `[min, max)`. Default 500 ms to 1 s.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries since the last. Default 100 000 (etcd's default
    /// snapshot count): each snapshot flushes the shard's memtable and syncs its files on every replica,
    /// and at 10 000 those syncs, competing with the log's, doubled a 3-node cluster's put p99 under load.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, so a lagging follower can catch up from the log. Default 1 000.
    /// (Only entries a consistency check verified are dropped at all, see [`Replica::tend`].)
    pub keep_behind_snapshot: u64,
    /// How long a snapshot call (the follower fetching and installing it) may take. Default 60 s.
    pub snapshot_timeout: Duration,
    /// A leader runs a consistency check at least this often, besides the one after each snapshot
    /// (see [`Replica::tend`]). Zero: only after snapshots. Default zero.
    pub check_every: Duration,
    /// The leader promotes a caught-up, answering learner that re-synced from scratch (a later
    /// incarnation, on a node without a voter) on its own ([`Replica::tend`]). Default true. Off where
    /// something else decides the voters (a cluster's shard map: its reconciler promotes with
    /// [`Replica::promote`], and a move's destination must not vote before the move says so).
    pub promote_resynced: bool,
    /// A leader whose log has not moved for this long, with every follower on a live node caught up,
    /// makes its group quiet: no heartbeats, no election timeouts, until something happens (see
    /// [`quiet`]). Zero: never. Default zero.
    pub quiesce_after: Duration,
    /// The nodes believed down (the node's liveness view), for quiet groups.
    pub down_nodes: DownNodes,
    /// The replica's first Raft start makes it its group's leader if its log holds a committed vote
    /// for it (openraft's leader restore). Only for a split's new group started from its split entry
    /// with the vote [`prepare_split_log`](crate::raft::prepare_split_log) has just written for this
    /// node, whose log and state machine hold nothing past their start: a replica that ran before must
    /// win a new election (see `enable_leader_restore` below). Default false.
    pub leads_from_start: bool,
    /// How old versions are collected: the leader proposes the shard's GC threshold from it (see
    /// [`gc`]). Default: never collected.
    pub gc: GcPolicy,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 100_000,
            keep_behind_snapshot: 1_000,
            snapshot_timeout: Duration::from_secs(60),
            check_every: Duration::ZERO,
            promote_resynced: true,
            quiesce_after: Duration::ZERO,
            down_nodes: DownNodes::default(),
            leads_from_start: false,
            gc: GcPolicy::default(),
        }
    }
}

impl ReplicaConfig {
    pub(super) fn to_openraft(&self, group: u64) -> Result<openraft::Config, GroupError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: format!("group-{group}"),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            // Never purged by openraft on its own: `Replica::tend` purges up to verified positions.
            max_in_snapshot_log_to_keep: u64::MAX,
            // A restarted leader must win a new election. Restoring leadership in the old term is
            // unsafe here: the state machine does not flush on apply (WAL off) and the commit index
            // is not persisted, so a restored leader's commit index starts at its (rolled back)
            // applied index, and it would serve reads from before writes it had acknowledged. The
            // simulation found this (a lost acknowledged write seen by linearizable reads).
            enable_leader_restore: Some(false),
            // A follower fetches a snapshot's files within the snapshot call (resuming per file when a
            // call times out), so the call gets room for a shard's worth of data.
            install_snapshot_timeout: ms(self.snapshot_timeout),
            ..Default::default()
        };
        config.validate().map_err(|e| GroupError::InvalidConfig(e.to_string()))
    }

    /// How old the leader's last quorum acknowledgement may be for a lease read: half the shortest
    /// election timeout, so the lease ends well before any follower can start an election, with room
    /// for clock-rate differences (the clock is monotonic).
    pub(super) fn lease(&self) -> Duration {
        self.election_timeout.0 / 2
    }
}

/// What a group operation can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum GroupError {
    /// This replica is not the leader; nothing was proposed. Retry at `leader` (if known).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica knows of.
        leader: Option<u64>,
    },
    /// The write was proposed but its outcome is unknown (leadership changed, the replica stopped, or
    /// it timed out): it may or may not be applied. Read before retrying a non-idempotent write.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The replica could not reach the required state in time (no quorum, or it lags).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The replica has stopped.
    #[error("replica stopped: {0}")]
    Stopped(String),
    /// Bad settings.
    #[error("invalid raft config: {0}")]
    InvalidConfig(String),
    /// A consistency check found this replica's contents differ from the leader's: it serves no reads
    /// until re-synced.
    #[error("replica fenced: {0}")]
    Fenced(String),
    /// A membership request was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// This replica is a learner catching up (a re-synced replica starts empty): it serves only reads
    /// that wait for an index.
    #[error("replica catching up: {0}")]
    CatchingUp(String),
    /// A read asked to wait for a log index the group has not committed (a made-up or foreign token):
    /// refused at once rather than waited for.
    #[error("log index {index} is beyond what the group has committed ({committed})")]
    BeyondCommitted {
        /// The index asked for.
        index: u64,
        /// The group's commit index, as its leader answered.
        committed: u64,
    },
}

/// A read's required freshness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLevel {
    /// Linearizable, confirmed by a quorum round (ReadIndex). Leader only.
    Strong,
    /// Linearizable while the leader's lease holds (no round trip). Leader only.
    Lease,
    /// Whatever this replica has applied: possibly stale.
    Eventual,
    /// At least the state after log index `.0` (read-your-writes: the index a write returned).
    AtLeast(u64),
}

/// Where a read is served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPoint {
    /// The last log index this replica has applied (what the read sees, or newer).
    pub applied: u64,
    /// Entries the leader last reported committed that this replica has not applied yet (0 when
    /// current): the staleness of an eventual read.
    pub behind: u64,
}

/// A write's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// Its log index: a read at `ReadLevel::AtLeast(index)` sees it.
    pub index: u64,
    /// What applying it did.
    pub result: CommandResult,
}

/// One group member's view of the group (serialized as the server's `/_status` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    /// The group.
    pub group: u64,
    /// This node.
    pub node: u64,
    /// This replica's incarnation (it grows each time the replica re-syncs from scratch).
    pub incarnation: u16,
    /// Its part in the group.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    /// Last log index.
    pub last_log: Option<u64>,
    /// Last index known committed.
    pub committed: Option<u64>,
    /// Last index applied.
    pub applied: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot: Option<u64>,
    /// Entries up to here are purged from the log.
    pub purged: Option<u64>,
    /// Voters.
    pub voters: BTreeSet<u64>,
    /// Learners.
    pub learners: BTreeSet<u64>,
    /// On the leader: for each other member, how many entries it lags the leader's log.
    pub lag: BTreeMap<u64, u64>,
    /// On the leader: members whose replication stream is stalled (they answer heartbeats and lag,
    /// but took no entry for [`STALL_AFTER`]).
    pub stalled: BTreeSet<u64>,
    /// What consistency checks found here.
    #[serde(flatten)]
    pub checks: CheckStatus,
    /// Snapshots this replica installed from a leader since it started.
    pub snapshots_installed: u64,
    /// Snapshot bytes this replica fetched from leaders since it started.
    pub snapshot_bytes_received: u64,
    /// Times this replica re-synced from scratch since it started.
    pub resyncs: u64,
    /// Whether the group is quiet here (its timers stopped, see [`ReplicaConfig::quiesce_after`]).
    pub quiet: bool,
}

/// A consistency check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The index every replica hashed at.
    pub index: u64,
    /// The digest a majority of voters recorded there (what every replica was compared with).
    pub digest: String,
}
