//! Request metrics and the Prometheus text exposition (`/metrics`).

use crate::node::Node;
use cairn_cluster::raft::GroupStatus;
use cairn_cluster::raft::Role;
use cairn_engine::MetricsSnapshot;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counts and latencies of one route and method, updated without locks.
struct RouteStats {
    // By status code (100..=599).
    statuses: Box<[AtomicU64]>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    nanos: AtomicU64,
}

/// Lowest HTTP status code counted; codes outside `FIRST_STATUS..FIRST_STATUS + STATUSES` count as 599.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

impl RouteStats {
    fn new() -> RouteStats {
        RouteStats {
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }
}

/// Counters and latency histograms per route and method. Recording a request takes a shared read
/// lock and a few atomic adds (a route and method seen for the first time also an exclusive lock and
/// an allocation); rendering reads the same counters.
#[derive(Default)]
pub struct HttpMetrics {
    // Route → method → stats. Routes are the router's matched paths and methods a handful: bounded.
    routes: RwLock<HashMap<String, HashMap<String, Arc<RouteStats>>>>,
}

impl HttpMetrics {
    fn stats(&self, route: &str, method: &str) -> Arc<RouteStats> {
        if let Some(stats) = self.routes.read().get(route).and_then(|m| m.get(method)) {
            return Arc::clone(stats);
        }
        let mut routes = self.routes.write();
        let methods = routes.entry(route.to_string()).or_default();
        Arc::clone(methods.entry(method.to_string()).or_insert_with(|| Arc::new(RouteStats::new())))
    }

    /// Records one request.
    pub fn record(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let stats = self.stats(route, method);
        let slot = usize::from(status.saturating_sub(FIRST_STATUS)).min(STATUSES - 1);
        stats.statuses[slot].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                stats.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats.nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Every route and method recorded, in order, with its stats.
    fn sorted(&self) -> Vec<(String, String, Arc<RouteStats>)> {
        let routes = self.routes.read();
        let mut out: Vec<_> = routes
            .iter()
            .flat_map(|(route, methods)| {
                methods.iter().map(move |(method, stats)| (route.clone(), method.clone(), Arc::clone(stats)))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text format of the request metrics and the engine gauges of every shard.
pub fn render(http: &HttpMetrics, node: &Node) -> String {
    let mut out = String::new();
    out.push_str("# HELP cairn_http_requests_total HTTP requests by route, method and status.\n");
    out.push_str("# TYPE cairn_http_requests_total counter\n");
    let routes = http.sorted();
    for (route, method, stats) in &routes {
        for (slot, n) in stats.statuses.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let status = usize::from(FIRST_STATUS) + slot;
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
    }
    out.push_str("# HELP cairn_http_request_duration_seconds HTTP request latency by route and method.\n");
    out.push_str("# TYPE cairn_http_request_duration_seconds histogram\n");
    for (route, method, stats) in &routes {
        let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                stats.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = stats.count.load(Ordering::Relaxed);
        let sum = stats.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "cairn_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "cairn_http_request_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "cairn_http_request_duration_seconds_count{{{labels}}} {count}");
    }
    let shards = node.engine_metrics();
    let gauge =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&MetricsSnapshot) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (shard, m) in &shards {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(m));
            }
        };
    gauge(&mut out, "cairn_engine_memtable_bytes", "gauge", "Bytes in memtables.", &|m| {
        m.memtable_bytes.to_string()
    });
    gauge(&mut out, "cairn_engine_sst_bytes", "gauge", "Bytes in SST files.", &|m| {
        m.level_bytes.iter().sum::<u64>().to_string()
    });
    gauge(&mut out, "cairn_engine_compactions_total", "counter", "Compactions run.", &|m| {
        m.compactions.to_string()
    });
    gauge(&mut out, "cairn_engine_flushes_total", "counter", "Memtable flushes.", &|m| m.flushes.to_string());
    gauge(&mut out, "cairn_engine_wal_syncs_total", "counter", "WAL fsyncs.", &|m| m.wal_syncs.to_string());
    gauge(&mut out, "cairn_engine_write_stalls_total", "counter", "Write stalls.", &|m| m.stalls.to_string());
    gauge(&mut out, "cairn_engine_block_cache_hit_ratio", "gauge", "Block cache hits / lookups.", &|m| {
        let total = m.block_cache_hits + m.block_cache_misses;
        if total == 0 { "0".to_string() } else { format!("{:.4}", m.block_cache_hits as f64 / total as f64) }
    });
    let _ = writeln!(
        out,
        "# HELP cairn_engine_level_files SST files per level.\n# TYPE cairn_engine_level_files gauge"
    );
    for (s, m) in &shards {
        for (level, n) in m.level_files.iter().enumerate() {
            let _ = writeln!(out, "cairn_engine_level_files{{shard=\"{s}\",level=\"{level}\"}} {n}");
        }
    }
    render_shard_load(&mut out, node);
    render_replication(&mut out, node);
    out
}

/// Each shard's live bytes and the requests per second this node served for it (what automatic
/// splits and merges go by).
fn render_shard_load(out: &mut String, node: &Node) {
    let status = node.status();
    let _ = writeln!(
        out,
        "# HELP cairn_shard_live_bytes Bytes of live data in the buckets the shard owns, about.\n\
         # TYPE cairn_shard_live_bytes gauge"
    );
    for s in &status {
        let _ = writeln!(out, "cairn_shard_live_bytes{{shard=\"{}\"}} {}", s.shard, s.live_bytes);
    }
    let _ = writeln!(
        out,
        "# HELP cairn_shard_requests_per_second Requests this node served for the shard, per second, \
         smoothed over 10 s.\n# TYPE cairn_shard_requests_per_second gauge"
    );
    for s in &status {
        let _ = writeln!(
            out,
            "cairn_shard_requests_per_second{{shard=\"{}\"}} {:.3}",
            s.shard, s.requests_per_sec
        );
    }
}

/// A per-group metric: name, kind, help, and its value for (leader changes seen, status).
type Series<'a> = (&'static str, &'static str, &'static str, &'a dyn Fn(u64, &GroupStatus) -> String);

/// How the transactions this node coordinated ended.
fn render_txns(out: &mut String, node: &Node) {
    let stats = node.txn_stats();
    let _ = writeln!(
        out,
        "# HELP cairn_txn_commits_total Transactions this node coordinated that committed, by how.\n\
         # TYPE cairn_txn_commits_total counter"
    );
    for (path, n) in
        [("one_phase", &stats.one_phase), ("intents", &stats.with_intents), ("read_only", &stats.read_only)]
    {
        let _ = writeln!(out, "cairn_txn_commits_total{{path=\"{path}\"}} {}", n.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP cairn_txn_retries_total Transactions this node coordinated that a conflict rolled back.\n\
         # TYPE cairn_txn_retries_total counter\ncairn_txn_retries_total {}",
        stats.retries.load(Ordering::Relaxed)
    );
}

/// Per-group Raft metrics of a replicated node, and its transactions (nothing for a standalone one).
fn render_replication(out: &mut String, node: &Node) {
    let Some(syncs) = node.raft_log_syncs() else { return };
    render_txns(out, node);
    let _ = writeln!(
        out,
        "# HELP cairn_raft_log_syncs_total Fsyncs of the node's Raft log (shared by every group).\n\
         # TYPE cairn_raft_log_syncs_total counter\ncairn_raft_log_syncs_total {syncs}"
    );
    let groups: Vec<(u64, GroupStatus, u64)> =
        node.group_statuses().into_iter().filter_map(|(s, g, changes)| Some((s, g?, changes))).collect();
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let series: [Series<'_>; 13] = [
        ("cairn_raft_is_leader", "gauge", "1 if this node leads the shard's group.", &|_, g| {
            u8::from(g.role == Role::Leader).to_string()
        }),
        ("cairn_raft_leader", "gauge", "The leader's node id (0: none known).", &|_, g| {
            g.leader.unwrap_or(0).to_string()
        }),
        ("cairn_raft_term", "gauge", "Current term (each election raises it).", &|_, g| g.term.to_string()),
        ("cairn_raft_leader_changes_total", "counter", "Leader changes seen since start.", &|changes, _| {
            changes.to_string()
        }),
        ("cairn_raft_committed_index", "gauge", "Last committed log index (-1: none).", &|_, g| {
            opt(g.committed)
        }),
        ("cairn_raft_applied_index", "gauge", "Last applied log index (-1: none).", &|_, g| opt(g.applied)),
        ("cairn_raft_snapshots_installed_total", "counter", "Snapshots installed from a leader.", &|_, g| {
            g.snapshots_installed.to_string()
        }),
        (
            "cairn_raft_snapshot_bytes_received_total",
            "counter",
            "Snapshot bytes fetched from leaders.",
            &|_, g| g.snapshot_bytes_received.to_string(),
        ),
        ("cairn_raft_divergences_total", "counter", "Consistency checks whose digest differed.", &|_, g| {
            g.checks.divergences.to_string()
        }),
        (
            "cairn_raft_verified_index",
            "gauge",
            "The last check entry whose digest matched the majority's here (-1: none).",
            &|_, g| opt(g.checks.verified),
        ),
        ("cairn_raft_fenced", "gauge", "1 while a failed consistency check fences this replica.", &|_, g| {
            u8::from(g.checks.fenced.is_some()).to_string()
        }),
        (
            "cairn_raft_incarnation",
            "gauge",
            "This replica's incarnation (grows at each re-sync).",
            &|_, g| g.incarnation.to_string(),
        ),
        ("cairn_raft_resyncs_total", "counter", "Re-syncs from scratch since the node started.", &|_, g| {
            g.resyncs.to_string()
        }),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (s, g, changes) in &groups {
            let _ = writeln!(out, "{name}{{shard=\"{s}\"}} {}", value(*changes, g));
        }
    }
    let _ = writeln!(
        out,
        "# HELP cairn_raft_replica_lag Entries a member lags the leader's log (on the leader).\n\
         # TYPE cairn_raft_replica_lag gauge"
    );
    for (s, g, _) in &groups {
        for (member, lag) in &g.lag {
            let _ = writeln!(out, "cairn_raft_replica_lag{{shard=\"{s}\",member=\"{member}\"}} {lag}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP cairn_raft_replication_stalled 1 while a member answers heartbeats but has taken no entry \
         for {} s though it lags (on the leader).\n# TYPE cairn_raft_replication_stalled gauge",
        cairn_cluster::raft::STALL_AFTER.as_secs()
    );
    for (s, g, _) in &groups {
        for member in g.lag.keys() {
            let stalled = u8::from(g.stalled.contains(member));
            let _ = writeln!(
                out,
                "cairn_raft_replication_stalled{{shard=\"{s}\",member=\"{member}\"}} {stalled}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_route_method_and_status() {
        let m = HttpMetrics::default();
        m.record("/kv/rest/range", "GET", 200, Duration::from_millis(2));
        m.record("/kv/rest/range", "GET", 200, Duration::from_secs(20));
        m.record("/kv/rest/range", "GET", 503, Duration::from_millis(2));
        m.record("/health", "GET", 999, Duration::ZERO);
        let routes = m.sorted();
        let names: Vec<_> = routes.iter().map(|(r, method, _)| (r.as_str(), method.as_str())).collect();
        assert_eq!(names, [("/health", "GET"), ("/kv/rest/range", "GET")]);
        let range = &routes[1].2;
        let status = |code: usize| range.statuses[code - 100].load(Ordering::Relaxed);
        assert_eq!((status(200), status(503)), (2, 1));
        assert_eq!(range.count.load(Ordering::Relaxed), 3);
        // 2 ms falls in the 2.5 ms bucket and above; 20 s in none.
        assert_eq!(range.buckets[2].load(Ordering::Relaxed), 2);
        assert_eq!(range.buckets[BUCKETS.len() - 1].load(Ordering::Relaxed), 2);
        assert_eq!(routes[0].2.statuses[STATUSES - 1].load(Ordering::Relaxed), 1, "out of range: 599");
    }
}
