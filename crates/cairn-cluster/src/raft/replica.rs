//! [`Replica`]: one node's member of one shard group, in cairn's terms: write a command, wait until a
//! read at a chosen consistency level is safe, report status. The server and the simulation use this;
//! neither names an openraft type.

use super::{
    Check, CheckStatus, Command, CommandResult, GroupLogStore, GroupNetwork, MAX_NODE_ID, RaftCall,
    RaftReply, ShardRaft, ShardSnapshotRef, ShardStateMachine, TypeConfig, Wire, decode, encode,
    incarnation_of, log_key, node_of, replica_id,
};
use crate::raft_log::RaftLog;
use cairn_engine::Db;
use cairn_proto::raft::RaftCallKind;
use openraft::LinearizerOption;
use openraft::alias::{SnapshotMetaOf, StoredMembershipOf};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::Precondition;
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// (Only entries a consistency check verified are dropped at all, see [`Replica::tend`].)
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
    /// This replica is a learner catching up (a re-synced replica starts empty): it serves only reads
    /// that wait for an index.
    #[error("replica catching up: {0}")]
    CatchingUp(String),
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
    /// Times this replica re-synced from scratch since it started.
    pub resyncs: u64,
}

/// Wakes when a replica's status (role, term, leader, log indexes) changes; follows the replica into a
/// new incarnation.
pub struct StatusWatch {
    replica: Replica,
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>,
    // The incarnation `rx` belongs to.
    id: u64,
}

impl StatusWatch {
    /// Waits for the next change; false once the replica has stopped.
    pub async fn changed(&mut self) -> bool {
        loop {
            if self.rx.changed().await.is_ok() {
                return true;
            }
            // That incarnation's Raft node stopped: follow the next one, unless the replica stopped.
            let _guard = self.replica.shared.lifecycle.lock().await;
            if self.replica.shared.stopped.load(Ordering::Acquire) || self.replica.id() == self.id {
                return false;
            }
            let current = self.replica.shared.current.read().clone();
            (self.rx, self.id) = (current.raft.metrics(), current.id);
        }
    }

    /// The term and leader (node id) as of the last change seen.
    pub fn leadership(&self) -> (u64, Option<u64>) {
        let m = self.rx.borrow_watched();
        (m.current_term, m.current_leader.map(node_of))
    }
}

/// A consistency check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The index every replica hashed at.
    pub index: u64,
    /// The digest a majority of voters recorded there (what every replica was compared with).
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
    // Held while the Raft node is replaced or stopped.
    lifecycle: tokio::sync::Mutex<()>,
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

/// Entries a learner may lag the leader's log and still be promoted to voter.
const PROMOTE_WITHIN: u64 = 64;
/// How often [`Replica::tend`] looks at the replica.
const TEND_EVERY: Duration = Duration::from_millis(100);
/// Least time between two attempts of a tending step that talks to others.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
        let start_raft: Box<StartRaft> = {
            let (wire, log, sm) = (wire.clone(), Arc::clone(&log), sm.clone());
            Box::new(move |id, incarnation| {
                let network = GroupNetwork::new(wire.clone(), group);
                let store = GroupLogStore::new(Arc::clone(&log), log_key(group, incarnation));
                let (config, sm) = (Arc::clone(&raft_config), sm.clone());
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
            earlier_divergences: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            lifecycle: tokio::sync::Mutex::new(()),
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

    /// True if this replica has never been part of a group: first incarnation, no vote, no log. Only
    /// such a replica may [`Replica::bootstrap`].
    pub fn is_new(&self) -> bool {
        let key = log_key(self.shared.group, 0);
        self.incarnation() == 0
            && self.shared.log.vote(key).is_none()
            && matches!(self.shared.log.state(key), (None, None))
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
            None => propose_here(&self.raft(), command, timeout).await,
            Some((leader, addr)) => {
                let payload = encode(&(command, millis(timeout))).map_err(GroupError::OutcomeUnknown)?;
                self.forward(leader, addr, RaftCallKind::Propose, payload, timeout).await.map_err(|e| match e
                {
                    // The leader may have received it.
                    ForwardError::Transport(why) => {
                        GroupError::OutcomeUnknown(format!("forwarding to node {}: {why}", node_of(leader)))
                    }
                    ForwardError::Answered(e) => e,
                })
            }
        }
    }

    /// The leader this replica knows of (its member id) and its address, when that is another replica.
    fn leader_elsewhere(&self) -> Option<(u64, String)> {
        let Incarnation { raft, id } = self.shared.current.read().clone();
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
        let reply = self.shared.wire.call(target, addr, call, timeout).await?;
        if reply.error.is_empty() { Ok(reply.payload) } else { Err(reply.error) }
    }

    /// Copies the files of snapshot `remote` from member `leader` into this replica's staging volume
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
            .ok_or_else(|| format!("member {leader} is not in the group's membership"))?;
        let sm = &self.shared.sm;
        let fs = sm.fs();
        let staging = cairn_engine::resolve_volume(&cairn_engine::Volume::file_url(&sm.staging_dir()), &fs)
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
                self.shared.snapshot_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
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
        let (fs, staging) = (self.shared.sm.fs(), self.shared.sm.staging_dir());
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
        let Incarnation { raft, id } = self.shared.current.read().clone();
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
            ReadLevel::AtLeast(index) => Some(index),
            ReadLevel::Strong | ReadLevel::Lease => {
                let lease = (level == ReadLevel::Lease).then(|| self.shared.config.lease());
                match self.leader_elsewhere() {
                    // A follower read: the leader confirms its role and names the index to wait for.
                    Some((leader, addr)) => {
                        let payload = encode(&(lease.map(millis), millis(timeout))).map_err(stopped)?;
                        let index = self
                            .forward::<u64>(leader, addr, RaftCallKind::ReadIndex, payload, timeout)
                            .await
                            .map_err(|e| match e {
                                ForwardError::Transport(why) => GroupError::Timeout(format!(
                                    "read index from node {}: {why}",
                                    node_of(leader)
                                )),
                                ForwardError::Answered(e) => e,
                            })?;
                        Some(index)
                    }
                    None => Some(read_index_here(&self.raft(), lease, timeout).await?),
                }
            }
        };
        if let Some(index) = target {
            self.raft()
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "read-your-writes")
                .await
                .map_err(|e| GroupError::Timeout(format!("index {index} not applied here: {e}")))?;
        }
        Ok(self.point(target))
    }

    fn point(&self, at_least: Option<u64>) -> ReadPoint {
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |id| id.index).max(at_least.unwrap_or(0));
        let committed = m.cluster_committed.as_ref().map_or(0, |id| id.index);
        ReadPoint { applied, behind: committed.saturating_sub(applied) }
    }

    /// Runs a consistency check through the log: every replica hashes its shard at one entry; this
    /// replica then asks the voters for their hashes there, and once a majority of them agree, a second
    /// entry carries that hash; a replica whose hash differs fences itself (see
    /// [`GroupStatus::checks`]), the leader included. Returns where and what the majority hashed; fails
    /// if no majority agrees within `timeout` (then nobody is fenced).
    pub async fn check_consistency(&self, timeout: Duration) -> Result<CheckOutcome, GroupError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let recorded = self.write(Command::check(Check::Record), timeout).await?;
        if !matches!(recorded.result, CommandResult::Digest(_)) {
            return Err(GroupError::OutcomeUnknown(format!("check record answered {:?}", recorded.result)));
        }
        let digest = self.majority_digest(recorded.index, deadline).await?;
        let compare = Command::check(Check::Compare { index: recorded.index, digest: digest.clone() });
        self.write(compare, deadline.saturating_duration_since(tokio::time::Instant::now())).await?;
        Ok(CheckOutcome { index: recorded.index, digest })
    }

    /// The digest a majority of the group's voters recorded at check entry `index`, asking each voter
    /// (this replica reads its own) until a majority agrees or `deadline` passes.
    async fn majority_digest(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<String, GroupError> {
        let (me, members) = {
            let Incarnation { raft, id } = self.shared.current.read().clone();
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, Option<String>)> = membership
                .voter_ids()
                .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone())))
                .collect();
            (id, voters)
        };
        let quorum = members.len() / 2 + 1;
        let mut answers: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            for (voter, addr) in &members {
                if answers.contains_key(voter) {
                    continue;
                }
                let digest = if *voter == me {
                    self.shared.sm.recorded_digest(index)
                } else if let Some(addr) = addr {
                    let payload = encode(&index).map_err(GroupError::Timeout)?;
                    let wait = self.shared.config.election_timeout.0;
                    match self.send(*voter, addr.clone(), RaftCallKind::Digest, payload, wait).await {
                        Ok(reply) => decode::<Option<String>>(&reply).map_err(GroupError::Timeout)?,
                        Err(_) => None,
                    }
                } else {
                    None
                };
                if let Some(digest) = digest {
                    answers.insert(*voter, digest);
                }
            }
            let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
            for digest in answers.values() {
                *counts.entry(digest).or_default() += 1;
            }
            if let Some((digest, _)) = counts.into_iter().find(|(_, n)| *n >= quorum) {
                return Ok(digest.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                if answers.len() == members.len() {
                    tracing::error!(
                        group = self.shared.group,
                        index,
                        ?answers,
                        "consistency check: no majority of replicas agrees on the contents"
                    );
                }
                return Err(GroupError::Timeout(format!(
                    "no majority digest at index {index} (answers: {answers:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds node `node`'s first incarnation at `addr` as a learner and waits until it has caught up with
    /// the log.
    pub async fn add_learner(&self, node: u64, addr: String) -> Result<(), GroupError> {
        self.raft()
            .add_learner(replica_id(node, 0), BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// Makes the current replicas of nodes `voters` the voting members (learners among them are
    /// promoted, voters not in it become learners). Changes are serialized by Raft: one at a time,
    /// each through joint consensus, and each only if the membership is still the one it was decided
    /// on.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), GroupError> {
        let raft = self.raft();
        let membership = raft.metrics().borrow_watched().membership_config.clone();
        let mut ids = BTreeSet::new();
        for node in voters {
            let id = membership
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| node_of(*id) == node)
                .max()
                .ok_or_else(|| GroupError::Membership(format!("node {node} has no replica in the group")))?;
            ids.insert(id);
        }
        change_membership(&raft, &membership, ChangeMembers::ReplaceAllVoters(ids), true).await
    }

    /// Removes nodes `nodes`' replicas from the group; they must be learners already (demote voters
    /// with [`Replica::change_voters`] first). Guarded like every membership change.
    pub async fn remove_learners(&self, nodes: BTreeSet<u64>) -> Result<(), GroupError> {
        let raft = self.raft();
        let membership = raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        let mut ids = BTreeSet::new();
        for (id, _) in membership.membership().nodes() {
            if nodes.contains(&node_of(*id)) {
                if voters.contains(id) {
                    return Err(GroupError::Membership(format!(
                        "node {} is a voter: demote it first",
                        node_of(*id)
                    )));
                }
                ids.insert(*id);
            }
        }
        if ids.is_empty() {
            return Err(GroupError::Membership(format!("no learner of nodes {nodes:?} in the group")));
        }
        change_membership(&raft, &membership, ChangeMembers::RemoveNodes(ids), false).await
    }

    /// On the leader: adds member `new` (a replica that re-synced from scratch, at `addr`) as a learner
    /// and removes its node's other incarnations from the group. Refused for the leader's own node and
    /// for an incarnation older than one the group already has.
    pub(crate) async fn replace_here(&self, new: u64, addr: String) -> Result<(), GroupError> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Err(GroupError::NotLeader { leader: metrics.current_leader });
        }
        if node_of(new) == self.shared.node {
            return Err(GroupError::Membership("the leader's own node cannot be replaced".into()));
        }
        let same_node = |m: &StoredMembershipOf<TypeConfig>| -> Vec<u64> {
            m.membership().nodes().map(|(id, _)| *id).filter(|id| node_of(*id) == node_of(new)).collect()
        };
        if same_node(&metrics.membership_config).iter().any(|id| incarnation_of(*id) > incarnation_of(new)) {
            return Err(GroupError::Membership(format!(
                "node {} already has a later incarnation than {}",
                node_of(new),
                incarnation_of(new)
            )));
        }
        let mut membership = metrics.membership_config.clone();
        if membership.membership().get_node(&new).is_none() {
            let add = ChangeMembers::AddNodes(BTreeMap::from([(new, BasicNode::new(addr))]));
            change_membership(&raft, &membership, add, true).await?;
            membership = raft.metrics().borrow_watched().membership_config.clone();
        }
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        let (stale_voters, stale_learners): (BTreeSet<u64>, BTreeSet<u64>) =
            same_node(&membership).into_iter().filter(|id| *id != new).partition(|id| voters.contains(id));
        if !stale_voters.is_empty() {
            change_membership(&raft, &membership, ChangeMembers::RemoveVoters(stale_voters), false).await?;
            membership = raft.metrics().borrow_watched().membership_config.clone();
        }
        if !stale_learners.is_empty() {
            change_membership(&raft, &membership, ChangeMembers::RemoveNodes(stale_learners), false).await?;
        }
        tracing::info!(
            group = self.shared.group,
            node = node_of(new),
            incarnation = incarnation_of(new),
            "replica replaced by a new incarnation"
        );
        Ok(())
    }

    /// Keeps this replica in shape until it stops: re-syncs it from scratch (as a new incarnation) once
    /// a consistency check fenced it; asks the leader to take a new incarnation into the group; on the
    /// leader, promotes learners that caught up on nodes without a voter and runs a consistency check
    /// after each snapshot; everywhere, drops the log only up to the last position both in a snapshot
    /// and verified by a check (seed 004's verified compaction), keeping the configured tail.
    pub async fn tend(&self) {
        let mut last_announce: Option<tokio::time::Instant> = None;
        let mut last_check: Option<tokio::time::Instant> = None;
        let due = |last: Option<tokio::time::Instant>| last.is_none_or(|t| t.elapsed() >= RETRY_AFTER);
        while !self.shared.stopped.load(Ordering::Acquire) {
            tokio::time::sleep(TEND_EVERY).await;
            if self.shared.stopped.load(Ordering::Acquire) {
                return;
            }
            let status = self.status();
            let group = self.shared.group;
            if status.checks.fenced.is_some() {
                if status.role == "leader" {
                    // A fenced leader hands its role to another voter first, then re-syncs as a follower.
                    self.step_down(&status).await;
                } else if let Err(e) = self.resync().await {
                    tracing::warn!(group, error = %e, "re-sync failed");
                }
                continue;
            }
            if self.incarnation() > 0 && !self.in_membership() && due(last_announce) {
                last_announce = Some(tokio::time::Instant::now());
                match self.announce().await {
                    Ok(()) => tracing::info!(group, incarnation = self.incarnation(), "joined as a learner"),
                    Err(e) => tracing::debug!(group, error = %e, "asking to rejoin"),
                }
            }
            if status.role == "leader" {
                self.promote_caught_up().await;
                let snapshot = status.snapshot.unwrap_or(0);
                if snapshot > status.checks.verified.unwrap_or(0) && due(last_check) {
                    last_check = Some(tokio::time::Instant::now());
                    let timeout = self.shared.config.election_timeout.1 * 4;
                    if let Err(e) = self.check_consistency(timeout).await {
                        tracing::debug!(group, error = %e, "consistency check after a snapshot");
                    }
                }
            }
            self.purge_verified(&status).await;
        }
    }

    /// Hands leadership to the voter that has the most of the log (this replica is fenced).
    async fn step_down(&self, status: &GroupStatus) {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        let me = m.id;
        let target = m.membership_config.membership().voter_ids().filter(|v| *v != me).max_by_key(|v| {
            m.replication.as_ref().and_then(|r| r.get(v)).and_then(|l| l.as_ref()).map_or(0, |l| l.index + 1)
        });
        if let Some(target) = target {
            tracing::warn!(
                group = status.group,
                to = node_of(target),
                "fenced leader handing over leadership"
            );
            let _ = raft.trigger().transfer_leader(target).await;
        }
    }

    /// True if the current incarnation is a member (voter or learner) of the membership it knows.
    fn in_membership(&self) -> bool {
        let Incarnation { raft, id } = self.shared.current.read().clone();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).is_some()
    }

    /// Drops the log up to the newest position that is both in this replica's snapshot and verified by
    /// a consistency check, minus the configured tail kept for lagging followers.
    async fn purge_verified(&self, status: &GroupStatus) {
        let (Some(snapshot), Some(verified)) = (status.snapshot, status.checks.verified) else { return };
        let upto = snapshot.min(verified).saturating_sub(self.shared.config.keep_behind_snapshot);
        if upto > 0 && status.purged.is_none_or(|p| p < upto) {
            let _ = self.raft().trigger().purge_log(upto).await;
        }
    }

    /// Replaces the fenced incarnation by a new, empty one that the group fills again: the old Raft
    /// node stops (its member id is never used again), the state machine records the next incarnation
    /// durably and starts empty, and a Raft node with a fresh log starts under the new id. The leader
    /// then takes it in ([`Replica::announce`]).
    async fn resync(&self) -> Result<(), GroupError> {
        let _guard = self.shared.lifecycle.lock().await;
        if self.shared.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let Incarnation { raft: old, id: old_id } = self.shared.current.read().clone();
        let sm = &self.shared.sm;
        let mut peers = sm.incarnation_peers();
        {
            let metrics = old.metrics();
            let m = metrics.borrow_watched();
            for (id, node) in m.membership_config.membership().nodes() {
                peers.insert(node_of(*id), node.addr.clone());
            }
        }
        let why = sm.check_status().fenced.unwrap_or_default();
        tracing::warn!(group = self.shared.group, incarnation = incarnation_of(old_id), why = %why,
            "re-syncing a fenced replica from scratch");
        old.shutdown().await.map_err(stopped)?;
        let divergences = sm.check_status().divergences;
        let incarnation = sm.begin_incarnation(peers).map_err(stopped)?;
        self.shared.earlier_divergences.fetch_add(divergences, Ordering::Relaxed);
        let id = replica_id(self.shared.node, incarnation);
        let raft = (self.shared.start_raft)(id, incarnation).await?;
        *self.shared.current.write() = Incarnation { raft, id };
        self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
        // The old incarnation's log is never read again.
        let old_key = log_key(self.shared.group, incarnation_of(old_id));
        if let (_, Some(last)) = self.shared.log.state(old_key)
            && let Err(e) = self.shared.log.purge(old_key, last)
        {
            tracing::warn!(group = self.shared.group, error = %e, "cannot drop the old incarnation's log");
        }
        Ok(())
    }

    /// Asks the group's leader to add this incarnation as a learner in place of its node's earlier
    /// ones: the leader this replica knows of first, then every peer it knows, following redirects.
    async fn announce(&self) -> Result<(), GroupError> {
        let mut peers = self.shared.sm.incarnation_peers();
        {
            let metrics = self.raft().metrics();
            let m = metrics.borrow_watched();
            for (id, node) in m.membership_config.membership().nodes() {
                peers.insert(node_of(*id), node.addr.clone());
            }
        }
        let own = peers.get(&self.shared.node).cloned().ok_or_else(|| {
            GroupError::Membership(format!("node {}'s own address is unknown", self.shared.node))
        })?;
        let timeout = self.shared.config.election_timeout.1;
        let payload = encode(&(self.id(), own)).map_err(GroupError::Membership)?;
        let mut queue: Vec<u64> = peers.keys().copied().filter(|n| *n != self.shared.node).collect();
        let mut last = GroupError::Membership("no peer to ask".into());
        let mut asked = 0;
        while let Some(node) = queue.pop() {
            asked += 1;
            if asked > 2 * peers.len() {
                break;
            }
            let Some(addr) = peers.get(&node).cloned() else { continue };
            match self.forward::<()>(0, addr, RaftCallKind::Replace, payload.clone(), timeout).await {
                Ok(()) => return Ok(()),
                Err(ForwardError::Answered(GroupError::NotLeader { leader: Some(l) })) => {
                    queue.push(node_of(l));
                    last = GroupError::NotLeader { leader: Some(l) };
                }
                Err(ForwardError::Answered(e)) => last = e,
                Err(ForwardError::Transport(why)) => last = GroupError::Timeout(why),
            }
        }
        Err(last)
    }

    /// On the leader: promotes a re-synced replica (a later incarnation) that has caught up, on a node
    /// that has no voter, taking its node's place again.
    async fn promote_caught_up(&self) {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voter_nodes: BTreeSet<u64> = membership.voter_ids().map(node_of).collect();
        let last = m.last_log_index.unwrap_or(0);
        let caught_up = |id: &u64| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id)).and_then(|l| l.as_ref());
            matched.is_some_and(|l| l.index + PROMOTE_WITHIN >= last)
        };
        // Only re-synced replicas (a later incarnation) are promoted on their own: a first incarnation
        // is a learner because someone made it one.
        let promote: BTreeSet<u64> = membership
            .learner_ids()
            .filter(|id| incarnation_of(*id) > 0 && !voter_nodes.contains(&node_of(*id)) && caught_up(id))
            .collect();
        if promote.is_empty() {
            return;
        }
        let config = m.membership_config.clone();
        match change_membership(&raft, &config, ChangeMembers::AddVoterIds(promote.clone()), true).await {
            Ok(()) => {
                tracing::info!(group = self.shared.group, ?promote, "caught-up learners promoted to voters")
            }
            Err(e) => tracing::debug!(group = self.shared.group, error = %e, "promotion postponed"),
        }
    }

    /// This replica's view of the group, in node ids.
    pub fn status(&self) -> GroupStatus {
        let Incarnation { raft, id } = self.shared.current.read().clone();
        let m = raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
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
            checks,
            snapshots_installed: self.shared.sm.snapshots_installed(),
            snapshot_bytes_received: self.shared.snapshot_bytes.load(Ordering::Relaxed),
            resyncs: self.shared.resyncs.load(Ordering::Relaxed),
        }
    }

    /// Follows this replica's status (see [`StatusWatch`]).
    pub fn watch(&self) -> StatusWatch {
        let Incarnation { raft, id } = self.shared.current.read().clone();
        StatusWatch { replica: self.clone(), rx: raft.metrics(), id }
    }

    /// Stops the replica (its storage stays as it is).
    pub async fn shutdown(&self) -> Result<(), GroupError> {
        self.shared.stopped.store(true, Ordering::Release);
        let _guard = self.shared.lifecycle.lock().await;
        self.raft().shutdown().await.map_err(stopped)
    }
}

/// Proposes a membership change on `raft` (the leader) only while its membership is still `decided_on`,
/// so concurrent changes are serialized rather than overwriting each other.
async fn change_membership(
    raft: &ShardRaft,
    decided_on: &StoredMembershipOf<TypeConfig>,
    change: ChangeMembers<u64, BasicNode>,
    retain: bool,
) -> Result<(), GroupError> {
    let guard = Precondition::LastMembershipLogId { last_membership_log_id: *decided_on.log_id() };
    match raft.change_membership_if(change, retain, [guard]).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(GroupError::NotLeader { leader: f.leader_id })
        }
        Err(e) => Err(GroupError::Membership(e.to_string())),
    }
}
