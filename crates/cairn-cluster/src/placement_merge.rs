//! Merging two shards in the map: [`ShardMap::begin_merge`] records that the left-hand shard is to
//! take over the buckets of the next shard in bucket order; the driver first brings the right-hand
//! shard's replicas onto the left-hand shard's nodes ([`plan_colocation`], ordinary replica moves);
//! once both groups have done their part (the right-hand one frozen, the left-hand one holding its
//! files by reference) [`ShardMap::finish_merge`] gives the left-hand shard the buckets (epoch and
//! generation moved on) and removes the right-hand one.

use super::{Move, NodeId, PlacementError, Result, ShardDescriptor, ShardId, ShardMap};
use std::collections::BTreeSet;

/// `a` and `b` as one list of bucket ranges, in order, neighbours joined.
pub fn merge_ranges(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut all: Vec<(u16, u16)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(all.len());
    for (first, last) in all {
        match out.last_mut() {
            Some(prev) if u32::from(prev.1) + 1 >= u32::from(first) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// The replicas of `s`, as a set.
fn holders(s: &ShardDescriptor) -> BTreeSet<NodeId> {
    s.replicas.iter().copied().collect()
}

impl ShardMap {
    /// Whether shard `id` takes part in a merge under way (either side).
    pub fn in_merge(&self, id: ShardId) -> bool {
        self.shards.iter().any(|s| (s.id == id && s.merging.is_some()) || s.merging == Some(id))
    }

    /// The shard merging shard `right` into itself, if a merge of `right` is under way.
    pub fn merging_into(&self, right: ShardId) -> Option<&ShardDescriptor> {
        self.shards.iter().find(|s| s.merging == Some(right))
    }

    /// Whether the two shards of the merge under way at `left` hold replicas on the same nodes (and
    /// neither moves one): the groups may then do their part.
    pub fn colocated(&self, left: ShardId) -> bool {
        let Some(l) = self.shard(left) else { return false };
        let Some(r) = l.merging.and_then(|r| self.shard(r)) else { return false };
        l.moving.is_none() && r.moving.is_none() && holders(l) == holders(r)
    }

    /// Records that shard `left` is to take over the buckets of shard `right`, the shard right after
    /// it in bucket order. Refused for a shard merged with itself, shards that are not neighbours, and
    /// either shard splitting or already in a merge. The same merge again changes nothing (false).
    pub fn begin_merge(&mut self, left: ShardId, right: ShardId) -> Result<bool> {
        let bad = |why: &str| PlacementError::BadMerge { left, right, why: why.to_string() };
        let (l, r) = (self.shard(left).ok_or(PlacementError::UnknownShard(left))?, self.shard(right));
        let r = r.ok_or(PlacementError::UnknownShard(right))?;
        if l.merging == Some(right) {
            return Ok(false);
        }
        if left == right {
            return Err(bad("a shard cannot merge with itself"));
        }
        if u32::from(l.last_bucket()) + 1 != u32::from(r.first_bucket()) {
            return Err(bad(&format!(
                "they are not neighbours: the left one owns {:?}, the right one {:?} (merge a shard with \
                 the next one in bucket order)",
                l.ranges, r.ranges
            )));
        }
        if l.splitting.is_some() || r.splitting.is_some() {
            return Err(bad("one of them is splitting"));
        }
        if self.in_merge(left) || self.in_merge(right) {
            return Err(bad("one of them is in another merge"));
        }
        self.shard_mut(left)?.merging = Some(right);
        self.version += 1;
        Ok(true)
    }

    /// Makes the merge under way at `left`: it owns both shards' buckets (epoch and generation moved
    /// on) and the right-hand shard leaves the map. Returns the right-hand shard's id. Refused unless
    /// the two are co-located ([`ShardMap::colocated`]): the groups could not have done their part.
    pub fn finish_merge(&mut self, left: ShardId) -> Result<ShardId> {
        let l = self.shard(left).ok_or(PlacementError::UnknownShard(left))?;
        let Some(right) = l.merging else {
            return Err(PlacementError::BadMerge { left, right: left, why: "no merge is under way".into() });
        };
        if !self.colocated(left) {
            let why = "their replicas are not on the same nodes".to_string();
            return Err(PlacementError::BadMerge { left, right, why });
        }
        let r_ranges = self.shard(right).map(|r| r.ranges.clone()).unwrap_or_default();
        let l = self.shard_mut(left)?;
        l.ranges = merge_ranges(&l.ranges, &r_ranges);
        l.epoch += 1;
        l.generation += 1;
        l.merging = None;
        self.shards.retain(|s| s.id != right);
        self.version += 1;
        Ok(right)
    }

    /// Checks the merges under way: each between neighbours that both exist, one merge per shard,
    /// neither splitting.
    pub(super) fn validate_merges(&self) -> Result<()> {
        let mut seen = BTreeSet::new();
        for l in self.shards.iter().filter(|s| s.merging.is_some()) {
            let right = l.merging.unwrap_or(l.id);
            let bad =
                |why: &str| Err(PlacementError::Invalid(format!("merge of {right} into {}: {why}", l.id)));
            let Some(r) = self.shard(right) else { return bad("no such shard") };
            if u32::from(l.last_bucket()) + 1 != u32::from(r.first_bucket()) {
                return bad("not neighbours");
            }
            if l.splitting.is_some() || r.splitting.is_some() || r.merging.is_some() {
                return bad("a shard in it splits or merges another");
            }
            if !seen.insert(l.id) || !seen.insert(r.id) {
                return bad("a shard in two merges");
            }
        }
        Ok(())
    }
}

/// The replica moves that bring each merge's right-hand shard onto its left-hand shard's nodes, one
/// per merge at a time (a node holding the right-hand shard but not the left-hand one gives its
/// replica to a node holding the left-hand one but not the right-hand one; lowest ids first). None
/// while either shard moves a replica already.
pub fn plan_colocation(map: &ShardMap) -> Vec<Move> {
    let mut moves = Vec::new();
    for l in map.shards.iter().filter(|s| s.merging.is_some() && s.moving.is_none()) {
        let Some(r) = l.merging.and_then(|r| map.shard(r)) else { continue };
        if r.moving.is_some() {
            continue;
        }
        let (lh, rh) = (holders(l), holders(r));
        let from = rh.difference(&lh).next();
        let to = lh.difference(&rh).next();
        if let (Some(&from), Some(&to)) = (from, to) {
            moves.push(Move { shard: r.id, epoch: r.epoch, from, to });
        }
    }
    moves
}
