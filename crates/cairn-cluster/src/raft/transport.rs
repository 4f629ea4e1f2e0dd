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

    /// The tonic service to add to a server.
    pub fn into_server(self) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(self)
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
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannels").field("peers", &self.channels.lock().len()).finish()
    }
}

impl PeerChannels {
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
        match RaftTransportClient::new(channel).call(request).await {
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc).map_err(unreachable)?;
        Ok(self.call(RaftCallKind::AppendEntries, payload, &option).await?)
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
