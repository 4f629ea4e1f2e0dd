#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
    nodes.iter().copied().collect()
}

/// Spread of replica counts over `live` (max - min).
fn spread(map: &ShardMap, live: &BTreeSet<NodeId>) -> usize {
    let counts = map.replica_counts(live);
    counts.values().max().unwrap() - counts.values().min().unwrap()
}

#[test]
fn initial_layout_splits_buckets_and_spreads_replicas() {
    let map = ShardMap::initial(1024, 4, &[3, 1, 2], 3).unwrap();
    let ranges: Vec<_> = map.shards.iter().map(|s| s.ranges[0]).collect();
    assert_eq!(ranges, vec![(0, 255), (256, 511), (512, 767), (768, 1023)]);
    assert_eq!(map.shards[0].replicas, vec![1, 2, 3]);
    assert_eq!(map.shards[1].replicas, vec![2, 3, 1]);
    assert_eq!(map.shards[3].replicas, vec![1, 2, 3]);
    assert!(map.shards.iter().all(|s| s.epoch == 1));
    assert_eq!(map.shard_for_bucket(0).unwrap().id, ShardId(0));
    assert_eq!(map.shard_for_bucket(511).unwrap().id, ShardId(1));
    assert_eq!(map.shard_for_bucket(1023).unwrap().id, ShardId(3));
    assert!(map.shard_for_bucket(1024).is_none());
    // One replica per shard on a one-node cluster.
    let single = ShardMap::initial(1024, 4, &[7], 1).unwrap();
    assert!(single.shards.iter().all(|s| s.replicas == vec![7]));
}

#[test]
fn initial_layout_refuses_impossible_requests() {
    assert_eq!(
        ShardMap::initial(1024, 4, &[1, 2], 3),
        Err(PlacementError::NotEnoughNodes { replication_factor: 3, nodes: 2 })
    );
    // Duplicated ids are one node.
    assert!(matches!(ShardMap::initial(1024, 4, &[1, 1, 2], 3), Err(PlacementError::NotEnoughNodes { .. })));
    assert_eq!(ShardMap::initial(1024, 4, &[0, 1, 2], 1), Err(PlacementError::ZeroNode));
    assert!(matches!(ShardMap::initial(4, 5, &[1], 1), Err(PlacementError::BadShardCount { .. })));
    assert!(matches!(ShardMap::initial(4, 0, &[1], 1), Err(PlacementError::BadShardCount { .. })));
    assert_eq!(ShardMap::initial(0, 1, &[1], 1), Err(PlacementError::BadTotalBuckets(0)));
    assert_eq!(ShardMap::initial(1024, 1, &[1], 0), Err(PlacementError::BadReplicationFactor(0)));
    let err = ShardMap::initial(1024, 4, &[1, 2], 3).unwrap_err().to_string();
    assert!(err.contains("at least that many nodes"), "{err}");
}

#[test]
fn apply_bumps_epochs_and_refuses_stale_or_bad_moves() {
    let mut map = ShardMap::initial(1024, 2, &[1, 2, 3, 4], 3).unwrap();
    let s0 = map.shards[0].clone();
    assert_eq!(s0.replicas, vec![1, 2, 3]);
    map.check_epoch(ShardId(0), 1).unwrap();
    map.apply(&Move { shard: ShardId(0), epoch: 1, from: 2, to: 4 }).unwrap();
    assert_eq!(map.shards[0].replicas, vec![1, 4, 3]);
    assert_eq!((map.shards[0].epoch, map.shards[1].epoch, map.version), (2, 1, 2));
    assert_eq!(
        map.check_epoch(ShardId(0), 1),
        Err(PlacementError::StaleEpoch { shard: ShardId(0), current: 2, given: 1 })
    );
    // The same move again was planned against epoch 1.
    assert!(matches!(
        map.apply(&Move { shard: ShardId(0), epoch: 1, from: 2, to: 4 }),
        Err(PlacementError::StaleEpoch { .. })
    ));
    let bad = |map: &mut ShardMap, from, to| {
        map.apply(&Move { shard: ShardId(0), epoch: 2, from, to }).unwrap_err()
    };
    assert!(bad(&mut map, 2, 5).to_string().contains("source holds no replica"));
    assert!(bad(&mut map, 1, 3).to_string().contains("already holds a replica"));
    assert_eq!(
        map.apply(&Move { shard: ShardId(9), epoch: 1, from: 1, to: 2 }),
        Err(PlacementError::UnknownShard(ShardId(9)))
    );
    assert_eq!(map.check_epoch(ShardId(9), 1), Err(PlacementError::UnknownShard(ShardId(9))));
    map.validate().unwrap();
    assert_eq!(map.version, 2, "refused moves change nothing");
}

#[test]
fn a_move_begins_then_finishes_at_new_epochs_and_blocks_other_moves_meanwhile() {
    let mut map = ShardMap::initial(1024, 2, &[1, 2, 3, 4], 3).unwrap();
    let planned = Move { shard: ShardId(0), epoch: 1, from: 2, to: 4 };
    let begun = map.begin_move(&planned).unwrap();
    assert_eq!(begun, Move { epoch: 2, ..planned });
    let s0 = map.shard(ShardId(0)).unwrap();
    assert_eq!((s0.replicas.clone(), s0.epoch, s0.moving), (vec![1, 2, 3], 2, Some(begun)));
    map.validate().unwrap();
    // While it is under way, no other move of the shard starts or applies, and planners leave it be.
    let other = Move { shard: ShardId(0), epoch: 2, from: 3, to: 4 };
    assert!(map.begin_move(&other).unwrap_err().to_string().contains("under way"));
    assert!(map.apply(&other).unwrap_err().to_string().contains("under way"));
    assert!(plan_repair(&map, &set(&[1, 3, 4])).moves.iter().all(|m| m.shard != ShardId(0)));
    assert!(plan_rebalance(&map, &set(&[1, 2, 3, 4]), 8).iter().all(|m| m.shard != ShardId(0)));
    assert_eq!(map.moves_under_way(), vec![begun]);
    // Only the move as recorded finishes it.
    assert!(map.finish_move(&planned).unwrap_err().to_string().contains("not the shard's move"));
    map.finish_move(&begun).unwrap();
    let s0 = map.shard(ShardId(0)).unwrap();
    assert_eq!((s0.replicas.clone(), s0.epoch, s0.moving), (vec![1, 4, 3], 3, None));
    assert_eq!(map.version, 3);
    assert!(map.finish_move(&begun).is_err());
    // A move is given up in two steps: asked for (routing unchanged, so no new epoch), then done.
    let second = map.begin_move(&Move { shard: ShardId(1), epoch: 1, from: 2, to: 1 }).unwrap();
    assert!(map.request_abandon(&second).unwrap());
    assert!(!map.request_abandon(&second).unwrap(), "asking twice changes nothing");
    let s1 = map.shard(ShardId(1)).unwrap();
    assert!(s1.abandoning && s1.epoch == 2);
    map.validate().unwrap();
    map.abandon_move(&second).unwrap();
    let s1 = map.shard(ShardId(1)).unwrap();
    assert_eq!((s1.replicas.clone(), s1.epoch, s1.moving, s1.abandoning), (vec![2, 3, 4], 3, None, false));
    assert!(map.abandon_move(&second).is_err(), "given up already");
    // A bad move recorded as under way breaks the map.
    let mut broken = map.clone();
    broken.shards[0].moving = Some(Move { shard: ShardId(0), epoch: 3, from: 2, to: 4 });
    assert!(broken.validate().unwrap_err().to_string().contains("bad move"));
}

#[test]
fn validate_catches_broken_maps() {
    let good = ShardMap::initial(16, 2, &[1, 2, 3], 3).unwrap();
    let broken = |f: &dyn Fn(&mut ShardMap)| {
        let mut m = good.clone();
        f(&mut m);
        m.validate().unwrap_err().to_string()
    };
    assert!(broken(&|m| m.shards[1].ranges = vec![(9, 15)]).contains("expected to start at 8"));
    assert!(broken(&|m| m.shards[1].ranges = vec![(8, 14)]).contains("belong to no shard"));
    assert!(broken(&|m| m.shards[1].replicas = vec![1, 1]).contains("replicas"));
    assert!(broken(&|m| m.shards[1].replicas = vec![]).contains("0 replicas"));
    assert!(broken(&|m| m.shards[1].replicas = vec![1, 2, 3, 4]).contains("4 replicas"));
    assert!(broken(&|m| m.shards[1].epoch = 0).contains("epoch 0"));
    assert!(broken(&|m| m.shards[1].id = ShardId(0)).contains("twice"));
    assert!(broken(&|m| m.shards[1].generation = 0).contains("generation 0"));
    assert!(broken(&|m| m.shards[1].ranges = vec![]).contains("owns no buckets"));
    assert!(broken(&|m| m.shards[1].ranges = vec![(12, 15), (8, 11)]).contains("not in bucket order"));
}

#[test]
fn a_shard_may_own_several_ranges_and_is_found_by_any_of_its_buckets() {
    // Shard 0 owns 0..=3 and 8..=11, shard 1 owns 4..=7 and 12..=15.
    let mut map = ShardMap::initial(16, 2, &[1, 2, 3], 3).unwrap();
    map.shards[0].ranges = vec![(0, 3), (8, 11)];
    map.shards[1].ranges = vec![(4, 7), (12, 15)];
    map.validate().unwrap();
    for bucket in 0..16u16 {
        let want = ShardId(u32::from(bucket / 4 % 2));
        assert_eq!(map.shard_for_bucket(bucket).map(|s| s.id), Some(want), "bucket {bucket}");
    }
    assert_eq!(map.shard_for_bucket(16), None);
    // Two shards may not share a bucket.
    map.shards[1].ranges = vec![(4, 8), (12, 15)];
    assert!(map.validate().is_err());
}

#[test]
fn maps_written_with_one_range_per_shard_still_read() {
    let old = r#"{"total_buckets":16,"replication_factor":1,"version":3,"shards":[
        {"id":0,"buckets":[0,7],"replicas":[1],"epoch":2},
        {"id":1,"buckets":[8,15],"replicas":[1],"epoch":1}]}"#;
    let map: ShardMap = serde_json::from_str(old).unwrap();
    map.validate().unwrap();
    assert_eq!(map.shards[0].ranges, vec![(0, 7)]);
    assert_eq!((map.shards[0].generation, map.shards[0].epoch), (1, 2));
    assert_eq!(map.shard_for_bucket(9).map(|s| s.id), Some(ShardId(1)));
    // Written again, it says `ranges`, and reads back the same.
    let again: ShardMap = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
    assert_eq!(again, map);
}

#[test]
fn a_dead_nodes_replicas_go_to_the_least_loaded_live_nodes() {
    let map = ShardMap::initial(1024, 6, &[1, 2, 3, 4], 3).unwrap();
    let live = set(&[1, 2, 4]);
    let plan = plan_repair(&map, &live);
    let lost = map.shards.iter().filter(|s| s.replicas.contains(&3)).count();
    assert_eq!(plan.moves.len(), lost);
    assert!(plan.under_replicated.is_empty());
    let mut after = map.clone();
    for mv in &plan.moves {
        assert_eq!(mv.from, 3);
        after.apply(mv).unwrap();
    }
    after.validate().unwrap();
    assert!(after.shards.iter().all(|s| s.replicas.iter().all(|r| live.contains(r))));
    assert!(spread(&after, &live) <= 1);
    // Only three nodes for three replicas and one of them dead: nothing can take the lost replicas.
    let small = ShardMap::initial(1024, 2, &[1, 2, 3], 3).unwrap();
    let plan = plan_repair(&small, &set(&[1, 2]));
    assert!(plan.moves.is_empty());
    assert_eq!(plan.under_replicated, vec![ShardId(0), ShardId(1)]);
}

#[test]
fn a_joining_node_receives_replicas_until_balanced() {
    let mut map = ShardMap::initial(1024, 8, &[1, 2, 3], 3).unwrap();
    let live = set(&[1, 2, 3, 4]);
    let mut rounds = 0;
    loop {
        let moves = plan_rebalance(&map, &live, 2);
        if moves.is_empty() {
            break;
        }
        assert!(moves.len() <= 2);
        for mv in &moves {
            assert_eq!(mv.to, 4);
            map.apply(mv).unwrap();
        }
        rounds += 1;
        assert!(rounds < 20, "rebalancing does not converge");
    }
    map.validate().unwrap();
    assert!(spread(&map, &live) <= 1);
    assert_eq!(map.replica_counts(&live)[&4], 6, "24 replicas over 4 nodes");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// From any initial layout, through random node deaths, returns and joins, repair then rebalance
    /// keep the map valid, never put two replicas of a shard on one node, restore the replication
    /// factor whenever enough nodes live, leave replicas only on live nodes, even out the load to
    /// within one replica, and bump exactly the moved shards' epochs.
    #[test]
    fn placement_invariants_hold_through_failures_and_joins(
        nodes in 1usize..=7,
        shards in 1usize..=12,
        rf_pick in 0usize..3,
        events in proptest::collection::vec((0u8..3, 1u64..=9), 0..12),
    ) {
        let rf = [1, 3, 5][rf_pick].min(nodes);
        let initial: Vec<NodeId> = (1..=nodes as u64).collect();
        let mut map = ShardMap::initial(1024, shards, &initial, rf).unwrap();
        let mut live: BTreeSet<NodeId> = initial.iter().copied().collect();
        for (kind, node) in events {
            match kind {
                0 => { live.remove(&node); }
                _ => { live.insert(node); }
            }
            if live.is_empty() {
                live.insert(node);
            }
            let before = map.clone();
            let plan = plan_repair(&map, &live);
            prop_assert_eq!(&plan, &plan_repair(&map, &live), "planning is deterministic");
            for mv in &plan.moves {
                prop_assert!(live.contains(&mv.to));
                map.apply(mv).unwrap();
            }
            for _ in 0..50 {
                let moves = plan_rebalance(&map, &live, 4);
                if moves.is_empty() { break; }
                for mv in &moves { map.apply(mv).unwrap(); }
            }
            map.validate().unwrap();
            for s in &map.shards {
                prop_assert_eq!(s.replicas.len(), rf);
                let on_live = s.replicas.iter().filter(|r| live.contains(r)).count();
                prop_assert_eq!(on_live, rf.min(live.len()), "shard {} replicas {:?} live {:?}", s.id, s.replicas, live);
                let old = before.shard(s.id).unwrap();
                let changed = old.replicas.iter().filter(|r| !s.replicas.contains(r)).count() as u64;
                prop_assert!(s.epoch >= old.epoch + changed);
                prop_assert_eq!(s.epoch == old.epoch, s.replicas == old.replicas);
            }
            if live.len() >= rf {
                prop_assert!(plan.under_replicated.is_empty());
                prop_assert!(spread(&map, &live) <= 1, "counts {:?}", map.replica_counts(&live));
            }
        }
    }
}

#[test]
fn ranges_cut_at_a_bucket() {
    let ranges = [(0, 3), (8, 11), (20, 20)];
    assert_eq!(split_ranges(&ranges, 10), (vec![(0, 3), (8, 9)], vec![(10, 11), (20, 20)]));
    assert_eq!(split_ranges(&ranges, 8), (vec![(0, 3)], vec![(8, 11), (20, 20)]));
    assert_eq!(split_ranges(&ranges, 5), (vec![(0, 3)], vec![(8, 11), (20, 20)]));
    assert_eq!(split_ranges(&ranges, 20), (vec![(0, 3), (8, 11)], vec![(20, 20)]));
}

#[test]
fn merged_ranges_join_neighbours() {
    assert_eq!(merge_ranges(&[(0, 127)], &[(128, 255)]), vec![(0, 255)]);
    assert_eq!(merge_ranges(&[(0, 3), (8, 9)], &[(10, 11), (20, 20)]), vec![(0, 3), (8, 11), (20, 20)]);
    assert_eq!(merge_ranges(&[(5, 6)], &[(0, 3)]), vec![(0, 3), (5, 6)]);
}

#[test]
fn a_merge_waits_for_colocation_then_joins_the_buckets_at_new_epochs() {
    let mut map = ShardMap::initial(1024, 4, &[1, 2, 3, 4], 3).unwrap();
    let (left, right) = (ShardId(0), ShardId(1));
    map.shards[1].replicas = vec![2, 3, 4];
    map.shards[0].replicas = vec![1, 2, 3];
    // Refused: not neighbours, itself, unknown.
    assert!(matches!(map.begin_merge(left, ShardId(2)), Err(PlacementError::BadMerge { .. })));
    assert!(matches!(map.begin_merge(right, left), Err(PlacementError::BadMerge { .. })));
    assert!(matches!(map.begin_merge(left, left), Err(PlacementError::BadMerge { .. })));
    assert_eq!(map.begin_merge(left, ShardId(9)), Err(PlacementError::UnknownShard(ShardId(9))));
    assert!(map.begin_merge(left, right).unwrap());
    assert!(!map.begin_merge(left, right).unwrap(), "the same merge again changes nothing");
    map.validate().unwrap();
    assert!(map.in_merge(left) && map.in_merge(right) && !map.in_merge(ShardId(2)));
    assert_eq!(map.merging_into(right).unwrap().id, left);
    // Either shard is now out of other merges and splits, and out of rebalancing.
    assert!(matches!(map.begin_merge(right, ShardId(2)), Err(PlacementError::BadMerge { .. })));
    assert!(matches!(map.begin_split(left, 100, ShardId(7)), Err(PlacementError::BadSplit { .. })));
    let live = set(&[1, 2, 3, 4, 5]);
    assert!(plan_rebalance(&map, &live, 4).iter().all(|m| m.shard != left && m.shard != right));
    // Not co-located: refused to finish; the plan moves the right-hand shard's replica from 4 to 1.
    assert!(!map.colocated(left));
    assert!(matches!(map.finish_merge(left), Err(PlacementError::BadMerge { .. })));
    let moves = plan_colocation(&map);
    assert_eq!(moves, vec![Move { shard: right, epoch: 1, from: 4, to: 1 }]);
    let begun = map.begin_move(&moves[0]).unwrap();
    assert!(plan_colocation(&map).is_empty(), "one move at a time");
    assert!(!map.colocated(left));
    map.finish_move(&begun).unwrap();
    assert!(map.colocated(left));
    assert!(plan_colocation(&map).is_empty());
    assert_eq!(map.finish_merge(left).unwrap(), right);
    map.validate().unwrap();
    assert_eq!(map.shards.len(), 3);
    let l = map.shard(left).unwrap();
    assert_eq!((l.ranges.clone(), l.epoch, l.generation, l.merging), (vec![(0, 511)], 2, 2, None));
    assert!(map.shard(right).is_none());
    assert_eq!(map.shard_for_bucket(300).unwrap().id, left);
    assert!(matches!(map.finish_merge(left), Err(PlacementError::BadMerge { .. })));
}

#[test]
fn validate_catches_broken_merges() {
    let mut map = ShardMap::initial(1024, 4, &[1, 2, 3], 3).unwrap();
    map.shards[0].merging = Some(ShardId(2));
    assert!(matches!(map.validate(), Err(PlacementError::Invalid(_))));
    map.shards[0].merging = Some(ShardId(9));
    assert!(matches!(map.validate(), Err(PlacementError::Invalid(_))));
    map.shards[0].merging = Some(ShardId(1));
    map.shards[1].merging = Some(ShardId(2));
    assert!(matches!(map.validate(), Err(PlacementError::Invalid(_))));
    map.shards[1].merging = None;
    map.validate().unwrap();
}
