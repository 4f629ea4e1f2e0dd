//! `cairn demo --nodes N` (N > 1): a local cluster of N `cairn start --join` child processes on
//! consecutive loopback ports, initialised and waited for, then stopped together.
//!
//! Each child runs with `--exit-with-stdin`: it shuts down cleanly when its standard input closes, so
//! the demo stops its nodes by dropping their stdin (on Ctrl-C, SIGTERM, or when one node dies), and a
//! demo killed outright takes its nodes with it instead of leaving them running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the demo waits for its nodes to listen, for init, and for every node to serve keys.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What the demo runs.
pub struct DemoCluster {
    /// Nodes to run (at least 2).
    pub nodes: usize,
    /// Shards the cluster is split into.
    pub shards: u32,
    /// Data root: node `i` keeps its store in `<root>/node-<i>`.
    pub root: PathBuf,
    /// Node 1's addresses; node `i` listens on the ports `i - 1` above them.
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The children's `--log-level`.
    pub log_level: String,
    /// Acknowledge writes before fsync.
    pub no_sync: bool,
}

struct Node {
    child: Child,
    http: SocketAddr,
}

fn offset(addr: SocketAddr, by: usize) -> Result<SocketAddr, String> {
    let port = usize::from(addr.port()) + by;
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

impl DemoCluster {
    /// Runs the demo until `shutdown` resolves or a node dies; `on_ready` gets node 1's addresses and
    /// every node's (HTTP, gRPC) pair once all serve keys.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
        on_ready: impl FnOnce(&[(SocketAddr, SocketAddr)]),
    ) -> Result<(), String> {
        if self.http.port() == 0 || self.grpc.port() == 0 {
            return Err("a demo cluster needs fixed ports (node i listens i-1 ports above node 1)".into());
        }
        let addrs: Vec<(SocketAddr, SocketAddr)> = (0..self.nodes)
            .map(|i| Ok((offset(self.http, i)?, offset(self.grpc, i)?)))
            .collect::<Result<_, String>>()?;
        let join: Vec<String> = addrs.iter().map(|(_, g)| g.to_string()).collect();
        let join = join.join(",");
        let mut nodes = Vec::with_capacity(self.nodes);
        for (i, (http, grpc)) in addrs.iter().enumerate() {
            match self.spawn(i + 1, *http, *grpc, &join) {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    // The start-up error is the one to report.
                    let _ = stop_all(&mut nodes);
                    return Err(e);
                }
            }
        }
        let started = async {
            self.init(addrs[0].1).await?;
            for (_, grpc) in &addrs {
                wait_serving(*grpc).await?;
            }
            Ok::<_, String>(())
        };
        let watched = watch_children(&mut nodes, shutdown, started, on_ready, &addrs).await;
        let stopped = stop_all(&mut nodes);
        watched.and(stopped)
    }

    fn spawn(&self, i: usize, http: SocketAddr, grpc: SocketAddr, join: &str) -> Result<Node, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the cairn binary: {e}"))?;
        let store = self.root.join(format!("node-{i}"));
        let mut command = Command::new(exe);
        command
            .args(["start", "--exit-with-stdin", "--log-level", &self.log_level])
            .arg("--store")
            .arg(&store)
            .args(["--http-addr", &http.to_string(), "--grpc-addr", &grpc.to_string(), "--join", join])
            .env_remove("CAIRN_STORE")
            .env_remove("CAIRN_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.no_sync {
            command.arg("--no-sync");
        }
        let mut child = command.spawn().map_err(|e| format!("cannot start node {i}: {e}"))?;
        // The child's first line says it listens (or it exits with the reason on stderr).
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        if !line.starts_with("cairn listening") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "node {i} did not start on {http} and {grpc} (are the ports in use? see its error above)"
            ));
        }
        Ok(Node { child, http })
    }

    /// Makes the cluster at node 1 (a demo restarted on its old data finds it made already).
    async fn init(&self, grpc: SocketAddr) -> Result<(), String> {
        use cairn_proto::cluster::{InitRequest, cluster_client::ClusterClient};
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let attempt = async {
                let mut client =
                    ClusterClient::connect(format!("http://{grpc}")).await.map_err(|e| e.to_string())?;
                let request = InitRequest {
                    replication_factor: self.nodes.min(3) as u32,
                    shards: self.shards,
                    total_buckets: 0,
                    dead_after_secs: 0,
                    no_rebalance: false,
                    max_clock_offset_ms: 0,
                };
                match client.init(request).await {
                    Ok(_) => Ok(true),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(true),
                    Err(s) if s.code() == tonic::Code::Unavailable => Ok(false),
                    Err(s) => Err(format!("init refused: {}", s.message())),
                }
            };
            match attempt.await {
                Ok(true) => return Ok(()),
                Err(e) if e.starts_with("init refused") => return Err(e),
                _ if Instant::now() > deadline => return Err(format!("node 1 at {grpc} did not take init")),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Waits until the node at `grpc` serves keys: its KV status answers, and every shard replica it holds
/// knows its shard's leader (so the first requests do not wait out an election: a group whose first
/// candidate asked before its peers were up elects a leader only an election timeout later).
async fn wait_serving(grpc: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut client) = cairn_client::Client::connect(&grpc.to_string()).await
            && let Ok(status) = client.status().await
            && status.shards.iter().all(|s| s.replication.as_ref().is_none_or(|r| r.leader != 0))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the node at {grpc} did not start serving keys (every shard led) in {START_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `started`, reports readiness, then waits for `shutdown`; a node that exits on its own ends the
/// wait with an error.
async fn watch_children(
    nodes: &mut [Node],
    shutdown: impl std::future::Future<Output = ()>,
    started: impl std::future::Future<Output = Result<(), String>>,
    on_ready: impl FnOnce(&[(SocketAddr, SocketAddr)]),
    addrs: &[(SocketAddr, SocketAddr)],
) -> Result<(), String> {
    tokio::pin!(shutdown);
    tokio::select! {
        r = started => r?,
        () = &mut shutdown => return Ok(()),
    }
    on_ready(addrs);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(format!("node {} ({}) exited with {status}", i + 1, node.http));
            }
        }
    }
}

/// Closes every node's stdin (each then shuts down cleanly) and waits for them, killing any that
/// outlast [`STOP_TIMEOUT`].
fn stop_all(nodes: &mut Vec<Node>) -> Result<(), String> {
    for node in nodes.iter_mut() {
        drop(node.child.stdin.take());
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut failed = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let status = loop {
            match node.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => failed.push(format!("node {} exited with {s}", i + 1)),
            None => failed.push(format!("node {} did not stop in {STOP_TIMEOUT:?} and was killed", i + 1)),
        }
    }
    nodes.clear();
    if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
}

/// The demo's banner: endpoints and lines that work as printed.
pub fn banner(nodes: &[(SocketAddr, SocketAddr)], root: &Path) -> String {
    let (http, grpc) = nodes[0];
    let base = format!("http://{http}");
    let mut text =
        format!("cairn demo is running a {}-node cluster, data in {}:\n", nodes.len(), root.display());
    for (i, (h, g)) in nodes.iter().enumerate() {
        text.push_str(&format!("  node {}: HTTP http://{h}, gRPC {g}\n", i + 1));
    }
    let other = nodes.get(1).map_or(http, |(h, _)| *h);
    text.push_str(&format!(
        "\nTry it (any node serves any key; Ctrl-C stops every node, the data stays for next time):\n\
         \x20 curl -X POST -d 'Hello' {base}/kv/rest/entry/Cockroach\n\
         \x20 curl http://{other}/kv/rest/entry/Cockroach\n\
         \x20 curl '{base}/kv/rest/range?start=Ca&end=Cozz&limit=10'\n\
         \x20 curl -X DELETE {base}/kv/rest/entry/Cockroach\n\
         \x20 curl {base}/_status\n\
         \x20 cairn kv put greeting hello --addr {grpc}\n\
         \x20 cairn kv get greeting --addr {}\n\
         \x20 cairn status --addr {grpc}\n",
        nodes.get(1).map_or(grpc, |(_, g)| *g)
    ));
    text
}
