//! Cluster mode: a node that is a member of a cluster run by its meta group (ARCHITECTURE decision 36).
//!
//! A node started with `--join` (or with none, waiting for `cairn init`) keeps its identity in
//! `<store>/CLUSTER.json`: a random join token from its first start, then the cluster id and node id it
//! was given. Until it has an id it serves only the [`Cluster`](cairn_proto::cluster) gRPC service,
//! answering joins with `UNAVAILABLE`. It gets an id in one of two ways:
//!
//! - `cairn init` calls [`Init`](ClusterService) on it: it makes a new cluster (a fresh cluster id, the
//!   settings given), takes node id 1, makes the meta group with itself as its only member and stores
//!   the first [`ClusterState`]. That bootstrap is recorded in the identity file before it starts and
//!   redone after a crash until the state is stored.
//! - It asks the nodes in `--join` in turn, with its token, until one that is a member admits it
//!   ([`ClusterState::join`] through the meta group); refusals that retrying cannot cure (a wrong cluster
//!   id, an address another node has) stop the start-up with the reason.
//!
//! A member starts its replica of the meta group and the control plane's driver
//! ([`cairn_cluster::control::drive`]), which acts where this node leads the meta group: it adds every
//! active node's meta replica, and once as many nodes have joined as the replication factor, places the
//! shards. Every member then starts its replicas of the shards placed on it (the first node in a shard's
//! replica list makes the shard's group, the others wait to hear from it; a shard group's id is its
//! shard id) and the reconciler ([`cairn_cluster::control::reconcile`]), which keeps them in step with
//! the map.

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::layout::{IDENTITY_FILE, LAYOUT_FILE, read_json, write_json};
use crate::node::{ReplicaPlan, open_raft_log};
use crate::replicated::{Plumbing, ReplicationConfig};
use cairn_cluster::control::{self, META_TIMEOUT};
use cairn_cluster::meta::{
    ClusterSettings, ClusterState, JoinRequest, META_BUCKET, META_GROUP, META_TOTAL_BUCKETS, MetaError,
    MetaStore,
};
use cairn_cluster::raft::Role;
use cairn_cluster::raft::{
    GcFloor, PeerChannels, RaftService, ReadLevel, Replica, ReplicaConfig, ShardStateMachine,
};
use cairn_proto::cluster as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tonic::{Request, Response, Status};

#[path = "cluster_admin.rs"]
pub(crate) mod admin;
#[path = "cluster_reshape.rs"]
mod reshape;
#[path = "cluster_status.rs"]
mod status;

/// How long one join call may take.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between rounds of join attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How often a node looks at the meta leader's view of which nodes are up.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
/// How long a status call waits for the meta leader's liveness view.
const LIVENESS_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new cluster waits for its meta group's first election.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// How a cluster member starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Members' gRPC addresses to ask for admission (this node's own may be among them).
    pub join: Vec<String>,
    /// The cluster this node must join (`None`: whichever the nodes in `join` belong to).
    pub cluster_id: Option<String>,
    /// The gRPC address peers and clients reach this node at (default: the bound one).
    pub advertise_grpc: Option<String>,
    /// The HTTP address clients reach this node at (default: the bound one).
    pub advertise_http: Option<String>,
}

/// What a member keeps about itself (`<store>/CLUSTER.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    /// Proves this node's joins are this node's: a retried join gets the same id back.
    token: String,
    /// The cluster this node belongs to, once it does.
    cluster_id: Option<String>,
    /// This node's id, once it has one.
    node_id: Option<u64>,
    /// The gRPC address the node joined with: peers' Raft groups reach it there, so it must keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<String>,
    /// Set by `init` until the meta group holds this first state; a restart finishes the bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap: Option<ClusterState>,
}

/// A fresh id: 128 bits from the operating system's random source, in hex.
fn fresh_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| NodeError::Startup(format!("cannot read the operating system's random source: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A cluster member's membership: identity, the meta group replica, and the Raft plumbing its groups
/// share.
pub(crate) struct Membership {
    store: PathBuf,
    config: ClusterConfig,
    grpc_addr: String,
    http_addr: String,
    replication: ReplicationConfig,
    plumbing: Plumbing,
    identity: tokio::sync::Mutex<Identity>,
    meta: OnceLock<MetaStore>,
    /// This node's id once it has one.
    member: tokio::sync::watch::Sender<Option<u64>>,
    /// Channels to the other members, for liveness and status calls.
    channels: crate::channels::Channels,
}

impl Membership {
    /// Opens the member's store (`config.store`, absolute): identity, Raft log, and the meta replica if
    /// the node already belongs to a cluster. `grpc_addr`/`http_addr` are the addresses it advertises.
    pub(crate) async fn open(
        node: &NodeConfig,
        config: ClusterConfig,
        grpc_addr: String,
        http_addr: String,
        replication: ReplicationConfig,
    ) -> Result<Arc<Membership>> {
        let store = node.store.clone();
        let (identity, log) = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                std::fs::create_dir_all(&store).map_err(|e| {
                    NodeError::Startup(format!("cannot create store {}: {e}", store.display()))
                })?;
                if store.join(LAYOUT_FILE).exists() {
                    return Err(NodeError::Startup(format!(
                        "store {} belongs to a node started without --join; it cannot join a cluster",
                        store.display()
                    )));
                }
                let path = store.join(IDENTITY_FILE);
                let identity = match read_json::<Identity>(&path)? {
                    Some(identity) => identity,
                    None => {
                        let identity = Identity { token: fresh_id()?, ..Identity::default() };
                        write_json(&path, &identity)?;
                        identity
                    }
                };
                Ok((identity, open_raft_log(&store)?))
            })
            .await
            .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))??
        };
        if let (Some(want), Some(have)) = (&config.cluster_id, &identity.cluster_id)
            && want != have
        {
            return Err(NodeError::Startup(format!(
                "store {} belongs to cluster {have}, not {want}",
                store.display()
            )));
        }
        if let Some(joined) = &identity.grpc_addr
            && *joined != grpc_addr
        {
            return Err(NodeError::Startup(format!(
                "this node joined the cluster at gRPC address {joined} and must keep it (its Raft groups \
                 reach it there): start it with --grpc-addr {joined} (or --advertise-grpc-addr {joined})"
            )));
        }
        let plumbing = Plumbing {
            service: RaftService::default(),
            wire: PeerChannels::new(node.max_message_bytes),
            log: Arc::new(log),
            events: crate::events::Events::new(),
            frozen: cairn_cluster::raft::FrozenShards::default(),
        };
        let node_id = identity.node_id;
        let bootstrap = identity.bootstrap.clone();
        let membership = Arc::new(Membership {
            store,
            config,
            grpc_addr,
            http_addr,
            replication,
            plumbing,
            identity: tokio::sync::Mutex::new(identity),
            meta: OnceLock::new(),
            member: tokio::sync::watch::Sender::new(None),
            channels: crate::channels::Channels::new(LIVENESS_CALL_TIMEOUT),
        });
        if let Some(id) = node_id {
            membership.start_meta(id).await?;
            if let Some(state) = bootstrap {
                membership.finish_bootstrap(id, &state).await?;
            }
        }
        Ok(membership)
    }

    /// The gRPC service peers and operators call.
    pub(crate) fn service(
        self: &Arc<Self>,
        max_message_bytes: usize,
    ) -> pb::cluster_server::ClusterServer<ClusterService> {
        pb::cluster_server::ClusterServer::new(ClusterService { membership: Arc::clone(self) })
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// The Raft plumbing every group on this node shares.
    pub(crate) fn plumbing(&self) -> &Plumbing {
        &self.plumbing
    }

    /// Starts this node's replica of the meta group, as node `id`.
    async fn start_meta(&self, id: u64) -> Result<()> {
        let dir = self.store.join("meta");
        let sm = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let mut template = cairn_engine::Config::new(&dir);
                template.wal = false;
                template.total_buckets = META_TOTAL_BUCKETS;
                template.block_cache_bytes = 1 << 20;
                ShardStateMachine::open(dir, template, vec![META_BUCKET..=META_BUCKET], META_BUCKET)
            })
            .await
            .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))?
            .map_err(|e| NodeError::Startup(format!("cannot open the meta replica: {e}")))?
        };
        let replica = Replica::start(
            id,
            META_GROUP,
            Arc::clone(&self.plumbing.log),
            sm,
            self.plumbing.wire.clone(),
            // The meta group never goes quiet: its leader's heartbeats are how nodes are known alive.
            // Nor does it collect anything: its rows are not versioned.
            ReplicaConfig {
                quiesce_after: Duration::ZERO,
                gc: Default::default(),
                ..self.replication.replica_config()
            },
        )
        .await
        .map_err(|e| NodeError::Startup(format!("cannot start the meta replica: {e}")))?;
        self.plumbing.service.register_replica(&replica);
        self.plumbing.events.set_observer(id);
        let tended = replica.clone();
        tokio::spawn(async move { tended.tend().await });
        let events = Arc::clone(&self.plumbing.events);
        tokio::spawn(crate::replicated::watch_leadership("meta".into(), replica.clone(), None, events));
        let meta = MetaStore::new(replica, META_TIMEOUT);
        self.replication.gc.set_floors(gc_floors(meta.clone()));
        if self.meta.set(meta).is_err() {
            return Err(NodeError::Internal("the meta replica started twice".into()));
        }
        self.member.send_replace(Some(id));
        Ok(())
    }

    /// Makes the meta group (this node its only member) and stores `state` in it; clears the pending
    /// bootstrap in the identity file. Safe to redo.
    async fn finish_bootstrap(&self, id: u64, state: &ClusterState) -> Result<()> {
        let meta = self.meta()?;
        if meta.replica().is_new() {
            let members = BTreeMap::from([(id, self.grpc_addr.clone())]);
            meta.replica()
                .bootstrap(members)
                .await
                .map_err(|e| NodeError::Startup(format!("cannot make the meta group: {e}")))?;
        }
        let deadline = tokio::time::Instant::now() + BOOTSTRAP_TIMEOUT;
        loop {
            match meta.bootstrap(state).await {
                Ok(_) => break,
                // Stored before a crash, and changed since (a node joined): the bootstrap is done.
                Err(MetaError::AlreadyInitialized(cluster)) if cluster == state.cluster_id => break,
                // No leader yet (the first election).
                Err(MetaError::Group(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the meta group's first leader");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(NodeError::Startup(format!("cannot store the first cluster state: {e}")));
                }
            }
        }
        let mut identity = self.identity.lock().await;
        identity.bootstrap = None;
        self.save(&identity).await
    }

    /// Writes `identity` to the store.
    async fn save(&self, identity: &Identity) -> Result<()> {
        let (path, identity) = (self.store.join(IDENTITY_FILE), identity.clone());
        tokio::task::spawn_blocking(move || write_json(&path, &identity))
            .await
            .map_err(|e| NodeError::Internal(format!("identity task failed: {e}")))?
    }

    /// The meta store (once this node is a member).
    pub(crate) fn meta(&self) -> Result<&MetaStore> {
        self.meta.get().ok_or_else(|| NodeError::Unavailable("this node is not a cluster member yet".into()))
    }

    /// `cairn init`: makes a new cluster with this node as node 1.
    async fn init(&self, settings: ClusterSettings) -> std::result::Result<(String, u64), Status> {
        let mut identity = self.identity.lock().await;
        if let (Some(cluster), Some(id), Some(state)) =
            (identity.cluster_id.clone(), identity.node_id, identity.bootstrap.clone())
        {
            // An earlier init got this far and failed: finish it.
            drop(identity);
            if self.meta.get().is_none() {
                self.start_meta(id).await.map_err(crate::wire::status_of)?;
            }
            self.finish_bootstrap(id, &state).await.map_err(crate::wire::status_of)?;
            return Ok((cluster, id));
        }
        if let Some(cluster) = &identity.cluster_id {
            return Err(Status::already_exists(format!("this node already belongs to cluster {cluster}")));
        }
        let cluster_id = match self.config.cluster_id.clone() {
            Some(id) => id,
            None => fresh_id().map_err(crate::wire::status_of)?,
        };
        let state = ClusterState::new(&cluster_id, settings).map_err(crate::wire::meta_status)?;
        let request = JoinRequest {
            cluster_id: cluster_id.clone(),
            token: identity.token.clone(),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
        };
        let (state, id) = state.join(&request).map_err(crate::wire::meta_status)?;
        let state = state.ok_or_else(|| Status::internal("the first join changed nothing"))?;
        identity.cluster_id = Some(cluster_id.clone());
        identity.node_id = Some(id);
        identity.grpc_addr = Some(self.grpc_addr.clone());
        identity.bootstrap = Some(state.clone());
        self.save(&identity).await.map_err(crate::wire::status_of)?;
        drop(identity);
        self.start_meta(id).await.map_err(crate::wire::status_of)?;
        self.finish_bootstrap(id, &state).await.map_err(crate::wire::status_of)?;
        tracing::info!(cluster = %cluster_id, node = id, "made a new cluster");
        Ok((cluster_id, id))
    }

    /// Admits a node (any member answers; the change goes through the meta group).
    async fn admit(&self, mut request: JoinRequest) -> std::result::Result<(String, u64), Status> {
        let meta = self.meta.get().ok_or_else(|| {
            Status::unavailable("this node is not a cluster member yet (run `cairn init` on one node)")
        })?;
        if request.cluster_id.is_empty() {
            let identity = self.identity.lock().await;
            request.cluster_id = identity.cluster_id.clone().unwrap_or_default();
        }
        let (state, (id, changed)) = meta
            .update(|s| s.join(&request).map(|(next, id)| (next.clone(), (id, next.is_some()))))
            .await
            .map_err(crate::wire::meta_status)?;
        if changed {
            tracing::info!(node = id, grpc = %request.grpc_addr, "admitted a node");
            let grpc_addr = request.grpc_addr.clone();
            self.plumbing.events.emit(crate::events::EventKind::NodeJoined { node: id, grpc_addr });
        }
        Ok((state.cluster_id, id))
    }

    /// Gets this node an id: waits for `init`, or asks the `--join` nodes in turn until one admits it.
    /// Returns the id.
    async fn become_member(&self) -> Result<u64> {
        let mut member = self.member.subscribe();
        if let Some(id) = *member.borrow_and_update() {
            return Ok(id);
        }
        let peers: Vec<String> = self.config.join.iter().filter(|a| **a != self.grpc_addr).cloned().collect();
        if peers.is_empty() {
            tracing::info!("waiting for `cairn init` (no --join peers given)");
        }
        let mut rounds = 0u64;
        loop {
            for peer in &peers {
                if let Some(id) = *member.borrow_and_update() {
                    return Ok(id);
                }
                match self.ask_to_join(peer).await {
                    Ok(Some(id)) => return Ok(id),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(id) = *member.borrow_and_update() {
                return Ok(id);
            }
            rounds += 1;
            if !peers.is_empty() && rounds % 20 == 1 {
                tracing::info!(peers = ?peers, "waiting to join: no member answered yet (is the cluster initialised?)");
            }
            tokio::select! {
                _ = member.changed() => {}
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    /// One join attempt at `peer`: `Some(id)` if admitted, `None` if worth retrying, an error if not.
    async fn ask_to_join(&self, peer: &str) -> Result<Option<u64>> {
        let token = self.identity.lock().await.token.clone();
        let request = pb::JoinRequest {
            cluster_id: self.config.cluster_id.clone().unwrap_or_default(),
            token,
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
        };
        let call = async {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
                .map_err(|e| Status::invalid_argument(format!("bad --join address {peer:?}: {e}")))?
                .connect_timeout(JOIN_CALL_TIMEOUT);
            let channel = endpoint.connect().await.map_err(|e| Status::unavailable(e.to_string()))?;
            pb::cluster_client::ClusterClient::new(channel).join(request).await
        };
        let reply = match tokio::time::timeout(JOIN_CALL_TIMEOUT, call).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                return match status.code() {
                    tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists
                    | tonic::Code::InvalidArgument => Err(NodeError::Startup(format!(
                        "{peer} refused to admit this node: {}",
                        status.message()
                    ))),
                    _ => {
                        tracing::debug!(%peer, error = %status.message(), "join attempt failed");
                        Ok(None)
                    }
                };
            }
            Err(_) => return Ok(None),
        };
        let mut identity = self.identity.lock().await;
        if identity.node_id.is_some() {
            // `init` made this node a member meanwhile (an operator's mistake: refuse the second one).
            return Err(NodeError::Startup("this node was initialised while joining another cluster".into()));
        }
        identity.cluster_id = Some(reply.cluster_id.clone());
        identity.node_id = Some(reply.node_id);
        identity.grpc_addr = Some(self.grpc_addr.clone());
        self.save(&identity).await?;
        drop(identity);
        self.start_meta(reply.node_id).await?;
        tracing::info!(cluster = %reply.cluster_id, node = reply.node_id, via = %peer, "joined the cluster");
        Ok(Some(reply.node_id))
    }

    /// Becomes a member (see [`Membership::become_member`]), then waits until the shards are placed;
    /// returns this node's id and the cluster state with the shard map.
    pub(crate) async fn establish(self: &Arc<Self>) -> Result<(u64, ClusterState)> {
        let id = self.become_member().await?;
        let meta = self.meta()?;
        let events = Arc::clone(&self.plumbing.events);
        let sink: control::EventSink = Arc::new(move |e| events.emit(e.into()));
        tokio::spawn(control::drive(meta.clone(), sink));
        tokio::spawn(Arc::clone(self).watch_nodes());
        tokio::spawn(Arc::clone(self).reshape());
        let (mut waits, mut seen) = (0u64, None);
        loop {
            // Through the leader's read index: a learner (a node beyond the voters) serves no eventual
            // reads, and this node's replica must have caught up with the map anyway.
            if let Ok(state) = meta.read(ReadLevel::Strong).await
                && state.map.is_some()
            {
                return Ok((id, state));
            }
            waits += 1;
            if waits % 20 == 1 {
                tracing::info!(node = id, "waiting for the cluster to place its shards");
            }
            if meta.replica().is_stopped() {
                return Err(NodeError::Unavailable("the meta replica stopped".into()));
            }
            seen = meta.changed(seen, Duration::from_millis(500)).await;
        }
    }

    /// The shard replicas node `id` serves under `state`'s map, and the node config to serve them with.
    pub(crate) fn plan(
        &self,
        node: &NodeConfig,
        id: u64,
        state: &ClusterState,
    ) -> (NodeConfig, u32, Vec<ReplicaPlan>) {
        let addrs: BTreeMap<u64, String> =
            state.nodes.iter().map(|(id, n)| (*id, n.grpc_addr.clone())).collect();
        let mut replication = self.replication.clone();
        replication.node_id = id;
        replication.members = addrs;
        // The map decides a shard's voters: its re-synced replicas are promoted by the reconciler.
        replication.promote_resynced = false;
        let mut config = node.clone();
        config.replication = Some(replication);
        config.max_clock_offset = Duration::from_millis(state.settings.max_clock_offset_ms);
        replication_gc_ttl(&config, state);
        let total_buckets = state.map.as_ref().map_or(state.settings.total_buckets, |m| m.total_buckets);
        let plans = control::boot_plan(state, id, &crate::node::replicas_on_disk(&self.store));
        (config, total_buckets, plans)
    }

    /// Before node `id` starts its replicas: retires those its store holds for shards the map in `state`
    /// does not give it (shards that moved away while it was down; also one moving back to it, which
    /// must join afresh).
    pub(crate) async fn retire_stale(
        &self,
        config: &crate::node::NodeConfig,
        id: u64,
        state: &ClusterState,
    ) -> crate::error::Result<()> {
        let Some(map) = &state.map else { return Ok(()) };
        let stale = control::stale_shards(state, id);
        let log = std::sync::Arc::clone(&self.plumbing.log);
        for group in crate::node::retire_stale(config, map.total_buckets, log, stale).await? {
            tracing::info!(shard = group, "retired a replica left by a shard that moved away meanwhile");
            self.plumbing.events.emit(crate::events::EventKind::ReplicaRetired {
                shard: cairn_cluster::placement::ShardId(group as u32),
            });
        }
        Ok(())
    }

    /// Hands the meta group's leadership to another replica if this node leads it (see
    /// [`Node::hand_over_leadership`](crate::node::Node::hand_over_leadership)).
    pub(crate) async fn hand_over(&self, timeout: Duration) -> bool {
        match self.meta.get() {
            Some(meta) if meta.replica().status().role == Role::Leader => {
                meta.replica().hand_over(timeout).await
            }
            _ => true,
        }
    }

    /// Stops the meta replica (call after the shard replicas stopped).
    pub(crate) async fn stop(&self) {
        if let Some(meta) = self.meta.get() {
            self.plumbing.service.unregister(META_GROUP);
            if let Err(e) = meta.replica().shutdown().await {
                tracing::warn!(error = %e, "meta replica did not stop cleanly");
            }
        }
    }

    /// The store directory.
    pub(crate) fn store(&self) -> &Path {
        &self.store
    }
}

/// The `Cluster` gRPC service.
pub struct ClusterService {
    membership: Arc<Membership>,
}

/// Cluster settings from an init request (zeros take the defaults).
fn settings_of(r: &pb::InitRequest) -> ClusterSettings {
    ClusterSettings {
        replication_factor: if r.replication_factor == 0 { 3 } else { r.replication_factor as usize },
        shards: if r.shards == 0 { 4 } else { r.shards as usize },
        total_buckets: if r.total_buckets == 0 { 1024 } else { r.total_buckets },
        dead_after_secs: if r.dead_after_secs == 0 { 30 } else { r.dead_after_secs },
        rebalance: !r.no_rebalance,
        max_clock_offset_ms: if r.max_clock_offset_ms == 0 {
            cairn_cluster::meta::DEFAULT_MAX_CLOCK_OFFSET_MS
        } else {
            r.max_clock_offset_ms
        },
        reshape: Default::default(),
        gc_ttl_secs: cairn_cluster::meta::DEFAULT_GC_TTL_SECS,
        gc_ttl_before_secs: 0,
        gc_ttl_raised_ms: 0,
        backup_rate_bytes: cairn_cluster::meta::DEFAULT_BACKUP_RATE_BYTES,
    }
}

/// `settings` as `Cluster/Settings` answers them.
fn settings_reply(settings: &ClusterSettings) -> std::result::Result<Response<pb::SettingsReply>, Status> {
    let settings_json = serde_json::to_string(settings).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::SettingsReply { settings_json }))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    type EventsStream = tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::Event, Status>>;

    async fn events(
        &self,
        _request: Request<pb::EventsRequest>,
    ) -> std::result::Result<Response<Self::EventsStream>, Status> {
        let stream = self.membership.plumbing.events.pump(|e| {
            Ok(pb::Event {
                seq: e.seq,
                at_ms: e.at_ms,
                observer: e.observer,
                r#type: e.type_name().to_string(),
                json: e.json(),
            })
        });
        Ok(Response::new(stream))
    }

    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> std::result::Result<Response<pb::Member>, Status> {
        let settings = settings_of(request.get_ref());
        let (cluster_id, node_id) = self.membership.init(settings).await?;
        Ok(Response::new(pb::Member { cluster_id, node_id }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> std::result::Result<Response<pb::Member>, Status> {
        let r = request.into_inner();
        let request = JoinRequest {
            cluster_id: r.cluster_id,
            token: r.token,
            grpc_addr: r.grpc_addr,
            http_addr: r.http_addr,
        };
        let (cluster_id, node_id) = self.membership.admit(request).await?;
        Ok(Response::new(pb::Member { cluster_id, node_id }))
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> std::result::Result<Response<pb::SplitShardReply>, Status> {
        let r = request.into_inner();
        let at = u16::try_from(r.at)
            .map_err(|_| Status::invalid_argument(format!("bucket {} is out of range", r.at)))?;
        let shard = cairn_cluster::placement::ShardId(r.shard);
        let at = (at != 0).then_some(at);
        let (new, at) = self.membership.split_shard(shard, at).await.map_err(crate::wire::meta_status)?;
        Ok(Response::new(pb::SplitShardReply { new_shard: new.0, at: u32::from(at) }))
    }

    async fn merge_shards(
        &self,
        request: Request<pb::MergeShardsRequest>,
    ) -> std::result::Result<Response<pb::MergeShardsReply>, Status> {
        let r = request.into_inner();
        let (left, right) =
            (cairn_cluster::placement::ShardId(r.left), cairn_cluster::placement::ShardId(r.right));
        self.membership.merge_shards(left, right).await.map_err(crate::wire::meta_status)?;
        Ok(Response::new(pb::MergeShardsReply {}))
    }

    async fn set_setting(
        &self,
        request: Request<pb::SetSettingRequest>,
    ) -> std::result::Result<Response<pb::SettingsReply>, Status> {
        let r = request.into_inner();
        let settings =
            self.membership.set_setting(&r.name, &r.value).await.map_err(crate::wire::meta_status)?;
        settings_reply(&settings)
    }

    async fn settings(
        &self,
        _request: Request<pb::SettingsRequest>,
    ) -> std::result::Result<Response<pb::SettingsReply>, Status> {
        let settings = self.membership.settings().await.map_err(crate::wire::meta_status)?;
        settings_reply(&settings)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> std::result::Result<Response<pb::TransferLeaderReply>, Status> {
        let r = request.into_inner();
        let group = cairn_cluster::placement::ShardId(r.shard).group();
        let moved = match self.membership.plumbing.service.replica(group) {
            Some(replica) => replica.hand_to(r.to, reshape::HAND_OVER_TIMEOUT).await,
            None => false,
        };
        Ok(Response::new(pb::TransferLeaderReply { moved }))
    }

    async fn protect(
        &self,
        request: Request<pb::ProtectRequest>,
    ) -> std::result::Result<Response<pb::ProtectedTimestampInfo>, Status> {
        let r = request.into_inner();
        let record = self
            .membership
            .protect(r.wall_time, r.expires_in_secs, &r.owner)
            .await
            .map_err(crate::wire::meta_status)?;
        Ok(Response::new(protected_info(&record)))
    }

    async fn release_protected(
        &self,
        request: Request<pb::ReleaseProtectedRequest>,
    ) -> std::result::Result<Response<pb::ReleaseProtectedReply>, Status> {
        let id = request.into_inner().id;
        if self.membership.release_protected(id).await.map_err(crate::wire::meta_status)? {
            Ok(Response::new(pb::ReleaseProtectedReply {}))
        } else {
            Err(Status::not_found(format!("no protected timestamp {id} is held")))
        }
    }

    async fn list_protected(
        &self,
        _request: Request<pb::ListProtectedRequest>,
    ) -> std::result::Result<Response<pb::ListProtectedReply>, Status> {
        let held = self.membership.protected().await.map_err(crate::wire::meta_status)?;
        Ok(Response::new(pb::ListProtectedReply { protected: held.iter().map(protected_info).collect() }))
    }

    async fn list_shards(
        &self,
        _request: Request<pb::ListShardsRequest>,
    ) -> std::result::Result<Response<pb::ListShardsReply>, Status> {
        let map = self.membership.shard_map().await.map_err(crate::wire::meta_status)?;
        Ok(Response::new(admin::list_reply(&map)))
    }

    async fn state(
        &self,
        request: Request<pb::StateRequest>,
    ) -> std::result::Result<Response<pb::StateReply>, Status> {
        let r = request.into_inner();
        let state = self.membership.state(r.linearizable).await.map_err(crate::wire::meta_status)?;
        let node_id = *self.membership.member.borrow();
        let (meta_leader, liveness) = self.membership.liveness(state.as_ref(), r.forwarded).await;
        Ok(Response::new(pb::StateReply {
            state_json: state
                .map(|s| s.encode())
                .transpose()
                .map_err(crate::wire::meta_status)?
                .unwrap_or_default(),
            node_id: node_id.unwrap_or(0),
            meta_leader,
            liveness,
        }))
    }
}

/// Makes the cluster's `gc_ttl` setting the TTL `config`'s replicas propose GC thresholds from, and
/// has them wait for the meta group's protected timestamps before they propose any.
fn replication_gc_ttl(config: &NodeConfig, state: &ClusterState) {
    if let Some(rc) = &config.replication {
        rc.gc.set_ttl(Duration::from_secs(state.settings.gc_ttl_secs));
        rc.gc.await_floors();
    }
}

/// How long a read of the protected timestamps serves other shards' leaders on this node.
const GC_FLOOR_REUSE: Duration = Duration::from_secs(1);
/// How long a read of the protected timestamps may take (no threshold is proposed without one).
const GC_FLOOR_WAIT: Duration = Duration::from_secs(2);

/// Protected timestamps as this node's shard leaders take them: a linearizable read of the meta group
/// after a read of the clock (see `meta_protected.rs`), shared by reads within [`GC_FLOOR_REUSE`] (the
/// clock reading goes with it, so a shared answer is as safe as a fresh one).
fn gc_floors(meta: MetaStore) -> cairn_cluster::raft::GcFloorSource {
    type Cached = Option<(std::time::Instant, Option<GcFloor>)>;
    let cache: Arc<tokio::sync::Mutex<Cached>> = Arc::default();
    Arc::new(move || {
        let (meta, cache) = (meta.clone(), Arc::clone(&cache));
        Box::pin(async move {
            let mut cached = cache.lock().await;
            // A failure is kept as long as an answer: leaders waiting in line do not each wait it out.
            if let Some((at, floor)) = *cached
                && at.elapsed() < GC_FLOOR_REUSE
            {
                return floor;
            }
            let read_at = cairn_cluster::raft::wall_now();
            let read = tokio::time::timeout(GC_FLOOR_WAIT, meta.read(ReadLevel::Strong)).await;
            let floor = match read {
                Ok(Ok(state)) => {
                    // Judged as expired only once expired by any clock within the offset of this one.
                    let offset_ms = state.settings.max_clock_offset_ms;
                    let now_ms = (read_at / 1_000_000).saturating_sub(offset_ms);
                    Some(GcFloor { read_at, floor: state.protected_floor(now_ms) })
                }
                _ => None,
            };
            *cached = Some((std::time::Instant::now(), floor));
            floor
        })
    })
}

/// A protected timestamp on the wire.
fn protected_info(p: &cairn_cluster::meta::ProtectedTimestamp) -> pb::ProtectedTimestampInfo {
    pb::ProtectedTimestampInfo {
        id: p.id,
        wall_time: p.wall_time,
        expires_at_ms: p.expires_at_ms,
        owner: p.owner.clone(),
        created_at_ms: p.created_at_ms,
    }
}
