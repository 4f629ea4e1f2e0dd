//! [`Replica`]: one node's member of one shard group, in cairn's terms: write a command, wait until a
//! read at a chosen consistency level is safe, report status. The server and the simulation use this;
//! neither names an openraft type.

mod gc;
pub use gc::{GcFloor, GcFloorSource, GcPolicy, wall_now};
mod quiet;
pub use quiet::DownNodes;
pub(crate) use quiet::QuietCall;
mod read_rounds;
mod role;
pub use role::Role;
mod stalls;
pub use stalls::STALL_AFTER;
mod tend;
pub use tend::{MoveStep, retire_stored};
mod transfer;
mod types;
pub use types::{CheckOutcome, GroupError, GroupStatus, ReadLevel, ReadPoint, ReplicaConfig, Written};
mod watch;
pub use watch::StatusWatch;

pub(crate) use transfer::{SnapshotFileCall, serve_snapshot_file};

use super::{
    CallError, Command, GroupLogStore, GroupNetwork, MAX_NODE_ID, RaftCall, RaftReply, ShardRaft,
    ShardStateMachine, TypeConfig, Wire, decode, encode, incarnation_of, log_key, node_of, replica_id,
};
use crate::raft_log::RaftLog;
use cairn_engine::Db;
use cairn_proto::raft::RaftCallKind;
use futures_util::FutureExt;
use openraft::LinearizerOption;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A type-erased [`Wire`], so a [`Replica`] can hand calls to the leader without being generic.
trait Forward: Send + Sync {
    fn call(
        &self,
        target: u64,
        addr: String,
        call: RaftCall,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, CallError>> + Send + '_>>;
}

impl<W: Wire> Forward for W {
    fn call(
        &self,
        target: u64,
        addr: String,
        call: RaftCall,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, CallError>> + Send + '_>> {
        Box::pin(async move { Wire::call(self, target, &addr, call, timeout).await })
    }
}

/// Why a forwarded call has no answer from the leader's group.
enum ForwardError {
    /// The call or its reply was lost, or the leader's node does not hold the group.
    Transport(String),
    /// The leader answered with this error.
    Answered(GroupError),
}

/// Starts a Raft node for a replica id and incarnation (its log under the incarnation's key).
type StartRaft =
    dyn Fn(u64, u16) -> Pin<Box<dyn Future<Output = Result<ShardRaft, GroupError>> + Send>> + Send + Sync;

/// One node's replica of one shard group. Clones share it; re-syncing swaps the Raft node inside, so
/// every clone follows the current incarnation.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

struct Shared {
    node: u64,
    group: u64,
    config: ReplicaConfig,
    wire: Arc<dyn Forward>,
    log: Arc<RaftLog>,
    sm: ShardStateMachine,
    start_raft: Box<StartRaft>,
    current: parking_lot::RwLock<Incarnation>,
    // Snapshot bytes fetched from leaders since start.
    snapshot_bytes: AtomicU64,
    // Re-syncs from scratch since start, and the divergences earlier incarnations had seen.
    resyncs: AtomicU64,
    earlier_divergences: AtomicU64,
    stopped: AtomicBool,
    // On the leader: its followers' progress, to tell a stalled stream (see `stalls`).
    stalls: parking_lot::Mutex<stalls::StallWatch>,
    // Held while the Raft node is replaced or stopped.
    lifecycle: tokio::sync::Mutex<()>,
    // Held while a snapshot from the leader is fetched and installed.
    fetching: tokio::sync::Mutex<()>,
    // Read-index rounds shared by concurrent linearizable reads: [quorum-confirmed, lease-confirmed].
    read_rounds: [Arc<read_rounds::ReadRounds>; 2],
    // Whether the group is quiet (see `quiet`).
    quiet: quiet::Quiet,
}

/// The running Raft node of the replica's current incarnation.
#[derive(Clone)]
struct Incarnation {
    raft: ShardRaft,
    id: u64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("group", &self.shared.group).finish_non_exhaustive()
    }
}

fn stopped(e: impl std::fmt::Display) -> GroupError {
    GroupError::Stopped(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Proposes `command` on this node's `raft` and waits until it is applied here, or until `timeout`.
pub(crate) async fn propose_here(
    raft: &ShardRaft,
    command: Command,
    timeout: Duration,
) -> Result<Written, GroupError> {
    match tokio::time::timeout(timeout, raft.client_write(command)).await {
        Err(_) => Err(GroupError::OutcomeUnknown(format!("no answer within {timeout:?}"))),
        Ok(Ok(r)) => Ok(Written { index: r.log_id.index, result: r.data }),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(GroupError::NotLeader { leader: f.leader_id })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)))) => Err(
            GroupError::OutcomeUnknown(format!("the entry was dropped here (leader now {:?})", f.leader_id)),
        ),
        Ok(Err(e)) => Err(GroupError::OutcomeUnknown(e.to_string())),
    }
}

/// The longest a read-index round waits for a quorum.
const MAX_READ_INDEX_WAIT: Duration = Duration::from_secs(60);
/// The longest lease a read may ask for (a peer's figure is untrusted; ours is far shorter).
const MAX_LEASE: Duration = Duration::from_secs(10);
/// How long a new replica of a group another member makes waits to hear from it before it makes the
/// group itself ([`Replica::form`]): longer than that member's first election takes.
pub const FORM_AFTER: Duration = Duration::from_secs(3);

/// Confirms this node still leads (by a quorum round, or without one while its last quorum
/// acknowledgement is younger than `lease`) and returns the index a linearizable read must see.
pub(crate) async fn read_index_here(
    raft: &ShardRaft,
    lease: Option<Duration>,
    timeout: Duration,
) -> Result<u64, GroupError> {
    // Bounded: openraft adds the wait to the clock, and a timeout from a peer is untrusted (a huge
    // one would overflow the instant and stop the group).
    let (timeout, lease) = (timeout.min(MAX_READ_INDEX_WAIT), lease.map(|l| l.min(MAX_LEASE)));
    let option = match lease {
        Some(lease) => LinearizerOption::new(Some(lease), false).with_wait_timeout(Duration::ZERO),
        None => LinearizerOption::new(Some(Duration::ZERO), true).with_wait_timeout(timeout),
    };
    match raft.get_read_linearizer(option).await {
        Ok(l) => Ok(l.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            Err(GroupError::NotLeader { leader: f.leader_id })
        }
        Err(RaftError::APIError(e)) => Err(GroupError::Timeout(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(stopped(e)),
    }
}

/// What a follower sends with a forwarded command: the command and how long the leader may take.
pub(crate) type ProposeCall = (Command, u64);
/// What a follower sends for a read index: the lease (ms; `None`: a quorum round) and the timeout (ms).
pub(crate) type ReadIndexCall = (Option<u64>, u64);
impl Replica {
    /// Starts node `node`'s replica of `group`: its log in the node's `log`, its state in `sm`, its
    /// messages over `wire`. A new replica waits to be added to a group or for [`Replica::bootstrap`].
    /// The replica runs as the incarnation `sm` records (see [`replica_id`]).
    pub async fn start<W: Wire>(
        node: u64,
        group: u64,
        log: Arc<RaftLog>,
        sm: ShardStateMachine,
        wire: W,
        config: ReplicaConfig,
    ) -> Result<Replica, GroupError> {
        if node == 0 || node > MAX_NODE_ID || group > MAX_NODE_ID {
            return Err(GroupError::InvalidConfig(format!(
                "node {node}, group {group}: node ids run from 1 to {MAX_NODE_ID}, group ids to {MAX_NODE_ID}"
            )));
        }
        let raft_config = Arc::new(config.to_openraft(group)?);
        let mut leading = config.to_openraft(group)?;
        leading.enable_leader_restore = Some(true);
        let (leading, lead_once) = (Arc::new(leading), AtomicBool::new(config.leads_from_start));
        let start_raft: Box<StartRaft> = {
            let (wire, log, sm) = (wire.clone(), Arc::clone(&log), sm.clone());
            Box::new(move |id, incarnation| {
                let network = GroupNetwork::new(wire.clone(), group);
                let store = GroupLogStore::new(Arc::clone(&log), log_key(group, incarnation));
                let config = if lead_once.swap(false, Ordering::Relaxed) { &leading } else { &raft_config };
                let (config, sm) = (Arc::clone(config), sm.bound_to(incarnation));
                Box::pin(async move { ShardRaft::new(id, config, network, store, sm).await.map_err(stopped) })
            })
        };
        let incarnation = sm.incarnation();
        let id = replica_id(node, incarnation);
        let raft = start_raft(id, incarnation).await?;
        let shared = Shared {
            node,
            group,
            config,
            wire: Arc::new(wire),
            log,
            sm,
            start_raft,
            current: parking_lot::RwLock::new(Incarnation { raft, id }),
            snapshot_bytes: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            stalls: parking_lot::Mutex::default(),
            earlier_divergences: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            lifecycle: tokio::sync::Mutex::new(()),
            fetching: tokio::sync::Mutex::new(()),
            read_rounds: Default::default(),
            quiet: quiet::Quiet::default(),
        };
        Ok(Replica { shared: Arc::new(shared) })
    }

    /// Makes this replica's group a new group of `members` (node id → address). Only once, on one
    /// member, in its first incarnation; calling it on a group that already has members fails.
    pub async fn bootstrap(&self, members: BTreeMap<u64, String>) -> Result<(), GroupError> {
        if self.incarnation() != 0 {
            return Err(GroupError::Membership("a re-synced replica cannot make a new group".into()));
        }
        let members: BTreeMap<u64, BasicNode> =
            members.into_iter().map(|(id, addr)| (replica_id(id, 0), BasicNode::new(addr))).collect();
        self.raft().initialize(members).await.map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// Makes this replica's new group of `members` (see [`Replica::bootstrap`]) if the replica is new:
    /// at once if `first` (the member that makes it); otherwise only if nothing has reached it after
    /// [`FORM_AFTER`] (the first member may have stopped before its first election, and the group
    /// would wait for it). Every member makes the same first entry (the membership at log position
    /// (0, 0)), so members that both make it agree, and the vote decides who leads.
    pub async fn form(&self, members: BTreeMap<u64, String>, first: bool) -> Result<(), GroupError> {
        if !self.is_new() {
            return Ok(());
        }
        if first {
            return self.bootstrap(members).await;
        }
        let replica = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FORM_AFTER).await;
            if replica.is_stopped() || !replica.is_new() {
                return;
            }
            tracing::info!(group = replica.group(), "nothing reached this new replica: it makes the group");
            // Something that reached it meanwhile makes this fail, harmlessly.
            if let Err(e) = replica.bootstrap(members).await {
                tracing::debug!(group = replica.group(), error = %e, "not made here");
            }
        });
        Ok(())
    }

    /// True if this replica has never been part of a group: first incarnation, no vote, no log. Only
    /// such a replica may [`Replica::bootstrap`].
    pub fn is_new(&self) -> bool {
        let key = log_key(self.shared.group, 0);
        self.incarnation() == 0
            && self.shared.log.vote(key).is_none()
            && matches!(self.shared.log.state(key), (None, None))
    }

    /// The current incarnation's Raft node and member id.
    fn current(&self) -> Incarnation {
        self.shared.current.read().clone()
    }

    /// The group.
    pub fn group(&self) -> u64 {
        self.shared.group
    }

    /// This replica's member id in its group (node and incarnation, see [`replica_id`]).
    pub fn id(&self) -> u64 {
        self.shared.current.read().id
    }

    /// This replica's incarnation.
    pub fn incarnation(&self) -> u16 {
        incarnation_of(self.id())
    }

    /// How long a snapshot call may take.
    pub(crate) fn snapshot_timeout(&self) -> Duration {
        self.shared.config.snapshot_timeout
    }

    /// The openraft handle of the current incarnation, for the transport's registry and tests.
    pub fn raft(&self) -> ShardRaft {
        self.shared.current.read().raft.clone()
    }

    /// True once the replica was shut down or retired (not while it re-syncs into a new incarnation,
    /// when its Raft node is briefly down).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// What applying this replica's entries does from now on that its owner acts on.
    pub fn effects(&self) -> tokio::sync::broadcast::Receiver<crate::raft::Effect> {
        self.shared.sm.effects()
    }

    /// The shard's engine as of now (installing a snapshot replaces it).
    pub fn db(&self) -> Arc<Db> {
        self.shared.sm.db()
    }

    /// The state machine.
    pub fn state_machine(&self) -> &ShardStateMachine {
        &self.shared.sm
    }

    /// Proposes `command` and waits until it is applied, or until `timeout`. A follower hands the command
    /// to the leader it knows of (one hop: a leader that lost its role answers `NotLeader`) and answers
    /// once the leader applied it; a read here at `ReadLevel::AtLeast(index)` then sees it.
    pub async fn write(&self, command: Command, timeout: Duration) -> Result<Written, GroupError> {
        match self.leader_elsewhere() {
            None => propose_here(&self.awake(timeout).await, command, timeout).await,
            Some((leader, addr)) => {
                let payload = encode(&(command, millis(timeout))).map_err(GroupError::OutcomeUnknown)?;
                self.forward(leader, addr, RaftCallKind::Propose, payload, timeout).await.map_err(|e| match e
                {
                    // The leader may have received it.
                    ForwardError::Transport(why) => {
                        self.suspect_leader();
                        GroupError::OutcomeUnknown(format!("forwarding to node {}: {why}", node_of(leader)))
                    }
                    ForwardError::Answered(e) => e,
                })
            }
        }
    }

    /// The term this replica leads its group in, once it may evaluate requests for it: it is the leader
    /// and has applied an entry of its own term, so every entry of an earlier term is applied and its
    /// state machine holds everything any earlier leader wrote. A leader just elected waits (up to
    /// `timeout`) for its first entry to apply; a replica that does not lead answers `NotLeader`.
    pub async fn leading_term(&self, timeout: Duration) -> Result<u64, GroupError> {
        if let Some(why) = self.shared.sm.check_status().fenced {
            return Err(GroupError::Fenced(why));
        }
        let Incarnation { raft, id } = self.current();
        let ready = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.last_applied.as_ref().is_some_and(|l| l.committed_leader_id().term == m.current_term)
        };
        let waited = raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader != Some(id) || ready(m), "the leader's first entry applied")
            .await;
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        if m.current_leader != Some(id) {
            return Err(GroupError::NotLeader { leader: m.current_leader });
        }
        match waited {
            Ok(_) if ready(&m) => Ok(m.current_term),
            _ => Err(GroupError::Timeout(format!(
                "leader of term {} has not applied its first entry within {timeout:?}",
                m.current_term
            ))),
        }
    }

    /// Proposes `command` here, never forwarding it: for commands this replica evaluated as the
    /// leader ([`Command::Evaluated`]). `NotLeader` if it no longer leads.
    pub async fn propose_here(&self, command: Command, timeout: Duration) -> Result<Written, GroupError> {
        propose_here(&self.awake(timeout).await, command, timeout).await
    }

    /// Hands `request` (the layer above's encoding) to the leader's node, whose [`RequestHandler`]
    /// evaluates it there and answers; returns that answer. `NotLeader` if no other replica is known
    /// to lead (nothing was sent); `OutcomeUnknown` if the call failed once sent (the leader may
    /// have acted on it).
    pub async fn forward_request(&self, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, GroupError> {
        let Some((leader, addr)) = self.leader_elsewhere() else {
            let leader = self.raft().metrics().borrow_watched().current_leader;
            return Err(GroupError::NotLeader { leader });
        };
        let call = RaftCall {
            group: self.shared.group,
            kind: RaftCallKind::Request as i32,
            payload: request,
            target: leader,
        };
        let node = node_of(leader);
        match self.shared.wire.call(leader, addr, call, timeout).await {
            Ok(reply) if reply.error.is_empty() => Ok(reply.payload),
            // The leader's node refused it before acting (the group is not there, another incarnation).
            Ok(reply) => {
                tracing::debug!(node, error = %reply.error, "forwarded request refused");
                Err(GroupError::NotLeader { leader: None })
            }
            Err(CallError::NotSent(why)) => {
                self.suspect_leader();
                tracing::debug!(node, %why, "forwarded request not sent");
                Err(GroupError::NotLeader { leader: None })
            }
            Err(CallError::Lost(why)) => {
                self.suspect_leader();
                Err(GroupError::OutcomeUnknown(format!("forwarding to node {node}: {why}")))
            }
        }
    }

    /// The leader this replica knows of (its member id) and its address, when that is another replica.
    fn leader_elsewhere(&self) -> Option<(u64, String)> {
        let Incarnation { raft, id } = self.current();
        let leader = raft.metrics().borrow_watched().current_leader.filter(|l| *l != id)?;
        Some((leader, self.address_of(leader)?))
    }

    /// Member `member`'s address in the membership this replica knows.
    fn address_of(&self, member: u64) -> Option<String> {
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&member).map(|n| n.addr.clone())
    }

    /// Sends one call of `kind` for this group to member `target` (0: whichever replica the node at
    /// `addr` has) and returns its reply's payload, or why there is none (transport failure, or the
    /// receiving service's error).
    async fn send(
        &self,
        target: u64,
        addr: String,
        kind: RaftCallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let call = RaftCall { group: self.shared.group, kind: kind as i32, payload, target };
        let reply = self.shared.wire.call(target, addr, call, timeout).await.map_err(|e| e.to_string())?;
        if reply.error.is_empty() { Ok(reply.payload) } else { Err(reply.error) }
    }

    /// Sends a forwarded call to member `leader` and decodes its `Result` answer.
    async fn forward<T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        addr: String,
        kind: RaftCallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, ForwardError> {
        let reply = self.send(leader, addr, kind, payload, timeout).await.map_err(ForwardError::Transport)?;
        decode::<Result<T, GroupError>>(&reply)
            .map_err(ForwardError::Transport)?
            .map_err(ForwardError::Answered)
    }

    /// True if this replica votes in its group (learners and replicas not yet in a group do not).
    fn is_voter(&self) -> bool {
        let Incarnation { raft, id } = self.current();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().voter_ids().any(|v| v == id)
    }

    /// Waits until a read at `level` may be served from [`Replica::db`], or until `timeout`.
    pub async fn read_point(&self, level: ReadLevel, timeout: Duration) -> Result<ReadPoint, GroupError> {
        if let Some(why) = self.shared.sm.check_status().fenced {
            return Err(GroupError::Fenced(why));
        }
        let target = match level {
            ReadLevel::Eventual => {
                // A learner may be far behind (a re-synced replica starts empty): it serves only reads
                // that wait for an index.
                if !self.is_voter() {
                    return Err(GroupError::CatchingUp(format!(
                        "node {} is not a voter of group {} yet",
                        self.shared.node, self.shared.group
                    )));
                }
                None
            }
            ReadLevel::AtLeast(index) => {
                let last_log = self.raft().metrics().borrow_watched().last_log_index.unwrap_or(0);
                if index > last_log {
                    // Not even in this replica's log: either it lags, or no leader ever wrote there.
                    // The leader's commit index tells which (a write's index is committed before the
                    // write is acknowledged).
                    let committed = self.shared_read_index(None, timeout).await?;
                    if index > committed {
                        return Err(GroupError::BeyondCommitted { index, committed });
                    }
                }
                Some(index)
            }
            ReadLevel::Strong | ReadLevel::Lease => {
                let lease = (level == ReadLevel::Lease).then(|| self.shared.config.lease());
                if lease.is_some() && self.leader_elsewhere().is_none() {
                    // The leader's own lease check is local and cheap: no round to share.
                    Some(read_index_here(&self.awake(timeout).await, lease, timeout).await?)
                } else {
                    Some(self.shared_read_index(lease, timeout).await?)
                }
            }
        };
        if let Some(index) = target {
            self.raft()
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "read-your-writes")
                .await
                .map_err(|e| {
                    if self.is_stopped() {
                        GroupError::Stopped(format!("shard {}'s replica here was stopped", self.shared.group))
                    } else {
                        GroupError::Timeout(format!("index {index} not applied here: {e}"))
                    }
                })?;
        }
        // Retired while it waited: its engine is the next incarnation's, empty.
        if self.is_stopped() {
            return Err(GroupError::Stopped(format!(
                "shard {}'s replica here was stopped",
                self.shared.group
            )));
        }
        Ok(self.point(target))
    }

    /// The index a linearizable read started now may serve from, from a read-index round shared with
    /// the concurrent reads at the same level (see [`read_rounds`]).
    async fn shared_read_index(&self, lease: Option<Duration>, timeout: Duration) -> Result<u64, GroupError> {
        let replica = self.clone();
        let round = self.shared.read_rounds[usize::from(lease.is_some())]
            .join(move || async move { replica.read_index(lease, timeout).await }.boxed());
        tokio::time::timeout(timeout, round).await.map_err(|_| {
            GroupError::Timeout(format!("no read index for group {} in {timeout:?}", self.shared.group))
        })?
    }

    /// One read-index round: the index a linearizable read started now may serve from, once applied.
    /// `lease`: the leader may answer from its lease instead of a quorum round.
    async fn read_index(&self, lease: Option<Duration>, timeout: Duration) -> Result<u64, GroupError> {
        match self.leader_elsewhere() {
            // A follower read: the leader confirms its role and names the index to wait for.
            Some((leader, addr)) => {
                let payload = encode(&(lease.map(millis), millis(timeout))).map_err(stopped)?;
                self.forward::<u64>(leader, addr, RaftCallKind::ReadIndex, payload, timeout).await.map_err(
                    |e| match e {
                        ForwardError::Transport(why) => {
                            self.suspect_leader();
                            GroupError::Timeout(format!("read index from node {}: {why}", node_of(leader)))
                        }
                        ForwardError::Answered(e) => e,
                    },
                )
            }
            None => read_index_here(&self.awake(timeout).await, lease, timeout).await,
        }
    }

    fn point(&self, at_least: Option<u64>) -> ReadPoint {
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |id| id.index).max(at_least.unwrap_or(0));
        let committed = m.cluster_committed.as_ref().map_or(0, |id| id.index);
        ReadPoint { applied, behind: committed.saturating_sub(applied) }
    }

    /// On the leader: for each other member's node, how long ago it last acknowledged a heartbeat or
    /// an append (`None`: never since this leader took over). `None` on other replicas.
    pub fn heard_from(&self) -> Option<BTreeMap<u64, Option<Duration>>> {
        use openraft::rt::Instant as _;
        let Incarnation { raft, id } = self.current();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let heartbeats = m.heartbeat.as_ref()?;
        Some(
            heartbeats
                .iter()
                .filter(|(member, _)| **member != id)
                .map(|(member, at)| (node_of(*member), at.as_ref().map(|t| t.elapsed())))
                .collect(),
        )
    }

    /// This replica's view of the group, in node ids.
    pub fn status(&self) -> GroupStatus {
        let Incarnation { raft, id } = self.current();
        let m = raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().map(node_of).collect();
        let learners: BTreeSet<u64> = membership.learner_ids().map(node_of).collect();
        let last_log = m.last_log_index;
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(member, _)| **member != m.id)
                    .map(|(member, matched)| {
                        let matched = matched.as_ref().map_or(0, |l| l.index + 1);
                        (node_of(*member), last_log.map_or(0, |l| l + 1).saturating_sub(matched))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut checks = self.shared.sm.check_status();
        checks.divergences += self.shared.earlier_divergences.load(Ordering::Relaxed);
        GroupStatus {
            group: self.shared.group,
            node: self.shared.node,
            incarnation: incarnation_of(id),
            role,
            term: m.current_term,
            leader: m.current_leader.map(node_of),
            last_log,
            committed: m.local_committed.map(|id| id.index),
            applied: m.last_applied.map(|id| id.index),
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
            voters,
            learners,
            lag,
            stalled: self.shared.stalls.lock().stalled(),
            checks,
            snapshots_installed: self.shared.sm.snapshots_installed(),
            snapshot_bytes_received: self.shared.snapshot_bytes.load(Ordering::Relaxed),
            resyncs: self.shared.resyncs.load(Ordering::Relaxed),
            quiet: self.is_quiet(),
        }
    }

    /// If this replica leads its group, hands leadership to the most caught-up other voter and waits
    /// (at most `timeout`) until it has left this replica; true if another replica leads afterwards.
    /// For a clean stop: the group keeps a leader instead of waiting out an election timeout.
    pub async fn hand_over(&self, timeout: Duration) -> bool {
        self.transfer_leadership(None, timeout).await
    }

    /// If this replica leads its group, hands leadership to the voter on node `node` and waits (at
    /// most `timeout`) until another replica leads; true if one does afterwards. False (nothing done)
    /// if this replica does not lead or no voter runs on `node`. For balancing leaders over nodes.
    pub async fn hand_to(&self, node: u64, timeout: Duration) -> bool {
        let leads = {
            let m = self.raft().metrics().borrow_watched().clone();
            m.current_leader == Some(m.id)
        };
        leads && self.transfer_leadership(Some(node), timeout).await
    }

    /// Hands leadership to the voter on `node` (or, with `None`, the most caught-up other voter) if
    /// this replica leads, and waits (at most `timeout`) until another replica leads.
    async fn transfer_leadership(&self, node: Option<u64>, timeout: Duration) -> bool {
        let raft = self.awake(timeout).await;
        let id = self.id();
        let target = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            if m.current_leader != Some(id) {
                return m.current_leader.is_some();
            }
            let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
            let matched = |member: &u64| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(member).cloned().flatten())
                    .map_or(0, |l| l.index + 1)
            };
            voters
                .into_iter()
                .filter(|v| *v != id && node.is_none_or(|n| node_of(*v) == n))
                .max_by_key(|v| (matched(v), std::cmp::Reverse(*v)))
        };
        let Some(target) = target else { return false };
        if raft.trigger().transfer_leader(target).await.is_err() {
            return false;
        }
        let mut metrics = raft.metrics();
        let moved = async {
            loop {
                let leader = metrics.borrow_watched().current_leader;
                if leader.is_some_and(|l| l != id) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        };
        let moved = tokio::time::timeout(timeout, moved).await.unwrap_or(false);
        if !moved {
            self.transfer_unfinished().await;
        }
        moved
    }

    /// Stops the replica (its storage stays as it is).
    pub async fn shutdown(&self) -> Result<(), GroupError> {
        self.shared.stopped.store(true, Ordering::Release);
        let _guard = self.shared.lifecycle.lock().await;
        self.raft().shutdown().await.map_err(stopped)
    }
}
