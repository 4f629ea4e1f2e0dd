//! Splitting a shard of a running 3-node cluster: `cairn shards split` records the split, the shard's
//! leader carries it out through the shard's Raft log, every node opens the new shard by reference
//! and serves it once the map names it; every key written before stays readable from every node, and
//! the moved buckets take writes. The same through the admin REST route, and `cairn shards list`.
//! Then merges take the cluster back to four shards (`cairn shards merge`, the admin REST route): the
//! right-hand shard freezes, the left-hand one imports its files, and every key stays readable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{READY, Server, cairn, three_nodes, wait_until};
use serde_json::Value;
use std::time::Duration;

/// `cairn shards list --json` through `server`.
fn status(server: &Server) -> Value {
    let (ok, out, err) = cairn(&["shards", "list", "--json", "--addr", &server.grpc.to_string()]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Shard id → its ranges, and whether any shard is still splitting.
fn shards(s: &Value) -> (Vec<(u64, Value)>, bool) {
    let list = s["shards"].as_array().unwrap();
    let splitting = list.iter().any(|sh| !sh["splitting"].is_null());
    (list.iter().map(|sh| (sh["id"].as_u64().unwrap(), sh["ranges"].clone())).collect(), splitting)
}

/// Reads `key` on `server` until it answers (a request racing the split may be refused with a
/// retryable error); its value, base64.
fn read(server: &Server, key: &str) -> String {
    let mut got = String::new();
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let r = server.call("GET", &format!("/kv/rest/entry/{key}"), b"");
        if r.status == 200 {
            got = r.json()["value"]["bytes"].as_str().unwrap().to_string();
            return got;
        }
        last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = server.call("GET", "/_status", b"").json();
    panic!("{key} does not read back: {last} {got}; status {st}");
}

#[test]
fn a_shard_splits_online_by_reference_and_every_key_stays_readable_and_writable() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    for k in 0..120 {
        let r = nodes[k % 3].call("PUT", &format!("/kv/rest/entry/s-{k}"), format!("v{k}").as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let addr = nodes[1].grpc.to_string();
    // Refused: the shard's first bucket, a bucket it does not own, an unknown shard.
    for (shard, at) in [("0", "0"), ("0", "700"), ("9", "10")] {
        let (ok, _, err) = cairn(&["shards", "split", shard, "--at", at, "--addr", &addr]);
        assert!(!ok && err.contains("split refused"), "{shard} at {at}: {err}");
    }
    let (ok, out, err) = cairn(&["shards", "split", "0", "--at", "128", "--json", "--addr", &addr]);
    assert!(ok, "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["new_shard"], 4);

    wait_until("the split is recorded", READY, || {
        let (list, splitting) = shards(&status(&nodes[0]));
        !splitting && list.len() == 5
    });
    // The admin REST route: refusals first (a bucket that is not a number, an unknown shard, a bucket
    // the shard does not own), then the new shard splits again.
    for (target, code) in [
        ("/admin/shards/4/split?at=x", 400),
        ("/admin/shards/x/split?at=3", 400),
        ("/admin/shards/9/split?at=200", 404),
        ("/admin/shards/4/split?at=100", 412),
    ] {
        let r = nodes[2].call("POST", target, b"");
        assert_eq!(r.status, code, "{target}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = nodes[2].call("POST", "/admin/shards/4/split?at=192", b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["new_shard"], 5);
    wait_until("the second split is recorded", READY, || {
        let listed = nodes[1].call("GET", "/admin/shards", b"").json();
        let (list, splitting) = shards(&listed);
        !splitting && list.len() == 6
    });
    let (list, _) = shards(&status(&nodes[2]));
    let ranges: std::collections::BTreeMap<u64, Value> = list.into_iter().collect();
    assert_eq!(ranges[&0], serde_json::json!([[0, 127]]));
    assert_eq!(ranges[&4], serde_json::json!([[128, 191]]));
    assert_eq!(ranges[&5], serde_json::json!([[192, 255]]));
    // Every node holds the new shard and serves it; the split shard keeps the lower half.
    for n in &nodes {
        wait_until("the new shard serves on every node", READY, || {
            let s = n.call("GET", "/_status", b"").json();
            let shards = s["shards"].as_array().unwrap();
            let serves =
                [4, 5].iter().all(|id| shards.iter().any(|sh| sh["shard"] == *id && sh["serving"] == true));
            let kept = shards
                .iter()
                .any(|sh| sh["shard"] == 0 && sh["buckets"] == serde_json::json!([{"start": 0, "end": 127}]));
            serves && kept
        });
    }
    // Every key reads back from every node; writes go on, to moved buckets too.
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    for n in &nodes {
        for k in 0..120 {
            assert_eq!(read(n, &format!("s-{k}")), b64(&format!("v{k}")), "s-{k}");
        }
    }
    for k in 0..120 {
        let r = nodes[(k + 1) % 3].call("PUT", &format!("/kv/rest/entry/s-{k}"), format!("w{k}").as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    for k in 0..120 {
        assert_eq!(read(&nodes[k % 3], &format!("s-{k}")), b64(&format!("w{k}")), "s-{k} after");
    }
    // The whole cluster restarts: every node comes back with both shards (nobody bootstraps the new
    // one) and every key reads back.
    let addrs: Vec<(String, String)> =
        nodes.iter().map(|n| (n.addr.to_string(), n.grpc.to_string())).collect();
    for n in nodes {
        n.stop();
    }
    let nodes: Vec<Server> = addrs
        .iter()
        .enumerate()
        .map(|(i, (http, grpc))| {
            let store = tmp.path().join(format!("n{}", i + 1));
            Server::start_with(&store, &["--http-addr", http, "--grpc-addr", grpc, "--join", &addrs[0].1])
        })
        .collect();
    for k in 0..120 {
        assert_eq!(
            read(&nodes[(k + 2) % 3], &format!("s-{k}")),
            b64(&format!("w{k}")),
            "s-{k} after a restart"
        );
    }
    let (list, _) = shards(&status(&nodes[1]));
    assert_eq!(list.len(), 6);
    let (ok, out, err) = cairn(&["shards", "list", "--addr", &addrs[2].1]);
    assert!(ok && out.contains("6 shards over 1024 buckets"), "{out}{err}");

    // Merges, back to four shards: shard 5 into 4 by CLI, then 4 into 0 over REST. Refused first:
    // shards that are not neighbours, an unknown one.
    let addr = &addrs[0].1;
    for (left, right) in [("0", "5"), ("5", "4"), ("4", "9")] {
        let (ok, _, err) = cairn(&["shards", "merge", left, right, "--addr", addr]);
        assert!(!ok && err.contains("merge refused"), "{left} {right}: {err}");
    }
    let (ok, _, err) = cairn(&["shards", "merge", "4", "5", "--addr", addr]);
    assert!(ok, "{err}");
    wait_until("the first merge is recorded", READY, || shards(&status(&nodes[1])).0.len() == 5);
    for (target, code) in [
        ("/admin/shards/0/merge", 400),
        ("/admin/shards/0/merge?with=1", 412),
        ("/admin/shards/0/merge?with=9", 404),
    ] {
        let r = nodes[2].call("POST", target, b"");
        assert_eq!(r.status, code, "{target}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = nodes[2].call("POST", "/admin/shards/0/merge?with=4", b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    wait_until("the second merge is recorded", READY, || shards(&status(&nodes[0])).0.len() == 4);
    let (list, _) = shards(&status(&nodes[2]));
    let ranges: std::collections::BTreeMap<u64, Value> = list.into_iter().collect();
    assert_eq!(ranges[&0], serde_json::json!([[0, 255]]));
    // Every node serves the merged shard and drops the merged-in ones; every key reads back and takes
    // writes.
    for n in &nodes {
        wait_until("the merged shard serves on every node", READY, || {
            let s = n.call("GET", "/_status", b"").json();
            let shards = s["shards"].as_array().unwrap();
            let gone = shards.iter().all(|sh| sh["shard"] != 4 && sh["shard"] != 5);
            let whole = shards.iter().any(|sh| {
                sh["shard"] == 0
                    && sh["serving"] == true
                    && sh["buckets"] == serde_json::json!([{"start": 0, "end": 255}])
            });
            gone && whole
        });
    }
    for n in &nodes {
        for k in 0..120 {
            assert_eq!(read(n, &format!("s-{k}")), b64(&format!("w{k}")), "s-{k} after the merges");
        }
        // Every replica took the buckets in itself: none had to re-sync from another.
        let metrics = String::from_utf8(n.call("GET", "/metrics", b"").body).unwrap();
        let resyncs: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("cairn_raft_resyncs_total")).collect();
        assert!(!resyncs.is_empty() && resyncs.iter().all(|l| l.ends_with(" 0")), "{resyncs:?}");
    }
    for k in 0..120 {
        let r = nodes[k % 3].call("PUT", &format!("/kv/rest/entry/s-{k}"), format!("m{k}").as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(read(&nodes[(k + 1) % 3], &format!("s-{k}")), b64(&format!("m{k}")), "s-{k} written");
    }
    // Without a bucket, a split cuts where the shard's data halves: inside the shard, both halves
    // holding some of its keys.
    let (ok, out, err) = cairn(&["shards", "split", "0", "--json", "--addr", addr]);
    assert!(ok, "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    let at = reply["at"].as_u64().unwrap();
    assert!((1..=255).contains(&at), "{reply}");
    // Read-your-writes while the split goes on: a write through one node, then an eventual read with
    // its token through another, whose replica of the split shard may not have applied the split
    // while the token names the new shard. It must see the write.
    let mut k = 0;
    let deadline = std::time::Instant::now() + READY;
    while shards(&status(&nodes[0])).0.len() < 5 {
        assert!(std::time::Instant::now() < deadline, "the split without a bucket is not recorded");
        for _ in 0..20 {
            let (key, value) = (format!("s-{}", k % 120), format!("r{k}"));
            let put = nodes[k % 3].call("PUT", &format!("/kv/rest/entry/{key}"), value.as_bytes());
            k += 1;
            if put.status != 200 {
                continue; // refused while the shard splits (retryable): nothing to read back
            }
            let token = put.json()["header"]["token"].as_str().expect("a token").to_string();
            let target = format!("/kv/rest/entry/{key}?consistency=eventual&after={token}");
            let got = nodes[k % 3].call("GET", &target, b"");
            if got.status == 200 {
                assert_eq!(got.json()["value"]["bytes"].as_str().unwrap(), b64(&value), "{key} with {token}");
            }
        }
    }
    let s = nodes[1].call("GET", "/_status", b"").json();
    let live = |id: u64| {
        let shards = s["shards"].as_array().unwrap();
        shards.iter().find(|sh| sh["shard"] == id).map_or(0, |sh| sh["live_bytes"].as_u64().unwrap_or(0))
    };
    let new = reply["new_shard"].as_u64().unwrap();
    assert!(live(0) > 0 && live(new) > 0, "halves: {} and {} bytes", live(0), live(new));
    for n in nodes {
        n.stop();
    }
}

/// Seed 001's example, "2 shards -> 3 shards" (A owns 0..=511 and B 512..=1023; then A 0..=341,
/// B 342..=683, C 684..=1023), through the cluster's commands on a running 3-node cluster: B splits at
/// 684 (C takes 684..=1023), A splits at 342, and A's upper part merges with B's lower one. No byte is
/// copied; every key stays readable and writable throughout.
#[test]
fn the_seed_001_example_2_shards_to_3_through_the_cluster_commands() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let nodes = common::three_nodes_with(&|i| tmp.path().join(format!("n{i}")), 2);
    let addr = nodes[0].grpc.to_string();
    let layout = || -> Vec<(u64, Value)> {
        let (list, _) = shards(&status(&nodes[1]));
        let mut list = list;
        list.sort_by_key(|(_, r)| r[0][0].as_u64());
        list
    };
    assert_eq!(layout(), vec![(0, serde_json::json!([[0, 511]])), (1, serde_json::json!([[512, 1023]]))]);
    for k in 0..90 {
        let r = nodes[k % 3].call("PUT", &format!("/kv/rest/entry/seed-{k}"), format!("v{k}").as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let settled = |want: usize| {
        wait_until("the map settles", Duration::from_secs(60), || {
            let s = status(&nodes[2]);
            let list = s["shards"].as_array().unwrap();
            list.len() == want && list.iter().all(|sh| sh["splitting"].is_null() && sh["merging"].is_null())
        })
    };
    // C: B's buckets from 684 on.
    let (ok, out, err) = cairn(&["shards", "split", "1", "--at", "684", "--json", "--addr", &addr]);
    assert!(ok, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    let c = c["new_shard"].as_u64().unwrap();
    settled(3);
    // A gives 342..=511 up to a shard of its own, which then merges with B's remaining 512..=683.
    let (ok, out, err) = cairn(&["shards", "split", "0", "--at", "342", "--json", "--addr", &addr]);
    assert!(ok, "{err}");
    let a_upper: Value = serde_json::from_str(&out).unwrap();
    let a_upper = a_upper["new_shard"].as_u64().unwrap();
    settled(4);
    let (ok, _, err) = cairn(&["shards", "merge", &a_upper.to_string(), "1", "--addr", &addr]);
    assert!(ok, "{err}");
    settled(3);
    assert_eq!(
        layout(),
        vec![
            (0, serde_json::json!([[0, 341]])),
            (a_upper, serde_json::json!([[342, 683]])),
            (c, serde_json::json!([[684, 1023]])),
        ]
    );
    for k in 0..90 {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("v{k}"));
        assert_eq!(read(&nodes[k % 3], &format!("seed-{k}")), want, "seed-{k}");
        let r = nodes[(k + 1) % 3].call("PUT", &format!("/kv/rest/entry/seed-{k}"), b"again");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    for n in nodes {
        n.stop();
    }
}
