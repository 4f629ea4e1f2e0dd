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
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
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

/// Room a message needs besides its entries (the call's envelope, log ids, the vote).
const ENVELOPE_BYTES: usize = 4 << 10;

/// The receiving side: the node's shard groups, by group id.
#[derive(Clone, Default)]
pub struct RaftService {
    // Bare Raft nodes (tests of openraft over the engine).
    groups: Arc<RwLock<HashMap<u64, ShardRaft>>>,
    // Replicas, and whether their snapshots are fetched from the leader (otherwise, as in the
    // simulation, the snapshot volume is shared and installs read it directly).
    replicas: Arc<RwLock<HashMap<u64, (Replica, bool)>>>,
}

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
    }

    /// Like [`RaftService::register_replica`], for replicas whose snapshot volume the leader's snapshots
    /// are on already (one process, one memory volume): installs read it directly.
    pub fn register_replica_sharing_volume(&self, replica: &Replica) {
        self.replicas.write().insert(replica.group(), (replica.clone(), false));
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
        let replica = self.replicas.read().get(&call.group).cloned();
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
        match RaftCallKind::try_from(call.kind) {
            Ok(RaftCallKind::AppendEntries) => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&call.payload)?;
                encode(&raft.append_entries(rpc).await.map_err(|e| e.to_string())?)
            }
            Ok(RaftCallKind::Vote) => {
                let rpc: VoteRequest<TypeConfig> = decode(&call.payload)?;
                encode(&raft.vote(rpc).await.map_err(|e| e.to_string())?)
            }
            Ok(RaftCallKind::FullSnapshot) => {
                let (vote, meta, snapshot): (
                    VoteOf<TypeConfig>,
                    SnapshotMetaOf<TypeConfig>,
                    ShardSnapshotRef,
                ) = decode(&call.payload)?;
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
            Ok(RaftCallKind::Propose) => {
                let (command, timeout_ms): ProposeCall = decode(&call.payload)?;
                encode(&propose_here(&raft, command, Duration::from_millis(timeout_ms)).await)
            }
            Ok(RaftCallKind::ReadIndex) => {
                let (lease_ms, timeout_ms): ReadIndexCall = decode(&call.payload)?;
                let lease = lease_ms.map(Duration::from_millis);
                encode(&read_index_here(&raft, lease, Duration::from_millis(timeout_ms)).await)
            }
            Ok(RaftCallKind::SnapshotFile) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} serves no snapshot files", call.group))?;
                let request: SnapshotFileCall = decode(&call.payload)?;
                let sm = replica.state_machine().clone();
                // File reads block: off the runtime's threads.
                tokio::task::spawn_blocking(move || serve_snapshot_file(&sm, request))
                    .await
                    .map_err(|e| format!("snapshot file task failed: {e}"))?
            }
            Ok(RaftCallKind::Replace) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                let (new, addr): (u64, String) = decode(&call.payload)?;
                encode(&replica.replace_here(new, addr).await)
            }
            Ok(RaftCallKind::Digest) => {
                let replica =
                    replica.ok_or_else(|| format!("group {} has no replica to answer", call.group))?;
                let index: u64 = decode(&call.payload)?;
                encode(&replica.state_machine().recorded_digest(index))
            }
            Ok(RaftCallKind::Unspecified) | Err(_) => Err(format!("unknown raft call kind {}", call.kind)),
        }
    }
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
    ) -> impl Future<Output = Result<RaftReply, String>> + Send;

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
    ) -> Result<RaftReply, String> {
        let channel = self.channel(addr)?;
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
                Err(status.to_string())
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
        option: &RPCOption,
    ) -> Result<T, Unreachable<TypeConfig>> {
        let call = RaftCall { group: self.group, kind: kind as i32, payload, target: self.target };
        let reply =
            self.wire.call(self.target, &self.addr, call, option.hard_ttl()).await.map_err(unreachable)?;
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
        if payload.len() > limit {
            // Only an entry written before the limits were enforced can be this big.
            return Err(unreachable(format!(
                "an AppendEntries message of {} bytes (entry {:?}) is over the message limit of {limit} bytes",
                payload.len(),
                last
            ))
            .into());
        }
        let reply: AppendEntriesResponse<TypeConfig> =
            self.call(RaftCallKind::AppendEntries, payload, &option).await?;
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
        Ok(self.call(RaftCallKind::Vote, payload, &option).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, ShardSnapshotRef>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let payload = encode(&(vote, snapshot.meta, snapshot.snapshot)).map_err(unreachable)?;
        Ok(self.call(RaftCallKind::FullSnapshot, payload, &option).await?)
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
}
