//! Splitting a shard in the map: [`ShardMap::begin_split`] records where and under which new id,
//! [`ShardMap::finish_split`] (once the shard's group has split, see `Command::Split`) makes the new
//! shard. The new shard takes every bucket of the shard from the split bucket on, and the same
//! replicas; both shards' epochs move, so requests routed by the old map are refused and re-routed.

use super::{PlacementError, Result, ShardDescriptor, ShardId, ShardMap, SplitPlan};

/// Bucket ranges, first and last bucket of each.
pub type Ranges = Vec<(u16, u16)>;

/// `ranges` cut at bucket `at`: the part below it and the part from it on.
pub fn split_ranges(ranges: &[(u16, u16)], at: u16) -> (Ranges, Ranges) {
    let (mut below, mut above) = (Vec::new(), Vec::new());
    for &(first, last) in ranges {
        if last < at {
            below.push((first, last));
        } else if first >= at {
            above.push((first, last));
        } else {
            below.push((first, at - 1));
            above.push((at, last));
        }
    }
    (below, above)
}

impl ShardDescriptor {
    /// The new shard this shard's split under way makes: its buckets from the split bucket on, the
    /// same replicas, epoch and generation 1.
    pub fn split_child(&self) -> Option<ShardDescriptor> {
        let plan = self.splitting?;
        Some(ShardDescriptor {
            id: plan.new,
            ranges: split_ranges(&self.ranges, plan.at).1,
            replicas: self.replicas.clone(),
            epoch: 1,
            generation: 1,
            moving: None,
            abandoning: false,
            splitting: None,
            split_from: Some(self.id),
            merging: None,
            automatic: plan.automatic,
        })
    }
}

impl ShardMap {
    /// Records that shard `shard` splits at bucket `at`, the new shard to be `new`. Refused for a bucket
    /// the shard does not own or its first one, while a move of the shard is under way, for a shard
    /// already splitting elsewhere, and for an id in use. The same split again changes nothing.
    pub fn begin_split(&mut self, shard: ShardId, at: u16, new: ShardId) -> Result<()> {
        let bad = |why: &str| PlacementError::BadSplit { shard, at, why: why.to_string() };
        if self
            .shards
            .iter()
            .any(|s| s.id == new || s.splitting.is_some_and(|p| p.new == new && s.id != shard))
        {
            return Err(bad(&format!("shard id {new} is taken")));
        }
        if self.in_merge(shard) {
            return Err(bad("a merge of the shard is under way"));
        }
        let s = self.shard_mut(shard)?;
        match s.splitting {
            Some(plan) if (plan.new, plan.at) == (new, at) => return Ok(()),
            Some(plan) => return Err(bad(&format!("it is splitting at bucket {} already", plan.at))),
            None => {}
        }
        if !s.owns(at) || at <= s.first_bucket() {
            return Err(bad(&format!(
                "the shard owns {:?}; a split bucket must be one of them, not the first",
                s.ranges
            )));
        }
        if s.moving.is_some() {
            return Err(bad("a move of the shard is under way"));
        }
        s.splitting = Some(SplitPlan { new, at, automatic: false });
        self.version += 1;
        Ok(())
    }

    /// Makes the split under way of shard `shard` (its group has split): the shard keeps the buckets
    /// below the split bucket, a new shard with the same replicas takes the rest; the shard's epoch and
    /// generation move on, the new shard starts at 1. Returns the new shard's id.
    pub fn finish_split(&mut self, shard: ShardId) -> Result<ShardId> {
        let s = self.shard_mut(shard)?;
        let Some(plan) = s.splitting else {
            return Err(PlacementError::BadSplit { shard, at: 0, why: "no split is under way".into() });
        };
        let Some(new) = s.split_child() else {
            return Err(PlacementError::BadSplit { shard, at: plan.at, why: "no split is under way".into() });
        };
        s.ranges = split_ranges(&s.ranges, plan.at).0;
        s.epoch += 1;
        s.generation += 1;
        s.splitting = None;
        let at = self
            .shards
            .iter()
            .position(|s| s.first_bucket() > new.first_bucket())
            .unwrap_or(self.shards.len());
        self.shards.insert(at, new);
        self.version += 1;
        Ok(plan.new)
    }
}
