//! `cairn-bench http`, `cairn-bench grpc` and `cairn-bench etcd`: YCSB-style workloads against a running
//! cairn node, or (for side-by-side comparisons, `compare/etcd.sh`) an etcd v3 server over its gRPC KV
//! API with linearizable reads.
//!
//! Phases: `load` inserts `--records` keys (8-byte keys, `--value-size` values by default), then each
//! workload of `--workloads` runs `--ops` operations with keys drawn from a scrambled zipfian
//! distribution (YCSB's, constant 0.99) by `--clients` concurrent clients:
//! A = 50% reads / 50% updates, B = 95% / 5%, C = 100% reads, E = 95% scans of 10 rows from a key / 5%
//! updates, F = 50% reads / 50% read-modify-writes.
//! Reads are the node's default (linearizable on one node: the newest committed version). Each phase
//! prints ops/s and per-operation p50/p99/p999 latencies. With `--retry` (HTTP), an operation refused
//! with 503 (retry: a split under way, a leader change) is retried after 20 ms and counted; any other
//! error ends the run. With `--verify`, every loaded key is read back at the end and must hold the
//! value the run wrote (every write writes the same value).

use crate::histogram::Histogram;
use crate::rng::Rng;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// etcd's KV service (the subset in `proto/etcd_kv.proto`).
pub(crate) mod etcdpb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("etcdserverpb");
}

/// Which server and protocol a run talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// cairn's REST API.
    Http,
    /// cairn's gRPC API.
    Grpc,
    /// etcd v3's gRPC KV API.
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct KvArgs {
    /// The node's address (HTTP for `http`, gRPC for `grpc`); several, comma-separated, spread the
    /// clients over them round-robin (a cluster's nodes).
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<String>,
    /// How fresh reads must be: `strong` (linearizable by a quorum round; etcd's default), `lease`
    /// (linearizable by the leader's lease; etcd: linearizable) or `eventual` (whatever the replica
    /// asked has applied; etcd: serializable).
    #[arg(long, default_value = "strong")]
    pub reads: String,
    /// `grpc` against a cluster: each client caches the shard map and sends every request to a node
    /// holding the key's shard (its leader for writes and linearizable reads) instead of the node it
    /// connected to.
    #[arg(long)]
    pub direct: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Keys loaded before the workloads.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Operations per workload.
    #[arg(long, default_value_t = 100_000)]
    pub ops: u64,
    /// Workloads to run after the load, comma-separated (A, B, C, E, F).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["A".to_string(), "B".to_string(), "C".to_string(), "F".to_string()])]
    pub workloads: Vec<String>,
    /// Key size in bytes (hex digits of the scrambled record number, zero-padded).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Skip the load phase (the keys are already there).
    #[arg(long)]
    pub no_load: bool,
    /// Seed of the key choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Retry operations answered 503 (HTTP), counting them, instead of ending the run.
    #[arg(long)]
    pub retry: bool,
    /// At the end, read every loaded key back (HTTP) and fail unless each holds the written value.
    #[arg(long)]
    pub verify: bool,
}

/// Why an operation failed.
#[derive(Debug)]
enum OpError {
    /// Refused with "retry" (HTTP 503): nothing, or possibly something, was done; try again.
    Retry(String),
    /// Anything else.
    Fail(String),
}

impl From<String> for OpError {
    fn from(e: String) -> OpError {
        OpError::Fail(e)
    }
}

impl From<&str> for OpError {
    fn from(e: &str) -> OpError {
        OpError::Fail(e.to_string())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Retry(e) => write!(f, "retryable: {e}"),
            OpError::Fail(e) => f.write_str(e),
        }
    }
}

/// The outcome of an HTTP status for an operation that expects `ok`: 503 is retryable.
fn http_status(method: &str, status: u16) -> Result<u16, OpError> {
    match status {
        200 | 404 => Ok(status),
        503 => Err(OpError::Retry(format!("{method} answered 503"))),
        other => Err(OpError::Fail(format!("{method} answered {other}"))),
    }
}

/// YCSB's zipfian generator over `0..n` (Gray et al., "Quickly generating billion-record synthetic
/// databases"), then scrambled by a hash so popular keys spread over the key space.
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Zipf {
        let zeta = |count: u64| (1..=count).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n, theta, alpha, zetan, eta }
    }

    fn next(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        // Scramble: a fixed permutation-ish spread (FNV-style hash of the rank) over the records.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in rank.min(self.n - 1).to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h % self.n
    }
}

fn key_of(record: u64, size: usize) -> String {
    format!("{record:0size$x}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Update,
    ReadModifyWrite,
    Scan,
}

/// Rows a YCSB-E scan asks for.
const SCAN_ROWS: u32 = 10;

/// How often one operation is tried with `--retry` before the run fails.
const MAX_RETRIES: u32 = 500;
/// The pause before trying an operation answered "retry" again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// One client's connection.
enum Conn {
    Http { stream: BufReader<TcpStream>, host: String, buf: Vec<u8> },
    Grpc(cairn_client::Client),
    Cluster(cairn_client::ClusterClient),
    Etcd(etcdpb::kv_client::KvClient<tonic::transport::Channel>),
}

/// The read level `--reads` names, as cairn's gRPC consistency (etcd: eventual → serializable).
fn read_level(reads: &str) -> Result<cairn_client::kv::Consistency, String> {
    match reads {
        "strong" => Ok(cairn_client::kv::Consistency::Strong),
        "lease" => Ok(cairn_client::kv::Consistency::Lease),
        "eventual" => Ok(cairn_client::kv::Consistency::Eventual),
        other => Err(format!("--reads {other:?}: strong, lease or eventual")),
    }
}

impl Conn {
    async fn open(target: Target, addr: &str) -> Result<Conn, String> {
        match target {
            Target::Grpc => {
                return cairn_client::Client::connect(addr).await.map(Conn::Grpc).map_err(|e| e.to_string());
            }
            Target::Etcd => {
                let client = etcdpb::kv_client::KvClient::connect(format!("http://{addr}"))
                    .await
                    .map_err(|e| format!("cannot connect to etcd at {addr}: {e}"))?;
                return Ok(Conn::Etcd(client));
            }
            Target::Http => {}
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn::Http {
            stream: BufReader::new(stream),
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    async fn get(&mut self, key: &str, level: cairn_client::kv::Consistency) -> Result<bool, OpError> {
        use cairn_client::kv::Consistency;
        match self {
            Conn::Grpc(c) => {
                let request = cairn_client::kv::GetRequest {
                    key: key.as_bytes().to_vec(),
                    consistency: level as i32,
                    ..Default::default()
                };
                c.get_request(request).await.map(|v| v.is_some()).map_err(|e| OpError::Fail(e.to_string()))
            }
            Conn::Cluster(c) => c
                .get(key.as_bytes(), level)
                .await
                .map(|v| v.is_some())
                .map_err(|e| OpError::Fail(e.to_string())),
            Conn::Http { .. } => {
                let query = match level {
                    Consistency::Strong => "",
                    Consistency::Lease => "?consistency=lease",
                    Consistency::Eventual => "?consistency=eventual",
                };
                let status = self.http("GET", &format!("{key}{query}"), &[]).await?;
                http_status("GET", status).map(|status| status == 200)
            }
            Conn::Etcd(c) => {
                let request = etcdpb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    serializable: level == Consistency::Eventual,
                    ..Default::default()
                };
                c.range(request)
                    .await
                    .map(|r| !r.into_inner().kvs.is_empty())
                    .map_err(|e| OpError::Fail(e.to_string()))
            }
        }
    }

    /// Up to [`SCAN_ROWS`] rows from `start` on (a cluster client: not offered).
    async fn scan(&mut self, start: &str) -> Result<usize, OpError> {
        match self {
            Conn::Grpc(c) => c
                .scan_page(start.as_bytes(), None, SCAN_ROWS, None)
                .await
                .map(|(rows, _)| rows.len())
                .map_err(|e| OpError::Fail(e.to_string())),
            Conn::Cluster(_) => Err("workload E is not offered with --direct".into()),
            Conn::Http { .. } => {
                let path = format!("/kv/rest/range?start={start}&limit={SCAN_ROWS}");
                match self.http_path("GET", &path, &[]).await? {
                    200 => Ok(0),
                    503 => Err(OpError::Retry("range answered 503".into())),
                    s => Err(format!("range answered {s}").into()),
                }
            }
            Conn::Etcd(c) => {
                // From `start` to the end of the key space ("\0" as range_end).
                let request = etcdpb::RangeRequest {
                    key: start.as_bytes().to_vec(),
                    range_end: vec![0],
                    limit: i64::from(SCAN_ROWS),
                    ..Default::default()
                };
                c.range(request)
                    .await
                    .map(|r| r.into_inner().kvs.len())
                    .map_err(|e| OpError::Fail(e.to_string()))
            }
        }
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), OpError> {
        let fail = |e: String| OpError::Fail(e);
        match self {
            Conn::Grpc(c) => c.put(key.as_bytes(), value).await.map(|_| ()).map_err(|e| fail(e.to_string())),
            Conn::Cluster(c) => {
                c.put(key.as_bytes(), value).await.map(|_| ()).map_err(|e| fail(e.to_string()))
            }
            Conn::Http { .. } => match self.http("PUT", key, value).await? {
                200 => Ok(()),
                503 => Err(OpError::Retry(format!("PUT answered 503: {}", self.body_text()))),
                s => Err(format!("PUT answered {s}").into()),
            },
            Conn::Etcd(c) => {
                let request =
                    etcdpb::PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec(), lease: 0 };
                c.put(request).await.map(|_| ()).map_err(|e| fail(e.to_string()))
            }
        }
    }

    /// One keep-alive HTTP/1.1 request; returns the status (the body is read and dropped).
    async fn http(&mut self, method: &str, key: &str, body: &[u8]) -> Result<u16, String> {
        self.http_path(method, &format!("/kv/rest/entry/{key}"), body).await
    }

    /// The last HTTP answer's body, as text (empty for other connections).
    fn body_text(&self) -> String {
        match self {
            Conn::Http { buf, .. } => String::from_utf8_lossy(buf).into_owned(),
            _ => String::new(),
        }
    }

    /// A GET of `key` over HTTP: its status and body.
    async fn http_read(&mut self, key: &str) -> Result<(u16, String), String> {
        let status = self.http("GET", key, &[]).await?;
        match self {
            Conn::Http { buf, .. } => Ok((status, String::from_utf8_lossy(buf).into_owned())),
            _ => Err("not HTTP".into()),
        }
    }

    /// One keep-alive HTTP/1.1 request to `path`; returns the status (the body is left in `buf`).
    async fn http_path(&mut self, method: &str, path: &str, body: &[u8]) -> Result<u16, String> {
        let Conn::Http { stream, host, buf } = self else { return Err("not HTTP".into()) };
        buf.clear();
        buf.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", body.len())
                .as_bytes(),
        );
        buf.extend_from_slice(body);
        let io = |e: std::io::Error| e.to_string();
        stream.get_mut().write_all(buf).await.map_err(io)?;
        // Read the head, then Content-Length bytes.
        buf.clear();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.map_err(io)? == 0 {
                return Err("connection closed".into());
            }
            buf.push(byte[0]);
            if buf.len() > 64 * 1024 {
                return Err("response head too long".into());
            }
        }
        let head = String::from_utf8_lossy(buf);
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buf.clear();
        buf.resize(length, 0);
        stream.read_exact(buf).await.map_err(io)?;
        Ok(status)
    }
}

struct PhaseResult {
    ops: u64,
    /// Operations answered "retry" (and retried, with `--retry`).
    retried: u64,
    /// The most frequent reasons given for "retry" (digits left out, so alike ones count together).
    reasons: Vec<(u64, String)>,
    secs: f64,
    latency: Vec<(Op, Histogram)>,
}

async fn run_phase(
    args: &KvArgs,
    target: Target,
    mix: Option<(f64, Op)>,
    total: u64,
) -> Result<PhaseResult, String> {
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let reasons: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let zipf = Arc::new(Zipf::new(args.records.max(2), 0.99));
    let value: Arc<Vec<u8>> = Arc::new((0..args.value_size).map(|i| b'a' + (i % 26) as u8).collect());
    let started = Instant::now();
    let scan_reads = mix.is_some_and(|(_, other)| other == Op::Scan);
    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let (next, zipf, value, args, retried) =
            (Arc::clone(&next), Arc::clone(&zipf), Arc::clone(&value), args.clone(), Arc::clone(&retried));
        let reasons = Arc::clone(&reasons);
        tasks.push(tokio::spawn(async move {
            let mut conn = if args.direct {
                let mut seeds = args.addr.clone();
                let by = client % seeds.len();
                seeds.rotate_left(by);
                Conn::Cluster(cairn_client::ClusterClient::connect(&seeds).await.map_err(|e| e.to_string())?)
            } else {
                Conn::open(target, &args.addr[client % args.addr.len()]).await?
            };
            let level = read_level(&args.reads)?;
            let mut rng = Rng::new(args.seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut hist =
                [Histogram::default(), Histogram::default(), Histogram::default(), Histogram::default()];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (op, key) = match mix {
                    None => (Op::Update, key_of(n, args.key_size)),
                    Some((read_fraction, other)) => {
                        let key = key_of(zipf.next(&mut rng), args.key_size);
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        let op = match (u < read_fraction, scan_reads) {
                            (true, true) => Op::Scan,
                            (true, false) => Op::Read,
                            (false, _) if other == Op::Scan => Op::Update,
                            (false, _) => other,
                        };
                        (op, key)
                    }
                };
                let t = Instant::now();
                let mut tries = 0;
                loop {
                    let done = match op {
                        Op::Read => conn.get(&key, level).await.map(drop),
                        Op::Update => conn.put(&key, &value).await,
                        Op::Scan => conn.scan(&key).await.map(drop),
                        Op::ReadModifyWrite => match conn.get(&key, level).await {
                            Ok(_) => conn.put(&key, &value).await,
                            Err(e) => Err(e),
                        },
                    };
                    match done {
                        Ok(()) => break,
                        Err(OpError::Retry(why)) if args.retry && tries < MAX_RETRIES => {
                            tries += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut reasons) = reasons.lock()
                                && (reasons.len() < MAX_REASONS || reasons.contains_key(&reason_of(&why)))
                            {
                                *reasons.entry(reason_of(&why)).or_default() += 1;
                            }
                            if tries == MAX_RETRIES {
                                return Err(format!("{key}: still refused after {tries} tries: {why}"));
                            }
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                        Err(e) => return Err(format!("{key}: {e}")),
                    }
                }
                let idx = match op {
                    Op::Read => 0,
                    Op::Update => 1,
                    Op::ReadModifyWrite => 2,
                    Op::Scan => 3,
                };
                hist[idx].record(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(hist)
        }));
    }
    let mut merged = [Histogram::default(), Histogram::default(), Histogram::default(), Histogram::default()];
    for t in tasks {
        let hist = t.await.map_err(|e| e.to_string())??;
        for (m, h) in merged.iter_mut().zip(&hist) {
            m.merge(h);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let [read, update, rmw, scan] = merged;
    let latency = vec![(Op::Read, read), (Op::Update, update), (Op::ReadModifyWrite, rmw), (Op::Scan, scan)]
        .into_iter()
        .filter(|(_, h)| h.count() > 0)
        .collect();
    let mut reasons: Vec<(u64, String)> =
        reasons.lock().map(|r| r.iter().map(|(why, n)| (*n, why.clone())).collect()).unwrap_or_default();
    reasons.sort_by(|a, b| b.cmp(a));
    reasons.truncate(3);
    Ok(PhaseResult { ops: total, retried: retried.load(Ordering::Relaxed), secs, latency, reasons })
}

/// How many distinct reasons for "retry" a phase tallies.
const MAX_REASONS: usize = 64;

/// A reason for "retry" with its numbers left out (and cut short), so alike reasons count together.
fn reason_of(why: &str) -> String {
    let mut out = String::new();
    for c in why.chars().take(160) {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

fn print(name: &str, r: &PhaseResult) {
    println!(
        "{name:<8} {:>10.0} ops/s  ({} ops in {:.2} s, {} answered retry)",
        r.ops as f64 / r.secs,
        r.ops,
        r.secs,
        r.retried
    );
    for (n, why) in &r.reasons {
        println!("  retried {n:>7}x  {why}");
    }
    for (op, h) in &r.latency {
        let label = match op {
            Op::Read => "read",
            Op::Update => "update",
            Op::ReadModifyWrite => "rmw",
            Op::Scan => "scan",
        };
        let ms = |q: f64| h.quantile(q) as f64 / 1e6;
        println!(
            "  {label:<7} {:>9} ops  p50 {:>8.3} ms  p99 {:>8.3} ms  p999 {:>8.3} ms  max {:>8.3} ms",
            h.count(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e6
        );
    }
}

/// Reads every loaded key back through the first address (retrying 503s) and checks it holds the
/// value every write wrote.
async fn verify(args: &KvArgs, target: Target) -> Result<(), String> {
    use base64::Engine as _;
    if target != Target::Http {
        return Err("--verify is for `cairn-bench http`".into());
    }
    let value: Vec<u8> = (0..args.value_size).map(|i| b'a' + (i % 26) as u8).collect();
    let want = format!("\"bytes\":\"{}\"", base64::engine::general_purpose::STANDARD.encode(&value));
    let mut conn = Conn::open(target, &args.addr[0]).await?;
    let mut retried = 0u64;
    for record in 0..args.records {
        let key = key_of(record, args.key_size);
        let mut tries = 0;
        loop {
            let (status, body) = conn.http_read(&key).await?;
            match status {
                200 if body.contains(&want) => break,
                200 => return Err(format!("{key} holds another value: {body}")),
                503 if tries < MAX_RETRIES => {
                    tries += 1;
                    retried += 1;
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                other => return Err(format!("{key}: GET answered {other}: {body}")),
            }
        }
    }
    println!("verify   {} keys read back, each with its value ({retried} answered retry)", args.records);
    Ok(())
}

/// Runs the load and the workloads against `target`.
pub fn run(args: &KvArgs, target: Target) -> Result<(), String> {
    if args.clients == 0 || args.records == 0 || args.key_size < 8 || args.addr.is_empty() {
        return Err("need --addr, --clients > 0, --records > 0 and --key-size >= 8".into());
    }
    read_level(&args.reads)?;
    if args.direct && target != Target::Grpc {
        return Err("--direct is for `cairn-bench grpc` against a cluster".into());
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        println!(
            "cairn-bench {}: {} clients over {} address(es), {} records, {} B keys, {} B values, zipfian 0.99, {} reads",
            match target {
                Target::Http => "http",
                Target::Grpc => "grpc",
                Target::Etcd => "etcd",
            },
            args.clients,
            args.addr.len(),
            args.records,
            args.key_size,
            args.value_size,
            args.reads
        );
        if !args.no_load {
            print("load", &run_phase(args, target, None, args.records).await?);
        }
        // (`--workloads ""`: the load alone.)
        for w in args.workloads.iter().filter(|w| !w.is_empty()) {
            let mix = match w.to_ascii_uppercase().as_str() {
                "A" => (0.5, Op::Update),
                "B" => (0.95, Op::Update),
                "C" => (1.0, Op::Update),
                "E" => (0.95, Op::Scan),
                "F" => (0.5, Op::ReadModifyWrite),
                other => return Err(format!("unknown workload {other:?} (A, B, C, E, F)")),
            };
            print(
                &format!("YCSB-{}", w.to_ascii_uppercase()),
                &run_phase(args, target, Some(mix), args.ops).await?,
            );
        }
        if args.verify {
            verify(args, target).await?;
        }
        Ok(())
    })
}
