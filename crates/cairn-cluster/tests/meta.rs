//! The meta group as a real replicated group: three in-process replicas of [`META_GROUP`] over an
//! in-memory network, changed through [`MetaStore`] from every node. Bootstrap happens once; concurrent
//! joins from all nodes get distinct ids and none is lost; a retried join keeps its id; bad joins are
//! refused with their reasons; every replica reads the same state; the group keeps working with its
//! leader down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_cluster::meta::{
    ClusterSettings, ClusterState, JoinRequest, META_BUCKET, META_GROUP, META_TOTAL_BUCKETS, MetaError,
    MetaStore,
};
use cairn_cluster::placement::Move;
use cairn_cluster::raft::{RaftService, ReadLevel, Replica, ShardStateMachine};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::Config;
use cairn_engine::fs::{FileSystem, MemFs};
use common::{Net, replica_config};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn start(fs: &Arc<MemFs>, net: &Net, node: u64) -> MetaStore {
    let dyn_fs = Arc::clone(fs) as Arc<dyn FileSystem>;
    let log =
        Arc::new(RaftLog::open(RaftLogConfig::new(format!("/n{node}/raft"), Arc::clone(&dyn_fs))).unwrap());
    let mut template = Config::new(format!("/n{node}/meta"));
    template.fs = dyn_fs;
    template.wal = false;
    template.total_buckets = META_TOTAL_BUCKETS;
    template.snapshot_volume = Some("memory://meta-test".into());
    let ranges = vec![META_BUCKET..=META_BUCKET];
    let sm = ShardStateMachine::open(format!("/n{node}/meta").into(), template, ranges, META_BUCKET).unwrap();
    let replica = Replica::start(node, META_GROUP, log, sm, net.clone(), replica_config(10)).await.unwrap();
    let service = RaftService::default();
    service.register_replica_sharing_volume(&replica);
    net.0.lock().insert(format!("n{node}"), service);
    let tended = replica.clone();
    tokio::spawn(async move { tended.tend().await });
    MetaStore::new(replica, TIMEOUT)
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        replication_factor: 3,
        shards: 8,
        total_buckets: 1024,
        dead_after_secs: 30,
        rebalance: true,
        max_clock_offset_ms: 500,
        reshape: Default::default(),
        gc_ttl_secs: cairn_cluster::meta::DEFAULT_GC_TTL_SECS,
        gc_ttl_before_secs: 0,
        gc_ttl_raised_ms: 0,
        backup_rate_bytes: cairn_cluster::meta::DEFAULT_BACKUP_RATE_BYTES,
    }
}

fn join(token: &str, port: u32) -> JoinRequest {
    JoinRequest {
        cluster_id: "test-cluster".into(),
        token: token.into(),
        grpc_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("127.0.0.1:{}", port + 1),
    }
}

/// Retries `read` until the group has a leader (the first election takes a few hundred ms).
async fn first_read(store: &MetaStore) -> Result<ClusterState, MetaError> {
    for _ in 0..100 {
        match store.read(ReadLevel::Strong).await {
            Err(MetaError::Group(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other,
        }
    }
    panic!("the meta group elected no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_every_node_serialise_and_survive_the_leader() {
    let (fs, net) = (Arc::new(MemFs::new()), Net::default());
    let mut stores = Vec::new();
    for node in 1..=3 {
        stores.push(start(&fs, &net, node).await);
    }
    let members: BTreeMap<u64, String> = (1..=3).map(|n| (n, format!("n{n}"))).collect();
    stores[0].replica().bootstrap(members).await.unwrap();
    assert_eq!(first_read(&stores[1]).await.unwrap_err(), MetaError::NotInitialized);

    // Bootstrap through a follower or the leader alike; once only.
    let initial = ClusterState::new("test-cluster", settings()).unwrap();
    assert_eq!(stores[2].bootstrap(&initial).await.unwrap(), initial);
    assert_eq!(stores[1].bootstrap(&initial).await.unwrap(), initial, "a retry finds its own state");
    let other = ClusterState::new("other", settings()).unwrap();
    assert_eq!(
        stores[0].bootstrap(&other).await.unwrap_err(),
        MetaError::AlreadyInitialized("test-cluster".into())
    );

    // Twelve joins at once, four through each node: twelve distinct ids, none lost.
    let joins = (0..12u32).map(|i| {
        let store = stores[i as usize % 3].clone();
        async move {
            store.update(|s| s.join(&join(&format!("tok{i}"), 7000 + 10 * i))).await.map(|(_, id)| (i, id))
        }
    });
    let ids: BTreeMap<u32, u64> =
        futures_util::future::join_all(joins).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.values().copied().collect::<BTreeSet<_>>(), (1..=12).collect::<BTreeSet<_>>());
    let state = stores[0].read(ReadLevel::Strong).await.unwrap();
    assert_eq!((state.version, state.next_node_id, state.nodes.len()), (13, 13, 12));
    for (i, id) in &ids {
        assert_eq!(state.nodes[id].token, format!("tok{i}"));
    }

    // A retried join keeps its id and changes nothing; bad joins are refused with their reasons.
    let (after, id) = stores[1].update(|s| s.join(&join("tok5", 7050))).await.unwrap();
    assert_eq!((id, after.version), (ids[&5], 13));
    let mut wrong = join("new", 9000);
    wrong.cluster_id = "elsewhere".into();
    assert!(matches!(stores[2].update(|s| s.join(&wrong)).await, Err(MetaError::WrongCluster { .. })));
    assert!(matches!(
        stores[2].update(|s| s.join(&join("new", 7030))).await,
        Err(MetaError::DuplicateAddress { node, .. }) if node == ids[&3]
    ));

    // The initial placement, then every replica reads the same state.
    let (placed, ()) = stores[2].update(|s| Ok((Some(s.place_initial()?), ()))).await.unwrap();
    assert_eq!(placed.map.as_ref().unwrap().shards.len(), 8);
    for store in &stores {
        assert_eq!(store.read(ReadLevel::Strong).await.unwrap(), placed);
    }

    // Moves of two shards at once, through two nodes (rows of different shards: neither conditions on
    // the other's, as `meta_rows`' unit tests show): both land. Every node's replica sees the change
    // (its applied index moves past what it had seen).
    let seen = stores[1].changed(None, TIMEOUT).await;
    let map = placed.map.as_ref().unwrap();
    let moves: Vec<Move> = map.shards[..2]
        .iter()
        .map(|s| {
            let to = *ids.values().find(|n| !s.replicas.contains(n)).unwrap();
            Move { shard: s.id, epoch: s.epoch, from: s.replicas[0], to }
        })
        .collect();
    let begun = moves.iter().enumerate().map(|(i, mv)| {
        let store = stores[i].clone();
        async move { store.update(|s| s.begin_move(mv).map(|(next, _)| (Some(next), ()))).await }
    });
    for result in futures_util::future::join_all(begun).await {
        result.unwrap();
    }
    assert!(stores[1].changed(seen, TIMEOUT).await > seen);
    let moved = stores[1].read(ReadLevel::Strong).await.unwrap();
    let moved_map = moved.map.as_ref().unwrap();
    for mv in &moves {
        assert_eq!(moved_map.shard(mv.shard).unwrap().moving.map(|m| m.to), Some(mv.to));
    }
    assert!(moved.version > placed.version && moved_map.version == moved.version);

    // The leader goes down (its replica stops, the network loses it): the others elect another and go on.
    let leader = stores[0].replica().status().leader.map(cairn_cluster::raft::node_of).unwrap();
    let down = &stores[leader as usize - 1];
    net.0.lock().remove(&format!("n{leader}"));
    down.replica().shutdown().await.unwrap();
    let alive: Vec<&MetaStore> = stores.iter().filter(|s| s.replica().id() != leader).collect();
    let mut joined = None;
    for _ in 0..100 {
        match alive[0].update(|s| s.join(&join("late", 8500))).await {
            Ok((_, id)) => {
                joined = Some(id);
                break;
            }
            Err(MetaError::Group(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(joined, Some(13), "ids continue after the failover");
    assert_eq!(alive[1].read(ReadLevel::Strong).await.unwrap().nodes.len(), 13);
    for store in alive {
        store.replica().shutdown().await.unwrap();
    }
}
