//! Under `cairn-bench` load, a running 3-node cluster splits on its own from 4 shards to 64 or more
//! and merges back to 4 (a test binary of its own: it loads the machine more than any other test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{set_setting as set, shard_ranges as shards, three_nodes};
use serde_json::Value;
use std::time::Duration;

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

/// The shards `server`'s map lists, one line each: id, ranges, replicas and any change under way.
fn listing(server: &common::Server) -> String {
    let listed = server.call("GET", "/admin/shards", b"").json();
    let shards = listed["shards"].as_array().cloned().unwrap_or_default();
    let line = |s: &Value| {
        let under_way = ["splitting", "merging", "moving"].into_iter().filter(|k| !s[*k].is_null());
        let under_way: Vec<String> = under_way.map(|k| format!(" {k}={}", s[k])).collect();
        format!("shard {} ranges={} replicas={}{}", s["id"], s["ranges"], s["replicas"], under_way.concat())
    };
    let (_, status, _) = common::cairn(&["status", "--addr", &server.grpc.to_string()]);
    format!("{}\ncairn status:\n{status}", shards.iter().map(line).collect::<Vec<_>>().join("\n"))
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
    // The budgets are for a slow debug build on two busy cores: splits here have taken from about 2 s
    // to over 4 s each.
    let most = std::cell::Cell::new(0);
    let split_out = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let (list, _) = shards(&nodes[0]);
        most.set(most.get().max(list.len()));
        if list.len() >= 64 {
            break;
        }
        assert!(
            std::time::Instant::now() < split_out,
            "not 64 shards in 600 s (at most {}):\n{}",
            most.get(),
            listing(&nodes[0])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    set(&nodes[1], "merge_delay_secs", "1");
    set(&nodes[1], "split_size", "256MiB");
    let initial = ["[[0,255]]", "[[256,511]]", "[[512,767]]", "[[768,1023]]"];
    let merged_back = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let (list, busy) = shards(&nodes[2]);
        most.set(most.get().max(list.len()));
        if !busy && list.iter().map(Value::to_string).collect::<Vec<_>>() == initial {
            break;
        }
        // What is left, to tell a stuck split, merge or move from a merge never planned.
        assert!(
            std::time::Instant::now() < merged_back,
            "not back to 4 shards in 600 s:\n{}",
            listing(&nodes[2])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
