//! The control plane (ARCHITECTURE decision 40): what keeps a cluster's placement true, as the meta
//! group records it. It acts on its node through [`Host`]; the node's handlers, wire formats, metrics
//! and events stay in the server.
//!
//! - The **driver** ([`drive`]) runs on every node and acts while the node leads the meta group: it
//!   keeps the meta group's membership in step with the active nodes (every node a replica, the
//!   lowest-id healthy ones voting), places the shards once enough nodes have joined, re-creates dead
//!   nodes' replicas on live ones and evens out the load.
//! - The **reconciler** ([`reconcile`]) runs on every node and keeps what the node runs in step with
//!   the map, and, on a shard's leader, takes the shard's move under way one step further.
//!
//! A replica move goes through three steps, each driven from what the meta group and the shard's Raft
//! group hold, so any of them may be redone after a crash or a leader change:
//!
//! 1. The driver finds nodes it has not heard from for `dead_after_secs`, plans moves with
//!    [`plan_repair`](crate::placement::plan_repair) and records each as its shard's move under way
//!    ([`ClusterState::begin_move`]). While every node lives it evens out the load instead, one move at
//!    a time ([`plan_rebalance`](crate::placement::plan_rebalance)): a node that joined after the
//!    placement, or came back, receives replicas.
//! 2. Every node reconciles itself with the map: it starts replicas of the shards placed or moving to it
//!    (a move's destination starts empty, serves nothing, and asks the shard's group to take it in as a
//!    learner), serves exactly the shards whose replica list names it, and retires the replicas of
//!    shards that no longer name it: a node that was down while its replicas moved drops them when it
//!    returns instead of serving stale data.
//! 3. The shard's leader advances the move in its group: once the learner has caught up it becomes a
//!    voter in place of the source, the source leaves the group, and only then is the move recorded
//!    done ([`ClusterState::finish_move`]), which makes the destination a replica in the map (epoch
//!    bumped). The map never names a replica the group does not have, so a node that reads the map may
//!    retire anything the map no longer names.

mod driver;
mod reconcile;

pub use driver::drive;
pub use reconcile::reconcile;

use crate::meta::{ClusterState, MetaError, MetaStore};
use crate::placement::{ShardDescriptor, ShardId};
use crate::raft::Replica;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A node counts as up while the meta leader heard from it this recently.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);
/// Pause between the driver's passes, and between reconcile passes while something is under way.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long one meta-group call (a read, a change) may wait.
pub const META_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control plane did, for the node's event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// The shards were placed (the map's version).
    ShardsPlaced {
        /// The map's version.
        version: u64,
    },
    /// A replica move started: `to` gets a replica of the shard in place of `from`'s (at `epoch`).
    ReplicaMoving {
        /// The shard.
        shard: ShardId,
        /// The node losing the replica.
        from: u64,
        /// The node gaining it.
        to: u64,
        /// The shard's epoch with the move under way.
        epoch: u64,
    },
    /// A replica move finished: `to` holds the replica, `from` left the shard's group (at `epoch`).
    ReplicaMoved {
        /// The shard.
        shard: ShardId,
        /// The node that lost the replica.
        from: u64,
        /// The node that gained it.
        to: u64,
        /// The shard's epoch after the move.
        epoch: u64,
    },
    /// A shard split: `new` took its buckets from `at` on (`shard` is at `epoch` after it).
    ShardSplit {
        /// The shard that split.
        shard: ShardId,
        /// The new shard.
        new: ShardId,
        /// The first bucket the new shard took.
        at: u16,
        /// The split shard's epoch after the split.
        epoch: u64,
    },
    /// Shard `merged` was merged into `shard`, which took its buckets (at `epoch` after it).
    ShardMerged {
        /// The shard that took the buckets.
        shard: ShardId,
        /// The shard merged in (its id is never used again).
        merged: ShardId,
        /// The merged shard's epoch after the merge.
        epoch: u64,
    },
    /// A replica move was given up (its destination died before it could take the replica over).
    ReplicaMoveAbandoned {
        /// The shard.
        shard: ShardId,
        /// The node that keeps the replica.
        from: u64,
        /// The node that was to gain it.
        to: u64,
        /// The shard's epoch after the move was given up.
        epoch: u64,
    },
    /// This node dropped its replica of a shard that moved away while it was down or partitioned.
    ReplicaRetired {
        /// The shard.
        shard: ShardId,
    },
}

/// Where the driver reports what it did.
pub type EventSink = Arc<dyn Fn(ControlEvent) + Send + Sync>;

/// The node the reconciler keeps in step with the map.
pub trait Host: Send + Sync + 'static {
    /// Why the node could not start or retire a replica.
    type Error: std::fmt::Display + Send;

    /// Reports what the control plane did.
    fn event(&self, event: ControlEvent);
    /// Routes by `state`'s map from now on, unless the node's is newer.
    fn observe(&self, state: &ClusterState);
    /// The shard groups the node holds a replica of.
    fn groups(&self) -> BTreeSet<u64>;
    /// The node's replica of `group`.
    fn replica(&self, group: u64) -> Option<Replica>;
    /// Makes exactly the replicas of `groups` (among those held) serve requests.
    fn serve_only(&self, groups: &BTreeSet<u64>);
    /// Starts a replica of `shard` that serves nothing until [`Host::serve_only`] names it (nothing
    /// happens if the node holds one already).
    fn add_replica(&self, shard: &ShardDescriptor) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Starts the node's replica of `shard`, a split's new shard, from the node's replica of the shard
    /// it split from, by reference, with the voters the split recorded; it may serve its buckets at
    /// once (the reconciler keeps it serving before the map names it). False (nothing started) if no
    /// replica here has applied that split.
    fn add_split_replica(
        &self,
        shard: &ShardDescriptor,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// Stops the node's replica of `group` for good and drops its contents.
    fn retire_replica(&self, group: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Writes what the node's replica of `group` holds in memory to its files, ahead of a split of it
    /// the map has begun: the split's shrink flushes for its snapshot while the shard's applies wait
    /// (and the moved buckets with them), so the less it has left to write, the shorter the wait.
    /// Nothing happens by default.
    fn flush_ahead_of_split(&self, group: u64) -> impl Future<Output = ()> + Send {
        let _ = group;
        async {}
    }
}

/// How a new replica makes its group ([`Replica::form`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// The members (node id → gRPC address).
    pub members: BTreeMap<u64, String>,
    /// The member that makes the group at once; the others make it only if nothing reached them.
    pub first: bool,
}

/// A replica a node starts: placed on it by the map, or brought to it by a move under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// The group (the shard's id).
    pub group: u64,
    /// The bucket ranges the shard owns (first and last bucket of each).
    pub ranges: Vec<(u16, u16)>,
    /// How to make the group if this replica is new (see [`Replica::form`]); `None`: another member
    /// made it, this replica waits to hear from it.
    pub bootstrap: Option<Bootstrap>,
    /// Whether it serves requests from the start (not a move's destination, which catches up first).
    pub serving: bool,
}

/// The replicas node `id` starts when it starts, by `state`'s map: those placed on it and those a move
/// under way brings to it (which catch up before serving). The first replica of an initial shard makes
/// its group (the others too, later, if it never reaches them while the shard is unchanged). A split's
/// new shard is started only if this node made it before (`on_disk` names the groups whose replica
/// directory the node holds, retired ones left out): one not made here yet is
/// left to the reconciler, which makes it from this node's replica of the split shard if that applied
/// the split (an empty replica otherwise); nobody bootstraps one. A replica on disk of a shard the map
/// no longer names (merged away while the node was down) is started too, as stored (empty `ranges`),
/// serving nothing: this node's replica of the shard it merged into may still have to take its buckets
/// in from it, and the reconciler retires it once that is done.
pub fn boot_plan(state: &ClusterState, id: u64, on_disk: &BTreeSet<u64>) -> Vec<ReplicaPlan> {
    let Some(map) = &state.map else { return Vec::new() };
    let addrs: BTreeMap<u64, String> = state.nodes.iter().map(|(id, n)| (*id, n.grpc_addr.clone())).collect();
    let plans: Vec<ReplicaPlan> = map
        .shards
        .iter()
        .filter(|s| s.replicas.contains(&id) || s.moving.is_some_and(|m| m.to == id))
        .filter(|s| s.split_from.is_none() || on_disk.contains(&s.id.group()))
        .map(|s| {
            // An initial shard: its first replica makes the group; while the shard has never changed
            // (epoch 1), the others make the same one if nothing from it reaches them.
            let first = s.replicas.first() == Some(&id);
            let members: BTreeMap<u64, String> =
                s.replicas.iter().filter_map(|r| Some((*r, addrs.get(r)?.clone()))).collect();
            // Only with every replica's address: members that make the group must all make the same.
            let makes = s.split_from.is_none()
                && members.len() == s.replicas.len()
                && (first || (s.epoch == 1 && s.replicas.contains(&id)));
            ReplicaPlan {
                group: s.id.group(),
                ranges: s.ranges.clone(),
                bootstrap: makes.then_some(Bootstrap { members, first }),
                serving: s.replicas.contains(&id),
            }
        })
        .collect();
    // First: a replica of the merged-into shard may apply the merge as soon as its Raft node runs.
    let mapped: BTreeSet<u64> = map.shards.iter().map(|s| s.id.group()).collect();
    let orphans = on_disk.difference(&mapped).map(|&group| ReplicaPlan {
        group,
        ranges: Vec::new(),
        bootstrap: None,
        serving: false,
    });
    orphans.chain(plans).collect()
}

/// The shards (group, ranges) whose replicas node `id` must retire before it starts any: those the map
/// in `state` does not give it (they moved away while it was down; also one moving back to it, which
/// must join afresh).
pub fn stale_shards(state: &ClusterState, id: u64) -> Vec<(u64, Vec<(u16, u16)>)> {
    let Some(map) = &state.map else { return Vec::new() };
    map.shards
        .iter()
        .filter(|s| !s.replicas.contains(&id))
        .map(|s| (s.id.group(), s.ranges.clone()))
        .collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{boot_plan, stale_shards};
    use crate::meta::ClusterState;
    use crate::placement::ShardId;
    use std::collections::BTreeSet;

    /// Three nodes, four shards over 64 buckets, placed.
    fn placed() -> ClusterState {
        crate::meta::joined(3).place_initial().unwrap()
    }

    /// What a node starts when it starts: the shards the map places on it, a split's new shard only if
    /// the node made it before, and first a replica on disk of a shard the map no longer names, as
    /// stored and serving nothing.
    #[test]
    fn a_starting_node_plans_its_shards_made_split_shards_and_merged_away_replicas() {
        let (split, new) = placed().begin_split(ShardId(0), 8).unwrap();
        let split = split.unwrap().finish_split(ShardId(0)).unwrap().unwrap();
        let mapped: Vec<u64> = split.map.as_ref().unwrap().shards.iter().map(|s| s.id.group()).collect();
        let groups = |on_disk: &[u64]| -> Vec<u64> {
            boot_plan(&split, 1, &on_disk.iter().copied().collect()).iter().map(|p| p.group).collect()
        };
        // Not made here yet: left to the reconciler.
        assert!(!groups(&[0, 1, 2, 3]).contains(&new.group()));
        assert!(groups(&[0, 1, 2, 3, new.group()]).contains(&new.group()));
        let plans = boot_plan(&split, 1, &[0, 77].into_iter().collect());
        let orphan = &plans[0];
        assert_eq!(orphan.group, 77, "{plans:?}");
        assert!(orphan.ranges.is_empty() && !orphan.serving && orphan.bootstrap.is_none());
        for p in &plans[1..] {
            assert!(mapped.contains(&p.group) && p.serving && !p.ranges.is_empty(), "{p:?}");
        }
        assert_eq!(stale_shards(&split, 1), Vec::new(), "three nodes: every shard on each");
    }

    /// Every replica of an initial shard that never changed may make its group (the first at once,
    /// the others if nothing from it reaches them); once the shard changed, only its first replica.
    #[test]
    fn every_replica_of_an_unchanged_initial_shard_may_make_its_group() {
        let state = placed();
        let map = state.map.clone().unwrap();
        for id in 1..=3 {
            for plan in boot_plan(&state, id, &BTreeSet::new()) {
                let shard = map.shard(ShardId(plan.group as u32)).unwrap();
                let b = plan.bootstrap.clone().unwrap_or_else(|| panic!("{plan:?}"));
                assert_eq!(b.first, shard.replicas.first() == Some(&id), "{plan:?}");
                let replicas: BTreeSet<u64> = shard.replicas.iter().copied().collect();
                assert_eq!(b.members.keys().copied().collect::<BTreeSet<_>>(), replicas, "{plan:?}");
            }
        }
        let (split, _) = state.begin_split(ShardId(0), 8).unwrap();
        let split = split.unwrap().finish_split(ShardId(0)).unwrap().unwrap();
        let first = split.map.as_ref().unwrap().shard(ShardId(0)).unwrap().replicas[0];
        for id in 1..=3 {
            let plan = boot_plan(&split, id, &BTreeSet::new()).into_iter().find(|p| p.group == 0).unwrap();
            assert_eq!(plan.bootstrap.is_some(), id == first, "{plan:?}");
        }
    }
}
