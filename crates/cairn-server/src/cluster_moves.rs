//! Replica moves (ARCHITECTURE decision 40): re-creating a dead node's replicas on live nodes, and
//! reconciling what each node runs with the shard map.
//!
//! A move goes through three steps, each driven from what the meta group and the shard's Raft group
//! hold, so any of them may be redone after a crash or a leader change:
//!
//! 1. The meta leader's driver finds nodes it has not heard from for `dead_after_secs`, plans moves with
//!    [`plan_repair`] and records each as its shard's move under way ([`ClusterState::begin_move`]).
//!    While every node lives it evens out the load instead, one move at a time ([`plan_rebalance`]):
//!    a node that joined after the placement, or came back, receives replicas.
//! 2. Every node reconciles itself with the map ([`Membership::reconcile`]): it starts replicas of the
//!    shards placed or moving to it (a move's destination starts empty, serves nothing, and asks the
//!    shard's group to take it in as a learner), serves exactly the shards whose replica list names it,
//!    and retires the replicas of shards that no longer name it: a node that was down while its replicas
//!    moved drops them when it returns instead of serving stale data.
//! 3. The shard's leader advances the move in its group: once the learner has caught up it becomes a
//!    voter in place of the source, the source leaves the group, and only then is the move recorded done
//!    ([`ClusterState::finish_move`]), which makes the destination a replica in the map (epoch bumped).
//!    The map never names a replica the group does not have, so a node that reads the map may retire
//!    anything the map no longer names.

use super::{Membership, RETRY_PAUSE};
use crate::events::EventKind;
use crate::node::{Node, ReplicaPlan};
use cairn_cluster::meta::{ClusterState, MetaError, MetaStore};
use cairn_cluster::placement::{Move, ShardDescriptor, ShardId, plan_rebalance, plan_repair};
use cairn_cluster::raft::Role;
use cairn_cluster::raft::{MoveStep, ReadLevel, Replica};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a shard leader waits for a membership change of its group (or to hand its leadership
/// over, when it is a move's source).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two reconcile passes while nothing is under way.
const IDLE_RECONCILE: Duration = Duration::from_secs(5);

impl Membership {
    /// On the meta leader (leading since `since`): records a move for every replica on a node not heard
    /// from for the cluster's `dead_after_secs` that a live node can take.
    pub(super) async fn repair(
        &self,
        meta: &MetaStore,
        state: &ClusterState,
        since: tokio::time::Instant,
    ) -> Result<(), MetaError> {
        let Some(map) = &state.map else { return Ok(()) };
        let live = self.live_nodes(meta, state, since);
        if live.len() == state.active_nodes().len() {
            return self.rebalance(meta, state, &live).await;
        }
        // A move whose destination died is given up (its shard is planned again afterwards).
        for mv in map.moves_under_way().into_iter().filter(|mv| !live.contains(&mv.to)) {
            if record(meta, |s| s.request_abandon(&mv)).await?.is_some() {
                tracing::warn!(shard = %mv.shard, to = mv.to, "giving up a move: its destination is dead");
            }
        }
        self.start_moves(meta, plan_repair(map, &live).moves, "re-creating a dead node's replica").await
    }

    /// Records each of `planned` as its shard's move under way ([`ClusterState::begin_move`]); one
    /// planned against a map that changed since is skipped (the next pass plans again).
    async fn start_moves(&self, meta: &MetaStore, planned: Vec<Move>, why: &str) -> Result<(), MetaError> {
        for planned in planned {
            let (_, begun) = meta
                .update(|s| match s.begin_move(&planned) {
                    Ok((next, begun)) => Ok((Some(next), Some(begun))),
                    Err(MetaError::Placement(_)) => Ok((None, None)),
                    Err(e) => Err(e),
                })
                .await?;
            if let Some(mv) = begun {
                tracing::warn!(shard = %mv.shard, from = mv.from, to = mv.to, "{why}");
                self.plumbing.events.emit(EventKind::ReplicaMoving {
                    shard: mv.shard,
                    from: mv.from,
                    to: mv.to,
                    epoch: mv.epoch,
                });
            }
        }
        Ok(())
    }

    /// On the meta leader, while every node lives: starts one move (cluster-wide, at a time) of a
    /// replica from the most loaded node to the least loaded one while they differ by two or more
    /// ([`plan_rebalance`]): a node that joined after the placement, or came back after its replicas
    /// moved away, receives replicas until the load is even.
    async fn rebalance(
        &self,
        meta: &MetaStore,
        state: &ClusterState,
        live: &BTreeSet<u64>,
    ) -> Result<(), MetaError> {
        let Some(map) = &state.map else { return Ok(()) };
        if !state.settings.rebalance || !map.moves_under_way().is_empty() {
            return Ok(());
        }
        // Only among nodes that are members of the meta group and answering: a node still joining
        // waits.
        let heard = meta.replica().heard_from().unwrap_or_default();
        let me = meta.replica().status().node;
        let ready: BTreeSet<u64> = live
            .iter()
            .copied()
            .filter(|n| *n == me || heard.get(n).copied().flatten().is_some_and(|d| d < super::LIVE_WITHIN))
            .collect();
        if ready.len() != live.len() {
            return Ok(());
        }
        self.start_moves(meta, plan_rebalance(map, &ready, 1), "rebalancing a replica").await
    }

    /// On the meta leader (leading since `since`): the active nodes not dead, that is heard from within
    /// the cluster's `dead_after_secs` (a node never heard from since this leader took over counts from
    /// the takeover).
    pub(super) fn live_nodes(
        &self,
        meta: &MetaStore,
        state: &ClusterState,
        since: tokio::time::Instant,
    ) -> BTreeSet<u64> {
        let dead_after = Duration::from_secs(state.settings.dead_after_secs);
        let heard = meta.replica().heard_from().unwrap_or_default();
        let me = meta.replica().status().node;
        let alive = |id: &u64| {
            *id == me
                || heard.get(id).copied().flatten().map_or(since.elapsed() < dead_after, |d| d < dead_after)
        };
        state.active_nodes().into_iter().filter(alive).collect()
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
        let stale = map
            .shards
            .iter()
            .filter(|s| !s.replicas.contains(&id))
            .map(|s| (s.id.group(), s.ranges.clone()))
            .collect();
        let log = std::sync::Arc::clone(&self.plumbing.log);
        for group in crate::node::retire_stale(config, map.total_buckets, log, stale).await? {
            tracing::info!(shard = group, "retired a replica left by a shard that moved away meanwhile");
            self.plumbing.events.emit(EventKind::ReplicaRetired { shard: ShardId(group as u32) });
        }
        Ok(())
    }

    /// Keeps node `id`'s replicas in step with the shard map until the node or the meta replica stops
    /// (see the module documentation).
    ///
    /// A pass runs whenever this node's meta replica applies a change, every [`RETRY_PAUSE`] while
    /// something is under way here (a move, a learner to promote or remove, a pass that failed), and
    /// every [`IDLE_RECONCILE`] otherwise (a replica cut off from the meta group sees no changes).
    pub(crate) async fn reconcile(self: Arc<Self>, node: Weak<Node>, id: u64) {
        let Ok(meta) = self.meta() else { return };
        let mut seen = None;
        loop {
            if meta.replica().status().role == Role::Shutdown {
                return;
            }
            let Some(node) = node.upgrade() else { return };
            let settled = match self.reconcile_once(meta, &node, id).await {
                Ok(settled) => settled,
                Err(e) => {
                    tracing::debug!(error = %e, "reconciling with the shard map failed; retrying");
                    false
                }
            };
            drop(node);
            seen = meta.changed(seen, if settled { IDLE_RECONCILE } else { RETRY_PAUSE }).await;
        }
    }

    /// One pass of [`Membership::reconcile`]; whether nothing is left under way here.
    async fn reconcile_once(&self, meta: &MetaStore, node: &Node, id: u64) -> Result<bool, String> {
        // Through the leader: decisions to retire must not rest on a lagging copy of the map.
        let state = meta.read(ReadLevel::Strong).await.map_err(|e| e.to_string())?;
        let Some(map) = &state.map else { return Ok(true) };
        node.observe_map(&state);
        let addrs: BTreeMap<u64, String> =
            state.nodes.iter().map(|(id, n)| (*id, n.grpc_addr.clone())).collect();
        let incoming = |s: &cairn_cluster::placement::ShardDescriptor| s.moving.is_some_and(|m| m.to == id);
        let serving: BTreeSet<u64> =
            map.shards.iter().filter(|s| s.replicas.contains(&id)).map(|s| s.id.group()).collect();
        let wanted: BTreeSet<u64> = map
            .shards
            .iter()
            .filter(|s| s.replicas.contains(&id) || incoming(s))
            .map(|s| s.id.group())
            .collect();
        // Each shard on its own: one that cannot make progress (no quorum, a disk error) must not hold
        // up the others.
        let held = node.groups();
        for s in map.shards.iter().filter(|s| wanted.contains(&s.id.group())) {
            if !held.contains(&s.id.group()) {
                let plan = ReplicaPlan {
                    group: s.id.group(),
                    ranges: s.ranges.clone(),
                    bootstrap: None,
                    serving: false,
                };
                match node.add_replica(plan).await {
                    Ok(()) => tracing::info!(shard = %s.id, "started a replica placed on this node"),
                    Err(e) => tracing::warn!(shard = %s.id, error = %e, "cannot start a replica placed here"),
                }
            }
        }
        for group in held.difference(&wanted) {
            match node.retire_replica(*group).await {
                Ok(()) => {
                    tracing::info!(shard = group, "retired a replica of a shard that moved away");
                    self.plumbing.events.emit(EventKind::ReplicaRetired { shard: ShardId(*group as u32) });
                }
                Err(e) => tracing::warn!(shard = group, error = %e, "cannot retire a replica"),
            }
        }
        node.serve_only(&serving);
        let mut settled = node.groups() == wanted;
        for s in &map.shards {
            let Some(replica) = node.replica(s.id.group()) else { continue };
            if let Err(e) = self.tend_shard(meta, &replica, s, &addrs, id).await {
                tracing::debug!(shard = %s.id, error = %e, "shard not reconciled this pass");
                settled = false;
            }
            let status = replica.status();
            // A move, or learners a leader promotes or removes: under way in the shard's group.
            settled &= s.moving.is_none() && (status.role != Role::Leader || status.learners.is_empty());
        }
        Ok(settled)
    }

    /// This node's part in shard `s`'s placement: a move's destination asks to join; the shard's
    /// leader advances (or gives up) the move under way, promotes the map's replicas that re-synced as
    /// learners, and removes learners the map does not name.
    async fn tend_shard(
        &self,
        meta: &MetaStore,
        replica: &Replica,
        s: &ShardDescriptor,
        addrs: &BTreeMap<u64, String>,
        id: u64,
    ) -> Result<(), String> {
        if let Some(mv) = s.moving
            && mv.to == id
        {
            // Asked while the move is under way: this replica's own view of whether it is in the group
            // may be stale (see `Replica::ask_to_join`); the leader answers at once if it is.
            let peers =
                s.replicas.iter().chain([&id]).filter_map(|n| Some((*n, addrs.get(n)?.clone()))).collect();
            if let Err(e) = replica.ask_to_join(peers).await {
                tracing::debug!(shard = %s.id, error = %e, "asking to join the shard's group");
            }
        }
        let status = replica.status();
        if status.role != Role::Leader {
            return Ok(());
        }
        match s.moving {
            Some(mv) if s.abandoning => self.abandon_move(meta, replica, mv).await?,
            Some(mv) => self.advance_move(meta, replica, mv).await?,
            None => {}
        }
        // A replica of the map's that re-synced from scratch votes again once it has caught up (not a
        // move's source, which is on its way out).
        let leaving = s.moving.map(|m| m.from);
        for n in status.learners.iter().filter(|n| s.replicas.contains(n) && Some(**n) != leaving) {
            if replica.promote(*n, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())? {
                tracing::info!(shard = %s.id, node = n, "re-synced replica promoted");
            }
        }
        // Learners the map does not name (left by a move given up while one was being added).
        let named = |n: &u64| s.replicas.contains(n) || s.moving.is_some_and(|m| m.to == *n);
        let strays: BTreeSet<u64> = status.learners.iter().copied().filter(|n| !named(n)).collect();
        if !strays.is_empty() {
            tokio::time::timeout(CHANGE_TIMEOUT, replica.remove_learners(strays.clone()))
                .await
                .map_err(|_| "removing stray learners timed out".to_string())?
                .map_err(|e| e.to_string())?;
            tracing::info!(shard = %s.id, ?strays, "removed learners the map does not name");
        }
        Ok(())
    }

    /// On the shard's leader: gives up move `mv` once its destination holds no replica in the group,
    /// or finishes it if the destination already votes (it is then a replica on a dead node, which the
    /// next repair moves again).
    async fn abandon_move(&self, meta: &MetaStore, replica: &Replica, mv: Move) -> Result<(), String> {
        match replica.undo_join(mv.to, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(false) => self.advance_move(meta, replica, mv).await,
            Some(true) => {
                let given_up = record(meta, |s| s.abandon_move(&mv)).await.map_err(|e| e.to_string())?;
                if let Some(after) = given_up {
                    let epoch = epoch_of(&after, mv.shard);
                    tracing::warn!(shard = %mv.shard, from = mv.from, to = mv.to, epoch, "move given up");
                    self.plumbing.events.emit(EventKind::ReplicaMoveAbandoned {
                        shard: mv.shard,
                        from: mv.from,
                        to: mv.to,
                        epoch,
                    });
                }
                Ok(())
            }
        }
    }

    /// On the shard's leader: takes move `mv` one step further in the group
    /// ([`Replica::advance_move`]); records it done once the group's membership is the map's after
    /// the move.
    async fn advance_move(&self, meta: &MetaStore, replica: &Replica, mv: Move) -> Result<(), String> {
        let step = replica.advance_move(mv.from, mv.to, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
        match step {
            MoveStep::Promoted => {
                tracing::info!(shard = %mv.shard, to = mv.to, from = mv.from, "move: destination promoted")
            }
            MoveStep::Removed => tracing::info!(shard = %mv.shard, from = mv.from, "move: source removed"),
            _ => {}
        }
        if step != MoveStep::Done {
            return Ok(());
        }
        let finished = record(meta, |s| s.finish_move(&mv)).await.map_err(|e| e.to_string())?;
        if let Some(after) = finished {
            let epoch = epoch_of(&after, mv.shard);
            tracing::info!(shard = %mv.shard, from = mv.from, to = mv.to, epoch, "replica moved");
            self.plumbing.events.emit(EventKind::ReplicaMoved {
                shard: mv.shard,
                from: mv.from,
                to: mv.to,
                epoch,
            });
        }
        Ok(())
    }
}

/// Applies `change` to the cluster state through the meta group; the state after it, or `None` if it
/// changed nothing (already done, or over).
async fn record(
    meta: &MetaStore,
    change: impl Fn(&ClusterState) -> Result<Option<ClusterState>, MetaError>,
) -> Result<Option<ClusterState>, MetaError> {
    let (after, changed) =
        meta.update(|s| Ok(change(s)?.map_or((None, false), |next| (Some(next), true)))).await?;
    Ok(changed.then_some(after))
}

/// Shard `shard`'s epoch in `state` (0 if it has none).
fn epoch_of(state: &ClusterState, shard: ShardId) -> u64 {
    state.map.as_ref().and_then(|m| m.shard(shard)).map_or(0, |s| s.epoch)
}
