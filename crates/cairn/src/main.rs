//! The `cairn` binary: `cairn start` runs a node, `cairn demo` runs a ready-to-use local database.
//!
//! Settings come from, in rising precedence: defaults, a TOML file (`--config`), `CAIRN_*` environment
//! variables, and flags.

use cairn_server::node::NodeConfig;
use cairn_server::{ServerConfig, serve, shutdown_signal};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The server allocates and frees many small buffers per request across threads (gRPC frames, Raft
/// entries, rows); glibc's allocator took ~19% of a cluster node's CPU under a put load, mimalloc's
/// thread-local free lists do the same work for much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod cluster_status;
mod demo;
mod shards;
mod txn;

use shards::ShardsCommand;

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "cairn: a replicated, sharded key-value database")]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, env = "CAIRN_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node serving the store in --store.
    Start(StartArgs),
    /// Run a ready-to-use local database in ./cairn-demo-data and print how to talk to it.
    Demo(DemoArgs),
    /// Read and write keys on a running node (over gRPC).
    Kv(KvArgs),
    /// Run a few reads, writes and deletes as one transaction on a running cluster node (over gRPC).
    Txn(txn::TxnArgs),
    /// Show a cluster's nodes (with liveness) and shards (ranges, epochs, replicas, leaders, lag), or a
    /// standalone node's store and shards (over gRPC).
    Status(ClientArgs),
    /// Make a new cluster whose first member is the node at --addr (started with --join).
    Init(InitArgs),
    /// Change a cluster's shards (over gRPC, through any member).
    #[command(subcommand)]
    Shards(ShardsCommand),
    /// Show or change a cluster's settings (over gRPC, through any member).
    #[command(subcommand)]
    Settings(shards::SettingsCommand),
    /// Hold garbage collection back at a timestamp on every shard (over gRPC, through any member).
    #[command(subcommand)]
    Protect(shards::ProtectCommand),
    /// Back up the whole cluster at one timestamp, and list, show, verify and delete backups (over
    /// gRPC, through any member).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Restore a backup into a running cluster of any size (empty, unless --overwrite), through any
    /// member; prints progress.
    Restore(backup::RestoreArgs),
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Replicas per shard (1 to 7; 3 advised). The shards are placed once this many nodes have joined.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Shards the bucket space is split into.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Size of the bucket space.
    #[arg(long, default_value_t = 1024)]
    total_buckets: u32,
    /// Seconds a node may go unheard before its replicas are re-created on other nodes.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    dead_after_secs: u64,
    /// Never move replicas onto nodes that hold fewer than others (by default a node that joins later,
    /// or comes back after its replicas moved away, receives replicas until the load is even).
    #[arg(long)]
    no_rebalance: bool,
    /// How far ahead of a node's clock, in milliseconds, a timestamp from a client or another node may
    /// be; further is refused (REST 400, gRPC OUT_OF_RANGE) and never moves a clock.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    max_clock_offset_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// The node's gRPC address.
    #[arg(long, global = true, env = "CAIRN_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Print JSON (keys and values base64) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Debug)]
struct KvArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand, Debug)]
enum KvOp {
    /// Write VALUE as KEY's newest version.
    Put { key: String, value: String },
    /// Print KEY's value (exit status 1 if it has none).
    Get {
        key: String,
        /// Read the newest version at or below WALL[.LOGICAL].
        #[arg(long)]
        timestamp: Option<String>,
    },
    /// Delete KEY (exit status 1 if it had no value).
    Del { key: String },
    /// Print the live keys in [START, END) in key order.
    Scan {
        #[arg(long, default_value = "")]
        start: String,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// TOML file with any of the settings below (flags and CAIRN_* variables override it).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "CAIRN_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// gRPC listen address.
    #[arg(long, env = "CAIRN_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Shards a new store is split into.
    #[arg(long, env = "CAIRN_SHARDS")]
    shards: Option<usize>,
    /// Acknowledge writes before they are fsynced (they still survive a process crash, not power loss).
    #[arg(long, env = "CAIRN_NO_SYNC")]
    no_sync: bool,
    /// Largest key accepted, in bytes (default 16384, at most 32000).
    #[arg(long, env = "CAIRN_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    /// Largest value accepted, in bytes (default 1048576).
    #[arg(long, env = "CAIRN_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Largest gRPC message sent or accepted, from clients and peers, in bytes (default 16777216; the
    /// same on every node of a cluster; the largest key and value must fit in one).
    #[arg(long, env = "CAIRN_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Bytes of keys and values one range page holds at most (default 4194304; at least one row goes,
    /// and the page names where the next one starts).
    #[arg(long, env = "CAIRN_MAX_SCAN_BYTES")]
    max_scan_bytes: Option<usize>,
    /// How far ahead of this node's clock a client's timestamp may be, in milliseconds (default 500;
    /// a cluster member takes its cluster's setting, `cairn init --max-clock-offset-ms`).
    #[arg(long, env = "CAIRN_MAX_CLOCK_OFFSET_MS")]
    max_clock_offset_ms: Option<u64>,
    /// HTTP connections served at once (default 1024; more wait in the listen backlog).
    #[arg(long, env = "CAIRN_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
    /// An HTTP request's head must arrive whole within this many milliseconds of the connection
    /// waiting for it; also how long a kept-alive connection may sit idle (default 10000).
    #[arg(long, env = "CAIRN_HTTP_HEADER_READ_TIMEOUT_MS")]
    http_header_read_timeout_ms: Option<u64>,
    /// How long old versions stay readable, in seconds.
    #[arg(long, env = "CAIRN_GC_TTL_SECS")]
    gc_ttl_secs: Option<u64>,
    /// This node's id in a replicated group (with --peers; never reuse one).
    #[arg(long, env = "CAIRN_NODE_ID")]
    node_id: Option<u64>,
    /// Every member's gRPC address, this node's included: ID=HOST:PORT,... Every shard gets a replica on
    /// each member (the replication factor is their count: 1, 3 or 5).
    #[arg(long, env = "CAIRN_PEERS")]
    peers: Option<String>,
    /// Seconds between consistency checks of each replicated shard (0: none).
    #[arg(long, env = "CAIRN_CHECK_INTERVAL_SECS")]
    check_interval_secs: Option<u64>,
    /// Replicated shards take a Raft snapshot after this many log entries.
    #[arg(long, env = "CAIRN_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot (a follower further behind gets the snapshot).
    #[arg(long, env = "CAIRN_LOG_KEEP")]
    log_keep: Option<u64>,
    /// Run as a cluster member: the gRPC addresses of members to join through (HOST:PORT,...; this
    /// node's own may be among them, so every node can be given the same list). A new cluster starts
    /// with `cairn init` on one node.
    #[arg(long, env = "CAIRN_JOIN")]
    join: Option<String>,
    /// The cluster this node must belong to (refuse any other).
    #[arg(long, env = "CAIRN_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// The gRPC address other nodes and clients reach this node at (default: --grpc-addr).
    #[arg(long, env = "CAIRN_ADVERTISE_GRPC_ADDR")]
    advertise_grpc_addr: Option<String>,
    /// The HTTP address clients reach this node at (default: --http-addr).
    #[arg(long, env = "CAIRN_ADVERTISE_HTTP_ADDR")]
    advertise_http_addr: Option<String>,
}

#[derive(Args, Debug)]
struct StartArgs {
    /// The store directory (created if missing).
    #[arg(long, env = "CAIRN_STORE")]
    store: Option<PathBuf>,
    /// Also shut down cleanly when standard input closes (how `cairn demo` runs its nodes).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
    /// A standalone node: before serving, restore the backup --backup at this URL into the (empty)
    /// store; a later start with the same flags finds it restored and serves. (A cluster restores with
    /// `cairn restore`.)
    #[arg(long, requires = "backup")]
    restore_from: Option<String>,
    /// The backup --restore-from restores.
    #[arg(long, requires = "restore_from")]
    backup: Option<u64>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Where the demo keeps its data.
    #[arg(long, env = "CAIRN_STORE", default_value = "cairn-demo-data")]
    store: PathBuf,
    /// Nodes to run: 1 runs one standalone node in this process; more run a local cluster of that many
    /// processes on consecutive ports (node i on the HTTP and gRPC ports i-1 above node 1's).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    #[command(flatten)]
    node: NodeArgs,
}

/// The TOML file's shape: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    shards: Option<usize>,
    sync: Option<bool>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_message_bytes: Option<usize>,
    max_scan_bytes: Option<usize>,
    max_clock_offset_ms: Option<u64>,
    http_max_connections: Option<usize>,
    http_header_read_timeout_ms: Option<u64>,
    gc_ttl_secs: Option<u64>,
    node_id: Option<u64>,
    peers: Option<String>,
    check_interval_secs: Option<u64>,
    snapshot_every: Option<u64>,
    log_keep: Option<u64>,
    join: Option<String>,
    cluster_id: Option<String>,
    advertise_grpc_addr: Option<String>,
    advertise_http_addr: Option<String>,
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

fn build_config(store: Option<PathBuf>, args: &NodeArgs) -> Result<ServerConfig, String> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let store = store
        .or(file.store)
        .ok_or("no store: pass --store <dir> (or CAIRN_STORE, or `store` in --config)")?;
    let mut node = NodeConfig::new(store);
    if let Some(n) = args.shards.or(file.shards) {
        if n == 0 || n > 1024 {
            return Err(format!("--shards must be 1..=1024, got {n}"));
        }
        node.shards = n;
    }
    node.sync = !args.no_sync && file.sync.unwrap_or(true);
    if let Some(n) = args.max_key_bytes.or(file.max_key_bytes) {
        node.max_key_bytes = n;
    }
    if let Some(n) = args.max_value_bytes.or(file.max_value_bytes) {
        node.max_value_bytes = n;
    }
    if let Some(n) = args.max_message_bytes.or(file.max_message_bytes) {
        node.max_message_bytes = n;
    }
    if let Some(n) = args.max_scan_bytes.or(file.max_scan_bytes) {
        node.max_scan_bytes = n;
    }
    if let Some(ms) = args.max_clock_offset_ms.or(file.max_clock_offset_ms) {
        node.max_clock_offset = Duration::from_millis(ms);
    }
    node.validate().map_err(|e| e.to_string())?;
    let mut http = cairn_server::http_server::HttpLimits::default();
    if let Some(n) = args.http_max_connections.or(file.http_max_connections) {
        if n == 0 {
            return Err("--http-max-connections must be at least 1".into());
        }
        http.max_connections = n;
    }
    if let Some(ms) = args.http_header_read_timeout_ms.or(file.http_header_read_timeout_ms) {
        if ms == 0 {
            return Err("--http-header-read-timeout-ms must be at least 1".into());
        }
        http.header_read_timeout = Duration::from_millis(ms);
    }
    if let Some(s) = args.gc_ttl_secs.or(file.gc_ttl_secs) {
        node.gc_ttl = Duration::from_secs(s);
    }
    let mut grpc_addr = args.grpc_addr.or(file.grpc_addr);
    match (args.node_id.or(file.node_id), args.peers.as_ref().or(file.peers.as_ref())) {
        (None, None) => {}
        (Some(id), Some(peers)) => {
            let members =
                cairn_server::replicated::parse_members(peers).map_err(|e| format!("--peers: {e}"))?;
            let mut replication = cairn_server::replicated::ReplicationConfig::new(id, members);
            if let Some(s) = args.check_interval_secs.or(file.check_interval_secs) {
                replication.check_interval = Duration::from_secs(s);
            }
            if let Some(n) = args.snapshot_every.or(file.snapshot_every) {
                replication.snapshot_every = n;
            }
            if let Some(n) = args.log_keep.or(file.log_keep) {
                replication.keep_behind_snapshot = n;
            }
            replication.validate().map_err(|e| e.to_string())?;
            // Peers reach this node at its member address: listen there unless told otherwise.
            if grpc_addr.is_none() {
                let own = &replication.members[&id];
                grpc_addr = Some(own.parse().map_err(|_| {
                    format!("node {id}'s address {own:?} is not IP:PORT; pass --grpc-addr to listen on")
                })?);
            }
            node.replication = Some(replication);
        }
        (Some(_), None) => return Err("--node-id needs --peers (every member's ID=HOST:PORT)".into()),
        (None, Some(_)) => return Err("--peers needs --node-id (this node's id among them)".into()),
    }
    let http_addr = args.http_addr.or(file.http_addr).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let grpc_addr = grpc_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
    let cluster = match args.join.clone().or(file.join) {
        None => None,
        Some(_) if node.replication.is_some() => {
            return Err("--join runs a cluster member; --node-id/--peers a static group: pick one".into());
        }
        Some(join) => {
            let join: Vec<String> =
                join.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
            if let Some(bad) = join.iter().find(|a| a.parse::<SocketAddr>().is_err() && !a.contains(':')) {
                return Err(format!("--join: {bad:?} is not HOST:PORT"));
            }
            let advertise_grpc = args.advertise_grpc_addr.clone().or(file.advertise_grpc_addr);
            let advertise_http = args.advertise_http_addr.clone().or(file.advertise_http_addr);
            if advertise_grpc.is_none() && grpc_addr.ip().is_unspecified() {
                return Err(format!(
                    "gRPC listens on {grpc_addr}: pass --advertise-grpc-addr, the address peers reach it at"
                ));
            }
            let mut replication = cairn_server::replicated::ReplicationConfig::new(1, Default::default());
            // Idle shard groups go quiet (the meta leader's liveness view wakes them on failures).
            replication.quiesce_after = Duration::from_secs(2);
            if let Some(s) = args.check_interval_secs.or(file.check_interval_secs) {
                replication.check_interval = Duration::from_secs(s);
            }
            if let Some(n) = args.snapshot_every.or(file.snapshot_every) {
                replication.snapshot_every = n.max(1);
            }
            if let Some(n) = args.log_keep.or(file.log_keep) {
                replication.keep_behind_snapshot = n;
            }
            node.replication = Some(replication);
            Some(cairn_server::cluster::ClusterConfig {
                join,
                cluster_id: args.cluster_id.clone().or(file.cluster_id),
                advertise_grpc,
                advertise_http,
            })
        }
    };
    Ok(ServerConfig { node, http_addr, grpc_addr, cluster, http, restore_from: None })
}

fn demo_banner(addr: SocketAddr, grpc: SocketAddr, store: &Path) -> String {
    let base = format!("http://{addr}");
    format!(
        "cairn demo is running: HTTP on {base}, gRPC on {grpc}, data in {store}\n\
         \n\
         Try it (Ctrl-C stops the demo; the data stays for next time):\n\
         \x20 curl -X POST -d 'Hello' {base}/kv/rest/entry/Cockroach\n\
         \x20 curl {base}/kv/rest/entry/Cockroach\n\
         \x20 curl '{base}/kv/rest/range?start=Ca&end=Cozz&limit=10'\n\
         \x20 curl -X DELETE {base}/kv/rest/entry/Cockroach\n\
         \x20 curl {base}/_status\n\
         \x20 curl {base}/metrics\n\
         \x20 cairn kv put greeting hello --addr {grpc}\n\
         \x20 cairn kv get greeting --addr {grpc}\n\
         \x20 cairn status --addr {grpc}\n",
        store = store.display()
    )
}

fn ts_text(ts: &cairn_client::kv::Timestamp) -> String {
    format!("{}.{}", ts.wall_time, ts.logical)
}

fn ts_json(ts: &cairn_client::kv::Timestamp) -> serde_json::Value {
    serde_json::json!({"wall_time": ts.wall_time, "logical": ts.logical})
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `cairn init`: makes a new cluster at the node at `--addr`.
async fn init_command(args: InitArgs) -> Result<ExitCode, String> {
    use cairn_proto::cluster::{InitRequest, cluster_client::ClusterClient};
    let endpoint = format!("http://{}", args.client.addr);
    let mut client = ClusterClient::connect(endpoint)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.client.addr))?;
    let request = InitRequest {
        replication_factor: args.replication_factor,
        shards: args.shards,
        total_buckets: args.total_buckets,
        dead_after_secs: args.dead_after_secs,
        no_rebalance: args.no_rebalance,
        max_clock_offset_ms: args.max_clock_offset_ms,
    };
    let reply =
        client.init(request).await.map_err(|s| format!("init refused: {}", s.message()))?.into_inner();
    if args.client.json {
        println!("{}", serde_json::json!({"cluster_id": reply.cluster_id, "node_id": reply.node_id}));
    } else {
        println!("initialised cluster {} (node {} at {})", reply.cluster_id, reply.node_id, args.client.addr);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a client command; the exit status is 0 on success, 1 for "not found" and errors.
async fn client_command(command: Command) -> Result<ExitCode, String> {
    use cairn_client::Client;
    let (args, op) = match command {
        Command::Kv(k) => (k.client, Some(k.op)),
        Command::Status(c) => (c, None),
        Command::Init(i) => return init_command(i).await,
        Command::Shards(c) => return shards::run(c).await,
        Command::Settings(c) => return shards::settings(c).await,
        Command::Protect(c) => return shards::protect(c).await,
        Command::Backup(c) => return backup::run(c).await,
        Command::Restore(a) => return backup::restore(a).await,
        Command::Txn(a) => return txn::run(a).await,
        Command::Start(_) | Command::Demo(_) => return Err("not a client command".into()),
    };
    if op.is_none()
        && let Some((json, text)) = cluster_status::cluster_status(&args.addr).await?
    {
        if args.json {
            println!("{json}")
        } else {
            println!("{text}")
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = Client::connect(&args.addr).await.map_err(|e| e.to_string())?;
    let print = |json: serde_json::Value, text: String| {
        if args.json { println!("{json}") } else { println!("{text}") }
    };
    match op {
        None => {
            let s = client.status().await.map_err(|e| e.to_string())?;
            let shards: Vec<_> = s
                .shards
                .iter()
                .map(|sh| {
                    let mut j = serde_json::json!({"shard": sh.shard, "first_bucket": sh.first_bucket, "last_bucket": sh.last_bucket, "sst_bytes": sh.sst_bytes, "memtable_bytes": sh.memtable_bytes});
                    if let Some(r) = &sh.replication {
                        j["replication"] = serde_json::json!({"role": r.role, "leader": r.leader, "term": r.term, "committed": r.committed, "applied": r.applied, "fenced": r.fenced});
                    }
                    j
                })
                .collect();
            let mut text = format!(
                "store {} ({} buckets, fsync {}{})\n",
                s.store,
                s.total_buckets,
                if s.sync { "on" } else { "off" },
                if s.node_id == 0 { String::new() } else { format!(", node {}", s.node_id) }
            );
            text.push_str("shard  buckets      sst bytes  memtable bytes");
            if s.node_id != 0 {
                text.push_str("  role       leader  term  applied");
            }
            for sh in &s.shards {
                text.push_str(&format!(
                    "\n{:>5}  {:>4}..={:<4}  {:>10}  {:>14}",
                    sh.shard, sh.first_bucket, sh.last_bucket, sh.sst_bytes, sh.memtable_bytes
                ));
                if let Some(r) = &sh.replication {
                    let fenced = if r.fenced.is_empty() { "" } else { "  FENCED" };
                    text.push_str(&format!(
                        "  {:<9}  {:>6}  {:>4}  {:>7}{fenced}",
                        r.role, r.leader, r.term, r.applied
                    ));
                }
            }
            let mut json = serde_json::json!({"store": s.store, "total_buckets": s.total_buckets, "sync": s.sync, "shards": shards});
            if s.node_id != 0 {
                json["node_id"] = serde_json::json!(s.node_id);
            }
            print(json, text);
        }
        Some(KvOp::Put { key, value }) => {
            let ts = client.put(key.as_bytes(), value.as_bytes()).await.map_err(|e| e.to_string())?;
            print(serde_json::json!({"timestamp": ts_json(&ts)}), format!("OK {}", ts_text(&ts)));
        }
        Some(KvOp::Get { key, timestamp }) => {
            let at = match timestamp {
                Some(t) => {
                    let parsed = cairn_server::hlc::Timestamp::parse(&t)
                        .ok_or(format!("bad --timestamp {t:?} (WALL or WALL.LOGICAL)"))?;
                    Some(cairn_client::kv::Timestamp { wall_time: parsed.wall_time, logical: parsed.logical })
                }
                None => None,
            };
            match client.get(key.as_bytes(), at).await.map_err(|e| e.to_string())? {
                Some((value, ts)) => print(
                    serde_json::json!({"key": b64(key.as_bytes()), "value": b64(&value), "timestamp": ts_json(&ts)}),
                    String::from_utf8_lossy(&value).into_owned(),
                ),
                None => {
                    eprintln!("cairn: {key:?} not found");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Some(KvOp::Del { key }) => match client.delete(key.as_bytes()).await.map_err(|e| e.to_string())? {
            Some(ts) => {
                print(serde_json::json!({"timestamp": ts_json(&ts)}), format!("deleted {}", ts_text(&ts)))
            }
            None => {
                eprintln!("cairn: {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        },
        Some(KvOp::Scan { start, end, limit }) => {
            let rows = client
                .scan(start.as_bytes(), end.as_deref().map(str::as_bytes), limit, None)
                .await
                .map_err(|e| e.to_string())?;
            let json: Vec<_> = rows
                .iter()
                .map(|r| serde_json::json!({"key": b64(&r.key), "value": b64(&r.value), "timestamp": r.timestamp.as_ref().map(ts_json)}))
                .collect();
            let text: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!("{}\t{}", String::from_utf8_lossy(&r.key), String::from_utf8_lossy(&r.value))
                })
                .collect();
            print(serde_json::json!({"rows": json}), text.join("\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves when standard input reaches its end (or fails).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// `cairn demo --nodes N` with N > 1: a local cluster of N processes (see [`demo`]).
fn demo_cluster(args: &DemoArgs, log_level: &str) -> ExitCode {
    let config = match build_config(Some(args.store.clone()), &args.node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    let cluster = demo::DemoCluster {
        nodes: usize::from(args.nodes),
        shards: config.node.shards as u32,
        root: args.store.clone(),
        http: config.http_addr,
        grpc: config.grpc_addr,
        log_level: log_level.to_string(),
        no_sync: !config.node.sync,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let root = args.store.clone();
    let result = runtime.block_on(cluster.run(shutdown_signal(), |nodes| {
        // The same machine-readable first line as a one-node demo (node 1's addresses), then the text.
        println!("cairn listening http={} grpc={}", nodes[0].0, nodes[0].1);
        println!("{}", demo::banner(nodes, &root));
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft reports every unanswered heartbeat (20 a second per peer) as a warning; cairn logs what
    // an operator needs (role changes, divergence) itself. A filter naming openraft overrides this.
    let mut level = cli.log_level.clone();
    if !level.contains("openraft") {
        level.push_str(",openraft=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level);
    let Ok(filter) = filter else {
        eprintln!("cairn: bad --log-level {:?}", cli.log_level);
        return ExitCode::from(2);
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let (config, demo, exit_with_stdin) = match &cli.command {
        Command::Start(a) => {
            let config = build_config(a.store.clone(), &a.node).map(|mut c| {
                c.restore_from = a.restore_from.clone().zip(a.backup);
                c
            });
            (config, false, a.exit_with_stdin)
        }
        Command::Demo(a) if a.nodes > 1 => return demo_cluster(a, &cli.log_level),
        Command::Demo(a) => (build_config(Some(a.store.clone()), &a.node), true, false),
        Command::Kv(_)
        | Command::Txn(_)
        | Command::Status(_)
        | Command::Init(_)
        | Command::Shards(_)
        | Command::Settings(_)
        | Command::Protect(_)
        | Command::Backup(_)
        | Command::Restore(_) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cairn: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            return match runtime.block_on(client_command(cli.command)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("cairn: {e}");
                    ExitCode::from(1)
                }
            };
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let store = config.node.store.clone();
    let shutdown = async move {
        if exit_with_stdin {
            tokio::select! {
                () = shutdown_signal() => {}
                () = stdin_closed() => {}
            }
        } else {
            shutdown_signal().await;
        }
    };
    let result = runtime.block_on(serve(config, shutdown, move |bound| {
        // One machine-readable line first (tests and scripts read it), then the human text.
        println!("cairn listening http={} grpc={}", bound.http, bound.grpc);
        if demo {
            println!("{}", demo_banner(bound.http, bound.grpc, &store));
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e}");
            ExitCode::from(1)
        }
    }
}
