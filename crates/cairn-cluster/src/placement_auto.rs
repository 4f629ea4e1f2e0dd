//! Automatic splits and merges: which shard to split (too big, or too busy for long enough) or which
//! two neighbours to merge (small and cold together), from the shards' sizes and loads as their nodes
//! report them. A pure planner: the meta leader records what it picks like an operator's command.

use super::{ShardDescriptor, ShardId, ShardMap};
use std::collections::BTreeMap;

/// One shard's size and load, as the meta leader gathered them from the nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardLoad {
    /// Bytes of live data, about (the shard leader's engine).
    pub bytes: u64,
    /// The bucket that halves `bytes` (the first bucket of the upper half), if the data spans more
    /// than one bucket.
    pub size_split_at: Option<u16>,
    /// Requests per second over the last seconds, summed over the shard's replicas.
    pub qps: f64,
    /// The bucket that halves the load, if it spans more than one bucket.
    pub load_split_at: Option<u16>,
    /// For how long `qps` has stayed above the load threshold, in seconds.
    pub hot_for_secs: u64,
    /// How long ago the shard's ranges last changed (as far as the planner's caller knows), in
    /// seconds.
    pub changed_secs_ago: u64,
}

/// The settings automatic splits and merges follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoSettings {
    /// Split a shard holding more than this many bytes (0: never by size).
    pub split_size_bytes: u64,
    /// Split a shard serving more than this many requests per second (0: never by load)...
    pub split_qps: u64,
    /// ...for at least this many seconds.
    pub split_load_secs: u64,
    /// Merge neighbours that together hold under a quarter of `split_size_bytes` and are cold (each
    /// under a quarter of `split_qps`).
    pub merge: bool,
    /// ...unless either one's ranges changed less than this many seconds ago.
    pub merge_delay_secs: u64,
}

/// Why an automatic split was planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitReason {
    /// The shard holds more than `split_size_bytes`.
    Size,
    /// The shard served more than `split_qps` for `split_load_secs`.
    Load,
}

/// One automatic change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoChange {
    /// Split `shard` at bucket `at`.
    Split {
        /// The shard.
        shard: ShardId,
        /// The first bucket the new shard takes.
        at: u16,
        /// Why.
        reason: SplitReason,
    },
    /// Merge `right` into `left`.
    Merge {
        /// The left-hand shard, which takes the buckets.
        left: ShardId,
        /// Its right-hand neighbour.
        right: ShardId,
    },
}

/// Whether shard `s` may change shape now: no split, merge or move of it under way.
fn idle(map: &ShardMap, s: &ShardDescriptor) -> bool {
    s.splitting.is_none() && s.moving.is_none() && !map.in_merge(s.id)
}

/// Whether `at` splits `s`: a bucket it owns above its first.
fn splits(s: &ShardDescriptor, at: u16) -> bool {
    at > s.first_bucket() && s.ranges.iter().any(|&(first, last)| (first..=last).contains(&at))
}

/// The changes to make now, at most `max`, none touching the same shard: the shards over the size
/// limit, largest first, then the busiest shards hot for long enough; or, only if no split is due or
/// under way and no merge is under way, disjoint pairs of cold neighbours under a quarter of the size
/// limit whose right-hand one an automatic split made (boundaries an operator set stay), smallest
/// first; neither of a pair may have changed shape in the last `merge_delay_secs`. Shards without a
/// report, and shards splitting, merging or moving, are left alone.
pub fn plan_auto(
    map: &ShardMap,
    loads: &BTreeMap<ShardId, ShardLoad>,
    settings: &AutoSettings,
    max: usize,
) -> Vec<AutoChange> {
    let known = |s: &ShardDescriptor| loads.get(&s.id).filter(|_| idle(map, s));
    let mut by_size: Vec<(&ShardDescriptor, u64, u16)> = map
        .shards
        .iter()
        .filter_map(|s| Some((s, known(s)?)))
        .filter(|(_, l)| settings.split_size_bytes > 0 && l.bytes > settings.split_size_bytes)
        .filter_map(|(s, l)| Some((s, l.bytes, l.size_split_at.filter(|at| splits(s, *at))?)))
        .collect();
    by_size.sort_by_key(|(s, bytes, _)| (std::cmp::Reverse(*bytes), s.id));
    let mut changes: Vec<AutoChange> = by_size
        .iter()
        .map(|(s, _, at)| AutoChange::Split { shard: s.id, at: *at, reason: SplitReason::Size })
        .take(max)
        .collect();
    let mut by_load: Vec<(&ShardDescriptor, f64, u16)> = map
        .shards
        .iter()
        .filter(|s| !by_size.iter().any(|(t, _, _)| t.id == s.id))
        .filter_map(|s| Some((s, known(s)?)))
        .filter(|(_, l)| settings.split_qps > 0 && l.qps > settings.split_qps as f64)
        .filter(|(_, l)| l.hot_for_secs >= settings.split_load_secs)
        .filter_map(|(s, l)| Some((s, l.qps, l.load_split_at.filter(|at| splits(s, *at))?)))
        .collect();
    by_load.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    let room = max.saturating_sub(changes.len());
    changes.extend(
        by_load
            .iter()
            .map(|(s, _, at)| AutoChange::Split { shard: s.id, at: *at, reason: SplitReason::Load })
            .take(room),
    );
    let busy = map.shards.iter().any(|s| s.splitting.is_some() || s.merging.is_some());
    if !changes.is_empty() || !settings.merge || settings.split_size_bytes == 0 || busy {
        return changes;
    }
    let cold = |l: &ShardLoad| {
        (settings.split_qps == 0 || l.qps * 4.0 < settings.split_qps as f64)
            && l.changed_secs_ago >= settings.merge_delay_secs
    };
    let mut shards: Vec<&ShardDescriptor> = map.shards.iter().collect();
    shards.sort_by_key(|s| s.first_bucket());
    let mut pairs: Vec<(ShardId, ShardId, u64)> = shards
        .windows(2)
        .filter(|w| u32::from(w[0].last_bucket()) + 1 == u32::from(w[1].first_bucket()) && w[1].automatic)
        .filter_map(|w| Some((w[0], w[1], known(w[0])?, known(w[1])?)))
        .filter(|(_, _, l, r)| cold(l) && cold(r))
        .map(|(left, right, l, r)| (left.id, right.id, l.bytes + r.bytes))
        .filter(|(_, _, sum)| sum.saturating_mul(4) < settings.split_size_bytes)
        .collect();
    // Smallest first (ties in bucket order: the sort is stable), each shard in one pair at most.
    pairs.sort_by_key(|(_, _, sum)| *sum);
    let mut taken = std::collections::BTreeSet::new();
    for (left, right, _) in pairs {
        if changes.len() >= max {
            break;
        }
        if !taken.contains(&left) && !taken.contains(&right) {
            taken.extend([left, right]);
            changes.push(AutoChange::Merge { left, right });
        }
    }
    changes
}

/// The bucket that halves `weights` (bucket, weight; in bucket order): the first bucket of the upper
/// half, where the weight before it reaches half the total. `None` if the weight is all in one bucket
/// (a single bucket never splits) or there is none.
pub fn halving_bucket(weights: &[(u16, f64)]) -> Option<u16> {
    let total: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut before = 0.0;
    for (i, (bucket, w)) in weights.iter().enumerate() {
        if i > 0 && before * 2.0 >= total {
            return Some(*bucket);
        }
        before += w.max(0.0);
    }
    // The upper half is the last bucket alone, unless that is the only one with weight.
    let last = weights.iter().rposition(|(_, w)| *w > 0.0)?;
    (weights[..last].iter().any(|(_, w)| *w > 0.0)).then(|| weights[last].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first change planned, of at most one.
    fn first(
        map: &ShardMap,
        loads: &BTreeMap<ShardId, ShardLoad>,
        settings: &AutoSettings,
    ) -> Option<AutoChange> {
        plan_auto(map, loads, settings, 1).first().copied()
    }

    fn settings() -> AutoSettings {
        AutoSettings {
            split_size_bytes: 1000,
            split_qps: 100,
            split_load_secs: 30,
            merge: true,
            merge_delay_secs: 60,
        }
    }

    fn load(bytes: u64, at: u16, qps: f64, hot: u64) -> ShardLoad {
        ShardLoad {
            bytes,
            size_split_at: Some(at),
            qps,
            load_split_at: Some(at + 1),
            hot_for_secs: hot,
            changed_secs_ago: 3600,
        }
    }

    #[test]
    fn halving_buckets_split_the_weight_in_two() {
        assert_eq!(halving_bucket(&[]), None);
        assert_eq!(halving_bucket(&[(7, 10.0)]), None, "one bucket never splits");
        assert_eq!(halving_bucket(&[(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]), Some(3));
        assert_eq!(halving_bucket(&[(1, 9.0), (2, 1.0)]), Some(2));
        assert_eq!(halving_bucket(&[(1, 1.0), (2, 9.0)]), Some(2));
        assert_eq!(halving_bucket(&[(1, 1.0), (5, 1.0), (9, 2.0)]), Some(9));
        assert_eq!(halving_bucket(&[(1, 0.0), (5, 3.0)]), None);
    }

    #[test]
    fn the_biggest_shard_over_the_size_splits_first_then_the_busiest_hot_one() {
        let map = ShardMap::initial(1024, 4, &[1, 2, 3], 3).unwrap();
        let mut loads: BTreeMap<ShardId, ShardLoad> =
            (0..4).map(|i| (ShardId(i), load(500, i as u16 * 256 + 9, 1.0, 0))).collect();
        assert_eq!(
            first(&map, &loads, &settings()),
            None,
            "nothing to do: 1000 bytes is the limit, pairs sum to 1000"
        );
        loads.insert(ShardId(1), load(1500, 300, 1.0, 0));
        loads.insert(ShardId(2), load(2500, 600, 1.0, 0));
        let want = AutoChange::Split { shard: ShardId(2), at: 600, reason: SplitReason::Size };
        assert_eq!(first(&map, &loads, &settings()), Some(want));
        // A halving bucket the shard cannot split at (its first, or not its own) is not used.
        loads.insert(ShardId(2), load(2500, 512, 1.0, 0));
        assert_eq!(
            first(&map, &loads, &settings())
                .map(|c| matches!(c, AutoChange::Split { shard: ShardId(1), .. })),
            Some(true)
        );
        // Load: over the threshold, but not for long enough; then long enough.
        let mut loads: BTreeMap<ShardId, ShardLoad> =
            (0..4).map(|i| (ShardId(i), load(500, i as u16 * 256 + 9, 1.0, 0))).collect();
        loads.insert(ShardId(3), load(10, 800, 500.0, 10));
        assert_eq!(first(&map, &loads, &settings()), None);
        loads.insert(ShardId(3), load(10, 800, 500.0, 30));
        let want = AutoChange::Split { shard: ShardId(3), at: 801, reason: SplitReason::Load };
        assert_eq!(first(&map, &loads, &settings()), Some(want));
        // A shard under way elsewhere is left alone.
        let mut busy = map.clone();
        busy.begin_split(ShardId(3), 900, ShardId(9)).unwrap();
        assert_eq!(first(&busy, &loads, &settings()), None);
    }

    #[test]
    fn small_cold_neighbours_merge_in_disjoint_pairs() {
        let mut map = ShardMap::initial(1024, 4, &[1, 2, 3], 3).unwrap();
        let operators = first(
            &map,
            &BTreeMap::from([(ShardId(0), load(1, 9, 0.0, 0)), (ShardId(1), load(1, 300, 0.0, 0))]),
            &settings(),
        );
        assert_eq!(operators, None, "shards an operator made are not merged on their own");
        for s in &mut map.shards {
            s.automatic = true;
        }
        let mut loads: BTreeMap<ShardId, ShardLoad> =
            (0..4).map(|i| (ShardId(i), load(100, i as u16 * 256 + 9, 1.0, 0))).collect();
        loads.insert(ShardId(0), load(200, 9, 1.0, 0));
        // Pairs (0,1) = 300, (1,2) = 200, (2,3) = 200: under 250, cold; the smallest, first in bucket order.
        let want = AutoChange::Merge { left: ShardId(1), right: ShardId(2) };
        assert_eq!(first(&map, &loads, &settings()), Some(want));
        // A warm shard is not merged.
        loads.insert(ShardId(2), load(100, 600, 30.0, 0));
        assert_eq!(first(&map, &loads, &settings()), None);
        // Not while a merge is under way, nor without merges on, nor for a shard without a report.
        loads.insert(ShardId(2), load(100, 600, 1.0, 0));
        let mut merging = map.clone();
        merging.begin_merge(ShardId(0), ShardId(1)).unwrap();
        assert_eq!(first(&merging, &loads, &settings()), None);
        assert_eq!(first(&map, &loads, &AutoSettings { merge: false, ..settings() }), None);
        loads.remove(&ShardId(2));
        assert_eq!(first(&map, &loads, &settings()), None);
    }

    #[test]
    fn several_changes_at_once_never_touch_one_shard_twice() {
        let mut map = ShardMap::initial(1024, 8, &[1, 2, 3], 3).unwrap();
        let mut loads: BTreeMap<ShardId, ShardLoad> =
            (0..8).map(|i| (ShardId(i), load(5000 + u64::from(i), i as u16 * 128 + 9, 1.0, 0))).collect();
        // Every shard over the limit: the four largest split, largest first.
        let splits = plan_auto(&map, &loads, &settings(), 4);
        let shards: Vec<u32> = splits
            .iter()
            .map(|c| match c {
                AutoChange::Split { shard, reason: SplitReason::Size, .. } => shard.0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(shards, vec![7, 6, 5, 4]);
        // A busy shard too, once the size splits leave room.
        loads.insert(ShardId(0), load(5000, 9, 500.0, 60));
        assert_eq!(plan_auto(&map, &loads, &settings(), 8).len(), 8);
        assert!(plan_auto(&map, &loads, &settings(), 8).contains(&AutoChange::Split {
            shard: ShardId(0),
            at: 9,
            reason: SplitReason::Size
        }));
        // All small and cold: disjoint pairs, smallest first, never a shard twice.
        for s in &mut map.shards {
            s.automatic = true;
        }
        let loads: BTreeMap<ShardId, ShardLoad> =
            (0..8).map(|i| (ShardId(i), load(10 + u64::from(i), i as u16 * 128 + 9, 0.0, 0))).collect();
        let merges = plan_auto(&map, &loads, &settings(), 8);
        let pairs: Vec<(u32, u32)> = merges
            .iter()
            .map(|c| match c {
                AutoChange::Merge { left, right } => (left.0, right.0),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(pairs, vec![(0, 1), (2, 3), (4, 5), (6, 7)]);
        // A shard that changed shape lately is not merged yet (nor is its neighbour with it).
        let mut loads = loads;
        loads.get_mut(&ShardId(1)).unwrap().changed_secs_ago = 5;
        let merges = plan_auto(&map, &loads, &settings(), 8);
        assert!(merges.iter().all(|c| !matches!(c, AutoChange::Merge { left: ShardId(0) | ShardId(1), .. })));
        assert!(merges.contains(&AutoChange::Merge { left: ShardId(2), right: ShardId(3) }));
    }
}
