//! [`Replica`]: one node's member of one shard group, in cairn's terms: write a command, wait until a
//! read at a chosen consistency level is safe, report status. The server and the simulation use this;
//! neither names an openraft type.

use super::{
    Check, CheckStatus, Command, CommandResult, GroupLogStore, GroupNetwork, RaftCall, RaftReply, ShardRaft,
    ShardSnapshotRef, ShardStateMachine, TypeConfig, Wire, decode, encode,
};
use crate::raft_log::RaftLog;
use cairn_engine::Db;
use cairn_proto::raft::RaftCallKind;
use openraft::LinearizerOption;
use openraft::alias::SnapshotMetaOf;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Raft timings and log retention of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Leader heartbeat period. Default 50 ms.
    pub heartbeat: Duration,
    /// Election timeouts are drawn from `[min, max)`. Default 500 ms to 1 s.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries since the last. Default 10 000.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, so a lagging follower can catch up from the log. Default 1 000.
    pub keep_behind_snapshot: u64,
    /// How long a snapshot call (the follower fetching and installing it) may take. Default 60 s.
    pub snapshot_timeout: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            snapshot_timeout: Duration::from_secs(60),
        }
    }
}

impl ReplicaConfig {
    fn to_openraft(&self, group: u64) -> Result<openraft::Config, GroupError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: format!("group-{group}"),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
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
    fn lease(&self) -> Duration {
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
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
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
    /// What consistency checks found here.
    #[serde(flatten)]
    pub checks: CheckStatus,
    /// Snapshots this replica installed from a leader since it started.
    pub snapshots_installed: u64,
    /// Snapshot bytes this replica fetched from leaders since it started.
    pub snapshot_bytes_received: u64,
}

/// Wakes when a replica's status (role, term, leader, log indexes) changes.
pub struct StatusWatch {
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>,
}

impl StatusWatch {
    /// Waits for the next change; false once the replica has stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// The term and leader as of the last change seen.
    pub fn leadership(&self) -> (u64, Option<u64>) {
        let m = self.rx.borrow_watched();
        (m.current_term, m.current_leader)
    }
}

/// A consistency check's outcome, as the leader saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The index every replica hashed at.
    pub index: u64,
    /// The leader's digest there.
    pub digest: String,
}

/// A type-erased [`Wire`], so a [`Replica`] can hand calls to the leader without being generic.
trait Forward: Send + Sync {
    fn call(
        &self,
        target: u64,
        addr: String,
        call: RaftCall,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, String>> + Send + '_>>;
}

impl<W: Wire> Forward for W {
    fn call(
        &self,
        target: u64,
        addr: String,
        call: RaftCall,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, String>> + Send + '_>> {
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

/// One node's replica of one shard group.
#[derive(Clone)]
pub struct Replica {
    raft: ShardRaft,
    sm: ShardStateMachine,
    node: u64,
    group: u64,
    config: ReplicaConfig,
    wire: Arc<dyn Forward>,
    // Snapshot bytes fetched from leaders since start.
    snapshot_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("group", &self.group).finish_non_exhaustive()
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

/// Confirms this node still leads (by a quorum round, or without one while its last quorum
/// acknowledgement is younger than `lease`) and returns the index a linearizable read must see.
pub(crate) async fn read_index_here(
    raft: &ShardRaft,
    lease: Option<Duration>,
    timeout: Duration,
) -> Result<u64, GroupError> {
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

/// A snapshot file request: shard db id, snapshot id, the file (`None`: the list) and the offset.
pub(crate) type SnapshotFileCall = (String, u64, Option<String>, u64);

/// Most bytes one snapshot file call returns.
const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Answers a follower's snapshot file call from this replica's current snapshot: the file list
/// (`Vec<(name, size)>`) or up to [`SNAPSHOT_CHUNK`] bytes of one file.
pub(crate) fn serve_snapshot_file(sm: &ShardStateMachine, call: SnapshotFileCall) -> Result<Vec<u8>, String> {
    let (db_id, snapshot_id, name, offset) = call;
    let (fs, dir) = sm.current_snapshot_dir(&db_id, snapshot_id)?;
    let names = fs.list(&dir).map_err(|e| e.to_string())?;
    let Some(name) = name else {
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let len = fs.open(&dir.join(&name)).map_err(|e| e.to_string())?.len();
            files.push((name, len));
        }
        return encode(&files);
    };
    // Only files of this snapshot, by their listed names.
    if !names.contains(&name) {
        return Err(format!("snapshot {db_id}/{snapshot_id} has no file {name:?}"));
    }
    let file = fs.open(&dir.join(&name)).map_err(|e| e.to_string())?;
    let len = file.len().saturating_sub(offset).min(SNAPSHOT_CHUNK);
    let mut chunk = vec![0u8; len as usize];
    file.read_exact_at(offset, &mut chunk).map_err(|e| e.to_string())?;
    encode(&chunk)
}

/// What a follower sends with a forwarded command: the command and how long the leader may take.
pub(crate) type ProposeCall = (Command, u64);
/// What a follower sends for a read index: the lease (ms; `None`: a quorum round) and the timeout (ms).
pub(crate) type ReadIndexCall = (Option<u64>, u64);

impl Replica {
    /// Starts node `node`'s replica of `group`: its log in the node's `log`, its state in `sm`, its
    /// messages over `wire`. A new replica waits to be added to a group or for [`Replica::bootstrap`].
    pub async fn start<W: Wire>(
        node: u64,
        group: u64,
        log: Arc<RaftLog>,
        sm: ShardStateMachine,
        wire: W,
        config: ReplicaConfig,
    ) -> Result<Replica, GroupError> {
        let raft_config = Arc::new(config.to_openraft(group)?);
        let network = GroupNetwork::new(wire.clone(), group);
        let raft = ShardRaft::new(node, raft_config, network, GroupLogStore::new(log, group), sm.clone())
            .await
            .map_err(stopped)?;
        Ok(Replica { raft, sm, node, group, config, wire: Arc::new(wire), snapshot_bytes: Arc::default() })
    }

    /// Makes this replica's group a new group of `members` (node id → address). Only once, on one
    /// member; calling it on a group that already has members fails.
    pub async fn bootstrap(&self, members: BTreeMap<u64, String>) -> Result<(), GroupError> {
        let members: BTreeMap<u64, BasicNode> =
            members.into_iter().map(|(id, addr)| (id, BasicNode::new(addr))).collect();
        self.raft.initialize(members).await.map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// The group.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// How long a snapshot call may take.
    pub(crate) fn snapshot_timeout(&self) -> Duration {
        self.config.snapshot_timeout
    }

    /// The openraft handle, for the transport's registry.
    pub fn raft(&self) -> &ShardRaft {
        &self.raft
    }

    /// The shard's engine as of now (installing a snapshot replaces it).
    pub fn db(&self) -> Arc<Db> {
        self.sm.db()
    }

    /// The state machine.
    pub fn state_machine(&self) -> &ShardStateMachine {
        &self.sm
    }

    /// Proposes `command` and waits until it is applied, or until `timeout`. A follower hands the command
    /// to the leader it knows of (one hop: a leader that lost its role answers `NotLeader`) and answers
    /// once the leader applied it; a read here at `ReadLevel::AtLeast(index)` then sees it.
    pub async fn write(&self, command: Command, timeout: Duration) -> Result<Written, GroupError> {
        match self.leader_elsewhere() {
            None => propose_here(&self.raft, command, timeout).await,
            Some((leader, addr)) => {
                let payload = encode(&(command, millis(timeout))).map_err(GroupError::OutcomeUnknown)?;
                self.forward(leader, addr, RaftCallKind::Propose, payload, timeout).await.map_err(|e| match e
                {
                    // The leader may have received it.
                    ForwardError::Transport(why) => {
                        GroupError::OutcomeUnknown(format!("forwarding to node {leader}: {why}"))
                    }
                    ForwardError::Answered(e) => e,
                })
            }
        }
    }

    /// The leader this replica knows of and its address, when that is another node.
    fn leader_elsewhere(&self) -> Option<(u64, String)> {
        let leader = self.raft.metrics().borrow_watched().current_leader.filter(|l| *l != self.node)?;
        Some((leader, self.address_of(leader)?))
    }

    /// Node `node`'s address in the membership this replica knows.
    fn address_of(&self, node: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&node).map(|n| n.addr.clone())
    }

    /// Sends one call of `kind` for this group to node `target` and returns its reply's payload, or why
    /// there is none (transport failure, or the receiving service's error).
    async fn send(
        &self,
        target: u64,
        addr: String,
        kind: RaftCallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let call = RaftCall { group: self.group, kind: kind as i32, payload };
        let reply = self.wire.call(target, addr, call, timeout).await?;
        if reply.error.is_empty() { Ok(reply.payload) } else { Err(reply.error) }
    }

    /// Copies the files of snapshot `remote` from node `leader` into this replica's staging volume
    /// (see [`ShardStateMachine::staging_dir`]) and returns the snapshot as found there. Files already
    /// staged whole are kept, so an interrupted transfer resumes where it stopped (per file); memory
    /// holds one chunk at a time. `CURRENT` comes last, so a staged snapshot is complete only if whole.
    pub(crate) async fn stage_snapshot(
        &self,
        leader: u64,
        meta: &SnapshotMetaOf<TypeConfig>,
        remote: ShardSnapshotRef,
        timeout: Duration,
    ) -> Result<ShardSnapshotRef, String> {
        // A new replica knows no members yet: the snapshot's membership names the leader's address.
        let addr = meta.last_membership.membership().get_node(&leader).map(|n| n.addr.clone());
        let addr = addr
            .or_else(|| self.address_of(leader))
            .ok_or_else(|| format!("node {leader} is not in the group's membership"))?;
        let fs = self.sm.fs();
        let staging =
            cairn_engine::resolve_volume(&cairn_engine::Volume::file_url(&self.sm.staging_dir()), &fs)
                .map_err(|e| e.to_string())?;
        let dir = cairn_engine::snapshot_dir(&staging, &remote.db_id, remote.snapshot_id);
        fs.create_dir_all(&dir).map_err(|e| e.to_string())?;
        let call = |name: Option<String>, offset: u64| {
            let payload = encode(&(remote.db_id.clone(), remote.snapshot_id, name, offset));
            let addr = addr.clone();
            async move { self.send(leader, addr, RaftCallKind::SnapshotFile, payload?, timeout).await }
        };
        let mut files: Vec<(String, u64)> = decode(&call(None, 0).await?)?;
        files.sort_by_key(|(name, _)| name == "CURRENT");
        for (name, size) in files {
            if name.contains('/') || name.starts_with('.') || name.ends_with(".part") {
                return Err(format!("the leader listed a bad snapshot file name {name:?}"));
            }
            let path = dir.join(&name);
            if fs.exists(&path).map_err(|e| e.to_string())?
                && fs.open(&path).map_err(|e| e.to_string())?.len() == size
            {
                continue;
            }
            let part = dir.join(format!("{name}.part"));
            let mut out = fs.create(&part).map_err(|e| e.to_string())?;
            let mut offset = 0;
            while offset < size {
                let chunk: Vec<u8> = decode(&call(Some(name.clone()), offset).await?)?;
                if chunk.is_empty() {
                    return Err(format!("snapshot file {name} ended at {offset} of {size} bytes"));
                }
                out.append(&chunk).map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
                self.snapshot_bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            out.sync().map_err(|e| e.to_string())?;
            drop(out);
            fs.rename(&part, &path).map_err(|e| e.to_string())?;
        }
        fs.sync_dir(&dir).map_err(|e| e.to_string())?;
        Ok(ShardSnapshotRef { volume: staging.url, ..remote })
    }

    /// Removes every staged snapshot (after an install: the shard holds its own links to the files).
    pub(crate) fn clear_staging(&self) -> Result<(), String> {
        let (fs, staging) = (self.sm.fs(), self.sm.staging_dir());
        let err = |e: cairn_engine::Error| e.to_string();
        if !fs.exists(&staging).map_err(err)? {
            return Ok(());
        }
        for shard in fs.list(&staging).map_err(err)? {
            let shard = staging.join(shard);
            for snapshot in fs.list(&shard).map_err(err)? {
                let snapshot = shard.join(snapshot);
                for file in fs.list(&snapshot).map_err(err)? {
                    fs.remove(&snapshot.join(file)).map_err(err)?;
                }
                fs.remove_dir(&snapshot).map_err(err)?;
            }
            fs.remove_dir(&shard).map_err(err)?;
        }
        Ok(())
    }

    /// Sends a forwarded call to `leader` and decodes its `Result` answer.
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

    /// Waits until a read at `level` may be served from [`Replica::db`], or until `timeout`.
    pub async fn read_point(&self, level: ReadLevel, timeout: Duration) -> Result<ReadPoint, GroupError> {
        if let Some(why) = self.sm.check_status().fenced {
            return Err(GroupError::Fenced(why));
        }
        let target = match level {
            ReadLevel::Eventual => None,
            ReadLevel::AtLeast(index) => Some(index),
            ReadLevel::Strong | ReadLevel::Lease => {
                let lease = (level == ReadLevel::Lease).then(|| self.config.lease());
                match self.leader_elsewhere() {
                    // A follower read: the leader confirms its role and names the index to wait for.
                    Some((leader, addr)) => {
                        let payload = encode(&(lease.map(millis), millis(timeout))).map_err(stopped)?;
                        let index = self
                            .forward::<u64>(leader, addr, RaftCallKind::ReadIndex, payload, timeout)
                            .await
                            .map_err(|e| match e {
                                ForwardError::Transport(why) => {
                                    GroupError::Timeout(format!("read index from node {leader}: {why}"))
                                }
                                ForwardError::Answered(e) => e,
                            })?;
                        Some(index)
                    }
                    None => Some(read_index_here(&self.raft, lease, timeout).await?),
                }
            }
        };
        if let Some(index) = target {
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "read-your-writes")
                .await
                .map_err(|e| GroupError::Timeout(format!("index {index} not applied here: {e}")))?;
        }
        Ok(self.point(target))
    }

    fn point(&self, at_least: Option<u64>) -> ReadPoint {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |id| id.index).max(at_least.unwrap_or(0));
        let committed = m.cluster_committed.as_ref().map_or(0, |id| id.index);
        ReadPoint { applied, behind: committed.saturating_sub(applied) }
    }

    /// Runs a consistency check through the log (leader only): every replica hashes its shard at one
    /// entry, then compares with this leader's hash at a second entry; a replica that differs fences
    /// itself (see [`GroupStatus::checks`]). Returns where and what the leader hashed.
    pub async fn check_consistency(&self, timeout: Duration) -> Result<CheckOutcome, GroupError> {
        let recorded = self.write(Command::check(Check::Record), timeout).await?;
        let CommandResult::Digest(digest) = recorded.result else {
            return Err(GroupError::OutcomeUnknown(format!("check record answered {:?}", recorded.result)));
        };
        let compare = Command::check(Check::Compare { index: recorded.index, digest: digest.clone() });
        self.write(compare, timeout).await?;
        Ok(CheckOutcome { index: recorded.index, digest })
    }

    /// Adds node `node` at `addr` as a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, node: u64, addr: String) -> Result<(), GroupError> {
        self.raft
            .add_learner(node, BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// Makes `voters` the voting members (learners among them are promoted, voters not in it become
    /// learners). Changes are serialized by Raft: one at a time, each through joint consensus.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), GroupError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// This replica's view of the group.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let last_log = m.last_log_index;
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != m.id)
                    .map(|(id, matched)| {
                        let matched = matched.as_ref().map_or(0, |l| l.index + 1);
                        (*id, last_log.map_or(0, |l| l + 1).saturating_sub(matched))
                    })
                    .collect()
            })
            .unwrap_or_default();
        GroupStatus {
            group: self.group,
            node: m.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log,
            committed: m.local_committed.map(|id| id.index),
            applied: m.last_applied.map(|id| id.index),
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
            voters,
            learners,
            lag,
            checks: self.sm.check_status(),
            snapshots_installed: self.sm.snapshots_installed(),
            snapshot_bytes_received: self.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Follows this replica's status (see [`StatusWatch`]).
    pub fn watch(&self) -> StatusWatch {
        StatusWatch { rx: self.raft.metrics() }
    }

    /// Stops the replica (its storage stays as it is).
    pub async fn shutdown(&self) -> Result<(), GroupError> {
        self.raft.shutdown().await.map_err(stopped)
    }
}
