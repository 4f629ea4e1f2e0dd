//! `cairn-bench raft`: one shard group of three replicas in this process, each behind its own gRPC
//! server on 127.0.0.1 with its own node Raft log (fsync on) and engine on disk; concurrent writers
//! propose puts to the leader, then readers run strong (ReadIndex), lease and eventual reads. The
//! replication path alone, before the server's HTTP/gRPC front and MVCC encoding are added.

use cairn_bench::histogram::Histogram;
use cairn_bench::report::{Printer, WorkloadResult};
use cairn_cluster::raft::Role;
use cairn_cluster::raft::{
    Command, PeerChannels, RaftService, ReadLevel, Replica, ReplicaConfig, ShardStateMachine,
};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::StdFs;
use cairn_engine::{Config, WriteBatch};
use clap::Args;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct RaftArgs {
    /// Concurrent writers (and readers).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Value size in bytes (keys are 8 bytes).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

const BUCKETS: u32 = 16;

struct Member {
    replica: Replica,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(dir: &std::path::Path, id: u64, listener: tokio::net::TcpListener) -> Result<Member, String> {
    let root = dir.join(format!("n{id}"));
    let log = RaftLog::open(RaftLogConfig::new(root.join("raft"), Arc::new(StdFs::new())))
        .map_err(|e| format!("node {id} raft log: {e}"))?;
    let mut template = Config::new(root.join("shard"));
    template.wal = false;
    template.total_buckets = BUCKETS;
    let sm = ShardStateMachine::open(root.join("shard"), template, vec![0..=(BUCKETS - 1) as u16], 0)
        .map_err(|e| format!("node {id} shard: {e}"))?;
    let replica = Replica::start(id, 1, Arc::new(log), sm, PeerChannels::default(), ReplicaConfig::default())
        .await
        .map_err(|e| format!("node {id} replica: {e}"))?;
    let service = RaftService::default();
    service.register(1, replica.raft().clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server(cairn_proto::DEFAULT_MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    Ok(Member { replica, stop })
}

fn key_of(n: u64) -> (u16, [u8; 8]) {
    let key = n.to_be_bytes();
    ((n % u64::from(BUCKETS)) as u16, key)
}

pub fn run(args: &RaftArgs) -> Result<(), String> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &RaftArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    let mut members_addr = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        members_addr.insert(id, l.local_addr().map_err(|e| e.to_string())?.to_string());
        listeners.push((id, l));
    }
    let mut members = BTreeMap::new();
    for (id, l) in listeners {
        members.insert(id, start(dir.path(), id, l).await?);
    }
    members[&1].replica.bootstrap(members_addr).await.map_err(|e| e.to_string())?;
    let leader = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(m) = members.values().find(|m| m.replica.status().role == Role::Leader) {
            break m.replica.clone();
        }
    };
    let printer = Printer::new(args.json);
    printer.header();

    let value = vec![7u8; args.value_size];
    let result = drive(args, "raft-put", {
        let leader = leader.clone();
        move |n| {
            let leader = leader.clone();
            let value = value.clone();
            async move {
                let (bucket, key) = key_of(n);
                let mut batch = WriteBatch::new();
                batch.put(bucket, &key, 0, &value);
                leader.write(Command::write(&batch), Duration::from_secs(10)).await.is_ok()
            }
        }
    })
    .await;
    let bytes = result.ops * (8 + args.value_size as u64);
    printer.workload(&WorkloadResult { bytes, ..result });

    for (name, level) in [
        ("raft-get-strong", ReadLevel::Strong),
        ("raft-get-lease", ReadLevel::Lease),
        ("raft-get-eventual", ReadLevel::Eventual),
    ] {
        let result = drive(args, name, {
            let leader = leader.clone();
            move |n| {
                let leader = leader.clone();
                async move {
                    let (bucket, key) = key_of(n);
                    if leader.read_point(level, Duration::from_secs(10)).await.is_err() {
                        return false;
                    }
                    leader.db().get(bucket, &key).is_ok()
                }
            }
        })
        .await;
        printer.workload(&result);
    }
    let status = leader.status();
    printer.facts("raft", &[("term", status.term as f64), ("applied", status.applied.unwrap_or(0) as f64)]);
    for m in members.into_values() {
        let _ = m.replica.shutdown().await;
        let _ = m.stop.send(());
    }
    Ok(())
}

/// Runs `op` from `args.clients` tasks for `args.secs` seconds; counts successes and their latency.
async fn drive<F, Fut>(args: &RaftArgs, name: &str, op: F) -> WorkloadResult
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let op = op.clone();
        let failures = Arc::clone(&failures);
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            let mut n = c as u64 * 7919;
            while Instant::now() < deadline {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let t = Instant::now();
                if op((n >> 11) % keys).await {
                    hist.record(t.elapsed().as_nanos() as u64);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut latency = Histogram::default();
    for t in tasks {
        match t.await {
            Ok(hist) => latency.merge(&hist),
            // A worker that died reports nothing; the run's counts say how much is missing.
            Err(e) => eprintln!("cairn-bench raft: a {name} worker failed: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed) as f64;
    WorkloadResult {
        name: name.into(),
        ops: latency.count(),
        secs,
        bytes: 0,
        latency,
        extra: vec![("failed", failed)],
    }
}
