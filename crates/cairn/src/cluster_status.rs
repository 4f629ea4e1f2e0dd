//! `cairn status` against a cluster member: the cluster's nodes (with liveness as the meta group's
//! leader sees it), and every shard with its bucket ranges, epoch, replicas, leader, replica lag, size
//! and load (asked of each node over gRPC).

use cairn_proto::cluster::{StateRequest, cluster_client::ClusterClient};
use cairn_server::Role;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long each node may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One node's view of one of its shard replicas.
struct Reported {
    role: Option<Role>,
    /// The leader it knows of (0: none).
    leader: u64,
    /// Entries each follower is behind (as a leader sees it).
    lag: BTreeMap<u64, u64>,
    /// Followers whose replication has stalled (as a leader sees it).
    stalled: Vec<u64>,
    /// Live bytes, as the replica estimates them.
    bytes: u64,
    /// Requests per second this node routed to the shard.
    qps: f64,
}

/// One node's view of its shard replicas, by shard id.
type Replicas = BTreeMap<u32, Reported>;

async fn node_replicas(addr: &str) -> Option<Replicas> {
    let ask = async {
        let mut client = cairn_client::Client::connect(addr).await.ok()?;
        let status = client.status().await.ok()?;
        let replicas = status
            .shards
            .into_iter()
            .filter_map(|s| {
                let r = s.replication?;
                // A role this version does not know counts as not leading.
                let role = r.role.parse::<Role>().ok();
                let reported = Reported {
                    role,
                    leader: r.leader,
                    lag: r.lag.into_iter().collect(),
                    stalled: r.stalled,
                    bytes: s.live_bytes,
                    qps: s.requests_per_sec,
                };
                Some((s.shard, reported))
            })
            .collect();
        Some(replicas)
    };
    tokio::time::timeout(CALL_TIMEOUT, ask).await.ok().flatten()
}

/// The cluster's status as JSON and as text, or `None` if the node at `addr` is not a cluster member
/// (a standalone or `--peers` node: the caller shows the node's own status).
pub async fn cluster_status(addr: &str) -> Result<Option<(Value, String)>, String> {
    let mut client = match ClusterClient::connect(format!("http://{addr}")).await {
        Ok(c) => c,
        Err(e) => return Err(format!("cannot reach {addr}: {e}")),
    };
    let reply = match client.state(StateRequest { linearizable: false, forwarded: false }).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(s) => return Err(format!("cluster state: {}", s.message())),
    };
    if reply.state_json.is_empty() {
        let text = format!("the node at {addr} is not a cluster member yet (run `cairn init` on one node)");
        return Ok(Some((json!({"member": false}), text)));
    }
    let state: Value =
        serde_json::from_slice(&reply.state_json).map_err(|e| format!("undecodable cluster state: {e}"))?;
    let liveness: BTreeMap<u64, (bool, Option<u64>)> =
        reply.liveness.iter().map(|l| (l.node_id, (l.up, l.heard_ms_ago))).collect();
    let mut nodes = Vec::new();
    let mut views = BTreeMap::new();
    let empty = serde_json::Map::new();
    for (id, node) in state["nodes"].as_object().unwrap_or(&empty) {
        let Ok(id) = id.parse::<u64>() else { continue };
        let grpc = node["grpc_addr"].as_str().unwrap_or_default().to_string();
        let active = node["state"] == "Active";
        let view = if active { node_replicas(&grpc).await } else { None };
        let (up, heard) = liveness.get(&id).copied().map_or((None, None), |(up, ago)| (Some(up), ago));
        nodes.push(json!({
            "id": id, "grpc": grpc, "http": node["http_addr"], "state": node["state"],
            "up": up, "heard_ms_ago": heard, "answered": view.is_some(),
        }));
        if let Some(view) = view {
            views.insert(id, view);
        }
    }
    let mut shards = Vec::new();
    for shard in state["map"]["shards"].as_array().into_iter().flatten() {
        let id = shard["id"].as_u64().unwrap_or(0) as u32;
        let replicas: Vec<u64> =
            shard["replicas"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
        let reported = replicas.iter().filter_map(|n| views.get(n).and_then(|v| v.get(&id)).map(|r| (*n, r)));
        let mut leader = 0;
        let mut lag = BTreeMap::new();
        let mut stalled = Vec::new();
        let (mut bytes, mut qps) = (None, 0.0);
        for (node, r) in reported {
            qps += r.qps;
            if r.role == Some(Role::Leader) {
                leader = node;
                lag = r.lag.clone();
                stalled = r.stalled.clone();
                bytes = Some(r.bytes);
            } else if leader == 0 {
                leader = r.leader;
            }
        }
        // Replicas on nodes the meta leader does not hear from: the shard runs with fewer copies.
        let down: Vec<u64> =
            replicas.iter().copied().filter(|n| liveness.get(n).is_some_and(|(up, _)| !up)).collect();
        shards.push(json!({
            "id": id, "ranges": shard["ranges"], "epoch": shard["epoch"], "generation": shard["generation"],
            "replicas": replicas,
            "leader": leader, "lag": lag, "down_replicas": down, "stalled": stalled,
            "moving": shard["moving"], "live_bytes": bytes, "requests_per_sec": (qps * 10.0).round() / 10.0,
        }));
    }
    let json = json!({
        "cluster_id": state["cluster_id"], "version": state["version"], "meta_leader": reply.meta_leader,
        "answered_by": reply.node_id, "settings": state["settings"], "nodes": nodes, "shards": shards,
    });
    Ok(Some((json.clone(), render(&json))))
}

fn render(s: &Value) -> String {
    let mut text = format!(
        "cluster {} (state version {}, meta leader node {})\n",
        s["cluster_id"].as_str().unwrap_or("?"),
        s["version"],
        s["meta_leader"]
    );
    text.push_str("node  grpc                   http                   state    up");
    for n in s["nodes"].as_array().into_iter().flatten() {
        let up = match n["up"].as_bool() {
            Some(true) => "yes".to_string(),
            Some(false) => match n["heard_ms_ago"].as_u64() {
                Some(ms) => format!("NO (last heard {ms} ms ago)"),
                None => "NO (never heard)".to_string(),
            },
            None => "?".to_string(),
        };
        text.push_str(&format!(
            "\n{:>4}  {:<21}  {:<21}  {:<7}  {up}",
            n["id"].to_string(),
            n["grpc"].as_str().unwrap_or_default(),
            n["http"].as_str().unwrap_or_default(),
            n["state"].as_str().unwrap_or_default(),
        ));
    }
    text.push_str(
        "\n\nshard  buckets      epoch  replicas  leader      size   req/s  lag (entries behind the leader)",
    );
    for sh in s["shards"].as_array().into_iter().flatten() {
        let ranges: Vec<String> =
            (sh["ranges"].as_array().into_iter().flatten()).map(|r| format!("{}..={}", r[0], r[1])).collect();
        let buckets = ranges.join(",");
        let replicas: Vec<String> =
            sh["replicas"].as_array().into_iter().flatten().map(ToString::to_string).collect();
        let lag: Vec<String> = sh["lag"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(node, entries)| format!("{node}:{entries}"))
            .collect();
        let leader = match sh["leader"].as_u64() {
            Some(0) | None => "none".to_string(),
            Some(l) => l.to_string(),
        };
        let down: Vec<String> =
            sh["down_replicas"].as_array().into_iter().flatten().map(ToString::to_string).collect();
        let mut lag = lag.join(" ");
        if !down.is_empty() {
            lag.push_str(&format!("  UNDER-REPLICATED: node {} down", down.join(",")));
        }
        let stalled: Vec<String> =
            sh["stalled"].as_array().into_iter().flatten().map(ToString::to_string).collect();
        if !stalled.is_empty() {
            lag.push_str(&format!("  STALLED: replication to node {}", stalled.join(",")));
        }
        if let (Some(from), Some(to)) = (sh["moving"]["from"].as_u64(), sh["moving"]["to"].as_u64()) {
            lag.push_str(&format!("  MOVING: node {from} -> node {to}"));
        }
        let size = sh["live_bytes"].as_u64().map_or_else(|| "?".to_string(), human_bytes);
        text.push_str(&format!(
            "\n{:>5}  {:<11}  {:>5}  {:<8}  {:>6}  {:>8}  {:>6}  {}",
            sh["id"].to_string(),
            buckets,
            sh["epoch"].to_string(),
            replicas.join(","),
            leader,
            size,
            sh["requests_per_sec"].as_f64().unwrap_or(0.0).round(),
            lag
        ));
    }
    text
}

/// `bytes` in B, KiB, MiB or GiB, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
