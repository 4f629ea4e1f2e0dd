//! Applying the commands that change a shard's shape: a split gives bucket ranges up for a new shard,
//! a freeze stops the shard for a merge into its neighbour, a merge takes a frozen neighbour's ranges
//! in; and the record of the last split, from which a node opens the new shard.

use super::*;

impl ShardApplier {
    /// Gives `ranges` up for group `new_group` at split entry `index` (see [`Command::Split`]); the
    /// answer and the writes that record the split.
    pub(super) fn split(
        &self,
        index: u64,
        new_group: u64,
        ranges: &[(u16, u16)],
        voters: &[(u64, String)],
        first_leader: Option<u64>,
    ) -> Result<(CommandResult, WriteBatch), ApplyError> {
        let keeps_position = ranges.iter().any(|&(first, last)| (first..=last).contains(&self.meta_bucket));
        let bad = ranges.is_empty() || keeps_position || ranges.iter().any(|&(first, last)| first > last);
        if bad || voters.is_empty() {
            let why = format!(
                "a split moves non-empty ranges without the shard's first bucket {} to some voters: {ranges:?}",
                self.meta_bucket
            );
            return Ok((CommandResult::Rejected(why), WriteBatch::new()));
        }
        let moved = ranges.iter().map(|&(first, last)| first..=last).collect();
        let began = std::time::Instant::now();
        let snapshot = match self.db.shrink_bucket(moved) {
            Ok(snapshot) => snapshot,
            // Buckets this shard does not own (and did not give up to this very split: a replay is
            // answered with its snapshot), on every replica alike.
            Err(e @ cairn_engine::Error::InvalidArgument(_)) => {
                return Ok((CommandResult::Rejected(e.to_string()), WriteBatch::new()));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(
            index,
            new_group,
            shrink_ms = began.elapsed().as_millis() as u64,
            "gave buckets up to a split"
        );
        let source = self.db.id();
        let volume = self.db.snapshot_volume_url()?;
        // Only a voter can lead the new group.
        let first_leader = first_leader.filter(|node| voters.iter().any(|(n, _)| n == node));
        let record = SplitRecord {
            new_group,
            ranges: ranges.to_vec(),
            snapshot,
            voters: voters.to_vec(),
            first_leader,
        };
        let mut batch = WriteBatch::new();
        let encoded = crate::raft::encode(&record).map_err(ApplyError::Corrupt)?;
        batch.put_row(self.meta_bucket, SPLIT_ROW_KEY, &[(0, &encoded)]);
        let gc_threshold = self.gc_threshold()?;
        batch.put_row(self.meta_bucket, SPLIT_GC_ROW_KEY, &[(0, &gc_threshold.to_be_bytes())]);
        batch.delete(self.meta_bucket, LEGACY_SPLIT_ROW_KEY);
        let voters = voters.iter().cloned().collect();
        let ranges = ranges.to_vec();
        let off = SplitOff {
            index,
            new_group,
            ranges,
            source: source.clone(),
            snapshot,
            volume,
            voters,
            first_leader,
            gc_threshold,
        };
        self.checks.publish_effect(Effect::Split(off));
        Ok((CommandResult::Split { source, snapshot }, batch))
    }

    /// Freezes the shard at entry `at` (see [`Command::Freeze`]): stores the position and the freeze
    /// record, then gives every bucket up.
    pub(super) fn freeze(
        &self,
        at: LogIdOf<TypeConfig>,
        ranges: &[(u16, u16)],
        membership: &StoredMembershipOf<TypeConfig>,
    ) -> Result<CommandResult, ApplyError> {
        let owned: Vec<(u16, u16)> = self.db.owned_buckets().iter().map(|r| (*r.start(), *r.end())).collect();
        if ranges.is_empty() || ranges != owned.as_slice() {
            self.commit(WriteBatch::new(), at, membership)?;
            let why = format!("a freeze gives up everything the shard owns ({owned:?}), not {ranges:?}");
            return Ok(CommandResult::Rejected(why));
        }
        let mut record = WriteBatch::new();
        let encoded =
            crate::raft::encode(&FrozenRecord { ranges: ranges.to_vec() }).map_err(ApplyError::Corrupt)?;
        record.put_row(self.meta_bucket, FROZEN_ROW_KEY, &[(0, &encoded)]);
        self.commit(record, at, membership)?;
        let snapshot = self.db.shrink_bucket(ranges.iter().map(|&(f, l)| f..=l).collect())?;
        let position = (Some(at), membership.clone());
        let shard = FrozenShard {
            db_id: self.db.id(),
            snapshot,
            volume: self.db.snapshot_volume_url()?,
            ranges: ranges.to_vec(),
        };
        tracing::info!(index = at.index, ?ranges, snapshot, "shard frozen for a merge");
        self.enter_frozen(Frozen { position: position.clone(), freeze_position: position, shard });
        Ok(CommandResult::Frozen { snapshot })
    }

    /// Applies one entry to a frozen shard: nothing is written; the position moves in memory.
    pub(super) fn apply_frozen(
        &self,
        entry: &EntryOf<TypeConfig>,
        membership: &mut StoredMembershipOf<TypeConfig>,
    ) -> Result<CommandResult, ApplyError> {
        let Some((first, snapshot)) = self
            .frozen
            .lock()
            .as_ref()
            .map(|f| (f.shard.ranges.first().map_or(self.meta_bucket, |r| r.0), f.shard.snapshot))
        else {
            return Err(ApplyError::Corrupt("a frozen entry applied to a shard that is not frozen".into()));
        };
        let result = match &entry.payload {
            EntryPayload::Blank => CommandResult::Applied,
            EntryPayload::Membership(m) => {
                *membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                CommandResult::Applied
            }
            EntryPayload::Normal(Command::Freeze { .. }) => CommandResult::Frozen { snapshot },
            // Every frozen replica hashes the same (empty) contents.
            EntryPayload::Normal(Command::Check(check)) => self.run_check(entry.log_id().index, check)?,
            EntryPayload::Normal(Command::Merge { .. }) => {
                CommandResult::Rejected("a shard frozen for a merge takes nothing in".into())
            }
            EntryPayload::Normal(_) => CommandResult::NotOwned { bucket: first },
        };
        if let Some(f) = self.frozen.lock().as_mut() {
            f.position = (Some(entry.log_id()), membership.clone());
        }
        Ok(result)
    }

    /// Takes in `ranges` from group `right_group`'s frozen replica on this node at merge entry `index`
    /// (see [`Command::Merge`]); the answer and the writes that go with the entry's position (the
    /// frozen shard's system rows, which came in with its first bucket, deleted).
    pub(super) fn merge(
        &self,
        index: u64,
        right_group: u64,
        ranges: &[(u16, u16)],
    ) -> Result<(CommandResult, WriteBatch), ApplyError> {
        let want: Vec<cairn_engine::BucketRange> = ranges.iter().map(|&(f, l)| f..=l).collect();
        let owned = self.db.owned_buckets();
        let covered = |r: &cairn_engine::BucketRange| {
            owned.iter().any(|o| o.start() <= r.start() && r.end() <= o.end())
        };
        let overlaps = |r: &cairn_engine::BucketRange| {
            owned.iter().any(|o| o.start() <= r.end() && r.start() <= o.end())
        };
        if want.is_empty() || want.iter().any(|r| r.start() > r.end()) {
            return Ok((
                CommandResult::Rejected(format!("a merge of no buckets: {ranges:?}")),
                WriteBatch::new(),
            ));
        }
        let Some(first) = ranges.iter().map(|r| r.0).min() else { unreachable!("checked non-empty") };
        let mut cleanup = WriteBatch::new();
        for key in [
            APPLIED_ROW_KEY,
            SPLIT_ROW_KEY,
            LEGACY_SPLIT_ROW_KEY,
            FROZEN_ROW_KEY,
            GC_ROW_KEY,
            SPLIT_GC_ROW_KEY,
        ] {
            cleanup.delete(first, key);
        }
        // The merged shard's threshold is the higher of the two: the frozen shard's replicas compacted
        // its files at different times up to its own, and digests must not see that.
        let take_threshold = |cleanup: &mut WriteBatch| -> Result<(), ApplyError> {
            let theirs = match self.db.get(first, GC_ROW_KEY) {
                Ok(row) => gc_threshold_of(row.as_ref()),
                Err(cairn_engine::Error::NotOwned { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            if theirs > self.gc_threshold()? {
                cleanup.put_row(self.meta_bucket, GC_ROW_KEY, &[(0, &theirs.to_be_bytes())]);
            }
            Ok(())
        };
        if want.iter().all(covered) {
            // Taken in before (a replay after a crash, or a snapshot taken after the merge).
            take_threshold(&mut cleanup)?;
            return Ok((CommandResult::Merged, cleanup));
        }
        if want.iter().any(overlaps) {
            let why = format!("a merge of {ranges:?}, which the shard partly owns ({owned:?})");
            return Ok((CommandResult::Rejected(why), WriteBatch::new()));
        }
        let node = self.node.lock().as_ref().map(|(shards, _)| shards.clone());
        let found = node.and_then(|shards| shards.get(right_group)).filter(|f| f.ranges == ranges);
        let imported = match &found {
            None => Err(format!("this node has no replica of group {right_group} frozen with {ranges:?}")),
            Some(f) => {
                self.db.expand_bucket_from(&f.volume, &f.db_id, f.snapshot, want).map_err(|e| e.to_string())
            }
        };
        match imported {
            Ok(stats) => {
                tracing::info!(
                    index,
                    right_group,
                    ?ranges,
                    files = stats.files_imported,
                    copied = stats.bytes_copied,
                    "merged a frozen neighbour in"
                );
                take_threshold(&mut cleanup)?;
                self.checks.publish_effect(Effect::Merged { index });
                Ok((CommandResult::Merged, cleanup))
            }
            Err(why) => {
                // The others take the ranges in; this replica cannot, so it must not serve or decide
                // anything until it re-syncs from them.
                self.checks.fence(index, format!("cannot take in the merge at index {index}: {why}"));
                Ok((CommandResult::Merged, WriteBatch::new()))
            }
        }
    }

    /// The GC threshold as of the last split this shard made (0 if its record predates the threshold).
    pub(crate) fn split_gc_threshold(&self) -> Result<u64, ApplyError> {
        Ok(gc_threshold_of(self.db.get(self.meta_bucket, SPLIT_GC_ROW_KEY)?.as_ref()))
    }

    /// The last split this shard made, if it keeps its record.
    pub(crate) fn split_record(&self) -> Result<Option<SplitRecord>, ApplyError> {
        let row = match self.db.get(self.meta_bucket, SPLIT_ROW_KEY)? {
            Some(row) => row,
            None => match self.db.get(self.meta_bucket, LEGACY_SPLIT_ROW_KEY)? {
                Some(row) => row,
                None => return Ok(None),
            },
        };
        let bytes = row.column(0).ok_or_else(|| ApplyError::Corrupt("no split record column".into()))?;
        SplitRecord::decode(bytes).map(Some).map_err(ApplyError::Corrupt)
    }
}
