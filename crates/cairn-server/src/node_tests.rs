//! Node tests: versions, conditions, limits and scans on a standalone node; compaction-driven GC.

use super::*;
use crate::replicated::ReplicationConfig;
use std::path::Path;

fn node(dir: &Path) -> Node {
    let mut c = NodeConfig::new(dir);
    c.sync = false;
    c.max_value_bytes = 100;
    Node::open(c).unwrap()
}

#[test]
fn versions_conditions_limits_and_scans() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path());
    let t1 = n.put(b"a", b"1", Condition::None).unwrap();
    let t2 = n.put(b"a", b"2", Condition::IfTimestamp(t1)).unwrap();
    assert!(t2 > t1);
    assert_eq!(n.get(b"a", Some(t1)).unwrap().unwrap().value, b"1");
    assert_eq!(n.get(b"a", None).unwrap().unwrap().value, b"2");
    assert!(matches!(n.put(b"a", b"3", Condition::IfAbsent), Err(NodeError::Precondition(_))));
    assert!(matches!(n.put(b"a", b"3", Condition::IfTimestamp(t1)), Err(NodeError::Precondition(_))));
    let t3 = n.delete(b"a").unwrap().unwrap();
    assert_eq!(n.get(b"a", None).unwrap(), None);
    assert_eq!(n.get(b"a", Some(t2)).unwrap().unwrap().value, b"2");
    assert_eq!(n.delete(b"a").unwrap(), None);
    assert!(n.put(b"a", b"4", Condition::IfAbsent).unwrap() > t3);
    assert!(matches!(
        n.put(&vec![1u8; DEFAULT_MAX_KEY_BYTES + 1], b"v", Condition::None),
        Err(NodeError::TooLarge(_))
    ));
    assert!(matches!(n.put(&vec![0u8; 40_000], b"v", Condition::None), Err(NodeError::TooLarge(_))));
    assert!(matches!(n.put(b"k", &[0u8; 101], Condition::None), Err(NodeError::TooLarge(_))));
    for i in 0..300u32 {
        n.put(format!("s{i:03}").as_bytes(), &i.to_be_bytes(), Condition::None).unwrap();
    }
    let rows = n.scan(b"s100", Some(b"s200"), 1000, None).unwrap().rows;
    assert_eq!(rows.len(), 100);
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(rows[0].0, b"s100");
    let page = n.scan(b"s", None, 7, None).unwrap();
    assert_eq!((page.rows.len(), page.resume.as_deref()), (7, Some(&b"s007"[..])));
    assert!(matches!(n.scan(b"b", Some(b"a"), 10, None), Err(NodeError::InvalidArgument(_))));
    assert!(matches!(n.scan(b"", None, MAX_SCAN_LIMIT + 1, None), Err(NodeError::InvalidArgument(_))));
    let old = Timestamp { wall_time: 1, logical: 0 };
    assert!(matches!(n.get(b"a", Some(old)), Err(NodeError::InvalidArgument(_))));
}

#[test]
fn concurrent_conditional_writes_are_serialized_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path());
    // Exactly one of many racing put-if-absent calls wins.
    let wins: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..16u8)
            .map(|i| {
                let n = &n;
                s.spawn(move || n.put(b"once", &[i], Condition::IfAbsent).is_ok())
            })
            .collect();
        racers.into_iter().map(|r| usize::from(r.join().unwrap())).sum()
    });
    assert_eq!(wins, 1);
    // Compare-and-set increments from several threads lose no update.
    n.put(b"counter", &0u32.to_be_bytes(), Condition::None).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..25 {
                    loop {
                        let v = n.get(b"counter", None).unwrap().unwrap();
                        let next = u32::from_be_bytes(v.value.try_into().unwrap()) + 1;
                        let put = n.put(b"counter", &next.to_be_bytes(), Condition::IfTimestamp(v.timestamp));
                        match put {
                            Ok(_) => break,
                            Err(NodeError::Precondition(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let v = n.get(b"counter", None).unwrap().unwrap();
    assert_eq!(u32::from_be_bytes(v.value.try_into().unwrap()), 200);
    // Closing stops the writers and releases every shard.
    n.close().unwrap();
    assert_eq!(node(tmp.path()).get(b"counter", None).unwrap().unwrap().timestamp, v.timestamp);
}

#[test]
fn stores_of_another_format_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("LAYOUT.json"), r#"{"total_buckets":1024,"shards":[[0,1023]]}"#).unwrap();
    let e = Node::open(NodeConfig::new(tmp.path())).unwrap_err().to_string();
    assert!(e.contains("data format 0"), "{e}");
}

/// Versions of `key` stored in the engine (live or not).
fn stored_versions(n: &Node, key: &[u8]) -> usize {
    let bucket = mvcc::bucket_of(key, n.total_buckets);
    let lo = mvcc::key_prefix(key);
    let mut hi = lo.clone();
    *hi.last_mut().unwrap() += 1;
    n.shard_of(bucket).unwrap().db().scan(bucket, &lo[..]..&hi[..]).unwrap().count()
}

#[test]
fn compaction_drops_versions_below_the_gc_horizon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new(tmp.path().join("kept"));
    c.sync = false;
    let kept = Node::open(c.clone()).unwrap();
    c.store = tmp.path().join("collected");
    c.gc_ttl = Duration::ZERO;
    let collected = Node::open(c).unwrap();
    for n in [&kept, &collected] {
        for i in 0..5u8 {
            n.put(b"k", &[i], Condition::None).unwrap();
        }
        n.put(b"gone", b"x", Condition::None).unwrap();
        n.delete(b"gone").unwrap();
        n.compact().unwrap();
    }
    // A one-day horizon keeps every version; a zero one keeps only the newest below it.
    assert_eq!(stored_versions(&kept, b"k"), 5);
    assert_eq!(stored_versions(&collected, b"k"), 1);
    assert_eq!(collected.get(b"k", None).unwrap().unwrap().value, [4]);
    assert_eq!(stored_versions(&kept, b"gone"), 2);
    assert_eq!(stored_versions(&collected, b"gone"), 1);
    assert_eq!(collected.get(b"gone", None).unwrap(), None);
}

// Regression: a range over large values was built whole in memory (up to `limit` rows of any size).
#[test]
fn scans_stop_at_the_byte_budget_and_page_through_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new(tmp.path());
    c.sync = false;
    c.max_value_bytes = 100;
    c.max_scan_bytes = 250;
    let n = Node::open(c).unwrap();
    for i in 0..20u8 {
        n.put(&[b'k', i], &[i; 100], Condition::None).unwrap();
    }
    let (mut seen, mut start) = (Vec::new(), b"k".to_vec());
    loop {
        let page = n.scan(&start, None, 1000, None).unwrap();
        // 102 bytes a row: the third row crosses the 250-byte budget and ends the page.
        assert!(page.rows.len() <= 3, "{}", page.rows.len());
        seen.extend(page.rows.into_iter().map(|(k, _)| k));
        match page.resume {
            Some(next) => start = next,
            None => break,
        }
    }
    assert_eq!(seen, (0..20u8).map(|i| vec![b'k', i]).collect::<Vec<_>>());
}

// Regression: a read at a far-future timestamp moved the clock, so every later write was stamped in
// the future; a conditional put naming one did too.
#[test]
fn timestamps_beyond_the_clock_offset_are_refused_and_leave_the_clock_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let n = node(tmp.path());
    let now = n.now();
    let far = Timestamp { wall_time: now.wall_time + 10 * 365 * 24 * 3600 * 1_000_000_000, logical: 0 };
    assert!(matches!(n.get(b"a", Some(far)), Err(NodeError::OutOfRange(_))));
    assert!(matches!(n.scan(b"", None, 10, Some(far)), Err(NodeError::OutOfRange(_))));
    assert!(matches!(n.put(b"a", b"1", Condition::IfTimestamp(far)), Err(NodeError::OutOfRange(_))));
    let written = n.put(b"a", b"1", Condition::None).unwrap();
    assert!(written.wall_time < now.wall_time + 1_000_000_000, "{written} vs {now}");
    assert!(matches!(n.put(b"", b"1", Condition::None), Err(NodeError::InvalidArgument(_))));
}

/// Puts `value` as `key`'s version at `ts` under the node's feet (as a peer whose clock ran ahead
/// would have): straight into a standalone shard, or as a raw command through a replicated one's log.
async fn plant_version(n: &Node, key: &[u8], ts: Timestamp, value: &[u8]) {
    let shard = n.shard_of_key(key).unwrap();
    let mut batch = cairn_engine::WriteBatch::new();
    cairn_kv::evaluate::add_version(&mut batch, mvcc::bucket_of(key, n.total_buckets), key, ts, Some(value));
    match &shard.backend {
        Backend::Local { db, .. } => db.write(batch, cairn_engine::WriteOptions { sync: false }).unwrap(),
        Backend::Replicated(replica) => {
            let command = cairn_cluster::raft::Command::write(&batch);
            replica.write(command, Duration::from_secs(5)).await.unwrap();
        }
    }
}

/// The same script of writes and reads, with what each step answered (timestamps as the step that
/// produced them).
async fn evaluation_script(n: &Arc<Node>) -> Vec<String> {
    let mut seen: Vec<Timestamp> = Vec::new();
    let mut log = Vec::new();
    let name = |seen: &mut Vec<Timestamp>, ts: Timestamp| -> String {
        assert!(seen.last().is_none_or(|last| ts > *last), "timestamps only grow");
        seen.push(ts);
        format!("t{}", seen.len())
    };
    let kind = |e: &NodeError| e.code().to_string();
    let put = |key: &str, value: &str, condition| n.put_async(key.into(), value.into(), condition, None);
    let get = |key: &str, at| n.get_async(key.into(), ReadOptions { at, ..ReadOptions::default() });
    let read = |r: Result<Read<Option<Versioned>>>| match r {
        Ok(Read { value: Some(v), .. }) => String::from_utf8(v.value).unwrap(),
        Ok(Read { value: None, .. }) => "none".into(),
        Err(e) => e.code().to_string(),
    };
    let t1 = put("a", "1", Condition::None).await.unwrap().timestamp;
    log.push(name(&mut seen, t1));
    let t2 = put("a", "2", Condition::IfTimestamp(t1)).await.unwrap().timestamp;
    log.push(name(&mut seen, t2));
    for (condition, what) in
        [(Condition::IfAbsent, "if-absent over a value"), (Condition::IfTimestamp(t1), "stale if-ts")]
    {
        log.push(format!("{what}: {}", put("a", "x", condition).await.map_err(|e| kind(&e)).unwrap_err()));
    }
    let t3 = n.delete_async(b"a".to_vec(), None).await.unwrap().unwrap().timestamp;
    log.push(name(&mut seen, t3));
    log.push(format!("delete again: {:?}", n.delete_async(b"a".to_vec(), None).await.unwrap().map(|_| ())));
    log.push(format!(
        "a now {}, at t2 {}, at t1 {}",
        read(get("a", None).await),
        read(get("a", Some(t2)).await),
        read(get("a", Some(t1)).await)
    ));
    let t4 = put("a", "4", Condition::IfAbsent).await.unwrap().timestamp;
    log.push(name(&mut seen, t4));
    log.push(format!(
        "if-ts on absent: {}",
        put("b", "x", Condition::IfTimestamp(t1)).await.map_err(|e| kind(&e)).unwrap_err()
    ));
    // A batch stays within a shard: "a" and a "c…" key of its shard.
    let group = |key: &str| n.shard_of_key(key.as_bytes()).unwrap().group;
    let c = (0..).map(|i| format!("c{i}")).find(|c| group(c) == group("a")).unwrap();
    let ops = vec![(b"a".to_vec(), None), (c.clone().into_bytes(), Some(b"5".to_vec()))];
    let t5 = n.batch_async(ops, None).await.unwrap().timestamp;
    log.push(name(&mut seen, t5));
    log.push(format!(
        "a {}, c {}, a at t4 {}",
        read(get("a", None).await),
        read(get(&c, None).await),
        read(get("a", Some(t4)).await)
    ));
    // Write-too-old: a version 300 ms ahead of the clock (within the maximum offset) is written over
    // just above it, and the clock follows.
    let ahead = Timestamp { wall_time: n.now().wall_time + 300_000_000, logical: 7 };
    plant_version(n, b"w", ahead, b"planted").await;
    let over = put("w", "over", Condition::None).await.unwrap().timestamp;
    log.push(format!("written over a version ahead: {}", over > ahead));
    log.push(format!("w {}; clock past it: {}", read(get("w", None).await), n.now() > over));
    // A version further ahead than the offset cannot be written over.
    let far = Timestamp { wall_time: n.now().wall_time + 3_000_000_000, logical: 0 };
    plant_version(n, b"far", far, b"planted").await;
    log.push(format!(
        "over a version far ahead: {}",
        put("far", "x", Condition::None).await.map_err(|e| kind(&e)).unwrap_err()
    ));
    log.push(format!("far {}; clock not moved: {}", read(get("far", None).await), n.now() < far));
    log
}

// The standalone writer and the replicated proposer share one evaluation: the same script answers the
// same on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_and_replicated_writes_evaluate_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let mut standalone = NodeConfig::new(tmp.path().join("standalone"));
    standalone.sync = false;
    let mut replicated = NodeConfig::new(tmp.path().join("replicated"));
    replicated.sync = false;
    let members = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
    replicated.replication = Some(ReplicationConfig::new(1, members));
    let standalone = Arc::new(Node::start(standalone).await.unwrap());
    let replicated = Arc::new(Node::start(replicated).await.unwrap());
    let expected = evaluation_script(&standalone).await;
    assert_eq!(evaluation_script(&replicated).await, expected);
    assert_eq!(
        expected,
        [
            "t1",
            "t2",
            "if-absent over a value: failed_precondition",
            "stale if-ts: failed_precondition",
            "t3",
            "delete again: None",
            "a now none, at t2 2, at t1 1",
            "t4",
            "if-ts on absent: failed_precondition",
            "t5",
            "a none, c 5, a at t4 4",
            "written over a version ahead: true",
            "w over; clock past it: true",
            "over a version far ahead: out_of_range",
            "far planted; clock not moved: true",
        ]
    );
    replicated.stop_replication().await;
}
