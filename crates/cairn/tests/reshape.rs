//! A running 3-node cluster changes shape on its own: with a small `split_size` (`cairn settings set`)
//! the shards split as data is written, at the bucket that halves each one; raising it again merges
//! the small, cold neighbours back to the shards `init` made; a sustained read load over `split_qps` splits the busy shard. Every
//! key stays readable from every node throughout, and the shards' sizes and loads show on `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, cairn, three_nodes, wait_until};
use serde_json::Value;
use std::time::Duration;

/// How long the cluster gets to reach a shape.
const RESHAPED: Duration = Duration::from_secs(90);

/// The shards' ranges and whether a split or merge is under way, through `server`.
fn shards(server: &Server) -> (Vec<Value>, bool) {
    let listed = server.call("GET", "/admin/shards", b"").json();
    let list = listed["shards"].as_array().unwrap().clone();
    let busy = list.iter().any(|s| !s["splitting"].is_null() || !s["merging"].is_null());
    (list.iter().map(|s| s["ranges"].clone()).collect(), busy)
}

/// Sets `name` to `value` through the CLI at `server`.
fn set(server: &Server, name: &str, value: &str) {
    let (ok, out, err) = cairn(&["settings", "set", name, value, "--addr", &server.grpc.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("split_size_bytes"), "{out}");
}

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
    set(&nodes[0], "split_qps", "20");
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
    wait_until("nodes 1 and 2 lead every shard", RESHAPED, || {
        let l = leaders(&n1);
        l.len() == 4 && l.iter().all(|n| *n == 1 || *n == 2)
    });
    let n3 = Server::start_with(&store(3), &["--http-addr", &http, "--grpc-addr", &grpc, "--join", &grpc]);
    wait_until("leaders spread over the three nodes", RESHAPED, || {
        let l = leaders(&n2);
        let count = |node| l.iter().filter(|n| **n == node).count();
        l.len() == 4 && l.iter().all(|n| *n != 0) && (1..=3).all(|node| (1..=2).contains(&count(node)))
    });
    for n in [n1, n2, n3] {
        n.stop();
    }
}

/// `cairn-bench http` against every node of `nodes`, retrying 503s (anything else fails the run).
fn bench(nodes: &[String], workloads: &[&str], ops: u64, load: bool, verify: bool) -> Result<(), String> {
    let args = cairn_bench::kv::KvArgs {
        addr: nodes.to_vec(),
        reads: "strong".into(),
        direct: false,
        clients: 6,
        records: BENCH_RECORDS,
        ops,
        workloads: workloads.iter().map(ToString::to_string).collect(),
        key_size: 8,
        value_size: 400,
        no_load: !load,
        seed: 7,
        retry: true,
        verify,
    };
    cairn_bench::kv::run(&args, cairn_bench::kv::Target::Http)
}

/// Keys `cairn-bench` loads (400-byte values: about 2 MB with the memtables' overhead).
const BENCH_RECORDS: u64 = 4000;

/// Under `cairn-bench` load (YCSB-A over every node, 503s retried), the cluster splits on its own from
/// 4 shards to 64 or more (a small `split_size`), then merges back to the 4 `init` made (a large one);
/// the bench sees no error but retryable ones, and every key it wrote reads back with its value.
#[test]
fn under_bench_load_4_shards_split_to_64_and_merge_back_to_4() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    bench(&addrs, &[], 0, true, false).unwrap();
    set(&nodes[0], "split_size", "24KiB");

    // Load keeps running (a run at a time) while the shards split and merge.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, addrs) = (std::sync::Arc::clone(&stop), addrs.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                bench(&addrs, &["A"], 2000, false, false)?;
                runs += 1;
            }
            Ok(runs)
        })
    };
    let most = std::cell::Cell::new(0);
    wait_until("64 shards or more", Duration::from_secs(240), || {
        let (list, _) = shards(&nodes[0]);
        most.set(most.get().max(list.len()));
        list.len() >= 64
    });
    set(&nodes[1], "merge_delay_secs", "1");
    set(&nodes[1], "split_size", "256MiB");
    let initial = ["[[0,255]]", "[[256,511]]", "[[512,767]]", "[[768,1023]]"];
    wait_until("back to the 4 initial shards", Duration::from_secs(400), || {
        let (list, busy) = shards(&nodes[2]);
        most.set(most.get().max(list.len()));
        !busy && list.iter().map(Value::to_string).collect::<Vec<_>>() == initial
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = load.join().unwrap().unwrap();
    assert!(runs >= 2, "the load ran {runs} times");
    println!("the cluster went from 4 shards to {} and back to 4 under {runs} bench runs", most.get());
    // Every key the bench wrote reads back, with its value, through one node.
    bench(&addrs, &[], 0, false, true).unwrap();
    for n in nodes {
        n.stop();
    }
}
