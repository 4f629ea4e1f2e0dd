//! The driver: on the meta group's leader, keeps the meta group's membership in step with the active
//! nodes, places the shards, and records the replica moves that repair and rebalancing call for.

use super::{EventSink, LIVE_WITHIN, META_TIMEOUT, RETRY_PAUSE, record};
use crate::control::ControlEvent;
use crate::meta::{ClusterState, MetaError, MetaStore};
use crate::placement::{Move, plan_colocation, plan_rebalance, plan_repair};
use crate::raft::{GroupStatus, ReadLevel, Role};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long the driver waits for a new member's meta replica to catch up before trying again later.
const ADD_MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries a learner may lag the meta leader by and still be promoted to voter.
const MAX_PROMOTE_LAG: u64 = 64;

/// Runs the driver over this node's meta replica until it stops: a pass every [`RETRY_PAUSE`] while
/// the node leads the meta group.
pub async fn drive(meta: MetaStore, events: EventSink) {
    // (term, when this node was first seen leading in it): a leadership lost and won back between two
    // passes starts afresh.
    let mut leading_since: Option<(u64, tokio::time::Instant)> = None;
    loop {
        if meta.replica().is_stopped() {
            return;
        }
        let status = meta.replica().status();
        if status.role != Role::Leader {
            leading_since = None;
        } else {
            if leading_since.is_none_or(|(term, _)| term != status.term) {
                leading_since = Some((status.term, tokio::time::Instant::now()));
            }
            let since = leading_since.map_or_else(tokio::time::Instant::now, |(_, at)| at);
            if let Err(e) = drive_once(&meta, &events, &status, since).await {
                tracing::debug!(error = %e, "driver pass failed; retrying");
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// One pass of the driver on the meta leader (leading since `since`).
async fn drive_once(
    meta: &MetaStore,
    events: &EventSink,
    status: &GroupStatus,
    since: tokio::time::Instant,
) -> Result<(), MetaError> {
    let state = meta.read(ReadLevel::Strong).await?;
    let active = state.active_nodes();
    let members: BTreeSet<u64> = status.voters.union(&status.learners).copied().collect();
    for id in active.iter().filter(|id| !members.contains(id)) {
        let Some(node) = state.nodes.get(id) else { continue };
        let added =
            tokio::time::timeout(ADD_MEMBER_TIMEOUT, meta.replica().add_learner(*id, node.grpc_addr.clone()))
                .await;
        match added {
            Ok(Ok(())) => tracing::info!(node = id, "node's meta replica added"),
            Ok(Err(e)) => tracing::debug!(node = id, error = %e, "cannot add the node's meta replica yet"),
            Err(_) => tracing::debug!(node = id, "the node's meta replica is not caught up yet"),
        }
    }
    change_voters(meta, &state, since).await?;
    if state.map.is_none() && active.len() >= state.settings.replication_factor {
        let (placed, changed) = meta
            .update(|s| match s.map {
                Some(_) => Ok((None, false)),
                None => Ok((Some(s.place_initial()?), true)),
            })
            .await?;
        if changed {
            tracing::info!(version = placed.version, shards = placed.settings.shards, "shards placed");
            events(ControlEvent::ShardsPlaced { version: placed.version });
        }
    }
    repair(meta, events, &state, since).await
}

/// Makes the meta group's voters the lowest-id healthy members (3, or 5 once there are 5), replacing
/// voters on dead nodes.
async fn change_voters(
    meta: &MetaStore,
    state: &ClusterState,
    since: tokio::time::Instant,
) -> Result<(), MetaError> {
    let active = state.active_nodes();
    let status = meta.replica().status();
    let heard = meta.replica().heard_from().unwrap_or_default();
    // Only members that are caught up and answering may become voters: promoting one that is down could
    // leave the group without a quorum.
    let healthy = |id: &u64| {
        *id == status.node
            || (status.lag.get(id).is_some_and(|lag| *lag <= MAX_PROMOTE_LAG)
                && heard.get(id).copied().flatten().is_some_and(|d| d < LIVE_WITHIN))
    };
    let members: Vec<u64> = active
        .iter()
        .copied()
        .filter(|id| status.voters.contains(id) || status.learners.contains(id))
        .collect();
    let candidates: Vec<u64> = members.iter().copied().filter(|id| healthy(id)).collect();
    // Odd sizes only: two voters tolerate no more failures than one, and need both to commit.
    let wanted = match candidates.len() {
        n if n >= 5 => 5,
        n if n >= 3 => 3,
        _ => 1,
    };
    // Voters on dead nodes give their place to healthy members (the group keeps its size and can lose
    // another node); without enough healthy members it never shrinks.
    let live = live_nodes(meta, state, since);
    let mut voters: BTreeSet<u64> = status
        .voters
        .iter()
        .copied()
        .filter(|v| members.contains(v) && live.contains(v))
        .take(wanted)
        .collect();
    for id in &candidates {
        if voters.len() >= wanted {
            break;
        }
        voters.insert(*id);
    }
    let grows = voters.len() > status.voters.len();
    let replaces_dead = voters.len() == status.voters.len() && voters != status.voters;
    if grows || replaces_dead {
        match tokio::time::timeout(META_TIMEOUT, meta.replica().change_voters(voters.clone())).await {
            Ok(changed) => changed?,
            Err(_) => return Err(MetaError::Contended(1)),
        }
        tracing::info!(voters = ?voters, "meta group voters changed");
    }
    Ok(())
}

/// On the meta leader (leading since `since`): records a move for every replica on a node not heard
/// from for the cluster's `dead_after_secs` that a live node can take; while every node lives,
/// rebalances instead.
async fn repair(
    meta: &MetaStore,
    events: &EventSink,
    state: &ClusterState,
    since: tokio::time::Instant,
) -> Result<(), MetaError> {
    let Some(map) = &state.map else { return Ok(()) };
    let live = live_nodes(meta, state, since);
    // Merges wait for their shards' replicas to be on the same (live) nodes.
    let colocate = plan_colocation(map).into_iter().filter(|mv| live.contains(&mv.to)).collect();
    start_moves(meta, events, colocate, "co-locating a merge's replica").await?;
    if live.len() == state.active_nodes().len() {
        return rebalance(meta, events, state, &live).await;
    }
    // A move whose destination died is given up (its shard is planned again afterwards).
    for mv in map.moves_under_way().into_iter().filter(|mv| !live.contains(&mv.to)) {
        if record(meta, |s| s.request_abandon(&mv)).await?.is_some() {
            tracing::warn!(shard = %mv.shard, to = mv.to, "giving up a move: its destination is dead");
        }
    }
    start_moves(meta, events, plan_repair(map, &live).moves, "re-creating a dead node's replica").await
}

/// Records each of `planned` as its shard's move under way ([`ClusterState::begin_move`]); one planned
/// against a map that changed since is skipped (the next pass plans again).
async fn start_moves(
    meta: &MetaStore,
    events: &EventSink,
    planned: Vec<Move>,
    why: &str,
) -> Result<(), MetaError> {
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
            events(ControlEvent::ReplicaMoving {
                shard: mv.shard,
                from: mv.from,
                to: mv.to,
                epoch: mv.epoch,
            });
        }
    }
    Ok(())
}

/// On the meta leader, while every node lives: starts one move (cluster-wide, at a time) of a replica
/// from the most loaded node to the least loaded one while they differ by two or more
/// ([`plan_rebalance`]): a node that joined after the placement, or came back after its replicas moved
/// away, receives replicas until the load is even.
async fn rebalance(
    meta: &MetaStore,
    events: &EventSink,
    state: &ClusterState,
    live: &BTreeSet<u64>,
) -> Result<(), MetaError> {
    let Some(map) = &state.map else { return Ok(()) };
    if !state.settings.rebalance || !map.moves_under_way().is_empty() {
        return Ok(());
    }
    // Only among nodes that are members of the meta group and answering: a node still joining waits.
    let heard = meta.replica().heard_from().unwrap_or_default();
    let me = meta.replica().status().node;
    let ready: BTreeSet<u64> = live
        .iter()
        .copied()
        .filter(|n| *n == me || heard.get(n).copied().flatten().is_some_and(|d| d < LIVE_WITHIN))
        .collect();
    if ready.len() != live.len() {
        return Ok(());
    }
    start_moves(meta, events, plan_rebalance(map, &ready, 1), "rebalancing a replica").await
}

/// On the meta leader (leading since `since`): the active nodes not dead, that is heard from within
/// the cluster's `dead_after_secs` (a node never heard from since this leader took over counts from
/// the takeover).
fn live_nodes(meta: &MetaStore, state: &ClusterState, since: tokio::time::Instant) -> BTreeSet<u64> {
    let dead_after = Duration::from_secs(state.settings.dead_after_secs);
    let heard = meta.replica().heard_from().unwrap_or_default();
    let me = meta.replica().status().node;
    let alive = |id: &u64| {
        *id == me || heard.get(id).copied().flatten().map_or(since.elapsed() < dead_after, |d| d < dead_after)
    };
    state.active_nodes().into_iter().filter(alive).collect()
}
