//! Old versions on a running 3-node cluster: each shard's GC threshold, decided through its log from
//! the `gc_ttl` setting, bounds what an overwrite load leaves on disk, reads below it are refused, a
//! protected timestamp keeps its versions readable until released, and replicas that compacted at
//! their own times still pass consistency checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, set_setting, three_nodes_args, wait_until};
use std::collections::BTreeMap;
use std::time::Duration;

/// `name{shard="N"} value` lines of `server`'s /metrics: shard -> value.
fn per_shard(server: &Server, name: &str) -> BTreeMap<u64, i64> {
    let text = String::from_utf8(server.call("GET", "/metrics", b"").body).unwrap();
    let prefix = format!("{name}{{shard=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (shard, rest) = l.split_once("\"}")?;
            Some((shard.parse().ok()?, rest.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// Bytes the shards on `server` hold (files and memtables).
fn held(server: &Server) -> i64 {
    ["cairn_engine_sst_bytes", "cairn_engine_memtable_bytes"]
        .iter()
        .map(|m| per_shard(server, m).values().sum::<i64>())
        .sum()
}

/// Waits until a consistency check past every shard's applied index (on node 1, now) passed on every
/// replica, and asserts no replica ever diverged or is fenced.
fn checks_pass(nodes: &[Server]) {
    let applied = per_shard(&nodes[0], "cairn_raft_applied_index");
    for n in nodes {
        wait_until("a consistency check past the GC thresholds", Duration::from_secs(60), || {
            let verified = per_shard(n, "cairn_raft_verified_index");
            applied.iter().all(|(shard, index)| verified.get(shard).is_some_and(|v| v >= index))
        });
        assert!(per_shard(n, "cairn_raft_divergences_total").values().all(|d| *d == 0));
        assert!(per_shard(n, "cairn_raft_fenced").values().all(|f| *f == 0));
    }
}

const VALUE_BYTES: usize = 8 << 10;
const KEYS: usize = 32;
const WRITERS: usize = 4;

#[test]
fn an_overwrite_load_is_collected_below_the_gc_threshold_except_what_a_protected_timestamp_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes_args(&|i| tmp.path().join(format!("n{i}")), 4, &["--check-interval-secs", "1"]);
    // The first version of k0, and when it was written.
    let first = nodes[0].call("PUT", "/kv/rest/entry/k0", &vec![b'a'; VALUE_BYTES]);
    assert_eq!(first.status, 200);
    let at = first.json()["header"]["timestamp"].clone();
    let at = format!("{}.{}", at["wall_time"], at["logical"]);
    assert_eq!(nodes[1].call("GET", &format!("/kv/rest/entry/k0?timestamp={at}"), b"").status, 200);
    // A protected timestamp holds it: an old one is refused (it may be collected already).
    let protect = |at: &str| {
        let body = format!(r#"{{"timestamp": "{at}", "expires_in_secs": 600, "owner": "gc test"}}"#);
        nodes[1].call("POST", "/admin/protected", body.as_bytes())
    };
    let refused = protect("1000.0");
    assert_eq!((refused.status, refused.code()), (400, "invalid_argument".to_string()));
    let protected = protect(&at);
    assert_eq!(protected.status, 200, "{}", String::from_utf8_lossy(&protected.body));
    let id = protected.json()["id"].as_u64().unwrap();
    let (ok, listed, err) =
        common::cairn(&["protect", "list", "--json", "--addr", &nodes[2].grpc.to_string()]);
    assert!(ok && listed.contains("\"owner\":\"gc test\""), "{listed} {err}");
    set_setting(&nodes[0], "gc_ttl", "2");

    // Writers overwrite the same keys through every node: for 10 s while the timestamp is protected,
    // then for 20 s more after it is released.
    let written = std::sync::atomic::AtomicUsize::new(0);
    let overwrite = |secs: u64| {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (node, written) = (&nodes[w % 3], &written);
                s.spawn(move || {
                    let mut round = 0u8;
                    while start.elapsed() < Duration::from_secs(secs) {
                        for k in (w..KEYS).step_by(WRITERS) {
                            let value = vec![round; VALUE_BYTES];
                            let r = node.call("PUT", &format!("/kv/rest/entry/k{k}"), &value);
                            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                            written.fetch_add(VALUE_BYTES, std::sync::atomic::Ordering::Relaxed);
                        }
                        round = round.wrapping_add(1);
                    }
                });
            }
        });
    };
    overwrite(10);
    for n in &nodes {
        let r = n.call("GET", &format!("/kv/rest/entry/k0?timestamp={at}"), b"");
        assert_eq!(r.status, 200, "the protected version: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["value"]["timestamp"], first.json()["header"]["timestamp"]);
    }
    let released = nodes[2].call("DELETE", &format!("/admin/protected/{id}"), b"");
    assert_eq!(released.status, 200, "{}", String::from_utf8_lossy(&released.body));
    assert_eq!(nodes[0].call("DELETE", &format!("/admin/protected/{id}"), b"").status, 404, "released once");
    overwrite(20);
    let written = written.into_inner() as i64;
    let live = (KEYS * VALUE_BYTES) as i64;
    println!("written {written} bytes over {KEYS} keys ({live} live)");
    assert!(written > 8 * live, "the load wrote {written} bytes only");

    // A read at the first version's timestamp is refused on every node once the threshold passed it.
    for n in &nodes {
        wait_until("a read below the GC threshold is refused", Duration::from_secs(60), || {
            let r = n.call("GET", &format!("/kv/rest/entry/k0?timestamp={at}"), b"");
            r.status == 400 && r.code() == "below_gc_threshold"
        });
    }
    // What the shards hold on each node came down to a fraction of what was written.
    for n in &nodes {
        let h = held(n);
        println!("node holds {h} bytes");
        assert!(h < written / 3, "a node holds {h} of {written} bytes written");
    }
    // Consistency checks after the thresholds pass on every replica (none fenced, none diverged).
    checks_pass(&nodes);
    // A split's new shard starts at the split shard's threshold: its replicas, made from files each
    // node compacted at its own time, agree; so do the shard's after the merge back.
    let split = nodes[0].call("POST", "/admin/shards/0/split", b"");
    assert_eq!(split.status, 202, "{}", String::from_utf8_lossy(&split.body));
    let new_shard = split.json()["new_shard"].as_u64().unwrap();
    wait_until("the split is done", Duration::from_secs(60), || {
        let (list, busy) = common::shard_ranges(&nodes[1]);
        !busy && list.len() == 5
    });
    checks_pass(&nodes);
    let merge = nodes[1].call("POST", &format!("/admin/shards/0/merge?with={new_shard}"), b"");
    assert_eq!(merge.status, 202, "{}", String::from_utf8_lossy(&merge.body));
    wait_until("the merge is done", Duration::from_secs(60), || {
        let (list, busy) = common::shard_ranges(&nodes[1]);
        !busy && list.len() == 4
    });
    checks_pass(&nodes);
    // The newest versions are all there.
    for k in 0..KEYS {
        let r = nodes[2].call("GET", &format!("/kv/rest/entry/k{k}"), b"");
        assert_eq!(r.status, 200);
    }
    for n in nodes {
        n.stop();
    }
}
