//! Values at the size limit (1 MiB) on a three-node cluster of real processes: concurrent and
//! sequential writes through every node all succeed, no shard's replication wedges (every shard
//! takes a write within a second afterwards, every replica converges, nothing reports a stalled
//! stream), and a range over them comes back in bounded pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{READY, Server, key_per_shard, three_nodes, wait_until};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Every shard's replicas have applied the same index, as each node reports in `/_status`.
fn converged(nodes: &[Server]) -> bool {
    let mut applied: std::collections::BTreeMap<u64, Vec<Option<u64>>> = Default::default();
    for n in nodes {
        let status = n.call("GET", "/_status", b"").json();
        for sh in status["shards"].as_array().unwrap() {
            applied
                .entry(sh["shard"].as_u64().unwrap())
                .or_default()
                .push(sh["replication"]["applied"].as_u64());
        }
    }
    applied.values().all(|a| a.len() == nodes.len() && a.iter().all(|x| x.is_some() && *x == a[0]))
}

#[test]
fn one_mib_values_replicate_without_wedging_any_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i: usize| tmp.path().join(format!("node-{i}"));
    let nodes = three_nodes(&store);
    let value = |i: usize| vec![b'a' + (i % 26) as u8; MIB];

    // Twelve at once, four through each node.
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..12)
            .map(|i| {
                let (node, value) = (&nodes[i % 3], value(i));
                s.spawn(move || node.call("PUT", &format!("/kv/rest/entry/big-{i:03}"), &value))
            })
            .collect();
        for (i, w) in writers.into_iter().enumerate() {
            let r = w.join().unwrap();
            assert_eq!(r.status, 200, "big-{i:03}: {}", String::from_utf8_lossy(&r.body));
        }
    });
    // A hundred one after another.
    for i in 12..112 {
        let r = nodes[i % 3].call("PUT", &format!("/kv/rest/entry/big-{i:03}"), &value(i));
        assert_eq!(r.status, 200, "big-{i:03}: {}", String::from_utf8_lossy(&r.body));
    }

    // No shard is wedged: each takes a small write within a second, through every node.
    for (shard, key) in key_per_shard(&nodes[0]) {
        for n in &nodes {
            let started = Instant::now();
            let r = n.call("PUT", &format!("/kv/rest/entry/{key}"), b"small");
            let took = started.elapsed();
            assert_eq!(r.status, 200, "shard {shard}: {}", String::from_utf8_lossy(&r.body));
            assert!(took < Duration::from_secs(1), "a write to shard {shard} took {took:?}");
        }
    }
    wait_until("every shard's replicas applied the same entries", READY, || converged(&nodes));
    // Every node's own replica holds every value whole.
    for n in &nodes {
        for i in [0, 11, 57, 111] {
            let r = n.call("GET", &format!("/kv/rest/entry/big-{i:03}?consistency=eventual"), b"");
            assert_eq!(r.status, 200);
            let bytes = r.json()["value"]["bytes"].as_str().unwrap().len();
            assert_eq!(bytes, MIB.div_ceil(3) * 4, "big-{i:03} at {}", n.addr);
        }
    }

    // A token beyond anything the shard committed is refused at once, not waited on.
    let written = nodes[0].call("PUT", "/kv/rest/entry/big-000", &value(0)).json();
    let token = written["header"]["token"].as_str().unwrap().to_string();
    let shard = token.split(':').next().unwrap();
    for n in &nodes {
        let started = Instant::now();
        let r = n.call(
            "GET",
            &format!("/kv/rest/entry/big-000?consistency=eventual&after={shard}:999999999"),
            b"",
        );
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_argument".into()),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());
    }

    // A range over them comes back a page at a time, each page bounded, all 112 in order.
    let mut start = "big-".to_string();
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let r = nodes[1].call("GET", &format!("/kv/rest/range?start={start}&end=big-~&limit=1000"), b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.body.len() < 7 * MIB, "a page of {} bytes", r.body.len());
        let page = r.json();
        pages += 1;
        keys.extend(
            page["rows"].as_array().unwrap().iter().map(|row| row["key"].as_str().unwrap().to_string()),
        );
        match page["header"]["resume_start"].as_str() {
            Some(next) => start = next.to_string(),
            None => break,
        }
        assert!(pages <= 112, "the pages never end");
    }
    assert!(pages >= 28, "112 MiB in {pages} pages");
    use base64::Engine as _;
    let want: Vec<String> =
        (0..112).map(|i| base64::engine::general_purpose::STANDARD.encode(format!("big-{i:03}"))).collect();
    assert_eq!(keys, want, "every key once, in order");

    // Nothing reports a stalled replication stream.
    let health = nodes[2].call("GET", "/health/cluster", b"");
    assert_eq!(health.json()["status"], "ok", "{}", String::from_utf8_lossy(&health.body));
    assert_eq!(health.json()["shards"]["stalled"], serde_json::json!({}));
    let metrics = String::from_utf8(nodes[0].call("GET", "/metrics", b"").body).unwrap();
    assert!(metrics.contains("# TYPE cairn_raft_replication_stalled gauge"));
    assert!(!metrics.lines().any(|l| l.starts_with("cairn_raft_replication_stalled{") && l.ends_with(" 1")));

    // A replica that was down while large entries piled up in its shards' logs catches up from them
    // (the leaders send them in bounded batches, one at a time if need be) and converges.
    let [n1, n2, n3] = nodes;
    let (http, grpc) = (n3.addr.to_string(), n3.grpc.to_string());
    n3.stop();
    for i in 0..12 {
        let r = n1.call("PUT", &format!("/kv/rest/entry/late-{i:02}"), &value(i));
        assert_eq!(r.status, 200, "late-{i:02}: {}", String::from_utf8_lossy(&r.body));
    }
    let n3 = Server::start_with(&store(3), &["--http-addr", &http, "--grpc-addr", &grpc, "--join", &grpc]);
    wait_until("the returning node serves keys", READY, || common::serves_keys(&n3));
    let nodes = [n1, n2, n3];
    wait_until("the returning replica caught up with every shard", READY, || converged(&nodes));
    let r = nodes[2].call("GET", "/kv/rest/entry/late-11?consistency=eventual", b"");
    assert_eq!(r.status, 200);
    for n in nodes {
        n.stop();
    }
}
