//! What a cluster member sees of the cluster: the meta leader's view of which nodes are up (and the
//! `node_down`/`node_up` events it drives), the cluster state as this node knows it, and the health
//! summary (`GET /health/cluster`).

use super::{LIVENESS_CALL_TIMEOUT, LIVENESS_EVERY, Membership};
use cairn_cluster::control::LIVE_WITHIN;
use cairn_cluster::meta::{ClusterState, MetaError};
use cairn_cluster::raft::{ReadLevel, Role};
use cairn_proto::cluster as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// What every node that is up says of its shards (asking them at once, each within
/// [`LIVENESS_CALL_TIMEOUT`]; a node that does not answer in time is left out).
pub(super) async fn node_statuses(
    state: &ClusterState,
    down: &BTreeSet<u64>,
    channels: &crate::channels::Channels,
) -> Vec<cairn_proto::kv::StatusResponse> {
    use cairn_proto::kv::{StatusRequest, kv_client::KvClient};
    let mut asks = tokio::task::JoinSet::new();
    for id in state.active_nodes().into_iter().filter(|id| !down.contains(id)) {
        let Some(channel) = state.nodes.get(&id).and_then(|n| channels.get(&n.grpc_addr).ok()) else {
            continue;
        };
        asks.spawn(async move {
            let ask = async {
                let mut client =
                    KvClient::new(channel).max_decoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES);
                client.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
            };
            tokio::time::timeout(LIVENESS_CALL_TIMEOUT, ask).await.ok().flatten()
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        answers.extend(answer.ok().flatten());
    }
    answers
}

/// Each shard's replicas whose replication stream is stalled, as its leader reports them.
async fn stalled_streams(
    state: &ClusterState,
    down: &BTreeSet<u64>,
    channels: &crate::channels::Channels,
) -> BTreeMap<u32, Vec<u64>> {
    let mut stalled = BTreeMap::new();
    for answer in node_statuses(state, down, channels).await {
        for shard in answer.shards {
            match shard.replication {
                Some(r) if r.role.parse() == Ok(Role::Leader) && !r.stalled.is_empty() => {
                    stalled.insert(shard.shard, r.stalled);
                }
                _ => {}
            }
        }
    }
    stalled
}

impl Membership {
    /// Watches the meta leader's view of the nodes until the meta replica stops, emitting `node_down`
    /// and `node_up` events (see [`Membership::watch_liveness`]).
    pub(super) async fn watch_nodes(self: Arc<Self>) {
        let Ok(meta) = self.meta() else { return };
        let mut up: BTreeMap<u64, bool> = BTreeMap::new();
        while !meta.replica().is_stopped() {
            self.watch_liveness(&mut up).await;
            tokio::time::sleep(LIVENESS_EVERY).await;
        }
    }

    /// Emits `node_down`/`node_up` events where the meta leader's view of a node changed since `up`
    /// (nodes seen for the first time are only recorded).
    async fn watch_liveness(&self, up: &mut BTreeMap<u64, bool>) {
        let Ok(Some(state)) = self.state(false).await else { return };
        let (_, liveness) = self.liveness(Some(&state), false).await;
        // Quiet groups whose leader is on a node not up check that it still leads (a node not heard
        // since the current meta leader took over counts: a check costs one call).
        let down = liveness.iter().filter(|n| !n.up).map(|n| n.node_id).collect();
        self.replication.down_nodes.set(down);
        self.replication.gc.set_ttl(Duration::from_secs(state.settings.gc_ttl_secs));
        // Never heard since the current meta leader took over: unknown, not down.
        for node in liveness.into_iter().filter(|n| n.heard_ms_ago.is_some()) {
            let before = up.insert(node.node_id, node.up);
            match (before, node.up) {
                (Some(true), false) => {
                    tracing::warn!(node = node.node_id, "node down");
                    self.plumbing.events.emit(crate::events::EventKind::NodeDown { node: node.node_id });
                }
                (Some(false), true) => {
                    tracing::info!(node = node.node_id, "node up");
                    self.plumbing.events.emit(crate::events::EventKind::NodeUp { node: node.node_id });
                }
                _ => {}
            }
        }
    }

    /// The cluster state this node knows (`linearizable`: through the meta leader); `None` before it is
    /// a member.
    pub(super) async fn state(
        &self,
        linearizable: bool,
    ) -> std::result::Result<Option<ClusterState>, MetaError> {
        let Some(meta) = self.meta.get() else { return Ok(None) };
        if !linearizable {
            // A learner (a node beyond the meta voters) serves no eventual reads: it asks the leader.
            if let Ok(read) = meta.read_if_any(ReadLevel::Eventual).await {
                return Ok(read);
            }
        }
        meta.read_if_any(ReadLevel::Strong).await
    }

    /// The meta group's leader (0: none known) and every active node's liveness as it sees it: asked
    /// of the leader when this node is not it (unless `forwarded`: then only the leader answers).
    pub(super) async fn liveness(
        &self,
        state: Option<&ClusterState>,
        forwarded: bool,
    ) -> (u64, Vec<pb::NodeLiveness>) {
        let (Some(meta), Some(state)) = (self.meta.get(), state) else { return (0, Vec::new()) };
        let status = meta.replica().status();
        let Some(leader) = status.leader else { return (0, Vec::new()) };
        if let Some(heard) = meta.replica().heard_from() {
            let nodes = state.active_nodes().into_iter().map(|id| {
                let ago =
                    if id == status.node { Some(Duration::ZERO) } else { heard.get(&id).copied().flatten() };
                pb::NodeLiveness {
                    node_id: id,
                    up: ago.is_some_and(|d| d < LIVE_WITHIN),
                    heard_ms_ago: ago.map(|d| d.as_millis() as u64),
                }
            });
            return (leader, nodes.collect());
        }
        let Some(channel) = state.nodes.get(&leader).and_then(|n| self.channels.get(&n.grpc_addr).ok())
        else {
            return (leader, Vec::new());
        };
        if forwarded {
            return (leader, Vec::new());
        }
        let ask = async {
            let mut client = pb::cluster_client::ClusterClient::new(channel);
            let request = pb::StateRequest { linearizable: false, forwarded: true };
            client.state(request).await.ok().map(|r| r.into_inner().liveness)
        };
        let liveness =
            tokio::time::timeout(LIVENESS_CALL_TIMEOUT, ask).await.ok().flatten().unwrap_or_default();
        (leader, liveness)
    }

    /// The cluster-wide health summary (`GET /health/cluster`), from the map and the meta leader's view
    /// of liveness: `ok` while every node is up and every shard has all its replicas on up nodes,
    /// `degraded` while some node is down but every shard keeps a majority of its replicas up,
    /// `unavailable` if some shard has lost its majority, no meta leader is known, or the map cannot be
    /// read. Returns whether the cluster is available (not `unavailable`) and the summary.
    pub(crate) async fn health(&self) -> (bool, serde_json::Value) {
        use serde_json::json;
        let state = match self.state(false).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                return (false, json!({"status": "unavailable", "reason": "not a cluster member yet"}));
            }
            Err(e) => return (false, json!({"status": "unavailable", "reason": e.to_string()})),
        };
        let (meta_leader, liveness) = self.liveness(Some(&state), false).await;
        let down: BTreeSet<u64> = liveness.iter().filter(|n| !n.up).map(|n| n.node_id).collect();
        let mut under = Vec::new();
        let mut lost = Vec::new();
        let mut moving = Vec::new();
        for s in state.map.iter().flat_map(|m| &m.shards) {
            let out = s.replicas.iter().filter(|r| down.contains(r)).count();
            if 2 * (s.replicas.len() - out) <= s.replicas.len() {
                lost.push(s.id);
            } else if out > 0 {
                under.push(s.id);
            }
            if s.moving.is_some() {
                moving.push(s.id);
            }
        }
        let stalled = stalled_streams(&state, &down, &self.channels).await;
        let (status, reason) = if meta_leader == 0 {
            ("unavailable", "no meta group leader is known".to_string())
        } else if state.map.is_none() {
            ("unavailable", "the shards are not placed yet".to_string())
        } else if !lost.is_empty() {
            ("unavailable", format!("shards {lost:?} have lost a majority of their replicas"))
        } else if !down.is_empty() {
            ("degraded", format!("nodes {down:?} are down"))
        } else if let Some((shard, nodes)) = stalled.iter().next() {
            ("degraded", format!("shard {shard}'s replication to nodes {nodes:?} is stalled"))
        } else {
            ("ok", String::new())
        };
        let summary = json!({
            "status": status,
            "reason": reason,
            "meta_leader": meta_leader,
            "map_version": state.map.as_ref().map_or(0, |m| m.version),
            "nodes": {"total": state.active_nodes().len(), "down": down},
            "shards": {
                "total": state.map.as_ref().map_or(0, |m| m.shards.len()),
                "under_replicated": under,
                "unavailable": lost,
                "moving": moving,
                "stalled": stalled,
            },
        });
        (status != "unavailable", summary)
    }
}
