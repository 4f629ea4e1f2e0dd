//! Raft traffic between nodes over gRPC (`cairn.raft.v1.RaftTransport`): one connection per peer carries
//! the messages of every shard group the two nodes share; each call names its group.
//!
//! Receiving: [`RaftService`] holds the node's groups and hands each call to its group's `Raft`: Raft's
//! own messages, and the commands and read-index requests followers forward to their leader.
//! Sending: [`GroupNetwork`] is a group's openraft network factory over a [`Wire`], the node's way to
//! reach its peers: [`PeerChannels`] (one lazily connected gRPC channel per peer) in production, an
//! in-process network that drops, delays and partitions in simulation. Raft messages travel as
//! postcard-encoded payloads. Every call carries
//! openraft's hard deadline, and every failure is reported to openraft as "unreachable", which backs off
//! and retries.
//!
//! Messages are bounded: sender and receiver share one message limit ([`Wire::max_message_bytes`]),
//! and an AppendEntries call carries a prefix of the entries openraft hands it that fits
//! [`APPEND_BATCH_BYTES`] (always at least one entry, which the proposer kept under the limit), answered
//! as a partial success so openraft sends the rest next. Without this, a batch of large entries over
//! the receiver's limit was refused and re-sent unchanged forever, and the group stopped committing.

use super::{ShardRaft, ShardSnapshotRef, TypeConfig};
use cairn_proto::raft::RaftCallKind;
use cairn_proto::raft::raft_transport_client::RaftTransportClient;
use cairn_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
pub use cairn_proto::raft::{RaftCall, RaftReply};
use openraft::BasicNode;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::Replica;
use super::replica::{
    ProposeCall, ReadIndexCall, SnapshotFileCall, propose_here, read_index_here, serve_snapshot_file,
};
use super::{decode, encode, incarnation_of};

/// Soft bound of the entry bytes in one AppendEntries call (a single larger entry goes alone), like
/// etcd's and TiKV's per-message bounds: big enough to amortise a call, small enough that one batch
/// does not hold a heartbeat's slot for long.
pub const APPEND_BATCH_BYTES: usize = 4 << 20;

/// Least time an AppendEntries call that carries entries may take. openraft allows each call one
/// heartbeat interval (50 ms by default), and retries one that times out from scratch: a batch of large
/// entries that the follower cannot receive, write and sync that fast (a slow disk, a busy or debug
/// build) would be resent forever while the log grows behind it. Heartbeats are separate calls, so a
/// longer wait here delays nothing but this follower's stream.
const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_secs(2);

/// On top of [`APPEND_TIMEOUT_FLOOR`], an AppendEntries call gets one second per this many bytes.
const APPEND_BYTES_PER_SECOND: usize = 4 << 20;

/// How long an AppendEntries call of `bytes` (`entries` of them) may take, given openraft's `ttl`.
fn append_timeout(ttl: Duration, entries: usize, bytes: usize) -> Duration {
    if entries == 0 {
        return ttl;
    }
    ttl.max(APPEND_TIMEOUT_FLOOR) + Duration::from_secs_f64(bytes as f64 / APPEND_BYTES_PER_SECOND as f64)
}

/// Room a message needs besides its entries (the call's envelope, log ids, the vote).
const ENVELOPE_BYTES: usize = 4 << 10;

/// Evaluates requests a follower's node hands to this node's leader replica of a group
/// ([`Replica::forward_request`]). The layer above implements it: the request and its answer are its
/// own encodings, opaque here.
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request` for `replica`'s group (this node's replica, which leads or led it).
    fn handle(
        self: Arc<Self>,
        replica: Replica,
        request: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'static, Vec<u8>>;
}

/// The receiving side: the node's shard groups, by group id.
#[derive(Clone, Default)]
pub struct RaftService {
    // Bare Raft nodes (tests of openraft over the engine).
    groups: Arc<RwLock<HashMap<u64, ShardRaft>>>,
    // Replicas, and whether their snapshots are fetched from the leader (otherwise, as in the
    // simulation, the snapshot volume is shared and installs read it directly).
    replicas: Arc<RwLock<HashMap<u64, (Replica, bool)>>>,
    // Answers forwarded requests (none: they are refused).
    requests: Arc<RwLock<Option<Arc<dyn RequestHandler>>>>,
    // Woken whenever a replica is registered (a vote for a group not here yet waits for it a while).
    registered: Arc<tokio::sync::Notify>,
}

/// How long a vote or an AppendEntries for a group this node has no replica of waits for one to be
/// registered: a split's new group leads (or elects) while its replicas are still being opened on the
/// other nodes, and a call answered "not here" would cost its leader a retry after a backoff, or its
/// candidate a whole round.
const CALL_WAITS_FOR_GROUP: Duration = Duration::from_millis(200);

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").field("groups", &self.groups.read().len()).finish()
    }
}

impl RaftService {
    /// Routes calls for `group` to `raft`.
    pub fn register(&self, group: u64, raft: ShardRaft) {
        self.groups.write().insert(group, raft);
    }

    /// Routes calls for `replica`'s group to it (whichever incarnation it runs); snapshots it installs
    /// are fetched from the leader.
    pub fn register_replica(&self, replica: &Replica) {
        self.replicas.write().insert(replica.group(), (replica.clone(), true));
        self.registered.notify_waiters();
    }

    /// Like [`RaftService::register_replica`], for replicas whose snapshot volume the leader's snapshots
    /// are on already (one process, one memory volume): installs read it directly.
    pub fn register_replica_sharing_volume(&self, replica: &Replica) {
        self.replicas.write().insert(replica.group(), (replica.clone(), false));
        self.registered.notify_waiters();
    }

    /// Waits (up to `wait`) until a replica of `group` is registered.
    async fn replica_registered(&self, group: u64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let registered = self.registered.notified();
            if self.replicas.read().contains_key(&group) {
                return;
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return;
            }
        }
    }

    /// This node's registered replica of `group`, if any.
    pub fn replica(&self, group: u64) -> Option<Replica> {
        self.replicas.read().get(&group).map(|(replica, _)| replica.clone())
    }

    /// Answers requests forwarded to this node's leader replicas with `handler`.
    pub fn set_request_handler(&self, handler: Arc<dyn RequestHandler>) {
        *self.requests.write() = Some(handler);
    }

    /// Stops routing calls for `group` (they are answered "not on this node").
    pub fn unregister(&self, group: u64) {
        self.groups.write().remove(&group);
        self.replicas.write().remove(&group);
    }

    /// The tonic service to add to a server, accepting and sending messages of up to
    /// `max_message_bytes` (the limit every peer's [`Wire`] shares).
    pub fn into_server(self, max_message_bytes: usize) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// Answers one call (what the gRPC service does; simulated networks call it directly).
    pub async fn handle(&self, call: RaftCall) -> RaftReply {
        match self.dispatch(call).await {
            Ok(payload) => RaftReply { payload, error: String::new() },
            Err(error) => RaftReply { payload: Vec::new(), error },
        }
    }

    async fn dispatch(&self, call: RaftCall) -> Result<Vec<u8>, String> {
        let mut replica = self.replicas.read().get(&call.group).cloned();
        let unknown = || replica.is_none() && !self.groups.read().contains_key(&call.group);
        let waits = [RaftCallKind::Vote as i32, RaftCallKind::AppendEntries as i32].contains(&call.kind);
        if waits && unknown() {
            self.replica_registered(call.group, CALL_WAITS_FOR_GROUP).await;
            replica = self.replicas.read().get(&call.group).cloned();
        }
        let raft = match &replica {
            Some((replica, _)) => {
                let id = replica.id();
                if call.target != 0 && call.target != id {
                    return Err(format!(
                        "this node's replica of group {} is incarnation {}, not {}",
                        call.group,
                        incarnation_of(id),
                        incarnation_of(call.target)
                    ));
                }
                replica.raft()
            }
            None => self
                .groups
                .read()
                .get(&call.group)
                .cloned()
                .ok_or_else(|| format!("group {} is not on this node", call.group))?,
        };
        let fetching = replica.as_ref().filter(|(_, fetch)| *fetch).map(|(r, _)| r.clone());
        let replica = replica.map(|(r, _)| r);
        match Message::decode(call.kind, &call.payload)? {
            Message::AppendEntries(rpc) => {
                encode(&raft.append_entries(rpc).await.map_err(|e| e.to_string())?)
            }
            Message::Vote(rpc) => encode(&raft.vote(rpc).await.map_err(|e| e.to_string())?),
            Message::FullSnapshot(vote, meta, snapshot) => {
                // A fetch runs in a task of its own: the leader's call may be dropped (a new leader, a
                // closed replication stream) while the snapshot is half fetched or being installed, and
                // the fetch must still end with the staged copies cleared, or kept for a retry.
                let installed = match fetching {
                    Some(replica) => {
                        let fetch = tokio::spawn(async move {
                            replica.fetch_and_install(&raft, vote, meta, snapshot).await
                        });
                        fetch.await.map_err(|e| format!("snapshot install task failed: {e}"))??
                    }
                    None => {
                        let snapshot = SnapshotOf::<TypeConfig, ShardSnapshotRef> { meta, snapshot };
                        raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())?
                    }
                };
                encode(&installed)
            }
            Message::Propose((command, timeout_ms)) => {
                let timeout = Duration::from_millis(timeout_ms);
                let raft = match &replica {
                    Some(replica) => replica.awake(timeout).await,
                    None => raft,
                };
                encode(&propose_here(&raft, command, timeout).await)
            }
            Message::ReadIndex((lease_ms, timeout_ms)) => {
                let lease = lease_ms.map(Duration::from_millis);
                let timeout = Duration::from_millis(timeout_ms);
                let raft = match &replica {
                    Some(replica) => replica.awake(timeout).await,
                    None => raft,
                };
                encode(&read_index_here(&raft, lease, timeout).await)
            }
            Message::SnapshotFile(request) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} serves no snapshot files", call.group))?;
                let sm = replica.state_machine().clone();
                // File reads block: off the runtime's threads.
                tokio::task::spawn_blocking(move || serve_snapshot_file(&sm, request))
                    .await
                    .map_err(|e| format!("snapshot file task failed: {e}"))?
            }
            Message::Replace(new, addr) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                encode(&replica.replace_here(new, addr).await)
            }
            Message::Digest(index) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                encode(&replica.state_machine().digest_state(index))
            }
            Message::TransferLeader(rpc) => {
                encode(&raft.handle_transfer_leader(rpc).await.map_err(|e| e.to_string())?)
            }
            Message::Quiet(ask) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                encode(&replica.answer_quiet(ask))
            }
            Message::Request(request) => {
                let handler = self.requests.read().clone();
                let handler =
                    handler.ok_or_else(|| "this node evaluates no forwarded requests".to_string())?;
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                Ok(handler.handle(replica, request).await)
            }
        }
    }
}

/// A call's payload, decoded as its kind says: what [`RaftService`] acts on.
enum Message {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    FullSnapshot(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, ShardSnapshotRef),
    Propose(ProposeCall),
    ReadIndex(ReadIndexCall),
    SnapshotFile(SnapshotFileCall),
    Replace(u64, String),
    Digest(u64),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    Request(Vec<u8>),
    Quiet(super::replica::QuietCall),
}

impl Message {
    fn decode(kind: i32, payload: &[u8]) -> Result<Message, String> {
        Ok(match RaftCallKind::try_from(kind) {
            Ok(RaftCallKind::AppendEntries) => Message::AppendEntries(decode(payload)?),
            Ok(RaftCallKind::Vote) => Message::Vote(decode(payload)?),
            Ok(RaftCallKind::FullSnapshot) => {
                let (vote, meta, snapshot) = decode(payload)?;
                Message::FullSnapshot(vote, meta, snapshot)
            }
            Ok(RaftCallKind::Propose) => Message::Propose(decode(payload)?),
            Ok(RaftCallKind::ReadIndex) => Message::ReadIndex(decode(payload)?),
            Ok(RaftCallKind::SnapshotFile) => Message::SnapshotFile(decode(payload)?),
            Ok(RaftCallKind::Replace) => {
                let (new, addr) = decode(payload)?;
                Message::Replace(new, addr)
            }
            Ok(RaftCallKind::Digest) => Message::Digest(decode(payload)?),
            Ok(RaftCallKind::TransferLeader) => Message::TransferLeader(decode(payload)?),
            Ok(RaftCallKind::Request) => Message::Request(payload.to_vec()),
            Ok(RaftCallKind::Quiet) => Message::Quiet(decode(payload)?),
            Ok(RaftCallKind::Unspecified) | Err(_) => return Err(format!("unknown raft call kind {kind}")),
        })
    }
}

/// Decodes a received call as the node does before acting on it (envelope, then the payload its
/// kind names), acting on nothing: an error for anything undecodable, never a panic. What the Raft
/// message fuzz target drives.
pub fn decode_call(bytes: &[u8]) -> Result<(), String> {
    let call =
        <RaftCall as prost::Message>::decode(bytes).map_err(|e| format!("cannot decode a raft call: {e}"))?;
    Message::decode(call.kind, &call.payload).map(drop)
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn call(&self, request: Request<RaftCall>) -> Result<Response<RaftReply>, Status> {
        Ok(Response::new(self.handle(request.into_inner()).await))
    }
}

/// One lazily connected channel per peer address, shared by every group's network (and by every
/// incarnation of the peer's replicas).
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    max_message_bytes: usize,
}

impl Default for PeerChannels {
    fn default() -> PeerChannels {
        PeerChannels::new(cairn_proto::DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannels").field("peers", &self.channels.lock().len()).finish()
    }
}

impl PeerChannels {
    /// Channels whose messages are at most `max_message_bytes` either way.
    pub fn new(max_message_bytes: usize) -> PeerChannels {
        PeerChannels { channels: Arc::default(), max_message_bytes }
    }

    /// The channel to the peer at `addr` (`host:port`), created on first use.
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Forgets the channel to `addr` (the next call connects again).
    pub fn forget(&self, addr: &str) {
        self.channels.lock().remove(addr);
    }
}

/// Why a call got no reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call never left this node (no connection could be made): the receiver did nothing.
    #[error("{0} (not sent)")]
    NotSent(String),
    /// The call or its reply was lost, or it timed out: the receiver may have acted on it.
    #[error("{0}")]
    Lost(String),
}

/// How a node's Raft messages reach a peer.
pub trait Wire: Clone + Send + Sync + 'static {
    /// Delivers `call` to member `target` (a replica id: see [`super::node_of`]; 0 when only `addr` is
    /// known) at `addr` and returns its reply, or why there is none. Gives up after `timeout`.
    fn call(
        &self,
        target: u64,
        addr: &str,
        call: RaftCall,
        timeout: Duration,
    ) -> impl Future<Output = Result<RaftReply, CallError>> + Send;

    /// The largest message a call or reply may be (the receiver refuses larger ones).
    fn max_message_bytes(&self) -> usize {
        cairn_proto::DEFAULT_MAX_MESSAGE_BYTES
    }
}

impl Wire for PeerChannels {
    async fn call(
        &self,
        _target: u64,
        addr: &str,
        call: RaftCall,
        timeout: Duration,
    ) -> Result<RaftReply, CallError> {
        let channel = self.channel(addr).map_err(CallError::NotSent)?;
        let mut request = Request::new(call);
        request.set_timeout(timeout);
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        match client.call(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => {
                // A channel whose first connection failed can keep failing after the peer is up:
                // the next call starts a fresh one.
                if status.code() == tonic::Code::Unavailable {
                    self.forget(addr);
                }
                if cairn_proto::never_sent(&status) {
                    return Err(CallError::NotSent(status.to_string()));
                }
                Err(CallError::Lost(status.to_string()))
            }
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

/// A group's openraft network: links to its peers over the node's [`Wire`].
#[derive(Clone, Debug)]
pub struct GroupNetwork<W = PeerChannels> {
    wire: W,
    group: u64,
}

impl<W: Wire> GroupNetwork<W> {
    /// The network of `group` over `wire`.
    pub fn new(wire: W, group: u64) -> GroupNetwork<W> {
        GroupNetwork { wire, group }
    }
}

/// One group's link to one peer.
#[derive(Debug)]
pub struct GroupLink<W = PeerChannels> {
    wire: W,
    target: u64,
    addr: String,
    group: u64,
}

impl<W: Wire> RaftNetworkFactory<TypeConfig> for GroupNetwork<W> {
    type Network = GroupLink<W>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GroupLink<W> {
        GroupLink { wire: self.wire.clone(), target, addr: node.addr.clone(), group: self.group }
    }
}

fn unreachable(why: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&super::io_err(why))
}

impl<W: Wire> GroupLink<W> {
    async fn call<T: DeserializeOwned>(
        &self,
        kind: RaftCallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, Unreachable<TypeConfig>> {
        let call = RaftCall { group: self.group, kind: kind as i32, payload, target: self.target };
        let reply = self.wire.call(self.target, &self.addr, call, timeout).await.map_err(unreachable)?;
        if !reply.error.is_empty() {
            return Err(unreachable(reply.error));
        }
        decode(&reply.payload).map_err(unreachable)
    }
}

impl<W: Wire> RaftNetworkV2<TypeConfig> for GroupLink<W> {
    type SnapshotData = ShardSnapshotRef;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let limit = self.wire.max_message_bytes();
        let keep = batch_prefix(&rpc.entries, APPEND_BATCH_BYTES.min(limit.saturating_sub(ENVELOPE_BYTES)));
        let truncated = keep < rpc.entries.len();
        if truncated {
            rpc.entries.truncate(keep);
        }
        let last = rpc.entries.last().map(|e| e.log_id);
        let payload = encode(&rpc).map_err(unreachable)?;
        if payload.len() > limit.saturating_sub(ENVELOPE_BYTES) {
            // Only an entry written before the limits were enforced, or under a larger limit, can be
            // this big: raising max_message_bytes on every node lets it through.
            return Err(unreachable(format!(
                "an AppendEntries message of {} bytes (entry {:?}) is over the message limit of {limit} bytes \
                 (raise max_message_bytes on every node)",
                payload.len(),
                last
            ))
            .into());
        }
        let timeout = append_timeout(option.hard_ttl(), rpc.entries.len(), payload.len());
        let reply: AppendEntriesResponse<TypeConfig> =
            self.call(RaftCallKind::AppendEntries, payload, timeout).await?;
        Ok(match reply {
            // The peer took the prefix sent: openraft sends the rest next.
            AppendEntriesResponse::Success if truncated => AppendEntriesResponse::PartialSuccess(last),
            reply => reply,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc).map_err(unreachable)?;
        Ok(self.call(RaftCallKind::Vote, payload, option.hard_ttl()).await?)
    }

    /// Without this (openraft's default answers "unreachable"), a leader stepping down only stopped
    /// proposing: its group waited out an election timeout, as long as after a crash.
    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc).map_err(unreachable)?;
        Ok(self.call(RaftCallKind::TransferLeader, payload, option.hard_ttl()).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, ShardSnapshotRef>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let payload = encode(&(vote, snapshot.meta, snapshot.snapshot)).map_err(unreachable)?;
        Ok(self.call(RaftCallKind::FullSnapshot, payload, option.hard_ttl()).await?)
    }
}

/// How many of `entries`, from the first, fit in `budget` bytes (estimated from their payloads); at
/// least one, so an entry larger than the budget goes alone.
fn batch_prefix(entries: &[openraft::alias::EntryOf<TypeConfig>], budget: usize) -> usize {
    let mut bytes = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        bytes = bytes.saturating_add(entry_bytes(entry));
        if bytes > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// About how many bytes `entry` takes encoded (at least that many, give or take a few per entry).
pub(crate) fn entry_bytes(entry: &openraft::alias::EntryOf<TypeConfig>) -> usize {
    use openraft::EntryPayload;
    const PER_ENTRY: usize = 32;
    match &entry.payload {
        EntryPayload::Normal(command) => PER_ENTRY + command.approx_bytes(),
        // Each node is named in the node map and in one or two voter configurations.
        EntryPayload::Membership(m) => PER_ENTRY + m.nodes().map(|(_, n)| 64 + n.addr.len()).sum::<usize>(),
        EntryPayload::Blank => PER_ENTRY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Command;
    use openraft::{EntryPayload, LogId};

    fn entry(index: u64, value_bytes: usize) -> openraft::alias::EntryOf<TypeConfig> {
        let mut batch = cairn_engine::WriteBatch::new();
        batch.put(1, b"k", 0, &vec![7u8; value_bytes]);
        openraft::Entry {
            log_id: LogId::new_term_index(1, index),
            payload: EntryPayload::Normal(Command::write(&batch)),
        }
    }

    // Regression: each AppendEntries call had one heartbeat interval (50 ms); a 1 MiB entry that took
    // longer to reach, write and sync was resent from scratch forever.
    #[test]
    fn calls_carrying_entries_get_time_for_their_bytes() {
        let heartbeat = Duration::from_millis(50);
        assert_eq!(append_timeout(heartbeat, 0, 300), heartbeat, "a heartbeat keeps openraft's bound");
        assert_eq!(append_timeout(heartbeat, 1, 0), APPEND_TIMEOUT_FLOOR);
        let full = append_timeout(heartbeat, 4, APPEND_BATCH_BYTES);
        assert_eq!(full, APPEND_TIMEOUT_FLOOR + Duration::from_secs(1));
        assert_eq!(append_timeout(Duration::from_secs(10), 1, 0), Duration::from_secs(10));
    }

    // Regression: twelve concurrent 1 MiB puts made one 10 MiB AppendEntries call, over the receiver's
    // 4 MiB limit, re-sent unchanged forever: the shard never committed again.
    #[test]
    fn append_batches_are_bounded_in_bytes_and_never_empty() {
        let mib = 1 << 20;
        let big: Vec<_> = (1..=12).map(|i| entry(i, mib)).collect();
        assert_eq!(batch_prefix(&big, 4 * mib), 3);
        let encoded = encode(&big[..3].to_vec()).unwrap().len();
        assert!(encoded <= 4 * mib && encoded > 3 * mib, "{encoded}");
        // An entry over the budget goes alone.
        assert_eq!(batch_prefix(&[entry(1, 5 * mib), entry(2, 10)], 4 * mib), 1);
        let small: Vec<_> = (1..=300).map(|i| entry(i, 256)).collect();
        assert_eq!(batch_prefix(&small, 4 * mib), 300);
        assert_eq!(batch_prefix(&[], 4 * mib), 0);
        // The estimate is never below the encoded size.
        for e in big.iter().chain(&small) {
            assert!(entry_bytes(e) >= encode(e).unwrap().len(), "{}", e.log_id);
        }
    }

    #[test]
    fn calls_decode_by_their_kind_and_anything_else_is_an_error() {
        let call = |kind: RaftCallKind, payload: Vec<u8>| {
            prost::Message::encode_to_vec(&RaftCall { group: 1, kind: kind as i32, payload, target: 0 })
        };
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![entry(1, 1 << 20)],
            leader_commit: None,
        };
        let encoded = call(RaftCallKind::AppendEntries, encode(&append).unwrap());
        assert_eq!(decode_call(&encoded), Ok(()));
        assert_eq!(decode_call(&call(RaftCallKind::Digest, encode(&7u64).unwrap())), Ok(()));
        // Cut short, the wrong kind, an unknown kind, garbage: errors, not panics.
        assert!(decode_call(&encoded[..encoded.len() / 2]).is_err());
        assert!(decode_call(&call(RaftCallKind::Vote, encode(&append).unwrap())).is_err());
        assert!(decode_call(&call(RaftCallKind::Unspecified, Vec::new())).is_err());
        let unknown =
            prost::Message::encode_to_vec(&RaftCall { group: 1, kind: 99, payload: vec![], target: 0 });
        assert!(decode_call(&unknown).is_err());
        assert!(decode_call(&[0xff; 64]).is_err());
        // A length prefix claiming far more entries than the bytes hold is refused, not allocated.
        let mut lying = encode(&append).unwrap();
        lying.truncate(lying.len() - (1 << 20));
        assert!(decode_call(&call(RaftCallKind::AppendEntries, lying)).is_err());
    }
}
