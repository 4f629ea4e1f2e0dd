//! Leadership balancing: which shard's leadership to hand from the node leading the most shards to a
//! node leading fewer, so that a node's share of the write and linearizable-read work follows its
//! share of replicas (as CockroachDB balances leases).

use super::{NodeId, ShardId, ShardMap};
use std::collections::{BTreeMap, BTreeSet};

/// One leadership hand-over: `shard`'s leader on `from` hands leadership to its replica on `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderMove {
    /// The shard.
    pub shard: ShardId,
    /// The node leading it now.
    pub from: NodeId,
    /// The node that should lead it.
    pub to: NodeId,
}

/// The one hand-over to make now, if any: while some live node leads at least two shards more than
/// another live node holding a replica of one of them, the most-leading node hands one (the lowest
/// id) to the least-leading such node. `leaders` is each shard's leader as its replicas report it;
/// shards splitting, merging or moving are left alone (their leaders are busy carrying that out), as
/// are nodes not in `live`.
pub fn plan_leaders(
    map: &ShardMap,
    leaders: &BTreeMap<ShardId, NodeId>,
    live: &BTreeSet<NodeId>,
) -> Option<LeaderMove> {
    let mut led: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    for node in leaders.values() {
        if let Some(count) = led.get_mut(node) {
            *count += 1;
        }
    }
    let idle = |id: &ShardId| {
        map.shard(*id).is_some_and(|s| s.splitting.is_none() && s.moving.is_none() && !map.in_merge(s.id))
    };
    // The most-leading nodes first; for each, its shards in id order, each to the least-leading
    // replica node at least two behind.
    let mut by_load: Vec<(NodeId, usize)> = led.iter().map(|(n, c)| (*n, *c)).collect();
    by_load.sort_by_key(|(n, c)| (std::cmp::Reverse(*c), *n));
    for (from, most) in by_load {
        let candidates = leaders.iter().filter(|(id, leader)| **leader == from && idle(id));
        let best = candidates
            .filter_map(|(id, _)| {
                let shard = map.shard(*id)?;
                let to = shard
                    .replicas
                    .iter()
                    .filter_map(|n| Some((*n, *led.get(n)?)))
                    .filter(|(n, c)| *n != from && c + 2 <= most)
                    .min_by_key(|(n, c)| (*c, *n))?;
                Some((to.1, *id, to.0))
            })
            .min_by_key(|(count, id, to)| (*count, *id, *to));
        if let Some((_, shard, to)) = best {
            return Some(LeaderMove { shard, from, to });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::ShardMap;

    fn map(shards: usize, nodes: u64) -> ShardMap {
        let nodes: Vec<NodeId> = (1..=nodes).collect();
        ShardMap::initial(1024, shards, &nodes, 3).unwrap()
    }

    fn leaders(pairs: &[(u32, NodeId)]) -> BTreeMap<ShardId, NodeId> {
        pairs.iter().map(|(s, n)| (ShardId(*s), *n)).collect()
    }

    #[test]
    fn leadership_moves_from_the_busiest_node_to_one_at_least_two_behind() {
        let m = map(4, 3);
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        // Node 1 leads all four: hand one to a node leading none.
        let all_on_one = leaders(&[(0, 1), (1, 1), (2, 1), (3, 1)]);
        let mv = plan_leaders(&m, &all_on_one, &live).unwrap();
        assert_eq!((mv.shard, mv.from), (ShardId(0), 1));
        assert!(mv.to == 2 || mv.to == 3);
        // 2/1/1 is as even as four shards on three nodes get.
        assert_eq!(plan_leaders(&m, &leaders(&[(0, 1), (1, 1), (2, 2), (3, 3)]), &live), None);
        // A dead node leads nothing and receives nothing.
        let live: BTreeSet<NodeId> = [1, 2].into();
        let mv = plan_leaders(&m, &all_on_one, &live).unwrap();
        assert_eq!((mv.from, mv.to), (1, 2));
    }

    #[test]
    fn repeated_hand_overs_even_the_leaders_out_and_stop() {
        let m = map(12, 3);
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut current: BTreeMap<ShardId, NodeId> = m.shards.iter().map(|s| (s.id, 1)).collect();
        let mut steps = 0;
        while let Some(mv) = plan_leaders(&m, &current, &live) {
            assert_eq!(current[&mv.shard], mv.from);
            assert!(m.shard(mv.shard).unwrap().replicas.contains(&mv.to));
            current.insert(mv.shard, mv.to);
            steps += 1;
            assert!(steps <= 12, "no end: {current:?}");
        }
        let mut counts = BTreeMap::new();
        for n in current.values() {
            *counts.entry(*n).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4], "{current:?}");
    }

    #[test]
    fn shards_changing_shape_keep_their_leader() {
        let mut m = map(4, 3);
        let live: BTreeSet<NodeId> = [1, 2, 3].into();
        m.begin_split(ShardId(0), 100, ShardId(4)).unwrap();
        let current = leaders(&[(0, 1), (1, 1), (2, 1), (3, 2)]);
        let mv = plan_leaders(&m, &current, &live).unwrap();
        assert_ne!(mv.shard, ShardId(0));
    }
}
