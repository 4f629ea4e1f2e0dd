//! A cluster started the way an operator starts one: three `cairn start --join` processes and
//! `cairn init` on the first. Every node gets an id, the shards are placed once three nodes have
//! joined, every node serves writes and reads, a scan merges every shard in key order, bad joins are
//! refused with their reasons, and a restarted node comes back as the same node with its data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_proto::cluster::{JoinRequest, StateRequest, cluster_client::ClusterClient};
use common::{READY, Server, cairn, serves_keys, three_nodes, wait_until};
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The cluster state as node `server` knows it, and its node id.
fn state(server: &Server) -> (Value, u64) {
    runtime().block_on(async {
        let mut c = ClusterClient::connect(format!("http://{}", server.grpc)).await.unwrap();
        let r = c.state(StateRequest { linearizable: true, forwarded: false }).await.unwrap().into_inner();
        (serde_json::from_slice(&r.state_json).unwrap(), r.node_id)
    })
}

/// A join call at `server`: the refusal's code and message, or the node id given.
fn join(
    server: &Server,
    cluster_id: &str,
    token: &str,
    grpc: &str,
    http: &str,
) -> Result<u64, (tonic::Code, String)> {
    runtime().block_on(async {
        let mut c = ClusterClient::connect(format!("http://{}", server.grpc)).await.unwrap();
        let request = JoinRequest {
            cluster_id: cluster_id.into(),
            token: token.into(),
            grpc_addr: grpc.into(),
            http_addr: http.into(),
        };
        c.join(request).await.map(|r| r.into_inner().node_id).map_err(|s| (s.code(), s.message().to_string()))
    })
}

/// Follows the gRPC event stream at `addr` (saying `ready` once subscribed) until a `node_down` for
/// node 4; returns that event's JSON.
fn watch_grpc_events(addr: std::net::SocketAddr, ready: std::sync::mpsc::Sender<()>) -> String {
    use cairn_proto::cluster::EventsRequest;
    runtime().block_on(async {
        let mut c = ClusterClient::connect(format!("http://{addr}")).await.unwrap();
        let mut stream = c.events(EventsRequest {}).await.unwrap().into_inner();
        ready.send(()).unwrap();
        let seen = async {
            while let Some(e) = stream.message().await.unwrap() {
                if e.r#type == "node_down" && e.json.contains(r#""node":4"#) {
                    return e.json;
                }
            }
            panic!("the event stream ended");
        };
        tokio::time::timeout(READY, seen).await.expect("a node_down event")
    })
}

/// Follows `GET /events` at `addr` (saying `ready` once the stream opened) until a `node_down` event;
/// returns its data line.
fn watch_sse(addr: std::net::SocketAddr, ready: std::sync::mpsc::Sender<()>) -> String {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READY)).unwrap();
    write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut lines = std::io::BufReader::new(stream).lines();
    let head = lines.next().unwrap().unwrap();
    assert!(head.contains(" 200 "), "{head}");
    let mut ready = Some(ready);
    loop {
        let line = lines.next().expect("the event stream ended").unwrap();
        if line.starts_with(": cairn events")
            && let Some(r) = ready.take()
        {
            r.send(()).unwrap();
        }
        if line == "event: node_down" {
            return lines.next().unwrap().unwrap();
        }
    }
}

/// A Get of a key in shard `shard`'s first bucket, forwarded-style with `epoch`: the refusal.
fn routed_get(server: &Server, shard: u32, epoch: u64) -> (tonic::Code, String) {
    use cairn_proto::kv::{GetRequest, Route, kv_client::KvClient};
    runtime().block_on(async {
        let mut c = KvClient::connect(format!("http://{}", server.grpc)).await.unwrap();
        let request =
            GetRequest { key: b"k".to_vec(), route: Some(Route { shard, epoch }), ..Default::default() };
        let status = c.get(request).await.unwrap_err();
        (status.code(), status.message().to_string())
    })
}

#[test]
fn nodes_join_serve_every_key_refuse_bad_joins_and_keep_their_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i: usize| tmp.path().join(format!("node-{i}"));

    // Node 1 waits for init (no peers to join through); a second init is refused.
    let n1 = Server::start(&store(1), &["--join", ""]);
    let n1_grpc = n1.grpc.to_string();
    // (No rebalancing: the node joining later stays without replicas, to test forwarding.)
    let init = ["init", "--addr", &n1_grpc, "--replication-factor", "3", "--shards", "4", "--no-rebalance"];
    let (ok, out, err) = cairn(&init);
    assert!(ok, "init failed: {err}");
    assert!(out.starts_with("initialised cluster "), "{out}");
    let (ok, _, err) = cairn(&["init", "--addr", &n1_grpc]);
    assert!(!ok && err.contains("already belongs to cluster"), "{err}");
    let (s, id) = state(&n1);
    assert_eq!(id, 1);
    let cluster_id = s["cluster_id"].as_str().unwrap().to_string();
    assert!(s["map"].is_null(), "shards are placed only once 3 nodes joined: {s}");

    // Two more nodes join through the nodes before them.
    let n2 = Server::start(&store(2), &["--join", &n1_grpc]);
    let n3 = Server::start(&store(3), &["--join", &format!("{n1_grpc},{}", n2.grpc)]);
    let mut nodes = vec![n1, n2, n3];
    for n in &nodes {
        wait_until("every node serves keys", READY, || serves_keys(n));
    }
    let (s, _) = state(&nodes[2]);
    assert_eq!(s["cluster_id"], cluster_id.as_str());
    let ids: Vec<u64> = s["nodes"].as_object().unwrap().keys().map(|k| k.parse().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let shards = s["map"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    for shard in shards {
        let mut replicas: Vec<u64> =
            shard["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
        replicas.sort_unstable();
        assert_eq!(replicas, vec![1, 2, 3], "every shard has a replica on each of 3 nodes: {shard}");
    }

    // Writes through every node; every node reads every key; a scan merges the shards in order.
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..10 {
            let r = n.call("PUT", &format!("/kv/rest/entry/key-{i}-{k}"), format!("v{i}{k}").as_bytes());
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    for n in &nodes {
        for i in 0..3 {
            let r = n.call("GET", &format!("/kv/rest/entry/key-{i}-7"), b"");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    let rows = nodes[1].call("GET", "/kv/rest/range?start=key-&end=key-~&limit=100", b"").json();
    let keys: Vec<&str> =
        rows["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 30);
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "rows come in key order");
    let (ok, out, err) = cairn(&["kv", "get", "key-2-3", "--addr", &nodes[0].grpc.to_string()]);
    assert!(ok && out.trim() == "v23", "{out} {err}");

    // A fourth node, joining after the shards were placed, holds no replica: it forwards every
    // request to nodes that do (one hop, with the shard's epoch) and merges their scans.
    let n4 = Server::start(&store(4), &["--join", &nodes[1].grpc.to_string()]);
    wait_until("node 4 serves keys", READY, || serves_keys(&n4));
    let (s, id) = state(&n4);
    assert_eq!(id, 4);
    assert!(
        s["map"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|sh| !sh["replicas"].as_array().unwrap().contains(&4.into()))
    );
    let r = n4.call("PUT", "/kv/rest/entry/key-3-0", b"v30");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = nodes[0].call("GET", "/kv/rest/entry/key-3-0", b"");
    assert_eq!(r.json()["value"]["bytes"], "djMw"); // "v30"
    let r = n4.call("GET", "/kv/rest/entry/key-1-4", b"");
    assert_eq!(r.json()["value"]["bytes"], "djE0"); // "v14"
    assert_eq!(n4.call("GET", "/kv/rest/entry/no-such-key", b"").status, 404);
    assert_eq!(n4.call("PUT", "/kv/rest/entry/fresh?if_absent=true", b"a").status, 200);
    let again = n4.call("PUT", "/kv/rest/entry/fresh?if_absent=true", b"b");
    assert_eq!(again.status, 412, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(n4.call("DELETE", "/kv/rest/entry/fresh", b"").status, 200);
    assert_eq!(n4.call("DELETE", "/kv/rest/entry/fresh", b"").status, 404);
    let rows = n4.call("GET", "/kv/rest/range?start=key-&end=key-~&limit=100", b"").json();
    let keys: Vec<&str> =
        rows["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 31, "{rows}");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "rows come in key order: {keys:?}");
    let limited = n4.call("GET", "/kv/rest/range?start=key-&end=key-~&limit=5", b"").json();
    let first: Vec<&str> =
        limited["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(first, keys[..5].to_vec());
    let (ok, out, err) = cairn(&["kv", "get", "key-0-0", "--addr", &n4.grpc.to_string()]);
    assert!(ok && out.trim() == "v00", "{out} {err}");
    // Forwarded requests carry the shard's epoch: a stale or unknown one, or a node without the
    // shard, is refused with ABORTED (the sender refreshes its map and routes again).
    let epoch = s["map"]["shards"][0]["epoch"].as_u64().unwrap();
    for (server, route_epoch, why) in [
        (&nodes[0], epoch + 1, "newer than the map"),
        (&nodes[0], epoch - 1, "stale shard epoch"),
        (&n4, epoch, "not shard 0's on this node"),
    ] {
        let (code, msg) = routed_get(server, 0, route_epoch);
        assert_eq!(code, tonic::Code::Aborted, "{msg}");
        assert!(msg.contains(why), "{msg}");
    }
    // A cluster client caches the map and talks to the shards' nodes directly (seeded with node 4,
    // which holds nothing: it only answers the map).
    runtime().block_on(async {
        use cairn_client::{ClusterClient, kv::Consistency};
        let mut c = ClusterClient::connect(&[n4.grpc.to_string()]).await.unwrap();
        for k in 0..20 {
            c.put(format!("direct-{k}").as_bytes(), b"d").await.unwrap();
        }
        for level in [Consistency::Strong, Consistency::Lease, Consistency::Eventual] {
            let (value, _) = c.get(b"key-2-9", level).await.unwrap().unwrap();
            assert_eq!(value, b"v29");
        }
        assert!(c.get(b"no-such-key", Consistency::Strong).await.unwrap().is_none());
        assert!(c.delete(b"direct-3").await.unwrap().is_some());
        assert!(c.delete(b"direct-3").await.unwrap().is_none());
    });
    let r = nodes[2].call("GET", "/kv/rest/entry/direct-7", b"");
    assert_eq!(r.json()["value"]["bytes"], "ZA=="); // "d"

    // `cairn status` shows every node up, and every shard with its range, replicas and a leader.
    let status = |server: &Server| -> Value {
        let (ok, out, err) = cairn(&["status", "--json", "--addr", &server.grpc.to_string()]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    wait_until("status shows 4 nodes up and a leader per shard", READY, || {
        let s = status(&n4);
        let nodes_up = s["nodes"].as_array().unwrap().iter().filter(|n| n["up"] == true).count();
        nodes_up == 4 && s["shards"].as_array().unwrap().iter().all(|sh| sh["leader"].as_u64() != Some(0))
    });
    let (ok, text, _) = cairn(&["status", "--addr", &nodes[0].grpc.to_string()]);
    assert!(ok && text.contains("shard  buckets") && text.contains("768..=1023"), "{text}");
    // Subscribed before node 4 stops, node 1's gRPC event stream and node 2's server-sent events both
    // report it down.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let grpc_watch = {
        let (addr, ready) = (nodes[0].grpc, ready_tx.clone());
        std::thread::spawn(move || watch_grpc_events(addr, ready))
    };
    let sse_watch = {
        let (addr, ready) = (nodes[1].addr, ready_tx);
        std::thread::spawn(move || watch_sse(addr, ready))
    };
    for _ in 0..2 {
        ready_rx.recv_timeout(READY).expect("event subscriptions open");
    }
    n4.stop();
    let down = grpc_watch.join().unwrap();
    assert!(down.contains(r#""node":4"#) && down.contains(r#""observer":1"#), "{down}");
    let data = sse_watch.join().unwrap();
    assert!(data.contains(r#""type":"node_down""#) && data.contains(r#""node":4"#), "{data}");
    wait_until("status shows node 4 down", READY, || {
        let s = status(&nodes[0]);
        s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 4 && n["up"] == false)
    });

    // Bad joins are refused with their reasons.
    let (code, msg) = join(&nodes[1], "not-this-cluster", "t-x", "127.0.0.1:1", "127.0.0.1:2").unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("wrong cluster"), "{msg}");
    let taken = nodes[2].grpc.to_string();
    let (code, msg) = join(&nodes[0], "", "t-y", &taken, "127.0.0.1:2").unwrap_err();
    assert_eq!(code, tonic::Code::AlreadyExists, "{msg}");
    assert!(msg.contains("already node 3"), "{msg}");
    let (code, msg) = join(&nodes[0], "", "", "127.0.0.1:1", "127.0.0.1:2").unwrap_err();
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    // A process started for another cluster stops with the reason instead of joining.
    let mut wrong =
        Server::start(&store(9), &["--join", &nodes[0].grpc.to_string(), "--cluster-id", "other"]);
    let exit = wrong.child.wait().unwrap();
    assert!(!exit.success(), "a node naming another cluster must not start");

    // With node 3 down the other two keep serving (a majority of every shard), and status shows every
    // shard under-replicated.
    let n3 = nodes.pop().unwrap();
    let (n3_http, n3_grpc) = (n3.addr.to_string(), n3.grpc.to_string());
    n3.stop();
    // A node that stops cleanly first hands over the groups it led: right away, no shard names it.
    let s = status(&nodes[0]);
    for shard in s["shards"].as_array().unwrap() {
        assert_ne!(shard["leader"], 3, "node 3 stopped without handing over: {shard}");
        assert_ne!(shard["leader"], 0, "a shard without a leader after node 3 stopped: {shard}");
    }
    for k in 0..10 {
        let r = nodes[k % 2].call("PUT", &format!("/kv/rest/entry/while-down-{k}"), b"w");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    wait_until("status shows node 3 down and its shards under-replicated", READY, || {
        let (ok, out, _) = cairn(&["status", "--json", "--addr", &nodes[1].grpc.to_string()]);
        let s: Value = serde_json::from_str(&out).unwrap_or_default();
        ok && s["shards"].as_array().is_some_and(|shards| {
            shards.iter().all(|sh| sh["down_replicas"].as_array().is_some_and(|d| d == &vec![Value::from(3)]))
        })
    });
    let (_, text, _) = cairn(&["status", "--addr", &nodes[0].grpc.to_string()]);
    assert!(text.contains("UNDER-REPLICATED: node 3 down"), "{text}");

    // A node keeps the gRPC address it joined with (its Raft groups reach it there): another one is
    // refused with the reason.
    let moved = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["start", "--log-level", "warn", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--join", &nodes[0].grpc.to_string(), "--store"])
        .arg(store(3))
        .output()
        .unwrap();
    assert!(!moved.status.success());
    let why = String::from_utf8_lossy(&moved.stderr);
    assert!(why.contains("must keep it") && why.contains(&n3_grpc), "{why}");

    // Restarted on its addresses, it is the same node, with its data (and what was written while it
    // was down), and serves again.
    let (http, grpc) = (n3_http.as_str(), n3_grpc.as_str());
    let n3 = Server::start_with(&store(3), &["--http-addr", http, "--grpc-addr", grpc, "--join", grpc]);
    wait_until("the restarted node serves keys", READY, || serves_keys(&n3));
    assert_eq!(state(&n3).1, 3, "a restarted node keeps its id");
    let r = n3.call("GET", "/kv/rest/entry/key-0-1", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["value"]["bytes"], "djAx"); // base64 of "v01"
    // Its own replicas catch up with the writes it missed (an eventual read answers from them).
    wait_until("node 3's replicas caught up", READY, || {
        (0..10).all(|k| {
            n3.call("GET", &format!("/kv/rest/entry/while-down-{k}?consistency=eventual"), b"").status == 200
        })
    });
    let (s, _) = state(&n3);
    assert_eq!(s["nodes"].as_object().unwrap().len(), 4, "no new node id was taken: {s}");
    nodes.push(n3);
    for n in nodes {
        n.stop();
    }
}

/// The cluster state as `cairn status --json` at `server` shows it.
fn cluster_status(server: &Server) -> Value {
    let (ok, out, err) = cairn(&["status", "--json", "--addr", &server.grpc.to_string()]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Replica ids of every shard in a `cairn status --json` answer, with its move under way if any.
fn placements(s: &Value) -> Vec<(Vec<u64>, Value)> {
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| {
            let replicas = sh["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
            (replicas, sh["moving"].clone())
        })
        .collect()
}

/// Replicas per node in a `cairn status --json` answer, if no move is under way.
fn settled_load(s: &Value) -> Option<std::collections::BTreeMap<u64, usize>> {
    let mut load = std::collections::BTreeMap::new();
    for (replicas, moving) in placements(s) {
        if !moving.is_null() {
            return None;
        }
        for r in replicas {
            *load.entry(r).or_default() += 1;
        }
    }
    Some(load)
}

/// The shards a node's `/_status` lists, as (shard id, serving, incarnation).
fn held(n: &Server) -> Vec<(u64, bool, u64)> {
    let status = n.call("GET", "/_status", b"").json();
    status["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|sh| {
                    let incarnation = sh["replication"]["incarnation"].as_u64().unwrap_or(0);
                    (sh["shard"].as_u64().unwrap(), sh["serving"] == true, incarnation)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn replicas_follow_the_nodes_a_joining_node_gets_a_share_a_dead_ones_are_recreated_a_returning_one_retires_its_own()
 {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i: usize| tmp.path().join(format!("node-{i}"));
    let [n1, n2, n3] = three_nodes(&store);
    let n1_grpc = n1.grpc.to_string();
    let put = |n: &Server, k: &str, v: &str| {
        let r = n.call("PUT", &format!("/kv/rest/entry/{k}"), v.as_bytes());
        assert_eq!(r.status, 200, "put {k}: {}", String::from_utf8_lossy(&r.body));
    };
    for k in 0..40 {
        put(if k % 2 == 0 { &n1 } else { &n2 }, &format!("before-{k}"), &format!("b{k}"));
    }

    // Node 4 joins after the shards were placed: replicas move onto it, one at a time, until every
    // node holds 3 of the 12; it then serves its shards from its own replicas.
    let n4 = Server::start(&store(4), &["--join", &n1_grpc]);
    wait_until("node 4 serves keys", READY, || serves_keys(&n4));
    let even = |s: &Value, nodes: &[u64], each: usize| {
        settled_load(s)
            .is_some_and(|load| nodes.iter().all(|n| load.get(n) == Some(&each)) && load.len() == nodes.len())
    };
    wait_until("replicas rebalanced onto node 4", READY, || even(&cluster_status(&n1), &[1, 2, 3, 4], 3));
    wait_until("node 4 serves its 3 shards", READY, || {
        let shards = held(&n4);
        shards.len() == 3 && shards.iter().all(|(_, serving, _)| *serving)
    });
    let health = |n: &Server| {
        let r = n.call("GET", "/health/cluster", b"");
        let body = r.json();
        (r.status, body)
    };
    wait_until("the cluster reports healthy", READY, || health(&n4).1["status"] == "ok");
    let node3_had: Vec<u64> = held(&n3).iter().map(|(shard, _, _)| *shard).collect();

    // Node 3 dies without a word. Writes go on (two of three replicas answer) while, once it has been
    // unheard for 2 s, its replicas are re-created on the live nodes (each then holds all 4 shards).
    let (n3_http, n3_grpc) = (n3.addr.to_string(), n3.grpc.to_string());
    n3.kill9();
    wait_until("the cluster reports node 3 down (degraded, still available)", READY, || {
        let (code, h) = health(&n2);
        code == 200 && h["status"] == "degraded" && h["nodes"]["down"] == serde_json::json!([3])
    });
    for k in 0..40 {
        put(if k % 2 == 0 { &n2 } else { &n4 }, &format!("during-{k}"), &format!("d{k}"));
    }
    wait_until("node 3's replicas re-created on the live nodes", READY, || {
        even(&cluster_status(&n2), &[1, 2, 4], 4)
    });
    let s = cluster_status(&n1);
    for shard in s["shards"].as_array().unwrap() {
        assert_eq!(shard["down_replicas"], serde_json::json!([]), "replication restored: {shard}");
    }
    // Node 4 serves every shard from its own replicas now, with every write acknowledged before and
    // during the moves. (Its reconciler starts serving within half a second of the map saying so.)
    wait_until("node 4 serves all four shards", READY, || {
        let shards = held(&n4);
        shards.len() == 4 && shards.iter().all(|(_, serving, _)| *serving)
    });
    wait_until("node 4's replicas caught up", READY, || {
        (0..40).all(|k| {
            ["before", "during"].iter().all(|p| {
                n4.call("GET", &format!("/kv/rest/entry/{p}-{k}?consistency=eventual"), b"").status == 200
            })
        })
    });
    put(&n1, "after-move", "a");

    // Node 3 returns on its addresses. The map no longer places anything on it, so it retires its
    // stale replicas (they would otherwise serve old data); then rebalancing gives it a share again,
    // as new replicas (a later incarnation where it held the shard before), filled from the groups.
    let n3 = Server::start_with(
        &store(3),
        &["--http-addr", &n3_http, "--grpc-addr", &n3_grpc, "--join", &n3_grpc],
    );
    wait_until("the returning node serves keys", READY, || serves_keys(&n3));
    wait_until("replicas rebalanced onto the returning node", READY, || {
        even(&cluster_status(&n1), &[1, 2, 3, 4], 3)
    });
    wait_until("node 3 serves its new replicas", READY, || {
        let shards = held(&n3);
        shards.len() == 3
            && shards.iter().all(|(shard, serving, incarnation)| {
                *serving && (!node3_had.contains(shard) || *incarnation >= 1)
            })
    });
    for n in [&n1, &n2, &n3, &n4] {
        for (k, want) in [("before-7", "b7"), ("during-13", "d13"), ("after-move", "a")] {
            let r = n.call("GET", &format!("/kv/rest/entry/{k}"), b"");
            assert_eq!(r.status, 200, "{k}: {}", String::from_utf8_lossy(&r.body));
            let got = r.json()["value"]["bytes"].as_str().unwrap().to_string();
            use base64::Engine as _;
            assert_eq!(got, base64::engine::general_purpose::STANDARD.encode(want), "{k} at {}", n.addr);
        }
    }
    wait_until("the cluster reports healthy again", READY, || health(&n3).1["status"] == "ok");

    // Then node 2 dies: the meta group survives it (node 3's meta vote went to a live node when node 3
    // was found dead), and node 2's replicas are re-created on the others.
    n2.kill9();
    for k in 0..20 {
        put(if k % 2 == 0 { &n1 } else { &n3 }, &format!("second-{k}"), &format!("s{k}"));
    }
    wait_until("node 2's replicas re-created on the live nodes", READY, || {
        even(&cluster_status(&n1), &[1, 3, 4], 4)
    });
    wait_until("node 3 serves every shard from its own replicas", READY, || {
        let shards = held(&n3);
        shards.len() == 4
            && shards.iter().all(|(_, serving, _)| *serving)
            && (0..20).all(|k| {
                n3.call("GET", &format!("/kv/rest/entry/second-{k}?consistency=eventual"), b"").status == 200
            })
    });
    for n in [&n1, &n3, &n4] {
        for (k, want) in [("before-8", "b8"), ("during-21", "d21"), ("second-5", "s5")] {
            let r = n.call("GET", &format!("/kv/rest/entry/{k}"), b"");
            assert_eq!(r.status, 200, "{k}: {}", String::from_utf8_lossy(&r.body));
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD.encode(want);
            assert_eq!(r.json()["value"]["bytes"].as_str().unwrap(), want, "{k} at {}", n.addr);
        }
    }
    for n in [n1, n3, n4] {
        n.stop();
    }
}

#[test]
fn a_move_whose_destination_dies_is_given_up_or_finished_never_left_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i: usize| tmp.path().join(format!("node-{i}"));
    let [n1, n2, n3] = three_nodes(&store);
    let n1_grpc = n1.grpc.to_string();
    for k in 0..20 {
        let r = n1.call("PUT", &format!("/kv/rest/entry/k-{k}"), format!("v{k}").as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Node 4 joins; it dies as soon as a replica starts moving onto it.
    let n4 = Server::start(&store(4), &["--join", &n1_grpc]);
    wait_until("a replica starts moving onto node 4", READY, || {
        placements(&cluster_status(&n1)).iter().any(|(_, moving)| moving["to"] == 4)
    });
    n4.kill9();
    // Once node 4 counts as dead the move is given up (or, had node 4 already taken over, finished and
    // then repaired): every shard ends with 3 replicas on nodes 1 to 3 and no move under way.
    wait_until("the move onto the dead node is over and every shard is whole", READY, || {
        settled_load(&cluster_status(&n2))
            .is_some_and(|load| load.len() == 3 && [1, 2, 3].iter().all(|n| load.get(n) == Some(&4)))
    });
    for n in [&n1, &n2, &n3] {
        let r = n.call("GET", "/kv/rest/entry/k-13", b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["value"]["bytes"], "djEz"); // "v13"
        wait_until("the cluster reports node 4 down", READY, || {
            n.call("GET", "/health/cluster", b"").json()["nodes"]["down"] == serde_json::json!([4])
        });
    }
    for n in [n1, n2, n3] {
        n.stop();
    }
}
