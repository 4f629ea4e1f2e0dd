//! The meta state's transitions, without nodes: joins and their retries, refusals, the initial
//! placement, moves, removals, and the stored encoding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::placement::ShardId;
use proptest::prelude::*;

fn settings(rf: usize, shards: usize) -> ClusterSettings {
    ClusterSettings {
        replication_factor: rf,
        shards,
        total_buckets: 64,
        dead_after_secs: 30,
        rebalance: true,
        max_clock_offset_ms: 500,
        reshape: Default::default(),
        gc_ttl_secs: crate::meta::DEFAULT_GC_TTL_SECS,
        gc_ttl_before_secs: 0,
        gc_ttl_raised_ms: 0,
        backup_rate_bytes: crate::meta::DEFAULT_BACKUP_RATE_BYTES,
    }
}

fn request(token: &str, port: u16) -> JoinRequest {
    JoinRequest {
        cluster_id: "c1".into(),
        token: token.into(),
        grpc_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("127.0.0.1:{}", port + 1),
    }
}

/// `n` nodes joined in order (tokens t1.., ports 1000, 1010, ...).
fn cluster(n: u16, rf: usize) -> ClusterState {
    let mut s = ClusterState::new("c1", settings(rf, 4)).unwrap();
    for i in 1..=n {
        let (next, id) = s.join(&request(&format!("t{i}"), 1000 + 10 * i)).unwrap();
        assert_eq!(id, u64::from(i));
        s = next.unwrap();
    }
    s
}

#[test]
fn new_refuses_bad_ids_and_settings() {
    for id in ["", "a\nb", &"x".repeat(MAX_CLUSTER_ID_BYTES + 1)] {
        assert!(matches!(ClusterState::new(id, settings(3, 4)), Err(MetaError::Invalid(_))), "{id:?}");
    }
    assert!(matches!(
        ClusterState::new("c", settings(0, 4)),
        Err(MetaError::Placement(PlacementError::BadReplicationFactor(0)))
    ));
    assert!(matches!(
        ClusterState::new("c", settings(3, 65)),
        Err(MetaError::Placement(PlacementError::BadShardCount { .. }))
    ));
}

#[test]
fn joins_get_new_ids_and_retries_the_same_one() {
    let s = cluster(3, 3);
    assert_eq!(s.next_node_id, 4);
    assert_eq!(s.version, 4);
    // The same token and addresses: unchanged, same id.
    assert_eq!(s.join(&request("t2", 1020)).unwrap(), (None, 2));
    // The same token from new addresses (a restart elsewhere): same id, addresses updated.
    let (next, id) = s.join(&request("t2", 2000)).unwrap();
    assert_eq!(id, 2);
    let next = next.unwrap();
    assert_eq!(next.nodes[&2].grpc_addr, "127.0.0.1:2000");
    assert_eq!(next.next_node_id, 4);
}

#[test]
fn joins_with_a_wrong_cluster_a_taken_address_or_bad_text_are_refused() {
    let s = cluster(2, 1);
    let mut wrong = request("t9", 5000);
    wrong.cluster_id = "other".into();
    assert_eq!(
        s.join(&wrong).unwrap_err(),
        MetaError::WrongCluster { expected: "c1".into(), given: "other".into() }
    );
    // Node 1's gRPC address, and node 2's HTTP address as a gRPC address.
    assert_eq!(
        s.join(&request("t9", 1010)).unwrap_err(),
        MetaError::DuplicateAddress { addr: "127.0.0.1:1010".into(), node: 1 }
    );
    assert_eq!(
        s.join(&request("t9", 1021)).unwrap_err(),
        MetaError::DuplicateAddress { addr: "127.0.0.1:1021".into(), node: 2 }
    );
    let mut same = request("t9", 5000);
    same.http_addr = same.grpc_addr.clone();
    assert!(matches!(s.join(&same), Err(MetaError::Invalid(_))));
    for bad in ["", "x\ty"] {
        let mut r = request("t9", 5000);
        r.grpc_addr = bad.into();
        assert!(matches!(s.join(&r), Err(MetaError::Invalid(_))), "{bad:?}");
    }
    let mut r = request("", 5000);
    r.token = String::new();
    assert!(matches!(s.join(&r), Err(MetaError::Invalid(_))));
}

#[test]
fn initial_placement_needs_enough_nodes_and_happens_once() {
    let two = cluster(2, 3);
    assert_eq!(
        two.place_initial().unwrap_err(),
        MetaError::Placement(PlacementError::NotEnoughNodes { replication_factor: 3, nodes: 2 })
    );
    let s = cluster(3, 3).place_initial().unwrap();
    let map = s.map.as_ref().unwrap();
    assert_eq!(map.shards.len(), 4);
    assert!(map.shards.iter().all(|sh| sh.replicas.len() == 3));
    assert_eq!(s.place_initial().unwrap_err(), MetaError::AlreadyPlaced);
    s.validate().unwrap();
}

#[test]
fn moves_bump_epochs_and_go_only_to_active_nodes() {
    let s = cluster(4, 3).place_initial().unwrap();
    let shard = s.map.as_ref().unwrap().shards.iter().find(|sh| !sh.replicas.contains(&4)).unwrap().clone();
    let mv = Move { shard: shard.id, epoch: shard.epoch, from: shard.replicas[0], to: 4 };
    assert_eq!(s.apply_move(&Move { to: 9, ..mv }).unwrap_err(), MetaError::UnknownNode(9));
    let moved = s.apply_move(&mv).unwrap();
    let after = moved.map.as_ref().unwrap().shard(shard.id).unwrap();
    assert_eq!(after.epoch, shard.epoch + 1);
    assert!(after.replicas.contains(&4) && !after.replicas.contains(&mv.from));
    // Re-running the same move is stale.
    assert!(matches!(moved.apply_move(&mv), Err(MetaError::Placement(PlacementError::StaleEpoch { .. }))));
    assert_eq!(cluster(3, 3).apply_move(&mv).unwrap_err(), MetaError::NotInitialized);
}

#[test]
fn a_begun_move_holds_its_destination_until_it_finishes() {
    let s = cluster(4, 3).place_initial().unwrap();
    let shard = s.map.as_ref().unwrap().shards.iter().find(|sh| !sh.replicas.contains(&4)).unwrap().clone();
    let planned = Move { shard: shard.id, epoch: shard.epoch, from: shard.replicas[0], to: 4 };
    assert_eq!(s.begin_move(&Move { to: 9, ..planned }).unwrap_err(), MetaError::UnknownNode(9));
    let (begun_state, begun) = s.begin_move(&planned).unwrap();
    begun_state.validate().unwrap();
    assert_eq!(begun_state.version, s.version + 1);
    // The destination holds (part of) a replica: it cannot be removed.
    assert!(matches!(begun_state.remove_node(4), Err(MetaError::Invalid(_))));
    let done = begun_state.finish_move(&begun).unwrap().unwrap();
    let after = done.map.as_ref().unwrap().shard(shard.id).unwrap();
    assert!(after.replicas.contains(&4) && after.moving.is_none());
    assert_eq!(after.epoch, shard.epoch + 2);
    // Finishing again (a retry whose first attempt applied) changes nothing, nor does giving it up.
    assert_eq!(done.finish_move(&begun).unwrap(), None);
    assert_eq!(done.request_abandon(&begun).unwrap(), None);
    assert_eq!(done.abandon_move(&begun).unwrap(), None);
    // Given up instead: the shard keeps its replicas.
    let asked = begun_state.request_abandon(&begun).unwrap().unwrap();
    assert_eq!(asked.request_abandon(&begun).unwrap(), None);
    let given_up = asked.abandon_move(&begun).unwrap().unwrap();
    let kept = given_up.map.as_ref().unwrap().shard(shard.id).unwrap();
    assert_eq!((&kept.replicas, kept.moving, kept.epoch), (&shard.replicas, None, shard.epoch + 2));
    assert!(done.validate().is_ok());
}

#[test]
fn removal_needs_an_empty_node_and_its_id_is_never_given_again() {
    let s = cluster(4, 3).place_initial().unwrap();
    assert!(matches!(s.remove_node(1), Err(MetaError::Invalid(_))));
    assert_eq!(s.remove_node(7).unwrap_err(), MetaError::UnknownNode(7));
    // Move every replica off node 1 onto node 4 (or another free node), then remove it.
    let mut s = s;
    for shard in s.map.clone().unwrap().shards {
        if shard.replicas.contains(&1) {
            let to = (2..=4).find(|n| !shard.replicas.contains(n)).unwrap();
            s = s.apply_move(&Move { shard: shard.id, epoch: shard.epoch, from: 1, to }).unwrap();
        }
    }
    let removed = s.remove_node(1).unwrap().unwrap();
    assert_eq!(removed.nodes[&1].state, NodeState::Removed);
    assert_eq!(removed.remove_node(1).unwrap(), None);
    // The removed node cannot come back with its token; its address is free for a new node, new id.
    assert_eq!(removed.join(&request("t1", 1010)).unwrap_err(), MetaError::NodeRemoved(1));
    assert_eq!(removed.join(&request("fresh", 1010)).unwrap().1, 5);
    let target =
        Move { shard: ShardId(0), epoch: removed.map.as_ref().unwrap().shards[0].epoch, from: 2, to: 1 };
    assert!(matches!(removed.apply_move(&target), Err(MetaError::NodeRemoved(1))));
}

#[test]
fn the_stored_form_round_trips_and_bad_bytes_are_corruption() {
    let s = cluster(3, 3).place_initial().unwrap();
    assert_eq!(ClusterState::decode(&s.encode().unwrap()).unwrap(), s);
    assert!(matches!(ClusterState::decode(b"{not json"), Err(MetaError::Corrupt(_))));
    // A map placing a replica on a node the state does not know.
    let mut bad = s.clone();
    bad.nodes.remove(&3);
    assert!(matches!(ClusterState::decode(&bad.encode().unwrap()), Err(MetaError::Corrupt(_))));
    let mut bad = s;
    bad.next_node_id = 2;
    assert!(matches!(ClusterState::decode(&bad.encode().unwrap()), Err(MetaError::Corrupt(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random joins, retries and removals: ids are unique, increasing and never reused, a token keeps
    /// its id, active nodes never share an address, and every state validates.
    #[test]
    fn ids_are_never_reused(ops in prop::collection::vec((0u8..3, 0u16..6, 0u16..6), 1..40)) {
        let mut s = ClusterState::new("c1", settings(1, 1)).unwrap();
        let mut given: BTreeMap<String, NodeId> = BTreeMap::new();
        for (op, token, port) in ops {
            let token = format!("t{token}");
            match op {
                0 | 1 => match s.join(&request(&token, 1000 + 10 * port)) {
                    Ok((next, id)) => {
                        if let Some(&old) = given.get(&token) {
                            prop_assert_eq!(old, id);
                        } else {
                            prop_assert!(given.values().all(|&g| g < id));
                            given.insert(token, id);
                        }
                        if let Some(next) = next {
                            prop_assert_eq!(next.version, s.version + 1);
                            s = next;
                        }
                    }
                    Err(MetaError::DuplicateAddress { .. } | MetaError::NodeRemoved(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                },
                _ => {
                    if let Some(next) = given.get(&token).and_then(|&id| s.remove_node(id).unwrap()) {
                        s = next;
                    }
                }
            }
            s.validate().unwrap();
            let active: Vec<&NodeRecord> = s.nodes.values().filter(|n| n.state == NodeState::Active).collect();
            let mut addrs: Vec<&str> = active.iter().flat_map(|n| [n.grpc_addr.as_str(), n.http_addr.as_str()]).collect();
            addrs.sort_unstable();
            let before = addrs.len();
            addrs.dedup();
            prop_assert_eq!(before, addrs.len());
        }
    }
}

#[test]
fn a_split_takes_a_new_id_then_cuts_the_shard_in_two() {
    let placed = cluster(3, 3).place_initial().unwrap();
    let shard = &placed.map.as_ref().unwrap().shards[1];
    assert_eq!(shard.ranges, vec![(16, 31)]);
    // Refused: the shard's first bucket, a bucket it does not own, an unknown shard.
    for at in [16, 40] {
        let e = placed.begin_split(shard.id, at).unwrap_err();
        assert!(matches!(e, MetaError::Placement(PlacementError::BadSplit { .. })), "{e}");
    }
    assert!(placed.begin_split(ShardId(9), 20).is_err());

    let (begun, new) = placed.begin_split(shard.id, 24).unwrap();
    let begun = begun.unwrap();
    assert_eq!((new, begun.next_shard_id), (ShardId(4), 5));
    let s = begun.map.as_ref().unwrap().shard(shard.id).unwrap();
    assert_eq!((s.ranges.clone(), s.epoch), (vec![(16, 31)], shard.epoch), "routing is unchanged so far");
    // The same split again is no change; another split of the shard is refused, and so is a move.
    assert_eq!(begun.begin_split(shard.id, 24).unwrap(), (None, ShardId(4)));
    assert!(begun.begin_split(shard.id, 20).is_err());
    let mv = Move { shard: shard.id, epoch: shard.epoch, from: shard.replicas[0], to: 9 };
    let mut map = begun.map.clone().unwrap();
    assert!(map.begin_move(&mv).is_err());

    let done = begun.finish_split(shard.id).unwrap().unwrap();
    done.validate().unwrap();
    let map = done.map.as_ref().unwrap();
    let (old, new) = (map.shard(shard.id).unwrap(), map.shard(ShardId(4)).unwrap());
    assert_eq!((old.ranges.clone(), old.epoch, old.generation), (vec![(16, 23)], shard.epoch + 1, 2));
    assert_eq!(
        (new.ranges.clone(), new.epoch, new.replicas.clone()),
        (vec![(24, 31)], 1, shard.replicas.clone())
    );
    assert_eq!(map.shards.iter().map(|s| s.id.0).collect::<Vec<_>>(), vec![0, 1, 4, 2, 3], "in bucket order");
    assert_eq!(map.version, done.version);
    assert_eq!(done.finish_split(shard.id).unwrap(), None, "a retry after it was made");
    // The next split gets the next id; ids are never reused.
    let (again, id) = done.begin_split(ShardId(4), 28).unwrap();
    assert_eq!((id, again.unwrap().next_shard_id), (ShardId(5), 6));
    // Stored and read back through the meta rows, the split and the id counter survive.
    let rows = rows::rows_of(&begun, &rows::Rows::new()).unwrap();
    assert_eq!(rows::state_of(&rows).unwrap().as_ref(), Some(&begun));
    // A state whose counter is behind its shards is corrupt.
    let mut behind = done.clone();
    behind.next_shard_id = 3;
    assert!(matches!(behind.validate(), Err(MetaError::Corrupt(_))));
}

#[test]
fn a_merge_is_recorded_then_joins_two_shards_and_drops_the_right_ones_row() {
    let placed = cluster(3, 3).place_initial().unwrap();
    let (left, right) = (ShardId(1), ShardId(2));
    let e = placed.begin_merge(left, ShardId(3)).unwrap_err();
    assert!(matches!(e, MetaError::Placement(PlacementError::BadMerge { .. })), "{e}");
    let begun = placed.begin_merge(left, right).unwrap().unwrap();
    begun.validate().unwrap();
    assert_eq!(begun.begin_merge(left, right).unwrap(), None, "the same merge again is no change");
    assert_eq!(placed.finish_merge(left, right).unwrap(), None, "no merge under way");
    // The initial placement spreads replicas over the same three nodes: co-located already.
    assert!(begun.map.as_ref().unwrap().colocated(left));
    let done = begun.finish_merge(left, right).unwrap().unwrap();
    done.validate().unwrap();
    let map = done.map.as_ref().unwrap();
    assert_eq!(map.shards.iter().map(|s| s.id.0).collect::<Vec<_>>(), vec![0, 1, 3]);
    assert_eq!(map.shard(left).unwrap().ranges, vec![(16, 47)]);
    assert_eq!(done.finish_merge(left, right).unwrap(), None, "a retry after it was made");
    // Through the meta rows: the right-hand shard's row goes, the rest reads back.
    let before = rows::rows_of(&begun, &rows::Rows::new()).unwrap();
    let after = rows::rows_of(&done, &before).unwrap();
    assert_eq!(before.len(), after.len() + 1);
    assert_eq!(rows::state_of(&after).unwrap().as_ref(), Some(&done));
    // A merged-away id is never given out again.
    let (_, next) = done.begin_split(left, 30).unwrap();
    assert_eq!(next, ShardId(4));
}

#[test]
fn settings_change_by_name_with_their_values_checked() {
    let state = ClusterState::new("c", settings(3, 4)).unwrap();
    let next = state.set_setting("split_size", "64MiB").unwrap().unwrap();
    assert_eq!(next.settings.reshape.split_size_bytes, 64 << 20);
    assert!(next.version > state.version);
    assert!(next.set_setting("split_size", "64M").unwrap().is_none(), "the same value changes nothing");
    let next = next.set_setting("auto_merge", "off").unwrap().unwrap();
    assert!(!next.settings.reshape.auto_merge);
    let next = next.set_setting("split_qps", "0").unwrap().unwrap();
    assert_eq!(next.settings.reshape.split_qps, 0);
    assert!(!next.set_setting("rebalance", "false").unwrap().unwrap().settings.rebalance);
    assert_eq!(next.settings.backup_rate_bytes, crate::meta::DEFAULT_BACKUP_RATE_BYTES);
    let paced = next.set_setting("backup_rate", "2MiB").unwrap().unwrap();
    assert_eq!(paced.settings.backup_rate_bytes, 2 << 20);
    assert_eq!(paced.set_setting("backup_rate", "0").unwrap().unwrap().settings.backup_rate_bytes, 0);
    for (name, value) in [
        ("backup_rate", "1KiB"),
        ("backup_rate", "fast"),
        ("split_size", "12 apples"),
        ("split_size", "100"),
        ("split_load_secs", "0"),
        ("auto_merge", "maybe"),
        ("dead_after_secs", "-1"),
        ("total_buckets", "2048"),
    ] {
        assert!(matches!(next.set_setting(name, value), Err(MetaError::Invalid(_))), "{name}={value}");
    }
}
