//! Operators' changes to a cluster's shards, the same on gRPC (`Cluster/SplitShard`,
//! `Cluster/MergeShards`, `Cluster/ListShards`) and on the admin REST routes
//! (`POST /admin/shards/{id}/split`, `POST /admin/shards/{id}/merge`, `GET /admin/shards`): one place
//! decides them, both wire formats only translate. Settings likewise (`Cluster/SetSetting`,
//! `PUT /admin/settings/{name}`).

use super::Membership;
use cairn_cluster::meta::{ClusterSettings, MetaError};
use cairn_cluster::placement::{ShardId, ShardMap};
use cairn_proto::cluster as pb;

impl Membership {
    /// Marks shard `shard` to split at bucket `at` (by default the one that halves its live data, see
    /// [`split_point`]) in the meta group (the shard's leader carries the split out); the new shard's
    /// id and the bucket. The same split asked again answers the same id.
    pub(crate) async fn split_shard(
        &self,
        shard: ShardId,
        at: Option<u16>,
    ) -> Result<(ShardId, u16), MetaError> {
        let meta = self.meta().map_err(|_| MetaError::NotInitialized)?;
        let at = match at {
            Some(at) => at,
            None => {
                let state = meta.read(cairn_cluster::raft::ReadLevel::Strong).await?;
                let map = state.map.as_ref().ok_or(MetaError::NotInitialized)?;
                let s = map.shard(shard).ok_or(MetaError::Placement(
                    cairn_cluster::placement::PlacementError::UnknownShard(shard),
                ))?;
                // Asked again (a lost answer): the split under way, wherever it cuts.
                if let Some(plan) = s.splitting {
                    return Ok((plan.new, plan.at));
                }
                let statuses =
                    super::status::node_statuses(&state, &std::collections::BTreeSet::new(), &self.channels)
                        .await;
                let halving = super::reshape::gather(&statuses).get(&shard).and_then(|l| l.size_split_at);
                split_point(&s.ranges, halving)
            }
        };
        let (_, new) = meta.update(|s| s.begin_split(shard, at)).await?;
        tracing::info!(%shard, at, %new, "shard split requested");
        Ok((new, at))
    }

    /// Marks shard `right` to merge into its left-hand neighbour `left` in the meta group (the control
    /// plane co-locates their replicas, then the shards' leaders freeze and merge). The same merge asked
    /// again changes nothing.
    pub(crate) async fn merge_shards(&self, left: ShardId, right: ShardId) -> Result<(), MetaError> {
        let meta = self.meta().map_err(|_| MetaError::NotInitialized)?;
        meta.update(|s| Ok((s.begin_merge(left, right)?, ()))).await?;
        tracing::info!(%left, %right, "shard merge requested");
        Ok(())
    }

    /// The cluster settings, read through the meta group's leader.
    pub(crate) async fn settings(&self) -> Result<ClusterSettings, MetaError> {
        self.state(true).await?.map(|s| s.settings).ok_or(MetaError::NotInitialized)
    }

    /// Changes setting `name` to `value` cluster-wide through the meta group
    /// ([`ClusterState::set_setting`](cairn_cluster::meta::ClusterState::set_setting)); the settings
    /// after the change.
    pub(crate) async fn set_setting(&self, name: &str, value: &str) -> Result<ClusterSettings, MetaError> {
        let meta = self.meta().map_err(|_| MetaError::NotInitialized)?;
        let (after, changed) = meta
            .update(|s| {
                let now_ms = cairn_cluster::raft::wall_now() / 1_000_000;
                Ok(s.set_setting_at(name, value, now_ms)?.map_or((None, false), |next| (Some(next), true)))
            })
            .await?;
        if changed {
            tracing::info!(name, value, "cluster setting changed");
        }
        Ok(after.settings)
    }

    /// Protects wall time `wall_time` (0: now) for `secs` on behalf of `owner`, through the meta group
    /// ([`ClusterState::protect`](cairn_cluster::meta::ClusterState::protect)).
    pub(crate) async fn protect(
        &self,
        wall_time: u64,
        secs: u64,
        owner: &str,
    ) -> Result<cairn_cluster::meta::ProtectedTimestamp, MetaError> {
        let meta = self.meta().map_err(|_| MetaError::NotInitialized)?;
        // Timed from the first try (a retry after a lost race only makes it look slower: safe).
        let started = std::time::Instant::now();
        let (_, record) = meta
            .update(|s| {
                let now = cairn_cluster::raft::wall_now();
                let at = if wall_time == 0 { now } else { wall_time };
                let (next, record) = s.protect(at, secs, owner, now)?;
                Ok((Some(next), record))
            })
            .await?;
        let took = started.elapsed();
        if took > cairn_cluster::meta::PROTECT_COMMIT_SLACK {
            // A threshold may have passed it meanwhile: not a protection anyone may count on.
            let _ = self.release_protected(record.id).await;
            return Err(MetaError::Group(cairn_cluster::raft::GroupError::Timeout(format!(
                "the protected timestamp took {took:?} to commit (more than {:?}): released; retry",
                cairn_cluster::meta::PROTECT_COMMIT_SLACK
            ))));
        }
        tracing::info!(id = record.id, wall_time = record.wall_time, owner, secs, "timestamp protected");
        Ok(record)
    }

    /// Releases protected timestamp `id`; `false` if it was not held.
    pub(crate) async fn release_protected(&self, id: u64) -> Result<bool, MetaError> {
        let meta = self.meta().map_err(|_| MetaError::NotInitialized)?;
        let now_ms = || cairn_cluster::raft::wall_now() / 1_000_000;
        let (_, released) = meta
            .update(|s| Ok(s.release_protected(id, now_ms()).map_or((None, false), |n| (Some(n), true))))
            .await?;
        if released {
            tracing::info!(id, "protected timestamp released");
        }
        Ok(released)
    }

    /// The protected timestamps held now, read through the meta group's leader.
    pub(crate) async fn protected(&self) -> Result<Vec<cairn_cluster::meta::ProtectedTimestamp>, MetaError> {
        let state = self.state(true).await?.ok_or(MetaError::NotInitialized)?;
        let now_ms = cairn_cluster::raft::wall_now() / 1_000_000;
        Ok(state.protected_at(now_ms).into_iter().cloned().collect())
    }

    /// The shard map, read through the meta group's leader.
    pub(crate) async fn shard_map(&self) -> Result<ShardMap, MetaError> {
        self.state(true).await?.and_then(|s| s.map).ok_or(MetaError::NotInitialized)
    }
}

/// `map` as `Cluster/ListShards` answers it.
pub(crate) fn list_reply(map: &ShardMap) -> pb::ListShardsReply {
    let shards = map
        .shards
        .iter()
        .map(|s| pb::ShardInfo {
            id: s.id.0,
            ranges: s
                .ranges
                .iter()
                .map(|&(first, last)| pb::BucketRange { first: first.into(), last: last.into() })
                .collect(),
            replicas: s.replicas.clone(),
            epoch: s.epoch,
            generation: s.generation,
            splitting: s.splitting.map(|p| pb::SplitUnderWay { new_shard: p.new.0, at: p.at.into() }),
            moving: s.moving.map(|m| pb::MoveUnderWay { from: m.from, to: m.to }),
            merging: s.merging.map(|r| r.0),
        })
        .collect();
    pb::ListShardsReply { version: map.version, total_buckets: map.total_buckets, shards }
}

/// `map` as `GET /admin/shards` answers it.
pub(crate) fn list_json(map: &ShardMap) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = map
        .shards
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id.0,
                "ranges": s.ranges,
                "replicas": s.replicas,
                "epoch": s.epoch,
                "generation": s.generation,
                "splitting": s.splitting.map(|p| serde_json::json!({"new_shard": p.new.0, "at": p.at})),
                "moving": s.moving.map(|m| serde_json::json!({"from": m.from, "to": m.to})),
                "merging": s.merging.map(|r| r.0),
            })
        })
        .collect();
    serde_json::json!({"version": map.version, "total_buckets": map.total_buckets, "shards": shards})
}
/// Where a split of a shard owning `ranges` cuts when no bucket is asked for: at `halving` (the
/// bucket that halves its live data, from its leader's report) if the shard owns it above its first
/// bucket, else in the middle of its buckets (the first of the upper half). A shard of one bucket gets
/// its first one, which the split refuses (a single bucket never splits).
pub(crate) fn split_point(ranges: &[(u16, u16)], halving: Option<u16>) -> u16 {
    let first = ranges.first().map_or(0, |r| r.0);
    let owned = |b: u16| ranges.iter().any(|&(f, l)| (f..=l).contains(&b));
    if let Some(at) = halving.filter(|&at| at > first && owned(at)) {
        return at;
    }
    let count: u32 = ranges.iter().map(|&(f, l)| u32::from(l) - u32::from(f) + 1).sum();
    let mut skip = count / 2;
    for &(f, l) in ranges {
        let len = u32::from(l) - u32::from(f) + 1;
        if skip < len {
            return f + skip as u16;
        }
        skip -= len;
    }
    first
}

#[cfg(test)]
mod split_points {
    use super::split_point;

    #[test]
    fn a_split_cuts_where_the_data_halves_or_else_in_the_middle_of_the_buckets() {
        assert_eq!(split_point(&[(0, 255)], Some(40)), 40);
        // Not above the first bucket, or not owned: the middle of the buckets.
        for halving in [None, Some(0), Some(300)] {
            assert_eq!(split_point(&[(0, 255)], halving), 128, "{halving:?}");
        }
        assert_eq!(split_point(&[(10, 13), (20, 23)], None), 20);
        assert_eq!(split_point(&[(10, 14), (20, 23)], None), 14);
        // One bucket: the split refuses it.
        assert_eq!(split_point(&[(7, 7)], None), 7);
    }
}
