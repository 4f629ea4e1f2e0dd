//! The shard map and the placement planners (ARCHITECTURE decision 34).
//!
//! The shard map says which shard owns which contiguous range of the bucket space, which nodes hold its
//! replicas and at which *epoch*: every change to a shard's placement bumps its epoch, and the map's
//! `version` counts every change of the whole map. Requests carry the epoch they routed by, so a node can
//! refuse a request routed with a stale map ([`ShardMap::check_epoch`]).
//!
//! The planners are pure functions of a map and the set of live nodes: they return [`Move`]s and never
//! change anything themselves. A move is carried out in three steps, each safe to redo: the driver (the
//! meta group's leader) records it as the shard's move under way ([`ShardMap::begin_move`], refused if
//! planned against an older epoch); the destination node starts an empty replica and asks the shard's
//! group to take it in as a learner, and the shard's leader, once it caught up, makes it a voter in the
//! source's place and removes the source from the group; then the leader records the move done
//! ([`ShardMap::finish_move`]). Being pure, the planners are tested exhaustively against their
//! invariants here, without nodes.
//!
//! Invariants of a valid map ([`ShardMap::validate`]): shards are listed in bucket order and their ranges
//! cover `0..total_buckets` exactly once; each shard has between 1 and `replication_factor` replicas, no
//! node twice; epochs are at least 1.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A node's id (never reused; 0 is not a node).
pub type NodeId = u64;
/// A shard's id: stable for the shard's life and never given to another shard. Its Raft group's id is
/// the same number ([`ShardId::group`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The id of the shard's Raft group.
    pub fn group(self) -> u64 {
        u64::from(self.0)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<ShardId> for u64 {
    fn from(id: ShardId) -> u64 {
        id.group()
    }
}

/// The largest replication factor the planners accept.
pub const MAX_REPLICATION_FACTOR: usize = 7;

/// One shard as the cluster knows it: the bucket ranges it owns, where its replicas are, and the epoch
/// and generation of that knowledge. Placement, the meta group, routing and the node all use this one
/// type; a replica's engine holds the same ranges in its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptor {
    /// The shard's id.
    pub id: ShardId,
    /// The bucket ranges it owns, first and last bucket (inclusive) of each, in bucket order. One range
    /// for a shard made at initial placement; a merge of adjacent shards keeps one, other layouts may
    /// hold several. (Maps written before shards had several ranges hold one pair, `buckets`.)
    #[serde(alias = "buckets", deserialize_with = "ranges_or_pair")]
    pub ranges: Vec<(u16, u16)>,
    /// Nodes holding a replica, in the order they were placed.
    pub replicas: Vec<NodeId>,
    /// Bumped by every change of this shard's placement or ranges; starts at 1. Requests carry the epoch
    /// they were routed by.
    pub epoch: u64,
    /// Bumped by every change of the shard's ranges (a split or a merge); starts at 1.
    #[serde(default = "first_generation")]
    pub generation: u64,
    /// A move under way ([`ShardMap::begin_move`]): its destination holds a learner that is catching up
    /// and does not serve requests until [`ShardMap::finish_move`] makes it a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<Move>,
    /// The move under way is to be given up (its destination died): the shard's leader takes the
    /// destination out of the group, or finishes the move if it already votes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abandoning: bool,
    /// A split under way ([`ShardMap::begin_split`]): the shard's leader splits it in its group, then
    /// [`ShardMap::finish_split`] records the new shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splitting: Option<SplitPlan>,
    /// The shard a split made this one from. Its group starts on the replicas that made it from the
    /// split's files; no node ever bootstraps it (an empty replica must not start it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_from: Option<ShardId>,
    /// A merge under way ([`ShardMap::begin_merge`]): this shard takes over the buckets of the shard
    /// named, the next one in bucket order, once their replicas are on the same nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merging: Option<ShardId>,
    /// Made by an automatic split: an automatic merge may join it back to its left-hand neighbour.
    /// Shards an operator made (the initial placement, `cairn shards split`) stay until an operator
    /// merges them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub automatic: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a shard splits, and the id the new shard gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// The new shard's id (never used before).
    pub new: ShardId,
    /// The first bucket the new shard takes: it takes every bucket of the shard from here on.
    pub at: u16,
    /// Planned by automatic splitting (the new shard is [`ShardDescriptor::automatic`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub automatic: bool,
}

fn first_generation() -> u64 {
    1
}

/// Reads `ranges` as a list of pairs, or as the one pair older maps hold.
fn ranges_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<(u16, u16)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ranges {
        Several(Vec<(u16, u16)>),
        One((u16, u16)),
    }
    Ok(match Ranges::deserialize(d)? {
        Ranges::Several(ranges) => ranges,
        Ranges::One(range) => vec![range],
    })
}

impl ShardDescriptor {
    /// The shard's first bucket (a bucket to route to it by).
    pub fn first_bucket(&self) -> u16 {
        self.ranges.first().map_or(0, |r| r.0)
    }

    /// The shard's last bucket.
    pub fn last_bucket(&self) -> u16 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// Whether the shard owns `bucket`.
    pub fn owns(&self, bucket: u16) -> bool {
        self.ranges.iter().any(|&(first, last)| first <= bucket && bucket <= last)
    }
}

/// The whole cluster's placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Size of the bucket space the shards split.
    pub total_buckets: u32,
    /// Replicas each shard should have.
    pub replication_factor: usize,
    /// Shards in the order of their first bucket.
    pub shards: Vec<ShardDescriptor>,
    /// Bumped by every change to the map; starts at 1.
    pub version: u64,
}

/// A placement change: move shard `shard`'s replica from node `from` to node `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The shard whose replica moves.
    pub shard: ShardId,
    /// The shard's epoch the move was planned against.
    pub epoch: u64,
    /// The node losing the replica.
    pub from: NodeId,
    /// The node gaining it.
    pub to: NodeId,
}

/// Why a map could not be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A bucket space must have between 1 and 65536 buckets.
    #[error("total_buckets {0} out of range (1..=65536)")]
    BadTotalBuckets(u32),
    /// Shards must number between 1 and `total_buckets`.
    #[error("{shards} shards cannot split {total_buckets} buckets")]
    BadShardCount {
        /// Shards asked for.
        shards: usize,
        /// Buckets to split.
        total_buckets: u32,
    },
    /// The replication factor must be between 1 and [`MAX_REPLICATION_FACTOR`].
    #[error("replication factor {0} out of range (1..={MAX_REPLICATION_FACTOR})")]
    BadReplicationFactor(usize),
    /// Fewer nodes than replicas per shard: two replicas would share a node.
    #[error("replication factor {replication_factor} needs at least that many nodes, have {nodes}")]
    NotEnoughNodes {
        /// Replicas per shard.
        replication_factor: usize,
        /// Nodes available.
        nodes: usize,
    },
    /// Node ids start at 1.
    #[error("node id 0 is not a node")]
    ZeroNode,
    /// No shard with this id.
    #[error("no shard {0}")]
    UnknownShard(ShardId),
    /// The move was planned against another epoch of the shard: re-plan from the current map.
    #[error("shard {shard} is at epoch {current}, the request was routed by epoch {given}")]
    StaleEpoch {
        /// The shard.
        shard: ShardId,
        /// Its current epoch.
        current: u64,
        /// The epoch given.
        given: u64,
    },
    /// A move from a node that holds no replica of the shard, or to one that already holds one.
    #[error("cannot move shard {shard}'s replica from node {from} to node {to}: {why}")]
    BadMove {
        /// The shard.
        shard: ShardId,
        /// Source node.
        from: NodeId,
        /// Destination node.
        to: NodeId,
        /// What is wrong.
        why: &'static str,
    },
    /// A split the shard cannot make.
    #[error("cannot split shard {shard} at bucket {at}: {why}")]
    BadSplit {
        /// The shard.
        shard: ShardId,
        /// The bucket asked to split at.
        at: u16,
        /// What is wrong.
        why: String,
    },
    /// A merge the two shards cannot make.
    #[error("cannot merge shard {right} into shard {left}: {why}")]
    BadMerge {
        /// The shard that takes the buckets over.
        left: ShardId,
        /// The shard whose buckets it takes.
        right: ShardId,
        /// What is wrong.
        why: String,
    },
    /// The map breaks an invariant (see the module documentation).
    #[error("invalid shard map: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, PlacementError>;

/// Checks a layout's numbers: `total_buckets` in 1..=65536, 1 to `total_buckets` shards, a replication
/// factor in 1..=[`MAX_REPLICATION_FACTOR`].
pub fn check_layout(total_buckets: u32, shards: usize, replication_factor: usize) -> Result<()> {
    if !(1..=65_536).contains(&total_buckets) {
        return Err(PlacementError::BadTotalBuckets(total_buckets));
    }
    if shards == 0 || shards > total_buckets as usize {
        return Err(PlacementError::BadShardCount { shards, total_buckets });
    }
    if !(1..=MAX_REPLICATION_FACTOR).contains(&replication_factor) {
        return Err(PlacementError::BadReplicationFactor(replication_factor));
    }
    Ok(())
}

/// What [`plan_repair`] found: moves restoring replicas lost with dead nodes, and the shards that stay
/// short of replicas because no live node can take another of theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// Moves from dead nodes to live ones, at most one per lost replica.
    pub moves: Vec<Move>,
    /// Shards left with a replica on a dead node (fewer live nodes than the replication factor).
    pub under_replicated: Vec<ShardId>,
}

impl ShardMap {
    /// The initial layout: `shards` contiguous, near-equal bucket ranges; shard `i`'s replicas on the
    /// `replication_factor` nodes following position `i` of the sorted node list, so every node holds
    /// the same number of replicas (±1) and of first replicas (the preferred leaders), and no shard has two
    /// replicas on one node.
    pub fn initial(
        total_buckets: u32,
        shards: usize,
        nodes: &[NodeId],
        replication_factor: usize,
    ) -> Result<ShardMap> {
        check_layout(total_buckets, shards, replication_factor)?;
        let nodes: Vec<NodeId> = nodes.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        if nodes.contains(&0) {
            return Err(PlacementError::ZeroNode);
        }
        if nodes.len() < replication_factor {
            return Err(PlacementError::NotEnoughNodes { replication_factor, nodes: nodes.len() });
        }
        let total = u64::from(total_buckets);
        let count = shards as u64;
        let shards = (0..count)
            .map(|i| ShardDescriptor {
                id: ShardId(i as u32),
                ranges: vec![((total * i / count) as u16, (total * (i + 1) / count - 1) as u16)],
                replicas: (0..replication_factor).map(|j| nodes[(i as usize + j) % nodes.len()]).collect(),
                epoch: 1,
                generation: 1,
                moving: None,
                abandoning: false,
                splitting: None,
                split_from: None,
                merging: None,
                automatic: false,
            })
            .collect();
        let map = ShardMap { total_buckets, replication_factor, shards, version: 1 };
        map.validate()?;
        Ok(map)
    }

    /// Checks the invariants in the module documentation.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(PlacementError::Invalid(why));
        if !(1..=65_536).contains(&self.total_buckets) {
            return Err(PlacementError::BadTotalBuckets(self.total_buckets));
        }
        if !(1..=MAX_REPLICATION_FACTOR).contains(&self.replication_factor) {
            return Err(PlacementError::BadReplicationFactor(self.replication_factor));
        }
        if self.version == 0 {
            return bad("map version 0".into());
        }
        let mut ranges: Vec<(u32, u32, ShardId)> = Vec::new();
        let mut ids = BTreeSet::new();
        let mut previous_first = None;
        for s in &self.shards {
            if s.ranges.is_empty() {
                return bad(format!("shard {} owns no buckets", s.id));
            }
            if previous_first.is_some_and(|p| p >= s.first_bucket()) {
                return bad(format!("shard {} is out of bucket order", s.id));
            }
            previous_first = Some(s.first_bucket());
            for pair in s.ranges.windows(2) {
                if pair[1].0 <= pair[0].1 {
                    return bad(format!("shard {}'s ranges {:?} are not in bucket order", s.id, s.ranges));
                }
            }
            ranges.extend(s.ranges.iter().map(|&(first, last)| (u32::from(first), u32::from(last), s.id)));
            if !ids.insert(s.id) {
                return bad(format!("shard {} listed twice", s.id));
            }
            if s.epoch == 0 || s.generation == 0 {
                return bad(format!("shard {} at epoch {}, generation {}", s.id, s.epoch, s.generation));
            }
            if s.replicas.is_empty() || s.replicas.len() > self.replication_factor {
                return bad(format!("shard {} has {} replicas", s.id, s.replicas.len()));
            }
            let distinct: BTreeSet<_> = s.replicas.iter().collect();
            if distinct.len() != s.replicas.len() || distinct.contains(&0) {
                return bad(format!("shard {} has replicas {:?}", s.id, s.replicas));
            }
            if let Some(mv) = &s.moving
                && (mv.shard != s.id
                    || mv.epoch != s.epoch
                    || mv.to == 0
                    || !s.replicas.contains(&mv.from)
                    || s.replicas.contains(&mv.to))
            {
                return bad(format!("shard {} (replicas {:?}) has a bad move {mv:?}", s.id, s.replicas));
            }
            if s.abandoning && s.moving.is_none() {
                return bad(format!("shard {} gives up a move it does not have", s.id));
            }
            if let Some(plan) = &s.splitting
                && (plan.at <= s.first_bucket() || !s.owns(plan.at) || s.moving.is_some())
            {
                return bad(format!("shard {} (ranges {:?}) has a bad split {plan:?}", s.id, s.ranges));
            }
        }
        ranges.sort_unstable();
        let mut next = 0u32;
        for (first, last, id) in ranges {
            if first != next || last < first || last >= self.total_buckets {
                return bad(format!("shard {id} covers {first}..={last}, expected to start at {next}"));
            }
            next = last + 1;
        }
        if next != self.total_buckets {
            return bad(format!("buckets {next}..{} belong to no shard", self.total_buckets));
        }
        for plan in self.shards.iter().filter_map(|s| s.splitting) {
            if !ids.insert(plan.new) {
                return bad(format!("a split's new shard {} is already a shard's id", plan.new));
            }
        }
        self.validate_merges()
    }

    /// The shard owning `bucket`: found by its first bucket when it owns one range (the shards are in
    /// the order of their first bucket), otherwise by looking through every shard's ranges.
    pub fn shard_for_bucket(&self, bucket: u16) -> Option<&ShardDescriptor> {
        let i = self.shards.partition_point(|s| s.first_bucket() <= bucket);
        match i.checked_sub(1).and_then(|i| self.shards.get(i)) {
            Some(s) if s.owns(bucket) => Some(s),
            _ => self.shards.iter().find(|s| s.owns(bucket)),
        }
    }

    /// The shard with id `id`.
    pub fn shard(&self, id: ShardId) -> Option<&ShardDescriptor> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// `Ok` if `epoch` is shard `shard`'s current epoch; a request routed by another epoch is refused so
    /// its sender refreshes its map and retries.
    pub fn check_epoch(&self, shard: ShardId, epoch: u64) -> Result<()> {
        let s = self.shard(shard).ok_or(PlacementError::UnknownShard(shard))?;
        if s.epoch != epoch {
            return Err(PlacementError::StaleEpoch { shard, current: s.epoch, given: epoch });
        }
        Ok(())
    }

    /// Replicas held by each node in `nodes` (those holding none count 0; other nodes are left out).
    pub fn replica_counts(&self, nodes: &BTreeSet<NodeId>) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
        for r in self.shards.iter().flat_map(|s| &s.replicas) {
            if let Some(c) = counts.get_mut(r) {
                *c += 1;
            }
        }
        counts
    }

    /// Records a move carried out: `from`'s replica of the shard is replaced by `to`'s (in place, so the
    /// replica order is kept), and the shard's epoch and the map's version are bumped. Refuses a move
    /// planned against another epoch, from a node that holds no replica or to one that holds one.
    pub fn apply(&mut self, mv: &Move) -> Result<()> {
        replace(self.shard_for_move(mv)?, mv);
        self.version += 1;
        Ok(())
    }

    /// Starts a move (see the module documentation): records it as the shard's move under way, at the
    /// shard's next epoch, and returns it as recorded (what [`ShardMap::finish_move`] takes). Refused
    /// like [`ShardMap::apply`], and while another move of the shard is under way.
    pub fn begin_move(&mut self, mv: &Move) -> Result<Move> {
        let shard = self.shard_for_move(mv)?;
        shard.epoch += 1;
        let begun = Move { epoch: shard.epoch, ..*mv };
        shard.moving = Some(begun);
        self.version += 1;
        Ok(begun)
    }

    /// Completes the move under way `mv` (the destination caught up and votes, the source left the
    /// shard's group): the destination replaces the source, at the next epoch.
    pub fn finish_move(&mut self, mv: &Move) -> Result<()> {
        let shard = self.shard_moving(mv)?;
        shard.moving = None;
        shard.abandoning = false;
        replace(shard, mv);
        self.version += 1;
        Ok(())
    }

    /// Asks for the move under way `mv` to be given up (see [`ShardDescriptor::abandoning`]); `false`
    /// if it already was. Routing does not change, so the epoch stays.
    pub fn request_abandon(&mut self, mv: &Move) -> Result<bool> {
        let shard = self.shard_moving(mv)?;
        if shard.abandoning {
            return Ok(false);
        }
        shard.abandoning = true;
        self.version += 1;
        Ok(true)
    }

    /// Gives up the move under way `mv` (its destination holds no replica in the group any more): the
    /// shard keeps its replicas, at the next epoch.
    pub fn abandon_move(&mut self, mv: &Move) -> Result<()> {
        let shard = self.shard_moving(mv)?;
        shard.moving = None;
        shard.abandoning = false;
        shard.epoch += 1;
        self.version += 1;
        Ok(())
    }

    /// The shard `mv` moves a replica of, if `mv` may start there: planned against its epoch, from a
    /// holder to a non-holder, and no other move of it under way.
    fn shard_for_move(&mut self, mv: &Move) -> Result<&mut ShardDescriptor> {
        let shard = self.shard_mut(mv.shard)?;
        check_move(shard, mv)?;
        if shard.moving.is_some() {
            return Err(bad_move(mv, "another move of the shard is under way"));
        }
        if shard.splitting.is_some() {
            return Err(bad_move(mv, "the shard is splitting"));
        }
        Ok(shard)
    }

    /// The shard whose move under way is `mv`.
    fn shard_moving(&mut self, mv: &Move) -> Result<&mut ShardDescriptor> {
        let shard = self.shard_mut(mv.shard)?;
        if shard.moving != Some(*mv) {
            return Err(bad_move(mv, "it is not the shard's move under way"));
        }
        Ok(shard)
    }

    pub(crate) fn shard_mut(&mut self, id: ShardId) -> Result<&mut ShardDescriptor> {
        self.shards.iter_mut().find(|s| s.id == id).ok_or(PlacementError::UnknownShard(id))
    }
}

/// A [`PlacementError::BadMove`] for `mv`.
fn bad_move(mv: &Move, why: &'static str) -> PlacementError {
    PlacementError::BadMove { shard: mv.shard, from: mv.from, to: mv.to, why }
}

/// Refuses `mv` for `shard` if it was planned against another epoch, comes from a node that holds no
/// replica or goes to one that holds one.
fn check_move(shard: &ShardDescriptor, mv: &Move) -> Result<()> {
    if shard.epoch != mv.epoch {
        return Err(PlacementError::StaleEpoch { shard: mv.shard, current: shard.epoch, given: mv.epoch });
    }
    let bad = |why| Err(bad_move(mv, why));
    if mv.to == 0 {
        return bad("node 0 is not a node");
    }
    if shard.replicas.contains(&mv.to) {
        return bad("the destination already holds a replica");
    }
    if !shard.replicas.contains(&mv.from) {
        return bad("the source holds no replica");
    }
    Ok(())
}

/// `mv.from`'s replica of `shard` replaced by `mv.to`'s, in place (the replica order is kept), at the
/// next epoch.
fn replace(shard: &mut ShardDescriptor, mv: &Move) {
    for slot in shard.replicas.iter_mut().filter(|r| **r == mv.from) {
        *slot = mv.to;
    }
    shard.epoch += 1;
}

impl ShardMap {
    /// The moves under way, in shard order.
    pub fn moves_under_way(&self) -> Vec<Move> {
        self.shards.iter().filter_map(|s| s.moving).collect()
    }
}

/// Moves that re-create every replica held by a node not in `live` on a live node that holds none of
/// that shard, choosing the live node with the fewest replicas (lowest id on ties, counting the moves
/// planned so far), shards in id order. Deterministic: the same map and live set give the same plan.
pub fn plan_repair(map: &ShardMap, live: &BTreeSet<NodeId>) -> RepairPlan {
    let mut counts = map.replica_counts(live);
    let mut plan = RepairPlan::default();
    let mut shards: Vec<&ShardDescriptor> = map.shards.iter().collect();
    shards.sort_by_key(|s| s.id);
    // A shard with a move under way is planned again once that move is done.
    for s in shards.into_iter().filter(|s| s.moving.is_none() && s.splitting.is_none()) {
        let mut holders: BTreeSet<NodeId> = s.replicas.iter().copied().collect();
        let mut short = false;
        for dead in s.replicas.iter().filter(|r| !live.contains(r)) {
            let target = counts.iter().filter(|(n, _)| !holders.contains(n)).min_by_key(|(n, c)| (**c, **n));
            match target.map(|(n, _)| *n) {
                Some(to) => {
                    plan.moves.push(Move { shard: s.id, epoch: s.epoch, from: *dead, to });
                    holders.insert(to);
                    *counts.entry(to).or_default() += 1;
                }
                None => short = true,
            }
        }
        if short {
            plan.under_replicated.push(s.id);
        }
    }
    plan
}

/// Up to `max_moves` moves that even out replicas across the live nodes (for a node that joined, or one
/// that came back): while the most loaded live node holds at least two more replicas than the least
/// loaded one, move one replica from the former to the latter (the lowest-id shard the latter does not
/// hold; if it holds all of them, the next least loaded node). At most one move per shard, because each
/// move bumps the shard's epoch and later moves must be planned against the new one. Replicas on nodes
/// not in `live` are left to [`plan_repair`].
pub fn plan_rebalance(map: &ShardMap, live: &BTreeSet<NodeId>, max_moves: usize) -> Vec<Move> {
    let mut counts = map.replica_counts(live);
    let mut replicas: BTreeMap<ShardId, (u64, BTreeSet<NodeId>)> = map
        .shards
        .iter()
        .filter(|s| s.moving.is_none() && s.splitting.is_none() && !map.in_merge(s.id))
        .map(|s| (s.id, (s.epoch, s.replicas.iter().copied().collect())))
        .collect();
    let mut moved = BTreeSet::new();
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let Some((&from, &most)) = counts.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n))) else {
            break;
        };
        let mut receivers: Vec<(NodeId, usize)> =
            counts.iter().filter(|(_, c)| **c + 1 < most).map(|(n, c)| (*n, *c)).collect();
        receivers.sort_by_key(|(n, c)| (*c, *n));
        let found = receivers.iter().find_map(|(to, _)| {
            replicas
                .iter()
                .find(|(id, (_, holders))| {
                    !moved.contains(*id) && holders.contains(&from) && !holders.contains(to)
                })
                .map(|(id, (epoch, _))| Move { shard: *id, epoch: *epoch, from, to: *to })
        });
        let Some(mv) = found else { break };
        if let Some((_, holders)) = replicas.get_mut(&mv.shard) {
            holders.remove(&mv.from);
            holders.insert(mv.to);
        }
        moved.insert(mv.shard);
        *counts.entry(mv.from).or_default() -= 1;
        *counts.entry(mv.to).or_default() += 1;
        moves.push(mv);
    }
    moves
}

#[path = "placement_split.rs"]
mod split;
pub use split::split_ranges;
#[path = "placement_merge.rs"]
mod merge;
pub use merge::{merge_ranges, plan_colocation};

#[path = "placement_auto.rs"]
mod auto;
#[path = "placement_leaders.rs"]
mod leaders;
pub use leaders::{LeaderMove, plan_leaders};
#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
pub use auto::{AutoChange, AutoSettings, ShardLoad, SplitReason, halving_bucket, plan_auto};
