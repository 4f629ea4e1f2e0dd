//! A running 3-node cluster changes shape on its own: with a small `split_size` (`cairn settings set`)
//! the shards split as data is written, at the bucket that halves each one; raising it again merges
//! the small, cold neighbours back to the shards `init` made; a sustained read load over `split_qps` splits the busy shard. Every
//! key stays readable from every node throughout, and the shards' sizes and loads show on `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, cairn, set_setting as set, shard_ranges as shards, three_nodes, wait_until};
use serde_json::Value;
use std::time::Duration;

/// How long the cluster gets to reach a shape.
const RESHAPED: Duration = Duration::from_secs(90);

/// Every key reads back with its value from every node (retrying what a reshaping refuses for now).
fn all_readable(nodes: &[Server], keys: usize) {
    use base64::Engine as _;
    for (i, n) in nodes.iter().enumerate() {
        for k in (i..keys).step_by(3) {
            let want = base64::engine::general_purpose::STANDARD.encode(value(k));
            let mut last = String::new();
            let read = (0..200).any(|_| {
                let r = n.call("GET", &format!("/kv/rest/entry/r-{k}"), b"");
                if r.status == 200 {
                    assert_eq!(r.json()["value"]["bytes"].as_str().unwrap(), want, "r-{k}");
                    return true;
                }
                last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
                std::thread::sleep(Duration::from_millis(50));
                false
            });
            assert!(read, "r-{k} on node {}: {last}", i + 1);
        }
    }
}

/// Writes key `k` through `server`, again while a split refuses it (503: nothing was written).
fn put(server: &Server, k: usize) {
    let mut last = String::new();
    for _ in 0..200 {
        let r = server.call("PUT", &format!("/kv/rest/entry/r-{k}"), &value(k));
        match r.status {
            200 => return,
            503 => last = String::from_utf8_lossy(&r.body).into_owned(),
            _ => panic!("r-{k}: {} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("r-{k} not written: {last}");
}

fn value(k: usize) -> Vec<u8> {
    format!("{k:04}-{}", "x".repeat(1000)).into_bytes()
}

#[test]
fn shards_split_by_size_merge_back_and_split_by_load_on_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    // Settings: refused with a reason, then a small split size.
    let addr = nodes[0].grpc.to_string();
    let (ok, _, err) = cairn(&["settings", "set", "split_size", "lots", "--addr", &addr]);
    assert!(!ok && err.contains("split_size takes bytes"), "{err}");
    let r = nodes[1].call("PUT", "/admin/settings/no_such_thing", b"1");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    set(&nodes[0], "split_size", "48KiB");
    let r = nodes[2].call("GET", "/admin/settings", b"").json();
    assert_eq!(r["reshape"]["split_size_bytes"], 48 << 10);

    // About 320 KiB over four shards: each splits until it holds under 48 KiB.
    const KEYS: usize = 320;
    for k in 0..KEYS {
        put(&nodes[k % 3], k);
    }
    wait_until("the shards split by size", RESHAPED, || {
        let (list, busy) = shards(&nodes[0]);
        !busy && list.len() >= 7
    });
    let (split, _) = shards(&nodes[1]);
    all_readable(&nodes, KEYS);
    let sizes = || -> Vec<u64> {
        let metrics = String::from_utf8(nodes[0].call("GET", "/metrics", b"").body).unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with("cairn_shard_live_bytes{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    // Every shard's replica on the node shows (a split's new replica opens as its node sees the map).
    wait_until("every shard's size on /metrics", RESHAPED, || sizes().len() >= split.len());
    let sizes = sizes();
    assert!(sizes.len() >= 7 && sizes.iter().sum::<u64>() > 16 << 10, "{sizes:?}");

    // A large split size again, and no delay after a split (300 s by default): small, cold
    // neighbours merge, in disjoint pairs, back to the four shards `init` made (boundaries an
    // operator or `init` chose stay).
    let initial = ["[[0,255]]", "[[256,511]]", "[[512,767]]", "[[768,1023]]"];
    set(&nodes[2], "merge_delay_secs", "1");
    set(&nodes[2], "split_size", "256MiB");
    wait_until("the shards merge back", RESHAPED, || {
        let (list, busy) = shards(&nodes[0]);
        !busy && list.iter().map(Value::to_string).collect::<Vec<_>>() == initial
    });
    assert!(split.len() >= 7);
    all_readable(&nodes, KEYS);

    // By load: splits by size off, a low request threshold held for 2 s, and reads on every key.
    set(&nodes[0], "split_size", "0");
    set(&nodes[0], "split_qps", "5");
    set(&nodes[0], "split_load_secs", "2");
    set(&nodes[0], "auto_merge", "false");
    let start = std::time::Instant::now();
    let mut k = 0;
    while shards(&nodes[0]).0.len() < 5 {
        assert!(start.elapsed() < RESHAPED, "no split by load");
        for _ in 0..50 {
            let r = nodes[k % 3].call("GET", &format!("/kv/rest/entry/r-{}", k % KEYS), b"");
            assert!(r.status == 200 || r.status == 503, "{}", String::from_utf8_lossy(&r.body));
            k += 1;
        }
    }
    all_readable(&nodes, KEYS);
    for n in nodes {
        n.stop();
    }
}

/// Each shard's leader node, from `cairn status --json` through `server` (0: none known).
fn leaders(server: &Server) -> Vec<u64> {
    let (ok, out, _) = cairn(&["status", "--json", "--addr", &server.grpc.to_string()]);
    let status: Value = serde_json::from_str(&out).unwrap_or_default();
    let shards = status["shards"].as_array().cloned().unwrap_or_default();
    if !ok || shards.is_empty() {
        return Vec::new();
    }
    shards.iter().map(|s| s["leader"].as_u64().unwrap_or(0)).collect()
}

/// A node that stops hands its leaderships to the others; once it is back, the meta leader hands
/// leaderships back to it until no node leads two shards more than another.
#[test]
fn leaders_spread_over_the_nodes_again_after_one_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i| tmp.path().join(format!("n{i}"));
    let [n1, n2, n3] = three_nodes(&store);
    let (http, grpc) = (n3.addr.to_string(), n3.grpc.to_string());
    n3.stop();
    // Each view that differs from the last is printed: shown if the wait times out.
    let mut last = Vec::new();
    let mut seen = |who: &str, l: Vec<u64>| {
        if l != last {
            eprintln!("{:?} {who} sees leaders {l:?}", std::time::SystemTime::now());
            last = l.clone();
        }
        l
    };
    wait_until("nodes 1 and 2 lead every shard", RESHAPED, || {
        let l = seen("node 1", leaders(&n1));
        l.len() == 4 && l.iter().all(|n| *n == 1 || *n == 2)
    });
    let n3 = Server::start_with(&store(3), &["--http-addr", &http, "--grpc-addr", &grpc, "--join", &grpc]);
    wait_until("leaders spread over the three nodes", RESHAPED, || {
        let l = seen("node 2", leaders(&n2));
        let count = |node| l.iter().filter(|n| **n == node).count();
        l.len() == 4 && l.iter().all(|n| *n != 0) && (1..=3).all(|node| (1..=2).contains(&count(node)))
    });
    for n in [n1, n2, n3] {
        n.stop();
    }
}
