//! Automatic splits and merges, and leadership balancing: on the meta group's leader, every
//! [`RESHAPE_EVERY`], the shards' sizes, loads and leaders are gathered from the nodes (each shard's
//! size from its leader, its load summed over the nodes serving it) and the changes `plan_auto`
//! picks (up to [`MAX_CHANGES`], on distinct shards) are recorded, as an operator's commands would
//! be; the shards' leaders then carry them out. With no such change, one leadership hand-over
//! `plan_leaders` picks is asked of the shard's leader.

use super::Membership;
use super::status::node_statuses;
use cairn_cluster::meta::MetaStore;
use cairn_cluster::placement::{AutoChange, LeaderMove, ShardId, ShardLoad, plan_auto, plan_leaders};
use cairn_cluster::raft::{ReadLevel, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the meta leader looks at the shards' sizes, loads and leaders.
pub(crate) const RESHAPE_EVERY: Duration = Duration::from_secs(2);

/// The most splits or merges one look starts (each on other shards).
const MAX_CHANGES: usize = 8;

/// How long a shard's leader waits for another replica to take its leadership over.
pub(crate) const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(3);

impl Membership {
    /// Splits and merges shards as their sizes and loads call for, while this node leads the meta group,
    /// until its meta replica stops.
    pub(super) async fn reshape(self: Arc<Self>) {
        let Ok(meta) = self.meta() else { return };
        // Since when each shard has been over the load threshold, and since when it has had its
        // current ranges (generation), as this leader saw it.
        let mut seen = Seen::default();
        while !meta.replica().is_stopped() {
            tokio::time::sleep(RESHAPE_EVERY).await;
            if meta.replica().status().role != Role::Leader {
                seen = Seen::default();
                continue;
            }
            if let Err(e) = self.reshape_once(meta, &mut seen).await {
                tracing::debug!(error = %e, "automatic reshaping skipped this round");
            }
        }
    }

    async fn reshape_once(
        &self,
        meta: &MetaStore,
        seen: &mut Seen,
    ) -> Result<(), cairn_cluster::meta::MetaError> {
        let Seen { hot_since, shaped_since } = seen;
        let state = meta.read(ReadLevel::Strong).await?;
        let Some(map) = &state.map else { return Ok(()) };
        let settings = state.settings.reshape.auto();
        let statuses = node_statuses(&state, &BTreeSet::new(), &self.channels).await;
        let live: BTreeSet<u64> = statuses.iter().map(|s| s.node_id).filter(|id| *id != 0).collect();
        let balance = state.settings.rebalance;
        let led = leaders(&statuses);
        if settings.split_size_bytes == 0 && settings.split_qps == 0 {
            if balance {
                self.balance_leaders(&state, map, led, &live).await;
            }
            return Ok(());
        }
        let mut loads = gather(&statuses);
        let now = Instant::now();
        // A shard first seen, or seen with other ranges, changed shape now (a new meta leader
        // counts every shard as changed: no merge until the delay has passed).
        shaped_since.retain(|id, _| map.shard(*id).is_some());
        for s in &map.shards {
            let since = shaped_since.entry(s.id).or_insert((s.generation, now));
            if since.0 != s.generation {
                *since = (s.generation, now);
            }
            if let Some(load) = loads.get_mut(&s.id) {
                load.changed_secs_ago = now.duration_since(since.1).as_secs();
            }
        }
        hot_since.retain(|id, _| loads.contains_key(id));
        for (id, load) in &mut loads {
            if settings.split_qps > 0 && load.qps > settings.split_qps as f64 {
                load.hot_for_secs = now.duration_since(*hot_since.entry(*id).or_insert(now)).as_secs();
            } else {
                hot_since.remove(id);
            }
        }
        let changes = plan_auto(map, &loads, &settings, MAX_CHANGES);
        if changes.is_empty() {
            if balance {
                self.balance_leaders(&state, map, led, &live).await;
            }
            return Ok(());
        }
        for change in changes {
            match change {
                AutoChange::Split { shard, at, reason } => {
                    let load = &loads[&shard];
                    tracing::info!(%shard, at, ?reason, bytes = load.bytes, qps = load.qps, "splitting a shard on its own");
                    let meta = self.meta().map_err(|_| cairn_cluster::meta::MetaError::NotInitialized)?;
                    meta.update(|s| s.begin_auto_split(shard, at)).await?;
                    hot_since.remove(&shard);
                }
                AutoChange::Merge { left, right } => {
                    tracing::info!(%left, %right, bytes = loads[&left].bytes + loads[&right].bytes, "merging small, cold neighbours");
                    self.merge_shards(left, right).await?;
                }
            }
        }
        Ok(())
    }
}

impl Membership {
    /// Up to [`MAX_CHANGES`] leadership hand-overs, one shard at a time, each planned on the leaders
    /// as the ones before left them.
    async fn balance_leaders(
        &self,
        state: &cairn_cluster::meta::ClusterState,
        map: &cairn_cluster::placement::ShardMap,
        mut led: BTreeMap<ShardId, u64>,
        live: &BTreeSet<u64>,
    ) {
        for _ in 0..MAX_CHANGES {
            let Some(step) = plan_leaders(map, &led, live) else { return };
            self.hand_leadership(state, step).await;
            led.insert(step.shard, step.to);
        }
    }

    /// Asks the leader of `step.shard` (node `step.from`) to hand leadership to node `step.to`.
    async fn hand_leadership(&self, state: &cairn_cluster::meta::ClusterState, step: LeaderMove) {
        use cairn_proto::cluster::{TransferLeaderRequest, cluster_client::ClusterClient};
        let Some(channel) = state.nodes.get(&step.from).and_then(|n| self.channels.get(&n.grpc_addr).ok())
        else {
            return;
        };
        let mut client = ClusterClient::new(channel);
        let ask = client.transfer_leader(TransferLeaderRequest { shard: step.shard.0, to: step.to });
        let answer = tokio::time::timeout(HAND_OVER_TIMEOUT + Duration::from_secs(1), ask).await;
        let moved = matches!(&answer, Ok(Ok(r)) if r.get_ref().moved);
        tracing::info!(shard = %step.shard, from = step.from, to = step.to, moved, "balancing shard leaders");
    }
}

/// Each shard's leader, as the nodes that lead report it.
fn leaders(statuses: &[cairn_proto::kv::StatusResponse]) -> BTreeMap<ShardId, u64> {
    let mut leaders = BTreeMap::new();
    for status in statuses.iter().filter(|s| s.node_id != 0) {
        for shard in &status.shards {
            if shard.replication.as_ref().is_some_and(|r| r.role.parse() == Ok(Role::Leader)) {
                leaders.insert(ShardId(shard.shard), status.node_id);
            }
        }
    }
    leaders
}

/// What the meta leader remembers between looks: since when each shard has been over the load
/// threshold, and since when it has had its current ranges (with its generation then).
#[derive(Default)]
struct Seen {
    hot_since: BTreeMap<ShardId, Instant>,
    shaped_since: BTreeMap<ShardId, (u64, Instant)>,
}

/// Each shard's size (from its leader's report; shards whose leader did not report are left out) and
/// load (summed over every node's report, cut where the busiest node's half is).
pub(super) fn gather(statuses: &[cairn_proto::kv::StatusResponse]) -> BTreeMap<ShardId, ShardLoad> {
    let mut loads: BTreeMap<ShardId, ShardLoad> = BTreeMap::new();
    let mut busiest: BTreeMap<ShardId, f64> = BTreeMap::new();
    let split_at = |b: u32| u16::try_from(b).ok().filter(|b| *b > 0);
    for shard in statuses.iter().flat_map(|s| &s.shards) {
        let id = ShardId(shard.shard);
        let load = loads.entry(id).or_default();
        load.qps += shard.requests_per_sec;
        let most = busiest.entry(id).or_insert(-1.0);
        if shard.requests_per_sec > *most {
            *most = shard.requests_per_sec;
            load.load_split_at = split_at(shard.load_split_at);
        }
        if shard.replication.as_ref().is_some_and(|r| r.role.parse() == Ok(Role::Leader)) {
            load.bytes = shard.live_bytes;
            load.size_split_at = split_at(shard.size_split_at);
        }
    }
    let led: BTreeSet<ShardId> = statuses
        .iter()
        .flat_map(|s| &s.shards)
        .filter(|s| s.replication.as_ref().is_some_and(|r| r.role.parse() == Ok(Role::Leader)))
        .map(|s| ShardId(s.shard))
        .collect();
    loads.retain(|id, _| led.contains(id));
    loads
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::kv::{Replication, ShardStatus, StatusResponse};

    fn shard(id: u32, leader: bool, bytes: u64, qps: f64, at: u32) -> ShardStatus {
        ShardStatus {
            shard: id,
            live_bytes: bytes,
            size_split_at: at,
            requests_per_sec: qps,
            load_split_at: at + 1,
            replication: Some(Replication {
                role: if leader { "leader" } else { "follower" }.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sizes_come_from_leaders_and_loads_add_up_over_nodes() {
        let node = |shards| StatusResponse { shards, ..Default::default() };
        let statuses = [
            node(vec![shard(0, true, 100, 5.0, 10), shard(1, false, 7, 1.0, 0)]),
            node(vec![shard(0, false, 90, 20.0, 12), shard(1, false, 8, 2.0, 300)]),
        ];
        let loads = gather(&statuses);
        assert_eq!(loads.len(), 1, "shard 1's leader did not report: {loads:?}");
        let l = &loads[&ShardId(0)];
        assert_eq!((l.bytes, l.size_split_at, l.qps, l.load_split_at), (100, Some(10), 25.0, Some(13)));
    }
}
