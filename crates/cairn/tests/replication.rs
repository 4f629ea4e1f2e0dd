//! Three real `cairn start` processes replicating every shard (`--node-id`, `--peers`): the leader is
//! killed with SIGKILL under write load and restarted; every acknowledged write must be readable from
//! every node, and the consistency checks must find every replica's digest equal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, http, try_http, wait_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const WRITERS: usize = 4;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    root: PathBuf,
    peers: String,
    grpc: Vec<u16>,
    http: Vec<SocketAddr>,
    nodes: Vec<Option<Server>>,
    extra: Vec<String>,
}

impl Cluster {
    fn new(root: &Path) -> Cluster {
        Cluster::with(root, &["--check-interval-secs", "1"], NODES)
    }

    /// The first `running` of three nodes started with `extra` flags.
    fn with(root: &Path, extra: &[&str], running: usize) -> Cluster {
        let grpc: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let http = (0..NODES).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
        let peers =
            grpc.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster {
            root: root.to_path_buf(),
            peers: peers.join(","),
            grpc,
            http,
            nodes: Vec::new(),
            extra,
        };
        for i in 0..NODES {
            let node = (i < running).then(|| cluster.start(i));
            cluster.nodes.push(node);
        }
        cluster
    }

    fn start(&self, i: usize) -> Server {
        let id = (i + 1).to_string();
        let grpc = format!("127.0.0.1:{}", self.grpc[i]);
        let http = self.http[i].to_string();
        let args = ["--node-id", &id, "--peers", &self.peers, "--grpc-addr", &grpc, "--http-addr", &http];
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Server::start_with(&self.root.join(format!("n{}", i + 1)), &[&args[..], &extra].concat())
    }

    fn status(&self, i: usize) -> Value {
        http(self.http[i], "GET", "/_status", b"").json()
    }
}

/// The value written under `key`.
fn value_of(key: &str) -> String {
    format!("value-of-{key}")
}

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    acked: Mutex<BTreeMap<String, Instant>>,
    // Answered 503 (outcome unknown, or no leader in time): may or may not be there.
    unknown: AtomicUsize,
    stop: AtomicBool,
}

/// Writes distinct keys through every node in turn until told to stop.
fn writer(id: usize, http: Vec<SocketAddr>, out: Arc<Outcomes>) {
    let mut n = 0u64;
    while !out.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{id}-{n:06}");
        let node = http[(id + n as usize) % http.len()];
        match try_http(node, "PUT", &format!("/kv/rest/entry/{key}"), value_of(&key).as_bytes()) {
            Ok(r) if r.status == 200 => {
                out.acked.lock().unwrap().insert(key, Instant::now());
            }
            Ok(r) if r.status == 503 => {
                out.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => panic!("PUT {key} at {node}: {} {}", r.status, String::from_utf8_lossy(&r.body)),
            // The node is down (killed, or restarting): nothing was written through it.
            Err(_) => {}
        }
    }
}

#[test]
fn killing_the_leader_under_load_loses_no_acknowledged_write_and_replicas_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    // The groups are ready once a write goes through.
    wait_until("the first write is acknowledged", Duration::from_secs(30), || {
        try_http(cluster.http[1], "PUT", "/kv/rest/entry/ready", b"yes").is_ok_and(|r| r.status == 200)
    });

    let out = Arc::new(Outcomes::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (http, out) = (cluster.http.clone(), Arc::clone(&out));
            std::thread::spawn(move || writer(id, http, out))
        })
        .collect();
    let acked = || out.acked.lock().unwrap().len();
    wait_until("300 writes are acknowledged", Duration::from_secs(60), || acked() >= 300);

    // Kill the node leading shard 0 (the node that made the groups leads them all at first).
    let leader = cluster.status(0)["shards"][0]["replication"]["leader"].as_u64().expect("a leader") as usize;
    let killed_at = Instant::now();
    cluster.nodes[leader - 1].take().unwrap().kill9();
    let before = acked();
    wait_until("writes resume after the leader is killed", Duration::from_secs(30), || {
        acked() >= before + 300
    });
    let mut times: Vec<Instant> = out.acked.lock().unwrap().values().copied().collect();
    times.sort();
    let pause = times.windows(2).filter(|w| w[1] > killed_at).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("leader {leader} killed; longest pause in acknowledgements after it: {pause:?}");

    // Bring it back: it replays its log, catches up, and serves again.
    cluster.nodes[leader - 1] = Some(cluster.start(leader - 1));
    let before = acked();
    wait_until("300 more writes with the old leader back", Duration::from_secs(60), || {
        acked() >= before + 300
    });
    out.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = out.acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged, {} answered 503", acked.len(), out.unknown.load(Ordering::Relaxed));

    // Every node serves every acknowledged write (strong reads: a follower first applies up to the
    // leader's commit index), and nothing it serves was never written.
    for i in 0..NODES {
        let mut seen = BTreeMap::new();
        let mut start = String::from("w");
        loop {
            let r =
                http(cluster.http[i], "GET", &format!("/kv/rest/range?start={start}&end=x&limit=10000"), b"");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let rows = r.json()["rows"].as_array().unwrap().clone();
            for row in &rows {
                let key = String::from_utf8(decode_b64(row["key"].as_str().unwrap())).unwrap();
                let value = String::from_utf8(decode_b64(row["value"]["bytes"].as_str().unwrap())).unwrap();
                assert_eq!(value, value_of(&key), "node {} serves {key} with a value never written", i + 1);
                seen.insert(key, ());
            }
            if rows.len() < 10000 {
                break;
            }
            start = format!("{}\u{1}", seen.keys().next_back().unwrap());
        }
        let missing: Vec<_> = acked.keys().filter(|k| !seen.contains_key(*k)).take(5).collect();
        assert!(missing.is_empty(), "node {} lost acknowledged writes, e.g. {missing:?}", i + 1);
    }

    // The periodic consistency checks (every second, through the log) reach past the last write on
    // every replica of every shard, and every digest matched the leader's.
    let shards = cluster.status(0)["shards"].as_array().unwrap().len();
    let committed: Vec<u64> = (0..shards)
        .map(|s| {
            (0..NODES)
                .map(|i| cluster.status(i)["shards"][s]["replication"]["committed"].as_u64().unwrap_or(0))
                .max()
                .unwrap()
        })
        .collect();
    wait_until("every replica verified its digest after the last write", Duration::from_secs(60), || {
        (0..NODES).all(|i| {
            let status = cluster.status(i);
            (0..shards).all(|s| {
                let r = &status["shards"][s]["replication"];
                assert!(r["fenced"].is_null(), "node {} shard {s} is fenced: {r}", i + 1);
                assert_eq!(r["divergences"], 0, "node {} shard {s} diverged: {r}", i + 1);
                r["verified"].as_u64().is_some_and(|v| v > committed[s])
            })
        })
    });
    for node in cluster.nodes.iter_mut().filter_map(Option::take) {
        node.stop();
    }
}

#[test]
fn consistency_levels_tokens_conditions_and_identity_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    let (a, b, c) = (cluster.http[0], cluster.http[1], cluster.http[2]);
    wait_until("the first write is acknowledged", Duration::from_secs(30), || {
        try_http(b, "PUT", "/kv/rest/entry/k", b"v1").is_ok_and(|r| r.status == 200)
    });
    // A write through one node, read your write through another with an eventual read and its token.
    let put = http(b, "PUT", "/kv/rest/entry/session", b"mine").json();
    let token = put["header"]["token"].as_str().expect("a token").to_string();
    let read = http(c, "GET", &format!("/kv/rest/entry/session?consistency=eventual&after={token}"), b"");
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["value"]["bytes"], "bWluZQ==");
    assert_eq!(read.json()["header"]["behind"].as_u64().map(|_| ()), Some(()));
    for level in ["strong", "lease", "eventual"] {
        let r = http(a, "GET", &format!("/kv/rest/entry/session?consistency={level}"), b"");
        assert_eq!(r.status, 200, "{level}: {}", String::from_utf8_lossy(&r.body));
    }
    let scan = http(c, "GET", "/kv/rest/range?start=a&end=z&consistency=lease", b"").json();
    assert_eq!(scan["rows"].as_array().unwrap().len(), 2, "{scan}");
    assert_eq!(http(a, "GET", "/kv/rest/entry/k?consistency=sometimes", b"").code(), "invalid_argument");
    assert_eq!(
        http(a, "GET", "/kv/rest/entry/k?consistency=eventual&after=x", b"").code(),
        "invalid_argument"
    );

    // Conditional writes are decided once, in log order, whichever node they come through.
    let winners: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..9)
            .map(|i| {
                let node = cluster.http[i % NODES];
                s.spawn(move || {
                    http(node, "PUT", "/kv/rest/entry/once?if_absent=1", &[b'0' + i as u8]).status
                })
            })
            .collect();
        racers.into_iter().map(|r| usize::from(r.join().unwrap() == 200)).sum()
    });
    assert_eq!(winners, 1);

    // One hot key written through every node at once: a write whose timestamp is older than a version
    // applied before it (a follower's, forwarded) is retried at a newer one, so every write succeeds, at
    // its own timestamp, and the newest acknowledged one is what the key reads.
    let ts_of = |v: &Value| (v["wall_time"].as_u64().unwrap(), v["logical"].as_u64().unwrap());
    let mut acked: Vec<((u64, u64), String)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..12)
            .map(|i| {
                let node = cluster.http[i % NODES];
                s.spawn(move || {
                    (0..15)
                        .map(|n| {
                            let value = format!("hot-{i}-{n}");
                            let r = http(node, "PUT", "/kv/rest/entry/hot", value.as_bytes());
                            assert_eq!(r.status, 200, "{value}: {}", String::from_utf8_lossy(&r.body));
                            (ts_of(&r.json()["header"]["timestamp"]), value)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    acked.sort();
    acked.dedup_by_key(|(ts, _)| *ts);
    assert_eq!(acked.len(), 12 * 15, "two acknowledged writes share a timestamp");
    let newest = acked.last().unwrap();
    for node in &cluster.http {
        let read = http(*node, "GET", "/kv/rest/entry/hot?consistency=strong", b"").json();
        assert_eq!(ts_of(&read["value"]["timestamp"]), newest.0, "{read}");
        assert_eq!(decode_b64(read["value"]["bytes"].as_str().unwrap()), newest.1.as_bytes());
    }

    let current = http(c, "GET", "/kv/rest/entry/k", b"").json()["value"]["timestamp"].clone();
    let at = format!("{}.{}", current["wall_time"], current["logical"]);
    assert_eq!(http(a, "PUT", &format!("/kv/rest/entry/k?if_timestamp={at}"), b"v2").status, 200);
    assert_eq!(
        http(b, "PUT", &format!("/kv/rest/entry/k?if_timestamp={at}"), b"v3").code(),
        "failed_precondition"
    );
    assert_eq!(http(c, "DELETE", "/kv/rest/entry/k", b"").status, 200);
    assert_eq!(http(a, "DELETE", "/kv/rest/entry/k", b"").status, 404);
    assert_eq!(http(b, "GET", "/kv/rest/entry/k", b"").status, 404);

    // The CLI (gRPC) through a follower.
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let grpc = format!("127.0.0.1:{}", cluster.grpc[2]);
    assert_eq!(cli(&["kv", "put", "cli-key", "cli-value", "--addr", &grpc]).0, Some(0));
    assert_eq!(cli(&["kv", "get", "cli-key", "--addr", &grpc]).1.trim(), "cli-value");
    let (code, status) = cli(&["status", "--addr", &grpc]);
    assert_eq!(code, Some(0));
    assert!(status.contains("node 3") && status.contains("leader"), "{status}");

    // A node keeps its identity: another id, or a standalone start, is refused clearly.
    cluster.nodes[2].take().unwrap().stop();
    let store = tmp.path().join("n3");
    let start = |extra: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["start", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .arg("--store")
            .arg(&store)
            .args(extra)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = start(&["--node-id", "2", "--peers", &cluster.peers]);
    assert_eq!(code, Some(1));
    assert!(err.contains("was created as node 3"), "{err}");
    let (code, err) = start(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("replicated node"), "{err}");
    let (code, err) = start(&["--node-id", "4", "--peers", &cluster.peers]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not among"), "{err}");
    let (code, err) = start(&["--node-id", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--peers"), "{err}");
    for node in cluster.nodes.iter_mut().filter_map(Option::take) {
        node.stop();
    }
}

#[test]
fn a_node_down_through_several_snapshots_catches_up_by_streamed_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    // Node 3 is down from the start: the others make the groups and take writes without it.
    let mut cluster = Cluster::with(
        tmp.path(),
        &["--snapshot-every", "40", "--log-keep", "5", "--check-interval-secs", "1"],
        2,
    );
    let a = cluster.http[0];
    wait_until("the first write is acknowledged", Duration::from_secs(30), || {
        try_http(a, "PUT", "/kv/rest/entry/ready", b"yes").is_ok_and(|r| r.status == 200)
    });
    // Four shards, ~100 entries each: two snapshots or more per shard, the log purged behind them, so
    // node 3 can only catch up from a snapshot, streamed from the leader.
    for n in 0..400 {
        let key = format!("k{n:04}");
        assert_eq!(http(a, "PUT", &format!("/kv/rest/entry/{key}"), value_of(&key).as_bytes()).status, 200);
    }
    cluster.nodes[2] = Some(cluster.start(2));
    let shards = cluster.status(0)["shards"].as_array().unwrap().len();
    let committed: Vec<u64> = (0..shards)
        .map(|s| cluster.status(0)["shards"][s]["replication"]["committed"].as_u64().unwrap())
        .collect();
    wait_until("node 3 has applied every shard's log", Duration::from_secs(60), || {
        let status = cluster.status(2);
        (0..shards).all(|s| {
            status["shards"][s]["replication"]["applied"].as_u64().is_some_and(|i| i >= committed[s])
        })
    });
    let status = cluster.status(2);
    let installed: u64 = (0..shards)
        .map(|s| status["shards"][s]["replication"]["snapshots_installed"].as_u64().unwrap())
        .sum();
    let bytes: u64 = (0..shards)
        .map(|s| status["shards"][s]["replication"]["snapshot_bytes_received"].as_u64().unwrap())
        .sum();
    assert!(installed >= 1 && bytes > 0, "node 3 should catch up by streamed snapshots: {status}");
    eprintln!("node 3 installed {installed} snapshots, {bytes} bytes streamed");
    // What it serves locally (eventual reads) is everything.
    let rows =
        http(cluster.http[2], "GET", "/kv/rest/range?start=k&end=l&limit=1000&consistency=eventual", b"")
            .json();
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 400);
    for row in rows {
        let key = String::from_utf8(decode_b64(row["key"].as_str().unwrap())).unwrap();
        assert_eq!(
            String::from_utf8(decode_b64(row["value"]["bytes"].as_str().unwrap())).unwrap(),
            value_of(&key)
        );
    }
    // Its contents are the leader's: the next consistency checks match on every shard.
    wait_until("node 3 verified its digests", Duration::from_secs(30), || {
        let status = cluster.status(2);
        (0..shards).all(|s| {
            let r = &status["shards"][s]["replication"];
            assert!(r["fenced"].is_null(), "node 3 shard {s} is fenced: {r}");
            r["verified"].as_u64().is_some_and(|v| v > committed[s])
        })
    });
    // Staged copies are gone once installed. The leader may purge its log behind the checks just
    // verified and send node 3 one more snapshot, whose staging can be under way at this moment: wait
    // for it to be installed and cleared too.
    let incoming = || -> Vec<String> {
        let mut left = Vec::new();
        let mut dirs: Vec<_> =
            (0..shards).map(|s| tmp.path().join(format!("n3/shard-{s}/incoming"))).collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                left.push(entry.path().display().to_string());
                dirs.push(entry.path());
            }
        }
        left
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !incoming().is_empty() {
        assert!(std::time::Instant::now() < deadline, "staged snapshot files left behind: {:?}", incoming());
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in cluster.nodes.iter_mut().filter_map(Option::take) {
        node.stop();
    }
}

/// Writes a row into node `node`'s replica of shard 0 behind Raft's back (the node must be stopped):
/// its contents then differ from the other replicas' at the same log position.
fn corrupt_shard_0(root: &Path, node: usize) {
    let store = root.join(format!("n{node}"));
    let layout: Value = serde_json::from_slice(&std::fs::read(store.join("LAYOUT.json")).unwrap()).unwrap();
    let (start, end) =
        (layout["shards"][0][0].as_u64().unwrap() as u16, layout["shards"][0][1].as_u64().unwrap() as u16);
    let shard = store.join("shard-0");
    let newest = std::fs::read_dir(&shard)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_prefix("gen-")?.parse::<u64>().ok())
        .filter(|g| shard.join(format!("gen-{g}/CURRENT")).exists())
        .max()
        .unwrap();
    let mut config = cairn_engine::Config::new(shard.join(format!("gen-{newest}")));
    config.total_buckets = layout["total_buckets"].as_u64().unwrap() as u32;
    config.wal = false;
    let db = cairn_engine::Db::open(config, vec![start..=end]).unwrap();
    db.put(start, b"stray row written behind raft's back", 0, b"x").unwrap();
    db.flush().unwrap();
    db.close().unwrap();
}

#[test]
fn a_corrupted_replica_is_fenced_resyncs_as_a_new_incarnation_and_rejoins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    let a = cluster.http[0];
    wait_until("the first write is acknowledged", Duration::from_secs(30), || {
        try_http(a, "PUT", "/kv/rest/entry/ready", b"yes").is_ok_and(|r| r.status == 200)
    });
    for n in 0..60 {
        let key = format!("k{n:04}");
        assert_eq!(http(a, "PUT", &format!("/kv/rest/entry/{key}"), value_of(&key).as_bytes()).status, 200);
    }
    let committed = cluster.status(0)["shards"][0]["replication"]["committed"].as_u64().unwrap();
    wait_until("node 3 applied shard 0's log", Duration::from_secs(30), || {
        cluster.status(2)["shards"][0]["replication"]["applied"].as_u64().is_some_and(|i| i >= committed)
    });
    cluster.nodes[2].take().unwrap().stop();
    corrupt_shard_0(tmp.path(), 3);
    cluster.nodes[2] = Some(cluster.start(2));

    // The next consistency check (every second) finds node 3's shard 0 different: it fences itself,
    // re-syncs from scratch as incarnation 1, rejoins as a learner and is promoted back to voter.
    wait_until("node 3's shard 0 re-synced and verified", Duration::from_secs(60), || {
        let r = &cluster.status(2)["shards"][0]["replication"];
        r["incarnation"] == 1
            && r["role"] == "follower"
            && r["fenced"].is_null()
            && r["verified"].as_u64().is_some_and(|v| v > committed)
    });
    let r = cluster.status(2)["shards"][0]["replication"].clone();
    assert!(r["divergences"].as_u64().unwrap() >= 1 && r["resyncs"] == 1, "{r}");
    eprintln!("node 3 shard 0 after the re-sync: {r}");
    // Other shards were not touched: still their first incarnation.
    let status = cluster.status(2);
    for s in 1..status["shards"].as_array().unwrap().len() {
        assert_eq!(status["shards"][s]["replication"]["incarnation"], 0, "shard {s}");
    }
    // Every voter set names all three nodes again, and node 3 serves every key.
    let leader = r["leader"].as_u64().unwrap() as usize;
    let voters = &cluster.status(leader - 1)["shards"][0]["replication"]["voters"];
    assert_eq!(voters, &serde_json::json!([1, 2, 3]));
    let rows =
        http(cluster.http[2], "GET", "/kv/rest/range?start=k&end=l&limit=1000&consistency=eventual", b"")
            .json();
    assert_eq!(rows["rows"].as_array().unwrap().len(), 60);
    for node in cluster.nodes.iter_mut().filter_map(Option::take) {
        node.stop();
    }
}

/// Standard base64 (padded), decoded here so the test checks the server's encoding independently.
fn decode_b64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text:?}"),
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk.iter().filter(|&&c| c != b'=').map(|&c| value(c)).collect();
        let bits = digits.iter().fold(0u32, |acc, d| (acc << 6) | u32::from(*d)) << (6 * (4 - digits.len()));
        out.extend_from_slice(&bits.to_be_bytes()[1..digits.len()]);
    }
    out
}
